//! `cargo xtask vmtest`: the project's compiled test binaries, run inside qemu
//! guests booted with Debian's stock kernels of each supported series (6.1 and
//! 6.12 by default), one report per kernel.
//!
//! How a guest is made (nothing of the host's /boot or /lib/modules is touched):
//! - the newest generic `linux-image-<series>.*-amd64-unsigned` package of the
//!   series (`apt-cache`; the `-cloud` flavour has no 9p) is downloaded and
//!   unpacked with `dpkg-deb -x` under `target/vmtest/<release>/root`, and
//!   `depmod -b` indexes its modules;
//! - an initramfs (busybox-static, `xtask/vm/init.sh`, and the modules to reach
//!   the host's root plus the sock_diag ones, dependencies resolved on the host by
//!   `modprobe -d ROOT --show-depends`) mounts the host's `/` read-only over 9p
//!   under a tmpfs overlay and switch_roots into it. Every absolute path is thus
//!   the same as on the host: the test binaries, the portwatch binary their
//!   `env!("CARGO_BIN_EXE_portwatch")` names, python3 and gunicorn;
//! - PID 1 is then `xtask/vm/guest.sh` (mounts proc/sys/bpffs/tracefs/cgroup2,
//!   loopback up, `ulimit -n 20000`), which runs the generated `plan.sh` and
//!   powers the guest off; results (each binary's output and exit status) come
//!   back through a second, writable 9p share, `target/vmtest/<release>/results`.
//!
//! The test binaries are whatever `cargo test --release --no-run --workspace`
//! builds (see [`build_tests`]); [`HOST_ONLY`] lists those left to the host, and
//! the report names them. When one or two tests of a binary fail, guest.sh runs
//! them once more, alone: one that passes then is reported as flaky (with its
//! first failure, in the table, the failures section and the closing line) and
//! does not fail the run; one that fails again does, as do three failures or a
//! binary that crashed or timed out. qemu uses KVM only where a probe boot shows
//! it can run a stock kernel, TCG otherwise (see [`choose_accel`]).
//!
//! Any PID 1 can be booted the same way ([`boot`] takes the path of the init):
//! `--shell CMD` runs a command under guest.sh, `--init PATH` execs another init.
//! Booting systemd (e.g. to test deploy/portwatch.service) works:
//! `vmtest --kernel 6.12 --init /lib/systemd/systemd --append systemd.unit=poweroff.target`
//! boots the host's systemd and units and powers off (14 s under TCG). systemd
//! mounts proc, sys and cgroup2 itself; the initramfs has mounted the results
//! share already. [`systemd_test`] (`vmtest --systemd`, and the end of a full
//! run) is such a test: `xtask/vm/systemd-init.sh` (PID 1 first, from the
//! results share) installs deploy/'s unit, sysusers and tmpfiles files, the
//! release binary and a config into the overlay and execs systemd, which boots
//! into `portwatch-vmtest.service` (`systemd.unit=`) running
//! `xtask/vm/systemd-test.sh`; that writes `systemd.txt` and `systemd.status`
//! into the results share and ends with `systemctl poweroff`; the harness's
//! timeout kills qemu otherwise.
//!
//! Packages: [`ensure_vm_packages`] installs qemu-system-x86, busybox-static, cpio,
//! kmod and xz-utils when missing. `vmtest` calls it itself (a no-op when all are
//! there), and `cargo xtask setup --vm` calls it and fetches the kernels, for a
//! machine that should be ready before its first `vmtest`.
use std::{
    collections::HashSet,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{output, root, run};

/// The kernel series tested by default (`--kernel all`): the oldest supported
/// Debian kernel and the current one.
pub const DEFAULT_SERIES: &[&str] = &["6.1", "6.12"];

/// Modules the initramfs loads: virtio PCI and 9p to reach the host's root, the
/// overlay, an entropy source (the tests start python servers, which may want
/// random numbers early), and sock_diag for TCP and UDP, which portwatch queries.
/// Built-in ones are skipped. Anything else a test needs is autoloaded in the
/// guest from the unpacked modules (guest.sh links them in).
const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng", "inet_diag", "tcp_diag", "udp_diag"];

/// Test binaries (and, with a test name, single tests, passed to libtest as
/// `--skip`) that run on the host only: their assertions are about throughput,
/// which an emulated CPU cannot reach. `cargo xtask test` runs them on the host;
/// vmtest prints each one it leaves out, with the reason.
const HOST_ONLY: &[HostOnly] = &[
    HostOnly {
        binary: "storm",
        test: None,
        why: "throughput test (a 100k binds/s storm), meaningless in an emulated guest; `cargo xtask test` runs it on the host",
    },
    HostOnly {
        binary: "history",
        test: Some("the_timeline_renders_in_a_browser"),
        why: "headless Chromium takes minutes to start under emulation; the timeline is the same on every kernel",
    },
    HostOnly {
        binary: "remap",
        test: Some("two_pytest_suites_with_gunicorn_on_one_port_pass_in_parallel"),
        why: "two pytest sessions at once, each booting flask and gunicorn workers (six Python processes), can exceed the example \
              fixture's 30 s readiness timeout under emulation on a loaded host (seen on 6.12: workers still importing after 30 s); \
              the remapping itself is tested in the guests by the other remap tests",
    },
];

struct HostOnly {
    binary: &'static str,
    test: Option<&'static str>,
    why: &'static str,
}

/// Debian packages the guests need on the host, with a binary (or, for
/// busybox-static, the package itself) that shows each is there.
const PACKAGES: &[(&str, &str)] =
    &[("qemu-system-x86", "qemu-system-x86_64"), ("busybox-static", ""), ("cpio", "cpio"), ("kmod", "depmod"), ("xz-utils", "xz")];

/// Above this many host CPUs kept busy by other processes during a guest, the
/// report warns that timing-sensitive tests may have failed for that reason.
const BUSY_HOST_CPUS: f64 = 0.3;

fn host_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Guest resources: the suite runs a few python servers at a time.
const GUEST_MEMORY_MIB: u32 = 2048;
const GUEST_CPUS: u32 = 2;

/// Installs what the guests need, from Debian's packages, when missing.
/// busybox-static is checked as a package: the plain `busybox` package's binary is
/// dynamically linked and cannot run in the initramfs.
pub fn ensure_vm_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(pkg, bin)| if bin.is_empty() { !dpkg_installed(pkg) } else { !on_path(bin) })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg])).is_some_and(|s| s.contains("install ok installed"))
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|d| d.join(bin).is_file())
    })
}

/// Where vmtest keeps kernels, initramfs and results: `<target dir>/vmtest`.
fn cache_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => root().join(t),
        None => root().join("target"),
    };
    target.join("vmtest")
}

