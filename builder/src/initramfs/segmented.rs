//! Writing the initramfs as concatenated segments out of the segment cache.
//!
//! Segments missing from the cache are compressed first, several at once as
//! memory allows; each is compressed alone by one thread, so its bytes, and
//! the image's, do not depend on the number of threads or on what the cache
//! held. Then every segment is copied out of the cache in order, hashed on
//! the way; a damaged entry is dropped, compressed again and copied anew.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom};
use std::sync::{Condvar, Mutex};

use super::cache::{Lookup, SegmentCache};
use super::newc::{write_entries, Bodies};
use super::segment::{self, Entries, Recipe};
use super::{Compression, Encoder};
use crate::assemble::{Spool, Tree};

/// The most memory the compressors running at once may take together (by
/// [`Compression::memory_estimate`]); one that needs more runs alone.
/// Leaves room under 256 MiB for the rest of the build.
pub(crate) const MEMORY_BUDGET: u64 = 200 << 20;

/// Appends `tree` to `out` as compressed segments.
pub fn write_segments(
    tree: &Tree,
    spool: &Spool,
    cache: &SegmentCache,
    c: Compression,
    mtime: u32,
    out: &mut File,
) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    write_segments_on(tree, spool, cache, c, mtime, out, threads)
}

/// [`write_segments`] compressing on at most `threads` threads.
pub(crate) fn write_segments_on(
    tree: &Tree,
    spool: &Spool,
    cache: &SegmentCache,
    c: Compression,
    mtime: u32,
    out: &mut File,
    threads: usize,
) -> io::Result<()> {
    let parts = segment::split(tree);
    let settings = c.settings();
    let recipes = parts
        .iter()
        .map(|p| segment::recipe(tree, p, mtime, &settings))
        .collect::<io::Result<Vec<Recipe>>>()?;
    let missing: Vec<usize> = (0..parts.len())
        .filter(|&i| !cache.path(&recipes[i].key).is_file())
        .collect();
    tracing::info!(
        "initramfs: {} segments, {} to compress",
        parts.len(),
        missing.len()
    );
    let job = |i: usize| compress(tree, spool, cache, c, mtime, &parts[i], &recipes[i]);
    let estimate = |i: usize| c.memory_estimate(recipes[i].len);
    run_within_budget(&missing, threads, estimate, job)?;

    for (part, r) in parts.iter().zip(&recipes) {
        let start = out.stream_position()?;
        match cache.copy_to(&r.key, out)? {
            Lookup::Copied { .. } => continue,
            Lookup::Missing => {}
            Lookup::Damaged { reason } => {
                tracing::warn!(
                    "segment cache entry {} (for {}): {reason}; dropping it and compressing it again",
                    cache.path(&r.key).display(),
                    describe(part)
                );
                cache.remove(&r.key)?;
            }
        }
        out.set_len(start)?;
        out.seek(SeekFrom::Start(start))?;
        compress(tree, spool, cache, c, mtime, part, r)?;
        let again = cache.copy_to(&r.key, out)?;
        if !matches!(again, Lookup::Copied { .. }) {
            return Err(io::Error::other(format!(
                "segment cache entry {} (for {}) cannot be read back right after it was written: {again:?}",
                cache.path(&r.key).display(),
                describe(part)
            )));
        }
    }
    Ok(())
}

/// The segment's first entry, which names the image or directory it holds.
fn describe(part: &Entries) -> String {
    part.first()
        .map(|(p, _)| String::from_utf8_lossy(p).escape_debug().to_string())
        .unwrap_or_default()
}

fn compress(
    tree: &Tree,
    spool: &Spool,
    cache: &SegmentCache,
    c: Compression,
    mtime: u32,
    part: &Entries,
    r: &Recipe,
) -> io::Result<()> {
    cache.put(&r.key, |w| {
        let enc = Encoder::with_len(c, w, Some(r.len))?;
        let (enc, len) = write_entries(
            tree,
            part,
            Bodies::Spool(spool),
            BufWriter::with_capacity(1 << 20, enc),
            mtime,
        )?;
        debug_assert_eq!(len, r.len);
        enc.into_inner().map_err(|e| e.into_error())?.finish()?;
        Ok(())
    })
}

/// Runs `job` on every item, on up to `threads` threads, but starting one
/// only while the estimates of those running fit the budget.
fn run_within_budget(
    items: &[usize],
    threads: usize,
    estimate: impl Fn(usize) -> u64 + Sync,
    job: impl Fn(usize) -> io::Result<()> + Sync,
) -> io::Result<()> {
    let mut queue: Vec<usize> = items.to_vec();
    // Largest first, so the long ones do not start last; popped from the end.
    queue.sort_by_key(|&i| (estimate(i), std::cmp::Reverse(i)));
    let threads = threads.max(1).min(queue.len());
    struct State {
        queue: Vec<usize>,
        in_use: u64,
        failed: Option<io::Error>,
    }
    let state = Mutex::new(State {
        queue,
        in_use: 0,
        failed: None,
    });
    let freed = Condvar::new();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let mut st = state.lock().expect("no panics while locked");
                let (i, need) = loop {
                    let Some(&i) = st.queue.last() else { return };
                    if st.failed.is_some() {
                        return;
                    }
                    let need = estimate(i);
                    if st.in_use == 0 || st.in_use + need <= MEMORY_BUDGET {
                        st.queue.pop();
                        break (i, need);
                    }
                    st = freed.wait(st).expect("no panics while locked");
                };
                st.in_use += need;
                drop(st);
                let r = job(i);
                let mut st = state.lock().expect("no panics while locked");
                st.in_use -= need;
                if let Err(e) = r {
                    st.failed.get_or_insert(e);
                }
                freed.notify_all();
            });
        }
    });
    match state.into_inner().expect("no panics while locked").failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
