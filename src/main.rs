//! The s3-accel binary: flags, logging, signals; the library does the rest.

use anyhow::Context;
use clap::Parser;

use s3_accel::cli::{Command, Invocation};
use s3_accel::{App, Config};

fn main() -> anyhow::Result<()> {
    let invocation = Invocation::parse();
    match &invocation.command {
        Some(Command::Prefetch(args)) => std::process::exit(prefetch(args)),
        Some(Command::Pin(args)) => std::process::exit(pin(args)),
        None => {}
    }
    let cli = invocation.server;
    init_logging(&cli.log_format);
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!(
                "s3-accel: invalid configuration: {}",
                s3_accel::error::error_chain(&error)
            );
            std::process::exit(2);
        }
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let app = App::bind(&config).await.context("starting s3-accel")?;
    for region in &config.regions {
        let hosts = if region.catch_all {
            "any host".to_string()
        } else {
            region.hosts.join(", ")
        };
        tracing::info!(region = region.name, origin = %region.origin, hosts, "serving region");
    }
    tracing::info!(
        listen = %app.local_addr()?,
        cache_dir = %config.cache.dir.display(),
        memory_cache = s3_accel::config::units::format_size(config.cache.memory),
        disk_cache = s3_accel::config::units::format_size(config.cache.disk),
        chunk_size = s3_accel::config::units::format_size(config.cache.chunk_size),
        "s3-accel listening"
    );
    app.run(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// `s3-accel pin`: 0 when the region took the change (the pin is printed), 2 when
/// it was refused or could not be asked.
fn pin(args: &s3_accel::pins::cli::PinArgs) -> i32 {
    let Some(runtime) = tool_runtime("pin") else {
        return 2;
    };
    match runtime.block_on(s3_accel::pins::cli::run(args)) {
        Ok(answer) => {
            println!("{answer}");
            0
        }
        Err(error) => {
            eprintln!("s3-accel pin: {}", s3_accel::error::error_chain(&error));
            2
        }
    }
}

/// Logging (warnings, to stderr) and a runtime for one of the tools.
fn tool_runtime(tool: &str) -> Option<tokio::runtime::Runtime> {
    let filter = s3_accel::telemetry::log_filter(Some(&std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("s3-accel {tool}: {error}");
            None
        }
    }
}

/// `s3-accel prefetch`: 0 when every object was read, 1 when any failed, 2 when
/// nothing could be read (a usage mistake, a listing refused).
fn prefetch(args: &s3_accel::prefetch::PrefetchArgs) -> i32 {
    // Warnings only: the progress bar and the summary are the output.
    let Some(runtime) = tool_runtime("prefetch") else {
        return 2;
    };
    match runtime.block_on(s3_accel::prefetch::run(args)) {
        Ok(summary) if args.dry_run => i32::from(!summary.failures.is_empty()),
        Ok(summary) => {
            summary.print();
            i32::from(!summary.failures.is_empty())
        }
        Err(error) => {
            eprintln!("s3-accel prefetch: {}", s3_accel::error::error_chain(&error));
            2
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}

fn init_logging(format: &str) {
    let filter = s3_accel::telemetry::log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