/// A stock kernel unpacked under the cache, ready to boot.
pub struct Kernel {
    /// The series asked for, e.g. `6.1`.
    pub series: String,
    /// `uname -r` in the guest, e.g. `6.1.0-54-amd64`.
    pub release: String,
    /// `target/vmtest/<release>`.
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// The unpacked `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// The newest generic (`-amd64-unsigned`, not `-cloud-`/`-rt-`) kernel image
/// package of a series, by apt-cache. Names look like
/// `linux-image-6.1.0-54-amd64-unsigned` and `linux-image-6.12.115+deb12-amd64-unsigned`.
fn newest_package(series: &str) -> Result<String> {
    let search = || -> Vec<String> {
        let pattern = format!("^linux-image-{}\\.", series.replace('.', "\\."));
        output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| package_version(name, series).is_some())
            .map(str::to_owned)
            .collect()
    };
    let mut names = search();
    if names.is_empty() {
        run(Command::new("apt-get").args(["update", "-q"]))?;
        names = search();
    }
    names
        .into_iter()
        .max_by_key(|n| version_key(package_version(n, series).unwrap_or_default()))
        .with_context(|| format!("apt-cache knows no linux-image-{series}.*-amd64-unsigned package"))
}

/// `6.1.0-54` of `linux-image-6.1.0-54-amd64-unsigned`, when the name is the
/// generic flavour of `series`.
fn package_version<'a>(name: &'a str, series: &str) -> Option<&'a str> {
    let v = name.strip_prefix("linux-image-")?.strip_suffix("-amd64-unsigned")?;
    let rest = v.strip_prefix(series)?.strip_prefix('.')?;
    // Only digits, dots, and the ABI (`-54`) or Debian (`+deb12`) suffix: a flavour
    // (`-cloud`, `-rt`) has letters after a dash.
    let ok = rest
        .split(['-', '+'])
        .enumerate()
        .all(|(i, part)| !part.is_empty() && (part.chars().all(|c| c.is_ascii_digit() || c == '.') || (i > 0 && part.starts_with("deb"))));
    ok.then_some(v)
}

/// Every run of digits as a number, so that 6.12.115 > 6.12.99 and 6.1.0-54 > 6.1.0-9.
fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// The series of a release: `6.12` of `6.12.115+deb12-amd64`.
fn series_of(release: &str) -> Option<String> {
    let mut parts = release.split(['.', '-', '+']);
    Some(format!("{}.{}", parts.next()?, parts.next()?))
}

/// Downloads and unpacks the newest kernel of `series` (once; later runs find it
/// in the cache), drops older releases of the same series from the cache, and
/// builds its initramfs.
pub fn fetch_kernel(series: &str) -> Result<Kernel> {
    let package = newest_package(series)?;
    let release = package
        .strip_prefix("linux-image-")
        .and_then(|p| p.strip_suffix("-unsigned"))
        .with_context(|| format!("unexpected package name {package}"))?
        .to_owned();
    let cache = cache_dir();
    let dir = cache.join(&release);
    let unpacked = dir.join("root");
    let marker = dir.join("unpacked");
    if !marker.exists() {
        eprintln!("xtask: vmtest: fetching {package}");
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir)?;
        // As root, apt drops to the `_apt` user to download into the current
        // directory, which it may not be able to write: download as root.
        let download =
            || run(Command::new("apt-get").current_dir(&dir).args(["download", "-q", "-o", "APT::Sandbox::User=root", &package]));
        if download().is_err() {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            download()?;
        }
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        fs::remove_file(&deb)?;
        run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&release))?;
        fs::write(&marker, format!("{package}\n"))?;
        prune_series(&cache, series, &release);
    }
    let vmlinuz = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} is missing (remove {} to fetch it again)", vmlinuz.display(), dir.display());
    }
    let modules = unpacked.join("lib/modules").join(&release);
    let initramfs = build_initramfs(&dir, &unpacked, &release)?;
    Ok(Kernel { series: series.to_owned(), release, dir, vmlinuz, initramfs, modules })
}

