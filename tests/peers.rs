//! A region's nodes as one cache: several s3-accel instances on 127.0.0.x in front
//! of one origin, each chunk fetched from the origin once for all of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use s3_accel::cache::{CacheKey, ObjectId};
use s3_accel::peers::auth::{PeerKeys, PEER_DATE, PEER_SIGNATURE};
use s3_accel::peers::placement::{self, Node};
use s3_accel::peers::protocol::Hello;
use s3_accel::peers::protocol::{ChunkRequest, CHUNK_PATH, COLD_PATH, HELLO_PATH, HELLO_REPLY, LEAVING_PATH};
use s3_accel::peers::wire;

use crate::ops::admin_get;
use crate::support::client::{Call, TestClient};
use crate::support::{get, object_bytes, outcome, sha256_hex, Signing, TestOrigin, TestProxy};
use s3_accel_testkit::origin::OriginOptions;
use s3_accel_testkit::shaping::Shaping;

pub(crate) const BUCKET: &str = "models";
const SECRET: &str = "a-region-secret-of-at-least-32-bytes";
const CACHE: &str = "memory = \"128MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"";

/// How a test region is laid out.
struct Layout {
    count: u8,
    /// The keys of each node's `[cache]` table.
    cache: &'static str,
    /// The last this-many nodes run as processes of the s3-accel binary (to be
    /// killed); the others run in this test's process.
    processes: u8,
    /// The nodes each node is told about (default: all of them): forced split views.
    views: Option<Vec<Vec<u8>>>,
    /// Peer addresses every node is told about besides the region's own.
    also: Vec<SocketAddr>,
    /// `(from, to, relay, target)`: node `from` reaches node `to` only through the
    /// relay at `relay`, which is told `to`'s peer address through `target`.
    relayed: Option<(u8, u8, SocketAddr, Arc<std::sync::OnceLock<SocketAddr>>)>,
    /// Mutual TLS on the peer port: the region's CA, and the name each node's
    /// certificate carries (by default its own).
    tls: Option<(Arc<RegionCa>, Vec<String>)>,
    /// `peers.tls.identity`: `node` (the default) or `region`.
    identity: &'static str,
    /// How many members each in-process node should come to see (by default, all
    /// it is told about).
    expected: Option<Vec<usize>>,
}

impl Layout {
    fn of(count: u8) -> Self {
        Self {
            count,
            cache: CACHE,
            processes: 0,
            views: None,
            also: Vec::new(),
            relayed: None,
            tls: None,
            identity: "node",
            expected: None,
        }
    }

    /// Two nodes, node 0 reaching node 1 only through the relay at `relay`, which
    /// is told node 1's peer address through `target`.
    fn relayed(relay: SocketAddr, target: Arc<std::sync::OnceLock<SocketAddr>>) -> Self {
        Self {
            relayed: Some((0, 1, relay, target)),
            ..Self::of(2)
        }
    }

    /// The same region, in mutual TLS, each node's certificate for its own name.
    fn with_tls(self, ca: &Arc<RegionCa>) -> Self {
        let names = (0..self.count).map(|i| format!("node-{i}")).collect();
        Self {
            tls: Some((ca.clone(), names)),
            ..self
        }
    }
}

/// A region's CA, and the certificates it signs for node names (as cert-manager
/// would write them: `tls.crt`, `tls.key`, `ca.crt`).
pub(crate) struct RegionCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    dir: tempfile::TempDir,
}

