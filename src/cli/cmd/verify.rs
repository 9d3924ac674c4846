//! `imgstore verify`: re-hash stored blobs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use imgstore::Algorithm;

use crate::cli::output::{print_json, Table};
use crate::cli::{open, Cli};

/// Run the command; the exit code is 1 when it reports a failure without an error.
pub(crate) fn run(cli: &Cli, ids: &[String], sha256: bool) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let algo = if sha256 {
        Algorithm::Sha256
    } else {
        Algorithm::Blake3
    };
    let rows = store.verify(&ids, algo)?;
    let bad = rows.iter().filter(|r| r.status.is_failure()).count();
    if json {
        print_json(&rows)?;
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
        t.print();
    }
    if bad > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "error: {bad} blob(s) failed verification"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
