//! Log output: human-readable on a terminal, JSON lines for log collectors.
//!
//! The filter comes from `SDSPOOL_LOG` (same syntax as `RUST_LOG`), default `info`. ONNX
//! Runtime's own log (target `ort`) is kept at `warn` unless the filter names it, since it
//! prints about 80 lines per session at `info`.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Environment variable holding the log filter.
pub const FILTER_ENV: &str = "SDSPOOL_LOG";

/// Installs the global subscriber; logs go to standard error.
pub fn init(format: LogFormat) {
    let spec = std::env::var(FILTER_ENV).unwrap_or_else(|_| "info".to_string());
    let spec = if spec.contains("ort") {
        spec
    } else {
        format!("{spec},ort=warn")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("sdspool: ignoring {FILTER_ENV}={spec:?}: {e}");
        EnvFilter::new("info,ort=warn")
    });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (many errors here print their source in their own message, which `{:#}` would
/// then repeat).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_leaves_out_causes_already_in_the_message() {
        #[derive(Debug, thiserror::Error)]
        #[error("model `m`: {source}")]
        struct Outer {
            #[source]
            source: std::io::Error,
        }
        let e = anyhow::Error::new(Outer {
            source: std::io::Error::other("unet.onnx: bad protobuf"),
        })
        .context("loading the models");
        assert_eq!(
            super::error_chain(&e),
            "loading the models: model `m`: unet.onnx: bad protobuf"
        );
        assert_eq!(format!("{e:#}").matches("bad protobuf").count(), 2);
    }
}
