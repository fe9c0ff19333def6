//! An origin that breaks HTTP framing on purpose, which no real S3 server does: it
//! serves one object (ranges, conditionals, keep-alive) from memory and can send a
//! stray second response after the one owed, answer with another range of the
//! right length, change the ETag mid-object, or fail with 500.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the origin does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a correct origin.
    None,
    /// After each answer, a second well-formed 206 of the same range with other
    /// bytes, sent a moment later (so that it may be read as the next request's).
    StrayResponse,
    /// Ranged answers carry the next range of the same length (bytes and header).
    ShiftedRange,
    /// Requests with `If-Match` (chunk fills, boto3's parts) get another version of
    /// the object, with its own ETag, as if it was overwritten mid-read by an
    /// origin that ignores `If-Match`; the others get the first version.
    NewVersion,
    /// 500 InternalError to every request.
    ServerError,
    /// Ranged answers (fills, parts) carry one flipped byte: framing, length and
    /// ETag all as they should be; only the object's checksum can tell.
    Corrupt,
    /// A range is answered with 200 and only the range's bytes (Content-Length the
    /// range's length): a 200 that looks like a whole, smaller object.
    RangeAsWhole,
    /// As AWS: whole-object answers carry the object's CRC32 only when the request
    /// sent `x-amz-checksum-mode: ENABLED`.
    ChecksumsWhenAsked,
}

pub struct FramingOrigin {
    pub address: SocketAddr,
    fault: Arc<Mutex<Fault>>,
}

struct Object {
    data: Vec<u8>,
    etag: String,
}

impl FramingOrigin {
    /// Serves `data` at every path, with ETag `"framing-1"`.
    pub async fn start(data: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::None));
        let object = Arc::new(data);
        let f = fault.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, object.clone(), f.clone()));
            }
        });
        Self { address, fault }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }
}

/// The object as it is under `fault`, for a request with or without `If-Match`.
fn object(data: &[u8], fault: Fault, conditional: bool) -> Object {
    match fault {
        Fault::NewVersion if conditional => Object {
            data: data.iter().map(|b| b ^ 0x5a).collect(),
            etag: "\"framing-2\"".into(),
        },
        _ => Object {
            data: data.to_vec(),
            etag: "\"framing-1\"".into(),
        },
    }
}

async fn serve(mut stream: TcpStream, data: Arc<Vec<u8>>, fault: Arc<Mutex<Fault>>) {
    let mut buffer = Vec::new();
    loop {
        let Some(head) = next_head(&mut stream, &mut buffer).await else {
            return;
        };
        let fault = *fault.lock().unwrap();
        let conditional = head.lines().any(|l| l.to_ascii_lowercase().starts_with("if-match:"));
        let object = object(&data, fault, conditional);
        let (answer, span) = respond(&head, &object, fault);
        if stream.write_all(&answer).await.is_err() {
            return;
        }
        if let (Fault::StrayResponse, Some((first, last))) = (fault, span) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let garbage = vec![b'!'; (last - first + 1) as usize];
            let stray = response_bytes(
                "206 Partial Content",
                &object.etag,
                &[("Content-Range", format!("bytes {first}-{last}/{}", object.data.len()))],
                &garbage,
            );
            if stream.write_all(&stray).await.is_err() {
                return;
            }
        }
    }
}

/// The next request head on the connection (bodies are never sent to a GET origin).
async fn next_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The answer to `head`, and the span of the object it carries.
fn respond(head: &str, object: &Object, fault: Fault) -> (Vec<u8>, Option<(u64, u64)>) {
    let mut lines = head.lines();
    let method = lines.next().unwrap_or("").split(' ').next().unwrap_or("").to_owned();
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.trim().to_owned())
    };
    let size = object.data.len() as u64;
    if fault == Fault::ServerError {
        return (
            response_bytes(
                "500 Internal Server Error",
                &object.etag,
                &[],
                b"<Error><Code>InternalError</Code></Error>",
            ),
            None,
        );
    }
    if fault != Fault::NewVersion && header("if-match").is_some_and(|m| m != object.etag) {
        return (response_bytes("412 Precondition Failed", &object.etag, &[], b""), None);
    }
    if header("if-none-match").is_some_and(|m| m == object.etag) {
        return (response_bytes("304 Not Modified", &object.etag, &[], b""), None);
    }
    let range = header("range").and_then(|r| {
        let (first, last) = r.strip_prefix("bytes=")?.split_once('-')?;
        let first: u64 = first.parse().ok()?;
        let last = last.parse::<u64>().map_or(size - 1, |l| l.min(size - 1));
        (first <= last && first < size).then_some((first, last))
    });
    let head_only = method == "HEAD";
    match range {
        None => {
            // Whole-object answers carry the object's CRC32, as S3 does in checksum mode.
            let asked = header("x-amz-checksum-mode").is_some_and(|m| m.eq_ignore_ascii_case("enabled"));
            let crc = match fault != Fault::ChecksumsWhenAsked || asked {
                true => vec![("x-amz-checksum-crc32", s3_accel_testkit::crc32_base64(&object.data))],
                false => Vec::new(),
            };
            let mut body = if head_only { Vec::new() } else { object.data.clone() };
            if fault == Fault::Corrupt && !body.is_empty() {
                body[0] ^= 1;
            }
            let mut answer = response_bytes("200 OK", &object.etag, &crc, &body);
            if head_only {
                answer = head_bytes("200 OK", &object.etag, &crc, size);
            }
            (answer, Some((0, size - 1)))
        }
        Some((mut first, mut last)) => {
            if fault == Fault::ShiftedRange {
                let length = last - first + 1;
                if last + length < size {
                    first += length;
                    last += length;
                }
            }
            let extra = [("Content-Range", format!("bytes {first}-{last}/{size}"))];
            let mut body = object.data[first as usize..=last as usize].to_vec();
            if fault == Fault::RangeAsWhole {
                return match head_only {
                    true => (head_bytes("200 OK", &object.etag, &[], body.len() as u64), None),
                    false => (response_bytes("200 OK", &object.etag, &[], &body), Some((first, last))),
                };
            }
            if fault == Fault::Corrupt {
                body[0] ^= 1;
            }
            let body = &body[..];
            if head_only {
                return (
                    head_bytes("206 Partial Content", &object.etag, &extra, body.len() as u64),
                    None,
                );
            }
            (
                response_bytes("206 Partial Content", &object.etag, &extra, body),
                Some((first, last)),
            )
        }
    }
}

fn head_bytes(status: &str, etag: &str, extra: &[(&str, String)], length: u64) -> Vec<u8> {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nETag: {etag}\r\nContent-Type: application/octet-stream\r\nLast-Modified: Mon, 23 Nov 2026 00:00:00 GMT\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn response_bytes(status: &str, etag: &str, extra: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut bytes = head_bytes(status, etag, extra, body.len() as u64);
    bytes.extend_from_slice(body);
    bytes
}
