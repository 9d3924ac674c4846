//! Safe unpacking of one OCI layer tar into an empty scratch directory, turning OCI whiteouts
//! into overlayfs ones. It writes nothing outside `dest`: it never follows a symlink, never
//! writes through one, never opens an existing file for writing, and refuses `..`.
//! It does not touch the store (only [`super::erofs`] decides where scratch dirs live).
//! (Over 600 lines on purpose: the in-process EROFS writer in `src/erofs/` replaces this module
//! and `super::erofs` once it is wired into pull and import, so it is not split before then.)
//!
//! Entry handling:
//! - paths: a leading `/` or `./` is dropped (layers are relative to their root); any `..`
//!   component is [`Error::Traversal`]; every parent must be a real directory inside `dest`
//!   (missing ones are created 0755), else [`Error::NotADirectory`];
//! - a later entry for the same path replaces the earlier one (a directory over a directory only
//!   updates its metadata);
//! - regular files, directories, symlinks (target stored as is), hard links (target must already
//!   be a non-directory inside the layer, reached through real directories, else
//!   [`Error::LinkEscape`]) and FIFOs are created with their mode and owner; timestamps are not
//!   kept (the image normalizes them anyway);
//! - character and block devices are skipped and counted in [`UnpackReport::skipped`]: a
//!   layer has no business shipping device nodes, and the guest's /dev is devtmpfs;
//! - `.wh.<name>` becomes an overlayfs whiteout (character device 0/0, mode 0) named `<name>`;
//!   `.wh..wh..opq` sets `trusted.overlay.opaque=y` on its directory; other `.wh..wh.*` (aufs
//!   bookkeeping) are skipped;
//! - xattrs come from PAX `SCHILY.xattr.*` records, except `trusted.overlay.*`, which only
//!   whiteouts may produce (a layer must not forge overlay redirects or opaque markers).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{Mode, SFlag};
use tar::EntryType;

pub use super::boot::BootFiles;
use super::boot::Candidates;
pub use super::erofs::Error;
use crate::error::io_err;
use crate::fsutil;

/// Compression of a layer blob, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar (or anything else: the tar reader judges).
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// Detect a layer's compression from its first bytes (4 are enough).
#[must_use]
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// What unpacking one layer produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Non-directory entries created (files, hard links, symlinks, FIFOs).
    pub files: u64,
    /// Whiteouts and opaque markers turned into their overlayfs form.
    pub whiteouts: u64,
    /// Entries skipped: device nodes, aufs bookkeeping, unknown entry types.
    pub skipped: u64,
    /// The layer's boot files.
    pub boot: BootFiles,
}

/// A decompressing reader over a layer file. Call [`LayerReader::finish`] after the tar is read:
/// it drains the stream, so a corrupt tail is an error, not silence.
pub struct LayerReader {
    inner: Inner,
}

enum Inner {
    Plain(File),
    Gzip(Box<MultiGzDecoder<io::BufReader<File>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, io::BufReader<File>>>),
}

/// Open a layer file and detect its compression (gzip and zstd are decoded in-process).
pub fn open_layer(path: &Path) -> Result<(Compression, LayerReader), Error> {
    let mut file = File::open(path).map_err(io_err("opening layer", path))?;
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading layer", path)(e).into()),
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("rewinding layer", path))?;
    let compression = detect(&head[..got]);
    let inner = match compression {
        Compression::None => Inner::Plain(file),
        Compression::Gzip => Inner::Gzip(Box::new(MultiGzDecoder::new(io::BufReader::new(file)))),
        Compression::Zstd => Inner::Zstd(Box::new(
            zstd::stream::read::Decoder::with_buffer(io::BufReader::new(file))
                .map_err(io_err("starting zstd decoder for", path))?,
        )),
    };
    Ok((compression, LayerReader { inner }))
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(f) => f.read(buf),
            Inner::Gzip(g) => g.read(buf),
            Inner::Zstd(z) => z.read(buf),
        }
    }
}

