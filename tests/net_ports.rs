//! netns tier: network ports. kvnetd makes a guest's tap on a network's bridge and hands
//! its descriptor over the API socket (what `kvnet-vmm --net network=NAME` does), or
//! keeps it persistent (`net-port-create`); ports last as long as their tap, survive a
//! daemon restart and a restart of their network (plugged in again), and go with their
//! network.

mod common;

use std::os::fd::OwnedFd;
use std::time::Duration;

use common::{
    Daemon, DaemonOptions, api_error, port_needs, port_xml, require, wait_for_forwarding,
    wait_for_frame, xml_file,
};
use netd::api::ErrorKind;
use netd::api::client::Client;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0xbb, 0x01];
const GUEST_IP: [u8; 4] = [192, 168, 122, 77];
const BRIDGE_IP: [u8; 4] = [192, 168, 122, 1];

/// The taps (tun devices) in the daemon's namespace.
fn taps(daemon: &Daemon) -> Vec<String> {
    let links = daemon.ip_json("-d link show");
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["linkinfo"]["info_kind"] == "tun")
        .filter_map(|link| link["ifname"].as_str().map(str::to_owned))
        .collect()
}

fn link(daemon: &Daemon, ifname: &str) -> serde_json::Value {
    daemon.ip_json(&format!("link show {ifname}"))[0].clone()
}

/// An ARP request from the guest for the bridge's address, after the virtio-net header.
fn arp_request() -> Vec<u8> {
    common::arp_request(GUEST_MAC, GUEST_IP, BRIDGE_IP)
}

/// Whether `frame` is the bridge's ARP reply to `mac`.
fn is_arp_reply_to(frame: &[u8], mac: [u8; 6]) -> bool {
    common::is_arp_reply(frame, mac, BRIDGE_IP)
}

/// Sends the guest's ARP request for the bridge's address through the tap until the
/// bridge's reply arrives (for 10 s), once a second as a guest retries: the first may be
/// lost while a loaded host still settles the new port.
fn arp_through(tap: &OwnedFd) -> bool {
    (0..10).any(|_| {
        nix::unistd::write(tap, &arp_request()).expect("write tap");
        wait_for_frame(tap, Duration::from_secs(1), |frame| {
            is_arp_reply_to(frame, GUEST_MAC)
        })
    })
}

#[test]
fn a_vmm_plugs_into_a_network_and_its_tap_carries_frames_until_it_lets_go() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    let (port, tap) = client
        .plug("default", &port_xml("guest1", "52:54:00:aa:bb:01"))
        .expect("plug");
    assert!(port.tap.starts_with("vnet"), "{port:?}");
    assert_eq!(
        (
            port.network.as_str(),
            port.owner.as_str(),
            port.mac.as_str()
        ),
        ("default", "guest1", "52:54:00:aa:bb:01")
    );
    assert!(!port.persistent);
    let kernel = link(&daemon, &port.tap);
    assert_eq!(kernel["master"], "virbr0", "{kernel}");
    assert_eq!(kernel["address"], "fe:54:00:aa:bb:01", "{kernel}");
    assert_eq!(kernel["mtu"], 1500, "{kernel}");
    assert!(common::is_up(&kernel), "{kernel}");
    // The tap has no IPv6 of its own: nothing of the host's (DAD, MLD, router
    // solicitations) reaches the guest from it.
    let ipv6 = daemon
        .ns
        .sh(&format!(
            "cat /proc/sys/net/ipv6/conf/{0}/disable_ipv6; ip -6 -o addr show dev {0}",
            port.tap
        ))
        .expect("tap's IPv6");
    assert_eq!(ipv6, "1\n", "{ipv6}");
    assert_eq!(
        client.ports("default").expect("ports"),
        std::slice::from_ref(&port)
    );
    let xml = client
        .port_xml("default", &port.uuid.to_string())
        .expect("port xml");
    assert!(
        xml.contains("  <plug type='network' bridge='virbr0'/>\n"),
        "{xml}"
    );
    // The network's live XML counts its ports, as libvirt's does.
    let live = daemon.ok(&["net-dumpxml", "default"]);
    assert!(live.starts_with("<network connections='1'>\n"), "{live}");

    // Frames cross: the guest's ARP request reaches the host, whose reply comes back.
    wait_for_forwarding(&daemon, &port.tap);
    assert!(arp_through(&tap), "no ARP reply through the tap");

    // The VMM exits: its tap goes, and so does the port.
    drop(tap);
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
    assert_eq!(client.ports("default").expect("ports"), []);
    assert!(daemon.log().contains("port ended: its tap is gone"));
}

