#!/usr/bin/env bash
# Starts the job's portwatch agent on PORTWATCH_PORTS (history in the state
# directory, reaping with PORTWATCH_REAP=true), then frees the ports
# (PORTWATCH_FREE, default true) from whatever an earlier job left: the agent sees
# those holders first and records them with their job ids.
#
# With PORTWATCH_LEASE=true the ports are then leased to this job's cgroup until
# the summary step (`portwatch lease hold` in the background): other cgroups'
# binds to them fail at once.
#
# Settings: PORTWATCH_PORTS, PORTWATCH_FREE (true), PORTWATCH_REAP (false),
# PORTWATCH_STALL (10s), PORTWATCH_GRACE (5s), PORTWATCH_CONFIG, PORTWATCH_LEASE
# (false).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

pw="$(portwatch_bin)"
split_ports "${PORTWATCH_PORTS:-}"
grace="${PORTWATCH_GRACE:-5s}"
date -u +%Y-%m-%dT%H:%M:%SZ >"$state/started"
printf '%s\n' "${ports[@]}" >"$state/ports"
: >"$state/as_root"
if [[ ${#as_root[@]} -gt 0 ]]; then
    echo sudo >"$state/as_root"
fi

if [[ ${#ports[@]} -eq 0 ]]; then
    warn "no ports given: no agent; the summary lists only the processes the job leaves behind"
    exit 0
fi

args=(agent --db "$state/history.db" --no-socket --log-json --stall "${PORTWATCH_STALL:-10s}" --grace "$grace")
for p in "${ports[@]}"; do
    args+=(--port "$p")
done
if [[ "${PORTWATCH_REAP:-false}" == true ]]; then
    args+=(--reap)
fi
if [[ -n "${PORTWATCH_CONFIG:-}" ]]; then
    args+=(--config "$PORTWATCH_CONFIG")
fi
log "\$ ${as_root[*]} $pw ${args[*]}"
# Its own session: no terminal hangup reaches it (SIGHUP stops an agent).
if ! start_background agent '"agent started"' 30 "${as_root[@]}" "$pw" "${args[@]}"; then
    cat "$state/agent.log" >&2
    fail "the portwatch agent did not start (see its log above); the summary will say less"
fi
log "agent $(cat "$state/agent.pid") watching ports ${ports[*]} (log: $state/agent.log)"

if [[ "${PORTWATCH_FREE:-true}" == true ]]; then
    # Who is in the way, in one line each (the job that left it, how long ago,
    # stopped or not, the accept queue): in the log now and in the summary.
    "${as_root[@]}" "$pw" check "${ports[@]}" >"$state/blame.txt" 2>/dev/null || true
    grep '^port ' "$state/blame.txt" | while IFS= read -r line; do warn "$line"; done || true
    # Who holds the ports now, and their jobs, for the summary.
    "${as_root[@]}" "$pw" who --json "${ports[@]}" >"$state/before.json" 2>/dev/null || true
    "${as_root[@]}" python3 "$here/summary.py" --state "$state" --snapshot || warn "could not record the holders' jobs (python3?)"
    status=0
    "${as_root[@]}" "$pw" free --force --json --grace "$grace" "${ports[@]}" >"$state/free.json" 2>"$state/free.err" || status=$?
    echo "$status" >"$state/free.status"
    case "$status" in
    0) log "ports ${ports[*]} are free" ;;
    *) warn "portwatch free exited $status: $(head -c 500 "$state/free.err")" ;;
    esac
fi

if [[ "${PORTWATCH_LEASE:-false}" == true ]]; then
    # The job's processes are in this shell's cgroup; the holder's links die with
    # it (the summary step stops it; so does the runner's cleanup of the job).
    hold=(lease hold --pid "$$")
    for p in "${ports[@]}"; do
        hold+=(--port "$p")
    done
    log "\$ ${as_root[*]} $pw ${hold[*]}"
    if ! start_background lease 'until this command ends' 10 "${as_root[@]}" "$pw" "${hold[@]}"; then
        fail "portwatch lease hold did not start: $(head -c 500 "$state/lease.log")"
    fi
    log "$(grep -m1 'leased to' "$state/lease.log" || echo "lease holder $(cat "$state/lease.pid") started")"
fi
