//! netns tier: crash consistency. A daemon killed with SIGKILL at any point of a
//! start leaves, after restart, either a fully running network or no trace of it,
//! and never loses a definition.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, require, xml_file};

/// Asserts the network is either fully up or fully down, and its definition intact.
fn assert_consistent(daemon: &Daemon, name: &str, bridge: &str, definition: &str) {
    let listed = daemon.ok(&["-q", "net-list", "--all"]);
    let active = listed
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>()[..2] == [name, "active"]);
    let has_bridge = daemon.bridges().iter().any(|b| b == bridge);
    let has_rules = daemon.ruleset().contains(bridge);
    assert_eq!(
        (active, has_bridge, has_rules),
        (active, active, active),
        "half-started network {name}:\n{listed}\n{}",
        daemon.log()
    );
    let on_disk = std::fs::read_to_string(daemon.config_dir().join(format!("networks/{name}.xml")))
        .expect("definition kept");
    assert_eq!(on_disk, definition);
}

/// Defines NAT network `name` on `address`/24 and returns its definition file's content.
fn define_nat_network(daemon: &Daemon, name: &str, address: &str) -> String {
    let xml = format!(
        "<network><name>{name}</name><forward/><ip address='{address}' prefix='24'/></network>"
    );
    let path = xml_file(daemon.dirs.path(), &format!("{name}.xml"), &xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    std::fs::read_to_string(daemon.config_dir().join(format!("networks/{name}.xml")))
        .expect("definition")
}

/// A daemon that ran NAT network `name` on `address`/24 and was killed with SIGKILL (the
/// network is left running), and the network's definition file's content.
fn killed_while_running(name: &str, address: &str) -> (Daemon, String) {
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let definition = define_nat_network(&daemon, name, address);
    daemon.ok(&["net-start", name]);
    daemon.kill9();
    (daemon, definition)
}

/// Copies network `from`'s definition file to one of network `to`, without its UUID, as
/// an administrator might: it names the same bridge and MAC address.
fn copy_by_hand(daemon: &Daemon, from: &str, to: &str) {
    let networks = daemon.config_dir().join("networks");
    let copy = std::fs::read_to_string(networks.join(format!("{from}.xml")))
        .expect("the definition")
        .replace(
            &format!("<name>{from}</name>"),
            &format!("<name>{to}</name>"),
        );
    let copy: String = copy
        .lines()
        .filter(|line| !line.contains("<uuid>"))
        .collect();
    std::fs::write(networks.join(format!("{to}.xml")), copy).expect("write the copy");
}

/// Where `daemon` keeps network `name`'s live status.
fn status_path(daemon: &Daemon, name: &str) -> PathBuf {
    daemon.state_dir().join(format!("networks/{name}.json"))
}

/// Rewrites `from` in network `name`'s status file (which must hold it) to `to`, as a
/// daemon killed at another moment would have left it; returns the file's path.
fn rewrite_status(daemon: &Daemon, name: &str, from: &str, to: &str) -> PathBuf {
    let path = status_path(daemon, name);
    let status = std::fs::read_to_string(&path).expect("status");
    assert!(status.contains(from), "{status}");
    std::fs::write(&path, status.replace(from, to)).expect("rewrite the status");
    path
}

#[test]
fn a_start_interrupted_after_its_intent_record_is_undone_on_restart() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let (mut daemon, definition) = killed_while_running("n", "10.55.0.1");

    // Rewind the status to what a daemon killed mid-start leaves: intent recorded,
    // kernel objects (bridge, rules) partly or fully created, success not recorded.
    let status_path = rewrite_status(
        &daemon,
        "n",
        "\"phase\": \"active\"",
        "\"phase\": \"starting\"",
    );

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert!(daemon.bridges().is_empty(), "orphan bridge left");
    assert!(!daemon.ruleset().contains("virbr0"), "orphan rules left");
    assert!(!status_path.exists());
    assert_consistent(&daemon, "n", "virbr0", &definition);
    daemon.ok(&["net-start", "n"]);
    assert_consistent(&daemon, "n", "virbr0", &definition);
}

/// A daemon killed in `net-update --live --config` between its two writes (the status
/// with the new running definition, then the persistent one) finishes the second when it
/// restarts: the definitions never disagree, and a retry is refused the same way by both.
#[test]
fn an_update_of_both_definitions_a_crash_interrupted_is_finished_on_restart() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let before = define_nat_network(&daemon, "n", "10.56.0.1");
    daemon.ok(&["net-start", "n"]);
    let host = "<host mac='52:54:00:56:00:09' name='web9' ip='10.56.0.9'/>";
    daemon.ok(&[
        "net-update",
        "n",
        "add",
        "ip-dhcp-host",
        host,
        "--live",
        "--config",
    ]);
    let config_path = daemon.config_dir().join("networks/n.xml");
    let after = std::fs::read_to_string(&config_path).expect("config");
    assert_ne!(after, before);
    let status_path = status_path(&daemon, "n");
    let status = std::fs::read_to_string(&status_path).expect("status");
    assert!(!status.contains("pending_config"), "{status}");
    daemon.kill9();

    // What a daemon killed between the writes leaves: the new running definition in the
    // status, with the persistent one it was about to write; the old one on disk.
    let mut record: serde_json::Value = serde_json::from_str(&status).expect("json");
    record["pending_config"] = serde_json::Value::String(after.clone());
    std::fs::write(&status_path, record.to_string()).expect("status");
    std::fs::write(&config_path, &before).expect("config");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        std::fs::read_to_string(&config_path).expect("config"),
        after
    );
    assert!(
        daemon
            .ok(&["net-dumpxml", "n", "--inactive"])
            .contains("name='web9'")
    );
    let status = std::fs::read_to_string(&status_path).expect("status");
    assert!(!status.contains("pending_config"), "{status}");
    let retry = daemon.fails(&[
        "net-update",
        "n",
        "add",
        "ip-dhcp-host",
        host,
        "--live",
        "--config",
    ]);
    assert!(retry.contains("existing dhcp host entry"), "{retry}");
    // Nor does a later definition get overwritten by the next restart.
    daemon.ok(&[
        "net-update",
        "n",
        "delete",
        "ip-dhcp-host",
        host,
        "--config",
    ]);
    daemon.stop();
    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        std::fs::read_to_string(&config_path).expect("config"),
        before
    );
}

