//! The lookup fuzz oracle: [`fuzz_check`] decodes bytes into items and queries and checks
//! [`Lookup::resolve`] against a simple model (a `BTreeMap` searched by linear scans). Compiled
//! for unit tests and under the `unstable` feature (the fuzz target and its seed test).

use crate::digest::Digest;
use crate::layout::Kind;

use super::{Error, Item, Lookup, Match};

/// A normalized outcome both [`Lookup::resolve`] and the fuzz model produce.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Found(Kind, Digest, Vec<String>),
    Ambiguous(Vec<(Kind, Digest, Vec<String>)>),
    NotFound,
    TooShort,
}

fn outcome(r: Result<Match<'_>, Error>) -> Outcome {
    match r {
        Ok(m) => Outcome::Found(
            m.kind,
            m.id,
            m.items.iter().map(|i| i.key.clone()).collect(),
        ),
        Err(Error::Ambiguous { candidates, .. }) => Outcome::Ambiguous(
            candidates
                .into_iter()
                .map(|c| (c.kind, c.id, c.keys))
                .collect(),
        ),
        Err(Error::NotFound { .. }) => Outcome::NotFound,
        Err(Error::TooShort { .. }) => Outcome::TooShort,
    }
}

/// The fuzz model: a `BTreeMap` from (kind, id) to keys, searched by linear scans.
mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use super::Outcome;
    use crate::lookup::{looks_like_short_prefix, Item};
    use crate::digest::{Digest, Prefix};
    use crate::layout::Kind;

    pub(super) fn resolve(items: &[Item], query: &str, canonical: Option<&str>) -> Outcome {
        let mut images: BTreeMap<(Kind, Digest), Vec<String>> = BTreeMap::new();
        for item in items {
            images
                .entry((item.kind, item.id))
                .or_default()
                .push(item.key.clone());
        }
        for keys in images.values_mut() {
            keys.sort();
        }
        let digest = Digest::parse(query).ok();
        let prefix = Prefix::parse(query).ok();
        let steps: [&dyn Fn(&Item) -> bool; 4] = [
            &|i| i.key == query,
            &|i| canonical.is_some() && i.canonical.as_deref() == canonical,
            &|i| digest == Some(i.id),
            &|i| prefix.is_some_and(|p| p.matches(&i.id)),
        ];
        for step in steps {
            let hit: BTreeSet<(Kind, Digest)> = items
                .iter()
                .filter(|i| step(i))
                .map(|i| (i.kind, i.id))
                .collect();
            let mut found: Vec<_> = hit
                .into_iter()
                .map(|k| (k.0, k.1, images[&k].clone()))
                .collect();
            match found.len() {
                0 => {}
                1 => {
                    let (kind, id, keys) = found.remove(0);
                    return Outcome::Found(kind, id, keys);
                }
                _ => return Outcome::Ambiguous(found),
            }
        }
        if looks_like_short_prefix(query) {
            Outcome::TooShort
        } else {
            Outcome::NotFound
        }
    }
}

/// Cursor over fuzz input; runs out into zeros so every input decodes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
}

/// A stand-in for reference canonicalization: `x/` is the default domain, `:latest` the default
/// tag, `!` makes a key unparseable. Both sides of the comparison get the same canonical forms,
/// so any function does; this one gives several spellings of each name.
fn fuzz_canonical(s: &str) -> Option<String> {
    if s.contains('!') || s.is_empty() {
        return None;
    }
    let name = s.strip_prefix("x/").unwrap_or(s);
    let tag = if name.contains(':') { "" } else { ":latest" };
    Some(format!("x/{name}{tag}"))
}

/// One of 16 IDs, from the low 4 bits of a fuzz byte. All share their first 5 bytes, so 12-hex
/// prefixes collide, and differ in bytes 5 and 6 (the 13th and 14th hex digits keep them apart,
/// testing odd lengths) and the last byte (only full-length prefixes tell those apart).
fn fuzz_id(b: u8) -> Digest {
    let mut bytes = [0xab; 32];
    bytes[5] = b >> 2 & 0x3;
    bytes[6] = (b >> 1 & 0x1) << 4;
    bytes[31] = b & 0x1;
    Digest::sha256(bytes)
}

/// Keys an item can have; entry 15 stands for `img<n>`.
const FUZZ_KEYS: [&str; 15] = [
    "ubuntu:24.04",
    "x/ubuntu:24.04",
    "abababababab",
    "ababababab00",
    "alpine",
    "x/alpine",
    "alpine:latest",
    "bad!",
    "sha256:abababababab",
    "x/x/alpine",
    "ABABABABABAB",
    "abab",
    "ubuntu",
    "sha256:ababababab0110abababababababababababababababababababababababab00",
    "",
];

/// Queries that no item key uses, besides the keys themselves.
const FUZZ_QUERIES: [&str; 4] = ["x/alpine:latest", "x/ubuntu", "ubuntu:latest", "sha256:"];

/// Decode `data` into items and queries, and check [`Lookup::resolve`] against the model.
///
/// Layout: item count; per item a byte (bit 0 kind, bits 1–4 key, bits 5–7 `img<n>` number)
/// and an ID byte; then queries until the input ends, each a selector byte (bits 0–1: key or
/// fixed query, hex prefix of an ID, `sha256:` prefix of an ID, raw text) and its arguments.
pub fn fuzz_check(data: &[u8]) {
    let mut input = Bytes(data);
    let n_items = usize::from(input.next() % 12);
    let mut items = Vec::with_capacity(n_items);
    for _ in 0..n_items {
        let b = input.next();
        let kind = Kind::ALL[usize::from(b & 1)];
        let key = match FUZZ_KEYS.get(usize::from(b >> 1 & 0xf)) {
            Some(key) => (*key).to_owned(),
            None => format!("img{}", b >> 5),
        };
        let canonical = fuzz_canonical(&key);
        items.push(Item {
            kind,
            key,
            canonical,
            id: fuzz_id(input.next()),
        });
    }
    let lookup = Lookup::build(items.clone());
    assert_eq!(lookup.len(), items.len());
    while !input.0.is_empty() {
        let b = input.next();
        let query = match b & 0x3 {
            0 => {
                let i = usize::from(b >> 2) % (FUZZ_KEYS.len() + FUZZ_QUERIES.len());
                match FUZZ_KEYS.get(i) {
                    Some(key) => (*key).to_owned(),
                    None => FUZZ_QUERIES[i - FUZZ_KEYS.len()].to_owned(),
                }
            }
            sel @ (1 | 2) => {
                let hex = fuzz_id(input.next()).hex();
                let len = usize::from(input.next()) % 66;
                let hex = &hex[..len.min(64)];
                if sel == 1 {
                    hex.to_owned()
                } else {
                    format!("sha256:{hex}")
                }
            }
            _ => {
                let len = usize::from(input.next() % 16).min(input.0.len());
                let (text, rest) = input.0.split_at(len);
                input.0 = rest;
                String::from_utf8_lossy(text).into_owned()
            }
        };
        let canonical = fuzz_canonical(&query);
        let got = outcome(lookup.resolve(&query, canonical.as_deref()));
        let want = model::resolve(&items, &query, canonical.as_deref());
        assert_eq!(got, want, "query {query:?} over {items:#?}");
    }
}
