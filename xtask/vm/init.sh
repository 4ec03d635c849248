#!/bin/busybox sh
# vmtest initramfs /init (busybox-static). Built by `cargo xtask vmtest`
# (xtask/src/vmtest.rs), one initramfs per kernel because it carries that
# kernel's modules.
#
# It loads the modules listed in /modules/order (dependencies first, resolved on
# the host with `modprobe --show-depends`), mounts the host's root (9p share
# `hostroot`, read-only) under a tmpfs overlay, so that every absolute path of
# the host (the test binaries, the portwatch binary baked into them, python3,
# gunicorn...) is the same in the guest while nothing the guest writes reaches
# the host, mounts the read-write share `results` (if given) at its host path,
# and switch_roots into the overlay, executing `vmtest.init=` (kernel command
# line) as PID 1: the harness's guest script, or e.g. /lib/systemd/systemd.
#
# Kernel command line parameters read here:
#   vmtest.init=PATH      program to exec as PID 1 in the new root (required)
#   vmtest.results=PATH   host path of the `results` share, mounted read-write there
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "vmtest-init: $*" > /dev/console; }
# The harness reads this line as "the kernel finished booting" (a panic before it
# is a boot failure, which it retries once: see boot() in xtask/src/vmtest.rs).
say "kernel booted"
die() {
	say "FATAL: $*"
	echo o > /proc/sysrq-trigger
	sleep 5
	poweroff -f
}

init=
results=
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	vmtest.init=*) init="${arg#vmtest.init=}" ;;
	vmtest.results=*) results="${arg#vmtest.results=}" ;;
	esac
done
[ -n "$init" ] || die "no vmtest.init= on the kernel command line"

for m in $(cat /modules/order); do
	insmod "/modules/$m" || say "insmod $m failed"
done

mkdir -p /lower /overlay /newroot
# msize: larger 9p messages make reading binaries and python modules faster.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower ||
	mount -t 9p -o trans=virtio,version=9p2000.L,ro hostroot /lower ||
	die "cannot mount the host root (9p tag hostroot)"
mount -t tmpfs -o mode=0755 tmpfs /overlay
mkdir -p /overlay/upper /overlay/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/overlay/upper,workdir=/overlay/work /newroot ||
	die "cannot mount the overlay"

# The host may itself be a container: its markers, seen through the overlay,
# would make the guest's systemd (--init /lib/systemd/systemd) believe it runs
# in one and ignore the kernel command line (systemd.unit=...). Hidden in the
# overlay only (whiteouts in the tmpfs), never removed from the host.
rm -f /newroot/.dockerenv /newroot/run/.containerenv

if [ -n "$results" ]; then
	mkdir -p "/newroot$results"
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "/newroot$results" ||
		die "cannot mount the results share at $results"
fi

[ -x "/newroot$init" ] || die "$init is not executable in the guest's root"
umount /proc /sys 2>/dev/null
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
say "switch_root to $init"
exec switch_root /newroot "$init"
