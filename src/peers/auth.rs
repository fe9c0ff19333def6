//! Peer requests are signed: HMAC-SHA256 over the method, the path, the chunk key
//! and a timestamp, keyed by a secret the region's nodes share (a Kubernetes
//! Secret). Two keys are accepted so that the secret can be rotated without a
//! moment when nodes refuse each other: the first signs, either verifies.

use aws_lc_rs::hmac;

/// Header carrying the signing time, in seconds since the Unix epoch.
pub const PEER_DATE: &str = "x-s3-accel-peer-date";
/// Header carrying the signature, lowercase hex.
pub const PEER_SIGNATURE: &str = "x-s3-accel-peer-signature";

/// How far a peer's clock may be from ours.
pub const MAX_SKEW_SECONDS: u64 = 30;

/// A key shorter than this is refused: it would be guessable.
const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerKeyError {
    #[error("the peer secret holds no key")]
    Empty,
    #[error("the peer secret holds {0} keys; at most 2 (the current one first, then the previous)")]
    TooMany(usize),
    #[error("a peer key is {0} bytes; at least 32 are needed")]
    TooShort(usize),
}

/// Why a peer request is refused (each is a 403, never explained to the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("the request is not signed")]
    Unsigned,
    #[error("the request's signing time is not a number")]
    BadDate,
    #[error("the request was signed more than 30 s away from now")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The region's shared keys.
pub struct PeerKeys {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for PeerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKeys({} keys)", self.keys.len())
    }
}

impl PeerKeys {
    /// Keys from a Secret's text: one per line, the signing key first, then the one
    /// being retired. Blank lines and surrounding whitespace are ignored.
    pub fn from_text(text: &str) -> Result<Self, PeerKeyError> {
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        match lines.len() {
            0 => return Err(PeerKeyError::Empty),
            1 | 2 => {}
            n => return Err(PeerKeyError::TooMany(n)),
        }
        if let Some(short) = lines.iter().find(|l| l.len() < MIN_KEY_BYTES) {
            return Err(PeerKeyError::TooShort(short.len()));
        }
        let keys = lines
            .iter()
            .map(|line| hmac::Key::new(hmac::HMAC_SHA256, line.as_bytes()))
            .collect();
        Ok(Self { keys })
    }

    /// The signature of a request at `at` (seconds since the epoch).
    pub fn sign(&self, method: &str, path: &str, chunk_key: &[u8], at: u64) -> String {
        let tag = hmac::sign(&self.keys[0], &signed_bytes(method, path, chunk_key, at));
        hex(tag.as_ref())
    }

    /// Running HMACs over a chunk answer's body, bound to the chunk request
    /// `request` (its body): with the signing key alone (`signing`), else with
    /// every key in force (a reader checks an answer signed with either).
    pub fn body_macs(&self, request: &[u8], signing: bool) -> Vec<hmac::Context> {
        let keys = if signing { &self.keys[..1] } else { &self.keys[..] };
        let bound = signed_bytes(BODY_MAC, "", request, 0);
        keys.iter()
            .map(|key| {
                let mut mac = hmac::Context::with_key(key);
                mac.update(&bound);
                mac
            })
            .collect()
    }

    /// Whether a request's date and signature headers are those of a peer holding
    /// one of our keys, signed within the allowed skew of `now`.
    pub fn verify(
        &self,
        (method, path, chunk_key): (&str, &str, &[u8]),
        date: Option<&str>,
        signature: Option<&str>,
        now: u64,
    ) -> Result<(), PeerAuthError> {
        let (Some(date), Some(signature)) = (date, signature) else {
            return Err(PeerAuthError::Unsigned);
        };
        let at: u64 = date.parse().map_err(|_| PeerAuthError::BadDate)?;
        if at.abs_diff(now) > MAX_SKEW_SECONDS {
            return Err(PeerAuthError::Stale);
        }
        let tag = unhex(signature, 64).ok_or(PeerAuthError::Mismatch)?;
        let data = signed_bytes(method, path, chunk_key, at);
        // aws-lc's verify compares in constant time.
        match self.keys.iter().any(|key| hmac::verify(key, &data, &tag).is_ok()) {
            true => Ok(()),
            false => Err(PeerAuthError::Mismatch),
        }
    }
}

/// The keys in force, replaced when the Secret's file changes (Kubernetes swaps a
/// mounted Secret's files in place): every request signs and verifies with the set
/// current when it is made.
pub struct KeyRing {
    current: std::sync::RwLock<std::sync::Arc<PeerKeys>>,
}

impl KeyRing {
    pub fn new(keys: PeerKeys) -> Self {
        Self {
            current: std::sync::RwLock::new(std::sync::Arc::new(keys)),
        }
    }

    pub fn current(&self) -> std::sync::Arc<PeerKeys> {
        self.current.read().expect("peer keys").clone()
    }

    /// Takes the keys in `text` if they are valid; the last good set stays otherwise
    /// (a Secret caught half-written, an empty file).
    pub fn reload(&self, text: &str) -> Result<(), PeerKeyError> {
        let keys = PeerKeys::from_text(text)?;
        *self.current.write().expect("peer keys") = std::sync::Arc::new(keys);
        Ok(())
    }

    /// Re-reads `path` every `interval` and takes its keys when its contents change
    /// from `loaded` (the text the current keys came from): compared by contents,
    /// not times, since a Secret's files are swapped by a symlink.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        path: std::path::PathBuf,
        interval: std::time::Duration,
        loaded: String,
    ) {
        let mut last = Some(loaded);
        loop {
            tokio::time::sleep(interval).await;
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if last.as_deref() == Some(text.as_str()) {
                continue;
            }
            match self.reload(&text) {
                Ok(()) => tracing::info!(path = %path.display(), "peer keys reloaded"),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "peer keys not reloaded; keeping the last good ones")
                }
            }
            last = Some(text);
        }
    }
}

