//! `[credentials]`: where the proxy's own read credentials come from. Mistakes an
//! operator can fix only by editing the deployment (a missing key, a Secret
//! directory without `accessKey`) stop the start; a source that may recover on its
//! own (a token file not yet projected, an STS outage) leaves the node not ready.

use std::path::PathBuf;
use std::time::Duration;

use super::file::{AssumeRoleSection, CredentialsSection};
use super::{duration_or, invalid, ConfigError};
use crate::s3::keys::{read_dir_keys, ProxyCredentials};

#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// Keys from the config file or the environment, read once; `None`: the proxy
    /// has none and fills only what clients' own signatures can.
    Static(Option<ProxyCredentials>),
    /// A directory mounted from a Kubernetes Secret, read again every `poll`.
    File { dir: PathBuf, poll: Duration },
    /// `AssumeRoleWithWebIdentity` with a projected service-account token, read
    /// again on every refresh.
    WebIdentity {
        token_file: PathBuf,
        role_arn: String,
        session_name: String,
    },
    /// The container-credentials endpoint of `AWS_CONTAINER_CREDENTIALS_FULL_URI`
    /// (EKS Pod Identity, CoreWeave's OIDC exchange), with the token of
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    Container,
    /// A `credential_process` command printing the credentials JSON.
    Process { command: String },
}

impl CredentialSource {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Static(_) => "static",
            Self::File { .. } => "file",
            Self::WebIdentity { .. } => "web_identity",
            Self::Container => "container",
            Self::Process { .. } => "process",
        }
    }
}

/// A role assumed with the source's credentials; its keys sign the fills.
#[derive(Debug, Clone)]
pub struct AssumeRole {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    /// STS's `DurationSeconds`; STS's default (an hour) when `None`.
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub source: CredentialSource,
    pub assume_role: Option<AssumeRole>,
    /// The region STS requests are signed for.
    pub sts_region: String,
}

impl CredentialsConfig {
    /// Whether the proxy has (or will have) credentials of its own.
    pub fn configured(&self) -> bool {
        !matches!(self.source, CredentialSource::Static(None))
    }
}

