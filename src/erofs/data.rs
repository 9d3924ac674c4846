//! The data area: file contents streamed to the output as they arrive, chunk by chunk, with
//! all-zero chunks left out as holes. Nothing is kept in memory beyond one chunk.

use std::io::Write;

use super::format::{BLOCK_SIZE, NULL_ADDR};
use super::Error;

/// Where the data area's next block goes; owns the (buffered) output while the tar is read.
pub(crate) struct DataArea<W: Write> {
    pub(crate) out: W,
    /// Next free block. Block 0 holds the superblock.
    pub(crate) next_block: u64,
}

impl<W: Write> DataArea<W> {
    pub(crate) fn new(out: W) -> Self {
        Self { out, next_block: 1 }
    }

    /// Write `data` at the next free block, zero-padded to whole blocks; returns its block address.
    pub(crate) fn write_blocks(&mut self, data: &[u8]) -> Result<u32, Error> {
        let addr = u32::try_from(self.next_block).map_err(|_| Error::TooLarge)?;
        if addr == NULL_ADDR {
            return Err(Error::TooLarge);
        }
        self.out
            .write_all(data)
            .map_err(Error::output("writing data"))?;
        let pad = (data.len() as u64).next_multiple_of(BLOCK_SIZE) - data.len() as u64;
        self.out
            .write_all(&ZEROS[..pad as usize])
            .map_err(Error::output("writing data"))?;
        self.next_block += (data.len() as u64).div_ceil(BLOCK_SIZE);
        Ok(addr)
    }
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileLayout {
    /// Contiguous blocks from `blkaddr` (0 for an empty file).
    Plain { blkaddr: u32 },
    /// Chunks of `4096 << chunk_bits` bytes, each at a block address or [`NULL_ADDR`] (a hole).
    Chunked { chunk_bits: u8, map: Vec<u32> },
}

/// A regular file's bytes as they stream in.
pub(crate) struct FileBuilder {
    chunk: usize,
    chunk_bits: u8,
    buf: Vec<u8>,
    size: u64,
    map: Vec<u32>,
    holes: bool,
    hasher: Option<blake3::Hasher>,
}

/// Largest regular file (sparse or not): EROFS addresses 16 TiB of blocks.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 44;

/// Largest chunk: 64 MiB, the most one file buffers in memory.
const MAX_CHUNK_BITS: u8 = 14;

/// The chunk size for a file of `size` bytes: 4 KiB, doubled until the file has at most 65536
/// chunks (a map ≤ 256 KiB), up to 64 MiB chunks (a 16 TiB file: a 1 MiB map).
fn chunk_bits_for(size: u64) -> u8 {
    let mut bits = 0u8;
    while bits < MAX_CHUNK_BITS && size.div_ceil(BLOCK_SIZE << bits) > 65536 {
        bits += 1;
    }
    bits
}

impl FileBuilder {
    /// A file expected to be `size_hint` bytes long (it sets the chunk size only); `hash` keeps a
    /// blake3 of the contents for the manifest.
    pub(crate) fn new(size_hint: u64, hash: bool) -> Self {
        let chunk_bits = chunk_bits_for(size_hint);
        Self {
            chunk: (BLOCK_SIZE as usize) << chunk_bits,
            chunk_bits,
            buf: Vec::new(),
            size: 0,
            map: Vec::new(),
            holes: false,
            hasher: hash.then(blake3::Hasher::new),
        }
    }

    /// Append bytes.
    pub(crate) fn data<W: Write>(
        &mut self,
        area: &mut DataArea<W>,
        mut bytes: &[u8],
    ) -> Result<(), Error> {
        if let Some(h) = &mut self.hasher {
            h.update(bytes);
        }
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.buf.is_empty() && bytes.len() >= self.chunk {
                // A whole chunk straight from the caller's buffer.
                let (now, rest) = bytes.split_at(self.chunk);
                self.flush_chunk(area, Some(now))?;
                bytes = rest;
                continue;
            }
            let take = (self.chunk - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == self.chunk {
                self.flush_chunk(area, None)?;
            }
        }
        Ok(())
    }

