//! The daemon's DNS server as a guest sees it: a guest namespace gets a lease with
//! `udhcpc` (hostname web1), then asks the bridge with `dig` for its own name, its
//! address's reverse name, a `<dns><host>` name, and a name `localOnly` keeps local.

mod common;

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, require};

const NETWORK_XML: &str = "<network>
  <name>dnsnet</name>
  <bridge name='virbr0' stp='off' delay='0'/>
  <forward/>
  <domain name='example.test' localOnly='yes'/>
  <dns>
    <host ip='192.168.122.50'><hostname>static1</hostname></host>
  </dns>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.100' end='192.168.122.200'/>
    </dhcp>
  </ip>
</network>
";

fn dig(guest: &testkit::Netns, args: &str) -> String {
    guest
        .sh(&format!(
            "timeout 10 dig +time=2 +tries=2 @192.168.122.1 {args}"
        ))
        .unwrap_or_else(|e| panic!("dig {args}: {e}"))
}

fn dig_short(guest: &testkit::Netns, args: &str) -> String {
    dig(guest, &format!("+short {args}")).trim().to_owned()
}

#[test]
fn guests_resolve_leased_and_static_names_through_the_bridge() {
    if !require(DAEMON_NEEDS)
        || !require(&[
            common::Need::Program("busybox"),
            common::Need::Program("dig"),
            common::Need::Program("timeout"),
        ])
    {
        return;
    }
    let options = DaemonOptions::no_default_network();
    let mut daemon = Daemon::start_with(options.clone());
    let xml = daemon.dirs.path().join("dnsnet.xml");
    std::fs::write(&xml, NETWORK_XML).expect("write xml");
    daemon.ok(&["net-create", xml.to_str().expect("utf-8 path")]);

    let guest = testkit::Netns::new("dnsguest").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr0", "", "");
    common::wait_for_forwarding(&daemon, "vg0");
    let bound = common::udhcpc_lease(&daemon, &guest, "web1");
    let ip = bound.ip.as_str();
    // DHCP announces the bridge as the guest's resolver now that it answers.
    assert_eq!(
        [bound.dns.as_str(), bound.domain.as_str()],
        ["192.168.122.1", "example.test"],
        "{bound:?}"
    );

    assert_eq!(dig_short(&guest, "web1.example.test"), ip);
    assert_eq!(dig_short(&guest, &format!("-x {ip}")), "web1.example.test.");
    assert_eq!(dig_short(&guest, "static1.example.test"), "192.168.122.50");
    assert_eq!(dig_short(&guest, "+tcp static1"), "192.168.122.50");
    let missing = dig(&guest, "nobody.example.test");
    assert!(missing.contains("status: NXDOMAIN"), "{missing}");

    // A restarted daemon serves the adopted network's names again, leases included.
    daemon.stop();
    daemon.spawn(&options);
    assert_eq!(
        dig_short(&guest, "web1.example.test"),
        ip,
        "{}",
        daemon.log()
    );

    // Stopping the network releases port 53; starting it again binds it again.
    daemon.ok(&["net-destroy", "dnsnet"]);
    daemon.ok(&["net-create", xml.to_str().expect("utf-8 path")]);
    daemon
        .ns
        .sh("ip link set vg0 master virbr0")
        .expect("guest port back on the new bridge");
    common::wait_for_forwarding(&daemon, "vg0");
    // The new bridge has a new MAC: forget the old one.
    guest
        .sh("ip neigh flush dev eth0")
        .expect("flush neighbours");
    let sockets = daemon.ns.sh("ss -lnup; ss -lntp").unwrap_or_default();
    assert_eq!(
        dig_short(&guest, "static1.example.test"),
        "192.168.122.50",
        "{sockets}"
    );
}

