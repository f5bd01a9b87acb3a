//! A port of torch's CPU generator (`torch.Generator("cpu")`) and of `torch.randn` for float32.
//!
//! **Why hand-written, not a random-number crate.** A seed means a picture only through the
//! exact stream torch draws from it: MT19937 as torch seeds and splits it, its Box–Muller
//! ordering (16-element chunks, a fresh overlapping tail, the double-precision path below 16
//! elements) and its vectorised `ln`/`sincos` approximations. `rand`/`rand_distr` normals
//! (Ziggurat) or a textbook Box–Muller give other latents for the same seed, so other images
//! than diffusers gives; every bit here is pinned by `tests/noise_parity.rs`.

use ndarray::{ArrayD, IxDyn};

use super::avx_math;
use super::mt19937::Mt19937;

/// Number of elements at and above which torch samples float32 normals with its vectorised
/// Box–Muller path; below it, one double-precision normal at a time.
pub const VECTORISED_MIN_NUMEL: usize = 16;

/// `2π` as torch's AVX2 kernel holds it: `_mm256_set1_ps(2.0f * c10::pi<double>)`.
const TWO_PI_F32: f32 = (2.0 * std::f64::consts::PI) as f32;

/// Bit-exact port of `torch.Generator("cpu")` and `torch.randn(..., dtype=torch.float32)`.
///
/// `TorchCpuRng::new(seed)` corresponds to `torch.Generator("cpu").manual_seed(seed)`, and each
/// [`randn`](Self::randn) call to one `torch.randn(shape, generator=g)` on that generator,
/// including the state a call leaves for the next one. torch 2.15 on x86-64 with AVX2
/// (which includes every AVX-512 machine: torch does not dispatch `normal` to its AVX-512
/// kernels) produces exactly these values.
///
/// # The algorithm
///
/// * **Engine.** MT19937, seeded by the classic `init_genrand` with the low 32 bits of the
///   seed; seeds that agree modulo 2^32 give the same stream.
///   `random()` is one 32-bit output; `random64()` is two, the first in the high half.
/// * **Tensors of `n >= 16` elements** (`normal_fill_AVX2`): first `n` float uniforms
///   `u = (random() & 0xFF_FFFF) · 2^-24` fill the output. Then each complete chunk of 16
///   (elements `16k .. 16k+16`) is transformed in place with Box–Muller: for `j` in `0..8`,
///   `r = sqrt(-2 · ln(1 - u[j]))`, `θ = 2π · u[j+8]`, `out[j] = r · cos θ`,
///   `out[j+8] = r · sin θ`, all in `f32`, with the Cephes-derived approximations of `ln` and
///   `sincos` from torch's `avx_mathfun.h` (ported in the private `avx_math` module). If
///   `n % 16 != 0`, 16 **fresh** uniforms overwrite the last 16 elements (which overlap the
///   last complete chunk) and that window is transformed again, so the call consumes `n + 16`
///   outputs of the engine.
/// * **Tensors of `n < 16` elements** (`normal_distribution<double>`): each element is one
///   double-precision Box–Muller normal, `u1, u2 = (random64() & (2^53 - 1)) · 2^-53`,
///   `r = sqrt(-2 · ln_1p(-u2))`, `θ = 2π · u1`; the element is `(r · cos θ) as f32` and
///   `r · sin θ` is cached in the generator. The next element drawn on this path, in this call or
///   a later one, takes the cached value instead of drawing. The vectorised path neither uses
///   nor clears that cache, so it survives large draws in between, as in torch.
///
/// The vectorised path is pure IEEE-754 `f32` arithmetic, identical on every platform. The
/// small-tensor path calls the platform's `f64` `ln_1p`, `sin` and `cos`, as torch does; on
/// Linux both use glibc's and agree bit for bit. Latents are never that small.
///
/// # Verification
///
/// `tests/noise_parity.rs` compares, bit for bit, draws that torch 2.15 made for several seeds
/// (0 to 2^64 - 1), shapes on every branch (0, 1, 15, 16, 17, 33, 105, 256, 324, 512 and 16384
/// elements), ancestral-sampler sequences of draws on one generator and mixed small and large
/// draws. A unit test checks the float32 transform for each of the 2^24 possible uniforms
/// against tables made by torch's kernel.
///
/// torch's other CPU paths are not reproduced: builds without AVX2 (the `DEFAULT` CPU
/// capability, e.g. aarch64 or `ATEN_CPU_CAPABILITY=default`) use the C library's `logf`,
/// `cosf` and `sinf` in the vectorised path and differ from this in the last bits of some
/// values; CUDA generators use Philox and are unrelated.
#[derive(Clone, Debug)]
pub struct TorchCpuRng {
    engine: Mt19937,
    seed: u64,
    /// `CPUGeneratorImpl::next_double_normal_sample_`.
    next_double_normal: Option<f64>,
}

