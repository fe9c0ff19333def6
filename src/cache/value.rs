//! Cache values: a chunk's bytes, or an object's metadata. Versioned encoding.

use std::io::{Read, Write};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::key::{put_bytes, put_str};
use crate::s3::response::{ObjectMeta, PartMeta};
use crate::s3::Crc;

const VALUE_VERSION: u8 = 1;
const TAG_CHUNK: u8 = 0;
/// Metadata as first written: no checksums (read back as unknown).
const TAG_META: u8 = 1;
/// Metadata with what is known of the object's checksums.
const TAG_META_CHECKSUMS: u8 = 2;
const TAG_PART: u8 = 3;
/// A chunk with its CRC, checked when it is read back.
const TAG_CHUNK_CRC: u8 = 4;

#[derive(Debug, Clone)]
pub enum CacheValue {
    /// A chunk's bytes and their CRC (`None`: written before CRCs were kept).
    Chunk(Bytes, Option<Crc>),
    Meta(ObjectMeta),
    Part(PartMeta),
}

impl ObjectMeta {
    /// The metadata as the cache stores it (the region's nodes tell each other).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        foyer::Code::encode(&CacheValue::Meta(self.clone()), &mut out).expect("writing to memory");
        out
    }

    pub fn from_bytes(mut bytes: &[u8]) -> Option<Self> {
        match <CacheValue as foyer::Code>::decode(&mut bytes).ok()? {
            CacheValue::Meta(meta) if bytes.is_empty() => Some(meta),
            _ => None,
        }
    }
}

fn headers_weight(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 16).sum()
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        put_str(out, name.as_str());
        put_bytes(out, value.as_bytes());
    }
}

