//! The test suite's range server (`tests/it/range_server.rs`) as a program, for
//! `benches/download_compare.sh`: serves one file on 127.0.0.1 with ranges and a strong `ETag`,
//! optionally capped in bytes per second per connection, until stdin closes.
//!
//! `range_server FILE RATE_BYTES_PER_SEC` (0 = uncapped); prints the URL on stdout.

#[path = "../tests/it/range_server.rs"]
mod range_server;

use std::io::Read;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(rate)) = (args.next(), args.next()) else {
        eprintln!("usage: range_server FILE RATE_BYTES_PER_SEC");
        std::process::exit(2);
    };
    let rate: u64 = rate.parse().unwrap_or_else(|_| {
        eprintln!("rate must be a number of bytes per second");
        std::process::exit(2);
    });
    let body = std::fs::read(&file).unwrap_or_else(|e| {
        eprintln!("reading {file}: {e}");
        std::process::exit(1);
    });
    let server = range_server::RangeServer::start(
        body,
        range_server::Mode {
            rate,
            ..range_server::Mode::default()
        },
    );
    println!("{}", server.url("/image.qcow2"));
    // Serve until the parent closes our stdin (the bench script ends), then stop cleanly.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(server);
}
