//! Where a model came from, as AUTOMATIC1111 names it: the checkpoint hash (its short 10-digit
//! form and the old 8-digit one, checked against coreutils' `sha256sum` of real files), read
//! from a folder's `sdspool-source.json` or a configured `checkpoint:`; infotexts mapped to the
//! configured model by it; every setting sdspool honours written into the PNG and read back by
//! `sdspool submit`; the provenance shown by `sdspool models` and the manifest.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use sdspool::app::commands::submit;
use sdspool::app::config::Config;
use sdspool::engine::model::config::ModelConfig;
use sdspool::engine::noise::RngKind;
use sdspool::engine::scheduler::SchedulerKind;
use sdspool::jobs::job::{self, Job};
use sdspool::jobs::run::{RunOptions, Worker};

/// `sha256sum` of `input` (a shell pipeline's output), the 64 hex digits.
fn sha256sum(shell: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{shell} | sha256sum"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{shell}");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A file of `len` bytes that differ along it, and its hashes by coreutils: the whole file's
/// SHA-256 and AUTOMATIC1111's old hash (SHA-256 of the 64 KiB at 1 MiB, first 8 digits).
fn checkpoint(dir: &Path, name: &str, len: usize, salt: u8) -> (PathBuf, String, String) {
    let bytes: Vec<u8> = (0..len)
        .map(|i| ((i * 31 + i / 977) as u8) ^ salt)
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let p = path.display();
    let whole = sha256sum(&format!("cat '{p}'"));
    let legacy = sha256sum(&format!("tail -c +1048577 '{p}' | head -c 65536"))[..8].to_string();
    (path, whole, legacy)
}

/// A copy of tiny-sd at `dir/name` with `provenance` as its `sdspool-source.json`.
fn model_with_source(dir: &Path, name: &str, provenance: &str) -> PathBuf {
    copy_with_source("tiny-sd", dir, name, provenance)
}

/// A copy of the committed model `base` at `dir/name` with `provenance`.
fn copy_with_source(base: &str, dir: &Path, name: &str, provenance: &str) -> PathBuf {
    let folder = dir.join(name);
    common::copy_dir(&common::model_dir(base), &folder);
    std::fs::write(folder.join("sdspool-source.json"), provenance).unwrap();
    folder
}

fn provenance(sha: &str, legacy: Option<&str>, loras: &str) -> String {
    let legacy = legacy.map_or(String::new(), |l| format!(", \"legacy_hash\": \"{l}\""));
    format!(
        r#"{{"format": 1,
            "checkpoint": {{"file": "dreamy-v2.safetensors", "sha256": "{sha}", "family": "sd15"{legacy}}},
            "loras": [{loras}], "vae": null, "dtype": "float32", "optimized": false,
            "tool": {{"sdspool_import": 1, "diffusers": "0.39.0", "optimum_onnx": "0.1.0"}}}}"#
    )
}

/// The fixture configuration with the model folder `path` as `name`.
fn config_with(name: &str, path: PathBuf) -> Config {
    let mut c = common::fixture_config();
    let model = ModelConfig {
        path,
        vae: None,
        checkpoint: None,
    };
    c.models.insert(name.into(), model);
    c
}

/// A provenance file whose model holds the LoRA `detail` at 0.8.
fn detail_provenance() -> String {
    let sha = "0123456789abcdef".repeat(4);
    let lora = format!(
        r#"{{"name": "detail", "file": "detail.safetensors", "sha256": "{sha}", "weight": 0.8}}"#
    );
    provenance(&sha, None, &lora)
}

fn load_job(config: &Config, dir: &Path, body: &str) -> Result<Job, job::JobError> {
    let p = dir.join("job.yaml");
    std::fs::write(&p, body).unwrap();
    job::load(&p, config)
}

fn infotext_job(config: &Config, dir: &Path, text: &str) -> Result<Job, job::JobError> {
    let quoted = serde_json::to_string(text).unwrap();
    load_job(config, dir, &format!("infotext: {quoted}\n"))
}

