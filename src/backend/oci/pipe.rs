//! A bounded in-memory pipe between two threads of one layer's pipeline (download → decompress →
//! EROFS writer): the writer side sends owned buffers, the reader side reads them in order.
//! A writer that fails sends its error, so the reader sees the cause, not a bare end of stream.

use std::io::{self, Read, Write};

use crossbeam_channel::{bounded, Receiver, Sender};

/// Buffers in flight per pipe (each up to the writer's write size, e.g. 256 KiB).
const DEPTH: usize = 16;

/// The sending end. Dropping it ends the stream.
pub struct PipeWriter {
    tx: Sender<io::Result<Vec<u8>>>,
}

/// The receiving end.
pub struct PipeReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

/// A new pipe.
#[must_use]
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = bounded(DEPTH);
    (
        PipeWriter { tx },
        PipeReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            failed: false,
        },
    )
}

impl PipeWriter {
    /// End the stream with an error the reader will return.
    pub fn fail(self, error: io::Error) {
        // The reader may be gone already; then nobody needs the error.
        let _ = self.tx.send(Err(error));
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.tx
            .send(Ok(data.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the layer converter stopped"))?;
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
                    self.buf = buf;
                    self.pos = 0;
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
            if item.is_err() {
                break;
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
    fn a_gone_reader_fails_the_writer() {
        let (mut w, r) = pipe();
        drop(r);
        assert_eq!(w.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
