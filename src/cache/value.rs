//! Cache values: a chunk's bytes, or an object's metadata. Versioned encoding.

use std::io::{Read, Write};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::key::{put_bytes, put_str};

const VALUE_VERSION: u8 = 1;
const TAG_CHUNK: u8 = 0;
const TAG_META: u8 = 1;

/// What s3-accel knows of an object version: enough to answer a GET or HEAD of it
/// without the origin's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    /// Quoted, as the origin sent it.
    pub etag: String,
    /// The object's own headers (Last-Modified, Content-Type, `x-amz-meta-*`, ...),
    /// never a response's per-request ones.
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
pub enum CacheValue {
    Chunk(Bytes),
    Meta(ObjectMeta),
}

impl CacheValue {
    /// Bytes held in memory, for the memory tier's weigher.
    pub fn weight(&self) -> usize {
        match self {
            Self::Chunk(bytes) => bytes.len(),
            Self::Meta(meta) => {
                64 + meta.etag.len()
                    + meta
                        .headers
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len() + 16)
                        .sum::<usize>()
            }
        }
    }
}

fn io(e: std::io::Error) -> foyer::Error {
    foyer::Error::io_error(e)
}

fn corrupt(what: &str) -> foyer::Error {
    io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("cache value: {what}"),
    ))
}

fn read_u32(reader: &mut impl Read) -> foyer::Result<u32> {
    let mut buf = [0u8; 4];
    reader.read_exact(&mut buf).map_err(io)?;
    Ok(u32::from_be_bytes(buf))
}

fn read_bytes(reader: &mut impl Read) -> foyer::Result<Vec<u8>> {
    let len = read_u32(reader)? as usize;
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

impl foyer::Code for CacheValue {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        match self {
            Self::Chunk(bytes) => {
                writer.write_all(&[VALUE_VERSION, TAG_CHUNK]).map_err(io)?;
                writer.write_all(&(bytes.len() as u64).to_be_bytes()).map_err(io)?;
                writer.write_all(bytes).map_err(io)
            }
            Self::Meta(meta) => {
                let mut out = vec![VALUE_VERSION, TAG_META];
                out.extend_from_slice(&meta.size.to_be_bytes());
                put_str(&mut out, &meta.etag);
                out.extend_from_slice(&(meta.headers.len() as u32).to_be_bytes());
                for (name, value) in &meta.headers {
                    put_str(&mut out, name.as_str());
                    put_bytes(&mut out, value.as_bytes());
                }
                writer.write_all(&out).map_err(io)
            }
        }
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut head = [0u8; 2];
        reader.read_exact(&mut head).map_err(io)?;
        if head[0] != VALUE_VERSION {
            return Err(corrupt("unknown version"));
        }
        let mut size = [0u8; 8];
        reader.read_exact(&mut size).map_err(io)?;
        let size = u64::from_be_bytes(size);
        match head[1] {
            TAG_CHUNK => {
                let mut bytes = vec![0u8; size as usize];
                reader.read_exact(&mut bytes).map_err(io)?;
                Ok(Self::Chunk(bytes.into()))
            }
            TAG_META => {
                let etag = String::from_utf8(read_bytes(reader)?).map_err(|_| corrupt("etag"))?;
                let count = read_u32(reader)?;
                let mut headers = HeaderMap::with_capacity(count as usize);
                for _ in 0..count {
                    let name = HeaderName::from_bytes(&read_bytes(reader)?).map_err(|_| corrupt("header name"))?;
                    let value = HeaderValue::from_bytes(&read_bytes(reader)?).map_err(|_| corrupt("header value"))?;
                    headers.append(name, value);
                }
                Ok(Self::Meta(ObjectMeta { size, etag, headers }))
            }
            _ => Err(corrupt("unknown tag")),
        }
    }

    fn estimated_size(&self) -> usize {
        match self {
            Self::Chunk(bytes) => 10 + bytes.len(),
            Self::Meta(_) => self.weight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foyer::Code;

    #[test]
    fn values_round_trip() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/octet-stream".parse().unwrap());
        headers.append("x-amz-meta-owner", "team-a".parse().unwrap());
        let meta = ObjectMeta {
            size: 1 << 40,
            etag: "\"abc-3\"".into(),
            headers,
        };
        let mut buf = Vec::new();
        CacheValue::Meta(meta.clone()).encode(&mut buf).unwrap();
        match CacheValue::decode(&mut buf.as_slice()).unwrap() {
            CacheValue::Meta(back) => assert_eq!(back, meta),
            other => panic!("{other:?}"),
        }
        let chunk = CacheValue::Chunk(Bytes::from_static(b"chunk bytes"));
        let mut buf = Vec::new();
        chunk.encode(&mut buf).unwrap();
        assert!(matches!(CacheValue::decode(&mut buf.as_slice()).unwrap(), CacheValue::Chunk(b) if b == "chunk bytes"));
        buf[0] = 99;
        assert!(CacheValue::decode(&mut buf.as_slice()).is_err());
    }
}
