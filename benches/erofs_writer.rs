//! `erofs_writer`: a layer tar of this machine's own `/usr` (about 870 MB, about 9,000 files,
//! sampled in path order) to an EROFS image, by the in-process writer (`imgstore::erofs::write`)
//! against the path it replaced (unpack into a temp tree with GNU tar, then `mkfs.erofs` and
//! `fsck.erofs`, as `backend::oci::erofs::convert_layer` did before c23eca8's successor), in the same run, alternating, 3 rounds; medians and their
//! ratio are printed. The writer is also timed followed by `fsck.erofs`, for a like-for-like
//! comparison with a conversion that checks its output.
//!
//! Today's path needs root (owners, whiteouts); the tar is built once under the target dir and
//! reused. Run: `nice -n 10 cargo bench --bench erofs_writer`.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imgstore::erofs::{self, Options};
use imgstore::Digest;

const MAX_BYTES: u64 = 870_000_000;
const MAX_FILES: u64 = 9_000;

/// The replaced path: unpack into a temp tree (GNU tar, as root: owners kept), `mkfs.erofs`
/// with all timestamps 0 and the digest's UUID, then `fsck.erofs`.
fn unpack_and_mkfs(tar: &Path, digest: &Digest, work: &Path, out: &Path) {
    let root = work.join("root");
    fs::create_dir_all(&root).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("tar")
        .args(["--numeric-owner", "-xpf"])
        .arg(tar)
        .arg("-C")
        .arg(&root));
    let h = digest.hex();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    run(Command::new("mkfs.erofs")
        .args(["--quiet", "-T0", &format!("-U{uuid}")])
        .arg(out)
        .arg(&root));
    run(Command::new("fsck.erofs").arg(out));
}

/// Files under /usr in path order, up to the caps, as a tar (built once).
fn source_tar(dir: &Path) -> PathBuf {
    let path = dir.join("usr-layer.tar");
    if path.exists() {
        return path;
    }
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::from("/usr")];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for p in entries.into_iter().rev() {
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() || m.file_type().is_symlink() => files.push((p, m.len())),
                _ => {}
            }
        }
    }
    files.sort();
    // /usr averages ~45 KB a file; a ~97 KB average (870 MB / 9,000) takes every 4th file of
    // 4 KiB or more and every 40th smaller one, in path order, until a cap is reached.
    let (mut big, mut small) = (0u64, 0u64);
    files.retain(|(_, len)| {
        let n = if *len >= 4096 { &mut big } else { &mut small };
        *n += 1;
        *n % if *len >= 4096 { 4 } else { 40 } == 0
    });
    let tmp = dir.join("usr-layer.tar.tmp");
    let mut b = tar::Builder::new(BufWriter::new(File::create(&tmp).unwrap()));
    b.follow_symlinks(false);
    let (mut bytes, mut count) = (0u64, 0u64);
    for (p, len) in files {
        if bytes >= MAX_BYTES || count >= MAX_FILES {
            break;
        }
        if len > 64 << 20 {
            continue;
        }
        let name = p.strip_prefix("/").unwrap();
        if b.append_path_with_name(&p, name).is_ok() {
            bytes += len;
            count += 1;
        }
    }
    b.into_inner()
        .unwrap()
        .into_inner()
        .unwrap()
        .sync_all()
        .unwrap();
    fs::rename(&tmp, &path).unwrap();
    println!(
        "built {}: {count} entries, {bytes} bytes of files",
        path.display()
    );
    path
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / `cargo bench -- --list`
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-erofs");
    fs::create_dir_all(&dir).unwrap();
    let tar = source_tar(&dir);
    let digest = Digest::sha256([7; 32]);
    let tar_len = fs::metadata(&tar).unwrap().len();
    println!("layer tar: {} ({tar_len} bytes)", tar.display());
    let (mut new, mut new_fsck, mut old) = (Vec::new(), Vec::new(), Vec::new());
    let out = dir.join("out.erofs");
    for round in 0..3 {
        let _ = fs::remove_file(&out);
        let t = Instant::now();
        let report = erofs::write(
            File::open(&tar).unwrap(),
            File::create(&out).unwrap(),
            &Options::for_layer(&digest),
        )
        .unwrap();
        let d = t.elapsed();
        let ok = Command::new("fsck.erofs").arg(&out).status().unwrap();
        assert!(ok.success());
        new_fsck.push(t.elapsed());
        new.push(d);
        let new_size = fs::metadata(&out).unwrap().len();
        fs::remove_file(&out).unwrap();

        let work = dir.join("work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        let t = Instant::now();
        unpack_and_mkfs(&tar, &digest, &work, &out);
        let d = t.elapsed();
        old.push(d);
        let old_size = fs::metadata(&out).unwrap().len();
        fs::remove_file(&out).unwrap();
        println!(
            "round {round}: writer {:.2?} ({} inodes, {new_size} bytes), writer+fsck {:.2?}, \
             unpack+mkfs.erofs+fsck {d:.2?} ({old_size} bytes)",
            new[round], report.inodes, new_fsck[round]
        );
    }
    let (n, nf, o) = (median(new), median(new_fsck), median(old));
    println!(
        "median: writer {n:.2?}, writer+fsck {nf:.2?}, today {o:.2?}; today/writer = {:.2}x, \
         today/(writer+fsck) = {:.2}x",
        o.as_secs_f64() / n.as_secs_f64(),
        o.as_secs_f64() / nf.as_secs_f64()
    );
}
