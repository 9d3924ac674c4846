//! Resolving a query over the caches of both backends with exactly the precedence, ambiguity
//! rules and errors of [`crate::lookup::Lookup::resolve`] (DESIGN.md §6).

use super::read::{Cache, Record};
use super::Error;
use crate::digest::{Digest, Prefix};
use crate::lookup::{self, Candidate};
use crate::Kind;

/// The one image a query named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Backend.
    pub kind: Kind,
    /// Image ID.
    pub id: Digest,
    /// Its number in that backend's cache (for [`Cache::entry`]).
    pub image: u32,
    /// Every key naming it in its backend, sorted.
    pub keys: Vec<String>,
    /// Its record (for [`Cache::record_entry`], which reads no other block).
    pub record: Record,
}

/// Resolve `query` (with `canonical_query`, its canonical reference if it parses as one) over
/// `caches`, at most one per backend. The outer error means a cache is unusable: answer from
/// the JSON instead. The inner result is what the JSON path would answer.
///
/// Every step asks every cache, as the JSON path asks both backends: an exact key costs one
/// hash bucket and one record per cache.
pub fn resolve(
    caches: &[&Cache],
    query: &str,
    canonical_query: Option<&str>,
) -> Result<Result<Resolved, lookup::Error>, Error> {
    let mut hits: Vec<(usize, Record)> = Vec::new();
    for (c, cache) in caches.iter().enumerate() {
        if let Some(rec) = cache.record_by_key(query)? {
            hits.push((c, rec));
        }
    }
    if hits.is_empty() {
        if let Some(cq) = canonical_query {
            for (c, cache) in caches.iter().enumerate() {
                for img in cache.by_canonical(cq)? {
                    hits.push((c, cache.image_record(img)?));
                }
            }
        }
    }
    if hits.is_empty() && query.len() >= 64 {
        if let Ok(id) = Digest::parse(query) {
            for (c, cache) in caches.iter().enumerate() {
                if let Some(img) = cache.by_id(&id)? {
                    hits.push((c, cache.image_record(img)?));
                }
            }
        }
    }
    if hits.is_empty() {
        if let Ok(prefix) = Prefix::parse(query) {
            for (c, cache) in caches.iter().enumerate() {
                for (_, img) in cache.by_prefix(&prefix)? {
                    hits.push((c, cache.image_record(img)?));
                }
            }
        }
    }
    if hits.is_empty() {
        return Ok(Err(lookup::Error::nothing_matches(query)));
    }
    Ok(decide(caches, query, hits))
}

fn decide(
    caches: &[&Cache],
    query: &str,
    hits: Vec<(usize, Record)>,
) -> Result<Resolved, lookup::Error> {
    let mut found: Vec<(Kind, Record)> = hits
        .into_iter()
        .map(|(c, rec)| (caches[c].kind(), rec))
        .collect();
    found.sort_unstable_by_key(|(kind, rec)| (*kind, rec.id));
    found.dedup_by(|a, b| (a.0, a.1.id) == (b.0, b.1.id));
    if found.len() == 1 {
        let (kind, record) = found.remove(0);
        return Ok(Resolved {
            kind,
            id: record.id,
            image: record.image,
            keys: record.keys.clone(),
            record,
        });
    }
    let candidates = found
        .into_iter()
        .map(|(kind, rec)| Candidate {
            kind,
            id: rec.id,
            keys: rec.keys,
        })
        .collect();
    Err(lookup::Error::Ambiguous {
        query: query.to_owned(),
        candidates,
    })
}
