//! What kvnet's nftables batches contain (no I/O): the table skeleton, each network's set
//! elements and custom NAT chain, as [`Object`]s whose rules are nf_tables VM expressions
//! ([`Expr`]), the same ones nft 1.0.6 generates for the rules below. [`super::encode`]
//! turns them into netlink messages. The layout and its reasons are in the
//! [module docs](super).
//!
//! The rules are fixed; networks are data. libvirt's per-network rules
//! (`network_nftables.c`, `network_iptables.c`) become elements of hash sets keyed by the
//! bridge `B` (then the forward device `D`, in the `_dev` sets):
//!
//! ```text
//! chain input (filter, policy accept)
//!   iifname @bridges udp dport 67 accept                                    DHCP, any source
//!   iifname @bridges ip saddr != 0.0.0.0 fib saddr . iif oif missing drop    spoofed sources
//!   iifname @bridges ip6 saddr != :: fib saddr . iif oif missing drop
//!   iifname @bridges udp dport 53|69|547 accept, tcp dport 53 accept        DNS, TFTP, DHCPv6
//! chain forward (filter, policy accept)
//!   iifname . oifname @same_bridge accept                      B . B    guest <-> guest
//!   meta nfproto ipv4 oifname @reply4 ct state established,related accept     nat: replies
//!   meta nfproto ipv4 oifname . iifname @reply4_dev ct state ... accept       B . D
//!   meta nfproto ipv4 oifname @reply4 ct status dnat accept (and @reply4_dev) port forwards
//!   meta nfproto ipv4 oifname @in4 accept (and @in4_dev)                      route
//!   meta nfproto ipv6 oifname @reply6 ct state established,related accept     nat ipv6='yes'
//!   meta nfproto ipv6 oifname @reply6 ct status dnat accept (and @reply6_dev)
//!   meta nfproto ipv6 oifname @in6 accept (and @in6_dev)                      nat or route
//!   oifname @bridges reject                                                   the rest in
//!   meta nfproto ipv4 iifname @out4 fib saddr . iif oif exists accept (and @out4_dev: B . D)
//!   meta nfproto ipv6 iifname @out6 fib saddr . iif oif exists accept (and @out6_dev)
//!   iifname @bridges reject                                                   the rest out
//! chain postrouting (nat, srcnat)
//!   ip daddr 224.0.0.0/24 return                       link-local multicast, and broadcast,
//!   ip daddr 255.255.255.255 return                    whose rewritten ports DHCP clients reject
//!   ip6 daddr ff02::/16 return
//!   iifname . oifname @same_bridge return               routed back into the subnet
//!   iifname vmap @postrouting_iif                       B : jump nat-B (custom <nat> only)
//!   meta nfproto ipv4 meta l4proto tcp|udp iifname @nat4 masquerade to :1024-65535
//!   meta nfproto ipv4 iifname @nat4 masquerade          (and @nat4_dev: B . D)
//!   the same two for ipv6 and @nat6 (@nat6_dev)         <nat ipv6='yes'>
//! ```
//! Source ports stay >= 1024 so guests cannot pose as "secure port" NFS clients. A network
//! with `<nat><address>` or a non-default `<nat><port>` gets its own chain `nat-B` instead
//! (`ip saddr N [oifname D]` then `snat ip to A-B:P1-P2` or `masquerade to :P1-P2`; IPv6
//! subnets `masquerade to :P1-P2`, as the SNAT addresses are IPv4). IPv6 is routed in nat
//! mode, as libvirt does, unless `<nat ipv6='yes'>`. Isolated networks are
//! only in `bridges` and `same_bridge`. Every rule counts (`counter`), so
//! `nft list table inet kvnet` shows where guest traffic goes.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Error, NetworkRules, RuleMode};

/// Every bridge that has rules; the host-side DHCP/DNS accepts and the rejects match on it.
pub const BRIDGES_SET: &str = "bridges";
/// Verdict map from bridge to its custom NAT chain.
pub(super) const NAT_MAP: &str = "postrouting_iif";
/// Prefix of a bridge's custom NAT chain.
const NAT_CHAIN_PREFIX: &str = "nat-";
/// libvirt's default NAT source port range.
pub const DEFAULT_NAT_PORTS: (u16, u16) = (1024, 65535);

/// The named sets of the table and how many interface names make up their keys (the
/// bridge first; `_dev` sets add the forward device). All are hash sets: adding and
/// deleting an element costs the same with 1 or 1,000 networks.
pub(super) const SETS: [(&str, usize); 18] = [
    (BRIDGES_SET, 1),
    ("same_bridge", 2),
    ("reply4", 1),
    ("reply4_dev", 2),
    ("reply6", 1),
    ("reply6_dev", 2),
    ("in4", 1),
    ("in4_dev", 2),
    ("in6", 1),
    ("in6_dev", 2),
    ("out4", 1),
    ("out4_dev", 2),
    ("out6", 1),
    ("out6_dev", 2),
    ("nat4", 1),
    ("nat4_dev", 2),
    ("nat6", 1),
    ("nat6_dev", 2),
];

/// One element a bridge owns: the set and its key, interface names in key order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OwnedElement {
    /// The set's name.
    pub set: String,
    /// The key: the bridge, then (in `_dev` and `same_bridge` sets) a second name.
    pub key: Vec<String>,
}

impl OwnedElement {
    fn new(set: &str, key: &[&str]) -> OwnedElement {
        OwnedElement {
            set: set.to_owned(),
            key: key.iter().map(|name| (*name).to_owned()).collect(),
        }
    }

