"""--portwatch-leaks: a session that leaves processes or listeners behind fails, naming them."""

import os
import signal
import subprocess

LEAKY = """
import socket, subprocess, sys, time

def wait_listening(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("never listened")

def test_leaks_a_server():
    p = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    open("{pidfile}", "a").write(f"{{p.pid}}\\n")
    wait_listening({port})

def test_leaks_a_daemon():
    # Double fork: the sleep is nobody's child in this session any more.
    subprocess.run(["sh", "-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! >> {pidfile}"], check=True)
"""


def kill_all(pidfile):
    if os.path.exists(pidfile):
        for line in open(pidfile):
            try:
                os.kill(int(line), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def test_leaked_listener_and_daemon_fail_the_session(pytester, free_port):
    pidfile = str(pytester.path / "leaked.pids")
    pytester.makepyfile(test_inner=LEAKY.format(port=free_port, pidfile=pidfile))
    try:
        result = pytester.runpytest_subprocess("--portwatch-leaks")
        # Every test passed; the session fails for what they left.
        result.assert_outcomes(passed=2)
        assert result.ret == 1
        out = result.stdout.str()
        server, daemon = [int(x) for x in open(pidfile).read().split()]
        assert "portwatch: the tests left these behind" in out, out
        assert f"process {server} (python3" in out and f"listening on tcp 127.0.0.1:{free_port}" in out, out
        assert f"process {daemon} (sleep" in out and "still running: sleep 300" in out, out
        # portwatch names the holder too, and says how to free the port.
        assert f"$ portwatch who {free_port}" in out and f"portwatch free --force {free_port}" in out, out
        assert "2 leak(s)" in out
    finally:
        kill_all(pidfile)


def test_a_socket_left_open_in_pytest_itself(pytester, free_port):
    pytester.makepyfile(
        test_inner=f"""
import socket
KEEP = []

def test_opens_and_forgets():
    s = socket.socket(); s.bind(("127.0.0.1", {free_port})); s.listen()
    KEEP.append(s)
"""
    )
    result = pytester.runpytest_subprocess("--portwatch-leaks")
    assert result.ret == 1
    result.stdout.fnmatch_lines([f"pytest itself (pid *) still listening on tcp 127.0.0.1:{free_port}*"])


def test_without_the_option_nothing_is_checked(pytester, free_port):
    pidfile = str(pytester.path / "leaked.pids")
    pytester.makepyfile(test_inner=LEAKY.format(port=free_port, pidfile=pidfile))
    try:
        result = pytester.runpytest_subprocess()
        assert result.ret == 0
        assert "left these behind" not in result.stdout.str()
    finally:
        kill_all(pidfile)


def test_the_ini_option_turns_it_on(pytester):
    pidfile = str(pytester.path / "leaked.pids")
    pytester.makeini("[pytest]\nportwatch_leaks = true\n")
    pytester.makepyfile(
        test_inner=f"""
import subprocess
def test_leaks():
    p = subprocess.Popen(["sleep", "60"], start_new_session=True)
    open({pidfile!r}, "w").write(str(p.pid))
"""
    )
    try:
        result = pytester.runpytest_subprocess()
        assert result.ret == 1
        result.stdout.fnmatch_lines(["process * (sleep, parent *) still running: sleep 60"])
    finally:
        kill_all(pidfile)
