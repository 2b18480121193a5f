//! Netns tier: every test makes its own namespace and checks real kernel state with `ip`.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::{Need, Netns, htb_class};

use super::{BridgeSpec, Error, Link, sysctl};

fn netns(tag: &str) -> Option<Netns> {
    if !testkit::require(&[Need::Root, Need::Netns]) {
        return None;
    }
    Some(Netns::new(tag).expect("create test netns"))
}

/// Runs a future on a current-thread runtime in a thread that entered `ns`, so the netlink
/// socket opened by [`Link::new`] belongs to `ns`.
fn block_on_in<T: Send, F: Future<Output = T>>(ns: &Netns, make: impl FnOnce() -> F + Send) -> T {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(make())
    })
    .expect("run in netns")
}

fn link_json(ns: &Netns, name: &str) -> Value {
    let out = ns
        .sh(&format!("ip -j -d link show {name}"))
        .expect("ip link show");
    let mut all: Vec<Value> = serde_json::from_str(&out).expect("ip -j output");
    assert_eq!(all.len(), 1, "{out}");
    all.remove(0)
}

fn spec(name: &str, mtu: Option<u32>, stp: bool, forward_delay_secs: u32) -> BridgeSpec {
    BridgeSpec {
        name: name.into(),
        mac: [0x52, 0x54, 0x00, 0xab, 0xcd, 0x01],
        mtu,
        stp,
        forward_delay_secs,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test literal")
}

#[test]
fn bridge_is_created_with_mac_mtu_stp_and_delay() {
    let Some(ns) = netns("link-br") else { return };
    let stp_spec = spec("kvbr0", Some(9000), true, 0);
    let plain_spec = BridgeSpec {
        mac: [0x52, 0x54, 0x00, 0xab, 0xcd, 0x02],
        ..spec("kvbr1", None, false, 5)
    };
    let (stp_index, plain_index) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        let a = link.create_bridge(&stp_spec).await.expect("create kvbr0");
        let b = link.create_bridge(&plain_spec).await.expect("create kvbr1");
        (a, b)
    });

    let stp = link_json(&ns, "kvbr0");
    assert_eq!(stp["ifindex"], stp_index);
    assert_eq!(stp["address"], "52:54:00:ab:cd:01");
    assert_eq!(stp["mtu"], 9000);
    assert_eq!(stp["linkinfo"]["info_kind"], "bridge");
    assert_eq!(stp["linkinfo"]["info_data"]["stp_state"], 1);
    // libvirt's delay 0 with STP on becomes the kernel minimum, 2 s = 200 clock_t.
    assert_eq!(stp["linkinfo"]["info_data"]["forward_delay"], 200);
    assert_eq!(stp["operstate"], "DOWN", "created down");
    assert!(
        !stp["flags"]
            .as_array()
            .expect("flags")
            .contains(&Value::from("UP"))
    );

    let plain = link_json(&ns, "kvbr1");
    assert_eq!(plain["ifindex"], plain_index);
    assert_eq!(plain["address"], "52:54:00:ab:cd:02");
    assert_eq!(plain["mtu"], 1500);
    assert_eq!(plain["linkinfo"]["info_data"]["stp_state"], 0);
    assert_eq!(plain["linkinfo"]["info_data"]["forward_delay"], 500);
}

