//! Kernel struct layouts from BTF (`/sys/kernel/btf/vmlinux`), for the kernel fields the
//! tracker reads through its socket pointer.
//!
//! The kernel programs are built without CO-RE relocations (the Rust BPF target cannot emit
//! them), so the fields of `struct tcp_sock` and `struct net` whose offsets depend on the
//! kernel's configuration are found here, at load time, and written into the program's
//! read-only `SOCK_LAYOUT` before it is loaded. Only what a member-offset lookup needs is
//! parsed: the type section's records (to skip them) and the members of structs and unions.
//! aya keeps its own BTF reader's accessors private.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>.

/// Where the running kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Why a layout could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {ty} has no member {member}")]
    NoMember { ty: String, member: String },
    #[error("{0} is a bitfield")]
    Bitfield(String),
    #[error("{member} is {actual} bytes, {expected} expected")]
    Size {
        member: String,
        actual: u32,
        expected: u32,
    },
}

/// One type record: its header fields, and where its members (structs, unions) start in the
/// blob. Small and `Copy`: the whole table is one allocation, and members are read from the
/// blob only for the few structs looked at (a kernel has some 150,000 types; the agent only
/// ever asks about two structs, at start-up, and keeps nothing of them).
#[derive(Clone, Copy)]
struct Type {
    kind: u32,
    name: u32,
    /// The referenced type of typedefs, modifiers and pointers; the size of ints, structs,
    /// unions and enums.
    target: u32,
    kind_flag: bool,
    vlen: u32,
    /// Byte position of the first member in the blob.
    members_at: u32,
}

/// The struct and union layouts of one BTF blob.
pub struct Btf {
    data: Vec<u8>,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    strings_at: usize,
    strings_len: usize,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {off}")))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Btf, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|e| BtfError::Read {
            path: VMLINUX.into(),
            reason: e.to_string(),
        })?;
        Btf::parse(data)
    }

    /// Indexes a little-endian BTF blob (header, type section, string section).
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        let magic = data.get(0..2).map(|m| u16::from_le_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed(
                "bad magic (not little-endian BTF)".into(),
            ));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let (type_off, type_len) = (u32_at(&data, 8)? as usize, u32_at(&data, 12)? as usize);
        let (str_off, str_len) = (u32_at(&data, 16)? as usize, u32_at(&data, 20)? as usize);
        let (types_at, strings_at) = (hdr_len + type_off, hdr_len + str_off);
        if data.len() < types_at + type_len || data.len() < strings_at + str_len {
            return Err(BtfError::Malformed("section beyond the end".into()));
        }
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            target: 0,
            kind_flag: false,
            vlen: 0,
            members_at: 0,
        }];
        let (mut pos, end) = (types_at, types_at + type_len);
        while pos < end {
            let (name, info, target) = (
                u32_at(&data, pos)?,
                u32_at(&data, pos + 4)?,
                u32_at(&data, pos + 8)?,
            );
            pos += 12;
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, info & 0xffff, info >> 31 == 1);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                other => {
                    return Err(BtfError::Malformed(format!(
                        "unknown kind {other} at type {}",
                        types.len()
                    )))
                }
            };
            if pos + extra as usize > end {
                return Err(BtfError::Malformed(format!(
                    "type {} runs past its section",
                    types.len()
                )));
            }
            types.push(Type {
                kind,
                name,
                target,
                kind_flag,
                vlen,
                members_at: pos as u32,
            });
            pos += extra as usize;
        }
        Ok(Btf {
            data,
            types,
            strings_at,
            strings_len: str_len,
        })
    }

    fn name(&self, off: u32) -> &str {
        let strings = &self.data[self.strings_at..self.strings_at + self.strings_len];
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The first struct of that name (kernel struct names are unique).
    fn struct_named(&self, name: &str) -> Option<Type> {
        self.types
            .iter()
            .find(|t| t.kind == KIND_STRUCT && t.name != 0 && self.name(t.name) == name)
            .copied()
    }

    /// Follows typedefs and const/volatile/restrict/type tags to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = *self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.target
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in `ty` (a struct or union), looking through anonymous
    /// struct and union members; with the member's type id.
    fn member(&self, ty: Type, member: &str) -> Option<Result<(u32, u32), BtfError>> {
        for i in 0..ty.vlen as usize {
            let at = ty.members_at as usize + i * 12;
            // In range: parse checked every record against its section.
            let field = |k: usize| u32_at(&self.data, at + 4 * k).unwrap_or(0);
            let (name, mty, offset) = (field(0), field(1), field(2));
            let bits = if ty.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            let bitfield = ty.kind_flag && offset >> 24 != 0;
            if name == 0 {
                let inner = self
                    .resolve(mty)
                    .filter(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)?;
                if let Some(found) = self.member(inner, member) {
                    return Some(found.map(|(off, id)| (bits / 8 + off, id)));
                }
            } else if self.name(name) == member {
                if bitfield || bits % 8 != 0 {
                    return Some(Err(BtfError::Bitfield(member.to_string())));
                }
                return Some(Ok((bits / 8, mty)));
            }
        }
        None
    }

    /// Size in bytes of a type (through typedefs and modifiers; pointers are 8 bytes).
    fn size_of(&self, id: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                Some(t.target)
            }
            KIND_PTR => Some(8),
            _ => None,
        }
    }

    /// Byte offset of a (nested) member path, e.g. `offset_of("net", &["ns", "inum"])`.
    /// Every step but the last must be an embedded struct or union, not a pointer.
    pub fn offset_of(&self, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
        self.locate(struct_name, path).map(|(off, _)| off)
    }

    /// [`offset_of`](Self::offset_of), checking that the member is `size` bytes (the
    /// programs read it with a load of that size).
    pub fn offset_of_sized(
        &self,
        struct_name: &str,
        path: &[&str],
        size: u32,
    ) -> Result<u32, BtfError> {
        let (off, ty) = self.locate(struct_name, path)?;
        match self.size_of(ty) {
            Some(s) if s == size => Ok(off),
            actual => Err(BtfError::Size {
                member: format!("{struct_name}.{}", path.join(".")),
                actual: actual.unwrap_or(0),
                expected: size,
            }),
        }
    }

    /// Byte offset and type id of a (nested, non-empty) member path.
    fn locate(&self, struct_name: &str, path: &[&str]) -> Result<(u32, u32), BtfError> {
        let mut ty = self
            .struct_named(struct_name)
            .ok_or_else(|| BtfError::NoStruct(struct_name.to_string()))?;
        let (mut ty_name, mut total, mut last) = (struct_name.to_string(), 0, 0);
        for (i, &step) in path.iter().enumerate() {
            let (off, member_ty) = self.member(ty, step).ok_or_else(|| BtfError::NoMember {
                ty: ty_name.clone(),
                member: step.to_string(),
            })??;
            total += off;
            last = member_ty;
            if i + 1 < path.len() {
                ty = self
                    .resolve(member_ty)
                    .filter(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                    .ok_or_else(|| BtfError::NoMember {
                        ty: format!("{ty_name}.{step}"),
                        member: path[i + 1].to_string(),
                    })?;
                ty_name = format!("{ty_name}.{step}");
            }
        }
        Ok((total, last))
    }
}

