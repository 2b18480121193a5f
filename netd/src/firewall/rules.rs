//! Pure rendering of kvnet's nftables batches (no I/O), in the `nftables` crate's typed
//! JSON model. The layout and its reasons are in the [module docs](super).
//!
//! The rules are fixed; networks are data. libvirt's per-network rules
//! (`network_nftables.c`, `network_iptables.c`) become elements of hash sets keyed by the
//! bridge `B` (then the forward device `D`, in the `_dev` sets):
//!
//! ```text
//! chain forward (filter, policy accept)
//!   iifname . oifname @same_bridge accept                      B . B    guest <-> guest
//!   meta nfproto ipv4 oifname @reply4 ct state established,related accept     nat: replies
//!   meta nfproto ipv4 oifname . iifname @reply4_dev ct state ... accept       B . D
//!   meta nfproto ipv4 oifname @in4 accept (and @in4_dev)                      route
//!   meta nfproto ipv6 oifname @in6 accept (and @in6_dev)                      nat or route
//!   oifname @bridges reject                                                   the rest in
//!   meta nfproto ipv4 iifname @out4 fib saddr . iif oif exists accept (and @out4_dev: B . D)
//!   meta nfproto ipv6 iifname @out6 fib saddr . iif oif exists accept (and @out6_dev)
//!   iifname @bridges reject                                                   the rest out
//! chain postrouting (nat, srcnat)
//!   ip daddr { 224.0.0.0/24, 255.255.255.255 } return   link-local multicast; broadcast, whose
//!                                                       rewritten ports strict DHCP clients reject
//!   iifname . oifname @same_bridge return               routed back into the subnet
//!   iifname vmap @postrouting_iif                       B : jump nat-B (custom <nat> only)
//!   meta nfproto ipv4 meta l4proto tcp|udp iifname @nat4 masquerade to :1024-65535
//!   meta nfproto ipv4 iifname @nat4 masquerade          (and @nat4_dev: B . D)
//! ```
//! Source ports stay >= 1024 so guests cannot pose as "secure port" NFS clients. A network
//! with `<nat><address>` or a non-default `<nat><port>` gets its own chain `nat-B` instead
//! (`ip saddr N [oifname D]` then `snat ip to A-B:P1-P2` or `masquerade to :P1-P2`). IPv6
//! is routed in nat mode, as libvirt does unless `<nat ipv6='yes'>`. Isolated networks are
//! only in `bridges` and `same_bridge`. Every rule counts (`counter`), so
//! `nft list table inet kvnet` shows where guest traffic goes.

use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix, Range, SetItem, Verdict,
};
use nftables::schema::{
    Chain, Element, FlushObject, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::{
    AnonymousCounter, Counter, JumpTarget, Match, NAT, NATFamily, Operator, Statement, VerdictMap,
};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde::Serialize;

use super::{Error, NetworkRules, RuleMode, TABLE};

/// Every bridge that has rules; the host-side DHCP/DNS accepts and the rejects match on it.
pub const BRIDGES_SET: &str = "bridges";
/// Verdict map from bridge to its custom NAT chain.
const NAT_MAP: &str = "postrouting_iif";
/// Prefix of a bridge's custom NAT chain.
const NAT_CHAIN_PREFIX: &str = "nat-";
/// libvirt's default NAT source port range.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (1024, 65535);

/// Base chain priorities: `filter` (0) and `srcnat` (100), as nft spells them.
const PRIO_FILTER: i32 = 0;
const PRIO_SRCNAT: i32 = 100;

/// The named sets of the table and their key types (the bridge name always comes first;
/// `_dev` sets add the forward device). All are hash sets: adding and deleting an element
/// costs the same with 1 or 1,000 networks.
const SETS: [(&str, &[SetType]); 14] = {
    use SetType::Ifname as If;
    [
        (BRIDGES_SET, &[If]),
        ("same_bridge", &[If, If]),
        ("reply4", &[If]),
        ("reply4_dev", &[If, If]),
        ("in4", &[If]),
        ("in4_dev", &[If, If]),
        ("in6", &[If]),
        ("in6_dev", &[If, If]),
        ("out4", &[If]),
        ("out4_dev", &[If, If]),
        ("out6", &[If]),
        ("out6_dev", &[If, If]),
        ("nat4", &[If]),
        ("nat4_dev", &[If, If]),
    ]
};

/// Whether `name` is one of kvnet's data sets (whose elements a bridge owns).
pub fn is_data_set(name: &str) -> bool {
    SETS.iter().any(|(set, _)| *set == name)
}

/// One element a bridge owns: the set and its key, as given to `add`/`delete element`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedElement {
    /// The set's name.
    pub set: String,
    /// The key (a bridge name, or a concatenation starting with it).
    pub key: Expression<'static>,
}

