//! Bridges an async blob download to the store's synchronous, streaming `put_blob`.
//!
//! The builder is synchronous and owns no runtime, so each `read` drives the
//! download one chunk at a time on the pull's private runtime: memory stays at
//! one network chunk however large the layer is.

use std::io::{self, Read};

use bytes::Bytes;
use futures_util::StreamExt;
use indicatif::ProgressBar;
use oci_client::client::SizedStream;
use tokio::runtime::Runtime;

pub(crate) struct BlobReader<'a> {
    runtime: &'a Runtime,
    stream: SizedStream,
    chunk: Bytes,
    progress: &'a ProgressBar,
    /// The download's own failure, kept so it is not mistaken for a local I/O error.
    pub(crate) failure: Option<String>,
}

impl<'a> BlobReader<'a> {
    pub(crate) fn new(
        runtime: &'a Runtime,
        stream: SizedStream,
        progress: &'a ProgressBar,
    ) -> Self {
        BlobReader {
            runtime,
            stream,
            chunk: Bytes::new(),
            progress,
            failure: None,
        }
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.runtime.block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(bytes)) => self.chunk = bytes,
                Some(Err(e)) => {
                    self.failure = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.progress.inc(n as u64);
        Ok(n)
    }
}
