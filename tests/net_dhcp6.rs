//! netns tier: DHCPv6. A network whose IPv6 `<ip>` has `<dhcp>` hands addresses to
//! ISC dhclient (`-6`): a reserved DUID gets its address and name, which DNS then
//! resolves; the lease is listed by `net-dhcp-leases`; renewals (sent by the test as
//! raw RENEW messages, since dhclient renews only after T1) keep the address, also
//! across a daemon restart; dhclient's release frees it.

mod common;

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use common::{DAEMON_NEEDS, Daemon, Need, Netns, attach_guest, require, xml_file};

const NET_XML: &str = "<network>
  <name>v6</name>
  <domain name='v6.test'/>
  <bridge name='kvv6' stp='off'/>
  <mac address='52:54:00:00:06:01'/>
  <ip family='ipv6' address='fd00:6::1' prefix='64'>
    <dhcp>
      <range start='fd00:6::1:10' end='fd00:6::1:ff'/>
      <host id='0:3:0:1:52:54:0:0:6:2' name='atlas' ip='fd00:6::3:1'/>
    </dhcp>
  </ip>
</network>
";

/// The guest's MAC; dhclient's `-D LL` makes its DUID-LL from it, the reserved id.
const GUEST_MAC: &str = "52:54:00:00:06:02";
const GUEST_DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0, 6, 2];
/// The server's DUID-LL, made from the bridge's `<mac>`.
const SERVER_DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0, 6, 1];

/// Runs dhclient -6 in `guest` until it binds (it then stays in the background) and
/// returns what its script saw: `reason|address|name servers|domain search`.
fn dhclient_bind(daemon: &Daemon, guest: &Netns) -> String {
    let dir = daemon.dirs.path();
    let script = dir.join("dhclient6.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6)\n\
         ip -6 addr replace \"$new_ip6_address/64\" dev \"$interface\" nodad\n\
         echo \"$reason|$new_ip6_address|$new_dhcp6_name_servers|$new_dhcp6_domain_search\" > \"$0.out\";;\nesac\nexit 0\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    guest
        .sh(&format!(
            "timeout 30 dhclient -6 -1 -D LL -lf {dir}/dhclient6.leases -pf {dir}/dhclient6.pid -sf {script} eth0",
            dir = dir.display(),
            script = script.display()
        ))
        .expect("dhclient -6 got no lease");
    std::fs::read_to_string(format!("{}.out", script.display()))
        .expect("script output")
        .trim()
        .to_owned()
}

/// A DHCPv6 option: code, length, data.
fn option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).expect("short").to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A RENEW for `address` in IA_NA `iaid` of the guest's DUID.
fn renew(iaid: u32, address: Ipv6Addr) -> Vec<u8> {
    let mut iaaddr = address.octets().to_vec();
    iaaddr.extend_from_slice(&[0; 8]);
    let mut ia_na = iaid.to_be_bytes().to_vec();
    ia_na.extend_from_slice(&[0; 8]);
    ia_na.extend(option(5, &iaaddr));
    let mut message = vec![5, 0x12, 0x34, 0x56];
    message.extend(option(1, &GUEST_DUID));
    message.extend(option(2, &SERVER_DUID));
    message.extend(option(3, &ia_na));
    message
}

