//! CRCs as S3 computes its checksums (CRC32, CRC32C, CRC64NVME): of one chunk, of
//! a whole object, and of two pieces put together without reading them again.

use base64::Engine;
use crc_fast::CrcAlgorithm;
use http::HeaderMap;

/// The CRCs S3 offers as full-object checksums, by header, with a stable tag for
/// storage (a chunk's CRC is kept beside it).
const ALGORITHMS: [(&str, CrcAlgorithm, u8); 3] = [
    ("x-amz-checksum-crc32", CrcAlgorithm::Crc32IsoHdlc, 1),
    ("x-amz-checksum-crc32c", CrcAlgorithm::Crc32Iscsi, 2),
    ("x-amz-checksum-crc64nvme", CrcAlgorithm::Crc64Nvme, 3),
];

/// A CRC of some bytes, with the algorithm it was computed with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crc {
    pub algorithm: CrcAlgorithm,
    pub value: u64,
}

impl Crc {
    /// The CRC kept for a chunk whose object has no full-object CRC: the fastest
    /// of the three, and the widest.
    pub const DEFAULT: CrcAlgorithm = CrcAlgorithm::Crc64Nvme;

    pub fn of(algorithm: CrcAlgorithm, data: &[u8]) -> Self {
        Self {
            algorithm,
            value: crc_fast::checksum(algorithm, data),
        }
    }

    /// The CRC of these bytes followed by `next`'s, `next_len` bytes long.
    pub fn then(self, next: Crc, next_len: u64) -> Self {
        debug_assert_eq!(self.algorithm, next.algorithm);
        Self {
            value: crc_fast::checksum_combine(self.algorithm, self.value, next.value, next_len),
            ..self
        }
    }

    /// Whether `data` has this CRC.
    pub fn matches(&self, data: &[u8]) -> bool {
        Self::of(self.algorithm, data) == *self
    }

    /// The object's own CRC, from stored checksums, when it covers the whole
    /// object's bytes: a full-object CRC32, CRC32C or CRC64NVME (not a composite of
    /// parts). An origin that names no type (s3s-fs) sends full-object CRCs.
    pub fn full_object(checksums: &HeaderMap) -> Option<Self> {
        if checksums
            .get("x-amz-checksum-type")
            .is_some_and(|t| t.as_bytes() != b"FULL_OBJECT")
        {
            return None;
        }
        ALGORITHMS.iter().find_map(|(name, algorithm, _)| {
            let text = checksums.get(*name)?.to_str().ok()?;
            let digest = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
            // A CRC32 in a CRC64's header (or the reverse) is no checksum of ours.
            let value = match (digest_len(*algorithm), digest.len()) {
                (4, 4) => u32::from_be_bytes(digest.try_into().ok()?) as u64,
                (8, 8) => u64::from_be_bytes(digest.try_into().ok()?),
                _ => return None,
            };
            Some(Self {
                algorithm: *algorithm,
                value,
            })
        })
    }

    /// As S3 writes it: base64 of the big-endian digest.
    pub fn base64(&self) -> String {
        let bytes = match digest_len(self.algorithm) {
            8 => self.value.to_be_bytes().to_vec(),
            _ => (self.value as u32).to_be_bytes().to_vec(),
        };
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The algorithm's storage tag.
    pub fn tag(&self) -> u8 {
        ALGORITHMS
            .iter()
            .find(|(_, algorithm, _)| *algorithm == self.algorithm)
            .map_or(0, |(_, _, tag)| *tag)
    }

    /// The algorithm a storage tag names.
    pub fn algorithm_of(tag: u8) -> Option<CrcAlgorithm> {
        ALGORITHMS
            .iter()
            .find(|(_, _, t)| *t == tag)
            .map(|(_, algorithm, _)| *algorithm)
    }
}

fn digest_len(algorithm: CrcAlgorithm) -> usize {
    match algorithm {
        CrcAlgorithm::Crc64Nvme => 8,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_combine_to_the_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for (_, algorithm, _) in ALGORITHMS {
            let whole = Crc::of(algorithm, &data);
            let (a, b) = data.split_at(65_536);
            let (b, c) = b.split_at(1);
            let combined = Crc::of(algorithm, a)
                .then(Crc::of(algorithm, b), b.len() as u64)
                .then(Crc::of(algorithm, c), c.len() as u64);
            assert_eq!(combined, whole, "{algorithm:?}");
            assert!(whole.matches(&data));
            let mut flipped = data.clone();
            flipped[70_000] ^= 0x10;
            assert!(!whole.matches(&flipped));
            assert_eq!(Crc::algorithm_of(whole.tag()), Some(algorithm));
        }
    }

    #[test]
    fn the_full_object_crc_is_read_as_s3_writes_it() {
        let data = b"hello, world";
        let crc = Crc::of(CrcAlgorithm::Crc32IsoHdlc, data);
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-checksum-crc32", crc.base64().parse().unwrap());
        assert_eq!(Crc::full_object(&headers), Some(crc));
        headers.insert("x-amz-checksum-type", "COMPOSITE".parse().unwrap());
        assert_eq!(Crc::full_object(&headers), None, "a composite covers parts");
        let mut wide = HeaderMap::new();
        let crc64 = Crc::of(CrcAlgorithm::Crc64Nvme, data);
        wide.insert("x-amz-checksum-crc64nvme", crc64.base64().parse().unwrap());
        wide.insert("x-amz-checksum-type", "FULL_OBJECT".parse().unwrap());
        assert_eq!(Crc::full_object(&wide), Some(crc64));
        let mut wrong = HeaderMap::new();
        wrong.insert("x-amz-checksum-crc64nvme", crc.base64().parse().unwrap());
        assert_eq!(Crc::full_object(&wrong), None, "a 4-byte digest in a CRC64 header");
    }
}
