//! Pure rendering of kvnet's nftables batches (no I/O), in the `nftables` crate's typed
//! JSON model. The layout and its reasons are in the [module docs](super).
//!
//! Per network (bridge `B`, subnet `N`, optional forward device `D`), after libvirt's rules
//! (`network_nftables.c`, `network_iptables.c`):
//!
//! ```text
//! fwd-to-B    (forward, oifname B)        fwd-from-B  (forward, iifname B)
//!   iifname B accept        (guest<->guest)  nat/route: ip saddr N [oifname D] accept
//!   nat:   [iifname D] ip daddr N ct state established,related accept
//!   route: [iifname D] ip daddr N accept     reject
//!   IPv6 (nat or route): [iifname D] ip6 daddr N6 accept
//!   reject
//! nat-B       (postrouting, iifname B; nat mode, per IPv4 subnet)
//!   ip saddr N ip daddr 224.0.0.0/24 return          (link-local multicast)
//!   ip saddr N ip daddr 255.255.255.255 return       (strict DHCP clients reject rewritten ports)
//!   meta l4proto tcp ip saddr N ip daddr != N [oifname D] masquerade to :P1-P2
//!   meta l4proto udp ...same...                      (source ports >= 1024: no "secure port" NFS bypass)
//!   ip saddr N ip daddr != N [oifname D] masquerade
//! ```
//! With `<nat><address start end>`, `masquerade` becomes `snat ip to start-end[:P1-P2]`.
//! IPv6 is routed in nat mode, as libvirt does unless `<nat ipv6='yes'>`. Isolated networks
//! get only the guest<->guest accept and the two rejects. Every rule counts (`counter`), so
//! `nft list table inet kvnet` shows where guest traffic goes.

use std::borrow::Cow;
use std::net::Ipv4Addr;

use nftables::batch::Batch;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, Range, SetItem,
    Verdict,
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

/// Set of every bridge that has rules; the host-side DHCP/DNS accepts match on it.
pub const BRIDGES_SET: &str = "bridges";

/// Base chain priorities: `filter` (0) and `srcnat` (100), as nft spells them.
const PRIO_FILTER: i32 = 0;
const PRIO_SRCNAT: i32 = 100;

/// The per-network chains and the verdict map that dispatches into each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Forwarded packets leaving through the bridge (towards the guests).
    FwdTo,
    /// Forwarded packets arriving from the bridge (from the guests).
    FwdFrom,
    /// Source NAT of guest traffic.
    Nat,
}

impl Role {
    const ALL: [Role; 3] = [Role::FwdTo, Role::FwdFrom, Role::Nat];

    fn prefix(self) -> &'static str {
        match self {
            Role::FwdTo => "fwd-to-",
            Role::FwdFrom => "fwd-from-",
            Role::Nat => "nat-",
        }
    }

    fn map(self) -> &'static str {
        match self {
            Role::FwdTo => "forward_oif",
            Role::FwdFrom => "forward_iif",
            Role::Nat => "postrouting_iif",
        }
    }

    fn chain(self, bridge: &str) -> String {
        format!("{}{bridge}", self.prefix())
    }
}

/// The bridge a per-network chain belongs to, or `None` for any other chain name.
pub fn bridge_of_chain(chain: &str) -> Option<&str> {
    Role::ALL
        .iter()
        .find_map(|role| chain.strip_prefix(role.prefix()))
        .filter(|bridge| !bridge.is_empty())
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
    /// Checks what nft would otherwise reject or misread: interface names and NAT ranges.
    pub fn validate(&self) -> Result<(), Error> {
        check_ifname(&self.bridge, "bridge", &self.bridge)?;
        if let Some(dev) = &self.forward_dev {
            check_ifname(&self.bridge, "forward device", dev)?;
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
/// verdict-map declarations (its `SetType` has no `verdict`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BatchObject {
    /// An object of the crate's schema.
    Typed(NfObject<'static>),
    /// A hand-written JSON object.
    Raw(serde_json::Value),
}

/// The table, its set, maps and base chains with their dispatch rules. Idempotent: every
/// batch starts with it, so a change also repairs a table someone else flushed or deleted.
pub fn skeleton() -> Vec<BatchObject> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(Table {
        family: NfFamily::INet,
        name: TABLE.into(),
        handle: None,
    }));
    batch.add(NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BRIDGES_SET.into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ifname),
        policy: None,
        flags: None,
        elem: None,
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    })));
    let mut objects: Vec<BatchObject> = batch
        .to_nftables()
        .objects
        .iter()
        .cloned()
        .map(BatchObject::Typed)
        .collect();
    objects.extend(Role::ALL.iter().map(|role| {
        BatchObject::Raw(serde_json::json!({
            "add": { "map": {
                "family": "inet", "table": TABLE, "name": role.map(),
                "type": "ifname", "map": "verdict",
            }}
        }))
    }));

    let bridges = || string(format!("@{BRIDGES_SET}"));
    let mut batch = Batch::new();
    add_base_chain(
        &mut batch,
        "input",
        NfChainType::Filter,
        NfHook::Input,
        PRIO_FILTER,
        vec![
            // DHCP, DNS and DHCPv6 from guests to the host's servers.
            with_accept(vec![
                is(meta(MetaKey::Iifname), bridges()),
                is(payload("udp", "dport"), set([53, 67, 547])),
            ]),
            with_accept(vec![
                is(meta(MetaKey::Iifname), bridges()),
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
                is(meta(MetaKey::Oifname), bridges()),
                is(payload("udp", "dport"), set([68, 546])),
            ]),
            with_accept(vec![
                is(meta(MetaKey::Oifname), bridges()),
                is(payload("udp", "sport"), number(53)),
            ]),
            with_accept(vec![
                is(meta(MetaKey::Oifname), bridges()),
                is(payload("tcp", "sport"), number(53)),
            ]),
        ],
    );
    add_base_chain(
        &mut batch,
        "forward",
        NfChainType::Filter,
        NfHook::Forward,
        PRIO_FILTER,
        // Destination bridge first, as libvirt orders its chains.
        vec![
            vec![dispatch(MetaKey::Oifname, Role::FwdTo)],
            vec![dispatch(MetaKey::Iifname, Role::FwdFrom)],
        ],
    );
    add_base_chain(
        &mut batch,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        PRIO_SRCNAT,
        vec![vec![dispatch(MetaKey::Iifname, Role::Nat)]],
    );
    objects.extend(
        batch
            .to_nftables()
            .objects
            .iter()
            .cloned()
            .map(BatchObject::Typed),
    );
    objects
}

