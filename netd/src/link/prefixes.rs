//! An in-memory copy of the host's used prefixes, kept current by rtnetlink notifications.
//!
//! A start checks its subnets against every address and main-table route of the host.
//! Dumping them costs O(links): with a thousand bridges the three dumps were most of a
//! start's time. [`PrefixCache`] dumps once, then follows the kernel's address, route and
//! link notifications on a socket of its own.
//!
//! Freshness: the kernel queues a notification on our socket before the syscall that made
//! the change returns, so draining the socket (without waiting) right before answering
//! gives exactly the state after every change completed so far. The daemon also calls
//! [`PrefixCache::catch_up`] once a change is answered, so the notifications of a stop are
//! applied while it is idle rather than at the start of the next start. Replaying notifications
//! that the dump already reflected is harmless: entries are keyed by identity, a NEW
//! overwrites and a DEL removes. If the socket overflowed (`ENOBUFS`), some notifications
//! are lost and the cache dumps again.
//!
//! One kernel quirk: IPv4 routes through a link that goes down or away are flushed without
//! `RTM_DELROUTE`. Link notifications cover that: a link going down drops its IPv4 routes
//! (the kernel re-announces the prefix routes of its addresses when it comes back up), a
//! link going away drops everything through it. Deleting an IPv4 address also flushes
//! routes silently: every route of a link that lost its last IPv4 address, and those using
//! the address as their source (`src`). When the address went with its link (a network's
//! bridge deleted) and no route elsewhere has it as source, the link's removal already
//! covers every flushed route; any other IPv4 address deletion makes the cache dump again.
//! Without that distinction, every start after a stop dumped all addresses and routes:
//! ~13 ms with a thousand networks.
//!
//! Routes are keyed like the kernel's FIB keys them, without the outgoing interface:
//! `ip route replace` sends only an `RTM_NEWROUTE` with `NLM_F_REPLACE` for a route that
//! may have moved to another interface. Routes appended under one key (`ip route append`)
//! each keep their interface; a replace among them makes the cache dump again.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, setsockopt,
    socket, sockopt,
};
use rtnetlink::packet_core::{NLM_F_REPLACE, NetlinkMessage, NetlinkPayload};
use tokio::sync::Mutex;

use super::netlink::{address_prefix, claimed_subnet, is_link_local};
use super::{Error, Link};

/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR |
/// RTMGRP_IPV6_ROUTE` (`linux/rtnetlink.h`).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// Netlink message types of link notifications (`linux/rtnetlink.h`).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
/// `IFF_UP` (`linux/if.h`).
const IFF_UP: u32 = 0x1;

/// Room for the notifications of a burst of changes between two checks (a start makes
/// about ten); the kernel caps it at `rmem_max` unless we may force it.
const RECEIVE_BUFFER: usize = 8 << 20;

/// An address's identity: interface, prefix length and the address attributes.
type AddressKey = (u32, u8, Option<IpAddr>, Option<IpAddr>);

/// A route's identity in the kernel's FIB: family, table, destination, prefix length, tos
/// and metric. Not the interface: a replace may move the route to another one.
type RouteKey = (u8, u32, Option<IpAddr>, u8, u8, Option<u32>);

/// The used prefixes of the network namespace this cache was created in.
#[derive(Debug)]
pub struct PrefixCache {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    socket: OwnedFd,
    /// `None` until the first dump, and again after notifications were lost.
    known: Option<Known>,
}

#[derive(Debug, Default)]
struct Known {
    addresses: HashMap<AddressKey, (IpNet, u32)>,
    /// Usually one route per key; more after `ip route append`/`prepend`.
    routes: HashMap<RouteKey, Vec<Route>>,
    /// A change happened that the notifications do not fully describe (an IPv4 address
    /// deletion, a replace among appended routes): answers must come from a fresh dump.
    stale: bool,
    /// IPv4 addresses (link, address) deleted since the last [`Known::settle`].
    deleted_ipv4: Vec<(u32, Option<IpAddr>)>,
    /// Links deleted since the last [`Known::settle`].
    deleted_links: Vec<u32>,
    /// Links last announced down: a link's IPv4 routes are dropped when it goes down, and
    /// a new bridge is announced down several times before it comes up.
    down_links: HashSet<u32>,
    /// Links with a cached address or route (a superset): only those have routes to drop.
    links_in_use: HashSet<u32>,
}