    /// The bridge this element belongs to: its first key component.
    pub fn bridge(&self) -> Option<&str> {
        self.key.first().map(String::as_str)
    }
}

impl fmt::Display for OwnedElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in set {}", self.key.join(" . "), self.set)
    }
}

/// Whether an object is added or deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Add it; adding what exists is a no-op.
    Add,
    /// Delete it; deleting what does not exist fails the batch.
    Delete,
}

/// The netfilter hooks of kvnet's base chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// To the host.
    Input,
    /// Routed through the host.
    Forward,
    /// From the host.
    Output,
    /// Leaving the host (source NAT).
    Postrouting,
}

/// What a base chain is for; its type name and priority follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// `type filter ... priority filter` (0).
    Filter,
    /// `type nat ... priority srcnat` (100).
    SourceNat,
}

/// One object of a batch, in the order the kernel must apply them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// `add table inet kvnet`.
    Table,
    /// `add set` with a key of `fields` interface names, or (`verdict_map`) a map from one
    /// interface name to a verdict.
    Set {
        /// The set's name.
        name: &'static str,
        /// Interface names per key.
        fields: usize,
        /// A verdict map instead of a set.
        verdict_map: bool,
        /// The set's id within a batch (the kernel requires one, unique per transaction).
        id: u32,
    },
    /// `add chain`: a base chain with policy accept, or a regular chain.
    Chain {
        /// The chain's name.
        name: String,
        /// Hook and kind of a base chain.
        base: Option<(Hook, ChainKind)>,
    },
    /// `flush chain`: delete its rules.
    FlushChain(String),
    /// `add rule` at the end of a chain.
    Rule {
        /// The chain.
        chain: String,
        /// The rule's expressions.
        exprs: Vec<Expr>,
        /// A fingerprint of the skeleton or chain as this build writes it, kept in the
        /// rule's user data; see `nft.rs`.
        stamp: Option<u64>,
    },
    /// `add`/`delete element` of a set.
    Element(Change, OwnedElement),
    /// `add` an element of the NAT verdict map (bridge to `jump nat-<bridge>`), or
    /// `delete` the one with this key.
    NatJump(Change, String),
    /// `delete chain` (with its rules).
    DeleteChain(String),
    /// `delete table inet kvnet`.
    DeleteTable,
}

impl fmt::Display for Object {
    /// What the object does, as nft would say it; names the message the kernel refused.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = |change: &Change| match change {
            Change::Add => "add",
            Change::Delete => "delete",
        };
        match self {
            Object::Table => write!(f, "add table inet {}", super::TABLE),
            Object::Set { name, .. } => write!(f, "add set {name}"),
            Object::Chain { name, .. } => write!(f, "add chain {name}"),
            Object::FlushChain(name) => write!(f, "flush chain {name}"),
            Object::Rule { chain, .. } => write!(f, "add rule to chain {chain}"),
            Object::Element(change, element) => write!(f, "{} element {element}", verb(change)),
            Object::NatJump(Change::Add, bridge) => write!(
                f,
                "add element {bridge} : jump {} in map {NAT_MAP}",
                nat_chain(bridge)
            ),
            // By key, whatever the element's verdict.
            Object::NatJump(Change::Delete, key) => {
                write!(f, "delete element {key} in map {NAT_MAP}")
            }
            Object::DeleteChain(name) => write!(f, "delete chain {name}"),
            Object::DeleteTable => write!(f, "delete table inet {}", super::TABLE),
        }
    }
}

/// An nf_tables register: 1-4 hold 16 bytes each (an interface name fits one).
pub type Register = u32;

/// The `meta` keys kvnet matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// Input interface name.
    Iifname,
    /// Output interface name.
    Oifname,
    /// Netfilter family of the packet (ipv4/ipv6 in an `inet` chain).
    Nfproto,
    /// Layer 4 protocol number.
    L4proto,
}

/// The conntrack keys kvnet matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    /// `ct state`: new, established, related...
    State,
    /// `ct status`: what was done to the connection (NAT among it).
    Status,
}

/// Where a payload load starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    /// The IP header.
    Network,
    /// The TCP/UDP header.
    Transport,
}

/// A comparison of a register with a constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// Equal.
    Eq,
    /// Not equal.
    Neq,
}

/// A rule's final verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accept the packet (this hook).
    Accept,
    /// Drop the packet.
    Drop,
    /// Back to the calling chain, or the policy.
    Return,
}

/// One nf_tables VM expression, as the kernel runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg`.
    Meta(MetaKey, Register),
    /// `cmp OP reg DATA`.
    Cmp(CmpOp, Register, Vec<u8>),
    /// `lookup reg set NAME`, or with a verdict map, its verdict.
    Lookup {
        /// The named set or map.
        set: String,
        /// Where the key starts.
        reg: Register,
        /// The set is a verdict map: its verdict is the rule's.
        verdict_map: bool,
    },
    /// `payload load LEN @ BASE + OFFSET => reg`.
    Payload(PayloadBase, u32, u32, Register),
    /// `bitwise reg = (reg & MASK) ^ XOR`.
    Bitwise(Register, Vec<u8>, Vec<u8>),
    /// `ct load KEY => reg`.
    Ct(CtKey, Register),
    /// `fib saddr . iif oif present => reg`: 1 if the source is routed via the input
    /// interface.
    FibSourceViaIif(Register),
    /// `counter`.
    Counter,
    /// `immediate reg DATA`.
    Load(Register, Vec<u8>),
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict),
    /// `reject` with ICMP(v6) port unreachable.
    Reject,
    /// `masq`, with the source port range in registers.
    Masquerade {
        /// First and (when a range) last port.
        ports: Option<(Register, Option<Register>)>,
    },
    /// `nat snat ip`, with addresses (and ports) in registers.
    Snat {
        /// First and (when a range) last address.
        addresses: (Register, Option<Register>),
        /// First and (when a range) last port.
        ports: Option<(Register, Option<Register>)>,
    },
}

