//! The byte layout of `db/images.idx`: header, sections, self-checking blocks. No I/O here.
//!
//! ```text
//! [0, HEADER_LEN)            header (fixed fields, its own checksum); zeros up to BODY_START
//! [BODY_START, ..)           the body in 4 KiB blocks: PAYLOAD bytes of it, then the block's
//!                            checksum (xxh3-128 of the payload, seeded by the header checksum
//!                            and the block number)
//! ```
//!
//! The body is one byte stream, cut into the blocks' payloads (the last zero-padded): the
//! sections below lie in it at 8-aligned offsets from its start. A block is verified by itself,
//! so a lookup reads only the blocks it needs; the seed ties each block to its place and to the
//! header (a block of another cache, or moved, does not verify).
//!
//! All integers are little-endian. Offsets inside records are relative to their section.

use crate::digest::{Algorithm, Digest};

/// `db/images.idx` begins with these bytes.
pub const MAGIC: [u8; 8] = *b"IMGSIDX\0";
/// Bumped on any incompatible change; a reader rejects every other version.
pub const VERSION: u32 = 4;
/// Bytes of the header, including its checksum.
pub const HEADER_LEN: usize = 512;
/// Where the body's first block starts (blocks are page-aligned in the file).
pub const BODY_START: usize = 4096;
/// Size of one checksummed block of the body.
pub const BLOCK: usize = 4096;
/// Bytes of one block checksum (xxh3-128, little-endian).
pub const SUM_LEN: usize = 16;
/// Body bytes one block carries.
pub const PAYLOAD: usize = BLOCK - SUM_LEN;

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

/// Whether section number `i` starts a block's payload: the item, image and string tables,
/// which `list` reads whole and borrows from one mapping. Their fixed-size records divide a
/// payload, and the builder starts a string in the next payload rather than let it straddle.
#[must_use]
pub fn block_aligned(i: usize) -> bool {
    [Sec::Items, Sec::Images, Sec::Strings]
        .iter()
        .any(|&s| s as usize == i)
}

const _: () = assert!(
    PAYLOAD.is_multiple_of(ITEM_LEN) && PAYLOAD.is_multiple_of(IMAGE_LEN) && PAYLOAD.is_multiple_of(8)
);

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
    /// (offset, length) of each section, offsets from the start of the body.
    pub sections: [(u64, u64); SECTIONS],
    /// Length of the body (before the last block's zero padding).
    pub body_len: u64,
    /// Seed of the block checksums: the low 64 bits of the header checksum (derived when the
    /// header is decoded; [`Header::encode`] returns it and ignores this field).
    pub seed: u64,
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
    pub const COUNTS: usize = 128; // n_items n_images n_canon n_prefix bucket_bits
    pub const SECTIONS: usize = 160; // SECTIONS × (u64, u64)
    pub const BODY_LEN: usize = 320;
    pub const HEADER_SUM: usize = super::HEADER_LEN - super::SUM_LEN;
}

const _: () = assert!(at::CLOCK == at::SOURCE + 56 && at::DB == at::SOURCE + 72);
const _: () = assert!(at::BODY_LEN + 8 <= at::HEADER_SUM && HEADER_LEN <= BODY_START);

const FLAG_TOKEN: u8 = 1;

/// Why bytes are not a usable cache header.
pub type Reason = &'static str;

