//! Cache keys: which object version, and which chunk of it. Encoded with a version
//! byte, hashed with a stable hash (xxHash64), so that a key means the same entry
//! after a restart, on another node, and after a dependency upgrade.

use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{Read, Write};

use bytes::Bytes;

/// Bumped whenever the encoding changes: old entries then never match.
const KEY_VERSION: u8 = 1;
const KIND_META: u8 = 0;
const KIND_CHUNK: u8 = 1;

/// What selects an object's bytes at the origin. Names are raw, as the client
/// encoded them: `+` means different things to different origins. A part is a range
/// of the object's chunks, never chunks of its own: only its bounds have a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// The origin, as `scheme://host:port`.
    pub origin: String,
    pub bucket: String,
    pub key: String,
    pub version_id: Option<String>,
}

/// A cache entry's key: an object's metadata, or one chunk of one version of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(Bytes);

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

impl CacheKey {
    pub fn meta(object: &ObjectId) -> Self {
        Self::part(object, 0)
    }

    /// Where the bounds of part `number` of `object` are kept (0: the object's own
    /// metadata).
    pub fn part(object: &ObjectId, number: u16) -> Self {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&[KEY_VERSION, KIND_META]);
        encode_object(&mut out, object);
        out.extend_from_slice(&number.to_be_bytes());
        Self(out.into())
    }

    /// Chunk `index` of the version `etag`, cut at `chunk_size`: the ETag makes a
    /// changed object a different entry, so no read mixes two versions.
    pub fn chunk(object: &ObjectId, etag: &str, chunk_size: u64, index: u64) -> Self {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(&[KEY_VERSION, KIND_CHUNK]);
        encode_object(&mut out, object);
        // (Where a part number once was: chunks are the object's.)
        out.extend_from_slice(&0u16.to_be_bytes());
        put_str(&mut out, etag);
        out.extend_from_slice(&chunk_size.to_be_bytes());
        out.extend_from_slice(&index.to_be_bytes());
        Self(out.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A key read back from its encoding (a pinned chunk's file).
    pub(super) fn from_bytes(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The bucket and the key (percent-decoded: pins name keys as listed) of the
    /// object this entry is of.
    pub fn names(&self) -> Option<(String, String)> {
        let mut rest = self.0.get(2..)?;
        let mut field = || -> Option<&[u8]> {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + len)?;
            rest = &rest[4 + len..];
            Some(value)
        };
        let _origin = field()?;
        let bucket = std::str::from_utf8(field()?).ok()?.to_owned();
        let key = std::str::from_utf8(field()?).ok()?;
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8()
            .ok()?
            .into_owned();
        Some((bucket, key))
    }

    /// What every chunk key of one version starts with: a chunk key without its
    /// chunk size and index.
    pub(super) fn version_prefix(&self) -> Bytes {
        self.0.slice(..self.0.len().saturating_sub(16))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stable hash of this key (xxHash64, seed 0), for sharding across nodes.
    pub fn stable_hash(&self) -> u64 {
        foyer::DefaultHasher::default().hash_one(self)
    }
}

fn encode_object(out: &mut Vec<u8>, object: &ObjectId) {
    put_str(out, &object.origin);
    put_str(out, &object.bucket);
    put_str(out, &object.key);
    match &object.version_id {
        Some(v) => {
            out.push(1);
            put_str(out, v);
        }
        None => out.push(0),
    }
}

/// Length-prefixed (u32, big-endian) bytes.
pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

impl foyer::Code for CacheKey {
    fn encode(&self, writer: &mut impl Write) -> foyer::Result<()> {
        writer
            .write_all(&(self.0.len() as u32).to_be_bytes())
            .map_err(foyer::Error::io_error)?;
        writer.write_all(&self.0).map_err(foyer::Error::io_error)
    }

    fn decode(reader: &mut impl Read) -> foyer::Result<Self> {
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(foyer::Error::io_error)?;
        // Keys are a few hundred bytes (a key is at most 1024): a longer length is corrupt.
        let len = u32::from_be_bytes(len) as usize;
        if len > 64 << 10 {
            return Err(foyer::Error::io_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "cache key: length",
            )));
        }
        let mut bytes = vec![0u8; len];
        reader.read_exact(&mut bytes).map_err(foyer::Error::io_error)?;
        Ok(Self(bytes.into()))
    }

    fn estimated_size(&self) -> usize {
        4 + self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foyer::Code;
    use proptest::prelude::*;

    fn object() -> ObjectId {
        ObjectId {
            origin: "https://object.ord1.example.com:443".into(),
            bucket: "models".into(),
            key: "llama/weights-00001.safetensors".into(),
            version_id: None,
        }
    }

    /// Golden values: if these change, every cache on disk and every peer's shard
    /// assignment changes with them. Bump KEY_VERSION instead of editing them.
    #[test]
    fn stable_hashes_do_not_drift() {
        let chunk = CacheKey::chunk(&object(), "\"0123456789abcdef0123456789abcdef\"", 8 << 20, 3);
        assert_eq!(chunk.stable_hash(), 0x23d8_dd30_47e5_4ec4, "{:#x}", chunk.stable_hash());
        let meta = CacheKey::meta(&object());
        assert_eq!(meta.stable_hash(), 0x3ce8_a4d7_3d11_98ea, "{:#x}", meta.stable_hash());
    }

    #[test]
    fn every_field_separates_keys() {
        let base = CacheKey::chunk(&object(), "\"e\"", 8 << 20, 0);
        let mut other = object();
        other.version_id = Some("v1".into());
        assert_ne!(base, CacheKey::chunk(&other, "\"e\"", 8 << 20, 0));
        assert_ne!(base, CacheKey::chunk(&object(), "\"f\"", 8 << 20, 0));
        assert_ne!(base, CacheKey::chunk(&object(), "\"e\"", 16 << 20, 0));
        assert_ne!(base, CacheKey::chunk(&object(), "\"e\"", 8 << 20, 1));
        assert_ne!(CacheKey::meta(&object()), base);
        assert_ne!(CacheKey::meta(&object()), CacheKey::part(&object(), 1));
    }

    #[test]
    fn a_key_names_its_bucket_and_decoded_key() {
        let mut object = object();
        object.key = "llama/weights%2000001.safetensors".into();
        let names = CacheKey::chunk(&object, "\"e\"", 8 << 20, 0).names();
        assert_eq!(names, Some(("models".into(), "llama/weights 00001.safetensors".into())));
        assert_eq!(CacheKey::meta(&object).names().unwrap().0, "models");
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_never_collide_by_concatenation(
            bucket in ".{0,20}", key in ".{0,40}", etag in ".{0,20}", index in any::<u64>()
        ) {
            let object = ObjectId { origin: "o".into(), bucket: bucket.clone(), key: key.clone(), version_id: None };
            let chunk = CacheKey::chunk(&object, &etag, 1 << 20, index);
            let mut buf = Vec::new();
            chunk.encode(&mut buf).unwrap();
            prop_assert_eq!(CacheKey::decode(&mut buf.as_slice()).unwrap(), chunk.clone());
            // Moving a character from the key into the bucket makes another key.
            let shifted = ObjectId { bucket: format!("{bucket}/"), key: key.clone(), ..object.clone() };
            prop_assert_ne!(CacheKey::chunk(&shifted, &etag, 1 << 20, index), chunk);
        }
    }
}
