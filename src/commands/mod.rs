//! The `sdspool` subcommands.

pub mod check;
pub mod models;
pub mod render;
pub mod status;
pub mod submit;
