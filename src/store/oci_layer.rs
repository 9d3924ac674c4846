//! One OCI layer into the store's temp dir, ready to publish: reused if the store has it, else
//! converted by one streaming pass (`backend::oci::layer`) from wherever its bytes come from:
//!
//! - a registry: download thread → pipe → decompress thread → pipe → EROFS writer thread; the
//!   download hashes as it goes and a retry restarts the converter; the converted image is
//!   used only once the compressed digest and size are verified;
//! - an OCI layout's blob: read once, hashed while the writer consumes it, checked at its end;
//! - a file given to `import`: converted before any lock (its digest, the layer's name, is
//!   known only at the end of the stream), then handed over as [`LayerFrom::Converted`].
//!
//! Nothing here publishes: every output lives in a held temp dir until `store_oci` does.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::backend::oci::layer::{self, LayerReport};
use crate::backend::oci::native;
use crate::backend::oci::pipe::pipe;
use crate::backend::oci::registry::{Client, Descriptor, Hasher};
use crate::digest::{Digest, Sums};
use crate::erofs;
use crate::fsutil::{TempDir, TempFile};
use crate::ingest::{self, Expected, Staged, StagedDir};
use crate::input::Input;
use crate::verify;

use super::publish::Reusable;
use super::{Error, Kind, Store};

/// Where one layer's compressed bytes come from.
pub(super) enum LayerFrom<'a> {
    Registry {
        client: &'a Client,
        host: &'a str,
        repository: &'a str,
        desc: Descriptor,
    },
    /// A user's layer file, already converted (before any lock: its digest was unknown until
    /// read). Taken when the layer is not reused; kept until then (a reused blob a gc removes
    /// before the commit is replaced by this one).
    Converted {
        /// The file as the user named it.
        name: String,
        /// The conversion.
        done: Mutex<Option<Box<Converted>>>,
    },
    /// A blob of an OCI layout: read only if the store lacks the layer, and checked against
    /// the manifest's digest and size while it is read.
    LayoutBlob { path: PathBuf, size: u64 },
}

impl LayerFrom<'_> {
    /// The layer's source for messages.
    pub(super) fn label(&self, digest: &Digest) -> String {
        match self {
            LayerFrom::Registry { .. } => format!("layer {digest}"),
            LayerFrom::Converted { name, .. } => name.clone(),
            LayerFrom::LayoutBlob { path, .. } => path.display().to_string(),
        }
    }
}

pub(super) struct Layer<'a> {
    pub(super) digest: Digest,
    pub(super) from: LayerFrom<'a>,
}

/// What one stored layer provides.
#[derive(Clone, Copy)]
pub(super) struct Stored {
    pub(super) sums: Sums,
    pub(super) kernel: Option<Sums>,
    pub(super) initrd: Option<Sums>,
}

/// A layer ready to publish: already in the store (`reuse`), or converted into a held temp dir.
pub(super) struct Prepared {
    pub(super) stored: Stored,
    pub(super) staged: Option<Converted>,
    pub(super) reuse: Option<Reusable>,
}

/// A converted layer, staged by ingest in its held temp dir (dropping it removes everything).
pub(super) struct Converted {
    pub(super) blob: Staged,
    pub(super) boot: StagedDir,
    stored: Stored,
    _work: TempDir,
}

/// Hashes what is read through it with the layer digest's algorithm and counts it.
struct Hashing<'a, R> {
    inner: R,
    hasher: Option<Hasher>,
    size: u64,
    progress: &'a (dyn Fn(u64) + Sync),
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.size += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

impl<R: Read> Hashing<'_, R> {
    /// Read to the end (after a failed conversion, so a damaged blob is reported as such).
    fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = self
            .hasher
            .map(Hasher::finish)
            .ok_or_else(|| io::Error::other("unsupported digest algorithm"))?;
        Ok((digest, self.size))
    }
}

fn sha256_hasher() -> Hasher {
    Hasher::new(crate::digest::Algorithm::Sha256).expect("sha256 is supported")
}

impl Store {
    /// Layer (and chain image) sums recorded by any oci entry, to reuse stored blobs without
    /// re-hashing them.
    pub(super) fn recorded_layer_sums(&self) -> Result<HashMap<Digest, Sums>, Error> {
        let w = self.on_wait();
        let idx = self.oci_db().read(self.opts.lock_wait, &w)?;
        Ok(idx
            .entries()
            .flat_map(|(_, e)| e.layers.iter())
            .flat_map(|l| {
                let chain = l.chain.map(|c| (c.digest, c.blob));
                l.blob.map(|s| (l.digest, s)).into_iter().chain(chain)
            })
            .collect())
    }