#[test]
fn bridge_comes_up_keeps_its_mtu_and_takes_ports() {
    let Some(ns) = netns("link-up") else { return };
    ns.sh("ip link add kvp0 mtu 1500 type veth peer name kvp1 && ip link set kvp1 up")
        .expect("veth");
    let (info_before, info_after, port) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        link.create_bridge(&spec("kvbr0", Some(9000), false, 0))
            .await
            .expect("create");
        let before = link.link_info("kvbr0").await.expect("info");
        let bridge_index = before.as_ref().expect("bridge").index;
        link.plug_port(
            "kvp0",
            [0xfe, 0x54, 0, 1, 2, 3],
            1500,
            (bridge_index, "kvbr0"),
            crate::link::PortState::Up,
        )
        .await
        .expect("plug the port");
        link.set_up("kvbr0").await.expect("bridge up");
        let after = link.link_info("kvbr0").await.expect("info");
        let port = link.link_info("kvp0").await.expect("port info");
        (before, after, port)
    });
    let before = info_before.expect("bridge exists");
    assert!(before.is_bridge());
    assert!(!before.up);
    assert_eq!(before.mac, Some([0x52, 0x54, 0x00, 0xab, 0xcd, 0x01]));
    assert_eq!(before.mtu, Some(9000));
    let after = info_after.expect("bridge exists");
    assert!(after.up);
    assert_eq!(after.index, before.index);
    let port = port.expect("port exists");
    assert_eq!(port.kind.as_deref(), Some("veth"));
    assert!(!port.is_bridge());
    assert_eq!(port.master, Some(before.index));
    assert_eq!(port.mac, Some([0xfe, 0x54, 0, 1, 2, 3]));
    assert!(port.up);

    // A 1500-byte port does not pull the bridge MTU down: it was set as a user choice.
    let json = link_json(&ns, "kvbr0");
    assert_eq!(json["mtu"], 9000);
    assert_eq!(link_json(&ns, "kvp0")["master"], "kvbr0");
    // With STP off the port forwards at once, so the bridge gets carrier.
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_json(&ns, "kvbr0")["operstate"] != "UP" {
        assert!(
            Instant::now() < deadline,
            "bridge never became operationally up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Bridge `kvbr0`, up, with 10.77.0.1/24 and fd77::1/64.
async fn dual_stack_bridge(link: &Link) {
    link.create_bridge(&spec("kvbr0", None, false, 0))
        .await
        .expect("create");
    link.add_address("kvbr0", ip("10.77.0.1"), 24)
        .await
        .expect("v4");
    link.add_address("kvbr0", ip("fd77::1"), 64)
        .await
        .expect("v6");
    link.set_up("kvbr0").await.expect("up");
}

#[test]
fn addresses_are_added_in_both_families() {
    let Some(ns) = netns("link-addr") else { return };
    let (missing, bad_prefix) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        dual_stack_bridge(&link).await;
        let missing = link.add_address("nosuch0", ip("10.78.0.1"), 24).await;
        let bad = link.add_address("kvbr0", ip("10.79.0.1"), 33).await;
        (missing, bad)
    });
    let out = ns.sh("ip -j addr show dev kvbr0").expect("ip addr");
    let json: Value = serde_json::from_str(&out).expect("json");
    let addrs: Vec<(String, u64)> = json[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .map(|a| {
            (
                a["local"].as_str().expect("local").to_owned(),
                a["prefixlen"].as_u64().expect("prefixlen"),
            )
        })
        .collect();
    assert!(addrs.contains(&("10.77.0.1".into(), 24)), "{addrs:?}");
    assert!(addrs.contains(&("fd77::1".into(), 64)), "{addrs:?}");
    let v4 = &json[0]["addr_info"][0];
    assert_eq!(v4["broadcast"], "10.77.0.255");

    let missing = missing.expect_err("no such link");
    assert!(missing.is_no_such_link(), "{missing}");
    assert_eq!(missing.to_string(), "no network interface named nosuch0");
    assert!(matches!(
        bad_prefix,
        Err(Error::InvalidPrefix { prefix_len: 33, .. })
    ));
}

#[test]
fn delete_removes_the_link_once() {
    let Some(ns) = netns("link-del") else { return };
    let (first, exists_after, second) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        link.create_bridge(&spec("kvbr0", None, true, 0))
            .await
            .expect("create");
        assert!(link.link_exists("kvbr0").await.expect("exists"));
        let first = link.delete_link("kvbr0").await.expect("delete");
        let exists_after = link.link_exists("kvbr0").await.expect("exists");
        let second = link.delete_link("kvbr0").await.expect("second delete");
        (first, exists_after, second)
    });
    assert!(first);
    assert!(!exists_after);
    assert!(!second);
    assert!(ns.sh("ip link show kvbr0").is_err(), "kernel still has it");
}

