//! The boot path as a VM manager runs it, timed: `Store::open` + `Store::config` of one image,
//! repeated. Prints the mean in nanoseconds (`benches/boot_share.sh` compares it with the time a
//! guest takes to reach init). Usage: `config_time ROOT ID [ITERATIONS]`.

use std::process::ExitCode;
use std::time::Instant;

use imgstore::store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, id, iterations) = match args.as_slice() {
        [root, id] => (root, id, 1000),
        [root, id, n] => match n.parse::<u32>() {
            Ok(n) if n > 0 => (root, id, n),
            _ => {
                eprintln!("error: ITERATIONS must be a positive number, not {n:?}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: config_time ROOT ID [ITERATIONS]");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    for _ in 0..iterations {
        let configs = Store::open(root).and_then(|s| s.config(&[id.as_str()]));
        if let Err(e) = configs {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!("{}", start.elapsed().as_nanos() / u128::from(iterations));
    ExitCode::SUCCESS
}
