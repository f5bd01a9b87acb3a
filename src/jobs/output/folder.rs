//! Folders under the output root, opened and written without following links: every folder below
//! the root is created with `mkdirat` and opened with `openat(O_NOFOLLOW | O_DIRECTORY)` on the
//! descriptor of the folder above it, and every file in them is read, written, renamed and
//! removed with the `*at` calls on the folder's descriptor. A symbolic link placed where a folder
//! or file of a job's output goes is never followed, so nothing is read or written outside the
//! output root through one. Only the root itself is opened by path: the operator configured it
//! (`output_dir`, or `sdspool render --output`), and it may be a link on purpose.
//!
//! Names given to a [`Folder`] are one path component each (no `/`, not `.` or `..`), except
//! where a method says it walks a relative path (`rejected/p000-c01-s101.png`), which it does one
//! no-follow step at a time.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::sys::atomic;

/// What is at a name in a folder, the name itself (a link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Nothing.
    Missing,
    /// A regular file of this many bytes.
    File { len: u64 },
    /// A folder.
    Folder,
    /// A symbolic link, FIFO, socket or device.
    Other,
}

/// An open folder below (or at) the output root.
#[derive(Debug)]
pub struct Folder {
    fd: OwnedFd,
    /// For messages, and to notice the folder being removed ([`Folder::is_gone`]).
    path: PathBuf,
}

