//! Kernel struct field offsets from BTF (`/sys/kernel/btf/vmlinux`). Rust eBPF has
//! no CO-RE relocations, so user space resolves every offset the kernel programs
//! use and passes them in as globals; nothing is hard-coded.
//!
//! The parser reads only what offsets need: names, structs/unions and their
//! members, and the typedef/qualifier chains between them. It borrows the raw bytes
//! (read once per process by the loader, which also hands them to aya) and indexes
//! type offsets and aggregate names: a few MiB of vmlinux BTF parse in a few ms
//! with one allocation per type.
use std::collections::HashMap;

use portwatch_common::offsets::Step;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

/// BTF kinds (`include/uapi/linux/btf.h`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("not BTF (bad magic or header)")]
    Header,
    #[error("truncated BTF at byte {0}")]
    Truncated(usize),
    #[error("unknown BTF kind {kind} at type {id}")]
    Kind { kind: u32, id: u32 },
}

/// Parsed BTF, borrowing the raw bytes.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of each type; index = type id - 1.
    offsets: Vec<u32>,
    /// Struct, union and typedef names -> type ids.
    by_name: HashMap<&'a str, Vec<u32>>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok_or(BtfError::Truncated(at))
}

/// One type's header.
#[derive(Clone, Copy, Debug)]
struct Head {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// Size, or the referenced type id.
    size_or_type: u32,
    /// Offset of the data after the 12-byte header.
    body: usize,
}

