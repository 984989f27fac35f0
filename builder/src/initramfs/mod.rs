//! initramfs images: a newc cpio writer, the kernel's compressors, and
//! segments compressed once and cached.

mod cache;
mod compress;
mod newc;
mod read;
mod segment;
mod segmented;

pub use cache::{Damage, Entry, Lookup, SegmentCache};
pub use compress::{Compression, Encoder, Lz4Legacy, UnknownCompression, ZSTD_LEVEL};
pub use newc::{write_newc, Header, NewcWriter};
pub use read::{unpack_newc, Unpacked};
pub use segment::{recipe, split, Entries, Recipe};
pub use segmented::write_segments;

#[cfg(test)]
mod tests;
