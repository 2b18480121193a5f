//! netns tier: NAT for real. A "guest" namespace on the network's bridge reaches a TCP
//! server in an "upstream" namespace, which sees the masqueraded host address.

mod common;

use std::time::Duration;

use common::{DAEMON_NEEDS, Daemon, Netns, attach_guest, require, wait_for_forwarding};

/// An "upstream" namespace at 10.77.0.2, reachable from the daemon's namespace via 10.77.0.1.
fn attach_upstream(daemon: &Daemon, upstream: &Netns) {
    daemon
        .ns
        .sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {} && ip addr add 10.77.0.1/24 dev up0 && ip link set up0 up",
            upstream.name()
        ))
        .expect("veth to upstream");
    upstream
        .sh("ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up")
        .expect("upstream addressing");
}

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
    if !require(DAEMON_NEEDS) {
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
    wait_for_forwarding(&daemon, "vg0");
    let _listener = upstream
        .run(|| std::net::TcpListener::bind("10.77.0.2:8080"))
        .expect("enter upstream")
        .expect("bind in upstream");
    let connected = guest
        .run(|| {
            std::net::TcpStream::connect_timeout(
                &"10.77.0.2:8080".parse().expect("addr"),
                Duration::from_secs(2),
            )
        })
        .expect("enter guest");
    assert!(connected.is_err(), "isolated network forwarded to upstream");
    // The host itself is reachable from the isolated network.
    let host = guest
        .sh("busybox ping -c1 -W2 192.168.42.1 >/dev/null && echo reachable")
        .unwrap_or_default();
    assert_eq!(host.trim(), "reachable");
}
