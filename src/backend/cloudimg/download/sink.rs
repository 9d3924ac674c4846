//! The write side of a ranged download: [`WRITERS`] threads write the connections' buffers at
//! their offsets with direct I/O, record a piece as complete once all its bytes are written, and
//! only then hand the buffers on to the hasher.
//!
//! Copying a whole image into the page cache cost as much CPU as sha256 (a quarter of a pull's
//! profile, measured with `perf record` on a 1 GiB loopback pull), and the checkpoints' and the
//! final `fdatasync` paid again for the writeback. `O_DIRECT` writes skip both, as
//! `ingest::stage` does. They are synchronous, so they run here, behind the connections, not
//! on them, and on several threads: one synchronous writer keeps one request in flight, and a
//! virtio disk wrote 1 GiB of 4 MiB direct writes in 1.6-2.1 s that way against 0.96 s with
//! four at once (`dd oflag=direct`, loaded machine). Direct writes need an aligned offset, length and buffer: the tail of the file, a
//! buffer that starts mid-block (after a dropped connection), or a filesystem that refuses
//! `O_DIRECT` are written through the ordinary descriptor. A block is only ever written one
//! way within a download (a direct write covers whole blocks of one buffer), so the two
//! descriptors never hold different versions of it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use std::collections::HashMap;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::super::Error;
use super::resume::Tracker;

/// Alignment of direct writes: offset, length and buffer address (the largest logical block
/// size in use).
pub const ALIGN: usize = 4096;
/// Writer threads (direct writes in flight at once).
pub const WRITERS: usize = 4;

/// Memory for a [`Chunk`]: an anonymous mapping whose pages are faulted in when it is made
/// (`MAP_POPULATE`), or the heap where mapping fails.
///
/// About 40 buffers of 4 MiB are in flight at the peak of a download (the queues and the
/// hasher's window). Touched page by page on first use they cost 43,000 page faults per
/// download: 6 % of a 1 GiB pull's CPU samples in memory management (`perf record`), 3 % when
/// populated at once (the zeroing stays). Huge pages (`MADV_HUGEPAGE`) cost more system time
/// here: their faults compact memory.
pub enum Buf {
    /// A mapping of the size asked for (page aligned).
    Mapped(memmap2::MmapMut),
    /// Heap memory, over-allocated by [`ALIGN`] so that an aligned start fits.
    Heap(Vec<u8>),
}

impl Buf {
    /// Room for `cap` bytes starting at an aligned address.
    fn new(cap: usize) -> Buf {
        match memmap2::MmapOptions::new().len(cap).populate().map_anon() {
            Ok(map) => Buf::Mapped(map),
            Err(_) => Buf::Heap(vec![0u8; cap + ALIGN]),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Buf::Mapped(m) => m,
            Buf::Heap(v) => v,
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Buf::Mapped(m) => m,
            Buf::Heap(v) => v,
        }
    }

    /// Where bytes start so that they are aligned, and how many fit from there.
    fn aligned(&self) -> (usize, usize) {
        let b = self.bytes();
        let start = (ALIGN - b.as_ptr() as usize % ALIGN) % ALIGN;
        (start, b.len().saturating_sub(start))
    }
}

/// Bytes read from one connection, bound for `at` in the file, in memory whose bytes start at
/// an aligned address.
pub struct Chunk {
    /// Offset in the file.
    pub at: u64,
    /// The piece `[start, end)` it belongs to (empty for bytes read back from the file).
    piece: (u64, u64),
    buf: Buf,
    start: usize,
    len: usize,
}

impl Chunk {
    /// A buffer of room for `cap` bytes (from `pool` when it has one), empty, for offset `at`
    /// of `piece`.
    pub fn new(pool: &Receiver<Buf>, cap: usize, at: u64, piece: (u64, u64)) -> Chunk {
        let buf = match pool.try_recv() {
            Ok(b) if b.aligned().1 >= cap => b,
            _ => Buf::new(cap),
        };
        let start = buf.aligned().0;
        Chunk {
            at,
            piece,
            buf,
            start,
            len: 0,
        }
    }

    /// Bytes read from the file into a fresh buffer.
    pub fn read_back(file: &File, at: u64, len: usize) -> std::io::Result<Chunk> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)?;
        Ok(Chunk {
            at,
            piece: (at, at),
            buf: Buf::Heap(buf),
            start: 0,
            len,
        })
    }

    /// Room for `want` bytes after those already in it.
    pub fn room(&mut self, want: usize) -> &mut [u8] {
        let from = self.start + self.len;
        &mut self.buf.bytes_mut()[from..from + want]
    }

    /// `n` more bytes were put in [`Chunk::room`].
    pub fn filled(&mut self, n: usize) {
        self.len += n;
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf.bytes()[self.start..self.start + self.len]
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Drop the first `n` bytes (already hashed).
    pub fn skip(&mut self, n: usize) {
        let n = n.min(self.len);
        self.start += n;
        self.len -= n;
        self.at += n as u64;
    }

    /// The buffer, for the pool.
    pub fn into_buf(self) -> Buf {
        self.buf
    }
}