impl OwnedElement {
    fn new(set: &str, mut parts: Vec<Expression<'static>>) -> OwnedElement {
        let key = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expression::Named(NamedExpression::Concat(parts))
        };
        OwnedElement {
            set: set.to_owned(),
            key,
        }
    }

    /// The bridge this element belongs to: its (first) string component.
    pub fn bridge(&self) -> Option<&str> {
        match &self.key {
            Expression::String(bridge) => Some(bridge),
            Expression::Named(NamedExpression::Concat(parts)) => match parts.first() {
                Some(Expression::String(bridge)) => Some(bridge),
                _ => None,
            },
            _ => None,
        }
    }

    fn element(&self) -> Element<'static> {
        Element {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: self.set.clone().into(),
            elem: vec![self.key.clone()].into(),
        }
    }
}

/// Checks a Linux interface name the way the kernel's `dev_valid_name` does.
pub(super) fn check_ifname(bridge: &str, what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 15 {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("it contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            bridge: bridge.to_owned(),
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

impl NetworkRules {
    /// Checks what nft would otherwise reject or misread: interface names, and the NAT
    /// ranges of a nat network (port 0 or start after end).
    pub fn validate(&self) -> Result<(), Error> {
        check_ifname(&self.bridge, "bridge", &self.bridge)?;
        if let Some(dev) = &self.forward_dev {
            check_ifname(&self.bridge, "forward device", dev)?;
        }
        if self.mode != RuleMode::Nat {
            // `<nat>` ranges mean nothing to other modes.
            return Ok(());
        }
        let (first, last) = self.nat_ports;
        if first == 0 || first > last {
            return Err(Error::InvalidRange {
                bridge: self.bridge.clone(),
                what: "port",
                start: first.to_string(),
                end: last.to_string(),
            });
        }
        if let Some((start, end)) = self.nat_addresses
            && start > end
        {
            return Err(Error::InvalidRange {
                bridge: self.bridge.clone(),
                what: "address",
                start: start.to_string(),
                end: end.to_string(),
            });
        }
        Ok(())
    }
}

/// One object of a batch: typed where the `nftables` crate can say it, raw JSON for the
/// verdict-map declaration (its `SetType` has no `verdict`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchObject {
    /// An object of the crate's schema.
    Typed(NfObject<'static>),
    /// A hand-written JSON object.
    Raw(serde_json::Value),
}

/// The table, its sets, map and base chains with their fixed rules. Idempotent: every batch
/// starts with it, so a change also repairs a table someone else flushed or deleted.
pub fn skeleton() -> Vec<BatchObject> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }));
    for (name, key) in SETS {
        batch.add(NfListObject::Set(Box::new(Set {
            family: NfFamily::INet,
            table: TABLE.into(),
            name: name.into(),
            handle: None,
            set_type: if key.len() == 1 {
                SetTypeValue::Single(key[0])
            } else {
                SetTypeValue::Concatenated(key.to_vec().into())
            },
            policy: None,
            flags: None,
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        })));
    }
    let mut objects: Vec<BatchObject> = typed(batch);
    objects.push(BatchObject::Raw(serde_json::json!({
        "add": { "map": {
            "family": "inet", "table": TABLE, "name": NAT_MAP,
            "type": "ifname", "map": "verdict",
        }}
    })));

    let mut batch = Batch::new();
    let iif = || meta(MetaKey::Iifname);
    let oif = || meta(MetaKey::Oifname);
    add_base_chain(
        &mut batch,
        "input",
        NfChainType::Filter,
        NfHook::Input,
        PRIO_FILTER,
        vec![
            // DHCP, DNS and DHCPv6 from guests to the host's servers.
            with_accept(vec![
                in_set(iif(), BRIDGES_SET),
                is(payload("udp", "dport"), set([53, 67, 547])),
            ]),
            with_accept(vec![
                in_set(iif(), BRIDGES_SET),
                is(payload("tcp", "dport"), number(53)),
            ]),
        ],
    );
    add_base_chain(
        &mut batch,
        "output",
        NfChainType::Filter,
        NfHook::Output,
        PRIO_FILTER,
        vec![
            // DHCP and DHCPv6 replies, DNS answers from the host to guests.
            with_accept(vec![
                in_set(oif(), BRIDGES_SET),
                is(payload("udp", "dport"), set([68, 546])),
            ]),
            with_accept(vec![
                in_set(oif(), BRIDGES_SET),
                is(payload("udp", "sport"), number(53)),
            ]),
            with_accept(vec![
                in_set(oif(), BRIDGES_SET),
                is(payload("tcp", "sport"), number(53)),
            ]),
        ],
    );
    let ipv4 = || is(meta(MetaKey::Nfproto), string("ipv4".to_owned()));
    let ipv6 = || is(meta(MetaKey::Nfproto), string("ipv6".to_owned()));
    // The source is one the bridge's routes cover, i.e. in the network's subnets.
    let source_behind_iif = || {
        is(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Oif,
                flags: [FibFlag::Saddr, FibFlag::Iif].into_iter().collect(),
            })),
            Expression::Boolean(true),
        )
    };
    add_base_chain(
        &mut batch,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
        vec![
            with_accept(vec![in_set(concat([iif(), oif()]), "same_bridge")]),
            // Into a network (by destination bridge first, as libvirt orders its chains);
            // routing already chose the bridge by the destination's subnet.
            with_accept(vec![ipv4(), in_set(oif(), "reply4"), established()]),
            with_accept(vec![
                ipv4(),
                in_set(concat([oif(), iif()]), "reply4_dev"),
                established(),
            ]),
            with_accept(vec![ipv4(), in_set(oif(), "in4")]),
            with_accept(vec![ipv4(), in_set(concat([oif(), iif()]), "in4_dev")]),
            with_accept(vec![ipv6(), in_set(oif(), "in6")]),
            with_accept(vec![ipv6(), in_set(concat([oif(), iif()]), "in6_dev")]),
            vec![
                in_set(oif(), BRIDGES_SET),
                counter(),
                Statement::Reject(None),
            ],
            // Out of a network, from its own subnets only.
            with_accept(vec![ipv4(), in_set(iif(), "out4"), source_behind_iif()]),
            with_accept(vec![
                ipv4(),
                in_set(concat([iif(), oif()]), "out4_dev"),
                source_behind_iif(),
            ]),
            with_accept(vec![ipv6(), in_set(iif(), "out6"), source_behind_iif()]),
            with_accept(vec![
                ipv6(),
                in_set(concat([iif(), oif()]), "out6_dev"),
                source_behind_iif(),
            ]),
            vec![
                in_set(iif(), BRIDGES_SET),
                counter(),
                Statement::Reject(None),
            ],
        ],
    );
    let mut nat_rules = vec![
        vec![
            is(
                payload("ip", "daddr"),
                Expression::Named(NamedExpression::Set(vec![
                    SetItem::Element(prefix(Ipv4Addr::new(224, 0, 0, 0).to_string(), 24)),
                    SetItem::Element(string(Ipv4Addr::BROADCAST.to_string())),
                ])),
            ),
            counter(),
            Statement::Return(None),
        ],
        // Routed back into the same bridge: the destination is inside the subnet.
        vec![
            in_set(concat([iif(), oif()]), "same_bridge"),
            counter(),
            Statement::Return(None),
        ],
        vec![Statement::VerdictMap(VerdictMap {
            key: iif(),
            data: string(format!("@{NAT_MAP}")),
        })],
    ];
    // The forward chain let only the networks' own sources out, so the bridge is enough.
    for (set, key) in [("nat4", iif()), ("nat4_dev", concat([iif(), oif()]))] {
        for protocol in ["tcp", "udp"] {
            nat_rules.push(vec![
                ipv4(),
                is(meta(MetaKey::L4proto), string(protocol.to_owned())),
                in_set(key.clone(), set),
                counter(),
                translate(None, Some(DEFAULT_NAT_PORTS)),
            ]);
        }
        nat_rules.push(vec![
            ipv4(),
            in_set(key, set),
            counter(),
            translate(None, None),
        ]);
    }
    add_base_chain(
        &mut batch,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
        nat_rules,
    );
    objects.extend(typed(batch));
    objects
}

