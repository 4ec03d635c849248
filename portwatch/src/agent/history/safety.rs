//! Where the history database may live. The agent runs as root; its database must
//! not be a way for another local user to make it write, truncate or read a file of
//! that user's choosing (a symlink or hard link planted where the database, its
//! `-wal` or its `-shm` will be), nor let a user swap the directory under it.
//!
//! The rule: no symbolic link anywhere on the path (SQLite's
//! `SQLITE_OPEN_NOFOLLOW` enforces the same when it opens); every directory on
//! the way owned by root or the agent's user and not writable by group or others
//! (an ancestor may be, when it is sticky, as `/tmp` is); the database's own
//! directory not writable by anyone else at all (SQLite creates `-wal` and `-shm`
//! beside the database); the database, when it exists, a regular file with one
//! link, owned by root or the agent's user.
use std::{
    fs::Metadata,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Mode of a database file the agent creates (its `-wal` and `-shm` get the same:
/// SQLite gives them the database file's mode).
pub const DB_MODE: u32 = 0o640;
/// Mode of directories the agent creates on the way to the database.
pub const DIR_MODE: u32 = 0o755;

/// What is wrong with a directory on the database's path, from its owner and mode;
/// `own_dir`: the database's own directory (where stickiness does not help: others
/// could still create `history.db-wal` there first).
pub fn dir_fault(owner: u32, mode: u32, me: u32, own_dir: bool) -> Option<String> {
    if owner != 0 && owner != me {
        return Some(format!("is owned by uid {owner}, not root"));
    }
    let sticky = mode & 0o1000 != 0;
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return None,
    };
    (own_dir || !sticky).then(|| format!("is writable by {writers} (mode {:04o})", mode & 0o7777))
}

/// What is wrong with an existing database file, from its metadata.
pub fn file_fault(is_file: bool, owner: u32, links: u64, me: u32) -> Option<String> {
    if !is_file {
        return Some("is not a regular file".into());
    }
    if owner != 0 && owner != me {
        return Some(format!("is owned by uid {owner}, not root"));
    }
    (links > 1).then(|| format!("has {links} hard links (another name for the same file)"))
}

fn lstat(p: &Path) -> std::io::Result<Option<Metadata>> {
    match std::fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first symbolic link on an absolute path (SQLite opens with
/// `SQLITE_OPEN_NOFOLLOW`, which refuses a path with one anywhere; this names it).
pub fn find_symlink(abs: &Path) -> Option<PathBuf> {
    let mut prefix = PathBuf::new();
    for c in abs.components() {
        prefix.push(c);
        if lstat(&prefix).ok().flatten()?.file_type().is_symlink() {
            return Some(prefix);
        }
    }
    None
}

/// Checks every existing directory from `/` to the database's own and the database
/// file itself; `Ok(false)` when some of the path does not exist yet.
fn check_existing(abs: &Path, me: u32) -> Result<bool, String> {
    let dir = abs.parent().unwrap_or(Path::new("/"));
    let mut prefix = PathBuf::new();
    for c in dir.components() {
        prefix.push(c);
        let m = match lstat(&prefix) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", prefix.display())),
        };
        if m.file_type().is_symlink() {
            return Err(format!("{} is a symbolic link; refusing to follow it (give the real path)", prefix.display()));
        }
        if !m.is_dir() {
            return Err(format!("{} is not a directory", prefix.display()));
        }
        if let Some(why) = dir_fault(m.uid(), m.mode(), me, prefix.as_path() == dir) {
            return Err(format!("directory {} {why}; refusing to keep the history there", prefix.display()));
        }
    }
    match lstat(abs) {
        Ok(None) => Ok(false),
        Ok(Some(m)) if m.file_type().is_symlink() => {
            Err(format!("{} is a symbolic link; refusing to follow it (give the real path)", abs.display()))
        }
        Ok(Some(m)) => match file_fault(m.is_file(), m.uid(), m.nlink(), me) {
            Some(why) => Err(format!("{} {why}; refusing to open it", abs.display())),
            None => Ok(true),
        },
        Err(e) => Err(format!("{}: {e}", abs.display())),
    }
}

/// Makes the database's path safe to open for writing: checks it, creates missing
/// directories (0755) and the database file (0640), and checks it again (a
/// directory someone else created meanwhile is caught then). Returns the absolute
/// path to give SQLite. Errors are one line.
pub fn prepare(path: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if abs.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if check_existing(&abs, me)? {
        return Ok(abs);
    }
    if let Some(dir) = abs.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| format!("creating directory {}: {e}", dir.display()))?;
    }
    // O_EXCL|O_NOFOLLOW: never through a link, never someone else's file.
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(DB_MODE).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(&abs)
    {
        // The umask may have taken bits off; the mode is exactly DB_MODE.
        Ok(f) => f.set_permissions(std::fs::Permissions::from_mode(DB_MODE)).map_err(|e| format!("chmod {}: {e}", abs.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {}: {e}", abs.display())),
    }
    if !check_existing(&abs, me)? {
        return Err(format!("{} disappeared while it was being created", abs.display()));
    }
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_and_file_rules() {
        let me = 1000;
        assert_eq!(dir_fault(0, 0o40755, me, true), None);
        assert_eq!(dir_fault(me, 0o40700, me, true), None);
        assert!(dir_fault(1001, 0o40755, me, false).unwrap().contains("uid 1001"));
        assert!(dir_fault(0, 0o40777, me, true).unwrap().contains("group and others"));
        assert!(dir_fault(0, 0o40775, me, true).unwrap().contains("its group"));
        // /tmp on the way is fine; as the database's own directory it is not.
        assert_eq!(dir_fault(0, 0o41777, me, false), None);
        assert!(dir_fault(0, 0o41777, me, true).unwrap().contains("mode 1777"));
        assert!(dir_fault(0, 0o40757, me, false).unwrap().contains("others"));
        assert_eq!(file_fault(true, 0, 1, me), None);
        assert!(file_fault(false, 0, 1, me).is_some());
        assert!(file_fault(true, 1001, 1, me).unwrap().contains("uid 1001"));
        assert!(file_fault(true, me, 2, me).unwrap().contains("hard links"));
    }

    #[test]
    fn prepares_paths_and_refuses_links_and_open_directories() {
        let dir = tempfile::tempdir().unwrap();
        // Created, with missing directories, 0640.
        let db = dir.path().join("a/b/h.db");
        assert_eq!(prepare(&db).unwrap(), db);
        assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o7777, DB_MODE);
        assert_eq!(std::fs::metadata(dir.path().join("a/b")).unwrap().mode() & 0o777, DIR_MODE);
        // Again: it exists and is fine.
        assert_eq!(prepare(&db).unwrap(), db);
        // A symlink as the database, or on the way to it.
        let target = dir.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(prepare(&link).unwrap_err().contains("symbolic link"));
        assert_eq!(find_symlink(&link), Some(link.clone()));
        assert_eq!(find_symlink(&db), None);
        std::os::unix::fs::symlink(dir.path().join("a"), dir.path().join("alink")).unwrap();
        let e = prepare(&dir.path().join("alink/b/h.db")).unwrap_err();
        assert!(e.contains("alink is a symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        // A hard link.
        std::fs::hard_link(&target, dir.path().join("hard.db")).unwrap();
        assert!(prepare(&dir.path().join("hard.db")).unwrap_err().contains("hard links"));
        // A directory others may write.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&open.join("h.db")).unwrap_err();
        assert!(e.contains("writable by group and others") && e.contains("refusing"), "{e}");
        assert!(!open.join("h.db").exists());
        // A regular file where a directory should be.
        let e = prepare(&target.join("h.db")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
        // A directory where the database should be.
        std::fs::create_dir_all(dir.path().join("d/sub")).unwrap();
        assert!(prepare(&dir.path().join("d/sub")).unwrap_err().contains("not a regular file"));
    }
}
