//! What a peer sends (after its signature is checked): any bytes decode or are
//! refused, never a panic; what decodes encodes to a request that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s3_accel::peers::protocol::{ChunkRequest, ObjectNote};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ChunkRequest::decode(data) {
        assert_eq!(ChunkRequest::decode(&request.encode()).unwrap(), request);
        assert!(request.length() > 0);
    }
    if let Ok(note) = ObjectNote::decode(data) {
        assert_eq!(ObjectNote::decode(&note.encode()).unwrap(), note);
    }
});
