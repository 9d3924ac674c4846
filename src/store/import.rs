//! Importing from files: every source is opened once as an [`Input`], its type is told from the
//! first bytes (which are then read again, not lost), and names are checked.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::cloudimg::{self, Format};
use crate::backend::oci::layer::{self as unpack, Compression};
use crate::digest::Digest;
use crate::input::Input;
use crate::layout::Kind;
use crate::reference::Reference;

use super::snapshot::canonical_of;
use super::{Error, OciSource, PullOutcome, Store};

/// How many bytes the type sniff looks at: a tar header behind a gzip or zstd header, and the
/// header of any disk image the cloud checks know.
pub(super) const SNIFF: usize = 64 << 10;

/// Characters that make a name read differently from what it is: bidi controls (U+061C,
/// U+202A–U+202E, U+2066–U+2069) and zero-width characters (U+200B–U+200F, U+2060, U+FEFF).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

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
    if name.chars().any(is_invisible) {
        return bad("contains an invisible bidi control or zero-width character");
    }
    if name.trim() != name {
        return bad("leading or trailing white space");
    }
    if Digest::parse(name).is_ok() || crate::digest::Prefix::parse(name).is_ok() {
        return bad("looks like a digest; it could never be looked up by name");
    }
    Ok(())
}

/// A name that pins a digest (`reg.example/app@sha256:…`) may only name the image with that ID.
pub(super) fn check_pinned(name: &str, id: &Digest) -> Result<(), Error> {
    match Reference::parse(name).ok().and_then(|r| r.digest()) {
        Some(pinned) if pinned != *id => Err(Error::PinnedDigest(Box::new(super::PinnedDigest {
            name: name.to_owned(),
            pinned,
            id: *id,
        }))),
        _ => Ok(()),
    }
}

/// The first of `keys` naming the same image reference as `name`: the same string, or the same
/// canonical reference (`ubuntu` and `docker.io/library/ubuntu:latest`).
pub(super) fn same_reference<'a>(
    name: &str,
    mut keys: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let canonical = canonical_of(name);
    keys.find(|k| *k == name || (canonical.is_some() && canonical_of(k) == canonical))
        .map(str::to_owned)
}

/// `DIR` or skopeo's `DIR:TAG` (the first `:` after which `DIR` is an existing directory).
fn layout_arg(arg: &Path) -> Option<(PathBuf, Option<String>)> {
    if arg.is_dir() {
        return Some((arg.to_path_buf(), None));
    }
    if arg.exists() {
        return None;
    }
    let s = arg.to_str()?;
    s.match_indices(':').find_map(|(i, _)| {
        let (dir, tag) = (&s[..i], &s[i + 1..]);
        (!dir.is_empty() && !tag.is_empty() && Path::new(dir).is_dir())
            .then(|| (PathBuf::from(dir), Some(tag.to_owned())))
    })
}

impl Store {
    /// Import an image under `name` from files (none = stdin). The type is detected from the
    /// content when `kind` is `None`: a directory (`DIR` or `DIR:TAG`, an OCI layout), a tar or
    /// a gzip/zstd-compressed tar is OCI; anything else is a cloud image. Every file, FIFO or
    /// pipe is read exactly once.
    ///
    /// # Errors
    /// As [`Store::import_cloud`] and [`Store::import_oci`]; a directory or a device among
    /// several files.
    pub fn import(
        &self,
        name: &str,
        files: &[PathBuf],
        kind: Option<Kind>,
    ) -> Result<PullOutcome, Error> {
        check_name(name)?;
        if let [one] = files {
            if kind != Some(Kind::CloudImg) {
                if let Some((dir, tag)) = layout_arg(one) {
                    return self.import_oci(name, &OciSource::Layout { dir, tag });
                }
            }
        }
        let mut inputs = open_inputs(files)?;
        let kind = if let Some(k) = kind {
            k
        } else {
            let count = inputs.len();
            detect_kind(&mut inputs[0], count)?
        };
        match kind {
            Kind::CloudImg => self.import_cloud_inputs(name, inputs),
            Kind::Oci => self.import_oci_inputs(name, inputs),
        }
    }

    /// One reference names one image across both backends: a cloud image may not take a name
    /// an oci image answers to. Checked early here and again at the commit.
    pub(super) fn check_cloud_name_free(&self, name: &str) -> Result<(), Error> {
        let w = self.on_wait();
        let oci = self.oci_db().read(self.opts.lock_wait, &w)?;
        match same_reference(name, oci.entries().map(|(k, _)| k)) {
            Some(key) => Err(Error::NameTaken {
                name: name.to_owned(),
                kind: Kind::Oci,
                key,
            }),
            None => Ok(()),
        }
    }

    /// The reverse of [`Store::check_cloud_name_free`]: an oci image may not take a name a
    /// cloud image is stored under.
    pub(super) fn check_oci_name_free(&self, key: &str) -> Result<(), Error> {
        let w = self.on_wait();
        let cloud = self.cloud_db().read(self.opts.lock_wait, &w)?;
        match same_reference(key, cloud.entries().map(|(k, _)| k)) {
            Some(other) => Err(Error::NameTaken {
                name: key.to_owned(),
                kind: Kind::CloudImg,
                key: other,
            }),
            None => Ok(()),
        }
    }
}

