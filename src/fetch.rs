//! Where the chunks the local tiers do not hold come from, behind one interface
//! ([`Upstream`]): the origin ([`fill`]), or, with peers, the region's owner first
//! (`peers::upstream`). The request path asks for chunks and never learns which.
//! A cold probe's own body can be a first chunk ([`lead`]). The memory chunks in
//! flight may take is bounded here too ([`budget`]), and what fills may take from
//! the origin, by priority ([`origin_budget`]).

pub mod budget;
pub mod check;
pub mod fill;
pub mod lead;
pub mod origin_budget;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::cache::{CacheKey, ChunkSink};
use crate::s3::Crc;
pub use check::Fills;
pub use fill::{fill_auth, Fill, FillAuth, FillError, PRIORITY_HEADER};
pub use origin_budget::{Priority, Urgent};

/// A source of an object version's chunks.
pub trait Upstream: Send + Sync {
    /// Fetches chunk `index` of the object version, pushing its bytes to `sink` as
    /// they arrive, and returns it whole with its CRC once it is checked. The cache runs the
    /// future in a task of its own, so a client that goes away does not cancel it.
    /// `urgent` says who waits for it (raised by readers that come to wait), for
    /// the origin budget's order.
    fn fetch(
        self: Arc<Self>,
        index: u64,
        sink: ChunkSink,
        urgent: Urgent,
    ) -> BoxFuture<'static, Result<(Bytes, Crc), FillError>>;

    /// Whether chunk `index` is checked whole against the object's checksum before
    /// it is kept (its readers' last bytes then wait for the check).
    fn checks(&self, index: u64) -> bool;

    /// Checks chunk `index`, whole, wherever its bytes came from (a fill, a peer, a
    /// cold probe's body): its CRC, to keep beside it.
    fn verify(&self, index: u64, chunk: &Bytes) -> Result<Crc, FillError>;

    /// Whether this node keeps chunk `key` on its disk too, or in memory only (a
    /// copy of a chunk another node owns: repeated reads stay local, the region's
    /// disks hold each chunk once).
    fn owns(&self, key: &CacheKey) -> bool;
}

impl Upstream for Fill {
    fn fetch(
        self: Arc<Self>,
        index: u64,
        sink: ChunkSink,
        urgent: Urgent,
    ) -> BoxFuture<'static, Result<(Bytes, Crc), FillError>> {
        Fill::fetch(&self, index, sink, 0, urgent).boxed()
    }

    fn checks(&self, index: u64) -> bool {
        Fill::checks(self, index)
    }

    fn verify(&self, index: u64, chunk: &Bytes) -> Result<Crc, FillError> {
        Fill::verify(self, index, chunk)
    }

    fn owns(&self, _key: &CacheKey) -> bool {
        true
    }
}
