//! Defaults read off the machine: where to cache, and how much memory and disk to use.

use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME/s3-accel`, else `~/.cache/s3-accel`, else `./s3-accel-cache`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        });
    match base {
        Some(base) => base.join("s3-accel"),
        None => PathBuf::from("s3-accel-cache"),
    }
}

/// A quarter of the memory this process may use (the cgroup limit in a pod), between
/// 256 MiB and 64 GiB: the rest is for the page cache, flush buffers and clients.
pub fn default_memory_cache() -> u64 {
    (usable_memory() / 4).clamp(256 << 20, 64 << 30)
}

/// Half of the free space on the filesystem that holds (or will hold) `dir`, in whole MiB.
pub fn default_disk_cache(dir: &Path) -> u64 {
    let free = free_space(dir).unwrap_or(0);
    (free / 2) & !((1 << 20) - 1)
}

fn usable_memory() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for unknown names.
    let (pages, page_size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    let physical = if pages > 0 && page_size > 0 {
        pages as u64 * page_size as u64
    } else {
        4 << 30
    };
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    cgroup.map_or(physical, |limit| limit.min(physical))
}

/// Free bytes (for unprivileged users) of the filesystem holding `dir`, or of its
/// nearest existing ancestor.
pub fn free_space(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("."));
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_defaults_are_plausible() {
        let memory = default_memory_cache();
        assert!((256 << 20..=64 << 30).contains(&memory));
        let dir = std::env::temp_dir().join("does/not/exist/yet");
        assert!(default_disk_cache(&dir) > 0, "the temp filesystem has free space");
        assert_eq!(default_disk_cache(&dir) % (1 << 20), 0);
    }
}
