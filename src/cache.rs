//! The chunk cache: a foyer hybrid cache (memory, then NVMe) of object chunks and
//! object metadata. The only module that names foyer.

mod admission;
mod disk;
mod drops;
mod filling;
pub mod grants;
mod key;
mod pinned;
pub mod pins;
mod value;

use std::sync::Arc;

pub use admission::Admission;
use admission::Sketch;
use bytes::Bytes;
pub use disk::DiskHealth;
use drops::Drops;
pub use filling::{ChunkRead, ChunkSink, ChunkWriter, Dangling};
use filling::{Destination, Filling, Store, Table};
use foyer::{
    BlockEngineConfig, Cache, CacheBuilder, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder,
    HybridCachePolicy, PsyncIoEngineConfig, RecoverMode, S3FifoConfig, StorageFilter,
};
pub use key::{CacheKey, ObjectId};
pub use pinned::Covers;
use pinned::PinnedStore;
use pins::PinTable;
pub use value::CacheValue;

pub use crate::s3::{ObjectMeta, PartMeta};

use crate::config::CacheConfig;
use crate::s3::Crc;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot open the cache in {dir}")]
    Open {
        dir: String,
        #[source]
        source: foyer::Error,
    },
}

/// A fill that failed: its own error, shared by every reader of the chunk.
#[derive(Debug, Clone, thiserror::Error)]
#[error("chunk fill failed")]
pub struct ChunkError(#[source] Arc<dyn std::error::Error + Send + Sync>);

impl ChunkError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// The fill's own error, when the fill returned an `E`.
    pub fn fill_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.0.downcast_ref::<E>()
    }
}

/// How the disk tier is laid out, derived from the chunk size (see notes/foyer.md:
/// an entry larger than a block, or than a flusher's buffer, never reaches disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLayout {
    pub block_size: usize,
    pub flushers: usize,
    pub buffer_pool_size: usize,
    pub submit_queue_threshold: usize,
}

impl DiskLayout {
    /// The layout for chunks of `chunk_size` on a disk tier of `disk` bytes: blocks of
    /// four chunks (at least 16 MiB), and at least four blocks in the tier (foyer's
    /// flusher waits for a reclaimed block: with one block, it waits forever).
    pub fn for_chunk_size(chunk_size: u64, disk: u64) -> Self {
        let chunk = chunk_size as usize;
        let flushers = 2;
        // Four chunks per flusher buffer, so a burst of inserts fits (foyer #1334).
        let buffer_pool_size = flushers * 4 * (chunk + (64 << 10));
        let floor = (chunk + (64 << 10)).next_multiple_of(4096) + 4096;
        let quarter = ((disk / 4) as usize) & !4095;
        Self {
            block_size: (4 * chunk).max(16 << 20).min(quarter.max(floor)).next_multiple_of(4096),
            flushers,
            buffer_pool_size,
            submit_queue_threshold: 4 * buffer_pool_size,
        }
    }

    /// Memory the disk tier needs besides the memory tier: flush buffers are doubled.
    pub fn memory_overhead(&self) -> u64 {
        2 * self.buffer_pool_size as u64
    }
}

/// Where a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSource {
    Memory,
    Disk,
    /// This lookup's fill fetched it from the origin.
    Filled,
    /// Another lookup's fill fetched it; this one waited.
    Coalesced,
}

impl ChunkSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Filled => "fill",
            Self::Coalesced => "coalesced",
        }
    }

    /// Where the bytes sent to a client came from: memory, disk or origin.
    pub fn tier(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::Filled | Self::Coalesced => "origin",
        }
    }
}

/// Copies of chunks other nodes of the region own, in memory only and bounded apart
/// from the tiers, so that a hot chunk's readers stay local without crowding out
/// what this node owns.
type Copies = Cache<CacheKey, Bytes>;

