//! netns tier: the DHCP server against real clients (busybox `udhcpc`, ISC `dhclient`).
//!
//! Each test builds a "server" namespace with bridge `br0` (192.168.77.1/24, STP off)
//! and a veth whose far end is `eth0` in a "client" namespace, runs [`DhcpServer`] on a
//! tokio runtime whose threads live in the server namespace, and runs the clients with
//! `ip netns exec` in the client namespace. Every client run is bounded by `timeout`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use netd::dhcp::{DhcpConfig, DhcpHostConfig, DhcpServer};
use testkit::{Need, Netns};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const CLIENT_MAC: &str = "52:54:00:12:34:56";
const RESERVED_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x42];

fn needs() -> bool {
    testkit::require(&[
        Need::Root,
        Need::Netns,
        Need::Program("busybox"),
        Need::Program("dhclient"),
        Need::Program("timeout"),
    ])
}

fn config(network: &str) -> DhcpConfig {
    DhcpConfig {
        network: network.into(),
        interface: "br0".into(),
        server_ip: SERVER_IP,
        subnet: "192.168.77.0/24".parse().expect("subnet"),
        ranges: vec![(
            Ipv4Addr::new(192, 168, 77, 100),
            Ipv4Addr::new(192, 168, 77, 199),
            Some(Duration::from_secs(600)),
        )],
        hosts: vec![DhcpHostConfig {
            mac: Some(RESERVED_MAC),
            ip: Ipv4Addr::new(192, 168, 77, 50),
            name: Some("vm-fixed".into()),
            lease: None,
        }],
        router: Some(SERVER_IP),
        dns_server: Some(SERVER_IP),
        domain: Some("kvnet.test".into()),
        mtu: Some(1400),
        default_lease: Duration::from_secs(3600),
        boot: None,
        options: Vec::new(),
        log_dhcp: false,
    }
}

/// Two namespaces joined by a bridge and a veth, plus a scratch directory.
struct Lab {
    server: Netns,
    client: Netns,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let server = Netns::new(&format!("{tag}s")).expect("server netns");
        let client = Netns::new(&format!("{tag}c")).expect("client netns");
        server
            .sh(&format!(
                "ip link add br0 type bridge stp_state 0 forward_delay 0 && \
                 ip addr add {SERVER_IP}/24 dev br0 && ip link set br0 up && \
                 ip link add veth-s type veth peer name eth0 netns {client} && \
                 ip link set veth-s master br0 && ip link set veth-s up",
                client = client.name()
            ))
            .expect("bridge and veth");
        client
            .sh(&format!(
                "ip link set eth0 address {CLIENT_MAC} && ip link set eth0 up"
            ))
            .expect("client eth0 up");
        Lab {
            server,
            client,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn set_client_mac(&self, mac: &str) {
        self.client
            .sh(&format!(
                "ip link set eth0 down && ip link set eth0 address {mac} && ip link set eth0 up"
            ))
            .expect("set client mac");
    }

    /// A udhcpc script that appends `event ip=... router=...` lines to `log`; with
    /// `configure`, it also puts the address on the interface (needed to renew).
    fn udhcpc_script(&self, log: &Path, configure: bool) -> PathBuf {
        let script = self.path(if configure {
            "udhcpc-configure.sh"
        } else {
            "udhcpc-record.sh"
        });
        let configure = if configure {
            r#"case "$1" in bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface";; deconfig) ip addr flush dev "$interface";; esac"#
        } else {
            ""
        };
        let body = format!(
            "#!/bin/sh\n{configure}\n\
             echo \"$1 ip=$ip subnet=$subnet router=$router dns=$dns domain=$domain mtu=$mtu hostname=$hostname lease=$lease serverid=$serverid\" >> {log}\n",
            log = log.display()
        );
        write_executable(&script, &body);
        script
    }

    /// One `udhcpc -q` run: returns the recorded lines and how long it took.
    fn udhcpc_once(&self, interface: &str, extra: &[&str]) -> (Vec<String>, Duration) {
        let log = self.path("udhcpc.log");
        let _ = std::fs::remove_file(&log);
        let script = self.udhcpc_script(&log, false);
        let start = Instant::now();
        let out = self
            .client
            .command("timeout")
            .args(["20", "busybox", "udhcpc", "-i", interface, "-f", "-q", "-n"])
            .args(["-T", "1", "-t", "5", "-s"])
            .arg(&script)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run udhcpc");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "udhcpc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (read_lines(&log), took)
    }
}

fn write_executable(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The value of `key=` in a recorded line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn bound_line(lines: &[String]) -> &str {
    lines
        .iter()
        .find(|l| l.starts_with("bound "))
        .unwrap_or_else(|| panic!("no bound event in {lines:?}"))
}

fn in_range(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == [192, 168, 77] && (100..=199).contains(&ip.octets()[3])
}

/// Runs `scenario` with a multi-thread tokio runtime whose threads are in the server
/// namespace (threads inherit the namespace of the thread that creates them).
fn in_server_ns<T: Send>(
    lab: &Lab,
    scenario: impl FnOnce(&tokio::runtime::Runtime) -> T + Send,
) -> T {
    lab.server
        .run(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            scenario(&runtime)
        })
        .expect("scenario in the server namespace")
}

fn start(runtime: &tokio::runtime::Runtime, config: DhcpConfig, lease_file: &Path) -> DhcpServer {
    let _enter = runtime.enter();
    let link = netd::link::Link::new().expect("netlink");
    DhcpServer::start(config, lease_file.to_path_buf(), link).expect("start the DHCP server")
}

fn mac_bytes(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("mac byte"))
        .collect();
    bytes.try_into().expect("six bytes")
}

