//! Access keys: the proxy's own ([`ProxyCredentials`], as a Kubernetes Secret
//! directory holds them) and those it verifies SigV4 for ([`VerifiedKeys`],
//! `verified_keys`: one `ACCESS_KEY_ID SECRET_ACCESS_KEY` per line, `#` starts a
//! comment, read again when its contents change; removing a key revokes it at the
//! next read; a file that does not read keeps the last good keys).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A key pair (and session token) requests are signed with: the proxy's own, for
/// fills. `Debug` shows the access key id alone.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// The files of a Secret directory (`kubectl create secret generic --from-literal=accessKey=...`).
pub const ACCESS_KEY_FILE: &str = "accessKey";
pub const SECRET_KEY_FILE: &str = "secretKey";
pub const SESSION_TOKEN_FILE: &str = "sessionToken";

/// The keys in a Secret directory, or what is wrong with them (naming the file,
/// never its contents). Values are trimmed: `--from-file` keeps a final newline.
pub fn read_dir_keys(dir: &Path) -> Result<ProxyCredentials, String> {
    let read = |name: &str, required: bool| -> Result<Option<String>, String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
            Ok(_) if required => Err(format!("{} is empty", path.display())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    let access_key_id = read(ACCESS_KEY_FILE, true)?.expect("required");
    let secret_access_key = read(SECRET_KEY_FILE, true)?.expect("required");
    let session_token = read(SESSION_TOKEN_FILE, false)?;
    Ok(ProxyCredentials {
        access_key_id,
        secret_access_key,
        session_token,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("line {0} is not `ACCESS_KEY_ID SECRET_ACCESS_KEY`")]
    Line(usize),
    #[error("no key in the file")]
    Empty,
}

pub struct VerifiedKeys {
    keys: RwLock<Arc<HashMap<String, String>>>,
}

impl VerifiedKeys {
    pub fn from_text(text: &str) -> Result<Self, KeyFileError> {
        Ok(Self {
            keys: RwLock::new(Arc::new(parse(text)?)),
        })
    }

    /// The secret of `access_key`, if s3-accel verifies it.
    pub fn secret(&self, access_key: &str) -> Option<String> {
        self.keys.read().expect("verified keys").get(access_key).cloned()
    }

    pub fn contains(&self, access_key: &str) -> bool {
        self.keys.read().expect("verified keys").contains_key(access_key)
    }

    /// Reads `path` every `interval`, taking its keys when its contents change.
    pub async fn watch(self: Arc<Self>, path: PathBuf, interval: Duration, loaded: String) {
        let mut last = loaded;
        loop {
            tokio::time::sleep(interval).await;
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text == last {
                continue;
            }
            match parse(&text) {
                Ok(keys) => {
                    tracing::info!(path = %path.display(), keys = keys.len(), "verified keys reloaded");
                    *self.keys.write().expect("verified keys") = Arc::new(keys);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "verified keys not reloaded; keeping the last good ones")
                }
            }
            last = text;
        }
    }
}

fn parse(text: &str) -> Result<HashMap<String, String>, KeyFileError> {
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [key, secret] => keys.insert((*key).to_owned(), (*secret).to_owned()),
            _ => return Err(KeyFileError::Line(n + 1)),
        };
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_read_and_refuse() {
        let keys =
            VerifiedKeys::from_text("# training jobs\nAKIA1 s3cr3t/+x\n\n  AKIA2   other  # a comment\n").unwrap();
        assert_eq!(keys.secret("AKIA1").as_deref(), Some("s3cr3t/+x"));
        assert_eq!(keys.secret("AKIA2").as_deref(), Some("other"));
        assert_eq!(keys.secret("AKIA3"), None);
        assert_eq!(VerifiedKeys::from_text("AKIA1").err(), Some(KeyFileError::Line(1)));
        assert_eq!(VerifiedKeys::from_text("# none\n").err(), Some(KeyFileError::Empty));
    }

    #[tokio::test]
    async fn a_key_removed_from_the_file_is_revoked_at_the_next_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let text = "AKIA1 one\nAKIA2 two\n";
        std::fs::write(&path, text).unwrap();
        let keys = Arc::new(VerifiedKeys::from_text(text).unwrap());
        tokio::spawn(
            keys.clone()
                .watch(path.clone(), Duration::from_millis(20), text.to_owned()),
        );
        std::fs::write(&path, "AKIA2 two\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!keys.contains("AKIA1"));
        // A file that does not read keeps the last good keys.
        std::fs::write(&path, "garbage\n").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(keys.contains("AKIA2"));
    }
}