/// Definition files copied by hand are loaded as libvirt loads them: one whose file name
/// differs from its `<name>`, or that repeats another's `<uuid>` (a copy without a new
/// one), is skipped with a warning and left on disk, and the network it copied is intact.
#[test]
fn copied_definition_files_that_would_clash_are_skipped_and_kept() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let original = define_nat_network(&daemon, "a", "10.57.0.1");
    daemon.stop();
    let networks = daemon.config_dir().join("networks");
    // Renamed file, same content; and a new name with the same <uuid>.
    std::fs::write(networks.join("b.xml"), &original).expect("b.xml");
    let renamed = original.replace("<name>a</name>", "<name>c</name>");
    assert_ne!(renamed, original);
    std::fs::write(networks.join("c.xml"), &renamed).expect("c.xml");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " a   inactive   no   yes\n"
    );
    let log = daemon.log();
    assert!(
        log.contains("skipping definition whose file name differs from its <name>"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains("c.xml") && line.contains("is already defined with uuid")),
        "{log}"
    );
    for (file, content) in [
        ("a.xml", &original),
        ("b.xml", &original),
        ("c.xml", &renamed),
    ] {
        assert_eq!(
            &std::fs::read_to_string(networks.join(file)).expect("kept"),
            content,
            "{file}"
        );
    }
    daemon.ok(&["net-start", "a"]);
}

#[test]
fn kill_9_at_random_points_of_starts_never_leaves_orphans() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let definition = define_nat_network(&daemon, "n", "10.56.0.1");
    for round in 0..8u64 {
        // Spread the kills from before the request arrives to after the start completed.
        let mut start = common::kvnet_command(&daemon.socket())
            .args(["net-start", "n"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn kvnet");
        std::thread::sleep(Duration::from_millis(round * round));
        daemon.kill9();
        let _ = start.wait();
        daemon.spawn(&DaemonOptions::no_default_network());
        assert_consistent(&daemon, "n", "virbr0", &definition);
        if daemon.ok(&["-q", "net-list", "--name"]).contains('n') {
            daemon.ok(&["net-destroy", "n"]);
        }
        assert!(daemon.bridges().is_empty());
    }
}

#[test]
fn a_start_whose_client_goes_away_finishes_anyway() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    // Thousands of reservations keep the start busy long after the client is gone.
    let hosts: String = (0..20_000)
        .map(|i| {
            format!(
                "<host mac='52:54:01:00:{:02x}:{:02x}' ip='10.57.{}.{}'/>",
                i >> 8,
                i & 0xff,
                1 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    let xml = format!(
        "<network><name>n</name><forward/><bridge name='kvgone0'/>\
         <ip address='10.57.0.1' prefix='16'><dhcp>\
         <range start='10.57.200.2' end='10.57.200.254'/>{hosts}</dhcp></ip></network>"
    );
    let path = xml_file(daemon.dirs.path(), "n.xml", &xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    let definition =
        std::fs::read_to_string(daemon.config_dir().join("networks/n.xml")).expect("definition");

    let mut client = std::os::unix::net::UnixStream::connect(daemon.socket()).expect("connect");
    std::io::Write::write_all(
        &mut client,
        b"POST /v1/networks/n/start HTTP/1.1\r\nhost: kvnetd\r\ncontent-length: 0\r\n\r\n",
    )
    .expect("send");
    std::thread::sleep(Duration::from_millis(20));
    drop(client);

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !daemon.ok(&["-q", "net-list", "--name"]).contains('n')
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_consistent(&daemon, "n", "kvgone0", &definition);
    assert!(
        daemon.bridges().iter().any(|b| b == "kvgone0"),
        "the start was abandoned with its client:\n{}",
        daemon.log()
    );
}

#[test]
fn a_restart_after_an_interrupted_undefine_or_write_leaves_no_disagreement() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let (mut daemon, definition) = killed_while_running("n", "10.58.0.1");

    // An undefine killed after it recorded the network as transient, before the
    // definition went; and the temporary files of writes killed before their rename.
    let status_path = rewrite_status(
        &daemon,
        "n",
        "\"persistent\": true",
        "\"persistent\": false",
    );
    let leftovers = [
        daemon.config_dir().join("networks/.n.xml.tmp-4242"),
        daemon
            .config_dir()
            .join("networks/autostart/.n.xml.tmp-4242"),
        daemon.state_dir().join("networks/.n.json.tmp-4242"),
    ];
    for file in &leftovers {
        std::fs::write(file, "half").expect("leftover");
    }

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   active   no   yes\n"
    );
    let status = std::fs::read_to_string(&status_path).expect("status");
    assert!(
        status.contains("\"persistent\": true"),
        "a defined network's status calls it transient: {status}"
    );
    for file in &leftovers {
        assert!(!file.exists(), "{} left behind", file.display());
    }
    assert_consistent(&daemon, "n", "virbr0", &definition);
}

#[test]
fn a_transient_network_a_crash_ended_leaves_no_lease_file() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let create = |daemon: &Daemon, name: &str, octet: u8| {
        let xml = format!(
            "<network><name>{name}</name><forward/><bridge name='kv{name}'/>\
             <ip address='10.59.{octet}.1' prefix='24'><dhcp>\
             <range start='10.59.{octet}.10' end='10.59.{octet}.20'/></dhcp></ip></network>"
        );
        let path = xml_file(daemon.dirs.path(), &format!("{name}.xml"), &xml);
        daemon.ok(&["net-create", path.to_str().expect("path")]);
    };
    create(&daemon, "mid", 1);
    create(&daemon, "gone", 2);
    let state_dir = daemon.state_dir();
    let leases = |name: &str| state_dir.join(format!("networks/{name}.leases"));
    assert!(leases("mid").exists() && leases("gone").exists());
    daemon.kill9();

    // 'mid' was killed mid-start (its intent recorded, its servers already up); the
    // bridge of 'gone' went while the daemon was away (a stop killed halfway).
    rewrite_status(
        &daemon,
        "mid",
        "\"phase\": \"active\"",
        "\"phase\": \"starting\"",
    );
    daemon.ns.sh("ip link del kvgone").expect("delete bridge");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(daemon.ok(&["-q", "net-list", "--all"]), "");
    assert!(daemon.bridges().is_empty(), "{:?}", daemon.bridges());
    for name in ["mid", "gone"] {
        assert!(
            !leases(name).exists(),
            "the lease file of transient network {name} outlived it"
        );
    }
}

/// A start refused because its bridge name was taken (the kernel's EEXIST comes after
/// the intent record) and a daemon killed before clearing that record: recovery must
/// not delete the interface someone else owns under that name.
#[test]
fn recovery_leaves_a_foreign_interface_under_the_bridge_name_alone() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    // As if it had been there when the start ran.
    foreign_bridge_after_a_crash("starting", "leaving interface virbr0 alone");
}

