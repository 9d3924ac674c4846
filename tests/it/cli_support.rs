//! Shared test helpers: running the built binary, making cocoon-format roots.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The built `imgstore` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgstore"))
}

/// Result of one CLI run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn fails(self) -> Self {
        assert_eq!(
            self.code, 1,
            "expected exit 1\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains("error: "),
            "stderr names the error: {}",
            self.stderr
        );
        self
    }
}

impl Run {
    /// The exit code and output of a finished `imgstore` process.
    pub fn from_output(out: &Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Run `imgstore --root ROOT ARGS...` with no stdin.
pub fn run(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running imgstore");
    Run::from_output(&out)
}

/// Run with `stdin` bytes.
pub fn run_stdin(root: &Path, args: &[&str], stdin: &[u8]) -> Run {
    use std::io::Write;
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running imgstore");
    let mut si = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = si.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run::from_output(&out)
}

/// The shared fixtures directory (`../shared/fixtures/cocoon-v0.3.7`); `IMGSTORE_FIXTURES`
/// overrides it (a checkout elsewhere, e.g. a worktree).
pub fn fixtures() -> PathBuf {
    std::env::var_os("IMGSTORE_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/cocoon-v0.3.7"),
        PathBuf::from,
    )
}

/// Every file under `dir` with a digest of its bytes, sorted: a snapshot to compare
/// before/after. Lock files and lookup caches (`images.idx`) are left out: a read may create them.
pub fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "lock" || e == "idx") {
                // Taking a lock may create its file.
            } else if ft.is_file() {
                let sum = imgstore::Digest::sha256_of(&std::fs::read(&p).unwrap()).hex();
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    sum[..16].to_owned(),
                ));
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), String::new()));
            }
        }
    }
    out.sort();
    out
}

/// Names of entries directly in `dir` (empty if it doesn't exist).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A cocoon v0.3.7 root: the fixture index files plus blob and boot files for every entry.
pub fn cocoon_root(dir: &Path) {
    for kind in ["oci", "cloudimg"] {
        let db = dir.join(kind).join("db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::copy(
            fixtures().join(kind).join("db/images.json"),
            db.join("images.json"),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join(kind).join("blobs")).unwrap();
    }
    let oci: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("oci/db/images.json")).unwrap()).unwrap();
    for (_, e) in oci["images"].as_object().unwrap() {
        if e.is_null() {
            continue;
        }
        for l in e["layers"].as_array().unwrap() {
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            std::fs::write(
                dir.join(format!("oci/blobs/{hex}.erofs")),
                format!("erofs {hex}"),
            )
            .unwrap();
        }
        for k in ["kernel_layer", "initrd_layer"] {
            let hex = e[k].as_str().unwrap().trim_start_matches("sha256:");
            let boot = dir.join(format!("oci/boot/{hex}"));
            std::fs::create_dir_all(&boot).unwrap();
            std::fs::write(boot.join("vmlinuz"), b"kernel").unwrap();
            std::fs::write(boot.join("initrd.img"), b"initrd").unwrap();
        }
    }
    let cloud: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cloudimg/db/images.json")).unwrap())
            .unwrap();
    for (_, e) in cloud["images"].as_object().unwrap() {
        if e.is_null() {
            continue;
        }
        let hex = e["content_sum"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        std::fs::write(
            dir.join(format!("cloudimg/blobs/{hex}.qcow2")),
            b"QFI\xfbqcow2",
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.join("firmware")).unwrap();
    std::fs::write(dir.join("firmware/CLOUDHV.fd"), b"firmware").unwrap();
}

/// Make the `size` of every entry of a [`cocoon_root`] what cocoon would have recorded for the
/// files the helper wrote (the fixtures' sizes are those of real images): cloudimg, the blob's
/// size; oci, the sum of its layer blobs, kernel and initrd.
pub fn cocoon_sizes_match(dir: &Path) {
    let len = |p: PathBuf| std::fs::metadata(&p).unwrap().len();
    let hex = |v: &serde_json::Value| v.as_str().unwrap().trim_start_matches("sha256:").to_owned();
    let p = dir.join("oci/db/images.json");
    let mut oci: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    for (_, e) in oci["images"].as_object_mut().unwrap() {
        if e.is_null() {
            continue;
        }
        let mut size: u64 = e["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| len(dir.join(format!("oci/blobs/{}.erofs", hex(&l["digest"])))))
            .sum();
        size += len(dir.join(format!("oci/boot/{}/vmlinuz", hex(&e["kernel_layer"]))));
        size += len(dir.join(format!("oci/boot/{}/initrd.img", hex(&e["initrd_layer"]))));
        e["size"] = size.into();
    }
    std::fs::write(&p, serde_json::to_vec(&oci).unwrap()).unwrap();
    let p = dir.join("cloudimg/db/images.json");
    let mut cloud: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    for (_, e) in cloud["images"].as_object_mut().unwrap() {
        if e.is_null() {
            continue;
        }
        let size = len(dir.join(format!("cloudimg/blobs/{}.qcow2", hex(&e["content_sum"]))));
        e["size"] = size.into();
    }
    std::fs::write(&p, serde_json::to_vec(&cloud).unwrap()).unwrap();
}
