//! Hash files with `imgstore::verify::hash_file`, for timing against `b3sum` and `openssl`
//! (benches/compare.sh). Several files are hashed in parallel, as `verify` does; set
//! `RAYON_NUM_THREADS=1` for one thread. Usage: `hashfile blake3|sha256|sha512 FILE...`.

use std::path::Path;
use std::process::ExitCode;

use imgstore::digest::Algorithm;
use rayon::prelude::*;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [algo, files @ ..] = args.as_slice() else {
        eprintln!("usage: hashfile blake3|sha256|sha512 FILE...");
        return ExitCode::from(2);
    };
    let algo = match algo.as_str() {
        "blake3" => Algorithm::Blake3,
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        other => {
            eprintln!("error: unknown algorithm {other:?}");
            return ExitCode::from(2);
        }
    };
    if files.is_empty() {
        eprintln!("usage: hashfile blake3|sha256|sha512 FILE...");
        return ExitCode::from(2);
    }
    let results: Vec<_> = files
        .par_iter()
        .map(|f| imgstore::verify::hash_file(Path::new(f), algo))
        .collect();
    let mut status = ExitCode::SUCCESS;
    for (file, result) in files.iter().zip(results) {
        match result {
            Ok((digest, _)) => println!("{}  {file}", digest.hex()),
            Err(e) => {
                eprintln!("error: {e}");
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}
