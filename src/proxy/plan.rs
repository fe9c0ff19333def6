//! Whether the cache may take part in a request, and what it needs to: what is
//! never cached is decided here, before anything is sent.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Request;

use super::admit::ObjectRead;
use crate::cache::ObjectId;
use crate::credentials::FillCredentials;
use crate::fetch::{fill_auth, FillAuth, Priority, PRIORITY_HEADER};
use crate::grants::Asked;
use crate::s3;
use crate::s3::range::RangeRequest;

/// A request the cache may serve.
pub struct Plan {
    /// The object version's chunks and metadata (never a part's number).
    pub object: ObjectId,
    /// The object's path at the origin (and `versionId`), unsigned: what the proxy's
    /// own credentials sign for it.
    pub object_target: PathAndQuery,
    /// The grant the request would be served from, when a mode is on.
    pub grant: Option<Asked>,
    /// `?partNumber=N`: a range of the object whose bounds the origin gives.
    pub part: Option<u16>,
    pub range: RangeRequest,
    pub overrides: Vec<(HeaderName, HeaderValue)>,
    /// Who signs fills, or why no one can (a GET is then relayed; a HEAD still
    /// refreshes the metadata, and only warming needs fills).
    pub auth: Result<FillAuth, &'static str>,
    /// The client sent If-None-Match or If-Modified-Since: a 304 is its own verdict,
    /// and the proxy adds no condition of its own.
    pub client_conditionals: bool,
    /// The client asked for checksums: a whole-object or part answer carries them.
    pub checksum_mode: bool,
    /// Whether the origin's answer describes the object (no `response-*` overrides).
    pub learns: bool,
    /// The client connection's share of the read-ahead budget.
    pub share: Option<super::ConnectionShare>,
    /// The client's `If-Match`: a grant serves only the version it names.
    pub if_match: Option<HeaderValue>,
    /// The client sent `If-Unmodified-Since`: only the origin answers it.
    pub if_unmodified_since: bool,
    /// `x-s3-accel-priority: background` (prefetch): its fills wait behind live reads.
    pub priority: Priority,
}

impl Plan {
    /// Whether the client's own preconditions hold for `meta` as far as the cache
    /// can tell (a grant answers without the origin only then; otherwise the origin
    /// gives its 412, or serves the version asked for).
    pub fn preconditions_hold(&self, meta: &crate::cache::ObjectMeta) -> bool {
        let matches = self.if_match.as_ref().is_none_or(|asked| {
            asked.to_str().is_ok_and(|list| {
                list.split(',')
                    .any(|tag| matches!(tag.trim(), "*") || tag.trim() == meta.etag)
            })
        });
        matches && !self.if_unmodified_since
    }
}

/// Plans a cacheable request, built once (the grant it would be served from
/// included), or says why it passes through uncached.
pub fn plan<B>(
    request: &Request<B>,
    read: &ObjectRead,
    grant: Option<Asked>,
    credentials: Option<&Arc<FillCredentials>>,
) -> Result<Plan, &'static str> {
    let (object, range) = (&read.object, read.range);
    let headers = request.headers();
    if s3::is_sse_c(headers) {
        return Err("sse_c");
    }
    match range {
        RangeRequest::Multiple => return Err("multi_range"),
        RangeRequest::Unparsed => return Err("unparsed_range"),
        // S3 refuses a Range with a partNumber: that refusal is the origin's to give.
        RangeRequest::One(_) if object.part_number.is_some() => return Err("range_with_part"),
        RangeRequest::Whole | RangeRequest::One(_) => {}
    }
    let uri = request.uri();
    let target = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let object_target = match &object.version_id {
        Some(version) => format!("{}?versionId={version}", uri.path()),
        None => uri.path().to_owned(),
    };
    let object_target = PathAndQuery::try_from(object_target).map_err(|_| "unsigned_target")?;
    let region = &read.route.region.config;
    let auth = fill_auth(
        request.method(),
        &target,
        (headers, &read.auth),
        object_target.clone(),
        object.part_number.is_some(),
        credentials,
        region.signing_region.as_deref(),
    );
    Ok(Plan {
        object: read.id.clone(),
        object_target,
        grant,
        part: object.part_number,
        range,
        overrides: object.overrides.clone(),
        auth,
        client_conditionals: headers.contains_key(header::IF_NONE_MATCH)
            || headers.contains_key(header::IF_MODIFIED_SINCE),
        checksum_mode: s3::checksum_mode(headers),
        learns: object.overrides.is_empty(),
        share: request.extensions().get::<super::ConnectionShare>().cloned(),
        if_match: headers.get(header::IF_MATCH).cloned(),
        if_unmodified_since: headers.contains_key(header::IF_UNMODIFIED_SINCE),
        priority: requested_priority(headers),
    })
}

/// The priority a request asks for its fills: `background` lowers it (a client may
/// only put itself behind others); anything else is a client's.
fn requested_priority(headers: &http::HeaderMap) -> Priority {
    match headers.get(PRIORITY_HEADER).map(HeaderValue::as_bytes) {
        Some(b"background") => Priority::Background,
        _ => Priority::Client,
    }
}
