//! A full disk: the store lives on a small tmpfs. Running out of space while staging, while
//! converting, or while rewriting the index fails cleanly: exit 1 naming the cause, no blob, the
//! old index intact, no temp debris.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli_support::{names, run, tree};
use crate::crash::raw_image;

/// A tmpfs mounted for the test's lifetime; unmounted (lazily) however the test ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) if this machine cannot mount one (not root, no
    /// `CAP_SYS_ADMIN`): the only skip in the suite.
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED full-disk test: mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED full-disk test: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Files in `dir` other than lock files (the temp area must hold nothing else after a failure).
fn non_lock_files(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
        .collect()
}

/// Fill the filesystem of `dir` until a write fails; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let chunk = vec![0xa5u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    p
}

#[track_caller]
fn says_disk_full(stderr: &str) {
    assert!(
        stderr.contains("No space left on device"),
        "the error names the full disk: {stderr}"
    );
    assert!(
        stderr.contains("the disk holding the store is full"),
        "the CLI says so in its own words: {stderr}"
    );
}

/// Imports that do not fit fail with "No space left on device" and leave the store as it was:
/// a source larger than the disk (fails while staging) and one that fits but whose qcow2
/// conversion does not (fails inside qemu-img).
#[test]
fn import_larger_than_the_disk_changes_nothing() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let small = src.path().join("small.raw");
    let medium = src.path().join("medium.raw");
    let big = src.path().join("big.raw");
    raw_image(&small, 1 << 20, 1);
    raw_image(&medium, 5 << 20, 2);
    raw_image(&big, 16 << 20, 3);
    let root = fs.path().join("root");
    run(&root, &["import", "small", small.to_str().unwrap()]).ok();
    let before = tree(&root);

    for (name, file) in [("big", &big), ("medium", &medium)] {
        let r = run(&root, &["import", name, file.to_str().unwrap()]).fails();
        says_disk_full(&r.stderr);
        assert_eq!(tree(&root), before, "{name}: the store is unchanged");
        let blobs = names(&root.join("cloudimg/blobs"));
        assert_eq!(blobs.len(), 1, "{name}: no new blob: {blobs:?}");
        let temp = non_lock_files(&root.join("cloudimg/temp"));
        assert!(temp.is_empty(), "{name}: temp debris {temp:?}");
    }
    run(&root, &["verify"]).ok();
    // The space is all free again: the small image can be stored under another name.
    run(&root, &["import", "again", small.to_str().unwrap()]).ok();
}

/// With the disk full, a command that must rewrite the index (`rm`) fails naming the cause;
/// the old index is intact and loadable, nothing is left in `db/`, and the same command works
/// once space is freed.
#[test]
fn index_write_on_a_full_disk_keeps_the_old_index() {
    let Some(fs) = Tmpfs::mount("8m") else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let small = src.path().join("small.raw");
    raw_image(&small, 1 << 20, 4);
    let root = fs.path().join("root");
    run(&root, &["import", "a", small.to_str().unwrap()]).ok();
    run(&root, &["import", "b", small.to_str().unwrap()]).ok();
    let index = root.join("cloudimg/db/images.json");
    let old = std::fs::read(&index).unwrap();
    // Replacing the previous backup frees its pages, which is just enough room for a write that
    // shrinks the index: without a backup the write needs a page the full disk does not have.
    std::fs::remove_file(root.join("cloudimg/db/images.json.bak")).unwrap();

    let filler = fill(fs.path());
    let r = run(&root, &["rm", "b"]).fails();
    says_disk_full(&r.stderr);
    assert_eq!(std::fs::read(&index).unwrap(), old, "index bytes unchanged");
    let listed = run(&root, &["-o", "json", "list"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let db = names(&root.join("cloudimg/db"));
    assert!(
        db.iter().all(|n| !crate::crash::is_tmp(n)),
        "no temp file left in db/: {db:?}"
    );
    // A dedup import needs space to stage its source: refused the same way, nothing changes.
    let r = run(&root, &["import", "c", small.to_str().unwrap()]).fails();
    says_disk_full(&r.stderr);
    assert_eq!(std::fs::read(&index).unwrap(), old);
    assert!(non_lock_files(&root.join("cloudimg/temp")).is_empty());

    std::fs::remove_file(filler).unwrap();
    run(&root, &["rm", "b"]).ok();
    let listed = run(&root, &["-o", "json", "list"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    run(&root, &["verify"]).ok();
}