fn typed(batch: Batch<'static>) -> Vec<BatchObject> {
    batch
        .to_nftables()
        .objects
        .iter()
        .cloned()
        .map(BatchObject::Typed)
        .collect()
}

/// `add` (idempotent) a base chain with policy accept, flush it and add its rules, so the
/// fixed rules exist exactly once whatever state the chain was in.
fn add_base_chain(
    batch: &mut Batch<'static>,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
    rules: Vec<Vec<Statement<'static>>>,
) {
    batch.add(NfListObject::Chain(Chain {
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        policy: Some(NfChainPolicy::Accept),
        ..chain(name.to_owned())
    }));
    batch.add_cmd(NfCmd::Flush(FlushObject::Chain(chain(name.to_owned()))));
    for expr in rules {
        batch.add(rule(name.to_owned(), expr));
    }
}

/// Whether the network needs its own NAT chain (anything but libvirt's default `<nat>`).
pub(super) fn has_custom_nat(rules: &NetworkRules) -> bool {
    rules.mode == RuleMode::Nat
        && !rules.ipv4.is_empty()
        && (rules.nat_addresses.is_some() || rules.nat_ports != DEFAULT_NAT_PORTS)
}

/// The set elements a network owns (none in open mode).
pub fn elements(rules: &NetworkRules) -> Vec<OwnedElement> {
    if rules.mode == RuleMode::Open {
        return Vec::new();
    }
    let bridge = || string(rules.bridge.clone());
    // `name` keyed by the bridge, or `name_dev` by the bridge and the forward device.
    let keyed = |name: &str| match &rules.forward_dev {
        Some(dev) => OwnedElement::new(&format!("{name}_dev"), vec![bridge(), string(dev.clone())]),
        None => OwnedElement::new(name, vec![bridge()]),
    };
    let mut out = vec![
        OwnedElement::new(BRIDGES_SET, vec![bridge()]),
        OwnedElement::new("same_bridge", vec![bridge(), bridge()]),
    ];
    if rules.mode == RuleMode::Isolated {
        return out;
    }
    let nat = rules.mode == RuleMode::Nat;
    if !rules.ipv4.is_empty() {
        out.push(keyed(if nat { "reply4" } else { "in4" }));
        out.push(keyed("out4"));
        if nat && !has_custom_nat(rules) {
            out.push(keyed("nat4"));
        }
    }
    if !rules.ipv6.is_empty() {
        out.push(keyed("in6"));
        out.push(keyed("out6"));
    }
    out
}

