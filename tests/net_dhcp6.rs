//! netns tier: DHCPv6. A network whose IPv6 `<ip>` has `<dhcp>` hands addresses to
//! ISC dhclient (`-6`): a reserved DUID gets its address and name, which DNS then
//! resolves; the lease is listed by `net-dhcp-leases`; renewals (sent by the test as
//! raw RENEW messages, since dhclient renews only after T1) keep the address, also
//! across a daemon restart, and one sent by unicast gets UseMulticast; dhclient's release
//! frees it. dhcpcd, a second real client,
//! takes a name reservation through its FQDN option and a dynamic address in one
//! rapid-commit exchange (two IA_NAs), moves to a new address through NoBinding and
//! REQUEST when its old one went to another client while the daemon's lease file was
//! lost, and releases both.

mod common;

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::path::Path;
use std::process::{Child, Stdio};
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
/// Ends the dhclient that [`dhclient_bind`] left running in the background.
fn stop_dhclient(daemon: &Daemon, guest: &Netns) {
    let dir = daemon.dirs.path().display().to_string();
    guest
        .sh(&format!(
            "kill $(cat {dir}/dhclient6.pid) 2>/dev/null; true"
        ))
        .ok();
}

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

/// A client message of type `kind` from `client` (transaction 0x123456) asking for
/// `address` in IA_NA `iaid`, followed by the encoded options `more`.
fn ia_message(kind: u8, client: &[u8], iaid: u32, address: Ipv6Addr, more: &[u8]) -> Vec<u8> {
    let mut iaaddr = address.octets().to_vec();
    iaaddr.extend_from_slice(&[0; 8]);
    let mut ia_na = iaid.to_be_bytes().to_vec();
    ia_na.extend_from_slice(&[0; 8]);
    ia_na.extend(option(5, &iaaddr));
    let mut message = vec![kind, 0x12, 0x34, 0x56];
    message.extend(option(1, client));
    message.extend(option(3, &ia_na));
    message.extend_from_slice(more);
    message
}

/// A RENEW for `address` in IA_NA `iaid` of the guest's DUID.
fn renew(iaid: u32, address: Ipv6Addr) -> Vec<u8> {
    ia_message(5, &GUEST_DUID, iaid, address, &option(2, &SERVER_DUID))
}

