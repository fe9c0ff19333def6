//! Hosts in network namespaces on one bridge: each host a namespace of its own with
//! one address on a veth pair whose other end is a port of a bridge that lives in a
//! namespace of its own too. Nothing is visible outside these namespaces (the
//! addresses are the same in every [`Net`]; two nets never meet). A host's link can
//! be cut without a word (its bridge port goes down: packets vanish, no reset), a
//! host runs processes (`ip netns exec`) and tokio tasks (a runtime whose threads
//! live in the namespace), and everything is torn down when the [`Net`] is dropped,
//! a failing test included. Needs root and iproute2; [`Net::new`] says why not.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Where the hosts' addresses come from: `10.231.0.2` and up, one /24 per net.
const SUBNET: [u8; 3] = [10, 231, 0];
/// Every namespace of the testkit starts so, then the process id that made it.
const PREFIX: &str = "s3a";

static NETS: AtomicU32 = AtomicU32::new(0);

/// One bridge and the hosts on it.
pub struct Net {
    /// The prefix of this net's namespaces: `s3a<pid>n<k>`.
    name: String,
    /// The namespace holding the bridge.
    bridge: String,
    hosts: Mutex<Vec<String>>,
}

/// One host: a namespace, its address on the bridge and the bridge port it hangs on.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// The namespace's name (for `ip netns exec`).
    pub namespace: String,
    pub address: Ipv4Addr,
    /// The host's port on the bridge, in the bridge's namespace.
    port: String,
    bridge: String,
}

impl Net {
    /// A bridge in a namespace of its own; `Err` says why there cannot be one here
    /// (not root, no iproute2, no namespaces).
    pub fn new() -> Result<Self, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        sweep_stale();
        let name = format!(
            "{PREFIX}{}n{}",
            std::process::id(),
            NETS.fetch_add(1, Ordering::Relaxed)
        );
        let bridge = format!("{name}br");
        ip(&["netns", "add", &bridge]).map_err(|e| format!("`ip netns add` failed: {e}"))?;
        let net = Self {
            name,
            bridge: bridge.clone(),
            hosts: Mutex::new(vec![bridge.clone()]),
        };
        for args in [
            vec!["-n", &bridge, "link", "set", "lo", "up"],
            vec!["-n", &bridge, "link", "add", "br0", "type", "bridge"],
            vec!["-n", &bridge, "link", "set", "br0", "up"],
        ] {
            ip(&args)?;
        }
        Ok(net)
    }

    /// A new host `name` (at most 6 characters) on the bridge, with the next address.
    pub fn host(&self, name: &str) -> Result<Host, String> {
        let mut hosts = self.hosts.lock().unwrap();
        let number = u8::try_from(hosts.len() + 1).map_err(|_| "too many hosts".to_owned())?;
        let namespace = format!("{}{name}", self.name);
        let port = format!("p{number}");
        let address = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], number);
        ip(&["netns", "add", &namespace])?;
        hosts.push(namespace.clone());
        let cidr = format!("{address}/24");
        for args in [
            vec!["-n", &namespace, "link", "set", "lo", "up"],
            vec![
                "-n",
                &self.bridge,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &namespace,
            ],
            vec!["-n", &self.bridge, "link", "set", &port, "master", "br0"],
            vec!["-n", &self.bridge, "link", "set", &port, "up"],
            vec!["-n", &namespace, "addr", "add", &cidr, "dev", "eth0"],
            vec!["-n", &namespace, "link", "set", "eth0", "up"],
        ] {
            ip(&args)?;
        }
        Ok(Host {
            name: name.to_owned(),
            namespace,
            address,
            port,
            bridge: self.bridge.clone(),
        })
    }
}

impl Net {
    /// Kills what runs on the hosts and removes them (as dropping does: for a net
    /// that lives as long as its process).
    pub fn close(&self) {
        let hosts = std::mem::take(&mut *self.hosts.lock().unwrap_or_else(|p| p.into_inner()));
        for namespace in hosts.iter().rev() {
            remove_namespace(namespace);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.close();
    }
}

impl Host {
    /// Cuts the host's link: its packets vanish both ways, and no one is told.
    pub fn cut(&self) {
        self.link("down");
    }

