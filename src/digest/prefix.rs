//! Abbreviated sha256 digests: at least [`MIN_HEX_LEN`] hex digits, with or without `sha256:`.

use std::cmp::Ordering;
use std::fmt;

use super::{hex_val, push_hex, Algorithm, Digest};

/// The fewest hex digits accepted as a digest prefix.
pub const MIN_HEX_LEN: usize = 12;

/// Why a prefix string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Fewer than [`MIN_HEX_LEN`] hex digits.
    #[error("digest prefix {0:?} is shorter than {MIN_HEX_LEN} hex digits")]
    TooShort(String),
    /// More than 64 hex digits.
    #[error("digest prefix {0:?} is longer than 64 hex digits")]
    TooLong(String),
    /// A character that is not a lowercase hex digit.
    #[error("digest prefix {0:?} is not lowercase hex")]
    NotHex(String),
    /// An algorithm other than sha256.
    #[error("digest prefix {0:?}: only sha256 prefixes are supported")]
    Algorithm(String),
}

/// The leading hex digits of a sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    bytes: [u8; 32],
    hex_len: u8,
}

impl Prefix {
    /// Parse `sha256:<hex>` or bare `<hex>`, 12 to 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let hex = match s.split_once(':') {
            Some(("sha256", rest)) => rest,
            Some(_) => return Err(Error::Algorithm(clip(s))),
            None => s,
        };
        if hex.len() < MIN_HEX_LEN {
            return Err(Error::TooShort(clip(s)));
        }
        if hex.len() > 64 {
            return Err(Error::TooLong(clip(s)));
        }
        let mut bytes = [0u8; 32];
        for (i, c) in hex.bytes().enumerate() {
            let v = hex_val(c).ok_or_else(|| Error::NotHex(clip(s)))?;
            bytes[i / 2] |= if i % 2 == 0 { v << 4 } else { v };
        }
        Ok(Self {
            bytes,
            hex_len: hex.len() as u8,
        })
    }

    /// Number of hex digits.
    #[must_use]
    pub fn hex_len(&self) -> usize {
        usize::from(self.hex_len)
    }

    /// The prefix padded with zero bits: the smallest 32-byte value it can match.
    #[must_use]
    pub fn lower_bound(&self) -> [u8; 32] {
        self.bytes
    }

    /// True if `digest` is a sha256 digest that starts with this prefix.
    #[must_use]
    pub fn matches(&self, digest: &Digest) -> bool {
        digest.algorithm() == Algorithm::Sha256 && self.cmp_bytes(&digest.first32()).is_eq()
    }

    /// Compare a 32-byte digest against this prefix: `Equal` if it matches, otherwise whether the
    /// digest sorts before (`Less`) or after (`Greater`) every digest the prefix matches.
    #[must_use]
    pub fn cmp_bytes(&self, digest: &[u8; 32]) -> Ordering {
        let full = self.hex_len() / 2;
        match digest[..full].cmp(&self.bytes[..full]) {
            Ordering::Equal if self.hex_len() % 2 == 1 => {
                (digest[full] & 0xf0).cmp(&self.bytes[full])
            }
            other => other,
        }
    }
}

fn clip(s: &str) -> String {
    super::clip(s, 160)
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(72);
        s.push_str("sha256:");
        push_hex(&mut s, &self.bytes);
        s.truncate(7 + self.hex_len());
        f.pad(&s)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_full_digests() {
        let d = Digest::sha256_of(b"hello");
        let hex = d.hex();
        for n in MIN_HEX_LEN..=64 {
            let p = Prefix::parse(&hex[..n]).unwrap();
            assert!(p.matches(&d), "len {n}");
            assert_eq!(p.to_string(), format!("sha256:{}", &hex[..n]));
            let p2 = Prefix::parse(&format!("sha256:{}", &hex[..n])).unwrap();
            assert_eq!(p, p2);
        }
        let other = Digest::sha256_of(b"world");
        assert!(!Prefix::parse(&hex[..13]).unwrap().matches(&other));
        assert!(!Prefix::parse(&hex[..13])
            .unwrap()
            .matches(&Digest::blake3_of(b"hello")));
    }

    #[test]
    fn odd_length_compares_high_nibble_only() {
        let p = Prefix::parse("0123456789abc").unwrap();
        let mut lo = [0u8; 32];
        lo[..7].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xc0]);
        let mut hi = lo;
        hi[6] = 0xcf;
        assert_eq!(p.cmp_bytes(&lo), Ordering::Equal);
        assert_eq!(p.cmp_bytes(&hi), Ordering::Equal);
        hi[6] = 0xd0;
        assert_eq!(p.cmp_bytes(&hi), Ordering::Greater);
        lo[6] = 0xbf;
        assert_eq!(p.cmp_bytes(&lo), Ordering::Less);
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(matches!(Prefix::parse("abc"), Err(Error::TooShort(_))));
        assert!(matches!(
            Prefix::parse("0123456789aB"),
            Err(Error::NotHex(_))
        ));
        assert!(matches!(
            Prefix::parse(&"a".repeat(65)),
            Err(Error::TooLong(_))
        ));
        assert!(matches!(
            Prefix::parse("sha512:0123456789ab"),
            Err(Error::Algorithm(_))
        ));
        assert!(matches!(
            Prefix::parse("sha256:0123"),
            Err(Error::TooShort(_))
        ));
        assert!(Prefix::parse("ééééééééééééé").is_err());
        assert!(Prefix::parse("").is_err());
    }
}
