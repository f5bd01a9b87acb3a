//! The file-system operations the spool is built on: moves that never replace, whole-file
//! locks, atomic writes, and facts about this host.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use rustix::fs::{AtFlags, CWD, FlockOperation, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::sys::atomic;

/// How a file is moved from one spool folder to another without replacing what is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClaimMethod {
    /// `renameat2(RENAME_NOREPLACE)`; where the file system answers `EINVAL`, `ENOSYS` or
    /// `EOPNOTSUPP` (NFS, SMB, some FUSE file systems), `link()` + `unlink()` from then on.
    #[default]
    Auto,
    /// Always `link()` + `unlink()`, as on NFS. For tests of that path, and for file systems
    /// whose `renameat2` misbehaves.
    LinkUnlink,
}

/// What a no-replace move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Moved {
    /// The file now has the new name and not the old one.
    Done,
    /// The new name is taken; nothing was changed.
    Exists,
    /// The old name is gone (someone else moved it first).
    SourceGone,
}

/// Moves files between the spool folders, never over an existing name.
#[derive(Debug, Default)]
pub(crate) struct Mover {
    method: ClaimMethod,
    /// Set once `renameat2(RENAME_NOREPLACE)` answered that it is not supported.
    noreplace_unsupported: AtomicBool,
}

impl Mover {
    pub fn new(method: ClaimMethod) -> Mover {
        Mover {
            method,
            noreplace_unsupported: AtomicBool::new(false),
        }
    }

    /// Whether moves use `link()` + `unlink()`.
    pub fn uses_link(&self) -> bool {
        self.method == ClaimMethod::LinkUnlink || self.noreplace_unsupported.load(Ordering::Relaxed)
    }

    /// Moves `from` to `to` (both in the spool, same file system) unless `to` exists.
    ///
    /// With `link()` + `unlink()` there is a moment (and, after a crash, a state) where both
    /// names refer to the file; [`super::Spool::recover`] resolves it. When the old name cannot
    /// be removed after the link, the link is undone and the error returned, so a file never
    /// stays under two names while the daemon runs.
    pub fn move_noreplace(&self, from: &Path, to: &Path) -> io::Result<Moved> {
        if !self.uses_link() {
            match rustix::fs::renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
                Ok(()) => return Ok(Moved::Done),
                Err(Errno::EXIST) => return Ok(Moved::Exists),
                Err(Errno::NOENT) => return gone_or(from, Errno::NOENT),
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                    if !self.noreplace_unsupported.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            folder = %to.parent().unwrap_or(Path::new(".")).display(),
                            "the file system does not support renameat2(RENAME_NOREPLACE); moving jobs with link() + unlink()"
                        );
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        match rustix::fs::linkat(CWD, from, CWD, to, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Ok(Moved::Exists),
            Err(Errno::NOENT) => return gone_or(from, Errno::NOENT),
            Err(e) => return Err(e.into()),
        }
        match rustix::fs::unlink(from) {
            // Gone already: a starting daemon resolved the two-names state for us.
            Ok(()) | Err(Errno::NOENT) => Ok(Moved::Done),
            Err(e) => {
                let undo = rustix::fs::unlink(to);
                tracing::error!(
                    from = %from.display(),
                    to = %to.display(),
                    error = %e,
                    undone = undo.is_ok(),
                    "linked the file but cannot remove its old name"
                );
                Err(io::Error::from(e))
            }
        }
    }
}

/// ENOENT from a move: the source is gone, or the target's folder is missing.
fn gone_or(from: &Path, e: Errno) -> io::Result<Moved> {
    match std::fs::symlink_metadata(from) {
        Err(m) if m.kind() == io::ErrorKind::NotFound => Ok(Moved::SourceGone),
        _ => Err(e.into()),
    }
}

/// The identity of a file: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// The identity of the file at `path` itself (links not followed), if it exists.
    pub fn at(path: &Path) -> Option<FileId> {
        std::fs::symlink_metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// Whether a whole-file lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// This open file holds the exclusive lock.
    Held,
    /// Another open file (another daemon, or another [`super::Spool`]) holds it.
    Busy,
    /// The file system has no working locks (NFS without a lock manager, some FUSE).
    Unsupported,
}

/// How [`open_nofollow`] and [`open_nofollow_read`] open: no link followed, no blocking.
const NOFOLLOW_FLAGS: OFlags = OFlags::NOFOLLOW
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Opens a file for reading only, without following a link in its last component or blocking
/// (FIFOs). Check that it is a regular file on the open file.
pub(crate) fn open_nofollow_read(path: &Path) -> io::Result<File> {
    Ok(File::from(rustix::fs::open(
        path,
        OFlags::RDONLY | NOFOLLOW_FLAGS,
        Mode::empty(),
    )?))
}

