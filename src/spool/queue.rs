//! What `incoming/` holds, which files are complete, and which job runs next.
//!
//! A file becomes ready when a close-after-write or moved-in event names it, or, seen only by
//! scans, when a later look finds its inode, size and mtime unchanged and the mtime is at least
//! `settle_seconds` old (by this host's clock; when the mtime lies in the future, as with a
//! file server whose clock runs ahead, the time it has been seen unchanged counts instead).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io::{self, Read as _};
use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::Deserialize;

use super::fsops::{self, FileId};
use super::lease::Observations;
use super::names::NameKind;
use super::watch::{Signal, Watcher};
use super::{Claimed, Preference, Spool, SpoolError};

/// How old a file with sdspool's temporary prefix in `incoming/` must be before the log says it
/// is left alone (younger ones are being written).
const TEMP_QUIET: Duration = Duration::from_secs(60);

/// Shortest time between two looks for them to count as "unchanged since the previous look".
pub(crate) const MIN_LOOK_GAP: Duration = Duration::from_millis(250);

/// A job file in `incoming/` not yet claimed.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub kind: NameKind,
    pub id: FileId,
    pub size: u64,
    pub mtime: SystemTime,
    /// When this inode, size and mtime were first seen.
    pub unchanged_since: Instant,
    /// A later look found them unchanged.
    pub confirmed: bool,
    /// A close-after-write or moved-in event named it (and nothing wrote to it since).
    pub by_event: bool,
    /// A job of the same stem is in `running/`; retried after the next full scan.
    pub waiting: bool,
    /// When to look at it again, while it is not ready.
    pub next_look: Option<Instant>,
}

/// The queue of one [`Spool`].
pub(crate) struct Queue {
    pub watcher: Option<Watcher>,
    pub candidates: BTreeMap<String, Candidate>,
    /// `priority:` and `model:` by file name, valid for the identity, size and mtime they were
    /// read at.
    heads: HashMap<String, (FileId, u64, SystemTime, Head)>,
    /// How often each candidate was passed over for a younger one of its priority that the
    /// claiming worker preferred (see [`Preference`]).
    passed: HashMap<String, u32>,
    /// Unusable entries reported in the log and not to be reported again.
    reported: HashSet<(String, FileId)>,
    /// Files waiting for a running job of the same name, already said in the log.
    waiting_logged: HashSet<(String, FileId)>,
    /// Names that look like job files but are left alone (hidden, temporary), said in the log.
    ignored_logged: HashSet<(String, FileId)>,
    /// `None`: scan at once.
    pub next_rescan: Option<Instant>,
    /// Other daemons' claims as seen on the scans of `running/`.
    pub observations: Observations,
    /// When to look at `running/` for jobs to take over; `None`: at once.
    pub next_running_scan: Option<Instant>,
}

/// What an attempt to claim a candidate came to.
#[derive(Debug)]
pub(crate) enum ClaimOutcome {
    Claimed(Box<Claimed>),
    /// Another daemon holds the file's lock: it is claiming it.
    Busy,
    /// The name is gone: claimed elsewhere, or removed.
    Gone,
    /// The file under the name changed while we claimed it; look again.
    Changed,
    /// A job of the same stem is in `running/`.
    Clash,
    /// Not a regular file (any more).
    NotRegular(Metadata),
    /// A regular file this daemon cannot open.
    Unreadable(String),
    Error(io::Error),
}

impl Queue {
    pub fn new(watcher: Option<Watcher>) -> Queue {
        Queue {
            watcher,
            candidates: BTreeMap::new(),
            heads: HashMap::new(),
            passed: HashMap::new(),
            reported: HashSet::new(),
            waiting_logged: HashSet::new(),
            ignored_logged: HashSet::new(),
            next_rescan: None,
            observations: Observations::default(),
            next_running_scan: None,
        }
    }

    pub fn rescan_due(&self, now: Instant) -> bool {
        self.next_rescan.is_none_or(|t| t <= now)
    }

    pub fn running_scan_due(&self, now: Instant) -> bool {
        self.next_running_scan.is_none_or(|t| t <= now)
    }

    pub fn earliest_look(&self) -> Option<Instant> {
        self.candidates.values().filter_map(|c| c.next_look).min()
    }
}