/// Open every file, in order; no files means standard input.
pub(super) fn open_inputs(files: &[PathBuf]) -> Result<Vec<Input>, Error> {
    if files.is_empty() {
        return Ok(vec![Input::stdin()?]);
    }
    Ok(files
        .iter()
        .map(|f| Input::open(f))
        .collect::<Result<Vec<_>, _>>()?)
}

/// What the first bytes of a source say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Content {
    /// A tar, plain or compressed.
    Tar(Compression),
    /// Compressed, but not a tar inside.
    Compressed(Compression),
    /// Anything else.
    Other,
}

pub(super) fn sniff(head: &[u8]) -> Content {
    match unpack::detect(head) {
        Compression::None if looks_like_tar(head) => Content::Tar(Compression::None),
        Compression::None => Content::Other,
        c => {
            let inner = decompressed_head(head, c);
            // An empty layer (a compressed end-of-archive block) is a tar too.
            if looks_like_tar(&inner) || (inner.len() == 512 && inner.iter().all(|&b| b == 0)) {
                Content::Tar(c)
            } else {
                Content::Compressed(c)
            }
        }
    }
}

/// The first 512 decompressed bytes of a compressed `head` (fewer if it is short or corrupt).
fn decompressed_head(head: &[u8], c: Compression) -> Vec<u8> {
    let mut reader: Box<dyn Read + '_> = match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(head)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(head) {
            Ok(d) => Box::new(d),
            Err(_) => return Vec::new(),
        },
        Compression::None => Box::new(head),
    };
    let mut out = vec![0u8; 512];
    let mut n = 0;
    while n < out.len() {
        match reader.read(&mut out[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    out.truncate(n);
    out
}

/// A tar header: the ustar magic (POSIX, GNU), or a v7 header whose checksum adds up.
pub(super) fn looks_like_tar(head: &[u8]) -> bool {
    let Some(h) = head.get(..512) else {
        return false;
    };
    if &h[257..262] == b"ustar" {
        return true;
    }
    let field = std::str::from_utf8(&h[148..156]).unwrap_or("");
    let Ok(recorded) = u32::from_str_radix(field.trim_matches(|c: char| c == ' ' || c == '\0'), 8)
    else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    h[0] != 0 && sum == recorded
}

/// Words for what a source that is not a layer tar looks like.
pub(super) fn describe(head: &[u8]) -> &'static str {
    match sniff(head) {
        Content::Tar(_) => "a tar",
        Content::Compressed(Compression::Gzip) => "gzip data that is not a tar",
        Content::Compressed(_) => "zstd data that is not a tar",
        Content::Other if head.is_empty() => "empty",
        Content::Other => match cloudimg::sniff(head) {
            Format::Qcow2 => "a qcow2 disk image",
            Format::Rejected(what) => what,
            Format::Raw => "not a tar (a raw disk image?)",
        },
    }
}

pub(super) fn detect_kind(first: &mut Input, count: usize) -> Result<Kind, Error> {
    let head = first.peek(SNIFF)?;
    Ok(match sniff(head) {
        Content::Tar(_) => Kind::Oci,
        Content::Compressed(_) if count > 1 => Kind::Oci,
        _ => Kind::CloudImg,
    })
}

/// An uncompressed tar with an `oci-layout` file at its root (read from a staged copy).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn tars_are_seen_through_gzip_and_zstd() {
        let tar = tar_of("etc/hostname", b"box\n");
        assert_eq!(sniff(&tar), Content::Tar(Compression::None));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        assert_eq!(
            sniff(&gz.finish().unwrap()),
            Content::Tar(Compression::Gzip)
        );
        let zst = zstd::stream::encode_all(&tar[..], 3).unwrap();
        assert_eq!(sniff(&zst), Content::Tar(Compression::Zstd));
        let zst = zstd::stream::encode_all(&[1u8; 4096][..], 3).unwrap();
        assert_eq!(sniff(&zst), Content::Compressed(Compression::Zstd));
        let empty = zstd::stream::encode_all(&[0u8; 1024][..], 3).unwrap();
        assert_eq!(sniff(&empty), Content::Tar(Compression::Zstd));
        assert_eq!(sniff(&[0u8; 1024]), Content::Other);
    }

    #[test]
    fn invisible_characters_are_refused() {
        for c in ['\u{202E}', '\u{2066}', '\u{200B}', '\u{200F}', '\u{FEFF}'] {
            let name = format!("app{c}lication");
            assert!(check_name(&name).is_err(), "{name:?}");
        }
        assert!(check_name("app-ünïcode").is_ok());
    }

    #[test]
    fn layout_args_split_like_skopeo() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("lay:out");
        std::fs::create_dir(&d).unwrap();
        let s = d.to_str().unwrap();
        assert_eq!(layout_arg(&d), Some((d.clone(), None)));
        assert_eq!(
            layout_arg(Path::new(&format!("{s}:v1"))),
            Some((d.clone(), Some("v1".into())))
        );
        assert_eq!(layout_arg(&dir.path().join("missing:v1")), None);
    }
}
