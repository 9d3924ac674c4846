//! `imgstore ref`: how image references parse and normalize (no store is opened).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use imgstore::reference::Reference;

use crate::cli::output::{emit, Table};

/// Parse each reference; print a table or one JSON object per line. Exit 1 if any is invalid.
pub(crate) fn run(refs: &[String], json: bool) -> Result<ExitCode> {
    let mut ok = true;
    let mut table = Table::new(&[
        "INPUT",
        "CANONICAL",
        "FAMILIAR",
        "DOMAIN",
        "PATH",
        "TAG",
        "DIGEST",
    ]);
    // JSON lines are collected and written at once, like the table, so a closed stdout ends
    // the output in one place.
    let mut lines = Vec::new();
    for input in refs {
        match Reference::parse(input) {
            Ok(r) => {
                if json {
                    let v = serde_json::json!({
                        "input": input,
                        "ok": true,
                        "domain": r.domain(),
                        "path": r.path(),
                        "tag": r.tag(),
                        "digest": r.digest().map(|d| d.to_string()),
                        "name": r.name(),
                        "normalized": r.normalized(),
                        "canonical": r.canonical(),
                        "familiar": r.familiar(),
                    });
                    let _ = writeln!(lines, "{v}");
                } else {
                    table.row(vec![
                        input.clone(),
                        r.canonical(),
                        r.familiar(),
                        r.domain().to_owned(),
                        r.path().to_owned(),
                        r.tag().unwrap_or("-").to_owned(),
                        r.digest().map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    ]);
                }
            }
            Err(e) => {
                ok = false;
                if json {
                    let v =
                        serde_json::json!({"input": input, "ok": false, "error": e.to_string()});
                    let _ = writeln!(lines, "{v}");
                }
                let _ = writeln!(std::io::stderr(), "error: invalid reference {input:?}: {e}");
            }
        }
    }
    if json {
        emit(|out| out.write_all(&lines))?;
    } else if !table.is_empty() {
        table.print()?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