impl RegionCa {
    pub(crate) fn new() -> Arc<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "s3-accel region CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), issuer.pem()).unwrap();
        Arc::new(Self { issuer, dir })
    }

    /// Writes a new key and a certificate for `name` (server and client use) as
    /// `<file>.crt` and `<file>.key`: their paths, and the certificate's DER.
    pub(crate) fn issue(&self, file: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.path().join(format!("{file}.crt")),
            self.dir.path().join(format!("{file}.key")),
        );
        // Written aside and renamed, as kubelet swaps a Secret's files.
        for (path, text) in [(&key_file, key.serialize_pem()), (&cert_file, certificate.pem())] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, path).unwrap();
        }
        (cert_file, key_file, certificate.der().to_vec())
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// s3-accel nodes that know each other as peers, on 127.0.0.1, 127.0.0.2, ...
pub(crate) struct Region {
    /// The nodes run in this process.
    pub(crate) nodes: Vec<TestProxy>,
    /// The nodes run as processes, after those in `nodes` in numbering.
    processes: Vec<tokio::process::Child>,
    /// Each in-process node's configuration, to restart it as it was.
    configs: Vec<String>,
    /// How many members each in-process node should see.
    expected: Vec<usize>,
    /// Each node's peer address.
    peer_addresses: Vec<SocketAddr>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Region {
    pub(crate) async fn start(origin: &TestOrigin, count: u8) -> Self {
        Self::start_with(origin, Layout::of(count)).await
    }

    /// `count` nodes with `cache` as the keys of each one's `[cache]` table.
    pub(crate) async fn start_cached(origin: &TestOrigin, count: u8, cache: &'static str) -> Self {
        Self::start_with(
            origin,
            Layout {
                cache,
                ..Layout::of(count)
            },
        )
        .await
    }

    async fn start_with(origin: &TestOrigin, layout: Layout) -> Self {
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("keys");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        // Free ports, one per node's address (the peers must be listed at start).
        let peers: Vec<SocketAddr> = (0..layout.count)
            .map(|i| {
                let listener = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1 + i), 0)).unwrap();
                listener.local_addr().unwrap()
            })
            .collect();
        let all: Vec<u8> = (0..layout.count).collect();
        if let Some((_, to, _, target)) = &layout.relayed {
            target.set(peers[usize::from(*to)]).unwrap();
        }
        let mut region = Self {
            nodes: Vec::new(),
            processes: Vec::new(),
            configs: Vec::new(),
            expected: Vec::new(),
            peer_addresses: peers.clone(),
            _dirs: Vec::new(),
        };
        for (i, peer) in peers.iter().enumerate() {
            let view = layout.views.as_ref().map_or(&all, |views| &views[i]);
            let list = view
                .iter()
                .map(|&p| match &layout.relayed {
                    Some((from, to, relay, _)) if usize::from(*from) == i && p == *to => *relay,
                    _ => peers[p as usize],
                })
                .chain(layout.also.iter().copied())
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>();
            let cache_dir = tempfile::tempdir().unwrap();
            let tls = match &layout.tls {
                Some((ca, names)) => {
                    let (cert, key, _) = ca.issue(&format!("node-{i}"), &names[i]);
                    format!(
                        "[peers.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n\
                         reload_interval = \"200ms\"\nidentity = \"{}\"\n",
                        cert.display(),
                        key.display(),
                        ca.ca_file().display(),
                        layout.identity
                    )
                }
                None => String::new(),
            };
            let text = format!(
                "listen = \"127.0.0.{}:0\"\nadmin_listen = \"127.0.0.1:0\"\norigin = \"{}\"\n\
                 [credentials]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
                 [peers]\nnode_name = \"node-{i}\"\nlisten = \"{peer}\"\naddresses = [{}]\n\
                 secret_file = \"{}\"\nrefresh = \"200ms\"\nrestart_wait = \"2s\"\n{tls}[cache]\ndir = \"{}\"\n{}\n",
                i + 1,
                origin.url(),
                crate::support::origin::ACCESS_KEY,
                crate::support::origin::SECRET_KEY,
                list.join(", "),
                secret_file.display(),
                cache_dir.path().display(),
                layout.cache,
            );
            if i < usize::from(layout.count - layout.processes) {
                region.nodes.push(TestProxy::from_config(&text).await);
                region.configs.push(text);
                region.expected.push(match &layout.expected {
                    Some(expected) => expected[i],
                    None => view.len().max(1) + layout.also.len(),
                });
            } else {
                let file = cache_dir.path().join("s3-accel.toml");
                std::fs::write(&file, &text).unwrap();
                region.processes.push(spawn_node(&file, *peer).await);
            }
            region._dirs.push(cache_dir);
        }
        region._dirs.push(secret);
        region.formed().await;
        region
    }

    /// Waits until every in-process node sees the members it was told about.
    async fn formed(&self) {
        for (node, count) in self.nodes.iter().zip(&self.expected) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let (_, ready) = admin_get(node, "/readyz").await;
                if ready.contains(&format!("peers: {count} members")) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the region never formed: {ready}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Stops node `i` gracefully and starts it again under the same name, on the
    /// same cache directory and peer address.
    async fn restart(&mut self, i: usize) {
        let node = self.nodes.remove(i);
        node.stop().await;
        self.nodes.insert(i, TestProxy::from_config(&self.configs[i]).await);
        self.formed().await;
    }
}

/// The s3-accel binary with the configuration in `file`, once its peer port answers.
async fn spawn_node(file: &std::path::Path, peer: SocketAddr) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3-accel"))
        .arg("--config")
        .arg(file)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(peer).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s3-accel did not listen on {peer}");
}

/// Each node reads `model.bin` whole: a 200 with exactly `data`.
pub(crate) async fn every_node_serves(region: &Region, data: &[u8], why: &str) {
    for node in &region.nodes {
        let reply = get(node, read("model.bin")).await;
        assert_eq!(reply.status, StatusCode::OK, "{why}");
        assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{why}");
    }
}

/// An origin holding `model.bin`, `size` bytes.
pub(crate) async fn origin_with_model(seed: u64, size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(seed, size);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    (origin, data)
}

pub(crate) fn read(key: &str) -> Call {
    Call::get(
        &format!("/{BUCKET}/{key}"),
        &Signing::Presigned(TestOrigin::credentials()),
    )
}

/// Every node's `clients` read `key` at once, each body hashed as it arrives: the
/// status, hash and length of each response, node by node.
async fn herd(region: &Region, clients: usize, key: &str) -> Vec<Result<(StatusCode, String, u64), String>> {
    let readers: Vec<_> = region
        .nodes
        .iter()
        .flat_map(|node| (0..clients).map(move |_| (node.client.clone(), node.address)))
        .map(|(client, address)| {
            let call = read(key);
            tokio::spawn(async move { client.digest(address, &call).await })
        })
        .collect();
    let mut replies = Vec::new();
    for reader in readers {
        replies.push(reader.await.unwrap());
    }
    replies
}

