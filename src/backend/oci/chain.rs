//! The chain rule (docs/design.md §11): which layers need an image that depends on their parents,
//! and what it patches. Pure functions over the layers' [`View`]s; no I/O.
//!
//! A layer that only implies a directory (adds `tmp/x` without `tmp/`) gets it as 0755
//! root:root from the writer; the overlay would show that over a base layer's 1777 `tmp`. When
//! the directories below show another mode, owner or xattrs, the layer gets a second image,
//! keyed by its chain ID, whose implied directories carry the merged lower attributes (mode,
//! owner, mtime, xattrs).
//! Under that rule an implied directory shows what is below it, so the merged attributes of a
//! path are those of the topmost layer that has it as an explicit directory, unless a layer in
//! between removes it (whiteout, a non-directory over it or over a parent, an opaque parent).

use crate::digest::Digest;
use crate::erofs::{View, ViewDir, ViewEntry};

/// containerd-style chain IDs over the layer digests (the compressed digests that name the
/// blobs, not diff IDs: no extra hash over the uncompressed stream): `chain(0) = digest(0)`,
/// `chain(n) = sha256(chain(n−1) + " " + digest(n))`, with `sha256:<hex>` strings.
#[must_use]
pub fn chain_ids(layers: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(layers.len());
    for d in layers {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::sha256_of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The proper ancestors of `path` (`""` is the root), root first.
fn ancestors(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let root = (!path.is_empty()).then_some(&path[..0]);
    root.into_iter().chain(
        path.iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(|(i, _)| &path[..i]),
    )
}

/// Whether a proper ancestor of `path` is an opaque directory of `view` (the layers below are
/// hidden there).
fn under_opaque(view: &View, path: &[u8]) -> bool {
    ancestors(path).any(|a| matches!(view.paths.get(a), Some(ViewEntry::Dir(d)) if d.opaque))
}

/// The attributes the merged layers `lowers` (bottom first) show for directory `path`, under the
/// chain rule; `None` if no layer has it as an explicit directory, a layer removes it, or a
/// layer's view is unknown (stored without one: nothing is assumed of it).
#[must_use]
pub fn lower_dir<'a>(lowers: &[Option<&'a View>], path: &[u8]) -> Option<&'a ViewDir> {
    for view in lowers.iter().rev() {
        let view = (*view)?;
        for a in ancestors(path) {
            if matches!(
                view.paths.get(a),
                Some(ViewEntry::Whiteout | ViewEntry::Other)
            ) {
                return None;
            }
        }
        match view.paths.get(path) {
            Some(ViewEntry::Dir(d)) if d.implied.is_none() => return Some(d),
            Some(ViewEntry::Whiteout | ViewEntry::Other) => return None,
            // Implied here: it shows what is below (unless this layer hides the layers below).
            Some(ViewEntry::Dir(_)) | None => {}
        }
        if under_opaque(view, path) {
            return None;
        }
    }
    None
}

/// The implied directories of layer `i` (by nid) to patch with the attributes of the layers
/// below, or nothing when none of them would show another mode, owner or xattrs: then the
/// layer's image does not depend on its parents. An mtime difference alone does not make a
/// chain image, but one that is made carries the lower mtimes too.
#[must_use]
pub fn patches(views: &[Option<View>], i: usize) -> Vec<(u64, ViewDir)> {
    let Some(view) = views.get(i).and_then(Option::as_ref) else {
        return Vec::new();
    };
    let lowers: Vec<Option<&View>> = views[..i].iter().map(Option::as_ref).collect();
    let mut out = Vec::new();
    let mut differs = false;
    for (path, own) in view.implied() {
        let Some(nid) = own.implied else { continue };
        if under_opaque(view, path) {
            continue;
        }
        let Some(lower) = lower_dir(&lowers, path) else {
            continue;
        };
        differs |= lower.decides() != own.decides();
        if (lower.decides(), lower.mtime, lower.mtime_nsec)
            != (own.decides(), own.mtime, own.mtime_nsec)
        {
            // The lower attributes, with this layer's own opaque marker.
            let patch = ViewDir {
                opaque: own.opaque,
                implied: own.implied,
                ..lower.clone()
            };
            out.push((nid, patch));
        }
    }
    if differs {
        out
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(mode: u32, implied: Option<u64>, opaque: bool) -> ViewEntry {
        ViewEntry::Dir(ViewDir {
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            opaque,
            implied,
            xattrs: std::collections::BTreeMap::new(),
        })
    }

    #[allow(clippy::unnecessary_wraps)] // the slots of `patches` are options
    fn view(entries: &[(&str, ViewEntry)]) -> Option<View> {
        let mut v = View::default();
        v.paths.insert(Vec::new(), dir(0o755, Some(1), false));
        for (p, e) in entries {
            v.paths.insert(p.as_bytes().to_vec(), e.clone());
        }
        Some(v)
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        let ids = chain_ids(&[a, b]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::sha256_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn an_implied_sticky_tmp_is_patched() {
        let base = view(&[("tmp", dir(0o1777, None, false))]);
        let upper = view(&[("tmp", dir(0o755, Some(7), false)), ("tmp/x", ViewEntry::Other)]);
        let views = [base, upper];
        let p = patches(&views, 1);
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].0, p[0].1.mode), (7, 0o1777));
        assert!(patches(&views, 0).is_empty(), "the base has nothing below");
    }

    #[test]
    fn implied_layers_in_between_show_what_is_below() {
        let base = view(&[("tmp", dir(0o1777, None, false))]);
        let mid = view(&[("tmp", dir(0o755, Some(3), false))]);
        let upper = view(&[("tmp", dir(0o755, Some(9), false))]);
        assert_eq!(patches(&[base, mid, upper], 2)[0].1.mode, 0o1777);
    }

    #[test]
    fn removals_and_unknowns_keep_the_layer_parent_independent() {
        let base = || view(&[("tmp", dir(0o1777, None, false))]);
        let upper = || view(&[("tmp", dir(0o755, Some(9), false))]);
        for mid in [
            view(&[("tmp", ViewEntry::Whiteout)]),
            view(&[("tmp", ViewEntry::Other)]),
            view(&[("", dir(0o755, Some(1), true))]),
            None,
        ] {
            assert!(patches(&[base(), mid, upper()], 2).is_empty());
        }
        // Only xattrs differ below: a chain image carrying them.
        let mut labelled = base();
        if let Some(ViewEntry::Dir(d)) = labelled
            .as_mut()
            .and_then(|v| v.paths.get_mut(&b"tmp"[..]))
        {
            d.mode = 0o755;
            d.xattrs
                .insert(b"security.selinux".to_vec(), b"tmp_t".to_vec());
        }
        let p = patches(&[labelled, upper()], 1);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.xattrs.len(), 1);
        // Same mode and owner below: no chain image.
        let same = view(&[("tmp", dir(0o755, None, false))]);
        assert!(patches(&[same, upper()], 1).is_empty());
        // The layer hides what is below its own opaque parent.
        let upper_opaque = view(&[
            ("a", dir(0o755, None, true)),
            ("a/tmp", dir(0o755, Some(4), false)),
        ]);
        let base_a = view(&[("a/tmp", dir(0o1777, None, false))]);
        assert!(patches(&[base_a, upper_opaque], 1).is_empty());
    }
}
