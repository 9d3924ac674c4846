//! An in-process EROFS image writer fed by a (decompressed) layer tar stream: no temp tree, no
//! root privileges, no external tool. Entries are read once, in order; file data goes straight
//! to the output (all-zero chunks become holes), the tree's metadata stays in memory (about a
//! hundred bytes per entry), and the inodes and directories are written after the last entry.
//!
//! The image uses only what Linux 5.15 mounts: 4 KiB blocks, compact and extended inodes, flat
//! and inline data, chunk-based files with holes (`CHUNKED_FILE`, 5.15) for sparse files, inline
//! xattrs. The same tar and [`Options`] give the same bytes.
//!
//! This module writes only to the output it is given and never touches the store; [`read`] is a
//! small reader of the images it writes, for tests and fuzzing.
//!
//! - `format`: the on-disk structures (kernel `erofs_fs.h`);
//! - `entries` / `sparse`: tar entries → tree (path rules, whiteouts, PAX records, sparse maps);
//! - `tree`: the in-memory tree; `data`: the streamed data area; `layout`: metadata at the end;
//! - `reader`: image → [`Listing`];
//! - `view`: what an overlay merge needs of a layer ([`View`], stored beside the image), and
//!   patching an image's implied directories in place ([`patch_dirs`]).

mod data;
mod entries;
pub mod format;
mod layout;
mod reader;
mod sparse;
mod tree;
mod view;

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Seek, Write};

pub use reader::{file_data, read};
pub use view::{patch_dirs, View, ViewDir, ViewEntry};

