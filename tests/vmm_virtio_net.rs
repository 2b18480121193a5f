//! KVM tier: a mini-guest drives the virtio-net-pci device like a driver would and
//! exchanges Ethernet frames with a peer network namespace, once with MSI-X and once
//! with MSI-X left disabled, where the device interrupts through its INTx pin.
//!
//! Host side: ns "host" holds bridge br0 with the guest's tap kvt0 and veth v0; its
//! peer v1 lives in ns "peer", where an AF_PACKET socket sees the guest's frames and
//! answers them. Guest side: it finds 1af4:1041 through ECAM, walks the capability list
//! to the virtio structures (vmm::testing's mini-driver helpers), negotiates
//! VERSION_1|MAC, sets up RX queue 0 and TX queue 1 (8 entries), posts RX buffers,
//! sends a frame and waits for the RX interrupt, whose handler prints what it saw on
//! COM1.

mod miniguest;

use std::os::fd::{AsRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use miniguest::*;
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use testkit::{Need, Netns};
use vmm::devices::virtio::net::{MacAddr, Net, NetConfig, Tap};
use vmm::testing::asm::*;
use vmm::testing::{self, hex32_subroutine, poweroff, print, virtio_regs};
use vmm::{ExitReason, SerialSink, SharedBuffer, Vm, VmConfig};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// IEEE "local experimental" EtherType: nothing else in the namespaces sends it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A minimum-size (60-byte) frame of our EtherType.
fn frame(dst: [u8; 6], src: [u8; 6], text: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(text);
    f.resize(60, 0);
    f
}

/// The `nth` (1 or 2) frame the guest sends, with source MAC `src` (the guest writes
/// zeros there and fills it in from the device config space). The texts differ so the
/// peer can tell a second frame from a duplicate of the first.
fn guest_frame(src: [u8; 6], nth: u32) -> Vec<u8> {
    let text: &[u8] = if nth == 1 {
        b"kvnet guest says hello"
    } else {
        b"kvnet guest says again"
    };
    frame([0xff; 6], src, text)
}

/// The MSI-X guest driver: RX on MSI-X vector 1 -> [`VECTOR`]; its handler prints
/// used.idx, the used length and the received bytes, then powers off.
fn guest(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut handler = a.create_label();
    let (hex32, hex8) = hex_printers(a)?;
    msix_send(a, handler, &guest_frame([0; 6], 1))?;

    // The RX handler: used.idx, the used length, the buffer bytes; EOI; power off.
    a.set_label(&mut handler)?;
    print(a, "rx used ")?;
    a.mov(rdi, RX_USED)?;
    a.movzx(eax, word_ptr(rdi + 2))?;
    a.call(hex32)?;
    print(a, " len ")?;
    a.mov(ecx, dword_ptr(rdi + 8))?;
    a.mov(eax, ecx)?;
    a.call(hex32)?;
    print(a, "\n")?;
    print_rx_buffer_and_power_off(a, hex8)
}

/// Counts INTx handler entries.
const IRQ_COUNT: u64 = testing::GUEST_SCRATCH + 0x1800;

/// The INTx guest driver: MSI-X stays disabled; the Interrupt Line register names the
/// GSI, whose IOAPIC entry the guest points at [`VECTOR`] (level, active-low). The
/// handler (a state machine on [`IRQ_COUNT`], nesting instead of `iretq`):
/// 1. EOIs without reading the ISR: the pin must fire again (level re-trigger);
/// 2. reads the ISR (acknowledging it), EOIs, and sends a second frame;
/// 3. after the peer's second answer, reads the ISR again and powers off.
///
/// Interrupts that find the ISR zero are counted as spurious, as Linux's `vp_interrupt`
/// does (IRQ_NONE): KVM injects irqfd writes from a workqueue, so a re-assert racing
/// the guest's ISR read and EOI can arrive late.
fn intx_guest(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut handler = a.create_label();
    let mut hex32 = a.create_label();
    let mut main = a.create_label();
    a.jmp(main)?;
    hex32_subroutine(a, &mut hex32)?;

    a.set_label(&mut main)?;
    driver_prologue(a, handler, 0xffff)?;
    print(a, "gsi ")?;
    a.movzx(eax, byte_ptr(virtio_regs::ECAM + 0x3c))?;
    a.call(hex32)?;
    print(a, "\n")?;
    a.movzx(eax, byte_ptr(virtio_regs::ECAM + 0x3c))?;
    testing::ioapic_route_level_low(a, VECTOR)?;
    post_rx_buffers(a, 2)?;
    prepare_tx_frame(a, &guest_frame([0; 6], 1))?;
    a.mov(rdi, TX_AVAIL)?;
    a.mov(word_ptr(rdi), AVAIL_NO_INTERRUPT)?;
    a.mov(rdi, IRQ_COUNT)?;
    a.mov(dword_ptr(rdi), 0)?;
    testing::virtio_driver_ok(a)?;
    print(a, "kick\n")?;
    a.mov(word_ptr(r8), 0)?;
    send_tx_frame(a, 1)?;
    let wait = wait_for_interrupts(a)?;

    // Prints "isr <ISR byte in ecx> used <RX used.idx>".
    let report = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        print(a, "isr ")?;
        a.mov(eax, ecx)?;
        a.call(hex32)?;
        print(a, " used ")?;
        a.mov(rdi, RX_USED)?;
        a.movzx(eax, word_ptr(rdi + 2))?;
        a.call(hex32)?;
        print(a, "\n")
    };
    let (mut acked, mut third) = (a.create_label(), a.create_label());
    a.set_label(&mut handler)?;
    a.mov(rdi, IRQ_COUNT)?;
    a.cmp(dword_ptr(rdi), 0)?;
    a.jne(acked)?;
    a.inc(dword_ptr(rdi))?;
    print(a, "irq 1: EOI without reading the ISR\n")?;
    testing::lapic_eoi(a)?;
    a.jmp(wait)?;
    // From the second interrupt on, read (and so acknowledge) the ISR first. Zero means
    // nothing happened, as a driver's handler would report: EOI and keep waiting.
    a.set_label(&mut acked)?;
    a.movzx(ecx, byte_ptr(virtio_regs::ISR))?;
    let mut pending = a.create_label();
    a.test(ecx, ecx)?;
    a.jnz(pending)?;
    testing::lapic_eoi(a)?;
    a.jmp(wait)?;
    a.set_label(&mut pending)?;
    a.mov(rdi, IRQ_COUNT)?;
    a.inc(dword_ptr(rdi))?;
    a.cmp(dword_ptr(rdi), 2)?;
    a.jne(third)?;
    print(a, "irq 2: ")?;
    report(a)?;
    testing::lapic_eoi(a)?;
    rewrite_tx_frame(a, &guest_frame([0; 6], 1), &guest_frame([0; 6], 2))?;
    send_tx_frame(a, 2)?;
    a.jmp(wait)?;
    a.set_label(&mut third)?;
    print(a, "irq 3: ")?;
    report(a)?;
    testing::lapic_eoi(a)?;
    poweroff(a)
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The host and peer namespaces, bridged to the guest's tap, and a raw socket in the peer.
struct Lan {
    host: Netns,
    _peer: Netns,
    peer_mac: MacAddr,
    sock: OwnedFd,
}

impl Lan {
    fn new() -> Lan {
        let host = Netns::new("vnet-host").expect("netns host");
        let peer = Netns::new("vnet-peer").expect("netns peer");
        // No IPv6 chatter (router solicitations, MLD) competing for the guest's buffers...
        for ns in [&host, &peer] {
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            )
            .expect("sysctl in test namespace");
        }
        // Nor IGMP reports: a snooping bridge joins 224.0.0.106 (multicast router
        // discovery) and reports it, and multicast-capable ports join groups too.
        host.sh(&format!(
            "ip link add br0 type bridge mcast_snooping 0 && ip link set br0 multicast off up && \
             ip tuntap add dev kvt0 mode tap vnet_hdr && \
             ip link set kvt0 master br0 multicast off up && \
             ip link add v0 type veth peer name v1 netns {} && \
             ip link set v0 master br0 multicast off up",
            peer.name()
        ))
        .expect("host topology");
        peer.sh("ip link set v1 multicast off up")
            .expect("peer link");
        let peer_mac: MacAddr = peer
            .sh("cat /sys/class/net/v1/address")
            .expect("peer mac")
            .trim()
            .parse()
            .expect("parse mac");
        // A socket keeps the namespace it was created in: open it in the peer, use it here.
        let sock = peer
            .run(|| {
                socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
            })
            .expect("run in peer ns")
            .expect("AF_PACKET socket");
        setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000)).expect("timeout");
        Lan {
            host,
            _peer: peer,
            peer_mac,
            sock,
        }
    }

    /// A VM booting `guest` with a virtio-net NIC on kvt0, once the bridge forwards.
    fn vm(
        &self,
        guest: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
    ) -> (Vm, SharedBuffer) {
        let dir = tempfile::tempdir().expect("tmp");
        let kernel = testing::write_guest(dir.path(), "virtio-net.elf", guest).expect("assemble");
        let serial = SharedBuffer::new();
        let mut config = VmConfig::new(&kernel);
        config.serial = SerialSink::Buffer(serial.clone());
        let vm = Vm::new(config).expect("build vm");
        let tap = self
            .host
            .run(|| Tap::open_named("kvt0"))
            .expect("run in host ns")
            .expect("open tap");
        let net = Net::with_tap(
            NetConfig {
                mac: MacAddr(GUEST_MAC),
                mtu: None,
            },
            tap,
        )
        .expect("virtio-net on the tap");
        let addr = vm.add_virtio_device(Box::new(net)).expect("add device");
        assert_eq!(addr.to_string(), "0000:00:01.0");
        // With the tap attached, both bridge ports must forward before the guest sends.
        assert!(
            wait_for(Duration::from_secs(10), || {
                self.host
                    .sh("cat /sys/class/net/kvt0/brport/state /sys/class/net/v0/brport/state")
                    .is_ok_and(|s| s == "3\n3\n")
            }),
            "bridge ports never reached forwarding"
        );
        (vm, serial)
    }

    /// Waits up to 30 s for the guest's `nth` frame and returns its sender. Other frames
    /// of our EtherType (the peer's own replies, which AF_PACKET also shows, or a
    /// duplicate of an earlier frame) are skipped.
    fn next_guest_frame(&self, running: &JoinHandle<VmOutcome>, nth: u32) -> Option<LinkAddr> {
        let expected = guest_frame(GUEST_MAC, nth);
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !running.is_finished() {
            if let Ok((n, Some(from))) = recvfrom::<LinkAddr>(self.sock.as_raw_fd(), &mut buf)
                && n >= 14
                && buf[12..14] == ETHERTYPE
            {
                if buf[..n] == expected[..] {
                    return Some(from);
                }
                eprintln!("peer: skipping frame {}", hex(&buf[..n]));
            }
        }
        None
    }

    /// Answers the guest through the interface its frame came in on.
    fn reply(&self, to: &LinkAddr, text: &[u8]) -> Vec<u8> {
        let reply = frame(GUEST_MAC, self.peer_mac.0, text);
        sendto(self.sock.as_raw_fd(), &reply, to, MsgFlags::empty()).expect("send reply");
        reply
    }
}

