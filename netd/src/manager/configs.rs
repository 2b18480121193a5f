//! What a network's definition asks of the kernel and of its servers, worked out from
//! its XML alone: the bridge, the firewall rules, and the configurations of its DHCP,
//! DHCPv6, DNS, router-advertisement and TFTP servers. Nothing here touches the kernel,
//! the disk or a running server.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{Network, host_dns};
use crate::dhcp::{self, DhcpConfig, DhcpHostConfig};
use crate::dhcp6::{self, Dhcp6Config, Dhcp6HostConfig};
use crate::dns::DnsConfig;
use crate::firewall::{NetworkRules, RuleMode};
use crate::link::BridgeSpec;
use crate::ra::{self, RaConfig};
use crate::tftp::TftpConfig;
use crate::xml::{self, DEFAULT_NAT_PORTS, ForwardMode, IpDef, NetworkDef};

/// The bridge's addresses: one per `<ip>` (validation guarantees a prefix length).
pub(super) fn bridge_addresses(
    def: &NetworkDef,
) -> impl Iterator<Item = (std::net::IpAddr, u8)> + '_ {
    def.ips
        .iter()
        .filter_map(|ip| Some((ip.address, ip.prefix_len()?)))
}

pub(super) fn bridge_spec(def: &NetworkDef, bridge: &str) -> BridgeSpec {
    BridgeSpec {
        name: bridge.to_owned(),
        mac: def.mac.map(|mac| mac.0).unwrap_or([0x52, 0x54, 0, 0, 0, 1]),
        mtu: def.mtu,
        stp: def.bridge.stp,
        forward_delay_secs: u32::try_from(def.bridge.delay).unwrap_or(u32::MAX),
    }
}

/// The firewall rules a network needs; `None` for modes that get none (open, host bridge).
pub(super) fn firewall_rules(def: &NetworkDef) -> Option<NetworkRules> {
    let mode = match def.forward_mode() {
        ForwardMode::Isolated => RuleMode::Isolated,
        ForwardMode::Nat => RuleMode::Nat,
        ForwardMode::Route => RuleMode::Route,
        ForwardMode::Open
        | ForwardMode::Bridge
        | ForwardMode::Private
        | ForwardMode::Vepa
        | ForwardMode::Passthrough => return None,
    };
    let nat = &def.forward.nat;
    let ports = nat.port.unwrap_or(DEFAULT_NAT_PORTS);
    Some(NetworkRules {
        bridge: def.bridge_name()?.to_owned(),
        mode,
        forward_dev: def.forward.dev.clone(),
        ipv4: def.ipv4_subnets(),
        ipv6: def.ipv6_subnets(),
        nat_addresses: nat.address.map(|range| (range.start, range.end)),
        nat_ports: (ports.start, ports.end),
        nat_ipv6: nat.ipv6 == Some(true),
    })
}

pub(super) fn ipv4(addr: std::net::IpAddr) -> Option<std::net::Ipv4Addr> {
    match addr {
        std::net::IpAddr::V4(v4) => Some(v4),
        std::net::IpAddr::V6(_) => None,
    }
}

/// A `<lease>` as a duration; zero means infinite, as the DHCP server reads it.
pub(super) fn lease_duration(lease: Option<&xml::Lease>) -> Option<std::time::Duration> {
    lease.map(|lease| std::time::Duration::from_secs(lease.seconds().unwrap_or(0)))
}

/// Where the TFTP server of a network listens and what it serves; `None` without `<tftp>`.
pub(super) fn tftp_config(def: &NetworkDef) -> Option<TftpConfig> {
    let ip = def.ips.iter().find(|ip| ip.tftp_root.is_some())?;
    Some(TftpConfig {
        network: def.name.clone(),
        listen: ipv4(ip.address)?,
        interface: def.bridge_name()?.to_owned(),
        subnets: guest_sources(def)
            .into_iter()
            .filter_map(|net| match net {
                ipnet::IpNet::V4(net) => Some(net),
                ipnet::IpNet::V6(_) => None,
            })
            .collect(),
        root: PathBuf::from(ip.tftp_root.as_ref()?),
    })
}

