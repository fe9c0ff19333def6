//! `s3-accel-bench remote`: the rollout's access pattern against a deployed
//! accelerator, with the user's credentials, over the objects of a manifest or a
//! prefix; and `merge`: many pods' results as one. Responses are checked against
//! the origin, by one direct read per object (every response then compared by
//! xxHash3) or by the origin's stored full-object CRC (`--verify checksum`).

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use rand::{Rng, SeedableRng};
use s3_accel::prefetch::{self, Endpoint, Keys, Object};
use serde::{Deserialize, Serialize};
use twox_hash::XxHash3_64;

use crate::client::{Failure, Sample};
use crate::report::{Recorder, Report, RunResult, Tally};
use crate::target::Kind;
use crate::Args;

/// How responses are checked against the origin.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verify {
    /// One direct read of each object at --origin-endpoint, every response compared.
    Direct,
    /// The origin's full-object CRC (asked with `x-amz-checksum-mode`); part reads
    /// are checked shard by shard.
    Checksum,
}

/// The remote workloads.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// K workers each read every shard in parts, as boto3 loads a model.
    ModelLoad,
    /// Every object read whole once (not measured), then by every client.
    WarmLarge,
    /// Whole-object reads, object ranks drawn from a Zipf distribution.
    SmallZipf,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ModelLoad => "model-load",
            Workload::WarmLarge => "warm-large",
            Workload::SmallZipf => "small-zipf",
        }
    }
}

/// What the origin says an object is.
struct Expected {
    object: Object,
    size: u64,
    /// `--verify direct`: xxHash3 of the whole object and of each part.
    whole: Option<u64>,
    parts: Vec<u64>,
    /// `--verify checksum`: the full-object CRC.
    crc: Option<(crc_fast::CrcAlgorithm, String)>,
}

/// How a pod's log line of results starts (deploy/loadtest collects them).
pub const RESULTS_PREFIX: &str = "RESULTS ";

/// One pod's results, as `merge` reads them.
#[derive(Serialize, Deserialize)]
pub struct Results {
    pub pod: String,
    pub endpoint: String,
    pub verify: Verify,
    pub runs: Vec<RunRecord>,
}

/// One workload's figures: counts, and histograms serialized (HdrHistogram V2, base64).
#[derive(Serialize, Deserialize, Clone)]
pub struct RunRecord {
    pub workload: String,
    pub wall_s: f64,
    pub requests: u64,
    pub bytes: u64,
    pub exact: u64,
    pub unverified: u64,
    pub hits: u64,
    pub labelled: u64,
    pub failures: BTreeMap<String, u64>,
    pub latency_us: String,
    pub ttfb_us: String,
}

impl RunRecord {
    fn of(workload: &str, run: &RunResult, unverified: u64) -> anyhow::Result<Self> {
        let tally = &run.tally;
        Ok(Self {
            workload: workload.to_owned(),
            wall_s: run.wall.as_secs_f64(),
            requests: tally.requests,
            bytes: tally.bytes,
            exact: tally.exact,
            unverified,
            hits: tally.hits,
            labelled: tally.labelled,
            failures: tally.failures.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
            latency_us: encode(&tally.latency)?,
            ttfb_us: encode(&tally.ttfb)?,
        })
    }

    /// The run as the report draws it.
    fn run(&self) -> anyhow::Result<RunResult> {
        let mut tally = Tally {
            latency: decode(&self.latency_us)?,
            ttfb: decode(&self.ttfb_us)?,
            requests: self.requests,
            bytes: self.bytes,
            exact: self.exact,
            hits: self.hits,
            labelled: self.labelled,
            ..Tally::default()
        };
        for (failure, count) in &self.failures {
            *tally.failures.entry(Failure::parse(failure)).or_default() += count;
        }
        Ok(RunResult::of(tally, Duration::from_secs_f64(self.wall_s)))
    }
}

