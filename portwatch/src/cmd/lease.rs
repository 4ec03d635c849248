//! `portwatch lease list|add|drop`.
use crate::{
    cli::{LeaseAction, LeaseArgs, LeaseGrant},
    error::{exit, Error, Result},
    model::{lease::DropWhat, ports},
    output::{esc, lease as out, to_json},
    service::lease::{self, Detail, Grantee, LeaseNews},
};

/// The ports and the cgroup of `lease add` / `lease hold`.
fn grant<'a>(g: &'a LeaseGrant, what: &str) -> Result<(Vec<u16>, Grantee<'a>)> {
    let to = match (&g.cgroup, g.pid) {
        (Some(dir), _) => Grantee::Cgroup(dir),
        (None, Some(pid)) => Grantee::Pid(pid),
        (None, None) => return Err(Error::Usage(format!("{what} needs --cgroup DIR or --pid PID"))),
    };
    Ok((ports::merge(&g.ports).iter().collect(), to))
}

pub fn run(a: LeaseArgs) -> Result<u8> {
    match a.action {
        LeaseAction::List { ports, json } => {
            let removed = lease::sweep();
            for name in &removed {
                eprintln!("portwatch: removed stale lease {}", crate::output::esc(name));
            }
            let only = ports::merge(&ports);
            let all: Vec<_> = lease::list(Detail::Full)?.into_iter().filter(|l| only.is_empty() || only.contains(l.port)).collect();
            if json {
                println!("{}", to_json(&all)?);
            } else {
                print!("{}", out::render_list(&all));
            }
            Ok(exit::OK)
        }
        LeaseAction::Add(g) => {
            let (ports, to) = grant(&g, "lease add")?;
            let (added, errno) = lease::add(&ports, to)?;
            print!("{}", out::changed("leased", &added));
            eprintln!("portwatch: binds from outside the cgroup fail with {}", errno.name());
            Ok(exit::OK)
        }
        LeaseAction::Hold(g) => {
            let (ports, to) = grant(&g, "lease hold")?;
            let (mut held, dir) = lease::hold(&ports, to)?;
            let errno = held.errno();
            let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
            eprintln!(
                "portwatch: lease: port {} leased to {} until this command ends; binds from outside it fail with {}",
                list.join(", "),
                esc(&dir.display().to_string()),
                errno.name()
            );
            let say = |held: &mut lease::RunLease| {
                for news in held.news() {
                    match news {
                        LeaseNews::Refused(ev) => eprintln!("portwatch: {}", out::refusal(&ev, errno)),
                        LeaseNews::Hidden(n) => eprintln!("portwatch: {}", out::hidden(n)),
                    }
                }
            };
            crate::cmd::runtime()?.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let mut term = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
                let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    tokio::select! {
                        _ = tick.tick() => say(&mut held),
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                    }
                }
                Ok::<(), Error>(())
            })?;
            say(&mut held);
            held.end();
            eprintln!("portwatch: lease: ended");
            Ok(exit::OK)
        }
        LeaseAction::Drop { ports, holder, all } => {
            let what = match (holder, all) {
                (Some(h), _) => DropWhat::Holder(h),
                (None, true) => DropWhat::All,
                (None, false) => DropWhat::Ports(ports::merge(&ports).iter().collect()),
            };
            let dropped = lease::remove(&what)?;
            if dropped.is_empty() {
                eprintln!("portwatch: no such lease");
                return Ok(exit::CONDITION);
            }
            print!("{}", out::changed("dropped", &dropped));
            Ok(exit::OK)
        }
    }
}
