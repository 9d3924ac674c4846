//! Cloud image building blocks against the real `qemu-img` and a real HTTP server on 127.0.0.1.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imgstore::backend::cloudimg::{
    candidate_format, check_untrusted, convert, download, open, plan, qcow2_header, qemu_info,
    sniff, Error, Format, Limits, Plan, SNIFF_LEN,
};
use tempfile::TempDir;

use crate::http_server::{refused_url, Route, Server};

// ---------------------------------------------------------------------------------------------
// helpers

/// Run `qemu-img ARGS` in `cwd`; it must succeed.
pub(crate) fn qemu_img(args: &[&str], cwd: &Path) {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file of `len` bytes with a recognisable, non-zero pattern (so conversions carry data).
fn patterned(path: &Path, len: usize) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(path, data).unwrap();
}

fn head_of(path: &Path) -> Vec<u8> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .unwrap();
    head
}

/// `qemu-img compare` exit status 0 means identical guest-visible content.
fn identical(a: &Path, a_fmt: &str, b: &Path, b_fmt: &str) -> bool {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", a_fmt, "-F", b_fmt])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    out.status.success()
}

fn small_limits() -> Limits {
    Limits {
        max_virtual_size: 1 << 30,
        max_download: 1 << 20,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
    }
}

// ---------------------------------------------------------------------------------------------
// sniff

#[test]
fn sniff_table() {
    let mut tar_head = vec![0u8; 512];
    tar_head[257..262].copy_from_slice(b"ustar");
    let mut vdi_head = b"<<< Oracle VM VirtualBox Disk Image >>>\n".to_vec();
    vdi_head.resize(64, 0);
    vdi_head.extend_from_slice(b"\x7f\x10\xda\xbe");
    let mut mbr = vec![0u8; 512];
    mbr[0..3].copy_from_slice(b"\xeb\x63\x90");
    mbr[510..512].copy_from_slice(b"\x55\xaa");
    let cases: &[(&[u8], Format)] = &[
        (b"QFI\xfb\x00\x00\x00\x02rest", Format::Qcow2),
        (b"QFI\xfb\x00\x00\x00\x03rest", Format::Qcow2),
        (
            b"QFI\xfb\x00\x00\x00\x01rest",
            Format::Rejected("qcow (version 1)"),
        ),
        (
            b"QFI\xfb\x00\x00\x00\x07rest",
            Format::Rejected("qcow of an unknown version"),
        ),
        (b"QFI\xfb", Format::Rejected("truncated qcow2")),
        (b"<!DOCTYPE html><html>", Format::Rejected("HTML")),
        (b"<!doctype HTML>", Format::Rejected("HTML")),
        (
            b"\xef\xbb\xbf \r\n\t<HTML lang=en>",
            Format::Rejected("HTML"),
        ),
        (b"   <html>", Format::Rejected("HTML")),
        (b"<head><title>404</title>", Format::Rejected("HTML")),
        (b"<?xml version=\"1.0\"?><Error>", Format::Rejected("XML")),
        (b"\xef\xbb\xbf<?XML version", Format::Rejected("XML")),
        (b"\x1f\x8b\x08\x00", Format::Rejected("gzip")),
        (b"\xfd7zXZ\x00\x00", Format::Rejected("xz")),
        (b"BZh91AY&SY", Format::Rejected("bzip2")),
        (b"\x28\xb5\x2f\xfd\x00", Format::Rejected("zstd")),
        (b"PK\x03\x04\x14\x00", Format::Rejected("zip")),
        (b"7z\xbc\xaf\x27\x1c\x00\x04", Format::Rejected("7z")),
        (b"KDMV\x01\x00\x00\x00", Format::Rejected("VMDK")),
        (b"vhdxfile", Format::Rejected("VHDX")),
        (&tar_head, Format::Rejected("tar")),
        (&vdi_head, Format::Rejected("VDI")),
        (&mbr, Format::Raw),
        (&[0u8; 512], Format::Raw),
        (b"", Format::Raw),
        (b"<htm", Format::Raw),
        (b"just some text", Format::Raw),
    ];
    for (head, want) in cases {
        assert_eq!(
            sniff(head),
            *want,
            "sniff({:?})",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn candidate_format_decides() {
    assert_eq!(
        candidate_format(b"QFI\xfb\0\0\0\x03", "a").unwrap(),
        "qcow2"
    );
    assert_eq!(candidate_format(&[0u8; 512], "b").unwrap(), "raw");
    let err = candidate_format(b"<!doctype html>", "https://example.com/x.img").unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { source_name, format: "HTML" } if source_name == "https://example.com/x.img"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "https://example.com/x.img: is HTML, not a qcow2 or raw disk image"
    );
}

#[test]
fn sniff_real_files() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "v3.qcow2", "1M"], d);
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "1M",
        ],
        d,
    );
    patterned(&d.join("disk.raw"), 4096);
    assert_eq!(sniff(&head_of(&d.join("v3.qcow2"))), Format::Qcow2);
    assert_eq!(sniff(&head_of(&d.join("v2.qcow2"))), Format::Qcow2);
    assert_eq!(sniff(&head_of(&d.join("disk.raw"))), Format::Raw);

    // A real gzip stream and a real tar archive of that raw disk.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(d.join("disk.raw")).unwrap())
        .unwrap();
    assert_eq!(sniff(&gz.finish().unwrap()), Format::Rejected("gzip"));
    let mut tar = tar::Builder::new(Vec::new());
    tar.append_path_with_name(d.join("disk.raw"), "disk.raw")
        .unwrap();
    assert_eq!(sniff(&tar.into_inner().unwrap()), Format::Rejected("tar"));
}

