//! Netns tier: the nf_tables backend against a real kernel, each test in its own namespace.
//! Every call into the backend runs on a thread inside the test's namespace (`Netns::run`),
//! although a backend created there would keep acting on it from any thread.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{Need, Netns};

use super::{Error, Firewall, Inspection, NetworkRules, RuleMode};

fn ready() -> bool {
    testkit::require(&[Need::Root, Need::Netns, Need::Nft])
}

fn network(bridge: &str, mode: RuleMode, ipv4: &str) -> NetworkRules {
    NetworkRules {
        bridge: bridge.to_owned(),
        mode,
        forward_dev: None,
        ipv4: vec![ipv4.parse().unwrap()],
        ipv6: vec![],
        nat_addresses: None,
        nat_ports: (1024, 65535),
        nat_ipv6: false,
    }
}

/// A backend created inside `ns`.
fn backend(ns: &Netns) -> Box<dyn Firewall> {
    ns.run(super::nft).unwrap().unwrap()
}

/// Runs `f` with the backend on a thread inside `ns`.
fn inside<T: Send>(ns: &Netns, fw: &dyn Firewall, f: impl FnOnce(&dyn Firewall) -> T + Send) -> T {
    ns.run(|| f(fw)).unwrap()
}

/// `nft -j list ruleset` in `ns`, as a list of objects.
fn ruleset(ns: &Netns) -> Vec<Value> {
    let json: Value = serde_json::from_str(&ns.sh("nft -j list ruleset").unwrap()).unwrap();
    json["nftables"].as_array().unwrap().clone()
}

/// Rules of one chain of our table, as JSON expression arrays.
fn chain_rules(objects: &[Value], chain: &str) -> Vec<Value> {
    objects
        .iter()
        .filter_map(|object| object.get("rule"))
        .filter(|rule| rule["table"] == "kvnet" && rule["chain"] == chain)
        .map(|rule| rule["expr"].clone())
        .collect()
}

/// Elements of one set or map of our table, as JSON.
fn elements(objects: &[Value], name: &str) -> Vec<Value> {
    objects
        .iter()
        .filter_map(|object| object.get("map").or_else(|| object.get("set")))
        .filter(|set| set["table"] == "kvnet" && set["name"] == name)
        .flat_map(|set| set["elem"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Every (set, element) of our table that belongs to `bridge` (its first key component).
fn owned_by(objects: &[Value], bridge: &str) -> Vec<(String, Value)> {
    let mut owned: Vec<(String, Value)> = objects
        .iter()
        .filter_map(|object| object.get("map").or_else(|| object.get("set")))
        .filter(|set| set["table"] == "kvnet")
        .flat_map(|set| {
            let name = set["name"].as_str().unwrap().to_owned();
            set["elem"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |elem| (name.clone(), elem))
        })
        .filter(|(_, elem)| {
            let first = match elem {
                Value::Array(pair) => &pair[0],
                Value::Object(concat) if concat.contains_key("concat") => &concat["concat"][0],
                other => other,
            };
            first == bridge
        })
        .collect();
    owned.sort_by_key(|(set, elem)| format!("{set} {elem}"));
    owned
}

#[test]
fn default_nat_network_lands_in_the_kernel() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-nat").unwrap();
    let fw = backend(&ns);
    let default = network("virbr0", RuleMode::Nat, "192.168.122.1/24");
    let started = Instant::now();
    inside(&ns, &*fw, |fw| fw.apply(&default)).unwrap();
    eprintln!(
        "apply of one nat network (fresh table): {:?}",
        started.elapsed()
    );

    let objects = ruleset(&ns);
    assert!(
        objects
            .iter()
            .any(|o| o["table"]["family"] == "inet" && o["table"]["name"] == "kvnet"),
        "no table inet kvnet in {objects:?}"
    );
    let nat = chain_rules(&objects, "postrouting");
    let masquerading: Vec<&Value> = nat
        .iter()
        .filter(|expr| expr.to_string().contains("\"masquerade\""))
        .collect();
    let default_set: Vec<&&Value> = masquerading
        .iter()
        .filter(|expr| expr.to_string().contains("\"@nat4\""))
        .collect();
    assert_eq!(default_set.len(), 3, "tcp, udp, rest: {nat:?}");
    let ranges: Vec<Value> = default_set
        .iter()
        .filter_map(|expr| {
            expr.as_array()?
                .iter()
                .find_map(|stmt| stmt["masquerade"].get("port").cloned())
        })
        .collect();
    assert_eq!(ranges, vec![serde_json::json!({"range": [1024, 65535]}); 2]);
    assert!(nat[0].to_string().contains("224.0.0.0"), "{nat:?}");
    for set in ["nat4", "reply4", "out4"] {
        assert_eq!(elements(&objects, set), [Value::from("virbr0")], "{set}");
    }
    assert!(elements(&objects, "in4").is_empty(), "nat is not routed in");
    assert_eq!(elements(&objects, "bridges"), [Value::from("virbr0")]);
    assert_eq!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap(), ["virbr0"]);

    // Applying again replaces, never duplicates.
    let owned = owned_by(&objects, "virbr0");
    assert_eq!(owned.len(), 5, "{owned:?}");
    inside(&ns, &*fw, |fw| fw.apply(&default)).unwrap();
    let again = ruleset(&ns);
    assert_eq!(owned_by(&again, "virbr0"), owned);
    assert_eq!(chain_rules(&again, "forward").len(), 23);
    assert_eq!(chain_rules(&again, "postrouting").len(), 17);
}

#[test]
fn removing_one_network_leaves_the_other_intact() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-two").unwrap();
    let fw = backend(&ns);
    let first = NetworkRules {
        nat_ports: (2000, 3000), // a custom NAT chain too
        nat_ipv6: false,
        ..network("kvbr-a", RuleMode::Nat, "192.168.61.0/24")
    };
    let second = network("kvbr-b", RuleMode::Route, "192.168.62.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&first)).unwrap();
    inside(&ns, &*fw, |fw| fw.apply(&second)).unwrap();
    assert_eq!(
        inside(&ns, &*fw, |fw| fw.bridges()).unwrap(),
        ["kvbr-a", "kvbr-b"]
    );
    let before = ruleset(&ns);
    assert!(!owned_by(&before, "kvbr-a").is_empty());
    assert_eq!(chain_rules(&before, "nat-kvbr-a").len(), 3);
    let second_owns = owned_by(&before, "kvbr-b");
    assert_eq!(second_owns.len(), 4, "{second_owns:?}");

    inside(&ns, &*fw, |fw| fw.remove("kvbr-a")).unwrap();
    let objects = ruleset(&ns);
    assert_eq!(owned_by(&objects, "kvbr-b"), second_owns);
    assert_eq!(owned_by(&objects, "kvbr-a"), []);
    assert!(
        !objects.iter().any(|o| o["chain"]["name"] == "nat-kvbr-a"),
        "kvbr-a's nat chain left: {objects:?}"
    );
    assert_eq!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap(), ["kvbr-b"]);

    // Removing again, or a bridge that never had rules, is fine.
    inside(&ns, &*fw, |fw| fw.remove("kvbr-a")).unwrap();
    inside(&ns, &*fw, |fw| fw.remove("never-seen")).unwrap();
    assert_eq!(owned_by(&ruleset(&ns), "kvbr-b"), second_owns);

    // Open mode means no rules: applying it removes them.
    let open = NetworkRules {
        mode: RuleMode::Open,
        ..second
    };
    inside(&ns, &*fw, |fw| fw.apply(&open)).unwrap();
    assert!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap().is_empty());
    assert_eq!(owned_by(&ruleset(&ns), "kvbr-b"), []);
    // With no network left, the table itself is gone: the ruleset is as before kvnet.
    assert_eq!(ns.sh("nft list tables").unwrap().trim(), "");
}