/// What the router advertisements of a network say; `None` for a network without an
/// IPv6 `<ip>` or on a host bridge (whose router is not ours).
pub(super) fn ra_config(def: &NetworkDef) -> Option<RaConfig> {
    if !def.forward_mode().has_managed_bridge() {
        return None;
    }
    let ipv6: Vec<(Ipv6Addr, u8)> = bridge_addresses(def)
        .filter_map(|(address, prefix)| match address {
            std::net::IpAddr::V6(address) => Some((address, prefix)),
            std::net::IpAddr::V4(_) => None,
        })
        .collect();
    let (first, _) = *ipv6.first()?;
    Some(RaConfig {
        network: def.name.clone(),
        interface: def.bridge_name()?.to_owned(),
        mac: def.mac.map(|mac| mac.0)?,
        // SLAAC makes addresses in /64s only.
        prefixes: ipv6
            .iter()
            .filter(|(_, prefix)| *prefix == 64)
            .filter_map(|&(address, prefix)| ipnet::Ipv6Net::new(address, prefix).ok())
            .map(|net| net.trunc())
            .collect(),
        managed_prefix: dhcp6_config(def).map(|config| config.subnet),
        router_lifetime: if def.forward_mode() == ForwardMode::Isolated {
            Duration::ZERO
        } else {
            ra::ROUTER_LIFETIME
        },
        mtu: def.mtu,
        dns_server: def.is_dns_enabled().then_some(first),
    })
}

/// What the DNS server serves and where it listens; `None` when DNS is disabled.
/// Addresses of the active `networks` and of this one are never used as upstreams: a
/// host whose resolv.conf names a kvnet bridge would otherwise forward to itself.
pub(super) fn dns_config(
    def: &NetworkDef,
    networks: &BTreeMap<String, Network>,
    host: &host_dns::HostDns,
) -> Option<DnsConfig> {
    if !def.is_dns_enabled() {
        return None;
    }
    // Checked per resolver (usually one to three), not by collecting every network's
    // addresses: a start at 1,000 networks spent 7% of its time on that list.
    let is_ours = |addr: &std::net::IpAddr| {
        networks
            .values()
            .filter_map(|network| network.live.as_ref())
            .chain([def])
            .any(|def| def.ips.iter().any(|ip| ip.address == *addr))
    };
    // libvirt's dnsmasq of an isolated network has `no-resolv`: its guests' names go to
    // the `<forwarder>`s, if any, never out through the host's resolvers.
    let default_upstreams = if def.forward_mode() == ForwardMode::Isolated {
        Vec::new()
    } else {
        host.resolvers
            .iter()
            .copied()
            .filter(|server| !is_ours(&server.ip()))
            .collect()
    };
    Some(DnsConfig {
        network: def.name.clone(),
        listen: bridge_addresses(def)
            .map(|(address, _)| address)
            .chain(bridge_link_local(def).map(IpAddr::V6))
            .collect(),
        interface: def.bridge_name().map(str::to_owned),
        clients: guest_sources(def),
        domain: def.domain.as_ref().map(|domain| domain.name.clone()),
        local_only: def.domain.as_ref().and_then(|domain| domain.local_only) == Some(true),
        forward_plain_names: def.dns.forward_plain_names != Some(false),
        local_ptr_domains: def
            .ips
            .iter()
            .filter(|ip| ip.local_ptr == Some(true))
            .filter_map(IpDef::ptr_domain)
            .collect(),
        hosts: def.dns.hosts.clone(),
        host_file: Arc::clone(&host.hosts),
        srvs: def.dns.srvs.clone(),
        txts: def.dns.txts.clone(),
        forwarders: own_forwarders_dropped(def),
        default_upstreams,
        addresses: xml::dnsmasq::address_rules(&def.dnsmasq_options),
        cache_size: xml::dnsmasq::cache_size(&def.dnsmasq_options)
            .and_then(|size| usize::try_from(size).ok()),
        log_queries: xml::dnsmasq::log_queries(&def.dnsmasq_options),
    })
}

/// The link-local address the kernel gives an IPv6 network's bridge (EUI-64 of its MAC,
/// the default `addr_gen_mode`). libvirt's dnsmasq answers DNS there too and announces
/// it in its router advertisements, so guests moved from libvirt may ask it for good.
fn bridge_link_local(def: &NetworkDef) -> Option<Ipv6Addr> {
    if def.ipv6_subnets().is_empty() {
        return None;
    }
    let [a, b, c, d, e, f] = def.mac?.0;
    Some(Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([a ^ 0x02, b]),
        u16::from_be_bytes([c, 0xff]),
        u16::from_be_bytes([0xfe, d]),
        u16::from_be_bytes([e, f]),
    ))
}

