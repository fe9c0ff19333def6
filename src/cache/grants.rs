//! Grants: "this principal was allowed to read this object version at time t",
//! recorded from an origin's decision, so that a hit can be served without asking
//! the origin again for a bounded window. In memory, bounded by bytes (least
//! recently used first out), never persisted, never shared between nodes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use foyer::{Cache, CacheBuilder, LruConfig};

use super::ObjectId;

/// What a grant is keyed by: a hash that names the principal and what it read, so
/// that no other principal's request can find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrantKey([u8; 32]);

/// Which fast path a grant serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    /// A presigned URL, reused byte for byte.
    Presigned,
    /// An unsigned read of an allow-listed bucket.
    Anonymous,
    /// A request whose SigV4 signature s3-accel verified (`verified_keys`).
    Verified,
}

impl GrantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Presigned => "presigned",
            Self::Anonymous => "anonymous",
            Self::Verified => "verified",
        }
    }
}

impl GrantKey {
    /// A presigned URL's grant: its method, host, raw path and whole raw query (the
    /// signature in it), and the values of the headers it signed.
    pub fn presigned(method: &str, host: &str, path: &str, query: &str, signed_headers: &[(&str, &[u8])]) -> Self {
        let mut parts: Vec<&[u8]> = vec![
            b"presigned",
            method.as_bytes(),
            host.as_bytes(),
            path.as_bytes(),
            query.as_bytes(),
        ];
        for (name, value) in signed_headers {
            parts.push(name.as_bytes());
            parts.push(value);
        }
        Self::of(&parts)
    }

    /// An unsigned read's grant: the object version, and nothing of a principal.
    pub fn anonymous(object: &ObjectId) -> Self {
        let version = object.version_id.as_deref().unwrap_or("");
        Self::of(&[
            b"anonymous",
            object.origin.as_bytes(),
            object.bucket.as_bytes(),
            object.key.as_bytes(),
            version.as_bytes(),
        ])
    }

    /// A verified principal's grant: its access key and session token, and the
    /// object version (any request it signs for that object finds it).
    pub fn verified(access_key: &str, session_token: Option<&str>, object: &ObjectId) -> Self {
        let version = object.version_id.as_deref().unwrap_or("");
        Self::of(&[
            b"verified",
            access_key.as_bytes(),
            session_token.unwrap_or("").as_bytes(),
            object.origin.as_bytes(),
            object.bucket.as_bytes(),
            object.key.as_bytes(),
            version.as_bytes(),
        ])
    }

    /// SHA-256 of the parts, each length-prefixed (no two lists hash alike).
    fn of(parts: &[&[u8]]) -> Self {
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        Self(key)
    }
}

/// One origin decision.
#[derive(Debug, Clone)]
pub struct Grant {
    pub object: ObjectId,
    /// The version the origin allowed.
    pub etag: String,
    pub kind: GrantKind,
    /// When the origin decided.
    pub at: Instant,
    /// Until when it may be served: the TTL, or the presigned URL's own end.
    pub until: Instant,
}

/// Grants recorded before a time for a bucket or an object no longer count: an
/// origin 403 for the bucket, a 404 for the object.
#[derive(Default)]
struct Drops {
    buckets: Expiring<(String, String)>,
    objects: Expiring<ObjectId>,
}

/// Objects whose drop times are kept; beyond it, their buckets' grants are dropped.
const MAX_OBJECT_DROPS: usize = 100_000;
/// Buckets whose drop times are kept; beyond it, every grant is forgotten.
const MAX_BUCKET_DROPS: usize = 100_000;

/// Drop times younger than the TTL (only those can outlive a grant), expired
/// oldest first: each drop costs O(1), whatever the number held.
struct Expiring<K> {
    times: HashMap<K, Instant>,
    /// Keys in the order of their first drop; a key dropped again is moved back
    /// when it reaches the front.
    order: VecDeque<(Instant, K)>,
}

