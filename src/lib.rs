//! sdspool: a spool daemon for overnight bulk Stable Diffusion rendering.
//!
//! The data path, module by module:
//! job file -> claim -> prompts -> [`tokenizer`] -> text embeddings -> [`scheduler`] denoising loop
//! (initial latents from [`noise`]) -> VAE -> images -> CLIP scores -> outputs -> done.
//!
//! [`runtime`] finds and loads ONNX Runtime and picks execution providers; [`model`] opens and
//! validates Stable Diffusion model folders as Hugging Face optimum exports them; [`config`] reads
//! `config.yaml`.

pub mod commands;
pub mod config;
pub mod daemon;
pub mod eta;
pub mod hash;
pub mod job;
pub mod jobrun;
pub mod logging;
pub mod model;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod prompt;
pub mod rerank;
pub mod runtime;
pub mod scheduler;
pub mod spool;
pub mod tokenizer;
pub mod yaml;
