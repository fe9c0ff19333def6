//! Chunks on their way in: every reader streams a chunk's bytes as they arrive,
//! beside foyer (which hands out only whole values). An entry lives only while its
//! chunk arrives; the whole chunk goes to foyer, the only store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use foyer::{Cache, HybridCache};
use tokio::sync::watch;

use super::drops::Drops;
use super::{CacheKey, CacheValue, ChunkError, ChunkSource};
use crate::s3::Crc;

/// The chunks being filled, by key.
pub(super) type Table = Arc<Mutex<HashMap<CacheKey, Arc<Filling>>>>;

/// One chunk arriving: the frames received so far, then the whole chunk (or why it
/// never will be).
pub(super) struct Filling {
    state: Mutex<Arrived>,
    /// Bumped whenever `state` changes; readers wait on it.
    arrived: watch::Sender<()>,
}

struct Arrived {
    frames: Vec<Bytes>,
    end: End,
}

enum End {
    Open,
    Whole(Bytes),
    /// Arrived in full, for a read that keeps nothing (the frames are the bytes).
    Done,
    Cut(Arc<dyn std::error::Error + Send + Sync>),
}

impl Filling {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Arrived {
                frames: Vec::new(),
                end: End::Open,
            }),
            arrived: watch::Sender::new(()),
        })
    }

    fn update(&self, change: impl FnOnce(&mut Arrived)) {
        change(&mut self.state.lock().expect("a filling chunk"));
        self.arrived.send_replace(());
    }

    fn end(&self, end: End) {
        self.update(|state| {
            if matches!(state.end, End::Open) {
                if matches!(end, End::Whole(_)) {
                    state.frames = Vec::new();
                }
                state.end = end;
            }
        });
    }

    pub(super) fn reader(self: &Arc<Self>) -> FillReader {
        FillReader {
            arrived: self.arrived.subscribe(),
            filling: self.clone(),
            frame: 0,
            offset: 0,
        }
    }
}

/// Pushes a chunk's bytes as they arrive, to every reader of it.
#[derive(Clone)]
pub struct ChunkSink(Arc<Filling>);

impl ChunkSink {
    pub fn push(&self, bytes: Bytes) {
        if !bytes.is_empty() {
            self.0.update(|state| state.frames.push(bytes));
        }
    }

    /// The bytes pushed so far, in one piece (the chunk to store).
    pub fn assemble(&self) -> Bytes {
        // Copied outside the lock: readers take frames meanwhile.
        let frames = self.0.state.lock().expect("a filling chunk").frames.clone();
        let mut whole = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
        for frame in &frames {
            whole.extend_from_slice(frame);
        }
        whole.freeze()
    }
}

/// Where a [`ChunkWriter`]'s chunk goes once whole.
pub(super) struct Destination {
    pub key: CacheKey,
    pub table: Table,
    pub store: Store,
    pub drops: Arc<Drops>,
    /// The drop epoch when the chunk was claimed.
    pub claimed: u64,
}

impl Destination {
    /// Whether the chunk's version was dropped since the chunk was claimed.
    fn dropped(&self) -> bool {
        self.drops.since(&self.key.version_prefix(), self.claimed)
    }
}

/// Where a whole chunk is kept.
pub(super) enum Store {
    /// The memory and disk tiers: a chunk this node owns.
    Tiers(HybridCache<CacheKey, CacheValue>),
    /// The pinned store, out of the tiers' eviction: a chunk of a pinned object this
    /// node owns (in the tiers if the store is full).
    Pinned {
        store: Arc<super::PinnedStore>,
        bucket: String,
        name: String,
        tiers: HybridCache<CacheKey, CacheValue>,
    },
    /// Memory only, never this node's disk: a copy of a chunk another node of the
    /// region owns.
    Copies(Cache<CacheKey, Bytes>),
    /// Read and not kept (no room set aside for copies).
    Nowhere,
}

/// The one writer of an arriving chunk: [`finish`](Self::finish) stores it and ends
/// its readers' streams; dropped unfinished, it cuts them (they never see a clean
/// short end), and the next lookup fills the chunk again.
pub struct ChunkWriter {
    sink: ChunkSink,
    /// `None` for bytes read once and kept nowhere.
    destination: Option<Destination>,
    ended: bool,
}

impl ChunkWriter {
    pub(super) fn new(filling: Arc<Filling>, destination: Option<Destination>) -> Self {
        Self {
            sink: ChunkSink(filling),
            destination,
            ended: false,
        }
    }

    /// Bytes read once for one client and kept nowhere, streamed like a chunk.
    pub fn unkept() -> (Self, ChunkRead) {
        let writer = Self::new(Filling::new(), None);
        let read = writer.read();
        (writer, read)
    }

    pub fn sink(&self) -> &ChunkSink {
        &self.sink
    }

    pub(super) fn reader(&self) -> FillReader {
        self.sink.0.reader()
    }

    /// A read of the chunk as it arrives, for the client whose request brings it.
    pub fn read(&self) -> ChunkRead {
        ChunkRead::streaming(self.reader(), ChunkSource::Filled)
    }

    /// Whether the chunk is kept once whole.
    pub fn keeps(&self) -> bool {
        self.destination.is_some()
    }

