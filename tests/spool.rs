//! The spool on real files in temporary folders: claim order, exactly-once claims under races
//! (rename and link+unlink), half-written files, the watcher, unusable entries, crash
//! accounting, cleanup and name clashes. No models needed.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sdspool::spool::{
    ClaimMethod, ErrorFile, Failure, JobStatus, Layout, Preference, Spool, SpoolConfig,
    SpoolOptions, StorageWait, read_status,
};

fn config(dir: &Path, rescan: u64, settle: u64) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        rescan_seconds: rescan,
        settle_seconds: settle,
        max_crashes: 3,
        ..SpoolConfig::default()
    }
}

fn options(watch: bool, claim_method: ClaimMethod) -> SpoolOptions {
    SpoolOptions {
        watch,
        claim_method,
        ..SpoolOptions::default()
    }
}

fn job_text(priority: Option<i32>) -> String {
    let mut s = "prompts:\n  - a photo of a cat\n".to_string();
    if let Some(p) = priority {
        s.push_str(&format!("priority: {p}\n"));
    }
    s
}

fn set_age(path: &Path, secs: u64) {
    set_mtime(path, SystemTime::now() - Duration::from_secs(secs));
}

fn set_mtime(path: &Path, t: SystemTime) {
    let f = fs::File::options().write(true).open(path).unwrap();
    f.set_modified(t).unwrap();
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn jobs_are_claimed_by_priority_then_age_then_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    let layout = Layout::new(tmp.path());
    layout.create().unwrap();
    let incoming = &layout.incoming;
    let jobs: [(&str, String, u64); 7] = [
        ("low.yaml", job_text(Some(-1)), 400),
        ("old.yaml", job_text(None), 300),
        ("broken.yaml", "prompts: [\n".to_string(), 250),
        ("b.yaml", job_text(Some(0)), 200),
        ("a.yaml", job_text(Some(0)), 200),
        ("new.yml", job_text(None), 10),
        ("urgent.yaml", job_text(Some(5)), 5),
    ];
    // Present before the daemon starts, so only its first scan sees them, all at once (a job
    // announced by an event would be taken as soon as it is complete).
    let now = SystemTime::now();
    for (name, text, age) in &jobs {
        let p = incoming.join(name);
        fs::write(&p, text).unwrap();
        set_mtime(&p, now - Duration::from_secs(*age));
    }
    let spool = Spool::open(&cfg).unwrap();
    let mut order = Vec::new();
    while let Some(c) = spool.next_job(Duration::from_secs(3)).unwrap() {
        assert_eq!(c.attempts, 1);
        assert!(!c.resumed);
        assert!(c.is_locked());
        assert_eq!(c.path_in_running, spool.layout().running.join(&c.name));
        order.push((c.submitted_as.clone(), c.name.clone(), c.priority));
        spool.finish_done(c, "images: 1\n").unwrap();
    }
    assert_eq!(
        order,
        vec![
            ("urgent.yaml".into(), "urgent.yaml".into(), 5),
            ("old.yaml".into(), "old.yaml".into(), 0),
            // Does not parse: runs with priority 0 (and fails with its reason in the worker).
            ("broken.yaml".into(), "broken.yaml".into(), 0),
            ("a.yaml".into(), "a.yaml".into(), 0),
            ("b.yaml".into(), "b.yaml".into(), 0),
            // `.yml` runs as `<stem>.yaml`.
            ("new.yml".into(), "new.yaml".into(), 0),
            ("low.yaml".into(), "low.yaml".into(), -1),
        ]
    );
    assert!(names_in(incoming).is_empty());
    assert!(names_in(&spool.layout().running).is_empty());
    let done = names_in(&spool.layout().done);
    assert_eq!(done.len(), 14, "{done:?}");
    assert_eq!(
        fs::read_to_string(spool.layout().done.join("urgent.result.yaml")).unwrap(),
        "images: 1\n"
    );
}

#[test]
fn a_preferred_model_goes_first_within_its_priority_and_nobody_is_passed_over_more_than_the_limit()
{
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    let layout = Layout::new(tmp.path());
    layout.create().unwrap();
    // Oldest first: x0, a1, a2, ..., with `model:` as written (x: another model; none: the
    // default); `hi` has a higher priority and a model nobody prefers.
    let jobs = [
        ("x0", "model: x\n"),
        ("a1", "model: a\n"),
        ("n2", ""),
        ("a3", "model: a\n"),
        ("a4", "model: a\n"),
        ("a5", "model: a\n"),
        ("a6", "model: [not, text]\n"),
        ("a7", "model: a\n"),
        ("hi", "model: x\npriority: 1\n"),
    ];
    let now = SystemTime::now();
    for (i, (name, extra)) in jobs.iter().enumerate() {
        let p = layout.incoming.join(format!("{name}.yaml"));
        fs::write(&p, format!("{}{extra}", job_text(None))).unwrap();
        set_mtime(&p, now - Duration::from_secs(100 - i as u64));
    }
    let spool = Spool::open(&cfg).unwrap();
    let asked = Mutex::new(Vec::new());
    let prefer = |model: Option<&str>| {
        asked.lock().unwrap().push(model.map(str::to_string));
        model == Some("a")
    };
    let preference = Preference {
        prefer: &prefer,
        max_passed_over: 3,
    };
    let mut order = Vec::new();
    while let Some(c) = spool
        .next_job_preferring(Duration::from_secs(3), &preference)
        .unwrap()
    {
        order.push(c.name.trim_end_matches(".yaml").to_string());
        spool.finish_done(c, "images: 1\n").unwrap();
    }
    // A higher priority still goes first. Then the preferred model's jobs jump the older x0 and
    // n2, each of which goes first once passed over 3 times; a6 (`model:` not text) is not
    // preferred either.
    assert_eq!(
        order,
        ["hi", "a1", "a3", "a4", "x0", "a5", "n2", "a7", "a6"],
        "{order:?}"
    );
    let asked = asked.into_inner().unwrap();
    assert!(
        asked.contains(&None),
        "a job without `model:` is asked as None"
    );
}

