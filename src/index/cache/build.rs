//! Building a cache from an index: the parsed entries, the exact bytes they were parsed from and
//! the `fstat` of that descriptor; then publishing it (temp file, fsync, mode 0444, rename).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::format::{
    self, alg_code, bucket_of, str_hash, Header, Sec, Source, Time, BODY_START, BUCKET_LEN,
    IMAGE_LEN, MAX_BUCKET_BITS, PAYLOAD, PREFIX_LEN, REC_FIXED, SECTIONS,
};
use super::Error;
use crate::error::IoError;
use crate::digest::{Algorithm, Digest};
use crate::fsutil::TempFile;
use crate::index::schema::{Entry, IndexFile};
use crate::Kind;

/// Mode of a published cache: nobody writes it in place.
pub const CACHE_MODE: u32 = 0o444;

/// Everything a cache describes besides the entries.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// Which backend's index.
    pub kind: Kind,
    /// `fstat` of the descriptor the bytes were read from.
    pub source: Source,
    /// Filesystem-clock time taken before the bytes were read.
    pub clock: Time,
    /// Device and inode of `db/`.
    pub db: (u64, u64),
}

impl Source {
    /// The identity and times of a file.
    #[must_use]
    pub fn of(m: &std::fs::Metadata) -> Source {
        Source {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: Time {
                sec: m.mtime(),
                nsec: m.mtime_nsec(),
            },
            ctime: Time {
                sec: m.ctime(),
                nsec: m.ctime_nsec(),
            },
        }
    }

    /// Whether a change to the file within the clock's granule could go unseen: its times are
    /// not strictly older than `clock` (git's "racily clean").
    #[must_use]
    pub fn racy(&self, clock: Time) -> bool {
        self.mtime >= clock || self.ctime >= clock
    }
}

/// The top-level shape of an index, borrowing each entry's bytes.
#[derive(Deserialize)]
struct RawIndex<'a> {
    #[serde(borrow, default)]
    images: BTreeMap<String, &'a RawValue>,
}

struct ItemIn<'a> {
    key: &'a str,
    id: Digest,
    canonical: Option<String>,
    size: u64,
    created_at: &'a str,
    val_off: u64,
    val_len: u32,
}

fn too_large() -> Error {
    Error::Build("the index is too large for the cache format")
}

/// Build the cache bytes for `index`, parsed from exactly `raw`.
///
/// Fails (and nothing should be written) if `raw` does not hold exactly the entries of `index`.
pub fn build<E: Entry>(
    origin: &Origin,
    raw: &[u8],
    index: &IndexFile<E>,
) -> Result<Vec<u8>, Error> {
    let shape: RawIndex<'_> =
        serde_json::from_slice(raw).map_err(|_| Error::Build("the index bytes do not parse"))?;
    let base = raw.as_ptr() as usize;
    let mut items = Vec::with_capacity(shape.images.len());
    let mut raw_entries = shape.images.iter().filter(|(_, v)| v.get() != "null");
    for (key, e) in index.entries() {
        let Some((raw_key, value)) = raw_entries.next() else {
            return Err(Error::Build(
                "the index bytes hold fewer entries than parsed",
            ));
        };
        if raw_key != key {
            return Err(Error::Build("the index bytes hold other keys than parsed"));
        }
        let text = value.get();
        let val_off = (text.as_ptr() as usize)
            .checked_sub(base)
            .filter(|o| o + text.len() <= raw.len())
            .ok_or(Error::Build("an entry does not lie inside the index bytes"))?;
        items.push(ItemIn {
            key,
            id: e.id(),
            canonical: match origin.kind {
                Kind::Oci => crate::reference::Reference::parse(key)
                    .ok()
                    .map(|r| r.canonical()),
                Kind::CloudImg => None,
            },
            size: e.size(),
            created_at: e.created_at(),
            val_off: val_off as u64,
            val_len: u32::try_from(text.len()).map_err(|_| too_large())?,
        });
    }
    if raw_entries.next().is_some() {
        return Err(Error::Build(
            "the index bytes hold more entries than parsed",
        ));
    }
    let token = format::token_of(raw.get(..format::TOKEN_PROBE).unwrap_or(raw));
    encode(origin, token, &items)
}

