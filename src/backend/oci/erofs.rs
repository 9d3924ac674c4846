//! Layer → EROFS blob: runs `mkfs.erofs` and `fsck.erofs` (erofs-utils) on one layer and copies
//! its boot files out. It writes only the paths its caller names (`out`, `boot_out`) and its own
//! scratch directory under `work_dir`; it never publishes into `blobs/` and never edits an index.
//!
//! With erofs-utils 1.8 or newer, `mkfs.erofs --tar=f` reads the layer directly; older versions
//! (1.5 on Debian 12) build from a directory the layer is first unpacked into
//! ([`super::unpack::unpack_layer`]). 1.7's tar mode is never used: it writes corrupt images that
//! exit 0.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::boot::{BootKind, Candidates};
use tar::EntryType;

use super::unpack::{self, normalize_entry_path, open_layer, Compression, UnpackReport};
use crate::error::{io_err, IoError};
use crate::digest::Digest;
use crate::fsutil;

/// Why converting a layer failed. Every variant names the entry, path or tool involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tar entry's path climbs out of the layer (`..`).
    #[error("layer entry {entry:?} escapes the layer root")]
    Traversal {
        /// The entry's path as written in the tar.
        entry: String,
    },
    /// A hard link points outside the layer, through a symlink, or at nothing unpacked yet.
    #[error(
        "layer entry {entry:?} is a hard link to {target:?}, which is not a file inside the layer"
    )]
    LinkEscape {
        /// The link's path as written in the tar.
        entry: String,
        /// The link target as written in the tar.
        target: String,
    },
    /// An entry would be written through a symlink or under a non-directory.
    #[error("layer entry {entry:?}: parent {parent:?} is not a real directory (symlink or file)")]
    NotADirectory {
        /// The entry's path as written in the tar.
        entry: String,
        /// The offending parent, relative to the layer root.
        parent: String,
    },
    /// A tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A tool is not installed.
    #[error("{tool} not found: {purpose} (install the {package} package)")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// The package that provides it.
        package: &'static str,
        /// What it is needed for.
        purpose: &'static str,
    },
    /// erofs-utils is installed but its version could not be read.
    #[error("cannot tell the erofs-utils version from mkfs.erofs output: {output:?}")]
    ToolVersion {
        /// What mkfs.erofs printed.
        output: String,
    },
    /// `fsck.erofs` rejected the image just built.
    #[error("fsck.erofs rejected {}: {stderr}", path.display())]
    Fsck {
        /// The image.
        path: PathBuf,
        /// What fsck printed on stderr.
        stderr: String,
    },
    /// An I/O error, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The layer stream is not a valid (compressed) tar.
    #[error("reading layer tar: {source}")]
    Tar {
        /// The cause (the tar crate reports through `io::Error`).
        #[source]
        source: io::Error,
    },
}

const PACKAGE: &str = "erofs-utils";
const PURPOSE: &str = "converting OCI layers to EROFS needs erofs-utils";

/// The installed erofs-utils.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tools {
    /// `(major, minor)` of `mkfs.erofs`.
    pub version: (u32, u32),
    /// Whether `mkfs.erofs --tar=f` is trusted (1.8 or newer).
    pub supports_tar: bool,
}

/// Find `mkfs.erofs` and read its version. 1.8+ answers `--version`; older versions only print
/// their banner on a real run, so 1.5 gets one that fails at once on a source that cannot exist.
pub fn detect_tools() -> Result<Tools, Error> {
    static CACHE: OnceLock<Tools> = OnceLock::new();
    if let Some(t) = CACHE.get() {
        return Ok(*t);
    }
    let mut text = String::new();
    for args in [
        &["--version"][..],
        &[
            "/proc/imgstore-version-probe/out.erofs",
            "/proc/imgstore-version-probe/missing-dir",
        ][..],
    ] {
        let out = run_raw("mkfs.erofs", args)?;
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        if let Some(version) = parse_version(&text) {
            let tools = Tools {
                version,
                supports_tar: version >= (1, 8),
            };
            return Ok(*CACHE.get_or_init(|| tools));
        }
    }
    Err(Error::ToolVersion { output: text })
}

/// The first `X.Y` after a `mkfs.erofs` token: "mkfs.erofs 1.5", "mkfs.erofs (erofs-utils) 1.8.2".
fn parse_version(text: &str) -> Option<(u32, u32)> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("mkfs.erofs"))
        .flat_map(str::split_whitespace)
        .find_map(|word| {
            let mut parts = word.split(['.', '-']);
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some((major, minor))
        })
}

