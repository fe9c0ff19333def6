//! The proxy's own read credentials as fills use them: a snapshot that each fill
//! signs with, kept fresh by one background task.
//!
//! The sources are `aws-config`'s providers (web identity, container, process,
//! assume role) and a Kubernetes Secret directory read here. Keys with an expiry
//! are fetched again at expiry minus a margin (a quarter of their lifetime, 1 to 5
//! minutes, never more than half of it), a little earlier at random so that a
//! region's nodes do not ask STS at the same instant. A failure keeps the keys
//! while they are valid and tries again with backoff. An origin that refuses a
//! fill's keys (`ExpiredToken`, `InvalidAccessKeyId`, `SignatureDoesNotMatch`)
//! forces one refresh at once, shared by every fill refused at that moment.
//!
//! Nothing here logs, counts or returns a secret: errors are the providers' own
//! (which name files, endpoints and fields, never values), keys appear only in
//! [`ProxyCredentials`], whose `Debug` shows the access key id alone.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use aws_config::ecs::EcsCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{future, ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::{watch, Notify};

use crate::config::{CredentialSource, CredentialsConfig};
use crate::s3::keys::{read_dir_keys, ProxyCredentials};
use crate::telemetry;

/// One attempt to get credentials gives up after this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The start waits this long for the first attempt; a source slower than that is
/// not ready until it answers.
const START_PATIENCE: Duration = Duration::from_secs(10);
/// The refresh margin before expiry: a quarter of the lifetime, within these bounds.
const MIN_MARGIN: Duration = Duration::from_secs(60);
const MAX_MARGIN: Duration = Duration::from_secs(300);
/// Credentials without an expiry (a `credential_process` that gives none) are
/// fetched again this often; a Secret directory is read every `poll_interval`.
const NO_EXPIRY_REFRESH: Duration = Duration::from_secs(15 * 60);
/// Backoff after failed attempts: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));
/// A forced refresh that brought nothing new is not forced again before this.
const FORCED_SPACING: Duration = Duration::from_secs(5);

/// The keys a fill signs with, and which refresh brought them.
#[derive(Clone)]
pub struct Snapshot {
    pub keys: Arc<ProxyCredentials>,
    pub expires: Option<SystemTime>,
    /// Grows each time the keys change.
    pub generation: u64,
}

#[derive(Default)]
struct State {
    current: Option<Snapshot>,
    /// Why the last attempt failed, when it did.
    error: Option<String>,
}

/// The fill credentials of one process.
pub struct FillCredentials {
    source: &'static str,
    state: RwLock<State>,
    refresher: Option<Refresher>,
}

struct Refresher {
    provider: SharedCredentialsProvider,
    /// How often credentials without an expiry are fetched again.
    poll: Duration,
    /// Wakes the task for a forced refresh.
    kick: Arc<Notify>,
    /// Attempts made so far (a forced refresh waits for the next).
    attempts: watch::Sender<u64>,
    /// When a refresh was last forced; held while one is.
    forced: tokio::sync::Mutex<Option<Instant>>,
}

impl FillCredentials {
    /// The credentials `config` describes, `None` when the proxy has none. A source
    /// that refreshes gets its task, and its first attempt is awaited (up to
    /// [`START_PATIENCE`]): a failure leaves the node not ready, never stops it.
    pub async fn start(config: &CredentialsConfig) -> Option<Arc<Self>> {
        let source = config.source.name();
        let static_keys = match &config.source {
            CredentialSource::Static(None) => return None,
            CredentialSource::Static(Some(keys)) if config.assume_role.is_none() => Some(keys.clone()),
            _ => None,
        };
        if let Some(keys) = static_keys {
            return Some(Arc::new(Self::fixed(source, keys)));
        }
        let (provider, poll) = provider(config).await;
        Some(Self::refreshing(source, provider, poll).await)
    }

    /// Credentials from any provider (the AWS SDK's default chain, for `prefetch`),
    /// refreshed as a configured source's are.
    pub async fn from_provider(source: &'static str, provider: SharedCredentialsProvider) -> Arc<Self> {
        Self::refreshing(source, provider, NO_EXPIRY_REFRESH).await
    }