/// Older releases of a series are not used again: Debian supersedes them.
fn prune_series(cache: &Path, series: &str, keep: &str) {
    let Ok(entries) = fs::read_dir(cache) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name != keep && name.ends_with("-amd64") && series_of(&name).as_deref() == Some(series) {
            eprintln!("xtask: vmtest: removing superseded {name} from the cache");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The initramfs: busybox-static, init.sh and [`MODULES`] with their dependencies,
/// decompressed (busybox's insmod reads plain .ko files only). Rebuilt on every
/// run: it takes about a second and follows any change to init.sh.
fn build_initramfs(dir: &Path, unpacked: &Path, release: &str) -> Result<PathBuf> {
    let stage = dir.join("initramfs");
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    fs::create_dir_all(stage.join("bin"))?;
    fs::create_dir_all(stage.join("modules"))?;
    fs::copy("/bin/busybox", stage.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    write_executable(&stage.join("init"), include_str!("../vm/init.sh"))?;

    let mut order: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let deps = Command::new("modprobe")
            .arg("-d")
            .arg(unpacked)
            .args(["-S", release, "--show-depends", m])
            .output()
            .context("running modprobe (kmod)")?;
        if !deps.status.success() {
            bail!("modprobe --show-depends {m} for {release}: {}", String::from_utf8_lossy(&deps.stderr).trim());
        }
        for line in String::from_utf8_lossy(&deps.stdout).lines() {
            // `insmod PATH [options]` or `builtin NAME`.
            let mut words = line.split_whitespace();
            if words.next() == Some("insmod") {
                if let Some(p) = words.next() {
                    let p = PathBuf::from(p);
                    if !order.contains(&p) {
                        order.push(p);
                    }
                }
            }
        }
    }
    let mut list = String::new();
    for src in &order {
        let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (plain, decompress) = if let Some(base) = name.strip_suffix(".xz") {
            (base.to_owned(), Some("xz"))
        } else if let Some(base) = name.strip_suffix(".zst") {
            (base.to_owned(), Some("zstd"))
        } else if let Some(base) = name.strip_suffix(".gz") {
            (base.to_owned(), Some("gzip"))
        } else {
            (name.clone(), None)
        };
        let dst = stage.join("modules").join(&plain);
        match decompress {
            None => {
                fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
            }
            Some(tool) => {
                let out = fs::File::create(&dst)?;
                let status = Command::new(tool).arg("-dc").arg(src).stdout(out).status().with_context(|| format!("running {tool}"))?;
                if !status.success() {
                    bail!("{tool} -dc {} failed: {status}", src.display());
                }
            }
        }
        list.push_str(&plain);
        list.push('\n');
    }
    fs::write(stage.join("modules/order"), list)?;
    let image = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .current_dir(&stage)
        .args(["-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet > \"$1\"", "sh"])
        .arg(&image)
        .status()
        .context("running cpio")?;
    if !status.success() {
        bail!("building {} failed: {status}", image.display());
    }
    Ok(image)
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// How qemu runs the guest's CPUs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when a probe boot shows it runs the stock kernels, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// KVM or TCG, and why.
///
/// `/dev/kvm` existing is not enough: on a host whose KVM is PVM (a
/// paravirtualized KVM for running VMs inside a VM without nested
/// virtualization, module `kvm_pvm`), only PVM-enabled guest kernels run; a stock
/// kernel stops in KVM's instruction emulator at its first instructions ("KVM
/// internal error. Suberror: 1 ... emulation failure") and qemu then waits
/// forever. So: no usable /dev/kvm, or kvm_pvm loaded without kvm_intel/kvm_amd,
/// means TCG at once; otherwise a probe boots the first kernel under KVM to the
/// guest script (a few seconds where KVM works), and KVM is used only if that
/// boot finished. The probe stops at the first "KVM internal error" line and
/// after 60 s at most. (Under TCG a guest boots in about 10 s.)
fn choose_accel(choice: AccelChoice, probe_kernel: &Kernel) -> Result<(Accel, String)> {
    match choice {
        AccelChoice::Kvm => return Ok((Accel::Kvm, "--accel kvm".into())),
        AccelChoice::Tcg => return Ok((Accel::Tcg, "--accel tcg".into())),
        AccelChoice::Auto => {}
    }
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Ok((Accel::Tcg, "no usable /dev/kvm".into()));
    }
    let loaded = |m: &str| Path::new("/sys/module").join(m).exists();
    if loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd") {
        return Ok((Accel::Tcg, "/dev/kvm is PVM (kvm_pvm), which runs only PVM guest kernels, not stock ones".into()));
    }
    let results = probe_kernel.dir.join("kvm-probe");
    let outcome = boot(&Boot {
        kernel: probe_kernel,
        accel: Accel::Kvm,
        results: &results,
        init: Init::Script(Plan::shell("true")),
        append: "",
        timeout: Duration::from_secs(60),
        echo: Echo::Nothing,
        abort_on: &["KVM internal error", "failed to initialize kvm", "KVM: entry failed"],
    })?;
    if outcome.finished {
        Ok((Accel::Kvm, format!("a KVM probe boot of {} finished in {:.1}s", probe_kernel.release, outcome.elapsed.as_secs_f64())))
    } else {
        Ok((Accel::Tcg, format!("a KVM probe boot of {} did not finish ({})", probe_kernel.release, outcome.why_unfinished())))
    }
}

/// What the guest runs as PID 1 after the initramfs.
pub enum Init<'a> {
    /// guest.sh with this plan (the test binaries, or a shell command).
    Script(Plan),
    /// Any program of the host's root, e.g. `/lib/systemd/systemd`.
    Program(&'a Path),
    /// Files written into the results share (name, text, executable) once it is
    /// emptied; the one named `init` is PID 1 (e.g. a script that prepares the
    /// overlay and execs systemd: [`systemd_test`]).
    Staged { files: Vec<(&'static str, String)>, init: &'static str },
}

/// plan.sh: what guest.sh runs, as shell lines.
pub struct Plan(String);

impl Plan {
    pub fn shell(cmd: &str) -> Plan {
        Plan(format!("run_shell {}\n", sh_quote(cmd)))
    }
}

/// Which console lines reach the terminal: all of them (`--shell`, `--init`),
/// the guest script's progress lines, or none (the KVM probe). All of them go to
/// `results/console.log`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    All,
    Progress,
    Nothing,
}

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub accel: Accel,
    /// Emptied, then shared read-write with the guest at the same path.
    pub results: &'a Path,
    pub init: Init<'a>,
    /// More kernel command line.
    pub append: &'a str,
    pub timeout: Duration,
    pub echo: Echo,
    /// Console lines that mean the guest will not get anywhere: qemu is killed.
    pub abort_on: &'a [&'a str],
}

pub struct Outcome {
    /// The guest script wrote `done` (always false for [`Init::Program`]).
    pub finished: bool,
    /// The initramfs's init printed its first line: the kernel finished booting.
    pub booted: bool,
    /// The console of an earlier boot whose kernel panicked before its init ran,
    /// and which was therefore booted once more (see [`boot`]).
    pub boot_panic: Option<PathBuf>,
    pub timed_out: bool,
    /// The console line that made the harness kill qemu.
    pub aborted: Option<String>,
    pub elapsed: Duration,
    pub console: PathBuf,
    pub qemu_status: Option<std::process::ExitStatus>,
    /// How many host CPUs everything but qemu kept busy, on average, while the
    /// guest ran. The tests wait for servers with fixed timeouts, and an emulated
    /// guest sharing a small host with a compiler can miss them: the report says so.
    pub other_cpus: Option<f64>,
}

impl Outcome {
    /// What the reports say of a boot retried after a panic before its init.
    fn retry_note(&self) -> Option<String> {
        self.boot_panic
            .as_ref()
            .map(|first| format!("booted twice: the first boot's kernel panicked before its init ran ({})", first.display()))
    }

    fn why_unfinished(&self) -> String {
        if self.timed_out {
            format!("killed after {:.0}s", self.elapsed.as_secs_f64())
        } else if let Some(line) = &self.aborted {
            format!("\"{line}\"")
        } else {
            match self.qemu_status {
                Some(s) => format!("qemu exited ({s}) before the guest script finished"),
                None => "qemu did not run".into(),
            }
        }
    }
}

/// What marks the kernel's own boot as over: the initramfs's first console line.
const BOOTED_LINE: &str = "vmtest-init: kernel booted";
/// The console line of a kernel panic: it ends a boot at once (`abort_on`).
const PANIC_LINE: &str = "Kernel panic - not syncing";

/// Boots `kernel` under qemu and waits for it to power off, killing it at the
/// timeout (or at an `abort_on` line). The guest sees the host's root through the
/// initramfs's overlay and `results` read-write at the same path; the serial
/// console is saved to `results/console.log`.
///
/// A kernel that panics before its init runs is booted once more. Under
/// multi-threaded TCG the stock kernels rarely (once in many CI runs) die in their
/// own late initcalls ("Fatal exception in interrupt" at `sched_clock_cpu`, just
/// past a static branch that `sched_clock_init_late` patches: most likely the
/// other vCPU running a stale translation of code being patched; the oops line
/// itself was not kept that time). Nothing of the project has run then, so that
/// boot says nothing about it; its console is kept as `console-boot-panic.log`
/// and the report names the retry. A panic after the init started is never
/// retried.
pub fn boot(b: &Boot<'_>) -> Result<Outcome> {
    let first = boot_once(b)?;
    if first.booted || first.aborted.as_deref() != Some(PANIC_LINE) {
        return Ok(first);
    }
    // The next boot empties the results directory: the console is kept in memory.
    let panicked = fs::read(&first.console).with_context(|| format!("reading {}", first.console.display()))?;
    eprintln!(
        "xtask: vmtest: {} ({}): the kernel panicked while booting, before its init ran; booting it once more",
        b.kernel.series, b.kernel.release
    );
    let mut again = boot_once(b)?;
    let saved = b.results.join("console-boot-panic.log");
    fs::write(&saved, panicked).with_context(|| format!("writing {}", saved.display()))?;
    again.boot_panic = Some(saved);
    Ok(again)
}

