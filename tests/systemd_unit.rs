//! systemd/sdspool.service passes `systemd-analyze verify`, and asks for what the daemon does:
//! Type=notify with a watchdog, a dedicated user, state and cache directories, hardening that a
//! GPU service tolerates.

mod common;

use std::process::Command;

#[test]
fn the_unit_file_verifies_and_keeps_its_promises() {
    let unit = std::fs::read_to_string(common::root().join("systemd/sdspool.service")).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "User=sdspool",
        "Group=sdspool",
        "StateDirectory=sdspool",
        "CacheDirectory=sdspool",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ReadWritePaths=",
        "PrivateDevices=no",
        "DevicePolicy=closed",
        "DeviceAllow=char-nvidiactl rw",
        "DeviceAllow=char-nvidia-uvm rw",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "{line} missing");
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed here; only the unit's contents were checked");
        return;
    };
    // verify needs ExecStart's binary to exist: point it at the one just built.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("sdspool.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/sdspool", env!("CARGO_BIN_EXE_sdspool")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn the_service_config_example_parses() {
    let c = sdspool::app::config::Config::load(&common::root().join("systemd/config.yaml")).unwrap();
    assert!(c.execution.require_gpu);
    assert_eq!(c.spool.dir, std::path::Path::new("/var/lib/sdspool/spool"));
    assert!(c.daemon.grace_seconds < 120, "below TimeoutStopSec");
}

/// A user of the shared-spool test: ids (made up, no passwd entry needed) and a name for
/// `$USER`, which `sdspool` records as who paused or cancelled.
#[derive(Debug, Clone)]
struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    umask: &'static str,
}

/// One directory line of `systemd/sdspool.tmpfiles`.
#[derive(Debug)]
struct TmpfilesDir {
    path: String,
    mode: u32,
    user: String,
    group: String,
}

/// The `d` lines of the shipped tmpfiles file.
fn shipped_dirs() -> Vec<TmpfilesDir> {
    let text = std::fs::read_to_string(common::root().join("systemd/sdspool.tmpfiles")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[0], "d", "only directories are expected: {l}");
            TmpfilesDir {
                path: f[1].to_string(),
                mode: u32::from_str_radix(f[2], 8).unwrap(),
                user: f[3].to_string(),
                group: f[4].to_string(),
            }
        })
        .collect()
}

/// The shipped sysusers file: the daemon's user, the groups, and the groups it is a member of.
fn shipped_users() -> (String, Vec<String>, Vec<(String, String)>) {
    let text = std::fs::read_to_string(common::root().join("systemd/sdspool.sysusers")).unwrap();
    let (mut user, mut groups, mut members) = (String::new(), Vec::new(), Vec::new());
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.as_slice() {
            ["u", name, ..] => user = name.to_string(),
            ["g", name, ..] => groups.push(name.to_string()),
            ["m", name, group, ..] => members.push((name.to_string(), group.to_string())),
            _ => {}
        }
    }
    (user, groups, members)
}

/// The spool of the shipped layout (tmpfiles and sysusers) under a temporary root, with the
/// shipped service config's paths, a daemon user and two members of the submit group.
struct SharedSpool {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    config: std::path::PathBuf,
    spool: std::path::PathBuf,
    binary: std::path::PathBuf,
    setpriv: std::path::PathBuf,
    daemon: User,
    alice: User,
    bob: User,
}

