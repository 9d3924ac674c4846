//! Generate (once) the store root of `N` images the boot-path benchmarks use and print its path;
//! its `.complete` file lists the queried name, short reference and 12-hex prefix, one a line.
//! Usage: `boot_path_root BASE_DIR N` (`benches/boot_path.sh`).

use std::path::Path;
use std::process::ExitCode;

#[path = "../benches/support/boot_root.rs"]
mod boot_root;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, n] = args.as_slice() else {
        eprintln!("usage: boot_path_root BASE_DIR N");
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<usize>() else {
        eprintln!("N must be a number");
        return ExitCode::from(2);
    };
    let (root, _) = boot_root::root(Path::new(base), n);
    println!("{}", root.display());
    ExitCode::SUCCESS
}
