//! The origin side: routing hosts to regional origins and talking to them.
//! Knows nothing of the proxy's request path.

mod body;
mod client;
pub mod connect;
pub mod route;
mod sign;

pub use body::{BodyIdleTimeout, IdleTimeoutBody};
pub use client::{error_code, poison, OriginBody, OriginClient, OriginError};
pub use route::{Region, Route, Router, UnknownHost};
pub use sign::{sign_s3, SignError};
