//! Sweeps in one job: parameter lists expanded as a Cartesian product, AUTOMATIC1111's prompt
//! matrix, job-level seeds, prompt files (safe paths, AUTOMATIC1111's per-line options), limits
//! on the expanded job, `sdspool check` and `submit` on them, and each variant rendered with its
//! own settings.

mod common;

use common::parameters_chunk;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use sdspool::app::config::Config;
use sdspool::engine::scheduler::SchedulerKind;
use sdspool::jobs::job::{self, Job};
use sdspool::jobs::run::{RunOptions, Worker};

fn config() -> Config {
    common::fixture_config()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn load(body: &str) -> Result<Job, job::JobError> {
    let tmp = tempfile::tempdir().unwrap();
    job::load(&write(tmp.path(), "job.yaml", body), &config())
}

fn err(body: &str) -> String {
    match load(body) {
        Ok(j) => panic!("accepted:\n{body}\n{j:?}"),
        Err(e) => e.to_string(),
    }
}

fn settings(j: &Job) -> Vec<(u32, f32, Option<SchedulerKind>, u32, u32)> {
    j.prompts
        .iter()
        .map(|p| (p.steps, p.guidance, p.scheduler, p.width, p.height))
        .collect()
}

#[test]
fn parameter_lists_expand_as_a_cartesian_product() {
    let j = load(
        "prompts: [a cat]\nsteps: [10, 20]\nguidance: [5, 7.5]\nscheduler: [euler_a, ddim]\nsize: [64x64, 96x64]\ncandidates: 2\nseed: 3\n",
    )
    .unwrap();
    assert_eq!(j.prompts.len(), 16);
    assert_eq!(j.image_count(), 32);
    use SchedulerKind::{Ddim, EulerAncestral as Ea};
    let s = settings(&j);
    // size outermost, then scheduler, steps, guidance.
    assert_eq!(s[0], (10, 5.0, Some(Ea), 64, 64));
    assert_eq!(s[1], (10, 7.5, Some(Ea), 64, 64));
    assert_eq!(s[2], (20, 5.0, Some(Ea), 64, 64));
    assert_eq!(s[4], (10, 5.0, Some(Ddim), 64, 64));
    assert_eq!(s[8], (10, 5.0, Some(Ea), 96, 64));
    assert_eq!(s[15], (20, 7.5, Some(Ddim), 96, 64));
    // Every combination once.
    let unique: std::collections::HashSet<String> = s.iter().map(|v| format!("{v:?}")).collect();
    assert_eq!(unique.len(), 16);
    for p in &j.prompts {
        assert_eq!(p.text, "a cat");
        assert_eq!(p.seeds, [3, 4]);
        let cell = p.sweep.as_ref().unwrap();
        assert_eq!(cell.group, 0);
        let axes: Vec<&str> = cell.axes.iter().map(|a| a.axis.as_str()).collect();
        assert_eq!(axes, ["size", "scheduler", "steps", "guidance"]);
    }
    assert_eq!(
        j.prompts[15].sweep.as_ref().unwrap().axes[1].label,
        "Sampler: DDIM"
    );
    // The job's own settings are the first of each list.
    assert_eq!((j.steps, j.guidance, j.width, j.height), (10, 5.0, 64, 64));

    // Plain scalars work as before and make no sweep.
    let j = load("prompts: [a cat, a dog]\nsteps: 7\nguidance: 6\nscheduler: ddim\nwidth: 96\n")
        .unwrap();
    assert_eq!(j.prompts.len(), 2);
    assert!(j.prompts.iter().all(|p| p.sweep.is_none()));
    assert_eq!(settings(&j)[1], (7, 6.0, Some(Ddim), 96, 64));

    // Per-prompt lists override the job's, and only that prompt is swept.
    let j = load(
        "prompts:\n  - a cat\n  - prompt: a dog\n    steps: [3, 4]\n    size: 32x32\nsteps: 9\n",
    )
    .unwrap();
    assert_eq!(
        settings(&j).iter().map(|s| (s.0, s.3)).collect::<Vec<_>>(),
        [(9, 64), (3, 32), (4, 32)]
    );
    assert!(j.prompts[0].sweep.is_none());
    assert_eq!(j.prompts[2].sweep.as_ref().unwrap().group, 1);
    // AUTOMATIC1111's sampler names work too.
    let j = load("prompts: [a]\nscheduler: [Euler a, DPM++ 2M Karras]\n").unwrap();
    assert_eq!(j.prompts[1].scheduler, Some(SchedulerKind::DpmPp2mKarras));
}

#[test]
fn prompt_matrix_and_job_level_seeds() {
    let j = load(
        "prompts: [a cat | in the snow | oil painting]\nprompt_matrix: true\nseeds: [7, 99]\n",
    )
    .unwrap();
    let texts: Vec<&str> = j.prompts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "a cat",
            "a cat, in the snow",
            "a cat, oil painting",
            "a cat, in the snow, oil painting"
        ]
    );
    assert!(j.prompts.iter().all(|p| p.seeds == [7, 99]));
    let labels: Vec<String> = j.prompts[3]
        .sweep
        .as_ref()
        .unwrap()
        .axes
        .iter()
        .map(|a| a.label.clone())
        .collect();
    assert_eq!(labels, ["+oil painting", "+in the snow"]);
    // Without prompt_matrix the bar is text.
    let j = load("prompts: [a | b]\n").unwrap();
    assert_eq!(j.prompts.len(), 1);
    assert_eq!(j.prompts[0].text, "a | b");

    let j = load("prompts: [a]\nseed_count: 3\nseed: 10\n").unwrap();
    assert_eq!(j.prompts[0].seeds, [10, 11, 12]);
    assert!(err("prompts: [a]\nseeds: [1, 2]\ncandidates: 3\n").contains("`candidates`"));
    assert!(err("prompts: [a]\nseeds: [1, 2]\nseed_count: 3\n").contains("seed_count"));
    // A prompt's own seeds win over the job's.
    let j = load("prompts: [a, {prompt: b, seed: 50}]\nseeds: [1, 2]\n").unwrap();
    assert_eq!(j.prompts[0].seeds, [1, 2]);
    assert_eq!(j.prompts[1].seeds, [50, 51]);
}