/// Where a network's guests' packets can come from: its subnets, those its `<route>`s
/// reach through a guest, and IPv6 link-local addresses.
pub(super) fn guest_sources(def: &NetworkDef) -> Vec<ipnet::IpNet> {
    let link_local = ipnet::Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10)
        .ok()
        .map(ipnet::IpNet::V6);
    def.ipv4_subnets()
        .into_iter()
        .map(ipnet::IpNet::V4)
        .chain(def.ipv6_subnets().into_iter().map(ipnet::IpNet::V6))
        .chain(def.routes.iter().filter_map(|route| route.destination()))
        .chain(link_local)
        .collect()
}

/// The network's `<forwarder>`s but those naming one of its own addresses: its DNS
/// server would forward to itself until every pending slot was taken. dnsmasq ignores
/// such a server too ("ignoring nameserver - local interface").
pub(super) fn own_forwarders_dropped(def: &NetworkDef) -> Vec<xml::DnsForwarder> {
    let (ours, others): (Vec<_>, Vec<_>) =
        def.dns.forwarders.iter().cloned().partition(|forwarder| {
            forwarder
                .addr
                .is_some_and(|addr| def.ips.iter().any(|ip| ip.address == addr))
        });
    for forwarder in ours {
        warn!(network = %def.name, addr = ?forwarder.addr, domain = ?forwarder.domain, "ignoring a DNS forwarder that is this network's own address");
    }
    others
}

/// What the DHCPv6 server serves, from the IPv6 `<ip>` with `<dhcp>` (libvirt allows
/// only one). `None` when the network hands out no IPv6 addresses, or on a bridge whose
/// MAC is not known yet.
pub(super) fn dhcp6_config(def: &NetworkDef) -> Option<Dhcp6Config> {
    let ip = def.ips.iter().find(|ip| !ip.is_ipv4() && ip.has_dhcp())?;
    let std::net::IpAddr::V6(address) = ip.address else {
        return None;
    };
    let subnet = ipnet::Ipv6Net::new(address, ip.prefix_len()?).ok()?.trunc();
    let ipv6 = |addr: std::net::IpAddr| match addr {
        std::net::IpAddr::V6(v6) => Some(v6),
        std::net::IpAddr::V4(_) => None,
    };
    let ranges = ip.dhcp_ranges.iter().filter_map(|range| {
        Some((
            ipv6(range.start)?,
            ipv6(range.end)?,
            lease_duration(range.lease.as_ref()),
        ))
    });
    let hosts = def.usable_dhcp_hosts(ip).filter_map(|host| {
        Some(Dhcp6HostConfig {
            duid: host.duid(),
            name: host.name.clone(),
            ip: ipv6(host.ip)?,
            lease: lease_duration(host.lease.as_ref()),
        })
    });
    Some(Dhcp6Config {
        network: def.name.clone(),
        interface: def.bridge_name()?.to_owned(),
        server_mac: def.mac.map(|mac| mac.0)?,
        server_ip: address,
        subnet,
        ranges: ranges.collect(),
        hosts: hosts.collect(),
        dns_server: def.is_dns_enabled().then_some(address),
        domain: def.domain.as_ref().map(|domain| domain.name.clone()),
        default_lease: dhcp6::DEFAULT_LEASE,
        log_dhcp: xml::dnsmasq::log_dhcp(&def.dnsmasq_options),
    })
}

