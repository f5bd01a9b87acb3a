//! The `sdspool` subcommands.

pub mod bench;
pub mod check;
pub mod control;
pub mod import;
pub mod models;
pub mod reading;
pub mod render;
pub mod status;
pub mod submit;