/// Why writing (or reading) an image failed. Entry errors name the entry as written in the tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A path climbs out of the layer (`..`), or a whiteout names `.`/`..`, or the root is not
    /// a directory.
    #[error("layer entry {entry:?} escapes the layer root")]
    Traversal {
        /// The entry's path.
        entry: String,
    },
    /// A hard link names something that is not an earlier non-directory of this layer, or is
    /// reached through a symlink.
    #[error(
        "layer entry {entry:?} is a hard link to {target:?}, which is not a file inside the layer"
    )]
    LinkEscape {
        /// The link's path.
        entry: String,
        /// Its target.
        target: String,
    },
    /// An entry would be written through a symlink or under a non-directory.
    #[error("layer entry {entry:?}: parent {parent:?} is not a real directory (symlink or file)")]
    NotADirectory {
        /// The entry's path.
        entry: String,
        /// The offending parent.
        parent: String,
    },
    /// An entry EROFS (or Linux) cannot represent.
    #[error("layer entry {entry:?}: {reason}")]
    Invalid {
        /// The entry's path.
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A malformed PAX sparse map.
    #[error("layer entry {entry:?}: bad sparse map: {reason}")]
    Sparse {
        /// The entry's path.
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The tar stream is malformed or truncated between entries.
    #[error("reading layer tar: {source}")]
    Tar {
        /// The cause (the tar crate reports through `io::Error`).
        #[source]
        source: io::Error,
    },
    /// The tar stream is malformed or truncated inside an entry.
    #[error("reading layer tar entry {entry:?}: {source}")]
    TarEntry {
        /// The entry's path.
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the image to the caller's output failed.
    #[error("{action} of the EROFS image: {source}")]
    Output {
        /// What was being written.
        action: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image would exceed EROFS's 32-bit block addresses (16 TiB) or a 16-bit field.
    #[error("the layer does not fit an EROFS image (16 TiB, or 256 KiB of xattrs per inode)")]
    TooLarge,
    /// [`read`]: the bytes are not an image this module can read.
    #[error("corrupt EROFS image: {what} (at byte {offset})")]
    Corrupt {
        /// What is wrong.
        what: &'static str,
        /// Where.
        offset: u64,
    },
}

impl Error {
    fn output(action: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Output { action, source }
    }
}

/// Attributes of a directory the layer does not describe itself: the root without a `./`
/// entry, and parents implied by deeper paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirAttrs {
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
    /// Full xattr names → values (`trusted.overlay.*` is dropped for implied directories).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Default for DirAttrs {
    /// 0755 root:root, mtime 0: what an unpacking tool creates.
    fn default() -> Self {
        Self {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

/// How to write an image.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The filesystem UUID (e.g. the layer digest's first 16 bytes: see [`Options::for_layer`]).
    pub uuid: [u8; 16],
    /// The root directory's attributes when the layer has no `./` entry.
    pub root: DirAttrs,
    /// Attributes for directories the layer only implies, by path (`a/b`, no slashes at the
    /// ends): the lower layers' merged view, so the overlay keeps them. Missing ones get
    /// [`DirAttrs::default`]. An image written with entries here depends on its parent layers.
    pub implied_dirs: BTreeMap<Vec<u8>, DirAttrs>,
    /// Fill [`Report::manifest`] (hashes every file: costs a blake3 pass).
    pub manifest: bool,
    /// Fill [`Report::view`]: what an overlay merge needs of this layer (every path's kind,
    /// directory attributes, whiteouts, opaque and implied directories).
    pub view: bool,
    /// Record in [`Report::extents`] where the image holds the bytes of every regular file
    /// whose final path (`a/b`) this accepts (e.g. boot files, copied out after the write).
    pub extents_of: Option<fn(&[u8]) -> bool>,
}

impl Options {
    /// Options for a layer identified by `digest`: UUID = its first 16 bytes, as
    /// `mkfs.erofs -U` gets from `backend::oci::erofs::uuid_for`.
    #[must_use]
    pub fn for_layer(digest: &crate::Digest) -> Self {
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&digest.as_bytes()[..16]);
        Self {
            uuid,
            ..Self::default()
        }
    }
}

/// What a written image holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Directory entries read (explicit ones, not implied).
    pub dirs: u64,
    /// Non-directory entries read (files, links, symlinks, devices, FIFOs).
    pub files: u64,
    /// Whiteouts and opaque markers.
    pub whiteouts: u64,
    /// Entries skipped: aufs bookkeeping, entry types a filesystem cannot hold.
    pub skipped_entries: u64,
    /// Xattrs dropped: `trusted.overlay.*` from the layer, namespaces EROFS cannot store.
    pub skipped_xattrs: u64,
    /// Inodes in the image.
    pub inodes: u64,
    /// Image size in 4 KiB blocks.
    pub blocks: u64,
    /// The tree as written, if [`Options::manifest`].
    pub manifest: Option<Listing>,
    /// Where the regular files [`Options::extents_of`] selected are, by final path.
    pub extents: BTreeMap<Vec<u8>, Extents>,
    /// The layer's view for overlay merges, if [`Options::view`].
    pub view: Option<View>,
}

/// Where a regular file's bytes are in the image: fixed-size chunks, each at a byte offset of
/// the image or a hole (zeros). Read them back with [`copy_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extents {
    /// The file's size.
    pub size: u64,
    /// Bytes per chunk (the last one may be short).
    pub chunk: u64,
    /// Byte offset in the image of each chunk, `None` for a hole.
    pub chunks: Vec<Option<u64>>,
}

/// An image's tree: path (`""` is the root, `a/b` below it) → node.
pub type Listing = BTreeMap<Vec<u8>, Node>;

/// One path of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The inode's nid (`st_ino` on a 64-bit kernel): hard links share it.
    pub nid: u64,
    /// Full `st_mode`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds.
    pub mtime_nsec: u32,
    /// Link count.
    pub nlink: u32,
    /// Xattrs, full names.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Type-specific contents.
    pub content: Content,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory (its children are other paths of the listing).
    Dir,
    /// A regular file: size and blake3 of its bytes.
    File {
        /// Size in bytes.
        size: u64,
        /// blake3 of the contents.
        blake3: [u8; 32],
    },
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// A character or block device (the mode says which).
    Device {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO.
    Fifo,
}

/// Write an EROFS image of the layer tar `tar` to `out` (positioned anywhere: the image starts at
/// offset 0 and ends at `report.blocks * 4096`). On error, `out` holds garbage; the caller
/// deletes it.
pub fn write<R: Read, W: Write + Seek>(tar: R, out: W, opts: &Options) -> Result<Report, Error> {
    let mut out = BufWriter::with_capacity(1 << 20, out);
    // The data area starts at block 1; the superblock's block is written last.
    out.seek(io::SeekFrom::Start(format::BLOCK_SIZE))
        .map_err(Error::output("seeking past the superblock"))?;
    let mut ingest = entries::Ingest::new(data::DataArea::new(out), opts);
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(|source| Error::Tar { source })? {
        let mut entry = entry.map_err(|source| Error::Tar { source })?;
        ingest.entry(&mut entry)?;
    }
    let entries::Ingest {
        tree,
        area,
        mut report,
        ..
    } = ingest;
    if let Some(select) = opts.extents_of {
        report.extents = tree.extents(select);
    }
    layout::finish(&tree, area, opts, report)
}

/// Set the UUID of an image written by [`write`] (when the digest naming it is known only after
/// the stream was read). The superblock has no checksum, so only these 16 bytes change.
pub fn set_uuid<W: Write + Seek>(mut out: W, uuid: [u8; 16]) -> Result<(), Error> {
    out.seek(io::SeekFrom::Start(format::SUPER_OFFSET as u64 + 48))
        .map_err(Error::output("seeking to the superblock UUID"))?;
    out.write_all(&uuid)
        .map_err(Error::output("writing the superblock UUID"))
}

/// Copy the file described by `extents` out of `image` (an image [`write`] wrote) into `to`.
pub fn copy_file<W: Write>(
    image: &std::fs::File,
    extents: &Extents,
    mut to: W,
) -> Result<(), io::Error> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = extents.size;
    for chunk in &extents.chunks {
        let mut n = extents.chunk.min(left);
        left -= n;
        let mut at = *chunk;
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            match at {
                Some(off) => {
                    image.read_exact_at(&mut buf[..k], off)?;
                    at = Some(off + k as u64);
                }
                None => buf[..k].fill(0),
            }
            to.write_all(&buf[..k])?;
            n -= k as u64;
        }
    }
    Ok(())
}

