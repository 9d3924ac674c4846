//! Tables and JSON on stdout. Everything a command prints goes through [`emit`], so a reader
//! that stops early (`imgstore list | head -1`) ends the command quietly: a closed stdout is
//! [`StdoutClosed`], which `main` turns into exit 0 with nothing on stderr.

use std::fmt::Write as _;
use std::io::{self, Write};

use anyhow::Result;

/// The reader of stdout went away (`| head`): a normal end of the output, not a failure.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed by its reader")]
pub struct StdoutClosed;

/// Write to stdout through one buffer, flushed at the end. A closed stdout is [`StdoutClosed`];
/// any other write failure is an error saying it was stdout.
pub fn emit(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    // stdout is line-buffered: unbuffered, a large report (gc of 100,000 blobs) costs one
    // write(2) per line.
    let mut out = io::BufWriter::new(io::stdout().lock());
    match f(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            // Dropping the buffer would try to flush the rest into the closed pipe again.
            let _ = out.into_parts();
            Err(StdoutClosed.into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
    }
}

/// [`emit`] for a writer that also fails for other reasons (a store error mid-way): a closed
/// stdout found anywhere in the error's chain is still [`StdoutClosed`].
pub fn emit_any(f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    match f(&mut out).and_then(|()| out.flush().map_err(anyhow::Error::from)) {
        Ok(()) => Ok(()),
        Err(e) if broken_pipe(&e) => {
            let _ = out.into_parts();
            Err(StdoutClosed.into())
        }
        Err(e) => {
            // Nothing a failed closure wrote is printed after its error.
            let _ = out.into_parts();
            Err(e)
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .map(io::Error::kind)
            .or_else(|| c.downcast_ref::<serde_json::Error>()?.io_error_kind())
            == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Print `value` as pretty JSON followed by a newline.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    emit(|out| {
        serde_json::to_writer_pretty(&mut *out, value)?;
        writeln!(out)
    })
}

/// `1 blob`, `2 blobs`: a count with its noun in the right number.
pub fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A plain left-aligned table; the last column is not padded.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Write the table to `out`.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    let _ = write!(line, "{c:<w$}  ", w = widths[i]);
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    /// Print the table on stdout.
    pub fn print(&self) -> Result<()> {
        emit(|out| self.write(out))
    }
}

/// One line per pulled or imported image.
pub fn write_outcome(out: &mut dyn Write, o: &imgstore::store::PullOutcome) -> io::Result<()> {
    use imgstore::store::Revalidation;
    let note = match o.revalidation {
        Some(Revalidation::Unchanged) => " (already stored; unchanged on the server)",
        Some(Revalidation::Changed) => " (changed on the server; downloaded again)",
        Some(Revalidation::Offline) => " (already stored; not checked: offline)",
        Some(Revalidation::NoValidator) => {
            " (already stored; not checked: no ETag or Last-Modified was recorded when it was \
             downloaded, so imgstore cannot tell whether it changed; --force downloads it again)"
        }
        _ if o.reused => " (already stored)",
        _ => "",
    };
    writeln!(out, "{} {} {}{note}", o.kind, o.name, o.id)
}

pub fn short_id(d: &str) -> String {
    let hex = d.split_once(':').map_or(d, |(_, h)| h);
    hex.chars().take(12).collect()
}

/// `1 byte`, `512 bytes`, `1.5 KiB`, `774.7 MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)] // display only
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        plural(usize::try_from(n).unwrap_or(usize::MAX), "byte", "bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
