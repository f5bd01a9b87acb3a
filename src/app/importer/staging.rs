//! The staging folder `.NAME.import-PID` an import converts into, beside the model folders: made
//! at the start, removed at the end whatever happened, removed too when SIGINT or SIGTERM stops
//! the import (the conversion's process group is killed first, so nothing writes into it any
//! more), and — for the ones a killed import (SIGKILL, a crash, a power cut) left behind —
//! removed by the next import when their PID is no longer alive.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::ImportError;

/// The process group of the running conversion (0: none), killed when a signal stops the import.
static CONVERSION_GROUP: AtomicI32 = AtomicI32::new(0);
/// Set when a signal stops the import: the signal thread exits the process.
static STOPPING: AtomicBool = AtomicBool::new(false);
/// The staging folder of the running import, removed when a signal stops it.
static STAGING: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The staging folder's name for an import of `name` by process `pid`.
pub fn folder_name(name: &str, pid: u32) -> String {
    format!(".{name}.import-{pid}")
}

/// The PID in a staging folder's name (`.NAME.import-PID`), if it is one.
pub fn staging_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (_, pid) = rest.rsplit_once(".import-")?;
    pid.parse().ok()
}

/// Removes the staging folders in `dir` whose import process is gone; returns what it removed.
pub fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(staging_pid) else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir
            && !crate::sys::host::pid_alive(pid)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed.push(entry.path());
        }
    }
    removed
}

/// The staging folder of this import: created now, removed when dropped or when SIGINT/SIGTERM
/// stops the process (see [`watch_signals`]).
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn create(path: PathBuf) -> Result<Self, ImportError> {
        std::fs::create_dir_all(path.join("tmp")).map_err(|source| ImportError::Io {
            path: path.clone(),
            source,
        })?;
        *STAGING.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        *STAGING.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Records the running conversion's process group (its own, `process_group(0)` at spawn), or
/// none (`None`) once it ended.
pub fn set_conversion_group(pid: Option<u32>) {
    let id = pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    CONVERSION_GROUP.store(id, Ordering::SeqCst);
}

/// Starts a thread that, on SIGINT or SIGTERM, kills the conversion's process group, removes the
/// staging folder and exits with 128 + the signal's number (130, 143), as a shell reports it.
/// Once per process: a second call finds the thread already watching.
pub fn watch_signals() -> Result<(), ImportError> {
    static WATCHING: Mutex<bool> = Mutex::new(false);
    let mut watching = WATCHING.lock().unwrap_or_else(|e| e.into_inner());
    if !*watching {
        start_watching()?;
        *watching = true;
    }
    Ok(())
}

fn start_watching() -> Result<(), ImportError> {
    use tokio::signal::unix::{SignalKind, signal};
    let io = |source| ImportError::Io {
        path: PathBuf::from("(signal handlers)"),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    // installed here, before the conversion starts, so that no signal finds the default action
    let (mut int, mut term) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(io)?;
    std::thread::spawn(move || {
        let code = runtime.block_on(async {
            tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            }
        });
        stop(code);
    });
    Ok(())
}

/// When a signal is stopping the import, waits for the signal thread to exit the process (the
/// conversion it killed is no failure to report); returns at once otherwise. The main thread
/// also calls it before each file it copies into the staging folder, so that it writes nothing
/// there once the folder is being removed.
pub fn wait_if_stopping() {
    while STOPPING.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Removes `path` until it stays gone: a file operation of the main thread that was under way
/// when the signal came can re-create part of it (`create_dir_all`); the main thread starts no
/// new one once [`STOPPING`] is set ([`wait_if_stopping`]). Gives up after 5 seconds.
fn remove_settled(path: &Path) {
    for _ in 0..100 {
        let _ = std::fs::remove_dir_all(path);
        std::thread::sleep(std::time::Duration::from_millis(50));
        if !path.exists() {
            return;
        }
    }
}

fn stop(code: i32) -> ! {
    STOPPING.store(true, Ordering::SeqCst);
    let group = CONVERSION_GROUP.load(Ordering::SeqCst);
    if group > 0
        && let Some(pid) = rustix::process::Pid::from_raw(group)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let staging = STAGING.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(path) = staging {
        remove_settled(&path);
        eprintln!(
            "sdspool: import stopped by {}; removed {}",
            if code == 130 { "SIGINT" } else { "SIGTERM" },
            path.display()
        );
    }
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_carry_the_pid() {
        assert_eq!(staging_pid(&folder_name("my.model-1", 4242)), Some(4242));
        assert_eq!(staging_pid("my.model-1"), None);
        assert_eq!(staging_pid(".x.import-abc"), None);
        assert_eq!(staging_pid("x.import-12"), None);
    }

    #[test]
    fn only_folders_of_dead_imports_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let alive = dir.path().join(folder_name("a", std::process::id()));
        // PIDs above the kernel's limit (4194304 at most) are never alive
        let dead = dir.path().join(folder_name("b", 4_194_305));
        let model = dir.path().join("b");
        for d in [&alive, &dead, &model] {
            std::fs::create_dir_all(d.join("unet")).unwrap();
        }
        assert_eq!(remove_stale(dir.path()), vec![dead.clone()]);
        assert!(alive.is_dir() && model.is_dir() && !dead.exists());
    }
}