/// Sends `message` from `guest`'s eth0 to `server` (port 547, scope eth0) until a
/// REPLY to its transaction comes, and returns that REPLY.
fn send_to_server(guest: &Netns, message: Vec<u8>, server: Ipv6Addr) -> Vec<u8> {
    let reply = guest
        .run(move || -> std::io::Result<Vec<u8>> {
            let index = nix::net::if_::if_nametoindex("eth0").map_err(std::io::Error::from)?;
            let socket = UdpSocket::bind("[::]:0")?;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let server = SocketAddrV6::new(server, 547, 0, index);
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
    reply
}

/// The body of the first option `code` among the encoded options `data`.
fn find_option(mut data: &[u8], code: u16) -> Option<Vec<u8>> {
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
}

/// Sends `message` from `guest`'s eth0 to ff02::1:2 and returns the IA address of the
/// REPLY as (address, preferred, valid).
fn exchange(guest: &Netns, message: Vec<u8>) -> (Ipv6Addr, u32, u32) {
    let reply = send_to_server(guest, message, "ff02::1:2".parse().expect("ip"));
    // Walk to the IA_NA (3), then its IA address (5).
    let ia_na = find_option(&reply[4..], 3).expect("an IA_NA in the reply");
    let iaaddr = find_option(&ia_na[12..], 5).expect("an IA address in the IA_NA");
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

/// Duplicate address detection in the daemon's namespace.
enum Dad {
    /// As the kernel has it: the bridge's addresses are tentative for a second.
    On,
    /// Off, so that the bridge's addresses are usable at once.
    Off,
}

/// A daemon running the network `v6` defined by `xml`.
fn running(xml: &str, dad: Dad) -> Daemon {
    let daemon = Daemon::without_default_network();
    if matches!(dad, Dad::Off) {
        daemon
            .ns
            .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0")
            .expect("sysctl");
    }
    let path = xml_file(daemon.dirs.path(), "v6.xml", xml);
    daemon.ok(&["net-define", path.to_str().expect("path")]);
    daemon.ok(&["net-start", "v6"]);
    daemon
}

/// A guest namespace on the test network's bridge, without duplicate address
/// detection (its addresses are usable at once), with `mac` on its eth0 if given.
fn guest_on_the_bridge(daemon: &Daemon, tag: &str, mac: Option<&str>) -> Netns {
    let guest = Netns::new(tag).expect("guest ns");
    guest
        .sh("sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0")
        .expect("sysctl");
    attach_guest(daemon, &guest, "kvv6", "", "");
    if let Some(mac) = mac {
        guest
            .sh(&format!(
                "sysctl -qw net.ipv6.conf.eth0.accept_dad=0 && ip link set eth0 down \
                 && ip link set eth0 address {mac} && ip link set eth0 up"
            ))
            .expect("guest mac");
    }
    guest
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
    let mut daemon = running(NET_XML, Dad::Off);

    let guest = guest_on_the_bridge(&daemon, "guest6", Some(GUEST_MAC));

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
    assert_eq!(json[0]["protocol"], "ipv6");

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
        (address, 86400, 86400)
    );
    // The server sends no Server Unicast option: a RENEW sent to its link-local
    // address gets only UseMulticast (status 5) and the identifiers (RFC 8415 18.4).
    let bridge_ll: Ipv6Addr = "fe80::5054:ff:fe00:601".parse().expect("ip");
    let reply = send_to_server(&guest, renew(iaid, address), bridge_ll);
    assert_eq!(
        find_option(&reply[4..], 13),
        Some(b"\0\x05send to ff02::1:2".to_vec())
    );
    assert_eq!(find_option(&reply[4..], 1), Some(GUEST_DUID.to_vec()));
    assert_eq!(find_option(&reply[4..], 2), Some(SERVER_DUID.to_vec()));
    assert_eq!(find_option(&reply[4..], 3), None, "no IA_NA");

    // The daemon restarts (the network keeps running); the binding comes back from
    // the lease file, and a renewal keeps the address.
    daemon.stop();
    daemon.spawn(&common::DaemonOptions::no_default_network());
    assert_eq!(
        exchange(&guest, renew(iaid, address)),
        (address, 86400, 86400)
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
    // The bridge's addresses are tentative right after the start: the server must cope.
    let daemon = running(NET_XML, Dad::On);
    let guest = guest_on_the_bridge(&daemon, "guest6d", None);
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
    stop_dhclient(&daemon, &guest);
    daemon.ok(&["net-destroy", "v6"]);
}

#[test]
fn a_reservation_added_live_is_served_without_a_restart() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("dhclient")]) {
        return;
    }
    let daemon = running(
        "<network><name>v6</name><bridge name='kvv6' stp='off'/>\
         <ip family='ipv6' address='fd00:6::1' prefix='64'/></network>",
        Dad::Off,
    );
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
    let guest = guest_on_the_bridge(&daemon, "guest6u", Some(GUEST_MAC));
    let bound = dhclient_bind(&daemon, &guest);
    assert!(bound.starts_with("BOUND6|fd00:6::4:1|"), "{bound}");
    stop_dhclient(&daemon, &guest);
    daemon.ok(&["net-destroy", "v6"]);
}

/// The dhcpcd guest's MAC; `duid ll` makes its DUID-LL from it.
const DHCPCD_MAC: &str = "52:54:00:00:06:07";
const DHCPCD_DUID: &str = "00:03:00:01:52:54:00:00:06:07";

