//! The pinned store: chunks of pinned objects, one file each under
//! `<cache.dir>/pinned`, apart from the tiers and their eviction. Nothing here is
//! evicted: a chunk leaves when no live pin covers its object any more, when its
//! version is dropped, or when a newer version of its object is stored. Bounded by
//! `cache.pinned`: a chunk that does not fit is not pinned (it goes to the tiers) and
//! is counted.
//!
//! Not a foyer instance: foyer's block engine reclaims whole blocks, and drops
//! entries under bursts of inserts (foyer #1334); a store that must not lose what it
//! was given cannot sit on either.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use twox_hash::XxHash64;

use super::CacheKey;
use crate::telemetry;

const MAGIC: &[u8; 8] = b"S3APIN1\n";
/// Chunks waiting for their file are held in memory: at most this many bytes (past
/// it, a chunk goes to the tiers instead, and is pinned when next read).
const MAX_PENDING: u64 = 256 << 20;

/// Which objects live pins cover, by bucket and (decoded) key.
pub trait Covers: Send + Sync {
    fn covers(&self, bucket: &str, key: &str) -> bool;
}

/// One pinned chunk on disk.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    len: u64,
    /// The object's bucket and decoded key, and the version the chunk is of.
    bucket: String,
    key: String,
    version: Bytes,
}

#[derive(Default)]
struct Index {
    entries: HashMap<CacheKey, Entry>,
    /// Chunks stored but not yet on disk: served from here meanwhile.
    pending: HashMap<CacheKey, Bytes>,
    pending_bytes: u64,
    used: u64,
}

pub struct PinnedStore {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
}