/// The fills the origin saw, by `Range`: how many times each range was filled.
fn fills_by_range(origin: &TestOrigin) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for range in origin.stats.fill_ranges.lock().unwrap().iter() {
        *counts.entry(range.clone()).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn a_region_fetches_each_chunk_from_the_origin_once() {
    let size = 256 << 20;
    let (origin, data) = origin_with_model(3, size).await;
    let hash = sha256_hex(&data);
    drop(data);
    let region = Region::start(&origin, 5).await;

    // Every node's clients read the same cold object at once.
    let replies = herd(&region, 8, "model.bin").await;
    for reply in replies {
        assert_eq!(reply, Ok((StatusCode::OK, hash.clone(), size as u64)));
    }
    origin.stats.settled().await;
    let sent = origin.stats.body_bytes();
    let chunks = size >> 20;
    println!(
        "region herd: 5 nodes x 8 clients, {size}-byte object: the origin sent {sent} body bytes ({:.4}x) in {} fills",
        sent as f64 / size as f64,
        origin.stats.fills()
    );
    assert!(
        sent as f64 <= 1.02 * size as f64,
        "the origin sent {sent} bytes for a {size}-byte object"
    );
    // One node of the region probed with a body; the others waited for what it
    // learned and probed with a condition. On a starved machine (the whole suite on
    // 2 cores) one more may: a turn holder whose request fails after its GET hands
    // the turn on, and a peer error makes a node decide alone. That costs one more
    // probe's first chunk, never a chunk filled twice; without the region's gate
    // each of the 5 nodes would probe with a body.
    let probes = origin
        .stats
        .unconditional_gets
        .load(std::sync::atomic::Ordering::SeqCst);
    println!("cold probes with a body: {probes}");
    assert!((1..=2).contains(&probes), "cold probes with a body: {probes}");
    let twice: Vec<_> = fills_by_range(&origin).into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(twice.is_empty(), "chunks filled more than once: {twice:?}");
    assert!(
        origin.stats.fills() <= chunks as u64,
        "{} fills for {chunks} chunks",
        origin.stats.fills()
    );

    // A re-read on every node costs the origin no body: each node's misses are
    // served by the chunks' owners.
    let before = origin.stats.body_bytes();
    for node in &region.nodes {
        let reply = node.client.digest(node.address, &read("model.bin")).await;
        assert_eq!(reply, Ok((StatusCode::OK, hash.clone(), size as u64)));
    }
    assert_eq!(origin.stats.body_bytes(), before, "a re-read costs the origin nothing");
}

#[tokio::test]
async fn a_hot_chunk_read_again_on_a_node_stays_on_that_node() {
    let size = 6 << 20;
    let (origin, data) = origin_with_model(17, size).await;
    let region = Region::start(&origin, 3).await;
    let node = &region.nodes[0];
    let chunk = |i: usize| {
        let range = format!("bytes={}-{}", i << 20, ((i + 1) << 20) - 1);
        Call::get(
            &format!("/{BUCKET}/model.bin"),
            &Signing::Presigned(TestOrigin::credentials()),
        )
        .unsigned_header("range", &range)
    };
    let whole = get(node, read("model.bin")).await;
    assert_eq!(sha256_hex(&whole.body), sha256_hex(&data));
    origin.stats.settled().await;
    // Each chunk again, on the same node: every one is a hit, the chunks other nodes
    // own as much as its own (a copy kept in memory), and none costs the origin.
    let before = origin.stats.body_bytes();
    for i in 0..size >> 20 {
        let reply = get(node, chunk(i)).await;
        assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&reply.body[..], &data[i << 20..(i + 1) << 20]);
        assert_eq!(outcome(&reply), "hit", "chunk {i} read again on the node that read it");
    }
    assert_eq!(origin.stats.body_bytes(), before);
}

#[tokio::test]
async fn split_views_fill_a_chunk_at_most_twice_and_never_loop() {
    let size = 24 << 20;
    let (origin, data) = origin_with_model(19, size).await;
    let hash = sha256_hex(&data);
    // Three nodes that disagree on who is in the region (as while a node joins and
    // not every node has seen it yet): each places the chunks over its own view.
    let region = Region::start_with(
        &origin,
        Layout {
            views: Some(vec![vec![0, 1, 2], vec![0, 1], vec![1, 2]]),
            ..Layout::of(3)
        },
    )
    .await;
    let replies = tokio::time::timeout(Duration::from_secs(60), herd(&region, 2, "model.bin"))
        .await
        .expect("a herd over split views ends (no peer request loops)");
    for reply in replies {
        assert_eq!(reply, Ok((StatusCode::OK, hash.clone(), size as u64)));
    }
    let fills = fills_by_range(&origin);
    println!(
        "split views: {} fills over {} ranges",
        origin.stats.fills(),
        fills.len()
    );
    assert!(
        fills.values().all(|&n| n <= 2),
        "a chunk filled more than twice: {fills:?}"
    );
    origin.stats.settled().await;
    assert!(origin.stats.body_bytes() <= 2 * size as u64);
}

#[tokio::test]
async fn an_owner_killed_mid_herd_costs_no_client_an_error_and_the_origin_its_share() {
    let size: usize = 64 << 20;
    let chunk_size = 1 << 20;
    // An origin slow enough (64 MB/s for the region) that the kill lands mid-herd.
    let origin = TestOrigin::start_with(OriginOptions {
        honor_conditionals: true,
        shaping: Shaping {
            rtt: Duration::from_millis(2),
            per_connection: 0,
            total: 64 << 20,
        },
        ..OriginOptions::default()
    })
    .await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(23, size);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    let hash = sha256_hex(&data);
    // Node 2 runs as a process of its own: the one killed.
    let mut region = Region::start_with(
        &origin,
        Layout {
            processes: 1,
            ..Layout::of(3)
        },
    )
    .await;
    let herd = {
        let (nodes, clients): (Vec<_>, Vec<_>) = region
            .nodes
            .iter()
            .flat_map(|node| (0..4).map(move |_| (node.address, node.client.clone())))
            .unzip();
        tokio::spawn(async move {
            let readers: Vec<_> = nodes
                .into_iter()
                .zip(clients)
                .map(|(address, client)| tokio::spawn(async move { client.digest(address, &read("model.bin")).await }))
                .collect();
            futures_util::future::join_all(readers).await
        })
    };
    // Killed without a word once a quarter of the object has come in.
    while origin.stats.body_bytes() < size as u64 / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    region.processes[0].start_kill().unwrap();
    let killed_at = origin.stats.body_bytes();
    for reply in herd.await.unwrap() {
        assert_eq!(
            reply.unwrap(),
            Ok((StatusCode::OK, hash.clone(), size as u64)),
            "no client error because an owner died"
        );
    }
    origin.stats.settled().await;
    let sent = origin.stats.body_bytes();
    // The dead node's share: the chunks it owned (equal weights: no disk tiers).
    let head = origin
        .send(&Call::head(&format!("/{BUCKET}/model.bin"), &TestOrigin::signing()))
        .await;
    let etag = head.header("etag").unwrap().to_owned();
    let nodes: Vec<_> = (0..3).map(|i| Node::new(format!("node-{i}"), 1)).collect();
    let object = ObjectId {
        origin: origin.url(),
        bucket: BUCKET.into(),
        key: "model.bin".into(),
        version_id: None,
    };
    let owned = (0..(size / chunk_size) as u64)
        .filter(|&i| {
            let key = CacheKey::chunk(&object, &etag, chunk_size as u64, i);
            placement::owner(&nodes, key.stable_hash()).unwrap().name == "node-2"
        })
        .count();
    let share = (owned * chunk_size) as u64;
    println!(
        "kill -9 of an owner mid-herd (after {killed_at} origin bytes): the origin sent {sent} bytes ({:.3}x) \
         for a {size}-byte object; the dead node owned {owned} chunks ({share} bytes)",
        sent as f64 / size as f64
    );
    // Each chunk once, the dead node's again at most, and what two cold probes had
    // in flight when they were cut.
    assert!(
        sent <= size as u64 + share + 2 * (2 << 20),
        "extra origin bytes beyond the dead node's share: {sent}"
    );
}

