//! netns tier: macvtap networks (libvirt's `<forward mode='bridge'|'private'|'vepa'|
//! 'passthrough'>` with an `<interface dev=>` pool). Each port is a macvtap with the guest's
//! MAC on a device of the pool; a guest's frames cross it to the LAN behind that device
//! (here a veth to a "lan" namespace). Ports are parked down while their network is
//! stopped, survive daemon restarts and crashes, and a handed-over one goes with the
//! process that asked for it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Daemon, Netns, api_error, arp_request, is_arp_reply, port_needs, port_xml, receives, require,
};
use netd::api::ErrorKind;
use netd::api::client::Client;
use netd::api::types::PortSummary;
use netd::link::KVNET_LINK_GROUP;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

const LAN_IP: [u8; 4] = [10, 88, 0, 1];
const GUEST_IP: [u8; 4] = [10, 88, 0, 50];
/// Set for the copy of this test binary that holds a port ([`macvtap_port_holder`]).
const HOLDER_SOCKET_ENV: &str = "KVNET_TEST_MACVTAP_HOLDER_SOCKET";

/// A port limited to 1000 kB/s towards the guest and 500 kB/s from it.
fn limited_port_xml(owner: &str, mac: &str) -> String {
    format!(
        "<networkport><owner><name>{owner}</name>\
         <uuid>c0b6a7f5-4deb-4cf6-b4e7-eab4e3aafd4c</uuid></owner>\
         <mac address='{mac}'/>\
         <bandwidth><inbound average='1000'/><outbound average='500'/></bandwidth></networkport>"
    )
}

/// The IFB devices in the daemon's namespace.
fn ifbs(daemon: &Daemon) -> Vec<String> {
    daemon
        .ip_json("-d link show")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["linkinfo"]["info_kind"] == "ifb")
        .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
        .collect()
}

/// Packets sent through the HTB class that limits `dev`.
fn class_packets(daemon: &Daemon, dev: &str) -> u64 {
    let out = daemon
        .ns
        .sh(&format!("tc -s class show dev {dev}"))
        .expect("tc -s class");
    out.split("class htb 1:1 ")
        .nth(1)
        .and_then(|class| class.split(" bytes ").nth(1))
        .and_then(|rest| rest.split(" pkt").next())
        .and_then(|packets| packets.trim().parse().ok())
        .unwrap_or_else(|| panic!("no packet count for {dev}: {out}"))
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("six bytes")
}

/// A daemon without networks, and a "lan" namespace behind veths `lan0`, `lan1`, ... of the
/// daemon's namespace (peers `eth0`, `eth1`, ... on one bridge, at 10.88.0.1).
fn daemon_with_lan(devices: usize) -> (Daemon, Netns) {
    let daemon = Daemon::without_default_network();
    let lan = Netns::new("lan").expect("lan namespace");
    lan.sh("ip link add lanbr type bridge && ip addr add 10.88.0.1/24 dev lanbr && ip link set lanbr up")
        .expect("lan bridge");
    for n in 0..devices {
        daemon
            .ns
            .sh(&format!(
                "ip link add lan{n} type veth peer name eth{n} netns {lan} && ip link set lan{n} up",
                lan = lan.name()
            ))
            .expect("veth to the lan");
        lan.sh(&format!(
            "ip link set eth{n} master lanbr && ip link set eth{n} up"
        ))
        .expect("lan port");
    }
    (daemon, lan)
}