#[test]
fn a_taken_dns_port_rolls_the_start_back() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    let daemon = Daemon::without_default_network();
    // Someone else holds 192.168.122.1:53/udp (IP_FREEBIND: the address does not exist
    // yet; no SO_REUSEADDR, so our bind must fail).
    let _blocker = daemon
        .ns
        .run(|| {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            setsockopt(&fd, sockopt::IpFreebind, &true).expect("IP_FREEBIND");
            bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &SockaddrIn::new(192, 168, 122, 1, 53),
            )
            .expect("bind 192.168.122.1:53");
            fd
        })
        .expect("blocker in the daemon namespace");
    let xml = daemon.dirs.path().join("dnsnet.xml");
    std::fs::write(&xml, NETWORK_XML).expect("write xml");
    let error = daemon.fails(&["net-create", xml.to_str().expect("utf-8 path")]);
    assert!(error.contains("starting the DNS server"), "{error}");
    assert!(error.contains("192.168.122.1"), "{error}");
    // All or nothing: no bridge, no rules, no network left behind.
    assert!(!daemon.bridges().contains(&"virbr0".to_owned()));
    assert!(!daemon.ruleset().contains("virbr0"), "{}", daemon.ruleset());
    assert_eq!(daemon.ok(&["-q", "net-list", "--all"]).trim(), "");
}

/// The daemon, `dig`, and dnsmasq as the host's resolver.
fn resolver_tests_can_run() -> bool {
    require(DAEMON_NEEDS)
        && require(&[
            common::Need::Program("dig"),
            common::Need::Program("dnsmasq"),
            common::Need::Program("timeout"),
        ])
}

/// A guest namespace `name` with `address`/24 on a veth whose peer `veth` is a port of
/// `bridge`.
fn guest_on(
    daemon: &Daemon,
    bridge: &str,
    veth: &str,
    name: &str,
    address: &str,
) -> testkit::Netns {
    let guest = testkit::Netns::new(name).expect("guest ns");
    daemon
        .ns
        .sh(&format!(
            "ip link add {veth} type veth peer name eth0 netns {} && ip link set {veth} master {bridge} && ip link set {veth} up",
            guest.name()
        ))
        .expect("veth to guest");
    guest
        .sh(&format!(
            "ip addr add {address}/24 dev eth0 && ip link set eth0 up"
        ))
        .expect("guest addressing");
    guest
}

/// The host's resolver, 10.98.0.2: dnsmasq answering `up.test` names with 10.77.7.7 (and
/// `extra` options), in an "upstream" namespace behind a veth of the daemon's.
fn host_resolver(daemon: &Daemon, extra: &[&str]) -> (testkit::Netns, testkit::Dnsmasq) {
    let upstream = testkit::Netns::new("dnsup").expect("upstream ns");
    daemon
        .ns
        .sh(&format!(
            "ip link add up0 type veth peer name eth0 netns {} && ip addr add 10.98.0.1/24 dev up0 && ip link set up0 up",
            upstream.name()
        ))
        .expect("veth to upstream");
    upstream
        .sh("ip addr add 10.98.0.2/24 dev eth0 && ip link set eth0 up && ip route add default via 10.98.0.1")
        .expect("upstream addressing");
    let mut options = vec!["--address=/up.test/10.77.7.7"];
    options.extend_from_slice(extra);
    let dnsmasq = testkit::Dnsmasq::start(&upstream, "10.98.0.2", &options).expect("dnsmasq");
    (upstream, dnsmasq)
}