proptest::proptest! {
    /// Untrusted first bytes never panic the pure parsers.
    #[test]
    fn sniff_and_header_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)) {
        let _ = sniff(&bytes);
        proptest::prop_assert!(qcow2_header(&bytes).is_err() || bytes.starts_with(b"QFI\xfb"));
    }

    /// A header with valid magic, version, cluster size and length followed by arbitrary
    /// extension bytes: the extension walk never panics or loops.
    #[test]
    fn qcow2_extension_walk_never_panics(
        v3 in proptest::prelude::any::<bool>(),
        cluster_bits in 9u32..=21,
        fields in proptest::collection::vec(proptest::prelude::any::<u8>(), 104),
        extensions in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700),
    ) {
        let mut bytes = fields;
        bytes[..4].copy_from_slice(b"QFI\xfb");
        bytes[4..8].copy_from_slice(&(if v3 { 3u32 } else { 2 }).to_be_bytes());
        bytes[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        bytes[100..104].copy_from_slice(&104u32.to_be_bytes());
        if !v3 {
            bytes.truncate(72);
        }
        bytes.extend_from_slice(&extensions);
        let h = qcow2_header(&bytes).expect("valid fixed fields");
        proptest::prop_assert_eq!(h.cluster_bits, cluster_bits);
        proptest::prop_assert_eq!(sniff(&bytes), Format::Qcow2);
    }
}

#[test]
fn qcow2_header_parses_real_images() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "v3.qcow2", "5M"], d);
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "7M",
        ],
        d,
    );
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=ext.raw",
            "ext.qcow2",
            "1M",
        ],
        d,
    );
    let v3 = qcow2_header(&std::fs::read(d.join("v3.qcow2")).unwrap()).unwrap();
    assert_eq!(
        (v3.version, v3.size, v3.backing_file_offset),
        (3, 5 << 20, 0)
    );
    let v2 = qcow2_header(&std::fs::read(d.join("v2.qcow2")).unwrap()).unwrap();
    assert_eq!(
        (v2.version, v2.size, v2.incompatible_features),
        (2, 7 << 20, 0)
    );
    let ext = qcow2_header(&std::fs::read(d.join("ext.qcow2")).unwrap()).unwrap();
    assert_eq!(ext.data_file.as_deref(), Some("ext.raw"));
    assert_ne!(ext.incompatible_features & 4, 0);
}

// ---------------------------------------------------------------------------------------------
// qemu_info / check_untrusted / plan

#[test]
fn raw_image_is_converted() {
    let dir = TempDir::new().unwrap();
    let raw = dir.path().join("disk.raw");
    patterned(&raw, 3 << 20);
    let info = check_untrusted(&raw, "raw", &Limits::default()).unwrap();
    assert_eq!(info.format, "raw");
    assert_eq!(info.virtual_size, 3 << 20);
    assert_eq!(info.qcow2_compat, None);
    assert_eq!(plan(&info), Plan::Convert { from: "raw" });
}

