//! Content digests: `algorithm:encoded` values over fixed bytes, and the hashers that make them.
//!
//! A [`Digest`] is a small `Copy` value; hex text exists only at the edges (files, JSON, CLI).
//! Parsing is strict (lowercase hex, exact length, known algorithm) and total: no input panics.
//! This module does no I/O.

pub mod prefix;

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

pub use prefix::Prefix;

/// A hash algorithm imgstore can name in a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256: the identity of everything stored (OCI digests, cloud image sums).
    Sha256,
    /// SHA-512, accepted where OCI allows it.
    Sha512,
    /// BLAKE3: the fast verification digest recorded for every stored blob.
    Blake3,
}

impl Algorithm {
    /// The name used in the text form (`sha256`, `sha512`, `blake3`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
            Self::Blake3 => "blake3",
        }
    }

    /// Length of the digest in bytes.
    #[must_use]
    pub const fn byte_len(self) -> usize {
        match self {
            Self::Sha256 | Self::Blake3 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Length of the encoded (hex) part of the text form.
    #[must_use]
    pub const fn hex_len(self) -> usize {
        self.byte_len() * 2
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Self::Sha256),
            "sha512" => Some(Self::Sha512),
            "blake3" => Some(Self::Blake3),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input was empty.
    #[error("digest is empty")]
    Empty,
    /// `:encoded` with nothing before the colon.
    #[error("digest {0:?} has an empty algorithm")]
    EmptyAlgorithm(String),
    /// `algorithm:` with nothing after the colon.
    #[error("digest {0:?} has an empty encoded part")]
    EmptyEncoded(String),
    /// No colon and not a bare 64-hex sha256.
    #[error("digest {0:?} is not of the form algorithm:hex")]
    MissingAlgorithm(String),
    /// An algorithm imgstore does not support.
    #[error("unsupported digest algorithm {algorithm}")]
    UnsupportedAlgorithm {
        /// The algorithm as written (truncated to 64 characters).
        algorithm: String,
    },
    /// The encoded part has the wrong number of hex digits.
    #[error("{algorithm} digest must have {expected} hex digits, found {found}")]
    BadLength {
        /// The algorithm named.
        algorithm: Algorithm,
        /// Required number of hex digits.
        expected: usize,
        /// Number of characters found.
        found: usize,
    },
    /// Uppercase hex digits are not accepted (OCI requires lowercase).
    #[error("digest {0:?} must use lowercase hex")]
    Uppercase(String),
    /// A character that is not a hex digit.
    #[error("digest {input:?} has a non-hex character at offset {offset}")]
    NotHex {
        /// The input (truncated to 160 characters).
        input: String,
        /// Byte offset of the first bad character within the encoded part.
        offset: usize,
    },
}

/// A digest: algorithm plus its bytes. `Copy`, compared and ordered by algorithm then bytes.
///
/// ```
/// use imgstore::{Algorithm, Digest, Prefix};
///
/// let d = Digest::sha256_of(b"hello");
/// assert_eq!(d.algorithm(), Algorithm::Sha256);
/// let text = d.to_string(); // "sha256:2cf24dba…"
/// assert_eq!(text.parse::<Digest>()?, d);
/// // An abbreviation of 12 or more hex digits finds it again.
/// let p = Prefix::parse(&d.hex()[..12]).expect("12 hex digits are a valid prefix");
/// assert!(p.matches(&d));
/// // Parsing is strict: uppercase hex is refused.
/// assert!(Digest::parse(&text.to_uppercase()).is_err());
/// # Ok::<(), imgstore::digest::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: [u8; 64],
}

impl Digest {
    /// A sha256 digest from its 32 bytes.
    #[must_use]
    pub fn sha256(bytes: [u8; 32]) -> Self {
        Self::from_slice(Algorithm::Sha256, &bytes)
    }

    /// A blake3 digest from its 32 bytes.
    #[must_use]
    pub fn blake3(bytes: [u8; 32]) -> Self {
        Self::from_slice(Algorithm::Blake3, &bytes)
    }