/// Asks `server` from `guest` until the answer has `expected` (10 s at most).
fn answer_with(guest: &testkit::Netns, server: &str, question: &str, expected: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let answer = guest
            .sh(&format!(
                "timeout 10 dig +time=2 +tries=2 @{server} {question} || true"
            ))
            .unwrap_or_default();
        if answer.contains(expected) || std::time::Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The host's resolvers answer for guests of forwarding networks only: libvirt's
/// dnsmasq of an isolated network has `no-resolv`. And the bridge's DNS answers only
/// what arrives on the bridge: the upstream side, routed to the bridge's address,
/// gets nothing.
#[test]
fn host_resolvers_and_hosts_file_serve_guests_only_on_the_bridge() {
    if !resolver_tests_can_run() {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let (upstream, _dnsmasq) = host_resolver(
        &daemon,
        &[
            "--ptr-record=99.131.168.192.in-addr.arpa,leaked131.up.test",
            "--ptr-record=99.133.168.192.in-addr.arpa,leaked133.up.test",
        ],
    );
    // No resolver yet, as at boot before the host's network manager wrote one.
    let resolv_conf = daemon.dirs.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "# not yet\n").expect("resolv.conf");
    let hosts_file = daemon.dirs.path().join("hosts");
    std::fs::write(&hosts_file, "10.5.5.5 hostbox # the host's own name\n").expect("hosts");
    let options = DaemonOptions {
        no_default_network: true,
        resolv_conf: Some(resolv_conf.clone()),
        hosts_file: Some(hosts_file.clone()),
        ..DaemonOptions::default()
    };
    daemon.stop();
    daemon.spawn(&options);

    let mut guests = Vec::new();
    for (name, forward, octet, local_ptr) in [
        ("fwd", "<forward/>", 131, ""),
        ("iso", "", 132, ""),
        ("ptr", "<forward/>", 133, " localPtr='yes'"),
    ] {
        let xml = daemon.dirs.path().join(format!("{name}.xml"));
        std::fs::write(
            &xml,
            format!(
                "<network><name>{name}</name><bridge name='kv{name}' stp='off'/>{forward}\
                 <ip address='192.168.{octet}.1' prefix='24'{local_ptr}/></network>"
            ),
        )
        .expect("xml");
        daemon.ok(&["net-create", xml.to_str().expect("path")]);
        let guest = guest_on(
            &daemon,
            &format!("kv{name}"),
            &format!("vg{name}"),
            &format!("dns{name}"),
            &format!("192.168.{octet}.10"),
        );
        guests.push((guest, octet));
    }
    let ask_about = |ns: &testkit::Netns, server: &str, question: &str| {
        ns.sh(&format!(
            "timeout 10 dig +time=2 +tries=2 @{server} {question} || true"
        ))
        .unwrap_or_default()
    };
    let ask = |ns: &testkit::Netns, server: &str| ask_about(ns, server, "www.up.test");
    let (fwd_guest, _) = &guests[0];
    let (iso_guest, _) = &guests[1];
    // The hosts file is served on every network, isolated ones too, as libvirt's
    // dnsmasq serves /etc/hosts; and followed when it changes.
    for (guest, server) in [(fwd_guest, "192.168.131.1"), (iso_guest, "192.168.132.1")] {
        let answer = ask_about(guest, server, "hostbox");
        assert!(
            answer.contains("status: NOERROR") && answer.contains("10.5.5.5"),
            "{answer}"
        );
    }
    std::fs::write(&hosts_file, "10.5.5.6 hostbox newbox\n").expect("hosts");
    let answer = answer_with(iso_guest, "192.168.132.1", "hostbox", "10.5.5.6");
    assert!(answer.contains("10.5.5.6"), "{answer}\n{}", daemon.log());
    let answer = ask_about(iso_guest, "192.168.132.1", "-x 10.5.5.6");
    assert!(answer.contains("hostbox."), "{answer}");
    let answer = ask_about(fwd_guest, "192.168.131.1", "newbox");
    assert!(answer.contains("10.5.5.6"), "{answer}");

    let answer = ask(fwd_guest, "192.168.131.1");
    assert!(answer.contains("status: REFUSED"), "{answer}");
    // The resolver arrives: the running networks follow the file, as dnsmasq does.
    std::fs::write(&resolv_conf, "nameserver 10.98.0.2\n").expect("resolv.conf");
    let answer = answer_with(fwd_guest, "192.168.131.1", "www.up.test", "status: NOERROR");
    assert!(
        answer.contains("status: NOERROR") && answer.contains("10.77.7.7"),
        "the NAT network's guest did not reach the host's resolver:\n{answer}\n{}",
        daemon.log()
    );
    // Reverse lookups of the subnet go upstream too, unless localPtr keeps them home.
    let answer = ask_about(fwd_guest, "192.168.131.1", "-x 192.168.131.99");
    assert!(answer.contains("leaked131.up.test."), "{answer}");
    let (ptr_guest, _) = &guests[2];
    let answer = ask_about(ptr_guest, "192.168.133.1", "-x 192.168.133.99");
    assert!(
        answer.contains("status: NXDOMAIN") && !answer.contains("leaked133"),
        "localPtr='yes' forwarded a reverse lookup of its subnet:\n{answer}"
    );
    // Its server answers, but has nowhere to send the question.
    let answer = ask(iso_guest, "192.168.132.1");
    assert!(
        answer.contains("status: REFUSED") && !answer.contains("10.77.7.7"),
        "the isolated network forwarded to the host's resolver:\n{answer}"
    );
    // A resolv.conf that cannot be read for a while (a directory in its place here; out
    // of descriptors in life) leaves the resolvers read before, not none.
    let aside = daemon.dirs.path().join("resolv.conf.aside");
    std::fs::rename(&resolv_conf, &aside).expect("set the file aside");
    std::fs::create_dir(&resolv_conf).expect("a directory in its place");
    let unreadable = "cannot read it; guests' DNS keeps what was read before";
    let started = std::time::Instant::now();
    while !daemon.log().contains(unreadable) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answer = answer_with(
        fwd_guest,
        "192.168.131.1",
        "later.up.test",
        "status: NOERROR",
    );
    assert!(answer.contains("10.77.7.7"), "{answer}\n{}", daemon.log());
    std::fs::remove_dir(&resolv_conf).expect("the directory");
    std::fs::rename(&aside, &resolv_conf).expect("the file back");

    upstream
        .sh("ip route add 192.168.131.0/24 via 10.98.0.1")
        .expect("route to the bridge's subnet");
    // Not even a refusal: the query never reaches the server.
    let answer = ask(&upstream, "192.168.131.1");
    assert!(
        !answer.contains("status:") && answer.contains("no servers could be reached"),
        "the bridge's DNS answered a query from outside the bridge:\n{answer}"
    );
}

/// At boot, the host's network manager may write resolv.conf while autostart runs: after
/// a network's DNS server read it, before the daemon follows the file. The network must
/// still take the new resolvers.
#[test]
fn a_resolver_written_during_boot_autostart_is_followed() {
    if !resolver_tests_can_run() {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let (_upstream, _dnsmasq) = host_resolver(&daemon, &[]);
    let resolv_conf = daemon.dirs.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "# not yet\n").expect("resolv.conf");
    let xml = daemon.dirs.path().join("boot.xml");
    std::fs::write(
        &xml,
        "<network><name>boot</name><bridge name='kvboot' stp='off'/><forward/>\
         <ip address='192.168.134.1' prefix='24'/></network>",
    )
    .expect("xml");
    daemon.ok(&["net-define", xml.to_str().expect("path")]);
    daemon.ok(&["net-autostart", "boot"]);
    // Once the network runs (its DNS server has read the file), the "network manager"
    // writes the resolver.
    let hooks = daemon.config_dir().join("hooks");
    std::fs::create_dir_all(&hooks).expect("hooks dir");
    let script = hooks.join("network");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$2\" = started ] && echo 'nameserver 10.98.0.2' > {}\nexit 0\n",
            resolv_conf.display()
        ),
    )
    .expect("hook");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // A reboot: a new state dir, so the network autostarts.
    daemon.stop();
    daemon.spawn(&DaemonOptions {
        no_default_network: true,
        state_dir: Some(daemon.dirs.path().join("run-after-boot")),
        resolv_conf: Some(resolv_conf.clone()),
        ..DaemonOptions::default()
    });
    assert_eq!(
        std::fs::read_to_string(&resolv_conf).expect("resolv.conf"),
        "nameserver 10.98.0.2\n",
        "the hook did not run:\n{}",
        daemon.log()
    );
    let guest = guest_on(&daemon, "kvboot", "vgboot", "dnsboot", "192.168.134.10");
    let answer = answer_with(&guest, "192.168.134.1", "www.up.test", "10.77.7.7");
    assert!(
        answer.contains("status: NOERROR") && answer.contains("10.77.7.7"),
        "the network kept the resolvers it read before the hook:\n{answer}\n{}",
        daemon.log()
    );
}

