//! The cocoon-compatible on-disk layout (DESIGN.md §1) as pure path arithmetic: no I/O here.
//! It sits on the ground floor with `digest`: every layer above (index, gc, lookup, backends,
//! store) names paths through it, and it depends on nothing but `digest`.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The two kinds of image a store keeps; each has its own directory, index and blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// OCI images: one EROFS blob per layer, plus boot files.
    Oci,
    /// Cloud images: one qcow2 blob.
    #[serde(rename = "cloudimg")]
    CloudImg,
}

impl Kind {
    /// Both kinds, in the order they are listed.
    pub const ALL: [Kind; 2] = [Kind::Oci, Kind::CloudImg];

    /// Directory name under the root, and the type name shown to users.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Oci => "oci",
            Kind::CloudImg => "cloudimg",
        }
    }

    /// File extension of this kind's blobs.
    #[must_use]
    pub const fn blob_ext(self) -> &'static str {
        match self {
            Kind::Oci => "erofs",
            Kind::CloudImg => "qcow2",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a stored file is to its image; serialized as `layer`, `kernel`, `initrd` (and `image`
/// for a finding about the image as a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Role {
    /// A disk: an EROFS layer (oci) or the qcow2 (cloudimg).
    Layer,
    /// An oci layer's image that depends on its parents (`blobs/<chain>.erofs`): the disk VMs
    /// get instead of the layer blob before it.
    Chain,
    /// The kernel of an oci image (`boot/<layer>/vmlinuz`).
    Kernel,
    /// The initrd of an oci image (`boot/<layer>/initrd.img`).
    Initrd,
    /// Not a file: the image as a whole (a `verify` finding such as files that do not add up
    /// to the recorded size).
    Image,
}

impl Role {
    /// The name shown to users and written in JSON.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Role::Layer => "layer",
            Role::Chain => "chain",
            Role::Kernel => "kernel",
            Role::Initrd => "initrd",
            Role::Image => "image",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Paths of a store root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (nothing is created).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Paths of one backend.
    #[must_use]
    pub fn backend(&self, kind: Kind) -> BackendLayout {
        BackendLayout {
            kind,
            dir: self.root.join(kind.name()),
        }
    }

    /// UEFI firmware used to boot cloud images (read, never written).
    #[must_use]
    pub fn firmware_path(&self) -> PathBuf {
        self.root.join("firmware").join("CLOUDHV.fd")
    }
}

/// Paths of one backend directory (`<root>/oci` or `<root>/cloudimg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendLayout {
    kind: Kind,
    dir: PathBuf,
}

impl BackendLayout {
    /// Which backend.
    #[must_use]
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// `<root>/<kind>`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `<root>/<kind>/db`.
    #[must_use]
    pub fn db_dir(&self) -> PathBuf {
        self.dir.join("db")
    }
    /// `<root>/<kind>/db/images.json`.
    #[must_use]
    pub fn index_path(&self) -> PathBuf {
        self.db_dir().join("images.json")
    }
    /// `<root>/<kind>/db/images.lock` (never deleted).
    #[must_use]
    pub fn index_lock_path(&self) -> PathBuf {
        self.db_dir().join("images.lock")
    }
    /// `<root>/<kind>/db/gc.lock` (never deleted): the ingest/gc lease. An ingest holds it shared
    /// from its reuse-or-publish decision to its index commit; a collection holds it exclusively
    /// while it re-reads the indexes and deletes a batch. cocoon does not know it.
    #[must_use]
    pub fn gc_lease_path(&self) -> PathBuf {
        self.db_dir().join("gc.lock")
    }
    /// `<root>/<kind>/temp`: partial downloads, conversions, per-digest locks.
    #[must_use]
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join("temp")
    }
    /// `<root>/<kind>/blobs`.
    #[must_use]
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs")
    }
    /// `<root>/<kind>/boot` (oci only).
    #[must_use]
    pub fn boot_root(&self) -> PathBuf {
        self.dir.join("boot")
    }
    /// `blobs/<hex>.<ext>` for a key digest.
    #[must_use]
    pub fn blob_path(&self, key: &Digest) -> PathBuf {
        self.blob_path_hex(&key.hex())
    }
    /// `blobs/<hex>.<ext>` for a hex stem.
    #[must_use]
    pub fn blob_path_hex(&self, hex: &str) -> PathBuf {
        self.blobs_dir()
            .join(format!("{hex}.{}", self.kind.blob_ext()))
    }
    /// Where the file playing `role` for key digest `key` is: the blob, or a boot file (for
    /// [`Role::Image`], the index that records the image).
    #[must_use]
    pub fn file_path(&self, role: Role, key: &Digest) -> PathBuf {
        match role {
            Role::Layer | Role::Chain => self.blob_path(key),
            Role::Kernel => self.kernel_path(key),
            Role::Initrd => self.initrd_path(key),
            Role::Image => self.index_path(),
        }
    }
    /// `boot/<hex>` for a layer digest.
    #[must_use]
    pub fn boot_dir(&self, layer: &Digest) -> PathBuf {
        self.boot_root().join(layer.hex())
    }
    /// `boot/<hex>/vmlinuz`.
    #[must_use]
    pub fn kernel_path(&self, layer: &Digest) -> PathBuf {
        self.boot_dir(layer).join("vmlinuz")
    }
    /// `boot/<hex>/initrd.img`.
    #[must_use]
    pub fn initrd_path(&self, layer: &Digest) -> PathBuf {
        self.boot_dir(layer).join("initrd.img")
    }
    /// `db/sources.json`: what imgstore knows of the URLs cloud images came from (validators for
    /// revalidation). imgstore's own file, so a cocoon rewrite of `images.json` cannot drop it.
    #[must_use]
    pub fn sources_path(&self) -> PathBuf {
        self.db_dir().join("sources.json")
    }
    /// `temp/<hex>.download`: the partial download of the URL whose sha256 is `url_key`.
    #[must_use]
    pub fn download_path(&self, url_key: &Digest) -> PathBuf {
        self.temp_dir().join(format!("{}.download", url_key.hex()))
    }
    /// `temp/<hex>.download.resume`: the resume record of [`BackendLayout::download_path`]. A
    /// temp entry `X` beside an `X.resume` is a resumable partial download (docs/design.md §3a).
    #[must_use]
    pub fn download_record_path(&self, url_key: &Digest) -> PathBuf {
        self.temp_dir()
            .join(format!("{}.download.resume", url_key.hex()))
    }
    /// `temp/<hex>.lock`: the per-digest ingest lock (may be deleted by GC; lock-then-check protocol).
    #[must_use]
    pub fn digest_lock_path(&self, key: &Digest) -> PathBuf {
        self.temp_dir().join(format!("{}.lock", key.hex()))
    }
}