#[test]
fn qcow2_v2_is_converted_and_v3_stored_as_is() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "64M",
        ],
        d,
    );
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            "v3.qcow2",
            "64M",
        ],
        d,
    );
    let v2 = check_untrusted(&d.join("v2.qcow2"), "qcow2", &Limits::default()).unwrap();
    assert_eq!(v2.qcow2_compat.as_deref(), Some("0.10"));
    assert_eq!(v2.virtual_size, 64 << 20);
    assert_eq!(plan(&v2), Plan::Convert { from: "qcow2" });
    let v3 = check_untrusted(&d.join("v3.qcow2"), "qcow2", &Limits::default()).unwrap();
    assert_eq!(v3.qcow2_compat.as_deref(), Some("1.1"));
    assert_eq!(
        (v3.backing_file.as_deref(), v3.data_file.as_deref()),
        (None, None)
    );
    assert_eq!(plan(&v3), Plan::StoreAsIs);
}

#[test]
fn backing_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "base.qcow2", "1M"], d);
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "top.qcow2",
        ],
        d,
    );
    let top = d.join("top.qcow2");
    // qemu_info alone reports it ...
    let info = qemu_info(&top, "qcow2").unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("base.qcow2"));
    // ... and check_untrusted refuses it.
    match check_untrusted(&top, "qcow2", &Limits::default()) {
        Err(Error::BackingFile { path, backing }) => {
            assert_eq!(path, top);
            assert_eq!(backing, "base.qcow2");
        }
        other => panic!("expected BackingFile, got {other:?}"),
    }
}

/// A backing file named by a hostile image is refused from the header alone: qemu never gets to
/// open (or fail on) the host path it names.
#[test]
fn backing_file_is_refused_before_qemu_opens_it() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-u",
            "-b",
            "/nonexistent/secret",
            "-F",
            "raw",
            "evil.qcow2",
            "1M",
        ],
        d,
    );
    let err = check_untrusted(&d.join("evil.qcow2"), "qcow2", &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::BackingFile { backing, .. } if backing == "/nonexistent/secret"),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
}

#[test]
fn external_data_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "data_file=data.raw",
            "ext.qcow2",
            "1M",
        ],
        d,
    );
    let ext = d.join("ext.qcow2");
    let info = qemu_info(&ext, "qcow2").unwrap();
    assert_eq!(info.data_file.as_deref(), Some("data.raw"));
    let err = check_untrusted(&ext, "qcow2", &Limits::default()).unwrap_err();
    assert!(
        matches!(&err, Error::DataFile { data_file: Some(f), .. } if f == "data.raw"),
        "{err:?}"
    );

    // The refusal comes from the header, whether or not the named file exists.
    std::fs::remove_file(d.join("data.raw")).unwrap();
    let err = check_untrusted(&ext, "qcow2", &Limits::default()).unwrap_err();
    assert!(matches!(err, Error::DataFile { .. }), "{err:?}");
}

#[test]
fn huge_virtual_size_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "huge.qcow2", "100T"], d);
    let huge = d.join("huge.qcow2");
    let err = check_untrusted(&huge, "qcow2", &small_limits()).unwrap_err();
    match err {
        Error::VirtualSizeTooLarge { size, limit, .. } => {
            assert_eq!(size, 100 << 40);
            assert_eq!(limit, 1 << 30);
        }
        other => panic!("expected VirtualSizeTooLarge, got {other:?}"),
    }
    // 100 TiB is over the default 2 TiB cap as well.
    assert!(matches!(
        check_untrusted(&huge, "qcow2", &Limits::default()),
        Err(Error::VirtualSizeTooLarge { .. })
    ));
    // A raw image's virtual size is its file size; a sparse 2 GiB file is over a 1 GiB cap.
    let raw = d.join("big.raw");
    std::fs::File::create(&raw)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    assert!(matches!(
        check_untrusted(&raw, "raw", &small_limits()),
        Err(Error::VirtualSizeTooLarge { size, .. }) if size == 2 << 30
    ));
}