/// The batch that replaces a network's rules: removal of the `previous` elements the bridge
/// owned and of any custom NAT chain, then its new elements (and chain). Call
/// [`NetworkRules::validate`] first; prepend [`skeleton`] to apply it.
pub fn render(rules: &NetworkRules, previous: &[OwnedElement]) -> Nftables<'static> {
    let mut batch = Batch::new();
    teardown(&mut batch, &rules.bridge, previous);
    for element in elements(rules) {
        batch.add(NfListObject::Element(element.element()));
    }
    if has_custom_nat(rules) {
        let name = nat_chain(&rules.bridge);
        batch.add(NfListObject::Chain(chain(name.clone())));
        for expr in custom_nat(rules) {
            batch.add(rule(name.clone(), expr));
        }
        batch.add(NfListObject::Element(nat_map_element(&rules.bridge)));
    }
    batch.to_nftables()
}

/// The batch that removes a bridge's `previous` elements and custom NAT chain, whether or
/// not they still exist.
pub fn render_removal(bridge: &str, previous: &[OwnedElement]) -> Nftables<'static> {
    let mut batch = Batch::new();
    teardown(&mut batch, bridge, previous);
    batch.to_nftables()
}

/// Serialises `skeleton` followed by `network` into one JSON batch document.
pub fn document(skeleton: &[BatchObject], network: &Nftables<'static>) -> String {
    #[derive(Serialize)]
    struct Document<'a> {
        nftables: Vec<DocumentObject<'a>>,
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum DocumentObject<'a> {
        Skeleton(&'a BatchObject),
        Network(&'a NfObject<'static>),
    }
    let document = Document {
        nftables: skeleton
            .iter()
            .map(DocumentObject::Skeleton)
            .chain(network.objects.iter().map(DocumentObject::Network))
            .collect(),
    };
    serde_json::to_string(&document)
        .expect("invariant: nftables schema objects and JSON values always serialise")
}

