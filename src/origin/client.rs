//! A pooled HTTP client for one regional origin, with connect, first-byte and
//! body-idle timeouts so that nothing waits on a dead origin forever.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_resolver::TokioResolver;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::IdleTimeoutBody;
use super::connect::{https_connector, OriginConnector};
use crate::config::{OriginClientConfig, OriginUrl};

/// The body of an origin response as the proxy relays it.
pub type OriginBody = IdleTimeoutBody<Incoming>;

/// Why the origin gave no usable response head.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    #[error("cannot reach origin {origin}")]
    Unreachable {
        origin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("origin {origin} sent no response head within {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("origin {origin} broke off the exchange")]
    Protocol {
        origin: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

pub struct OriginClient {
    origin: OriginUrl,
    client: Client<HttpsConnector<OriginConnector>, Empty<Bytes>>,
    first_byte_timeout: Duration,
    body_idle_timeout: Duration,
}

impl OriginClient {
    pub fn new(
        origin: &OriginUrl,
        config: &OriginClientConfig,
        tls: rustls::ClientConfig,
        resolver: Arc<TokioResolver>,
    ) -> io::Result<Self> {
        let connector = https_connector(origin, tls, resolver, config.connect_timeout)?;
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            // Never retry on our own: the client's signed request is its to retry.
            .retry_canceled_requests(false)
            .build(connector);
        Ok(Self {
            origin: origin.clone(),
            client,
            first_byte_timeout: config.first_byte_timeout,
            body_idle_timeout: config.body_idle_timeout,
        })
    }

    pub fn origin(&self) -> &OriginUrl {
        &self.origin
    }

    /// Sends `request` (whose URI carries the origin's scheme and the client's authority)
    /// and waits for the response head.
    pub async fn send(&self, request: Request<Empty<Bytes>>) -> Result<Response<OriginBody>, OriginError> {
        let origin = || self.origin.to_string();
        let response = match tokio::time::timeout(self.first_byte_timeout, self.client.request(request)).await {
            Err(_) => {
                return Err(OriginError::Timeout {
                    origin: origin(),
                    timeout: self.first_byte_timeout,
                })
            }
            Ok(Err(source)) if source.is_connect() => {
                return Err(OriginError::Unreachable {
                    origin: origin(),
                    source,
                })
            }
            Ok(Err(source)) => {
                return Err(OriginError::Protocol {
                    origin: origin(),
                    source,
                })
            }
            Ok(Ok(response)) => response,
        };
        Ok(response.map(|body| IdleTimeoutBody::new(body, self.body_idle_timeout)))
    }
}