#[test]
fn truncated_qcow2_header_is_refused() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "full.qcow2", "1M"], d);
    let bytes = std::fs::read(d.join("full.qcow2")).unwrap();
    let cut = d.join("cut.qcow2");
    std::fs::write(&cut, &bytes[..100]).unwrap();
    assert_eq!(sniff(&bytes[..100]), Format::Qcow2);
    let err = check_untrusted(&cut, "qcow2", &Limits::default()).unwrap_err();
    assert!(matches!(err, Error::BadHeader { .. }), "{err:?}");
    assert!(err.to_string().contains("cut.qcow2"), "{err}");
    // qemu-img agrees it is not an image.
    assert!(matches!(qemu_info(&cut, "qcow2"), Err(Error::Tool { .. })));
}

#[test]
fn corrupt_qcow2_fails_check() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    patterned(&d.join("data.raw"), 3 << 20);
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "data.raw",
            "bad.qcow2",
        ],
        d,
    );
    let bad = d.join("bad.qcow2");
    // Point the first refcount block at offset 0: every cluster's refcount reads as wrong.
    let mut bytes = std::fs::read(&bad).unwrap();
    let rt = u64::from_be_bytes(bytes[48..56].try_into().unwrap()) as usize;
    bytes[rt..rt + 8].fill(0);
    std::fs::write(&bad, &bytes).unwrap();
    assert!(
        qemu_info(&bad, "qcow2").is_ok(),
        "info alone does not notice"
    );
    let err = check_untrusted(&bad, "qcow2", &Limits::default()).unwrap_err();
    match &err {
        Error::CheckFailed { path, output, .. } => {
            assert_eq!(path, &bad);
            assert!(output.contains("ERROR"), "{output}");
        }
        other => panic!("expected CheckFailed, got {other:?}"),
    }
}

#[test]
fn raw_candidate_must_not_be_another_format() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "v3.qcow2", "1M"], d);
    let err = check_untrusted(&d.join("v3.qcow2"), "raw", &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::FormatMismatch {
                asked: "raw",
                found: "qcow2",
                ..
            }
        ),
        "{err:?}"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&vec![0u8; 100_000]).unwrap();
    std::fs::write(d.join("disk.raw.gz"), gz.finish().unwrap()).unwrap();
    let err = check_untrusted(&d.join("disk.raw.gz"), "raw", &Limits::default()).unwrap_err();
    assert!(
        matches!(err, Error::FormatMismatch { found: "gzip", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("gzip"), "{err}");
}

/// Leaked clusters (`qemu-img check` exit 3) waste space but never change what the guest reads,
/// so they do not make an image untrusted.
#[test]
fn leaked_clusters_are_accepted() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    qemu_img(&["create", "-f", "qcow2", "leaky.qcow2", "1M"], d);
    let leaky = d.join("leaky.qcow2");
    let mut bytes = std::fs::read(&leaky).unwrap();
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap()) as usize;
    let refcount_block = be64(&bytes[be64(&bytes[48..])..]);
    // Cluster 4 is unused in a fresh image: give it a refcount and make it exist.
    bytes[refcount_block + 8..refcount_block + 10].copy_from_slice(&1u16.to_be_bytes());
    bytes.resize(5 << 16, 0);
    std::fs::write(&leaky, &bytes).unwrap();
    let status = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&leaky)
        .output()
        .unwrap()
        .status;
    assert_eq!(
        status.code(),
        Some(3),
        "the image must have a leak for this test"
    );
    let info = check_untrusted(&leaky, "qcow2", &Limits::default()).unwrap();
    assert_eq!(plan(&info), Plan::StoreAsIs);
}

#[test]
fn empty_and_unknown_formats_are_refused() {
    let dir = TempDir::new().unwrap();
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        check_untrusted(&empty, "raw", &Limits::default()),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        qemu_info(&empty, "vmdk"),
        Err(Error::UnsupportedFormat { format, .. }) if format == "vmdk"
    ));
    let missing = dir.path().join("missing.qcow2");
    assert!(matches!(
        check_untrusted(&missing, "qcow2", &Limits::default()),
        Err(Error::Io(e)) if e.path() == missing
    ));
}

