//! Layer blob → EROFS image + boot files, in process and in one pass: the (gzip, zstd or plain)
//! layer stream is decompressed on its own thread and fed to the EROFS writer (`crate::erofs`),
//! which streams file data to the image; the kernel and initrd are then copied out of the image
//! just written (never out of the input, which is read exactly once). No temp tree, no root, no
//! external tool. It writes only the paths its caller names and never touches the store.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

pub use super::boot::BootFiles;
use super::boot::{classify, Candidates};
use super::pipe::{pipe, PipeWriter};
use crate::digest::Digest;
use crate::erofs;
use crate::error::{io_err, IoError};

/// Why converting a layer failed. Entry errors name the entry as written in the tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tar is hostile or malformed (escapes, writes through symlinks, escaping hard links,
    /// truncated or corrupt streams), or the image could not be written.
    #[error(transparent)]
    Erofs(#[from] erofs::Error),
    /// The layer could not be read, or its compressed stream is corrupt after the tar's end.
    #[error("reading layer: {source}")]
    Read {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file could not be created or written, with what was being done and where.
    #[error(transparent)]
    Io(#[from] IoError),
}

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

/// What converting one layer produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerReport {
    /// Non-directory entries (files, hard links, symlinks, devices, FIFOs).
    pub files: u64,
    /// Directory entries.
    pub dirs: u64,
    /// Whiteouts and opaque markers.
    pub whiteouts: u64,
    /// Entries skipped (aufs bookkeeping, entry types a filesystem cannot hold).
    pub skipped: u64,
    /// The layer's boot files, as paths inside the layer.
    pub boot: BootFiles,
    /// Image size in 4 KiB blocks.
    pub blocks: u64,
}

/// File names of the boot files in a layer's boot directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// See [`KERNEL_FILE`].
pub const INITRD_FILE: &str = "initrd.img";
/// File name of the layer's view for overlay merges ([`erofs::View`]) in its boot directory.
pub const VIEW_FILE: &str = "layer.view";

const BUF: usize = 256 << 10;

/// Removes the paths it holds when dropped, unless disarmed.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = fs::remove_file(p) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("cleaning up {} after a failed layer: {e}", p.display());
                }
            }
        }
    }
}

fn is_boot_path(p: &[u8]) -> bool {
    classify(Path::new(OsStr::from_bytes(p))).is_some()
}

/// Convert the layer blob `reader` yields (gzip, zstd or plain tar; read to its end exactly
/// once) into an EROFS image at `image` (created; must not exist), copy its boot files to
/// `boot_dir/vmlinuz` and `boot_dir/initrd.img` and write its view for overlay merges to
/// `boot_dir/layer.view` (`boot_dir` is created). On failure, whatever this wrote is removed.
///
/// # Errors
/// Hostile or malformed tars and corrupt streams ([`Error::Erofs`], [`Error::Read`]), I/O.
pub fn convert<R: Read + Send>(
    mut reader: R,
    opts: &erofs::Options,
    image: &Path,
    boot_dir: &Path,
) -> Result<LayerReport, Error> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(Error::Read { source }),
        }
    }
    let compression = detect(&head[..got]);
    let src = io::Cursor::new(head[..got].to_vec()).chain(reader);
    let mut cleanup = Cleanup(vec![image.to_path_buf()]);
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(image)
        .map_err(io_err("creating layer image", image))?;
    let opts = erofs::Options {
        extents_of: Some(is_boot_path),
        view: true,
        ..opts.clone()
    };
    let mut sink = Writeback::new(&out);
    let report = if compression == Compression::None {
        let mut src = BufReader::with_capacity(BUF, src);
        let report = erofs::write(&mut src, &mut sink, &opts)?;
        drain(&mut src)?;
        report
    } else {
        // Decompression on its own thread, the writer on this one.
        std::thread::scope(|s| {
            let (mut tx, mut rx) = pipe();
            let decoder = s.spawn(move || {
                if let Err(e) = decompress(src, compression, &mut tx) {
                    tx.fail(e);
                }
            });
            let written = erofs::write(&mut rx, &mut sink, &opts).map_err(Error::from);
            let drained = written.and_then(|r| drain(&mut rx).map(|()| r));
            drop(rx);
            if decoder.join().is_err() {
                tracing::error!("the layer decompressor panicked");
            }
            drained
        })?
    };
    let boot = copy_boot_files(&report, &out, boot_dir, &mut cleanup)?;
    if let Some(view) = &report.view {
        fs::create_dir_all(boot_dir).map_err(io_err("creating boot directory", boot_dir))?;
        let dest = boot_dir.join(VIEW_FILE);
        cleanup.0.push(dest.clone());
        write_new(&dest, &view.encode())?;
    }
    cleanup.0.clear();
    Ok(LayerReport {
        files: report.files,
        dirs: report.dirs,
        whiteouts: report.whiteouts,
        skipped: report.skipped_entries,
        boot,
        blocks: report.blocks,
    })
}