const REG1: Register = 1;
const REG2: Register = 2;

/// Transport protocol numbers.
const TCP: u8 = 6;
const UDP: u8 = 17;
/// `NFPROTO_IPV4`, `NFPROTO_IPV6`.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// `ct state established,related` bits.
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// `ct status dnat`: `IPS_DST_NAT`.
const CT_STATUS_DNAT: u32 = 1 << 5;
/// Link-local multicast, which is never forwarded: NAT leaves it alone.
const LINK_LOCAL_MULTICAST_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 24);
const LINK_LOCAL_MULTICAST_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0), 16);
/// Header offsets.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;
const IPV6_SADDR: u32 = 8;
const IPV6_DADDR: u32 = 24;
const L4_SPORT: u32 = 0;
const L4_DPORT: u32 = 2;

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
    /// ranges of a nat network (start after end, or no port at all). A port range may
    /// start at 0, as libvirt's does (`to :0-1024`).
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
        if last == 0 || first > last {
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

/// The table, its sets, map and base chains with their fixed rules. Idempotent: adding
/// what exists is a no-op and the base chains are flushed before their rules are added,
/// so a change that starts with it also repairs a table someone else flushed or deleted.
pub fn skeleton() -> Vec<Object> {
    let mut out = vec![Object::Table];
    out.extend((1..).zip(SETS).map(|(id, (name, fields))| Object::Set {
        name,
        fields,
        verdict_map: false,
        id,
    }));
    out.push(Object::Set {
        name: NAT_MAP,
        fields: 1,
        verdict_map: true,
        id: SETS.len() as u32 + 1,
    });
    let iif = || Expr::Meta(MetaKey::Iifname, REG1);
    let oif = || Expr::Meta(MetaKey::Oifname, REG1);

    // DHCP from guests to the host's server first, whatever the source: a guest renumbered
    // or moved asks from its old address, and is told no (a NAK, broadcast).
    let mut input = vec![accept([
        in_set(iif(), BRIDGES_SET),
        port_is(UDP, L4_DPORT, 67),
    ])];
    // Then a guest's packet to the host from a source its bridge's routes do not cover (a
    // spoofed one; `<route>`d subnets and IPv6 link-local addresses are covered):
    // answering it would send the reply out on the bridge as if the address were there,
    // a slot of the host's neighbour table each, or out upstream to a third party. The
    // unspecified source of IGMP and of IPv6 duplicate address detection is let through.
    input.extend([
        drop_packet([
            nfproto(NFPROTO_IPV4),
            in_set(iif(), BRIDGES_SET),
            source_is_not(PayloadField::Ipv4Source, vec![0; 4]),
            source_not_via_iif(),
        ]),
        drop_packet([
            nfproto(NFPROTO_IPV6),
            in_set(iif(), BRIDGES_SET),
            source_is_not(PayloadField::Ipv6Source, vec![0; 16]),
            source_not_via_iif(),
        ]),
    ]);
    // DNS, TFTP and DHCPv6 from guests to the host's servers, and their answers.
    for port in [53, 69, 547] {
        input.push(accept([
            in_set(iif(), BRIDGES_SET),
            port_is(UDP, L4_DPORT, port),
        ]));
    }
    input.push(accept([
        in_set(iif(), BRIDGES_SET),
        port_is(TCP, L4_DPORT, 53),
    ]));
    base_chain(&mut out, "input", Hook::Input, ChainKind::Filter, input);
    let mut output = Vec::new();
    for port in [68, 546] {
        output.push(accept([
            in_set(oif(), BRIDGES_SET),
            port_is(UDP, L4_DPORT, port),
        ]));
    }
    for protocol in [UDP, TCP] {
        output.push(accept([
            in_set(oif(), BRIDGES_SET),
            port_is(protocol, L4_SPORT, 53),
        ]));
    }
    base_chain(&mut out, "output", Hook::Output, ChainKind::Filter, output);

    // Into a network of one family (`v` names its sets: "4" or "6"), by destination
    // bridge first, as libvirt orders its chains; routing already chose the bridge by
    // the destination's subnet.
    let into_network = |family: u8, v: &str| {
        let set = |name: &str| format!("{name}{v}");
        let dev = |name: &str| format!("{name}{v}_dev");
        let version = || nfproto(family);
        vec![
            accept([version(), in_set(oif(), &set("reply")), established()]),
            accept([
                version(),
                in_pair(MetaKey::Oifname, MetaKey::Iifname, &dev("reply")),
                established(),
            ]),
            // Port forwarding: what the administrator's own rules DNAT into a NAT network.
            // With iptables they would insert an accept ahead of libvirt's reject; an
            // accept in their table cannot overrule a reject in ours, so ours accepts it.
            // From another network, only what may leave it: not from an isolated one, nor
            // a spoofed source (which the NAT on the way out would otherwise hide).
            accept([
                version(),
                in_set(oif(), &set("reply")),
                destination_natted(),
                in_set(iif(), &set("out")),
                source_via_iif(),
            ]),
            reject(rule([
                version(),
                in_set(oif(), &set("reply")),
                destination_natted(),
                in_set(iif(), BRIDGES_SET),
            ])),
            accept([
                version(),
                in_set(oif(), &set("reply")),
                destination_natted(),
            ]),
            accept([
                version(),
                in_pair(MetaKey::Oifname, MetaKey::Iifname, &dev("reply")),
                destination_natted(),
            ]),
            accept([version(), in_set(oif(), &set("in"))]),
            accept([
                version(),
                in_pair(MetaKey::Oifname, MetaKey::Iifname, &dev("in")),
            ]),
        ]
    };
    // Out of a network of one family, from its own subnets only.
    let out_of_network = |family: u8, v: &str| {
        vec![
            accept([
                nfproto(family),
                in_set(iif(), &format!("out{v}")),
                source_via_iif(),
            ]),
            accept([
                nfproto(family),
                in_pair(MetaKey::Iifname, MetaKey::Oifname, &format!("out{v}_dev")),
                source_via_iif(),
            ]),
        ]
    };
    let mut forward = vec![accept([in_pair(
        MetaKey::Iifname,
        MetaKey::Oifname,
        "same_bridge",
    )])];
    forward.extend(into_network(NFPROTO_IPV4, "4"));
    forward.extend(into_network(NFPROTO_IPV6, "6"));
    forward.push(reject(in_set(oif(), BRIDGES_SET)));
    forward.extend(out_of_network(NFPROTO_IPV4, "4"));
    forward.extend(out_of_network(NFPROTO_IPV6, "6"));
    forward.push(reject(in_set(iif(), BRIDGES_SET)));
    base_chain(
        &mut out,
        "forward",
        Hook::Forward,
        ChainKind::Filter,
        forward,
    );

    let mut postrouting = vec![
        // Link-local multicast and broadcast keep their addresses and ports.
        ret([ip_prefix(IPV4_DADDR, LINK_LOCAL_MULTICAST_V4)]),
        ret([ip_prefix(IPV4_DADDR, Ipv4Net::from(Ipv4Addr::BROADCAST))]),
        ret([ip_prefix(IPV6_DADDR, LINK_LOCAL_MULTICAST_V6)]),
        // Routed back into the same bridge: the destination is inside the subnet.
        ret([in_pair(MetaKey::Iifname, MetaKey::Oifname, "same_bridge")]),
        vec![
            iif(),
            Expr::Lookup {
                set: NAT_MAP.to_owned(),
                reg: REG1,
                verdict_map: true,
            },
        ],
    ];
    // The forward chain let only the networks' own sources out, so the bridge is enough.
    for (family, set) in [(NFPROTO_IPV4, "nat4"), (NFPROTO_IPV6, "nat6")] {
        let dev_set = format!("{set}_dev");
        for key in [
            in_set(iif(), set),
            in_pair(MetaKey::Iifname, MetaKey::Oifname, &dev_set),
        ] {
            for protocol in [TCP, UDP] {
                postrouting.push(rule([
                    nfproto(family),
                    l4proto(protocol),
                    key.clone(),
                    vec![Expr::Counter],
                    masquerade(Some(DEFAULT_NAT_PORTS)),
                ]));
            }
            postrouting.push(rule([
                nfproto(family),
                key,
                vec![Expr::Counter],
                masquerade(None),
            ]));
        }
    }
    base_chain(
        &mut out,
        "postrouting",
        Hook::Postrouting,
        ChainKind::SourceNat,
        postrouting,
    );
    out
}

/// How many rules each chain of `skeleton` (as [`skeleton`] made it) holds: a chain that
/// holds another number was flushed or edited by someone else.
pub(super) fn skeleton_rule_counts(skeleton: &[Object]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for object in skeleton {
        match object {
            Object::Chain { name, .. } => {
                counts.entry(name.clone()).or_insert(0);
            }
            Object::Rule { chain, .. } => *counts.entry(chain.clone()).or_insert(0) += 1,
            _ => {}
        }
    }
    counts
}

/// `add` (idempotent) a base chain with policy accept, flush it and add its rules, so the
/// fixed rules exist exactly once whatever state the chain was in.
fn base_chain(
    out: &mut Vec<Object>,
    name: &str,
    hook: Hook,
    kind: ChainKind,
    rules: Vec<Vec<Expr>>,
) {
    out.push(Object::Chain {
        name: name.to_owned(),
        base: Some((hook, kind)),
    });
    out.push(Object::FlushChain(name.to_owned()));
    out.extend(rules.into_iter().map(|exprs| Object::Rule {
        chain: name.to_owned(),
        exprs,
        stamp: None,
    }));
}

/// Whether IPv6 from the network is masqueraded (`<nat ipv6='yes'>`) rather than routed.
fn masquerades_ipv6(rules: &NetworkRules) -> bool {
    rules.mode == RuleMode::Nat && rules.nat_ipv6 && !rules.ipv6.is_empty()
}

/// Whether the network needs its own NAT chain (anything but libvirt's default `<nat>`).
pub(super) fn has_custom_nat(rules: &NetworkRules) -> bool {
    rules.mode == RuleMode::Nat
        && (!rules.ipv4.is_empty() || masquerades_ipv6(rules))
        && (rules.nat_addresses.is_some() || rules.nat_ports != DEFAULT_NAT_PORTS)
}

/// The set elements a network owns (none in open mode).
pub fn elements(rules: &NetworkRules) -> Vec<OwnedElement> {
    if rules.mode == RuleMode::Open {
        return Vec::new();
    }
    let bridge = rules.bridge.as_str();
    // `name` keyed by the bridge, or `name_dev` by the bridge and the forward device.
    let keyed = |name: &str| match &rules.forward_dev {
        Some(dev) => OwnedElement::new(&format!("{name}_dev"), &[bridge, dev]),
        None => OwnedElement::new(name, &[bridge]),
    };
    let mut out = vec![
        OwnedElement::new(BRIDGES_SET, &[bridge]),
        OwnedElement::new("same_bridge", &[bridge, bridge]),
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
        let nat6 = masquerades_ipv6(rules);
        out.push(keyed(if nat6 { "reply6" } else { "in6" }));
        out.push(keyed("out6"));
        if nat6 && !has_custom_nat(rules) {
            out.push(keyed("nat6"));
        }
    }
    out
}

/// The objects that replace a network's rules: removal of the `previous` elements the
/// bridge owned and of any custom NAT chain (and the `unmapped` verdict-map elements),
/// then its new elements (and chain). Call [`NetworkRules::validate`] first; prepend
/// [`skeleton`] when the table may be missing.
pub fn render(rules: &NetworkRules, previous: &[OwnedElement], unmapped: &[String]) -> Vec<Object> {
    let mut out = render_removal(&rules.bridge, previous, unmapped);
    out.extend(
        elements(rules)
            .into_iter()
            .map(|element| Object::Element(Change::Add, element)),
    );
    if has_custom_nat(rules) {
        let name = nat_chain(&rules.bridge);
        out.push(Object::Chain {
            name: name.clone(),
            base: None,
        });
        out.extend(custom_nat(rules).into_iter().map(|exprs| Object::Rule {
            chain: name.clone(),
            exprs,
            stamp: None,
        }));
        out.push(Object::NatJump(Change::Add, rules.bridge.clone()));
    }
    out
}

/// The objects that remove a bridge's `previous` elements and custom NAT chain, whether or
/// not they still exist: each is added, then deleted ("delete if present" inside one
/// transaction). Not verdict-map elements: adding one fails if it is there with another
/// verdict (changed by hand), so the `unmapped` ones, which are there (the bridge's own,
/// and any jumping to its chain), are deleted by key before the chain.
pub fn render_removal(bridge: &str, previous: &[OwnedElement], unmapped: &[String]) -> Vec<Object> {
    let chain = nat_chain(bridge);
    let mut out = vec![Object::Chain {
        name: chain.clone(),
        base: None,
    }];
    out.extend(
        previous
            .iter()
            .map(|element| Object::Element(Change::Add, element.clone())),
    );
    out.extend(
        previous
            .iter()
            .map(|element| Object::Element(Change::Delete, element.clone())),
    );
    out.extend(
        unmapped
            .iter()
            .map(|key| Object::NatJump(Change::Delete, key.clone())),
    );
    out.push(Object::DeleteChain(chain));
    out
}

/// The custom NAT chain of `bridge`.
pub(super) fn nat_chain(bridge: &str) -> String {
    format!("{NAT_CHAIN_PREFIX}{bridge}")
}

/// A custom NAT chain: per subnet, TCP and UDP with the port range, then the rest; IPv6
/// subnets (with `<nat ipv6='yes'>`) are masqueraded, the SNAT addresses being IPv4.
/// (Multicast, broadcast and in-subnet traffic already returned in `postrouting`.)
fn custom_nat(rules: &NetworkRules) -> Vec<Vec<Expr>> {
    let mut out = Vec::new();
    let to_dev = || match &rules.forward_dev {
        Some(dev) => vec![
            Expr::Meta(MetaKey::Oifname, REG1),
            Expr::Cmp(CmpOp::Eq, REG1, ifname(dev)),
        ],
        None => Vec::new(),
    };
    let ipv6 = if masquerades_ipv6(rules) {
        rules.ipv6.as_slice()
    } else {
        &[]
    };
    let sources = (rules.ipv4.iter())
        .map(|net| (ip_prefix(IPV4_SADDR, *net), rules.nat_addresses))
        .chain(ipv6.iter().map(|net| (ip_prefix(IPV6_SADDR, *net), None)));
    for (source, addresses) in sources {
        for protocol in [TCP, UDP] {
            out.push(rule([
                l4proto(protocol),
                source.clone(),
                to_dev(),
                vec![Expr::Counter],
                translate(addresses, Some(rules.nat_ports)),
            ]));
        }
        out.push(rule([
            source,
            to_dev(),
            vec![Expr::Counter],
            translate(addresses, None),
        ]));
    }
    out
}

/// `masquerade [to :P1-P2]`, or `snat ip to A-B[:P1-P2]` with `<nat><address>`.
fn translate(addresses: Option<(Ipv4Addr, Ipv4Addr)>, ports: Option<(u16, u16)>) -> Vec<Expr> {
    let Some((first, last)) = addresses else {
        return masquerade(ports);
    };
    // Registers in order: addresses, then ports, each a single value or a range.
    let mut out = vec![Expr::Load(REG1, first.octets().to_vec())];
    let mut next = REG2;
    let last_address = (first != last).then(|| {
        out.push(Expr::Load(next, last.octets().to_vec()));
        next += 1;
        next - 1
    });
    let ports = ports.map(|(low, high)| {
        out.push(Expr::Load(next, low.to_be_bytes().to_vec()));
        let high_reg = (low != high).then(|| {
            out.push(Expr::Load(next + 1, high.to_be_bytes().to_vec()));
            next + 1
        });
        (next, high_reg)
    });
    out.push(Expr::Snat {
        addresses: (REG1, last_address),
        ports,
    });
    out
}

/// `masquerade [to :P1-P2]`.
fn masquerade(ports: Option<(u16, u16)>) -> Vec<Expr> {
    let Some((low, high)) = ports else {
        return vec![Expr::Masquerade { ports: None }];
    };
    let mut out = vec![Expr::Load(REG1, low.to_be_bytes().to_vec())];
    let high_reg = (low != high).then(|| {
        out.push(Expr::Load(REG2, high.to_be_bytes().to_vec()));
        REG2
    });
    out.push(Expr::Masquerade {
        ports: Some((REG1, high_reg)),
    });
    out
}

/// `meta nfproto FAMILY`.
fn nfproto(family: u8) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::Nfproto, REG1),
        Expr::Cmp(CmpOp::Eq, REG1, vec![family]),
    ]
}

