//! A small reader of uncompressed EROFS images held in memory: superblock, compact and extended
//! inodes, inline and shared xattrs, flat / inline / chunk-based (block map) data, directories.
//! It checks the writer (tests, fuzzing) and EROFS-native layers before they are stored, and
//! bounds-checks every offset, so a corrupt image is an [`Error::Corrupt`], never a panic. It
//! does not read compressed images or chunk indexes (imgstore writes none).

use std::collections::{BTreeMap, HashSet};

use super::format::{
    self, DataLayout, InodeHeader, Super, BLOCK_SIZE, CHUNK_BLKBITS_MASK, CHUNK_FORMAT_INDEXES,
    DIRENT_SIZE, EXTENDED_SIZE, NULL_ADDR, SLOT_SIZE, SUPER_OFFSET, SUPER_SIZE,
};
use super::{Content, Error, Listing, Node};

type Xattrs = BTreeMap<Vec<u8>, Vec<u8>>;

struct Image<'a> {
    img: &'a [u8],
    sb: Super,
    /// Where shared xattr entries are (`xattr_blkaddr`, a block address, as a byte offset).
    xattr_base: u64,
}

/// The superblock's `xattr_blkaddr` (byte 44), as a byte offset.
fn xattr_base(img: &[u8]) -> u64 {
    img.get(SUPER_OFFSET + 44..SUPER_OFFSET + 48)
        .map_or(0, |b| u64::from(format::get32(b, 0)) * BLOCK_SIZE)
}

enum Piece<'a> {
    Data(&'a [u8]),
    Zeros(u64),
}

fn corrupt(what: &'static str, offset: u64) -> Error {
    Error::Corrupt { what, offset }
}

/// Parse a whole image into its tree.
pub fn read(img: &[u8]) -> Result<Listing, Error> {
    let image = Image::open(img)?;
    let mut out = BTreeMap::new();
    let root = u64::from(image.sb.root_nid);
    let mut seen_dirs = HashSet::from([root]);
    let mut stack = vec![(Vec::new(), root, root)];
    while let Some((path, nid, parent)) = stack.pop() {
        let (h, xattrs, body) = image.inode(nid)?;
        let at = image.iloc(nid);
        let content = match h.mode & format::S_IFMT {
            format::S_IFDIR => {
                let bytes = image.collect(&h, body, at)?;
                for (name, child, ft) in dir_entries(&bytes, h.size, at)? {
                    match name.as_slice() {
                        b"." if child == nid => {}
                        b".." if child == parent => {}
                        b"." | b".." => return Err(corrupt("wrong . or .. entry", at)),
                        _ => {
                            let mut p = path.clone();
                            if !p.is_empty() {
                                p.push(b'/');
                            }
                            p.extend_from_slice(&name);
                            let (ch, _, _) = image.inode(child)?;
                            if format::file_type(ch.mode) != ft {
                                return Err(corrupt("dirent type disagrees with inode", at));
                            }
                            if ch.mode & format::S_IFMT == format::S_IFDIR
                                && !seen_dirs.insert(child)
                            {
                                return Err(corrupt("directory reached twice", at));
                            }
                            stack.push((p, child, nid));
                        }
                    }
                }
                Content::Dir
            }
            format::S_IFREG => {
                let mut hasher = blake3::Hasher::new();
                image.pieces(&h, body, at, |p| match p {
                    Piece::Data(d) => {
                        hasher.update(d);
                    }
                    Piece::Zeros(mut n) => {
                        static ZEROS: [u8; 65536] = [0; 65536];
                        while n > 0 {
                            let k = n.min(ZEROS.len() as u64) as usize;
                            hasher.update(&ZEROS[..k]);
                            n -= k as u64;
                        }
                    }
                })?;
                Content::File {
                    size: h.size,
                    blake3: *hasher.finalize().as_bytes(),
                }
            }
            format::S_IFLNK => Content::Symlink(image.collect(&h, body, at)?),
            format::S_IFCHR | format::S_IFBLK => {
                let (major, minor) = format::decode_dev(h.i_u);
                Content::Device { major, minor }
            }
            format::S_IFIFO => Content::Fifo,
            _ => return Err(corrupt("unsupported file type", at)),
        };
        out.insert(
            path,
            Node {
                nid,
                mode: h.mode,
                uid: h.uid,
                gid: h.gid,
                mtime: h.mtime.cast_signed(),
                mtime_nsec: h.mtime_nsec,
                nlink: h.nlink,
                xattrs,
                content,
            },
        );
    }
    Ok(out)
}

