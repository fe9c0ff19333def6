//! A real STS for the credential tests: moto's server, installed pinned by
//! tests/sts/install.sh (once per test binary) and started once per test.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::OnceCell;

pub struct Moto {
    pub url: String,
    _child: tokio::process::Child,
}

/// moto_server's path, installed at most once per test binary.
async fn installed() -> &'static PathBuf {
    static SERVER: OnceCell<PathBuf> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sts/install.sh");
            let output = tokio::process::Command::new("bash")
                .arg(script)
                .output()
                .await
                .expect("bash runs");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success(),
                "tests/sts/install.sh failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            PathBuf::from(stdout.lines().last().expect("the server's path").trim())
        })
        .await
}

impl Moto {
    pub async fn start() -> Self {
        let server = installed().await;
        let port = super::free_port();
        let child = tokio::process::Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server starts");
        let moto = Self {
            url: format!("http://127.0.0.1:{port}"),
            _child: child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while moto.state().await.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "moto never answered on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    /// The secret of a temporary key moto issued (`AssumeRole*`).
    pub async fn secret(&self, access_key: &str) -> Option<String> {
        secret(&self.url, access_key).await
    }

    async fn state(&self) -> Option<serde_json::Value> {
        state(&self.url).await
    }

    /// Teaches `origin` the keys moto issues, each accepted from its first use for
    /// `lifetime` (a bound a little past its real expiry, which the dump omits).
    pub fn serve_keys_to(&self, origin: &super::TestOrigin, lifetime: Option<Duration>) {
        let url = self.url.clone();
        origin.keys().set_lookup(move |access| {
            let url = url.clone();
            async move {
                Some(s3_accel_testkit::keys::Key {
                    secret: secret(&url, &access).await?,
                    expires: lifetime.map(|l| SystemTime::now() + l),
                })
            }
        });
    }
}

/// moto's state dump (`/moto-api/data.json`).
async fn state(url: &str) -> Option<serde_json::Value> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .get(format!("{url}/moto-api/data.json").parse().ok()?)
        .await
        .ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

async fn secret(url: &str, access_key: &str) -> Option<String> {
    let state = state(url).await?;
    state["sts"]["AssumedRole"]
        .as_array()?
        .iter()
        .find(|role| role["access_key_id"] == access_key)
        .and_then(|role| role["secret_access_key"].as_str().map(str::to_owned))
}