/// Where the tracker finds what it reads in a TCP socket (offsets from the start of
/// `struct tcp_sock`, which begins with `struct sock` and `struct sock_common`), and the
/// inode number in `struct net`. Each field's size is checked: the program loads it with a
/// load of that size.
pub fn sock_layout(btf: &Btf) -> Result<vespa_common::SockLayout, BtfError> {
    const INET: [&str; 2] = ["inet_conn", "icsk_inet"];
    let in_sock = |member: &[&str], size| {
        let path: Vec<&str> = INET.iter().chain(&["sk"]).chain(member).copied().collect();
        btf.offset_of_sized("tcp_sock", &path, size)
    };
    let common = |member: &str, size| in_sock(&["__sk_common", member], size);
    Ok(vespa_common::SockLayout {
        family: common("skc_family", 2)?,
        daddr: common("skc_daddr", 4)?,
        rcv_saddr: common("skc_rcv_saddr", 4)?,
        v6_daddr: common("skc_v6_daddr", 16)?,
        v6_rcv_saddr: common("skc_v6_rcv_saddr", 16)?,
        dport: common("skc_dport", 2)?,
        sport: btf.offset_of_sized("tcp_sock", &[INET[0], INET[1], "inet_sport"], 2)?,
        net: in_sock(&["__sk_common", "skc_net", "net"], 8)?,
        net_inum: btf.offset_of_sized("net", &["ns", "inum"], 4)?,
        protocol: in_sock(&["sk_protocol"], 2)?,
        cookie: common("skc_cookie", 8)?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made blob: `struct ns_common { int pad; unsigned inum; }`,
    /// `struct net { long a; struct ns_common ns; }`, `typedef struct { struct net *net; }
    /// possible_net_t`, `struct sock_common { union { long x; int y; }; int z; possible_net_t
    /// skc_net; }`.
    fn blob() -> Vec<u8> {
        let mut strings = b"\0int\0long\0ns_common\0pad\0inum\0net\0a\0ns\0possible_net_t\0sock_common\0x\0y\0z\0skc_net\0".to_vec();
        strings.push(0);
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .expect("string") as u32
                + 1
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            for v in [name, kind << 24 | vlen, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(s("int"), KIND_INT, 0, 4, &[32]); // 1
        ty(s("long"), KIND_INT, 0, 8, &[64]); // 2
        ty(
            s("ns_common"),
            KIND_STRUCT,
            2,
            8,
            &[s("pad"), 1, 0, s("inum"), 1, 32],
        ); // 3
        ty(
            s("net"),
            KIND_STRUCT,
            2,
            16,
            &[s("a"), 2, 0, s("ns"), 3, 64],
        ); // 4
        ty(0, KIND_PTR, 0, 4, &[]); // 5: struct net *
        ty(0, KIND_STRUCT, 1, 8, &[s("net"), 5, 0]); // 6: anonymous struct
        ty(s("possible_net_t"), KIND_TYPEDEF, 0, 6, &[]); // 7
        ty(0, KIND_UNION, 2, 8, &[s("x"), 2, 0, s("y"), 1, 0]); // 8
        ty(
            s("sock_common"),
            KIND_STRUCT,
            3,
            24,
            &[0, 8, 0, s("z"), 1, 64, s("skc_net"), 7, 128],
        ); // 9
        let mut out = Vec::new();
        for v in [
            MAGIC as u32 | 1 << 16,
            24,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn nested_offsets_through_typedefs_and_anonymous_members() {
        let btf = Btf::parse(blob()).expect("parse");
        assert_eq!(
            btf.offset_of_sized("sock_common", &["skc_net", "net"], 8),
            Ok(16)
        );
        assert_eq!(btf.offset_of_sized("net", &["ns", "inum"], 4), Ok(12));
        assert_eq!(
            btf.offset_of("sock_common", &["y"]),
            Ok(0),
            "member of an anonymous union"
        );
        assert_eq!(btf.offset_of("sock_common", &["z"]), Ok(8));
    }

    #[test]
    fn missing_names_and_bad_blobs_are_errors() {
        let btf = Btf::parse(blob()).expect("parse");
        assert_eq!(
            btf.offset_of("sock", &["x"]),
            Err(BtfError::NoStruct("sock".into()))
        );
        assert_eq!(
            btf.offset_of("net", &["ns", "nope"]),
            Err(BtfError::NoMember {
                ty: "net.ns".into(),
                member: "nope".into()
            })
        );
        // `a` is a long, not a struct: nothing to look inside.
        assert!(matches!(
            btf.offset_of("net", &["a", "b"]),
            Err(BtfError::NoMember { .. })
        ));
        let mut bad = blob();
        bad[0] = 0;
        assert!(matches!(Btf::parse(bad), Err(BtfError::Malformed(_))));
        let truncated = blob()[..40].to_vec();
        assert!(matches!(Btf::parse(truncated), Err(BtfError::Malformed(_))));
    }

    /// The running kernel's layout, where there is one (every machine this project targets).
    #[test]
    fn the_running_kernels_socket_layout() {
        if !std::path::Path::new(VMLINUX).exists() {
            assert_ne!(
                std::env::var("VESPA_REQUIRE_EBPF").as_deref(),
                Ok("1"),
                "VESPA_REQUIRE_EBPF=1 but there is no {VMLINUX}"
            );
            eprintln!("SKIPPED: no {VMLINUX} (set VESPA_REQUIRE_EBPF=1 to make this a failure)");
            return;
        }
        let btf = Btf::from_kernel().expect("the kernel's BTF");
        let l = sock_layout(&btf).expect("socket layout");
        // sock_common has begun with the address pair, the hash, the port pair and the family
        // for as long as it has existed (include/net/sock.h).
        assert_eq!(
            (l.daddr, l.rcv_saddr, l.dport, l.family),
            (0, 4, 12, 16),
            "{l:?}"
        );
        // skc_net sits in sock_common's first cache line; inet_sport in inet_sock, after the
        // whole struct sock; ns_common is not at the start of net.
        assert!(l.net > l.family && l.net < 64, "{l:?}");
        assert!(
            l.v6_daddr > l.net && l.v6_rcv_saddr == l.v6_daddr + 16,
            "{l:?}"
        );
        assert!(l.sport > 512, "{l:?}");
        assert!(l.protocol > l.v6_rcv_saddr && l.protocol < l.sport, "{l:?}");
        assert!(l.cookie > l.net && l.cookie < l.protocol, "{l:?}");
        assert!(l.net_inum > 0 && l.net_inum < 4096, "{l:?}");
        assert!(
            matches!(
                btf.offset_of_sized("sock", &["sk_protocol"], 4),
                Err(BtfError::Size { actual: 2, .. })
            ),
            "sizes are checked"
        );
    }
}
