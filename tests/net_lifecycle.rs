//! netns tier: the daemon's network lifecycle against real kernel state.

mod common;

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, require, xml_file};

const DOCKER_MACHINES: &str = include_str!("../examples/networks/docker-machines.xml");

fn define_docker_machines(daemon: &Daemon) {
    let path = xml_file(daemon.dirs.path(), "docker-machines.xml", DOCKER_MACHINES);
    let out = daemon.ok(&["net-define", path.to_str().expect("utf-8 path")]);
    assert_eq!(
        out,
        format!(
            "Network docker-machines defined from {}\n\n",
            path.display()
        )
    );
}

#[test]
fn first_start_brings_up_libvirts_default_network_in_the_kernel() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    assert_eq!(
        daemon.ok(&["net-list", "--all"]),
        " Name      State    Autostart   Persistent\n\
         --------------------------------------------\n \
         default   active   yes         yes\n\n"
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);
    assert_eq!(daemon.addresses("virbr0"), ["192.168.122.1/24"]);
    let ruleset = daemon.ruleset();
    assert!(ruleset.contains("table inet kvnet"), "{ruleset}");
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    assert!(ruleset.contains("1024-65535"), "{ruleset}");
    assert_eq!(
        daemon
            .ns
            .sh("cat /proc/sys/net/ipv4/ip_forward")
            .expect("sysctl")
            .trim(),
        "1"
    );

    let xml = daemon.ok(&["net-dumpxml", "default"]);
    assert!(
        xml.starts_with("<network>\n  <name>default</name>\n  <uuid>"),
        "{xml}"
    );
    assert!(xml.contains("  <forward mode='nat'>\n    <nat>\n      <port start='1024' end='65535'/>\n    </nat>\n  </forward>\n"), "{xml}");
    assert!(
        xml.contains("  <bridge name='virbr0' stp='on' delay='0'/>\n  <mac address='52:54:00:"),
        "{xml}"
    );
    assert!(xml.ends_with("</network>\n\n"), "{xml}");
    // libvirt adds NAT's port range to the running definition only.
    let inactive = daemon.ok(&["net-dumpxml", "default", "--inactive"]);
    assert!(inactive.contains("  <forward mode='nat'/>\n"), "{inactive}");
    // The definition is in libvirt's layout, autostart link included.
    assert!(daemon.config_dir().join("networks/default.xml").is_file());
    assert!(
        daemon
            .config_dir()
            .join("networks/autostart/default.xml")
            .exists()
    );
}

#[test]
fn define_start_autostart_list_info_destroy_undefine() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    define_docker_machines(&daemon);
    assert_eq!(
        daemon.ok(&["net-start", "docker-machines"]),
        "Network docker-machines started\n\n"
    );
    assert_eq!(
        daemon.ok(&["net-autostart", "docker-machines"]),
        "Network docker-machines marked as autostarted\n\n"
    );
    assert_eq!(
        daemon.ok(&["net-list", "--all"]),
        " Name              State    Autostart   Persistent\n\
         ----------------------------------------------------\n \
         default           active   yes         yes\n \
         docker-machines   active   yes         yes\n\n"
    );
    assert_eq!(daemon.addresses("virbr1"), ["192.168.42.1/24"]);

    let uuid = daemon.ok(&["net-uuid", "docker-machines"]);
    let uuid = uuid.trim();
    assert_eq!(uuid.len(), 36);
    assert_eq!(daemon.ok(&["net-name", uuid]), "docker-machines\n\n");
    assert_eq!(
        daemon.ok(&["net-info", uuid]),
        format!(
            "Name:           docker-machines\nUUID:           {uuid}\nActive:         yes\nPersistent:     yes\nAutostart:      yes\nBridge:         virbr1\n\n"
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["net-info", "docker-machines", "--json"])).expect("json");
    assert_eq!(json["bridge"], "virbr1");
    assert_eq!(json["active"], true);
    // --name and --uuid keep to names and UUIDs.
    assert_eq!(
        daemon.ok(&["net-list", "--all", "--name", "--json"]),
        "[\n  \"default\",\n  \"docker-machines\"\n]\n"
    );
    let uuids: Vec<String> =
        serde_json::from_str(&daemon.ok(&["net-list", "--uuid", "--json"])).expect("json");
    assert!(uuids.contains(&uuid.to_owned()), "{uuids:?}");

    // Isolated: forwarding is rejected in and out of the bridge, no masquerade for it.
    let ruleset = daemon.ruleset();
    assert!(ruleset.contains("virbr1"), "{ruleset}");

    // virsh's success lines name the network as it was given: here by UUID.
    let uuid = json["uuid"].as_str().expect("uuid").to_owned();
    assert_eq!(
        daemon.ok(&["net-destroy", &uuid]),
        format!("Network {uuid} destroyed\n\n")
    );
    assert_eq!(daemon.bridges(), ["virbr0"]);
    assert!(!daemon.ruleset().contains("virbr1"));
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--inactive"]),
        " docker-machines   inactive   yes   yes\n"
    );
    assert_eq!(
        daemon.ok(&["net-autostart", "docker-machines", "--disable"]),
        "Network docker-machines unmarked as autostarted\n\n"
    );
    assert_eq!(
        daemon.ok(&["net-undefine", "docker-machines"]),
        "Network docker-machines has been undefined\n\n"
    );
    assert!(
        !daemon
            .config_dir()
            .join("networks/docker-machines.xml")
            .exists()
    );
    assert_eq!(daemon.ok(&["net-list", "--all", "--name"]), "default\n\n");

    // After destroying every network the kernel is as it was.
    daemon.ok(&["net-destroy", "default"]);
    assert!(daemon.bridges().is_empty());
    assert_eq!(
        daemon.ruleset().trim(),
        "",
        "kvnet's table outlived its last network"
    );
}