impl PinnedStore {
    /// Opens the store in `dir` (creating it), keeping what fits `capacity` and what
    /// `covers` still covers; the rest is deleted, logged and counted.
    pub fn open(dir: PathBuf, capacity: u64, covers: &dyn Covers) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&dir)?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            match read_header(&path) {
                Ok((key, len)) => {
                    let modified = entry.metadata().and_then(|m| m.modified()).ok();
                    found.push((modified, path, key, len));
                }
                Err(_) => {
                    // A write cut by a crash (its temporary file), or not ours.
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // Oldest first: what was pinned first is kept first.
        found.sort_by_key(|a| a.0);
        let mut index = Index::default();
        let (mut expired, mut unfit) = (0u64, 0u64);
        for (_, path, key, len) in found {
            let Some((bucket, name)) = key.names() else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if !covers.covers(&bucket, &name) {
                expired += 1;
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if index.used + len > capacity {
                unfit += len;
                let _ = std::fs::remove_file(&path);
                continue;
            }
            index.used += len;
            let version = key.version_prefix();
            index.entries.insert(
                key,
                Entry {
                    path,
                    len,
                    bucket,
                    key: name,
                    version,
                },
            );
        }
        if unfit > 0 {
            tracing::warn!(
                dropped_bytes = unfit,
                capacity,
                "pinned chunks no longer fit cache.pinned after a restart; dropped (the pins stay, their objects are read again from the origin)"
            );
            metrics::counter!(telemetry::PIN_REFUSALS, "why" => "restart").increment(1);
            metrics::counter!(telemetry::PINNED_DROPPED_BYTES).increment(unfit);
        }
        tracing::info!(
            chunks = index.entries.len(),
            bytes = index.used,
            expired,
            capacity,
            "pinned store opened"
        );
        let store = Arc::new(Self {
            dir,
            capacity,
            index: Mutex::new(index),
        });
        store.publish();
        Ok(store)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn used(&self) -> u64 {
        self.index().used
    }

    pub fn contains(&self, key: &CacheKey) -> bool {
        let index = self.index();
        index.pending.contains_key(key) || index.entries.contains_key(key)
    }

    /// Bytes pinned for `bucket`/`key`-prefix `prefix`, for reports.
    pub fn bytes_of(&self, bucket: &str, matches: impl Fn(&str) -> bool) -> u64 {
        self.index()
            .entries
            .values()
            .filter(|e| e.bucket == bucket && matches(&e.key))
            .map(|e| e.len)
            .sum()
    }

    /// The chunk under `key`, if pinned here and still whole.
    pub async fn get(self: &Arc<Self>, key: &CacheKey) -> Option<Bytes> {
        let path = {
            let index = self.index();
            if let Some(bytes) = index.pending.get(key) {
                return Some(bytes.clone());
            }
            index.entries.get(key)?.path.clone()
        };
        let read = tokio::task::spawn_blocking(move || read_file(&path)).await;
        match read {
            Ok(Ok((found, bytes))) if found == *key => Some(bytes),
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                tracing::warn!("a pinned chunk cannot be read whole; forgotten (read again from upstream)");
                self.remove(std::slice::from_ref(key));
                None
            }
        }
    }

    /// Pins chunk `key` (of `bucket`/`name`): servable at once, on disk soon after.
    /// A chunk of another version of the same object leaves. `false` (nothing kept)
    /// when it does not fit.
    pub fn put(self: &Arc<Self>, key: CacheKey, bucket: String, name: String, bytes: Bytes) -> bool {
        let len = bytes.len() as u64;
        let version = key.version_prefix();
        let stale: Vec<CacheKey> = {
            let mut index = self.index();
            if index.entries.contains_key(&key) || index.pending.contains_key(&key) {
                return true;
            }
            if index.pending_bytes + len > MAX_PENDING {
                return false;
            }
            let stale: Vec<CacheKey> = index
                .entries
                .iter()
                .filter(|(_, e)| e.bucket == bucket && e.key == name && e.version != version)
                .map(|(k, _)| k.clone())
                .collect();
            let freed: u64 = stale.iter().filter_map(|k| index.entries.get(k)).map(|e| e.len).sum();
            if index.used - freed + len > self.capacity {
                drop(index);
                metrics::counter!(telemetry::PIN_REFUSALS, "why" => "full").increment(1);
                tracing::warn!(
                    bucket,
                    key = name,
                    used = self.used(),
                    capacity = self.capacity,
                    "a pinned chunk does not fit cache.pinned; kept in the tiers instead"
                );
                return false;
            }
            index.used += len;
            index.pending_bytes += len;
            index.pending.insert(key.clone(), bytes.clone());
            index.entries.insert(
                key.clone(),
                Entry {
                    path: self.path_of(&key),
                    len,
                    bucket,
                    key: name,
                    version,
                },
            );
            stale
        };
        self.remove(&stale);
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let path = store.path_of(&key);
            let written = write_file(&path, &key, &bytes);
            let mut index = store.index();
            if index.pending.remove(&key).is_some() {
                index.pending_bytes -= len;
            }
            if let Err(error) = written {
                // The disk refused it: not pinned (it is read again from upstream).
                tracing::warn!(%error, "writing a pinned chunk failed");
                if let Some(entry) = index.entries.remove(&key) {
                    index.used -= entry.len;
                }
                let _ = std::fs::remove_file(&path);
            } else if !index.entries.contains_key(&key) {
                // Removed (unpinned, dropped) while it was being written.
                let _ = std::fs::remove_file(&path);
            }
            drop(index);
            store.publish();
        });
        self.publish();
        true
    }

    /// Removes the chunks under `keys` (a dropped version).
    pub fn remove(&self, keys: &[CacheKey]) {
        let removed: Vec<Entry> = {
            let mut index = self.index();
            let removed: Vec<Entry> = keys.iter().filter_map(|k| index.entries.remove(k)).collect();
            for key in keys {
                if let Some(bytes) = index.pending.remove(key) {
                    index.pending_bytes -= bytes.len() as u64;
                }
            }
            index.used -= removed.iter().map(|e| e.len).sum::<u64>();
            removed
        };
        if removed.is_empty() {
            return;
        }
        let paths: Vec<PathBuf> = removed.into_iter().map(|e| e.path).collect();
        let unlink = move || {
            for path in paths {
                let _ = std::fs::remove_file(path);
            }
        };
        // Off the runtime's threads when there is one (a slow disk stalls no request).
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(unlink)),
            Err(_) => unlink(),
        }
        self.publish();
    }

    /// Releases every chunk whose object no live pin covers now (a pin expired or
    /// was deleted): its bytes and room are freed.
    pub fn release_uncovered(&self, covers: &dyn Covers) -> u64 {
        let keys: Vec<CacheKey> = self
            .index()
            .entries
            .iter()
            .filter(|(_, e)| !covers.covers(&e.bucket, &e.key))
            .map(|(k, _)| k.clone())
            .collect();
        let freed: u64 = {
            let index = self.index();
            keys.iter().filter_map(|k| index.entries.get(k)).map(|e| e.len).sum()
        };
        self.remove(&keys);
        freed
    }

    fn path_of(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{:016x}.chunk", key.stable_hash()))
    }

    fn publish(&self) {
        let (used, chunks) = {
            let index = self.index();
            (index.used, index.entries.len())
        };
        metrics::gauge!(telemetry::PINNED_BYTES).set(used as f64);
        metrics::gauge!(telemetry::PINNED_CHUNKS).set(chunks as f64);
        metrics::gauge!(telemetry::CACHE_CAPACITY, "tier" => "pinned").set(self.capacity as f64);
    }
}

/// `MAGIC`, the key (u32 length), the chunk (u64 length), its xxHash64, the chunk.
fn write_file(path: &Path, key: &CacheKey, bytes: &[u8]) -> std::io::Result<()> {
    let encoded = key.as_bytes();
    let temporary = path.with_extension("partial");
    let mut file = std::fs::File::create(&temporary)?;
    let mut head = Vec::with_capacity(32 + encoded.len());
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    head.extend_from_slice(encoded);
    head.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    head.extend_from_slice(&XxHash64::oneshot(0, bytes).to_be_bytes());
    file.write_all(&head)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    std::fs::rename(&temporary, path)
}