/// Claims 40 jobs with `threads_per_spool` threads on each of `spools` Spool instances and checks
/// that each was claimed and filed exactly once.
fn race(method: ClaimMethod, spools: usize, threads_per_spool: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    let instances: Vec<Arc<Spool>> = (0..spools)
        .map(|_| Arc::new(Spool::open_with(&cfg, options(true, method)).unwrap()))
        .collect();
    for i in 0..40 {
        fs::write(
            instances[0]
                .layout()
                .incoming
                .join(format!("job{i:02}.yaml")),
            job_text(Some(i % 3)),
        )
        .unwrap();
    }
    let claims = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));
    let mut handles = Vec::new();
    for (s, spool) in instances.iter().enumerate() {
        for t in 0..threads_per_spool {
            let spool = Arc::clone(spool);
            let claims = Arc::clone(&claims);
            let who = s * 10 + t;
            handles.push(std::thread::spawn(move || {
                let mut idle = 0;
                while idle < 3 {
                    match spool.next_job(Duration::from_millis(300)).unwrap() {
                        Some(c) => {
                            idle = 0;
                            claims.lock().unwrap().push((who, c.name.clone()));
                            // Hold the job a moment so the racers overlap.
                            std::thread::sleep(Duration::from_millis(2));
                            spool.finish_done(c, "ok: true\n").unwrap();
                        }
                        None => idle += 1,
                    }
                }
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    let claims = claims.lock().unwrap();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, name) in claims.iter() {
        *count.entry(name).or_default() += 1;
    }
    assert_eq!(count.len(), 40, "{claims:?}");
    assert!(count.values().all(|n| *n == 1), "claimed twice: {count:?}");
    let layout = instances[0].layout();
    let done = names_in(&layout.done);
    let expected: BTreeSet<String> = (0..40)
        .flat_map(|i| [format!("job{i:02}.yaml"), format!("job{i:02}.result.yaml")])
        .collect();
    // A job processed twice would have left job07-2.yaml beside job07.yaml.
    assert_eq!(done, expected);
    assert!(names_in(&layout.incoming).is_empty());
    assert!(names_in(&layout.running).is_empty());
    for name in &done {
        assert_eq!(fs::metadata(layout.done.join(name)).unwrap().nlink(), 1);
    }
}

#[test]
fn two_spools_racing_claim_each_of_40_jobs_exactly_once() {
    race(ClaimMethod::Auto, 2, 1);
}

#[test]
fn two_spools_racing_with_link_and_unlink_claim_each_job_exactly_once() {
    race(ClaimMethod::LinkUnlink, 2, 2);
}

#[test]
fn threads_sharing_one_spool_claim_each_job_exactly_once() {
    race(ClaimMethod::Auto, 1, 3);
}

#[test]
fn the_link_fallback_claims_without_leaving_a_second_name() {
    claim_and_resubmit(ClaimMethod::LinkUnlink);
}

#[test]
fn a_resubmitted_name_waits_for_the_running_job_and_is_filed_beside_it() {
    claim_and_resubmit(ClaimMethod::Auto);
}

fn claim_and_resubmit(method: ClaimMethod) {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(&config(tmp.path(), 1, 0), options(false, method)).unwrap();
    let l = spool.layout().clone();
    fs::write(l.incoming.join("x.yml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(c.name, "x.yaml");
    assert!(names_in(&l.incoming).is_empty());
    assert_eq!(names_in(&l.running), set(&["x.yaml", "x.attempts"]));
    assert_eq!(fs::metadata(&c.path_in_running).unwrap().nlink(), 1);
    // A second file of the same name does not replace the running one.
    fs::write(l.incoming.join("x.yaml"), "prompts: [second]\n").unwrap();
    assert!(
        spool
            .next_job(Duration::from_millis(800))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        fs::read_to_string(&c.path_in_running).unwrap(),
        job_text(None)
    );
    let f = spool.finish_done(c, "ok: 1\n").unwrap();
    assert_eq!(f.job, l.done.join("x.yaml"));
    assert_eq!(fs::metadata(&f.job).unwrap().nlink(), 1);
    // Now the newcomer runs, and is filed beside the first without replacing it.
    let c = spool.next_job(Duration::from_secs(12)).unwrap().unwrap();
    assert_eq!(
        fs::read_to_string(&c.path_in_running).unwrap(),
        "prompts: [second]\n"
    );
    let f = spool.finish_done(c, "ok: 2\n").unwrap();
    assert_eq!(f.job, l.done.join("x-2.yaml"));
    assert_eq!(
        names_in(&l.done),
        set(&["x.yaml", "x.result.yaml", "x-2.yaml", "x-2.result.yaml"])
    );
    assert!(names_in(&l.running).is_empty());
}

#[test]
fn an_interrupted_link_claim_is_resolved_at_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    // The daemon died between link() and unlink(): both names are the same file.
    fs::write(l.incoming.join("x.yaml"), job_text(Some(2))).unwrap();
    fs::hard_link(l.incoming.join("x.yaml"), l.running.join("x.yaml")).unwrap();
    // And another one died between filing y in done/ by link and removing its running/ name.
    fs::write(l.running.join("y.yaml"), job_text(None)).unwrap();
    fs::hard_link(l.running.join("y.yaml"), l.done.join("y.yaml")).unwrap();
    fs::write(l.done.join("y.result.yaml"), "ok: 1\n").unwrap();
    fs::write(l.running.join("y.attempts"), "1\n").unwrap();
    // A side file whose job is gone.
    fs::write(l.running.join("z.status.json"), "{}").unwrap();

    let resumed = spool.recover().unwrap();
    assert_eq!(resumed.len(), 1);
    let x = &resumed[0];
    assert_eq!((x.name.as_str(), x.attempts, x.priority), ("x.yaml", 1, 2));
    assert!(x.resumed && x.is_locked());
    assert!(names_in(&l.incoming).is_empty());
    assert_eq!(names_in(&l.running), set(&["x.yaml", "x.attempts"]));
    assert_eq!(names_in(&l.done), set(&["y.yaml", "y.result.yaml"]));
    assert_eq!(fs::metadata(l.done.join("y.yaml")).unwrap().nlink(), 1);
}

#[test]
fn a_file_written_slowly_in_place_is_not_claimed_until_complete() {
    for watch in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let spool =
            Spool::open_with(&config(tmp.path(), 1, 2), options(watch, ClaimMethod::Auto)).unwrap();
        assert_eq!(spool.is_watching(), watch);
        let path = spool.layout().incoming.join("slow.yaml");
        // When the last byte was written (the file's mtime) and when it was closed.
        let finished = Arc::new(Mutex::new(None::<(Instant, Instant)>));
        let writer = {
            let path = path.clone();
            let finished = Arc::clone(&finished);
            std::thread::spawn(move || {
                let mut f = fs::File::create(&path).unwrap();
                // Created empty, filled a while later.
                std::thread::sleep(Duration::from_millis(300));
                let mut text = String::from("prompts:\n");
                f.write_all(b"prompts:\n").unwrap();
                for i in 0..25 {
                    std::thread::sleep(Duration::from_millis(100));
                    let line = format!("  - prompt number {i}\n");
                    f.write_all(line.as_bytes()).unwrap();
                    text.push_str(&line);
                }
                let written = Instant::now();
                f.sync_all().unwrap();
                *finished.lock().unwrap() = Some((written, Instant::now()));
                drop(f);
                text
            })
        };
        let start = Instant::now();
        let claimed = loop {
            if let Some(c) = spool.next_job(Duration::from_millis(100)).unwrap() {
                break c;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "never claimed");
        };
        let claimed_at = Instant::now();
        let text = writer.join().unwrap();
        let (written_at, closed_at) = finished.lock().unwrap().expect("writer finished");
        // With a watcher it is taken on close; scans may take it once its mtime is old enough
        // (during a slow fsync, say), never before the last write.
        let not_before = if watch { closed_at } else { written_at };
        assert!(
            claimed_at >= not_before,
            "claimed while being written (watch {watch})"
        );
        assert_eq!(fs::read_to_string(&claimed.path_in_running).unwrap(), text);
        if watch {
            // Well before the settle time a scan would need (2 s). (The fsync before the close
            // can be slow on a busy machine; it does not count.)
            let delay = claimed_at - closed_at;
            assert!(
                delay < Duration::from_millis(1500),
                "close-write took {delay:?}"
            );
        } else {
            // Seen by scans only: its mtime (the last write) must be settle_seconds old.
            let delay = claimed_at - written_at;
            assert!(
                delay >= Duration::from_millis(1500),
                "taken after {delay:?}"
            );
        }
    }
}

#[test]
fn a_rename_in_and_a_closed_write_are_claimed_promptly_via_the_watcher() {
    let tmp = tempfile::tempdir().unwrap();
    // Scans alone would take a minute.
    let spool = Spool::open(&config(tmp.path(), 60, 60)).unwrap();
    assert!(spool.is_watching());
    assert!(
        spool
            .next_job(Duration::from_millis(200))
            .unwrap()
            .is_none()
    );
    let outside = tmp.path().join("draft.yaml");
    fs::write(&outside, job_text(None)).unwrap();
    set_age(&outside, 0);
    let start = Instant::now();
    fs::rename(&outside, spool.layout().incoming.join("moved.yaml")).unwrap();
    let c = spool.next_job(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(c.name, "moved.yaml");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    spool.finish_done(c, "ok: 1\n").unwrap();

    let start = Instant::now();
    fs::write(spool.layout().incoming.join("written.yaml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(c.name, "written.yaml");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn dotfiles_temporary_files_and_other_names_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    let ignored = [
        ".hidden.yaml",
        ".sdspool-tmp-1-1-x.yaml",
        "notes.txt",
        "job.yaml.part",
        "README",
    ];
    for name in ignored {
        fs::write(l.incoming.join(name), job_text(None)).unwrap();
    }
    fs::write(l.incoming.join("real.yaml"), job_text(None)).unwrap();
    // Issue 17: an upper-case extension is a job too (it sat in incoming/ forever before).
    fs::write(l.incoming.join("UPPER.YAML"), job_text(None)).unwrap();
    let mut claimed = Vec::new();
    while let Some(c) = spool.next_job(Duration::from_millis(1500)).unwrap() {
        claimed.push((c.submitted_as.clone(), c.name.clone()));
        spool.finish_done(c, "ok: 1\n").unwrap();
    }
    claimed.sort();
    assert_eq!(
        claimed,
        [
            ("UPPER.YAML".to_string(), "UPPER.yaml".to_string()),
            ("real.yaml".to_string(), "real.yaml".to_string())
        ]
    );
    assert_eq!(names_in(&l.incoming), set(&ignored));
    assert!(names_in(&l.failed).is_empty());
    assert!(l.done.join("UPPER.yaml").is_file());
}

#[test]
fn hidden_and_temporary_job_names_are_logged_once_not_at_every_scan() {
    let tmp = tempfile::tempdir().unwrap();
    let spool =
        Spool::open_with(&config(tmp.path(), 1, 0), options(false, ClaimMethod::Auto)).unwrap();
    let l = spool.layout().clone();
    fs::write(l.incoming.join(".hidden.yaml"), job_text(None)).unwrap();
    let temp = l.incoming.join(".sdspool-tmp-1-1-left.yaml");
    fs::write(&temp, job_text(None)).unwrap();
    // A temporary file that stays: a writer killed long ago.
    set_age(&temp, 3600);
    fs::write(l.incoming.join("notes.txt"), "x").unwrap();
    let (_, logs) = capture_logs(|| {
        // Rescans every second: three or four of them.
        assert!(
            spool
                .next_job(Duration::from_millis(3500))
                .unwrap()
                .is_none()
        );
    });
    let lines = |what: &str| logs.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines(".hidden.yaml"), 1, "{logs}");
    assert!(logs.contains("hidden file"), "{logs}");
    assert_eq!(lines(".sdspool-tmp-1-1-left.yaml"), 1, "{logs}");
    assert!(logs.contains("temporary files"), "{logs}");
    assert_eq!(lines("notes.txt"), 0, "{logs}");
}

/// Log lines written through `tracing` while `f` runs on this thread.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn folders_fifos_links_and_reserved_names_go_to_failed_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    fs::create_dir(l.incoming.join("folder.yaml")).unwrap();
    fs::write(l.incoming.join("folder.yaml").join("inner.yaml"), "x").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        l.incoming.join("pipe.yaml"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let outside = tmp.path().join("outside.txt");
    fs::write(&outside, "not a job\n").unwrap();
    std::os::unix::fs::symlink(&outside, l.incoming.join("link.yaml")).unwrap();
    fs::write(l.incoming.join("a.result.yaml"), job_text(None)).unwrap();
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.yaml");
    fs::write(l.incoming.join(latin1), job_text(None)).unwrap();
    fs::write(l.incoming.join("good.yaml"), job_text(None)).unwrap();

    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(c.name, "good.yaml");
    assert!(
        spool
            .next_job(Duration::from_millis(600))
            .unwrap()
            .is_none()
    );
    assert!(
        names_in(&l.incoming).is_empty(),
        "{:?}",
        names_in(&l.incoming)
    );
    assert_eq!(
        names_in(&l.failed),
        set(&[
            "folder.yaml",
            "folder.error.yaml",
            "pipe.yaml",
            "pipe.error.yaml",
            "link.yaml",
            "link.error.yaml",
            "a_result.yaml",
            "a_result.error.yaml",
            "caf_.yaml",
            "caf_.error.yaml",
        ])
    );
    assert!(l.failed.join("folder.yaml").join("inner.yaml").is_file());
    let pipe = fs::symlink_metadata(l.failed.join("pipe.yaml")).unwrap();
    assert!(pipe.file_type().is_fifo());
    // The link moved as a link, not followed; its target is untouched.
    assert_eq!(fs::read_link(l.failed.join("link.yaml")).unwrap(), outside);
    assert_eq!(fs::read_to_string(&outside).unwrap(), "not a job\n");
    let reason = |stem: &str| {
        let e = ErrorFile::read(&l.failed.join(format!("{stem}.error.yaml"))).unwrap();
        assert_eq!(e.step, "claim");
        assert_eq!(e.attempts, 0);
        e.error
    };
    assert!(reason("folder").contains("is a folder"));
    assert!(reason("pipe").contains("FIFO"));
    let link = reason("link");
    assert!(
        link.contains("symbolic link") && link.contains("outside.txt"),
        "{link}"
    );
    assert!(reason("a_result").contains("reserved"));
    assert!(reason("caf_").contains("not valid UTF-8"));
    assert_eq!(
        ErrorFile::read(&l.failed.join("a_result.error.yaml"))
            .unwrap()
            .job,
        "a.result.yaml"
    );
}

#[test]
fn an_entry_that_cannot_be_moved_is_reported_once_and_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    // link() cannot move a folder: it stays, is logged once, and does not block the queue.
    let spool = Spool::open_with(
        &config(tmp.path(), 1, 0),
        options(true, ClaimMethod::LinkUnlink),
    )
    .unwrap();
    let l = spool.layout().clone();
    fs::create_dir(l.incoming.join("folder.yaml")).unwrap();
    fs::write(l.incoming.join("good.yaml"), job_text(None)).unwrap();
    let (claimed, logs) = capture_logs(|| {
        let c = spool.next_job(Duration::from_secs(3)).unwrap();
        // Three more full scans.
        assert!(
            spool
                .next_job(Duration::from_millis(3300))
                .unwrap()
                .is_none()
        );
        c
    });
    assert_eq!(claimed.unwrap().name, "good.yaml");
    assert_eq!(
        logs.matches("cannot be moved to failed/").count(),
        1,
        "{logs}"
    );
    assert!(logs.contains("folder.yaml"), "{logs}");
    assert_eq!(names_in(&l.incoming), set(&["folder.yaml"]));
    assert!(names_in(&l.failed).is_empty());
}

/// The body of the unreadable-file test; must run without the power to read any file.
fn unreadable_file_body() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    let secret = l.incoming.join("secret.yaml");
    fs::write(&secret, job_text(None)).unwrap();
    fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    assert!(
        fs::File::open(&secret).is_err(),
        "this process can read a mode-000 file"
    );
    fs::write(l.incoming.join("good.yaml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(c.name, "good.yaml");
    assert!(
        spool
            .next_job(Duration::from_millis(500))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        names_in(&l.failed),
        set(&["secret.yaml", "secret.error.yaml"])
    );
    let e = ErrorFile::read(&l.failed.join("secret.error.yaml")).unwrap();
    assert!(
        e.error.contains("cannot be opened") && e.error.contains("ermission denied"),
        "{}",
        e.error
    );
}

#[test]
#[ignore = "run by an_unreadable_file_goes_to_failed under an unprivileged user id"]
fn unreadable_file_as_unprivileged_user() {
    unreadable_file_body();
}

#[test]
fn an_unreadable_file_goes_to_failed() {
    // Check whether this process can read a file it has no permission for (root can).
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = probe_dir.path().join("probe");
    fs::write(&probe, "x").unwrap();
    fs::set_permissions(&probe, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    if fs::File::open(&probe).is_err() {
        unreadable_file_body();
        return;
    }
    // Privileged: run the body as `nobody` in a child process.
    use std::os::unix::process::CommandExt as _;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unreadable_file_as_unprivileged_user",
            "--ignored",
            "--test-threads=1",
        ])
        .env("TMPDIR", std::env::temp_dir())
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: running as root and cannot drop privileges: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_job_that_crashes_the_daemon_max_crashes_times_goes_to_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    {
        let spool = Spool::open(&cfg).unwrap();
        fs::write(spool.layout().incoming.join("boom.yaml"), job_text(None)).unwrap();
        let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
        assert_eq!(c.attempts, 1);
        // The daemon dies: the Claimed (and its lock) goes away without being filed.
        drop(c);
    }
    for attempt in 2..=3 {
        let spool = Spool::open(&cfg).unwrap();
        let resumed = spool.recover().unwrap();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].attempts, attempt);
        assert!(resumed[0].resumed);
        let record = fs::read_to_string(resumed[0].attempts_path()).unwrap();
        assert!(record.contains(&format!("attempts: {attempt}")), "{record}");
    }
    let spool = Spool::open(&cfg).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    let l = spool.layout();
    assert!(
        names_in(&l.running).is_empty(),
        "{:?}",
        names_in(&l.running)
    );
    assert_eq!(names_in(&l.failed), set(&["boom.yaml", "boom.error.yaml"]));
    let e = ErrorFile::read(&l.failed.join("boom.error.yaml")).unwrap();
    assert!(
        e.error.contains("crashed the daemon 3 times"),
        "{}",
        e.error
    );
    assert_eq!(e.attempts, 3);
    assert_eq!(e.step, "run");
}

#[test]
fn recovery_leaves_jobs_of_a_live_daemon_alone_and_release_uncounts_the_attempt() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    let a = Spool::open(&cfg).unwrap();
    fs::write(a.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
    let c = a.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let b = Spool::open(&cfg).unwrap();
    assert!(b.recover().unwrap().is_empty());
    assert!(c.path_in_running.is_file());
    a.release(c).unwrap();
    let resumed = b.recover().unwrap();
    assert_eq!(resumed.len(), 1);
    // The released attempt did not count as a crash.
    assert_eq!(resumed[0].attempts, 1);
}

#[test]
fn leftover_temporary_files_are_removed_at_startup() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    let me = std::process::id();
    let tag = sdspool::sys::atomic::host_tag();
    let other = if tag == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    for dir in l.folders() {
        // Written by a process of this host that no longer exists.
        fs::write(
            dir.join(format!(".sdspool-tmp-{tag}-4000000-0-x.yaml")),
            "x",
        )
        .unwrap();
        // Ours, but an hour old.
        let old = dir.join(format!(".sdspool-tmp-{tag}-{me}-999-y.yaml"));
        fs::write(&old, "y").unwrap();
        set_age(&old, 3600);
        // Ours and fresh: another thread may be writing it.
        fs::write(dir.join(format!(".sdspool-tmp-{tag}-{me}-998-z.yaml")), "z").unwrap();
        // Another machine's, fresh: its process id means nothing here.
        fs::write(
            dir.join(format!(".sdspool-tmp-{other}-4000000-0-w.yaml")),
            "w",
        )
        .unwrap();
        // Another machine's, an hour old: its writer is gone.
        let stale = dir.join(format!(".sdspool-tmp-{other}-4000000-1-v.yaml"));
        fs::write(&stale, "v").unwrap();
        set_age(&stale, 3600);
    }
    spool.recover().unwrap();
    for dir in l.folders() {
        assert_eq!(
            names_in(dir),
            set(&[
                &format!(".sdspool-tmp-{tag}-{me}-998-z.yaml"),
                &format!(".sdspool-tmp-{other}-4000000-0-w.yaml")
            ]),
            "{}",
            dir.display()
        );
    }
}

