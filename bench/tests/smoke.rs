//! The harness end to end, small: every scenario against the origin directly and
//! s3-accel (nginx is left to real runs: it would be installed from Debian's
//! packages). Figures are not judged here; completeness and exactness are.

use std::process::Command;

#[test]
fn every_scenario_runs_and_every_response_is_byte_exact() {
    let results = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_s3-accel-bench"))
        .args([
            "all",
            "--targets",
            "direct,s3-accel",
            "--clients",
            "3",
            "--size",
            "2MiB",
        ])
        .args([
            "--chunk-size",
            "1MiB",
            "--memory-cache",
            "64MiB",
            "--disk-cache",
            "64MiB",
        ])
        .args([
            "--objects",
            "50",
            "--requests",
            "300",
            "--rtt",
            "1ms",
            "--time-limit",
            "60s",
        ])
        .arg("--results")
        .arg(results.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let one = ["origin direct", "s3-accel"].as_slice();
    for (scenario, targets) in [
        ("cold-herd", one),
        ("cold-single", one),
        ("warm-large", one),
        ("small-zipf", one),
        ("model-load", one),
        ("many-clients", one),
        // s3-accel as a region: its nodes as peers, then alone.
        (
            "region-herd",
            ["origin direct", "s3-accel, peers", "s3-accel, no peers"].as_slice(),
        ),
    ] {
        let table = std::fs::read_to_string(results.path().join(format!("{scenario}.md"))).unwrap();
        let svg = std::fs::read_to_string(results.path().join(format!("{scenario}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("s3-accel"), "{scenario}: chart");
        for target in targets {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {target} |")))
                .unwrap_or_else(|| panic!("{scenario}: no row for {target}:\n{table}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // | target | GB/s | … | errors | byte-exact |
            let (errors, exact) = (cells[cells.len() - 3], cells[cells.len() - 2]);
            assert_eq!(errors, "0", "{scenario}/{target}: {row}");
            let (good, all) = exact.split_once('/').unwrap();
            assert!(
                all.parse::<u64>().unwrap() > 0 && good == all,
                "{scenario}/{target}: {row}"
            );
        }
    }
    // A warm read through s3-accel sends no object bytes from the origin.
    let warm = std::fs::read_to_string(results.path().join("warm-large.md")).unwrap();
    let accel = warm.lines().find(|l| l.starts_with("| s3-accel |")).unwrap();
    assert!(accel.contains("| 0 B (0.000×) |"), "warm-large: {accel}");
    // The herd reaches the origin about once.
    let herd = std::fs::read_to_string(results.path().join("cold-herd.md")).unwrap();
    assert!(herd.contains("origin bytes ≤ 1.01 × the object"), "{herd}");
    // The region's report compares it with its nodes alone and times the peer hop.
    let region = std::fs::read_to_string(results.path().join("region-herd.md")).unwrap();
    assert!(region.contains("with 4 nodes alone"), "{region}");
    assert!(region.contains("a peer hop's TTFB p50"), "{region}");
    // A rollout, with and without waiting for restarting owners: nothing failed,
    // nothing wrong, every node exited 0.
    let rollout = std::fs::read_to_string(results.path().join("region-rollout.md")).unwrap();
    let rows: Vec<&str> = rollout
        .lines()
        .filter(|l| l.starts_with("| readers wait") || l.starts_with("| no wait"))
        .collect();
    assert_eq!(rows.len(), 2, "{rollout}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | rollout | GETs | failed | wrong bytes | … | exit codes |
        assert!(cells[2].parse::<u64>().unwrap() > 0, "region-rollout: {row}");
        assert_eq!((cells[3], cells[4]), ("0", "0"), "region-rollout: {row}");
        assert_eq!(cells[cells.len() - 2], "all 0", "region-rollout: {row}");
    }
    // A scan beside a hot set, for each admission choice: hot reads were made,
    // nothing failed, nothing wrong.
    let scan = std::fs::read_to_string(results.path().join("scan-vs-hot.md")).unwrap();
    let rows: Vec<&str> = scan
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains(" % |"))
        .collect();
    assert!(!rows.is_empty(), "{scan}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | admission | hot GETs | … | failed | wrong |
        assert!(cells[2].parse::<u64>().unwrap() > 0, "scan-vs-hot: {row}");
        assert_eq!(
            (cells[cells.len() - 3], cells[cells.len() - 2]),
            ("0", "0"),
            "scan-vs-hot: {row}"
        );
    }
}