#[test]
fn a_new_backend_replaces_what_an_earlier_one_left() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-restart").unwrap();
    let old = backend(&ns);
    let routed = network("virbr0", RuleMode::Route, "192.168.150.0/24");
    inside(&ns, &*old, |fw| fw.apply(&routed)).unwrap();
    drop(old);

    // A restarted daemon knows nothing in memory; the kernel still has the rules.
    let fw = backend(&ns);
    assert_eq!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap(), ["virbr0"]);
    let nat = network("virbr0", RuleMode::Nat, "192.168.122.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&nat)).unwrap();
    let objects = ruleset(&ns);
    assert!(
        elements(&objects, "in4").is_empty(),
        "routed subnet left behind"
    );
    assert_eq!(owned_by(&objects, "virbr0").len(), 5);

    let fresh = backend(&ns);
    inside(&ns, &*fresh, |fw| fw.remove("virbr0")).unwrap();
    assert_eq!(owned_by(&ruleset(&ns), "virbr0"), []);
}

/// Rule handles of our table by chain, in order: a rule deleted and added again (a flushed
/// chain, counters reset) gets a new handle.
fn rule_handles(ns: &Netns) -> Vec<(String, u64)> {
    let json: Value =
        serde_json::from_str(&ns.sh("nft -a -j list table inet kvnet").unwrap()).unwrap();
    json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|object| object.get("rule"))
        .map(|rule| {
            let chain = rule["chain"].as_str().unwrap().to_owned();
            (chain, rule["handle"].as_u64().unwrap())
        })
        .collect()
}

/// The handle of the first rule of `chain`.
fn first_handle(handles: &[(String, u64)], chain: &str) -> u64 {
    handles.iter().find(|(name, _)| name == chain).unwrap().1
}

#[test]
fn a_restarted_backend_leaves_current_rules_in_place_and_replaces_older_ones() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-in-place").unwrap();
    let plain = network("kvbr-plain", RuleMode::Nat, "192.168.80.0/24");
    let custom = NetworkRules {
        nat_addresses: Some(("10.9.0.1".parse().unwrap(), "10.9.0.4".parse().unwrap())),
        ..network("kvbr-custom", RuleMode::Nat, "192.168.81.0/24")
    };
    let old = backend(&ns);
    for net in [&plain, &custom] {
        inside(&ns, &*old, |fw| fw.apply(net)).unwrap();
    }
    drop(old);
    let before = rule_handles(&ns);
    assert!(before.len() > 30, "{before:?}");

    // A restarted daemon re-applies the networks it adopts: nothing is sent again, so no
    // rule is replaced (its counters are kept), and nothing else changes.
    let listing = ns.sh("nft -a list table inet kvnet").unwrap();
    let restarted = backend(&ns);
    for net in [&plain, &custom] {
        inside(&ns, &*restarted, |fw| fw.apply(net)).unwrap();
    }
    assert_eq!(ns.sh("nft -a list table inet kvnet").unwrap(), listing);
    drop(restarted);

    // Rules an older build wrote (the same number, without this build's stamps) are
    // replaced, the skeleton's and the custom NAT chain's alike.
    for chain in ["input", "nat-kvbr-custom"] {
        let rule = ns
            .sh(&format!("nft list chain inet kvnet {chain}"))
            .unwrap()
            .lines()
            .map(str::trim)
            .find(|line| line.contains("counter"))
            .unwrap()
            .replace(" packets 0 bytes 0", "");
        let handle = first_handle(&before, chain);
        ns.sh(&format!(
            "nft replace rule inet kvnet {chain} handle {handle} {rule}"
        ))
        .unwrap();
    }
    let older = rule_handles(&ns);
    let upgraded = backend(&ns);
    for net in [&plain, &custom] {
        inside(&ns, &*upgraded, |fw| fw.apply(net)).unwrap();
    }
    let after = rule_handles(&ns);
    assert_eq!(after.len(), before.len(), "{after:?}");
    for chain in ["input", "forward", "nat-kvbr-custom"] {
        assert_ne!(
            first_handle(&after, chain),
            first_handle(&older, chain),
            "{chain} was not replaced"
        );
    }
    // Once replaced, the rules are current again.
    let upgraded_listing = ns.sh("nft -a list table inet kvnet").unwrap();
    let again = backend(&ns);
    for net in [&plain, &custom] {
        inside(&ns, &*again, |fw| fw.apply(net)).unwrap();
    }
    assert_eq!(
        ns.sh("nft -a list table inet kvnet").unwrap(),
        upgraded_listing
    );
}

