//! The web pages in a real browser: headless Chromium (Debian's `chromium`, installed by
//! tests/setup-tools.sh; under CI=true a missing browser fails the tests) against the daemon
//! rendering real jobs with the committed tiny-sd model. The browser is driven over the DevTools
//! protocol (tests/browser/cdp.rs), so the checks read the DOM after the page's scripts ran and
//! click the page's own buttons. With SDSPOOL_SCREENSHOTS=<folder> the tests also write the
//! queue and job page screenshots shown in the README (docs/).

#[path = "browser/cdp.rs"]
mod cdp;
mod common;

use common::config_file::TestConfig;
use common::served::Served;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cdp::Browser;
use common::{Running, wait_for};
use serde_json::Value;

const TOKEN: &str = "browser-token-0123456789";

/// The web page's spool and config (tiny-sd, 3 candidates a prompt).
type Env = Served;

impl Env {
    fn new(edit: impl FnOnce(&mut TestConfig)) -> Env {
        Served::create(3, edit)
    }

    /// `sdspool <args>` on this config, up and answering.
    fn start(&self, args: &[&str]) -> Running {
        let daemon = Running::spawn(
            Command::new(env!("CARGO_BIN_EXE_sdspool"))
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .stdout(Stdio::null()),
        );
        let port = self.port;
        wait_for("the server", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        daemon
    }

    fn submit(&self, name: &str, body: &str) {
        let tmp = self.root.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, self.root.join("spool/incoming").join(name)).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn browser(&self, chromium: &str) -> Browser {
        Browser::start(chromium, &self.root.join("chromium-profile"))
    }

    /// With SDSPOOL_SCREENSHOTS set, a screenshot of `path` as `<folder>/<name>`.
    fn screenshot(&self, chromium: &str, path: &str, name: &str) {
        let Ok(dir) = std::env::var("SDSPOOL_SCREENSHOTS") else {
            return;
        };
        let png = Path::new(&dir).join(name);
        let profile = self.root.join("screenshot-profile");
        assert!(
            cdp::screenshot(chromium, &profile, &self.url(path), &png),
            "no screenshot of {path} in {}",
            png.display()
        );
    }
}

/// `[file, rank, score]` of each kept card, in page order, as the browser shows them.
const KEPT_CARDS: &str = "JSON.stringify(Array.from(document.querySelectorAll('#kept .card')).map(c => \
    [c.dataset.file, c.querySelector('.rank').textContent, c.querySelector('.score').textContent]))";

/// Whether the kept candidates' images have loaded and decoded (the rejected ones are folded
/// away, so their lazy images do not load).
const IMAGES_SHOWN: &str = "(imgs => document.readyState === 'complete' && imgs.length > 0 && \
    imgs.every(i => i.complete && i.naturalWidth > 0))(Array.from(document.querySelectorAll('#kept img')))";

/// `[file, rank, score]` of the kept candidates in manifest.json, by prompt then rank, the
/// score as the page prints it.
fn manifest_cards(manifest: &Path) -> Vec<Vec<String>> {
    let m: sdspool::jobs::run::manifest::Manifest =
        serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    let mut out = Vec::new();
    for p in &m.prompts {
        let mut kept: Vec<_> = p.candidates.iter().filter(|c| c.kept).collect();
        kept.sort_by_key(|c| c.rank);
        for c in kept {
            out.push(vec![
                c.file.clone().unwrap(),
                c.rank.unwrap().to_string(),
                format!("{:.2}", c.clip_score.unwrap()),
            ]);
        }
    }
    out
}

fn cards(browser: &mut Browser) -> Vec<Vec<String>> {
    serde_json::from_str(browser.eval(KEPT_CARDS).as_str().unwrap()).unwrap()
}

#[test]
fn the_gallery_shows_the_candidates_in_the_manifests_order_and_scores() {
    let Some(chromium) = cdp::chromium() else {
        return;
    };
    let env = Env::new(|_| {});
    let _daemon = env.start(&["run"]);
    env.submit(
        "cats.yaml",
        "prompts:\n  - a photo of a cat\n  - a red circle\nseed: 5\nkeep_top: 2\n",
    );
    wait_for("cats in done/", Duration::from_secs(120), || {
        env.root.join("spool/done/cats.yaml").exists()
    });
    let expected = manifest_cards(&env.root.join("output/cats/manifest.json"));
    assert_eq!(expected.len(), 4);
    assert!(expected.iter().any(|c| c[1] == "2"), "{expected:?}");

    let mut browser = env.browser(&chromium);
    browser.open(&env.url("/jobs/cats"));
    browser.wait_for(
        "the job page's thumbnails",
        Duration::from_secs(20),
        IMAGES_SHOWN,
    );
    assert_eq!(cards(&mut browser), expected);
    // The rejected candidates are folded away, not shown.
    assert_eq!(
        browser.eval("document.querySelector('#rejected').open === false && document.querySelectorAll('#rejected .card').length"),
        Value::from(2)
    );
    // The static page in the job folder shows the same from file://, with no server.
    let file_url = format!(
        "file://{}",
        env.root.join("output/cats/index.html").display()
    );
    browser.open(&file_url);
    browser.wait_for(
        "the static page's images",
        Duration::from_secs(20),
        IMAGES_SHOWN,
    );
    assert_eq!(cards(&mut browser), expected);
    env.screenshot(&chromium, "/jobs/cats", "web-job.png");
}

/// `[images done, step]` of `job`'s row on the queue page, or null while it shows none.
fn progress_js(job: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('#running tr[data-job^=\"{job}\"]'); \
         const i = r && r.querySelector('.images'), s = r && r.querySelector('.step'); \
         return i && s ? [Number(i.textContent), Number(s.textContent)] : null; }})()"
    )
}

