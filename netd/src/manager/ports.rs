//! Network ports: a guest NIC's place on a running network, which is a tap kvnetd creates on
//! the network's bridge (libvirt's `virNetworkPort`, whose taps libvirt's QEMU driver makes),
//! or on a macvtap network a macvtap on a device of its pool (see [`super::macvtaps`], which
//! also says how those end: unlike taps, not with their descriptors).
//!
//! A port's tap is either handed to the caller (kvnet-vmm) and lives as long as the caller
//! keeps it open, or made persistent (`net-port-create`) and lives until the port is
//! deleted. A tap is created non-persistent and fully plugged before its port is recorded,
//! so a daemon that dies half-way leaves nothing behind: the tap goes with the daemon's
//! descriptor. Records whose tap has gone (the VMM exited) are dropped whenever the ports
//! of a network are looked at.
//!
//! Ports outlive a stop of their network: `net-destroy` leaves the taps to their VMMs,
//! detached and down, and `net-start` plugs them into the new bridge, so running guests get their
//! link back (libvirt forgets them, and its guests stay cut off until their NICs are
//! plugged again by hand). Only the end of the network itself (undefined, or transient
//! and stopped) deletes its ports' taps.

use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, PoisonError};

use tracing::{info, warn};
use uuid::Uuid;

use super::{
    Error, Manager, Network, error_chain, lookup, macvtap_shaping_of, macvtaps, shaping_of,
};
use crate::api::types::PortSummary;
use crate::hooks::Operation;
use crate::link::shaping::Shaping;
use crate::link::tap::Tap;
use crate::link::{BridgePortFlags, LinkInfo, PortState, sysctl};
use crate::owner::{Owner, ProcessId};
use crate::store::PortStatus;
use crate::xml::{
    Connections, ForwardMode, MacTableManager, MacvtapMode, NetworkDef, PortDef, PortPlug,
};

/// The name template of port taps, as libvirt's (the kernel picks the number).
const TAP_TEMPLATE: &str = "vnet%d";

/// A port of a running network.
#[derive(Clone, Debug)]
pub(super) struct Port {
    pub(super) def: PortDef,
    /// The tap's name, or the macvtap's.
    pub(super) tap: String,
    pub(super) ifindex: u32,
    pub(super) persistent: bool,
    /// The process a handed-over macvtap goes with.
    pub(super) holder: Option<ProcessId>,
    /// That process while the daemon watches it (not after a restart that could not find
    /// it again).
    pub(super) owner: Option<Owner>,
    /// The task that deletes the macvtap when that process exits, stopped when the last
    /// copy of this record goes: a port deleted first must not keep its task and pidfd
    /// until the process exits (a long-lived process may ask for many).
    pub(super) watch: Option<Arc<Watch>>,
}

/// A task that ends when the last [`Port`] holding it goes.
#[derive(Debug)]
pub(super) struct Watch(tokio::task::AbortHandle);