/// What a chunk answer's body is signed as (in place of a method): no request or
/// other answer can pass for it.
const BODY_MAC: &str = "CHUNK-BODY";

/// Length-prefixed fields, so that no two requests sign the same bytes.
fn signed_bytes(method: &str, path: &str, chunk_key: &[u8], at: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + path.len() + chunk_key.len());
    out.extend_from_slice(b"s3-accel-peer-v1");
    for field in [method.as_bytes(), path.as_bytes(), chunk_key] {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&at.to_be_bytes());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes `text` spells in hex, if it does, and they are at most `max` bytes.
pub(crate) fn unhex(text: &str, max: usize) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 2 * max {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "an-old-region-secret-of-32-bytes-or-more";
    const NEW: &str = "the-new-region-secret-of-32-bytes-or-more";

    fn keys(text: &str) -> PeerKeys {
        PeerKeys::from_text(text).unwrap()
    }

    #[test]
    fn a_peer_with_the_key_is_let_in_and_nobody_else() {
        let ours = keys(NEW);
        let request = ("GET", "/peer/v1/chunk", &b"key"[..]);
        let at = 1_795_000_000;
        let signature = ours.sign("GET", "/peer/v1/chunk", b"key", at);
        let now = at + 5;
        assert_eq!(
            ours.verify(request, Some(&at.to_string()), Some(&signature), now),
            Ok(())
        );
        // Another key, another chunk, another path, a tampered or missing signature.
        let theirs = keys(OLD).sign("GET", "/peer/v1/chunk", b"key", at);
        let date = Some(at.to_string());
        for (request, signature) in [
            (request, theirs.as_str()),
            (("GET", "/peer/v1/chunk", &b"other"[..]), signature.as_str()),
            (("GET", "/peer/v1/hello", &b"key"[..]), signature.as_str()),
            (request, &signature[..62]),
            (request, "zz"),
        ] {
            assert_eq!(
                ours.verify(request, date.as_deref(), Some(signature), now),
                Err(PeerAuthError::Mismatch)
            );
        }
        assert_eq!(
            ours.verify(request, None, Some(&signature), now),
            Err(PeerAuthError::Unsigned)
        );
        assert_eq!(
            ours.verify(request, Some("soon"), Some(&signature), now),
            Err(PeerAuthError::BadDate)
        );
    }

    #[test]
    fn stale_requests_are_refused() {
        let ours = keys(NEW);
        let at = 1_795_000_000u64;
        let signature = ours.sign("GET", "/p", b"k", at);
        let check = |now: u64| ours.verify(("GET", "/p", b"k"), Some(&at.to_string()), Some(&signature), now);
        assert_eq!(check(at + 30), Ok(()));
        assert_eq!(check(at - 30), Ok(()));
        assert_eq!(check(at + 31), Err(PeerAuthError::Stale));
        assert_eq!(check(at - 31), Err(PeerAuthError::Stale));
    }

    #[test]
    fn rotation_accepts_both_keys_and_signs_with_the_first() {
        let rotating = keys(&format!("{NEW}\n{OLD}\n"));
        let at = 1_795_000_000u64;
        let date = at.to_string();
        for signer in [keys(NEW), keys(OLD)] {
            let signature = signer.sign("GET", "/p", b"k", at);
            assert_eq!(
                rotating.verify(("GET", "/p", b"k"), Some(&date), Some(&signature), at),
                Ok(())
            );
        }
        let signed = rotating.sign("GET", "/p", b"k", at);
        assert_eq!(
            keys(NEW).verify(("GET", "/p", b"k"), Some(&date), Some(&signed), at),
            Ok(())
        );
        assert!(keys(OLD)
            .verify(("GET", "/p", b"k"), Some(&date), Some(&signed), at)
            .is_err());
    }

    #[tokio::test]
    async fn rotated_keys_are_taken_from_the_file_and_bad_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, OLD).unwrap();
        let ring = std::sync::Arc::new(KeyRing::new(keys(OLD)));
        let interval = std::time::Duration::from_millis(10);
        let watcher = tokio::spawn(ring.clone().watch(path.clone(), interval, OLD.to_owned()));
        let at = 1_795_000_000u64;
        let signs_with = |ring: &KeyRing, text: &str| {
            let signature = ring.current().sign("GET", "/p", b"k", at);
            keys(text)
                .verify(("GET", "/p", b"k"), Some(&at.to_string()), Some(&signature), at)
                .is_ok()
        };
        assert!(signs_with(&ring, OLD));
        std::fs::write(&path, format!("{NEW}\n{OLD}\n")).unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !signs_with(&ring, NEW) {
            assert!(tokio::time::Instant::now() < deadline, "the new key was never taken");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // A file caught empty keeps the last good keys.
        std::fs::write(&path, "").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(signs_with(&ring, NEW));
        watcher.abort();
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(PeerKeys::from_text(" \n").unwrap_err(), PeerKeyError::Empty);
        assert_eq!(PeerKeys::from_text("short").unwrap_err(), PeerKeyError::TooShort(5));
        assert_eq!(
            PeerKeys::from_text(&format!("{NEW}\n{OLD}\n{NEW}")).unwrap_err(),
            PeerKeyError::TooMany(3)
        );
        assert_eq!(format!("{:?}", keys(NEW)), "PeerKeys(1 keys)", "no key in logs");
    }
}
