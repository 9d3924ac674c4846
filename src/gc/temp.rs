//! The temp sweep: debris in `temp/` goes in every run, also when no blob is collectable.
//!
//! What is debris:
//! - a deletable lock file (`<hex>.lock`) nobody holds, at any age: taking it proves no ingest
//!   uses it, and the lock-then-check protocol lets a later holder recreate it;
//! - a boot dir a crashed collection moved here (`*.gc-trash`), at any age;
//! - a temp entry of a process that is provably gone: its name records the creating pid
//!   (`<prefix>.<pid>.<n>.<hex>.tmp`, see `fsutil::TempFile`), nobody holds its `flock`, and no
//!   process with that pid is alive. A killed import's staging file goes in the next run,
//!   whatever the grace period. A pid reused by an unrelated process only delays this until the
//!   temp grace; a process in another pid namespace holds its entries' `flock`, which is checked
//!   first;
//! - anything else nobody holds, once older than the temp grace period (entries of cocoon, of
//!   tools, of older imgstore versions).
//!
//! Exception: an entry with a resume record beside it (`<entry>.resume`, written by a download
//! that can continue where it stopped) is kept until the temp grace even when its process is
//! gone; the record goes with its entry. Nothing held by a live process is ever removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::fsutil;
use crate::layout::BackendLayout;
use crate::lock::{self, LockWait};

use super::report::{SkipReason, Skipped, TempRemoved};
use super::scan::list_dir;
use super::{Error, GcOptions};

/// Suffix of a boot dir being deleted, moved into `temp/` first.
pub(super) const TRASH_SUFFIX: &str = "gc-trash";

/// Suffix of a resume record: `<entry>.resume` keeps `<entry>` until the temp grace period.
pub const RESUME_SUFFIX: &str = "resume";

/// What the temp sweep of one backend removed and left alone.
#[derive(Default)]
pub(super) struct TempOutcome {
    pub(super) removed: Vec<TempRemoved>,
    pub(super) skipped: Vec<Skipped>,
}

/// The pid recorded in a temp entry's name `<prefix>.<pid>.<n>.<hex>.tmp`, if it has one.
fn recorded_pid(name: &str) -> Option<i32> {
    let rest = name.strip_suffix(".tmp")?;
    let mut parts = rest.rsplitn(4, '.');
    let hex = parts.next()?;
    let n = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(n) || !digits(pid) || hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Whether no process with `pid` exists (`kill(pid, 0)` says `ESRCH`). Our own pid is alive.
fn pid_is_gone(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    pid != std::process::id().cast_signed()
        && matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Bytes of the files under `path` (the file itself if it is one); symlinks are not followed.
fn bytes_under(path: &Path, meta: &fs::Metadata) -> u64 {
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            fs::symlink_metadata(&p).map_or(0, |m| bytes_under(&p, &m))
        })
        .sum()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn sweep_temp(
    b: &BackendLayout,
    opts: &GcOptions,
    cut: SystemTime,
) -> Result<TempOutcome, Error> {
    let entries = list_dir(&b.temp_dir())?;
    let mut out = TempOutcome::default();
    let (locks, others): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .map(|e| e.path())
        .partition(|p| p.extension().is_some_and(|e| e == "lock"));

    // Lock files. Sequential: a crashed collection of an older version may have left one inode
    // under several names.
    for path in locks {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if opts.dry_run {
            if fsutil::is_held(&path) {
                out.skipped.push(Skipped {
                    path,
                    reason: SkipReason::InUse,
                });
                continue;
            }
        } else {
            let Ok(g) = lock::lock_deletable(&path, LockWait::no_wait(), &|_| {}) else {
                out.skipped.push(Skipped {
                    path,
                    reason: SkipReason::InUse,
                });
                continue;
            };
            if let Err(e) = g.remove_locked_file() {
                tracing::warn!("removing stale lock {}: {e}", path.display());
                continue;
            }
        }
        out.removed.push(TempRemoved {
            bytes: meta.len(),
            path,
        });
    }

    // Resume records go with their entry; alone, they follow the grace period.
    let is_record = |p: &Path| p.extension().is_some_and(|e| e == RESUME_SUFFIX);
    let results: Vec<Result<TempOutcome, Error>> = others
        .par_iter()
        .filter(|p| !(is_record(p) && p.with_extension("").exists()))
        .map(|path| sweep_entry(path, opts, cut))
        .collect();
    for r in results {
        let r = r?;
        out.removed.extend(r.removed);
        out.skipped.extend(r.skipped);
    }
    Ok(out)
}

/// Judge one temp entry (not a lock file) and remove it if it is debris.
fn sweep_entry(path: &Path, opts: &GcOptions, cut: SystemTime) -> Result<TempOutcome, Error> {
    let mut out = TempOutcome::default();
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(out);
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let record = with_suffix(path, RESUME_SUFFIX);
    let resumable = record.exists();
    let trash = path.extension().is_some_and(|e| e == TRASH_SUFFIX);
    let dead = !resumable && recorded_pid(&name).is_some_and(pid_is_gone);
    let old = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) <= cut;
    if !(trash || dead || old) {
        return Ok(out);
    }
    if fsutil::is_held(path) {
        out.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason: SkipReason::InUse,
        });
        return Ok(out);
    }
    let bytes = bytes_under(path, &meta);
    if !opts.dry_run {
        fsutil::remove_any(path)?;
    }
    out.removed.push(TempRemoved {
        path: path.to_path_buf(),
        bytes,
    });
    if resumable {
        let bytes = fs::symlink_metadata(&record).map_or(0, |m| m.len());
        if !opts.dry_run {
            fsutil::remove_file(&record)?;
        }
        out.removed.push(TempRemoved {
            path: record,
            bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_read_from_temp_names() {
        assert_eq!(recorded_pid(".ingest.4242.7.1a2b.tmp"), Some(4242));
        assert_eq!(recorded_pid("layer.1.0.ff.tmp"), Some(1));
        assert_eq!(recorded_pid("a.b.c.4242.7.1a2b.tmp"), Some(4242));
        assert_eq!(recorded_pid("download.123.0.tmp"), None);
        assert_eq!(recorded_pid("young.tmp"), None);
        assert_eq!(recorded_pid("x.0.1.ab.tmp"), None);
        assert_eq!(recorded_pid("x.12.1.zz.tmp"), None);
        assert_eq!(recorded_pid("x.12.1.ab.gc-trash"), None);
    }

    #[test]
    fn our_own_pid_is_alive_and_a_reaped_child_is_gone() {
        assert!(!pid_is_gone(std::process::id().cast_signed()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id().cast_signed();
        child.wait().unwrap();
        assert!(pid_is_gone(pid));
    }
}
