#!/bin/bash
# vmtest --systemd: the test, run by the guest's systemd (PID 1) as
# portwatch-vmtest.service once sysinit.target is reached (systemd-init.sh put
# the unit, the sysusers and tmpfiles files, the binary and a config in place).
# Each check prints "ok NAME" or "FAIL NAME: why" to the console and to
# systemd.txt in the results share; systemd.status gets the number of failures;
# then the guest powers off. The harness (xtask/src/vmtest.rs) reads both.
set -u
dir=$(dirname "$0")
# shellcheck source=/dev/null
. "$dir/systemd-env.sh"
out=$dir/systemd.txt
log=$dir/systemd-detail.log
: >"$out"
fails=0
say() { echo "vmtest: $*" >/dev/console; echo "$*" >>"$out"; }
ok() { say "ok   $1"; }
bad() { say "FAIL $1: $2"; fails=$((fails + 1)); }
# check NAME COMMAND...: the command's output goes to the detail log.
check() {
	local name=$1
	shift
	echo "== $name: $*" >>"$log"
	if "$@" >>"$log" 2>&1; then ok "$name"; else bad "$name" "$* (see systemd-detail.log)"; fi
}
finish() {
	systemctl status --no-pager portwatch >>"$log" 2>&1
	journalctl --no-pager -o short-monotonic -u portwatch >"$dir/portwatch.journal" 2>&1
	echo "$fails" >"$dir/systemd.status"
	sync
	say "done: $fails failure(s); powering off"
	systemctl poweroff --no-block
	exit 0
}
mount | grep -q ' /sys/fs/bpf ' || mount -t bpf bpf /sys/fs/bpf

# The kernel's BPF state as one line: non-iterator program ids, and the ids of
# the programs behind iterator links (portwatch pins its `who` iterators in
# bpffs on purpose; they stay after the agent stops).
bpf_state() {
	python3 -c '
import json, subprocess
progs = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout or "[]")
links = json.loads(subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True).stdout or "[]")
it = {l["prog_id"] for l in links if l.get("type") == "iter"}
hooks = sorted(p["id"] for p in progs if p["id"] not in it)
other_links = sorted(l["id"] for l in links if l.get("type") != "iter")
print(json.dumps({"progs": hooks, "links": other_links}))'
}
before=$(bpf_state)
echo "bpf before: $before" >>"$log"

check "group portwatch made by sysusers" getent group portwatch
start=$(date +%s%N)
check "systemctl start portwatch (Type=notify, READY=1)" timeout 90 systemctl start portwatch
say "  started in $((($(date +%s%N) - start) / 1000000)) ms"
check "unit active/running" test "$(systemctl show -p ActiveState,SubState --value portwatch | tr '\n' ' ')" = "active running "
# READY=1 comes after the socket listens: no waiting here.
check "control socket /run/portwatch/portwatch.sock 660 root:portwatch" \
	test "$(stat -c '%a %U %G %F' /run/portwatch/portwatch.sock 2>&1)" = "660 root portwatch socket"
# One request on the control socket: as root, and as nobody in group portwatch
# (the socket is 0660 root:portwatch); refused to nobody outside the group.
cat >/tmp/status.py <<PY
import json, socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect("/run/portwatch/portwatch.sock")
s.sendall(b'{"cmd":"status"}\\n')
reply = json.loads(s.makefile().readline())
print(reply)
assert reply["ok"] is True and reply["ports"] == [$PW_PORT], reply
PY
chmod 0644 /tmp/status.py
check "status over the control socket (root)" python3 /tmp/status.py
gid=$(getent group portwatch | cut -d: -f3)
check "status over the control socket (nobody in group portwatch)" \
	setpriv --reuid=65534 --regid=65534 --groups="$gid" python3 /tmp/status.py
check "control socket refused to nobody outside the group" \
	bash -c "! setpriv --reuid=65534 --regid=65534 --clear-groups python3 /tmp/status.py"
check "metrics served (GET)" bash -c "curl -sSf http://127.0.0.1:9464/metrics | grep -E '^portwatch_build_info|^process_open_fds'"
check "metrics HEAD" bash -c "curl -sSfI http://127.0.0.1:9464/metrics | grep -i '^content-length'"
check "who iterators pinned in /sys/fs/bpf/portwatch" bash -c "ls -A /sys/fs/bpf/portwatch/*/ | grep ."
during=$(bpf_state)
echo "bpf running: $during" >>"$log"
check "hooks attached while running" test "$during" != "$before"

# A stuck listener: a backlog with a connection nobody accepts, the server stopped.
python3 -c "
import os, signal, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $PW_PORT)); s.listen(1)
c = socket.create_connection(('127.0.0.1', $PW_PORT))
print('READY', flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
time.sleep(600)
" >"$dir/stuck.out" 2>&1 &
stuck=$!
reaped=
for _ in $(seq 1 150); do
	state=$(awk '{print $3}' "/proc/$stuck/stat" 2>/dev/null)
	if [ -z "$state" ] || [ "$state" = Z ]; then reaped=yes; break; fi
	sleep 0.2
done
if [ -n "$reaped" ]; then ok "stopped listener on $PW_PORT reaped by the agent"; else
	bad "stopped listener on $PW_PORT reaped by the agent" "pid $stuck still $(awk '{print $3}' "/proc/$stuck/stat")"
	kill -KILL "$stuck" 2>/dev/null
fi
wait "$stuck" 2>/dev/null
check "history has the reap" bash -c "portwatch history $PW_PORT --since 5m | grep -E 'reaped|signal'"
check "metrics count the reap" bash -c "curl -sSf http://127.0.0.1:9464/metrics | grep -E '^portwatch_reaps_total\{outcome=\"freed\"\} 1'"
check "journal lines are JSON objects" bash -c "journalctl -u portwatch -o cat --no-pager | python3 -c '
import json, sys
n = 0
for line in sys.stdin:
    line = line.strip()
    if line.startswith(\"{\"):
        json.loads(line); n += 1
assert n > 0, \"no JSON lines\"
'"
check "no warning in the journal but the stuck listener's" bash -c "journalctl -u portwatch -o cat --no-pager | python3 -c '
import json, sys
bad = []
for line in sys.stdin:
    if line.startswith(\"{\"):
        v = json.loads(line)
        if v[\"level\"] in (\"WARN\", \"ERROR\") and v[\"message\"] != \"listener stuck\":
            bad.append(line)
assert not bad, bad
'"
systemd-analyze security portwatch.service >"$dir/systemd-security.txt" 2>&1
say "  $(tail -n 1 "$dir/systemd-security.txt")"

check "systemctl stop portwatch" timeout 30 systemctl stop portwatch
check "unit inactive" test "$(systemctl show -p ActiveState --value portwatch)" = inactive
check "unit result success (clean exit on SIGTERM)" test "$(systemctl show -p Result --value portwatch)" = success
after=$(bpf_state)
echo "bpf after: $after" >>"$log"
check "every hook detached after stop" test "$after" = "$before"
check "journal: STOPPING and hooks detached" bash -c "journalctl -u portwatch -o cat --no-pager | grep 'hooks detached'"
check "control socket gone with the runtime directory" test ! -e /run/portwatch
finish
