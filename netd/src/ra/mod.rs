//! IPv6 router advertisements (RFC 4861) for networks with an IPv6 `<ip>`: what
//! libvirt's dnsmasq does with `dhcp-range=<address>,ra-only`, so that guests configure
//! their addresses (SLAAC) and, on forwarding networks, their default route.
//!
//! - [`advertisement`] builds the message (pure, tested byte for byte);
//! - [`server`] sends it on the bridge: at start, twice more 16 s apart, then every
//!   200-600 s, and soon after a guest's router solicitation; a final one with router
//!   lifetime 0 when the network stops.
//!
//! What is advertised, after dnsmasq's defaults for `ra-only`: each /64 of the network
//! as an on-link, autonomous prefix with one-hour lifetimes (SLAAC needs a /64; other
//! prefixes are not advertised); the host as default router for 30 minutes, or not at
//! all on isolated networks (libvirt's `ra-param=*,0,0`); the bridge's MTU when the
//! network sets one; the bridge's first IPv6 address as DNS server (RDNSS) when the
//! network serves DNS.
//!
//! The `<ip>` with DHCPv6 (libvirt's `enable-ra` with a plain `dhcp-range`) is advertised
//! as dnsmasq's radv.c does for such a range: the managed (M) and other-config (O) flags
//! are set, and its prefix is on-link but not autonomous, so guests take their address
//! from DHCPv6 instead of making one up. Other /64s stay autonomous, which libvirt's
//! dnsmasq does not do: libvirt writes the `ra-only` ranges only when no `<ip>` has
//! DHCPv6, so its guests get no address in the others.

pub mod server;

use std::net::Ipv6Addr;
use std::time::Duration;

pub use server::RaServer;

/// Lifetime of the advertised prefixes (valid and preferred). dnsmasq gives libvirt's
/// `ra-only` ranges infinite ones; a finite one lets guests drop the prefix of a network
/// that stopped, and advertisements renew it long before it runs out.
pub const PREFIX_LIFETIME: Duration = Duration::from_secs(3600);
/// Router lifetime on forwarding networks: dnsmasq's (and RFC 4861's) default.
pub const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// How long guests may use the advertised DNS server: three times the longest interval
/// between advertisements (RFC 8106).
pub const RDNSS_LIFETIME: Duration = Duration::from_secs(1800);

/// What one network advertises; built by the manager from the network XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaConfig {
    /// Network name, for logs.
    pub network: String,
    /// The bridge to advertise on.
    pub interface: String,
    /// The bridge's MAC (source link-layer address option).
    pub mac: [u8; 6],
    /// The /64 prefixes guests configure addresses in (SLAAC).
    pub prefixes: Vec<ipnet::Ipv6Net>,
    /// The prefix of the `<ip>` whose addresses DHCPv6 hands out: advertised on-link
    /// only, with the M and O flags.
    pub managed_prefix: Option<ipnet::Ipv6Net>,
    /// How long guests may route through the host; zero on isolated networks.
    pub router_lifetime: Duration,
    /// `<mtu size=>`.
    pub mtu: Option<u32>,
    /// The DNS server guests are told about; `None` when the network serves no DNS.
    pub dns_server: Option<Ipv6Addr>,
}

/// Errors of the router advertisement service; each names the network and bridge.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ICMPv6 socket could not be set up.
    #[error("cannot {step} for router advertisements of network '{network}' on {interface}")]
    Socket {
        /// Network name.
        network: String,
        /// Bridge name.
        interface: String,
        /// What failed.
        step: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// There is no tokio runtime to run the service on.
    #[error("no async runtime to advertise network '{network}' on")]
    NoRuntime {
        /// Network name.
        network: String,
    },
}

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
const ROUTER_ADVERTISEMENT: u8 = 134;
/// Hop limit guests should use; 0 would leave theirs as it is.
const CUR_HOP_LIMIT: u8 = 64;
/// Option types (RFC 4861 4.6, RFC 8106).
const OPTION_SOURCE_LINK_ADDRESS: u8 = 1;
const OPTION_PREFIX_INFORMATION: u8 = 3;
const OPTION_MTU: u8 = 5;
const OPTION_RDNSS: u8 = 25;
/// Prefix information flags: on-link (L) and autonomous address configuration (A).
const PREFIX_ON_LINK: u8 = 0x80;
const PREFIX_AUTONOMOUS: u8 = 0x40;
/// Advertisement flags: managed address configuration (M) and other configuration (O).
const MANAGED_AND_OTHER: u8 = 0xc0;