#[derive(Default)]
struct Body {
    secs: [Vec<u8>; SECTIONS],
    strings: Vec<u8>,
}

impl Body {
    fn put(&mut self, s: Sec, b: &[u8]) {
        self.secs[s as usize].extend_from_slice(b);
    }
    fn put32(&mut self, s: Sec, v: u32) {
        self.put(s, &v.to_le_bytes());
    }
    /// Append `text` to the strings, starting it in the next block's payload if it would
    /// straddle two (`list` borrows every string from one block of its mapping).
    fn string(&mut self, text: &str) -> Result<(u32, u32), Error> {
        if text.len() > PAYLOAD {
            return Err(Error::Build("a key or time longer than a cache block"));
        }
        let room = PAYLOAD - self.strings.len() % PAYLOAD;
        if text.len() > room {
            self.strings.resize(self.strings.len() + room, 0);
        }
        let off = u32::try_from(self.strings.len()).map_err(|_| too_large())?;
        let len = u32::try_from(text.len()).map_err(|_| too_large())?;
        self.strings.extend_from_slice(text.as_bytes());
        Ok((off, len))
    }
}

/// An open-addressing table with linear probing over `names`, the bucket of `name` holding
/// `value + 1`.
fn hash_table<'a>(names: impl ExactSizeIterator<Item = (&'a str, u32)>) -> Vec<u8> {
    let n = names.len();
    let buckets = (n * 2).max(1).next_power_of_two();
    let mask = buckets - 1;
    let mut table = vec![0u8; buckets * BUCKET_LEN];
    for (name, value) in names {
        let h = str_hash(name.as_bytes());
        let mut b = (h as usize) & mask;
        while format::u32_at(&table, b * BUCKET_LEN + 4) != 0 {
            b = (b + 1) & mask;
        }
        let at = b * BUCKET_LEN;
        table[at..at + 4].copy_from_slice(&((h >> 32) as u32).to_le_bytes());
        table[at + 4..at + 8].copy_from_slice(&(value + 1).to_le_bytes());
    }
    table
}