impl Watch {
    pub(super) fn of(task: tokio::task::JoinHandle<()>) -> Arc<Watch> {
        Arc::new(Watch(task.abort_handle()))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Port {
    pub(super) fn summary(&self, network: &str) -> PortSummary {
        PortSummary {
            uuid: self.def.uuid.unwrap_or_default(),
            network: network.to_owned(),
            owner: self.def.owner_name.clone(),
            mac: self.def.mac.to_string(),
            tap: self.tap.clone(),
            persistent: self.persistent,
        }
    }

    fn status(&self) -> PortStatus {
        PortStatus {
            xml: self.def.to_xml(),
            tap: self.tap.clone(),
            ifindex: self.ifindex,
            persistent: self.persistent,
            holder: self.holder,
        }
    }

    fn from_status(status: &PortStatus) -> Result<Port, crate::xml::Error> {
        Ok(Port {
            def: PortDef::from_xml(&status.xml)?,
            tap: status.tap.clone(),
            ifindex: status.ifindex,
            persistent: status.persistent,
            holder: status.holder,
            owner: None,
            watch: None,
        })
    }

    fn is_macvtap(&self) -> bool {
        matches!(self.def.plug, Some(PortPlug::Direct { .. }))
    }

    /// Whether `link` is the port's device: a tap with the MAC kvnet gives it, or kvnet's
    /// macvtap made for it. The recorded index alone may since name someone else's tap
    /// (a state dir that outlived its namespace), which must not be taken over.
    fn is_its_device(&self, uuid: Uuid, link: &LinkInfo) -> bool {
        if self.is_macvtap() {
            macvtaps::is_port_device(link, uuid)
        } else {
            link.kind.as_deref() == Some("tun") && link.mac == Some(tap_mac(self.def.mac.0))
        }
    }

    /// The tc limits of the port's device.
    fn shaping(&self) -> Shaping {
        if self.is_macvtap() {
            macvtap_shaping_of(self.def.bandwidth.as_ref())
        } else {
            shaping_of(self.def.bandwidth.as_ref())
        }
    }
}

/// The ports of one network, by UUID.
pub(super) type Ports = BTreeMap<Uuid, Port>;

/// A port's device as its record knows it, to be found again before it is deleted: the
/// recorded index alone may since name another program's device (a state dir that
/// outlived its namespace, or a record copied in by hand).
enum RecordedDevice<'a> {
    /// A port whose record was read: its device is known by kind and MAC, or alias.
    Port(Uuid, &'a Port),
    /// A record whose XML cannot be read: only its device's index and name are known.
    Unreadable(&'a PortStatus),
}

impl RecordedDevice<'_> {
    fn ifindex(&self) -> u32 {
        match self {
            RecordedDevice::Port(_, port) => port.ifindex,
            RecordedDevice::Unreadable(status) => status.ifindex,
        }
    }

    fn tap(&self) -> &str {
        match self {
            RecordedDevice::Port(_, port) => &port.tap,
            RecordedDevice::Unreadable(status) => &status.tap,
        }
    }

    /// Whether `link` is the recorded device: for an unreadable record, a tap or
    /// macvtap still of the recorded name.
    fn is(&self, link: &LinkInfo) -> bool {
        match self {
            RecordedDevice::Port(uuid, port) => port.is_its_device(*uuid, link),
            RecordedDevice::Unreadable(status) => {
                matches!(link.kind.as_deref(), Some("tun" | "macvtap")) && link.name == status.tap
            }
        }
    }
}

/// Every link of the namespace, by ifindex (one dump).
pub(super) type Links = BTreeMap<u32, LinkInfo>;

/// A new port and, when the caller asked for it, its tap's descriptor.
#[derive(Debug)]
pub struct NewPort {
    /// The port as `net-port-list` shows it.
    pub summary: PortSummary,
    /// The tap, for a caller that takes it over (the port then ends when it closes it).
    pub tap: Option<OwnedFd>,
}

/// The bridge-port flags a guest's port takes; a port loses them when it leaves its
/// bridge.
#[derive(Clone, Copy, Debug)]
struct PortFlags {
    /// The kernel's `isolated` flag (`<port isolated='yes'/>`).
    isolated: bool,
    /// Under libvirt's MAC table management: the guest's MAC, the only one the port gets
    /// traffic for.
    pinned_mac: Option<[u8; 6]>,
}

impl PortFlags {
    fn any(self) -> bool {
        self.isolated || self.pinned_mac.is_some()
    }

    /// Whether a port with `current` flags has every one of these.
    fn all_in(self, current: Option<BridgePortFlags>) -> bool {
        let isolated = !self.isolated || current.is_some_and(|current| current.isolated);
        let pinned = self.pinned_mac.is_none() || current.is_some_and(|current| current.pinned());
        isolated && pinned
    }
}

/// The MAC address of a guest's tap: the guest's with the first byte `fe`, as libvirt
/// does, so that the bridge, which takes the lowest address of its ports, never takes the
/// guest's, and frames from the guest never look like the bridge's own. (A guest MAC that
/// starts with `fe` is refused when the port is defined.)
fn tap_mac(guest: [u8; 6]) -> [u8; 6] {
    let mut mac = guest;
    mac[0] = 0xfe;
    mac
}

/// Where a new port goes.
enum Attachment {
    /// A tap on this bridge.
    Bridge(String),
    /// A macvtap in this mode on a device of the network's pool.
    Macvtap(MacvtapMode),
}

/// How a network's ports join its bridge: libvirt's plug types.
fn plug_of(def: &NetworkDef, bridge: &str) -> PortPlug {
    let bridge = bridge.to_owned();
    let mac_table_manager = def.bridge.mac_table_manager;
    if def.forward_mode() == ForwardMode::Bridge {
        PortPlug::Bridge {
            bridge,
            mac_table_manager,
        }
    } else {
        PortPlug::Network {
            bridge,
            mac_table_manager,
        }
    }
}

/// Whether the bridge of network `def` takes its guests' MACs from kvnet instead of
/// learning them (`<bridge macTableManager='libvirt'>`).
fn pins_guest_macs(def: &NetworkDef) -> bool {
    def.bridge.mac_table_manager == Some(MacTableManager::Libvirt)
}

/// The recorded ports of `network` counted as libvirt's live XML counts them.
pub(super) fn count_connections(network: &Network) -> Connections {
    let mut connections = Connections {
        network: network.ports.len(),
        ..Connections::default()
    };
    for port in network.ports.values() {
        if let Some(PortPlug::Direct { dev, .. }) = &port.def.plug {
            *connections.by_device.entry(dev.clone()).or_default() += 1;
        }
    }
    connections
}

impl Manager {
    /// Creates a port on a running network from a `<networkport>` document: a tap on the
    /// network's bridge with the guest's MAC (first byte `fe`) and the bridge's MTU, or on a
    /// macvtap network a macvtap with the guest's MAC on a device of its pool. Handed over
    /// on the caller's `connection`, the device's descriptor is returned and the port
    /// lasts while it is open (a macvtap: while the process on the connection runs);
    /// without one it lasts until [`Manager::delete_port`]. Only `owner_uid` (the caller)
    /// and holders of CAP_NET_ADMIN may attach to a tap.
    pub async fn create_port(
        &self,
        key: &str,
        xml: &str,
        owner_uid: u32,
        connection: Option<BorrowedFd<'_>>,
    ) -> Result<NewPort, Error> {
        let hand_over = connection.is_some();
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let mut def = PortDef::from_xml(xml)?;
        if def.plug.is_some() {
            // libvirt takes a plug only when reclaiming a port after a restart, which
            // kvnetd does by itself (see `reconcile_ports`).
            return Err(Error::Xml(crate::xml::Error::Invalid(
                crate::xml::Class::InvalidArgument,
                "Port reclaim not requested but plug type is not none".into(),
            )));
        }
        def.fill_defaults();
        let uuid = def.uuid.unwrap_or_default();
        let network = networks.get_mut(&name).ok_or_else(|| Error::NotFound {
            field: "name",
            value: name.clone(),
        })?;
        let Some(live) = network.live.as_ref() else {
            return Err(Error::OperationInvalid(format!(
                "network '{name}' is not active"
            )));
        };
        let attachment = match live.macvtap_mode() {
            Some(mode) => Attachment::Macvtap(mode),
            None => match live.bridge_name() {
                Some(bridge) => Attachment::Bridge(bridge.to_owned()),
                None => {
                    return Err(Error::OperationInvalid(format!(
                        "network '{name}' has no bridge"
                    )));
                }
            },
        };
        // As libvirt's ports, a port takes the network's setting when it has none.
        def.isolated = def.isolated.or(live.isolated_ports);
        let portgroup = live.portgroup(def.group.as_deref());
        if let Some(group) = &def.group
            && portgroup.is_none()
        {
            // libvirt quietly gives such a port nothing of any group.
            return Err(Error::OperationInvalid(format!(
                "network '{name}' has no portgroup named '{group}'"
            )));
        }
        // The group's limits are copied into the port, as libvirt's networkAllocatePort
        // does: they stay with it whatever becomes of the group.
        if def.bandwidth.is_none() {
            def.bandwidth = portgroup.and_then(|group| group.bandwidth.clone());
        }
        def.trust_guest_rx_filters = def
            .trust_guest_rx_filters
            .or(portgroup.and_then(|group| group.trust_guest_rx_filters))
            .or(live.trust_guest_rx_filters);
        self.prune_ports(&name, network).await;
        if network.ports.contains_key(&uuid) {
            return Err(Error::PortExists(uuid));
        }
        let port = match attachment {
            Attachment::Bridge(bridge) => {
                self.create_tap(&name, network, def, &bridge, hand_over, owner_uid)
                    .await?
            }
            Attachment::Macvtap(mode) => {
                // A handed-over macvtap goes when the process that asked for it exits.
                let holder = connection
                    .map(Owner::of_peer)
                    .transpose()
                    .map_err(|source| Error::PortHolder {
                        network: name.clone(),
                        source,
                    })?;
                self.create_macvtap(&name, network, def, mode, holder)
                    .await?
            }
        };
        info!(network = %name, port = %uuid, tap = %port.summary.tap, owner = %port.summary.owner, "created port");
        Ok(port)
    }

    /// [`Manager::create_port`] on a network with a bridge: a tap plugged into it.
    async fn create_tap(
        &self,
        name: &str,
        network: &mut Network,
        mut def: PortDef,
        bridge: &str,
        hand_over: bool,
        owner_uid: u32,
    ) -> Result<NewPort, Error> {
        def.validate_for_tap()?;
        let uuid = def.uuid.unwrap_or_default();
        if let Some(live) = &network.live {
            def.plug = Some(plug_of(live, bridge));
        }
        let failed = |source: crate::link::Error| Error::Port {
            network: name.to_owned(),
            source,
        };
        let bridge_info = self
            .link
            .link_info(bridge)
            .await
            .map_err(failed)?
            .ok_or_else(|| failed(crate::link::Error::NoSuchLink(bridge.to_owned())))?;
        // Until the port is recorded, dropping `tap` on an error removes the device.
        let tap = Tap::create(TAP_TEMPLATE, false).map_err(failed)?;
        tap.set_owner(owner_uid).map_err(failed)?;
        sysctl::disable_port_ipv6(tap.name()).map_err(failed)?;
        let flags = PortFlags {
            isolated: def.isolated == Some(true),
            pinned_mac: network
                .live
                .as_ref()
                .is_some_and(pins_guest_macs)
                .then_some(def.mac.0),
        };
        // No frame may pass before the port's flags are set: it joins down if it takes any
        // (another guest's broadcast would wait in the tap for the new guest).
        let state = if flags.any() {
            PortState::Down
        } else {
            PortState::Up
        };
        let ifindex = self
            .link
            .plug_port(
                tap.name(),
                tap_mac(def.mac.0),
                bridge_info.mtu.unwrap_or(1500),
                (bridge_info.index, bridge),
                state,
            )
            .await
            .map_err(failed)?;
        self.set_port_flags(ifindex, tap.name(), flags, None, flags.any())
            .await
            .map_err(failed)?;
        // Kept across parking and plugging in again: a tap keeps its qdiscs, and its IFB
        // lives until the tap is deleted. shape() leaves no IFB when it fails.
        let shaping = shaping_of(def.bandwidth.as_ref());
        if !shaping.is_empty() {
            self.link
                .shape(ifindex, tap.name(), &shaping)
                .await
                .map_err(failed)?;
        }
        let port = Port {
            def,
            tap: tap.name().to_owned(),
            ifindex,
            persistent: !hand_over,
            holder: None,
            owner: None,
            watch: None,
        };
        network.ports.insert(uuid, port.clone());
        let recorded = self
            .approve_port(name, network, &port.def)
            .await
            .and_then(|()| self.save_ports(name, network))
            .and_then(|()| {
                if hand_over {
                    return Ok(());
                }
                tap.set_persistent(true).map_err(|e| {
                    // Recorded already: the record goes again.
                    network.ports.remove(&uuid);
                    self.save_ports_or_warn(name, network);
                    failed(e)
                })
            });
        if let Err(e) = recorded {
            network.ports.remove(&uuid);
            // The tap goes when `tap` is dropped; its IFB would outlive it.
            if shaping.ingress.is_some()
                && let Err(cleanup) = self.link.delete_ifb_of(ifindex).await
            {
                warn!(network = %name, tap = %port.tap, "{}", error_chain(&cleanup));
            }
            return Err(e);
        }
        Ok(NewPort {
            summary: port.summary(name),
            tap: hand_over.then(|| tap.into_fd()),
        })
    }

    /// The ports of a running network counted as libvirt's live XML counts them (none for
    /// a stopped one, whose ports wait for its next start).
    pub(super) async fn connections(&self, name: &str, network: &mut Network) -> Connections {
        if network.live.is_none() || network.ports.is_empty() {
            return Connections::default();
        }
        self.prune_ports(name, network).await;
        count_connections(network)
    }

    /// The ports of a running network, by UUID (libvirt lists only those of a running
    /// network).
    pub async fn list_ports(&self, key: &str) -> Result<Vec<PortSummary>, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let network = networks
            .get_mut(&name)
            .filter(|network| network.live.is_some())
            .ok_or_else(|| Error::OperationInvalid(format!("network '{name}' is not active")))?;
        self.prune_ports(&name, network).await;
        Ok(network
            .ports
            .values()
            .map(|port| port.summary(&name))
            .collect())
    }

    /// A port's `<networkport>` document.
    pub async fn port_xml(&self, key: &str, port: &str) -> Result<String, Error> {
        let mut networks = self.networks.lock().await;
        let (_, uuid, network) = self.find_port(&mut networks, key, port).await?;
        let port = network.ports.get(&uuid).ok_or(Error::PortNotFound(uuid))?;
        Ok(port.def.to_xml())
    }

    /// Runs the `port-created` scripts for a port that is in `network`'s ports (they count
    /// it) but not recorded yet: as in libvirt, they may refuse it, and a crash while they
    /// run leaves no record of a port they never approved.
    pub(super) async fn approve_port(
        &self,
        name: &str,
        network: &Network,
        def: &PortDef,
    ) -> Result<(), Error> {
        self.run_port_hooks(name, network, Operation::PortCreated, def)
            .await
    }

    /// Deletes a port and its tap (a VMM that holds it loses the link).
    pub async fn delete_port(&self, key: &str, port: &str) -> Result<PortSummary, Error> {
        let mut networks = self.networks.lock().await;
        let (name, uuid, network) = self.find_port(&mut networks, key, port).await?;
        let port = self.remove_port(&name, network, uuid).await?;
        info!(network = %name, port = %uuid, tap = %port.tap, "deleted port");
        self.run_port_hooks_logged(
            &name,
            network,
            Operation::PortDeleted,
            std::slice::from_ref(&port.def),
        )
        .await;
        Ok(port.summary(&name))
    }

    /// Deletes a port's device (and IFB) and its record.
    async fn remove_port(
        &self,
        name: &str,
        network: &mut Network,
        uuid: Uuid,
    ) -> Result<Port, Error> {
        let port = network.ports.get(&uuid).ok_or(Error::PortNotFound(uuid))?;
        let failed = |source| Error::Port {
            network: name.to_owned(),
            source,
        };
        // The recorded index may since name another device (an index given again by
        // `ip link add … index N`, or a device moved in from another namespace).
        let device = self.link.link_info_at(port.ifindex).await.map_err(failed)?;
        let someone_elses = match device {
            Some(link) if port.is_its_device(uuid, &link) => {
                self.link
                    .delete_index(port.ifindex, &port.tap)
                    .await
                    .map_err(failed)?;
                false
            }
            Some(link) => {
                warn!(network = %name, device = %link.name, was = %port.tap, "a port's recorded device index now names another device; leaving it alone");
                true
            }
            None => false,
        };
        // The IFB of a device that is not the port's is not the port's either.
        if !someone_elses
            && port.shaping().ingress.is_some()
            && let Err(e) = self.link.delete_ifb_of(port.ifindex).await
        {
            warn!(network = %name, tap = %port.tap, "{}", error_chain(&e));
        }
        let port = network
            .ports
            .remove(&uuid)
            .ok_or(Error::PortNotFound(uuid))?;
        // Its device is gone: the port has ended whatever becomes of the record, which
        // the next look at the network's ports (or a daemon restart) finds without a tap.
        self.save_ports_or_warn(name, network);
        Ok(port)
    }

    /// Plugs a network that just started back into its ports' taps: those a stop left
    /// parked, whose VMMs kept them. A port that cannot be plugged in
    /// is deleted, with a warning, rather than left on a running network without a link.
    pub(super) async fn replug_ports(&self, name: &str, network: &mut Network) {
        if network.ports.is_empty() {
            return;
        }
        if let Some((links, mut ended)) = self.port_links(name, network).await {
            ended.extend(self.plug_in(name, network, &links).await);
            self.run_port_hooks_logged(name, network, Operation::PortDeleted, &ended)
                .await;
        }
    }

    /// Sets a guest port's bridge-port `flags` (those not set already, as `current` has
    /// them), then brings it up when `bring_up` (a port that takes flags joins its bridge
    /// down, so that no frame passes before they are set). Each step is idempotent.
    async fn set_port_flags(
        &self,
        index: u32,
        tap: &str,
        flags: PortFlags,
        current: Option<BridgePortFlags>,
        bring_up: bool,
    ) -> Result<(), crate::link::Error> {
        if flags.isolated && !current.is_some_and(|current| current.isolated) {
            self.link.set_port_isolated(index, tap, true).await?;
        }
        if let Some(mac) = flags.pinned_mac {
            let pinned = current.is_some_and(|current| current.pinned());
            self.link.pin_guest_mac(index, tap, mac, pinned).await?;
        }
        if bring_up {
            self.link.set_up_at(index, tap).await?;
        }
        Ok(())
    }

    /// [`Manager::replug_ports`] with the links already dumped (and the ports' taps
    /// followed). Returns the definitions of the ports it had to delete.
    async fn plug_in(&self, name: &str, network: &mut Network, links: &Links) -> Vec<PortDef> {
        let Some(live) = network.live.as_ref() else {
            return Vec::new();
        };
        // A macvtap network's ports only come up again; a bridge's are plugged into it.
        let target = match live.bridge_name() {
            _ if live.macvtap_mode().is_some() => None,
            Some(bridge) => {
                let Some(bridge_link) = links.values().find(|link| link.name == bridge) else {
                    warn!(network = %name, bridge = %bridge, "cannot plug the ports in: the bridge is gone");
                    return Vec::new();
                };
                Some((bridge.to_owned(), plug_of(live, bridge), bridge_link))
            }
            None => return Vec::new(),
        };
        let isolated_ports = live.isolated_ports;
        let pin_macs = pins_guest_macs(live);
        let mut unpluggable = Vec::new();
        let mut plugged = 0;
        for (uuid, port) in &mut network.ports {
            let current = links.get(&port.ifindex);
            let result = match (&target, port.is_macvtap()) {
                (None, true) if !macvtaps::fits(port, live) => {
                    warn!(network = %name, port = %uuid, "deleting a macvtap port whose device or mode the network does not have any more");
                    unpluggable.push(*uuid);
                    continue;
                }
                (None, true) if current.is_some_and(|link| link.up) => continue,
                (None, true) => {
                    self.link
                        .bring_up_macvtap(port.ifindex, &port.tap, port.def.mac.0)
                        .await
                }
                // On the bridge already. If it lacks flags it takes, a crash came between
                // plugging it in (down) and setting them and bringing it up: finished
                // here, each step being idempotent. Down with all its flags (or taking
                // none, when it was plugged in up), someone took it down: left so.
                (Some((_, _, bridge_link)), false)
                    if current.is_some_and(|tap| tap.master == Some(bridge_link.index)) =>
                {
                    let flags = PortFlags {
                        isolated: port.def.isolated.or(isolated_ports) == Some(true),
                        pinned_mac: pin_macs.then_some(port.def.mac.0),
                    };
                    let now = current.and_then(|link| link.port);
                    let unfinished = !flags.all_in(now);
                    let down = !current.is_some_and(|link| link.up);
                    let result = self
                        .set_port_flags(port.ifindex, &port.tap, flags, now, down && unfinished)
                        .await;
                    if let Err(e) = result {
                        warn!(network = %name, port = %uuid, "{}", error_chain(&e));
                    }
                    continue;
                }
                (Some((bridge, plug, bridge_link)), false) => {
                    let mtu = bridge_link.mtu.unwrap_or(1500);
                    let mac = tap_mac(port.def.mac.0);
                    // A port loses its flags (and forwarding entry) when it leaves the
                    // bridge. One without an isolation setting of its own (its network
                    // had none when it was made) follows the network's.
                    let flags = PortFlags {
                        isolated: port.def.isolated.or(isolated_ports) == Some(true),
                        pinned_mac: pin_macs.then_some(port.def.mac.0),
                    };
                    let (index, tap) = (port.ifindex, port.tap.as_str());
                    // The guest runs: no frame may pass before its flags are set.
                    let state = if flags.any() {
                        PortState::Down
                    } else {
                        PortState::Up
                    };
                    let mut result = self
                        .link
                        .plug_port_at(index, tap, mac, mtu, bridge_link.index, bridge, state)
                        .await;
                    if result.is_ok() {
                        result = self
                            .set_port_flags(index, tap, flags, None, flags.any())
                            .await;
                    }
                    if result.is_ok() {
                        port.def.plug = Some(plug.clone());
                    }
                    result
                }
                // The network was redefined, between a macvtap pool and a bridge, while it
                // was stopped.
                (_, is_macvtap) => {
                    let kind = if is_macvtap { "macvtap" } else { "tap" };
                    warn!(network = %name, port = %uuid, "deleting a {kind} port the network does not take any more");
                    unpluggable.push(*uuid);
                    continue;
                }
            };
            match result {
                Ok(()) => plugged += 1,
                Err(e) => {
                    warn!(network = %name, port = %uuid, "deleting a port that cannot be plugged in again: {}", error_chain(&e));
                    unpluggable.push(*uuid);
                }
            }
        }
        let deleted: Vec<(Uuid, Port)> = unpluggable
            .iter()
            .filter_map(|uuid| network.ports.remove(uuid).map(|port| (*uuid, port)))
            .collect();
        self.delete_taps(
            name,
            deleted
                .iter()
                .map(|(uuid, port)| RecordedDevice::Port(*uuid, port)),
        )
        .await;
        if plugged > 0 {
            info!(network = %name, ports = plugged, "plugged ports in again");
        }
        if plugged > 0 || !deleted.is_empty() {
            self.save_ports_or_warn(name, network);
        }
        deleted.into_iter().map(|(_, port)| port.def).collect()
    }

    /// Takes the ports of a network that is stopping off its bridge and down, to wait for
    /// its next start: a VMM's writes to its tap fail meanwhile instead of reaching the
    /// host (a host bridge outlives the network, and a tap off a bridge is an interface
    /// of the host's own).
    pub(super) async fn park_ports(&self, name: &str, network: &mut Network) {
        for port in network.ports.values() {
            if let Err(e) = self.park(port).await {
                warn!(network = %name, tap = %port.tap, "{}", error_chain(&e));
            }
        }
    }

    /// Takes a tap off its bridge and down, or a macvtap down (it drops every frame then).
    async fn park(&self, port: &Port) -> Result<(), crate::link::Error> {
        if port.is_macvtap() {
            self.link.set_down_at(port.ifindex, &port.tap).await
        } else {
            self.link.unplug_port_at(port.ifindex, &port.tap).await
        }
    }

    /// Deletes the ports of a network that is gone for good, taps and records.
    pub(super) async fn discard_ports(&self, name: &str, network: &mut Network) {
        let ports = std::mem::take(&mut network.ports);
        let unreadable = std::mem::take(&mut network.unreadable_ports);
        self.delete_taps(
            name,
            ports
                .iter()
                .map(|(uuid, port)| RecordedDevice::Port(*uuid, port))
                .chain(unreadable.iter().map(RecordedDevice::Unreadable)),
        )
        .await;
        self.save_ports_or_warn(name, network);
    }

    /// Takes over the ports an earlier daemon recorded, once every network is loaded and
    /// adopted: a running network's are plugged in if a crash interrupted that; a stopped
    /// network's wait, detached, for its next start; those of a network that is gone are
    /// deleted (not those of a definition that could not be loaded).
    ///
    /// Returns whether the records could be listed and claim every device of theirs: if
    /// not, no device may be taken for an orphan.
    pub(super) async fn reconcile_ports(&self, networks: &mut BTreeMap<String, Network>) -> bool {
        let names = match self.store.ports_file_names() {
            Ok(names) => names,
            Err(e) => {
                warn!("cannot list port records: {}", error_chain(&e));
                return false;
            }
        };
        if names.is_empty() {
            return true;
        }
        // One dump for all networks: each looks only at its own taps, and at its bridge.
        let links = self
            .link
            .links_by_index()
            .await
            .map_err(|e| warn!("cannot check the ports' taps: {}", error_chain(&e)))
            .ok();
        let mut all_claimed = true;
        for name in names {
            if self.was_unloaded(&name) {
                // Left as they are, even a defined network's whose status could not be
                // read (it may be running); its macvtaps are not known to be claimed:
                // none is deleted as an orphan.
                all_claimed = false;
                continue;
            }
            let Some(network) = networks.get_mut(&name) else {
                self.discard_recorded_ports(&name).await;
                continue;
            };
            (network.ports, network.unreadable_ports) = self.load_ports(&name);
            // Not tied to the dump: a holder left unwatched keeps its device for good.
            let mut ended = self.end_exited_holders(&name, network, true).await;
            if let Some(links) = &links {
                ended.extend(self.follow_taps(&name, network, links));
                if network.live.is_some() {
                    ended.extend(self.plug_in(&name, network, links).await);
                } else {
                    self.park_recorded_ports(&name, network, links).await;
                }
            }
            if !network.ports.is_empty() {
                info!(network = %name, ports = network.ports.len(), "adopted ports");
            }
            self.run_port_hooks_logged(&name, network, Operation::PortDeleted, &ended)
                .await;
        }
        all_claimed
    }

    /// Deletes the devices left over from ports: kvnet's macvtaps that no port claims,
    /// when the port records could be listed (`records_listed`), and the IFB devices of
    /// links that are gone.
    pub(super) async fn delete_orphan_devices(
        &self,
        networks: &BTreeMap<String, Network>,
        records_listed: bool,
    ) {
        let links = match self.link.links_by_index().await {
            Ok(links) => links,
            Err(e) => {
                warn!("cannot look for devices left over: {}", error_chain(&e));
                return;
            }
        };
        let links = if records_listed {
            self.delete_orphan_macvtaps(networks, links).await
        } else {
            links
        };
        self.delete_orphan_ifbs_among(&links).await;
    }

    /// The ports recorded for a network, and the records that could not be read, which
    /// are kept as they are. A file that cannot be read at all is set aside (see
    /// [`crate::store::Store::set_aside_ports`]) rather than overwritten.
    fn load_ports(&self, name: &str) -> (Ports, Vec<PortStatus>) {
        let stored = match self.store.load_ports(name) {
            Ok(stored) => stored,
            Err(e) => {
                match self.store.set_aside_ports(name) {
                    Ok(aside) => {
                        warn!(network = %name, "setting unreadable port records aside as {}: {}", aside.display(), error_chain(&e));
                    }
                    Err(again) => {
                        warn!(network = %name, "unreadable port records: {}; {}", error_chain(&e), error_chain(&again));
                    }
                }
                return (Ports::new(), Vec::new());
            }
        };
        let mut ports = Ports::new();
        let mut unreadable = Vec::new();
        for status in stored {
            match Port::from_status(&status) {
                Ok(port) => {
                    ports.insert(port.def.uuid.unwrap_or_default(), port);
                }
                Err(e) => {
                    warn!(network = %name, tap = %status.tap, "keeping a port record whose XML cannot be read: {}", error_chain(&e));
                    unreadable.push(status);
                }
            }
        }
        (ports, unreadable)
    }

    /// Parks the recorded ports of a stopped network that are not parked yet: the daemon
    /// died while stopping it, or could not adopt it (its status was unreadable), and
    /// they are still up, or still on a host bridge.
    async fn park_recorded_ports(&self, name: &str, network: &Network, links: &Links) {
        for (uuid, port) in &network.ports {
            let parked = links
                .get(&port.ifindex)
                .filter(|link| port.is_its_device(*uuid, link))
                .is_none_or(|tap| !tap.up && tap.master.is_none());
            if !parked && let Err(e) = self.park(port).await {
                warn!(network = %name, tap = %port.tap, "{}", error_chain(&e));
            }
        }
    }

    /// Deletes the taps recorded for a network that is gone (a transient network whose
    /// bridge vanished while the daemon was away), and their records.
    async fn discard_recorded_ports(&self, name: &str) {
        match self.store.load_ports(name) {
            Ok(stored) => {
                let read: Vec<(&PortStatus, Option<Port>)> = stored
                    .iter()
                    .map(|status| (status, Port::from_status(status).ok()))
                    .collect();
                let devices = read.iter().map(|(status, port)| match port {
                    Some(port) => RecordedDevice::Port(port.def.uuid.unwrap_or_default(), port),
                    None => RecordedDevice::Unreadable(status),
                });
                self.delete_taps(name, devices).await;
            }
            Err(e) => warn!(network = %name, "cannot read port records: {}", error_chain(&e)),
        }
        if let Err(e) = self.store.save_ports(name, &[]) {
            warn!(network = %name, "{}", error_chain(&e));
        }
    }

    /// The network (name or UUID `key`) and UUID of a port that is still there, on a
    /// running network.
    async fn find_port<'a>(
        &self,
        networks: &'a mut BTreeMap<String, Network>,
        key: &str,
        port: &str,
    ) -> Result<(String, Uuid, &'a mut Network), Error> {
        let name = lookup(networks, key)?;
        let uuid = Uuid::parse_str(port).map_err(|_| Error::InvalidPortUuid(port.to_owned()))?;
        let network = networks.get_mut(&name).ok_or(Error::PortNotFound(uuid))?;
        self.prune_ports(&name, network).await;
        if !network.ports.contains_key(&uuid) {
            return Err(Error::PortNotFound(uuid));
        }
        // As libvirt: a port waiting for its network to start again is out of reach.
        if network.live.is_none() {
            return Err(Error::OperationInvalid(format!(
                "network '{name}' is not active"
            )));
        }
        Ok((name, uuid, network))
    }

