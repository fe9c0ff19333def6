//! Figures: what each run recorded, the Markdown table and the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{Failure, Sample};
use crate::target::Kind;

/// Everything the requests of one or more runs measured.
#[derive(Clone)]
pub struct Tally {
    /// Microseconds, request sent to body end.
    pub latency: Histogram<u64>,
    /// Microseconds, request sent to first body byte.
    pub ttfb: Histogram<u64>,
    pub requests: u64,
    pub bytes: u64,
    /// Responses whose status, length and content hash matched the origin's.
    pub exact: u64,
    pub failures: BTreeMap<Failure, u64>,
    /// Responses the target said it served from its cache, and those it labelled at all.
    pub hits: u64,
    pub labelled: u64,
}

impl Default for Tally {
    fn default() -> Self {
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self {
            latency: histogram(),
            ttfb: histogram(),
            requests: 0,
            bytes: 0,
            exact: 0,
            failures: BTreeMap::new(),
            hits: 0,
            labelled: 0,
        }
    }
}

impl Tally {
    fn add(&mut self, sample: &Sample) {
        let micros = |d: Duration| (d.as_micros() as u64).max(1);
        self.latency.saturating_record(micros(sample.latency));
        self.ttfb.saturating_record(micros(sample.ttfb));
        self.requests += 1;
        self.bytes += sample.bytes;
        match &sample.outcome {
            Ok(()) => self.exact += 1,
            Err(failure) => *self.failures.entry(failure.clone()).or_default() += 1,
        }
        if let Some(hit) = sample.hit {
            self.labelled += 1;
            self.hits += u64::from(hit);
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        self.ttfb.add(&other.ttfb).expect("same bounds");
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.exact += other.exact;
        for (failure, count) in &other.failures {
            *self.failures.entry(failure.clone()).or_default() += count;
        }
        self.hits += other.hits;
        self.labelled += other.labelled;
    }

    pub fn errors(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// Collects samples from many clients and moves the progress bar.
pub struct Recorder {
    tally: Mutex<Tally>,
    progress: ProgressBar,
    /// The bar counts requests rather than bytes.
    by_request: bool,
}

impl Recorder {
    /// `expected_bytes` sizes a byte bar; without it the bar counts `requests`.
    pub fn new(label: String, expected_bytes: Option<u64>, requests: u64) -> Self {
        let (length, template) = match expected_bytes {
            Some(bytes) => (
                bytes,
                "{prefix:>28} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
            ),
            None => (
                requests,
                "{prefix:>28} [{bar:30}] {pos}/{len} requests {per_sec} {elapsed}",
            ),
        };
        let progress = ProgressBar::new(length).with_prefix(label);
        progress.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Self {
            tally: Mutex::new(Tally::default()),
            progress,
            by_request: expected_bytes.is_none(),
        }
    }

    /// A recorder that shows nothing (for a warm-up).
    pub fn hidden() -> Self {
        Self {
            tally: Mutex::new(Tally::default()),
            progress: ProgressBar::hidden(),
            by_request: false,
        }
    }

    /// Moves a byte bar without a request to record (an upload).
    pub fn advance(&self, bytes: u64) {
        self.progress.inc(bytes);
    }

    pub fn record(&self, sample: &Sample) {
        self.tally.lock().unwrap().add(sample);
        self.progress.inc(if self.by_request { 1 } else { sample.bytes });
    }

    pub fn finish(&self) -> Tally {
        self.progress.finish_and_clear();
        self.tally.lock().unwrap().clone()
    }
}

/// One target's run of a scenario.
#[derive(Clone)]
pub struct RunResult {
    pub tally: Tally,
    pub wall: Duration,
    pub origin_requests: u64,
    pub origin_bytes: u64,
    pub peak_rss: Option<u64>,
    /// CPU seconds the target's processes used during the run (user and system).
    pub cpu_seconds: Option<f64>,
    pub timed_out: bool,
    /// A region's owners answering warm chunk requests (region-herd, with peers).
    pub peer_hop: Option<crate::hop::PeerHop>,
}

impl RunResult {
    /// What clients measured over `wall`, nothing known of the origin.
    pub fn of(tally: Tally, wall: Duration) -> Self {
        Self {
            tally,
            wall,
            origin_requests: 0,
            origin_bytes: 0,
            peak_rss: None,
            cpu_seconds: None,
            timed_out: false,
            peer_hop: None,
        }
    }

    pub fn merge(&mut self, other: &RunResult) {
        self.tally.merge(&other.tally);
        self.wall += other.wall;
        self.origin_requests += other.origin_requests;
        self.origin_bytes += other.origin_bytes;
        self.peak_rss = self.peak_rss.max(other.peak_rss);
        self.cpu_seconds = match (self.cpu_seconds, other.cpu_seconds) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.timed_out |= other.timed_out;
        match (&mut self.peer_hop, &other.peer_hop) {
            (Some(hop), Some(other)) => hop.merge(other),
            (None, Some(other)) => self.peer_hop = Some(other.clone()),
            _ => {}
        }
    }

    pub fn gb_per_s(&self) -> f64 {
        self.tally.bytes as f64 / self.wall.as_secs_f64().max(1e-9) / 1e9
    }

    fn requests_per_s(&self) -> f64 {
        self.tally.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// A scenario's results, every round of each target merged.
pub struct Report<'a> {
    pub scenario: &'a str,
    pub summary: &'a str,
    /// Shaping, sizes and rounds, in a line.
    pub setting: String,
    pub unique_bytes: u64,
    pub rounds: usize,
    /// s3-accel's memory bound: memory tier + fill memory + read-ahead budget + 256 MiB.
    pub rss_bound: u64,
    /// Processes of a region target (region-herd).
    pub nodes: usize,
    /// The origin's counters are not known (a remote run): those columns say so.
    pub origin_unseen: bool,
    pub results: Vec<(Kind, RunResult)>,
}

impl<'a> Report<'a> {
    pub fn new(scenario: &'a str, summary: &'a str, setting: String, unique_bytes: u64) -> Self {
        Self {
            scenario,
            summary,
            setting,
            unique_bytes,
            rounds: 0,
            rss_bound: 0,
            nodes: 1,
            origin_unseen: false,
            results: Vec::new(),
        }
    }

    pub fn add(&mut self, kind: Kind, run: RunResult) {
        match self.results.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, merged)) => merged.merge(&run),
            None => self.results.push((kind, run)),
        }
    }

    fn get(&self, kind: Kind) -> Option<&RunResult> {
        self.results.iter().find(|(k, _)| *k == kind).map(|(_, r)| r)
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## {}\n\n{}.\n\n{}\n", self.scenario, self.summary, self.setting);
        out.push_str(
            "| target | GB/s | × direct | req/s | TTFB p50 | TTFB p99 | p50 | p99 | p99.9 | hits | origin requests | origin bytes | peak RSS | errors | byte-exact |\n",
        );
        out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|\n");
        let direct = self.get(Kind::Direct).map(RunResult::gb_per_s);
        for (kind, run) in &self.results {
            let tally = &run.tally;
            let ms = |h: &Histogram<u64>, q: f64| format!("{:.1} ms", h.value_at_quantile(q) as f64 / 1000.0);
            let speedup = direct.map_or("–".into(), |d| format!("{:.2}×", run.gb_per_s() / d.max(1e-12)));
            let hits = match tally.labelled {
                0 => "–".to_string(),
                n => format!("{:.0}%", 100.0 * tally.hits as f64 / n as f64),
            };
            let expected_origin = self.unique_bytes * self.rounds.max(1) as u64;
            let (origin_requests, origin_bytes) = match self.origin_unseen {
                true => ("–".to_string(), "–".to_string()),
                false => (
                    run.origin_requests.to_string(),
                    format!(
                        "{} ({:.3}×)",
                        bytes(run.origin_bytes),
                        run.origin_bytes as f64 / expected_origin.max(1) as f64
                    ),
                ),
            };
            let errors = if tally.failures.is_empty() {
                "0".to_string()
            } else {
                let listed: Vec<String> = tally.failures.iter().map(|(f, n)| format!("{n} {f}")).collect();
                listed.join(", ")
            };
            let errors = if run.timed_out {
                format!("{errors}; TIME LIMIT")
            } else {
                errors
            };
            let _ = writeln!(
                out,
                "| {} | {:.3} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
                kind.name(),
                run.gb_per_s(),
                speedup,
                run.requests_per_s(),
                ms(&tally.ttfb, 0.5),
                ms(&tally.ttfb, 0.99),
                ms(&tally.latency, 0.5),
                ms(&tally.latency, 0.99),
                ms(&tally.latency, 0.999),
                hits,
                origin_requests,
                origin_bytes,
                run.peak_rss.map_or("–".into(), bytes),
                errors,
                tally.exact,
                tally.requests,
            );
        }
        let goals = if self.origin_unseen { Vec::new() } else { self.goals() };
        if !goals.is_empty() {
            out.push_str("\nGoals (reported, not asserted):\n\n");
            for goal in goals {
                let _ = writeln!(out, "- {goal}");
            }
        }
        out
    }

    /// The targets this scenario speaks to, with what was measured.
    fn goals(&self) -> Vec<String> {
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let mut goals = Vec::new();
        let accel = self.get(Kind::S3Accel).or(self.get(Kind::Region));
        let origin_ratio =
            |run: &RunResult| run.origin_bytes as f64 / (self.unique_bytes * self.rounds.max(1) as u64).max(1) as f64;
        if self.scenario == "region-herd" {
            goals.extend(self.region_goals(origin_ratio));
        }
        if let Some(accel) = accel {
            let ratio = origin_ratio(accel);
            if self.scenario == "cold-herd" {
                goals.push(format!(
                    "origin bytes ≤ 1.01 × the object: {ratio:.4}× ({})",
                    verdict(ratio <= 1.01)
                ));
            }
            if let Some(direct) = self.get(Kind::Direct) {
                let p50 = |r: &RunResult| r.tally.ttfb.value_at_quantile(0.5) as f64;
                let r = p50(accel) / p50(direct).max(1.0);
                goals.push(format!(
                    "ttfb: s3-accel p50 ≤ 1.2 × direct: {r:.2}× ({})",
                    verdict(r <= 1.2)
                ));
            }
            if let Some(rss) = accel.peak_rss {
                let limit = self.rss_bound;
                goals.push(format!(
                    "s3-accel peak RSS ≤ memory tier + fill memory + read-ahead memory + 256 MiB ({}): {} ({})",
                    bytes(limit),
                    bytes(rss),
                    verdict(rss <= limit)
                ));
            }
        }
        let ratio = |a: Option<&RunResult>, b: Option<&RunResult>| Some(a?.gb_per_s() / b?.gb_per_s().max(1e-12));
        if self.scenario == "cold-single" {
            if let Some(r) = ratio(accel, self.get(Kind::Direct)) {
                goals.push(format!(
                    "s3-accel ≥ 5 × the direct origin: {r:.2}× ({})",
                    verdict(r >= 5.0)
                ));
            }
        }
        if self.scenario == "small-zipf" {
            let rate = |r: Option<&RunResult>| Some(r?.tally.requests as f64 / r?.wall.as_secs_f64().max(1e-9));
            if let (Some(a), Some(d)) = (rate(accel), rate(self.get(Kind::Direct))) {
                let r = a / d.max(1e-9);
                goals.push(format!(
                    "s3-accel ≥ 1.2 × the direct origin's requests/s: {r:.2}× ({})",
                    verdict(r >= 1.2)
                ));
            }
            if let (Some(a), Some(n)) = (rate(accel), rate(self.get(Kind::Nginx))) {
                let r = a / n.max(1e-9);
                goals.push(format!(
                    "s3-accel ≥ nginx's requests/s: {r:.2}× ({})",
                    verdict(r >= 1.0)
                ));
            }
        }
        if self.scenario == "warm-large" {
            if let Some(r) = ratio(accel, self.get(Kind::Nginx)) {
                goals.push(format!("s3-accel ≥ 1.2 × nginx: {r:.2}× ({})", verdict(r >= 1.2)));
            }
        }
        goals
    }

    /// Region-herd: one fetch per region with peers, per node without; throughput
    /// per node; what a peer hop adds.
    fn region_goals(&self, origin_ratio: impl Fn(&RunResult) -> f64) -> Vec<String> {
        let verdict = |met: bool| if met { "met" } else { "missed" };
        let mut goals = Vec::new();
        let (region, alone) = (self.get(Kind::Region), self.get(Kind::Alone));
        if let Some(region) = region {
            let ratio = origin_ratio(region);
            goals.push(format!(
                "origin bytes ≤ 1.02 × the model with peers: {ratio:.4}× ({}){}",
                verdict(ratio <= 1.02),
                alone.map_or(String::new(), |alone| format!(
                    ", against {:.3}× with {} nodes alone",
                    origin_ratio(alone),
                    self.nodes
                ))
            ));
        }
        let per_gib = |run: &RunResult| {
            run.cpu_seconds
                .map(|cpu| cpu / (run.tally.bytes as f64 / (1u64 << 30) as f64).max(1e-9))
        };
        if let (Some(Some(region)), Some(Some(alone))) = (region.map(per_gib), alone.map(per_gib)) {
            goals.push(format!(
                "CPU of the nodes per GiB served to clients: {region:.3} s with peers, {alone:.3} s alone"
            ));
        }
        let per_node = |run: &RunResult| run.gb_per_s() / self.nodes.max(1) as f64;
        if let (Some(region), Some(alone)) = (region, alone) {
            goals.push(format!(
                "throughput per node: {:.3} GB/s with peers, {:.3} GB/s alone ({:.2}×)",
                per_node(region),
                per_node(alone),
                per_node(region) / per_node(alone).max(1e-12)
            ));
        }
        if let Some(hop) = region.and_then(|r| r.peer_hop.as_ref()) {
            let ms = |q: f64| hop.ttfb.value_at_quantile(q) as f64 / 1000.0;
            goals.push(format!(
                "a peer hop's TTFB p50 ≤ 1 ms over loopback: p50 {:.3} ms, p99 {:.3} ms over {} warm chunk requests \
                 to their owners ({}){}",
                ms(0.5),
                ms(0.99),
                hop.ttfb.len(),
                verdict(ms(0.5) <= 1.0),
                match hop.filled {
                    0 => String::new(),
                    n => format!("; {n} more had to be filled and are not counted"),
                }
            ));
            let checked = |q: f64| hop.checked.value_at_quantile(q) as f64 / 1000.0;
            goals.push(format!(
                "a peer chunk's first block in and its tag checked (a reader uses no byte before): p50 {:.3} ms, p99 {:.3} ms",
                checked(0.5),
                checked(0.99)
            ));
            for (what, seconds) in &hop.costs {
                goals.push(format!("CPU per GiB checked, one core: {what}: {seconds:.3} s"));
            }
        }
        goals
    }

    /// Throughput and latency per target, side by side.
    pub fn svg(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;

        let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!("{}: {}", self.scenario, self.summary),
            ("sans-serif", 15).into_font(),
        )?;
        let (left, right) = root.split_horizontally(430);
        let names: Vec<&str> = self.results.iter().map(|(k, _)| k.name()).collect();
        let count = self.results.len().max(1) as f64;
        let label = |x: &f64| {
            let index = x.floor() as usize;
            match (x.fract() - 0.5).abs() < 1e-6 {
                true => names.get(index).copied().unwrap_or("").to_string(),
                false => String::new(),
            }
        };
        let colors = [RGBColor(90, 90, 90), RGBColor(0, 114, 178), RGBColor(230, 159, 0)];

        let top = self.results.iter().map(|(_, r)| r.gb_per_s()).fold(0.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(&left)
            .caption("throughput (GB/s)", ("sans-serif", 14))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..count, 0.0..top.max(0.001))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(self.results.len() * 2 + 1)
            .x_label_formatter(&label)
            .draw()?;
        chart.draw_series(self.results.iter().enumerate().map(|(i, (kind, run))| {
            let color = colors[*kind as usize % colors.len()];
            Rectangle::new(
                [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, run.gb_per_s())],
                color.filled(),
            )
        }))?;

