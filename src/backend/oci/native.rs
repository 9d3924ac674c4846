//! EROFS-native layers (`application/vnd.erofs.layer.v1`, as containerd's `ctr images convert
//! --erofs` publishes them): no conversion, only a check and the boot files.
//!
//! Before anything else touches a layer (its digest already verified by the registry client),
//! its superblock must name only on-disk features a Linux 5.15 guest mounts — compression and
//! later features are refused by name — and the whole image must parse with the in-process
//! reader (`crate::erofs::read`: every inode, directory and data reference bounds-checked).
//! Then the layer's kernel and initrd are copied out. The layer itself is stored as it is.
//!
//! Reads the layer with `read()` (it is not yet a published store file, so it is not mapped) and
//! writes only into the boot directory it is given.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::erofs::format::{self, Super, SUPER_OFFSET, SUPER_SIZE};
use crate::erofs::{self as reader, Content};
use crate::error::{io_err, IoError};

use super::boot::{BootKind, Candidates};

/// The media type of an EROFS-native layer.
pub const MEDIA_TYPE: &str = "application/vnd.erofs.layer.v1";

/// Incompatible feature bits Linux 5.15 mounts and the reader reads: chunk-based files.
const ACCEPTED_INCOMPAT: u32 = format::FEATURE_INCOMPAT_CHUNKED_FILE;

/// Names of the incompatible feature bits (kernel `erofs_fs.h`).
const INCOMPAT_NAMES: [(u32, &str); 8] = [
    (0x01, "ZERO_PADDING (lz4 compression)"),
    (0x02, "COMPR_CFGS / BIG_PCLUSTER (compression)"),
    (0x08, "DEVICE_TABLE / COMPR_HEAD2 (extra devices or compression)"),
    (0x10, "ZTAILPACKING (compressed tail packing)"),
    (0x20, "FRAGMENTS / DEDUPE (compression)"),
    (0x40, "XATTR_PREFIXES (Linux 6.4)"),
    (0x80, "48BIT (Linux 6.15)"),
    (0x100, "METABOX"),
];

/// Why an EROFS-native layer was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The superblock names a feature a Linux 5.15 guest cannot mount (or this store cannot
    /// check).
    #[error("EROFS layer uses feature {feature}, which a Linux 5.15 guest does not mount")]
    Feature {
        /// The feature's name, or its bit for an unknown one.
        feature: String,
    },
    /// The bytes are not an EROFS image the reader accepts.
    #[error(transparent)]
    Corrupt(#[from] reader::Error),
    /// Reading the layer or writing a boot file failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Refuse a superblock with incompatible features a 5.15 kernel does not mount.
///
/// # Errors
/// [`Error::Feature`] naming the first such feature; [`Error::Corrupt`] without a superblock.
pub fn check_features(img: &[u8]) -> Result<(), Error> {
    let sb = img
        .get(SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE)
        .and_then(Super::decode)
        .ok_or(reader::Error::Corrupt {
            what: "no EROFS superblock with 4 KiB blocks",
            offset: SUPER_OFFSET as u64,
        })?;
    let refused = sb.feature_incompat & !ACCEPTED_INCOMPAT;
    if refused == 0 {
        return Ok(());
    }
    let feature = INCOMPAT_NAMES
        .iter()
        .find(|(bit, _)| refused & bit != 0)
        .map_or_else(
            || format!("unknown incompatible feature bit 0x{:x}", refused & refused.wrapping_neg()),
            |(_, name)| (*name).to_owned(),
        );
    Err(Error::Feature { feature })
}

/// Check the EROFS layer at `layer` and copy its boot files to `boot_out/vmlinuz` and
/// `boot_out/initrd.img` (created when the layer has any). On failure, boot files written are
/// left for the caller's temp directory to remove.
///
/// # Errors
/// A refused feature, an image the reader rejects, I/O errors naming the path.
pub fn check_layer(layer: &Path, boot_out: &Path) -> Result<(), Error> {
    let img = fs::read(layer).map_err(io_err("reading EROFS layer", layer))?;
    check_features(&img)?;
    let listing = reader::read(&img)?;
    let mut candidates = Candidates::default();
    for (path, node) in &listing {
        if matches!(node.content, Content::File { .. }) {
            let p = Path::new(std::ffi::OsStr::from_bytes(path));
            candidates.offer(p);
        }
    }
    let boot = candidates.finish();
    for (kind, found) in [(BootKind::Kernel, boot.kernel), (BootKind::Initrd, boot.initrd)] {
        let Some(path) = found else { continue };
        let key = path.as_os_str().as_encoded_bytes();
        let Some(node) = listing.get(key) else {
            continue;
        };
        let data = reader::file_data(&img, node.nid)?;
        fs::create_dir_all(boot_out).map_err(io_err("creating boot directory", boot_out))?;
        let dest = boot_out.join(match kind {
            BootKind::Kernel => "vmlinuz",
            BootKind::Initrd => "initrd.img",
        });
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&dest)
            .map_err(io_err("creating boot file", &dest))?;
        f.write_all(&data)
            .map_err(io_err("writing boot file", &dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with_incompat(bits: u32) -> Vec<u8> {
        let sb = Super {
            root_nid: 0,
            inos: 0,
            build_time: 0,
            build_time_nsec: 0,
            blocks: 1,
            meta_blkaddr: 0,
            uuid: [0; 16],
            feature_incompat: bits,
        };
        let mut img = vec![0u8; 4096];
        img[SUPER_OFFSET..SUPER_OFFSET + SUPER_SIZE].copy_from_slice(&sb.encode());
        img
    }

    #[test]
    fn refuses_features_by_name() {
        assert!(check_features(&image_with_incompat(0x4)).is_ok());
        let e = check_features(&image_with_incompat(0x3)).unwrap_err().to_string();
        assert!(e.contains("ZERO_PADDING"), "{e}");
        let e = check_features(&image_with_incompat(0x4000)).unwrap_err().to_string();
        assert!(e.contains("unknown incompatible feature bit 0x4000"), "{e}");
    }
}
