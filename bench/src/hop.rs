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
use s3_accel::peers::client::PeerClient;
use s3_accel::peers::membership::{Member, Members};
use s3_accel::peers::protocol::{ChunkRequest, Signer};

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
    /// Answers the owner had to fill (not a hop's cost alone: not in `ttfb`).
    pub filled: u64,
}

impl PeerHop {
    pub fn merge(&mut self, other: &PeerHop) {
        self.ttfb.add(&other.ttfb).expect("same bounds");
        self.filled += other.filled;
    }
}

pub async fn measure(
    target: &Target,
    origin: SocketAddr,
    client: &Client,
    object: &Object,
    chunk_size: u64,
) -> anyhow::Result<PeerHop> {
    // The herd's chunks are still being written to the nodes' disks for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let keys = Arc::new(KeyRing::new(PeerKeys::from_text(PEER_SECRET)?));
    let peers = PeerClient::new(keys);
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
    };
    let chunks = object.len().div_ceil(chunk_size);
    let mut hop = PeerHop {
        ttfb: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        filled: 0,
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
        let first = body.frame().await;
        let ttfb = started.elapsed();
        anyhow::ensure!(matches!(first, Some(Ok(_))), "the owner's answer had no body");
        body.collect().await?;
        match source.as_str() {
            "memory" | "disk" => hop.ttfb.saturating_record(ttfb.as_micros() as u64),
            _ => hop.filled += 1,
        }
    }
    Ok(hop)
}
