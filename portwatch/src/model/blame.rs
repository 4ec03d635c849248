//! Why a port is held at the start of a job, in one line: who holds it, which job
//! left it and how long ago, whether it is stopped, and its accept queue.
use serde::Serialize;

use super::{
    process::state_word,
    socket::{Proto, SockState},
};

/// One holder of a held port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Blame {
    pub port: u16,
    pub proto: Proto,
    pub state: SockState,
    pub pid: i32,
    pub comm: String,
    /// The process's state letter (R, S, T...).
    pub proc_state: char,
    /// The CI job that left it: from the agent's history, else the holder's
    /// environment.
    pub job: Option<String>,
    /// How long it has held the port (history), or the process's age.
    pub held_secs: Option<u64>,
    /// Where `held_secs` comes from.
    pub held_source: HeldSource,
    pub accept_queue: Option<u32>,
    pub backlog: Option<u32>,
}

/// Where a holder's time on the port comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldSource {
    /// The agent's history: it saw the socket bound, or found it.
    History,
    /// The holder's start (no history of the socket).
    Process,
}

/// `37 min ago`, `2 h 5 min ago`, `12 s ago`.
pub fn ago(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h {} min ago", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h ago", secs / 86_400, secs % 86_400 / 3600),
    }
}

impl Blame {
    /// `port 5050 held by gunicorn (pid 4711), left by job GITHUB_RUN_ID=123456
    /// GITHUB_JOB=smoke 37 min ago, state T (stopped), accept queue 3/128`;
    /// `comm` and `job` as given (the caller escapes them for a terminal).
    pub fn line(&self, comm: &str, job: Option<&str>) -> String {
        let mut s = format!("port {} held by {comm} (pid {})", self.port, self.pid);
        match (job, self.held_secs) {
            (Some(j), Some(t)) => s.push_str(&format!(", left by job {j} {}", ago(t))),
            (Some(j), None) => s.push_str(&format!(", left by job {j}")),
            (None, Some(t)) if self.held_source == HeldSource::History => s.push_str(&format!(", holding it since {}", ago(t))),
            (None, Some(t)) => s.push_str(&format!(", started {}", ago(t))),
            (None, None) => {}
        }
        s.push_str(&format!(", state {} ({})", self.proc_state, state_word(self.proc_state)));
        if self.state == SockState::Listen {
            if let (Some(q), Some(b)) = (self.accept_queue, self.backlog) {
                s.push_str(&format!(", accept queue {q}/{b}"));
            }
        } else {
            s.push_str(&format!(", {} {}", self.proto.name(), self.state.name()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Blame {
        Blame {
            port: 5050,
            proto: Proto::Tcp,
            state: SockState::Listen,
            pid: 4711,
            comm: "gunicorn".into(),
            proc_state: 'T',
            job: Some("GITHUB_RUN_ID=123456 GITHUB_JOB=smoke".into()),
            held_secs: Some(37 * 60 + 5),
            held_source: HeldSource::History,
            accept_queue: Some(3),
            backlog: Some(128),
        }
    }

    #[test]
    fn the_line_says_who_which_job_how_long_and_the_queue() {
        let x = b();
        assert_eq!(
            x.line(&x.comm, x.job.as_deref()),
            "port 5050 held by gunicorn (pid 4711), left by job GITHUB_RUN_ID=123456 GITHUB_JOB=smoke 37 min ago, state T (stopped), accept queue 3/128"
        );
        let y = Blame { job: None, held_source: HeldSource::Process, state: SockState::Bound, ..b() };
        assert_eq!(y.line("gunicorn", None), "port 5050 held by gunicorn (pid 4711), started 37 min ago, state T (stopped), tcp bound");
        assert_eq!(ago(7300), "2 h 1 min ago");
        assert_eq!(ago(5), "5 s ago");
    }
}
