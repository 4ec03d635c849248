#!/usr/bin/env bash
# hostile: the agent (--reap, history on) held to a 128 MiB memory limit, as the
# unit's MemoryMax=128M holds it, while the unprivileged user `nobody` (with
# access to the control socket, as the socket's group has) attacks it for
# HOSTILE_SECONDS (default 60) from every side at once:
#   - a UDP bind storm on a watched port (pw-loadgen, HOSTILE_RATE binds/s),
#   - a bind loop on that port from a process named with escape sequences and
#     carrying a 256 KiB command line (stored per process, shown escaped),
#   - `free --force` of a root service's port over and over (the root service
#     must never be signalled),
#   - garbage, 1 MiB lines without a newline, and 300 idle connections held open
#     on the control socket (the agent must keep answering root).
# Meanwhile a root client checks every 100 ms that the root service answers, and
# a stuck listener of nobody's on a third watched port must still be reaped.
#
# Prints one markdown table row per run (docs/benchmarks.md, "hostile") and
# appends it to bench-out/results.md. Cleans up everything it started.
# Usage: bash bench/hostile.sh   (or: cargo xtask bench hostile)
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
SECS=${HOSTILE_SECONDS:-60}
RATE=${HOSTILE_RATE:-100000}
LIMIT_MIB=${HOSTILE_LIMIT_MIB:-128}
PW=$ROOT/target/release/portwatch
LOADGEN=$ROOT/target/release/pw-loadgen
OUT_DIR=$ROOT/bench-out
NOBODY=65534
IDLE_UID=65533
# nobody's python: the system one (a pyenv shim under /root is not nobody's to run).
NPY=/usr/bin/python3

say() { echo "hostile: $*" >&2; }
die() { echo "hostile: error: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root"
[[ -x $PW && -x $LOADGEN ]] || die "build first: cargo build --release -p portwatch -p portwatch-loadgen"

TMP=$(mktemp -d /tmp/pw-hostile.XXXXXX)
chmod 0755 "$TMP"
# nobody runs our binaries from a copy it can read.
install -m 0755 "$PW" "$TMP/portwatch"
install -m 0755 "$LOADGEN" "$TMP/pw-loadgen"
PIDS=()
CG=""
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        # Only our own children, still alive.
        if [[ $(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) == "$$" ]]; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [[ -n $CG && -d $CG ]]; then
        rmdir "$CG" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
[[ -n ${HOSTILE_KEEP:-} ]] && trap "echo kept \$TMP" EXIT

pick_port() {
    python3 -c 'import socket
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
mapfile -t PORTS < <(pick_port)
P_ROOT=${PORTS[0]} P_STORM=${PORTS[1]} P_STUCK=${PORTS[2]}

# The memory limit: cgroup v2's memory.max where the memory controller is on v2,
# else v1's memory.limit_in_bytes, in a child of this shell's memory cgroup.
V2=$(findmnt -t cgroup2 -n -o TARGET | head -1 || true)
if [[ -n $V2 ]] && grep -qw memory "$V2/cgroup.controllers" 2>/dev/null; then
    base=$V2$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
    CG=$base/pw-hostile-$$
    mkdir "$CG"
    echo "${LIMIT_MIB}M" >"$CG/memory.max"
    PEAK_FILE=$CG/memory.peak
    OOM_FILE=$CG/memory.events
    KIND="cgroup v2 memory.max"
else
    rel=$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)
    [[ -n $rel ]] || die "no memory cgroup (v1 or v2) to hold the agent to a limit"
    CG=/sys/fs/cgroup/memory$rel/pw-hostile-$$
    mkdir "$CG"
    echo $((LIMIT_MIB << 20)) >"$CG/memory.limit_in_bytes"
    PEAK_FILE=$CG/memory.max_usage_in_bytes
    OOM_FILE=$CG/memory.oom_control
    KIND="cgroup v1 memory.limit_in_bytes"
fi
say "agent held to ${LIMIT_MIB} MiB ($KIND, $CG); ports: root service $P_ROOT, storm $P_STORM, stuck $P_STUCK"

SOCK=$TMP/pw.sock
DB=$TMP/db/history.db
mkdir -m 0755 "$TMP/db"
# The agent, inside the limited cgroup.
bash -c "echo \$\$ > '$CG/cgroup.procs'; exec '$TMP/portwatch' agent --reap --stall 2s --grace 1s --interval 200ms \
    --socket '$SOCK' --socket-mode 0666 --db '$DB' -p $P_ROOT -p $P_STORM -p $P_STUCK" \
    >"$TMP/agent.log" 2>&1 &
AGENT=$!
PIDS+=("$AGENT")
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || { cat "$TMP/agent.log" >&2; die "the agent did not start"; }

# The root service: serves HTTP; records every signal it gets.
python3 -u - "$P_ROOT" "$TMP/root-signals" >"$TMP/root.log" 2>&1 <<'EOF' &
import http.server, signal, sys
port, marks = int(sys.argv[1]), sys.argv[2]
def hit(sig, frame):
    open(marks, "a").write("signal %d\n" % sig)
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCONT, signal.SIGUSR1):
    signal.signal(s, hit)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
