//! A real S3 origin in-process for s3-accel's tests and its bench: s3s-fs with
//! SigV4 authentication, behind a layer that counts what it is asked and what it
//! sends, answers conditionals as production origins do, cuts fills on purpose,
//! and can be shaped like a far region (round-trip time, bandwidth caps).

pub mod access;
pub mod dns;
pub mod keys;
pub mod netns;
pub mod origin;
pub mod shaping;
pub mod signing;

pub use origin::{Origin, OriginOptions, OriginStats};
pub use shaping::Shaping;
pub use signing::{sign_request, Credentials, Signing};

/// Deterministic pseudo-random bytes, so every object has distinct content.
pub fn object_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data);
    data
}

/// The CRC32 of `data` as S3 writes it in `x-amz-checksum-crc32`: base64 of the
/// big-endian digest.
pub fn crc32_base64(data: &[u8]) -> String {
    let mut hasher = s3s::checksum::ChecksumHasher {
        crc32: Some(Default::default()),
        ..Default::default()
    };
    hasher.update(data);
    hasher.finalize().checksum_crc32.expect("crc32 was asked for")
}
