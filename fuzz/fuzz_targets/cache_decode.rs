//! Cache entries read back from disk: any bytes decode or are refused, never a
//! panic or a huge allocation; what decodes encodes back to itself.
#![no_main]

use foyer::Code;
use libfuzzer_sys::fuzz_target;
use s3_accel::cache::{CacheKey, CacheValue};

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = CacheKey::decode(&mut &data[..]) {
        let mut encoded = Vec::new();
        key.encode(&mut encoded).unwrap();
        assert_eq!(CacheKey::decode(&mut encoded.as_slice()).unwrap(), key);
    }
    if let Ok(value) = CacheValue::decode(&mut &data[..]) {
        let mut encoded = Vec::new();
        value.encode(&mut encoded).unwrap();
        let again = CacheValue::decode(&mut encoded.as_slice()).unwrap();
        let mut twice = Vec::new();
        again.encode(&mut twice).unwrap();
        assert_eq!(encoded, twice);
    }
});
