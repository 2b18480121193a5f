//! The registry of named networks and everything that changes them.
//!
//! One lock serialises every change. A start records its intent in the state dir
//! before touching the kernel and its success after, so a daemon killed half-way
//! can undo exactly what it left behind when it comes back ([`Manager::open`]).
//!
//! Beside this file: what the daemon does at start-up (`recovery`), the upkeep of the
//! running networks' firewall rules (`firewall_watch`), what a definition asks of the
//! kernel and servers (`configs`), and ports, macvtaps, bandwidth, hooks and the
//! host's DNS settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ipnet::IpNet;
use tokio::sync::{Mutex, mpsc};
use tracing::{info, instrument, warn};

use crate::api::types::NetworkSummary;
use crate::dhcp::DhcpServer;
use crate::dhcp6::Dhcp6Server;
use crate::dns::{self, DnsServer};
pub use crate::errors::error_chain;
use crate::events::{Events, Lifecycle};
use crate::firewall::Firewall;
use crate::hooks::{Hooks, Operation};
use crate::link::{self, Link, LinkInfo, PrefixCache, sysctl};
use crate::ra::RaServer;
use crate::service::lock;
use crate::store::{self, ConfigChange, Phase, STATUS_VERSION, Status, Store};
use crate::tftp::TftpServer;
use crate::xml::{self, Connections, ForwardMode, NetworkDef, RouteDef};

use configs::{
    bridge_addresses, bridge_spec, dhcp_config, dhcp6_config, dns_config, firewall_rules,
    ra_config, tftp_config,
};

mod bandwidth;
mod configs;
mod error;
mod firewall_watch;
mod hooks;
mod host_dns;
mod leases;
mod macvtaps;
mod ports;
mod recovery;
mod reload;
mod update;

use bandwidth::{macvtap_shaping_of, shaping_of};

pub use error::Error;
pub use ports::NewPort;
use ports::count_connections;

/// Where the manager keeps its files and what it does on first start.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Persistent definitions (`<config>/networks`).
    pub config_dir: PathBuf,
    /// Live status, on tmpfs in production (`<state>/networks`).
    pub state_dir: PathBuf,
    /// Define libvirt's `default` network when the config dir is new.
    pub define_default_network: bool,
    /// Where the host's resolvers are listed (`/etc/resolv.conf`): the upstreams of
    /// guests' DNS on networks that are not isolated and name no `<forwarder addr=>`.
    pub resolv_conf: PathBuf,
    /// The host's hosts file (`/etc/hosts`), whose names guests resolve, as libvirt's
    /// dnsmasq serves it; `None` serves none (dnsmasq's `no-hosts`).
    pub hosts_file: Option<PathBuf>,
    /// Where libvirt's dnsmasq kept its leases: see [`crate::libvirt_leases`]. `None`
    /// takes over none.
    pub libvirt_leases_dir: Option<PathBuf>,
}

/// A network the daemon knows: defined, running, or both.
#[derive(Debug)]
struct Network {
    /// The persistent definition; `None` for a transient network.
    config: Option<NetworkDef>,
    /// The definition it runs with; `None` when inactive.
    live: Option<NetworkDef>,
    /// Starts when the daemon starts at boot.
    autostart: bool,
    /// The network's DHCP server, while it is active and has `<dhcp>`.
    dhcp: Option<DhcpServer>,
    /// The network's DHCPv6 server, while it is active and its IPv6 `<ip>` has `<dhcp>`.
    dhcp6: Option<Dhcp6Server>,
    /// The network's DNS server, while it is active with DNS enabled.
    dns: Option<DnsServer>,
    /// The network's router advertisements, while it is active with an IPv6 `<ip>`.
    ra: Option<RaServer>,
    /// The network's TFTP server, while it is active with `<tftp root=>`.
    tftp: Option<TftpServer>,
    /// The guests' taps: on its bridge while it is active, detached and waiting for its
    /// next start while it is not.
    ports: ports::Ports,
    /// Port records this daemon cannot read (a newer daemon's, or damaged): kept as they
    /// are and written back, so that the devices they name stay claimed.
    unreadable_ports: Vec<store::PortStatus>,
}

impl Network {
    /// A defined, inactive network.
    fn defined(def: NetworkDef, autostart: bool) -> Network {
        Network {
            config: Some(def),
            autostart,
            ..Network::empty()
        }
    }

    /// A running network without a definition on disk.
    fn transient(def: NetworkDef, servers: Servers) -> Network {
        let mut network = Network::empty();
        network.run(def, servers);
        network
    }

    /// Neither defined nor running, without servers or ports.
    fn empty() -> Network {
        Network {
            config: None,
            live: None,
            autostart: false,
            dhcp: None,
            dhcp6: None,
            dns: None,
            ra: None,
            tftp: None,
            ports: ports::Ports::new(),
            unreadable_ports: Vec::new(),
        }
    }

    /// Marks the network active with `def` and `servers`.
    fn run(&mut self, def: NetworkDef, servers: Servers) {
        self.live = Some(def);
        self.dhcp = servers.dhcp;
        self.dhcp6 = servers.dhcp6;
        self.dns = servers.dns;
        self.ra = servers.ra;
        self.tftp = servers.tftp;
    }

    /// Takes the servers away, to stop them.
    fn take_servers(&mut self) -> Servers {
        Servers {
            dhcp: self.dhcp.take(),
            dhcp6: self.dhcp6.take(),
            dns: self.dns.take(),
            ra: self.ra.take(),
            tftp: self.tftp.take(),
        }
    }

    /// The definition that describes it now: the running one if active.
    fn current(&self) -> Option<&NetworkDef> {
        self.live.as_ref().or(self.config.as_ref())
    }

    fn summary(&self) -> Option<NetworkSummary> {
        let def = self.current()?;
        Some(NetworkSummary {
            name: def.name.clone(),
            uuid: def.uuid.unwrap_or_default(),
            active: self.live.is_some(),
            persistent: self.config.is_some(),
            autostart: self.autostart,
            bridge: def.bridge_name().map(str::to_owned),
            title: def.title.clone(),
        })
    }
}

