//! Publishing staged files: into `blobs/` read-only (0444) with a no-clobber rename and a
//! directory fsync, a layer's boot directory before its blob. The caller holds the digest lock
//! of the key; nothing here touches the index.

use std::path::Path;

use crate::digest::Sums;
use crate::fsutil;
use crate::verify;

use super::{Error, Staged, StagedDir};

/// Publish `staged` at `dest` (`blobs/<hex>.<ext>`) unless a blob is already there. Returns the
/// sums of the blob now in place. An existing blob with the same bytes is kept (the staged copy
/// is dropped); one with other bytes is never overwritten: that is [`Error::Conflict`].
pub fn publish(staged: Staged, dest: &Path) -> Result<Sums, Error> {
    let Staged { temp, sums } = staged;
    if let Some(parent) = dest.parent() {
        fsutil::create_dir_all(parent)?;
    }
    failpoint!("publish.before_rename");
    match fsutil::publish_noclobber(temp.path(), dest)? {
        fsutil::Published::New => {
            temp.forget();
            Ok(sums)
        }
        fsutil::Published::Existing => {
            // Only possible if something outside the digest-lock protocol wrote it: keep it if
            // it holds the same bytes, never overwrite it. A published blob may be mapped.
            let existing = verify::sums_of_file(dest)?;
            if existing.sha256 == sums.sha256 {
                Ok(existing)
            } else {
                Err(Error::Conflict {
                    path: dest.to_path_buf(),
                    expected: sums.sha256,
                    actual: existing.sha256,
                })
            }
        }
    }
}

/// Publish a layer: its boot files (if any) at `boot_dest` first, then its blob at `dest`, so a
/// blob that exists always has its boot directory. Returns the blob's sums.
pub fn publish_layer(
    blob: Staged,
    boot: &StagedDir,
    dest: &Path,
    boot_dest: &Path,
) -> Result<Sums, Error> {
    if !boot.files.is_empty() {
        let published = fsutil::publish_dir_noclobber(&boot.path, boot_dest)?;
        if published == fsutil::Published::Existing && !same_files(boot, boot_dest)? {
            // A boot dir left without its blob (a layer is staged only when its blob is missing
            // or damaged), e.g. half deleted by an interrupted gc. The caller holds the digest
            // lock, so nobody else publishes it; keeping it would point the entry at wrong files.
            fsutil::remove_dir_all(boot_dest)?;
            fsutil::publish_dir_noclobber(&boot.path, boot_dest)?;
        }
    }
    failpoint!("oci.after_boot_publish");
    let sums = publish(blob, dest)?;
    failpoint!("publish.after_rename");
    Ok(sums)
}

/// Whether `existing` holds exactly the files of `staged`, with the same sizes.
fn same_files(staged: &StagedDir, existing: &Path) -> Result<bool, Error> {
    let mut found = fsutil::names_in(existing)?;
    found.sort();
    if !found.iter().eq(staged.files.keys()) {
        return Ok(false);
    }
    for (name, sums) in &staged.files {
        let path = existing.join(name);
        let len = std::fs::metadata(&path)
            .map_err(crate::error::io_err("inspecting", &path))?
            .len();
        if len != sums.size {
            return Ok(false);
        }
    }
    Ok(true)
}