/// Where a relative path led.
enum Walk<'a> {
    /// To this folder (`None`: the folder walked from) and the last component.
    Found(Option<Folder>, &'a str),
    /// A folder on the way is missing.
    Missing,
    /// Something on the way is a link or a file.
    NotAFolder,
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `EINVAL` for a name that is not one plain path component.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// The error of a call on `path`, naming it.
fn named(path: &Path, what: &str, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

impl Folder {
    /// Opens `path` (links followed: the configured output root, or a folder the user named),
    /// creating it and its parents when missing.
    pub fn open_root(path: &Path) -> io::Result<Folder> {
        std::fs::create_dir_all(path).map_err(|e| named(path, "creating", e))?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named(path, "opening", e))?;
        Ok(Folder {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The folder's path (for messages; never used to reach files).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this folder (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens the subfolder `name` without following a link: `None` when nothing has that name;
    /// an error (`NotADirectory`, or `ELOOP` for a link) when something else has it.
    pub fn open_dir(&self, name: &str) -> io::Result<Option<Folder>> {
        check_name(name)?;
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Folder {
                fd,
                path: self.join(name),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(named(&self.join(name), "opening", e)),
        }
    }

    /// Creates the subfolder `name` and opens it, when nothing has that name yet: `None` when
    /// something (a folder, a file, a link, even a dangling one) already does.
    pub fn create_new_dir(&self, name: &str) -> io::Result<Option<Folder>> {
        check_name(name)?;
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => {}
            Err(Errno::EXIST) => return Ok(None),
            Err(e) => return Err(named(&self.join(name), "creating", e)),
        }
        self.sync()?;
        // Opened without following: if the new folder was swapped for a link in between, this
        // fails rather than opening the link's target.
        self.open_dir(name)?
            .ok_or_else(|| named(&self.join(name), "opening", Errno::NOENT))
            .map(Some)
    }

    /// Takes the exclusive `flock` on this folder's own descriptor without waiting: `false` when
    /// another open of the folder (another job of this or another process) holds it. The lock
    /// lasts as long as this `Folder` (the kernel drops it with the descriptor, so a killed run
    /// leaves none). File systems without `flock` count as held.
    pub fn try_lock(&self) -> io::Result<bool> {
        use rustix::fs::FlockOperation;
        match rustix::fs::flock(&self.fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(true),
            Err(Errno::WOULDBLOCK) => Ok(false),
            Err(Errno::NOLCK | Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => Ok(true),
            Err(e) => Err(named(&self.path, "locking", e)),
        }
    }

    /// What is at `name` (one component), the name itself.
    pub fn entry(&self, name: &str) -> io::Result<Entry> {
        check_name(name)?;
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => Entry::File {
                    len: st.st_size as u64,
                },
                FileType::Directory => Entry::Folder,
                _ => Entry::Other,
            }),
            Err(Errno::NOENT) => Ok(Entry::Missing),
            Err(e) => Err(named(&self.join(name), "reading", e)),
        }
    }

    /// Splits `rel` (`a/b/name`) into its folder, opened step by step without following links,
    /// and its last component.
    fn walk<'a>(&self, rel: &'a str) -> io::Result<Walk<'a>> {
        let mut parts = rel.split('/');
        let last = parts.next_back().unwrap_or_default();
        let mut dir: Option<Folder> = None;
        for part in parts {
            check_name(part)?;
            let at = dir.as_ref().unwrap_or(self);
            match rustix::fs::openat(&at.fd, part, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    dir = Some(Folder {
                        fd,
                        path: at.join(part),
                    })
                }
                Err(Errno::NOENT) => return Ok(Walk::Missing),
                // A link (O_NOFOLLOW with O_DIRECTORY answers ENOTDIR or ELOOP) or a file.
                Err(Errno::NOTDIR | Errno::LOOP) => return Ok(Walk::NotAFolder),
                Err(e) => return Err(named(&at.join(part), "opening", e)),
            }
        }
        check_name(last)?;
        Ok(Walk::Found(dir, last))
    }

    /// What is at the relative path `rel` (walked without following links; a link on the way
    /// makes it [`Entry::Other`]).
    pub fn entry_at(&self, rel: &str) -> io::Result<Entry> {
        match self.walk(rel)? {
            Walk::Found(dir, last) => dir.as_ref().unwrap_or(self).entry(last),
            Walk::Missing => Ok(Entry::Missing),
            Walk::NotAFolder => Ok(Entry::Other),
        }
    }

    /// Reads the regular file at the relative path `rel` (walked without following links; a
    /// link, FIFO or device is refused).
    pub fn read_at(&self, rel: &str) -> io::Result<Vec<u8>> {
        use std::io::Read as _;
        let (dir, last) = match self.walk(rel)? {
            Walk::Found(dir, last) => (dir, last),
            Walk::Missing => return Err(named(&self.join(rel), "reading", Errno::NOENT)),
            Walk::NotAFolder => return Err(named(&self.join(rel), "reading", Errno::NOTDIR)),
        };
        let dir = dir.as_ref().unwrap_or(self);
        let fd = rustix::fs::openat(
            &dir.fd,
            last,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| named(&self.join(rel), "reading", e))?;
        let mut file = File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", self.join(rel).display()),
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| named(&self.join(rel), "reading", e))?;
        Ok(bytes)
    }

    /// Writes `bytes` as `name` atomically: a new temporary file in this folder (created
    /// exclusively, so never through a link), fsync, rename over `name` (a link there is
    /// replaced, not followed), fsync of the folder. The error names the file.
    pub fn write(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        check_name(name)?;
        let tmp = atomic::temp_name(name);
        let result = (|| -> io::Result<()> {
            let fd = rustix::fs::openat(
                &self.fd,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o666),
            )?;
            let mut f = File::from(fd);
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            self.sync()
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        result.map_err(|e| named(&self.join(name), "writing", e))
    }

    /// Renames `name` in this folder to `to_name` in `to` (which replaces a file there). Neither
    /// name is followed if it is a link.
    pub fn rename(&self, name: &str, to: &Folder, to_name: &str) -> io::Result<()> {
        check_name(name)?;
        check_name(to_name)?;
        rustix::fs::renameat(&self.fd, name, &to.fd, to_name)
            .map_err(|e| named(&self.join(name), "moving", e))
    }

    /// Removes the file (or link) `name`.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        check_name(name)?;
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| named(&self.join(name), "removing", e))
    }

    /// fsyncs the folder so that renames into it are durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(|e| named(&self.path, "syncing", e))
    }

    /// Whether the folder was removed (or replaced by something else) since it was opened.
    // `st_dev` and `st_ino` are u64 on some architectures and c_ulong on others.
    #[allow(clippy::unnecessary_cast)]
    pub fn is_gone(&self) -> bool {
        let Ok(st) = rustix::fs::fstat(&self.fd) else {
            return true;
        };
        if st.st_nlink == 0 {
            return true;
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) => m.dev() != st.st_dev as u64 || m.ino() != st.st_ino as u64,
            Err(_) => true,
        }
    }

    /// The names in the folder with what each is (links not followed).
    fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            names.push(name.to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Whether `name` is a leftover temporary file ([`atomic::is_leftover`]).
    fn is_leftover(&self, name: &str) -> bool {
        if !name.starts_with(atomic::TEMP_PREFIX) {
            return false;
        }
        let opened = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let Ok(fd) = opened else { return false };
        File::from(fd)
            .metadata()
            .is_ok_and(|m| m.is_file() && atomic::is_leftover(name, &m))
    }

    /// Removes the leftover temporary files ([`atomic::is_leftover`]) in this folder (not below
    /// it) and returns their paths.
    pub fn remove_leftovers(&self) -> io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for name in self.names()? {
            if self.is_leftover(&name) {
                match rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty()) {
                    Ok(()) => removed.push(self.join(&name)),
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(removed)
    }

    /// Whether the folder holds nothing but leftover temporary files, or nothing.
    pub fn only_leftovers(&self) -> io::Result<bool> {
        Ok(self.names()?.iter().all(|n| self.is_leftover(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_in_place_of_folders_and_files_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        let root = Folder::open_root(&tmp.path().join("root")).unwrap();
        symlink(&outside, root.join("job")).unwrap();
        symlink(tmp.path().join("nowhere"), root.join("dangling")).unwrap();

        assert!(root.create_new_dir("job").unwrap().is_none());
        assert!(root.create_new_dir("dangling").unwrap().is_none());
        assert!(root.open_dir("job").is_err());
        assert_eq!(root.entry("job").unwrap(), Entry::Other);
        assert_eq!(root.entry_at("job/secret").unwrap(), Entry::Other);
        assert!(root.read_at("job/secret").is_err());

        let dir = root.create_new_dir("real").unwrap().unwrap();
        symlink(outside.join("secret"), dir.join("a.png")).unwrap();
        assert_eq!(dir.entry("a.png").unwrap(), Entry::Other);
        assert!(dir.read_at("a.png").is_err());
        dir.write("a.png", b"image").unwrap();
        assert_eq!(dir.entry("a.png").unwrap(), Entry::File { len: 5 });
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
        assert_eq!(root.read_at("real/a.png").unwrap(), b"image");
        for bad in ["", ".", "..", "a/b"] {
            assert!(dir.write(bad, b"x").is_err(), "{bad:?}");
        }
        assert!(root.read_at("real/../job/secret").is_err());
    }

    #[test]
    fn a_removed_folder_is_noticed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Folder::open_root(tmp.path()).unwrap();
        let dir = root.create_new_dir("job").unwrap().unwrap();
        dir.write("a", b"x").unwrap();
        assert!(!dir.is_gone());
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(dir.is_gone());
        assert!(dir.write("b", b"x").is_err());
        let again = root.create_new_dir("job").unwrap().unwrap();
        assert!(dir.is_gone() && !again.is_gone());
    }

    #[test]
    fn leftovers_are_found_and_removed_through_the_descriptor() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Folder::open_root(tmp.path()).unwrap();
        let dir = root.create_new_dir("job").unwrap().unwrap();
        assert!(dir.only_leftovers().unwrap());
        // pid 0 is never a process: the writer is gone.
        let dead = format!("{}{}-0-3-a.png", atomic::TEMP_PREFIX, atomic::host_tag());
        std::fs::write(dir.join(&dead), b"x").unwrap();
        assert!(dir.only_leftovers().unwrap());
        symlink(
            "/",
            dir.join(&format!(
                "{}{}-0-4-b.png",
                atomic::TEMP_PREFIX,
                atomic::host_tag()
            )),
        )
        .unwrap();
        assert!(!dir.only_leftovers().unwrap(), "a link is not a leftover");
        assert_eq!(dir.remove_leftovers().unwrap(), vec![dir.join(&dead)]);
    }
}
