//! Small system helpers that every layer may use: atomic files, sizes in bytes, YAML, JSON files, hashing,
//! host identity, plain file-name characters, the CA certificates TLS clients trust.

pub mod atomic;
pub mod bytes;
pub mod hash;
pub mod host;
pub mod json;
pub mod names;
pub mod trust;
pub mod yaml;
