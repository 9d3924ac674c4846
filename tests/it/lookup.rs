//! Lookup precedence (DESIGN.md §6) and agreement with a linear-scan model.

use imgstore::lookup::{Candidate, Error, Item, Lookup, Match};
use imgstore::{Digest, Kind};
use proptest::prelude::*;

fn item(kind: Kind, key: &str, canonical: Option<&str>, id: Digest) -> Item {
    Item {
        kind,
        key: key.to_owned(),
        canonical: canonical.map(str::to_owned),
        id,
    }
}

/// A sha256 ID spelled as 64 hex digits.
fn id(hex: &str) -> Digest {
    Digest::parse(hex).unwrap()
}

fn keys<'a>(m: &Match<'a>) -> Vec<&'a str> {
    m.items.iter().map(|i| i.key.as_str()).collect()
}

fn candidates(err: Error) -> Vec<Candidate> {
    match err {
        Error::Ambiguous { candidates, .. } => candidates,
        other => panic!("expected Ambiguous, got {other:?}"),
    }
}

const A: &str = "0123456789ab0000000000000000000000000000000000000000000000000000";
const A2: &str = "0123456789ab1000000000000000000000000000000000000000000000000000";
const B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

#[test]
fn exact_key_beats_canonical_form() {
    // cocoon may store a short key and the canonical key as separate entries.
    let l = Lookup::build(vec![
        item(
            Kind::Oci,
            "ubuntu:24.04",
            Some("docker.io/library/ubuntu:24.04"),
            id(A),
        ),
        item(
            Kind::Oci,
            "docker.io/library/ubuntu:24.04",
            Some("docker.io/library/ubuntu:24.04"),
            id(B),
        ),
    ]);
    let m = l
        .resolve("ubuntu:24.04", Some("docker.io/library/ubuntu:24.04"))
        .unwrap();
    assert_eq!((m.id, keys(&m)), (id(A), vec!["ubuntu:24.04"]));
    // Through the canonical form alone the two different manifests are ambiguous.
    let err = l
        .resolve(
            "index.docker.io/library/ubuntu:24.04",
            Some("docker.io/library/ubuntu:24.04"),
        )
        .unwrap_err();
    let c = candidates(err);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].keys, ["ubuntu:24.04"]);
    assert_eq!(c[1].keys, ["docker.io/library/ubuntu:24.04"]);
}

#[test]
fn same_canonical_same_id_are_aliases() {
    let l = Lookup::build(vec![
        item(
            Kind::Oci,
            "ubuntu",
            Some("docker.io/library/ubuntu:latest"),
            id(A),
        ),
        item(
            Kind::Oci,
            "docker.io/library/ubuntu:latest",
            Some("docker.io/library/ubuntu:latest"),
            id(A),
        ),
        item(
            Kind::Oci,
            "mine",
            Some("docker.io/library/mine:latest"),
            id(A),
        ),
        item(
            Kind::Oci,
            "other",
            Some("docker.io/library/other:latest"),
            id(B),
        ),
    ]);
    let m = l
        .resolve("library/ubuntu", Some("docker.io/library/ubuntu:latest"))
        .unwrap();
    assert_eq!(m.kind, Kind::Oci);
    assert_eq!(
        keys(&m),
        ["docker.io/library/ubuntu:latest", "mine", "ubuntu"],
        "every alias of the image, sorted by key"
    );
    // Digest and prefix queries return the same alias set.
    for q in [A.to_owned(), format!("sha256:{A}"), A[..12].to_owned()] {
        assert_eq!(keys(&l.resolve(&q, None).unwrap()), keys(&m), "{q}");
    }
}

