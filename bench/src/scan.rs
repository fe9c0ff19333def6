//! scan-vs-hot: does a one-pass scan flush the hot set? One s3-accel node with a
//! small memory tier and a disk tier that holds the hot set; hot readers read a
//! model's shards over and over while a scanner streams a dataset twice the size of
//! both tiers, once. Reported for each `cache.admission` choice: the hot set's byte
//! hit rate during the scan (its origin bytes: the origin's bytes then, less the
//! scan's own), the origin bytes of reading the hot set once after it, the hot
//! reads' TTFB, and the scan's throughput and correctness.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use s3_accel::config::units::format_size;

use crate::client::{Failure, Get, Object};
use crate::run::{describe_shaping, percentile, write_table, Bench};
use crate::scenario::Scenario;
use crate::target::{Kind, Target};

const MIB: u64 = 1 << 20;

/// The scenario's sizes: tiers of at most 128 MiB and 512 MiB (the command line's
/// if smaller), a hot set of three times the memory tier that fits the disk tier,
/// and a scan twice both tiers.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub memory: u64,
    pub disk: u64,
    pub shard: u64,
    pub hot: u64,
    pub cold: u64,
}

impl Sizes {
    pub fn of(args: &crate::Args) -> Self {
        let (memory, disk) = (args.memory_cache.min(128 * MIB), args.disk_cache.min(512 * MIB));
        let shard = args.size.unwrap_or(32 * MIB);
        Self {
            memory,
            disk,
            shard,
            hot: ((3 * memory).min(disk * 3 / 4) / shard).max(1),
            cold: (2 * (memory + disk) / shard).max(1),
        }
    }
}
/// Hot readers.
const READERS: usize = 6;
/// The admission choices compared (`None`: the default).
const ADMISSIONS: [Option<&str>; 3] = [Some("all"), Some("frequency"), Some("second-hit")];

struct Row {
    admission: &'static str,
    hot_gets: u64,
    hot_bytes: u64,
    /// Origin bytes during the scan, less the scan's own: the hot set's fills, and
    /// what each hit's authorization by the origin sent before it was cut.
    hot_origin: u64,
    /// Bytes of hot chunks filled from the origin during the scan.
    hot_filled: u64,
    /// Origin bytes to read the hot set once after the scan.
    after: u64,
    ttfb_p50: Duration,
    ttfb_p99: Duration,
    scan_rate: f64,
    failed: u64,
    wrong: u64,
}

pub async fn run(bench: &Bench, scenario: &Scenario, seed: u64) -> anyhow::Result<()> {
    eprintln!("\n{}: {}", scenario.name, scenario.summary);
    let objects = bench.upload(&scenario.objects, seed).await?;
    let sizes = Sizes::of(&bench.args);
    let (hot, cold) = objects.split_at(sizes.hot as usize);
    let mut rows = Vec::new();
    for admission in ADMISSIONS {
        let row = once(bench, &sizes, hot, cold, admission).await?;
        eprintln!(
            "  admission {}: hot hit rate during the scan {:.1} %, hot chunks filled {} during, {} after; scan {:.3} GB/s",
            row.admission,
            hit_rate(&row),
            format_size(row.hot_filled),
            format_size(row.after),
            row.scan_rate
        );
        rows.push(row);
    }
    let hot_size = sizes.hot * sizes.shard;
    let mut markdown = format!(
        "## {}\n\n{}\n\n{}; s3-accel: {} chunks, memory tier {}, disk tier {}; {} cores.\n\n\
         | cache.admission | hot GETs during the scan | hot bytes read | hot chunks filled during | hot byte hit rate during | \
         origin bytes during, less the scan's | hot TTFB p50 / p99 | origin bytes to read the hot set after | scan GB/s | failed | wrong |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        scenario.name,
        scenario.summary,
        describe_shaping(&bench.args, &bench.origin_shaping()),
        format_size(bench.args.chunk_size),
        format_size(sizes.memory),
        format_size(sizes.disk),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    for r in &rows {
        markdown.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % | {} | {:.1} / {:.1} ms | {} ({:.2}× the hot set) | {:.3} | {} | {} |\n",
            r.admission,
            r.hot_gets,
            format_size(r.hot_bytes),
            format_size(r.hot_filled),
            hit_rate(r),
            format_size(r.hot_origin),
            r.ttfb_p50.as_secs_f64() * 1e3,
            r.ttfb_p99.as_secs_f64() * 1e3,
            format_size(r.after),
            r.after as f64 / hot_size as f64,
            r.scan_rate,
            r.failed,
            r.wrong,
        ));
    }
    write_table(&bench.args, scenario.name, &markdown)
}