fn define_and_start(daemon: &Daemon, name: &str, forward: &str) {
    let xml = format!("<network><name>{name}</name>{forward}</network>");
    let file = common::xml_file(daemon.dirs.path(), name, &xml);
    daemon.ok(&["net-define", file.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", name]);
}

/// The daemon namespace's macvtaps: name -> `ip -d -j link` object.
fn macvtaps(daemon: &Daemon) -> Vec<serde_json::Value> {
    daemon
        .ip_json("-d link show")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["linkinfo"]["info_kind"] == "macvtap")
        .cloned()
        .collect()
}

fn macvtap(daemon: &Daemon, name: &str) -> serde_json::Value {
    daemon.ip_json(&format!("-d link show {name}"))[0].clone()
}

fn lower_of(daemon: &Daemon, name: &str) -> String {
    let index = macvtap(daemon, name)["link_index"]
        .as_u64()
        .map(|i| i.to_string());
    // `ip -j` names the lower device in "link" when it is in the same namespace.
    macvtap(daemon, name)["link"]
        .as_str()
        .map(str::to_owned)
        .or(index)
        .unwrap_or_default()
}

/// Sends the guest's ARP request through its queue until the LAN's reply comes back
/// through it (the first may go before the LAN bridge's port forwards).
fn lan_answers(queue: &OwnedFd, mac: [u8; 6], timeout: Duration) -> bool {
    receives(
        queue,
        timeout,
        || {
            // A down macvtap may refuse the frame; the reply just never comes then.
            let _ = nix::unistd::write(queue, &arp_request(mac, GUEST_IP, LAN_IP));
        },
        |frame| is_arp_reply(frame, mac, LAN_IP),
    )
}

/// Reads and drops whatever frames wait in the queue.
fn drain(queue: &OwnedFd) {
    let mut buffer = [0u8; 2048];
    loop {
        let mut fds = [PollFd::new(queue.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::ZERO).expect("poll") == 0 {
            return;
        }
        nix::unistd::read(queue, &mut buffer).expect("read the macvtap");
    }
}

#[test]
fn a_macvtap_network_puts_each_guest_on_a_device_of_its_pool() {
    if !require(&port_needs()) {
        return;
    }
    let (mut daemon, lan) = daemon_with_lan(2);
    define_and_start(
        &daemon,
        "lan",
        "<forward mode='bridge'><interface dev='lan0'/><interface dev='lan1'/></forward>",
    );
    // No bridge: net-info has no Bridge line, as virsh's, and nothing was created.
    let info = daemon.ok(&["net-info", "lan"]);
    assert!(!info.contains("Bridge:"), "{info}");
    assert!(info.contains("Active:         yes"), "{info}");
    assert!(daemon.bridges().is_empty(), "{:?}", daemon.bridges());
    assert!(!daemon.ruleset().contains("kvnet"), "{}", daemon.ruleset());
    let xml = daemon.ok(&["net-dumpxml", "lan"]);
    assert!(
        xml.contains(
            "  <forward dev='lan0' mode='bridge'>\n    <interface dev='lan0'/>\n    <interface dev='lan1'/>\n  </forward>\n"
        ),
        "{xml}"
    );

    let client = Client::new(daemon.socket());
    let (handed, queue) = client
        .plug("lan", &port_xml("guest1", "52:54:00:aa:cc:01"))
        .expect("plug");
    assert!(handed.tap.starts_with("macvtap"), "{handed:?}");
    assert!(!handed.persistent);
    let link = macvtap(&daemon, &handed.tap);
    assert_eq!(link["address"], "52:54:00:aa:cc:01", "{link}");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge", "{link}");
    assert_eq!(lower_of(&daemon, &handed.tap), "lan0");
    assert!(common::is_up(&link), "{link}");
    assert!(
        link["ifalias"]
            .as_str()
            .is_some_and(|alias| alias == format!("kvnet: port {} of network lan", handed.uuid)),
        "{link}"
    );
    let ipv6 = daemon
        .ns
        .sh(&format!(
            "cat /proc/sys/net/ipv6/conf/{}/disable_ipv6",
            handed.tap
        ))
        .expect("sysctl");
    assert_eq!(ipv6, "1\n");
    let port_xml_text = client
        .port_xml("lan", &handed.uuid.to_string())
        .expect("port xml");
    assert!(
        port_xml_text.contains("  <plug type='direct' dev='lan0' mode='bridge'/>\n"),
        "{port_xml_text}"
    );
    let guest1 = mac_bytes("52:54:00:aa:cc:01");
    assert!(
        lan_answers(&queue, guest1, Duration::from_secs(10)),
        "no ARP reply from the LAN through the macvtap"
    );
    // Multicast the host never joined reaches the guest too (its IPv6 router
    // advertisements and neighbour solicitations are multicast).
    lan.sh("ip route add 224.0.0.0/4 dev lanbr")
        .expect("multicast route");
    let sender = lan
        .run(|| UdpSocket::bind("10.88.0.1:0"))
        .expect("enter the lan")
        .expect("udp socket");
    let group_mac = [0x01, 0x00, 0x5e, 0x01, 0x02, 0x03];
    assert!(
        receives(
            &queue,
            Duration::from_secs(10),
            || {
                sender.send_to(b"to a group", "239.1.2.3:9").expect("send");
            },
            |frame| frame.len() > 6 && frame[..6] == group_mac
        ),
        "multicast from the LAN does not reach the guest"
    );

    // The next port goes on the device with the fewest, then the first of a tie.
    let second = client
        .create_port("lan", &port_xml("guest2", "52:54:00:aa:cc:02"))
        .expect("second port");
    assert!(second.persistent);
    assert_eq!(lower_of(&daemon, &second.tap), "lan1");
    // A macvtap has the guest's MAC itself: one starting with FE, which would clash
    // with a tap's, is fine.
    let third = client
        .create_port("lan", &port_xml("guest3", "fe:54:00:aa:cc:03"))
        .expect("third port");
    assert_eq!(lower_of(&daemon, &third.tap), "lan0");
    assert_eq!(macvtap(&daemon, &third.tap)["address"], "fe:54:00:aa:cc:03");
    assert_eq!(macvtaps(&daemon).len(), 3);
    // The live XML counts them, as libvirt's; --inactive does not.
    let live = daemon.ok(&["net-dumpxml", "lan"]);
    assert!(live.starts_with("<network connections='3'>\n"), "{live}");
    assert!(
        live.contains(
            "    <interface dev='lan0' connections='2'/>\n    <interface dev='lan1' connections='1'/>\n"
        ),
        "{live}"
    );
    assert!(
        !daemon
            .ok(&["net-dumpxml", "lan", "--inactive"])
            .contains("connections")
    );

    // Stopped, the network leaves the macvtaps to their guests, down; they come back
    // up with it, across a daemon crash too.
    daemon.ok(&["net-destroy", "lan"]);
    for port in [&handed, &second, &third] {
        assert!(!common::is_up(&macvtap(&daemon, &port.tap)), "{port:?}");
    }
    drain(&queue);
    assert!(
        !lan_answers(&queue, guest1, Duration::from_secs(2)),
        "a parked macvtap still carries frames"
    );
    daemon.kill9();
    daemon.spawn(&Default::default());
    assert_eq!(macvtaps(&daemon).len(), 3);
    daemon.ok(&["net-start", "lan"]);
    for port in [&handed, &second, &third] {
        assert!(common::is_up(&macvtap(&daemon, &port.tap)), "{port:?}");
    }
    assert!(daemon.log().contains("plugged ports in again"));
    assert!(
        lan_answers(&queue, guest1, Duration::from_secs(10)),
        "no ARP reply after the network's restart"
    );

    // A deleted port takes its macvtap; undefining the stopped network, the rest.
    client
        .delete_port("lan", &second.uuid.to_string())
        .expect("delete");
    assert_eq!(macvtaps(&daemon).len(), 2);
    daemon.ok(&["net-destroy", "lan"]);
    daemon.ok(&["net-undefine", "lan"]);
    assert!(macvtaps(&daemon).is_empty(), "{:?}", macvtaps(&daemon));
    drop(queue);
}

/// Not a test of its own: the process [`a_handed_over_macvtap_goes_with_its_process`]
/// runs (this test binary again, `--ignored --exact`) to hold a port. It prints the port,
/// then holds it until its stdin closes or it is killed.
#[test]
#[ignore = "a helper process of a_handed_over_macvtap_goes_with_its_process"]
fn macvtap_port_holder() {
    let Ok(socket) = std::env::var(HOLDER_SOCKET_ENV) else {
        return;
    };
    let (port, _queue) = Client::new(socket)
        .plug("lan", &limited_port_xml("held", "52:54:00:aa:cc:09"))
        .expect("plug");
    println!("PORT {}", serde_json::to_string(&port).expect("json"));
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// Starts a holder process and waits for its port.
fn hold_port(daemon: &Daemon) -> (Child, PortSummary) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "macvtap_port_holder", "--nocapture"])
        .env(HOLDER_SOCKET_ENV, daemon.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("holder");
    let stdout = child.stdout.take().expect("stdout");
    let port = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("PORT ")
                .map(|json| serde_json::from_str::<PortSummary>(json).expect("port json"))
        })
        .expect("the holder's port");
    (child, port)
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_handed_over_macvtap_goes_with_its_process() {
    if !require(&port_needs()) {
        return;
    }
    let (mut daemon, _lan) = daemon_with_lan(1);
    define_and_start(&daemon, "lan", "<forward mode='vepa' dev='lan0'/>");
    let client = Client::new(daemon.socket());

    // The holder exits: its macvtap goes at once, and its port with it.
    let (holder, port) = hold_port(&daemon);
    assert_eq!(
        macvtap(&daemon, &port.tap)["linkinfo"]["info_data"]["mode"],
        "vepa"
    );
    assert_eq!(ifbs(&daemon).len(), 1, "the port's limits");
    let gone = |daemon: &Daemon, mut holder: Child| {
        holder.kill().expect("kill the holder");
        holder.wait().expect("reap");
        wait_until(
            "the macvtap of an exited process goes, with its ifb",
            Duration::from_secs(10),
            || macvtaps(daemon).is_empty() && ifbs(daemon).is_empty(),
        );
        assert_eq!(client.ports("lan").expect("ports"), []);
    };
    gone(&daemon, holder);
    assert!(
        daemon
            .log()
            .contains("deleted the macvtap of a process that exited")
    );

    // A port deleted while its process runs is watched no more: the daemon lets go of
    // the process's pidfd (a process that asks for many ports would pile them up).
    let pidfds = |daemon: &Daemon| {
        let fds = format!("/proc/{}/fd", daemon.pid().expect("daemon pid"));
        std::fs::read_dir(fds)
            .expect("the daemon's fds")
            .filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.to_string_lossy() == "anon_inode:[pidfd]")
            .count()
    };
    let watched = pidfds(&daemon);
    let (mut holder, port) = hold_port(&daemon);
    assert_eq!(pidfds(&daemon), watched + 1);
    client
        .delete_port("lan", &port.uuid.to_string())
        .expect("delete the port");
    wait_until(
        "the watch of a deleted port ends",
        Duration::from_secs(5),
        || pidfds(&daemon) == watched,
    );
    holder.kill().expect("kill the holder");
    holder.wait().expect("reap");

    // A restarted daemon watches the holder again.
    let (holder, _) = hold_port(&daemon);
    daemon.stop();
    daemon.spawn(&Default::default());
    assert_eq!(macvtaps(&daemon).len(), 1);
    let logged = daemon.log().len();
    gone(&daemon, holder);
    assert!(daemon.log()[logged..].contains("deleted the macvtap of a process that exited"));

    // A holder that exits while the daemon is away loses its port when it comes back.
    let (mut holder, _) = hold_port(&daemon);
    daemon.kill9();
    holder.kill().expect("kill the holder");
    holder.wait().expect("reap");
    assert_eq!(macvtaps(&daemon).len(), 1);
    let logged = daemon.log().len();
    daemon.spawn(&Default::default());
    assert!(macvtaps(&daemon).is_empty(), "{:?}", macvtaps(&daemon));
    assert!(daemon.log()[logged..].contains("port ended: its process exited"));
    assert_eq!(client.ports("lan").expect("ports"), []);
}

