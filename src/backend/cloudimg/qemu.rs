//! `qemu-img` on untrusted images: info, check, conversion to qcow2 v3.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

use crate::error::{io_err, IoError};
use super::format::{qcow2_header, sniff, Format, QCOW2_INCOMPAT_DATA_FILE, SNIFF_LEN};
use super::{Error, Limits};

const QEMU_IMG: &str = "qemu-img";
/// How much of a qcow2 file is read to find the header and its extensions.
const HEADER_READ: u64 = 64 * 1024;
/// Longest tool message kept in an error, in bytes and in lines.
const MAX_MESSAGE: usize = 4096;
const MAX_LINES: usize = 12;

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// "qcow2" or "raw".
    pub format: String,
    /// Virtual disk size in bytes.
    pub virtual_size: u64,
    /// For qcow2: "0.10" (v2) or "1.1" (v3).
    pub qcow2_compat: Option<String>,
    /// The backing file the image names, if any.
    pub backing_file: Option<String>,
    /// The external data file the image names, if any.
    pub data_file: Option<String>,
}

/// What to do with a vetted source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// qcow2 v3 without backing or data file: store the bytes as they are.
    StoreAsIs,
    /// Convert to qcow2 v3 with [`convert`] from this format ("qcow2" for v2, or "raw").
    Convert {
        /// The source format to pass to `qemu-img convert -f`.
        from: &'static str,
    },
}

#[derive(Deserialize)]
struct InfoJson {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "backing-filename")]
    backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename")]
    full_backing_filename: Option<String>,
    #[serde(rename = "format-specific")]
    format_specific: Option<FormatSpecific>,
    encrypted: Option<bool>,
}

#[derive(Deserialize)]
struct FormatSpecific {
    #[serde(rename = "type")]
    kind: String,
    data: Option<Qcow2Specific>,
}

#[derive(Deserialize)]
struct Qcow2Specific {
    compat: Option<String>,
    #[serde(rename = "data-file")]
    data_file: Option<String>,
}

/// The only formats ever passed to `qemu-img -f`.
fn known_format(path: &Path, format: &str) -> Result<&'static str, Error> {
    match format {
        "qcow2" => Ok("qcow2"),
        "raw" => Ok("raw"),
        _ => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            format: format.to_owned(),
        }),
    }
}

/// A path qemu cannot mistake for an option (`-x`) or a protocol (`nbd:`, `json:{...}`): qemu
/// only looks for a protocol prefix before the first `/`.
fn tool_path(path: &Path) -> OsString {
    if path.is_absolute() {
        path.as_os_str().to_owned()
    } else {
        let mut p = OsString::from("./");
        p.push(path.as_os_str());
        p
    }
}

/// A tool's message, trimmed to its first lines and `MAX_MESSAGE` bytes (qemu-img check prints
/// one line per bad cluster).
fn clip(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.trim().lines().collect();
    let mut out = lines[..lines.len().min(MAX_LINES)].join("\n");
    if out.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    if lines.len() > MAX_LINES {
        let more = lines.len() - MAX_LINES;
        out = format!("{out}\n… ({more} more lines)");
    }
    out
}

fn args_text(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run qemu-img with `args`, returning its output whatever the exit status.
fn run(args: &[OsString]) -> Result<Output, Error> {
    Command::new(QEMU_IMG)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::ToolMissing { tool: QEMU_IMG }
            } else {
                Error::Tool {
                    tool: QEMU_IMG,
                    args: args_text(args),
                    status: "not started".to_owned(),
                    stderr: e.to_string(),
                }
            }
        })
}

fn run_ok(args: &[OsString]) -> Result<Output, Error> {
    let out = run(args)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Tool {
            tool: QEMU_IMG,
            args: args_text(args),
            status: out.status.to_string(),
            stderr: clip(&out.stderr),
        })
    }
}

fn os_args(parts: &[&OsStr]) -> Vec<OsString> {
    parts.iter().map(|&p| p.to_owned()).collect()
}

