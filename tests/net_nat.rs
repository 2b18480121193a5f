//! netns tier: NAT for real. A "guest" namespace on the network's bridge reaches a TCP
//! server in an "upstream" namespace, which sees the masqueraded host address.

mod common;

use std::time::Duration;

use common::{
    DAEMON_NEEDS, Daemon, Netns, attach_guest, attach_upstream, require, wait_for_forwarding,
};

#[test]
fn guests_reach_upstream_masqueraded_through_the_default_network() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let guest = Netns::new("guest").expect("guest ns");
    let upstream = Netns::new("upstream").expect("upstream ns");
    attach_guest(
        &daemon,
        &guest,
        "virbr0",
        "192.168.122.10/24",
        "192.168.122.1",
    );
    attach_upstream(&daemon, &upstream);
    // STP is on (libvirt's default): a new port forwards after listening + learning.
    wait_for_forwarding(&daemon, "vg0");

    let listener = upstream
        .run(|| std::net::TcpListener::bind("10.77.0.2:8080"))
        .expect("enter upstream")
        .expect("bind in upstream");
    listener.set_nonblocking(false).expect("blocking");
    let server = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    let connected = guest
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &"10.77.0.2:8080".parse().expect("addr"),
                Duration::from_secs(5),
            )
        })
        .expect("enter guest");
    assert!(
        connected.is_ok(),
        "guest could not reach upstream: {connected:?}\n{}",
        daemon.ruleset()
    );
    let peer = server.join().expect("server thread").expect("accept");
    assert_eq!(peer.ip().to_string(), "10.77.0.1", "not masqueraded");
    assert!(
        peer.port() >= 1024,
        "source port {} below the NAT range",
        peer.port()
    );
}

#[test]
fn isolated_networks_do_not_forward() {
    if !require(DAEMON_NEEDS) || !require(&[common::Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::start();
    let path = common::xml_file(
        daemon.dirs.path(),
        "dm.xml",
        include_str!("../examples/networks/docker-machines.xml"),
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "docker-machines"]);
    let guest = Netns::new("isoguest").expect("guest ns");
    let upstream = Netns::new("isoup").expect("upstream ns");
    attach_guest(
        &daemon,
        &guest,
        "virbr1",
        "192.168.42.10/24",
        "192.168.42.1",
    );
    attach_upstream(&daemon, &upstream);
    // With a way back: a refused connection is then the firewall's doing, not a reply
    // with nowhere to go.
    upstream
        .sh("ip route add 192.168.42.0/24 via 10.77.0.1")
        .expect("upstream route to the guests");
    wait_for_forwarding(&daemon, "vg0");
    let _listener = upstream
        .run(|| std::net::TcpListener::bind("10.77.0.2:8080"))
        .expect("enter upstream")
        .expect("bind in upstream");
    let _guest_listener = guest
        .run(|| std::net::TcpListener::bind("192.168.42.10:8081"))
        .expect("enter guest")
        .expect("bind in guest");
    let connect = |ns: &Netns, to: &str| {
        let to: std::net::SocketAddr = to.parse().expect("addr");
        ns.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2)))
            .expect("enter namespace")
    };
    // Out and in, both rejected by kvnet's rules (ICMP port unreachable, as libvirt's
    // REJECT): not lost, and not the kernel's own "no route" (EHOSTUNREACH); the
    // `default` NAT network has turned forwarding on.
    for (from, to, direction) in [
        (&guest, "10.77.0.2:8080", "out of"),
        (&upstream, "192.168.42.10:8081", "into"),
    ] {
        match connect(from, to) {
            Ok(_) => panic!("the isolated network forwarded a connection {direction} it"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{direction} the isolated network: {e}\n{}",
                daemon.ruleset()
            ),
        }
    }

    // The host itself is reachable from the isolated network.
    let host = guest
        .sh("busybox ping -c1 -W2 192.168.42.1 >/dev/null && echo reachable")
        .unwrap_or_default();
    assert_eq!(host.trim(), "reachable");
}

/// `<nat ipv6='yes'>`: IPv6 leaves masqueraded behind the host's upstream address, and
/// only replies come back in. The upstream has no route to the guests' subnet at first,
/// so a reply reaching the guest proves the source was rewritten.
#[test]
fn nat_ipv6_masquerades_guests_ipv6_and_lets_only_replies_in() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = common::xml_file(
        daemon.dirs.path(),
        "nat6.xml",
        "<network>
  <name>nat6</name>
  <forward mode='nat'>
    <nat ipv6='yes'/>
  </forward>
  <bridge name='kvnat6'/>
  <ip address='192.168.130.1' prefix='24'/>
  <ip family='ipv6' address='fd00:130::1' prefix='64'/>
</network>
",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "nat6"]);
    let guest = Netns::new("nat6guest").expect("guest ns");
    let upstream = Netns::new("nat6up").expect("upstream ns");
    attach_guest(&daemon, &guest, "kvnat6", "", "");
    guest
        .sh("ip addr add fd00:130::10/64 dev eth0 nodad && ip -6 route add default via fd00:130::1")
        .expect("guest addressing");
    daemon
        .ns
        .sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {} && ip addr add fd77::1/64 dev up0 nodad && ip link set up0 up",
            upstream.name()
        ))
        .expect("veth to upstream");
    upstream
        .sh("ip addr add fd77::2/64 dev eth0 nodad && ip link set eth0 up")
        .expect("upstream addressing");
    wait_for_forwarding(&daemon, "vg0");

    let listener = upstream
        .run(|| std::net::TcpListener::bind("[fd77::2]:8080"))
        .expect("enter upstream")
        .expect("bind in upstream");
    let server = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    // The bridge's own address may still be completing duplicate address detection.
    let connected = (0..20)
        .map(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250));
            }
            guest
                .run(|| {
                    std::net::TcpStream::connect_timeout(
                        &"[fd77::2]:8080".parse().expect("addr"),
                        Duration::from_secs(2),
                    )
                })
                .expect("enter guest")
        })
        .find(Result::is_ok);
    assert!(
        connected.is_some(),
        "guest could not reach upstream over IPv6\n{}",
        daemon.ruleset()
    );
    let peer = server.join().expect("server thread").expect("accept");
    assert_eq!(peer.ip().to_string(), "fd77::1", "not masqueraded");
    assert!(
        peer.port() >= 1024,
        "source port {} below the NAT range",
        peer.port()
    );

    // Even with a route to the guests, upstream cannot open a connection into them.
    upstream
        .sh("ip -6 route add fd00:130::/64 via fd77::1")
        .expect("upstream route");
    let _guest_listener = guest
        .run(|| std::net::TcpListener::bind("[fd00:130::10]:8081"))
        .expect("enter guest")
        .expect("bind in guest");
    let inbound = upstream
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &"[fd00:130::10]:8081".parse().expect("addr"),
                Duration::from_secs(2),
            )
        })
        .expect("enter upstream");
    // Refused by the rules (ICMPv6 port unreachable), not lost on the way.
    assert_eq!(
        inbound.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a new connection into a NAT network: {inbound:?}"
    );
}
