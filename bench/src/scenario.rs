//! The workloads: who reads what, how, and how many at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use rand::{Rng, SeedableRng};

use s3_accel::config::units::format_size;

use crate::client::{Client, Get, Object};
use crate::report::Recorder;
use crate::{Args, ScenarioName};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub struct Scenario {
    pub name: &'static str,
    /// One line saying what the clients do.
    pub summary: String,
    /// Key and size of each object the origin holds for it.
    pub objects: Vec<(String, u64)>,
    pub workload: Workload,
    /// The origin's total bandwidth cap, bytes per second (0: none), unless the
    /// command line sets one.
    pub total_bandwidth: u64,
}

/// A region's 10 Gbit/s link: what a herd or a fleet of loaders shares.
const LINK: u64 = 1_250_000_000;

#[derive(Clone, Debug)]
pub enum Workload {
    /// Every client GETs the first object at once.
    Herd { clients: usize },
    /// One client GETs the first object.
    Single,
    /// Each client reads the first object as boto3's transfer manager does: HEAD,
    /// then `part`-sized ranged GETs, `parallel` at a time, with If-Match. The
    /// target is warmed by one such read first, unmeasured.
    Boto3 { clients: usize, part: u64, parallel: usize },
    /// `requests` GETs spread over `clients`, objects drawn with Zipf popularity.
    Zipf {
        clients: usize,
        requests: usize,
        exponent: f64,
    },
    /// Every worker GETs `reads` objects (a model's shards) in turn, each worker
    /// starting at a different one.
    Fleet { workers: usize, reads: usize },
}

