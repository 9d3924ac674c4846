//! `imgstore gc`: collect garbage.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use imgstore::gc::{GcOptions, GcReport};

use crate::cli::output::{emit, human_size, plural, print_json};
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
        emit(|out| out.write_all(text(&report).as_bytes()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The report for people: one line per entry, then a summary.
fn text(report: &GcReport) -> String {
    use std::fmt::Write as _;
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = String::new();
    for b in &report.blobs {
        let _ = writeln!(
            out,
            "{verb} {} blob {} ({})",
            b.kind,
            b.digest,
            human_size(b.bytes)
        );
    }
    for t in &report.temp {
        let _ = writeln!(
            out,
            "{verb} temp {} ({})",
            t.path.display(),
            human_size(t.bytes)
        );
    }
    for s in &report.skipped {
        let _ = writeln!(out, "skipped {}: {}", s.path.display(), s.reason);
    }
    let _ = writeln!(
        out,
        "{verb} {} and {}, {} freed; {} skipped; took {}",
        plural(report.blobs.len(), "blob", "blobs"),
        plural(report.temp.len(), "temp entry", "temp entries"),
        human_size(report.bytes_freed + report.temp_bytes_freed),
        plural(report.skipped.len(), "entry", "entries"),
        duration(report.duration)
    );
    out
}

/// `29 µs`, `12 ms`, `1.4 s`, `2 min 5 s`: whole units below a second, one decimal above.
fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{} ms", us / 1000)
    } else if d.as_secs() < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgstore::gc::{Collected, SkipReason, Skipped, TempRemoved};
    use imgstore::{Digest, Kind};

    #[test]
    fn reads_like_a_person_wrote_it() {
        let report = GcReport {
            blobs: vec![Collected {
                kind: Kind::CloudImg,
                digest: Digest::sha256_of(b"x"),
                bytes: 1,
            }],
            bytes_freed: 1,
            temp: vec![TempRemoved {
                path: "/r/cloudimg/temp/a.1.2.ab.tmp".into(),
                bytes: 2048,
            }],
            temp_bytes_freed: 2048,
            skipped: vec![Skipped {
                path: "/r/cloudimg/blobs/README".into(),
                reason: SkipReason::UnknownName,
            }],
            duration: Duration::from_nanos(29_013),
            ..GcReport::default()
        };
        let t = text(&report);
        assert!(t.contains("(1 byte)\n"), "{t}");
        assert!(t.contains("(2.0 KiB)\n"), "{t}");
        assert!(
            t.contains("skipped /r/cloudimg/blobs/README: not a name imgstore writes"),
            "{t}"
        );
        assert!(
            t.ends_with(
                "removed 1 blob and 1 temp entry, 2.0 KiB freed; 1 entry skipped; took 29 µs\n"
            ),
            "{t}"
        );
        for bad in ["bytes)", "(s)", "(ies)", "UnknownName", "µs)", ".013"] {
            assert!(!t.contains(bad), "{bad:?} in {t}");
        }
        assert_eq!(duration(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(duration(Duration::from_millis(12_345)), "12.3 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 5 s");
    }
}