#[tokio::test]
async fn a_node_restarted_under_its_name_serves_what_its_disk_holds() {
    let size = 24 << 20;
    let (origin, data) = origin_with_model(7, size).await;
    let disk = "memory = \"64MiB\"\ndisk = \"256MiB\"\nchunk_size = \"1MiB\"";
    let mut region = Region::start_with(
        &origin,
        Layout {
            cache: disk,
            ..Layout::of(3)
        },
    )
    .await;
    // Node 0 reads the object: each chunk lands on its owner's disk.
    let first = get(&region.nodes[0], read("model.bin")).await;
    assert_eq!(sha256_hex(&first.body), sha256_hex(&data));
    origin.stats.settled().await;
    // Node 1 restarts; node 2, which never read the object, reads it: the chunks
    // node 1 owns come from its disk, none from the origin.
    region.restart(1).await;
    let (bytes, fills) = (origin.stats.body_bytes(), origin.stats.fills());
    let reply = get(&region.nodes[2], read("model.bin")).await;
    assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    origin.stats.settled().await;
    assert_eq!(origin.stats.fills() - fills, 0, "a restarted owner serves what it held");
    // Node 2 learned the object's metadata from the region and probed with a
    // condition: at most what a dropped probe had in flight, and no chunk again.
    let sent = origin.stats.body_bytes() - bytes;
    assert!(sent < 1 << 20, "the origin sent {sent} bytes");
}

#[tokio::test]
async fn a_dead_owner_costs_a_client_nothing() {
    let size = 16 << 20;
    let (origin, data) = origin_with_model(5, size).await;
    let mut region = Region::start(&origin, 3).await;
    // One node goes away without a word (its peer port stops answering).
    let dead = region.nodes.remove(2);
    dead.stop().await;
    every_node_serves(&region, &data, "no client error because a peer died").await;
}

#[tokio::test]
async fn peer_requests_must_be_signed_with_the_region_key_and_never_reach_the_client_port() {
    let origin = TestOrigin::honoring().await;
    let region = Region::start(&origin, 2).await;
    let peer = region.nodes[0].peer.unwrap();
    let client = TestClient::default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let ours = PeerKeys::from_text(SECRET).unwrap();
    let theirs = PeerKeys::from_text("another-secret-of-at-least-32-bytes!").unwrap();
    let hello = |keys: &PeerKeys, at: u64| {
        Call::get(HELLO_PATH, &Signing::Anonymous)
            .unsigned_header(PEER_DATE, &at.to_string())
            .unsigned_header(PEER_SIGNATURE, &keys.sign("GET", HELLO_PATH, b"", at))
    };
    let answer = client.send(peer, &hello(&ours, now)).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().contains("node\tnode-0"), "{}", answer.text());
    // The answer is signed with the region's key, so no impostor can claim a node.
    let reply = (HELLO_REPLY, HELLO_PATH, &answer.body[..]);
    let (date, signature) = (answer.header(PEER_DATE), answer.header(PEER_SIGNATURE));
    assert_eq!(ours.verify(reply, date, signature, now), Ok(()));
    assert!(theirs.verify(reply, date, signature, now).is_err());
    for (refused, why) in [
        (hello(&theirs, now), "another key"),
        (hello(&ours, now - 120), "stale"),
        (Call::get(HELLO_PATH, &Signing::Anonymous), "unsigned"),
        (
            Call::new(http::Method::POST, CHUNK_PATH, &Signing::Anonymous)
                .unsigned_header(PEER_DATE, &now.to_string())
                .unsigned_header(PEER_SIGNATURE, &ours.sign("POST", CHUNK_PATH, b"", now)),
            "a chunk request whose body is not what was signed",
        ),
        (
            Call::new(http::Method::POST, LEAVING_PATH, &Signing::Anonymous),
            "an unsigned leaving notice",
        ),
        (
            Call::new(http::Method::POST, LEAVING_PATH, &Signing::Anonymous)
                .unsigned_header(PEER_DATE, &now.to_string())
                .unsigned_header(PEER_SIGNATURE, &ours.sign("POST", LEAVING_PATH, b"", now)),
            "a leaving notice that names no node",
        ),
    ] {
        let answer = client.send(peer, &refused).await.unwrap();
        assert!(
            matches!(answer.status, StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST),
            "{why}: {}",
            answer.status
        );
    }
    // A chunk request on the client port is an S3 request, and not one s3-accel serves.
    let on_client_port = Call::new(http::Method::POST, CHUNK_PATH, &Signing::Anonymous)
        .unsigned_header(PEER_DATE, &now.to_string())
        .unsigned_header(PEER_SIGNATURE, &ours.sign("POST", CHUNK_PATH, b"", now));
    let answer = region.nodes[0].send(&on_client_port).await.unwrap();
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn an_object_changed_mid_herd_is_never_served_mixed() {
    let size = 32 << 20;
    let (origin, old) = origin_with_model(11, size).await;
    let new = object_bytes(12, size);
    let region = Region::start(&origin, 3).await;
    let readers: Vec<_> = region
        .nodes
        .iter()
        .flat_map(|node| (0..2).map(move |_| (node.client.clone(), node.address)))
        .map(|(client, address)| tokio::spawn(async move { client.send(address, &read("model.bin")).await }))
        .collect();
    // Overwritten while the region fills it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    origin.put(BUCKET, "model.bin", &new, &[]).await;
    let (old_hash, new_hash) = (sha256_hex(&old), sha256_hex(&new));
    for reader in readers {
        // A cut response is allowed; a complete one is one version, whole.
        if let Ok(reply) = reader.await.unwrap() {
            if reply.status == StatusCode::OK {
                let hash = sha256_hex(&reply.body);
                assert!(hash == old_hash || hash == new_hash, "a response mixed two versions");
            }
        }
    }
    // Afterwards every node serves the new version.
    for node in &region.nodes {
        let reply = get(node, read("model.bin")).await;
        assert_eq!(sha256_hex(&reply.body), new_hash);
    }
}