fn boot_once(b: &Boot<'_>) -> Result<Outcome> {
    let results = b.results;
    let text = results.to_str().context("results path is not UTF-8")?;
    if text.contains(|c: char| c.is_whitespace() || c == ',') {
        bail!("{text}: vmtest needs a path without spaces or commas (kernel command line, qemu -virtfs)");
    }
    if results.exists() {
        fs::remove_dir_all(results).with_context(|| format!("emptying {text}"))?;
    }
    fs::create_dir_all(results.join("out"))?;
    let init = match &b.init {
        Init::Script(plan) => {
            let guest = results.join("guest.sh");
            write_executable(&guest, include_str!("../vm/guest.sh"))?;
            fs::write(results.join("env.sh"), guest_env(b.kernel))?;
            fs::write(results.join("plan.sh"), &plan.0)?;
            guest
        }
        Init::Program(p) => p.to_path_buf(),
        Init::Staged { files, init } => {
            for (name, text) in files {
                write_executable(&results.join(name), text)?;
            }
            results.join(init)
        }
    };
    let mut cmdline =
        format!("console=ttyS0 panic=-1 loglevel=4 vmtest.init={} vmtest.results={text}", init.to_str().context("init path is not UTF-8")?);
    if !b.append.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(b.append);
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    match b.accel {
        // Multi-threaded TCG: one host thread per vCPU.
        Accel::Tcg => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
        Accel::Kvm => qemu.args(["-accel", "kvm", "-cpu", "host"]),
    };
    qemu.args(["-m", &GUEST_MEMORY_MIB.to_string(), "-smp", &GUEST_CPUS.to_string()])
        // No default devices (no NIC: the guest has loopback only), no display,
        // and a reboot (e.g. the panic when PID 1 exits) ends qemu.
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&b.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&b.kernel.initramfs)
        .args(["-append", &cmdline, "-serial", "stdio"])
        // The host's root, read-only; multidevs=remap keeps inode numbers unique
        // across the host's mounts (/, /proc, /dev...) seen through one share.
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .args(["-virtfs", &format!("local,path={text},mount_tag=results,security_model=none")])
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let console_path = results.join("console.log");
    let mut console = fs::File::create(&console_path)?;
    let start = Instant::now();
    let cpu_before = (host_busy_ticks(), children_ticks());
    let mut child = qemu.spawn().context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(spawn_line_reader(out, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(spawn_line_reader(err, tx.clone()));
    }
    drop(tx);
    let tag = format!("[{}]", b.kernel.series);
    let deadline = start + b.timeout;
    let mut timed_out = false;
    let mut aborted = None;
    let mut booted = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let _ = writeln!(console, "{line}");
                booted |= line.contains(BOOTED_LINE);
                match b.echo {
                    Echo::All => eprintln!("{tag} {line}"),
                    Echo::Progress if line.starts_with("vmtest:") => eprintln!("{tag} {line}"),
                    _ => {}
                }
                if let Some(pat) = b.abort_on.iter().find(|p| line.contains(**p)) {
                    aborted = Some((*pat).to_owned());
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out || aborted.is_some() {
        // Our own child, by its handle: SIGKILL, then reap it.
        let _ = child.kill();
    }
    let qemu_status = child.wait().ok();
    for r in readers {
        let _ = r.join();
    }
    // Lines that arrived between the kill and the pipes closing.
    for line in rx.try_iter() {
        let _ = writeln!(console, "{line}");
    }
    let elapsed = start.elapsed();
    let other_cpus = match (cpu_before, (host_busy_ticks(), children_ticks())) {
        ((Some(h0), Some(c0)), (Some(h1), Some(c1))) if elapsed.as_secs_f64() > 0.0 => {
            Some(h1.saturating_sub(h0).saturating_sub(c1.saturating_sub(c0)) as f64 / TICKS_PER_SEC / elapsed.as_secs_f64())
        }
        _ => None,
    };
    let finished = matches!(b.init, Init::Script(_)) && results.join("done").exists();
    // The guest saved its kernel's BTF: keep it beside the kernel's packages, where
    // portwatch's unit tests resolve offsets against every saved kernel.
    if let Some(dir) = results.parent() {
        let _ = fs::copy(results.join("vmlinux.btf"), dir.join("vmlinux.btf"));
    }
    Ok(Outcome { finished, booted, boot_panic: None, timed_out, aborted, elapsed, console: console_path, qemu_status, other_cpus })
}

/// The console lines a report shows for a guest that did not finish: from the
/// kernel's first oops line (its kind, e.g. "Oops: int3", and the trace) when
/// there is one, else the last lines.
fn console_excerpt(console: &Path) -> Vec<String> {
    let text = fs::read_to_string(console).unwrap_or_default();
    excerpt_of(&text)
}

fn excerpt_of(text: &str) -> Vec<String> {
    const MARKS: [&str; 5] = ["Oops:", "BUG:", "general protection fault", "Kernel panic", "WARNING:"];
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| MARKS.iter().any(|m| l.contains(m))).unwrap_or_else(|| lines.len().saturating_sub(15));
    lines[start..].iter().take(30).map(|l| (*l).to_owned()).collect()
}

/// USER_HZ, the unit of /proc/stat and /proc/PID/stat times (100 on Linux/x86).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time the whole host spent busy (user, nice, system, irq, softirq, and
/// steal: time its hypervisor gave to others), from /proc/stat.
fn host_busy_ticks() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(cpu.first()? + cpu.get(1)? + cpu.get(2)? + cpu.get(5)? + cpu.get(6)? + cpu.get(7).copied().unwrap_or(0))
}

/// CPU time of this process's waited-for children (cutime + cstime): across a
/// boot, qemu's.
fn children_ticks() -> Option<u64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 16 and 17 of stat(5); `rest` starts at field 3.
    Some(f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?)
}

fn spawn_line_reader<R: Read + Send + 'static>(r: R, tx: mpsc::Sender<String>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// The guest's environment (env.sh): the host's PATH and HOME (python3 may be a
/// pyenv shim under /root), locale and Rust/Python settings, and where the guest
/// kernel's modules are.
///
/// When `python3` on the host's PATH is a shim (pyenv's: a bash script that runs
/// `pyenv exec`, which finds and execs the real interpreter), the directory of
/// the interpreter it resolves to goes first on the guest's PATH: the same
/// python3 and gunicorn, without the 3-5 s the shim costs per process in an
/// emulated guest, where the tests start servers with fixed readiness timeouts.
fn guest_env(kernel: &Kernel) -> String {
    let mut env = String::new();
    for var in
        ["PATH", "HOME", "USER", "LANG", "LC_ALL", "PYENV_ROOT", "PYENV_VERSION", "PYTHONPATH", "VIRTUAL_ENV", "RUST_BACKTRACE", "RUST_LOG"]
    {
        if let Ok(v) = std::env::var(var) {
            let _ = writeln!(env, "export {var}={}", sh_quote(&v));
        }
    }
    if let Some(dir) = python_behind_shim() {
        let _ = writeln!(env, "export PATH={}:\"$PATH\"", sh_quote(&dir.to_string_lossy()));
    }
    let _ = writeln!(env, "export VMTEST_MODULES={}", sh_quote(&kernel.modules.to_string_lossy()));
    env
}