fn encode(histogram: &Histogram<u64>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(histogram, &mut bytes)
        .map_err(|e| anyhow::anyhow!("serializing a histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text)?;
    let histogram: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("reading a histogram: {e:?}"))?;
    // Merging needs every histogram on the bench's bounds.
    let mut bounded = Tally::default().latency;
    bounded
        .add(&histogram)
        .map_err(|e| anyhow::anyhow!("a histogram out of bounds: {e:?}"))?;
    Ok(bounded)
}

/// Runs `remote`: prints the table, writes `remote.md`, an SVG per workload and
/// the pod's JSON.
pub async fn run(args: &Args) -> anyhow::Result<()> {
    run_with(args, Keys::from_environment(args.region.clone()).await).await
}

/// `run` with these keys.
async fn run_with(args: &Args, keys: Keys) -> anyhow::Result<()> {
    let endpoint_url = args.endpoint.clone().context("remote needs --endpoint")?;
    let endpoint = Endpoint::new(&endpoint_url)?;
    let origin = args.origin_endpoint.as_deref().map(Endpoint::new).transpose()?;
    let objects = objects(args, origin.as_ref(), &keys).await?;
    anyhow::ensure!(!objects.is_empty(), "no object to read");
    let verify = args.verify.unwrap_or(match origin {
        Some(_) => Verify::Direct,
        None => Verify::Checksum,
    });
    let part = args.part_size;
    eprintln!("remote: {} objects, verified by {verify:?}", objects.len());
    let mut expected = Vec::new();
    for object in objects {
        let checked = match (verify, &origin) {
            (Verify::Direct, Some(origin)) => direct(origin, &keys, object, part).await?,
            (Verify::Direct, None) => anyhow::bail!("--verify direct needs --origin-endpoint"),
            (Verify::Checksum, _) => checksum(&endpoint, &keys, object).await?,
        };
        expected.push(Arc::new(checked));
    }
    if let Some(start) = args.start_at {
        match start.duration_since(SystemTime::now()) {
            Ok(wait) => {
                eprintln!("remote: starting in {:.1} s (--start-at)", wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            Err(late) => eprintln!("remote: --start-at passed {:.1} s ago", late.duration().as_secs_f64()),
        }
    }
    let pod = args.pod.clone().unwrap_or_else(pod_name);
    let mut results = Results {
        pod: pod.clone(),
        endpoint: endpoint_url.clone(),
        verify,
        runs: Vec::new(),
    };
    let shared = Arc::new(Shared {
        endpoint,
        keys,
        part,
        verify,
    });
    let mut markdown = String::new();
    std::fs::create_dir_all(&args.results)?;
    for &workload in &args.workloads {
        let (run, unverified) = drive(&shared, workload, &expected, args).await;
        eprintln!(
            "  {:<11} {:.3} GB/s, {} requests, {} errors",
            workload.name(),
            run.gb_per_s(),
            run.tally.requests,
            run.tally.errors()
        );
        results.runs.push(RunRecord::of(workload.name(), &run, unverified)?);
        let summary = format!("{} against {endpoint_url} from {pod}", workload.name());
        let setting = setting(&expected, args, verify, unverified);
        let mut report = Report::new(workload.name(), &summary, setting, 0);
        report.origin_unseen = true;
        report.add(Kind::S3Accel, run);
        markdown.push_str(&report.markdown());
        markdown.push('\n');
        report.svg(&args.results.join(format!("remote-{}.svg", workload.name())))?;
    }
    println!("\n{markdown}");
    std::fs::write(args.results.join("remote.md"), &markdown)?;
    let json = args.results.join(format!("{pod}.json"));
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    eprintln!(
        "wrote {} and {}",
        args.results.join("remote.md").display(),
        json.display()
    );
    // The results on one line of the log, where a Job's pods leave them.
    println!("{RESULTS_PREFIX}{}", serde_json::to_string(&results)?);
    Ok(())
}

fn setting(expected: &[Arc<Expected>], args: &Args, verify: Verify, unverified: u64) -> String {
    let bytes: u64 = expected.iter().map(|e| e.size).sum();
    let verified = match (verify, unverified) {
        (Verify::Direct, _) => "every response compared with one direct read of its object at the origin".to_string(),
        (Verify::Checksum, 0) => "every response checked against the origin's full-object CRC".to_string(),
        (Verify::Checksum, n) => {
            format!("checked against the origin's full-object CRC; {n} responses of objects without one UNVERIFIED")
        }
    };
    format!(
        "{} objects, {}; {} clients, parts of {}; {verified}.",
        expected.len(),
        crate::report::bytes(bytes),
        args.clients.unwrap_or(8),
        crate::report::bytes(args.part_size)
    )
}

/// This pod's name: `$POD_NAME`, `$HOSTNAME`, else `local`; with the Job's index.
fn pod_name() -> String {
    let name = ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "local".into());
    match std::env::var("JOB_COMPLETION_INDEX") {
        Ok(index) if !name.ends_with(&format!("-{index}")) => format!("{name}-{index}"),
        _ => name,
    }
}

async fn objects(args: &Args, origin: Option<&Endpoint>, keys: &Keys) -> anyhow::Result<Vec<Object>> {
    let bucket = args.prefix.as_deref().map(prefetch::parse_s3_url).transpose()?;
    let objects = match (&args.manifest, bucket) {
        (Some(manifest), bucket) => prefetch::manifest(manifest, bucket.map(|(b, _)| b))?,
        (None, Some((bucket, prefix))) => {
            let origin = origin.context("listing --prefix needs --origin-endpoint")?;
            prefetch::list(origin, keys, &bucket, &prefix).await?
        }
        (None, None) => anyhow::bail!("remote needs --manifest FILE or --prefix s3://bucket/prefix/"),
    };
    Ok(objects)
}

/// The origin's bytes of `object`, hashed whole and by parts.
async fn direct(origin: &Endpoint, keys: &Keys, object: Object, part: u64) -> anyhow::Result<Expected> {
    let response = origin.get(keys, &object.target()).await.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "direct read of {object}: {}",
        response.status()
    );
    let mut body = response.into_body();
    let (mut whole, mut piece) = (XxHash3_64::default(), XxHash3_64::default());
    let (mut parts, mut size, mut in_part) = (Vec::new(), 0u64, 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| anyhow::anyhow!("direct read of {object}: {e}"))?;
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        whole.write(&data);
        size += data.len() as u64;
        while !data.is_empty() {
            let take = ((part - in_part) as usize).min(data.len());
            piece.write(&data[..take]);
            in_part += take as u64;
            data = data.slice(take..);
            if in_part == part {
                parts.push(std::mem::take(&mut piece).finish());
                in_part = 0;
            }
        }
    }
    if in_part > 0 {
        parts.push(piece.finish());
    }
    Ok(Expected {
        object,
        size,
        whole: Some(whole.finish()),
        parts,
        crc: None,
    })
}