#[test]
fn a_running_network_whose_bridge_name_went_to_someone_else_is_not_adopted() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    // Deleted and made again while the daemon was away (by libvirt, say).
    foreign_bridge_after_a_crash(
        "active",
        "bridge virbr0 is no longer this network's (another MAC address, or not kvnet's)",
    );
}

/// Network n, recorded in `phase` by a daemon killed with SIGKILL, whose bridge name
/// belongs to someone else's bridge (its own MAC address) when the daemon restarts: the
/// network ends up inactive, the foreign bridge untouched and the log says why.
fn foreign_bridge_after_a_crash(phase: &str, logged: &str) {
    let (mut daemon, definition) = killed_while_running("n", "10.56.0.1");
    let status_path = rewrite_status(
        &daemon,
        "n",
        "\"phase\": \"active\"",
        &format!("\"phase\": \"{phase}\""),
    );
    daemon
        .ns
        .sh("ip link del virbr0 && ip link add virbr0 type bridge && ip link set virbr0 up")
        .expect("foreign bridge");
    let foreign_mac = daemon.ip_json("link show virbr0")[0]["address"].clone();

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert_eq!(
        daemon.ip_json("link show virbr0")[0]["address"],
        foreign_mac,
        "the foreign bridge was deleted:\n{}",
        daemon.log()
    );
    assert!(!daemon.ruleset().contains("virbr0"), "orphan rules left");
    assert!(!status_path.exists());
    assert!(daemon.log().contains(logged), "{}", daemon.log());
    let on_disk = std::fs::read_to_string(daemon.config_dir().join("networks/n.xml"))
        .expect("definition kept");
    assert_eq!(on_disk, definition);
}

/// A state directory that takes no new file (full, say) does not keep a network from
/// stopping: only the record of the stop's intent is skipped.
#[test]
fn a_network_stops_when_its_status_cannot_be_rewritten() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "n", "10.59.0.1");
    daemon.ok(&["net-start", "n"]);
    let pid = daemon.pid().expect("daemon pid");
    let blocker = daemon
        .state_dir()
        .join(format!("networks/.n.json.tmp-{pid}"));
    std::fs::create_dir(&blocker).expect("block the status's temporary file");

    assert_eq!(daemon.ok(&["net-destroy", "n"]), "Network n destroyed\n\n");
    assert!(daemon.bridges().is_empty());
    assert!(!daemon.ruleset().contains("virbr0"), "rules left");
    assert!(!status_path(&daemon, "n").exists());
    daemon.assert_logged("stopping without recording it first");
    std::fs::remove_dir(&blocker).expect("unblock");
}

/// A damaged status file says nothing about what ran: the bridge and rules of the
/// network the definition names go, so that the network can be started again.
#[test]
fn an_unreadable_status_does_not_leave_the_bridge_in_the_way() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let (mut daemon, _) = killed_while_running("n", "10.58.0.1");
    let status_path = status_path(&daemon, "n");
    std::fs::write(&status_path, "{\"phase\": ").expect("damage the status");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert!(daemon.bridges().is_empty(), "{}", daemon.log());
    assert!(!daemon.ruleset().contains("virbr0"), "rules left");
    daemon.assert_logged("discarding a damaged status");
    assert_eq!(daemon.ok(&["net-start", "n"]), "Network n started\n\n");
    assert_eq!(daemon.addresses("virbr0"), ["10.58.0.1/24"]);
}

/// A running network whose status file went behind the daemon's back (the state dir
/// emptied by hand) is not adopted, and its bridge, found by the definition's MAC
/// address, goes with its rules: left, it would block every later start of the network.
#[test]
fn a_running_network_whose_status_went_is_cleared_for_its_next_start() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let (mut daemon, _) = killed_while_running("n", "10.59.0.1");
    // A copy of a running network's definition made by hand names its bridge too; that
    // bridge is the running one's, and stays.
    let mut running = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&running, "a", "10.59.1.1");
    running.ok(&["net-start", "a"]);
    running.stop();
    copy_by_hand(&running, "a", "b");
    running.spawn(&DaemonOptions::no_default_network());
    assert_eq!(running.bridges(), ["virbr0"], "{}", running.log());
    assert!(running.ruleset().contains("virbr0"));
    assert!(
        running
            .ok(&["-q", "net-list", "--all"])
            .contains(" a   active"),
        "{}",
        running.log()
    );

    std::fs::remove_file(status_path(&daemon, "n")).expect("remove the status");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert!(daemon.bridges().is_empty(), "{}", daemon.log());
    assert!(!daemon.ruleset().contains("virbr0"), "rules left");
    daemon.assert_logged("a network that ran without a status file");
    assert_eq!(daemon.ok(&["net-start", "n"]), "Network n started\n\n");
}

/// libvirt gives a network's bridge the MAC address its definition names, so a libvirt
/// network's definition copied in (the move kvnet invites) matches libvirt's bridge, which
/// runs on with its guests while libvirtd is stopped. Not in kvnet's link group, it is not
/// taken for one kvnet left behind: the daemon leaves it, and its guests, alone.
#[test]
fn a_libvirt_bridge_matching_a_copied_definition_is_left_alone() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "n", "10.57.0.1");
    let xml = daemon.ok(&["net-dumpxml", "n"]);
    let mac = xml
        .split("<mac address='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("the definition's MAC address");
    daemon.stop();
    daemon
        .ns
        .sh(&format!(
            "ip link add virbr0 address {mac} type bridge && ip addr add 10.57.0.1/24 dev virbr0 \
             && ip link set virbr0 up"
        ))
        .expect("libvirt's bridge");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert_eq!(daemon.bridges(), ["virbr0"], "{}", daemon.log());
    assert_eq!(daemon.addresses("virbr0"), ["10.57.0.1/24"]);
    // A start is refused in libvirt's words; the log says what is likely going on.
    let refused = daemon.fails(&["net-start", "n"]);
    assert!(
        refused.contains("Network is already in use by interface virbr0"),
        "{refused}"
    );
    daemon.assert_logged("has this network's MAC address but is not kvnet's");
    assert_eq!(daemon.addresses("virbr0"), ["10.57.0.1/24"]);
}

