//! Reliability and hostile input (issues 6 and 17): crash storms (also with two daemons, one
//! killed for good), kills from outside, job files edited while they run, hostile job files,
//! full and read-only disks, two daemons on one spool, broken model files, memory over many
//! jobs. Each test drives the real `sdspool run` binary on a temporary spool. The small versions
//! run in CI; the full ones are `#[ignore]`d (see the README's Reliability section for the
//! commands and figures).

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod edits;
mod hostile;
mod kills;
mod memory;
mod models;
mod shared;
mod storage;
mod storm;