#[test]
fn udhcpc_and_dhclient_get_leases_with_every_option() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dopt");
    in_server_ns(&lab, |runtime| {
        let server = start(runtime, config("opts"), &lab.path("leases"));

        // udhcpc asks for the MTU only when told to; unasked, it is not sent.
        let (lines, took) = lab.udhcpc_once("eth0", &["-O", "mtu"]);
        eprintln!("udhcpc lease in {took:?}");
        let bound = bound_line(&lines);
        let ip: Ipv4Addr = field(bound, "ip").parse().expect("udhcpc ip");
        assert!(in_range(ip), "{bound}");
        assert_eq!(field(bound, "subnet"), "255.255.255.0");
        assert_eq!(field(bound, "router"), "192.168.77.1");
        assert_eq!(field(bound, "dns"), "192.168.77.1");
        assert_eq!(field(bound, "domain"), "kvnet.test");
        assert_eq!(field(bound, "mtu"), "1400");
        assert_eq!(field(bound, "lease"), "600");
        assert_eq!(field(bound, "serverid"), "192.168.77.1");
        let leases = server.leases();
        let lease = leases
            .iter()
            .find(|l| l.ip == ip)
            .expect("udhcpc lease listed");
        assert_eq!(lease.mac, mac_bytes(CLIENT_MAC));
        // udhcpc sends option 61 = 01 + MAC.
        let mut client_id = vec![1];
        client_id.extend(mac_bytes(CLIENT_MAC));
        assert_eq!(lease.client_id.as_deref(), Some(&client_id[..]));

        // dhclient: no client id, so the lease is matched by MAC (as dnsmasq does): a
        // guest switching DHCP clients keeps its address.
        let log = lab.path("dhclient.log");
        let script = lab.path("dhclient.sh");
        write_executable(
            &script,
            &format!(
                "#!/bin/sh\necho \"$reason ip=$new_ip_address mask=$new_subnet_mask router=$new_routers dns=$new_domain_name_servers domain=$new_domain_name mtu=$new_interface_mtu lease=$new_dhcp_lease_time\" >> {}\n",
                log.display()
            ),
        );
        let start = Instant::now();
        let out = lab
            .client
            .command("timeout")
            .args(["20", "dhclient", "-4", "-1", "-v", "-lf"])
            .arg(lab.path("dhclient.leases"))
            .arg("-pf")
            .arg(lab.path("dhclient.pid"))
            .arg("-sf")
            .arg(&script)
            .arg("eth0")
            .output()
            .expect("run dhclient");
        eprintln!("dhclient lease in {:?}", start.elapsed());
        assert!(
            out.status.success(),
            "dhclient: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = read_lines(&log);
        let bound = lines
            .iter()
            .find(|l| l.starts_with("BOUND "))
            .unwrap_or_else(|| panic!("no BOUND in {lines:?}"));
        let dhclient_ip: Ipv4Addr = field(bound, "ip").parse().expect("dhclient ip");
        assert_eq!(dhclient_ip, ip, "{bound}");
        assert_eq!(field(bound, "mask"), "255.255.255.0");
        assert_eq!(field(bound, "router"), "192.168.77.1");
        assert_eq!(field(bound, "dns"), "192.168.77.1");
        assert_eq!(field(bound, "domain"), "kvnet.test");
        assert_eq!(field(bound, "mtu"), "1400");
        assert_eq!(field(bound, "lease"), "600");
        let _ = lab
            .client
            .command("dhclient")
            .arg("-x")
            .arg("-pf")
            .arg(lab.path("dhclient.pid"))
            .output();
        // One lease, now under dhclient's identity (no client id).
        let leases = server.leases();
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!((leases[0].ip, leases[0].client_id.as_deref()), (ip, None));
        runtime.block_on(server.stop());
    });
}