/// A bridge an earlier kvnet created, before it put its bridges in its link group, is
/// still adopted by its status (an older version's), and put in the group, the status
/// brought up to date. A current status vouches for a bridge in the group only: the one
/// found under the name is someone else's (libvirt's, made from a copied definition
/// while the daemon was away).
#[test]
fn a_running_bridge_from_before_the_link_group_is_adopted_and_marked() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let (mut daemon, _) = killed_while_running("n", "10.57.1.1");
    let group = |daemon: &Daemon| daemon.ip_json("-d link show virbr0")[0]["group"].clone();
    let kvnet_group = group(&daemon);
    assert_ne!(kvnet_group, "default");
    let unmark = |daemon: &Daemon| {
        daemon
            .ns
            .sh("ip link set virbr0 group default")
            .expect("unmark the bridge");
    };
    unmark(&daemon);
    let status = rewrite_status(&daemon, "n", "\"version\": 2", "\"version\": 1");

    daemon.spawn(&DaemonOptions::no_default_network());
    assert!(
        daemon
            .ok(&["-q", "net-list", "--all"])
            .contains(" n   active"),
        "{}",
        daemon.log()
    );
    assert_eq!(group(&daemon), kvnet_group);
    let rewritten = std::fs::read_to_string(&status).expect("status");
    assert!(rewritten.contains("\"version\": 2"), "{rewritten}");

    daemon.kill9();
    unmark(&daemon);
    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
    assert_eq!(daemon.bridges(), ["virbr0"], "{}", daemon.log());
    daemon.assert_logged("bridge virbr0 is no longer this network's");
}

/// A second kvnetd run in the same network namespace with directories of its own, while
/// the first one is stopped (its networks running on), leaves the first one's networks
/// their firewall rules: their bridges are there, and none is its own.
#[test]
fn a_daemon_with_other_directories_leaves_a_stopped_daemons_rules() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "n", "10.61.0.1");
    daemon.ok(&["net-start", "n"]);
    daemon.stop();
    let ruleset = daemon.ruleset();
    assert!(ruleset.contains("virbr0"), "{ruleset}");

    let other = daemon.dirs.path().join("other");
    let socket = other.join("kvnetd.sock");
    let log = std::fs::File::create(daemon.dirs.path().join("other.log")).expect("log");
    let mut second = daemon
        .ns
        .command(env!("CARGO_BIN_EXE_kvnetd"))
        .arg("--config-dir")
        .arg(other.join("config"))
        .arg("--state-dir")
        .arg(other.join("state"))
        .arg("--socket")
        .arg(&socket)
        .args(["--no-default-network", "--log-level", "info"])
        .arg("--libvirt-leases-dir")
        .arg(other.join("libvirt"))
        .stderr(log)
        .spawn()
        .expect("run a second kvnetd");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second kvnetd did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(second.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM).expect("stop it");
    second.wait().expect("wait");
    let second_log =
        std::fs::read_to_string(daemon.dirs.path().join("other.log")).expect("read its log");
    assert!(
        second_log.contains("keeping the firewall rules of bridge virbr0"),
        "{second_log}"
    );
    assert_eq!(daemon.ruleset(), ruleset);

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(daemon.ok(&["-q", "net-list"]), " n   active   no   yes\n");
}

/// A status that cannot be removed (its directory made immutable) keeps only its own
/// network from being adopted: the daemon starts and takes over the others.
#[test]
fn a_status_that_cannot_be_removed_holds_up_no_other_network() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "kept", "10.57.0.1");
    define_nat_network(&daemon, "damaged", "10.57.1.1");
    daemon.ok(&["net-start", "kept"]);
    daemon.ok(&["net-start", "damaged"]);
    daemon.kill9();
    let statuses = daemon.state_dir().join("networks");
    std::fs::write(statuses.join("damaged.json"), "{\"phase\": ").expect("damage the status");
    let _immutable = Immutable::set(&statuses);

    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " damaged   inactive   no   yes\n kept      active     no   yes\n",
        "{}",
        daemon.log()
    );
    daemon.assert_logged("its status file stays on disk");
    assert!(statuses.join("damaged.json").exists());
}

/// Makes a directory immutable (no entry can be added or removed, even by root) until
/// dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Self {
        chattr("+i", dir);
        Self(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

fn chattr(change: &str, path: &Path) {
    let status = std::process::Command::new("chattr")
        .arg(change)
        .arg(path)
        .status()
        .expect("run chattr");
    assert!(
        status.success(),
        "chattr {change} {} failed",
        path.display()
    );
}

/// A status file that cannot be read at the moment (here a directory in its place;
/// permissions or a disk error elsewhere) is not a damaged one: the network may be
/// running, so its bridge and the file stay as they are.
#[test]
fn a_status_that_cannot_be_read_now_leaves_the_running_network_alone() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    if !require(&common::port_needs()) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "n", "10.59.0.1");
    daemon.ok(&["net-start", "n"]);
    let port = xml_file(
        daemon.dirs.path(),
        "port.xml",
        &common::port_xml("vm1", "52:54:00:59:00:01"),
    );
    daemon.ok(&["net-port-create", "n", &port.to_string_lossy()]);
    daemon.kill9();
    let status_path = status_path(&daemon, "n");
    std::fs::remove_file(&status_path).expect("remove the status");
    std::fs::create_dir(&status_path).expect("a directory in its place");
    // A copy of its definition made by hand names its bridge and MAC too: the bridge
    // may still be the running network's.
    copy_by_hand(&daemon, "n", "copy");

    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.assert_logged("cannot read the status");
    assert_eq!(daemon.bridges(), ["virbr0"], "{}", daemon.log());
    assert_eq!(daemon.addresses("virbr0"), ["10.59.0.1/24"]);
    assert!(status_path.is_dir(), "the status was removed");
    // The guest keeps its link and its NAT.
    let tap = &daemon.ip_json("link show vnet0")[0];
    assert_eq!(tap["master"], "virbr0", "{tap}\n{}", daemon.log());
    assert!(daemon.ruleset().contains("virbr0"), "{}", daemon.ruleset());
    assert!(daemon.state_dir().join("networks/n.ports").exists());
}

/// The bridge of a running network deleted behind kvnet's back and its name taken by
/// someone else's bridge: net-destroy removes the network's rules and leaves that bridge.
#[test]
fn net_destroy_leaves_someone_elses_bridge_under_the_name_alone() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "n", "10.57.0.1");
    daemon.ok(&["net-start", "n"]);
    daemon
        .ns
        .sh("ip link del virbr0 && ip link add virbr0 type bridge")
        .expect("foreign bridge");
    let foreign_mac = daemon.ip_json("link show virbr0")[0]["address"].clone();

    assert_eq!(daemon.ok(&["net-destroy", "n"]), "Network n destroyed\n\n");
    assert_eq!(
        daemon.ip_json("link show virbr0")[0]["address"],
        foreign_mac,
        "the foreign bridge was deleted:\n{}",
        daemon.log()
    );
    assert!(!daemon.ruleset().contains("virbr0"), "rules left");
    daemon.assert_logged("leaving interface virbr0 alone: it is not the network's bridge");
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " n   inactive   no   yes\n"
    );
}