/// The object's size and full-object CRC, from a HEAD with checksum mode.
async fn checksum(endpoint: &Endpoint, keys: &Keys, object: Object) -> anyhow::Result<Expected> {
    let mode = [("x-amz-checksum-mode", "ENABLED".to_string())];
    let response = endpoint
        .send(keys, Method::HEAD, &object.target(), &mode)
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "HEAD {object}: {}",
        response.status()
    );
    let size = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .context("a HEAD without Content-Length")?;
    let crc = s3_accel::s3::checksums(response.headers())
        .ok()
        .and_then(|c| s3_accel::s3::full_object_crc(&c));
    Ok(Expected {
        object,
        size,
        whole: None,
        parts: Vec::new(),
        crc,
    })
}

struct Shared {
    endpoint: Endpoint,
    keys: Keys,
    part: u64,
    verify: Verify,
}

/// What one response was: its sample, and its bytes' xxHash3 or CRC digest.
struct Read {
    sample: Sample,
    hash: u64,
}

impl Shared {
    /// One GET (of `range`, when given), timed; the body hashed as it arrives
    /// (xxHash3, and into `crc` when given).
    async fn read(&self, expected: &Expected, range: Option<(u64, u64)>, crc: Option<&mut crc_fast::Digest>) -> Read {
        let mut headers = Vec::new();
        if let Some((first, last)) = range {
            headers.push(("range", format!("bytes={first}-{last}")));
        }
        let started = Instant::now();
        let mut sample = Sample::pending();
        let mut hash = XxHash3_64::default();
        let response = self
            .endpoint
            .send(&self.keys, Method::GET, &expected.object.target(), &headers)
            .await;
        let Ok(response) = response else {
            sample.latency = started.elapsed();
            return Read { sample, hash: 0 };
        };
        let status = response.status();
        sample.hit = response
            .headers()
            .get(s3_accel::proxy::CACHE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.starts_with("hit"));
        let wanted = if range.is_some() {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut body = response.into_body();
        let mut crc = crc;
        let mut broken = false;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                broken = true;
                break;
            };
            if let Ok(data) = frame.into_data() {
                if sample.bytes == 0 {
                    sample.ttfb = started.elapsed();
                }
                sample.bytes += data.len() as u64;
                hash.write(&data);
                if let Some(crc) = crc.as_deref_mut() {
                    crc.update(&data);
                }
            }
        }
        sample.latency = started.elapsed();
        if sample.bytes == 0 {
            sample.ttfb = sample.latency;
        }
        let length = range.map_or(expected.size, |(first, last)| last - first + 1);
        sample.outcome = match (status, broken) {
            (status, _) if status != wanted => Err(Failure::Status(status.as_u16())),
            (_, true) => Err(Failure::Transport),
            _ if sample.bytes != length => Err(Failure::Corrupt),
            _ => Ok(()),
        };
        Read {
            sample,
            hash: hash.finish(),
        }
    }
}