/// [`convert`] of a layer file, with the image's UUID from `layer` (tests, benches, tools).
///
/// # Errors
/// As [`convert`]; the file cannot be opened.
#[cfg(feature = "unstable")]
pub fn convert_layer(
    layer_file: &Path,
    layer: &Digest,
    image: &Path,
    boot_dir: &Path,
) -> Result<LayerReport, Error> {
    let f = File::open(layer_file).map_err(io_err("opening layer", layer_file))?;
    convert(f, &erofs::Options::for_layer(layer), image, boot_dir)
}

/// Stamp `layer`'s UUID into an image [`convert`] wrote (when the digest was known only after
/// the stream was read, as for an imported file).
///
/// # Errors
/// I/O on the image.
pub fn stamp_uuid(image: &Path, layer: &Digest) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(image)
        .map_err(io_err("opening layer image", image))?;
    erofs::set_uuid(&mut f, erofs::Options::for_layer(layer).uuid)?;
    Ok(())
}

/// The image file, starting writeback of every 16 MiB written (`sync_file_range`, not waiting),
/// so the fsync before publishing finds little left to write.
struct Writeback<'a> {
    file: &'a File,
    pos: u64,
    unsynced: u64,
}

const WRITEBACK_EVERY: u64 = 16 << 20;

impl<'a> Writeback<'a> {
    fn new(file: &'a File) -> Self {
        Self {
            file,
            pos: 0,
            unsynced: 0,
        }
    }
}

impl Write for Writeback<'_> {
    #[allow(unsafe_code)]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&mut &*self.file).write(buf)?;
        self.pos += n as u64;
        if self.pos - self.unsynced >= WRITEBACK_EVERY {
            use std::os::fd::AsRawFd;
            let (from, len) = (self.unsynced, self.pos - self.unsynced);
            // SAFETY: `sync_file_range` takes a descriptor this struct borrows open and two
            // integers; it touches no memory of this process (nix 0.30 has no wrapper). A
            // failure only means the fsync before publishing does all the work.
            let _ = unsafe {
                nix::libc::sync_file_range(
                    self.file.as_raw_fd(),
                    i64::try_from(from).unwrap_or(i64::MAX),
                    i64::try_from(len).unwrap_or(i64::MAX),
                    nix::libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.unsynced = self.pos;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for Writeback<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        self.pos = (&mut &*self.file).seek(to)?;
        self.unsynced = self.pos;
        Ok(self.pos)
    }
}

/// Decode `src` into `to`, in large messages read straight into the pipe's buffers.
fn decompress(src: impl Read, c: Compression, to: &mut PipeWriter) -> io::Result<()> {
    let src = BufReader::with_capacity(BUF, src);
    let mut dec: Box<dyn Read> = match c {
        Compression::Gzip => Box::new(MultiGzDecoder::new(src)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(src)?),
        Compression::None => Box::new(src),
    };
    to.send_from(&mut dec, BUF)
}

/// Read the rest of the stream after the tar's end (padding), so a corrupt compressed tail or
/// a failed read is an error, not silence.
fn drain(r: &mut impl Read) -> Result<(), Error> {
    io::copy(r, &mut io::sink())
        .map(drop)
        .map_err(|source| Error::Read { source })
}

/// Create `dest` (must not exist) holding `bytes`.
fn write_new(dest: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dest)
        .map_err(io_err("creating", dest))?;
    f.write_all(bytes).map_err(io_err("writing", dest))?;
    Ok(())
}

/// Pick the layer's boot files from the image's final tree and copy them out of the image.
fn copy_boot_files(
    report: &erofs::Report,
    image: &File,
    boot_dir: &Path,
    cleanup: &mut Cleanup,
) -> Result<BootFiles, Error> {
    let mut candidates = Candidates::default();
    for path in report.extents.keys() {
        candidates.offer(Path::new(OsStr::from_bytes(path)));
    }
    let boot = candidates.finish();
    for (found, name) in [(&boot.kernel, KERNEL_FILE), (&boot.initrd, INITRD_FILE)] {
        let Some(extents) = found
            .as_ref()
            .and_then(|p| report.extents.get(p.as_os_str().as_bytes()))
        else {
            continue;
        };
        fs::create_dir_all(boot_dir).map_err(io_err("creating boot directory", boot_dir))?;
        let dest = boot_dir.join(name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&dest)
            .map_err(io_err("creating boot file", &dest))?;
        cleanup.0.push(dest.clone());
        let mut w = BufWriter::with_capacity(BUF, f);
        erofs::copy_file(image, extents, &mut w).map_err(io_err("copying boot file to", &dest))?;
        w.into_inner()
            .map_err(|e| io_err("writing boot file", &dest)(e.into_error()))?;
    }
    Ok(boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_paths_are_selected() {
        assert!(is_boot_path(b"boot/vmlinuz-6.1"));
        assert!(is_boot_path(b"initrd.img"));
        assert!(!is_boot_path(b"usr/boot/vmlinuz"));
        assert!(!is_boot_path(b"boot/vmlinuz.old"));
    }

    #[test]
    fn detects_compression() {
        assert_eq!(detect(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(detect(b"etc/"), Compression::None);
    }
}
