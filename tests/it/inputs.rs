//! What `import` reads and under which names it stores it, through the built binary: every
//! source (file, FIFO, pipe, `/dev/stdin`, process substitution) is read exactly once and stored
//! under its own digest, devices are refused, a pinned digest must match, a `.tar.zst` layer is
//! seen through, a file truncated mid-import is a clean error, and the messages name the input.
//!
//! Every failure checks exit status 1, a message naming the input and the cause, and a store
//! left as it was (no blob, no index change, no temp debris).

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use imgstore::Digest;
use serde_json::Value;

use crate::cli_support::{bin, names, run, Run};
use crate::cloudimg::qemu_img;
use crate::oci_image::{host_and_other_arch, ImageBuilder, Layer, LayerBuilder, OciLayout};

struct Env {
    td: tempfile::TempDir,
    root: PathBuf,
}

impl Env {
    fn new() -> Self {
        let td = tempfile::tempdir().unwrap();
        let root = td.path().join("root");
        Self { td, root }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.td.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Run {
        run(&self.root, args)
    }

    /// `bash -c SCRIPT` with `$IMGSTORE` and `$ROOT` set, killed (and the test failed) if it has
    /// not finished after 5 minutes: a hang is the bug some of these tests look for.
    fn bash(&self, script: &str) -> Run {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(script)
            .env("IMGSTORE", bin())
            .env("ROOT", &self.root)
            .current_dir(self.td.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(child.id().cast_signed()),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = child.wait();
                panic!("`{script}` hung");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        Run::from_output(&out)
    }

    /// Blobs of both backends, index files, and temp entries other than lock files.
    fn state(&self) -> Vec<String> {
        let mut out = Vec::new();
        for kind in ["oci", "cloudimg"] {
            for n in names(&self.root.join(kind).join("blobs")) {
                out.push(format!("{kind}/blobs/{n}"));
            }
            if let Ok(b) = fs::read(self.root.join(kind).join("db/images.json")) {
                out.push(format!("{kind}/db/images.json {}", Digest::sha256_of(&b)));
            }
            for n in names(&self.root.join(kind).join("temp")) {
                if Path::new(&n).extension().is_none_or(|e| e != "lock") {
                    out.push(format!("{kind}/temp/{n}"));
                }
            }
        }
        out
    }

    /// Exit 1, stderr names every one of `mentions`, and the store is as `before`.
    #[track_caller]
    fn assert_refused(&self, before: &[String], r: Run, mentions: &[&str]) {
        let r = r.fails();
        eprintln!("{}", r.stderr.trim_end());
        for m in mentions {
            assert!(
                r.stderr.contains(m),
                "stderr should mention {m:?}: {}",
                r.stderr
            );
        }
        assert_eq!(self.state(), before, "a refused import changed the store");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `sha256sum FILE`, as a digest.
fn sha256sum(path: &Path) -> Digest {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
        .parse()
        .unwrap()
}

fn id_of(r: &Run) -> Digest {
    r.json()["id"].as_str().unwrap().parse().unwrap()
}

/// A qcow2 v3 image (stored as it is, so the blob is the source byte for byte).
fn qcow2(env: &Env) -> PathBuf {
    let raw = env.path("disk.raw");
    let data: Vec<u8> = (0..3 << 20).map(|i: usize| (i * 7 % 253) as u8).collect();
    fs::write(&raw, data).unwrap();
    let out = env.path("disk.qcow2");
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            s(&raw),
            s(&out),
        ],
        env.td.path(),
    );
    out
}

/// One layer with a kernel and an initrd: a bootable image on its own.
fn boot_layer(tag: &str) -> Layer {
    LayerBuilder::new()
        .dir("boot")
        .file("boot/vmlinuz", format!("kernel {tag}\n"))
        .file("boot/initrd.img", format!("initrd {tag}\n"))
        .file("etc/hostname", format!("{tag}\n"))
        .build()
}

fn write(env: &Env, name: &str, bytes: &[u8]) -> PathBuf {
    let p = env.path(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// The layer digests of a stored oci image.
fn layer_digests(env: &Env, name: &str) -> Vec<Digest> {
    let v = env.run(&["-o", "json", "inspect", name]).ok().json();
    v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["role"] == "layer")
        .map(|b| b["key"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// Issue 11 item 1: the type sniff read the first bytes of a pipe, then opened the path again,
/// so `<(cat disk.qcow2)` and `cat disk.qcow2 | import q /dev/stdin` lost 512 bytes: a qcow2 was
/// stored as "raw" under a digest that was not the source's. Each way in now stores the
/// source's exact digest (`sha256sum`), as a qcow2.
#[test]
fn pipes_fifos_and_process_substitution_store_the_source_digest() {
    let env = Env::new();
    let disk = qcow2(&env);
    let want = sha256sum(&disk);
    let fifo = env.path("disk.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (name, script) in [
        (
            "subst",
            r#""$IMGSTORE" --root "$ROOT" -o json import subst <(cat disk.qcow2)"#,
        ),
        (
            "devstdin",
            r#"cat disk.qcow2 | "$IMGSTORE" --root "$ROOT" -o json import devstdin /dev/stdin"#,
        ),
        (
            "piped",
            r#"cat disk.qcow2 | "$IMGSTORE" --root "$ROOT" -o json import piped"#,
        ),
        (
            "fifo",
            r#"cat disk.qcow2 > disk.fifo & "$IMGSTORE" --root "$ROOT" -o json import fifo disk.fifo"#,
        ),
        (
            "redirected",
            r#""$IMGSTORE" --root "$ROOT" -o json import redirected /dev/stdin < disk.qcow2"#,
        ),
    ] {
        let r = env.bash(script).ok();
        assert_eq!(id_of(&r), want, "{name}: {}", r.stderr);
        assert_eq!(r.json()["type"], "cloudimg", "{name}");
    }
    let blob = env
        .root
        .join(format!("cloudimg/blobs/{}.qcow2", want.hex()));
    assert_eq!(
        sha256sum(&blob),
        want,
        "the qcow2 is stored as it is, header and all"
    );
    assert_eq!(names(&env.root.join("cloudimg/blobs")).len(), 1);
}

/// Issue 11 item 1: a layer tar given as a FIFO was hashed (draining the FIFO), then opened
/// again for conversion under its digest lock, and hung there forever. It is now read once,
/// into the store, before any lock; the same holds for a layer on stdin and in `<(…)`.
#[test]
fn layer_tars_from_fifos_pipes_and_stdin_import_once() {
    let env = Env::new();
    let layer = boot_layer("fifo");
    write(&env, "layer.tar.gz", &layer.gz);
    let want = sha256sum(&env.path("layer.tar.gz"));
    let fifo = env.path("layer.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (name, script) in [
        (
            "fifo",
            r#"cat layer.tar.gz > layer.fifo & "$IMGSTORE" --root "$ROOT" import fifo layer.fifo"#,
        ),
        (
            "subst",
            r#""$IMGSTORE" --root "$ROOT" import subst <(cat layer.tar.gz)"#,
        ),
        (
            "piped",
            r#"cat layer.tar.gz | "$IMGSTORE" --root "$ROOT" import piped"#,
        ),
        (
            "devstdin",
            r#"cat layer.tar.gz | "$IMGSTORE" --root "$ROOT" import devstdin /dev/stdin"#,
        ),
    ] {
        env.bash(script).ok();
        assert_eq!(layer_digests(&env, name), vec![want], "{name}");
    }
    assert_eq!(names(&env.root.join("oci/blobs")).len(), 1);
    env.run(&["verify"]).ok();
}

/// Issue 11 item 1: devices are refused by name, before anything is read or stored: `/dev/zero`
/// never ends, and a redirected stdin that is a device is named as such. Each run is capped at
/// 64 MiB of written file (`ulimit -f`): without the fix, importing `/dev/zero` fills the disk.
#[test]
fn devices_are_refused_by_name() {
    let env = Env::new();
    let before = env.state();
    let cap = "ulimit -f 65536;";
    let r = env.bash(&format!(
        r#"{cap} "$IMGSTORE" --root "$ROOT" import zero /dev/zero"#
    ));
    env.assert_refused(&before, r, &["/dev/zero", "character device"]);
    let r = env.bash(&format!(
        r#"{cap} "$IMGSTORE" --root "$ROOT" import zero < /dev/zero"#
    ));
    env.assert_refused(&before, r, &["stdin", "/dev/zero", "character device"]);
    let r = env.bash(&format!(
        r#"{cap} "$IMGSTORE" --root "$ROOT" import zero /dev/stdin < /dev/zero"#
    ));
    env.assert_refused(&before, r, &["/dev/stdin", "character device"]);
}

/// Issue 11 item 2: `import reg.example/app@sha256:X layer.tar` stored an image whose ID was
/// not X under that pinned name. A name carrying a digest must now match the image's ID, for
/// oci and cloud images alike.
#[test]
fn a_pinned_digest_must_match_the_image() {
    let env = Env::new();
    let layer = write(&env, "layer.tar", &boot_layer("pin").tar);
    let wrong = Digest::sha256_of(b"some other image");
    let before = env.state();
    let pinned = format!("reg.example/app@{wrong}");
    env.assert_refused(
        &before,
        env.run(&["import", &pinned, s(&layer)]),
        &[&pinned, "pins", "must match"],
    );
    let disk = qcow2(&env);
    let cloud_pinned = format!("disk@{wrong}");
    env.assert_refused(
        &before,
        env.run(&["import", &cloud_pinned, s(&disk)]),
        &[&cloud_pinned, "pins"],
    );

    // The right digest is accepted.
    let id = id_of(&env.run(&["-o", "json", "import", "plain", s(&layer)]).ok());
    let pinned = format!("reg.example/app@{id}");
    let r = env.run(&["-o", "json", "import", &pinned, s(&layer)]).ok();
    assert_eq!(id_of(&r), id);
    let disk_id = sha256sum(&disk);
    let r = env
        .run(&["-o", "json", "import", &format!("disk@{disk_id}"), s(&disk)])
        .ok();
    assert_eq!(id_of(&r), disk_id);
}

/// Issue 11 item 4: a single `.tar.zst` layer was classified "zstd, not a qcow2 or raw disk
/// image" (gzip was sniffed through, zstd was not). It is decoded in-process and imported.
#[test]
fn a_single_zstd_layer_is_imported() {
    let env = Env::new();
    let layer = boot_layer("zstd");
    let zst = write(
        &env,
        "layer.tar.zst",
        &zstd::stream::encode_all(&layer.tar[..], 3).unwrap(),
    );
    let r = env.run(&["-o", "json", "import", "zst", s(&zst)]).ok();
    assert_eq!(r.json()["type"], "oci");
    assert_eq!(layer_digests(&env, "zst"), vec![sha256sum(&zst)]);
    let config = env.run(&["-o", "json", "config", "zst"]).ok().json();
    let kernel = config[0]["boot"]["kernel_path"].as_str().unwrap();
    assert_eq!(fs::read_to_string(kernel).unwrap(), "kernel zstd\n");
}

/// Whether process `pid` is hashing `path`: has it mapped, or has read at least 4 MiB of it
/// (past any type sniff, which looks at the first bytes only).
fn hashing(pid: u32, path: &Path) -> bool {
    let mapped = fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.contains(path.to_str().unwrap()));
    let reading = fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|t| t == path))
        .any(|e| {
            let info = format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy());
            fs::read_to_string(info).is_ok_and(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("pos:"))
                    .and_then(|p| p.trim().parse::<u64>().ok())
                    .is_some_and(|pos| pos >= 4 << 20)
            })
        });
    mapped || reading
}

