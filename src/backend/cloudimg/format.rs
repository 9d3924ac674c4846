//! What the first bytes of a source say; pure functions, no I/O.

#[cfg(feature = "unstable")]
use super::Error;

/// How many leading bytes [`sniff`] looks at; give it at least this many when the source has them.
pub const SNIFF_LEN: usize = 512;

const QCOW_MAGIC: &[u8] = b"QFI\xfb";

/// What the first bytes of a source say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// qcow2 (version 2 or 3) magic.
    Qcow2,
    /// Nothing recognised: a raw disk candidate, to be confirmed with `qemu-img info -f raw`.
    Raw,
    /// A format we refuse, named for the error message ("HTML", "gzip", ...).
    Rejected(&'static str),
}

/// Binary signatures of things people download by mistake instead of a disk image: `(offset,
/// magic, name)`.
const SIGNATURES: &[(usize, &[u8], &str)] = &[
    (0, b"\x1f\x8b", "gzip"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"BZh", "bzip2"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"PK\x03\x04", "zip"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"conectix", "VHD"),
    (0, b"QED\x00", "QED"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (64, b"\x7f\x10\xda\xbe", "VDI"),
    (257, b"ustar", "tar"),
];

/// What the first bytes say (pass the first [`SNIFF_LEN`] bytes, or the whole source if shorter).
///
/// qcow2 v2/v3 is accepted; HTML, XML, compressed archives and other disk formats are refused by
/// name; anything else is a raw candidate. A qcow magic with another version is refused too,
/// since qemu would read it as a different format than the one we vet.
#[must_use]
pub fn sniff(head: &[u8]) -> Format {
    if head.starts_with(QCOW_MAGIC) {
        return match head.get(4..8).map(be32) {
            Some(2 | 3) => Format::Qcow2,
            Some(1) => Format::Rejected("qcow (version 1)"),
            Some(_) => Format::Rejected("qcow of an unknown version"),
            None => Format::Rejected("truncated qcow2"),
        };
    }
    for &(offset, magic, name) in SIGNATURES {
        if head.get(offset..).is_some_and(|h| h.starts_with(magic)) {
            return Format::Rejected(name);
        }
    }
    let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    let starts_with_ci = |prefix: &[u8]| {
        text.get(..prefix.len())
            .is_some_and(|t| t.eq_ignore_ascii_case(prefix))
    };
    if starts_with_ci(b"<!doctype html")
        || starts_with_ci(b"<html")
        || starts_with_ci(b"<head")
        || starts_with_ci(b"<body")
    {
        return Format::Rejected("HTML");
    }
    if starts_with_ci(b"<?xml") {
        return Format::Rejected("XML");
    }
    Format::Raw
}

/// [`sniff`] as a decision: the format to pass to [`super::check_untrusted`] ("qcow2" or "raw"),
/// or [`Error::Rejected`] naming `source_name` (the file or URL) and what the bytes are.
#[cfg(feature = "unstable")]
pub fn candidate_format(head: &[u8], source_name: &str) -> Result<&'static str, Error> {
    match sniff(head) {
        Format::Qcow2 => Ok("qcow2"),
        Format::Raw => Ok("raw"),
        Format::Rejected(format) => Err(Error::Rejected {
            source_name: source_name.to_owned(),
            format,
        }),
    }
}

/// The fields of a qcow2 header that decide whether an untrusted image is safe to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name; 0 when there is none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 = none, 1 = AES, 2 = LUKS.
    pub crypt_method: u32,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible_features: u64,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// The external data file name from the header extensions, when present in `head`.
    pub data_file: Option<String>,
}

/// Incompatible feature bit: the data lives in an external file.
pub const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;

const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: usize = 104;

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Parse the qcow2 header at the start of `head` (the first cluster is plenty; header extensions
/// that do not fit in `head` are simply not reported).
///
/// # Errors
/// A reason when `head` is not a complete qcow2 v2/v3 header.
pub fn qcow2_header(head: &[u8]) -> Result<Qcow2Header, &'static str> {
    if !head.starts_with(QCOW_MAGIC) {
        return Err("no qcow2 magic");
    }
    if head.len() < V2_HEADER_LEN {
        return Err("truncated header");
    }
    let version = be32(&head[4..]);
    let (incompatible_features, header_length) = match version {
        2 => (0, V2_HEADER_LEN as u32),
        3 => {
            if head.len() < V3_MIN_HEADER_LEN {
                return Err("truncated header");
            }
            let len = be32(&head[100..]);
            if (len as usize) < V3_MIN_HEADER_LEN || !len.is_multiple_of(8) {
                return Err("invalid header length");
            }
            (be64(&head[72..]), len)
        }
        _ => return Err("unsupported qcow version"),
    };
    let cluster_bits = be32(&head[20..]);
    if !(9..=21).contains(&cluster_bits) {
        return Err("invalid cluster size");
    }
    let mut header = Qcow2Header {
        version,
        backing_file_offset: be64(&head[8..]),
        backing_file_size: be32(&head[16..]),
        cluster_bits,
        size: be64(&head[24..]),
        crypt_method: be32(&head[32..]),
        incompatible_features,
        header_length,
        data_file: None,
    };
    header.data_file = data_file_extension(head, header_length as usize);
    Ok(header)
}

/// Walk the header extensions that follow the header and return the external data file name.
fn data_file_extension(head: &[u8], mut pos: usize) -> Option<String> {
    loop {
        let ext = head.get(pos..pos + 8)?;
        let (kind, len) = (be32(ext), be32(&ext[4..]) as usize);
        if kind == EXT_END {
            return None;
        }
        let data = head.get(pos + 8..pos + 8 + len)?;
        if kind == EXT_DATA_FILE {
            return Some(String::from_utf8_lossy(data).into_owned());
        }
        pos = pos + 8 + len.div_ceil(8) * 8;
    }
}
