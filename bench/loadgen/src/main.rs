//! `pw-loadgen`: the load side of portwatch's benchmarks (`bench/run.sh`,
//! `docs/benchmarks.md`). Each subcommand prints exactly one line of JSON on
//! stdout with what it measured; diagnostics go to stderr.
//!
//! - `getpid`: raw `syscall(SYS_getpid)` cost, a syscall portwatch never hooks.
//! - `bindloop`: socket + SO_REUSEADDR + bind + listen + close on one port, the
//!   path every portwatch hook sits on.
//! - `storm`: UDP bind(127.0.0.1:0) + close from T threads as fast as possible,
//!   to see whether `portwatch watch` keeps up (its "N events, M lost" line).
//! - `churn`: loopback connect + accept + RST close (SO_LINGER 0) on a listener
//!   of its own, N connections: the cost of a busy watched port.
//! - `hold`: N sleeping child processes with F fds each, to load the host the
//!   way a busy server does before timing `portwatch who` against lsof/ss/fuser.
use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pw-loadgen", about = "Load generator for portwatch's benchmarks; prints one JSON line")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N raw syscall(SYS_getpid) per round; prints the median (and minimum) ns/op of the rounds.
    Getpid {
        #[arg(long, default_value_t = 2_000_000)]
        iters: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// N x (socket + SO_REUSEADDR + bind 127.0.0.1:P + listen + close) per round;
    /// prints the median ns/op of the rounds.
    Bindloop {
        #[arg(long, default_value_t = 20_000)]
        iters: u64,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// T threads each doing UDP socket + bind(127.0.0.1:0) + close for S seconds.
    Storm {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Target binds per second over all threads (0 = as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Port to bind (0 = the kernel picks one each time); a fixed port is bound
        /// with SO_REUSEADDR, one socket at a time per thread.
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// A listener on 127.0.0.1:P, then N x (socket + connect + accept + close of
    /// both ends, the client with SO_LINGER 0 so it sends RST); prints ns per
    /// connection for each round and their median.
    Churn {
        #[arg(long, default_value_t = 20_000)]
        iters: u64,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// Fork N children holding F fds each (half /dev/null, half UDP sockets bound to
    /// 127.0.0.1:0); print their pids once all are ready, then wait. SIGTERM,
    /// SIGINT or SIGHUP kills and reaps them; children also die with the parent.
    Hold {
        #[arg(long, default_value_t = 400)]
        procs: usize,
        #[arg(long, default_value_t = 100)]
        fds: usize,
        /// Tasks per child: 1 is the main thread alone; more adds sleeping threads
        /// that share its fd table (each is a task to an `iter/task` program).
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Getpid { iters, rounds } => getpid(iters, rounds),
        Cmd::Bindloop { iters, port, rounds } => bindloop(iters, port, rounds),
        Cmd::Storm { seconds, threads, rate, port } => storm(seconds, threads, rate, port),
        Cmd::Churn { iters, port, rounds } => churn(iters, port, rounds),
        Cmd::Hold { procs, fds, threads } => hold(procs, fds, threads),
    };
    if let Err(e) = r {
        eprintln!("pw-loadgen: {e}");
        std::process::exit(1);
    }
}

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn json_list(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!("[{}]", parts.join(","))
}

/// Runs `body` `rounds` times after one untimed warm-up round; returns ns/op per round.
fn timed_rounds(iters: u64, rounds: usize, mut body: impl FnMut(u64) -> io::Result<()>) -> io::Result<Vec<f64>> {
    let iters = iters.max(1);
    body((iters / 10).max(1))?;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        body(iters)?;
        out.push(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    Ok(out)
}

fn getpid(iters: u64, rounds: usize) -> io::Result<()> {
    let per = timed_rounds(iters, rounds, |n| {
        for _ in 0..n {
            // SAFETY: getpid takes no arguments and cannot fail.
            let r = unsafe { libc::syscall(libc::SYS_getpid) };
            std::hint::black_box(r);
        }
        Ok(())
    })?;
    println!(
        "{{\"bench\":\"getpid\",\"iters\":{iters},\"rounds\":{},\"ns_per_op\":{:.2},\"min_ns_per_op\":{:.2},\"rounds_ns_per_op\":{}}}",
        per.len(),
        median(&per),
        min(&per),
        json_list(&per)
    );
    Ok(())
}

fn churn(iters: u64, port: u16, rounds: usize) -> io::Result<()> {
    let sa = sockaddr_v4(port);
    // SAFETY: plain socket syscalls on fds this function owns; every fd is closed.
    let lfd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if lfd < 0 {
        return Err(os_err("socket"));
    }
    let one: libc::c_int = 1;
    let isz = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd and option buffers.
    unsafe {
        libc::setsockopt(lfd, libc::SOL_SOCKET, libc::SO_REUSEADDR, std::ptr::addr_of!(one).cast(), isz);
        if libc::bind(lfd, std::ptr::addr_of!(sa).cast(), SA_LEN) != 0 {
            let e = os_err("bind");
            libc::close(lfd);
            return Err(e);
        }
        if libc::listen(lfd, 1024) != 0 {
            let e = os_err("listen");
            libc::close(lfd);
            return Err(e);
        }
    }
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let lsz = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    let r = timed_rounds(iters, rounds, |n| {
        for _ in 0..n {
            // SAFETY: as above; the client and accepted fds are closed each iteration.
            unsafe {
                let c = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if c < 0 {
                    return Err(os_err("socket"));
                }
                if libc::connect(c, std::ptr::addr_of!(sa).cast(), SA_LEN) != 0 {
                    let e = os_err("connect");
                    libc::close(c);
                    return Err(e);
                }
                let a = libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
                if a < 0 {
                    let e = os_err("accept");
                    libc::close(c);
                    return Err(e);
                }
                libc::setsockopt(c, libc::SOL_SOCKET, libc::SO_LINGER, std::ptr::addr_of!(linger).cast(), lsz);
                libc::close(c);
                libc::close(a);
            }
        }
        Ok(())
    });
    // SAFETY: the listener this function opened.
    unsafe { libc::close(lfd) };
    let per = r?;
    println!(
        "{{\"bench\":\"churn\",\"iters\":{iters},\"rounds\":{},\"ns_per_op\":{:.2},\"min_ns_per_op\":{:.2},\"rounds_ns_per_op\":{}}}",
        per.len(),
        median(&per),
        min(&per),
        json_list(&per)
    );
    Ok(())
}

fn sockaddr_v4(port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    sa
}

const SA_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

/// One socket + SO_REUSEADDR + bind + listen + close. `Ok(false)` when bind said
/// EADDRINUSE: the previous iteration's listener can outlive its close() for a
/// moment while another process holds a reference to its file (anything walking
/// /proc/PID/fd or a BPF task_file iterator: ss -p, lsof, fuser, `portwatch who`).
fn bind_listen_close(sa: &libc::sockaddr_in) -> io::Result<bool> {
    // SAFETY: plain syscalls on an fd this function owns and closes on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os_err("socket"));
        }
        let one: libc::c_int = 1;
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if r != 0 {
            let e = os_err("setsockopt(SO_REUSEADDR)");
            libc::close(fd);
            return Err(e);
        }
        if libc::bind(fd, (sa as *const libc::sockaddr_in).cast(), SA_LEN) != 0 {
            let in_use = io::Error::last_os_error().raw_os_error() == Some(libc::EADDRINUSE);
            let e = os_err(&format!("bind 127.0.0.1:{}", u16::from_be(sa.sin_port)));
            libc::close(fd);
            return if in_use { Ok(false) } else { Err(e) };
        }
        if libc::listen(fd, 128) != 0 {
            let e = os_err("listen");
            libc::close(fd);
            return Err(e);
        }
        libc::close(fd);
    }
    Ok(true)
}

fn bindloop(iters: u64, port: u16, rounds: usize) -> io::Result<()> {
    if port == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "--port must not be 0"));
    }
    let sa = sockaddr_v4(port);
    // EADDRINUSE retries (see bind_listen_close); counted and reported, and their
    // time stays in the measurement. Many in a row means the port is really taken.
    let mut retries = 0u64;
    let per = timed_rounds(iters, rounds, |n| {
        for _ in 0..n {
            let mut streak = 0u32;
            while !bind_listen_close(&sa)? {
                retries += 1;
                streak += 1;
                if streak >= 1000 {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("bind 127.0.0.1:{port}: address in use (1000 tries); is something else on the port?"),
                    ));
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    })?;
    println!(
        "{{\"bench\":\"bindloop\",\"port\":{port},\"iters\":{iters},\"rounds\":{},\"ns_per_op\":{:.2},\"min_ns_per_op\":{:.2},\"eaddrinuse_retries\":{retries},\"rounds_ns_per_op\":{}}}",
        per.len(),
        median(&per),
        min(&per),
        json_list(&per)
    );
    Ok(())
}

fn storm(seconds: f64, threads: usize, rate: u64, port: u16) -> io::Result<()> {
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "--seconds must be > 0"));
    }
    let threads = threads.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let binds = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, binds, errors) = (stop.clone(), binds.clone(), errors.clone());
            std::thread::spawn(move || {
                let sa = sockaddr_v4(port);
                let (mut ok, mut bad) = (0u64, 0u64);
                // Paced: each thread owes rate/threads binds per second, checked every
                // batch of 64 against the time elapsed.
                let per_thread = rate as f64 / threads as f64;
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if per_thread > 0.0 {
                        let due = (t0.elapsed().as_secs_f64() * per_thread) as u64;
                        if ok + bad >= due {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                    }
                    for _ in 0..64 {
                        // SAFETY: plain syscalls on an fd this loop owns and closes.
                        unsafe {
                            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                            if fd < 0 {
                                bad += 1;
                                continue;
                            }
                            if port != 0 {
                                let one: libc::c_int = 1;
                                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&one as *const libc::c_int).cast(), 4);
                            }
                            if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), SA_LEN) == 0 {
                                ok += 1;
                            } else {
                                bad += 1;
                            }
                            libc::close(fd);
                        }
                    }
                }
                binds.fetch_add(ok, Ordering::Relaxed);
                errors.fetch_add(bad, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let b = binds.load(Ordering::Relaxed);
    println!(
        "{{\"bench\":\"storm\",\"threads\":{threads},\"rate_target\":{rate},\"seconds\":{elapsed:.3},\"binds\":{b},\"errors\":{},\"binds_per_sec\":{:.0}}}",
        errors.load(Ordering::Relaxed),
        b as f64 / elapsed
    );
    Ok(())
}

