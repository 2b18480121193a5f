//! netns tier: `net-update` against a running daemon. A reservation added live reaches
//! the running DHCP server (a guest with that MAC gets the address and name while an
//! existing lease keeps its address), DNS records added or deleted live are answered
//! at once, neither server is restarted, `--config` only changes the persisted
//! definition, and rejected updates change nothing.

mod common;

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, Need, require, xml_file};
use testkit::Netns;

const NETWORK_XML: &str = "<network>
  <name>upd</name>
  <bridge name='virbr0' stp='off' delay='0'/>
  <forward/>
  <domain name='example.test' localOnly='yes'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.100' end='192.168.122.200'/>
    </dhcp>
  </ip>
</network>
";

const GUEST_MAC: &str = "52:54:00:aa:00:01";
const RESERVED_MAC: &str = "52:54:00:aa:00:02";
const RESERVATION: &str = "<host mac='52:54:00:aa:00:02' name='reserved1' ip='192.168.122.50'/>";

fn dig(guest: &Netns, args: &str) -> String {
    guest
        .sh(&format!(
            "timeout 10 dig +time=2 +tries=2 @192.168.122.1 {args}"
        ))
        .unwrap_or_else(|e| panic!("dig {args}: {e}"))
}

fn dig_short(guest: &Netns, args: &str) -> String {
    dig(guest, &format!("+short {args}")).trim().to_owned()
}

fn assert_nxdomain(guest: &Netns, name: &str) {
    let answer = dig(guest, name);
    assert!(answer.contains("status: NXDOMAIN"), "{name}: {answer}");
}

/// Gives the guest's eth0 `mac` and no address, so udhcpc starts afresh as that client.
fn become_client(guest: &Netns, mac: &str) {
    guest
        .sh(&format!(
            "ip addr flush dev eth0 && ip link set eth0 address {mac}"
        ))
        .expect("set guest MAC");
}

/// How often the daemon log says `what` (e.g. "DHCP server started").
fn log_count(daemon: &Daemon, what: &str) -> usize {
    daemon.log().matches(what).count()
}

fn start_network(daemon: &Daemon) {
    let path = xml_file(daemon.dirs.path(), "upd.xml", NETWORK_XML);
    daemon.ok(&["net-define", path.to_str().expect("utf-8 path")]);
    daemon.ok(&["net-start", "upd"]);
}

