//! The compressors the kernel's initramfs unpacker understands.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

/// zstd level and window. On the 99 MB minimal initramfs: level 3 gives
/// 34.3 MB, `-9 --long=27` 25.5 MB, `-15 --long=27` 24.3 MB, `-19 --long=27`
/// 21.3 MB. Only the last keeps kernel+initrd of a minimal image under 30 MB,
/// so it is the default; the long window is what finds the copies of
/// busybox, libc and friends across containers. 2^27 is the window the
/// kernel's own `zstd22` initramfs uses.
pub const ZSTD_LEVEL: i32 = 19;
pub const ZSTD_WINDOW_LOG: u32 = 27;
/// One below level 19's default: 32 MiB less memory for 0.3% more bytes.
pub const ZSTD_CHAIN_LOG: u32 = 23;

/// The kernel's legacy lz4 format: magic, then 8 MiB chunks each prefixed
/// by its compressed size.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_CHUNK: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd, one frame per segment (see [`super::segment`]), each cached.
    #[default]
    Zstd,
    /// zstd with the same settings over the whole tree as one frame: the
    /// long window also finds copies across images, for the smallest image
    /// at the cost of compressing everything on every build.
    ZstdMax,
    Gzip,
    Xz,
    Lz4,
    None,
}

impl Compression {
    pub const NAMES: &'static [&'static str] = &["zstd", "zstd-max", "gzip", "xz", "lz4", "none"];

    /// Whether the initramfs is written as cached segments. lz4's legacy
    /// format cannot be followed by another archive (the kernel reads the
    /// next archive's magic as a chunk size), `none` is kept one archive for
    /// `cpio -i`, and `zstd-max` is one archive by definition.
    pub fn segmented(self) -> bool {
        matches!(
            self,
            Compression::Zstd | Compression::Gzip | Compression::Xz
        )
    }

    /// Everything besides the input that the compressed bytes depend on;
    /// part of each cached segment's key.
    pub fn settings(self) -> String {
        let lib = match self {
            Compression::Zstd | Compression::ZstdMax => {
                format!("libzstd {}", zstd::zstd_safe::version_number())
            }
            _ => String::new(),
        };
        format!(
            "{self} level {ZSTD_LEVEL} window {ZSTD_WINDOW_LOG} chain {ZSTD_CHAIN_LOG} {lib} osk {}",
            env!("CARGO_PKG_VERSION")
        )
    }

    /// A generous guess of the memory compressing `len` bytes takes, for
    /// running no more compressors at once than memory allows.
    pub fn memory_estimate(self, len: u64) -> u64 {
        match self {
            Compression::Zstd | Compression::ZstdMax => {
                let window = len.next_power_of_two().clamp(1 << 16, 1 << ZSTD_WINDOW_LOG);
                // The streaming input buffer (a window), the chain, hash and
                // long-match tables (up to 56 MiB at 2^27), and slack. At
                // 2^27 this fills the budget: such a segment runs alone
                // (bench/BUILD.md saw 262 MB with a small one beside it).
                window + window.min(56 << 20) + (8 << 20)
            }
            Compression::Xz => 16 << 20,
            Compression::Gzip | Compression::Lz4 | Compression::None => 1 << 20,
        }
    }
}

/// A compression name `osk` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {name:?} (expected one of: {})", Compression::NAMES.join(", "))]
pub struct UnknownCompression {
    pub name: String,
}

impl FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, UnknownCompression> {
        Ok(match s {
            "zstd" => Compression::Zstd,
            "zstd-max" => Compression::ZstdMax,
            "gzip" => Compression::Gzip,
            "xz" => Compression::Xz,
            "lz4" => Compression::Lz4,
            "none" => Compression::None,
            other => {
                return Err(UnknownCompression {
                    name: other.to_string(),
                })
            }
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::ZstdMax => "zstd-max",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
            Compression::None => "none",
        })
    }
}

/// A compressing writer; call [`Encoder::finish`] to end the stream.
pub enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Lz4(Lz4Legacy<W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(c: Compression, w: W) -> io::Result<Encoder<W>> {
        Self::with_len(c, w, None)
    }

    /// An encoder told the input's length up front (`len`): zstd then
    /// writes it in the frame and sizes its window and tables to the input,
    /// so a small segment takes little memory.
    pub fn with_len(c: Compression, w: W, len: Option<u64>) -> io::Result<Encoder<W>> {
        Ok(match c {
            Compression::Zstd | Compression::ZstdMax => {
                // Single-threaded on purpose. With this window zstd's workers
                // each need their own match tables and share a buffer of the
                // window plus a job per worker: on a 229 MB tree `osk build`
                // peaked at 495 MB, against 257 MB now (bench/BUILD.md). It
                // also compresses better (21.1 MB against 22.0 MB for
                // minimal), since jobs cut matches, and the bytes cannot
                // depend on the machine.
                let mut e = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
                e.include_checksum(true)?;
                e.long_distance_matching(true)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                e.set_parameter(zstd::stream::raw::CParameter::ChainLog(ZSTD_CHAIN_LOG))?;
                e.set_pledged_src_size(len)?;
                Encoder::Zstd(e)
            }
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .write(w, flate2::Compression::default()),
            ),
            Compression::Xz => {
                // As the kernel's own build does: CRC32 (its decoder has no
                // CRC64) and a 1 MiB dictionary.
                let mut opts =
                    liblzma::stream::LzmaOptions::new_preset(6).map_err(io::Error::other)?;
                opts.dict_size(1 << 20);
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let stream = liblzma::stream::Stream::new_stream_encoder(
                    &filters,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(io::Error::other)?;
                Encoder::Xz(liblzma::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Lz4 => Encoder::Lz4(Lz4Legacy::new(w)?),
            Compression::None => Encoder::None(w),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Lz4(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Lz4(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Lz4(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// lz4 in the kernel's legacy frame format (`lz4 -l`).
pub struct Lz4Legacy<W: Write> {
    w: W,
    chunk: Vec<u8>,
    out: Vec<u8>,
}

impl<W: Write> Lz4Legacy<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(&LZ4_LEGACY_MAGIC.to_le_bytes())?;
        Ok(Lz4Legacy {
            w,
            chunk: Vec::with_capacity(LZ4_CHUNK),
            out: vec![0u8; lz4_flex::block::get_maximum_output_size(LZ4_CHUNK)],
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let n =
            lz4_flex::block::compress_into(&self.chunk, &mut self.out).map_err(io::Error::other)?;
        self.w.write_all(&(n as u32).to_le_bytes())?;
        self.w.write_all(&self.out[..n])?;
        self.chunk.clear();
        Ok(())
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.emit()?;
        self.w.flush()?;
        Ok(self.w)
    }
}

impl<W: Write> Write for Lz4Legacy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(LZ4_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == LZ4_CHUNK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are fixed-size: flushing must not cut one short.
        self.w.flush()
    }
}