/// Bytes written so far of each piece not yet complete, by its start. A connection sends each
/// byte of a piece exactly once (a retry asks for the rest only), so a piece is complete when
/// its count reaches its length, whichever writers wrote its buffers and in whatever order.
#[derive(Default)]
pub struct Written(Mutex<HashMap<u64, u64>>);

impl Written {
    /// `n` more bytes of `piece` are written; tell `tracker` once all of them are.
    fn add(&self, (start, end): (u64, u64), n: u64, tracker: &Tracker) {
        let mut m = self.0.lock();
        let done = m.entry(start).or_insert(0);
        *done += n;
        if *done >= end - start {
            m.remove(&start);
            drop(m);
            tracker.complete(start, end);
        }
    }
}

/// The file, with a second descriptor open for direct writes when the filesystem allows.
struct Sink<'a> {
    file: &'a File,
    direct: Option<File>,
}

impl Sink<'_> {
    /// Write `c` at its offset: its aligned blocks directly when it can, the rest (and
    /// everything after a refusal) through the ordinary descriptor.
    fn write(&mut self, c: &Chunk) -> std::io::Result<()> {
        let bytes = c.bytes();
        let mut done = 0usize;
        if let Some(d) = &self.direct {
            let aligned = c.at.is_multiple_of(ALIGN as u64)
                && (bytes.as_ptr() as usize).is_multiple_of(ALIGN);
            let blocks = if aligned { bytes.len() / ALIGN * ALIGN } else { 0 };
            while done < blocks {
                match d.write_at(&bytes[done..blocks], c.at + done as u64) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    // A short direct write that leaves a partial block: the rest goes buffered.
                    Ok(n) if !n.is_multiple_of(ALIGN) => {
                        done += n;
                        break;
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // Alignment rules differ by filesystem and device: any refusal means
                    // "not here", for the rest of the download.
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                        self.direct = None;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.file.write_all_at(&bytes[done..], c.at + done as u64)
    }
}

/// Open the data file again, by its descriptor (so it is the same inode whatever happens to
/// its path), for direct writes; `None` where the filesystem refuses `O_DIRECT`.
fn open_direct(file: &File) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
}

/// One writer thread: write what the connections send; count it in `written` (which marks
/// pieces complete in `tracker`); pass the written bytes to `hasher`. Returns at the first
/// write error or when every connection is done.
pub fn run(
    file: &File,
    url: &str,
    tracker: &Tracker,
    written: &Written,
    rx: &Receiver<Chunk>,
    hasher: &Sender<Chunk>,
) -> Result<(), Error> {
    let mut sink = Sink {
        file,
        direct: open_direct(file),
    };
    for c in rx {
        sink.write(&c).map_err(|source| Error::Sink {
            url: url.to_owned(),
            source,
        })?;
        written.add(c.piece, c.len as u64, tracker);
        let _ = hasher.send(c);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(at: u64, bytes: &[u8]) -> Chunk {
        let (_tx, rx) = crossbeam_channel::unbounded();
        let mut c = Chunk::new(&rx, bytes.len(), at, (0, 0));
        c.room(bytes.len()).copy_from_slice(bytes);
        c.filled(bytes.len());
        c
    }

    /// Aligned blocks go direct, a buffer starting mid-block and the tail go buffered, and the
    /// file holds exactly the bytes written, whichever way each went.
    #[test]
    fn mixed_direct_and_buffered_writes_give_the_bytes() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let path = dir.path().join("data");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len = 5 * ALIGN + 123;
        file.set_len(len as u64).unwrap();
        let want: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut sink = Sink {
            file: &file,
            direct: open_direct(&file),
        };
        let had_direct = sink.direct.is_some();
        // Two blocks at 0 (direct), 100 bytes at 2 blocks (buffered, as after a dropped
        // connection), the rest of that block (buffered), then two blocks and the tail.
        let cuts = [0, 2 * ALIGN, 2 * ALIGN + 100, 3 * ALIGN, len];
        for w in cuts.windows(2) {
            sink.write(&chunk(w[0] as u64, &want[w[0]..w[1]])).unwrap();
        }
        // A filesystem that takes O_DIRECT kept taking it.
        assert_eq!(sink.direct.is_some(), had_direct);
        let mut got = vec![0u8; len];
        file.read_exact_at(&mut got, 0).unwrap();
        assert!(got == want, "the file differs from the bytes written");
    }
}