/// mmap of files the store does not own: a layer tar was memory-mapped for hashing, and another
/// process truncating it killed the import with SIGBUS. User files are now read, and a file
/// that shrinks while it is read is a clean error naming it; nothing is published.
#[test]
fn a_layer_tar_truncated_during_its_import_fails_cleanly() {
    let env = Env::new();
    // A gzip layer (stored, not compressed: large enough that hashing it takes a while)
    // holding one 768 MiB file of zeros. gzip, because a plain tar is first scanned for an
    // oci-archive by reading it through, and the truncation must hit the hashing.
    let tar = env.path("big.tar.gz");
    let size: u64 = 768 << 20;
    {
        let mut h = tar::Header::new_gnu();
        h.set_path("big").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        let f = std::io::BufWriter::new(fs::File::create(&tar).unwrap());
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::none());
        gz.write_all(h.as_bytes()).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(size >> 20) {
            gz.write_all(&zeros).unwrap();
        }
        gz.write_all(&zeros[..1024]).unwrap();
        gz.finish()
            .unwrap()
            .into_inner()
            .unwrap()
            .sync_all()
            .unwrap();
    }
    let before = env.state();
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(&env.root)
        .args(["import", "big", s(&tar)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !hashing(child.id(), &tar) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "import ended before reading the tar"
        );
        assert!(Instant::now() < deadline, "import never read the tar");
        std::thread::sleep(Duration::from_millis(1));
    }
    fs::OpenOptions::new()
        .write(true)
        .open(&tar)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let r = Run::from_output(&out);
    assert!(
        out.status.code().is_some(),
        "killed by a signal: {:?}",
        out.status
    );
    env.assert_refused(&before, r, &[s(&tar), "changed while it was read"]);
}