/// The status of a control request made from the page's own origin with `body`.
fn post_from_page(browser: &mut Browser, body: &str) -> Value {
    browser.eval(&format!(
        "fetch('/control/cancel', {{method: 'POST', headers: {{'Content-Type': \
         'application/x-www-form-urlencoded'}}, body: '{body}', redirect: 'manual'}}).then(r => r.status)"
    ))
}

#[test]
fn the_queue_page_shows_progress_live_and_cancels_with_the_token() {
    let Some(chromium) = cdp::chromium() else {
        return;
    };
    let env = Env::new(|c| c.control_token = Some(TOKEN.into()));
    let _daemon = env.start(&["run"]);
    env.submit(
        "slow.yaml",
        "prompts: [a cat, a dog, a red circle, a blue square, a tree, a house, a car, a boat]\n\
         width: 256\nheight: 256\nsteps: 50\ncandidates: 2\nseed: 1\n",
    );
    wait_for("slow's progress", Duration::from_secs(60), || {
        env.root.join("spool/running/slow.status.json").exists()
    });
    let mut browser = env.browser(&chromium);
    browser.open(&env.url("/"));
    let progress = progress_js("slow");
    browser.wait_for(
        "the running job's progress",
        Duration::from_secs(60),
        &format!("{progress} !== null"),
    );
    env.screenshot(&chromium, "/", "web-queue.png");
    // The page updates itself (no reload: the mark set now stays) and the progress advances.
    browser.eval("window.notReloaded = true");
    let first = browser.eval(&progress);
    browser.wait_for(
        "the progress to advance on the page",
        Duration::from_secs(15),
        &format!(
            "window.notReloaded === true && (p => p !== null && (p[0] > {a} || (p[0] === {a} && p[1] > {b})))({progress})",
            a = first[0],
            b = first[1]
        ),
    );

    // Without the token, or with a wrong one, the control endpoints refuse.
    assert_eq!(post_from_page(&mut browser, "job=slow"), Value::from(401));
    assert_eq!(
        post_from_page(&mut browser, "job=slow&token=wrong-token-0123456789"),
        Value::from(403)
    );
    assert!(
        env.root
            .join("spool/failed")
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );

    // With the token (given once in the address, as the README says), the page's Cancel
    // button moves the running job to failed/ and the page shows it there. (From another page:
    // from `/` to `/#token=` would only move within the loaded page.)
    browser.open("about:blank");
    browser.open(&env.url(&format!("/#token={TOKEN}")));
    let button = "document.querySelector('#running tr[data-job^=\"slow\"] form.cancel button')";
    browser.wait_for(
        "the cancel form with the token filled in",
        Duration::from_secs(20),
        &format!(
            "document.readyState === 'complete' && {button} !== null && \
             {button}.form.token.value === '{TOKEN}'"
        ),
    );
    browser.eval(&format!("{button}.click(), true"));
    wait_for("slow in failed/", Duration::from_secs(30), || {
        env.root.join("spool/failed/slow.yaml").exists()
    });
    browser.open(&env.url("/"));
    browser.wait_for(
        "the failed job on the queue page",
        Duration::from_secs(20),
        "document.readyState === 'complete' && \
         Array.from(document.querySelectorAll('#recent tr.failed')).some(r => r.textContent.includes('slow'))",
    );
}

#[test]
fn without_a_token_the_page_has_no_controls_and_the_endpoints_refuse() {
    let Some(chromium) = cdp::chromium() else {
        return;
    };
    let env = Env::new(|_| {});
    env.submit("queued.yaml", "prompts: [a cat]\n");
    let _server = env.start(&["serve"]);
    let mut browser = env.browser(&chromium);
    browser.open(&env.url(&format!("/#token={TOKEN}")));
    browser.wait_for(
        "the queue page listing the job",
        Duration::from_secs(20),
        "document.readyState === 'complete' && document.querySelector('#queued tr[data-job^=\"queued\"]') !== null",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('form[action^=\"/control\"], button').length"),
        Value::from(0)
    );
    assert_eq!(
        post_from_page(&mut browser, &format!("job=queued&token={TOKEN}")),
        Value::from(403)
    );
    assert!(env.root.join("spool/incoming/queued.yaml").exists());
}