#[test]
fn transient_networks_run_without_a_definition_and_vanish_on_destroy() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = xml_file(
        daemon.dirs.path(),
        "t.xml",
        "<network><name>scratch</name><forward mode='route'/><ip address='10.98.0.1' prefix='24'/></network>",
    );
    assert_eq!(
        daemon.ok(&["net-create", path.to_str().expect("path")]),
        format!("Network scratch created from {}\n\n", path.display())
    );
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--transient"]),
        " scratch   active   no   no\n"
    );
    assert_eq!(daemon.addresses("virbr0"), ["10.98.0.1/24"]);
    assert!(!daemon.config_dir().join("networks/scratch.xml").exists());
    let err = daemon.fails(&["net-undefine", "scratch"]);
    assert!(err.contains("can't undefine transient network"), "{err}");
    let err = daemon.fails(&["net-autostart", "scratch"]);
    assert!(err.contains("transient"), "{err}");
    daemon.ok(&["net-destroy", "scratch"]);
    assert_eq!(
        daemon.ok(&["net-list", "--all"]),
        " Name   State   Autostart   Persistent\n----------------------------------------\n\n"
    );
    assert!(daemon.bridges().is_empty());
}

/// The `persistent` field of a network's status file.
fn status_persistent(daemon: &Daemon, name: &str) -> bool {
    let path = daemon.state_dir().join(format!("networks/{name}.json"));
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("status")).expect("json");
    status["persistent"].as_bool().expect("persistent")
}

#[test]
fn defining_a_running_transient_network_records_it_as_persistent() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = xml_file(
        daemon.dirs.path(),
        "t.xml",
        "<network><name>later</name><forward/><ip address='10.97.0.1' prefix='24'/></network>",
    );
    let path = path.to_str().expect("path");
    daemon.ok(&["net-create", path]);
    assert!(!status_persistent(&daemon, "later"));
    // As with libvirt, the definition must name the running network's UUID: the file
    // without one would be another network of the same name.
    let uuid = daemon.ok(&["net-uuid", "later"]);
    let err = daemon.fails(&["net-define", path]);
    assert!(
        err.contains(&format!(
            "network 'later' already exists with uuid {}",
            uuid.trim()
        )),
        "{err}"
    );
    let dumped = xml_file(
        daemon.dirs.path(),
        "dumped.xml",
        &daemon.ok(&["net-dumpxml", "later"]),
    );
    daemon.ok(&["net-define", dumped.to_str().expect("path")]);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " later   active   no   yes\n"
    );
    assert!(
        status_persistent(&daemon, "later"),
        "the status file still calls a defined network transient"
    );
    daemon.ok(&["net-undefine", "later"]);
    assert!(!status_persistent(&daemon, "later"));
}

