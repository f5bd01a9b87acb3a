//! The top layer: the command line (`commands`), the daemon (`daemon`), the configuration file
//! that composes every layer's section (`config`) and log setup (`logging`).

pub mod commands;
pub mod config;
pub mod daemon;
pub mod importer;
pub mod logging;
pub mod web;
pub mod worker_state;
