//! Digest-prefix table and canonical-reference map over index entries; never reads files.
//!
//! A [`Lookup`] is built once per index load from plain [`Item`]s and then answers the queries
//! `inspect`, `rm`, `config` and `verify` accept (DESIGN.md §6). It knows nothing of JSON, of the
//! filesystem or of the reference grammar: the caller passes canonical forms in, so this module
//! does not depend on [`crate::reference`].
//!
//! Prefix lookups do not scan: the sha256 image IDs sit in one sorted table, cut into buckets by
//! their leading bits (at most 2^16 buckets, so the bucket index stays in cache; every accepted
//! prefix has at least 48 bits), and a query binary-searches only its bucket, first over the
//! IDs' leading 8 bytes packed densely, then over the few full slots that remain. A slot carries
//! the kind and item range, so a unique prefix reads nothing else. When no key looks like a
//! digest, digest-shaped queries skip the key map as well.

use std::collections::HashMap;
use std::fmt;

use crate::digest::prefix::MIN_HEX_LEN;
use crate::digest::{Algorithm, Digest, Prefix};
use crate::layout::Kind;

mod miss;
use miss::NotFoundMessage;

/// One index entry as lookup sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The backend whose index holds the entry.
    pub kind: Kind,
    /// The exact index key.
    pub key: String,
    /// The key's canonical reference, computed by the caller; `None` if the key does not parse.
    pub canonical: Option<String>,
    /// The image ID: manifest digest (oci) or content sum (cloudimg).
    pub id: Digest,
}

/// Every item that names one image, returned by [`Lookup::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match<'a> {
    /// The backend holding the image.
    pub kind: Kind,
    /// The image ID.
    pub id: Digest,
    /// All aliases of the image in that backend, sorted by key.
    pub items: Vec<&'a Item>,
}

/// One image an ambiguous query could mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The backend holding the image.
    pub kind: Kind,
    /// The image ID.
    pub id: Digest,
    /// Every key naming the image in that backend, sorted.
    pub keys: Vec<String>,
}

/// Why a query did not resolve to exactly one image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key, reference, digest or prefix matched. When the query is shaped like a digest
    /// (an algorithm prefix, a long run of hex digits, `name@algorithm:…`) but is not a valid
    /// one, `malformed` says why, and the message says that instead.
    #[error("{}", NotFoundMessage(query, *malformed))]
    NotFound {
        /// The query as given.
        query: String,
        /// Why the query is not a valid digest, if it looks like one ("must be lowercase hex").
        malformed: Option<&'static str>,
    },
    /// Nothing matched, and the query looks like a digest prefix with fewer than
    /// [`MIN_HEX_LEN`] hex digits, which is never treated as a prefix.
    #[error(
        "no image matches {query:?} (a digest prefix needs at least {MIN_HEX_LEN} hex digits)"
    )]
    TooShort {
        /// The query as given.
        query: String,
    },
    /// The first step that matched found more than one image; nothing is chosen.
    #[error("{query:?} matches {} images: {}", candidates.len(), ListCandidates(candidates))]
    Ambiguous {
        /// The query as given.
        query: String,
        /// The images it could mean, ordered by backend then ID.
        candidates: Vec<Candidate>,
    },
}

/// How many candidates an [`Error::Ambiguous`] message spells out before summarizing the rest.
const SHOWN_CANDIDATES: usize = 10;

struct ListCandidates<'a>(&'a [Candidate]);

impl fmt::Display for ListCandidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.0.iter().take(SHOWN_CANDIDATES).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {} ({})", c.kind, c.id, c.keys.join(", "))?;
        }
        if self.0.len() > SHOWN_CANDIDATES {
            write!(f, ", and {} more", self.0.len() - SHOWN_CANDIDATES)?;
        }
        Ok(())
    }
}

/// A run of items (`items[start..end]`) sharing one kind and ID.
#[derive(Debug, Clone, Copy)]
struct Image {
    start: u32,
    end: u32,
}

/// At most this many leading bits of an ID pick its bucket; every accepted prefix has 48.
const MAX_BUCKET_BITS: u32 = 16;

