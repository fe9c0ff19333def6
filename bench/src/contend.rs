//! prefetch-under-load: does warming a region hurt the reads it serves meanwhile?
//! A region of s3-accel nodes; loaders read every shard of a cold model (each
//! loader starting at a different shard, through the nodes in turn) alone, then
//! while a region-wide prefetch of another model streams through one node. Run with
//! the prefetch reading as a client (what `s3-accel prefetch` did before it asked
//! for background priority) and in the background, with and without an origin
//! budget. Reported: the live reads' TTFB and throughput, the prefetch's
//! throughput, the origin's bytes, and failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use s3_accel::config::units::format_size;

use crate::client::{Failure, Get, Object, Sample};
use crate::run::{describe_shaping, percentile, write_table, Bench};
use crate::scenario::Scenario;
use crate::target::{Kind, Target};

const MIB: u64 = 1 << 20;
/// The origin's link for this scenario: 1.6 Gbit/s, which a prefetch fills (on a
/// small machine, a faster one leaves the CPU the bottleneck, not the origin).
pub const LINK: u64 = 200_000_000;
/// Objects the prefetch reads at once (`s3-accel prefetch`'s default).
pub const PREFETCH_CONCURRENCY: usize = 8;
/// The region's origin budget in the budgeted runs: this share of the link.
const BUDGET_SHARE: f64 = 0.6;

#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub nodes: usize,
    pub workers: usize,
    pub live_shards: u64,
    pub live_shard: u64,
    pub warm_shards: u64,
    pub warm_shard: u64,
}

impl Sizes {
    pub fn of(args: &crate::Args) -> Self {
        Self {
            nodes: args.nodes.max(1),
            workers: args.clients.unwrap_or(8),
            live_shards: 8,
            live_shard: args.size.unwrap_or(32 * MIB),
            warm_shards: 8,
            warm_shard: 128 * MIB,
        }
    }
}

/// One run's setting: whether a prefetch runs and at which priority, and the
/// region's origin budget.
struct Setting {
    label: &'static str,
    prefetch: Option<Priority>,
    budget: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// As a client reads (no priority asked for).
    Client,
    Background,
}

const SETTINGS: [Setting; 5] = [
    Setting {
        label: "alone",
        prefetch: None,
        budget: false,
    },
    Setting {
        label: "with a prefetch reading as a client (before)",
        prefetch: Some(Priority::Client),
        budget: false,
    },
    Setting {
        label: "with a prefetch in the background",
        prefetch: Some(Priority::Background),
        budget: false,
    },
    Setting {
        label: "alone, origin budget",
        prefetch: None,
        budget: true,
    },
    Setting {
        label: "with a prefetch in the background, origin budget",
        prefetch: Some(Priority::Background),
        budget: true,
    },
];

struct Row {
    label: &'static str,
    gets: usize,
    ttfb_p50: Duration,
    ttfb_p99: Duration,
    /// The live reads' bytes over the time they took, GB/s.
    live_rate: f64,
    /// A run's live reads, on average.
    live_seconds: f64,
    /// The prefetch's bytes over its whole run, GB/s.
    prefetch_rate: f64,
    /// Origin body bytes while the live reads ran (a run's, on average).
    origin: u64,
    failed: u64,
    wrong: u64,
}

