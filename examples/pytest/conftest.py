"""Session fixture: one gunicorn service for the whole test session, run under portwatch.

What replaces the old `port_manager` / `wait_for_services.sh` / `ps aux | grep gunicorn` dance:

* before:   `portwatch free --force PORT`    frees the port from whatever holds it
                                             (master and forked workers, stopped ones too)
* start:    `portwatch run --free --port PORT --health URL -- gunicorn ...`
            prints `portwatch: ready after Xs` on stderr once the port accepts and the
            health URL answers 2xx, or `portwatch: not ready after ...` and exits 1
* teardown: SIGTERM to `portwatch run`; it forwards it to gunicorn and then ends every
            process started under it that is still alive (it is a child subreaper)
* after:    `portwatch check PORT` must exit 0: nothing was leaked on the port

Settings (environment):
    PORTWATCH   path of the portwatch binary (default: `portwatch` on PATH)
    APP_PORT    port of the service (default 5050)
"""

import collections
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 30  # seconds, passed to `portwatch run --timeout`
GRACE = 5  # seconds, `portwatch run --grace` (its default): SIGTERM -> SIGKILL for leftovers


def _portwatch():
    exe = os.environ.get("PORTWATCH") or shutil.which("portwatch")
    if not exe or not os.access(exe, os.X_OK):
        pytest.exit(
            "portwatch not found: set PORTWATCH=/path/to/portwatch or put it on PATH",
            returncode=2,
        )
    return exe


def _port():
    raw = os.environ.get("APP_PORT", "5050")
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        pytest.exit(f"APP_PORT={raw!r} is not a TCP port", returncode=2)
    return port


class _StderrReader(threading.Thread):
    """Drains `portwatch run`'s stderr (its own lines and gunicorn's log) for the
    whole session, so the pipe never fills up and blocks gunicorn, and notices
    the readiness verdict."""

    def __init__(self, stream):
        super().__init__(name="portwatch-run-stderr", daemon=True)
        self.stream = stream
        self.lines = collections.deque(maxlen=500)
        self.verdict = None  # "ready" or "not ready"
        self.decided = threading.Event()

    def run(self):
        for line in self.stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            if self.verdict is None:
                # Test "not ready" first: it also contains "ready after".
                if line.startswith("portwatch: not ready"):
                    self.verdict = "not ready"
                    self.decided.set()
                elif line.startswith("portwatch: ready after"):
                    self.verdict = "ready"
                    self.decided.set()
        self.decided.set()  # EOF: `run` (and everything under it) is gone

    def text(self):
        return "\n".join(self.lines)


@pytest.fixture(scope="session")
def base_url():
    portwatch = _portwatch()
    port = _port()

    # 1. Get the port back from anything left over (a crashed earlier run, a
    #    stray dev server). Exit 0: free now; 1: still held; 6: refused
    #    (protected process); 4: not allowed to signal another user's process.
    freed = subprocess.run(
        [portwatch, "free", "--force", str(port)],
        capture_output=True,
        text=True,
    )
    print(f"$ portwatch free --force {port}  (exit {freed.returncode})\n{freed.stdout}{freed.stderr}")
    if freed.returncode != 0:
        pytest.fail(
            f"portwatch free --force {port} exited {freed.returncode}:\n{freed.stdout}{freed.stderr}",
            pytrace=False,
        )

    # 2. Start the service under `portwatch run`.
    health = f"http://127.0.0.1:{port}/api/health"
    cmd = [
        portwatch, "run",
        "--free",
        "--port", str(port),
        "--health", health,
        "--timeout", f"{READY_TIMEOUT}s",
        "--grace", f"{GRACE}s",
        "--",
        # The interpreter running pytest, so gunicorn sees the same Flask.
        sys.executable, "-m", "gunicorn",
        "--bind", f"127.0.0.1:{port}",
        "--workers", "2",
        "app:app",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = _StderrReader(proc.stderr)
    reader.start()

    # 3. Wait for the verdict. `run` itself gives up after READY_TIMEOUT and
    #    then stops what it started (up to GRACE per process); the extra margin
    #    only guards against `run` hanging.
    reader.decided.wait(READY_TIMEOUT + 4 * GRACE + 10)
    if reader.verdict != "ready":
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=4 * GRACE + 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        reader.join(timeout=5)
        why = reader.verdict or "exited before it was ready"
        pytest.fail(
            f"service on port {port}: {why} (portwatch run exit {code})\n"
            f"$ {' '.join(cmd)}\n--- stderr ---\n{reader.text()}",
            pytrace=False,
        )

    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        # 4. Stop it: `run` forwards SIGTERM to gunicorn, waits for it, then
        #    TERM/grace/KILLs anything still alive under it, and exits with
        #    gunicorn's status.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            # gunicorn's own graceful timeout is 30 s, then `run`'s grace.
            code = proc.wait(timeout=30 + 4 * GRACE + 10)
        except subprocess.TimeoutExpired:
            proc.kill()  # `run` hung: a bug in portwatch, report it
            code = proc.wait()
            pytest.fail(
                f"portwatch run did not exit after SIGTERM; killed it\n{reader.text()}",
                pytrace=False,
            )
        reader.join(timeout=5)

        # 5. Nothing may be left on the port.
        check = subprocess.run(
            [portwatch, "check", str(port)], capture_output=True, text=True
        )
        assert check.returncode == 0, (
            f"port {port} still held after teardown (portwatch run exit {code}):\n"
            f"{check.stdout}{check.stderr}\n--- run stderr ---\n{reader.text()}"
        )
        # gunicorn exits 0 on SIGTERM, and `run` exits with its status.
        assert code == 0, f"portwatch run exited {code}\n--- stderr ---\n{reader.text()}"
