#!/usr/bin/env bash
# GitHub Actions self-hosted runner "job started" hook (ACTIONS_RUNNER_HOOK_JOB_STARTED):
# gives the job its ports back before any step runs, from whatever an earlier job
# left behind (gunicorn masters and their forked workers, stopped processes,
# servers that ignore SIGTERM).
#
# Settings (the runner's environment, e.g. its .env file):
#   PORTWATCH_PORTS        ports to free: "5050,5051" (default), ranges "5050-5052",
#                          commas and/or spaces
#   PORTWATCH              the portwatch binary (default: portwatch on PATH)
#   PORTWATCH_GRACE        SIGTERM -> SIGKILL delay (default 5s)
#   PORTWATCH_CONFIG       optional portwatch TOML file with a [protect] list
#   PORTWATCH_HOOK_STRICT  1: fail the job whenever a port could not be freed,
#                          refusals included (default 0: log a warning and go on)
#
# Exit status (a non-zero status fails the job before its first step):
#   0  ports free, or (default) portwatch could not free them: it refused
#      (its exit 6: a protected process, or, when not root, a holder owned by
#      another user that it cannot see), a port is still held after SIGKILL (1),
#      missing privilege (4) or host support (5). Each is logged as a warning;
#      the job then meets the held port itself.
#   1  the hook is misconfigured: portwatch not found, or PORTWATCH_PORTS /
#      PORTWATCH_GRACE / PORTWATCH_CONFIG rejected by portwatch (its exits 2, 3);
#      or PORTWATCH_HOOK_STRICT=1 and a port was not freed.
set -euo pipefail

ports="${PORTWATCH_PORTS:-5050,5051}"
grace="${PORTWATCH_GRACE:-5s}"
strict="${PORTWATCH_HOOK_STRICT:-0}"

log() {
    printf '%s portwatch-hook: %s\n' "$(date -u +%H:%M:%S)" "$*"
}

# Hooks may use workflow commands: these also become annotations of the run.
annotate() { # LEVEL MESSAGE
    printf '::%s title=portwatch job-started hook::%s\n' "$1" "$2"
}

portwatch="${PORTWATCH:-}"
if [[ -z "$portwatch" ]]; then
    portwatch="$(command -v portwatch || true)"
fi
if [[ -z "$portwatch" || ! -x "$portwatch" ]]; then
    log "error: portwatch not found (set PORTWATCH or put it on PATH); ports ${ports} not checked"
    annotate error "portwatch not found on this runner; ports ${ports} not checked"
    exit 1
fi

# "5050,5051 5052-5053" -> 5050 5051 5052-5053 (portwatch parses each word itself)
read -r -a port_args <<<"${ports//,/ }"
if [[ ${#port_args[@]} -eq 0 ]]; then
    log "PORTWATCH_PORTS is empty: nothing to free"
    exit 0
fi

cmd=("$portwatch" free --force --grace "$grace")
if [[ -n "${PORTWATCH_CONFIG:-}" ]]; then
    cmd+=(--config "$PORTWATCH_CONFIG")
fi
cmd+=("${port_args[@]}")

log "job ${GITHUB_JOB:-?} (run ${GITHUB_RUN_ID:-?}): freeing ports ${port_args[*]} as $(id -un)"
log "\$ ${cmd[*]}"

status=0
output="$("${cmd[@]}" 2>&1)" || status=$?
if [[ -n "$output" ]]; then
    while IFS= read -r line; do
        log "  ${line}"
    done <<<"$output"
fi

case "$status" in
0)
    log "ports ${port_args[*]} are free"
    exit 0
    ;;
2 | 3)
    log "error: portwatch rejected the settings (exit ${status}); fix PORTWATCH_PORTS, PORTWATCH_GRACE or PORTWATCH_CONFIG"
    annotate error "runner misconfigured: portwatch rejected PORTWATCH_PORTS/PORTWATCH_GRACE/PORTWATCH_CONFIG (exit ${status})"
    exit 1
    ;;
6) what="portwatch refused to signal a holder (a protected process, or one it cannot see)" ;;
1) what="a port is still held after SIGKILL" ;;
4) what="not privileged to signal another user's process (run the runner as root)" ;;
5) what="this host lacks something portwatch needs" ;;
*) what="portwatch failed" ;;
esac

if [[ "$strict" == 1 ]]; then
    log "error: ${what} (exit ${status}); failing the job (PORTWATCH_HOOK_STRICT=1)"
    annotate error "ports ${port_args[*]}: ${what} (exit ${status})"
    exit 1
fi
log "warning: ${what} (exit ${status}); the job goes on (PORTWATCH_HOOK_STRICT=1 would fail it)"
annotate warning "ports ${port_args[*]}: ${what} (exit ${status})"
exit 0
