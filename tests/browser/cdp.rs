//! A headless Chromium driven over the DevTools protocol through `--remote-debugging-pipe`
//! (requests on its fd 3, answers on its fd 4, each a JSON message ended by a NUL byte): no
//! websocket and no crate beyond serde_json. `sh` hands the browser our pipes as fds 3 and 4.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The browser to run: `$CHROMIUM`, else `chromium` on the PATH (Debian's package; installed by
/// tests/setup-tools.sh). None when there is none, which fails the test under CI=true.
pub fn chromium() -> Option<String> {
    let name = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new(&name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "{name} is missing (install Debian's chromium package: tests/setup-tools.sh)"
        );
        eprintln!("{name} not installed: skipping the browser test (tests/setup-tools.sh)");
        return None;
    }
    Some(name)
}

/// Flags every headless run needs here: no sandbox (tests run as root in containers), no GPU,
/// nothing fetched from the network on its own.
pub const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-extensions",
    "--hide-scrollbars",
    "--window-size=1100,800",
];

/// One browser with one page; killed when dropped.
pub struct Browser {
    child: Child,
    to: Option<ChildStdin>,
    from: Receiver<Value>,
    next: u64,
    session: String,
}

impl Browser {
    /// Starts `chromium` with a fresh profile under `profile` and opens a blank page.
    pub fn start(chromium: &str, profile: &Path) -> Browser {
        let script = format!(
            "exec \"$0\" {} --remote-debugging-pipe --user-data-dir=\"$1\" about:blank 3<&0 4>&1 0</dev/null 1>/dev/null 2>/dev/null",
            FLAGS.join(" ")
        );
        let mut child = Command::new("sh")
            .args(["-c", &script, chromium])
            .arg(profile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while out.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                buf.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            to: child.stdin.take(),
            child,
            from,
            next: 0,
            session: String::new(),
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends one command (to the page once attached) and waits for its answer's `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let to = self.to.as_mut().unwrap();
        to.write_all(&serde_json::to_vec(&msg).unwrap()).unwrap();
        to.write_all(&[0]).unwrap();
        to.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("{method}: no answer from the browser ({e})"));
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in the page (the load goes on; use [`Browser::wait_for`]).
    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// The value of the JavaScript expression `js` in the page (promises awaited).
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `js` until it is true; panics naming `what` after `timeout`.
    pub fn wait_for(&mut self, what: &str, timeout: Duration, js: &str) {
        let start = Instant::now();
        while self.eval(js) != json!(true) {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.to.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chromium --screenshot` of `url` into `png`; true when it wrote a PNG.
pub fn screenshot(chromium: &str, profile: &Path, url: &str, png: &Path) -> bool {
    let ok = Command::new(chromium)
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok && std::fs::read(png).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}