#[test]
fn creating_a_taken_name_says_it_exists() {
    let Some(ns) = netns("link-exists") else {
        return;
    };
    ns.sh("ip link add kvv0 type veth peer name kvv1")
        .expect("veth");
    let (twice, over_veth, bad_name) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        link.create_bridge(&spec("kvbr0", None, false, 0))
            .await
            .expect("first create");
        (
            link.create_bridge(&spec("kvbr0", None, false, 0)).await,
            link.create_bridge(&spec("kvv0", None, false, 0)).await,
            link.create_bridge(&spec("../all", None, false, 0)).await,
        )
    });
    let twice = twice.expect_err("second create");
    assert!(twice.is_already_exists(), "{twice:?}");
    assert_eq!(twice.to_string(), "creating bridge kvbr0");
    let source = std::error::Error::source(&twice)
        .expect("source")
        .to_string();
    assert_eq!(source, "File exists (os error 17)");
    let over_veth = over_veth.expect_err("name of a veth");
    assert!(over_veth.is_already_exists(), "{over_veth:?}");
    assert_eq!(link_json(&ns, "kvv0")["linkinfo"]["info_kind"], "veth");
    assert!(matches!(bad_name, Err(Error::InvalidName(n)) if n == "../all"));
}

#[test]
fn link_names_and_info_reflect_the_namespace() {
    let Some(ns) = netns("link-names") else {
        return;
    };
    ns.sh("ip link add kvv0 type veth peer name kvv1")
        .expect("veth");
    let (names, missing, too_long) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        (
            link.link_names().await.expect("names"),
            link.link_info("nosuch0").await.expect("info"),
            link.link_exists("a-name-longer-than-ifnamsiz")
                .await
                .expect("exists"),
        )
    });
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["kvv0", "kvv1", "lo"]);
    assert_eq!(names[0], "lo", "ifindex order");
    assert_eq!(missing, None);
    assert!(!too_long);
}

#[test]
fn used_prefixes_list_addresses_and_routes() {
    let Some(ns) = netns("link-used") else { return };
    ns.sh("ip link add kvd0 type veth peer name kvd1 \
         && ip link set kvd0 up && ip link set kvd1 up \
         && ip addr add 10.88.1.5/24 dev kvd0 \
         && ip -6 addr add fd88::5/64 dev kvd0 nodad \
         && ip route add 10.99.0.0/16 dev kvd0 \
         && ip route add 10.55.0.1/32 dev kvd0 \
         && ip route add 10.66.0.0/16 dev kvd1 table 100 \
         && ip route add default via 10.88.1.1")
        .expect("setup");
    let (used, named) = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        let used = link.used_prefixes().await.expect("used prefixes");
        let mut named = Vec::new();
        for (net, index) in &used {
            let name = link
                .link_name(*index)
                .await
                .expect("link name")
                .expect("known link");
            named.push((*net, name));
        }
        (used, named)
    });
    let used_indexes = used;
    let used = named;
    let has =
        |net: &str, dev: &str| used.contains(&(net.parse().expect("test literal"), dev.to_owned()));
    assert!(has("10.88.1.0/24", "kvd0"), "{used:?}");
    assert!(has("10.99.0.0/16", "kvd0"), "{used:?}");
    assert!(has("fd88::/64", "kvd0"), "{used:?}");
    assert!(has("127.0.0.0/8", "lo"), "{used:?}");
    for (net, dev) in &used {
        let text = net.to_string();
        assert!(!text.starts_with("fe80:"), "link-local listed: {net} {dev}");
        assert_ne!(net.prefix_len(), 0, "default route listed: {dev}");
        assert_ne!(text, "10.55.0.1/32", "host route listed");
        assert_ne!(text, "10.66.0.0/16", "non-main table listed");
    }
    let mut deduped = used_indexes.clone();
    deduped.dedup();
    assert_eq!(deduped, used_indexes, "sorted without duplicates");
}

