//! The origin's keys, as an S3 server with temporary credentials holds them: the
//! origin's and the reader's fixed keys, plus keys a test issues (a Secret's new
//! keys, an STS's temporary keys) with an optional expiry, which it may revoke.
//! An unknown key may be looked up (from an STS the test runs) on first use.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};

/// A key's secret and when it stops being accepted.
#[derive(Clone, Debug)]
pub struct Key {
    pub secret: String,
    pub expires: Option<SystemTime>,
}

type Lookup = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Key>> + Send>> + Send + Sync>;

#[derive(Default)]
pub struct KeyRing {
    keys: Mutex<HashMap<String, Key>>,
    /// Issued keys (every key but the fixed two): they read every bucket.
    issued: Mutex<std::collections::HashSet<String>>,
    lookup: Mutex<Option<Lookup>>,
    /// The access key of each signed request whose key was accepted, in order
    /// (before its signature is checked).
    pub used: Mutex<Vec<String>>,
    /// Requests refused for an expired key.
    pub expired: Mutex<Vec<String>>,
    /// Requests refused for a key it does not know (or revoked).
    pub unknown: Mutex<Vec<String>>,
}

impl KeyRing {
    pub fn fixed(keys: &[(&str, &str)]) -> Self {
        let ring = Self::default();
        for (access, secret) in keys {
            ring.keys.lock().unwrap().insert(
                (*access).to_owned(),
                Key {
                    secret: (*secret).to_owned(),
                    expires: None,
                },
            );
        }
        ring
    }

    /// Accepts `access` (reading every bucket) until `expires`.
    pub fn issue(&self, access: &str, secret: &str, expires: Option<SystemTime>) {
        self.issued.lock().unwrap().insert(access.to_owned());
        self.keys.lock().unwrap().insert(
            access.to_owned(),
            Key {
                secret: secret.to_owned(),
                expires,
            },
        );
    }

    /// Refuses `access` from now on (`InvalidAccessKeyId`).
    pub fn revoke(&self, access: &str) {
        self.keys.lock().unwrap().remove(access);
        self.issued.lock().unwrap().remove(access);
    }

    /// Asks `lookup` about keys the ring does not know; a key it returns is issued.
    pub fn set_lookup<F, Fut>(&self, lookup: F)
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Key>> + Send + 'static,
    {
        *self.lookup.lock().unwrap() = Some(Arc::new(move |access| Box::pin(lookup(access))));
    }

    pub fn is_issued(&self, access: &str) -> bool {
        self.issued.lock().unwrap().contains(access)
    }

    /// The distinct access keys used so far, in order of first use.
    pub fn used_keys(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for key in self.used.lock().unwrap().iter() {
            if !seen.contains(key) {
                seen.push(key.clone());
            }
        }
        seen
    }
}

/// The ring as s3s asks it for a request's secret.
pub struct Auth(pub Arc<KeyRing>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        let known = self.0.keys.lock().unwrap().get(access_key).cloned();
        let key = match known {
            Some(key) => Some(key),
            None => {
                let lookup = self.0.lookup.lock().unwrap().clone();
                match lookup {
                    Some(lookup) => match lookup(access_key.to_owned()).await {
                        Some(key) => {
                            self.0.issue(access_key, &key.secret, key.expires);
                            Some(key)
                        }
                        None => None,
                    },
                    None => None,
                }
            }
        };
        let Some(key) = key else {
            self.0.unknown.lock().unwrap().push(access_key.to_owned());
            return Err(s3_error!(InvalidAccessKeyId));
        };
        if key.expires.is_some_and(|t| t <= SystemTime::now()) {
            self.0.expired.lock().unwrap().push(access_key.to_owned());
            return Err(s3_error!(ExpiredToken, "The provided token has expired."));
        }
        self.0.used.lock().unwrap().push(access_key.to_owned());
        Ok(SecretKey::from(key.secret))
    }
}
