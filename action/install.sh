#!/usr/bin/env bash
# Installs portwatch for the job: from a release bundle (PORTWATCH_BUNDLE: a URL or
# a path; its SHA-256 from PORTWATCH_BUNDLE_SHA256 or BUNDLE.sha256), else the
# portwatch on PATH, else built from this action's source (`cargo xtask setup`).
# Puts the binary's folder on the job's PATH (GITHUB_PATH) and records it for the
# other steps.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$here/common.sh"

bundle="${PORTWATCH_BUNDLE:-}"
want="${PORTWATCH_BUNDLE_SHA256:-}"

if [[ -n "$bundle" ]]; then
    dir="$state/bundle"
    rm -rf "$dir"
    mkdir -p "$dir"
    name="$(basename "${bundle%%\?*}")"
    archive="$dir/$name"
    case "$bundle" in
    http://* | https://*)
        log "downloading $bundle"
        curl -fsSL --retry 3 -o "$archive" "$bundle" || fail "cannot download $bundle"
        if [[ -z "$want" ]]; then
            want="$(curl -fsSL --retry 3 "$bundle.sha256" | awk '{print $1}')" ||
                fail "no sha256 input and no $bundle.sha256: refusing an unverified download"
        fi
        ;;
    *)
        [[ -f "$bundle" ]] || fail "bundle $bundle: no such file"
        cp "$bundle" "$archive"
        if [[ -z "$want" && -f "$bundle.sha256" ]]; then
            want="$(awk '{print $1}' "$bundle.sha256")"
        fi
        ;;
    esac
    if [[ -n "$want" ]]; then
        got="$(sha256sum "$archive" | awk '{print $1}')"
        [[ "$got" == "$want" ]] || fail "$name: sha256 $got, expected $want"
        log "$name: sha256 verified"
    else
        warn "$name: no checksum given or found; not verified"
    fi
    tar -xzf "$archive" -C "$dir"
    bins=("$dir"/portwatch-*/bin/portwatch)
    [[ -x "${bins[0]}" ]] || fail "$name holds no bin/portwatch"
    bin="${bins[0]}"
elif command -v portwatch >/dev/null; then
    bin="$(command -v portwatch)"
else
    src="${GITHUB_ACTION_PATH:-$(dirname "$here")}"
    log "no bundle and no portwatch on PATH: building it from $src (cargo xtask setup)"
    command -v cargo >/dev/null || fail "no bundle, no portwatch on PATH and no cargo to build it: give the action a bundle"
    (cd "$src" && cargo xtask setup) >&2
    bin="$src/target/release/portwatch"
fi

"$bin" --version >&2
printf '%s\n' "$bin" >"$state/portwatch"
if [[ -n "${GITHUB_PATH:-}" ]]; then
    dirname "$bin" >>"$GITHUB_PATH"
fi
if [[ -n "${GITHUB_OUTPUT:-}" ]]; then
    printf 'path=%s\n' "$bin" >>"$GITHUB_OUTPUT"
fi
