//! Build and test orchestration: `cargo xtask <setup|demo|test|dist|bench|vmtest>`.
//!
//! `setup` makes a fresh machine ready (rust-src for nightly, bpf-linker 0.10.4,
//! tracefs/bpffs mounted, the musl target and musl-tools for `dist`, release build)
//! and is cheap when everything is there. `dist` builds and tests the release
//! bundle (dist.rs). `vmtest` runs the test binaries in qemu guests on Debian's
//! stock kernels (vmtest.rs). Python runs in a virtual environment, target/venv
//! (python.rs).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod dist;
mod python;
mod vmtest;

/// bpf-linker must match the LLVM of the machine's nightly (LLVM 22): 0.10.4 does.
const BPF_LINKER_VERSION: &str = "0.10.4";
const NIGHTLY: &str = "nightly";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs, mount tracefs/bpffs, build release.
    Setup {
        /// Also make `vmtest` ready: qemu, busybox-static, cpio, kmod, xz-utils
        /// and the default kernels (vmtest installs these itself when missing).
        #[arg(long)]
        vm: bool,
    },
    /// Setup, then show portwatch catching a throwaway server on a real port.
    Demo,
    /// Setup, lint, then run every test: unit tests, the privileged kernel tests (the
    /// action's scripts among them), the pytest plugin and example, the release bundle,
    /// and then the kernel matrix (`vmtest --kernel all`: the same test binaries on
    /// Debian's 6.1 and 6.12 kernels under qemu).
    Test {
        /// Kernels for the matrix after the host suite: all, a comma list such as
        /// 6.1, or none (the host suite only).
        #[arg(long, default_value = "all")]
        kernels: String,
        /// Extra arguments for `cargo test` (after `--`); with them, only the host
        /// suite runs, filtered.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the test binaries in qemu guests on Debian's stock kernels (6.1, 6.12),
    /// one report per kernel; exit non-zero if any test failed or a guest did not
    /// finish. Throughput tests stay on the host (the report names them).
    Vmtest {
        /// Kernel series: 6.1, 6.12, a comma list, or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// CPU accelerator: auto (KVM only where a probe boot shows it runs stock
        /// kernels), kvm or tcg.
        #[arg(long, value_enum, default_value = "auto")]
        accel: vmtest::AccelChoice,
        /// Instead of the tests, run this shell command in each guest (console on
        /// the terminal; exit status is the command's).
        #[arg(long, conflicts_with = "init")]
        shell: Option<String>,
        /// Instead of the tests, exec this program of the host's root as the
        /// guest's PID 1 (e.g. /lib/systemd/systemd); the guest runs until it
        /// powers off or the timeout.
        #[arg(long)]
        init: Option<PathBuf>,
        /// More kernel command line (e.g. systemd.unit=... with --init).
        #[arg(long, default_value = "")]
        append: String,
        /// Seconds a guest may run before qemu is killed.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Seconds one test binary may run in the guest before it is killed.
        #[arg(long, default_value_t = 240)]
        test_timeout: u64,
        /// Only boot systemd as PID 1 with deploy/portwatch.service installed and
        /// test the unit (start, socket, metrics, a reap, stop detaching every
        /// hook); a full vmtest runs this too, after the test binaries.
        #[arg(long, conflicts_with_all = ["shell", "init"])]
        systemd: bool,
        /// Extra arguments for every test binary (after `--`), e.g. a filter or
        /// --test-threads=1.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then run the benchmarks (docs/benchmarks.md explains them).
    Bench {
        /// Which: overhead, loss, who, reap, footprint, churn, bindall, remap, all.
        #[arg(default_value = "all")]
        which: String,
    },
    /// cargo fmt --check and clippy with warnings denied.
    Lint,
    /// Build the release bundle, target/dist/portwatch-VERSION-TARGET.tar.gz (and
    /// .sha256): a static binary, completions, man pages, systemd files, licenses;
    /// then test it.
    Dist {
        /// Only test the bundle already built.
        #[arg(long)]
        check_only: bool,
        /// Build static against glibc (x86_64-unknown-linux-gnu, +crt-static) even
        /// where musl is available: the fallback, on purpose.
        #[arg(long, conflicts_with = "check_only")]
        glibc: bool,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.stderr(Stdio::null()).output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn is_mounted(point: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(4) == Some(point)))
}

fn setup() -> Result<()> {
    prepare()?;
    // What `dist` needs, said now when it cannot be had (dist then builds static glibc).
    let sb = dist::prepare_static();
    eprintln!("xtask: `cargo xtask dist` will build for {}", sb.target);
    // promtool checks the metrics and the alerting rules in the tests.
    if is_root() {
        ensure_promtool()?;
    }
    run(Command::new("cargo").current_dir(root()).args(["build", "--release"]))
}

/// Toolchain pieces and mounts, without building.
fn prepare() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", NIGHTLY]))
        .context("the `nightly` toolchain is required (rustup toolchain list)")?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    let linker = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if !linker.contains(BPF_LINKER_VERSION) {
        run(Command::new("cargo").args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--locked", "--force"]))?;
    }
    if is_root() {
        for (point, fstype) in [("/sys/kernel/tracing", "tracefs"), ("/sys/fs/bpf", "bpf")] {
            if !is_mounted(point) {
                run(Command::new("mount").args(["-t", fstype, fstype, point]))?;
            }
        }
    } else {
        eprintln!("xtask: not root: skipping tracefs/bpffs mounts (portwatch itself needs root)");
    }
    Ok(())
}

fn demo() -> Result<()> {
    setup()?;
    let bin = root().join("target/release/portwatch");
    run(Command::new(&bin).arg("doctor").stdout(Stdio::null())).context("this host cannot run the observer; see `portwatch doctor`")?;
    let port = free_port()?;
    eprintln!("\nxtask: watching port {port} while a throwaway python server binds, listens, takes a connection and a second server fails to bind:\n");
    let mut watch = Command::new(&bin).args(["watch", "--port", &port.to_string(), "--duration", "4s"]).spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let script = format!(
        "import socket,time\ns=socket.socket();s.bind(('127.0.0.1',{port}));s.listen()\n\
         c=socket.create_connection(('127.0.0.1',{port}))\n\
         t=socket.socket()\ntry: t.bind(('127.0.0.1',{port}))\nexcept OSError as e: pass\n\
         time.sleep(3)\n"
    );
    let mut server = Command::new("python3").args(["-c", &script]).spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(800));
    eprintln!("\nxtask: and who holds it, while it is still open:\n");
    let who = Command::new(&bin).args(["who", &port.to_string()]).status();
    watch.wait()?;
    server.wait()?;
    if let Ok(status) = who {
        if !status.success() && status.code() != Some(1) {
            bail!("portwatch who failed: {status}");
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Headless Chromium renders the history timeline in the tests (a screenshot).
fn ensure_chromium() -> Result<()> {
    ensure_debian_package("chromium", "chromium")
}

/// promtool (Debian's prometheus package) checks the metrics exposition and the
/// alerting rules (deploy/portwatch.rules.yml) in the tests.
fn ensure_promtool() -> Result<()> {
    ensure_debian_package("promtool", "prometheus")
}

/// bpftool (Debian's package) lists the kernel's programs and links for the
/// systemd-as-PID-1 test in the kernel matrix.
pub(crate) fn ensure_bpftool() -> Result<()> {
    ensure_debian_package("bpftool", "bpftool")
}

/// Installs Debian's `package` unless `program --version` already runs.
fn ensure_debian_package(program: &str, package: &str) -> Result<()> {
    if output(Command::new(program).arg("--version")).is_some() {
        return Ok(());
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends", package]).env("DEBIAN_FRONTEND", "noninteractive"))
}

fn test(kernels: &str, args: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    prepare()?;
    lint()?;
    // flask, gunicorn, pytest and the pytest plugin, in target/venv: Debian 12's
    // system python is externally managed. The tests find this python3 first on PATH.
    let venv = python::venv()?;
    ensure_promtool()?;
    ensure_chromium()?;
    // The integration tests (the `portwatch-tests` crate) run the release binaries;
    // `cargo test` builds only test executables, so build those first.
    run(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "portwatch", "-p", "portwatch-loadgen"]))?;
    let mut cmd = Command::new("cargo");
    // Every member but the kernel crate, whose programs only build for the BPF target
    // (`portwatch/build.rs` builds and embeds them).
    cmd.current_dir(root()).args(["test", "--release", "--workspace", "--exclude", "portwatch-ebpf"]).env("PATH", venv.path_env());
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    run(&mut cmd)?;
    if args.is_empty() {
        unit_tests_unprivileged()?;
        pytest_example(&venv)?;
        python::plugin_tests(&venv, &root().join("target/release/portwatch"))?;
        dist::dist(false)?;
        eprintln!("xtask: host suite passed in {:.0}s", started.elapsed().as_secs_f64());
        if kernels != "none" {
            vmtest::vmtest(&vmtest::Options {
                kernel: kernels.to_owned(),
                accel: vmtest::AccelChoice::Auto,
                shell: None,
                init: None,
                append: String::new(),
                timeout: 600,
                test_timeout: 240,
                args: Vec::new(),
                systemd_only: false,
            })?;
        }
        eprintln!("xtask: test: everything passed in {:.0}s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// Plain `cargo test` (the default members: unit tests only) must pass without
/// root: run those test binaries again as `nobody`.
fn unit_tests_unprivileged() -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("cargo")
        .current_dir(root())
        .args(["test", "--release", "--no-run", "--message-format=json"])
        .stderr(Stdio::null())
        .output()
        .context("listing the unit-test binaries")?;
    let bins: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"test\":true"))
        .filter_map(|l| l.split("\"executable\":\"").nth(1).and_then(|r| r.split('"').next()).map(String::from))
        .collect();
    if bins.is_empty() {
        bail!("no unit-test binaries found");
    }
    for bin in bins {
        run(Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin, "--quiet"]).current_dir("/"))?;
    }
    Ok(())
}