#[test]
fn done_and_failed_name_clashes_get_unique_names() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    fs::write(l.done.join("x.yaml"), "earlier x\n").unwrap();
    fs::write(l.done.join("x.result.yaml"), "earlier result\n").unwrap();
    fs::write(l.failed.join("y.yaml"), "earlier y\n").unwrap();
    fs::write(l.failed.join("y-2.error.yaml"), "stray\n").unwrap();
    fs::write(l.incoming.join("x.yaml"), job_text(Some(1))).unwrap();
    fs::write(l.incoming.join("y.yaml"), "steps: 0\nprompts: [a]\n").unwrap();

    let x = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    assert_eq!(x.name, "x.yaml");
    let f = spool.finish_done(x, "ok: true\n").unwrap();
    assert_eq!(f.job, l.done.join("x-2.yaml"));
    assert_eq!(f.side_file, l.done.join("x-2.result.yaml"));

    let y = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let failure =
        Failure::new("validate", "is 0; it must be between 1 and 150").with_field("steps");
    let f = spool.finish_failed(y, &failure).unwrap();
    assert_eq!(f.job, l.failed.join("y-3.yaml"));
    let e = ErrorFile::read(&f.side_file).unwrap();
    assert_eq!(
        (
            e.step.as_str(),
            e.field.as_deref(),
            e.attempts,
            e.job.as_str()
        ),
        ("validate", Some("steps"), 1, "y.yaml")
    );
    assert!(e.failed_at <= SystemTime::now());
    // Nothing earlier was overwritten.
    assert_eq!(
        fs::read_to_string(l.done.join("x.yaml")).unwrap(),
        "earlier x\n"
    );
    assert_eq!(
        fs::read_to_string(l.done.join("x.result.yaml")).unwrap(),
        "earlier result\n"
    );
    assert_eq!(
        fs::read_to_string(l.failed.join("y.yaml")).unwrap(),
        "earlier y\n"
    );
    assert_eq!(
        fs::read_to_string(l.failed.join("y-2.error.yaml")).unwrap(),
        "stray\n"
    );
    assert!(names_in(&l.running).is_empty());
}

