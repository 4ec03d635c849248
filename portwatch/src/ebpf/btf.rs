//! Kernel struct field offsets from BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has no
//! CO-RE relocations, so user space resolves every offset the kernel programs use and
//! passes them in as a global; nothing is hard-coded.
use btf_rs::{Btf, Type};
use portwatch_common::{HolderOffsets, KernelOffsets};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Offsets with the field each one was resolved from, for `doctor`.
pub const FIELDS: &[(&str, &str)] = &[
    ("sock_common", "skc_family"),
    ("sock_common", "skc_num"),
    ("sock_common", "skc_dport"),
    ("sock_common", "skc_rcv_saddr"),
    ("sock_common", "skc_daddr"),
    ("sock_common", "skc_v6_rcv_saddr"),
    ("sock_common", "skc_v6_daddr"),
    ("sock_common", "skc_net"),
    ("sock", "sk_protocol"),
    ("net", "net_cookie"),
    ("file", "f_inode"),
    ("inode", "i_ino"),
    ("inode", "i_mode"),
    ("task_struct", "tgid"),
];

/// Byte offset of `field` in `struct name`, looking through anonymous unions and
/// structs. `None` when missing or a bitfield.
pub fn member_offset(btf: &Btf, name: &str, field: &str) -> Option<u32> {
    member(btf, name, field).map(|(off, _)| off)
}

/// Byte offset and type of `field` in `struct name`, or in the struct a typedef
/// `name` names (e.g. `possible_net_t`); see [`member_offset`].
pub fn member(btf: &Btf, name: &str, field: &str) -> Option<(u32, Type)> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.into_iter().find_map(|t| match strip_to_aggregate(btf, t) {
        Some(s) if !s.members.is_empty() => find_in(btf, &s, field, 0, 0),
        _ => None,
    })
}

/// Size of `struct name`.
pub fn struct_size(btf: &Btf, name: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    types.iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s.size() as u32),
        _ => None,
    })
}

fn find_in(btf: &Btf, s: &btf_rs::Struct, field: &str, base_bits: u32, depth: u32) -> Option<(u32, Type)> {
    if depth > 8 {
        return None;
    }
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == field {
            if m.bitfield_size().unwrap_or(0) != 0 || !bits.is_multiple_of(8) {
                return None;
            }
            let ty = btf.resolve_chained_type(m).ok()?;
            return Some((bits / 8, ty));
        }
        if mname.is_empty() {
            if let Some(inner) = strip_to_aggregate(btf, btf.resolve_chained_type(m).ok()?) {
                if let Some(off) = find_in(btf, &inner, field, bits, depth + 1) {
                    return Some(off);
                }
            }
        }
    }
    None
}

fn strip_to_aggregate(btf: &Btf, mut t: Type) -> Option<btf_rs::Struct> {
    for _ in 0..8 {
        match t {
            Type::Struct(s) | Type::Union(s) => return Some(s),
            Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::TypeTag(_) => {
                let next = t.as_btf_type()?;
                t = btf.resolve_chained_type(next).ok()?;
            }
            _ => return None,
        }
    }
    None
}

/// Resolves every offset in [`FIELDS`]. Missing ones stay `u32::MAX`; `valid` is set
/// when the ones the state hook needs are all present.
pub fn resolve(btf: &Btf) -> KernelOffsets {
    let mut o = KernelOffsets::UNSET;
    let get = |s, f| member_offset(btf, s, f).unwrap_or(u32::MAX);
    o.skc_family = get("sock_common", "skc_family");
    o.skc_num = get("sock_common", "skc_num");
    o.skc_dport = get("sock_common", "skc_dport");
    o.skc_rcv_saddr = get("sock_common", "skc_rcv_saddr");
    o.skc_daddr = get("sock_common", "skc_daddr");
    o.skc_v6_rcv_saddr = get("sock_common", "skc_v6_rcv_saddr");
    o.skc_v6_daddr = get("sock_common", "skc_v6_daddr");
    // `possible_net_t` wraps the `struct net *` (at its offset 0 on every kernel, but
    // resolved all the same).
    o.skc_net = match (get("sock_common", "skc_net"), member_offset(btf, "possible_net_t", "net")) {
        (u32::MAX, _) => u32::MAX,
        (a, Some(b)) => a + b,
        (a, None) => a,
    };
    o.sk_protocol = get("sock", "sk_protocol");
    o.net_cookie = get("net", "net_cookie");
    o.file_inode = get("file", "f_inode");
    o.inode_ino = get("inode", "i_ino");
    o.inode_mode = get("inode", "i_mode");
    o.task_tgid = get("task_struct", "tgid");
    let needed = [o.skc_family, o.skc_num, o.skc_rcv_saddr];
    o.valid = u32::from(needed.iter().all(|&v| v != u32::MAX));
    o
}