/// Which job of the highest priority's leading group (in order; each: whether the worker
/// prefers it, how often it was passed over) to claim before the others: the first one that is
/// preferred or was passed over `max_passed_over` times; `None` when that is the first anyway or
/// there is none.
pub(crate) fn jump(group: &[(bool, u32)], max_passed_over: u32) -> Option<usize> {
    group
        .iter()
        .position(|(preferred, passed)| *preferred || *passed >= max_passed_over)
        .filter(|i| *i > 0)
}

/// The order jobs run in: higher priority first, then older mtime, then name.
pub(crate) fn order_key(priority: i32, mtime: SystemTime, name: &str) -> (i64, SystemTime, String) {
    (-i64::from(priority), mtime, name.to_string())
}

/// What the spool reads of a job file: its `priority:`. Every other field is the job layer's
/// business (the worker validates the whole file when it loads it).
#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    priority: Option<i32>,
}

/// A job file's `model:` when it is text: told to the claiming worker's [`Preference`], not
/// interpreted here.
#[derive(Debug, Default, Deserialize)]
struct ModelHeader {
    #[serde(default)]
    model: Option<String>,
}

/// What the queue keeps of a job file's contents.
#[derive(Debug, Clone, Default)]
pub(crate) struct Head {
    pub priority: i32,
    pub model: Option<String>,
}

/// Reads a job file's `priority:`, without following links or blocking: `Ok(Err(why))` for a
/// file that is not a YAML mapping with an integer `priority:` (it still runs, and fails with
/// its reason).
pub(crate) fn read_priority(path: &Path, max_bytes: u64) -> io::Result<Result<i32, String>> {
    Ok(read_text(path, max_bytes)?.and_then(|text| priority_in(&text)))
}

/// A job file's priority and model (priority 0 and no model when it cannot say).
fn read_head(path: &Path, max_bytes: u64) -> Head {
    let Ok(Ok(text)) = read_text(path, max_bytes) else {
        return Head::default();
    };
    let model =
        crate::sys::yaml::parse_with::<ModelHeader>(&text, crate::sys::yaml::strict_options())
            .ok()
            .and_then(|h| h.model);
    Head {
        priority: priority_in(&text).unwrap_or(0),
        model,
    }
}

fn priority_in(text: &str) -> Result<i32, String> {
    crate::sys::yaml::parse_with::<Header>(text, crate::sys::yaml::strict_options())
        .map(|h| h.priority.unwrap_or(0))
        // The parser's message continues with a snippet of the file; keep the first line.
        .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
}

/// A job file's text, without following links or blocking: `Ok(Err(why))` for one that is not
/// a regular file, too large, or not UTF-8.
fn read_text(path: &Path, max_bytes: u64) -> io::Result<Result<String, String>> {
    let file = fsops::open_nofollow(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Err("is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Ok(Err(format!(
            "is larger than {max_bytes} bytes (limits.max_job_bytes)"
        )));
    }
    Ok(String::from_utf8(bytes).map_err(|_| "is not UTF-8 text".to_string()))
}

/// Why a non-regular entry cannot be a job.
pub(crate) fn not_regular_reason(path: &Path, meta: &Metadata) -> String {
    let t = meta.file_type();
    if t.is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| format!(" to {}", t.display()))
            .unwrap_or_default();
        format!(
            "is a symbolic link{target}; sdspool does not follow links: put the job file itself into incoming/"
        )
    } else if t.is_dir() {
        "is a folder, not a job file".into()
    } else if t.is_fifo() {
        "is a FIFO (named pipe), not a job file".into()
    } else if t.is_socket() {
        "is a socket, not a job file".into()
    } else if t.is_block_device() || t.is_char_device() {
        "is a device, not a job file".into()
    } else {
        "is not a regular file".into()
    }
}

impl Spool {
    fn settle(&self) -> Duration {
        Duration::from_secs(self.config.settle_seconds)
    }

    /// Whether a candidate may be taken now.
    fn ready(&self, c: &Candidate, now: Instant) -> bool {
        if c.waiting {
            return false;
        }
        if c.by_event {
            return true;
        }
        if !c.confirmed {
            return false;
        }
        let age = match SystemTime::now().duration_since(c.mtime) {
            Ok(age) => age,
            Err(_) => now.duration_since(c.unchanged_since),
        };
        age >= self.settle()
    }

