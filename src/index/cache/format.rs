//! The byte layout of `db/images.idx`: header, sections, checksum levels. No I/O here.
//!
//! ```text
//! [0, HEADER_LEN)            header (fixed fields, up to TOP_MAX top sums, its own checksum)
//! [HEADER_LEN, body_end)     body: the sections below, each 8-aligned, level 0 of the sums
//! [body_end, ..)             sum levels 1..: 16 bytes of xxh3-128 per 4 KiB block of the level
//!                            below; the last level (≤ TOP_MAX sums) is kept in the header
//! ```
//!
//! All integers are little-endian. Offsets inside records are relative to their section.

use crate::digest::{Algorithm, Digest};

/// `db/images.idx` begins with these bytes.
pub const MAGIC: [u8; 8] = *b"IMGSIDX\0";
/// Bumped on any incompatible change; a reader rejects every other version.
pub const VERSION: u32 = 3;
/// Bytes of the header, including the top sums and the header checksum.
pub const HEADER_LEN: usize = 2048;
/// Checksummed block size of every level.
pub const BLOCK: usize = 4096;
/// Bytes of one block checksum (xxh3-128, little-endian).
pub const SUM_LEN: usize = 16;
/// Most sums the header holds; the level that fits becomes the top.
pub const TOP_MAX: usize = 64;
/// Most checksum levels above the body (4 KiB blocks, 256 sums per block: far beyond 2^40 bytes).
pub const MAX_LEVELS: usize = 6;

/// Length of one item record (one index key).
pub const ITEM_LEN: usize = 48;
/// Length of one hash bucket: high 32 bits of the hash, then what it points at plus one (0:
/// empty). A key bucket points at an image record (its offset in `Records` / 8), a canonical
/// bucket at a canonical record (its number).
pub const BUCKET_LEN: usize = 8;
/// Length of one canonical-reference record.
pub const CANON_LEN: usize = 16;
/// Length of one image record.
pub const IMAGE_LEN: usize = 80;
/// Length of the fixed part of a variable-length record in `Records`; its keys follow.
pub const REC_FIXED: usize = 96;
/// Length of one prefix-table record (sha256 IDs only).
pub const PREFIX_LEN: usize = 40;
/// At most this many leading bits of an ID pick its prefix bucket; every prefix has 48.
pub const MAX_BUCKET_BITS: u32 = 16;

/// The body's sections, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sec {
    /// `ITEM_LEN` records sorted by key.
    Items = 0,
    /// Open-addressing hash table over item keys, pointing at their images' records.
    KeyHash,
    /// `CANON_LEN` records, one per distinct canonical reference.
    Canon,
    /// Open-addressing hash table over canonical references.
    CanonHash,
    /// u32 image numbers, runs pointed at by canonical records.
    CanonList,
    /// `IMAGE_LEN` records sorted by digest, each pointing at its record in `Records`.
    Images,
    /// One variable-length record per image, 8-aligned, in image order: `REC_FIXED` bytes
    /// (algorithm, image number, record length, key count, ID, the byte range of the entry
    /// under its first key) then its keys, sorted (u32 length + bytes each), zero-padded.
    Records,
    /// `PREFIX_LEN` records of sha256 IDs sorted by ID.
    Prefix,
    /// u32 starts of each prefix bucket, plus the end.
    Buckets,
    /// Key, canonical-reference and creation-time bytes.
    Strings,
}

/// Number of sections.
pub const SECTIONS: usize = 10;

/// A time as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds.
    pub nsec: i64,
}

/// What a cache was built from: the `fstat` of the index descriptor that was parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Source {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Time,
    /// Status-change time.
    pub ctime: Time,
}

