//! `Range: bytes=…` requests (RFC 9110 §14): one range, open-ended or suffix.
//!
//! A header this module cannot use is ignored, as the RFC asks, and the whole
//! representation is served: another unit, bad syntax, and several ranges at once (a
//! player never asks for those; answering them would need multipart bodies).

/// What a request asks for, given the representation's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No (usable) range: the whole representation, `200 OK`.
    Full,
    /// Bytes `start..=end` (inclusive, both within the size): `206 Partial Content`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// The range starts past the end: `416 Range Not Satisfiable`.
    Unsatisfiable,
}

/// Longest `Range` header value looked at; a longer one is ignored.
const MAX_RANGE_HEADER: usize = 256;

/// Parses a `Range` header value against a representation of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    if h.len() > MAX_RANGE_HEADER {
        return RangeRequest::Full;
    }
    let Some((unit, spec)) = h.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match num(last) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
        },
        // bytes=A-: from A to the end.
        (false, true) => match num(first) {
            None => RangeRequest::Full,
            Some(a) if a >= size => RangeRequest::Unsatisfiable,
            Some(a) => RangeRequest::Partial {
                start: a,
                end: size - 1,
            },
        },
        // bytes=A-B.
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial {
                        start: a,
                        end: b.min(size - 1),
                    }
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

/// The bytes a request asks for, when that is known without the size: `(first, last)`
/// with `last` inclusive (`u64::MAX - 1` for "to the end"); the whole file without a
/// usable range; `None` for a suffix range, whose start depends on the size.
pub fn span_hint(header: Option<&str>) -> Option<(u64, u64)> {
    // A suffix's start moves with the size; every other form's does not.
    match (parse(header, u64::MAX), parse(header, u64::MAX - 1)) {
        (RangeRequest::Full, _) => Some((0, u64::MAX - 1)),
        (RangeRequest::Partial { start: a, end }, RangeRequest::Partial { start: b, .. })
            if a == b =>
        {
            Some((a, end))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::RangeRequest::*;
    use super::*;

    #[test]
    fn single_open_ended_and_suffix_ranges() {
        assert_eq!(
            parse(Some("bytes=0-99"), 1000),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=500-"), 1000),
            Partial {
                start: 500,
                end: 999
            }
        );
        assert_eq!(
            parse(Some("bytes=-100"), 1000),
            Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse(Some("bytes=-5000"), 1000),
            Partial { start: 0, end: 999 },
            "a suffix longer than the file is the whole file"
        );
        assert_eq!(
            parse(Some("bytes=990-5000"), 1000),
            Partial {
                start: 990,
                end: 999
            },
            "the end is clipped"
        );
        assert_eq!(
            parse(Some(" Bytes = 7 - 7 "), 1000),
            Partial { start: 7, end: 7 }
        );
    }

    #[test]
    fn span_hints() {
        let end = u64::MAX - 1;
        assert_eq!(span_hint(None), Some((0, end)));
        assert_eq!(span_hint(Some("bytes=500-")), Some((500, end)));
        assert_eq!(span_hint(Some("bytes=5-9")), Some((5, 9)));
        assert_eq!(span_hint(Some("bytes=-100")), None);
        assert_eq!(span_hint(Some("bytes=0-1,4-5")), Some((0, end)));
    }

    #[test]
    fn past_the_end_is_unsatisfiable() {
        assert_eq!(parse(Some("bytes=1000-"), 1000), Unsatisfiable);
        assert_eq!(parse(Some("bytes=1000-2000"), 1000), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 1000), Unsatisfiable);
    }

    #[test]
    fn unusable_headers_are_ignored() {
        for h in [
            "bytes=5-1",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(parse(Some(h), 1000), Full, "{h:?}");
        }
        assert_eq!(parse(None, 1000), Full);
        assert_eq!(
            parse(Some(&format!("bytes={}", "1".repeat(300))), 1000),
            Full
        );
    }
}