#[test]
fn a_persistent_port_lasts_until_deleted() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    let port = client
        .create_port("default", &port_xml("guest2", "52:54:00:aa:bb:02"))
        .expect("create port");
    assert!(port.persistent);
    assert_eq!(taps(&daemon), std::slice::from_ref(&port.tap));
    assert_eq!(link(&daemon, &port.tap)["master"], "virbr0");
    // By UUID as well as by name.
    let uuid = client.get("default").expect("network").uuid.to_string();
    assert_eq!(
        client.ports(&uuid).expect("ports"),
        std::slice::from_ref(&port)
    );

    let deleted = client
        .delete_port("default", &port.uuid.to_string())
        .expect("delete port");
    assert_eq!(deleted, port);
    assert!(taps(&daemon).is_empty());
    assert_eq!(client.ports("default").expect("ports"), []);
    let (kind, message) = api_error(client.delete_port("default", &port.uuid.to_string()));
    assert_eq!(kind, ErrorKind::NotFound);
    assert_eq!(
        message,
        format!("Network port with UUID {} does not exist", port.uuid)
    );
}

/// The bridge a link is a port of (`None` when detached).
fn master(daemon: &Daemon, ifname: &str) -> Option<String> {
    link(daemon, ifname)["master"].as_str().map(str::to_owned)
}

/// Whether a tap is parked: on no bridge, and down.
fn is_parked(daemon: &Daemon, ifname: &str) -> bool {
    let link = link(daemon, ifname);
    link["master"].is_null() && !common::is_up(&link)
}

fn not_active(network: &str) -> (ErrorKind, String) {
    (
        ErrorKind::OperationInvalid,
        format!("network '{network}' is not active"),
    )
}

/// Runs the network `xml` (named `name`) on `daemon`: defined and started when
/// `persistent`, else created (transient).
fn run_network(daemon: &Daemon, name: &str, xml: &str, persistent: bool) {
    let file = common::xml_file(daemon.dirs.path(), name, xml);
    let file = file.to_str().expect("utf-8");
    if persistent {
        daemon.ok(&["net-define", file]);
        daemon.ok(&["net-start", name]);
    } else {
        daemon.ok(&["net-create", file]);
    }
}

#[test]
fn ports_survive_daemon_and_network_restarts_and_go_with_their_network() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    let (handed, tap) = client
        .plug("default", &port_xml("guest3", "52:54:00:aa:bb:03"))
        .expect("plug");
    let kept = client
        .create_port("default", &port_xml("guest4", "52:54:00:aa:bb:04"))
        .expect("create port");
    let mut both = vec![handed.clone(), kept.clone()];
    both.sort_by_key(|port| port.uuid);

    for crash in [false, true] {
        if crash {
            daemon.kill9();
        } else {
            daemon.stop();
        }
        let logged = daemon.log().len();
        daemon.spawn(&Default::default());
        assert_eq!(client.ports("default").expect("ports"), both);
        assert!(
            daemon.log()[logged..].contains("adopted ports"),
            "crash: {crash}"
        );
    }

    // Destroying the network leaves the taps to their VMMs, detached and down, and the
    // ports out of reach until it runs again (as libvirt, which refuses port calls then).
    daemon.ok(&["net-destroy", "default"]);
    let mut tap_names = vec![handed.tap.clone(), kept.tap.clone()];
    tap_names.sort();
    assert_eq!(taps(&daemon), tap_names);
    for port in [&handed, &kept] {
        assert!(is_parked(&daemon, &port.tap), "{port:?}");
    }
    // Down, a tap refuses the guest's frames rather than hand them to the host.
    assert_eq!(
        nix::unistd::write(&tap, &arp_request()),
        Err(nix::errno::Errno::EIO)
    );
    assert_eq!(api_error(client.ports("default")), not_active("default"));
    assert_eq!(
        api_error(client.delete_port("default", &kept.uuid.to_string())),
        not_active("default")
    );
    // They wait across a daemon crash too.
    daemon.kill9();
    daemon.spawn(&Default::default());
    assert_eq!(taps(&daemon), tap_names);

    // Starting it plugs them into the new bridge: the guest's link is back.
    daemon.ok(&["net-start", "default"]);
    assert_eq!(client.ports("default").expect("ports"), both);
    for port in [&handed, &kept] {
        assert_eq!(master(&daemon, &port.tap).as_deref(), Some("virbr0"));
    }
    assert!(daemon.log().contains("plugged ports in again"));
    wait_for_forwarding(&daemon, &handed.tap);
    assert!(arp_through(&tap), "no ARP reply after the restart");

    // A port whose VMM exited while its network was down is gone when it comes back.
    daemon.ok(&["net-destroy", "default"]);
    drop(tap);
    daemon.ok(&["net-start", "default"]);
    assert_eq!(
        client.ports("default").expect("ports"),
        std::slice::from_ref(&kept)
    );

    // Undefining the stopped network deletes what is left, records included.
    daemon.ok(&["net-destroy", "default"]);
    daemon.ok(&["net-undefine", "default"]);
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
    assert!(!daemon.state_dir().join("networks/default.ports").exists());
}