/// The decoded header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 0: oci, 1: cloudimg.
    pub kind: u8,
    /// The index file the cache describes.
    pub source: Source,
    /// A filesystem-clock time taken before the index was read; the source's times must be older.
    pub clock: Time,
    /// Device and inode of the `db/` directory: the store the cache belongs to.
    pub db: (u64, u64),
    /// The generation token at the start of the index, if it had one.
    pub token: Option<[u8; 16]>,
    /// Number of items (index keys).
    pub n_items: u32,
    /// Number of images (distinct IDs).
    pub n_images: u32,
    /// Number of distinct canonical references.
    pub n_canon: u32,
    /// Number of sha256 images in the prefix table.
    pub n_prefix: u32,
    /// Leading ID bits that pick a prefix bucket.
    pub bucket_bits: u32,
    /// (offset, length) of each section, offsets from the start of the file.
    pub sections: [(u64, u64); SECTIONS],
    /// End of the body.
    pub body_end: u64,
    /// Sums of the top level (its blocks' checksums).
    pub top: Vec<[u8; SUM_LEN]>,
}

/// Offsets of the fixed header fields.
mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const KIND: usize = 12;
    pub const FLAGS: usize = 13;
    pub const BLOCK: usize = 16;
    pub const SOURCE: usize = 24; // dev ino size mtime(sec,nsec) ctime(sec,nsec): 7 × 8
    pub const CLOCK: usize = 80; // sec, nsec
    pub const DB: usize = 96; // dev, ino
    pub const TOKEN: usize = 112; // 16 bytes
    pub const COUNTS: usize = 128; // n_items n_images n_canon n_prefix bucket_bits top_count
    pub const SECTIONS: usize = 160; // SECTIONS × (u64, u64)
    pub const BODY_END: usize = 320;
    pub const TOP: usize = 384; // TOP_MAX × SUM_LEN = 1024
    pub const HEADER_SUM: usize = super::HEADER_LEN - super::SUM_LEN;
}

const _: () = assert!(at::CLOCK == at::SOURCE + 56 && at::DB == at::SOURCE + 72);

const FLAG_TOKEN: u8 = 1;

/// Why bytes are not a usable cache header.
pub type Reason = &'static str;

/// The checksum of one block.
#[must_use]
pub fn sum(bytes: &[u8]) -> [u8; SUM_LEN] {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

/// The 64-bit hash placing a string in a hash section.
#[must_use]
pub fn str_hash(s: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(s)
}

/// Little-endian u32 at `off` of `b`; callers pass in-bounds offsets.
#[must_use]
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(x)
}

/// Little-endian u64 at `off` of `b`; callers pass in-bounds offsets.
#[must_use]
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

fn i64_at(b: &[u8], off: usize) -> i64 {
    u64_at(b, off).cast_signed()
}

/// Encode an algorithm as one byte.
#[must_use]
pub fn alg_code(a: Algorithm) -> u8 {
    match a {
        Algorithm::Sha256 => 1,
        Algorithm::Sha512 => 2,
        Algorithm::Blake3 => 3,
    }
}

/// Decode a digest stored as an algorithm byte plus 64 bytes.
#[must_use]
pub fn digest_of(code: u8, bytes: &[u8]) -> Option<Digest> {
    let alg = match code {
        1 => Algorithm::Sha256,
        2 => Algorithm::Sha512,
        3 => Algorithm::Blake3,
        _ => return None,
    };
    let used = bytes.get(..alg.byte_len())?;
    // The unused tail must be zero, so every digest has one encoding.
    if bytes[alg.byte_len()..].iter().any(|&b| b != 0) {
        return None;
    }
    Digest::from_bytes(alg, used)
}

/// The bucket of a 32-byte ID (or prefix lower bound) among `1 << bits`.
#[must_use]
pub fn bucket_of(id: &[u8], bits: u32) -> usize {
    let head = u32::from_be_bytes([id[0], id[1], id[2], id[3]]);
    (u64::from(head) >> (32 - bits)) as usize
}