/// A second daemon on the same state dir (a manual start beside systemd's) would adopt
/// the same networks and fight over them: it is refused, naming the running one, and
/// changes nothing.
#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused_and_changes_nothing() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start();
    let bridges = daemon.bridges();
    let ruleset = daemon.ruleset();
    let second_socket = daemon.dirs.path().join("second.sock");
    // A second daemon on the first one's state dir: its refusal, on stderr.
    let refusal = || {
        let second = daemon
            .ns
            .command(env!("CARGO_BIN_EXE_kvnetd"))
            .arg("--config-dir")
            .arg(daemon.config_dir())
            .arg("--state-dir")
            .arg(daemon.state_dir())
            .arg("--socket")
            .arg(&second_socket)
            .output()
            .expect("run a second kvnetd");
        assert!(!second.status.success());
        assert!(!second_socket.exists());
        String::from_utf8_lossy(&second.stderr).into_owned()
    };
    let stderr = refusal();
    let expected = format!(
        "another kvnetd (pid {}) is already running with the state dir {}",
        daemon.pid().expect("pid"),
        daemon.state_dir().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    // A first daemon that could not write its pid (a full /run) runs all the same; the
    // lock still keeps a second one out.
    std::fs::write(daemon.state_dir().join("kvnetd.pid"), "").expect("empty the pid file");
    let stderr = refusal();
    assert!(
        stderr.contains("another kvnetd (its pid not recorded) is already running"),
        "{stderr}"
    );

    // With a state dir of its own but the first one's socket, it would take the socket
    // over and remove the rules of networks it does not know.
    let socket_inode = std::fs::metadata(daemon.socket()).expect("socket").ino();
    let second = daemon
        .ns
        .command(env!("CARGO_BIN_EXE_kvnetd"))
        .arg("--config-dir")
        .arg(daemon.dirs.path().join("second-config"))
        .arg("--state-dir")
        .arg(daemon.dirs.path().join("second-state"))
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--no-default-network")
        .output()
        .expect("run a second kvnetd");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let expected = format!(
        "another kvnetd already serves on the socket {}",
        daemon.socket().display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    let socket_now = std::fs::metadata(daemon.socket()).expect("socket").ino();
    assert_eq!(socket_now, socket_inode);

    assert_eq!(daemon.bridges(), bridges);
    assert_eq!(daemon.ruleset(), ruleset);
    assert_eq!(
        daemon.ok(&["-q", "net-list"]),
        " default   active   yes   yes\n"
    );
}

/// A socket in a directory other users may write to is refused before the daemon
/// starts anything: no network of its own comes up and is left behind.
#[test]
fn a_socket_in_a_directory_others_may_write_is_refused_before_any_network_starts() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let bridges = daemon.bridges();
    // Another daemon, with the default network it would start, on `socket`: refused
    // with `refusal`, having started nothing.
    let refused = |socket: std::path::PathBuf, refusal: &str| {
        let out = daemon
            .ns
            .command(env!("CARGO_BIN_EXE_kvnetd"))
            .arg("--config-dir")
            .arg(daemon.dirs.path().join("other-config"))
            .arg("--state-dir")
            .arg(daemon.dirs.path().join("other-state"))
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run kvnetd");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(refusal), "{stderr}");
        assert_eq!(daemon.bridges(), bridges, "its default network was started");
    };
    let open_dir = daemon.dirs.path().join("open");
    std::fs::create_dir(&open_dir).expect("dir");
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    refused(
        open_dir.join("kvnetd.sock"),
        "other users may replace files in",
    );
    // Nor when a file that is no socket is where its read-only socket would go.
    let safe_dir = daemon.dirs.path().join("safe");
    std::fs::create_dir(&safe_dir).expect("dir");
    std::fs::write(safe_dir.join("kvnetd-ro.sock"), "notes").expect("a file");
    refused(
        safe_dir.join("kvnetd.sock"),
        "a file that is not a socket is there",
    );
}

/// The pid file is root's alone, and a clean stop removes it: a lock someone took on
/// it (a shared one, which any reader of the file can take) keeps no later daemon out.
#[test]
fn nobody_can_keep_the_next_daemon_out_by_locking_the_pid_file() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let pid_file = daemon.state_dir().join("kvnetd.pid");
    daemon.stop();
    // As an older kvnetd left it: readable by all, and held open by some reader.
    std::fs::write(&pid_file, "1\n").expect("old pid file");
    std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let held = std::fs::File::open(&pid_file).expect("open the pid file");
    daemon.spawn(&DaemonOptions::no_default_network());
    let mode = std::fs::metadata(&pid_file).expect("pid file").mode();
    assert_eq!(mode & 0o777, 0o600);
    daemon.stop();
    assert!(!pid_file.exists(), "a clean stop leaves the pid file");
    let _shared =
        nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockSharedNonblock).expect("lock");
    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.ok(&["net-list"]);
}

/// A daemon killed between binding its socket under a staging name and renaming it
/// into place leaves the staging file; the next daemon removes it, but not one whose
/// daemon is still alive.
#[test]
fn staging_sockets_of_dead_daemons_are_removed_at_start() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    daemon.stop();
    // Above the kernel's pid limit: that process cannot exist.
    let dead = daemon.dirs.path().join(".kvnetd.sock.4194305");
    let alive = daemon.dirs.path().join(".kvnetd.sock.1");
    for path in [&dead, &alive] {
        std::os::unix::net::UnixListener::bind(path).expect("leftover socket");
    }
    daemon.spawn(&DaemonOptions::no_default_network());
    assert!(!dead.exists(), "a dead daemon's staging socket stayed");
    assert!(
        alive.exists(),
        "a live process's staging socket was removed"
    );
}

