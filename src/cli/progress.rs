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
                Some(t) => ProgressBar::new(t).with_style(
                    ProgressStyle::with_template(
                        "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg:30!} {bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            pb.set_message(what.to_owned());
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
            imgstore::fsutil::remove_live_temps();
            eprintln!("interrupted; temporary files removed");
            std::process::exit(128 + sig);
        }
    });
}
