//! Kernel struct field offsets from BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has no
//! CO-RE relocations, so user space resolves every offset the kernel programs use and
//! passes them in as a global; nothing is hard-coded.
use btf_rs::{Btf, Type};
use portwatch_common::KernelOffsets;

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
    let types = btf.resolve_types_by_name(name).ok()?;
    types.iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => find_in(btf, s, field, 0, 0),
        _ => None,
    })
}

fn find_in(btf: &Btf, s: &btf_rs::Struct, field: &str, base_bits: u32, depth: u32) -> Option<u32> {
    if depth > 8 {
        return None;
    }
    for m in &s.members {
        let bits = base_bits + m.bit_offset();
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == field {
            if m.bitfield_size().unwrap_or(0) != 0 || bits % 8 != 0 {
                return None;
            }
            return Some(bits / 8);
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

/// Values of `o` in [`FIELDS`] order, for display.
pub fn as_list(o: &KernelOffsets) -> Vec<(String, Option<u32>)> {
    let v = [
        o.skc_family, o.skc_num, o.skc_dport, o.skc_rcv_saddr, o.skc_daddr, o.skc_v6_rcv_saddr,
        o.skc_v6_daddr, o.skc_net, o.sk_protocol, o.net_cookie, o.file_inode, o.inode_ino,
        o.inode_mode, o.task_tgid,
    ];
    FIELDS
        .iter()
        .zip(v)
        .map(|((s, f), off)| (format!("{s}.{f}"), (off != u32::MAX).then_some(off)))
        .collect()
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
}