/// What the DHCP server serves, from the IPv4 `<ip>` with `<dhcp>` (libvirt allows only
/// one). `None` when the network hands out no addresses.
pub(super) fn dhcp_config(def: &NetworkDef) -> Option<DhcpConfig> {
    let ip = def.ips.iter().find(|ip| ip.is_ipv4() && ip.has_dhcp())?;
    let server_ip = ipv4(ip.address)?;
    let subnet = ipnet::Ipv4Net::new(server_ip, ip.prefix_len()?)
        .ok()?
        .trunc();
    let ranges = ip.dhcp_ranges.iter().filter_map(|range| {
        Some((
            ipv4(range.start)?,
            ipv4(range.end)?,
            lease_duration(range.lease.as_ref()),
        ))
    });
    let hosts = def.usable_dhcp_hosts(ip).filter_map(|host| {
        Some(DhcpHostConfig {
            mac: host.mac.map(|mac| mac.0),
            ip: ipv4(host.ip)?,
            name: host.name.clone(),
            lease: lease_duration(host.lease.as_ref()),
        })
    });
    Some(DhcpConfig {
        network: def.name.clone(),
        interface: def.bridge_name()?.to_owned(),
        server_ip,
        subnet,
        ranges: ranges.collect(),
        hosts: hosts.collect(),
        // libvirt gives isolated networks no default route (dnsmasq's `dhcp-option=3`).
        router: (def.forward_mode() != ForwardMode::Isolated).then_some(server_ip),
        dns_server: def.is_dns_enabled().then_some(server_ip),
        domain: def.domain.as_ref().map(|domain| domain.name.clone()),
        mtu: def.mtu.and_then(|mtu| u16::try_from(mtu).ok()),
        default_lease: dhcp::DEFAULT_LEASE,
        boot: ip.dhcp_bootp.as_ref().map(|bootp| dhcp::DhcpBoot {
            file: bootp.file.clone(),
            server: bootp.server.unwrap_or(server_ip),
        }),
        options: xml::dnsmasq::dhcp_options(&def.dnsmasq_options),
        log_dhcp: xml::dnsmasq::log_dhcp(&def.dnsmasq_options),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's EUI-64 link-local address of the bridge, as `ip -6 addr` shows it for
    /// a bridge with this MAC; none on a network without IPv6.
    #[test]
    fn the_bridges_link_local_address_is_the_eui64_one_of_its_mac() {
        let with_ipv6 = NetworkDef::from_xml(
            "<network><name>n</name><mac address='52:54:00:51:d1:6f'/>\
             <ip family='ipv6' address='fd00:9::1' prefix='64'/></network>",
        )
        .expect("parse");
        assert_eq!(
            bridge_link_local(&with_ipv6),
            Some("fe80::5054:ff:fe51:d16f".parse().expect("address"))
        );
        let without = NetworkDef::from_xml(
            "<network><name>n</name><mac address='52:54:00:51:d1:6f'/>\
             <ip address='10.9.0.1' prefix='24'/></network>",
        )
        .expect("parse");
        assert_eq!(bridge_link_local(&without), None);
    }

    /// What DNS, TFTP and the firewall take for a guest's own source: losing a kind here
    /// would silently cut real guests off.
    #[test]
    fn guest_sources_are_the_subnets_the_routes_and_link_local() {
        let def = NetworkDef::from_xml(
            "<network><name>n</name><bridge name='kvn0'/><forward mode='route'/>\
             <ip address='10.9.0.1' prefix='24'/><ip family='ipv6' address='fd00:9::1' prefix='64'/>\
             <route address='10.99.0.0' prefix='16' gateway='10.9.0.2'/></network>",
        )
        .expect("parse");
        let sources: Vec<String> = guest_sources(&def)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            sources,
            ["10.9.0.0/24", "fd00:9::/64", "10.99.0.0/16", "fe80::/10"]
        );
    }

    #[test]
    fn the_last_dhcp_option_line_of_a_code_counts() {
        let def = NetworkDef::from_xml(
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
             <name>n</name><bridge name='kvn0'/><ip address='10.9.0.1' prefix='24'><dhcp>\
             <range start='10.9.0.10' end='10.9.0.20'/></dhcp></ip><dnsmasq:options>\
             <dnsmasq:option value='dhcp-option=42,10.9.0.5'/>\
             <dnsmasq:option value='cache-size=0'/>\
             <dnsmasq:option value='dhcp-option=3,10.9.0.254'/>\
             <dnsmasq:option value='dhcp-option-force=option:ntp-server,0.0.0.0'/>\
             </dnsmasq:options></network>",
        )
        .expect("valid");
        let options = dhcp_config(&def).expect("DHCP").options;
        let summary: Vec<_> = options
            .iter()
            .map(|rule| (rule.code, rule.force, rule.value.clone()))
            .collect();
        let ip = |ip: [u8; 4]| xml::DhcpOptionValue::Addresses(vec![ip.into()]);
        assert_eq!(
            summary,
            [
                (3, false, ip([10, 9, 0, 254])),
                (42, true, ip([0, 0, 0, 0]))
            ]
        );
    }

    #[test]
    fn a_forwarder_at_the_networks_own_address_is_dropped() {
        let def = NetworkDef::from_xml(
            "<network><name>n</name><dns><forwarder addr='10.9.0.1'/>\
             <forwarder domain='corp' addr='10.9.0.1'/><forwarder addr='10.9.0.53'/>\
             <forwarder domain='lan'/></dns><ip address='10.9.0.1' prefix='24'/></network>",
        )
        .expect("valid");
        let kept: Vec<_> = own_forwarders_dropped(&def)
            .into_iter()
            .map(|forwarder| {
                (
                    forwarder.addr.map(|addr| addr.to_string()),
                    forwarder.domain,
                )
            })
            .collect();
        assert_eq!(
            kept,
            [
                (Some("10.9.0.53".to_owned()), None),
                (None, Some("lan".to_owned()))
            ]
        );
    }
}
