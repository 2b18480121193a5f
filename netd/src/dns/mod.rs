//! DNS server: one small tokio task per network, listening on the bridge's addresses.
//!
//! The layers, from pure to I/O:
//! - [`zone`]: the names the network answers for itself (`<dns><host>`, `<srv>`, `<txt>`
//!   and the hostnames of DHCP leases), as ready-to-send wire records;
//! - [`resolver`]: one query in, one decision out: a local answer written into a buffer,
//!   a forward to the upstream servers in order of preference, or nothing. No sockets:
//!   tests and the fuzz target drive it;
//! - [`hosts`]: the host's `/etc/hosts`, read once for every network;
//! - `routes`: which upstream servers a name goes to (`<forwarder domain=>`);
//! - [`cache`]: upstream answers kept for their TTL, as dnsmasq's cache keeps them;
//! - `forward`: one forwarded query's way through its upstream servers, in strict
//!   order, and the servers' recent failures;
//! - `query_log`: `log-queries`, each query and what became of it in dnsmasq's words;
//! - `in_flight`: the forwards in flight and who waits for each (later askers of a
//!   question join its forward), within limits per network and per guest;
//! - [`server`]: the UDP sockets (read and answered in batches) and TCP listeners on
//!   port 53, a task per forward, and the [`DnsServer`] handle the manager keeps, whose
//!   [`DnsServer::update`] swaps the records in while it runs.
//!
//! What it answers follows libvirt's dnsmasq configuration: names are served with TTL 0
//! (dnsmasq's `local-ttl` default), plain hostnames are also qualified with the
//! network's `<domain>` (`expand-hosts`), `localOnly='yes'` keeps a domain local
//! (`local=/domain/`), `<forwarder domain=>` without `addr` sends a domain to the
//! default servers (`server=/domain/#`), and `forwardPlainNames='no'` keeps
//! single-label names local (`domain-needed`). Without `<forwarder addr=>` entries
//! queries go to the host's resolvers from `/etc/resolv.conf`, and the host's
//! `/etc/hosts` is served alongside `<dns><host>` (libvirt writes no `no-hosts`).

pub mod cache;
mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hosts;
mod in_flight;
mod query_log;
pub mod resolver;
mod routes;
pub mod server;
pub mod zone;

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use hosts::{HostsFile, SharedHosts};
pub use resolver::{Outcome, Resolver};
pub use server::DnsServer;

use crate::xml::{AddressRule, DnsForwarder, DnsHost, DnsSrv, DnsTxt, QueryLogging};

/// The DNS port.
pub const DNS_PORT: u16 = 53;

/// Reads the current DHCP and DHCPv6 leases (and named DHCPv6 reservations) of the
/// network as `(address, hostname)` pairs.
pub type LeaseReader = Arc<dyn Fn() -> Vec<(IpAddr, String)> + Send + Sync>;

/// Where the DNS server gets the network's lease names: a reader, and a counter the
/// DHCP servers bump whenever a binding may have changed, so that a released or
/// renamed guest stops resolving at once instead of at the next periodic re-read.
#[derive(Clone)]
pub struct LeaseSource {
    read: LeaseReader,
    changes: Vec<Arc<AtomicU64>>,
}

impl std::fmt::Debug for LeaseSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSource")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl LeaseSource {
    /// A source re-read only periodically (and on a miss).
    pub fn new(read: LeaseReader) -> LeaseSource {
        LeaseSource {
            read,
            changes: Vec::new(),
        }
    }

    /// The source, also re-read after `changes` moves.
    pub fn with_changes(mut self, changes: Arc<AtomicU64>) -> LeaseSource {
        self.changes.push(changes);
        self
    }

    /// The names now.
    pub fn read(&self) -> Vec<(IpAddr, String)> {
        (self.read)()
    }

    /// A number that differs from an earlier one when bindings changed in between.
    pub fn generation(&self) -> u64 {
        self.changes
            .iter()
            .map(|changes| changes.load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }
}