#[test]
fn a_job_error_from_the_job_loader_names_its_field_in_the_error_file() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    fs::write(l.incoming.join("bad.yaml"), "prompts: [a]\nstepz: 3\n").unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let err = sdspool::jobs::job::read_spec(&c.path_in_running, 1 << 20).unwrap_err();
    let f = spool.finish_failed(c, &Failure::from(&err)).unwrap();
    let e = ErrorFile::read(&f.side_file).unwrap();
    assert_eq!(e.step, "validate");
    assert!(
        e.error.contains("stepz") && e.error.contains("did you mean `steps`"),
        "{}",
        e.error
    );
}

#[test]
fn the_worker_status_file_is_written_atomically_and_removed_when_filed() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    fs::write(spool.layout().incoming.join("s.yaml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let mut status = JobStatus::starting("s", "tiny-sd", 2, 25, 8);
    status.step = 10;
    status.images_done = 4;
    status.eta_seconds = Some(30);
    spool.write_status(&c, &status).unwrap();
    let back = read_status(&c.status_path()).unwrap();
    assert_eq!(
        (back.step, back.images_done, back.eta_seconds),
        (10, 4, Some(30))
    );
    assert_eq!(back.pid, std::process::id());
    let overview = spool.overview().unwrap();
    assert_eq!(overview.counts.running, 1);
    assert_eq!(overview.running[0].progress.as_ref().unwrap().step, 10);
    assert!(!overview.running[0].stale);

    // Waiting for storage: the status says why and until when; the ETA is dropped.
    let retry_at = std::time::SystemTime::now() + Duration::from_secs(8);
    spool
        .write_waiting(
            &c,
            StorageWait {
                reason: "disk full".into(),
                retry_at,
            },
        )
        .unwrap();
    let back = read_status(&c.status_path()).unwrap();
    let w = back.waiting.unwrap();
    assert_eq!(w.reason, "disk full");
    let off = match w.retry_at.duration_since(retry_at) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(
        off < Duration::from_secs(1),
        "stored to the second: {off:?}"
    );
    assert_eq!((back.step, back.eta_seconds), (10, None));
    // A status written before the field existed reads as not waiting.
    let old = fs::read_to_string(c.status_path()).unwrap();
    assert!(old.contains("\"waiting\""));
    spool.write_status(&c, &status).unwrap();
    assert!(
        !fs::read_to_string(c.status_path())
            .unwrap()
            .contains("waiting")
    );
    assert!(read_status(&c.status_path()).unwrap().waiting.is_none());
    spool.finish_done(c, "ok: 1\n").unwrap();
    assert!(names_in(&spool.layout().running).is_empty());
}

#[test]
fn the_spool_section_of_config_yaml() {
    let text =
        "models:\n  m:\n    path: /models/m\nspool:\n  dir: spool-here\n  rescan_seconds: 5\n";
    let c =
        sdspool::app::config::Config::parse(text, Path::new("/etc/sdspool/config.yaml")).unwrap();
    assert_eq!(c.spool.dir, PathBuf::from("/etc/sdspool/spool-here"));
    assert_eq!(
        (
            c.spool.rescan_seconds,
            c.spool.settle_seconds,
            c.spool.max_crashes
        ),
        (5, 2, 3)
    );
    let c =
        sdspool::app::config::Config::parse("models:\n  m:\n    path: /m\n", Path::new("c.yaml"))
            .unwrap();
    assert_eq!(c.spool, SpoolConfig::new("local/spool"));
    let e = sdspool::app::config::Config::parse(
        "models:\n  m:\n    path: /m\nspool:\n  rescan_seconds: 0\n",
        Path::new("c.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spool.rescan_seconds") && e.contains("at least 1"),
        "{e}"
    );
    let e = sdspool::app::config::Config::parse(
        "models:\n  m:\n    path: /m\nspool:\n  settle: 1\n",
        Path::new("c.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("settle"), "{e}");
}

// ---- Issue 17: crash evidence, leases and takeover, the claimed copy ----

fn config_with(dir: &Path, max_crashes: u32, lease_seconds: u64) -> SpoolConfig {
    SpoolConfig {
        max_crashes,
        lease_seconds,
        ..config(dir, 1, 0)
    }
}

/// The status a worker writes at a point of the job (this process, now).
fn status_at(prompt: usize, images_done: usize, step: u32) -> JobStatus {
    let mut s = JobStatus::starting("x", "tiny-sd", 8, 5, 16);
    s.prompt_index = prompt;
    s.images_done = images_done;
    s.step = step;
    s
}

#[test]
fn kills_at_different_points_never_fail_a_job_but_the_same_point_max_crashes_times_does() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with(tmp.path(), 3, 60);
    {
        let spool = Spool::open(&cfg).unwrap();
        fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
        let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
        spool.write_status(&c, &status_at(0, 0, 2)).unwrap();
        // Killed from outside: the claim goes away unfiled.
        drop(c);
    }
    // Ten more kills, each after the job got somewhere else: never held against it.
    for k in 1..=10usize {
        let spool = Spool::open(&cfg).unwrap();
        let resumed = spool.recover().unwrap();
        assert_eq!(
            resumed.len(),
            1,
            "kill {k}: {:?}",
            names_in(&spool.layout().failed)
        );
        assert_eq!(resumed[0].attempts as usize, k + 1);
        assert_eq!(
            resumed[0].record().crashes,
            1,
            "a new point starts the count again"
        );
        spool
            .write_status(&resumed[0], &status_at(k / 2, k, (k % 4) as u32))
            .unwrap();
    }
    // Now it dies at the same point, again and again: the third time in a row it is failed.
    for again in 1..=2 {
        let spool = Spool::open(&cfg).unwrap();
        let resumed = spool.recover().unwrap();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].record().crashes, again);
        spool
            .write_status(&resumed[0], &status_at(5, 10, 2))
            .unwrap();
    }
    let spool = Spool::open(&cfg).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    let l = spool.layout();
    assert_eq!(names_in(&l.failed), set(&["x.yaml", "x.error.yaml"]));
    let e = ErrorFile::read(&l.failed.join("x.error.yaml")).unwrap();
    assert!(
        e.error.contains("crashed the daemon 3 times")
            && e.error
                .contains("at the same point (prompt 6, 10 images done, step 2)"),
        "{}",
        e.error
    );
    assert_eq!(e.attempts, 13);
}