/// One route the cache knows: the prefix it claims, through which link, and its preferred
/// source address (deleting that address flushes the route unannounced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    claimed: (IpNet, u32),
    source: Option<IpAddr>,
    /// Tells apart routes appended under one key on one link (`via A dev x`, `dev x`):
    /// deleting one leaves the other.
    gateway: Option<IpAddr>,
}

impl PrefixCache {
    /// Subscribes to the address, route and link notifications of the calling thread's
    /// network namespace; the first [`PrefixCache::used_prefixes`] dumps.
    pub fn new() -> Result<PrefixCache, Error> {
        let socket = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| Error::Connect(e.into()))?;
        // Forcing past rmem_max needs CAP_NET_ADMIN; without it the kernel's cap applies.
        if setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).is_err() {
            let _ = setsockopt(&socket, sockopt::RcvBuf, &RECEIVE_BUFFER);
        }
        bind(socket.as_raw_fd(), &NetlinkAddr::new(0, GROUPS))
            .map_err(|e| Error::Connect(e.into()))?;
        Ok(PrefixCache {
            state: Mutex::new(State {
                socket,
                known: None,
            }),
        })
    }

    /// What [`Link::used_prefixes`] answers, from memory: every IPv4/IPv6 prefix in use,
    /// with the ifindex of the interface using it, sorted and without duplicates. `link`
    /// must act on the same network namespace as this cache.
    pub async fn used_prefixes(&self, link: &Link) -> Result<Vec<(IpNet, u32)>, Error> {
        self.answer(link, |known| {
            let mut used: Vec<(IpNet, u32)> = known.used().collect();
            used.sort_unstable();
            used.dedup();
            used
        })
        .await
    }

    /// The used prefix `rank` puts first (lowest rank, then in
    /// [`PrefixCache::used_prefixes`] order; `None` leaves a prefix out), without listing
    /// them all: the collision check of a start.
    pub async fn best_used(
        &self,
        link: &Link,
        rank: impl Fn(&IpNet) -> Option<u8>,
    ) -> Result<Option<(IpNet, u32)>, Error> {
        self.answer(link, |known| {
            known
                .used()
                .filter_map(|(net, ifindex)| Some((rank(&net)?, net, ifindex)))
                .min()
                .map(|(_, net, ifindex)| (net, ifindex))
        })
        .await
    }

    /// Applies the notifications queued so far. Answers stay exact without it (they drain
    /// first); it only moves that work off the path of the next question.
    pub async fn catch_up(&self) {
        let mut state = self.state.lock().await;
        if state.drain().is_err() {
            // Notifications were lost: the next question dumps.
            state.known = None;
        }
    }

    /// Answers `question` from the cache once every notification queued so far is
    /// applied, dumping first if the cache is empty or lost notifications.
    async fn answer<T>(&self, link: &Link, question: impl FnOnce(&Known) -> T) -> Result<T, Error> {
        let mut state = self.state.lock().await;
        let drained = state.drain().is_ok();
        if !drained || state.known.as_ref().is_some_and(|known| known.stale) {
            state.known = None;
        }
        if state.known.is_none() {
            // Drop what is queued, then dump: later notifications apply on top of the dump.
            while let Ok(true) = state.drain_discarding() {}
            let (addresses, routes) = link.prefix_messages().await?;
            let mut known = Known::default();
            for message in &addresses {
                known.apply_address(message, true);
            }
            for message in &routes {
                known.apply_route(message, Change::Add);
            }
            state.known = Some(known);
        }
        // What changed during the dump (nothing, without one).
        let lost = state.drain().is_err();
        let known = state.known.get_or_insert_with(Known::default);
        let lost = lost || known.stale;
        let answer = question(known);
        if lost {
            // This answer may miss a change; the next question dumps again.
            state.known = None;
        }
        Ok(answer)
    }
}

