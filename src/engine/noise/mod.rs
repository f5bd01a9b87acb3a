//! Seeded initial latents and per-step noise.
//!
//! One [`NoiseGenerator`] per candidate image draws that candidate's initial latents and then,
//! for ancestral schedulers, its per-step noise, in that order, from the same generator.
//!
//! # Reproducing diffusers
//!
//! With [`RngKind::TorchCpu`] (the default), `NoiseGenerator::new(RngKind::TorchCpu, seed)`
//! is `torch.Generator("cpu").manual_seed(seed)`, and every `randn(shape)` call returns bit for
//! bit what `torch.randn(shape, generator=g, dtype=torch.float32)` returns on that generator
//! (torch 2.15 on x86-64 with AVX2 or AVX-512; details and limits in [`TorchCpuRng`]).
//! So a diffusers pipeline run with `generator=torch.Generator("cpu").manual_seed(seed)` starts
//! from the same latents, and an ancestral sampler (Euler a, DPM++ 2S a, ...) that draws its
//! step noise from that generator gets the same noise, provided the draws happen in the same
//! order with the same shapes.
//!
//! Two diffusers conventions give different latents for a batch:
//!
//! * **one generator for the batch**: `randn_tensor([batch, 4, h, w], generator=g)` is a single
//!   draw of `batch · 4 · h · w` values; candidate `i` gets the `i`-th slice. Reproduce it with
//!   one generator and one `randn(&[batch, 4, h, w])` call.
//! * **a list of generators**, one per image: `randn_tensor` draws `[1, 4, h, w]` from each
//!   generator and concatenates. "Candidate `i` uses seed + i" is this convention,
//!   `generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(n)]`: the pipeline
//!   creates [`NoiseGenerator::for_candidate`]`(kind, seed, i)` for each candidate and draws
//!   `randn(&[1, 4, h, w])` from it, then its step noise with shape `[1, 4, h, w]`. A
//!   candidate's image then does not depend on how many candidates share its batch.
//!
//! The initial latents are the standard normals returned here; the scheduler multiplies them by
//! its `init_noise_sigma`.

mod avx_math;
mod mt19937;
pub mod philox;
mod torch_cpu;
pub mod variation;

use std::fmt;
use std::str::FromStr;

use ndarray::ArrayD;

pub use torch_cpu::{TorchCpuRng, VECTORISED_MIN_NUMEL};

/// Which random number generator produces the noise.
///
/// Parsed from (and displayed as) the strings `"torch_cpu"` and `"philox"`; other generators
/// may be added later, hence `#[non_exhaustive]`. `philox` is torch's CUDA generator
/// (AUTOMATIC1111's "GPU" seeds), ported in [`philox`] and checked bit for bit against torch up
/// to its last step, the GPU's hardware sine and cosine, which it computes accurately instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RngKind {
    /// torch's CPU generator: MT19937 with torch's normal sampling ([`TorchCpuRng`]); seeds
    /// reproduce diffusers' `generator=torch.Generator("cpu").manual_seed(seed)`.
    #[default]
    TorchCpu,
    /// torch's CUDA generator ([`philox::TorchCudaRng`], AUTOMATIC1111's "GPU" seeds and its
    /// "NV" source) with accurate sines and cosines: its normals to about 1e-6.
    Philox,
}

impl RngKind {
    /// Every kind, in the order they are documented.
    pub const ALL: &'static [RngKind] = &[RngKind::TorchCpu, RngKind::Philox];

    /// The name used in configuration files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RngKind::TorchCpu => "torch_cpu",
            RngKind::Philox => "philox",
        }
    }
}

impl fmt::Display for RngKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown [`RngKind`] name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown random number generator {name:?}; supported: torch_cpu, philox{}", if name == "torch_cuda" || name == "gpu" || name == "nv" {
    " (philox is AUTOMATIC1111's GPU and NV seeds, torch's CUDA generator)"
} else {
    ""
})]
pub struct ParseRngKindError {
    /// The name that was given.
    pub name: String,
}

impl FromStr for RngKind {
    type Err = ParseRngKindError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RngKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| ParseRngKindError { name: s.to_owned() })
    }
}