#[test]
fn live_updates_reach_the_running_dhcp_and_dns_servers_without_a_restart() {
    if !require(DAEMON_NEEDS)
        || !require(&[
            Need::Program("busybox"),
            Need::Program("dig"),
            Need::Program("timeout"),
        ])
    {
        return;
    }
    let options = DaemonOptions::no_default_network();
    let mut daemon = Daemon::start_with(options.clone());
    start_network(&daemon);
    let guest = Netns::new("updguest").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr0", "", "");
    common::wait_for_forwarding(&daemon, "vg0");

    // A dynamic lease before the update.
    become_client(&guest, GUEST_MAC);
    let dynamic = common::udhcpc_lease(&daemon, &guest, "alpha");
    assert!(dynamic.ip.starts_with("192.168.122."), "{dynamic:?}");
    assert_eq!(log_count(&daemon, "DHCP server started"), 1);

    // The reservation, live and persistent, in virsh's words.
    assert_eq!(
        daemon.ok(&[
            "net-update",
            "upd",
            "add",
            "ip-dhcp-host",
            RESERVATION,
            "--live",
            "--config"
        ]),
        "Updated network upd persistent config and live state\n"
    );
    let host_line = format!("      {RESERVATION}\n");
    assert!(daemon.ok(&["net-dumpxml", "upd"]).contains(&host_line));
    assert!(
        daemon
            .ok(&["net-dumpxml", "--inactive", "upd"])
            .contains(&host_line)
    );
    let file = std::fs::read_to_string(daemon.config_dir().join("networks/upd.xml"))
        .expect("persisted definition");
    assert!(file.contains(&host_line), "{file}");

    // The reserved MAC gets its address and name from the running server.
    become_client(&guest, RESERVED_MAC);
    let reserved = common::udhcpc_lease(&daemon, &guest, "whatever");
    assert_eq!(
        [reserved.ip.as_str(), reserved.hostname.as_str()],
        ["192.168.122.50", "reserved1"],
        "{reserved:?}"
    );
    // The earlier client renews to the same address: its lease was kept.
    become_client(&guest, GUEST_MAC);
    let renewed = common::udhcpc_lease(&daemon, &guest, "alpha");
    assert_eq!(renewed.ip, dynamic.ip);
    let leases = daemon.ok(&["net-dhcp-leases", "upd"]);
    for (mac, ip) in [
        (GUEST_MAC, dynamic.ip.as_str()),
        (RESERVED_MAC, "192.168.122.50"),
    ] {
        let cidr = format!("{ip}/24");
        assert!(
            leases
                .lines()
                .any(|line| line.contains(mac) && line.contains(&cidr)),
            "{mac} {cidr} in\n{leases}"
        );
    }

    // DNS records come and go live; the reserved name resolves once leased.
    assert_eq!(
        dig_short(&guest, "reserved1.example.test"),
        "192.168.122.50"
    );
    let extra = "<host ip='192.168.122.60'><hostname>extra</hostname></host>";
    assert_nxdomain(&guest, "extra.example.test");
    assert_eq!(
        daemon.ok(&["net-update", "upd", "add-last", "dns-host", extra, "--live"]),
        "Updated network upd live state\n"
    );
    assert_eq!(dig_short(&guest, "extra.example.test"), "192.168.122.60");
    assert_eq!(
        dig_short(&guest, "-x 192.168.122.60"),
        "extra.example.test."
    );
    assert_eq!(
        // Each argument by name, as virsh also takes them.
        daemon.ok(&[
            "net-update",
            "--network",
            "upd",
            "--command",
            "delete",
            "--section",
            "dns-host",
            "--xml",
            "<host><hostname>extra</hostname></host>"
        ]),
        "Updated network upd live state\n",
        "--current on an active network is --live"
    );
    assert_nxdomain(&guest, "extra.example.test");
    // One by name, the words fill the others in order.
    daemon.ok(&[
        "net-update",
        "--xml=<txt name='info' value='hello world'/>",
        "upd",
        "add",
        "dns-txt",
    ]);
    assert_eq!(dig_short(&guest, "TXT info"), "\"hello world\"");
    daemon.ok(&[
        "net-update",
        "upd",
        "add",
        "dns-srv",
        "<srv service='http' protocol='tcp' domain='example.test' target='web.example.test' port='80' priority='1' weight='5'/>",
    ]);
    assert_eq!(
        dig_short(&guest, "SRV _http._tcp.example.test"),
        "1 5 80 web.example.test."
    );

    // --config alone changes the persisted definition, not what is served.
    let later = "<host ip='192.168.122.61'><hostname>later</hostname></host>";
    assert_eq!(
        daemon.ok(&["net-update", "upd", "add", "dns-host", later, "--config"]),
        "Updated network upd persistent config\n"
    );
    assert_nxdomain(&guest, "later.example.test");
    assert!(
        daemon
            .ok(&["net-dumpxml", "--inactive", "upd"])
            .contains("later")
    );
    let live_xml = daemon.ok(&["net-dumpxml", "upd"]);
    assert!(!live_xml.contains("later"), "{live_xml}");
    assert!(
        live_xml.contains("<txt name='info' value='hello world'/>"),
        "{live_xml}"
    );

    // Neither server was restarted by any of this.
    assert_eq!(
        log_count(&daemon, "DHCP server started"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(
        log_count(&daemon, "DNS server started"),
        1,
        "{}",
        daemon.log()
    );

    // The live state survives a daemon restart (it is in the status file)...
    daemon.stop();
    daemon.spawn(&options);
    assert_eq!(daemon.ok(&["net-dumpxml", "upd"]), live_xml);
    assert_eq!(dig_short(&guest, "TXT info"), "\"hello world\"");
    assert_nxdomain(&guest, "later.example.test");

    // ...but not a network restart, which runs the persistent definition.
    daemon.ok(&["net-destroy", "upd"]);
    daemon.ok(&["net-start", "upd"]);
    daemon
        .ns
        .sh("ip link set vg0 master virbr0")
        .expect("guest port back on the new bridge");
    common::wait_for_forwarding(&daemon, "vg0");
    guest
        .sh("ip neigh flush dev eth0")
        .expect("flush neighbours");
    assert_eq!(dig_short(&guest, "later.example.test"), "192.168.122.61");
    let restarted = daemon.ok(&["net-dumpxml", "upd"]);
    assert!(!restarted.contains("<txt"), "{restarted}");
    assert!(restarted.contains(&host_line), "{restarted}");
}

#[test]
fn rejected_updates_change_nothing_and_report_like_virsh() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    // The XML argument may name a file.
    let host = xml_file(
        daemon.dirs.path(),
        "host.xml",
        "<host mac='52:54:00:00:00:01' name='vm1' ip='192.168.122.20'/>\n",
    );
    assert_eq!(
        daemon.ok(&[
            "net-update",
            "default",
            "add-first",
            "ip-dhcp-host",
            host.to_str().expect("utf-8 path"),
            "--live",
            "--config",
        ]),
        "Updated network default persistent config and live state\n"
    );
    let status_path = daemon.state_dir().join("networks/default.json");
    let before = (
        daemon.ok(&["net-dumpxml", "default"]),
        daemon.ok(&["net-dumpxml", "--inactive", "default"]),
        daemon.config_snapshot(),
        std::fs::read_to_string(&status_path).expect("status file"),
    );
    assert!(before.0.contains("name='vm1'"), "{}", before.0);
    assert!(
        std::fs::read_to_string(&status_path)
            .expect("status file")
            .contains("vm1"),
        "the live change is in the status file"
    );

    let failed = "error: Failed to update network default\n";
    let cases: [(&[&str], String); 8] = [
        (
            &[
                "add",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:01' ip='192.168.122.21'/>",
            ],
            format!(
                "{failed}error: Requested operation is not valid: there is an existing dhcp host entry in network 'default' that matches \"<host mac='52:54:00:00:00:01' name='(null)' ip='192.168.122.21'/>\"\n"
            ),
        ),
        (
            &[
                "add",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:02' ip='10.0.0.5'/>",
            ],
            format!(
                "{failed}error: XML error: static host address 10.0.0.5 is not within network 192.168.122.0/24 of network 'default'\n"
            ),
        ),
        (
            &["delete", "ip-dhcp-host", "<host mac='52:54:00:00:00:09'/>"],
            format!(
                "{failed}error: Requested operation is not valid: couldn't locate a matching dhcp host entry in network 'default'\n"
            ),
        ),
        (
            &[
                "modify",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:09' ip='192.168.122.29'/>",
            ],
            format!(
                "{failed}error: Requested operation is not valid: couldn't locate an existing dhcp host entry with \"mac='52:54:00:00:00:09'\" \"name='(null)'\" \"ip='192.168.122.29'\" in network 'default'\n"
            ),
        ),
        (
            &["add", "bridge", "<bridge name='virbr9'/>"],
            format!(
                "{failed}error: Operation not supported: can't update 'bridge' section of network 'default'\n"
            ),
        ),
        (
            &["add", "dns", "<host ip='192.168.122.7'/>"],
            "error: unrecognized section name 'dns'\n".to_owned(),
        ),
        (
            &["append", "dns-host", "<host ip='192.168.122.7'/>"],
            "error: unrecognized command name 'append'\n".to_owned(),
        ),
        (
            &["add", "dns-host", "no-such-file.xml"],
            "error: Failed to open file 'no-such-file.xml': No such file or directory\n".to_owned(),
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["net-update", "default"];
        full.extend_from_slice(args);
        full.extend(["--live", "--config"]);
        assert_eq!(daemon.fails(&full), expected, "{args:?}");
    }
    let malformed = daemon.fails(&[
        "net-update",
        "default",
        "add",
        "ip-dhcp-host",
        "<host mac='52:54:00:00:00:03' ip='192.168.122.23'",
    ]);
    assert!(
        malformed.starts_with(&format!("{failed}error: malformed update XML at line 1")),
        "{malformed}"
    );
    let missing = daemon.fails(&[
        "net-update",
        "nosuch",
        "add",
        "dns-txt",
        "<txt name='a' value='b'/>",
    ]);
    assert_eq!(
        missing,
        "error: failed to get network 'nosuch'\nerror: Network not found: no network with matching name 'nosuch'\n"
    );
    // virsh looks the network up before it reads the command, section or file.
    for args in [
        ["bogus", "ip-dhcp-host", "<host/>"],
        ["add", "bogus", "<host/>"],
        ["add", "ip-dhcp-host", "/nonexistent.xml"],
    ] {
        let mut full = vec!["net-update", "nosuch"];
        full.extend_from_slice(&args);
        assert_eq!(daemon.fails(&full), missing, "{args:?}");
    }
    let after = (
        daemon.ok(&["net-dumpxml", "default"]),
        daemon.ok(&["net-dumpxml", "--inactive", "default"]),
        daemon.config_snapshot(),
        std::fs::read_to_string(&status_path).expect("status file"),
    );
    assert_eq!(before, after);

    // --live needs a running network, --config a persistent one; --current on an
    // inactive network changes its persistent config; -q prints nothing.
    let idle = xml_file(
        daemon.dirs.path(),
        "idle.xml",
        "<network><name>idle</name><ip address='10.9.0.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", idle.to_str().expect("utf-8 path")]);
    let txt = "<txt name='idle' value='yes'/>";
    assert_eq!(
        daemon.fails(&["net-update", "idle", "add", "dns-txt", txt, "--live"]),
        "error: Failed to update network idle\nerror: Requested operation is not valid: network is not running\n"
    );
    assert_eq!(
        daemon.ok(&["net-update", "idle", "add", "dns-txt", txt]),
        "Updated network idle persistent config\n"
    );
    assert!(daemon.ok(&["net-dumpxml", "idle"]).contains(txt));
    assert_eq!(
        daemon.ok(&[
            "-q",
            "net-update",
            "idle",
            "delete",
            "dns-txt",
            "<txt name='idle'/>",
            "--config"
        ]),
        ""
    );
    assert!(!daemon.ok(&["net-dumpxml", "idle"]).contains(txt));
    daemon.ok(&["net-undefine", "default"]);
    assert_eq!(
        daemon.fails(&["net-update", "default", "add", "dns-txt", txt, "--config"]),
        "error: Failed to update network default\nerror: Requested operation is not valid: cannot change persistent config of a transient network\n"
    );
}

/// As in libvirt, a nat network's forward device is added and deleted live, and its
/// firewall rules follow at once.
#[test]
fn a_live_forward_interface_update_reaches_the_firewall_rules() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let before = daemon.ruleset();
    assert!(!before.contains("\"eth9\""), "{before}");
    let device = "<interface dev='eth9'/>";
    assert_eq!(
        daemon.ok(&["net-update", "default", "add", "forward-interface", device]),
        "Updated network default live state\n"
    );
    let restricted = daemon.ruleset();
    assert!(restricted.contains("\"virbr0\" . \"eth9\""), "{restricted}");
    assert!(
        daemon
            .ok(&["net-dumpxml", "default"])
            .contains("<forward dev='eth9' mode='nat'>"),
    );
    assert_eq!(
        daemon.fails(&[
            "net-update",
            "default",
            "add",
            "forward-interface",
            "<interface dev='eth8'/>"
        ]),
        "error: Failed to update network default\nerror: XML error: multiple forwarding interfaces specified for network 'default', only one is supported\n"
    );
    daemon.ok(&[
        "net-update",
        "default",
        "delete",
        "forward-interface",
        device,
    ]);
    // The rules are as before (`ruleset` leaves the counters out).
    assert_eq!(daemon.ruleset(), before);
}

