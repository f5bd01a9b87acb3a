//! The `spool:` section of `config.yaml`.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// Default of [`SpoolConfig::lease_seconds`].
pub const DEFAULT_LEASE_SECONDS: u64 = 60;

/// Where the spool is and how it is watched.
///
/// ```yaml
/// spool:
///   dir: local/spool      # relative to the config file's folder
///   rescan_seconds: 10    # full scan of incoming/ (the only way to see new jobs on NFS)
///   settle_seconds: 2     # how old a scanned file's mtime must be before it is taken
///   max_crashes: 3        # a job that brought the daemon down this often: failed/ (see below)
///   lease_seconds: 60     # a claim not renewed for this long is taken over by a live daemon
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The spool folder holding `incoming/`, `running/`, `done/` and `failed/`. Relative paths in
    /// `config.yaml` are resolved against the config file's folder.
    pub dir: PathBuf,
    /// Seconds between full scans of `incoming/`. File-system events make new jobs visible at
    /// once on local file systems; on network file systems (NFS, SMB) no events arrive and this
    /// scan is the only way new jobs are noticed. At least 1.
    #[serde(deserialize_with = "at_least_one_u64")]
    pub rescan_seconds: u64,
    /// A file seen only by a scan (no close-after-write or moved-in event) is taken once its
    /// modification time is at least this many seconds old and a later look found its size and
    /// mtime unchanged. 0 takes it on the second unchanged look.
    pub settle_seconds: u64,
    /// A job that brought the daemon down this many times is moved to `failed/` instead of
    /// being resumed again. A crash counts against the job only on evidence: a panic while it
    /// ran, or an attempt that died at the same point (prompt, images done, step) as the one
    /// before it without progress in between; a kill that lands at another point, or before a
    /// worker started on the job, does not count (see the [module docs](super)). At least 1.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub max_crashes: u32,
    /// How long a claim lives without being renewed. The daemon working on a job renews its
    /// claim (the modification time of `running/<job>.attempts`) every quarter of this; a
    /// daemon that sees a claim of another host unchanged for this long, by its own clock,
    /// takes the job over and resumes it from its manifest. Claims of this host's dead processes
    /// are taken over at once. At least 1.
    #[serde(deserialize_with = "at_least_one_u64")]
    pub lease_seconds: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from("local/spool"),
            rescan_seconds: 10,
            settle_seconds: 2,
            max_crashes: 3,
            lease_seconds: DEFAULT_LEASE_SECONDS,
        }
    }
}

impl SpoolConfig {
    /// A configuration for the spool in `dir` with the default timings.
    pub fn new(dir: impl Into<PathBuf>) -> SpoolConfig {
        SpoolConfig {
            dir: dir.into(),
            ..SpoolConfig::default()
        }
    }

    /// [`SpoolConfig::lease_seconds`] as a duration.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds.max(1))
    }
}

fn at_least_one_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = u64::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("is 0; it must be at least 1"));
    }
    Ok(v)
}

fn at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 0 {
        return Err(serde::de::Error::custom("is 0; it must be at least 1"));
    }
    Ok(v)
}
