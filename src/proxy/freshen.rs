//! Cached metadata kept current where a 304 cannot tell: an object rewritten with the
//! same bytes (the same ETag, perhaps the same Last-Modified second) and other headers
//! (`x-amz-meta-*`, Content-Type). With fill credentials, metadata not checked for
//! `cache.metadata_max_age` is checked by a HEAD signed with them, in the background,
//! once per object per period. Without them the probe's 304 is all there is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;

use super::authorize;
use crate::cache::{ChunkCache, ObjectId};
use crate::credentials::FillCredentials;
use crate::origin::{sign_s3, Region};
use crate::s3::response::{meta_from_response, Asked};

/// Objects remembered as checked: past this, those checked longest ago are forgotten
/// (and checked again on their next read).
const MAX_REMEMBERED: usize = 100_000;

/// When each object's metadata was last checked, on this node.
pub struct Freshen {
    max_age: Duration,
    checked: Mutex<HashMap<ObjectId, Instant>>,
}

/// A HEAD of one object, signed with the fill credentials.
pub struct Check {
    pub region: Arc<Region>,
    pub authority: String,
    pub target: PathAndQuery,
    pub credentials: Arc<FillCredentials>,
    pub signing_region: String,
}

impl Freshen {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            checked: Mutex::default(),
        }
    }

    /// `object`'s metadata is being learned from the origin: as good as checked now.
    pub fn learned(&self, object: &ObjectId) {
        if !self.max_age.is_zero() {
            self.mark(object, Instant::now());
        }
    }

    /// Whether `object`'s metadata is due a check (never checked on this node, as
    /// after a restart, or longer ago than the maximum age); if so, it counts as
    /// checked now.
    fn due(&self, object: &ObjectId) -> bool {
        if self.max_age.is_zero() {
            return false;
        }
        let now = Instant::now();
        let fresh = self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(object)
            .is_some_and(|at| now.duration_since(*at) < self.max_age);
        if !fresh {
            self.mark(object, now);
        }
        !fresh
    }

    fn mark(&self, object: &ObjectId, now: Instant) {
        let mut checked = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked.len() >= MAX_REMEMBERED {
            let max_age = self.max_age;
            checked.retain(|_, at| now.duration_since(*at) < max_age);
            if checked.len() >= MAX_REMEMBERED {
                checked.clear();
            }
        }
        checked.insert(object.clone(), now);
    }

    /// Checks `object`'s cached metadata in the background when it is due.
    pub fn maybe(&self, cache: &Arc<ChunkCache>, object: &ObjectId, check: impl FnOnce() -> Option<Check>) {
        if !self.due(object) {
            return;
        }
        let Some(check) = check() else { return };
        let (cache, object) = (cache.clone(), object.clone());
        tokio::spawn(async move {
            if let Err(error) = check.run(&cache, &object).await {
                tracing::debug!(key = object.key, %error, "checking an object's metadata");
            }
        });
    }
}

impl Check {
    /// HEADs the object and writes what it says: new headers for the same version,
    /// another version's metadata, or none when the object is gone.
    async fn run(self, cache: &ChunkCache, object: &ObjectId) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let keys = self.credentials.current().ok_or("no valid fill credentials")?;
        let uri = Uri::builder()
            .scheme(self.region.client.origin().scheme())
            .authority(self.authority.as_str())
            .path_and_query(self.target)
            .build()?;
        let mut request = Request::head(uri).body(Empty::<Bytes>::new())?;
        request
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_str(&self.authority)?);
        sign_s3(&mut request, &keys.keys, &self.signing_region)?;
        let response = self.region.client.send(request, "refresh").await?;
        match response.status() {
            StatusCode::OK => {
                let Some(new) = meta_from_response(StatusCode::OK, response.headers(), Asked::Whole, false) else {
                    return Ok(());
                };
                let meta = match cache.meta(object).await {
                    Some(old) if old.etag == new.etag => authorize::refreshed(&old, new),
                    _ => new,
                };
                cache.insert_meta(object, meta);
            }
            StatusCode::NOT_FOUND => cache.remove_meta(object),
            // Refused (the fill credentials may not read it) or failing: the probe's
            // answer stands.
            _ => {}
        }
        Ok(())
    }
}
