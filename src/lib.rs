//! s3-accel: a GET-only, caching, read-through accelerator for S3-compatible object
//! storage. `main.rs` parses flags; everything else lives here, testable in-process.

pub mod admin;
mod app;
pub mod cache;
pub mod config;
pub mod credentials;
pub mod error;
pub mod origin;
pub mod peers;
pub mod prefetch;
pub mod proxy;
pub mod s3;
pub mod server;
pub mod telemetry;
pub mod tls;

use bytes::Bytes;

pub use app::App;
pub use config::{Cli, Config};

/// The error type of bodies streamed through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy sends.
pub type ProxyBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;
