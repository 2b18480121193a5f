//! The in-process libnftables backend.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;

use super::libnft::{self, Context};
use super::rules::{self, bridge_of_chain, check_ifname};
use super::{Error, Firewall, NetworkRules, TABLE};

/// Base-chain hooks where a foreign drop policy breaks guest traffic: DHCP/DNS to the host
/// (input), their replies (output), and everything the guests send outside (forward).
const GUEST_HOOKS: [&str; 3] = ["input", "forward", "output"];

/// Runs kvnet's batches through one libnftables context.
#[derive(Debug)]
pub(super) struct NftFirewall {
    /// libnftables contexts are not thread-safe.
    context: Mutex<Context>,
}

impl NftFirewall {
    pub(super) fn new() -> Result<NftFirewall, Error> {
        let context = Context::new().map_err(|e| Error::Init {
            message: e.to_string(),
        })?;
        Ok(NftFirewall {
            context: Mutex::new(context),
        })
    }

    fn run(&self, command: &str) -> Result<String, libnft::Error> {
        // A panic while holding the lock cannot corrupt the context beyond what the next
        // command's cache refresh repairs.
        let mut context = self.context.lock().unwrap_or_else(PoisonError::into_inner);
        context.run(command)
    }

    fn run_batch(
        &self,
        action: &'static str,
        bridge: &str,
        network: &nftables::schema::Nftables<'static>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let document = rules::document(&rules::skeleton(), network);
        self.run(&document).map_err(|e| Error::Batch {
            action,
            bridge: bridge.to_owned(),
            nft: e.to_string(),
        })?;
        tracing::debug!(
            bridge,
            action,
            elapsed_us = started.elapsed().as_micros(),
            "nftables batch committed"
        );
        Ok(())
    }

    /// All chains of every table, from `list chains` (no rules: cheap).
    fn chains(&self) -> Result<Vec<ListedChain>, Error> {
        const WHAT: &str = "chains";
        let output = self.run("list chains").map_err(|e| Error::List {
            what: WHAT,
            nft: e.to_string(),
        })?;
        let listing: Listing =
            serde_json::from_str(&output).map_err(|source| Error::Parse { what: WHAT, source })?;
        Ok(listing
            .nftables
            .into_iter()
            .filter_map(|item| item.chain)
            .collect())
    }
}

/// `nft -j list chains`, reduced to what we read; other objects (metainfo) are skipped.
#[derive(Debug, Deserialize)]
struct Listing {
    nftables: Vec<ListedObject>,
}

#[derive(Debug, Deserialize)]
struct ListedObject {
    chain: Option<ListedChain>,
}

#[derive(Debug, Deserialize)]
struct ListedChain {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    policy: Option<String>,
}

impl ListedChain {
    fn is_ours(&self) -> bool {
        self.family == "inet" && self.table == TABLE
    }
}

impl Firewall for NftFirewall {
    fn apply(&self, rules: &NetworkRules) -> Result<(), Error> {
        rules.validate()?;
        self.run_batch("apply", &rules.bridge, &rules::render(rules))
    }

    fn remove(&self, bridge: &str) -> Result<(), Error> {
        check_ifname(bridge, "bridge", bridge)?;
        self.run_batch("remove", bridge, &rules::render_removal(bridge))
    }

    fn bridges(&self) -> Result<Vec<String>, Error> {
        let bridges: BTreeSet<String> = self
            .chains()?
            .iter()
            .filter(|chain| chain.is_ours())
            .filter_map(|chain| bridge_of_chain(&chain.name).map(str::to_owned))
            .collect();
        Ok(bridges.into_iter().collect())
    }

    fn foreign_drop_policies(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .chains()?
            .iter()
            .filter(|chain| !chain.is_ours() && chain.policy.as_deref() == Some("drop"))
            .filter_map(|chain| {
                let hook = chain.hook.as_deref()?;
                GUEST_HOOKS.contains(&hook).then(|| {
                    format!(
                        "table {} {} chain {} (hook {hook}) has policy drop",
                        chain.family, chain.table, chain.name
                    )
                })
            })
            .collect())
    }
}
