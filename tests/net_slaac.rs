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

/// RFC 4861 6.1.2: a guest drops an advertisement whose source is not link-local. For a
/// second or two after its first port brings the bridge up, duplicate address detection
/// holds the bridge's link-local address back and the kernel would pick a global one:
/// solicitations then are answered once the link-local address is usable.
#[test]
fn advertisements_come_from_the_bridges_link_local_address() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

    use socket2::{Domain, Protocol, Socket, Type};

    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let xml = "<network><name>v6</name><forward mode='route'/><bridge name='kvv6' stp='off'/>\
               <ip family='ipv6' address='fd00:5:3::1' prefix='64'/></network>";
    let path = xml_file(daemon.dirs.path(), "v6.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "v6"]);
    let guest = Netns::new("guest").expect("guest ns");
    // The guest solicits only when the test does.
    guest
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.default.accept_ra=0")
        .expect("sysctl");
    attach_guest(&daemon, &guest, "kvv6", "", "");
    // The state the first port leaves the bridge in when its global address's duplicate
    // address detection ends before its link-local one's, made sure of: the global
    // address usable, the link-local one tentative for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .ns
        .sh("ip -6 addr show dev kvv6 tentative")
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "addresses still tentative");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
        .ns
        .sh(
            "link_local=$(ip -6 -br addr show dev kvv6 scope link | awk '{print $3}') \
             && ip addr del \"$link_local\" dev kvv6 \
             && sysctl -qw net.ipv6.conf.kvv6.dad_transmits=2 \
             && ip addr add \"$link_local\" dev kvv6",
        )
        .expect("a tentative link-local address");
    let ifindex: u32 = guest
        .sh("cat /sys/class/net/eth0/ifindex")
        .expect("eth0's index")
        .trim()
        .parse()
        .expect("an index");

    // Solicitations every half second for 4 s, the first ones while the bridge's
    // link-local address is tentative; the advertisements' sources.
    let sources = guest
        .run(|| {
            let socket =
                Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).expect("socket");
            socket.set_multicast_hops_v6(255).expect("hops");
            socket.set_multicast_if_v6(ifindex).expect("interface");
            // A raw socket reads and writes with the same calls as a datagram one.
            let socket = std::net::UdpSocket::from(socket);
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let all_routers =
                SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), 0, 0, ifindex);
            let solicitation = [133, 0, 0, 0, 0, 0, 0, 0];
            let mut sources = Vec::new();
            let mut buffer = [0u8; 1500];
            let start = Instant::now();
            let mut solicited = 0;
            while start.elapsed() < Duration::from_secs(4) {
                if start.elapsed() >= Duration::from_millis(500) * solicited {
                    socket
                        .send_to(&solicitation, SocketAddr::V6(all_routers))
                        .expect("solicit");
                    solicited += 1;
                }
                if let Ok((len, from)) = socket.recv_from(&mut buffer)
                    && buffer[..len].first() == Some(&134)
                {
                    sources.push(from.ip());
                }
            }
            sources
        })
        .expect("enter the guest");
    assert!(
        !sources.is_empty(),
        "no advertisement answered the solicitations"
    );
    assert!(
        sources
            .iter()
            .all(|source| matches!(source, IpAddr::V6(v6) if v6.is_unicast_link_local())),
        "advertised from {sources:?}"
    );
}