impl SharedSpool {
    /// `None` (with the reason printed) where users cannot be switched: not root, or no setpriv.
    fn new() -> Option<SharedSpool> {
        use std::os::unix::fs::MetadataExt as _;
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            eprintln!("skipped: switching users needs root (the CI runs the tests as root)");
            return None;
        }
        let Ok(setpriv) = which("setpriv") else {
            eprintln!("skipped: setpriv (util-linux) is not installed");
            return None;
        };
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        set_mode(&root, 0o755);
        // Ids no account has; the process id keeps parallel runs apart.
        let base = 3_000_000_000 + (std::process::id() % 100_000) * 8;
        let (daemon_user, groups, members) = shipped_users();
        let submit = base + 3;
        let gid_of = |group: &str| -> u32 {
            match group {
                g if g == daemon_user => base,
                g if groups.iter().any(|x| x == g) => submit,
                g => panic!("tmpfiles names group {g}, which sysusers does not create"),
            }
        };
        let daemon = User {
            name: "sdspool",
            uid: base,
            gid: base,
            groups: members
                .iter()
                .filter(|(u, _)| *u == daemon_user)
                .map(|(_, g)| gid_of(g))
                .collect(),
            // The unit's UMask=.
            umask: "0002",
        };
        let member = |name, id| User {
            name,
            uid: id,
            gid: id,
            groups: vec![submit],
            umask: "0077",
        };
        for d in shipped_dirs() {
            let path = root.join(d.path.trim_start_matches('/'));
            std::fs::create_dir_all(&path).unwrap();
            assert_eq!(d.user, daemon_user, "{}", d.path);
            std::os::unix::fs::chown(&path, Some(daemon.uid), Some(gid_of(&d.group))).unwrap();
            set_mode(&path, d.mode);
        }
        let shipped =
            sdspool::app::config::Config::load(&common::root().join("systemd/config.yaml")).unwrap();
        let inside = |p: &std::path::Path| root.join(p.strip_prefix("/").unwrap());
        let spool = inside(&shipped.spool.dir);
        assert!(
            spool.join("incoming").is_dir(),
            "tmpfiles makes the configured spool"
        );
        let models = root.join("models");
        for m in ["tiny-sd", "tiny-clip"] {
            common::copy_dir(&common::model_dir(m), &models.join(m));
        }
        let lib =
            sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
        let config = root.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "onnxruntime:\n  library: {lib}\nspool:\n  dir: {spool}\n  rescan_seconds: 1\n  settle_seconds: 0\noutput_dir: {out}\n\
                 defaults:\n  width: 64\n  height: 64\n  steps: 4\n  candidates: 2\n  max_batch: 1\n\
                 default_model: tiny-sd\nmodels:\n  tiny-sd:\n    path: {models}/tiny-sd\nrerank:\n  model: {models}/tiny-clip\n",
                lib = lib.display(),
                spool = spool.display(),
                out = inside(&shipped.output_dir).display(),
                models = models.display(),
            ),
        )
        .unwrap();
        let mut s = SharedSpool {
            _tmp: tmp,
            root,
            config,
            spool,
            binary: env!("CARGO_BIN_EXE_sdspool").into(),
            setpriv,
            daemon,
            alice: member("alice", base + 1),
            bob: member("bob", base + 2),
        };
        // The build and ONNX Runtime may lie where other users cannot go (/root): then copies.
        if !s.reaches(&s.daemon.clone(), &s.binary) {
            let copy = s.root.join("sdspool");
            std::fs::copy(&s.binary, &copy).unwrap();
            s.binary = copy;
        }
        if !s.reaches(&s.daemon.clone(), &lib) {
            let copy = s.root.join(lib.file_name().unwrap());
            std::fs::copy(&lib, &copy).unwrap();
            let text = std::fs::read_to_string(&s.config).unwrap();
            let text = text.replace(&lib.display().to_string(), &copy.display().to_string());
            std::fs::write(&s.config, text).unwrap();
        }
        Some(s)
    }

    /// `program args` as `user`, with the user's umask.
    fn command(&self, user: &User, program: &std::path::Path, args: &[&str]) -> Command {
        let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
        let mut c = Command::new(&self.setpriv);
        c.arg(format!("--reuid={}", user.uid))
            .arg(format!("--regid={}", user.gid));
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.arg(format!("--groups={}", groups.join(",")));
        }
        c.args([
            "--",
            "sh",
            "-c",
            &format!("umask {}; exec \"$@\"", user.umask),
            "sh",
        ])
        .arg(program)
        .args(args)
        .env("USER", user.name)
        .env("HOME", &self.root)
        .env("SDSPOOL_LOG", "warn");
        c
    }

    fn reaches(&self, user: &User, path: &std::path::Path) -> bool {
        self.command(
            user,
            std::path::Path::new("test"),
            &["-r", &path.display().to_string()],
        )
        .status()
        .is_ok_and(|s| s.success())
    }

    /// `sdspool --config ... args` as `user`.
    fn sdspool(&self, user: &User, args: &[&str]) -> Command {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        self.command(user, &self.binary, &all)
    }

    /// Runs `sdspool args` as `user`, which must succeed; its standard output.
    fn ok(&self, user: &User, args: &[&str]) -> String {
        let out = self.sdspool(user, args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "`sdspool {}` as {}: {stdout}{stderr}",
            args.join(" "),
            user.name
        );
        stdout
    }

    fn spool(&self, sub: &str) -> std::path::PathBuf {
        self.spool.join(sub)
    }

    /// A job file anyone may read.
    fn job(&self, name: &str, body: &str) -> String {
        let dir = self.root.join("jobs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    }

    /// The daemon, as its own user, until the spool is idle (or paused).
    fn run_daemon(&self) -> common::Running {
        common::Running::spawn(
            self.sdspool(&self.daemon, &["run", "--until-idle"])
                .env("SDSPOOL_LOG", "info")
                .stdout(std::process::Stdio::null()),
        )
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::symlink_metadata(path).unwrap().uid()
}

/// The daemon's exit status and log, once it exits (bounded).
fn finish(mut daemon: common::Running) -> (std::process::ExitStatus, String) {
    let status = common::wait_exit(&mut daemon, std::time::Duration::from_secs(120));
    (status, common::stderr_of(&mut daemon))
}

#[test]
fn the_shipped_layout_lets_the_submit_group_use_the_commands_and_the_daemon_act_on_them() {
    let Some(s) = SharedSpool::new() else {
        return;
    };
    let (alice, bob) = (&s.alice, &s.bob);

    // Alice's queued job: bob can neither remove nor replace it (incoming/ is sticky).
    let first = s.job("first.yaml", "prompts: [a red square]\ncandidates: 1\n");
    s.ok(alice, &["submit", &first]);
    let queued = s.spool("incoming/first.yaml");
    assert_eq!(owner(&queued), alice.uid);
    let rm = s
        .command(
            bob,
            std::path::Path::new("rm"),
            &["-f", queued.to_str().unwrap()],
        )
        .output()
        .unwrap();
    assert!(
        !rm.status.success() && queued.exists(),
        "bob removed alice's job"
    );
    let replaced = s
        .sdspool(bob, &["submit", "--replace", &first])
        .output()
        .unwrap();
    assert!(!replaced.status.success(), "bob replaced alice's job");
    assert_eq!(owner(&queued), alice.uid);

    // Pause and resume: a switch the whole group shares.
    s.ok(alice, &["pause", "--reason", "maintenance"]);
    assert!(s.ok(bob, &["status"]).contains("PAUSED"));
    assert!(s.ok(bob, &["resume"]).contains("resumed"));
    s.ok(alice, &["pause"]);

    // A member may not move a queued job to failed/: the cancel leaves a request...
    let said = s.ok(alice, &["cancel", "first"]);
    assert!(
        said.contains("cancel requested for the queued job first.yaml"),
        "{said}"
    );
    assert!(queued.exists() && common::names(&s.spool("failed")).is_empty());
    let status = s.ok(bob, &["status"]);
    assert!(status.contains("CANCEL requested by alice@"), "{status}");

    // ...that the daemon, as its own user, acts on, paused or not (--until-idle then exits).
    let (exit, log) = finish(s.run_daemon());
    assert!(exit.success(), "{log}");
    assert_eq!(
        common::names(&s.spool("failed")),
        ["first.error.yaml", "first.yaml"],
        "{log}"
    );
    let error = std::fs::read_to_string(s.spool("failed/first.error.yaml")).unwrap();
    assert!(
        error.contains("step: cancelled") && error.contains("cancelled by alice@"),
        "{error}"
    );
    assert!(common::names(&s.spool("incoming")).is_empty());
    assert!(common::names(&s.spool("control/cancel")).is_empty());

    // A running job: a member's request stops it, and the daemon clears the request.
    let long = s.job(
        "long.yaml",
        "prompts: [a blue circle]\ncandidates: 8\nsteps: 150\n",
    );
    s.ok(alice, &["submit", &long]);
    s.ok(bob, &["resume"]);
    let daemon = s.run_daemon();
    let status_file = s.spool("running/long.status.json");
    let failed = s.spool("failed/long.yaml");
    common::wait_for("long to run", std::time::Duration::from_secs(120), || {
        status_file.exists() || failed.exists()
    });
    assert!(
        !failed.exists(),
        "{}",
        std::fs::read_to_string(s.spool("failed/long.error.yaml")).unwrap_or_default()
    );
    let said = s.ok(bob, &["cancel", "long"]);
    assert!(
        said.contains("cancel requested for the running job long"),
        "{said}"
    );
    let (exit, log) = finish(daemon);
    assert!(exit.success(), "{log}");
    let error = std::fs::read_to_string(s.spool("failed/long.error.yaml")).unwrap();
    assert!(
        error.contains("step: cancelled") && error.contains("cancelled by bob@"),
        "{error}"
    );
    assert!(common::names(&s.spool("control/cancel")).is_empty());
    assert!(common::names(&s.spool("running")).is_empty());
}

#[test]
fn reload_sends_sighup_which_the_daemon_handles() {
    let unit = std::fs::read_to_string(common::root().join("systemd/sdspool.service")).unwrap();
    // `systemctl reload` must not kill the daemon: SIGHUP re-reads its configuration (tested in
    // tests/daemon.rs), so the unit sends exactly that.
    assert!(
        unit.lines()
            .any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"),
        "ExecReload missing"
    );
}
