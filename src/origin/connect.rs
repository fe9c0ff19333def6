//! Connections to one origin: DNS through hickory, TCP with a timeout, TLS by rustls
//! with the origin's own name, whatever authority the forwarded request carries.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::s3::Endpoint;
use crate::telemetry;

/// Connections open to origins, all regions together, against
/// `origin_client.max_connections`.
#[derive(Clone)]
pub struct ConnectionCap(Arc<Semaphore>);

impl ConnectionCap {
    pub fn new(connections: usize) -> Self {
        Self(Arc::new(Semaphore::new(connections)))
    }
}

/// Dials the configured origin for every request, ignoring the request's authority:
/// the forwarded request keeps the Host the client signed, which is not the origin's.
#[derive(Clone)]
pub struct OriginConnector {
    host: Arc<str>,
    port: u16,
    resolver: Arc<TokioResolver>,
    connect_timeout: Duration,
    cap: ConnectionCap,
    /// The region, for `s3accel_origin_connections`.
    region: Arc<str>,
}

impl OriginConnector {
    /// A connection counted against the cap for as long as it is open. Past the cap,
    /// waits `connect_timeout` for a connection to close (the pool hands an idle one
    /// to the request meanwhile, if one comes back).
    async fn connect(self) -> io::Result<CountedStream> {
        let permit = tokio::time::timeout(self.connect_timeout, self.cap.0.clone().acquire_owned())
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "origin_client.max_connections are open; none came free in {:?}",
                        self.connect_timeout
                    ),
                )
            })?
            .expect("the connection cap is never closed");
        let region = self.region.clone();
        let stream = self.dial().await?;
        Ok(CountedStream::new(stream, permit, region))
    }

    async fn dial(self) -> io::Result<TokioIo<TcpStream>> {
        let addresses: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => {
                let lookup = self
                    .resolver
                    .lookup_ip(&*self.host)
                    .await
                    .map_err(|e| io::Error::other(format!("resolving {}: {e}", self.host)))?;
                lookup.iter().map(|ip| SocketAddr::new(ip, self.port)).collect()
            }
        };
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, format!("{} has no address", self.host));
        for address in addresses {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    return Ok(TokioIo::new(stream));
                }
                Ok(Err(e)) => last_error = io::Error::new(e.kind(), format!("connecting to {address}: {e}")),
                Err(_) => {
                    last_error = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {address}: no answer in {:?}", self.connect_timeout),
                    )
                }
            }
        }
        Err(last_error)
    }
}

/// An origin connection holding its place under the cap until it closes.
pub struct CountedStream {
    inner: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
    open: metrics::Gauge,
}

impl CountedStream {
    fn new(inner: TokioIo<TcpStream>, permit: OwnedSemaphorePermit, region: Arc<str>) -> Self {
        let open = metrics::gauge!(telemetry::ORIGIN_CONNECTIONS, "region" => region.to_string());
        open.increment(1.0);
        Self {
            inner,
            _permit: permit,
            open,
        }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl hyper::rt::Read for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CountedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl Connection for CountedStream {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl tower_service::Service<Uri> for OriginConnector {
    type Response = CountedStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _authority_the_client_signed: Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// The TLS roots for origins: webpki's, the system's, and an optional PEM file.
pub fn tls_config(ca_file: Option<&Path>) -> io::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)?;
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<_, _>>()?;
        if certs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The DNS resolver of origin connections, from the system's configuration.
pub fn resolver() -> io::Result<Arc<TokioResolver>> {
    let resolver = TokioResolver::builder_tokio()
        .map_err(|e| io::Error::other(format!("reading the system DNS configuration: {e}")))?
        .build()
        .map_err(|e| io::Error::other(format!("starting the DNS resolver: {e}")))?;
    Ok(Arc::new(resolver))
}

/// An HTTPS-or-HTTP connector to `origin`, HTTP/1.1 only: the request's URI names
/// the origin (one connection pool per origin, whatever Host the client sent) while
/// its Host header stays the client's, which h2's `:authority` could not carry.
pub fn https_connector(
    region: &str,
    origin: &Endpoint,
    tls: rustls::ClientConfig,
    resolver: Arc<TokioResolver>,
    connect_timeout: Duration,
    cap: ConnectionCap,
) -> io::Result<HttpsConnector<OriginConnector>> {
    let server_name = ServerName::try_from(origin.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", origin.host)))?;
    let inner = OriginConnector {
        host: origin.host.as_str().into(),
        port: origin.port,
        resolver,
        connect_timeout,
        cap,
        region: region.into(),
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .with_server_name_resolver(FixedServerNameResolver::new(server_name))
        .enable_http1()
        .wrap_connector(inner))
}