/// The registry of networks and the handles to change the kernel.
#[derive(Debug)]
pub struct Manager {
    networks: Mutex<BTreeMap<String, Network>>,
    /// The names of the definitions on disk that could not be loaded at start (bad XML,
    /// unreadable), and of the networks whose status could not be read then: their lease
    /// files, ports, devices and firewall chains are kept, for when the file is mended,
    /// as libvirt skips a bad file and removes nothing.
    unloaded: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Those of `unloaded` whose status could not be read: they may be running, and
    /// stay in `unloaded` whatever becomes of their definition until a restart.
    unread_statuses: std::sync::Mutex<std::collections::BTreeSet<String>>,
    store: Store,
    link: Link,
    /// The host's used prefixes, for the collision check of every start.
    prefixes: Arc<PrefixCache>,
    firewall: Box<dyn Firewall>,
    /// See [`ManagerConfig::resolv_conf`].
    resolv_conf: PathBuf,
    /// The host's resolvers as last handed to a network's DNS server, for the follower to
    /// tell a change from what the networks have.
    handed_resolvers: std::sync::Mutex<Option<Vec<std::net::SocketAddr>>>,
    /// See [`ManagerConfig::hosts_file`].
    hosts_file: Option<PathBuf>,
    /// See [`ManagerConfig::libvirt_leases_dir`].
    libvirt_leases_dir: Option<PathBuf>,
    /// The hosts file's entries as last read.
    host_names: std::sync::Mutex<Arc<dns::SharedHosts>>,
    /// The network hook scripts of the config dir.
    hooks: Hooks,
    /// The ifindexes of the taps and macvtaps the kernel deletes, until
    /// [`Manager::follow_port_exits`] takes them.
    gone_ports: std::sync::Mutex<Option<mpsc::Receiver<u32>>>,
    /// Where each change's lifecycle event goes (published under the lock, so that
    /// subscribers see them in the order the changes were made).
    events: Events,
    /// Other tables' drop policies found at the last look, already warned about.
    warned_drop_policies: std::sync::Mutex<Vec<String>>,
    /// The last look for foreign drop policies failed: the next firewall watch looks
    /// again even if the ruleset did not change.
    drop_policy_check_due: AtomicBool,
}

/// The DHCP, DHCPv6, DNS, router advertisement and TFTP servers of a running network.
#[derive(Debug, Default)]
struct Servers {
    dhcp: Option<DhcpServer>,
    dhcp6: Option<Dhcp6Server>,
    dns: Option<DnsServer>,
    ra: Option<RaServer>,
    tftp: Option<TftpServer>,
}

impl Servers {
    /// Stops them, DNS before DHCP and DHCPv6 (it reads their leases).
    async fn stop(self) {
        if let Some(server) = self.tftp {
            server.stop().await;
        }
        if let Some(server) = self.ra {
            server.stop().await;
        }
        if let Some(server) = self.dns {
            server.stop().await;
        }
        if let Some(server) = self.dhcp {
            server.stop().await;
        }
        if let Some(server) = self.dhcp6 {
            server.stop().await;
        }
    }
}

/// One kernel change made by a start, and how to take it back.
#[derive(Debug)]
enum Undo {
    /// The bridge this start created, by index: its name may be someone else's by the
    /// time the start fails.
    DeleteBridge(u32, String),
    RemoveRules(String),
    /// The IFB device shaping the ingress of the bridge with this ifindex: it outlives
    /// the bridge.
    DeleteIfbOf(u32),
}

impl Manager {
    /// Loads definitions and live status, reconciles them with the kernel, defines the
    /// `default` network on first start, and autostarts networks once per boot.
    pub async fn open(
        config: ManagerConfig,
        firewall: Box<dyn Firewall>,
    ) -> Result<Manager, Error> {
        let store = Store::new(&config.config_dir, &config.state_dir);
        let fresh = store.is_fresh();
        store.create_dirs()?;
        for path in store.remove_leftovers()? {
            warn!(path = %path.display(), "removed a leftover: the temporary file of an interrupted write, or an autostart link whose definition is gone");
        }
        for path in link::tap::remove_stale_private_nodes(store.status_dir()) {
            warn!(path = %path.display(), "removed a macvtap device node left by a daemon killed while opening it");
        }
        let link = Link::new()?;
        // Before adopting: the IFBs of links deleted from here on go at once.
        let gone_ports = link
            .follow_deletions()
            .map_err(|e| {
                warn!(
                    "shaped taps' ifb devices, and the ports of exited guests, will wait for the next look: {}",
                    error_chain(&e)
                );
            })
            .ok();
        let manager = Manager {
            networks: Mutex::new(BTreeMap::new()),
            unloaded: std::sync::Mutex::default(),
            unread_statuses: std::sync::Mutex::default(),
            store,
            link,
            prefixes: Arc::new(PrefixCache::new()?),
            firewall,
            resolv_conf: config.resolv_conf,
            handed_resolvers: std::sync::Mutex::new(None),
            host_names: std::sync::Mutex::new(Arc::new(dns::SharedHosts::new(
                config
                    .hosts_file
                    .as_deref()
                    .map(|path| {
                        dns::HostsFile::read(path).unwrap_or_else(|e| {
                            warn!(path = %path.display(), error = %e, "guests get no names from the hosts file until it can be read");
                            dns::HostsFile::default()
                        })
                    })
                    .unwrap_or_default(),
            ))),
            hosts_file: config.hosts_file,
            libvirt_leases_dir: config.libvirt_leases_dir,
            hooks: Hooks::new(&config.config_dir.join("hooks")),
            gone_ports: std::sync::Mutex::new(gone_ports),
            events: Events::new(),
            warned_drop_policies: std::sync::Mutex::default(),
            drop_policy_check_due: AtomicBool::new(false),
        };
        manager.load_configs().await?;
        manager.adopt_running().await?;
        manager.forget_orphan_leases().await?;
        if fresh {
            // A daemon that will not start is worse than a host without `default`; the
            // next start, a first start still, tries again.
            let defined = !config.define_default_network
                || manager
                    .define_default_network()
                    .await
                    .inspect_err(|e| {
                        warn!(
                            network = DEFAULT_NETWORK,
                            "cannot define the default network: {}",
                            error_chain(e)
                        );
                    })
                    .is_ok();
            if defined {
                manager.store.first_start_done()?;
            }
        }
        manager.reconcile_firewall().await;
        manager.autostart_once_per_boot().await;
        Ok(manager)
    }

    /// Starts an adopted network's servers again (the lease file carries every binding
    /// across the restart). One that cannot start is logged and left out: the network
    /// keeps running, and its guests keep their traffic.
    fn restart_servers(&self, def: &NetworkDef, networks: &BTreeMap<String, Network>) -> Servers {
        fn logged<T>(network: &str, what: &str, started: Result<Option<T>, Error>) -> Option<T> {
            started.unwrap_or_else(|e| {
                warn!(network, "{what} not restarted: {}", error_chain(&e));
                None
            })
        }
        let network = def.name.as_str();
        let dhcp = logged(network, "DHCP server", self.start_dhcp(def));
        let dhcp6 = logged(network, "DHCPv6 server", self.start_dhcp6(def));
        let dns = logged(
            network,
            "DNS server",
            self.start_dns(def, lease_names(dhcp.as_ref(), dhcp6.as_ref()), networks),
        );
        Servers {
            dhcp,
            dhcp6,
            dns,
            ra: logged(network, "router advertisements", self.start_ra(def)),
            tftp: logged(network, "TFTP server", self.start_tftp(def)),
        }
    }

