//! [`Object`]s as nf_tables netlink messages (`linux/netfilter/nf_tables.h`), the ones nft
//! 1.0.6 sends for the same commands; pure, no I/O.

use super::TABLE;
use super::netlink::{Message, NLM_F_CREATE, Writer};
use super::rules::{
    ChainKind, Change, CmpOp, CtKey, Expr, Hook, MetaKey, Object, PayloadBase, Verdict,
};

/// `IFNAMSIZ`: an `ifname` key or comparison is the name, NUL-padded to this length.
pub(super) const IFNAMSIZ: usize = 16;

/// `linux/netfilter.h`: `NFPROTO_INET`, the family of `table inet kvnet`.
pub(super) const NFPROTO_INET: u8 = 1;

/// Message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
/// Asks for the ruleset's generation, which every committed batch (anyone's) changes.
pub(super) const NFT_MSG_GETGEN: u16 = 16;
/// `NLM_F_APPEND`: a new rule goes at the end of its chain.
const NLM_F_APPEND: u16 = 0x800;

/// Attributes of tables, chains, hooks, rules, sets and elements.
pub(super) const NFTA_TABLE_NAME: u16 = 1;
pub(super) const NFTA_CHAIN_TABLE: u16 = 1;
pub(super) const NFTA_CHAIN_NAME: u16 = 3;
pub(super) const NFTA_CHAIN_HOOK: u16 = 4;
pub(super) const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
pub(super) const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub(super) const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_GEN_ID: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

/// `NFT_SET_MAP`, and `NFT_DATA_VERDICT` as a map's data type.
const NFT_SET_MAP: u32 = 0x8;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft's datatype number of `ifname`; a concatenation shifts earlier fields by 6 bits.
const TYPE_IFNAME: u32 = 41;
const TYPE_BITS: u32 = 6;
/// nft's set user data (key byte order, and for maps the data's): without it `nft list`
/// would not know how to print the keys. Byte for byte what nft 1.0.6 stores.
const USERDATA_IFNAME: &[u8] = &[0, 4, 1, 0, 0, 0];
const USERDATA_IFNAME_PAIR: &[u8] = &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0];
const USERDATA_VERDICT_MAP: &[u8] = &[0, 4, 1, 0, 0, 0, 1, 4, 0, 0, 0, 0, 6, 4, 0, 0, 0, 0];

/// The type of the rule user data record that carries a stamp. nft shows only its own
/// record types (0, a comment) and skips the rest, so `nft list` shows nothing of it.
const UDATA_STAMP: u8 = 0xcb;

/// Verdict codes: `NF_DROP`, `NF_ACCEPT`, `NFT_JUMP`, `NFT_RETURN`.
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
/// `NF_INET_*` hook numbers.
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
/// `NF_ACCEPT` as a chain policy.
const POLICY_ACCEPT: u32 = 1;
/// `NF_NAT_RANGE_PROTO_SPECIFIED`, `NFT_NAT_SNAT`, `NFPROTO_IPV4`.
const NAT_RANGE_PROTO_SPECIFIED: u32 = 0x2;
const NFT_NAT_SNAT: u32 = 0;
const NFPROTO_IPV4: u32 = 2;
/// `NFT_REJECT_ICMPX_UNREACH` with `NFT_REJECT_ICMPX_PORT_UNREACH`: nft's plain `reject`.
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
/// `NFTA_FIB_F_SADDR | NFTA_FIB_F_IIF | NFTA_FIB_F_PRESENT` with `NFT_FIB_RESULT_OIF`.
const FIB_SADDR_IIF_PRESENT: u32 = 0x1 | 0x8 | 0x20;
const NFT_FIB_RESULT_OIF: u32 = 1;