#[test]
fn routes_go_through_a_gateway_on_the_interface() {
    let Some(ns) = netns("link-route") else {
        return;
    };
    let mismatch = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        dual_stack_bridge(&link).await;
        let net = |s: &str| s.parse().expect("test literal");
        // Host bits in the destination are dropped, as libvirt's prefix math does.
        link.add_route("kvbr0", net("10.80.1.9/16"), ip("10.77.0.2"), 0)
            .await
            .expect("v4 route");
        link.add_route("kvbr0", net("fd80::/48"), ip("fd77::2"), 7)
            .await
            .expect("v6 route");
        link.add_route("kvbr0", net("10.81.0.0/16"), ip("fd77::2"), 0)
            .await
    });
    let v4: Vec<Value> =
        serde_json::from_str(&ns.sh("ip -d -j route show 10.80.0.0/16").expect("ip route"))
            .expect("json");
    assert_eq!(v4.len(), 1, "{v4:?}");
    assert_eq!(v4[0]["gateway"], "10.77.0.2");
    assert_eq!(v4[0]["dev"], "kvbr0");
    assert_eq!(v4[0]["protocol"], "boot");
    let v6: Vec<Value> =
        serde_json::from_str(&ns.sh("ip -j -6 route show fd80::/48").expect("ip route"))
            .expect("json");
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!(v6[0]["gateway"], "fd77::2");
    assert_eq!(v6[0]["dev"], "kvbr0");
    assert_eq!(v6[0]["metric"], 7);
    assert!(matches!(mismatch, Err(Error::RouteFamilyMismatch { .. })));
}

#[test]
fn ra_routes_block_ipv6_forwarding_unless_accept_ra_is_2() {
    let Some(ns) = netns("link-ra") else { return };
    ns.sh(
        "ip link add kvd0 type veth peer name kvd1 \
         && ip link add kve0 type veth peer name kve1 \
         && ip link set kvd0 up && ip link set kvd1 up && ip link set kve0 up && ip link set kve1 up \
         && ip -6 route add 2001:db8:1::/64 dev kvd0 proto ra \
         && ip -6 route add 2001:db8:2::/64 dev kve0 proto ra \
         && ip -6 route add 2001:db8:3::/64 dev kve1 \
         && sysctl -qw net.ipv6.conf.kve0.accept_ra=2",
    )
    .expect("setup");
    let blockers = block_on_in(&ns, || async {
        Link::new()
            .expect("netlink socket")
            .ipv6_forwarding_blockers()
            .await
            .expect("check")
    });
    assert_eq!(blockers, ["kvd0"]);
    ns.sh("sysctl -qw net.ipv6.conf.kvd0.accept_ra=2")
        .expect("sysctl");
    let blockers = block_on_in(&ns, || async {
        Link::new()
            .expect("netlink socket")
            .ipv6_forwarding_blockers()
            .await
            .expect("check")
    });
    assert!(blockers.is_empty(), "{blockers:?}");
}

fn root_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .expect("read root ip_forward")
        .trim()
        .to_owned()
}