#[test]
fn model_hash_finds_the_configured_model_in_both_forms() {
    let tmp = tempfile::tempdir().unwrap();
    // A configured checkpoint beside tiny-sd; a copy of tiny-sd whose provenance names another.
    let (file, file_sha, file_legacy) = checkpoint(tmp.path(), "mine.ckpt", 0x12_0000, 0);
    let (_, src_sha, src_legacy) = checkpoint(tmp.path(), "other.safetensors", 0x10_8000, 7);
    assert_ne!(file_sha, src_sha);
    let src = model_with_source(
        tmp.path(),
        "dreamy",
        &provenance(&src_sha, Some(&src_legacy), ""),
    );
    let mut c = common::fixture_config();
    c.models.get_mut("tiny-sd").unwrap().checkpoint = Some(file.clone());
    c.models.insert(
        "dreamy".into(),
        ModelConfig {
            path: src,
            vae: None,
            checkpoint: None,
        },
    );
    c.models.retain(|n, _| n == "tiny-sd" || n == "dreamy");
    c.default_model = Some("tiny-sd".into());
    let settings = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64";
    let model_of = |extra: &str| {
        infotext_job(&c, tmp.path(), &format!("{settings}, {extra}")).map(|j| j.model)
    };
    assert_eq!(
        model_of(&format!("Model hash: {}", &src_sha[..10])).unwrap(),
        "dreamy"
    );
    assert_eq!(
        model_of(&format!("Model hash: {src_legacy}")).unwrap(),
        "dreamy"
    );
    assert_eq!(
        model_of(&format!("Model hash: {}", src_sha[..10].to_uppercase())).unwrap(),
        "dreamy"
    );
    // By name first; an unknown name (the checkpoint's stem in AUTOMATIC1111) by its hash.
    assert_eq!(
        model_of(&format!("Model hash: {}, Model: tiny-sd", &src_sha[..10])).unwrap(),
        "tiny-sd"
    );
    assert_eq!(
        model_of(&format!("Model hash: {}, Model: dreamy-v2", &src_sha[..10])).unwrap(),
        "dreamy"
    );
    // The configured checkpoint, hashed here, in both forms.
    let dreamy_default = {
        let mut c2 = c.clone();
        c2.default_model = Some("dreamy".into());
        c2
    };
    for hash in [&file_sha[..10], &file_legacy[..], &file_sha[..]] {
        let j = infotext_job(
            &dreamy_default,
            tmp.path(),
            &format!("{settings}, Model hash: {hash}"),
        )
        .unwrap();
        assert_eq!(j.model, "tiny-sd", "{hash}");
    }
    // An unknown hash is refused naming the field, with every model's hashes.
    let e = model_of("Model hash: 0123456789").unwrap_err();
    assert_eq!(e.field, "infotext", "{e}");
    for want in [
        "`Model hash`",
        "\"0123456789\"",
        &format!("dreamy [{}, old {src_legacy}]", &src_sha[..10]),
        &format!("tiny-sd [{}, old {file_legacy}]", &file_sha[..10]),
    ] {
        assert!(e.message.contains(want), "{want} in {e}");
    }
    let e = model_of("Model hash: 0123456789, Model: sd15").unwrap_err();
    assert!(e.message.starts_with("`Model` \"sd15\""), "{e}");

    // Through `sdspool submit picture.png`.
    c.spool.dir = tmp.path().join("spool");
    let png = tmp.path().join("old.png");
    let text = format!("{settings}, Model hash: {src_legacy}");
    std::fs::write(
        &png,
        sdspool::jobs::output::png::encode(&image::RgbImage::new(8, 8), &text).unwrap(),
    )
    .unwrap();
    let spooled = submit::run(&c, &png, false).unwrap();
    assert_eq!(
        job::load_spooled(&spooled.path, &c).unwrap().model,
        "dreamy"
    );
}

