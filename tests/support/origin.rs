//! The in-process S3 origin of `s3-accel-testkit`, with the tests' own client.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use s3_accel_testkit::{Origin, OriginOptions};

pub use s3_accel_testkit::origin::{OriginStats, ACCESS_KEY, SECRET_KEY};

use super::client::{Call, Reply, TestClient};
use super::signing::{Credentials, Signing};

pub struct TestOrigin {
    pub address: SocketAddr,
    pub stats: Arc<OriginStats>,
    pub client: TestClient,
    origin: Origin,
}

impl TestOrigin {
    /// s3s-fs as it is (ignoring conditionals), `domains` enabling virtual-hosted style.
    pub async fn start(domains: &[&str]) -> Self {
        Self::start_with(OriginOptions {
            domains: domains.iter().map(|d| d.to_string()).collect(),
            ..OriginOptions::default()
        })
        .await
    }

    /// An origin that honors conditional requests, as production origins do.
    pub async fn honoring() -> Self {
        Self::start_with(OriginOptions {
            honor_conditionals: true,
            ..OriginOptions::default()
        })
        .await
    }

    /// An origin with any options (shaping, conditionals, domains).
    pub async fn start_with(options: OriginOptions) -> Self {
        let origin = Origin::start(options, None).await.unwrap();
        Self {
            address: origin.address,
            stats: origin.stats.clone(),
            client: TestClient::default(),
            origin,
        }
    }

    pub fn url(&self) -> String {
        self.origin.url()
    }

    /// Who may read what; change it while the origin runs.
    pub fn policy(&self) -> &s3_accel_testkit::access::Policy {
        &self.origin.policy
    }

    /// The keys it accepts; issue and revoke them while it runs.
    pub fn keys(&self) -> &Arc<s3_accel_testkit::keys::KeyRing> {
        &self.origin.keys
    }

    pub fn credentials() -> Credentials {
        Origin::credentials()
    }

    pub fn signing() -> Signing {
        Origin::signing()
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let reply = self
            .send(&Call::new(Method::PUT, &format!("/{bucket}"), &Self::signing()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "create bucket {bucket}: {}", reply.text());
    }

    /// Stores an object with a signed PUT; `raw_key` is already percent-encoded.
    pub async fn put(&self, bucket: &str, raw_key: &str, data: &[u8], headers: &[(&str, &str)]) {
        self.origin
            .put(bucket, raw_key, Bytes::copy_from_slice(data), headers)
            .await
            .unwrap_or_else(|e| panic!("put {bucket}/{raw_key}: {e}"));
    }

    /// Flips one byte of `bucket/key` at `offset`, in place at the origin: its ETag
    /// and checksums stay (a faulty origin disk).
    pub fn corrupt(&self, bucket: &str, key: &str, offset: u64) {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.origin.object_file(bucket, key))
            .unwrap();
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, offset).unwrap();
        byte[0] ^= 0x08;
        file.write_all_at(&byte, offset).unwrap();
    }

    /// Part reads of `bucket/raw_key` answer as if it was uploaded in these parts.
    pub fn set_parts(&self, bucket: &str, raw_key: &str, sizes: &[u64]) {
        self.origin.set_parts(bucket, raw_key, sizes);
    }

    pub async fn send(&self, call: &Call) -> Reply {
        self.client.send(self.address, call).await.unwrap()
    }
}
