//! Hostile input: IDs, names and references with path tricks, control bytes and absurd
//! lengths, and qcow2 images that point outside themselves. Each is refused with an error (exit
//! 1 or 2, never a panic's 101), and nothing is created or changed in or outside the root.

use std::path::Path;
use std::process::{Command, Stdio};

use imgstore::store::Store;

use crate::cli_support::{bin, names, run, tree, Run};
use crate::crash::{new_root, raw_image};

/// Run the CLI in `cwd` (so a relative path trick would land there).
fn run_in(cwd: &Path, root: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("running imgstore");
    Run::from_output(&out)
}

fn hostile_strings() -> Vec<String> {
    vec![
        "../x".into(),
        "../../../../../../tmp/imgstore-hostile".into(),
        "/etc/passwd".into(),
        "a/../../b".into(),
        "./".into(),
        "..".into(),
        "sha256:../../".into(),
        "sha256:../../../etc/passwd".into(),
        format!("sha256:{}", "../".repeat(30)),
        "blobs/../db/images.json".into(),
        "file:///etc/passwd".into(),
        "http://".into(),
        "~root/.ssh".into(),
        "-".into(),
        " ".into(),
        "a\nb".into(),
        "\u{202e}gpj.exe".into(),
        "x".repeat(100_000),
        format!("sha256:{}", "a".repeat(100_000)),
        format!("{}:{}", "a".repeat(50_000), "b".repeat(50_000)),
    ]
}

