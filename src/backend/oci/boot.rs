//! Boot files in a layer: which tar entries are kernels or initrds, and which one a layer
//! provides. Pure path logic: this module does no I/O and never touches the store.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// What kind of boot file an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootKind {
    /// A kernel (`vmlinuz*`).
    Kernel,
    /// An initial ramdisk (`initrd.img*`).
    Initrd,
}

/// The boot files one layer provides, as paths inside the layer (no leading `/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    /// The kernel, if the layer has one.
    pub kernel: Option<PathBuf>,
    /// The initrd, if the layer has one.
    pub initrd: Option<PathBuf>,
}

/// Is this tar entry path a boot file? Only the path is judged; the caller checks that the entry
/// is a regular file. Accepted: `vmlinuz*` / `initrd.img*` not ending in `.old`, directly in
/// `boot/` or at the layer root, with or without a leading `/` or `./`.
#[must_use]
pub fn classify(path_in_layer: &Path) -> Option<BootKind> {
    let normal = normalize(path_in_layer)?;
    let mut comps = normal.components();
    let name = match (comps.next(), comps.next(), comps.next()) {
        (Some(name), None, None) => name,
        (Some(dir), Some(name), None) if dir.as_os_str() == "boot" => name,
        _ => return None,
    };
    let name = name.as_os_str().as_encoded_bytes();
    if name.ends_with(b".old") {
        return None;
    }
    if name.starts_with(b"vmlinuz") {
        Some(BootKind::Kernel)
    } else if name.starts_with(b"initrd.img") {
        Some(BootKind::Initrd)
    } else {
        None
    }
}

/// `path` without `/` and `.` components; `None` if it has a `..` component or is empty.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Order file names as versions: runs of digits compare numerically, everything else bytewise,
/// so `vmlinuz-6.10` sorts after `vmlinuz-6.9`.
#[must_use]
pub fn version_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].is_ascii_digit() && b[j].is_ascii_digit() {
            let (si, sj) = (i, j);
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let (da, db) = (trim_zeros(&a[si..i]), trim_zeros(&b[sj..j]));
            let ord = da.len().cmp(&db.len()).then_with(|| da.cmp(db));
            if ord != Ordering::Equal {
                return ord;
            }
        } else {
            if a[i] != b[j] {
                return a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
    }
    (a.len() - i).cmp(&(b.len() - j)).then_with(|| a.cmp(b))
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let first = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    &digits[first..]
}

/// Boot-file candidates of one layer: the regular files at boot-file paths of its final tree
/// (later entries and whiteouts already applied); the winner is picked at the end.
#[derive(Debug, Default)]
pub struct Candidates {
    kernels: BTreeSet<PathBuf>,
    initrds: BTreeSet<PathBuf>,
}

impl Candidates {
    /// Record a regular file at `path` (normalized, relative); returns its kind if it is a
    /// boot file.
    pub fn offer(&mut self, path: &Path) -> Option<BootKind> {
        let kind = classify(path)?;
        match kind {
            BootKind::Kernel => self.kernels.insert(path.to_path_buf()),
            BootKind::Initrd => self.initrds.insert(path.to_path_buf()),
        };
        Some(kind)
    }

    /// The winners: for each kind, the greatest file name in [`version_cmp`] order (ties, i.e.
    /// the same name in `boot/` and at the root, go to the greater path bytewise, `boot/…`).
    #[must_use]
    pub fn finish(&self) -> BootFiles {
        BootFiles {
            kernel: best(&self.kernels),
            initrd: best(&self.initrds),
        }
    }
}

fn best(set: &BTreeSet<PathBuf>) -> Option<PathBuf> {
    set.iter()
        .max_by(|a, b| {
            let name = |p: &Path| {
                p.file_name()
                    .map(|n| n.as_encoded_bytes().to_vec())
                    .unwrap_or_default()
            };
            version_cmp(&name(a), &name(b)).then_with(|| a.cmp(b))
        })
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_boot_paths() {
        for (p, want) in [
            ("boot/vmlinuz-6.1", Some(BootKind::Kernel)),
            ("/boot/vmlinuz-6.1", Some(BootKind::Kernel)),
            ("./boot/vmlinuz", Some(BootKind::Kernel)),
            ("vmlinuz", Some(BootKind::Kernel)),
            ("/initrd.img", Some(BootKind::Initrd)),
            ("boot/initrd.img-6.1.0-13-amd64", Some(BootKind::Initrd)),
            ("boot/vmlinuz.old", None),
            ("boot/initrd.img.old", None),
            ("usr/boot/vmlinuz", None),
            ("boot/efi/vmlinuz", None),
            ("boot/config-6.1", None),
            ("../boot/vmlinuz", None),
            ("boot", None),
            ("", None),
        ] {
            assert_eq!(classify(Path::new(p)), want, "{p}");
        }
    }

    #[test]
    fn version_order() {
        assert_eq!(
            version_cmp(b"vmlinuz-6.10", b"vmlinuz-6.9"),
            Ordering::Greater
        );
        assert_eq!(version_cmp(b"vmlinuz-6.1", b"vmlinuz-6.1"), Ordering::Equal);
        assert_eq!(version_cmp(b"vmlinuz-6.01", b"vmlinuz-6.1"), Ordering::Less);
        assert_eq!(version_cmp(b"vmlinuz", b"vmlinuz-6.1"), Ordering::Less);
        assert_eq!(version_cmp(b"a10", b"a9b"), Ordering::Greater);
    }

    #[test]
    fn picks_greatest() {
        let mut c = Candidates::default();
        for p in [
            "boot/vmlinuz-6.9",
            "boot/vmlinuz-6.10",
            "vmlinuz-5.0",
            "boot/initrd.img-6.9",
        ] {
            c.offer(Path::new(p));
        }
        assert_eq!(c.offer(Path::new("boot/config")), None);
        let got = c.finish();
        assert_eq!(got.kernel.as_deref(), Some(Path::new("boot/vmlinuz-6.10")));
        assert_eq!(
            got.initrd.as_deref(),
            Some(Path::new("boot/initrd.img-6.9"))
        );
    }
}
