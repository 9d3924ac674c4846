//! Opening a cache (O(1) checks of header and freshness) and reading its tables with `pread`,
//! verifying each block's own checksum the first time a lookup touches it.
//!
//! Lookups read the cache, they do not map it: a boot opens it, touches a dozen blocks and drops
//! it, and a `pread` of a 4 KiB block costs less than setting up and tearing down a mapping of
//! the whole file plus a page fault per touched page (docs/design.md §4.1, §10). Verified blocks
//! are kept (a bounded memo), so a `Store` kept across boots re-reads nothing while the index is
//! current. `list`, which reads whole tables, maps the file for that one call.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::format::{
    self, digest_of, str_hash, u32_at, u64_at, Header, Sec, Source, BLOCK, BODY_START, BUCKET_LEN,
    CANON_LEN, IMAGE_LEN, PAYLOAD, PREFIX_LEN, REC_FIXED,
};
use super::Error;

mod list;
#[cfg(feature = "unstable")]
pub use list::{Row, RowRef, Tables};
use crate::digest::{Digest, Prefix};
use crate::error::IoError;
use crate::index::schema::Entry;
use crate::Kind;

/// An open, fresh cache of one backend's index, with that index file held open.
pub struct Cache {
    file: File,
    header: Header,
    kind: Kind,
    /// The index file the cache describes (same inode as `header.source`).
    json: File,
    json_path: PathBuf,
    path: PathBuf,
    /// Blocks of the body.
    blocks: u64,
    /// Blocks already read and verified, by number; at most [`MEMO_MAX`].
    memo: Mutex<Memo>,
}

/// Verified blocks by number.
type Memo = HashMap<u64, Arc<Vec<u8>>>;

/// Most verified blocks a cache keeps (4 MiB); past that the memo starts over.
const MEMO_MAX: usize = 1024;

/// Why a cache is not used, as an [`Error::Rejected`].
fn reject(path: &Path, reason: &'static str) -> Error {
    Error::Rejected {
        path: path.to_path_buf(),
        reason,
    }
}

