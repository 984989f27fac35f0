//! initramfs images: a newc cpio writer and the kernel's compressors.

mod compress;
mod newc;

pub use compress::{Compression, Encoder, Lz4Legacy, ZSTD_LEVEL};
pub use newc::{write_newc, Header, NewcWriter};