#[test]
fn enable_forwarding_changes_only_the_namespace() {
    let Some(ns) = netns("link-fwd") else { return };
    // A new netns inherits IPv4 settings from the root one: start from a known 0, and give
    // the namespace a value the root surely lacks to prove the thread reads the namespace.
    ns.sh(
        "sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 \
         net.ipv4.ip_default_ttl=77",
    )
    .expect("reset");
    let root_before = root_ip_forward();
    let read_ns = |key: &str| {
        ns.sh(&format!("sysctl -n {key}"))
            .expect("sysctl")
            .trim()
            .to_owned()
    };
    ns.run(|| {
        let ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").expect("ttl");
        // Guard: never write anything unless /proc/sys/net is the namespace's here.
        assert_eq!(
            ttl.trim(),
            "77",
            "/proc/sys/net does not follow the thread's netns"
        );
        sysctl::enable_forwarding(false, false).expect("no-op");
    })
    .expect("run");
    assert_eq!(read_ns("net.ipv4.ip_forward"), "0");
    ns.run(|| sysctl::enable_forwarding(true, false))
        .expect("run")
        .expect("ipv4");
    assert_eq!(read_ns("net.ipv4.ip_forward"), "1");
    assert_eq!(read_ns("net.ipv6.conf.all.forwarding"), "0");
    ns.run(|| sysctl::enable_forwarding(true, true))
        .expect("run")
        .expect("both");
    assert_eq!(read_ns("net.ipv4.ip_forward"), "1");
    assert_eq!(read_ns("net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(root_ip_forward(), root_before, "root namespace touched");
}

#[test]
fn bridge_ipv6_sysctls_follow_libvirt() {
    let Some(ns) = netns("link-v6") else { return };
    ns.sh("ip link add kvbr0 type bridge").expect("bridge");
    let read = |key: &str| {
        ns.sh(&format!("cat /proc/sys/net/ipv6/conf/kvbr0/{key}"))
            .expect("read")
            .trim()
            .to_owned()
    };
    // Kernel defaults, so each call below has something to change.
    assert_eq!(
        [read("disable_ipv6"), read("accept_ra"), read("autoconf")],
        ["0", "1", "1"]
    );
    ns.run(|| {
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv6/conf/kvbr0/autoconf")
                .expect("bridge sysctls visible from the ns thread")
                .trim(),
            "1"
        );
        sysctl::configure_bridge_ipv6("kvbr0", false)
    })
    .expect("run")
    .expect("v4-only bridge");
    assert_eq!(
        [read("disable_ipv6"), read("accept_ra"), read("autoconf")],
        ["1", "0", "0"]
    );
    ns.run(|| sysctl::configure_bridge_ipv6("kvbr0", true))
        .expect("run")
        .expect("v6 bridge");
    assert_eq!(
        [read("disable_ipv6"), read("accept_ra"), read("autoconf")],
        ["0", "0", "0"]
    );
    let (missing, escape) = ns
        .run(|| {
            (
                sysctl::configure_bridge_ipv6("nosuch0", false),
                sysctl::configure_bridge_ipv6("../all", false),
            )
        })
        .expect("run");
    let missing = missing.expect_err("no such bridge");
    assert_eq!(
        missing.to_string(),
        "writing 1 to /proc/sys/net/ipv6/conf/nosuch0/disable_ipv6"
    );
    assert!(matches!(escape, Err(Error::InvalidName(_))));
}

#[test]
fn link_needs_a_tokio_runtime() {
    assert!(matches!(Link::new(), Err(Error::Connect(_))));
}

#[test]
fn prefix_cache_follows_every_change_the_dump_sees() {
    let Some(ns) = netns("link-prefix-cache") else {
        return;
    };
    ns.sh(
        "ip link add kvc0 type bridge && ip link set kvc0 up && ip addr add 10.77.1.1/24 dev kvc0",
    )
    .expect("setup");
    // Each step changes the namespace; after each, the cache must answer what a fresh dump does.
    let steps = [
        "ip addr add 10.77.2.1/24 dev kvc0",
        "ip route add 10.78.0.0/16 dev kvc0",
        "ip -6 addr add fd77::1/64 dev kvc0 nodad",
        "ip link add kvc1 type bridge && ip link set kvc1 up && ip addr add 10.79.0.1/24 dev kvc1 \
         && ip route add 10.80.0.0/16 dev kvc1 && ip route add 10.81.0.0/16 dev kvc1 metric 7",
        // A replace announces only the new route, which may leave by another link.
        "ip route add 10.83.0.0/16 dev kvc0",
        "ip route replace 10.83.0.0/16 dev kvc1",
        "ip -6 route add fd83::/64 dev kvc0",
        "ip -6 route replace fd83::/64 dev kvc1",
        // Appended routes share the replaced one's identity but not its link.
        "ip route append 10.83.0.0/16 dev kvc0",
        "ip route del 10.83.0.0/16 dev kvc1",
        // Deleting an IPv4 address flushes routes without RTM_DELROUTE: on older kernels
        // those with it as `src`, even on 6.18 every route of a link losing its last one.
        "ip link add kvc2 type bridge && ip link set kvc2 up && ip addr add 10.82.1.1/24 dev kvc2 \
         && ip route add 10.82.0.0/16 dev kvc2 src 10.82.1.1 && ip route add 10.84.0.0/16 dev kvc2",
        "ip addr del 10.82.1.1/24 dev kvc2",
        // Among appended routes, a replace takes the first one's place only.
        "ip route append 10.83.0.0/16 dev kvc1 && ip route replace 10.83.0.0/16 dev kvc2",
        // Appended routes on one link differ by gateway: deleting one leaves the other.
        "ip route add 10.89.0.0/16 via 10.77.1.2 metric 5 \
         && ip route append 10.89.0.0/16 dev kvc0 metric 5",
        "ip route del 10.89.0.0/16 via 10.77.1.2 metric 5",
        "ip addr del 10.77.2.1/24 dev kvc0",
        "ip route del 10.78.0.0/16 dev kvc0",
        // IPv4 routes of a link going down vanish without RTM_DELROUTE.
        "ip link set kvc1 down",
        "ip link set kvc1 up",
        "ip route add 10.80.0.0/16 dev kvc1 && ip link del kvc1",
        // A bridge deleted with its address and routes: the link's removal covers them all.
        "ip link add kvc3 type bridge && ip link set kvc3 up && ip addr add 10.85.1.1/24 dev kvc3 \
         && ip route add 10.86.0.0/16 dev kvc3",
        "ip link del kvc3",
        // ...unless a route through another link uses its address as source.
        "ip link add kvc4 type bridge && ip link set kvc4 up && ip addr add 10.87.1.1/24 dev kvc4 \
         && ip addr add 10.77.3.1/24 dev kvc0 && ip route add 10.88.0.0/16 dev kvc0 src 10.87.1.1",
        "ip link del kvc4",
        "ip addr flush dev kvc0",
    ];
    let mismatches = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        let cache = super::PrefixCache::new().expect("notification socket");
        let mut mismatches = Vec::new();
        let first = cache.used_prefixes(&link).await.expect("first answer");
        assert!(
            first.contains(&(
                "10.77.1.0/24".parse().expect("test literal"),
                index_of("kvc0")
            )),
            "{first:?}"
        );
        for step in steps {
            run_sh(step);
            let cached = cache.used_prefixes(&link).await.expect("cached");
            let dumped = link.used_prefixes().await.expect("dumped");
            if cached != dumped {
                mismatches.push(format!("after `{step}`: cache {cached:?} dump {dumped:?}"));
            }
        }
        mismatches
    });
    assert!(mismatches.is_empty(), "{mismatches:#?}");
}

