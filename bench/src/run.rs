//! Running scenarios: the origin up, objects in, each target in turn, figures out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use s3_accel::config::units::format_size;
use s3_accel_testkit::{object_bytes, Origin, OriginOptions, Shaping};

use crate::client::{Client, Object};
use crate::report::{bytes, Recorder, Report, RunResult};
use crate::scenario::{drive, Scenario, Workload};
use crate::target::{Kind, ProxySettings, Target};
use crate::{Args, ScenarioName};

const BUCKET: &str = "bench";

/// The shaped origin and where everything lives for one bench run.
pub(crate) struct Bench {
    pub(crate) args: Args,
    shaping: Shaping,
    pub(crate) origin: Origin,
    pub(crate) client: Client,
    pub(crate) work: tempfile::TempDir,
}

impl Bench {
    async fn start(args: Args, shaping: Shaping) -> anyhow::Result<Self> {
        let parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&parent)?;
        let work = tempfile::Builder::new().prefix("s3-accel-bench.").tempdir_in(&parent)?;
        let options = OriginOptions {
            honor_conditionals: true,
            shaping,
            no_log: true,
            read_block: (!args.s3s_fs_reads).then_some(1 << 20),
            ..OriginOptions::default()
        };
        let origin = match crate::hosts::get() {
            // On a host of its own: in a runtime there, listening on its address.
            Some(hosts) => {
                let options = OriginOptions {
                    listen: Some((hosts.origin.address, crate::hosts::ORIGIN_PORT).into()),
                    ..options
                };
                let parent = work.path().to_owned();
                hosts
                    .on_origin
                    .run(async move { Origin::start(options, Some(&parent)).await })
                    .await?
            }
            None => Origin::start(options, Some(work.path())).await?,
        };
        let presigned = args.presigned;
        origin.create_bucket(BUCKET).await.map_err(anyhow::Error::msg)?;
        Ok(Self {
            args,
            shaping,
            origin,
            client: Client::new(Origin::credentials(), presigned),
            work,
        })
    }

    /// Generates and uploads the objects (through the origin's own PUT, unshaped
    /// in effect: shaping applies to response bodies).
    pub(crate) async fn upload(&self, specs: &[(String, u64)], seed: u64) -> anyhow::Result<Vec<Arc<Object>>> {
        let total: u64 = specs.iter().map(|(_, size)| size).sum();
        let recorder = Recorder::new("uploading".into(), Some(total), 0);
        let mut objects = Vec::with_capacity(specs.len());
        for (i, (key, size)) in specs.iter().enumerate() {
            let data = Bytes::from(object_bytes(seed + i as u64, *size as usize));
            self.origin
                .put(BUCKET, key, data.clone(), &[])
                .await
                .map_err(anyhow::Error::msg)?;
            recorder.advance(*size);
            objects.push(Arc::new(Object::new(format!("/{BUCKET}/{key}"), data)));
        }
        recorder.finish();
        // Written back now, so the kernel's writeback does not compete with the runs.
        tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
        Ok(objects)
    }

    /// How the origin is shaped.
    pub(crate) fn origin_shaping(&self) -> Shaping {
        self.shaping
    }

    /// What s3-accel's peak RSS should stay under: memory tier + fill memory +
    /// read-ahead budget + 256 MiB, from the configuration it is started with.
    fn rss_bound(&self) -> anyhow::Result<u64> {
        let config = s3_accel::Config::from_toml(&self.proxy_settings(self.work.path()).s3_accel_config())
            .map_err(|e| anyhow::anyhow!("s3-accel's configuration: {e}"))?;
        let cache = &config.cache;
        Ok(cache.memory + cache.fill_memory + cache.read_ahead_memory + (256 << 20))
    }

    /// How a proxy of this run starts, in its own fresh directory `dir`.
    pub(crate) fn proxy_settings<'a>(&self, dir: &'a Path) -> ProxySettings<'a> {
        ProxySettings {
            origin: self.origin.address,
            chunk_size: self.args.chunk_size,
            memory_cache: self.args.memory_cache,
            disk_cache: self.args.disk_cache,
            direct_io: self.args.direct_io,
            read_ahead: self.args.read_ahead,
            read_ahead_memory: self.args.read_ahead_memory,
            dir,
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            admin_port: 0,
            peers: None,
            nodes: self.args.nodes,
            presigned_grants: self.args.presigned,
            peer_tls: self.args.peer_tls,
            withdraw_grace: None,
            restart_wait: None,
            admission: None,
            origin_client: None,
            host: None,
        }
    }

    /// One target's run of `workload`: a fresh proxy, the warm-up if any, the
    /// measured load within the time limit, and the origin's traffic during it.
    async fn run_target(
        &self,
        kind: Kind,
        label: String,
        scenario: &Scenario,
        objects: &[Arc<Object>],
        time_limit: Duration,
    ) -> anyhow::Result<RunResult> {
        let dir = tempfile::tempdir_in(self.work.path())?;
        let settings = self.proxy_settings(dir.path());
        let target = Target::start(kind, &settings)
            .await
            .with_context(|| format!("starting {}", kind.name()))?;
        let addresses = target.addresses();
        if scenario.warms_first() && kind != Kind::Direct {
            let warm = match scenario.workload {
                Workload::Boto3 { part, parallel, .. } => Workload::Boto3 {
                    clients: 1,
                    part,
                    parallel,
                },
                // Every object once, by one client: the working set is cached.
                Workload::Fleet { .. } => Workload::Fleet {
                    workers: 1,
                    reads: usize::MAX,
                },
                ref other => other.clone(),
            };
            let recorder = Arc::new(Recorder::hidden());
            let _ = tokio::time::timeout(time_limit, drive(&warm, objects, &self.client, &addresses, &recorder)).await;
        }
        let stats = &self.origin.stats;
        let (requests_before, bytes_before) = (stats.requests(), stats.body_bytes());
        let cpu_before = target.cpu_seconds();
        let requests = match scenario.workload {
            Workload::Zipf { requests, .. } => requests as u64,
            _ => 0,
        };
        let recorder = Arc::new(Recorder::new(label, scenario.expected_bytes(), requests));
        let started = Instant::now();
        let timed_out = tokio::time::timeout(
            time_limit,
            drive(&scenario.workload, objects, &self.client, &addresses, &recorder),
        )
        .await
        .is_err();
        let wall = started.elapsed();
        let mut result = RunResult {
            tally: recorder.finish(),
            wall,
            origin_requests: stats.requests() - requests_before,
            origin_bytes: stats.body_bytes() - bytes_before,
            peak_rss: target.peak_rss(),
            cpu_seconds: target.cpu_seconds().map(|after| after - cpu_before.unwrap_or(0.0)),
            timed_out,
            peer_hop: None,
        };
        if kind == Kind::Region && !timed_out {
            result.peer_hop = Some(
                crate::hop::measure(
                    &target,
                    self.origin.address,
                    &self.client,
                    &objects[0],
                    self.args.chunk_size,
                    self.args.peer_tls.then(|| crate::target::reader_tls(dir.path())),
                )
                .await
                .context("measuring the peer hop")?,
            );
        }
        target.stop().await;
        Ok(result)
    }
}

