//! The disk tier's health: a filesystem that fills up, turns read-only or fails a
//! write takes the disk tier out of service (until restart) instead of the process.
//! foyer 0.22's block engine panics in its flusher on a write error and poisons
//! its block manager, so the disk tier is closed to new writes *before* a write can
//! fail where that can be seen coming (the filesystem can no longer hold what the
//! tier will still allocate), and as soon as a probe write fails otherwise.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::machine::free_space;
use crate::telemetry;

/// How often the disk tier's filesystem is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
const PROBE_FILE: &str = ".s3-accel-health";

/// Whether the disk tier is in service, and if not, why.
#[derive(Debug, Default)]
pub struct DiskHealth {
    out: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl DiskHealth {
    /// Why the disk tier is out of service, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.reason.lock().expect("disk health").clone()
    }

    pub fn is_out(&self) -> bool {
        self.out.load(Ordering::Relaxed)
    }

    /// Takes the disk tier out of service for the rest of the process's life.
    pub fn fail(&self, reason: String) {
        if self.out.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            reason,
            "disk tier out of service: serving from the memory tier and the origin"
        );
        metrics::gauge!(telemetry::DISK_DEGRADED).set(1.0);
        *self.reason.lock().expect("disk health") = Some(reason);
    }
}

/// Bytes the cache's files under `dir` occupy on disk (foyer's files are sparse:
/// they take room as blocks are written), the pinned store's included.
fn allocated(dir: &Path) -> u64 {
    files(dir) + files(&dir.join("pinned"))
}

fn files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.blocks() * 512)
        .sum()
}

/// Writes and syncs a page in `dir`: the cheapest proof that the tier can write.
pub fn probe_write(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    file.write_all(&[0u8; 4096])?;
    file.sync_data()
}

/// The disk tier that fits the filesystem of `dir`: what it may still take (its
/// free space) plus what the cache's files already hold, less a margin of two
/// blocks for the filesystem itself and `reserved` for the pinned store. A
/// configured size above that is clamped, with a warning: a pod must serve with a
/// smaller tier rather than crash-loop.
pub fn fitting(dir: &Path, configured: u64, block_size: u64, reserved: u64) -> u64 {
    let Some(free) = free_space(dir) else {
        return configured;
    };
    let room = (free + allocated(dir)).saturating_sub(2 * block_size + reserved);
    let room = room - room % block_size;
    if configured > room {
        tracing::warn!(
            dir = %dir.display(),
            configured,
            room,
            "cache.disk is larger than its filesystem can hold; clamped"
        );
        return room;
    }
    configured
}

/// Checks the tier's filesystem every second until the tier is out of service.
pub fn watch(dir: PathBuf, capacity: u64, health: Arc<DiskHealth>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(CHECK_EVERY);
        while !health.is_out() {
            ticks.tick().await;
            let dir = dir.clone();
            let checked = tokio::task::spawn_blocking(move || check(&dir, capacity)).await;
            if let Ok(Err(reason)) = checked {
                health.fail(reason);
            }
        }
    })
}

/// Whether the filesystem can still take what the tier will write.
fn check(dir: &Path, capacity: u64) -> Result<(), String> {
    probe_write(dir).map_err(|e| format!("cache.dir {} failed a write: {e}", dir.display()))?;
    let needed = capacity.saturating_sub(allocated(dir));
    match free_space(dir) {
        Some(free) if free < needed => Err(format!(
            "the filesystem of cache.dir {} has {free} bytes free; the disk tier needs {needed} more",
            dir.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_larger_than_its_filesystem_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let block = 16 << 20;
        assert_eq!(fitting(dir.path(), block, block, 0), block, "a small tier fits");
        let clamped = fitting(dir.path(), u64::MAX / 2, block, 0);
        assert!(clamped < u64::MAX / 2 && clamped.is_multiple_of(block), "{clamped}");
    }

    #[test]
    fn an_unwritable_directory_fails_the_check() {
        assert!(check(Path::new("/proc/does-not-exist"), 0).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(check(dir.path(), 0).is_ok());
        assert!(check(dir.path(), u64::MAX).is_err(), "more than the filesystem holds");
    }
}
