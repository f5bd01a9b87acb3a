//! sdspool: a spool daemon for overnight bulk Stable Diffusion rendering.
//!
//! Layers, each importing only the ones below it (checked by `tests/architecture.rs`):
//!
//! ```text
//! app      command line, daemon, config.yaml          (commands, daemon, config, logging)
//!  |
//! jobs     one job: file -> plan -> render -> outputs (job, run, output, eta)
//!  |         \
//! engine    \  model folders and families, pipeline, schedulers, noise, tokenizer, rerank
//!  |         spool   incoming/running/done/failed, claims (uses sys only)
//! runtime  ONNX Runtime: library, providers, sessions, signatures, tensors
//!  |
//! sys      atomic files, YAML, hashing
//! ```
//!
//! The data path, module by module: job file ([`jobs::job`]) -> claim ([`spool`]) -> prompts
//! and plan ([`jobs::run`]) -> conditioning ([`engine::pipeline`], [`engine::tokenizer`]) ->
//! denoising ([`engine::scheduler`], initial latents from [`engine::noise`]) -> VAE -> images ->
//! CLIP scores ([`engine::rerank`]) -> outputs ([`jobs::output`]) -> done ([`spool`]).

pub mod app;
pub mod engine;
pub mod jobs;
pub mod runtime;
pub mod spool;
pub mod sys;
