//! `s3-accel prefetch`: warms a region with the objects a rollout will read. It
//! lists a prefix at the origin (s3-accel refuses listings) or takes a manifest,
//! then reads every object through the accelerator with bounded concurrency,
//! discarding the bytes, with a progress bar and a summary of the cache outcomes.
//! With peers, each chunk's owner fills it: one prefetch warms the whole region.
//! Its reads ask for background priority (live reads' fills go first), and an
//! object answered 503 (SlowDown) is read again later, backing off exponentially
//! with jitter.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

use crate::config::OriginClientConfig;
use crate::credentials::FillCredentials;
use crate::origin::{connect, sign_s3, OriginClient};
use crate::s3;

/// What SigV4 leaves unencoded in a path segment or a query value.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[derive(Debug, Clone, clap::Args)]
pub struct PrefetchArgs {
    /// `s3://bucket/prefix/`: every object under the prefix, listed at
    /// --origin-endpoint. With --manifest, `s3://bucket/` names the bucket of
    /// manifest keys written without one.
    pub target: Option<String>,
    /// A file of objects: one `s3://bucket/key` (or, with a bucket given, a key) per
    /// line, or JSON: `[{"key": "...", "size": 123}, ...]`.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// The accelerator, e.g. http://accel-object.ord1.example.com.
    #[arg(long, visible_alias = "endpoint-url", env = "AWS_ENDPOINT_URL_S3")]
    pub endpoint: String,
    /// The origin, where a prefix is listed, e.g. https://object.ord1.example.com.
    #[arg(long, env = "S3_ACCEL_ORIGIN_ENDPOINT")]
    pub origin_endpoint: Option<String>,
    /// Objects read at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// SigV4 region [default: the AWS configuration's, else us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// List what would be read, and read nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// No progress bar (there is none when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// Pins what it warms for this lease (as `s3-accel pin --for`), before reading
    /// it: the region keeps it resident. Needs --admin.
    #[arg(long, value_name = "LEASE", requires = "admin")]
    pub pin_for: Option<String>,
    /// A node's admin API, where the pin is asked for (see `s3-accel pin`).
    #[arg(long, env = "S3_ACCEL_ADMIN")]
    pub admin: Option<String>,
    /// The bearer token of the nodes' pins.token_file, for --pin-for.
    #[arg(long, env = "S3_ACCEL_PIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Times an object answered 503 (SlowDown) is read again, each after a longer
    /// wait (0.25 s doubling up to 30 s, with jitter), before it counts as failed.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,
}

/// One object to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub bucket: String,
    pub key: String,
    pub size: Option<u64>,
}

