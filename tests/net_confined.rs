//! netns tier: kvnetd confined as `dist/kvnetd.service` confines it. The unit's
//! capability bounding set is read from the file and applied with `setpriv`, as systemd
//! applies it to a root service, so a capability the daemon comes to need, or one taken
//! out of the unit, fails here instead of on a user's host. `systemd-analyze verify`
//! checks that systemd knows every setting of the unit.

mod common;

use common::{DAEMON_NEEDS, Daemon, DaemonOptions, Need, require};
use netd::api::client::Client;

const UNIT: &str = include_str!("../dist/kvnetd.service");

/// The values of `key=` lines in the unit.
fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// `CapabilityBoundingSet=` as (setpriv's name, capability number).
fn bounding_set() -> Vec<(String, u32)> {
    let values = unit_values("CapabilityBoundingSet");
    assert_eq!(
        values.len(),
        1,
        "one CapabilityBoundingSet= line: {values:?}"
    );
    values[0]
        .split_whitespace()
        .map(|cap| {
            let number = match cap {
                "CAP_NET_BIND_SERVICE" => 10,
                "CAP_NET_ADMIN" => 12,
                "CAP_NET_RAW" => 13,
                other => panic!("{other}: add its number (linux/capability.h) to this table"),
            };
            let name = cap.trim_start_matches("CAP_").to_ascii_lowercase();
            (name, number)
        })
        .collect()
}

/// The effective capability mask of a process, from `/proc/PID/status`.
fn effective_capabilities(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .expect("CapEff line");
    u64::from_str_radix(hex.trim(), 16).expect("hex mask")
}

const PORT_XML: &str = "<networkport>
  <owner><name>confined</name><uuid>0ab5e2c4-5c1d-4f49-9f53-6b4f0a8f7e21</uuid></owner>
  <mac address='52:54:00:c0:ff:01'/>
  <bandwidth><inbound average='1000'/><outbound average='500'/></bandwidth>
</networkport>
";

#[test]
fn kvnetd_serves_its_networks_with_only_the_units_capabilities() {
    if !require(DAEMON_NEEDS)
        || !require(&[
            Need::Tun,
            Need::Program("setpriv"),
            Need::Program("busybox"),
        ])
    {
        return;
    }
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    let caps = bounding_set();
    let confined = DaemonOptions {
        capabilities: Some(caps.iter().map(|(name, _)| name.clone()).collect()),
        ..DaemonOptions::default()
    };
    let mut daemon = Daemon::start_with(confined.clone());
    let mask = caps
        .iter()
        .fold(0u64, |mask, (_, number)| mask | 1 << number);
    assert_eq!(
        effective_capabilities(daemon.pid().expect("pid")),
        mask,
        "the daemon runs with exactly the unit's capabilities"
    );

    // First start: `default` is defined and autostarted, rules and all.
    assert_eq!(daemon.bridges(), ["virbr0"]);
    assert!(daemon.ruleset().contains("table inet kvnet"));
    // DHCP (and the port it binds) for a guest.
    let guest = testkit::Netns::new("confguest").expect("guest ns");
    common::attach_guest(&daemon, &guest, "virbr0", "", "");
    common::wait_for_forwarding(&daemon, "vg0");
    let bound = common::udhcpc_lease(&daemon, &guest, "conf1");
    assert!(bound.ip.starts_with("192.168.122."), "{bound:?}");
    // A port: a tap made, given to its owner, plugged in and shaped (tc, and an IFB device
    // with its IPv6 sysctl).
    let client = Client::new(daemon.socket());
    let port = client.create_port("default", PORT_XML).expect("port");
    assert!(testkit::htb_class(&daemon.ns, &port.tap).contains(" rate 8Mbit "));
    let ifbs = daemon.ns.sh("ip -br link show type ifb").expect("ip link");
    assert!(ifbs.contains("kvifb"), "{ifbs}");
    // An IPv6 network: router advertisements go out of a raw ICMPv6 socket (CAP_NET_RAW
    // on every kernel), DHCPv6 binds port 547.
    let v6 = common::xml_file(
        &daemon.config_dir(),
        "v6.xml",
        "<network><name>v6</name><bridge name='kvconf6'/>\
         <ip family='ipv6' address='fd00:c0f::1' prefix='64'>\
         <dhcp><range start='fd00:c0f::10' end='fd00:c0f::ff'/></dhcp></ip></network>",
    );
    daemon.ok(&["net-create", v6.to_str().expect("utf-8 path")]);
    daemon.ok(&["net-destroy", "v6"]);

    // A restart of the network, and of the daemon, which adopts it.
    daemon.ok(&["net-destroy", "default"]);
    daemon.ok(&["net-start", "default"]);
    assert_eq!(client.ports("default").expect("ports"), [port]);
    daemon.stop();
    daemon.spawn(&confined);
    assert!(daemon.log().contains("adopted running network"));
    assert!(!daemon.log().contains("WARN"), "{}", daemon.log());
}

#[test]
fn systemd_knows_every_setting_of_the_unit() {
    if !require(&[Need::Program("systemd-analyze")]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let unit = dir.path().join("kvnetd.service");
    // verify also checks that ExecStart= names an executable.
    let local = UNIT.replace("/usr/local/sbin/kvnetd", env!("CARGO_BIN_EXE_kvnetd"));
    assert_ne!(local, UNIT, "ExecStart= moved");
    std::fs::write(&unit, local).expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Complaints about the host's own units are not ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("kvnetd.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{stderr}");
}
