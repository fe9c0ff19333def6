//! Where the chunks the local tiers do not hold come from, behind one interface: the
//! origin (a fill) today; a region's owner peer, then the origin, with peers. The
//! request path asks for chunks and never learns which.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::fill::{Fill, FillError};
use crate::cache::ChunkSink;

pub trait Upstream: Send + Sync {
    /// Fetches chunk `index` of the object version, pushing its bytes to `sink` as
    /// they arrive, and returns it whole once it is checked. The cache runs the
    /// future in a task of its own, so a client that goes away does not cancel it.
    fn fetch(self: Arc<Self>, index: u64, sink: ChunkSink) -> BoxFuture<'static, Result<Bytes, FillError>>;

    /// Whether chunk `index` is checked whole against the object's checksum before
    /// it is kept (its readers' last bytes then wait for the check).
    fn checks(&self, index: u64) -> bool;
}

impl Upstream for Fill {
    fn fetch(self: Arc<Self>, index: u64, sink: ChunkSink) -> BoxFuture<'static, Result<Bytes, FillError>> {
        Fill::fetch(&self, index, sink).boxed()
    }

    fn checks(&self, index: u64) -> bool {
        Fill::checks(self, index)
    }
}