fn run_raw(tool: &'static str, args: &[&str]) -> Result<std::process::Output, Error> {
    run_cmd(tool, Command::new(tool).args(args))
}

fn run_cmd(tool: &'static str, cmd: &mut Command) -> Result<std::process::Output, Error> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::ToolMissing {
                tool,
                package: PACKAGE,
                purpose: PURPOSE,
            },
            _ => Error::Io(IoError::new("running", PathBuf::from(tool), source)),
        })
}

fn check(tool: &'static str, out: &std::process::Output) -> Result<(), Error> {
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Tool {
            tool,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// The filesystem UUID of a layer's image: its digest's first 16 bytes, so the same layer always
/// gives the same blob.
#[must_use]
pub fn uuid_for(layer: &Digest) -> String {
    let hex = layer.hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Flags that make the image a function of the layer alone: every timestamp 0, UUID from the
/// digest. Data stays uncompressed (guests read it straight from the page cache).
fn repro_args(layer: &Digest) -> Vec<String> {
    vec![
        "--quiet".into(),
        "-T0".into(),
        format!("-U{}", uuid_for(layer)),
    ]
}

/// Build an EROFS image of `dir` at `out`, reproducibly (see [`uuid_for`]; all timestamps 0),
/// keeping owners, modes, symlinks, hard links, device nodes and xattrs; then `fsck.erofs` it.
pub fn build_from_dir(dir: &Path, out: &Path, layer: &Digest) -> Result<(), Error> {
    let mut cmd = Command::new("mkfs.erofs");
    cmd.args(repro_args(layer)).arg(out).arg(dir);
    check("mkfs.erofs", &run_cmd("mkfs.erofs", &mut cmd)?)?;
    fsck(out)
}

/// Check an image with `fsck.erofs`.
pub fn fsck(image: &Path) -> Result<(), Error> {
    let out = run_cmd("fsck.erofs", Command::new("fsck.erofs").arg(image))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stderr = if stderr.is_empty() {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        } else {
            stderr
        };
        Err(Error::Fsck {
            path: image.to_path_buf(),
            stderr,
        })
    }
}

/// Removes a path when dropped unless disarmed: the scratch dir always, outputs on failure.
struct Cleanup {
    path: PathBuf,
    armed: bool,
}

impl Cleanup {
    fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fsutil::remove_any(&self.path) {
                tracing::warn!("cleaning up after layer conversion: {e}");
            }
        }
    }
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

/// Convert one layer file (plain, gzip or zstd tar) to an EROFS image at `out` and copy its boot
/// files to `boot_out/vmlinuz` and `boot_out/initrd.img` (`boot_out` is created if missing).
/// The scratch directory under `work_dir` is always removed; on failure `out` and any boot file
/// written are removed too.
pub fn convert_layer(
    layer_file: &Path,
    layer: &Digest,
    work_dir: &Path,
    out: &Path,
    boot_out: &Path,
) -> Result<UnpackReport, Error> {
    let tools = detect_tools()?;
    let scratch = work_dir.join(format!(
        "{}.{}.{}.unpack",
        layer.hex(),
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(io_err("creating unpack directory", &scratch))?;
    let _scratch_guard = Cleanup::new(scratch.clone());
    let mut out_guard = Cleanup::new(out.to_path_buf());

    let (report, boot_sources) = if tools.supports_tar {
        convert_with_tar_mode(layer_file, layer, &scratch, out)?
    } else {
        let root = scratch.join("root");
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .map_err(io_err("creating unpack directory", &root))?;
        let (_, mut reader) = open_layer(layer_file)?;
        let report = unpack::unpack_layer(&mut reader, &root)?;
        reader.finish()?;
        build_from_dir(&root, out, layer)?;
        let sources = [
            (
                BootKind::Kernel,
                report.boot.kernel.as_ref().map(|p| root.join(p)),
            ),
            (
                BootKind::Initrd,
                report.boot.initrd.as_ref().map(|p| root.join(p)),
            ),
        ];
        (report, sources)
    };

    let mut boot_guards = Vec::new();
    for (kind, source) in boot_sources {
        let Some(source) = source else { continue };
        let dest = boot_out.join(match kind {
            BootKind::Kernel => "vmlinuz",
            BootKind::Initrd => "initrd.img",
        });
        fsutil::create_dir_all(boot_out)?;
        boot_guards.push(Cleanup::new(dest.clone()));
        copy_boot_file(&source, &dest)?;
    }
    if !boot_guards.is_empty() {
        fsutil::fsync_dir(boot_out)?;
    }
    for g in &mut boot_guards {
        g.armed = false;
    }
    out_guard.armed = false;
    Ok(report)
}

/// Copy a boot file out of the scratch tree. The source was checked to be a regular file when it
/// was unpacked; `O_NOFOLLOW` keeps a later-replaced path from leading elsewhere.
fn copy_boot_file(source: &Path, dest: &Path) -> Result<(), Error> {
    let mut input = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(source)
        .map_err(io_err("opening boot file", source))?;
    let meta = input
        .metadata()
        .map_err(io_err("inspecting boot file", source))?;
    if !meta.is_file() {
        return Err(Error::Io(IoError::new("copying boot file (not a regular file)", source, io::Error::from(io::ErrorKind::InvalidInput))));
    }
    let mut output = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io_err("creating boot file", dest))?;
    io::copy(&mut input, &mut output).map_err(io_err("copying boot file to", dest))?;
    output.sync_all().map_err(io_err("syncing", dest))?;
    Ok(())
}

/// Where each boot file of a converted layer can be copied from.
type BootSources = [(BootKind, Option<PathBuf>); 2];

/// erofs-utils 1.8+: let `mkfs.erofs --tar=f --aufs` read the (decompressed) tar, while one pass
/// over the stream saves boot-file candidates into `scratch`.
fn convert_with_tar_mode(
    layer_file: &Path,
    layer: &Digest,
    scratch: &Path,
    out: &Path,
) -> Result<(UnpackReport, BootSources), Error> {
    let (compression, reader) = open_layer(layer_file)?;
    let tar_path = if compression == Compression::None {
        layer_file.to_path_buf()
    } else {
        scratch.join("layer.tar")
    };
    let copy = if compression == Compression::None {
        None
    } else {
        Some(File::create(&tar_path).map_err(io_err("creating decompressed layer", &tar_path))?)
    };
    let mut tee = Tee {
        inner: reader,
        copy,
        path: &tar_path,
        write_error: None,
    };
    let scanned = scan_boot_files(&mut tee, scratch).and_then(|s| drain(&mut tee).map(|()| s));
    // A failed write to the copy surfaces to the tar reader as a bare error; report the cause.
    if let Some(e) = tee.write_error.take() {
        return Err(e);
    }
    let (report, saved) = scanned?;
    let Tee { inner, .. } = tee;
    inner.finish()?;

    let mut cmd = Command::new("mkfs.erofs");
    cmd.arg("--tar=f")
        .arg("--aufs")
        .args(repro_args(layer))
        .arg(out)
        .arg(&tar_path);
    check("mkfs.erofs", &run_cmd("mkfs.erofs", &mut cmd)?)?;
    fsck(out)?;
    let pick = |p: &Option<PathBuf>| {
        p.as_ref()
            .and_then(|p| saved.iter().rev().find(|(q, _)| q == p))
            .map(|(_, s)| s.clone())
    };
    let sources = [
        (BootKind::Kernel, pick(&report.boot.kernel)),
        (BootKind::Initrd, pick(&report.boot.initrd)),
    ];
    Ok((report, sources))
}

fn drain(r: &mut impl Read) -> Result<(), Error> {
    io::copy(r, &mut io::sink())
        .map(drop)
        .map_err(|source| Error::Tar { source })
}

/// Reads through, copying every byte read to a file (the decompressed tar for mkfs.erofs).
struct Tee<'a, R> {
    inner: R,
    copy: Option<File>,
    path: &'a Path,
    write_error: Option<Error>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(f) = &mut self.copy {
            if let Err(e) = f.write_all(&buf[..n]) {
                self.write_error = Some(io_err("writing decompressed layer", self.path)(e).into());
                return Err(io::Error::other("writing decompressed layer failed"));
            }
        }
        Ok(n)
    }
}