/// A peer that holds the region's key for its hello (it claims nearly every chunk)
/// but answers chunk requests with bytes of the right length, unsigned: what a
/// machine on the network answering for an owner would send. Counts the chunk
/// requests it answered.
async fn impostor() -> (SocketAddr, Arc<AtomicU64>) {
    impostor_with(None, "impostor").await
}

/// The same impostor claiming to be node `claims`, in TLS with `tls` when set.
async fn impostor_with(tls: Option<Arc<rustls::ServerConfig>>, claims: &'static str) -> (SocketAddr, Arc<AtomicU64>) {
    use http_body_util::{BodyExt, Full};
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind("127.0.0.9:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let counter = counter.clone();
                async move {
                    let path = request.uri().path().to_owned();
                    let nonce = request
                        .headers()
                        .get(wire::PEER_NONCE)
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let response = match path.as_str() {
                        HELLO_PATH => {
                            let hello = Hello {
                                node: claims.into(),
                                boot_id: "0".into(),
                                disk_capacity: 1 << 50,
                            }
                            .encode();
                            let keys = PeerKeys::from_text(SECRET).unwrap();
                            let mut response = http::Response::new(Full::new(bytes::Bytes::from(hello.clone())));
                            wire::sign_hello(response.headers_mut(), &keys, nonce.as_deref(), hello.as_bytes());
                            Ok(response)
                        }
                        CHUNK_PATH => {
                            counter.fetch_add(1, Ordering::SeqCst);
                            let chunk = ChunkRequest::decode(&body).unwrap();
                            http::Response::builder()
                                .header("content-length", chunk.length())
                                .body(Full::new(bytes::Bytes::from(vec![0u8; chunk.length() as usize])))
                        }
                        _ => http::Response::builder()
                            .status(404)
                            .body(Full::new(bytes::Bytes::new())),
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap())
                }
            });
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (address, answered)
}

#[tokio::test]
async fn an_answer_not_signed_for_the_chunk_is_never_served() {
    let size = 8 << 20;
    let (origin, data) = origin_with_model(29, size).await;
    let (impostor, answered) = impostor().await;
    let region = Region::start_with(
        &origin,
        Layout {
            also: vec![impostor],
            ..Layout::of(2)
        },
    )
    .await;
    every_node_serves(&region, &data, "the impostor's bytes were served").await;
    assert!(
        answered.load(Ordering::SeqCst) > 0,
        "the impostor was asked for chunks (it claims nearly all of them)"
    );
}

/// An origin holding `count` objects of 3 MiB, `object-<i>.bin`, seeded from `seed`.
async fn origin_with_objects(count: u64, seed: u64) -> (TestOrigin, Vec<(String, Vec<u8>)>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let mut objects = Vec::new();
    for i in 0..count {
        let (key, data) = (format!("object-{i}.bin"), object_bytes(seed + i, 3 << 20));
        origin.put(BUCKET, &key, &data, &[]).await;
        objects.push((key, data));
    }
    (origin, objects)
}

/// Reads every object through `node`, `times` each: a 200 with exactly its bytes.
async fn reads_byte_exact(node: &TestProxy, objects: &[(String, Vec<u8>)], times: usize) {
    for (key, data) in objects {
        for _ in 0..times {
            let reply = get(node, read(key)).await;
            assert_eq!(reply.status, StatusCode::OK, "{key}");
            assert_eq!(
                sha256_hex(&reply.body),
                sha256_hex(data),
                "{key}: a changed byte was served"
            );
        }
    }
}

/// What a relay on the peer network changes (what an on-path attacker without the
/// region's key can do).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// Each cold-gate answer carrying an object's metadata: half the size, another
    /// Content-Type.
    ColdAnswer,
    /// Each chunk answer: one byte in the middle of the chunk flipped, framing intact.
    ChunkBody,
}

