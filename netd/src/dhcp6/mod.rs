//! DHCPv6 server (RFC 8415, stateful IA_NA): what libvirt's dnsmasq serves for a
//! `<dhcp>` inside an IPv6 `<ip>` (`dhcp-range=START,END,PREFIX[,lease]` with
//! `enable-ra`). One small tokio task per network, bound to the network's bridge.
//!
//! The layers, from pure to I/O, as in the DHCPv4 server ([`crate::dhcp`]):
//! - [`leases`]: the lease database (allocation, reservations by DUID or name, expiry,
//!   decline) and its file, rewritten atomically when bindings change;
//! - [`engine`]: one DHCPv6 message in, at most one reply out. No sockets, no clock;
//! - `log`: `log-dhcp`, each message and its reply in dnsmasq's words;
//! - [`server`]: the UDP socket on port 547 bound to the bridge and joined to
//!   `ff02::1:2`, persistence before replies, and the [`Dhcp6Server`] handle.
//!
//! Deliberate choices:
//! - authoritative: a RENEW/REBIND for a free address of our pool that we have no
//!   record of (lease file lost) binds it again, where dnsmasq 2.90 answers NoBinding
//!   and the guest loses its address until it solicits again;
//! - a lease is listed with the MAC the kernel's neighbour table holds for the
//!   client's link-local address, as dnsmasq finds it; only failing that the one its
//!   DUID or EUI-64 address carries (a cloned guest's DUID-LLT names its template's);
//! - a `<host>` reservation wins: a dynamic holder of the address is moved elsewhere at
//!   its next renewal, and the reserved client gets it then (the pool serves it until
//!   then: two clients never share an address);
//! - relayed messages are dropped (the network is one link; there are no relays on it);
//! - temporary addresses (IA_TA) and prefix delegation (IA_PD) are answered with
//!   NoAddrsAvail / NoPrefixAvail. (dnsmasq 2.90 gives IA_TAs an address from the range;
//!   guests use SLAAC privacy addresses, and ask for IA_TA only when told to.)

pub mod engine;
pub mod leases;
mod log;
pub mod server;

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

pub use engine::Engine;
pub use server::Dhcp6Server;

/// Lease time when neither the range nor the host sets one: dnsmasq's for DHCPv6, which
/// libvirt leaves to it (one day, where DHCPv4's is one hour).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(24 * 3600);

/// What the DHCPv6 server of one network serves; built by the manager from the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp6Config {
    /// Network name, for logs.
    pub network: String,
    /// Bridge the server binds to (`SO_BINDTODEVICE`).
    pub interface: String,
    /// The bridge's MAC: the server's DUID-LL (option 2) is made from it.
    pub server_mac: [u8; 6],
    /// The bridge's own address (`<ip address=>`): never handed out, even when a
    /// range holds it.
    pub server_ip: Ipv6Addr,
    /// The `<ip address= prefix=>` subnet, truncated.
    pub subnet: ipnet::Ipv6Net,
    /// `<range start= end=>` with its optional `<lease>`; `Some(Duration::ZERO)` means
    /// infinite.
    pub ranges: Vec<(Ipv6Addr, Ipv6Addr, Option<Duration>)>,
    /// `<host id= name= ip=>` reservations.
    pub hosts: Vec<Dhcp6HostConfig>,
    /// DNS recursive name server (option 23); `None` when `<dns enable='no'/>`.
    pub dns_server: Option<Ipv6Addr>,
    /// Domain search list (option 24), from `<domain name=>`.
    pub domain: Option<String>,
    /// Lease time for addresses whose range and host set none.
    pub default_lease: Duration,
    /// `<dnsmasq:option value='log-dhcp'>`: each message and its reply are logged.
    pub log_dhcp: bool,
}

impl Dhcp6Config {
    /// The server identifier: a DUID-LL (RFC 8415 11.4) of the bridge's MAC.
    pub fn server_duid(&self) -> Vec<u8> {
        let mut duid = vec![0, 3, 0, 1];
        duid.extend_from_slice(&self.server_mac);
        duid
    }
}

