//! nginx as an S3 caching gateway: installed by `setup-nginx.sh` from Debian's
//! packages, configured from `nginx.conf.template`, run in the foreground.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::target::ProxySettings;

const TEMPLATE: &str = include_str!("../nginx.conf.template");
const SETUP: &str = include_str!("../setup-nginx.sh");

/// Makes sure an nginx with the slice module is installed; the error says why not.
pub fn ensure_installed() -> Result<(), String> {
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(SETUP)
        .output()
        .map_err(|e| format!("running the setup script: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("setup failed");
    Err(why.trim().to_string())
}

pub struct Nginx {
    pub address: SocketAddr,
    master: Child,
}

impl Nginx {
    pub async fn start(settings: &ProxySettings<'_>) -> anyhow::Result<Self> {
        let prefix = settings.dir;
        let address = free_port()?;
        let root = unsafe { libc::geteuid() } == 0;
        let conf = render(&[
            (
                "workers",
                &std::thread::available_parallelism().map_or(1, |n| n.get()).to_string(),
            ),
            ("prefix", &prefix.display().to_string()),
            ("user", if root { "user root root;" } else { "" }),
            ("origin", &settings.origin.to_string()),
            ("listen", &address.to_string()),
            ("slice", &format!("{}k", settings.chunk_size / 1024)),
            ("max_size", &format!("{}k", settings.disk_cache / 1024)),
        ]);
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut master = Command::new("nginx")
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        for _ in 0..100 {
            if let Some(status) = master.try_wait()? {
                let log = std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
                anyhow::bail!("nginx exited ({status}): {log}");
            }
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(Self { address, master });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("nginx did not listen on {address} within 5 s")
    }

    /// The master and its workers.
    pub fn pids(&self) -> Vec<u32> {
        let Some(master) = self.master.id() else {
            return Vec::new();
        };
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
        std::iter::once(master)
            .chain(children.split_whitespace().filter_map(|p| p.parse().ok()))
            .collect()
    }

    /// A fast shutdown (SIGTERM), which takes the workers down with the master.
    pub async fn stop(mut self) {
        let pids = self.pids();
        if let Some(master) = self.master.id() {
            unsafe { libc::kill(master as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), self.master.wait())
            .await
            .is_err()
        {
            for pid in pids {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

fn render(fields: &[(&str, &str)]) -> String {
    fields.iter().fold(TEMPLATE.to_string(), |text, (name, value)| {
        text.replace(&format!("{{{{{name}}}}}"), value)
    })
}

/// A loopback port nothing listens on now.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_is_filled_in_whole() {
        let conf = render(&[
            ("workers", "2"),
            ("prefix", "/p"),
            ("user", ""),
            ("origin", "127.0.0.1:1"),
            ("listen", "127.0.0.1:2"),
            ("slice", "8192k"),
            ("max_size", "1024k"),
        ]);
        let comments_stripped: String = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!comments_stripped.contains("{{"), "unfilled field in:\n{conf}");
        assert!(conf.contains("slice 8192k;"));
        assert!(conf.contains("server 127.0.0.1:1;"));
        assert!(conf.contains("listen 127.0.0.1:2;"));
    }
}
