//! What the integration tests share: a real S3 origin, the proxy, a signing client.

pub mod client;
pub mod fault;
pub mod framing;
pub mod origin;
pub mod proxy;

pub use client::{Reply, TestClient};
pub use origin::TestOrigin;
pub use proxy::TestProxy;
pub use s3_accel_testkit::{object_bytes, signing, Credentials, Signing};

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