        let quantiles = [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")];
        let millis = |run: &RunResult, q: f64| (run.tally.latency.value_at_quantile(q) as f64 / 1000.0).max(0.01);
        let highest = self.results.iter().map(|(_, r)| millis(r, 0.999)).fold(0.1, f64::max);
        let mut chart = ChartBuilder::on(&right)
            .caption("request latency (ms, log scale): p50, p99, p99.9", ("sans-serif", 14))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..count, (0.01..highest * 2.0).log_scale())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(self.results.len() * 2 + 1)
            .x_label_formatter(&label)
            .draw()?;
        for (q, (quantile, _)) in quantiles.iter().enumerate() {
            chart.draw_series(self.results.iter().enumerate().map(|(i, (kind, run))| {
                let color = colors[*kind as usize % colors.len()].mix(1.0 - 0.3 * q as f64);
                let x = i as f64 + 0.15 + 0.24 * q as f64;
                Rectangle::new([(x, 0.01), (x + 0.22, millis(run, *quantile))], color.filled())
            }))?;
        }
        root.present()?;
        Ok(())
    }
}

/// Bytes in binary units, to three significant figures.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ if value >= 100.0 => format!("{value:.0} {}", UNITS[unit]),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(outcome: Result<(), Failure>, bytes: u64, millis: u64, hit: Option<bool>) -> Sample {
        Sample {
            outcome,
            bytes,
            ttfb: Duration::from_millis(millis / 2),
            latency: Duration::from_millis(millis),
            hit,
            etag: None,
        }
    }

    #[test]
    fn a_tally_counts_bytes_failures_and_hits() {
        let mut tally = Tally::default();
        tally.add(&sample(Ok(()), 100, 10, Some(true)));
        tally.add(&sample(Ok(()), 100, 20, Some(false)));
        tally.add(&sample(Err(Failure::Corrupt), 100, 30, None));
        assert_eq!(
            (tally.requests, tally.bytes, tally.exact, tally.errors()),
            (3, 300, 2, 1)
        );
        assert_eq!((tally.hits, tally.labelled), (1, 2));
        let mut merged = tally.clone();
        merged.merge(&tally);
        assert_eq!((merged.requests, merged.errors(), merged.latency.len()), (6, 2, 6));
    }

    #[test]
    fn a_region_report_compares_peers_with_nodes_alone_and_shows_the_hop() {
        let run = |origin_bytes: u64, hop: Option<crate::hop::PeerHop>| {
            let mut tally = Tally::default();
            tally.add(&sample(Ok(()), 4_000_000_000, 5, None));
            RunResult {
                tally,
                wall: Duration::from_secs(2),
                origin_requests: 1,
                origin_bytes,
                peak_rss: None,
                cpu_seconds: None,
                timed_out: false,
                peer_hop: hop,
            }
        };
        let mut ttfb = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for micros in [300, 400, 500, 2000] {
            ttfb.record(micros).unwrap();
        }
        let hop = crate::hop::PeerHop {
            checked: ttfb.clone(),
            ttfb,
            filled: 1,
            costs: Vec::new(),
        };
        let mut report = Report::new("region-herd", "a herd", "setting".into(), 1_000_000_000);
        report.rounds = 1;
        report.nodes = 4;
        report.add(Kind::Region, run(1_010_000_000, Some(hop)));
        report.add(Kind::Alone, run(4_000_000_000, None));
        let table = report.markdown();
        assert!(
            table.contains(
                "origin bytes ≤ 1.02 × the model with peers: 1.0100× (met), against 4.000× with 4 nodes alone"
            ),
            "{table}"
        );
        assert!(
            table.contains("throughput per node: 0.500 GB/s with peers, 0.500 GB/s alone"),
            "{table}"
        );
        assert!(
            table.contains("a peer hop's TTFB p50 ≤ 1 ms over loopback: p50 0.400 ms"),
            "{table}"
        );
        assert!(table.contains("1 more had to be filled"), "{table}");
    }

    #[test]
    fn the_table_shows_speedup_errors_and_goals() {
        let run = |bytes: u64, secs: u64, origin_bytes: u64, failure: Option<Failure>| {
            let mut tally = Tally::default();
            tally.add(&sample(failure.map_or(Ok(()), Err), bytes, 5, None));
            RunResult {
                tally,
                wall: Duration::from_secs(secs),
                origin_requests: 1,
                origin_bytes,
                peak_rss: Some(100 << 20),
                cpu_seconds: None,
                timed_out: false,
                peer_hop: None,
            }
        };
        let mut report = Report::new("cold-single", "one client", "setting".into(), 1_000_000_000);
        report.rounds = 1;
        report.rss_bound = 1 << 30;
        report.add(Kind::Direct, run(1_000_000_000, 10, 1_000_000_000, None));
        report.add(
            Kind::S3Accel,
            run(1_000_000_000, 2, 1_000_000_000, Some(Failure::Status(503))),
        );
        let table = report.markdown();
        assert!(table.contains("| s3-accel | 0.500 | 5.00× |"), "{table}");
        assert!(table.contains("1 HTTP 503"), "{table}");
        assert!(table.contains("0/1"), "{table}");
        assert!(
            table.contains("s3-accel ≥ 5 × the direct origin: 5.00× (met)")
                && table.contains("ttfb: s3-accel p50 ≤ 1.2 × direct"),
            "{table}"
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(128 << 20), "128 MiB");
        assert_eq!(bytes(1536 << 20), "1.5 GiB");
    }
}