/// A relay on the peer network that passes everything on to `target`, but changes
/// what `tamper` says. Counts the answers it changed.
async fn rewriting_relay(target: Arc<std::sync::OnceLock<SocketAddr>>, tamper: Tamper) -> (SocketAddr, Arc<AtomicU64>) {
    use http_body_util::{BodyExt, Full};
    use s3_accel::cache::ObjectMeta;
    let listener = tokio::net::TcpListener::bind("127.0.0.10:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let rewrote = Arc::new(AtomicU64::new(0));
    let counter = rewrote.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (counter, target) = (counter.clone(), target.clone());
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (counter, target) = (counter.clone(), target.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let upstream = tokio::net::TcpStream::connect(*target.get().unwrap()).await.unwrap();
                    let (mut sender, connection) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(upstream))
                            .await
                            .unwrap();
                    tokio::spawn(connection);
                    let path = parts.uri.path().to_owned();
                    let forwarded = http::Request::from_parts(parts, Full::new(body));
                    let (mut parts, body) = sender.send_request(forwarded).await?.into_parts();
                    let mut body = body.collect().await?.to_bytes();
                    if tamper == Tamper::ChunkBody && path == CHUNK_PATH && parts.status == StatusCode::OK {
                        let mut flipped = body.to_vec();
                        let middle = flipped.len() / 2;
                        flipped[middle] ^= 0x20;
                        body = bytes::Bytes::from(flipped);
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    if tamper == Tamper::ColdAnswer && path == COLD_PATH && parts.status == StatusCode::OK {
                        let mut meta = ObjectMeta::from_bytes(&body).expect("an object's metadata");
                        meta.size /= 2;
                        meta.headers
                            .insert(http::header::CONTENT_TYPE, "text/html".parse().unwrap());
                        body = bytes::Bytes::from(meta.to_bytes());
                        parts.headers.insert(http::header::CONTENT_LENGTH, body.len().into());
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, hyper::Error>(http::Response::from_parts(parts, Full::new(body)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (address, rewrote)
}

#[tokio::test]
async fn a_cold_gate_answer_rewritten_on_the_way_is_never_used() {
    let (origin, objects) = origin_with_objects(8, 40).await;
    let target = Arc::new(std::sync::OnceLock::new());
    let (relay, rewrote) = rewriting_relay(target.clone(), Tamper::ColdAnswer).await;
    let region = Region::start_with(&origin, Layout::relayed(relay, target)).await;
    // Node 1 learns every object first; node 0 then asks the owner of each one's
    // gate, node 1 for about half of them, through the relay.
    reads_byte_exact(&region.nodes[1], &objects, 1).await;
    for (key, data) in &objects {
        for _ in 0..2 {
            let reply = get(&region.nodes[0], read(key)).await;
            assert_eq!(reply.status, StatusCode::OK, "{key}");
            assert_eq!(reply.body.len(), data.len(), "{key}: the rewritten size was served");
            assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{key}");
            assert_ne!(
                reply
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap()),
                Some("text/html"),
                "{key}: the rewritten Content-Type was served"
            );
        }
    }
    println!(
        "cold-gate answers rewritten on the way: {}",
        rewrote.load(Ordering::SeqCst)
    );
    assert!(
        rewrote.load(Ordering::SeqCst) > 0,
        "no cold-gate answer went through the relay: the test proves nothing"
    );
}

/// Without TLS on the peer network, a relay flips one byte in the middle of every
/// chunk answer node 1 sends node 0 (length, framing and the answer's signed head
/// intact). The chunk's tag catches it: node 0 never serves those bytes, leaves
/// node 1 alone, and fills from the origin. (Objects without checksums: the tag
/// alone must catch it.)
#[tokio::test]
async fn a_chunk_body_changed_on_the_way_is_never_served() {
    let (origin, objects) = origin_with_objects(4, 60).await;
    let target = Arc::new(std::sync::OnceLock::new());
    let (relay, flipped) = rewriting_relay(target.clone(), Tamper::ChunkBody).await;
    let region = Region::start_with(&origin, Layout::relayed(relay, target)).await;
    let (_, ready) = admin_get(&region.nodes[0], "/readyz").await;
    assert!(
        ready.contains("peer TLS: off (the peer network is unprotected)"),
        "{ready}"
    );
    // Node 1 fills the chunks it owns first; node 0 then asks it for them, through
    // the relay.
    reads_byte_exact(&region.nodes[1], &objects, 1).await;
    let corrupt = || async {
        let (_, metrics) = admin_get(&region.nodes[0], "/metrics").await;
        crate::ops::sample(&metrics, "s3accel_corrupt_chunks_total", "found=\"peer\"").unwrap_or(0.0)
    };
    let caught = corrupt().await;
    reads_byte_exact(&region.nodes[0], &objects, 2).await;
    let flips = flipped.load(Ordering::SeqCst);
    println!("chunk answers changed on the way: {flips}");
    assert!(
        flips > 0,
        "no chunk answer went through the relay: the test proves nothing"
    );
    assert_eq!(
        corrupt().await - caught,
        flips as f64,
        "every changed answer was caught by its tag"
    );
}

/// A TCP relay on the peer network that passes bytes on to `target` as they are,
/// but flips one byte `at` bytes into each answer (what it can do to TLS without the
/// keys). Counts the answers it changed, and the connections whose first byte was a
/// TLS handshake record.
async fn flipping_tcp_relay(
    target: Arc<std::sync::OnceLock<SocketAddr>>,
    at: u64,
) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.11:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (flipped, tls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (flips, handshakes) = (flipped.clone(), tls.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(*target.get().unwrap()).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 << 10];
                let mut first = true;
                while let Ok(n) = client_read.read(&mut buffer).await {
                    if n == 0 || server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    if std::mem::take(&mut first) && buffer[0] == 0x16 {
                        handshakes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            let flips = flips.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 16 << 10];
                let mut passed = 0u64;
                while let Ok(n) = server_read.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    if passed <= at && at < passed + n as u64 {
                        buffer[(at - passed) as usize] ^= 0x01;
                        flips.fetch_add(1, Ordering::SeqCst);
                    }
                    passed += n as u64;
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (address, flipped, tls)
}

/// In mutual TLS, a relay that flips one byte of what node 1 sends node 0 (past
/// the handshake and the hellos) breaks that connection, never a byte: node 0 falls
/// back to the origin and every read is byte-exact.
#[tokio::test]
async fn with_peer_tls_a_byte_changed_on_the_way_breaks_the_connection_never_a_read() {
    let (origin, objects) = origin_with_objects(4, 70).await;
    let target = Arc::new(std::sync::OnceLock::new());
    let (relay, flipped, handshakes) = flipping_tcp_relay(target.clone(), 300 << 10).await;
    let ca = RegionCa::new();
    let region = Region::start_with(&origin, Layout::relayed(relay, target).with_tls(&ca)).await;
    for node in &region.nodes {
        let (_, ready) = admin_get(node, "/readyz").await;
        assert!(ready.contains("peer TLS: on"), "{ready}");
    }
    reads_byte_exact(&region.nodes[1], &objects, 1).await;
    reads_byte_exact(&region.nodes[0], &objects, 2).await;
    println!(
        "answers changed on the way: {}, over {} TLS connections",
        flipped.load(Ordering::SeqCst),
        handshakes.load(Ordering::SeqCst)
    );
    assert!(handshakes.load(Ordering::SeqCst) > 0, "the peer connections were TLS");
    assert!(
        flipped.load(Ordering::SeqCst) > 0,
        "no answer went through the relay: the test proves nothing"
    );
}

/// A machine holding the region's key, answering hellos as node `node-9`, is a
/// member only when its certificate is the region CA's and names `node-9`: not
/// with another node's certificate, not with a certificate of another CA (the
/// last case shows the test can tell).
#[tokio::test]
async fn a_peer_whose_certificate_names_another_node_is_refused() {
    let (origin, data) = origin_with_model(80, 3 << 20).await;
    let (ca, foreign) = (RegionCa::new(), RegionCa::new());
    for (issuer, name, member) in [
        (&ca, "node-7", false),
        (&foreign, "node-9", false),
        (&ca, "node-9", true),
    ] {
        let (cert, key, _) = issuer.issue("impostor", name);
        let chain = rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice())
            .unwrap()
            .unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let (impostor, _) = impostor_with(Some(Arc::new(config)), "node-9").await;
        let count = if member { 3 } else { 2 };
        let layout = Layout {
            also: vec![impostor],
            expected: Some(vec![count, count]),
            ..Layout::of(2)
        }
        .with_tls(&ca);
        let region = Region::start_with(&origin, layout).await;
        // Given a few rounds of hellos, the count holds.
        tokio::time::sleep(Duration::from_secs(1)).await;
        for node in &region.nodes {
            let (_, ready) = admin_get(node, "/readyz").await;
            assert!(
                ready.contains(&format!("peers: {count} members")),
                "{name} from {}: {ready}",
                if std::ptr::eq(issuer, &ca) {
                    "the region CA"
                } else {
                    "another CA"
                }
            );
        }
        if !member {
            every_node_serves(&region, &data, "a region beside an impostor still serves").await;
        }
    }
}

/// The peer port answers only a client whose certificate the region's CA signed:
/// none, or one of another CA, gets no answer at all.
#[tokio::test]
async fn the_peer_port_answers_only_certificates_of_the_region() {
    let (origin, _) = origin_with_model(82, 1 << 20).await;
    let (ca, foreign) = (RegionCa::new(), RegionCa::new());
    let region = Region::start_with(&origin, Layout::of(1).with_tls(&ca)).await;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut std::fs::read(ca.ca_file()).unwrap().as_slice()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let identity = |issuer: &RegionCa| {
        let (cert, key, _) = issuer.issue("client", "node-5");
        (
            rustls_pemfile::certs(&mut std::fs::read(&cert).unwrap().as_slice())
                .collect::<Result<Vec<_>, _>>()
                .unwrap(),
            rustls_pemfile::private_key(&mut std::fs::read(&key).unwrap().as_slice())
                .unwrap()
                .unwrap(),
        )
    };
    let builder = || rustls::ClientConfig::builder().with_root_certificates(roots.clone());
    let (ours, theirs) = (identity(&ca), identity(&foreign));
    for (config, answered) in [
        (builder().with_no_client_auth(), false),
        (builder().with_client_auth_cert(theirs.0, theirs.1).unwrap(), false),
        (builder().with_client_auth_cert(ours.0, ours.1).unwrap(), true),
    ] {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let address = region.peer_addresses[0];
        let exchange = async {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let name = rustls::pki_types::ServerName::try_from("node-0").unwrap();
            let stream = connector.connect(name, tcp).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let request = http::Request::get(HELLO_PATH)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sender.send_request(request).await?.status())
        };
        let status = tokio::time::timeout(Duration::from_secs(5), exchange).await.unwrap();
        match answered {
            // Unsigned, so refused, but answered: TLS let it through.
            true => assert_eq!(status.unwrap(), StatusCode::FORBIDDEN),
            false => assert!(status.is_err(), "answered without a region certificate: {status:?}"),
        }
    }
}

/// A node's certificate rotated on disk (a renewal: a new key, the same name) is
/// the one it presents to the next peer that connects, without a restart; the
/// region keeps serving through it.
#[tokio::test]
async fn a_peer_certificate_rotated_on_disk_is_taken_without_a_restart() {
    let (origin, data) = origin_with_model(81, 3 << 20).await;
    let ca = RegionCa::new();
    let region = Region::start_with(&origin, Layout::of(2).with_tls(&ca)).await;
    every_node_serves(&region, &data, "before the rotation").await;
    let presented = || async {
        let (cert, key, _) = ca.issue("asker", "node-0");
        let files = s3_accel::config::PeerTlsConfig {
            cert_file: cert,
            key_file: key,
            ca_file: ca.ca_file(),
            reload_interval: Duration::from_secs(60),
            identity: s3_accel::config::PeerIdentity::Node,
        };
        let tls = s3_accel::peers::tls::PeerTls::load(&files, "node-0").unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.client_config(true).unwrap()));
        let tcp = tokio::net::TcpStream::connect(region.peer_addresses[1]).await.unwrap();
        let server_name = rustls::pki_types::ServerName::IpAddress(region.peer_addresses[1].ip().into());
        let stream = connector.connect(server_name, tcp).await.unwrap();
        stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = presented().await;
    let (_, _, renewed) = ca.issue("node-1", "node-1");
    assert_ne!(before, renewed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while presented().await != renewed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    every_node_serves(&region, &data, "after the rotation").await;
    region.formed().await;
}

/// With one certificate for the region's nodes (`identity = "region"`, as a
/// Kubernetes Secret gives a DaemonSet's pods), naming none of them, the region
/// forms and serves in TLS; with `identity = "node"` the same certificate would keep
/// a node from starting.
#[tokio::test]
async fn with_one_certificate_for_the_region_the_peers_form_in_tls() {
    let (origin, data) = origin_with_model(83, 3 << 20).await;
    let ca = RegionCa::new();
    let mut layout = Layout::of(2).with_tls(&ca);
    layout.tls.as_mut().unwrap().1 = vec!["s3-accel-peers".into(); 2];
    layout.identity = "region";
    let region = Region::start_with(&origin, layout).await;
    every_node_serves(&region, &data, "a region sharing one certificate").await;
    let (_, ready) = admin_get(&region.nodes[0], "/readyz").await;
    assert!(ready.contains("peer TLS: on"), "{ready}");
}

/// A TCP relay on the peer network that passes bytes on to `target` until it is
/// cut, then drops everything both ways without closing anything (what a cut
/// cable or a hung host looks like from a peer: silence, not a reset). Counts the
/// bytes it passed from `target`.
async fn cuttable_relay(target: Arc<std::sync::OnceLock<SocketAddr>>) -> (SocketAddr, Arc<AtomicBool>, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.12:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (cut, passed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let (cut_, passed_) = (cut.clone(), passed.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(*target.get().unwrap()).await else {
                continue;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let pass = |mut from: tokio::net::tcp::OwnedReadHalf,
                        mut to: tokio::net::tcp::OwnedWriteHalf,
                        counted: Option<Arc<AtomicU64>>| {
                let cut = cut_.clone();
                async move {
                    let mut buffer = vec![0u8; 16 << 10];
                    while let Ok(n) = from.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        if cut.load(Ordering::SeqCst) {
                            continue;
                        }
                        if to.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                        if let Some(counted) = &counted {
                            counted.fetch_add(n as u64, Ordering::SeqCst);
                        }
                    }
                    // Held open: a cut link says nothing.
                    std::future::pending::<()>().await;
                    drop(to);
                }
            };
            tokio::spawn(pass(client_read, server_write, None));
            tokio::spawn(pass(server_read, client_write, Some(passed_.clone())));
        }
    });
    (address, cut, passed)
}

/// Node 0 reaches node 1 through a link that goes silent (no reset) while node 0's
/// client reads cold objects half of whose chunks node 1 owns: answers stop in the
/// middle, and later requests get nothing at all. Node 0 gives node 1 up within
/// seconds (an owner quiet for half of `peers.stall_timeout` must answer a hello) and
/// fills from the origin from the byte reached: every read byte-exact, none waiting
/// anywhere near the 35 s and 65 s a silent peer used to cost. Once the link is
/// back, node 1 serves node 0 again (an ejected peer is tried again, with backoff).
#[tokio::test]
async fn a_peer_gone_silent_costs_seconds_and_is_used_again_once_back() {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    // Three to read across the cut, then small ones to see node 1 used again (each
    // read once: a chunk node 0 filled itself is kept as a copy, and read again it
    // would ask no one).
    let mut objects = Vec::new();
    for i in 0..16u64 {
        let size = if i < 3 { 24 << 20 } else { 4 << 20 };
        let (key, data) = (format!("silent-{i}.bin"), object_bytes(70 + i, size));
        origin.put(BUCKET, &key, &data, &[]).await;
        objects.push((key, data));
    }
    let target = Arc::new(std::sync::OnceLock::new());
    let (relay, cut, passed) = cuttable_relay(target.clone()).await;
    let region = Region::start_with(&origin, Layout::relayed(relay, target)).await;
    let node = &region.nodes[0];
    let sample = |name: &'static str, labels: &'static str| async move {
        let (_, metrics) = admin_get(node, "/metrics").await;
        crate::ops::sample(&metrics, name, labels).unwrap_or(0.0)
    };
    let served_by_peer = || sample("s3accel_peer_requests_total", "role=\"reader\",outcome=\"ok\"");

    // The link works: node 1 serves its share.
    reads_byte_exact(node, &objects[..1], 1).await;
    assert!(
        served_by_peer().await > 0.0,
        "node 1 served nothing: the test proves nothing"
    );

    // Cut once node 1 is 4 MiB into its answers for the next object: some answers
    // stop midway, the rest never start.
    let from = passed.load(Ordering::SeqCst);
    let watcher = {
        let (cut, passed) = (cut.clone(), passed.clone());
        tokio::spawn(async move {
            while passed.load(Ordering::SeqCst) < from + (4 << 20) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            cut.store(true, Ordering::SeqCst);
        })
    };
    let gave_up = || sample("s3accel_peer_fallbacks_total", "reason=\"failed\"");
    let failed = gave_up().await;
    let started = std::time::Instant::now();
    for (key, data) in &objects[1..3] {
        let reply = get(node, read(key)).await;
        assert_eq!(reply.status, StatusCode::OK, "{key}");
        assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{key}");
    }
    let took = started.elapsed();
    assert!(watcher.is_finished(), "the link was never cut: the test proves nothing");
    println!("two 24 MiB reads across a silenced peer: {took:?}");
    assert!(
        took < Duration::from_secs(20),
        "a silent peer held the reads for {took:?} (35 s per chunk before)"
    );
    assert!(gave_up().await > failed, "node 1 was never given up");

    // The link back: node 1 serves node 0 again, after its ejection runs out.
    cut.store(false, Ordering::SeqCst);
    let before = served_by_peer().await;
    let mut back = false;
    for (key, data) in &objects[3..] {
        let reply = get(node, read(key)).await;
        assert_eq!(sha256_hex(&reply.body), sha256_hex(data), "{key}");
        if served_by_peer().await > before {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(back, "node 1 was never used again");
}
