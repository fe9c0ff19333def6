//! What the integration tests share: a real S3 origin, the proxy, a signing client.

pub mod client;
pub mod fault;
pub mod framing;
pub mod origin;
pub mod proxy;
pub mod sts;

pub use client::{Reply, TestClient};
pub use origin::TestOrigin;
pub use proxy::TestProxy;
pub use s3_accel_testkit::{object_bytes, signing, Credentials, Signing};

/// Sends `call` to the proxy and waits (at most a minute) for the whole reply.
pub async fn get(proxy: &TestProxy, call: client::Call) -> Reply {
    tokio::time::timeout(std::time::Duration::from_secs(60), proxy.send(&call))
        .await
        .expect("no hang")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The reply's `x-s3-accel-cache`.
pub fn outcome(reply: &Reply) -> &str {
    reply.header("x-s3-accel-cache").unwrap_or("<none>")
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A free loopback port (bound, then released for a process to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
