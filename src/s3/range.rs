//! The `Range` header: one well-formed `bytes=` range is served from the cache;
//! anything else is the origin's to interpret.

/// One requested byte range, before the object's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (`end` inclusive) or `bytes=a-` (`end` none).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::From { start, end: Some(end) } => write!(f, "bytes={start}-{end}"),
            Self::From { start, end: None } => write!(f, "bytes={start}-"),
            Self::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// What a Range header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No Range header: the whole object.
    Whole,
    One(ByteRange),
    /// Several ranges: origins differ on these, so they pass through.
    Multiple,
    /// A header that is not one well-formed `bytes=` range (another unit, junk,
    /// `bytes=5-1`): AWS ignores it and answers 200, Garage answers 416, so the
    /// client must see its own origin's answer.
    Unparsed,
}

impl RangeRequest {
    /// The one range asked for, if that is what was asked.
    pub fn one(self) -> Option<ByteRange> {
        match self {
            Self::One(range) => Some(range),
            Self::Whole | Self::Multiple | Self::Unparsed => None,
        }
    }
}

/// Parses a Range header value (`None`: no header).
pub fn parse(value: Option<&str>) -> RangeRequest {
    let Some(value) = value else {
        return RangeRequest::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Unparsed;
    };
    if spec.contains(',') {
        return RangeRequest::Multiple;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Unparsed;
    };
    let number = |s: &str| {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => number(suffix).map_or(RangeRequest::Unparsed, |n| RangeRequest::One(ByteRange::Suffix(n))),
        (start, "") => number(start).map_or(RangeRequest::Unparsed, |start| {
            RangeRequest::One(ByteRange::From { start, end: None })
        }),
        (start, end) => match (number(start), number(end)) {
            (Some(start), Some(end)) if start <= end => RangeRequest::One(ByteRange::From { start, end: Some(end) }),
            _ => RangeRequest::Unparsed,
        },
    }
}

/// The satisfiable part of `range` for an object of `size` bytes, as inclusive
/// `(first, last)`; `None` means 416 InvalidRange.
pub fn resolve(range: ByteRange, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    match range {
        ByteRange::From { start, .. } if start >= size => None,
        ByteRange::From { start, end } => Some((start, end.map_or(size - 1, |e| e.min(size - 1)))),
        ByteRange::Suffix(0) => None,
        ByteRange::Suffix(n) => Some((size.saturating_sub(n), size - 1)),
    }
}

/// The longest 200 answer to `range` that could be the range's bytes alone: a
/// longer one is the whole object (an origin that ignored the Range); one no
/// longer cannot tell the object's size. `None`: any length could be the range's
/// (`bytes=a-` with `a > 0`), `Some(0)` for `bytes=0-` (the range is the object).
pub fn longest_range_answer(range: ByteRange) -> Option<u64> {
    match range {
        ByteRange::From { start: 0, end: None } => Some(0),
        ByteRange::From { end: None, .. } => None,
        ByteRange::From { start, end: Some(end) } => Some(end.saturating_sub(start) + 1),
        ByteRange::Suffix(n) => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_200_to_a_range_tells_the_size_only_when_longer_than_the_range() {
        let from = |start, end| ByteRange::From { start, end };
        assert_eq!(longest_range_answer(from(0, Some(0))), Some(1));
        assert_eq!(longest_range_answer(from(100, Some(199))), Some(100));
        assert_eq!(longest_range_answer(from(0, None)), Some(0));
        assert_eq!(longest_range_answer(from(5, None)), None);
        assert_eq!(longest_range_answer(ByteRange::Suffix(10)), Some(10));
    }

    #[test]
    fn s3_range_forms() {
        assert_eq!(
            parse(Some("bytes=0-99")),
            RangeRequest::One(ByteRange::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            parse(Some("bytes=100-")),
            RangeRequest::One(ByteRange::From { start: 100, end: None })
        );
        assert_eq!(parse(Some("bytes=-500")), RangeRequest::One(ByteRange::Suffix(500)));
        assert_eq!(parse(Some("bytes=0-1,4-5")), RangeRequest::Multiple);
        for unparsed in [
            "bytes=junk",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=1-2-3",
            "bytes=+1-2",
            "",
        ] {
            assert_eq!(parse(Some(unparsed)), RangeRequest::Unparsed, "{unparsed}");
        }
        assert_eq!(parse(None), RangeRequest::Whole);
    }

    #[test]
    fn resolution_clamps_and_refuses() {
        let from = |start, end| ByteRange::From { start, end };
        assert_eq!(resolve(from(0, Some(99)), 50), Some((0, 49)));
        assert_eq!(resolve(from(10, None), 50), Some((10, 49)));
        assert_eq!(resolve(ByteRange::Suffix(500), 50), Some((0, 49)));
        assert_eq!(resolve(ByteRange::Suffix(5), 50), Some((45, 49)));
        assert_eq!(resolve(from(50, None), 50), None);
        assert_eq!(resolve(from(0, Some(0)), 0), None);
        assert_eq!(resolve(ByteRange::Suffix(0), 50), None);
    }

    proptest! {
        #[test]
        fn resolved_ranges_lie_inside_the_object(start in 0u64..1000, len in 0u64..1000, size in 0u64..1000, suffix in any::<bool>()) {
            let range = if suffix { ByteRange::Suffix(len) } else { ByteRange::From { start, end: Some(start + len) } };
            if let Some((first, last)) = resolve(range, size) {
                prop_assert!(first <= last && last < size);
            }
        }

        #[test]
        fn formatted_ranges_parse_back(start in any::<u64>(), len in 0u64..u64::MAX / 2) {
            let end = start.saturating_add(len);
            prop_assert_eq!(parse(Some(&format!("bytes={start}-{end}"))), RangeRequest::One(ByteRange::From { start, end: Some(end) }));
        }
    }
}
