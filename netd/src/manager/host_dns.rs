//! The host's DNS files, followed while the daemon runs: its resolvers
//! (`--resolv-conf`), as dnsmasq polls its resolv.conf, and its hosts file
//! (`--hosts-file`), which dnsmasq reads only at start and on SIGHUP, where kvnetd
//! follows it too. When either changes, the DNS server of every running network gets
//! the new contents. An autostart network that came up before the host's network manager
//! wrote resolv.conf, or a laptop that moved to another network, would otherwise refuse
//! or misroute its guests' queries until the network was restarted.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::configs::dns_config;
use super::{Manager, error_chain, lease_names};
use crate::dns::zone::Zone;
use crate::dns::{self, HostsFile, SharedHosts};
use crate::service::lock;
use crate::xml::{ForwardMode, NetworkDef};

/// How often the files are looked at: a `stat` each, as often as dnsmasq looks.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a network's DNS takes from the host, read once for all the networks it is
/// given to.
pub(super) struct HostDns {
    /// The resolvers in resolv.conf: the upstreams of networks that forward to the host's.
    pub resolvers: Vec<SocketAddr>,
    /// The hosts file's entries, served to every network.
    pub hosts: Arc<SharedHosts>,
}

/// One version of a file, told apart without reading it (a file replaced by a rename,
/// as resolvconf and NetworkManager write it, is another inode).
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// A file being followed: its path and the stamp it had when last read.
struct Followed {
    path: PathBuf,
    seen: Option<Stamp>,
}

impl Followed {
    /// Followed from its first look on, whatever it was: the file was read before the
    /// follower started, and may have changed in between.
    fn unseen(path: PathBuf) -> Followed {
        Followed { path, seen: None }
    }

    /// Whether the file looks different from when this was last asked.
    fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }

    /// The file could not be read as it now is (out of descriptors, say): it is looked
    /// at again on the next tick, what was read before kept meanwhile. Logged once
    /// until a read succeeds.
    fn unreadable(&mut self, error: &std::io::Error, failing: &mut bool) {
        self.seen = None;
        if !std::mem::replace(failing, true) {
            warn!(path = %self.path.display(), %error, "cannot read it; guests' DNS keeps what was read before, and it is read again each second");
        }
    }
}

impl Manager {
    /// What networks' DNS servers take from the host now. A resolv.conf that cannot be
    /// read leaves the resolvers read before (none at the daemon's start, until the
    /// follower reads it).
    pub(super) fn host_dns(&self) -> HostDns {
        let mut handed = lock(&self.handed_resolvers);
        let resolvers = match dns::host_resolvers(&self.resolv_conf) {
            Ok(resolvers) => {
                *handed = Some(resolvers.clone());
                resolvers
            }
            Err(e) => {
                let kept = handed.clone().unwrap_or_default();
                warn!(path = %self.resolv_conf.display(), error = %e, resolvers = ?kept, "cannot read the host's resolvers; using those read before");
                kept
            }
        };
        drop(handed);
        HostDns {
            resolvers,
            hosts: Arc::clone(&lock(&self.host_names)),
        }
    }