#[test]
fn net_create_of_a_defined_inactive_network_runs_it_with_that_xml() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let uuid = "11111111-1111-4111-8111-111111111111";
    let defined = xml_file(
        daemon.dirs.path(),
        "defined.xml",
        &format!(
            "<network><name>net1</name><uuid>{uuid}</uuid><forward mode='route'/><ip address='10.97.0.1' prefix='24'/></network>"
        ),
    );
    daemon.ok(&["net-define", defined.to_str().expect("path")]);
    let config = daemon.config_snapshot();
    // As libvirt: the file runs as the live definition; the persistent one stays.
    let live = xml_file(
        daemon.dirs.path(),
        "live.xml",
        &format!(
            "<network><name>net1</name><uuid>{uuid}</uuid><forward mode='route'/><ip address='10.97.1.1' prefix='24'/></network>"
        ),
    );
    assert_eq!(
        daemon.ok(&["net-create", live.to_str().expect("path")]),
        format!("Network net1 created from {}\n\n", live.display())
    );
    assert_eq!(daemon.addresses("virbr0"), ["10.97.1.1/24"]);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " net1   active   no   yes\n"
    );
    assert!(
        daemon
            .ok(&["net-dumpxml", "net1", "--inactive"])
            .contains("10.97.0.1")
    );
    assert_eq!(daemon.config_snapshot(), config);
    let err = daemon.fails(&["net-create", live.to_str().expect("path")]);
    assert!(err.contains("network is already active as 'net1'"), "{err}");
    // Another UUID under the same name is another network.
    let other = xml_file(
        daemon.dirs.path(),
        "other.xml",
        "<network><name>net1</name><uuid>22222222-2222-4222-8222-222222222222</uuid></network>",
    );
    let err = daemon.fails(&["net-create", other.to_str().expect("path")]);
    assert!(
        err.contains(&format!("network 'net1' already exists with uuid {uuid}")),
        "{err}"
    );
    // The persistent definition comes back once the network stops.
    daemon.ok(&["net-destroy", "net1"]);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--inactive"]),
        " net1   inactive   no   yes\n"
    );
    daemon.ok(&["net-start", "net1"]);
    assert_eq!(daemon.addresses("virbr0"), ["10.97.0.1/24"]);
}

#[test]
fn a_restarted_daemon_adopts_running_networks_without_touching_them() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start();
    let before = daemon.ip_json("link show virbr0");
    let ifindex = before[0]["ifindex"].clone();
    // With handles: a rule deleted and added again gets a new one. Without counters
    // (-s): the bridge's own multicast may pass meanwhile.
    let rules = |daemon: &Daemon| {
        daemon
            .ns
            .sh("nft -a -s list table inet kvnet")
            .expect("nft")
    };
    let rules_before = rules(&daemon);
    daemon.stop();
    // Networks outlive the daemon.
    assert_eq!(daemon.bridges(), ["virbr0"]);
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list"]),
        " default   active   yes   yes\n"
    );
    let after = daemon.ip_json("link show virbr0");
    assert_eq!(
        after[0]["ifindex"], ifindex,
        "the bridge was recreated instead of adopted"
    );
    assert!(daemon.log().contains("adopted running network"));
    assert_eq!(
        rules(&daemon),
        rules_before,
        "the firewall rules were replaced"
    );
    // A second start in the same boot does not restart it.
    let err = daemon.fails(&["net-start", "default"]);
    assert!(err.contains("network is already active"), "{err}");
    // The daemon's log keeps what it refused, as libvirtd's does.
    daemon.assert_logged("request refused");
    daemon.assert_logged("reason=\"network is already active\"");
}

#[test]
fn a_vanished_bridge_marks_the_network_inactive_and_stale_rules_go() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.stop();
    daemon
        .ns
        .sh("ip link del virbr0")
        .expect("delete the bridge behind the daemon's back");
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " default   inactive   yes   yes\n"
    );
    let ruleset = daemon.ruleset();
    assert!(!ruleset.contains("virbr0"), "stale chains left: {ruleset}");
    daemon.ok(&["net-start", "default"]);
    assert_eq!(daemon.bridges(), ["virbr0"]);
}