    /// Removes the lease files of a network that is gone. Done or not, the network is; the
    /// daemon tries again each time it starts.
    fn delete_leases_or_warn(&self, name: &str) {
        if let Err(e) = self.store.delete_leases(name) {
            warn!(network = %name, "its lease file stays on disk (the daemon tries again when it next starts; remove it by hand if this persists): {}", error_chain(&e));
        }
    }

    /// Whether `name`'s definition is on disk but could not be loaded at start.
    fn was_unloaded(&self, name: &str) -> bool {
        lock(&self.unloaded).contains(name)
    }

    /// Adds a `<route>` of the network through its bridge (one without a destination was
    /// refused at define).
    async fn add_static_route(&self, bridge: &str, route: &RouteDef) -> Result<(), link::Error> {
        let Some(destination) = route.destination() else {
            return Ok(());
        };
        self.link
            .add_route(
                bridge,
                destination,
                route.gateway,
                route.metric.unwrap_or(1),
            )
            .await
    }

    /// When a running network started, from its status file (now if unreadable).
    fn started_at(&self, name: &str) -> i64 {
        self.store.load_status(name).map_or_else(
            |_| chrono::Utc::now().timestamp(),
            |status| status.started_at,
        )
    }

    /// The lifecycle events of every change from now on (libvirt's network events).
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn publish(&self, network: &NetworkSummary, lifecycle: Lifecycle) {
        self.events.publish(&network.name, network.uuid, lifecycle);
    }

    /// Every network, in name order.
    pub async fn list(&self) -> Vec<NetworkSummary> {
        self.networks
            .lock()
            .await
            .values()
            .filter_map(Network::summary)
            .collect()
    }

    /// One network by name or UUID.
    pub async fn get(&self, key: &str) -> Result<NetworkSummary, Error> {
        let networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        summary_of(&networks, &name)
    }

    /// Defines a persistent network, or redefines an existing one (the change applies
    /// at its next start if it is running).
    #[instrument(skip_all, fields(network = tracing::field::Empty))]
    pub async fn define(&self, xml: &str) -> Result<NetworkSummary, Error> {
        let mut def = NetworkDef::from_xml(xml)?;
        tracing::Span::current().record("network", def.name.as_str());
        def.check_dhcp_hosts_usable()?;
        let mut networks = self.networks.lock().await;
        self.check_identity(&networks, &def)?;
        self.complete_and_check_bridge(&networks, &mut def).await?;
        // A file on disk for a network not known as persistent: one that could not be
        // loaded.
        let replaces_unloadable = networks
            .get(&def.name)
            .is_none_or(|network| network.config.is_none())
            && self.store.config_path(&def.name).exists();
        // A running transient network becomes persistent: its status says so first, and
        // says so no more if the definition cannot be written.
        let live = networks
            .get(&def.name)
            .filter(|n| n.config.is_none())
            .and_then(|n| n.live.as_ref());
        let started_at = live.map(|_| self.started_at(&def.name));
        if let (Some(live), Some(started_at)) = (live, started_at) {
            self.store
                .save_status(&def.name, &active_status(live, true, started_at))?;
        }
        // The file it replaces is kept: an edit someone got wrong is not lost.
        let kept = match replaces_unloadable
            .then(|| self.store.set_aside_unloadable_config(&def.name))
        {
            Some(Ok(kept)) => Some(kept),
            Some(Err(e)) => {
                warn!(network = %def.name, "replacing a definition file that could not be loaded without keeping it: {}", error_chain(&e));
                None
            }
            None => None,
        };
        let saved = self
            .store
            .change_config_off_thread(ConfigChange::Save {
                network: def.name.clone(),
                xml: def.to_config_file(),
            })
            .await;
        if let Err(e) = saved {
            if let Some(aside) = &kept
                && let Err(restore) = self.store.restore_unloadable_config(&def.name, aside)
            {
                warn!(network = %def.name, "{}", error_chain(&restore));
            }
            if let (Some(live), Some(started_at)) = (live, started_at)
                && let Err(restore) = self
                    .store
                    .save_status(&def.name, &active_status(live, false, started_at))
            {
                warn!(network = %def.name, "{}", error_chain(&restore));
            }
            return Err(e.into());
        }
        info!(network = %def.name, "defined");
        self.mended(&def.name);
        if replaces_unloadable {
            // Its leases and ports were kept for when it was mended; they are now this
            // definition's, as with libvirt, which overwrites such a file too.
            let kept =
                kept.map_or_else(String::new, |kept| format!(" (kept as {})", kept.display()));
            warn!(network = %def.name, "replaced a definition file that could not be loaded{kept}");
        }
        let name = def.name.clone();
        match networks.get_mut(&name) {
            Some(network) => network.config = Some(def),
            None => {
                // A definition that could not be loaded may have left its autostart
                // link: what is on disk is what a restart will find.
                let autostart = self.store.has_autostart_link(&name);
                networks.insert(name.clone(), Network::defined(def, autostart));
            }
        }
        let summary = summary_of(&networks, &name)?;
        self.publish(&summary, Lifecycle::Defined);
        Ok(summary)
    }

    /// Creates and starts a transient network. As in libvirt, the XML of a defined,
    /// inactive network (same name and UUID) starts that network
    /// with this XML as its running definition; its persistent one stays as it is.
    #[instrument(skip_all, fields(network = tracing::field::Empty))]
    pub async fn create(&self, xml: &str) -> Result<NetworkSummary, Error> {
        let mut def = NetworkDef::from_xml(xml)?;
        tracing::Span::current().record("network", def.name.as_str());
        def.check_dhcp_hosts_usable()?;
        let mut networks = self.networks.lock().await;
        self.check_identity(&networks, &def)?;
        if networks.get(&def.name).is_some_and(|n| n.live.is_some()) {
            return Err(Error::OperationInvalid(format!(
                "network is already active as '{}'",
                def.name
            )));
        }
        self.complete_and_check_bridge(&networks, &mut def).await?;
        let name = def.name.clone();
        let persistent = networks.get(&name).is_some_and(|n| n.config.is_some());
        let servers = self.bring_up(&networks, &mut def, persistent).await?;
        match networks.get_mut(&name) {
            Some(network) => {
                network.run(def, servers);
                self.replug_ports(&name, network).await;
            }
            None => {
                networks.insert(name.clone(), Network::transient(def, servers));
            }
        }
        let summary = summary_of(&networks, &name)?;
        self.publish(&summary, Lifecycle::Started);
        Ok(summary)
    }

