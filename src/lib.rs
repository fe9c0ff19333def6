//! s3-accel: a GET-only, caching, read-through accelerator for S3-compatible object
//! storage. `main.rs` parses flags; everything else lives here, testable in-process.

pub mod admin;
mod app;
pub mod body;
pub mod cache;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod error;
pub mod fetch;
pub mod grants;
pub mod herd;
pub mod origin;
pub mod peers;
pub mod pins;
pub mod prefetch;
pub mod proxy;
pub mod s3;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use app::App;
pub use body::{BoxError, ProxyBody};
pub use config::{Cli, Config};