    /// Schedules the next look at a candidate that is not ready.
    fn schedule(&self, c: &mut Candidate, now: Instant) {
        if self.ready(c, now) || c.waiting {
            c.next_look = None;
            return;
        }
        let gap = if c.confirmed {
            Duration::ZERO
        } else {
            (c.unchanged_since + MIN_LOOK_GAP.max(self.settle())).saturating_duration_since(now)
        };
        let mtime_left = match SystemTime::now().duration_since(c.mtime) {
            Ok(age) => self.settle().saturating_sub(age),
            Err(_) => (c.unchanged_since + self.settle()).saturating_duration_since(now),
        };
        c.next_look = Some(now + gap.max(mtime_left).max(Duration::from_millis(50)));
    }

    /// Looks at `incoming/<name>` and updates its candidate.
    fn look(&self, q: &mut super::queue::Queue, name: &str, now: Instant) {
        let kind = super::kind_of(OsStr::new(name));
        if kind == NameKind::Ignored {
            return;
        }
        let path = self.layout.incoming.join(name);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(_) => {
                q.candidates.remove(name);
                return;
            }
        };
        if !meta.file_type().is_file() {
            q.candidates.remove(name);
            self.reject_not_regular(q, name, &kind, &path, &meta);
            return;
        }
        let id = FileId::of(&meta);
        let size = meta.len();
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let c = q
            .candidates
            .entry(name.to_string())
            .or_insert_with(|| Candidate {
                kind: kind.clone(),
                id,
                size,
                mtime,
                unchanged_since: now,
                confirmed: false,
                by_event: false,
                waiting: false,
                next_look: None,
            });
        if c.id == id && c.size == size && c.mtime == mtime {
            if now.duration_since(c.unchanged_since) >= MIN_LOOK_GAP {
                c.confirmed = true;
            }
        } else {
            *c = Candidate {
                kind,
                id,
                size,
                mtime,
                unchanged_since: now,
                confirmed: false,
                by_event: false,
                waiting: false,
                next_look: None,
            };
        }
        let mut c = c.clone();
        self.schedule(&mut c, now);
        q.candidates.insert(name.to_string(), c);
    }

    /// Moves a folder, FIFO, link, ... named like a job to `failed/`, or reports it once.
    fn reject_not_regular(
        &self,
        q: &mut Queue,
        name: &str,
        kind: &NameKind,
        path: &Path,
        meta: &Metadata,
    ) {
        let reason = not_regular_reason(path, meta);
        self.reject_or_report(q, OsStr::new(name), kind, FileId::of(meta), &reason);
    }

    fn reject_or_report(
        &self,
        q: &mut Queue,
        name: &OsStr,
        kind: &NameKind,
        id: FileId,
        reason: &str,
    ) {
        let key = (name.to_string_lossy().into_owned(), id);
        if q.reported.contains(&key) {
            return;
        }
        let stem = match kind {
            NameKind::Job { stem } => stem.as_str(),
            NameKind::Unusable { sanitized, .. } => sanitized.as_str(),
            NameKind::Ignored => return,
        };
        match self.reject(name, stem, reason) {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(
                    file = %self.layout.incoming.join(name).display(),
                    reason,
                    error = %e,
                    "not a usable job file, and it cannot be moved to failed/; skipped until it changes"
                );
                q.reported.insert(key);
            }
        }
    }

    /// Lists `incoming/` and brings the candidates up to date.
    pub(crate) fn full_scan(&self, q: &mut Queue) -> Result<(), SpoolError> {
        let now = Instant::now();
        let dir = &self.layout.incoming;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| SpoolError::new(dir, "scanning the incoming folder", e))?;
        let mut seen = HashSet::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| SpoolError::new(dir, "scanning the incoming folder", e))?;
            let os_name = entry.file_name();
            let kind = super::kind_of(&os_name);
            if kind == NameKind::Ignored {
                self.note_ignored(q, &os_name, &mut seen);
                continue;
            }
            let Some(name) = os_name.to_str().map(str::to_string) else {
                // A non-UTF-8 name is never a job: move it under a sanitized name at once.
                if let (NameKind::Unusable { reason, .. }, Ok(meta)) =
                    (&kind, std::fs::symlink_metadata(entry.path()))
                {
                    let reason = format!("unusable file name: {reason}");
                    self.reject_or_report(q, &os_name, &kind, FileId::of(&meta), &reason);
                    seen.insert(os_name.to_string_lossy().into_owned());
                }
                continue;
            };
            if let Some(c) = q.candidates.get_mut(&name) {
                c.waiting = false;
            }
            self.look(q, &name, now);
            seen.insert(name);
        }
        q.candidates.retain(|name, _| seen.contains(name));
        q.reported.retain(|(name, _)| seen.contains(name));
        q.waiting_logged
            .retain(|(name, _)| q.candidates.contains_key(name));
        q.ignored_logged.retain(|(name, _)| seen.contains(name));
        q.next_rescan = Some(now + Duration::from_secs(self.config.rescan_seconds));
        Ok(())
    }

    /// Says once in the log why a name that looks like a job file is left alone (hidden, or
    /// sdspool's temporary prefix); `seen` keeps it from being said again while it stays.
    fn note_ignored(&self, q: &mut Queue, name: &OsStr, seen: &mut HashSet<String>) {
        let Some(reason) = super::names::ignored_reason(name) else {
            return;
        };
        let path = self.layout.incoming.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return;
        };
        // sdspool's own temporary files live for a moment; one that stays is worth a line.
        if super::names::is_temp(name)
            && fsops::age(meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)) < TEMP_QUIET
        {
            return;
        }
        let key = (name.to_string_lossy().into_owned(), FileId::of(&meta));
        seen.insert(key.0.clone());
        if q.ignored_logged.insert(key) {
            tracing::warn!(file = %path.display(), "left alone in incoming/: it {reason}");
        }
    }

    /// Looks again at candidates whose time has come.
    pub(crate) fn due_looks(&self, q: &mut Queue) {
        let now = Instant::now();
        let due: Vec<String> = q
            .candidates
            .iter()
            .filter(|(_, c)| c.next_look.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.look(q, &name, now);
        }
    }

    /// Applies the watcher's pending events.
    pub(crate) fn drain_events(&self, q: &mut Queue) {
        let mut signals = Vec::new();
        if let Some(w) = &q.watcher {
            loop {
                match w.try_recv() {
                    Ok(Some(s)) => signals.extend(s),
                    Ok(None) => break,
                    Err(()) => {
                        tracing::warn!("the file watcher stopped; new jobs are found by rescans");
                        q.watcher = None;
                        break;
                    }
                }
            }
        }
        self.apply(q, signals);
    }

    /// Waits up to `wait` for a watcher event (or sleeps when there is no watcher).
    pub(crate) fn wait_for_event(&self, q: &mut Queue, wait: Duration) {
        let Some(w) = &q.watcher else {
            std::thread::sleep(wait);
            return;
        };
        match w.recv_timeout(wait) {
            Ok(Some(signals)) => self.apply(q, signals),
            Ok(None) => {}
            Err(()) => {
                tracing::warn!("the file watcher stopped; new jobs are found by rescans");
                q.watcher = None;
            }
        }
    }

    fn apply(&self, q: &mut Queue, signals: Vec<Signal>) {
        for s in signals {
            let now = Instant::now();
            // Any event on a file may be an edit of its `priority:`, even one that keeps its
            // size and (on a file system with coarse timestamps) its mtime: read it again.
            if let Signal::Ready(name)
            | Signal::Look(name)
            | Signal::Writing(name)
            | Signal::Removed(name) = &s
            {
                q.heads.remove(name);
            }
            if matches!(s, Signal::Rescan) {
                q.heads.clear();
            }
            match s {
                Signal::Rescan => q.next_rescan = None,
                Signal::Ready(name) => {
                    self.look(q, &name, now);
                    if let Some(c) = q.candidates.get_mut(&name) {
                        c.by_event = true;
                        c.next_look = None;
                    }
                }
                Signal::Look(name) => self.look(q, &name, now),
                Signal::Writing(name) => {
                    self.look(q, &name, now);
                    if let Some(c) = q.candidates.get_mut(&name) {
                        c.by_event = false;
                        c.confirmed = false;
                        c.unchanged_since = now;
                        let mut c2 = c.clone();
                        self.schedule(&mut c2, now);
                        *c = c2;
                    }
                }
                Signal::Removed(name) => {
                    q.candidates.remove(&name);
                }
            }
        }
    }

    fn head_of(&self, q: &mut Queue, name: &str, c: &Candidate) -> Head {
        if let Some((id, size, mtime, head)) = q.heads.get(name)
            && *id == c.id
            && *size == c.size
            && *mtime == c.mtime
        {
            return head.clone();
        }
        let head = read_head(&self.layout.incoming.join(name), self.options.max_job_bytes);
        q.heads
            .insert(name.to_string(), (c.id, c.size, c.mtime, head.clone()));
        head
    }

    /// Claims the best ready candidate, dealing with the unusable ones on the way: the first in
    /// order (highest priority, then oldest, then name), except that among those of the highest
    /// priority the first one that `preference` prefers, or that was passed over
    /// `max_passed_over` times, goes first (see [`jump`]).
    pub(crate) fn pick(&self, q: &mut Queue, preference: &Preference<'_>) -> Option<Claimed> {
        let now = Instant::now();
        let ready: Vec<(String, Candidate)> = q
            .candidates
            .iter()
            .filter(|(_, c)| self.ready(c, now))
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        q.heads.retain(|name, _| q.candidates.contains_key(name));
        q.passed.retain(|name, _| q.candidates.contains_key(name));
        let mut ordered: Vec<_> = ready
            .into_iter()
            .map(|(name, c)| {
                let head = match &c.kind {
                    NameKind::Job { .. } => self.head_of(q, &name, &c),
                    _ => Head::default(),
                };
                (order_key(head.priority, c.mtime, &name), head, name, c)
            })
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let mut passed_over = Vec::new();
        let first = ordered.first().map(|o| o.1.priority);
        let group: Vec<(bool, u32)> = ordered
            .iter()
            .take_while(|o| Some(o.1.priority) == first && matches!(o.3.kind, NameKind::Job { .. }))
            .map(|o| {
                let passed = q.passed.get(&o.2).copied().unwrap_or(0);
                ((preference.prefer)(o.1.model.as_deref()), passed)
            })
            .collect();
        if let Some(i) = jump(&group, preference.max_passed_over) {
            passed_over = ordered[..i].iter().map(|o| o.2.clone()).collect();
            let chosen = ordered.remove(i);
            ordered.insert(0, chosen);
        }
        for (_, head, name, c) in ordered {
            let priority = head.priority;
            let stem = match &c.kind {
                NameKind::Job { stem } => stem.clone(),
                NameKind::Unusable { reason, .. } => {
                    q.candidates.remove(&name);
                    let reason = format!("unusable file name: {reason}");
                    self.reject_or_report(q, OsStr::new(&name), &c.kind, c.id, &reason);
                    continue;
                }
                NameKind::Ignored => continue,
            };
            match self.claim(&name, &stem, priority) {
                ClaimOutcome::Claimed(claimed) => {
                    q.candidates.remove(&name);
                    q.passed.remove(&name);
                    for older in passed_over {
                        *q.passed.entry(older).or_default() += 1;
                    }
                    return Some(*claimed);
                }
                ClaimOutcome::Busy | ClaimOutcome::Gone => {
                    q.candidates.remove(&name);
                }
                ClaimOutcome::Changed => {
                    self.look(q, &name, now);
                    if let Some(c) = q.candidates.get_mut(&name) {
                        c.by_event = false;
                        c.confirmed = false;
                        c.unchanged_since = now;
                        let mut c2 = c.clone();
                        self.schedule(&mut c2, now);
                        *c = c2;
                    }
                }
                ClaimOutcome::Clash => {
                    if q.waiting_logged.insert((name.clone(), c.id)) {
                        tracing::info!(
                            job = %name,
                            "waits: a job named `{stem}` is running; it runs when that one is finished"
                        );
                    }
                    if let Some(c) = q.candidates.get_mut(&name) {
                        c.waiting = true;
                        c.next_look = None;
                    }
                }
                ClaimOutcome::NotRegular(meta) => {
                    q.candidates.remove(&name);
                    let path = self.layout.incoming.join(&name);
                    self.reject_not_regular(q, &name, &c.kind, &path, &meta);
                }
                ClaimOutcome::Unreadable(reason) => {
                    q.candidates.remove(&name);
                    self.reject_or_report(q, OsStr::new(&name), &c.kind, c.id, &reason);
                }
                ClaimOutcome::Error(e) => {
                    q.candidates.remove(&name);
                    tracing::warn!(
                        file = %self.layout.incoming.join(&name).display(),
                        error = %e,
                        "cannot claim the job; trying again at the next scan"
                    );
                }
            }
        }
        None
    }
}
