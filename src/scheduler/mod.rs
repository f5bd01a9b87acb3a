//! Diffusion schedulers, numerically matching Hugging Face diffusers.
