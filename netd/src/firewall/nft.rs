//! The nf_tables backend: kvnet's batches straight to the kernel over netlink.
//!
//! Removing a bridge's set elements needs their exact keys (its subnets may have changed
//! since), so the backend remembers what each bridge owns after every commit. A new backend
//! (daemon restart) reads that once from the kernel, on first use.
//!
//! A change that only adds and deletes set elements in a complete table (every start and
//! stop of a network without a custom `<nat>`) is sent as just those elements. The rest is
//! sent with the full "delete if present" teardown and, when the table may be missing or
//! outdated, the skeleton. A batch the kernel refuses means someone changed our table:
//! what it holds is read again, and the full batch rendered from that (with the skeleton
//! if it needs mending).
//!
//! A change that changes nothing (a restarted daemon re-applying the networks it adopts)
//! sends nothing, so the rules keep their counters and handles. Every rule of the skeleton
//! and of each custom NAT chain carries a stamp in its user data, a fingerprint of the
//! skeleton or chain as this build writes it: a restarted daemon keeps what an earlier run
//! of the same build left, and replaces what an older build wrote, or a rule someone
//! replaced or added by hand (which carries none).
//!
//! The daemon asks every few seconds whether the rules are still there. The ruleset
//! generation answers "nothing changed" in one round trip; only after a change (anyone's)
//! are the bridges set and the rules of each chain read back.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::encode::{self, NFPROTO_INET};
use super::netlink::{self, Message, Socket, Writer};
use super::rules::{self, BRIDGES_SET, Change, NAT_MAP, Object, OwnedElement, SETS, check_ifname};
use super::{Error, Firewall, Inspection, NetworkRules, TABLE};

/// Netfilter families and the hooks of theirs where a foreign drop policy breaks guest
/// traffic: DHCP/DNS to the host (input), their replies (output), and everything the
/// guests send outside or to each other (forward), including ARP.
const GUEST_HOOKS: [(u8, &str, &[Hook]); 5] = {
    const INET_HOOKS: &[Hook] = &[(1, "input"), (2, "forward"), (3, "output")];
    [
        (1, "inet", INET_HOOKS),
        (2, "ip", INET_HOOKS),
        (10, "ip6", INET_HOOKS),
        (7, "bridge", INET_HOOKS),
        (3, "arp", &[(0, "input"), (1, "output")]),
    ]
};
/// A hook's number in its family, and its name.
type Hook = (u32, &'static str);
/// `NF_DROP` as a chain policy.
const POLICY_DROP: u32 = 0;

/// Applies kvnet's batches through one nf_tables netlink socket.
#[derive(Debug)]
pub(super) struct NftFirewall {
    /// One batch at a time; the ownership record changes with them.
    state: Mutex<State>,
    /// The table's skeleton, stamped.
    skeleton: Vec<Object>,
    /// The skeleton's stamp.
    skeleton_stamp: u64,
    /// The rules each skeleton chain holds when nobody else touched our table.
    skeleton_rules: HashMap<String, usize>,
    /// The skeleton's base chains, whose policy is accept.
    base_chains: Vec<String>,
}

#[derive(Debug)]
struct State {
    socket: Socket,
    /// What each bridge owns, as last committed; `None` until read from the kernel.
    record: Option<Record>,
    /// The ruleset generation at which `record` was read from the kernel, until our next
    /// batch: while the kernel reports it still, `record` is what the kernel holds.
    record_read_at: Option<u32>,
    /// What each bridge's rules need, from our batches only: `record` is read back from
    /// the kernel after a loss, and a loss a repair failed to mend must still show.
    owed: Record,
    /// Whether the table holds this build's skeleton, as read with `record` and kept by our
    /// batches since. It is sent again only when it may be missing or outdated: the kernel
    /// showed it so, we deleted the table, or a batch failed (someone may have flushed or
    /// deleted it).
    skeleton_present: bool,
    /// The ruleset generation at which [`Firewall::inspect`] last found everything in place:
    /// while the kernel reports it still, nobody has changed any table since.
    intact_at: Option<u32>,
}

/// What the bridges own in our table.
#[derive(Debug, Default)]
struct Record {
    /// Set elements, by bridge.
    elements: HashMap<String, Vec<OwnedElement>>,
    /// Bridges with a custom NAT chain (and its verdict-map element jumping to it), and
    /// the chain's stamp (`None`: its rules do not all carry one: an older build's,
    /// hand-made, empty).
    custom_nat: HashMap<String, Option<StampedChain>>,
    /// Every element of the verdict map, whatever its verdict: its key and the chain it
    /// jumps to. A bridge's NAT chain can be deleted only once no element jumps to it,
    /// and an element added again with another verdict would clash.
    nat_map: HashMap<String, Option<String>>,
    /// Whether the table exists.
    table_exists: bool,
}

/// A chain whose rules all carry one stamp, and how many there are (a rule deleted
/// leaves the others stamped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StampedChain {
    stamp: u64,
    rules: usize,
}

