//! The in-process libnftables backend.
//!
//! Removing a bridge's set elements needs their exact keys (its subnets may have changed
//! since), so the backend remembers what each bridge owns after every commit. A new backend
//! (daemon restart) reads that once from the kernel, on first use.
//!
//! A change that only adds and deletes set elements in a complete table (every start and
//! stop of a network without a custom `<nat>`) goes through [`ElementBatches`]; the rest,
//! and any element batch the kernel refuses, through libnftables with the full
//! "delete if present" teardown and, when needed, the table skeleton.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;

use super::elements::{self, Change, ElementBatches};
use super::libnft::{self, Context};
use super::rules::{self, BRIDGES_SET, OwnedElement, check_ifname, is_data_set};
use super::{Error, Firewall, NetworkRules, TABLE};

/// Base-chain hooks where a foreign drop policy breaks guest traffic: DHCP/DNS to the host
/// (input), their replies (output), and everything the guests send outside (forward).
const GUEST_HOOKS: [&str; 3] = ["input", "forward", "output"];

/// Runs kvnet's batches through one libnftables context, and plain element changes
/// through [`ElementBatches`].
#[derive(Debug)]
pub(super) struct NftFirewall {
    /// libnftables contexts are not thread-safe; the ownership record changes with them.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    context: Context,
    /// The fast path for batches that only add and delete set elements.
    elements: ElementBatches,
    /// What each bridge owns, as last committed; `None` until read from the kernel.
    record: Option<Record>,
    /// Whether our last batch left the table skeleton in place. Re-sending it costs about
    /// a third of a batch, so it is sent only when it may be missing: at first use, after
    /// we deleted the table, and to retry a batch that failed (someone may have flushed it).
    skeleton_present: bool,
}

/// What the bridges own in our table.
#[derive(Debug, Default)]
struct Record {
    /// Set elements, by bridge.
    elements: HashMap<String, Vec<OwnedElement>>,
    /// Bridges with a custom NAT chain (and its verdict-map element).
    custom_nat: HashSet<String>,
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
    fn record(&mut self) -> Result<&mut Record, Error> {
        if self.record.is_none() {
            let mut record = Record::default();
            if self.table_exists()? {
                const WHAT: &str = "table inet kvnet";
                let listing: Listing<ListedObject> =
                    parse(WHAT, self.run("list table inet kvnet"))?;
                for object in listing.nftables {
                    if let Some(map) = object.map.filter(|map| map.table == TABLE) {
                        // Verdict-map elements are `[key, verdict]`: the key is the bridge.
                        record.custom_nat.extend(
                            map.elem
                                .iter()
                                .filter_map(|pair| pair.get(0)?.as_str().map(str::to_owned)),
                        );
                    }
                    let Some(set) = object.set else { continue };
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
                            let bridge = bridge.to_owned();
                            record.elements.entry(bridge).or_default().push(element);
                        }
                    }
                }
            }
            tracing::debug!(
                bridges = record.elements.len(),
                "read kvnet's set elements from the kernel"
            );
            self.record = Some(record);
        }
        Ok(self.record.get_or_insert_with(Record::default))
    }

    /// Replaces `previous` with `now` through the element fast path: deletes what is gone,
    /// adds what is new (adding what is already there is a no-op).
    fn commit_elements(
        &mut self,
        previous: &[OwnedElement],
        now: &[OwnedElement],
    ) -> Result<(), elements::Error> {
        let changes: Vec<(Change, &OwnedElement)> = previous
            .iter()
            .filter(|element| !now.contains(element))
            .map(|element| (Change::Delete, element))
            .chain(now.iter().map(|element| (Change::Add, element)))
            .collect();
        self.elements.commit(&changes)
    }
}

impl NftFirewall {
    pub(super) fn new() -> Result<NftFirewall, Error> {
        let init = |message: String| Error::Init { message };
        let context = Context::new().map_err(|e| init(e.to_string()))?;
        let elements = ElementBatches::open().map_err(|e| init(e.to_string()))?;
        Ok(NftFirewall {
            state: Mutex::new(State {
                context,
                elements,
                record: None,
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
    /// `custom_nat` says whether the bridge gets a custom NAT chain; `batch` renders the
    /// libnftables batch from the previous elements, for whatever the fast path cannot do.
    fn commit(
        &self,
        action: &'static str,
        bridge: &str,
        custom_nat: bool,
        batch: impl FnOnce(&[OwnedElement]) -> nftables::schema::Nftables<'static>,
        now: Vec<OwnedElement>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut state = self.state();
        let record = state.record()?;
        let previous = record.elements.get(bridge).cloned().unwrap_or_default();
        let had_custom_nat = record.custom_nat.contains(bridge);
        // Only set elements change, in a table we know is complete: no libnftables needed.
        let elements_only = state.skeleton_present && !custom_nat && !had_custom_nat;
        let fast = elements_only.then(|| state.commit_elements(&previous, &now));
        let result = match fast {
            Some(Ok(())) => Ok(()),
            fast => {
                if let Some(Err(e)) = fast {
                    // Someone may have changed our table; the full batch repairs it.
                    tracing::debug!(bridge, "element batch failed ({e}); sending the full batch");
                }
                let network = batch(&previous);
                let without_skeleton = (state.skeleton_present && !elements_only)
                    .then(|| state.run(&rules::document(&[], &network)));
                match without_skeleton {
                    Some(Ok(_)) => Ok(()),
                    _ => state
                        .run(&rules::document(&rules::skeleton(), &network))
                        .map(drop),
                }
            }
        };
        state.skeleton_present = result.is_ok();
        result.map_err(|e| Error::Batch {
            action,
            bridge: bridge.to_owned(),
            nft: e.to_string(),
        })?;
        let record = state.record()?;
        if custom_nat {
            record.custom_nat.insert(bridge.to_owned());
        } else {
            record.custom_nat.remove(bridge);
        }
        if now.is_empty() {
            record.elements.remove(bridge);
        } else {
            record.elements.insert(bridge.to_owned(), now);
        }
        if record.elements.is_empty() && record.custom_nat.is_empty() {
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
    map: Option<ListedSet>,
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
            rules::has_custom_nat(rules),
            |previous| rules::render(rules, previous),
            rules::elements(rules),
        )
    }

    fn remove(&self, bridge: &str) -> Result<(), Error> {
        check_ifname(bridge, "bridge", bridge)?;
        self.commit(
            "remove",
            bridge,
            false,
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
