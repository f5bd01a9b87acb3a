//! torch's CUDA generator, `torch.randn(shape, generator=torch.Generator("cuda").manual_seed(s))`:
//! Philox4x32-10 as curand runs it, in the layout of torch's normal kernel, and curand's
//! Box-Muller transform up to its last step.
//!
//! `rng: philox` ([`super::RngKind::Philox`]) uses it with [`accurate_trig`]: AUTOMATIC1111's
//! "GPU" seeds (and its "NV" source, the same stream computed on the CPU) to about 1e-6, the
//! standard AUTOMATIC1111's CPU port and stable-diffusion.cpp stop at (measured maximum in the
//! README, checked in `tests/philox_parity.rs`). Everything else here is checked bit for bit
//! against torch 2.11 on an H100 (goldens from `onnx/golden_philox.py`) except the sine and
//! cosine: curand's Box-Muller calls `__sincosf`, which the GPU computes on its special
//! function unit (`MUFU.SIN` / `MUFU.COS` of `t = v * (1/2pi)` rounded toward zero). Those results
//! are approximations whose bits NVIDIA does not specify. Measured on the H100 (the probe in
//! `philox_cuda.json`), they depend only on `t` cut to 25 fractional bits, so they are a table of
//! 2^25 values (128 MiB) or a hardware interpolation scheme nobody has published; an accurate
//! sine (`f64`, of `v`, of `t` or of the centre of `t`'s 2^-25 step) matches only 16 to 22 % of
//! the 18,968 fully stored goldens, off by up to 2.4e-7 to 6.3e-7 (up to thousands of ulps for
//! values near 0). So a port can reproduce torch's CUDA normals exactly only with the GPU's own
//! sine and cosine values; [`TorchCudaRng::randn_with`] takes them as a function. Bit-exactness
//! to that unit is not required (decided for AUTOMATIC1111's seeds): its own CPU generator stops
//! at the same place.
//!
//! # What torch does (`aten/src/ATen/native/cuda/DistributionTemplates.h`)
//!
//! A draw of `n` normals runs `grid = min(ceil(n / 256), SMs * (max threads per SM / 256))`
//! blocks of 256 threads (`T = 256 * grid` threads). Thread `i` calls
//! `curand_init(seed, subsequence = i, offset)`, `offset` being the generator's Philox offset,
//! then, `(n - 1) / (4 T) + 1` times, `curand_normal4`, whose four normals go to elements
//! `i + k T` (`k = 0..3`) of that round's block of `4 T` elements. The generator's offset then
//! grows by 4 per round. `curand_normal4` takes one Philox output (4 words): Box-Muller on
//! words 0 and 1 gives elements `k = 0` (sine) and `1` (cosine), on words 2 and 3 elements
//! `k = 2` and `3`. So while `n <= T` each element is the sine half of its own thread's first
//! output, and no GPU detail matters; beyond that the grid size (the GPU's number of SMs)
//! decides the layout.
//!
//! Box-Muller (`_curand_box_muller`): `u = x * 2^-32 + 2^-33`, `v = fma(y, 2pi * 2^-32,
//! pi * 2^-32)`, `s = sqrtf(-2 logf(u))` (libdevice's `logf`, ported in [`cuda_logf`]; `sqrtf`
//! correctly rounded), result `s * sin(v)` or `s * cos(v)`.

/// Philox4x32 round multipliers and key increments (Random123, curand).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;
/// Threads per block of torch's distribution kernels.
pub const BLOCK: u64 = 256;

/// Philox4x32-10 of a 128-bit counter and a 64-bit key.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        let p0 = u64::from(M0) * u64::from(ctr[0]);
        let p1 = u64::from(M1) * u64::from(ctr[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        ctr = [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0];
        if round < 9 {
            key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
        }
    }
    ctr
}

/// The largest grid torch launches on a GPU: `SMs * (max threads per SM / 256)` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaGrid {
    pub max_blocks: u64,
}

impl CudaGrid {
    /// An H100 SXM (132 SMs of 2048 threads), where the goldens were made.
    pub const H100_SXM: CudaGrid = CudaGrid {
        max_blocks: 132 * 8,
    };

    /// Threads of the launch for `n` elements.
    pub fn threads(self, n: u64) -> u64 {
        BLOCK * n.div_ceil(BLOCK).min(self.max_blocks).max(1)
    }
}

/// The Box-Muller inputs of one element: Philox words `x` (radius) and `y` (angle), and whether
/// the element is the cosine half of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    pub x: u32,
    pub y: u32,
    pub cosine: bool,
}

/// `torch.Generator("cuda").manual_seed(seed)` and its Philox offset.
#[derive(Debug, Clone)]
pub struct TorchCudaRng {
    seed: u64,
    offset: u64,
    grid: CudaGrid,
}