#[test]
fn a_definition_that_cannot_be_loaded_keeps_its_leases_and_ports_until_it_is_mended() {
    if !require(&common::port_needs()) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let xml = "<network><name>lab</name><forward/><ip address='10.56.0.1' prefix='24'>\
               <dhcp><range start='10.56.0.10' end='10.56.0.20'/></dhcp></ip></network>";
    let path = xml_file(daemon.dirs.path(), "lab.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "lab"]);
    let port = xml_file(
        daemon.dirs.path(),
        "port.xml",
        &common::port_xml("vm1", "52:54:00:56:00:01"),
    );
    daemon.ok(&["net-port-create", "lab", port.to_str().expect("path")]);
    daemon.ok(&["net-destroy", "lab"]);
    let taps = |daemon: &Daemon| daemon.ns.sh("ip -br link show type tun").expect("ip");
    assert!(!taps(&daemon).trim().is_empty(), "the parked port's tap");
    let definition_path = daemon.config_dir().join("networks/lab.xml");
    let definition = std::fs::read(&definition_path).expect("definition");
    let lease_file = daemon.state_dir().join("networks/lab.leases");
    let ports_file = daemon.state_dir().join("networks/lab.ports");
    assert!(lease_file.exists() && ports_file.exists());

    // A hand edit gone wrong, in bytes that are not even UTF-8.
    daemon.kill9();
    std::fs::write(&definition_path, b"<network>\xff").expect("break the definition");
    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.assert_logged("skipping unreadable definition");
    assert_eq!(daemon.ok(&["net-list", "--all", "--name"]).trim(), "");
    assert!(!taps(&daemon).trim().is_empty(), "the tap was deleted");
    assert!(lease_file.exists() && ports_file.exists(), "files deleted");

    // Mended: the network, its port and its leases are all there again.
    daemon.kill9();
    std::fs::write(&definition_path, definition).expect("mend the definition");
    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(daemon.ok(&["net-list", "--all", "--name"]).trim(), "lab");
    daemon.ok(&["net-start", "lab"]);
    let ports = daemon.ok(&["net-port-list", "lab", "--uuid"]);
    assert_eq!(ports.split_whitespace().count(), 1, "{ports}");

    // Broken while it runs: adopted, and stopping it keeps its leases and port too.
    daemon.kill9();
    std::fs::write(&definition_path, b"<network").expect("break the definition");
    daemon.spawn(&DaemonOptions::no_default_network());
    daemon.ok(&["net-destroy", "lab"]);
    assert!(!taps(&daemon).trim().is_empty(), "the tap was deleted");
    assert!(lease_file.exists() && ports_file.exists(), "files deleted");
}

/// Defines autostart NAT networks `names` (10.61.0.0/24 on), stops the daemon, and
/// installs a hook that hangs b's start (`sleep 60`, its pid appended to the file
/// returned), every time or only the first; the options of a daemon after a reboot (a
/// new state dir, so autostart runs).
fn autostart_with_b_hanging(
    daemon: &mut Daemon,
    names: &[&str],
    only_once: bool,
) -> (PathBuf, DaemonOptions) {
    for (n, name) in names.iter().enumerate() {
        define_nat_network(daemon, name, &format!("10.{}.0.1", 61 + n));
        daemon.ok(&["net-autostart", name]);
    }
    daemon.stop();
    let hung = daemon.dirs.path().join("hung");
    let once = if only_once {
        format!(" && [ ! -e {} ]", hung.display())
    } else {
        String::new()
    };
    install_network_hook(
        daemon,
        &format!(
            "#!/bin/sh\ncat > /dev/null\n\
             if [ \"$1 $2\" = \"b start\" ]{once}; then echo $$ >> {0}; exec sleep 60; fi\n",
            hung.display()
        ),
    );
    let options = DaemonOptions {
        state_dir: Some(daemon.dirs.path().join("run-after-reboot")),
        ..DaemonOptions::no_default_network()
    };
    (hung, options)
}

/// Launches the daemon, waits until b's hook has hung for the `death`th time, and kills
/// both, as systemd would after its start timeout.
fn kill_while_b_hangs(daemon: &mut Daemon, options: &DaemonOptions, hung: &Path, death: usize) {
    daemon.launch(options);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let hook_pid = loop {
        let pids = std::fs::read_to_string(hung).unwrap_or_default();
        if pids.lines().count() == death && pids.ends_with('\n') {
            break pids.lines().last().unwrap_or_default().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b's start hook did not run:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    daemon.kill9();
    let _ = std::process::Command::new("kill").arg(&hook_pid).status();
}

/// A daemon killed while it autostarts the networks at boot (a hook that hangs, the OOM
/// killer) starts the ones it did not get to when it is restarted in the same boot.
#[test]
fn a_daemon_killed_during_boot_autostart_starts_the_rest_when_restarted() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let (hung, options) = autostart_with_b_hanging(&mut daemon, &["a", "b"], true);
    kill_while_b_hangs(&mut daemon, &options, &hung, 1);
    daemon.spawn(&options);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--name"]),
        "a\nb\n",
        "{}",
        daemon.log()
    );
}

/// A network whose autostart kills the daemon every time (its hook hangs past the
/// service's start timeout) is tried twice, then skipped: the networks after it start.
#[test]
fn a_network_whose_autostart_a_daemon_dies_in_twice_is_skipped() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let (hung, options) = autostart_with_b_hanging(&mut daemon, &["a", "b", "c"], false);
    for death in 1..=2 {
        kill_while_b_hangs(&mut daemon, &options, &hung, death);
    }
    daemon.spawn(&options);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--name"]),
        "a\nc\n",
        "{}",
        daemon.log()
    );
    assert!(
        daemon
            .log()
            .contains("not autostarted: daemons died while starting it"),
        "{}",
        daemon.log()
    );
}

/// A new (empty) config dir while libvirt's default network runs from the state dir: the
/// daemon adopts it as transient and starts, rather than failing to define a second one.
#[test]
fn a_new_config_dir_beside_a_running_default_network_still_starts() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.stop();
    std::fs::remove_dir_all(daemon.config_dir()).expect("remove the config dir");
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " default   active   no   no\n"
    );
    assert!(
        daemon
            .log()
            .contains("a transient network named default is running"),
        "{}",
        daemon.log()
    );
    daemon.stop();
    // And the next start is not a first start any more.
    daemon.spawn(&DaemonOptions::default());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " default   active   no   no\n"
    );
}

