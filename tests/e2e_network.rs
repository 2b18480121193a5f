//! e2e tier: a VM on a kvnet network, end to end. kvnetd runs a NAT network in its
//! namespace; kvnet-vmm's NIC is `--net network=e2e`, so kvnetd makes the tap on the
//! network's bridge and hands it over the API socket. The mini-guest sends a UDP datagram
//! to a server in an "upstream" namespace, which sees it come from the host's upstream
//! address (masqueraded) and answers after a broadcast the guest must skip; the answer comes back through conntrack, bridge, tap
//! and virtio-net into the guest, whose RX interrupt handler prints it.
//!
//! mini-guest <-> virtio-net <-> tap <-> bridge <-> NAT <-> upstream namespace
//!
//! A second run restarts the network between the VM's plug and its boot: kvnetd keeps
//! the VM's tap and plugs it into the new bridge.

mod common;
mod miniguest;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{DAEMON_NEEDS, Daemon, Need, Netns, attach_upstream, require, xml_file};
use miniguest::*;
use netd::api::client::Client;
use vmm::testing::asm::*;
use vmm::testing::{self, print};
use vmm::{ExitReason, SerialSink, SharedBuffer, Vm, VmConfig};

const BRIDGE_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x0e, 0x2e, 0x01];
const GUEST_MAC: &str = "52:54:00:0e:2e:50";
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 150, 50);
const UPSTREAM: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)), 7777);
const GUEST_PORT: u16 = 40_000;
const PING: &[u8] = b"kvnet e2e ping from the guest";
const PONG: &[u8] = b"kvnet e2e pong from upstream";

/// The NAT network the VM joins. STP off: the tap forwards at once, and no BPDUs compete
/// for the guest's one RX buffer.
const NETWORK_XML: &str = "<network>
  <name>e2e</name>
  <forward mode='nat'/>
  <bridge name='kve2e0' stp='off'/>
  <mac address='52:54:00:0e:2e:01'/>
  <ip address='192.168.150.1' netmask='255.255.255.0'/>
</network>
";

