//! Resolving a query over the caches of both backends with exactly the precedence, ambiguity
//! rules and errors of [`crate::lookup::Lookup::resolve`] (DESIGN.md §6).

use super::read::Cache;
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
}

/// Resolve `query` (with `canonical_query`, its canonical reference if it parses as one) over
/// `caches`, at most one per backend. The outer error means a cache is unusable: answer from
/// the JSON instead. The inner result is what the JSON path would answer.
pub fn resolve(
    caches: &[&Cache],
    query: &str,
    canonical_query: Option<&str>,
) -> Result<Result<Resolved, lookup::Error>, Error> {
    let mut hits: Vec<(usize, u32)> = Vec::new();
    for (c, cache) in caches.iter().enumerate() {
        if let Some(img) = cache.by_key(query)? {
            hits.push((c, img));
        }
    }
    if hits.is_empty() {
        if let Some(cq) = canonical_query {
            for (c, cache) in caches.iter().enumerate() {
                hits.extend(cache.by_canonical(cq)?.into_iter().map(|img| (c, img)));
            }
        }
    }
    if hits.is_empty() && query.len() >= 64 {
        if let Ok(id) = Digest::parse(query) {
            for (c, cache) in caches.iter().enumerate() {
                if let Some(img) = cache.by_id(&id)? {
                    hits.push((c, img));
                }
            }
        }
    }
    if hits.is_empty() {
        if let Ok(prefix) = Prefix::parse(query) {
            for (c, cache) in caches.iter().enumerate() {
                hits.extend(
                    cache
                        .by_prefix(&prefix)?
                        .into_iter()
                        .map(|(_, img)| (c, img)),
                );
            }
        }
    }
    if hits.is_empty() {
        return Ok(Err(lookup::Error::nothing_matches(query)));
    }
    decide(caches, query, hits)
}

fn decide(
    caches: &[&Cache],
    query: &str,
    hits: Vec<(usize, u32)>,
) -> Result<Result<Resolved, lookup::Error>, Error> {
    let mut found: Vec<(Kind, Digest, usize, u32)> = Vec::with_capacity(hits.len());
    for (c, img) in hits {
        let cache = caches[c];
        found.push((cache.kind(), cache.image_id(img)?, c, img));
    }
    found.sort_unstable_by_key(|&(kind, id, _, _)| (kind, id));
    found.dedup_by_key(|&mut (kind, id, _, _)| (kind, id));
    if let [(kind, id, c, image)] = found[..] {
        return Ok(Ok(Resolved {
            kind,
            id,
            image,
            keys: caches[c].keys(image)?,
        }));
    }
    let candidates = found
        .into_iter()
        .map(|(kind, id, c, img)| {
            Ok(Candidate {
                kind,
                id,
                keys: caches[c].keys(img)?,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Err(lookup::Error::Ambiguous {
        query: query.to_owned(),
        candidates,
    }))
}
