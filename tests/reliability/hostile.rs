//! Hostile and broken job files: the committed corpus under tests/hostile/ (its expected.tsv
//! says what each must come to) and entries made at test time that cannot be committed (a
//! 100 MB file, links, a folder, a FIFO, a socket, a device, an unreadable file, bad names).
//! Each must land in failed/ with its reason, nothing may be written outside the output root,
//! and the daemon must stay up and render the next good job.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sdspool::spool::ErrorFile;

use super::common;
use super::harness::{self, Env, Settings};

/// What a file must come to.
#[derive(Debug, Clone)]
struct Expect {
    /// The name it is dropped into incoming/ under.
    name: Vec<u8>,
    /// Its stem in failed/ (sanitized for unusable names).
    stem: String,
    done: bool,
    step: String,
    field: Option<String>,
    reason: String,
}

fn corpus_dir() -> PathBuf {
    common::root().join("tests/hostile")
}

/// The committed corpus and its expectations.
fn corpus() -> Vec<Expect> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.tsv")).unwrap();
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 5, "expected.tsv: {line:?}");
        out.push(Expect {
            name: cols[0].as_bytes().to_vec(),
            stem: cols[0].trim_end_matches(".yaml").to_string(),
            done: cols[1] == "done",
            step: cols[2].to_string(),
            field: (cols[3] != "-").then(|| cols[3].to_string()),
            reason: cols[4].to_string(),
        });
    }
    let mut listed: Vec<String> = out
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect();
    listed.sort();
    let on_disk: Vec<String> = harness::names(&corpus_dir())
        .into_iter()
        .filter(|n| n != "expected.tsv")
        .collect();
    assert_eq!(
        listed, on_disk,
        "every corpus file has one line in expected.tsv"
    );
    out
}

fn claim(name: &[u8], stem: &str, reason: &str) -> Expect {
    Expect {
        name: name.to_vec(),
        stem: stem.to_string(),
        done: false,
        step: "claim".into(),
        field: None,
        reason: reason.into(),
    }
}

fn validate(name: &str, field: Option<&str>, reason: &str) -> Expect {
    Expect {
        name: name.as_bytes().to_vec(),
        stem: name.trim_end_matches(".yaml").to_string(),
        done: false,
        step: "validate".into(),
        field: field.map(str::to_string),
        reason: reason.into(),
    }
}

/// Whether this process can act as another user (root): then the daemon runs as `nobody`
/// (65534), which makes a mode-000 file unreadable to it, and can be given a device node.
fn unprivileged_daemon_possible() -> Result<(), String> {
    use std::os::unix::process::CommandExt as _;
    if !harness::is_root() {
        return Err("not running as root".into());
    }
    let lib = sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
    let probe = format!(
        "test -r '{}' && test -r '{}' && '{}' --version >/dev/null",
        lib.display(),
        common::model_dir("tiny-sd")
            .join("unet/model.onnx")
            .display(),
        env!("CARGO_BIN_EXE_sdspool"),
    );
    let ok = Command::new("sh")
        .args(["-c", &probe])
        .uid(65534)
        .gid(65534)
        .status()
        .map_err(|e| e.to_string())?;
    if !ok.success() {
        return Err("uid 65534 cannot run the binary or read ONNX Runtime and the models".into());
    }
    Ok(())
}

/// Paths and contents under `dir`, links not followed, to see that nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    harness::tree(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.file_type().is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            (rel, (m.mode(), content))
        })
        .collect()
}

