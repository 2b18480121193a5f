//! The in-process libnftables backend.
//!
//! Removing a bridge's set elements needs their exact keys (its subnets may have changed
//! since), so the backend remembers what each bridge owns after every commit. A new backend
//! (daemon restart) reads that once from the kernel, on first use.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use super::libnft::{self, Context};
use super::rules::{self, BRIDGES_SET, OwnedElement, check_ifname, is_data_set};
use super::{Error, Firewall, NetworkRules, TABLE};

/// Base-chain hooks where a foreign drop policy breaks guest traffic: DHCP/DNS to the host
/// (input), their replies (output), and everything the guests send outside (forward).
const GUEST_HOOKS: [&str; 3] = ["input", "forward", "output"];

/// Runs kvnet's batches through one libnftables context.
#[derive(Debug)]
pub(super) struct NftFirewall {
    /// libnftables contexts are not thread-safe; the ownership record changes with them.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    context: Context,
    /// Set elements each bridge owns, as last committed; `None` until read from the kernel.
    owned: Option<HashMap<String, Vec<OwnedElement>>>,
    /// Whether our last batch left the table skeleton in place. Re-sending it costs about
    /// a third of a batch, so it is sent only when it may be missing: at first use, after
    /// we deleted the table, and to retry a batch that failed (someone may have flushed it).
    skeleton_present: bool,
}

impl State {
    fn run(&mut self, command: &str) -> Result<String, libnft::Error> {
        self.context.run(command)
    }

    /// Whether `table inet kvnet` exists (`list tables` reads no chains or rules).
    fn table_exists(&mut self) -> Result<bool, Error> {
        const WHAT: &str = "tables";
        let listing: Listing<ListedObject> = parse(WHAT, self.run("list tables"))?;
        Ok(listing.nftables.iter().any(|object| {
            object
                .table
                .as_ref()
                .is_some_and(|table| table.family == "inet" && table.name == TABLE)
        }))
    }

    /// The ownership record, read from the kernel the first time.
    fn owned(&mut self) -> Result<&mut HashMap<String, Vec<OwnedElement>>, Error> {
        if self.owned.is_none() {
            let mut owned: HashMap<String, Vec<OwnedElement>> = HashMap::new();
            if self.table_exists()? {
                const WHAT: &str = "table inet kvnet";
                let listing: Listing<ListedObject> =
                    parse(WHAT, self.run("list table inet kvnet"))?;
                for set in listing.nftables.into_iter().filter_map(|object| object.set) {
                    if set.table != TABLE || !is_data_set(&set.name) {
                        continue;
                    }
                    for value in set.elem {
                        // Elements with extra attributes come wrapped in {"elem": {"val": ..}}.
                        let value = match value.get("elem") {
                            Some(elem) => elem["val"].clone(),
                            None => value,
                        };
                        let element = OwnedElement {
                            set: set.name.clone(),
                            key: serde_json::from_value(value)
                                .map_err(|source| Error::Parse { what: WHAT, source })?,
                        };
                        if let Some(bridge) = element.bridge() {
                            owned.entry(bridge.to_owned()).or_default().push(element);
                        }
                    }
                }
            }
            tracing::debug!(
                bridges = owned.len(),
                "read kvnet's set elements from the kernel"
            );
            self.owned = Some(owned);
        }
        Ok(self.owned.get_or_insert_with(HashMap::new))
    }
}