#[test]
fn a_panic_while_a_job_is_held_counts_against_it_wherever_it_happens() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with(tmp.path(), 2, 60);
    let spool = Arc::new(Spool::open(&cfg).unwrap());
    fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
    let first = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let panic_holding = |c: sdspool::spool::Claimed, at: JobStatus| {
        let spool = Arc::clone(&spool);
        let r = std::thread::spawn(move || {
            spool.write_status(&c, &at).unwrap();
            let _held = c;
            panic!("a bug the job triggers");
        })
        .join();
        assert!(r.is_err());
    };
    panic_holding(first, status_at(0, 0, 1));
    let again = Spool::open(&cfg).unwrap().recover().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].record().crashes, 1);
    // At another point this time: still counted, for the panic.
    panic_holding(again.into_iter().next().unwrap(), status_at(3, 2, 4));
    let spool = Spool::open(&cfg).unwrap();
    assert!(spool.recover().unwrap().is_empty());
    let e = ErrorFile::read(&spool.layout().failed.join("x.error.yaml")).unwrap();
    assert!(
        e.error.contains("crashed the daemon 2 times") && e.error.contains("panicked at prompt 4"),
        "{}",
        e.error
    );
}

#[test]
fn a_kill_before_a_worker_started_on_a_resumed_job_is_not_held_against_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with(tmp.path(), 2, 60);
    {
        let spool = Spool::open(&cfg).unwrap();
        fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
        let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
        spool.write_status(&c, &status_at(1, 1, 1)).unwrap();
    }
    // A daemon that is killed while it loads its models, five times over.
    for _ in 0..5 {
        let resumed = Spool::open(&cfg).unwrap().recover_queued().unwrap();
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].record().crashes, 1);
        assert!(!resumed[0].record().working);
    }
    let spool = Spool::open(&cfg).unwrap();
    let c = spool.recover_queued().unwrap().pop().unwrap();
    // The worker starts on it and loads the claimed copy.
    let file = spool.begin_work(&c);
    assert_eq!(fs::read_to_string(file).unwrap(), job_text(None));
    assert!(c.record().working);
    spool.finish_done(c, "ok: 1\n").unwrap();
}

