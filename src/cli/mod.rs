//! Command-line interface: argument parsing, tables, JSON, progress bars, exit codes.
//! No storage logic lives here: every command is one call into [`imgstore::store::Store`].

mod output;
mod progress;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use imgstore::gc::GcOptions;
use imgstore::reference::Reference;
use imgstore::store::{Store, StoreOptions};
use imgstore::{Algorithm, Kind};

use output::{print_json, Table};

/// A content-addressed store for VM images (OCI layers as EROFS, cloud images as qcow2).
#[derive(Parser, Debug)]
#[command(name = "imgstore", version, about)]
struct Cli {
    /// Store root [default: `$IMGSTORE_ROOT`, `/var/lib/imgstore` as root, else `~/.local/share/imgstore`].
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Give up waiting for a lock after this long (e.g. 30s, 5m).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    lock_timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum TypeArg {
    Oci,
    Cloudimg,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show how image references parse and normalize.
    Ref {
        /// References to parse.
        #[arg(required = true)]
        refs: Vec<String>,
    },
    /// Pull images: an http(s) URL is a cloud image, anything else an OCI reference.
    Pull {
        /// References or URLs.
        #[arg(required = true)]
        refs: Vec<String>,
        /// Download again even if already stored.
        #[arg(long)]
        force: bool,
        /// Registry host to reach over plain http (loopback hosts always are).
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
        /// Largest cloud image download accepted (bytes, or with K/M/G/T suffix).
        #[arg(long, value_parser = parse_size, value_name = "SIZE")]
        max_size: Option<u64>,
    },
    /// Import an image from files (or stdin): layer tars, an OCI layout or archive, or a disk image.
    Import {
        /// Name to store it under.
        name: String,
        /// Files: split parts of one disk image, or OCI layer tars in order; none = stdin.
        files: Vec<PathBuf>,
        /// Image type; detected from content when omitted.
        #[arg(long = "type", value_enum)]
        kind: Option<TypeArg>,
    },
    /// List stored images.
    #[command(alias = "ls")]
    List,
    /// Show one image: names, blobs, digests.
    Inspect {
        /// Name, digest or digest prefix (≥ 12 hex digits).
        id: String,
    },
    /// Remove images from the index (blobs are reclaimed by gc).
    Rm {
        /// Names, digests or digest prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Print the VM disk and boot configuration of images.
    Config {
        /// Names, digests or digest prefixes.
        #[arg(required = true)]
        ids: Vec<String>,
        /// UEFI firmware for cloud images [default: <root>/firmware/CLOUDHV.fd].
        #[arg(long, value_name = "PATH")]
        firmware: Option<PathBuf>,
    },
    /// Re-hash stored blobs (blake3 by default).
    Verify {
        /// Images to check; all when omitted.
        ids: Vec<String>,
        /// Check sha256 instead of blake3.
        #[arg(long)]
        sha256: bool,
    },
    /// Reclaim blobs no image uses, and stale temp files.
    Gc {
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced blobs younger than this (e.g. 0, 30m, 1h).
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        grace: Duration,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    progress::install_interrupt_cleanup();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            if disk_full(&e, &msg) {
                msg.push_str(
                    "\nhint: the disk holding the store is full; nothing was stored. Free space \
                     (`imgstore gc` reclaims unused blobs) and try again.",
                );
            }
            progress::clear();
            let _ = writeln!(std::io::stderr(), "{msg}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a failure came from a full filesystem. Tools such as `qemu-img` and `mkfs.erofs`
/// report it only in their output, so their text is checked too.
fn disk_full(e: &anyhow::Error, msg: &str) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
    }) || msg.contains("No space left on device")
}

fn open(
    cli: &Cli,
    firmware: Option<PathBuf>,
    insecure: &[String],
    max_size: Option<u64>,
) -> Result<Store> {
    let root = cli
        .root
        .clone()
        .unwrap_or_else(imgstore::store::default_root);
    let mut opts = StoreOptions {
        lock_wait: imgstore::lock::LockWait::timeout(cli.lock_timeout),
        on_wait: Some(progress::on_wait()),
        progress: progress::reporter(),
        firmware,
        ..StoreOptions::default()
    };
    opts.registry.insecure = insecure.to_vec();
    if let Some(max) = max_size {
        opts.cloud_limits.max_download = max;
    }
    Store::open_opts(root, opts).context("opening store")
}

// One arm per command, each a call into the store plus its output; splitting it would only
// scatter the command table.
#[allow(clippy::too_many_lines)]
fn run(cli: &Cli) -> Result<ExitCode> {
    let json = cli.output == Format::Json;
    match &cli.command {
        Command::Ref { refs } => Ok(cmd_ref(refs, json)),
        Command::Pull {
            refs,
            force,
            insecure,
            max_size,
        } => {
            let store = open(cli, None, insecure, *max_size)?;
            let mut rows = Vec::new();
            for r in refs {
                let out = if r.starts_with("http://") || r.starts_with("https://") {
                    store.pull_cloud(r, *force)
                } else {
                    store.pull_oci(r, *force)
                }
                .with_context(|| format!("pulling {r}"))?;
                progress::clear();
                rows.push(out);
            }
            if json {
                print_json(&rows)?;
            } else {
                for o in rows {
                    print_outcome(&o);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import { name, files, kind } => {
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
                print_outcome(&out);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let store = open(cli, None, &[], None)?;
            let rows = store.list()?;
            if json {
                print_json(&rows)?;
            } else {
                let mut t = Table::new(&["ID", "NAME", "TYPE", "SIZE", "CREATED"]);
                for r in rows {
                    t.row(vec![
                        short_id(&r.id.to_string()),
                        r.name,
                        r.kind.to_string(),
                        human_size(r.size),
                        r.created_at,
                    ]);
                }
                t.print();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { id } => {
            let store = open(cli, None, &[], None)?;
            let info = store.inspect(id)?;
            if json {
                print_json(&info)?;
            } else {
                println!("id:         {}", info.id);
                println!("type:       {}", info.kind);
                println!("names:      {}", info.names.join(", "));
                println!("size:       {} ({})", info.size, human_size(info.size));
                println!("created_at: {}", info.created_at);
                let mut t = Table::new(&["ROLE", "SIZE", "BLAKE3", "PATH"]);
                for b in info.blobs {
                    t.row(vec![
                        b.role.to_owned(),
                        b.size.map_or_else(|| "-".to_owned(), human_size),
                        b.blake3
                            .map_or_else(|| "-".to_owned(), |d| short_id(&d.to_string())),
                        b.path.display().to_string(),
                    ]);
                }
                t.print();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm { ids } => {
            let store = open(cli, None, &[], None)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let removed = store.remove(&ids)?;
            if json {
                print_json(&removed)?;
            } else {
                for r in removed {
                    for n in r.names {
                        println!("removed {n} ({})", short_id(&r.id.to_string()));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { ids, firmware } => {
            let store = open(cli, firmware.clone(), &[], None)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let configs = store.config(&ids)?;
            if json {
                print_json(&configs)?;
            } else {
                for c in configs {
                    println!("{} ({}, {})", c.image, c.image_type, c.image_digest);
                    for d in &c.storage {
                        println!(
                            "  disk {} serial={} ro={} role={}",
                            d.path.display(),
                            d.serial,
                            d.ro,
                            d.role
                        );
                    }
                    match &c.boot {
                        imgstore::store::Boot::Kernel {
                            kernel_path,
                            initrd_path,
                        } => {
                            println!("  kernel {}", kernel_path.display());
                            println!("  initrd {}", initrd_path.display());
                        }
                        imgstore::store::Boot::Firmware { firmware_path } => {
                            println!("  firmware {}", firmware_path.display());
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { ids, sha256 } => {
            let store = open(cli, None, &[], None)?;
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let algo = if *sha256 {
                Algorithm::Sha256
            } else {
                Algorithm::Blake3
            };
            let rows = store.verify(&ids, algo)?;
            let bad = rows
                .iter()
                .filter(|r| matches!(r.status, "corrupt" | "missing" | "truncated"))
                .count();
            if json {
                print_json(&rows)?;
            } else {
                let mut t = Table::new(&["STATUS", "IMAGE", "ROLE", "PATH", "DETAIL"]);
                for r in rows {
                    t.row(vec![
                        r.status.to_owned(),
                        r.image,
                        r.role.to_owned(),
                        r.path.display().to_string(),
                        r.detail.unwrap_or_default(),
                    ]);
                }
                t.print();
            }
            if bad > 0 {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: {bad} blob(s) failed verification"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { dry_run, grace } => {
            let store = open(cli, None, &[], None)?;
            let opts = GcOptions {
                grace: *grace,
                dry_run: *dry_run,
                lock_wait: imgstore::lock::LockWait::timeout(cli.lock_timeout),
                ..GcOptions::default()
            };
            let report = store.gc(&opts, &[])?;
            if json {
                print_json(&report)?;
            } else {
                let verb = if report.dry_run {
                    "would remove"
                } else {
                    "removed"
                };
                for b in &report.blobs {
                    println!(
                        "{verb} {} blob {} ({})",
                        b.kind,
                        b.digest,
                        human_size(b.bytes)
                    );
                }
                for t in &report.temp {
                    println!("{verb} temp {}", t.path.display());
                }
                for s in &report.skipped {
                    println!("skipped {} ({:?})", s.path.display(), s.reason);
                }
                println!(
                    "{verb} {} blob(s), {} freed, {} temp entr(ies); {} skipped; {} ms",
                    report.blobs.len(),
                    human_size(report.bytes_freed),
                    report.temp.len(),
                    report.skipped.len(),
                    report.duration_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_ref(refs: &[String], json: bool) -> ExitCode {
    let mut ok = true;
    let mut table = Table::new(&[
        "INPUT",
        "CANONICAL",
        "FAMILIAR",
        "DOMAIN",
        "PATH",
        "TAG",
        "DIGEST",
    ]);
    let mut stdout = std::io::stdout().lock();
    for input in refs {
        match Reference::parse(input) {
            Ok(r) => {
                if json {
                    let v = serde_json::json!({
                        "input": input,
                        "ok": true,
                        "domain": r.domain(),
                        "path": r.path(),
                        "tag": r.tag(),
                        "digest": r.digest().map(|d| d.to_string()),
                        "name": r.name(),
                        "normalized": r.normalized(),
                        "canonical": r.canonical(),
                        "familiar": r.familiar(),
                    });
                    let _ = writeln!(stdout, "{v}");
                } else {
                    table.row(vec![
                        input.clone(),
                        r.canonical(),
                        r.familiar(),
                        r.domain().to_owned(),
                        r.path().to_owned(),
                        r.tag().unwrap_or("-").to_owned(),
                        r.digest().map_or_else(|| "-".to_owned(), |d| d.to_string()),
                    ]);
                }
            }
            Err(e) => {
                ok = false;
                if json {
                    let v =
                        serde_json::json!({"input": input, "ok": false, "error": e.to_string()});
                    let _ = writeln!(stdout, "{v}");
                }
                let _ = writeln!(std::io::stderr(), "error: invalid reference {input:?}: {e}");
            }
        }
    }
    drop(stdout);
    if !json && !table.is_empty() {
        table.print();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_outcome(o: &imgstore::store::PullOutcome) {
    let note = if o.reused { " (already stored)" } else { "" };
    println!("{} {} {}{note}", o.kind, o.name, o.id);
}

fn short_id(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.chars().take(12).collect()
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // display only
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `0`, `90s`, `30m`, `1h`, `2d`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 0, 90s, 30m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Bytes, or with a K/M/G/T suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}"))?;
    let mult: u64 = match unit.trim_end_matches(['i', 'B']) {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("invalid size unit in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}
