//! The ports of macvtap networks: a macvtap per guest on a device of the network's pool,
//! allocated as libvirt's `networkAllocatePort` allocates them.
//!
//! Unlike a tap, a macvtap stays when its descriptors close. A handed-over one goes with
//! the process that asked for it (see [`crate::owner`]); the daemon deletes it when that
//! process exits, notices an exit it missed whenever it looks at the network's ports, and
//! after a restart watches the processes again. kvnet's macvtaps are marked twice: by a
//! link group set in the very message that creates them, and by an alias naming their
//! port and network set right after, so that a sweep at start-up deletes those that no
//! port claims, including one a crash left between the two messages, and nobody else's.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};
use uuid::Uuid;

use super::ports::{Links, NewPort, Port, Ports, Watch};
use super::{Error, Manager, Network, error_chain, macvtap_shaping_of};
use crate::link::macvtap::{self, MacvtapSpec};
use crate::link::tap::Tap;
use crate::link::{Link, LinkInfo, sysctl};
use crate::owner::Owner;
use crate::xml::{MacvtapMode, NetworkDef, PortDef, PortPlug};

/// What a port's macvtap is for, after the link layer's alias prefix.
fn purpose(port: Uuid, network: &str) -> String {
    format!("{port} of network {network}")
}

/// The port and network a macvtap's alias names (see [`purpose`]).
fn port_of(link: &LinkInfo) -> Option<(Uuid, &str)> {
    let (port, network) = macvtap::purpose_of(link)?.split_once(" of network ")?;
    Some((Uuid::parse_str(port).ok()?, network))
}

/// Whether `link` is kvnet's macvtap of port `port`.
pub(super) fn is_port_device(link: &LinkInfo, port: Uuid) -> bool {
    port_of(link).is_some_and(|(owner, _)| owner == port)
}

/// How many of `ports` sit on the pool device `dev`.
fn ports_on(ports: &Ports, dev: &str) -> usize {
    ports
        .values()
        .filter(|port| matches!(&port.def.plug, Some(PortPlug::Direct { dev: used, .. }) if used == dev))
        .count()
}

/// The device of a macvtap network's pool a new port goes on: the one with the fewest
/// ports (the first of those), or in passthrough mode the first with none, as libvirt's
/// `networkAllocatePort`, with its messages.
fn pool_device(
    network: &str,
    pool: &[String],
    ports: &Ports,
    mode: MacvtapMode,
) -> Result<String, Error> {
    if pool.is_empty() {
        return Err(Error::Internal(format!(
            "network '{network}' uses a direct mode, but has no forward dev and no interface pool"
        )));
    }
    let chosen = if mode == MacvtapMode::Passthrough {
        pool.iter().find(|dev| ports_on(ports, dev) == 0)
    } else {
        pool.iter().min_by_key(|dev| ports_on(ports, dev))
    };
    chosen.cloned().ok_or_else(|| {
        Error::Internal(format!(
            "network '{network}' requires exclusive access to interfaces, but none are available"
        ))
    })
}

/// The link layer's name for a macvtap mode.
fn link_mode(mode: MacvtapMode) -> macvtap::MacvtapMode {
    match mode {
        MacvtapMode::Bridge => macvtap::MacvtapMode::Bridge,
        MacvtapMode::Private => macvtap::MacvtapMode::Private,
        MacvtapMode::Vepa => macvtap::MacvtapMode::Vepa,
        MacvtapMode::Passthrough => macvtap::MacvtapMode::Passthrough,
    }
}

/// Whether the port still fits its network's definition (redefined while it was
/// stopped): its device in the pool, in the network's mode.
pub(super) fn fits(port: &Port, live: &NetworkDef) -> bool {
    match &port.def.plug {
        Some(PortPlug::Direct { dev, mode }) => {
            live.macvtap_mode() == Some(*mode) && live.forward.interfaces.contains(dev)
        }
        _ => false,
    }
}

/// Deletes the macvtap `ifindex` if it still is the one of port `port` (an ifindex is
/// not reused by the kernel, but a device moved in from another namespace keeps its own).
async fn delete_if_port_device(
    link: &Link,
    ifindex: u32,
    name: &str,
    port: Uuid,
) -> Result<bool, crate::link::Error> {
    match link.link_info_at(ifindex).await? {
        Some(device) if is_port_device(&device, port) => link.delete_index(ifindex, name).await,
        _ => Ok(false),
    }
}