type VmOutcome = Result<ExitReason, vmm::Error>;

/// Starts `vm` on a thread (stopped after 60 s at the latest).
fn start(vm: Vm) -> (JoinHandle<VmOutcome>, vmm::StopHandle) {
    let stop = vm.stop_handle();
    let running = std::thread::spawn(move || vm.run_with_timeout(Some(Duration::from_secs(60))));
    (running, stop)
}

/// Stops the VM and fails with what the guest printed.
fn give_up(
    what: &str,
    running: JoinHandle<VmOutcome>,
    stop: &vmm::StopHandle,
    serial: &SharedBuffer,
) -> ! {
    stop.stop();
    let outcome = running.join().expect("vm thread");
    panic!("{what}; vm {outcome:?}, serial: {:?}", serial.text());
}

#[test]
fn guest_driver_exchanges_frames_with_a_peer_namespace() {
    if !testkit::require(&[Need::Kvm, Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let lan = Lan::new();
    let (vm, serial) = lan.vm(guest);
    let (running, stop) = start(vm);
    let Some(from) = lan.next_guest_frame(&running, 1) else {
        give_up("no frame from the guest", running, &stop, &serial);
    };
    let reply = lan.reply(&from, b"the peer answers the guest");

    let reason = running.join().expect("vm thread").expect("run");
    let mut header = [0u8; VNET_HDR_LEN];
    header[10] = 1; // num_buffers
    let expected = format!(
        "found 1af4:1041\nkick\nrx used 00000001 len {:08x}\n{}{}\n",
        VNET_HDR_LEN + reply.len(),
        hex(&header),
        hex(&reply)
    );
    assert_eq!(serial.text(), expected);
    assert_eq!(reason, ExitReason::Poweroff);
}

#[test]
fn guest_without_msix_gets_level_triggered_intx_through_the_ioapic() {
    if !testkit::require(&[Need::Kvm, Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let lan = Lan::new();
    let (vm, serial) = lan.vm(intx_guest);
    let (running, stop) = start(vm);
    for (nth, text) in [(1, &b"first answer"[..]), (2, b"second answer")] {
        let Some(from) = lan.next_guest_frame(&running, nth) else {
            give_up(
                &format!("no frame {nth} from the guest"),
                running,
                &stop,
                &serial,
            );
        };
        lan.reply(&from, text);
    }
    let reason = running.join().expect("vm thread").expect("run");
    let gsi = vmm::devices::pci::intx::gsi_for(1, vmm::devices::pci::intx::PIN_INTA);
    let expected = format!(
        "found 1af4:1041\ngsi {gsi:08x}\nkick\n\
         irq 1: EOI without reading the ISR\n\
         irq 2: isr 00000001 used 00000001\n\
         irq 3: isr 00000001 used 00000002\n"
    );
    assert_eq!(serial.text(), expected);
    assert_eq!(reason, ExitReason::Poweroff);
}
