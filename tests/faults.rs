//! The fault battery: origins that break framing, send another range, change the
//! object mid-read or fail, and a process killed under load. Whatever happens, no
//! response completes with wrong bytes, and nothing wrong is cached: with the fault
//! gone, and after a restart, every read is byte-exact.

use std::time::Duration;

use http::StatusCode;

use crate::support::client::Call;
use crate::support::framing::{Fault, FramingOrigin};
use crate::support::origin::{ACCESS_KEY, SECRET_KEY};
use crate::support::{object_bytes, sha256_hex, Reply, Signing, TestOrigin, TestProxy};

const CHUNK: usize = 1 << 20;
const SIZE: usize = 6 * CHUNK + 1234;
/// A disk tier, so that what was cached survives a restart.
const DISK_CACHE: &str = "memory = \"16MiB\"\ndisk = \"256MiB\"\nchunk_size = \"1MiB\"";

fn credentials() -> String {
    format!("[credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n")
}

/// Reads a client would make: whole objects presigned, and boto3's ranged parts.
fn reads() -> Vec<(Call, usize, usize)> {
    let target = "/bucket/object.bin";
    let mut reads = vec![(
        Call::get(target, &Signing::Presigned(TestOrigin::credentials())),
        0,
        SIZE,
    )];
    for first in [0, 2 * CHUNK, 5 * CHUNK + 7] {
        let last = (first + CHUNK + 99).min(SIZE - 1);
        let call = Call::get(target, &TestOrigin::signing()).header("range", &format!("bytes={first}-{last}"));
        reads.push((call, first, last + 1));
    }
    reads
}

/// A response that completes must carry exactly the origin's bytes; failing is fine.
fn judge(fault: Fault, reply: Result<Reply, String>, data: &[u8], from: usize, to: usize) -> bool {
    match reply {
        Ok(reply) if reply.status.is_success() => {
            assert_eq!(
                sha256_hex(&reply.body),
                sha256_hex(&data[from..to]),
                "{fault:?}: a response completed with wrong bytes ({}, {})",
                reply.status,
                reply.header("x-s3-accel-cache").unwrap_or("")
            );
            true
        }
        Ok(reply) => {
            assert!(
                matches!(
                    reply.status,
                    StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::INTERNAL_SERVER_ERROR
                ),
                "{fault:?}: {} {}",
                reply.status,
                reply.text()
            );
            false
        }
        Err(_) => false,
    }
}

async fn read_all(proxy: &TestProxy, fault: Fault, data: &[u8]) -> usize {
    let mut complete = 0;
    for (call, from, to) in reads() {
        let reply = tokio::time::timeout(Duration::from_secs(60), proxy.send(&call))
            .await
            .expect("no hang");
        complete += usize::from(judge(fault, reply, data, from, to));
    }
    complete
}

#[tokio::test]
async fn origin_faults_never_complete_or_cache_wrong_bytes() {
    let data = object_bytes(10, SIZE);
    for fault in [
        Fault::StrayResponse,
        Fault::ShiftedRange,
        Fault::NewVersion,
        Fault::ServerError,
    ] {
        for toml in [credentials(), String::new()] {
            let origin = FramingOrigin::start(data.clone()).await;
            let config = format!("origin = \"{}\"\n{toml}", origin.url());
            let proxy = TestProxy::start_in(tempfile::tempdir().unwrap(), &config, DISK_CACHE).await;
            if fault == Fault::NewVersion {
                // The cache knows the first version before the object changes under it.
                let first = Call::get("/bucket/object.bin", &Signing::Presigned(TestOrigin::credentials()))
                    .unsigned_header("range", "bytes=0-0");
                assert_eq!(proxy.send(&first).await.unwrap().status, StatusCode::PARTIAL_CONTENT);
            }
            origin.set(fault);
            // Twice: the second round meets whatever the first left behind.
            let faulty = read_all(&proxy, fault, &data).await + read_all(&proxy, fault, &data).await;
            origin.set(Fault::None);
            // Stray answers still on their way belong to the fault.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let healed = read_all(&proxy, Fault::None, &data).await;
            assert_eq!(
                healed,
                reads().len(),
                "{fault:?}: every read heals once the origin does"
            );
            let dir = proxy.stop().await;
            let proxy = TestProxy::start_in(dir, &config, DISK_CACHE).await;
            let restarted = read_all(&proxy, Fault::None, &data).await;
            assert_eq!(restarted, reads().len(), "{fault:?}: after a restart");
            println!(
                "{fault:?} (proxy credentials: {}): {faulty} of {} reads completed under the fault, all byte-exact",
                !toml.is_empty(),
                2 * reads().len()
            );
        }
    }
}

/// A free loopback port (bound, then released for the process to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The s3-accel binary on `dir`, in front of `origin`, listening on `port`.
async fn spawn_binary(origin: &str, dir: &std::path::Path, port: u16) -> tokio::process::Child {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_s3-accel"))
        .args(["--origin", origin, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", "127.0.0.1:0", "--cache-dir"])
        .arg(dir)
        .args([
            "--memory-cache",
            "16MiB",
            "--disk-cache",
            "256MiB",
            "--chunk-size",
            "1MiB",
        ])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("S3_ACCEL_CONFIG")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s3-accel did not listen on {port}");
}

#[tokio::test]
async fn a_process_killed_under_load_restarts_byte_exact() {
    let origin = TestOrigin::honoring().await;
    origin.create_bucket("bucket").await;
    let data = object_bytes(11, SIZE);
    origin.put("bucket", "object.bin", &data, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = spawn_binary(&origin.url(), dir.path(), port).await;
    let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let client = crate::support::TestClient::default();
    // Load: readers of the whole object and of parts, until the kill.
    let load: Vec<_> = (0..6)
        .map(|i| {
            let (client, data) = (client.clone(), data.clone());
            tokio::spawn(async move {
                let (call, from, to) = reads()[i % 4].clone();
                loop {
                    match client.send(address, &call).await {
                        Ok(reply) => {
                            judge(Fault::None, Ok(reply), &data, from, to);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for task in load {
        task.await.unwrap();
    }

    let (bytes_before, port) = (origin.stats.body_bytes(), free_port());
    let mut child = spawn_binary(&origin.url(), dir.path(), port).await;
    let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    for (call, from, to) in reads() {
        let reply = client.send(address, &call).await.unwrap();
        assert!(judge(Fault::None, Ok(reply), &data, from, to), "after kill -9");
    }
    println!(
        "kill -9: after the restart the reads cost the origin {} body bytes of a {SIZE}-byte object",
        origin.stats.body_bytes() - bytes_before
    );
    child.start_kill().unwrap();
}