impl Manager {
    /// [`Manager::create_port`] on a macvtap network: a macvtap with the guest's MAC on the
    /// pool's device with the fewest ports (in passthrough mode, one with none), as
    /// libvirt's `networkAllocatePort` picks it, up, with the port's `<bandwidth>`. Handed
    /// over (`holder`), its queue's descriptor is returned and the macvtap is deleted when
    /// the holder exits.
    pub(super) async fn create_macvtap(
        &self,
        name: &str,
        network: &mut Network,
        mut def: PortDef,
        mode: MacvtapMode,
        holder: Option<Owner>,
    ) -> Result<NewPort, Error> {
        let uuid = def.uuid.unwrap_or_default();
        // libvirt's domain start refuses this for a direct interface.
        if def.isolated == Some(true) {
            return Err(Error::Unsupported(format!(
                "interface {} - <port isolated='yes'/> is not supported for network interfaces with type='direct'",
                def.mac
            )));
        }
        let pool = network
            .live
            .as_ref()
            .map(|live| live.forward.interfaces.as_slice())
            .unwrap_or_default();
        let dev = pool_device(name, pool, &network.ports, mode)?;
        let failed = |source: crate::link::Error| Error::Port {
            network: name.to_owned(),
            source,
        };
        let purpose = purpose(uuid, name);
        let (ifindex, macvtap) = self
            .link
            .create_macvtap(&MacvtapSpec {
                lower: &dev,
                mac: def.mac.0,
                mode: link_mode(mode),
                purpose: &purpose,
            })
            .await
            .map_err(failed)?;
        // libvirt's network driver leaves a direct port's limits to QEMU, which applies
        // them to the macvtap; kvnetd is the one that has it here.
        let shaping = macvtap_shaping_of(def.bandwidth.as_ref());
        // A macvtap does not go with its descriptors: until it is recorded, every failure
        // deletes it.
        let opened = async {
            // The host has no business on the guest's link: its own IPv6 would claim the
            // guest's link-local address (DAD, MLD from the guest's MAC).
            sysctl::disable_port_ipv6(&macvtap)?;
            // A persistent port's queue is its VMM's to open.
            let queue = match &holder {
                Some(_) => Some(Tap::open_macvtap(
                    ifindex,
                    &macvtap,
                    &macvtap::alias(&purpose),
                    self.store.status_dir(),
                )?),
                None => None,
            };
            self.link
                .bring_up_macvtap(ifindex, &macvtap, def.mac.0)
                .await?;
            // shape() leaves no IFB when it fails.
            if !shaping.is_empty() {
                self.link.shape(ifindex, &macvtap, &shaping).await?;
            }
            Ok(queue)
        }
        .await;
        def.plug = Some(PortPlug::Direct { dev, mode });
        let port = Port {
            def,
            tap: macvtap,
            ifindex,
            persistent: holder.is_none(),
            holder: holder.as_ref().map(|holder| holder.id),
            owner: holder.clone(),
            watch: None,
        };
        let recorded = match opened {
            Ok(queue) => {
                network.ports.insert(uuid, port.clone());
                self.approve_port(name, network, &port.def)
                    .await
                    .and_then(|()| self.save_ports(name, network))
                    .map(|()| queue)
            }
            Err(e) => Err(failed(e)),
        };
        let queue = match recorded {
            Ok(queue) => queue,
            Err(e) => {
                network.ports.remove(&uuid);
                if let Err(cleanup) = self.link.delete_index(ifindex, &port.tap).await {
                    warn!(network = %name, macvtap = %port.tap, "{}", error_chain(&cleanup));
                }
                if shaping.ingress.is_some()
                    && let Err(cleanup) = self.link.delete_ifb_of(ifindex).await
                {
                    warn!(network = %name, macvtap = %port.tap, "{}", error_chain(&cleanup));
                }
                return Err(e);
            }
        };
        if let Some(holder) = holder
            && let Some(recorded) = network.ports.get_mut(&uuid)
        {
            recorded.watch = Some(self.delete_when_gone(name, uuid, holder, ifindex, &port.tap));
        }
        Ok(NewPort {
            summary: port.summary(name),
            tap: queue.map(Tap::into_fd),
        })
    }

