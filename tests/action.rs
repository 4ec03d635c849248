//! The GitHub Action (action.yml) runs action/install.sh, start.sh and summary.sh;
//! here they run as a job's steps would, with the runner's variables set by hand,
//! against a real agent: an earlier job's leftover is freed at the start, a stopped
//! listener is reaped during the job, and a listener the job leaks is named, with
//! job ids, in the summary; with `lease: true` other cgroups cannot bind the job's
//! ports until the summary step.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use portwatch_tests::{alive, bin, free_port, portwatch, require_root, ChildGuard, PidGuard, TestCgroup};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_path_buf()
}

/// A job's environment: the runner's variables and nothing of the caller's CI.
struct Job {
    temp: tempfile::TempDir,
    run_id: String,
}

impl Job {
    fn new() -> Self {
        // One id per job: the tests run side by side, and each job's summary must
        // not count another job's processes as its own.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { temp: tempfile::tempdir().expect("tempdir"), run_id: format!("pwtest-{}-{n}", std::process::id()) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    fn state(&self, name: &str) -> PathBuf {
        self.path("portwatch-action").join(name)
    }

    fn env(&self, cmd: &mut Command) {
        for var in ["RUNNER_TRACKING_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_WORKFLOW", "CI_JOB_ID", "BUILD_ID", "PORTWATCH_STATE"] {
            cmd.env_remove(var);
        }
        cmd.env("RUNNER_TEMP", self.temp.path())
            .env("GITHUB_STEP_SUMMARY", self.path("step_summary.md"))
            .env("GITHUB_PATH", self.path("github_path"))
            .env("GITHUB_OUTPUT", self.path("github_output"))
            .env("GITHUB_RUN_ID", &self.run_id)
            .env("GITHUB_JOB", "smoke");
    }

    /// Runs action/SCRIPT with these extra variables.
    fn step(&self, script: &str, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("action").join(script));
        self.env(&mut cmd);
        cmd.envs(vars.iter().copied());
        cmd.output().expect("bash")
    }

    /// Runs action/SCRIPT inside cgroup `cg` (a job whose processes share a cgroup,
    /// as a runner's do).
    fn step_in(&self, cg: &TestCgroup, script: &str, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("action").join(script));
        self.env(&mut cmd);
        cmd.envs(vars.iter().copied());
        cg.enter(&mut cmd);
        cmd.output().expect("bash")
    }

    /// A listener on `port` started by this job (its environment), printing READY.
    fn listener(&self, port: u16, then: &str) -> ChildGuard {
        let script = format!(
            "import os, signal, socket, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port})); s.listen()\nprint('READY', flush=True)\n{then}\ntime.sleep(120)\n"
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", &script]).stdout(Stdio::piped());
        self.env(&mut cmd);
        ready(cmd)
    }
}

fn ready(mut cmd: Command) -> ChildGuard {
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let line = BufReader::new(stdout).lines().map_while(Result::ok).next();
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).expect("no READY line");
    assert_eq!(line.as_deref(), Some("READY"));
    guard
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bundle as `cargo xtask dist` lays it out, holding the binary under test.
fn bundle(dir: &Path) -> PathBuf {
    let top = dir.join("portwatch-0.0.0-test");
    std::fs::create_dir_all(top.join("bin")).expect("mkdir");
    std::fs::copy(bin(), top.join("bin/portwatch")).expect("copy");
    let archive = dir.join("portwatch-0.0.0-test.tar.gz");
    let ok = Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(dir).arg("portwatch-0.0.0-test").status().expect("tar");
    assert!(ok.success());
    let sum = Command::new("sha256sum").arg(&archive).output().expect("sha256sum");
    std::fs::write(dir.join("portwatch-0.0.0-test.tar.gz.sha256"), &sum.stdout).expect("write");
    archive
}

#[test]
fn install_verifies_the_bundle_checksum() {
    let job = Job::new();
    let archive = bundle(&job.path(""));
    let a = archive.to_str().expect("utf8");
    let bad = job.step("install.sh", &[("PORTWATCH_BUNDLE", a), ("PORTWATCH_BUNDLE_SHA256", &"0".repeat(64))]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("::error title=portwatch::") && text(&bad).contains("expected 0000"), "{}", text(&bad));
    // The .sha256 next to it is used when no checksum is given.
    let good = job.step("install.sh", &[("PORTWATCH_BUNDLE", a)]);
    assert_eq!(good.status.code(), Some(0), "{}", text(&good));
    assert!(text(&good).contains("sha256 verified"), "{}", text(&good));
    let installed = std::fs::read_to_string(job.state("portwatch")).expect("state: portwatch").trim().to_string();
    assert!(installed.ends_with("/bundle/portwatch-0.0.0-test/bin/portwatch"), "{installed}");
    let v = Command::new(&installed).arg("--version").output().expect("installed portwatch");
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("portwatch "));
    let path = std::fs::read_to_string(job.path("github_path")).expect("GITHUB_PATH");
    assert_eq!(path.trim(), Path::new(&installed).parent().expect("dir").to_str().expect("utf8"));
    let output = std::fs::read_to_string(job.path("github_output")).expect("GITHUB_OUTPUT");
    assert_eq!(output.trim(), format!("path={installed}"));
}