/// Runs a shell command in the calling thread's namespace (we are inside `Netns::run`).
fn run_sh(script: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("run sh");
    assert!(status.success(), "{script}");
}

fn index_of(ifname: &str) -> u32 {
    nix::net::if_::if_nametoindex(ifname).expect("interface exists")
}

fn tc_json(ns: &Netns, what: &str) -> Vec<Value> {
    let out = ns.sh(&format!("tc -s -j {what}")).expect("tc show");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc -j {what}: {e}: {out}"))
}

/// Packets that went through the root HTB qdisc of `dev`.
fn htb_packets(ns: &Netns, dev: &str) -> u64 {
    tc_json(ns, &format!("qdisc show dev {dev}"))
        .iter()
        .find(|qdisc| qdisc["kind"] == "htb")
        .and_then(|qdisc| qdisc["packets"].as_u64())
        .unwrap_or_else(|| panic!("no htb qdisc on {dev}"))
}

#[test]
fn shaping_limits_egress_with_htb_and_ingress_through_an_ifb() {
    use super::shaping::{Shaping, TokenBucket, ifb_name};
    let Some(ns) = netns("link-shape") else {
        return;
    };
    // A veth pair: frames sent on one end arrive on the other's ingress.
    ns.sh("ip link add kvshape0 type veth peer name kvshape1 && ip link set kvshape0 up && ip link set kvshape1 up")
        .expect("veth pair");
    let shaping = Shaping {
        egress: Some(TokenBucket {
            rate: 125_000,
            ceil: 250_000,
            burst: Some(64 * 1024),
            ceil_burst: None,
        }),
        ingress: Some(TokenBucket {
            rate: 50_000,
            ceil: 50_000,
            burst: None,
            ceil_burst: None,
        }),
    };
    let index = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        let index = link.index("kvshape0").await.expect("veth index");
        link.shape(index, "kvshape0", &shaping)
            .await
            .expect("shape");
        // Shaping again replaces the limits rather than failing on the existing qdiscs.
        link.shape(index, "kvshape0", &shaping)
            .await
            .expect("reshape");
        index
    });
    let ifb = ifb_name(index);

    // 125,000 bytes/s is 1 Mbit/s.
    let egress = htb_class(&ns, "kvshape0");
    assert!(
        egress.contains(" rate 1Mbit ceil 2Mbit burst 64Kb "),
        "{egress}"
    );
    let ingress = htb_class(&ns, &ifb);
    assert!(
        ingress.contains(" rate 400Kbit ceil 400Kbit burst 1600b "),
        "{ingress}"
    );
    assert_eq!(link_json(&ns, &ifb)["linkinfo"]["info_kind"], "ifb");
    let qdiscs = tc_json(&ns, "qdisc show dev kvshape0");
    assert!(qdiscs.iter().any(|q| q["kind"] == "ingress"), "{qdiscs:?}");
    let filters = tc_json(&ns, "filter show dev kvshape0 ingress");
    let filter_text = serde_json::to_string(&filters).expect("json");
    assert!(
        filter_text.contains("mirred") && filter_text.contains(&ifb),
        "{filter_text}"
    );

    // Real frames go through both shapers: what kvshape0 sends passes its class, what it
    // receives passes the IFB's.
    // The peer end in a namespace of its own, so the pings cross the veth.
    let peer = Netns::new("link-shape-peer").expect("peer netns");
    ns.sh(&format!(
        "ip link set kvshape1 netns {} && ip addr add 10.77.0.1/24 dev kvshape0",
        peer.name()
    ))
    .expect("move the peer");
    peer.sh("ip addr add 10.77.0.2/24 dev kvshape1 && ip link set kvshape1 up")
        .expect("peer address");
    // Three datagrams out; the peer answers each with an ICMP port unreachable.
    ns.sh("bash -c 'for _ in 1 2 3; do echo x >/dev/udp/10.77.0.2/9; sleep 0.1; done'")
        .expect("datagrams through the shapers");
    let sent = htb_packets(&ns, "kvshape0");
    let received = htb_packets(&ns, &ifb);
    assert!(
        sent >= 3 && received >= 3,
        "egress {sent}, ingress {received} packets"
    );

    block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        link.unshape(index, "kvshape0").await.expect("unshape");
        link.unshape(index, "kvshape0")
            .await
            .expect("unshaping twice is fine");
    });
    let qdiscs = tc_json(&ns, "qdisc show dev kvshape0");
    assert!(
        qdiscs
            .iter()
            .all(|q| q["kind"] != "htb" && q["kind"] != "ingress"),
        "{qdiscs:?}"
    );
    assert!(
        ns.sh(&format!("ip link show {ifb}")).is_err(),
        "{ifb} deleted"
    );
}