    /// Deletes the macvtap `ifindex` of port `port` once `holder` has exited; the port's
    /// record goes at the next look at its network's ports, as a tap's does. The watch
    /// ends when the port's record does.
    fn delete_when_gone(
        &self,
        network: &str,
        port: Uuid,
        holder: Owner,
        ifindex: u32,
        macvtap: &str,
    ) -> Arc<Watch> {
        let link = self.link.clone();
        let network = network.to_owned();
        let macvtap = macvtap.to_owned();
        Watch::of(tokio::spawn(async move {
            let pid = holder.id.pid;
            if let Err(e) = holder.exited().await {
                warn!(network = %network, macvtap = %macvtap, "the macvtap stays until its port is looked at: {}", error_chain(&e));
                return;
            }
            match delete_if_port_device(&link, ifindex, &macvtap, port).await {
                Ok(true) => {
                    info!(network = %network, macvtap = %macvtap, pid, "deleted the macvtap of a process that exited");
                }
                // Deleted with its port or network meanwhile.
                Ok(false) => {}
                Err(e) => warn!(network = %network, macvtap = %macvtap, "{}", error_chain(&e)),
            }
        }))
    }

    /// Ends the handed-over macvtap ports whose process has exited without the daemon
    /// seeing it (its watch has not fired yet, or the daemon was away): their devices go
    /// now, so that a guest restarted at once finds its MAC and device free. With
    /// `rewatch` (a daemon restart), the processes still running are watched again. A
    /// process that cannot be looked at keeps its port.
    ///
    /// Returns the definitions of the ports that ended.
    pub(super) async fn end_exited_holders(
        &self,
        name: &str,
        network: &mut Network,
        rewatch: bool,
    ) -> Vec<PortDef> {
        let mut ended = Vec::new();
        for (uuid, port) in &mut network.ports {
            let Some(id) = port.holder else {
                continue;
            };
            let exited = if rewatch {
                match Owner::reopen(id) {
                    Ok(Some(holder)) => {
                        port.watch = Some(self.delete_when_gone(
                            name,
                            *uuid,
                            holder.clone(),
                            port.ifindex,
                            &port.tap,
                        ));
                        port.owner = Some(holder);
                        false
                    }
                    Ok(None) => true,
                    Err(e) => {
                        warn!(network = %name, port = %uuid, "keeping the port: {}", error_chain(&e));
                        false
                    }
                }
            } else {
                // A holder the daemon could not find again after a restart is not polled.
                port.owner.as_ref().is_some_and(Owner::has_exited)
            };
            if exited {
                info!(network = %name, port = %uuid, macvtap = %port.tap, pid = id.pid, "port ended: its process exited");
                ended.push(*uuid);
            }
        }
        if ended.is_empty() {
            return Vec::new();
        }
        let mut defs = Vec::new();
        for uuid in ended {
            let Some(port) = network.ports.remove(&uuid) else {
                continue;
            };
            if let Err(e) = delete_if_port_device(&self.link, port.ifindex, &port.tap, uuid).await {
                warn!(network = %name, macvtap = %port.tap, "{}", error_chain(&e));
            }
            defs.push(port.def);
        }
        self.save_ports_or_warn(name, network);
        defs
    }

    /// Refuses a live change that takes a device out of a running macvtap network's pool
    /// while ports sit on it, as libvirt does (with its message, double space included).
    pub(super) async fn check_pool_shrink(
        &self,
        networks: &mut BTreeMap<String, Network>,
        name: &str,
        new: &NetworkDef,
    ) -> Result<(), Error> {
        let Some(network) = networks.get_mut(name) else {
            return Ok(());
        };
        let Some(live) = &network.live else {
            return Ok(());
        };
        let removed: Vec<String> = live
            .forward
            .interfaces
            .iter()
            .filter(|dev| !new.forward.interfaces.contains(dev))
            .cloned()
            .collect();
        if removed.is_empty() {
            return Ok(());
        }
        self.prune_ports(name, network).await;
        for dev in removed {
            let users = ports_on(&network.ports, &dev);
            if users > 0 {
                return Err(Error::Xml(crate::xml::Error::UpdateRefused(format!(
                    "unable to delete interface '{dev}' in network '{name}'. It is currently being used  by {users} domains."
                ))));
            }
        }
        Ok(())
    }