#[test]
fn summary_names_what_held_freed_reaped_and_leaked() {
    require_root();
    let job = Job::new();
    let (a, b) = (free_port(), free_port());
    let (pa, pb) = (a.to_string(), b.to_string());

    // An earlier job left a listener on A.
    let earlier = {
        let script = format!(
            "import socket, time\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {a})); s.listen()\nprint('READY', flush=True)\ntime.sleep(120)\n"
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", &script]).stdout(Stdio::piped());
        job.env(&mut cmd);
        cmd.env("GITHUB_RUN_ID", "4700").env("GITHUB_JOB", "earlier");
        ready(cmd)
    };

    let archive = bundle(&job.path(""));
    let out = job.step("install.sh", &[("PORTWATCH_BUNDLE", archive.to_str().expect("utf8"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ports = format!("{a},{b}");
    let out = job
        .step("start.sh", &[("PORTWATCH_PORTS", &ports), ("PORTWATCH_REAP", "true"), ("PORTWATCH_STALL", "1s"), ("PORTWATCH_GRACE", "1s")]);
    let agent: i32 = std::fs::read_to_string(job.state("agent.pid")).unwrap_or_default().trim().parse().unwrap_or(0);
    let _agent = PidGuard(agent);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(agent > 0 && alive(agent), "the agent runs: {}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "::warning title=portwatch::port {a} held by python3 (pid {}), left by job GITHUB_RUN_ID=4700",
            earlier.pid()
        )),
        "the start step names who is in the way: {}",
        text(&out)
    );
    wait_until("the earlier job's listener is freed", Duration::from_secs(10), || !alive(earlier.pid()));

    // The job: a listener on A that stops (the agent reaps it), and one on B it leaks.
    let stopped = job.listener(a, "os.kill(os.getpid(), signal.SIGSTOP)");
    let leaked = job.listener(b, "");
    wait_until("the agent reaps the stopped listener", Duration::from_secs(15), || {
        portwatch(&["check", "-q", &pa]).status.code() == Some(0)
    });

    let out = job.step("summary.sh", &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!alive(agent), "the summary stops the agent");
    let summary = std::fs::read_to_string(job.path("step_summary.md")).expect("GITHUB_STEP_SUMMARY");
    assert!(summary.starts_with(&format!("## portwatch: ports {a}, {b}")), "{summary}");
    let this_job = format!("`GITHUB_RUN_ID={} GITHUB_JOB=smoke`", job.run_id);
    // What held the ports during the job, with the job id the agent recorded.
    let held = summary.split("### Freed and reaped").next().unwrap_or("");
    for (port, pid) in [(a, stopped.pid()), (b, leaked.pid())] {
        let row = held.lines().find(|l| l.starts_with(&format!("| {port}/tcp | {pid} |"))).unwrap_or_else(|| panic!("{summary}"));
        assert!(row.contains(&this_job) && row.contains("bind, listen"), "{row}");
    }
    // Freed at the start, with the earlier job's id; reaped by the agent.
    assert!(
        summary.contains(&format!("port {a}: freed at the start: pid {}", earlier.pid()))
            && summary.contains("SIGTERM; job `GITHUB_RUN_ID=4700 GITHUB_JOB=earlier`"),
        "{summary}"
    );
    assert!(summary.contains(&format!("port {a}: agent **reaped**")), "{summary}");
    // Blamed at the start, in the job's log and the summary: the earlier job's
    // listener, its job, its state and queue.
    let blame = format!("port {a} held by python3 (pid {}), left by job GITHUB_RUN_ID=4700 GITHUB_JOB=earlier ", earlier.pid());
    let in_way = summary.split("### In the way at the start").nth(1).and_then(|s| s.split("###").next()).unwrap_or("");
    assert!(in_way.contains(&blame) && in_way.contains("accept queue 0/"), "{summary}");
    assert!(summary.contains(&format!("agent **signal** pid {} (`python3`) `SIGTERM delivered", stopped.pid())), "{summary}");
    // Left behind: the leaked listener, what it holds, its job.
    let left = summary.split("### Left behind").nth(1).unwrap_or("");
    let row = left.lines().find(|l| l.starts_with(&format!("| {} |", leaked.pid()))).unwrap_or_else(|| panic!("{summary}"));
    assert!(row.contains(&format!("`tcp 127.0.0.1:{b} listen`")) && row.contains(&this_job), "{row}");
    assert!(left.contains(&format!("portwatch free --force {a} {b}")), "{summary}");
    assert!(!left.contains(&format!("| {} |", stopped.pid())), "the reaped process is not left behind: {summary}");
    assert!(all.contains("::warning title=portwatch::the job left processes or listeners behind"), "{all}");

    // fail-on-leak fails the step.
    let out = job.step("summary.sh", &[("PORTWATCH_FAIL_ON_LEAK", "true")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    drop(leaked);
    wait_until("the leaked listener is gone", Duration::from_secs(5), || portwatch(&["check", "-q", &pb]).status.code() == Some(0));
    let out = job.step("summary.sh", &[("PORTWATCH_FAIL_ON_LEAK", "true")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Nothing: no process of this job is left, and the ports are free."), "{}", text(&out));
}

/// action.yml runs scripts that exist, with inputs it declares, through variables
/// the scripts read.
#[test]
fn action_yml_matches_its_scripts() {
    use std::os::unix::fs::PermissionsExt;
    let yml = std::fs::read_to_string(repo().join("action.yml")).expect("action.yml");
    let section =
        |from: &str, to: &str| -> String { yml.split(from).nth(1).and_then(|s| s.split(to).next()).unwrap_or_default().to_string() };
    let declared: Vec<String> = section("\ninputs:\n", "\noutputs:\n")
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_string())
        .collect();
    assert!(declared.contains(&"ports".to_string()) && declared.contains(&"fail-on-leak".to_string()), "{declared:?}");
    for used in yml.split("inputs.").skip(1) {
        let name: String = used.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_').collect();
        assert!(declared.contains(&name), "inputs.{name} is used but not declared");
    }
    let scripts: String = ["common.sh", "install.sh", "start.sh", "summary.sh", "summary.py"]
        .iter()
        .map(|f| std::fs::read_to_string(repo().join("action").join(f)).expect("script"))
        .collect();
    for run in yml.split("$GITHUB_ACTION_PATH/action/").skip(1) {
        let script: String = run.chars().take_while(|c| *c != '"').collect();
        let mode = std::fs::metadata(repo().join("action").join(&script)).expect(&script).permissions().mode();
        assert!(mode & 0o111 != 0, "action/{script} is not executable");
    }
    for var in yml.split_whitespace().filter(|w| w.starts_with("PORTWATCH_") && w.ends_with(':')) {
        let var = var.trim_end_matches(':');
        assert!(scripts.contains(&format!("${{{var}")), "{var} is set by action.yml but no script reads it");
    }
}

/// `lease: true`: from the start step to the summary step, a bind to the job's port
/// from another cgroup fails with EADDRINUSE (the job's own processes bind as
/// usual), and the summary lists who was kept off.
#[test]
fn the_lease_input_keeps_other_cgroups_off_the_jobs_ports() {
    require_root();
    let job = Job::new();
    let port = free_port();
    let p = port.to_string();
    let cg = TestCgroup::new("action-lease");

    let archive = bundle(&job.path(""));
    let out = job.step("install.sh", &[("PORTWATCH_BUNDLE", archive.to_str().expect("utf8"))]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = job.step_in(&cg, "start.sh", &[("PORTWATCH_PORTS", &p), ("PORTWATCH_LEASE", "true")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let holder: i32 = std::fs::read_to_string(job.state("lease.pid")).unwrap_or_default().trim().parse().unwrap_or(0);
    let agent: i32 = std::fs::read_to_string(job.state("agent.pid")).unwrap_or_default().trim().parse().unwrap_or(0);
    let (_h, _a) = (PidGuard(holder), PidGuard(agent));
    assert!(holder > 0 && alive(holder), "{}", text(&out));
    assert!(text(&out).contains(&format!("port {port} leased to {}", cg.0.display())), "{}", text(&out));

    // This test process is outside the job's cgroup: refused. The job binds.
    let refused = std::net::TcpListener::bind(("127.0.0.1", port)).map(drop).map_err(|e| e.raw_os_error());
    assert_eq!(refused, Err(Some(98)));
    {
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", &format!("import socket; s = socket.socket(); s.bind(('127.0.0.1', {port})); print('READY', flush=True)")])
            .stdout(Stdio::piped());
        cg.enter(&mut cmd);
        drop(ready(cmd));
    }

    let out = job.step_in(&cg, "summary.sh", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!alive(holder), "the summary ends the lease");
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(), "the port is everyone's again");
    let summary = std::fs::read_to_string(job.path("step_summary.md")).expect("GITHUB_STEP_SUMMARY");
    let kept = summary.split("### Kept off the ports by the lease").nth(1).and_then(|s| s.split("###").next()).unwrap_or("");
    assert!(kept.contains(&format!("refused pid {} (", std::process::id())) && kept.contains(&format!(":{port}: EADDRINUSE")), "{summary}");
}