    /// Restores the host's link.
    pub fn restore(&self) {
        self.link("up");
    }

    fn link(&self, state: &str) {
        ip(&["-n", &self.bridge, "link", "set", &self.port, state]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `program` run on this host (`ip netns exec`: its `/etc/resolv.conf` is the
    /// host's, see [`set_nameserver`](Self::set_nameserver)).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]).arg(program);
        command
    }

    /// The name server processes run on this host ask (`/etc/netns/<ns>/resolv.conf`,
    /// which `ip netns exec` puts in place of `/etc/resolv.conf`).
    pub fn set_nameserver(&self, server: Ipv4Addr) {
        let dir = std::path::Path::new("/etc/netns").join(&self.namespace);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
    }

    /// Moves the calling thread to this host: what it binds and connects from now
    /// on, and every thread it starts (a runtime's), is the host's.
    pub fn enter(&self) -> std::io::Result<()> {
        let file = std::fs::File::open(format!("/var/run/netns/{}", self.namespace))?;
        match unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// A tokio runtime whose threads live on this host: what its tasks bind and
    /// connect is the host's.
    pub fn runtime(&self, threads: usize) -> HostRuntime {
        let path = format!("/var/run/netns/{}", self.namespace);
        let host = self.clone();
        let (handles, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("host-{}", self.name))
            .spawn(move || {
                // This thread, and every thread it starts (the runtime's), enter the host.
                host.enter().unwrap_or_else(|e| panic!("entering {path}: {e}"));
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
                    .unwrap();
                handles.send(runtime.handle().clone()).unwrap();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .unwrap();
        HostRuntime {
            handle: handle.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

/// Tasks on a host; stopped (its tasks dropped) when this is dropped.
pub struct HostRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostRuntime {
    /// Runs `task` on the host, from any runtime.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Runs `task` on the host and waits for it; a panic in it is raised here.
    pub async fn run<F>(&self, task: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.spawn(task).await {
            Ok(output) => output,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// Kills what still runs in `namespace` and removes it (and its resolv.conf).
fn remove_namespace(namespace: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", namespace]).output() {
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            // Not this process (its threads may live on the host being removed).
            if let Ok(pid) = pid.parse::<i32>() {
                if pid as u32 != std::process::id() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    let _ = ip(&["netns", "del", namespace]);
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(namespace));
}

/// Removes the namespaces of test processes that are gone (killed before they
/// could clean up).
fn sweep_stale() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let Some(namespace) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = namespace.strip_prefix(PREFIX) else {
                continue;
            };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(pid) = pid.parse::<i32>() else { continue };
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                remove_namespace(namespace);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hosts_reach_each_other_until_a_link_is_cut() {
        let net = match Net::new() {
            Ok(net) => net,
            Err(why) => {
                eprintln!("SKIPPED hosts_reach_each_other_until_a_link_is_cut: {why}");
                return;
            }
        };
        let (a, b) = (net.host("a").unwrap(), net.host("b").unwrap());
        let (on_a, on_b) = (a.runtime(1), b.runtime(1));
        let to = std::net::SocketAddr::from((b.address, 7000));
        let _listener = on_b
            .run(async move { tokio::net::TcpListener::bind(to).await.unwrap() })
            .await;
        let connect = move || async move {
            tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(to),
            )
            .await
            .map(|c| c.is_ok())
            .unwrap_or(false)
        };
        assert!(on_a.run(connect()).await, "a reaches b");
        b.cut();
        assert!(!on_a.run(connect()).await, "a cut link drops the connection attempt");
        b.restore();
        // The first SYN may leave before the port forwards again: retried.
        let mut carried = false;
        for _ in 0..6 {
            carried = on_a.run(connect()).await;
            if carried {
                break;
            }
        }
        assert!(carried, "a restored link carries again");
    }
}