impl Record {
    /// The verdict-map elements a change of `bridge` deletes: its own, whatever its
    /// verdict, and any jumping to its NAT chain.
    fn map_keys_of(&self, bridge: &str) -> Vec<String> {
        let chain = rules::nat_chain(bridge);
        let mut keys: Vec<String> = self
            .nat_map
            .iter()
            .filter(|(key, jump)| *key == bridge || jump.as_deref() == Some(chain.as_str()))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Records that `bridge` owns `elements` (none: nothing) and, with `custom_nat`, its
    /// own NAT chain, so stamped; the map elements [`Record::map_keys_of`] gives are gone.
    fn set(&mut self, bridge: &str, custom_nat: Option<StampedChain>, elements: &[OwnedElement]) {
        let chain = rules::nat_chain(bridge);
        self.nat_map
            .retain(|key, jump| key != bridge && jump.as_deref() != Some(chain.as_str()));
        match custom_nat {
            Some(stamped) => {
                self.custom_nat.insert(bridge.to_owned(), Some(stamped));
                self.nat_map.insert(bridge.to_owned(), Some(chain));
            }
            None => {
                self.custom_nat.remove(bridge);
            }
        }
        if elements.is_empty() {
            self.elements.remove(bridge);
        } else {
            self.elements.insert(bridge.to_owned(), elements.to_vec());
        }
    }
}

impl State {
    fn commit(&mut self, objects: &[Object]) -> Result<(), netlink::Error> {
        let messages: Vec<Message> = objects.iter().map(encode::message).collect();
        self.socket.commit(&messages)
    }

    /// The keys of every element of `set`, as interface names; `None` if the set (or the
    /// whole table) does not exist.
    fn set_keys(&mut self, set: &str) -> Result<Option<Vec<Vec<String>>>, Error> {
        let elements = self.set_elements(set)?;
        Ok(elements.map(|elements| elements.into_iter().map(|(key, _)| key).collect()))
    }

    /// Every element of `set`: its key, as interface names, and for a verdict map the
    /// chain it jumps to; `None` if the set (or the whole table) does not exist.
    fn set_elements(&mut self, set: &str) -> Result<Option<Vec<ReadElement>>, Error> {
        let mut request = Writer::new();
        request
            .string(encode::NFTA_SET_ELEM_LIST_TABLE, TABLE)
            .string(encode::NFTA_SET_ELEM_LIST_SET, set);
        let what = format!("elements of set {set}");
        let answers = match self.socket.dump(
            encode::NFT_MSG_GETSETELEM,
            NFPROTO_INET,
            &request.finish(),
            &what,
        ) {
            Ok(answers) => answers,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(list_error(&what, e)),
        };
        let mut elements = Vec::new();
        for (_, body) in answers {
            let Some(list) = netlink::attribute(&body, encode::NFTA_SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, element) in netlink::attributes(list) {
                let key = netlink::attribute(element, encode::NFTA_SET_ELEM_KEY)
                    .and_then(|key| netlink::attribute(key, encode::NFTA_DATA_VALUE));
                if let Some(key) = key {
                    let key = key.chunks(encode::IFNAMSIZ).map(netlink::text).collect();
                    elements.push((key, encode::jump_target(element)));
                }
            }
        }
        Ok(Some(elements))
    }

