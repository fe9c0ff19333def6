//! What an origin's answer says of an object: its `Content-Range`, whether it may
//! be cached, and the metadata (of the object, or of one part) worth keeping from
//! it. Every origin or peer answer is read through here.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::range::{self, RangeRequest};

/// `Content-Range: bytes first-last/size` of a 206, checked: `first <= last < size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive.
    pub last: u64,
    /// The whole object's size.
    pub size: u64,
}

impl ContentRange {
    pub fn parse(value: &str) -> Option<Self> {
        let (span, size) = value.strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let (first, last, size) = (first.parse().ok()?, last.parse().ok()?, size.parse().ok()?);
        (first <= last && last < size).then_some(Self { first, last, size })
    }

    /// The response's `Content-Range`, when it has a readable one.
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        Self::parse(headers.get(header::CONTENT_RANGE)?.to_str().ok()?)
    }

    /// How many bytes the range holds.
    pub fn length(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("digits")
    }
}

impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bytes {}-{}/{}", self.first, self.last, self.size)
    }
}

/// What s3-accel knows of an object version: enough to answer a GET or HEAD of it
/// without the origin's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Quoted, as the origin sent it.
    pub etag: String,
    /// The object's own headers (Last-Modified, Content-Type, `x-amz-meta-*`, ...),
    /// never a response's per-request ones.
    pub headers: HeaderMap,
    /// The `x-amz-checksum-*` headers the origin sends on a whole-object answer in
    /// checksum mode (possibly none), or `None` while s3-accel has not seen one.
    pub checksums: Option<HeaderMap>,
}

/// One part of a multipart object version (`?partNumber=N`), as the origin
/// answered it: a byte range of the object, never the object's own length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartMeta {
    /// The object version the bounds belong to.
    pub etag: String,
    pub first: u64,
    pub last: u64,
    /// The origin answered 200 (the whole object, as some do for part 1 of an
    /// object that was not uploaded in parts) rather than 206.
    pub whole: bool,
    /// `x-amz-mp-parts-count`, when the origin sent it.
    pub parts_count: Option<HeaderValue>,
    /// The part's own checksums, as for [`ObjectMeta::checksums`].
    pub checksums: Option<HeaderMap>,
}

/// Whether a response may be cached at all: not SSE-C, not `no-store`.
pub fn cacheable(headers: &HeaderMap) -> bool {
    let no_store = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("no-store"));
    !super::is_sse_c(headers) && !no_store
}

/// What a whole-object or part answer says of the checksums: those it carries, when
/// it carries any or the request asked for them (an answer in checksum mode without
/// any says there are none); `None` when it says nothing, or nothing readable.
fn checksums_of(headers: &HeaderMap, checksum_mode: bool) -> Option<HeaderMap> {
    match super::checksums(headers) {
        Ok(found) if checksum_mode || !found.is_empty() => Some(found),
        Ok(_) => None,
        Err(error) => {
            tracing::debug!(%error, "not keeping the origin's checksums");
            None
        }
    }
}

/// What a request asked the origin for, as far as the answer's meaning depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The whole object (no Range, no partNumber; a Range it does not parse).
    Whole,
    Range(range::ByteRange),
    Part(u16),
}

impl Asked {
    pub fn of(part: Option<u16>, range: RangeRequest) -> Self {
        match (part, range.one()) {
            (Some(number), _) => Self::Part(number),
            (None, Some(range)) => Self::Range(range),
            (None, None) => Self::Whole,
        }
    }
}

/// The metadata worth keeping from an origin's 200 or 206, or `None` when the
/// response must not be cached (SSE-C, `no-store`, no ETag) or does not tell the
/// object's size. Only a whole-object answer tells the object's checksums. A 200
/// tells the size as its length only where it must be the whole object: to a range,
/// when it is longer than the range could be; to `?partNumber`, for part 1 of an
/// object not uploaded in parts (an ETag without `-N`). Otherwise an origin that
/// answers with 200 and the range's (or the part's) bytes would leave a truncated
/// object, served as whole later.
pub fn meta_from_response(
    status: StatusCode,
    headers: &HeaderMap,
    asked: Asked,
    checksum_mode: bool,
) -> Option<ObjectMeta> {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !cacheable(headers) {
        return None;
    }
    let etag = text(header::ETAG)?.to_owned();
    let size = match status {
        StatusCode::OK => {
            let length: u64 = text(header::CONTENT_LENGTH)?.parse().ok()?;
            let whole = match asked {
                Asked::Whole => true,
                Asked::Range(range) => range::longest_range_answer(range).is_some_and(|longest| length > longest),
                Asked::Part(number) => number == 1 && !etag.contains('-'),
            };
            whole.then_some(length)?
        }
        StatusCode::PARTIAL_CONTENT => ContentRange::of(headers)?.size,
        _ => return None,
    };
    let mut stored = HeaderMap::new();
    for (name, value) in headers {
        if super::is_object_header(name) {
            stored.append(name.clone(), value.clone());
        }
    }
    let checksums = (asked == Asked::Whole && status == StatusCode::OK)
        .then(|| checksums_of(headers, checksum_mode))
        .flatten();
    Some(ObjectMeta {
        size,
        etag,
        headers: stored,
        checksums,
    })
}