pub struct ChunkCache {
    inner: HybridCache<CacheKey, CacheValue>,
    /// `None` without peers (or with `cache.peer_copies = 0`: such chunks are read
    /// and not kept).
    copies: Option<Copies>,
    /// Chunks on their way in (filled, or in a cold probe's body): a lookup of one
    /// of them streams it rather than fetching it a second time.
    filling: Table,
    /// Versions dropped while chunks of them were arriving.
    drops: Arc<Drops>,
    chunk_size: u64,
    /// The disk tier's size as opened (0: none), after clamping to its filesystem.
    disk_capacity: u64,
    disk: Arc<DiskHealth>,
    watch: Option<tokio::task::JoinHandle<()>>,
    /// The pins this node holds, and the store that keeps their chunks (`None` with
    /// `cache.pinned = 0` or a cache directory that cannot be written).
    pins: Arc<PinTable>,
    pinned: Option<Arc<PinnedStore>>,
    sweeper: tokio::task::JoinHandle<()>,
    /// How often each chunk was looked up lately, for the disk tier's admission.
    sketch: Arc<Sketch>,
    admission: Admission,
    /// Bytes the disk tier admitted since start, against its size.
    admitted: Arc<std::sync::atomic::AtomicU64>,
}

impl ChunkCache {
    /// Opens (and, with a disk tier, recovers) the cache.
    pub async fn open(config: &CacheConfig) -> Result<Self, CacheError> {
        let dir = config.dir.display().to_string();
        // Big chunks in many shards evict early: each shard gets memory / shards.
        let memory = config.memory - config.peer_copies;
        let shards = (memory / (config.chunk_size * 32)).clamp(1, 8) as usize;
        let copies = (config.peer_copies >= config.chunk_size).then(|| {
            CacheBuilder::new(config.peer_copies as usize)
                .with_name("s3-accel-peer-copies")
                .with_shards((config.peer_copies / (config.chunk_size * 32)).clamp(1, 4) as usize)
                .with_eviction_config(S3FifoConfig::default())
                .with_weighter(|key: &CacheKey, value: &Bytes| key.len() + value.len())
                .build()
        });
        let builder = HybridCacheBuilder::new()
            .with_name("s3-accel")
            .with_metrics_registry(Box::new(crate::telemetry::FoyerMetrics))
            .with_policy(HybridCachePolicy::WriteOnInsertion)
            .memory(memory as usize)
            .with_shards(shards)
            .with_eviction_config(S3FifoConfig::default())
            .with_weighter(|key: &CacheKey, value: &CacheValue| key.len() + value.weight())
            .storage();
        let health = Arc::new(DiskHealth::default());
        let layout = DiskLayout::for_chunk_size(config.chunk_size, config.disk);
        let sketch = Arc::new(Sketch::new((config.memory + config.disk) / config.chunk_size));
        let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // A cache directory that cannot be written is a disk tier out of service, not
        // a process that cannot start (a pod would crash-loop instead of serving).
        let writable = config.disk != 0
            && std::fs::create_dir_all(&config.dir)
                .and_then(|()| disk::probe_write(&config.dir))
                .map_err(|e| health.fail(format!("cache.dir {dir} cannot be written: {e}")))
                .is_ok();
        let capacity = match writable {
            true => disk::fitting(&config.dir, config.disk, layout.block_size as u64, config.pinned),
            false => 0,
        };
        if writable && capacity < 16 * config.chunk_size {
            health.fail(format!("the filesystem of cache.dir {dir} has no room for a disk tier"));
        }
        let disk_capacity = if health.is_out() { 0 } else { capacity };
        let builder = if disk_capacity == 0 {
            builder
        } else {
            let direct = config.direct_io.unwrap_or_else(|| takes_direct_io(&config.dir));
            tracing::info!(dir, direct_io = direct, "disk tier");
            let device = FsDeviceBuilder::new(&config.dir)
                .with_capacity(disk_capacity as usize)
                .with_direct(direct)
                .build()
                .map_err(|source| CacheError::Open {
                    dir: dir.clone(),
                    source,
                })?;
            builder
                .with_io_engine_config(PsyncIoEngineConfig::new())
                .with_engine_config(
                    BlockEngineConfig::new(device)
                        .with_block_size(layout.block_size)
                        .with_flushers(layout.flushers)
                        .with_buffer_pool_size(layout.buffer_pool_size)
                        .with_submit_queue_size_threshold(layout.submit_queue_threshold)
                        .with_admission_filter(StorageFilter::new().with_condition(admission::Admit {
                            admitted: admitted.clone(),
                            ..admission::Admit::new(health.clone(), sketch.clone(), config.admission, disk_capacity)
                        }))
                        .with_reinsertion_filter(StorageFilter::new().with_condition(admission::Keep {
                            health: health.clone(),
                            sketch: sketch.clone(),
                            rule: config.admission,
                        })),
                )
                .with_recover_mode(RecoverMode::Quiet)
        };
        let inner = builder
            .build()
            .await
            .map_err(|source| CacheError::Open { dir, source })?;
        // The pinned store grows on the same filesystem: counted in what it must hold.
        let watch =
            (disk_capacity > 0).then(|| disk::watch(config.dir.clone(), disk_capacity + config.pinned, health.clone()));
        let pins = Arc::new(PinTable::load(config.dir.join("pins.json")));
        let pinned = match config.pinned {
            0 => None,
            capacity => match std::fs::create_dir_all(&config.dir)
                .and_then(|()| PinnedStore::open(config.dir.join("pinned"), capacity, pins.as_ref()))
            {
                Ok(store) => Some(store),
                Err(error) => {
                    tracing::error!(%error, "the pinned store cannot be opened: pins are refused");
                    None
                }
            },
        };
        let sweeper = tokio::spawn(sweep(pins.clone(), pinned.clone()));
        metrics::gauge!(crate::telemetry::DISK_DEGRADED).set(if health.is_out() { 1.0 } else { 0.0 });
        Ok(Self {
            inner,
            copies,
            filling: Table::default(),
            drops: Arc::default(),
            chunk_size: config.chunk_size,
            disk_capacity,
            disk: health,
            watch,
            pins,
            pinned,
            sweeper,
            sketch,
            admission: config.admission,
            admitted,
        })
    }

