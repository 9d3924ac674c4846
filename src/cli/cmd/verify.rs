//! `imgstore verify`: re-hash stored blobs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use imgstore::store::{Role, Status, VerifyOptions};
use imgstore::Algorithm;

use crate::cli::output::{plural, print_json, StdoutClosed, Table};
use crate::cli::{open, Cli};

/// Run the command; the exit code is 1 when it reports a failure without an error.
pub(crate) fn run(cli: &Cli, ids: &[String], sha256: bool, record: bool) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let opts = VerifyOptions {
        algorithm: if sha256 {
            Algorithm::Sha256
        } else {
            Algorithm::Blake3
        },
        record,
    };
    let rows = store.verify_with(&ids, &opts)?;
    let recorded = rows.iter().filter(|r| r.status == Status::Recorded).count();
    let failed = |image: bool| {
        rows.iter()
            .filter(|r| r.status.is_failure())
            .filter(|r| (r.role == Role::Image) == image)
            .count()
    };
    let (bad_files, bad_images) = (failed(false), failed(true));
    let printed = if json {
        print_json(&rows)
    } else {
        let mut t = Table::new(&["STATUS", "IMAGE", "ROLE", "PATH", "DETAIL"]);
        for r in rows {
            t.row(vec![
                r.status.to_string(),
                r.image,
                r.role.to_string(),
                r.path.display().to_string(),
                r.detail.unwrap_or_default(),
            ]);
        }
        t.print()
    };
    // A reader that stopped early ends the listing, not the verdict: failures still exit 1.
    match printed {
        Err(e) if e.is::<StdoutClosed>() && bad_files + bad_images > 0 => {}
        other => other?,
    }
    if recorded > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "note: recorded the digests of {} written by cocoon, trusting them as they are now \
             (trust on first use); later runs of verify check them against these",
            plural(recorded, "file", "files")
        );
    }
    if bad_files + bad_images > 0 {
        let what = match (bad_files, bad_images) {
            (f, 0) => plural(f, "file", "files"),
            (0, i) => plural(i, "image", "images"),
            (f, i) => format!(
                "{} and {}",
                plural(f, "file", "files"),
                plural(i, "image", "images")
            ),
        };
        let _ = writeln!(std::io::stderr(), "error: {what} failed verification");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