#[test]
fn the_ports_of_a_transient_network_go_with_it() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::without_default_network();
    run_network(
        &daemon,
        "passing",
        "<network><name>passing</name><ip address='10.77.0.1' prefix='24'/></network>",
        false,
    );
    let client = Client::new(daemon.socket());
    let (_, tap) = client
        .plug("passing", &port_xml("guest5", "52:54:00:aa:bb:05"))
        .expect("plug");
    client
        .create_port("passing", &port_xml("guest6", "52:54:00:aa:bb:06"))
        .expect("create port");

    daemon.ok(&["net-destroy", "passing"]);
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
    // The VMM's descriptor is left without a device.
    assert!(nix::unistd::write(&tap, &arp_request()).is_err());
    assert!(!daemon.state_dir().join("networks/passing.ports").exists());
}

/// Port records name their device by index; one that now names another program's
/// device (a state dir that outlived its namespace, a record copied in) must not get
/// it deleted with the records of a network that is gone, readable or not.
#[test]
fn stale_port_records_never_delete_another_program_s_devices() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    daemon.stop();
    daemon
        .ns
        .sh("ip link add victim0 type veth peer name victim1 && ip link add hostbr type bridge")
        .expect("someone else's devices");
    let index = |name: &str| link(&daemon, name)["ifindex"].as_u64().expect("ifindex");
    let records = serde_json::json!([
        {
            "xml": port_xml("guest9", "52:54:00:aa:bb:09"),
            "tap": "vnet1",
            "ifindex": index("victim0"),
            "persistent": true,
        },
        {
            "xml": "<networkport from-a-newer-daemon",
            "tap": "vnet2",
            "ifindex": index("hostbr"),
            "persistent": true,
        },
    ]);
    let networks = daemon.state_dir().join("networks");
    std::fs::create_dir_all(&networks).expect("state dir");
    std::fs::write(networks.join("gone.ports"), records.to_string()).expect("records");
    daemon.spawn(&Default::default());
    daemon.ok(&["net-list", "--all"]);
    for device in ["victim0", "victim1", "hostbr"] {
        assert!(
            link(&daemon, device).is_object(),
            "{device} was deleted\n{}",
            daemon.log()
        );
    }
    daemon.assert_logged("now names another device; leaving it alone");
}

/// As with libvirt, a host-bridge network starts (at boot, say) before the bridge is
/// made; a port asked for meanwhile is refused, naming the bridge, and the network
/// stays running across a daemon restart.
#[test]
fn a_host_bridge_network_runs_before_its_bridge_exists() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    run_network(
        &daemon,
        "later",
        "<network><name>later</name><forward mode='bridge'/><bridge name='br-later'/></network>",
        true,
    );
    assert!(
        daemon
            .log()
            .contains("the host bridge br-later does not exist (yet)")
    );
    let client = Client::new(daemon.socket());
    let refused = client
        .create_port("later", &port_xml("guest8", "52:54:00:aa:bb:08"))
        .expect_err("no bridge to plug into");
    assert!(refused.to_string().contains("br-later"), "{refused}");
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));

    daemon.kill9();
    daemon.spawn(&Default::default());
    assert!(daemon.ok(&["net-list", "--name"]).contains("later"));
    daemon
        .ns
        .sh("ip link add br-later type bridge && ip link set br-later up")
        .expect("host bridge");
    let port = client
        .create_port("later", &port_xml("guest8", "52:54:00:aa:bb:08"))
        .expect("create port");
    assert_eq!(master(&daemon, &port.tap).as_deref(), Some("br-later"));
    daemon.ok(&["net-destroy", "later"]);
}

