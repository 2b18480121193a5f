//! What the daemon does when it starts, before it serves: loading the definitions
//! (completing those written by hand), adopting the networks a previous daemon left
//! running and undoing what it left half done, defining `default` on a first start,
//! and starting autostart networks once per boot.

use std::collections::BTreeMap;

use ipnet::IpNet;
use tracing::{info, warn};

use super::configs::{bridge_addresses, firewall_rules};
use super::{
    DEFAULT_NETWORK, Error, Manager, Network, error_chain, is_incomplete, is_network_bridge,
    is_recorded_bridge, overlap,
};
use crate::link::LinkInfo;
use crate::service::lock;
use crate::store::{self, AutostartProgress, Phase, Status};
use crate::xml::NetworkDef;

/// How many times a network's boot autostart is tried when daemons die during it.
const AUTOSTART_TRIES: usize = 2;

impl Manager {
    pub(super) async fn load_configs(&self) -> Result<(), Error> {
        let mut networks = self.networks.lock().await;
        let mut unloaded = std::collections::BTreeSet::new();
        for stored in self.store.load_configs()? {
            let parsed = stored
                .xml
                .map_err(Error::from)
                .and_then(|xml| Ok(NetworkDef::from_stored_xml(&xml)?));
            let def = match parsed {
                Ok(def) => def,
                Err(e) => {
                    warn!(path = %stored.path.display(), "skipping unreadable definition (its leases and ports are kept): {}", error_chain(&e));
                    unloaded.insert(stored.file_name);
                    continue;
                }
            };
            if def.name != stored.file_name {
                warn!(path = %stored.path.display(), network = %def.name, "skipping definition whose file name differs from its <name> (its leases and ports are kept)");
                unloaded.insert(stored.file_name);
                continue;
            }
            // A file copied from another without a new <uuid>: libvirt refuses the second
            // one too (files load in name order). Both would claim one network.
            if let Err(e) = self.check_identity(&networks, &def) {
                warn!(path = %stored.path.display(), "skipping definition (its leases and ports are kept): {}", error_chain(&e));
                unloaded.insert(stored.file_name);
                continue;
            }
            if let Err(e) = def.check_dhcp_hosts_usable() {
                // libvirt takes it, and its dnsmasq ignores it.
                warn!(path = %stored.path.display(), network = %def.name, "a DHCP <host> no guest can get is left out: {}", error_chain(&e));
            }
            networks.insert(def.name.clone(), Network::defined(def, stored.autostart));
        }
        *lock(&self.unloaded) = unloaded;
        self.complete_copied_definitions(&mut networks).await;
        Ok(())
    }

    /// Fills in what `net-define` would have (UUID, MAC, a bridge name from the default
    /// or the file's `%d` template) in definitions written or copied into the config dir
    /// by hand, and saves them, so that they start and keep their names and addresses.
    pub(super) async fn complete_copied_definitions(
        &self,
        networks: &mut BTreeMap<String, Network>,
    ) {
        let incomplete: Vec<NetworkDef> = networks
            .values()
            .filter_map(|network| network.config.clone())
            .filter(is_incomplete)
            .collect();
        for mut def in incomplete {
            if let Err(e) = self.complete_and_check_bridge(networks, &mut def).await {
                // Its bridge is someone else's for now (libvirt's virbr0 while libvirt
                // runs): `net-start` completes it once it is free. Its UUID and MAC
                // depend on nothing, and it must not go without them meanwhile.
                warn!(network = %def.name, "cannot give a definition written by hand its bridge: {}", error_chain(&e));
                def.fill_identity();
            }
            match self.store.save_config(&def.name, &def.to_config_file()) {
                Ok(()) => {
                    info!(network = %def.name, bridge = def.bridge_name().unwrap_or("-"), "completed a definition written by hand")
                }
                Err(e) => {
                    warn!(network = %def.name, "cannot save a definition completed by the daemon (its UUID and MAC change at its next start): {}", error_chain(&e))
                }
            }
            if let Some(network) = networks.get_mut(&def.name) {
                network.config = Some(def);
            }
        }
    }

