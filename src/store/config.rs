//! The boot path's verb: the VM disk and boot configuration of images.

use std::path::PathBuf;

use serde::Serialize;

use crate::digest::Digest;
use crate::layout::Kind;

use crate::layout::Role;

use super::snapshot::ImageEntry;
use super::snapshot::{BlobInfo, Found, ImageInfo};
use super::{file_size, Error, Store};

/// One disk of a VM configuration.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Disk {
    /// Path of the blob.
    pub path: PathBuf,
    /// Always read-only.
    pub ro: bool,
    /// Serial the guest sees (`cocoon-layer<N>` / `cocoon-base`).
    pub serial: String,
    /// Role (`layer`).
    pub role: Role,
}

/// How a VM boots.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Boot {
    /// Direct kernel boot (oci).
    Kernel {
        /// vmlinuz.
        kernel_path: PathBuf,
        /// initrd.img.
        initrd_path: PathBuf,
    },
    /// UEFI firmware boot (cloudimg).
    Firmware {
        /// CLOUDHV.fd.
        firmware_path: PathBuf,
    },
}

/// The VM disk and boot configuration of one image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VmConfig {
    /// The image's name (index key).
    pub image: String,
    /// Its ID.
    pub image_digest: Digest,
    /// Backend.
    pub image_type: Kind,
    /// Disks in order (oci: base layer first).
    pub storage: Vec<Disk>,
    /// Boot files.
    pub boot: Boot,
}

impl Store {
    /// The VM configuration of each image, in order. Every file is checked to exist with its
    /// recorded size (a truncated blob is never handed to a VM); content is checked by `verify`.
    ///
    /// # Errors
    /// Not found, ambiguous, a missing or wrong-sized file, missing firmware.
    pub fn config(&self, queries: &[&str]) -> Result<Vec<VmConfig>, Error> {
        queries
            .iter()
            .zip(self.resolve_all(queries)?)
            .map(|(query, found)| match self.checked_config(found) {
                // The lookup takes no lock, so an `rm` and a `gc` can come between it and the
                // stat: ask once more, and answer from what the index says now (not found, a new
                // image under the name, or the same entry really missing a file).
                Err(Error::Missing { .. }) => self.resolve_all(&[query])?.pop().map_or_else(
                    || {
                        Err(crate::lookup::Error::NotFound {
                            query: (*query).to_owned(),
                            malformed: None,
                        }
                        .into())
                    },
                    |found| self.checked_config(found),
                ),
                answer => answer,
            })
            .collect()
    }

    /// The VM configuration of one resolved image, after checking its files.
    fn checked_config(&self, (f, e): (Found, ImageEntry)) -> Result<VmConfig, Error> {
        let info = self.describe_entry(f.keys, &e);
        check_files(&info)?;
        self.vm_config(info)
    }

    pub(super) fn vm_config(&self, info: ImageInfo) -> Result<VmConfig, Error> {
        let layers: Vec<&BlobInfo> = info
            .blobs
            .iter()
            .filter(|b| b.role == Role::Layer)
            .collect();
        let (storage, boot) = match info.kind {
            Kind::Oci => {
                let mut storage: Vec<Disk> = Vec::with_capacity(layers.len());
                for b in &info.blobs {
                    match b.role {
                        Role::Layer => storage.push(Disk {
                            path: b.path.clone(),
                            ro: true,
                            serial: format!("cocoon-layer{}", storage.len()),
                            role: Role::Layer,
                        }),
                        // A layer's chain blob (right after it) replaces it for VMs.
                        Role::Chain => {
                            if let Some(d) = storage.last_mut() {
                                d.path.clone_from(&b.path);
                            }
                        }
                        _ => {}
                    }
                }
                let path_of = |role: Role| {
                    info.blobs
                        .iter()
                        .find(|b| b.role == role)
                        .map(|b| b.path.clone())
                        .expect("an oci image lists its kernel and initrd")
                };
                let boot = Boot::Kernel {
                    kernel_path: path_of(Role::Kernel),
                    initrd_path: path_of(Role::Initrd),
                };
                (storage, boot)
            }
            Kind::CloudImg => {
                let firmware = self
                    .opts
                    .firmware
                    .clone()
                    .unwrap_or_else(|| self.layout.firmware_path());
                if file_size(&firmware)?.is_none() {
                    return Err(Error::FirmwareMissing { path: firmware });
                }
                let storage = vec![Disk {
                    path: layers[0].path.clone(),
                    ro: true,
                    serial: "cocoon-base".to_owned(),
                    role: Role::Layer,
                }];
                (
                    storage,
                    Boot::Firmware {
                        firmware_path: firmware,
                    },
                )
            }
        };
        Ok(VmConfig {
            image: info.name,
            image_digest: info.id,
            image_type: info.kind,
            storage,
            boot,
        })
    }
}

/// Every file exists with its recorded size (or, for legacy entries, exists and is not empty).
pub(super) fn check_files(info: &ImageInfo) -> Result<(), Error> {
    for b in &info.blobs {
        match (file_size(&b.path)?, b.size) {
            (None, _) => {
                return Err(Error::Missing {
                    image: info.name.clone(),
                    path: b.path.clone(),
                })
            }
            (Some(actual), Some(expected)) if actual != expected => {
                return Err(Error::WrongSize {
                    image: info.name.clone(),
                    path: b.path.clone(),
                    expected,
                    actual,
                })
            }
            (Some(0), None) => {
                return Err(Error::Empty {
                    image: info.name.clone(),
                    path: b.path.clone(),
                })
            }
            _ => {}
        }
    }
    Ok(())
}
