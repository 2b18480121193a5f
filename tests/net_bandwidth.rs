//! netns tier: `<bandwidth>` on networks and ports, checked on the kernel's qdiscs and
//! with real traffic through them.
//!
//! A limit on what a device sends is an HTB class `1:1` on it; a limit on what it
//! receives is the same on its IFB device, `kvifb<ifindex>`, which its ingress is
//! redirected to. `1000` kB/s shows as `8Mbit` in tc's output.

mod common;

use common::{DAEMON_NEEDS, Daemon, Netns, attach_guest, require, xml_file};
use testkit::htb_class;

/// A NAT network on `virbr9` (10.9.0.0/24) with `bandwidth` inside `<network>`.
fn network_xml(bandwidth: &str) -> String {
    format!(
        "<network>\n  <name>shaped</name>\n  <forward mode='nat'/>\n  <bridge name='virbr9' stp='off'/>\n{bandwidth}  <ip address='10.9.0.1' netmask='255.255.255.0'/>\n</network>\n"
    )
}

const NETWORK_BANDWIDTH: &str = "  <bandwidth>\n    <inbound average='1000' peak='2000' burst='64'/>\n    <outbound average='500'/>\n  </bandwidth>\n";

/// Defines and starts `shaped`, limited by [`NETWORK_BANDWIDTH`].
fn start_shaped(daemon: &Daemon) {
    let file = xml_file(
        daemon.dirs.path(),
        "shaped.xml",
        &network_xml(NETWORK_BANDWIDTH),
    );
    daemon.ok(&["net-define", file.to_str().expect("utf-8 path")]);
    daemon.ok(&["net-start", "shaped"]);
}

fn ifindex(daemon: &Daemon, name: &str) -> u64 {
    daemon.ip_json(&format!("link show dev {name}"))[0]["ifindex"]
        .as_u64()
        .unwrap_or_else(|| panic!("no link {name}"))
}

fn link_exists(daemon: &Daemon, name: &str) -> bool {
    daemon.ns.sh(&format!("ip link show dev {name}")).is_ok()
}

/// The qdisc kinds on `dev`, and the root HTB qdisc's statistics.
fn qdiscs(daemon: &Daemon, dev: &str) -> (Vec<String>, serde_json::Value) {
    let out = daemon
        .ns
        .sh(&format!("tc -s -j qdisc show dev {dev}"))
        .expect("tc qdisc show");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).expect("tc -j");
    let kinds = all
        .iter()
        .filter_map(|qdisc| qdisc["kind"].as_str().map(str::to_owned))
        .collect();
    let htb = all
        .into_iter()
        .find(|qdisc| qdisc["kind"] == "htb")
        .unwrap_or_default();
    (kinds, htb)
}

/// Sends `count` datagrams of 1,400 bytes from `ns` to `address`, port 9, as fast as
/// the shell writes them: far faster than any limit here. Each goes from a socket of its
/// own, as the port unreachable answering one would fail the next write on the same socket.
fn flood(ns: &Netns, address: &str, count: u32) {
    ns.sh(&format!(
        "bash -c 'data=$(head -c 1400 /dev/zero | tr \\\\0 x); for _ in $(seq {count}); do printf %s \"$data\" >/dev/udp/{address}/9; done'"
    ))
    .expect("send datagrams");
}

