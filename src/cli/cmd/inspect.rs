//! `imgstore inspect`: show one image.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::output::{emit, human_size, print_json, short_id, Table};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli, id: &str) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let info = store.inspect(id)?;
    if json {
        print_json(&info)?;
    } else {
        let mut t = Table::new(&["ROLE", "SIZE", "BLAKE3", "PATH"]);
        for b in &info.blobs {
            t.row(vec![
                b.role.to_string(),
                b.size.map_or_else(|| "-".to_owned(), human_size),
                b.blake3
                    .map_or_else(|| "-".to_owned(), |d| short_id(&d.to_string())),
                b.path.display().to_string(),
            ]);
        }
        emit(|out| {
            writeln!(out, "id:         {}", info.id)?;
            writeln!(out, "type:       {}", info.kind)?;
            writeln!(out, "names:      {}", info.names.join(", "))?;
            if info.size < 1024 {
                writeln!(out, "size:       {}", human_size(info.size))?;
            } else {
                let exact = human_size(info.size);
                writeln!(out, "size:       {exact} ({} bytes)", info.size)?;
            }
            writeln!(out, "created_at: {}", info.created_at)?;
            t.write(out)
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