impl serde::Serialize for RngKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for RngKind {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// The noise source of one candidate: a seeded generator that draws standard normal tensors.
///
/// Successive [`randn`](Self::randn) calls continue the same stream, as successive
/// `torch.randn` calls on one `torch.Generator` do.
#[derive(Clone, Debug)]
pub struct NoiseGenerator {
    kind: RngKind,
    inner: Inner,
}

#[derive(Clone, Debug)]
enum Inner {
    /// Boxed: its MT19937 state is 2.5 KB, the Philox generator's a few words.
    TorchCpu(Box<TorchCpuRng>),
    Philox(philox::TorchCudaRng),
}

impl NoiseGenerator {
    /// A generator of `kind` seeded with `seed`. For [`RngKind::TorchCpu`] this is
    /// `torch.Generator("cpu").manual_seed(seed)`; only the low 32 bits of the seed matter.
    pub fn new(kind: RngKind, seed: u64) -> Self {
        let inner = match kind {
            RngKind::TorchCpu => Inner::TorchCpu(Box::new(TorchCpuRng::new(seed))),
            RngKind::Philox => {
                Inner::Philox(philox::TorchCudaRng::new(seed, philox::CudaGrid::H100_SXM))
            }
        };
        NoiseGenerator { kind, inner }
    }

    /// The generator of candidate `index` of a job with base seed `base_seed`: seed
    /// `base_seed + index` (wrapping at 2^64), the `[manual_seed(seed + i) for i in ...]`
    /// convention described in the [module documentation](self).
    pub fn for_candidate(kind: RngKind, base_seed: u64, index: u64) -> Self {
        NoiseGenerator::new(kind, base_seed.wrapping_add(index))
    }

    /// The kind of generator.
    pub fn kind(&self) -> RngKind {
        self.kind
    }

    /// The seed the generator was created with.
    pub fn seed(&self) -> u64 {
        match &self.inner {
            Inner::TorchCpu(rng) => rng.seed(),
            Inner::Philox(rng) => rng.seed(),
        }
    }

    /// Draws a tensor of standard normals with `shape` (row-major), continuing the stream.
    ///
    /// # Panics
    ///
    /// If the number of elements overflows `usize`.
    pub fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        match &mut self.inner {
            Inner::TorchCpu(rng) => rng.randn(shape),
            Inner::Philox(rng) => rng.randn(shape),
        }
    }

    /// Fills `out` with standard normals, as [`randn`](Self::randn) with `out.len()` elements.
    pub fn randn_into(&mut self, out: &mut [f32]) {
        match &mut self.inner {
            Inner::TorchCpu(rng) => rng.randn_into(out),
            Inner::Philox(rng) => rng.randn_into(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_kind_parses_and_displays() {
        assert_eq!("torch_cpu".parse::<RngKind>(), Ok(RngKind::TorchCpu));
        assert_eq!(RngKind::default(), RngKind::TorchCpu);
        assert_eq!(RngKind::TorchCpu.to_string(), "torch_cpu");
        let err = "native".parse::<RngKind>().unwrap_err();
        assert_eq!(err.name, "native");
        assert!(err.to_string().contains("torch_cpu"));
        assert_eq!("philox".parse::<RngKind>(), Ok(RngKind::Philox));
        assert_eq!(RngKind::Philox.to_string(), "philox");
        let gpu = "torch_cuda".parse::<RngKind>().unwrap_err().to_string();
        assert!(gpu.contains("philox") && gpu.contains("GPU"), "{gpu}");
        assert!("Torch_CPU".parse::<RngKind>().is_err());
    }

    #[test]
    fn rng_kind_serde_round_trip() {
        let json = serde_json::to_string(&RngKind::TorchCpu).unwrap();
        assert_eq!(json, "\"torch_cpu\"");
        assert_eq!(
            serde_json::from_str::<RngKind>(&json).unwrap(),
            RngKind::TorchCpu
        );
        assert_eq!(
            serde_json::from_str::<RngKind>("\"philox\"").unwrap(),
            RngKind::Philox
        );
        assert!(serde_json::from_str::<RngKind>("\"philox9\"").is_err());
    }

    #[test]
    fn generators_continue_their_stream_and_candidates_differ() {
        let mut a = NoiseGenerator::new(RngKind::TorchCpu, 7);
        let first = a.randn(&[1, 4, 8, 8]);
        let second = a.randn(&[1, 4, 8, 8]);
        assert_ne!(first, second);
        assert_eq!(first.shape(), &[1, 4, 8, 8]);
        let mut b = NoiseGenerator::for_candidate(RngKind::TorchCpu, 6, 1);
        assert_eq!(b.seed(), 7);
        assert_eq!(b.randn(&[1, 4, 8, 8]), first);
        let mut c = NoiseGenerator::for_candidate(RngKind::TorchCpu, 6, 0);
        assert_ne!(c.randn(&[1, 4, 8, 8]), first);
        assert_eq!(
            NoiseGenerator::for_candidate(RngKind::TorchCpu, u64::MAX, 1).seed(),
            0
        );
    }
}
