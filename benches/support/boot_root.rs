//! A store root with `n` images for the boot-path benchmarks, written directly (no imports):
//! index files as imgstore writes them (generation token first, recorded sums), and files only
//! for the one image the benchmarks query (sparse, with the recorded sizes).

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (splitmix64), so every run sees the same IDs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn hex(&mut self) -> String {
        let mut s = String::with_capacity(64);
        for _ in 0..4 {
            let _ = write!(s, "{:016x}", self.next());
        }
        s
    }
}

/// What the benchmarks ask for: one oci image by exact key, by a short reference that only
/// its canonical form matches, and by a 12-hex prefix of its ID.
#[derive(Debug, Clone)]
pub struct Queries {
    /// The exact index key.
    pub name: String,
    /// A short reference (`img-0000042:v1`) whose canonical form is the key.
    pub reference: String,
    /// 12 hex digits of the image ID.
    pub prefix: String,
}

fn sums(rng: &mut Rng, size: u64) -> String {
    format!(
        r#"{{"sha256":"sha256:{}","blake3":"blake3:{}","size":{size}}}"#,
        rng.hex(),
        rng.hex()
    )
}

/// Write a root with `n` images (three quarters oci, one quarter cloud) under `root`.
pub fn generate(root: &Path, n: usize) -> Queries {
    let mut rng = Rng(n as u64);
    let n_cloud = n / 4;
    let n_oci = n - n_cloud;
    let target = n_oci / 2;
    let token = "5eed".repeat(8);
    let created = "2026-11-30T12:00:00.000000000Z";
    let db = root.join("oci/db");
    std::fs::create_dir_all(&db).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(db.join("images.json")).unwrap());
    write!(out, r#"{{"imgstore_generation":"{token}","images":{{"#).unwrap();
    let mut queries = None;
    for i in 0..n_oci {
        let key = format!("docker.io/library/img-{i:07}:v1");
        let id = rng.hex();
        let (l1, l2) = (rng.hex(), rng.hex());
        let (s1, s2, sk, si) = (4096 * (1 + i as u64 % 7), 8192, 1024, 2048);
        let (b1, b2, bk, bi) = (
            sums(&mut rng, s1),
            sums(&mut rng, s2),
            sums(&mut rng, sk),
            sums(&mut rng, si),
        );
        if i > 0 {
            out.write_all(b",").unwrap();
        }
        write!(
            out,
            r#""{key}":{{"ref":"{key}","manifest_digest":"sha256:{id}","layers":[{{"digest":"sha256:{l1}","blob":{b1}}},{{"digest":"sha256:{l2}","blob":{b2}}}],"kernel_layer":"sha256:{l2}","initrd_layer":"sha256:{l2}","size":{},"created_at":"{created}","kernel":{bk},"initrd":{bi}}}"#,
            s1 + s2
        )
        .unwrap();
        if i == target {
            let oci = root.join("oci");
            for (hex, size) in [(&l1, s1), (&l2, s2)] {
                sparse(&oci.join(format!("blobs/{hex}.erofs")), size);
            }
            sparse(&oci.join(format!("boot/{l2}/vmlinuz")), sk);
            sparse(&oci.join(format!("boot/{l2}/initrd.img")), si);
            queries = Some(Queries {
                reference: format!("img-{i:07}:v1"),
                name: key,
                prefix: id[..12].to_owned(),
            });
        }
    }
    out.write_all(b"}}\n").unwrap();
    out.into_inner().unwrap().sync_all().unwrap();

    let db = root.join("cloudimg/db");
    std::fs::create_dir_all(&db).unwrap();
    let mut out = std::io::BufWriter::new(std::fs::File::create(db.join("images.json")).unwrap());
    write!(out, r#"{{"imgstore_generation":"{token}","images":{{"#).unwrap();
    for i in 0..n_cloud {
        let key = format!("https://images.example.com/img-{i:07}.qcow2");
        let id = rng.hex();
        let size = 1 << 20;
        let blob = sums(&mut rng, size);
        if i > 0 {
            out.write_all(b",").unwrap();
        }
        write!(
            out,
            r#""{key}":{{"ref":"{key}","content_sum":"sha256:{id}","size":{size},"created_at":"{created}","blob":{blob}}}"#
        )
        .unwrap();
    }
    out.write_all(b"}}\n").unwrap();
    out.into_inner().unwrap().sync_all().unwrap();
    queries.expect("n > 0")
}

fn sparse(path: &Path, size: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// A root of `n` images under `base`, generated once and reused (its queries are recomputed,
/// which is cheap next to writing a million entries, by generating into a scratch name only
/// when the root is missing).
pub fn root(base: &Path, n: usize) -> (PathBuf, Queries) {
    let dir = base.join(format!("boot-path-{n}"));
    let done = dir.join(".complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let q = generate(&dir, n);
        std::fs::write(
            &done,
            format!("{}\n{}\n{}\n", q.name, q.reference, q.prefix),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(&done).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    let q = Queries {
        name: lines.next().unwrap(),
        reference: lines.next().unwrap(),
        prefix: lines.next().unwrap(),
    };
    (dir, q)
}