impl LayerReader {
    /// Read the rest of the stream (padding after the tar's end marker) and check that the
    /// decompressor succeeded.
    pub fn finish(mut self) -> Result<(), Error> {
        io::copy(&mut self, &mut io::sink()).map_err(|source| Error::Tar { source })?;
        Ok(())
    }
}

/// A tar entry path relative to the layer root: `/` and `.` components dropped; `None` if it
/// has a `..` component. The empty path is the root itself.
#[must_use]
pub fn normalize_entry_path(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            _ => out.push(OsStr::from_bytes(part)),
        }
    }
    Some(out)
}

const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OVERLAY_XATTR_PREFIX: &[u8] = b"trusted.overlay.";

/// Unpack a (decompressed) layer tar stream into `dest`, an existing empty directory. See the
/// module docs for what each kind of entry becomes and what is refused.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackReport, Error> {
    let tar_err = |source| Error::Tar { source };
    let mut archive = tar::Archive::new(reader);
    let mut u = Unpacker {
        dest,
        report: UnpackReport::default(),
        boot: Candidates::default(),
    };
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        u.entry(&mut entry)?;
    }
    u.report.boot = u.boot.finish();
    Ok(u.report)
}

struct Unpacker<'a> {
    dest: &'a Path,
    report: UnpackReport,
    boot: Candidates,
}

