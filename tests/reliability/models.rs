//! Broken model files: the daemon starts without loading any model, and a model that cannot be
//! loaded fails the job that needs it, with a message naming the file (said once), without a
//! panic or backtrace; the daemon goes on. (Before models loaded on first use, issue 21, a
//! broken file stopped the start instead and no job was charged.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::common;
use super::harness::{self, Env, Settings};

/// How a model folder is broken, and the file the message must name.
struct Breakage {
    what: &'static str,
    clip: bool,
    file: &'static str,
    apply: fn(&Path),
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn breakages() -> Vec<Breakage> {
    vec![
        Breakage {
            what: "UNet cut to 100 kB",
            clip: false,
            file: "unet/model.onnx",
            apply: |m| truncate(&m.join("unet/model.onnx"), 100_000),
        },
        Breakage {
            what: "UNet cut just short of its end",
            clip: false,
            file: "unet/model.onnx",
            apply: |m| {
                let p = m.join("unet/model.onnx");
                let len = std::fs::metadata(&p).unwrap().len();
                truncate(&p, len - 1000);
            },
        },
        Breakage {
            what: "empty text encoder",
            clip: false,
            file: "text_encoder/model.onnx",
            apply: |m| truncate(&m.join("text_encoder/model.onnx"), 0),
        },
        Breakage {
            what: "VAE decoder overwritten with junk",
            clip: false,
            file: "vae_decoder/model.onnx",
            apply: |m| {
                let junk: Vec<u8> = (0..5000u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                std::fs::write(m.join("vae_decoder/model.onnx"), junk).unwrap();
            },
        },
        Breakage {
            what: "tokenizer vocabulary cut",
            clip: false,
            file: "tokenizer/vocab.json",
            apply: |m| truncate(&m.join("tokenizer/vocab.json"), 20_000),
        },
        Breakage {
            what: "scheduler config cut",
            clip: false,
            file: "scheduler/scheduler_config.json",
            apply: |m| truncate(&m.join("scheduler/scheduler_config.json"), 100),
        },
        Breakage {
            what: "model_index.json cut",
            clip: false,
            file: "model_index.json",
            apply: |m| truncate(&m.join("model_index.json"), 100),
        },
        Breakage {
            what: "CLIP rerank model cut",
            clip: true,
            file: "model.onnx",
            apply: |m| truncate(&m.join("model.onnx"), 400_000),
        },
    ]
}

/// A job the last crash left in running/ (its owner, pid 0, is gone), with one attempt.
fn leave_a_crashed_job(env: &Env) -> PathBuf {
    let running = env.spool("running");
    std::fs::create_dir_all(&running).unwrap();
    std::fs::write(running.join("waiting.yaml"), "prompts: [a cat]\n").unwrap();
    std::fs::write(
        running.join("waiting.attempts"),
        format!(
            "attempts: 1\nhost: {}\npid: 0\nlocked: true\nstarted_at: \"2026-01-01T00:00:00Z\"\n",
            sdspool::spool::hostname()
        ),
    )
    .unwrap();
    running.join("waiting.attempts")
}

#[test]
fn a_broken_model_file_fails_the_job_that_needs_it_naming_the_file_and_the_daemon_goes_on() {
    let mut figures = Vec::new();
    for b in breakages() {
        let (_tmp, dir) = common::model_copy(if b.clip { "tiny-clip" } else { "tiny-sd" });
        (b.apply)(&dir);
        let env = Env::new(Settings {
            model: (!b.clip).then(|| dir.clone()),
            rerank_model: b.clip.then(|| dir.clone()),
            max_crashes: 2,
            ..Settings::default()
        });
        leave_a_crashed_job(&env);
        let mut d = env.start(&["--until-idle"]);
        let status = d.wait(Duration::from_secs(60));
        let log = d.log_text();
        assert!(status.success(), "{}: exit {status:?}\n{log}", b.what);
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "core dumped"] {
            assert!(!log.contains(bad), "{}: {bad} in the log:\n{log}", b.what);
        }
        assert!(
            env.spool("failed").join("waiting.yaml").exists(),
            "{}: {:?}\n{log}",
            b.what,
            harness::names(&env.spool("running"))
        );
        let error =
            std::fs::read_to_string(env.spool("failed").join("waiting.error.yaml")).unwrap();
        let field = if b.clip {
            "field: rerank"
        } else {
            "field: model"
        };
        assert!(error.contains(field), "{}: {error}", b.what);
        let named = dir.join(b.file).display().to_string();
        assert!(
            error.contains(&named),
            "{}: the error does not name {named}:\n{error}",
            b.what
        );
        let message = error
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default()
            .to_string();
        // The cause is said once, not repeated by every layer.
        let cause = message.rsplit(": ").next().unwrap_or_default();
        assert!(!cause.is_empty(), "{}: {error}", b.what);
        assert_eq!(
            message.matches(cause).count(),
            1,
            "{}: repeated: {message}",
            b.what
        );
        figures.push(format!("{}: {}", b.what, message.trim()));
    }
    for f in &figures {
        eprintln!("{f}");
    }
    harness::report("broken-models", &[("cases", figures.len().to_string())]);
}