impl TorchCudaRng {
    /// A generator seeded like `manual_seed(seed)`, on a GPU with launch limits `grid`.
    pub fn new(seed: u64, grid: CudaGrid) -> TorchCudaRng {
        TorchCudaRng {
            seed,
            offset: 0,
            grid,
        }
    }

    /// `Generator.get_offset()`.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Philox output number `round` of thread `thread` for a draw starting at `offset`:
    /// curand's counter is `(offset / 4 + round)` in the low 64 bits and the thread (its
    /// subsequence) in the high 64 bits; the key is the seed.
    fn output(&self, offset: u64, thread: u64, round: u64) -> [u32; 4] {
        let low = offset / 4 + round;
        philox4x32_10(
            [
                low as u32,
                (low >> 32) as u32,
                thread as u32,
                (thread >> 32) as u32,
            ],
            [self.seed as u32, (self.seed >> 32) as u32],
        )
    }

    /// The Box-Muller inputs of every element of a draw of `n` normals, in index order, and
    /// the generator advanced past it (as `torch.randn` advances it).
    pub fn draw(&mut self, n: u64) -> Vec<Element> {
        let threads = self.grid.threads(n);
        let offset = self.offset;
        let rounds = if n == 0 {
            0
        } else {
            (n - 1) / (4 * threads) + 1
        };
        let mut out = Vec::with_capacity(n as usize);
        let mut cache: Option<(u64, u64, [u32; 4])> = None;
        for li in 0..n {
            let round = li / (4 * threads);
            let k = (li % (4 * threads)) / threads;
            let thread = li % threads;
            let words = match cache {
                Some((t, r, w)) if t == thread && r == round => w,
                _ => {
                    let w = self.output(offset, thread, round);
                    cache = Some((thread, round, w));
                    w
                }
            };
            let (x, y) = if k < 2 {
                (words[0], words[1])
            } else {
                (words[2], words[3])
            };
            out.push(Element {
                x,
                y,
                cosine: k % 2 == 1,
            });
        }
        if n > 0 {
            self.offset += 4 * rounds;
        }
        out
    }

    /// The seed it was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A draw of normals with `shape` (row-major) with accurate sines and cosines
    /// ([`accurate_trig`]): torch's CUDA normals to about 1e-6 (see the module documentation).
    pub fn randn(&mut self, shape: &[usize]) -> ndarray::ArrayD<f32> {
        let n: usize = shape.iter().product();
        let values = self.randn_with(n as u64, &mut accurate_trig);
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), values)
            .expect("n elements for the shape")
    }

    /// Fills `out` as [`randn`](Self::randn) with `out.len()` elements.
    pub fn randn_into(&mut self, out: &mut [f32]) {
        let values = self.randn_with(out.len() as u64, &mut accurate_trig);
        out.copy_from_slice(&values);
    }

    /// A draw of `n` normals with `trig(v, cosine)` for the sine or cosine of the angle `v`
    /// (the GPU's `__sinf(v)` / `__cosf(v)` reproduce torch exactly).
    pub fn randn_with(&mut self, n: u64, trig: &mut dyn FnMut(f32, bool) -> f32) -> Vec<f32> {
        self.draw(n)
            .into_iter()
            .map(|e| normal(e, trig(box_muller_angle(e.y), e.cosine)))
            .collect()
    }
}

/// The sine (or cosine) of the angle `v`, computed in f64 and rounded to f32: what
/// AUTOMATIC1111's "NV" generator (numpy) and stable-diffusion.cpp's port use in place of the
/// GPU's special-function-unit approximation.
pub fn accurate_trig(v: f32, cosine: bool) -> f32 {
    let v = f64::from(v);
    (if cosine { v.cos() } else { v.sin() }) as f32
}

/// The normal of element `e` given the sine (or cosine) of its angle: `s * trig`, through
/// torch's `rand * std + mean` with std 1 and mean 0 (which turns -0 into +0).
pub fn normal(e: Element, trig: f32) -> f32 {
    box_muller_radius(e.x) * trig + 0.0
}

/// `sqrtf(-2 logf(u))` with `u = x * 2^-32 + 2^-33`.
pub fn box_muller_radius(x: u32) -> f32 {
    let u = (x as f32).mul_add(f32::from_bits(0x2F80_0000), f32::from_bits(0x2F00_0000));
    (-2.0 * cuda_logf(u)).sqrt()
}

/// `v = fma(y, 2pi * 2^-32, pi * 2^-32)` (curand's `CURAND_2POW32_INV_2PI`, contracted).
pub fn box_muller_angle(y: u32) -> f32 {
    (y as f32).mul_add(f32::from_bits(0x30C9_0FDB), f32::from_bits(0x3049_0FDB))
}