#[test]
fn the_api_resolves_current_and_reports_stable_error_kinds() {
    use netd::api::ErrorKind;
    use netd::api::client::{Client, Error};
    use netd::api::types::{UpdateRequest, UpdateResponse};

    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let client = Client::new(daemon.socket());
    let call = |command: &str, section: &str, xml: &str| {
        let request = UpdateRequest {
            command: command.to_owned(),
            section: section.to_owned(),
            xml: xml.to_owned(),
            parent_index: None,
            live: false,
            config: false,
        };
        client.update("default", &request)
    };
    let kind = |result: Result<UpdateResponse, Error>| match result {
        Err(Error::Api(api)) => api.kind,
        other => panic!("expected an API error, got {other:?}"),
    };
    let txt = "<txt name='api' value='yes'/>";
    assert_eq!(
        call("add", "dns-txt", txt).expect("update"),
        UpdateResponse {
            name: "default".to_owned(),
            live: true,
            config: false,
        }
    );
    assert_eq!(
        kind(call("add", "dns-txt", txt)),
        ErrorKind::OperationInvalid
    );
    assert_eq!(
        kind(call("add", "forward", "<forward/>")),
        ErrorKind::Unsupported
    );
    assert_eq!(kind(call("add", "dns", txt)), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(call("insert", "dns-txt", txt)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(kind(call("add", "dns-txt", "<txt")), ErrorKind::XmlDetail);
    assert_eq!(
        kind(call("add", "dns-host", "<host ip='10.0.0.1'/>")),
        ErrorKind::XmlDetail
    );
}

#[test]
fn a_live_update_that_adds_the_first_dhcp_range_starts_a_server_and_removing_it_stops_it() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = xml_file(
        daemon.dirs.path(),
        "bare.xml",
        "<network><name>bare</name><bridge name='virbr0' stp='off'/>\
         <ip address='192.168.122.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-create", path.to_str().expect("utf-8 path")]);
    assert_eq!(log_count(&daemon, "DHCP server started"), 0);
    let guest = Netns::new("updbare").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr0", "", "");
    common::wait_for_forwarding(&daemon, "vg0");

    let range = "<range start='192.168.122.70' end='192.168.122.70'/>";
    assert_eq!(
        daemon.ok(&["net-update", "bare", "add", "ip-dhcp-range", range]),
        "Updated network bare live state\n"
    );
    assert_eq!(log_count(&daemon, "DHCP server started"), 1);
    let bound = common::udhcpc_lease(&daemon, &guest, "solo");
    assert_eq!(bound.ip, "192.168.122.70");
    assert!(daemon.ok(&["net-dumpxml", "bare"]).contains(range));

    daemon.ok(&["net-update", "bare", "delete", "ip-dhcp-range", range]);
    assert_eq!(
        log_count(&daemon, "DHCP server stopped"),
        1,
        "{}",
        daemon.log()
    );
    assert_eq!(daemon.ok(&["-q", "net-dhcp-leases", "bare"]).trim(), "");
    // A transient network has no persistent config to change.
    assert_eq!(
        daemon.fails(&[
            "net-update",
            "bare",
            "add",
            "ip-dhcp-range",
            range,
            "--config"
        ]),
        "error: Failed to update network bare\nerror: Requested operation is not valid: cannot change persistent config of a transient network\n"
    );
}