    /// Append `n` zero bytes (a hole of a sparse entry): whole chunks become holes unscanned.
    pub(crate) fn zeros<W: Write>(
        &mut self,
        area: &mut DataArea<W>,
        mut n: u64,
    ) -> Result<(), Error> {
        self.size += n;
        while n > 0 {
            if self.buf.is_empty() && n >= self.chunk as u64 {
                let whole = n / self.chunk as u64;
                self.map
                    .extend(std::iter::repeat_n(NULL_ADDR, whole as usize));
                self.holes = true;
                if let Some(h) = &mut self.hasher {
                    for _ in 0..whole * (self.chunk as u64 / ZEROS.len() as u64).max(1) {
                        h.update(&ZEROS[..self.chunk.min(ZEROS.len())]);
                    }
                }
                n -= whole * self.chunk as u64;
                continue;
            }
            let take = ((self.chunk - self.buf.len()) as u64).min(n) as usize;
            if let Some(h) = &mut self.hasher {
                let mut left = take;
                while left > 0 {
                    let k = left.min(ZEROS.len());
                    h.update(&ZEROS[..k]);
                    left -= k;
                }
            }
            self.buf.resize(self.buf.len() + take, 0);
            n -= take as u64;
            if self.buf.len() == self.chunk {
                self.flush_chunk(area, None)?;
            }
        }
        Ok(())
    }

    /// One chunk (`direct`, or the buffer): a hole if all zero, else written to the data area.
    fn flush_chunk<W: Write>(
        &mut self,
        area: &mut DataArea<W>,
        direct: Option<&[u8]>,
    ) -> Result<(), Error> {
        let chunk = direct.unwrap_or(&self.buf);
        if is_zero(chunk) {
            self.map.push(NULL_ADDR);
            self.holes = true;
        } else {
            let addr = area.write_blocks(chunk)?;
            self.map.push(addr);
        }
        self.buf.clear();
        Ok(())
    }

    /// The file's size, layout and (if asked) blake3.
    pub(crate) fn finish<W: Write>(
        mut self,
        area: &mut DataArea<W>,
    ) -> Result<(u64, FileLayout, Option<[u8; 32]>), Error> {
        if !self.buf.is_empty() {
            self.flush_chunk(area, None)?;
        }
        let hash = self.hasher.map(|h| *h.finalize().as_bytes());
        let layout = if self.holes {
            FileLayout::Chunked {
                chunk_bits: self.chunk_bits,
                map: self.map,
            }
        } else {
            FileLayout::Plain {
                blkaddr: self.map.first().copied().unwrap_or(0),
            }
        };
        Ok((self.size, layout, hash))
    }
}

fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_grows_with_the_file() {
        assert_eq!(chunk_bits_for(0), 0);
        assert_eq!(chunk_bits_for(256 << 20), 0);
        assert_eq!(chunk_bits_for((256 << 20) + 1), 1);
        assert_eq!(chunk_bits_for(5 << 30), 5);
        assert_eq!(chunk_bits_for(MAX_FILE_SIZE), MAX_CHUNK_BITS);
        assert_eq!(chunk_bits_for(u64::MAX), MAX_CHUNK_BITS);
    }

    #[test]
    fn zero_chunks_become_holes_and_data_stays_contiguous() {
        let mut area = DataArea::new(Vec::new());
        let mut f = FileBuilder::new(3 * 4096, true);
        f.data(&mut area, &[1u8; 4096]).unwrap();
        f.zeros(&mut area, 4096).unwrap();
        f.data(&mut area, &[2u8; 10]).unwrap();
        let (size, layout, hash) = f.finish(&mut area).unwrap();
        assert_eq!(size, 2 * 4096 + 10);
        assert_eq!(
            layout,
            FileLayout::Chunked {
                chunk_bits: 0,
                map: vec![1, NULL_ADDR, 2]
            }
        );
        let mut want = vec![1u8; 4096];
        want.resize(8192, 0);
        want.extend_from_slice(&[2u8; 10]);
        assert_eq!(hash, Some(*blake3::hash(&want).as_bytes()));
        assert_eq!(area.out.len(), 2 * 4096);

        let mut f = FileBuilder::new(5000, false);
        f.data(&mut area, &[3u8; 5000]).unwrap();
        assert_eq!(
            f.finish(&mut area).unwrap().1,
            FileLayout::Plain { blkaddr: 3 }
        );
        assert_eq!(area.next_block, 5);
    }
}
