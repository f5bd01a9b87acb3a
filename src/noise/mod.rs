//! Seeded initial latents and per-step noise.
