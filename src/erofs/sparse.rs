//! GNU tar's PAX sparse formats, which the `tar` crate passes through as plain files:
//! - 0.0: records `GNU.sparse.size`, then `GNU.sparse.offset` / `GNU.sparse.numbytes` pairs;
//! - 0.1: `GNU.sparse.size`, `GNU.sparse.map` = `offset,numbytes,…`, `GNU.sparse.name`;
//! - 1.0: `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.realsize`,
//!   `GNU.sparse.name`; the map leads the entry's data as decimal lines (count, then offset and
//!   numbytes per segment), padded to 512 bytes.
//!
//! The entry's data (after a 1.0 map) is the segments' bytes back to back. (Old GNU `S`
//! entries are expanded by the `tar` crate itself; their zero runs become holes in `data`.)

use std::io::Read;

use super::Error;

/// The `GNU.sparse.*` records of one entry.
#[derive(Debug, Default)]
pub(crate) struct SparseHeaders {
    pub name: Option<Vec<u8>>,
    size: Option<u64>,
    major: Option<u64>,
    map: Option<Vec<u8>>,
    offsets: Vec<u64>,
    numbytes: Vec<u64>,
}

/// A validated map: segments sorted, disjoint, inside the file.
#[derive(Debug)]
pub(crate) struct SparseMap {
    pub real_size: u64,
    pub segments: Vec<(u64, u64)>,
}

/// Longest decimal line of a 1.0 map (20 digits and a newline).
const MAX_LINE: usize = 21;

impl SparseHeaders {
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8], entry: &str) -> Result<(), Error> {
        let number = || {
            parse_u64(value).ok_or_else(|| Error::Sparse {
                entry: entry.to_owned(),
                reason: "malformed number in a GNU.sparse record",
            })
        };
        match key {
            b"GNU.sparse.name" => self.name = Some(value.to_vec()),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => self.size = Some(number()?),
            b"GNU.sparse.major" => self.major = Some(number()?),
            b"GNU.sparse.map" => self.map = Some(value.to_vec()),
            b"GNU.sparse.offset" => self.offsets.push(number()?),
            b"GNU.sparse.numbytes" => self.numbytes.push(number()?),
            // minor, numblocks: implied by the rest.
            _ => {}
        }
        Ok(())
    }

    /// Whether the entry is a PAX sparse file (any format).
    pub(crate) fn is_sparse(&self) -> bool {
        self.size.is_some() || self.major.is_some() || self.map.is_some()
    }
}

/// The entry's sparse map: from its records (0.0, 0.1) or from the head of `data` (1.0, whose
/// map and padding are consumed here). `stored` is the entry's size in the archive.
pub(crate) fn read_map(
    h: &SparseHeaders,
    data: &mut impl Read,
    stored: u64,
    entry: &str,
) -> Result<SparseMap, Error> {
    let bad = |reason| Error::Sparse {
        entry: entry.to_owned(),
        reason,
    };
    let real_size = h
        .size
        .ok_or_else(|| bad("no GNU.sparse.size / realsize record"))?;
    let mut flat: Vec<u64> = Vec::new();
    let mut map_len = 0u64;
    match (h.major, &h.map) {
        (Some(1), _) => {
            let mut line = LineReader { data, read: 0 };
            let count = line.number(entry)?;
            // Each segment needs at least 4 bytes of map ("0\n0\n"): bound the allocation.
            if count > stored / 4 {
                return Err(bad("the map claims more segments than the entry can hold"));
            }
            for _ in 0..count * 2 {
                flat.push(line.number(entry)?);
            }
            map_len = line.read.next_multiple_of(512);
            let mut pad = [0u8; 512];
            let want = (map_len - line.read) as usize;
            let mut got = 0;
            while got < want {
                let n = read_some(line.data, &mut pad[got..want]).map_err(|source| {
                    Error::TarEntry {
                        entry: entry.to_owned(),
                        source,
                    }
                })?;
                if n == 0 {
                    return Err(bad("the entry ends inside its sparse map"));
                }
                got += n;
            }
        }
        (Some(_), _) => return Err(bad("unknown GNU.sparse.major version")),
        (None, Some(map)) => {
            if !map.is_empty() {
                for n in map.split(|&b| b == b',') {
                    flat.push(parse_u64(n).ok_or_else(|| bad("malformed GNU.sparse.map"))?);
                }
            }
        }
        (None, None) => {
            if h.offsets.len() != h.numbytes.len() {
                return Err(bad("GNU.sparse.offset and numbytes records do not pair up"));
            }
            for (o, n) in h.offsets.iter().zip(&h.numbytes) {
                flat.extend([*o, *n]);
            }
        }
    }
    if !flat.len().is_multiple_of(2) {
        return Err(bad("odd number of values in the sparse map"));
    }
    let mut segments = Vec::with_capacity(flat.len() / 2);
    let mut end = 0u64;
    let mut total = 0u64;
    for pair in flat.chunks_exact(2) {
        let (offset, len) = (pair[0], pair[1]);
        let seg_end = offset
            .checked_add(len)
            .ok_or_else(|| bad("a segment ends beyond 2^64"))?;
        if offset < end || seg_end > real_size {
            return Err(bad(
                "segments overlap, are out of order, or end beyond the file",
            ));
        }
        end = seg_end;
        total += len;
        if len > 0 {
            segments.push((offset, len));
        }
    }
    if map_len.checked_add(total) != Some(stored) {
        return Err(bad("the map's data does not add up to the entry's size"));
    }
    Ok(SparseMap {
        real_size,
        segments,
    })
}

/// Decimal lines read a byte at a time (the map is small, and nothing past it may be consumed).
struct LineReader<'a, R> {
    data: &'a mut R,
    read: u64,
}

impl<R: Read> LineReader<'_, R> {
    fn number(&mut self, entry: &str) -> Result<u64, Error> {
        let mut digits = Vec::with_capacity(MAX_LINE);
        loop {
            let mut b = [0u8; 1];
            let n = read_some(self.data, &mut b).map_err(|source| Error::TarEntry {
                entry: entry.to_owned(),
                source,
            })?;
            if n == 0 || digits.len() > MAX_LINE {
                return Err(Error::Sparse {
                    entry: entry.to_owned(),
                    reason: "the sparse map is truncated or malformed",
                });
            }
            self.read += 1;
            if b[0] == b'\n' {
                break;
            }
            digits.push(b[0]);
        }
        parse_u64(&digits).ok_or_else(|| Error::Sparse {
            entry: entry.to_owned(),
            reason: "malformed number in the sparse map",
        })
    }
}

/// `read`, retried on `Interrupted`.
pub(crate) fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// A decimal `u64` (PAX numbers), nothing else.
pub(crate) fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