    /// Refuses a name or UUID that belongs to another network, with libvirt's messages.
    /// A definition with the name of a known network must carry that network's UUID, as
    /// libvirt requires: without one it would get a new UUID, and a name may belong to
    /// one UUID only.
    fn check_identity(
        &self,
        networks: &BTreeMap<String, Network>,
        def: &NetworkDef,
    ) -> Result<(), Error> {
        if let Some(uuid) = def.uuid {
            let holder = networks
                .values()
                .filter_map(Network::current)
                .find(|other| other.uuid == Some(uuid) && other.name != def.name);
            if let Some(other) = holder {
                return Err(Error::AlreadyExists(format!(
                    "network '{}' is already defined with uuid {uuid}",
                    other.name
                )));
            }
        }
        let Some(existing) = networks.get(&def.name).and_then(Network::current) else {
            return Ok(());
        };
        match existing.uuid {
            Some(known) if def.uuid != Some(known) => Err(Error::AlreadyExists(format!(
                "network '{}' already exists with uuid {known}",
                def.name
            ))),
            _ => Ok(()),
        }
    }

    /// Fills in UUID, MAC and bridge name, and refuses, for a network that manages its
    /// bridge, a bridge name that another network uses or that names an interface this
    /// network does not own. Networks on a host bridge may share it, as in libvirt.
    async fn complete_and_check_bridge(
        &self,
        networks: &BTreeMap<String, Network>,
        def: &mut NetworkDef,
    ) -> Result<(), Error> {
        // Both definitions of a running network count: the one it runs with and the
        // one it will start with next (as libvirt checks).
        let other_bridges: Vec<&str> = networks
            .values()
            .flat_map(|other| [other.live.as_ref(), other.config.as_ref()])
            .flatten()
            .filter(|other| other.name != def.name)
            .filter_map(NetworkDef::bridge_name)
            .collect();
        let owns_bridge = def.forward_mode().has_managed_bridge();
        match def.bridge_name() {
            None if owns_bridge => {
                let name = self
                    .free_bridge_name(xml::DEFAULT_BRIDGE_TEMPLATE, &other_bridges)
                    .await?;
                def.bridge.name = Some(name);
            }
            Some(template) if owns_bridge && xml::is_bridge_template(template) => {
                let name = self.free_bridge_name(template, &other_bridges).await?;
                def.bridge.name = Some(name);
            }
            Some(bridge) if owns_bridge && other_bridges.contains(&bridge) => {
                return Err(Error::Conflict(format!(
                    "bridge name '{bridge}' already in use."
                )));
            }
            // A host bridge (forward mode='bridge') must exist; ours must not, unless it is
            // this running network's own.
            Some(bridge) if owns_bridge && self.link.link_exists(bridge).await? => {
                let own = networks
                    .get(&def.name)
                    .and_then(|n| n.live.as_ref())
                    .and_then(|d| d.bridge_name());
                if own != Some(bridge) {
                    return Err(Error::Conflict(format!(
                        "bridge name '{bridge}' already in use by an existing interface"
                    )));
                }
            }
            Some(_) | None => {}
        }
        def.fill_defaults(|_| false)?;
        Ok(())
    }

    /// libvirt's bridge name allocation: the `template`'s name (`virbrN` by default) with
    /// the lowest N that no other network uses and no interface has. Asks the kernel one
    /// name at a time, which stays cheap with thousands of links (a full link dump does
    /// not).
    async fn free_bridge_name(
        &self,
        template: &str,
        other_bridges: &[&str],
    ) -> Result<String, Error> {
        for candidate in xml::bridge_names(template) {
            if !other_bridges.contains(&candidate.as_str())
                && !self.link.link_exists(&candidate).await?
            {
                return Ok(candidate);
            }
        }
        Err(xml::Error::BridgeIdsExhausted(template.to_owned()).into())
    }

