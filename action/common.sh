# shellcheck shell=bash disable=SC2034  # sourced: its variables are used by the scripts
# Shared by the action's scripts (sourced). The state directory carries what
# `start` knew to `summary`: the binary, the ports, the start time, the agent.
# Outside GitHub, set RUNNER_TEMP (or PORTWATCH_STATE) yourself.
state="${PORTWATCH_STATE:-${RUNNER_TEMP:?set RUNNER_TEMP or PORTWATCH_STATE}/portwatch-action}"
mkdir -p "$state"

log() { printf 'portwatch-action: %s\n' "$*" >&2; }
# Workflow commands (annotations of the run); plain lines elsewhere.
warn() { printf '::warning title=portwatch::%s\n' "$*"; }
fail() {
    printf '::error title=portwatch::%s\n' "$*"
    exit 1
}

# The agent and `free` of others' processes need root: sudo -n when the job is not
# root and may (GitHub-hosted runners), else as we are (portwatch says what it lacks).
as_root=()
if [[ "$(id -u)" != 0 ]] && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
fi

portwatch_bin() {
    if [[ -s "$state/portwatch" ]]; then
        cat "$state/portwatch"
    else
        command -v portwatch || fail "portwatch not found: run the action with step: start first"
    fi
}

# "5050,5051 5052-5053" -> one word each (portwatch parses ranges itself).
split_ports() {
    local p="${1//,/ }"
    read -r -a ports <<<"$p"
}

# start_background NAME PATTERN SECONDS CMD...: CMD in its own session (no terminal
# hangup reaches it), output in $state/NAME.log, pid in $state/NAME.pid; waits up
# to SECONDS for PATTERN in the log. Returns 1, the pid file removed, if CMD ended
# first.
start_background() {
    local name=$1 pattern=$2 seconds=$3
    shift 3
    setsid "$@" </dev/null >"$state/$name.log" 2>&1 &
    echo $! >"$state/$name.pid"
    for _ in $(seq $((seconds * 10))); do
        if grep -q -- "$pattern" "$state/$name.log" 2>/dev/null; then
            return 0
        fi
        if ! [[ -e "/proc/$(cat "$state/$name.pid")" ]]; then
            rm -f "$state/$name.pid"
            return 1
        fi
        sleep 0.1
    done
}

# stop_background NAME SECONDS [CMD-PREFIX...]: SIGTERM the process in
# $state/NAME.pid (through the prefix, e.g. sudo -n), wait up to SECONDS for it to
# end, remove the pid file. Returns 1 if it is still alive.
stop_background() {
    local name=$1 seconds=$2 pid
    shift 2
    [[ -s "$state/$name.pid" ]] || return 0
    pid="$(cat "$state/$name.pid")"
    "$@" kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((seconds * 10))); do
        [[ -e "/proc/$pid" ]] || break
        sleep 0.1
    done
    rm -f "$state/$name.pid"
    ! [[ -e "/proc/$pid" ]]
}