fn shaping(args: &Args, scenario_total: u64) -> Shaping {
    Shaping {
        rtt: args.rtt,
        per_connection: args.bandwidth,
        total: args.total_bandwidth.unwrap_or(scenario_total),
    }
}

pub(crate) fn describe_shaping(args: &Args, shaping: &Shaping) -> String {
    let cap = |rate: u64| match rate {
        0 => "none".to_string(),
        rate => format!("{:.0} MB/s", rate as f64 / 1e6),
    };
    format!(
        "origin: s3s-fs in-process{}, RTT {} added, per-connection cap {}, total cap {}",
        if args.s3s_fs_reads {
            " (its own 4 KiB body reads)"
        } else {
            " (bodies read in 1 MiB blocks)"
        },
        humantime::format_duration(shaping.rtt),
        cap(shaping.per_connection),
        cap(shaping.total)
    )
}

pub async fn all(mut args: Args) -> anyhow::Result<()> {
    let names = match args.scenario.expect("a scenario") {
        ScenarioName::All => vec![
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
        ],
        name => vec![name],
    };
    let mut seen = Vec::new();
    args.targets.retain(|k| {
        !seen.contains(k) && {
            seen.push(*k);
            true
        }
    });
    if args.targets.contains(&Kind::Nginx) {
        if let Err(why) = crate::nginx::ensure_installed() {
            eprintln!("nginx is not available ({why}): running the other targets without it");
            args.targets.retain(|k| *k != Kind::Nginx);
        }
    }
    anyhow::ensure!(!args.targets.is_empty(), "no target to run");
    std::fs::create_dir_all(&args.results).with_context(|| format!("creating {}", args.results.display()))?;
    for (n, name) in names.into_iter().enumerate() {
        let scenario = Scenario::build(name, &args);
        let bench = Bench::start(args.clone(), shaping(&args, scenario.total_bandwidth)).await?;
        match name {
            ScenarioName::RegionRollout => crate::rollout::run(&bench, &scenario, 1000 * n as u64).await?,
            ScenarioName::ScanVsHot => crate::scan::run(&bench, &scenario, 1000 * n as u64).await?,
            ScenarioName::PrefetchUnderLoad => crate::contend::run(&bench, &scenario, 1000 * n as u64).await?,
            _ => run_scenario(&bench, &scenario, 1000 * n as u64).await?,
        }
    }
    Ok(())
}

