//! The layer's tree in memory while the tar streams: inodes in a vector, directories as sorted
//! maps of names to inode numbers, file data already in the output (only its block map is
//! kept). The tar rules live here: later entries replace earlier ones, a directory over a
//! directory keeps its children, parents must be real directories, hard links must name an
//! earlier non-directory of this layer.

use std::collections::{BTreeMap, HashSet};

use super::data::FileLayout;
use super::format::{S_IFDIR, S_IFMT};
use super::{DirAttrs, Error};

/// Index of an inode in [`Tree::inodes`].
pub(crate) type Ino = usize;

/// Everything an inode records besides its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attrs {
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Full xattr names → values, sorted.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug)]
pub(crate) enum Body {
    Dir(BTreeMap<Box<[u8]>, Ino>),
    File {
        size: u64,
        layout: FileLayout,
        blake3: Option<[u8; 32]>,
    },
    Symlink(Vec<u8>),
    /// Character or block device (the mode says which), as `(major, minor)`.
    Device(u32, u32),
    Fifo,
}

#[derive(Debug)]
pub(crate) struct Inode {
    pub attrs: Attrs,
    pub body: Body,
}

pub(crate) struct Tree {
    pub inodes: Vec<Inode>,
    /// Directories the layer only implies (no entry of their own), the root included when
    /// there is no `./` entry: written as extended inodes, so a chain image can patch their
    /// attributes in place (`super::view`).
    pub implied: HashSet<Ino>,
}

/// The root's inode number.
pub(crate) const ROOT: Ino = 0;

const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

impl Tree {
    /// A tree holding only the root, with `root`'s attributes.
    pub(crate) fn new(root: &DirAttrs) -> Self {
        Self {
            inodes: vec![Inode {
                attrs: root.to_attrs(),
                body: Body::Dir(BTreeMap::new()),
            }],
            implied: HashSet::from([ROOT]),
        }
    }

    /// Add an inode that is not yet linked anywhere.
    pub(crate) fn add(&mut self, inode: Inode) -> Ino {
        self.inodes.push(inode);
        self.inodes.len() - 1
    }

