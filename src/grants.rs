//! Grants, the request path's side: which grant a request would be served from
//! (if its mode is on), a live one for a hit served without the origin, recording
//! the origin's yes, dropping grants on the origin's no, and asking again in the
//! background before one runs out. The store itself is [`crate::cache::grants`]
//! (an in-memory foyer cache: the cache facade is the only module naming foyer).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::Empty;

pub use crate::cache::grants::{Grant, GrantKey, GrantKind, Grants};
use crate::cache::{ChunkCache, ObjectId};
use crate::config::AuthConfig;
use crate::origin::{self, Region};
use crate::s3::auth::ClientAuth;
use crate::s3::keys::VerifiedKeys;
use crate::s3::presign::Presigned;
use crate::s3::signature::Signature;
use crate::s3::sigv4::{self, SigV4Error, Signed};
use crate::s3::ObjectRequest;
use crate::telemetry;

/// A response extension: the grant kind that authorized a hit without the origin
/// (the access log names it).
#[derive(Debug, Clone, Copy)]
pub struct Authorized(pub &'static str);

/// The grant a request would be served from.
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub key: GrantKey,
    pub kind: GrantKind,
    /// A presigned URL's own end.
    pub ends: Option<SystemTime>,
}

/// What of an admitted read the grant decision depends on.
pub struct Read<'a> {
    pub object: &'a ObjectRequest,
    pub id: &'a ObjectId,
    /// How the client signed.
    pub auth: &'a ClientAuth,
    /// A presigned URL's window, checked.
    pub window: Option<&'a Presigned>,
    /// The region SigV4 signatures are checked for (any, when `None`).
    pub signing_region: Option<&'a str>,
}

/// The grants of one node, when a mode keeps them (`auth.grants`).
pub struct Granting {
    store: Arc<Grants>,
    /// `verified_keys`: the access keys whose SigV4 is checked here.
    verified: Option<Arc<VerifiedKeys>>,
    config: AuthConfig,
    /// Grants being asked about again in the background.
    revalidating: Arc<Mutex<HashSet<GrantKey>>>,
}

impl Granting {
    /// The grants `config` keeps, or `None` when no mode is on.
    pub fn new(config: &AuthConfig, verified: Option<Arc<VerifiedKeys>>) -> Option<Arc<Self>> {
        config.grants().then(|| {
            Arc::new(Self {
                store: Arc::new(Grants::new(config.grant_ttl, config.grant_memory, config.grant_entries)),
                verified,
                config: config.clone(),
                revalidating: Arc::default(),
            })
        })
    }

    /// The store: flushed by the admin endpoint and SIGHUP, gauged by `/metrics`.
    pub fn store(&self) -> &Arc<Grants> {
        &self.store
    }

    /// Whether presigned URLs are served from grants (their window is then checked
    /// on admission).
    pub fn presigned(&self) -> bool {
        self.config.presigned
    }

    /// The grant `request` would be served from: a presigned URL's (whose window was
    /// checked: `window`), or an unsigned read's of an allow-listed bucket. Never
    /// one of the other kind: a signed request never uses an anonymous grant, and the
    /// reverse.
    pub fn asked(&self, target: &Signed<'_>, read: &Read<'_>) -> Result<Option<Asked>, SigV4Error> {
        let id = read.id;
        // A key s3-accel verifies: its signature is checked here (a bad one is
        // refused here), and the principal's grant is its key's for the object.
        if let Some(keys) = &self.verified {
            match sigv4::verify(target, |key| keys.secret(key), read.signing_region, SystemTime::now()) {
                Ok(verified) => {
                    return Ok(Some(Asked {
                        key: GrantKey::verified(&verified.access_key, verified.session_token.as_deref(), id),
                        kind: GrantKind::Verified,
                        ends: verified.expires,
                    }))
                }
                Err(SigV4Error::UnknownKey | SigV4Error::NotSigV4) => {}
                Err(refused) => return Err(refused),
            }
        }
        Ok(self.asked_unverified(target, read))
    }