#[test]
fn a_networks_bandwidth_shapes_its_bridge_both_ways_and_goes_with_it() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    start_shaped(&daemon);
    assert!(
        daemon
            .ok(&["net-dumpxml", "shaped"])
            .contains(NETWORK_BANDWIDTH),
        "{}",
        daemon.ok(&["net-dumpxml", "shaped"])
    );

    // Inbound (to the guests) on the bridge's egress; outbound on its IFB.
    let ifb = format!("kvifb{}", ifindex(&daemon, "virbr9"));
    let inbound = htb_class(&daemon.ns, "virbr9");
    assert!(
        inbound.contains(" rate 8Mbit ceil 16Mbit burst 64Kb "),
        "{inbound}"
    );
    let outbound = htb_class(&daemon.ns, &ifb);
    assert!(outbound.contains(" rate 4Mbit ceil 4Mbit "), "{outbound}");
    let (kinds, _) = qdiscs(&daemon, "virbr9");
    assert!(kinds.iter().any(|kind| kind == "ingress"), "{kinds:?}");

    // A guest's burst to the host waits in the IFB's class; the host's burst back, in
    // the bridge's.
    let guest = Netns::new("bw-guest").expect("guest netns");
    attach_guest(&daemon, &guest, "virbr9", "10.9.0.2/24", "10.9.0.1");
    // Static neighbours: a burst sent before ARP answers would mostly be dropped unsent.
    let mac = |ns: &Netns, dev: &str| {
        let out = ns
            .sh(&format!("cat /sys/class/net/{dev}/address"))
            .expect("mac");
        out.trim().to_owned()
    };
    let (bridge_mac, guest_mac) = (mac(&daemon.ns, "virbr9"), mac(&guest, "eth0"));
    guest
        .sh(&format!(
            "ip neigh replace 10.9.0.1 lladdr {bridge_mac} dev eth0"
        ))
        .expect("guest neighbour");
    daemon
        .ns
        .sh(&format!(
            "ip neigh replace 10.9.0.2 lladdr {guest_mac} dev virbr9"
        ))
        .expect("host neighbour");
    flood(&guest, "10.9.0.1", 400);
    flood(&daemon.ns, "10.9.0.2", 400);
    for (dev, queue) in [(ifb.as_str(), "limit 50000b"), ("virbr9", "limit 100000b")] {
        let (_, htb) = qdiscs(&daemon, dev);
        let count = |key: &str| htb[key].as_u64().unwrap_or(0);
        assert!(
            count("packets") + count("drops") + count("qlen") >= 400 && count("overlimits") > 0,
            "{dev}: the burst did not go through the limit, or was not held back: {htb}"
        );
        // The queue holds 100 ms at the rate: 50 kB on the IFB (500 kB/s), 100 kB on the
        // bridge; the rest of the 560 kB burst is dropped.
        let leaf = daemon
            .ns
            .sh(&format!("tc qdisc show dev {dev} parent 1:1"))
            .expect("tc qdisc show");
        assert!(
            leaf.starts_with("qdisc bfifo 2: ") && leaf.contains(queue),
            "{leaf}"
        );
    }

    // Destroy takes the IFB as well as the bridge; a new start makes a new pair.
    daemon.ok(&["net-destroy", "shaped"]);
    assert!(!link_exists(&daemon, "virbr9") && !link_exists(&daemon, &ifb));
    daemon.ok(&["net-start", "shaped"]);
    let ifb = format!("kvifb{}", ifindex(&daemon, "virbr9"));
    assert!(htb_class(&daemon.ns, &ifb).contains(" rate 4Mbit "));
    daemon.ok(&["net-destroy", "shaped"]);
    daemon.ok(&["net-undefine", "shaped"]);
    let leftovers = daemon.ns.sh("ip -br link show type ifb").expect("ip link");
    assert!(!leftovers.contains("kvifb"), "{leftovers}");
}