/// `qemu-img info --output=json -f <format> <path>`; `format` must be "qcow2" or "raw".
///
/// On its own this trusts the image enough to let qemu parse it (`info` does not follow backing
/// files; whether it touches an external data file is up to the qemu version); use
/// [`check_untrusted`] on anything that came from outside.
pub fn qemu_info(path: &Path, format: &str) -> Result<ImageInfo, Error> {
    let format = known_format(path, format)?;
    let args = os_args(&[
        OsStr::new("info"),
        OsStr::new("--output=json"),
        OsStr::new("-f"),
        OsStr::new(format),
        &tool_path(path),
    ]);
    let out = run_ok(&args)?;
    let json: InfoJson = serde_json::from_slice(&out.stdout).map_err(|e| Error::ToolOutput {
        tool: QEMU_IMG,
        args: args_text(&args),
        reason: format!("parsing JSON: {e}"),
    })?;
    if json.format != format {
        return Err(Error::ToolOutput {
            tool: QEMU_IMG,
            args: args_text(&args),
            reason: format!("reports format {:?}, asked for {format:?}", json.format),
        });
    }
    if json.encrypted == Some(true) {
        return Err(Error::Encrypted {
            path: path.to_path_buf(),
        });
    }
    let (qcow2_compat, data_file) = match json.format_specific {
        Some(FormatSpecific {
            kind,
            data: Some(data),
        }) if kind == "qcow2" => (data.compat, data.data_file),
        _ => (None, None),
    };
    Ok(ImageInfo {
        format: json.format,
        virtual_size: json.virtual_size,
        qcow2_compat,
        backing_file: json.backing_filename.or(json.full_backing_filename),
        data_file,
    })
}

/// Read up to `HEADER_READ` bytes from the start of `path`.
fn read_head(path: &Path) -> Result<Vec<u8>, Error> {
    let file = File::open(path).map_err(io_err("opening image", path))?;
    let mut head = Vec::new();
    file.take(HEADER_READ)
        .read_to_end(&mut head)
        .map_err(io_err("reading image header", path))?;
    Ok(head)
}

/// Read the backing file name a qcow2 header points at (bounded; for the error message only).
fn backing_name(path: &Path, head: &[u8], offset: u64, size: u32) -> String {
    let (Ok(start), Ok(len)) = (usize::try_from(offset), usize::try_from(size.min(1023))) else {
        return String::new();
    };
    head.get(start..start.saturating_add(len)).map_or_else(
        || format!("name at offset {offset} in {}", path.display()),
        |b| String::from_utf8_lossy(b).into_owned(),
    )
}

/// Refuse what the header alone shows is unsafe, before qemu opens the file at all.
fn precheck_qcow2(path: &Path, limits: &Limits) -> Result<(), Error> {
    let head = read_head(path)?;
    let header = qcow2_header(&head).map_err(|reason| Error::BadHeader {
        path: path.to_path_buf(),
        reason,
    })?;
    if header.backing_file_offset != 0 {
        return Err(Error::BackingFile {
            path: path.to_path_buf(),
            backing: backing_name(
                path,
                &head,
                header.backing_file_offset,
                header.backing_file_size,
            ),
        });
    }
    if header.incompatible_features & QCOW2_INCOMPAT_DATA_FILE != 0 || header.data_file.is_some() {
        return Err(Error::DataFile {
            path: path.to_path_buf(),
            data_file: header.data_file,
        });
    }
    if header.crypt_method != 0 {
        return Err(Error::Encrypted {
            path: path.to_path_buf(),
        });
    }
    if header.size > limits.max_virtual_size {
        return Err(Error::VirtualSizeTooLarge {
            path: path.to_path_buf(),
            size: header.size,
            limit: limits.max_virtual_size,
        });
    }
    Ok(())
}

/// A raw candidate must not be something [`sniff`] recognises: reading a qcow2 or an archive as
/// raw would store its container bytes as the guest's disk.
fn precheck_raw(path: &Path) -> Result<(), Error> {
    let mut head = read_head(path)?;
    head.truncate(SNIFF_LEN);
    let found = match sniff(&head) {
        Format::Raw => return Ok(()),
        Format::Qcow2 => "qcow2",
        Format::Rejected(name) => name,
    };
    Err(Error::FormatMismatch {
        path: path.to_path_buf(),
        asked: "raw",
        found,
    })
}

