//! A layer's view for overlay merges, and patching an image's implied directories.
//!
//! An upper layer that adds `tmp/x` without a `tmp/` entry implies `tmp`; the writer gives it
//! 0755 root:root mtime 0. Which attributes the merged tree should show instead depends on the
//! layers below, known only when the image is assembled. So the writer records, per layer, what
//! a merge needs ([`View`]: every path's kind, directory attributes, whiteouts, opaque and
//! implied directories, and the nid of each implied directory), and writes implied directories
//! as extended, flat inodes followed by [`XATTR_ROOM`] bytes for xattrs: [`patch_dirs`] can then
//! give a copy of the image the lower layers' attributes in place (mode, owner, mtime at fixed
//! offsets of a 64-byte inode, xattrs in the room after it), without the tar.
//!
//! Text format (one record a line, `PATH` last, `\` and newline escaped as `\\` and `\n`, the
//! root is the empty path):
//!
//! ```text
//! imgstore-layer-view 1
//! d MODE UID GID MTIME NSEC OPAQUE NID XATTRS PATH
//!                          directory: MODE octal, OPAQUE `o`/`-`, NID `-` (explicit) or the
//!                          implied inode's nid, XATTRS `-` or `NAME=VALUE,…` in hex (the
//!                          layer's own `trusted.overlay.*` are not listed)
//! w PATH                                       whiteout (0/0 character device)
//! f PATH                                       anything else
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::format::{self, BLOCK_SIZE, S_IFCHR, S_IFDIR, S_IFMT, SLOT_SIZE, SUPER_OFFSET};
use super::tree::{Body, Ino, Tree, ROOT};
use super::Error;

const MAGIC_LINE: &[u8] = b"imgstore-layer-view 1";
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE_XATTR_NAME: &[u8] = b"trusted.overlay.opaque";

/// Bytes of inline xattr area an implied directory can hold after patching (header and
/// entries): room for a security label and a few `user.*` attributes.
pub const XATTR_ROOM: usize = 256;

/// What an overlay merge needs of one layer: each path (`""` is the root, `a/b` below it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Every path of the layer.
    pub paths: BTreeMap<Vec<u8>, ViewEntry>,
}

/// One path of a [`View`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewEntry {
    /// A directory.
    Dir(ViewDir),
    /// A whiteout: the path is removed from the layers below.
    Whiteout,
    /// A file, symlink, device or FIFO.
    Other,
}

/// A directory's attributes in a [`View`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewDir {
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds of `mtime`.
    pub mtime_nsec: u32,
    /// `trusted.overlay.opaque=y`: the layers below are hidden under it.
    pub opaque: bool,
    /// The layer only implies the directory: the nid of its (extended) inode.
    pub implied: Option<u64>,
    /// Xattrs, full names, without `trusted.overlay.*` (the overlay's markers are the layer's).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl ViewDir {
    /// Mode, owner and xattrs: what decides whether an implied directory shows something else.
    #[must_use]
    pub fn decides(&self) -> (u32, u32, u32, &BTreeMap<Vec<u8>, Vec<u8>>) {
        (self.mode & 0o7777, self.uid, self.gid, &self.xattrs)
    }
}