/// The user's configuration directory, `$XDG_CONFIG_HOME`, else `$HOME/.config` (an empty
/// variable counts as unset), with the environment read through `env`.
pub(crate) fn user_config_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("XDG_CONFIG_HOME").or_else(|| var("HOME").map(|h| h.join(".config")))
}

/// The default store root: `$IMGSTORE_ROOT`, else `/var/lib/imgstore` for root, else
/// `$XDG_DATA_HOME/imgstore` or `~/.local/share/imgstore`.
#[must_use]
pub fn default_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(root) = env("IMGSTORE_ROOT") {
        return root;
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/imgstore");
    }
    if let Some(xdg) = env("XDG_DATA_HOME") {
        return xdg.join("imgstore");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".local/share/imgstore")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_cocoon() {
        let l = Layout::new("/var/lib/cocoon");
        let d: Digest = "sha256:4fbec69b941195fd56f8212a5000e304129451d82efca94ff0e0fb2d5355472e"
            .parse()
            .unwrap();
        let hex = d.hex();
        let oci = l.backend(Kind::Oci);
        assert_eq!(
            oci.index_path(),
            Path::new("/var/lib/cocoon/oci/db/images.json")
        );
        assert_eq!(
            oci.index_lock_path(),
            Path::new("/var/lib/cocoon/oci/db/images.lock")
        );
        assert_eq!(oci.temp_dir(), Path::new("/var/lib/cocoon/oci/temp"));
        assert_eq!(
            oci.gc_lease_path(),
            Path::new("/var/lib/cocoon/oci/db/gc.lock")
        );
        assert_eq!(
            oci.blob_path(&d),
            PathBuf::from(format!("/var/lib/cocoon/oci/blobs/{hex}.erofs"))
        );
        assert_eq!(
            oci.kernel_path(&d),
            PathBuf::from(format!("/var/lib/cocoon/oci/boot/{hex}/vmlinuz"))
        );
        assert_eq!(
            oci.initrd_path(&d),
            PathBuf::from(format!("/var/lib/cocoon/oci/boot/{hex}/initrd.img"))
        );
        let cloud = l.backend(Kind::CloudImg);
        assert_eq!(
            cloud.index_path(),
            Path::new("/var/lib/cocoon/cloudimg/db/images.json")
        );
        assert_eq!(
            cloud.blob_path(&d),
            PathBuf::from(format!("/var/lib/cocoon/cloudimg/blobs/{hex}.qcow2"))
        );
        assert_eq!(
            l.firmware_path(),
            Path::new("/var/lib/cocoon/firmware/CLOUDHV.fd")
        );
        assert_eq!(
            cloud.digest_lock_path(&d),
            PathBuf::from(format!("/var/lib/cocoon/cloudimg/temp/{hex}.lock"))
        );
    }
}