#[test]
fn foreign_drop_policies_are_reported_and_never_touched() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-foreign").unwrap();
    // Docker's iptables-nft FORWARD drop, a ufw-like inet input drop, and an accept chain.
    ns.sh(concat!(
        "nft add table ip filter; ",
        "nft add chain ip filter FORWARD '{ type filter hook forward priority 0; policy drop; }'; ",
        "nft add rule ip filter FORWARD iifname docker0 accept; ",
        "nft add table inet ufwlike; ",
        "nft add chain inet ufwlike input '{ type filter hook input priority 0; policy drop; }'; ",
        "nft add chain inet ufwlike output '{ type filter hook output priority 0; policy accept; }'; ",
        "nft add chain inet ufwlike helper",
    ))
    .unwrap();
    let foreign = || {
        ns.sh("nft -j list table ip filter; nft -j list table inet ufwlike")
            .unwrap()
    };
    let before = foreign();
    let fw = backend(&ns);
    inside(&ns, &*fw, |fw| {
        fw.apply(&network("virbr0", RuleMode::Nat, "192.168.122.0/24"))
    })
    .unwrap();
    let mut reported = inside(&ns, &*fw, |fw| fw.foreign_drop_policies()).unwrap();
    reported.sort();
    assert_eq!(
        reported,
        [
            "table inet ufwlike chain input (hook input) has policy drop",
            "table ip filter chain FORWARD (hook forward) has policy drop",
        ]
    );

    // A base chain of someone's own in our table is theirs: told about, not "mended"
    // (the skeleton never touches it, so that would go on every 2 s for ever).
    ns.sh("nft add chain inet kvnet mine '{ type filter hook forward priority 10; policy drop; }'")
        .unwrap();
    let expected = ["virbr0".to_owned()];
    let lost = inside(&ns, &*fw, |fw| fw.inspect(&expected)).unwrap().lost;
    assert_eq!(lost, Vec::<String>::new());
    let reported = inside(&ns, &*fw, |fw| fw.foreign_drop_policies()).unwrap();
    assert!(
        reported.contains(&"table inet kvnet chain mine (hook forward) has policy drop".to_owned()),
        "{reported:?}"
    );
    ns.sh("nft delete chain inet kvnet mine").unwrap();

    inside(&ns, &*fw, |fw| fw.remove("virbr0")).unwrap();
    assert_eq!(foreign(), before);
}

#[test]
fn a_failing_batch_changes_nothing() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-atomic").unwrap();
    let fw = backend(&ns);
    let custom = |bridge: &str, net: &str| NetworkRules {
        nat_ports: (2000, 3000),
        nat_ipv6: false,
        ..network(bridge, RuleMode::Nat, net)
    };
    inside(&ns, &*fw, |fw| {
        fw.apply(&custom("kvbr-a", "192.168.71.0/24"))
    })
    .unwrap();
    // Make the kernel refuse the next apply: a chain where kvbr-b's NAT chain goes, which
    // cannot be replaced while a rule jumps to it.
    ns.sh("nft add chain inet kvnet nat-kvbr-b; nft add chain inet kvnet other; nft add rule inet kvnet other jump nat-kvbr-b")
        .unwrap();
    let snapshot = || ns.sh("nft -s list ruleset").unwrap();
    let before = snapshot();
    let err = inside(&ns, &*fw, |fw| {
        fw.apply(&custom("kvbr-b", "192.168.72.0/24"))
    })
    .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            Error::Batch {
                action: "apply",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(message.contains("kvbr-b"), "{message}");
    assert!(
        message.contains("Device or resource busy"),
        "no nft text in: {message}"
    );
    assert_eq!(snapshot(), before);

    // Removal that the kernel refuses (someone else jumps to our chain) is atomic too.
    ns.sh("nft flush chain inet kvnet other; nft delete chain inet kvnet nat-kvbr-b; nft add rule inet kvnet other jump nat-kvbr-a").unwrap();
    let before = snapshot();
    let err = inside(&ns, &*fw, |fw| fw.remove("kvbr-a")).unwrap_err();
    assert!(err.to_string().contains("kvbr-a"), "{err}");
    assert_eq!(snapshot(), before);
    // The backend still knows what kvbr-a owns: once the foreign jump is gone it goes.
    ns.sh("nft delete chain inet kvnet other").unwrap();
    inside(&ns, &*fw, |fw| fw.remove("kvbr-a")).unwrap();
    assert_eq!(owned_by(&ruleset(&ns), "kvbr-a"), []);

    // Names are checked before nft sees them.
    let mut bad = network("kvbr-c", RuleMode::Nat, "192.168.73.0/24");
    bad.forward_dev = Some("eth0\"; flush ruleset".to_owned());
    let before = snapshot();
    let err = inside(&ns, &*fw, |fw| fw.apply(&bad)).unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{err:?}");
    assert_eq!(snapshot(), before);
}