/// The view of the tree the writer built (`nids` from the layout).
pub(crate) fn of_tree(tree: &Tree, nids: &[u64]) -> View {
    let mut paths = BTreeMap::new();
    let dir = |ino: Ino| {
        let a = &tree.inodes[ino].attrs;
        ViewEntry::Dir(ViewDir {
            mode: a.mode & 0o7777,
            uid: a.uid,
            gid: a.gid,
            mtime: a.mtime,
            mtime_nsec: a.mtime_nsec,
            opaque: a.xattrs.get(OPAQUE_XATTR_NAME).is_some_and(|v| v == b"y"),
            implied: tree.implied.contains(&ino).then(|| nids[ino]),
            xattrs: a
                .xattrs
                .iter()
                .filter(|(k, _)| !k.starts_with(OVERLAY_PREFIX))
                .filter(|(k, _)| format::split_xattr_name(k).is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    };
    paths.insert(Vec::new(), dir(ROOT));
    tree.walk(|p, child| {
        let inode = &tree.inodes[child];
        let entry = match inode.body {
            Body::Dir(_) => dir(child),
            Body::Device(0, 0) if inode.attrs.mode & S_IFMT == S_IFCHR => ViewEntry::Whiteout,
            _ => ViewEntry::Other,
        };
        paths.insert(p.to_vec(), entry);
    });
    View { paths }
}

impl View {
    /// The text form (module docs).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.paths.len() * 48);
        out.extend_from_slice(MAGIC_LINE);
        out.push(b'\n');
        for (path, entry) in &self.paths {
            match entry {
                ViewEntry::Dir(d) => {
                    let nid = d.implied.map_or_else(|| "-".to_owned(), |n| n.to_string());
                    let opaque = if d.opaque { "o" } else { "-" };
                    let xattrs = if d.xattrs.is_empty() {
                        "-".to_owned()
                    } else {
                        let pairs: Vec<String> = d
                            .xattrs
                            .iter()
                            .map(|(k, v)| format!("{}={}", hex(k), hex(v)))
                            .collect();
                        pairs.join(",")
                    };
                    out.extend_from_slice(
                        format!(
                            "d {:o} {} {} {} {} {opaque} {nid} {xattrs} ",
                            d.mode, d.uid, d.gid, d.mtime, d.mtime_nsec
                        )
                        .as_bytes(),
                    );
                }
                ViewEntry::Whiteout => out.extend_from_slice(b"w "),
                ViewEntry::Other => out.extend_from_slice(b"f "),
            }
            for &b in path {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    _ => out.push(b),
                }
            }
            out.push(b'\n');
        }
        out
    }

    /// Parse the text form.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the first bad line's byte offset.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut lines = bytes.split(|&b| b == b'\n');
        if lines.next() != Some(MAGIC_LINE) {
            return Err(Error::Corrupt {
                what: "layer view: not an imgstore layer view (version 1)",
                offset: 0,
            });
        }
        let mut offset = MAGIC_LINE.len() as u64 + 1;
        let mut paths = BTreeMap::new();
        for line in lines {
            let at = offset;
            offset += line.len() as u64 + 1;
            if line.is_empty() {
                continue;
            }
            let bad = |what| Error::Corrupt { what, offset: at };
            let (entry, raw) = match line {
                [b'w', b' ', rest @ ..] => (ViewEntry::Whiteout, rest),
                [b'f', b' ', rest @ ..] => (ViewEntry::Other, rest),
                [b'd', b' ', rest @ ..] => {
                    let mut f = rest.splitn(9, |&b| b == b' ');
                    let mut field = || {
                        f.next()
                            .and_then(|x| std::str::from_utf8(x).ok())
                            .ok_or_else(|| bad("layer view: short directory record"))
                    };
                    let num = |s: &str| s.parse::<u64>().ok();
                    let (mode, uid, gid, mtime, nsec, opaque, nid, xattrs) = (
                        field()?,
                        field()?,
                        field()?,
                        field()?,
                        field()?,
                        field()?,
                        field()?,
                        field()?,
                    );
                    let dir = ViewDir {
                        mode: u32::from_str_radix(mode, 8)
                            .ok()
                            .filter(|m| m & !0o7777 == 0)
                            .ok_or_else(|| bad("layer view: bad mode"))?,
                        uid: uid.parse().map_err(|_| bad("layer view: bad uid"))?,
                        gid: gid.parse().map_err(|_| bad("layer view: bad gid"))?,
                        mtime: mtime.parse().map_err(|_| bad("layer view: bad mtime"))?,
                        mtime_nsec: nsec.parse().map_err(|_| bad("layer view: bad mtime"))?,
                        opaque: match opaque {
                            "o" => true,
                            "-" => false,
                            _ => return Err(bad("layer view: bad opaque flag")),
                        },
                        implied: match nid {
                            "-" => None,
                            n => Some(num(n).ok_or_else(|| bad("layer view: bad nid"))?),
                        },
                        xattrs: match xattrs {
                            "-" => BTreeMap::new(),
                            list => list
                                .split(',')
                                .map(|pair| {
                                    let (k, v) = pair.split_once('=')?;
                                    Some((unhex(k)?, unhex(v)?))
                                })
                                .collect::<Option<_>>()
                                .ok_or_else(|| bad("layer view: bad xattrs"))?,
                        },
                    };
                    let rest = f.next().ok_or_else(|| bad("layer view: no path"))?;
                    (ViewEntry::Dir(dir), rest)
                }
                _ => return Err(bad("layer view: unknown record")),
            };
            let mut path = Vec::with_capacity(raw.len());
            let mut it = raw.iter();
            while let Some(&b) = it.next() {
                if b == b'\\' {
                    match it.next() {
                        Some(b'\\') => path.push(b'\\'),
                        Some(b'n') => path.push(b'\n'),
                        _ => return Err(bad("layer view: bad escape")),
                    }
                } else {
                    path.push(b);
                }
            }
            paths.insert(path, entry);
        }
        Ok(Self { paths })
    }

    /// The directories this layer only implies, with their attributes (nid inside).
    pub fn implied(&self) -> impl Iterator<Item = (&[u8], &ViewDir)> {
        self.paths.iter().filter_map(|(p, e)| match e {
            ViewEntry::Dir(d) if d.implied.is_some() => Some((p.as_slice(), d)),
            _ => None,
        })
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Give the implied directories `patches` names (by nid, as [`View`] records them) other mode,
/// owner, mtime and xattrs (`ViewDir::xattrs`, plus the opaque marker when `ViewDir::opaque`),
/// in place, in an image the writer wrote (not yet published: the caller owns the file). The
/// image keeps its size. Xattrs that do not fit `XATTR_ROOM` are left out; the return value
/// counts the directories that lost them.
///
/// # Errors
/// [`Error::Corrupt`] if the image has no superblock, or a nid is not an extended flat directory
/// inode followed by its xattr room (an image or view the writer did not make together);
/// [`Error::Output`] for I/O.
pub fn patch_dirs(image: &File, patches: &[(u64, ViewDir)]) -> Result<usize, Error> {
    let mut sb = [0u8; format::SUPER_SIZE];
    image
        .read_exact_at(&mut sb, SUPER_OFFSET as u64)
        .map_err(Error::output("reading the superblock"))?;
    let sb = format::Super::decode(&sb).ok_or(Error::Corrupt {
        what: "no EROFS superblock",
        offset: SUPER_OFFSET as u64,
    })?;
    let meta = u64::from(sb.meta_blkaddr) * BLOCK_SIZE;
    let mut lost = 0;
    for (nid, d) in patches {
        let at = meta + nid * SLOT_SIZE;
        let mut inode = vec![0u8; format::EXTENDED_SIZE + XATTR_ROOM];
        image
            .read_exact_at(&mut inode, at)
            .map_err(Error::output("reading an implied directory's inode"))?;
        let h = format::InodeHeader::decode(&inode, &sb).ok_or(Error::Corrupt {
            what: "bad inode",
            offset: at,
        })?;
        let used = format::EXTENDED_SIZE + format::xattr_ibody_size(h.xattr_icount);
        if !h.extended
            || h.mode & S_IFMT != S_IFDIR
            || h.layout != format::DataLayout::FlatPlain
            || used > inode.len()
            || inode[used..].iter().any(|&b| b != 0)
        {
            return Err(Error::Corrupt {
                what: "an implied directory is not an extended flat directory inode with room",
                offset: at,
            });
        }
        let mut xattrs = d.xattrs.clone();
        xattrs.retain(|k, _| !k.starts_with(OVERLAY_PREFIX));
        if d.opaque {
            xattrs.insert(OPAQUE_XATTR_NAME.to_vec(), b"y".to_vec());
        }
        let split: Vec<(u8, &[u8], &[u8])> = xattrs
            .iter()
            .filter_map(|(k, v)| format::split_xattr_name(k).map(|(i, s)| (i, s, v.as_slice())))
            .collect();
        let (area, icount) = match format::encode_xattrs(&split) {
            Some((area, icount)) if area.len() <= XATTR_ROOM => (area, icount),
            _ => {
                // Too many to fit: mode, owner and mtime still change; the xattrs stay as the
                // writer left them (only the layer's own opaque marker).
                lost += 1;
                let old = inode[format::EXTENDED_SIZE..used].to_vec();
                (old, h.xattr_icount)
            }
        };
        let mode = (S_IFDIR | (d.mode & 0o7777)) as u16;
        inode[2..4].copy_from_slice(&icount.to_le_bytes());
        inode[4..6].copy_from_slice(&mode.to_le_bytes());
        inode[24..28].copy_from_slice(&d.uid.to_le_bytes());
        inode[28..32].copy_from_slice(&d.gid.to_le_bytes());
        inode[32..40].copy_from_slice(&d.mtime.to_le_bytes());
        inode[40..44].copy_from_slice(&d.mtime_nsec.to_le_bytes());
        inode.truncate(format::EXTENDED_SIZE);
        inode.extend_from_slice(&area);
        inode.resize(format::EXTENDED_SIZE + XATTR_ROOM, 0);
        image
            .write_all_at(&inode, at)
            .map_err(Error::output("patching an implied directory's inode"))?;
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implied_directories_are_patched_in_place_and_nothing_else_is() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, "tmp/x", &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        let opts = super::super::Options {
            view: true,
            manifest: true,
            ..super::super::Options::default()
        };
        let report = super::super::write(&tar[..], &mut f, &opts).unwrap();
        let view = report.view.unwrap();
        let implied: Vec<_> = view
            .implied()
            .map(|(p, d)| (p.to_vec(), d.clone()))
            .collect();
        assert_eq!(implied.len(), 2, "the root and tmp: {implied:?}");
        let tmp = implied.iter().find(|(p, _)| p == b"tmp").unwrap().1.clone();
        let label = b"system_u:object_r:tmp_t:s0".to_vec();
        let want = ViewDir {
            mode: 0o1777,
            uid: 70_000,
            gid: 7,
            mtime: 1_650_000_000,
            mtime_nsec: 5,
            opaque: true,
            xattrs: BTreeMap::from([
                (b"security.selinux".to_vec(), label.clone()),
                (b"user.k".to_vec(), b"v".to_vec()),
            ]),
            ..tmp.clone()
        };
        let lost = patch_dirs(&f, &[(tmp.implied.unwrap(), want.clone())]).unwrap();
        assert_eq!(lost, 0);
        let mut bytes = vec![0u8; (report.blocks * BLOCK_SIZE) as usize];
        f.read_exact_at(&mut bytes, 0).unwrap();
        let after = super::super::read(&bytes).unwrap();
        let mut before = report.manifest.unwrap();
        let node = before.get_mut(&b"tmp"[..]).unwrap();
        (node.mode, node.uid, node.gid) = (S_IFDIR | 0o1777, 70_000, 7);
        (node.mtime, node.mtime_nsec) = (1_650_000_000, 5);
        node.xattrs = BTreeMap::from([
            (b"security.selinux".to_vec(), label),
            (b"trusted.overlay.opaque".to_vec(), b"y".to_vec()),
            (b"user.k".to_vec(), b"v".to_vec()),
        ]);
        assert_eq!(after, before, "only tmp's attributes changed");
        // Xattrs beyond the room: mode and owner still change, the xattrs are counted as lost.
        let big = ViewDir {
            mode: 0o700,
            xattrs: BTreeMap::from([(b"user.big".to_vec(), vec![b'x'; XATTR_ROOM])]),
            ..want.clone()
        };
        assert_eq!(patch_dirs(&f, &[(tmp.implied.unwrap(), big)]).unwrap(), 1);
        f.read_exact_at(&mut bytes, 0).unwrap();
        let node = &super::super::read(&bytes).unwrap()[&b"tmp"[..]];
        assert_eq!(node.mode, S_IFDIR | 0o700);
        assert!(node.xattrs.contains_key(&b"user.k"[..]), "the previous xattrs stay");
        // A nid that is not an implied (extended) directory is refused.
        let file_nid = after[&b"tmp/x"[..]].nid;
        assert!(matches!(
            patch_dirs(&f, &[(file_nid, want)]),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn views_round_trip_through_text() {
        let mut v = View::default();
        let d = ViewDir {
            mode: 0o1777,
            uid: 70_000,
            gid: 5,
            mtime: -3,
            mtime_nsec: 9,
            opaque: true,
            implied: Some(42),
            xattrs: BTreeMap::from([
                (b"user.a b".to_vec(), b"\n,=\x00".to_vec()),
                (b"security.selinux".to_vec(), b"x".to_vec()),
            ]),
        };
        v.paths.insert(Vec::new(), ViewEntry::Dir(d.clone()));
        v.paths.insert(b"a b\\c\nd".to_vec(), ViewEntry::Other);
        v.paths.insert(b"tmp/.x".to_vec(), ViewEntry::Whiteout);
        v.paths.insert(
            b"tmp".to_vec(),
            ViewEntry::Dir(ViewDir {
                implied: None,
                opaque: false,
                xattrs: BTreeMap::new(),
                ..d
            }),
        );
        assert_eq!(View::decode(&v.encode()).unwrap(), v);
        assert!(View::decode(b"nope\n").is_err());
        assert!(View::decode(b"imgstore-layer-view 1\nd 7 0 0\n").is_err());
        assert!(View::decode(b"imgstore-layer-view 1\nx a\n").is_err());
    }
}
