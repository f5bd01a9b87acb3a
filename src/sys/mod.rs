//! Small system helpers that every layer may use: atomic files, YAML, hashing.

pub mod atomic;
pub mod hash;
pub mod yaml;