    /// The pins this node holds.
    pub fn pins(&self) -> &Arc<PinTable> {
        &self.pins
    }

    /// The pinned store's capacity and what it holds now (0, 0 without one).
    pub fn pinned_room(&self) -> (u64, u64) {
        self.pinned.as_ref().map_or((0, 0), |s| (s.capacity(), s.used()))
    }

    /// Bytes pinned here of the objects `pin` covers.
    pub fn pinned_bytes_of(&self, pin: &pins::Pin) -> u64 {
        self.pinned
            .as_ref()
            .map_or(0, |s| s.bytes_of(&pin.bucket, |key| pin.covers(&pin.bucket, key)))
    }

    /// Frees the chunks no live pin covers any more (after a pin was deleted).
    pub fn release_unpinned(&self) -> u64 {
        self.pinned
            .as_ref()
            .map_or(0, |store| store.release_uncovered(self.pins.as_ref()))
    }

    /// Whether the disk tier is in service.
    pub fn disk_health(&self) -> &DiskHealth {
        &self.disk
    }

    pub fn disk_capacity(&self) -> u64 {
        self.disk_capacity
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// A small entry, if cached.
    async fn entry(&self, key: &CacheKey) -> Option<CacheValue> {
        self.entry_with_source(key).await.map(|(value, _)| value)
    }

    /// An entry and the tier it came from, if a tier holds it. A read error is a
    /// miss: the origin is there.
    async fn entry_with_source(&self, key: &CacheKey) -> Option<(CacheValue, ChunkSource)> {
        let entry = match self.inner.get(key).await {
            Ok(entry) => entry?,
            Err(error) => {
                // Unreadable (a chunk that no longer matches its CRC, a torn entry):
                // forgotten, so that the next fill stores it afresh.
                tracing::warn!(error = %error, "cache read failed; treating as a miss");
                self.inner.remove(key);
                return None;
            }
        };
        let source = match entry.source() {
            foyer::Source::Memory => ChunkSource::Memory,
            foyer::Source::Disk => ChunkSource::Disk,
            foyer::Source::Outer => ChunkSource::Coalesced,
        };
        Some((entry.value().clone(), source))
    }

    /// The object's metadata, if cached.
    pub async fn meta(&self, object: &ObjectId) -> Option<ObjectMeta> {
        match self.entry(&CacheKey::meta(object)).await? {
            CacheValue::Meta(meta) => Some(meta),
            CacheValue::Chunk(..) | CacheValue::Part(_) => None,
        }
    }

    pub fn insert_meta(&self, object: &ObjectId, meta: ObjectMeta) {
        self.inner.insert(CacheKey::meta(object), CacheValue::Meta(meta));
    }

    /// The bounds of part `number` of `object`, if cached (of whichever version
    /// they were learned for: compare the ETag).
    pub async fn part(&self, object: &ObjectId, number: u16) -> Option<PartMeta> {
        match self.entry(&CacheKey::part(object, number)).await? {
            CacheValue::Part(part) => Some(part),
            CacheValue::Chunk(..) | CacheValue::Meta(_) => None,
        }
    }

    pub fn insert_part(&self, object: &ObjectId, number: u16, part: PartMeta) {
        self.inner
            .insert(CacheKey::part(object, number), CacheValue::Part(part));
    }

    pub fn remove_meta(&self, object: &ObjectId) {
        self.inner.remove(&CacheKey::meta(object));
    }

    /// Drops version `etag` (`size` bytes) of `object`: every chunk of it, from the
    /// tiers and the copies, and the object's metadata (the next read asks the
    /// origin afresh), as [`forget`] does; a chunk of it still arriving is not
    /// stored when it ends.
    pub fn drop_version(&self, object: &ObjectId, etag: &str, size: u64) {
        let keys: Vec<CacheKey> = (0..size.div_ceil(self.chunk_size))
            .map(|index| CacheKey::chunk(object, etag, self.chunk_size, index))
            .chain([CacheKey::meta(object)])
            .collect();
        // Recorded first: a chunk of it still arriving is not stored after this.
        let prefix = keys[0].version_prefix();
        self.drops.record(prefix.clone());
        // Nor does a lookup after this one wait on such a chunk (its fill fails).
        self.filling
            .lock()
            .expect("filling chunks")
            .retain(|key, _| key.version_prefix() != prefix);
        if let Some(pinned) = &self.pinned {
            pinned.remove(&keys);
        }
        forget((&self.inner, self.copies.as_ref()), &self.drops, prefix, keys);
    }

    /// The epoch [`dropped_since`](Self::dropped_since) compares with.
    pub fn drop_epoch(&self) -> u64 {
        self.drops.now()
    }

    /// Whether version `etag` of `object` was dropped after `epoch`.
    pub fn dropped_since(&self, object: &ObjectId, etag: &str, epoch: u64) -> bool {
        let key = CacheKey::chunk(object, etag, self.chunk_size, 0);
        self.drops.since(&key.version_prefix(), epoch)
    }

    /// Whether version `etag` of `object` was dropped less than `lately` ago.
    pub fn dropped_within(&self, object: &ObjectId, etag: &str, lately: std::time::Duration) -> bool {
        let key = CacheKey::chunk(object, etag, self.chunk_size, 0);
        self.drops.within(&key.version_prefix(), lately)
    }

    /// Claims chunk `key`, arriving by another way than a fill (a cold probe's
    /// body): lookups of it stream what the writer pushes. `None` if it is already
    /// cached or arriving, or its version is being dropped.
    pub fn claim(&self, key: &CacheKey) -> Option<ChunkWriter> {
        // A lookup too: a cold read's first chunk arrives this way.
        self.sketch.touch(key.stable_hash());
        self.claim_to(key, false)
    }

    /// Claims chunk `key`, to be kept in memory only when `memory_only`.
    fn claim_to(&self, key: &CacheKey, memory_only: bool) -> Option<ChunkWriter> {
        let mut filling = self.filling.lock().expect("filling chunks");
        if self.drops.settling(&key.version_prefix())
            || filling.contains_key(key)
            || self.inner.contains(key)
            || self.pinned.as_ref().is_some_and(|p| p.contains(key))
            || self.copies.as_ref().is_some_and(|c| c.contains(key))
        {
            return None;
        }
        let entry = Filling::new();
        filling.insert(key.clone(), entry.clone());
        Some(ChunkWriter::new(entry, Some(self.destination(key, memory_only))))
    }

    fn destination(&self, key: &CacheKey, memory_only: bool) -> Destination {
        Destination {
            key: key.clone(),
            table: self.filling.clone(),
            drops: self.drops.clone(),
            claimed: self.drops.now(),
            store: match memory_only {
                false => match self.pinning(key) {
                    Some((store, bucket, name)) => Store::Pinned {
                        store,
                        bucket,
                        name,
                        tiers: self.inner.clone(),
                    },
                    None => Store::Tiers(self.inner.clone()),
                },
                true => match &self.copies {
                    Some(copies) => Store::Copies(copies.clone()),
                    None => Store::Nowhere,
                },
            },
        }
    }

    /// Where chunk `key` is kept when a live pin covers its object.
    fn pinning(&self, key: &CacheKey) -> Option<(Arc<PinnedStore>, String, String)> {
        let store = self.pinned.as_ref()?;
        let (bucket, name) = key.names()?;
        self.pins.covers(&bucket, &name).then(|| (store.clone(), bucket, name))
    }

    /// The chunk under `key` if a tier holds it; never a fill (a hit's first chunk is
    /// read this way while the origin is still deciding whether the client may have it).
    pub async fn peek(&self, key: &CacheKey) -> Option<ChunkRead> {
        let count = self.sketch.touch(key.stable_hash());
        self.stored(key, count).await.map(counted)
    }

    /// The chunk under `key` if stored; `count` is how often it was looked up lately,
    /// this lookup included.
    async fn stored(&self, key: &CacheKey, count: u8) -> Option<ChunkRead> {
        let prefix = key.version_prefix();
        let begun = self.drops.read_from(&prefix)?;
        if let Some(copy) = self.copies.as_ref().and_then(|copies| copies.get(key)) {
            return Some(ChunkRead::whole(copy.value().clone(), ChunkSource::Memory));
        }
        let entry = match self.entry_with_source(key).await {
            Some(entry) => entry,
            None => {
                let bytes = self.pinned.as_ref()?.get(key).await?;
                if self.drops.since(&prefix, begun) {
                    return None;
                }
                return Some(ChunkRead::whole(bytes, ChunkSource::Disk));
            }
        };
        // A disk read under way when its version was dropped ends after the drop, and
        // foyer puts what it read back in memory: removed again, not served.
        if self.drops.since(&prefix, begun) {
            self.inner.remove(key);
            return None;
        }
        match entry {
            (CacheValue::Chunk(bytes, crc), source) => {
                // Cached before its object was pinned: pinned now, out of eviction's way.
                if let Some((store, bucket, name)) = self.pinning(key) {
                    if store.put(key.clone(), bucket, name, bytes.clone()) {
                        self.inner.remove(key);
                        // Dropped meanwhile (its object found wrong): not kept.
                        if self.drops.since(&prefix, begun) {
                            store.remove(std::slice::from_ref(key));
                            return None;
                        }
                    }
                } else if self.admission == Admission::SecondHit
                    && source == ChunkSource::Memory
                    && count == 2
                    && admission::Admit::full(&self.admitted, self.disk_capacity)
                {
                    // (Before the tier was full, its first fill was written already:
                    // writing it again would only compete with other writes.)
                    // Asked for a second time: now it goes to disk too.
                    self.inner.insert(key.clone(), CacheValue::Chunk(bytes.clone(), crc));
                }
                Some(ChunkRead::whole(bytes, source))
            }
            (CacheValue::Meta(_) | CacheValue::Part(_), _) => None,
        }
    }

    /// The chunk under `key`: from memory, from disk, streamed from the fill that
    /// brings it in, or from a new `fill` run in a task of its own (a client that goes
    /// away does not cancel it). `fill` pushes the bytes to the sink as they arrive
    /// and returns the whole chunk, checked; a failed fill is not cached, and its
    /// readers' streams fail. A chunk filled here is kept in memory only when
    /// `memory_only` (a copy of a chunk another node owns).
    pub async fn chunk<F, Fut, E>(&self, key: CacheKey, memory_only: bool, fill: F) -> ChunkRead
    where
        F: FnOnce(ChunkSink) -> Fut,
        Fut: std::future::Future<Output = Result<(Bytes, Crc), E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        // A version being dropped is neither read from the tiers nor kept until its
        // removal settles: its chunks are read once, from upstream.
        let count = self.sketch.touch(key.stable_hash());
        let writer = match self.drops.settling(&key.version_prefix()) {
            true => ChunkWriter::new(Filling::new(), None),
            false => {
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    if let Some(arriving) = self.arriving(&key) {
                        return counted(ChunkRead::streaming(arriving.reader(), ChunkSource::Coalesced));
                    }
                    if let Some(found) = self.stored(&key, count).await {
                        return counted(found);
                    }
                    // Claimed under the table's lock, so that one lookup fills; one that
                    // finds the chunk stored since its miss reads it from the tiers. An
                    // index that says "stored" twice for a chunk that cannot be read is
                    // not believed.
                    match self.claim_to(&key, memory_only) {
                        Some(writer) => break writer,
                        None if attempts < 3 => continue,
                        None => break ChunkWriter::new(Filling::new(), Some(self.destination(&key, memory_only))),
                    }
                }
            }
        };
        let read = ChunkRead::streaming(writer.reader(), ChunkSource::Filled);
        let fetch = fill(writer.sink().clone());
        tokio::spawn(async move {
            match fetch.await {
                Ok((whole, crc)) => writer.finish(whole, crc),
                Err(error) => writer.fail(Arc::new(error)),
            }
        });
        counted(read)
    }

    fn arriving(&self, key: &CacheKey) -> Option<Arc<Filling>> {
        self.filling.lock().expect("filling chunks").get(key).cloned()
    }

    /// Publishes tier usage and capacity gauges (called when metrics are scraped).
    pub fn publish_gauges(&self) {
        let memory = self.inner.memory();
        metrics::gauge!(crate::telemetry::CACHE_USAGE, "tier" => "memory").set(memory.usage() as f64);
        metrics::gauge!(crate::telemetry::CACHE_CAPACITY, "tier" => "memory").set(memory.capacity() as f64);
        metrics::gauge!(crate::telemetry::CACHE_CAPACITY, "tier" => "disk").set(self.disk_capacity as f64);
        if let Some(copies) = &self.copies {
            metrics::gauge!(crate::telemetry::CACHE_USAGE, "tier" => "peer_copies").set(copies.usage() as f64);
            metrics::gauge!(crate::telemetry::CACHE_CAPACITY, "tier" => "peer_copies").set(copies.capacity() as f64);
        }
    }

    /// Flushes pending disk writes and closes the disk tier. A disk tier that failed
    /// may panic as it closes (foyer 0.22 poisons its block manager on a write
    /// error): that panic is contained here, so that shutdown still ends cleanly.
    pub async fn close(&self) {
        if let Some(watch) = &self.watch {
            watch.abort();
        }
        self.sweeper.abort();
        let inner = self.inner.clone();
        match tokio::spawn(async move { inner.close().await }).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(error = %error, "closing the cache"),
            Err(panicked) => tracing::error!(error = %panicked, "the disk tier failed as it closed"),
        }
    }
}