/// Starts dhcpcd -6 in the foreground (`-B`) in `guest` and returns it; its log goes
/// to `<dir>/dhcpcd.log`. It runs in a mount namespace of its own whose `/run` and
/// `/var/lib` are temp dirs (its run and lease dirs are compiled in), and its script
/// only records, in `<dir>/dhcpcd-hook.sh.out`, one `reason|addresses|name servers|
/// domain search` line per binding event: it touches no host file (no resolv.conf,
/// no hostname). It asks for two IA_NAs and rapid commit, and sends the name `venus`
/// in its FQDN option.
fn spawn_dhcpcd(dir: &Path, guest: &Netns) -> Child {
    let hook = dir.join("dhcpcd-hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6|REBOOT6|RELEASE6)\n\
         addresses=$(env | grep '^new_dhcp6_ia_na[0-9]*_ia_addr[0-9]*=' | cut -d= -f2 | sort | paste -sd ' ' -)\n\
         echo \"$reason|$addresses|$new_dhcp6_name_servers|$new_dhcp6_domain_search\" >> \"$0.out\";;\nesac\nexit 0\n",
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let conf = dir.join("dhcpcd.conf");
    std::fs::write(
        &conf,
        format!(
            "script {}\nduid ll\nhostname venus\nipv6only\nnoipv4ll\n\
             option dhcp6_name_servers, dhcp6_domain_search, dhcp6_rapid_commit\n\
             interface eth0\n  ia_na 1\n  ia_na 2\n",
            hook.display()
        ),
    )
    .expect("dhcpcd.conf");
    let root = dir.join("dhcpcd-root");
    for sub in ["run", "lib/dhcpcd"] {
        std::fs::create_dir_all(root.join(sub)).expect("dhcpcd dirs");
    }
    let log = std::fs::File::create(dir.join("dhcpcd.log")).expect("dhcpcd log");
    guest
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {root}/run /run && mount --bind {root}/lib /var/lib \
             && exec dhcpcd -f {conf} -B -d -6 eth0",
            root = root.display(),
            conf = conf.display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn dhcpcd")
}

/// The lines dhcpcd's hook recorded so far.
fn dhcpcd_events(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("dhcpcd-hook.sh.out"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The `net-dhcp-leases` rows of `duid`, as (address/prefix, hostname): the fields
/// after the expiry date and time, MAC and protocol.
fn leases_of(daemon: &Daemon, duid: &str) -> Vec<(String, String)> {
    let table = daemon.ok(&["net-dhcp-leases", "v6"]);
    let mut rows: Vec<(String, String)> = table
        .lines()
        .skip(2)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.last() == Some(&duid))
        .map(|fields| (fields[4].to_owned(), fields[5].to_owned()))
        .collect();
    rows.sort();
    rows
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, signal).expect("signal dhcpcd");
}

#[test]
fn dhcpcd_gets_a_name_reservation_and_a_dynamic_address_renews_past_a_lost_lease_and_releases() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("dhcpcd"), Need::Program("unshare")]) {
        return;
    }
    let xml = NET_XML.replace(
        "    </dhcp>",
        "      <host name='venus' ip='fd00:6::3:2'/>\n    </dhcp>",
    );
    let mut daemon = running(&xml, Dad::Off);
    let guest = guest_on_the_bridge(&daemon, "guest6c", Some(DHCPCD_MAC));
    let dir = daemon.dirs.path().to_owned();
    let mut dhcpcd = spawn_dhcpcd(&dir, &guest);

    // The RA's M flag starts DHCPv6. IA_NA 1 gets the reservation of the name in the
    // FQDN option, IA_NA 2 the address dnsmasq's seed for it points to (its DUID and
    // IAID hashed), in one rapid-commit exchange (dhcpcd logs "ADV" when an ADVERTISE
    // comes instead).
    wait_until("dhcpcd to bind", || !dhcpcd_events(&dir).is_empty());
    assert_eq!(
        dhcpcd_events(&dir),
        ["BOUND6|fd00:6::1:b9 fd00:6::3:2|fd00:6::1|v6.test"]
    );
    let log = std::fs::read_to_string(dir.join("dhcpcd.log")).expect("dhcpcd log");
    assert!(!log.contains(" ADV "), "no rapid commit:\n{log}");
    let addresses = guest
        .sh("ip -6 -br addr show dev eth0 scope global")
        .expect("addresses");
    assert!(
        addresses.contains("fd00:6::1:b9/128") && addresses.contains("fd00:6::3:2/128"),
        "{addresses}"
    );
    let venus = |ip: &str| (format!("{ip}/64"), "venus".to_owned());
    assert_eq!(
        leases_of(&daemon, DHCPCD_DUID),
        [venus("fd00:6::1:b9"), venus("fd00:6::3:2")]
    );

    // The daemon restarts without its lease file, and another client takes
    // fd00:6::1:b9. dhcpcd's RENEW keeps the reservation and gets NoBinding for the
    // other IA, so it sends a REQUEST and gets the next free address after its seed's.
    daemon.stop();
    std::fs::remove_file(daemon.state_dir().join("networks/v6.leases6")).expect("lease file");
    daemon.spawn(&common::DaemonOptions::no_default_network());
    let other = [0, 3, 0, 1, 2, 2, 2, 2, 2, 2];
    let taken: Ipv6Addr = "fd00:6::1:b9".parse().expect("ip");
    let rapid_solicit = ia_message(1, &other, 9, taken, &option(14, &[]));
    assert_eq!(exchange(&guest, rapid_solicit), (taken, 86400, 86400));
    // Under load, dhcpcd 9.4 (privilege separated) now and then never acts on a
    // SIGUSR1: its log has no "received SIGUSR1" and kvnetd sees no RENEW (3 runs in 16
    // with four at once). Send it again until dhcpcd says it heard one.
    let log_of = || std::fs::read_to_string(dir.join("dhcpcd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_of().contains("received SIGUSR1") {
        assert!(
            Instant::now() < deadline,
            "dhcpcd never took SIGUSR1:\n{}",
            log_of()
        );
        signal(&dhcpcd, nix::sys::signal::Signal::SIGUSR1);
        std::thread::sleep(Duration::from_secs(1));
    }
    wait_until("dhcpcd to move to a new address", || {
        dhcpcd_events(&dir).len() > 1
    });
    assert_eq!(
        dhcpcd_events(&dir)[1],
        "BOUND6|fd00:6::1:ba fd00:6::3:2|fd00:6::1|v6.test"
    );
    let log = std::fs::read_to_string(dir.join("dhcpcd.log")).expect("dhcpcd log");
    assert!(log.contains("RENEW6") && log.contains("REQUEST6"), "{log}");
    assert_eq!(
        leases_of(&daemon, DHCPCD_DUID),
        [venus("fd00:6::1:ba"), venus("fd00:6::3:2")]
    );
    assert_eq!(
        leases_of(&daemon, "00:03:00:01:02:02:02:02:02:02"),
        [("fd00:6::1:b9/64".to_owned(), "-".to_owned())]
    );

    // SIGALRM: dhcpcd releases its addresses and exits; the leases are gone.
    // Sent again while dhcpcd runs, for the same reason as SIGUSR1 above.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = dhcpcd.try_wait().expect("dhcpcd status") {
            break status;
        }
        assert!(Instant::now() < deadline, "dhcpcd never took SIGALRM");
        signal(&dhcpcd, nix::sys::signal::Signal::SIGALRM);
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(status.success(), "dhcpcd: {status}");
    // dhcpcd sends its RELEASE and exits without waiting for the REPLY.
    wait_until("the released leases to go", || {
        leases_of(&daemon, DHCPCD_DUID).is_empty()
    });
    assert_eq!(
        dhcpcd_events(&dir).last().map(String::as_str),
        Some("RELEASE6|||")
    );
    daemon.ok(&["net-destroy", "v6"]);
}

