#!/usr/bin/env python3
"""The job summary (markdown on stdout) from what the action's state directory holds:

  history.json   `portwatch history --json` of the job's agent since the job started
  who.json       `portwatch who --json PORTS` now, at the end of the job
  free.json      `portwatch free --json` of the start step (what it freed)
  ports, started, free.status

  jobs.json      the job ids of the holders found at the start (--snapshot)
  blame.txt      `portwatch check` at the start: a line per holder in the way

and the processes of this job still running: those whose environment carries every
VAR=VALUE given on the command line (the runner's per-job RUNNER_TRACKING_ID,
GITHUB_RUN_ID, ...), this script and its ancestors excepted.

`--snapshot` (the start step, before it frees the ports) records instead, from
before.json (`portwatch who --json` then), each holder's job: from the fleet agent's
history when one runs (/var/lib/portwatch/history.db), else from its environment.
The job's own agent cannot tell them: they bound their ports before it started, and
a process's environment is gone by the time its socket closes.

Exit status: 0, or 3 when the job leaves processes or listeners behind.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# The variables, in the order, that the agent records as a process's job
# (portwatch/src/model/process.rs), so both read the same.
CI_VARS = ("GITHUB_RUN_ID", "GITHUB_JOB", "CI_JOB_ID", "CI_JOB_NAME", "CI_PIPELINE_ID", "BUILD_TAG", "BUILD_ID", "BUILD_NUMBER", "JOB_NAME", "BUILDKITE_JOB_ID", "BUILDKITE_LABEL")
TAKES_PORT = ("observed", "bind", "listen")
REAPING = ("stuck", "signal", "reaped", "refused")


def load(path, default):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def md(text, limit=100):
    """A table cell: one line, no pipes, cut to `limit` characters, as code."""
    text = " ".join(str(text or "").split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("|", "\\|").replace("`", "'")
    return f"`{text}`" if text else ""


def proc_read(pid, name):
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def cmdline(pid):
    raw = proc_read(pid, "cmdline").rstrip(b"\0")
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0")) if raw else ""


def comm(pid):
    return proc_read(pid, "comm").decode(errors="replace").strip()


def ppid(pid):
    stat = proc_read(pid, "stat").decode(errors="replace")
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return 0


def alive(pid):
    stat = proc_read(pid, "stat").decode(errors="replace")
    return bool(stat) and stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def environ(pid):
    return [e.decode(errors="replace") for e in proc_read(pid, "environ").split(b"\0") if e]


def job_of_env(env):
    values = dict(e.split("=", 1) for e in env if "=" in e)
    return " ".join(f"{var}={values[var]}" for var in CI_VARS if values.get(var))


def ancestors_of_self():
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        pid = ppid(pid)
    return pids


def job_processes(marks):
    """Live processes whose environment has every mark."""
    if not marks:
        return []
    skip = ancestors_of_self()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        pid = int(entry.name)
        env = set(environ(pid))
        if all(m in env for m in marks) and alive(pid):
            found.append(pid)
    return sorted(found)


FLEET_DB = Path("/var/lib/portwatch/history.db")


def snapshot(st):
    """jobs.json: {pid: job} for the holders in before.json."""
    jobs = {}
    ports = set()
    for s in load(st / "before.json", []):
        ports.add(s.get("port"))
        for h in s.get("holders") or []:
            job = job_of_env(environ(h["pid"]))
            if job:
                jobs[str(h["pid"])] = job
    pw = (st / "portwatch").read_text().strip() if (st / "portwatch").exists() else "portwatch"
    if FLEET_DB.exists():
        for port in sorted(p for p in ports if p):
            try:
                out = subprocess.run(
                    [pw, "history", str(port), "--at", "now", "--json", "--db", str(FLEET_DB)],
                    capture_output=True, text=True, timeout=30,
                )
                rows = json.loads(out.stdout) if out.returncode == 0 else []
            except (OSError, ValueError, subprocess.TimeoutExpired):
                rows = []
            for r in rows:
                if r.get("pid") and r.get("job"):
                    jobs[str(r["pid"])] = r["job"]
    (st / "jobs.json").write_text(json.dumps(jobs))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True, type=Path)
    ap.add_argument("--snapshot", action="store_true", help="record the jobs of the holders in before.json")
    ap.add_argument("marks", nargs="*", help="VAR=VALUE every process of this job has")
    a = ap.parse_args()
    st = a.state
    if a.snapshot:
        return snapshot(st)

    ports = [p for p in (st / "ports").read_text().split() if p] if (st / "ports").exists() else []
    started = (st / "started").read_text().strip() if (st / "started").exists() else "?"
    rows = load(st / "history.json", [])
    sockets = load(st / "who.json", [])
    freed = load(st / "free.json", [])
    # portwatch's own probes (free's check that a port is bindable) held nothing.
    rows = [r for r in rows if r.get("comm") != "portwatch"]
    job_by_pid = {int(pid): job for pid, job in load(st / "jobs.json", {}).items()}
    for r in rows:
        if r.get("pid") and r.get("job"):
            job_by_pid.setdefault(r["pid"], r["job"])

    def job(pid):
        return job_by_pid.get(pid) or job_of_env(environ(pid))

    out = []
    w = out.append
    w(f"## portwatch: ports {', '.join(ports) or '(none given)'}")
    w("")
    w(f"Since {started}. Job ids come from the processes' environment, recorded by the agent.")
    w("")

    # What held the ports during the job.
    w("### What held the job's ports")
    w("")
    holders = {}
    for r in rows:
        if r.get("event") in TAKES_PORT and r.get("pid"):
            key = (r.get("port"), r["pid"])
            h = holders.setdefault(key, {"first": r.get("time"), "events": [], "row": r})
            if r["event"] not in h["events"]:
                h["events"].append(r["event"])
    if holders:
        w("| port | pid | command | job | since | seen |")
        w("|---|---|---|---|---|---|")
        for (port, pid), h in sorted(holders.items(), key=lambda kv: (kv[0][0] or 0, kv[1]["first"] or "")):
            r = h["row"]
            w(
                f"| {port}/{r.get('proto') or 'tcp'} | {pid} | {md(r.get('cmdline') or r.get('comm'))} | {md(r.get('job'), 60)} "
                f"| {h['first']} | {', '.join(h['events'])} |"
            )
    else:
        w("Nothing bound or listened on them while the agent watched." if rows or (st / "history.json").exists() else "No history (no agent ran).")
    failed = [r for r in rows if r.get("event") == "bind_failed"]
    if failed:
        w("")
        w(f"**{len(failed)} failed bind(s)**:")
        w("")
        for r in failed[:20]:
            w(f"- {r.get('time')} port {r.get('port')}: pid {r.get('pid')} ({md(r.get('comm'), 30)}) {r.get('error') or ''}; {md(r.get('detail'), 160)}")
    w("")

    # In the way at the start: `portwatch check`'s blame lines.
    blame_file = st / "blame.txt"
    blamed = [l for l in (blame_file.read_text(errors="replace").splitlines() if blame_file.exists() else []) if l.startswith("port ")]
    if blamed:
        w("### In the way at the start")
        w("")
        for l in blamed[:40]:
            w(f"- {md(l, 300)}")
        w("")

    # Freed at the start, reaped during the job.
    w("### Freed and reaped")
    w("")
    lines = []
    for rep in freed:
        targets = (rep.get("plan") or {}).get("targets") or []
        outcome = rep.get("outcome") or {}
        refused = (rep.get("plan") or {}).get("refused")
        if refused:
            lines.append(f"- port {rep.get('port')}: **refused** to free: {md(refused, 160)}")
        for t in targets:
            sigs = [s["signal"] for s in outcome.get("signals", []) if s.get("pid") == t.get("pid")]
            lines.append(
                f"- port {rep.get('port')}: freed at the start: pid {t.get('pid')} {md(t.get('cmdline') or t.get('comm'))} "
                f"({', '.join(sigs) or 'no signal'}; job {md(job_by_pid.get(t.get('pid')), 60) or 'unknown'})"
            )
        if targets and outcome and not outcome.get("freed"):
            lines.append(f"- port {rep.get('port')}: **still held** after freeing it")
    for r in rows:
        if r.get("event") in REAPING:
            who = f"pid {r['pid']} ({md(r.get('comm'), 30)})" if r.get("pid") else ""
            lines.append(
                f"- {r.get('time')} port {r.get('port')}: agent **{r['event']}** {who} {md(r.get('detail'), 160)}"
                f"{' job ' + md(job(r['pid']), 60) if r.get('pid') and job(r['pid']) else ''}"
            )
    w("\n".join(lines) if lines else "Nothing was freed or reaped.")
    w("")

    # Kept off the ports by the job's lease (`lease: true`): lease hold's own lines.
    lease_log = st / "lease.log"
    if lease_log.exists():
        text = lease_log.read_text(errors="replace").splitlines()
        refused = [l.split("lease: ", 1)[1] for l in text if "lease: refused " in l or "more binds refused" in l]
        w("### Kept off the ports by the lease")
        w("")
        if refused:
            for l in refused[:40]:
                w(f"- {md(l, 200)}")
            if len(refused) > 40:
                w(f"- … and {len(refused) - 40} more lines in the lease holder's log")
        else:
            w("No bind from outside the job was refused.")
        w("")

    # What the job leaves behind.
    w("### Left behind")
    w("")
    on_ports = {}
    for s in sockets:
        for h in s.get("holders") or []:
            on_ports.setdefault(h["pid"], {"h": h, "socks": []})["socks"].append(f"{s.get('proto')} {s.get('addr')}:{s.get('port')} {s.get('state')}")
    leaked = sorted(set(job_processes(a.marks)) | set(on_ports))
    if leaked:
        w("| pid | command | holds | job |")
        w("|---|---|---|---|")
        for pid in leaked:
            h = on_ports.get(pid, {}).get("h", {})
            cmd = cmdline(pid) or h.get("cmdline") or h.get("comm") or comm(pid)
            holds = ", ".join(on_ports.get(pid, {}).get("socks", [])) or "no port of the job"
            w(f"| {pid} | {md(cmd)} | {md(holds, 80)} | {md(job(pid), 60)} |")
        w("")
        w(f"Free the ports with `portwatch free --force {' '.join(ports)}`." if on_ports else "")
    else:
        w("Nothing: no process of this job is left, and the ports are free.")
    print("\n".join(out).rstrip() + "\n")
    return 3 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
