//! `imgstore list`: list stored images.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use serde::ser::{SerializeSeq, Serializer as _};

use crate::cli::output::{emit_any, human_size, short_id, Table};
use crate::cli::{open, Cli};

/// Run the command.
pub(crate) fn run(cli: &Cli) -> Result<ExitCode> {
    let json = cli.json();
    let store = open(cli, None, &[], None)?;
    if json {
        // Streamed: each row is written as it comes, borrowed from the lookup cache. The store
        // hands out rows only once it has read and checked them all, so on a failure only the
        // opening bracket is in the buffer, and `emit_any` drops it unprinted.
        emit_any(|out| {
            let mut chunks = Chunked {
                buf: Vec::with_capacity(CHUNK + 4096),
                out,
            };
            let mut ser = serde_json::Serializer::pretty(&mut chunks);
            let mut seq = ser.serialize_seq(None)?;
            store.list_with(|row| {
                seq.serialize_element(&row)?;
                anyhow::Ok(())
            })?;
            seq.end()?;
            writeln!(chunks)?;
            chunks.out.write_all(&chunks.buf)?;
            Ok(())
        })?;
    } else {
        let rows = store.list()?;
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
        t.print()?;
    }
    Ok(ExitCode::SUCCESS)
}

const CHUNK: usize = 1 << 16;

/// Collects the serializer's many small writes in a plain buffer (inlined, unlike writes
/// through `dyn Write`) and passes them on in chunks.
struct Chunked<'a> {
    buf: Vec<u8>,
    out: &'a mut dyn Write,
}

impl Write for Chunked<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.write_all(b)?;
        Ok(b.len())
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