/// The hygiene gates: formatting and clippy with the workspace lints, warnings denied.
fn lint() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args(["fmt", "--all", "--check"]))?;
    run(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "portwatch-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// The copyable pytest example (examples/pytest, on the plugin) must pass against
/// the built binary.
fn pytest_example(venv: &python::Venv) -> Result<()> {
    let port = free_port_below_ephemeral()?;
    let bin = root().join("target/release/portwatch");
    run(venv
        .python()
        .current_dir(root())
        .args(["-m", "pytest", "-q", "examples/pytest"])
        .env("PORTWATCH", bin)
        .env("APP_PORT", port.to_string()))
}

/// A port below the ephemeral range, free now.
fn free_port_below_ephemeral() -> Result<u16> {
    for port in (18000..19000).step_by(7) {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in 18000-19000")
}

/// gunicorn (the seed story's server), flask and pytest in the python3 on PATH, for
/// the test binaries vmtest runs in guests (`test` and `bench` use target/venv).
fn ensure_python_packages() -> Result<()> {
    let have = Command::new("python3").args(["-c", "import gunicorn, flask, pytest"]).stderr(Stdio::null()).status()?;
    if !have.success() {
        run(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "gunicorn",
            "flask",
            "pytest",
        ]))?;
    }
    Ok(())
}