fn read_header(path: &Path) -> std::io::Result<(CacheKey, u64)> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (key, len, _) = header(&mut file)?;
    let actual = std::fs::metadata(path)?.len();
    if actual < len {
        return Err(invalid("a pinned chunk file is shorter than its chunk"));
    }
    Ok((key, len))
}

fn header(file: &mut impl Read) -> std::io::Result<(CacheKey, u64, u64)> {
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a pinned chunk file"));
    }
    let mut word = [0u8; 4];
    file.read_exact(&mut word)?;
    let key_len = u32::from_be_bytes(word) as usize;
    if key_len > 64 << 10 {
        return Err(invalid("a pinned chunk's key is too long"));
    }
    let mut key = vec![0u8; key_len];
    file.read_exact(&mut key)?;
    let mut long = [0u8; 8];
    file.read_exact(&mut long)?;
    let len = u64::from_be_bytes(long);
    file.read_exact(&mut long)?;
    Ok((CacheKey::from_bytes(key.into()), len, u64::from_be_bytes(long)))
}

fn read_file(path: &Path) -> std::io::Result<(CacheKey, Bytes)> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path)?);
    let (key, len, hash) = header(&mut file)?;
    if len > 1 << 30 {
        return Err(invalid("a pinned chunk's length"));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact(&mut bytes)?;
    if XxHash64::oneshot(0, &bytes) != hash {
        return Err(invalid("a pinned chunk does not match its hash"));
    }
    Ok((key, bytes.into()))
}

fn invalid(why: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ObjectId;

    struct All(bool);

    impl Covers for All {
        fn covers(&self, _: &str, _: &str) -> bool {
            self.0
        }
    }

    fn key(name: &str, etag: &str, index: u64) -> CacheKey {
        let object = ObjectId {
            origin: "http://origin".into(),
            bucket: "models".into(),
            key: name.into(),
            version_id: None,
        };
        CacheKey::chunk(&object, etag, 1 << 20, index)
    }

    async fn settled(store: &PinnedStore) {
        for _ in 0..500 {
            if store.index().pending.is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("a pinned chunk was never written");
    }

    #[tokio::test]
    async fn pinned_chunks_survive_a_reopen_and_a_smaller_store_keeps_what_fits() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinnedStore::open(dir.path().join("pinned"), 3 << 20, &All(true)).unwrap();
        let chunk = |i: u8| Bytes::from(vec![i; 1 << 20]);
        for i in 0..3 {
            assert!(store.put(key("a", "\"1\"", i), "models".into(), "a".into(), chunk(i as u8)));
        }
        assert!(
            !store.put(key("b", "\"1\"", 0), "models".into(), "b".into(), chunk(9)),
            "a fourth chunk does not fit 3 MiB"
        );
        settled(&store).await;
        assert_eq!(store.get(&key("a", "\"1\"", 1)).await.unwrap(), chunk(1));
        drop(store);

        let reopened = PinnedStore::open(dir.path().join("pinned"), 3 << 20, &All(true)).unwrap();
        assert_eq!(reopened.used(), 3 << 20);
        assert_eq!(reopened.get(&key("a", "\"1\"", 2)).await.unwrap(), chunk(2));
        drop(reopened);

        let smaller = PinnedStore::open(dir.path().join("pinned"), 2 << 20, &All(true)).unwrap();
        assert_eq!(smaller.used(), 2 << 20, "kept what fits");
        drop(smaller);
        let uncovered = PinnedStore::open(dir.path().join("pinned"), 3 << 20, &All(false)).unwrap();
        assert_eq!(uncovered.used(), 0, "expired while stopped: released");
        assert_eq!(std::fs::read_dir(dir.path().join("pinned")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_new_version_replaces_the_old_and_a_torn_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = PinnedStore::open(dir.path().to_owned(), 4 << 20, &All(true)).unwrap();
        let bytes = Bytes::from(vec![1u8; 1 << 20]);
        store.put(key("a", "\"1\"", 0), "models".into(), "a".into(), bytes.clone());
        settled(&store).await;
        store.put(key("a", "\"2\"", 0), "models".into(), "a".into(), bytes.clone());
        settled(&store).await;
        assert!(!store.contains(&key("a", "\"1\"", 0)), "the old version left");
        assert_eq!(store.used(), 1 << 20);
        // A byte flipped on disk: never served.
        let path = store.path_of(&key("a", "\"2\"", 0));
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, raw).unwrap();
        assert!(store.get(&key("a", "\"2\"", 0)).await.is_none());
        assert_eq!(store.used(), 0, "forgotten");
        assert_eq!(store.release_uncovered(&All(false)), 0);
    }
}