/// `meta l4proto PROTOCOL`.
fn l4proto(protocol: u8) -> Vec<Expr> {
    vec![
        Expr::Meta(MetaKey::L4proto, REG1),
        Expr::Cmp(CmpOp::Eq, REG1, vec![protocol]),
    ]
}

/// `tcp|udp sport|dport PORT`: the protocol, then the port field.
fn port_is(protocol: u8, field: u32, port: u16) -> Vec<Expr> {
    let mut out = l4proto(protocol);
    out.push(Expr::Payload(PayloadBase::Transport, field, 2, REG1));
    out.push(Expr::Cmp(CmpOp::Eq, REG1, port.to_be_bytes().to_vec()));
    out
}

/// `ip saddr|daddr N` or `ip6 saddr|daddr N`, with the `meta nfproto` an inet chain
/// needs. As nft does, whole bytes are compared directly and any other prefix masks the
/// whole address first.
fn ip_prefix(field: u32, net: impl Into<IpNet>) -> Vec<Expr> {
    let (family, mut address, len) = match net.into() {
        IpNet::V4(net) => (
            NFPROTO_IPV4,
            net.network().octets().to_vec(),
            net.prefix_len(),
        ),
        IpNet::V6(net) => (
            NFPROTO_IPV6,
            net.network().octets().to_vec(),
            net.prefix_len(),
        ),
    };
    let mut out = nfproto(family);
    let len = usize::from(len);
    if len == 0 {
        return out;
    }
    if len.is_multiple_of(8) {
        address.truncate(len / 8);
    }
    let size = address.len();
    out.push(Expr::Payload(
        PayloadBase::Network,
        field,
        size as u32,
        REG1,
    ));
    if !len.is_multiple_of(8) {
        let mask = (0..size)
            .map(|byte| match len.saturating_sub(byte * 8) {
                0 => 0,
                bits @ 1..8 => 0xff << (8 - bits),
                _ => 0xff,
            })
            .collect();
        out.push(Expr::Bitwise(REG1, mask, vec![0; size]));
    }
    out.push(Expr::Cmp(CmpOp::Eq, REG1, address));
    out
}