/// The router advertisement of `config`, with `router_lifetime` in place of the
/// configured one (zero in the last advertisement). The checksum is left zero: the
/// kernel fills it in on ICMPv6 raw sockets.
pub fn advertisement(config: &RaConfig, router_lifetime: Duration) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 + 8 + 32 * config.prefixes.len() + 24);
    let flags = if config.managed_prefix.is_some() {
        MANAGED_AND_OTHER
    } else {
        0
    };
    out.extend_from_slice(&[ROUTER_ADVERTISEMENT, 0, 0, 0, CUR_HOP_LIMIT, flags]);
    out.extend_from_slice(&seconds_u16(router_lifetime).to_be_bytes());
    // Reachable time and retransmission timer: unspecified.
    out.extend_from_slice(&[0; 8]);

    out.extend_from_slice(&[OPTION_SOURCE_LINK_ADDRESS, 1]);
    out.extend_from_slice(&config.mac);
    if let Some(mtu) = config.mtu {
        out.extend_from_slice(&[OPTION_MTU, 1, 0, 0]);
        out.extend_from_slice(&mtu.to_be_bytes());
    }
    let managed = config.managed_prefix.iter().map(|p| (p, PREFIX_ON_LINK));
    let slaac = config
        .prefixes
        .iter()
        .filter(|p| Some(**p) != config.managed_prefix)
        .map(|p| (p, PREFIX_ON_LINK | PREFIX_AUTONOMOUS));
    for (prefix, prefix_flags) in managed.chain(slaac) {
        out.extend_from_slice(&[
            OPTION_PREFIX_INFORMATION,
            4,
            prefix.prefix_len(),
            prefix_flags,
        ]);
        let lifetime = seconds_u32(PREFIX_LIFETIME).to_be_bytes();
        out.extend_from_slice(&lifetime); // valid
        out.extend_from_slice(&lifetime); // preferred
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&prefix.trunc().network().octets());
    }
    if let Some(server) = config.dns_server {
        out.extend_from_slice(&[OPTION_RDNSS, 3, 0, 0]);
        out.extend_from_slice(&seconds_u32(RDNSS_LIFETIME).to_be_bytes());
        out.extend_from_slice(&server.octets());
    }
    out
}

/// Whether `packet` (an ICMPv6 message, as a raw socket reads it) is a well-formed
/// router solicitation (RFC 4861 6.1.1: code 0, at least 8 bytes, options of non-zero
/// length that fit).
pub fn is_router_solicitation(packet: &[u8]) -> bool {
    let [ROUTER_SOLICITATION, 0, _, _, _, _, _, _, options @ ..] = packet else {
        return false;
    };
    let mut rest = options;
    while let [_, length, ..] = rest {
        let bytes = usize::from(*length) * 8;
        if bytes == 0 || bytes > rest.len() {
            return false;
        }
        rest = &rest[bytes..];
    }
    rest.is_empty()
}

fn seconds_u16(duration: Duration) -> u16 {
    u16::try_from(duration.as_secs()).unwrap_or(u16::MAX)
}

