//! The peer wire's signatures, both ends. A request is signed by its sender with
//! the region's key and verified by its receiver; an owner's answers (a hello, a
//! chunk) are signed for the request they answer and verified by the asker. Nothing
//! on the network without the key can pass for a node of the region, or replay one
//! kind of message as another.

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

use super::auth::{PeerAuthError, PeerKeys, PEER_DATE, PEER_SIGNATURE};
use super::protocol::{chunk_reply, CHUNK_PATH, CHUNK_REPLY, HELLO_PATH, HELLO_REPLY};

/// Seconds since the epoch: what signatures are dated with.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Signs a request of `method` to `path` with `body`, dated now.
pub fn sign_request(headers: &mut HeaderMap, keys: &PeerKeys, method: &str, path: &str, body: &[u8]) {
    sign(headers, keys, (method, path, body), now());
}

/// Whether a request's headers carry a signature of its `method`, `path` and
/// `body` by a node holding the region's key, dated within the allowed skew.
pub fn verify_request(
    headers: &HeaderMap,
    keys: &PeerKeys,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), PeerAuthError> {
    verify(headers, keys, (method, path, body))
}

/// Signs a hello's answer (`hello`, as sent).
pub fn sign_hello(headers: &mut HeaderMap, keys: &PeerKeys, hello: &[u8]) {
    sign(headers, keys, (HELLO_REPLY, HELLO_PATH, hello), now());
}

/// Whether a hello's answer is signed by a node holding the region's key: only such
/// a node may claim a name and a share of the keys.
pub fn verify_hello(headers: &HeaderMap, keys: &PeerKeys, hello: &[u8]) -> Result<(), PeerAuthError> {
    verify(headers, keys, (HELLO_REPLY, HELLO_PATH, hello))
}

/// Signs an answer to the chunk request `request` (its body, as received at `at`),
/// of the length its Content-Length declares: only a node holding the region's key
/// can answer one, and only this one. An answer without a length is not signed.
/// Dated when the request came: an answer that took longer than the allowed skew
/// to start (a slow fill) reads as stale, and the reader fills the chunk itself.
pub fn sign_chunk(headers: &mut HeaderMap, keys: &PeerKeys, request: &[u8], at: u64) {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length {
        sign(
            headers,
            keys,
            (CHUNK_REPLY, CHUNK_PATH, &chunk_reply(request, length)),
            at,
        );
    }
}

/// Whether an answer to the chunk request `request` (its body, as sent) is signed
/// for that request and `length` bytes by a node holding the region's key.
pub fn verify_chunk(headers: &HeaderMap, keys: &PeerKeys, request: &[u8], length: u64) -> Result<(), PeerAuthError> {
    verify(headers, keys, (CHUNK_REPLY, CHUNK_PATH, &chunk_reply(request, length)))
}

fn sign(headers: &mut HeaderMap, keys: &PeerKeys, (method, path, bytes): (&str, &str, &[u8]), at: u64) {
    let signature = keys.sign(method, path, bytes, at);
    headers.insert(PEER_DATE, HeaderValue::from(at));
    if let Ok(signature) = HeaderValue::from_str(&signature) {
        headers.insert(PEER_SIGNATURE, signature);
    }
}

fn verify(headers: &HeaderMap, keys: &PeerKeys, signed: (&str, &str, &[u8])) -> Result<(), PeerAuthError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    keys.verify(signed, header(PEER_DATE), header(PEER_SIGNATURE), now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> PeerKeys {
        PeerKeys::from_text(text).unwrap()
    }

    #[test]
    fn answers_verify_only_for_their_request_and_kind() {
        let region = keys("a-region-key-long-enough-for-hmac-0123456789");
        let other = keys("another-region-key-long-enough-for-hmac-0123456789");
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(100u64));
        sign_chunk(&mut headers, &region, b"request", now());
        assert_eq!(verify_chunk(&headers, &region, b"request", 100), Ok(()));
        assert!(
            verify_chunk(&headers, &region, b"request", 99).is_err(),
            "another length"
        );
        assert!(
            verify_chunk(&headers, &region, b"another", 100).is_err(),
            "another request"
        );
        assert!(
            verify_chunk(&headers, &other, b"request", 100).is_err(),
            "another region"
        );
        assert!(
            verify_hello(&headers, &region, b"request").is_err(),
            "a chunk answer is no hello"
        );
        assert!(
            verify_request(&headers, &region, "POST", CHUNK_PATH, b"request").is_err(),
            "an answer is no request"
        );
        let mut request = HeaderMap::new();
        sign_request(&mut request, &region, "POST", CHUNK_PATH, b"body");
        assert_eq!(verify_request(&request, &region, "POST", CHUNK_PATH, b"body"), Ok(()));
        assert_eq!(
            verify_request(&HeaderMap::new(), &region, "POST", CHUNK_PATH, b"body"),
            Err(PeerAuthError::Unsigned)
        );
    }
}