/// The netlink message for one object.
pub(super) fn message(object: &Object) -> Message {
    let mut w = Writer::new();
    let (kind, flags) = match object {
        Object::Table => {
            w.string(NFTA_TABLE_NAME, TABLE);
            (NFT_MSG_NEWTABLE, NLM_F_CREATE)
        }
        Object::Set {
            name,
            fields,
            verdict_map,
            id,
        } => {
            w.string(NFTA_SET_TABLE, TABLE).string(NFTA_SET_NAME, name);
            if *verdict_map {
                w.be32(NFTA_SET_FLAGS, NFT_SET_MAP);
            }
            let key_type = (1..*fields).fold(TYPE_IFNAME, |t, _| (t << TYPE_BITS) | TYPE_IFNAME);
            w.be32(NFTA_SET_KEY_TYPE, key_type)
                .be32(NFTA_SET_KEY_LEN, (IFNAMSIZ * fields) as u32);
            if *verdict_map {
                w.be32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            }
            let userdata = match (verdict_map, fields) {
                (true, _) => USERDATA_VERDICT_MAP,
                (false, 1) => USERDATA_IFNAME,
                (false, _) => USERDATA_IFNAME_PAIR,
            };
            w.be32(NFTA_SET_ID, *id).bytes(NFTA_SET_USERDATA, userdata);
            (NFT_MSG_NEWSET, NLM_F_CREATE)
        }
        Object::Chain { name, base } => {
            w.string(NFTA_CHAIN_TABLE, TABLE)
                .string(NFTA_CHAIN_NAME, name);
            if let Some((hook, kind)) = base {
                let (hooknum, type_name, priority) = match (hook, kind) {
                    (Hook::Input, _) => (NF_INET_LOCAL_IN, "filter", 0),
                    (Hook::Forward, _) => (NF_INET_FORWARD, "filter", 0),
                    (Hook::Output, _) => (NF_INET_LOCAL_OUT, "filter", 0),
                    (Hook::Postrouting, ChainKind::Filter) => (NF_INET_POST_ROUTING, "filter", 0),
                    (Hook::Postrouting, ChainKind::SourceNat) => (NF_INET_POST_ROUTING, "nat", 100),
                };
                w.nested(NFTA_CHAIN_HOOK, |h| {
                    h.be32(NFTA_HOOK_HOOKNUM, hooknum)
                        .be32(NFTA_HOOK_PRIORITY, priority);
                })
                .be32(NFTA_CHAIN_POLICY, POLICY_ACCEPT)
                .string(NFTA_CHAIN_TYPE, type_name);
            }
            (NFT_MSG_NEWCHAIN, NLM_F_CREATE)
        }
        Object::FlushChain(name) => {
            w.string(NFTA_RULE_TABLE, TABLE)
                .string(NFTA_RULE_CHAIN, name);
            (NFT_MSG_DELRULE, 0)
        }
        Object::Rule {
            chain,
            exprs,
            stamp,
        } => {
            w.string(NFTA_RULE_TABLE, TABLE)
                .string(NFTA_RULE_CHAIN, chain)
                .nested(NFTA_RULE_EXPRESSIONS, |list| {
                    for expr in exprs {
                        list.nested(NFTA_LIST_ELEM, |e| expression(e, expr));
                    }
                });
            if let Some(stamp) = stamp {
                let mut userdata = vec![UDATA_STAMP, 8];
                userdata.extend_from_slice(&stamp.to_be_bytes());
                w.bytes(NFTA_RULE_USERDATA, &userdata);
            }
            (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND)
        }
        Object::Element(change, element) => {
            let mut key = Vec::with_capacity(IFNAMSIZ * element.key.len());
            for name in &element.key {
                key.extend_from_slice(&super::rules::ifname(name));
            }
            set_element(&mut w, &element.set, &key, None);
            element_kind(*change)
        }
        Object::NatJump(change, bridge) => {
            let chain = super::rules::nat_chain(bridge);
            let jump = (*change == Change::Add).then_some(chain.as_str());
            set_element(
                &mut w,
                super::rules::NAT_MAP,
                &super::rules::ifname(bridge),
                jump,
            );
            element_kind(*change)
        }
        Object::DeleteChain(name) => {
            w.string(NFTA_CHAIN_TABLE, TABLE)
                .string(NFTA_CHAIN_NAME, name);
            (NFT_MSG_DELCHAIN, 0)
        }
        Object::DeleteTable => {
            w.string(NFTA_TABLE_NAME, TABLE);
            (NFT_MSG_DELTABLE, 0)
        }
    };
    Message {
        kind,
        flags,
        family: NFPROTO_INET,
        body: w.finish(),
        what: object.to_string(),
    }
}

/// A fingerprint (64-bit FNV-1a) of the messages `objects` encode to: it changes with any
/// change to the rules or to how they are encoded, and is the same in every run of a build.
pub(super) fn fingerprint<'a>(objects: impl IntoIterator<Item = &'a Object>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET_BASIS;
    for object in objects {
        let message = message(object);
        let head = [message.kind.to_be_bytes(), message.flags.to_be_bytes()];
        for byte in head.iter().flatten().chain(&message.body) {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(PRIME);
        }
    }
    hash
}

