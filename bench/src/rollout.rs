//! region-rollout: what a DaemonSet rollout costs. A region of s3-accel nodes with
//! disk tiers is warmed with a model (one cold read), then loaders read its shards
//! whole through nodes whose `/readyz` answered 200 within the last 100 ms (as a
//! Service or an anycast route sends them), while every node in turn gets SIGTERM,
//! exits, and starts again on its disk under its name. Twice: with readers waiting
//! for a restarting owner (`peers.restart_wait`, the default) and without (0 s).
//! Reported: GETs, failed requests, wrong bytes, origin bytes during the rollout,
//! throughput before and its lowest second during the rollout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;

use s3_accel::config::units::format_size;

use crate::client::{Failure, Get, Object};
use crate::run::{describe_shaping, result_paths, Bench};
use crate::scenario::Scenario;
use crate::target::{Kind, Target};

/// How the throughput is sampled.
const BUCKET: Duration = Duration::from_millis(250);
/// Steady reading before the first restart and after the last.
const STEADY: Duration = Duration::from_secs(3);
/// Between one node ready again and the next one's SIGTERM.
const PAUSE: Duration = Duration::from_secs(1);

/// One rollout's figures.
struct Rollout {
    label: &'static str,
    gets: u64,
    failed: u64,
    wrong: u64,
    origin_bytes: u64,
    /// GB/s over the steady period before the first SIGTERM.
    before: f64,
    /// The lowest GB/s over one second from the first SIGTERM to the last node ready.
    lowest: f64,
    /// Each node's SIGTERM to exit, and exit to ready with the region formed.
    stops: Vec<Duration>,
    restarts: Vec<Duration>,
    exits_ok: bool,
}

/// What the loaders saw, as they saw it.
#[derive(Default)]
struct Seen {
    gets: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
    /// Body bytes of correct answers, by [`BUCKET`] since the start.
    buckets: Mutex<Vec<u64>>,
}

impl Seen {
    fn add(&self, at: Duration, bytes: u64) {
        let index = (at.as_nanos() / BUCKET.as_nanos()) as usize;
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() <= index {
            buckets.resize(index + 1, 0);
        }
        buckets[index] += bytes;
    }

    /// GB/s over `from..to`.
    fn rate(&self, from: Duration, to: Duration) -> f64 {
        let buckets = self.buckets.lock().unwrap();
        let (first, last) = (
            (from.as_nanos() / BUCKET.as_nanos()) as usize,
            (to.as_nanos() / BUCKET.as_nanos()) as usize,
        );
        let bytes: u64 = buckets.iter().take(last).skip(first).sum();
        bytes as f64 / (to - from).as_secs_f64().max(1e-9) / 1e9
    }

    /// The lowest GB/s of any second within `from..to`.
    fn lowest_second(&self, from: Duration, to: Duration) -> f64 {
        let window = (Duration::from_secs(1).as_nanos() / BUCKET.as_nanos()) as u32;
        let mut start = from;
        let mut lowest = f64::MAX;
        while start + BUCKET * window <= to {
            lowest = lowest.min(self.rate(start, start + BUCKET * window));
            start += BUCKET;
        }
        if lowest == f64::MAX {
            self.rate(from, to)
        } else {
            lowest
        }
    }
}

pub async fn run(bench: &Bench, scenario: &Scenario, seed: u64) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!("\n{}: {}", scenario.name, scenario.summary);
    let objects = bench.upload(&scenario.objects, seed).await?;
    let mut rollouts = Vec::new();
    for (label, wait) in [
        ("readers wait for a restarting owner (peers.restart_wait 15 s)", None),
        (
            "no wait (peers.restart_wait 0 s): its share filled from the origin",
            Some("0s"),
        ),
    ] {
        let rollout = roll(bench, scenario, &objects, label, wait).await?;
        eprintln!(
            "  {label}: {} GETs, {} failed, {} wrong, origin {} during the rollout, {:.3} GB/s before, lowest second {:.3} GB/s",
            rollout.gets,
            rollout.failed,
            rollout.wrong,
            format_size(rollout.origin_bytes),
            rollout.before,
            rollout.lowest
        );
        rollouts.push(rollout);
    }
    let working_set: u64 = objects.iter().map(|o| o.len()).sum();
    let mut markdown = format!(
        "## {}\n\n{}\n\n{}; s3-accel: {} chunks, memory tier {}, disk tier {}, withdraw_grace 1 s; {} cores.\n\n\
         | rollout | GETs | failed | wrong bytes | origin bytes during the rollout | × working set | before, GB/s | \
         lowest second during, GB/s | dip | SIGTERM to exit | exit to ready | exit codes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        scenario.name,
        scenario.summary,
        describe_shaping(args, &bench.origin_shaping()),
        format_size(args.chunk_size),
        format_size(args.memory_cache),
        format_size(args.disk_cache),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let seconds = |list: &[Duration]| {
        list.iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for r in &rollouts {
        markdown.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.0} % | {} | {} | {} |\n",
            r.label,
            r.gets,
            r.failed,
            r.wrong,
            format_size(r.origin_bytes),
            r.origin_bytes as f64 / working_set as f64,
            r.before,
            r.lowest,
            100.0 * (1.0 - r.lowest / r.before.max(1e-9)).max(0.0),
            seconds(&r.stops),
            seconds(&r.restarts),
            if r.exits_ok { "all 0" } else { "NOT ALL 0" },
        ));
    }
    println!("\n{markdown}");
    let name = match args.hosts {
        true => format!("{}-hosts", scenario.name),
        false => scenario.name.to_owned(),
    };
    let (md, _) = result_paths(&args.results, &name);
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("wrote {}", md.display());
    Ok(())
}

