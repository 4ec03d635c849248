"""pytest-portwatch: services under `portwatch run`, and a leak check.

Fixtures
    portwatch_service            factory: start a service for one test
    portwatch_session_service    factory: start a service for the whole session
    portwatch_bin                the portwatch binary's path

Options
    --portwatch PATH     the binary (else ini `portwatch_bin`, $PORTWATCH, `portwatch` on PATH)
    --portwatch-leaks    fail the session when tests leave processes or listening sockets
                         behind (ini: `portwatch_leaks = true`)

A service is started with `portwatch run --detach-ready --json`: portwatch frees its
ports first (`free=True`) or the fixture fails naming the holder (`free=False`),
starts the command under a supervisor, and answers with a JSON readiness report once
every port accepts (the application accepted, not just the kernel queued) and every
health URL answers 2xx. At teardown `portwatch run --stop` ends the service and
everything it started, and the ports must be free again.
"""

import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import pytest

#: Set in the session's environment with --portwatch-leaks; every process the tests
#: start inherits it, which is how the leak check recognises them (double-forked
#: daemons included).
SESSION_ENV = "PORTWATCH_PYTEST_SESSION"


class PortwatchError(Exception):
    """portwatch could not do what a fixture asked (not found, bad arguments, ...)."""


# --------------------------------------------------------------------------- options


def pytest_addoption(parser):
    group = parser.getgroup("portwatch", "services under portwatch, leak check")
    group.addoption(
        "--portwatch",
        dest="portwatch_bin",
        metavar="PATH",
        default=None,
        help="the portwatch binary (default: ini portwatch_bin, $PORTWATCH, portwatch on PATH)",
    )
    group.addoption(
        "--portwatch-leaks",
        dest="portwatch_leaks",
        action="store_true",
        default=None,
        help="fail the session when tests leave processes or listening sockets behind, naming them",
    )
    parser.addini("portwatch_bin", "the portwatch binary", default="")
    parser.addini("portwatch_leaks", "as --portwatch-leaks", type="bool", default=False)
    parser.addini(
        "portwatch_leaks_grace",
        "seconds leftover processes get to exit before they count as leaked (default 2)",
        default="2",
    )


def find_portwatch(config) -> str:
    """The binary: --portwatch, ini portwatch_bin, $PORTWATCH, then PATH."""
    for candidate in (
        config.getoption("portwatch_bin"),
        config.getini("portwatch_bin"),
        os.environ.get("PORTWATCH"),
    ):
        if candidate:
            path = shutil.which(candidate) or candidate
            if os.access(path, os.X_OK) and os.path.isfile(path):
                return os.path.abspath(path)
            raise PortwatchError(f"portwatch binary {candidate!r} is not an executable file")
    found = shutil.which("portwatch")
    if not found:
        raise PortwatchError(
            "portwatch not found: put it on PATH, set PORTWATCH=/path/to/portwatch or pass --portwatch PATH"
        )
    return found


# --------------------------------------------------------------------------- services


