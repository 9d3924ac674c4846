//! The list path: the item, image and string tables of a cache read whole (one mapping for the
//! one call), verified, and handed to the caller as rows borrowed from the mapping. The builder
//! lays those tables out so that no record or string straddles two blocks
//! ([`format::block_aligned`]); a cache that breaks this is refused, not read around.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::super::format::{digest_of, u32_at, u64_at, Header, Sec, IMAGE_LEN, ITEM_LEN, PAYLOAD};
use super::{reject, Cache, Error};
use crate::digest::Digest;
use crate::error::IoError;

/// The item, image and string tables of a cache, read whole and verified (for `list`). Not
/// kept by the cache: a `Store` kept across boots holds no copy of them.
pub struct Tables {
    map: memmap2::Mmap,
    /// Body offset and length of the item, image and string tables.
    items: (u64, u64),
    images: (u64, u64),
    strings: (u64, u64),
    path: PathBuf,
}

#[allow(unsafe_code)]
fn map_cache(file: &File, len: u64) -> io::Result<memmap2::Mmap> {
    // SAFETY: a shared read-only map is undefined behaviour only if the file changes while the
    // map is alive. Only a store writer creates `images.idx`: it writes a temp file, fsyncs it,
    // makes it 0444 and renames it into place, and never opens a published cache for writing;
    // a replacement is a new inode, so this map keeps the old, unchanging one. The map lives in
    // `Tables` for one `list`, and every range read from it is bounds-checked and checksummed
    // first.
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    let map = unsafe { memmap2::MmapOptions::new().len(len).map(file) }?;
    // `list` reads its tables straight through.
    let _ = map.advise(memmap2::Advice::Sequential);
    Ok(map)
}

impl Cache {
    /// The item, image and string tables, read from one mapping of the file, every block of
    /// them verified (not the hash and prefix tables `list` does not need).
    ///
    /// # Errors
    /// A block that does not match its sum, or an I/O error: answer from the JSON.
    pub fn tables(&self) -> Result<Tables, Error> {
        let map = map_cache(&self.file, self.header_len()?).map_err(|source| {
            Error::Io(IoError::new("mapping index cache", self.path.clone(), source))
        })?;
        let n_items = u64::from(self.header.n_items);
        let items = self.verify_span(&map, Sec::Items, 0, n_items * ITEM_LEN as u64)?;
        let images = self.verify_span(
            &map,
            Sec::Images,
            0,
            u64::from(self.header.n_images) * IMAGE_LEN as u64,
        )?;
        let strings =
            self.verify_span(&map, Sec::Strings, 0, self.header.section(Sec::Strings).1)?;
        Ok(Tables {
            map,
            items,
            images,
            strings,
            path: self.path.clone(),
        })
    }

    /// The file length the header describes (checked against the file at open).
    fn header_len(&self) -> Result<u64, Error> {
        super::super::format::file_len(self.header.body_len)
            .ok_or_else(|| self.bad("file length out of range"))
    }

    /// [`Tables::rows`] of this cache, owned (for tests).
    #[cfg(feature = "unstable")]
    pub fn rows(&self) -> Result<Vec<Row>, Error> {
        Ok(self
            .tables()?
            .rows()?
            .into_iter()
            .map(|r| Row {
                key: r.key.to_owned(),
                id: r.id,
                size: r.size,
                created_at: r.created_at.to_owned(),
            })
            .collect())
    }
}

impl Tables {
    fn bad(&self, reason: &'static str) -> Error {
        reject(&self.path, reason)
    }

    /// Every key with its ID, size and creation time, in key order, borrowed from the tables (for
    /// `list`: no allocation per key). Every record is checked before anything is returned, so
    /// the answer is every row or an error, never a part.
    ///
    /// # Errors
    /// A record pointing outside its table, or a malformed ID: answer from the JSON.
    pub fn rows(&self) -> Result<Vec<RowRef<'_>>, Error> {
        // A body range inside one block's payload, in the mapping; a table laid out against
        // the rule (a hand-crafted cache) is refused.
        let bytes = |table: (u64, u64), rel: u64, len: u64| -> Result<&[u8], Error> {
            let p = PAYLOAD as u64;
            let end = rel.checked_add(len).filter(|&e| e <= table.1);
            let at = table.0 + rel;
            if end.is_none() || (at % p) + len > p {
                return Err(self.bad("record straddles a block or leaves its table"));
            }
            let from = Header::file_offset(at) as usize;
            self.map
                .get(from..from + len as usize)
                .ok_or_else(|| self.bad("record out of range"))
        };
        let string = |r: &[u8], at: usize| {
            let b = bytes(
                self.strings,
                u64::from(u32_at(r, at)),
                u64::from(u32_at(r, at + 4)),
            )?;
            std::str::from_utf8(b).map_err(|_| self.bad("string is not UTF-8"))
        };
        let n_images = self.images.1 / IMAGE_LEN as u64;
        let ids = (0..n_images)
            .map(|i| {
                let r = bytes(self.images, i * IMAGE_LEN as u64, IMAGE_LEN as u64)?;
                digest_of(r[0], &r[16..80]).ok_or_else(|| self.bad("malformed image ID"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let n_items = self.items.1 / ITEM_LEN as u64;
        let mut rows = Vec::with_capacity(n_items as usize);
        for i in 0..n_items {
            let r = bytes(self.items, i * ITEM_LEN as u64, ITEM_LEN as u64)?;
            let id = *ids
                .get(u32_at(r, 8) as usize)
                .ok_or_else(|| self.bad("image out of range"))?;
            rows.push(RowRef {
                key: string(r, 0)?,
                id,
                size: u64_at(r, 24),
                created_at: string(r, 12)?,
            });
        }
        Ok(rows)
    }
}

/// One key as [`Tables::rows`] lists it, borrowed from the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    /// The index key.
    pub key: &'a str,
    /// Its image ID.
    pub id: Digest,
    /// The entry's `size`.
    pub size: u64,
    /// The entry's `created_at`.
    pub created_at: &'a str,
}

/// One key as `Cache::rows` lists it.
#[cfg(feature = "unstable")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The index key.
    pub key: String,
    /// Its image ID.
    pub id: Digest,
    /// The entry's `size`.
    pub size: u64,
    /// The entry's `created_at`.
    pub created_at: String,
}