/// `ct state established,related`.
fn established() -> Vec<Expr> {
    ct_any_of(CtKey::State, CT_ESTABLISHED_RELATED)
}

/// `ct status dnat`: the connection's destination was rewritten by a DNAT rule, which
/// only the host's administrator writes (kvnet has none).
fn destination_natted() -> Vec<Expr> {
    ct_any_of(CtKey::Status, CT_STATUS_DNAT)
}

/// `ct KEY & BITS != 0`.
fn ct_any_of(key: CtKey, bits: u32) -> Vec<Expr> {
    vec![
        Expr::Ct(key, REG1),
        Expr::Bitwise(REG1, bits.to_ne_bytes().to_vec(), vec![0; 4]),
        Expr::Cmp(CmpOp::Neq, REG1, vec![0; 4]),
    ]
}

/// `fib saddr . iif oif exists`: the source is one the input interface's routes cover.
fn source_via_iif() -> Vec<Expr> {
    vec![
        Expr::FibSourceViaIif(REG1),
        Expr::Cmp(CmpOp::Eq, REG1, 1u32.to_ne_bytes().to_vec()),
    ]
}

/// `fib saddr . iif oif missing`: no route of the input interface covers the source.
fn source_not_via_iif() -> Vec<Expr> {
    vec![
        Expr::FibSourceViaIif(REG1),
        Expr::Cmp(CmpOp::Eq, REG1, 0u32.to_ne_bytes().to_vec()),
    ]
}