/// Of the hot bytes read during the scan, the share served from the cache (not
/// filled from the origin then).
fn hit_rate(row: &Row) -> f64 {
    100.0 * (1.0 - row.hot_filled as f64 / row.hot_bytes.max(1) as f64).max(0.0)
}

/// One run on a fresh node with `admission`.
async fn once(
    bench: &Bench,
    sizes: &Sizes,
    hot: &[Arc<Object>],
    cold: &[Arc<Object>],
    admission: Option<&'static str>,
) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir_in(bench.work.path())?;
    let settings = crate::target::ProxySettings {
        memory_cache: sizes.memory,
        disk_cache: sizes.disk,
        admission,
        ..bench.proxy_settings(dir.path())
    };
    let target = Target::start(Kind::S3Accel, &settings).await?;
    let address = target.addresses()[0];
    let client = &bench.client;
    // The hot set, read twice: cached, and known to be read again.
    for _ in 0..2 {
        for object in hot {
            let sample = client.send(address, &Get::full(object)).await;
            anyhow::ensure!(sample.outcome.is_ok(), "warming {}: {:?}", object.path, sample.outcome);
        }
    }
    bench.origin.stats.settled().await;
    let origin_before = bench.origin.stats.body_bytes();
    let fills_before = bench.origin.stats.fill_paths.lock().unwrap().len();
    let (stop, failed, wrong) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (gets, bytes, ttfbs) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (stop, failed, wrong, gets, bytes, ttfbs, client) = (
                stop.clone(),
                failed.clone(),
                wrong.clone(),
                gets.clone(),
                bytes.clone(),
                ttfbs.clone(),
                client.clone(),
            );
            let hot = hot.to_vec();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let object = &hot[rand::rng().random_range(0..hot.len())];
                    let sample = client.send(address, &Get::full(object)).await;
                    gets.fetch_add(1, Ordering::SeqCst);
                    match sample.outcome {
                        Ok(()) => {
                            bytes.fetch_add(sample.bytes, Ordering::SeqCst);
                            ttfbs.lock().unwrap().push(sample.ttfb);
                        }
                        Err(Failure::Corrupt) => {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    // The scan: every cold shard once, two at a time.
    let began = Instant::now();
    let scanned = futures_util::future::join_all((0..2).map(|half| {
        let (failed, wrong) = (failed.clone(), wrong.clone());
        async move {
            let mut read = 0u64;
            for object in cold.iter().skip(half).step_by(2) {
                let sample = client.send(address, &Get::full(object)).await;
                match sample.outcome {
                    Ok(()) => read += sample.bytes,
                    Err(Failure::Corrupt) => {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            read
        }
    }))
    .await;
    let scan_seconds = began.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await?;
    }
    bench.origin.stats.settled().await;
    let cold_size: u64 = cold.iter().map(|o| o.len()).sum();
    let during = bench.origin.stats.body_bytes() - origin_before;
    // Chunks of the hot set filled from the origin during the scan.
    let hot_fills = bench.origin.stats.fill_paths.lock().unwrap()[fills_before..]
        .iter()
        .filter(|path| path.contains("/model/"))
        .count() as u64;
    // After: the hot set once more.
    let origin_after = bench.origin.stats.body_bytes();
    for object in hot {
        let sample = client.send(address, &Get::full(object)).await;
        if sample.outcome.is_err() {
            failed.fetch_add(1, Ordering::SeqCst);
        }
    }
    bench.origin.stats.settled().await;
    let after = bench.origin.stats.body_bytes() - origin_after;
    target.stop().await;
    let mut ttfbs = std::mem::take(&mut *ttfbs.lock().unwrap());
    ttfbs.sort_unstable();
    Ok(Row {
        admission: admission.unwrap_or("(default)"),
        hot_gets: gets.load(Ordering::SeqCst),
        hot_bytes: bytes.load(Ordering::SeqCst),
        hot_origin: during.saturating_sub(cold_size),
        hot_filled: hot_fills * bench.args.chunk_size,
        after,
        ttfb_p50: percentile(&ttfbs, 0.5),
        ttfb_p99: percentile(&ttfbs, 0.99),
        scan_rate: scanned.iter().sum::<u64>() as f64 / scan_seconds / 1e9,
        failed: failed.load(Ordering::SeqCst),
        wrong: wrong.load(Ordering::SeqCst),
    })
}
