#!/bin/bash
# vmtest guest script: PID 1 after the initramfs switch_roots into the overlay of
# the host's root (see init.sh). `cargo xtask vmtest` copies it into the run's
# results directory (a read-write 9p share mounted at the same path as on the
# host) next to env.sh and plan.sh, which it generates: the environment, and the
# commands to run (`run_test ...` lines, or one `run_shell ...`). Each command's output and
# exit status land in out/ there; `done` is written last, so a guest that died
# or was killed is told apart from one whose tests failed.
#
# Everything the guest writes outside the results share goes to the overlay's
# tmpfs and disappears with the guest.
set -u
dir=$(dirname "$0")
say() { echo "vmtest: $*" >/dev/console; }

# env.sh (generated): PATH, HOME... of the host, and VMTEST_MODULES.
# shellcheck source=/dev/null
. "$dir/env.sh"

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
# portwatch finds the cgroup v2 mount from mountinfo, wherever it is.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
# The guest kernel's modules, unpacked on the host under target/vmtest, are
# visible through the host root: linking them in (on the overlay) lets the kernel
# autoload any module a test needs beyond those the initramfs loaded.
if [ -n "${VMTEST_MODULES:-}" ] && [ -d "$VMTEST_MODULES" ]; then
	mkdir -p /lib/modules
	ln -sfn "$VMTEST_MODULES" "/lib/modules/$(uname -r)"
fi
hostname vmtest
ip link set lo up
# This kernel's BTF, kept next to its packages on the host: the unit tests resolve
# portwatch's offsets against every kernel saved there.
cp /sys/kernel/btf/vmlinux "$dir/vmlinux.btf" 2>/dev/null
ulimit -n 20000

now() { date +%s%N; }

# run_test NAME CWD TIMEOUT EXE ARGS...: one libtest binary, as `cargo test` runs
# it (working directory: its package's root); output to out/NAME.log, then
# "EXIT_CODE MILLISECONDS" to out/NAME.status.
#
# When one or two of its tests failed (libtest's exit 101, with its summary), those
# tests run once more, alone (`--exact`): output to out/NAME.retry.log, exit code
# to out/NAME.retry. The host reports a test that passed only then as flaky,
# with the first run's failure; a test that fails twice fails the run.
run_test() {
	local name=$1 cwd=$2 limit=$3
	shift 3
	say "running $name"
	local start
	start=$(now)
	# Not `exec timeout`: timeout makes the test binary's process group, and a
	# group whose outside parent is init counts as orphaned (will_become_orphaned_pgrp
	# skips init's children). The kernel then SIGHUPs the whole group, the test
	# binary with it, when a process exits while a test has a process of that
	# group SIGSTOPped (seen: exit 129 of tests/who.rs and tests/run.rs in 6.12
	# guests). The subshell, outside the group and not init, stays its parent
	# (`; exit` keeps bash from exec-ing the last command of the subshell).
	(cd "$cwd" && timeout -k 10 "$limit" "$@"; exit) >"$dir/out/$name.log" 2>&1 </dev/null
	local rc=$?
	echo "$rc $((($(now) - start) / 1000000))" >"$dir/out/$name.status"
	say "finished $name: exit $rc"
	[ "$rc" = 101 ] && grep -q '^test result: FAILED' "$dir/out/$name.log" || return 0
	local failed
	# (A file, not a process substitution: the guest's /dev has no /dev/fd.)
	sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$dir/out/$name.log" | sort -u >"$dir/out/$name.failed"
	mapfile -t failed <"$dir/out/$name.failed"
	[ "${#failed[@]}" -ge 1 ] && [ "${#failed[@]}" -le 2 ] || return 0
	say "retrying $name: ${failed[*]}"
	(cd "$cwd" && timeout -k 10 "$limit" "$@" --exact "${failed[@]}"; exit) >"$dir/out/$name.retry.log" 2>&1 </dev/null
	rc=$?
	echo "$rc" >"$dir/out/$name.retry"
	say "retried $name: exit $rc"
}

# run_shell COMMAND: a command for `vmtest --shell`, its output on the console.
run_shell() {
	say "shell: $1"
	bash -c "$1" </dev/null >/dev/console 2>&1
	local rc=$?
	echo "$rc 0" >"$dir/out/shell.status"
	say "shell exited $rc"
}

mkdir -p "$dir/out"
say "guest up: kernel $(uname -r)"
# shellcheck source=/dev/null
. "$dir/plan.sh"
: >"$dir/done"
sync
say "all done, powering off"
# Needs no init system: the sysrq trigger works whatever kernel.sysrq says. If
# it did not, PID 1 exiting panics the kernel and panic=-1 with qemu's -no-reboot
# ends qemu all the same.
echo o >/proc/sysrq-trigger
sleep 30
