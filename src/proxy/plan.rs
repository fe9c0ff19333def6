//! Whether the cache may take part in a request, and what it needs to: what is
//! never cached is decided here, before anything is sent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::Request;

use super::admit::ObjectRead;
use super::fill::{fill_auth, FillAuth};
use super::grant::Asked;
use crate::cache::ObjectId;
use crate::credentials::FillCredentials;
use crate::s3;
use crate::s3::range::RangeRequest;

/// A request the cache may serve.
pub struct Plan {
    /// The object version's chunks and metadata (never a part's number).
    pub object: ObjectId,
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
        object_target,
        object.part_number.is_some(),
        credentials,
        region.signing_region.as_deref(),
    );
    Ok(Plan {
        object: read.id.clone(),
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
    })
}

/// Lets one cold request per object ask the origin first, so that the others wait
/// for its metadata and then probe cheaply (a 304) instead of each starting a body.
/// The first releases the others with a status (pingora's cache lock), so that a
/// herd of requests that will never be cached is not made to probe one at a time.
#[derive(Default)]
pub struct ColdGate {
    probes: Probes,
}

type Probes = Arc<Mutex<HashMap<ObjectId, watch::Receiver<Option<Release>>>>>;

/// How the request holding the turn let go of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The metadata is in the cache: read it and probe with a condition.
    Done,
    /// The origin's answer is not cacheable (a denial, `no-store`, overrides...):
    /// everyone probes at once, as they would without a cache.
    GiveUp,
    /// The holder went away without an answer (an error, a cancelled request):
    /// one waiter takes the turn.
    Dangling,
}

/// Where a cold request stands after the gate.
pub enum Entry {
    /// This request probes first; the others wait until the turn is released.
    Turn(ColdTurn),
    /// Another request probed first and released the turn so (or this one ran out
    /// of patience: `None`).
    Waited(Option<Release>),
}

/// The turn to probe first (held by a request here, or, for the owner of an
/// object's metadata, on behalf of another node of the region).
pub struct ColdTurn {
    probes: Probes,
    object: ObjectId,
    release: watch::Sender<Option<Release>>,
}

impl ColdGate {
    /// Takes the turn for `object`, or waits (at most `patience`) for whoever holds it.
    pub async fn enter(&self, object: &ObjectId, patience: Duration) -> Entry {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let mut waiting = {
                let mut probes = self.probes.lock().expect("cold gate");
                match probes.get(object) {
                    Some(receiver) => receiver.clone(),
                    None => {
                        let (release, receiver) = watch::channel(None);
                        probes.insert(object.clone(), receiver);
                        return Entry::Turn(ColdTurn {
                            probes: self.probes.clone(),
                            object: object.clone(),
                            release,
                        });
                    }
                }
            };
            let status = match tokio::time::timeout_at(deadline, waiting.wait_for(Option::is_some)).await {
                Err(_) => return Entry::Waited(None),
                Ok(Ok(status)) => *status,
                Ok(Err(_)) => None,
            };
            match status {
                // The holder went away without an answer: try for the turn again.
                Some(Release::Dangling) | None => continue,
                released => return Entry::Waited(released),
            }
        }
    }
}

impl ColdTurn {
    /// Lets the waiters go with `status`.
    pub fn release(self, status: Release) {
        self.finish(status);
    }

    fn finish(&self, status: Release) {
        let mut probes = self.probes.lock().expect("cold gate");
        if probes
            .get(&self.object)
            .is_some_and(|receiver| receiver.same_channel(&self.release.subscribe()))
        {
            probes.remove(&self.object);
        }
        drop(probes);
        self.release.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(status);
            }
            first
        });
    }
}

impl Drop for ColdTurn {
    fn drop(&mut self) {
        self.finish(Release::Dangling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> ObjectId {
        ObjectId {
            origin: "o".into(),
            bucket: "b".into(),
            key: "k".into(),
            version_id: None,
        }
    }

    #[tokio::test]
    async fn one_cold_probe_at_a_time_per_object() {
        let gate = ColdGate::default();
        let patience = Duration::from_secs(5);
        let Entry::Turn(first) = gate.enter(&object(), patience).await else {
            panic!("the first request takes the turn");
        };
        let second = tokio::time::timeout(Duration::from_millis(50), gate.enter(&object(), patience)).await;
        assert!(second.is_err(), "the second cold request waits for the first");
        drop(first);
        let Entry::Turn(third) = gate.enter(&object(), patience).await else {
            panic!("a dangling turn is taken again");
        };
        third.release(Release::Done);
        assert!(gate.probes.lock().unwrap().is_empty(), "no entry left behind");
    }

    #[tokio::test]
    async fn waiters_are_released_with_the_status() {
        for status in [Release::Done, Release::GiveUp] {
            let gate = ColdGate::default();
            let patience = Duration::from_secs(5);
            let Entry::Turn(turn) = gate.enter(&object(), patience).await else {
                panic!("first");
            };
            let object = object();
            let waiters = futures_util::future::join_all((0..8).map(|_| gate.enter(&object, patience)));
            let release = async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                turn.release(status);
            };
            let (entries, ()) = tokio::join!(waiters, release);
            for entry in entries {
                assert!(matches!(entry, Entry::Waited(Some(s)) if s == status), "{status:?}");
            }
            assert!(gate.probes.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_dangling_turn_passes_to_one_waiter() {
        let gate = ColdGate::default();
        let patience = Duration::from_secs(5);
        let Entry::Turn(turn) = gate.enter(&object(), patience).await else {
            panic!("first");
        };
        let object = object();
        let waiters = futures_util::future::join_all((0..4).map(|_| gate.enter(&object, Duration::from_millis(300))));
        let drop_it = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(turn);
        };
        let (entries, ()) = tokio::join!(waiters, drop_it);
        let turns = entries.iter().filter(|e| matches!(e, Entry::Turn(_))).count();
        assert_eq!(turns, 1, "exactly one waiter takes the turn over");
        // The others wait for the new holder, which never releases: they run out of patience.
        assert_eq!(entries.iter().filter(|e| matches!(e, Entry::Waited(None))).count(), 3);
    }
}