impl Cache {
    /// Open `cache` for the index at `json`, whose `db/` directory is `db`.
    ///
    /// `Ok(None)` if the index file does not exist (an empty index needs no cache). A missing,
    /// stale, racily clean, foreign or malformed cache is [`Error::Rejected`]: answer from the
    /// JSON. Costs a handful of system calls and reads the header only.
    pub fn open(kind: Kind, json: &Path, cache: &Path, db: &Path) -> Result<Option<Cache>, Error> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io(IoError::new(action, path, source))
        };
        let json_file = match File::open(json) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("opening index", json)(e)),
        };
        let file = match File::open(cache) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(reject(cache, "no cache"));
            }
            Err(e) => return Err(io("opening index cache", cache)(e)),
        };
        let len = file
            .metadata()
            .map_err(io("inspecting index cache", cache))?
            .len();
        let mut head = vec![0u8; format::HEADER_LEN];
        let n = read_at_most(&file, &mut head, 0).map_err(io("reading index cache", cache))?;
        if n < format::HEADER_LEN {
            return Err(reject(cache, "shorter than its header"));
        }
        let header = Header::decode(&head, len).map_err(|r| reject(cache, r))?;
        let want_kind = match kind {
            Kind::Oci => 0,
            Kind::CloudImg => 1,
        };
        if header.kind != want_kind {
            return Err(reject(cache, "built for the other backend"));
        }
        let source = Source::of(&json_file.metadata().map_err(io("inspecting index", json))?);
        if source != header.source {
            return Err(reject(cache, "stale: the index changed since it was built"));
        }
        if header.source.racy(header.clock) {
            return Err(reject(
                cache,
                "racily clean: the index changed within the clock granule it was built in",
            ));
        }
        let db_meta = std::fs::metadata(db).map_err(io("inspecting", db))?;
        if (db_meta.dev(), db_meta.ino()) != header.db {
            return Err(reject(cache, "built for another store"));
        }
        let mut token = [0u8; format::TOKEN_PROBE];
        let n = read_at_most(&json_file, &mut token, 0).map_err(io("reading index", json))?;
        if format::token_of(&token[..n]) != header.token {
            return Err(reject(cache, "stale: the index generation differs"));
        }
        let blocks = format::blocks(header.body_len);
        Ok(Some(Cache {
            file,
            header,
            kind,
            json: json_file,
            json_path: json.to_path_buf(),
            path: cache.to_path_buf(),
            blocks,
            memo: Mutex::new(HashMap::new()),
        }))
    }

    /// The backend this cache indexes.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the index file at its path is still the one this cache describes: one `stat`.
    /// An open cache that is still current answers as a freshly opened one would.
    #[must_use]
    pub fn is_current(&self) -> bool {
        std::fs::metadata(&self.json_path).is_ok_and(|m| Source::of(&m) == self.header.source)
    }

    fn bad(&self, reason: &'static str) -> Error {
        reject(&self.path, reason)
    }

    /// Block `i` of the body, read and verified, or from the memo.
    fn block(&self, i: u64) -> Result<Arc<Vec<u8>>, Error> {
        if let Some(b) = self.memo.lock().get(&i) {
            return Ok(Arc::clone(b));
        }
        if i >= self.blocks {
            return Err(self.bad("block out of range"));
        }
        let mut buf = vec![0u8; BLOCK];
        self.read_exact(&mut buf, BODY_START as u64 + i * BLOCK as u64)?;
        if !format::block_ok(&buf, self.header.seed, i) {
            return Err(self.bad("block checksum mismatch"));
        }
        // Moved, not copied, into the memo.
        let buf = Arc::new(buf);
        let mut memo = self.memo.lock();
        if memo.len() >= MEMO_MAX {
            memo.clear();
        }
        memo.insert(i, Arc::clone(&buf));
        Ok(buf)
    }

    fn read_exact(&self, buf: &mut [u8], at: u64) -> Result<(), Error> {
        let n = read_at_most(&self.file, buf, at).map_err(|source| {
            Error::Io(IoError::new("reading index cache", self.path.clone(), source))
        })?;
        if n < buf.len() {
            return Err(self.bad("shorter than its header says"));
        }
        Ok(())
    }

    /// The body range of `len` bytes at `rel` of section `s`, bounds-checked.
    fn span(&self, s: Sec, rel: u64, len: u64) -> Result<(u64, u64), Error> {
        let (off, sec_len) = self.header.section(s);
        let end = rel
            .checked_add(len)
            .filter(|&e| e <= sec_len)
            .ok_or_else(|| self.bad("reference out of its section"))?;
        Ok((off + rel, off + end))
    }

    /// `len` bytes at `rel` of section `s`, bounds-checked and checksummed, block by block
    /// through the memo (for the few small records a lookup reads).
    fn get(&self, s: Sec, rel: u64, len: u64) -> Result<Vec<u8>, Error> {
        let (a, b) = self.span(s, rel, len)?;
        let mut out = Vec::with_capacity(len as usize);
        if len == 0 {
            return Ok(out);
        }
        let p = PAYLOAD as u64;
        for blk in a / p..=(b - 1) / p {
            let data = self.block(blk)?;
            let start = blk * p;
            let from = (a.max(start) - start) as usize;
            let to = (b.min(start + p) - start) as usize;
            out.extend_from_slice(&data[from..to]);
        }
        Ok(out)
    }

    /// The body range of `len` bytes at `rel` of section `s`, with every block of `map` (this
    /// cache file, mapped) it spans verified (for `list`, which reads whole tables).
    fn verify_span(&self, map: &[u8], s: Sec, rel: u64, len: u64) -> Result<(u64, u64), Error> {
        let (a, b) = self.span(s, rel, len)?;
        if len == 0 {
            return Ok((a, 0));
        }
        let p = PAYLOAD as u64;
        for blk in a / p..=(b - 1) / p {
            let at = BODY_START + blk as usize * BLOCK;
            let block = map
                .get(at..at + BLOCK)
                .ok_or_else(|| self.bad("block out of range"))?;
            if !format::block_ok(block, self.header.seed, blk) {
                return Err(self.bad("block checksum mismatch"));
            }
        }
        Ok((a, len))
    }

    fn rec(&self, s: Sec, size: usize, i: u32) -> Result<Vec<u8>, Error> {
        self.get(s, u64::from(i) * size as u64, size as u64)
    }

    fn u32s(&self, s: Sec, first: u32, count: u32) -> Result<Vec<u32>, Error> {
        let b = self.get(s, u64::from(first) * 4, u64::from(count) * 4)?;
        Ok(b.chunks(4).map(|c| u32_at(c, 0)).collect())
    }

    fn string(&self, off: u32, len: u32) -> Result<String, Error> {
        let b = self.get(Sec::Strings, u64::from(off), u64::from(len))?;
        String::from_utf8(b).map_err(|_| self.bad("string is not UTF-8"))
    }

    /// Probe the hash section `table` for `name`: `found(v)` is asked about each bucket with
    /// `name`'s hash whose value is `v`, and says whether that is `name`'s.
    fn probe<T>(
        &self,
        table: Sec,
        name: &str,
        mut found: impl FnMut(u32) -> Result<Option<T>, Error>,
    ) -> Result<Option<T>, Error> {
        let buckets = self.header.section(table).1 / BUCKET_LEN as u64;
        let mask = buckets - 1;
        let h = str_hash(name.as_bytes());
        let mut b = h & mask;
        // A table is at most half full, so a run ends well before wrapping around.
        for _ in 0..buckets {
            let rec = self.get(table, b * BUCKET_LEN as u64, BUCKET_LEN as u64)?;
            let slot = u32_at(&rec, 4);
            if slot == 0 {
                return Ok(None);
            }
            if u32_at(&rec, 0) == (h >> 32) as u32 {
                if let Some(t) = found(slot - 1)? {
                    return Ok(Some(t));
                }
            }
            b = (b + 1) & mask;
        }
        Err(self.bad("hash table has no empty bucket"))
    }

    /// The record at `off8` × 8 of `Records`, checked whole: its length, key count, keys
    /// (UTF-8, strictly sorted, filling it up to the zero padding), image number and ID.
    fn record_at(&self, off8: u32) -> Result<Record, Error> {
        let rel = u64::from(off8) * 8;
        let fixed = self.get(Sec::Records, rel, REC_FIXED as u64)?;
        let len = u32_at(&fixed, 8) as usize;
        if len < REC_FIXED || !len.is_multiple_of(8) {
            return Err(self.bad("malformed image record"));
        }
        let r = self.get(Sec::Records, rel, len as u64)?;
        let image = u32_at(&r, 4);
        if image >= self.header.n_images {
            return Err(self.bad("image out of range"));
        }
        let id = digest_of(r[0], &r[16..80]).ok_or_else(|| self.bad("malformed image ID"))?;
        let n_keys = u32_at(&r, 12);
        let mut keys: Vec<String> = Vec::with_capacity(n_keys.min(64) as usize);
        let mut at = REC_FIXED;
        for _ in 0..n_keys {
            let klen = r
                .get(at..at + 4)
                .map(|b| u32_at(b, 0) as usize)
                .ok_or_else(|| self.bad("key out of its record"))?;
            let bytes = at
                .checked_add(4 + klen)
                .and_then(|end| r.get(at + 4..end))
                .ok_or_else(|| self.bad("key out of its record"))?;
            let key = std::str::from_utf8(bytes).map_err(|_| self.bad("key is not UTF-8"))?;
            if keys.last().is_some_and(|p| p.as_str() >= key) {
                return Err(self.bad("image has unsorted keys"));
            }
            keys.push(key.to_owned());
            at += 4 + klen;
        }
        if keys.is_empty() || len - at >= 8 || r[at..].iter().any(|&b| b != 0) {
            return Err(self.bad("image record has no keys or trailing bytes"));
        }
        Ok(Record {
            image,
            id,
            keys,
            val_off: u64_at(&r, 80),
            val_len: u32_at(&r, 88),
        })
    }

    /// The record of image `img`, checked to be that image's.
    fn record(&self, img: u32) -> Result<Record, Error> {
        let head = self.image(img)?;
        let rec = self.record_at(u32_at(&head, 4))?;
        let id = digest_of(head[0], &head[16..80]).ok_or_else(|| self.bad("malformed image ID"))?;
        if rec.image != img || rec.id != id {
            return Err(self.bad("image record belongs to another image"));
        }
        Ok(rec)
    }

    /// The record of the image an exact index key names: one hash bucket and one record.
    pub fn record_by_key(&self, key: &str) -> Result<Option<Record>, Error> {
        self.probe(Sec::KeyHash, key, |off8| {
            let rec = self.record_at(off8)?;
            Ok(rec.keys.binary_search_by(|k| k.as_str().cmp(key)).is_ok().then_some(rec))
        })
    }

    #[cfg(feature = "unstable")]
    /// The image an exact index key names.
    pub fn by_key(&self, key: &str) -> Result<Option<u32>, Error> {
        Ok(self.record_by_key(key)?.map(|r| r.image))
    }

    /// The record of image `img` (for [`Cache::record_entry`]).
    pub fn image_record(&self, img: u32) -> Result<Record, Error> {
        self.record(img)
    }

    /// The images whose keys have the canonical reference `canonical`, in digest order.
    pub fn by_canonical(&self, canonical: &str) -> Result<Vec<u32>, Error> {
        // A cloud cache has no canonical references: nothing to read.
        if self.header.n_canon == 0 {
            return Ok(Vec::new());
        }
        let rec = |i: u32| {
            if i >= self.header.n_canon {
                return Err(self.bad("canonical record out of range"));
            }
            self.rec(Sec::Canon, CANON_LEN, i)
        };
        let found = self.probe(Sec::CanonHash, canonical, |i| {
            let r = rec(i)?;
            Ok((self.string(u32_at(&r, 0), u32_at(&r, 4))? == canonical).then_some(i))
        })?;
        let Some(c) = found else {
            return Ok(Vec::new());
        };
        let r = rec(c)?;
        let images = self.u32s(Sec::CanonList, u32_at(&r, 8), u32_at(&r, 12))?;
        if images.is_empty() || images.windows(2).any(|w| w[0] >= w[1]) {
            return Err(self.bad("canonical reference names no or unsorted images"));
        }
        Ok(images)
    }

    /// The image with ID `id`, by binary search over the image table.
    pub fn by_id(&self, id: &Digest) -> Result<Option<u32>, Error> {
        let (mut lo, mut hi) = (0u32, self.header.n_images);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.image_id(mid)?.cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(mid)),
            }
        }
        Ok(None)
    }

    /// Every image whose sha256 ID starts with `prefix`, in ID order.
    ///
    /// Every accepted prefix has more bits than pick a bucket, so all matches lie in one
    /// bucket; the whole bucket is read and checked to be sorted and to belong there, so no
    /// match can hide elsewhere in it.
    pub fn by_prefix(&self, prefix: &Prefix) -> Result<Vec<(Digest, u32)>, Error> {
        if self.header.n_prefix == 0 {
            return Ok(Vec::new());
        }
        let bits = self.header.bucket_bits;
        let b = format::bucket_of(&prefix.lower_bound(), bits) as u64;
        let bounds = self.get(Sec::Buckets, b * 4, 8)?;
        let (from, to) = (u32_at(&bounds, 0), u32_at(&bounds, 4));
        if from > to || to > self.header.n_prefix {
            return Err(self.bad("prefix bucket out of range"));
        }
        let run = self.get(
            Sec::Prefix,
            u64::from(from) * PREFIX_LEN as u64,
            u64::from(to - from) * PREFIX_LEN as u64,
        )?;
        let mut out = Vec::new();
        let mut prev: Option<&[u8]> = None;
        for rec in run.chunks(PREFIX_LEN) {
            let id: &[u8; 32] = rec[..32].try_into().map_err(|_| self.bad("short record"))?;
            if format::bucket_of(id, bits) as u64 != b || prev.is_some_and(|p| p >= &id[..]) {
                return Err(self.bad("prefix table out of order"));
            }
            prev = Some(&rec[..32]);
            if prefix.cmp_bytes(id).is_eq() {
                let img = u32_at(rec, 32);
                let digest = Digest::sha256(*id);
                if self.image_id(img)? != digest {
                    return Err(self.bad("prefix record names another image"));
                }
                out.push((digest, img));
            }
        }
        Ok(out)
    }

    fn image(&self, img: u32) -> Result<Vec<u8>, Error> {
        if img >= self.header.n_images {
            return Err(self.bad("image out of range"));
        }
        self.rec(Sec::Images, IMAGE_LEN, img)
    }

    /// The ID of image `img`.
    pub fn image_id(&self, img: u32) -> Result<Digest, Error> {
        let r = self.image(img)?;
        digest_of(r[0], &r[16..80]).ok_or_else(|| self.bad("malformed image ID"))
    }

    #[cfg(feature = "unstable")]
    /// Every key naming image `img`, sorted.
    pub fn keys(&self, img: u32) -> Result<Vec<String>, Error> {
        Ok(self.record(img)?.keys)
    }

    #[cfg(feature = "unstable")]
    /// The entry of image `img` under its first key, read from the index file itself and
    /// checked to carry the image's ID.
    pub fn entry<E: Entry>(&self, img: u32) -> Result<E, Error> {
        let rec = self.record(img)?;
        self.record_entry(&rec)
    }

    /// The entry of a record, as [`Cache::entry`]: read from the index file, bounds-checked
    /// against the size it was validated with, and checked to carry the record's ID.
    pub fn record_entry<E: Entry>(&self, rec: &Record) -> Result<E, Error> {
        let end = rec.val_off.checked_add(u64::from(rec.val_len));
        if end.is_none_or(|e| e > self.header.source.size) {
            return Err(self.bad("entry lies outside the index"));
        }
        let mut buf = vec![0u8; rec.val_len as usize];
        self.json
            .read_exact_at(&mut buf, rec.val_off)
            .map_err(|source| Error::Io(IoError::new("reading index entry", self.path.clone(), source)))?;
        let e: E =
            serde_json::from_slice(&buf).map_err(|_| self.bad("entry bytes do not parse"))?;
        if e.id() != rec.id {
            return Err(self.bad("entry bytes carry another ID"));
        }
        Ok(e)
    }


}

/// One image's record: its number, ID, keys and where its entry lies in the index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its number in the image table.
    pub image: u32,
    /// Its ID.
    pub id: Digest,
    /// Every key naming it, sorted.
    pub keys: Vec<String>,
    val_off: u64,
    val_len: u32,
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_at_most(f: &File, buf: &mut [u8], mut off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                off += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
