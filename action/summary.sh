#!/usr/bin/env bash
# Ends the job's portwatch: stops the agent (every queued history row is written),
# then writes the job summary (GITHUB_STEP_SUMMARY, and this step's log): what
# held the job's ports, what was freed or reaped, and what the job leaves behind,
# with the job ids from the agent's history.
#
# Settings: PORTWATCH_FAIL_ON_LEAK (false): exit 1 when the job leaves processes
# or listeners behind.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

pw="$(portwatch_bin)"
mapfile -t ports <"$state/ports" 2>/dev/null || ports=()
root=()
if [[ -s "$state/as_root" ]]; then
    root=("${as_root[@]}")
fi

# The lease first: the job is over, its ports are everyone's again.
stop_background lease 10 "${root[@]}" || true
agent_pid="$(cat "$state/agent.pid" 2>/dev/null || true)"
if ! stop_background agent 15 "${root[@]}"; then
    warn "the portwatch agent $agent_pid did not stop; the history may miss its last rows"
fi

since="$(cat "$state/started" 2>/dev/null || echo 1h)"
if [[ -f "$state/history.db" ]]; then
    "${root[@]}" "$pw" history --db "$state/history.db" --since "$since" --json >"$state/history.json" 2>"$state/history.err" ||
        warn "portwatch history: $(head -c 300 "$state/history.err")"
fi
if [[ ${#ports[@]} -gt 0 ]]; then
    "${root[@]}" "$pw" who --json "${ports[@]}" >"$state/who.json" 2>"$state/who.err" ||
        warn "portwatch who: $(head -c 300 "$state/who.err")"
fi

# The job's processes carry the runner's per-job marker in their environment.
marks=()
for var in RUNNER_TRACKING_ID GITHUB_RUN_ID GITHUB_JOB GITHUB_RUN_ATTEMPT; do
    if [[ -n "${!var:-}" ]]; then
        marks+=("$var=${!var}")
    fi
done
summary="$state/summary.md"
status=0
"${root[@]}" python3 "$here/summary.py" --state "$state" "${marks[@]}" >"$summary" || status=$?
if [[ $status -ne 0 && $status -ne 3 ]]; then
    warn "the summary could not be made (exit $status)"
    exit 0
fi
cat "$summary"
if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then
    cat "$summary" >>"$GITHUB_STEP_SUMMARY"
fi
if [[ $status -eq 3 ]]; then
    if [[ "${PORTWATCH_FAIL_ON_LEAK:-false}" == true ]]; then
        fail "the job left processes or listeners behind (see the summary)"
    fi
    warn "the job left processes or listeners behind (see the summary)"
fi
exit 0