    /// Convert a user's layer file (read once, to its end) before any lock: its sha256 names it.
    /// Returns the digest, the size and the conversion.
    pub(super) fn convert_input(
        &self,
        input: &mut Input,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(Digest, u64, Converted), Error> {
        let b = self.layout.backend(Kind::Oci);
        let work = TempDir::create_in(&b.temp_dir(), "layer")?;
        let (image, boot) = outputs(&work);
        let label = input.name().to_owned();
        let mut reader = Hashing {
            inner: input,
            hasher: Some(sha256_hasher()),
            size: 0,
            progress,
        };
        // The UUID comes from the digest, known at the end: stamped after the write.
        layer::convert(&mut reader, &erofs::Options::default(), &image, &boot)
            .map_err(|source| layer_error(&label, source))?;
        let (digest, size) = reader
            .finish()
            .map_err(|source| layer_error(&label, layer::Error::Read { source }))?;
        layer::stamp_uuid(&image, &digest).map_err(|source| layer_error(&label, source))?;
        let converted = self.stage_converted(work, &digest)?;
        Ok((digest, size, converted))
    }

    /// Reuse the stored layer, or convert it into a held temp dir.
    pub(super) fn store_layer(
        &self,
        layer: &Layer<'_>,
        recorded: &HashMap<Digest, Sums>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Prepared, Error> {
        let b = self.layout.backend(Kind::Oci);
        let file_sums = |p: PathBuf| -> Result<Option<Sums>, Error> {
            if p.exists() {
                Ok(Some(verify::sums_of_file(&p)?))
            } else {
                Ok(None)
            }
        };
        if let Some(reuse) = self.usable_blob(
            Kind::Oci,
            &layer.digest,
            recorded.get(&layer.digest).copied(),
        )? {
            return Ok(Prepared {
                stored: Stored {
                    sums: reuse.sums,
                    kernel: file_sums(b.kernel_path(&layer.digest))?,
                    initrd: file_sums(b.initrd_path(&layer.digest))?,
                },
                staged: None,
                reuse: Some(reuse),
            });
        }
        let label = layer.from.label(&layer.digest);
        let opts = erofs::Options::for_layer(&layer.digest);
        let converted = match &layer.from {
            LayerFrom::Converted { done, .. } => *done.lock().take().ok_or_else(|| {
                layer_error(
                    &label,
                    layer::Error::Read {
                        source: io::Error::other("the converted layer was already used"),
                    },
                )
            })?,
            LayerFrom::LayoutBlob { path, size } => {
                let work = TempDir::create_in(&b.temp_dir(), "layer")?;
                let (image, boot) = outputs(&work);
                let mut reader = Hashing {
                    inner: Input::open(path)?,
                    hasher: Hasher::new(layer.digest.algorithm()),
                    size: 0,
                    progress,
                };
                let converted = layer::convert(&mut reader, &opts, &image, &boot);
                let got = reader
                    .finish()
                    .map_err(|source| layer_error(&label, layer::Error::Read { source }))?;
                check_blob(&label, (layer.digest, *size), got)?;
                converted.map_err(|source| layer_error(&label, source))?;
                self.stage_converted(work, &layer.digest)?
            }
            LayerFrom::Registry {
                client,
                host,
                repository,
                desc,
            } if desc.media_type == native::MEDIA_TYPE => {
                let work = self.fetch_native(layer, client, (host, repository), desc, progress)?;
                self.stage_converted(work, &layer.digest)?
            }
            LayerFrom::Registry {
                client,
                host,
                repository,
                desc,
            } => {
                let work =
                    self.fetch_and_convert(client, host, repository, desc, &opts, progress)?;
                self.stage_converted(work, &layer.digest)?
            }
        };
        Ok(Prepared {
            stored: converted.stored,
            staged: Some(converted),
            reuse: None,
        })
    }

    /// The pull pipeline: the download (this thread) streams into a converter thread, which
    /// decompresses on a third. A retried download restarts the converter from scratch. The
    /// result is used only after `fetch_blob` verified the compressed digest and size.
    fn fetch_and_convert(
        &self,
        client: &Client,
        host: &str,
        repository: &str,
        desc: &Descriptor,
        opts: &erofs::Options,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<TempDir, Error> {
        let b = self.layout.backend(Kind::Oci);
        let label = format!("layer {}", desc.digest);
        let last = AtomicU64::new(0);
        std::thread::scope(|s| {
            let mut attempt = None;
            let fetched = client.fetch_blob(
                host,
                repository,
                desc,
                || {
                    // The previous attempt's sink is gone: its converter saw the end and stops.
                    if let Some((h, work)) = attempt.take() {
                        let _ = join(h);
                        drop::<TempDir>(work);
                    }
                    last.store(0, Ordering::Relaxed);
                    let work = TempDir::create_in(&b.temp_dir(), "layer")
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    let (image, boot) = outputs(&work);
                    let (tx, mut rx) = pipe();
                    let h = s.spawn(move || {
                        let r = layer::convert(&mut rx, opts, &image, &boot);
                        // Let the download finish (and its digest be checked) even after a
                        // failure: a damaged blob is then reported as damaged.
                        rx.drain();
                        r
                    });
                    attempt = Some((h, work));
                    Ok(tx)
                },
                |n| {
                    let prev = last.swap(n, Ordering::Relaxed);
                    progress(n.saturating_sub(prev));
                },
            );
            let (h, work) = match (fetched, attempt.take()) {
                (Ok(tx), Some(a)) => {
                    drop(tx);
                    a
                }
                (Err(e), a) => {
                    if let Some((h, _work)) = a {
                        let _ = join(h);
                    }
                    return Err(Error::from(e));
                }
                (Ok(_), None) => unreachable!("a sink was opened for the bytes fetched"),
            };
            join(h).map_err(|source| layer_error(&label, source))?;
            Ok(work)
        })
    }

    /// An EROFS-native layer: downloaded whole (digest-verified), checked, its boot files read
    /// out, and kept as it is (`adopt_native`).
    fn fetch_native(
        &self,
        layer: &Layer<'_>,
        client: &Client,
        (host, repository): (&str, &str),
        desc: &Descriptor,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<TempDir, Error> {
        let b = self.layout.backend(Kind::Oci);
        let work = TempDir::create_in(&b.temp_dir(), "layer")?;
        let last = AtomicU64::new(0);
        let fetched = client.fetch_blob(
            host,
            repository,
            desc,
            || {
                last.store(0, Ordering::Relaxed);
                TempFile::create_in(work.path(), "blob")
                    .map_err(|e| io::Error::other(e.to_string()))
            },
            |n| progress(n.saturating_sub(last.swap(n, Ordering::Relaxed))),
        )?;
        let (image, boot) = outputs(&work);
        adopt_native(layer, fetched.path(), &image, &boot)?;
        Ok(work)
    }

    /// Hash the image and boot files of a finished conversion (ingest reads them back).
    fn stage_converted(&self, work: TempDir, digest: &Digest) -> Result<Converted, Error> {
        let b = self.layout.backend(Kind::Oci);
        let (image, boot) = outputs(&work);
        let what = format!("layer {digest} (EROFS)");
        let blob = ingest::stage_filled(
            TempFile::adopt(image)?,
            &what,
            &Expected::default(),
            &|_| {},
        )?;
        let boot = ingest::stage_dir(&boot)?;
        // The boot dir is named like the published one: the same file names inside.
        let in_boot = |published: PathBuf| {
            published
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| boot.files.get(n))
                .copied()
        };
        let stored = Stored {
            sums: blob.sums,
            kernel: in_boot(b.kernel_path(digest)),
            initrd: in_boot(b.initrd_path(digest)),
        };
        Ok(Converted {
            blob,
            boot,
            stored,
            _work: work,
        })
    }
}

/// The image and boot dir of a conversion in `work`.
fn outputs(work: &TempDir) -> (PathBuf, PathBuf) {
    (work.path().join("layer.erofs"), work.path().join("boot"))
}

fn join(
    h: std::thread::ScopedJoinHandle<'_, Result<LayerReport, layer::Error>>,
) -> Result<LayerReport, layer::Error> {
    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn layer_error(label: &str, source: layer::Error) -> Error {
    Error::LayerFrom {
        source_name: label.to_owned(),
        source,
    }
}

/// A layout blob must be what its manifest says.
fn check_blob(label: &str, want: (Digest, u64), got: (Digest, u64)) -> Result<(), Error> {
    if want.1 != got.1 {
        return Err(ingest::Error::SizeMismatch {
            expected: want.1,
            actual: got.1,
            source_name: label.to_owned(),
        }
        .into());
    }
    if want.0 != got.0 {
        return Err(ingest::Error::Mismatch {
            expected: want.0,
            actual: got.0,
            source_name: label.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// The pull path's one step for EROFS-native layers (`application/vnd.erofs.layer.v1`): check
/// the fetched (digest-verified) layer and read its boot files out, then store it as it is
/// instead of converting it (docs/design.md, "EROFS-native layers").
///
/// If `layer` is EROFS-native, check `src` (its fetched bytes), write its boot files under
/// `boot`, move it to `blob` and return true; otherwise return false and touch nothing.
fn adopt_native(
    layer: &Layer<'_>,
    src: &std::path::Path,
    blob: &std::path::Path,
    boot: &std::path::Path,
) -> Result<bool, Error> {
    let LayerFrom::Registry { desc, .. } = &layer.from else {
        return Ok(false);
    };
    if desc.media_type != native::MEDIA_TYPE {
        return Ok(false);
    }
    native::check_layer(src, boot).map_err(|source| Error::NativeLayer {
        source_name: format!("layer {}", layer.digest),
        source,
    })?;
    crate::fsutil::rename_noclobber(src, blob)?;
    Ok(true)
}