/// A FIFO where the daemon keeps a file (a status, port records, the autostart marker,
/// a definition, a lease journal) must not hold it up: each is refused, naming the
/// file, and everything else is served.
#[test]
fn fifos_in_the_config_and_state_dirs_hold_nothing_up() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let definition = define_nat_network(&daemon, "leasing", "10.77.1.1");
    daemon.stop();
    let fifo = |path: PathBuf| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        path
    };
    let state = daemon.state_dir();
    // A new boot, whose autostart marker is a FIFO.
    for marker in ["autostarted", "autostarting"] {
        let _ = std::fs::remove_file(state.join(marker));
    }
    let fifos = [
        fifo(state.join("networks/stuck.json")),
        fifo(state.join("networks/leasing.ports")),
        fifo(state.join("autostarting")),
        fifo(daemon.config_dir().join("networks/piped.xml")),
    ];
    daemon.spawn(&Default::default());
    daemon.ok(&["net-list", "--all"]);
    for path in &fifos {
        daemon.assert_logged(&format!("{}: not a regular file", path.display()));
    }

    // The lease journal: the start is refused, naming it, and leaves nothing behind.
    let xml = "<network><name>pipe</name><ip address='10.77.2.1' prefix='24'>\
               <dhcp><range start='10.77.2.10' end='10.77.2.20'/></dhcp></ip></network>";
    let path = xml_file(daemon.dirs.path(), "pipe.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    let journal = fifo(state.join("networks/pipe.leases"));
    let refused = daemon.fails(&["net-start", "pipe"]);
    assert!(
        refused.contains(&journal.display().to_string()),
        "{refused}"
    );
    assert!(refused.contains("not a regular file"), "{refused}");
    assert!(daemon.bridges().is_empty(), "{:?}", daemon.bridges());
    daemon.ok(&["net-start", "leasing"]);
    assert_consistent(&daemon, "leasing", "virbr0", &definition);
}

/// A status file whose XML names another network (copied or edited by hand) is not
/// adopted: two entries would claim one bridge, and destroying one would take the
/// other's bridge down.
#[test]
fn a_status_describing_another_network_is_not_adopted() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    let first = define_nat_network(&daemon, "first", "10.78.1.1");
    let second = define_nat_network(&daemon, "second", "10.78.2.1");
    daemon.ok(&["net-start", "first"]);
    daemon.ok(&["net-start", "second"]);
    daemon.stop();
    let statuses = daemon.state_dir().join("networks");
    std::fs::copy(statuses.join("second.json"), statuses.join("first.json")).expect("copy");
    daemon.spawn(&Default::default());
    daemon.assert_logged("the status file describes network 'second', not this one");
    let listed = daemon.ok(&["-q", "net-list", "--all"]);
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|line| line.split_whitespace().take(2).collect())
        .collect();
    assert_eq!(
        rows,
        [["first", "inactive"], ["second", "active"]],
        "{listed}"
    );
    // first's bridge is left as it was; second stays whole.
    assert_eq!(daemon.bridges(), ["virbr0", "virbr1"]);
    daemon.fails(&["net-destroy", "first"]);
    assert_consistent(&daemon, "second", "virbr1", &second);
    let on_disk = std::fs::read_to_string(daemon.config_dir().join("networks/first.xml"))
        .expect("definition kept");
    assert_eq!(on_disk, first);
}

/// The autostart link of a definition that could not be loaded stays, and a network
/// defined again under that name says autostart, as a restart would find it.
#[test]
fn a_definition_replacing_an_unreadable_one_shows_its_autostart_link() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    daemon.stop();
    let networks = daemon.config_dir().join("networks");
    std::fs::create_dir_all(networks.join("autostart")).expect("dirs");
    std::fs::write(
        networks.join("x.xml"),
        "<network><name>x</name><bogus/></network>",
    )
    .expect("unreadable definition");
    std::os::unix::fs::symlink("../x.xml", networks.join("autostart/x.xml")).expect("link");
    // A copy kept from an earlier replacement stays.
    std::fs::write(networks.join("x.xml.unloadable"), "earlier").expect("earlier copy");
    daemon.spawn(&Default::default());
    daemon.assert_logged("skipping unreadable definition");
    define_nat_network(&daemon, "x", "10.78.3.1");
    daemon.assert_logged("replaced a definition file that could not be loaded (kept as ");
    // The file it replaced is kept, and is no definition.
    let kept = std::fs::read_to_string(networks.join("x.xml.unloadable.1")).expect("kept copy");
    assert_eq!(kept, "<network><name>x</name><bogus/></network>");
    let earlier = std::fs::read_to_string(networks.join("x.xml.unloadable")).expect("earlier");
    assert_eq!(earlier, "earlier");
    daemon.stop();
    daemon.spawn(&Default::default());
    assert_eq!(daemon.ok(&["-q", "net-list", "--all", "--name"]), "x\n");
    let listed = daemon.ok(&["-q", "net-list", "--all"]);
    assert_eq!(
        listed.split_whitespace().collect::<Vec<_>>(),
        ["x", "inactive", "yes", "yes"],
        "{listed}"
    );
}

/// SIGHUP reads the definitions again, as libvirt's daemons do: a file copied in
/// defines its network (completed and saved, and started, its autostart link being
/// followed), an inactive network's edited file is its definition now, a running
/// network's is the one it starts with next, and a file a define would refuse is
/// skipped, its network left as it was. The daemon keeps running throughout.
#[test]
fn sighup_reloads_the_definitions_on_disk() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let kept = define_nat_network(&daemon, "kept", "10.58.0.1");
    let running = define_nat_network(&daemon, "running", "10.58.1.1");
    let clashing = define_nat_network(&daemon, "clashing", "10.58.2.1");
    daemon.ok(&["net-start", "running"]);
    let live = daemon.ok(&["net-dumpxml", "running"]);
    let networks = daemon.config_dir().join("networks");
    std::fs::write(
        networks.join("copied.xml"),
        "<network><name>copied</name><forward/><ip address='10.58.3.1' prefix='24'/></network>",
    )
    .expect("copied.xml");
    // libvirt's autostart links point into its own directory.
    std::os::unix::fs::symlink(
        "/etc/libvirt/qemu/networks/copied.xml",
        networks.join("autostart/copied.xml"),
    )
    .expect("autostart link");
    let edit = |name: &str, text: String| {
        std::fs::write(networks.join(format!("{name}.xml")), text).expect("edit")
    };
    edit("kept", kept.replace("10.58.0.1", "10.58.4.1"));
    edit("running", running.replace("10.58.1.1", "10.58.5.1"));
    // Running's bridge: a define would refuse it.
    let running_bridge = running
        .split("<bridge name='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("bridge name");
    let clashing_bridge = clashing
        .split("<bridge name='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .expect("bridge name");
    let clash = clashing
        .replace(clashing_bridge, running_bridge)
        .replace("10.58.2.1", "10.58.6.1");
    edit("clashing", clash.clone());
    std::fs::write(networks.join("broken.xml"), "<network><name>broken").expect("broken");
    let pid = daemon.pid().expect("pid");

    let hup = || sighup(&daemon);
    hup();
    reloads_done(&daemon, 1);
    assert_eq!(daemon.pid(), Some(pid), "{}", daemon.log());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " clashing   inactive   no    yes\n copied     active     yes   yes\n kept       inactive   no    yes\n running    active     no    yes\n",
        "{}",
        daemon.log()
    );
    // Completed with a UUID and a bridge, and saved.
    let copied = std::fs::read_to_string(networks.join("copied.xml")).expect("copied");
    assert!(
        copied.contains("<uuid>") && copied.contains("<bridge name='virbr"),
        "{copied}"
    );
    assert!(daemon.ok(&["net-dumpxml", "kept"]).contains("10.58.4.1"));
    assert_eq!(daemon.ok(&["net-dumpxml", "running"]), live);
    assert!(
        daemon
            .ok(&["net-dumpxml", "--inactive", "running"])
            .contains("10.58.5.1")
    );
    assert!(
        daemon
            .ok(&["net-dumpxml", "clashing"])
            .contains("10.58.2.1")
    );
    let log = daemon.log();
    for skipped in ["broken.xml", "clashing.xml"] {
        assert!(
            log.lines()
                .any(|l| l.contains(skipped) && l.contains("file skipped")),
            "{skipped}: {log}"
        );
    }
    // Files are read, never rewritten, unless completed.
    assert_eq!(
        std::fs::read_to_string(networks.join("clashing.xml")).expect("clashing"),
        clash
    );

    // A second SIGHUP with nothing new changes nothing.
    hup();
    reloads_done(&daemon, 2);
    let log = daemon.log();
    assert_eq!(
        log.matches("definition reloaded from its file").count(),
        2,
        "{log}"
    );
    assert_eq!(log.matches("defined from its file").count(), 1, "{log}");
    assert_eq!(daemon.pid(), Some(pid));
}