/// OpenShift's libvirt IPI network, trimmed: its ingress's wildcard name is a dnsmasq
/// `address=` line, and `cache-size=0` is Red Hat's CVE advice.
const OPENSHIFT_XML: &str =
    "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>ocp</name>
  <forward mode='nat'/>
  <bridge name='tt0' stp='off' delay='0'/>
  <domain name='ocp.example.test' localOnly='yes'/>
  <dns>
    <host ip='192.168.126.11'><hostname>api.ocp.example.test</hostname></host>
  </dns>
  <ip address='192.168.126.1' prefix='24'/>
  <dnsmasq:options>
    <dnsmasq:option value='address=/.apps.example.test/192.168.126.51'/>
    <dnsmasq:option value='address=/blocked.example.test/'/>
    <dnsmasq:option value='cache-size=0'/>
  </dnsmasq:options>
</network>
";

#[test]
fn dnsmasq_address_options_answer_a_wildcard_domain() {
    if !resolver_tests_can_run() {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let xml = daemon.dirs.path().join("ocp.xml");
    std::fs::write(&xml, OPENSHIFT_XML).expect("write xml");
    daemon.ok(&["net-define", xml.to_str().expect("utf-8 path")]);
    daemon.ok(&["net-start", "ocp"]);
    let dumped = daemon.ok(&["net-dumpxml", "ocp"]);
    assert!(
        dumped.starts_with(
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\n"
        ) && dumped.trim_end().ends_with(
            "  <dnsmasq:options>
    <dnsmasq:option value='address=/.apps.example.test/192.168.126.51'/>
    <dnsmasq:option value='address=/blocked.example.test/'/>
    <dnsmasq:option value='cache-size=0'/>
  </dnsmasq:options>
</network>"
        ),
        "{dumped}"
    );

    let guest = guest_on(&daemon, "tt0", "vg0", "ocpguest", "192.168.126.20");
    common::wait_for_forwarding(&daemon, "vg0");
    let ask = |args: &str| {
        guest
            .sh(&format!(
                "timeout 10 dig +time=2 +tries=2 @192.168.126.1 {args}"
            ))
            .unwrap_or_else(|e| panic!("dig {args}: {e}"))
    };
    for name in [
        "apps.example.test",
        "foo.apps.example.test",
        "a.b.APPS.example.test",
    ] {
        assert_eq!(
            ask(&format!("+short {name}")).trim(),
            "192.168.126.51",
            "{name}"
        );
    }
    assert_eq!(ask("+short api.ocp.example.test").trim(), "192.168.126.11");
    let blocked = ask("www.blocked.example.test");
    assert!(blocked.contains("status: NXDOMAIN"), "{blocked}");
}

#[test]
fn dnsmasq_options_kvnet_does_not_implement_are_refused_by_name() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let xml = daemon.dirs.path().join("ocp.xml");
    std::fs::write(
        &xml,
        OPENSHIFT_XML.replace("cache-size=0", "dhcp-script=/bin/true"),
    )
    .expect("write xml");
    let err = daemon.fails(&["net-define", xml.to_str().expect("utf-8 path")]);
    assert!(
        err.contains("unsupported configuration: dnsmasq option 'dhcp-script=/bin/true' is not supported by kvnet (network 'ocp')"),
        "{err}"
    );
}

