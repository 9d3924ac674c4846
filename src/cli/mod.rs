//! Command-line interface: argument parsing, output, exit codes. No storage logic.

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
