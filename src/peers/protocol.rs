//! What travels between peers: a reader asks a chunk's owner for it with a
//! [`ChunkRequest`], which says which chunk of which object version, and who may sign
//! the owner's fill should it have to fetch the chunk; a node says who it is with a
//! [`Hello`]. Encoded as text lines, bounded.

use crate::cache::{CacheKey, ObjectId};
use crate::fetch::Priority;

/// What a node says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node: String,
    /// Changes when the process restarts: a restart under the same name is the same
    /// owner with (on disk) the same chunks.
    pub boot_id: String,
    pub disk_capacity: u64,
}

impl Hello {
    pub fn encode(&self) -> String {
        format!(
            "node\t{}\nboot_id\t{}\ndisk_capacity\t{}\n",
            self.node, self.boot_id, self.disk_capacity
        )
    }

    pub fn decode(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix('\t'))
                .map(str::to_owned)
        };
        Some(Self {
            node: field("node").filter(|n| !n.is_empty())?,
            boot_id: field("boot_id")?,
            disk_capacity: field("disk_capacity")?.parse().ok()?,
        })
    }
}

/// `GET`-like, but with a body: the chunk's description.
pub const CHUNK_PATH: &str = "/peer/v1/chunk";
pub const HELLO_PATH: &str = "/peer/v1/hello";
/// "A client here reads this object, which I do not know": the owner of the object's
/// metadata answers with it (200), with "probe it, then tell me" (202: no other
/// node is probing it), or "probe as you would" (404).
pub const COLD_PATH: &str = "/peer/v1/cold";
/// What the probe of a node told to probe learned: the metadata, or nothing (the
/// answer could not be cached).
pub const LEARNED_PATH: &str = "/peer/v1/learned";
/// "This version's chunks do not add up to the object": the body a chunk request
/// of the version (any index). Every node drops what it holds of it.
pub const DROP_PATH: &str = "/peer/v1/drop";
/// "I am stopping (SIGTERM), and will likely be back": the body the node's hello.
/// Readers wait for it a while rather than fill its chunks from the origin.
pub const LEAVING_PATH: &str = "/peer/v1/leaving";
/// A pin change (JSON), taken where it fits (200) or refused (507, why).
pub const PINS_PATH: &str = "/peer/v1/pins";
/// Every pin a node holds, tombstones included (JSON): merged by the asker.
pub const PINS_ALL_PATH: &str = "/peer/v1/pins/all";
/// What a hello's answer is signed as (in place of a method): a reply can never be
/// replayed as a request, nor a request as a reply.
pub const HELLO_REPLY: &str = "HELLO-REPLY";
/// What an owner's answer to a chunk request is signed as: bound to the request's
/// bytes and the chunk's length, so that no other answer can pass for it.
pub const CHUNK_REPLY: &str = "CHUNK-REPLY";

/// The bytes an owner's answer to the chunk request `request` (its body, as sent)
/// is signed over.
pub fn chunk_reply(request: &[u8], length: u64) -> Vec<u8> {
    let mut signed = request.to_vec();
    signed.extend_from_slice(format!("reply_length\t{length}\n").as_bytes());
    signed
}
/// Response header: where the owner found the chunk (`memory`, `disk`, `fill`, `coalesced`).
pub const PEER_SOURCE: &str = "x-s3-accel-peer-source";

/// A description longer than this is refused.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// Who signs the owner's fill, if it has to make one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// The owner's own read credentials, signing for `region`.
    Proxy { target: String, region: String },
    /// The client's reusable request (a presigned URL, an anonymous request): its
    /// target and headers, minus those a fill sets.
    Client {
        target: String,
        headers: Vec<(String, String)>,
    },
}

/// How long an owner keeps a reader waiting for a chunk's first bytes before it
/// says it is busy (429), by the request's priority: well within the reader's
/// patience for a first byte, and soon for any but a client's (asked again, it
/// carries the priority of a client that came to wait for the chunk meanwhile).
pub fn busy_after(priority: Priority) -> std::time::Duration {
    match priority {
        Priority::Client => std::time::Duration::from_secs(20),
        _ => std::time::Duration::from_secs(5),
    }
}