async fn run_scenario(bench: &Bench, scenario: &Scenario, seed: u64) -> anyhow::Result<()> {
    let args = &bench.args;
    eprintln!("\n{}: {}", scenario.name, scenario.summary);
    let objects = bench.upload(&scenario.objects, seed).await?;
    let setting = format!(
        "{}; s3-accel: {} chunks, memory tier {}, disk tier {}; nginx: slice {}; {} round(s), targets interleaved; \
         time limit {} per run; {} cores.{}",
        describe_shaping(args, &bench.shaping),
        format_size(args.chunk_size),
        format_size(args.memory_cache),
        format_size(args.disk_cache),
        format_size(args.chunk_size),
        args.rounds,
        humantime::format_duration(args.time_limit),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        if args.presigned {
            " Clients send presigned URLs, each made once and reused; s3-accel has `presigned` grants on."
        } else {
            ""
        },
    );
    let mut report = Report::new(scenario.name, &scenario.summary, setting, scenario.unique_bytes());
    report.rounds = args.rounds;
    report.rss_bound = bench.rss_bound()?;
    report.nodes = args.nodes;
    let targets = targets_of(scenario, &args.targets);
    for round in 1..=args.rounds {
        for &kind in &targets {
            let label = match args.rounds {
                1 => kind.name().to_string(),
                _ => format!("{} ({round}/{})", kind.name(), args.rounds),
            };
            let result = bench
                .run_target(kind, label, scenario, &objects, args.time_limit)
                .await?;
            eprintln!(
                "  {:<14} {:.3} GB/s, {} requests, {} errors{}",
                kind.name(),
                result.gb_per_s(),
                result.tally.requests,
                result.tally.errors(),
                if result.timed_out {
                    ", stopped at the time limit"
                } else {
                    ""
                }
            );
            report.add(kind, result);
        }
    }
    let markdown = report.markdown();
    println!("\n{markdown}");
    let name = match (args.presigned, args.hosts) {
        (true, _) => format!("{}-presigned", scenario.name),
        (false, true) => format!("{}-hosts", scenario.name),
        (false, false) => scenario.name.to_owned(),
    };
    let (md, svg) = result_paths(&args.results, &name);
    std::fs::write(&md, &markdown).with_context(|| format!("writing {}", md.display()))?;
    report.svg(&svg).with_context(|| format!("drawing {}", svg.display()))?;
    eprintln!("wrote {} and {}", md.display(), svg.display());
    Ok(())
}

/// The targets a scenario runs: region-herd runs s3-accel as a region of peers and
/// as the same nodes alone (nginx has no region to compare).
fn targets_of(scenario: &Scenario, asked: &[Kind]) -> Vec<Kind> {
    match scenario.name {
        "region-herd" => asked
            .iter()
            .flat_map(|&kind| match kind {
                Kind::S3Accel => vec![Kind::Region, Kind::Alone],
                Kind::Nginx => vec![],
                other => vec![other],
            })
            .collect(),
        _ => asked
            .iter()
            .copied()
            .filter(|k| !matches!(k, Kind::Region | Kind::Alone))
            .collect(),
    }
}

pub(crate) fn result_paths(dir: &Path, scenario: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{scenario}.md")), dir.join(format!("{scenario}.svg")))
}

/// Prints a scenario's table and writes it to its result file.
pub(crate) fn write_table(args: &Args, scenario: &str, markdown: &str) -> anyhow::Result<()> {
    println!("\n{markdown}");
    let (md, _) = result_paths(&args.results, scenario);
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    eprintln!("wrote {}", md.display());
    Ok(())
}