/// The stamp in a rule's user data (`NFTA_RULE_USERDATA`, a list of type-length-value
/// records), if it carries one.
pub(super) fn stamp(userdata: &[u8]) -> Option<u64> {
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let (value, next) = tail.split_at_checked(usize::from(*len))?;
        if *kind == UDATA_STAMP {
            return value.try_into().ok().map(u64::from_be_bytes);
        }
        rest = next;
    }
    None
}

/// The chain a verdict-map element (the attributes of one `NFTA_LIST_ELEM`) jumps to;
/// `None` for any other verdict, or none.
pub(super) fn jump_target(element: &[u8]) -> Option<String> {
    use super::netlink::{attribute, be32, text};
    let verdict = attribute(element, NFTA_SET_ELEM_DATA)
        .and_then(|data| attribute(data, NFTA_DATA_VERDICT))?;
    let code = attribute(verdict, NFTA_VERDICT_CODE).and_then(be32)?;
    (code == NFT_JUMP as u32)
        .then(|| attribute(verdict, NFTA_VERDICT_CHAIN).map(text))
        .flatten()
}

fn element_kind(change: Change) -> (u16, u16) {
    match change {
        Change::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
        Change::Delete => (NFT_MSG_DELSETELEM, 0),
    }
}

/// One element of `set` with `key`, mapping to `jump CHAIN` when given.
fn set_element(w: &mut Writer, set: &str, key: &[u8], jump: Option<&str>) {
    w.string(NFTA_SET_ELEM_LIST_TABLE, TABLE)
        .string(NFTA_SET_ELEM_LIST_SET, set)
        .nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            list.nested(NFTA_LIST_ELEM, |elem| {
                elem.nested(NFTA_SET_ELEM_KEY, |data| {
                    data.bytes(NFTA_DATA_VALUE, key);
                });
                if let Some(chain) = jump {
                    elem.nested(NFTA_SET_ELEM_DATA, |data| {
                        data.nested(NFTA_DATA_VERDICT, |verdict| {
                            verdict
                                .be32(NFTA_VERDICT_CODE, NFT_JUMP as u32)
                                .string(NFTA_VERDICT_CHAIN, chain);
                        });
                    });
                }
            });
        });
}