/// The Internet checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The guest's datagram to [`UPSTREAM`] as an Ethernet frame to the bridge (its router);
/// the source MAC is left zero for the guest to fill in. UDP checksum 0: none, as IPv4
/// allows.
fn ping_frame() -> Vec<u8> {
    let SocketAddr::V4(upstream) = UPSTREAM else {
        unreachable!("UPSTREAM is IPv4")
    };
    let udp_len = 8 + PING.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&GUEST_IP.octets());
    ip.extend_from_slice(&upstream.ip().octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = BRIDGE_MAC.to_vec();
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&GUEST_PORT.to_be_bytes());
    frame.extend_from_slice(&upstream.port().to_be_bytes());
    frame.extend_from_slice(&(udp_len as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(PING);
    frame
}

/// The guest: MSI-X RX interrupts, one RX buffer, sends [`ping_frame`]. Its handler skips
/// (and re-posts the buffer for) anything but unicast UDP, prints the first such frame
/// as `rx len <used length>` and its bytes in hex, and powers off.
fn guest(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut handler = a.create_label();
    let (hex32, hex8) = hex_printers(a)?;
    let wait = msix_send(a, handler, &ping_frame())?;

    let mut udp = a.create_label();
    a.set_label(&mut handler)?;
    // The length of the newest used entry: used.ring[(used.idx - 1) % size].len.
    a.mov(rdi, RX_USED)?;
    a.movzx(eax, word_ptr(rdi + 2))?;
    a.dec(eax)?;
    a.and(eax, QUEUE_SIZE as i32 - 1)?;
    a.mov(ecx, dword_ptr(rdi + rax * 8 + 8))?;
    // Unicast (the bridge's IGMP reports are not), IPv4 (EtherType 0x0800 after the
    // 12-byte virtio-net header and the two MACs), UDP (IP protocol 17).
    let mut skip = a.create_label();
    a.mov(rsi, RX_BUF)?;
    a.test(byte_ptr(rsi + VNET_HDR_LEN as i32), 1)?;
    a.jnz(skip)?;
    a.cmp(word_ptr(rsi + (VNET_HDR_LEN + 12) as i32), 0x0008)?;
    a.jne(skip)?;
    a.cmp(byte_ptr(rsi + (VNET_HDR_LEN + 14 + 9) as i32), 17)?;
    a.je(udp)?;
    a.set_label(&mut skip)?;
    print(a, "skipped a frame\n")?;
    // Offer descriptor 0 again as the next available entry, and notify the RX queue.
    a.mov(rdi, RX_AVAIL)?;
    a.movzx(eax, word_ptr(rdi + 2))?;
    a.mov(edx, eax)?;
    a.and(edx, QUEUE_SIZE as i32 - 1)?;
    a.mov(word_ptr(rdi + rdx * 2 + 4), 0)?;
    a.inc(eax)?;
    a.mov(word_ptr(rdi + 2), ax)?;
    a.mov(word_ptr(r8), 0)?;
    testing::lapic_eoi(a)?;
    a.jmp(wait)?;

    a.set_label(&mut udp)?;
    print(a, "rx len ")?;
    a.mov(eax, ecx)?;
    a.call(hex32)?;
    print(a, "\n")?;
    print_rx_buffer_and_power_off(a, hex8)
}

/// The mini-guest's VM, its NIC given by `net` (kvnet-vmm's `--net`), owned by `owner`,
/// and its serial output.
fn guest_vm(dir: &std::path::Path, net: &str, owner: &str) -> (Vm, SharedBuffer) {
    let kernel = testing::write_guest(dir, "e2e.elf", guest).expect("assemble");
    let serial = SharedBuffer::new();
    let mut config = VmConfig::new(&kernel);
    config.serial = SerialSink::Buffer(serial.clone());
    config.net = vec![net.parse().expect("net spec")];
    config.owner.name = owner.into();
    let vm = Vm::new(config).unwrap_or_else(|e| panic!("build the vm ({net}): {e}"));
    (vm, serial)
}

/// Parses the guest's `rx len` report into the received frame (virtio-net header off).
fn received_frame(serial: &str) -> Option<Vec<u8>> {
    let mut lines = serial
        .lines()
        .skip_while(|line| !line.starts_with("rx len "));
    let len = usize::from_str_radix(lines.next()?.strip_prefix("rx len ")?, 16).ok()?;
    let hex = lines.next()?;
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    (bytes.len() == len).then(|| bytes[VNET_HDR_LEN..].to_vec())
}

#[test]
fn a_guest_on_a_kvnet_network_reaches_upstream_through_nat_and_hears_back() {
    exchange_with_upstream(false);
}

/// kvnetd keeps a running VM's tap across a restart of its network and plugs it into the
/// new bridge: the VM built (and plugged in) before `net-destroy` and `net-start` talks
/// through the same descriptor afterwards.
#[test]
fn a_guest_keeps_its_link_across_a_restart_of_its_network() {
    exchange_with_upstream(true);
}

/// The bridge's settings for the test, which a restart of the network undoes: no
/// multicast snooping (its IGMP queries would take the guest's one RX buffer), and the
/// guest's address resolved without asking it (the mini-guest does not answer ARP).
fn prepare_bridge(daemon: &Daemon) {
    daemon
        .ns
        .sh(&format!(
            "ip link set kve2e0 type bridge mcast_snooping 0 && \
             ip neigh replace {GUEST_IP} lladdr {GUEST_MAC} dev kve2e0 nud permanent"
        ))
        .expect("bridge setup");
}

/// Boots the mini-guest with its NIC on the `e2e` NAT network (restarted between the
/// plug and the boot when `restart_network`) and checks its datagram's way out and the
/// answer's way back.
fn exchange_with_upstream(restart_network: bool) {
    let Some((daemon, dir, upstream)) = nat_network_with_upstream() else {
        return;
    };
    let (vm, serial) = guest_vm(
        dir.path(),
        &format!(
            "network=e2e,socket={},mac={GUEST_MAC},inbound=1000,outbound=500",
            daemon.socket().display()
        ),
        "e2e-guest",
    );
    let client = Client::new(daemon.socket());
    let ports = client.ports("e2e").expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(
        (ports[0].owner.as_str(), ports[0].mac.as_str()),
        ("e2e-guest", GUEST_MAC)
    );
    // The NIC's limits, on its tap: what the guest receives on the tap's egress, what it
    // sends through the tap's IFB device.
    assert!(testkit::htb_class(&daemon.ns, &ports[0].tap).contains(" rate 8Mbit "));
    let tap_index = daemon.ip_json(&format!("link show dev {}", ports[0].tap))[0]["ifindex"]
        .as_u64()
        .expect("tap ifindex");
    assert!(testkit::htb_class(&daemon.ns, &format!("kvifb{tap_index}")).contains(" rate 4Mbit "));
    if restart_network {
        daemon.ok(&["net-destroy", "e2e"]);
        daemon.ok(&["net-start", "e2e"]);
        assert_eq!(client.ports("e2e").expect("ports"), ports);
        prepare_bridge(&daemon);
    }

    let (server, broadcast) = upstream_server(&daemon, &upstream);
    let (datagram, from, frame) = exchange(vm, &serial, server, Some(broadcast));
    assert_eq!(datagram, PING);
    // Masqueraded: upstream sees the host's address on its link, not the guest's.
    assert_eq!(from.ip(), std::net::IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)));
    assert_answer(&frame);

    // The VM is gone, and with it its tap and its port.
    assert_eq!(client.ports("e2e").expect("ports"), []);
    assert_nothing_refused(&daemon);
}