/// A claim record of a daemon on another host, as it would write it.
fn foreign_claim(running: &Path, stem: &str, claim: &str) -> PathBuf {
    fs::write(running.join(format!("{stem}.yaml")), job_text(None)).unwrap();
    let path = running.join(format!("{stem}.attempts"));
    fs::write(
        &path,
        format!(
            "attempts: 1\nhost: another-machine\npid: 1\nlocked: true\nstarted_at: \"2026-01-01T00:00:00Z\"\nclaim: {claim}\nworking: true\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_owner_renews_its_claim_while_it_holds_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config_with(tmp.path(), 3, 1)).unwrap();
    fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    let mtime = || fs::metadata(c.attempts_path()).unwrap().modified().unwrap();
    let first = mtime();
    std::thread::sleep(Duration::from_millis(700));
    let later = mtime();
    assert!(later > first, "renewed every quarter of the 1 s lease");
    let record = c.record();
    assert_eq!(
        (record.host, record.pid),
        (sdspool::spool::hostname(), std::process::id())
    );
    assert!(record.claim.is_some());
    spool.finish_done(c, "ok: 1\n").unwrap();
}

#[test]
fn a_live_spool_takes_over_a_job_whose_lease_expired_and_not_one_that_is_renewed() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open_with(
        &config_with(tmp.path(), 3, 2),
        options(false, ClaimMethod::Auto),
    )
    .unwrap();
    let running = spool.layout().running.clone();
    // Two jobs of a daemon on another host: one whose owner keeps renewing, one whose owner died.
    let alive = foreign_claim(&running, "alive", "a11ce");
    foreign_claim(&running, "dead", "dead0");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let renewer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = fs::File::options().write(true).open(&alive).unwrap();
                f.set_modified(SystemTime::now()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let start = Instant::now();
    // Not before a whole lease seen unchanged, however old its times look.
    assert!(
        spool
            .next_job(Duration::from_millis(1500))
            .unwrap()
            .is_none()
    );
    let c = spool.next_job(Duration::from_secs(5)).unwrap().unwrap();
    let waited = start.elapsed();
    assert_eq!(c.name, "dead.yaml");
    assert!(c.resumed);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The claim is this process's now, one attempt further.
    let record = c.record();
    assert_eq!(
        (record.attempts, record.host.as_str()),
        (2, sdspool::spool::hostname().as_str())
    );
    assert_ne!(record.claim.as_deref(), Some("dead0"));
    // The renewed one stays with its owner.
    assert!(spool.next_job(Duration::from_secs(3)).unwrap().is_none());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    renewer.join().unwrap();
    spool.finish_done(c, "ok: 1\n").unwrap();
    // Once its owner stops renewing, it is taken over too.
    let c = spool.next_job(Duration::from_secs(6)).unwrap().unwrap();
    assert_eq!(c.name, "alive.yaml");
    spool.finish_done(c, "ok: 1\n").unwrap();
}

#[test]
fn two_live_spools_that_find_an_expired_claim_at_once_take_it_over_exactly_once() {
    for method in [ClaimMethod::Auto, ClaimMethod::LinkUnlink] {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = config_with(tmp.path(), 3, 1);
        let running = tmp.path().join("running");
        fs::create_dir_all(&running).unwrap();
        for i in 0..6 {
            foreign_claim(&running, &format!("j{i}"), &format!("c{i}"));
        }
        let taken = Arc::new(Mutex::new(Vec::new()));
        let racers: Vec<_> = (0..3)
            .map(|_| {
                let (cfg, taken) = (cfg.clone(), Arc::clone(&taken));
                std::thread::spawn(move || {
                    let spool = Spool::open_with(&cfg, options(false, method)).unwrap();
                    let start = Instant::now();
                    while start.elapsed() < Duration::from_secs(6) {
                        if let Some(c) = spool.next_job(Duration::from_millis(200)).unwrap() {
                            taken.lock().unwrap().push(c.name.clone());
                            spool.finish_done(c, "ok: 1\n").unwrap();
                        }
                    }
                })
            })
            .collect();
        for r in racers {
            r.join().unwrap();
        }
        let mut taken = taken.lock().unwrap().clone();
        taken.sort();
        let expected: Vec<String> = (0..6).map(|i| format!("j{i}.yaml")).collect();
        assert_eq!(taken, expected, "{method:?}");
        assert_eq!(names_in(&tmp.path().join("done")).len(), 12);
    }
}

#[test]
fn a_daemon_that_lost_its_claim_stops_and_neither_files_nor_releases_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config_with(tmp.path(), 3, 1)).unwrap();
    fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    assert!(!c.is_lost());
    // Another host took it over while this daemon was stopped.
    let theirs = "attempts: 2\nhost: another-machine\npid: 1\nlocked: true\nstarted_at: \"2026-01-01T00:00:00Z\"\nclaim: beef\n";
    fs::write(c.attempts_path(), theirs).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !c.is_lost() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.is_lost());
    let e = spool.finish_done(*Box::new(c), "ok: 1\n").unwrap_err();
    assert!(
        e.to_string().contains("another daemon took the job over"),
        "{e}"
    );
    assert!(names_in(&spool.layout().done).is_empty());
    spool.release(*e.claimed).unwrap();
    assert_eq!(
        fs::read_to_string(spool.layout().running.join("x.attempts")).unwrap(),
        theirs
    );
    assert!(spool.layout().running.join("x.yaml").is_file());
}

