//! The web page at scale, against `sdspool serve`: the job list's search over an output root of
//! 100,000 images, and thumbnails of large PNGs, with times and the server's peak memory
//! (VmHWM). The normal test checks that the job list reads a manifest again only when it
//! changed (through `/metrics`); the `#[ignore]`d ones print the figures recorded in
//! BENCHMARKS.md:
//!
//! ```text
//! cargo test --release --test web_scale -- --ignored --nocapture --test-threads 1
//! ```

mod common;

use common::served::Served;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, wait_for};

/// One GET; the status and the body.
fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let status = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| out[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

fn text(port: u16, path: &str) -> (u16, String) {
    let (status, body) = get(port, path);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A job folder `name` under `root` with a real manifest of `prompts` x `candidates` images
/// (the committed fixture's shape; the images themselves are not written).
fn job(root: &Path, name: &str, model: &str, prompts: usize, candidates: usize) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/legacy-resume/output/legacy-plain/manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture).unwrap()).unwrap();
    m["job"] = name.into();
    m["model"] = model.into();
    m["complete"] = true.into();
    let prompt0 = m["prompts"][0].clone();
    let cand0 = prompt0["candidates"][0].clone();
    let animals = ["cat", "dog", "fox", "owl", "horse"];
    m["prompts"] = (0..prompts)
        .map(|p| {
            let mut e = prompt0.clone();
            e["index"] = p.into();
            e["prompt"] = format!("{name}: a photo of a {}", animals[p % animals.len()]).into();
            e["candidates"] = (0..candidates)
                .map(|c| {
                    let mut x = cand0.clone();
                    let seed = 1000 * p + c;
                    x["candidate"] = c.into();
                    x["seed"] = seed.into();
                    x["file"] = format!("p{p:03}-c{c:02}-s{seed}.png").into();
                    x["rank"] = (c + 1).into();
                    x["kept"] = (c == 0).into();
                    x
                })
                .collect();
            e
        })
        .collect();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
}

fn serve(env: &Served) -> Running {
    let running = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_sdspool"))
            .arg("--config")
            .arg(&env.config)
            .arg("serve")
            .env("SDSPOOL_LOG", "warn")
            .stdout(Stdio::null()),
    );
    let port = env.port;
    wait_for("the server", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    running
}

