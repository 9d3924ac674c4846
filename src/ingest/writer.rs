//! The write side of the staging pipeline: direct I/O while chunks stay aligned, buffered
//! writes otherwise.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use crate::error::IoError;

use super::{Error, ALIGN};

/// The write side: direct I/O while chunks stay aligned, buffered writes otherwise.
///
/// Copying a whole image into the page cache costs more CPU than sha256 and blake3 together
/// (measured on the target machine: the copy took over half of staging's CPU time), and the
/// fsync at the end pays again for the writeback. Direct writes skip both; the tail, or any
/// filesystem that refuses `O_DIRECT` (tmpfs on older kernels), falls back to plain writes.
pub(super) struct Writer<'a> {
    file: &'a File,
    path: &'a Path,
    direct: bool,
}

impl<'a> Writer<'a> {
    pub(super) fn new(file: &'a File, path: &'a Path, direct: bool) -> Self {
        let mut w = Self {
            file,
            path,
            direct: false,
        };
        if direct {
            w.direct = w.set_direct(true);
        }
        w
    }

    /// Switch `O_DIRECT` on or off; returns whether it is now on.
    pub(super) fn set_direct(&mut self, on: bool) -> bool {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let Ok(bits) = fcntl(self.file, FcntlArg::F_GETFL) else {
            return false;
        };
        let mut flags = OFlag::from_bits_truncate(bits);
        flags.set(OFlag::O_DIRECT, on);
        let ok = fcntl(self.file, FcntlArg::F_SETFL(flags)).is_ok();
        self.direct = on && ok;
        self.direct
    }

    pub(super) fn write(&mut self, mut data: &[u8]) -> Result<(), Error> {
        while !data.is_empty() {
            if self.direct
                && !(data.len().is_multiple_of(ALIGN)
                    && (data.as_ptr() as usize).is_multiple_of(ALIGN))
            {
                self.set_direct(false);
            }
            match (&mut &*self.file).write(data) {
                Ok(0) => return Err(self.error(io::ErrorKind::WriteZero.into())),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Alignment rules differ by filesystem and device: any refusal means "not here".
                Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    self.set_direct(false);
                }
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(())
    }

    fn error(&self, source: io::Error) -> Error {
        Error::Io(IoError::new("writing", self.path, source))
    }
}