/// Two networks on one host bridge (say, two portgroups' worth of settings), as libvirt
/// allows: each plugs its own ports into it, and a destroy of one takes only its own off.
#[test]
fn networks_on_one_host_bridge_each_keep_their_own_ports() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::without_default_network();
    daemon
        .ns
        .sh("ip link add br-host type bridge && ip link set br-host up")
        .expect("host bridge");
    let client = Client::new(daemon.socket());
    let mut taps = Vec::new();
    for (name, mac) in [("one", "52:54:00:aa:bb:01"), ("two", "52:54:00:aa:bb:02")] {
        run_network(
            &daemon,
            name,
            &format!(
                "<network><name>{name}</name><forward mode='bridge'/><bridge name='br-host'/></network>"
            ),
            true,
        );
        let port = client
            .create_port(name, &port_xml(&format!("guest-{name}"), mac))
            .expect("create port");
        taps.push(port.tap);
    }
    for tap in &taps {
        assert_eq!(master(&daemon, tap).as_deref(), Some("br-host"));
    }
    daemon.ok(&["net-destroy", "one"]);
    assert!(is_parked(&daemon, &taps[0]));
    assert_eq!(master(&daemon, &taps[1]).as_deref(), Some("br-host"));
    assert_eq!(daemon.bridges(), ["br-host"]);
}

#[test]
fn a_port_of_a_host_bridge_network_joins_that_bridge_which_outlives_it() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    daemon
        .ns
        .sh("ip link add br-host type bridge && ip link set br-host mtu 9000 up")
        .expect("host bridge");
    run_network(
        &daemon,
        "host",
        "<network><name>host</name><forward mode='bridge'/><bridge name='br-host'/></network>",
        true,
    );
    let client = Client::new(daemon.socket());
    let port = client
        .create_port("host", &port_xml("guest7", "52:54:00:aa:bb:07"))
        .expect("create port");
    let kernel = link(&daemon, &port.tap);
    assert_eq!(kernel["master"], "br-host", "{kernel}");
    // The tap takes the bridge's MTU, so joining does not lower it.
    assert_eq!(kernel["mtu"], 9000, "{kernel}");
    assert_eq!(link(&daemon, "br-host")["mtu"], 9000);
    let xml = client
        .port_xml("host", &port.uuid.to_string())
        .expect("port xml");
    assert!(
        xml.contains("  <plug type='bridge' bridge='br-host'/>\n"),
        "{xml}"
    );

    // The host bridge outlives the network; the port is taken off it, and put back.
    daemon.ok(&["net-destroy", "host"]);
    assert_eq!(daemon.bridges(), ["br-host"]);
    assert!(is_parked(&daemon, &port.tap));
    daemon.ok(&["net-start", "host"]);
    assert_eq!(master(&daemon, &port.tap).as_deref(), Some("br-host"));

    // A network the daemon cannot adopt (its status is unreadable) is stopped; its port
    // is taken off the host bridge it still sits on.
    daemon.kill9();
    std::fs::write(daemon.state_dir().join("networks/host.json"), b"{").expect("corrupt");
    daemon.spawn(&Default::default());
    assert!(daemon.log().contains("discarding a damaged status"));
    assert!(is_parked(&daemon, &port.tap));
    assert_eq!(taps(&daemon), std::slice::from_ref(&port.tap));

    daemon.ok(&["net-undefine", "host"]);
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
    assert_eq!(daemon.bridges(), ["br-host"]);
}

