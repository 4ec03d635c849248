//! Which processes held each port at the last look: candidates for the next `who`,
//! which checks them in the kernel instead of visiting every task on the host
//! (see `holders::gather`). A hint is never an answer: an answer from candidates
//! stands only when the fds found account for every reference to each socket's
//! file, so a stale, wrong or planted hint costs a full pass, nothing else.
//!
//! Kept in one small root-only file on /run (tmpfs: gone at reboot), bounded in
//! ports, pids and bytes; written only when it changes.
use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
};

const PATH: &str = "/run/portwatch-holders";
/// Ports remembered (the most recently seen first), pids per port, file size.
const MAX_PORTS: usize = 256;
const MAX_PIDS: usize = 32;
const MAX_BYTES: u64 = 64 * 1024;

/// Port → pids, the most recently written first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints(Vec<(u16, Vec<i32>)>);

impl Hints {
    /// The pids remembered for `ports`, without repeats.
    pub fn pids_for(&self, ports: &[u16]) -> Vec<i32> {
        let mut out: Vec<i32> =
            self.0.iter().filter(|(p, _)| ports.contains(p)).flat_map(|(_, pids)| pids.iter().copied()).filter(|&p| p > 0).collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Puts `seen` (port → holder pids) first; other ports keep their order.
    /// Returns whether anything changed.
    pub fn update(&mut self, seen: &BTreeMap<u16, Vec<i32>>) -> bool {
        let before = self.clone();
        self.0.retain(|(p, _)| !seen.contains_key(p));
        let mut front: Vec<(u16, Vec<i32>)> = seen
            .iter()
            .map(|(&p, pids)| {
                let mut pids = pids.clone();
                pids.sort_unstable();
                pids.dedup();
                pids.truncate(MAX_PIDS);
                (p, pids)
            })
            .collect();
        front.append(&mut self.0);
        front.truncate(MAX_PORTS);
        self.0 = front;
        // Unchanged apart from order: not worth a write.
        let key = |h: &Hints| h.0.iter().cloned().collect::<BTreeMap<_, _>>();
        key(self) != key(&before)
    }

    /// `PORT PID PID...` lines; malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        let lines = text.lines().filter_map(|l| {
            let mut words = l.split_ascii_whitespace();
            let port: u16 = words.next()?.parse().ok().filter(|&p| p != 0)?;
            let pids: Vec<i32> = words.filter_map(|w| w.parse().ok()).filter(|&p| p > 0).take(MAX_PIDS).collect();
            Some((port, pids))
        });
        Self(lines.take(MAX_PORTS).collect())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (port, pids) in &self.0 {
            out.push_str(&port.to_string());
            for p in pids {
                out.push(' ');
                out.push_str(&p.to_string());
            }
            out.push('\n');
        }
        out
    }

    /// The hints on this host: empty when missing, unreadable, too big, or not a
    /// regular file of root's that only root may write.
    pub fn load() -> Self {
        Self::load_from(Path::new(PATH))
    }

    fn load_from(path: &Path) -> Self {
        let Ok(mut f) = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path) else {
            return Self::default();
        };
        let trusted = f.metadata().is_ok_and(|m| m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 && m.len() <= MAX_BYTES);
        let mut text = String::new();
        if !trusted || Read::by_ref(&mut f).take(MAX_BYTES).read_to_string(&mut text).is_err() {
            return Self::default();
        }
        Self::parse(&text)
    }

    /// Puts `seen` (port → holder pids) first in the hints on this host and writes
    /// them when that changes anything, under a lock (two `who`s at once keep both
    /// updates). Root only: anyone else's `who` never gets here. Errors are ignored:
    /// hints only save time.
    pub fn remember(seen: &BTreeMap<u16, Vec<i32>>) {
        let _ = Self::remember_at(Path::new(PATH), seen);
    }

    fn remember_at(path: &Path, seen: &BTreeMap<u16, Vec<i32>>) -> std::io::Result<()> {
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path.with_extension("lock"))?;
        let _locked = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))?;
        let mut hints = Self::load_from(path);
        if hints.update(seen) {
            hints.store_at(path)?;
        }
        Ok(())
    }

    fn store_at(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(&tmp)?;
        let written = f.write_all(self.render().as_bytes()).and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_render_and_bounds() {
        let h = Hints::parse("5050 10 11 12\n0 5\nx 1\n5051\n6000 -4 7 zz 8\n");
        assert_eq!(h, Hints(vec![(5050, vec![10, 11, 12]), (5051, vec![]), (6000, vec![7, 8])]));
        assert_eq!(Hints::parse(&h.render()), h);
        assert_eq!(h.pids_for(&[5050, 6000]), vec![7, 8, 10, 11, 12]);
        assert!(h.pids_for(&[1]).is_empty());
        let many: String = (1..=400).map(|p| format!("{p} {}\n", (1..100).map(|x| x.to_string()).collect::<Vec<_>>().join(" "))).collect();
        let h = Hints::parse(&many);
        assert_eq!(h.0.len(), MAX_PORTS);
        assert!(h.0.iter().all(|(_, pids)| pids.len() == MAX_PIDS));
    }

    #[test]
    fn update_puts_news_first_and_reports_change() {
        let mut h = Hints::parse("5050 10\n5051 20\n");
        assert!(!h.update(&BTreeMap::from([(5051, vec![20])])), "same content");
        assert!(h.update(&BTreeMap::from([(5050, vec![11, 10, 11])])));
        assert_eq!(h, Hints(vec![(5050, vec![10, 11]), (5051, vec![20])]));
        let all: BTreeMap<u16, Vec<i32>> = (1..=300).map(|p| (p, vec![1])).collect();
        h.update(&all);
        assert_eq!(h.0.len(), MAX_PORTS);
    }

    #[test]
    fn remembering_keeps_other_ports_and_writes_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hints");
        Hints::remember_at(&path, &BTreeMap::from([(5050, vec![10])])).unwrap();
        Hints::remember_at(&path, &BTreeMap::from([(5051, vec![20, 21])])).unwrap();
        if !nix::unistd::geteuid().is_root() {
            // Only root's file is read back (`untrusted_files_are_ignored`): each
            // update starts from nothing.
            assert_eq!(Hints::parse(&fs::read_to_string(&path).unwrap()), Hints(vec![(5051, vec![20, 21])]));
            return;
        }
        assert_eq!(Hints::load_from(&path), Hints(vec![(5051, vec![20, 21]), (5050, vec![10])]));
        let before = fs::metadata(&path).unwrap().ino();
        Hints::remember_at(&path, &BTreeMap::from([(5050, vec![10])])).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().ino(), before, "no change, no write");
    }

    #[test]
    fn untrusted_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hints");
        let h = Hints::parse("5050 10\n");
        h.store_at(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(Hints::load_from(&path), h);
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(Hints::load_from(&path), Hints::default(), "writable by others");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(Hints::load_from(&link), Hints::default(), "a symlink");
    }
}
