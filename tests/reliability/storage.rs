//! A full disk and read-only folders: the job is not failed as if it were bad; it stays in
//! running/, the daemon stays up and says why, and the job completes (without rendering its
//! finished images again) once space or write access returns. The folders are small tmpfs or
//! read-only bind mounts, made when the test may mount (root); otherwise the test says it was
//! skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::harness::{self, Env, Settings};

/// A mount that is undone when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Result<Mount, String> {
        std::fs::create_dir_all(at).unwrap();
        mount(
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ],
            at,
        )?;
        Ok(Mount(at.to_path_buf()))
    }

    fn bind_read_only(at: &Path) -> Result<Mount, String> {
        mount(&["--bind"], at)?;
        let m = Mount(at.to_path_buf());
        remount(at, "remount,bind,ro")?;
        Ok(m)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &Path) -> Result<(), String> {
    let mut cmd = Command::new("mount");
    cmd.args(args);
    if args == ["--bind"] {
        cmd.arg(at);
    }
    let out = cmd.arg(at).output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn remount(at: &Path, options: &str) -> Result<(), String> {
    let out = Command::new("mount")
        .args(["-o", options])
        .arg(at)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Fills the file system holding `dir` up to `leave` bytes (roughly) with one file.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write as _;
    let filler = dir.join("filler.bin");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xA5u8; 64 << 10];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.flush();
    let len = std::fs::metadata(&filler).unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    filler
}

const JOB: &[u8] = b"prompts: [a photo of a cat, a red circle]\ncandidates: 6\nseed: 3\nsteps: 2\n";

fn wait_logged(d: &mut harness::Daemon, what: &str) {
    harness::wait_for(
        &format!("the log to say {what:?}"),
        Duration::from_secs(60),
        || {
            assert!(
                d.running(),
                "the daemon died:\n{}",
                harness::tail(&d.log_text(), 30)
            );
            d.log_text().contains(what)
        },
    );
}

fn skip(what: &str, why: &str) {
    eprintln!("{what}: skipped: cannot mount here ({why}); run as root to test it");
}

#[test]
fn a_full_disk_makes_the_job_wait_and_it_completes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let _mount = match Mount::tmpfs(&tmp.path().join("small"), "1m") {
        Ok(m) => m,
        Err(e) => return skip("full disk", &e),
    };
    let output = tmp.path().join("small/output");
    let env = Env::new(Settings {
        output_dir: Some(output.clone()),
        ..Settings::default()
    });
    std::fs::create_dir_all(&output).unwrap();
    // Room for the manifest and a few images, not for all twelve and the contact sheets.
    let filler = fill(&output, 48 << 10);
    let mut d = env.start(&[]);
    env.submit("cats.yaml", JOB);
    env.submit("later.yaml", b"prompts: [a dog]\ncandidates: 2\nseed: 4\n");
    wait_logged(&mut d, "No space left on device");
    std::thread::sleep(Duration::from_secs(3)); // and a retry after it
    assert!(env.spool("running").join("cats.yaml").exists());
    assert!(
        harness::names(&env.spool("failed")).is_empty(),
        "failed as if the job were bad"
    );
    assert!(d.log_text().contains("is not failed: it stays in running/"));
    let mut ids = harness::ImageIds::new();
    harness::add_image_ids(&output, &mut ids);
    let before = ids.len();

    std::fs::remove_file(&filler).unwrap();
    harness::wait_for("both jobs done", Duration::from_secs(60), || {
        env.spool("done").join("cats.yaml").exists()
            && env.spool("done").join("later.yaml").exists()
    });
    let (n, problems) = harness::check_output(&output.join("cats"), 2, 6);
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(n, 12);
    harness::add_image_ids(&output, &mut ids);
    let twice: Vec<_> = ids.iter().filter(|(_, i)| i.len() > 1).collect();
    assert!(twice.is_empty(), "rendered again: {twice:?}");
    assert!(harness::temp_files(&output).is_empty());
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).success());
    let retries = d.log_text().matches("cannot write the job's files").count();
    harness::report(
        "full-disk",
        &[
            ("images_on_disk_while_full", before.to_string()),
            ("waits", retries.to_string()),
            ("outcome", "done".into()),
        ],
    );
}

#[test]
fn a_read_only_output_folder_makes_the_job_wait_and_it_completes_when_writable() {
    let tmp = tempfile::tempdir().unwrap();
    let at = tmp.path().join("ro");
    let _mount = match Mount::tmpfs(&at, "8m") {
        Ok(m) => m,
        Err(e) => return skip("read-only output", &e),
    };
    let output = at.join("output");
    std::fs::create_dir_all(&output).unwrap();
    remount(&at, "remount,ro").unwrap();
    let env = Env::new(Settings {
        output_dir: Some(output.clone()),
        ..Settings::default()
    });
    let mut d = env.start(&[]);
    env.submit("cats.yaml", JOB);
    wait_logged(&mut d, "Read-only file system");
    assert!(env.spool("running").join("cats.yaml").exists());
    assert!(harness::names(&env.spool("failed")).is_empty());
    remount(&at, "remount,rw").unwrap();
    harness::wait_for("the job done", Duration::from_secs(60), || {
        env.spool("done").join("cats.yaml").exists()
    });
    let (_, problems) = harness::check_output(&output.join("cats"), 2, 6);
    assert!(problems.is_empty(), "{problems:#?}");
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).success());
}

#[test]
fn a_read_only_done_folder_makes_the_finished_job_wait_to_be_filed() {
    let env = Env::new(Settings::default());
    let done = env.spool("done");
    std::fs::create_dir_all(&done).unwrap();
    let mount = match Mount::bind_read_only(&done) {
        Ok(m) => m,
        Err(e) => return skip("read-only done/", &e),
    };
    let mut d = env.start(&[]);
    env.submit("cats.yaml", b"prompts: [a cat]\ncandidates: 2\nseed: 5\n");
    wait_logged(&mut d, "Read-only file system");
    assert!(d.running());
    assert!(env.spool("running").join("cats.yaml").exists());
    drop(mount);
    harness::wait_for("the job filed in done/", Duration::from_secs(60), || {
        done.join("cats.yaml").exists()
    });
    let (_, problems) = harness::filed(&env.root.join("spool"));
    assert!(problems.is_empty(), "{problems:#?}");
    let result = std::fs::read_to_string(done.join("cats.result.yaml")).unwrap();
    assert!(
        result.contains("rendered_by_this_run: 0"),
        "rendered again: {result}"
    );
    d.signal("TERM");
    assert!(d.wait(Duration::from_secs(30)).success());
}
