//! Google Compute Engine images: `disk.raw` in a gzipped tar with fixed headers.

use std::io::{self, Write};

use flate2::write::GzEncoder;

use super::Disk;

/// Writes `disk` as GCE's `disk.raw` inside a gzip (no name, mtime 0) tar (GNU header, `mtime`).
pub fn write_gcp(disk: &Disk, mtime: u32, w: impl Write) -> io::Result<()> {
    let gz = GzEncoder::new(w, flate2::Compression::fast());
    let mut tb = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(disk.size);
    h.set_mtime(mtime.into());
    h.set_path("disk.raw")?;
    h.set_cksum();
    tb.append(&h, DiskReader::new(disk))?;
    tb.into_inner()?.finish()?.flush()
}

/// The disk's bytes as a reader, for the tar builder.
struct DiskReader<'a> {
    disk: &'a Disk,
    at: u64,
}

impl<'a> DiskReader<'a> {
    fn new(disk: &'a Disk) -> Self {
        DiskReader { disk, at: 0 }
    }
}

impl io::Read for DiskReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.disk.size - self.at) as usize;
        self.disk.read_at(self.at, &mut buf[..n]);
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn tar_holds_disk_raw() {
        let mut disk = Disk::new(1 << 20);
        disk.put(4096, b"hello".to_vec());
        let mut out = Vec::new();
        write_gcp(&disk, 7, &mut out).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&out[..]));
        let mut entries = tar.entries().unwrap();
        let mut e = entries.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some("disk.raw"));
        assert_eq!(e.header().mtime().unwrap(), 7);
        let mut body = Vec::new();
        e.read_to_end(&mut body).unwrap();
        assert_eq!(body.len(), 1 << 20);
        assert_eq!(&body[4096..4101], b"hello");
        assert!(entries.next().is_none());
    }
}
