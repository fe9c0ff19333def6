//! The peer wire's signatures, both ends. A request is signed by its sender with
//! the region's key and verified by its receiver; an owner's answers (a hello, a
//! chunk) are signed for the request they answer and verified by the asker. Nothing
//! on the network without the key can pass for a node of the region, or replay one
//! kind of message as another.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
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

/// Header of a hello request: a fresh random value the answer must be signed over,
/// so that an answer recorded elsewhere cannot be replayed to this asker.
pub const PEER_NONCE: &str = "x-s3-accel-peer-nonce";

/// The longest hello, cold-gate or learned answer read (an object's metadata, a hello).
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// A fresh nonce for a hello request.
pub fn nonce() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

/// Signs a hello's answer (`hello`, as sent) to a request that carried `nonce`.
pub fn sign_hello(headers: &mut HeaderMap, keys: &PeerKeys, nonce: Option<&str>, hello: &[u8]) {
    sign(
        headers,
        keys,
        (HELLO_REPLY, HELLO_PATH, &hello_bytes(nonce, hello)),
        now(),
    );
}

/// Whether a hello's answer is signed by a node holding the region's key, for the
/// `nonce` this node sent: only such a node may claim a name and a share of the
/// keys, and only now.
pub fn verify_hello(headers: &HeaderMap, keys: &PeerKeys, nonce: &str, hello: &[u8]) -> Result<(), PeerAuthError> {
    verify(
        headers,
        keys,
        (HELLO_REPLY, HELLO_PATH, &hello_bytes(Some(nonce), hello)),
    )
}

/// What a hello's answer is signed over: the nonce asked with (when one was), then
/// the hello. A request without one (an older asker) gets the hello alone.
fn hello_bytes(nonce: Option<&str>, hello: &[u8]) -> Vec<u8> {
    let mut signed = match nonce {
        Some(nonce) => format!("nonce\t{nonce}\n").into_bytes(),
        None => Vec::new(),
    };
    signed.extend_from_slice(hello);
    signed
}

/// Signs an owner's whole answer (`status`, `body`) to the request to `path` with
/// body `request`: bound to that request, so that no other answer passes for it.
pub fn sign_answer(headers: &mut HeaderMap, keys: &PeerKeys, path: &str, request: &[u8], answer: (u16, &[u8])) {
    sign(headers, keys, (ANSWER, path, &answer_bytes(request, answer)), now());
}

/// Whether an owner's whole answer (`status`, `body`) to the request to `path` with
/// body `request` is signed for it by a node holding the region's key.
pub fn verify_answer(
    headers: &HeaderMap,
    keys: &PeerKeys,
    path: &str,
    request: &[u8],
    answer: (u16, &[u8]),
) -> Result<(), PeerAuthError> {
    verify(headers, keys, (ANSWER, path, &answer_bytes(request, answer)))
}

/// What a whole answer is signed as (in place of a method).
const ANSWER: &str = "ANSWER";

fn answer_bytes(request: &[u8], (status, body): (u16, &[u8])) -> Vec<u8> {
    let mut signed = format!("request\t{}\n", request.len()).into_bytes();
    signed.extend_from_slice(request);
    signed.extend_from_slice(format!("status\t{status}\nbody\t{}\n", body.len()).as_bytes());
    signed.extend_from_slice(body);
    signed
}

/// Signs an answer to the chunk request `request` (its body, as received at `at`),
/// of the length its Content-Length declares (the chunk, then its [`BodyTag`]): only
/// a node holding the region's key can answer one, and only this one. An answer
/// without a length is not signed.
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
/// for that request and `length` bytes (the chunk and its tag) by a node holding
/// the region's key.
pub fn verify_chunk(headers: &HeaderMap, keys: &PeerKeys, request: &[u8], length: u64) -> Result<(), PeerAuthError> {
    verify(headers, keys, (CHUNK_REPLY, CHUNK_PATH, &chunk_reply(request, length)))
}

/// Bytes of each tag in an owner's chunk answer.
pub const BODY_TAG_LEN: usize = 32;
/// An owner's chunk answer is the chunk in blocks of this many bytes (the last one
/// shorter), each followed by its tag: a reader checks and uses one block while
/// the next arrives, rather than waiting for the whole chunk.
pub const TAG_BLOCK: u64 = 1 << 20;

/// The length of an owner's answer carrying a `length`-byte chunk: the chunk and,
/// when `tagged` (no TLS on the peer port: the tags are what authenticates the
/// bytes), one tag per block.
pub fn tagged_length(length: u64, tagged: bool) -> u64 {
    match tagged {
        true => length + length.div_ceil(TAG_BLOCK) * BODY_TAG_LEN as u64,
        false => length,
    }
}

/// The tags in an owner's chunk answer: HMACs of each block of the chunk, bound to
/// the request they answer and to the block's place in the chunk, computed as the
/// bytes go. The answer's signature covers its head; the tags, its bytes: a reader
/// uses no byte of a block before its tag checks.
pub struct BodyTag {
    /// Bound to the request, before any block.
    bound: Vec<aws_lc_rs::hmac::Context>,
    /// The block under way.
    block: Vec<aws_lc_rs::hmac::Context>,
    index: u64,
}

impl BodyTag {
    /// The owner's tags of its answer to `request` (the chunk request's body).
    pub fn signing(keys: &PeerKeys, request: &[u8]) -> Self {
        Self::of(keys.body_macs(request, true))
    }