/// The real interpreter's directory when `python3` on PATH is a script (a shim).
fn python_behind_shim() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let on_path = std::env::split_paths(&path).map(|d| d.join("python3")).find(|p| p.is_file())?;
    let mut head = [0u8; 2];
    fs::File::open(&on_path).ok()?.read_exact(&mut head).ok()?;
    if &head != b"#!" {
        return None;
    }
    let exe = output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))?;
    let dir = Path::new(exe.trim()).parent()?.to_path_buf();
    (dir.is_absolute() && dir.join("python3").is_file()).then_some(dir)
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A libtest binary that cargo built for the tests.
struct TestBin {
    /// `who`, or `portwatch (lib)` for unit tests.
    name: String,
    /// File name for its log and status in the guest (unique).
    file: String,
    target: String,
    /// `lib`, `bin` (unit tests) or `test`.
    kind: String,
    exe: PathBuf,
    /// Its package's root: `cargo test` runs test binaries there.
    cwd: PathBuf,
}

/// Builds the release binaries the integration tests run and every test binary
/// of the workspace (release, as `cargo xtask test`), and lists the latter from
/// cargo's JSON messages rather than by path, so it does not matter which package
/// holds the integration tests (today the `portwatch-tests` member at tests/,
/// outside default-members: `--workspace` picks it up). The kernel crate only
/// builds for the BPF target (portwatch's build.rs builds it) and xtask is this
/// tool: both are left out.
fn build_tests() -> Result<Vec<TestBin>> {
    // The integration tests find target/release/portwatch by path (baked in at
    // compile time); `cargo test` builds only test executables.
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "portwatch"]))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["test", "--release", "--no-run", "--workspace", "--exclude", "portwatch-ebpf", "--exclude", "xtask"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().context("running cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut bins: Vec<TestBin> = Vec::new();
    let mut seen = HashSet::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else { continue };
        let target = msg["target"]["name"].as_str().unwrap_or_default().to_owned();
        let kind = msg["target"]["kind"][0].as_str().unwrap_or_default().to_owned();
        let manifest = PathBuf::from(msg["manifest_path"].as_str().unwrap_or_default());
        let cwd = manifest.parent().map(Path::to_path_buf).unwrap_or_else(root);
        let name = if kind == "test" { target.clone() } else { format!("{target} ({kind})") };
        let mut file = format!("{}-{kind}", target.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '-', "_"));
        while !seen.insert(file.clone()) {
            file.push('_');
        }
        bins.push(TestBin { name, file, target, kind, exe: PathBuf::from(exe), cwd });
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test --no-run failed: {status}");
    }
    if bins.is_empty() {
        bail!("cargo built no test binaries");
    }
    // Cargo reports them in build order: unit tests first, then by name, so that
    // reports compare line by line.
    bins.sort_by_key(|b| (b.kind == "test", b.name.clone()));
    Ok(bins)
}

/// What one test binary did in one guest.
struct BinResult {
    name: String,
    passed: u64,
    failed: u64,
    ignored: u64,
    status: String,
    ok: bool,
    secs: f64,
    /// (test, first line of its panic message)
    failures: Vec<(String, String)>,
    /// Tests that failed, then passed when run again alone (guest.sh's retry):
    /// (test, the first run's message). Counted as passed.
    flaky: Vec<(String, String)>,
    log: PathBuf,
}

fn read_result(bin: &TestBin, out: &Path) -> BinResult {
    let log = out.join(format!("{}.log", bin.file));
    let text = fs::read_to_string(&log).unwrap_or_default();
    let status_line = fs::read_to_string(out.join(format!("{}.status", bin.file))).ok();
    let mut r = BinResult {
        name: bin.name.clone(),
        passed: 0,
        failed: 0,
        ignored: 0,
        status: String::new(),
        ok: false,
        secs: 0.0,
        failures: Vec::new(),
        flaky: Vec::new(),
        log,
    };
    let Some(status_line) = status_line else {
        // Output but no status: it was running when the guest died or was killed.
        r.status = if r.log.exists() { "UNFINISHED".into() } else { "NOT RUN".into() };
        return r;
    };
    let mut it = status_line.split_whitespace();
    let rc: i32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(-1);
    r.secs = it.next().and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0) / 1000.0;
    let summary = summary(&text);
    if let Some(s) = summary {
        r.passed = count(s, "passed");
        r.failed = count(s, "failed");
        r.ignored = count(s, "ignored");
    }
    r.failures = failures(&text);
    r.ok = rc == 0 && summary.is_some();
    r.status = match rc {
        0 if summary.is_some() => "ok".into(),
        0 => "NO RESULT".into(),
        124 | 137 => "TIMEOUT".into(),
        _ if summary.is_some() => "FAILED".into(),
        _ => format!("CRASHED (exit {rc})"),
    };
    if r.status == "FAILED" {
        retried(&mut r, bin, out);
    }
    r
}

/// Folds in guest.sh's re-run of a binary's failed tests: when every test that
/// failed passed alone, the binary is ok and those tests are flaky; otherwise
/// it stays failed, and its status says the re-run failed too.
fn retried(r: &mut BinResult, bin: &TestBin, out: &Path) {
    let Some(rc) = fs::read_to_string(out.join(format!("{}.retry", bin.file))).ok().and_then(|s| s.trim().parse::<i32>().ok()) else {
        return;
    };
    let text = fs::read_to_string(out.join(format!("{}.retry.log", bin.file))).unwrap_or_default();
    let passed_alone = summary(&text).filter(|s| s.starts_with("test result: ok.")).map(|s| count(s, "passed"));
    let n = r.failures.len() as u64;
    if rc == 0 && n > 0 && r.failed == n && passed_alone == Some(n) {
        r.flaky = std::mem::take(&mut r.failures);
        r.passed += n;
        r.failed = 0;
        r.ok = true;
        r.status = "ok (flaky)".into();
    } else {
        r.status = "FAILED (again when run alone)".into();
    }
}

/// libtest's last summary line (`test result: ok. 3 passed; 0 failed; ...`).
fn summary(log: &str) -> Option<&str> {
    log.lines().rev().find(|l| l.starts_with("test result:"))
}

/// The number before `what` (`passed`, `failed`, `ignored`) in a summary line; 0
/// when it is not there.
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| part.trim().strip_suffix(what).map(str::trim).map(|n| n.rsplit(' ').next().unwrap_or(n).parse().unwrap_or(0)))
        .unwrap_or(0)
}

