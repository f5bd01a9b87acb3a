//! The `serve:` and `notify:` sections of config.yaml (the fields live in [`crate::app::config::Config`];
//! their types and checks live here, beside the code that uses them).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `serve:`: the web page, `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Where to listen: `127.0.0.1:8080`, `0.0.0.0:8080`, or a bare port (on 127.0.0.1). The
    /// daemon serves nothing when it is not set; `sdspool serve` needs it (or `--listen`).
    pub listen: Option<String>,
    /// When set, the page offers pause, resume, cancel and priority, and every state-changing
    /// request must carry this token. Unset: read-only.
    pub control_token: Option<String>,
    /// Images per page of a job's gallery.
    pub page_size: Option<usize>,
}

/// Least length of `serve.control_token` (a guessable token is no protection).
pub const MIN_TOKEN_CHARS: usize = 16;
const DEFAULT_PORT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Gallery page size when `serve.page_size` is not set.
pub const DEFAULT_PAGE_SIZE: usize = 60;

impl ServeConfig {
    /// The address to bind, when one is configured.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        self.listen.as_deref().map(parse_listen).transpose()
    }

    pub fn page_size(&self) -> usize {
        self.page_size.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, 1000)
    }

    /// What the types alone do not check: `(dotted key, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Err(e) = self.address() {
            return Err(("serve.listen".into(), e));
        }
        if let Some(t) = &self.control_token
            && (t.chars().count() < MIN_TOKEN_CHARS || t.chars().any(|c| c.is_whitespace()))
        {
            return Err((
                "serve.control_token".into(),
                format!(
                    "must be at least {MIN_TOKEN_CHARS} characters without spaces (e.g. `openssl rand -hex 16`)"
                ),
            ));
        }
        if self.page_size == Some(0) {
            return Err((
                "serve.page_size".into(),
                "is 0; give the images per page".into(),
            ));
        }
        Ok(())
    }
}

/// `127.0.0.1:8080`, `[::1]:8080` or `8080` (loopback).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(DEFAULT_PORT_HOST, port));
    }
    text.parse::<SocketAddr>().map_err(|_| {
        format!("`{text}` is not an address to listen on: give `HOST:PORT` (e.g. `127.0.0.1:8080`) or a port")
    })
}

/// `notify:`: what is told when a job is done or failed and when the queue empties.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// URLs (`http://` or `https://`) that receive each event as a JSON POST.
    pub webhooks: Vec<String>,
    /// PEM file of CA certificates trusted for `https://` webhooks besides the system's (a
    /// private CA); relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// A program run with the event's JSON file as its only argument (for mail or chat
    /// scripts); its standard input is empty, its output goes to the log.
    pub command: Option<PathBuf>,
    /// Seconds one delivery (or the command) may take.
    pub timeout_seconds: u64,
    /// Further tries after a failed delivery, waiting 1 s, 2 s, 4 s, ... in between.
    pub retries: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            webhooks: Vec::new(),
            ca_file: None,
            command: None,
            timeout_seconds: 10,
            retries: 3,
        }
    }
}

impl NotifyConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.max(1))
    }

    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.command.is_none()
    }

    pub fn check(&self) -> Result<(), (String, String)> {
        for (i, url) in self.webhooks.iter().enumerate() {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err((
                    format!("notify.webhooks[{i}]"),
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
            if url.parse::<axum::http::Uri>().is_err() {
                return Err((
                    format!("notify.webhooks[{i}]"),
                    format!("`{url}` is not a valid URL"),
                ));
            }
        }
        if let Some(ca) = &self.ca_file
            && let Err(e) = crate::sys::trust::read_pem_certificates(ca)
        {
            return Err((
                "notify.ca_file".into(),
                crate::app::logging::error_chain(&e.into()),
            ));
        }
        if self.timeout_seconds == 0 || self.timeout_seconds > 600 {
            return Err(("notify.timeout_seconds".into(), "must be 1 to 600".into()));
        }
        if self.retries > 10 {
            return Err(("notify.retries".into(), "must be at most 10".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_binds_loopback_only() {
        assert_eq!(
            parse_listen("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:9").unwrap(),
            "0.0.0.0:9".parse().unwrap()
        );
        assert!(parse_listen("localhost").unwrap_err().contains("HOST:PORT"));
    }

    #[test]
    fn short_tokens_and_non_http_webhooks_are_refused_with_their_key() {
        let s = ServeConfig {
            control_token: Some("short".into()),
            ..ServeConfig::default()
        };
        assert_eq!(s.check().unwrap_err().0, "serve.control_token");
        let n = NotifyConfig {
            webhooks: vec!["ftp://x".into()],
            ..NotifyConfig::default()
        };
        assert_eq!(n.check().unwrap_err().0, "notify.webhooks[0]");
    }

    #[test]
    fn https_webhooks_are_accepted_and_a_ca_file_must_hold_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        let mut n = NotifyConfig {
            webhooks: vec!["https://hooks.example.org/x".into()],
            ca_file: Some(ca.clone()),
            ..NotifyConfig::default()
        };
        let (key, message) = n.check().unwrap_err();
        assert_eq!(key, "notify.ca_file");
        assert!(
            message.contains("cannot read") && message.contains("ca.pem"),
            "{message}"
        );
        std::fs::write(&ca, "no certificates here\n").unwrap();
        let (key, message) = n.check().unwrap_err();
        assert_eq!(key, "notify.ca_file");
        assert!(message.contains("holds no certificate"), "{message}");
        n.ca_file = None;
        n.check().unwrap();
    }
}
