//! `net-update`: a change to a network's definition, live, persistent or both.

use tracing::{info, instrument, warn};

use crate::api::types::UpdateResponse;
use crate::dhcp::DhcpServer;
use crate::dhcp6::Dhcp6Server;
use crate::dns;
use crate::errors::error_chain;
use crate::ra::RaServer;
use crate::store::{ConfigChange, Status};
use crate::xml::{self, NetworkDef};

use super::configs::{dhcp_config, dhcp6_config, dns_config, firewall_rules, ra_config};
use super::{Error, Manager, active_status, lease_names, lookup};

impl Manager {
    /// virsh's `net-update`: applies `update` to the running definition (`live`), the
    /// persistent one (`config`), or with neither to the running one if the network is
    /// active, else the persistent one. A live change reaches the network's DHCP and DNS
    /// servers without restarting them (leases are kept) and is recorded in the status
    /// file, so it survives a daemon restart but not a network restart. All or nothing:
    /// a rejected update changes neither definition nor any file.
    #[instrument(skip_all, fields(network = %key, command = %update.command, section = %update.section))]
    pub async fn update(
        &self,
        key: &str,
        update: &xml::Update<'_>,
        live: bool,
        config: bool,
    ) -> Result<UpdateResponse, Error> {
        let mut networks = self.networks.lock().await;
        let name = lookup(&networks, key)?;
        let network = &networks[&name];
        let active = network.live.is_some();
        let (live, config) = if live || config {
            (live, config)
        } else {
            (active, !active)
        };
        if live && !active {
            return Err(Error::OperationInvalid("network is not running".into()));
        }
        if config && network.config.is_none() {
            return Err(Error::OperationInvalid(
                "cannot change persistent config of a transient network".into(),
            ));
        }
        let new_live = match (live, &network.live) {
            (true, Some(def)) => Some(def.updated(update)?),
            _ => None,
        };
        let new_config = match (config, &network.config) {
            (true, Some(def)) => Some(def.updated(update)?),
            _ => None,
        };
        if let Some(new) = &new_live {
            self.check_pool_shrink(&mut networks, &name, new).await?;
        }
        let network = &networks[&name];
        // Everything that can fail comes before the first change. A DHCP server started
        // here is dropped (stopped) if a later step fails, with the lease journal it made.
        let new_dhcp = new_live.as_ref().and_then(dhcp_config);
        let had_leases = self.store.lease_path(&name).exists();
        let started_dhcp = match (&new_dhcp, &network.dhcp) {
            // The update gave the network its first DHCP range or host: it needs a server.
            (Some(dhcp), None) => Some(
                DhcpServer::start(
                    dhcp.clone(),
                    self.store.lease_path(&name),
                    self.link.clone(),
                )
                .map_err(|e| Error::Live {
                    network: name.clone(),
                    step: "starting the DHCP server",
                    source: Box::new(e),
                })?,
            ),
            _ => None,
        };
        let new_dhcp6 = new_live.as_ref().and_then(dhcp6_config);
        let had_leases6 = self.store.lease6_path(&name).exists();
        let started_dhcp6 = match (&new_dhcp6, &network.dhcp6) {
            (Some(dhcp6), None) => {
                match Dhcp6Server::start(
                    dhcp6.clone(),
                    self.store.lease6_path(&name),
                    self.link.clone(),
                ) {
                    Ok(server) => Some(server),
                    Err(e) => {
                        if let Some(server) = started_dhcp {
                            server.stop().await;
                            if !had_leases && let Err(cleanup) = self.store.delete_leases4(&name) {
                                warn!(network = %name, "{}", error_chain(&cleanup));
                            }
                        }
                        return Err(Error::Live {
                            network: name.clone(),
                            step: "starting the DHCPv6 server",
                            source: Box::new(e),
                        });
                    }
                }
            }
            _ => None,
        };
        let lease_source = lease_names(
            new_dhcp
                .as_ref()
                .and(started_dhcp.as_ref().or(network.dhcp.as_ref())),
            new_dhcp6
                .as_ref()
                .and(started_dhcp6.as_ref().or(network.dhcp6.as_ref())),
        );
        let started_at = self.started_at(&name);
        let persistent = network.config.is_some();
        // A forward-interface update changes the device a nat or route network's rules
        // name. Both rule sets have the same mode and bridge.
        let old_rules = network.live.as_ref().and_then(firewall_rules);
        let new_rules = new_live
            .as_ref()
            .and_then(firewall_rules)
            .filter(|rules| Some(rules) != old_rules.as_ref());
        let restore_rules = || {
            if let (Some(_), Some(old)) = (&new_rules, &old_rules)
                && let Err(e) = self.firewall.apply(old)
            {
                warn!(network = %name, "putting back the firewall rules of an update that failed: {}", error_chain(&e));
            }
        };
        let recorded: Result<_, Error> = async {
            let new_resolver = new_live
                .as_ref()
                .and_then(|def| dns_config(def, &networks, &self.host_dns()))
                .map(|dns| dns::Resolver::new(&dns, lease_source))
                .transpose()
                .map_err(Error::DnsRecords)?;
            if let Some(rules) = &new_rules {
                self.firewall.apply(rules).map_err(|e| Error::Live {
                    network: name.clone(),
                    step: "applying the firewall rules",
                    source: Box::new(e),
                })?;
            }
            // The status file first, with the new persistent definition when both change:
            // a daemon killed before the config is written finishes the write when it
            // restarts. If the config write fails, the old status goes back.
            let config_file = new_config.as_ref().map(NetworkDef::to_config_file);
            if let Some(def) = &new_live {
                let status = Status {
                    pending_config: config_file.clone(),
                    ..active_status(def, persistent, started_at)
                };
                if let Err(e) = self.store.save_status(&name, &status) {
                    restore_rules();
                    return Err(e.into());
                }
            }
            let saved = match &config_file {
                Some(file) => {
                    self.store
                        .change_config_off_thread(ConfigChange::Save {
                            network: name.clone(),
                            xml: file.clone(),
                        })
                        .await
                }
                None => Ok(()),
            };
            if let Err(e) = saved {
                restore_rules();
                // The error is the config's: a status that cannot be put back is only
                // logged, naming what a restart would then do.
                if let (Some(_), Some(old)) = (&new_live, &network.live)
                    && let Err(restore) = self
                        .store
                        .save_status(&name, &active_status(old, persistent, started_at))
                {
                    warn!(network = %name, "the status still holds the refused update, which a restart would apply: {}", error_chain(&restore));
                }
                return Err(e.into());
            }
            if let (Some(def), Some(_)) = (&new_live, &config_file) {
                // Written: a later definition must not be overwritten by a restart. The
                // update is done either way; a status left with it would only write the
                // same definition again at the next start, unless one came after it.
                let written = active_status(def, persistent, started_at);
                if let Err(e) = self.store.save_status(&name, &written) {
                    warn!(network = %name, "the status still holds the updated definition, which a restart writes again: {}", error_chain(&e));
                }
            }
            Ok(new_resolver)
        }
        .await;
        let new_resolver = match recorded {
            Ok(resolver) => resolver,
            Err(e) => {
                if let Some(server) = started_dhcp {
                    server.stop().await;
                    // Only the file of the server this update started: the other
                    // family's server keeps running on its own.
                    if !had_leases && let Err(cleanup) = self.store.delete_leases4(&name) {
                        warn!(network = %name, "{}", error_chain(&cleanup));
                    }
                }
                if let Some(server) = started_dhcp6 {
                    server.stop().await;
                    if !had_leases6 && let Err(cleanup) = self.store.delete_leases6(&name) {
                        warn!(network = %name, "{}", error_chain(&cleanup));
                    }
                }
                return Err(e);
            }
        };
        let Some(network) = networks.get_mut(&name) else {
            return Err(Error::NotFound {
                field: "name",
                value: name,
            });
        };
        if let Some(def) = new_live {
            match (network.dhcp.take(), new_dhcp) {
                (Some(server), Some(dhcp)) => {
                    server.update(dhcp);
                    network.dhcp = Some(server);
                }
                (Some(server), None) => server.stop().await,
                (None, _) => network.dhcp = started_dhcp,
            }
            match (network.dhcp6.take(), new_dhcp6) {
                (Some(server), Some(dhcp6)) => {
                    server.update(dhcp6);
                    network.dhcp6 = Some(server);
                }
                (Some(server), None) => server.stop().await,
                (None, _) => network.dhcp6 = started_dhcp6,
            }
            if let (Some(server), Some(resolver)) = (&network.dns, new_resolver) {
                server.replace(resolver);
            }
            // A DHCPv6 range added or removed changes the M and O flags: advertise anew.
            let new_ra = ra_config(&def);
            if new_ra != network.live.as_ref().and_then(ra_config) {
                match new_ra.map(RaServer::start).transpose() {
                    Ok(started) => {
                        // Dropped, not stopped: its last advertisement would withdraw
                        // the router the new one announces.
                        drop(network.ra.take());
                        network.ra = started;
                    }
                    Err(e) => {
                        warn!(network = %name, "router advertisements not updated: {}", error_chain(&e))
                    }
                }
            }
            network.live = Some(def);
        }
        if let Some(def) = new_config {
            network.config = Some(def);
        }
        info!(network = %name, live, config, "updated");
        // As in libvirt, a script's failure is reported but the change stays.
        self.run_update_hooks(&networks[&name]).await?;
        Ok(UpdateResponse { name, live, config })
    }
}