/// Opens a regular file without following links or blocking (FIFOs), for reading and, where
/// permitted, writing (NFS emulates `flock` with byte-range locks, which need a writable file).
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    let flags = NOFOLLOW_FLAGS;
    let fd = match rustix::fs::open(path, OFlags::RDWR | flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS | Errno::PERM | Errno::ROFS | Errno::TXTBSY) => {
            rustix::fs::open(path, OFlags::RDONLY | flags, Mode::empty())?
        }
        Err(e) => return Err(e.into()),
    };
    Ok(File::from(fd))
}

/// Tries to take the exclusive whole-file lock on `file` without waiting.
pub(crate) fn try_lock(file: &File) -> io::Result<Lock> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Lock::Held),
        Err(Errno::WOULDBLOCK) => Ok(Lock::Busy),
        Err(Errno::BADF | Errno::NOLCK | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
            Ok(Lock::Unsupported)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes `bytes` as `target` through a temporary file in the same folder (fsync, rename,
/// folder fsync). With `replace` false an existing `target` is left alone and
/// [`Moved::Exists`] returned. A temporary file removed under us (by a starting daemon's
/// cleanup) is written again.
pub(crate) fn write_file(
    target: &Path,
    bytes: &[u8],
    replace: bool,
    mover: &Mover,
) -> io::Result<Moved> {
    let name_err =
        |e: io::Error| io::Error::new(e.kind(), format!("writing {}: {e}", target.display()));
    for _ in 0..3 {
        let tmp = atomic::temp_path(target);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(name_err(e));
        }
        let moved = if replace {
            match std::fs::rename(&tmp, target) {
                Ok(()) => Ok(Moved::Done),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !tmp.exists() => {
                    Ok(Moved::SourceGone)
                }
                Err(e) => Err(e),
            }
        } else {
            mover.move_noreplace(&tmp, target)
        };
        match moved {
            Ok(Moved::SourceGone) => continue,
            Ok(m) => {
                if m == Moved::Exists {
                    let _ = std::fs::remove_file(&tmp);
                }
                sync_parent(target).map_err(name_err)?;
                return Ok(m);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(name_err(e));
            }
        }
    }
    Err(name_err(io::Error::other(
        "the temporary file was removed three times while being written",
    )))
}

/// fsyncs the folder holding `path`.
pub(crate) fn sync_parent(path: &Path) -> io::Result<()> {
    atomic::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// This host's name.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// This boot's id (changes at every reboot), when the kernel tells it.
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Whether a process with this id exists on this host.
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Seconds from `t` to now; 0 when `t` is in the future.
pub(crate) fn age(t: SystemTime) -> std::time::Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// RFC 3339 timestamps (UTC, whole seconds) for serde.
pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Formats a time as `2026-11-24T03:12:00Z`.
    pub fn format(t: SystemTime) -> String {
        humantime::format_rfc3339_seconds(t).to_string()
    }

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both_methods() -> [Mover; 2] {
        [
            Mover::new(ClaimMethod::Auto),
            Mover::new(ClaimMethod::LinkUnlink),
        ]
    }

    #[test]
    fn moves_never_replace_and_report_a_vanished_source() {
        for mover in both_methods() {
            let dir = tempfile::tempdir().unwrap();
            let (a, b, c) = (
                dir.path().join("a"),
                dir.path().join("b"),
                dir.path().join("c"),
            );
            std::fs::write(&a, "a").unwrap();
            std::fs::write(&b, "b").unwrap();
            assert_eq!(mover.move_noreplace(&a, &b).unwrap(), Moved::Exists);
            assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
            assert_eq!(std::fs::read_to_string(&a).unwrap(), "a");
            assert_eq!(mover.move_noreplace(&a, &c).unwrap(), Moved::Done);
            assert!(!a.exists());
            assert_eq!(std::fs::read_to_string(&c).unwrap(), "a");
            assert_eq!(mover.move_noreplace(&a, &c).unwrap(), Moved::SourceGone);
            let missing_folder = dir.path().join("nope").join("x");
            assert!(mover.move_noreplace(&c, &missing_folder).is_err());
        }
    }

    #[test]
    fn a_second_open_file_finds_the_lock_busy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("job.yaml");
        std::fs::write(&p, "x").unwrap();
        let first = open_nofollow(&p).unwrap();
        assert_eq!(try_lock(&first).unwrap(), Lock::Held);
        let second = open_nofollow(&p).unwrap();
        assert_eq!(try_lock(&second).unwrap(), Lock::Busy);
        drop(first);
        assert_eq!(try_lock(&second).unwrap(), Lock::Held);
    }

    #[test]
    fn open_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t");
        std::fs::write(&target, "x").unwrap();
        let link = dir.path().join("l.yaml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_nofollow(&link).is_err());
    }

    #[test]
    fn no_replace_writes_keep_the_first_file() {
        let mover = Mover::new(ClaimMethod::Auto);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        assert_eq!(write_file(&p, b"one", false, &mover).unwrap(), Moved::Done);
        assert_eq!(
            write_file(&p, b"two", false, &mover).unwrap(),
            Moved::Exists
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(write_file(&p, b"three", true, &mover).unwrap(), Moved::Done);
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
