//! Builds small OCI images on disk (an OCI image layout directory) for tests: gzip layer tars
//! made with the tar and flate2 crates, config, manifest, and multi-arch indexes.
//!
//! Everything is deterministic (mtime 0, owner 0:0, sorted JSON), so the same builder calls give
//! the same digests. Typical use:
//!
//! ```ignore
//! let mut layout = OciLayout::create(dir.path());
//! let image = layout.add_image("v1", &ImageBuilder::sample("amd64"));
//! let index = layout.add_index("multi", &[ImageBuilder::sample("amd64"), ImageBuilder::sample("arm64").variant("v8")]);
//! ```
#![allow(dead_code)] // a toolbox: each test file uses its own part of it

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use imgstore::Digest;
use serde_json::{json, Value};

/// OCI media types written by this builder.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, Clone)]
enum Entry {
    Dir {
        mode: u32,
        owner: (u64, u64),
    },
    File {
        contents: Vec<u8>,
        mode: u32,
        owner: (u64, u64),
    },
    Symlink {
        target: String,
    },
    Hardlink {
        target: String,
    },
    Device {
        block: bool,
        major: u32,
        minor: u32,
        mode: u32,
    },
}

/// The entries of one layer tar, in the order given.
#[derive(Debug, Clone, Default)]
pub struct LayerBuilder {
    entries: Vec<(String, Entry)>,
    /// gzip level; `None` means fast (1).
    level: Option<u32>,
}

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the gzip level (0 = stored, quickest for big incompressible test layers).
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.level = Some(level);
        self
    }

    /// A directory (mode 0755).
    pub fn dir(self, path: &str) -> Self {
        self.dir_owned(path, 0o755, 0, 0)
    }

    /// A directory with the given mode, owner and group.
    pub fn dir_owned(mut self, path: &str, mode: u32, uid: u64, gid: u64) -> Self {
        self.entries.push((
            path.to_owned(),
            Entry::Dir {
                mode,
                owner: (uid, gid),
            },
        ));
        self
    }

    /// A regular file with mode 0644.
    pub fn file(self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.file_mode(path, contents, 0o644)
    }

    /// A regular file with the given mode.
    pub fn file_mode(self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.file_owned(path, contents, mode, 0, 0)
    }

    /// A regular file with the given mode, owner and group.
    pub fn file_owned(
        mut self,
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        self.entries.push((
            path.to_owned(),
            Entry::File {
                contents: contents.into(),
                mode,
                owner: (uid, gid),
            },
        ));
        self
    }

    /// A file of `size` pseudo-random (incompressible) bytes drawn from `seed`.
    pub fn random_file(self, path: &str, size: usize, seed: u64) -> Self {
        self.file(path, pseudo_random(size, seed))
    }

    /// A symbolic link.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push((
            path.to_owned(),
            Entry::Symlink {
                target: target.to_owned(),
            },
        ));
        self
    }

    /// A hard link to an earlier entry of this layer.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push((
            path.to_owned(),
            Entry::Hardlink {
                target: target.to_owned(),
            },
        ));
        self
    }

    /// A block (`block`) or character device node, root-owned.
    pub fn device(mut self, path: &str, block: bool, major: u32, minor: u32, mode: u32) -> Self {
        self.entries.push((
            path.to_owned(),
            Entry::Device {
                block,
                major,
                minor,
                mode,
            },
        ));
        self
    }

    /// An OCI whiteout deleting `path` of a lower layer (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        self.file(&format!("{dir}.wh.{name}"), Vec::new())
    }

    /// An opaque-directory marker: `dir`'s lower-layer contents are hidden.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            Vec::new(),
        )
    }

    /// The tar and its gzip, with their digests.
    pub fn build(&self) -> Layer {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { mode, owner } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_uid(owner.0);
                    header.set_gid(owner.1);
                    header.set_size(0);
                    builder
                        .append_data(&mut header, path, &[][..])
                        .expect("append dir to in-memory tar");
                }
                Entry::File {
                    contents,
                    mode,
                    owner,
                } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_uid(owner.0);
                    header.set_gid(owner.1);
                    header.set_size(contents.len() as u64);
                    builder
                        .append_data(&mut header, path, &contents[..])
                        .expect("append file to in-memory tar");
                }
                Entry::Device {
                    block,
                    major,
                    minor,
                    mode,
                } => {
                    header.set_entry_type(if *block {
                        tar::EntryType::Block
                    } else {
                        tar::EntryType::Char
                    });
                    header.set_mode(*mode);
                    header.set_size(0);
                    header.set_device_major(*major).expect("device major");
                    header.set_device_minor(*minor).expect("device minor");
                    builder
                        .append_data(&mut header, path, &[][..])
                        .expect("append device to in-memory tar");
                }
                Entry::Symlink { target } | Entry::Hardlink { target } => {
                    let kind = if matches!(entry, Entry::Symlink { .. }) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    header.set_entry_type(kind);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, target)
                        .expect("append link to in-memory tar");
                }
            }
        }
        let tar = builder.into_inner().expect("finish in-memory tar");
        let mut gz = GzEncoder::new(
            Vec::new(),
            flate2::Compression::new(self.level.unwrap_or(1)),
        );
        gz.write_all(&tar).expect("gzip in memory");
        let gz = gz.finish().expect("finish gzip in memory");
        Layer {
            diff_id: Digest::sha256_of(&tar),
            digest: Digest::sha256_of(&gz),
            tar,
            gz,
        }
    }
}