/// The network header's source address fields.
enum PayloadField {
    /// `ip saddr`.
    Ipv4Source,
    /// `ip6 saddr`.
    Ipv6Source,
}

/// `ip saddr != ADDRESS` or `ip6 saddr != ADDRESS`.
fn source_is_not(field: PayloadField, address: Vec<u8>) -> Vec<Expr> {
    let (offset, len) = match field {
        PayloadField::Ipv4Source => (12, 4),
        PayloadField::Ipv6Source => (8, 16),
    };
    vec![
        Expr::Payload(PayloadBase::Network, offset, len, REG1),
        Expr::Cmp(CmpOp::Neq, REG1, address),
    ]
}

/// `KEY @set` for a key already loaded by `load`.
fn in_set(load: Expr, set: &str) -> Vec<Expr> {
    vec![
        load,
        Expr::Lookup {
            set: set.to_owned(),
            reg: REG1,
            verdict_map: false,
        },
    ]
}

/// `FIRST . SECOND @set`: two interface names in consecutive registers.
fn in_pair(first: MetaKey, second: MetaKey, set: &str) -> Vec<Expr> {
    vec![
        Expr::Meta(first, REG1),
        Expr::Meta(second, REG2),
        Expr::Lookup {
            set: set.to_owned(),
            reg: REG1,
            verdict_map: false,
        },
    ]
}