pub async fn run(bench: &Bench, scenario: &Scenario, seed: u64) -> anyhow::Result<()> {
    eprintln!("\n{}: {}", scenario.name, scenario.summary);
    let sizes = Sizes::of(&bench.args);
    let objects = bench.upload(&scenario.objects, seed).await?;
    let (live, warm) = objects.split_at(sizes.live_shards as usize);
    let link = bench.origin_shaping().total;
    let budget = match link {
        0 => 300_000_000,
        link => (link as f64 * BUDGET_SHARE) as u64,
    };
    // Rounds interleave the settings; each setting's runs are pooled.
    let mut runs: Vec<Vec<Run>> = SETTINGS.iter().map(|_| Vec::new()).collect();
    for round in 0..bench.args.rounds.max(1) {
        for (setting, runs) in SETTINGS.iter().zip(&mut runs) {
            eprintln!("  round {}: {}", round + 1, setting.label);
            runs.push(once(bench, &sizes, (live, warm), setting, budget).await?);
        }
    }
    let mut rows = Vec::new();
    for (setting, runs) in SETTINGS.iter().zip(runs) {
        let row = Row::of(setting.label, runs);
        eprintln!(
            "  {}: TTFB p50 {:.1} ms, p99 {:.1} ms; live {:.3} GB/s; prefetch {:.3} GB/s; {} failed, {} wrong",
            row.label,
            ms(row.ttfb_p50),
            ms(row.ttfb_p99),
            row.live_rate,
            row.prefetch_rate,
            row.failed,
            row.wrong
        );
        rows.push(row);
    }
    let mut markdown = format!(
        "## {}\n\n{}\n\n{}; s3-accel: {} chunks, memory tier {}, no disk tier; origin budget (where said): \
         `region_max_fill_bytes_per_sec = {}` ({:.0} % of the link); {} round(s), settings interleaved, each \
         setting's GETs pooled; {} cores.\n\n\
         | run | live GETs | live TTFB p50 / p99 | vs alone (p50) | live GB/s (s) | prefetch GB/s | \
         origin bytes meanwhile | failed | wrong |\n|---|---|---|---|---|---|---|---|---|\n",
        scenario.name,
        scenario.summary,
        describe_shaping(&bench.args, &bench.origin_shaping()),
        format_size(bench.args.chunk_size),
        format_size(memory(bench)),
        budget,
        BUDGET_SHARE * 100.0,
        bench.args.rounds.max(1),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    for (i, r) in rows.iter().enumerate() {
        // Each run against the run alone with the same budget.
        let alone = if i >= 3 { &rows[3] } else { &rows[0] };
        markdown.push_str(&format!(
            "| {} | {} | {:.1} / {:.1} ms | {:.2}× | {:.3} ({:.1}) | {:.3} | {} | {} | {} |\n",
            r.label,
            r.gets,
            ms(r.ttfb_p50),
            ms(r.ttfb_p99),
            r.ttfb_p50.as_secs_f64() / alone.ttfb_p50.as_secs_f64().max(1e-9),
            r.live_rate,
            r.live_seconds,
            r.prefetch_rate,
            format_size(r.origin),
            r.failed,
            r.wrong,
        ));
    }
    write_table(&bench.args, scenario.name, &markdown)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Each node's memory tier: enough for both models, at most the command line's.
fn memory(bench: &Bench) -> u64 {
    bench.args.memory_cache.min(1 << 30)
}

/// What one run measured.
struct Run {
    ttfbs: Vec<Duration>,
    live_bytes: u64,
    live_seconds: f64,
    prefetch: (u64, Duration),
    origin: u64,
    failed: u64,
    wrong: u64,
}

impl Row {
    /// A setting's runs, pooled.
    fn of(label: &'static str, runs: Vec<Run>) -> Self {
        let mut ttfbs: Vec<Duration> = runs.iter().flat_map(|r| r.ttfbs.iter().copied()).collect();
        ttfbs.sort_unstable();
        let live_seconds: f64 = runs.iter().map(|r| r.live_seconds).sum();
        let (prefetched, took) = runs
            .iter()
            .fold((0, Duration::ZERO), |(b, t), r| (b + r.prefetch.0, t + r.prefetch.1));
        Self {
            label,
            gets: ttfbs.len(),
            ttfb_p50: percentile(&ttfbs, 0.5),
            ttfb_p99: percentile(&ttfbs, 0.99),
            live_rate: runs.iter().map(|r| r.live_bytes).sum::<u64>() as f64 / live_seconds / 1e9,
            live_seconds: live_seconds / runs.len().max(1) as f64,
            prefetch_rate: prefetched as f64 / took.as_secs_f64().max(1e-9) / 1e9,
            origin: runs.iter().map(|r| r.origin).sum::<u64>() / runs.len().max(1) as u64,
            failed: runs.iter().map(|r| r.failed).sum(),
            wrong: runs.iter().map(|r| r.wrong).sum(),
        }
    }
}

/// One run on a fresh region.
async fn once(
    bench: &Bench,
    sizes: &Sizes,
    (live, warm): (&[Arc<Object>], &[Arc<Object>]),
    setting: &Setting,
    budget: u64,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir_in(bench.work.path())?;
    let keys = format!("region_max_fill_bytes_per_sec = \"{budget}\"");
    let settings = crate::target::ProxySettings {
        memory_cache: memory(bench),
        disk_cache: 0,
        nodes: sizes.nodes,
        origin_client: setting.budget.then_some(keys.as_str()),
        ..bench.proxy_settings(dir.path())
    };
    let target = Target::start(Kind::Region, &settings).await?;
    let addresses = target.addresses();
    let client = &bench.client;
    let (failed, wrong) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tally = |sample: &Sample| match &sample.outcome {
        Ok(()) => {}
        Err(Failure::Corrupt) => {
            wrong.fetch_add(1, Ordering::SeqCst);
        }
        Err(_) => {
            failed.fetch_add(1, Ordering::SeqCst);
        }
    };
    // The prefetch: every shard of the other model through one node, discarded;
    // its bytes and how long it took.
    let prefetch = setting.prefetch.map(|priority| {
        let (client, failed, wrong) = (client.clone(), failed.clone(), wrong.clone());
        let (warm, address) = (warm.to_vec(), addresses[0]);
        tokio::spawn(async move {
            let began = Instant::now();
            let mut prefetched = 0;
            let reads = futures_util::stream::iter(warm)
                .map(|object| {
                    let client = client.clone();
                    async move {
                        let get = Get {
                            background: priority == Priority::Background,
                            ..Get::full(&object)
                        };
                        client.send(address, &get).await
                    }
                })
                .buffer_unordered(PREFETCH_CONCURRENCY);
            futures_util::pin_mut!(reads);
            while let Some(sample) = reads.next().await {
                prefetched += sample.bytes;
                match sample.outcome {
                    Ok(()) => {}
                    Err(Failure::Corrupt) => {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            (prefetched, began.elapsed())
        })
    });
    // The prefetch well under way before the loaders start.
    if prefetch.is_some() {
        let under_way = bench.origin.stats.body_bytes() + 64 * MIB;
        let deadline = Instant::now() + Duration::from_secs(30);
        while bench.origin.stats.body_bytes() < under_way && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let origin_before = bench.origin.stats.body_bytes();
    let began = Instant::now();
    let loaders = (0..sizes.workers).map(|worker| {
        let address = addresses[worker % addresses.len()];
        async move {
            let mut samples = Vec::new();
            for k in 0..live.len() {
                let object = &live[(worker + k) % live.len()];
                samples.push(client.send(address, &Get::full(object)).await);
            }
            samples
        }
    });
    let samples: Vec<Sample> = futures_util::future::join_all(loaders)
        .await
        .into_iter()
        .flatten()
        .collect();
    let live_seconds = began.elapsed().as_secs_f64();
    let origin = bench.origin.stats.body_bytes() - origin_before;
    let prefetch = match prefetch {
        Some(prefetch) => prefetch.await?,
        None => (0, Duration::ZERO),
    };
    samples.iter().for_each(tally);
    target.stop().await;
    Ok(Run {
        ttfbs: samples.iter().filter(|s| s.outcome.is_ok()).map(|s| s.ttfb).collect(),
        live_bytes: samples.iter().map(|s| s.bytes).sum(),
        live_seconds,
        prefetch,
        origin,
        failed: failed.load(Ordering::SeqCst),
        wrong: wrong.load(Ordering::SeqCst),
    })
}