    /// Takes over networks a previous daemon left running, and undoes starts it left half done.
    pub(super) async fn adopt_running(&self) -> Result<(), Error> {
        let mut networks = self.networks.lock().await;
        for (name, status) in self.store.load_statuses()? {
            let status = match status {
                Ok(status) => status,
                Err(e @ store::Error::CorruptStatus { .. }) => {
                    warn!(network = %name, "discarding a damaged status: {}", error_chain(&e));
                    self.release_unadoptable(&networks, &name, None).await;
                    self.discard_status_or_warn(&name);
                    continue;
                }
                Err(e) => {
                    // Not damaged but unreadable now (permissions, an I/O error): the
                    // network may well be running, and a later daemon may read it.
                    warn!(network = %name, "cannot read the status, so the network stays inactive and its bridge, ports, leases, rules and status file are left as they are: {}", error_chain(&e));
                    lock(&self.unread_statuses).insert(name.clone());
                    lock(&self.unloaded).insert(name);
                    continue;
                }
            };
            let def = match NetworkDef::from_stored_xml(&status.xml) {
                Ok(def) => def,
                Err(e) => {
                    warn!(network = %name, "discarding status with unreadable XML: {}", error_chain(&e));
                    self.release_unadoptable(&networks, &name, Some(&status.bridge))
                        .await;
                    self.discard_status_or_warn(&name);
                    continue;
                }
            };
            if def.name != name {
                // Copied or edited by hand: adopting it would give two entries one bridge,
                // and a destroy of either would take the other's down.
                warn!(network = %name, "the status file describes network '{}', not this one, so the network stays inactive and its bridge, ports, leases, rules and status file are left as they are", def.name);
                lock(&self.unread_statuses).insert(name.clone());
                lock(&self.unloaded).insert(name);
                continue;
            }
            let mut status = self.finish_pending_config(&mut networks, &name, status);
            let owns_bridge = def.forward_mode().has_managed_bridge();
            if status.phase != Phase::Active {
                let interrupted = match status.phase {
                    Phase::Stopping => "finishing a stop interrupted by a daemon crash",
                    _ => "undoing a start interrupted by a daemon crash",
                };
                warn!(network = %name, bridge = %status.bridge, "{interrupted}");
                let created = if owns_bridge {
                    self.bridge_it_created(&def, &status.bridge, status.version)
                        .await
                } else {
                    None
                };
                self.release(&name, Some(&def), &status.bridge, created)
                    .await;
                self.discard_status_or_warn(&name);
                continue;
            }
            // A macvtap network has nothing in the kernel but its ports' devices, and a
            // host-bridge network may be running before its bridge exists.
            if owns_bridge {
                let bridge = self
                    .link
                    .link_info(&status.bridge)
                    .await?
                    .filter(LinkInfo::is_bridge);
                let Some(bridge) = bridge else {
                    warn!(network = %name, bridge = %status.bridge, "bridge vanished while the daemon was away; marking the network inactive");
                    self.release(&name, Some(&def), &status.bridge, None).await;
                    self.discard_status_or_warn(&name);
                    continue;
                };
                // The name may since have gone to someone else's bridge (deleted and made
                // again, by libvirt say): never take that over, nor delete it later.
                if !is_recorded_bridge(&def, &status.bridge, &bridge, status.version) {
                    warn!(network = %name, bridge = %status.bridge, "bridge {} is no longer this network's (another MAC address, or not kvnet's); marking the network inactive and leaving the bridge alone", status.bridge);
                    self.release(&name, Some(&def), &status.bridge, None).await;
                    self.discard_status_or_warn(&name);
                    continue;
                }
                let marked = self.restore_bridge(&def, &status.bridge, &bridge).await;
                // Its status is now one that vouches for a bridge in kvnet's group only.
                if marked && status.version < store::STATUS_VERSION {
                    status = Status {
                        version: store::STATUS_VERSION,
                        ..status
                    };
                    self.save_status_or_warn(&name, &status);
                }
            }
            info!(network = %name, bridge = def.bridge_name().unwrap_or("-"), "adopted running network");
            let _hosts_zone = self.hosts_zone_for(&def).await;
            let servers = self.restart_servers(&def, &networks);
            match networks.get_mut(&name) {
                Some(network) => {
                    if !status.persistent {
                        // Defined while it ran, or an undefine interrupted before its
                        // definition went: the definition on disk is what counts.
                        warn!(network = %name, "running network has a definition on disk; it is persistent");
                        self.save_status_or_warn(
                            &name,
                            &Status {
                                persistent: true,
                                ..status
                            },
                        );
                    }
                    network.run(def, servers);
                }
                None => {
                    // (One whose definition is there but unreadable stays persistent.)
                    if status.persistent && !self.was_unloaded(&name) {
                        // Its definition was removed behind our back: keep it running, as transient.
                        warn!(network = %name, "running network has no definition on disk any more; it is now transient");
                        self.save_status_or_warn(
                            &name,
                            &Status {
                                persistent: false,
                                ..status
                            },
                        );
                    }
                    networks.insert(name, Network::transient(def, servers));
                }
            }
        }
        self.release_bridges_without_status(&networks).await;
        let records_listed = self.reconcile_ports(&mut networks).await;
        // Shaped bridges and taps deleted while the daemon was away, or by the undoing
        // above, leave their IFB devices behind; a crash in a port's creation, a macvtap.
        self.delete_orphan_devices(&networks, records_listed).await;
        Ok(())
    }