impl State {
    /// Applies every queued notification. Fails when the kernel dropped some (`ENOBUFS`).
    fn drain(&mut self) -> Result<(), io::Error> {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let length = match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
                Ok(length) => length,
                Err(Errno::EAGAIN) => {
                    if let Some(known) = &mut self.known {
                        known.settle();
                    }
                    return Ok(());
                }
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(known) = &mut self.known {
                known.apply_datagram(&buffer[..length]);
            }
        }
    }

    /// Reads and discards one queued datagram; `Ok(false)` when the queue is empty.
    fn drain_discarding(&mut self) -> Result<bool, io::Error> {
        let mut buffer = vec![0u8; 64 * 1024];
        match recv(self.socket.as_raw_fd(), &mut buffer, MsgFlags::empty()) {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(Errno::EINTR | Errno::ENOBUFS) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

impl Known {
    /// Every used prefix, with duplicates, in no order.
    fn used(&self) -> impl Iterator<Item = (IpNet, u32)> + '_ {
        let routes = self.routes.values().flatten().map(|route| route.claimed);
        self.addresses.values().copied().chain(routes)
    }

    /// Decides, once every queued notification is applied, whether the IPv4 address
    /// deletions among them may have flushed routes the notifications did not cover.
    fn settle(&mut self) {
        for (index, address) in std::mem::take(&mut self.deleted_ipv4) {
            let link_gone = self.deleted_links.contains(&index);
            // The link's own routes went with it; a route elsewhere may use the address.
            let source_elsewhere = self
                .routes
                .values()
                .flatten()
                .any(|route| address.is_none() || route.source == address);
            if !link_gone || source_elsewhere {
                self.stale = true;
            }
        }
        self.deleted_links.clear();
    }

    /// Applies each message of one datagram; a message that does not parse is skipped
    /// (the kernel only sends well-formed ones; a newer attribute layout must not wedge us).
    fn apply_datagram(&mut self, mut bytes: &[u8]) {
        while bytes.len() >= 16 {
            let length = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if length < 16 || length > bytes.len() {
                return;
            }
            let message = &bytes[..length];
            let kind = u16::from_ne_bytes([message[4], message[5]]);
            if kind == RTM_NEWLINK || kind == RTM_DELLINK {
                // Only the header matters; parsing a bridge's ~50 attributes cost more than
                // the rest of the cache's upkeep.
                if let Some((index, flags)) = link_header(message) {
                    self.apply_link(kind == RTM_NEWLINK, index, flags);
                }
            } else if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(message)
                && let NetlinkPayload::InnerMessage(inner) = message.payload
            {
                let replace = message.header.flags & NLM_F_REPLACE != 0;
                self.apply(&inner, replace);
            }
            // Messages are 4-byte aligned (NLMSG_ALIGN).
            let advance = (length + 3) & !3;
            bytes = bytes.get(advance..).unwrap_or_default();
        }
    }

    /// Applies one notification; `replace` when its header carries `NLM_F_REPLACE`.
    fn apply(&mut self, message: &RouteNetlinkMessage, replace: bool) {
        match message {
            RouteNetlinkMessage::NewAddress(m) => self.apply_address(m, true),
            RouteNetlinkMessage::DelAddress(m) => {
                // The kernel flushes the routes using an IPv4 address with it, unannounced:
                // `settle` decides whether the other notifications cover them.
                if m.header.family == netlink_packet_route::AddressFamily::Inet {
                    let local = m.attributes.iter().find_map(|attr| match attr {
                        AddressAttribute::Local(addr) => Some(*addr),
                        _ => None,
                    });
                    self.deleted_ipv4.push((m.header.index, local));
                }
                self.apply_address(m, false);
            }
            RouteNetlinkMessage::NewRoute(m) if replace => self.apply_route(m, Change::Replace),
            RouteNetlinkMessage::NewRoute(m) => self.apply_route(m, Change::Add),
            RouteNetlinkMessage::DelRoute(m) => self.apply_route(m, Change::Delete),
            _ => {}
        }
    }

    /// A link notification: `present` for `RTM_NEWLINK`, with the link's `IFF_*` flags.
    fn apply_link(&mut self, present: bool, index: u32, flags: u32) {
        if !present {
            self.retain_routes(|_, oif| oif != index);
            self.addresses.retain(|_, (_, ifindex)| *ifindex != index);
            self.deleted_links.push(index);
            self.down_links.remove(&index);
            self.links_in_use.remove(&index);
        } else if flags & IFF_UP == 0 {
            // The kernel flushed the link's IPv4 routes without telling. Once is enough
            // until the link comes up again, and a link nothing uses yet (a bridge being
            // created) has nothing to flush: each flush walks every cached route.
            if self.down_links.insert(index) && self.links_in_use.contains(&index) {
                self.retain_routes(|net, oif| oif != index || !matches!(net, IpNet::V4(_)));
            }
        } else {
            self.down_links.remove(&index);
        }
    }

    /// Keeps the routes for which `keep(prefix, oif)` holds.
    fn retain_routes(&mut self, keep: impl Fn(&IpNet, u32) -> bool) {
        self.routes.retain(|_, routes| {
            routes.retain(|route| keep(&route.claimed.0, route.claimed.1));
            !routes.is_empty()
        });
    }

    fn apply_address(&mut self, message: &AddressMessage, present: bool) {
        let attribute = |local: bool| {
            message.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(addr) if local => Some(*addr),
                AddressAttribute::Address(addr) if !local => Some(*addr),
                _ => None,
            })
        };
        let key = (
            message.header.index,
            message.header.prefix_len,
            attribute(true),
            attribute(false),
        );
        match address_prefix(message).filter(|net| !is_link_local(net)) {
            Some(net) if present => {
                self.links_in_use.insert(message.header.index);
                self.addresses.insert(key, (net, message.header.index));
            }
            _ => {
                self.addresses.remove(&key);
            }
        }
    }

    fn apply_route(&mut self, message: &RouteMessage, change: Change) {
        let header = &message.header;
        let mut table = u32::from(header.table);
        let mut priority = None;
        let mut destination = None;
        let mut source = None;
        let mut gateway = None;
        for attr in &message.attributes {
            match attr {
                RouteAttribute::Table(id) => table = *id,
                RouteAttribute::Priority(metric) => priority = Some(*metric),
                RouteAttribute::Destination(address) => destination = route_address(address),
                RouteAttribute::PrefSource(address) => source = route_address(address),
                RouteAttribute::Gateway(address) => gateway = route_address(address),
                _ => {}
            }
        }
        let key = (
            u8::from(header.address_family),
            table,
            destination,
            header.destination_prefix_length,
            header.tos,
            priority,
        );
        let claimed = claimed_subnet(message).map(|claimed| Route {
            claimed,
            source,
            gateway,
        });
        let routes = match change {
            // What the key held is gone, even if the new route claims nothing. With routes
            // appended under it, IPv4 replaces only the first one: which, the cache can't tell.
            Change::Replace => {
                if self.routes.remove(&key).is_some_and(|old| old.len() > 1) {
                    self.stale = true;
                }
                self.routes.entry(key).or_default()
            }
            // A replayed notification may already be in the dump: no duplicates.
            Change::Add => self.routes.entry(key).or_default(),
            Change::Delete => match self.routes.get_mut(&key) {
                Some(routes) => routes,
                None => return,
            },
        };
        let same = |a: &Route, b: &Route| a.claimed == b.claimed && a.gateway == b.gateway;
        match (change, claimed) {
            (Change::Delete, Some(claimed)) => {
                routes.retain(|route| !same(route, &claimed));
            }
            (Change::Delete, None) => {}
            (_, Some(claimed)) if !routes.iter().any(|route| same(route, &claimed)) => {
                self.links_in_use.insert(claimed.claimed.1);
                routes.push(claimed);
            }
            (_, _) => {}
        }
        if routes.is_empty() {
            self.routes.remove(&key);
        }
    }
}

/// What a route message does to the routes under its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// `RTM_NEWROUTE`, or a dumped route: one more route under the key.
    Add,
    /// `RTM_NEWROUTE` with `NLM_F_REPLACE`: the route takes the key's place.
    Replace,
    /// `RTM_DELROUTE`: the route leaves the key.
    Delete,
}

/// The ifindex and `IFF_*` flags of a link message: `struct ifinfomsg` (family, pad, type,
/// index, flags, change) right after the 16-byte `nlmsghdr`.
fn link_header(message: &[u8]) -> Option<(u32, u32)> {
    let field = |offset: usize| {
        let bytes: [u8; 4] = message.get(offset..offset + 4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    };
    Some((field(20)?, field(24)?))
}

fn route_address(address: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
