//! Port leases as the user sees them: who holds a lease on which port, whether it
//! is still enforced, and what it refused. The kernel side is `ebpf::lease`; the
//! rules (who may add and drop, when a lease is stale) are `service::lease`.
use serde::Serialize;

/// The prefix of an operator lease's holder name: `lease-SECS-PID`.
pub const OPERATOR_PREFIX: &str = "lease-";

/// Who holds a lease, from its holder directory's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Holder {
    /// A `portwatch run --lease`: the lease lasts while the run does.
    Run { pid: i32, start_ticks: u64 },
    /// An operator's `portwatch lease add`: until `lease drop`.
    Operator { name: String },
}

impl Holder {
    /// An operator holder from its directory's name; `None` for other names (a
    /// run's holder is named after its cgroup: `sys::cgroup::RunOwner`).
    pub fn operator(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(OPERATOR_PREFIX)?;
        let (secs, pid) = rest.split_once('-')?;
        (secs.parse::<u64>().is_ok() && pid.parse::<u32>().is_ok()).then(|| Self::Operator { name: name.to_string() })
    }

    /// An operator holder's name for a lease made now by process `pid`.
    pub fn operator_name(now_secs: u64, pid: u32) -> String {
        format!("{OPERATOR_PREFIX}{now_secs}-{pid}")
    }
}

/// Whether a lease still refuses binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Enforced in the kernel.
    Active,
    /// Its holder is gone (a killed run, a removed cgroup): nothing enforces it any
    /// more; `lease list` as root, `cleanup` and the agent remove it.
    Stale,
}

/// The last bind a lease refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// Seconds ago, when known.
    pub secs_ago: Option<u64>,
}

/// One leased port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    pub port: u16,
    /// The holder directory's name (what `lease drop --holder` takes).
    pub holder_name: String,
    pub holder: Holder,
    pub state: LeaseState,
    /// The cgroup whose processes may bind the port.
    pub cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The run's command line (runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The CI job of the run, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Seconds since the epoch.
    pub since: u64,
    pub refused: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<Refusal>,
}

/// How a refused bind fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RefusalErrno {
    /// `bpf_set_retval` (Linux >= 5.18): bind() fails as if the port were in use.
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
    /// Older kernels: a refusing cgroup program makes bind() fail with EPERM.
    #[serde(rename = "EPERM")]
    Perm,
}

impl RefusalErrno {
    pub fn name(self) -> &'static str {
        match self {
            Self::AddrInUse => "EADDRINUSE",
            Self::Perm => "EPERM",
        }
    }
}

/// Which leases `lease drop` removes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropWhat {
    Ports(Vec<u16>),
    Holder(String),
    All,
}

impl DropWhat {
    pub fn covers(&self, l: &LeaseView) -> bool {
        match self {
            Self::Ports(ports) => ports.contains(&l.port),
            Self::Holder(name) => *name == l.holder_name,
            Self::All => true,
        }
    }
}

/// The leases among `all` on `port` that another holder already has: a port is
/// leased to one holder at a time.
pub fn conflicts<'a>(all: &'a [LeaseView], ports: &[u16]) -> Vec<&'a LeaseView> {
    all.iter().filter(|l| l.state == LeaseState::Active && ports.contains(&l.port)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(port: u16, holder: &str, state: LeaseState) -> LeaseView {
        LeaseView {
            port,
            holder_name: holder.into(),
            holder: Holder::operator(holder).unwrap_or(Holder::Run { pid: 1, start_ticks: 1 }),
            state,
            cgroup_id: 1,
            cgroup: None,
            command: None,
            job: None,
            since: 0,
            refused: 0,
            last_refused: None,
        }
    }

    #[test]
    fn operator_names_round_trip() {
        let op = Holder::operator_name(1_700_000_000, 99);
        assert_eq!(op, "lease-1700000000-99");
        assert_eq!(Holder::operator(&op), Some(Holder::Operator { name: op.clone() }));
        assert_eq!(Holder::operator("lease-x-1"), None);
        assert_eq!(Holder::operator("lease-1"), None);
        assert_eq!(Holder::operator("../../etc"), None);
        assert_eq!(Holder::operator("portwatch-run-42-7"), None);
    }

    #[test]
    fn drop_selects_by_port_holder_or_all() {
        let a = view(5050, "portwatch-run-1-1", LeaseState::Active);
        let b = view(5051, "lease-1-2", LeaseState::Stale);
        assert!(DropWhat::Ports(vec![5050]).covers(&a));
        assert!(!DropWhat::Ports(vec![5050]).covers(&b));
        assert!(DropWhat::Holder("lease-1-2".into()).covers(&b));
        assert!(!DropWhat::Holder("lease-1-2".into()).covers(&a));
        assert!(DropWhat::All.covers(&a) && DropWhat::All.covers(&b));
    }

    #[test]
    fn only_active_leases_conflict() {
        let all = [view(5050, "portwatch-run-1-1", LeaseState::Active), view(5051, "lease-1-2", LeaseState::Stale)];
        assert_eq!(conflicts(&all, &[5050]).len(), 1);
        assert!(conflicts(&all, &[5051]).is_empty());
        assert!(conflicts(&all, &[6000]).is_empty());
    }
}