fn bench(which: &str) -> Result<()> {
    setup()?;
    let venv = python::venv()?;
    // `hostile` (the agent under attack by an unprivileged user, held to 128 MiB)
    // is a script of its own.
    let script = if which == "hostile" { "bench/hostile.sh" } else { "bench/run.sh" };
    let mut cmd = Command::new("bash");
    cmd.current_dir(root()).arg(script).env("PATH", venv.path_env());
    if which != "hostile" {
        cmd.arg(which);
    }
    run(&mut cmd)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup { vm } => {
            setup()?;
            if vm {
                vmtest::setup_vm()?;
            }
            Ok(())
        }
        Cmd::Demo => demo(),
        Cmd::Test { kernels, args } => test(&kernels, &args),
        Cmd::Bench { which } => bench(&which),
        Cmd::Lint => lint(),
        Cmd::Dist { check_only: true, .. } => dist::check(&dist::built_archive()?),
        Cmd::Dist { check_only: false, glibc } => dist::dist(glibc).map(|_| ()),
        Cmd::Vmtest { kernel, accel, shell, init, append, timeout, test_timeout, systemd, args } => {
            vmtest::vmtest(&vmtest::Options { kernel, accel, shell, init, append, timeout, test_timeout, args, systemd_only: systemd })
        }
    }
}