/// `add` (idempotent) a base chain with policy accept, flush it and add its rules, so the
/// dispatch rules exist exactly once whatever state the chain was in.
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

/// The batch that replaces a network's rules: teardown of whatever the bridge had, then
/// its new chains, rules and map elements (none for [`RuleMode::Open`]). Call
/// [`NetworkRules::validate`] first; prepend [`skeleton`] to apply it.
pub fn render(rules: &NetworkRules) -> Nftables<'static> {
    let mut batch = Batch::new();
    teardown(&mut batch, &rules.bridge);
    if rules.mode != RuleMode::Open {
        setup(&mut batch, rules);
    }
    batch.to_nftables()
}

/// The batch that removes a bridge's rules, whether or not it has any.
pub fn render_removal(bridge: &str) -> Nftables<'static> {
    let mut batch = Batch::new();
    teardown(&mut batch, bridge);
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

/// `add` then `delete` of every object a bridge can own: "delete if present" inside one
/// transaction (nft 1.0.6 has no `destroy`). Elements go before the chains they jump to.
fn teardown(batch: &mut Batch<'static>, bridge: &str) {
    for role in Role::ALL {
        batch.add(NfListObject::Chain(chain(role.chain(bridge))));
    }
    let elements = elements(bridge);
    for element in &elements {
        batch.add(NfListObject::Element(element.clone()));
    }
    for element in elements {
        batch.delete(NfListObject::Element(Element {
            elem: key_only(&element.elem),
            ..element
        }));
    }
    for role in Role::ALL {
        batch.delete(NfListObject::Chain(chain(role.chain(bridge))));
    }
}

/// All map and set elements a bridge may own, with their values.
fn elements(bridge: &str) -> Vec<Element<'static>> {
    let mut all = vec![set_element(bridge)];
    all.extend(Role::ALL.iter().map(|&role| map_element(role, bridge)));
    all
}

/// The key part of map elements (`[key, value]` pairs), which `delete element` takes.
fn key_only(elements: &[Expression<'static>]) -> Cow<'static, [Expression<'static>]> {
    elements
        .iter()
        .map(|element| match element {
            Expression::List(pair) => pair.first().cloned().unwrap_or(Expression::List(vec![])),
            other => other.clone(),
        })
        .collect::<Vec<_>>()
        .into()
}

fn set_element(bridge: &str) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: BRIDGES_SET.into(),
        elem: vec![string(bridge.to_owned())].into(),
    }
}

fn map_element(role: Role, bridge: &str) -> Element<'static> {
    Element {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: role.map().into(),
        elem: vec![Expression::List(vec![
            string(bridge.to_owned()),
            Expression::Verdict(Verdict::Jump(JumpTarget {
                target: role.chain(bridge).into(),
            })),
        ])]
        .into(),
    }
}

fn setup(batch: &mut Batch<'static>, rules: &NetworkRules) {
    let bridge = rules.bridge.as_str();
    batch.add(NfListObject::Element(set_element(bridge)));
    let mut chains = vec![
        (Role::FwdTo, forward_to(rules)),
        (Role::FwdFrom, forward_from(rules)),
    ];
    if rules.mode == RuleMode::Nat && !rules.ipv4.is_empty() {
        chains.push((Role::Nat, nat(rules)));
    }
    for (role, chain_rules) in chains {
        let name = role.chain(bridge);
        batch.add(NfListObject::Chain(chain(name.clone())));
        for expr in chain_rules {
            batch.add(rule(name.clone(), expr));
        }
        batch.add(NfListObject::Element(map_element(role, bridge)));
    }
}

