//! `imgstore list`: list stored images.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::output::{human_size, print_json, short_id, Table};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let rows = store.list()?;
    if json {
        print_json(&rows)?;
    } else {
        let mut t = Table::new(&["ID", "NAME", "TYPE", "SIZE", "CREATED"]);
        for r in rows {
            t.row(vec![
                short_id(&r.id.to_string()),
                r.name,
                r.kind.to_string(),
                human_size(r.size),
                r.created_at,
            ]);
        }
        t.print()?;
    }
    Ok(ExitCode::SUCCESS)
}
