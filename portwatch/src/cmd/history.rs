//! `portwatch history`.
use crate::{
    agent::history::store::Store,
    cli::{HistoryArgs, NetnsChoice},
    config::DEFAULT_DB,
    error::{exit, Error, Result},
    model::{
        time::{fmt_time, parse_when},
        timeline,
    },
    output::{self, history::render, to_json},
    sys::clock::{local_offset_secs, wall_now_ns},
};

pub fn run(a: HistoryArgs) -> Result<u8> {
    let now = wall_now_ns();
    let when = |s: Option<String>| s.map(|s| parse_when(&s, now, &local_offset_secs).map_err(Error::Usage)).transpose();
    let (since, until, at) = (when(a.since)?, when(a.until)?, when(a.at)?);
    let path = a.db.unwrap_or_else(|| DEFAULT_DB.into());
    let store = Store::open_readonly(&path)?;
    crate::cmd::notes(&store.unread_wal(&path).into_iter().collect::<Vec<_>>());
    let dberr = |e: rusqlite::Error| Error::Config(format!("history database {}: {e}", path.display()));
    // A port number means something within one network namespace: this one's,
    // unless asked for another or for all.
    let home = crate::sys::netns::own_cookie();
    let netns = match a.netns {
        NetnsChoice::Own => home,
        NetnsChoice::All => None,
        NetnsChoice::Cookie(c) => Some(c),
    };
    let rows = match (at, a.port) {
        (Some(t), Some(p)) => store.holders_at(p, t, netns).map_err(dberr)?,
        _ => store.query(a.port, since, until, a.pid, netns).map_err(dberr)?,
    };
    if a.html.is_some() || a.svg.is_some() {
        let t = timeline::build(&rows, since, until.unwrap_or(now));
        let title = match a.port {
            Some(p) => format!("portwatch: who held port {p}"),
            None => "portwatch: who held the watched ports".to_owned(),
        };
        for (file, text) in [
            (&a.html, a.html.as_ref().map(|_| output::timeline::html(&t, &title))),
            (&a.svg, a.svg.as_ref().map(|_| output::timeline::svg(&t))),
        ] {
            if let (Some(f), Some(text)) = (file, text) {
                std::fs::write(f, text).map_err(|e| Error::Usage(format!("cannot write {}: {e}", f.display())))?;
                eprintln!(
                    "portwatch: wrote {} ({} ports, {} holders)",
                    f.display(),
                    t.lanes.len(),
                    t.lanes.iter().map(|l| l.bars.len()).sum::<usize>()
                );
            }
        }
        return Ok(exit::OK);
    }
    if a.json {
        println!("{}", to_json(&rows)?);
    } else if let (Some(t), Some(p)) = (at, a.port) {
        if rows.is_empty() {
            println!("port {p} was not held (as far as the agent saw) at {}", fmt_time(t));
        } else {
            println!("port {p} at {} was held by:", fmt_time(t));
            print!("{}", render(&rows, home));
        }
    } else {
        print!("{}", render(&rows, home));
    }
    Ok(exit::OK)
}