/// Rules for forwarded packets leaving through the bridge.
fn forward_to(rules: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let bridge = rules.bridge.as_str();
    let from_dev = || {
        rules
            .forward_dev
            .iter()
            .map(|dev| is(meta(MetaKey::Iifname), string(dev.clone())))
            .collect::<Vec<_>>()
    };
    let mut out = vec![with_accept(vec![is(
        meta(MetaKey::Iifname),
        string(bridge.to_owned()),
    )])];
    if matches!(rules.mode, RuleMode::Nat | RuleMode::Route) {
        for net in &rules.ipv4 {
            let mut expr = from_dev();
            expr.push(is(payload("ip", "daddr"), prefix4(net)));
            if rules.mode == RuleMode::Nat {
                // Only replies may enter a NATed network.
                expr.push(Statement::Match(Match {
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
                }));
            }
            out.push(with_accept(expr));
        }
        for net in &rules.ipv6 {
            let mut expr = from_dev();
            expr.push(is(payload("ip6", "daddr"), prefix6(net)));
            out.push(with_accept(expr));
        }
    }
    out.push(vec![counter(), Statement::Reject(None)]);
    out
}

/// Rules for forwarded packets arriving from the bridge.
fn forward_from(rules: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let mut out = Vec::new();
    if matches!(rules.mode, RuleMode::Nat | RuleMode::Route) {
        let sources = rules
            .ipv4
            .iter()
            .map(|net| is(payload("ip", "saddr"), prefix4(net)))
            .chain(
                rules
                    .ipv6
                    .iter()
                    .map(|net| is(payload("ip6", "saddr"), prefix6(net))),
            );
        for source in sources {
            let mut expr = vec![source];
            expr.extend(to_dev(rules));
            out.push(with_accept(expr));
        }
    }
    out.push(vec![counter(), Statement::Reject(None)]);
    out
}

/// `oifname D` when the network forwards only through `D`.
fn to_dev(rules: &NetworkRules) -> Option<Statement<'static>> {
    rules
        .forward_dev
        .as_ref()
        .map(|dev| is(meta(MetaKey::Oifname), string(dev.clone())))
}

/// Source NAT rules for every IPv4 subnet.
fn nat(rules: &NetworkRules) -> Vec<Vec<Statement<'static>>> {
    let mut out = Vec::new();
    for net in &rules.ipv4 {
        let source = || is(payload("ip", "saddr"), prefix4(net));
        let outside = || {
            Statement::Match(Match {
                left: payload("ip", "daddr"),
                right: prefix4(net),
                op: Operator::NEQ,
            })
        };
        let exempt = [
            prefix(Ipv4Addr::new(224, 0, 0, 0).to_string(), 24),
            string(Ipv4Addr::BROADCAST.to_string()),
        ];
        for destination in exempt {
            let mut expr = vec![source(), is(payload("ip", "daddr"), destination)];
            expr.extend(to_dev(rules));
            expr.extend([counter(), Statement::Return(None)]);
            out.push(expr);
        }
        for protocol in ["tcp", "udp"] {
            let mut expr = vec![
                is(meta(MetaKey::L4proto), string(protocol.to_owned())),
                source(),
                outside(),
            ];
            expr.extend(to_dev(rules));
            expr.extend([counter(), translate(rules, true)]);
            out.push(expr);
        }
        let mut expr = vec![source(), outside()];
        expr.extend(to_dev(rules));
        expr.extend([counter(), translate(rules, false)]);
        out.push(expr);
    }
    out
}

/// `masquerade [to :P1-P2]`, or `snat ip to A-B[:P1-P2]` with `<nat><address>`.
fn translate(rules: &NetworkRules, with_ports: bool) -> Statement<'static> {
    let port = with_ports.then(|| {
        let (first, last) = rules.nat_ports;
        range_or_single(number(first.into()), number(last.into()), first == last)
    });
    match (rules.nat_addresses, port) {
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

fn dispatch(key: MetaKey, role: Role) -> Statement<'static> {
    Statement::VerdictMap(VerdictMap {
        key: meta(key),
        data: string(format!("@{}", role.map())),
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

fn prefix6(net: &ipnet::Ipv6Net) -> Expression<'static> {
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

    /// Compares `json` with `tests/fixtures/nft/<name>.json`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, json: &str) {
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
        golden(name, &serde_json::to_string_pretty(&render(rules)).unwrap());
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
        assert_eq!(render(&open), render_removal("kvbr3"));
    }

    #[test]
    fn table_skeleton() {
        golden(
            "skeleton",
            &serde_json::to_string_pretty(&skeleton()).unwrap(),
        );
    }

    #[test]
    fn chain_names_map_back_to_bridges() {
        for role in Role::ALL {
            assert_eq!(bridge_of_chain(&role.chain("virbr0")), Some("virbr0"));
        }
        assert_eq!(bridge_of_chain("forward"), None);
        assert_eq!(bridge_of_chain("nat-"), None);
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
        let mut rules = good;
        rules.nat_addresses = Some((Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 1)));
        assert!(matches!(
            rules.validate(),
            Err(Error::InvalidRange {
                what: "address",
                ..
            })
        ));
    }
}
