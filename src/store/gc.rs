//! Garbage collection through the facade (the work is in [`crate::gc`]).

use crate::gc::{self, GcOptions, GcReport, PinSource};

use super::{Error, Store};

impl Store {
    /// Collect garbage (§9): unreferenced blobs older than the grace period, stale temp entries.
    ///
    /// # Errors
    /// A failing pin source (nothing is deleted), an unreadable index, an I/O failure.
    pub fn gc(&self, opts: &GcOptions, pins: &[&dyn PinSource]) -> Result<GcReport, Error> {
        Ok(gc::collect(&self.layout, opts, pins)?)
    }
}
