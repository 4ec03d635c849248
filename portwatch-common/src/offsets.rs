//! Kernel struct field offsets, declared once: each field of an offsets struct is
//! named with the path through kernel structs it is resolved from (user space,
//! from BTF, at load time: Rust eBPF has no CO-RE relocations). The macro makes the
//! `#[repr(C)]` struct the kernel programs read as a global, its `UNSET` value, and
//! the `SPEC` table that user space resolves and `doctor` lists. `u32::MAX` means
//! "not available on this kernel".
use core::fmt;

/// One step of a path; a path's offset is the sum of its steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The offset of member `.1` in `struct .0` (or the struct a typedef names),
    /// looking through anonymous unions and structs.
    Member(&'static str, &'static str),
    /// Like `Member`, and the member must be embedded (a struct, not a pointer).
    Embedded(&'static str, &'static str),
    /// The size of `struct .0` (for arrays of it).
    Size(&'static str),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Member(s, m) => write!(f, "{s}.{m}"),
            Self::Embedded(s, m) => write!(f, "{s}.{m} (embedded)"),
            Self::Size(s) => write!(f, "sizeof(struct {s})"),
        }
    }
}

/// An offsets struct made by [`kernel_offsets!`].
pub trait Offsets: Copy {
    const UNSET: Self;
    /// Each field's name and path, in declaration order.
    const SPEC: &'static [(&'static str, &'static [Step])];
    fn get(&self, i: usize) -> u32;
    fn set(&mut self, i: usize, v: u32);
}