/// One expression: its name and its attributes (`NFTA_<NAME>_*`, numbered as below).
fn expression(w: &mut Writer, expr: &Expr) {
    let value = |w: &mut Writer, kind: u16, bytes: &[u8]| {
        w.nested(kind, |data| {
            data.bytes(NFTA_DATA_VALUE, bytes);
        });
    };
    let name = match expr {
        Expr::Meta(..) => "meta",
        Expr::Cmp(..) => "cmp",
        Expr::Lookup { .. } => "lookup",
        Expr::Payload(..) => "payload",
        Expr::Bitwise(..) => "bitwise",
        Expr::Ct(..) => "ct",
        Expr::FibSourceViaIif(_) => "fib",
        Expr::Counter => "counter",
        Expr::Load(..) | Expr::Verdict(_) => "immediate",
        Expr::Reject => "reject",
        Expr::Masquerade { .. } => "masq",
        Expr::Snat { .. } => "nat",
    };
    w.string(NFTA_EXPR_NAME, name);
    if *expr == Expr::Counter {
        return; // zeroed counters need no attributes
    }
    w.nested(NFTA_EXPR_DATA, |d| match expr {
        Expr::Meta(key, reg) => {
            let key = match key {
                MetaKey::Iifname => 6,
                MetaKey::Oifname => 7,
                MetaKey::Nfproto => 15,
                MetaKey::L4proto => 16,
            };
            d.be32(1, *reg).be32(2, key); // DREG, KEY
        }
        Expr::Cmp(op, reg, data) => {
            let op = match op {
                CmpOp::Eq => 0,
                CmpOp::Neq => 1,
            };
            d.be32(1, *reg).be32(2, op); // SREG, OP
            value(d, 3, data); // DATA
        }
        Expr::Lookup {
            set,
            reg,
            verdict_map,
        } => {
            d.string(1, set).be32(2, *reg); // SET, SREG
            if *verdict_map {
                d.be32(3, 0); // DREG: the verdict register
            }
        }
        Expr::Payload(base, offset, len, reg) => {
            let base = match base {
                PayloadBase::Network => 1,
                PayloadBase::Transport => 2,
            };
            // DREG, BASE, OFFSET, LEN
            d.be32(1, *reg).be32(2, base).be32(3, *offset).be32(4, *len);
        }
        Expr::Bitwise(reg, mask, xor) => {
            // SREG, DREG, LEN, MASK, XOR
            d.be32(1, *reg).be32(2, *reg).be32(3, mask.len() as u32);
            value(d, 4, mask);
            value(d, 5, xor);
        }
        Expr::Ct(key, reg) => {
            let key = match key {
                CtKey::State => 0,
                CtKey::Status => 2,
            };
            d.be32(1, *reg).be32(2, key); // DREG, KEY
        }
        Expr::FibSourceViaIif(reg) => {
            // DREG, RESULT, FLAGS
            d.be32(1, *reg)
                .be32(2, NFT_FIB_RESULT_OIF)
                .be32(3, FIB_SADDR_IIF_PRESENT);
        }
        Expr::Load(reg, data) => {
            d.be32(1, *reg); // DREG
            value(d, 2, data); // DATA
        }
        Expr::Verdict(verdict) => {
            let code = match verdict {
                Verdict::Accept => NF_ACCEPT,
                Verdict::Drop => NF_DROP,
                Verdict::Return => NFT_RETURN,
            };
            d.be32(1, 0).nested(2, |data| {
                data.nested(NFTA_DATA_VERDICT, |v| {
                    v.be32(NFTA_VERDICT_CODE, code as u32);
                });
            });
        }
        Expr::Reject => {
            // TYPE, ICMP_CODE
            d.be32(1, NFT_REJECT_ICMPX_UNREACH)
                .bytes(2, &[NFT_REJECT_ICMPX_PORT_UNREACH]);
        }
        Expr::Masquerade { ports } => {
            if let Some((min, max)) = ports {
                // FLAGS, REG_PROTO_MIN, REG_PROTO_MAX
                d.be32(1, NAT_RANGE_PROTO_SPECIFIED).be32(2, *min);
                if let Some(max) = max {
                    d.be32(3, *max);
                }
            }
        }
        Expr::Snat { addresses, ports } => {
            // TYPE, FAMILY, REG_ADDR_MIN, REG_ADDR_MAX, REG_PROTO_MIN, REG_PROTO_MAX, FLAGS
            d.be32(1, NFT_NAT_SNAT)
                .be32(2, NFPROTO_IPV4)
                .be32(3, addresses.0);
            if let Some(max) = addresses.1 {
                d.be32(4, max);
            }
            if let Some((min, max)) = ports {
                d.be32(5, *min);
                if let Some(max) = max {
                    d.be32(6, *max);
                }
                d.be32(7, NAT_RANGE_PROTO_SPECIFIED);
            }
        }
        Expr::Counter => {}
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(stamp: Option<u64>) -> Object {
        Object::Rule {
            chain: "input".to_owned(),
            exprs: vec![Expr::Counter],
            stamp,
        }
    }

    #[test]
    fn a_stamp_is_found_among_other_user_data_and_nowhere_else() {
        let stamped = message(&rule(Some(0x0102_0304_0506_0708))).body;
        let userdata = super::super::netlink::attribute(&stamped, NFTA_RULE_USERDATA);
        assert_eq!(userdata.and_then(stamp), Some(0x0102_0304_0506_0708));
        // After nft's comment record, as a rule someone commented might carry it.
        let mut with_comment = vec![0, 3, b'h', b'i', 0];
        with_comment.extend_from_slice(userdata.unwrap_or_default());
        assert_eq!(stamp(&with_comment), Some(0x0102_0304_0506_0708));
        // Nothing, a comment alone, a record cut short, a stamp of the wrong size.
        for userdata in [
            &[][..],
            &[0, 3, b'h', b'i', 0],
            &[UDATA_STAMP, 8, 1, 2, 3],
            &[UDATA_STAMP, 4, 1, 2, 3, 4],
            &[0, 200, 1],
        ] {
            assert_eq!(stamp(userdata), None, "{userdata:?}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_what_the_messages_say() {
        let counter = fingerprint(&[rule(None)]);
        assert_eq!(fingerprint(&[rule(None)]), counter);
        assert_ne!(fingerprint(&[rule(Some(1))]), counter);
        let reject = Object::Rule {
            chain: "input".to_owned(),
            exprs: vec![Expr::Counter, Expr::Reject],
            stamp: None,
        };
        assert_ne!(fingerprint(&[reject]), counter);
    }
}
