//! Files appear whole or not at all: write to a temporary name in the same folder, fsync, rename,
//! then fsync the folder so the rename itself survives a crash.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Prefix of temporary files; a folder scan may remove leftovers with it after a crash.
pub const TEMP_PREFIX: &str = ".sdspool-tmp-";

/// The temporary name used while `target` is written:
/// `.sdspool-tmp-<host tag>-<pid>i<instance>-<n>-<name>`. The host tag (a hash of the host name)
/// lets a daemon on one machine of a shared spool tell its own leftovers from another machine's
/// files in progress, whose process ids mean nothing here; the instance (random per process)
/// tells this process's files from those of an earlier process that had the same id (a
/// container restarted in a new PID namespace is pid 1 again).
pub fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(temp_name(&name))
}

/// The temporary name used while the file `name` is written (see [`temp_path`]).
pub fn temp_name(name: &str) -> String {
    format!(
        "{TEMP_PREFIX}{}-{}i{}-{}-{name}",
        host_tag(),
        std::process::id(),
        instance(),
        next_counter()
    )
}

/// This host's tag in temporary names: 8 hex digits of a hash of the host name.
pub fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| host_tag_of(&crate::sys::host::hostname()))
}

/// The tag of host `name` in temporary names.
pub fn host_tag_of(name: &str) -> String {
    let h = crate::sys::hash::fnv1a64(name.bytes());
    format!("{:08x}", h >> 32)
}

/// This process's instance in temporary names: 8 hex digits, the same for the whole process.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let h = crate::sys::hash::fnv1a64(format!("{nanos}-{}", std::process::id()).into_bytes());
        format!("{:08x}", h >> 32)
    })
}