/// What the GPU's `__sinf(v)` / `__cosf(v)` hand to the special function unit:
/// `v * 0.15915494` (1/2pi as a float) rounded toward zero.
pub fn sfu_argument(v: f32) -> f32 {
    let exact = f64::from(v) * f64::from(f32::from_bits(0x3E22_F983));
    let near = exact as f32;
    if f64::from(near).abs() > exact.abs() {
        f32::from_bits(near.to_bits() - 1)
    } else {
        near
    }
}

/// libdevice's `logf` (`__nv_logf`) as torch's sm_90 kernel runs it: `u = m * 2^e` with
/// `m` in [2/3, 4/3), `log(m)` from a degree-9 polynomial in `m - 1` by fused multiply-adds,
/// plus `e * ln 2`.
pub fn cuda_logf(a: f32) -> f32 {
    let normal = a >= f32::MIN_POSITIVE || a.is_nan();
    let (a, adjust) = if normal {
        (a, 0.0f32)
    } else {
        (a * 8_388_608.0, -23.0)
    };
    let ia = a.to_bits();
    let e = ia.wrapping_add(0xC0D5_5555) & 0xFF80_0000;
    let m = f32::from_bits(ia.wrapping_sub(e));
    let f = m - 1.0;
    let mut p = f.mul_add(-f32::from_bits(0x3E05_5027), f32::from_bits(0x3E10_39F6));
    for c in [
        0xBDF8_CDCC_u32,
        0x3E0F_2955,
        0xBE2A_D8B9,
        0x3E4C_ED0B,
        0xBE7F_FF22,
        0x3EAA_AA78,
        0xBF00_0000,
    ] {
        p = f.mul_add(p, f32::from_bits(c));
    }
    p *= f;
    p = f.mul_add(p, f);
    let exponent = (e as i32 as f32).mul_add(f32::from_bits(0x3400_0000), adjust);
    let mut r = exponent.mul_add(f32::from_bits(0x3F31_7218), p);
    if ia >= 0x7F80_0000 {
        r = a.mul_add(f32::INFINITY, f32::INFINITY);
    }
    if a == 0.0 { f32::NEG_INFINITY } else { r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_E8D5, 0xE169_C58D, 0xBC57_AC4C, 0x9B00_DBD8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408F_276D, 0x41C8_3B0E, 0xA20B_C7C6, 0x6D54_51FD]
        );
        assert_eq!(
            philox4x32_10(
                [0x243F_6A88, 0x85A3_08D3, 0x1319_8A2E, 0x0370_7344],
                [0xA409_3822, 0x299F_31D0]
            ),
            [0xD16C_FE09, 0x94FD_CCEB, 0x5001_E420, 0x2412_6EA1]
        );
    }

    #[test]
    fn logf_is_close_to_the_true_logarithm_and_handles_the_edges() {
        let mut x = 1e-38f32;
        while x < 1e38 {
            let want = f64::from(x).ln();
            let got = f64::from(cuda_logf(x));
            assert!(
                (got - want).abs() <= 2.0 * f64::from(f32::EPSILON) * want.abs().max(1.0),
                "{x}: {got} vs {want}"
            );
            x *= 1.37;
        }
        assert_eq!(cuda_logf(1.0), 0.0);
        assert_eq!(cuda_logf(0.0), f32::NEG_INFINITY);
        assert_eq!(cuda_logf(f32::INFINITY), f32::INFINITY);
        assert!(cuda_logf(-1.0).is_nan() && cuda_logf(f32::NAN).is_nan());
        // Subnormals are scaled up first.
        let tiny = f32::from_bits(1);
        assert!((f64::from(cuda_logf(tiny)) - f64::from(tiny).ln()).abs() < 1e-4);
    }

    #[test]
    fn the_sfu_argument_rounds_toward_zero() {
        for v in [1e-9f32, 0.1, 1.0, 3.0, 6.2] {
            let t = sfu_argument(v);
            let exact = f64::from(v) * f64::from(f32::from_bits(0x3E22_F983));
            assert!(f64::from(t) <= exact);
            assert!(f64::from(f32::from_bits(t.to_bits() + 1)) > exact);
        }
    }

    #[test]
    fn offsets_grow_by_four_per_round() {
        let mut g = TorchCudaRng::new(1, CudaGrid::H100_SXM);
        assert_eq!(g.draw(7).len(), 7);
        assert_eq!(g.offset(), 4);
        g.draw(0);
        assert_eq!(g.offset(), 4);
        // 1.44 M elements on an H100 (270,336 threads): two rounds.
        let threads = CudaGrid::H100_SXM.threads(1_440_000);
        assert_eq!(threads, 270_336);
        let mut g = TorchCudaRng::new(6, CudaGrid::H100_SXM);
        let e = g.draw(1_440_000);
        assert_eq!(g.offset(), 8);
        // Element 0 and element `threads` share thread 0's first output (sine, cosine).
        assert_eq!(
            (e[0].x, e[0].y),
            (e[threads as usize].x, e[threads as usize].y)
        );
        assert!(!e[0].cosine && e[threads as usize].cosine);
    }
}