/// A daemon running the `e2e` NAT network (bridge prepared), a temp dir, and an
/// upstream namespace behind it; `None` when the test cannot run here.
fn nat_network_with_upstream() -> Option<(Daemon, tempfile::TempDir, Netns)> {
    let mut needs = DAEMON_NEEDS.to_vec();
    needs.extend([Need::Tun, Need::Kvm]);
    if !require(&needs) {
        return None;
    }
    let daemon = Daemon::without_default_network();
    let dir = tempfile::tempdir().expect("tmp");
    let network = xml_file(dir.path(), "e2e", NETWORK_XML);
    daemon.ok(&["net-define", network.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", "e2e"]);
    prepare_bridge(&daemon);
    let upstream = Netns::new("upstream").expect("upstream ns");
    attach_upstream(&daemon, &upstream);
    Some((daemon, dir, upstream))
}

/// The upstream server's socket, and a broadcaster on the network with the address it
/// broadcasts to just before the answer (the guest must skip that frame).
fn upstream_server(daemon: &Daemon, upstream: &Netns) -> (UdpSocket, (UdpSocket, &'static str)) {
    let server = upstream
        .run(|| UdpSocket::bind(UPSTREAM))
        .expect("enter upstream")
        .expect("bind in upstream");
    let broadcaster = daemon
        .ns
        .run(|| UdpSocket::bind("192.168.150.1:0"))
        .expect("enter the daemon's namespace")
        .expect("broadcast socket");
    (server, (broadcaster, "192.168.150.255:9"))
}

/// The `kvnet-vmm` binary, whose syscall filter is on unless told otherwise: the
/// guest's datagram goes out and the answer comes in through its tap, and its console
/// log rotates (in a writer process of its own), all under the filter, which would have
/// killed it (SIGSYS) for a call outside its list, and as an unprivileged user. Its port
/// ends with it: kvnetd sees the tap close, and is asked nothing.
#[test]
fn the_vmm_binary_runs_its_guest_under_its_syscall_filter() {
    let Some((daemon, dir, upstream)) = nat_network_with_upstream() else {
        return;
    };
    let kernel = testing::write_guest(dir.path(), "e2e.elf", guest).expect("assemble");
    // An earlier run's log, full: the guest's first line rotates it.
    let console = dir.path().join("console.log");
    let full = vmm::devices::console_log::MAX_FILE_BYTES as usize;
    std::fs::write(&console, vec![b'#'; full]).expect("an earlier run's log");
    let (server, broadcast) = upstream_server(&daemon, &upstream);
    let answering = answer_once(server, Some(broadcast));
    let mut vmm = std::process::Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .arg("--kernel")
        .arg(&kernel)
        .arg("--serial")
        .arg(format!("file:{}", console.display()))
        // As nobody: the NIC's offloads are set and its frames flow with no capability.
        .args(["--user", "nobody", "--name", "e2e-guest", "--net"])
        .arg(format!(
            "network=e2e,socket={},mac={GUEST_MAC}",
            daemon.socket().display()
        ))
        .env("KVNET_VMM_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while vmm.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = vmm.kill();
    let out = vmm.wait_with_output().expect("kvnet-vmm's output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let serial = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        out.status.success(),
        "{:?}: {stderr} serial: {serial:?}",
        out.status
    );
    assert!(
        stderr.ends_with("kvnet-vmm: guest powered off\n"),
        "{stderr}"
    );
    assert!(!stderr.contains("giving the port back"), "{stderr}");

    let (datagram, from) = answering
        .join()
        .expect("server thread")
        .unwrap_or_else(|e| panic!("upstream heard nothing ({e}); serial: {serial:?}"));
    assert_eq!(datagram, PING);
    assert_eq!(from.ip(), std::net::IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)));
    assert!(serial.contains("skipped a frame\n"), "{serial:?}");
    let frame = received_frame(&serial)
        .unwrap_or_else(|| panic!("no frame in the guest's report: {serial:?}"));
    assert_answer(&frame);
    let rotated = std::fs::read(dir.path().join("console.log.0")).expect("rotated log");
    assert!(rotated.len() == full && rotated.iter().all(|&b| b == b'#'));
    let client = Client::new(daemon.socket());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client.ports("e2e").expect("ports").is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_nothing_refused(&daemon);
}

/// kvnetd refused none of the VM's requests. The library gives its port back before
/// closing its tap (a tap closed first ends the port, and the give-back would find
/// nothing); the binary asks nothing, leaving the port to end with its tap.
fn assert_nothing_refused(daemon: &Daemon) {
    let log = daemon.log();
    assert!(!log.contains("request refused"), "{log}");
}

/// Runs the VM while `server` answers its datagram, after a broadcaster sends a broadcast
/// to the address given with it, which the guest must skip. Returns the datagram, where
/// it came from, and the frame the guest received (without its virtio-net header).
fn exchange(
    vm: Vm,
    serial: &SharedBuffer,
    server: UdpSocket,
    broadcast: Option<(UdpSocket, &'static str)>,
) -> (Vec<u8>, SocketAddr, Vec<u8>) {
    let broadcasts = broadcast.is_some();
    let answering = answer_once(server, broadcast);
    let outcome = vm.run_with_timeout(Some(Duration::from_secs(30)));

    let (datagram, from) = answering
        .join()
        .expect("server thread")
        .unwrap_or_else(|e| panic!("upstream heard nothing ({e}); serial: {:?}", serial.text()));
    assert_eq!(
        outcome.expect("run"),
        ExitReason::Poweroff,
        "{:?}",
        serial.text()
    );
    assert!(
        !broadcasts || serial.text().contains("skipped a frame\n"),
        "{:?}",
        serial.text()
    );
    let frame = received_frame(&serial.text())
        .unwrap_or_else(|| panic!("no frame in the guest's report: {:?}", serial.text()));
    (datagram, from, frame)
}

/// Answers the first datagram `server` gets with [`PONG`], after a broadcast to the
/// address given with the broadcaster; returns the datagram and where it came from.
fn answer_once(
    server: UdpSocket,
    broadcast: Option<(UdpSocket, &'static str)>,
) -> std::thread::JoinHandle<std::io::Result<(Vec<u8>, SocketAddr)>> {
    std::thread::spawn(move || {
        server.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut buffer = [0u8; 512];
        let (n, from) = server.recv_from(&mut buffer)?;
        if let Some((broadcaster, to)) = broadcast {
            broadcaster.set_broadcast(true)?;
            broadcaster.send_to(b"not for the guest", to)?;
        }
        server.send_to(PONG, from)?;
        Ok((buffer[..n].to_vec(), from))
    })
}

/// Checks that `frame` is [`PONG`] from [`UPSTREAM`] to the guest.
fn assert_answer(frame: &[u8]) {
    let SocketAddr::V4(upstream_addr) = UPSTREAM else {
        unreachable!("UPSTREAM is IPv4")
    };
    let guest_mac: Vec<u8> = GUEST_MAC
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    assert_eq!(frame[..6], guest_mac[..], "to the guest");
    assert_eq!(
        frame[26..30],
        upstream_addr.ip().octets(),
        "source: upstream"
    );
    assert_eq!(
        frame[30..34],
        GUEST_IP.octets(),
        "destination: the guest, de-NATed"
    );
    assert_eq!(frame[34..36], UPSTREAM.port().to_be_bytes());
    assert_eq!(frame[36..38], GUEST_PORT.to_be_bytes());
    assert_eq!(&frame[42..], PONG);
}

/// A VM on a macvtap network talks to the LAN behind the pool's device directly: kvnetd
/// hands kvnet-vmm a macvtap queue instead of a tap, and no NAT is in the way. The LAN
/// peer plays the router's part: it has the MAC the guest's frame is addressed to.
#[test]
fn a_guest_on_a_macvtap_network_talks_to_the_lan_directly() {
    let mut needs = DAEMON_NEEDS.to_vec();
    needs.extend([Need::Tun, Need::Kvm]);
    if !require(&needs) {
        return;
    }
    let daemon = Daemon::without_default_network();
    let lan = Netns::new("lan").expect("lan ns");
    daemon
        .ns
        .sh(&format!(
            "ip link add lan0 type veth peer name eth0 netns {} && ip link set lan0 up",
            lan.name()
        ))
        .expect("veth to the lan");
    lan.sh(&format!(
        "ip link set eth0 address 52:54:00:0e:2e:01 && ip addr add 10.77.0.2/24 dev eth0 && \
         ip link set eth0 up && ip route add 192.168.150.0/24 dev eth0 && \
         ip neigh replace {GUEST_IP} lladdr {GUEST_MAC} dev eth0 nud permanent"
    ))
    .expect("lan addressing");
    let dir = tempfile::tempdir().expect("tmp");
    let network = xml_file(
        dir.path(),
        "lan",
        "<network><name>lan</name><forward mode='vepa' dev='lan0'/></network>",
    );
    daemon.ok(&["net-define", network.to_str().expect("utf-8")]);
    daemon.ok(&["net-start", "lan"]);

    let (vm, serial) = guest_vm(
        dir.path(),
        &format!(
            "network=lan,socket={},mac={GUEST_MAC}",
            daemon.socket().display()
        ),
        "lan-guest",
    );
    let client = Client::new(daemon.socket());
    let ports = client.ports("lan").expect("ports");
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(ports[0].tap.starts_with("macvtap"), "{ports:?}");

    let server = lan
        .run(|| UdpSocket::bind(UPSTREAM))
        .expect("enter the lan")
        .expect("bind in the lan");
    // macvlan hands broadcasts to its devices later, from a work queue, so one sent
    // before the answer may arrive after it: no broadcast here.
    let (datagram, from, frame) = exchange(vm, &serial, server, None);
    assert_eq!(datagram, PING);
    // Straight from the guest: its own address, no NAT.
    assert_eq!(from, SocketAddr::new(GUEST_IP.into(), GUEST_PORT));
    assert_answer(&frame);

    // The VM is gone, and with it its macvtap and its port.
    let macvtap = ports[0].tap.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon.ns.sh(&format!("ip link show {macvtap}")).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "{macvtap} outlived its VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(client.ports("lan").expect("ports"), []);
}
