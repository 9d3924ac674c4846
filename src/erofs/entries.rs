//! Tar entries → the in-memory tree and the data area, one entry at a time, as they stream.
//! The path rules are today's unpack's (`src/backend/oci/unpack.rs`): a leading `/` or `./` is
//! dropped, `..` is refused, parents must be real directories of this layer (never symlinks),
//! hard links must name an earlier non-directory; `.wh.NAME` becomes a 0/0 character device,
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr, and a layer's own `trusted.overlay.*`
//! xattrs are dropped (only whiteouts may produce them).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use tar::EntryType;

use super::data::{DataArea, FileBuilder, MAX_FILE_SIZE};
use super::format::{self, NAME_LEN, S_IFBLK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG};
use super::sparse::{self, parse_u64, read_some, SparseHeaders};
use super::tree::{lossy, Attrs, Body, Inode, Tree, ROOT};
use super::{Error, Options, Report};

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

pub(crate) struct Ingest<'o, W: Write> {
    pub tree: Tree,
    pub area: DataArea<W>,
    pub opts: &'o Options,
    pub report: Report,
    buf: Vec<u8>,
}

/// An entry's metadata with its PAX records applied.
struct Meta {
    attrs: Attrs,
    sparse: SparseHeaders,
}

/// Split a tar path into components: `/`, `.` and empty components dropped, `..` refused.
fn components<'a>(raw: &'a [u8], entry: &str) -> Result<Vec<&'a [u8]>, Error> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(Error::Traversal {
                    entry: entry.to_owned(),
                })
            }
            _ if part.contains(&0) => {
                return Err(Error::Invalid {
                    entry: entry.to_owned(),
                    reason: "a path holds a NUL byte",
                })
            }
            _ if part.len() > NAME_LEN => {
                return Err(Error::Invalid {
                    entry: entry.to_owned(),
                    reason: "a path component is longer than 255 bytes",
                })
            }
            _ => out.push(part),
        }
    }
    Ok(out)
}

impl<'o, W: Write> Ingest<'o, W> {
    pub(crate) fn new(area: DataArea<W>, opts: &'o Options) -> Self {
        Self {
            tree: Tree::new(&opts.root),
            area,
            opts,
            report: Report::default(),
            buf: vec![0u8; 256 * 1024],
        }
    }

