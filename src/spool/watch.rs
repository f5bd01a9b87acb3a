//! Events from `incoming/` through `notify` (inotify on Linux), turned into what the queue needs.
//!
//! notify 8 on Linux reports a rename into the folder as `Modify(Name(To))` (plus `Both` when the
//! source was in the same folder), a plain write as `Create`, `Modify(Data)`..., then
//! `Access(Close(Write))`, and a full inotify queue as an event with the `Rescan` flag. A `Create`
//! alone does not make a file ready: on Linux it starts a write (or is a hard link), and other
//! platforms' rename-ins are caught by the settle rule.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher as _};

/// What an event means for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Written and closed, or moved in: take it at once.
    Ready(String),
    /// Being written: not ready.
    Writing(String),
    /// Something happened to it: look.
    Look(String),
    /// Removed or moved out.
    Removed(String),
    /// Events were lost: scan everything.
    Rescan,
}

/// A watch on one folder.
pub(crate) struct Watcher {
    _watcher: RecommendedWatcher,
    rx: Receiver<notify::Result<Event>>,
    dir: PathBuf,
}

impl Watcher {
    /// Starts watching `dir` (not its subfolders).
    pub fn start(dir: &Path) -> notify::Result<Watcher> {
        let (tx, rx) = mpsc::channel();
        let mut watcher = notify::recommended_watcher(tx)?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(Watcher {
            _watcher: watcher,
            rx,
            dir: dir.to_path_buf(),
        })
    }

    /// The next pending event's signals, `Ok(None)` when none is pending, `Err` when the watcher
    /// stopped.
    pub fn try_recv(&self) -> Result<Option<Vec<Signal>>, ()> {
        match self.rx.try_recv() {
            Ok(ev) => Ok(Some(signals(ev, &self.dir))),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(()),
        }
    }

    /// Waits up to `wait` for an event.
    pub fn recv_timeout(&self, wait: Duration) -> Result<Option<Vec<Signal>>, ()> {
        match self.rx.recv_timeout(wait) {
            Ok(ev) => Ok(Some(signals(ev, &self.dir))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }
}

/// The signals of one event about files in `dir`.
pub(crate) fn signals(ev: notify::Result<Event>, dir: &Path) -> Vec<Signal> {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = %e, "file watcher error; rescanning");
            return vec![Signal::Rescan];
        }
    };
    if ev.need_rescan() {
        tracing::info!("the file watcher lost events (queue overflow); rescanning");
        return vec![Signal::Rescan];
    }
    let names: Vec<String> = ev
        .paths
        .iter()
        .filter(|p| p.parent().is_none_or(|parent| parent == dir))
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let all = |f: fn(String) -> Signal| names.iter().cloned().map(f).collect::<Vec<_>>();
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => all(Signal::Ready),
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => all(Signal::Ready),
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => all(Signal::Removed),
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // [from, to]: the To event came separately too.
            let mut out = Vec::new();
            if let Some(from) = names.first() {
                out.push(Signal::Removed(from.clone()));
            }
            if let Some(to) = names.get(1) {
                out.push(Signal::Ready(to.clone()));
            }
            out
        }
        EventKind::Modify(ModifyKind::Data(_)) => all(Signal::Writing),
        EventKind::Remove(_) => all(Signal::Removed),
        EventKind::Access(_) => Vec::new(),
        // Create, metadata changes, and anything a backend cannot classify.
        _ => all(Signal::Look),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, Flag, RemoveKind};

    fn ev(kind: EventKind, paths: &[&str]) -> notify::Result<Event> {
        let mut e = Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn events_become_signals() {
        let dir = Path::new("/s/incoming");
        let name = |s: &str| s.to_string();
        assert_eq!(
            signals(
                ev(
                    EventKind::Access(AccessKind::Close(AccessMode::Write)),
                    &["/s/incoming/a.yaml"]
                ),
                dir
            ),
            vec![Signal::Ready(name("a.yaml"))]
        );
        assert_eq!(
            signals(
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                    &["/s/incoming/b.yaml"]
                ),
                dir
            ),
            vec![Signal::Ready(name("b.yaml"))]
        );
        assert_eq!(
            signals(
                ev(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    &["/s/incoming/.tmp", "/s/incoming/c.yaml"]
                ),
                dir
            ),
            vec![Signal::Removed(name(".tmp")), Signal::Ready(name("c.yaml"))]
        );
        assert_eq!(
            signals(
                ev(EventKind::Create(CreateKind::File), &["/s/incoming/d.yaml"]),
                dir
            ),
            vec![Signal::Look(name("d.yaml"))]
        );
        assert_eq!(
            signals(
                ev(
                    EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                    &["/s/incoming/d.yaml"]
                ),
                dir
            ),
            vec![Signal::Writing(name("d.yaml"))]
        );
        assert_eq!(
            signals(
                ev(EventKind::Remove(RemoveKind::File), &["/s/incoming/d.yaml"]),
                dir
            ),
            vec![Signal::Removed(name("d.yaml"))]
        );
        let overflow = Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan));
        assert_eq!(signals(overflow, dir), vec![Signal::Rescan]);
        let error = Err(notify::Error::generic("boom"));
        assert_eq!(signals(error, dir), vec![Signal::Rescan]);
    }
}
