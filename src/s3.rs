//! The S3 protocol surface: request classification, error documents, request ids.

pub mod classify;
pub mod xml;

pub use classify::{classify, ObjectRequest, Operation, RequestError, ResourceType};

/// A fresh request id in S3's shape: 16 upper-case hex digits.
pub fn new_request_id() -> String {
    format!("{:016X}", fastrand::u64(..))
}

/// The name of the header every response carries.
pub const REQUEST_ID: &str = "x-amz-request-id";
