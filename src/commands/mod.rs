//! The `sdspool` subcommands.

pub mod models;
pub mod render;