/// A part's bounds from the origin's answer to `?partNumber=N`: a 206 names them
/// in Content-Range; a 200 is the whole object.
pub fn part_from_response(status: StatusCode, headers: &HeaderMap, checksum_mode: bool) -> Option<PartMeta> {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if !cacheable(headers) {
        return None;
    }
    let etag = text(header::ETAG)?.to_owned();
    let (first, last, whole) = match status {
        StatusCode::OK => {
            let length: u64 = text(header::CONTENT_LENGTH)?.parse().ok()?;
            (0, length.checked_sub(1)?, true)
        }
        StatusCode::PARTIAL_CONTENT => {
            let range = ContentRange::of(headers)?;
            (range.first, range.last, false)
        }
        _ => return None,
    };
    Some(PartMeta {
        etag,
        first,
        last,
        whole,
        parts_count: headers.get("x-amz-mp-parts-count").cloned(),
        checksums: checksums_of(headers, checksum_mode),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::REQUEST_ID;

    #[test]
    fn metadata_is_learned_only_from_cacheable_answers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, "\"abc\"".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "1".parse().unwrap());
        headers.insert(header::CONTENT_RANGE, "bytes 0-0/1234".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        headers.insert("x-amz-meta-owner", "a".parse().unwrap());
        headers.insert(REQUEST_ID, "R".parse().unwrap());
        headers.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        let meta = meta_from_response(
            StatusCode::PARTIAL_CONTENT,
            &headers,
            Asked::Range(range::ByteRange::From { start: 0, end: Some(0) }),
            true,
        )
        .unwrap();
        assert_eq!(meta.size, 1234);
        assert_eq!(meta.headers.len(), 2, "only object headers: {:?}", meta.headers);
        assert_eq!(meta.checksums, None, "a range tells nothing of the object's checksums");
        let whole = meta_from_response(StatusCode::OK, &headers, Asked::Whole, false).unwrap();
        assert_eq!(whole.size, 1);
        assert_eq!(whole.checksums.unwrap()["x-amz-checksum-crc32"], "AAAAAA==");
        assert!(meta_from_response(StatusCode::NOT_FOUND, &headers, Asked::Whole, true).is_none());
        let first_byte = range::ByteRange::From { start: 0, end: Some(0) };
        assert!(
            meta_from_response(StatusCode::OK, &headers, Asked::Range(first_byte), false).is_none(),
            "a 200 of one byte to a one-byte range may be the range's byte alone"
        );
        let mut longer = headers.clone();
        longer.insert(header::CONTENT_LENGTH, "1234".parse().unwrap());
        let ignored = meta_from_response(StatusCode::OK, &longer, Asked::Range(first_byte), false).unwrap();
        assert_eq!(ignored.size, 1234, "longer than the range: the whole object");

        let mut sse_c = headers.clone();
        sse_c.insert(
            "x-amz-server-side-encryption-customer-algorithm",
            "AES256".parse().unwrap(),
        );
        assert!(meta_from_response(StatusCode::OK, &sse_c, Asked::Whole, false).is_none());
        let mut no_store = headers.clone();
        no_store.insert(header::CACHE_CONTROL, "private, No-Store".parse().unwrap());
        assert!(meta_from_response(StatusCode::OK, &no_store, Asked::Whole, false).is_none());
        let mut unreadable = headers.clone();
        unreadable.insert("x-amz-checksum-crc32", "not a checksum".parse().unwrap());
        let meta = meta_from_response(StatusCode::OK, &unreadable, Asked::Whole, true).unwrap();
        assert_eq!(meta.checksums, None, "an unreadable checksum is never stored");
        headers.remove("x-amz-checksum-crc32");
        let asked = meta_from_response(StatusCode::OK, &headers, Asked::Whole, true).unwrap();
        assert_eq!(
            asked.checksums,
            Some(HeaderMap::new()),
            "asked, and told there are none"
        );
        assert_eq!(
            meta_from_response(StatusCode::OK, &headers, Asked::Whole, false)
                .unwrap()
                .checksums,
            None
        );
        headers.remove(header::ETAG);
        assert!(meta_from_response(StatusCode::OK, &headers, Asked::Whole, false).is_none());
    }

    #[test]
    fn content_ranges_are_read_only_when_they_hold() {
        let range = ContentRange::parse("bytes 100-199/250").unwrap();
        assert_eq!(
            (range.first, range.last, range.size, range.length()),
            (100, 199, 250, 100)
        );
        assert_eq!(range.to_string(), "bytes 100-199/250");
        for bad in [
            "bytes 200-100/250",
            "bytes 100-250/250",
            "bytes 1-2",
            "bytes */250",
            "junk",
            "bytes 0-0/x",
        ] {
            assert_eq!(ContentRange::parse(bad), None, "{bad}");
        }
    }
}
