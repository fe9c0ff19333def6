//! The load client: S3 GETs and HEADs signed as boto3 signs them (SigV4 in the
//! Authorization header, every header signed, Range and If-Match included), each
//! response timed and checked byte for byte against the origin's content.

use std::collections::HashMap;
use std::hash::Hasher;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use s3_accel_testkit::{sign_request, Credentials, Signing};
use twox_hash::XxHash3_64;

/// An object as the origin holds it: where, and what it must read back as.
pub struct Object {
    /// The request path, `/bucket/key`.
    pub path: String,
    pub data: Bytes,
    /// xxHash3 of byte ranges already asked for, so each is hashed once.
    hashes: Mutex<HashMap<(usize, usize), u64>>,
}

impl Object {
    pub fn new(path: String, data: Bytes) -> Self {
        Self {
            path,
            data,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn hash_of(&self, range: Range<usize>) -> u64 {
        let key = (range.start, range.end);
        if let Some(hash) = self.hashes.lock().unwrap().get(&key) {
            return *hash;
        }
        let hash = XxHash3_64::oneshot(&self.data[range]);
        self.hashes.lock().unwrap().insert(key, hash);
        hash
    }
}

/// One request of a workload.
pub struct Get<'a> {
    pub object: &'a Object,
    pub head: bool,
    /// Inclusive byte range, as `Range: bytes=first-last` says it.
    pub range: Option<(u64, u64)>,
    pub if_match: Option<&'a str>,
    /// Asks s3-accel for background priority, as `s3-accel prefetch` does (an
    /// unsigned header for the accelerator only).
    pub background: bool,
}

impl<'a> Get<'a> {
    pub fn full(object: &'a Object) -> Self {
        Self {
            object,
            head: false,
            range: None,
            if_match: None,
            background: false,
        }
    }

    pub fn head(object: &'a Object) -> Self {
        Self {
            head: true,
            ..Self::full(object)
        }
    }
}

/// Why a response did not count as correct.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// An unexpected status code.
    Status(u16),
    /// The connection failed or the body broke off.
    Transport,
    /// A complete-looking body whose bytes differ from the origin's.
    Corrupt,
}