/// Releases the chunks of pins as their leases end (checked every second).
async fn sweep(pins: Arc<PinTable>, pinned: Option<Arc<PinnedStore>>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut since = pins::unix_now();
    loop {
        ticks.tick().await;
        let now = pins::unix_now();
        let live = pins.live();
        metrics::gauge!(crate::telemetry::PINS).set(live.len() as f64);
        // At once when a lease ends, and every ten seconds whatever the reason (a pin
        // narrowed, a fill that ended after a release).
        let expired = pins.expire(since, now);
        if let Some(store) = pinned.as_ref().filter(|_| expired || now.is_multiple_of(10)) {
            let freed = store.release_uncovered(pins.as_ref());
            if freed > 0 {
                tracing::info!(freed, "pinned chunks no pin covers any more released");
            }
        }
        since = now;
    }
}

/// A chunk lookup's answer, counted by where it came from.
fn counted(read: ChunkRead) -> ChunkRead {
    metrics::counter!(crate::telemetry::CHUNK_LOOKUPS, "source" => read.source.as_str()).increment(1);
    read
}

/// Whether the filesystem under `dir` takes O_DIRECT: one aligned page written
/// to a scratch file. Direct I/O keeps the page cache out of the disk tier's way
/// (buffered writes there halved cold fills in the bench); some filesystems
/// (overlayfs, older tmpfs) refuse it.
pub fn takes_direct_io(dir: &std::path::Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const PAGE: usize = 4096;
    let path = dir.join(".s3-accel-direct-io-probe");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let written = opened.and_then(|mut file| {
        let layout = std::alloc::Layout::from_size_align(PAGE, PAGE).expect("a valid layout");
        // SAFETY: the layout has a non-zero size; the page is freed below.
        let page = unsafe { std::alloc::alloc_zeroed(layout) };
        if page.is_null() {
            return Err(std::io::Error::from(std::io::ErrorKind::OutOfMemory));
        }
        // SAFETY: `page` points to PAGE initialized (zeroed) bytes.
        let result = file.write_all(unsafe { std::slice::from_raw_parts(page, PAGE) });
        // SAFETY: allocated above with the same layout.
        unsafe { std::alloc::dealloc(page, layout) };
        result
    });
    let _ = std::fs::remove_file(&path);
    written.is_ok()
}

