//! The `sdspool` subcommands.

pub mod models;