/// A file whose name looks like a qemu protocol (`nbd:...`) is read as a plain file.
#[test]
fn protocol_looking_file_name_is_a_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nbd:localhost:1");
    patterned(&path, 8192);
    let info = qemu_info(&path, "raw").unwrap();
    assert_eq!(info.virtual_size, 8192);
}

// ---------------------------------------------------------------------------------------------
// convert

#[test]
fn convert_raw_to_qcow2_v3() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    patterned(&raw, 5 << 20);
    let out = d.join("out.qcow2");
    convert(&raw, "raw", &out).unwrap();
    let info = check_untrusted(&out, "qcow2", &Limits::default()).unwrap();
    assert_eq!(info.qcow2_compat.as_deref(), Some("1.1"));
    assert_eq!(info.virtual_size, 5 << 20);
    assert_eq!(plan(&info), Plan::StoreAsIs);
    assert!(identical(&raw, "raw", &out, "qcow2"));
}

#[test]
fn convert_qcow2_v2_to_v3() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    patterned(&d.join("disk.raw"), 2 << 20);
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "disk.raw",
            "v2.qcow2",
        ],
        d,
    );
    let v2 = d.join("v2.qcow2");
    let before = check_untrusted(&v2, "qcow2", &Limits::default()).unwrap();
    let Plan::Convert { from } = plan(&before) else {
        panic!("v2 must be converted")
    };
    let out = d.join("v3.qcow2");
    convert(&v2, from, &out).unwrap();
    let after = qemu_info(&out, "qcow2").unwrap();
    assert_eq!(after.qcow2_compat.as_deref(), Some("1.1"));
    assert!(identical(&v2, "qcow2", &out, "qcow2"));
    assert!(identical(&d.join("disk.raw"), "raw", &out, "qcow2"));
}

#[test]
fn convert_refuses_existing_destination() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    patterned(&raw, 1 << 20);
    let dst = d.join("taken.qcow2");
    std::fs::write(&dst, b"someone else's").unwrap();
    let err = convert(&raw, "raw", &dst).unwrap_err();
    assert!(matches!(&err, Error::Io(e) if e.path() == dst), "{err:?}");
    assert_eq!(std::fs::read(&dst).unwrap(), b"someone else's");
}

#[test]
fn failed_convert_removes_destination() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    patterned(&raw, 1 << 20);
    let dst = d.join("out.qcow2");
    // Raw bytes read as qcow2: qemu-img fails.
    let err = convert(&raw, "qcow2", &dst).unwrap_err();
    match &err {
        Error::Tool {
            tool, args, stderr, ..
        } => {
            assert_eq!(*tool, "qemu-img");
            assert!(
                args.starts_with("convert -f qcow2 -O qcow2 -o compat=1.1"),
                "{args}"
            );
            assert!(!stderr.is_empty());
        }
        other => panic!("expected Tool error, got {other:?}"),
    }
    assert!(!dst.exists(), "partial output left behind");
}

// ---------------------------------------------------------------------------------------------
// download

fn fetch(url: &str, limits: &Limits) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    download(url, limits, &mut out).map(|n| {
        assert_eq!(n, out.len() as u64);
        out
    })
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn download_ok() {
    let server = Server::start();
    let data = body(300_000);
    server.route("/img", Route::bytes(data.clone()));
    let mut dl = open(&server.url("/img"), &small_limits()).unwrap();
    assert_eq!(dl.content_length(), Some(300_000));
    let mut got = Vec::new();
    dl.read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(dl.received(), 300_000);
}

#[test]
fn download_follows_redirect_chain() {
    let server = Server::start();
    let data = body(10_000);
    server
        .route("/start", Route::redirect("/hop"))
        .route(
            "/hop",
            Route::Redirect {
                status: 301,
                location: server.url("/last"),
            },
        )
        .route(
            "/last",
            Route::Redirect {
                status: 307,
                location: "/img".to_owned(),
            },
        )
        .route("/img", Route::bytes(data.clone()));
    let mut dl = open(&server.url("/start"), &small_limits()).unwrap();
    assert_eq!(dl.url(), server.url("/start"));
    assert_eq!(dl.final_url(), server.url("/img"));
    let mut got = Vec::new();
    dl.copy_to(&mut got).unwrap();
    assert_eq!(got, data);
    assert_eq!(
        server.requests(),
        ["GET /start", "GET /hop", "GET /last", "GET /img"]
    );
}