#[test]
fn a_foreign_flush_or_delete_is_healed_by_the_next_change() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-heal").unwrap();
    let fw = backend(&ns);
    let net = network("virbr0", RuleMode::Nat, "192.168.122.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&net)).unwrap();
    ns.sh("nft flush ruleset").unwrap();
    assert!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap().is_empty());
    inside(&ns, &*fw, |fw| fw.apply(&net)).unwrap();
    assert_eq!(inside(&ns, &*fw, |fw| fw.bridges()).unwrap(), ["virbr0"]);
    let objects = ruleset(&ns);
    assert_eq!(chain_rules(&objects, "postrouting").len(), 17);
    assert_eq!(owned_by(&objects, "virbr0").len(), 5);

    // A network stopping after the whole table went is stopped: the table is not built
    // again for it (which would take every module the skeleton uses).
    let other = network("virbr1", RuleMode::Isolated, "192.168.100.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&other)).unwrap();
    ns.sh("nft delete table inet kvnet").unwrap();
    inside(&ns, &*fw, |fw| fw.remove("virbr0")).unwrap();
    assert_eq!(ns.sh("nft list ruleset").unwrap(), "");
    inside(&ns, &*fw, |fw| fw.apply(&other)).unwrap();
    assert_eq!(owned_by(&ruleset(&ns), "virbr1").len(), 2);
}