/// Child side of `hold`: open the fds, report ready on `ready_w`, sleep until killed.
/// Never returns.
fn hold_child(fds: usize, threads: usize, parent: libc::pid_t, ready_w: libc::c_int) -> ! {
    // SAFETY: only async-signal-safe libc calls between fork and _exit (the parent
    // is single-threaded at fork time, so any libc call would be fine anyway).
    unsafe {
        let empty: libc::sigset_t = {
            let mut s = std::mem::zeroed();
            libc::sigemptyset(&mut s);
            s
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        let sa = sockaddr_v4(0);
        let files = fds / 2;
        for i in 0..fds {
            let fd = if i < files {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY)
            } else {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                if s >= 0 && libc::bind(s, (&sa as *const libc::sockaddr_in).cast(), SA_LEN) != 0 {
                    libc::_exit(3);
                }
                s
            };
            if fd < 0 {
                libc::_exit(2);
            }
        }
        // The parent is single-threaded, so threads may be made after fork.
        for _ in 1..threads.max(1) {
            let t = std::thread::Builder::new().stack_size(32 * 1024).spawn(|| loop {
                libc::pause();
            });
            if t.is_err() {
                libc::_exit(5);
            }
        }
        let b = [1u8];
        if libc::write(ready_w, b.as_ptr().cast(), 1) != 1 {
            libc::_exit(4);
        }
        libc::close(ready_w);
        loop {
            libc::pause();
        }
    }
}

