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