#[test]
fn inspect_sees_every_way_our_rules_can_be_taken_away() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-lost").unwrap();
    let fw = backend(&ns);
    let plain = network("virbr0", RuleMode::Nat, "192.168.122.0/24");
    let mut custom = network("virbr1", RuleMode::Nat, "192.168.100.0/24");
    custom.nat_ports = (2000, 3000);
    let expected = ["virbr0".to_owned(), "virbr1".to_owned()];
    let apply_both = || {
        inside(&ns, &*fw, |fw| {
            fw.apply(&plain)?;
            fw.apply(&custom)
        })
        .unwrap()
    };
    let inspect = || inside(&ns, &*fw, |fw| fw.inspect(&expected)).unwrap();
    apply_both();
    // Our own batches changed the ruleset; then nothing did.
    assert_eq!(
        inspect(),
        Inspection {
            ruleset_changed: true,
            lost: vec![]
        }
    );
    assert_eq!(inspect(), Inspection::default());
    // Someone else's table changed: looked at, and nothing of ours is lost.
    ns.sh("nft add table ip other").unwrap();
    assert_eq!(inspect().lost, Vec::<String>::new());
    assert_eq!(inspect(), Inspection::default());
    ns.sh("nft delete table ip other").unwrap();
    let intact = ns.sh("nft -s list ruleset").unwrap();

    // Inspects after `damage`, expecting the networks `gone` lost; repairs them as the
    // manager does; then all is as it was.
    let expect_repaired = |damage: &str, gone: &[String]| {
        assert_eq!(
            inspect(),
            Inspection {
                ruleset_changed: true,
                lost: gone.to_vec()
            },
            "after {damage}"
        );
        inside(&ns, &*fw, |fw| {
            for bridge in gone {
                fw.apply(if bridge == "virbr0" { &plain } else { &custom })?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(
            ns.sh("nft -s list ruleset").unwrap(),
            intact,
            "after {damage}"
        );
        assert!(inspect().lost.is_empty(), "after repairing {damage}");
    };

    for (damage, gone) in [
        ("nft flush ruleset", &expected[..]),
        ("nft flush table inet kvnet", &expected[..]),
        ("nft flush chain inet kvnet forward", &expected[..]),
        ("nft add rule inet kvnet input accept", &expected[..]),
        ("nft flush chain inet kvnet nat-virbr1", &expected[1..]),
        (
            "nft delete element inet kvnet bridges '{ virbr0 }'",
            &expected[..1],
        ),
        // One element of a network's own, the rest in place: its NAT alone stops.
        (
            "nft delete element inet kvnet nat4 '{ virbr0 }'",
            &expected[..1],
        ),
        (
            "nft delete element inet kvnet reply4 '{ virbr1 }'",
            &expected[1..],
        ),
        (
            "nft delete element inet kvnet postrouting_iif '{ virbr1 }'",
            &expected[1..],
        ),
        // Re-pointed: the element is there, the NAT is not, and adding it back as it
        // was clashes with the element there.
        (
            "nft delete element inet kvnet postrouting_iif '{ virbr1 }'; \
             nft add element inet kvnet postrouting_iif '{ virbr1 : accept }'",
            &expected[1..],
        ),
        // A drop policy on one of our base chains stops every network.
        (
            "nft chain inet kvnet forward '{ policy drop; }'",
            &expected[..],
        ),
        // A map element for a network without a NAT chain of its own stops its NAT.
        (
            "nft add element inet kvnet postrouting_iif '{ virbr0 : accept }'",
            &expected[..1],
        ),
        // One jumping to another network's chain gives it that network's NAT.
        (
            "nft add element inet kvnet postrouting_iif '{ virbr0 : jump nat-virbr1 }'",
            &expected[..],
        ),
    ] {
        ns.sh(damage).unwrap();
        expect_repaired(damage, gone);
    }

    // A rule replaced in place keeps every count, but not our stamp; one deleted leaves
    // the others stamped, but not their count.
    for (verb, chain, gone) in [
        ("replace", "forward", &expected[..]),
        ("replace", "nat-virbr1", &expected[1..]),
        ("delete", "nat-virbr1", &expected[1..]),
    ] {
        let listing: Value = serde_json::from_str(
            &ns.sh(&format!("nft -a -j list chain inet kvnet {chain}"))
                .unwrap(),
        )
        .unwrap();
        let handle = listing["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find_map(|object| object["rule"]["handle"].as_u64())
            .unwrap();
        let rule = if verb == "replace" {
            "counter accept"
        } else {
            ""
        };
        let damage = format!("nft {verb} rule inet kvnet {chain} handle {handle} {rule}");
        ns.sh(&damage).unwrap();
        expect_repaired(&damage, gone);
    }

    // A network whose map element was re-pointed stops, before any inspection saw it.
    ns.sh(
        "nft delete element inet kvnet postrouting_iif '{ virbr1 }'; \
         nft add element inet kvnet postrouting_iif '{ virbr1 : accept }'",
    )
    .unwrap();
    inside(&ns, &*fw, |fw| fw.remove("virbr1")).unwrap();
    let objects = ruleset(&ns);
    assert_eq!(owned_by(&objects, "virbr1"), []);
    assert!(chain_rules(&objects, "nat-virbr1").is_empty());

    // Stopping a network whose chain another element jumps to, and one whose elements
    // were all deleted by hand but its chain: nothing of it is left either way.
    inside(&ns, &*fw, |fw| fw.apply(&custom)).unwrap();
    ns.sh("nft add element inet kvnet postrouting_iif '{ kvbr-x : jump nat-virbr1 }'")
        .unwrap();
    inside(&ns, &*fw, |fw| fw.remove("virbr1")).unwrap();
    assert_eq!(
        elements(&ruleset(&ns), "postrouting_iif"),
        Vec::<Value>::new()
    );
    inside(&ns, &*fw, |fw| fw.apply(&custom)).unwrap();
    for (set, element) in owned_by(&ruleset(&ns), "virbr1") {
        let key = match element {
            Value::Array(pair) => pair[0].as_str().unwrap().to_owned(),
            Value::Object(concat) => concat["concat"]
                .as_array()
                .unwrap()
                .iter()
                .map(|part| part.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(" . "),
            other => other.as_str().unwrap().to_owned(),
        };
        ns.sh(&format!(
            "nft delete element inet kvnet {set} '{{ {key} }}'"
        ))
        .unwrap();
    }
    inside(&ns, &*fw, |fw| fw.remove("virbr1")).unwrap();
    assert!(
        !ns.sh("nft list table inet kvnet")
            .unwrap()
            .contains("nat-virbr1"),
        "chain left behind"
    );
    inside(&ns, &*fw, |fw| fw.remove("virbr0")).unwrap();
    assert_eq!(ns.sh("nft list ruleset").unwrap(), "");
}

/// Element-only batches on their own (the backend falls back to the full batch when one
/// fails, which would hide a broken element encoding from every other test).
#[test]
fn element_batches_reach_the_kernel_atomically() {
    use super::encode::message;
    use super::netlink::{Error as BatchError, Socket};
    use super::rules::{Change, Object, OwnedElement};

    if !ready() {
        return;
    }
    let ns = Netns::new("fw-batches").unwrap();
    let fw = backend(&ns);
    let keep = network("kvbr-keep", RuleMode::Isolated, "192.168.72.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&keep)).unwrap();
    let element = |set: &str, key: &[&str]| OwnedElement {
        set: set.to_owned(),
        key: key.iter().map(|name| (*name).to_owned()).collect(),
    };
    let single = element("bridges", &["kvbr-z"]);
    let pair = element("reply4_dev", &["kvbr-z", "eth9"]);
    let ghost = element("bridges", &["kvbr-ghost"]);
    let mut socket = ns.run(Socket::open).unwrap().unwrap();
    let mut commit = |changes: &[(Change, &OwnedElement)]| {
        let messages: Vec<_> = changes
            .iter()
            .map(|(change, element)| message(&Object::Element(*change, (*element).clone())))
            .collect();
        ns.run(|| socket.commit(&messages)).unwrap()
    };

    commit(&[(Change::Add, &single), (Change::Add, &pair)]).unwrap();
    let objects = ruleset(&ns);
    assert!(elements(&objects, "bridges").contains(&Value::from("kvbr-z")));
    assert_eq!(
        elements(&objects, "reply4_dev"),
        [serde_json::json!({"concat": ["kvbr-z", "eth9"]})]
    );
    // Adding what is there is a no-op, not an error.
    commit(&[(Change::Add, &single)]).unwrap();

    // One refused message: the whole batch is refused and names the element.
    let refused = commit(&[(Change::Delete, &single), (Change::Delete, &ghost)]);
    assert!(
        matches!(&refused, Err(BatchError::Refused { what, source })
            if what == "delete element kvbr-ghost in set bridges"
                && source.raw_os_error() == Some(libc::ENOENT)),
        "{refused:?}"
    );
    assert!(elements(&ruleset(&ns), "bridges").contains(&Value::from("kvbr-z")));
    // Only the last message asks for an acknowledgement; a refused one before it is
    // still reported, and named.
    let refused = commit(&[(Change::Delete, &ghost), (Change::Delete, &single)]);
    assert!(
        matches!(&refused, Err(BatchError::Refused { what, .. })
            if what == "delete element kvbr-ghost in set bridges"),
        "{refused:?}"
    );
    assert!(elements(&ruleset(&ns), "bridges").contains(&Value::from("kvbr-z")));

    commit(&[(Change::Delete, &single), (Change::Delete, &pair)]).unwrap();
    let objects = ruleset(&ns);
    assert_eq!(elements(&objects, "bridges"), [Value::from("kvbr-keep")]);
    assert!(elements(&objects, "reply4_dev").is_empty());
}

/// What `nft list table inet kvnet` prints for one network of every kind: nft decodes the
/// kernel's expressions back into rules, so this checks the netlink encoding against nft's
/// own reading of it. `UPDATE_GOLDEN=1` rewrites `tests/fixtures/nft/listing.nft`.
#[test]
fn nft_reads_back_the_rules_it_would_have_written() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-listing").unwrap();
    let fw = backend(&ns);
    let mut custom = network("kvbr4", RuleMode::Nat, "10.10.0.0/24");
    custom.forward_dev = Some("eth1".to_owned());
    custom.nat_addresses = Some((
        "198.51.100.10".parse().unwrap(),
        "198.51.100.20".parse().unwrap(),
    ));
    custom.nat_ports = (2000, 3000);
    let mut odd_prefix = network("kvbr7", RuleMode::Nat, "10.20.16.0/20");
    odd_prefix.nat_ports = (4000, 4000);
    let dual_stack = NetworkRules {
        ipv6: vec!["fd00:60::/64".parse().unwrap()],
        ..network("kvbr6", RuleMode::Nat, "192.168.60.0/24")
    };
    let nat6 = NetworkRules {
        ipv6: vec!["fd00:80::/64".parse().unwrap()],
        nat_ipv6: true,
        ..network("kvbr8", RuleMode::Nat, "192.168.80.0/24")
    };
    let custom_nat6 = NetworkRules {
        ipv6: vec!["fd00:90:0:10::/60".parse().unwrap()],
        nat_ports: (5000, 6000),
        nat_ipv6: true,
        ..network("kvbr9", RuleMode::Nat, "192.168.90.0/24")
    };
    let mut routed = network("kvbr2", RuleMode::Route, "192.168.150.0/24");
    routed.forward_dev = Some("eth0".to_owned());
    let routed6 = NetworkRules {
        ipv4: vec![],
        ipv6: vec!["2001:db8:ca2:2::/64".parse().unwrap()],
        ..network("kvbr5", RuleMode::Route, "192.168.1.0/24")
    };
    for rules in [
        network("virbr0", RuleMode::Nat, "192.168.122.1/24"),
        custom,
        odd_prefix,
        dual_stack,
        nat6,
        custom_nat6,
        network("kvbr1", RuleMode::Isolated, "192.168.100.0/24"),
        routed,
        routed6,
    ] {
        inside(&ns, &*fw, |fw| fw.apply(&rules)).unwrap();
    }
    let listing = ns.sh("nft list table inet kvnet").unwrap();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nft/listing.nft");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &listing).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(
        listing,
        expected,
        "nft's listing differs from {}",
        path.display()
    );
}

#[test]
fn element_changes_survive_foreign_edits_and_restarts() {
    if !ready() {
        return;
    }
    let ns = Netns::new("fw-elements").unwrap();
    let fw = backend(&ns);
    let keep = network("kvbr-keep", RuleMode::Nat, "192.168.70.0/24");
    let nat = network("kvbr-x", RuleMode::Nat, "192.168.71.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&keep)).unwrap();
    inside(&ns, &*fw, |fw| fw.apply(&nat)).unwrap();
    let keep_owns = owned_by(&ruleset(&ns), "kvbr-keep");
    assert_eq!(keep_owns.len(), 5, "{keep_owns:?}");

    // Someone deletes one of our elements; switching the network to routed must still
    // replace exactly what it owns (the element batch is refused, the full one is not).
    ns.sh("nft delete element inet kvnet reply4 '{ \"kvbr-x\" }'")
        .unwrap();
    let routed = network("kvbr-x", RuleMode::Route, "192.168.71.0/24");
    inside(&ns, &*fw, |fw| fw.apply(&routed)).unwrap();
    let objects = ruleset(&ns);
    let sets: Vec<String> = owned_by(&objects, "kvbr-x")
        .into_iter()
        .map(|(set, _)| set)
        .collect();
    assert_eq!(sets, ["bridges", "in4", "out4", "same_bridge"]);
    let mut pairs: Vec<String> = elements(&objects, "same_bridge")
        .iter()
        .map(Value::to_string)
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            r#"{"concat":["kvbr-keep","kvbr-keep"]}"#,
            r#"{"concat":["kvbr-x","kvbr-x"]}"#,
        ]
    );

    // A restarted backend learns the custom NAT chain from the kernel and removes it.
    let custom = NetworkRules {
        nat_addresses: Some(("10.9.0.1".parse().unwrap(), "10.9.0.4".parse().unwrap())),
        ..nat
    };
    inside(&ns, &*fw, |fw| fw.apply(&custom)).unwrap();
    assert_eq!(chain_rules(&ruleset(&ns), "nat-kvbr-x").len(), 3);
    drop(fw);
    let fresh = backend(&ns);
    inside(&ns, &*fresh, |fw| fw.remove("kvbr-x")).unwrap();
    let objects = ruleset(&ns);
    assert_eq!(owned_by(&objects, "kvbr-x"), []);
    assert!(
        !objects.iter().any(|o| o["chain"]["name"] == "nat-kvbr-x"),
        "custom nat chain left: {objects:?}"
    );
    assert_eq!(owned_by(&objects, "kvbr-keep"), keep_owns);
    inside(&ns, &*fresh, |fw| fw.remove("kvbr-keep")).unwrap();
    assert_eq!(ns.sh("nft list tables").unwrap().trim(), "");
}

/// Three namespaces: `host` (bridge br0 192.168.50.1/24, uplink 10.77.0.1/24, forwarding
/// on), `guest` (192.168.50.10 via br0) and `upstream` (10.77.0.2, no route back to the
/// guest subnet, so only masqueraded traffic can be answered).
struct Topology {
    host: Netns,
    guest: Netns,
    upstream: Netns,
}

impl Topology {
    fn new() -> Topology {
        let topology = Topology {
            host: Netns::new("fw-host").unwrap(),
            guest: Netns::new("fw-guest").unwrap(),
            upstream: Netns::new("fw-up").unwrap(),
        };
        let (guest, upstream) = (topology.guest.name(), topology.upstream.name());
        topology
            .host
            .sh(&format!(
                "set -e
                 ip link add br0 type bridge
                 ip addr add 192.168.50.1/24 dev br0
                 ip link set br0 up
                 ip link add vguest type veth peer name eth0 netns {guest}
                 ip link set vguest master br0 up
                 ip link add vup type veth peer name eth0 netns {upstream}
                 ip addr add 10.77.0.1/24 dev vup
                 ip link set vup up
                 echo 1 > /proc/sys/net/ipv4/ip_forward"
            ))
            .unwrap();
        topology
            .guest
            .sh("set -e; ip addr add 192.168.50.10/24 dev eth0; ip link set eth0 up; ip route add default via 192.168.50.1")
            .unwrap();
        topology
            .upstream
            .sh("set -e; ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up")
            .unwrap();
        topology
    }

    /// Connects from the guest's 192.168.50.10, port 700, to a listener in upstream;
    /// returns the peer address the server saw, or the client's error.
    fn connect(&self) -> Result<SocketAddrV4, String> {
        self.connect_from(Ipv4Addr::new(192, 168, 50, 10))
    }

    fn connect_from(&self, source: Ipv4Addr) -> Result<SocketAddrV4, String> {
        let server = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 8080);
        tcp_connection(
            (&self.guest, SocketAddrV4::new(source, 700)),
            (&self.upstream, server),
            server,
        )
    }

    /// Connects from upstream's 10.77.0.2 to `dial`, with a listener on the guest's
    /// 192.168.50.10:8080; returns the peer address the guest saw.
    fn connect_in(&self, dial: SocketAddrV4) -> Result<SocketAddrV4, String> {
        tcp_connection(
            (
                &self.upstream,
                SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 0),
            ),
            (
                &self.guest,
                SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 10), 8080),
            ),
            dial,
        )
    }
}