impl Default for CredentialsConfig {
    fn default() -> Self {
        Self {
            source: CredentialSource::Static(None),
            assume_role: None,
            sts_region: "us-east-1".into(),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub(super) fn credentials_config(section: &CredentialsSection) -> Result<CredentialsConfig, ConfigError> {
    let source_name = section.source.as_deref().unwrap_or("static");
    // Each source's keys, refused under another source: a key that does nothing
    // is a mistake to report, not to ignore.
    let keys: [(&str, bool, &str); 8] = [
        ("credentials.access_key_id", section.access_key_id.is_some(), "static"),
        (
            "credentials.secret_access_key",
            section.secret_access_key.is_some(),
            "static",
        ),
        ("credentials.session_token", section.session_token.is_some(), "static"),
        ("credentials.dir", section.dir.is_some(), "file"),
        ("credentials.poll_interval", section.poll_interval.is_some(), "file"),
        ("credentials.token_file", section.token_file.is_some(), "web_identity"),
        ("credentials.role_arn", section.role_arn.is_some(), "web_identity"),
        ("credentials.command", section.command.is_some(), "process"),
    ];
    for (key, set, source) in keys {
        if set && source != source_name {
            return Err(invalid(
                key,
                format!("is for source = \"{source}\", not \"{source_name}\""),
            ));
        }
    }
    if section.session_name.is_some() && source_name != "web_identity" {
        return Err(invalid(
            "credentials.session_name",
            format!("is for source = \"web_identity\", not \"{source_name}\""),
        ));
    }
    let source = match source_name {
        "static" => CredentialSource::Static(static_keys(section)?),
        "file" => {
            let dir = section.dir.as_deref().filter(|d| !d.trim().is_empty()).ok_or_else(|| {
                invalid(
                    "credentials.dir",
                    "source = \"file\" needs the Secret's mounted directory",
                )
            })?;
            let dir = PathBuf::from(dir);
            read_dir_keys(&dir).map_err(|reason| invalid("credentials.dir", reason))?;
            let poll = duration_or(
                section.poll_interval.as_deref(),
                "credentials.poll_interval",
                Duration::from_secs(10),
            )?;
            if poll.is_zero() {
                return Err(invalid("credentials.poll_interval", "must be more than 0"));
            }
            CredentialSource::File { dir, poll }
        }
        "web_identity" => {
            let (token_file, token_key) = match (&section.token_file, env("AWS_WEB_IDENTITY_TOKEN_FILE")) {
                (Some(path), _) => (path.clone(), "credentials.token_file"),
                (None, Some(path)) => (path, "AWS_WEB_IDENTITY_TOKEN_FILE"),
                (None, None) => {
                    return Err(invalid(
                        "credentials.token_file",
                        "source = \"web_identity\" needs the token file (or AWS_WEB_IDENTITY_TOKEN_FILE)",
                    ))
                }
            };
            if token_file.trim().is_empty() {
                return Err(invalid(token_key, "must not be empty"));
            }
            let role_arn = section
                .role_arn
                .clone()
                .or_else(|| env("AWS_ROLE_ARN"))
                .ok_or_else(|| {
                    invalid(
                        "credentials.role_arn",
                        "source = \"web_identity\" needs the role to assume (or AWS_ROLE_ARN)",
                    )
                })?;
            let session_name = section
                .session_name
                .clone()
                .or_else(|| env("AWS_ROLE_SESSION_NAME"))
                .unwrap_or_else(|| "s3-accel".into());
            CredentialSource::WebIdentity {
                token_file: PathBuf::from(token_file),
                role_arn,
                session_name,
            }
        }
        "container" => {
            if env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none()
                && env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
            {
                return Err(invalid(
                    "credentials.source",
                    "source = \"container\" needs AWS_CONTAINER_CREDENTIALS_FULL_URI (or _RELATIVE_URI) in the environment",
                ));
            }
            CredentialSource::Container
        }
        "process" => {
            let command = section
                .command
                .clone()
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| invalid("credentials.command", "source = \"process\" needs the command to run"))?;
            CredentialSource::Process { command }
        }
        other => {
            return Err(invalid(
                "credentials.source",
                format!("`{other}` is not one of static, file, web_identity, container, process"),
            ))
        }
    };
    let assume_role = section.assume_role.as_ref().map(assume_role).transpose()?;
    if assume_role.is_some() && matches!(source, CredentialSource::Static(None)) {
        return Err(invalid(
            "credentials.assume_role",
            "a role is assumed with the source's keys: set them (or AWS_ACCESS_KEY_ID)",
        ));
    }
    let sts_region = section
        .sts_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    Ok(CredentialsConfig {
        source,
        assume_role,
        sts_region,
    })
}

fn static_keys(section: &CredentialsSection) -> Result<Option<ProxyCredentials>, ConfigError> {
    let (access, secret, token, access_key, secret_key) =
        if section.access_key_id.is_some() || section.secret_access_key.is_some() {
            (
                section.access_key_id.clone(),
                section.secret_access_key.clone(),
                section.session_token.clone(),
                "credentials.access_key_id",
                "credentials.secret_access_key",
            )
        } else {
            (
                env("AWS_ACCESS_KEY_ID"),
                env("AWS_SECRET_ACCESS_KEY"),
                env("AWS_SESSION_TOKEN"),
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
            )
        };
    let explicit = section.source.is_some();
    match (access, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(ProxyCredentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        })),
        (None, None) if explicit => Err(invalid(
            "credentials.access_key_id",
            "source = \"static\" needs access_key_id and secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid(secret_key, "is missing: set it with the access key id, or neither")),
        (None, Some(_)) => Err(invalid(access_key, "is missing: set it with the secret access key, or neither")),
    }
}

fn assume_role(section: &AssumeRoleSection) -> Result<AssumeRole, ConfigError> {
    let role_arn = section
        .role_arn
        .clone()
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| invalid("credentials.assume_role.role_arn", "the role to assume is missing"))?;
    let duration = section
        .duration
        .as_deref()
        .map(|text| duration_or(Some(text), "credentials.assume_role.duration", Duration::ZERO))
        .transpose()?;
    if duration.is_some_and(|d| d < Duration::from_secs(1) || d > Duration::from_secs(12 * 3600)) {
        return Err(invalid("credentials.assume_role.duration", "must be from 1s to 12h"));
    }
    Ok(AssumeRole {
        role_arn,
        session_name: section.session_name.clone().unwrap_or_else(|| "s3-accel".into()),
        external_id: section.external_id.clone(),
        duration,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::keys::{ACCESS_KEY_FILE, SECRET_KEY_FILE};

    fn section(text: &str) -> CredentialsSection {
        toml::from_str(text).unwrap()
    }

    fn error(text: &str) -> String {
        credentials_config(&section(text)).unwrap_err().to_string()
    }

    #[test]
    fn a_key_of_another_source_is_refused_by_name() {
        let message = error("source = \"file\"\ndir = \"/x\"\ncommand = \"get-keys\"");
        assert!(message.contains("credentials.command"), "{message}");
        assert!(message.contains("process"), "{message}");
    }

    #[test]
    fn a_half_static_pair_names_the_missing_key() {
        let message = error("access_key_id = \"AKIA\"");
        assert!(message.contains("credentials.secret_access_key"), "{message}");
    }

    #[test]
    fn a_secret_directory_without_its_secret_key_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ACCESS_KEY_FILE), "AKIA\n").unwrap();
        let message = error(&format!("source = \"file\"\ndir = \"{}\"", dir.path().display()));
        assert!(message.contains("credentials.dir"), "{message}");
        assert!(message.contains(SECRET_KEY_FILE), "{message}");
        std::fs::write(dir.path().join(SECRET_KEY_FILE), "shh\n").unwrap();
        let config = credentials_config(&section(&format!(
            "source = \"file\"\ndir = \"{}\"",
            dir.path().display()
        )));
        assert!(matches!(config.unwrap().source, CredentialSource::File { .. }));
        let keys = read_dir_keys(dir.path()).unwrap();
        assert_eq!(
            (keys.access_key_id.as_str(), keys.secret_access_key.as_str()),
            ("AKIA", "shh")
        );
        assert_eq!(keys.session_token, None);
    }

    #[test]
    fn an_unknown_source_and_a_role_without_arn_are_refused() {
        assert!(error("source = \"vault\"").contains("credentials.source"));
        let message = error("source = \"process\"\ncommand = \"x\"\n[assume_role]\nsession_name = \"s\"");
        assert!(message.contains("credentials.assume_role.role_arn"), "{message}");
        let message =
            error("source = \"process\"\ncommand = \"x\"\n[assume_role]\nrole_arn = \"r\"\nduration = \"13h\"");
        assert!(message.contains("credentials.assume_role.duration"), "{message}");
    }

    #[test]
    fn web_identity_takes_its_keys_from_the_file() {
        let config = credentials_config(&section(
            "source = \"web_identity\"\ntoken_file = \"/var/run/token\"\nrole_arn = \"arn:aws:iam::1:role/r\"",
        ))
        .unwrap();
        match config.source {
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
                session_name,
            } => {
                assert_eq!(token_file, PathBuf::from("/var/run/token"));
                assert_eq!(role_arn, "arn:aws:iam::1:role/r");
                assert_eq!(session_name, "s3-accel");
            }
            other => panic!("{other:?}"),
        }
    }
}