/// Where each checksum level lives: level 0 is the body.
#[must_use]
pub fn levels(body_end: u64) -> Vec<(u64, u64)> {
    let mut out = vec![(
        HEADER_LEN as u64,
        body_end.saturating_sub(HEADER_LEN as u64),
    )];
    loop {
        let (off, len) = out[out.len() - 1];
        let blocks = len.div_ceil(BLOCK as u64);
        if blocks as usize <= TOP_MAX || out.len() > MAX_LEVELS {
            return out;
        }
        out.push((off + len, blocks * SUM_LEN as u64));
    }
}

/// Total file length for a body ending at `body_end`.
#[must_use]
pub fn file_len(body_end: u64) -> u64 {
    let l = levels(body_end);
    let (off, len) = l[l.len() - 1];
    off + len
}

/// The token written at the very start of `images.json`: `{"imgstore_generation":"<32 hex>"`.
pub const TOKEN_KEY: &str = "imgstore_generation";
const TOKEN_LEAD: &[u8] = b"{\"imgstore_generation\":\"";
/// Bytes a reader preads to find the token.
pub const TOKEN_PROBE: usize = TOKEN_LEAD.len() + 33;

/// The generation token at the start of an index file's first bytes, if it carries one there.
#[must_use]
pub fn token_of(head: &[u8]) -> Option<[u8; 16]> {
    let rest = head.strip_prefix(TOKEN_LEAD)?;
    let (hex, after) = (rest.get(..32)?, rest.get(32)?);
    if *after != b'"' {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let v = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = v(pair[0])? << 4 | v(pair[1])?;
    }
    Some(out)
}

impl Header {
    /// Encode into the first `HEADER_LEN` bytes of `out`, computing the header checksum.
    pub fn encode(&self, out: &mut [u8]) {
        let h = &mut out[..HEADER_LEN];
        h.fill(0);
        let mut put = |off: usize, b: &[u8]| h[off..off + b.len()].copy_from_slice(b);
        put(at::MAGIC, &MAGIC);
        put(at::VERSION, &VERSION.to_le_bytes());
        put(at::KIND, &[self.kind]);
        put(
            at::FLAGS,
            &[if self.token.is_some() { FLAG_TOKEN } else { 0 }],
        );
        put(at::BLOCK, &(BLOCK as u32).to_le_bytes());
        let s = &self.source;
        let fields = [
            s.dev,
            s.ino,
            s.size,
            s.mtime.sec.cast_unsigned(),
            s.mtime.nsec.cast_unsigned(),
            s.ctime.sec.cast_unsigned(),
            s.ctime.nsec.cast_unsigned(),
            self.clock.sec.cast_unsigned(),
            self.clock.nsec.cast_unsigned(),
            self.db.0,
            self.db.1,
        ];
        for (i, v) in fields.iter().enumerate() {
            put(at::SOURCE + 8 * i, &v.to_le_bytes());
        }
        put(at::TOKEN, &self.token.unwrap_or_default());
        let counts = [
            self.n_items,
            self.n_images,
            self.n_canon,
            self.n_prefix,
            self.bucket_bits,
            self.top.len() as u32,
        ];
        for (i, v) in counts.iter().enumerate() {
            put(at::COUNTS + 4 * i, &v.to_le_bytes());
        }
        for (i, (off, len)) in self.sections.iter().enumerate() {
            put(at::SECTIONS + 16 * i, &off.to_le_bytes());
            put(at::SECTIONS + 16 * i + 8, &len.to_le_bytes());
        }
        put(at::BODY_END, &self.body_end.to_le_bytes());
        for (i, s) in self.top.iter().enumerate() {
            put(at::TOP + SUM_LEN * i, s);
        }
        let hs = sum(&h[..at::HEADER_SUM]);
        h[at::HEADER_SUM..].copy_from_slice(&hs);
    }