/// A daemon running `dnsnet` (NETWORK_XML, on virbr0) with guest `name` at `address`/24
/// on it, its bridge port forwarding.
fn dnsnet_with_guest(name: &str, address: &str) -> (Daemon, testkit::Netns) {
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let xml = common::xml_file(daemon.dirs.path(), "dnsnet.xml", NETWORK_XML);
    daemon.ok(&["net-create", xml.to_str().expect("path")]);
    let guest = guest_on(&daemon, "virbr0", "vg0", name, address);
    common::wait_for_forwarding(&daemon, "vg0");
    (daemon, guest)
}

/// A guest spoofing an outside source gets no answer from the host, over TCP either:
/// kvnet's input rule drops what the bridge's routes do not cover, so the host neither
/// ARPs for the address (a slot of its neighbour table each) nor answers out upstream.
#[test]
fn the_host_answers_no_spoofed_source_on_a_bridge() {
    if !resolver_tests_can_run() {
        return;
    }
    let (daemon, guest) = dnsnet_with_guest("spoofer", "192.168.122.60");
    guest
        .sh("ip addr add 203.0.113.9/32 dev eth0")
        .expect("an outside address");
    assert_eq!(dig_short(&guest, "static1.example.test"), "192.168.122.50");
    for transport in ["+tcp", "+notcp"] {
        let out = guest
            .sh(&format!(
                "timeout 10 dig {transport} +time=1 +tries=1 -b 203.0.113.9 @192.168.122.1 \
                 static1.example.test || true"
            ))
            .unwrap_or_default();
        assert!(!out.contains("status: NOERROR"), "{transport}: {out}");
    }
    let neighbours = daemon.ns.sh("ip neigh").unwrap_or_default();
    assert!(!neighbours.contains("203.0.113.9"), "{neighbours}");
    let ruleset = daemon.ruleset();
    let dropped = ruleset
        .lines()
        .find(|line| line.contains("ip saddr != 0.0.0.0 fib saddr . iif oif missing"))
        .unwrap_or_else(|| panic!("no anti-spoofing rule:\n{ruleset}"));
    assert!(!dropped.contains("packets 0 "), "{dropped}");
}

