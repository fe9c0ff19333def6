//! s3s-fs with SigV4 authentication on 127.0.0.1, behind a thin layer that counts
//! what the origin is asked and what body bytes it sends, can answer conditionals
//! as production origins do, can cut fills on purpose, and can be shaped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use s3s::service::S3Service;
use tokio::net::TcpListener;
use tokio::time::Sleep;

use crate::shaping::{Pacer, Shaping};
use crate::signing::{sign_request, Credentials, Signing};

pub const ACCESS_KEY: &str = "AKIATESTORIGIN";
pub const SECRET_KEY: &str = "origin-secret-key-for-tests";

/// Bytes a cut fill sends before it breaks.
pub const CUT_AFTER: usize = 100 << 10;

/// What the origin saw, and the faults it is told to inject.
#[derive(Default)]
pub struct OriginStats {
    pub requests: AtomicU64,
    /// Connections accepted, all told.
    pub connections: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Response bodies being sent.
    pub open_bodies: AtomicU64,
    /// Ranged GETs with If-Match: the proxy's chunk fills.
    pub fills: AtomicU64,
    /// The next this-many fills are cut after `CUT_AFTER` body bytes.
    pub cut_fills: AtomicU64,
    /// The next this-many fills fail before their first body byte.
    pub fail_fills: AtomicU64,
    /// The next this-many GETs are answered 503 SlowDown, as a throttling store does.
    pub slow_down_gets: AtomicU64,
    /// GETs with neither If-Match nor If-None-Match: a proxy's cold probes (and
    /// clients' direct reads).
    pub unconditional_gets: AtomicU64,
    /// The `Range` of every fill, in arrival order.
    pub fill_ranges: Mutex<Vec<String>>,
    /// The path of every fill, in arrival order.
    pub fill_paths: Mutex<Vec<String>>,
    /// `METHOD target` of every request, in arrival order.
    pub log: Mutex<Vec<String>>,
    /// Part sizes of objects stored "in parts", by raw path (`/bucket/key`): s3s-fs
    /// ignores `partNumber`, so this layer answers part reads as S3 does.
    pub parts: Mutex<std::collections::HashMap<String, Vec<u64>>>,
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