impl TorchCpuRng {
    /// `torch.Generator("cpu").manual_seed(seed)`. torch accepts seeds in `[-2^63, 2^64)`; a
    /// negative Python seed `s` is the same generator as `s as u64` (two's complement).
    pub fn new(seed: u64) -> Self {
        TorchCpuRng {
            engine: Mt19937::new(seed),
            seed,
            next_double_normal: None,
        }
    }

    /// The seed this generator was created with (`Generator.initial_seed()`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// One 32-bit output of the engine (`CPUGeneratorImpl::random`).
    pub fn random(&mut self) -> u32 {
        self.engine.next_u32()
    }

    /// Two 32-bit outputs, the first in the high half (`CPUGeneratorImpl::random64`).
    pub fn random64(&mut self) -> u64 {
        let hi = self.random() as u64;
        let lo = self.random() as u64;
        (hi << 32) | lo
    }

    /// `at::uniform_real_distribution<float>(0, 1)`: 24 random bits scaled to `[0, 1)`.
    fn uniform_f32(&mut self) -> f32 {
        (self.random() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `at::uniform_real_distribution<double>(0, 1)`: 53 random bits scaled to `[0, 1)`.
    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>(0, 1)` with the generator's cached second sample.
    fn normal_f64(&mut self) -> f64 {
        let value = match self.next_double_normal.take() {
            Some(cached) => cached,
            None => {
                let u1 = self.uniform_f64();
                let u2 = self.uniform_f64();
                let r = (-2.0 * (-u2).ln_1p()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u1;
                self.next_double_normal = Some(r * theta.sin());
                r * theta.cos()
            }
        };
        // transformation::normal(value, mean = 0, std = 1): also turns -0.0 into +0.0.
        value * 1.0 + 0.0
    }

    /// Fills `out` with standard normals exactly as `torch.randn(out.len(), generator=g)` does
    /// (a tensor of any shape with that many elements draws the same values in row-major order).
    pub fn randn_into(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < VECTORISED_MIN_NUMEL {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        for chunk in out.chunks_exact_mut(16) {
            box_muller_16(chunk);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
    }

    /// `torch.randn(shape, generator=g, dtype=torch.float32)`.
    ///
    /// # Panics
    ///
    /// If the number of elements overflows `usize`.
    pub fn randn(&mut self, shape: &[usize]) -> ArrayD<f32> {
        let numel = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .expect("randn: shape has more elements than fit in usize");
        let mut data = vec![0.0f32; numel];
        self.randn_into(&mut data);
        ArrayD::from_shape_vec(IxDyn(shape), data).expect("numel matches the shape")
    }
}

/// `normal_fill_16_AVX2` with mean 0 and std 1: Box–Muller over 8 pairs `(d[j], d[j + 8])` of
/// uniforms in `[0, 1)`.
fn box_muller_16(d: &mut [f32]) {
    debug_assert_eq!(d.len(), 16);
    for j in 0..8 {
        let radius = radius(d[j]);
        let (sin, cos) = angle(d[j + 8]);
        // torch stores fmadd(n, std, mean) = n * 1 + 0: exact, except that -0.0 becomes +0.0.
        d[j] = radius * cos + 0.0;
        d[j + 8] = radius * sin + 0.0;
    }
}

/// The Box–Muller radius `sqrt(-2 ln(1 - u))` of torch's AVX2 kernel.
#[inline]
fn radius(u: f32) -> f32 {
    (-2.0 * avx_math::ln(1.0 - u)).sqrt()
}

/// `(sin θ, cos θ)` with `θ = 2π · u` as torch's AVX2 kernel computes them.
#[inline]
fn angle(u: f32) -> (f32, f32) {
    avx_math::sin_cos(TWO_PI_F32 * u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorised_path_consumes_n_plus_16_outputs_when_n_is_not_a_multiple_of_16() {
        for (n, used) in [(16usize, 16usize), (17, 33), (32, 32), (33, 49), (100, 116)] {
            let mut a = TorchCpuRng::new(9);
            let mut out = vec![0.0; n];
            a.randn_into(&mut out);
            let mut b = TorchCpuRng::new(9);
            for _ in 0..used {
                b.random();
            }
            assert_eq!(a.random(), b.random(), "n = {n}");
        }
    }

    #[test]
    fn scalar_path_caches_the_second_normal() {
        // 3 elements = 2 Box–Muller pairs = 8 engine outputs, one normal left in the cache.
        let mut a = TorchCpuRng::new(5);
        let mut three = [0.0f32; 3];
        a.randn_into(&mut three);
        let mut b = TorchCpuRng::new(5);
        let mut four = [0.0f32; 4];
        b.randn_into(&mut four);
        assert_eq!(
            three.map(f32::to_bits),
            [four[0], four[1], four[2]].map(f32::to_bits)
        );
        // The next scalar draw on `a` is the cached fourth value and draws nothing.
        let mut one = [0.0f32; 1];
        a.randn_into(&mut one);
        assert_eq!(one[0].to_bits(), four[3].to_bits());
        assert_eq!(a.random(), b.random());
    }

    #[test]
    fn empty_draw_changes_nothing() {
        let mut a = TorchCpuRng::new(1);
        assert_eq!(a.randn(&[0, 4]).len(), 0);
        let mut b = TorchCpuRng::new(1);
        assert_eq!(a.randn(&[5]), b.randn(&[5]));
    }

    #[derive(serde::Deserialize)]
    struct Tables {
        k_unit: u32,
        chunk: usize,
        spot_k: Vec<u32>,
        spot_radius_bits: Vec<u32>,
        spot_cos_bits: Vec<u32>,
        spot_sin_bits: Vec<u32>,
        radius_fnv: Vec<u64>,
        cos_fnv: Vec<u64>,
        sin_fnv: Vec<u64>,
    }

    fn uniform(k: u32) -> f32 {
        k as f32 * (1.0 / 16_777_216.0)
    }

    /// What torch's kernel outputs for one pair of uniforms `(k1, k2) / 2^24`: the first and
    /// second element of the pair.
    fn pair(k1: u32, k2: u32) -> (u32, u32) {
        let mut d = [0.0f32; 16];
        d[0] = uniform(k1);
        d[8] = uniform(k2);
        box_muller_16(&mut d);
        (d[0].to_bits(), d[8].to_bits())
    }

    fn fnv1a64(h: u64, w: u32) -> u64 {
        (h ^ w as u64).wrapping_mul(0x0000_0100_0000_01b3)
    }

    /// Every one of the 2^24 possible uniforms through the radius, cosine and sine of the
    /// vectorised path, against torch (`tests/golden/noise/box_muller_tables.json`, written by
    /// `onnx/golden_noise.py` from torch's own kernel). The end-to-end goldens cannot see a
    /// difference that occurs for one input in millions; this test sees every input.
    #[test]
    fn box_muller_matches_torch_for_every_uniform() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/noise/box_muller_tables.json"
        );
        let text = std::fs::read_to_string(path).expect("golden tables (onnx/golden_noise.py)");
        let t: Tables = serde_json::from_str(&text).expect("golden tables parse");
        let chunks = (1usize << 24) / t.chunk;
        assert_eq!(
            [t.radius_fnv.len(), t.cos_fnv.len(), t.sin_fnv.len()],
            [chunks; 3]
        );
        // The tables rely on cos(0) = 1 and on a radius of exactly 1.
        assert_eq!(angle(0.0), (0.0, 1.0));
        assert_eq!(radius(uniform(t.k_unit)), 1.0);

        // radius[k] is the first output for the pair (k, 0); cos[k] and sin[k] are the outputs
        // for (k_unit, k). Spot values go through box_muller_16 itself.
        let mut failures = Vec::new();
        for (i, &k) in t.spot_k.iter().enumerate() {
            let (r, _) = pair(k, 0);
            let (c, s) = pair(t.k_unit, k);
            let want = (
                t.spot_radius_bits[i],
                t.spot_cos_bits[i],
                t.spot_sin_bits[i],
            );
            if (r, c, s) != want {
                failures.push(format!(
                    "k {k}: (radius, cos, sin) bits {:?}, torch {want:?}",
                    (r, c, s)
                ));
            }
        }
        // The full domain is 3 · 2^24 values: use both cores.
        let hashes: Vec<(usize, [u64; 3])> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    let (k_unit, chunk) = (t.k_unit, t.chunk);
                    scope.spawn(move || {
                        (w..chunks)
                            .step_by(2)
                            .map(|c| {
                                let mut h = [0xcbf2_9ce4_8422_2325u64; 3];
                                let unit = radius(uniform(k_unit));
                                for k in (c * chunk) as u32..((c + 1) * chunk) as u32 {
                                    // The arithmetic of box_muller_16, without the copies.
                                    let r = radius(uniform(k)) * 1.0 + 0.0;
                                    let (s, co) = angle(uniform(k));
                                    h[0] = fnv1a64(h[0], r.to_bits());
                                    h[1] = fnv1a64(h[1], (unit * co + 0.0).to_bits());
                                    h[2] = fnv1a64(h[2], (unit * s + 0.0).to_bits());
                                }
                                (c, h)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        for (c, h) in hashes {
            let want = [t.radius_fnv[c], t.cos_fnv[c], t.sin_fnv[c]];
            for (name, (got, want)) in ["radius", "cos", "sin"].iter().zip(h.iter().zip(want)) {
                if *got != want {
                    failures.push(format!(
                        "{name} differs from torch for some k in {}..{}",
                        c * t.chunk,
                        (c + 1) * t.chunk
                    ));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn values_look_standard_normal() {
        let mut g = TorchCpuRng::new(2024);
        let x = g.randn(&[1, 4, 64, 64]);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        assert!(x.iter().all(|v| v.is_finite()));
    }
}
