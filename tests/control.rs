//! The agent's control socket with peer-credential checks: an unprivileged user
//! (nobody) can query but not free a port held by root, and can free its own.
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::process::CommandExt,
    process::{Command, Output, Stdio},
};

use portwatch_tests::{free_port, require_root, spawn_python, start_logged, ChildGuard};

fn as_nobody(socket: &str, args: &[&str]) -> Output {
    Command::new(portwatch_tests::bin())
        .args(args)
        .env("PORTWATCH_SOCKET", socket)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("portwatch as nobody")
}

#[test]
fn nobody_queries_but_frees_only_its_own_ports() {
    require_root();
    let (root_port, own_port) = (free_port(), free_port());
    let socket = format!("/tmp/portwatch-test-{}.sock", std::process::id());
    let ports = format!("{root_port},{own_port}");
    let (_agent, _log) = start_logged(
        &["agent", "--no-history", "--interval", "200ms", "--socket", &socket, "--socket-mode", "0666", "-p", &ports],
        "control socket ready",
    );

    let (root_server, _) = spawn_python(&format!(
        "import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {root_port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n"
    ));
    // A listener owned by nobody.
    let mut own = Command::new("python3")
        .args(["-u", "-c", &format!("import socket, time\ns = socket.socket(); s.bind(('127.0.0.1', {own_port})); s.listen()\nprint('READY', flush=True)\ntime.sleep(60)\n")])
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .expect("nobody's listener");
    let out = own.stdout.take().expect("stdout");
    let own = ChildGuard(own);
    assert!(std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok).any(|l| l.starts_with("READY")));

    // Query: nobody sees root's holder through the agent (alone, /proc hides it).
    let out = as_nobody(&socket, &["who", "--json", &root_port.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["holders"][0]["pid"], root_server.pid(), "{v:#}");

    // Free a root-held port: denied, with a clear error and the missing-privilege code.
    let out = as_nobody(&socket, &["free", "--force", "--grace", "1s", &root_port.to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("denied") && err.contains("uid 0"), "{err}");
    assert!(std::path::Path::new(&format!("/proc/{}", root_server.pid())).exists());

    // Free its own port: allowed, done by the agent.
    let out = as_nobody(&socket, &["free", "--force", "--grace", "1s", &own_port.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("freed"), "{text}");
    let mut own = own;
    let status = own.0.wait().expect("wait");
    assert!(!status.success(), "nobody's listener was terminated by the agent");
    let _ = std::fs::remove_file(&socket);
}