    /// Starts a defined network.
    #[instrument(skip_all, fields(network = %key))]
    pub async fn start(&self, key: &str) -> Result<NetworkSummary, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let network = &networks[&name];
        if network.live.is_some() {
            return Err(Error::OperationInvalid("network is already active".into()));
        }
        let mut def = network
            .config
            .clone()
            .ok_or_else(|| Error::OperationInvalid("network has no definition".into()))?;
        if is_incomplete(&def) {
            // Written by hand, and its bridge was taken when the daemon loaded it.
            self.complete_and_check_bridge(&networks, &mut def).await?;
            self.store
                .change_config_off_thread(ConfigChange::Save {
                    network: def.name.clone(),
                    xml: def.to_config_file(),
                })
                .await?;
            if let Some(network) = networks.get_mut(&name) {
                network.config = Some(def.clone());
            }
        }
        let servers = self.bring_up(&networks, &mut def, true).await?;
        if let Some(network) = networks.get_mut(&name) {
            network.run(def, servers);
            self.replug_ports(&name, network).await;
        }
        let summary = summary_of(&networks, &name)?;
        self.publish(&summary, Lifecycle::Started);
        Ok(summary)
    }

    /// Checks `def` against the host and the other networks, fills in its live defaults,
    /// then creates its kernel objects and starts its DHCP and DNS servers, all or nothing.
    async fn bring_up(
        &self,
        networks: &BTreeMap<String, Network>,
        def: &mut NetworkDef,
        persistent: bool,
    ) -> Result<Servers, Error> {
        if let Some(zone) = &def.bridge.zone {
            // libvirt fails here too unless firewalld runs; kvnet never talks to it.
            return Err(Error::Unsupported(format!(
                "zone '{zone}' requested for network '{}', but kvnet does not put bridges \
                 in firewalld zones (its own nftables rules stand in for them); remove \
                 zone= from <bridge>",
                def.name
            )));
        }
        // Before the checks, as libvirt runs it: a script may create what the network
        // needs (a host bridge, a pool's device). Its failure cancels the start.
        self.run_hooks(def, &Connections::default(), Operation::Start)
            .await?;
        // After the script, which sees the definition as libvirt hands it over: without
        // the NAT port range libvirt adds only as the network starts.
        def.fill_live_defaults();
        let def = &*def;
        // A macvtap network has no bridge, and nothing in the kernel until its ports.
        let bridge = match def.macvtap_mode() {
            Some(_) => String::new(),
            None => def
                .bridge_name()
                .ok_or_else(|| {
                    Error::OperationInvalid(format!("network '{}' has no bridge name", def.name))
                })?
                .to_owned(),
        };
        if def.macvtap_mode().is_some() {
            self.warn_about_missing_pool_devices(def).await?;
        } else {
            self.check_collisions(networks, def, &bridge).await?;
        }

        let xml = def.to_xml();
        let started_at = chrono::Utc::now().timestamp();
        let status = |phase| Status {
            version: STATUS_VERSION,
            phase,
            bridge: bridge.clone(),
            persistent,
            xml: xml.clone(),
            started_at,
            pending_config: None,
        };
        // A lease journal this start creates goes with a failed start; an older one
        // holds the leases of an earlier run.
        let had_leases = (
            self.store.lease_path(&def.name).exists(),
            self.store.lease6_path(&def.name).exists(),
        );
        self.store
            .save_status(&def.name, &status(Phase::Starting))?;
        let taken = match had_leases {
            (false, false) => self.take_over_libvirt_leases(def, &bridge),
            _ => None,
        };
        let mut undo = Vec::new();
        let _hosts_zone = self.hosts_zone_for(def).await;
        let result = async {
            self.apply_kernel_state(def, &bridge, &mut undo).await?;
            let mut servers = Servers {
                dhcp: self.start_dhcp(def)?,
                ..Servers::default()
            };
            let started = self
                .start_dhcp6(def)
                .map(|dhcp6| servers.dhcp6 = dhcp6)
                .and_then(|()| {
                    let names = lease_names(servers.dhcp.as_ref(), servers.dhcp6.as_ref());
                    self.start_dns(def, names, networks)
                })
                .map(|dns| servers.dns = dns)
                .and_then(|()| self.start_ra(def))
                .map(|ra| servers.ra = ra)
                .and_then(|()| self.start_tftp(def))
                .map(|tftp| servers.tftp = tftp);
            // The network runs: the scripts may still refuse it, as in libvirt.
            let started = match started {
                Ok(()) => {
                    self.run_hooks(def, &Connections::default(), Operation::Started)
                        .await
                }
                Err(e) => Err(e),
            }
            .and_then(|()| {
                self.store
                    .save_status(&def.name, &status(Phase::Active))
                    .map_err(|e| failed_step(def, "recording the network as active", e))
            });
            match started {
                Ok(()) => Ok(servers),
                Err(e) => {
                    servers.stop().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Ok(servers) => {
                if let Some(taken) = taken
                    && let Err(e) = taken.record()
                {
                    warn!(network = %def.name, "libvirt's leases will be taken over again at the next start: {}", error_chain(&e));
                }
                info!(network = %def.name, bridge = def.bridge_name().unwrap_or("-"), "started");
                self.catch_up_prefixes_when_idle();
                Ok(servers)
            }
            Err(e) => {
                self.roll_back(undo).await;
                // Each family's file only if this start created it.
                let (had4, had6) = had_leases;
                let leases4 = if had4 {
                    Ok(())
                } else {
                    self.store.delete_leases4(&def.name)
                };
                let leases6 = if had6 {
                    Ok(())
                } else {
                    self.store.delete_leases6(&def.name)
                };
                for cleanup in [self.store.delete_status(&def.name), leases4, leases6] {
                    if let Err(cleanup) = cleanup {
                        warn!(network = %def.name, "{}", error_chain(&cleanup));
                    }
                }
                Err(e)
            }
        }
    }

    /// Takes over the leases libvirt's dnsmasq gave on `bridge` ([`crate::libvirt_leases`]),
    /// once, for a network starting without leases of its own; what to record once it
    /// started. A file that cannot be read is only a warning: the network starts without
    /// them, as it would have anyway.
    fn take_over_libvirt_leases(
        &self,
        def: &NetworkDef,
        bridge: &str,
    ) -> Option<crate::libvirt_leases::Taken> {
        let dir = self.libvirt_leases_dir.as_ref()?;
        if !def.ips.iter().any(xml::IpDef::has_dhcp) {
            return None;
        }
        let status = crate::libvirt_leases::status_path(dir, bridge);
        match crate::libvirt_leases::import_once(
            &status,
            &self.store.libvirt_leases_taken(&def.name),
            &self.store.lease_path(&def.name),
            &self.store.lease6_path(&def.name),
            crate::service::unix_now(),
        ) {
            Ok((imported, taken)) => {
                if imported != crate::libvirt_leases::Imported::default() {
                    info!(network = %def.name, v4 = imported.v4, v6 = imported.v6, from = %status.display(), "took over the leases libvirt's dnsmasq gave");
                }
                taken
            }
            Err(e) => {
                warn!(network = %def.name, "taking over libvirt's leases: {}", error_chain(&e));
                None
            }
        }
    }

    /// Starts the DHCP server of a network whose first IPv4 `<ip>` has `<dhcp>`.
    fn start_dhcp(&self, def: &NetworkDef) -> Result<Option<DhcpServer>, Error> {
        let Some(config) = dhcp_config(def) else {
            return Ok(None);
        };
        DhcpServer::start(config, self.store.lease_path(&def.name), self.link.clone())
            .map(Some)
            .map_err(|e| failed_step(def, "starting the DHCP server", e))
    }

    /// Starts the DHCPv6 server of a network whose IPv6 `<ip>` has `<dhcp>`.
    fn start_dhcp6(&self, def: &NetworkDef) -> Result<Option<Dhcp6Server>, Error> {
        let Some(config) = dhcp6_config(def) else {
            return Ok(None);
        };
        Dhcp6Server::start(config, self.store.lease6_path(&def.name), self.link.clone())
            .map(Some)
            .map_err(|e| failed_step(def, "starting the DHCPv6 server", e))
    }

    /// Starts the DNS server of a network with DNS enabled; it resolves the hostnames
    /// `lease_names` reads. `networks` are the others, whose addresses are never upstreams.
    fn start_dns(
        &self,
        def: &NetworkDef,
        lease_names: Option<dns::LeaseSource>,
        networks: &BTreeMap<String, Network>,
    ) -> Result<Option<DnsServer>, Error> {
        let Some(config) = dns_config(def, networks, &self.host_dns()) else {
            return Ok(None);
        };
        DnsServer::start(config, lease_names)
            .map(Some)
            .map_err(|e| failed_step(def, "starting the DNS server", e))
    }

    /// Starts the router advertisements of a network with an IPv6 `<ip>` on its own bridge.
    fn start_ra(&self, def: &NetworkDef) -> Result<Option<RaServer>, Error> {
        let Some(config) = ra_config(def) else {
            return Ok(None);
        };
        RaServer::start(config)
            .map(Some)
            .map_err(|e| failed_step(def, "starting router advertisements", e))
    }

    /// Starts the TFTP server of a network with `<tftp root=>` on an IPv4 `<ip>`.
    fn start_tftp(&self, def: &NetworkDef) -> Result<Option<TftpServer>, Error> {
        let Some(config) = tftp_config(def) else {
            return Ok(None);
        };
        TftpServer::start(config)
            .map(Some)
            .map_err(|e| failed_step(def, "starting the TFTP server", e))
    }

    /// As libvirt, a macvtap network's pool is not checked until a port needs a device
    /// (one may be plugged in later); a missing one is worth a word at the start.
    async fn warn_about_missing_pool_devices(&self, def: &NetworkDef) -> Result<(), Error> {
        for dev in &def.forward.interfaces {
            if !self.link.link_exists(dev).await? {
                warn!(network = %def.name, "the forward interface {dev} does not exist (yet)");
            }
        }
        Ok(())
    }

    async fn check_collisions(
        &self,
        networks: &BTreeMap<String, Network>,
        def: &NetworkDef,
        bridge: &str,
    ) -> Result<(), Error> {
        if def.forward_mode() == ForwardMode::Bridge {
            // As libvirt, a host bridge made later (by ifupdown or NetworkManager after
            // the daemon's boot-time autostart, or by a `start` hook) is fine: a port
            // asked for before then is refused, naming the bridge.
            return match self.link.link_info(bridge).await? {
                Some(info) if info.is_bridge() => Ok(()),
                Some(_) => Err(Error::Conflict(format!(
                    "interface '{bridge}' is not a bridge"
                ))),
                None => {
                    warn!(network = %def.name, "the host bridge {bridge} does not exist (yet)");
                    Ok(())
                }
            };
        }
        let forwards = matches!(
            def.forward_mode(),
            ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open
        );
        if forwards && !def.ipv6_subnets().is_empty() {
            // Turning IPv6 forwarding on makes the kernel flush routes learned from router
            // advertisements on interfaces without accept_ra=2; libvirt refuses, and so do we.
            if let Some(device) = self.link.ipv6_forwarding_blockers().await?.first() {
                return Err(Error::Conflict(format!(
                    "Check the host setup: interface {device} has kernel autoconfigured IPv6 routes and \
                     enabling forwarding without accept_ra set to 2 will cause the kernel to flush them, breaking networking."
                )));
            }
        }
        let ours: Vec<IpNet> = def
            .ipv4_subnets()
            .into_iter()
            .map(IpNet::V4)
            .chain(def.ipv6_subnets().into_iter().map(IpNet::V6))
            .collect();
        // A route to exactly one of our subnets first: it gets libvirt's message. The
        // default route overlaps everything; libvirt ignores it too.
        let clash = self
            .prefixes
            .best_used(&self.link, |used| {
                if ours.iter().any(|subnet| subnet.trunc() == used.trunc()) {
                    Some(0)
                } else if used.prefix_len() > 0 && ours.iter().any(|subnet| overlap(*subnet, *used))
                {
                    Some(1)
                } else {
                    None
                }
            })
            .await?;
        if let Some((used, ifindex)) = clash {
            let info = self.link.link_info_at(ifindex).await?;
            let device = info
                .as_ref()
                .map_or_else(|| format!("#{ifindex}"), |info| info.name.clone());
            // The refusal keeps libvirt's words; the log says what is likely going on.
            if let Some(info) = &info
                && has_network_mac(def, &device, info)
                && !info.in_kvnet_group()
            {
                warn!(network = %def.name, bridge = %device, "interface {device} has this network's MAC address but is not kvnet's: another manager (libvirt?) still runs the network; stop it there (virsh net-destroy {}) before starting it here", def.name);
            }
            // A route to exactly this subnet is the one collision libvirt detects; tools
            // look for its words.
            if ours.iter().any(|subnet| subnet.trunc() == used.trunc()) {
                return Err(Error::Conflict(format!(
                    "Network is already in use by interface {device}"
                )));
            }
            // Every active network's subnets are on its bridge, so the kernel's view covers
            // them (one lookup, not a walk over every network); name the network if it is one.
            if let Some(message) = overlapping_network(networks, def) {
                return Err(Error::Conflict(message));
            }
            let subnet = ours
                .iter()
                .find(|subnet| overlap(**subnet, used))
                .unwrap_or(&used);
            return Err(Error::Conflict(format!(
                "network '{}' subnet {subnet} is already in use by interface {device} ({used})",
                def.name
            )));
        }
        Ok(())
    }

    /// The kernel side of a start, recording an undo for each change made.
    async fn apply_kernel_state(
        &self,
        def: &NetworkDef,
        bridge: &str,
        undo: &mut Vec<Undo>,
    ) -> Result<(), Error> {
        let mode = def.forward_mode();
        // The ifindex of the bridge this start creates: later steps need no lookup by name.
        let mut created = None;
        if mode.has_managed_bridge() {
            let spec = bridge_spec(def, bridge);
            // No lookup beforehand: the kernel refuses a taken name atomically (EEXIST).
            let index = self.link.create_bridge(&spec).await.map_err(|e| {
                if e.is_already_exists() {
                    Error::Conflict(format!(
                        "bridge name '{bridge}' already in use by an existing interface"
                    ))
                } else {
                    failed_step(def, format!("creating bridge {bridge}"), e)
                }
            })?;
            created = Some(index);
            undo.push(Undo::DeleteBridge(index, bridge.to_owned()));
            let has_ipv6 = !def.ipv6_subnets().is_empty();
            sysctl::configure_bridge_ipv6(bridge, has_ipv6)
                .map_err(|e| failed_step(def, format!("setting IPv6 sysctls of {bridge}"), e))?;
            for (address, prefix) in bridge_addresses(def) {
                self.link
                    .add_address_at(index, bridge, address, prefix)
                    .await
                    .map_err(|e| {
                        failed_step(
                            def,
                            format!("adding address {address}/{prefix} to {bridge}"),
                            e,
                        )
                    })?;
            }
        }
        if let Some(rules) = firewall_rules(def) {
            self.firewall.apply(&rules).map_err(|e| {
                failed_step(def, format!("applying firewall rules for {bridge}"), e)
            })?;
            undo.push(Undo::RemoveRules(bridge.to_owned()));
        }
        if let Some(index) = created {
            self.link
                .set_up_at(index, bridge)
                .await
                .map_err(|e| failed_step(def, format!("bringing {bridge} up"), e))?;
            // They go with the bridge, on destroy as on a failed start. A route written
            // twice is added once (the kernel refuses the second as existing).
            for (at, route) in def.routes.iter().enumerate() {
                if def.routes[..at]
                    .iter()
                    .any(|earlier| earlier.is_same_route(route))
                {
                    continue;
                }
                self.add_static_route(bridge, route)
                    .await
                    .map_err(|e| failed_step(def, format!("adding the route to {route}"), e))?;
            }
            let shaping = shaping_of(def.bandwidth.as_ref());
            if !shaping.is_empty() {
                undo.push(Undo::DeleteIfbOf(index));
                self.link
                    .shape(index, bridge, &shaping)
                    .await
                    .map_err(|e| {
                        failed_step(def, format!("limiting the bandwidth of {bridge}"), e)
                    })?;
            }
        }
        if matches!(
            mode,
            ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open
        ) {
            let ipv4 = !def.ipv4_subnets().is_empty();
            let ipv6 = !def.ipv6_subnets().is_empty();
            sysctl::enable_forwarding(ipv4, ipv6)
                .map_err(|e| failed_step(def, "enabling IP forwarding", e))?;
        }
        Ok(())
    }

    async fn roll_back(&self, undo: Vec<Undo>) {
        for step in undo.into_iter().rev() {
            let result = match &step {
                Undo::DeleteBridge(index, bridge) => self
                    .link
                    .delete_index(*index, bridge)
                    .await
                    .map(drop)
                    .map_err(|e| error_chain(&e)),
                Undo::RemoveRules(bridge) => {
                    self.firewall.remove(bridge).map_err(|e| error_chain(&e))
                }
                Undo::DeleteIfbOf(index) => self
                    .link
                    .delete_ifb_of(*index)
                    .await
                    .map_err(|e| error_chain(&e)),
            };
            if let Err(e) = result {
                warn!("rolling back {step:?}: {e}");
            }
        }
    }

    /// Stops a network; a transient one disappears.
    #[instrument(skip_all, fields(network = %key))]
    pub async fn stop(&self, key: &str) -> Result<NetworkSummary, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let Some(def) = networks[&name].live.clone() else {
            return Err(Error::OperationInvalid(format!(
                "network '{name}' is not active"
            )));
        };
        let mut summary = summary_of(&networks, &name)?;
        let active = active_status(
            &def,
            networks[&name].config.is_some(),
            self.started_at(&name),
        );
        let intent = Status {
            phase: Phase::Stopping,
            ..active.clone()
        };
        if let Err(e) = self.store.save_status(&name, &intent) {
            // A full disk must not keep a network from stopping. Without the record, a
            // crash in the teardown leaves a network that a restart adopts (its bridge
            // still there, rules re-applied) or marks inactive (bridge gone).
            warn!(network = %name, "stopping without recording it first: {}", error_chain(&e));
        }
        if let Some(network) = networks.get_mut(&name) {
            network.take_servers().stop().await;
            // Before the bridge goes, so that no tap is ever up off its bridge.
            self.park_ports(&name, network).await;
        }
        let torn_down = self.tear_down(&def).await;
        self.catch_up_prefixes_when_idle();
        if let Err(e) = torn_down {
            // The network stays active (a retry finishes the teardown), so it keeps
            // serving its guests meanwhile.
            if let Err(status) = self.store.save_status(&name, &active) {
                warn!(network = %name, "a daemon restart will finish stopping it: {}", error_chain(&status));
            }
            let _hosts_zone = self.hosts_zone_for(&def).await;
            let servers = self.restart_servers(&def, &networks);
            if let Some(network) = networks.get_mut(&name) {
                network.run(def, servers);
                self.replug_ports(&name, network).await;
            }
            return Err(e);
        }
        // Down: the scripts hear of it now, with the ports that wait for its next start
        // counted, as libvirt counts its ports then.
        if let Some(network) = networks.get(&name) {
            self.run_hooks_logged(&def, &count_connections(network), Operation::Stopped)
                .await;
        }
        let network = networks.get_mut(&name);
        if let Some(network) = network {
            // One whose definition is on disk but unreadable keeps its ports and leases.
            let transient = network.config.is_none() && !self.was_unloaded(&name);
            if transient {
                self.discard_ports(&name, network).await;
            }
            // It is down whatever becomes of the file: one left says it was stopping.
            if let Err(e) = self.store.delete_status(&name) {
                warn!(network = %name, "the next daemon start finishes the stop: {}", error_chain(&e));
            }
            network.live = None;
            if network.config.is_none() {
                networks.remove(&name);
            }
            if transient {
                self.delete_leases_or_warn(&name);
            }
        }
        info!(network = %name, "stopped");
        summary.active = false;
        self.publish(&summary, Lifecycle::Stopped);
        Ok(summary)
    }

    /// Applies the kernel's notifications of the change just made to the prefix cache once
    /// this request is answered, instead of at the start of the next start.
    fn catch_up_prefixes_when_idle(&self) {
        let prefixes = Arc::clone(&self.prefixes);
        tokio::spawn(async move { prefixes.catch_up().await });
    }

    /// Removes what a start created, all or nothing: the firewall batch is atomic, and if
    /// the bridge cannot be deleted after it, the rules are put back. Either way the
    /// network is left as it was, so a retry starts over.
    async fn tear_down(&self, def: &NetworkDef) -> Result<(), Error> {
        let Some(bridge) = def.bridge_name() else {
            return Ok(());
        };
        let failed = |problem: String| Error::Stop {
            network: def.name.clone(),
            problem,
        };
        // Only the network's own bridge goes: the name may have passed to someone else's
        // interface since (the bridge deleted behind kvnet's back and the name reused).
        let own_bridge = if def.forward_mode().has_managed_bridge() {
            let current = self
                .link
                .link_info(bridge)
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            match current {
                Some(info) if is_network_bridge(def, bridge, &info) => Some(info),
                Some(_) => {
                    warn!(network = %def.name, bridge, "leaving interface {bridge} alone: it is not the network's bridge (another kind, MAC address or link group)");
                    None
                }
                None => None,
            }
        } else {
            None
        };
        let rules = firewall_rules(def);
        if rules.is_some() {
            self.firewall
                .remove(bridge)
                .map_err(|e| failed(error_chain(&e)))?;
        }
        // Deleting the bridge takes its qdiscs but leaves the IFB shaping its ingress. The
        // link-deletion follower would delete it later; here it is gone when stop returns.
        let ifb_owner = shaping_of(def.bandwidth.as_ref())
            .ingress
            .and(own_bridge.as_ref());
        if let Some(info) = &own_bridge
            && let Err(e) = self.link.delete_index(info.index, bridge).await
        {
            if let Some(rules) = &rules
                && let Err(again) = self.firewall.apply(rules)
            {
                warn!(network = %def.name, "putting back the firewall rules of a network that stays active: {}", error_chain(&again));
            }
            return Err(failed(error_chain(&e)));
        }
        if let Some(bridge) = ifb_owner
            && let Err(e) = self.link.delete_ifb_of(bridge.index).await
        {
            warn!(network = %def.name, "{}", error_chain(&e));
        }
        Ok(())
    }

    /// Removes a network's persistent definition; a running network goes on, transient.
    #[instrument(skip_all, fields(network = %key))]
    pub async fn undefine(&self, key: &str) -> Result<NetworkSummary, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let mut summary = summary_of(&networks, &name)?;
        let network = &networks[&name];
        if network.config.is_none() {
            return Err(Error::OperationInvalid(
                "can't undefine transient network".into(),
            ));
        }
        if let Some(live) = &network.live {
            // Record first that it is now transient, so a restart does not resurrect the definition.
            let started_at = self.started_at(&name);
            self.store
                .save_status(&name, &active_status(live, false, started_at))?;
        }
        self.store
            .change_config_off_thread(ConfigChange::Delete {
                network: name.clone(),
            })
            .await?;
        if let Some(network) = networks.get_mut(&name) {
            network.config = None;
            network.autostart = false;
            if network.live.is_none() {
                self.discard_ports(&name, network).await;
                networks.remove(&name);
                self.delete_leases_or_warn(&name);
            }
        }
        info!(network = %name, "undefined");
        summary.persistent = false;
        summary.autostart = false;
        self.publish(&summary, Lifecycle::Undefined);
        Ok(summary)
    }

    /// Marks or unmarks a persistent network for autostart.
    pub async fn set_autostart(&self, key: &str, enabled: bool) -> Result<NetworkSummary, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        if networks[&name].config.is_none() {
            return Err(Error::OperationInvalid(
                "cannot set autostart for transient network".into(),
            ));
        }
        self.store
            .change_config_off_thread(ConfigChange::Autostart {
                network: name.clone(),
                enabled,
            })
            .await?;
        if let Some(network) = networks.get_mut(&name) {
            network.autostart = enabled;
        }
        summary_of(&networks, &name)
    }

    /// The network's XML: the running definition, or with `inactive` the persistent one.
    pub async fn xml(&self, key: &str, inactive: bool) -> Result<String, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let not_found = || Error::NotFound {
            field: "name",
            value: key.to_owned(),
        };
        let network = networks.get_mut(&name).ok_or_else(not_found)?;
        if inactive {
            let def = network.config.as_ref().or(network.live.as_ref());
            return def.map(NetworkDef::to_xml).ok_or_else(not_found);
        }
        let connections = self.connections(&name, network).await;
        let def = network.current().ok_or_else(not_found)?;
        Ok(def.to_live_xml(&connections))
    }
}