/// The names DNS answers for `leases`, given in the order they were bound or renewed:
/// for each name, the addresses of the client that claimed it last (its lease expiring
/// last, and of those expiring in the same second the one bound last), all of them when
/// it holds several, as dnsmasq gives a name to the client that claimed it last. Cloned
/// guests that all call themselves `ubuntu` resolve to the one that spoke last.
pub fn dns_names(leases: Vec<Lease6Info>) -> Vec<(Ipv6Addr, String)> {
    let rank = |order: usize, lease: &Lease6Info| {
        let expiry = match lease.expiry_unix {
            0 => i64::MAX,
            expiry => expiry,
        };
        (expiry, order)
    };
    let mut claimed: HashMap<String, ((i64, usize), &[u8])> = HashMap::new();
    for (order, lease) in leases.iter().enumerate() {
        let Some(name) = &lease.hostname else {
            continue;
        };
        let this = (rank(order, lease), lease.duid.as_slice());
        claimed
            .entry(name.to_ascii_lowercase())
            .and_modify(|held| *held = (*held).max(this))
            .or_insert(this);
    }
    leases
        .iter()
        .filter_map(|lease| {
            let name = lease.hostname.as_ref()?;
            let (_, owner) = claimed.get(&name.to_ascii_lowercase())?;
            (*owner == lease.duid.as_slice()).then(|| (lease.ip, name.clone()))
        })
        .collect()
}

/// One `<host>` reservation of the IPv6 `<dhcp>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp6HostConfig {
    /// The client's DUID (`id`).
    pub duid: Option<Vec<u8>>,
    /// `name`: matched against the client's FQDN option when there is no `id`, and the
    /// hostname of the lease either way.
    pub name: Option<String>,
    /// The reserved address.
    pub ip: Ipv6Addr,
    /// `<lease>` of the host; `Some(Duration::ZERO)` means infinite.
    pub lease: Option<Duration>,
}

/// A bound lease, as `net-dhcp-leases` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease6Info {
    /// Unix time the lease expires; 0 for an infinite lease (libvirt's convention).
    pub expiry_unix: i64,
    /// The client's DUID.
    pub duid: Vec<u8>,
    /// The identity association the address belongs to.
    pub iaid: u32,
    /// The client's MAC when known (from a DUID-LL/LLT or an EUI-64 link-local source).
    pub mac: Option<[u8; 6]>,
    /// The leased address.
    pub ip: Ipv6Addr,
    /// Hostname: the reservation's name, else the client's FQDN option (sanitised).
    pub hostname: Option<String>,
}

/// Errors of the DHCPv6 server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The UDP socket on port 547 could not be set up.
    #[error("network {network}: cannot open the DHCPv6 socket on {interface}: {step}")]
    Socket {
        network: String,
        interface: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the lease file failed.
    #[error("network {network}: DHCPv6 lease file {path}: cannot {action}")]
    LeaseFile {
        network: String,
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// [`Dhcp6Server::start`] was called outside a tokio runtime.
    #[error("network {network}: the DHCPv6 server must be started inside a tokio runtime")]
    NoRuntime { network: String },
}

/// The MAC inside a DUID-LLT or DUID-LL of an Ethernet interface.
pub fn duid_mac(duid: &[u8]) -> Option<[u8; 6]> {
    let mac = match duid {
        [0, 1, 0, 1, _, _, _, _, mac @ ..] => mac,
        [0, 3, 0, 1, mac @ ..] => mac,
        _ => return None,
    };
    mac.try_into().ok()
}

/// The MAC a modified EUI-64 interface identifier (RFC 4291 2.5.1) was made from, as in
/// the link-local address Linux gives an interface by default.
pub fn eui64_mac(address: Ipv6Addr) -> Option<[u8; 6]> {
    let o = address.octets();
    (o[11] == 0xff && o[12] == 0xfe).then(|| [o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_come_from_link_layer_duids_and_eui64_addresses() {
        let llt = [0, 1, 0, 1, 0x2a, 0, 0, 1, 0x52, 0x54, 0, 1, 2, 3];
        assert_eq!(duid_mac(&llt), Some([0x52, 0x54, 0, 1, 2, 3]));
        let ll = [0, 3, 0, 1, 0x52, 0x54, 0, 1, 2, 3];
        assert_eq!(duid_mac(&ll), Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(duid_mac(&[0, 2, 0, 0, 0, 9, 1, 2, 3, 4]), None);
        assert_eq!(duid_mac(&[0, 3, 0, 1, 1, 2]), None);
        assert_eq!(duid_mac(&[0, 3, 0, 6, 1, 2, 3, 4, 5, 6]), None);
        let link_local: Ipv6Addr = "fe80::5054:ff:fe01:203"
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(eui64_mac(link_local), Some([0x52, 0x54, 0, 1, 2, 3]));
        let privacy: Ipv6Addr = "fe80::1c2b:3a4d:5e6f:7081"
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        assert_eq!(eui64_mac(privacy), None);
    }

    #[test]
    fn the_server_duid_is_a_duid_ll_of_the_bridge_mac() {
        let config = engine::tests::config();
        assert_eq!(
            config.server_duid(),
            [0, 3, 0, 1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]
        );
    }
}