/// `sdspool_web_manifests_read_total` of the server on `port`.
fn manifests_read(port: u16) -> u64 {
    let (_, metrics) = text(port, "/metrics");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sdspool_web_manifests_read_total "))
        .unwrap_or_else(|| panic!("no manifests-read counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

/// The job folders the list page shows, in order.
fn listed(html: &str) -> Vec<String> {
    html.replace("&#x2f;", "/")
        .split("href=\"/jobs/")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_job_list_reads_only_new_or_changed_manifests_and_searches_and_pages() {
    let env = Served::create(2, |_| {});
    let config = std::fs::read_to_string(&env.config).unwrap();
    assert!(config.contains("serve:\n"));
    std::fs::write(
        &env.config,
        config.replace("serve:\n", "serve:\n  page_size: 2\n"),
    )
    .unwrap();
    let out = env.root.join("output");
    for (i, model) in ["tiny-sd", "sd15", "tiny-sd", "sd15", "tiny-sd"]
        .iter()
        .enumerate()
    {
        job(&out, &format!("job{i}"), model, 2, 3);
        // Distinct modification times: the list is newest first.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _server = serve(&env);
    let port = env.port;

    let (status, page) = text(port, "/jobs");
    assert_eq!(status, 200, "{page}");
    assert_eq!(listed(&page), ["job4", "job3"], "{page}");
    assert!(
        page.contains("5 jobs") && page.contains("page 1 of 3"),
        "{page}"
    );
    assert_eq!(manifests_read(port), 5);

    // Later requests (another page, a search, a filter) read no manifest again.
    assert_eq!(listed(&text(port, "/jobs?page=3").1), ["job0"]);
    let (_, found) = text(port, "/jobs?q=JOB2%3A+A+PHOTO");
    assert_eq!(listed(&found), ["job2"], "{found}");
    assert_eq!(listed(&text(port, "/jobs?model=sd15").1), ["job3", "job1"]);
    let today = String::from_utf8(
        Command::new("date")
            .args(["-u", "+%Y-%m-%d"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let today = today.trim();
    assert!(
        text(port, &format!("/jobs?date={today}"))
            .1
            .contains("5 jobs")
    );
    assert!(text(port, "/jobs?date=1999-01-01").1.contains("0 jobs"));
    assert_eq!(manifests_read(port), 5);

    // One manifest rewritten: only that one is read again, and the list shows the change.
    job(&out, "job0", "sd15", 1, 3);
    let (_, page) = text(port, "/jobs?model=sd15");
    assert_eq!(manifests_read(port), 6);
    assert_eq!(listed(&page), ["job0", "job3"], "{page}");
    // A folder removed drops out without reading anything.
    std::fs::remove_dir_all(out.join("job4")).unwrap();
    assert!(text(port, "/jobs").1.contains("4 jobs"));
    assert_eq!(manifests_read(port), 6);

    // A PNG too large to thumbnail gets a clear error; the server keeps serving.
    std::fs::write(out.join("job1/bomb.png"), hostile_png()).unwrap();
    let (status, body) = text(port, "/thumbs/job1/bomb.png");
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(
            "job1/bomb.png: the image is 16384x16384, larger than thumbnails are made for"
        ),
        "{body}"
    );
    assert_eq!(text(port, "/healthz"), (200, "ok\n".to_string()));
}

/// A PNG whose header claims 16384x16384 RGBA with 16 bits a channel (2 GiB decoded) and whose
/// pixel data is a few bytes: a decompression bomb as the decoder first sees it.
fn hostile_png() -> Vec<u8> {
    let mut bomb = Vec::new();
    let mut e = png::Encoder::new(&mut bomb, 16384, 16384);
    e.set_color(png::ColorType::Rgba);
    e.set_depth(png::BitDepth::Sixteen);
    let mut w = e.write_header().unwrap();
    w.write_chunk(png::chunk::IDAT, &[0x78, 0x9c, 0, 0, 0, 0])
        .unwrap();
    drop(w);
    bomb
}

/// `VmHWM` (peak resident memory) and `VmRSS` of process `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "benchmark: 1,000 job folders of 100 candidates; prints figures"]
fn bench_the_job_list_over_100k_images() {
    let env = Served::create(2, |_| {});
    let out = env.root.join("output");
    let (_, made_ms) = timed(|| {
        for i in 0..1000 {
            let model = if i % 2 == 0 { "tiny-sd" } else { "sd15" };
            job(&out, &format!("job{i:04}"), model, 4, 25);
        }
    });
    let bytes: u64 = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("manifest.json").metadata().unwrap().len())
        .sum();
    println!(
        "output root: 1000 job folders x 4 prompts x 25 candidates = 100,000 images; manifests {:.1} MiB, written in {made_ms:.0} ms",
        bytes as f64 / 1048576.0
    );
    for round in [
        "no .index-rows.json yet",
        "restarted, .index-rows.json kept",
    ] {
        let server = serve(&env);
        let port = env.port;
        let (before, _) = memory_mib(server.id());
        println!("-- {round}: server started, VmHWM {before:.1} MiB");
        for (what, path) in [
            ("first /jobs", "/jobs"),
            ("second /jobs", "/jobs"),
            ("/jobs?page=10", "/jobs?page=10"),
            ("/jobs?q=job0500%3A", "/jobs?q=job0500%3A"),
            ("/jobs?q=owl&model=sd15", "/jobs?q=owl&model=sd15"),
            ("/jobs?q=no+such+text", "/jobs?q=no+such+text"),
        ] {
            let ((status, body), ms) = timed(|| get(port, path));
            assert_eq!(status, 200);
            let (hwm, rss) = memory_mib(server.id());
            println!(
                "{what:28} {ms:8.1} ms  {:6} bytes  manifests read so far {:5}  VmHWM {hwm:6.1} MiB  VmRSS {rss:6.1} MiB",
                body.len(),
                manifests_read(port)
            );
        }
        job(&out, "job0001", "sd15", 4, 26);
        let ((status, _), ms) = timed(|| get(port, "/jobs"));
        assert_eq!(status, 200);
        println!(
            "{:28} {ms:8.1} ms  manifests read so far {:5}",
            "/jobs after 1 rewrite",
            manifests_read(port)
        );
        drop(server);
    }
}

#[test]
#[ignore = "benchmark: 200 thumbnails of 2048x2048 PNGs, 8 at a time; prints figures"]
fn bench_thumbnails_of_large_pngs() {
    let env = Served::create(2, |_| {});
    let dir = env.root.join("output/big");
    std::fs::create_dir_all(&dir).unwrap();
    // Noise-like content, so the PNG is not trivially small to inflate.
    let img = image::RgbImage::from_fn(2048, 2048, |x, y| {
        let h = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503)).wrapping_mul(2246822519);
        image::Rgb([(h >> 24) as u8, (h >> 16) as u8, (x ^ y) as u8])
    });
    img.save(dir.join("0000.png")).unwrap();
    for i in 1..200 {
        std::fs::copy(dir.join("0000.png"), dir.join(format!("{i:04}.png"))).unwrap();
    }
    let file_mib = dir.join("0000.png").metadata().unwrap().len() as f64 / 1048576.0;
    let server = serve(&env);
    let port = env.port;
    let (start_hwm, _) = memory_mib(server.id());
    println!(
        "200 distinct 2048x2048 RGB PNGs of {file_mib:.1} MiB each; server VmHWM at start {start_hwm:.1} MiB"
    );
    for pass in ["made (cold cache)", "cached"] {
        let t = Instant::now();
        let clients: Vec<_> = (0..8)
            .map(|c| {
                std::thread::spawn(move || {
                    for i in (c..200).step_by(8) {
                        let (status, body) = get(port, &format!("/thumbs/big/{i:04}.png"));
                        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let (hwm, rss) = memory_mib(server.id());
        println!(
            "{pass:18}: 200 requests, 8 at a time, in {:.1} s; server VmHWM {hwm:.1} MiB, VmRSS {rss:.1} MiB",
            t.elapsed().as_secs_f64()
        );
    }
    // A hostile PNG (a header claiming 16384x16384 RGBA, 16 bits a channel: 2 GiB decoded).
    std::fs::write(dir.join("bomb.png"), hostile_png()).unwrap();
    let (status, body) = text(port, "/thumbs/big/bomb.png");
    let (hwm, _) = memory_mib(server.id());
    println!("bomb.png: {status} {}; VmHWM {hwm:.1} MiB", body.trim());
    assert_eq!(status, 422);
    assert_eq!(get(port, "/healthz").0, 200);
}
