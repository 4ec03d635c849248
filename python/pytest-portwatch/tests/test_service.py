"""portwatch_service: start, ready, stop; a held port; a service that never gets ready."""

import json
import os
import subprocess
import sys
import urllib.request


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check(portwatch, port):
    return subprocess.run([portwatch, "check", "-q", str(port)]).returncode


def test_a_service_is_ready_then_stopped(portwatch_service, portwatch_bin, free_port):
    svc = portwatch_service(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(free_port)],
        ports=free_port,
        health=f"http://127.0.0.1:{free_port}/",
    )
    assert svc.url == f"http://127.0.0.1:{free_port}"
    # portwatch's readiness report, as JSON.
    assert svc.report["ready"] is True and "error" not in svc.report
    assert svc.report["supervisor_pid"] == svc.supervisor_pid and alive(svc.supervisor_pid)
    assert svc.elapsed_ms >= 0 and svc.log.exists() and svc.pid_file.exists()
    with urllib.request.urlopen(svc.url + "/", timeout=5) as resp:
        assert resp.status == 200
    assert check(portwatch_bin, free_port) == 1
    svc.stop()
    assert not alive(svc.supervisor_pid)
    assert check(portwatch_bin, free_port) == 0
    assert "GET / HTTP" in svc.log_text()


HOLDER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
print("READY", flush=True)
time.sleep(300)
"""


def hold(port):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(port)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "READY"
    return p


INNER = """
import sys

def test_service(portwatch_service):
    svc = portwatch_service(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{port}"],
        ports={port}, free={free},
    )
    assert svc.report["ready"]
"""


def test_a_held_port_fails_naming_the_holder_unless_free(pytester, free_port):
    holder = hold(free_port)
    try:
        pytester.makepyfile(test_inner=INNER.format(port=free_port, free=False))
        result = pytester.runpytest_subprocess()
        result.assert_outcomes(failed=1)
        out = result.stdout.str()
        assert f"port {free_port}: held by pid {holder.pid} (python3" in out, out
        assert "free=True" in out
        assert holder.poll() is None, "free=False never signals the holder"

        pytester.makepyfile(test_inner=INNER.format(port=free_port, free=True))
        result = pytester.runpytest_subprocess()
        result.assert_outcomes(passed=1)
        assert holder.wait(timeout=30) is not None, "free=True took the port back"
    finally:
        holder.kill()
        holder.wait()


def test_a_service_that_is_never_ready_fails_with_its_output(pytester, free_port):
    pytester.makepyfile(
        test_inner=f"""
import sys

def test_service(portwatch_service):
    portwatch_service(
        [sys.executable, "-c", "import sys; print('boom: no config', file=sys.stderr); sys.exit(3)"],
        ports={free_port}, timeout=10,
    )
"""
    )
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "not ready: the command exited with status 3 before it was ready" in out, out
    assert "boom: no config" in out, out


def test_the_session_factory_shares_one_service(pytester, free_port):
    pytester.makepyfile(
        test_inner=f"""
import sys, pytest

@pytest.fixture(scope="session")
def svc(portwatch_session_service):
    return portwatch_session_service(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "{free_port}"], ports={free_port}
    )

def test_one(svc):
    pytest.pid = svc.supervisor_pid

def test_two(svc):
    assert svc.supervisor_pid == pytest.pid
"""
    )
    result = pytester.runpytest_subprocess("--portwatch-leaks")
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert "left these behind" not in result.stdout.str()