/// One chunk of one object version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub object: ObjectId,
    pub etag: String,
    pub size: u64,
    pub chunk_size: u64,
    pub index: u64,
    /// The Host the fill is sent with.
    pub authority: String,
    pub signer: Signer,
    /// The object's checksum headers, when known (a one-chunk object is checked
    /// against its CRC).
    pub checksums: Vec<(String, String)>,
    /// Who waits for the chunk, for the owner's origin budget (a node of an older
    /// version sends none: a client).
    pub priority: Priority,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a peer's request does not decode: {0}")]
pub struct DecodeError(&'static str);

/// A request's `name<TAB>value` lines: fields given once, and the repeated
/// `header` and `checksum` lines (`name<TAB>header<TAB>value`).
struct Lines<'a> {
    fields: std::collections::HashMap<&'a str, &'a str>,
    headers: Vec<(String, String)>,
    checksums: Vec<(String, String)>,
}

impl<'a> Lines<'a> {
    fn read(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(DecodeError("too long"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| DecodeError("not UTF-8"))?;
        let mut lines = Self {
            fields: std::collections::HashMap::new(),
            headers: Vec::new(),
            checksums: Vec::new(),
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('\t').ok_or(DecodeError("a line without a tab"))?;
            match name {
                "header" | "checksum" => {
                    let (n, v) = value.split_once('\t').ok_or(DecodeError("a header without a value"))?;
                    let list = if name == "header" {
                        &mut lines.headers
                    } else {
                        &mut lines.checksums
                    };
                    list.push((n.to_owned(), v.to_owned()));
                }
                _ => {
                    if lines.fields.insert(name, value).is_some() {
                        return Err(DecodeError("a field given twice"));
                    }
                }
            }
        }
        Ok(lines)
    }
}

/// An object, and what was learned of it (for [`COLD_PATH`] and [`LEARNED_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectNote {
    pub object: ObjectId,
    /// The metadata, as [`ObjectMeta::to_bytes`](crate::cache::ObjectMeta::to_bytes) writes it.
    pub meta: Option<Vec<u8>>,
}

impl ObjectNote {
    pub fn encode(&self) -> Vec<u8> {
        let mut lines = vec![
            format!("origin\t{}", self.object.origin),
            format!("bucket\t{}", self.object.bucket),
            format!("key\t{}", self.object.key),
        ];
        if let Some(version) = &self.object.version_id {
            lines.push(format!("version\t{version}"));
        }
        if let Some(meta) = &self.meta {
            lines.push(format!("meta\t{}", crate::peers::auth::hex(meta)));
        }
        let mut out = lines.join("\n");
        out.push('\n');
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Lines { fields, .. } = Lines::read(bytes)?;
        let text = |name: &'static str| fields.get(name).map(|v| v.to_string()).ok_or(DecodeError(name));
        let meta = match fields.get("meta") {
            Some(hex) => Some(crate::peers::auth::unhex(hex, MAX_REQUEST_BYTES).ok_or(DecodeError("meta"))?),
            None => None,
        };
        Ok(Self {
            object: ObjectId {
                origin: text("origin")?,
                bucket: text("bucket")?,
                key: text("key")?,
                version_id: fields.get("version").map(|v| v.to_string()),
            },
            meta,
        })
    }
}

impl ChunkRequest {
    pub fn key(&self) -> CacheKey {
        CacheKey::chunk(&self.object, &self.etag, self.chunk_size, self.index)
    }

