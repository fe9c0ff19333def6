//! TLS termination for the S3 listener: rustls, h2 and HTTP/1.1 by ALPN, and a
//! certificate that can be replaced (on SIGHUP or when its files change) without
//! dropping a connection: new handshakes get the new one.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// The certificate in force, swapped whole on reload.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

impl ReloadableCert {
    pub fn load(config: &TlsConfig) -> io::Result<Arc<Self>> {
        let key = load_certified_key(&config.cert_file, &config.key_file)?;
        let stamp = stamp(&config.cert_file, &config.key_file);
        Ok(Arc::new(Self {
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            current: RwLock::new((Arc::new(key), stamp)),
        }))
    }

    /// Reads the files again. A bad pair is refused and the old certificate stays.
    pub fn reload(&self) -> io::Result<()> {
        let key = load_certified_key(&self.cert_file, &self.key_file)?;
        let stamp = stamp(&self.cert_file, &self.key_file);
        *self.current.write().expect("certificate lock") = (Arc::new(key), stamp);
        tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads when either file's modification time moved.
    fn reload_if_changed(&self) {
        let now = stamp(&self.cert_file, &self.key_file);
        let before = self.current.read().expect("certificate lock").1;
        if now.is_some() && now != before {
            if let Err(error) = self.reload() {
                tracing::warn!(error = %error, "TLS certificate changed but does not load; keeping the old one");
            }
        }
    }

    /// Watches the files every `interval` and on SIGHUP, for as long as the task lives.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(interval);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => self.reload_if_changed(),
                _ = hup => {
                    if let Err(error) = self.reload() {
                        tracing::warn!(error = %error, "SIGHUP: TLS certificate does not load; keeping the old one");
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").0.clone())
    }
}

/// A TLS acceptor that offers h2 and HTTP/1.1.
pub fn acceptor(cert: Arc<ReloadableCert>) -> io::Result<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn stamp(cert: &Path, key: &Path) -> Option<SystemTime> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some(modified(cert)?.max(modified(key)?))
}

pub(crate) fn load_certified_key(cert_file: &Path, key_file: &Path) -> io::Result<CertifiedKey> {
    let context = |path: &Path, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
    };
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert_file)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(context(cert_file, &"no PEM certificate"));
    }
    let key = rustls_pemfile::private_key(&mut std::fs::read(key_file)?.as_slice())?
        .ok_or_else(|| context(key_file, &"no PEM private key"))?;
    let provider = aws_lc_rs::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| context(key_file, &e))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| context(cert_file, &format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}
