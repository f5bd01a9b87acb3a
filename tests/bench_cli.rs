//! `sdspool bench` on the committed tiny-sd with a tiny workload: the JSON report is complete
//! and adds up (no timing is asserted, only relations that hold on any machine).

mod common;

use common::config_file::TestConfig;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn config(dir: &Path) -> std::path::PathBuf {
    let mut c = TestConfig::daemon(dir);
    c.output_dir = "out".into();
    c.default_model = None;
    c.rescan_seconds = None;
    c.settle_seconds = None;
    c.write(dir)
}

fn bench(config: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(config)
        .arg("bench")
        .args(args)
        .env("SDSPOOL_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

fn f(v: &Value, path: &str) -> f64 {
    let mut at = v;
    for key in path.split('.') {
        at = &at[key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {at}"))
}

/// Relations every run (and the mean) must satisfy.
fn check_run(r: &Value, images: f64, unet_calls: f64, what: &str) {
    let total = f(r, "total_s");
    assert!(total > 0.0, "{what}: total_s {total}");
    assert_eq!(f(r, "images"), images, "{what}: images");
    assert_eq!(f(r, "unet_calls"), unet_calls, "{what}: UNet calls");
    assert_eq!(f(r, "sessions.unet.calls"), unet_calls, "{what}");
    assert_eq!(
        f(r, "sessions.vae_decoder.calls"),
        images,
        "{what}: one decode per image"
    );
    assert_eq!(
        f(r, "sessions.text_encoder.calls"),
        2.0,
        "{what}: one per prompt"
    );
    assert!(f(r, "sessions.rerank.calls") >= 1.0, "{what}: rerank ran");

    let session = f(r, "session_s");
    assert!(
        session > 0.0 && session <= total,
        "{what}: session {session} of {total}"
    );
    // Each session's time fits in the union of all of them (the rerank thread runs beside the
    // render thread, so the union may be less than the sum).
    for s in ["text_encoder", "unet", "vae_decoder", "rerank"] {
        let t = f(r, &format!("sessions.{s}.seconds"));
        assert!(
            t >= 0.0 && t <= session + 1e-6,
            "{what}: {s} {t} > {session}"
        );
    }
    let overhead = f(r, "overhead_s");
    assert!((overhead - (total - session)).abs() < 1e-9, "{what}");
    assert!((0.0..=100.0).contains(&f(r, "overhead_pct")), "{what}");

    let render = [
        "tokenize",
        "text_encode",
        "denoise",
        "decode",
        "handoff_wait",
        "finish_wait",
    ];
    let finish = ["rerank", "png_encode", "png_write", "finish_other"];
    let mut render_sum = 0.0;
    for p in render {
        let v = f(r, &format!("phases.{p}"));
        assert!(v >= 0.0, "{what}: {p}");
        render_sum += v;
    }
    let mut finish_sum = 0.0;
    for p in finish {
        let v = f(r, &format!("phases.{p}"));
        assert!(v >= 0.0, "{what}: {p}");
        finish_sum += v;
    }
    assert!(
        f(r, "phases.png_encode") > 0.0 && f(r, "phases.png_write") > 0.0,
        "{what}: PNGs"
    );
    assert!(
        (render_sum - f(r, "render_thread_s")).abs() < 1e-9,
        "{what}"
    );
    assert!(
        (finish_sum - f(r, "finish_thread_s")).abs() < 1e-9,
        "{what}"
    );
    // Each thread's phases follow one another within the run.
    assert!(
        render_sum <= total,
        "{what}: render thread {render_sum} > {total}"
    );
    assert!(
        finish_sum <= total,
        "{what}: finishing thread {finish_sum} > {total}"
    );
    // The UNet runs inside the denoise phase, the VAE inside decode.
    assert!(
        f(r, "sessions.unet.seconds") <= f(r, "phases.denoise"),
        "{what}"
    );
    assert!(
        f(r, "sessions.vae_decoder.seconds") <= f(r, "phases.decode"),
        "{what}"
    );

    let first = f(r, "first_image_s");
    assert!(first > 0.0 && first <= total, "{what}: first image {first}");
    let ips = f(r, "images_per_s");
    assert!((ips * total - images).abs() < 1e-6, "{what}: images/s");
    let per_call = f(r, "unet_s_per_call");
    assert!((per_call * unet_calls - f(r, "sessions.unet.seconds")).abs() < 1e-9);
    // One batch of 2 candidates per prompt: a call is 2 image-steps.
    assert!(
        (f(r, "unet_s_per_image_step") * 2.0 - per_call).abs() < 1e-9,
        "{what}"
    );
}

#[test]
fn bench_reports_consistent_figures_as_json_and_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let json = tmp.path().join("bench.json");
    let kept = tmp.path().join("images");
    let (stdout, _) = bench(
        &config,
        &[
            "--model",
            "tiny-sd",
            "--size",
            "64x64",
            "--prompts",
            "2",
            "--candidates",
            "2",
            "--steps",
            "3",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--output",
            kept.to_str().unwrap(),
        ],
    );
    for line in [
        "images per second",
        "UNet s per image-step",
        "time in ONNX Runtime sessions",
        "peak resident memory (VmHWM)",
        "first image, cold",
        "PNG write",
    ] {
        assert!(stdout.contains(line), "no {line:?} in\n{stdout}");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let w = &report["workload"];
    assert_eq!(w["model"], "tiny-sd");
    assert_eq!(w["images"], 4);
    assert_eq!(w["scheduler"], "pndm", "tiny-sd's own scheduler");
    assert_eq!(w["unet_batch"], 4, "2 candidates, doubled by guidance");
    assert_eq!(w["intra_threads"], 1);
    assert_eq!(w["rerank"], true);
    assert_eq!(w["prompt_texts"][0], "a photo of a cat");
    // PNDM makes steps + 1 UNet calls; one batch per prompt.
    let calls = 2.0 * 4.0;
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for (i, r) in runs.iter().enumerate() {
        check_run(r, 4.0, calls, &format!("run {i}"));
    }
    check_run(&report["mean"], 4.0, calls, "mean");
    let mean_total = f(&report, "mean.total_s");
    let expected = runs.iter().map(|r| f(r, "total_s")).sum::<f64>() / 2.0;
    assert!((mean_total - expected).abs() < 1e-9);

    assert!(f(&report, "peak_rss_kib") > 0.0);
    let load = f(&report, "cold.load_s");
    let cold = f(&report, "cold.first_image_s");
    assert!(
        load > 0.0 && cold > load,
        "cold first image {cold}, load {load}"
    );

    // The images of every run are where --output says, and kept.
    for run in ["warmup-1", "run-1", "run-2"] {
        for (p, c, seed) in [(0, 0, 1234), (0, 1, 1235), (1, 0, 1234), (1, 1, 1235)] {
            let file = kept.join(run).join(format!("p{p:03}-c{c:02}-s{seed}.png"));
            assert!(file.is_file(), "{} missing", file.display());
        }
        assert!(kept.join(run).join("manifest.json").is_file());
    }
}

#[test]
fn bench_without_output_cleans_up_and_takes_a_model_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    let json = tmp.path().join("bench.json");
    let (_, stderr) = bench(
        &config,
        &[
            "--model",
            common::model_dir("tiny-sd").to_str().unwrap(),
            "--size",
            "64",
            "--prompts",
            "1",
            "--candidates",
            "1",
            "--steps",
            "2",
            "--scheduler",
            "euler_a",
            "--guidance",
            "1",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--no-rerank",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(stderr.contains("run-1:"), "{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["workload"]["model"], "tiny-sd");
    assert_eq!(report["workload"]["scheduler"], "euler_a");
    assert_eq!(
        report["workload"]["unet_batch"], 1,
        "no guidance: no doubled batch"
    );
    assert_eq!(report["workload"]["rerank"], false);
    let r = &report["mean"];
    assert_eq!(f(r, "unet_calls"), 2.0);
    assert_eq!(f(r, "sessions.rerank.calls"), 0.0);
    assert_eq!(f(r, "phases.rerank"), 0.0);
    assert!(f(r, "session_s") <= f(r, "total_s"));
    // The default folder (<output_dir>/bench-<pid>) is gone.
    let out = tmp.path().join("out");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        out.display()
    );
}

#[test]
fn bench_runs_an_sdxl_model() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "onnxruntime:\n  library: {}\nmodels:\n  tiny-sdxl:\n    path: {}\noutput_dir: out\n",
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort"))
                .unwrap()
                .display(),
            common::model_dir("tiny-sdxl").display(),
        ),
    )
    .unwrap();
    let json = tmp.path().join("bench.json");
    bench(
        &config,
        &[
            "--model",
            "tiny-sdxl",
            "--size",
            "64x64",
            "--prompts",
            "2",
            "--candidates",
            "2",
            "--steps",
            "2",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--no-rerank",
        ],
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let r = &v["mean"];
    assert_eq!(f(r, "images"), 4.0, "{v}");
    assert_eq!(f(r, "unet_calls"), 4.0, "{v}");
    assert_eq!(
        f(r, "sessions.text_encoder.calls"),
        2.0,
        "one per prompt\n{v}"
    );
    assert_eq!(f(r, "sessions.vae_decoder.calls"), 4.0, "{v}");
    assert!(
        f(r, "sessions.unet.seconds") <= f(r, "phases.denoise"),
        "{v}"
    );
}

/// SDXL's second text encoder is text encoding like the first: `sessions.text_encoder_2` has one
/// call per prompt, both encoders' time lies inside the `text_encode` phase, and the sessions
/// listed add up to the time any session ran (nothing of it is left to the pipeline's
/// overhead). An SD model reports no `text_encoder_2` calls.
#[test]
fn bench_counts_sdxl_text_encoder_2_as_text_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let config = TestConfig::daemon(tmp.path()).with_model("tiny-sdxl");
    let config = TestConfig {
        output_dir: "out".into(),
        rerank: None,
        rescan_seconds: None,
        settle_seconds: None,
        ..config
    }
    .write(tmp.path());
    for (model, te2_calls) in [("tiny-sdxl", 2.0), ("tiny-sd", 0.0)] {
        let json = tmp.path().join(format!("{model}.json"));
        bench(
            &config,
            &[
                "--model",
                model,
                "--size",
                "64x64",
                "--prompts",
                "2",
                "--candidates",
                "1",
                "--steps",
                "2",
                "--runs",
                "1",
                "--warmup",
                "0",
                "--threads",
                "1",
                "--json",
                json.to_str().unwrap(),
                "--no-rerank",
            ],
        );
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let r = &v["mean"];
        assert_eq!(f(r, "sessions.text_encoder.calls"), 2.0, "{model}\n{v}");
        assert_eq!(
            f(r, "sessions.text_encoder_2.calls"),
            te2_calls,
            "{model}: one per prompt\n{v}"
        );
        let text = f(r, "sessions.text_encoder.seconds") + f(r, "sessions.text_encoder_2.seconds");
        assert!(
            text <= f(r, "phases.text_encode") + 1e-9,
            "{model}: text encoders {text} outside the text_encode phase\n{v}"
        );
        // Without the reranker the sessions run one after another: their sum is the busy time.
        let listed: f64 = [
            "text_encoder",
            "text_encoder_2",
            "unet",
            "vae_decoder",
            "rerank",
        ]
        .iter()
        .map(|s| f(r, &format!("sessions.{s}.seconds")))
        .sum();
        assert!(
            (listed - f(r, "session_s")).abs() < 1e-6,
            "{model}: sessions listed {listed} against {} in any session\n{v}",
            f(r, "session_s")
        );
    }
}