impl Object {
    /// The path-style request-target, encoded as SigV4 signs it.
    pub fn target(&self) -> String {
        let key: Vec<String> = self
            .key
            .split('/')
            .map(|segment| utf8_percent_encode(segment, UNRESERVED).to_string())
            .collect();
        format!("/{}/{}", utf8_percent_encode(&self.bucket, UNRESERVED), key.join("/"))
    }
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PrefetchError {
    #[error("{0}")]
    Usage(String),
    #[error("listing s3://{bucket}/{prefix} at {origin}: {reason}")]
    List {
        bucket: String,
        prefix: String,
        origin: String,
        reason: String,
    },
    #[error("reading the manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What a prefetch did.
#[derive(Debug, Default)]
pub struct Summary {
    pub objects: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// `x-s3-accel-cache` outcomes (`hit`, `miss`, `bypass`, ...), one per object.
    pub outcomes: BTreeMap<String, u64>,
    /// Each object that failed, and why.
    pub failures: Vec<(String, String)>,
    /// 503 answers (SlowDown) read again later, and the time waited before them.
    pub slowdowns: u64,
    pub backed_off: Duration,
}

impl Summary {
    pub fn print(&self) {
        let seconds = self.elapsed.as_secs_f64();
        println!(
            "prefetch: {} objects, {} bytes ({}) in {:.1} s, {:.3} GB/s",
            self.objects,
            self.bytes,
            crate::config::units::format_size(self.bytes),
            seconds,
            self.bytes as f64 / seconds.max(1e-9) / 1e9
        );
        let outcomes: Vec<String> = self.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("prefetch: cache: {}", outcomes.join(", "));
        if self.slowdowns > 0 {
            println!(
                "prefetch: slowed down {} times (503), backed off {:.1} s in all",
                self.slowdowns,
                self.backed_off.as_secs_f64()
            );
        }
        for (object, reason) in &self.failures {
            println!("prefetch: FAILED {object}: {reason}");
        }
        println!("prefetch: {} failed", self.failures.len());
    }
}

/// Runs a prefetch; `Ok` holds the summary (failed objects included), `Err` a
/// mistake that stopped it before any read.
pub async fn run(args: &PrefetchArgs) -> Result<Summary, PrefetchError> {
    if args.concurrency == 0 {
        return Err(PrefetchError::Usage("--concurrency must be at least 1".into()));
    }
    let target = args.target.as_deref().map(parse_s3_url).transpose()?;
    let keys = Keys::from_environment(args.region.clone()).await;
    let listed = target.clone().filter(|_| args.manifest.is_none());
    let objects = match (&args.manifest, target) {
        (Some(path), target) => manifest(path, target.map(|(bucket, _)| bucket))?,
        (None, Some((bucket, prefix))) => {
            let origin = args.origin_endpoint.as_deref().ok_or_else(|| {
                PrefetchError::Usage("listing a prefix needs --origin-endpoint (s3-accel refuses listings)".into())
            })?;
            list(&Endpoint::new(origin)?, &keys, &bucket, &prefix).await?
        }
        (None, None) => {
            return Err(PrefetchError::Usage(
                "give s3://bucket/prefix/ or --manifest FILE".into(),
            ))
        }
    };
    if args.dry_run {
        let mut total = 0;
        for object in &objects {
            total += object.size.unwrap_or(0);
            match object.size {
                Some(size) => println!("{object}\t{size}"),
                None => println!("{object}"),
            }
        }
        println!("prefetch: would read {} objects, {total} bytes", objects.len());
        return Ok(Summary::default());
    }
    let mut endpoint = Endpoint::new(&args.endpoint)?;
    endpoint.background = true;
    // Pinned first: what the reads fill then goes to the owners' pinned stores.
    if let (Some(lease), Some(admin)) = (&args.pin_for, &args.admin) {
        let admin = crate::pins::cli::Admin::new(admin, args.token_file.as_deref())?;
        let objects = match listed {
            Some(_) => objects,
            None => crate::pins::cli::sized(&endpoint, &keys, objects).await?,
        };
        let request = crate::pins::cli::request_for(&objects, listed, lease.clone(), None)?;
        let pinned = admin.pin(&request).await?;
        eprintln!("prefetch: pinned for {lease}: {}", pinned.replace('\n', " "));
        return read_all(&endpoint, &keys, objects, args).await;
    }
    read_all(&endpoint, &keys, objects, args).await
}

/// The credentials and region requests are signed with (none: unsigned).
pub struct Keys {
    credentials: Option<Arc<FillCredentials>>,
    region: String,
}

impl Keys {
    /// These keys, for `region`.
    pub fn fixed(keys: crate::s3::keys::ProxyCredentials, region: &str) -> Self {
        Self {
            credentials: Some(Arc::new(FillCredentials::fixed("static", keys))),
            region: region.to_owned(),
        }
    }

    /// The AWS SDK's default chain (environment, profile, web identity, container)
    /// and region, as the aws CLI finds them; `region` overrides the latter.
    pub async fn from_environment(region: Option<String>) -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let region = region
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".into());
        let credentials = match sdk.credentials_provider() {
            Some(provider) => Some(FillCredentials::from_provider("aws", provider).await),
            None => None,
        };
        Self { credentials, region }
    }
}

/// An S3 endpoint: the client and the authority requests carry.
pub struct Endpoint {
    client: OriginClient,
    url: s3::Endpoint,
    /// Requests ask an accelerator for background priority (unsigned: a header for
    /// the node only).
    pub background: bool,
}

impl Endpoint {
    pub fn new(url: &str) -> Result<Self, PrefetchError> {
        let url = s3::Endpoint::parse(url.trim_end_matches('/')).map_err(PrefetchError::Usage)?;
        let config = OriginClientConfig {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(120),
            body_idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            max_connections: 256,
            ca_file: None,
        };
        let client = OriginClient::new(
            "prefetch",
            &url,
            &config,
            connect::tls_config(None)?,
            connect::resolver()?,
            connect::ConnectionCap::new(config.max_connections),
        )?;
        Ok(Self {
            client,
            url,
            background: false,
        })
    }

    /// A signed GET of `target` (a path and query, already encoded).
    pub async fn get(&self, keys: &Keys, target: &str) -> Result<http::Response<crate::origin::OriginBody>, String> {
        self.send(keys, http::Method::GET, target, &[]).await
    }