impl NftFirewall {
    pub(super) fn new() -> Result<NftFirewall, Error> {
        let context = Context::new().map_err(|e| Error::Init {
            message: e.to_string(),
        })?;
        Ok(NftFirewall {
            state: Mutex::new(State {
                context,
                owned: None,
                skeleton_present: false,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a stale ownership record, which
        // the add-then-delete teardown tolerates.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces what `bridge` owns with `now` (nothing for a removal) in one batch.
    fn commit(
        &self,
        action: &'static str,
        bridge: &str,
        batch: impl FnOnce(&[OwnedElement]) -> nftables::schema::Nftables<'static>,
        now: Vec<OwnedElement>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut state = self.state();
        let previous = state.owned()?.get(bridge).cloned().unwrap_or_default();
        let network = batch(&previous);
        let without_skeleton = state
            .skeleton_present
            .then(|| state.run(&rules::document(&[], &network)));
        let result = match without_skeleton {
            Some(Ok(output)) => Ok(output),
            // The skeleton may be missing (first use, or someone flushed our table): send it too.
            _ => state.run(&rules::document(&rules::skeleton(), &network)),
        };
        state.skeleton_present = result.is_ok();
        result.map_err(|e| Error::Batch {
            action,
            bridge: bridge.to_owned(),
            nft: e.to_string(),
        })?;
        let owned = state.owned()?;
        if now.is_empty() {
            owned.remove(bridge);
        } else {
            owned.insert(bridge.to_owned(), now);
        }
        if owned.is_empty() {
            // Nothing of kvnet's is left: remove the table too, so the ruleset is exactly
            // as it was before the first network started.
            if let Err(e) = state.run(&format!("delete table inet {TABLE}")) {
                tracing::warn!("removing the empty table inet {TABLE}: {e}");
            }
            state.skeleton_present = false;
        }
        tracing::debug!(
            bridge,
            action,
            elapsed_us = started.elapsed().as_micros(),
            "nftables batch committed"
        );
        Ok(())
    }
}

/// `nft -j list ...`, reduced to what we read; other objects (metainfo, rules) are skipped.
#[derive(Debug, Deserialize)]
struct Listing<T> {
    nftables: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct ListedObject {
    table: Option<ListedTable>,
    chain: Option<ListedChain>,
    set: Option<ListedSet>,
}

#[derive(Debug, Deserialize)]
struct ListedTable {
    family: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct ListedChain {
    family: String,
    table: String,
    name: String,
    hook: Option<String>,
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListedSet {
    table: String,
    name: String,
    #[serde(default)]
    elem: Vec<Value>,
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    output: Result<String, libnft::Error>,
) -> Result<Listing<T>, Error> {
    let output = output.map_err(|e| Error::List {
        what,
        nft: e.to_string(),
    })?;
    serde_json::from_str(&output).map_err(|source| Error::Parse { what, source })
}

impl Firewall for NftFirewall {
    fn apply(&self, rules: &NetworkRules) -> Result<(), Error> {
        rules.validate()?;
        self.commit(
            "apply",
            &rules.bridge,
            |previous| rules::render(rules, previous),
            rules::elements(rules),
        )
    }

    fn remove(&self, bridge: &str) -> Result<(), Error> {
        check_ifname(bridge, "bridge", bridge)?;
        self.commit(
            "remove",
            bridge,
            |previous| rules::render_removal(bridge, previous),
            Vec::new(),
        )
    }

    fn bridges(&self) -> Result<Vec<String>, Error> {
        let mut state = self.state();
        if !state.table_exists()? {
            return Ok(Vec::new());
        }
        const WHAT: &str = "set inet kvnet bridges";
        let command = format!("list set inet {TABLE} {BRIDGES_SET}");
        let listing: Listing<ListedObject> = parse(WHAT, state.run(&command))?;
        let bridges: BTreeSet<String> = listing
            .nftables
            .into_iter()
            .filter_map(|object| object.set)
            .flat_map(|set| set.elem)
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect();
        Ok(bridges.into_iter().collect())
    }

    fn foreign_drop_policies(&self) -> Result<Vec<String>, Error> {
        const WHAT: &str = "chains";
        // `list chains` reads chains only, no rules or set elements.
        let listing: Listing<ListedObject> = parse(WHAT, self.state().run("list chains"))?;
        Ok(listing
            .nftables
            .into_iter()
            .filter_map(|object| object.chain)
            .filter(|chain| {
                !(chain.family == "inet" && chain.table == TABLE)
                    && chain.policy.as_deref() == Some("drop")
            })
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