#[test]
fn a_ports_bandwidth_shapes_its_tap_through_restarts_until_it_is_deleted() {
    if !require(&common::port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let port = xml_file(
        daemon.dirs.path(),
        "port.xml",
        "<networkport>\n  <owner>\n    <name>guest</name>\n    <uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid>\n  </owner>\n  <mac address='52:54:00:7b:35:93'/>\n  <bandwidth>\n    <inbound average='250' burst='32'/>\n    <outbound average='125' peak='250'/>\n  </bandwidth>\n</networkport>\n",
    );
    let created = daemon.ok(&["net-port-create", "default", port.to_str().expect("utf-8")]);
    let uuid = created
        .split_whitespace()
        .nth(2)
        .expect("Network port UUID created ...")
        .to_owned();
    assert!(
        daemon
            .ok(&["net-port-dumpxml", "default", &uuid])
            .contains("  <bandwidth>\n    <inbound average='250' burst='32'/>\n    <outbound average='125' peak='250'/>\n  </bandwidth>\n")
    );
    let ifb = format!("kvifb{}", ifindex(&daemon, "vnet0"));
    // Inbound to the guest is what its tap sends.
    assert!(htb_class(&daemon.ns, "vnet0").contains(" rate 2Mbit ceil 2Mbit burst 32Kb "));
    assert!(htb_class(&daemon.ns, &ifb).contains(" rate 1Mbit ceil 2Mbit "));

    // Parked and plugged in again, the tap keeps its limits.
    daemon.ok(&["net-destroy", "default"]);
    daemon.ok(&["net-start", "default"]);
    assert!(htb_class(&daemon.ns, "vnet0").contains(" rate 2Mbit "));
    assert!(htb_class(&daemon.ns, &ifb).contains(" rate 1Mbit "));

    daemon.ok(&["net-port-delete", "default", &uuid]);
    assert!(!link_exists(&daemon, "vnet0") && !link_exists(&daemon, &ifb));

    // A floor is refused by name, and no port is made.
    let floor = xml_file(
        daemon.dirs.path(),
        "floor.xml",
        "<networkport><owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac address='52:54:00:00:00:09'/><bandwidth><inbound average='1' floor='1'/></bandwidth></networkport>",
    );
    let error = daemon.fails(&["net-port-create", "default", floor.to_str().expect("utf-8")]);
    assert!(
        error.contains("unsupported attribute 'floor' on <inbound> in network port"),
        "{error}"
    );
    assert!(!link_exists(&daemon, "vnet0"));
}

#[test]
fn ifb_devices_left_by_a_crash_are_deleted_when_the_daemon_comes_back() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    start_shaped(&daemon);
    let ifb = format!("kvifb{}", ifindex(&daemon, "virbr9"));
    daemon.kill9();
    // The bridge vanishes while the daemon is away; its IFB does not.
    daemon
        .ns
        .sh("ip link del virbr9")
        .expect("delete the bridge");
    assert!(link_exists(&daemon, &ifb));
    daemon.spawn(&common::DaemonOptions::no_default_network());
    assert!(
        daemon
            .ok(&["net-list", "--inactive", "--name"])
            .contains("shaped")
    );
    assert!(!link_exists(&daemon, &ifb), "{}", daemon.log());
}

#[test]
fn the_ifb_of_a_vmms_shaped_port_goes_when_the_vmm_lets_go_of_its_tap() {
    let mut needs = DAEMON_NEEDS.to_vec();
    needs.push(common::Need::Tun);
    if !require(&needs) {
        return;
    }
    let daemon = Daemon::start();
    let client = netd::api::client::Client::new(daemon.socket());
    let (port, tap) = client
        .plug(
            "default",
            "<networkport><owner><name>vm</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac address='52:54:00:aa:bb:02'/><bandwidth><outbound average='100'/></bandwidth></networkport>",
        )
        .expect("plug");
    let ifb = format!("kvifb{}", ifindex(&daemon, &port.tap));
    assert!(htb_class(&daemon.ns, &ifb).contains(" rate 800Kbit "));
    // Only outbound is limited: nothing on the tap's own egress.
    let (kinds, _) = qdiscs(&daemon, &port.tap);
    assert!(!kinds.iter().any(|kind| kind == "htb"), "{kinds:?}");

    // The VMM exits: its tap goes, and its IFB follows without anyone asking the daemon.
    drop(tap);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while link_exists(&daemon, &ifb) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!link_exists(&daemon, &ifb), "{}", daemon.log());
    assert_eq!(client.ports("default").expect("ports"), []);
}

/// A `<networkport>` for a guest with MAC `52:54:00:00:01:NN`, with `extra` after the
/// owner.
fn port_file(daemon: &Daemon, name: &str, mac_byte: u8, extra: &str) -> std::path::PathBuf {
    xml_file(
        daemon.dirs.path(),
        name,
        &format!(
            "<networkport><owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner>{extra}<mac address='52:54:00:00:01:{mac_byte:02x}'/></networkport>"
        ),
    )
}