@dataclass
class Service:
    """A service running under a portwatch supervisor."""

    name: str
    command: List[str]
    ports: List[int]
    health: List[str]
    #: http://HOST:PORT of the first health URL, else http://127.0.0.1:FIRST_PORT.
    url: Optional[str]
    supervisor_pid: int
    pid_file: Path
    log: Path
    elapsed_ms: int
    #: portwatch's readiness report, as it printed it.
    report: Dict = field(repr=False)
    _portwatch: str = field(repr=False, default="")
    _grace: float = field(repr=False, default=5.0)
    _stopped: bool = field(repr=False, default=False)

    @property
    def port(self) -> Optional[int]:
        return self.ports[0] if self.ports else None

    def log_text(self, tail: int = 200) -> str:
        """The last `tail` lines of the service's output."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-tail:])

    def stop(self) -> None:
        """Ends the service and everything it started (`portwatch run --stop`), then
        checks its ports are free. Raises PortwatchError when either fails."""
        if self._stopped:
            return
        self._stopped = True
        argv = [self._portwatch, "run", "--stop", str(self.pid_file), "--grace", f"{self._grace:g}s"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=4 * self._grace + 60)
        if out.returncode != 0:
            raise PortwatchError(
                f"service {self.name}: `{shlex.join(argv)}` exited {out.returncode}: {out.stderr.strip()}\n"
                f"--- log ---\n{self.log_text()}"
            )
        held = _held(self._portwatch, self.ports)
        if held:
            raise PortwatchError(f"service {self.name} stopped, but its ports are still held:\n" + "\n".join(held))


def _held(portwatch: str, ports: Sequence[int]) -> List[str]:
    """`port P: held by pid N (comm, tcp listen)` for each held port (portwatch check)."""
    if not ports:
        return []
    out = subprocess.run(
        [portwatch, "check", "--json", *map(str, ports)], capture_output=True, text=True, timeout=60
    )
    if out.returncode not in (0, 1):
        raise PortwatchError(f"portwatch check {' '.join(map(str, ports))} exited {out.returncode}: {out.stderr.strip()}")
    lines = []
    for status in json.loads(out.stdout):
        if status.get("free"):
            continue
        holders = ", ".join(
            f"pid {h['pid']} ({h.get('comm')}, {h.get('proto')} {h.get('state')}): {_cmdline(h['pid'])}"
            for h in status.get("holders", [])
        )
        lines.append(f"port {status['port']}: held by {holders or 'a socket no process could be found for'}")
    return lines


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return shlex.join(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")) or "?"


def _as_list(value, kind) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [kind(value)]
    return [kind(v) for v in value]


class ServiceFactory:
    """Starts services with `portwatch run --detach-ready --json`; stops them at the
    end of the fixture's scope."""

    def __init__(self, portwatch: str, workdir: Path):
        self.portwatch = portwatch
        self.workdir = workdir
        self.services: List[Service] = []

    def __call__(
        self,
        command: Union[str, Sequence[str]],
        ports: Union[int, Iterable[int], None] = None,
        health: Union[str, Iterable[str], None] = None,
        *,
        free: bool = False,
        timeout: float = 30,
        grace: float = 5,
        cwd: Union[str, Path, None] = None,
        env: Optional[Dict[str, str]] = None,
        name: Optional[str] = None,
    ) -> Service:
        """Starts `command` and returns once it is ready.

        ports    port(s) that must accept connections (by the application)
        health   URL(s) that must answer 2xx
        free     True: take held ports back first (SIGTERM, then SIGKILL after
                 `grace`, as `portwatch free --force`); False: fail, naming the holder
        timeout  seconds to become ready
        grace    seconds between SIGTERM and SIGKILL when stopping
        cwd, env the command's folder, and variables added to the environment
        """
        argv_cmd = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        if not argv_cmd:
            raise PortwatchError("portwatch_service: empty command")
        ports_l = _as_list(ports, int)
        health_l = _as_list(health, str)
        name = name or f"{Path(argv_cmd[0]).name}-{len(self.services) + 1}"
        if not free:
            held = _held(self.portwatch, ports_l)
            if held:
                pytest.fail(
                    f"service {name}: its port is taken (pass free=True to take it back):\n" + "\n".join(held),
                    pytrace=False,
                )
        tag = f"{name}-{uuid.uuid4().hex[:8]}"
        pid_file = self.workdir / f"{tag}.pid"
        log = self.workdir / f"{tag}.log"
        argv = [
            self.portwatch, "run", "--detach-ready", "--json",
            "--pid-file", str(pid_file), "--log", str(log),
            "--timeout", f"{timeout:g}s", "--grace", f"{grace:g}s",
        ]
        for p in ports_l:
            argv += ["--port", str(p)]
        for url in health_l:
            argv += ["--health", url]
        if free:
            argv.append("--free")
        argv += ["--", *argv_cmd]
        full_env = dict(os.environ)
        full_env.update(env or {})
        try:
            out = subprocess.run(
                argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout + 4 * grace + 60
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"service {name}: `portwatch run` did not answer\n$ {shlex.join(argv)}", pytrace=False)
        try:
            report = json.loads(out.stdout)
        except ValueError:
            # Not started at all: bad arguments (2), privileges (4), refused to free (6)...
            pytest.fail(
                f"service {name}: portwatch run exited {out.returncode}: {out.stderr.strip()}\n$ {shlex.join(argv)}",
                pytrace=False,
            )
        svc = Service(
            name=name,
            command=argv_cmd,
            ports=ports_l,
            health=health_l,
            url=_base_url(health_l, ports_l),
            supervisor_pid=int(report.get("supervisor_pid", 0)),
            pid_file=Path(report.get("pid_file", pid_file)),
            log=Path(report.get("log", log)),
            elapsed_ms=int(report.get("elapsed_ms", 0)),
            report=report,
            _portwatch=self.portwatch,
            _grace=grace,
        )
        if not report.get("ready"):
            svc._stopped = True  # the supervisor has already ended what it started
            pytest.fail(
                f"service {name} not ready: {report.get('error')}\n$ {shlex.join(argv_cmd)}\n"
                f"--- output ({svc.log}) ---\n{svc.log_text()}",
                pytrace=False,
            )
        self.services.append(svc)
        return svc

    def stop_all(self) -> None:
        errors = []
        for svc in reversed(self.services):
            try:
                svc.stop()
            except (PortwatchError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
        self.services.clear()
        if errors:
            pytest.fail("\n".join(errors), pytrace=False)


def _base_url(health: List[str], ports: List[int]) -> Optional[str]:
    if health:
        from urllib.parse import urlsplit

        u = urlsplit(health[0])
        return f"{u.scheme}://{u.netloc}"
    if ports:
        return f"http://127.0.0.1:{ports[0]}"
    return None


@pytest.fixture(scope="session")
def portwatch_bin(pytestconfig) -> str:
    """The portwatch binary's path."""
    try:
        return find_portwatch(pytestconfig)
    except PortwatchError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def portwatch_service(portwatch_bin, tmp_path_factory):
    """Factory: `portwatch_service(command, ports, health, free=False, ...)` starts a
    service ready for this test and stops it (and all it started) afterwards."""
    factory = ServiceFactory(portwatch_bin, tmp_path_factory.mktemp("portwatch"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def portwatch_session_service(portwatch_bin, tmp_path_factory):
    """As `portwatch_service`, for services shared by the whole session."""
    factory = ServiceFactory(portwatch_bin, tmp_path_factory.mktemp("portwatch-session"))
    yield factory
    factory.stop_all()


# --------------------------------------------------------------------------- leaks


def _leaks_enabled(config) -> bool:
    opt = config.getoption("portwatch_leaks")
    return bool(opt) if opt is not None else bool(config.getini("portwatch_leaks"))


def pytest_configure(config):
    if _leaks_enabled(config) and not hasattr(config, "_portwatch_leaks"):
        token = uuid.uuid4().hex
        os.environ[SESSION_ENV] = token
        config._portwatch_leaks = LeakCheck(token, os.getpid(), float(config.getini("portwatch_leaks_grace")))


def pytest_unconfigure(config):
    check = getattr(config, "_portwatch_leaks", None)
    if check is not None and os.environ.get(SESSION_ENV) == check.token:
        del os.environ[SESSION_ENV]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # trylast: after pytest's own sessionfinish has torn down session fixtures.
    check = getattr(session.config, "_portwatch_leaks", None)
    if check is None:
        return
    check.report = check.find()
    if check.report and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    check = getattr(config, "_portwatch_leaks", None)
    if check is None or not check.report:
        return
    tr = terminalreporter
    tr.section("portwatch: the tests left these behind", sep="=", red=True, bold=True)
    for leak in check.report:
        tr.write_line(leak.text)
    ports = sorted({p for leak in check.report for p in leak.ports})
    if ports:
        try:
            who = subprocess.run(
                [find_portwatch(config), "who", *map(str, ports)], capture_output=True, text=True, timeout=60
            )
            if who.stdout.strip():
                tr.write_line("")
                tr.write_line(f"$ portwatch who {' '.join(map(str, ports))}")
                tr.write_line(who.stdout.rstrip())
        except (PortwatchError, OSError, subprocess.TimeoutExpired):
            pass
        tr.write_line("")
        tr.write_line(f"free the ports: portwatch free --force {' '.join(map(str, ports))}")
    tr.write_line(f"{len(check.report)} leak(s): the session fails (--portwatch-leaks)", red=True, bold=True)


@dataclass
class Leak:
    """One thing the tests left behind: a process (and what it listens on), or a
    socket pytest itself still listens on."""

    text: str
    pid: int
    ports: List[int]


class LeakCheck:
    """Processes carrying the session's token in their environment, and sockets
    still listening in them or in pytest itself, once the session is over."""

    def __init__(self, token: str, pytest_pid: int, grace: float):
        self.token = token
        self.pytest_pid = pytest_pid
        self.grace = grace
        self.baseline = _listeners_of(pytest_pid, _socket_table())
        self.report: List[Leak] = []

    def _marked(self) -> List[int]:
        needle = f"{SESSION_ENV}={self.token}".encode()
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid == self.pytest_pid:
                continue
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue  # gone, or not ours to read
            if needle in env.split(b"\0") and _state(pid) not in ("Z", "X", None):
                found.append(pid)
        return sorted(found)

    def find(self) -> List[Leak]:
        # Processes being stopped right at teardown get `grace` seconds to finish.
        deadline = time.monotonic() + self.grace
        pids = self._marked()
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = self._marked()
        table = _socket_table()
        leaks = []
        for pid in pids:
            socks = _listeners_of(pid, table)
            what = f"listening on {', '.join(socks)}" if socks else "still running"
            text = f"process {pid} ({_comm(pid)}, parent {_ppid(pid)}) {what}: {_cmdline(pid)}"
            leaks.append(Leak(text, pid, [_port_of(s) for s in socks]))
        for sock in sorted(set(_listeners_of(self.pytest_pid, table)) - set(self.baseline)):
            text = f"pytest itself (pid {self.pytest_pid}) still listening on {sock}: a socket a test did not close"
            leaks.append(Leak(text, self.pytest_pid, [_port_of(sock)]))
        return leaks


def _state(pid: int) -> Optional[str]:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _ppid(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1]
    except (OSError, IndexError):
        return "?"


def _socket_table() -> Dict[str, str]:
    """inode -> `tcp 127.0.0.1:8000` for listening TCP and bound UDP sockets."""
    table = {}
    for proto, fname, v6 in (("tcp", "tcp", False), ("tcp", "tcp6", True), ("udp", "udp", False), ("udp", "udp6", True)):
        try:
            rows = Path(f"/proc/net/{fname}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) < 10:
                continue
            local, state, inode = f[1], f[3], f[9]
            if (proto == "tcp" and state != "0A") or (proto == "udp" and state != "07") or inode == "0":
                continue
            table[inode] = f"{proto} {_addr(local, v6)}"
    return table


def _addr(hexaddr: str, v6: bool) -> str:
    import ipaddress
    import struct

    host, port = hexaddr.split(":")
    raw = bytes.fromhex(host)
    if v6:
        # Four host-order 32-bit words.
        raw = b"".join(struct.pack("<I", struct.unpack(">I", raw[i : i + 4])[0]) for i in range(0, 16, 4))
        ip = ipaddress.IPv6Address(raw)
        text = str(ip.ipv4_mapped) if ip.ipv4_mapped else f"[{ip}]"
    else:
        text = str(ipaddress.IPv4Address(raw[::-1]))
    return f"{text}:{int(port, 16)}"


def _port_of(sock: str) -> int:
    return int(sock.rsplit(":", 1)[1])


def _listeners_of(pid: int, table: Dict[str, str]) -> List[str]:
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sock = table.get(target[8:-1])
            if sock and sock not in found:
                found.append(sock)
    return found
