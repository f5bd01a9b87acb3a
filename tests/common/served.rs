//! A daemon's spool, output root and config.yaml serving the web page on a free port, for the
//! web and browser tests.

use std::net::TcpListener;
use std::path::PathBuf;

use super::config_file::{Defaults, TestConfig};

/// A free port on 127.0.0.1 (free when asked; the server binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The temporary folder, its config.yaml and the port the page is served on.
pub struct Served {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
    pub port: u16,
}

impl Served {
    /// tiny-sd jobs of `candidates` 64x64 candidates, the spool folders made, the config changed
    /// by `edit`.
    pub fn create(candidates: u32, edit: impl FnOnce(&mut TestConfig)) -> Served {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let port = free_port();
        let mut c = TestConfig::daemon(&root);
        c.defaults = Defaults::small(4, candidates);
        c.serve_listen = Some(format!("127.0.0.1:{port}"));
        edit(&mut c);
        let config = c.write(&root);
        for d in ["incoming", "running", "done", "failed"] {
            std::fs::create_dir_all(root.join("spool").join(d)).unwrap();
        }
        std::fs::create_dir_all(root.join("output")).unwrap();
        Served {
            _tmp: tmp,
            root,
            config,
            port,
        }
    }
}
