//! netns tier: `dhcp-option=` lines of `<dnsmasq:options>` reach a real DHCP client
//! (busybox `udhcpc`) as dnsmasq sends them, and `net-dumpxml` keeps them as written;
//! a client's offer and ACK reach it alone, not the other guests on the bridge.

mod common;

use common::{DAEMON_NEEDS, Daemon, Need, Netns, attach_guest, require, wait_for_forwarding};

const OPTIONS: [&str; 3] = [
    // kcli's line, with dnsmasq's 0.0.0.0 for the server's own address.
    "dhcp-option=option:ntp-server,0.0.0.0,10.62.0.9",
    "dhcp-option-force=66,tftp.example",
    "dhcp-option=option:router,10.62.0.254",
];

#[test]
fn guests_get_the_options_of_dhcp_option_lines() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let lines: String = OPTIONS
        .iter()
        .map(|value| format!("<dnsmasq:option value='{value}'/>"))
        .collect();
    let xml = format!(
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <name>opts</name><bridge name='kvopt' stp='off'/>\
         <ip address='10.62.0.1' prefix='24'><dhcp>\
         <range start='10.62.0.10' end='10.62.0.20'/></dhcp></ip>\
         <dnsmasq:options>{lines}</dnsmasq:options></network>"
    );
    let path = common::xml_file(daemon.dirs.path(), "opts.xml", &xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "opts"]);
    let dumped = daemon.ok(&["net-dumpxml", "opts"]);
    for value in OPTIONS {
        assert!(
            dumped.contains(&format!("    <dnsmasq:option value='{value}'/>\n")),
            "{dumped}"
        );
    }

    let guest = Netns::new("optguest").expect("guest ns");
    attach_guest(&daemon, &guest, "kvopt", "", "");
    wait_for_forwarding(&daemon, "vg0");
    let script = daemon.dirs.path().join("udhcpc-opts.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\n\
         echo \"$ntpsrv|$tftp|$router\" > \"$0.out\"\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let lease = |request: &str| {
        guest
            .sh(&format!(
                "busybox udhcpc -i eth0 -n -q -f -T 1 -t 5 {request} -s {}",
                script.display()
            ))
            .expect("udhcpc got no lease");
        let out = std::fs::read_to_string(format!("{}.out", script.display())).expect("bound");
        out.trim().to_owned()
    };
    // Asked for: the NTP servers, the bridge's address first; the router of the line,
    // not kvnet's own; the forced TFTP server.
    assert_eq!(
        lease("-O ntpsrv"),
        "10.62.0.1 10.62.0.9|tftp.example|10.62.0.254"
    );
    // Not asked for: no NTP servers; the forced option all the same.
    assert_eq!(lease("-o -O router"), "|tftp.example|10.62.0.254");
    daemon.ok(&["net-destroy", "opts"]);
}

/// RFC 2131 4.1, as dnsmasq does it: a client without the broadcast flag (udhcpc, as
/// dhclient and networkd) gets its OFFER and ACK at its own MAC, so another guest on
/// the bridge, on an isolated port too, never sees its name or identifier.
#[test]
fn a_guests_offer_and_ack_reach_it_alone() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let xml = "<network><name>quiet</name><bridge name='kvq0' stp='off'/>\
               <ip address='10.63.0.1' prefix='24'><dhcp>\
               <range start='10.63.0.10' end='10.63.0.20'/></dhcp></ip></network>";
    let path = common::xml_file(daemon.dirs.path(), "quiet.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "quiet"]);
    let asking = Netns::new("dhcpask").expect("guest ns");
    let watching = Netns::new("dhcpwatch").expect("guest ns");
    for (guest, port) in [(&asking, "vqa"), (&watching, "vqb")] {
        daemon
            .ns
            .sh(&format!(
                "ip link add {port} type veth peer name eth0 netns {} && \
                 ip link set {port} master kvq0 && bridge link set dev {port} isolated on && \
                 ip link set {port} up",
                guest.name()
            ))
            .expect("veth to guest");
        guest.sh("ip link set eth0 up").expect("guest link up");
        wait_for_forwarding(&daemon, port);
    }
    // The watching guest listens where a broadcast reply would arrive.
    let listener = watching
        .run(|| std::net::UdpSocket::bind("0.0.0.0:68"))
        .expect("in the watching guest")
        .expect("port 68");
    listener.set_broadcast(true).expect("broadcast");
    listener
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .expect("timeout");
    let lease = common::udhcpc_lease(&daemon, &asking, "secret-host");
    assert!(lease.ip.starts_with("10.63.0."), "{lease:?}");
    let mut buf = [0u8; 1500];
    let seen = listener.recv_from(&mut buf);
    assert!(
        seen.is_err(),
        "another guest saw a DHCP reply: {:?}",
        seen.map(|(len, from)| (from, String::from_utf8_lossy(&buf[..len]).into_owned()))
    );
    daemon.ok(&["net-destroy", "quiet"]);
}
