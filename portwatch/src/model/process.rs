//! Processes: what portwatch shows and decides about a process, and the credentials
//! `kill(2)` judges by.
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Shared text: a storm of events from one process shares one copy of its details.
pub type Text = Arc<str>;

/// A process as `who`, `free` and the history show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    /// The owner of `/proc/PID` (normally the effective uid).
    pub uid: u32,
    pub user: String,
    pub comm: String,
    pub cmdline: Text,
    /// R, S, D, T, t, Z, ...
    pub state: char,
    /// Seconds since the epoch.
    pub start_time: Option<u64>,
    pub age_secs: Option<u64>,
    pub cgroup: Text,
    pub container: Option<String>,
    /// A kernel thread (PF_KTHREAD in `/proc/PID/stat`), whatever its name says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kernel_thread: bool,
    /// Start time in clock ticks since boot: with the pid, the process's identity.
    #[serde(skip)]
    pub start_ticks: u64,
}

impl ProcInfo {
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }

    /// `pid 4242 gunicorn (T stopped)`: who, in a message.
    pub fn brief(&self) -> String {
        format!("pid {} {} ({} {})", self.pid, self.comm, self.state, state_word(self.state))
    }
}

/// What a `/proc/PID/stat` state letter means.
pub fn state_word(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "uninterruptible",
        'T' => "stopped",
        't' => "traced",
        'Z' => "zombie",
        'X' => "dead",
        'I' => "idle",
        _ => "unknown",
    }
}

/// A process holding a socket through one fd (in JSON: the process's fields and
/// `fd`, side by side).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(flatten)]
    pub proc: ProcInfo,
    pub fd: i32,
}

/// A process's user ids, as `kill(2)` judges a signal by them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub ruid: u32,
    pub euid: u32,
    pub suid: u32,
}

impl Creds {
    /// Parses the `Uid:` line of `/proc/PID/status` (real, effective, saved, fs).
    pub fn parse_status(status: &str) -> Option<Self> {
        let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        let mut ids = line.split_whitespace().map(str::parse::<u32>);
        Some(Self { ruid: ids.next()?.ok()?, euid: ids.next()?.ok()?, suid: ids.next()?.ok()? })
    }
}

/// Whether a sender with `sender` credentials may signal a process with `target`
/// credentials, by `kill(2)`'s rule for unprivileged senders: the sender's real or
/// effective uid equals the target's real or saved uid. (Root may signal anyone;
/// the caller checks that first.)
pub fn may_signal(sender: Creds, target: Creds) -> bool {
    [sender.ruid, sender.euid].iter().any(|s| *s == target.ruid || *s == target.suid)
}

/// Environment variables that name the CI job a process belongs to, in the order
/// they are shown: what each runner sets in its jobs' environment (GitHub Actions,
/// GitLab CI, Jenkins, Buildkite).
pub const JOB_VARS: &[&str] = &[
    // GitHub Actions
    "GITHUB_RUN_ID",
    "GITHUB_JOB",
    // GitLab CI
    "CI_JOB_ID",
    "CI_JOB_NAME",
    "CI_PIPELINE_ID",
    // Jenkins
    "BUILD_TAG",
    "BUILD_ID",
    "BUILD_NUMBER",
    "JOB_NAME",
    // Buildkite
    "BUILDKITE_JOB_ID",
    "BUILDKITE_LABEL",
];

/// The CI job identity in an environment block (NUL-separated `KEY=value`).
pub fn job_from_environ(env: &[u8]) -> Option<String> {
    let mut found: Vec<&str> = env
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter(|kv| JOB_VARS.iter().any(|k| kv.strip_prefix(k).is_some_and(|rest| rest.starts_with('='))))
        .collect();
    found.sort_by_key(|kv| JOB_VARS.iter().position(|k| kv.split('=').next() == Some(k)).unwrap_or(usize::MAX));
    (!found.is_empty()).then(|| found.join(" "))
}

/// A process with what the history keeps about it: its parent chain and CI job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcDetails {
    pub proc: ProcInfo,
    /// `812 python3 < 377 bash < 1 init`.
    pub ancestry: Text,
    pub job: Option<Text>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_as_kill_judges_them() {
        let st = "Name:\tx\nUid:\t0\t65534\t0\t65534\nGid:\t0\t0\t0\t0\n";
        let target = Creds::parse_status(st).unwrap();
        assert_eq!(target, Creds { ruid: 0, euid: 65534, suid: 0 });
        let nobody = Creds { ruid: 65534, euid: 65534, suid: 65534 };
        // Effective uid nobody, but real and saved uid 0: nobody's kill gets EPERM.
        assert!(!may_signal(nobody, target));
        assert!(may_signal(nobody, nobody));
        // A setuid-nobody process started by uid 1000 (real 1000): 1000 may signal it.
        let setuid = Creds { ruid: 1000, euid: 65534, suid: 65534 };
        assert!(may_signal(Creds { ruid: 1000, euid: 1000, suid: 1000 }, setuid));
        assert!(Creds::parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn job_identity() {
        let env = b"PATH=/bin\0GITHUB_JOB=test\0GITHUB_RUN_ID=4711\0HOME=/root\0";
        assert_eq!(job_from_environ(env).as_deref(), Some("GITHUB_RUN_ID=4711 GITHUB_JOB=test"));
        assert_eq!(job_from_environ(b"GITHUB_RUN_IDX=1\0"), None);
        let gitlab = b"CI_JOB_NAME=unit\0CI_JOB_ID=99\0CI_PIPELINE_ID=7\0";
        assert_eq!(job_from_environ(gitlab).as_deref(), Some("CI_JOB_ID=99 CI_JOB_NAME=unit CI_PIPELINE_ID=7"));
        let jenkins = b"JOB_NAME=app/main\0BUILD_TAG=jenkins-app-main-12\0";
        assert_eq!(job_from_environ(jenkins).as_deref(), Some("BUILD_TAG=jenkins-app-main-12 JOB_NAME=app/main"));
        let bk = b"BUILDKITE_LABEL=:rust: test\0BUILDKITE_JOB_ID=0190-ab\0";
        assert_eq!(job_from_environ(bk).as_deref(), Some("BUILDKITE_JOB_ID=0190-ab BUILDKITE_LABEL=:rust: test"));
        assert_eq!(job_from_environ(b"BUILD_ID=7\0CI_JOB_ID=3\0").as_deref(), Some("CI_JOB_ID=3 BUILD_ID=7"));
    }
}
