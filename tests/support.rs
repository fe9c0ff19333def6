//! What the integration tests share: a real S3 origin, the proxy, a signing client.

pub mod client;
pub mod fault;
pub mod origin;
pub mod proxy;
pub mod signing;

pub use client::{Reply, TestClient};
pub use origin::TestOrigin;
pub use proxy::TestProxy;
pub use signing::{Credentials, Signing};

/// Deterministic pseudo-random bytes, so every object has distinct content.
pub fn object_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
