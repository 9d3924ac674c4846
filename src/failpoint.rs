//! Crash seams for tests: `IMGSTORE_FAILPOINT=<name>` makes the process abort at that step.
//!
//! [`hit`] is called at the points where a crash would leave the store in a distinct on-disk
//! state. When the environment variable names the point, the process calls
//! [`std::process::abort`]: no destructors run, no temp file is removed, no lock is released
//! except by the kernel closing the descriptors, exactly like a `kill -9` or a crash at that
//! line. The variable is read once; unset, a call costs one comparison with a cached value.
//! This module touches nothing on disk and knows nothing of what the points protect.
//!
//! The points, in the order an ingest or a collection reaches them:
//!
//! | name | where the process dies |
//! |---|---|
//! | `ingest.staged` | the source is in a fsynced temp file with its sums; no lock is held yet |
//! | `publish.before_rename` | under the digest lock, the finished blob is still in `temp/` |
//! | `oci.after_boot_publish` | a layer's `boot/<hex>/` is in place, its blob is not |
//! | `publish.after_rename` | an oci layer's blob is in `blobs/` (directory fsynced), no entry names it |
//! | `cloud.before_commit` | a cloud blob is in `blobs/`, the index entry is not written |
//! | `index.before_write` | under the index lock, `images.json.bak` is linked, the new index is not written |
//! | `index.after_rename` | the new index is in place and durable; locks are still held |
//! | `cache.before_rename` | the lookup cache is written and fsynced in its temp file, not renamed |
//! | `gc.after_delete_blob` | a collected blob is gone; its boot dir (if any) is not |
//! | `gc.after_delete_boot` | blob and boot dir are gone; the lease is still held and the dir fsync not done |

use std::sync::OnceLock;

/// The environment variable naming the point to die at.
pub const ENV: &str = "IMGSTORE_FAILPOINT";

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Abort the process if `IMGSTORE_FAILPOINT` equals `name`; otherwise do nothing.
#[inline]
pub fn hit(name: &'static str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        // stderr is unbuffered: the line is out before the abort, for whoever reads the log.
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
