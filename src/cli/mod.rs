//! Command-line interface: argument parsing, tables, JSON, progress bars, exit codes. Each
//! command is one function in its own file under `cmd/`.
//! No storage logic lives here: every command is one call into [`imgstore::store::Store`].

mod cmd;
mod output;
mod progress;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use imgstore::store::{Store, StoreOptions};

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
    /// Give up waiting for a lock after this long (e.g. 30s, 5m, 1.5h).
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    lock_timeout: Duration,
    /// Mirror, blocked and insecure registry rules (containers-registries.conf v2), this file
    /// alone [default: `$CONTAINERS_REGISTRIES_CONF`,
    /// `$XDG_CONFIG_HOME/containers/registries.conf`, `/etc/containers/registries.conf`, the
    /// first that exists, then the `registries.conf.d/` drop-ins].
    #[arg(long, global = true, value_name = "FILE")]
    registries_conf: Option<PathBuf>,
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
        /// Connections per cloud image download, when the server supports guarded ranges.
        #[arg(long, value_name = "N", default_value_t = 4,
              value_parser = clap::value_parser!(u16).range(1..=16))]
        connections: u16,
        /// Use what is stored without asking the server; fail for what is not stored.
        #[arg(long, conflicts_with = "force")]
        offline: bool,
    },
    /// Push a stored image to a registry: a cloud image as a cocoon os-image artifact, an OCI
    /// image as an EROFS-native image.
    Push {
        /// Name, digest or digest prefix of the stored image.
        id: String,
        /// Where to push it (`host/repository:tag`).
        reference: String,
        /// Registry host to reach over plain http (loopback hosts always are).
        #[arg(long = "insecure-registry", value_name = "HOST")]
        insecure: Vec<String>,
        /// Split a cloud image into `.part` layers of this size (bytes, or with K/M/G/T suffix).
        #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "1G")]
        part_size: u64,
        /// Upload blobs up to this size in one request, bigger ones in chunks of it.
        #[arg(long, value_parser = parse_size, value_name = "SIZE", default_value = "32M")]
        chunk_size: u64,
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
    /// Re-hash stored blobs (blake3 by default); entries written by cocoon get size checks.
    Verify {
        /// Images to check; all when omitted.
        ids: Vec<String>,
        /// Check sha256 instead of blake3.
        #[arg(long)]
        sha256: bool,
        /// Record the digests of cocoon-written files that pass their size checks (trust on
        /// first use: later runs check them against what they hold now).
        #[arg(long)]
        record: bool,
    },
    /// Reclaim blobs no image uses, and stale temp files.
    Gc {
        /// Report what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Keep unreferenced blobs younger than this (e.g. 0, 30m, 1.5h).
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
    // The read verbs skip the signal thread: starting it is a large share of a `config`
    // (the boot path). A read killed while rebuilding a lookup cache leaves at most one temp
    // file in `db/`, which the next writer of that index removes.
    if !cli.command.read_only() {
        progress::install_interrupt_cleanup();
    }
    match run(&cli) {
        Ok(code) => code,
        // A reader that stops early (`| head`) is a normal end: nothing more to say.
        Err(e) if e.is::<output::StdoutClosed>() => ExitCode::SUCCESS,
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
    open_with(cli, firmware, insecure, max_size, None)
}

fn open_with(
    cli: &Cli,
    firmware: Option<PathBuf>,
    insecure: &[String],
    max_size: Option<u64>,
    connections: Option<usize>,
) -> Result<Store> {
    let root = cli
        .root
        .clone()
        .unwrap_or_else(imgstore::store::default_root);
    let mut opts = StoreOptions {
        lock_wait: imgstore::LockWait::timeout(cli.lock_timeout),
        on_wait: Some(progress::on_wait()),
        progress: progress::reporter(),
        firmware,
        ..StoreOptions::default()
    };
    opts.registry.insecure = insecure.to_vec();
    if let Some(conf) = &cli.registries_conf {
        opts.registry.registries_conf = imgstore::store::RegistriesConf::File(conf.clone());
    }
    if let Some(max) = max_size {
        opts.cloud_limits.max_download = max;
    }
    if let Some(n) = connections {
        opts.download_connections = n;
    }
    Store::open_opts(root, opts).context("opening store")
}

/// Run one command; each lives in its own file under `cmd/`.
fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Ref { refs } => cmd::reference::run(refs, cli.json()),
        Command::Pull {
            refs,
            force,
            insecure,
            max_size,
            connections,
            offline,
        } => cmd::pull::run(
            cli,
            refs,
            &cmd::pull::How {
                force: *force,
                offline: *offline,
                connections: usize::from(*connections),
            },
            insecure,
            *max_size,
        ),
        Command::Push {
            id,
            reference,
            insecure,
            part_size,
            chunk_size,
        } => cmd::push::run(
            cli,
            id,
            reference,
            insecure,
            &imgstore::store::PushOptions {
                part_size: *part_size,
                chunk_size: *chunk_size,
            },
        ),
        Command::Import { name, files, kind } => cmd::import::run(cli, name, files, *kind),
        Command::List => cmd::list::run(cli),
        Command::Inspect { id } => cmd::inspect::run(cli, id),
        Command::Rm { ids } => cmd::rm::run(cli, ids),
        Command::Config { ids, firmware } => cmd::config::run(cli, ids, firmware.as_ref()),
        Command::Verify {
            ids,
            sha256,
            record,
        } => cmd::verify::run(cli, ids, *sha256, *record),
        Command::Gc { dry_run, grace } => cmd::gc::run(cli, *dry_run, *grace),
    }
}

impl Command {
    /// Whether the command only reads the store (it writes at most a lookup cache).
    fn read_only(&self) -> bool {
        matches!(
            self,
            Command::Ref { .. } | Command::List | Command::Inspect { .. } | Command::Config { .. }
        )
    }
}

impl Cli {
    fn json(&self) -> bool {
        self.output == Format::Json
    }
}

/// The duration forms every duration option accepts, for its error message.
const DURATION_FORMS: &str = "a number with an optional unit ms, s, m, h or d (seconds when \
                              omitted; fractions allowed), e.g. 0, 90, 500ms, 90s, 30m, 1.5h, 2d";

/// `0`, `90` (seconds), `500ms`, `90s`, `30m`, `1.5h`, `2d`: a decimal number and a unit.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((t, ""), |i| t.split_at(i));
    let well_formed = num.bytes().any(|b| b.is_ascii_digit()) && num.matches('.').count() <= 1;
    let n: f64 = match num.parse() {
        Ok(n) if well_formed => n,
        _ => return Err(format!("invalid duration {s:?}: expected {DURATION_FORMS}")),
    };
    let unit_secs = match unit.trim_start() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: expected {DURATION_FORMS}"
            ))
        }
    };
    Duration::try_from_secs_f64(n * unit_secs)
        .map_err(|_| format!("duration {s:?} is too long: expected {DURATION_FORMS}"))
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