/// One image in the prefix table.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: [u8; 32],
    kind: Kind,
    /// The image's items are `items[start..end]`.
    start: u32,
    end: u32,
}

/// The resolver over one snapshot of both indexes.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// Sorted by (kind, id, key), so each image's aliases are contiguous and key-ordered.
    items: Vec<Item>,
    /// Images in item order, i.e. sorted by (kind, id).
    images: Vec<Image>,
    /// For each item, its index in `images`.
    image_of: Vec<u32>,
    /// Item indices sorted by key; `by_key` points at the first of each run of equal keys.
    key_order: Vec<u32>,
    by_key: HashMap<String, u32>,
    /// Whether any key is [`digest_shaped`]; if none is, such queries cannot be keys.
    digest_shaped_keys: bool,
    /// Item indices of items with a canonical form, sorted by it; `by_canonical` as `by_key`.
    canonical_order: Vec<u32>,
    by_canonical: HashMap<String, u32>,
    /// Every image with a sha256 ID, sorted by ID (then kind).
    table: Vec<Slot>,
    /// The first 8 bytes of each `table` ID, big-endian: a fifth of the table's size, so the
    /// binary search touches fewer cache lines.
    heads: Vec<u64>,
    /// `table[buckets[b]..buckets[b + 1]]` holds the IDs whose first 32 bits, shifted right by
    /// `bucket_shift`, are `b`; small tables get few buckets so building stays cheap.
    buckets: Vec<u32>,
    bucket_shift: u32,
}

impl Lookup {
    /// Index `items` for resolving. Items may come in any order.
    ///
    /// # Panics
    /// If there are more than `u32::MAX` items.
    #[must_use]
    pub fn build(mut items: Vec<Item>) -> Lookup {
        let n = u32::try_from(items.len()).expect("fewer than 2^32 index entries");
        items.sort_unstable_by(|a, b| (a.kind, a.id, &a.key).cmp(&(b.kind, b.id, &b.key)));

        let mut images = Vec::new();
        let mut image_of = Vec::with_capacity(items.len());
        for (i, item) in (0..n).zip(&items) {
            match images.last_mut() {
                Some(img @ &mut Image { start, .. })
                    if items[start as usize].kind == item.kind
                        && items[start as usize].id == item.id =>
                {
                    img.end = i + 1;
                }
                _ => images.push(Image {
                    start: i,
                    end: i + 1,
                }),
            }
            image_of.push(u32::try_from(images.len() - 1).expect("images ≤ items"));
        }

        let mut key_order: Vec<u32> = (0..n).collect();
        key_order.sort_by(|&a, &b| items[a as usize].key.cmp(&items[b as usize].key));
        let by_key = first_of_runs(&key_order, |i| Some(items[i as usize].key.as_str()));

        let mut canonical_order: Vec<u32> = (0..n)
            .filter(|&i| items[i as usize].canonical.is_some())
            .collect();
        canonical_order.sort_by(|&a, &b| {
            items[a as usize]
                .canonical
                .cmp(&items[b as usize].canonical)
        });
        let by_canonical =
            first_of_runs(&canonical_order, |i| items[i as usize].canonical.as_deref());

        let mut table: Vec<Slot> = images
            .iter()
            .filter_map(|img| {
                let item = &items[img.start as usize];
                (item.id.algorithm() == Algorithm::Sha256).then(|| Slot {
                    id: item.id.first32(),
                    kind: item.kind,
                    start: img.start,
                    end: img.end,
                })
            })
            .collect();
        table.sort_unstable_by_key(|s| (s.id, s.kind));
        // About four IDs per bucket until the index is 256 KiB.
        let bucket_bits = (table.len().next_power_of_two().ilog2())
            .saturating_sub(2)
            .min(MAX_BUCKET_BITS);
        let bucket_shift = 32 - bucket_bits;
        let mut buckets = vec![0u32; (1 << bucket_bits) + 1];
        for slot in &table {
            buckets[bucket_of(head(&slot.id), bucket_shift) + 1] += 1;
        }
        for b in 0..1 << bucket_bits {
            buckets[b + 1] += buckets[b];
        }

        Lookup {
            items,
            images,
            image_of,
            key_order,
            digest_shaped_keys: by_key.keys().any(|k| digest_shaped(k)),
            by_key,
            canonical_order,
            by_canonical,
            heads: table.iter().map(|s| head(&s.id)).collect(),
            table,
            buckets,
            bucket_shift,
        }
    }