    /// The chunk arrived whole and checked: stored with its CRC (read back from
    /// disk, it is checked against it), and its readers' streams end.
    pub fn finish(mut self, whole: Bytes, crc: Crc) {
        self.ended = true;
        match self.destination.take() {
            Some(destination) => {
                // Stored before it leaves the table: a lookup finds it in one or the
                // other. Not stored if its version was dropped meanwhile, and removed
                // again if the drop came between the check and the store.
                if !destination.dropped() {
                    match &destination.store {
                        Store::Tiers(tiers) => {
                            tiers.insert(destination.key.clone(), CacheValue::Chunk(whole.clone(), Some(crc)));
                            if destination.dropped() {
                                super::forget(
                                    (tiers, None),
                                    &destination.drops,
                                    destination.key.version_prefix(),
                                    vec![destination.key.clone()],
                                );
                            }
                        }
                        Store::Copies(copies) => {
                            copies.insert(destination.key.clone(), whole.clone());
                            if destination.dropped() {
                                copies.remove(&destination.key);
                            }
                        }
                        Store::Pinned {
                            store,
                            bucket,
                            name,
                            tiers,
                        } => {
                            let kept = store.put(destination.key.clone(), bucket.clone(), name.clone(), whole.clone());
                            if !kept {
                                tiers.insert(destination.key.clone(), CacheValue::Chunk(whole.clone(), Some(crc)));
                            }
                            if destination.dropped() {
                                store.remove(std::slice::from_ref(&destination.key));
                                tiers.remove(&destination.key);
                            }
                        }
                        Store::Nowhere => {}
                    }
                }
                release(&destination, &self.sink.0);
                self.sink.0.end(End::Whole(whole));
            }
            None => self.sink.0.end(End::Done),
        }
    }

    /// The bytes pushed so far are all there is (a chunk kept nowhere).
    pub fn done(mut self) {
        self.ended = true;
        if let Some(destination) = self.destination.take() {
            release(&destination, &self.sink.0);
        }
        self.sink.0.end(End::Done);
    }

    /// The chunk will not arrive: its readers' streams fail with `error`.
    pub fn fail(mut self, error: Arc<dyn std::error::Error + Send + Sync>) {
        self.ended = true;
        // Out of the table first: a reader that retries fills afresh.
        if let Some(destination) = self.destination.take() {
            release(&destination, &self.sink.0);
        }
        self.sink.0.end(End::Cut(error));
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(destination) = self.destination.take() {
                release(&destination, &self.sink.0);
            }
            self.sink.0.end(End::Cut(Arc::new(Dangling)));
        }
    }
}

fn release(destination: &Destination, filling: &Arc<Filling>) {
    let mut table = destination.table.lock().expect("filling chunks");
    if table
        .get(&destination.key)
        .is_some_and(|entry| Arc::ptr_eq(entry, filling))
    {
        table.remove(&destination.key);
    }
}

/// The writer of a chunk went away before it was whole.
#[derive(Debug, thiserror::Error)]
#[error("the chunk's fill ended before the chunk was whole")]
pub struct Dangling;

/// One reader's place in an arriving chunk.
pub(super) struct FillReader {
    filling: Arc<Filling>,
    arrived: watch::Receiver<()>,
    frame: usize,
    /// Bytes of the chunk this reader has had.
    offset: usize,
}

impl FillReader {
    /// The next bytes and their offset in the chunk; `None` at the chunk's end.
    async fn next(&mut self) -> Option<Result<(u64, Bytes), ChunkError>> {
        loop {
            // Marked seen before the state is read: no change is missed in between.
            self.arrived.borrow_and_update();
            {
                let state = self.filling.state.lock().expect("a filling chunk");
                let at = self.offset as u64;
                if let End::Whole(whole) = &state.end {
                    if self.offset >= whole.len() {
                        return None;
                    }
                    self.offset = whole.len();
                    return Some(Ok((at, whole.slice(at as usize..))));
                }
                if let Some(frame) = state.frames.get(self.frame) {
                    self.frame += 1;
                    self.offset += frame.len();
                    return Some(Ok((at, frame.clone())));
                }
                match &state.end {
                    End::Cut(error) => return Some(Err(ChunkError(error.clone()))),
                    End::Done => return None,
                    End::Open | End::Whole(_) => {}
                }
            }
            // The sender lives in `filling`, which this reader holds: never closed.
            let _ = self.arrived.changed().await;
        }
    }
}

/// A chunk as a lookup found it: whole, or arriving.
pub struct ChunkRead {
    pub source: ChunkSource,
    bytes: Pieces,
    /// Offset in the chunk of the first byte this read yields.
    start: u64,
}

enum Pieces {
    Whole(Option<Bytes>),
    Arriving(FillReader),
}

impl ChunkRead {
    pub fn whole(bytes: Bytes, source: ChunkSource) -> Self {
        Self {
            source,
            bytes: Pieces::Whole(Some(bytes)),
            start: 0,
        }
    }

    pub(super) fn streaming(reader: FillReader, source: ChunkSource) -> Self {
        Self {
            source,
            bytes: Pieces::Arriving(reader),
            start: 0,
        }
    }

    /// The same read, whose first byte is byte `start` of its chunk (bytes of a
    /// chunk read from the middle).
    pub fn starting_at(mut self, start: u64) -> Self {
        self.start = start;
        self
    }

    /// The next bytes and their offset in the chunk, as they arrive; `None` at the
    /// end, an error if the chunk's fill failed (after the bytes it had delivered).
    pub async fn next(&mut self) -> Option<Result<(u64, Bytes), ChunkError>> {
        let start = self.start;
        let next = match &mut self.bytes {
            Pieces::Whole(bytes) => bytes.take().map(|bytes| Ok((0, bytes))),
            Pieces::Arriving(reader) => reader.next().await,
        };
        next.map(|next| next.map(|(at, bytes)| (start + at, bytes)))
    }

    /// Waits for the rest of the chunk, and whether it arrived whole.
    pub async fn finished(&mut self) -> Result<(), ChunkError> {
        while let Some(next) = self.next().await {
            next?;
        }
        Ok(())
    }
}