/// Fuzz oracle: arbitrary bytes as a layer tar either fail cleanly or give an image that
/// [`read`] parses back into exactly the tree the writer meant. Never panics otherwise.
pub fn fuzz_check(data: &[u8]) {
    if claims_huge_file(data) {
        // The manifest hashes every byte, holes included: a claimed 2^60-byte sparse file
        // would be a hang, not a finding.
        return;
    }
    let opts = Options {
        manifest: true,
        ..Options::default()
    };
    let mut image = io::Cursor::new(Vec::new());
    let Ok(report) = write(data, &mut image, &opts) else {
        return;
    };
    let image = image.into_inner();
    assert_eq!(image.len() as u64, report.blocks * format::BLOCK_SIZE);
    let listing = read(&image).expect("the reader accepts what the writer wrote");
    assert_eq!(Some(listing), report.manifest, "read back a different tree");
}

/// Whether any entry of `data` claims more than 64 MiB (as stored, or as a sparse file's size).
fn claims_huge_file(data: &[u8]) -> bool {
    const LIMIT: u64 = 64 << 20;
    let mut archive = tar::Archive::new(data);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    for entry in entries {
        let Ok(mut entry) = entry else {
            return false;
        };
        let gnu_real = entry
            .header()
            .as_gnu()
            .and_then(|g| g.real_size().ok())
            .unwrap_or(0);
        if entry.size() > LIMIT || gnu_real > LIMIT {
            return true;
        }
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let size_key =
                    matches!(ext.key_bytes(), b"GNU.sparse.size" | b"GNU.sparse.realsize");
                let size = std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                if size_key && size.is_none_or(|s| s > LIMIT) {
                    return true;
                }
            }
        }
    }
    false
}