    /// Finishes the persistent definition's write that an update of both definitions
    /// recorded in `status` before a crash, so that the two agree, and returns the status
    /// without it (written so). One that cannot be written now stays in the status, for
    /// the next daemon to finish, and holds up no other network.
    pub(super) fn finish_pending_config(
        &self,
        networks: &mut BTreeMap<String, Network>,
        name: &str,
        status: Status,
    ) -> Status {
        let Some(file) = &status.pending_config else {
            return status;
        };
        match NetworkDef::from_stored_xml(file) {
            Ok(def) if def.name == name => {
                if let Err(e) = self.store.save_config(name, file) {
                    warn!(network = %name, "cannot finish writing the definition of an update a crash interrupted (the daemon tries again when it next starts): {}", error_chain(&e));
                    return status;
                }
                if let Some(network) = networks.get_mut(name) {
                    network.config = Some(def);
                }
                info!(network = %name, "finished writing the definition of an update a crash interrupted");
            }
            Ok(_) | Err(_) => {
                warn!(network = %name, "dropping an unusable definition an interrupted update left in the status file");
            }
        }
        let status = Status {
            pending_config: None,
            ..status
        };
        self.save_status_or_warn(name, &status);
        status
    }

    /// Removes the lease files of networks that are neither defined nor running: those of
    /// a transient network whose start or stop a crash interrupted (undone or finished at
    /// adoption), or of an undefine killed before it removed them.
    pub(super) async fn forget_orphan_leases(&self) -> Result<(), Error> {
        let networks = self.networks.lock().await;
        for name in self.store.lease_file_names()? {
            if !networks.contains_key(&name) && !self.was_unloaded(&name) {
                info!(network = %name, "removing the lease file of a network that is gone");
                self.delete_leases_or_warn(&name);
            }
        }
        Ok(())
    }

    /// Records an adopted network's corrected status. One that cannot be written now is
    /// corrected again by the next daemon, which finds it the same way.
    pub(super) fn save_status_or_warn(&self, name: &str, status: &Status) {
        if let Err(e) = self.store.save_status(name, status) {
            warn!(network = %name, "its status file keeps the old record (the daemon corrects it again when it next starts): {}", error_chain(&e));
        }
    }

    /// Removes the status of a network that is not adopted. One that cannot be removed
    /// is left for the next daemon, which finds it the same way, rather than keeping
    /// every other network from being adopted.
    pub(super) fn discard_status_or_warn(&self, name: &str) {
        if let Err(e) = self.store.delete_status(name) {
            warn!(network = %name, "its status file stays on disk (the daemon looks at it again when it next starts): {}", error_chain(&e));
        }
    }