/// Connects from `client`'s `source` to `dial` while `server` listens on `listen`; returns
/// the peer address the server saw, or the client's error.
fn tcp_connection(
    (client, source): (&Netns, SocketAddrV4),
    (server, listen): (&Netns, SocketAddrV4),
    dial: SocketAddrV4,
) -> Result<SocketAddrV4, String> {
    let listener = server.run(|| TcpListener::bind(listen)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    client.run(|| connect_bound(source, dial)).unwrap()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok((_, std::net::SocketAddr::V4(peer))) => return Ok(peer),
            Ok((_, peer)) => return Err(format!("unexpected peer {peer}")),
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("server saw no connection: {e}")),
        }
    }
}

/// A TCP connection from `source` (the guest's port 700 is below 1024, which NAT must not
/// keep), bounded by a 3 s send timeout (Linux applies it to connect).
fn connect_bound(source: SocketAddrV4, server: SocketAddrV4) -> Result<TcpStream, String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| e.to_string())?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| e.to_string())?;
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(3, 0),
    )
    .map_err(|e| e.to_string())?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(source)).map_err(|e| e.to_string())?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(server)).map_err(|e| format!("connect: {e}"))?;
    Ok(TcpStream::from(fd))
}

#[test]
fn nat_masquerades_guest_traffic_and_isolated_does_not_forward() {
    if !ready() {
        return;
    }
    let net = Topology::new();
    let fw = backend(&net.host);
    let nat = network("br0", RuleMode::Nat, "192.168.50.0/24");
    inside(&net.host, &*fw, |fw| fw.apply(&nat)).unwrap();
    let peer = net.connect().expect("guest reaches upstream through nat");
    assert_eq!(
        *peer.ip(),
        Ipv4Addr::new(10, 77, 0, 1),
        "masqueraded to the uplink address"
    );
    assert!(
        peer.port() >= 1024,
        "source port {} kept below 1024",
        peer.port()
    );

    // A guest that takes an address outside the network's subnet is not forwarded.
    net.guest
        .sh("ip addr add 192.168.99.10/24 dev eth0")
        .unwrap();
    let rejected_out = || {
        let forward = chain_rules(&ruleset(&net.host), "forward");
        let last = forward.last().unwrap().as_array().unwrap().clone();
        assert!(
            last.iter().any(|stmt| stmt.get("reject").is_some()),
            "{last:?}"
        );
        last.iter()
            .find_map(|stmt| stmt["counter"]["packets"].as_u64())
            .unwrap()
    };
    assert_eq!(rejected_out(), 0);
    let spoofed = net.connect_from(Ipv4Addr::new(192, 168, 99, 10));
    assert!(spoofed.is_err(), "foreign source forwarded: {spoofed:?}");
    assert!(
        rejected_out() > 0,
        "the outbound reject did not see the SYN"
    );

    // The same bridge as an isolated network: nothing leaves it.
    let isolated = NetworkRules {
        mode: RuleMode::Isolated,
        ..nat.clone()
    };
    inside(&net.host, &*fw, |fw| fw.apply(&isolated)).unwrap();
    let refused = net.connect();
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("ECONNREFUSED")),
        "isolated network not rejected: {refused:?}"
    );

    // And back to nat, with a configured port range this time.
    let ranged = NetworkRules {
        nat_ports: (2000, 2010),
        nat_ipv6: false,
        ..nat
    };
    inside(&net.host, &*fw, |fw| fw.apply(&ranged)).unwrap();
    let peer = net.connect().expect("guest reaches upstream again");
    assert!(
        (2000..=2010).contains(&peer.port()),
        "port {} outside 2000-2010",
        peer.port()
    );
}