#[test]
fn full_digest_then_prefix() {
    let l = Lookup::build(vec![
        item(Kind::CloudImg, "https://example.com/a.qcow2", None, id(A)),
        item(Kind::CloudImg, "https://example.com/b.qcow2", None, id(B)),
    ]);
    let m = l.resolve(&format!("sha256:{B}"), None).unwrap();
    assert_eq!((m.kind, m.id), (Kind::CloudImg, id(B)));
    assert_eq!(l.resolve(B, None).unwrap().id, id(B));
    assert_eq!(l.resolve(&B[..12], None).unwrap().id, id(B));
    assert_eq!(
        l.resolve(&format!("sha256:{}", &B[..40]), None).unwrap().id,
        id(B)
    );
    // A full digest of nothing stored is not found, not a prefix of something else.
    let missing = format!("{}1", &B[..63]);
    assert!(matches!(
        l.resolve(&missing, None),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn key_that_looks_like_a_prefix_wins_over_the_prefix() {
    let l = Lookup::build(vec![
        item(
            Kind::Oci,
            &B[..12],
            Some("docker.io/library/x:latest"),
            id(A),
        ),
        item(Kind::Oci, "b", None, id(B)),
    ]);
    let m = l.resolve(&B[..12], None).unwrap();
    assert_eq!(m.id, id(A), "the exact key {} names image A", &B[..12]);
    // One more digit is no longer a key, so it is a prefix of B.
    assert_eq!(l.resolve(&B[..13], None).unwrap().id, id(B));
}

#[test]
fn ambiguous_prefix_lists_both_candidates() {
    let l = Lookup::build(vec![
        item(Kind::Oci, "a", None, id(A)),
        item(Kind::Oci, "a-alias", None, id(A)),
        item(Kind::Oci, "a2", None, id(A2)),
    ]);
    let err = l.resolve(&A[..12], None).unwrap_err();
    let text = err.to_string();
    let c = candidates(err);
    assert_eq!(
        c,
        vec![
            Candidate {
                kind: Kind::Oci,
                id: id(A),
                keys: vec!["a".into(), "a-alias".into()]
            },
            Candidate {
                kind: Kind::Oci,
                id: id(A2),
                keys: vec!["a2".into()]
            },
        ]
    );
    assert!(text.contains("matches 2 images"), "{text}");
    assert!(
        text.contains(&format!("oci sha256:{A} (a, a-alias)")),
        "{text}"
    );
    assert!(text.contains(&format!("oci sha256:{A2} (a2)")), "{text}");
    // The 13th digit separates them, and it is odd: only its high nibble is compared.
    assert_eq!(l.resolve(&A[..13], None).unwrap().id, id(A));
    assert_eq!(l.resolve(&A2[..13], None).unwrap().id, id(A2));
}

#[test]
fn odd_length_prefixes() {
    let l = Lookup::build(vec![item(Kind::Oci, "b", None, id(B))]);
    for n in (13..64).step_by(2) {
        assert_eq!(l.resolve(&B[..n], None).unwrap().id, id(B), "length {n}");
        let mut wrong = B[..n].to_owned();
        wrong.pop();
        wrong.push(if B.as_bytes()[n - 1] == b'0' {
            '1'
        } else {
            '0'
        });
        assert!(
            matches!(l.resolve(&wrong, None), Err(Error::NotFound { .. })),
            "{wrong}"
        );
    }
}

#[test]
fn eleven_digits_are_too_short() {
    let l = Lookup::build(vec![item(Kind::Oci, "b", None, id(B))]);
    for q in [B[..11].to_owned(), format!("sha256:{}", &B[..11])] {
        let err = l.resolve(&q, None).unwrap_err();
        assert!(matches!(err, Error::TooShort { .. }), "{q}: {err:?}");
    }
    // Short hex that is an exact key still resolves as the key.
    let l = Lookup::build(vec![item(Kind::Oci, "cafe", None, id(B))]);
    assert_eq!(l.resolve("cafe", None).unwrap().id, id(B));
    // Uppercase or too-long hex is never a prefix.
    assert!(matches!(
        l.resolve(&B[..12].to_uppercase(), None),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        l.resolve(&format!("{B}0"), None),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn same_id_in_both_backends_is_ambiguous() {
    let l = Lookup::build(vec![
        item(
            Kind::Oci,
            "img",
            Some("docker.io/library/img:latest"),
            id(A),
        ),
        item(Kind::CloudImg, "http://h/img.qcow2", None, id(A)),
    ]);
    for q in [A.to_owned(), format!("sha256:{A}"), A[..12].to_owned()] {
        let c = candidates(l.resolve(&q, None).unwrap_err());
        let kinds: Vec<Kind> = c.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [Kind::Oci, Kind::CloudImg], "{q}");
    }
    // A key or reference picks its backend.
    assert_eq!(l.resolve("img", None).unwrap().kind, Kind::Oci);
    assert_eq!(
        l.resolve("http://h/img.qcow2", None).unwrap().kind,
        Kind::CloudImg
    );
}

#[test]
fn every_prefix_of_many_ids_finds_its_image() {
    // Enough IDs for thousands of buckets, so bucket edges and the packed heads are exercised.
    let items: Vec<Item> = (0..20_000u32)
        .map(|i| {
            let kind = if i % 3 == 0 {
                Kind::CloudImg
            } else {
                Kind::Oci
            };
            item(
                kind,
                &format!("k{i}"),
                None,
                Digest::sha256_of(&i.to_le_bytes()),
            )
        })
        .collect();
    let l = Lookup::build(items.clone());
    for it in &items {
        let hex = it.id.hex();
        for n in [12, 13, 16, 17, 40, 64] {
            let m = l.resolve(&hex[..n], None).unwrap();
            assert_eq!(
                (m.kind, m.id, keys(&m)),
                (it.kind, it.id, vec![it.key.as_str()])
            );
        }
        // The same prefix with its 12th digit changed names some other ID or none.
        let mut other = hex[..12].to_owned();
        let last = other.pop().unwrap();
        other.push(if last == 'f' { '0' } else { 'f' });
        if let Ok(m) = l.resolve(&other, None) {
            assert!(m.id.hex().starts_with(&other) && m.id != it.id);
        }
    }
}

/// What a resolve came to, with candidates as sorted (kind, id, keys).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Found(Kind, Digest, Vec<String>),
    Ambiguous(Vec<(Kind, Digest, Vec<String>)>),
    NotFound,
    TooShort,
}

/// The naive model: a linear filter per step over the plain item list.
fn model(items: &[Item], query: &str, canonical: Option<&str>) -> Outcome {
    let image = |kind: Kind, id: Digest| {
        let mut keys: Vec<String> = items
            .iter()
            .filter(|i| i.kind == kind && i.id == id)
            .map(|i| i.key.clone())
            .collect();
        keys.sort();
        (kind, id, keys)
    };
    let hex = query.strip_prefix("sha256:").unwrap_or(query);
    let is_hex = !hex.is_empty()
        && hex
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    let steps: [&dyn Fn(&Item) -> bool; 4] = [
        &|i| i.key == query,
        &|i| canonical.is_some() && i.canonical.as_deref() == canonical,
        &|i| is_hex && hex.len() == 64 && i.id.hex() == hex,
        &|i| is_hex && (12..=64).contains(&hex.len()) && i.id.hex().starts_with(hex),
    ];
    for step in steps {
        let mut hits: Vec<(Kind, Digest)> = items
            .iter()
            .filter(|i| step(i))
            .map(|i| (i.kind, i.id))
            .collect();
        hits.sort();
        hits.dedup();
        match hits[..] {
            [] => {}
            [(kind, id)] => {
                let (kind, id, keys) = image(kind, id);
                return Outcome::Found(kind, id, keys);
            }
            _ => return Outcome::Ambiguous(hits.into_iter().map(|(k, d)| image(k, d)).collect()),
        }
    }
    if is_hex && hex.len() < 12 {
        Outcome::TooShort
    } else {
        Outcome::NotFound
    }
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
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

/// One of 18 IDs sharing a 12-hex stem: they differ in the 14th and 15th hex digits and in the
/// last byte, so small sets have aliases, collisions and odd-length distinctions.
fn arb_id() -> impl Strategy<Value = Digest> {
    (0u8..3, 0u8..3, 0u8..2).prop_map(|(a, b, c)| {
        let mut bytes = [0x5a; 32];
        bytes[6] = a;
        bytes[7] = b << 4;
        bytes[31] = c;
        Digest::sha256(bytes)
    })
}

fn arb_item() -> impl Strategy<Value = Item> {
    (any::<bool>(), 0usize..6, any::<bool>(), arb_id()).prop_map(|(oci, key, canon, id)| {
        let key = ["a", "b", "c", "x/a", "5a5a5a5a5a5a", "d"][key].to_owned();
        Item {
            kind: if oci { Kind::Oci } else { Kind::CloudImg },
            canonical: canon.then(|| format!("x/{}", key.trim_start_matches("x/"))),
            key,
            id,
        }
    })
}

/// A query: a key, a reference, or a prefix (of any length, maybe `sha256:`) of some ID.
fn arb_query() -> impl Strategy<Value = (String, Option<String>)> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "x/a", "x/b", "5a5a5a5a5a5a", "zz"]).prop_map(|k| (
            k.to_owned(),
            Some(format!("x/{}", k.trim_start_matches("x/")))
        )),
        (arb_id(), 0usize..=66, any::<bool>()).prop_map(|(id, n, sha)| {
            let hex = id.hex();
            let p = &hex[..n.min(64)];
            (
                if sha {
                    format!("sha256:{p}")
                } else {
                    p.to_owned()
                },
                None,
            )
        }),
    ]
}

proptest! {
    #[test]
    fn resolve_agrees_with_linear_scan(
        items in prop::collection::vec(arb_item(), 0..12),
        queries in prop::collection::vec(arb_query(), 1..12),
    ) {
        let lookup = Lookup::build(items.clone());
        prop_assert_eq!(lookup.len(), items.len());
        for (q, c) in &queries {
            let got = outcome(lookup.resolve(q, c.as_deref()));
            prop_assert_eq!(got, model(&items, q, c.as_deref()), "query {:?}", q);
        }
    }

    #[test]
    fn random_ids_resolve_by_any_long_prefix(
        ids in prop::collection::vec(any::<[u8; 32]>(), 1..50),
        pick in any::<prop::sample::Index>(),
        n in 12usize..=64,
    ) {
        let items: Vec<Item> = ids
            .iter()
            .enumerate()
            .map(|(i, b)| item(Kind::Oci, &format!("k{i}"), None, Digest::sha256(*b)))
            .collect();
        let lookup = Lookup::build(items.clone());
        let target = Digest::sha256(ids[pick.index(ids.len())]);
        let q = &target.hex()[..n];
        prop_assert_eq!(outcome(lookup.resolve(q, None)), model(&items, q, None));
    }
}