#[test]
fn reserved_mac_gets_its_address_and_name() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dres");
    lab.set_client_mac("52:54:00:00:00:42");
    in_server_ns(&lab, |runtime| {
        let server = start(runtime, config("res"), &lab.path("leases"));
        let (lines, _) = lab.udhcpc_once("eth0", &["-r", "192.168.77.120"]);
        let bound = bound_line(&lines);
        assert_eq!(field(bound, "ip"), "192.168.77.50");
        assert_eq!(field(bound, "hostname"), "vm-fixed");
        // Outside the range, without a lease of its own: the range's (as with dnsmasq).
        assert_eq!(field(bound, "lease"), "600");
        let leases = server.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].hostname.as_deref(), Some("vm-fixed"));
        runtime.block_on(server.stop());
    });
}

#[test]
fn isolated_network_hands_out_no_router() {
    if !needs() {
        return;
    }
    let lab = Lab::new("diso");
    in_server_ns(&lab, |runtime| {
        let mut config = config("iso");
        config.router = None;
        config.dns_server = None;
        let server = start(runtime, config, &lab.path("leases"));
        let (lines, _) = lab.udhcpc_once("eth0", &[]);
        let bound = bound_line(&lines);
        assert!(in_range(field(bound, "ip").parse().expect("ip")));
        assert_eq!(field(bound, "router"), "");
        assert_eq!(field(bound, "dns"), "");
        assert_eq!(field(bound, "domain"), "kvnet.test");
        runtime.block_on(server.stop());
    });
}