/// One rollout on a fresh region.
async fn roll(
    bench: &Bench,
    scenario: &Scenario,
    objects: &[Arc<Object>],
    label: &'static str,
    restart_wait: Option<&'static str>,
) -> anyhow::Result<Rollout> {
    let dir = tempfile::tempdir_in(bench.work.path())?;
    let settings = crate::target::ProxySettings {
        withdraw_grace: Some("1s"),
        restart_wait,
        ..bench.proxy_settings(dir.path())
    };
    let Target::Nodes(mut nodes) = Target::start(Kind::Region, &settings).await? else {
        unreachable!("a region is nodes")
    };
    let count = nodes.len();
    // The model, read once cold through the region.
    for object in objects {
        let sample = bench.client.send(nodes[0].address, &Get::full(object)).await;
        anyhow::ensure!(
            sample.outcome.is_ok(),
            "the cold read of {}: {:?}",
            object.path,
            sample.outcome
        );
    }
    bench.origin.stats.settled().await;
    let origin_before = bench.origin.stats.body_bytes();
    let ready: Arc<Vec<AtomicBool>> = Arc::new((0..count).map(|_| AtomicBool::new(true)).collect());
    let addresses: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(nodes.iter().map(|n| n.address).collect()));
    let admins: Vec<SocketAddr> = nodes.iter().map(|n| n.admin).collect();
    let (stop, seen, start) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Seen::default()),
        Instant::now(),
    );
    let watcher = {
        let (ready, stop) = (ready.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                for (i, admin) in admins.iter().enumerate() {
                    ready[i].store(crate::target::ready_at(*admin).await, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let crate::scenario::Workload::Fleet { workers, .. } = scenario.workload else {
        unreachable!("region-rollout loads a model")
    };
    let loaders: Vec<_> = (0..workers)
        .map(|_| {
            let (ready, stop, seen, addresses, client) = (
                ready.clone(),
                stop.clone(),
                seen.clone(),
                addresses.clone(),
                bench.client.clone(),
            );
            let objects = objects.to_vec();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let up: Vec<usize> = (0..ready.len()).filter(|&i| ready[i].load(Ordering::SeqCst)).collect();
                    if up.is_empty() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let (node, object) = {
                        let mut rng = rand::rng();
                        (up[rng.random_range(0..up.len())], rng.random_range(0..objects.len()))
                    };
                    let address = addresses.lock().unwrap()[node];
                    let sample = client.send(address, &Get::full(&objects[object])).await;
                    seen.gets.fetch_add(1, Ordering::SeqCst);
                    match sample.outcome {
                        Ok(()) => seen.add(start.elapsed(), sample.bytes),
                        Err(Failure::Corrupt) => {
                            seen.wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(failure) => {
                            tracing::warn!(%failure, %address, "a read failed during the rollout");
                            seen.failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(STEADY).await;
    let rollout_began = start.elapsed();
    let (mut stops, mut restarts, mut exits_ok) = (Vec::new(), Vec::new(), true);
    for (i, node) in nodes.iter_mut().enumerate() {
        let (took, status) = node.terminate().await?;
        exits_ok &= status.success();
        stops.push(took);
        let exited = Instant::now();
        node.relaunch().await?;
        addresses.lock().unwrap()[i] = node.address;
        node.formed(count).await?;
        restarts.push(exited.elapsed());
        tokio::time::sleep(PAUSE).await;
    }
    let rollout_ended = start.elapsed();
    tokio::time::sleep(STEADY).await;
    stop.store(true, Ordering::SeqCst);
    for loader in loaders {
        loader.await?;
    }
    watcher.await?;
    bench.origin.stats.settled().await;
    let rollout = Rollout {
        label,
        gets: seen.gets.load(Ordering::SeqCst),
        failed: seen.failed.load(Ordering::SeqCst),
        wrong: seen.wrong.load(Ordering::SeqCst),
        origin_bytes: bench.origin.stats.body_bytes() - origin_before,
        before: seen.rate(Duration::from_secs(1), rollout_began),
        lowest: seen.lowest_second(rollout_began, rollout_ended),
        stops,
        restarts,
        exits_ok,
    };
    Target::Nodes(nodes).stop().await;
    Ok(rollout)
}
