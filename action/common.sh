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