#[test]
fn only_the_creator_of_a_persistent_port_may_attach_to_its_tap() {
    if !require(&port_needs())
        || !require(&[
            common::Need::Program("setpriv"),
            // Debian's own: a python3 on PATH may be a per-user shim nobody else can run.
            common::Need::Program("/usr/bin/python3"),
        ])
    {
        return;
    }
    let daemon = Daemon::start();
    // An unprivileged user allowed in by the socket's group (as a supplementary group,
    // the way `usermod -aG` grants it) creates the port.
    let group =
        std::os::unix::fs::MetadataExt::gid(&std::fs::metadata(daemon.socket()).expect("socket"));
    let xml = common::xml_file(
        daemon.dirs.path(),
        "port8.xml",
        &port_xml("guest8", "52:54:00:aa:bb:08"),
    );
    let as_user = |uid: u32, groups: &str, command: &str| {
        daemon
            .ns
            .sh(&format!(
                "setpriv --reuid={uid} --regid={uid} {groups} --inh-caps=-all {command} 2>&1 \
                 && echo SUCCEEDED || echo FAILED"
            ))
            .expect("run as another user")
    };
    let created = as_user(
        65534,
        &format!("--groups={group}"),
        &format!(
            "{} -c {} net-port-create default {}",
            env!("CARGO_BIN_EXE_kvnet"),
            daemon.socket().display(),
            xml.display()
        ),
    );
    assert!(created.contains("SUCCEEDED"), "{created}\n{}", daemon.log());
    let [tap] = &taps(&daemon)[..] else {
        panic!("one tap expected: {:?}", taps(&daemon));
    };
    // The tap belongs to whoever asked for it, not to the daemon or anyone who opens it.
    let owner = daemon
        .ns
        .sh(&format!("cat /sys/class/net/{tap}/owner"))
        .expect("owner");
    assert_eq!(owner.trim(), "65534");
    // TUNSETIFF by name, as a VMM attaches to a persistent tap. The descriptor of
    // /dev/net/tun is opened before dropping root (here it is root's alone, 0600, where
    // Debian's udev makes it 0666): what is checked is the tap's owner.
    const TUNSETIFF: u32 = 0x4004_54ca;
    const IFF_TAP_NO_PI_VNET_HDR: u16 = 0x5002;
    let attach = format!(
        "/usr/bin/python3 -c 'import fcntl, struct; \
         fcntl.ioctl(3, {TUNSETIFF:#x}, struct.pack(\"16sH\", b\"{tap}\", {IFF_TAP_NO_PI_VNET_HDR:#x}))'"
    );
    let as_user = |uid: u32, command: &str| {
        daemon
            .ns
            .sh(&format!(
                "exec 3<>/dev/net/tun; setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all \
                 {command} 2>&1 && echo SUCCEEDED || echo FAILED"
            ))
            .expect("run as another user")
    };
    let stranger = as_user(65533, &attach);
    assert!(
        stranger.contains("FAILED") && stranger.contains("Operation not permitted"),
        "another user attached to the tap: {stranger}"
    );
    let creator = as_user(65534, &attach);
    assert!(
        creator.contains("SUCCEEDED"),
        "the creator could not attach: {creator}"
    );
}

#[test]
fn a_tap_upgrade_without_connection_upgrade_is_refused_and_creates_nothing() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let body = serde_json::json!({ "xml": port_xml("guest9", "52:54:00:aa:bb:09") }).to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect");
    let request = format!(
        "POST /v1/networks/default/ports HTTP/1.1\r\nhost: kvnetd\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\
         upgrade: kvnet-tap\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("needs 'Connection: upgrade'"), "{answer}");
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
    let client = Client::new(daemon.socket());
    assert_eq!(client.ports("default").expect("ports"), []);
}

#[test]
fn a_port_that_cannot_be_recorded_leaves_no_tap() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    // A directory where the ports file goes: the record cannot be written.
    let record = daemon.state_dir().join("networks/default.ports");
    std::fs::create_dir(&record).expect("mkdir");
    // Limits on what the guest sends give the tap an IFB device, which must go too.
    let xml = port_xml("guest10", "52:54:00:aa:bb:0a").replace(
        "</networkport>",
        "  <bandwidth>\n    <outbound average='100'/>\n  </bandwidth>\n</networkport>",
    );
    for hand_over in [false, true] {
        let result = if hand_over {
            client.plug("default", &xml).map(|(port, _)| port)
        } else {
            client.create_port("default", &xml)
        };
        let (kind, message) = api_error(result);
        assert_eq!(kind, ErrorKind::Internal, "{message}");
        assert!(message.contains("default.ports"), "{message}");
        assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
        let ifbs = daemon.ns.sh("ip -br link show type ifb").expect("ip link");
        assert!(!ifbs.contains("kvifb"), "{ifbs}");
    }
    std::fs::remove_dir(&record).expect("rmdir");
    let port = client.create_port("default", &xml).expect("create port");
    assert_eq!(taps(&daemon), std::slice::from_ref(&port.tap));
}