/// A built layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The gzip blob as stored in the registry.
    pub gz: Vec<u8>,
    /// sha256 of `tar` (the config's `diff_id`).
    pub diff_id: Digest,
    /// sha256 of `gz` (the manifest's layer digest).
    pub digest: Digest,
}

/// An image for one platform: layers bottom first.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    os: String,
    architecture: String,
    variant: Option<String>,
    layers: Vec<LayerBuilder>,
}

impl ImageBuilder {
    /// A linux image for `architecture` (OCI names: `amd64`, `arm64`) with no layers yet.
    pub fn new(architecture: &str) -> Self {
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
            layers: Vec::new(),
        }
    }

    /// Set the platform variant (`v8` for arm64).
    pub fn variant(mut self, variant: &str) -> Self {
        self.variant = Some(variant.to_owned());
        self
    }

    /// Add a layer on top.
    pub fn layer(mut self, layer: LayerBuilder) -> Self {
        self.layers.push(layer);
        self
    }

    /// A three-layer image whose file contents mention `architecture`:
    /// 1. base: `etc/hostname`, `etc/os-release`, `etc/removed-later`, `usr/bin/hello` (0755),
    ///    `var/cache/a`, symlink `bin -> usr/bin`, hardlink `usr/bin/hello-again`;
    /// 2. boot: `boot/vmlinuz` and `boot/initrd.img` (fake, text);
    /// 3. upper: whiteout of `etc/removed-later`, `var/cache` made opaque with a new `b`,
    ///    `etc/hostname` replaced.
    pub fn sample(architecture: &str) -> Self {
        let base = LayerBuilder::new()
            .dir("etc")
            .file("etc/hostname", "imgstore-test\n")
            .file(
                "etc/os-release",
                format!("ID=imgstore-test\nARCH={architecture}\n"),
            )
            .file("etc/removed-later", "this file is whited out by layer 3\n")
            .dir("usr")
            .dir("usr/bin")
            .file_mode("usr/bin/hello", "#!/bin/sh\necho hello\n", 0o755)
            .hardlink("usr/bin/hello-again", "usr/bin/hello")
            .symlink("bin", "usr/bin")
            .dir("var")
            .dir("var/cache")
            .file("var/cache/a", "hidden by the opaque dir in layer 3\n");
        let boot = LayerBuilder::new()
            .dir("boot")
            .file("boot/vmlinuz", format!("fake kernel for {architecture}\n"))
            .file(
                "boot/initrd.img",
                format!("fake initrd for {architecture}\n"),
            );
        let upper = LayerBuilder::new()
            .whiteout("etc/removed-later")
            .file("etc/hostname", "imgstore-upper\n")
            .opaque("var/cache")
            .file("var/cache/b", "new in layer 3\n");
        Self::new(architecture).layer(base).layer(boot).layer(upper)
    }

    fn platform_json(&self) -> Value {
        let mut p = json!({ "os": self.os, "architecture": self.architecture });
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }

    /// Build config, layers and manifest in memory.
    pub fn build(&self) -> BuiltImage {
        let layers: Vec<Layer> = self.layers.iter().map(LayerBuilder::build).collect();
        let mut config = self.platform_json();
        config["created"] = json!("1970-01-01T00:00:00Z");
        config["config"] = json!({ "Env": ["PATH=/usr/bin:/bin"] });
        config["rootfs"] = json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
        });
        let config = serde_json::to_vec(&config).expect("serialize config");
        let config_digest = Digest::sha256_of(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len() },
            "layers": layers.iter().map(|l| json!({
                "mediaType": OCI_LAYER_GZIP,
                "digest": l.digest.to_string(),
                "size": l.gz.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).expect("serialize manifest");
        BuiltImage {
            manifest_digest: Digest::sha256_of(&manifest),
            manifest,
            config_digest,
            config,
            layers,
            platform: self.platform_json(),
        }
    }
}