/// Waits until `log` has a line starting with `event` after the first `skip` lines.
fn wait_for_event(log: &Path, skip: usize, event: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let lines = read_lines(log);
        if let Some(line) = lines.iter().skip(skip).find(|l| l.starts_with(event)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {event:?} event within {within:?}: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_udhcpc_daemon(lab: &Lab, log: &Path, pid_file: &Path) -> Child {
    let script = lab.udhcpc_script(log, true);
    lab.client
        .command("timeout")
        .args([
            "60", "busybox", "udhcpc", "-i", "eth0", "-f", "-R", "-T", "1", "-t", "5",
        ])
        .arg("-p")
        .arg(pid_file)
        .arg("-s")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn udhcpc")
}

/// Signals the udhcpc whose pid is in `pid_file` (SIGUSR1 renews, SIGTERM releases with -R).
fn signal_udhcpc(pid_file: &Path, signal: nix::sys::signal::Signal) {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .expect("udhcpc pid file")
        .trim()
        .parse()
        .expect("udhcpc pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).expect("signal udhcpc");
}

#[test]
fn renew_keeps_the_address_across_a_restart_and_release_frees_it() {
    if !needs() {
        return;
    }
    use nix::sys::signal::Signal;
    let lab = Lab::new("dren");
    let lease_file = lab.path("leases");
    in_server_ns(&lab, |runtime| {
        let config = config("renew");
        let server = start(runtime, config.clone(), &lease_file);
        let log = lab.path("daemon.log");
        let pid_file = lab.path("udhcpc.pid");
        let mut udhcpc = spawn_udhcpc_daemon(&lab, &log, &pid_file);
        let bound = wait_for_event(&log, 0, "bound ", Duration::from_secs(10));
        let ip = field(&bound, "ip").to_owned();
        // SIGUSR1: udhcpc renews at once, unicast from its address (RENEWING).
        signal_udhcpc(&pid_file, Signal::SIGUSR1);
        let seen = read_lines(&log).len();
        let renewed = wait_for_event(&log, seen, "renew ", Duration::from_secs(10));
        assert_eq!(field(&renewed, "ip"), ip, "renew changed the address");

        // Restart the server from the same lease file; the next renewal keeps the address.
        runtime.block_on(server.stop());
        let server = start(runtime, config.clone(), &lease_file);
        assert!(
            server.leases().iter().any(|l| l.ip.to_string() == ip),
            "lease not reloaded: {:?}",
            server.leases()
        );
        // A new client asking first does not get that address: the lease was reloaded.
        lab.server
            .sh(&format!(
                "ip link add veth-s2 type veth peer name eth1 netns {} && \
                 ip link set veth-s2 master br0 && ip link set veth-s2 up",
                lab.client.name()
            ))
            .expect("second veth");
        lab.client
            .sh("ip link set eth1 address 52:54:00:12:34:57 && ip link set eth1 up")
            .expect("eth1 up");
        let (lines, _) = lab.udhcpc_once("eth1", &["-r", &ip]);
        let other = field(bound_line(&lines), "ip").to_owned();
        assert_ne!(other, ip, "a reloaded lease was handed to another client");
        let seen = read_lines(&log).len();
        signal_udhcpc(&pid_file, Signal::SIGUSR1);
        let renewed = wait_for_event(&log, seen, "renew ", Duration::from_secs(10));
        assert_eq!(
            field(&renewed, "ip"),
            ip,
            "renew after restart changed the address"
        );

        // SIGTERM with -R: udhcpc releases the lease on exit.
        signal_udhcpc(&pid_file, Signal::SIGTERM);
        let _ = udhcpc.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.leases().iter().any(|l| l.ip.to_string() == ip) {
            assert!(Instant::now() < deadline, "release did not free {ip}");
            std::thread::sleep(Duration::from_millis(50));
        }
        runtime.block_on(server.stop());
    });
}

#[test]
fn garbage_packets_leave_the_server_serving() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dgar");
    in_server_ns(&lab, |runtime| {
        let server = start(runtime, config("garbage"), &lab.path("leases"));
        lab.client
            .sh("ip addr add 192.168.77.250/24 dev eth0")
            .expect("client address");
        lab.client
            .run(|| {
                let socket = std::net::UdpSocket::bind("192.168.77.250:0").expect("bind");
                let mut state = 0x2545_F491_4F6C_DD1Du64;
                let mut next = || {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                };
                for round in 0..3000u32 {
                    let len = (next() % 700) as usize;
                    let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    if round % 2 == 0 && packet.len() > 244 {
                        // Plausible header: BOOTREQUEST, Ethernet, cookie, DISCOVER first.
                        packet[..3].copy_from_slice(&[1, 1, 6]);
                        packet[236..243].copy_from_slice(&[99, 130, 83, 99, 53, 1, 1]);
                    }
                    let _ = socket.send_to(&packet, (SERVER_IP, 67));
                }
            })
            .expect("send garbage from the client namespace");
        lab.client
            .sh("ip addr flush dev eth0")
            .expect("client address removed");
        let (lines, _) = lab.udhcpc_once("eth0", &[]);
        assert!(in_range(
            field(bound_line(&lines), "ip").parse().expect("ip")
        ));
        runtime.block_on(server.stop());
    });
}

#[test]
fn servers_of_two_bridges_share_port_67() {
    if !needs() {
        return;
    }
    let lab = Lab::new("dtwo");
    lab.server
        .sh(
            "ip link add br1 type bridge stp_state 0 forward_delay 0 && \
             ip addr add 192.168.78.1/24 dev br1 && ip link set br1 up",
        )
        .expect("second bridge");
    in_server_ns(&lab, |runtime| {
        let mut other = config("other");
        other.interface = "br1".into();
        other.server_ip = Ipv4Addr::new(192, 168, 78, 1);
        other.subnet = "192.168.78.0/24".parse().expect("subnet");
        other.ranges = vec![(
            Ipv4Addr::new(192, 168, 78, 100),
            Ipv4Addr::new(192, 168, 78, 199),
            None,
        )];
        other.hosts.clear();
        let mut missing = other.clone();
        missing.interface = "nosuch0".into();
        let error = {
            let _enter = runtime.enter();
            let link = netd::link::Link::new().expect("netlink");
            DhcpServer::start(missing, lab.path("leases-missing"), link)
                .expect_err("a missing bridge is an error")
                .to_string()
        };
        assert!(
            error.contains("network other") && error.contains("nosuch0"),
            "{error}"
        );
        let second = start(runtime, other, &lab.path("leases-other"));
        let first = start(runtime, config("first"), &lab.path("leases-first"));
        // The client on br0 is served by br0's server only.
        let (lines, _) = lab.udhcpc_once("eth0", &[]);
        let bound = bound_line(&lines);
        assert!(in_range(field(bound, "ip").parse().expect("ip")), "{bound}");
        assert_eq!(field(bound, "serverid"), "192.168.77.1");
        assert_eq!(first.leases().len(), 1);
        assert!(second.leases().is_empty());
        runtime.block_on(first.stop());
        runtime.block_on(second.stop());
    });
}

/// A relay agent on the network (kea's `perfdhcp` is one) gets OFFER and ACK back by
/// unicast on port 67, and the lease is bound for the relayed client.
#[test]
fn relay_agent_on_the_network_gets_unicast_replies() {
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use dhcproto::{Decodable, Decoder, Encodable, Encoder};

    if !needs() {
        return;
    }
    const RELAY: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 5);
    let lab = Lab::new("drel");
    lab.client
        .sh(&format!("ip addr add {RELAY}/24 dev eth0"))
        .expect("relay address");
    let mac = [2, 0, 0, 0, 0x77, 1];
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let message = |kind: MessageType, xid: u32| {
        let mut m = Message::new_with_id(xid, unspecified, unspecified, unspecified, RELAY, &mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    };
    // Sends `request` from the relay's port 67; returns the reply and who sent it.
    let exchange = |request: Message| {
        lab.client
            .run(move || {
                let socket = std::net::UdpSocket::bind((RELAY, 67)).expect("bind the relay port");
                socket
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut bytes = Vec::new();
                request
                    .encode(&mut Encoder::new(&mut bytes))
                    .expect("encode");
                socket.send_to(&bytes, (SERVER_IP, 67)).expect("send");
                let mut buf = [0u8; 1500];
                let (len, from) = socket.recv_from(&mut buf).expect("a reply to the relay");
                let reply = Message::decode(&mut Decoder::new(&buf[..len])).expect("decode");
                (reply, from)
            })
            .expect("relay in the client namespace")
    };
    in_server_ns(&lab, |runtime| {
        let server = start(runtime, config("relay"), &lab.path("leases"));
        let (offer, from) = exchange(message(MessageType::Discover, 11));
        assert_eq!(from, std::net::SocketAddr::from((SERVER_IP, 67)));
        assert_eq!(offer.xid(), 11);
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.giaddr(), RELAY);
        assert!(in_range(offer.yiaddr()), "{}", offer.yiaddr());

        let mut request = message(MessageType::Request, 12);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        let (ack, _) = exchange(request);
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        let leases = server.leases();
        assert_eq!(leases.len(), 1);
        assert_eq!((leases[0].ip, leases[0].mac), (offer.yiaddr(), mac));
        runtime.block_on(server.stop());
    });
}