#[test]
fn macvtap_ports_follow_libvirts_allocation_rules() {
    if !require(&port_needs()) {
        return;
    }
    let (mut daemon, _lan) = daemon_with_lan(3);
    define_and_start(
        &daemon,
        "solo",
        "<forward mode='passthrough'><interface dev='lan0'/><interface dev='lan1'/></forward>",
    );
    let client = Client::new(daemon.socket());
    let lan0_mac = macvtap(&daemon, "lan0")["address"].clone();
    let first = client
        .create_port("solo", &port_xml("a", "52:54:00:aa:dd:01"))
        .expect("first");
    // In passthrough mode the device takes the guest's MAC, as under libvirt, and gets its
    // own back when the port goes.
    assert_eq!(macvtap(&daemon, "lan0")["address"], "52:54:00:aa:dd:01");
    assert_eq!(macvtap(&daemon, &first.tap)["address"], "52:54:00:aa:dd:01");
    let second = client
        .create_port("solo", &port_xml("b", "52:54:00:aa:dd:02"))
        .expect("second");
    assert_eq!(lower_of(&daemon, &first.tap), "lan0");
    assert_eq!(lower_of(&daemon, &second.tap), "lan1");
    assert_eq!(
        macvtap(&daemon, &first.tap)["linkinfo"]["info_data"]["mode"],
        "passthru"
    );
    assert_eq!(
        api_error(client.create_port("solo", &port_xml("c", "52:54:00:aa:dd:03"))),
        (
            ErrorKind::Internal,
            "network 'solo' requires exclusive access to interfaces, but none are available"
                .to_owned()
        )
    );
    // A device is free again once its port is gone, and as it was: the guest's
    // all-multicast does not stay on the host's NIC.
    client
        .delete_port("solo", &first.uuid.to_string())
        .expect("delete");
    assert_eq!(macvtap(&daemon, "lan0")["address"], lan0_mac);
    assert_eq!(macvtap(&daemon, "lan0")["allmulti"], 0);
    let third = client
        .create_port("solo", &port_xml("c", "52:54:00:aa:dd:03"))
        .expect("third");
    assert_eq!(lower_of(&daemon, &third.tap), "lan0");

    // The pool changes live (net-update forward-interface), but not under a port.
    let in_use = daemon.fails(&[
        "net-update",
        "solo",
        "delete",
        "forward-interface",
        "<interface dev='lan1'/>",
        "--live",
    ]);
    assert!(
        in_use.contains(
            "unable to delete interface 'lan1' in network 'solo'. It is currently being used  by 1 domains."
        ),
        "{in_use}"
    );
    client
        .delete_port("solo", &second.uuid.to_string())
        .expect("delete");
    daemon.ok(&[
        "net-update",
        "solo",
        "delete",
        "forward-interface",
        "<interface dev='lan1'/>",
        "--live",
    ]);
    assert_eq!(
        api_error(client.create_port("solo", &port_xml("d", "52:54:00:aa:dd:04"))).1,
        "network 'solo' requires exclusive access to interfaces, but none are available"
    );
    daemon.ok(&[
        "net-update",
        "solo",
        "add",
        "forward-interface",
        "<interface dev='lan1'/>",
        "--live",
    ]);
    let second = client
        .create_port("solo", &port_xml("b", "52:54:00:aa:dd:02"))
        .expect("second again");
    assert_eq!(lower_of(&daemon, &second.tap), "lan1");

    // An empty pool starts, as libvirt's, and refuses ports.
    define_and_start(&daemon, "empty", "<forward mode='private'/>");
    assert_eq!(
        api_error(client.create_port("empty", &port_xml("d", "52:54:00:aa:dd:04"))),
        (
            ErrorKind::Internal,
            "network 'empty' uses a direct mode, but has no forward dev and no interface pool"
                .to_owned()
        )
    );
    // What a macvtap cannot do is refused, and nothing is left behind.
    let before = macvtaps(&daemon).len();
    define_and_start(&daemon, "private", "<forward mode='private' dev='lan2'/>");
    let isolated = "<networkport><owner><name>e</name><uuid>c0b6a7f5-4deb-4cf6-b4e7-eab4e3aafd4c</uuid></owner>\
                    <mac address='52:54:00:aa:dd:05'/><port isolated='yes'/></networkport>";
    assert_eq!(
        api_error(client.create_port("private", isolated)),
        (
            ErrorKind::Unsupported,
            "interface 52:54:00:aa:dd:05 - <port isolated='yes'/> is not supported for network interfaces with type='direct'"
                .to_owned()
        )
    );
    // A pool device that does not exist is named.
    define_and_start(&daemon, "ghost", "<forward mode='vepa' dev='nosuch0'/>");
    let (kind, message) =
        api_error(client.create_port("ghost", &port_xml("f", "52:54:00:aa:dd:06")));
    assert_eq!(kind, ErrorKind::Internal);
    assert!(message.contains("nosuch0"), "{message}");
    assert_eq!(macvtaps(&daemon).len(), before);

    // kvnet's macvtaps that no port claims go when the daemon starts: one a crash left
    // between creating it and recording its port, one left before its alias, one of a
    // network that is gone. Anyone else's stay, even with kvnet's alias.
    daemon.kill9();
    let group = KVNET_LINK_GROUP;
    let port = "0ab5e2c4-5c1d-4f49-9f53-6b4f0a8f7e21";
    daemon
        .ns
        .sh(&format!(
            "ip link add link lan2 name macvtap77 group {group} type macvtap mode bridge && \
             ip link set macvtap77 alias 'kvnet: port {port} of network private' && \
             ip link add link lan2 name macvtap78 group {group} type macvtap mode bridge && \
             ip link add link lan2 name macvtap79 group {group} type macvtap mode bridge && \
             ip link set macvtap79 alias 'kvnet: port {port} of network gone' && \
             ip link add link lan2 name theirs0 type macvtap mode bridge && \
             ip link set theirs0 alias 'kvnet: port {port} of network private'"
        ))
        .expect("stray macvtaps");
    daemon.spawn(&Default::default());
    let names: Vec<String> = macvtaps(&daemon)
        .iter()
        .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
        .collect();
    for orphan in ["macvtap77", "macvtap78", "macvtap79"] {
        assert!(!names.contains(&orphan.to_owned()), "{orphan}: {names:?}");
    }
    assert!(names.contains(&"theirs0".to_owned()), "{names:?}");
    assert!(
        names.contains(&second.tap) && names.contains(&third.tap),
        "{names:?}"
    );
}

