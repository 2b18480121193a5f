//! rtnetlink requests: bridges, addresses, link state, and the host's used prefixes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    BridgeStpState, InfoBridgePort, InfoPortData, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::{
    BridgePortFlags, BridgeSpec, Error, KVNET_LINK_GROUP, LinkInfo, Op, PortState, sysctl,
    validate_ifname,
};

/// A netlink route connection bound to one network namespace.
///
/// Cheap to clone: clones share the socket and its connection task.
#[derive(Clone, Debug)]
pub struct Link {
    pub(super) handle: rtnetlink::Handle,
}

/// The kernel's errno for a failed request, or the library's reason when there is none.
fn kernel_error(err: rtnetlink::Error) -> io::Error {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.to_io(),
        other => io::Error::other(other),
    }
}

pub(super) fn failed(op: Op, ifname: &str) -> impl FnOnce(rtnetlink::Error) -> Error {
    let ifname = ifname.to_owned();
    move |err| Error::Kernel {
        op,
        ifname,
        source: kernel_error(err),
    }
}

impl Link {
    /// Opens a netlink route socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// The socket stays in that namespace even when the task later runs on another thread.
    pub fn new() -> Result<Link, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Connect(io::Error::other(e)))?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Connect)?;
        runtime.spawn(connection);
        Ok(Link { handle })
    }

    /// Creates the bridge, left down, with its MAC, STP state and forward delay in one
    /// `RTM_NEWLINK`, then its MTU if one is given; returns its ifindex.
    ///
    /// With STP on, the forward delay is clamped to the kernel's 2..=30 s (see
    /// [`BridgeSpec::forward_delay_clock_t`]). The MTU goes in a separate `RTM_SETLINK`
    /// because only that path marks it as chosen by the user (an `IFLA_MTU` at creation does
    /// not): otherwise the kernel lowers the bridge MTU to its smallest port's as soon as a
    /// 1500-byte tap joins. libvirt sets it the same way, with `SIOCSIFMTU`. If that step
    /// fails the new bridge is removed again.
    ///
    /// Fails with an error for which [`Error::is_already_exists`] holds when the name is taken.
    pub async fn create_bridge(&self, spec: &BridgeSpec) -> Result<u32, Error> {
        validate_ifname(&spec.name)?;
        let stp_state = if spec.stp {
            BridgeStpState::KernelStp
        } else {
            BridgeStpState::Disabled
        };
        // Not `LinkBridge::new`, which also sets the link up: addresses come first.
        let request = LinkMessageBuilder::<LinkBridge>::new(&spec.name)
            .address(spec.mac.to_vec())
            .link_group(KVNET_LINK_GROUP)
            .forward_delay(spec.forward_delay_clock_t())
            .stp_state(stp_state);
        self.handle
            .link()
            .add(request.build())
            .execute()
            .await
            .map_err(failed(Op::CreateBridge, &spec.name))?;
        let index = self
            .find(&spec.name)
            .await?
            .ok_or_else(|| Error::NoSuchLink(spec.name.clone()))?
            .header
            .index;
        if let Some(mtu) = spec.mtu {
            let set_mtu = LinkUnspec::new_with_index(index).mtu(mtu).build();
            if let Err(err) = self.handle.link().set(set_mtu).execute().await {
                self.remove_after_failed_create(&spec.name, index).await;
                return Err(failed(Op::SetMtu(mtu), &spec.name)(err));
            }
        }
        tracing::debug!(bridge = %spec.name, index, "created bridge");
        Ok(index)
    }

    async fn remove_after_failed_create(&self, name: &str, index: u32) {
        if let Err(err) = self.handle.link().del(index).execute().await {
            tracing::warn!(bridge = %name, error = %kernel_error(err), "cannot remove half-created bridge");
        }
    }

    /// Adds `addr/prefix_len` to an interface (with the IPv4 broadcast address, as `ip` does).
    pub async fn add_address(
        &self,
        ifname: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let index = self.index(ifname).await?;
        self.add_address_at(index, ifname, addr, prefix_len).await
    }

    /// [`Link::add_address`] on the link with ifindex `index` (named `ifname`, for errors),
    /// without looking the name up: a start knows the index of the bridge it created.
    pub async fn add_address_at(
        &self,
        index: u32,
        ifname: &str,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), Error> {
        let net =
            IpNet::new(addr, prefix_len).map_err(|_| Error::InvalidPrefix { addr, prefix_len })?;
        self.handle
            .address()
            .add(index, addr, prefix_len)
            .execute()
            .await
            .map_err(failed(Op::AddAddress(net), ifname))
    }

    /// Adds a route to `destination` through `gateway`, leaving by `ifname` (a network's
    /// `<route>`: libvirt adds them on the bridge once it is up). `metric` 0 is the default.
    pub async fn add_route(
        &self,
        ifname: &str,
        destination: IpNet,
        gateway: IpAddr,
        metric: u32,
    ) -> Result<(), Error> {
        let destination = destination.trunc();
        let mut route = match (destination, gateway) {
            (IpNet::V4(net), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .gateway(gw)
                .build(),
            (IpNet::V6(net), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.addr(), net.prefix_len())
                .gateway(gw)
                .build(),
            _ => {
                return Err(Error::RouteFamilyMismatch {
                    destination,
                    gateway,
                });
            }
        };
        let index = self.index(ifname).await?;
        // What `ip route add` and libvirt send: boot protocol, through this interface.
        route.header.protocol = RouteProtocol::Boot;
        route.attributes.push(RouteAttribute::Oif(index));
        if metric != 0 {
            route.attributes.push(RouteAttribute::Priority(metric));
        }
        self.handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(failed(
                Op::AddRoute {
                    destination,
                    gateway,
                },
                ifname,
            ))
    }

    /// Sets a link administratively up.
    pub async fn set_up(&self, ifname: &str) -> Result<(), Error> {
        let index = self.index(ifname).await?;
        self.set_up_at(index, ifname).await
    }

    /// Puts the link with ifindex `index` (named `ifname`, for errors) in
    /// [`KVNET_LINK_GROUP`]: a bridge an earlier kvnet created without the mark.
    pub async fn mark_as_kvnets(&self, index: u32, ifname: &str) -> Result<(), Error> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .link_group(KVNET_LINK_GROUP)
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(Op::SetGroup, ifname))
    }

    /// [`Link::set_up`] on the link with ifindex `index` (named `ifname`, for errors).
    pub async fn set_up_at(&self, index: u32, ifname: &str) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(Op::SetUp, ifname))
    }

    /// Makes the tap `ifname` a port of `bridge` (ifindex `bridge_index`) in one change,
    /// running or (see [`Link::plug_port_at`]) down, and returns the tap's ifindex. The
    /// kernel applies the MAC and MTU before the bridge: a port joining with a smaller MTU
    /// would lower the bridge's.
    pub async fn plug_port(
        &self,
        ifname: &str,
        mac: [u8; 6],
        mtu: u32,
        (bridge_index, bridge): (u32, &str),
        state: PortState,
    ) -> Result<u32, Error> {
        let index = self.index(ifname).await?;
        self.plug_port_at(index, ifname, mac, mtu, bridge_index, bridge, state)
            .await?;
        Ok(index)
    }

    /// [`Link::plug_port`] for the link with ifindex `index` (named `ifname`, for messages),
    /// brought up in the same change or, with [`PortState::Down`], left down, so that its
    /// bridge port's flags can be set before a frame passes ([`Link::set_up_at`] then lets
    /// the traffic in).
    #[allow(clippy::too_many_arguments)]
    pub async fn plug_port_at(
        &self,
        index: u32,
        ifname: &str,
        mac: [u8; 6],
        mtu: u32,
        bridge_index: u32,
        bridge: &str,
        state: PortState,
    ) -> Result<(), Error> {
        let mut message = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .mtu(mtu)
            .controller(bridge_index);
        if state == PortState::Up {
            message = message.up();
        }
        self.handle
            .link()
            .set(message.build())
            .execute()
            .await
            .map_err(failed(
                Op::PlugPort {
                    bridge: bridge.to_owned(),
                    mac,
                    mtu,
                },
                ifname,
            ))
    }

    /// Isolates the bridge port with ifindex `index` (named `ifname`, for messages) from
    /// its bridge's other isolated ports, or lifts that: the kernel's `isolated` port flag,
    /// which a port keeps only while it is on the bridge.
    pub async fn set_port_isolated(
        &self,
        index: u32,
        ifname: &str,
        isolated: bool,
    ) -> Result<(), Error> {
        self.set_bridge_port(
            index,
            ifname,
            [InfoBridgePort::Isolated(isolated)],
            Op::SetIsolated(isolated),
        )
        .await
    }

    /// Sets `flags` on the bridge port with ifindex `index` in one message.
    async fn set_bridge_port(
        &self,
        index: u32,
        ifname: &str,
        flags: impl IntoIterator<Item = InfoBridgePort>,
        op: Op,
    ) -> Result<(), Error> {
        let mut message = LinkBridgePort::new(index);
        for flag in flags {
            message = message.append_info_data(flag);
        }
        self.handle
            .link()
            .set_port(message.build())
            .execute()
            .await
            .map_err(failed(op, ifname))
    }

    /// Makes the bridge port with ifindex `index` (named `ifname`, for messages) carry only
    /// its guest's traffic, as libvirt does under `macTableManager='libvirt'`: no learning,
    /// no flooding of unknown unicast, and a static forwarding entry for the guest's `mac`.
    /// A port loses all of it when it leaves its bridge. `flags_set`: the port's flags
    /// are as they should be already (a restart finishing a re-plug), and need no change
    /// (which the kernel would announce to every listener all the same).
    pub async fn pin_guest_mac(
        &self,
        index: u32,
        ifname: &str,
        mac: [u8; 6],
        flags_set: bool,
    ) -> Result<(), Error> {
        if !flags_set {
            self.set_bridge_port(
                index,
                ifname,
                [
                    InfoBridgePort::Learning(false),
                    InfoBridgePort::UnicastFlood(false),
                ],
                Op::StopLearningAndFlooding,
            )
            .await?;
        }
        // NTF_MASTER: the bridge's table, not the device's own; static (NUD_NOARP), as
        // libvirt's entry is. Created only, as libvirt creates it: a MAC another port
        // holds stays that port's (taking it would leave that guest unreachable when
        // this port goes, with learning off), and one this port holds already is fine.
        match self
            .handle
            .neighbours()
            .add_bridge(index, &mac)
            .flags(NeighbourFlags::Controller)
            .state(NeighbourState::Noarp)
            .execute()
            .await
        {
            Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(()),
            result => result.map_err(failed(Op::AddFdbEntry(mac), ifname)),
        }
    }

    /// Tells the kernel that `ip` is at `mac` on the link with ifindex `index` (named
    /// `ifname`, for messages), replacing what it knew: a DHCP reply to an address its
    /// client has not taken yet must not wait for an ARP answer that cannot come (as
    /// dnsmasq's `SIOCSARP`, a complete entry the kernel checks again later).
    pub async fn set_neighbour(
        &self,
        index: u32,
        ifname: &str,
        ip: std::net::Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), Error> {
        self.handle
            .neighbours()
            .add(index, std::net::IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Reachable)
            .replace()
            .execute()
            .await
            .map_err(failed(Op::SetNeighbour(ip, mac), ifname))
    }

    /// The MAC address the kernel's neighbour table holds for `ip` on the link with ifindex
    /// `index`, if it holds a usable one. A DHCPv6 client is known by its DUID, which may
    /// carry another MAC than its NIC's, or none: dnsmasq lists its lease with the MAC it
    /// finds here, and so does kvnet.
    pub async fn neighbour_mac(&self, index: u32, ip: Ipv6Addr) -> Option<[u8; 6]> {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet6;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)));
        // One entry, not a dump: the kernel answers it alone, or with ENOENT.
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbour(message));
        request.header.flags = NLM_F_REQUEST;
        let mut responses = self.handle.clone().request(request).ok()?;
        while let Some(response) = responses.next().await {
            let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(found)) =
                response.payload
            else {
                continue;
            };
            if matches!(
                found.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed
            ) {
                return None;
            }
            return found
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    NeighbourAttribute::LinkLayerAddress(mac) => mac.as_slice().try_into().ok(),
                    _ => None,
                });
        }
        None
    }

    /// Takes the link with ifindex `index` (named `ifname`, for messages) down; a link that
    /// is gone is not an error.
    pub async fn set_down_at(&self, index: u32, ifname: &str) -> Result<(), Error> {
        match self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
        {
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
            result => result.map_err(failed(Op::SetDown, ifname)),
        }
    }

    /// Detaches the link with ifindex `index` (named `ifname`, for messages) from its
    /// bridge and takes it down; a link that is gone is not an error. Off its bridge, an
    /// up tap would be a link into the host, outside every firewall rule, for whoever
    /// writes to it; a down one refuses the writes.
    pub async fn unplug_port_at(&self, index: u32, ifname: &str) -> Result<(), Error> {
        match self
            .handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .nocontroller()
                    .down()
                    .build(),
            )
            .execute()
            .await
        {
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
            result => result.map_err(failed(Op::UnplugPort, ifname)),
        }
    }

    /// Deletes the link with ifindex `index` (named `ifname`, for messages), whatever its
    /// name now; returns `Ok(false)` when there is no such link (any more).
    pub async fn delete_index(&self, index: u32, ifname: &str) -> Result<bool, Error> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => {
                tracing::debug!(%ifname, "deleted link");
                Ok(true)
            }
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(false),
            Err(err) => Err(failed(Op::Delete, ifname)(err)),
        }
    }

    /// Deletes a link; returns `Ok(false)` when there was no such link.
    pub async fn delete_link(&self, ifname: &str) -> Result<bool, Error> {
        let Some(link) = self.find(ifname).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => {
                tracing::debug!(%ifname, "deleted link");
                Ok(true)
            }
            // Gone between the lookup and the delete.
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(false),
            Err(err) => Err(failed(Op::Delete, ifname)(err)),
        }
    }

    /// Whether a link with this name exists.
    pub async fn link_exists(&self, ifname: &str) -> Result<bool, Error> {
        Ok(self.find(ifname).await?.is_some())
    }

    /// Kind and state of the link with ifindex `index`, or `None` if there is none.
    pub async fn link_info_at(&self, index: u32) -> Result<Option<LinkInfo>, Error> {
        let mut replies = self.handle.link().get().match_index(index).execute();
        match replies.try_next().await {
            Ok(link) => Ok(link.as_ref().map(link_info)),
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(failed(Op::Query, &format!("#{index}"))(err)),
        }
    }

    /// Kind and state of a link, or `None` if there is no such link.
    pub async fn link_info(&self, ifname: &str) -> Result<Option<LinkInfo>, Error> {
        Ok(self.find(ifname).await?.map(|link| link_info(&link)))
    }

    /// Names of every link in the namespace, in ifindex order.
    pub async fn link_names(&self) -> Result<Vec<String>, Error> {
        Ok(self.link_names_by_index().await?.into_values().collect())
    }

    /// The name of the link with this ifindex, if there is one.
    pub async fn link_name(&self, index: u32) -> Result<Option<String>, Error> {
        let mut replies = self.handle.link().get().match_index(index).execute();
        match replies.try_next().await {
            Ok(link) => Ok(link.as_ref().and_then(link_name)),
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(failed(Op::Query, &format!("ifindex {index}"))(err)),
        }
    }

    /// Every IPv4/IPv6 prefix in use here, with the ifindex of the interface using it,
    /// sorted. Resolve a name with [`Link::link_name`] only when it is needed: a link
    /// dump costs far more than these two dumps on a host with a thousand bridges.
    ///
    /// Includes the prefix of every interface address and of every unicast route of the main
    /// table, except default routes and host routes (/32, /128), which claim no subnet, and
    /// IPv6 link-local prefixes, which every interface has.
    pub async fn used_prefixes(&self) -> Result<Vec<(IpNet, u32)>, Error> {
        let (addresses, routes) = self.prefix_messages().await?;
        let mut used = BTreeSet::new();
        for message in &addresses {
            if let Some(net) = address_prefix(message).filter(|net| !is_link_local(net)) {
                used.insert((net, message.header.index));
            }
        }
        used.extend(routes.iter().filter_map(claimed_subnet));
        Ok(used.into_iter().collect())
    }

    /// Every address, and every IPv4 and IPv6 route, of the namespace (three dumps).
    pub(super) async fn prefix_messages(
        &self,
    ) -> Result<(Vec<AddressMessage>, Vec<RouteMessage>), Error> {
        let addresses: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Dump("addresses", kernel_error(e)))?;
        let mut routes = Vec::new();
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new().build();
        for query in [v4, v6] {
            let mut family: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::Dump("routes", kernel_error(e)))?;
            routes.append(&mut family);
        }
        Ok((addresses, routes))
    }

    /// Interfaces whose router-advertisement routes the kernel would flush if IPv6 forwarding
    /// were turned on: they have `proto ra` routes and `accept_ra` below 2. libvirt refuses to
    /// enable forwarding then ("Check the host setup: interface X has kernel autoconfigured
    /// IPv6 routes..."). `accept_ra` is read in the calling thread's namespace, which must be
    /// the one this [`Link`] was opened in.
    pub async fn ipv6_forwarding_blockers(&self) -> Result<Vec<String>, Error> {
        let names = self.link_names_by_index().await?;
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Dump("routes", kernel_error(e)))?;
        let mut blockers = BTreeSet::new();
        for route in routes
            .iter()
            .filter(|route| route.header.protocol == RouteProtocol::Ra)
        {
            let oif = route.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            let Some(name) = oif.and_then(|index| names.get(&index)) else {
                continue;
            };
            if !blockers.contains(name) && !sysctl::accepts_ra_when_forwarding(name)? {
                blockers.insert(name.clone());
            }
        }
        Ok(blockers.into_iter().collect())
    }

    /// The name of every link in the namespace, by ifindex (one dump).
    pub async fn link_names_by_index(&self) -> Result<BTreeMap<u32, String>, Error> {
        Ok(self
            .links_by_index()
            .await?
            .into_iter()
            .map(|(index, info)| (index, info.name))
            .collect())
    }

    /// Every link in the namespace, by ifindex (one dump).
    pub async fn links_by_index(&self) -> Result<BTreeMap<u32, LinkInfo>, Error> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Dump("links", kernel_error(e)))?;
        Ok(links
            .iter()
            .map(|link| (link.header.index, link_info(link)))
            .collect())
    }

    /// The link's ifindex, or [`Error::NoSuchLink`].
    pub(super) async fn index(&self, ifname: &str) -> Result<u32, Error> {
        match self.find(ifname).await? {
            Some(link) => Ok(link.header.index),
            None => Err(Error::NoSuchLink(ifname.to_owned())),
        }
    }

    /// Looks a link up by name; a name no link can have is simply absent.
    async fn find(&self, ifname: &str) -> Result<Option<LinkMessage>, Error> {
        if validate_ifname(ifname).is_err() {
            return Ok(None);
        }
        let mut replies = self.handle.link().get().match_name(ifname).execute();
        match replies.try_next().await {
            Ok(link) => Ok(link),
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(None),
            Err(err) => Err(failed(Op::Query, ifname)(err)),
        }
    }
}