    fn children(&self, ino: Ino) -> Option<&BTreeMap<Box<[u8]>, Ino>> {
        match &self.inodes[ino].body {
            Body::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// Walk `parents` from the root; every component must be a directory (a symlink or file is
    /// [`Error::NotADirectory`]); missing ones are created with `implied`'s attributes for that
    /// path, or 0755 root:root mtime 0, when `create`, else `None`.
    pub(crate) fn dir_of(
        &mut self,
        parents: &[&[u8]],
        entry: &str,
        create: bool,
        implied: &BTreeMap<Vec<u8>, DirAttrs>,
    ) -> Result<Option<Ino>, Error> {
        let mut at = ROOT;
        for (i, name) in parents.iter().enumerate() {
            let found = self.children(at).and_then(|c| c.get(*name)).copied();
            at = match found {
                Some(child) if matches!(self.inodes[child].body, Body::Dir(_)) => child,
                Some(_) => {
                    return Err(Error::NotADirectory {
                        entry: entry.to_owned(),
                        parent: lossy(&parents[..=i].join(&b'/')),
                    })
                }
                None if create => {
                    let path = parents[..=i].join(&b'/');
                    let mut attrs = implied.get(&path).cloned().unwrap_or_default().to_attrs();
                    // The lower layers' overlay markers are theirs: an opaque copy here would
                    // hide the very directory whose attributes it borrows.
                    attrs
                        .xattrs
                        .retain(|k, _| !k.starts_with(b"trusted.overlay."));
                    let child = self.add(Inode {
                        attrs,
                        body: Body::Dir(BTreeMap::new()),
                    });
                    self.link(at, name, child);
                    self.implied.insert(child);
                    child
                }
                None => return Ok(None),
            };
        }
        Ok(Some(at))
    }

    /// Look up `name` in directory `dir`.
    pub(crate) fn get(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        self.children(dir).and_then(|c| c.get(name)).copied()
    }

    /// Point `dir/name` at `ino`, replacing whatever was there.
    pub(crate) fn link(&mut self, dir: Ino, name: &[u8], ino: Ino) {
        if let Body::Dir(c) = &mut self.inodes[dir].body {
            c.insert(name.into(), ino);
        }
    }

    /// Put a new inode at `dir/name`, as a tar extracts it: a directory over a directory takes
    /// the new attributes and keeps its children and opaque marker; anything else replaces.
    pub(crate) fn put(&mut self, dir: Ino, name: &[u8], inode: Inode) {
        if let Some(old) = self.get(dir, name) {
            if is_dir(&self.inodes[old].attrs) && matches!(inode.body, Body::Dir(_)) {
                let opaque = self.inodes[old].attrs.xattrs.get(OPAQUE_XATTR).cloned();
                self.inodes[old].attrs = inode.attrs;
                self.implied.remove(&old);
                if let Some(v) = opaque {
                    self.inodes[old]
                        .attrs
                        .xattrs
                        .insert(OPAQUE_XATTR.to_vec(), v);
                }
                return;
            }
        }
        let ino = self.add(inode);
        self.link(dir, name, ino);
    }

    /// Mark directory `dir` opaque for overlayfs.
    pub(crate) fn set_opaque(&mut self, dir: Ino) {
        self.inodes[dir]
            .attrs
            .xattrs
            .insert(OPAQUE_XATTR.to_vec(), b"y".to_vec());
    }

    /// Replace the root directory's attributes (a `./` entry), keeping its opaque marker.
    pub(crate) fn set_root_attrs(&mut self, attrs: Attrs) {
        let opaque = self.inodes[ROOT].attrs.xattrs.get(OPAQUE_XATTR).cloned();
        self.inodes[ROOT].attrs = attrs;
        self.implied.remove(&ROOT);
        if let Some(v) = opaque {
            self.inodes[ROOT]
                .attrs
                .xattrs
                .insert(OPAQUE_XATTR.to_vec(), v);
        }
    }
}

impl Tree {
    /// Where the regular files whose path `select` accepts are (see [`super::Extents`]).
    pub(crate) fn extents(
        &self,
        select: fn(&[u8]) -> bool,
    ) -> BTreeMap<Vec<u8>, super::Extents> {
        use super::format::{BLOCK_SIZE, NULL_ADDR};
        let mut out = BTreeMap::new();
        self.walk(|p, child| {
                match &self.inodes[child].body {
                    Body::File { size, layout, .. } if select(p) => {
                        let e = match layout {
                            FileLayout::Plain { blkaddr } => super::Extents {
                                size: *size,
                                chunk: (*size).max(1),
                                chunks: vec![Some(u64::from(*blkaddr) * BLOCK_SIZE)],
                            },
                            FileLayout::Chunked { chunk_bits, map } => super::Extents {
                                size: *size,
                                chunk: BLOCK_SIZE << chunk_bits,
                                chunks: map
                                    .iter()
                                    .map(|&a| (a != NULL_ADDR).then(|| u64::from(a) * BLOCK_SIZE))
                                    .collect(),
                            },
                        };
                        out.insert(p.to_vec(), e);
                    }
                    _ => {}
                }
        });
        out
    }

    /// Visit every entry below the root with its path (`a/b`), parents before their children.
    pub(crate) fn walk(&self, mut visit: impl FnMut(&[u8], Ino)) {
        let mut stack: Vec<(Vec<u8>, Ino)> = vec![(Vec::new(), ROOT)];
        while let Some((path, dir)) = stack.pop() {
            let Some(children) = self.children(dir) else {
                continue;
            };
            for (name, &child) in children {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                visit(&p, child);
                if matches!(self.inodes[child].body, Body::Dir(_)) {
                    stack.push((p, child));
                }
            }
        }
    }
}

fn is_dir(a: &Attrs) -> bool {
    a.mode & S_IFMT == S_IFDIR
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl DirAttrs {
    pub(crate) fn to_attrs(&self) -> Attrs {
        Attrs {
            mode: S_IFDIR | (self.mode & 0o7777),
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            xattrs: self.xattrs.clone(),
        }
    }
}