/// A lease is listed with the MAC of the guest's NIC, which dnsmasq takes from the
/// neighbour table: not the MAC a DUID-LLT carries (a cloned template's), nor none
/// (systemd-networkd's DUID-EN), whatever its link-local address is.
#[test]
fn a_lease_is_listed_with_the_nics_mac_whatever_its_duid_carries() {
    if !require(DAEMON_NEEDS) || !require(&[Need::Program("busybox")]) {
        return;
    }
    let daemon = running(NET_XML, Dad::Off);
    let nic = "52:54:00:77:88:99";
    let guest = guest_on_the_bridge(&daemon, "guest6m", Some(nic));
    // No EUI-64 link-local address to read a MAC from.
    guest
        .sh("ip -6 addr flush dev eth0 scope link && ip -6 addr add fe80::abcd/64 dev eth0 nodad")
        .expect("link-local address");
    // The bridge has talked to the guest (as an ADVERTISE to it would have made it).
    daemon
        .ns
        .sh("busybox ping -6 -c1 -W2 fe80::abcd%kvv6 >/dev/null")
        .expect("the guest answers");
    let cloned_llt = [0, 1, 0, 1, 0x2c, 0x1d, 0x4e, 0x11, 0, 0x15, 0x5d, 1, 2, 3];
    let enterprise = [0, 2, 0, 0, 0xab, 0x11, 0xde, 0xad, 0xbe, 0xef, 0, 1];
    let server_id = option(2, &SERVER_DUID);
    for (iaid, duid, address) in [
        (1, &cloned_llt[..], "fd00:6::1:50"),
        (2, &enterprise[..], "fd00:6::1:51"),
    ] {
        let address: Ipv6Addr = address.parse().expect("ip");
        let (bound, _, _) = exchange(&guest, ia_message(3, duid, iaid, address, &server_id));
        assert_eq!(bound, address);
    }
    let table = daemon.ok(&["-q", "net-dhcp-leases", "v6"]);
    let macs: Vec<&str> = table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    assert_eq!(macs, [nic, nic], "{table}");
}
