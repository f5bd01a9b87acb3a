//! Small system helpers that every layer may use: atomic files, sizes in bytes, YAML, hashing,
//! host identity, plain file-name characters, the CA certificates TLS clients trust.

pub mod atomic;
pub mod bytes;
pub mod hash;
pub mod host;
pub mod names;
pub mod trust;
pub mod yaml;