/// Resolves a name or UUID (virsh tries a UUID first when the argument looks like one).
fn lookup(networks: &BTreeMap<String, Network>, key: &str) -> Result<String, Error> {
    // virsh's order: by UUID when the argument has a UUID's length, then by name; what
    // is found by neither is reported as a name.
    if key.len() == UUID_STRING_LEN
        && let Ok(uuid) = uuid::Uuid::parse_str(key)
        && let Some(def) = networks
            .values()
            .filter_map(Network::current)
            .find(|def| def.uuid == Some(uuid))
    {
        return Ok(def.name.clone());
    }
    if networks.contains_key(key) {
        Ok(key.to_owned())
    } else {
        Err(Error::NotFound {
            field: "name",
            value: key.to_owned(),
        })
    }
}

/// Whether `def` lacks what `net-define` fills in (UUID, and for a network with a
/// bridge of its own its MAC and a bridge name that is no template): a definition
/// written or copied into the config dir by hand.
fn is_incomplete(def: &NetworkDef) -> bool {
    def.uuid.is_none()
        || def.forward_mode().has_managed_bridge()
            && (def.mac.is_none() || def.bridge_name().is_none_or(xml::is_bridge_template))
}

/// The length of a UUID written as 8-4-4-4-12 hex digits.
const UUID_STRING_LEN: usize = 36;