    /// Decode and check a header against the file length: magic, version, checksum, and that
    /// every section and level lies inside the file with lengths matching the counts. O(1).
    pub fn decode(bytes: &[u8], file_len: u64) -> Result<Header, Reason> {
        let head = bytes.get(..HEADER_LEN).ok_or("shorter than its header")?;
        if head[..8] != MAGIC {
            return Err("not an imgstore index cache (bad magic)");
        }
        if u32_at(head, at::VERSION) != VERSION {
            return Err("unsupported cache version");
        }
        if sum(&head[..at::HEADER_SUM]) != head[at::HEADER_SUM..] {
            return Err("header checksum mismatch");
        }
        if u32_at(head, at::BLOCK) as usize != BLOCK {
            return Err("unsupported block size");
        }
        let kind = head[at::KIND];
        if kind > 1 {
            return Err("unknown index kind");
        }
        let word = |i: usize| u64_at(head, at::SOURCE + 8 * i);
        let time = |i: usize| Time {
            sec: i64_at(head, at::SOURCE + 8 * i),
            nsec: i64_at(head, at::SOURCE + 8 * (i + 1)),
        };
        let source = Source {
            dev: word(0),
            ino: word(1),
            size: word(2),
            mtime: time(3),
            ctime: time(5),
        };
        let token = match head[at::FLAGS] {
            0 => None,
            FLAG_TOKEN => {
                let mut t = [0u8; 16];
                t.copy_from_slice(&head[at::TOKEN..at::TOKEN + 16]);
                Some(t)
            }
            _ => return Err("unknown header flags"),
        };
        let count = |i: usize| u32_at(head, at::COUNTS + 4 * i);
        let mut sections = [(0u64, 0u64); SECTIONS];
        for (i, s) in sections.iter_mut().enumerate() {
            *s = (
                u64_at(head, at::SECTIONS + 16 * i),
                u64_at(head, at::SECTIONS + 16 * i + 8),
            );
        }
        let top_count = count(5) as usize;
        let header = Header {
            kind,
            source,
            clock: time(7),
            db: (word(9), word(10)),
            token,
            n_items: count(0),
            n_images: count(1),
            n_canon: count(2),
            n_prefix: count(3),
            bucket_bits: count(4),
            sections,
            body_end: u64_at(head, at::BODY_END),
            top: Vec::new(),
        };
        header.check_layout(file_len, top_count)?;
        let top = (0..top_count)
            .map(|i| {
                let mut s = [0u8; SUM_LEN];
                s.copy_from_slice(&head[at::TOP + SUM_LEN * i..at::TOP + SUM_LEN * (i + 1)]);
                s
            })
            .collect();
        Ok(Header { top, ..header })
    }

    /// Sections inside the body, lengths matching the counts, the file as long as the levels.
    fn check_layout(&self, file_len: u64, top_count: usize) -> Result<(), Reason> {
        let body_end = self.body_end;
        if body_end < HEADER_LEN as u64 || file_len != file_len_checked(body_end)? {
            return Err("file length does not match its header (truncated or extended)");
        }
        for &(off, len) in &self.sections {
            let end = off.checked_add(len).ok_or("section out of bounds")?;
            if off < HEADER_LEN as u64 || end > body_end || off % 8 != 0 {
                return Err("section out of bounds");
            }
        }
        let len_of = |s: Sec| self.section(s).1;
        let n = |x: u32, size: usize| u64::from(x) * size as u64;
        let buckets = |s: Sec| len_of(s) / BUCKET_LEN as u64;
        let hash_ok = |s: Sec, entries: u32| {
            buckets(s).is_power_of_two()
                && buckets(s) * BUCKET_LEN as u64 == len_of(s)
                && buckets(s) >= u64::from(entries)
        };
        let consistent = len_of(Sec::Items) == n(self.n_items, ITEM_LEN)
            && len_of(Sec::Canon) == n(self.n_canon, CANON_LEN)
            && len_of(Sec::Images) == n(self.n_images, IMAGE_LEN)
            && len_of(Sec::Prefix) == n(self.n_prefix, PREFIX_LEN)
            && len_of(Sec::Records).is_multiple_of(8)
            && len_of(Sec::Records) >= n(self.n_images, REC_FIXED)
            && len_of(Sec::CanonList) % 4 == 0
            && self.bucket_bits <= MAX_BUCKET_BITS
            && len_of(Sec::Buckets) == ((1u64 << self.bucket_bits) + 1) * 4
            && hash_ok(Sec::KeyHash, self.n_items)
            && hash_ok(Sec::CanonHash, self.n_canon)
            && self.n_images <= self.n_items
            && self.n_prefix <= self.n_images;
        if !consistent {
            return Err("section lengths do not match the counts");
        }
        let lv = levels(body_end);
        let (_, top_len) = lv[lv.len() - 1];
        if top_count != top_len.div_ceil(BLOCK as u64) as usize || top_count > TOP_MAX {
            return Err("wrong number of top sums");
        }
        Ok(())
    }