    pub(crate) fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let mut name = lossy(&raw);
        let meta = self.read_meta(entry, &name)?;
        // PAX sparse files (0.1, 1.0) travel under a made-up name; the real one is a record.
        let raw = match &meta.sparse.name {
            Some(real) => {
                name = lossy(real);
                real.clone()
            }
            None => raw,
        };
        let parts = components(&raw, &name)?;
        let Some((&file_name, parents)) = parts.split_last() else {
            // The layer root itself ("./"): only a directory may describe it.
            if kind != EntryType::Directory {
                return Err(Error::Traversal { entry: name });
            }
            self.tree.set_root_attrs(with_type(meta.attrs, S_IFDIR));
            return Ok(());
        };
        if self.overlay_marker(file_name, parents, &name, &meta.attrs)? {
            return Ok(());
        }
        let dir = self
            .tree
            .dir_of(parents, &name, true, &self.opts.implied_dirs)?
            .unwrap_or(ROOT);
        let tar_err = |source| Error::TarEntry {
            entry: name.clone(),
            source,
        };
        let (mode, body) = match kind {
            EntryType::Directory => (S_IFDIR, Body::Dir(BTreeMap::new())),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                (S_IFREG, self.regular(entry, &name, &meta.sparse)?)
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .filter(|t| !t.is_empty() && !t.contains(&0))
                    .ok_or_else(|| Error::Invalid {
                        entry: name.clone(),
                        reason: "symlink target empty or holding a NUL byte",
                    })?
                    .into_owned();
                (S_IFLNK, Body::Symlink(target))
            }
            EntryType::Link => return self.hard_link(entry, dir, file_name, &name),
            EntryType::Char | EntryType::Block => {
                let h = entry.header();
                let major = h.device_major().map_err(tar_err)?.unwrap_or(0);
                let minor = h.device_minor().map_err(tar_err)?.unwrap_or(0);
                if format::encode_dev(major, minor).is_none() {
                    return Err(Error::Invalid {
                        entry: name,
                        reason: "device number beyond 12-bit major / 20-bit minor",
                    });
                }
                let t = if kind == EntryType::Char {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                (t, Body::Device(major, minor))
            }
            EntryType::Fifo => (S_IFIFO, Body::Fifo),
            _ => {
                tracing::debug!("skipping layer entry {name:?} of type {kind:?}");
                self.report.skipped_entries += 1;
                return Ok(());
            }
        };
        match body {
            Body::Dir(_) => self.report.dirs += 1,
            _ => self.report.files += 1,
        }
        let inode = Inode {
            attrs: with_type(meta.attrs, mode),
            body,
        };
        self.tree.put(dir, file_name, inode);
        Ok(())
    }

    /// Whiteouts and opaque markers; `true` if the entry was one.
    fn overlay_marker(
        &mut self,
        file_name: &[u8],
        parents: &[&[u8]],
        name: &str,
        attrs: &Attrs,
    ) -> Result<bool, Error> {
        let implied = &self.opts.implied_dirs;
        if file_name == OPAQUE {
            let dir = self
                .tree
                .dir_of(parents, name, true, implied)?
                .unwrap_or(ROOT);
            self.tree.set_opaque(dir);
            self.report.whiteouts += 1;
            return Ok(true);
        }
        if file_name.starts_with(b".wh..wh.") {
            // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs.
            self.report.skipped_entries += 1;
            return Ok(true);
        }
        let Some(hidden) = file_name.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Error::Traversal {
                entry: name.to_owned(),
            });
        }
        let dir = self
            .tree
            .dir_of(parents, name, true, implied)?
            .unwrap_or(ROOT);
        let inode = Inode {
            attrs: Attrs {
                mode: S_IFCHR,
                xattrs: BTreeMap::new(),
                ..attrs.clone()
            },
            body: Body::Device(0, 0),
        };
        self.tree.put(dir, hidden, inode);
        self.report.whiteouts += 1;
        Ok(true)
    }

    /// A regular file (plain, GNU sparse, or PAX sparse 0.0 / 0.1 / 1.0), streamed to the data area.
    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
        headers: &SparseHeaders,
    ) -> Result<Body, Error> {
        let tar_err = |source| Error::TarEntry {
            entry: name.to_owned(),
            source,
        };
        let hash = self.opts.manifest;
        let mut file;
        if headers.is_sparse() {
            let stored = entry.size();
            let mut counted = Counted { inner: entry, n: 0 };
            let map = sparse::read_map(headers, &mut counted, stored, name)?;
            if map.real_size > MAX_FILE_SIZE {
                return Err(Error::Invalid {
                    entry: name.to_owned(),
                    reason: "a file larger than 16 TiB",
                });
            }
            file = FileBuilder::new(map.real_size, hash);
            let mut pos = 0u64;
            for &(offset, len) in &map.segments {
                file.zeros(&mut self.area, offset - pos)?;
                let mut left = len;
                while left > 0 {
                    let want = (self.buf.len() as u64).min(left) as usize;
                    let n = read_some(&mut counted, &mut self.buf[..want]).map_err(tar_err)?;
                    if n == 0 {
                        return Err(Error::Sparse {
                            entry: name.to_owned(),
                            reason: "the map lists more data than the entry holds",
                        });
                    }
                    file.data(&mut self.area, &self.buf[..n])?;
                    left -= n as u64;
                }
                pos = offset + len;
            }
            file.zeros(&mut self.area, map.real_size - pos)?;
            if counted.n != stored {
                return Err(Error::Sparse {
                    entry: name.to_owned(),
                    reason: "the entry holds more data than the map lists",
                });
            }
        } else {
            let hint = match entry.header().as_gnu() {
                Some(gnu) if entry.header().entry_type().is_gnu_sparse() => {
                    gnu.real_size().map_err(tar_err)?
                }
                _ => entry.size(),
            };
            if hint > MAX_FILE_SIZE {
                return Err(Error::Invalid {
                    entry: name.to_owned(),
                    reason: "a file larger than 16 TiB",
                });
            }
            file = FileBuilder::new(hint, hash);
            loop {
                let n = read_some(entry, &mut self.buf).map_err(tar_err)?;
                if n == 0 {
                    break;
                }
                file.data(&mut self.area, &self.buf[..n])?;
            }
        }
        let (size, layout, blake3) = file.finish(&mut self.area)?;
        Ok(Body::File {
            size,
            layout,
            blake3,
        })
    }

    /// A hard link to an earlier non-directory of this layer, reached through real directories.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dir: usize,
        file_name: &[u8],
        name: &str,
    ) -> Result<(), Error> {
        let target_raw = entry
            .link_name_bytes()
            .map(std::borrow::Cow::into_owned)
            .unwrap_or_default();
        let escape = || Error::LinkEscape {
            entry: name.to_owned(),
            target: lossy(&target_raw),
        };
        let parts = components(&target_raw, name).map_err(|_| escape())?;
        let (&target_name, target_parents) = parts.split_last().ok_or_else(escape)?;
        let target_dir = self
            .tree
            .dir_of(target_parents, name, false, &self.opts.implied_dirs)
            .map_err(|_| escape())?
            .ok_or_else(escape)?;
        let target = self.tree.get(target_dir, target_name).ok_or_else(escape)?;
        if matches!(self.tree.inodes[target].body, Body::Dir(_)) {
            return Err(escape());
        }
        self.tree.link(dir, file_name, target);
        self.report.files += 1;
        Ok(())
    }

    fn read_meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<Meta, Error> {
        let tar_err = |source| Error::TarEntry {
            entry: name.to_owned(),
            source,
        };
        let invalid = |reason| Error::Invalid {
            entry: name.to_owned(),
            reason,
        };
        let h = entry.header();
        let id = |v: u64| u32::try_from(v).map_err(|_| invalid("uid or gid above 2^32 - 1"));
        // A blank numeric field (all NUL or spaces, as some hand-made tars have) reads as 0, as
        // the unpack this writer replaced took it; anything else must parse.
        let old = h.as_old();
        let num = |field: &[u8], v: io::Result<u64>| {
            if field.iter().all(|&b| b == 0 || b == b' ') {
                Ok(0)
            } else {
                v.map_err(tar_err)
            }
        };
        let mode = num(&old.mode, h.mode().map(u64::from))?;
        let mut attrs = Attrs {
            mode: u32::try_from(mode & 0o7777).unwrap_or(0),
            uid: id(num(&old.uid, h.uid())?)?,
            gid: id(num(&old.gid, h.gid())?)?,
            mtime: i64::try_from(num(&old.mtime, h.mtime())?)
                .map_err(|_| invalid("mtime beyond 2^63"))?,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        };
        let mut sparse = SparseHeaders::default();
        let Some(pax) = entry.pax_extensions().map_err(tar_err)? else {
            return Ok(Meta { attrs, sparse });
        };
        for ext in pax {
            let ext = ext.map_err(tar_err)?;
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let number =
                || parse_u64(value).ok_or_else(|| invalid("malformed number in a PAX record"));
            match key {
                b"uid" => attrs.uid = id(number()?)?,
                b"gid" => attrs.gid = id(number()?)?,
                b"mtime" => {
                    (attrs.mtime, attrs.mtime_nsec) =
                        parse_time(value).ok_or_else(|| invalid("malformed PAX mtime"))?;
                }
                _ => {
                    if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                        self.xattr(&mut attrs, x, value, name)?;
                    } else if key.starts_with(b"GNU.sparse.") {
                        sparse.record(key, value, name)?;
                    }
                }
            }
        }
        let xs: Vec<_> = attrs
            .xattrs
            .iter()
            .filter_map(|(k, v)| format::split_xattr_name(k).map(|(i, s)| (i, s, v.as_slice())))
            .collect();
        if format::encode_xattrs(&xs).is_none() {
            return Err(invalid("xattrs above 256 KiB"));
        }
        Ok(Meta { attrs, sparse })
    }

    fn xattr(
        &mut self,
        attrs: &mut Attrs,
        key: &[u8],
        value: &[u8],
        name: &str,
    ) -> Result<(), Error> {
        if key.starts_with(OVERLAY_XATTR_PREFIX) {
            self.report.skipped_xattrs += 1;
            return Ok(());
        }
        let Some((_, suffix)) = format::split_xattr_name(key) else {
            tracing::debug!(
                "{name:?}: xattr {:?} has a namespace EROFS cannot store",
                lossy(key)
            );
            self.report.skipped_xattrs += 1;
            return Ok(());
        };
        if suffix.len() > NAME_LEN || value.len() > usize::from(u16::MAX) {
            return Err(Error::Invalid {
                entry: name.to_owned(),
                reason: "xattr name above 255 bytes or value above 65535 bytes",
            });
        }
        attrs.xattrs.insert(key.to_vec(), value.to_vec());
        Ok(())
    }
}