/// Two guests with one MAC on one device: the kernel refuses the second macvtap, and
/// the error names the MAC; nothing of the second port is left.
#[test]
fn a_mac_already_on_the_device_is_named_and_leaves_nothing() {
    if !require(&port_needs()) {
        return;
    }
    let (daemon, _lan) = daemon_with_lan(1);
    define_and_start(&daemon, "lan", "<forward mode='bridge' dev='lan0'/>");
    let client = Client::new(daemon.socket());
    client
        .create_port("lan", &port_xml("first", "52:54:00:aa:ef:01"))
        .expect("first port");
    let (_, message) =
        api_error(client.create_port("lan", &port_xml("second", "52:54:00:aa:ef:01")));
    assert!(
        message.contains("with the guest's MAC 52:54:00:aa:ef:01: Address already in use"),
        "{message}"
    );
    assert_eq!(macvtaps(&daemon).len(), 1);
    assert_eq!(client.ports("lan").expect("ports").len(), 1);
}

#[test]
fn a_macvtap_ports_limits_are_its_guests_own() {
    if !require(&port_needs()) {
        return;
    }
    let (daemon, _lan) = daemon_with_lan(1);
    define_and_start(&daemon, "lan", "<forward mode='bridge' dev='lan0'/>");
    let client = Client::new(daemon.socket());
    let (port, queue) = client
        .plug("lan", &limited_port_xml("limited", "52:54:00:aa:ee:01"))
        .expect("plug");
    // A macvtap sees the guest's traffic the other way round from a tap: what the guest
    // sends leaves through its egress (outbound, 500 kB/s = 4 Mbit), and what it receives
    // is redirected from its ingress to its IFB (inbound, 1000 kB/s).
    assert!(testkit::htb_class(&daemon.ns, &port.tap).contains(" rate 4Mbit "));
    let index = macvtap(&daemon, &port.tap)["ifindex"]
        .as_u64()
        .expect("ifindex");
    let ifb = format!("kvifb{index}");
    assert!(testkit::htb_class(&daemon.ns, &ifb).contains(" rate 8Mbit "));
    let xml = client
        .port_xml("lan", &port.uuid.to_string())
        .expect("port xml");
    assert!(
        xml.contains("<inbound average='1000'/>") && xml.contains("<outbound average='500'/>"),
        "{xml}"
    );
    // Frames cross both limits.
    let guest = mac_bytes("52:54:00:aa:ee:01");
    assert!(lan_answers(&queue, guest, Duration::from_secs(10)));
    assert!(
        class_packets(&daemon, &port.tap) > 0,
        "nothing went out through the limit"
    );
    assert!(
        class_packets(&daemon, &ifb) > 0,
        "nothing came in through the limit"
    );

    client
        .delete_port("lan", &port.uuid.to_string())
        .expect("delete");
    assert!(macvtaps(&daemon).is_empty());
    assert!(ifbs(&daemon).is_empty(), "{:?}", ifbs(&daemon));
    drop(queue);
}

