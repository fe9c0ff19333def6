//! Who may read what at the test origin, as a production origin decides it: the
//! origin's own key may do anything; a second, reader key reads only the buckets it
//! is given; an unsigned request reads only public-read buckets. Tests change the
//! policy while the origin runs (a bucket made private, a key's access taken away).

use std::collections::HashSet;
use std::sync::Mutex;

use s3s::access::{S3Access, S3AccessContext};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

use crate::origin::ACCESS_KEY;

/// A key that reads the buckets in [`Policy::readable`], and nothing else.
pub const READER_KEY: &str = "AKIATESTREADER";
pub const READER_SECRET: &str = "reader-secret-key-for-tests";

#[derive(Default)]
pub struct Policy {
    /// Buckets the reader key may read.
    pub readable: Mutex<HashSet<String>>,
    /// Buckets anyone may read, unsigned.
    pub public: Mutex<HashSet<String>>,
}

impl Policy {
    pub fn set_readable(&self, bucket: &str, readable: bool) {
        set(&self.readable, bucket, readable);
    }

    pub fn set_public(&self, bucket: &str, public: bool) {
        set(&self.public, bucket, public);
    }
}

fn set(buckets: &Mutex<HashSet<String>>, bucket: &str, on: bool) {
    let mut buckets = buckets.lock().unwrap();
    match on {
        true => buckets.insert(bucket.to_owned()),
        false => buckets.remove(bucket),
    };
}

/// The policy as s3s asks it, before each request's operation runs. Keys a test
/// issued read every bucket.
pub struct Access {
    pub policy: std::sync::Arc<Policy>,
    pub keys: std::sync::Arc<crate::keys::KeyRing>,
}

#[async_trait::async_trait]
impl S3Access for Access {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let read = matches!(cx.s3_op().name(), "GetObject" | "HeadObject");
        let bucket = match cx.s3_path() {
            S3Path::Object { bucket, .. } | S3Path::Bucket { bucket } => Some(bucket.to_string()),
            S3Path::Root => None,
        };
        let allowed = |buckets: &Mutex<HashSet<String>>| {
            read && bucket.as_ref().is_some_and(|b| buckets.lock().unwrap().contains(b))
        };
        let ok = match cx.credentials() {
            Some(credentials) if credentials.access_key == ACCESS_KEY => true,
            Some(credentials) if credentials.access_key == READER_KEY => allowed(&self.policy.readable),
            Some(credentials) => read && self.keys.is_issued(&credentials.access_key),
            None => allowed(&self.policy.public),
        };
        match ok {
            true => Ok(()),
            false => Err(s3_error!(AccessDenied)),
        }
    }
}
