//! Bit-for-bit parity of `sdspool::engine::noise` with torch's CPU generator.
//!
//! The golden file is written by `onnx/golden_noise.py` from torch itself: for each case a
//! fresh `torch.Generator("cpu").manual_seed(seed)` and one or more successive
//! `torch.randn(shape, generator=g)` draws. Every draw is compared as f32 bit patterns.

use std::path::PathBuf;

use sdspool::engine::noise::{NoiseGenerator, RngKind, TorchCpuRng};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    torch_version: String,
    edge: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    seed: u64,
    draws: Vec<Draw>,
}

#[derive(Deserialize)]
struct Draw {
    shape: Vec<usize>,
    numel: usize,
    bits: Option<Vec<u32>>,
    head_bits: Option<Vec<u32>>,
    tail_bits: Option<Vec<u32>>,
    sum_f64_bits: Option<u64>,
    fnv1a64: Option<u64>,
}

fn load() -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/noise/randn.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run onnx/golden_noise.py)", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fnv1a64(bits: &[u32]) -> u64 {
    bits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &w| {
        (h ^ w as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Compares `got` with `want` element by element, recording mismatches as readable lines.
fn compare_bits(what: &str, got: &[u32], want: &[u32], offset: usize, failures: &mut Vec<String>) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            failures.push(format!(
                "{what} element {}: got {} ({g:#010x}), torch {} ({w:#010x})",
                offset + i,
                f32::from_bits(g),
                f32::from_bits(w),
            ));
        }
    }
}

/// Checks one draw; returns the number of values compared bit for bit.
fn check_draw(
    what: &str,
    got: &[f32],
    draw: &Draw,
    edge: usize,
    failures: &mut Vec<String>,
) -> usize {
    let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    if bits.len() != draw.numel {
        failures.push(format!(
            "{what}: {} values, torch {}",
            bits.len(),
            draw.numel
        ));
        return 0;
    }
    if let Some(want) = &draw.bits {
        compare_bits(what, &bits, want, 0, failures);
        return want.len();
    }
    let (head, tail) = (draw.head_bits.as_ref(), draw.tail_bits.as_ref());
    let (head, tail) = (head.expect("head_bits"), tail.expect("tail_bits"));
    assert_eq!(
        (head.len(), tail.len()),
        (edge, edge),
        "{what}: golden edge length"
    );
    compare_bits(what, &bits[..edge], head, 0, failures);
    compare_bits(
        what,
        &bits[bits.len() - edge..],
        tail,
        bits.len() - edge,
        failures,
    );
    let sum = got.iter().fold(0.0f64, |s, &v| s + v as f64);
    let want_sum = draw.sum_f64_bits.expect("sum_f64_bits");
    if sum.to_bits() != want_sum {
        failures.push(format!(
            "{what}: f64 sum {sum}, torch {}",
            f64::from_bits(want_sum)
        ));
    }
    let hash = fnv1a64(&bits);
    if hash != draw.fnv1a64.expect("fnv1a64") {
        failures.push(format!(
            "{what}: FNV-1a of all {} values differs",
            bits.len()
        ));
    }
    bits.len()
}

fn report(failures: &[String], context: &str) {
    if !failures.is_empty() {
        let shown: Vec<&str> = failures.iter().take(40).map(String::as_str).collect();
        panic!(
            "{} mismatches with torch ({context}); first ones:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
}

#[test]
fn noise_generator_matches_torch_randn_bit_for_bit() {
    let golden = load();
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut draws = 0;
    for case in &golden.cases {
        let mut generator = NoiseGenerator::new(RngKind::TorchCpu, case.seed);
        for (d, draw) in case.draws.iter().enumerate() {
            let what = format!(
                "case {:?} (seed {}) draw {d} shape {:?}",
                case.name, case.seed, draw.shape
            );
            let tensor = generator.randn(&draw.shape);
            assert_eq!(tensor.shape(), draw.shape.as_slice(), "{what}: shape");
            let values: Vec<f32> = tensor.iter().copied().collect();
            compared += check_draw(&what, &values, draw, golden.edge, &mut failures);
            draws += 1;
        }
    }
    report(&failures, &golden.torch_version);
    // Guard against a truncated golden file silently passing.
    assert!(
        golden.cases.len() >= 90,
        "only {} cases",
        golden.cases.len()
    );
    assert!(compared >= 10_000, "only {compared} values compared");
    assert!(draws >= 120, "only {draws} draws");
}

#[test]
fn golden_covers_every_sampling_branch() {
    let golden = load();
    let numels: Vec<usize> = golden
        .cases
        .iter()
        .flat_map(|c| c.draws.iter().map(|d| d.numel))
        .collect();
    assert!(numels.contains(&0), "an empty draw");
    assert!(numels.iter().any(|&n| n > 0 && n < 16), "the scalar path");
    assert!(
        numels.iter().any(|&n| n >= 16 && n % 16 == 0),
        "whole chunks"
    );
    assert!(
        numels.iter().any(|&n| n > 16 && n % 16 != 0),
        "the recomputed tail"
    );
    assert!(numels.iter().any(|&n| n > 512), "a partially stored draw");
    // A generator that draws small and large tensors in turn (the cached second normal).
    assert!(golden.cases.iter().any(|c| {
        let small = c.draws.iter().position(|d| d.numel > 0 && d.numel < 16);
        let large = c.draws.iter().rposition(|d| d.numel >= 16);
        let later_small = c.draws.iter().rposition(|d| d.numel > 0 && d.numel < 16);
        matches!((small, large, later_small), (Some(s), Some(l), Some(t)) if s < l && l < t)
    }));
}

#[test]
fn seeds_equal_modulo_2_pow_32_give_equal_noise() {
    // torch seeds MT19937 with the low 32 bits only; the golden has 42 and 2^32 + 42.
    let golden = load();
    let find = |seed: u64| {
        golden
            .cases
            .iter()
            .find(|c| c.seed == seed && c.draws.len() == 1 && c.draws[0].shape == [1, 4, 8, 8])
            .unwrap_or_else(|| panic!("golden case for seed {seed}"))
    };
    assert_eq!(find(42).draws[0].bits, find((1 << 32) + 42).draws[0].bits);
    let mut a = TorchCpuRng::new(42);
    let mut b = TorchCpuRng::new((1 << 32) + 42);
    assert_eq!(a.randn(&[1, 4, 8, 8]), b.randn(&[1, 4, 8, 8]));
}

#[test]
fn randn_into_matches_randn() {
    let golden = load();
    let mut failures = Vec::new();
    for case in golden.cases.iter().filter(|c| c.draws.len() > 1) {
        let mut rng = TorchCpuRng::new(case.seed);
        for (d, draw) in case.draws.iter().enumerate() {
            let what = format!("randn_into, case {:?} draw {d}", case.name);
            let mut out = vec![f32::NAN; draw.numel];
            rng.randn_into(&mut out);
            check_draw(&what, &out, draw, golden.edge, &mut failures);
        }
    }
    report(&failures, &golden.torch_version);
}