#[test]
fn status_shows_a_claim_nobody_renews_as_stale_without_an_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config_with(tmp.path(), 3, 60);
    let spool = Spool::open(&cfg).unwrap();
    let running = spool.layout().running.clone();
    let record = foreign_claim(&running, "orphan", "0ff");
    let mut s = status_at(1, 3, 4);
    s.hostname = "another-machine".into();
    s.pid = 1;
    s.eta_seconds = Some(600);
    sdspool::spool::write_status(&running.join("orphan.status.json"), &s).unwrap();
    set_age(&record, 300);
    let o = spool.overview().unwrap();
    let r = &o.running[0];
    assert!(r.stale, "{r:?}");
    assert!(
        r.stale_reason
            .as_deref()
            .unwrap()
            .contains("pid 1 on another-machine, has not renewed its claim for 5m"),
        "{r:?}"
    );
    assert_eq!(r.finishes_in_seconds, None);
    assert!(r.lease_renewed_seconds_ago.unwrap() >= 300);
    let text = sdspool::app::commands::status::render(&o);
    let line = text.lines().find(|l| l.contains("orphan.yaml")).unwrap();
    assert!(line.contains("STALE") && !line.contains("ETA"), "{line}");
    // Renewed: not stale.
    set_age(&record, 0);
    let o = spool.overview().unwrap();
    assert!(!o.running[0].stale, "{:?}", o.running[0]);
    assert_eq!(
        o.running[0].finishes_in_seconds.map(|s| s > 500),
        Some(true)
    );
}

