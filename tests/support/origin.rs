//! A real S3 origin in-process: s3s-fs with SigV4 authentication, behind a thin
//! layer that counts what the origin is asked and what body bytes it sends, can
//! answer conditionals as production origins do, and can cut fills on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3s::service::S3Service;
use tokio::net::TcpListener;

use super::client::{Call, Reply, TestClient};
use super::signing::{Credentials, Signing};

pub const ACCESS_KEY: &str = "AKIATESTORIGIN";
pub const SECRET_KEY: &str = "origin-secret-key-for-tests";

/// Bytes a cut fill sends before it breaks.
pub const CUT_AFTER: usize = 100 << 10;

/// What the origin saw, and the faults it is told to inject.
#[derive(Default)]
pub struct OriginStats {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Ranged GETs with If-Match: the proxy's chunk fills.
    pub fills: AtomicU64,
    /// The next this-many fills are cut after `CUT_AFTER` body bytes.
    pub cut_fills: AtomicU64,
    /// `METHOD target` of every request, in arrival order.
    pub log: Mutex<Vec<String>>,
}

impl OriginStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    pub fn fills(&self) -> u64 {
        self.fills.load(Ordering::SeqCst)
    }
}

/// How the origin behaves.
#[derive(Clone, Copy, Default)]
pub struct OriginOptions<'a> {
    /// Domains for virtual-hosted-style requests.
    pub domains: &'a [&'a str],
    /// Answer If-None-Match (304) and If-Match (412) as AWS, RGW and MinIO do;
    /// s3s-fs alone ignores both.
    pub honor_conditionals: bool,
}

pub struct TestOrigin {
    pub address: SocketAddr,
    pub stats: Arc<OriginStats>,
    pub client: TestClient,
    _root: tempfile::TempDir,
}

impl TestOrigin {
    /// s3s-fs as it is (ignoring conditionals), `domains` enabling virtual-hosted style.
    pub async fn start(domains: &[&str]) -> Self {
        Self::start_with(OriginOptions {
            domains,
            honor_conditionals: false,
        })
        .await
    }

    /// An origin that honors conditional requests, as production origins do.
    pub async fn honoring() -> Self {
        Self::start_with(OriginOptions {
            domains: &[],
            honor_conditionals: true,
        })
        .await
    }

    pub async fn start_with(options: OriginOptions<'_>) -> Self {
        let root = tempfile::tempdir().unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        if !options.domains.is_empty() {
            builder.set_host(PortlessHost(s3s::host::MultiDomain::new(options.domains).unwrap()));
        }
        let s3 = builder.build();
        let stats = Arc::new(OriginStats::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, s3, stats.clone(), options.honor_conditionals));
        Self {
            address,
            stats,
            client: TestClient::default(),
            _root: root,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn credentials() -> Credentials {
        Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    pub fn signing() -> Signing {
        Signing::Header(Self::credentials())
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let reply = self
            .send(&Call::new(Method::PUT, &format!("/{bucket}"), &Self::signing()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "create bucket {bucket}: {}", reply.text());
    }

    /// Stores an object with a signed PUT; `raw_key` is already percent-encoded.
    pub async fn put(&self, bucket: &str, raw_key: &str, data: &[u8], headers: &[(&str, &str)]) {
        let request = Request::put(format!("http://{}/{bucket}/{raw_key}", self.address))
            .header("host", self.address.to_string())
            .header("content-length", data.len().to_string());
        let request = headers.iter().fold(request, |r, (k, v)| r.header(*k, *v));
        let mut request = request.body(()).unwrap();
        super::signing::sign_request(&mut request, &Self::signing());
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let request = request.map(|()| http_body_util::Full::new(Bytes::copy_from_slice(data)));
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "put {bucket}/{raw_key}");
    }

    pub async fn send(&self, call: &Call) -> Reply {
        self.client.send(self.address, call).await.unwrap()
    }
}

/// Matches virtual-hosted domains without the port, as RGW and MinIO do
/// (s3s compares the whole Host, port included).
struct PortlessHost(s3s::host::MultiDomain);

impl s3s::host::S3Host for PortlessHost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
        self.0.parse_host_header(name)
    }
}

async fn serve(listener: TcpListener, s3: S3Service, stats: Arc<OriginStats>, honor_conditionals: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let s3 = s3.clone();
        let stats = stats.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let (s3, stats) = (s3.clone(), stats.clone());
            async move { Ok::<_, Infallible>(answer(&s3, stats, request, honor_conditionals).await) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    s3: &S3Service,
    stats: Arc<OriginStats>,
    request: Request<Incoming>,
    honor: bool,
) -> Response<CountingBody> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    stats.log.lock().unwrap().push(format!("{} {target}", request.method()));
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (if_match, if_none_match) = (header("if-match"), header("if-none-match"));
    let mut cut_after = None;
    if if_match.is_some() && request.headers().contains_key("range") {
        stats.fills.fetch_add(1, Ordering::SeqCst);
        if stats
            .cut_fills
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cut_after = Some(CUT_AFTER);
        }
    }
    let response = Service::call(s3, request)
        .await
        .unwrap_or_else(|e| panic!("s3s failed: {e:?}"));
    let response = if honor {
        apply_conditionals(response, if_match, if_none_match)
    } else {
        response
    };
    response.map(|inner| CountingBody {
        inner,
        stats,
        sent: 0,
        cut_after,
    })
}

/// S3's order: If-Match false → 412; else If-None-Match matching → 304. Applied
/// after s3s has authenticated the request, so denials stay denials.
fn apply_conditionals(
    response: Response<s3s::Body>,
    if_match: Option<String>,
    if_none_match: Option<String>,
) -> Response<s3s::Body> {
    if !matches!(response.status().as_u16(), 200 | 206) {
        return response;
    }
    let etag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let matches = |condition: &str| condition.split(',').any(|c| c.trim() == "*" || c.trim() == etag);
    let status = match (if_match, if_none_match) {
        (Some(condition), _) if !matches(&condition) => StatusCode::PRECONDITION_FAILED,
        (_, Some(condition)) if matches(&condition) => StatusCode::NOT_MODIFIED,
        _ => return response,
    };
    let mut answer = Response::new(s3s::Body::empty());
    *answer.status_mut() = status;
    answer.headers_mut().insert("etag", etag.parse().unwrap());
    answer
}

/// Counts the body bytes the origin sends; breaks off after `cut_after` bytes.
pub struct CountingBody {
    inner: s3s::Body,
    stats: Arc<OriginStats>,
    sent: usize,
    cut_after: Option<usize>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = s3s::StdError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, s3s::StdError>>> {
        if self.cut_after.is_some_and(|limit| self.sent >= limit) {
            return Poll::Ready(Some(Err("origin fault: fill cut mid-body".into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len();
                self.sent += len;
                self.stats.body_bytes.fetch_add(len as u64, Ordering::SeqCst);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