/// An interface name as nft compares it: NUL-padded to `IFNAMSIZ`.
pub(super) fn ifname(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(super::encode::IFNAMSIZ, 0);
    bytes
}

fn rule<const N: usize>(parts: [Vec<Expr>; N]) -> Vec<Expr> {
    parts.into_iter().flatten().collect()
}

fn accept<const N: usize>(matches: [Vec<Expr>; N]) -> Vec<Expr> {
    let mut out = rule(matches);
    out.extend([Expr::Counter, Expr::Verdict(Verdict::Accept)]);
    out
}

fn drop_packet<const N: usize>(matches: [Vec<Expr>; N]) -> Vec<Expr> {
    let mut out = rule(matches);
    out.extend([Expr::Counter, Expr::Verdict(Verdict::Drop)]);
    out
}

fn ret<const N: usize>(matches: [Vec<Expr>; N]) -> Vec<Expr> {
    let mut out = rule(matches);
    out.extend([Expr::Counter, Expr::Verdict(Verdict::Return)]);
    out
}

fn reject(matches: Vec<Expr>) -> Vec<Expr> {
    let mut out = matches;
    out.extend([Expr::Counter, Expr::Reject]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(bridge: &str, mode: RuleMode, ipv4: &[&str], ipv6: &[&str]) -> NetworkRules {
        NetworkRules {
            bridge: bridge.to_owned(),
            mode,
            forward_dev: None,
            ipv4: ipv4.iter().map(|net| net.parse().unwrap()).collect(),
            ipv6: ipv6.iter().map(|net| net.parse().unwrap()).collect(),
            nat_addresses: None,
            nat_ports: (1024, 65535),
            nat_ipv6: false,
        }
    }

    fn owned(rules: &NetworkRules) -> Vec<String> {
        elements(rules).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn each_mode_owns_its_elements() {
        let nat = network(
            "virbr0",
            RuleMode::Nat,
            &["192.168.122.1/24"],
            &["fd00::/64"],
        );
        assert_eq!(
            owned(&nat),
            [
                "virbr0 in set bridges",
                "virbr0 . virbr0 in set same_bridge",
                "virbr0 in set reply4",
                "virbr0 in set out4",
                "virbr0 in set nat4",
                "virbr0 in set in6",
                "virbr0 in set out6",
            ]
        );
        let mut routed = network("kvbr2", RuleMode::Route, &["192.168.150.0/24"], &[]);
        routed.forward_dev = Some("eth0".to_owned());
        assert_eq!(
            owned(&routed),
            [
                "kvbr2 in set bridges",
                "kvbr2 . kvbr2 in set same_bridge",
                "kvbr2 . eth0 in set in4_dev",
                "kvbr2 . eth0 in set out4_dev",
            ]
        );
        let isolated = network("kvbr1", RuleMode::Isolated, &["192.168.100.0/24"], &[]);
        assert_eq!(owned(&isolated).len(), 2);
        let open = network("kvbr3", RuleMode::Open, &["192.168.130.0/24"], &[]);
        assert!(elements(&open).is_empty());
        assert_eq!(render(&open, &[], &[]), render_removal("kvbr3", &[], &[]));
        // A custom <nat> replaces the nat4 element with a chain and a map element.
        let custom = NetworkRules {
            nat_ports: (2000, 3000),
            nat_ipv6: false,
            ..network("kvbr4", RuleMode::Nat, &["10.10.0.0/24"], &[])
        };
        assert!(!owned(&custom).iter().any(|e| e.contains("nat4")));
        let objects = render(&custom, &[], &[]);
        assert_eq!(
            objects.last(),
            Some(&Object::NatJump(Change::Add, "kvbr4".to_owned()))
        );
        let chain_rules = objects
            .iter()
            .filter(|o| matches!(o, Object::Rule { chain, .. } if chain == "nat-kvbr4"))
            .count();
        assert_eq!(chain_rules, 3, "tcp, udp and the rest per subnet");

        // <nat ipv6='yes'>: IPv6 is let in only as replies, and masqueraded.
        let nat6 = NetworkRules {
            nat_ipv6: true,
            ..nat.clone()
        };
        assert_eq!(
            owned(&nat6)[5..],
            [
                "virbr0 in set reply6",
                "virbr0 in set out6",
                "virbr0 in set nat6"
            ]
        );
        // With a custom <nat> as well, the chain masquerades the IPv6 subnet too.
        let custom6 = NetworkRules {
            nat_ports: (2000, 3000),
            ..nat6.clone()
        };
        assert!(!owned(&custom6).iter().any(|e| e.contains("nat")));
        let chain_rules = render(&custom6, &[], &[])
            .into_iter()
            .filter(|o| matches!(o, Object::Rule { chain, .. } if chain == "nat-virbr0"))
            .count();
        assert_eq!(chain_rules, 6, "both subnets");
        // Only a network with an IPv6 subnet masquerades IPv6.
        let v4_only = NetworkRules {
            nat_ipv6: true,
            ..network("kvbr5", RuleMode::Nat, &["10.10.0.0/24"], &[])
        };
        assert!(!owned(&v4_only).iter().any(|e| e.contains('6')));
    }

    #[test]
    fn removal_adds_then_deletes_and_unmaps_a_mapped_bridge_before_deleting_its_chain() {
        let before = network("virbr0", RuleMode::Route, &["192.168.150.0/24"], &[]);
        let previous = elements(&before);
        let objects = render_removal("virbr0", &previous, &["virbr0".to_owned()]);
        let text: Vec<String> = objects.iter().map(ToString::to_string).collect();
        assert_eq!(text[0], "add chain nat-virbr0");
        assert_eq!(text[1], "add element virbr0 in set bridges");
        assert_eq!(
            text[1 + previous.len()],
            "delete element virbr0 in set bridges"
        );
        assert_eq!(
            text[text.len() - 2..],
            [
                "delete element virbr0 in map postrouting_iif",
                "delete chain nat-virbr0"
            ]
        );
        // The map element is never added: with another verdict, that would clash.
        let unmapped = render_removal("virbr0", &previous, &[]);
        assert!(!unmapped.iter().any(|o| matches!(o, Object::NatJump(..))));
        assert_eq!(unmapped.len(), objects.len() - 1);
    }

    #[test]
    fn the_skeleton_has_every_set_and_the_fixed_rules() {
        let skeleton = skeleton();
        assert_eq!(skeleton[0], Object::Table);
        let sets = skeleton
            .iter()
            .filter(|o| matches!(o, Object::Set { .. }))
            .count();
        assert_eq!(sets, SETS.len() + 1, "the data sets and the NAT map");
        let rules_of = |name: &str| {
            skeleton
                .iter()
                .filter(|o| matches!(o, Object::Rule { chain, .. } if chain == name))
                .count()
        };
        assert_eq!(
            [
                rules_of("input"),
                rules_of("output"),
                rules_of("forward"),
                rules_of("postrouting")
            ],
            [7, 4, 23, 17]
        );
        // Each base chain is flushed right after it is (re)declared.
        for (at, object) in skeleton.iter().enumerate() {
            if let Object::Chain {
                name,
                base: Some(_),
            } = object
            {
                assert_eq!(skeleton[at + 1], Object::FlushChain(name.clone()));
            }
        }
    }

    #[test]
    fn nat_translation_loads_ranges_into_consecutive_registers() {
        let snat = translate(
            Some((
                Ipv4Addr::new(198, 51, 100, 10),
                Ipv4Addr::new(198, 51, 100, 20),
            )),
            Some((2000, 3000)),
        );
        assert_eq!(
            snat,
            [
                Expr::Load(1, vec![198, 51, 100, 10]),
                Expr::Load(2, vec![198, 51, 100, 20]),
                Expr::Load(3, 2000u16.to_be_bytes().to_vec()),
                Expr::Load(4, 3000u16.to_be_bytes().to_vec()),
                Expr::Snat {
                    addresses: (1, Some(2)),
                    ports: Some((3, Some(4)))
                },
            ]
        );
        let single = translate(
            Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 1))),
            None,
        );
        assert_eq!(
            single.last(),
            Some(&Expr::Snat {
                addresses: (1, None),
                ports: None
            })
        );
        assert_eq!(
            translate(None, Some((4000, 4000))).last(),
            Some(&Expr::Masquerade {
                ports: Some((1, None))
            })
        );
    }

    #[test]
    fn prefixes_compare_whole_bytes_or_mask_first() {
        // The expressions `nft --debug=netlink` 1.0.6 shows for the same matches.
        let whole = ip_prefix(IPV4_SADDR, "10.10.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(whole[2], Expr::Payload(PayloadBase::Network, 12, 3, 1));
        assert_eq!(whole[3], Expr::Cmp(CmpOp::Eq, 1, vec![10, 10, 0]));
        let masked = ip_prefix(IPV4_SADDR, "10.10.31.7/20".parse::<Ipv4Net>().unwrap());
        assert_eq!(masked[2], Expr::Payload(PayloadBase::Network, 12, 4, 1));
        assert_eq!(
            masked[3],
            Expr::Bitwise(1, vec![255, 255, 240, 0], vec![0; 4])
        );
        assert_eq!(masked[4], Expr::Cmp(CmpOp::Eq, 1, vec![10, 10, 16, 0]));
        let multicast = ip_prefix(IPV6_DADDR, "ff02::/16".parse::<Ipv6Net>().unwrap());
        assert_eq!(multicast[1], Expr::Cmp(CmpOp::Eq, 1, vec![NFPROTO_IPV6]));
        assert_eq!(multicast[2], Expr::Payload(PayloadBase::Network, 24, 2, 1));
        assert_eq!(multicast[3], Expr::Cmp(CmpOp::Eq, 1, vec![0xff, 0x02]));
        let masked6 = ip_prefix(IPV6_SADDR, "fd00:1:2:3f::/60".parse::<Ipv6Net>().unwrap());
        assert_eq!(masked6[2], Expr::Payload(PayloadBase::Network, 8, 16, 1));
        let mut mask = vec![0xff; 7];
        mask.extend([0xf0]);
        mask.extend([0; 8]);
        assert_eq!(masked6[3], Expr::Bitwise(1, mask, vec![0; 16]));
        assert_eq!(
            masked6[4],
            Expr::Cmp(
                CmpOp::Eq,
                1,
                "fd00:1:2:30::"
                    .parse::<Ipv6Addr>()
                    .unwrap()
                    .octets()
                    .to_vec()
            )
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
        // libvirt's `<port start='0' end='1024'/>` is a range nft takes.
        let mut rules = good.clone();
        rules.nat_ports = (0, 1024);
        rules.validate().unwrap();
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
            nat_ipv6: false,
            ..rules
        };
        routed.validate().unwrap();
    }
}