    async fn refreshing(source: &'static str, provider: SharedCredentialsProvider, poll: Duration) -> Arc<Self> {
        let credentials = Arc::new(Self {
            source,
            state: RwLock::default(),
            refresher: Some(Refresher {
                provider,
                poll,
                kick: Arc::default(),
                attempts: watch::Sender::new(0),
                forced: tokio::sync::Mutex::new(None),
            }),
        });
        let mut attempts = credentials.refresher.as_ref().expect("refresher").attempts.subscribe();
        tokio::spawn(refresh(Arc::downgrade(&credentials)));
        let _ = tokio::time::timeout(START_PATIENCE, attempts.wait_for(|n| *n > 0)).await;
        credentials
    }

    /// Keys that never change (`static`).
    pub fn fixed(source: &'static str, keys: ProxyCredentials) -> Self {
        Self {
            source,
            state: RwLock::new(State {
                current: Some(Snapshot {
                    keys: Arc::new(keys),
                    expires: None,
                    generation: 1,
                }),
                error: None,
            }),
            refresher: None,
        }
    }

    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The keys to sign with now: none before the first success or once they expired.
    pub fn current(&self) -> Option<Snapshot> {
        let state = self.state.read().expect("credentials state");
        state
            .current
            .clone()
            .filter(|s| s.expires.is_none_or(|t| t > SystemTime::now()))
    }

    /// Why fills cannot be signed now, when they cannot: `/readyz`'s reason.
    pub fn unready(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let state = self.state.read().expect("credentials state");
        let why = match (&state.current, &state.error) {
            (_, Some(error)) => format!("the last refresh failed: {error}"),
            (Some(expired), None) => format!("expired {} s ago", ago(expired.expires)),
            (None, None) => "not loaded yet".into(),
        };
        Some(format!("fill credentials (source {}): none valid; {why}", self.source))
    }

    /// The origin refused keys of `generation`: refreshes once (shared by every fill
    /// refused meanwhile) and returns newer keys, if the source has any.
    pub async fn rejected(&self, generation: u64) -> Option<Snapshot> {
        let refresher = self.refresher.as_ref()?;
        let mut forced = refresher.forced.lock().await;
        if let Some(current) = self.current().filter(|c| c.generation != generation) {
            return Some(current);
        }
        if forced.is_some_and(|at| at.elapsed() < FORCED_SPACING) {
            return None;
        }
        let mut attempts = refresher.attempts.subscribe();
        let before = *attempts.borrow_and_update();
        refresher.kick.notify_one();
        metrics::counter!(telemetry::CREDENTIAL_FORCED_REFRESHES, "source" => self.source).increment(1);
        let _ = tokio::time::timeout(ATTEMPT_TIMEOUT, attempts.wait_for(|n| *n > before)).await;
        *forced = Some(Instant::now());
        self.current().filter(|c| c.generation != generation)
    }

    /// Sets `s3accel_credential_expiry_seconds` (before a scrape).
    pub fn publish_gauges(&self) {
        let expires = self
            .state
            .read()
            .expect("credentials state")
            .current
            .as_ref()
            .and_then(|s| s.expires);
        if let Some(expires) = expires {
            let left = match expires.duration_since(SystemTime::now()) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            };
            metrics::gauge!(telemetry::CREDENTIAL_EXPIRY, "source" => self.source).set(left);
        }
    }

    /// One attempt: the provider's answer replaces the keys (when they differ) or
    /// records why there is none. Returns when to try again.
    async fn attempt(&self, refresher: &Refresher, failures: &mut u32) -> Duration {
        let asked = SystemTime::now();
        let answer = match tokio::time::timeout(ATTEMPT_TIMEOUT, refresher.provider.provide_credentials()).await {
            Ok(Ok(credentials)) => Ok(credentials),
            Ok(Err(error)) => Err(crate::error::error_chain(&error)),
            Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
        };
        let mut state = self.state.write().expect("credentials state");
        let credentials = match answer {
            Ok(credentials) => credentials,
            Err(error) => {
                *failures += 1;
                metrics::counter!(telemetry::CREDENTIAL_REFRESHES, "source" => self.source, "outcome" => "error")
                    .increment(1);
                let valid = state
                    .current
                    .as_ref()
                    .is_some_and(|s| s.expires.is_none_or(|t| t > SystemTime::now()));
                tracing::warn!(
                    source = self.source,
                    failures = *failures,
                    %error,
                    valid,
                    "fill credentials not refreshed; keeping the current ones while they are valid"
                );
                state.error = Some(error);
                return backoff(*failures);
            }
        };
        *failures = 0;
        state.error = None;
        let keys = ProxyCredentials {
            access_key_id: credentials.access_key_id().to_owned(),
            secret_access_key: credentials.secret_access_key().to_owned(),
            session_token: credentials.session_token().map(str::to_owned),
        };
        let expires = credentials.expiry();
        // Once set, `current` is only ever replaced: its generation is the count of
        // changes so far.
        let (keys, generation, changed) = match state.current.take() {
            Some(current) if *current.keys == keys => (current.keys, current.generation, false),
            current => (Arc::new(keys), current.map_or(1, |c| c.generation + 1), true),
        };
        state.current = Some(Snapshot {
            keys,
            expires,
            generation,
        });
        drop(state);
        let outcome = if changed { "ok" } else { "unchanged" };
        metrics::counter!(telemetry::CREDENTIAL_REFRESHES, "source" => self.source, "outcome" => outcome).increment(1);
        let expires_in = expires.and_then(|t| t.duration_since(SystemTime::now()).ok());
        if changed {
            tracing::info!(
                source = self.source,
                generation,
                expires_in_s = expires_in.map(|d| d.as_secs()),
                "fill credentials refreshed"
            );
        }
        match (expires, expires_in) {
            (None, _) => refresher.poll,
            (Some(_), None) => backoff(1),
            (Some(expires), Some(left)) => {
                let lifetime = expires.duration_since(asked).unwrap_or(left);
                refresh_in(lifetime, left, fastrand::f64())
            }
        }
    }
}