/// Messages: with several inputs, the one that fails is named: a disk image among layer tars,
/// and a corrupt layer among good ones (it used to be "reading layer tar: …", no file).
#[test]
fn the_failing_input_is_named() {
    let env = Env::new();
    let good = write(&env, "good.tar.gz", &boot_layer("good").gz);
    let disk = qcow2(&env);
    let before = env.state();
    env.assert_refused(
        &before,
        env.run(&["import", "mixed", s(&good), s(&disk)]),
        &[s(&disk), "qcow2", "not a layer tar"],
    );
    let gz = boot_layer("broken").gz;
    let broken = write(&env, "broken.tar.gz", &gz[..gz.len() / 2]);
    env.assert_refused(
        &before,
        env.run(&["import", "broken", s(&good), s(&broken)]),
        &[s(&broken)],
    );
}

/// Messages: an OCI layout holding several tags is refused without a choice (listing them),
/// and `DIR:TAG` picks one, as skopeo's `oci:` transport does.
#[test]
fn a_layout_tag_is_chosen_as_dir_colon_tag() {
    let env = Env::new();
    let arch = host_and_other_arch().0;
    let dir = env.path("layout");
    let mut layout = OciLayout::create(&dir);
    let v1 = layout.add_image("v1", &ImageBuilder::sample(arch));
    let v2 = layout.add_image(
        "v2",
        &ImageBuilder::new(arch).layer(
            LayerBuilder::new()
                .dir("boot")
                .file("boot/vmlinuz", "kernel v2\n")
                .file("boot/initrd.img", "initrd v2\n"),
        ),
    );
    let before = env.state();
    env.assert_refused(
        &before,
        env.run(&["import", "which", s(&dir)]),
        &[s(&dir), "v1, v2", ":TAG"],
    );
    env.assert_refused(
        &before,
        env.run(&["import", "which", &format!("{}:v3", s(&dir))]),
        &[s(&dir), "\"v3\"", "v1, v2"],
    );
    let r = env
        .run(&["-o", "json", "import", "two", &format!("{}:v2", s(&dir))])
        .ok();
    assert_eq!(id_of(&r), v2.manifest_digest);
    let r = env
        .run(&["-o", "json", "import", "one", &format!("{}:v1", s(&dir))])
        .ok();
    assert_eq!(id_of(&r), v1.manifest_digest);
}

