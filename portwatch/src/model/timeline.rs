//! Who held what, when: history rows turned into a timeline per port — a bar for
//! each socket's tenure (bind, listen or observed, to its close or the end of the
//! range) and marks for what happened to the port (failed binds, verdicts,
//! signals, reaps, refusals). Pure; `output::timeline` draws it.
use std::collections::{BTreeMap, HashMap};

use super::{
    history::{Row, RowKind},
    socket::Proto,
    time::WallNs,
};

/// At most this many bars and marks are drawn (a day of a storm has millions of
/// rows); what is left out is counted.
pub const MAX_ITEMS: usize = 5000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub from: WallNs,
    pub to: WallNs,
    pub lanes: Vec<Lane>,
    /// Bars and marks not drawn (beyond [`MAX_ITEMS`]).
    pub left_out: usize,
}

/// One port (and protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub port: u16,
    pub proto: Option<Proto>,
    pub bars: Vec<Bar>,
    pub marks: Vec<Mark>,
}

/// One socket's tenure of the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bar {
    pub from: WallNs,
    pub to: WallNs,
    /// Still held at the end of the range (no close seen).
    pub open: bool,
    /// The agent found it there rather than seeing it bound.
    pub observed: bool,
    pub listening: bool,
    /// The holder: the first row's process.
    pub pid: Option<i32>,
    pub comm: Option<String>,
    pub job: Option<String>,
    pub cmdline: Option<String>,
    pub addr: Option<std::net::IpAddr>,
}

impl Bar {
    /// What colours the bar: the CI job when known, else the process.
    pub fn owner(&self) -> String {
        match (&self.job, self.pid, &self.comm) {
            (Some(j), _, _) => format!("job {j}"),
            (None, Some(p), Some(c)) => format!("{c} ({p})"),
            (None, Some(p), None) => format!("pid {p}"),
            (None, None, _) => "unknown".into(),
        }
    }
}

/// Something that happened on the port at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub at: WallNs,
    pub kind: RowKind,
    pub pid: Option<i32>,
    pub comm: Option<String>,
    pub detail: Option<String>,
    pub error: Option<String>,
}

/// The timeline of `rows` (oldest first, as the store returns them) between
/// `from` and `to`; `from` None starts at the first row.
pub fn build(rows: &[Row], from: Option<WallNs>, to: WallNs) -> Timeline {
    let start = from.or_else(|| rows.iter().map(|r| r.time_ns).min()).unwrap_or(to).min(to);
    let mut lanes: BTreeMap<(u16, Option<Proto>), Lane> = BTreeMap::new();
    // Open tenures by socket cookie: (lane key, bar index).
    let mut open: HashMap<u64, ((u16, Option<Proto>), usize)> = HashMap::new();
    let mut items = 0usize;
    let mut left_out = 0usize;
    for r in rows {
        let Some(port) = r.port else { continue };
        let key = (port, r.proto);
        let lane = lanes.entry(key).or_insert_with(|| Lane { port, proto: r.proto, bars: Vec::new(), marks: Vec::new() });
        match r.event {
            RowKind::Bind | RowKind::Listen | RowKind::Observed => {
                if let Some(&(k, i)) = r.cookie.and_then(|c| open.get(&c)) {
                    // The same socket again (its listen after its bind).
                    if k == key && r.event == RowKind::Listen {
                        lane.bars[i].listening = true;
                    }
                    continue;
                }
                if items >= MAX_ITEMS {
                    left_out += 1;
                    continue;
                }
                items += 1;
                lane.bars.push(Bar {
                    from: r.time_ns.max(start),
                    to,
                    open: true,
                    observed: r.event == RowKind::Observed,
                    listening: r.event == RowKind::Listen,
                    pid: r.pid,
                    comm: r.comm.clone(),
                    job: r.job.as_deref().map(str::to_owned),
                    cmdline: r.cmdline.as_deref().map(str::to_owned),
                    addr: r.addr,
                });
                if let Some(c) = r.cookie {
                    open.insert(c, (key, lane.bars.len() - 1));
                }
            }
            RowKind::Close => {
                if let Some((k, i)) = r.cookie.and_then(|c| open.remove(&c)) {
                    if let Some(l) = lanes.get_mut(&k) {
                        l.bars[i].to = r.time_ns.clamp(l.bars[i].from, to);
                        l.bars[i].open = false;
                    }
                }
            }
            RowKind::BindFailed | RowKind::Stuck | RowKind::Signal | RowKind::Reaped | RowKind::Refused | RowKind::LeaseRefused => {
                if items >= MAX_ITEMS {
                    left_out += 1;
                    continue;
                }
                items += 1;
                lane.marks.push(Mark {
                    at: r.time_ns.clamp(start, to),
                    kind: r.event,
                    pid: r.pid,
                    comm: r.comm.clone(),
                    detail: r.detail.clone(),
                    error: r.error.clone(),
                });
            }
        }
    }
    Timeline { from: start, to: to.max(start), lanes: lanes.into_values().collect(), left_out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::history::test_row as row;

    #[test]
    fn bars_run_from_bind_to_close_and_marks_stay_in_their_lane() {
        let mut a = row(100, RowKind::Bind, 5050, 10, 1);
        a.job = Some("GITHUB_JOB=smoke".into());
        let rows = vec![
            a,
            row(110, RowKind::Listen, 5050, 10, 1),
            row(150, RowKind::BindFailed, 5050, 20, 2),
            row(200, RowKind::Close, 5050, 10, 1),
            row(300, RowKind::Observed, 5050, 30, 3),
            row(320, RowKind::Bind, 6000, 40, 4),
            row(330, RowKind::Reaped, 6000, 40, 4),
        ];
        let t = build(&rows, None, 400);
        assert_eq!((t.from, t.to, t.lanes.len(), t.left_out), (100, 400, 2, 0));
        let l = &t.lanes[0];
        assert_eq!(l.port, 5050);
        assert_eq!(l.bars.len(), 2);
        assert_eq!((l.bars[0].from, l.bars[0].to, l.bars[0].open, l.bars[0].listening), (100, 200, false, true));
        assert_eq!(l.bars[0].owner(), "job GITHUB_JOB=smoke");
        assert!(l.bars[1].open && l.bars[1].observed && l.bars[1].to == 400);
        assert_eq!(l.marks.iter().map(|m| (m.kind, m.pid)).collect::<Vec<_>>(), vec![(RowKind::BindFailed, Some(20))]);
        assert_eq!(t.lanes[1].marks[0].kind, RowKind::Reaped);
    }

    #[test]
    fn a_range_clips_and_a_storm_is_capped() {
        let rows: Vec<Row> = (0..(MAX_ITEMS as i64 + 10)).map(|i| row(i, RowKind::Bind, 7000, 1, i as u64)).collect();
        let t = build(&rows, Some(5), 1_000_000);
        assert_eq!(t.lanes[0].bars.len(), MAX_ITEMS);
        assert_eq!(t.left_out, 10);
        assert_eq!(t.lanes[0].bars[0].from, 5, "clipped to the range");
    }
}