/// Offsets for the holders iterator (`iter/task`). Paths through embedded structs
/// are summed; a path through a pointer on this kernel (e.g. a differently shaped
/// `netns_ipv4`) leaves the offset unset, and the caller falls back.
pub fn resolve_holders(btf: &Btf) -> HolderOffsets {
    let get = |s, f| member_offset(btf, s, f).unwrap_or(u32::MAX);
    // Offset of an embedded (not pointed-to) struct member.
    let embedded = |s, f| match member(btf, s, f) {
        Some((off, t)) if is_aggregate(btf, t.clone()) => Some(off),
        _ => None,
    };
    let sum = |parts: &[Option<u32>]| -> u32 { parts.iter().try_fold(0u32, |acc, p| p.map(|v| acc + v)).unwrap_or(u32::MAX) };
    // Without network namespaces `possible_net_t` is empty and there is no net to
    // compare: leave the offset unset (the pass is then not used).
    let net_of = |s, f| sum(&[member_offset(btf, s, f), member_offset(btf, "possible_net_t", "net")]);
    HolderOffsets {
        task_pid: get("task_struct", "pid"),
        task_tgid: get("task_struct", "tgid"),
        task_group_leader: get("task_struct", "group_leader"),
        task_files: get("task_struct", "files"),
        task_nsproxy: get("task_struct", "nsproxy"),
        nsproxy_net_ns: get("nsproxy", "net_ns"),
        net_hash_mix: get("net", "hash_mix"),
        net_tcp_hashinfo: sum(&[
            embedded("net", "ipv4"),
            embedded("netns_ipv4", "tcp_death_row"),
            member_offset(btf, "inet_timewait_death_row", "hashinfo"),
        ]),
        net_udp_table: sum(&[embedded("net", "ipv4"), member_offset(btf, "netns_ipv4", "udp_table")]),
        hashinfo_bhash: get("inet_hashinfo", "bhash"),
        hashinfo_bhash_size: get("inet_hashinfo", "bhash_size"),
        bhb_chain: get("inet_bind_hashbucket", "chain"),
        bhb_size: struct_size(btf, "inet_bind_hashbucket").unwrap_or(u32::MAX),
        tb_net: net_of("inet_bind_bucket", "ib_net"),
        tb_port: get("inet_bind_bucket", "port"),
        tb_node: get("inet_bind_bucket", "node"),
        tb_owners: get("inet_bind_bucket", "owners"),
        tb_bhash2: get("inet_bind_bucket", "bhash2"),
        tb2_bhash_node: get("inet_bind2_bucket", "bhash_node"),
        tb2_owners: get("inet_bind2_bucket", "owners"),
        skc_bind_node: get("sock_common", "skc_bind_node"),
        skc_node: get("sock_common", "skc_node"),
        skc_state: get("sock_common", "skc_state"),
        skc_family: get("sock_common", "skc_family"),
        skc_num: get("sock_common", "skc_num"),
        skc_net: net_of("sock_common", "skc_net"),
        sk_socket: get("sock", "sk_socket"),
        udp_table_hash: get("udp_table", "hash"),
        udp_table_mask: get("udp_table", "mask"),
        udp_hslot_size: struct_size(btf, "udp_hslot").unwrap_or(u32::MAX),
        socket_file: get("socket", "file"),
        file_inode: get("file", "f_inode"),
        inode_ino: get("inode", "i_ino"),
        files_fdt: get("files_struct", "fdt"),
        fdt_max_fds: get("fdtable", "max_fds"),
        fdt_fd: get("fdtable", "fd"),
        hlist_first: get("hlist_head", "first"),
        hlist_next: get("hlist_node", "next"),
        udp_hslot_head: get("udp_hslot", "head"),
        fdt_open_fds: get("fdtable", "open_fds"),
    }
}