/// Messages: names with bidi controls or zero-width characters read as something they are not
/// (`evil\u{202E}gpj.exe` shows as `evilexe.jpg`); they are refused.
#[test]
fn invisible_characters_in_names_are_refused() {
    let env = Env::new();
    let disk = qcow2(&env);
    let before = env.state();
    for name in [
        "evil\u{202E}gpj.exe",
        "ub\u{200B}untu",
        "\u{FEFF}app",
        "a\u{2067}b",
    ] {
        env.assert_refused(
            &before,
            env.run(&["import", name, s(&disk)]),
            &["invalid image name", "invisible"],
        );
    }
}

/// Messages: one reference names one image across both backends. A cloud image may not take a
/// name an oci image answers to (in any spelling), nor the reverse.
#[test]
fn one_reference_names_one_image_across_backends() {
    let env = Env::new();
    let layer = write(&env, "layer.tar", &boot_layer("refs").tar);
    let disk = qcow2(&env);
    env.run(&["import", "myapp", s(&layer)]).ok();
    let before = env.state();
    for spelling in ["myapp", "docker.io/library/myapp:latest", "library/myapp"] {
        env.assert_refused(
            &before,
            env.run(&["import", spelling, s(&disk)]),
            &[
                spelling,
                "already names the oci image docker.io/library/myapp:latest",
            ],
        );
    }
    env.run(&["import", "other:1.0", s(&disk)]).ok();
    let before = env.state();
    env.assert_refused(
        &before,
        env.run(&["import", "docker.io/library/other:1.0", s(&layer)]),
        &["already names the cloudimg image other:1.0"],
    );
    // Each still answers by its name, to one image.
    let listed: Vec<Value> = env
        .run(&["-o", "json", "list"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
}
