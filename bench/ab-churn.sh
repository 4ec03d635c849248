#!/usr/bin/env bash
# A/B of two portwatch builds on the churn load: per round, the churn without an
# agent, with `BEFORE agent`, with `AFTER agent` (same port, seconds apart).
#   bash bench/ab-churn.sh /path/to/portwatch-before /path/to/portwatch-after [ROUNDS]
# Prints one line per round: ns/conn and the ratio to the round's no-agent run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BEFORE=${1:?portwatch binary before}
AFTER=${2:?portwatch binary after}
ROUNDS=${3:-7}
PORT=${PORT:-24611}
[[ $(id -u) == 0 ]] || { echo "ab-churn: run as root" >&2; exit 1; }
cargo build --release --quiet -p portwatch-loadgen >&2
L=target/release/pw-loadgen
TMP=$(mktemp -d /tmp/pw-ab.XXXXXX)
for ((r = 1; r <= ROUNDS; r++)); do
    base=$("$L" churn --iters 20000 --port "$PORT" | jq -r .ns_per_op)
    line="round $r: none $base"
    for v in before after; do
        bin=$BEFORE
        [[ $v == after ]] && bin=$AFTER
        "$bin" agent -p "$PORT" --no-socket --no-history >/dev/null 2>"$TMP/$v.err" &
        a=$!
        for _ in $(seq 100); do grep -q "agent started" "$TMP/$v.err" && break; sleep 0.1; done
        sleep 1
        w=$("$L" churn --iters 20000 --port "$PORT" | jq -r .ns_per_op)
        kill -INT "$a"
        wait "$a" || true
        line="$line $v $w ($(python3 -c "print(round($w/$base, 3))"))"
    done
    echo "$line"
done
rm -rf "$TMP"
