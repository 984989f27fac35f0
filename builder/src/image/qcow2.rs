//! qcow2 (version 3): the disk's non-zero 64 KiB clusters, the rest left unallocated.

use std::io::{self, Write};

use super::Disk;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts: one refcount block covers this many clusters.
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
/// The entry's cluster is referenced once (QCOW_OFLAG_COPIED).
const COPIED: u64 = 1 << 63;

/// Writes `disk` as qcow2: header, refcount table and blocks, L1, L2 tables, then data in disk order.
pub fn write_qcow2(disk: &Disk, w: &mut impl Write) -> io::Result<()> {
    let guest_clusters = disk.size.div_ceil(CLUSTER);
    let data: Vec<u64> = (0..guest_clusters)
        .filter(|&c| disk.has_data(c * CLUSTER, CLUSTER.min(disk.size - c * CLUSTER)))
        .collect();
    let l1_entries = guest_clusters.div_ceil(L2_ENTRIES);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
    let mut l2_used: Vec<u64> = data.iter().map(|c| c / L2_ENTRIES).collect();
    l2_used.dedup();
    // Header, refcount table, refcount blocks, L1, L2s, data; the block count covers itself.
    let fixed = 2 + l1_clusters + l2_used.len() as u64 + data.len() as u64;
    let mut blocks = 1;
    while (fixed + blocks).div_ceil(REFS_PER_BLOCK) > blocks {
        blocks += 1;
    }
    let total = fixed + blocks;
    if blocks > CLUSTER / 8 {
        return Err(io::Error::other(
            "disk too large for one qcow2 refcount table cluster",
        ));
    }
    let refblock_at = 2;
    let l1_at = refblock_at + blocks;
    let l2_at = l1_at + l1_clusters;
    let data_at = l2_at + l2_used.len() as u64;

    let mut h = vec![0u8; CLUSTER as usize];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&CLUSTER_BITS.to_be_bytes());
    h[24..32].copy_from_slice(&disk.size.to_be_bytes());
    h[36..40].copy_from_slice(&(l1_entries as u32).to_be_bytes());
    h[40..48].copy_from_slice(&(l1_at * CLUSTER).to_be_bytes());
    h[48..56].copy_from_slice(&CLUSTER.to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    // Then the end of header extensions: eight zero bytes, already there.
    w.write_all(&h)?;

    let mut table = vec![0u8; CLUSTER as usize];
    for b in 0..blocks {
        table[(b * 8) as usize..(b * 8 + 8) as usize]
            .copy_from_slice(&((refblock_at + b) * CLUSTER).to_be_bytes());
    }
    w.write_all(&table)?;
    let mut refs = vec![0u8; (blocks * CLUSTER) as usize];
    for c in 0..total {
        refs[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
    }
    w.write_all(&refs)?;

    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for (i, t) in l2_used.iter().enumerate() {
        let at = (t * 8) as usize;
        l1[at..at + 8].copy_from_slice(&(((l2_at + i as u64) * CLUSTER) | COPIED).to_be_bytes());
    }
    w.write_all(&l1)?;
    let mut next_data = data_at;
    let mut d = data.iter().peekable();
    for t in &l2_used {
        let mut l2 = vec![0u8; CLUSTER as usize];
        while let Some(&&c) = d.peek() {
            if c / L2_ENTRIES != *t {
                break;
            }
            let at = ((c % L2_ENTRIES) * 8) as usize;
            l2[at..at + 8].copy_from_slice(&((next_data * CLUSTER) | COPIED).to_be_bytes());
            next_data += 1;
            d.next();
        }
        w.write_all(&l2)?;
    }
    let mut buf = vec![0u8; CLUSTER as usize];
    for c in &data {
        disk.read_at(c * CLUSTER, &mut buf);
        w.write_all(&buf)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_zero_clusters_are_stored() {
        let mut disk = Disk::new(1 << 30);
        disk.put(0, vec![1; 512]);
        disk.put(5 << 20, vec![0; 1 << 20]);
        disk.put((1 << 30) - 512, vec![2; 512]);
        let mut out = Vec::new();
        write_qcow2(&disk, &mut out).unwrap();
        // header, refcount table, one refcount block, L1, two L2 tables, two data clusters
        assert_eq!(out.len() as u64, 8 * CLUSTER);
        assert_eq!(&out[..4], b"QFI\xfb");
        let mut again = Vec::new();
        write_qcow2(&disk, &mut again).unwrap();
        assert_eq!(out, again);
    }
}