    /// Ends the ports whose device the kernel deletes as soon as it does (a VMM exited,
    /// a macvtap's process ended), so that their `port-deleted` hooks run then rather than
    /// at the next look at their network. Holds the manager only while handling a deletion.
    pub fn follow_port_exits(self: &Arc<Manager>) {
        let gone = self
            .gone_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut gone) = gone else {
            return;
        };
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(index) = gone.recv().await {
                let Some(manager) = manager.upgrade() else {
                    break;
                };
                manager.port_device_gone(index).await;
            }
        });
    }

    /// [`Manager::follow_port_exits`] for one deleted device: the ports of the network
    /// that had it are looked at (those the daemon deleted itself are no longer recorded).
    async fn port_device_gone(&self, index: u32) {
        let mut networks = self.networks.lock().await;
        let owner = networks
            .iter_mut()
            .find(|(_, network)| network.ports.values().any(|port| port.ifindex == index));
        if let Some((name, network)) = owner {
            let name = name.clone();
            self.prune_ports(&name, network).await;
        }
    }

    /// Drops the ports whose tap has gone (its VMM closed it, or someone deleted it). One
    /// link dump answers for all of them.
    pub(super) async fn prune_ports(&self, name: &str, network: &mut Network) {
        if !network.ports.is_empty()
            && let Some((_, ended)) = self.port_links(name, network).await
        {
            self.run_port_hooks_logged(name, network, Operation::PortDeleted, &ended)
                .await;
        }
    }

    /// Every link, by ifindex, after dropping the ports whose tap has gone and following
    /// renamed ones, with the definitions of the ports that ended (their `port-deleted`
    /// scripts are the caller's to run, once it is done with the links); `None` (logged)
    /// when the kernel cannot be asked.
    async fn port_links(&self, name: &str, network: &mut Network) -> Option<(Links, Vec<PortDef>)> {
        let mut links = match self.link.links_by_index().await {
            Ok(links) => links,
            Err(e) => {
                warn!(network = %name, "cannot check the ports' taps: {}", error_chain(&e));
                return None;
            }
        };
        // A dump that links came and went during may miss one that stayed (older
        // kernels): a port's tap missing from it is asked after on its own first.
        for port in network.ports.values() {
            if !links.contains_key(&port.ifindex)
                && let Ok(Some(link)) = self.link.link_info_at(port.ifindex).await
            {
                links.insert(port.ifindex, link);
            }
        }
        let mut ended = self.follow_taps(name, network, &links);
        ended.extend(self.end_exited_holders(name, network, false).await);
        // The IFB of a shaped tap its VMM closed outlives it.
        self.delete_orphan_ifbs_among(&links).await;
        Some((links, ended))
    }

    /// Drops the ports whose tap is not in `links` and follows renamed taps. Returns the
    /// definitions of the ports that ended.
    fn follow_taps(&self, name: &str, network: &mut Network, links: &Links) -> Vec<PortDef> {
        // A port follows its tap by ifindex, which a rename keeps: a tap renamed behind our
        // back is still the port's (and still deleted with it). The kernel gives an index
        // again only when asked (`ip link add … index N`, a device moved in from another
        // namespace), which the device check catches.
        let mut changed = false;
        let mut ended = Vec::new();
        network.ports.retain(|uuid, port| {
            let keep = match links.get(&port.ifindex) {
                None => {
                    info!(network = %name, port = %uuid, tap = %port.tap, "port ended: its tap is gone");
                    false
                }
                // The state dir outlived the namespace its devices were in: the index is
                // someone else's now.
                Some(current) if !port.is_its_device(*uuid, current) => {
                    warn!(network = %name, port = %uuid, device = %current.name, "port ended: its ifindex belongs to another device");
                    false
                }
                Some(current) => {
                    if current.name != port.tap {
                        info!(network = %name, port = %uuid, tap = %current.name, was = %port.tap, "a port's tap was renamed");
                        port.tap.clone_from(&current.name);
                        changed = true;
                    }
                    true
                }
            };
            if !keep {
                ended.push(port.def.clone());
            }
            keep
        });
        if changed || !ended.is_empty() {
            self.save_ports_or_warn(name, network);
        }
        ended
    }

    /// Deletes the devices of ports that are gone; one whose index names a device that
    /// is not the port's any more is left alone, with a warning.
    async fn delete_taps<'a>(
        &self,
        network: &str,
        devices: impl Iterator<Item = RecordedDevice<'a>>,
    ) {
        let devices: Vec<RecordedDevice> = devices.collect();
        if devices.is_empty() {
            return;
        }
        let links = match self.link.links_by_index().await {
            Ok(links) => links,
            Err(e) => {
                warn!(
                    network,
                    "cannot list the ports' taps to delete them: {}",
                    error_chain(&e)
                );
                return;
            }
        };
        for device in devices {
            let Some(link) = links.get(&device.ifindex()) else {
                continue;
            };
            if !device.is(link) {
                warn!(network, device = %link.name, was = %device.tap(), "a port's recorded device index now names another device; leaving it alone");
                continue;
            }
            if link.name != device.tap() {
                info!(network, tap = %link.name, was = %device.tap(), "deleting a port's renamed tap");
            }
            if let Err(e) = self.link.delete_index(device.ifindex(), &link.name).await {
                warn!(network, tap = %link.name, "deleting a port's tap: {}", error_chain(&e));
            }
        }
        self.delete_orphan_ifbs().await;
    }

    /// Deletes the IFB devices left by ports whose tap is gone; see
    /// [`crate::link::Link::delete_orphan_ifbs`].
    pub(super) async fn delete_orphan_ifbs(&self) {
        match self.link.links_by_index().await {
            Ok(links) => self.delete_orphan_ifbs_among(&links).await,
            Err(e) => warn!("deleting ifb devices left over: {}", error_chain(&e)),
        }
    }

    /// [`Manager::delete_orphan_ifbs`] with the links already dumped.
    async fn delete_orphan_ifbs_among(&self, links: &Links) {
        match self.link.delete_orphan_ifbs(links).await {
            Ok(deleted) if !deleted.is_empty() => {
                info!(devices = ?deleted, "deleted the ifb devices of links that are gone");
            }
            Ok(_) => {}
            Err(e) => warn!("deleting ifb devices left over: {}", error_chain(&e)),
        }
    }

    /// Records the network's ports, with the records it could not read as they were.
    pub(super) fn save_ports(&self, name: &str, network: &Network) -> Result<(), Error> {
        let statuses: Vec<PortStatus> = network
            .ports
            .values()
            .map(Port::status)
            .chain(network.unreadable_ports.iter().cloned())
            .collect();
        Ok(self.store.save_ports(name, &statuses)?)
    }

    pub(super) fn save_ports_or_warn(&self, name: &str, network: &Network) {
        if let Err(e) = self.save_ports(name, network) {
            warn!(network = %name, "recording ports: {}", error_chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taps_mac_never_equals_its_guests() {
        assert_eq!(tap_mac([0x52, 0x54, 0, 1, 2, 3]), [0xfe, 0x54, 0, 1, 2, 3]);
    }

    #[test]
    fn a_tap_is_the_ports_only_with_the_mac_kvnet_gave_it() {
        let def = PortDef::from_xml(
            "<networkport><uuid>6b4e2a3c-1d2f-4b5a-9c8d-7e6f5a4b3c2d</uuid>\
             <owner><name>vm</name><uuid>00000000-0000-0000-0000-000000000001</uuid></owner>\
             <mac address='52:54:00:01:02:03'/></networkport>",
        )
        .expect("port XML");
        let uuid = def.uuid.expect("uuid");
        let port = Port {
            def,
            tap: "vnet0".into(),
            ifindex: 7,
            persistent: true,
            holder: None,
            owner: None,
            watch: None,
        };
        let tap = |mac: [u8; 6]| LinkInfo {
            index: 7,
            name: "vnet0".into(),
            kind: Some("tun".into()),
            mac: Some(mac),
            mtu: Some(1500),
            up: true,
            master: None,
            alias: None,
            group: 0,
            port: None,
        };
        assert!(port.is_its_device(uuid, &tap([0xfe, 0x54, 0, 1, 2, 3])));
        assert!(!port.is_its_device(uuid, &tap([0x02, 0xaa, 0, 1, 2, 3])));
    }
}
