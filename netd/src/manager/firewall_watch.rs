//! Keeping running networks' firewall rules in the kernel: put back at start-up, and
//! whenever someone else takes them away; rules of networks no longer running removed;
//! other tables' drop policies that would block guests reported.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};

use super::configs::firewall_rules;
use super::{Manager, error_chain};
use crate::firewall::NetworkRules;
use crate::service::lock;

/// How often the kernel is asked whether running networks' firewall rules are still
/// there ([`Manager::follow_firewall`]).
const FIREWALL_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl Manager {
    /// Re-applies the rules of every active network and removes chains of networks that
    /// are no longer active (after a crash or a manual change); warns about foreign
    /// tables whose drop policy would block guests.
    pub(super) async fn reconcile_firewall(&self) {
        let networks = self.networks.lock().await;
        let mut active_bridges = Vec::new();
        for def in networks.values().filter_map(|n| n.live.as_ref()) {
            if let Some(rules) = firewall_rules(def) {
                if let Err(e) = self.firewall.apply(&rules) {
                    warn!(network = %def.name, "re-applying firewall rules: {}", error_chain(&e));
                }
                active_bridges.push(rules.bridge);
            }
        }
        let defined_bridges: Vec<&str> = networks
            .values()
            .filter_map(|n| n.config.as_ref()?.bridge_name())
            .collect();
        let unloaded = lock(&self.unloaded).len();
        if unloaded > 0 {
            // Which bridges those networks have is unknown: any rules may be theirs.
            info!(
                unloaded,
                "keeping the firewall rules of inactive networks: some definitions or statuses could not be read"
            );
        } else {
            self.remove_stale_rules(&active_bridges, &defined_bridges)
                .await;
        }
        self.warn_about_foreign_drop_policies();
    }

    /// Removes kvnet's rules of bridges no active network has: those of bridges gone, and
    /// those of this daemon's networks that no longer run. A bridge that is there and
    /// that none of its networks names is left alone with its rules: another kvnetd in
    /// this network namespace (one with other directories, stopped now) may run it.
    async fn remove_stale_rules(&self, active_bridges: &[String], defined_bridges: &[&str]) {
        match self.firewall.bridges() {
            Ok(bridges) => {
                for bridge in bridges.into_iter().filter(|b| !active_bridges.contains(b)) {
                    if !defined_bridges.contains(&bridge.as_str())
                        && !matches!(self.link.link_info(&bridge).await, Ok(None))
                    {
                        info!(bridge = %bridge, "keeping the firewall rules of bridge {bridge}: it is there, and no network of this daemon's has it");
                        continue;
                    }
                    info!(bridge = %bridge, "removing firewall rules left for an inactive network");
                    if let Err(e) = self.firewall.remove(&bridge) {
                        warn!(bridge = %bridge, "removing stale firewall rules: {}", error_chain(&e));
                    }
                }
            }
            Err(e) => warn!(
                "listing the bridges in kvnet's firewall table: {}",
                error_chain(&e)
            ),
        }
    }

    /// Puts running networks' firewall rules back when someone else removes them (an
    /// `nft flush ruleset`, a restart of nftables.service): without them NAT guests lose
    /// their way out and isolated networks forward. Looked at every couple of seconds for
    /// as long as the manager lives; libvirt re-adds its rules only on firewalld's reload.
    pub fn follow_firewall(self: &Arc<Manager>) {
        let manager = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(FIREWALL_CHECK_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is at once, and the rules were just applied.
            ticks.tick().await;
            // A failure that lasts is logged at warn once, not every tick.
            let mut failing = false;
            loop {
                ticks.tick().await;
                let Some(manager) = manager.upgrade() else {
                    break;
                };
                match manager.restore_lost_rules(failing).await {
                    Ok(()) => failing = false,
                    Err(message) if failing => tracing::debug!("{message}"),
                    Err(message) => {
                        warn!("{message}");
                        failing = true;
                    }
                }
            }
        });
    }

    /// Re-applies the rules of running networks that lost them; says what failed.
    /// `failing`: the last attempt failed, and said so.
    pub(super) async fn restore_lost_rules(&self, failing: bool) -> Result<(), String> {
        // Under the lock, so that no start or stop changes the rules meanwhile.
        let networks = self.networks.lock().await;
        let rules: Vec<NetworkRules> = networks
            .values()
            .filter_map(|network| network.live.as_ref())
            .filter_map(firewall_rules)
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let expected: Vec<String> = rules.iter().map(|rules| rules.bridge.clone()).collect();
        let inspection = self
            .firewall
            .inspect(&expected)
            .map_err(|e| format!("looking for kvnet's firewall rules: {}", error_chain(&e)))?;
        let lost = inspection.lost;
        if !lost.is_empty() && !failing {
            warn!(bridges = ?lost, "firewall rules of running networks were removed by someone else (nft flush ruleset?); putting them back");
        }
        let mut failed = Vec::new();
        for rules in rules.iter().filter(|rules| lost.contains(&rules.bridge)) {
            if let Err(e) = self.firewall.apply(rules) {
                failed.push(format!("{}: {}", rules.bridge, error_chain(&e)));
            }
        }
        if inspection.ruleset_changed || self.drop_policy_check_due.load(Ordering::Relaxed) {
            // Docker, ufw or whoever flushed ours may have set a drop policy since.
            self.warn_about_foreign_drop_policies();
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "re-applying firewall rules of {}",
                failed.join("; ")
            ))
        }
    }

    /// Warns about other tables' drop policies that can block guests: each once while it
    /// lasts (one removed and set again is warned about again).
    pub(super) fn warn_about_foreign_drop_policies(&self) {
        let found = match self.firewall.foreign_drop_policies() {
            Ok(found) => found,
            Err(e) => {
                if !self.drop_policy_check_due.swap(true, Ordering::Relaxed) {
                    warn!("inspecting other firewall tables: {}", error_chain(&e));
                }
                return;
            }
        };
        self.drop_policy_check_due.store(false, Ordering::Relaxed);
        let mut warned = self
            .warned_drop_policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for description in found.iter().filter(|found| !warned.contains(found)) {
            warn!("{description}: it can drop guest traffic that kvnet's own table accepts");
        }
        *warned = found;
    }
}