/// The bytes of the regular file at inode `nid` of `img` (a nid from [`read`]'s listing).
///
/// # Errors
/// [`Error::Corrupt`] if the image or the inode is not readable or not a regular file.
pub fn file_data(img: &[u8], nid: u64) -> Result<Vec<u8>, Error> {
    let image = Image::open(img)?;
    let (h, _, body) = image.inode(nid)?;
    let at = image.iloc(nid);
    if h.mode & format::S_IFMT != format::S_IFREG {
        return Err(corrupt("not a regular file", at));
    }
    image.collect(&h, body, at)
}

impl<'a> Image<'a> {
    /// Decode and check the superblock: 4 KiB blocks, no incompatible feature but chunked
    /// files, the image as long as its block count.
    fn open(img: &'a [u8]) -> Result<Self, Error> {
        let sb = img
            .get(SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE)
            .and_then(Super::decode)
            .ok_or(corrupt(
                "no EROFS superblock with 4 KiB blocks",
                SUPER_OFFSET as u64,
            ))?;
        if sb.feature_incompat & !format::FEATURE_INCOMPAT_CHUNKED_FILE != 0 {
            return Err(corrupt(
                "unsupported incompatible feature",
                SUPER_OFFSET as u64 + 80,
            ));
        }
        if u64::from(sb.blocks) * BLOCK_SIZE > img.len() as u64 {
            return Err(corrupt(
                "image shorter than its block count",
                img.len() as u64,
            ));
        }
        Ok(Self {
            img,
            sb,
            xattr_base: xattr_base(img),
        })
    }

    fn slice(&self, off: u64, len: u64) -> Result<&'a [u8], Error> {
        let end = off
            .checked_add(len)
            .ok_or(corrupt("offset overflow", off))?;
        usize::try_from(off)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(a, b)| self.img.get(a..b))
            .ok_or(corrupt("reference beyond the image", off))
    }

    fn iloc(&self, nid: u64) -> u64 {
        u64::from(self.sb.meta_blkaddr) * BLOCK_SIZE + nid.saturating_mul(SLOT_SIZE)
    }

    /// The inode's header, xattrs, and the offset right after them.
    fn inode(&self, nid: u64) -> Result<(InodeHeader, Xattrs, u64), Error> {
        let at = self.iloc(nid);
        let avail = (self.img.len() as u64)
            .saturating_sub(at)
            .min(EXTENDED_SIZE as u64);
        let raw = self.slice(at, avail)?;
        let h = InodeHeader::decode(raw, &self.sb).ok_or_else(|| {
            // Data layouts 1 and 3 are the compressed ones (`EROFS_INODE_COMPRESSED_*`).
            match raw.get(..2).map(|f| (format::get16(f, 0) >> 1) & 7) {
                Some(1 | 3) => corrupt("compressed inode (compression is not supported)", at),
                _ => corrupt("malformed inode", at),
            }
        })?;
        let xat = at + h.len() as u64;
        let xlen = format::xattr_ibody_size(h.xattr_icount) as u64;
        let mut xattrs = BTreeMap::new();
        if xlen > 0 {
            let x = self.slice(xat, xlen)?;
            // The header's shared count, then that many u32 ids of entries in the shared area.
            let shared = usize::from(x[4]);
            let ids_end = format::XATTR_HEADER_SIZE + 4 * shared;
            let ids = x
                .get(format::XATTR_HEADER_SIZE..ids_end)
                .ok_or(corrupt("more shared xattr ids than the xattr area holds", xat))?;
            for id in ids.chunks_exact(4) {
                let at = self.xattr_base + u64::from(format::get32(id, 0)) * 4;
                let e = self.slice(at, 4)?;
                let (name_len, index) = (u64::from(e[0]), e[1]);
                let value_len = u64::from(format::get16(e, 2));
                let name = self.slice(at + 4, name_len)?;
                let value = self.slice(at + 4 + name_len, value_len)?;
                let full = format::join_xattr_name(index, name)
                    .ok_or(corrupt("unknown xattr prefix", at))?;
                if xattrs.insert(full, value.to_vec()).is_some() {
                    return Err(corrupt("duplicate xattr", at));
                }
            }
            let mut i = ids_end;
            while i < x.len() {
                let e = x.get(i..i + 4).ok_or(corrupt("truncated xattr", xat))?;
                let (name_len, index) = (usize::from(e[0]), e[1]);
                let value_len = usize::from(format::get16(e, 2));
                let name = x
                    .get(i + 4..i + 4 + name_len)
                    .ok_or(corrupt("truncated xattr", xat))?;
                let value = x
                    .get(i + 4 + name_len..i + 4 + name_len + value_len)
                    .ok_or(corrupt("truncated xattr", xat))?;
                let full = format::join_xattr_name(index, name)
                    .ok_or(corrupt("unknown xattr prefix", xat))?;
                if xattrs.insert(full, value.to_vec()).is_some() {
                    return Err(corrupt("duplicate xattr", xat));
                }
                i = (i + 4 + name_len + value_len).next_multiple_of(4);
            }
        }
        Ok((h, xattrs, xat + xlen))
    }

    /// Call `f` with the inode's data in order (holes as zeros).
    fn pieces(
        &self,
        h: &InodeHeader,
        body: u64,
        at: u64,
        mut f: impl FnMut(Piece<'a>),
    ) -> Result<(), Error> {
        let base = u64::from(h.i_u) * BLOCK_SIZE;
        match h.layout {
            DataLayout::FlatPlain => {
                if h.size > 0 {
                    f(Piece::Data(self.slice(base, h.size)?));
                }
            }
            DataLayout::FlatInline => {
                let blocks = h.size.div_ceil(BLOCK_SIZE);
                let full = blocks.saturating_sub(1) * BLOCK_SIZE;
                if full > 0 {
                    f(Piece::Data(self.slice(base, full)?));
                }
                let tail = h.size - full;
                if body % BLOCK_SIZE + tail > BLOCK_SIZE {
                    return Err(corrupt("inline data crosses a block boundary", at));
                }
                f(Piece::Data(self.slice(body, tail)?));
            }
            DataLayout::ChunkBased => {
                let fmt = h.i_u as u16;
                if fmt & CHUNK_FORMAT_INDEXES != 0 || fmt & !(CHUNK_BLKBITS_MASK) != 0 {
                    return Err(corrupt("unsupported chunk format", at));
                }
                let chunk = BLOCK_SIZE << (fmt & CHUNK_BLKBITS_MASK);
                let count = h.size.div_ceil(chunk);
                let map = self.slice(
                    body.next_multiple_of(4),
                    count
                        .checked_mul(4)
                        .ok_or(corrupt("chunk map overflow", at))?,
                )?;
                for (i, e) in map.chunks_exact(4).enumerate() {
                    let len = chunk.min(h.size - i as u64 * chunk);
                    match format::get32(e, 0) {
                        NULL_ADDR => f(Piece::Zeros(len)),
                        addr => f(Piece::Data(self.slice(u64::from(addr) * BLOCK_SIZE, len)?)),
                    }
                }
            }
        }
        Ok(())
    }

    /// Small contents (directories, symlinks) as one buffer, bounded by the image size.
    fn collect(&self, h: &InodeHeader, body: u64, at: u64) -> Result<Vec<u8>, Error> {
        if h.size > self.img.len() as u64 {
            return Err(corrupt("size beyond the image", at));
        }
        let mut v = Vec::with_capacity(h.size as usize);
        self.pieces(h, body, at, |p| match p {
            Piece::Data(d) => v.extend_from_slice(d),
            Piece::Zeros(n) => v.resize(v.len() + n as usize, 0),
        })?;
        Ok(v)
    }
}

