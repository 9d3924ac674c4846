//! `imgstore import`: import an image from files or stdin.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use anyhow::Result;
use imgstore::Kind;

use crate::cli::output::{emit, print_json, write_outcome};
use crate::cli::{open, progress, Cli, TypeArg};

/// Run the command.
pub(crate) fn run(
    cli: &Cli,
    name: &str,
    files: &[PathBuf],
    kind: Option<TypeArg>,
) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    let kind = match kind {
        Some(TypeArg::Oci) => Some(Kind::Oci),
        Some(TypeArg::Cloudimg) => Some(Kind::CloudImg),
        None => None,
    };
    let out = store
        .import(name, files, kind)
        .with_context(|| format!("importing {name}"))?;
    progress::clear();
    if json {
        print_json(&out)?;
    } else {
        emit(|w| write_outcome(w, &out))?;
    }
    Ok(ExitCode::SUCCESS)
}
