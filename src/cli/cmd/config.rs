//! `imgstore config`: print VM configurations.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use crate::cli::output::{emit, print_json};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli, ids: &[String], firmware: Option<&PathBuf>) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, firmware.cloned(), &[], None)?;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let configs = store.config(&ids)?;
    if json {
        print_json(&configs)?;
    } else {
        emit(|out| {
            for c in configs {
                writeln!(out, "{} ({}, {})", c.image, c.image_type, c.image_digest)?;
                for d in &c.storage {
                    writeln!(
                        out,
                        "  disk {} serial={} ro={} role={}",
                        d.path.display(),
                        d.serial,
                        d.ro,
                        d.role
                    )?;
                }
                match &c.boot {
                    imgstore::store::Boot::Kernel {
                        kernel_path,
                        initrd_path,
                    } => {
                        writeln!(out, "  kernel {}", kernel_path.display())?;
                        writeln!(out, "  initrd {}", initrd_path.display())?;
                    }
                    imgstore::store::Boot::Firmware { firmware_path } => {
                        writeln!(out, "  firmware {}", firmware_path.display())?;
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(ExitCode::SUCCESS)
}
