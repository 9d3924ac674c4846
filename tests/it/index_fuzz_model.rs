//! The property the `index` fuzz target checks, shared with the seed test (the fuzz target
//! includes this file with `#[path]`, so it uses only std and the public `imgstore` API).
//!
//! For any bytes in `images.json`, loading as either backend's index never panics; a load that
//! fails leaves the file as it was; a load that succeeds can be saved, the saved file loads to an
//! equal index, saving that again writes nothing, and the backup holds the original bytes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imgstore::index::file::{backup_path, load, save};
use imgstore::index::{CloudEntry, Entry, OciEntry};
use imgstore::lock::{lock_file, LockWait, Mode};

/// Where to work: tmpfs when there is one, since every save fsyncs.
fn work_base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        }
    })
}

/// Check both backends' schemas against `data`.
pub fn check(data: &[u8]) {
    // One directory per process and thread (test threads may call this at once), removed after.
    let thread =
        format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
    let dir = work_base().join(format!(
        "imgstore-index-fuzz.{}.{thread}",
        std::process::id()
    ));
    check_as::<OciEntry>(&dir, data);
    check_as::<CloudEntry>(&dir, data);
    let _ = std::fs::remove_dir_all(&dir);
}

fn check_as<E: Entry + PartialEq + std::fmt::Debug>(dir: &Path, data: &[u8]) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("creating the case directory");
    let path = dir.join("images.json");
    std::fs::write(&path, data).expect("writing the case");
    match load::<E>(&path) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert_eq!(
                std::fs::read(&path).expect("reading back"),
                data,
                "a failed load changed the file"
            );
            assert_eq!(std::fs::read_dir(dir).map(Iterator::count).ok(), Some(1));
        }
        Ok(loaded) => {
            let guard = lock_file(
                &dir.join("images.lock"),
                Mode::Exclusive,
                LockWait::no_wait(),
                &|_| {},
            )
            .expect("an uncontended lock");
            let wrote = save(&loaded, &path, &guard).expect("saving a loaded index");
            let again = load::<E>(&path).expect("a saved index loads");
            assert_eq!(
                again.index, loaded.index,
                "save then load changed the index"
            );
            assert!(
                !save(&again, &path, &guard).expect("saving again"),
                "saving an unchanged index wrote the file"
            );
            if wrote {
                assert_eq!(
                    std::fs::read(backup_path(&path)).expect("the backup exists"),
                    data,
                    "the backup holds the original bytes"
                );
            } else {
                assert_eq!(std::fs::read(&path).expect("reading back"), data);
            }
        }
    }
}