#[test]
fn errors_name_the_list_element_and_limits_apply_to_the_expanded_job() {
    let e = err("prompts: [a]\nsteps: [10, 0]\n");
    assert!(e.contains("`steps[1]`") && e.contains("is 0"), "{e}");
    let e = err("prompts: [a]\nguidance: [5, 500]\n");
    assert!(e.contains("`guidance[1]`"), "{e}");
    let e = err("prompts: [a]\nsize: [64x64, 65x64]\n");
    assert!(
        e.contains("`size[1]`") && e.contains("multiple of 8"),
        "{e}"
    );
    let e = err("prompts: [a]\nsize: big\n");
    assert!(e.contains("`size`") && e.contains("WIDTHxHEIGHT"), "{e}");
    let e = err("prompts: [a]\nsize: 64x64\nwidth: 64\n");
    assert!(e.contains("together with width"), "{e}");
    let e = err("prompts: [a]\nsteps: []\n");
    assert!(e.contains("empty list"), "{e}");
    let e = err("prompts: [a]\nscheduler: [euler_a, heun]\n");
    assert!(e.contains("`scheduler[1]`"), "{e}");
    let e = err("prompts: [{prompt: a, steps: [1, 999]}]\n");
    assert!(e.contains("`prompts[0].steps[1]`"), "{e}");

    // limits.max_prompts counts the expanded prompts (the config allows 1000).
    let many: Vec<String> = (1..=40).map(|i| i.to_string()).collect();
    let e = err(&format!(
        "prompts: [a]\nsteps: [{}]\nguidance: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26]\n",
        many.join(", ")
    ));
    assert!(
        e.contains("make 1040 prompts") && e.contains("limits.max_prompts"),
        "{e}"
    );
    // A prompt matrix of 80 parts is refused before anything is expanded.
    let parts: Vec<String> = (0..80).map(|i| format!("p{i}")).collect();
    let e = err(&format!(
        "prompts: [\"{}\"]\nprompt_matrix: true\n",
        parts.join(" | ")
    ));
    assert!(e.contains("too many prompts"), "{e}");
    // limits.max_images counts every candidate of every prompt.
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config();
    c.limits.max_images = 10;
    let p = write(
        tmp.path(),
        "j.yaml",
        "prompts: [a]\nsteps: [1, 2, 3]\ncandidates: 4\n",
    );
    let e = job::load(&p, &c).unwrap_err().to_string();
    assert!(
        e.contains("make 12 images") && e.contains("limits.max_images"),
        "{e}"
    );
}