fn read_headers(reader: &mut impl Read) -> foyer::Result<HeaderMap> {
    let count = read_u32(reader)?;
    if count > MAX_HEADERS {
        return Err(corrupt("header count"));
    }
    let mut headers = HeaderMap::with_capacity(count as usize);
    for _ in 0..count {
        let name = HeaderName::from_bytes(&read_bytes(reader)?).map_err(|_| corrupt("header name"))?;
        let value = HeaderValue::from_bytes(&read_bytes(reader)?).map_err(|_| corrupt("header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// An optional header map: a presence byte, then the map.
fn put_known(out: &mut Vec<u8>, headers: Option<&HeaderMap>) {
    match headers {
        Some(headers) => {
            out.push(1);
            put_headers(out, headers);
        }
        None => out.push(0),
    }
}

fn read_known(reader: &mut impl Read) -> foyer::Result<Option<HeaderMap>> {
    let mut present = [0u8; 1];
    reader.read_exact(&mut present).map_err(io)?;
    match present[0] {
        0 => Ok(None),
        1 => read_headers(reader).map(Some),
        _ => Err(corrupt("presence byte")),
    }
}

impl CacheValue {
    /// Bytes held in memory, for the memory tier's weigher.
    pub fn weight(&self) -> usize {
        match self {
            Self::Chunk(bytes, _) => bytes.len(),
            Self::Meta(meta) => {
                64 + meta.etag.len() + headers_weight(&meta.headers) + meta.checksums.as_ref().map_or(0, headers_weight)
            }
            Self::Part(part) => 96 + part.etag.len() + part.checksums.as_ref().map_or(0, headers_weight),
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

/// Longest name, value or ETag a metadata entry holds; a longer length is corrupt.
const MAX_FIELD: usize = 1 << 20;
/// Largest chunk (the largest chunk size, 256 MiB); a larger length is corrupt.
const MAX_CHUNK: u64 = 256 << 20;
/// Most headers a metadata entry holds.
const MAX_HEADERS: u32 = 4096;

fn read_bytes(reader: &mut impl Read) -> foyer::Result<Vec<u8>> {
    let len = read_u32(reader)? as usize;
    if len > MAX_FIELD {
        return Err(corrupt("field length"));
    }
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

impl foyer::Code for CacheValue {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        match self {
            Self::Chunk(bytes, crc) => {
                let tag = if crc.is_some() { TAG_CHUNK_CRC } else { TAG_CHUNK };
                writer.write_all(&[VALUE_VERSION, tag]).map_err(io)?;
                writer.write_all(&(bytes.len() as u64).to_be_bytes()).map_err(io)?;
                if let Some(crc) = crc {
                    writer.write_all(&[crc.tag()]).map_err(io)?;
                    writer.write_all(&crc.value.to_be_bytes()).map_err(io)?;
                }
                writer.write_all(bytes).map_err(io)
            }
            Self::Meta(meta) => {
                let mut out = vec![VALUE_VERSION, TAG_META_CHECKSUMS];
                out.extend_from_slice(&meta.size.to_be_bytes());
                put_str(&mut out, &meta.etag);
                put_headers(&mut out, &meta.headers);
                put_known(&mut out, meta.checksums.as_ref());
                writer.write_all(&out).map_err(io)
            }
            Self::Part(part) => {
                let mut out = vec![VALUE_VERSION, TAG_PART];
                out.extend_from_slice(&part.first.to_be_bytes());
                out.extend_from_slice(&part.last.to_be_bytes());
                put_str(&mut out, &part.etag);
                out.push(u8::from(part.whole));
                out.push(u8::from(part.parts_count.is_some()));
                if let Some(count) = &part.parts_count {
                    put_bytes(&mut out, count.as_bytes());
                }
                put_known(&mut out, part.checksums.as_ref());
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
            TAG_CHUNK | TAG_CHUNK_CRC => {
                // A corrupt length must not become a huge allocation.
                if size > MAX_CHUNK {
                    return Err(corrupt("chunk length"));
                }
                let crc = match head[1] {
                    TAG_CHUNK => None,
                    _ => {
                        let mut crc = [0u8; 9];
                        reader.read_exact(&mut crc).map_err(io)?;
                        let algorithm = Crc::algorithm_of(crc[0]).ok_or_else(|| corrupt("crc algorithm"))?;
                        let value = u64::from_be_bytes(crc[1..].try_into().expect("8 bytes"));
                        Some(Crc { algorithm, value })
                    }
                };
                let mut bytes = vec![0u8; size as usize];
                reader.read_exact(&mut bytes).map_err(io)?;
                // Bytes that changed after they were written are never served: a
                // miss, filled again. (foyer's own checksum of each entry catches a
                // disk's flips first; this holds whatever wrote or read the value.)
                if crc.is_some_and(|crc| !crc.matches(&bytes)) {
                    metrics::counter!(crate::telemetry::CORRUPT_CHUNKS, "found" => "disk").increment(1);
                    return Err(corrupt("chunk bytes do not match their CRC"));
                }
                Ok(Self::Chunk(bytes.into(), crc))
            }
            TAG_META | TAG_META_CHECKSUMS => {
                let etag = String::from_utf8(read_bytes(reader)?).map_err(|_| corrupt("etag"))?;
                let headers = read_headers(reader)?;
                let checksums = match head[1] {
                    TAG_META => None,
                    _ => read_known(reader)?,
                };
                Ok(Self::Meta(ObjectMeta {
                    size,
                    etag,
                    headers,
                    checksums,
                }))
            }
            TAG_PART => {
                let first = size;
                let mut last = [0u8; 8];
                reader.read_exact(&mut last).map_err(io)?;
                let etag = String::from_utf8(read_bytes(reader)?).map_err(|_| corrupt("etag"))?;
                // Whether the part was the whole object, whether a parts count follows.
                let mut flags = [0u8; 2];
                reader.read_exact(&mut flags).map_err(io)?;
                let parts_count = match flags[1] {
                    0 => None,
                    _ => Some(HeaderValue::from_bytes(&read_bytes(reader)?).map_err(|_| corrupt("parts count"))?),
                };
                Ok(Self::Part(PartMeta {
                    etag,
                    first,
                    last: u64::from_be_bytes(last),
                    whole: flags[0] == 1,
                    parts_count,
                    checksums: read_known(reader)?,
                }))
            }
            _ => Err(corrupt("unknown tag")),
        }
    }

    fn estimated_size(&self) -> usize {
        match self {
            Self::Chunk(bytes, _) => 19 + bytes.len(),
            Self::Meta(_) | Self::Part(_) => self.weight(),
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
        let mut checksums = HeaderMap::new();
        checksums.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        for checksums in [None, Some(HeaderMap::new()), Some(checksums)] {
            let meta = ObjectMeta {
                size: 1 << 40,
                etag: "\"abc-3\"".into(),
                headers: headers.clone(),
                checksums: checksums.clone(),
            };
            let mut buf = Vec::new();
            CacheValue::Meta(meta.clone()).encode(&mut buf).unwrap();
            match CacheValue::decode(&mut buf.as_slice()).unwrap() {
                CacheValue::Meta(back) => assert_eq!(back, meta),
                other => panic!("{other:?}"),
            }
            for parts_count in [None, Some(HeaderValue::from_static("3"))] {
                let part = PartMeta {
                    etag: "\"abc-3\"".into(),
                    first: 8 << 20,
                    last: (16 << 20) - 1,
                    whole: parts_count.is_none(),
                    parts_count,
                    checksums: checksums.clone(),
                };
                let mut buf = Vec::new();
                CacheValue::Part(part.clone()).encode(&mut buf).unwrap();
                match CacheValue::decode(&mut buf.as_slice()).unwrap() {
                    CacheValue::Part(back) => assert_eq!(back, part),
                    other => panic!("{other:?}"),
                }
            }
        }
        for crc in [None, Some(Crc::of(Crc::DEFAULT, b"chunk bytes"))] {
            let chunk = CacheValue::Chunk(Bytes::from_static(b"chunk bytes"), crc);
            let mut buf = Vec::new();
            chunk.encode(&mut buf).unwrap();
            assert!(
                matches!(CacheValue::decode(&mut buf.as_slice()).unwrap(), CacheValue::Chunk(b, c) if b == "chunk bytes" && c == crc)
            );
            buf[0] = 99;
            assert!(CacheValue::decode(&mut buf.as_slice()).is_err());
        }
    }

    /// A chunk whose bytes changed after they were written (on disk) does not read.
    #[test]
    fn a_chunk_that_does_not_match_its_crc_does_not_read() {
        let bytes = Bytes::from_static(b"chunk bytes, some of them");
        let mut buf = Vec::new();
        CacheValue::Chunk(bytes.clone(), Some(Crc::of(Crc::DEFAULT, &bytes)))
            .encode(&mut buf)
            .unwrap();
        let last = buf.len() - 1;
        buf[last] ^= 0x01;
        assert!(CacheValue::decode(&mut buf.as_slice()).is_err());
    }

    /// Metadata written before checksums were kept still reads, as "not known".
    #[test]
    fn first_metadata_encoding_still_reads() {
        let mut old = vec![VALUE_VERSION, TAG_META];
        old.extend_from_slice(&42u64.to_be_bytes());
        put_str(&mut old, "\"e\"");
        old.extend_from_slice(&1u32.to_be_bytes());
        put_str(&mut old, "content-type");
        put_bytes(&mut old, b"text/plain");
        match CacheValue::decode(&mut old.as_slice()).unwrap() {
            CacheValue::Meta(meta) => {
                assert_eq!((meta.size, meta.etag.as_str()), (42, "\"e\""));
                assert_eq!(meta.headers["content-type"], "text/plain");
                assert_eq!(meta.checksums, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
