//! What the CLI prints: a closed stdout is a normal end, and messages read like a person wrote
//! them (malformed digests say why, `1 byte`, human durations, fractional duration options).

use std::process::{Command, Stdio};

use crate::cli_support::{bin, cocoon_root, cocoon_sizes_match, run};

/// Run `imgstore --root ROOT ARGS...` with stdout a pipe whose reader is already gone, as with
/// `imgstore list | head -0`: every write to stdout fails with EPIPE.
fn run_into_closed_pipe(root: &std::path::Path, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running imgstore");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `imgstore -o json list | head -1` printed "error: Broken pipe" and exited 1 (table mode
/// panicked in `println!` for other commands). A reader that stops early is a normal end: exit
/// 0, nothing on stderr, for every command that prints and for both formats.
#[test]
fn closed_stdout_is_a_normal_end() {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    cocoon_sizes_match(dir.path());
    let commands: &[&[&str]] = &[
        &["list"],
        &["verify"],
        &["inspect", "ubuntu:24.04"],
        &["config", "ubuntu:24.04", "win11"],
        &["ref", "ubuntu", "docker.io/library/alpine:3"],
        &["gc", "--dry-run"],
    ];
    for args in commands {
        for format in ["table", "json"] {
            let mut all = args.to_vec();
            all.extend(["-o", format]);
            let (code, stderr) = run_into_closed_pipe(dir.path(), &all);
            assert_eq!(code, 0, "{all:?}: exit {code}, stderr: {stderr}");
            assert!(stderr.is_empty(), "{all:?}: stderr: {stderr}");
        }
    }
    // The closed pipe changes nothing else: a real failure still fails, and a verify that
    // finds damage says so and exits 1 even though nobody reads its rows.
    std::fs::write(
        dir.path().join(format!(
            "oci/blobs/{}.erofs",
            "95cf1a2e1698fe3ca1fcc3f653119146b271d0b62e487ec264441e886a11bd06"
        )),
        b"",
    )
    .unwrap();
    for format in ["table", "json"] {
        let (code, stderr) = run_into_closed_pipe(dir.path(), &["verify", "-o", format]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("failed verification"), "{stderr}");
    }
    let (code, stderr) = run_into_closed_pipe(dir.path(), &["inspect", "no-such-image"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no-such-image"), "{stderr}");
    // And `rm` still removes what it was asked to even when nobody reads its report.
    let (code, stderr) = run_into_closed_pipe(dir.path(), &["rm", "win11", "-o", "json"]);
    assert_eq!(code, 0, "{stderr}");
    run(dir.path(), &["inspect", "win11"]).fails();
}

/// `inspect AAAA…` said "no image matches"; a query shaped like a digest that is not a valid one
/// says why, as `ref` does for a reference.
#[test]
fn malformed_digest_says_why() {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    let upper = "A".repeat(64);
    for cmd in ["inspect", "config", "rm", "verify"] {
        let r = run(dir.path(), &[cmd, &upper]).fails();
        assert!(
            r.stderr.contains("must be lowercase hex"),
            "{cmd}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(&upper), "{cmd}: {}", r.stderr);
    }
    let r = run(dir.path(), &["inspect", "sha256:0123456789zz"]).fails();
    assert!(r.stderr.contains("not a hex digit"), "{}", r.stderr);
    let r = run(dir.path(), &["inspect", &"a".repeat(65)]).fails();
    assert!(r.stderr.contains("more than 64 hex digits"), "{}", r.stderr);
    // A name that matches nothing keeps the plain message.
    let r = run(dir.path(), &["inspect", "no-such-image"]).fails();
    assert!(
        r.stderr.contains("no image matches \"no-such-image\""),
        "{}",
        r.stderr
    );
}

/// `--grace 1.5h` was refused (only whole numbers parsed); every duration option takes
/// fractions, and a bad one lists the accepted forms.
#[test]
fn durations_take_fractions_and_bad_ones_list_the_forms() {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    run(dir.path(), &["gc", "--dry-run", "--grace", "1.5h"]).ok();
    run(dir.path(), &["gc", "--dry-run", "--grace", "0.25d"]).ok();
    run(dir.path(), &["--lock-timeout", "0.5s", "list"]).ok();
    run(dir.path(), &["--lock-timeout", "1.5m", "list"]).ok();
    for (flag, bad) in [
        ("--grace", "1.5x"),
        ("--grace", "h"),
        ("--grace", "1..5h"),
        ("--lock-timeout", "-1s"),
        ("--lock-timeout", "ten"),
    ] {
        let arg = format!("{flag}={bad}");
        let args: Vec<&str> = if flag == "--grace" {
            vec!["gc", "--dry-run", &arg]
        } else {
            vec![&arg, "list"]
        };
        let r = run(dir.path(), &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        for form in ["ms, s, m, h or d", "1.5h", "90s", "fractions allowed"] {
            assert!(
                r.stderr.contains(form),
                "{args:?} lists {form}: {}",
                r.stderr
            );
        }
    }
}

/// A lock wait that times out said `timed out after 29.013µs`; it says how long in words.
#[test]
fn lock_timeout_reads_as_words() {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    let lock = dir.path().join("cloudimg/db/images.lock");
    let _held = imgstore::lock::lock_file(
        &lock,
        imgstore::lock::Mode::Exclusive,
        imgstore::LockWait::timeout(std::time::Duration::ZERO),
        &|_| {},
    )
    .unwrap();
    let r = run(dir.path(), &["--lock-timeout", "0", "rm", "win11"]).fails();
    assert!(r.stderr.contains("timed out after "), "{}", r.stderr);
    assert!(r.stderr.contains("images.lock"), "{}", r.stderr);
    // Words, not Debug's `29.013µs` / `1.05ms`: "less than a millisecond", "3 ms", "1.5 seconds".
    let waited = r.stderr.split("timed out after ").nth(1).unwrap();
    let waited = waited.split(" waiting").next().unwrap();
    let words: Vec<&str> = waited.split(' ').collect();
    let human = waited == "less than a millisecond"
        || matches!(words[..], [n, "ms" | "second" | "seconds"]
            if n.chars().all(|c| c.is_ascii_digit() || c == '.'));
    assert!(human, "a duration in words: {waited:?} in {}", r.stderr);
}

/// Sizes and counts: `1 byte`, never `1 bytes`; no `blob(s)` / `entr(ies)` outside gc's report.
#[test]
fn sizes_and_counts_read_like_words() {
    let dir = tempfile::tempdir().unwrap();
    cocoon_root(dir.path());
    let idx_path = dir.path().join("cloudimg/db/images.json");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let sum = format!("sha256:{}", "ab".repeat(32));
    idx["images"]["tiny"] = serde_json::json!({
        "ref": "tiny", "content_sum": sum, "size": 1, "created_at": "2026-01-01T00:00:00Z"
    });
    std::fs::write(&idx_path, serde_json::to_vec(&idx).unwrap()).unwrap();
    let blob = dir
        .path()
        .join(format!("cloudimg/blobs/{}.qcow2", "ab".repeat(32)));
    std::fs::write(&blob, b"Q").unwrap();
    let r = run(dir.path(), &["inspect", "tiny"]).ok();
    assert!(r.stdout.contains("size:       1 byte\n"), "{}", r.stdout);
    // A one-byte blob where the index records nine bytes: one file fails, in words.
    std::fs::write(&blob, b"QFI\xfbqcow2").unwrap();
    let r = run(dir.path(), &["verify", "tiny"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("expected 1 byte, found 9 bytes"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("1 file failed verification"),
        "{}",
        r.stderr
    );
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains("1 bytes") && !out.contains("(s)"), "{out}");
    }
}

/// The tool starts without Rust's runtime start-up (`src/main.rs`), which would keep
/// descriptors 0–2 open; it does so itself. Started with all three closed, an import waiting
/// for the index lock must hold `/dev/null` on them (not its lock file, which a message to
/// stderr would then be written into), and then import as usual.
#[test]
fn closed_standard_descriptors_are_kept_on_dev_null() {
    use imgstore::lock::{lock_file, LockWait, Mode};
    use imgstore::{Kind, Layout};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    // An empty store with its cloud index lock held by the test.
    run(&root, &["list"]).ok();
    let lock = Layout::new(&root).backend(Kind::CloudImg).index_lock_path();
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let held = lock_file(&lock, Mode::Exclusive, LockWait::no_wait(), &|_| {}).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "exec \"$0\" \"$@\" <&- >&- 2>&-"])
        .arg(bin())
        .arg("--root")
        .arg(&root)
        .args(["-o", "json", "import", "closed-fds"])
        .arg(&disk)
        .spawn()
        .expect("running imgstore through sh");
    // Wait until it holds the lock file open (it is then waiting for the lock).
    let fds = std::path::PathBuf::from(format!("/proc/{}/fd", child.id()));
    let holds_lock = || {
        std::fs::read_dir(&fds).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == lock))
        })
    };
    let start = std::time::Instant::now();
    while !holds_lock() {
        assert!(
            start.elapsed().as_secs() < 20,
            "the import never opened its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for fd in 0..=2 {
        let target = std::fs::read_link(fds.join(fd.to_string()));
        assert_eq!(
            target.ok(),
            Some(std::path::PathBuf::from("/dev/null")),
            "descriptor {fd}"
        );
    }
    drop(held);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let r = run(&root, &["verify", "closed-fds", "-o", "json"]).ok();
    assert!(r.stdout.contains("closed-fds"), "{}", r.stdout);
}