#[test]
fn a_running_job_edited_in_place_is_filed_as_claimed_with_a_note() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    fs::write(l.incoming.join("x.yaml"), job_text(Some(1))).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    // Edited in place while it runs.
    let mut f = fs::File::options()
        .append(true)
        .open(&c.path_in_running)
        .unwrap();
    f.write_all(b"steps: 40\n").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(c.job_file()).unwrap(), job_text(Some(1)));
    let filed = spool.finish_done(c, "images: 1\n").unwrap();
    assert_eq!(fs::read_to_string(&filed.job).unwrap(), job_text(Some(1)));
    let result = fs::read_to_string(&filed.side_file).unwrap();
    assert!(result.starts_with("images: 1\n"), "{result}");
    assert!(
        result.contains("job_file_changed:") && result.contains("changed after it was claimed"),
        "{result}"
    );
    assert!(names_in(&l.running).is_empty());
    assert!(names_in(&tmp.path().join(".claimed")).is_empty());
}

#[test]
fn a_file_renamed_in_while_its_writer_still_writes_is_filed_as_it_was_read() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = Spool::open(&config(tmp.path(), 1, 0)).unwrap();
    let l = spool.layout().clone();
    let elsewhere = tmp.path().join("x.part");
    let mut writer = fs::File::create(&elsewhere).unwrap();
    writer.write_all(b"prompts:\n  - a cat\n").unwrap();
    fs::rename(&elsewhere, l.incoming.join("x.yaml")).unwrap();
    let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
    // The writer was not done.
    writer.write_all(b"  - a dog\ncandidates: 4\n").unwrap();
    drop(writer);
    assert_eq!(
        fs::read_to_string(c.job_file()).unwrap(),
        "prompts:\n  - a cat\n"
    );
    let filed = spool
        .finish_failed(c, &Failure::new("validate", "whatever the worker found"))
        .unwrap();
    assert_eq!(
        fs::read_to_string(&filed.job).unwrap(),
        "prompts:\n  - a cat\n"
    );
    let e = ErrorFile::read(&filed.side_file).unwrap();
    let change = e.job_file_changed.unwrap();
    assert!(
        change.contains("(19 bytes") && change.contains("; 43 bytes"),
        "{change}"
    );
}

#[test]
fn a_job_edited_after_a_kill_resumes_from_the_claimed_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1, 0);
    let first = {
        let spool = Spool::open(&cfg).unwrap();
        fs::write(spool.layout().incoming.join("x.yaml"), job_text(None)).unwrap();
        let c = spool.next_job(Duration::from_secs(3)).unwrap().unwrap();
        let file = spool.begin_work(&c);
        (
            fs::read(&file).unwrap(),
            sdspool::jobs::job::read::read(&file, 1 << 20).unwrap().seed,
        )
    };
    let running = tmp.path().join("running").join("x.yaml");
    fs::write(&running, "prompts: [something else]\n").unwrap();
    let spool = Spool::open(&cfg).unwrap();
    let (c, logs) = capture_logs(|| spool.recover().unwrap().pop().unwrap());
    assert!(logs.contains("changed after it was claimed"), "{logs}");
    let file = spool.begin_work(&c);
    // The same bytes and the same seed: the same fingerprint, so the same output folder.
    assert_eq!(
        (
            fs::read(&file).unwrap(),
            sdspool::jobs::job::read::read(&file, 1 << 20).unwrap().seed
        ),
        first
    );
    let filed = spool.finish_done(c, "ok: 1\n").unwrap();
    assert_eq!(fs::read(&filed.job).unwrap(), first.0);
}