/// What the DNS server of one network serves; built by the manager from the network XML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// Network name, for logs.
    pub network: String,
    /// The bridge's addresses; the server listens on port 53 of each.
    pub listen: Vec<IpAddr>,
    /// The bridge: only queries that arrive on it are seen (`SO_BINDTODEVICE`), as
    /// libvirt's dnsmasq answers only on its `interface=`. Without it, anyone who can
    /// route to the bridge's address (a LAN neighbour, a routed network's upstream)
    /// could use the host as a resolver. `None` (tests on loopback) answers on any.
    pub interface: Option<String>,
    /// Where queries may come from: the network's subnets, those its `<route>`s reach
    /// through a guest, and IPv6 link-local addresses. A query from elsewhere on the
    /// bridge is a guest spoofing its source: its answer would go out as if the address
    /// were on the bridge, each one taking a slot of the host's neighbour table. Empty
    /// (tests on loopback): any.
    pub clients: Vec<ipnet::IpNet>,
    /// `<domain name=>`: hostnames are also answered qualified with it.
    pub domain: Option<String>,
    /// `<domain localOnly='yes'>`: names in the domain are never forwarded.
    pub local_only: bool,
    /// `forwardPlainNames` (default yes): whether single-label names go upstream.
    pub forward_plain_names: bool,
    /// The reverse-lookup domains of the `<ip localPtr='yes'>` subnets: lookups in them
    /// that no lease or `<host>` answers get NXDOMAIN instead of going upstream.
    pub local_ptr_domains: Vec<String>,
    /// `<dns><host>` entries.
    pub hosts: Vec<DnsHost>,
    /// The host's hosts file, served alongside `<dns><host>` (shared by every network).
    pub host_file: Arc<SharedHosts>,
    /// `<dns><srv>` entries.
    pub srvs: Vec<DnsSrv>,
    /// `<dns><txt>` entries.
    pub txts: Vec<DnsTxt>,
    /// `<dns><forwarder>` entries, in document order.
    pub forwarders: Vec<DnsForwarder>,
    /// Servers for names no forwarder routes: used only when no `<forwarder addr=>`
    /// without `domain` exists (the host's resolvers, minus our own bridge addresses).
    pub default_upstreams: Vec<SocketAddr>,
    /// `<dnsmasq:option value='address=...'>`s, in document order.
    pub addresses: Vec<AddressRule>,
    /// `<dnsmasq:option value='cache-size=N'>` (the last one): how many upstream
    /// answers are kept. `None`: the default, [`cache::MAX_ENTRIES`].
    pub cache_size: Option<usize>,
    /// `<dnsmasq:option value='log-queries'>`: each query and its answer are logged.
    pub log_queries: Option<QueryLogging>,
}

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket on port 53 could not be set up.
    #[error("network {network}: cannot listen for DNS on {address} ({protocol}): {step}")]
    Socket {
        /// The network.
        network: String,
        /// The bridge address.
        address: IpAddr,
        /// "udp" or "tcp".
        protocol: &'static str,
        /// What failed.
        step: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A configured name, address or record is not valid DNS.
    #[error("network {network}: invalid DNS {what} '{value}'")]
    Record {
        /// The network.
        network: String,
        /// The kind of entry ("hostname", "srv", "txt", "domain").
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// [`DnsServer::start`] was called outside a tokio runtime.
    #[error("network {network}: the DNS server must be started inside a tokio runtime")]
    NoRuntime {
        /// The network.
        network: String,
    },
}

/// The `nameserver`s of a resolv.conf, on port 53 (`/dev/null`: none). A file that
/// cannot be read is an error, for the caller to keep what it read before: a moment
/// out of descriptors must not leave the guests without resolvers.
pub fn host_resolvers(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    if crate::files::is_dev_null(path) {
        return Ok(Vec::new());
    }
    let text = crate::files::read_text(path)?;
    Ok(parse_resolv_conf(&text, |name| {
        nix::net::if_::if_nametoindex(name).ok()
    }))
}

/// The nameservers of resolv.conf `text`. A link-local one (`fe80::1%eth0`, a router
/// announcing itself as the resolver) is reached through the interface it names, whose
/// index `ifindex` finds, as dnsmasq uses it; one on an interface that is gone is left
/// out.
fn parse_resolv_conf(text: &str, ifindex: impl Fn(&str) -> Option<u32>) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let word = words.next()?;
            let Some((address, interface)) = word.split_once('%') else {
                return Some(SocketAddr::new(word.parse().ok()?, DNS_PORT));
            };
            let address: Ipv6Addr = address.parse().ok()?;
            let scope = if address.is_unicast_link_local() {
                ifindex(interface)?
            } else {
                0
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                address, DNS_PORT, 0, scope,
            )))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.53\n nameserver  ::1 \n\
                    nameserver fe80::1%eth0\nnameserver fe80::2%gone0\nnameserver bogus\n\
                    options edns0\n";
        let ifindex = |name: &str| (name == "eth0").then_some(7);
        assert_eq!(
            parse_resolv_conf(text, ifindex),
            vec![
                "10.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap(),
                "[fe80::1%7]:53".parse().unwrap(),
            ]
        );
    }
}
