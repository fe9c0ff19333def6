//! Admission: the client's request becomes one typed [`ObjectRead`], or a refusal,
//! before anything reaches the cache or the origin. The Host is checked and routed,
//! hop-by-hop headers go, the request is classified (only object reads go on), a
//! body is refused, a presigned URL's window is checked, and the signature is read
//! once. Every later stage reads the `ObjectRead`; none parses the request again.

use http::{header, Method, Request};
use http_body::Body;

use super::access::AccessLog;
use super::error::ProxyError;
use super::relay;
use crate::cache::ObjectId;
use crate::grants;
use crate::origin::{Route, Router};
use crate::s3::auth::ClientAuth;
use crate::s3::presign::{self, Presigned};
use crate::s3::range::{self, RangeRequest};
use crate::s3::{self, ObjectRequest, Operation};

/// A request admitted as a read of one object: what every later stage works from.
pub struct ObjectRead {
    pub route: Route,
    /// The authority the client addressed: what `host` stands for in its signature.
    pub authority: String,
    pub object: ObjectRequest,
    /// The object version, as the cache names it.
    pub id: ObjectId,
    /// `Range`, parsed once: the plan serves it, and a relayed answer is checked against it.
    pub range: RangeRequest,
    /// How the client signed, read once.
    pub auth: ClientAuth,
    /// A presigned URL's window, checked, when presigned grants are on.
    pub window: Option<Presigned>,
}

impl ObjectRead {
    /// What the grant decision reads of this request.
    pub fn for_grants(&self) -> grants::Read<'_> {
        grants::Read {
            object: &self.object,
            id: &self.id,
            auth: &self.auth,
            window: self.window.as_ref(),
            signing_region: self.route.region.config.signing_region.as_deref(),
        }
    }

    /// What was asked of the origin, as a relayed answer is checked against it.
    pub fn asked(&self) -> (RangeRequest, bool) {
        (self.range, self.object.part_number.is_some())
    }
}

/// Admits `request` as an object read, stripping its hop-by-hop headers: from here
/// on it is exactly what the origin will see. `presigned` checks a presigned URL's
/// window here (presigned grants are on). Fills in `log` as it learns.
pub fn admit<B: Body>(
    request: &mut Request<B>,
    router: &Router,
    presigned: bool,
    log: &mut AccessLog,
) -> Result<ObjectRead, ProxyError> {
    // Route first: the Host decides whether the bucket is in the name or the path
    // (and a Host two readers could read two ways goes no further).
    check_host(request)?;
    // Read before hop-by-hop headers go: `Transfer-Encoding` is one of them.
    let body = carries_body(request);
    // A header the client names in `Connection` is not forwarded, so nothing may read it.
    relay::strip_hop_by_hop(request.headers_mut());
    let authority = client_authority(request).unwrap_or_default();
    let route = router.route(&authority)?;
    log.region.clone_from(&route.region.config.name);

    // Classify before anything reaches the origin: only object reads go on.
    let uri = request.uri();
    let object = s3::classify(
        request.method(),
        uri.path(),
        uri.query(),
        route.bucket_from_host.as_deref(),
    )?;
    log.bucket.clone_from(&object.bucket);
    log.key.clone_from(&object.key);
    log.operation = match object.operation {
        Operation::GetObject => "get",
        Operation::HeadObject => "head",
    };
    if body {
        return Err(ProxyError::UnexpectedBody(request.method().clone()));
    }
    // An expired or malformed presigned URL is refused here, before any cache
    // lookup, as the origin would refuse it.
    let window = match presigned {
        true => presign::check(&object.presign, std::time::SystemTime::now()).transpose()?,
        false => None,
    };
    let range = range::parse(request.headers().get(header::RANGE).and_then(|v| v.to_str().ok()));
    let auth = ClientAuth::of(request.headers(), &object.presign);
    Ok(ObjectRead {
        id: object_id(&route, &object),
        route,
        authority,
        object,
        range,
        auth,
        window,
    })
}

/// The object version a request reads, as the cache names it.
fn object_id(route: &Route, object: &ObjectRequest) -> ObjectId {
    ObjectId {
        origin: route.region.client.origin().to_string(),
        bucket: object.bucket.clone(),
        key: object.raw_key.clone(),
        version_id: object.version_id.clone(),
    }
}

/// Refuses a request whose Host is ambiguous (RFC 9112 §3.2: two Host headers, a
/// Host with userinfo, a Host that disagrees with an absolute-form target), before
/// it can be routed by one reading and signed or answered by another.
pub fn check_host<B>(request: &Request<B>) -> Result<(), ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadHost("more than one Host header"));
    }
    let host = host.map(|h| h.to_str().map_err(|_| ProxyError::BadHost("a Host that is not ASCII")));
    let host = host.transpose()?;
    if host.is_some_and(|h| h.contains('@')) || request.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(ProxyError::BadHost("a Host with userinfo"));
    }
    let names_host = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|name| name.trim().eq_ignore_ascii_case("host"));
    if names_host {
        return Err(ProxyError::BadHost("a Connection header that names Host"));
    }
    if let (Some(host), Some(authority)) = (host, request.uri().authority()) {
        if !host.eq_ignore_ascii_case(authority.as_str()) {
            return Err(ProxyError::BadHost(
                "a Host that differs from the request-target's authority",
            ));
        }
    }
    Ok(())
}

/// The authority the client addressed: `:authority` for h2 and absolute-form
/// targets, else the Host header.
pub fn client_authority<B>(request: &Request<B>) -> Option<String> {
    request.uri().authority().map(|a| a.as_str().to_owned()).or_else(|| {
        request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// A GET or HEAD with a body is not something S3 clients send; refusing it keeps
/// the forwarded request free of a body we would have to drop.
fn carries_body<B: Body>(request: &Request<B>) -> bool {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0");
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    (declared || chunked) && matches!(*request.method(), Method::GET | Method::HEAD)
}
