//! A disk image as sparse extents over zeros, shared by every container format.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const MIB: u64 = 1 << 20;

/// Bytes at one offset of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub data: Vec<u8>,
}

/// A disk of `size` bytes: zeros except for its extents (sorted, not overlapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub size: u64,
    extents: Vec<Extent>,
}

impl Disk {
    pub fn new(size: u64) -> Disk {
        Disk {
            size,
            extents: Vec::new(),
        }
    }

    /// Places `data` at `offset`; panics on overlap or overflow (a layout bug, not input).
    pub fn put(&mut self, offset: u64, data: Vec<u8>) {
        assert!(
            offset + data.len() as u64 <= self.size,
            "extent past the disk's end"
        );
        let i = self.extents.partition_point(|e| e.offset < offset);
        if let Some(prev) = i.checked_sub(1).map(|p| &self.extents[p]) {
            assert!(
                prev.offset + prev.data.len() as u64 <= offset,
                "extents overlap"
            );
        }
        if let Some(next) = self.extents.get(i) {
            assert!(offset + data.len() as u64 <= next.offset, "extents overlap");
        }
        self.extents.insert(i, Extent { offset, data });
    }

    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// Fills `buf` with the disk's bytes at `offset` (zeros past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let first = self
            .extents
            .partition_point(|e| e.offset + (e.data.len() as u64) <= offset);
        for e in &self.extents[first..] {
            if e.offset >= end {
                break;
            }
            let from = offset.max(e.offset);
            let to = end.min(e.offset + e.data.len() as u64);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&e.data[(from - e.offset) as usize..(to - e.offset) as usize]);
        }
    }

    /// Whether `len` bytes at `offset` hold any non-zero byte.
    pub fn has_data(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        let first = self
            .extents
            .partition_point(|e| e.offset + (e.data.len() as u64) <= offset);
        self.extents[first..]
            .iter()
            .take_while(|e| e.offset < end)
            .any(|e| {
                let from = offset.max(e.offset) - e.offset;
                let to = end.min(e.offset + e.data.len() as u64) - e.offset;
                e.data[from as usize..to as usize].iter().any(|&b| b != 0)
            })
    }

    /// Streams every byte of the disk, zeros included.
    pub fn write_all(&self, w: &mut impl Write) -> io::Result<()> {
        let mut at = 0u64;
        for e in &self.extents {
            io::copy(&mut io::repeat(0).take(e.offset - at), w)?;
            w.write_all(&e.data)?;
            at = e.offset + e.data.len() as u64;
        }
        io::copy(&mut io::repeat(0).take(self.size - at), w)?;
        Ok(())
    }

    /// Writes the raw disk to a file, leaving holes where it is zero.
    pub fn write_sparse(&self, f: &mut File) -> io::Result<()> {
        for e in &self.extents {
            f.seek(SeekFrom::Start(e.offset))?;
            f.write_all(&e.data)?;
        }
        f.set_len(self.size)?;
        f.seek(SeekFrom::Start(self.size))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_extents_over_zeros() {
        let mut d = Disk::new(100);
        d.put(50, vec![5; 10]);
        d.put(10, vec![1; 5]);
        let mut buf = [9u8; 20];
        d.read_at(5, &mut buf);
        assert_eq!(&buf[..5], &[0; 5]);
        assert_eq!(&buf[5..10], &[1; 5]);
        assert_eq!(&buf[10..], &[0; 10]);
        assert!(d.has_data(0, 11));
        assert!(!d.has_data(15, 35));
        assert!(d.has_data(59, 1));
        let mut all = Vec::new();
        d.write_all(&mut all).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[50..60], [5; 10]);
    }

    #[test]
    #[should_panic(expected = "overlap")]
    fn overlapping_extents_are_a_bug() {
        let mut d = Disk::new(100);
        d.put(10, vec![1; 10]);
        d.put(15, vec![1; 10]);
    }
}
