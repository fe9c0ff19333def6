//! `--hosts`: the region scenarios on a real network. The origin, each s3-accel node
//! and the clients are hosts of their own (network namespaces on one bridge, the
//! testkit's): the bench's own threads move to the client's host before its runtime
//! starts, the origin runs in a runtime on its host, the nodes are processes on
//! theirs. Needs root and iproute2.

use std::sync::OnceLock;

use s3_accel_testkit::netns::{Host, HostRuntime, Net};

pub struct Hosts {
    net: Net,
    pub origin: Host,
    pub nodes: Vec<Host>,
    /// Where the origin runs.
    pub on_origin: HostRuntime,
}

static HOSTS: OnceLock<Hosts> = OnceLock::new();

/// The origin's port on its host.
pub const ORIGIN_PORT: u16 = 9000;
/// Each node's peer and admin ports on its host.
pub const PEER_PORT: u16 = 9091;
pub const ADMIN_PORT: u16 = 9090;

/// Makes the hosts (an origin, `nodes` nodes, a client) and moves the calling
/// thread, and every thread it starts from now on, to the client's host.
pub fn set_up(nodes: usize) -> anyhow::Result<()> {
    let net = Net::new().map_err(|why| anyhow::anyhow!("--hosts: {why}"))?;
    let host = |name: &str| net.host(name).map_err(|why| anyhow::anyhow!("--hosts: {why}"));
    let origin = host("origin")?;
    let nodes = (0..nodes)
        .map(|i| host(&format!("node{i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = host("client")?;
    let on_origin = origin.runtime(2);
    client.enter()?;
    let hosts = Hosts {
        net,
        origin,
        nodes,
        on_origin,
    };
    if HOSTS.set(hosts).is_err() {
        anyhow::bail!("--hosts: set up twice");
    }
    Ok(())
}

/// The hosts, with `--hosts`.
pub fn get() -> Option<&'static Hosts> {
    HOSTS.get()
}

/// Stops what runs on the hosts and removes them.
pub fn tear_down() {
    if let Some(hosts) = HOSTS.get() {
        hosts.net.close();
    }
}