/// Renders `job` with `config`'s model `model` and returns its first image's file.
fn render(
    config: &Config,
    model: &str,
    job: &Job,
) -> (PathBuf, sdspool::jobs::run::manifest::Manifest) {
    let mut w = Worker::load(common::runtime(), config, 0, Some(model)).unwrap();
    let o = w
        .run(
            job,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    let file = o
        .dir
        .join(o.manifest.prompts[0].candidates[0].file.as_ref().unwrap());
    (file, o.manifest)
}

#[test]
fn a_rendered_png_carries_every_setting_and_submits_back_to_the_same_job() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, sha, legacy) = checkpoint(tmp.path(), "dreamy-v2.safetensors", 0x11_0000, 3);
    let (_, lora_sha, _) = checkpoint(tmp.path(), "detail.pt", 1000, 5);
    let lora = format!(
        r#"{{"name": "detail", "file": "detail.pt", "sha256": "{lora_sha}", "weight": 0.8}}"#
    );
    let source = provenance(&sha, Some(&legacy), &lora);
    let sd = model_with_source(tmp.path(), "dreamy", &source);
    // CLIP skip needs the text encoders' hidden states, which the SDXL export has.
    let sdxl = copy_with_source(
        "tiny-sdxl",
        tmp.path(),
        "dreamy-xl",
        &source.replace("\"sd15\"", "\"sdxl\""),
    );
    let mut c = common::fixture_config();
    c.models = [("dreamy", sd), ("dreamy-xl", sdxl)]
        .into_iter()
        .map(|(n, path)| {
            let config = ModelConfig {
                path,
                vae: None,
                checkpoint: None,
            };
            (n.to_string(), config)
        })
        .collect();
    c.default_model = Some("dreamy".into());
    c.output_dir = tmp.path().join("out");
    c.spool.dir = tmp.path().join("spool");
    c.rerank = None;

    let cases = [
        // torch's CPU generator (written `RNG: CPU`), an ancestral sampler (ENSD written).
        "model: dreamy-xl\nprompts: [\"a (red:1.2) circle\"]\nnegative: blurry\nsteps: 3\nscheduler: euler_a\n\
         guidance: 6.5\nseed: 1234\nwidth: 64\nheight: 48\ncandidates: 2\nrng: torch_cpu\n\
         clip_skip: 2\neta_noise_seed_delta: 31337\nsubseed: 99\nsubseed_strength: 0.25\n\
         seed_resize_from_w: 48\nseed_resize_from_h: 32\n",
        // GPU seeds (AUTOMATIC1111's default: no `RNG`), DPM++ 2M's plain schedule.
        "prompts: [\"a blue square, BREAK a cat\"]\nsteps: 2\nscheduler: dpmpp_2m\nguidance: 4\n\
         seed: 7\nwidth: 64\nheight: 64\ncandidates: 1\nrng: philox\n",
    ];
    for (i, body) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let original = load_job(&c, &dir, body).unwrap();
        let (png, manifest) = render(&c, &original.model, &original);
        let source = manifest.model_source.as_ref().unwrap();
        assert_eq!(source.checkpoint.as_deref(), Some("dreamy-v2.safetensors"));
        assert_eq!(source.model_hash.as_deref(), Some(&sha[..10]));
        assert_eq!(
            (source.loras[0].name.as_str(), source.loras[0].weight),
            ("detail", 0.8)
        );
        let text = common::parameters_chunk(&png);
        let model = format!("Model hash: {}, Model: {}", &sha[..10], original.model);
        assert!(text.contains(&model), "{text}");
        assert!(text.contains(" <lora:detail:0.8>\n"), "{text}");
        assert!(
            text.contains(&format!("Lora hashes: \"detail: {}\"", &lora_sha[..12])),
            "{text}"
        );
        if i == 0 {
            let want = format!(
                "\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, \
                 Seed: 1234, Size: 64x48, Model hash: {}, Model: dreamy-xl, Variation seed: 99, \
                 Variation seed strength: 0.25, Seed resize from: 48x32, Clip skip: 2, \
                 ENSD: 31337, RNG: CPU, Lora hashes: \"detail: {}\"",
                &sha[..10],
                &lora_sha[..12]
            );
            assert!(text.ends_with(&want), "{text}\nwanted the end {want}");
            assert!(
                text.starts_with("a (red:1.2) circle <lora:detail:0.8>\nNegative prompt: blurry\n"),
                "{text}"
            );
        } else {
            assert!(!text.contains("RNG"), "{text}");
            assert!(
                text.contains("Sampler: DPM++ 2M, Schedule type: Uniform"),
                "{text}"
            );
        }
        let spooled = submit::run(&c, &png, false).unwrap();
        let back = job::load_spooled(&spooled.path, &c).unwrap();
        let (a, b) = (&original.prompts[0], &back.prompts[0]);
        assert_eq!(b.text, a.text);
        assert_eq!(b.negative, a.negative);
        assert_eq!(
            (b.steps, b.guidance, b.scheduler, b.width, b.height),
            (a.steps, a.guidance, a.scheduler, a.width, a.height)
        );
        assert_eq!(b.seeds[0], a.seeds[0]);
        assert_eq!(
            (
                back.model.as_str(),
                back.rng,
                back.clip_skip,
                back.seed_options
            ),
            (
                original.model.as_str(),
                original.rng,
                original.clip_skip,
                original.seed_options
            ),
        );
    }
}