#[test]
fn a_restarted_daemon_puts_back_what_was_taken_from_its_bridges() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.stop();
    daemon
        .ns
        .sh("ip addr flush dev virbr0 && ip link set virbr0 down")
        .expect("strip the bridge behind the daemon's back");
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list"]),
        " default   active   yes   yes\n"
    );
    assert_eq!(daemon.addresses("virbr0"), ["192.168.122.1/24"]);
    let link = daemon.ip_json("link show virbr0")[0].clone();
    assert!(common::is_up(&link), "bridge left down: {link}");
}

/// libvirt's `<nat><port start='0' end='N'/>` defines and starts: nft masquerades to
/// ports 0-N.
#[test]
fn a_nat_port_range_from_zero_starts() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let path = common::xml_file(
        daemon.dirs.path(),
        "zero.xml",
        "<network><name>zero</name><forward mode='nat'><nat><port start='0' end='1024'/></nat></forward>\
         <bridge name='kvzero'/><ip address='10.58.0.1' prefix='24'/></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "zero"]);
    let ruleset = daemon.ruleset();
    assert!(ruleset.contains("masquerade to :0-1024"), "{ruleset}");
}

/// A destroy the kernel refuses halfway leaves the network active and still serving its
/// guests, and a retry finishes it.
#[test]
fn a_failed_destroy_keeps_the_network_serving_and_a_retry_finishes_it() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    // `default` keeps kvnet's table alive: the last network's destroy deletes the table.
    let daemon = Daemon::start();
    let path = common::xml_file(
        daemon.dirs.path(),
        "ports.xml",
        "<network><name>ports</name><forward mode='nat'><nat><port start='2000' end='3000'/></nat></forward>\
         <bridge name='kvports'/><ip address='10.57.0.1' prefix='24'>\
         <dhcp><range start='10.57.0.10' end='10.57.0.20'/></dhcp></ip></network>",
    );
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "ports"]);
    // Someone jumps to the network's NAT chain from a chain of their own in kvnet's
    // table: the kernel refuses to delete a chain in use, so the teardown's firewall
    // batch fails (a jump from a base chain would be flushed away by the retry).
    daemon
        .ns
        .sh("nft add chain inet kvnet mine && nft add rule inet kvnet mine jump nat-kvports")
        .expect("foreign jump");
    let error = daemon.fails(&["net-destroy", "ports"]);
    assert!(
        error.starts_with("error: Failed to destroy network ports\nerror: internal error: failed to stop network 'ports': cannot remove firewall rules of bridge kvports: delete chain nat-kvports: Device or resource busy"),
        "{error}"
    );
    let mut bridges = daemon.bridges();
    bridges.sort();
    assert_eq!(
        bridges,
        ["kvports", "virbr0"],
        "the network was half torn down"
    );
    assert!(
        daemon.ruleset().contains("kvports"),
        "its rules were removed"
    );
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " default   active   yes   yes\n ports     active   no    yes\n"
    );
    let listening = daemon.ns.sh("ss -Hlun").expect("ss");
    for service in ["10.57.0.1%kvports:53", "0.0.0.0%kvports:67"] {
        assert!(
            listening.contains(service),
            "{service} not served after the failed destroy:\n{listening}\n{}",
            daemon.log()
        );
    }
    daemon
        .ns
        .sh("nft flush chain inet kvnet mine && nft delete chain inet kvnet mine")
        .expect("remove the foreign jump");
    daemon.ok(&["net-destroy", "ports"]);
    assert_eq!(daemon.bridges(), ["virbr0"]);
    assert!(!daemon.ns.sh("ss -Hlun").expect("ss").contains("kvports"));
}

#[test]
fn systemd_hears_ready_once_the_daemon_serves_and_stopping_at_sigterm() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let notify = dir.path().join("notify");
    let systemd = std::os::unix::net::UnixDatagram::bind(&notify).expect("bind");
    systemd
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let heard = || {
        let mut buf = [0u8; 64];
        let len = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    };
    let mut daemon = Daemon::start_with(DaemonOptions {
        notify_socket: Some(notify.clone()),
        ..Default::default()
    });
    assert_eq!(heard(), "READY=1");
    // Ready means the autostart networks are up and the API answers.
    assert_eq!(
        daemon.ok(&["-q", "net-list"]),
        " default   active   yes   yes\n"
    );
    daemon.stop();
    assert_eq!(heard(), "STOPPING=1");
}