/// Seconds since `expires` (0 when it is ahead or unknown).
fn ago(expires: Option<SystemTime>) -> u64 {
    expires
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or(0, |d| d.as_secs())
}

/// When keys with `lifetime`, `left` of it to run, are fetched again: `left` minus
/// the margin, minus up to a fifth of the margin more (`random` in 0..1).
fn refresh_in(lifetime: Duration, left: Duration, random: f64) -> Duration {
    let margin = (lifetime / 4).clamp(MIN_MARGIN, MAX_MARGIN).min(lifetime / 2);
    let early = margin + margin.mul_f64(random.clamp(0.0, 1.0) * 0.2);
    left.saturating_sub(early).max(Duration::from_millis(200))
}

/// The wait after `failures` failed attempts in a row: doubling, capped, ±20 %.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF
        .0
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(BACKOFF.1);
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// The task: an attempt, then a wait until the next one is due or a fill forces it.
/// It ends when the credentials are dropped.
async fn refresh(credentials: Weak<FillCredentials>) {
    let mut failures = 0;
    loop {
        let Some(strong) = credentials.upgrade() else {
            return;
        };
        let refresher = strong.refresher.as_ref().expect("a refreshing source");
        let wait = strong.attempt(refresher, &mut failures).await;
        refresher.attempts.send_modify(|n| *n += 1);
        let kick = refresher.kick.clone();
        // The wait holds no reference: dropping the credentials ends the task at
        // its next wake-up. A kick meanwhile is kept by `Notify` until then.
        drop(strong);
        let _ = tokio::time::timeout(wait, kick.notified()).await;
    }
}

/// The provider of a refreshing source, and how often keys without expiry are
/// fetched again.
async fn provider(config: &CredentialsConfig) -> (SharedCredentialsProvider, Duration) {
    let region = Region::new(config.sts_region.clone());
    let mut poll = NO_EXPIRY_REFRESH;
    let base = match &config.source {
        CredentialSource::Static(keys) => {
            let keys = keys.clone().expect("static keys to assume a role with");
            SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token,
                None,
                "s3-accel-static",
            ))
        }
        CredentialSource::File { dir, poll: every } => {
            poll = *every;
            SharedCredentialsProvider::new(SecretDir { dir: dir.clone() })
        }
        CredentialSource::WebIdentity {
            token_file,
            role_arn,
            session_name,
        } => SharedCredentialsProvider::new(
            WebIdentityTokenCredentialsProvider::builder()
                .configure(&ProviderConfig::without_region().with_region(Some(region.clone())))
                .static_configuration(StaticConfiguration {
                    web_identity_token_file: token_file.clone(),
                    role_arn: role_arn.clone(),
                    session_name: session_name.clone(),
                })
                .build(),
        ),
        CredentialSource::Container => SharedCredentialsProvider::new(EcsCredentialsProvider::builder().build()),
        CredentialSource::Process { command } => SharedCredentialsProvider::new(
            aws_config::credential_process::CredentialProcessProvider::new(command.clone()),
        ),
    };
    let Some(role) = &config.assume_role else {
        return (base, poll);
    };
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(base)
        .load()
        .await;
    let mut builder = AssumeRoleProvider::builder(role.role_arn.clone())
        .session_name(role.session_name.clone())
        .configure(&sdk);
    if let Some(id) = &role.external_id {
        builder = builder.external_id(id.clone());
    }
    if let Some(duration) = role.duration {
        builder = builder.session_length(duration);
    }
    (SharedCredentialsProvider::new(builder.build().await), poll)
}