/// The input rule that drops spoofed sources lets DHCP through from any address: a guest
/// renumbered or moved from another network asks to keep its old address from it, and
/// must be told no (a NAK), as libvirt's dnsmasq tells it, not left to its lease's end.
#[test]
fn a_guest_asking_from_an_address_of_another_network_gets_a_dhcp_nak() {
    if !resolver_tests_can_run() {
        return;
    }
    let (daemon, guest) = dnsnet_with_guest("renumbered", "203.0.113.77");
    guest
        .sh("ip link set eth0 address 52:54:00:77:00:01 && ip route add default dev eth0")
        .expect("the old network's route");
    // A REBINDING client's DHCPREQUEST: ciaddr its old address, broadcast, from it.
    let mut request = vec![0u8; 240];
    request[..4].copy_from_slice(&[1, 1, 6, 0]);
    request[4..8].copy_from_slice(&0x7700_0001u32.to_be_bytes());
    request[10] = 0x80;
    request[12..16].copy_from_slice(&[203, 0, 113, 77]);
    request[28..34].copy_from_slice(&[0x52, 0x54, 0, 0x77, 0, 1]);
    request[236..240].copy_from_slice(&[99, 130, 83, 99]);
    request.extend_from_slice(&[53, 1, 3, 255]);
    let reply = guest
        .run(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:68").expect("bind");
            socket.set_broadcast(true).expect("broadcast");
            socket
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            socket
                .send_to(&request, "255.255.255.255:67")
                .expect("request");
            let mut reply = [0u8; 1500];
            socket.recv(&mut reply).map(|len| reply[..len].to_vec())
        })
        .expect("enter the guest")
        .unwrap_or_else(|e| panic!("no answer ({e}):\n{}", daemon.ruleset()));
    assert_eq!(reply[0], 2, "a reply");
    assert_eq!(reply[4..8], 0x7700_0001u32.to_be_bytes(), "to this request");
    let options = &reply[240..];
    assert!(
        options.windows(3).any(|o| o == [53, 1, 6]),
        "not a NAK: {options:?}"
    );
}