impl<'a> Btf<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Self, BtfError> {
        if raw.len() < 24 || u16::from_le_bytes([raw[0], raw[1]]) != MAGIC {
            return Err(BtfError::Header);
        }
        let hdr_len = u32_at(raw, 4)? as usize;
        let (type_off, type_len) = (u32_at(raw, 8)? as usize, u32_at(raw, 12)? as usize);
        let (str_off, str_len) = (u32_at(raw, 16)? as usize, u32_at(raw, 20)? as usize);
        let section = |off: usize, len: usize| raw.get(hdr_len + off..hdr_len + off + len).ok_or(BtfError::Truncated(hdr_len + off + len));
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut btf = Self { types, strings, offsets: Vec::with_capacity(type_len / 24), by_name: HashMap::new() };
        let mut at = 0usize;
        while at < types.len() {
            let id = btf.offsets.len() as u32 + 1;
            btf.offsets.push(at as u32);
            let h = btf.head_at(at)?;
            let extra = match h.kind {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * h.vlen as usize,
                kind::ENUM | kind::FUNC_PROTO => 8 * h.vlen as usize,
                k => return Err(BtfError::Kind { kind: k, id }),
            };
            if matches!(h.kind, kind::STRUCT | kind::UNION | kind::TYPEDEF) && h.name_off != 0 {
                btf.by_name.entry(btf.str_at(h.name_off)).or_default().push(id);
            }
            at = h.body + extra;
            if at > types.len() {
                return Err(BtfError::Truncated(at));
            }
        }
        Ok(btf)
    }

    fn head_at(&self, at: usize) -> Result<Head, BtfError> {
        let info = u32_at(self.types, at + 4)?;
        Ok(Head {
            name_off: u32_at(self.types, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 != 0,
            size_or_type: u32_at(self.types, at + 8)?,
            body: at + 12,
        })
    }

    fn head(&self, id: u32) -> Option<Head> {
        let at = *self.offsets.get((id as usize).checked_sub(1)?)?;
        self.head_at(at as usize).ok()
    }

    fn str_at(&self, off: u32) -> &'a str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    /// How many types there are.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The struct or union a type is, through typedefs and qualifiers.
    fn aggregate(&self, mut id: u32) -> Option<Head> {
        for _ in 0..16 {
            let h = self.head(id)?;
            match h.kind {
                kind::STRUCT | kind::UNION => return Some(h),
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => id = h.size_or_type,
                _ => return None,
            }
        }
        None
    }

    /// The struct/union named `name` (directly or through a typedef) with members.
    fn named_aggregate(&self, name: &str) -> Option<Head> {
        self.by_name.get(name)?.iter().filter_map(|&id| self.aggregate(id)).find(|h| h.vlen > 0)
    }

    /// Byte offset of `field` in `agg`, and the member's type id, searching anonymous
    /// members too. `None` for a bitfield or an unaligned member.
    fn find(&self, agg: Head, field: &str, base_bits: u32, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for i in 0..agg.vlen as usize {
            let at = agg.body + i * 12;
            let (name_off, ty, raw) = (u32_at(self.types, at).ok()?, u32_at(self.types, at + 4).ok()?, u32_at(self.types, at + 8).ok()?);
            let (bits, bitfield) = if agg.kind_flag { (raw & 0x00ff_ffff, raw >> 24) } else { (raw, 0) };
            let bits = base_bits + bits;
            let name = self.str_at(name_off);
            if name == field {
                return (bitfield == 0 && bits.is_multiple_of(8)).then_some((bits / 8, ty));
            }
            if name.is_empty() {
                if let Some(found) = self.aggregate(ty).and_then(|inner| self.find(inner, field, bits, depth + 1)) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Byte offset of `field` in `struct name` (or the struct a typedef `name`
    /// names), looking through anonymous unions and structs.
    pub fn member_offset(&self, name: &str, field: &str) -> Option<u32> {
        self.member(name, field).map(|(off, _)| off)
    }

    fn member(&self, name: &str, field: &str) -> Option<(u32, u32)> {
        self.find(self.named_aggregate(name)?, field, 0, 0)
    }

    /// Offset of `field` in `name` when the member is itself a struct or union
    /// (embedded, not pointed to).
    pub fn embedded_offset(&self, name: &str, field: &str) -> Option<u32> {
        let (off, ty) = self.member(name, field)?;
        self.aggregate(ty).map(|_| off)
    }

    /// Size of `struct name`.
    pub fn size_of(&self, name: &str) -> Option<u32> {
        self.named_aggregate(name).map(|h| h.size_or_type)
    }

    /// One path: the sum of its steps, or `None` if any step is missing.
    pub fn resolve_path(&self, steps: &[Step]) -> Option<u32> {
        steps.iter().try_fold(0u32, |acc, s| {
            let v = match *s {
                Step::Member(s, f) => self.member_offset(s, f)?,
                Step::Embedded(s, f) => self.embedded_offset(s, f)?,
                Step::Size(s) => self.size_of(s)?,
            };
            acc.checked_add(v)
        })
    }

    /// A copy of this BTF for aya's loader, which only looks types up by name (the
    /// `btf_trace_*` typedef of a `tp_btf` hook, the function an iterator, fentry or
    /// LSM program attaches to): every type keeps its id, but all but named typedefs
    /// and functions become a placeholder `int`. aya then holds a few flat vectors
    /// instead of a struct (with its member list) per kernel type: less memory, and
    /// all of it given back when the loader is done.
    pub fn lean_copy(&self) -> Vec<u8> {
        let mut types = Vec::with_capacity(self.offsets.len() * 16);
        for &at in &self.offsets {
            let at = at as usize;
            match self.head_at(at) {
                Ok(h) if matches!(h.kind, kind::TYPEDEF | kind::FUNC) && h.name_off != 0 => {
                    types.extend_from_slice(&self.types[at..h.body])
                }
                _ => {
                    for w in [0u32, kind::INT << 24, 4, 32] {
                        types.extend_from_slice(&w.to_le_bytes());
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(24 + types.len() + self.strings.len());
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, self.strings.len() as u32] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(self.strings);
        out
    }

    /// The id of the named type of `kind`, for tests.
    #[cfg(test)]
    fn id_of(&self, name: &str, k: u32) -> Option<u32> {
        (1..=self.offsets.len() as u32).find(|&id| self.head(id).is_some_and(|h| h.kind == k && self.str_at(h.name_off) == name))
    }

    /// The first step of a path this BTF lacks, in words (for `doctor`).
    pub fn missing_step(&self, steps: &[Step]) -> Option<String> {
        steps.iter().find(|s| self.resolve_path(std::slice::from_ref(*s)).is_none()).map(|s| s.to_string())
    }
}

/// Fills every offset of an offsets struct from `btf`; missing ones stay unset.
pub fn resolve<T: portwatch_common::offsets::Offsets>(btf: &Btf<'_>) -> T {
    let mut o = T::UNSET;
    for (i, (_, path)) in T::SPEC.iter().enumerate() {
        if let Some(v) = btf.resolve_path(path) {
            o.set(i, v);
        }
    }
    o
}

/// Each offset's name and value (`None`: missing), for `doctor`.
pub fn listing<T: portwatch_common::offsets::Offsets>(o: &T) -> Vec<(String, Option<u32>)> {
    T::SPEC.iter().enumerate().map(|(i, (name, _))| (name.to_string(), Some(o.get(i)).filter(|&v| v != u32::MAX))).collect()
}

#[cfg(test)]
mod tests {
    use portwatch_common::{HolderOffsets, KernelOffsets};

    use super::*;

    /// A tiny BTF blob: `typedef struct { int *net; } possible_net_t;` and
    /// `struct sock_common { int a; union { int b; possible_net_t skc_net; }; }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0net\0possible_net_t\0sock_common\0a\0b\0skc_net\0".to_vec();
        let off = |s: &str, strings: &[u8]| {
            strings.windows(s.len() + 1).position(|w| &w[..s.len()] == s.as_bytes() && w[s.len()] == 0).unwrap() as u32
        };
        let mut types = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]| {
            for w in [name, (kind << 24) | vlen, size_or_type].iter().chain(extra) {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        let s = &mut strings;
        // 1: int (4 bytes, 32 bits)
        ty(off("int", s), kind::INT, 0, 4, &[32]);
        // 2: int *
        ty(0, kind::PTR, 0, 1, &[]);
        // 3: anonymous struct { int *net; } (8 bytes)
        ty(0, kind::STRUCT, 1, 8, &[off("net", s), 2, 0]);
        // 4: typedef possible_net_t -> 3
        ty(off("possible_net_t", s), kind::TYPEDEF, 0, 3, &[]);
        // 5: anonymous union { int b; possible_net_t skc_net; }
        ty(0, kind::UNION, 2, 8, &[off("b", s), 1, 0, off("skc_net", s), 4, 0]);
        // 6: struct sock_common { int a; <pad>; union at bit 64 }
        ty(off("sock_common", s), kind::STRUCT, 2, 16, &[off("a", s), 1, 0, 0, 5, 64]);
        let mut raw = Vec::new();
        raw.extend_from_slice(&MAGIC.to_le_bytes());
        raw.extend_from_slice(&[1, 0]);
        for w in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            raw.extend_from_slice(&w.to_le_bytes());
        }
        raw.extend_from_slice(&types);
        raw.append(&mut strings);
        raw
    }

    #[test]
    fn parses_members_through_anonymous_unions_and_typedefs() {
        let raw = blob();
        let btf = Btf::parse(&raw).unwrap();
        assert_eq!(btf.len(), 6);
        assert_eq!(btf.member_offset("sock_common", "a"), Some(0));
        assert_eq!(btf.member_offset("sock_common", "skc_net"), Some(8));
        assert_eq!(btf.member_offset("possible_net_t", "net"), Some(0));
        assert_eq!(btf.embedded_offset("sock_common", "skc_net"), Some(8));
        assert_eq!(btf.embedded_offset("possible_net_t", "net"), None, "a pointer is not embedded");
        assert_eq!(btf.size_of("sock_common"), Some(16));
        assert_eq!(btf.member_offset("sock_common", "nope"), None);
        let path = [Step::Member("sock_common", "skc_net"), Step::Member("possible_net_t", "net")];
        assert_eq!(btf.resolve_path(&path), Some(8));
        assert_eq!(btf.missing_step(&[Step::Member("sock", "x")]).as_deref(), Some("sock.x"));
        assert!(Btf::parse(&raw[..20]).is_err());
        let mut bad = raw.clone();
        bad[0] = 0;
        assert_eq!(Btf::parse(&bad).err(), Some(BtfError::Header));
    }

    fn vmlinux() -> Option<Vec<u8>> {
        std::fs::read(VMLINUX).ok()
    }

    /// Kernel BTF saved from other kernels (`cargo xtask vmtest` saves each guest's
    /// as target/vmtest/RELEASE/vmlinux.btf): the offsets every hook needs resolve
    /// on each.
    #[test]
    fn resolves_offsets_on_saved_kernels() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/vmtest");
        let Ok(entries) = std::fs::read_dir(dir) else { return eprintln!("no {dir}: no saved kernels") };
        for e in entries.flatten() {
            let path = e.path().join("vmlinux.btf");
            let Ok(raw) = std::fs::read(&path) else { continue };
            let btf = Btf::parse(&raw).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let o: KernelOffsets = resolve(&btf);
            assert!(o.state_hook_ready() && o.iterator_ready(), "{}: {:?}", path.display(), listing(&o));
            let h: HolderOffsets = resolve(&btf);
            eprintln!("{}: {:?}", path.display(), listing(&h));
            assert!(h.tcp_ready(), "{}: {h:?}", path.display());
        }
    }

    /// Reads the running kernel's BTF (a file, no privilege needed).
    #[test]
    fn resolves_offsets_on_this_kernel() {
        let Some(raw) = vmlinux() else { return eprintln!("no {VMLINUX}: nothing to resolve against") };
        let btf = Btf::parse(&raw).unwrap();
        let o: KernelOffsets = resolve(&btf);
        // Fields inside anonymous unions/structs: sock_common opens with the address
        // pair (daddr, rcv_saddr), and the port pair is (dport, num).
        assert_eq!(o.skc_daddr, 0);
        assert_eq!(o.skc_rcv_saddr, 4);
        assert_eq!(o.skc_num, o.skc_dport + 2);
        assert!(o.skc_family > o.skc_num);
        assert!(o.state_hook_ready() && o.iterator_ready());
        assert!(listing(&o).iter().all(|(_, v)| v.is_some()), "{:?}", listing(&o));
    }

    #[test]
    fn the_lean_copy_keeps_ids_of_what_aya_looks_up() {
        let Some(raw) = vmlinux() else { return eprintln!("no {VMLINUX}") };
        let btf = Btf::parse(&raw).unwrap();
        let lean = btf.lean_copy();
        assert!(lean.len() < raw.len());
        let aya = aya::Btf::parse(&lean, aya::Endianness::default()).unwrap();
        for (name, k, aya_kind) in [
            ("btf_trace_inet_sock_set_state", kind::TYPEDEF, aya_obj::btf::BtfKind::Typedef),
            ("bpf_iter_task", kind::FUNC, aya_obj::btf::BtfKind::Func),
            ("bpf_iter_task_file", kind::FUNC, aya_obj::btf::BtfKind::Func),
        ] {
            assert_eq!(aya.id_by_type_name_kind(name, aya_kind).ok(), btf.id_of(name, k), "{name}");
        }
    }

    #[test]
    fn resolves_holder_offsets_on_this_kernel() {
        let Some(raw) = vmlinux() else { return eprintln!("no {VMLINUX}: nothing to resolve against") };
        let btf = Btf::parse(&raw).unwrap();
        let o: HolderOffsets = resolve(&btf);
        assert!(o.tcp_ready(), "{o:?}");
        // Composite paths land inside `struct net`, after its `ipv4` member.
        let ipv4 = btf.member_offset("net", "ipv4").unwrap();
        assert!(o.net_tcp_hashinfo > ipv4);
        assert!(o.net_udp_table == u32::MAX || o.net_udp_table > ipv4);
        // `possible_net_t` is a typedef of an anonymous struct holding the pointer.
        assert_eq!(btf.member_offset("possible_net_t", "net"), Some(0));
        assert_eq!(o.skc_net, btf.member_offset("sock_common", "skc_net").unwrap());
        assert_eq!(o.hlist_first, 0);
        assert!(o.bhb_size > o.bhb_chain && o.udp_hslot_size >= 8);
    }
}