/// Stream a tar only to find its boot files, saving each candidate's bytes under `scratch`.
/// Returns the report (counted as [`unpack::unpack_layer`] counts) and (layer path, saved
/// copy) pairs.
fn scan_boot_files(
    reader: &mut impl Read,
    scratch: &Path,
) -> Result<(UnpackReport, Vec<(PathBuf, PathBuf)>), Error> {
    let tar_err = |source| Error::Tar { source };
    let mut archive = tar::Archive::new(reader);
    let mut candidates = Candidates::default();
    let mut saved = Vec::new();
    let mut report = UnpackReport::default();
    for entry in archive.entries().map_err(tar_err)? {
        let mut entry = entry.map_err(tar_err)?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = normalize_entry_path(&raw) else {
            return Err(Error::Traversal {
                entry: String::from_utf8_lossy(&raw).into_owned(),
            });
        };
        let whiteout = rel
            .file_name()
            .and_then(|n| n.as_bytes().strip_prefix(b".wh."))
            .map(<[u8]>::to_vec);
        if let Some(hidden) = whiteout {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(Error::Traversal {
                    entry: String::from_utf8_lossy(&raw).into_owned(),
                });
            }
            // Counted as unpack_layer counts them. `.wh..wh..opq` hides lower layers only; a
            // `.wh.<name>` also drops this layer's earlier <name>, as the unpacked tree would.
            if hidden == b".wh..opq" {
                report.whiteouts += 1;
            } else if hidden.starts_with(b".wh.") {
                report.skipped += 1;
            } else {
                candidates.remove_under(&rel.with_file_name(std::ffi::OsStr::from_bytes(&hidden)));
                report.whiteouts += 1;
            }
            continue;
        }
        candidates.remove_under(&rel);
        let kind = entry.header().entry_type();
        let regular = matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        );
        match kind {
            EntryType::Directory | EntryType::XGlobalHeader => {}
            EntryType::Symlink | EntryType::Link | EntryType::Fifo => report.files += 1,
            _ if !regular => report.skipped += 1,
            _ => {}
        }
        if regular {
            report.files += 1;
            if candidates.offer(&rel).is_some() {
                let copy = scratch.join(format!("boot.{}", saved.len()));
                let mut f = File::create(&copy).map_err(io_err("saving boot file", &copy))?;
                io::copy(&mut entry, &mut f).map_err(tar_err)?;
                saved.push((rel, copy));
            }
        }
    }
    report.boot = candidates.finish();
    Ok((report, saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("mkfs.erofs 1.5\n"), Some((1, 5)));
        assert_eq!(
            parse_version("<E> erofs: failed\nmkfs.erofs 1.5\n"),
            Some((1, 5))
        );
        assert_eq!(
            parse_version("mkfs.erofs (erofs-utils) 1.8.2\n"),
            Some((1, 8))
        );
        assert_eq!(parse_version("mkfs.erofs 1.7.1-g4ba2\n"), Some((1, 7)));
        assert_eq!(
            parse_version("mkfs.erofs: unrecognized option '--version'\nusage: x\n"),
            None
        );
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The tar-mode path (erofs-utils 1.8+, not installed here) finds boot files by streaming:
    /// a later entry replaces an earlier one, a whiteout removes it, and the copy is exact.
    #[test]
    fn tar_mode_scan_saves_boot_files_and_copies_stream() {
        let td = tempfile::tempdir().unwrap();
        let tar = tar_of(&[
            ("boot/vmlinuz-6.1", b"first"),
            ("boot/initrd.img-6.1", b"initrd"),
            ("boot/vmlinuz-6.1", b"second"),
            ("boot/.wh.initrd.img-6.1", b""),
            ("etc/hostname", b"box"),
        ]);
        let copy_path = td.path().join("copy.tar");
        let mut tee = Tee {
            inner: &tar[..],
            copy: Some(File::create(&copy_path).unwrap()),
            path: &copy_path,
            write_error: None,
        };
        let (report, saved) = scan_boot_files(&mut tee, td.path()).unwrap();
        drain(&mut tee).unwrap();
        drop(tee);
        assert_eq!(fs::read(&copy_path).unwrap(), tar);
        assert_eq!(report.files, 4);
        assert_eq!(report.whiteouts, 1);
        assert_eq!(report.boot.initrd, None);
        let kernel = report.boot.kernel.unwrap();
        let (_, copy) = saved.iter().rev().find(|(p, _)| *p == kernel).unwrap();
        assert_eq!(fs::read(copy).unwrap(), b"second");
    }

    #[test]
    fn uuid_is_digest_prefix() {
        let d = Digest::sha256_of(b"");
        assert_eq!(uuid_for(&d), "e3b0c442-98fc-1c14-9afb-f4c8996fb924");
    }
}