pub(super) fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

fn link_info(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: link.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        up: link.header.flags.contains(LinkFlags::Up),
        master: None,
        alias: None,
        group: 0,
        port: None,
    };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                for item in infos {
                    match item {
                        NlLinkInfo::Kind(kind) => info.kind = Some(kind.to_string()),
                        NlLinkInfo::PortData(InfoPortData::BridgePort(attrs)) => {
                            info.port = Some(bridge_port_flags(attrs));
                        }
                        _ => {}
                    }
                }
            }
            LinkAttribute::Address(bytes) => info.mac = bytes.as_slice().try_into().ok(),
            LinkAttribute::Mtu(mtu) => info.mtu = Some(*mtu),
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::IfAlias(alias) => info.alias = Some(alias.clone()),
            LinkAttribute::Group(group) => info.group = *group,
            LinkAttribute::Controller(index) if *index != 0 => info.master = Some(*index),
            _ => {}
        }
    }
    info
}

/// A bridge port's flags from its `IFLA_INFO_SLAVE_DATA`; an absent one has the
/// kernel's default.
fn bridge_port_flags(attrs: &[InfoBridgePort]) -> BridgePortFlags {
    let mut flags = BridgePortFlags {
        isolated: false,
        learning: true,
        unicast_flood: true,
    };
    for attr in attrs {
        match attr {
            InfoBridgePort::Isolated(on) => flags.isolated = *on,
            InfoBridgePort::Learning(on) => flags.learning = *on,
            InfoBridgePort::UnicastFlood(on) => flags.unicast_flood = *on,
            _ => {}
        }
    }
    flags
}