ROOT_SVC=$!
PIDS+=("$ROOT_SVC")
# nobody's stuck listener: never accepts; the agent must reap it.
setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups $NPY -c "
import socket, time
s = socket.socket(); s.bind(('127.0.0.1', $P_STUCK)); s.listen(8)
cs = [socket.create_connection(('127.0.0.1', $P_STUCK)) for _ in range(3)]
time.sleep(3600)" &
STUCK=$!
PIDS+=("$STUCK")
for _ in $(seq 50); do ss -Hltn "sport = :$P_STUCK" | grep -q . && break; sleep 0.1; done
ss -Hltn "sport = :$P_STUCK" | grep -q . || die "nobody's stuck listener did not start"
sleep 1

# The attacks, all as nobody, all at once.
setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups "$TMP/pw-loadgen" storm --seconds "$SECS" --threads 1 \
    --rate "$RATE" --port "$P_STORM" >"$TMP/storm.json" 2>"$TMP/storm.err" &
PIDS+=("$!")
STORM=$!
setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups $NPY - "$P_STORM" "$SECS" >"$TMP/names.log" 2>&1 <<'EOF' &
import ctypes, socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
ctypes.CDLL(None).prctl(15, b"\x1b]0;pwned\x07\x1b[2J", 0, 0, 0)  # PR_SET_NAME
sys.argv += ["\nport %d: free\n" % port + "A" * 262144]
end, n = time.time() + secs, 0
while time.time() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port)); n += 1
    except OSError:
        pass
    s.close(); time.sleep(0.001)
print(n)
EOF
PIDS+=("$!")
setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups $NPY - "$SOCK" "$P_ROOT" "$SECS" >"$TMP/control.json" 2>"$TMP/control.err" <<'EOF' &
import json, socket, sys, threading, time
path, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + secs
counts = {"free": 0, "refused": 0, "turned_away": 0, "signalled": 0, "garbage": 0, "huge": 0, "errors": 0}
lock = threading.Lock()
def bump(k):
    with lock:
        counts[k] += 1
def one(payload, key):
    try:
        c = socket.socket(socket.AF_UNIX); c.settimeout(10); c.connect(path)
        c.sendall(payload)
        if payload.endswith(b"\n"):
            reply = c.makefile().readline()
            if key == "free":
                r = json.loads(reply) if reply else {}
                if not r.get("ok"):
                    bump("turned_away")  # over a limit: busy, too many connections
                for rep in r.get("reports") or []:
                    if (rep.get("plan") or {}).get("refused"):
                        bump("refused")
                    if (rep.get("plan") or {}).get("steps"):
                        bump("signalled")
        c.close(); bump(key)
    except OSError:
        bump("errors")
def loop(payload, key):
    while time.time() < end:
        one(payload, key)
free = json.dumps({"cmd": "free", "ports": [port], "force": True, "grace_ms": 10}).encode() + b"\n"
threads = [threading.Thread(target=loop, args=(free, "free")) for _ in range(3)]
threads.append(threading.Thread(target=loop, args=(b"\x00\xff{not json\n", "garbage")))
threads.append(threading.Thread(target=loop, args=(b"{" + b"x" * (1 << 20), "huge")))
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(counts))
EOF
ATTACK=$!
PIDS+=("$ATTACK")
# 300 idle connections held by another unprivileged uid (a uid's own idle
# connections would only use up its own share and turn its requests away).
setpriv --reuid=$IDLE_UID --regid=$IDLE_UID --clear-groups $NPY - "$SOCK" "$SECS" >"$TMP/idle.log" 2>&1 <<'EOF' &
import socket, sys, time
held = []
for _ in range(300):
    try:
        c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1]); held.append(c)
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(float(sys.argv[2]))
EOF
PIDS+=("$!")

# The root client, and the agent's memory, sampled while the attacks run.
python3 - "$P_ROOT" "$SECS" "$AGENT" "$SOCK" "$TMP/portwatch" >"$TMP/watcher.json" <<'EOF'
import json, os, socket, sys, time, urllib.request
port, secs, agent, sock, pw = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
end = time.time() + secs
ok = bad = 0; hwm = 0; status_ok = status_bad = 0; slowest = 0.0
while time.time() < end:
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=2).read(); ok += 1
    except Exception:
        bad += 1
    t = time.time()
    try:
        c = socket.socket(socket.AF_UNIX); c.settimeout(5); c.connect(sock)
        c.sendall(b'{"cmd":"status"}\n')
        good = '"ok":true' in c.makefile().readline().replace(" ", ""); c.close()
    except OSError:
        good = False
    slowest = max(slowest, time.time() - t)
    if good: status_ok += 1
    else: status_bad += 1
    try:
        for l in open("/proc/%s/status" % agent):
            if l.startswith("VmHWM:"): hwm = int(l.split()[1])
    except OSError:
        break
    time.sleep(0.1)
