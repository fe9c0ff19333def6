//! A region's nodes as one cache: who they are and which of them owns each key.

pub mod peer_auth;
pub mod placement;