#[test]
fn failed_shaping_leaves_nothing_and_orphan_ifbs_are_swept() {
    use super::shaping::{Shaping, TokenBucket, ifb_name};
    let Some(ns) = netns("link-shape-fail") else {
        return;
    };
    ns.sh("ip link add kvshape0 type veth peer name kvshape1")
        .expect("veth pair");
    let index = link_json(&ns, "kvshape0")["ifindex"]
        .as_u64()
        .expect("ifindex") as u32;
    // A device of someone else's under the IFB's name: the ingress step must fail on it,
    // never delete it.
    let squatter = ifb_name(index);
    ns.sh(&format!("ip link add {squatter} type bridge"))
        .expect("squatter");
    let bucket = TokenBucket {
        rate: 125_000,
        ceil: 125_000,
        burst: None,
        ceil_burst: None,
    };
    let shaping = Shaping {
        egress: Some(bucket),
        ingress: Some(bucket),
    };
    let error = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        link.shape(index, "kvshape0", &shaping)
            .await
            .expect_err("the IFB name is taken")
    });
    assert!(error.to_string().contains(&squatter), "{error}");
    assert_eq!(link_json(&ns, &squatter)["linkinfo"]["info_kind"], "bridge");
    let qdiscs = tc_json(&ns, "qdisc show dev kvshape0");
    assert!(
        qdiscs.iter().all(|q| q["kind"] != "htb"),
        "egress limit undone: {qdiscs:?}"
    );

    // IFBs whose device is gone are swept; one whose device exists, and others' IFBs, stay.
    ns.sh(&format!(
        "ip link del {squatter} && ip link add {squatter} type ifb"
    ))
    .expect("live ifb");
    // Ours by name and alias (its device, 99999, is gone), or by name, down and without
    // an alias (a crash before it came up); one up without kvnet's alias and one of
    // another name are someone else's.
    ns.sh(
        "ip link add kvifb99999 type ifb && ip link set kvifb99999 alias 'kvnet: shapes the ingress of gone0' \
         && ip link add kvifb77777 type ifb \
         && ip link add kvifb88888 type ifb && ip link set kvifb88888 up && ip link add ifb7 type ifb",
    )
    .expect("ifbs");
    let swept = block_on_in(&ns, || async {
        let link = Link::new().expect("netlink socket");
        let links = link.links_by_index().await.expect("dump");
        link.delete_orphan_ifbs(&links).await.expect("sweep")
    });
    assert_eq!(swept, ["kvifb99999", "kvifb77777"]);
    for kept in [squatter.as_str(), "kvifb88888", "ifb7"] {
        assert!(
            ns.sh(&format!("ip link show {kept}")).is_ok(),
            "{kept} kept"
        );
    }
}

#[test]
fn the_deletion_filter_passes_link_deletions_only() {
    let Some(ns) = netns("link-dellink") else {
        return;
    };
    let types = ns
        .run(|| {
            use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
            let mut socket = Socket::new(NETLINK_ROUTE).expect("netlink socket");
            socket.bind(&SocketAddr::new(0, 0x1)).expect("join RTMGRP_LINK");
            socket2::SockRef::from(&socket)
                .attach_filter(&super::deletions::deletions_only())
                .expect("filter");
            // New, up, down and deleted: four or more notifications, one deletion.
            testkit::run_checked(std::process::Command::new("sh").args([
                "-c",
                "ip link add kvdl0 type bridge && ip link set kvdl0 up && ip link set kvdl0 down && ip link del kvdl0",
            ]))
            .expect("link changes");
            socket.set_non_blocking(true).expect("non-blocking");
            let mut types = Vec::new();
            let mut buffer = vec![0u8; 65536];
            while let Ok(len) = socket.recv(&mut &mut buffer[..], 0) {
                assert!(len >= 16, "short message");
                types.push(u16::from_ne_bytes([buffer[4], buffer[5]]));
            }
            types
        })
        .expect("run in netns");
    assert_eq!(types, [17], "only RTM_DELLINK");
}