#[test]
fn download_redirect_loop_is_bounded() {
    let server = Server::start();
    server.route("/loop", Route::redirect("/loop"));
    let err = fetch(&server.url("/loop"), &small_limits()).unwrap_err();
    assert!(matches!(&err, Error::Http { .. }), "{err:?}");
    assert!(err.to_string().contains("redirects"), "{err}");
    assert!(err.to_string().contains(&server.url("/loop")), "{err}");
}

#[test]
fn download_error_statuses() {
    let server = Server::start();
    server.route("/boom", Route::Status(500));
    let missing = server.url("/missing");
    let err = fetch(&missing, &small_limits()).unwrap_err();
    assert!(
        matches!(&err, Error::Status { status: 404, url, reason } if *url == missing && reason == "Not Found"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("GET {missing}: HTTP 404 Not Found")
    );
    assert!(!err.is_transient());
    let err = fetch(&server.url("/boom"), &small_limits()).unwrap_err();
    assert!(matches!(&err, Error::Status { status: 500, .. }), "{err:?}");
    assert!(
        err.to_string().contains("500 Internal Server Error"),
        "{err}"
    );
    assert!(err.is_transient());
    // A redirect to a missing path reports the final status against the URL asked for.
    server.route("/moved", Route::redirect("/gone"));
    let err = fetch(&server.url("/moved"), &small_limits()).unwrap_err();
    assert!(matches!(&err, Error::Status { status: 404, url, .. } if *url == server.url("/moved")));
}

#[test]
fn download_short_body_is_truncated() {
    let server = Server::start();
    server.route(
        "/short",
        Route::Short {
            declared: 100_000,
            body: body(1_000).into(),
        },
    );
    let url = server.url("/short");
    let err = fetch(&url, &small_limits()).unwrap_err();
    match &err {
        Error::Truncated {
            url: u,
            expected,
            got,
        } => {
            assert_eq!(u, &url);
            assert_eq!(*expected, 100_000);
            assert!(*got <= 1_000, "got {got}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }
    assert!(err.is_transient());
}

#[test]
fn download_over_cap_is_refused() {
    let server = Server::start();
    let limits = small_limits();
    let cap = limits.max_download as usize;
    server
        .route("/exact", Route::bytes(body(cap)))
        .route("/big", Route::bytes(body(cap + 1)))
        .route(
            "/big-chunked",
            Route::Chunked {
                body: body(cap + 1).into(),
                chunk: 10_000,
            },
        )
        .route("/endless", Route::Endless);
    // Exactly the cap is fine.
    assert_eq!(fetch(&server.url("/exact"), &limits).unwrap().len(), cap);
    // Content-Length over the cap: refused before the body is read.
    let err = open(&server.url("/big"), &limits).unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit, content_length: Some(n), .. } if limit == cap as u64 && n == cap as u64 + 1),
        "{err:?}"
    );
    // No length: refused once the cap is passed.
    for path in ["/big-chunked", "/endless"] {
        let err = fetch(&server.url(path), &limits).unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooLarge {
                    content_length: None,
                    ..
                }
            ),
            "{path}: {err:?}"
        );
    }
    // Through the Read impl, the error comes back out of the io::Error.
    let mut dl = open(&server.url("/endless"), &limits).unwrap();
    let io_err = std::io::copy(&mut dl, &mut std::io::sink()).unwrap_err();
    assert!(matches!(
        Error::from_io_ref(&io_err),
        Some(Error::TooLarge { .. })
    ));
    assert!(matches!(
        Error::from_io(io_err, "unused"),
        Error::TooLarge { .. }
    ));
    // And the reader stays failed.
    assert!(dl.read(&mut [0u8; 16]).is_err());
}

#[test]
fn download_chunked_body() {
    let server = Server::start();
    let data = body(70_001);
    server.route(
        "/chunked",
        Route::Chunked {
            body: data.clone().into(),
            chunk: 4096,
        },
    );
    let dl = open(&server.url("/chunked"), &small_limits()).unwrap();
    assert_eq!(dl.content_length(), None);
    assert_eq!(
        fetch(&server.url("/chunked"), &small_limits()).unwrap(),
        data
    );
}