    /// A digest from raw bytes; `None` if the length does not fit the algorithm.
    #[must_use]
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == algorithm.byte_len()).then(|| Self::from_slice(algorithm, bytes))
    }

    fn from_slice(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut buf = [0u8; 64];
        buf[..bytes.len()].copy_from_slice(bytes);
        Self {
            algorithm,
            bytes: buf,
        }
    }

    /// Parse the text form strictly (see the module docs). A bare 64-hex string is sha256.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::Empty);
        }
        let Some((algo, encoded)) = s.split_once(':') else {
            if s.len() == 64 {
                return decode(Algorithm::Sha256, s, s);
            }
            return Err(Error::MissingAlgorithm(clip(s, 160)));
        };
        if algo.is_empty() {
            return Err(Error::EmptyAlgorithm(clip(s, 160)));
        }
        if encoded.is_empty() {
            return Err(Error::EmptyEncoded(clip(s, 160)));
        }
        let Some(algorithm) = Algorithm::from_name(algo) else {
            return Err(Error::UnsupportedAlgorithm {
                algorithm: clip(algo, 64),
            });
        };
        decode(algorithm, encoded, s)
    }

    /// The algorithm.
    #[must_use]
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The digest bytes (32 or 64 of them).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.byte_len()]
    }

    /// The first 32 bytes; for sha256 and blake3 that is the whole digest.
    #[must_use]
    pub fn first32(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.bytes[..32]);
        out
    }

    /// The encoded (lowercase hex) part of the text form.
    #[must_use]
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(self.algorithm.hex_len());
        push_hex(&mut s, self.as_bytes());
        s
    }

    /// The sha256 of `data`.
    #[must_use]
    pub fn sha256_of(data: &[u8]) -> Self {
        Self::sha256(sha2::Sha256::digest(data).into())
    }

    /// The blake3 of `data`.
    #[must_use]
    pub fn blake3_of(data: &[u8]) -> Self {
        Self::blake3(*blake3::hash(data).as_bytes())
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn decode(algorithm: Algorithm, encoded: &str, whole: &str) -> Result<Digest, Error> {
    let raw = encoded.as_bytes();
    if raw.len() != algorithm.hex_len() {
        return Err(Error::BadLength {
            algorithm,
            expected: algorithm.hex_len(),
            found: encoded.chars().count(),
        });
    }
    // Index loads decode tens of thousands of digests: a table lookup per character, and one
    // validity check for the whole string instead of a branch per character.
    let mut bytes = [0u8; 64];
    let mut invalid = 0u8;
    for (out, pair) in bytes.iter_mut().zip(raw.chunks_exact(2)) {
        let hi = HEX_DECODE[usize::from(pair[0])];
        let lo = HEX_DECODE[usize::from(pair[1])];
        invalid |= hi | lo;
        *out = (hi << 4) | (lo & 0x0f);
    }
    if invalid & 0xf0 != 0 {
        let (offset, &c) = raw
            .iter()
            .enumerate()
            .find(|(_, c)| hex_val(**c).is_none())
            .expect("an invalid byte was seen");
        return Err(bad_char(whole, c, offset));
    }
    Ok(Digest { algorithm, bytes })
}

/// Lowercase hex digit values; 0xff for every other byte.
const HEX_DECODE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 256 {
        if let Some(v) = hex_val(i as u8) {
            t[i] = v;
        }
        i += 1;
    }
    t
};

fn bad_char(whole: &str, c: u8, offset: usize) -> Error {
    if c.is_ascii_hexdigit() {
        Error::Uppercase(clip(whole, 160))
    } else {
        Error::NotHex {
            input: clip(whole, 160),
            offset,
        }
    }
}

/// Value of a lowercase hex digit.
pub(crate) const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// True if `s` is exactly 64 lowercase hex digits (the stem of a stored blob).
#[must_use]
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| hex_val(c).is_some())
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(8 + self.algorithm.hex_len());
        s.push_str(self.algorithm.name());
        s.push(':');
        push_hex(&mut s, self.as_bytes());
        f.pad(&s)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // On the stack: `list` serializes one per key, and `collect_str` would format
        // through a `String` each time.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 8 + 128];
        let name = self.algorithm.name().as_bytes();
        buf[..name.len()].copy_from_slice(name);
        buf[name.len()] = b':';
        let mut n = name.len() + 1;
        for b in self.as_bytes() {
            buf[n] = HEX[usize::from(b >> 4)];
            buf[n + 1] = HEX[usize::from(b & 0xf)];
            n += 2;
        }
        s.serialize_str(std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a digest string such as sha256:<64 hex>")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Digest, E> {
                Digest::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// sha256 and blake3 of one byte stream, computed together.
///
/// For large streams, ingest runs the two hashers on separate threads; this type is the
/// simple single-threaded form used for small inputs and tests.
#[derive(Default, Clone)]
pub struct DualHasher {
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    len: u64,
}

/// The result of hashing one stream with [`DualHasher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sums {
    /// sha256 of the bytes.
    pub sha256: Digest,
    /// blake3 of the bytes.
    pub blake3: Digest,
    /// Number of bytes.
    pub size: u64,
}

