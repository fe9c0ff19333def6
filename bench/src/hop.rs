//! What a peer hop adds to a read: the bench asks each warm chunk of a region's
//! model from its owner, as a reader node would (signed with the region's key),
//! and times the owner's first body byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;

use s3_accel::cache::ObjectId;
use s3_accel::peers::auth::{KeyRing, PeerKeys};
use s3_accel::peers::client::{PeerClient, PeerTimeouts};
use s3_accel::peers::membership::{Member, Members};
use s3_accel::peers::protocol::{ChunkRequest, Signer};
use s3_accel::peers::wire;

use crate::client::{Client, Get, Object};
use crate::target::{Target, PEER_SECRET};

/// Chunk requests timed, one after another.
const SAMPLES: u64 = 400;

/// Owners' answers to warm chunk requests.
#[derive(Clone)]
pub struct PeerHop {
    /// Microseconds from the request to the first body byte, of the answers the
    /// owner served from its tiers.
    pub ttfb: Histogram<u64>,
    /// Microseconds from the request to the chunk's first block, its tag checked:
    /// what a reader waits before it uses the first byte (it uses none unchecked).
    pub checked: Histogram<u64>,
    /// Answers the owner had to fill (not a hop's cost alone: not in `ttfb`).
    pub filled: u64,
    /// CPU seconds per GiB of each check, on one core ([`integrity_costs`]).
    pub costs: Vec<(&'static str, f64)>,
}

impl PeerHop {
    pub fn merge(&mut self, other: &PeerHop) {
        self.ttfb.add(&other.ttfb).expect("same bounds");
        self.checked.add(&other.checked).expect("same bounds");
        self.filled += other.filled;
        if self.costs.is_empty() {
            self.costs.clone_from(&other.costs);
        }
    }
}

pub async fn measure(
    target: &Target,
    origin: SocketAddr,
    client: &Client,
    object: &Object,
    chunk_size: u64,
    tls: Option<s3_accel::config::PeerTlsConfig>,
) -> anyhow::Result<PeerHop> {
    // The herd's chunks are still being written to the nodes' disks for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keys = Arc::new(KeyRing::new(PeerKeys::from_text(PEER_SECRET)?));
    let tls = tls
        .map(|files| s3_accel::peers::tls::PeerTls::load(&files, crate::target::READER))
        .transpose()?;
    let peers = PeerClient::new(keys, tls.as_ref(), PeerTimeouts::default())?;
    let mut members = Vec::new();
    for address in target.peer_addresses() {
        let hello = peers
            .hello(address)
            .await
            .with_context(|| format!("hello to {address}"))?;
        members.push(Member {
            address: Some(address),
            hello,
        });
    }
    let members = Members::new(members);
    let head = client.send(origin, &Get::head(object)).await;
    let etag = head.etag.context("the origin's HEAD had no ETag")?;
    let (bucket, key) = object.path[1..].split_once('/').context("a /bucket/key path")?;
    let template = ChunkRequest {
        object: ObjectId {
            origin: format!("http://{origin}"),
            bucket: bucket.into(),
            key: key.into(),
            version_id: None,
        },
        etag,
        size: object.len(),
        chunk_size,
        index: 0,
        authority: origin.to_string(),
        signer: Signer::Proxy {
            target: object.path.clone(),
            region: "us-east-1".into(),
        },
        checksums: Vec::new(),
        priority: s3_accel::fetch::Priority::Client,
    };
    let chunks = object.len().div_ceil(chunk_size);
    let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut hop = PeerHop {
        ttfb: histogram(),
        checked: histogram(),
        filled: 0,
        costs: Vec::new(),
    };
    for sample in 0..SAMPLES {
        let request = ChunkRequest {
            index: sample % chunks,
            ..template.clone()
        };
        let owner = members.ranked(request.key().stable_hash())[0]
            .address
            .expect("every member has an address");
        let started = Instant::now();
        let answer = peers.chunk(owner, &request, Duration::from_secs(30)).await?;
        let (source, mut body) = (answer.source, answer.body);
        let tag = answer.tag;
        let first = body.frame().await;
        let ttfb = started.elapsed();
        let Some(Ok(first)) = first else {
            anyhow::bail!("the owner's answer had no body");
        };
        let mut answer = first.into_data().unwrap_or_default().to_vec();
        let length = request.length();
        // A reader uses a block once it and its tag are in: the first block's check
        // is what a peer hop adds before a client's first byte. (In TLS there are no
        // tags: the first byte is checked as it comes.)
        let checked = match tag {
            Some(mut tag) => {
                let first_block = wire::TAG_BLOCK.min(length) as usize + wire::BODY_TAG_LEN;
                while answer.len() < first_block {
                    match body.frame().await {
                        Some(frame) => answer.extend_from_slice(&frame?.into_data().unwrap_or_default()),
                        None => anyhow::bail!("an owner's answer ended before its first block"),
                    }
                }
                tag.update(&answer[..first_block - wire::BODY_TAG_LEN]);
                anyhow::ensure!(
                    tag.matches(&answer[first_block - wire::BODY_TAG_LEN..first_block]),
                    "an owner's chunk did not match its tag"
                );
                started.elapsed()
            }
            None => ttfb,
        };
        answer.extend_from_slice(&body.collect().await?.to_bytes());
        anyhow::ensure!(
            answer.len() as u64 == wire::tagged_length(length, !peers.is_protected()),
            "an owner's answer of another length"
        );
        match source.as_str() {
            "memory" | "disk" => {
                hop.ttfb.saturating_record(ttfb.as_micros() as u64);
                hop.checked.saturating_record(checked.as_micros() as u64);
            }
            _ => hop.filled += 1,
        }
    }
    hop.costs = integrity_costs(chunk_size);
    Ok(hop)
}

/// What checking costs, in CPU seconds per GiB on one core, over chunk-sized
/// buffers: each CRC a chunk may be kept with, and the HMAC a chunk's tag is
/// (computed by the owner, and again by the reader).
pub fn integrity_costs(chunk_size: u64) -> Vec<(&'static str, f64)> {
    use s3_accel::s3::Crc;
    let chunk: Vec<u8> = (0..chunk_size)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let rounds = (4u64 << 30).div_ceil(chunk_size).max(1);
    let gib = (rounds * chunk_size) as f64 / (1u64 << 30) as f64;
    let time = |work: &dyn Fn(&[u8])| {
        let started = Instant::now();
        for _ in 0..rounds {
            work(std::hint::black_box(&chunk));
        }
        started.elapsed().as_secs_f64() / gib
    };
    let keys = PeerKeys::from_text(PEER_SECRET).expect("the bench's key");
    vec![
        (
            "CRC32 (full-object check)",
            time(&|c| {
                std::hint::black_box(Crc::of(crc_fast::CrcAlgorithm::Crc32IsoHdlc, c));
            }),
        ),
        (
            "CRC64NVME (kept beside each chunk)",
            time(&|c| {
                std::hint::black_box(Crc::of(Crc::DEFAULT, c));
            }),
        ),
        (
            "HMAC-SHA256 (a peer chunk's tag, one end)",
            time(&|c| {
                let mut tag = wire::BodyTag::signing(&keys, b"request");
                tag.update(c);
                std::hint::black_box(tag.tag());
            }),
        ),
    ]
}
