//! The web side against the real daemon and `sdspool serve`: pages, /metrics (checked with
//! promtool), webhooks (a receiver that answers, one that answers 500, one that hangs), the
//! notify command, control with and without a token, and what the server refuses to serve.

mod common;

use common::config_file::TestConfig;
use common::served::Served;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, wait_for};

const TOKEN: &str = "test-token-0123456789";

/// One HTTP/1.1 request; the status and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path, "")
}

/// A webhook receiver on 127.0.0.1: `status` answers (None: never answers); records bodies.
fn receiver(status: Option<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            if let Some(body) = common::read_request_body(&mut s) {
                seen.lock().unwrap().push(body);
            }
            match status {
                Some(code) => {
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                }
                None => held.push(s),
            }
        }
    });
    (port, got)
}

/// The web page's spool and config (tiny-sd, 2 candidates a prompt).
type Env = Served;

impl Env {
    fn new(edit: impl FnOnce(&mut TestConfig)) -> Env {
        Served::create(2, edit)
    }

    fn start(&self, args: &[&str]) -> Running {
        Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_sdspool"))
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .env("SDSPOOL_LOG", "info")
                .stdout(Stdio::null()),
        )
    }

    fn submit(&self, name: &str, body: &str) {
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.root.join("spool/incoming").join(name)).unwrap();
    }

    fn wait_up(&self) {
        let port = self.port;
        wait_for("the server", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
}

/// `promtool check metrics` on `text`; without promtool the check is skipped, except under CI.
fn promtool_check(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        assert!(
            std::env::var("CI").is_err(),
            "promtool is missing (install Debian's prometheus package: tests/setup-tools.sh)"
        );
        eprintln!("promtool not installed: skipping its check (tests/setup-tools.sh installs it)");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(file, rank, score)` of the kept cards on a job page, in page order.
fn kept_cards(html: &str) -> Vec<(String, String, String)> {
    let kept = html
        .split("id=\"kept\"")
        .nth(1)
        .unwrap()
        .split("id=\"rejected\"")
        .next()
        .unwrap_or("");
    let attr = |chunk: &str, name: &str| {
        chunk
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    kept.split("class=\"card\"")
        .skip(1)
        .map(|c| {
            (
                attr(c, "data-file"),
                attr(c, "data-rank"),
                attr(c, "data-score"),
            )
        })
        .collect()
}

#[test]
fn the_daemon_serves_pages_metrics_and_webhooks_while_rendering() {
    let (ok_port, ok_got) = receiver(Some(200));
    let (bad_port, bad_got) = receiver(Some(500));
    let (hang_port, _) = receiver(None);
    let env = Env::new(|c| {
        c.control_token = Some(TOKEN.into());
        c.webhooks = vec![
            format!("http://127.0.0.1:{ok_port}/hook"),
            format!("http://127.0.0.1:{bad_port}/"),
            format!("http://127.0.0.1:{hang_port}/"),
        ];
        c.webhook_timeout_seconds = Some(1);
        c.webhook_retries = Some(1);
        c.notify_command = Some("notify.sh".into());
    });
    let log = env.root.join("command.log");
    std::fs::write(
        env.root.join("notify.sh"),
        format!(
            "#!/bin/sh\ncat \"$1\" >> {log}\necho >> {log}\n",
            log = log.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(env.root.join("notify.sh"))
        .status()
        .unwrap();
    let config_dir_cmd = env.root.join("notify.sh");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "command: notify.sh",
        &format!("command: {}", config_dir_cmd.display()),
    );
    std::fs::write(&env.config, text).unwrap();

    let mut daemon = env.start(&["run"]);
    env.wait_up();
    assert_eq!(get(env.port, "/healthz").0, 200);
    wait_for("/readyz", Duration::from_secs(60), || {
        get(env.port, "/readyz").0 == 200
    });
    let started = Instant::now();
    env.submit(
        "cats.yaml",
        "prompts:\n  - a photo of a cat\n  - a red circle\nseed: 5\nkeep_top: 1\n",
    );
    wait_for("cats in done/", Duration::from_secs(120), || {
        env.root.join("spool/done/cats.yaml").exists()
    });
    let rendered_in = started.elapsed();

    // Metrics: promtool accepts them; the job's figures are there.
    wait_for("the worker idle", Duration::from_secs(30), || {
        get(env.port, "/metrics")
            .1
            .contains("sdspool_worker_state{device=\"0\",state=\"idle\"} 1")
    });
    let (status, metrics) = get(env.port, "/metrics");
    assert_eq!(status, 200);
    promtool_check(&metrics);
    for want in [
        "sdspool_images_rendered_total 4",
        "sdspool_jobs{state=\"done\"} 1",
        "sdspool_queue_length 0",
        "sdspool_worker_execution_provider{device=\"0\",model=\"tiny-sd\",provider=\"cpu\"} 1",
        "sdspool_worker_state{device=\"0\",state=\"idle\"} 1",
        "sdspool_unet_step_seconds_count{model=\"tiny-sd\",size=\"64x64\",device=\"0\"}",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    // The queue page lists the job; its page lists the kept candidates in rank order with the
    // manifest's scores, and the rejected ones folded.
    let (status, queue) = get(env.port, "/");
    assert_eq!(status, 200);
    assert!(queue.contains("href=\"/jobs/cats\""), "{queue}");
    let (status, page) = get(env.port, "/jobs/cats");
    assert_eq!(status, 200, "{page}");
    let manifest: sdspool::jobs::run::manifest::Manifest = serde_json::from_str(
        &std::fs::read_to_string(env.root.join("output/cats/manifest.json")).unwrap(),
    )
    .unwrap();
    let mut expected = Vec::new();
    for p in &manifest.prompts {
        let mut c: Vec<_> = p.candidates.iter().filter(|c| c.kept).collect();
        c.sort_by_key(|c| c.rank);
        for c in c {
            expected.push((
                c.file.clone().unwrap(),
                c.rank.unwrap().to_string(),
                c.clip_score.unwrap().to_string(),
            ));
        }
    }
    let shown = kept_cards(&page);
    assert_eq!(shown.len(), 2, "{page}");
    for ((f, r, s), (ef, er, es)) in shown.iter().zip(&expected) {
        assert_eq!((f, r), (ef, er));
        assert!(
            (s.parse::<f32>().unwrap() - es.parse::<f32>().unwrap()).abs() < 1e-4,
            "{s} vs {es}"
        );
    }
    assert!(
        page.contains("id=\"rejected\"") && page.contains("2 rejected candidates"),
        "{page}"
    );
    // The full-size view shows the PNG's parameters; thumbnails are made and cached.
    let (status, view) = get(env.port, &format!("/jobs/cats?image={}", expected[0].0));
    assert_eq!(status, 200);
    assert!(view.contains("Steps: 4"), "{view}");
    let (status, _) = get(env.port, &format!("/thumbs/cats/{}", expected[0].0));
    assert_eq!(status, 200);
    assert_eq!(
        common::names(&env.root.join("spool/web-cache/thumbs")).len(),
        1
    );

    // The static index.html in the job folder and at the root.
    let index = std::fs::read_to_string(env.root.join("output/cats/index.html")).unwrap();
    assert!(
        index.contains(&format!("src=\"{}\"", expected[0].0)) && !index.contains("/files/"),
        "{index}"
    );
    let root_index = std::fs::read_to_string(env.root.join("output/index.html"))
        .unwrap()
        .replace("&#x2f;", "/");
    assert!(
        root_index.contains("href=\"cats/index.html\""),
        "{root_index}"
    );

    // Webhooks: the answering receiver got the job and the queue's end; the failing one got
    // every try; the hanging one did not hold up rendering.
    wait_for("webhooks", Duration::from_secs(30), || {
        ok_got.lock().unwrap().len() >= 2 && bad_got.lock().unwrap().len() >= 4
    });
    let got = ok_got.lock().unwrap().clone();
    let done: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!(
        (
            done["event"].as_str(),
            done["job"].as_str(),
            done["images"].as_u64()
        ),
        (Some("job_done"), Some("cats"), Some(4))
    );
    let night: serde_json::Value = serde_json::from_str(&got[1]).unwrap();
    assert_eq!(
        (
            night["event"].as_str(),
            night["jobs"].as_u64(),
            night["images"].as_u64()
        ),
        (Some("queue_empty"), Some(1), Some(4))
    );
    assert_eq!(
        bad_got.lock().unwrap().len(),
        4,
        "2 events x (1 try + 1 retry)"
    );
    assert!(rendered_in < Duration::from_secs(100));
    wait_for("the command", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("queue_empty"))
    });

    // Control: a token is required and checked; with it, cancel files a queued job in failed/.
    assert_eq!(
        http(
            env.port,
            "POST",
            "/control/pause",
            &format!("token={TOKEN}")
        )
        .0,
        303
    );
    assert!(env.root.join("spool/control/paused").exists());
    // A worker already waiting for a job (up to 500 ms) when the pause came may still take one.
    std::thread::sleep(Duration::from_secs(1));
    env.submit("later.yaml", "prompts: [a dog]\n");
    assert_eq!(
        http(env.port, "POST", "/control/cancel", "job=later").0,
        401
    );
    assert_eq!(
        http(
            env.port,
            "POST",
            "/control/cancel",
            "job=later&token=wrong-token-0123456789"
        )
        .0,
        403
    );
    assert!(
        env.root.join("spool/incoming/later.yaml").exists(),
        "{:?}",
        common::tree(&env.root.join("spool"))
    );
    assert_eq!(
        http(
            env.port,
            "POST",
            "/control/priority",
            &format!("job=later&priority=7&token={TOKEN}")
        )
        .0,
        303
    );
    assert!(
        std::fs::read_to_string(env.root.join("spool/incoming/later.yaml"))
            .unwrap()
            .contains("priority: 7")
    );
    assert_eq!(
        http(
            env.port,
            "POST",
            "/control/cancel",
            &format!("job=later&token={TOKEN}")
        )
        .0,
        303
    );
    assert!(env.root.join("spool/failed/later.yaml").exists());
    drop(daemon.kill());
}

#[test]
fn serve_alone_is_read_only_and_serves_nothing_outside_its_roots() {
    let env = Env::new(|_| {});
    let out = env.root.join("output/job");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("manifest.json"), "{}").unwrap();
    std::fs::write(out.join(".hidden"), "secret").unwrap();
    std::fs::write(env.root.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(env.root.join("secret.txt"), out.join("link.png")).unwrap();
    std::os::unix::fs::symlink(&env.root, env.root.join("output/up")).unwrap();
    env.submit("q.yaml", "prompts: [a]\n");
    let _server = env.start(&["serve"]);
    env.wait_up();
    assert_eq!(get(env.port, "/readyz").0, 200);
    assert_eq!(
        get(env.port, "/files/job/manifest.json"),
        (200, "{}".to_string())
    );
    for path in [
        "/files/job/../../secret.txt",
        "/files/job/%2e%2e/%2e%2e/secret.txt",
        "/files/job%2f..%2f..%2fsecret.txt",
        "/files/job/.hidden",
        "/files/job/link.png",
        "/files/up/secret.txt",
        "/thumbs/job/link.png",
        "/spool/incoming/q.yaml",
        "/spool/done/..%2f..%2fsecret.txt",
        "/jobs/up",
    ] {
        let (status, body) = get(env.port, path);
        assert!(status == 404 || status == 400, "{path}: {status} {body}");
        assert!(!body.contains("secret"), "{path}");
    }
    // A huge query string is refused, the server keeps answering.
    let (status, _) = get(env.port, &format!("/?q={}", "a".repeat(100_000)));
    assert!(status == 431 || status == 414 || status == 0, "{status}");
    assert_eq!(get(env.port, "/healthz").0, 200);
    // Read-only: every control request is refused, with or without a token.
    for body in ["", "token=test-token-0123456789"] {
        assert_eq!(http(env.port, "POST", "/control/pause", body).0, 403);
        assert_eq!(
            http(
                env.port,
                "POST",
                "/control/cancel",
                &format!("job=q&{body}")
            )
            .0,
            403
        );
    }
    assert!(env.root.join("spool/incoming/q.yaml").exists());
    assert!(!env.root.join("spool/control/paused").exists());
    // A slow client that never finishes its request head is cut off.
    let mut slow = TcpStream::connect(("127.0.0.1", env.port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "held for {:?}",
        t0.elapsed()
    );
}
