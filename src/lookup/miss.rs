//! What a query that matched nothing is told: a short prefix, a malformed digest (and why), or
//! plainly not found. Every resolver reports a miss through [`Error::nothing_matches`].

use std::fmt;

use crate::digest::prefix::MIN_HEX_LEN;

use super::{looks_like_short_prefix, Error};

impl Error {
    /// The error for a query nothing matched: [`Error::TooShort`] for a short prefix,
    /// else [`Error::NotFound`], saying why the query is not a valid digest when it is shaped
    /// like one. Every resolver reports a miss through this.
    #[must_use]
    pub fn nothing_matches(query: &str) -> Self {
        let query_owned = query.to_owned();
        if looks_like_short_prefix(query) {
            return Error::TooShort { query: query_owned };
        }
        Error::NotFound {
            query: query_owned,
            malformed: malformed_digest(query),
        }
    }
}

pub(super) struct NotFoundMessage<'a>(pub(super) &'a str, pub(super) Option<&'static str>);

impl fmt::Display for NotFoundMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(why) => write!(f, "{:?} is not a valid image ID or digest: {why}", self.0),
            None => write!(f, "no image matches {:?}", self.0),
        }
    }
}

/// Why `query`, which matched nothing, is not a valid digest or digest prefix although it is
/// shaped like one; `None` when it is not digest-shaped (a name) or is a valid one.
fn malformed_digest(query: &str) -> Option<&'static str> {
    // `name@digest`: only the digest part can be judged here.
    let (digest, pinned) = match query.rsplit_once('@') {
        Some((_, d)) if d.contains(':') => (d, true),
        _ => (query, false),
    };
    let (algorithm, hex) = match digest.split_once(':') {
        Some((a, h)) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            (Some(a), h)
        }
        // `host:port/path` and the like: not a digest.
        Some(_) => return None,
        None => (None, digest),
    };
    let full_len = match algorithm {
        None | Some("sha256" | "blake3") => 64,
        Some("sha512") => 128,
        Some(_) if pinned || (hex.len() >= MIN_HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())) => {
            return Some("unsupported digest algorithm (sha256, sha512 or blake3)")
        }
        Some(_) => return None,
    };
    let all_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    // Without an algorithm or an `@`, only a long run of hex digits is taken for a digest: a
    // short one may well be a name.
    let explicit = algorithm.is_some() || pinned;
    if !(explicit || all_hex && hex.len() >= MIN_HEX_LEN) {
        return None;
    }
    if hex.is_empty() {
        return Some("the hex digits are missing");
    }
    if !all_hex {
        return Some("has a character that is not a hex digit");
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("must be lowercase hex");
    }
    if hex.len() > full_len {
        return Some(if full_len == 64 {
            "has more than 64 hex digits"
        } else {
            "has more than 128 hex digits"
        });
    }
    if hex.len() < full_len && (pinned || algorithm.is_some_and(|a| a != "sha256")) {
        return Some(if pinned {
            "a pinned digest needs all its hex digits"
        } else {
            "only sha256 digests can be abbreviated"
        });
    }
    None
}


#[cfg(test)]
mod tests {
    use crate::digest::Digest;
    use crate::layout::Kind;
    use crate::lookup::{Error, Item, Lookup};

    fn item(key: &str, id: Digest) -> Item {
        Item {
            kind: Kind::Oci,
            key: key.to_owned(),
            canonical: None,
            id,
        }
    }

    /// A query shaped like a digest that is not a valid one says why; a name that matches
    /// nothing, a valid digest that matches nothing and a short prefix keep their messages.
    #[test]
    fn malformed_digests_say_why() {
        let l = Lookup::build(vec![item("b", Digest::sha256_of(&[1]))]);
        let msg = |q: &str| l.resolve(q, None).unwrap_err().to_string();
        let upper = "A".repeat(64);
        assert!(msg(&upper).contains("must be lowercase hex"), "{}", msg(&upper));
        assert!(msg(&format!("sha256:{}", "Ab".repeat(8))).contains("lowercase hex"));
        assert!(msg("sha256:xyz0123456789").contains("not a hex digit"));
        assert!(msg(&"a".repeat(65)).contains("more than 64 hex digits"));
        assert!(msg(&format!("md5:{}", "a".repeat(32))).contains("unsupported digest algorithm"));
        assert!(msg("app@sha256:ABCD").contains("lowercase hex"));
        assert!(msg("app@sha256:abcd").contains("needs all its hex digits"));
        assert!(msg(&format!("sha512:{}", "a".repeat(20))).contains("abbreviated"));
        for q in ["ubuntu", "ubuntu:24.04", "localhost:5000/app", "CAFE", "me@host"] {
            assert_eq!(msg(q), format!("no image matches {q:?}"));
        }
        let absent = Digest::sha256_of(b"absent").to_string();
        assert_eq!(msg(&absent), format!("no image matches {absent:?}"));
        assert!(matches!(
            l.resolve("abc", None),
            Err(Error::TooShort { .. })
        ));
    }

}
