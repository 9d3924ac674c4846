//! `imgstore push ID REF`: a stored image to a registry (cloud image as a cocoon os-image
//! artifact, OCI image as an EROFS-native image).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cli::output::{emit, print_json};
use crate::cli::{open_with, progress, Cli};
use imgstore::store::PushOptions;

/// Run the command.
pub(crate) fn run(
    cli: &Cli,
    id: &str,
    reference: &str,
    insecure: &[String],
    opts: &PushOptions,
) -> Result<ExitCode> {
    let store = open_with(cli, None, insecure, None, None)?;
    let out = store
        .push(id, reference, opts)
        .with_context(|| format!("pushing {id} to {reference}"))?;
    progress::clear();
    if cli.json() {
        print_json(&out)?;
    } else {
        let uploaded = out.uploaded();
        emit(|w| {
            writeln!(
                w,
                "{} {}@{} ({} blobs, {uploaded} uploaded)",
                out.kind,
                out.reference,
                out.manifest_digest,
                out.blobs.len()
            )
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
