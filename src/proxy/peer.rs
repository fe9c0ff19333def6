//! The peer listener's requests: who this node is, and the chunks it owns, served
//! from its tiers or filled from the origin once for the whole region. A peer's
//! request is never passed on to another peer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};

use super::fill::{Fill, FillAuth, FillError};
use super::Proxy;
use crate::body::{BoxError, ProxyBody};
use crate::cache::{ObjectId, ObjectMeta};
use crate::herd::Held;
use crate::peers::auth::{PeerKeys, PEER_DATE, PEER_SIGNATURE};
use crate::peers::protocol::{
    chunk_reply, ChunkRequest, ObjectNote, Signer, CHUNK_PATH, CHUNK_REPLY, COLD_PATH, HELLO_PATH, HELLO_REPLY,
    LEARNED_PATH, MAX_REQUEST_BYTES, PEER_SOURCE,
};
use crate::{s3, telemetry};

fn status(status: StatusCode) -> Response<ProxyBody> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

impl Proxy {
    /// Answers one request on the peer listener. Every request must be signed with
    /// the region's key; an unsigned or stale one gets 403 and nothing else.
    pub async fn handle_peer<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(peers) = &self.peers else {
            return status(StatusCode::NOT_FOUND);
        };
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
        };
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let path = parts.uri.path();
        let signed = (parts.method.as_str(), path, &body[..]);
        if let Err(refused) = peers
            .keys
            .current()
            .verify(signed, header(PEER_DATE), header(PEER_SIGNATURE), now)
        {
            tracing::warn!(path, reason = %refused, "peer request refused");
            telemetry::peer_request("owner", "refused");
            return status(StatusCode::FORBIDDEN);
        }
        match (&parts.method, path) {
            (&Method::GET, HELLO_PATH) => {
                // The answer is signed too: only a node holding the region's key can
                // claim a name and a share of the keys.
                let hello = peers.hello.encode();
                let signature = peers
                    .keys
                    .current()
                    .sign(HELLO_REPLY, HELLO_PATH, hello.as_bytes(), now);
                let mut response = Response::new(
                    Full::new(Bytes::from(hello))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                );
                let headers = response.headers_mut();
                headers.insert(PEER_DATE, HeaderValue::from(now));
                if let Ok(signature) = HeaderValue::from_str(&signature) {
                    headers.insert(PEER_SIGNATURE, signature);
                }
                response
            }
            (&Method::POST, COLD_PATH) => match ObjectNote::decode(&body) {
                Ok(note) => self.serve_cold(note.object).await,
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, LEARNED_PATH) => match ObjectNote::decode(&body) {
                Ok(note) => self.learned(note),
                Err(_) => status(StatusCode::BAD_REQUEST),
            },
            (&Method::POST, CHUNK_PATH) => match ChunkRequest::decode(&body) {
                Ok(chunk) => {
                    let mut response = self.serve_chunk(chunk).await;
                    sign_chunk_reply(&mut response, &peers.keys.current(), &body, now);
                    response
                }
                Err(error) => {
                    tracing::warn!(%error, "a peer's chunk request");
                    status(StatusCode::BAD_REQUEST)
                }
            },
            _ => status(StatusCode::NOT_FOUND),
        }
    }

    /// Another node is about to probe `object` cold: this node holds the object's
    /// gate. It answers with the metadata when it knows it (once any probe under way
    /// here ends), or gives the asker the turn and holds it for it until it tells
    /// what it learned (or, silent, for as long as a probe may take).
    async fn serve_cold(&self, object: ObjectId) -> Response<ProxyBody> {
        let known = |meta: Option<ObjectMeta>| match meta {
            Some(meta) => Response::new(
                Full::new(Bytes::from(meta.to_bytes()))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            None => status(StatusCode::NOT_FOUND),
        };
        match self.herd.hold(&self.cache, &object).await {
            Held::Known(meta) => known(Some(*meta)),
            Held::Yours => status(StatusCode::ACCEPTED),
            Held::Unknown => known(None),
        }
    }

    /// What the probe of a node given the turn learned: the waiters here (and the
    /// nodes they answer for) go on with it.
    fn learned(&self, note: ObjectNote) -> Response<ProxyBody> {
        let meta = note.meta.as_deref().and_then(ObjectMeta::from_bytes);
        self.herd.told(&self.cache, &note.object, meta);
        status(StatusCode::OK)
    }

    /// A chunk this node owns (or is next in line for), from its tiers or one fill.
    async fn serve_chunk(&self, chunk: ChunkRequest) -> Response<ProxyBody> {
        if chunk.chunk_size != self.cache.chunk_size() {
            // Another chunk size makes other keys: the reader fills for itself.
            return status(StatusCode::CONFLICT);
        }
        let Some(region) = self
            .router
            .regions()
            .iter()
            .find(|region| region.client.origin().to_string() == chunk.object.origin)
        else {
            return status(StatusCode::NOT_FOUND);
        };
        let auth = match &chunk.signer {
            Signer::Proxy { target, region } => match (
                self.credentials.as_ref().filter(|c| c.current().is_some()),
                PathAndQuery::try_from(target.as_str()),
            ) {
                (Some(credentials), Ok(target)) => FillAuth::Proxy {
                    target,
                    credentials: credentials.clone(),
                    region: region.clone(),
                },
                _ => return status(StatusCode::FORBIDDEN),
            },
            Signer::Client { target, headers } => {
                match (PathAndQuery::try_from(target.as_str()), header_map(headers)) {
                    (Ok(target), Some(headers)) => FillAuth::Client { target, headers },
                    _ => return status(StatusCode::BAD_REQUEST),
                }
            }
        };
        let checksums = header_map(&chunk.checksums).unwrap_or_default();
        let fill = Arc::new(Fill {
            region: region.clone(),
            authority: chunk.authority.clone(),
            auth,
            etag: chunk.etag.clone(),
            size: chunk.size,
            chunk_size: chunk.chunk_size,
            permits: self.fill_permits.clone(),
            crc: s3::full_object_crc(&checksums),
        });
        let index = chunk.index;
        let mut read = self
            .cache
            .chunk(chunk.key(), false, move |sink| fill.fetch(index, sink, 0))
            .await;
        let source = read.source;
        // The first bytes before the head: a fill that fails outright is a clean 502,
        // and the reader goes on to the next in line.
        let first = match read.next().await {
            Some(Ok((0, first))) => first,
            // The object changed at the origin: the reader relays that verdict.
            Some(Err(error))
                if error
                    .fill_error::<FillError>()
                    .is_some_and(|e| matches!(e, FillError::Changed)) =>
            {
                return status(StatusCode::PRECONDITION_FAILED);
            }
            _ => {
                telemetry::peer_request("owner", "failed");
                return status(StatusCode::BAD_GATEWAY);
            }
        };
        telemetry::peer_request("owner", "ok");
        let length = chunk.length();
        let body = super::respond::first_frames(first)
            .scan(0u64, |at, bytes| {
                let piece = (*at, bytes);
                *at += piece.1.len() as u64;
                std::future::ready(Some(Ok::<_, BoxError>(piece)))
            })
            .chain(stream::unfold(read, |mut read| async move {
                let next = read.next().await?;
                Some((next.map_err(|e| -> BoxError { Box::new(e) }), read))
            }))
            .scan(0u64, move |sent, piece| {
                // The pieces of one read are contiguous and end at the chunk's end; a
                // gap or an overrun would be a bug, and is a cut, never wrong bytes.
                let piece = piece.and_then(|(at, bytes): (u64, Bytes)| {
                    if at != *sent || at + bytes.len() as u64 > length {
                        return Err("a peer chunk's pieces do not line up".into());
                    }
                    *sent += bytes.len() as u64;
                    telemetry::peer_bytes("out", bytes.len() as u64);
                    Ok(Frame::data(bytes))
                });
                std::future::ready(Some(piece))
            });
        let mut response = Response::new(StreamBody::new(body).boxed_unsync());
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
            .headers_mut()
            .insert(PEER_SOURCE, HeaderValue::from_static(source.as_str()));
        response
    }
}

