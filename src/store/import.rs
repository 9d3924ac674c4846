//! Importing from files: the image type is told from the content, and names are checked.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::cloudimg::SNIFF_LEN;
use crate::digest::Digest;
use crate::layout::Kind;

use super::{io_err, CloudSource, Error, OciSource, PullOutcome, Store};

/// A name for an imported image must be usable as an index key and shown safely.
pub(super) fn check_name(name: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.chars().take(200).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty name");
    }
    if name.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    if name.trim() != name {
        return bad("leading or trailing white space");
    }
    if Digest::parse(name).is_ok() || crate::digest::Prefix::parse(name).is_ok() {
        return bad("looks like a digest; it could never be looked up by name");
    }
    Ok(())
}

impl Store {
    /// Import an image under `name` from files (none = stdin). The type is detected from the
    /// content when `kind` is `None`: a directory, a tar or a compressed tar is OCI; anything
    /// else (and stdin) is a cloud image.
    ///
    /// # Errors
    /// As [`Store::import_cloud`] and [`Store::import_oci`].
    pub fn import(
        &self,
        name: &str,
        files: &[PathBuf],
        kind: Option<Kind>,
    ) -> Result<PullOutcome, Error> {
        let kind = match kind {
            Some(k) => k,
            None => detect_kind(files)?,
        };
        match kind {
            Kind::CloudImg if files.is_empty() => self.import_cloud(name, &CloudSource::Stdin),
            Kind::CloudImg => self.import_cloud(name, &CloudSource::Files(files.to_vec())),
            Kind::Oci => {
                let source = match files {
                    [] => return Err(Error::OciFromStdin),
                    [one] if one.is_dir() => OciSource::Layout(one.clone()),
                    [one] if is_oci_archive(one) => OciSource::Archive(one.clone()),
                    many => OciSource::LayerTars(many.to_vec()),
                };
                self.import_oci(name, &source)
            }
        }
    }
}

/// The first [`SNIFF_LEN`] bytes of `path` (fewer if it is shorter).
pub(super) fn head_of(path: &Path) -> Result<Vec<u8>, Error> {
    let f = std::fs::File::open(path).map_err(io_err("opening", path))?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    f.take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_err("reading", path))?;
    Ok(head)
}

pub(super) fn looks_like_tar(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

pub(super) fn detect_kind(files: &[PathBuf]) -> Result<Kind, Error> {
    let Some(first) = files.first() else {
        return Ok(Kind::CloudImg);
    };
    if first.is_dir() {
        return Ok(Kind::Oci);
    }
    let head = head_of(first)?;
    let compressed_tar =
        head.starts_with(&[0x1f, 0x8b]) || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    if looks_like_tar(&head)
        || (compressed_tar && files.len() > 1)
        || (compressed_tar && is_gzip_tar(first))
    {
        Ok(Kind::Oci)
    } else {
        Ok(Kind::CloudImg)
    }
}

/// A gzip stream whose content starts like a tar: a compressed layer, not a compressed disk.
pub(super) fn is_gzip_tar(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut d = flate2::read::GzDecoder::new(f);
    let mut head = vec![0u8; 512];
    d.read_exact(&mut head).is_ok() && looks_like_tar(&head)
}

/// An uncompressed tar with an `oci-layout` file at its root.
pub(super) fn is_oci_archive(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut a = tar::Archive::new(f);
    let Ok(entries) = a.entries() else {
        return false;
    };
    entries.flatten().take(10_000).any(|e| {
        e.path().is_ok_and(|p| {
            let p: PathBuf = p
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            p == Path::new("oci-layout")
        })
    })
}