    /// (offset, length) of a section.
    #[must_use]
    pub fn section(&self, s: Sec) -> (u64, u64) {
        self.sections[s as usize]
    }
}

fn file_len_checked(body_end: u64) -> Result<u64, Reason> {
    let l = levels(body_end);
    if l.len() > MAX_LEVELS {
        return Err("too many checksum levels");
    }
    Ok(file_len(body_end))
}

/// Recompute every checksum of a cache after its body or header was edited: for tests that
/// hand-craft caches which pass the checksums.
#[cfg(feature = "unstable")]
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let body_end = u64_at(bytes, at::BODY_END);
    let lv = levels(body_end);
    if file_len(body_end) != bytes.len() as u64 || lv.len() > MAX_LEVELS {
        return;
    }
    for w in lv.windows(2) {
        let (off, len) = (w[0].0 as usize, w[0].1 as usize);
        let sums: Vec<u8> = bytes[off..off + len].chunks(BLOCK).flat_map(sum).collect();
        let at = w[1].0 as usize;
        bytes[at..at + sums.len()].copy_from_slice(&sums);
    }
    let (off, len) = lv[lv.len() - 1];
    let top: Vec<[u8; SUM_LEN]> = bytes[off as usize..(off + len) as usize]
        .chunks(BLOCK)
        .map(sum)
        .collect();
    bytes[at::TOP..at::TOP + TOP_MAX * SUM_LEN].fill(0);
    for (i, s) in top.iter().enumerate().take(TOP_MAX) {
        bytes[at::TOP + SUM_LEN * i..at::TOP + SUM_LEN * (i + 1)].copy_from_slice(s);
    }
    bytes[at::COUNTS + 20..at::COUNTS + 24].copy_from_slice(&(top.len() as u32).to_le_bytes());
    let hs = sum(&bytes[..at::HEADER_SUM]);
    bytes[at::HEADER_SUM..HEADER_LEN].copy_from_slice(&hs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let t = [0xab; 16];
        let text = format!(
            "{{\"{TOKEN_KEY}\":\"{}\",\"images\":{{}}}}",
            "ab".repeat(16)
        );
        assert_eq!(token_of(text.as_bytes()), Some(t));
        assert!(text.len() >= TOKEN_PROBE);
        assert_eq!(token_of(b"{\"images\":{}}"), None);
        assert_eq!(token_of(&text.as_bytes()[..TOKEN_PROBE - 1]), None);
        assert_eq!(token_of(text.replace("ab", "AB").as_bytes()), None);
    }

    #[test]
    fn levels_grow_slowly() {
        assert_eq!(levels(HEADER_LEN as u64).len(), 1);
        assert_eq!(levels(HEADER_LEN as u64 + 64 * BLOCK as u64).len(), 1);
        assert_eq!(levels(HEADER_LEN as u64 + 65 * BLOCK as u64).len(), 2);
        // 1 GiB of body: 262144 blocks → 1024 level-1 blocks → 4 top sums.
        assert_eq!(levels(HEADER_LEN as u64 + (1 << 30)).len(), 3);
    }
}