    /// Deletes the macvtaps kvnet made that no port claims: those of networks that are
    /// gone, those a crash left between creating a port's macvtap and recording the port,
    /// and one a crash left before its alias (kvnet's link group, down). A record that
    /// cannot be read still claims its device, and a network whose ports file was set
    /// aside claims all of its own: their guests may be running. Returns the links left.
    pub(super) async fn delete_orphan_macvtaps(
        &self,
        networks: &BTreeMap<String, Network>,
        mut links: Links,
    ) -> Links {
        let mut orphans = Vec::new();
        for link in links
            .values()
            .filter(|link| macvtap::is_kvnet_macvtap(link))
        {
            let orphan = match port_of(link) {
                Some((port, network)) => match networks.get(network) {
                    None => true,
                    Some(known) => {
                        let claimed = known.ports.contains_key(&port)
                            || known
                                .unreadable_ports
                                .iter()
                                .any(|record| record.ifindex == link.index);
                        !claimed && !self.store.has_set_aside_ports(network)
                    }
                },
                // No alias: creation was cut short, so no port ever had it.
                None => !link.up && macvtap::purpose_of(link).is_none(),
            };
            if orphan {
                orphans.push((link.index, link.name.clone()));
            }
        }
        for (index, name) in orphans {
            match self.link.delete_index(index, &name).await {
                Ok(_) => {
                    info!(macvtap = %name, "deleted a macvtap no port claims");
                    links.remove(&index);
                }
                Err(e) => warn!(macvtap = %name, "{}", error_chain(&e)),
            }
        }
        links
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port_on(dev: &str) -> Port {
        let mut def = PortDef::from_xml(
            "<networkport><owner><name>vm</name><uuid>c0b6a7f5-4deb-4cf6-b4e7-eab4e3aafd4c</uuid></owner>\
             <mac address='52:54:00:00:00:01'/></networkport>",
        )
        .expect("port xml");
        def.plug = Some(PortPlug::Direct {
            dev: dev.to_owned(),
            mode: MacvtapMode::Bridge,
        });
        Port {
            def,
            tap: "macvtap0".into(),
            ifindex: 1,
            persistent: true,
            holder: None,
            owner: None,
            watch: None,
        }
    }

    #[test]
    fn the_pool_device_is_the_least_used_or_in_passthrough_a_free_one() {
        let pool = ["eth0".to_owned(), "eth1".to_owned(), "eth2".to_owned()];
        let ports: Ports = [("eth0", 1), ("eth0", 2), ("eth1", 3), ("eth2", 4)]
            .into_iter()
            .map(|(dev, n)| (Uuid::from_u128(n), port_on(dev)))
            .collect();
        // eth1 and eth2 have one port each: the first of them.
        assert_eq!(
            pool_device("lan", &pool, &ports, MacvtapMode::Vepa).ok(),
            Some("eth1".to_owned())
        );
        let busy = pool_device("lan", &pool, &ports, MacvtapMode::Passthrough)
            .expect_err("every device has a port");
        assert!(matches!(busy, Error::Internal(_)), "{busy:?}");
        let mut fewer = ports.clone();
        fewer.remove(&Uuid::from_u128(4));
        assert_eq!(
            pool_device("lan", &pool, &fewer, MacvtapMode::Passthrough).ok(),
            Some("eth2".to_owned())
        );
        assert!(matches!(
            pool_device("lan", &[], &ports, MacvtapMode::Bridge),
            Err(Error::Internal(_))
        ));
    }

    #[test]
    fn a_purpose_names_its_port_and_network() {
        let port = Uuid::new_v4();
        let link = LinkInfo {
            index: 5,
            name: "macvtap0".into(),
            kind: Some("macvtap".into()),
            mac: None,
            mtu: None,
            up: true,
            master: None,
            port: None,
            alias: Some(format!(
                "{}{}",
                macvtap::MACVTAP_ALIAS_PREFIX,
                purpose(port, "my lan")
            )),
            group: crate::link::KVNET_LINK_GROUP,
        };
        assert_eq!(port_of(&link), Some((port, "my lan")));
    }
}