#[test]
fn a_drop_policy_set_while_networks_run_is_warned_about_once() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let wait_for_warning = |warning: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !daemon.log().contains(warning) {
            assert!(
                std::time::Instant::now() < deadline,
                "no warning {warning:?} 15 s after the policy was set:\n{}",
                daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // What starting Docker does to forwarding (iptables-nft), long after the daemon.
    daemon
        .ns
        .sh("nft add table ip filter && nft add chain ip filter FORWARD '{ type filter hook forward priority 0; policy drop; }'")
        .expect("set a forward drop policy");
    let forward = "table ip filter chain FORWARD (hook forward) has policy drop";
    wait_for_warning(forward);
    // A later change is looked at too, and the first policy is not warned about again.
    daemon
        .ns
        .sh("nft add table ip6 filter && nft add chain ip6 filter INPUT '{ type filter hook input priority 0; policy drop; }'")
        .expect("set an input drop policy");
    wait_for_warning("table ip6 filter chain INPUT (hook input) has policy drop");
    assert_eq!(daemon.log().matches(forward).count(), 1, "{}", daemon.log());
}

#[test]
fn static_routes_come_and_go_with_the_bridge() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let xml = "<network><name>routed</name><forward mode='route'/><bridge name='kvrt0'/>\
        <ip address='10.59.0.1' prefix='24'/>\
        <ip family='ipv6' address='fd00:59::1' prefix='64'/>\
        <route address='10.159.0.0' prefix='16' gateway='10.59.0.2'/>\
        <route family='ipv6' address='fd00:159::' prefix='48' gateway='fd00:59::2' metric='5'/>\
        <route address='10.159.0.0' netmask='255.255.0.0' gateway='10.59.0.2' metric='1'/>\
        </network>";
    // The last route is the first written again, which libvirt takes too: added once.
    let path = common::xml_file(daemon.dirs.path(), "routed.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "routed"]);
    let routes = |daemon: &Daemon| {
        daemon
            .ns
            .sh("ip route show 10.159.0.0/16; ip -6 route show fd00:159::/48")
            .expect("ip route")
    };
    let assert_present = |routes: String| {
        assert!(
            routes.contains("10.159.0.0/16 via 10.59.0.2 dev kvrt0")
                && routes.contains("fd00:159::/48 via fd00:59::2 dev kvrt0")
                && routes.contains("metric 5"),
            "{routes}"
        )
    };
    assert_present(routes(&daemon));

    // The kernel deletes a link's routes when it goes down; the next daemon to adopt the
    // network brings the bridge up and puts them back.
    daemon.stop();
    daemon.ns.sh("ip link set kvrt0 down").expect("set down");
    assert_eq!(routes(&daemon).trim(), "", "routes stayed on a down link");
    daemon.spawn(&DaemonOptions::default());
    assert_present(routes(&daemon));
    assert!(
        daemon
            .log()
            .contains("the route to 10.159.0.0/16 via 10.59.0.2 had been removed"),
        "{}",
        daemon.log()
    );

    daemon.ok(&["net-destroy", "routed"]);
    assert_eq!(routes(&daemon).trim(), "", "routes outlived the network");
}

#[test]
fn autostart_runs_once_per_boot() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start();
    define_docker_machines(&daemon);
    daemon.ok(&["net-autostart", "docker-machines"]);
    daemon.ok(&["net-destroy", "default"]);
    daemon.stop();

    // Same boot (same state dir): the daemon does not autostart again.
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all", "--name"]),
        "default\ndocker-machines\n"
    );
    assert_eq!(daemon.ok(&["-q", "net-list", "--name"]), "");
    daemon.stop();

    // A reboot: the kernel state is gone and /run is empty again.
    let reboot_state = daemon.dirs.path().join("run-after-reboot");
    daemon.spawn(&DaemonOptions {
        state_dir: Some(reboot_state),
        ..Default::default()
    });
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--name"]),
        "default\ndocker-machines\n"
    );
    let mut bridges = daemon.bridges();
    bridges.sort();
    assert_eq!(bridges, ["virbr0", "virbr1"]);
}

