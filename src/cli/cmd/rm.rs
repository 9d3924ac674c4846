//! `imgstore rm`: remove index entries.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::output::{emit, print_json, short_id};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli, ids: &[String]) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let removed = store.remove(&ids)?;
    if json {
        print_json(&removed)?;
    } else {
        emit(|out| {
            for r in &removed {
                for n in &r.names {
                    writeln!(out, "removed {n} ({})", short_id(&r.id.to_string()))?;
                }
            }
            Ok(())
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
