//! netns tier: router advertisements. A guest on a network with an IPv6 /64 configures
//! its address from kvnetd's advertisements (SLAAC), as with libvirt's dnsmasq, and
//! routes through the host unless the network is isolated.

mod common;

use std::time::{Duration, Instant};

use common::{DAEMON_NEEDS, Daemon, Netns, attach_guest, require, wait_for_forwarding, xml_file};

/// Waits until `guest` has a global address in `prefix` on eth0 and returns its IPv6
/// default routes.
fn slaac_address_and_default_routes(guest: &Netns, prefix: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addresses = guest
            .sh("ip -6 -br addr show dev eth0 scope global")
            .unwrap_or_default();
        if addresses.contains(prefix) {
            let routes = guest.sh("ip -6 route show default").unwrap_or_default();
            return (addresses, routes);
        }
        assert!(
            Instant::now() < deadline,
            "no address in {prefix}:: configured from router advertisements: {addresses}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn guests_configure_ipv6_from_router_advertisements() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    // Duplicate address detection would hold the bridge's link-local address, the
    // advertisements' source, back for a second.
    daemon
        .ns
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
        .expect("sysctl");
    for (name, forward, prefix, routed) in [
        ("routed", "<forward mode='route'/>", "fd00:5:1:0", true),
        ("isolated", "", "fd00:5:2:0", false),
    ] {
        let bridge = format!("kv{name}");
        let xml = format!(
            "<network><name>{name}</name>{forward}<bridge name='{bridge}' stp='off'/>\
             <ip family='ipv6' address='{prefix}::1' prefix='64'/></network>"
        );
        let path = xml_file(daemon.dirs.path(), &format!("{name}.xml"), &xml);
        daemon.ok(&["net-define", path.to_str().expect("path")]);
        daemon.ok(&["net-start", name]);

        let guest = Netns::new("guest").expect("guest ns");
        guest
            .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
            .expect("sysctl");
        attach_guest(&daemon, &guest, &bridge, "", "");
        wait_for_forwarding(&daemon, "vg0");
        // A link that comes up solicits an advertisement at once.
        guest
            .sh("ip link set eth0 down && ip link set eth0 up")
            .expect("guest link");
        let (addresses, routes) = slaac_address_and_default_routes(&guest, prefix);
        assert!(addresses.contains("/64"), "{addresses}");
        if routed {
            assert!(
                routes.contains("via fe80::") && routes.contains("dev eth0"),
                "no default route through the host: {routes:?}"
            );
        } else {
            assert_eq!(routes, "", "an isolated network offered a router");
        }
        daemon.ok(&["net-destroy", name]);
        daemon.ns.sh("ip link del vg0").ok();
    }
}
