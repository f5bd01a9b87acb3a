//! The engine: model folders and families (`model`), the pipeline (`pipeline`: conditioning,
//! denoising, VAE decoding), schedulers, seeded noise, the CLIP tokenizer, AUTOMATIC1111
//! prompt reading (`prompt`) and CLIP reranking.

pub mod checkpoint;
pub mod model;
pub mod noise;
pub mod pipeline;
pub mod prompt;
pub mod rerank;
pub mod scheduler;
pub mod tokenizer;