/// Who wrote a temporary file, from its name: host tag, process id, and the process's instance
/// (names written before instances were added have none).
pub fn temp_writer(name: &str) -> Option<(&str, u32, Option<&str>)> {
    let mut parts = name.strip_prefix(TEMP_PREFIX)?.splitn(3, '-');
    let host = parts.next()?;
    let field = parts.next()?;
    let (pid, instance) = match field.split_once('i') {
        Some((pid, instance)) => (pid, Some(instance)),
        None => (field, None),
    };
    let pid = pid.parse().ok()?;
    (host.len() == 8 && host.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some((host, pid, instance))
}

fn next_counter() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Writes `bytes` to `target` atomically. The error names the file.
pub fn write(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temp_path(target);
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, target)?;
        sync_dir(folder_of(target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", target.display())))
}

/// The folder `target` is in: `.` for a bare file name (whose `parent()` is the empty path,
/// which cannot be opened to sync).
fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writers of other hosts this process knows to be gone (a spool daemon took their jobs over
/// when their leases expired): their temporary files are leftovers, whatever their age.
static GONE: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// Records that process `pid` of host `host` is gone, so [`is_leftover`] takes its temporary
/// files for leftovers. This host's own processes are judged by their ids already.
pub fn note_gone_writer(host: &str, pid: u32) {
    let tag = host_tag_of(host);
    if tag == host_tag() {
        return;
    }
    let mut gone = GONE.lock().unwrap_or_else(|e| e.into_inner());
    if !gone.contains(&(tag.clone(), pid)) {
        if gone.len() >= 1024 {
            gone.remove(0);
        }
        gone.push((tag, pid));
    }
}

fn known_gone(host: &str, pid: u32) -> bool {
    GONE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|(h, p)| h == host && *p == pid)
}

/// A temporary file this old is a leftover whatever process wrote it.
pub const STALE_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether `name` is a temporary file whose writer is gone: any writer, of any host, when the
/// file is older than [`STALE_AGE`]; else a process of this host that no longer exists (killed
/// during a write), also one that had this process's id (another instance), or a process of
/// another host known to be gone ([`note_gone_writer`]). This process's recent temporaries are
/// not, and neither are another host's recent ones otherwise (its process ids cannot be checked
/// from here).
pub fn is_leftover(name: &str, meta: &fs::Metadata) -> bool {
    if !name.starts_with(TEMP_PREFIX) {
        return false;
    }
    let old = meta
        .modified()
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age >= STALE_AGE);
    if old {
        return true;
    }
    match temp_writer(name) {
        Some((host, pid, writer)) if host == host_tag() => {
            if pid == std::process::id() {
                // This process's, or an earlier process's that had the same id.
                writer.is_some_and(|w| w != instance())
            } else {
                !crate::sys::host::pid_alive(pid)
            }
        }
        Some((host, pid, _)) => known_gone(host, pid),
        _ => false,
    }
}

/// Removes the leftover temporary files ([`is_leftover`]) in `dir` (not below it) and returns
/// their paths. A folder that does not exist has none.
pub fn remove_leftovers(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() && is_leftover(&name, &meta) {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed.push(entry.path()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

/// Whether `dir` holds nothing but leftover temporary files ([`is_leftover`]), or nothing.
pub fn only_leftovers(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let leftover = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && is_leftover(&name, &m));
        if !leftover {
            return Ok(false);
        }
    }
    Ok(true)
}

/// fsyncs a folder so that renames into it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether a failed write says the storage cannot take files now: the disk is full, the quota
/// used up, the file system read-only, or the folder not writable for this user (ENOSPC,
/// EDQUOT, EROFS, EACCES, EPERM). Not the fault of what was written, so writing again later
/// can work. The one place this rule lives: job runs and the daemon's filing both ask here.
pub fn is_storage_unavailable(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::QuotaExceeded | K::ReadOnlyFilesystem | K::PermissionDenied
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_this_hosts_dead_writers_or_old_files() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |name: &str| {
            let p = dir.path().join(name);
            fs::write(&p, b"x").unwrap();
            fs::metadata(&p).unwrap()
        };
        let mine = temp_path(&dir.path().join("a.png"));
        let mine = mine.file_name().unwrap().to_str().unwrap().to_string();
        assert!(!is_leftover(&mine, &meta(&mine)), "this process's own file");
        let dead = format!("{TEMP_PREFIX}{}-4194304-0-a.png", host_tag());
        assert!(
            is_leftover(&dead, &meta(&dead)),
            "a dead process of this host"
        );
        let other_tag = if host_tag() == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        let other = format!("{TEMP_PREFIX}{other_tag}-4194304-0-a.png");
        assert!(
            !is_leftover(&other, &meta(&other)),
            "another host's recent file"
        );
        assert!(!is_leftover("a.png", &meta("a.png")));
    }

    #[test]
    fn an_earlier_process_with_this_pid_left_its_files_over() {
        // A container restarted in a new PID namespace is pid 1 again, under the same host name.
        let dir = tempfile::tempdir().unwrap();
        let meta = |name: &str| {
            let p = dir.path().join(name);
            fs::write(&p, b"x").unwrap();
            fs::metadata(&p).unwrap()
        };
        let (tag, me) = (host_tag(), std::process::id());
        let other = if instance() == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        let earlier = format!("{TEMP_PREFIX}{tag}-{me}i{other}-3-a.png");
        assert!(is_leftover(&earlier, &meta(&earlier)));
        let mine = format!("{TEMP_PREFIX}{tag}-{me}i{}-3-b.png", instance());
        assert!(!is_leftover(&mine, &meta(&mine)));
        // Names from before instances: this pid's are taken to be this process's.
        let old = format!("{TEMP_PREFIX}{tag}-{me}-3-c.png");
        assert!(!is_leftover(&old, &meta(&old)));
        assert_eq!(temp_writer(&earlier), Some((tag, me, Some(other))));
        assert_eq!(temp_writer(&old), Some((tag, me, None)));
    }

    #[test]
    fn a_gone_writer_of_another_host_left_its_files_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        fs::write(&p, b"x").unwrap();
        let meta = fs::metadata(&p).unwrap();
        let host = "a-host-that-died";
        let name = format!("{TEMP_PREFIX}{}-77i0badc0de-1-a.png", host_tag_of(host));
        assert!(
            !is_leftover(&name, &meta),
            "another host's file in progress"
        );
        note_gone_writer(host, 77);
        assert!(is_leftover(&name, &meta));
        let other_pid = format!("{TEMP_PREFIX}{}-78-1-a.png", host_tag_of(host));
        assert!(!is_leftover(&other_pid, &meta));
    }

    #[test]
    fn a_bare_file_name_is_synced_in_the_current_folder() {
        assert_eq!(folder_of(Path::new("config.yaml")), Path::new("."));
        assert_eq!(folder_of(Path::new("a/b.yaml")), Path::new("a"));
        assert_eq!(folder_of(Path::new("/b.yaml")), Path::new("/"));
        sync_dir(folder_of(Path::new("config.yaml"))).unwrap();
    }

    #[test]
    fn writes_and_replaces_without_leaving_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("a.json");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn leftovers_of_dead_writers_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // pid 0 is never a process: the writer is gone.
        let dead = dir
            .path()
            .join(format!("{TEMP_PREFIX}{}-0-3-a.png", host_tag()));
        let mine = temp_path(&dir.path().join("b.png"));
        let other = dir.path().join("c.png");
        for p in [&dead, &mine, &other] {
            fs::write(p, b"x").unwrap();
        }
        assert!(!only_leftovers(dir.path()).unwrap());
        let removed = remove_leftovers(dir.path()).unwrap();
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists() && mine.exists() && other.exists());
        fs::remove_file(&other).unwrap();
        fs::remove_file(&mine).unwrap();
        fs::write(&dead, b"x").unwrap();
        assert!(only_leftovers(dir.path()).unwrap());
        assert!(
            remove_leftovers(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_failed_write_names_the_file_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing-folder").join("a.json");
        let err = write(&target, b"x").unwrap_err();
        assert!(err.to_string().contains("missing-folder/a.json"), "{err}");
    }
}
