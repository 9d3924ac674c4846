//! Hash one file with `imgstore::verify::hash_file`, for timing against `b3sum` and `openssl`
//! (benches/compare.sh). Usage: `hashfile blake3|sha256|sha512 FILE`.

use std::path::Path;
use std::process::ExitCode;

use imgstore::digest::Algorithm;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [algo, file] = args.as_slice() else {
        eprintln!("usage: hashfile blake3|sha256|sha512 FILE");
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
    match imgstore::verify::hash_file(Path::new(file), algo) {
        Ok((digest, _)) => {
            println!("{}  {file}", digest.hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
