//! s3-accel-bench: how much faster, at what cost. Runs load scenarios against
//! the origin directly, s3-accel and nginx, interleaved, on a shaped in-process
//! origin, and reports throughput, latency, origin traffic and memory.

mod client;
mod contend;
mod hop;
mod hosts;
mod nginx;
mod proxy;
mod remote;
mod report;
mod rollout;
mod run;
mod scan;
mod scenario;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use s3_accel::config::units::{parse_duration, parse_size};

#[derive(Parser, Debug, Clone)]
#[command(name = "s3-accel-bench", version, about, long_about = None)]
pub struct Args {
    /// A scenario, `all` for each in turn, or `demo`: a cold then a warm read of a
    /// model through s3-accel, in under a minute.
    #[arg(value_enum, required_unless_present = "proxy_config")]
    pub scenario: Option<ScenarioName>,
    /// Targets, in the order each round runs them.
    #[arg(long, value_delimiter = ',', default_value = "direct,s3-accel,nginx")]
    pub targets: Vec<target::Kind>,
    /// Rounds: each runs every target once, so targets interleave.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Time limit of one target's run; a run that reaches it stops and says so.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub time_limit: Duration,
    /// Round trip added by the origin (once per connection, once per request).
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub rtt: Duration,
    /// Body bandwidth cap of each origin connection, bytes per second ("0": none).
    #[arg(long, default_value = "100MB", value_parser = parse_size)]
    pub bandwidth: u64,
    /// Body bandwidth cap of the origin as a whole, bytes per second ("0": none),
    /// instead of the scenario's own (1.25 GB/s, a 10 Gbit/s link, for cold-herd
    /// and model-load; none for the others).
    #[arg(long, value_parser = parse_size)]
    pub total_bandwidth: Option<u64>,
    /// Let s3s-fs read response bodies itself, 4 KiB at a time (about 120 MB/s of
    /// CPU per connection here), instead of in 1 MiB blocks.
    #[arg(long)]
    pub s3s_fs_reads: bool,
    /// Clients (or workers) instead of the scenario's own number.
    #[arg(long)]
    pub clients: Option<usize>,
    /// small-zipf: how many objects (default 2000) and requests (default 20000).
    #[arg(long)]
    pub objects: Option<usize>,
    #[arg(long)]
    pub requests: Option<usize>,
    /// Object (or shard) size instead of the scenario's own.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Chunk size of s3-accel and slice size of nginx.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub chunk_size: u64,
    /// s3-accel's memory tier.
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    pub memory_cache: u64,
    /// s3-accel's disk tier (and the size of nginx's cache).
    #[arg(long, default_value = "8GiB", value_parser = parse_size)]
    pub disk_cache: u64,
    /// s3-accel's `cache.direct_io` (its default: when the filesystem takes it).
    #[arg(long)]
    pub direct_io: Option<bool>,
    /// s3-accel's `cache.read_ahead` (its default when unset).
    #[arg(long)]
    pub read_ahead: Option<usize>,
    /// s3-accel's `cache.read_ahead_memory` (its default when unset).
    #[arg(long, value_parser = parse_size)]
    pub read_ahead_memory: Option<u64>,
    /// Clients send presigned URLs (each made once, then reused byte for byte) and
    /// s3-accel serves them again from `presigned` grants.
    #[arg(long)]
    pub presigned: bool,
    /// region-herd: how many s3-accel processes form the region.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// region-herd: the region's peer port in mutual TLS (`[peers.tls]`, a CA and a
    /// certificate per node made for the run).
    #[arg(long)]
    pub peer_tls: bool,
    /// region-herd and region-rollout: the origin, each node and the clients as
    /// hosts of their own (network namespaces on one bridge; needs root).
    #[arg(long)]
    pub hosts: bool,
    /// Where the Markdown tables and SVG charts go.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results: PathBuf,
    /// Where the origin's objects and the caches live (the system's temporary
    /// directory when unset).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Runs s3-accel itself from this configuration file: how the bench starts it.
    #[arg(long, hide = true)]
    pub proxy_config: Option<PathBuf>,
    /// merge: the result files (one per pod) of `remote` runs.
    pub files: Vec<PathBuf>,
    /// remote: the deployed accelerator, e.g. http://accel-object.s3-accel.
    #[arg(long, env = "AWS_ENDPOINT_URL_S3")]
    pub endpoint: Option<String>,
    /// remote: the origin, for listing --prefix and `--verify direct`.
    #[arg(long, env = "S3_ACCEL_ORIGIN_ENDPOINT")]
    pub origin_endpoint: Option<String>,
    /// remote: the objects, as `s3-accel prefetch` reads a manifest.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// remote: every object under `s3://bucket/prefix/` (listed at --origin-endpoint).
    #[arg(long)]
    pub prefix: Option<String>,
    /// remote: how responses are checked [default: direct with --origin-endpoint,
    /// else checksum].
    #[arg(long, value_enum)]
    pub verify: Option<remote::Verify>,
    /// remote: the workloads, in order.
    #[arg(
        long = "workloads",
        value_enum,
        value_delimiter = ',',
        default_value = "model-load,warm-large,small-zipf"
    )]
    pub workloads: Vec<remote::Workload>,
    /// remote: the part size of model-load's ranged reads.
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub part_size: u64,
    /// remote: this pod's name in the results [default: $POD_NAME or $HOSTNAME, with
    /// $JOB_COMPLETION_INDEX].
    #[arg(long)]
    pub pod: Option<String>,
    /// remote: wait until this time (RFC 3339) before the first workload, so that
    /// every pod of a Job starts together.
    #[arg(long, env = "START_AT", value_parser = parse_time)]
    pub start_at: Option<std::time::SystemTime>,
    /// remote: SigV4 region [default: the AWS configuration's, else us-east-1].
    #[arg(long)]
    pub region: Option<String>,
}

fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|e| format!("`{text}`: {e} (write 2026-11-24T06:00:00Z)"))
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    ColdHerd,
    ColdSingle,
    WarmLarge,
    SmallZipf,
    ModelLoad,
    ManyClients,
    /// Several s3-accel nodes of one region (peers) against the same nodes alone.
    RegionHerd,
    /// A region's nodes restarted one by one (SIGTERM, back on their disks) under
    /// a model-load workload: failed requests, wrong bytes, origin bytes, the dip.
    RegionRollout,
    /// A hot set read over and over while a dataset twice the cache is streamed
    /// once: does the scan flush it, for each `cache.admission` choice?
    ScanVsHot,
    /// A model-load workload's TTFB and throughput, alone and while a region-wide
    /// prefetch of another model runs, with and without an origin budget.
    PrefetchUnderLoad,
    /// A deployed accelerator: --endpoint, --manifest or --prefix (see `remote`).
    Remote,
    /// Result files of `remote` runs (one per pod) as one table and chart.
    Merge,
    All,
    Demo,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,s3s=off".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(config) = &args.proxy_config {
        return proxy::run(config);
    }
    if args.hosts {
        hosts::set_up(args.nodes.max(1))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ran = run(&runtime, args);
    hosts::tear_down();
    ran
}

fn run(runtime: &tokio::runtime::Runtime, args: Args) -> anyhow::Result<()> {
    match args.scenario {
        Some(ScenarioName::Demo) => runtime.block_on(run::demo(args)),
        Some(ScenarioName::Remote) => runtime.block_on(remote::run(&args)),
        Some(ScenarioName::Merge) => {
            println!("{}", remote::merge(&args.files, &args.results)?);
            Ok(())
        }
        _ => runtime.block_on(run::all(args)),
    }
}