    /// Number of items.
    #[must_use]
    #[cfg(any(test, feature = "unstable"))]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True if there are no items.
    #[must_use]
    #[cfg(any(test, feature = "unstable"))]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All items, sorted by kind, then ID, then key.
    #[must_use]
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Resolve `query` per DESIGN.md §6; the first step that matches anything decides:
    ///
    /// 1. an exact index key, in either backend;
    /// 2. `canonical_query` (the caller's canonical form of `query`, `None` if it is not a valid
    ///    reference) equal to some item's canonical form;
    /// 3. a full digest (`sha256:<hex>` or bare 64 hex) equal to an image ID;
    /// 4. a prefix of at least [`MIN_HEX_LEN`] hex digits, with or without `sha256:`, of an ID.
    ///
    /// The match is the whole image: every item with the same kind and ID. If the deciding step
    /// finds more than one image (several IDs, or one ID in both backends), the result is
    /// [`Error::Ambiguous`]. If no step matches, [`Error::TooShort`] when the query is 1 to 11
    /// lowercase hex digits (optionally after `sha256:`), else [`Error::NotFound`].
    pub fn resolve(&self, query: &str, canonical_query: Option<&str>) -> Result<Match<'_>, Error> {
        // Hashing the query and probing a map of a million keys costs more than the prefix
        // search itself; a digest-shaped query can only equal a digest-shaped key.
        let may_be_key = self.digest_shaped_keys || !digest_shaped(query);
        if let Some(&first) = may_be_key.then(|| self.by_key.get(query)).flatten() {
            let hits = run(&self.key_order, first, |i| {
                self.items[i as usize].key == query
            });
            return self.decide(query, hits.iter().map(|&i| self.image_of[i as usize]));
        }
        if let Some(&first) = canonical_query.and_then(|c| self.by_canonical.get(c)) {
            let hits = run(&self.canonical_order, first, |i| {
                self.items[i as usize].canonical.as_deref() == canonical_query
            });
            return self.decide(query, hits.iter().map(|&i| self.image_of[i as usize]));
        }
        // Shorter text is never a full digest; skipping the parse spares prefix queries the
        // allocation of its error value.
        if let Some(id) = (query.len() >= 64)
            .then(|| Digest::parse(query).ok())
            .flatten()
        {
            let hits: Vec<u32> = Kind::ALL
                .iter()
                .filter_map(|&kind| self.find_image(kind, id))
                .collect();
            if !hits.is_empty() {
                return self.decide(query, hits.into_iter());
            }
        }
        if let Ok(prefix) = Prefix::parse(query) {
            match self.prefix_slots(&prefix) {
                [] => {}
                [slot] => {
                    return Ok(Match {
                        kind: slot.kind,
                        id: Digest::sha256(slot.id),
                        items: self.items[slot.start as usize..slot.end as usize]
                            .iter()
                            .collect(),
                    })
                }
                slots => {
                    let images = slots.iter().map(|s| self.image_of[s.start as usize]);
                    return self.decide(query, images);
                }
            }
        }
        Err(Error::nothing_matches(query))
    }

    /// The table slots whose IDs `prefix` matches.
    fn prefix_slots(&self, prefix: &Prefix) -> &[Slot] {
        let low = head(&prefix.lower_bound());
        // The prefix's bits within the head; a prefix has at least 48, a head holds 64.
        let bits = u32::try_from(prefix.hex_len() * 4).unwrap_or(u32::MAX);
        let mask = !u64::MAX.checked_shr(bits).unwrap_or(0);
        let b = bucket_of(low, self.bucket_shift);
        let start = self.buckets[b] as usize;
        let heads = &self.heads[start..self.buckets[b + 1] as usize];
        let from = heads.partition_point(|&h| h & mask < low);
        let to = from + heads[from..].partition_point(|&h| h & mask == low);
        // Heads match the first 16 hex digits; longer prefixes narrow the run by full IDs.
        let run = &self.table[start + from..start + to];
        let from = run.partition_point(|s| prefix.cmp_bytes(&s.id).is_lt());
        let rest = &run[from..];
        &rest[..rest.partition_point(|s| prefix.cmp_bytes(&s.id).is_eq())]
    }

    fn find_image(&self, kind: Kind, id: Digest) -> Option<u32> {
        let key = |img: &Image| {
            let item = &self.items[img.start as usize];
            (item.kind, item.id)
        };
        let ix = self
            .images
            .binary_search_by(|img| key(img).cmp(&(kind, id)))
            .ok()?;
        u32::try_from(ix).ok()
    }

    /// One image among `hits` is a match; several are ambiguous.
    fn decide(&self, query: &str, hits: impl Iterator<Item = u32>) -> Result<Match<'_>, Error> {
        let mut images: Vec<u32> = hits.collect();
        images.sort_unstable();
        images.dedup();
        if let [only] = images[..] {
            let run = self.image_items(only);
            return Ok(Match {
                kind: run[0].kind,
                id: run[0].id,
                items: run.iter().collect(),
            });
        }
        let candidates = images
            .into_iter()
            .map(|ix| {
                let run = self.image_items(ix);
                Candidate {
                    kind: run[0].kind,
                    id: run[0].id,
                    keys: run.iter().map(|item| item.key.clone()).collect(),
                }
            })
            .collect();
        Err(Error::Ambiguous {
            query: query.to_owned(),
            candidates,
        })
    }

    fn image_items(&self, image: u32) -> &[Item] {
        let img = self.images[image as usize];
        &self.items[img.start as usize..img.end as usize]
    }
}