/// Every command that takes an ID, a name or a reference refuses path tricks and huge strings
/// with an error and touches nothing: not the store (one real image in it), not the working
/// directory, not the directory holding the root.
#[test]
fn path_tricks_and_huge_strings_touch_nothing() {
    let outer = tempfile::tempdir().unwrap();
    let root = new_root(outer.path());
    let cwd = outer.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let disk = outer.path().join("disk.raw");
    raw_image(&disk, 256 << 10, 9);
    run(&root, &["import", "real", disk.to_str().unwrap()]).ok();
    // `/etc/passwd` as a file is a legitimate import source; a hostile *name* must not matter.
    let before_root = tree(&root);
    let before_outer = names(outer.path());

    for s in hostile_strings() {
        let s = s.as_str();
        let cases: Vec<Vec<&str>> = vec![
            vec!["inspect", s],
            vec!["rm", s],
            vec!["config", s],
            vec!["verify", s],
            vec!["pull", s],
            vec!["--root", s, "list"],
        ];
        for args in cases {
            let r = run_in(&cwd, &root, &args);
            let shown: String = format!("{args:?}").chars().take(120).collect();
            assert!(
                r.code == 1 || r.code == 2 || (args[0] == "--root" && r.code == 0),
                "{shown}: exit {}\n{}",
                r.code,
                r.stderr.chars().take(2000).collect::<String>()
            );
            assert!(
                !r.stderr.contains("panicked"),
                "{shown}: {}",
                r.stderr.chars().take(2000).collect::<String>()
            );
            if r.code != 0 {
                assert!(r.stderr.contains("error"), "{shown}: {}", r.stderr);
            }
        }
    }
    assert_eq!(tree(&root), before_root, "the store is unchanged");
    assert_eq!(names(outer.path()), before_outer, "nothing beside the root");
    // `--root <hostile>` may create that root relative to cwd (it is a path the user chose),
    // but list never writes: cwd stays empty.
    assert!(names(&cwd).is_empty(), "cwd untouched: {:?}", names(&cwd));
    assert!(!Path::new("/tmp/imgstore-hostile").exists());
    run(&root, &["verify"]).ok();
    run(&root, &["config", "real"]).ok();

    // As import *names*, the same strings are either refused or stored verbatim as index keys:
    // names are never used as paths, so nothing appears anywhere but in the index.
    let root2 = outer.path().join("root2");
    let mut stored = std::collections::BTreeSet::new();
    for s in hostile_strings() {
        let r = run_in(&cwd, &root2, &["import", &s, disk.to_str().unwrap()]);
        let shown: String = s.chars().take(60).collect();
        assert!(
            matches!(r.code, 0..=2),
            "{shown:?}: exit {}: {}",
            r.code,
            r.stderr.chars().take(2000).collect::<String>()
        );
        if r.code == 0 {
            stored.insert(s.clone());
        } else {
            assert!(r.stderr.contains("error: "), "{shown:?}: {}", r.stderr);
        }
    }
    let keys: std::collections::BTreeSet<String> = run(&root2, &["-o", "json", "list"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys, stored, "accepted names are stored verbatim");
    for k in &keys {
        assert!(k.len() <= 1024 && !k.chars().any(char::is_control), "{k:?}");
    }
    assert_eq!(
        names(&root2.join("cloudimg/blobs")).len(),
        usize::from(!keys.is_empty()),
        "one blob, however many names"
    );
    assert!(names(&cwd).is_empty(), "cwd untouched: {:?}", names(&cwd));
    let mut expected_outer = before_outer.clone();
    if !keys.is_empty() {
        expected_outer.push("root2".to_owned());
        expected_outer.sort();
    }
    assert_eq!(
        names(outer.path()),
        expected_outer,
        "nothing beside the roots"
    );
    run(&root2, &["verify"]).ok();
}

/// NUL bytes cannot travel through argv; through the library they are refused like any other
/// bad input, and nothing is written.
#[test]
fn nul_bytes_through_the_library() {
    let outer = tempfile::tempdir().unwrap();
    let root = new_root(outer.path());
    let disk = outer.path().join("disk.raw");
    raw_image(&disk, 256 << 10, 10);
    let store = Store::open(&root).unwrap();
    store
        .import("real", std::slice::from_ref(&disk), None)
        .expect("a plain import works");
    let before = tree(&root);
    for s in ["a\0b", "\0", "sha256:\0", "../\0/etc/passwd", "real\0"] {
        assert!(store.inspect(s).is_err(), "{s:?}");
        assert!(store.config(&[s]).is_err(), "{s:?}");
        assert!(store.remove(&[s]).is_err(), "{s:?}");
        assert!(store.pull_oci(s, false).is_err(), "{s:?}");
        let e = store
            .import(s, std::slice::from_ref(&disk), None)
            .unwrap_err();
        assert!(e.to_string().contains("invalid image name"), "{s:?}: {e}");
    }
    assert_eq!(tree(&root), before);
}

fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// qcow2 images that reach outside themselves or lie about their size are refused by `import`
/// naming the cause, and nothing is stored: no blob, no index, no temp debris, and the files
/// they point at are never opened for writing.
#[test]
fn hostile_qcow2_imports_store_nothing() {
    let outer = tempfile::tempdir().unwrap();
    let d = outer.path();
    let root = new_root(d);
    std::fs::write(d.join("secret"), b"do not read me").unwrap();
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "secret",
            "-F",
            "raw",
            "backing.qcow2",
            "1M",
        ],
    );
    qemu_img(
        d,
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "datafile.qcow2",
            "1M",
        ],
    );
    qemu_img(d, &["create", "-f", "qcow2", "huge.qcow2", "100T"]);
    let full = std::fs::read({
        qemu_img(d, &["create", "-f", "qcow2", "whole.qcow2", "1M"]);
        d.join("whole.qcow2")
    })
    .unwrap();
    std::fs::write(d.join("truncated.qcow2"), &full[..100]).unwrap();
    let secret_before = std::fs::read(d.join("secret")).unwrap();
    let data_before = std::fs::read(d.join("data.raw")).unwrap();

    for (file, cause) in [
        ("backing.qcow2", "backing"),
        ("datafile.qcow2", "data file"),
        ("huge.qcow2", "virtual size"),
        ("truncated.qcow2", "truncated header"),
    ] {
        let p = d.join(file);
        let r = run(&root, &["import", "evil", p.to_str().unwrap()]).fails();
        assert!(
            r.stderr.to_lowercase().contains(cause),
            "{file}: the error names the cause ({cause}): {}",
            r.stderr
        );
        assert!(names(&root.join("cloudimg/blobs")).is_empty(), "{file}");
        assert!(!root.join("cloudimg/db/images.json").exists(), "{file}");
        let temp: Vec<String> = names(&root.join("cloudimg/temp"))
            .into_iter()
            .filter(|n| Path::new(n).extension().is_none_or(|e| e != "lock"))
            .collect();
        assert!(temp.is_empty(), "{file}: temp debris {temp:?}");
    }
    assert_eq!(std::fs::read(d.join("secret")).unwrap(), secret_before);
    assert_eq!(std::fs::read(d.join("data.raw")).unwrap(), data_before);
    run(&root, &["-o", "json", "list"]).ok();
}
