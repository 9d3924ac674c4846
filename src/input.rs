//! What a user hands to `import`: a regular file, a pipe or FIFO, standard input (`/dev/stdin`,
//! no file at all), or a process substitution (`<(…)`), read exactly once, front to back.
//!
//! Every import opens its sources through [`Input`]: the type sniff looks at the first bytes
//! with [`Input::peek`], and those bytes are handed out again by [`Read`], so nothing is lost
//! and nothing is opened twice (a pipe cannot be rewound, a FIFO has no second writer).
//! Character and block devices are refused before they are opened (`/dev/zero` never ends,
//! opening some devices has side effects), except standard input when it is a terminal.
//! A regular file is read with `read()`, never mapped: another process may truncate it, and a
//! file that shrinks or grows while it is read is an error, not a short or mixed copy.
//!
//! Ground floor: depends on nothing else in the crate, and never writes, renames or deletes.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a source cannot be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A directory where a stream of bytes is needed.
    #[error("{name}: is a directory; only an OCI layout directory, alone, can be imported")]
    Directory {
        /// The source as the user named it.
        name: String,
    },
    /// A character or block device (`/dev/zero`, a disk): not a file to import.
    #[error("{name}: is a {what}; import reads regular files, pipes, FIFOs and standard input")]
    Device {
        /// The source as the user named it (`stdin (/dev/null)` for a redirected stdin).
        name: String,
        /// "character device" or "block device".
        what: &'static str,
    },
    /// An I/O error, with what was being done and to which source.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("opening", "reading").
        action: &'static str,
        /// The source.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A regular file whose size changed while it was read (someone truncated or appended to it).
#[derive(Debug, thiserror::Error)]
#[error("the file changed while it was read: {expected} bytes when opened, {}{got} read", if got > expected { "at least " } else { "" })]
pub struct Changed {
    /// Its size when it was opened.
    pub expected: u64,
    /// The bytes read before the change showed.
    pub got: u64,
}

/// One source of bytes, read once. [`Read`] replays what [`Input::peek`] looked at.
#[derive(Debug)]
pub struct Input {
    name: String,
    file: File,
    /// The size of a regular file when it was opened; `None` for streams.
    len: Option<u64>,
    /// Bytes read from `file` for peeking, handed out first.
    head: Vec<u8>,
    /// How many of `head` were handed out.
    pos: usize,
    /// Bytes read from `file` so far (peeked or not).
    from_file: u64,
}

/// The descriptor kinds that are streams of bytes.
fn device_kind(ft: std::fs::FileType) -> Option<&'static str> {
    if ft.is_char_device() {
        Some("character device")
    } else if ft.is_block_device() {
        Some("block device")
    } else {
        None
    }
}

impl Input {
    /// Standard input: a pipe, a redirected file, a socket or a terminal; any other device
    /// (`< /dev/zero`, `< /dev/null`) is refused.
    pub fn stdin() -> Result<Input, Error> {
        Self::from_stdin("stdin".to_owned())
    }

