//! A temporary root with a configuration file, a spool and an output folder, for the tests that
//! drop jobs into the spool and run the daemon until it is idle.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Running, stderr_of, wait_exit};

pub struct SpoolEnv {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
}

impl SpoolEnv {
    /// A spool subfolder (`incoming`, `done`, ...).
    pub fn spool(&self, sub: &str) -> PathBuf {
        self.root.join("spool").join(sub)
    }

    /// Drops a job file into `incoming/` as users do: written beside, then renamed in.
    pub fn submit(&self, name: &str, body: &str) {
        std::fs::create_dir_all(self.spool("incoming")).unwrap();
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.spool("incoming").join(name)).unwrap();
    }

    /// Runs the daemon with `--until-idle` at log level info; its log. Fails the test when the
    /// daemon does not exit 0 within `limit`.
    pub fn run_until_idle_within(&self, limit: Duration) -> String {
        let mut daemon = Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_sdspool"))
                .arg("--config")
                .arg(&self.config)
                .args(["run", "--until-idle"])
                .env("SDSPOOL_LOG", "info")
                .stdout(Stdio::null()),
        );
        let status = wait_exit(&mut daemon, limit);
        let log = stderr_of(&mut daemon);
        assert!(status.success(), "exit {status:?}\n{log}");
        log
    }

    /// [`SpoolEnv::run_until_idle_within`] five minutes.
    pub fn run_until_idle(&self) -> String {
        self.run_until_idle_within(Duration::from_secs(300))
    }
}