macro_rules! kernel_offsets {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* $field:ident = [$($step:expr),+ $(,)?] ),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name { $( $(#[$fm])* pub $field: u32, )* }

        impl Offsets for $name {
            const UNSET: Self = Self { $( $field: u32::MAX, )* };
            const SPEC: &'static [(&'static str, &'static [Step])] = &[ $( (stringify!($field), &[$($step),+]) ),* ];

            fn get(&self, i: usize) -> u32 {
                let all = [$( self.$field ),*];
                all.get(i).copied().unwrap_or(u32::MAX)
            }

            fn set(&mut self, i: usize, v: u32) {
                let mut fields = [$( &mut self.$field ),*];
                if let Some(f) = fields.get_mut(i) {
                    **f = v;
                }
            }
        }

        // No padding: every field is a u32.
        const _: () = assert!(core::mem::size_of::<$name>() == 4 * $name::SPEC.len());
    };
}

use Step::{Embedded, Member, Size};

kernel_offsets! {
    /// Offsets for the observer's `tp_btf` hook and the `iter/task_file` program.
    pub struct KernelOffsets {
        skc_family = [Member("sock_common", "skc_family")],
        skc_num = [Member("sock_common", "skc_num")],
        skc_dport = [Member("sock_common", "skc_dport")],
        skc_rcv_saddr = [Member("sock_common", "skc_rcv_saddr")],
        skc_daddr = [Member("sock_common", "skc_daddr")],
        skc_v6_rcv_saddr = [Member("sock_common", "skc_v6_rcv_saddr")],
        skc_v6_daddr = [Member("sock_common", "skc_v6_daddr")],
        /// `sock_common.skc_net` (a `possible_net_t` holding `struct net *`).
        skc_net = [Member("sock_common", "skc_net"), Member("possible_net_t", "net")],
        /// `struct sock.sk_protocol` (a u16 in kernels >= 5.6).
        sk_protocol = [Member("sock", "sk_protocol")],
        net_cookie = [Member("net", "net_cookie")],
        /// The socket inode, for the `iter/task_file` program.
        file_inode = [Member("file", "f_inode")],
        inode_ino = [Member("inode", "i_ino")],
        inode_mode = [Member("inode", "i_mode")],
        task_tgid = [Member("task_struct", "tgid")],
    }
}

impl KernelOffsets {
    /// What the state hook cannot do without.
    pub fn state_hook_ready(&self) -> bool {
        self.skc_family != u32::MAX && self.skc_num != u32::MAX && self.skc_rcv_saddr != u32::MAX
    }

    /// What the `iter/task_file` program cannot do without.
    pub fn iterator_ready(&self) -> bool {
        [self.file_inode, self.inode_ino, self.inode_mode, self.task_tgid].iter().all(|&v| v != u32::MAX)
    }
}

kernel_offsets! {
    /// Offsets for the holders iterator (`iter/task`; see [`crate::holders`]).
    pub struct HolderOffsets {
        task_pid = [Member("task_struct", "pid")],
        task_tgid = [Member("task_struct", "tgid")],
        task_group_leader = [Member("task_struct", "group_leader")],
        task_files = [Member("task_struct", "files")],
        task_nsproxy = [Member("task_struct", "nsproxy")],
        nsproxy_net_ns = [Member("nsproxy", "net_ns")],
        /// `net.hash_mix` (missing without network namespaces: the mix is 0).
        net_hash_mix = [Member("net", "hash_mix")],
        /// `net.ipv4.tcp_death_row.hashinfo` (a `struct inet_hashinfo *`).
        net_tcp_hashinfo = [Embedded("net", "ipv4"), Embedded("netns_ipv4", "tcp_death_row"), Member("inet_timewait_death_row", "hashinfo")],
        /// `net.ipv4.udp_table` (a `struct udp_table *`, Linux >= 6.2; before, the
        /// global `udp_table`, whose address user space passes in instead).
        net_udp_table = [Embedded("net", "ipv4"), Member("netns_ipv4", "udp_table")],
        hashinfo_bhash = [Member("inet_hashinfo", "bhash")],
        hashinfo_bhash_size = [Member("inet_hashinfo", "bhash_size")],
        bhb_chain = [Member("inet_bind_hashbucket", "chain")],
        bhb_size = [Size("inet_bind_hashbucket")],
        tb_net = [Member("inet_bind_bucket", "ib_net"), Member("possible_net_t", "net")],
        tb_port = [Member("inet_bind_bucket", "port")],
        tb_node = [Member("inet_bind_bucket", "node")],
        /// Kernels up to 6.7: sockets hang off `tb->owners`.
        tb_owners = [Member("inet_bind_bucket", "owners")],
        /// Kernels from 6.8: `tb->bhash2` lists `inet_bind2_bucket`s, whose `owners`
        /// hold the sockets.
        tb_bhash2 = [Member("inet_bind_bucket", "bhash2")],
        tb2_bhash_node = [Member("inet_bind2_bucket", "bhash_node")],
        tb2_owners = [Member("inet_bind2_bucket", "owners")],
        skc_bind_node = [Member("sock_common", "skc_bind_node")],
        skc_node = [Member("sock_common", "skc_node")],
        skc_state = [Member("sock_common", "skc_state")],
        skc_family = [Member("sock_common", "skc_family")],
        skc_num = [Member("sock_common", "skc_num")],
        skc_net = [Member("sock_common", "skc_net"), Member("possible_net_t", "net")],
        sk_socket = [Member("sock", "sk_socket")],
        udp_table_hash = [Member("udp_table", "hash")],
        udp_table_mask = [Member("udp_table", "mask")],
        udp_hslot_size = [Size("udp_hslot")],
        socket_file = [Member("socket", "file")],
        file_inode = [Member("file", "f_inode")],
        inode_ino = [Member("inode", "i_ino")],
        files_fdt = [Member("files_struct", "fdt")],
        fdt_max_fds = [Member("fdtable", "max_fds")],
        fdt_fd = [Member("fdtable", "fd")],
        hlist_first = [Member("hlist_head", "first")],
        hlist_next = [Member("hlist_node", "next")],
        udp_hslot_head = [Member("udp_hslot", "head")],
        /// The bitmap of open fds, to read only the used slots.
        fdt_open_fds = [Member("fdtable", "open_fds")],
        /// A file's references (one per fd slot, plus transient ones): `f_count`
        /// (an `atomic_long_t`, the count) up to Linux 6.12, `f_ref` (a
        /// `file_ref_t`, the count minus one) from 6.13. One of the two is missing.
        file_count = [Member("file", "f_count")],
        file_ref = [Member("file", "f_ref")],
        /// The socket's wait queue (`socket.wq.wait.head`, a list of
        /// `wait_queue_entry`): a task in poll/select on the socket is on it
        /// through a `poll_table_entry` that holds a reference to the file.
        socket_wait_head = [Embedded("socket", "wq"), Embedded("socket_wq", "wait"), Member("wait_queue_head", "head")],
        list_next = [Member("list_head", "next")],
        wqe_func = [Member("wait_queue_entry", "func")],
        wqe_entry = [Member("wait_queue_entry", "entry")],
        pte_filp = [Member("poll_table_entry", "filp")],
        pte_wait = [Member("poll_table_entry", "wait")],
        /// Who waits on the socket (candidates for `who`'s proof, never an answer):
        /// an entry's `private` is the task (accept), the `poll_wqueues` of a
        /// poll/select (its `polling_task`), or nothing for epoll, whose entry sits
        /// in an `eppoll_entry` whose epitem's `eventpoll` has the epoll_wait tasks
        /// on its own wait queue.
        wqe_private = [Member("wait_queue_entry", "private")],
        pwq_polling_task = [Member("poll_wqueues", "polling_task")],
        epe_wait = [Member("eppoll_entry", "wait")],
        epe_base = [Member("eppoll_entry", "base")],
        epi_ep = [Member("epitem", "ep")],
        ep_wait_head = [Embedded("eventpoll", "wq"), Member("wait_queue_head", "head")],
    }
}

impl HolderOffsets {
    fn all(v: &[u32]) -> bool {
        v.iter().all(|&x| x != u32::MAX)
    }

    fn common_ready(&self) -> bool {
        Self::all(&[
            self.task_pid,
            self.task_tgid,
            self.task_group_leader,
            self.task_files,
            self.task_nsproxy,
            self.nsproxy_net_ns,
            self.skc_state,
            self.skc_family,
            self.skc_num,
            self.skc_net,
            self.sk_socket,
            self.socket_file,
            self.file_inode,
            self.inode_ino,
            self.files_fdt,
            self.fdt_max_fds,
            self.fdt_fd,
            self.fdt_open_fds,
            self.hlist_first,
            self.hlist_next,
        ])
    }

    /// The TCP bind hash can be walked (either owners layout).
    pub fn tcp_ready(&self) -> bool {
        let owners = self.tb_owners != u32::MAX || Self::all(&[self.tb_bhash2, self.tb2_bhash_node, self.tb2_owners]);
        self.common_ready()
            && owners
            && Self::all(&[self.net_tcp_hashinfo, self.hashinfo_bhash, self.hashinfo_bhash_size, self.bhb_chain, self.bhb_size])
            && Self::all(&[self.tb_net, self.tb_port, self.tb_node, self.skc_bind_node])
    }

    /// The UDP hash can be walked: through `net->ipv4.udp_table`, or, with
    /// `global_table`, through the global table (kernels before 6.2).
    pub fn udp_ready(&self, global_table: bool) -> bool {
        self.common_ready()
            && (self.net_udp_table != u32::MAX || global_table)
            && Self::all(&[self.udp_table_hash, self.udp_table_mask, self.udp_hslot_size, self.udp_hslot_head, self.skc_node])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_get_and_set_agree() {
        let mut o = KernelOffsets::UNSET;
        assert_eq!(KernelOffsets::SPEC[1].0, "skc_num");
        o.set(1, 14);
        assert_eq!(o.skc_num, 14);
        assert_eq!(o.get(1), 14);
        assert_eq!(o.get(99), u32::MAX);
        assert!(!o.state_hook_ready());
        let h = HolderOffsets::UNSET;
        assert!(!h.tcp_ready() && !h.udp_ready(true));
        assert_eq!(HolderOffsets::SPEC.len(), core::mem::size_of::<HolderOffsets>() / 4);
    }
}
