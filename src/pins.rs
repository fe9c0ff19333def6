//! Pins with leases: what an operator (or a deployment, for its own lifetime) keeps
//! resident in a region. `POST/GET/DELETE /admin/pins` on any node; the node that
//! takes a change checks that every member has room for its share, passes it to
//! them (`/peer/v1/pins`), and answers once the region holds it, or refuses it
//! everywhere. Nodes that missed a change (down, or joined since) take it from
//! their peers within a minute (`/peer/v1/pins/all`, newest revision wins).
//! `s3-accel pin` is the client ([`cli`]).

pub mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use crate::cache::pins::{unix_millis, unix_now, Pin};
use crate::cache::ChunkCache;
use crate::peers::{protocol, Peers};
use crate::telemetry;

/// How often a node takes its peers' pins (it missed a change while down, or
/// joined after it).
const SYNC_EVERY: Duration = Duration::from_secs(30);
/// How long a member may take to take a pin.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// A pin's record must fit a peer request; all of a node's pins, a peer answer.
const MAX_PIN_BYTES: usize = 16 << 10;
const MAX_TABLE_BYTES: usize = 60 << 10;

/// A pin asked for: `POST /admin/pins`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// Its name; by default `s3://bucket/prefix`.
    #[serde(default)]
    pub id: Option<String>,
    pub bucket: String,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// How many objects, and bytes, the pin covers now (as listed by the pinner).
    pub objects: u64,
    pub bytes: u64,
    /// `24h`, `30m`...
    pub lease: String,
}

/// Why a pin change was refused: an HTTP status and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

/// A pin as `GET /admin/pins` shows it.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    pin: &'a Pin,
    /// Seconds left on the lease.
    expires_in: u64,
    /// This node's share, reserved, and what it holds of it now.
    reserved_here: u64,
    pinned_here: u64,
}

pub struct Pins {
    cache: Arc<ChunkCache>,
    peers: Option<Arc<Peers>>,
    max_lease: Duration,
    token_file: Option<PathBuf>,
}

impl Pins {
    pub fn new(cache: Arc<ChunkCache>, peers: Option<Arc<Peers>>, config: &crate::config::PinsConfig) -> Arc<Self> {
        Arc::new(Self {
            cache,
            peers,
            max_lease: config.max_lease,
            token_file: config.token_file.clone(),
        })
    }

    /// Whether a pin change may come from `peer` with `headers`: from loopback, or
    /// with the bearer token of `pins.token_file`.
    pub fn allowed(&self, headers: &HeaderMap, peer: SocketAddr) -> bool {
        // With a token, always the token: a service mesh's sidecar forwards every
        // caller from loopback.
        let Some(path) = &self.token_file else {
            return peer.ip().to_canonical().is_loopback();
        };
        let Ok(token) = std::fs::read_to_string(path) else {
            tracing::warn!(path = %path.display(), "pins.token_file cannot be read: pin changes refused");
            return false;
        };
        let token = token.trim();
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        !token.is_empty()
            && given.is_some_and(|given| {
                // Compared in constant time: the token is a secret.
                given.len() == token.len()
                    && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            })
    }

    /// `GET /admin/pins`: the pins in force, this node's room, as JSON.
    pub fn list(&self) -> String {
        let now = unix_now();
        let live = self.cache.pins().live();
        let shown: Vec<Shown> = live
            .iter()
            .map(|pin| Shown {
                pin,
                expires_in: pin.expires_at.saturating_sub(now),
                reserved_here: self.share(pin),
                pinned_here: self.cache.pinned_bytes_of(pin),
            })
            .collect();
        let (capacity, used) = self.cache.pinned_room();
        let body = serde_json::json!({
            "pins": shown,
            "capacity": capacity,
            "pinned": used,
            "free": self.free(None),
        });
        serde_json::to_string_pretty(&body).expect("JSON") + "\n"
    }

    /// `POST /admin/pins`: pins (or renews) for the whole region.
    pub async fn pin(&self, request: PinRequest) -> Result<Pin, Refusal> {
        let pin = self.validate(request).inspect_err(|refusal| {
            metrics::counter!(telemetry::PIN_REFUSALS, "why" => reason(refusal)).increment(1);
        })?;
        let previous = self.cache.pins().get(&pin.id);
        self.regionwide(pin.clone(), previous).await?;
        tracing::info!(
            id = pin.id,
            bucket = pin.bucket,
            bytes = pin.bytes,
            expires_at = pin.expires_at,
            "pinned"
        );
        Ok(pin)
    }