#[test]
fn prompt_files_are_read_beside_the_job_and_never_outside_it() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = tmp.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    write(tmp.path(), "secret.txt", "the secret\n");
    write(
        &jobs,
        "prompts.txt",
        "# one prompt a line\na photo of a cat\n\n--prompt \"a dog, in the snow\" --negative_prompt blurry --steps 3 --cfg_scale 5 --sampler_name \"Euler a\" --width 32 --height 48 --seed 7 --batch_size 3\n",
    );
    let c = config();
    let job_file = write(
        &jobs,
        "job.yaml",
        "prompts: [first]\nprompt_file: prompts.txt\nseed: 100\nsteps: 9\n",
    );
    let j = job::load(&job_file, &c).unwrap();
    let texts: Vec<&str> = j.prompts.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(texts, ["first", "a photo of a cat", "a dog, in the snow"]);
    assert_eq!(j.prompts[1].seeds.len(), c.defaults.candidates as usize);
    assert_eq!(j.prompts[1].steps, 9);
    let dog = &j.prompts[2];
    assert_eq!(dog.negative, "blurry");
    assert_eq!(dog.seeds, [7, 8, 9]);
    assert_eq!(
        (
            dog.steps,
            dog.guidance,
            dog.scheduler,
            dog.width,
            dog.height
        ),
        (3, 5.0, Some(SchedulerKind::EulerAncestral), 32, 48)
    );
    // From another working directory the file is still found beside the job.
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .current_dir("/")
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .args(["check", job_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Paths that leave the job's folder are refused, links included.
    std::os::unix::fs::symlink(tmp.path().join("secret.txt"), jobs.join("link.txt")).unwrap();
    for bad in [
        "../secret.txt",
        "/etc/passwd",
        "sub/../../secret.txt",
        "link.txt",
    ] {
        let f = write(&jobs, "bad.yaml", &format!("prompt_file: {bad:?}\n"));
        let e = job::load(&f, &c).unwrap_err();
        assert_eq!(e.field, "prompt_file", "{bad}: {e}");
        assert!(
            e.message.contains("folder") && !e.message.contains("the secret"),
            "{bad}: {e}"
        );
    }
    // A bad line is named.
    write(&jobs, "broken.txt", "a\n--prompt b --steps 0\n");
    let f = write(&jobs, "b.yaml", "prompt_file: broken.txt\n");
    let e = job::load(&f, &c).unwrap_err().to_string();
    assert!(
        e.contains("`prompt_file` line 2") && e.contains("is 0"),
        "{e}"
    );
    write(&jobs, "unknown.txt", "--prompt b --styles x\n");
    let f = write(&jobs, "u.yaml", "prompt_file: unknown.txt\n");
    let e = job::load(&f, &c).unwrap_err().to_string();
    assert!(e.contains("line 1: unknown option --styles"), "{e}");
    // A spooled job must carry its lines.
    let e = job::load_spooled(&job_file, &c).unwrap_err().to_string();
    assert!(e.contains("sdspool submit"), "{e}");
}

fn sdspool(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SDSPOOL_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn submit_embeds_the_prompt_file_and_check_counts_images_and_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let config = write(
        root,
        "config.yaml",
        &format!(
            "onnxruntime:\n  library: {}\nmodels:\n  tiny-sd:\n    path: {}\noutput_dir: {}\nspool:\n  dir: spool\n",
            root.join("missing.so").display(),
            common::model_dir("tiny-sd").display(),
            root.join("out").display(),
        ),
    );
    let jobs = root.join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    write(
        &jobs,
        "p.txt",
        "a cat\n--prompt \"a \\\"quoted\\\" dog\" --steps 3\n",
    );
    let job_file = write(
        &jobs,
        "sweep.yaml",
        "prompt_file: p.txt\nsteps: [4, 5]\nguidance: [5, 7.5]\ncandidates: 2\nscheduler: ddim\nseed: 1\nsize: 64x64\n",
    );

    // check: how many prompts and images, before anything runs; no speed measured yet.
    let out = sdspool(&config, &["check", job_file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "a cat" sweeps steps x guidance (4 prompts); the dog's steps are fixed (2 prompts).
    assert!(
        text.contains("prompts    6 (2 swept prompts expanded"),
        "{text}"
    );
    assert!(
        text.contains("images     12 (2 + 2 + 2 + 2 + 2 + 2)"),
        "{text}"
    );
    assert!(
        text.contains("steps      4, 5, 3, guidance 5, 7.5"),
        "{text}"
    );
    assert!(
        text.contains("eta        unknown: 24 UNet steps; no speed measured for tiny-sd"),
        "{text}"
    );
    assert!(
        text.contains("prompt 6   \"a \\\"quoted\\\" dog\": 2 images, seeds 1, 2, 64x64, 3 steps, guidance 7.5, ddim"),
        "{text}"
    );
    // With timings measured on this spool, an ETA: 24 UNet calls (4 + 4 + 5 + 5 + 3 + 3) of
    // batch 4 (2 candidates, guided) at 0.5 s, plus 12 images at 0.25 s.
    std::fs::create_dir_all(root.join("spool/control")).unwrap();
    std::fs::write(
        root.join("spool/control/timings.json"),
        r#"{"unet": {"tiny-sd 64x64 b4": {"model": "tiny-sd", "width": 64, "height": 64, "batch": 4, "seconds_per_step": 0.5, "samples": 1, "updated_at": "2026-11-24T00:00:00Z", "host": "h", "provider": "cpu"}},
            "images": {"tiny-sd 64x64": {"model": "tiny-sd", "width": 64, "height": 64, "seconds_per_image": 0.25, "samples": 1, "updated_at": "2026-11-24T00:00:00Z", "host": "h"}}}"#,
    )
    .unwrap();
    let out = sdspool(&config, &["check", job_file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("eta        ~15s for 24 UNet steps (speed measured on this spool)"),
        "{text}"
    );

    // submit: the spooled copy carries the prompt file's lines and needs nothing else.
    let out = sdspool(&config, &["submit", job_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spooled = root.join("spool/incoming/sweep.yaml");
    let body = std::fs::read_to_string(&spooled).unwrap();
    assert!(
        body.starts_with("prompt_file: p.txt\n") && body.contains("prompt_lines:"),
        "{body}"
    );
    std::fs::remove_file(jobs.join("p.txt")).unwrap();
    let c = Config::load(&config).unwrap();
    let from_spool = job::load_spooled(&spooled, &c).unwrap();
    assert_eq!(from_spool.prompts.len(), 6);
    assert_eq!(from_spool.prompts[5].text, "a \"quoted\" dog");
    // status estimates it from the same timings.
    let out = sdspool(&config, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["queued"][0]["estimate"]["images"], 12);
    assert_eq!(v["queued"][0]["estimate"]["seconds"], 15.0);
}

/// Where `needle` appears in `hay` as an exact sub-image (top-left corner).
fn find(hay: &image::RgbImage, needle: &image::RgbImage) -> Option<(u32, u32)> {
    let (w, h) = needle.dimensions();
    for y in 0..=hay.height().checked_sub(h)? {
        for x in 0..=hay.width().checked_sub(w)? {
            if (0..h).all(|dy| {
                (0..w).all(|dx| hay.get_pixel(x + dx, y + dy) == needle.get_pixel(dx, dy))
            }) {
                return Some((x, y));
            }
        }
    }
    None
}

#[test]
fn each_variant_is_rendered_with_its_own_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config();
    config.output_dir = tmp.path().join("out");
    let job_file = write(
        tmp.path(),
        "sweep.yaml",
        "prompts: [a red circle]\nsteps: [2, 3]\nguidance: [1, 7.5]\nsize: [64x64, 32x48]\nscheduler: [ddim, euler_a]\ncandidates: 1\nseed: 11\nrerank: false\n",
    )
    .to_path_buf();
    let j = job::load(&job_file, &config).unwrap();
    assert_eq!(j.prompts.len(), 16);
    let mut w = Worker::load(common::runtime(), &config, 0, Some("tiny-sd")).unwrap();
    let o = w
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(o.rendered, 16);
    let mut cells_at = Vec::new();
    for (p, entry) in j.prompts.iter().zip(&o.manifest.prompts) {
        assert_eq!(
            (entry.steps, entry.guidance, entry.width, entry.height),
            (p.steps, p.guidance, p.width, p.height)
        );
        assert_eq!(entry.scheduler, Some(p.scheduler.unwrap()));
        assert_eq!(entry.sweep, p.sweep);
        let file = o.dir.join(entry.candidates[0].file.as_ref().unwrap());
        let img = image::open(&file).unwrap();
        assert_eq!((img.width(), img.height()), (p.width, p.height));
        let params = parameters_chunk(&file);
        let (sampler, schedule) =
            sdspool::engine::scheduler::a1111::sampler_and_schedule(p.scheduler.unwrap());
        assert!(
            params.ends_with(&format!(
                "Steps: {}, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: {}, Seed: 11, Size: {}x{}, Model: tiny-sd, RNG: CPU",
                p.steps, p.guidance, p.width, p.height
            )),
            "{params}"
        );
    }
    // One grid for the sweep: steps and guidance across, size and scheduler down; each cell
    // is candidate 0 (not scored) of its variant, found in the grid where the layout puts it.
    assert_eq!(o.manifest.grids.len(), 1);
    let g = &o.manifest.grids[0];
    assert_eq!((g.group, g.file.as_str()), (0, "sweep000-grid.png"));
    assert_eq!(g.across, ["steps", "guidance"]);
    assert_eq!(g.down, ["size", "scheduler"]);
    assert_eq!(g.cells.len(), 16);
    let grid = image::open(o.dir.join(&g.file)).unwrap().to_rgb8();
    for cell in &g.cells {
        assert_eq!(cell.candidate, 0);
        let p = &j.prompts[cell.prompt];
        let sched = usize::from(p.scheduler == Some(SchedulerKind::EulerAncestral));
        assert_eq!(cell.row, usize::from(p.width == 32) * 2 + sched);
        assert_eq!(
            cell.column,
            usize::from(p.steps == 3) * 2 + usize::from(p.guidance == 7.5)
        );
        let img = image::open(o.dir.join(&cell.file)).unwrap().to_rgb8();
        let at = find(&grid, &img).unwrap_or_else(|| panic!("cell {cell:?} not in the grid"));
        cells_at.push((cell.column, cell.row, at));
    }
    // Columns left to right, rows top to bottom.
    for a in &cells_at {
        for b in &cells_at {
            if a.0 < b.0 {
                assert!(a.2.0 < b.2.0, "{a:?} {b:?}");
            }
            if a.1 < b.1 {
                assert!(a.2.1 < b.2.1, "{a:?} {b:?}");
            }
        }
    }

    // A variant's image is the one a job with just its settings renders.
    let single = write(
        tmp.path(),
        "single.yaml",
        "prompts: [a red circle]\nsteps: 3\nguidance: 7.5\nsize: 32x48\nscheduler: euler_a\ncandidates: 1\nseed: 11\nrerank: false\n",
    );
    let s = job::load(&single, &config).unwrap();
    let so = w
        .run(
            &s,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    let index = j
        .prompts
        .iter()
        .position(|p| {
            (p.steps, p.guidance, p.width, p.height, p.scheduler)
                == (3, 7.5, 32, 48, Some(SchedulerKind::EulerAncestral))
        })
        .unwrap();
    let pixels = |dir: &Path, entry: &sdspool::jobs::run::manifest::PromptEntry| {
        image::open(dir.join(entry.candidates[0].file.as_ref().unwrap()))
            .unwrap()
            .to_rgb8()
    };
    assert_eq!(
        pixels(&o.dir, &o.manifest.prompts[index]),
        pixels(&so.dir, &so.manifest.prompts[0])
    );
    assert_ne!(
        pixels(&o.dir, &o.manifest.prompts[index]),
        pixels(&o.dir, &o.manifest.prompts[index - 1]),
        "another variant differs"
    );
}

#[test]
fn sdspool_render_draws_a_prompt_matrix_grid_of_the_best_candidates() {
    let tmp = tempfile::tempdir().unwrap();
    let job_file = write(
        tmp.path(),
        "matrix.yaml",
        "prompts: [a red circle | on blue | large]\nprompt_matrix: true\ncandidates: 3\nseed: 5\nsteps: 3\nkeep_top: 1\n",
    );
    let out_dir = tmp.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_sdspool"))
        .arg("--config")
        .arg(common::root().join("config.yaml"))
        .args(["render", job_file.to_str().unwrap(), "--output"])
        .arg(&out_dir)
        .env("SDSPOOL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["prompts"].as_array().unwrap().len(), 4);
    let grid = &m["grids"][0];
    assert_eq!(grid["file"], "sweep000-grid.png");
    // The first optional part across, the second down, as AUTOMATIC1111 lays a matrix out.
    assert_eq!(grid["across"], serde_json::json!(["on blue"]));
    assert_eq!(grid["down"], serde_json::json!(["large"]));
    let picture = image::open(out_dir.join("sweep000-grid.png"))
        .unwrap()
        .to_rgb8();
    for cell in grid["cells"].as_array().unwrap() {
        let prompt = &m["prompts"][cell["prompt"].as_u64().unwrap() as usize];
        let candidate = prompt["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["candidate"] == cell["candidate"])
            .unwrap();
        assert_eq!(candidate["rank"], 1, "the best-ranked candidate: {cell}");
        assert_eq!(candidate["file"], cell["file"]);
        let img = image::open(out_dir.join(cell["file"].as_str().unwrap()))
            .unwrap()
            .to_rgb8();
        assert!(find(&picture, &img).is_some(), "{cell}");
        let text = prompt["prompt"].as_str().unwrap();
        assert_eq!(
            cell["column"],
            u64::from(text.contains("on blue")),
            "{text}"
        );
        assert_eq!(cell["row"], u64::from(text.contains("large")), "{text}");
    }
}