/// `add` then `delete` of everything the bridge may own: "delete if present" inside one
/// transaction (nft 1.0.6 has no `destroy`). The map element goes before its chain.
fn teardown(batch: &mut Batch<'static>, bridge: &str, previous: &[OwnedElement]) {
    let nat_chain = || NfListObject::Chain(chain(nat_chain(bridge)));
    batch.add(nat_chain());
    batch.add(NfListObject::Element(nat_map_element(bridge)));
    for element in previous {
        batch.add(NfListObject::Element(element.element()));
    }
    for element in previous {
        batch.delete(NfListObject::Element(element.element()));
    }
    batch.delete(NfListObject::Element(Element {
        elem: vec![string(bridge.to_owned())].into(),
        ..nat_map_element(bridge)
    }));
    batch.delete(nat_chain());
}

fn nat_chain(bridge: &str) -> String {
    format!("{NAT_CHAIN_PREFIX}{bridge}")
}

fn nat_map_element(bridge: &str) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: NAT_MAP.into(),
        elem: vec![Expression::List(vec![
            string(bridge.to_owned()),
            Expression::Verdict(Verdict::Jump(JumpTarget {
                target: nat_chain(bridge).into(),
            })),
        ])]
        .into(),
    }
}

/// A custom NAT chain: per IPv4 subnet, TCP and UDP with the port range, then the rest.
/// (Multicast, broadcast and in-subnet traffic already returned in `postrouting`.)
fn custom_nat(rules: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let mut out = Vec::new();
    let to_dev = || {
        rules
            .forward_dev
            .iter()
            .map(|dev| is(meta(MetaKey::Oifname), string(dev.clone())))
            .collect::<Vec<_>>()
    };
    for net in &rules.ipv4 {
        for protocol in ["tcp", "udp"] {
            let mut expr = vec![
                is(meta(MetaKey::L4proto), string(protocol.to_owned())),
                is(payload("ip", "saddr"), prefix4(net)),
            ];
            expr.extend(to_dev());
            expr.extend([
                counter(),
                translate(rules.nat_addresses, Some(rules.nat_ports)),
            ]);
            out.push(expr);
        }
        let mut expr = vec![is(payload("ip", "saddr"), prefix4(net))];
        expr.extend(to_dev());
        expr.extend([counter(), translate(rules.nat_addresses, None)]);
        out.push(expr);
    }
    out
}

