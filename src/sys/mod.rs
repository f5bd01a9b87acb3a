//! Small system helpers that every layer may use: atomic files, sizes in bytes, YAML, hashing,
//! host identity.

pub mod atomic;
pub mod bytes;
pub mod hash;
pub mod host;
pub mod yaml;