/// Signs an answer to a chunk request: only a node holding the region's key can
/// answer one, and only this one.
fn sign_chunk_reply(response: &mut Response<ProxyBody>, keys: &PeerKeys, request: &[u8], now: u64) {
    let Some(length) = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let signature = keys.sign(CHUNK_REPLY, CHUNK_PATH, &chunk_reply(request, length), now);
    let headers = response.headers_mut();
    headers.insert(PEER_DATE, HeaderValue::from(now));
    if let Ok(signature) = HeaderValue::from_str(&signature) {
        headers.insert(PEER_SIGNATURE, signature);
    }
}

fn header_map(pairs: &[(String, String)]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        );
    }
    Some(headers)
}

/// What a reader tells an owner about who may sign its fill: `None` when the
/// signer cannot travel (a header value that is not text).
pub fn signer(auth: &FillAuth) -> Option<Signer> {
    match auth {
        FillAuth::Proxy { target, region, .. } => Some(Signer::Proxy {
            target: target.as_str().to_owned(),
            region: region.clone(),
        }),
        FillAuth::Client { target, headers } => Some(Signer::Client {
            target: target.as_str().to_owned(),
            headers: headers
                .iter()
                .filter(|(name, _)| *name != header::HOST)
                .map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
                .collect::<Option<_>>()?,
        }),
    }
}