    fn asked_unverified(&self, target: &Signed<'_>, read: &Read<'_>) -> Option<Asked> {
        let (object, id) = (read.object, read.id);
        if let Some(window) = read.window {
            let signed = Signature::of_query(&object.presign)
                .presigned()
                .and_then(|params| params.signed_headers)
                .unwrap_or("");
            let values: Vec<(&str, &[u8])> = signed
                .split(';')
                .map(|name| {
                    let value = match name {
                        "host" => target.authority.as_bytes(),
                        name => target.headers.get(name).map_or(&b""[..], |v| v.as_bytes()),
                    };
                    (name, value)
                })
                .collect();
            let key = GrantKey::presigned(target.method, target.authority, target.path, target.query, &values);
            return Some(Asked {
                key,
                kind: GrantKind::Presigned,
                ends: Some(window.expires),
            });
        }
        let anonymous = !self.config.anonymous_buckets.is_empty()
            && read.auth.is_anonymous()
            && !target.headers.contains_key(header::AUTHORIZATION)
            && self.config.anonymous_buckets.contains(&object.bucket)
            // S3 refuses `response-*` overrides to anonymous requests: the origin says so.
            && object.overrides.is_empty();
        anonymous.then(|| Asked {
            key: GrantKey::anonymous(id),
            kind: GrantKind::Anonymous,
            ends: None,
        })
    }

    /// Records the origin's answer to a request that asked for a grant: a yes for
    /// version `etag`, decided no earlier than `asked_at`.
    pub fn record(
        &self,
        asked: Option<&Asked>,
        id: &ObjectId,
        status: StatusCode,
        etag: Option<&str>,
        asked_at: Instant,
    ) {
        let (grants, Some(asked), Some(etag)) = (&self.store, asked, etag) else {
            return;
        };
        if matches!(
            status,
            StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        ) {
            grants.record(asked.key, id, etag, asked.kind, asked_at, asked.ends);
        }
    }

    /// The origin said no: a 403 drops every grant of the bucket, a 404 the object's.
    pub fn observe(&self, id: &ObjectId, status: StatusCode) {
        let grants = &self.store;
        match status {
            StatusCode::FORBIDDEN => grants.drop_bucket(id),
            StatusCode::NOT_FOUND => grants.drop_object(id),
            _ => {}
        }
    }

    /// A live grant under `asked` for this version, counted as the way the hit was
    /// authorized.
    pub fn live(&self, asked: &Asked, id: &ObjectId, etag: &str) -> Option<Grant> {
        let grant = self.store.live(&asked.key, id, etag)?;
        telemetry::hit_authorized(grant.kind.as_str());
        Some(grant)
    }

    /// Asks the origin again, in the background, about a grant older than half its
    /// TTL (`probe`: the client's own request): a yes renews it, a changed object
    /// is forgotten (its next read is cold), a no drops grants as any refusal does.
    /// One such probe per grant at a time; the client is not kept waiting.
    pub fn revalidate(
        &self,
        (region, cache): (&Arc<Region>, &Arc<ChunkCache>),
        probe: impl FnOnce() -> Request<Empty<Bytes>>,
        asked: &Asked,
        grant: &Grant,
    ) {
        let grants = self.store.clone();
        if grant.at.elapsed() < grants.ttl() / 2 || !self.revalidating.lock().expect("revalidating").insert(asked.key) {
            return;
        }
        let (region, cache, revalidating) = (region.clone(), cache.clone(), self.revalidating.clone());
        let (asked, grant, probe) = (*asked, grant.clone(), probe());
        tokio::spawn(async move {
            let mut probe = probe;
            if let Ok(etag) = HeaderValue::from_str(&grant.etag) {
                probe.headers_mut().insert(header::IF_NONE_MATCH, etag);
            }
            let asked_at = Instant::now();
            match region.client.send(probe, "revalidate").await {
                Ok(response) => {
                    let status = response.status();
                    let etag = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok());
                    let same = status == StatusCode::NOT_MODIFIED || etag == Some(grant.etag.as_str());
                    match status {
                        StatusCode::OK | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED if same => {
                            grants.record(asked.key, &grant.object, &grant.etag, asked.kind, asked_at, asked.ends);
                        }
                        StatusCode::OK | StatusCode::PARTIAL_CONTENT => cache.remove_meta(&grant.object),
                        StatusCode::FORBIDDEN => grants.drop_bucket(&grant.object),
                        StatusCode::NOT_FOUND => grants.drop_object(&grant.object),
                        _ => {}
                    }
                    // A body the origin sent anyway is not read.
                    origin::poison(&response);
                }
                Err(error) => tracing::debug!(error = %crate::error::error_chain(&error), "revalidating a grant"),
            }
            revalidating.lock().expect("revalidating").remove(&asked.key);
        });
    }
}