fn summary_of(networks: &BTreeMap<String, Network>, name: &str) -> Result<NetworkSummary, Error> {
    networks
        .get(name)
        .and_then(Network::summary)
        .ok_or_else(|| Error::NotFound {
            field: "name",
            value: name.to_owned(),
        })
}

/// Names the first active network (other than `def`) whose subnets overlap `def`'s.
fn overlapping_network(networks: &BTreeMap<String, Network>, def: &NetworkDef) -> Option<String> {
    networks
        .values()
        .filter_map(|n| n.live.as_ref())
        .filter(|other| other.name != def.name)
        .find_map(|other| {
            let (ours, theirs) = def.overlaps(other)?;
            Some(format!(
                "subnet {ours} of network '{}' overlaps {theirs} of active network '{}'",
                def.name, other.name
            ))
        })
}

fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether `info`, the link named `bridge`, is `def`'s own bridge by what the kernel
/// alone says: a bridge kvnet created (in [`link::KVNET_LINK_GROUP`]) with the network's MAC
/// address. The MAC alone is not enough: libvirt gives a network's bridge the same one,
/// so a libvirt network's definition copied in matches libvirt's running bridge.
fn is_network_bridge(def: &NetworkDef, bridge: &str, info: &LinkInfo) -> bool {
    info.in_kvnet_group() && has_network_mac(def, bridge, info)
}