/// The `p` quantile of `sorted` (zero when empty).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// The product in under a minute: a model read from a far origin directly, then
/// through s3-accel cold, then warm.
pub async fn demo(args: Args) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + LIMIT;
    let model = args.size.unwrap_or(1 << 30);
    let shards = 4;
    println!(
        "s3-accel demo: a model of {} in {shards} shards on an origin {} away at {:.0} MB/s per connection \
         (s3s-fs in-process, shaped), read by one loader, shard after shard.\n",
        bytes(model),
        humantime::format_duration(args.rtt),
        args.bandwidth as f64 / 1e6
    );
    let shaping = shaping(&args, 0);
    let bench = Bench::start(args, shaping).await?;
    let specs: Vec<(String, u64)> = (0..shards)
        .map(|i| {
            (
                format!("demo/model-{:05}-of-{shards:05}.safetensors", i + 1),
                model / shards,
            )
        })
        .collect();
    let objects = bench.upload(&specs, 42).await?;
    let scenario = Scenario {
        name: "demo",
        summary: String::new(),
        objects: specs,
        workload: Workload::Fleet {
            workers: 1,
            reads: usize::MAX,
        },
        total_bandwidth: 0,
    };
    let left = || deadline.saturating_duration_since(Instant::now());
    let direct = bench
        .run_target(Kind::Direct, "origin directly".into(), &scenario, &objects, left())
        .await?;
    line("origin directly", &direct, None);

    let dir = tempfile::tempdir_in(bench.work.path())?;
    let settings = bench.proxy_settings(dir.path());
    let accel = Target::start(Kind::S3Accel, &settings).await?;
    let mut reads = Vec::new();
    for label in ["s3-accel, cold", "s3-accel, warm"] {
        let recorder = Arc::new(Recorder::new(label.into(), scenario.expected_bytes(), 0));
        let stats = &bench.origin.stats;
        let (requests_before, bytes_before) = (stats.requests(), stats.body_bytes());
        let started = Instant::now();
        let timed_out = tokio::time::timeout(
            left(),
            drive(
                &scenario.workload,
                &objects,
                &bench.client,
                &accel.addresses(),
                &recorder,
            ),
        )
        .await
        .is_err();
        let run = RunResult {
            tally: recorder.finish(),
            wall: started.elapsed(),
            origin_requests: stats.requests() - requests_before,
            origin_bytes: stats.body_bytes() - bytes_before,
            peak_rss: accel.peak_rss(),
            cpu_seconds: None,
            timed_out,
            peer_hop: None,
        };
        line(label, &run, Some(&direct));
        reads.push(run);
    }
    accel.stop().await;
    let all_exact = std::iter::once(&direct)
        .chain(&reads)
        .all(|r| !r.timed_out && r.tally.errors() == 0 && r.tally.exact == r.tally.requests);
    println!(
        "\n{}: every byte served was checked against the origin's content.",
        if all_exact {
            "byte-exact"
        } else {
            "NOT byte-exact, or stopped early"
        }
    );
    if let [cold, warm] = reads.as_slice() {
        println!(
            "The warm read fetched {} from the origin; s3-accel's peak memory was {}.",
            bytes(warm.origin_bytes),
            warm.peak_rss.map_or("unknown".into(), bytes)
        );
        println!(
            "Speed-up over the origin: {:.1}× cold, {:.1}× warm.",
            cold.gb_per_s() / direct.gb_per_s().max(1e-12),
            warm.gb_per_s() / direct.gb_per_s().max(1e-12)
        );
    }
    anyhow::ensure!(all_exact, "the demo did not complete cleanly");
    Ok(())
}

fn line(label: &str, run: &RunResult, baseline: Option<&RunResult>) {
    let speedup = baseline.map_or(String::new(), |b| {
        format!("   {:.1}× the origin", run.gb_per_s() / b.gb_per_s().max(1e-12))
    });
    println!(
        "  {label:<16} {} in {:>6.2} s   {:>6.3} GB/s{speedup}{}",
        bytes(run.tally.bytes),
        run.wall.as_secs_f64(),
        run.gb_per_s(),
        if run.timed_out { "   (stopped: time limit)" } else { "" }
    );
}
