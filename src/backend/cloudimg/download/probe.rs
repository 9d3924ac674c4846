//! What a response says about resuming and revalidating: validators, `Content-Range`, HTTP dates.
//! Pure header arithmetic; no I/O.

use serde::{Deserialize, Serialize};
use ureq::http::HeaderMap;

/// The validators a server sent with a representation (RFC 9110 §8.8), kept to revalidate a stored
/// copy (`If-None-Match` / `If-Modified-Since`) and to guard ranges (`If-Range`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The `ETag`, verbatim (quotes and a `W/` prefix included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The `Last-Modified` date, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

impl Validators {
    /// The validators of a response.
    #[must_use]
    pub fn of(headers: &HeaderMap) -> Validators {
        Validators {
            etag: text(headers, "etag"),
            last_modified: text(headers, "last-modified"),
        }
    }

    /// Whether there is anything to revalidate with.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// A strong `ETag`, if the server sent one.
    #[must_use]
    pub fn strong_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| is_strong_etag(e))
    }

    /// Request headers asking "has it changed since?".
    #[must_use]
    pub fn conditional_headers(&self) -> Vec<(&'static str, &str)> {
        let mut h = Vec::new();
        if let Some(e) = &self.etag {
            h.push(("If-None-Match", e.as_str()));
        }
        if let Some(d) = &self.last_modified {
            h.push(("If-Modified-Since", d.as_str()));
        }
        h
    }

    /// Whether a response with `now` describes the same representation: the same strong `ETag`
    /// (weak `ETags` and dates cannot prove it).
    #[must_use]
    pub fn same_strong(&self, now: &Validators) -> bool {
        matches!((self.strong_etag(), now.strong_etag()), (Some(a), Some(b)) if a == b)
    }
}

/// The value to send in `If-Range` for a response: its strong `ETag`, else its `Last-Modified` if
/// that is a strong validator (RFC 9110 §8.8.2.2: at least one second before the response's
/// `Date`). `None`: ranges of this resource cannot be guarded, so it is fetched as one stream.
#[must_use]
pub fn if_range_value(headers: &HeaderMap) -> Option<String> {
    let v = Validators::of(headers);
    if let Some(e) = v.strong_etag() {
        return Some(e.to_owned());
    }
    let modified = v.last_modified?;
    let date = http_date(&text(headers, "date")?)?;
    (http_date(&modified)? < date).then_some(modified)
}

/// Whether a response to a range guarded by `if_range` still describes that representation: a
/// guard that is an `ETag` must come back unchanged when the server sends one (a server that
/// ignores `If-Range` but honours `Range` is caught here); a date guard must match if present.
#[must_use]
pub fn still_same(if_range: &str, headers: &HeaderMap) -> bool {
    let now = Validators::of(headers);
    if is_strong_etag(if_range) || if_range.starts_with("W/") {
        now.etag.as_deref().is_none_or(|e| e == if_range)
    } else {
        now.last_modified.as_deref().is_none_or(|d| d == if_range)
    }
}

fn is_strong_etag(e: &str) -> bool {
    e.len() >= 2 && e.starts_with('"') && e.ends_with('"')
}

fn text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A parsed `Content-Range: bytes first-last/length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// First byte.
    pub first: u64,
    /// One past the last byte.
    pub end: u64,
    /// The whole length, when stated (`*` otherwise).
    pub length: Option<u64>,
}

/// Parse the `Content-Range` of a 206; `None` if missing or malformed.
#[must_use]
pub fn content_range(headers: &HeaderMap) -> Option<ContentRange> {
    let v = text(headers, "content-range")?;
    let rest = v.strip_prefix("bytes ")?.trim_start();
    let (span, length) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let length = match length.trim() {
        "*" => None,
        n => Some(n.parse::<u64>().ok()?),
    };
    if last < first || length.is_some_and(|l| last >= l) {
        return None;
    }
    Some(ContentRange {
        first,
        end: last + 1,
        length,
    })
}

/// The text of a `Content-Range` header, for error messages.
#[must_use]
pub fn content_range_text(headers: &HeaderMap) -> String {
    text(headers, "content-range").unwrap_or_else(|| "no Content-Range".to_owned())
}

/// Seconds since the epoch of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form
/// servers may generate; obsolete forms give `None` (the date is then not used as a validator).
#[must_use]
pub fn http_date(s: &str) -> Option<i64> {
    let mut it = s.split_whitespace();
    let _weekday = it.next()?.strip_suffix(',')?;
    let day: i64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':').map(str::parse::<i64>);
    let (h, m, sec) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    if it.next()? != "GMT" || it.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian), as in Howard Hinnant's date algorithms.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn dates_parse_to_epoch_seconds() {
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 UTC"), None);
    }

    #[test]
    fn content_ranges() {
        let h = headers(&[("content-range", "bytes 0-99/1000")]);
        assert_eq!(
            content_range(&h),
            Some(ContentRange {
                first: 0,
                end: 100,
                length: Some(1000)
            })
        );
        let h = headers(&[("content-range", "bytes 5-9/*")]);
        assert_eq!(content_range(&h).unwrap().length, None);
        for bad in ["bytes 9-5/10", "bytes 0-10/10", "items 0-1/2", "bytes x-1/2"] {
            assert_eq!(content_range(&headers(&[("content-range", bad)])), None, "{bad}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_validator() {
        let strong = headers(&[("etag", "\"abc\"")]);
        assert_eq!(if_range_value(&strong).as_deref(), Some("\"abc\""));
        let weak = headers(&[("etag", "W/\"abc\"")]);
        assert_eq!(if_range_value(&weak), None);
        let lm = "Sun, 06 Nov 1994 08:49:37 GMT";
        let dated = headers(&[("last-modified", lm), ("date", "Sun, 06 Nov 1994 08:49:40 GMT")]);
        assert_eq!(if_range_value(&dated).as_deref(), Some(lm));
        let same_second = headers(&[("last-modified", lm), ("date", lm)]);
        assert_eq!(if_range_value(&same_second), None);
        assert_eq!(if_range_value(&headers(&[("last-modified", lm)])), None);
    }

    #[test]
    fn a_changed_etag_is_caught_even_in_a_206() {
        assert!(still_same("\"a\"", &headers(&[("etag", "\"a\"")])));
        assert!(!still_same("\"a\"", &headers(&[("etag", "\"b\"")])));
        assert!(still_same("\"a\"", &headers(&[])));
    }
}