fn with_type(mut attrs: Attrs, file_type: u32) -> Attrs {
    attrs.mode = file_type | (attrs.mode & 0o7777);
    attrs
}

/// Counts the bytes read through it.
pub(crate) struct Counted<'a, R> {
    pub inner: &'a mut R,
    pub n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A PAX time, `[-]seconds[.fraction]`, as seconds and nanoseconds (`-1.5` → `(-2, 500000000)`).
fn parse_time(v: &[u8]) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (sec, frac) = match v.iter().position(|&b| b == b'.') {
        Some(dot) => (&v[..dot], &v[dot + 1..]),
        None => (v, &b""[..]),
    };
    let sec = i64::try_from(parse_u64(sec)?).ok()?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut nsec = 0u32;
    for i in 0..9 {
        nsec = nsec * 10 + frac.get(i).map_or(0, |d| u32::from(d - b'0'));
    }
    Some(match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, _) => (-sec - 1, 1_000_000_000 - nsec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_parse() {
        assert_eq!(parse_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"x"), None);
        assert_eq!(parse_time(b"1.x"), None);
    }

    #[test]
    fn blank_numeric_fields_read_as_zero() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_entry_type(EntryType::Regular);
        h.set_path("f").unwrap();
        // new_gnu leaves mode, uid, gid and mtime all NUL.
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let opts = crate::erofs::Options {
            manifest: true,
            ..crate::erofs::Options::default()
        };
        let mut img = std::io::Cursor::new(Vec::new());
        let report = crate::erofs::write(&tar[..], &mut img, &opts).unwrap();
        let node = &report.manifest.unwrap()[&b"f"[..]];
        assert_eq!((node.mode & 0o7777, node.uid, node.gid, node.mtime), (0, 0, 0, 0));
    }

    #[test]
    fn components_follow_unpack_rules() {
        let c = |s: &str| components(s.as_bytes(), s).map(|v| v.concat());
        assert_eq!(c("./a//b/./c/").unwrap(), b"abc");
        assert_eq!(c("/etc").unwrap(), b"etc");
        assert!(matches!(c("a/../b"), Err(Error::Traversal { .. })));
        assert!(matches!(c(&"x".repeat(256)), Err(Error::Invalid { .. })));
        assert!(matches!(c("a\0b"), Err(Error::Invalid { .. })));
    }
}
