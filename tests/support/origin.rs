//! A real S3 origin in-process: s3s-fs with SigV4 authentication, behind a thin
//! layer that counts what the origin is asked and what body bytes it sends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
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

/// What the origin saw.
#[derive(Default)]
pub struct OriginStats {
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
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
}

pub struct TestOrigin {
    pub address: SocketAddr,
    pub stats: Arc<OriginStats>,
    pub client: TestClient,
    _root: tempfile::TempDir,
}

impl TestOrigin {
    /// Starts s3s-fs on 127.0.0.1:0 with one access key, `domains` enabling
    /// virtual-hosted-style requests.
    pub async fn start(domains: &[&str]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        if !domains.is_empty() {
            builder.set_host(PortlessHost(s3s::host::MultiDomain::new(domains).unwrap()));
        }
        let s3 = builder.build();
        let stats = Arc::new(OriginStats::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, s3, stats.clone()));
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

async fn serve(listener: TcpListener, s3: S3Service, stats: Arc<OriginStats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let s3 = s3.clone();
        let stats = stats.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let s3 = s3.clone();
            let stats = stats.clone();
            async move {
                stats.requests.fetch_add(1, Ordering::SeqCst);
                let target = request
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                stats.log.lock().unwrap().push(format!("{} {target}", request.method()));
                let response = match Service::call(&s3, request).await {
                    Ok(response) => response,
                    Err(e) => panic!("s3s failed: {e:?}"),
                };
                Ok::<_, Infallible>(response.map(|body| CountingBody { inner: body, stats }))
            }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Counts the body bytes the origin sends.
pub struct CountingBody<B> {
    inner: B,
    stats: Arc<OriginStats>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.stats.body_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
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