/// The tests libtest marked FAILED, each with the first line of its panic message.
fn failures(log: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = log.lines().collect();
    let mut names: Vec<String> =
        lines.iter().filter_map(|l| l.strip_prefix("test ").and_then(|l| l.strip_suffix(" ... FAILED"))).map(str::to_owned).collect();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let header = format!("---- {name} stdout ----");
            let msg = lines
                .iter()
                .position(|l| *l == header)
                .and_then(|start| {
                    let block = &lines[start + 1..];
                    let end = block.iter().position(|l| l.starts_with("---- ") || *l == "failures:").unwrap_or(block.len());
                    let block = &block[..end];
                    let at = block.iter().position(|l| l.contains("panicked at"))?;
                    // `thread 'x' panicked at file:line:col:` then the message.
                    let place = block[at].split("panicked at ").nth(1).unwrap_or_default().trim_end_matches(':');
                    let first = block[at + 1..].iter().find(|l| !l.trim().is_empty()).copied().unwrap_or_default();
                    Some(format!("{} ({place})", shorten(first, 300)))
                })
                .unwrap_or_else(|| "(no panic message in the log)".into());
            (name, msg)
        })
        .collect()
}

/// At most `max` characters of `s` (the log has the whole line).
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{} [...]", &s[..i]),
        None => s.to_owned(),
    }
}

/// The kernels to test: a series (`6.1`), a comma list, or `all`.
fn selected_series(kernel: &str) -> Vec<String> {
    if kernel == "all" {
        return DEFAULT_SERIES.iter().map(|s| (*s).to_owned()).collect();
    }
    kernel.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()
}

pub struct Options {
    pub kernel: String,
    pub accel: AccelChoice,
    pub shell: Option<String>,
    pub init: Option<PathBuf>,
    pub append: String,
    pub timeout: u64,
    pub test_timeout: u64,
    pub args: Vec<String>,
    /// Only the systemd test ([`systemd_test`]), not the test binaries.
    pub systemd_only: bool,
}

/// `cargo xtask setup --vm`: the packages, and each default kernel with its
/// initramfs, so that `vmtest` starts booting at once.
pub fn setup_vm() -> Result<()> {
    ensure_vm_packages()?;
    for series in DEFAULT_SERIES {
        let k = fetch_kernel(series)?;
        eprintln!("xtask: vmtest: {series}: {} ready in {}", k.release, k.dir.display());
    }
    Ok(())
}