/// A body with neither Content-Length nor chunking ends when the server closes (HTTP/1.0 style).
#[test]
fn download_close_delimited_body() {
    let server = Server::start();
    let data = body(50_000);
    let mut raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
    raw.extend_from_slice(&data);
    server.route("/old", Route::Raw(raw.into()));
    let dl = open(&server.url("/old"), &small_limits()).unwrap();
    assert_eq!(dl.content_length(), None);
    drop(dl);
    assert_eq!(fetch(&server.url("/old"), &small_limits()).unwrap(), data);
}

/// We never ask for a content encoding; a server that sends one anyway is refused, rather than
/// storing bytes other than the served file (and losing the Content-Length check).
#[test]
fn download_refuses_unrequested_content_encoding() {
    let server = Server::start();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&body(10_000)).unwrap();
    let gz = gz.finish().unwrap();
    let mut raw = format!(
        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    raw.extend_from_slice(&gz);
    server.route("/enc", Route::Raw(raw.into()));
    let err = fetch(&server.url("/enc"), &small_limits()).unwrap_err();
    assert!(matches!(&err, Error::Http { .. }), "{err:?}");
    assert!(err.to_string().contains("Content-Encoding"), "{err}");
}

#[test]
fn download_html_comes_through_and_sniff_rejects_it() {
    let server = Server::start();
    let page = "<!DOCTYPE html>\n<html><body>Please log in</body></html>\n";
    server.route("/login", Route::html(page));
    let got = fetch(&server.url("/login"), &small_limits()).unwrap();
    assert_eq!(got, page.as_bytes());
    assert_eq!(sniff(&got), Format::Rejected("HTML"));
}

#[test]
fn download_connection_refused_names_url() {
    let url = refused_url("/img.qcow2");
    let err = fetch(&url, &small_limits()).unwrap_err();
    assert!(
        matches!(&err, Error::Http { url: u, .. } if *u == url),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("refused"), "{text}");
    assert!(err.is_transient());
}

#[test]
fn download_read_timeout() {
    let server = Server::start();
    server.route(
        "/slow",
        Route::Slow {
            body: body(1000).into(),
            delay: Duration::from_secs(30),
        },
    );
    let limits = Limits {
        read_timeout: Duration::from_millis(300),
        ..small_limits()
    };
    let err = fetch(&server.url("/slow"), &limits).unwrap_err();
    assert!(matches!(&err, Error::Http { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(err.is_transient());
}

#[test]
fn download_bad_urls() {
    for url in [
        "ftp://example.com/x.img",
        "not a url",
        "/just/a/path",
        "http:///nohost",
    ] {
        let err = open(url, &small_limits()).unwrap_err();
        assert!(
            matches!(&err, Error::BadUrl { url: u, .. } if u == url),
            "{url}: {err:?}"
        );
    }
}

/// End to end on the building blocks: a qcow2 v2 served over HTTP is downloaded, sniffed,
/// vetted, converted and still holds the same content.
#[test]
fn download_vet_convert_pipeline() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    patterned(&d.join("disk.raw"), 2 << 20);
    qemu_img(
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10",
            "disk.raw",
            "v2.qcow2",
        ],
        d,
    );
    let server = Server::start();
    server.route("/v2.qcow2", Route::File(d.join("v2.qcow2")));
    let staged = d.join("staged");
    let mut file = std::fs::File::create(&staged).unwrap();
    let n = download(&server.url("/v2.qcow2"), &Limits::default(), &mut file).unwrap();
    assert_eq!(n, std::fs::metadata(d.join("v2.qcow2")).unwrap().len());
    drop(file);
    assert_eq!(sniff(&head_of(&staged)), Format::Qcow2);
    let info = check_untrusted(&staged, "qcow2", &Limits::default()).unwrap();
    assert_eq!(plan(&info), Plan::Convert { from: "qcow2" });
    let out = d.join("out.qcow2");
    convert(&staged, "qcow2", &out).unwrap();
    assert!(identical(&d.join("disk.raw"), "raw", &out, "qcow2"));
}
