//! `imgstore gc`: collect garbage.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use imgstore::gc::GcOptions;

use crate::cli::output::{emit, human_size, print_json};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli, dry_run: bool, grace: Duration) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let opts = GcOptions {
        grace,
        dry_run,
        lock_wait: imgstore::LockWait::timeout(cli.lock_timeout),
        ..GcOptions::default()
    };
    let report = store.gc(&opts, &[])?;
    if json {
        print_json(&report)?;
    } else {
        let verb = if report.dry_run {
            "would remove"
        } else {
            "removed"
        };
        emit(|out| {
            for b in &report.blobs {
                writeln!(
                    out,
                    "{verb} {} blob {} ({})",
                    b.kind,
                    b.digest,
                    human_size(b.bytes)
                )?;
            }
            for t in &report.temp {
                writeln!(out, "{verb} temp {}", t.path.display())?;
            }
            for s in &report.skipped {
                writeln!(out, "skipped {} ({:?})", s.path.display(), s.reason)?;
            }
            writeln!(
                out,
                "{verb} {} blob(s), {} freed, {} temp entr(ies); {} skipped; {} ms",
                report.blobs.len(),
                human_size(report.bytes_freed),
                report.temp.len(),
                report.skipped.len(),
                report.duration_ms
            )?;
            Ok(())
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
