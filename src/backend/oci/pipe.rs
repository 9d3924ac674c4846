//! A bounded in-memory pipe between two threads of one layer's pipeline (download → decompress →
//! EROFS writer): the writer side sends owned buffers, the reader side reads them in order and
//! hands each one back when it is consumed, so the same few buffers circulate (no allocation and
//! no fresh page faults per message). A writer that fails sends its error, so the reader sees the
//! cause, not a bare end of stream.

use std::io::{self, Read, Write};

use crossbeam_channel::{bounded, Receiver, Sender};

/// Buffers in flight per pipe (each up to the writer's write size, e.g. 256 KiB).
const DEPTH: usize = 16;

/// The sending end. Dropping it ends the stream.
pub struct PipeWriter {
    tx: Sender<io::Result<Vec<u8>>>,
    /// Buffers the reader has consumed, for reuse.
    spare: Receiver<Vec<u8>>,
}

/// The receiving end.
pub struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

/// A new pipe.
#[must_use]
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = bounded(DEPTH);
    // Room for every buffer that can exist (in flight + one being read + one being filled), so
    // handing one back never blocks.
    let (back, spare) = bounded(DEPTH + 2);
    (
        PipeWriter { tx, spare },
        PipeReader {
            rx,
            back,
            buf: Vec::new(),
            pos: 0,
            failed: false,
        },
    )
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the layer converter stopped")
}

impl PipeWriter {
    /// End the stream with an error the reader will return.
    pub fn fail(self, error: io::Error) {
        // The reader may be gone already; then nobody needs the error.
        let _ = self.tx.send(Err(error));
    }

    /// An empty buffer: a consumed one if the reader handed one back, else a new one.
    fn buffer(&self) -> Vec<u8> {
        let mut buf = self.spare.try_recv().unwrap_or_default();
        buf.clear();
        buf
    }

    /// Send what `src` yields until its end, reading straight into the pipe's buffers (up to
    /// `size` bytes each, at least half full unless the stream ends): one copy fewer than
    /// reading into a buffer of one's own and writing it.
    ///
    /// # Errors
    /// `src`'s read errors; the reader is gone.
    pub fn send_from(&mut self, src: &mut impl Read, size: usize) -> io::Result<()> {
        loop {
            // A reused buffer keeps its old bytes: only a shortfall is zeroed.
            let mut buf = self.spare.try_recv().unwrap_or_default();
            buf.resize(size, 0);
            let mut n = 0;
            while n < size / 2 {
                match src.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            self.tx.send(Ok(buf)).map_err(|_| gone())?;
        }
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut buf = self.buffer();
        buf.extend_from_slice(data);
        self.tx.send(Ok(buf)).map_err(|_| gone())?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.failed {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(buf)) => {
                    let used = std::mem::replace(&mut self.buf, buf);
                    self.pos = 0;
                    if used.capacity() > 0 {
                        // The writer may be gone or have spares enough: then it is dropped.
                        let _ = self.back.try_send(used);
                    }
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl PipeReader {
    /// Read and discard the rest of the stream (so its writer can finish, e.g. a download whose
    /// digest must still be checked after the converter gave up).
    pub fn drain(&mut self) {
        while let Ok(item) = self.rx.recv() {
            match item {
                Ok(buf) => {
                    let _ = self.back.try_send(buf);
                }
                Err(_) => break,
            }
        }
        self.buf.clear();
        self.pos = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_errors_cross_threads_in_order() {
        let (mut w, mut r) = pipe();
        let t = std::thread::spawn(move || {
            for i in 0..100u8 {
                w.write_all(&[i; 1000]).unwrap();
            }
            w.fail(io::Error::other("cut"));
        });
        let mut got = vec![0u8; 100_000];
        r.read_exact(&mut got).unwrap();
        assert!(got.chunks(1000).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        let e = r.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(e.to_string(), "cut");
        t.join().unwrap();
    }

    #[test]
    fn send_from_carries_a_stream_in_recycled_buffers() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut w, mut r) = pipe();
        let src = data.clone();
        let t = std::thread::spawn(move || w.send_from(&mut &src[..], 64 << 10));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        t.join().unwrap().unwrap();
        assert!(got == data, "the stream arrives whole and in order");
    }

    #[test]
    fn consumed_buffers_go_back_to_the_writer() {
        let (mut w, mut r) = pipe();
        w.write_all(&[1; 1000]).unwrap();
        w.write_all(&[2; 10]).unwrap();
        let mut got = [0u8; 1001];
        r.read_exact(&mut got).unwrap();
        // Taking the second message handed the first one back.
        let spare = w.spare.try_recv().expect("the consumed buffer came back");
        assert!(spare.capacity() >= 1000);
        assert_eq!(got[1000], 2);
    }

    #[test]
    fn a_gone_reader_fails_the_writer() {
        let (mut w, r) = pipe();
        drop(r);
        assert_eq!(w.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