#[test]
fn default_network_moves_off_a_subnet_the_host_already_uses() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let ns = testkit::Netns::new("taken").expect("netns");
    ns.sh("ip link add eth9 type veth peer name eth9p && ip addr add 192.168.122.7/24 dev eth9 && ip link set eth9 up").expect("setup");
    // Run a daemon in that namespace by hand: Daemon::start makes its own namespace.
    let dirs = tempfile::tempdir().expect("tmp");
    let socket = dirs.path().join("s");
    let mut child = ns
        .command(env!("CARGO_BIN_EXE_kvnetd"))
        .arg("--config-dir")
        .arg(dirs.path().join("etc"))
        .arg("--state-dir")
        .arg(dirs.path().join("run"))
        .arg("--socket")
        .arg(&socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    for _ in 0..2000 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = common::kvnet_at(&socket, &["net-dumpxml", "default"]);
    let _ = child.kill();
    let _ = child.wait();
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        xml.contains("<ip address='192.168.123.1' netmask='255.255.255.0'>"),
        "{xml}"
    );
    assert!(
        xml.contains("<range start='192.168.123.2' end='192.168.123.254'/>"),
        "{xml}"
    );
}

/// A network moved from libvirt takes over the leases libvirt's dnsmasq gave on its
/// bridge, the first time it starts: a guest keeps its address (dnsmasq's, not the one
/// kvnet would pick), and the lease is listed, before the guest even renews.
#[test]
fn a_network_moved_from_libvirt_takes_over_dnsmasqs_leases() {
    if !require(DAEMON_NEEDS) || !require(&[common::Need::Program("busybox")]) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    std::fs::create_dir_all(daemon.libvirt_leases_dir()).expect("libvirt's dir");
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    std::fs::write(
        daemon.libvirt_leases_dir().join("virbr7.status"),
        format!(
            "[\n  {{\n    \"ip-address\": \"10.63.0.77\",\n    \"mac-address\": \"52:54:00:aa:bb:01\",\n    \
             \"hostname\": \"alpha\",\n    \"client-id\": \"01:52:54:00:aa:bb:01\",\n    \
             \"expiry-time\": {expiry}\n  }},\n  {{\n    \"ip-address\": \"10.63.0.78\",\n    \
             \"mac-address\": \"52:54:00:aa:bb:02\",\n    \"expiry-time\": 1000\n  }}\n]\n"
        ),
    )
    .expect("libvirt's leases");
    let xml = "<network><name>moved</name><bridge name='virbr7' stp='off'/><forward/>\
               <ip address='10.63.0.1' prefix='24'><dhcp><range start='10.63.0.2' \
               end='10.63.0.254'/></dhcp></ip></network>";
    let path = common::xml_file(daemon.dirs.path(), "moved.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "moved"]);
    let table = daemon.ok(&["net-dhcp-leases", "moved"]);
    assert!(
        table.contains("52:54:00:aa:bb:01   ipv4       10.63.0.77/24   alpha"),
        "{table}"
    );
    assert!(
        !table.contains("10.63.0.78"),
        "an expired lease came over: {table}"
    );
    let guest = testkit::Netns::new("movedguest").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr7", "", "");
    guest
        .sh("ip link set eth0 address 52:54:00:aa:bb:01")
        .expect("guest mac");
    common::wait_for_forwarding(&daemon, "vg0");
    assert_eq!(
        common::udhcpc_lease(&daemon, &guest, "alpha").ip,
        "10.63.0.77"
    );
    // Once the network has leases of its own, libvirt's are not read again; nor after a
    // reboot, which takes kvnet's (a new state dir): a lease released since must not
    // come back.
    daemon.ok(&["net-destroy", "moved"]);
    daemon.ok(&["net-start", "moved"]);
    daemon.ok(&["net-destroy", "moved"]);
    daemon.stop();
    daemon.spawn(&common::DaemonOptions {
        state_dir: Some(daemon.dirs.path().join("run-after-reboot")),
        ..common::DaemonOptions::no_default_network()
    });
    daemon.ok(&["net-start", "moved"]);
    let taken = "took over the leases libvirt's dnsmasq gave";
    assert_eq!(daemon.log().matches(taken).count(), 1, "{}", daemon.log());
    let table = daemon.ok(&["net-dhcp-leases", "moved"]);
    assert!(!table.contains("10.63.0.77"), "{table}");
}

#[test]
fn guests_get_dhcp_leases_that_net_dhcp_leases_lists() {
    if !require(DAEMON_NEEDS) || !require(&[common::Need::Program("busybox")]) {
        return;
    }
    let daemon = Daemon::start();
    let guest = testkit::Netns::new("dhcpguest").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr0", "", "");
    guest
        .sh("ip link set eth0 address 52:54:00:aa:bb:cc")
        .expect("guest mac");
    common::wait_for_forwarding(&daemon, "vg0");
    let bound = common::udhcpc_lease(&daemon, &guest, "web1");
    let (ip, router) = (bound.ip.as_str(), bound.router.as_str());
    assert!(
        ip.starts_with("192.168.122.") && ip != "192.168.122.1",
        "{bound:?}"
    );
    assert_eq!(router, "192.168.122.1");

    let table = daemon.ok(&["net-dhcp-leases", "default"]);
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "Expiry Time",
            "MAC address",
            "Protocol",
            "IP address",
            "Hostname",
            "Client ID or DUID"
        ]
    );
    assert!(
        lines[2].contains(&format!("52:54:00:aa:bb:cc   ipv4       {ip}/24")),
        "{table}"
    );
    assert!(lines[2].contains("web1"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&daemon.ok(&[
        "net-dhcp-leases",
        "default",
        "--mac",
        "52:54:00:AA:BB:CC",
        "--json",
    ]))
    .expect("json");
    assert_eq!(json[0]["ip_address"], ip);
    assert_eq!(json[0]["protocol"], "ipv4");
    assert_eq!(
        daemon.ok(&[
            "-q",
            "net-dhcp-leases",
            "default",
            "--mac",
            "52:54:00:00:00:01"
        ]),
        ""
    );
    // Compared as an address, and given without --mac, as virsh takes both.
    let short = daemon.ok(&["-q", "net-dhcp-leases", "default", "52:54:0:aa:bb:cc"]);
    assert!(short.contains(ip), "{short}");
    // The network is looked up before the MAC is checked.
    let error = daemon.fails(&["net-dhcp-leases", "nosuch", "--mac", "bad"]);
    assert!(error.contains("failed to get network 'nosuch'"), "{error}");
    // As with libvirt, a network that is not running still lists the leases it gave.
    let listed = daemon.ok(&["net-dhcp-leases", "default"]);
    daemon.ok(&["net-destroy", "default"]);
    assert_eq!(daemon.ok(&["net-dhcp-leases", "default"]), listed);
}