fn head(id: &[u8; 32]) -> u64 {
    u64::from_be_bytes([id[0], id[1], id[2], id[3], id[4], id[5], id[6], id[7]])
}

fn bucket_of(head: u64, shift: u32) -> usize {
    // 64-bit so that a shift of 32 (a single bucket) is defined.
    ((head >> 32) >> shift) as usize
}

/// Lowercase hex, optionally after `sha256:`: the shape of every full digest or prefix query.
fn digest_shaped(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    !hex.is_empty() && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Map each distinct text to the position in `order` where its run of equal texts begins.
fn first_of_runs<'a>(order: &[u32], text: impl Fn(u32) -> Option<&'a str>) -> HashMap<String, u32> {
    let mut map = HashMap::with_capacity(order.len());
    let mut prev: Option<&str> = None;
    for (pos, &i) in (0..).zip(order) {
        let t = text(i);
        if t != prev {
            if let Some(t) = t {
                map.insert(t.to_owned(), pos);
            }
            prev = t;
        }
    }
    map
}

/// The run in `order` that starts at `first` and continues while `same` holds.
fn run(order: &[u32], first: u32, same: impl Fn(u32) -> bool) -> &[u32] {
    let rest = &order[first as usize..];
    let len = rest.iter().position(|&i| !same(i)).unwrap_or(rest.len());
    &rest[..len]
}

fn looks_like_short_prefix(query: &str) -> bool {
    digest_shaped(query) && query.strip_prefix("sha256:").unwrap_or(query).len() < MIN_HEX_LEN
}