pub fn vmtest(o: &Options) -> Result<()> {
    let started = Instant::now();
    let series = selected_series(&o.kernel);
    if series.is_empty() {
        bail!("--kernel: give a series such as 6.1, a comma list, or all");
    }
    ensure_vm_packages()?;
    if o.systemd_only {
        crate::prepare()?;
        let kernels = series.iter().map(|s| fetch_kernel(s)).collect::<Result<Vec<_>>>()?;
        let first = kernels.first().context("no kernel")?;
        let (accel, why) = choose_accel(o.accel, first)?;
        eprintln!("xtask: vmtest: accelerator {}: {why}", accel.name());
        let bad: Vec<String> = kernels
            .iter()
            .filter_map(|k| match systemd_test(k, accel) {
                Ok(true) => None,
                Ok(false) => Some(k.series.clone()),
                Err(e) => {
                    eprintln!("xtask: vmtest --systemd: {}: {e:#}", k.series);
                    Some(k.series.clone())
                }
            })
            .collect();
        println!("\nxtask: vmtest took {:.0}s", started.elapsed().as_secs_f64());
        println!("vmtest --systemd: {} kernel(s) passed, {} failed", kernels.len() - bad.len(), bad.len());
        if !bad.is_empty() {
            eprintln!("xtask: vmtest --systemd failed on {}", bad.join(", "));
            std::process::exit(1);
        }
        return Ok(());
    }
    let tests = if o.shell.is_none() && o.init.is_none() {
        crate::prepare()?;
        crate::ensure_python_packages()?;
        crate::ensure_promtool()?;
        Some(build_tests()?)
    } else {
        None
    };
    let kernels = series.iter().map(|s| fetch_kernel(s)).collect::<Result<Vec<_>>>()?;
    let first = kernels.first().context("no kernel")?;
    let (accel, why) = choose_accel(o.accel, first)?;
    eprintln!("xtask: vmtest: accelerator {}: {why}", accel.name());
    let timeout = Duration::from_secs(o.timeout);

    let Some(tests) = tests else {
        // --shell / --init: boot each kernel, the console on the terminal.
        let mut bad = Vec::new();
        for k in &kernels {
            let results = k.dir.join("results");
            let init = match (&o.shell, &o.init) {
                (_, Some(p)) => Init::Program(p.as_path()),
                (Some(cmd), None) => Init::Script(Plan::shell(cmd)),
                (None, None) => bail!("internal: neither --shell nor --init"),
            };
            let shell = matches!(init, Init::Script(_));
            // A panic ends the boot at once (and one before the init is retried).
            let abort_on = &[PANIC_LINE];
            let out = boot(&Boot { kernel: k, accel, results: &results, init, append: &o.append, timeout, echo: Echo::All, abort_on })?;
            let rc =
                fs::read_to_string(results.join("out/shell.status")).ok().and_then(|s| s.split_whitespace().next()?.parse::<i32>().ok());
            let verdict = match (shell, out.finished, rc) {
                (true, true, Some(0)) => "exit 0".to_owned(),
                (true, true, Some(n)) => format!("exit {n}"),
                (true, _, _) => format!("did not finish: {}", out.why_unfinished()),
                (false, _, _) => format!(
                    "guest ended after {:.0}s ({})",
                    out.elapsed.as_secs_f64(),
                    if out.timed_out { "killed at the timeout" } else { "powered off" }
                ),
            };
            let mut load = out.other_cpus.map(|o| format!("; other host load {o:.2} CPUs")).unwrap_or_default();
            if let Some(note) = out.retry_note() {
                let _ = write!(load, "; {note}");
            }
            eprintln!("xtask: vmtest: {} ({}): {verdict}{load}; console in {}", k.series, k.release, out.console.display());
            if shell && !(out.finished && rc == Some(0)) {
                bad.push(k.series.clone());
            }
        }
        if !bad.is_empty() {
            bail!("the command failed or did not finish on {}", bad.join(", "));
        }
        return Ok(());
    };

    let skipped: Vec<&HostOnly> = HOST_ONLY.iter().filter(|h| tests.iter().any(|t| t.target == h.binary)).collect();
    let mut plan = String::new();
    for t in &tests {
        let whole = HOST_ONLY.iter().any(|h| h.binary == t.target && h.test.is_none());
        if whole {
            continue;
        }
        let _ = write!(
            plan,
            "run_test {} {} {} {}",
            sh_quote(&t.file),
            sh_quote(&t.cwd.to_string_lossy()),
            o.test_timeout,
            sh_quote(&t.exe.to_string_lossy())
        );
        for h in HOST_ONLY.iter().filter(|h| h.binary == t.target) {
            if let Some(test) = h.test {
                let _ = write!(plan, " --skip {}", sh_quote(test));
            }
        }
        for a in &o.args {
            let _ = write!(plan, " {}", sh_quote(a));
        }
        plan.push('\n');
    }

    let mut reports = Vec::new();
    for k in &kernels {
        eprintln!("xtask: vmtest: booting {} ({}, {})", k.series, k.release, accel.name());
        let results = k.dir.join("results");
        let out = boot(&Boot {
            kernel: k,
            accel,
            results: &results,
            init: Init::Script(Plan(plan.clone())),
            append: "",
            timeout,
            echo: Echo::Progress,
            abort_on: &[PANIC_LINE, "KVM internal error"],
        })?;
        let bins: Vec<BinResult> = tests
            .iter()
            .filter(|t| !HOST_ONLY.iter().any(|h| h.binary == t.target && h.test.is_none()))
            .map(|t| read_result(t, &results.join("out")))
            .collect();
        reports.push((k, out, bins));
    }

    // The report: one table per kernel, then the failures, then one closing line.
    let mut total_passed = 0;
    let mut total_failed = 0;
    let mut total_flaky = 0;
    let mut bad_kernels = Vec::new();
    let mut text = String::new();
    // The failures again, after the systemd guests' output, so that the tail
    // of a long log (all a CI page may show) still names them.
    let mut digest = String::new();
    for (k, out, bins) in &reports {
        let _ = writeln!(text, "\n== kernel {} ({}, {}, {:.0}s) ==", k.series, k.release, accel.name(), out.elapsed.as_secs_f64());
        if let Some(note) = out.retry_note() {
            let _ = writeln!(text, "  {note}");
        }
        if let Some(other) = out.other_cpus {
            let _ = write!(text, "  other host load: {other:.2} of {} CPUs busy outside this guest", host_cpus());
            if other > BUSY_HOST_CPUS {
                let _ =
                    write!(text, " (a busy host slows the emulated guest: tests that wait with fixed timeouts may fail for that alone)");
            }
            text.push('\n');
        }
        let width = bins.iter().map(|b| b.name.len()).max().unwrap_or(6).max(6);
        let _ = writeln!(text, "  {:<width$}  {:>6}  {:>6}  {:>7}  {:>7}  STATUS", "BINARY", "PASSED", "FAILED", "IGNORED", "TIME");
        for b in bins {
            let _ =
                writeln!(text, "  {:<width$}  {:>6}  {:>6}  {:>7}  {:>6.1}s  {}", b.name, b.passed, b.failed, b.ignored, b.secs, b.status);
        }
        for h in &skipped {
            match h.test {
                None => {
                    let _ = writeln!(text, "  {:<width$}  skipped in the guest (host-only): {}", h.binary, h.why);
                }
                Some(t) => {
                    let _ = writeln!(text, "  {:<width$}  test {t} skipped in the guest (host-only): {}", h.binary, h.why);
                }
            }
        }
        let mut kernel_ok = out.finished;
        for b in bins {
            total_passed += b.passed;
            total_failed += b.failed;
            if !b.ok {
                kernel_ok = false;
                // A binary that died, hung or never ran counts as one failure
                // besides the tests it reported failing.
                if b.failed == 0 {
                    total_failed += 1;
                }
            }
        }
        let mut failed = String::new();
        for b in bins.iter().filter(|b| !b.ok) {
            let _ = writeln!(failed, "  {} {}: {}", b.name, b.status, b.log.display());
            for (test, msg) in &b.failures {
                let _ = writeln!(failed, "    {test}: {msg}");
            }
        }
        if !out.finished {
            let _ = writeln!(failed, "  GUEST DID NOT FINISH: {}; console: {}", out.why_unfinished(), out.console.display());
            for l in console_excerpt(&out.console) {
                let _ = writeln!(failed, "    | {l}");
            }
        }
        if !failed.is_empty() {
            text.push_str(&failed);
            let _ = write!(digest, "\nfailed on kernel {}:\n{failed}", k.series);
        }
        let mut flaky = String::new();
        for b in bins.iter().filter(|b| !b.flaky.is_empty()) {
            let _ = writeln!(flaky, "  {} flaky: {}", b.name, b.log.display());
            for (test, msg) in &b.flaky {
                let _ = writeln!(flaky, "    {test}: failed, then passed when run again alone; the failure: {msg}");
                total_flaky += 1;
            }
        }
        if !flaky.is_empty() {
            text.push_str(&flaky);
            let _ = write!(digest, "\nflaky on kernel {}:\n{flaky}", k.series);
        }
        let _ = writeln!(text, "  kernel {}: {}", k.series, if kernel_ok { "ok" } else { "FAILED" });
        if !kernel_ok {
            bad_kernels.push(k.series.clone());
        }
    }
    print!("{text}");
    // The shipped unit under systemd as PID 1, on each kernel.
    for k in &kernels {
        match systemd_test(k, accel) {
            Ok(true) => {}
            Ok(false) => bad_kernels.push(format!("{} (systemd)", k.series)),
            Err(e) => {
                println!("  systemd test on kernel {}: {e:#}", k.series);
                bad_kernels.push(format!("{} (systemd)", k.series));
            }
        }
    }
    print!("{digest}");
    println!("\nxtask: vmtest took {:.0}s", started.elapsed().as_secs_f64());
    // The plain closing line CI reads.
    if total_flaky == 0 {
        println!("vmtest: {total_passed} passed, {total_failed} failed");
    } else {
        println!("vmtest: {total_passed} passed ({total_flaky} of them flaky: passed only when run again), {total_failed} failed");
    }
    let _ = std::io::stdout().flush();
    if !bad_kernels.is_empty() {
        // The report says what failed: no error (and no backtrace) on top of it.
        eprintln!("xtask: vmtest failed on {}", bad_kernels.join(", "));
        std::process::exit(1);
    }
    Ok(())
}

/// The port the systemd test's agent watches (the guest has only loopback and
/// nothing else running on it).
const SYSTEMD_TEST_PORT: u16 = 5050;
/// A boot of systemd, the agent's start and stop, a reap: about a minute under
/// TCG on a quiet host; killed after this long.
const SYSTEMD_TEST_TIMEOUT: Duration = Duration::from_secs(240);