/// The checksum of the header bytes before it.
#[must_use]
pub fn sum(bytes: &[u8]) -> [u8; SUM_LEN] {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

/// The checksum of block `i`'s payload in a cache whose header gives `seed`.
#[must_use]
pub fn block_sum(payload: &[u8], seed: u64, i: u64) -> [u8; SUM_LEN] {
    xxhash_rust::xxh3::xxh3_128_with_seed(payload, seed.wrapping_add(i)).to_le_bytes()
}

/// Whether `block` (a whole block, checksum last) is block `i` of a cache with `seed`.
#[must_use]
pub fn block_ok(block: &[u8], seed: u64, i: u64) -> bool {
    block.len() == BLOCK && block_sum(&block[..PAYLOAD], seed, i) == block[PAYLOAD..]
}

/// Number of blocks holding a body of `body_len` bytes.
#[must_use]
pub fn blocks(body_len: u64) -> u64 {
    body_len.div_ceil(PAYLOAD as u64)
}

/// Total file length for a body of `body_len` bytes; `None` past `u64`.
#[must_use]
pub fn file_len(body_len: u64) -> Option<u64> {
    blocks(body_len)
        .checked_mul(BLOCK as u64)?
        .checked_add(BODY_START as u64)
}

/// Lay `body` out as the blocks of a cache whose header checksum gives `seed`, appending them
/// to `out` (which holds the header, zero-padded to `BODY_START`).
pub fn seal_body(out: &mut Vec<u8>, body: &[u8], seed: u64) {
    out.reserve(blocks(body.len() as u64) as usize * BLOCK);
    for (i, chunk) in body.chunks(PAYLOAD).enumerate() {
        let mut payload = [0u8; PAYLOAD];
        payload[..chunk.len()].copy_from_slice(chunk);
        out.extend_from_slice(&payload);
        out.extend_from_slice(&block_sum(&payload, seed, i as u64));
    }
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
    /// Encode into the first `HEADER_LEN` bytes of `out`, computing the header checksum; returns
    /// the block-checksum seed that checksum gives.
    pub fn encode(&self, out: &mut [u8]) -> u64 {
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
        ];
        for (i, v) in counts.iter().enumerate() {
            put(at::COUNTS + 4 * i, &v.to_le_bytes());
        }
        for (i, (off, len)) in self.sections.iter().enumerate() {
            put(at::SECTIONS + 16 * i, &off.to_le_bytes());
            put(at::SECTIONS + 16 * i + 8, &len.to_le_bytes());
        }
        put(at::BODY_LEN, &self.body_len.to_le_bytes());
        let hs = sum(&h[..at::HEADER_SUM]);
        h[at::HEADER_SUM..].copy_from_slice(&hs);
        Self::seed_of(h)
    }

    /// The block-checksum seed of an encoded header: the low 64 bits of its checksum.
    #[must_use]
    pub fn seed_of(head: &[u8]) -> u64 {
        u64_at(head, at::HEADER_SUM)
    }

    /// Where body offset `off` lies in the file.
    #[must_use]
    pub fn file_offset(off: u64) -> u64 {
        BODY_START as u64 + off / PAYLOAD as u64 * BLOCK as u64 + off % PAYLOAD as u64
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
            body_len: u64_at(head, at::BODY_LEN),
            seed: Self::seed_of(head),
        };
        header.check_layout(file_len)?;
        Ok(header)
    }

    /// Sections inside the body, lengths matching the counts, the file as long as its blocks.
    fn check_layout(&self, file_len: u64) -> Result<(), Reason> {
        let body_len = self.body_len;
        if Some(file_len) != self::file_len(body_len) {
            return Err("file length does not match its header (truncated or extended)");
        }
        for (i, &(off, len)) in self.sections.iter().enumerate() {
            let end = off.checked_add(len).ok_or("section out of bounds")?;
            let align = if block_aligned(i) { PAYLOAD as u64 } else { 8 };
            if end > body_len || off % align != 0 {
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
        Ok(())
    }

    /// (offset, length) of a section.
    #[must_use]
    pub fn section(&self, s: Sec) -> (u64, u64) {
        self.sections[s as usize]
    }
}

/// Recompute every checksum of a cache after its body or header was edited: for tests that
/// hand-craft caches which pass the checksums.
#[cfg(feature = "unstable")]
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() < BODY_START {
        return;
    }
    let hs = sum(&bytes[..at::HEADER_SUM]);
    bytes[at::HEADER_SUM..HEADER_LEN].copy_from_slice(&hs);
    let seed = Header::seed_of(&bytes[..HEADER_LEN]);
    for (i, block) in bytes[BODY_START..].chunks_mut(BLOCK).enumerate() {
        if block.len() == BLOCK {
            let s = block_sum(&block[..PAYLOAD], seed, i as u64);
            block[PAYLOAD..].copy_from_slice(&s);
        }
    }
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
    fn blocks_and_file_offsets() {
        assert_eq!(file_len(0), Some(BODY_START as u64));
        assert_eq!(file_len(1), Some((BODY_START + BLOCK) as u64));
        assert_eq!(file_len(PAYLOAD as u64), Some((BODY_START + BLOCK) as u64));
        assert_eq!(file_len(PAYLOAD as u64 + 1), Some((BODY_START + 2 * BLOCK) as u64));
        assert_eq!(file_len(u64::MAX), None);
        assert_eq!(Header::file_offset(0), BODY_START as u64);
        assert_eq!(
            Header::file_offset(PAYLOAD as u64 + 5),
            (BODY_START + BLOCK + 5) as u64
        );
    }

    #[test]
    fn a_block_verifies_only_in_its_place_and_cache() {
        let mut out = vec![0u8; BODY_START];
        let body: Vec<u8> = (0..3 * PAYLOAD as u32).map(|i| i as u8).collect();
        seal_body(&mut out, &body, 7);
        let block = |i: usize| &out[BODY_START + i * BLOCK..BODY_START + (i + 1) * BLOCK];
        assert!(block_ok(block(1), 7, 1));
        assert!(!block_ok(block(1), 7, 2), "moved");
        assert!(!block_ok(block(1), 8, 1), "another cache");
        let mut bad = block(1).to_vec();
        bad[10] ^= 1;
        assert!(!block_ok(&bad, 7, 1), "damaged");
    }
}