/// Runs `workload` over `expected`; returns the run and how many responses could
/// not be checked.
async fn drive(shared: &Arc<Shared>, workload: Workload, expected: &[Arc<Expected>], args: &Args) -> (RunResult, u64) {
    let clients = args.clients.unwrap_or(8).max(1);
    // Responses that could not be checked (`--verify checksum`, no stored CRC).
    let unverified = Arc::new(AtomicUsize::new(0));
    if workload == Workload::WarmLarge {
        // The warm-up: each object once, not measured.
        let warm = Arc::new(Recorder::hidden());
        for e in expected {
            whole(shared, e, &warm, &unverified).await;
        }
    }
    let total: u64 = match workload {
        Workload::ModelLoad | Workload::WarmLarge => expected.iter().map(|e| e.size).sum::<u64>() * clients as u64,
        Workload::SmallZipf => 0,
    };
    let requests = args.requests.unwrap_or(2000);
    let recorder = Arc::new(match workload {
        Workload::SmallZipf => Recorder::new(workload.name().into(), None, requests as u64),
        _ => Recorder::new(workload.name().into(), Some(total), 0),
    });
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (shared, recorder, unverified, next) =
                (shared.clone(), recorder.clone(), unverified.clone(), next.clone());
            let expected: Vec<Arc<Expected>> = expected.to_vec();
            tokio::spawn(async move {
                let n = expected.len();
                match workload {
                    Workload::ModelLoad => {
                        for i in 0..n {
                            load_shard(&shared, &expected[(c + i) % n], &recorder, &unverified).await;
                        }
                    }
                    Workload::WarmLarge => {
                        for i in 0..n {
                            whole(&shared, &expected[(c + i) % n], &recorder, &unverified).await;
                        }
                    }
                    Workload::SmallZipf => {
                        let zipf = rand_distr::Zipf::new(n as f64, 1.1).expect("a valid Zipf");
                        let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                        while next.fetch_add(1, Ordering::Relaxed) < requests {
                            let rank = rng.sample(zipf) as usize;
                            whole(&shared, &expected[rank.clamp(1, n) - 1], &recorder, &unverified).await;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let run = RunResult::of(recorder.finish(), started.elapsed());
    (run, unverified.load(Ordering::Relaxed) as u64)
}

/// A whole-object GET, checked.
async fn whole(shared: &Shared, expected: &Expected, recorder: &Recorder, unverified: &AtomicUsize) {
    let mut crc = expected
        .crc
        .as_ref()
        .map(|(algorithm, _)| crc_fast::Digest::new(*algorithm));
    let mut read = shared.read(expected, None, crc.as_mut()).await;
    if read.sample.outcome.is_ok() {
        let good = match (shared.verify, &expected.crc, crc) {
            (Verify::Direct, _, _) => expected.whole == Some(read.hash),
            (Verify::Checksum, Some((algorithm, stored)), Some(digest)) => crc_text(*algorithm, digest) == *stored,
            (Verify::Checksum, _, _) => {
                unverified.fetch_add(1, Ordering::Relaxed);
                true
            }
        };
        if !good {
            read.sample.outcome = Err(Failure::Corrupt);
        }
    }
    recorder.record(&read.sample);
}

/// A shard read in parts of `shared.part`, one after the other, as a loader does:
/// each part checked (direct), or the shard's CRC at the end (checksum).
async fn load_shard(shared: &Shared, expected: &Expected, recorder: &Recorder, unverified: &AtomicUsize) {
    let mut crc = expected
        .crc
        .as_ref()
        .map(|(algorithm, _)| crc_fast::Digest::new(*algorithm));
    let mut samples = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while start < expected.size {
        let last = (start + shared.part).min(expected.size) - 1;
        let mut read = shared.read(expected, Some((start, last)), crc.as_mut()).await;
        if shared.verify == Verify::Direct
            && read.sample.outcome.is_ok()
            && expected.parts.get(index) != Some(&read.hash)
        {
            read.sample.outcome = Err(Failure::Corrupt);
        }
        samples.push(read.sample);
        start = last + 1;
        index += 1;
    }
    if shared.verify == Verify::Checksum {
        let good = match (&expected.crc, crc) {
            (Some((algorithm, stored)), Some(digest)) => crc_text(*algorithm, digest) == *stored,
            _ => {
                unverified.fetch_add(samples.len(), Ordering::Relaxed);
                true
            }
        };
        if !good {
            for sample in samples.iter_mut().filter(|s| s.outcome.is_ok()) {
                sample.outcome = Err(Failure::Corrupt);
            }
        }
    }
    for sample in &samples {
        recorder.record(sample);
    }
}

/// A CRC digest as S3 writes it: base64 of the big-endian value.
fn crc_text(algorithm: crc_fast::CrcAlgorithm, digest: crc_fast::Digest) -> String {
    let value = digest.finalize();
    let bytes = match algorithm {
        crc_fast::CrcAlgorithm::Crc64Nvme => value.to_be_bytes().to_vec(),
        _ => (value as u32).to_be_bytes().to_vec(),
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `merge`: any number of pods' result files as one table per workload (totals,
/// percentiles from the merged histograms, the spread over pods) and a chart.
pub fn merge(files: &[PathBuf], out: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(!files.is_empty(), "merge needs result files");
    let mut pods = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let results: Results = serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
        pods.push(results);
    }
    let mut workloads: Vec<String> = Vec::new();
    for pod in &pods {
        for run in &pod.runs {
            if !workloads.contains(&run.workload) {
                workloads.push(run.workload.clone());
            }
        }
    }
    std::fs::create_dir_all(out)?;
    let mut markdown = String::new();
    for workload in &workloads {
        let mut merged: Option<RunResult> = None;
        let mut rows = Vec::new();
        let mut unverified = 0;
        for pod in &pods {
            for record in pod.runs.iter().filter(|r| &r.workload == workload) {
                let run = record.run()?;
                unverified += record.unverified;
                merged = Some(match merged {
                    // Pods run at once: the region's wall time is the longest pod's.
                    Some(mut all) => {
                        let wall = all.wall.max(run.wall);
                        all.merge(&run);
                        all.wall = wall;
                        all
                    }
                    None => run.clone(),
                });
                rows.push((pod.pod.clone(), run));
            }
        }
        let merged = merged.expect("a workload has a run");
        let throughputs: Vec<f64> = rows.iter().map(|(_, r)| r.gb_per_s()).collect();
        let p99s: Vec<f64> = rows
            .iter()
            .map(|(_, r)| r.tally.latency.value_at_quantile(0.99) as f64 / 1000.0)
            .collect();
        let spread = |v: &[f64]| {
            let (min, max) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            (min, max)
        };
        let ((gb_min, gb_max), (p99_min, p99_max)) = (spread(&throughputs), spread(&p99s));
        let summary = format!("{} pods merged", rows.len());
        let setting = format!(
            "Percentiles from the pods' histograms merged (not averaged); GB/s is all bytes over the longest pod's \
             wall time. Per pod: {gb_min:.3}–{gb_max:.3} GB/s, latency p99 {p99_min:.1}–{p99_max:.1} ms.{}",
            match unverified {
                0 => String::new(),
                n => format!(" {n} responses UNVERIFIED (no stored CRC)."),
            }
        );
        let mut report = Report::new(workload, &summary, setting, 0);
        report.origin_unseen = true;
        report.add(Kind::S3Accel, merged);
        let mut table = report.markdown();
        table.push_str(
            "\n| pod | GB/s | requests | TTFB p50 | p50 | p99 | hits | errors |\n|---|--:|--:|--:|--:|--:|--:|--:|\n",
        );
        for (pod, run) in &rows {
            let t = &run.tally;
            let ms = |h: &Histogram<u64>, q: f64| format!("{:.1} ms", h.value_at_quantile(q) as f64 / 1000.0);
            table.push_str(&format!(
                "| {pod} | {:.3} | {} | {} | {} | {} | {} | {} |\n",
                run.gb_per_s(),
                t.requests,
                ms(&t.ttfb, 0.5),
                ms(&t.latency, 0.5),
                ms(&t.latency, 0.99),
                t.hits,
                t.errors()
            ));
        }
        markdown.push_str(&table);
        markdown.push('\n');
        report.svg(&out.join(format!("merged-{workload}.svg")))?;
    }
    std::fs::write(out.join("merged.md"), &markdown)?;
    Ok(markdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(samples: &[(u64, u64, u64)], wall: f64) -> RunResult {
        let mut tally = Tally::default();
        for &(latency, ttfb, bytes) in samples {
            tally.latency.record(latency).unwrap();
            tally.ttfb.record(ttfb).unwrap();
            tally.requests += 1;
            tally.bytes += bytes;
            tally.exact += 1;
        }
        RunResult::of(tally, Duration::from_secs_f64(wall))
    }

    #[test]
    fn three_pods_merged_equal_one_run_over_their_union() {
        // Three pods that saw different latencies: the merged percentiles are not
        // any pod's, nor their average.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let samples: Vec<(u64, u64, u64)> = (0..30_000u64)
            .map(|n| {
                let scale = 10u64.pow((n / 10_000) as u32);
                (
                    rng.random_range(200..20_000 * scale),
                    rng.random_range(100..5_000 * scale),
                    1 << 20,
                )
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, chunk) in samples.chunks(10_000).enumerate() {
            let record = RunRecord::of("model-load", &run_of(chunk, 10.0 + i as f64), 0).unwrap();
            let results = Results {
                pod: format!("loadtest-{i}"),
                endpoint: "http://accel".into(),
                verify: Verify::Direct,
                runs: vec![record],
            };
            let file = dir.path().join(format!("{i}.json"));
            std::fs::write(&file, serde_json::to_vec(&results).unwrap()).unwrap();
            files.push(file);
        }
        let out = dir.path().join("out");
        let markdown = merge(&files, &out).unwrap();
        // One run over the union, computed directly.
        let union = run_of(&samples, 12.0);
        let ms = |h: &Histogram<u64>, q: f64| format!("{:.1} ms", h.value_at_quantile(q) as f64 / 1000.0);
        let row = markdown
            .lines()
            .find(|l| l.starts_with("| s3-accel |"))
            .expect("the merged row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // target, GB/s, × direct, req/s, TTFB p50, TTFB p99, p50, p99, p99.9, ..., byte-exact
        assert_eq!(cells[2], format!("{:.3}", union.gb_per_s()), "{row}");
        assert_eq!(cells[5], ms(&union.tally.ttfb, 0.5), "{row}");
        assert_eq!(cells[6], ms(&union.tally.ttfb, 0.99), "{row}");
        assert_eq!(cells[7], ms(&union.tally.latency, 0.5), "{row}");
        assert_eq!(cells[8], ms(&union.tally.latency, 0.99), "{row}");
        assert_eq!(cells[9], ms(&union.tally.latency, 0.999), "{row}");
        assert_eq!(cells[cells.len() - 2], "30000/30000", "{row}");
        // The per-pod rows, and the chart.
        for i in 0..3 {
            assert!(markdown.contains(&format!("| loadtest-{i} |")), "{markdown}");
        }
        assert!(out.join("merged-model-load.svg").exists());
        // Averaging the pods' p99s would not give the merged p99.
        let averaged: f64 = samples
            .chunks(10_000)
            .map(|c| run_of(c, 1.0).tally.latency.value_at_quantile(0.99) as f64)
            .sum::<f64>()
            / 3.0;
        assert_ne!(format!("{:.1} ms", averaged / 1000.0), cells[8]);
    }

    /// `remote` against a local s3-accel in front of the in-process origin: every
    /// response byte-exact, both ways of checking, and a row per workload.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn remote_reads_a_manifest_through_a_local_s3_accel_byte_exact() {
        use s3_accel_testkit::origin::{ACCESS_KEY, SECRET_KEY};
        let work = tempfile::tempdir().unwrap();
        let origin = s3_accel_testkit::Origin::start(Default::default(), Some(work.path()))
            .await
            .unwrap();
        origin.create_bucket("models").await.unwrap();
        let mut manifest = String::new();
        for (i, size) in [(3 << 20) + 11, 1 << 20, 70_000].into_iter().enumerate() {
            let data = bytes::Bytes::from(s3_accel_testkit::object_bytes(50 + i as u64, size));
            let crc = s3_accel::s3::crc_of(crc_fast::CrcAlgorithm::Crc32IsoHdlc, &data);
            let key = format!("m/shard-{i}.bin");
            origin
                .put("models", &key, data, &[("x-amz-checksum-crc32", &crc)])
                .await
                .unwrap();
            manifest.push_str(&format!("s3://models/{key}\n"));
        }
        let manifest_file = work.path().join("manifest.txt");
        std::fs::write(&manifest_file, manifest).unwrap();
        let config = format!(
            "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\norigin = \"{}\"\n\
             [cache]\ndir = \"{}\"\nmemory = \"64MiB\"\ndisk = \"0\"\nchunk_size = \"1MiB\"\n\
             [credentials]\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n",
            origin.url(),
            work.path().join("cache").display()
        );
        let app = s3_accel::App::bind(&s3_accel::Config::from_toml(&config).unwrap())
            .await
            .unwrap();
        let address = app.local_addr().unwrap();
        tokio::spawn(app.run(std::future::pending()));
        let keys = || {
            let credentials = s3_accel::s3::keys::ProxyCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
                session_token: None,
            };
            Keys::fixed(credentials, "us-east-1")
        };
        for verify in ["direct", "checksum"] {
            let results = work.path().join(verify);
            let args = <Args as clap::Parser>::parse_from([
                "s3-accel-bench",
                "remote",
                "--endpoint",
                &format!("http://{address}"),
                "--origin-endpoint",
                &origin.url(),
                "--manifest",
                manifest_file.to_str().unwrap(),
                "--verify",
                verify,
                "--part-size",
                "1MiB",
                "--clients",
                "3",
                "--requests",
                "60",
                "--pod",
                "local-0",
                "--results",
                results.to_str().unwrap(),
            ]);
            run_with(&args, keys()).await.unwrap();
            let pod: Results = serde_json::from_slice(&std::fs::read(results.join("local-0.json")).unwrap()).unwrap();
            assert_eq!(pod.runs.len(), 3);
            for run in &pod.runs {
                assert!(run.requests > 0, "{verify} {}", run.workload);
                assert_eq!(run.exact, run.requests, "{verify} {}: {:?}", run.workload, run.failures);
                assert_eq!(run.unverified, 0, "{verify} {}", run.workload);
            }
            // model-load: 3 clients × (4 + 1 + 1) parts; warm-large: 3 × 3 objects.
            assert_eq!(pod.runs[0].requests, 18);
            assert_eq!(pod.runs[1].requests, 9);
            assert_eq!(pod.runs[2].requests, 60);
            // Warm: after the warm-up every whole read is a hit.
            assert_eq!(pod.runs[1].hits, 9);
            let markdown = std::fs::read_to_string(results.join("remote.md")).unwrap();
            for workload in ["model-load", "warm-large", "small-zipf"] {
                assert!(markdown.contains(&format!("## {workload}")), "{markdown}");
                assert!(results.join(format!("remote-{workload}.svg")).exists());
            }
            assert_eq!(markdown.matches("| s3-accel |").count(), 3, "{markdown}");
            let said = match verify {
                "direct" => "one direct read of its object at the origin",
                _ => "the origin's full-object CRC",
            };
            assert!(markdown.contains(said), "{markdown}");
        }
    }

    #[test]
    fn a_histogram_survives_its_encoding() {
        let run = run_of(&[(1500, 700, 10), (90_000, 800, 10), (7, 3, 10)], 1.0);
        let record = RunRecord::of("small-zipf", &run, 0).unwrap();
        let back = record.run().unwrap();
        assert_eq!(back.tally.latency, run.tally.latency);
        assert_eq!(back.tally.ttfb, run.tally.ttfb);
    }
}