/// Removes `keys`, entries of version `prefix`, from the tiers and the copies at
/// once, so that no lookup after this call finds them in memory; then again once the
/// disk writes under way have landed. Until then foyer can still hand out an entry
/// that was on its way to disk: the version is settling, and lookups skip it.
fn forget(
    (tiers, copies): (&HybridCache<CacheKey, CacheValue>, Option<&Copies>),
    drops: &Arc<Drops>,
    prefix: Bytes,
    keys: Vec<CacheKey>,
) {
    /// How long a removal waits for the disk writes under way (a failing disk may
    /// never finish them).
    const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
    drops.unsettle(&prefix);
    remove_now(tiers, copies, &keys);
    // Settled however the task ends: a disk tier that failed may panic in `wait`.
    let settled = Settled(drops.clone(), prefix);
    let (tiers, copies) = (tiers.clone(), copies.cloned());
    tokio::spawn(async move {
        let _ = tokio::time::timeout(SETTLE_LIMIT, tiers.storage().wait()).await;
        remove_now(&tiers, copies.as_ref(), &keys);
        drop(settled);
    });
}

/// A removal of a version's entries, settled when dropped.
struct Settled(Arc<Drops>, Bytes);

impl Drop for Settled {
    fn drop(&mut self) {
        self.0.settle(&self.1);
    }
}