#[test]
fn unreadable_port_records_keep_their_macvtaps() {
    if !require(&port_needs()) {
        return;
    }
    let (mut daemon, _lan) = daemon_with_lan(1);
    define_and_start(&daemon, "lan", "<forward mode='bridge' dev='lan0'/>");
    let client = Client::new(daemon.socket());
    let kept = client
        .create_port("lan", &port_xml("kept", "52:54:00:aa:ff:01"))
        .expect("port");
    let records = daemon.state_dir().join("networks/lan.ports");

    // A record whose XML this daemon cannot read (a newer one's, or damaged) is kept as
    // it is, and its device with it, however often the daemon restarts.
    daemon.kill9();
    let text = std::fs::read_to_string(&records).expect("records");
    let damaged = text.replacen("<networkport>", "<networkport future='yes'>", 1);
    assert_ne!(damaged, text);
    std::fs::write(&records, &damaged).expect("damage a record");
    for _ in 0..2 {
        daemon.spawn(&Default::default());
        assert_eq!(macvtaps(&daemon).len(), 1, "{}", daemon.log());
        // A change to the network's ports writes the record back as it was.
        let other = client
            .create_port("lan", &port_xml("other", "52:54:00:aa:ff:02"))
            .expect("another port");
        client
            .delete_port("lan", &other.uuid.to_string())
            .expect("delete it");
        assert!(
            std::fs::read_to_string(&records)
                .expect("records")
                .contains("future='yes'")
        );
        daemon.kill9();
    }
    assert!(
        daemon
            .log()
            .contains("keeping a port record whose XML cannot be read")
    );

    // A file that cannot be read at all is set aside, and the network's devices stay.
    std::fs::write(&records, "{ not json").expect("damage the file");
    for _ in 0..2 {
        daemon.spawn(&Default::default());
        let names: Vec<String> = macvtaps(&daemon)
            .iter()
            .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(names, std::slice::from_ref(&kept.tap), "{}", daemon.log());
        daemon.kill9();
    }
    assert!(
        daemon
            .state_dir()
            .join("networks/lan.ports.unreadable")
            .exists()
    );
}