/// The subnet an interface address sits in (`10.0.0.1/24` → `10.0.0.0/24`).
pub(super) fn address_prefix(message: &AddressMessage) -> Option<IpNet> {
    // IFA_ADDRESS carries the prefix (it is the peer on point-to-point links).
    let addr = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(addr) => Some(*addr),
        _ => None,
    })?;
    IpNet::new(addr, message.header.prefix_len)
        .ok()
        .map(|net| net.trunc())
}

/// The subnet a main-table unicast route claims and the ifindex it goes out of.
pub(super) fn claimed_subnet(route: &RouteMessage) -> Option<(IpNet, u32)> {
    let header = &route.header;
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                destination = Some(IpAddr::V4(*a));
            }
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                destination = Some(IpAddr::V6(*a));
            }
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::MultiPath(hops) => {
                oif = oif.or_else(|| hops.first().map(|hop| hop.interface_index));
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || header.kind != RouteType::Unicast {
        return None;
    }
    let net = IpNet::new(destination?, header.destination_prefix_length).ok()?;
    let is_default = net.prefix_len() == 0;
    let is_host = net.prefix_len() == net.max_prefix_len();
    if is_default || is_host || is_link_local(&net) {
        return None;
    }
    Some((net.trunc(), oif?))
}

pub(super) fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(net) => net.addr().is_unicast_link_local(),
        IpNet::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;

    fn route(dest: IpAddr, prefix: u8, table: u8, kind: RouteType, oif: u32) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.address_family = match dest {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        route.header.destination_prefix_length = prefix;
        route.header.table = table;
        route.header.kind = kind;
        route
            .attributes
            .push(RouteAttribute::Destination(dest.into()));
        route.attributes.push(RouteAttribute::Oif(oif));
        route
    }

    #[test]
    fn only_main_table_unicast_subnets_are_claimed() {
        let main = RouteHeader::RT_TABLE_MAIN;
        let ip = |s: &str| s.parse::<IpAddr>().expect("test literal");
        let net = |s: &str| s.parse::<IpNet>().expect("test literal");
        assert_eq!(
            claimed_subnet(&route(ip("10.1.2.0"), 24, main, RouteType::Unicast, 3)),
            Some((net("10.1.2.0/24"), 3))
        );
        assert_eq!(
            claimed_subnet(&route(ip("fd00:1::"), 64, main, RouteType::Unicast, 4)),
            Some((net("fd00:1::/64"), 4))
        );
        // default, host, link-local, other table, non-unicast
        for unclaimed in [
            route(ip("0.0.0.0"), 0, main, RouteType::Unicast, 3),
            route(ip("10.1.2.3"), 32, main, RouteType::Unicast, 3),
            route(ip("fe80::"), 64, main, RouteType::Unicast, 3),
            route(ip("10.1.2.0"), 24, 255, RouteType::Unicast, 3),
            route(ip("10.1.2.0"), 24, main, RouteType::BlackHole, 3),
        ] {
            assert_eq!(claimed_subnet(&unclaimed), None, "{unclaimed:?}");
        }
        // A table id above 255 travels in RTA_TABLE with the header saying RT_TABLE_COMPAT.
        let mut high = route(ip("10.9.0.0"), 16, 252, RouteType::Unicast, 3);
        high.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(claimed_subnet(&high), None);
    }
}
