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
    let c = sdspool::config::Config::load(&common::root().join("systemd/config.yaml")).unwrap();
    assert!(c.execution.require_gpu);
    assert_eq!(c.spool.dir, std::path::Path::new("/var/lib/sdspool/spool"));
    assert!(c.daemon.grace_seconds < 120, "below TimeoutStopSec");
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
