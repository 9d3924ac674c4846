//! `imgstore pull`: pull images: an http(s) URL is a cloud image, anything else an OCI reference.

use std::process::ExitCode;

use anyhow::Context;
use anyhow::Result;

use crate::cli::output::{emit, print_json, write_outcome};
use crate::cli::{open_with, progress, Cli};
use imgstore::store::CloudPull;

/// How to pull.
pub(crate) struct How {
    pub force: bool,
    pub offline: bool,
    pub connections: usize,
}

/// Run the command.
pub(crate) fn run(
    cli: &Cli,
    refs: &[String],
    how: &How,
    insecure: &[String],
    max_size: Option<u64>,
) -> Result<ExitCode> {
    let json = cli.json();
    let store = open_with(cli, None, insecure, max_size, Some(how.connections))?;
    let force = how.force;
    let mut rows = Vec::new();
    for r in refs {
        let url = r.starts_with("http://") || r.starts_with("https://");
        if how.offline && !url {
            anyhow::bail!(
                "pulling {r}: --offline pulls only cloud image URLs (http:// or https://)"
            );
        }
        let out = if url {
            store.pull_cloud_with(
                r,
                CloudPull {
                    force,
                    offline: how.offline,
                },
            )
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
