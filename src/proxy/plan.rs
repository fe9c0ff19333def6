//! Whether the cache may take part in a request, and what it needs to: what is
//! never cached is decided here, before anything is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Request;

use super::fill::{fill_auth, FillAuth};
use crate::cache::ObjectId;
use crate::config::ProxyCredentials;
use crate::origin::Route;
use crate::s3::range::{self, RangeRequest};
use crate::s3::{self, ObjectRequest};

/// A request the cache may serve.
pub struct Plan {
    pub object: ObjectId,
    pub range: RangeRequest,
    pub overrides: Vec<(HeaderName, HeaderValue)>,
    pub auth: FillAuth,
    /// The client sent If-None-Match or If-Modified-Since: a 304 is its own verdict,
    /// and the proxy adds no condition of its own.
    pub client_conditionals: bool,
    /// Whether the origin's answer describes the object (no `response-*` overrides).
    pub learns: bool,
}

/// Plans a cacheable request, or says why it passes through uncached.
pub fn plan<B>(
    request: &Request<B>,
    object: &ObjectRequest,
    route: &Route,
    credentials: Option<&Arc<ProxyCredentials>>,
) -> Result<Plan, &'static str> {
    let headers = request.headers();
    if s3::is_sse_c(headers) {
        return Err("sse_c");
    }
    if headers
        .get("x-amz-checksum-mode")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"enabled"))
    {
        return Err("checksum_mode");
    }
    let range = range::parse(headers.get(header::RANGE).and_then(|v| v.to_str().ok()));
    if range == RangeRequest::Multiple {
        return Err("multi_range");
    }
    if object.part_number.is_some() {
        // Parts are ranges of the object whose bounds only the origin knows.
        return Err("part_number");
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
    let region = &route.region.config;
    let auth = fill_auth(
        request.method(),
        &target,
        headers,
        object_target,
        credentials,
        region.signing_region.as_deref(),
    )?;
    Ok(Plan {
        object: ObjectId {
            origin: route.region.client.origin().to_string(),
            bucket: object.bucket.clone(),
            key: object_key(uri.path(), route.bucket_from_host.is_some()),
            version_id: object.version_id.clone(),
            part_number: object.part_number,
        },
        range,
        overrides: s3::response_overrides(uri.query()),
        auth,
        client_conditionals: headers.contains_key(header::IF_NONE_MATCH)
            || headers.contains_key(header::IF_MODIFIED_SINCE),
        learns: !object.has_response_overrides,
    })
}

/// The raw key as the client encoded it: what follows the bucket in the path.
fn object_key(path: &str, bucket_in_host: bool) -> String {
    let path = path.strip_prefix('/').unwrap_or(path);
    if bucket_in_host {
        path.to_owned()
    } else {
        path.split_once('/').map_or("", |(_, key)| key).to_owned()
    }
}

/// Lets one cold request per object ask the origin first, so that the others wait
/// for its metadata and then probe cheaply (a 304) instead of each starting a body.
#[derive(Default)]
pub struct ColdGate {
    probes: Mutex<HashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>>,
}

pub struct ColdTurn<'a> {
    gate: &'a ColdGate,
    object: ObjectId,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Another request held the turn before this one.
    pub waited: bool,
}

impl ColdGate {
    /// Waits (at most `patience`) for the cold requests ahead of this one.
    pub async fn enter(&self, object: &ObjectId, patience: Duration) -> ColdTurn<'_> {
        let lock = self
            .probes
            .lock()
            .expect("cold gate")
            .entry(object.clone())
            .or_default()
            .clone();
        let (guard, waited) = match lock.clone().try_lock_owned() {
            Ok(guard) => (Some(guard), false),
            Err(_) => (tokio::time::timeout(patience, lock.lock_owned()).await.ok(), true),
        };
        ColdTurn {
            gate: self,
            object: object.clone(),
            guard,
            waited,
        }
    }
}

impl Drop for ColdTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut probes = self.gate.probes.lock().expect("cold gate");
        if probes
            .get(&self.object)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            probes.remove(&self.object);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_follow_the_bucket() {
        assert_eq!(object_key("/b/dir/a%20b", false), "dir/a%20b");
        assert_eq!(object_key("/b//k", false), "/k");
        assert_eq!(object_key("/dir/a+b", true), "dir/a+b");
    }

    #[tokio::test]
    async fn one_cold_probe_at_a_time_per_object() {
        let gate = ColdGate::default();
        let object = ObjectId {
            origin: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
            part_number: None,
        };
        let first = gate.enter(&object, Duration::from_secs(5)).await;
        assert!(!first.waited);
        let second = tokio::time::timeout(Duration::from_millis(50), gate.enter(&object, Duration::from_secs(5))).await;
        assert!(second.is_err(), "the second cold request waits for the first");
        drop(first);
        let third = gate.enter(&object, Duration::from_secs(5)).await;
        assert!(!third.waited);
        drop(third);
        assert!(gate.probes.lock().unwrap().is_empty(), "no entry left behind");
    }
}