/// `masquerade [to :P1-P2]`, or `snat ip to A-B[:P1-P2]` with `<nat><address>`.
fn translate(
    addresses: Option<(Ipv4Addr, Ipv4Addr)>,
    ports: Option<(u16, u16)>,
) -> Statement<'static> {
    let port = ports.map(|(first, last)| {
        range_or_single(number(first.into()), number(last.into()), first == last)
    });
    match (addresses, port) {
        (Some((start, end)), port) => Statement::SNAT(Some(NAT {
            addr: Some(range_or_single(
                string(start.to_string()),
                string(end.to_string()),
                start == end,
            )),
            family: Some(NATFamily::IP),
            port,
            flags: None,
        })),
        (None, Some(port)) => Statement::Masquerade(Some(NAT {
            addr: None,
            family: None,
            port: Some(port),
            flags: None,
        })),
        // A bare `masquerade` is `{"masquerade": null}` in nft's JSON.
        (None, None) => Statement::Masquerade(None),
    }
}

fn established() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![
            string("established".to_owned()),
            string("related".to_owned()),
        ]),
        op: Operator::IN,
    })
}

fn in_set(key: Expression<'static>, set: &str) -> Statement<'static> {
    is(key, string(format!("@{set}")))
}

fn concat<const N: usize>(parts: [Expression<'static>; N]) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts.into()))
}

fn range_or_single(
    first: Expression<'static>,
    last: Expression<'static>,
    single: bool,
) -> Expression<'static> {
    if single {
        first
    } else {
        Expression::Range(Box::new(Range {
            range: [first, last],
        }))
    }
}

fn chain(name: String) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        ..Chain::default()
    }
}

fn rule(chain: String, expr: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        ..Rule::default()
    })
}

fn with_accept(mut expr: Vec<Statement<'static>>) -> Vec<Statement<'static>> {
    expr.extend([counter(), Statement::Accept(None)]);
    expr
}

fn counter() -> Statement<'static> {
    Statement::Counter(Counter::Anonymous(Some(AnonymousCounter::default())))
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn string(value: String) -> Expression<'static> {
    Expression::String(value.into())
}

fn number(value: u32) -> Expression<'static> {
    Expression::Number(value)
}

fn set<const N: usize>(values: [u32; N]) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        values
            .into_iter()
            .map(|value| SetItem::Element(number(value)))
            .collect(),
    ))
}

fn prefix(network: String, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(string(network)),
        len: len.into(),
    }))
}

