//! `s3-accel pin`: pins a prefix or a manifest in a region for a lease, renews it
//! (the same command again), lists or ends pins. It lists the objects itself (at the
//! origin, or checks a manifest's keys through the accelerator, with the caller's
//! own keys), then asks one node's admin API (`--admin`, e.g. the peers' Service),
//! which takes the pin for the whole region.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::PinRequest;
use crate::prefetch::{self, Endpoint, Keys, Object, PrefetchError};

#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// `s3://bucket/prefix/`: every object under the prefix (listed at
    /// --origin-endpoint), now and later. With --manifest, `s3://bucket/` names the
    /// bucket of keys written without one.
    pub target: Option<String>,
    /// A file of objects (as `prefetch` reads it), all in one bucket.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// The lease: the pin ends unless renewed (the same command again) before it
    /// runs out, e.g. 24h.
    #[arg(long = "for", value_name = "LEASE")]
    pub lease: Option<String>,
    /// A node's admin API (any node of the region: it passes the pin on), e.g.
    /// http://s3-accel-peers.s3-accel.svc:9090.
    #[arg(long, env = "S3_ACCEL_ADMIN")]
    pub admin: String,
    /// The pin's name [default: s3://bucket/prefix].
    #[arg(long)]
    pub name: Option<String>,
    /// A file holding the bearer token of the nodes' pins.token_file.
    #[arg(long, env = "S3_ACCEL_PIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The accelerator, where a manifest's keys are checked (HEAD).
    #[arg(long, visible_alias = "endpoint-url", env = "AWS_ENDPOINT_URL_S3")]
    pub endpoint: Option<String>,
    /// The origin, where a prefix is listed.
    #[arg(long, env = "S3_ACCEL_ORIGIN_ENDPOINT")]
    pub origin_endpoint: Option<String>,
    /// SigV4 region [default: the AWS configuration's, else us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// Lists the pins in force (and the node's room), and changes nothing.
    #[arg(long, conflicts_with_all = ["target", "manifest", "lease", "unpin"])]
    pub list: bool,
    /// Keeps renewing the pin (for --for each time) at this interval until
    /// SIGTERM: a sidecar of the deployment that needs the objects, so that they stay
    /// while it runs and for one lease after it stops.
    #[arg(long, value_name = "INTERVAL", requires = "lease")]
    pub renew_every: Option<String>,
    /// Ends the pin of this name now.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["target", "manifest", "lease"])]
    pub unpin: Option<String>,
}

/// Runs `s3-accel pin`: what the admin API answered, or why nothing was asked.
pub async fn run(args: &PinArgs) -> Result<String, PrefetchError> {
    let admin = Admin::new(&args.admin, args.token_file.as_deref())?;
    if args.list {
        return admin.send(Method::GET, "/admin/pins", None).await;
    }
    if let Some(name) = &args.unpin {
        let query = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
        return admin
            .send(Method::DELETE, &format!("/admin/pins?id={query}"), None)
            .await;
    }
    let lease = args
        .lease
        .clone()
        .ok_or_else(|| PrefetchError::Usage("give the lease: --for 24h".into()))?;
    let target = args.target.as_deref().map(prefetch::parse_s3_url).transpose()?;
    let keys = Keys::from_environment(args.region.clone()).await;
    let request = match (&args.manifest, target) {
        (Some(path), target) => {
            let objects = prefetch::manifest(path, target.map(|(bucket, _)| bucket))?;
            let endpoint = args.endpoint.as_deref().ok_or_else(|| {
                PrefetchError::Usage("a manifest's keys are checked through the accelerator: give --endpoint".into())
            })?;
            let objects = sized(&Endpoint::new(endpoint)?, &keys, objects).await?;
            request_for(&objects, None, lease, args.name.clone())?
        }
        (None, Some((bucket, prefix))) => {
            let origin = args.origin_endpoint.as_deref().ok_or_else(|| {
                PrefetchError::Usage("listing a prefix needs --origin-endpoint (s3-accel refuses listings)".into())
            })?;
            let objects = prefetch::list(&Endpoint::new(origin)?, &keys, &bucket, &prefix).await?;
            if objects.is_empty() {
                return Err(PrefetchError::Usage(format!(
                    "s3://{bucket}/{prefix} lists nothing: nothing to pin"
                )));
            }
            request_for(&objects, Some((bucket, prefix)), lease, args.name.clone())?
        }
        (None, None) => {
            return Err(PrefetchError::Usage(
                "give s3://bucket/prefix/ or --manifest FILE".into(),
            ))
        }
    };
    let Some(every) = &args.renew_every else {
        return admin.pin(&request).await;
    };
    let every = crate::config::units::parse_duration(every)
        .map_err(|e| PrefetchError::Usage(format!("--renew-every {every}: {e}")))?;
    let lease = crate::config::units::parse_duration(&request.lease)
        .map_err(|e| PrefetchError::Usage(format!("--for {}: {e}", request.lease)))?;
    if every.is_zero() || every * 2 > lease {
        return Err(PrefetchError::Usage(
            "--renew-every must be at most half of --for (a renewal may fail once)".into(),
        ));
    }
    renew(&admin, &request, every).await
}