/// Metadata of one entry, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let tar_err = |source| Error::Tar { source };
        let raw = entry.path_bytes().into_owned();
        let name = lossy(&raw);
        let rel = normalize_entry_path(&raw).ok_or_else(|| Error::Traversal {
            entry: name.clone(),
        })?;
        let meta = read_meta(entry).map_err(tar_err)?;
        let kind = entry.header().entry_type();

        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        if self.overlay_marker(&rel, &name, &meta)? {
            return Ok(());
        }

        if rel.as_os_str().is_empty() {
            // The layer root itself ("./"): only a directory may describe it.
            if kind != EntryType::Directory {
                return Err(Error::Traversal { entry: name });
            }
            return set_attrs(self.dest, &meta, true);
        }

        let full = self.parents(&rel, &name, true)?;
        match kind {
            EntryType::Directory => {
                let exists = matches!(fs::symlink_metadata(&full), Ok(m) if m.is_dir());
                if !exists {
                    self.clear(&full, &rel)?;
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&full)
                        .map_err(io_err("creating directory", &full))?;
                }
                set_attrs(&full, &meta, true)?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, &rel, &full, &meta)?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| Error::Tar {
                        source: io::Error::other(format!("symlink {name:?} has no target")),
                    })?
                    .into_owned();
                self.clear(&full, &rel)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &full)
                    .map_err(io_err("creating symlink", &full))?;
                set_attrs(&full, &meta, false)?;
                self.report.files += 1;
            }
            EntryType::Link => self.hard_link(entry, &rel, &full, &name)?,
            EntryType::Fifo => {
                self.clear(&full, &rel)?;
                nix::unistd::mkfifo(&full, Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_err("creating fifo", &full)(e.into()))?;
                set_attrs(&full, &meta, true)?;
                self.report.files += 1;
            }
            _ => {
                tracing::debug!("skipping layer entry {name:?} of type {kind:?}");
                self.report.skipped += 1;
            }
        }
        Ok(())
    }

    /// Whiteouts and opaque markers become their overlayfs form; `true` if `rel` was one.
    fn overlay_marker(&mut self, rel: &Path, name: &str, meta: &Meta) -> Result<bool, Error> {
        let Some(file_name) = rel.file_name().map(OsStr::as_bytes) else {
            return Ok(false);
        };
        if file_name == OPAQUE {
            let dir = rel.parent().unwrap_or(Path::new(""));
            let full = if dir.as_os_str().is_empty() {
                self.dest.to_path_buf()
            } else {
                let full = self.parents(dir, name, true)?;
                real_dir(&full, dir, name)?
            };
            xattr::set(&full, "trusted.overlay.opaque", b"y")
                .map_err(io_err("marking directory opaque", &full))?;
            self.report.whiteouts += 1;
            return Ok(true);
        }
        if file_name.starts_with(b".wh..wh.") {
            self.report.skipped += 1;
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
        let target = rel.with_file_name(OsStr::from_bytes(hidden));
        let full = self.parents(&target, name, true)?;
        self.clear(&full, &target)?;
        nix::sys::stat::mknod(&full, SFlag::S_IFCHR, Mode::empty(), 0)
            .map_err(|e| io_err("creating whiteout", &full)(e.into()))?;
        std::os::unix::fs::lchown(&full, Some(meta.uid), Some(meta.gid))
            .map_err(io_err("setting owner of", &full))?;
        self.report.whiteouts += 1;
        Ok(true)
    }

    /// A new file, created exclusively and without following links, never opened if it existed.
    fn regular(
        &mut self,
        entry: &mut impl Read,
        rel: &Path,
        full: &Path,
        meta: &Meta,
    ) -> Result<(), Error> {
        self.clear(full, rel)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(full)
            .map_err(io_err("creating file", full))?;
        copy_data(entry, &mut f, full)?;
        nix::unistd::fchown(
            &f,
            Some(nix::unistd::Uid::from_raw(meta.uid)),
            Some(nix::unistd::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| io_err("setting owner of", full)(e.into()))?;
        f.set_permissions(fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(io_err("setting mode of", full))?;
        set_xattrs(full, meta)?;
        self.boot.offer(rel);
        self.report.files += 1;
        Ok(())
    }

    /// A hard link to an earlier entry, which must be a non-directory reached through real
    /// directories inside `dest`.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        rel: &Path,
        full: &Path,
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
        let target_rel = normalize_entry_path(&target_raw)
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(escape)?;
        let target_full = self
            .parents(&target_rel, name, false)
            .map_err(|_| escape())?;
        match fs::symlink_metadata(&target_full) {
            Ok(m) if !m.is_dir() => {}
            _ => return Err(escape()),
        }
        if target_full == full {
            // A link to itself: nothing to do, and clearing would delete the target.
            return Ok(());
        }
        self.clear(full, rel)?;
        fs::hard_link(&target_full, full).map_err(io_err("creating hard link", full))?;
        self.report.files += 1;
        Ok(())
    }

    /// Walk `rel`'s parents under `dest`, each of which must be a real directory; missing ones
    /// are created when `create`. Returns the full path of `rel` itself (not checked).
    fn parents(&self, rel: &Path, entry: &str, create: bool) -> Result<PathBuf, Error> {
        let mut full = self.dest.to_path_buf();
        let mut so_far = PathBuf::new();
        let mut comps = rel.iter().peekable();
        while let Some(c) = comps.next() {
            full.push(c);
            if comps.peek().is_none() {
                break;
            }
            so_far.push(c);
            match fs::symlink_metadata(&full) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(Error::NotADirectory {
                        entry: entry.to_owned(),
                        parent: so_far.display().to_string(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&full)
                        .map_err(io_err("creating directory", &full))?;
                }
                Err(e) => return Err(io_err("inspecting", &full)(e).into()),
            }
        }
        Ok(full)
    }

    /// Remove whatever an earlier entry put at `full`, so nothing is ever written through it.
    fn clear(&mut self, full: &Path, rel: &Path) -> Result<(), Error> {
        self.boot.remove_under(rel);
        fsutil::remove_any(full)?;
        Ok(())
    }
}

/// `full` (= dest/`rel`) as a real directory, created if missing.
fn real_dir(full: &Path, rel: &Path, entry: &str) -> Result<PathBuf, Error> {
    match fs::symlink_metadata(full) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::NotADirectory {
                entry: entry.to_owned(),
                parent: rel.display().to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(full)
                .map_err(io_err("creating directory", full))?;
        }
        Err(e) => return Err(io_err("inspecting", full)(e).into()),
    }
    Ok(full.to_path_buf())
}

