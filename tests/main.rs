//! Integration tests: a real S3 origin (s3s-fs, SigV4 on) and s3-accel, both
//! in-process on loopback ports.

mod admission;
mod budget;
mod cache;
mod credentials;
mod faults;
mod front;
mod grants;
mod hostile;
mod hosts;
mod ops;
mod peers;
mod pins;
mod prefetch;
mod reads;
mod streaming;
mod support;
