//! Progress bars on a terminal (quiet otherwise), lock-wait notices, and Ctrl-C cleanup.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;

use imgstore::store::{OnWait, Progress};

static BAR: OnceLock<Mutex<Option<(String, ProgressBar)>>> = OnceLock::new();

fn bar() -> &'static Mutex<Option<(String, ProgressBar)>> {
    BAR.get_or_init(|| Mutex::new(None))
}

/// Prints "waiting for lock on …" once per contended lock, terminal or not.
pub fn on_wait() -> OnWait {
    Arc::new(|path: &Path| {
        clear();
        eprintln!("waiting for lock on {}", path.display());
    })
}

/// A progress reporter drawing one bar per task on stderr, or `None` when stderr is not a
/// terminal (scripts and CI get clean output).
pub fn reporter() -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Arc::new(|what: &str, done: u64, total: Option<u64>| {
        let mut slot = bar().lock();
        let fresh = !matches!(&*slot, Some((w, _)) if w == what);
        if fresh {
            if let Some((_, old)) = slot.take() {
                old.finish_and_clear();
            }
            let pb = match total {
                // A step with no byte count (a conversion): an animated spinner and the whole
                // message, instead of a frozen "0 B 0 B/s".
                None if done == 0 => {
                    let pb = ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{spinner} {wide_msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    pb.enable_steady_tick(std::time::Duration::from_millis(120));
                    pb
                }
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg:30} {bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            pb.set_message(if total.is_none() && done == 0 {
                what.to_owned()
            } else {
                tail(what, LABEL_WIDTH)
            });
            *slot = Some((what.to_owned(), pb));
        }
        if let Some((_, pb)) = &*slot {
            if let Some(t) = total {
                pb.set_length(t);
            }
            pb.set_position(done);
        }
    }))
}

/// Width of the label column of a bar.
const LABEL_WIDTH: usize = 30;

/// The end of `what` in at most `width` characters: for a URL or path the file name at the end
/// says more than the scheme and host at the start.
fn tail(what: &str, width: usize) -> String {
    let n = what.chars().count();
    if n <= width {
        return what.to_owned();
    }
    let keep: String = what.chars().skip(n - (width - 1)).collect();
    format!("…{keep}")
}

/// Remove the bar, if any.
pub fn clear() {
    if let Some((_, pb)) = bar().lock().take() {
        pb.finish_and_clear();
    }
}

/// On SIGINT / SIGTERM / SIGHUP: remove this process's temp files and exit 130 (128 + signal
/// for the others), so an interrupted pull leaves nothing behind.
pub fn install_interrupt_cleanup() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            clear();
            // Partial downloads stay, with their resume record: the next pull continues them.
            imgstore::store::save_partial_downloads();
            imgstore::store::remove_live_temps();
            eprintln!("interrupted; temporary files removed, partial downloads kept for resume");
            std::process::exit(128 + sig);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn long_labels_keep_their_end() {
        assert_eq!(tail("short", 30), "short");
        let url = "https://cloud-images.ubuntu.com/jammy/current/jammy-server-cloudimg-amd64.img";
        let t = tail(url, 30);
        assert_eq!(t.chars().count(), 30);
        assert!(
            t.starts_with('…') && t.ends_with("-server-cloudimg-amd64.img"),
            "{t}"
        );
        assert_eq!(tail("ééééé", 3), "…éé");
    }
}