    /// Bytes in the chunk.
    pub fn length(&self) -> u64 {
        let start = self.index * self.chunk_size;
        (start + self.chunk_size).min(self.size).saturating_sub(start)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut lines = vec![
            format!("origin\t{}", self.object.origin),
            format!("bucket\t{}", self.object.bucket),
            format!("key\t{}", self.object.key),
            format!("etag\t{}", self.etag),
            format!("size\t{}", self.size),
            format!("chunk_size\t{}", self.chunk_size),
            format!("index\t{}", self.index),
            format!("authority\t{}", self.authority),
            format!("priority\t{}", self.priority.as_str()),
        ];
        if let Some(version) = &self.object.version_id {
            lines.push(format!("version\t{version}"));
        }
        match &self.signer {
            Signer::Proxy { target, region } => {
                lines.push(format!("proxy_target\t{target}"));
                lines.push(format!("proxy_region\t{region}"));
            }
            Signer::Client { target, headers } => {
                lines.push(format!("client_target\t{target}"));
                lines.extend(headers.iter().map(|(n, v)| format!("header\t{n}\t{v}")));
            }
        }
        lines.extend(self.checksums.iter().map(|(n, v)| format!("checksum\t{n}\t{v}")));
        let mut out = lines.join("\n");
        out.push('\n');
        out.into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Lines {
            fields,
            headers,
            checksums,
        } = Lines::read(bytes)?;
        let text = |name: &'static str| fields.get(name).map(|v| v.to_string()).ok_or(DecodeError(name));
        let number = |name: &'static str| text(name)?.parse::<u64>().map_err(|_| DecodeError(name));
        let signer = match (fields.get("proxy_target"), fields.get("client_target")) {
            (Some(target), None) => Signer::Proxy {
                target: target.to_string(),
                region: text("proxy_region")?,
            },
            (None, Some(target)) => Signer::Client {
                target: target.to_string(),
                headers,
            },
            _ => return Err(DecodeError("one signer")),
        };
        let request = Self {
            object: ObjectId {
                origin: text("origin")?,
                bucket: text("bucket")?,
                key: text("key")?,
                version_id: fields.get("version").map(|v| v.to_string()),
            },
            etag: text("etag")?,
            size: number("size")?,
            chunk_size: number("chunk_size")?,
            index: number("index")?,
            authority: text("authority")?,
            signer,
            checksums,
            // None (an older node) or one this version does not know: a client's.
            priority: fields
                .get("priority")
                .and_then(|text| Priority::parse(text))
                .unwrap_or(Priority::Client),
        };
        let start = request.index.checked_mul(request.chunk_size);
        if request.chunk_size == 0 || start.is_none_or(|start| start >= request.size) {
            return Err(DecodeError("no such chunk"));
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(signer: Signer) -> ChunkRequest {
        ChunkRequest {
            object: ObjectId {
                origin: "https://object.ord1.example.com:443".into(),
                bucket: "models".into(),
                key: "llama/a%20b+c.bin".into(),
                version_id: Some("v%2B1".into()),
            },
            etag: "\"abc-3\"".into(),
            size: (16 << 20) + 5,
            chunk_size: 8 << 20,
            index: 2,
            authority: "accel-object.ord1.example.com".into(),
            signer,
            checksums: vec![("x-amz-checksum-crc32".into(), "AAAAAA==".into())],
            priority: Priority::Background,
        }
    }

    #[test]
    fn requests_round_trip() {
        for signer in [
            Signer::Proxy {
                target: "/models/llama/a%20b+c.bin?versionId=v%2B1".into(),
                region: "default".into(),
            },
            Signer::Client {
                target: "/models/k?X-Amz-Signature=ff".into(),
                headers: vec![("x-amz-date".into(), "20261123T000000Z".into())],
            },
        ] {
            let request = request(signer);
            assert_eq!(ChunkRequest::decode(&request.encode()).unwrap(), request);
            assert_eq!(request.length(), 5);
            // A node of an older version says no priority: a client's.
            let older = String::from_utf8(request.encode())
                .unwrap()
                .replace("priority\tbackground\n", "");
            assert_eq!(
                ChunkRequest::decode(older.as_bytes()).unwrap().priority,
                Priority::Client
            );
        }
    }

    #[test]
    fn object_notes_round_trip() {
        let object = request(Signer::Proxy {
            target: "/t".into(),
            region: "r".into(),
        })
        .object;
        for meta in [None, Some(vec![1, 2, 0xff])] {
            let note = ObjectNote {
                object: object.clone(),
                meta,
            };
            assert_eq!(ObjectNote::decode(&note.encode()).unwrap(), note);
        }
        assert!(ObjectNote::decode(b"origin\to\nbucket\tb\n").is_err(), "no key");
        assert!(ObjectNote::decode(b"origin\to\nbucket\tb\nkey\tk\nmeta\tzz\n").is_err());
    }

    #[test]
    fn bad_requests_are_refused() {
        let good = String::from_utf8(
            request(Signer::Proxy {
                target: "/t".into(),
                region: "r".into(),
            })
            .encode(),
        )
        .unwrap();
        for bad in [
            good.replace("index\t2", "index\t3"),
            good.replace("index\t2", &format!("index\t{}", u64::MAX / 2)),
            good.replace("size\t", "size\tx"),
            good.replace("etag\t", "etag"),
            format!("{good}etag\tagain\n"),
            good.replace("proxy_target", "nothing"),
            format!("{good}client_target\t/t\n"),
            "x".repeat(MAX_REQUEST_BYTES + 1),
        ] {
            assert!(ChunkRequest::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
