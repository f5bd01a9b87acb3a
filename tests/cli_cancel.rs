//! What `sdspool cancel` of a running job reports as kept: the images on disk when the daemon
//! stopped it, not the images its progress counted (a prompt's images are written once all its
//! candidates are rendered, so those rendered in an unfinished prompt are dropped).

mod common;

use common::config_file::{Defaults, TestConfig};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    /// A daemon config with tiny-sd rendering one candidate per UNet batch.
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let mut c = TestConfig::daemon(&root);
        c.defaults = Defaults {
            width: Some(64),
            height: Some(64),
            max_batch: Some(1),
            ..Defaults::default()
        };
        let config = c.write(&root);
        Env {
            _tmp: tmp,
            root,
            config,
        }
    }

    fn spool(&self, sub: &str) -> PathBuf {
        self.root.join("spool").join(sub)
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("SDSPOOL_LOG", "warn")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "sdspool {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }
}

/// The images a manifest lists that are on disk.
fn images_on_disk(dir: &Path) -> usize {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    manifest["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["candidates"].as_array().unwrap().clone())
        .filter_map(|c| c["file"].as_str().map(|f| dir.join(f)))
        .filter(|f| f.is_file())
        .count()
}

#[test]
fn a_cancelled_job_reports_the_images_really_kept() {
    let env = Env::new();
    let job = env.root.join("long.yaml");
    std::fs::write(&job, "prompts: [a red square]\ncandidates: 8\nsteps: 150\n").unwrap();
    env.ok(&["submit", job.to_str().unwrap()]);
    let mut daemon = common::Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&env.config)
            .args(["run", "--until-idle"])
            .env("SDSPOOL_LOG", "info")
            .stdout(Stdio::null()),
    );
    // Two of the prompt's eight candidates rendered: none is written yet.
    let status_file = env.spool("running/long.status.json");
    common::wait_for("two rendered images", Duration::from_secs(120), || {
        std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|v| v["images_done"].as_u64().unwrap_or(0) >= 2)
    });
    let said = env.ok(&["cancel", "long"]);
    assert!(
        said.contains("cancel requested for the running job long")
            && said.contains("its error file in failed/ says"),
        "{said}"
    );
    let exit = common::wait_exit(&mut daemon, Duration::from_secs(120));
    let log = common::stderr_of(&mut daemon);
    assert!(exit.success(), "{log}");
    let error = std::fs::read_to_string(env.spool("failed/long.error.yaml"))
        .unwrap_or_else(|e| panic!("long was not cancelled ({e}):\n{log}"));
    let kept = images_on_disk(&env.root.join("output/long"));
    assert_eq!(
        kept, 0,
        "the prompt was finished before the cancel: {error}"
    );
    assert!(
        error.contains("none of its 8 images was written") && !error.contains("were finished"),
        "{error}"
    );
}