    /// The reader's check of an answer to `request`, with every key in force.
    pub fn checking(keys: &PeerKeys, request: &[u8]) -> Self {
        Self::of(keys.body_macs(request, false))
    }

    fn of(bound: Vec<aws_lc_rs::hmac::Context>) -> Self {
        let mut tag = Self {
            bound,
            block: Vec::new(),
            index: 0,
        };
        tag.start_block();
        tag
    }

    fn start_block(&mut self) {
        self.block = self
            .bound
            .iter()
            .map(|mac| {
                let mut mac = mac.clone();
                mac.update(&self.index.to_be_bytes());
                mac
            })
            .collect();
        self.index += 1;
    }

    /// More bytes of the block under way.
    pub fn update(&mut self, bytes: &[u8]) {
        for mac in &mut self.block {
            mac.update(bytes);
        }
    }

    /// The block's tag, as the owner sends it; the next block starts.
    pub fn tag(&mut self) -> Bytes {
        let block = std::mem::take(&mut self.block);
        self.start_block();
        let mac = block.into_iter().next().expect("a signing key");
        Bytes::copy_from_slice(mac.sign().as_ref())
    }

    /// Whether `tag` is the block's under one of the keys (compared in constant
    /// time); the next block starts.
    pub fn matches(&mut self, tag: &[u8]) -> bool {
        let block = std::mem::take(&mut self.block);
        self.start_block();
        block
            .into_iter()
            .any(|mac| aws_lc_rs::constant_time::verify_slices_are_equal(mac.sign().as_ref(), tag).is_ok())
    }
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
            verify_hello(&headers, &region, "n", b"request").is_err(),
            "a chunk answer is no hello"
        );
        assert!(
            verify_request(&headers, &region, "POST", CHUNK_PATH, b"request").is_err(),
            "an answer is no request"
        );
        // A body's tag checks for its bytes and its request, under either key.
        let retiring =
            keys("a-region-key-long-enough-for-hmac-0123456789\nanother-region-key-long-enough-for-hmac-0123456789");
        let mut owner = BodyTag::signing(&other, b"request");
        owner.update(b"chunk ");
        owner.update(b"bytes");
        let signed = owner.tag();
        owner.update(b"second block");
        let second = owner.tag();
        let checks = |request: &[u8], body: &[u8]| {
            let mut check = BodyTag::checking(&retiring, request);
            check.update(body);
            check.matches(&signed)
        };
        assert!(checks(b"request", b"chunk bytes"), "framed differently, the same bytes");
        assert!(!checks(b"request", b"chunk bytez"), "another byte");
        assert!(!checks(b"requesT", b"chunk bytes"), "another request");
        let mut reader = BodyTag::checking(&retiring, b"request");
        reader.update(b"second block");
        assert!(!reader.matches(&second), "a block in another place");
        let mut reader = BodyTag::checking(&retiring, b"request");
        reader.update(b"chunk bytes");
        assert!(reader.matches(&signed));
        reader.update(b"second block");
        assert!(reader.matches(&second), "the blocks in order");
        let mut elsewhere = BodyTag::checking(&region, b"request");
        elsewhere.update(b"chunk bytes");
        assert!(!elsewhere.matches(&signed), "another region");
        let mut request = HeaderMap::new();
        sign_request(&mut request, &region, "POST", CHUNK_PATH, b"body");
        assert_eq!(verify_request(&request, &region, "POST", CHUNK_PATH, b"body"), Ok(()));
        assert_eq!(
            verify_request(&HeaderMap::new(), &region, "POST", CHUNK_PATH, b"body"),
            Err(PeerAuthError::Unsigned)
        );
    }

    #[test]
    fn whole_answers_and_hellos_are_bound_to_what_was_asked() {
        let region = keys("a-region-key-long-enough-for-hmac-0123456789");
        let mut headers = HeaderMap::new();
        sign_answer(&mut headers, &region, "/peer/v1/cold", b"note", (200, b"meta"));
        assert_eq!(
            verify_answer(&headers, &region, "/peer/v1/cold", b"note", (200, b"meta")),
            Ok(())
        );
        for (path, request, answer, why) in [
            ("/peer/v1/cold", &b"note"[..], (200, &b"meta2"[..]), "another body"),
            ("/peer/v1/cold", &b"note"[..], (202, &b"meta"[..]), "another status"),
            ("/peer/v1/cold", &b"other"[..], (200, &b"meta"[..]), "another request"),
            ("/peer/v1/learned", &b"note"[..], (200, &b"meta"[..]), "another path"),
            // The split between request and body is part of what is signed.
            ("/peer/v1/cold", &b"notem"[..], (200, &b"eta"[..]), "bytes moved across"),
        ] {
            assert!(
                verify_answer(&headers, &region, path, request, answer).is_err(),
                "{why}"
            );
        }
        let mut hello = HeaderMap::new();
        sign_hello(&mut hello, &region, Some("abc"), b"node\tn\n");
        assert_eq!(verify_hello(&hello, &region, "abc", b"node\tn\n"), Ok(()));
        assert!(
            verify_hello(&hello, &region, "abd", b"node\tn\n").is_err(),
            "a replay to another asker"
        );
        let mut old = HeaderMap::new();
        sign_hello(&mut old, &region, None, b"node\tn\n");
        assert!(verify_hello(&old, &region, "abc", b"node\tn\n").is_err(), "no nonce");
    }
}