    /// Follows the host's resolv.conf and hosts file for as long as the manager lives.
    pub fn follow_host_dns(self: &Arc<Manager>) {
        let manager = Arc::downgrade(self);
        // Both were read when the networks started, which can be long before this (boot
        // autostart, hook scripts): looked at again on the first tick, since a boot-time
        // edit (NetworkManager's, cloud-init's) may fall in between.
        let mut resolv_conf = Followed::unseen(self.resolv_conf.clone());
        let mut hosts_file = self.hosts_file.clone().map(Followed::unseen);
        // What the networks started with (what a network starting now would get, if none
        // runs yet): a first look that finds the same is no news.
        let mut servers = lock(&self.handed_resolvers)
            .clone()
            .unwrap_or_else(|| dns::host_resolvers(&self.resolv_conf).unwrap_or_default());
        let (mut resolv_failing, mut hosts_failing) = (false, false);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let resolv_changed = resolv_conf.changed();
                let hosts_changed = hosts_file.as_mut().is_some_and(Followed::changed);
                if !resolv_changed && !hosts_changed {
                    continue;
                }
                let Some(manager) = manager.upgrade() else {
                    break;
                };
                let mut new_resolvers = false;
                if resolv_changed {
                    match dns::host_resolvers(&resolv_conf.path) {
                        Ok(read) => {
                            resolv_failing = false;
                            if servers != read {
                                info!(path = %resolv_conf.path.display(), servers = ?read, "the host's resolvers changed");
                                servers = read.clone();
                                *lock(&manager.handed_resolvers) = Some(read);
                                new_resolvers = true;
                            }
                        }
                        Err(e) => resolv_conf.unreadable(&e, &mut resolv_failing),
                    }
                }
                // The new file's zones, made before any server asks for them and held
                // until every server has taken its own.
                let mut new_zones = None;
                if let Some(file) = hosts_file.as_mut().filter(|_| hosts_changed) {
                    let path = file.path.clone();
                    // Off the daemon's thread, like the zones: the file may be big.
                    let read =
                        match tokio::task::spawn_blocking(move || HostsFile::read(&path)).await {
                            Ok(Ok(read)) => {
                                hosts_failing = false;
                                Some(read)
                            }
                            Ok(Err(e)) => {
                                file.unreadable(&e, &mut hosts_failing);
                                None
                            }
                            Err(_) => None,
                        };
                    if let Some(read) = read
                        && lock(&manager.host_names).file != read
                    {
                        info!(path = %file.path.display(), entries = read.entries.len(), "the host's hosts file changed");
                        let hosts = Arc::new(SharedHosts::new(read));
                        new_zones = Some(manager.make_hosts_zones(&hosts).await);
                        *lock(&manager.host_names) = hosts;
                    }
                }
                if new_resolvers || new_zones.is_some() {
                    manager.refresh_host_dns(new_zones.is_some()).await;
                }
            }
        });
    }

    /// The zones of `hosts` for the domains of the running networks that serve DNS.
    async fn make_hosts_zones(&self, hosts: &Arc<SharedHosts>) -> Vec<Arc<Zone>> {
        let domains: BTreeSet<Option<String>> = self
            .networks
            .lock()
            .await
            .values()
            .filter_map(|network| network.live.as_ref())
            .filter(|def| def.is_dns_enabled())
            .map(|def| def.domain.as_ref().map(|domain| domain.name.clone()))
            .collect();
        let mut zones = Vec::new();
        for domain in domains {
            zones.extend(hosts.zone_made_aside(domain.as_deref()).await);
        }
        zones
    }

    /// The zone of the hosts file that `def`'s DNS server is about to take, made aside
    /// (see [`SharedHosts::zone_made_aside`]); the caller holds it until the server runs.
    pub(super) async fn hosts_zone_for(&self, def: &NetworkDef) -> Option<Arc<Zone>> {
        if !def.is_dns_enabled() {
            return None;
        }
        let hosts = Arc::clone(&lock(&self.host_names));
        let domain = def.domain.as_ref().map(|domain| domain.name.as_str());
        hosts.zone_made_aside(domain).await
    }

    /// Gives the DNS server of every running network what it now takes from the host:
    /// isolated networks, which never forward there, only when the hosts file changed.
    async fn refresh_host_dns(&self, new_hosts: bool) {
        let networks = self.networks.lock().await;
        let host = self.host_dns();
        for network in networks.values() {
            let (Some(live), Some(server)) = (&network.live, &network.dns) else {
                continue;
            };
            if !new_hosts && live.forward_mode() == ForwardMode::Isolated {
                continue;
            }
            let Some(config) = dns_config(live, &networks, &host) else {
                continue;
            };
            let leases = lease_names(network.dhcp.as_ref(), network.dhcp6.as_ref());
            if let Err(e) = server.update(&config, leases) {
                warn!(network = %live.name, "DNS keeps what it served: {}", error_chain(&e));
            }
        }
    }
}