fn remove_now(tiers: &HybridCache<CacheKey, CacheValue>, copies: Option<&Copies>, keys: &[CacheKey]) {
    for key in keys {
        tiers.remove(key);
        if let Some(copies) = copies {
            copies.remove(key);
        }
    }
}

/// A small cache for unit tests: 16 MiB of memory, 64 MiB of disk under `dir`,
/// chunks of 1 MiB.
#[cfg(test)]
pub(crate) fn test_config(dir: &std::path::Path) -> CacheConfig {
    CacheConfig {
        dir: dir.to_owned(),
        memory: 16 << 20,
        disk: 64 << 20,
        chunk_size: 1 << 20,
        direct_io: Some(false),
        read_ahead: 2,
        fill_memory: 8 << 20,
        read_ahead_memory: 8 << 20,
        read_ahead_per_connection: 8 << 20,
        read_ahead_wait: std::time::Duration::from_secs(1),
        peer_copies: 0,
        metadata_max_age: std::time::Duration::ZERO,
        pinned: 0,
        admission: Admission::default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn direct_io_is_probed_where_the_cache_lives() {
        let dir = tempfile::tempdir().unwrap();
        // Whatever the answer, the probe leaves nothing behind.
        let _ = takes_direct_io(dir.path());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // A directory that does not exist cannot take it.
        assert!(!takes_direct_io(&dir.path().join("missing")));
    }

    use super::*;

    #[test]
    fn disk_layout_fits_chunks_in_blocks_and_buffers() {
        for chunk in [1u64 << 20, 8 << 20, 64 << 20, 256 << 20] {
            let layout = DiskLayout::for_chunk_size(chunk, 16 * chunk);
            assert!(
                layout.block_size as u64 * 4 <= 16 * chunk,
                "the smallest tier has four blocks: {layout:?}"
            );
            let entry = chunk as usize + 4096;
            assert!(entry <= layout.block_size - 4096, "{chunk}: {layout:?}");
            assert!(
                entry * 3 <= layout.buffer_pool_size / layout.flushers,
                "{chunk}: {layout:?}"
            );
            assert_eq!(layout.block_size % 4096, 0);
        }
    }

    fn object() -> ObjectId {
        ObjectId {
            origin: "http://origin:9000".into(),
            bucket: "bucket".into(),
            key: "model.bin".into(),
            version_id: None,
        }
    }

    async fn open(dir: &std::path::Path) -> Arc<ChunkCache> {
        Arc::new(ChunkCache::open(&test_config(dir)).await.unwrap())
    }

    /// Fills chunk `key` with `bytes` and waits until it is stored.
    async fn fill(cache: &ChunkCache, key: &CacheKey, bytes: Bytes) {
        let crc = Crc::of(Crc::DEFAULT, &bytes);
        let mut read = cache
            .chunk(key.clone(), false, move |sink| async move {
                sink.push(bytes.clone());
                Ok::<_, std::io::Error>((bytes, crc))
            })
            .await;
        while let Some(next) = read.next().await {
            next.unwrap();
        }
    }

    async fn settled(cache: &ChunkCache, key: &CacheKey) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.drops.settling(&key.version_prefix()) {
            assert!(std::time::Instant::now() < deadline, "a drop never settles");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_dropped_version_is_not_found_again_nor_kept_by_a_fill_begun_before_the_drop() {
        let dir = tempfile::tempdir().unwrap();
        let cache = open(dir.path()).await;
        let object = object();
        let first = CacheKey::chunk(&object, "\"v1\"", 1 << 20, 0);
        let second = CacheKey::chunk(&object, "\"v1\"", 1 << 20, 1);
        let bytes = Bytes::from(vec![7u8; 1 << 20]);
        fill(&cache, &first, bytes.clone()).await;
        assert!(cache.peek(&first).await.is_some(), "stored (and on its way to disk)");
        let arriving = cache.claim(&second).expect("not cached yet");

        cache.drop_version(&object, "\"v1\"", 2 << 20);
        // At once, though foyer may still hold the entry on its way to disk.
        assert!(cache.peek(&first).await.is_none(), "found right after its drop");
        assert!(cache.claim(&first).is_none(), "kept while its drop settles");
        settled(&cache, &first).await;
        assert!(cache.peek(&first).await.is_none(), "back after its drop settled");
        arriving.finish(bytes.clone(), Crc::of(Crc::DEFAULT, &bytes));
        settled(&cache, &second).await;
        assert!(
            cache.peek(&second).await.is_none(),
            "kept by a fill claimed before the drop"
        );

        // A lookup after the drop does not wait on a fill claimed before it (that fill
        // fails: its version was found wrong), and neither does a later one.
        let third = CacheKey::chunk(&object, "\"v1\"", 1 << 20, 2);
        let before = cache.claim(&third).expect("not cached yet");
        cache.drop_version(&object, "\"v1\"", 3 << 20);
        settled(&cache, &third).await;
        let after = cache
            .chunk(third.clone(), false, |_| {
                std::future::pending::<Result<(Bytes, Crc), std::io::Error>>()
            })
            .await;
        assert_eq!(
            after.source,
            ChunkSource::Filled,
            "waited on a fill begun before the drop"
        );
        drop(before);

        // A fill begun after the drop keeps its chunk.
        fill(&cache, &first, bytes.clone()).await;
        assert!(cache.peek(&first).await.is_some(), "a fill after the drop is not kept");
        assert!(!cache.dropped_since(&object, "\"v1\"", cache.drop_epoch()));
    }
}