impl<K> Default for Expiring<K> {
    fn default() -> Self {
        Self {
            times: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Expiring<K> {
    fn get(&self, key: &K) -> Option<&Instant> {
        self.times.get(key)
    }

    fn len(&self) -> usize {
        self.times.len()
    }

    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < ttl {
                break;
            }
            let (at, key) = self.order.pop_front().expect("a front");
            match self.times.get(&key) {
                Some(latest) if *latest > at => self.order.push_back((*latest, key)),
                Some(_) => {
                    self.times.remove(&key);
                }
                None => {}
            }
        }
    }

    fn insert(&mut self, key: K, now: Instant) {
        if self.times.insert(key.clone(), now).is_none() {
            self.order.push_back((now, key));
        }
    }
}

pub struct Grants {
    store: Cache<GrantKey, Grant>,
    ttl: Duration,
    drops: Mutex<Drops>,
}

impl Grants {
    /// A store of at most `capacity` bytes and `entries` grants: each grant weighs
    /// its bytes, and at least `capacity / entries`.
    pub fn new(ttl: Duration, capacity: u64, entries: u64) -> Self {
        let least = (capacity / entries.max(1)) as usize;
        let store = CacheBuilder::new(capacity as usize)
            .with_name("s3-accel-grants")
            .with_shards(4)
            .with_eviction_config(LruConfig::default())
            .with_weighter(move |_: &GrantKey, grant: &Grant| {
                let bytes = 64
                    + grant.etag.len()
                    + grant.object.origin.len()
                    + grant.object.bucket.len()
                    + grant.object.key.len();
                bytes.max(least)
            })
            .build();
        Self {
            store,
            ttl,
            drops: Mutex::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The live grant under `key` for this version of `object`: recorded less than
    /// the TTL ago, inside the URL's own window, and not dropped since.
    pub fn live(&self, key: &GrantKey, object: &ObjectId, etag: &str) -> Option<Grant> {
        let grant = self.store.get(key)?.value().clone();
        let now = Instant::now();
        if now >= grant.until || grant.object != *object || grant.etag != etag {
            return None;
        }
        let drops = self.drops.lock().expect("grant drops");
        let dropped = |at: Option<&Instant>| at.is_some_and(|at| *at >= grant.at);
        let bucket_dropped = !drops.buckets.times.is_empty()
            && dropped(drops.buckets.get(&(object.origin.clone(), object.bucket.clone())));
        if bucket_dropped || dropped(drops.objects.get(object)) {
            return None;
        }
        Some(grant)
    }

    /// Records the origin's yes to `key` for this version, decided at `at`, to be
    /// served until the TTL or `ends` (a presigned URL's own end), whichever is first.
    pub fn record(
        &self,
        key: GrantKey,
        object: &ObjectId,
        etag: &str,
        kind: GrantKind,
        at: Instant,
        ends: Option<SystemTime>,
    ) {
        let mut until = at + self.ttl;
        if let Some(ends) = ends {
            let left = ends.duration_since(SystemTime::now()).unwrap_or_default();
            until = until.min(Instant::now() + left);
        }
        self.store.insert(
            key,
            Grant {
                object: object.clone(),
                etag: etag.to_owned(),
                kind,
                at,
                until,
            },
        );
    }

    /// The origin refused a request for `bucket` (403): none of its grants count.
    pub fn drop_bucket(&self, object: &ObjectId) {
        let mut drops = self.drops.lock().expect("grant drops");
        let now = Instant::now();
        drops.buckets.expire(now, self.ttl);
        if drops.buckets.len() >= MAX_BUCKET_DROPS {
            drop(drops);
            return self.flush();
        }
        drops
            .buckets
            .insert((object.origin.clone(), object.bucket.clone()), now);
    }

    /// The origin has no such object (404): none of its grants count.
    pub fn drop_object(&self, object: &ObjectId) {
        let mut drops = self.drops.lock().expect("grant drops");
        let now = Instant::now();
        drops.objects.expire(now, self.ttl);
        if drops.objects.len() >= MAX_OBJECT_DROPS {
            drop(drops);
            return self.drop_bucket(object);
        }
        drops.objects.insert(object.clone(), now);
    }

    /// Drop times held (buckets and objects), for tests and bounds.
    pub fn drops_held(&self) -> usize {
        let drops = self.drops.lock().expect("grant drops");
        drops.buckets.len() + drops.objects.len()
    }

    /// Forgets every grant (SIGHUP, the admin endpoint).
    pub fn flush(&self) {
        self.store.clear();
    }

    /// Grants held, live or not yet evicted.
    pub fn len(&self) -> usize {
        self.store.entries()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> ObjectId {
        ObjectId {
            origin: "http://o:80".into(),
            bucket: "b".into(),
            key: key.into(),
            version_id: None,
        }
    }

    #[test]
    fn a_grant_is_live_for_its_version_until_its_window_ends() {
        let grants = Grants::new(Duration::from_secs(30), 1 << 20, 1000);
        let key = GrantKey::presigned("GET", "h", "/b/k", "X-Amz-Signature=ab", &[("host", b"h")]);
        let now = Instant::now();
        grants.record(key, &object("k"), "\"e1\"", GrantKind::Presigned, now, None);
        assert!(grants.live(&key, &object("k"), "\"e1\"").is_some());
        assert!(grants.live(&key, &object("k"), "\"e2\"").is_none(), "another version");
        assert!(
            grants.live(&key, &object("other"), "\"e1\"").is_none(),
            "another object"
        );
        // A URL whose own window has ended is not served, whatever the TTL says.
        let ended = SystemTime::now() - Duration::from_secs(1);
        grants.record(key, &object("k"), "\"e1\"", GrantKind::Presigned, now, Some(ended));
        assert!(grants.live(&key, &object("k"), "\"e1\"").is_none());
        // Nor one recorded longer ago than the TTL.
        grants.record(
            key,
            &object("k"),
            "\"e1\"",
            GrantKind::Presigned,
            now - Duration::from_secs(31),
            None,
        );
        assert!(grants.live(&key, &object("k"), "\"e1\"").is_none());
    }

    #[test]
    fn keys_name_their_principal() {
        let url = |query: &str| GrantKey::presigned("GET", "h", "/b/k", query, &[]);
        assert_ne!(url("X-Amz-Signature=ab"), url("X-Amz-Signature=ac"));
        assert_ne!(
            GrantKey::presigned("HEAD", "h", "/b/k", "q", &[]),
            GrantKey::presigned("GET", "h", "/b/k", "q", &[])
        );
        assert_ne!(
            GrantKey::presigned("GET", "h", "/b/kq", "", &[]),
            GrantKey::presigned("GET", "h", "/b/k", "q", &[])
        );
        assert_ne!(GrantKey::anonymous(&object("k")), GrantKey::anonymous(&object("k2")));
    }

    #[test]
    fn the_store_is_bounded_by_count_as_well_as_bytes() {
        let grants = Grants::new(Duration::from_secs(30), 1 << 20, 100);
        for i in 0..1000 {
            let key = GrantKey::anonymous(&object(&format!("k{i}")));
            grants.record(
                key,
                &object(&format!("k{i}")),
                "e",
                GrantKind::Anonymous,
                Instant::now(),
                None,
            );
        }
        assert!(grants.len() <= 100, "{} grants held", grants.len());
        assert!(grants.len() >= 50, "{} grants held", grants.len());
    }

    #[test]
    fn refusals_and_flushes_drop_grants() {
        let grants = Grants::new(Duration::from_secs(30), 1 << 20, 1000);
        let (a, b) = (GrantKey::anonymous(&object("a")), GrantKey::anonymous(&object("b")));
        let at = Instant::now() - Duration::from_millis(5);
        grants.record(a, &object("a"), "e", GrantKind::Anonymous, at, None);
        grants.record(b, &object("b"), "e", GrantKind::Anonymous, at, None);
        grants.drop_object(&object("a"));
        assert!(grants.live(&a, &object("a"), "e").is_none(), "404: the object's grants");
        assert!(grants.live(&b, &object("b"), "e").is_some());
        grants.drop_bucket(&object("b"));
        assert!(grants.live(&b, &object("b"), "e").is_none(), "403: the bucket's grants");
        // A decision after the drop counts again.
        grants.record(
            b,
            &object("b"),
            "e",
            GrantKind::Anonymous,
            Instant::now() + Duration::from_millis(1),
            None,
        );
        assert!(grants.live(&b, &object("b"), "e").is_some());
        grants.flush();
        assert!(grants.live(&b, &object("b"), "e").is_none());
    }

    #[test]
    fn drops_expire_oldest_first_and_a_drop_again_keeps_its_latest_time() {
        let ttl = Duration::from_secs(30);
        let mut drops = Expiring::default();
        let t0 = Instant::now();
        drops.insert("a", t0);
        drops.insert("b", t0 + Duration::from_secs(10));
        drops.insert("a", t0 + Duration::from_secs(20));
        drops.expire(t0 + Duration::from_secs(35), ttl);
        assert_eq!(
            drops.get(&"a"),
            Some(&(t0 + Duration::from_secs(20))),
            "dropped again since"
        );
        assert_eq!(drops.get(&"b"), Some(&(t0 + Duration::from_secs(10))));
        drops.expire(t0 + Duration::from_secs(45), ttl);
        assert_eq!(drops.get(&"b"), None);
        assert!(drops.get(&"a").is_some());
        drops.expire(t0 + Duration::from_secs(55), ttl);
        assert_eq!(drops.len(), 0);
        assert!(drops.order.is_empty(), "nothing left behind");
    }

    #[test]
    fn object_drops_are_bounded() {
        let grants = Grants::new(Duration::from_secs(30), 1 << 20, 1000);
        for i in 0..(MAX_OBJECT_DROPS + 10) {
            grants.drop_object(&object(&format!("k{i}")));
        }
        assert!(grants.drops_held() <= MAX_OBJECT_DROPS + 1, "{}", grants.drops_held());
    }
}