#[test]
fn ports_take_the_limits_of_their_portgroup_or_the_default_one() {
    if !require(&common::port_needs()) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let groups = "  <portgroup name='engineering' default='yes'>\n    <bandwidth>\n      <inbound average='1000'/>\n    </bandwidth>\n  </portgroup>\n  <portgroup name='sales' trustGuestRxFilters='yes'>\n    <bandwidth>\n      <inbound average='250'/>\n      <outbound average='125'/>\n    </bandwidth>\n  </portgroup>\n";
    let xml = network_xml("")
        .replace("</network>", &format!("{groups}</network>"))
        .replace("<network>", "<network trustGuestRxFilters='no'>");
    let file = xml_file(daemon.dirs.path(), "groups.xml", &xml);
    daemon.ok(&["net-define", file.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", "shaped"]);
    assert!(daemon.ok(&["net-dumpxml", "shaped"]).contains(groups));

    let create = |name: &str, mac_byte: u8, extra: &str| {
        let file = port_file(&daemon, name, mac_byte, extra);
        let out = daemon.ok(&["net-port-create", "shaped", file.to_str().expect("utf-8")]);
        out.split_whitespace().nth(2).expect("port uuid").to_owned()
    };
    // No group: the default one's limits, copied into the port, and, as the group has
    // no trustGuestRxFilters, the network's.
    let plain = create("plain.xml", 1, "");
    assert!(htb_class(&daemon.ns, "vnet0").contains(" rate 8Mbit "));
    let plain_xml = daemon.ok(&["net-port-dumpxml", "shaped", &plain]);
    assert!(
        plain_xml.contains(
            "  <bandwidth>\n    <inbound average='1000'/>\n  </bandwidth>\n  <rxfilters trustGuest='no'/>\n"
        ),
        "{plain_xml}"
    );
    // A named group's; a port's own limits win over its group's.
    let sales = create("sales.xml", 2, "<group>sales</group>");
    assert!(htb_class(&daemon.ns, "vnet1").contains(" rate 2Mbit "));
    let sales_ifb = format!("kvifb{}", ifindex(&daemon, "vnet1"));
    assert!(htb_class(&daemon.ns, &sales_ifb).contains(" rate 1Mbit "));
    let sales_xml = daemon.ok(&["net-port-dumpxml", "shaped", &sales]);
    assert!(
        sales_xml.contains("  <group>sales</group>\n")
            && sales_xml.contains("  <rxfilters trustGuest='yes'/>\n"),
        "{sales_xml}"
    );
    create(
        "own.xml",
        3,
        "<group>sales</group><bandwidth><inbound average='125'/></bandwidth>",
    );
    assert!(htb_class(&daemon.ns, "vnet2").contains(" rate 1Mbit "));

    // A group the network does not have is refused, and makes no tap.
    let stray = port_file(&daemon, "stray.xml", 4, "<group>marketing</group>");
    let error = daemon.fails(&["net-port-create", "shaped", stray.to_str().expect("utf-8")]);
    assert!(
        error.contains("network 'shaped' has no portgroup named 'marketing'"),
        "{error}"
    );
    assert!(!link_exists(&daemon, "vnet3"));

    // A group added to the running network serves the next port at once.
    daemon.ok(&[
        "net-update",
        "shaped",
        "add",
        "portgroup",
        "<portgroup name='marketing'><bandwidth><inbound average='500'/></bandwidth></portgroup>",
        "--live",
    ]);
    create("marketing.xml", 5, "<group>marketing</group>");
    assert!(htb_class(&daemon.ns, "vnet3").contains(" rate 4Mbit "));

    // A port keeps what it took from its group when the group changes, as libvirt's do.
    daemon.ok(&[
        "net-update",
        "shaped",
        "modify",
        "portgroup",
        "<portgroup name='sales'><bandwidth><inbound average='500'/></bandwidth></portgroup>",
        "--live",
    ]);
    assert!(htb_class(&daemon.ns, "vnet1").contains(" rate 2Mbit "));
    assert!(htb_class(&daemon.ns, &sales_ifb).contains(" rate 1Mbit "));
    assert_eq!(
        daemon.ok(&["net-port-dumpxml", "shaped", &sales]),
        sales_xml
    );
}
