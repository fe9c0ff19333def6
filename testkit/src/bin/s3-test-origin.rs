//! A stand-alone S3 origin for tests with real clients (tests/clients/run.sh):
//! the testkit's s3s-fs origin (SigV4 on, conditionals answered as AWS does,
//! GET bodies read in 1 MiB blocks) on 127.0.0.1, loaded with the objects named
//! on the command line, plus a second listener that reports what it sent.
//!
//! ```text
//! s3-test-origin [--object BUCKET/KEY=FILE]... [--data-dir DIR] [--ready-file FILE]
//! ```
//!
//! Every object is stored with a PUT carrying `x-amz-checksum-crc32`, so the
//! origin keeps a CRC32 checksum and returns it on whole-object GETs, as AWS does
//! for objects uploaded by current SDKs. When the objects are in, it prints
//!
//! ```text
//! origin=http://127.0.0.1:PORT stats=http://127.0.0.1:PORT2
//! ```
//!
//! on stdout (and writes the same line to `--ready-file`), then serves until
//! SIGINT or SIGTERM. The stats listener answers
//! - `GET /stats`: `{"requests":N,"body_bytes":N,"fills":N}` (body_bytes: GET body
//!   bytes the origin sent; fills: ranged GETs carrying If-Match);
//! - `GET /log`: `METHOD target` of every request so far, one a line.
//!
//! Credentials: `s3_accel_testkit::origin::ACCESS_KEY` / `SECRET_KEY`; any SigV4
//! region is accepted (s3s takes the region from the request's credential scope).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use s3_accel_testkit::{Origin, OriginOptions, OriginStats};
use tokio::net::TcpListener;

const USAGE: &str = "usage: s3-test-origin [--object BUCKET/KEY=FILE]... [--data-dir DIR] [--ready-file FILE]";

/// What a key keeps unencoded in a path: RFC 3986 unreserved characters and `/`.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

struct Args {
    objects: Vec<(String, String, PathBuf)>,
    data_dir: Option<PathBuf>,
    ready_file: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        objects: Vec::new(),
        data_dir: None,
        ready_file: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--object" => {
                let spec = value()?;
                let (name, file) = spec
                    .split_once('=')
                    .ok_or_else(|| format!("--object {spec}: expected BUCKET/KEY=FILE"))?;
                let (bucket, key) = name
                    .split_once('/')
                    .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                    .ok_or_else(|| format!("--object {spec}: expected BUCKET/KEY=FILE"))?;
                args.objects
                    .push((bucket.to_owned(), key.to_owned(), PathBuf::from(file)));
            }
            "--data-dir" => args.data_dir = Some(PathBuf::from(value()?)),
            "--ready-file" => args.ready_file = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(args)
}

fn stats_json(stats: &OriginStats) -> String {
    format!(
        "{{\"requests\":{},\"body_bytes\":{},\"fills\":{}}}\n",
        stats.requests(),
        stats.body_bytes(),
        stats.fills()
    )
}

async fn serve_stats(listener: TcpListener, stats: Arc<OriginStats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let stats = stats.clone();
                async move {
                    let (status, content_type, body) = match (request.method(), request.uri().path()) {
                        (&http::Method::GET, "/stats") => (StatusCode::OK, "application/json", stats_json(&stats)),
                        (&http::Method::GET, "/log") => {
                            let log = stats.log.lock().unwrap();
                            let mut text = log.join("\n");
                            if !text.is_empty() {
                                text.push('\n');
                            }
                            (StatusCode::OK, "text/plain", text)
                        }
                        _ => (StatusCode::NOT_FOUND, "text/plain", "GET /stats or /log\n".to_owned()),
                    };
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(http_body_util::Full::new(Bytes::from(body)))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn run(args: Args) -> Result<(), String> {
    let options = OriginOptions {
        honor_conditionals: true,
        read_block: Some(1 << 20),
        ..Default::default()
    };
    let origin = Origin::start(options, args.data_dir.as_deref())
        .await
        .map_err(|e| format!("starting the origin: {e}"))?;
    let buckets: BTreeSet<&str> = args.objects.iter().map(|(b, _, _)| b.as_str()).collect();
    for bucket in buckets {
        origin.create_bucket(bucket).await?;
    }
    for (bucket, key, file) in &args.objects {
        let data = std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        let checksum = s3_accel_testkit::crc32_base64(&data);
        let raw_key = utf8_percent_encode(key, KEY_ENCODE).to_string();
        origin
            .put(
                bucket,
                &raw_key,
                Bytes::from(data),
                &[("x-amz-checksum-crc32", &checksum)],
            )
            .await?;
    }

    let stats_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("binding the stats listener: {e}"))?;
    let stats_address = stats_listener
        .local_addr()
        .map_err(|e| format!("stats listener: {e}"))?;
    tokio::spawn(serve_stats(stats_listener, origin.stats.clone()));

    let line = format!("origin={} stats=http://{stats_address}\n", origin.url());
    if let Some(path) = &args.ready_file {
        // Written whole under another name, then renamed: a reader never sees half a line.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, &line)
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(line.as_bytes()).and_then(|()| stdout.flush());

    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    // Dropping the origin stops it and removes its data directory.
    drop(origin);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("s3-test-origin: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("s3-test-origin: {message}");
            ExitCode::FAILURE
        }
    }
}
