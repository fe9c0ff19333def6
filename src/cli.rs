//! The binary's command line: the server's flags, or one of the tools it carries.

use clap::Parser;

use crate::config::Cli;
use crate::prefetch::PrefetchArgs;

/// What `s3-accel` was asked to do.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "s3-accel",
    version,
    about = "GET-only caching accelerator for S3-compatible object storage"
)]
pub struct Invocation {
    /// A tool instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub server: Cli,
}

/// The tools the binary carries besides the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Reads every object under a prefix (or in a manifest) through an accelerator,
    /// so that its region has it cached; prints what the cache answered.
    Prefetch(PrefetchArgs),
    /// Keeps a prefix (or a manifest's objects) resident in a region for a lease;
    /// renews, lists or ends pins.
    Pin(crate::pins::cli::PinArgs),
}