#[test]
fn a_port_follows_its_tap_when_it_is_renamed_and_still_takes_it_along() {
    if !require(&port_needs()) {
        return;
    }
    let daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    let port = client
        .create_port("default", &port_xml("guest11", "52:54:00:aa:bb:0b"))
        .expect("create port");
    daemon
        .ns
        .sh(&format!(
            "ip link set {0} down && ip link set {0} name renamed0",
            port.tap
        ))
        .expect("rename the tap");
    let ports = client.ports("default").expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].tap, "renamed0");
    daemon.ok(&["net-destroy", "default"]);
    assert_eq!(taps(&daemon), ["renamed0"]);
    daemon.ok(&["net-undefine", "default"]);
    assert!(taps(&daemon).is_empty(), "{:?}", taps(&daemon));
}

/// The kernel's `isolated` flag of a bridge port.
fn port_isolated(daemon: &Daemon, ifname: &str) -> bool {
    let link = daemon.ip_json(&format!("-d link show {ifname}"));
    link[0]["linkinfo"]["info_slave_data"]["isolated"]
        .as_bool()
        .unwrap_or_else(|| panic!("{ifname} is no bridge port: {link}"))
}

#[test]
fn isolated_ports_reach_the_host_but_not_each_other() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    run_network(
        &daemon,
        "tenants",
        "<network><name>tenants</name><bridge name='virbr0' stp='off'/><port isolated='yes'/>\
         <ip address='192.168.122.1' prefix='24'/></network>",
        true,
    );
    let client = Client::new(daemon.socket());
    let mac = |last: u8| [0x52, 0x54, 0x00, 0xaa, 0xbb, last];
    let plug = |last: u8, port: &str| {
        let xml = port_xml(
            &format!("tenant{last}"),
            &format!("52:54:00:aa:bb:{last:02x}"),
        )
        .replace("</networkport>", &format!("{port}</networkport>"));
        client.plug("tenants", &xml).expect("plug")
    };
    let (first, first_tap) = plug(0x21, "");
    let (second, second_tap) = plug(0x22, "");
    // A port may leave the network's isolation, as in libvirt.
    let (open, open_tap) = plug(0x23, "<port isolated='no'/>");
    assert!(port_isolated(&daemon, &first.tap));
    assert!(port_isolated(&daemon, &second.tap));
    assert!(!port_isolated(&daemon, &open.tap));
    let open_xml = client
        .port_xml("tenants", &open.uuid.to_string())
        .expect("port xml");
    assert!(open_xml.contains("<port isolated='no'/>"), "{open_xml}");
    let first_xml = client
        .port_xml("tenants", &first.uuid.to_string())
        .expect("port xml");
    assert!(first_xml.contains("<port isolated='yes'/>"), "{first_xml}");

    let check = |phase: &str| {
        // The first guest's broadcast reaches the host (it answers) and the port that
        // is not isolated, but not the other isolated one.
        nix::unistd::write(
            &first_tap,
            &common::arp_request(mac(0x21), [192, 168, 122, 21], BRIDGE_IP),
        )
        .expect("write tap");
        assert!(
            wait_for_frame(&first_tap, Duration::from_secs(10), |frame| {
                is_arp_reply_to(frame, mac(0x21))
            }),
            "{phase}: the host did not answer"
        );
        let from_first = |frame: &[u8]| frame.len() >= 12 && frame[6..12] == mac(0x21);
        assert!(
            wait_for_frame(&open_tap, Duration::from_secs(10), from_first),
            "{phase}: the open port did not see the broadcast"
        );
        assert!(
            !wait_for_frame(&second_tap, Duration::from_millis(300), from_first),
            "{phase}: an isolated port saw another's broadcast"
        );
    };
    check("first start");

    // The kernel drops the flag with the port; the re-plug after a restart sets it again.
    daemon.ok(&["net-destroy", "tenants"]);
    daemon.ok(&["net-start", "tenants"]);
    assert!(port_isolated(&daemon, &first.tap));
    assert!(port_isolated(&daemon, &second.tap));
    assert!(!port_isolated(&daemon, &open.tap));
    check("after a restart");

    // A daemon killed in the middle of a re-plug leaves a port on the bridge, down and
    // without its flag; the restarted daemon finishes it.
    daemon.kill9();
    daemon
        .ns
        .sh(&format!(
            "bridge link set dev {0} isolated off && ip link set {0} down",
            first.tap
        ))
        .expect("undo the end of the re-plug");
    daemon.spawn(&DaemonOptions::no_default_network());
    assert!(port_isolated(&daemon, &first.tap));
    let flags = link(&daemon, &first.tap)["flags"].to_string();
    assert!(flags.contains("\"UP\""), "{flags}");
    check("after a crash in a re-plug");

    // Ports someone took down, with all their flags or taking none, stay down.
    daemon
        .ns
        .sh(&format!(
            "ip link set {} down && ip link set {} down",
            second.tap, open.tap
        ))
        .expect("take ports down");
    daemon.stop();
    daemon.spawn(&DaemonOptions::no_default_network());
    for tap in [&second.tap, &open.tap] {
        let flags = link(&daemon, tap)["flags"].to_string();
        assert!(!flags.contains("\"UP\""), "{tap}: {flags}");
    }
}

