//! SIGHUP, as libvirt's network driver reloads on it (`networkStateReload`): the
//! definitions on disk are read again, the firewall rules put back, and autostart
//! networks that are not running started. An administrator who copied files from a
//! libvirt host, or edited one by hand, does not have to restart the daemon.

use std::collections::BTreeMap;

use tracing::{info, warn};

use super::{Error, Manager, Network, error_chain, is_incomplete, summary_of};
use crate::events::Lifecycle;
use crate::service::lock;
use crate::store::StoredConfig;
use crate::xml::NetworkDef;

/// What a reload did with one definition file.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The network did not exist: it is now defined.
    Defined,
    /// The file differs from the definition in memory, which it replaces: an inactive
    /// network's now, a running one's at its next start (as `net-define` does).
    Changed,
    /// Nothing new but perhaps the autostart link, which is followed.
    Unchanged,
}

impl Manager {
    /// Reads every definition file again. A new file defines its network; a changed one
    /// replaces the definition (a running network keeps running, and starts with it
    /// next time); the autostart links are followed. A file that cannot be read, or
    /// that a `net-define` of it would refuse, is skipped with a warning, and its network
    /// stays as it was. As in libvirt, a file removed by hand undefines nothing.
    pub async fn reload(&self) {
        info!("reloading the definitions from disk (SIGHUP)");
        let mut defined = Vec::new();
        {
            // Read under the lock: files read before a change that waited for it (an
            // undefine) would bring back what it removed.
            let mut networks = self.networks.lock().await;
            let stored = match self.store.load_configs() {
                Ok(stored) => stored,
                Err(e) => {
                    warn!("reload: cannot read the definitions: {}", error_chain(&e));
                    return;
                }
            };
            for file in stored {
                let path = file.path.clone();
                match self.reload_one(&mut networks, file).await {
                    Ok((name, Outcome::Defined)) => {
                        info!(network = %name, "defined from its file");
                        defined.push(name);
                    }
                    Ok((name, Outcome::Changed)) => {
                        info!(network = %name, "definition reloaded from its file");
                    }
                    Ok((_, Outcome::Unchanged)) => {}
                    Err(e) => {
                        warn!(path = %path.display(), "reload: file skipped, its network left as it was: {}", error_chain(&e));
                    }
                }
            }
            self.complete_copied_definitions(&mut networks).await;
            for name in &defined {
                if let Ok(summary) = summary_of(&networks, name) {
                    self.publish(&summary, Lifecycle::Defined);
                }
            }
        }
        self.reconcile_firewall().await;
        self.autostart_all(&[]).await;
        info!("reload done");
    }

    /// `name`'s definition loaded: it no longer counts as one that could not be, unless
    /// its status is what could not be read.
    pub(super) fn mended(&self, name: &str) {
        if !lock(&self.unread_statuses).contains(name) {
            lock(&self.unloaded).remove(name);
        }
    }

    /// Takes one definition file into `networks`; returns the network's name and what
    /// became of it.
    async fn reload_one(
        &self,
        networks: &mut BTreeMap<String, Network>,
        file: StoredConfig,
    ) -> Result<(String, Outcome), Error> {
        let parsed = file
            .xml
            .map_err(Error::from)
            .and_then(|xml| Ok(NetworkDef::from_stored_xml(&xml)?));
        let mut def = match parsed {
            Ok(def) => def,
            Err(e) => {
                // As at start: a network nobody knows keeps its leases and ports.
                if !networks.contains_key(&file.file_name) {
                    lock(&self.unloaded).insert(file.file_name);
                }
                return Err(e);
            }
        };
        if def.name != file.file_name {
            return Err(Error::OperationInvalid(format!(
                "the file defines network '{}', not '{}'",
                def.name, file.file_name
            )));
        }
        let name = def.name.clone();
        self.check_identity(networks, &def)?;
        let Some(network) = networks.get(&name) else {
            if let Err(e) = def.check_dhcp_hosts_usable() {
                warn!(network = %name, "a DHCP <host> no guest can get is left out: {}", error_chain(&e));
            }
            networks.insert(name.clone(), Network::defined(def, file.autostart));
            self.mended(&name);
            return Ok((name, Outcome::Defined));
        };
        if network.config.is_none() && !self.was_unloaded(&name) {
            return Err(Error::OperationInvalid(format!(
                "network '{name}' runs as a transient network: `net-define` the file to make it persistent"
            )));
        }
        let outcome = if network.config.as_ref() == Some(&def) {
            Outcome::Unchanged
        } else {
            def.check_dhcp_hosts_usable()?;
            // One without its bridge name is given one, and saved, by
            // `complete_copied_definitions`; that of another network is refused here.
            if !is_incomplete(&def) {
                self.complete_and_check_bridge(networks, &mut def).await?;
            }
            Outcome::Changed
        };
        if let Some(network) = networks.get_mut(&name) {
            if outcome == Outcome::Changed {
                network.config = Some(def);
            }
            network.autostart = file.autostart;
        }
        self.mended(&name);
        Ok((name, outcome))
    }
}