/// A directory's entries `(name, nid, file type)`, checked to be in strictly increasing order.
fn dir_entries(bytes: &[u8], size: u64, at: u64) -> Result<Vec<(Vec<u8>, u64, u8)>, Error> {
    let mut out: Vec<(Vec<u8>, u64, u8)> = Vec::new();
    for (b, block) in bytes.chunks(BLOCK_SIZE as usize).enumerate() {
        let bad = |what| corrupt(what, at + b as u64 * BLOCK_SIZE);
        let max = block.len().min((size - b as u64 * BLOCK_SIZE) as usize);
        let first = block.get(8..10).ok_or(bad("short directory block"))?;
        let nameoff0 = usize::from(format::get16(first, 0));
        if nameoff0 < DIRENT_SIZE || nameoff0 % DIRENT_SIZE != 0 || nameoff0 > max {
            return Err(bad("bad first name offset"));
        }
        let count = nameoff0 / DIRENT_SIZE;
        for i in 0..count {
            let d = &block[i * DIRENT_SIZE..(i + 1) * DIRENT_SIZE];
            let nid = format::get64(d, 0);
            let start = usize::from(format::get16(d, 8));
            let end = if i + 1 < count {
                usize::from(format::get16(&block[(i + 1) * DIRENT_SIZE..], 8))
            } else {
                let rest = block.get(start..max).ok_or(bad("bad name offset"))?;
                start + rest.iter().position(|&c| c == 0).unwrap_or(rest.len())
            };
            if start > end || end > max {
                return Err(bad("bad name offset"));
            }
            let name = block[start..end].to_vec();
            if name.is_empty() || name.contains(&b'/') {
                return Err(bad("bad name"));
            }
            if out.last().is_some_and(|l| l.0 >= name) {
                return Err(bad("names out of order"));
            }
            out.push((name, nid, d[10]));
        }
    }
    Ok(out)
}