/// libvirt's `<bridge name='…%d'/>` templates get the lowest free number at define, and
/// definitions copied into the config dir by hand (no bridge name, UUID or MAC, or a
/// template) are completed and saved when the daemon loads them, as define would.
#[test]
fn bridge_name_templates_and_hand_written_definitions_are_completed() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    for (name, address) in [("ta", "10.60.0.1"), ("tb", "10.61.0.1")] {
        let xml = format!(
            "<network><name>{name}</name><bridge name='kvt%d'/><ip address='{address}' prefix='24'/></network>"
        );
        let path = xml_file(daemon.dirs.path(), &format!("{name}.xml"), &xml);
        daemon.ok(&["net-define", path.to_str().expect("path")]);
    }
    for (name, bridge) in [("ta", "kvt0"), ("tb", "kvt1")] {
        let dumped = daemon.ok(&["net-dumpxml", name]);
        assert!(
            dumped.contains(&format!("<bridge name='{bridge}' stp='on' delay='0'/>")),
            "{dumped}"
        );
    }
    daemon.stop();

    let networks = daemon.config_dir().join("networks");
    std::fs::write(
        networks.join("plain.xml"),
        "<network><name>plain</name><ip address='10.62.0.1' prefix='24'/></network>\n",
    )
    .expect("hand-written definition");
    std::fs::write(
        networks.join("templ.xml"),
        "<network><name>templ</name><bridge name='kvt%d'/><ip address='10.63.0.1' prefix='24'/></network>\n",
    )
    .expect("hand-written template");
    daemon.spawn(&DaemonOptions::no_default_network());
    for (name, bridge) in [("plain", "virbr0"), ("templ", "kvt2")] {
        let saved = std::fs::read_to_string(networks.join(format!("{name}.xml"))).expect("saved");
        assert!(saved.contains("<uuid>"), "{saved}");
        assert!(saved.contains("<mac address='52:54:00:"), "{saved}");
        assert!(
            saved.contains(&format!("<bridge name='{bridge}' stp='on' delay='0'/>")),
            "{saved}"
        );
        daemon.ok(&["net-start", name]);
    }
    let mut bridges = daemon.bridges();
    bridges.sort();
    assert_eq!(bridges, ["kvt2", "virbr0"]);

    // A copy with only its <name> changed claims plain's UUID: refused at load, as
    // libvirt refuses it, and plain is left alone.
    daemon.stop();
    let copy = std::fs::read_to_string(networks.join("plain.xml"))
        .expect("plain")
        .replace("<name>plain</name>", "<name>qcopy</name>");
    std::fs::write(networks.join("qcopy.xml"), &copy).expect("copy");
    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.assert_logged("network 'plain' is already defined with uuid");
    let listed = daemon.ok(&["net-list", "--all", "--name"]);
    assert!(!listed.contains("qcopy"), "{listed}");
    assert!(
        daemon
            .ok(&["net-info", "plain"])
            .contains("Active:         yes")
    );
    assert_eq!(
        std::fs::read_to_string(networks.join("qcopy.xml")).expect("kept"),
        copy
    );

    // One whose bridge is an interface's when the daemon loads it (libvirt's virbr0
    // while libvirt runs) still gets its UUID and MAC, and starts once the name is free.
    daemon.stop();
    daemon
        .ns
        .sh("ip link add kvtaken type veth peer name kvtakenp")
        .expect("veth");
    std::fs::write(
        networks.join("taken.xml"),
        "<network><name>taken</name><bridge name='kvtaken'/><ip address='10.64.0.1' prefix='24'>\
         <dhcp><range start='10.64.0.10' end='10.64.0.20'/>\
         <host mac='52:54:00:64:00:05' ip='10.65.0.5'/></dhcp></ip></network>\n",
    )
    .expect("hand-written definition");
    daemon.spawn(&DaemonOptions::no_default_network());
    // A reservation outside the subnet (libvirt takes it; its dnsmasq ignores it) does
    // not keep the definition from loading.
    daemon.assert_logged("a DHCP <host> no guest can get is left out");
    let saved = std::fs::read_to_string(networks.join("taken.xml")).expect("saved");
    assert!(saved.contains("<mac address='52:54:00:"), "{saved}");
    let uuid = daemon.ok(&["net-uuid", "taken"]);
    assert!(
        saved.contains(&format!("<uuid>{}</uuid>", uuid.trim())),
        "{uuid} {saved}"
    );
    assert_ne!(uuid.trim(), "00000000-0000-0000-0000-000000000000");
    let refused = daemon.fails(&["net-start", "taken"]);
    assert!(refused.contains("kvtaken"), "{refused}");
    daemon.ns.sh("ip link del kvtaken").expect("free the name");
    daemon.ok(&["net-start", "taken"]);
    assert!(daemon.bridges().contains(&"kvtaken".to_owned()));
}

/// `nft flush ruleset` (what restarting Debian's nftables.service does) takes kvnet's
/// table with it; the daemon puts the running networks' rules back, as they were, within
/// seconds: NAT guests get their way out back, isolated ones their isolation.
#[test]
fn rules_flushed_by_someone_else_come_back() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    define_docker_machines(&daemon);
    daemon.ok(&["net-start", "docker-machines"]);
    // Without counters (-s): they count on from zero after the flush.
    let stateless = || {
        daemon
            .ns
            .sh("nft -s list ruleset")
            .expect("nft -s list ruleset")
    };
    let before = stateless();
    assert!(
        before.contains("virbr0") && before.contains("virbr1"),
        "{before}"
    );
    // The whole ruleset (a restart of nftables.service), then only our table's rules,
    // which leaves the sets that say which bridges are ours.
    for flush in ["nft flush ruleset", "nft flush table inet kvnet"] {
        daemon.ns.sh(flush).expect(flush);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let now = stateless();
            if now == before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "rules not back 15 s after {flush}:\n{now}\nbefore:\n{before}\nlog:\n{}",
                daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert!(
        daemon.log().contains("putting them back"),
        "{}",
        daemon.log()
    );
}