#[test]
fn hostile_job_files_land_in_failed_with_their_reason_and_the_daemon_keeps_going() {
    let env = Env::new(Settings::default());
    let incoming = env.spool("incoming");
    let unprivileged = unprivileged_daemon_possible();
    let mut expects = corpus();
    let committed = expects.len();
    for e in &expects {
        let name = OsStr::from_bytes(&e.name);
        std::fs::copy(corpus_dir().join(name), incoming.join(name)).unwrap();
    }

    // Outside the spool and the output root: targets of links, a hard link's other name.
    let outside = env.root.join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(outside.join("secret.txt"), "not a job\n").unwrap();
    std::fs::write(outside.join("dir/inner.yaml"), "prompts: [a cat]\n").unwrap();
    std::fs::write(outside.join("hard.txt"), "prompts: [a cat]\nsteps: nope\n").unwrap();

    // A 100 MB file, and one a byte over limits.max_job_bytes (1 MiB by default).
    let mut big =
        std::io::BufWriter::new(std::fs::File::create(incoming.join("huge-100mb.yaml")).unwrap());
    big.write_all(b"prompts:\n").unwrap();
    let line = b"  - a photo of a cat sitting on a very long prompt line\n";
    let mut written = 9;
    while written < 100 << 20 {
        big.write_all(line).unwrap();
        written += line.len();
    }
    big.flush().unwrap();
    drop(big);
    expects.push(validate(
        "huge-100mb.yaml",
        None,
        "job files are at most 1048576 bytes",
    ));
    let mut just_over = b"prompts: [a cat]\nnegative: \"".to_vec();
    just_over.resize(1_048_576, b'x');
    just_over.extend_from_slice(b"\"\n");
    just_over.truncate(1_048_577);
    std::fs::write(incoming.join("over-limit-by-one.yaml"), &just_over).unwrap();
    expects.push(validate("over-limit-by-one.yaml", None, "is 1048577 bytes"));

    // Links: never followed, moved as links.
    let links: [(&str, PathBuf); 5] = [
        ("link-outside.yaml", outside.join("secret.txt")),
        ("link-etc-passwd.yaml", PathBuf::from("/etc/passwd")),
        ("link-dangling.yaml", PathBuf::from("/nonexistent/job.yaml")),
        ("link-loop.yaml", incoming.join("link-loop.yaml")),
        ("link-folder.yaml", outside.join("dir")),
    ];
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, incoming.join(name)).unwrap();
        expects.push(claim(
            name.as_bytes(),
            name.trim_end_matches(".yaml"),
            "is a symbolic link",
        ));
    }
    std::fs::hard_link(
        outside.join("hard.txt"),
        incoming.join("hardlink-outside.yaml"),
    )
    .unwrap();
    expects.push(validate(
        "hardlink-outside.yaml",
        Some("steps"),
        "expected u32",
    ));

    // Things that are not files.
    std::fs::create_dir(incoming.join("folder.yaml")).unwrap();
    std::fs::write(
        incoming.join("folder.yaml/inner.yaml"),
        "prompts: [a cat]\n",
    )
    .unwrap();
    expects.push(claim(b"folder.yaml", "folder", "is a folder"));
    rustix::fs::mknodat(
        rustix::fs::CWD,
        incoming.join("fifo.yaml"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    expects.push(claim(b"fifo.yaml", "fifo", "FIFO"));
    drop(std::os::unix::net::UnixListener::bind(incoming.join("socket.yaml")).unwrap());
    expects.push(claim(b"socket.yaml", "socket", "is a socket"));
    let mut skipped = Vec::new();
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        incoming.join("device.yaml"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    ) {
        Ok(()) => expects.push(claim(b"device.yaml", "device", "is a device")),
        Err(e) => skipped.push(format!("device node: {e}")),
    }

    // Names sdspool cannot use as job names.
    let long = format!("{}.yaml", "l".repeat(220));
    let names: [(&[u8], &str, &str); 4] = [
        (b"new\nline.yaml", "new_line", "control characters"),
        (long.as_bytes(), &"l".repeat(100), "bytes long"),
        (b"caf\xe9.yaml", "caf_", "not valid UTF-8"),
        (b"sneaky.result.yaml", "sneaky_result", "reserved"),
    ];
    for (name, stem, reason) in names {
        std::fs::write(incoming.join(OsStr::from_bytes(name)), "prompts: [a cat]\n").unwrap();
        expects.push(claim(name, stem, reason));
    }
    std::fs::write(incoming.join("two words.yaml"), "prompts: [a cat]\n").unwrap();
    expects.push(validate(
        "two words.yaml",
        None,
        "job id \"two words\" is not usable",
    ));

    // An unreadable file: only meaningful when the daemon cannot read everything.
    let secret = incoming.join("unreadable.yaml");
    std::fs::write(&secret, "prompts: [a cat]\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    match &unprivileged {
        Ok(()) => expects.push(claim(b"unreadable.yaml", "unreadable", "Permission denied")),
        Err(why) => {
            // Run as root, the daemon reads it: it is an ordinary good job then.
            skipped.push(format!(
                "unreadable file (the daemon runs with our privileges: {why})"
            ));
            expects.push(Expect {
                name: b"unreadable.yaml".to_vec(),
                stem: "unreadable".into(),
                done: true,
                step: "-".into(),
                field: None,
                reason: "-".into(),
            });
        }
    }
    for s in &skipped {
        eprintln!("hostile: skipped: {s}");
    }

    let before_outside = snapshot(&outside);
    let before_root: Vec<String> = harness::names(&env.root);
    let mut daemon = if unprivileged.is_ok() {
        use std::os::unix::process::CommandExt as _;
        let chown = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&env.root)
            .status()
            .unwrap();
        assert!(chown.success());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdspool"));
        cmd.args(env.run_args(&[])).uid(65534).gid(65534);
        env.spawn(cmd)
    } else {
        env.start(&[])
    };

    let failed_dir = env.spool("failed");
    let done_dir = env.spool("done");
    let want_failed = expects.iter().filter(|e| !e.done).count();
    let want_done = expects.len() - want_failed;
    harness::wait_for(
        "every hostile file to be filed",
        Duration::from_secs(180),
        || {
            let failed = harness::names(&failed_dir)
                .iter()
                .filter(|n| n.ends_with(".error.yaml"))
                .count();
            let done = harness::names(&done_dir)
                .iter()
                .filter(|n| n.ends_with(".result.yaml"))
                .count();
            assert!(
                daemon.running(),
                "the daemon died:\n{}",
                harness::tail(&daemon.log_text(), 40)
            );
            failed >= want_failed && done >= want_done
        },
    );
    // It is still up and renders the next good job.
    env.submit(
        "good.yaml",
        b"prompts: [a photo of a cat]\ncandidates: 2\nseed: 7\n",
    );
    harness::wait_for(
        "the good job after the hostile ones",
        Duration::from_secs(60),
        || done_dir.join("good.result.yaml").exists(),
    );
    assert!(daemon.running());
    daemon.signal("TERM");
    let status = daemon.wait(Duration::from_secs(30));
    let log = daemon.log_text();
    assert!(status.success(), "{}", harness::tail(&log, 40));
    assert!(!log.contains("panicked"), "{log}");

    // Every file: filed once, in the right folder, with its reason.
    let mut problems = Vec::new();
    for e in &expects {
        let shown = String::from_utf8_lossy(&e.name).into_owned();
        if e.done {
            if !done_dir.join(format!("{}.yaml", e.stem)).exists() {
                problems.push(format!("{shown}: not in done/"));
            }
            continue;
        }
        let job = failed_dir.join(format!("{}.yaml", e.stem));
        if std::fs::symlink_metadata(&job).is_err() {
            problems.push(format!("{shown}: not in failed/ as {}", job.display()));
            continue;
        }
        let error = match ErrorFile::read(&failed_dir.join(format!("{}.error.yaml", e.stem))) {
            Ok(x) => x,
            Err(err) => {
                problems.push(format!("{shown}: error file: {err}"));
                continue;
            }
        };
        if error.step != e.step || error.field != e.field || !error.error.contains(&e.reason) {
            problems.push(format!(
                "{shown}: got step {:?} field {:?} error {:?}; want step {:?} field {:?} and {:?}",
                error.step, error.field, error.error, e.step, e.field, e.reason
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let (where_, filing) = harness::filed(&env.root.join("spool"));
    assert!(filing.is_empty(), "{filing:#?}");
    assert!(
        where_
            .values()
            .all(|f| f.len() == 1 && f[0] != "incoming" && f[0] != "running"),
        "{where_:?}"
    );
    assert_eq!(
        where_.len(),
        expects.len() + 1,
        "each file filed once, under one name: {:?}",
        where_.keys().collect::<Vec<_>>()
    );

    // Nothing written outside the spool and the output root.
    assert_eq!(
        snapshot(&outside),
        before_outside,
        "the outside folder changed"
    );
    let after_root: Vec<String> = harness::names(&env.root)
        .into_iter()
        .filter(|n| !n.starts_with("daemon-"))
        .collect();
    let mut before_root: Vec<String> = before_root
        .into_iter()
        .filter(|n| !n.starts_with("daemon-"))
        .collect();
    before_root.push("output".into());
    before_root.sort();
    assert_eq!(after_root, before_root, "files appeared beside the spool");
    for p in [
        "/tmp/sdspool-hostile-absolute-id",
        "/tmp/sdspool-hostile-absolute-output",
        "/tmp/sdspool-pwned",
    ] {
        assert!(!Path::new(p).exists(), "{p} was created");
    }
    let mut outputs = harness::output_entries(&env.output);
    let mut want: Vec<String> = expects
        .iter()
        .filter(|e| e.done)
        .map(|e| e.stem.clone())
        .chain(["good".to_string()])
        .collect();
    want.sort();
    outputs.sort();
    assert_eq!(outputs, want, "output folders");
    assert!(std::fs::read_to_string("/etc/passwd").is_ok());

    harness::report(
        "hostile",
        &[
            ("files_tried", expects.len().to_string()),
            ("committed", committed.to_string()),
            ("made_at_test_time", (expects.len() - committed).to_string()),
            ("failed_with_reason", want_failed.to_string()),
            ("accepted", want_done.to_string()),
            ("daemon_as_uid_65534", unprivileged.is_ok().to_string()),
            ("skipped", skipped.len().to_string()),
        ],
    );
}