#[test]
fn port_forwards_reach_nat_guests_and_no_other_connection_in_does() {
    if !ready() {
        return;
    }
    let net = Topology::new();
    net.upstream
        .sh("ip route add 192.168.50.0/24 via 10.77.0.1")
        .unwrap();
    let fw = backend(&net.host);
    let nat = network("br0", RuleMode::Nat, "192.168.50.0/24");
    inside(&net.host, &*fw, |fw| fw.apply(&nat)).unwrap();
    let guest = SocketAddrV4::new(Ipv4Addr::new(192, 168, 50, 10), 8080);
    let refused = |result: &Result<SocketAddrV4, String>| {
        result.as_ref().is_err_and(|e| e.contains("ECONNREFUSED"))
    };
    let direct = net.connect_in(guest);
    assert!(
        refused(&direct),
        "outside connection into a NAT network: {direct:?}"
    );

    // The administrator forwards the host's port 2222 to the guest, in a table of their own.
    net.host
        .sh(concat!(
            "set -e; nft add table ip admin; ",
            "nft add chain ip admin prerouting '{ type nat hook prerouting priority dstnat; }'; ",
            "nft add rule ip admin prerouting iifname vup tcp dport 2222 dnat to 192.168.50.10:8080",
        ))
        .unwrap();
    let forwarded = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 1), 2222);
    let peer = net
        .connect_in(forwarded)
        .expect("the forwarded port reaches the guest");
    assert_eq!(
        *peer.ip(),
        Ipv4Addr::new(10, 77, 0, 2),
        "the client's own address"
    );
    let direct = net.connect_in(guest);
    assert!(
        refused(&direct),
        "a port forward opened the whole guest: {direct:?}"
    );

    // An isolated network forwards nothing, forwarded ports included.
    let isolated = NetworkRules {
        mode: RuleMode::Isolated,
        ..nat
    };
    inside(&net.host, &*fw, |fw| fw.apply(&isolated)).unwrap();
    let forwarded_in = net.connect_in(forwarded);
    assert!(
        refused(&forwarded_in),
        "into an isolated network: {forwarded_in:?}"
    );
    assert!(
        net.host
            .sh("nft list table ip admin")
            .unwrap()
            .contains("dnat to 192.168.50.10:8080"),
        "the administrator's table was touched"
    );
}