fn is_aggregate(btf: &Btf, t: Type) -> bool {
    strip_to_aggregate(btf, t).is_some()
}

/// Which protocols the holders iterator can resolve on this kernel.
pub fn holders_ready(o: &HolderOffsets) -> (bool, bool) {
    let set = |v: &[u32]| v.iter().all(|&x| x != u32::MAX);
    let common = set(&[
        o.task_pid,
        o.task_tgid,
        o.task_group_leader,
        o.task_files,
        o.task_nsproxy,
        o.nsproxy_net_ns,
        o.skc_state,
        o.skc_family,
        o.skc_num,
        o.skc_net,
        o.sk_socket,
        o.socket_file,
        o.file_inode,
        o.inode_ino,
        o.files_fdt,
        o.fdt_max_fds,
        o.fdt_fd,
        o.fdt_open_fds,
        o.hlist_first,
        o.hlist_next,
    ]);
    let owners = o.tb_owners != u32::MAX || set(&[o.tb_bhash2, o.tb2_bhash_node, o.tb2_owners]);
    let tcp = common
        && owners
        && set(&[o.net_tcp_hashinfo, o.hashinfo_bhash, o.hashinfo_bhash_size, o.bhb_chain, o.bhb_size])
        && set(&[o.tb_net, o.tb_port, o.tb_node, o.skc_bind_node]);
    let udp = common && set(&[o.net_udp_table, o.udp_table_hash, o.udp_table_mask, o.udp_hslot_size, o.udp_hslot_head, o.skc_node]);
    (tcp, udp)
}

/// Values of `o` in [`FIELDS`] order, for display.
pub fn as_list(o: &KernelOffsets) -> Vec<(String, Option<u32>)> {
    let v = [
        o.skc_family,
        o.skc_num,
        o.skc_dport,
        o.skc_rcv_saddr,
        o.skc_daddr,
        o.skc_v6_rcv_saddr,
        o.skc_v6_daddr,
        o.skc_net,
        o.sk_protocol,
        o.net_cookie,
        o.file_inode,
        o.inode_ino,
        o.inode_mode,
        o.task_tgid,
    ];
    FIELDS.iter().zip(v).map(|((s, f), off)| (format!("{s}.{f}"), (off != u32::MAX).then_some(off))).collect()
}

/// Whether the iterator's offsets are all known.
pub fn iter_ready(o: &KernelOffsets) -> bool {
    [o.file_inode, o.inode_ino, o.inode_mode, o.task_tgid].iter().all(|&v| v != u32::MAX)
}

pub fn load_vmlinux() -> Result<Btf, String> {
    Btf::from_file(VMLINUX).map_err(|e| format!("{VMLINUX}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF (a file, no privilege needed).
    #[test]
    fn resolves_offsets_on_this_kernel() {
        let Ok(btf) = load_vmlinux() else {
            eprintln!("no {VMLINUX}: nothing to resolve against");
            return;
        };
        let o = resolve(&btf);
        assert_eq!(o.valid, 1);
        // Fields inside anonymous unions/structs: sock_common opens with the address
        // pair (daddr, rcv_saddr), and the port pair is (dport, num).
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert_eq!(o.skc_num, o.skc_dport + 2);
        assert!(o.skc_family > o.skc_num);
        assert!(iter_ready(&o));
        assert!(as_list(&o).iter().all(|(_, v)| v.is_some()));
    }

    #[test]
    fn resolves_holder_offsets_on_this_kernel() {
        let Ok(btf) = load_vmlinux() else {
            eprintln!("no {VMLINUX}: nothing to resolve against");
            return;
        };
        let o = resolve_holders(&btf);
        assert_eq!(holders_ready(&o), (true, true), "{o:?}");
        // Composite paths land inside `struct net`, after its `ipv4` member.
        let ipv4 = member_offset(&btf, "net", "ipv4").unwrap();
        assert!(o.net_tcp_hashinfo > ipv4 && o.net_udp_table > ipv4);
        // `possible_net_t` is a typedef of an anonymous struct holding the pointer.
        assert_eq!(member_offset(&btf, "possible_net_t", "net"), Some(0));
        assert_eq!(o.skc_net, member_offset(&btf, "sock_common", "skc_net").unwrap());
        assert_eq!(o.hlist_first, 0);
        assert!(o.bhb_size > o.bhb_chain && o.udp_hslot_size >= 8);
    }
}