#[test]
fn a_hand_written_automatic1111_infotext_with_every_key_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, sha, _) = checkpoint(tmp.path(), "v1-5-pruned-emaonly.safetensors", 2000, 1);
    let (_, addnet, _) = checkpoint(tmp.path(), "addnet.bin", 500, 2);
    let lora = format!(
        r#"{{"name": "add_detail", "file": "add_detail.safetensors", "sha256": "{sha}", "weight": 0.5,
             "addnet_sha256": "{addnet}"}}"#
    );
    let folder = model_with_source(tmp.path(), "sd15", &provenance(&sha, None, &lora));
    let c = config_with("sd15", folder);
    let text = format!(
        "masterpiece, (a red circle:1.2), <lora:add_detail:0.5>, [blue] square\n\
         Negative prompt: (worst quality:1.4), blurry\n\
         Steps: 24, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3929124412, \
         Size: 64x48, Model hash: {}, Model: v1-5-pruned-emaonly, Variation seed: 120, \
         Variation seed strength: 0.15, Seed resize from: 48x40, Clip skip: 2, ENSD: 31337, \
         Lora hashes: \"add_detail: {}\", Version: v1.10.1",
        &sha[..10],
        &addnet[..12]
    );
    let j = infotext_job(&c, tmp.path(), &text).unwrap();
    assert_eq!(j.model, "sd15");
    let p = &j.prompts[0];
    assert_eq!(p.text, "masterpiece, (a red circle:1.2), , [blue] square");
    assert_eq!(p.negative, "(worst quality:1.4), blurry");
    assert_eq!(
        (
            p.steps,
            p.guidance,
            p.scheduler,
            p.width,
            p.height,
            p.seeds[0]
        ),
        (
            24,
            6.5,
            Some(SchedulerKind::DpmPp2mKarras),
            64,
            48,
            3929124412
        )
    );
    assert_eq!(j.rng, RngKind::Philox, "no RNG: AUTOMATIC1111's GPU");
    assert_eq!(j.clip_skip, 2);
    assert_eq!(j.seed_options.subseed, Some((120, 0.15)));
    assert_eq!(j.seed_options.resize_from, Some((48, 40)));
    assert_eq!(j.seed_options.eta_noise_seed_delta, 31337);

    // LoRAs must be those fused into the model, at their weights and hashes.
    for (from, to, field) in [
        ("<lora:add_detail:0.5>", "<lora:add_detail:0.7>", "`Prompt`"),
        ("<lora:add_detail:0.5>", "<lora:other:0.5>", "`Prompt`"),
        ("<lora:add_detail:0.5>", "", "`Prompt`"),
        ("<lora:add_detail:0.5>", "<hypernet:x:1>", "`Prompt`"),
        (&addnet[..12], "000000000000", "`Lora hashes`"),
    ] {
        let e = infotext_job(&c, tmp.path(), &text.replace(from, to)).unwrap_err();
        assert!(e.message.starts_with(field), "{to}: {e}");
    }
}

#[test]
fn models_shows_the_provenance_and_refuses_a_malformed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let with_detail = detail_provenance();
    let good = model_with_source(tmp.path(), "good", &with_detail);
    let bad = model_with_source(
        tmp.path(),
        "bad",
        &with_detail.replace("\"weight\": 0.8", "\"weight\": \"heavy\""),
    );
    let mut c = common::fixture_config();
    c.models = [("good", good), ("bad", bad)]
        .into_iter()
        .map(|(n, path)| {
            (
                n.to_string(),
                ModelConfig {
                    path,
                    vae: None,
                    checkpoint: None,
                },
            )
        })
        .collect();
    c.default_model = Some("good".into());
    let mut out = String::new();
    let ok = sdspool::app::commands::models::run(&c, common::runtime(), &mut out);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "  source: dreamy-v2.safetensors [0123456789], LoRAs detail 0.8 (sdspool-source.json)"
        ),
        "{out}"
    );
    assert!(
        out.contains("bad/sdspool-source.json: `loras[0].weight`"),
        "{out}"
    );
}

#[test]
fn lora_tags_in_job_prompts_leave_the_text_and_must_name_the_models_loras() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = model_with_source(tmp.path(), "sd15", &detail_provenance());
    let c = config_with("sd15", folder);
    let job = |prompt: &str, negative: &str, syntax: &str| {
        load_job(
            &c,
            tmp.path(),
            &format!(
                "model: sd15\nprompt_syntax: {syntax}\nnegative: {negative:?}\nprompts:\n  - {prompt:?}\n"
            ),
        )
    };
    // As AUTOMATIC1111 reads a prompt: the tag is taken out before encoding.
    let j = job("a red circle <lora:detail:0.8>", "blurry", "a1111").unwrap();
    assert_eq!(j.prompts[0].text, "a red circle");
    // A tag the model does not hold is refused, naming the prompt and the model's LoRAs.
    for (prompt, negative) in [
        ("a red circle <lora:detail:0.5>", "blurry"),
        ("a red circle <lora:other:0.8>", "blurry"),
        ("a red circle", "<lora:other:1> blurry"),
        ("a <hypernet:x:1> circle", "blurry"),
    ] {
        let e = job(prompt, negative, "a1111").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("prompts[0]") || text.contains("negative"),
            "{prompt}: {text}"
        );
        assert!(
            text.contains("detail 0.8") || text.contains("hypernet"),
            "{prompt}: {text}"
        );
    }
    // Plain prompts keep their brackets (and tags) as text.
    let j = job("a red circle <lora:other:0.8>", "blurry", "plain").unwrap();
    assert_eq!(j.prompts[0].text, "a red circle <lora:other:0.8>");
}