impl DualHasher {
    /// A fresh hasher.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        self.blake3.update(data);
        self.len += data.len() as u64;
    }

    /// Finish and return both digests and the length.
    #[must_use]
    pub fn finalize(self) -> Sums {
        Sums {
            sha256: Digest::sha256(self.sha256.finalize().into()),
            blake3: Digest::blake3(*self.blake3.finalize().as_bytes()),
            size: self.len,
        }
    }
}

/// The property the digest fuzz target and its seed-corpus test check: parsing never panics,
/// and a parsed digest or prefix prints back to text that parses to the same value.
#[doc(hidden)]
pub fn fuzz_check(s: &str) {
    if let Ok(d) = Digest::parse(s) {
        let text = d.to_string();
        assert_eq!(Digest::parse(&text).ok(), Some(d), "round trip of {s:?}");
        if s.contains(':') {
            assert_eq!(text, s, "text form is canonical");
        }
    }
    if let Ok(p) = Prefix::parse(s) {
        assert_eq!(
            Prefix::parse(&p.to_string()).ok(),
            Some(p),
            "prefix round trip of {s:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_formats_sha256() {
        let d: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d.hex(), HEX);
        assert_eq!(d, Digest::sha256_of(b""));
    }

    #[test]
    fn bare_hex_is_sha256() {
        assert_eq!(Digest::parse(HEX).unwrap(), Digest::sha256_of(b""));
    }

    #[test]
    fn sha512_and_blake3() {
        let h512 = "a".repeat(128);
        let d = Digest::parse(&format!("sha512:{h512}")).unwrap();
        assert_eq!(d.as_bytes().len(), 64);
        assert_eq!(d.to_string(), format!("sha512:{h512}"));
        let b = Digest::blake3_of(b"abc");
        assert_eq!(Digest::parse(&b.to_string()).unwrap(), b);
        assert_eq!(b.algorithm(), Algorithm::Blake3);
    }

    #[test]
    fn rejects_malformed() {
        type Check = fn(&Error) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, Error::Empty)),
            (":", |e| matches!(e, Error::EmptyAlgorithm(_))),
            ("sha256:", |e| matches!(e, Error::EmptyEncoded(_))),
            (&HEX[..10], |e| matches!(e, Error::MissingAlgorithm(_))),
            (
                "md5:d41d8cd98f00b204e9800998ecf8427e",
                |e| matches!(e, Error::UnsupportedAlgorithm { algorithm } if algorithm == "md5"),
            ),
            ("sha256:abc", |e| {
                matches!(
                    e,
                    Error::BadLength {
                        expected: 64,
                        found: 3,
                        ..
                    }
                )
            }),
            ("sha512:abcd", |e| {
                matches!(e, Error::BadLength { expected: 128, .. })
            }),
            ("SHA256:e3b0", |e| {
                matches!(e, Error::UnsupportedAlgorithm { .. })
            }),
        ];
        for (input, check) in cases {
            let err = Digest::parse(input).unwrap_err();
            assert!(check(&err), "{input:?} gave {err:?}");
        }
        let upper = format!("sha256:{}", HEX.to_uppercase());
        assert!(matches!(Digest::parse(&upper), Err(Error::Uppercase(_))));
        let bad = format!("sha256:{}g", &HEX[..63]);
        assert!(matches!(
            Digest::parse(&bad),
            Err(Error::NotHex { offset: 63, .. })
        ));
        // Multi-byte characters must not panic on slicing or length checks.
        let multi = format!("sha256:{}é", &HEX[..62]);
        assert!(Digest::parse(&multi).is_err());
        assert!(Digest::parse("sha256:ééééééééééééééééééééééééééééééééé").is_err());
    }

    #[test]
    fn serde_as_text() {
        let d = Digest::sha256_of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        let back: Digest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }

    #[test]
    fn dual_hasher_matches_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = DualHasher::new();
        for chunk in data.chunks(777) {
            h.update(chunk);
        }
        let sums = h.finalize();
        assert_eq!(sums.sha256, Digest::sha256_of(&data));
        assert_eq!(sums.blake3, Digest::blake3_of(&data));
        assert_eq!(sums.size, data.len() as u64);
    }

    #[test]
    fn hex64_check() {
        assert!(is_hex64(HEX));
        assert!(!is_hex64(&HEX[..63]));
        assert!(!is_hex64(&HEX.to_uppercase()));
    }
}