/// A directory mounted from a Kubernetes Secret: `accessKey`, `secretKey` and
/// optionally `sessionToken`, read whole on every refresh. Kubelet swaps the files
/// by renaming the `..data` symlink, so a read sees the old set or the new one;
/// an incomplete set is an error, and the last good keys stay.
#[derive(Debug)]
struct SecretDir {
    dir: PathBuf,
}

impl ProvideCredentials for SecretDir {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(
            read_dir_keys(&self.dir)
                .map(|keys| {
                    aws_credential_types::Credentials::new(
                        keys.access_key_id,
                        keys.secret_access_key,
                        keys.session_token,
                        None,
                        "s3-accel-secret-dir",
                    )
                })
                .map_err(CredentialsError::provider_error),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn refresh_comes_a_quarter_of_the_lifetime_early_within_bounds() {
        // An hour: the quarter (15 min) is capped at 5 min, plus up to a fifth.
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_in(hour, hour, 0.0), hour - 5 * MIN);
        assert_eq!(refresh_in(hour, hour, 1.0), hour - 6 * MIN);
        // 15 minutes: a quarter.
        let quarter_hour = 15 * MIN;
        assert_eq!(refresh_in(quarter_hour, quarter_hour, 0.0), Duration::from_secs(675));
        // 3 minutes: the quarter is under the floor, so a minute.
        assert_eq!(refresh_in(3 * MIN, 3 * MIN, 0.0), 2 * MIN);
        // 20 minutes: a quarter, 5 min.
        assert_eq!(refresh_in(20 * MIN, 20 * MIN, 0.0), 15 * MIN);
        // 8 s (a test's STS): never more than half the lifetime early.
        let short = Duration::from_secs(8);
        assert_eq!(refresh_in(short, short, 0.0), Duration::from_secs(4));
        // Already late: soon, not at once in a loop.
        assert_eq!(
            refresh_in(hour, Duration::from_secs(10), 0.5),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        for (failures, nominal) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)] {
            let wait = backoff(failures).as_secs_f64();
            assert!(wait >= nominal * 0.8 && wait <= nominal * 1.2, "{failures}: {wait}");
        }
    }

    #[tokio::test]
    async fn a_secret_directory_swapped_by_its_data_link_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = |name: &str, access: &str, secret: Option<&str>| {
            let data = root.join(name);
            std::fs::create_dir(&data).unwrap();
            std::fs::write(data.join("accessKey"), access).unwrap();
            if let Some(secret) = secret {
                std::fs::write(data.join("secretKey"), secret).unwrap();
            }
            std::os::unix::fs::symlink(name, root.join("..data_tmp")).unwrap();
            std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        };
        version("..v1", "AKIAONE", Some("one"));
        for file in ["accessKey", "secretKey"] {
            std::os::unix::fs::symlink(format!("..data/{file}"), root.join(file)).unwrap();
        }
        let config = CredentialsConfig {
            source: CredentialSource::File {
                dir: root.to_path_buf(),
                poll: Duration::from_millis(50),
            },
            ..CredentialsConfig::default()
        };
        let credentials = FillCredentials::start(&config).await.unwrap();
        let first = credentials.current().unwrap();
        assert_eq!(first.keys.access_key_id, "AKIAONE");
        // An incomplete new version keeps the last good keys.
        version("..v2", "AKIATWO", None);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kept = credentials.current().unwrap();
        assert_eq!(
            (kept.keys.access_key_id.as_str(), kept.generation),
            ("AKIAONE", first.generation)
        );
        assert!(credentials
            .state
            .read()
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("secretKey"));
        version("..v3", "AKIATHREE", Some("three"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while credentials.current().unwrap().keys.access_key_id != "AKIATHREE" {
            assert!(Instant::now() < deadline, "the new version was never read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last = credentials.current().unwrap();
        assert_eq!(last.keys.secret_access_key, "three");
        assert!(last.generation > first.generation);
        assert!(credentials.unready().is_none());
    }
}
