//! `imgstore pull`: pull images: an http(s) URL is a cloud image, anything else an OCI reference.

use std::process::ExitCode;

use anyhow::Context;
use anyhow::Result;

use crate::cli::output::{emit, print_json, write_outcome};
use crate::cli::{open, progress, Cli};

/// Run the command.
pub(crate) fn run(
    cli: &Cli,
    refs: &[String],
    force: bool,
    insecure: &[String],
    max_size: Option<u64>,
) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, insecure, max_size)?;
    let mut rows = Vec::new();
    for r in refs {
        let out = if r.starts_with("http://") || r.starts_with("https://") {
            store.pull_cloud(r, force)
        } else {
            store.pull_oci(r, force)
        }
        .with_context(|| format!("pulling {r}"))?;
        progress::clear();
        rows.push(out);
    }
    if json {
        print_json(&rows)?;
    } else {
        emit(|w| rows.iter().try_for_each(|o| write_outcome(w, o)))?;
    }
    Ok(ExitCode::SUCCESS)
}