/// A port forward that any interface reaches (Docker's kind) lets another network's guests
/// in only as they may leave their network: not from an isolated one, nor with a source
/// that is not theirs, which the NAT on the way out would otherwise hide. UDP, so that what
/// gets in shows even when no answer could get out.
#[test]
fn port_forwards_from_other_networks_take_only_what_may_leave_them() {
    if !ready() {
        return;
    }
    let net = Topology::new();
    let other = Netns::new("fw-other").unwrap();
    net.host
        .sh(&format!(
            "set -e
             ip link add br1 type bridge
             ip addr add 192.168.51.1/24 dev br1
             ip link set br1 up
             ip link add vother type veth peer name eth0 netns {}
             ip link set vother master br1 up
             nft add table ip admin
             nft add chain ip admin prerouting '{{ type nat hook prerouting priority dstnat; }}'
             nft add rule ip admin prerouting ip daddr 10.77.0.1 udp dport 2222 dnat to 192.168.50.10:8080",
            other.name()
        ))
        .unwrap();
    other
        .sh("set -e; ip addr add 192.168.51.10/24 dev eth0; ip addr add 10.99.0.5/32 dev eth0; ip link set eth0 up; ip route add default via 192.168.51.1")
        .unwrap();
    let fw = backend(&net.host);
    inside(&net.host, &*fw, |fw| {
        fw.apply(&network("br0", RuleMode::Nat, "192.168.50.0/24"))
    })
    .unwrap();
    let listener = net
        .guest
        .run(|| std::net::UdpSocket::bind("192.168.50.10:8080"))
        .unwrap()
        .unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // The source the guest sees for a datagram `other` sends from `source` to the
    // forwarded port, if it gets there.
    let from_other = |source: [u8; 4]| {
        other
            .run(|| {
                let socket = std::net::UdpSocket::bind((Ipv4Addr::from(source), 0)).unwrap();
                socket.send_to(b"hello", "10.77.0.1:2222").unwrap();
            })
            .unwrap();
        let mut buffer = [0u8; 16];
        listener
            .recv_from(&mut buffer)
            .ok()
            .map(|(_, peer)| peer.ip())
    };
    let nat_other = network("br1", RuleMode::Nat, "192.168.51.0/24");
    inside(&net.host, &*fw, |fw| fw.apply(&nat_other)).unwrap();
    // A NAT network's guest, masqueraded as libvirt's rules do.
    assert_eq!(
        from_other([192, 168, 51, 10]),
        Some([192, 168, 50, 1].into())
    );
    assert_eq!(from_other([10, 99, 0, 5]), None, "a spoofed source got in");
    let isolated = NetworkRules {
        mode: RuleMode::Isolated,
        ..nat_other
    };
    inside(&net.host, &*fw, |fw| fw.apply(&isolated)).unwrap();
    assert_eq!(
        from_other([192, 168, 51, 10]),
        None,
        "out of an isolated network"
    );
}

/// Prints what apply and remove cost with `KVNET_FW_NETWORKS` (default 1000) other networks
/// present: the fastest and the median of 9 tries, since a loaded machine preempts some.
/// Ignored by default (it takes seconds); run with `cargo test --release -p kvnet-netd --lib
/// firewall::tests::apply_cost -- --ignored --nocapture`.
#[test]
#[ignore = "timing report, not a check"]
fn apply_cost_with_many_networks() {
    if !ready() {
        return;
    }
    let count: u32 = std::env::var("KVNET_FW_NETWORKS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1000);
    let ns = Netns::new("fw-cost").unwrap();
    let fw = backend(&ns);
    let rules = |i: u32| {
        network(
            &format!("kvbr{i}"),
            RuleMode::Nat,
            &format!("10.{}.{}.0/24", 100 + i / 256, i % 256),
        )
    };
    let report = |what: &str, mut times: Vec<Duration>| {
        times.sort();
        eprintln!(
            "{what}: fastest {:?}, median {:?}",
            times[0],
            times[times.len() / 2]
        );
    };
    inside(&ns, &*fw, |fw| {
        let started = Instant::now();
        fw.apply(&rules(0)).unwrap();
        eprintln!("first apply (creates the table): {:?}", started.elapsed());
        let started = Instant::now();
        for i in 1..count {
            fw.apply(&rules(i)).unwrap();
        }
        eprintln!("applies 2..={count}: {:?} in total", started.elapsed());
        let timed = |f: &dyn Fn(u32)| {
            (0..9)
                .map(|i| {
                    let started = Instant::now();
                    f(count + i);
                    started.elapsed()
                })
                .collect::<Vec<_>>()
        };
        report(
            &format!("apply with {count} networks present"),
            timed(&|i| fw.apply(&rules(i)).unwrap()),
        );
        report(
            &format!("remove with {count} networks present"),
            timed(&|i| fw.remove(&format!("kvbr{i}")).unwrap()),
        );
        let started = Instant::now();
        let bridges = fw.bridges().unwrap();
        eprintln!(
            "bridges() listing {} bridges: {:?}",
            bridges.len(),
            started.elapsed()
        );
        assert_eq!(bridges.len(), count as usize);
    });
}