/// `vmtest --systemd` (and the end of every `vmtest` run): boots the host's
/// systemd as PID 1 on `k` with deploy/'s unit, sysusers and tmpfiles files and
/// the release binary installed into the guest's overlay (`xtask/vm/systemd-init.sh`),
/// and runs `xtask/vm/systemd-test.sh` as a unit: `systemctl start` (Type=notify),
/// the control socket and its group, `portwatch status`, metrics (GET and HEAD),
/// a SIGSTOPped listener reaped, JSON in the journal, `systemctl stop` leaving no
/// hook attached. Prints each check; true when every one passed.
pub fn systemd_test(k: &Kernel, accel: Accel) -> Result<bool> {
    let root = root();
    // The guest runs the host's bpftool (the root is shared) to see that the hooks
    // are attached while the unit runs and detached after `systemctl stop`.
    crate::ensure_bpftool()?;
    run(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "portwatch"]))?;
    let bin = root.join("target/release/portwatch");
    let results = k.dir.join("results-systemd");
    let env = format!(
        "PW_BIN={}\nPW_DEPLOY={}\nPW_PORT={SYSTEMD_TEST_PORT}\n",
        sh_quote(&bin.to_string_lossy()),
        sh_quote(&root.join("deploy").to_string_lossy())
    );
    eprintln!("xtask: vmtest --systemd: booting {} ({}, {})", k.series, k.release, accel.name());
    let out = boot(&Boot {
        kernel: k,
        accel,
        results: &results,
        init: Init::Staged {
            files: vec![
                ("systemd-env.sh", env),
                ("systemd-init.sh", include_str!("../vm/systemd-init.sh").to_owned()),
                ("systemd-test.sh", include_str!("../vm/systemd-test.sh").to_owned()),
            ],
            init: "systemd-init.sh",
        },
        append: "systemd.unit=portwatch-vmtest.service systemd.show_status=0",
        timeout: SYSTEMD_TEST_TIMEOUT,
        echo: Echo::Progress,
        abort_on: &[PANIC_LINE, "KVM internal error"],
    })?;
    let report = fs::read_to_string(results.join("systemd.txt")).unwrap_or_default();
    let fails = fs::read_to_string(results.join("systemd.status")).ok().and_then(|s| s.trim().parse::<u32>().ok());
    println!("\n== systemd as PID 1, kernel {} ({}, {}, {:.0}s) ==", k.series, k.release, accel.name(), out.elapsed.as_secs_f64());
    if let Some(note) = out.retry_note() {
        println!("  {note}");
    }
    for line in report.lines() {
        println!("  {line}");
    }
    let ok = match fails {
        Some(0) => true,
        Some(n) => {
            println!("  {n} check(s) failed; details: {}", results.join("systemd-detail.log").display());
            false
        }
        None => {
            println!("  the test did not finish ({}); console: {}", out.why_unfinished(), out.console.display());
            for l in console_excerpt(&out.console) {
                println!("    | {l}");
            }
            false
        }
    };
    println!("  systemd test on kernel {}: {}", k.series, if ok { "ok" } else { "FAILED" });
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_excerpt_starts_at_the_oops() {
        let mut text = String::new();
        for i in 0..40 {
            text.push_str(&format!("[ 1.{i:02}] boot line {i}\n"));
        }
        text.push_str("[ 1.39] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[ 1.39] RIP: 0010:sched_clock_cpu+0x9/0x190\n");
        text.push_str("[ 1.40] Kernel panic - not syncing: Fatal exception in interrupt\n");
        let ex = excerpt_of(&text);
        assert_eq!(ex.len(), 3);
        assert!(ex[0].contains("Oops: int3"), "{ex:?}");
        // Without an oops: the last 15 lines.
        let quiet: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let ex = excerpt_of(&quiet);
        assert_eq!(ex.len(), 15);
        assert_eq!(ex[0], "line 25");
    }

    #[test]
    fn picks_generic_flavour_of_the_series() {
        assert_eq!(package_version("linux-image-6.1.0-54-amd64-unsigned", "6.1"), Some("6.1.0-54"));
        assert_eq!(package_version("linux-image-6.12.115+deb12-amd64-unsigned", "6.12"), Some("6.12.115+deb12"));
        assert_eq!(package_version("linux-image-6.12.115+deb12-amd64-unsigned", "6.1"), None);
        assert_eq!(package_version("linux-image-6.1.0-54-cloud-amd64-unsigned", "6.1"), None);
        assert_eq!(package_version("linux-image-6.1.0-54-rt-amd64-unsigned", "6.1"), None);
        assert!(version_key("6.12.115+deb12") > version_key("6.12.99+deb12"));
        assert!(version_key("6.1.0-54") > version_key("6.1.0-9"));
        assert_eq!(series_of("6.12.115+deb12-amd64").as_deref(), Some("6.12"));
        assert_eq!(series_of("6.1.0-54-amd64").as_deref(), Some("6.1"));
    }

    #[test]
    fn reads_libtest_failures() {
        let log = "running 2 tests\ntest a ... ok\ntest b::c ... FAILED\n\nfailures:\n\n---- b::c stdout ----\n\nthread 'b::c' panicked at tests/who.rs:10:5:\nassertion failed: udp found\nnote: run with `RUST_BACKTRACE=1`\n\n\nfailures:\n    b::c\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        let f = failures(log);
        assert_eq!(f, vec![("b::c".to_owned(), "assertion failed: udp found (tests/who.rs:10:5)".to_owned())]);
    }

    #[test]
    fn a_test_that_passes_only_when_run_again_is_flaky_and_one_that_fails_twice_fails() {
        let out = std::env::temp_dir().join(format!("xtask-retry-{}", std::process::id()));
        fs::create_dir_all(&out).unwrap();
        let bin = TestBin {
            name: "who".into(),
            file: "who-test".into(),
            target: "who".into(),
            kind: "test".into(),
            exe: PathBuf::from("/nonexistent"),
            cwd: PathBuf::from("/"),
        };
        let first = "test a ... ok\ntest b::c ... FAILED\n\nfailures:\n\n---- b::c stdout ----\n\nthread 'b::c' panicked at tests/who.rs:10:5:\nnot yet\n\nfailures:\n    b::c\n\ntest result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n";
        fs::write(out.join("who-test.log"), first).unwrap();
        fs::write(out.join("who-test.status"), "101 2000\n").unwrap();
        // No re-run (more than two failed, or an old guest script): failed as before.
        let r = read_result(&bin, &out);
        assert_eq!((r.ok, r.status.as_str(), r.passed, r.failed), (false, "FAILED", 1, 1));

        fs::write(out.join("who-test.retry"), "0\n").unwrap();
        fs::write(
            out.join("who-test.retry.log"),
            "test b::c ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.01s\n",
        )
        .unwrap();
        let r = read_result(&bin, &out);
        assert_eq!((r.ok, r.status.as_str(), r.passed, r.failed), (true, "ok (flaky)", 2, 0));
        assert_eq!(r.flaky, vec![("b::c".to_owned(), "not yet (tests/who.rs:10:5)".to_owned())]);
        assert!(r.failures.is_empty());

        fs::write(out.join("who-test.retry"), "101\n").unwrap();
        fs::write(
            out.join("who-test.retry.log"),
            "test b::c ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 1 filtered out; finished in 0.01s\n",
        )
        .unwrap();
        let r = read_result(&bin, &out);
        assert_eq!((r.ok, r.status.as_str(), r.failed), (false, "FAILED (again when run alone)", 1));
        assert!(r.flaky.is_empty());
        fs::remove_dir_all(&out).unwrap();
    }
}