    /// A signed request of `target` with `headers` (signed too).
    pub async fn send(
        &self,
        keys: &Keys,
        method: http::Method,
        target: &str,
        headers: &[(&str, String)],
    ) -> Result<http::Response<crate::origin::OriginBody>, String> {
        let uri: Uri = format!("{}{target}", self.url).parse().map_err(|e| format!("{e}"))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        for (name, value) in headers {
            let name = header::HeaderName::from_bytes(name.as_bytes()).map_err(|e| e.to_string())?;
            let value = value.parse().map_err(|_| format!("a bad {name} header"))?;
            request.headers_mut().insert(name, value);
        }
        let authority = match (self.url.tls, self.url.port) {
            (true, 443) | (false, 80) => self.url.host.clone(),
            (_, port) => format!("{}:{port}", self.url.host),
        };
        request
            .headers_mut()
            .insert(header::HOST, authority.parse().map_err(|_| "bad host".to_string())?);
        if let Some(snapshot) = keys.credentials.as_ref().and_then(|c| c.current()) {
            sign_s3(&mut request, &snapshot.keys, &keys.region).map_err(|e| crate::error::error_chain(&e))?;
        }
        if self.background {
            let background = header::HeaderValue::from_static("background");
            request.headers_mut().insert(crate::fetch::PRIORITY_HEADER, background);
        }
        self.client
            .send(request, "prefetch")
            .await
            .map_err(|e| crate::error::error_chain(&e))
    }
}

/// `s3://bucket/prefix` → (bucket, prefix).
pub fn parse_s3_url(text: &str) -> Result<(String, String), PrefetchError> {
    let rest = text
        .strip_prefix("s3://")
        .ok_or_else(|| PrefetchError::Usage(format!("`{text}` is not s3://bucket/prefix")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(PrefetchError::Usage(format!("`{text}` has no bucket")));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

#[derive(Deserialize)]
struct ManifestEntry {
    key: String,
    size: Option<u64>,
}

/// The objects of a manifest file: lines of `s3://bucket/key` (or keys in
/// `bucket`), or a JSON array of `{"key", "size"}`.
pub fn manifest(path: &std::path::Path, bucket: Option<String>) -> Result<Vec<Object>, PrefetchError> {
    let fail = |reason: String| PrefetchError::Manifest {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let entries: Vec<ManifestEntry> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?
    } else {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|key| ManifestEntry {
                key: key.to_owned(),
                size: None,
            })
            .collect()
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| {
            let (bucket, key) = match entry.key.strip_prefix("s3://") {
                Some(_) => parse_s3_url(&entry.key).map_err(|e| fail(format!("entry {}: {e}", n + 1)))?,
                None => match &bucket {
                    Some(bucket) => (bucket.clone(), entry.key.clone()),
                    None => {
                        return Err(fail(format!(
                            "entry {}: `{}` names no bucket: write s3://bucket/key, or give s3://bucket/",
                            n + 1,
                            entry.key
                        )))
                    }
                },
            };
            if key.is_empty() {
                return Err(fail(format!("entry {}: no key", n + 1)));
            }
            Ok(Object {
                bucket,
                key,
                size: entry.size,
            })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
}

/// Every object under `prefix`, by ListObjectsV2 pages.
pub async fn list(origin: &Endpoint, keys: &Keys, bucket: &str, prefix: &str) -> Result<Vec<Object>, PrefetchError> {
    let fail = |reason: String| PrefetchError::List {
        bucket: bucket.to_owned(),
        prefix: prefix.to_owned(),
        origin: origin.url.to_string(),
        reason,
    };
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        // Parameters in canonical (sorted) order, encoded as SigV4 encodes them.
        let mut query = String::new();
        if let Some(token) = &token {
            query.push_str(&format!(
                "continuation-token={}&",
                utf8_percent_encode(token, UNRESERVED)
            ));
        }
        query.push_str(&format!(
            "list-type=2&prefix={}",
            utf8_percent_encode(prefix, UNRESERVED)
        ));
        let target = format!("/{}?{query}", utf8_percent_encode(bucket, UNRESERVED));
        let response = origin.get(keys, &target).await.map_err(fail)?;
        let status = response.status();
        if status != StatusCode::OK {
            let code = crate::origin::error_code(response).await;
            return Err(fail(format!("{status} {code}").trim().to_owned()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(format!("reading the listing: {e}")))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body);
        let page: ListBucketResult =
            quick_xml::de::from_str(&text).map_err(|e| fail(format!("an unreadable listing: {e}")))?;
        objects.extend(
            page.contents
                .into_iter()
                .filter(|c| !c.key.ends_with('/'))
                .map(|c| Object {
                    bucket: bucket.to_owned(),
                    key: c.key,
                    size: Some(c.size),
                }),
        );
        match (page.is_truncated, page.next_continuation_token) {
            (true, Some(next)) => token = Some(next),
            _ => return Ok(objects),
        }
    }
}

/// Reads `objects` through the accelerator, `args.concurrency` at a time.
async fn read_all(
    endpoint: &Endpoint,
    keys: &Keys,
    objects: Vec<Object>,
    args: &PrefetchArgs,
) -> Result<Summary, PrefetchError> {
    let total: Option<u64> = objects.iter().map(|o| o.size).sum();
    let progress = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::no_length(),
    };
    if args.no_progress {
        progress.set_draw_target(ProgressDrawTarget::hidden());
    }
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let count = objects.len();
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut done = 0;
    progress.set_message(format!("0/{count} objects"));
    let mut reads = stream::iter(objects)
        .map(|object| {
            let progress = progress.clone();
            async move {
                let mut backoff = Backoff::default();
                loop {
                    match read(endpoint, keys, &object, &progress).await {
                        Err(Failed {
                            reason,
                            slow_down: true,
                        }) if backoff.tries < args.max_retries => {
                            let wait = backoff.next();
                            progress.suspend(|| eprintln!("prefetch: {object}: {reason}; again in {wait:.1?}"));
                            tokio::time::sleep(wait).await;
                        }
                        outcome => break (object, outcome.map_err(|failed| failed.reason), backoff),
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency);
    while let Some((object, outcome, backoff)) = reads.next().await {
        summary.slowdowns += u64::from(backoff.tries);
        summary.backed_off += backoff.waited;
        done += 1;
        progress.set_message(format!("{done}/{count} objects"));
        match outcome {
            Ok((bytes, cache)) => {
                summary.objects += 1;
                summary.bytes += bytes;
                *summary.outcomes.entry(cache).or_default() += 1;
            }
            Err(reason) => {
                progress.suspend(|| eprintln!("prefetch: {object}: {reason}"));
                summary.failures.push((object.to_string(), reason));
            }
        }
    }
    progress.finish_and_clear();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Waits between reads of an object answered 503: 0.25 s doubling up to 30 s, each
/// between half and all of it (jitter: prefetches slowed down together do not come
/// back together).
#[derive(Default)]
struct Backoff {
    tries: u32,
    waited: Duration,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = Duration::from_millis(250)
            .saturating_mul(1 << self.tries.min(16))
            .min(Duration::from_secs(30));
        let wait = ceiling.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.tries += 1;
        self.waited += wait;
        wait
    }
}

/// A read that failed: why, and whether it is worth trying again later (a 503).
struct Failed {
    reason: String,
    slow_down: bool,
}

impl From<String> for Failed {
    fn from(reason: String) -> Self {
        Self {
            reason,
            slow_down: false,
        }
    }
}

/// Reads one object whole, discarding its bytes: how many, and the cache outcome.
async fn read(
    endpoint: &Endpoint,
    keys: &Keys,
    object: &Object,
    progress: &ProgressBar,
) -> Result<(u64, String), Failed> {
    let response = endpoint.get(keys, &object.target()).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let code = crate::origin::error_code(response).await;
        return Err(Failed {
            reason: format!("{status} {code}").trim().to_owned(),
            slow_down: status == StatusCode::SERVICE_UNAVAILABLE,
        });
    }
    let cache = response
        .headers()
        .get(crate::proxy::CACHE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .unwrap_or_else(|| "none".into());
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body();
    let mut got = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the body broke after {got} bytes: {e}"))?;
        if let Ok(data) = frame.into_data() {
            got += data.len() as u64;
            progress.inc(data.len() as u64);
        }
    }
    for (expected, what) in [(length, "Content-Length"), (object.size, "the listed size")] {
        if let Some(expected) = expected.filter(|e| *e != got) {
            return Err(format!("{got} bytes, {what} says {expected}").into());
        }
    }
    Ok((got, cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let lines = dir.path().join("keys.txt");
        std::fs::write(&lines, "# the shards\ns3://models/a/1.bin\n\nb/2.bin\n").unwrap();
        let objects = manifest(&lines, Some("weights".into())).unwrap();
        assert_eq!(objects[0].to_string(), "s3://models/a/1.bin");
        assert_eq!(objects[1].to_string(), "s3://weights/b/2.bin");
        let error = manifest(&lines, None).unwrap_err().to_string();
        assert!(error.contains("entry 2") && error.contains("b/2.bin"), "{error}");
        let json = dir.path().join("keys.json");
        std::fs::write(&json, r#"[{"key": "s3://models/x.bin", "size": 12}, {"key": "y.bin"}]"#).unwrap();
        let objects = manifest(&json, Some("models".into())).unwrap();
        assert_eq!(objects[0].size, Some(12));
        assert_eq!(objects[1].to_string(), "s3://models/y.bin");
    }

    #[test]
    fn a_listing_page_is_read() {
        let page: ListBucketResult = quick_xml::de::from_str(
            "<ListBucketResult><Name>b</Name><Contents><Key>a&amp;b.bin</Key><Size>5</Size></Contents>\
             <Contents><Key>c</Key><Size>7</Size><ETag>\"x\"</ETag></Contents><IsTruncated>true</IsTruncated>\
             <NextContinuationToken>t1</NextContinuationToken></ListBucketResult>",
        )
        .unwrap();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].key, "a&b.bin");
        assert_eq!(page.contents[1].size, 7);
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("t1"));
    }
}