fn prefix4(net: &ipnet::Ipv4Net) -> Expression<'static> {
    prefix(net.network().to_string(), net.prefix_len())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on unexpected errors.
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    fn network(bridge: &str, mode: RuleMode, ipv4: &[&str], ipv6: &[&str]) -> NetworkRules {
        NetworkRules {
            bridge: bridge.to_owned(),
            mode,
            forward_dev: None,
            ipv4: ipv4.iter().map(|net| net.parse().unwrap()).collect(),
            ipv6: ipv6.iter().map(|net| net.parse().unwrap()).collect(),
            nat_addresses: None,
            nat_ports: (1024, 65535),
        }
    }

    /// Sorts every `flags` array: the crate keeps flags in a `HashSet`, whose order varies.
    fn sort_flags(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, inner) in map.iter_mut() {
                    if let (true, serde_json::Value::Array(flags)) = (key == "flags", &mut *inner) {
                        flags.sort_by_key(|flag| flag.to_string());
                    }
                    sort_flags(inner);
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(sort_flags),
            _ => {}
        }
    }

    /// Compares `json` with `tests/fixtures/nft/<name>.json`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, json: &str) {
        let mut value: serde_json::Value = serde_json::from_str(json).unwrap();
        sort_flags(&mut value);
        let json = serde_json::to_string_pretty(&value).unwrap();
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/nft")
            .join(format!("{name}.json"));
        let json = format!("{json}\n");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &json).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(json, expected, "{name} differs from {}", path.display());
    }

    fn golden_network(name: &str, rules: &NetworkRules) {
        rules.validate().unwrap();
        golden(
            name,
            &serde_json::to_string_pretty(&render(rules, &[])).unwrap(),
        );
    }

    #[test]
    fn nat_default_network() {
        // libvirt's `default`: 192.168.122.1/24 on virbr0 (host bits are dropped).
        golden_network(
            "nat-default",
            &network("virbr0", RuleMode::Nat, &["192.168.122.1/24"], &[]),
        );
    }

    #[test]
    fn nat_with_address_and_port_ranges_and_dev() {
        let mut rules = network("kvbr4", RuleMode::Nat, &["10.10.0.0/24"], &[]);
        rules.forward_dev = Some("eth1".to_owned());
        rules.nat_addresses = Some((
            Ipv4Addr::new(198, 51, 100, 10),
            Ipv4Addr::new(198, 51, 100, 20),
        ));
        rules.nat_ports = (2000, 3000);
        golden_network("nat-address-ports", &rules);
    }

    #[test]
    fn nat_dual_stack_routes_ipv6() {
        golden_network(
            "nat-dual-stack",
            &network(
                "kvbr6",
                RuleMode::Nat,
                &["192.168.60.0/24"],
                &["fd00:60::/64"],
            ),
        );
    }

    #[test]
    fn isolated_network() {
        golden_network(
            "isolated",
            &network(
                "kvbr1",
                RuleMode::Isolated,
                &["192.168.100.0/24"],
                &["fd00:100::/64"],
            ),
        );
    }

    #[test]
    fn route_network_with_dev() {
        let mut rules = network("kvbr2", RuleMode::Route, &["192.168.150.0/24"], &[]);
        rules.forward_dev = Some("eth0".to_owned());
        golden_network("route", &rules);
    }

    #[test]
    fn ipv6_route_network() {
        golden_network(
            "route-ipv6",
            &network("kvbr5", RuleMode::Route, &[], &["2001:db8:ca2:2::1/64"]),
        );
    }

    #[test]
    fn open_network_only_tears_down() {
        let open = network("kvbr3", RuleMode::Open, &["192.168.130.0/24"], &[]);
        golden_network("open", &open);
        assert!(elements(&open).is_empty());
        assert_eq!(render(&open, &[]), render_removal("kvbr3", &[]));
    }

    #[test]
    fn table_skeleton() {
        golden(
            "skeleton",
            &serde_json::to_string_pretty(&skeleton()).unwrap(),
        );
    }

    #[test]
    fn reapplying_removes_what_the_bridge_owned_before() {
        // virbr0 moves from a routed 192.168.150.0/24 to the default NAT subnet: the old
        // elements are deleted (after an add, so they may already be gone), the new added.
        let before = network("virbr0", RuleMode::Route, &["192.168.150.0/24"], &[]);
        let after = network("virbr0", RuleMode::Nat, &["192.168.122.0/24"], &[]);
        let previous = elements(&before);
        assert_eq!(previous.len(), 4, "{previous:?}");
        assert!(previous.iter().all(|e| e.bridge() == Some("virbr0")));
        golden(
            "reapply",
            &serde_json::to_string_pretty(&render(&after, &previous)).unwrap(),
        );
    }

    #[test]
    fn validation_refuses_bad_names_and_ranges() {
        let good = network("virbr0", RuleMode::Nat, &["192.168.122.0/24"], &[]);
        good.validate().unwrap();
        for bad in ["", "sixteen-bytes-xx", "a b", "a/b", "a:b", ".."] {
            let mut rules = good.clone();
            rules.bridge = bad.to_owned();
            assert!(
                matches!(
                    rules.validate(),
                    Err(Error::InvalidName { what: "bridge", .. })
                ),
                "{bad:?}"
            );
        }
        let mut rules = good.clone();
        rules.forward_dev = Some("eth 0".to_owned());
        let message = rules.validate().unwrap_err().to_string();
        assert!(
            message.contains("virbr0") && message.contains("eth 0"),
            "{message}"
        );
        let mut rules = good.clone();
        rules.nat_ports = (3000, 2000);
        assert!(matches!(
            rules.validate(),
            Err(Error::InvalidRange { what: "port", .. })
        ));
        let mut rules = good.clone();
        rules.nat_addresses = Some((Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 1)));
        assert!(matches!(
            rules.validate(),
            Err(Error::InvalidRange {
                what: "address",
                ..
            })
        ));
        // Other modes ignore `<nat>` ranges.
        let routed = NetworkRules {
            mode: RuleMode::Route,
            nat_ports: (0, 0),
            ..rules
        };
        routed.validate().unwrap();
    }
}