/// Waits until `daemon` has logged the end of `count` reloads.
fn reloads_done(daemon: &Daemon, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while daemon.log().matches("reload done").count() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "reload {count} not done: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Installs `script` as the daemon's `hooks/network`, executable.
fn install_network_hook(daemon: &Daemon, script: &str) {
    let hook = daemon.config_dir().join("hooks/network");
    std::fs::create_dir_all(hook.parent().expect("hooks dir")).expect("hooks dir");
    std::fs::write(&hook, script).expect("hook");
    std::fs::set_permissions(&hook, PermissionsExt::from_mode(0o755)).expect("chmod");
}

/// Sends the daemon SIGHUP: a reload.
fn sighup(daemon: &Daemon) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.pid().expect("pid").to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Installs a hook that holds `network`'s start (and so the daemon's lock) for 2 s;
/// returns the file it touches as it begins, once [`wait_for_file`] saw it.
fn slow_start_hook(daemon: &Daemon, network: &str) -> PathBuf {
    let started = daemon.dirs.path().join(format!("{network}-starting"));
    install_network_hook(
        daemon,
        &format!(
            "#!/bin/sh\ncat > /dev/null\n\
             if [ \"$1 $2\" = \"{network} start\" ]; then touch {}; sleep 2; fi\n",
            started.display()
        ),
    );
    started
}

/// Waits (20 s at most) until `path` exists.
fn wait_for_file(daemon: &Daemon, path: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reload reads the files once the changes ahead of it are done: an undefine waiting
/// for the lock when SIGHUP comes is not undone by the file it removed.
#[test]
fn a_reload_does_not_bring_back_a_network_undefined_just_before() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "slow", "10.59.0.1");
    define_nat_network(&daemon, "victim", "10.59.1.1");
    let started = slow_start_hook(&daemon, "slow");
    let socket = daemon.socket();
    // The start holds the daemon's lock while its hook sleeps.
    let start = {
        let socket = socket.clone();
        std::thread::spawn(move || common::kvnet_at(&socket, &["net-start", "slow"]))
    };
    wait_for_file(&daemon, &started);
    let undefine =
        std::thread::spawn(move || common::kvnet_at(&socket, &["net-undefine", "victim"]));
    // The undefine waits for the lock, then the reload is asked for.
    std::thread::sleep(Duration::from_millis(300));
    sighup(&daemon);
    assert!(start.join().expect("start").status.success());
    assert!(undefine.join().expect("undefine").status.success());
    reloads_done(&daemon, 1);
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " slow   active   no   yes\n",
        "{}",
        daemon.log()
    );
    assert!(!daemon.config_dir().join("networks/victim.xml").exists());
}

/// A definition that could not be loaded at start and is mended by hand counts as
/// loaded after a reload: the firewall's stale rules are no longer kept for it.
#[test]
fn a_definition_mended_and_reloaded_is_no_longer_held_back() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    let good = define_nat_network(&daemon, "mended", "10.59.2.1");
    daemon.ok(&["net-start", "mended"]);
    daemon.stop();
    let path = daemon.config_dir().join("networks/mended.xml");
    std::fs::write(&path, "<network><name>mended").expect("break");
    daemon.spawn(&DaemonOptions::no_default_network());
    let held_back = "keeping the firewall rules of inactive networks";
    assert!(daemon.log().contains(held_back), "{}", daemon.log());
    std::fs::write(&path, &good).expect("mend");
    let before = daemon.log().matches(held_back).count();
    sighup(&daemon);
    reloads_done(&daemon, 1);
    let log = daemon.log();
    assert_eq!(log.matches(held_back).count(), before, "{log}");
    assert!(
        daemon
            .ok(&["net-dumpxml", "--inactive", "mended"])
            .contains("10.59.2.1")
    );
}

/// A reload is a change: a SIGTERM while it autostarts a network waits for that start to
/// end. Before, the daemon exited at once, leaving the network half-started, and the
/// next daemon, this boot's autostart done, undid it and left it down.
#[test]
fn a_stop_during_a_reload_waits_for_the_networks_it_starts() {
    if !require(DAEMON_NEEDS) {
        return;
    }
    let mut daemon = Daemon::start_with(DaemonOptions::no_default_network());
    define_nat_network(&daemon, "late", "10.59.3.1");
    daemon.ok(&["net-autostart", "late"]);
    let starting = slow_start_hook(&daemon, "late");
    sighup(&daemon);
    wait_for_file(&daemon, &starting);
    daemon.stop();
    assert_eq!(daemon.bridges().len(), 1, "{}", daemon.log());
    daemon.spawn(&DaemonOptions::no_default_network());
    assert_eq!(
        daemon.ok(&["-q", "net-list", "--all"]),
        " late   active   yes   yes\n",
        "{}",
        daemon.log()
    );
}