/// Sends `message` from `guest`'s eth0 to ff02::1:2 and returns the IA address of the
/// REPLY as (address, preferred, valid).
fn exchange(guest: &Netns, message: Vec<u8>) -> (Ipv6Addr, u32, u32) {
    let reply = guest
        .run(move || -> std::io::Result<Vec<u8>> {
            let index = nix::net::if_::if_nametoindex("eth0").map_err(std::io::Error::from)?;
            let socket = UdpSocket::bind("[::]:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let server = SocketAddrV6::new("ff02::1:2".parse().expect("ip"), 547, 0, index);
            let mut buf = [0u8; 1500];
            for _ in 0..5 {
                socket.send_to(&message, server)?;
                if let Ok(len) = socket.recv(&mut buf) {
                    return Ok(buf[..len].to_vec());
                }
            }
            Err(std::io::Error::other("no reply"))
        })
        .expect("run in the guest")
        .expect("a DHCPv6 reply");
    assert_eq!(
        reply[..4],
        [7, 0x12, 0x34, 0x56],
        "a REPLY to our transaction"
    );
    // Walk to the IA_NA (3), then its IA address (5).
    let find = |mut data: &[u8], code: u16| -> Option<Vec<u8>> {
        while data.len() >= 4 {
            let this = u16::from_be_bytes([data[0], data[1]]);
            let len = usize::from(u16::from_be_bytes([data[2], data[3]]));
            let body = data.get(4..4 + len)?;
            if this == code {
                return Some(body.to_vec());
            }
            data = &data[4 + len..];
        }
        None
    };
    let ia_na = find(&reply[4..], 3).expect("an IA_NA in the reply");
    let iaaddr = find(&ia_na[12..], 5).expect("an IA address in the IA_NA");
    let address = Ipv6Addr::from(<[u8; 16]>::try_from(&iaaddr[..16]).expect("16 bytes"));
    let preferred = u32::from_be_bytes(iaaddr[16..20].try_into().expect("4 bytes"));
    let valid = u32::from_be_bytes(iaaddr[20..24].try_into().expect("4 bytes"));
    (address, preferred, valid)
}

/// The IAID of the guest's lease, from the daemon's lease file.
fn leased_iaid(daemon: &Daemon) -> u32 {
    let text = std::fs::read_to_string(daemon.state_dir().join("networks/v6.leases6"))
        .expect("lease file");
    let record: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("one lease")).expect("json");
    u32::try_from(record["iaid"].as_u64().expect("iaid")).expect("u32")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dhclient_gets_its_reserved_address_name_and_dns_and_keeps_it_across_a_restart() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("dhclient"), Need::Program("dig")]) {
        return;
    }
    let mut daemon = Daemon::without_default_network();
    // Duplicate address detection would hold the bridge's addresses back for a second.
    daemon
        .ns
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
        .expect("sysctl");
    let path = xml_file(daemon.dirs.path(), "v6.xml", NET_XML);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "v6"]);

    let guest = Netns::new("guest6").expect("guest ns");
    guest
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0")
        .expect("sysctl");
    attach_guest(&daemon, &guest, "kvv6", "", "");
    guest
        .sh(&format!(
            "sysctl -qw net.ipv6.conf.eth0.accept_dad=0 && ip link set eth0 down \
             && ip link set eth0 address {GUEST_MAC} && ip link set eth0 up"
        ))
        .expect("guest mac");

    // The router advertisement puts the prefix on-link but, DHCPv6 serving it, not
    // autonomous: the guest makes no SLAAC address in it.
    wait_until("the advertised on-link route", || {
        guest
            .sh("ip -6 route show dev eth0")
            .unwrap_or_default()
            .contains("fd00:6::/64")
    });
    let slaac = guest
        .sh("ip -6 -br addr show dev eth0 scope global")
        .expect("addresses");
    assert!(!slaac.contains("fd00:6:"), "a SLAAC address: {slaac}");

    let bound = dhclient_bind(&daemon, &guest);
    assert_eq!(bound, "BOUND6|fd00:6::3:1|fd00:6::1|v6.test.");

    let table = daemon.ok(&["net-dhcp-leases", "v6"]);
    let row = table.lines().nth(2).expect("a lease row");
    assert!(
        row.ends_with(&format!(
            "   {GUEST_MAC}   ipv6       fd00:6::3:1/64   atlas      00:03:00:01:52:54:00:00:06:02"
        )),
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["net-dhcp-leases", "v6", "--json"])).expect("json");
    assert_eq!(json[0]["ip_address"], "fd00:6::3:1");
    assert_eq!(json[0]["prefix"], 64);
    assert_eq!(json[0]["mac"], GUEST_MAC);
    assert_eq!(json[0]["client_id"], "00:03:00:01:52:54:00:00:06:02");

    let answer = guest
        .sh("dig +short +time=2 +tries=3 AAAA atlas.v6.test @fd00:6::1")
        .expect("dig");
    assert_eq!(answer.trim(), "fd00:6::3:1");
    let answer = guest
        .sh("dig +short +time=2 +tries=3 -x fd00:6::3:1 @fd00:6::1")
        .expect("dig -x");
    assert_eq!(answer.trim(), "atlas.v6.test.");

    let address: Ipv6Addr = "fd00:6::3:1".parse().expect("ip");
    let iaid = leased_iaid(&daemon);
    assert_eq!(
        exchange(&guest, renew(iaid, address)),
        (address, 3600, 3600)
    );

    // The daemon restarts (the network keeps running); the binding comes back from
    // the lease file, and a renewal keeps the address.
    daemon.stop();
    daemon.spawn(&common::DaemonOptions {
        no_default_network: true,
        ..Default::default()
    });
    assert_eq!(
        exchange(&guest, renew(iaid, address)),
        (address, 3600, 3600)
    );
    assert!(
        daemon
            .ok(&["net-dhcp-leases", "v6"])
            .contains("fd00:6::3:1/64")
    );

    // dhclient -r releases the address: the lease is gone.
    let dir = daemon.dirs.path().display().to_string();
    guest
        .sh(&format!(
            "timeout 20 dhclient -6 -r -D LL -lf {dir}/dhclient6.leases -pf {dir}/dhclient6.pid -sf {dir}/dhclient6.sh eth0"
        ))
        .expect("dhclient -r");
    wait_until("the released lease to go", || {
        !daemon
            .ok(&["net-dhcp-leases", "v6"])
            .contains("fd00:6::3:1")
    });
    daemon.ok(&["net-destroy", "v6"]);
}