/// An update that starts a network's first DHCPv6 server and then cannot write the
/// definition is undone, and takes only that server's lease file with it: the running
/// DHCPv4 server's leases stay.
#[test]
fn a_failed_update_that_started_dhcpv6_keeps_the_dhcpv4_leases() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = xml_file(
        daemon.dirs.path(),
        "dual.xml",
        "<network><name>dual</name><bridge name='virbr0' stp='off'/>\
         <ip address='192.168.122.1' prefix='24'><dhcp>\
         <range start='192.168.122.100' end='192.168.122.200'/></dhcp></ip>\
         <ip family='ipv6' address='fd00:7::1' prefix='64'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("utf-8 path")]);
    daemon.ok(&["net-start", "dual"]);
    let leases = daemon.state_dir().join("networks/dual.leases");
    assert!(leases.exists(), "no DHCPv4 lease file");
    // The definition's temporary file cannot be created: a directory is in its way.
    let pid = daemon.pid().expect("daemon pid");
    let blocker = daemon
        .config_dir()
        .join(format!("networks/.dual.xml.tmp-{pid}"));
    std::fs::create_dir(&blocker).expect("blocker");

    let range = "<range start='fd00:7::100' end='fd00:7::1ff'/>";
    let refused = daemon.fails(&[
        "net-update",
        "dual",
        "add",
        "ip-dhcp-range",
        range,
        "--parent-index",
        "1",
        "--live",
        "--config",
    ]);
    let definition = daemon.config_dir().join("networks/dual.xml");
    assert!(
        refused.contains(&format!("writing {}: Is a directory", definition.display())),
        "{refused}"
    );
    assert!(
        leases.exists(),
        "the DHCPv4 lease file went with the undone update"
    );
    assert!(!daemon.state_dir().join("networks/dual.leases6").exists());
    assert!(!daemon.ok(&["net-dumpxml", "dual"]).contains(range));
    std::fs::remove_dir(&blocker).expect("remove blocker");
}