    /// `DELETE /admin/pins?id=`: the pin ends now, everywhere; its chunks are freed.
    pub async fn unpin(&self, id: &str) -> Result<Pin, Refusal> {
        let Some(previous) = self.cache.pins().get(id).filter(|p| p.live(unix_now())) else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no pin `{id}` is in force"),
            ));
        };
        let pin = Pin {
            deleted: true,
            revision: unix_millis().max(previous.revision.saturating_add(1)),
            ..previous.clone()
        };
        self.regionwide(pin.clone(), Some(previous)).await?;
        tracing::info!(id, "unpinned");
        Ok(pin)
    }

    /// Takes `pin` here and on every member; refused by any, it is undone where it
    /// was taken (`previous` is put back) and the refusal names the node.
    async fn regionwide(&self, pin: Pin, previous: Option<Pin>) -> Result<(), Refusal> {
        self.accept(pin.clone())?;
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let body = serde_json::to_vec(&pin).expect("JSON");
        let members = peers.members();
        let asked = members
            .members
            .iter()
            .filter_map(|m| Some((m.hello.node.clone(), m.address?)));
        let answers = futures_util::future::join_all(asked.map(|(node, address)| {
            let body = body.clone();
            async move {
                let answer = peers
                    .client
                    .post(address, protocol::PINS_PATH, body, PEER_TIMEOUT)
                    .await;
                (node, address, answer)
            }
        }))
        .await;
        let mut took = Vec::new();
        let mut refused = None;
        for (node, address, answer) in answers {
            match answer {
                Ok((StatusCode::OK, _)) => took.push(address),
                Ok((status, body)) => {
                    refused.get_or_insert(Refusal::new(
                        status,
                        format!("node {node}: {}", String::from_utf8_lossy(&body).trim()),
                    ));
                }
                // It takes the pin from its peers once back (within SYNC_EVERY).
                Err(error) => {
                    tracing::warn!(node, error = %crate::error::error_chain(&error), "a member did not take a pin change; it will from its peers")
                }
            }
        }
        let Some(refusal) = refused else {
            return Ok(());
        };
        // Undone where it was taken: the previous record comes back as a newer change.
        let undo = match previous {
            Some(previous) => Pin {
                revision: pin.revision.saturating_add(1),
                ..previous
            },
            None => Pin {
                deleted: true,
                revision: pin.revision.saturating_add(1),
                ..pin
            },
        };
        let _ = self.accept(undo.clone());
        let body = serde_json::to_vec(&undo).expect("JSON");
        futures_util::future::join_all(took.into_iter().map(|address| {
            let body = body.clone();
            async move {
                let _ = peers
                    .client
                    .post(address, protocol::PINS_PATH, body, PEER_TIMEOUT)
                    .await;
            }
        }))
        .await;
        metrics::counter!(telemetry::PIN_REFUSALS, "why" => reason(&refusal)).increment(1);
        Err(refusal)
    }

    /// Takes a pin change (from the admin API or a peer): a new or larger pin must
    /// fit what this node has free for its share.
    pub fn accept(&self, pin: Pin) -> Result<bool, Refusal> {
        let (capacity, _) = self.cache.pinned_room();
        // From a peer too: no lease past this node's bound, no revision from the future.
        let (now, now_ms) = (unix_now(), unix_millis());
        if pin.expires_at > now.saturating_add(self.max_lease.as_secs()).saturating_add(3600)
            || pin.revision > now_ms.saturating_add(3_600_000)
        {
            return Err(Refusal::bad("the pin's lease or revision is out of bounds"));
        }
        // A renewal that does not grow the pin needs no more room than it holds.
        let renewal = self
            .cache
            .pins()
            .get(&pin.id)
            .is_some_and(|old| old.live(now) && old.bytes >= pin.bytes && old.bucket == pin.bucket);
        if !pin.deleted && !renewal {
            if capacity == 0 {
                return Err(Refusal::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "this node keeps no pins (cache.pinned = 0)",
                ));
            }
            let share = self.share(&pin);
            let free = self.free(Some(&pin.id));
            if share > free {
                return Err(Refusal::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "the pin needs {} here (this node's share of {}); {} of cache.pinned ({}) is free",
                        size(share),
                        size(pin.bytes),
                        size(free),
                        size(capacity)
                    ),
                ));
            }
            let mut table = self.cache.pins().all();
            table.retain(|p| p.id != pin.id);
            table.push(pin.clone());
            if serde_json::to_vec(&table).map_or(0, |t| t.len()) > MAX_TABLE_BYTES {
                return Err(Refusal::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "too many pins on this node: delete some, or pin prefixes rather than long manifests",
                ));
            }
        }
        let changed = self.cache.pins().merge(pin.clone()).map_err(|error| {
            Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the pin cannot be saved on this node's disk: {error}"),
            )
        })?;
        if changed {
            self.cache.release_unpinned();
        }
        Ok(changed)
    }

    /// This node's share of `pin`'s bytes: its weight in the region (its share of the
    /// chunks), with a margin of a tenth and a chunk for how chunks fall.
    pub fn share(&self, pin: &Pin) -> u64 {
        let fraction = match &self.peers {
            None => 1.0,
            Some(peers) => {
                let members = peers.members();
                let total: u64 = members.nodes.iter().map(|n| n.weight).sum();
                let mine = members
                    .members
                    .iter()
                    .zip(&members.nodes)
                    .find(|(m, _)| m.address.is_none())
                    .map_or(0, |(_, n)| n.weight);
                match total {
                    0 => 1.0,
                    total => mine as f64 / total as f64,
                }
            }
        };
        if fraction >= 1.0 {
            return pin.bytes;
        }
        let expected = (pin.bytes as f64 * fraction * 1.1) as u64 + self.cache.chunk_size();
        expected.min(pin.bytes)
    }

    /// What `cache.pinned` has not reserved for the pins in force (but `except`).
    fn free(&self, except: Option<&str>) -> u64 {
        let (capacity, _) = self.cache.pinned_room();
        let reserved: u64 = self
            .cache
            .pins()
            .live()
            .iter()
            .filter(|p| Some(p.id.as_str()) != except)
            .map(|p| self.share(p))
            .sum();
        capacity.saturating_sub(reserved)
    }

    fn validate(&self, request: PinRequest) -> Result<Pin, Refusal> {
        if request.bucket.is_empty() {
            return Err(Refusal::bad("a pin names a bucket"));
        }
        let keys = request.keys.unwrap_or_default();
        if request.prefix.is_some() != keys.is_empty() {
            return Err(Refusal::bad(
                "a pin names a prefix or a list of keys (a manifest), not both",
            ));
        }
        if request.objects == 0 {
            return Err(Refusal::bad(match &request.prefix {
                Some(prefix) => format!("s3://{}/{prefix} lists nothing: nothing to pin", request.bucket),
                None => "the manifest names no object: nothing to pin".into(),
            }));
        }
        let lease = crate::config::units::parse_duration(&request.lease)
            .map_err(|e| Refusal::bad(format!("lease `{}`: {e}", request.lease)))?;
        if lease.is_zero() {
            return Err(Refusal::bad("a lease must be longer than 0s"));
        }
        if lease > self.max_lease {
            return Err(Refusal::bad(format!(
                "lease {} is longer than pins.max_lease ({}): pin for less and renew",
                request.lease,
                humantime_secs(self.max_lease)
            )));
        }
        let id = request.id.unwrap_or_else(|| match &request.prefix {
            Some(prefix) => format!("s3://{}/{prefix}", request.bucket),
            None => {
                let mut sorted: Vec<&String> = keys.iter().collect();
                sorted.sort_unstable();
                let listed = sorted.iter().map(|k| k.as_str()).collect::<Vec<_>>().join("\n");
                format!(
                    "s3://{}/ ({} keys, {:016x})",
                    request.bucket,
                    keys.len(),
                    twox_hash::XxHash64::oneshot(0, listed.as_bytes())
                )
            }
        });
        // Newer than the change this node holds, whatever the clocks say.
        let revision = match self.cache.pins().get(&id) {
            Some(old) => unix_millis().max(old.revision.saturating_add(1)),
            None => unix_millis(),
        };
        let pin = Pin {
            id,
            bucket: request.bucket,
            prefix: request.prefix,
            keys,
            objects: request.objects,
            bytes: request.bytes,
            expires_at: unix_now() + lease.as_secs().max(1),
            revision,
            deleted: false,
        };
        if serde_json::to_vec(&pin).map_or(usize::MAX, |b| b.len()) > MAX_PIN_BYTES {
            return Err(Refusal::bad(
                "the manifest is too long for one pin: pin a prefix, or split it",
            ));
        }
        Ok(pin)
    }

    /// Every pin this node holds, tombstones included (what peers merge).
    pub fn table(&self) -> Vec<u8> {
        serde_json::to_vec(&self.cache.pins().all()).expect("JSON")
    }

    /// Takes the pins of every member now and then: a node that was down, or joined
    /// since, holds what the region pinned. Runs until the task is dropped.
    pub async fn sync(self: Arc<Self>) {
        let Some(peers) = self.peers.clone() else {
            return;
        };
        // As soon as the members change (a node joined or came back), and every
        // SYNC_EVERY.
        let mut synced: Option<(u64, std::time::Instant)> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let members = peers.members();
            let due =
                synced.is_none_or(|(fingerprint, at)| fingerprint != members.fingerprint || at.elapsed() >= SYNC_EVERY);
            if !due {
                continue;
            }
            synced = Some((members.fingerprint, std::time::Instant::now()));
            for address in members.members.iter().filter_map(|m| m.address) {
                let answer = peers
                    .client
                    .post(address, protocol::PINS_ALL_PATH, Vec::new(), PEER_TIMEOUT)
                    .await;
                let Ok((StatusCode::OK, body)) = answer else {
                    continue;
                };
                let Ok(pins) = serde_json::from_slice::<Vec<Pin>>(&body) else {
                    continue;
                };
                for pin in pins {
                    let id = pin.id.clone();
                    if let Err(refusal) = self.accept(pin) {
                        metrics::counter!(telemetry::PIN_REFUSALS, "why" => "sync").increment(1);
                        tracing::warn!(id, reason = %refusal, "a region's pin does not fit this node");
                    }
                }
            }
        }
    }
}

fn reason(refusal: &Refusal) -> &'static str {
    match refusal.status {
        StatusCode::INSUFFICIENT_STORAGE => "full",
        StatusCode::BAD_REQUEST => "invalid",
        _ => "other",
    }
}

fn size(bytes: u64) -> String {
    crate::config::units::format_size(bytes)
}

fn humantime_secs(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{s}s"),
    }
}
