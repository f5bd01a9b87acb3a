//! Small system helpers that every layer may use: atomic files, YAML, hashing, host identity.

pub mod atomic;
pub mod hash;
pub mod host;
pub mod yaml;