print(json.dumps({"served": ok, "failed": bad, "vmhwm_kib": hwm, "status_ok": status_ok, "status_failed": status_bad, "status_slowest_s": round(slowest, 3)}))
EOF
wait "$STORM" || true
wait "$ATTACK" || true
sleep 3 # the stuck listener's verdict and the writer's last batches

alive=no
[[ -e /proc/$AGENT ]] && alive=yes
STATUS=$(python3 -c 'import socket, sys
c = socket.socket(socket.AF_UNIX); c.settimeout(5); c.connect(sys.argv[1]); c.sendall(b"{\"cmd\":\"status\"}\n")
print(c.makefile().readline())' "$SOCK" 2>/dev/null || echo '{}')
stuck_reaped=no
[[ -e /proc/$STUCK ]] || stuck_reaped=yes
[[ $(awk '{print $3}' "/proc/$STUCK/stat" 2>/dev/null) == Z ]] && stuck_reaped=yes
root_alive=no
[[ -e /proc/$ROOT_SVC ]] && root_alive=yes
root_signals=$( [[ -f $TMP/root-signals ]] && wc -l <"$TMP/root-signals" || echo 0)
peak=$(( $(cat "$PEAK_FILE") >> 20 ))
ooms=$(awk '$1 == "oom_kill" {print $2}' "$OOM_FILE")
ooms=${ooms:-0}
kill -TERM "$AGENT" 2>/dev/null || true
wait "$AGENT" 2>/dev/null || true
rows=$("$TMP/portwatch" history --db "$DB" --json --netns all "$P_STORM" | jq length)
signals_to_root=$("$TMP/portwatch" history --db "$DB" --json --netns all --pid "$ROOT_SVC" | jq '[.[] | select(.event == "signal" or .event == "reaped")] | length')
binds=$(jq -r '.binds // .total // empty' "$TMP/storm.json" 2>/dev/null || true)
names_binds=$(tail -1 "$TMP/names.log")
control=$(cat "$TMP/control.json")
watcher=$(cat "$TMP/watcher.json")
escaped=$("$TMP/portwatch" history --db "$DB" --netns all "$P_STORM" | grep -c $'\x1b' || true)

say "storm: $(cat "$TMP/storm.json")"
say "names: $names_binds binds; control attack: $control; root client: $watcher"
say "agent status at the end: $STATUS"
hwm=$(jq .vmhwm_kib <<<"$watcher")
dropped=$(jq '.history_rows_dropped // 0' <<<"$STATUS")
failed=$(jq '.history_rows_failed // 0' <<<"$STATUS")
lost=$(jq '.lost_events // 0' <<<"$STATUS")
served=$(jq .served <<<"$watcher")
unserved=$(jq .failed <<<"$watcher")
st_ok=$(jq .status_ok <<<"$watcher")
st_bad=$(jq .status_failed <<<"$watcher")
frees=$(jq .free <<<"$control")
refused=$(jq .refused <<<"$control")
turned=$(jq .turned_away <<<"$control")
signalled=$(jq .signalled <<<"$control")

verdict=met
[[ $alive == yes && $root_alive == yes && $root_signals == 0 && $signalled == 0 && $signals_to_root == 0 && $stuck_reaped == yes && $ooms == 0 && $escaped == 0 && $st_bad == 0 ]] || verdict="**missed**"
row="| $(date -u +%F) | ${SECS} s: UDP bind storm ${RATE}/s + hostile-name bind loop on a watched port; $frees \`free --force\` of a root service's port ($refused plans refused, $turned turned away at a limit, $signalled with signal steps); garbage, 1 MiB lines; $(head -1 "$TMP/idle.log") idle connections held by uid $IDLE_UID | agent alive: $alive; peak RSS ${hwm} KiB (VmHWM), cgroup peak ${peak} MiB of ${LIMIT_MIB} MiB, OOM kills $ooms | root service signalled: $root_signals (history: $signals_to_root); served $served/$((served + unserved)); status answered $st_ok/$((st_ok + st_bad)); nobody's stuck listener reaped: $stuck_reaped; raw ESC in text history: $escaped | rows stored $rows, dropped $dropped, failed $failed; ring events lost $lost | $verdict |"
mkdir -p "$OUT_DIR"
{
    echo
    echo "#### hostile — $(date -u '+%F %T') UTC ($(nproc) CPUs, kernel $(uname -r), $KIND)"
    echo
    echo "| date | attack (as nobody) | load held | result | rows | goal |"
    echo "|---|---|---|---|---|---|"
    echo "$row"
} | tee -a "$OUT_DIR/results.md"
[[ $verdict == met ]]