/// Owner, then mode (chown clears set-id bits), then xattrs (chown clears capabilities).
/// `chmod` is skipped for symlinks, whose mode means nothing and cannot be set without following.
fn set_attrs(full: &Path, meta: &Meta, chmod: bool) -> Result<(), Error> {
    std::os::unix::fs::lchown(full, Some(meta.uid), Some(meta.gid))
        .map_err(io_err("setting owner of", full))?;
    if chmod {
        fs::set_permissions(full, fs::Permissions::from_mode(meta.mode & 0o7777))
            .map_err(io_err("setting mode of", full))?;
    }
    set_xattrs(full, meta)
}

fn set_xattrs(full: &Path, meta: &Meta) -> Result<(), Error> {
    for (k, v) in &meta.xattrs {
        // xattr::set does not follow symlinks (lsetxattr).
        xattr::set(full, OsStr::from_bytes(k), v).map_err(io_err("setting xattr on", full))?;
    }
    Ok(())
}

fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode()?,
        uid: u32::try_from(h.uid()?).unwrap_or(u32::MAX),
        gid: u32::try_from(h.gid()?).unwrap_or(u32::MAX),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let key = ext.key_bytes();
            let num = || {
                std::str::from_utf8(ext.value_bytes())
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            };
            if key == b"uid" {
                meta.uid = num().unwrap_or(meta.uid);
            } else if key == b"gid" {
                meta.gid = num().unwrap_or(meta.gid);
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if !name.starts_with(OVERLAY_XATTR_PREFIX) && !name.is_empty() {
                    meta.xattrs
                        .push((name.to_vec(), ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(meta)
}

/// Stream an entry's data into `f`: read errors are the tar's, write errors the file's.
fn copy_data(src: &mut impl Read, f: &mut File, path: &Path) -> Result<(), Error> {
    use std::io::Write;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(Error::Tar { source }),
        };
        f.write_all(&buf[..n]).map_err(io_err("writing", path))?;
    }
}

/// Fuzz oracle: unpacking arbitrary bytes never panics and never writes outside `dest`
/// (a sibling directory stays empty). Runs in a fresh sandbox under the system temp dir.
#[cfg(any(test, feature = "unstable"))]
pub fn fuzz_check(data: &[u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    /// Removes the sandbox also when an assertion fails (seed tests keep running).
    struct Sandbox(PathBuf);
    impl Drop for Sandbox {
        fn drop(&mut self) {
            let _ = fsutil::remove_dir_all(&self.0);
        }
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let sandbox = std::env::temp_dir().join(format!(
        "imgstore-fuzz-unpack.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _guard = Sandbox(sandbox.clone());
    let dest = sandbox.join("dest");
    let outside = sandbox.join("outside");
    fs::create_dir_all(&dest).expect("creating fuzz sandbox");
    fs::create_dir_all(&outside).expect("creating fuzz sandbox");
    let _ = unpack_layer(data, &dest);
    let mut names: Vec<_> = fs::read_dir(&sandbox)
        .expect("listing fuzz sandbox")
        .map(|e| e.expect("listing fuzz sandbox").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dest", "outside"], "unpack wrote beside dest");
    assert_eq!(
        fs::read_dir(&outside).expect("listing").count(),
        0,
        "unpack wrote outside dest"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_compression() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"usr/"), Compression::None);
        assert_eq!(detect(&[]), Compression::None);
        assert_eq!(detect(&[0x28, 0xb5]), Compression::None);
    }

    #[test]
    fn normalizes_entry_paths() {
        let n = |s: &str| normalize_entry_path(s.as_bytes());
        assert_eq!(n("/etc/foo"), Some(PathBuf::from("etc/foo")));
        assert_eq!(n("./a//b/./c/"), Some(PathBuf::from("a/b/c")));
        assert_eq!(n("./"), Some(PathBuf::new()));
        assert_eq!(n("../x"), None);
        assert_eq!(n("a/../../x"), None);
        assert_eq!(n("a/.."), None);
        assert_eq!(n("a/..b"), Some(PathBuf::from("a/..b")));
    }
}