/// An image built in memory.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// sha256 of the manifest bytes.
    pub manifest_digest: Digest,
    /// Config bytes.
    pub config: Vec<u8>,
    /// sha256 of the config.
    pub config_digest: Digest,
    /// Layers bottom first.
    pub layers: Vec<Layer>,
    /// `{"os", "architecture", "variant"?}` as in an index entry.
    pub platform: Value,
}

/// A multi-platform index built in memory.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    /// Index bytes.
    pub index: Vec<u8>,
    /// sha256 of the index bytes.
    pub index_digest: Digest,
    /// The images, in index order.
    pub images: Vec<BuiltImage>,
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
#[derive(Debug)]
pub struct OciLayout {
    /// The layout directory.
    pub dir: PathBuf,
    refs: Vec<Value>,
}

impl OciLayout {
    /// Create the layout skeleton in `dir` (which may exist and be empty).
    pub fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create blobs/sha256");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        let layout = Self {
            dir: dir.to_owned(),
            refs: Vec::new(),
        };
        layout.write_index();
        layout
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn put(&self, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        std::fs::write(self.blob_path(&digest), bytes).expect("write layout blob");
        digest
    }

    fn put_image(&self, image: &BuiltImage) {
        self.put(&image.config);
        for layer in &image.layers {
            self.put(&layer.gz);
        }
        self.put(&image.manifest);
    }

    fn tag(&mut self, tag: &str, media_type: &str, digest: Digest, size: usize) {
        self.refs.push(json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }));
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({ "schemaVersion": 2, "manifests": self.refs });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("serialize index.json"),
        )
        .expect("write index.json");
    }

    /// Write a single-platform image and tag it `tag` in `index.json`.
    pub fn add_image(&mut self, tag: &str, image: &ImageBuilder) -> BuiltImage {
        let built = image.build();
        self.put_image(&built);
        self.tag(
            tag,
            OCI_MANIFEST,
            built.manifest_digest,
            built.manifest.len(),
        );
        built
    }

    /// Write an image index over `images` (one manifest per platform) and tag it `tag`.
    pub fn add_index(&mut self, tag: &str, images: &[ImageBuilder]) -> BuiltIndex {
        let images: Vec<BuiltImage> = images.iter().map(ImageBuilder::build).collect();
        for image in &images {
            self.put_image(image);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": images.iter().map(|i| json!({
                "mediaType": OCI_MANIFEST,
                "digest": i.manifest_digest.to_string(),
                "size": i.manifest.len(),
                "platform": i.platform,
            })).collect::<Vec<_>>(),
        });
        let index = serde_json::to_vec(&index).expect("serialize image index");
        let index_digest = self.put(&index);
        self.tag(tag, OCI_INDEX, index_digest, index.len());
        BuiltIndex {
            index,
            index_digest,
            images,
        }
    }
}

/// Deterministic incompressible bytes (xorshift64*), so tests need no rand crate.
pub fn pseudo_random(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// The OCI name of this machine's architecture, and one that is not it.
pub fn host_and_other_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "aarch64" => ("arm64", "amd64"),
        "x86_64" => ("amd64", "arm64"),
        other => panic!("tests know no OCI name for {other}"),
    }
}