fn seconds_u32(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RaConfig {
        RaConfig {
            network: "n".into(),
            interface: "virbr9".into(),
            mac: [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
            prefixes: vec!["2001:db8:ca2:2::1/64".parse().unwrap()],
            managed_prefix: None,
            router_lifetime: ROUTER_LIFETIME,
            mtu: Some(9000),
            dns_server: Some("2001:db8:ca2:2::1".parse().unwrap()),
        }
    }

    #[test]
    fn an_advertisement_carries_router_mtu_prefix_and_dns_server() {
        let packet = advertisement(&config(), ROUTER_LIFETIME);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // type 134, code, checksum, hop limit 64, flags, router lifetime 1800
            &[134, 0, 0, 0, 64, 0, 0x07, 0x08][..],
            &[0; 8],
            // source link-layer address
            &[1, 1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
            // MTU 9000
            &[5, 1, 0, 0, 0, 0, 0x23, 0x28],
            // prefix 2001:db8:ca2:2::/64, L and A, 3600 s valid and preferred
            &[3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10, 0, 0, 0, 0],
            &[0x20, 0x01, 0x0d, 0xb8, 0x0c, 0xa2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            // RDNSS 2001:db8:ca2:2::1 for 1800 s
            &[25, 3, 0, 0, 0, 0, 0x07, 0x08],
            &[0x20, 0x01, 0x0d, 0xb8, 0x0c, 0xa2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
        ]
        .concat();
        assert_eq!(packet, expected);
    }

    /// As dnsmasq's radv.c for a plain DHCPv6 `dhcp-range` with `enable-ra`: M and O
    /// set, the DHCPv6 prefix on-link without A, a SLAAC /64 beside it still autonomous.
    #[test]
    fn a_dhcpv6_prefix_is_managed_and_not_autonomous() {
        let managed: ipnet::Ipv6Net = "2001:db8:ca2:2::/64".parse().unwrap();
        let with_dhcp6 = RaConfig {
            prefixes: vec![managed, "fd00:1::/64".parse().unwrap()],
            managed_prefix: Some(managed),
            mtu: None,
            dns_server: None,
            ..config()
        };
        let packet = advertisement(&with_dhcp6, ROUTER_LIFETIME);
        assert_eq!(packet[5], 0xc0, "M and O flags");
        // Header, source link-layer address, then the two prefixes.
        assert_eq!(packet.len(), 16 + 8 + 32 + 32);
        assert_eq!(packet[24..28], [3, 4, 64, 0x80]);
        assert_eq!(packet[40..56], managed.network().octets());
        assert_eq!(packet[56..60], [3, 4, 64, 0xc0]);
        assert_eq!(
            advertisement(&config(), ROUTER_LIFETIME)[5],
            0,
            "SLAAC only: no flags"
        );
    }

    #[test]
    fn an_isolated_network_advertises_no_router_and_the_last_advertisement_neither() {
        let isolated = RaConfig {
            router_lifetime: Duration::ZERO,
            mtu: None,
            dns_server: None,
            ..config()
        };
        let packet = advertisement(&isolated, isolated.router_lifetime);
        assert_eq!(packet[6..8], [0, 0]);
        // Header, source link-layer address, one prefix: nothing else.
        assert_eq!(packet.len(), 16 + 8 + 32);
        assert_eq!(advertisement(&config(), Duration::ZERO)[6..8], [0, 0]);
    }

    #[test]
    fn solicitations_are_recognised_and_malformed_ones_refused() {
        let plain = [133, 0, 0, 0, 0, 0, 0, 0];
        assert!(is_router_solicitation(&plain));
        let with_address = [&plain[..], &[1, 1, 1, 2, 3, 4, 5, 6]].concat();
        assert!(is_router_solicitation(&with_address));
        for bad in [
            &[133, 0, 0, 0][..],                                 // too short
            &[133, 1, 0, 0, 0, 0, 0, 0],                         // code not 0
            &[134, 0, 0, 0, 0, 0, 0, 0],                         // an advertisement
            &[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], // option of length 0
            &[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0], // option past the end
            &[133, 0, 0, 0, 0, 0, 0, 0, 1],                      // truncated option header
        ] {
            assert!(!is_router_solicitation(bad), "{bad:?}");
        }
    }
}
