//! A region's nodes as one cache: several s3-accel instances on 127.0.0.x in front
//! of one origin, each chunk fetched from the origin once for all of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use s3_accel::peers::auth::{PeerKeys, PEER_DATE, PEER_SIGNATURE};
use s3_accel::peers::protocol::{CHUNK_PATH, HELLO_PATH, HELLO_REPLY};

use crate::ops::admin_get;
use crate::support::client::{Call, TestClient};
use crate::support::{get, object_bytes, outcome, sha256_hex, Signing, TestOrigin, TestProxy};

const BUCKET: &str = "models";
const SECRET: &str = "a-region-secret-of-at-least-32-bytes";
const CACHE: &str = "memory = \"128MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"";

/// `nodes` s3-accel instances that know each other as peers.
struct Region {
    nodes: Vec<TestProxy>,
    /// Each node's configuration, to restart it as it was.
    configs: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Region {
    async fn start(origin: &TestOrigin, count: u8) -> Self {
        Self::start_with(origin, count, CACHE).await
    }

    async fn start_with(origin: &TestOrigin, count: u8, cache: &str) -> Self {
        let secret = tempfile::tempdir().unwrap();
        let secret_file = secret.path().join("keys");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        // Free ports, one per node's address (the peers must be listed at start).
        let peers: Vec<SocketAddr> = (0..count)
            .map(|i| {
                let listener = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 1 + i), 0)).unwrap();
                listener.local_addr().unwrap()
            })
            .collect();
        let list = peers.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
        let (mut nodes, mut dirs, mut configs) = (Vec::new(), Vec::new(), Vec::new());
        for (i, peer) in peers.iter().enumerate() {
            let cache_dir = tempfile::tempdir().unwrap();
            let text = format!(
                "listen = \"127.0.0.{}:0\"\nadmin_listen = \"127.0.0.1:0\"\norigin = \"{}\"\n\
                 [credentials]\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
                 [peers]\nnode_name = \"node-{i}\"\nlisten = \"{peer}\"\naddresses = [{list}]\n\
                 secret_file = \"{}\"\nrefresh = \"200ms\"\n[cache]\ndir = \"{}\"\n{cache}\n",
                i + 1,
                origin.url(),
                crate::support::origin::ACCESS_KEY,
                crate::support::origin::SECRET_KEY,
                secret_file.display(),
                cache_dir.path().display(),
            );
            dirs.push(cache_dir);
            nodes.push(TestProxy::from_config(&text).await);
            configs.push(text);
        }
        dirs.push(secret);
        let region = Self {
            nodes,
            configs,
            _dirs: dirs,
        };
        region.formed().await;
        region
    }

    /// Waits until every node sees every other.
    async fn formed(&self) {
        let count = self.nodes.len();
        for node in &self.nodes {
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

/// An origin holding `model.bin`, `size` bytes.
async fn origin_with_model(seed: u64, size: usize) -> (TestOrigin, Vec<u8>) {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket(BUCKET).await;
    let data = object_bytes(seed, size);
    origin.put(BUCKET, "model.bin", &data, &[]).await;
    (origin, data)
}

fn read(key: &str) -> Call {
    Call::get(
        &format!("/{BUCKET}/{key}"),
        &Signing::Presigned(TestOrigin::credentials()),
    )
}

#[tokio::test]
async fn a_region_fetches_each_chunk_from_the_origin_once() {
    let size = 48 << 20;
    let (origin, data) = origin_with_model(3, size).await;
    let region = Region::start(&origin, 4).await;

    // Every node's clients read the same cold object at once.
    let before = origin.stats.body_bytes();
    let readers: Vec<_> = region
        .nodes
        .iter()
        .flat_map(|node| (0..3).map(move |_| (node.client.clone(), node.address)))
        .map(|(client, address)| tokio::spawn(async move { client.send(address, &read("model.bin")).await }))
        .collect();
    for reader in readers {
        let reply = reader.await.unwrap().unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
    }
    origin.stats.settled().await;
    let sent = origin.stats.body_bytes() - before;
    println!(
        "region herd: 4 nodes x 3 clients, {size}-byte object: the origin sent {sent} body bytes ({:.3}x) in {} fills",
        sent as f64 / size as f64,
        origin.stats.fills()
    );
    // Each chunk once, plus what four cold probes had in flight when they were cut.
    assert!(
        sent <= size as u64 + 4 * (2 << 20),
        "the origin sent {sent} bytes for a {size}-byte object"
    );
    assert!(
        origin.stats.fills() <= 48 + 2,
        "{} fills for 48 chunks",
        origin.stats.fills()
    );

    // A re-read on every node costs the origin no body: each node's misses were
    // served by the chunks' owners.
    let before = origin.stats.body_bytes();
    for node in &region.nodes {
        let reply = get(node, read("model.bin")).await;
        assert_eq!(sha256_hex(&reply.body), sha256_hex(&data));
        assert!(matches!(outcome(&reply), "hit" | "miss"));
    }
    assert_eq!(origin.stats.body_bytes(), before, "a re-read costs the origin nothing");
}

#[tokio::test]
async fn a_node_restarted_under_its_name_serves_what_its_disk_holds() {
    let size = 24 << 20;
    let (origin, data) = origin_with_model(7, size).await;
    let disk = "memory = \"64MiB\"\ndisk = \"256MiB\"\nchunk_size = \"1MiB\"";
    let mut region = Region::start_with(&origin, 3, disk).await;
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
    // Node 2's own cold probe (metadata is per node for now) had part of a body in
    // flight when it was dropped: less than a chunk, and no chunk fetched again.
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
    for node in &region.nodes {
        let reply = get(node, read("model.bin")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            sha256_hex(&reply.body),
            sha256_hex(&data),
            "no client error because a peer died"
        );
    }
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