fn kill_all(pids: &[libc::pid_t]) {
    for &p in pids {
        // SAFETY: these are our own children, not yet reaped, so the pids are ours.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    for &p in pids {
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(p, &mut st, 0) };
    }
}

fn hold(procs: usize, fds: usize, threads: usize) -> io::Result<()> {
    // SAFETY: signal-mask and fork plumbing; the process is single-threaded here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        // Blocked before the first fork so a signal at any moment is handled by sigwait.
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());

        let mut pipe = [0; 2];
        if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(os_err("pipe2"));
        }
        let (ready_r, ready_w) = (pipe[0], pipe[1]);
        let me = libc::getpid();
        let mut pids: Vec<libc::pid_t> = Vec::with_capacity(procs);
        for _ in 0..procs {
            match libc::fork() {
                -1 => {
                    let e = os_err("fork");
                    kill_all(&pids);
                    return Err(e);
                }
                0 => {
                    libc::close(ready_r);
                    hold_child(fds, threads, me, ready_w)
                }
                pid => pids.push(pid),
            }
        }
        libc::close(ready_w);
        let t = Instant::now();
        let mut ready = 0usize;
        let mut buf = [0u8; 256];
        while ready < procs {
            let n = libc::read(ready_r, buf.as_mut_ptr().cast(), buf.len());
            if n > 0 {
                ready += n as usize;
            } else if n == 0 || *libc::__errno_location() != libc::EINTR {
                break; // every child either reported or died
            }
        }
        libc::close(ready_r);
        if ready < procs {
            kill_all(&pids);
            return Err(io::Error::other(format!(
                "only {ready} of {procs} children opened their {fds} fds and started {threads} task(s) (fd or task limit? `ulimit -n`, `ulimit -u`)"
            )));
        }
        let list: Vec<String> = pids.iter().map(ToString::to_string).collect();
        println!(
            "{{\"bench\":\"hold\",\"parent\":{me},\"procs\":{procs},\"fds_per_proc\":{fds},\"tasks_per_proc\":{},\"ready_secs\":{:.3},\"pids\":[{}]}}",
            threads.max(1),
            t.elapsed().as_secs_f64(),
            list.join(",")
        );
        use io::Write as _;
        let _ = io::stdout().flush();

        let mut alive = pids.len();
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            if sig == libc::SIGCHLD {
                // A child died on its own (someone killed it): reap, keep holding the rest.
                loop {
                    let mut st = 0;
                    let p = libc::waitpid(-1, &mut st, libc::WNOHANG);
                    if p <= 0 {
                        break;
                    }
                    pids.retain(|&x| x != p);
                    alive -= 1;
                }
                if alive == 0 {
                    eprintln!("pw-loadgen: every child has exited");
                    return Ok(());
                }
                continue;
            }
            kill_all(&pids);
            return Ok(());
        }
    }
}