/// Like libvirt's dnsmasq, the server answers on the bridge's IPv6 link-local address,
/// which dnsmasq's router advertisements announced: a guest moved from libvirt that
/// still asks there gets its answers.
#[test]
fn an_ipv6_network_answers_on_the_bridges_link_local_address() {
    if !resolver_tests_can_run() {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let xml = NETWORK_XML.replace(
        "  <ip address='192.168.122.1'",
        "  <ip family='ipv6' address='fd42::1' prefix='64'/>\n  <ip address='192.168.122.1'",
    );
    let path = common::xml_file(daemon.dirs.path(), "dnsnet.xml", &xml);
    daemon.ok(&["net-create", path.to_str().expect("path")]);
    let guest = guest_on(&daemon, "virbr0", "vg0", "ll-guest", "192.168.122.61");
    common::wait_for_forwarding(&daemon, "vg0");
    let link = daemon.ip_json("link show virbr0");
    let mac = link[0]["address"].as_str().expect("bridge MAC").to_owned();
    let link_local = common::eui64_link_local(&mac).expect("a MAC");
    // The bridge's and the guest's link-local addresses leave duplicate address detection
    // within a few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let answer = loop {
        let answer = guest
            .sh(&format!(
                "timeout 10 dig +short +time=1 +tries=1 @{link_local}%eth0 static1.example.test || true"
            ))
            .unwrap_or_default();
        if answer.trim() == "192.168.122.50" || std::time::Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let addresses = daemon
        .ns
        .sh("ip -6 addr show dev virbr0")
        .unwrap_or_default();
    assert_eq!(answer.trim(), "192.168.122.50", "{link_local}\n{addresses}");
}

/// A network with dnsmasq's debugging lines, as libvirt users write them, and one
/// without: `net`, on bridge `kv{net}` at 192.168.`octet`.1/24.
fn logging_network(net: &str, octet: u8, options: &str) -> String {
    format!(
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>{net}</name>
  <forward mode='nat'/>
  <bridge name='kv{net}' stp='off' delay='0'/>
  <domain name='example.test' localOnly='yes'/>
  <ip address='192.168.{octet}.1' prefix='24'>
    <dhcp><range start='192.168.{octet}.100' end='192.168.{octet}.200'/></dhcp>
  </ip>{options}
</network>
"
    )
}

/// `log-queries` and `log-dhcp` log what dnsmasq's would: each DHCP message and reply
/// of a real client, each DNS query over UDP and TCP and what answered it (the
/// network's leases, an upstream server, the cache, NXDOMAIN). A network without them
/// logs none of it.
#[test]
fn log_queries_and_log_dhcp_log_each_query_and_dhcp_message() {
    if !resolver_tests_can_run() || !require(&[common::Need::Program("busybox")]) {
        return;
    }
    let resolv_conf = tempfile::NamedTempFile::new().expect("resolv.conf");
    std::fs::write(resolv_conf.path(), "nameserver 10.98.0.2\n").expect("resolv.conf");
    let daemon = Daemon::start_with(DaemonOptions {
        resolv_conf: Some(resolv_conf.path().to_owned()),
        ..DaemonOptions::no_default_network()
    });
    // A TTL, so the answer is kept (dnsmasq's own names have none).
    let (_upstream, _dnsmasq) = host_resolver(&daemon, &["--local-ttl=60"]);
    let options = "
  <dnsmasq:options>
    <dnsmasq:option value='log-queries'/>
    <dnsmasq:option value='log-dhcp'/>
  </dnsmasq:options>";
    let mut guests = Vec::new();
    for (net, octet, options, hostname) in
        [("logged", 140, options, "web1"), ("quiet", 141, "", "web2")]
    {
        let xml = common::xml_file(
            daemon.dirs.path(),
            &format!("{net}.xml"),
            &logging_network(net, octet, options),
        );
        daemon.ok(&["net-create", xml.to_str().expect("path")]);
        let guest = testkit::Netns::new(&format!("{net}guest")).expect("guest ns");
        daemon
            .ns
            .sh(&format!(
                "ip link add vg{net} type veth peer name eth0 netns {} && \
                 ip link set vg{net} master kv{net} && ip link set vg{net} up",
                guest.name()
            ))
            .expect("veth to guest");
        guest.sh("ip link set eth0 up").expect("guest link up");
        common::wait_for_forwarding(&daemon, &format!("vg{net}"));
        let bound = common::udhcpc_lease(&daemon, &guest, hostname);
        let mac = guest
            .sh("cat /sys/class/net/eth0/address")
            .expect("guest MAC")
            .trim()
            .to_owned();
        let server = format!("192.168.{octet}.1");
        let dig = |args: &str| {
            guest
                .sh(&format!("timeout 10 dig +time=2 +tries=2 @{server} {args}"))
                .unwrap_or_else(|e| panic!("dig {args}: {e}"))
        };
        assert_eq!(
            dig(&format!("+short {hostname}.example.test")).trim(),
            bound.ip
        );
        // Asked twice: the second answer is the cached one.
        for _ in 0..2 {
            assert_eq!(dig("+short www.up.test").trim(), "10.77.7.7");
        }
        let missing = dig("+tcp nobody.example.test");
        assert!(missing.contains("status: NXDOMAIN"), "{missing}");
        guests.push((guest, bound.ip, mac));
    }

    let log = daemon.log();
    let (_, ip, mac) = &guests[0];
    for line in [
        format!("DHCPDISCOVER(kvlogged) {mac}"),
        format!("DHCPOFFER(kvlogged) {ip} {mac}"),
        "client provides name: web1".to_owned(),
        "requested options: 1:netmask, 3:router, 6:dns-server, 12:hostname".to_owned(),
        "sent size:  4 option:  3 router  192.168.140.1".to_owned(),
        "sent size:  4 option: 51 lease-time  1h".to_owned(),
        format!("DHCPREQUEST(kvlogged) {ip} {mac}"),
        format!("DHCPACK(kvlogged) {ip} {mac} web1"),
        format!("query[A] web1.example.test from {ip}"),
        format!("DHCP web1.example.test is {ip}"),
        format!("query[A] www.up.test from {ip}"),
        "forwarded www.up.test to 10.98.0.2".to_owned(),
        "reply www.up.test is 10.77.7.7".to_owned(),
        "cached www.up.test is 10.77.7.7".to_owned(),
        format!("query[A] nobody.example.test from {ip}"),
        "config nobody.example.test is NXDOMAIN".to_owned(),
    ] {
        let logged = log
            .lines()
            .find(|logged| logged.contains(" INFO netd::") && logged.contains(&line));
        assert!(
            logged.is_some_and(|logged| logged.contains(" network=logged")),
            "{line:?} not logged for network 'logged':\n{log}"
        );
    }
    let (_, quiet_ip, _) = &guests[1];
    let said_of_quiet: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains(" network=quiet")
                && [
                    "DHCPDISCOVER",
                    "DHCPACK",
                    "query[",
                    "forwarded ",
                    "reply ",
                    "cached ",
                ]
                .iter()
                .any(|word| line.contains(word))
        })
        .collect();
    assert!(said_of_quiet.is_empty(), "{said_of_quiet:#?}");
    assert!(
        !log.contains("(kvquiet)") && !log.contains(&format!("from {quiet_ip}")),
        "the network without log options logged its queries or DHCP:\n{log}"
    );
}