#[test]
fn a_dynamic_client_gets_an_address_from_the_range() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("dhclient")]) {
        return;
    }
    // Duplicate address detection stays on in the daemon's namespace: the bridge's
    // addresses are tentative right after the start, and the server must cope.
    let daemon = Daemon::without_default_network();
    let path = xml_file(daemon.dirs.path(), "v6.xml", NET_XML);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "v6"]);
    let guest = Netns::new("guest6d").expect("guest ns");
    guest
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
        .expect("sysctl");
    attach_guest(&daemon, &guest, "kvv6", "", "");
    let bound = dhclient_bind(&daemon, &guest);
    let fields: Vec<&str> = bound.split('|').collect();
    assert_eq!(fields[0], "BOUND6", "{bound}");
    let address: Ipv6Addr = fields[1].parse().expect("an address");
    let first = u128::from("fd00:6::1:10".parse::<Ipv6Addr>().expect("ip"));
    let last = u128::from("fd00:6::1:ff".parse::<Ipv6Addr>().expect("ip"));
    assert!(
        (first..=last).contains(&u128::from(address)),
        "{address} is outside the range"
    );
    let table = daemon.ok(&["net-dhcp-leases", "v6"]);
    assert!(table.contains(&format!("{address}/64")), "{table}");
    let dir = daemon.dirs.path().display().to_string();
    guest
        .sh(&format!(
            "kill $(cat {dir}/dhclient6.pid) 2>/dev/null; true"
        ))
        .ok();
    daemon.ok(&["net-destroy", "v6"]);
}

#[test]
fn a_reservation_added_live_is_served_without_a_restart() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("dhclient")]) {
        return;
    }
    let daemon = Daemon::without_default_network();
    daemon
        .ns
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
        .expect("sysctl");
    let xml = "<network><name>v6</name><bridge name='kvv6' stp='off'/>\
        <ip family='ipv6' address='fd00:6::1' prefix='64'/></network>";
    let path = xml_file(daemon.dirs.path(), "v6.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "v6"]);
    // The <ip> has no <dhcp> yet: the first range and host come with net-update.
    daemon.ok(&[
        "net-update",
        "v6",
        "add",
        "ip-dhcp-range",
        "<range start='fd00:6::1:10' end='fd00:6::1:ff'/>",
        "--live",
        "--config",
    ]);
    daemon.ok(&[
        "net-update",
        "v6",
        "add",
        "ip-dhcp-host",
        "<host id='00:03:00:01:52:54:00:00:06:02' name='late' ip='fd00:6::4:1'/>",
        "--parent-index",
        "0",
        "--live",
        "--config",
    ]);
    let dumped = daemon.ok(&["net-dumpxml", "v6"]);
    assert!(
        dumped.contains(
            "  <ip family='ipv6' address='fd00:6::1' prefix='64'>\n    <dhcp>\n      \
             <range start='fd00:6::1:10' end='fd00:6::1:ff'/>\n      \
             <host id='00:03:00:01:52:54:00:00:06:02' name='late' ip='fd00:6::4:1'/>\n    \
             </dhcp>\n  </ip>\n"
        ),
        "{dumped}"
    );
    let guest = Netns::new("guest6u").expect("guest ns");
    guest
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
        .expect("sysctl");
    attach_guest(&daemon, &guest, "kvv6", "", "");
    guest
        .sh(&format!(
            "ip link set eth0 down && ip link set eth0 address {GUEST_MAC} && ip link set eth0 up"
        ))
        .expect("guest mac");
    let bound = dhclient_bind(&daemon, &guest);
    assert!(bound.starts_with("BOUND6|fd00:6::4:1|"), "{bound}");
    let dir = daemon.dirs.path().display().to_string();
    guest
        .sh(&format!(
            "kill $(cat {dir}/dhclient6.pid) 2>/dev/null; true"
        ))
        .ok();
    daemon.ok(&["net-destroy", "v6"]);
}