/// Pins, then renews every `every` until SIGTERM or SIGINT; a failed renewal is
/// tried again after a tenth of the interval.
async fn renew(admin: &Admin, request: &PinRequest, every: Duration) -> Result<String, PrefetchError> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut last = None;
    loop {
        let wait = match admin.pin(request).await {
            Ok(pin) => {
                eprintln!("s3-accel pin: renewed: {}", pin.replace('\n', " "));
                last = Some(pin);
                every
            }
            Err(error) => {
                eprintln!("s3-accel pin: renewal failed: {}", crate::error::error_chain(&error));
                every / 10
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // The lease runs out on its own: other replicas may still renew it.
    Ok(last.unwrap_or_default())
}

/// The pin request for `objects`: a prefix pin when `prefix` is given, else one of
/// exactly these keys (all in one bucket).
pub fn request_for(
    objects: &[Object],
    prefix: Option<(String, String)>,
    lease: String,
    id: Option<String>,
) -> Result<PinRequest, PrefetchError> {
    let first = objects
        .first()
        .ok_or_else(|| PrefetchError::Usage("nothing to pin".into()))?;
    if let Some(other) = objects.iter().find(|o| o.bucket != first.bucket) {
        return Err(PrefetchError::Usage(format!(
            "a pin covers one bucket; the manifest names {} and {}",
            first.bucket, other.bucket
        )));
    }
    let (bucket, prefix, keys) = match prefix {
        Some((bucket, prefix)) => (bucket, Some(prefix), None),
        None => (
            first.bucket.clone(),
            None,
            Some(objects.iter().map(|o| o.key.clone()).collect()),
        ),
    };
    Ok(PinRequest {
        id,
        bucket,
        prefix,
        keys,
        objects: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size.unwrap_or(0)).sum(),
        lease,
    })
}

/// Every object of a manifest with its size, asked of the accelerator (HEAD): a
/// missing one is named and nothing is pinned.
pub(crate) async fn sized(
    endpoint: &Endpoint,
    keys: &Keys,
    objects: Vec<Object>,
) -> Result<Vec<Object>, PrefetchError> {
    let heads = stream::iter(objects)
        .map(|object| async move {
            let response = endpoint.send(keys, Method::HEAD, &object.target(), &[]).await;
            let size = match response {
                Ok(response) if response.status() == StatusCode::OK => response
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .ok_or_else(|| format!("{object}: no Content-Length")),
                Ok(response) if response.status() == StatusCode::NOT_FOUND => Err(format!("{object} does not exist")),
                Ok(response) => Err(format!("{object}: {}", response.status())),
                Err(error) => Err(format!("{object}: {error}")),
            };
            size.map(|size| Object {
                size: Some(size),
                ..object
            })
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await;
    let (found, missing): (Vec<_>, Vec<_>) = heads.into_iter().partition(Result::is_ok);
    if let Some(Err(first)) = missing.into_iter().next() {
        return Err(PrefetchError::Usage(format!("{first}: nothing pinned")));
    }
    Ok(found.into_iter().flatten().collect())
}

/// A node's admin API.
pub struct Admin {
    url: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Admin {
    pub fn new(url: &str, token_file: Option<&std::path::Path>) -> Result<Self, PrefetchError> {
        if !url.starts_with("http://") {
            return Err(PrefetchError::Usage(format!(
                "--admin {url}: the admin API is plain http://host:port"
            )));
        }
        let token = token_file
            .map(|path| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_owned())
                    .map_err(|e| PrefetchError::Usage(format!("--token-file {}: {e}", path.display())))
            })
            .transpose()?;
        Ok(Self {
            url: url.trim_end_matches('/').to_owned(),
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Pins (or renews) for the region: the pin as the node took it.
    pub async fn pin(&self, request: &PinRequest) -> Result<String, PrefetchError> {
        let body = serde_json::to_vec(request).map_err(|e| PrefetchError::Usage(e.to_string()))?;
        self.send(Method::POST, "/admin/pins", Some(body)).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<String, PrefetchError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.url));
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| PrefetchError::Usage(e.to_string()))?;
        let refused = |reason: String| PrefetchError::Usage(format!("{}{path}: {reason}", self.url));
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .map_err(|_| refused("no answer within 60 s".into()))?
            .map_err(|e| refused(crate::error::error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| refused(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        match status.is_success() {
            true => Ok(text),
            false => Err(refused(format!("{status}: {text}"))),
        }
    }
}