/// The record of one image in `Records`: fixed part, then its keys; 8-aligned.
fn record(
    img: u32,
    id: &Digest,
    members: &[u32],
    items: &[ItemIn<'_>],
) -> Result<Vec<u8>, Error> {
    let first = &items[members[0] as usize];
    let mut rec = vec![0u8; REC_FIXED];
    rec[0] = alg_code(id.algorithm());
    rec[4..8].copy_from_slice(&img.to_le_bytes());
    rec[12..16].copy_from_slice(&(members.len() as u32).to_le_bytes());
    rec[16..16 + id.as_bytes().len()].copy_from_slice(id.as_bytes());
    rec[80..88].copy_from_slice(&first.val_off.to_le_bytes());
    rec[88..92].copy_from_slice(&first.val_len.to_le_bytes());
    for &m in members {
        let key = items[m as usize].key;
        rec.extend_from_slice(&u32::try_from(key.len()).map_err(|_| too_large())?.to_le_bytes());
        rec.extend_from_slice(key.as_bytes());
    }
    rec.resize(rec.len().next_multiple_of(8), 0);
    let len = u32::try_from(rec.len()).map_err(|_| too_large())?;
    rec[8..12].copy_from_slice(&len.to_le_bytes());
    Ok(rec)
}

/// The image table and the image records, in image order; returns where each record starts
/// (its offset / 8), which the key table points at.
fn put_records(
    body: &mut Body,
    images: &BTreeMap<Digest, Vec<u32>>,
    items: &[ItemIn<'_>],
) -> Result<Vec<u32>, Error> {
    let mut rec_at = Vec::with_capacity(images.len());
    for (img, (id, members)) in (0u32..).zip(images) {
        let off = body.secs[Sec::Records as usize].len();
        let off8 = u32::try_from(off / 8).map_err(|_| too_large())?;
        rec_at.push(off8);
        let rec = record(img, id, members, items)?;
        body.put(Sec::Records, &rec);
        let mut head = [0u8; IMAGE_LEN];
        head[0] = alg_code(id.algorithm());
        head[4..8].copy_from_slice(&off8.to_le_bytes());
        head[16..16 + id.as_bytes().len()].copy_from_slice(id.as_bytes());
        body.put(Sec::Images, &head);
    }
    Ok(rec_at)
}

fn encode(
    origin: &Origin,
    token: Option<[u8; 16]>,
    items: &[ItemIn<'_>],
) -> Result<Vec<u8>, Error> {
    let n_items = u32::try_from(items.len()).map_err(|_| too_large())?;
    let mut body = Body::default();

    // Images: distinct IDs in digest order, each with its items in key order.
    let mut images: BTreeMap<Digest, Vec<u32>> = BTreeMap::new();
    for (i, item) in (0..n_items).zip(items) {
        images.entry(item.id).or_default().push(i);
    }
    let image_of: BTreeMap<Digest, u32> = images.keys().zip(0..).map(|(d, i)| (*d, i)).collect();

    for item in items {
        let (key_off, key_len) = body.string(item.key)?;
        let (c_off, c_len) = body.string(item.created_at)?;
        body.put32(Sec::Items, key_off);
        body.put32(Sec::Items, key_len);
        body.put32(Sec::Items, image_of[&item.id]);
        body.put32(Sec::Items, c_off);
        body.put32(Sec::Items, c_len);
        body.put32(Sec::Items, 0);
        body.put(Sec::Items, &item.size.to_le_bytes());
        body.put(Sec::Items, &item.val_off.to_le_bytes());
        body.put32(Sec::Items, item.val_len);
        body.put32(Sec::Items, 0);
    }
    let rec_at = put_records(&mut body, &images, items)?;
    let keys = hash_table(
        items
            .iter()
            .map(|i| (i.key, rec_at[image_of[&i.id] as usize])),
    );
    body.put(Sec::KeyHash, &keys);

    let mut canon: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for item in items {
        if let Some(c) = &item.canonical {
            canon.entry(c).or_default().insert(image_of[&item.id]);
        }
    }
    let mut list_off = 0u32;
    for (text, imgs) in &canon {
        let (off, len) = body.string(text)?;
        body.put32(Sec::Canon, off);
        body.put32(Sec::Canon, len);
        body.put32(Sec::Canon, list_off);
        body.put32(Sec::Canon, imgs.len() as u32);
        for &img in imgs {
            body.put32(Sec::CanonList, img);
        }
        list_off += imgs.len() as u32;
    }
    let canon_table = hash_table(canon.keys().copied().zip(0..canon.len() as u32));
    body.put(Sec::CanonHash, &canon_table);

    // Digest order puts sha256 IDs together, sorted by their bytes.
    let sha: Vec<(&Digest, u32)> = image_of
        .iter()
        .filter(|(d, _)| d.algorithm() == Algorithm::Sha256)
        .map(|(d, i)| (d, *i))
        .collect();
    let bucket_bits = (sha.len().next_power_of_two().ilog2())
        .saturating_sub(2)
        .min(MAX_BUCKET_BITS);
    let mut counts = vec![0u32; (1 << bucket_bits) + 1];
    for (d, img) in &sha {
        let mut rec = [0u8; PREFIX_LEN];
        rec[..32].copy_from_slice(d.as_bytes());
        rec[32..36].copy_from_slice(&img.to_le_bytes());
        body.put(Sec::Prefix, &rec);
        counts[bucket_of(d.as_bytes(), bucket_bits) + 1] += 1;
    }
    for b in 0..1 << bucket_bits {
        counts[b + 1] += counts[b];
    }
    for c in counts {
        body.put32(Sec::Buckets, c);
    }
    body.secs[Sec::Strings as usize] = std::mem::take(&mut body.strings);

    let (body_bytes, sections) = lay_out(&body.secs);
    let header = Header {
        kind: match origin.kind {
            Kind::Oci => 0,
            Kind::CloudImg => 1,
        },
        source: origin.source,
        clock: origin.clock,
        db: origin.db,
        token,
        n_items,
        n_images: images.len() as u32,
        n_canon: canon.len() as u32,
        n_prefix: sha.len() as u32,
        bucket_bits,
        sections,
        body_len: body_bytes.len() as u64,
        seed: 0,
    };
    let mut out = vec![0u8; BODY_START];
    let seed = header.encode(&mut out);
    format::seal_body(&mut out, &body_bytes, seed);
    debug_assert_eq!(Some(out.len() as u64), format::file_len(header.body_len));
    Ok(out)
}

/// Place the sections one after another, 8-aligned, in the body's byte stream; the ones `list`
/// reads whole start a block's payload ([`format::block_aligned`]), so none of their records
/// straddles two blocks.
fn lay_out(secs: &[Vec<u8>; SECTIONS]) -> (Vec<u8>, [(u64, u64); SECTIONS]) {
    let mut out = Vec::with_capacity(secs.iter().map(|s| s.len() + PAYLOAD).sum());
    let mut sections = [(0u64, 0u64); SECTIONS];
    for (i, sec) in secs.iter().enumerate() {
        let align = if format::block_aligned(i) { PAYLOAD } else { 8 };
        out.resize(out.len().next_multiple_of(align), 0);
        sections[i] = (out.len() as u64, sec.len() as u64);
        out.extend_from_slice(sec);
    }
    (out, sections)
}

/// A temp file in `db/` whose creation time is the filesystem clock.
pub struct Clock {
    tmp: TempFile,
    /// The time the filesystem stamped on the temp file.
    pub now: Time,
}

impl Clock {
    /// Create the temp file that will become the cache; its mtime is the clock reading. Fails
    /// when `db/` is not writable (read-only root, another user).
    pub fn take(db_dir: &Path) -> Result<Clock, Error> {
        let tmp = TempFile::create_in(db_dir, ".images.json.idx")?;
        let now = Self::read(&tmp)?;
        Ok(Clock { tmp, now })
    }

    fn read(tmp: &TempFile) -> Result<Time, Error> {
        let m = std::fs::metadata(tmp.path()).map_err(|source| Error::Io(IoError::new("inspecting temp file", tmp.path().to_path_buf(), source)))?;
        Ok(Time {
            sec: m.mtime(),
            nsec: m.mtime_nsec(),
        })
    }

    /// Read the clock again (touching the temp file), for a writer waiting out a granule.
    pub fn retake(&mut self) -> Result<Time, Error> {
        let f = self.tmp.file();
        f.set_modified(std::time::SystemTime::now())
            .map_err(|source| Error::Io(IoError::new("touching temp file", self.tmp.path().to_path_buf(), source)))?;
        self.now = Self::read(&self.tmp)?;
        Ok(self.now)
    }

    /// Write `bytes` into the temp file, fsync it, make it 0444 and rename it to `dest`.
    pub fn publish(mut self, bytes: &[u8], dest: &Path) -> Result<(), Error> {
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io(IoError::new(action, path, source))
        };
        self.tmp
            .file()
            .write_all(bytes)
            .map_err(io("writing", self.tmp.path()))?;
        std::fs::set_permissions(self.tmp.path(), std::fs::Permissions::from_mode(CACHE_MODE))
            .map_err(io("setting mode of", self.tmp.path()))?;
        self.tmp.sync()?;
        failpoint!("cache.before_rename");
        std::fs::rename(self.tmp.path(), dest).map_err(io("renaming temp file over", dest))?;
        self.tmp.forget();
        Ok(())
    }
}