impl Failure {
    /// The failure its `Display` names (a result file's key); anything else is a
    /// broken transfer.
    pub fn parse(text: &str) -> Self {
        match text {
            "WRONG BYTES" => Failure::Corrupt,
            _ => match text.strip_prefix("HTTP ").and_then(|c| c.parse().ok()) {
                Some(code) => Failure::Status(code),
                None => Failure::Transport,
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::Transport => f.write_str("broken"),
            Failure::Corrupt => f.write_str("WRONG BYTES"),
        }
    }
}

/// What one request measured.
#[derive(Debug, Clone)]
pub struct Sample {
    pub outcome: Result<(), Failure>,
    /// Body bytes received.
    pub bytes: u64,
    /// Until the first body byte (until the head, for a HEAD).
    pub ttfb: Duration,
    pub latency: Duration,
    /// Whether the target answered from its cache, when it says so.
    pub hit: Option<bool>,
    pub etag: Option<String>,
}

impl Sample {
    /// A request not answered yet: a broken transfer until it is.
    pub fn pending() -> Self {
        Self {
            outcome: Err(Failure::Transport),
            bytes: 0,
            ttfb: Duration::ZERO,
            latency: Duration::ZERO,
            hit: None,
            etag: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
    signing: Signing,
    /// With `--presigned`: the presigned URL of each (target, path), made once and
    /// sent again byte for byte, as a job handed a list of URLs does.
    presigned: Option<std::sync::Arc<PresignedUrls>>,
}

/// Presigned request-targets by (target address, object path), with when each was made.
type PresignedUrls = Mutex<HashMap<(SocketAddr, String), (String, Instant)>>;

/// A presigned URL is made again after this long (the test signer's URLs live 300 s).
const PRESIGNED_REUSE: Duration = Duration::from_secs(240);

impl Client {
    /// A client that signs as boto3 does, or (`presigned`) sends presigned URLs.
    pub fn new(credentials: Credentials, presigned: bool) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        Self {
            http,
            presigned: presigned.then(Default::default),
            signing: match presigned {
                true => Signing::Presigned(credentials),
                false => Signing::Header(credentials),
            },
        }
    }

    pub async fn send(&self, address: SocketAddr, get: &Get<'_>) -> Sample {
        let started = Instant::now();
        let mut sample = Sample::pending();
        let request = self.request(address, get);
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, path = get.object.path, "request failed");
                sample.latency = started.elapsed();
                return sample;
            }
        };
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        sample.hit = header("x-s3-accel-cache")
            .map(|v| v.starts_with("hit"))
            .or_else(|| header("x-cache-status").map(|v| v == "HIT"));
        sample.etag = header("etag").map(str::to_owned);
        let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let status = response.status();
        let expected_status = match (get.head, get.range) {
            (false, Some(_)) => StatusCode::PARTIAL_CONTENT,
            _ => StatusCode::OK,
        };
        let mut body = response.into_body();
        let mut hasher = XxHash3_64::new();
        let mut broken = false;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        if sample.bytes == 0 {
                            sample.ttfb = started.elapsed();
                        }
                        sample.bytes += data.len() as u64;
                        hasher.write(data);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, path = get.object.path, "body broke off");
                    broken = true;
                    break;
                }
            }
        }
        sample.latency = started.elapsed();
        if sample.bytes == 0 {
            sample.ttfb = sample.latency;
        }
        let data = &get.object.data;
        let expected = match get.range {
            Some((first, last)) => first as usize..(last as usize + 1).min(data.len()),
            None => 0..data.len(),
        };
        sample.outcome = if broken {
            Err(Failure::Transport)
        } else if status != expected_status {
            Err(Failure::Status(status.as_u16()))
        } else if get.head {
            match length == Some(data.len() as u64) && sample.bytes == 0 {
                true => Ok(()),
                false => Err(Failure::Corrupt),
            }
        } else if sample.bytes == expected.len() as u64 && hasher.finish() == get.object.hash_of(expected) {
            Ok(())
        } else {
            Err(Failure::Corrupt)
        };
        sample
    }

    fn request(&self, address: SocketAddr, get: &Get<'_>) -> Request<Empty<Bytes>> {
        if let (Some(urls), false) = (&self.presigned, get.head) {
            return self.presigned_request(urls, address, get);
        }
        let method = if get.head { Method::HEAD } else { Method::GET };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{address}{}", get.object.path))
            .header("host", address.to_string());
        if let Some((first, last)) = get.range {
            request = request.header("range", format!("bytes={first}-{last}"));
        }
        if let Some(etag) = get.if_match {
            request = request.header("if-match", etag);
        }
        if !get.head {
            // botocore ≥ 1.36 asks for checksums on every GetObject, signed.
            request = request.header("x-amz-checksum-mode", "ENABLED");
        }
        let mut request = request.body(()).expect("a valid request");
        sign_request(&mut request, &self.signing);
        if get.background {
            let background = http::HeaderValue::from_static("background");
            request
                .headers_mut()
                .insert(s3_accel::fetch::PRIORITY_HEADER, background);
        }
        request.map(|()| Empty::new())
    }

    /// A GET of the object's presigned URL (signing `host` only; `Range` and
    /// `If-Match` ride unsigned, as they may on a presigned URL).
    fn presigned_request(&self, urls: &PresignedUrls, address: SocketAddr, get: &Get<'_>) -> Request<Empty<Bytes>> {
        let key = (address, get.object.path.clone());
        let mut urls = urls.lock().unwrap();
        let target = match urls.get(&key) {
            Some((target, made)) if made.elapsed() < PRESIGNED_REUSE => target.clone(),
            _ => {
                let mut request = Request::builder()
                    .uri(format!("http://{address}{}", get.object.path))
                    .header("host", address.to_string())
                    .body(())
                    .expect("a valid request");
                sign_request(&mut request, &self.signing);
                let target = request.uri().path_and_query().expect("a path").to_string();
                urls.insert(key, (target.clone(), Instant::now()));
                target
            }
        };
        drop(urls);
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(format!("http://{address}{target}"))
            .header("host", address.to_string());
        if let Some((first, last)) = get.range {
            request = request.header("range", format!("bytes={first}-{last}"));
        }
        if let Some(etag) = get.if_match {
            request = request.header("if-match", etag);
        }
        request.body(Empty::new()).expect("a valid request")
    }
}