    /// Puts back what was taken from an adopted network's own bridge while the daemon was
    /// away: its addresses (the guests' router and DNS server) and its up state. What is
    /// still there is left as it is. A bridge an earlier kvnet created without kvnet's
    /// link group is put in it, so that recovery can tell it from another's later; returns
    /// whether the bridge is in the group.
    pub(super) async fn restore_bridge(
        &self,
        def: &NetworkDef,
        bridge: &str,
        info: &LinkInfo,
    ) -> bool {
        let mut marked = info.in_kvnet_group();
        if !marked {
            match self.link.mark_as_kvnets(info.index, bridge).await {
                Ok(()) => marked = true,
                Err(e) => warn!(network = %def.name, "{}", error_chain(&e)),
            }
        }
        for (address, prefix) in bridge_addresses(def) {
            match self
                .link
                .add_address_at(info.index, bridge, address, prefix)
                .await
            {
                Ok(()) => {
                    warn!(network = %def.name, bridge, "address {address}/{prefix} had been removed; added it back");
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => warn!(network = %def.name, "{}", error_chain(&e)),
            }
        }
        if !info.up {
            match self.link.set_up_at(info.index, bridge).await {
                Ok(()) => {
                    warn!(network = %def.name, bridge, "bridge had been set down; brought it up")
                }
                Err(e) => warn!(network = %def.name, "{}", error_chain(&e)),
            }
        }
        // The kernel deletes a link's routes when it goes down.
        for route in &def.routes {
            match self.add_static_route(bridge, route).await {
                Ok(()) => {
                    warn!(network = %def.name, bridge, "the route to {route} had been removed; added it back")
                }
                Err(e) if e.is_already_exists() => {}
                Err(e) => {
                    warn!(network = %def.name, "adding the route to {route}: {}", error_chain(&e))
                }
            }
        }
        marked
    }

    /// Whether `bridge` is the bridge a start of `def` created: a bridge with the network's
    /// MAC in kvnet's link group, or with the MAC alone for a status in a format from
    /// before the group (`status_version`; see [`is_recorded_bridge`]). The name may belong
    /// to someone else's interface instead (the kernel refused an interrupted start because
    /// the name was taken, and the daemon died before clearing its intent), and that must
    /// survive the recovery.
    pub(super) async fn bridge_it_created(
        &self,
        def: &NetworkDef,
        bridge: &str,
        status_version: u32,
    ) -> Option<u32> {
        match self.link.link_info(bridge).await {
            Ok(Some(info)) if is_recorded_bridge(def, bridge, &info, status_version) => {
                Some(info.index)
            }
            Ok(Some(_)) => {
                warn!(network = %def.name, bridge, "leaving interface {bridge} alone: it is not the network's bridge (another kind, MAC address or link group)");
                None
            }
            Ok(None) => None,
            Err(e) => {
                warn!(network = %def.name, bridge, "leaving interface {bridge} alone: {}", error_chain(&e));
                None
            }
        }
    }

    /// Deletes the bridges, and their rules, of defined networks that are not running
    /// but whose bridge is there with the definition's MAC address: their status file
    /// went behind the daemon's back (the state dir emptied by hand), so they cannot be
    /// adopted, and each bridge would block its network's next start for good.
    async fn release_bridges_without_status(&self, networks: &BTreeMap<String, Network>) {
        // A copy of a running network's definition, made by hand, names its bridge too;
        // so may one of a network whose status could not be read, which may be running.
        let running: Vec<&str> = networks
            .iter()
            .filter_map(|(name, network)| match &network.live {
                Some(live) => live.bridge_name(),
                None if self.was_unloaded(name) => network.config.as_ref()?.bridge_name(),
                None => None,
            })
            .collect();
        for (name, network) in networks {
            if network.live.is_some() || self.was_unloaded(name) {
                continue;
            }
            let Some(def) = network
                .config
                .as_ref()
                .filter(|def| def.forward_mode().has_managed_bridge())
            else {
                continue;
            };
            let Some(bridge) = def.bridge_name().filter(|bridge| !running.contains(bridge)) else {
                continue;
            };
            // Someone else's interface of that name is net-start's to report.
            if let Ok(Some(info)) = self.link.link_info(bridge).await
                && is_network_bridge(def, bridge, &info)
            {
                warn!(network = %name, bridge, "removing the bridge and rules of a network that ran without a status file (removed behind the daemon's back)");
                self.release(name, Some(def), bridge, Some(info.index))
                    .await;
            }
        }
    }

    /// Clears the way for a network whose status was discarded, unread: what it recorded
    /// is lost, so it cannot be adopted, and its bridge would block its next start. The
    /// rules of its bridge (`recorded_bridge`, else the definition's) go; the bridge
    /// itself only when the definition on disk names it and the kernel's has the
    /// definition's MAC address.
    pub(super) async fn release_unadoptable(
        &self,
        networks: &BTreeMap<String, Network>,
        name: &str,
        recorded_bridge: Option<&str>,
    ) {
        let defined = networks.get(name).and_then(|n| n.config.as_ref());
        let defined_bridge = defined
            .filter(|def| def.forward_mode().has_managed_bridge())
            .and_then(|def| Some((def, def.bridge_name()?)));
        let Some(bridge) = recorded_bridge.or(defined_bridge.map(|(_, bridge)| bridge)) else {
            return;
        };
        let ours = match defined_bridge {
            // What the status recorded is lost: only the kernel's word counts.
            Some((def, defined)) if defined == bridge => {
                self.bridge_it_created(def, bridge, store::STATUS_VERSION)
                    .await
            }
            _ => None,
        };
        if ours.is_some() {
            warn!(network = %name, bridge, "removing the bridge and rules of the network whose status was discarded");
        }
        // The definition on disk may not be the one it ran with.
        self.release(name, None, bridge, ours).await;
    }

    /// Best-effort removal of network `name`'s rules by bridge name, and of the bridge
    /// by `bridge_index`, the one checked to be its (recovery paths): a name may have
    /// gone to another interface since. `def`, the definition it ran with when known,
    /// tells whether it had rules: a host-bridge network's bridge may be one a running
    /// network manages, whose rules must stay.
    pub(super) async fn release(
        &self,
        name: &str,
        def: Option<&NetworkDef>,
        bridge: &str,
        bridge_index: Option<u32>,
    ) {
        // A macvtap network's status names no bridge: it has no rules either.
        if bridge.is_empty() {
            return;
        }
        if def.is_none_or(|def| firewall_rules(def).is_some())
            && let Err(e) = self.firewall.remove(bridge)
        {
            warn!(network = %name, bridge, "removing firewall rules: {}", error_chain(&e));
        }
        if let Some(index) = bridge_index
            && let Err(e) = self.link.delete_index(index, bridge).await
        {
            warn!(network = %name, bridge, "deleting bridge: {}", error_chain(&e));
        }
    }

    /// Starts the autostart networks once per boot. A daemon killed part way (a hook that
    /// hangs until systemd's SIGKILL, the OOM killer) leaves the rest to the next daemon;
    /// a daemon killed every time must still come up in the end, so the network a
    /// daemon keeps dying in is skipped after [`AUTOSTART_TRIES`] ([`Manager::autostart_all`]).
    pub(super) async fn autostart_once_per_boot(&self) {
        let under_way = match self.store.autostart_progress() {
            Ok(AutostartProgress::Done) => return,
            Ok(AutostartProgress::CutShort { under_way }) => {
                warn!(
                    "this boot's autostart was cut short; starting the networks it did not get to"
                );
                under_way
            }
            Ok(AutostartProgress::NotBegun) => {
                if let Err(e) = self.store.mark_autostart_begun() {
                    warn!("autostart may run again in this boot: {}", error_chain(&e));
                }
                Vec::new()
            }
            Err(e) => {
                warn!("autostart may run again in this boot: {}", error_chain(&e));
                Vec::new()
            }
        };
        self.autostart_all(&under_way).await;
        if let Err(e) = self.store.mark_autostarted() {
            warn!("autostart may run again in this boot: {}", error_chain(&e));
        }
    }

    /// Starts the autostart networks that are not running. `under_way` names the network
    /// whose start each earlier daemon of this boot died in: one may be what killed it
    /// (a hook that hangs past systemd's start timeout), so a network a daemon died
    /// starting [`AUTOSTART_TRIES`] times is skipped, and a daemon restarted after each
    /// such death still gets through the rest.
    pub(super) async fn autostart_all(&self, under_way: &[String]) {
        let names: Vec<String> = {
            let networks = self.networks.lock().await;
            networks
                .iter()
                .filter(|(_, n)| n.autostart && n.live.is_none())
                .map(|(name, _)| name.clone())
                .collect()
        };
        for name in names {
            let deaths = under_way.iter().filter(|dead| **dead == name).count();
            if deaths >= AUTOSTART_TRIES {
                warn!(network = %name, deaths, "not autostarted: daemons died while starting it in this boot; start it by hand");
                continue;
            }
            if let Err(e) = self.store.note_autostarting(under_way, Some(&name)) {
                warn!(network = %name, "{}", error_chain(&e));
            }
            match self.start(&name).await {
                Ok(_) => info!(network = %name, "autostarted"),
                Err(e) => warn!(network = %name, "autostart failed: {}", error_chain(&e)),
            }
            // Its start returned: a death from now on is not in it.
            if let Err(e) = self.store.note_autostarting(under_way, None) {
                warn!(network = %name, "{}", error_chain(&e));
            }
        }
    }

    /// Defines libvirt's `default` network (virbr0, 192.168.122.0/24, NAT, autostart),
    /// moving to the next free 192.168.N.0/24 if that subnet is taken on this host.
    pub(super) async fn define_default_network(&self) -> Result<(), Error> {
        let persistent = match self.networks.lock().await.get(DEFAULT_NETWORK) {
            None => false,
            // A first start cut short after the definition only lacks the autostart.
            Some(network) if network.config.is_some() => true,
            Some(_) => {
                // Adopted from a previous daemon whose definitions are gone (a new
                // config dir): it keeps running as it is, and its name is taken.
                warn!(
                    network = DEFAULT_NETWORK,
                    "a transient network named default is running; not defining the default network"
                );
                return Ok(());
            }
        };
        if !persistent {
            let used = self.prefixes.used_prefixes(&self.link).await?;
            let taken = |subnet: IpNet| {
                used.iter()
                    .any(|(prefix, _)| prefix.prefix_len() > 0 && overlap(*prefix, subnet))
            };
            let Some(octet) = (122..=254u8).find(|n| {
                let subnet = IpNet::V4(
                    ipnet::Ipv4Net::new([192, 168, *n, 0].into(), 24).unwrap_or_default(),
                );
                !taken(subnet)
            }) else {
                warn!("no free 192.168.N.0/24 subnet for the default network; not defining it");
                return Ok(());
            };
            if octet != 122 {
                info!(
                    "192.168.122.0/24 is in use on this host; the default network uses 192.168.{octet}.0/24"
                );
            }
            let bridge_free = !self.link.link_exists("virbr0").await?;
            self.define(&default_network_xml(octet, bridge_free))
                .await?;
        }
        self.set_autostart(DEFAULT_NETWORK, true).await?;
        info!(
            network = DEFAULT_NETWORK,
            "marked the default network to start at boot"
        );
        Ok(())
    }
}

/// libvirt's shipped `default` network on 192.168.`octet`.0/24.
pub(super) fn default_network_xml(octet: u8, with_virbr0: bool) -> String {
    let bridge = if with_virbr0 {
        "  <bridge name='virbr0'/>\n"
    } else {
        ""
    };
    format!(
        "<network>\n  <name>default</name>\n{bridge}  <forward/>\n  <ip address='192.168.{octet}.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='192.168.{octet}.2' end='192.168.{octet}.254'/>\n    </dhcp>\n  </ip>\n</network>\n"
    )
}
