//! Tools for the EROFS writer tests: a tar builder over entry specs, the expected tree those
//! specs describe (tar semantics: later wins, whiteouts, opaque dirs), a kernel mount guard, and
//! the listing of a mounted tree (lstat, readlink, getxattr, blake3 of contents).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};

/// What an entry is.
#[derive(Debug, Clone)]
pub enum K {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hard(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry.
#[derive(Debug, Clone)]
pub struct E {
    pub path: String,
    pub kind: K,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub nsec: u32,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Write the path as a PAX `path` record instead of a GNU long name when it is > 100 bytes.
    pub pax_path: bool,
}

pub fn e(path: &str, kind: K) -> E {
    let mode = match kind {
        K::Dir => 0o755,
        K::Symlink(_) => 0o777,
        _ => 0o644,
    };
    E {
        path: path.to_owned(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        nsec: 0,
        xattrs: Vec::new(),
        pax_path: false,
    }
}

impl E {
    pub fn mode(mut self, m: u32) -> Self {
        self.mode = m;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, s: u64, nsec: u32) -> Self {
        self.mtime = s;
        self.nsec = nsec;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Self {
        self.xattrs.push((k.to_owned(), v.to_vec()));
        self
    }
    pub fn pax_path(mut self) -> Self {
        self.pax_path = true;
        self
    }
}

/// Build a tar from specs. Names ≤ 100 bytes go into the header verbatim (so `./a`, `a/`,
/// `../x` are written as given); longer ones as a GNU long name or a PAX `path` record.
pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, v) in &en.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if en.nsec != 0 {
            pax.push((
                "mtime".into(),
                format!("{}.{:09}", en.mtime, en.nsec).into(),
            ));
        }
        if en.uid > 0o7_777_777 || en.gid > 0o7_777_777 {
            pax.push(("uid".into(), en.uid.to_string().into()));
            pax.push(("gid".into(), en.gid.to_string().into()));
        }
        if let K::Symlink(t) | K::Hard(t) = &en.kind {
            if t.len() > 100 {
                pax.push(("linkpath".into(), t.clone().into()));
            }
        }
        let long = en.path.len() > 100;
        if long && en.pax_path {
            pax.push(("path".into(), en.path.clone().into()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = Header::new_gnu();
        let (kind, data): (EntryType, &[u8]) = match &en.kind {
            K::Dir => (EntryType::Directory, b""),
            K::File(d) => (EntryType::Regular, d),
            K::Symlink(_) => (EntryType::Symlink, b""),
            K::Hard(_) => (EntryType::Link, b""),
            K::Char(..) => (EntryType::Char, b""),
            K::Block(..) => (EntryType::Block, b""),
            K::Fifo => (EntryType::Fifo, b""),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(en.mode);
        h.set_uid(en.uid.min(0o7_777_777));
        h.set_gid(en.gid.min(0o7_777_777));
        h.set_mtime(en.mtime);
        if let K::Char(ma, mi) | K::Block(ma, mi) = en.kind {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        if let K::Symlink(t) | K::Hard(t) = &en.kind {
            h.set_link_name_literal(&t[..t.len().min(100)]).unwrap();
        }
        if long && !en.pax_path {
            // The builder writes a GNU `././@LongLink` entry for us.
            h.set_cksum();
            b.append_data(&mut h, &en.path, data).unwrap();
            continue;
        }
        let name = if long { &en.path[..100] } else { &en.path };
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// What a path should look like once mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Full `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub nsec: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub what: What,
    /// Hard-link group: paths with the same group share an inode.
    pub group: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Dir,
    File { size: u64, blake3: [u8; 32] },
    Symlink(String),
    Dev(u32, u32),
    Fifo,
}

fn norm(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The tree a tar of `entries` extracts to (for well-formed entries): the test's own model.
#[allow(clippy::too_many_lines)] // one match over entry kinds reads best in one place
pub fn expected(entries: &[E]) -> BTreeMap<String, Want> {
    let mut m: BTreeMap<String, Want> = BTreeMap::new();
    let mut groups = 0usize;
    let implied = |m: &mut BTreeMap<String, Want>, p: &str, groups: &mut usize| {
        let parts: Vec<&str> = p.split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            m.entry(dir).or_insert_with(|| {
                *groups += 1;
                Want {
                    mode: 0o040_755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    nsec: 0,
                    xattrs: BTreeMap::new(),
                    what: What::Dir,
                    group: *groups,
                }
            });
        }
    };
    for en in entries {
        let p = norm(&en.path);
        let name = p.rsplit('/').next().unwrap_or("").to_owned();
        let parent = p.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        implied(&mut m, &p, &mut groups);
        groups += 1;
        let remove_under = |m: &mut BTreeMap<String, Want>, p: &str| {
            let prefix = format!("{p}/");
            m.retain(|k, _| k != p && !k.starts_with(&prefix));
        };
        if name == ".wh..wh..opq" {
            let d = m.get_mut(&parent).expect("opaque dir exists");
            d.xattrs
                .insert("trusted.overlay.opaque".into(), b"y".to_vec());
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = if parent.is_empty() {
                hidden.to_owned()
            } else {
                format!("{parent}/{hidden}")
            };
            remove_under(&mut m, &target);
            let w = Want {
                mode: 0o020_000,
                uid: en.uid as u32,
                gid: en.gid as u32,
                mtime: en.mtime.cast_signed(),
                nsec: en.nsec,
                xattrs: BTreeMap::new(),
                what: What::Dev(0, 0),
                group: groups,
            };
            m.insert(target, w);
            continue;
        }
        let (ty, what) = match &en.kind {
            K::Dir => (0o040_000, What::Dir),
            K::File(d) => (
                0o100_000,
                What::File {
                    size: d.len() as u64,
                    blake3: *blake3::hash(d).as_bytes(),
                },
            ),
            K::Symlink(t) => (0o120_000, What::Symlink(t.clone())),
            K::Char(a, b) => (0o020_000, What::Dev(*a, *b)),
            K::Block(a, b) => (0o060_000, What::Dev(*a, *b)),
            K::Fifo => (0o010_000, What::Fifo),
            K::Hard(t) => {
                let w = m[&norm(t)].clone();
                if m.get(&p) != Some(&w) {
                    remove_under(&mut m, &p);
                }
                m.insert(p, w);
                continue;
            }
        };
        let mut w = Want {
            mode: ty | (en.mode & 0o7777),
            uid: en.uid as u32,
            gid: en.gid as u32,
            mtime: en.mtime.cast_signed(),
            nsec: en.nsec,
            xattrs: en.xattrs.iter().cloned().collect(),
            what,
            group: groups,
        };
        if let Some(old) = m.get(&p) {
            if old.what == What::Dir && w.what == What::Dir {
                w.group = old.group;
                if let Some(v) = old.xattrs.get("trusted.overlay.opaque") {
                    w.xattrs.insert("trusted.overlay.opaque".into(), v.clone());
                }
                m.insert(p, w);
                continue;
            }
            remove_under(&mut m, &p);
        }
        if p.is_empty() {
            w.group = 0;
        }
        m.insert(p, w);
    }
    m.remove("");
    m
}

/// A path of a mounted tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub want: Want,
    pub ino: u64,
    pub nlink: u64,
}

/// List a mounted tree (the root itself excluded), reading every file.
pub fn listing(root: &Path) -> BTreeMap<String, Got> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for de in fs::read_dir(root.join(&rel)).unwrap() {
            let de = de.unwrap();
            let r = rel.join(de.file_name());
            let full = root.join(&r);
            let md = fs::symlink_metadata(&full).unwrap();
            let ft = md.mode() & 0o170_000;
            let what = match ft {
                0o040_000 => {
                    stack.push(r.clone());
                    What::Dir
                }
                0o100_000 => What::File {
                    size: md.len(),
                    blake3: hash_file(&full),
                },
                0o120_000 => What::Symlink(
                    String::from_utf8(
                        fs::read_link(&full)
                            .unwrap()
                            .as_os_str()
                            .as_bytes()
                            .to_vec(),
                    )
                    .unwrap(),
                ),
                0o020_000 | 0o060_000 => What::Dev(
                    nix::sys::stat::major(md.rdev()) as u32,
                    nix::sys::stat::minor(md.rdev()) as u32,
                ),
                _ => What::Fifo,
            };
            let mut xattrs = BTreeMap::new();
            for k in xattr::list(&full).unwrap() {
                let v = xattr::get(&full, &k).unwrap().unwrap_or_default();
                xattrs.insert(k.to_string_lossy().into_owned(), v);
            }
            let want = Want {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                nsec: u32::try_from(md.mtime_nsec()).unwrap(),
                xattrs,
                what,
                group: 0,
            };
            out.insert(
                r.to_string_lossy().into_owned(),
                Got {
                    want,
                    ino: md.ino(),
                    nlink: md.nlink(),
                },
            );
        }
    }
    out
}

pub fn hash_file(p: &Path) -> [u8; 32] {
    let mut f = fs::File::open(p).unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    *h.finalize().as_bytes()
}

/// Compare a mounted listing with the model, path by path; hard-link groups share an inode.
pub fn assert_matches(got: &BTreeMap<String, Got>, want: &BTreeMap<String, Want>) {
    let gk: Vec<_> = got.keys().collect();
    let wk: Vec<_> = want.keys().collect();
    assert_eq!(gk, wk, "mounted paths differ from the tar's");
    let mut ino_of_group: BTreeMap<usize, u64> = BTreeMap::new();
    let mut size_of_group: BTreeMap<usize, u64> = BTreeMap::new();
    for w in want.values() {
        *size_of_group.entry(w.group).or_default() += 1;
    }
    for (p, w) in want {
        let g = &got[p];
        let mut gw = g.want.clone();
        gw.group = w.group;
        assert_eq!(&gw, w, "{p}: mounted entry differs from the tar's");
        if !matches!(w.what, What::Dir) {
            let ino = *ino_of_group.entry(w.group).or_insert(g.ino);
            assert_eq!(ino, g.ino, "{p}: hard link has another inode");
            assert_eq!(g.nlink, size_of_group[&w.group], "{p}: link count");
        }
    }
    let mut inos: BTreeMap<u64, usize> = BTreeMap::new();
    for (p, g) in got {
        let group = want[p].group;
        if let Some(other) = inos.insert(g.ino, group) {
            assert_eq!(other, group, "{p}: shares an inode with an unrelated path");
        }
    }
}

/// A read-only kernel mount of an image, unmounted on drop. `None` (with the reason printed)
/// when not root.
pub struct Mount {
    pub dir: tempfile::TempDir,
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn mount(image: &Path) -> Option<Mount> {
    if !is_root() {
        eprintln!("skipping kernel mount of {}: not root", image.display());
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(image)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount -t erofs {} failed: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Mount { dir })
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `fsck.erofs --extract` (checks every file's data too) must accept the image.
pub fn fsck(image: &Path) {
    let out = Command::new("fsck.erofs")
        .arg("--extract")
        .arg(image)
        .output()
        .expect("fsck.erofs (erofs-utils) is installed");
    assert!(
        out.status.success(),
        "fsck.erofs rejected {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