    /// Waits (up to 10 s) until no response body is being sent: a body the proxy cut
    /// off (a cold probe's, past its first chunk) is counted until its connection
    /// closes, which a byte count taken before a re-read must not see.
    pub async fn settled(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.open_bodies.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

/// How the origin behaves.
#[derive(Clone, Debug, Default)]
pub struct OriginOptions {
    /// Domains for virtual-hosted-style requests.
    pub domains: Vec<String>,
    /// Answer If-None-Match (304) and If-Match (412) as AWS, RGW and MinIO do;
    /// s3s-fs alone ignores both.
    pub honor_conditionals: bool,
    /// How far away it seems.
    pub shaping: Shaping,
    /// Keep no request log (a bench sends too many requests to keep).
    pub no_log: bool,
    /// Send GET bodies by reading the object's file in blocks of this many bytes.
    /// s3s-fs still authenticates the request, resolves the range and writes the
    /// head; only its body, read 4 KiB at a time (which caps one connection at
    /// about 120 MB/s of CPU on a small machine), is replaced.
    pub read_block: Option<usize>,
    /// Answer `If-None-Match` on the object before looking at `partNumber`, as
    /// Garage does: a 304 for the object's ETag even for a part past the last one.
    pub conditionals_before_parts: bool,
    /// Answer part 1 of an object stored in one piece as Garage does: 206 with
    /// Content-Range and `x-amz-mp-parts-count: 1` (S3 and s3s-fs: 200, the object).
    pub single_part_as_part: bool,
    /// Answer a 304 or 412 with no header at all, as Garage does (S3 sends the
    /// ETag and Last-Modified with a 304).
    pub bare_not_modified: bool,
    /// Where to listen (default: a free port on 127.0.0.1).
    pub listen: Option<SocketAddr>,
}

pub struct Origin {
    pub address: SocketAddr,
    pub stats: Arc<OriginStats>,
    /// Who may read what; tests change it while the origin runs.
    pub policy: Arc<crate::access::Policy>,
    /// The keys it accepts; tests issue and revoke keys while it runs.
    pub keys: Arc<crate::keys::KeyRing>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<Bytes>,
    >,
    /// The accept loop, stopped when the origin is dropped.
    task: tokio::task::AbortHandle,
    _root: tempfile::TempDir,
}

impl Origin {
    /// The file that holds `bucket/key`'s bytes (a test may change them in place:
    /// the ETag and checksums stored beside them stay, as a faulty disk would leave them).
    pub fn object_file(&self, bucket: &str, key: &str) -> std::path::PathBuf {
        self._root.path().join(bucket).join(key)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    /// Starts the origin (on 127.0.0.1 unless `options.listen` says where) with its data in a fresh directory under `parent`
    /// (the system's temporary directory when `None`).
    pub async fn start(options: OriginOptions, parent: Option<&std::path::Path>) -> std::io::Result<Self> {
        let root = match parent {
            Some(parent) => tempfile::tempdir_in(parent)?,
            None => tempfile::tempdir()?,
        };
        let fs = s3s_fs::FileSystem::new(root.path()).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        let keys = Arc::new(crate::keys::KeyRing::fixed(&[
            (ACCESS_KEY, SECRET_KEY),
            (crate::access::READER_KEY, crate::access::READER_SECRET),
        ]));
        builder.set_auth(crate::keys::Auth(keys.clone()));
        let policy = Arc::new(crate::access::Policy::default());
        builder.set_access(crate::access::Access {
            policy: policy.clone(),
            keys: keys.clone(),
        });
        if !options.domains.is_empty() {
            let domains: Vec<&str> = options.domains.iter().map(String::as_str).collect();
            let host = s3s::host::MultiDomain::new(&domains).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            builder.set_host(PortlessHost(host));
        }
        let s3 = builder.build();
        let stats = Arc::new(OriginStats::default());
        let listener = TcpListener::bind(options.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
        let address = listener.local_addr()?;
        let total = Pacer::new(options.shaping.total);
        let options = Arc::new(options);
        let root_path = root.path().to_path_buf();
        let task = tokio::spawn(serve(listener, s3, stats.clone(), options, total, root_path)).abort_handle();
        Ok(Self {
            address,
            stats,
            policy,
            keys,
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
            task,
            _root: root,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn credentials() -> Credentials {
        Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    /// Answers `?partNumber=N` reads of `bucket/raw_key` as if it had been uploaded
    /// in parts of these sizes (which must add up to the object's size).
    pub fn set_parts(&self, bucket: &str, raw_key: &str, sizes: &[u64]) {
        self.stats
            .parts
            .lock()
            .unwrap()
            .insert(format!("/{bucket}/{raw_key}"), sizes.to_vec());
    }

    pub fn signing() -> Signing {
        Signing::Header(Self::credentials())
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        self.signed(http::Method::PUT, &format!("/{bucket}"), Bytes::new(), &[])
            .await
    }

    /// Stores an object with a signed PUT; `raw_key` is already percent-encoded.
    pub async fn put(&self, bucket: &str, raw_key: &str, data: Bytes, headers: &[(&str, &str)]) -> Result<(), String> {
        self.signed(http::Method::PUT, &format!("/{bucket}/{raw_key}"), data, headers)
            .await
    }

    async fn signed(
        &self,
        method: http::Method,
        target: &str,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("http://{}{target}", self.address))
            .header("host", self.address.to_string())
            .header("content-length", body.len().to_string());
        let request = headers.iter().fold(request, |r, (k, v)| r.header(*k, *v));
        let mut request = request.body(()).map_err(|e| e.to_string())?;
        sign_request(&mut request, &Self::signing());
        let request = request.map(|()| http_body_util::Full::new(body));
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("{method} {target}: {e}"))?;
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!(
                "{method} {target}: {status} {}",
                String::from_utf8_lossy(&body)
            ))
        }
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

async fn serve(
    listener: TcpListener,
    s3: S3Service,
    stats: Arc<OriginStats>,
    options: Arc<OriginOptions>,
    total: Option<Arc<Pacer>>,
    root: std::path::PathBuf,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.connections.fetch_add(1, Ordering::SeqCst);
        let (s3, stats, options, total) = (s3.clone(), stats.clone(), options.clone(), total.clone());
        let root = root.clone();
        tokio::spawn(async move {
            let rtt = options.shaping.rtt;
            if !rtt.is_zero() {
                tokio::time::sleep(rtt).await;
            }
            let pacers = Pacers {
                connection: Pacer::new(options.shaping.per_connection),
                total,
            };
            let service = service_fn(move |request: Request<Incoming>| {
                let (s3, stats, options, pacers) = (s3.clone(), stats.clone(), options.clone(), pacers.clone());
                let root = root.clone();
                async move { Ok::<_, Infallible>(answer(&s3, stats, &options, pacers, &root, request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The caps a response body is held to: its connection's and the total.
#[derive(Clone, Default)]
struct Pacers {
    connection: Option<Arc<Pacer>>,
    total: Option<Arc<Pacer>>,
}

impl Pacers {
    fn reserve(&self, bytes: usize) -> Option<tokio::time::Instant> {
        let connection = self.connection.as_ref().and_then(|p| p.reserve(bytes));
        let total = self.total.as_ref().and_then(|p| p.reserve(bytes));
        connection.max(total)
    }
}

async fn answer(
    s3: &S3Service,
    stats: Arc<OriginStats>,
    options: &OriginOptions,
    pacers: Pacers,
    root: &std::path::Path,
    request: Request<Incoming>,
) -> Response<OriginBody> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if !options.no_log {
        let target = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        stats.log.lock().unwrap().push(format!("{} {target}", request.method()));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (if_match, if_none_match) = (header("if-match"), header("if-none-match"));
    let checksum_mode = header("x-amz-checksum-mode").is_some_and(|v| v.eq_ignore_ascii_case("enabled"));
    let part_number: Option<u64> = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("partNumber="))
            .and_then(|n| n.parse().ok())
    });
    let head = request.method() == http::Method::HEAD;
    let part_of = (part_number.is_some() && (request.method() == http::Method::GET || head))
        .then(|| request.uri().path().to_owned());
    let object_file = match (options.read_block, request.method()) {
        (Some(_), &http::Method::GET) => object_file(root, request.uri().path()),
        _ => None,
    };
    if if_match.is_none() && if_none_match.is_none() && request.method() == http::Method::GET {
        stats.unconditional_gets.fetch_add(1, Ordering::SeqCst);
    }
    let slow_down = request.method() == http::Method::GET
        && stats
            .slow_down_gets
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let mut cut_after = None;
    if if_match.is_some() && request.headers().contains_key("range") {
        stats.fills.fetch_add(1, Ordering::SeqCst);
        stats.fill_paths.lock().unwrap().push(request.uri().path().to_owned());
        if let Some(range) = header("range") {
            stats.fill_ranges.lock().unwrap().push(range);
        }
        if stats
            .cut_fills
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cut_after = Some(CUT_AFTER);
        } else if stats
            .fail_fills
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cut_after = Some(0);
        }
    }
    if !options.shaping.rtt.is_zero() {
        tokio::time::sleep(options.shaping.rtt).await;
    }
    let response = match slow_down {
        true => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                        <Message>Please reduce your request rate.</Message></Error>";
            let mut response = Response::new(s3s::Body::from(body.to_owned()));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
        false => Service::call(s3, request)
            .await
            .unwrap_or_else(|e| panic!("s3s failed: {e:?}")),
    };
    let object_etag = response.headers().get("etag").and_then(|v| v.to_str().ok());
    let not_modified_first = options.conditionals_before_parts
        && if_none_match
            .as_deref()
            .zip(object_etag)
            .is_some_and(|(condition, etag)| condition.split(',').any(|c| c.trim() == "*" || c.trim() == etag));
    let (response, part_answered) = match (part_of, part_number) {
        (Some(path), Some(number)) if response.status() == StatusCode::OK && !not_modified_first => {
            let layout = stats.parts.lock().unwrap().get(&path).cloned();
            let layout = match layout {
                None if options.single_part_as_part && number == 1 => self::object_file(root, &path)
                    .and_then(|file| std::fs::metadata(file).ok())
                    .map(|meta| vec![meta.len()]),
                layout => layout,
            };
            match answer_part(response, root, &path, (number, head), layout, checksum_mode).await {
                Ok(part) => (part, true),
                Err(whole) => (whole, false),
            }
        }
        _ => (response, false),
    };
    let response = if options.honor_conditionals {
        let mut answer = apply_conditionals(response, if_match, if_none_match);
        if options.bare_not_modified && matches!(answer.status().as_u16(), 304 | 412) {
            answer.headers_mut().clear();
        }
        answer
    } else {
        response
    };
    let block = options.read_block.unwrap_or(0);
    let response = match object_file {
        Some(path) if !part_answered && matches!(response.status().as_u16(), 200 | 206) => {
            read_in_blocks(response, &path, block).await
        }
        _ => response.map(http_body_util::BodyExt::boxed_unsync),
    };
    stats.open_bodies.fetch_add(1, Ordering::SeqCst);
    response.map(|inner| OriginBody {
        inner,
        stats,
        sent: 0,
        cut_after,
        pacers,
        held: None,
    })
}

/// Where s3s-fs keeps the object a path-style request names.
fn object_file(root: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8().ok()?;
    let relative = decoded.trim_start_matches('/');
    let safe = relative.contains('/')
        && !relative
            .split('/')
            .any(|part| part.is_empty() || part == ".." || part == ".");
    safe.then(|| root.join(relative))
}

/// The same response with its body read straight from `path`, `block` bytes at a
/// time, from the offset its Content-Range names.
async fn read_in_blocks(response: Response<s3s::Body>, path: &std::path::Path, block: usize) -> Response<BoxedBody> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    let start: u64 = match header("content-range") {
        Some(range) => match range
            .strip_prefix("bytes ")
            .and_then(|r| r.split('-').next()?.parse().ok())
        {
            Some(start) => start,
            None => return response.map(http_body_util::BodyExt::boxed_unsync),
        },
        None => 0,
    };
    let Some(length) = length else {
        return response.map(http_body_util::BodyExt::boxed_unsync);
    };
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return response.map(http_body_util::BodyExt::boxed_unsync);
    };
    if file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return response.map(http_body_util::BodyExt::boxed_unsync);
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), block.max(4096));
    let body = http_body_util::StreamBody::new(futures_frames(stream));
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, http_body_util::BodyExt::boxed_unsync(body))
}

fn futures_frames(
    stream: tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, s3s::StdError>> {
    use futures_util::StreamExt;
    stream.map(|chunk| chunk.map(Frame::data).map_err(|e| Box::new(e) as s3s::StdError))
}

type BoxedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, s3s::StdError>;

/// S3's answer to `?partNumber=number` (s3s-fs answered with the whole object):
/// for an object stored in parts, 206 with the part's bytes, Content-Range,
/// `x-amz-mp-parts-count` and, in checksum mode, the part's CRC32; for any other
/// object part 1 is the whole object (s3s-fs's answer, `Err`); past the last part,
/// 416 InvalidPartNumber. A HEAD gets the same head, without a body.
async fn answer_part(
    whole: Response<s3s::Body>,
    root: &std::path::Path,
    path: &str,
    (number, head): (u64, bool),
    layout: Option<Vec<u64>>,
    checksum_mode: bool,
) -> Result<Response<s3s::Body>, Response<s3s::Body>> {
    let layout = match layout {
        Some(layout) => layout,
        None if number == 1 => return Err(whole),
        None => vec![],
    };
    let Some(size) = layout.get(number as usize - 1).copied() else {
        let error = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InvalidPartNumber</Code><Message>The requested partnumber is not satisfiable</Message></Error>";
        let mut refused = Response::new(match head {
            true => s3s::Body::empty(),
            false => s3s::Body::from(error.to_owned()),
        });
        *refused.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
        refused
            .headers_mut()
            .insert("content-type", "application/xml".parse().unwrap());
        return Ok(refused);
    };
    let first: u64 = layout[..number as usize - 1].iter().sum();
    let total: u64 = layout.iter().sum();
    let Some(file) = object_file(root, path) else {
        return Err(whole);
    };
    let data = std::fs::read(file).expect("the object's file");
    assert_eq!(data.len() as u64, total, "set_parts sizes add up to the object's");
    let bytes = &data[first as usize..(first + size) as usize];
    let (mut parts, _) = whole.into_parts();
    parts.status = StatusCode::PARTIAL_CONTENT;
    let headers = &mut parts.headers;
    let checksums: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-amz-checksum-"))
        .cloned()
        .collect();
    for name in checksums {
        headers.remove(name);
    }
    headers.insert("content-length", size.into());
    let range = format!("bytes {first}-{}/{total}", first + size - 1);
    headers.insert("content-range", range.parse().unwrap());
    headers.insert("x-amz-mp-parts-count", layout.len().into());
    if checksum_mode {
        let mut hasher = s3s::checksum::ChecksumHasher {
            crc32: Some(Default::default()),
            ..Default::default()
        };
        hasher.update(bytes);
        let crc32 = hasher.finalize().checksum_crc32.expect("crc32");
        headers.insert("x-amz-checksum-crc32", crc32.parse().unwrap());
        headers.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
    }
    let body = match head {
        true => s3s::Body::empty(),
        false => s3s::Body::from(Bytes::copy_from_slice(bytes)),
    };
    Ok(Response::from_parts(parts, body))
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
    // A 304 carries the ETag and Last-Modified, as S3's does.
    let last_modified = response.headers().get("last-modified").cloned();
    let mut answer = Response::new(s3s::Body::empty());
    *answer.status_mut() = status;
    answer.headers_mut().insert("etag", etag.parse().unwrap());
    if let (StatusCode::NOT_MODIFIED, Some(last_modified)) = (status, last_modified) {
        answer.headers_mut().insert("last-modified", last_modified);
    }
    answer
}

/// The origin's response body: counted, paced to the shaping caps, and broken
/// off after `cut_after` bytes when a fault is asked for.
pub struct OriginBody {
    inner: BoxedBody,
    stats: Arc<OriginStats>,
    sent: usize,
    cut_after: Option<usize>,
    pacers: Pacers,
    /// A frame waiting for its pacing delay.
    held: Option<(Pin<Box<Sleep>>, Frame<Bytes>)>,
}

impl Drop for OriginBody {
    fn drop(&mut self) {
        self.stats.open_bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = s3s::StdError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, s3s::StdError>>> {
        if let Some((sleep, _)) = &mut self.held {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (_, frame) = self.held.take().expect("held frame");
            return Poll::Ready(Some(Ok(frame)));
        }
        if self.cut_after.is_some_and(|limit| self.sent >= limit) {
            return Poll::Ready(Some(Err("origin fault: fill cut mid-body".into())));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        let Some(len) = frame.data_ref().map(Bytes::len) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        self.sent += len;
        self.stats.body_bytes.fetch_add(len as u64, Ordering::SeqCst);
        match self.pacers.reserve(len) {
            None => Poll::Ready(Some(Ok(frame))),
            Some(due) => {
                self.held = Some((Box::pin(tokio::time::sleep_until(due)), frame));
                self.poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(|(_, frame)| frame.data_ref())
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