/// Vet an untrusted image: for qcow2, parse the header first and refuse backing files, external
/// data files and encryption before qemu opens anything (for raw, refuse bytes [`sniff`]
/// recognises as something else); then `qemu-img info` (same refusals,
/// plus the virtual-size cap and empty images) and, for qcow2, `qemu-img check`.
///
/// `qemu-img check` exit status 3 (leaked clusters, no corruption) is accepted: leaks only waste
/// space in the image and never change what the guest reads.
pub fn check_untrusted(path: &Path, format: &str, limits: &Limits) -> Result<ImageInfo, Error> {
    let format = known_format(path, format)?;
    if format == "qcow2" {
        precheck_qcow2(path, limits)?;
    } else {
        precheck_raw(path)?;
    }
    let info = qemu_info(path, format)?;
    if let Some(backing) = &info.backing_file {
        return Err(Error::BackingFile {
            path: path.to_path_buf(),
            backing: backing.clone(),
        });
    }
    if info.data_file.is_some() {
        return Err(Error::DataFile {
            path: path.to_path_buf(),
            data_file: info.data_file,
        });
    }
    if info.virtual_size > limits.max_virtual_size {
        return Err(Error::VirtualSizeTooLarge {
            path: path.to_path_buf(),
            size: info.virtual_size,
            limit: limits.max_virtual_size,
        });
    }
    if info.virtual_size == 0 {
        return Err(Error::Empty {
            path: path.to_path_buf(),
        });
    }
    if format == "qcow2" {
        let args = os_args(&[
            OsStr::new("check"),
            OsStr::new("-f"),
            OsStr::new("qcow2"),
            &tool_path(path),
        ]);
        let out = run(&args)?;
        if !matches!(out.status.code(), Some(0 | 3)) {
            let mut output = out.stdout;
            output.extend_from_slice(&out.stderr);
            return Err(Error::CheckFailed {
                path: path.to_path_buf(),
                status: out.status.to_string(),
                output: clip(&output),
            });
        }
    }
    Ok(info)
}

/// What to do with an image [`check_untrusted`] accepted: qcow2 v3 is stored as is, qcow2 v2
/// and raw are converted.
#[must_use]
pub fn plan(info: &ImageInfo) -> Plan {
    let standalone = info.backing_file.is_none() && info.data_file.is_none();
    match info.format.as_str() {
        "qcow2" if standalone && info.qcow2_compat.as_deref() == Some("1.1") => Plan::StoreAsIs,
        "qcow2" => Plan::Convert { from: "qcow2" },
        _ => Plan::Convert { from: "raw" },
    }
}

/// `qemu-img convert -f <from> -O qcow2 -o compat=1.1 <src> <dst>`.
///
/// `dst` must not exist yet (a fresh name under the backend's `temp/`); when conversion fails it
/// is removed. qemu-img's default cache mode for convert does not flush, so the caller fsyncs
/// `dst` before publishing it. Only call this on a source [`check_untrusted`] accepted.
pub fn convert(src: &Path, from: &str, dst: &Path) -> Result<(), Error> {
    let from = known_format(src, from)?;
    match dst.symlink_metadata() {
        Ok(_) => {
            return Err(Error::Io(IoError::new("converting into", dst, io::Error::from(io::ErrorKind::AlreadyExists))))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting conversion target", dst)(e).into()),
    }
    let args = os_args(&[
        OsStr::new("convert"),
        OsStr::new("-f"),
        OsStr::new(from),
        OsStr::new("-O"),
        OsStr::new("qcow2"),
        OsStr::new("-o"),
        OsStr::new("compat=1.1"),
        &tool_path(src),
        &tool_path(dst),
    ]);
    let result = run_ok(&args);
    if result.is_err() {
        // The partial output is ours (dst did not exist before); an error removing it is
        // secondary to the conversion error and the leftover is temp debris GC reclaims.
        let _ = crate::fsutil::remove_file(dst);
    }
    result.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_first_lines() {
        let many = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let clipped = clip(many.as_bytes());
        assert!(clipped.starts_with("line 0\nline 1\n"));
        assert!(clipped.ends_with("… (88 more lines)"), "{clipped}");
        assert_eq!(clip(b"  one line \n"), "one line");
        let long = "é".repeat(MAX_MESSAGE);
        assert!(clip(long.as_bytes()).len() <= MAX_MESSAGE + '…'.len_utf8());
    }

    #[test]
    fn tool_path_never_looks_like_a_protocol_or_option() {
        assert_eq!(tool_path(Path::new("nbd:host:1")), "./nbd:host:1");
        assert_eq!(tool_path(Path::new("-f")), "./-f");
        assert_eq!(tool_path(Path::new("dir/x.qcow2")), "./dir/x.qcow2");
        assert_eq!(tool_path(Path::new("/abs/json:{}")), "/abs/json:{}");
    }
}
