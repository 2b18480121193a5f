//! The host's resolvers (`--resolv-conf`), followed as dnsmasq polls its resolv.conf:
//! when the file changes, the DNS servers of the networks that forward to them get the
//! new list. An autostart network that came up before the host's network manager wrote
//! the file, or a laptop that moved to another network, would otherwise refuse or
//! misroute its guests' queries until the network was restarted.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use super::{Manager, dns_config, error_chain, lease_names};
use crate::dns;
use crate::xml::ForwardMode;

/// How often the file is looked at: a `stat`, as often as dnsmasq looks.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One version of the file, told apart without reading it (a file replaced by a rename,
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

impl Manager {
    /// Follows the host's resolvers for as long as the manager lives.
    pub fn follow_host_resolvers(self: &Arc<Manager>) {
        let manager = Arc::downgrade(self);
        let path = self.resolv_conf.clone();
        tokio::spawn(async move {
            let mut seen = stamp(&path);
            let mut servers = None;
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                let Some(manager) = manager.upgrade() else {
                    break;
                };
                let read = dns::host_resolvers(&path);
                if servers.as_ref() == Some(&read) {
                    continue;
                }
                info!(path = %path.display(), servers = ?read, "the host's resolvers changed");
                servers = Some(read);
                manager.refresh_upstreams().await;
            }
        });
    }

    /// Gives the DNS server of every running network that forwards to the host's
    /// resolvers the current list.
    async fn refresh_upstreams(&self) {
        let networks = self.networks.lock().await;
        for network in networks.values() {
            let (Some(live), Some(server)) = (&network.live, &network.dns) else {
                continue;
            };
            // Isolated networks never forward there (libvirt's `no-resolv`).
            if live.forward_mode() == ForwardMode::Isolated {
                continue;
            }
            let Some(config) = dns_config(live, &networks, &self.resolv_conf) else {
                continue;
            };
            let leases = lease_names(network.dhcp.as_ref(), network.dhcp6.as_ref());
            if let Err(e) = server.update(&config, leases) {
                warn!(network = %live.name, "DNS keeps its previous upstreams: {}", error_chain(&e));
            }
        }
    }
}