#[test]
fn with_libvirt_managing_the_mac_table_a_port_is_pinned_to_its_guests_mac() {
    if !require(&port_needs()) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let network = xml_file(
        daemon.dirs.path(),
        "pinned.xml",
        "<network>
  <name>pinned</name>
  <bridge name='kvpin0' stp='off' macTableManager='libvirt'/>
  <ip address='192.168.151.1' prefix='24'/>
</network>
",
    );
    daemon.ok(&["net-define", &network.to_string_lossy()]);
    daemon.ok(&["net-start", "pinned"]);
    assert!(
        daemon
            .ok(&["net-dumpxml", "pinned"])
            .contains("<bridge name='kvpin0' stp='off' delay='0' macTableManager='libvirt'/>")
    );
    let port = xml_file(
        daemon.dirs.path(),
        "port.xml",
        &port_xml("vm1", "52:54:00:51:00:01"),
    );
    daemon.ok(&["net-port-create", "pinned", &port.to_string_lossy()]);
    let pinned = |daemon: &Daemon, when: &str| {
        let tap = &daemon.ip_json("-d link show vnet0")[0];
        let port = &tap["linkinfo"]["info_slave_data"];
        assert_eq!(tap["master"], "kvpin0", "{when}: {tap}");
        assert_eq!(port["learning"], false, "{when}: {port}");
        assert_eq!(port["flood"], false, "{when}: {port}");
        let fdb = daemon
            .ns
            .sh("bridge fdb show dev vnet0 master kvpin0")
            .expect("bridge fdb");
        assert!(
            fdb.lines()
                .any(|entry| entry.starts_with("52:54:00:51:00:01 ") && entry.contains(" static")),
            "{when}: the guest's MAC is not pinned:\n{fdb}"
        );
    };
    pinned(&daemon, "created");
    let uuid = daemon.ok(&["net-port-list", "pinned", "--uuid"]);
    assert!(
        daemon
            .ok(&["net-port-dumpxml", "pinned", uuid.trim()])
            .contains("<plug type='network' bridge='kvpin0' macTableManager='libvirt'/>"),
        "the port's plug names its manager, as libvirt's does"
    );
    // A restart of the network plugs the port into a new bridge, which knows nothing of it.
    daemon.ok(&["net-destroy", "pinned"]);
    daemon.ok(&["net-start", "pinned"]);
    pinned(&daemon, "plugged in again");

    // A restart of the daemon changes nothing: not a link message about the port. Marker
    // links before and after show the monitor saw all that came in between.
    daemon.stop();
    let events = daemon.dirs.path().join("link-events");
    let monitor = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            daemon.ns.name(),
            "ip",
            "-o",
            "monitor",
            "link",
        ])
        .stdout(std::fs::File::create(&events).expect("events file"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ip monitor");
    let _monitor = testkit::KillOnDrop::new(monitor);
    let seen = || std::fs::read_to_string(&events).unwrap_or_default();
    // The monitor may not listen yet: a marker it missed is followed by another.
    let mark = |daemon: &Daemon, name: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for attempt in 0.. {
            let link = format!("{name}{attempt}");
            daemon
                .ns
                .sh(&format!("ip link add {link} type bridge"))
                .expect("marker link");
            for _ in 0..10 {
                if seen().contains(&link) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no monitor: {}",
                seen()
            );
        }
    };
    mark(&daemon, "kvmarka");
    daemon.spawn(&DaemonOptions::no_default_network());
    pinned(&daemon, "after a daemon restart");
    mark(&daemon, "kvmarkb");
    let seen = seen();
    assert!(
        !seen.contains("vnet0"),
        "the restart touched the port:\n{seen}"
    );
}