/// Whether `info`, the link named `bridge`, is `def`'s own bridge, for a network whose
/// status, in format `status_version`, records it: as [`is_network_bridge`], except that
/// a status from before kvnet put its bridges in its link group vouches for a bridge
/// with the network's MAC address alone.
fn is_recorded_bridge(
    def: &NetworkDef,
    bridge: &str,
    info: &LinkInfo,
    status_version: u32,
) -> bool {
    has_network_mac(def, bridge, info)
        && (info.in_kvnet_group() || status_version < store::LINK_GROUP_STATUS_VERSION)
}

fn has_network_mac(def: &NetworkDef, bridge: &str, info: &LinkInfo) -> bool {
    info.is_bridge() && info.mac == Some(bridge_spec(def, bridge).mac)
}

/// The network libvirt ships, defined on a first start.
const DEFAULT_NETWORK: &str = "default";

fn failed_step(
    def: &NetworkDef,
    step: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Start {
        network: def.name.clone(),
        step: step.into(),
        source: Box::new(source),
    }
}

/// The hostnames of `dhcp`'s and `dhcp6`'s leases (and of the DHCPv6 reservations), as
/// the network's DNS server reads them.
fn lease_names(dhcp: Option<&DhcpServer>, dhcp6: Option<&Dhcp6Server>) -> Option<dns::LeaseSource> {
    if dhcp.is_none() && dhcp6.is_none() {
        return None;
    }
    let read4 = dhcp.map(DhcpServer::name_reader);
    let read6 = dhcp6.map(Dhcp6Server::name_reader);
    let read: dns::LeaseReader = Arc::new(move || {
        let mut names: Vec<(std::net::IpAddr, String)> = Vec::new();
        if let Some(read4) = &read4 {
            names.extend(read4().into_iter().map(|(ip, name)| (ip.into(), name)));
        }
        if let Some(read6) = &read6 {
            names.extend(read6().into_iter().map(|(ip, name)| (ip.into(), name)));
        }
        names
    });
    let mut source = dns::LeaseSource::new(read);
    for changes in [
        dhcp.map(DhcpServer::changes),
        dhcp6.map(Dhcp6Server::changes),
    ]
    .into_iter()
    .flatten()
    {
        source = source.with_changes(changes);
    }
    Some(source)
}

/// The status of a running network whose definition is `live`.
fn active_status(live: &NetworkDef, persistent: bool, started_at: i64) -> Status {
    Status {
        version: STATUS_VERSION,
        phase: Phase::Active,
        bridge: live.bridge_name().unwrap_or_default().to_owned(),
        persistent,
        xml: live.to_xml(),
        started_at,
        pending_config: None,
    }
}
