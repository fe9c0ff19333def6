//! `cache.admission`: what the disk tier takes and keeps under a one-pass scan. A
//! hot set larger than the memory tier is read twice (so it is on disk), then a
//! dataset of more than twice both tiers is streamed once; the hot set read again
//! is counted in chunk fills at the origin.

use crate::pins::{origin, reads, scan, MIB, MODEL};
use crate::support::TestProxy;

/// Chunks of the hot set (`llama/`) the origin filled from `since` on.
fn hot_fills(origin: &crate::support::TestOrigin, since: usize) -> usize {
    origin.stats.fill_paths.lock().unwrap()[since..]
        .iter()
        .filter(|path| path.contains("/llama/"))
        .count()
}

/// The hot set's chunk fills when read again after a scan, with `admission`.
async fn refills_after_a_scan(admission: &str) -> usize {
    let (origin, model) = origin().await;
    // 4 MiB of memory (the hot set is 6 MiB), 32 MiB of disk.
    let cache = format!(
        "memory = \"4MiB\"\ndisk = \"32MiB\"\nchunk_size = \"1MiB\"\ndirect_io = false\nadmission = \"{admission}\""
    );
    let proxy = TestProxy::start_in(
        tempfile::tempdir().unwrap(),
        &format!("origin = \"{}\"", origin.url()),
        &cache,
    )
    .await;
    for _ in 0..2 {
        for (i, data) in model.iter().enumerate() {
            reads(&proxy, &format!("llama/shard-{i}"), data).await;
        }
    }
    origin.stats.settled().await;
    let before = origin.stats.fill_paths.lock().unwrap().len();
    scan(&proxy).await;
    for (i, data) in model.iter().enumerate() {
        reads(&proxy, &format!("llama/shard-{i}"), data).await;
    }
    origin.stats.settled().await;
    hot_fills(&origin, before)
}

#[tokio::test]
async fn a_scan_does_not_flush_the_hot_set_with_second_hit_admission() {
    let chunks = MODEL.iter().map(|&size| size.div_ceil(MIB)).sum::<usize>();
    // Plain FIFO: the scan rewrites the disk, and the hot set comes from the origin.
    let fifo = refills_after_a_scan("all").await;
    println!("admission all: {fifo} of {chunks} hot chunks filled again after the scan");
    assert!(
        fifo * 2 >= chunks,
        "the scan did not flush the disk: {fifo} of {chunks}"
    );
    // Second hit: the scan never reached the disk; the hot set is all there.
    let kept = refills_after_a_scan("second-hit").await;
    println!("admission second-hit: {kept} of {chunks} hot chunks filled again after the scan");
    assert_eq!(kept, 0, "the scan flushed the hot set: {kept} of {chunks}");
}