impl Scenario {
    pub fn build(name: ScenarioName, args: &Args) -> Self {
        let size = |default: u64| args.size.unwrap_or(default);
        let clients = |default: usize| args.clients.unwrap_or(default).max(1);
        match name {
            ScenarioName::ColdHerd => {
                let (clients, size) = (clients(64), size(128 * MIB));
                Self {
                    name: "cold-herd",
                    summary: format!(
                        "{clients} clients GET the same cold {} object at once",
                        format_size(size)
                    ),
                    objects: vec![("cold-herd/object".into(), size)],
                    workload: Workload::Herd { clients },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::ColdSingle => {
                let size = size(GIB);
                Self {
                    name: "cold-single",
                    summary: format!("one client GETs a cold {} object whole", format_size(size)),
                    objects: vec![("cold-single/object".into(), size)],
                    workload: Workload::Single,
                    total_bandwidth: 0,
                }
            }
            ScenarioName::WarmLarge => {
                let (clients, size) = (clients(4), size(GIB));
                let (part, parallel) = (8 * MIB, 10);
                Self {
                    name: "warm-large",
                    summary: format!(
                        "{clients} clients read a warm {} object as boto3 does: HEAD, then {} ranged GETs, \
                         {parallel} in parallel, If-Match on each (after one unmeasured read to warm the target)",
                        format_size(size),
                        format_size(part)
                    ),
                    objects: vec![("warm-large/object".into(), size)],
                    workload: Workload::Boto3 {
                        clients,
                        part,
                        parallel,
                    },
                    total_bandwidth: 0,
                }
            }
            ScenarioName::SmallZipf => {
                let clients = clients(32);
                let count = args.objects.unwrap_or(2000).max(1);
                let (requests, exponent) = (args.requests.unwrap_or(20_000), 1.1);
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let objects = (0..count)
                    .map(|i| {
                        // Log-uniform between 4 KiB and 1 MiB (or the --size given).
                        let max = size(MIB).max(8 << 10) as f64;
                        let size = (4096f64 * (max / 4096.0).powf(rng.random::<f64>())) as u64;
                        (format!("small-zipf/{i:05}"), size)
                    })
                    .collect();
                Self {
                    name: "small-zipf",
                    summary: format!(
                        "{clients} clients make {requests} GETs of {count} objects of 4 KiB to {}, \
                         drawn with Zipf popularity (s = {exponent}), from a cold start",
                        format_size(size(MIB))
                    ),
                    objects,
                    workload: Workload::Zipf {
                        clients,
                        requests,
                        exponent,
                    },
                    total_bandwidth: 0,
                }
            }
            ScenarioName::ModelLoad => {
                let (workers, size) = (clients(8), size(256 * MIB));
                let shards = 4;
                Self {
                    name: "model-load",
                    summary: format!(
                        "{workers} workers start at once and each GETs all {shards} shards of {} of a cold model, \
                         one after another, each starting at a different shard",
                        format_size(size)
                    ),
                    objects: (0..shards)
                        .map(|i| {
                            (
                                format!("model-load/model-{:05}-of-{shards:05}.safetensors", i + 1),
                                size,
                            )
                        })
                        .collect(),
                    workload: Workload::Fleet { workers, reads: shards },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::ManyClients => {
                let (clients, size) = (clients(256), size(64 * MIB));
                let count = args.objects.unwrap_or(48).max(1);
                let reads = 2;
                Self {
                    name: "many-clients",
                    summary: format!(
                        "{clients} clients each GET {reads} of {count} objects of {} ({} in all, more than the \
                         memory tier), starting at different objects, after one unmeasured read of every object to warm the \
                         target: memory stays bounded by configuration",
                        format_size(size),
                        format_size(size * count as u64)
                    ),
                    objects: (0..count).map(|i| (format!("many-clients/{i:04}"), size)).collect(),
                    workload: Workload::Fleet {
                        workers: clients,
                        reads,
                    },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::RegionHerd => {
                let nodes = args.nodes.max(1);
                let (clients, size) = (clients(4 * nodes), size(GIB));
                Self {
                    name: "region-herd",
                    summary: format!(
                        "{nodes} s3-accel processes ({}), {clients} clients spread over them, \
                         all GET the same cold {} model at once: with peers (one region, one cache) and without \
                         (each node alone)",
                        match args.hosts {
                            true => "each a host of its own: network namespaces on one bridge",
                            false => "on 127.0.0.x of one loopback",
                        },
                        format_size(size)
                    ),
                    objects: vec![("region-herd/model.safetensors".into(), size)],
                    workload: Workload::Herd { clients },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::RegionRollout => {
                let nodes = args.nodes.max(1);
                let (clients, size, count) = (clients(2 * nodes), size(64 * MIB), 8);
                Self {
                    name: "region-rollout",
                    summary: format!(
                        "{nodes} s3-accel nodes of one region with disk tiers, {clients} loaders each reading whole \
                         shards of a {} model ({count} shards of {}) through a node whose /readyz is 200, while every \
                         node in turn gets SIGTERM and comes back on its disk under its name",
                        format_size(size * count),
                        format_size(size)
                    ),
                    objects: (0..count)
                        .map(|i| (format!("region-rollout/shard-{i:02}.safetensors"), size))
                        .collect(),
                    workload: Workload::Fleet {
                        workers: clients,
                        reads: usize::MAX,
                    },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::ScanVsHot => {
                let s = crate::scan::Sizes::of(args);
                let (hot, cold) = (s.hot, s.cold);
                Self {
                    name: "scan-vs-hot",
                    summary: format!(
                        "one s3-accel node (memory tier {}, disk tier {}); {} hot readers read a {} model ({hot} shards \
                         of {}) over and over while a scanner streams a {} dataset ({cold} shards) once",
                        format_size(s.memory),
                        format_size(s.disk),
                        6,
                        format_size(hot * s.shard),
                        format_size(s.shard),
                        format_size(cold * s.shard)
                    ),
                    objects: (0..hot)
                        .map(|i| (format!("scan-vs-hot/model/shard-{i:02}"), s.shard))
                        .chain((0..cold).map(|i| (format!("scan-vs-hot/dataset/part-{i:03}"), s.shard)))
                        .collect(),
                    workload: Workload::Fleet { workers: 6, reads: usize::MAX },
                    total_bandwidth: LINK,
                }
            }
            ScenarioName::PrefetchUnderLoad => {
                let s = crate::contend::Sizes::of(args);
                Self {
                    name: "prefetch-under-load",
                    summary: format!(
                        "a region of {} s3-accel nodes; {} loaders read every shard of a cold {} model ({} shards of \
                         {}) through the nodes in turn, alone and while a region-wide prefetch of another {} model \
                         ({} shards, {} at a time through one node) runs",
                        s.nodes,
                        s.workers,
                        format_size(s.live_shards * s.live_shard),
                        s.live_shards,
                        format_size(s.live_shard),
                        format_size(s.warm_shards * s.warm_shard),
                        s.warm_shards,
                        crate::contend::PREFETCH_CONCURRENCY,
                    ),
                    objects: (0..s.live_shards)
                        .map(|i| (format!("prefetch-under-load/live/shard-{i:02}"), s.live_shard))
                        .chain(
                            (0..s.warm_shards)
                                .map(|i| (format!("prefetch-under-load/warm/shard-{i:02}"), s.warm_shard)),
                        )
                        .collect(),
                    workload: Workload::Fleet {
                        workers: s.workers,
                        reads: s.live_shards as usize,
                    },
                    total_bandwidth: crate::contend::LINK,
                }
            }
            ScenarioName::All | ScenarioName::Demo | ScenarioName::Remote | ScenarioName::Merge => {
                unreachable!("not a single scenario")
            }
        }
    }

    /// Bytes the origin holds for this scenario: what a perfect cache fetches once.
    pub fn unique_bytes(&self) -> u64 {
        self.objects.iter().map(|(_, size)| size).sum()
    }

    /// Body bytes the clients will read, when the workload says in advance.
    pub fn expected_bytes(&self) -> Option<u64> {
        let first = self.objects.first().map_or(0, |(_, size)| *size);
        match self.workload {
            Workload::Herd { clients } | Workload::Boto3 { clients, .. } => Some(first * clients as u64),
            Workload::Single => Some(first),
            Workload::Fleet { workers, reads } => {
                let reads = reads.min(self.objects.len());
                Some(self.objects.iter().take(reads).map(|(_, s)| s).sum::<u64>() * workers as u64)
            }
            Workload::Zipf { .. } => None,
        }
    }

    pub fn warms_first(&self) -> bool {
        matches!(self.workload, Workload::Boto3 { .. }) || self.name == "many-clients"
    }
}

/// Runs `workload` against `addresses` until it is done, recording every request:
/// client (or worker) `i` sends to the `i % len`-th address.
pub async fn drive(
    workload: &Workload,
    objects: &[Arc<Object>],
    client: &Client,
    addresses: &[SocketAddr],
    recorder: &Arc<Recorder>,
) {
    let address = |i: usize| addresses[i % addresses.len()];
    let spawn_each =
        |count: usize, task: &dyn Fn(usize) -> tokio::task::JoinHandle<()>| (0..count).map(task).collect::<Vec<_>>();
    let tasks = match *workload {
        Workload::Single => spawn_each(1, &|i| {
            let (client, recorder, object) = (client.clone(), recorder.clone(), objects[0].clone());
            let address = address(i);
            tokio::spawn(async move { recorder.record(&client.send(address, &Get::full(&object)).await) })
        }),
        Workload::Herd { clients } => {
            let barrier = Arc::new(tokio::sync::Barrier::new(clients));
            spawn_each(clients, &|i| {
                let (client, recorder, object) = (client.clone(), recorder.clone(), objects[0].clone());
                let (barrier, address) = (barrier.clone(), address(i));
                tokio::spawn(async move {
                    barrier.wait().await;
                    recorder.record(&client.send(address, &Get::full(&object)).await)
                })
            })
        }
        Workload::Boto3 {
            clients,
            part,
            parallel,
        } => spawn_each(clients, &|i| {
            let (client, recorder, object) = (client.clone(), recorder.clone(), objects[0].clone());
            let address = address(i);
            tokio::spawn(async move { read_like_boto3(&client, address, &object, part, parallel, &recorder).await })
        }),
        Workload::Zipf {
            clients,
            requests,
            exponent,
        } => {
            let next = Arc::new(AtomicUsize::new(0));
            let objects: Arc<[Arc<Object>]> = objects.into();
            spawn_each(clients, &|c| {
                let (client, recorder, objects, next) =
                    (client.clone(), recorder.clone(), objects.clone(), next.clone());
                let address = address(c);
                tokio::spawn(async move {
                    let zipf = rand_distr::Zipf::new(objects.len() as f64, exponent).expect("a valid Zipf");
                    let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                    while next.fetch_add(1, Ordering::Relaxed) < requests {
                        let rank = rng.sample(zipf) as usize;
                        let object = &objects[rank.clamp(1, objects.len()) - 1];
                        recorder.record(&client.send(address, &Get::full(object)).await);
                    }
                })
            })
        }
        Workload::Fleet { workers, reads } => spawn_each(workers, &|w| {
            let (client, recorder, address) = (client.clone(), recorder.clone(), address(w));
            let shards: Vec<Arc<Object>> = (0..reads.min(objects.len()))
                .map(|j| objects[(w + j) % objects.len()].clone())
                .collect();
            tokio::spawn(async move {
                for shard in shards {
                    recorder.record(&client.send(address, &Get::full(&shard)).await);
                }
            })
        }),
    };
    // Dropping this future (at the time limit) must stop the clients too.
    let guard = AbortOnDrop(tasks.iter().map(|t| t.abort_handle()).collect());
    for task in tasks {
        let _ = task.await;
    }
    drop(guard);
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

async fn read_like_boto3(
    client: &Client,
    address: SocketAddr,
    object: &Object,
    part: u64,
    parallel: usize,
    recorder: &Recorder,
) {
    let head = client.send(address, &Get::head(object)).await;
    recorder.record(&head);
    if head.outcome.is_err() {
        return;
    }
    let etag = head.etag.clone();
    let size = object.len();
    let parts = size.div_ceil(part);
    futures_util::stream::iter(0..parts)
        .map(|i| {
            let get = Get {
                object,
                head: false,
                range: Some((i * part, ((i + 1) * part).min(size) - 1)),
                if_match: etag.as_deref(),
                background: false,
            };
            async move { client.send(address, &get).await }
        })
        .buffer_unordered(parallel)
        .for_each(|sample| async move { recorder.record(&sample) })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(["s3-accel-bench", "all"].iter().chain(extra))
    }

    #[test]
    fn every_scenario_has_objects_and_a_known_unique_size() {
        for name in [
            ScenarioName::ColdHerd,
            ScenarioName::ColdSingle,
            ScenarioName::WarmLarge,
            ScenarioName::SmallZipf,
            ScenarioName::ModelLoad,
            ScenarioName::ManyClients,
            ScenarioName::RegionHerd,
            ScenarioName::RegionRollout,
            ScenarioName::ScanVsHot,
            ScenarioName::PrefetchUnderLoad,
        ] {
            let scenario = Scenario::build(name, &args(&[]));
            assert!(!scenario.objects.is_empty(), "{}", scenario.name);
            let sum: u64 = scenario.objects.iter().map(|(_, s)| s).sum();
            assert_eq!(scenario.unique_bytes(), sum);
        }
    }

    #[test]
    fn overrides_reach_the_workload() {
        let scenario = Scenario::build(ScenarioName::ColdHerd, &args(&["--clients", "3", "--size", "1MiB"]));
        assert!(matches!(scenario.workload, Workload::Herd { clients: 3 }));
        assert_eq!(scenario.unique_bytes(), MIB);
        assert_eq!(scenario.expected_bytes(), Some(3 * MIB));
        let zipf = Scenario::build(ScenarioName::SmallZipf, &args(&["--size", "64KiB"]));
        assert!(zipf.objects.iter().all(|(_, s)| (4096..=64 << 10).contains(s)));
    }
}
