//! The engine: model folders and families (`model`), the pipeline (`pipeline`: conditioning,
//! denoising, VAE decoding), schedulers, seeded noise, the CLIP tokenizer and CLIP reranking.

pub mod model;
pub mod noise;
pub mod pipeline;
pub mod rerank;
pub mod scheduler;
pub mod tokenizer;