    /// The ruleset's generation, which every batch committed by anyone changes.
    fn generation(&mut self) -> Result<u32, Error> {
        const WHAT: &str = "ruleset generation";
        let body = self
            .socket
            .get(encode::NFT_MSG_GETGEN, 0, &[], WHAT)
            .map_err(|e| list_error(WHAT, e))?;
        netlink::attribute(&body, encode::NFTA_GEN_ID)
            .and_then(netlink::be32)
            .ok_or_else(|| Error::List {
                what: WHAT.to_owned(),
                reason: "the kernel's answer has no generation id".to_owned(),
            })
    }

    /// Whether one of `base_chains` of our table has policy drop (set by hand): the
    /// skeleton's policies are accept, and one base chain dropping stops every network.
    /// Asked chain by chain: a dump would list every chain of the family.
    fn base_chain_drops(&mut self, base_chains: &[String]) -> Result<bool, Error> {
        for chain in base_chains {
            let what = format!("chain {chain} of table inet {TABLE}");
            let mut request = Writer::new();
            request
                .string(encode::NFTA_CHAIN_TABLE, TABLE)
                .string(encode::NFTA_CHAIN_NAME, chain);
            let body = match self.socket.get(
                encode::NFT_MSG_GETCHAIN,
                NFPROTO_INET,
                &request.finish(),
                &what,
            ) {
                Ok(body) => body,
                // Missing: the rule count tells.
                Err(e) if e.errno() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(list_error(&what, e)),
            };
            let policy =
                netlink::attribute(&body, encode::NFTA_CHAIN_POLICY).and_then(netlink::be32);
            if policy == Some(POLICY_DROP) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The bridges that have elements in the bridges set, sorted.
    fn bridges(&mut self) -> Result<Vec<String>, Error> {
        let keys = self.set_keys(BRIDGES_SET)?.unwrap_or_default();
        let mut bridges: Vec<String> = keys
            .into_iter()
            .filter_map(|key| key.into_iter().next())
            .collect();
        bridges.sort();
        bridges.dedup();
        Ok(bridges)
    }

    /// The rules of each chain of our table (chains without rules are absent).
    fn chains(&mut self) -> Result<HashMap<String, ChainRules>, Error> {
        const WHAT: &str = "rules of table inet kvnet";
        let mut request = Writer::new();
        request.string(encode::NFTA_RULE_TABLE, TABLE);
        let answers = match self.socket.dump(
            encode::NFT_MSG_GETRULE,
            NFPROTO_INET,
            &request.finish(),
            WHAT,
        ) {
            Ok(answers) => answers,
            Err(e) if e.errno() == Some(libc::ENOENT) => Vec::new(),
            Err(e) => return Err(list_error(WHAT, e)),
        };
        let mut chains: HashMap<String, ChainRules> = HashMap::new();
        // Rules come in their chains' order.
        for (_, body) in answers {
            // The kernel filters by table since Linux 4.x; older ones answer with all.
            let table = netlink::attribute(&body, encode::NFTA_RULE_TABLE).map(netlink::text);
            let chain = netlink::attribute(&body, encode::NFTA_RULE_CHAIN).map(netlink::text);
            if let (Some(table), Some(chain)) = (table, chain)
                && table == TABLE
            {
                let rules = chains.entry(chain).or_default();
                let stamp =
                    netlink::attribute(&body, encode::NFTA_RULE_USERDATA).and_then(encode::stamp);
                // The chain's stamp is the one all its rules carry.
                if rules.count == 0 || rules.stamp != stamp {
                    rules.stamp = if rules.count == 0 { stamp } else { None };
                }
                rules.count += 1;
            }
        }
        Ok(chains)
    }

    /// What the bridges own in our table now, as the kernel tells it; `chains` as
    /// [`State::chains`] read them.
    fn read_record(&mut self, chains: &HashMap<String, ChainRules>) -> Result<Record, Error> {
        let mut record = Record::default();
        for (set, _) in SETS {
            let Some(keys) = self.set_keys(set)? else {
                continue;
            };
            record.table_exists = true;
            for key in keys {
                let element = OwnedElement {
                    set: set.to_owned(),
                    key,
                };
                if let Some(bridge) = element.bridge() {
                    let bridge = bridge.to_owned();
                    record.elements.entry(bridge).or_default().push(element);
                }
            }
        }
        // Verdict-map keys are the bridges with a custom NAT chain, when they jump to it:
        // one changed by hand (`accept`) is there to be deleted, but the NAT is gone.
        let mapped = self.set_elements(NAT_MAP)?;
        record.table_exists |= mapped.is_some();
        for (key, jump) in mapped.unwrap_or_default() {
            let Some(bridge) = key.into_iter().next() else {
                continue;
            };
            record.nat_map.insert(bridge.clone(), jump.clone());
            if jump.as_deref() != Some(rules::nat_chain(&bridge).as_str()) {
                continue;
            }
            let stamped = chains.get(&rules::nat_chain(&bridge)).and_then(|chain| {
                chain.stamp.map(|stamp| StampedChain {
                    stamp,
                    rules: chain.count,
                })
            });
            record.custom_nat.insert(bridge, stamped);
        }
        Ok(record)
    }
}

/// A set element as the kernel holds it: its key, as interface names, and the chain a
/// verdict-map element jumps to.
type ReadElement = (Vec<String>, Option<String>);

/// The rules of one chain of our table, as the kernel holds them.
#[derive(Debug, Default)]
struct ChainRules {
    /// How many there are.
    count: usize,
    /// The stamp every one of them carries; `None` if any carries another or none (a rule
    /// someone replaced or added by hand carries none).
    stamp: Option<u64>,
}

/// Stamps the rules of `bridge`'s custom NAT chain in `network`; returns its stamp and
/// rule count, if `network` gives it one.
fn stamp_custom_nat(bridge: &str, network: &mut [Object]) -> Option<StampedChain> {
    let chain = rules::nat_chain(bridge);
    let in_chain = |object: &Object| adds_rule_to(object, &chain);
    let stamp = stamp_rules(network, in_chain, in_chain)?;
    Some(StampedChain {
        stamp,
        rules: network.iter().filter(|object| in_chain(object)).count(),
    })
}

/// Stamps every rule of `objects` that `stamped` picks with the fingerprint of the
/// objects `covered` picks (taken before stamping), and returns the stamp; `None` when
/// it picks no rule.
fn stamp_rules(
    objects: &mut [Object],
    covered: impl Fn(&Object) -> bool,
    stamped: impl Fn(&Object) -> bool,
) -> Option<u64> {
    let fingerprint = encode::fingerprint(objects.iter().filter(|object| covered(object)));
    let mut any = false;
    for object in objects.iter_mut().filter(|object| stamped(object)) {
        if let Object::Rule { stamp, .. } = object {
            *stamp = Some(fingerprint);
            any = true;
        }
    }
    any.then_some(fingerprint)
}

/// Whether `object` adds a rule to `chain`.
fn adds_rule_to(object: &Object, chain: &str) -> bool {
    matches!(object, Object::Rule { chain: name, .. } if name == chain)
}

/// Whether `a` and `b` hold the same elements, in any order.
fn same_elements(a: &[OwnedElement], b: &[OwnedElement]) -> bool {
    a.len() == b.len() && a.iter().all(|element| b.contains(element))
}

fn list_error(what: &str, e: netlink::Error) -> Error {
    Error::List {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

impl NftFirewall {
    pub(super) fn new() -> Result<NftFirewall, Error> {
        let socket = Socket::open().map_err(|e| Error::Init {
            message: e.to_string(),
        })?;
        let mut skeleton = rules::skeleton();
        let skeleton_stamp =
            stamp_rules(&mut skeleton, |_| true, |_| true).ok_or_else(|| Error::Init {
                message: "the skeleton has no rule to stamp".to_owned(),
            })?;
        let skeleton_rules = rules::skeleton_rule_counts(&skeleton);
        let base_chains = skeleton
            .iter()
            .filter_map(|object| match object {
                Object::Chain {
                    name,
                    base: Some(_),
                } => Some(name.clone()),
                _ => None,
            })
            .collect();
        Ok(NftFirewall {
            state: Mutex::new(State {
                socket,
                record: None,
                record_read_at: None,
                owed: Record::default(),
                skeleton_present: false,
                intact_at: None,
            }),
            skeleton,
            skeleton_stamp,
            skeleton_rules,
            base_chains,
        })
    }

    /// Whether our table holds this build's skeleton: in `chains` (as [`State::chains`]
    /// read them) each skeleton chain its number of rules, every one with this skeleton's
    /// stamp, and no base chain with a drop policy.
    fn skeleton_current(
        &self,
        state: &mut State,
        chains: &HashMap<String, ChainRules>,
    ) -> Result<bool, Error> {
        let rules_current = self.skeleton_rules.iter().all(|(chain, rules)| {
            chains.get(chain).map_or(*rules == 0, |found| {
                found.count == *rules && found.stamp == Some(self.skeleton_stamp)
            })
        });
        Ok(rules_current && !state.base_chain_drops(&self.base_chains)?)
    }

    /// The ownership record, read from the kernel (with whether the skeleton is current)
    /// when not known.
    fn record<'a>(&self, state: &'a mut State) -> Result<&'a mut Record, Error> {
        if state.record.is_none() {
            // Read before looking: a change made while we look moves it on.
            state.record_read_at = Some(state.generation()?);
            let chains = state.chains()?;
            let record = state.read_record(&chains)?;
            state.skeleton_present = self.skeleton_current(state, &chains)?;
            tracing::debug!(
                bridges = record.elements.len(),
                skeleton_current = state.skeleton_present,
                "read kvnet's table from the kernel"
            );
            state.record = Some(record);
        }
        Ok(state.record.get_or_insert_with(Record::default))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst a stale ownership record, which
        // the next batch the kernel refuses has read again.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `network` after the skeleton, which is then present if the batch went in.
    fn commit_with_skeleton(
        &self,
        state: &mut State,
        network: Vec<Object>,
    ) -> Result<(), netlink::Error> {
        let mut objects = self.skeleton.clone();
        objects.extend(network);
        let result = state.commit(&objects);
        state.skeleton_present = result.is_ok();
        result
    }

    /// Replaces what `bridge` owns with `now` (nothing for a removal) in one batch. `full`
    /// renders the complete change from the previous elements and the verdict-map
    /// elements to delete (with the bridge's custom NAT chain, if it gets one), for
    /// whatever the element batch cannot do.
    fn commit(
        &self,
        action: &'static str,
        bridge: &str,
        full: impl Fn(&[OwnedElement], &[String]) -> Vec<Object>,
        now: Vec<OwnedElement>,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let mut state = self.state();
        let record = self.record(&mut state)?;
        let previous = record.elements.get(bridge).cloned().unwrap_or_default();
        let had_custom_nat = record.custom_nat.get(bridge).copied();
        // Elements in the verdict map for this bridge or its chain: its own (when it
        // has a custom NAT chain), or any someone added or re-pointed.
        let map_keys = record.map_keys_of(bridge).len();
        let render = |record: &Record| {
            let previous = record.elements.get(bridge).map(Vec::as_slice);
            let mut network = full(previous.unwrap_or_default(), &record.map_keys_of(bridge));
            let custom_nat = stamp_custom_nat(bridge, &mut network);
            (network, custom_nat)
        };
        let (network, custom_nat) = render(record);
        // The same elements, and the same custom NAT chain or none, in a current table, as
        // read from the kernel with nothing changed since (a restarted daemon adopting its
        // networks). Otherwise the batches below also heal what someone else took away.
        let in_place = state.skeleton_present
            && same_elements(&previous, &now)
            && had_custom_nat == custom_nat.map(Some)
            && map_keys == usize::from(custom_nat.is_some())
            && state.record_read_at.is_some()
            && state.generation().ok() == state.record_read_at;
        // Only set elements change, in a table we know is complete.
        let elements_only = state.skeleton_present
            && custom_nat.is_none()
            && had_custom_nat.is_none()
            && map_keys == 0;
        // The smallest batch that can make the change, if the table is as we recorded it.
        let quick = if in_place {
            Some(Ok(()))
        } else if elements_only {
            Some(state.commit(&element_changes(&previous, &now)))
        } else if state.skeleton_present {
            Some(state.commit(&network))
        } else {
            None
        };
        let result = match quick {
            Some(Ok(())) => Ok(()),
            // The table may be missing or outdated: the skeleton goes first.
            None => self.commit_with_skeleton(&mut state, network),
            // Someone changed our table since we looked (flushed or deleted it, deleted
            // or re-pointed an element): look again and send it all, with the skeleton if
            // it needs mending. A failed batch changed nothing, so what is read is what is
            // there.
            Some(Err(e)) => {
                tracing::debug!(bridge, "batch failed ({e}); sending the full batch");
                state.record = None;
                match self.record(&mut state) {
                    Err(_) => {
                        state.skeleton_present = false;
                        Err(e)
                    }
                    // Gone with the table: nothing to rebuild first.
                    Ok(record) if now.is_empty() && !record.table_exists => Ok(()),
                    Ok(record) => {
                        let (network, _) = render(record);
                        if state.skeleton_present {
                            state.commit(&network)
                        } else {
                            self.commit_with_skeleton(&mut state, network)
                        }
                    }
                }
            }
        };
        if !in_place {
            state.record_read_at = None;
        }
        result.map_err(|e| Error::Batch {
            action,
            bridge: bridge.to_owned(),
            reason: e.to_string(),
        })?;
        state.owed.set(bridge, custom_nat, &now);
        let record = self.record(&mut state)?;
        record.set(bridge, custom_nat, &now);
        if record.elements.is_empty() && record.custom_nat.is_empty() {
            // Nothing of kvnet's is left: remove the table too, so the ruleset is exactly
            // as it was before the first network started.
            match state.commit(&[Object::DeleteTable]) {
                Err(e) if e.errno() != Some(libc::ENOENT) => {
                    tracing::warn!("removing the empty table inet {TABLE}: {e}");
                }
                _ => {}
            }
            state.skeleton_present = false;
            state.record_read_at = None;
        }
        tracing::debug!(
            bridge,
            action,
            in_place,
            elapsed_us = started.elapsed().as_micros(),
            "nftables batch committed"
        );
        Ok(())
    }
}

/// Replaces `previous` with `now`: deletes what is gone, adds what is new (adding what is
/// already there is a no-op).
fn element_changes(previous: &[OwnedElement], now: &[OwnedElement]) -> Vec<Object> {
    previous
        .iter()
        .filter(|element| !now.contains(element))
        .map(|element| Object::Element(Change::Delete, element.clone()))
        .chain(
            now.iter()
                .map(|element| Object::Element(Change::Add, element.clone())),
        )
        .collect()
}

impl Firewall for NftFirewall {
    fn apply(&self, rules: &NetworkRules) -> Result<(), Error> {
        rules.validate()?;
        self.commit(
            "apply",
            &rules.bridge,
            |previous, unmapped| rules::render(rules, previous, unmapped),
            rules::elements(rules),
        )
    }

    fn remove(&self, bridge: &str) -> Result<(), Error> {
        check_ifname(bridge, "bridge", bridge)?;
        self.commit(
            "remove",
            bridge,
            |previous, unmapped| rules::render_removal(bridge, previous, unmapped),
            Vec::new(),
        )
    }

    fn bridges(&self) -> Result<Vec<String>, Error> {
        self.state().bridges()
    }

    fn inspect(&self, expected: &[String]) -> Result<Inspection, Error> {
        // The caller holds the manager's lock, so no batch of ours runs meanwhile.
        let mut state = self.state();
        // Read before looking: a change made while we look moves it on, so the next
        // call looks again.
        let generation = state.generation()?;
        if state.intact_at == Some(generation) {
            return Ok(Inspection::default());
        }
        let chains = state.chains()?;
        // A skeleton chain flushed or edited (`nft flush table inet kvnet`) breaks every
        // network at once; re-applying any one of them sends the skeleton again.
        let skeleton_intact = self.skeleton_current(&mut state, &chains)?;
        // Every element a bridge owns, not only its place in the bridges set: one lost
        // from `nat4` (an old ruleset restored, an element deleted by hand) stops its
        // NAT alone.
        let found = state.read_record(&chains)?;
        let owed = &state.owed;
        let lost: Vec<String> = expected
            .iter()
            .filter(|bridge| {
                let have = found
                    .elements
                    .get(*bridge)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let has_all_elements = owed.elements.get(*bridge).is_some_and(|owned| {
                    !owned.is_empty() && owned.iter().all(|element| have.contains(element))
                });
                // A stamp also says the chain has rules, all of them ours.
                let owed_chain = owed.custom_nat.get(*bridge);
                let has_custom_nat =
                    owed_chain.is_none_or(|stamp| found.custom_nat.get(*bridge) == Some(stamp));
                // Its own map element only if it has a chain, and none other jumping there
                // (one added or re-pointed by hand changes or stops its NAT).
                let map_as_owed =
                    found.map_keys_of(bridge).len() == usize::from(owed_chain.is_some());
                !skeleton_intact || !has_all_elements || !has_custom_nat || !map_as_owed
            })
            .cloned()
            .collect();
        if lost.is_empty() {
            state.intact_at = Some(generation);
        } else {
            state.intact_at = None;
            state.record = None;
            state.skeleton_present = false;
        }
        Ok(Inspection {
            ruleset_changed: true,
            lost,
        })
    }

    fn foreign_drop_policies(&self) -> Result<Vec<String>, Error> {
        const WHAT: &str = "chains";
        // All families; chains only, no rules or set elements.
        let answers = self
            .state()
            .socket
            .dump(encode::NFT_MSG_GETCHAIN, 0, &[], WHAT)
            .map_err(|e| list_error(WHAT, e))?;
        let mut out = Vec::new();
        for (family, body) in answers {
            let Some((_, family_name, hooks)) = GUEST_HOOKS.iter().find(|(f, ..)| *f == family)
            else {
                continue;
            };
            let table = netlink::attribute(&body, encode::NFTA_CHAIN_TABLE).map(netlink::text);
            let name = netlink::attribute(&body, encode::NFTA_CHAIN_NAME).map(netlink::text);
            let policy =
                netlink::attribute(&body, encode::NFTA_CHAIN_POLICY).and_then(netlink::be32);
            let hook = netlink::attribute(&body, encode::NFTA_CHAIN_HOOK)
                .and_then(|hook| netlink::attribute(hook, encode::NFTA_HOOK_HOOKNUM))
                .and_then(netlink::be32)
                .and_then(|number| hooks.iter().find(|(n, _)| *n == number))
                .map(|(_, hook)| *hook);
            let (Some(table), Some(name), Some(POLICY_DROP), Some(hook)) =
                (table, name, policy, hook)
            else {
                continue;
            };
            // Our base chains' policies are mended; any other chain of our table is
            // someone's, to be told about.
            if *family_name == "inet" && table == TABLE && self.base_chains.contains(&name) {
                continue;
            }
            out.push(format!(
                "table {family_name} {table} chain {name} (hook {hook}) has policy drop"
            ));
        }
        Ok(out)
    }
}
