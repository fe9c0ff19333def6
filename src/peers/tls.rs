//! Mutual TLS on the peer port: each node presents its certificate (its node name
//! in the SAN) and checks the other's against the region's CA; a reader also
//! checks that the certificate names the member the hello claims. The files (what
//! a cert-manager `Certificate` writes into a Secret) are read again when they
//! change, as the peer key is: new handshakes use the new ones.

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::config::{PeerIdentity, PeerTlsConfig};
use crate::tls::load_certified_key;

/// This node's certificate and the region's CA, as last read.
struct Loaded {
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    clients: Arc<dyn ClientCertVerifier>,
    stamp: Option<SystemTime>,
}

pub struct PeerTls {
    files: PeerTlsConfig,
    /// This node's name: its own certificate must carry it.
    node: String,
    provider: Arc<CryptoProvider>,
    loaded: RwLock<Arc<Loaded>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerTls({})", self.files.cert_file.display())
    }
}

impl PeerTls {
    /// Loads the files of node `node`, whose certificate must name it.
    pub fn load(files: &PeerTlsConfig, node: &str) -> io::Result<Arc<Self>> {
        let provider = Arc::new(aws_lc_rs::default_provider());
        let loaded = read(files, node, &provider)?;
        Ok(Arc::new(Self {
            files: files.clone(),
            node: node.to_owned(),
            provider,
            loaded: RwLock::new(Arc::new(loaded)),
        }))
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the files again when one of them changed. Files that do not load
    /// (a Secret caught mid-update) are ignored: the last good ones stay.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        if now.is_none() || now == self.current().stamp {
            return;
        }
        match read(&self.files, &self.node, &self.provider) {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                tracing::info!(cert = %self.files.cert_file.display(), "peer TLS certificate and CA reloaded");
            }
            Err(error) => tracing::warn!(%error, "peer TLS files changed but do not load; keeping the old ones"),
        }
    }

    /// Watches the files every `reload_interval`, for as long as the task lives.
    pub async fn watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.files.reload_interval);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }

    /// The peer listener's TLS: this node's certificate, and a client certificate
    /// signed by the region's CA required of every peer.
    pub fn acceptor(self: &Arc<Self>) -> io::Result<tokio_rustls::TlsAcceptor> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_client_cert_verifier(Arc::new(Peers(self.clone())))
            .with_cert_resolver(Arc::new(Peers(self.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every connection checks the certificates in force: a resumed session would
        // carry a peer's certificate past a CA's removal.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// A reader's TLS to a member it knows by name: the owner's certificate must be
    /// signed by the region's CA and name that member (`chain_only`: any member, for
    /// a hello, whose answer names it; the caller checks the name then).
    pub fn client_config(self: &Arc<Self>, chain_only: bool) -> io::Result<rustls::ClientConfig> {
        let chain_only = chain_only || !self.per_node();
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Owners {
                tls: self.clone(),
                chain_only,
            }))
            .with_client_cert_resolver(Arc::new(Peers(self.clone())));
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }

    /// Whether certificates name their node (`identity = "node"`), rather than only
    /// show a node of the region.
    pub fn per_node(&self) -> bool {
        self.files.identity == PeerIdentity::Node
    }

    fn algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider.signature_verification_algorithms
    }
}

/// Whether `certificate` (a peer's, its chain already checked) names `node`, and
/// only by its exact name: a wildcard would name every node under it.
pub fn names(certificate: &CertificateDer<'_>, node: &str) -> bool {
    let Ok(parsed) = ParsedCertificate::try_from(certificate) else {
        return false;
    };
    let valid = |name: &str| {
        ServerName::try_from(name).is_ok_and(|name| rustls::client::verify_server_name(&parsed, &name).is_ok())
    };
    // A name that differs from the node's in its first label only matches a wildcard.
    let sibling = match node.split_once('.') {
        Some((_, rest)) => format!("s3-accel-wildcard-probe.{rest}"),
        None => "s3-accel-wildcard-probe".to_owned(),
    };
    valid(node) && !valid(&sibling)
}

fn stamp(files: &PeerTlsConfig) -> Option<SystemTime> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some(
        modified(&files.cert_file)?
            .max(modified(&files.key_file)?)
            .max(modified(&files.ca_file)?),
    )
}

fn read(files: &PeerTlsConfig, node: &str, provider: &Arc<CryptoProvider>) -> io::Result<Loaded> {
    let stamp = stamp(files);
    let key = load_certified_key(&files.cert_file, &files.key_file)?;
    // A certificate that does not name this node would leave it out of every
    // peer's region: refused, as a configuration error.
    if files.identity == PeerIdentity::Node && !key.cert.first().is_some_and(|certificate| names(certificate, node)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: the certificate does not name this node ({node}) in its SAN (a wildcard does not count)",
                files.cert_file.display()
            ),
        ));
    }
    let invalid = |e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", files.ca_file.display()))
    };
    let mut roots = RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut std::fs::read(&files.ca_file)?.as_slice()) {
        roots.add(certificate?).map_err(|e| invalid(&e))?;
    }
    if roots.is_empty() {
        return Err(invalid(&"no PEM certificate"));
    }
    let roots = Arc::new(roots);
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| invalid(&e))?;
    Ok(Loaded {
        key: Arc::new(key),
        roots,
        clients,
        stamp,
    })
}

/// This node's certificate, as a server and as a client.
#[derive(Debug)]
struct Peers(Arc<PeerTls>);

impl ResolvesServerCert for Peers {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }
}

impl ResolvesClientCert for Peers {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Every peer that connects must present a certificate signed by the region's CA.
impl ClientCertVerifier for Peers {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms().supported_schemes()
    }
}

/// An owner's certificate: signed by the region's CA and, unless `chain_only`,
/// naming the member asked.
#[derive(Debug)]
struct Owners {
    tls: Arc<PeerTls>,
    chain_only: bool,
}

impl ServerCertVerifier for Owners {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let certificate = ParsedCertificate::try_from(end_entity)?;
        let loaded = self.tls.current();
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &certificate,
            &loaded.roots,
            intermediates,
            now,
            self.tls.algorithms().all,
        )?;
        if !self.chain_only {
            rustls::client::verify_server_name(&certificate, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.tls.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.tls.algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        rcgen::generate_simple_self_signed(names).unwrap().cert.der().clone()
    }

    #[test]
    fn a_certificate_names_a_node_only_by_its_exact_name() {
        assert!(names(&certificate(&["node-1"]), "node-1"));
        assert!(!names(&certificate(&["node-1"]), "node-2"));
        let k8s = "ip-10-0-0-1.ec2.internal";
        assert!(names(&certificate(&[k8s, "other"]), k8s));
        assert!(
            !names(&certificate(&["*.ec2.internal"]), k8s),
            "a wildcard names every node"
        );
        assert!(
            !names(&certificate(&["*.ec2.internal", k8s]), k8s),
            "with a wildcard beside it"
        );
    }
}
