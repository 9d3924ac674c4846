//! The pull path's one step for EROFS-native layers (`application/vnd.erofs.layer.v1`): check
//! the fetched (digest-verified) layer and read its boot files out, then store it as it is
//! instead of converting it (docs/design.md, "EROFS-native layers").

use std::path::Path;

use super::oci_layer::{Layer, LayerFrom};
use super::Error;
use crate::backend::oci::native;
use crate::fsutil;

/// If `layer` is EROFS-native, check `src` (its fetched bytes), write its boot files under
/// `boot`, move it to `blob` and return true; otherwise return false and touch nothing.
pub(super) fn adopt(
    layer: &Layer<'_>,
    src: &Path,
    blob: &Path,
    boot: &Path,
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
    fsutil::rename_noclobber(src, blob)?;
    Ok(true)
}