#[cfg(any(test, feature = "unstable"))]
mod fuzz;
#[cfg(any(test, feature = "unstable"))]
pub use fuzz::fuzz_check;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn item(kind: Kind, key: &str, canonical: Option<&str>, id: Digest) -> Item {
        Item {
            kind,
            key: key.to_owned(),
            canonical: canonical.map(str::to_owned),
            id,
        }
    }

    fn keys<'a>(m: &Match<'a>) -> Vec<&'a str> {
        m.items.iter().map(|i| i.key.as_str()).collect()
    }

    #[test]
    fn empty_lookup_finds_nothing() {
        let l = Lookup::build(Vec::new());
        assert!(l.is_empty());
        assert!(matches!(
            l.resolve(&id(1).hex()[..12], None),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            l.resolve("ubuntu", Some("docker.io/library/ubuntu:latest")),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn each_step_and_aliases() {
        let l = Lookup::build(vec![
            item(Kind::Oci, "ubuntu:24.04", Some("c/ubuntu:24.04"), id(1)),
            item(Kind::Oci, "noble", Some("c/noble:latest"), id(1)),
            item(Kind::CloudImg, "http://x/a.img", None, id(2)),
        ]);
        assert_eq!(l.len(), 3);
        let m = l.resolve("noble", None).unwrap();
        assert_eq!((m.kind, m.id), (Kind::Oci, id(1)));
        assert_eq!(keys(&m), ["noble", "ubuntu:24.04"]);
        let m = l.resolve("whatever", Some("c/ubuntu:24.04")).unwrap();
        assert_eq!(keys(&m), ["noble", "ubuntu:24.04"]);
        let m = l.resolve(&id(2).to_string(), None).unwrap();
        assert_eq!((m.kind, keys(&m)), (Kind::CloudImg, vec!["http://x/a.img"]));
        let m = l.resolve(&id(2).hex(), None).unwrap();
        assert_eq!(m.id, id(2));
        let m = l.resolve(&id(1).hex()[..13], None).unwrap();
        assert_eq!(m.id, id(1));
        let m = l
            .resolve(&format!("sha256:{}", &id(1).hex()[..12]), None)
            .unwrap();
        assert_eq!(m.id, id(1));
    }

    #[test]
    fn short_prefix_is_typed_error() {
        let l = Lookup::build(vec![item(Kind::Oci, "a", None, id(1))]);
        let hex = id(1).hex();
        let err = l.resolve(&hex[..11], None).unwrap_err();
        assert!(matches!(err, Error::TooShort { .. }), "{err:?}");
        assert!(err.to_string().contains("at least 12 hex digits"), "{err}");
        assert!(matches!(
            l.resolve(&format!("sha256:{}", &hex[..11]), None),
            Err(Error::TooShort { .. })
        ));
        assert!(matches!(
            l.resolve("zzz", None),
            Err(Error::NotFound { .. })
        ));
        assert!(l.resolve(&hex[..12], None).is_ok());
    }

    #[test]
    fn ambiguous_display_lists_candidates() {
        let l = Lookup::build(vec![
            item(Kind::Oci, "ubuntu:24.04", None, id(1)),
            item(Kind::CloudImg, "ubuntu:24.04", None, id(2)),
        ]);
        let err = l.resolve("ubuntu:24.04", None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("\"ubuntu:24.04\" matches 2 images: "),
            "{text}"
        );
        assert!(
            text.contains(&format!("oci {} (ubuntu:24.04)", id(1))),
            "{text}"
        );
        assert!(
            text.contains(&format!("cloudimg {} (ubuntu:24.04)", id(2))),
            "{text}"
        );
    }

    #[test]
    fn long_candidate_lists_are_summarized() {
        let items = (0..15)
            .map(|n| item(Kind::Oci, &format!("k{n}"), Some("same"), id(n)))
            .collect();
        let err = Lookup::build(items).resolve("q", Some("same")).unwrap_err();
        assert!(err.to_string().ends_with(", and 5 more"), "{err}");
        let Error::Ambiguous { candidates, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(candidates.len(), 15);
    }

    #[test]
    fn non_sha256_ids_resolve_only_in_full() {
        let b3 = Digest::blake3_of(b"x");
        let l = Lookup::build(vec![item(Kind::CloudImg, "b", None, b3)]);
        assert_eq!(l.resolve(&b3.to_string(), None).unwrap().id, b3);
        assert!(matches!(
            l.resolve(&b3.hex()[..20], None),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn seeds_of_fuzz_model() {
        fuzz_check(&[]);
        fuzz_check(&[
            5, 0, 1, 2, 3, 4, 5, 6, 7, 16, 9, 1, 0, 30, 2, 3, 13, 3, 4, b'a', b'b', b'c', b'd',
        ]);
    }
}