    fn from_stdin(name: String) -> Result<Input, Error> {
        let fd = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Io {
                action: "duplicating",
                path: PathBuf::from(&name),
                source,
            })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| Error::Io {
            action: "inspecting",
            path: PathBuf::from(&name),
            source,
        })?;
        if let Some(what) = device_kind(meta.file_type()) {
            if !(meta.file_type().is_char_device() && file.is_terminal()) {
                let target = std::fs::read_link("/proc/self/fd/0")
                    .map(|t| format!(" ({})", t.display()))
                    .unwrap_or_default();
                return Err(Error::Device {
                    name: format!("{name}{target}"),
                    what,
                });
            }
        }
        Ok(Self::new(name, file, &meta))
    }

    /// Open `path`. A path naming standard input (`/dev/stdin`, `/dev/fd/0`) is standard input;
    /// a FIFO blocks here until its writer opens it.
    pub fn open(path: &Path) -> Result<Input, Error> {
        let name = path.display().to_string();
        let io_err = |action| {
            move |source| Error::Io {
                action,
                path: path.to_path_buf(),
                source,
            }
        };
        let meta = std::fs::metadata(path).map_err(io_err("opening"))?;
        let is_stdin = io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| File::from(fd).metadata().ok())
            .is_some_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if is_stdin {
            // Opening /proc/self/fd/0 again fails for a socket and would restart a file at 0.
            return Self::from_stdin(name);
        }
        if meta.is_dir() {
            return Err(Error::Directory { name });
        }
        if let Some(what) = device_kind(meta.file_type()) {
            return Err(Error::Device { name, what });
        }
        let file = File::open(path).map_err(io_err("opening"))?;
        // The path may have been replaced between the check and the open.
        let meta = file.metadata().map_err(io_err("inspecting"))?;
        if meta.is_dir() {
            return Err(Error::Directory { name });
        }
        if let Some(what) = device_kind(meta.file_type()) {
            return Err(Error::Device { name, what });
        }
        Ok(Self::new(name, file, &meta))
    }

    fn new(name: String, file: File, meta: &std::fs::Metadata) -> Self {
        Self {
            name,
            file,
            len: meta.is_file().then_some(meta.len()),
            head: Vec::new(),
            pos: 0,
            from_file: 0,
        }
    }

    /// The source as the user named it (a path, or `stdin`), for messages.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size of a regular file when it was opened; `None` for a stream.
    #[must_use]
    pub fn size(&self) -> Option<u64> {
        self.len
    }

    /// Up to `n` of the next bytes, without consuming them: reading hands them out again.
    /// Fewer than `n` only at the end of the source.
    pub fn peek(&mut self, n: usize) -> Result<&[u8], Error> {
        if self.pos > 0 {
            self.head.drain(..self.pos);
            self.pos = 0;
        }
        while self.head.len() < n {
            let have = self.head.len();
            self.head.resize(n, 0);
            let got = loop {
                match self.file.read(&mut self.head[have..]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        self.head.truncate(have);
                        return Err(Error::Io {
                            action: "reading",
                            path: PathBuf::from(&self.name),
                            source,
                        });
                    }
                }
            };
            self.head.truncate(have + got);
            self.from_file += got as u64;
            if let Err(e) = self.check_size(got == 0) {
                return Err(Error::Io {
                    action: "reading",
                    path: PathBuf::from(&self.name),
                    source: e,
                });
            }
            if got == 0 {
                break;
            }
        }
        Ok(&self.head[..n.min(self.head.len())])
    }

    /// A regular file must deliver exactly the bytes it had when opened.
    fn check_size(&self, at_end: bool) -> io::Result<()> {
        match self.len {
            Some(expected) if self.from_file > expected || (at_end && self.from_file < expected) => {
                Err(io::Error::other(Changed {
                    expected,
                    got: self.from_file,
                }))
            }
            _ => Ok(()),
        }
    }
}

impl Read for Input {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.head.len() {
                self.head = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        let n = self.file.read(buf)?;
        self.from_file += n as u64;
        self.check_size(n == 0 && !buf.is_empty())?;
        Ok(n)
    }
}

/// Several inputs read one after the other (the split parts of one disk image). A read error
/// names the part it happened in.
#[derive(Debug)]
pub struct Concat {
    parts: Vec<Input>,
    current: usize,
}

impl Concat {
    /// The parts, in order.
    #[must_use]
    pub fn new(parts: Vec<Input>) -> Self {
        Self { parts, current: 0 }
    }

    /// The parts' names joined with ` + `, for messages.
    #[must_use]
    pub fn name(&self) -> String {
        self.parts
            .iter()
            .map(Input::name)
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// The total size when every part is a regular file.
    #[must_use]
    pub fn len(&self) -> Option<u64> {
        self.parts.iter().map(Input::size).sum()
    }

    /// Whether there are no parts.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// An error in one part of several, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {source}")]
pub struct InPart {
    /// The part.
    pub name: String,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let several = self.parts.len() > 1;
        while let Some(part) = self.parts.get_mut(self.current) {
            match part.read(buf) {
                Ok(0) if !buf.is_empty() => self.current += 1,
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) if several => {
                    return Err(io::Error::new(
                        e.kind(),
                        InPart {
                            name: part.name().to_owned(),
                            source: e,
                        },
                    ))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeked_bytes_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mut input = Input::open(&p).unwrap();
        assert_eq!(input.peek(16).unwrap(), &data[..16]);
        assert_eq!(input.peek(600).unwrap(), &data[..600]);
        let mut out = Vec::new();
        input.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn short_source_peeks_what_there_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let mut input = Input::open(&p).unwrap();
        assert_eq!(input.peek(512).unwrap(), b"abc");
        let mut out = Vec::new();
        input.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
    }

    #[test]
    fn devices_and_directories_are_refused_by_name() {
        let e = Input::open(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, Error::Device { .. }), "{e}");
        assert!(e.to_string().contains("/dev/zero"), "{e}");
        assert!(e.to_string().contains("character device"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = Input::open(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Directory { .. }), "{e}");
    }

    #[test]
    fn a_file_truncated_while_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100_000]).unwrap();
        let mut input = Input::open(&p).unwrap();
        let mut buf = vec![0u8; 10_000];
        input.read_exact(&mut buf).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(20_000)
            .unwrap();
        let mut rest = Vec::new();
        let e = input.read_to_end(&mut rest).unwrap_err();
        assert!(e.to_string().contains("changed while it was read"), "{e}");
    }

    #[test]
    fn parts_are_concatenated_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"hello ").unwrap();
        std::fs::write(&b, b"world").unwrap();
        let mut c = Concat::new(vec![Input::open(&a).unwrap(), Input::open(&b).unwrap()]);
        assert_eq!(c.len(), Some(11));
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");
    }
}
