//! KVM tier: a mini-guest drives the virtio-net-pci device like a driver would and
//! exchanges one Ethernet frame each way with a peer network namespace.
//!
//! Host side: ns "host" holds bridge br0 with the guest's tap kvt0 and veth v0; its
//! peer v1 lives in ns "peer", where an AF_PACKET socket sees the guest's frame and
//! answers it. Guest side: it finds 1af4:1041 through ECAM, walks the capability list
//! to the common, notify and device config structures and the MSI-X table, negotiates
//! VERSION_1|MAC, sets up RX queue 0 and TX queue 1 (8 entries), posts one RX buffer,
//! sends a frame and waits for the RX MSI-X interrupt, whose handler prints the
//! received bytes on COM1.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use testkit::{Need, Netns};
use vmm::boot::layout;
use vmm::devices::virtio::net::{MacAddr, Net, NetConfig, Tap};
use vmm::testing::asm::*;
use vmm::testing::{self, hex32_subroutine, poweroff, print};
use vmm::{ExitReason, SerialSink, SharedBuffer, Vm, VmConfig};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// IEEE "local experimental" EtherType: nothing else in the namespaces sends it.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const VECTOR: u32 = 0x41;
const QUEUE_SIZE: u32 = 8;

// Guest RAM layout (all in the zeroed scratch area).
const IDT: u64 = testing::GUEST_SCRATCH;
const IDTR: u64 = testing::GUEST_SCRATCH + 0x1000;
const RX_DESC: u64 = 0x21_0000;
const RX_AVAIL: u64 = 0x21_1000;
const RX_USED: u64 = 0x21_2000;
const TX_DESC: u64 = 0x22_0000;
const TX_AVAIL: u64 = 0x22_1000;
const TX_USED: u64 = 0x22_2000;
const RX_BUF: u64 = 0x23_0000;
const RX_BUF_LEN: u32 = 2048;
const TX_BUF: u64 = 0x24_0000;
const VNET_HDR_LEN: usize = 12;

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

/// The frame the guest sends, with its source MAC left zero (the guest fills it in
/// from the device config space).
fn guest_frame(src: [u8; 6]) -> Vec<u8> {
    frame([0xff; 6], src, b"kvnet guest says hello")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `hex8`: prints `al` as two hex digits on COM1; clobbers nothing but flags.
fn hex8_subroutine(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<(), IcedError> {
    let mut nibble = a.create_label();
    let mut digit = a.create_label();
    a.set_label(label)?;
    a.push(rax)?;
    a.push(rbx)?;
    a.push(rdx)?;
    a.movzx(ebx, al)?;
    a.mov(dx, layout::SERIAL_PORT as u32)?;
    a.mov(eax, ebx)?;
    a.shr(eax, 4)?;
    a.call(nibble)?;
    a.mov(eax, ebx)?;
    a.and(eax, 0xf)?;
    a.call(nibble)?;
    a.pop(rdx)?;
    a.pop(rbx)?;
    a.pop(rax)?;
    a.ret()?;
    a.set_label(&mut nibble)?;
    a.add(eax, b'0' as i32)?;
    a.cmp(eax, b'9' as i32)?;
    a.jbe(digit)?;
    a.add(eax, (b'a' - b'9' - 1) as i32)?;
    a.set_label(&mut digit)?;
    a.out(dx, al)?;
    a.ret()?;
    Ok(())
}

/// Prints `text` and powers off.
fn fail(a: &mut CodeAssembler, label: &mut CodeLabel, text: &str) -> Result<(), IcedError> {
    a.set_label(label)?;
    print(a, text)?;
    poweroff(a)
}

/// The guest driver. Registers: rbx = ECAM base of the device, r12 = common cfg,
/// r13 = notify base, r14 = notify_off_multiplier, r11 = device cfg, r10 = MSI-X
/// table, r9 = MSI-X capability offset, r8/rbp = RX/TX notify addresses.
fn guest(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut handler = a.create_label();
    let mut hex32 = a.create_label();
    let mut hex8 = a.create_label();
    let mut bar_addr = a.create_label();
    let mut main = a.create_label();
    let mut no_device = a.create_label();
    let mut caps_missing = a.create_label();
    let mut features_refused = a.create_label();
    let mut needs_reset = a.create_label();
    a.jmp(main)?;
    hex32_subroutine(a, &mut hex32)?;
    hex8_subroutine(a, &mut hex8)?;
    // bar_addr: rdx = address of 64-bit BAR rcx of the device at rbx (clobbers rdi).
    a.set_label(&mut bar_addr)?;
    a.mov(edx, dword_ptr(rbx + rcx * 4 + 0x14))?;
    a.shl(rdx, 32)?;
    a.mov(edi, dword_ptr(rbx + rcx * 4 + 0x10))?;
    a.and(edi, -16)?;
    a.or(rdx, rdi)?;
    a.ret()?;
    fail(a, &mut no_device, "no virtio-net device\n")?;
    fail(a, &mut caps_missing, "virtio capabilities missing\n")?;
    fail(a, &mut features_refused, "FEATURES_OK refused\n")?;
    fail(a, &mut needs_reset, "device needs reset\n")?;

    a.set_label(&mut main)?;
    // Only the MSI may interrupt: mask the 8259s, install the IDT gate, enable the LAPIC.
    a.mov(al, 0xff)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    a.lea(rax, ptr(handler))?;
    a.mov(rdi, IDT + u64::from(VECTOR) * 16)?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), 0x10)?;
    a.mov(word_ptr(rdi + 4), 0x8e00)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0)?;
    a.mov(rdi, IDTR)?;
    a.mov(word_ptr(rdi), 0xfff)?;
    a.mov(rax, IDT)?;
    a.mov(qword_ptr(rdi + 2), rax)?;
    a.lidt(ptr(rdi))?;
    a.mov(rdi, layout::LAPIC_START)?;
    a.mov(dword_ptr(rdi + 0xf0), 0x1ff)?;

    // Enumerate bus 0 through ECAM for 1af4:1041.
    let mut scan = a.create_label();
    let mut found = a.create_label();
    a.mov(rbx, layout::PCI_ECAM_START)?;
    a.mov(rsi, layout::PCI_ECAM_START + (32 << 15))?;
    a.set_label(&mut scan)?;
    a.cmp(dword_ptr(rbx), 0x1041_1af4)?;
    a.je(found)?;
    a.add(rbx, 1 << 15)?;
    a.cmp(rbx, rsi)?;
    a.jb(scan)?;
    a.jmp(no_device)?;
    a.set_label(&mut found)?;
    print(a, "found 1af4:1041\n")?;
    a.mov(word_ptr(rbx + 4), 0x6)?; // memory space + bus master

    // Walk the capability list.
    let mut cap_loop = a.create_label();
    let mut not_msix = a.create_label();
    let mut not_common = a.create_label();
    let mut not_notify = a.create_label();
    let mut next_cap = a.create_label();
    let mut caps_done = a.create_label();
    for r in [r9, r10, r11, r12, r13, r14] {
        a.xor(r, r)?;
    }
    a.movzx(esi, byte_ptr(rbx + 0x34))?;
    a.set_label(&mut cap_loop)?;
    a.test(esi, esi)?;
    a.jz(caps_done)?;
    a.movzx(eax, byte_ptr(rbx + rsi))?;
    a.cmp(eax, 0x11)?;
    a.jne(not_msix)?;
    a.mov(r9, rsi)?;
    a.mov(eax, dword_ptr(rbx + rsi + 4))?;
    a.mov(ecx, eax)?;
    a.and(ecx, 7)?;
    a.and(eax, -8)?;
    a.call(bar_addr)?;
    a.add(rdx, rax)?;
    a.mov(r10, rdx)?;
    a.jmp(next_cap)?;
    a.set_label(&mut not_msix)?;
    a.cmp(eax, 0x09)?;
    a.jne(next_cap)?;
    a.movzx(ecx, byte_ptr(rbx + rsi + 4))?;
    a.call(bar_addr)?;
    a.mov(eax, dword_ptr(rbx + rsi + 8))?;
    a.add(rdx, rax)?;
    a.movzx(eax, byte_ptr(rbx + rsi + 3))?;
    a.cmp(eax, 1)?;
    a.jne(not_common)?;
    a.mov(r12, rdx)?;
    a.jmp(next_cap)?;
    a.set_label(&mut not_common)?;
    a.cmp(eax, 2)?;
    a.jne(not_notify)?;
    a.mov(r13, rdx)?;
    a.mov(r14d, dword_ptr(rbx + rsi + 16))?;
    a.jmp(next_cap)?;
    a.set_label(&mut not_notify)?;
    a.cmp(eax, 4)?;
    a.jne(next_cap)?;
    a.mov(r11, rdx)?;
    a.set_label(&mut next_cap)?;
    a.movzx(esi, byte_ptr(rbx + rsi + 1))?;
    a.jmp(cap_loop)?;
    a.set_label(&mut caps_done)?;
    for r in [r9, r10, r11, r12, r13] {
        a.test(r, r)?;
        a.jz(caps_missing)?;
    }

    // Reset, ACKNOWLEDGE|DRIVER, VERSION_1 (bit 32) and MAC (bit 5), FEATURES_OK.
    a.mov(byte_ptr(r12 + 0x14), 0)?;
    a.mov(byte_ptr(r12 + 0x14), 1)?;
    a.mov(byte_ptr(r12 + 0x14), 3)?;
    a.mov(dword_ptr(r12 + 0x08), 0)?;
    a.mov(dword_ptr(r12 + 0x0c), 1 << 5)?;
    a.mov(dword_ptr(r12 + 0x08), 1)?;
    a.mov(dword_ptr(r12 + 0x0c), 1)?;
    a.mov(byte_ptr(r12 + 0x14), 0xb)?;
    a.test(byte_ptr(r12 + 0x14), 8)?;
    a.jz(features_refused)?;
    a.mov(word_ptr(r12 + 0x10), 0xffff)?; // no config interrupt

    // Queues: RX 0 on MSI-X vector 1, TX 1 without interrupts.
    for (index, vector, desc, avail, used, notify) in [
        (0u32, 1u32, RX_DESC, RX_AVAIL, RX_USED, r8),
        (1, 0xffff, TX_DESC, TX_AVAIL, TX_USED, rbp),
    ] {
        a.mov(word_ptr(r12 + 0x16), index)?;
        a.mov(word_ptr(r12 + 0x18), QUEUE_SIZE)?;
        a.mov(word_ptr(r12 + 0x1a), vector)?;
        for (reg, addr) in [(0x20, desc), (0x28, avail), (0x30, used)] {
            a.mov(rax, addr)?;
            a.mov(qword_ptr(r12 + reg), rax)?;
        }
        a.mov(word_ptr(r12 + 0x1c), 1)?;
        a.movzx(eax, word_ptr(r12 + 0x1e))?;
        a.imul_2(eax, r14d)?;
        a.mov(notify, r13)?;
        a.add(notify, rax)?;
    }
    // MSI-X table entry 1 -> VECTOR on APIC 0, unmasked; then enable MSI-X.
    a.mov(dword_ptr(r10 + 16), 0xfee0_0000u32 as i32)?;
    a.mov(dword_ptr(r10 + 20), 0)?;
    a.mov(dword_ptr(r10 + 24), VECTOR)?;
    a.mov(dword_ptr(r10 + 28), 0)?;
    a.mov(word_ptr(rbx + r9 + 2), 0x8000)?;

    // One RX buffer: descriptor 0, device-writable.
    a.mov(rdi, RX_DESC)?;
    a.mov(rax, RX_BUF)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(dword_ptr(rdi + 8), RX_BUF_LEN)?;
    a.mov(word_ptr(rdi + 12), 2)?;
    a.mov(rdi, RX_AVAIL)?;
    a.mov(word_ptr(rdi + 4), 0)?;
    a.mov(word_ptr(rdi + 2), 1)?;

    // The TX frame after a zeroed 12-byte header; source MAC from the device config.
    a.mov(rdi, TX_BUF + VNET_HDR_LEN as u64)?;
    for (i, chunk) in guest_frame([0; 6]).chunks(4).enumerate() {
        let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        a.mov(dword_ptr(rdi + (i * 4) as i32), value)?;
    }
    a.mov(eax, dword_ptr(r11))?;
    a.mov(dword_ptr(rdi + 6), eax)?;
    a.mov(ax, word_ptr(r11 + 4))?;
    a.mov(word_ptr(rdi + 10), ax)?;
    a.mov(rdi, TX_DESC)?;
    a.mov(rax, TX_BUF)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(dword_ptr(rdi + 8), (VNET_HDR_LEN + 60) as u32)?;
    a.mov(word_ptr(rdi + 12), 0)?;
    a.mov(rdi, TX_AVAIL)?;
    a.mov(word_ptr(rdi + 4), 0)?;
    a.mov(word_ptr(rdi + 2), 1)?;

    // DRIVER_OK, then kick both queues and wait for the RX interrupt.
    a.mov(byte_ptr(r12 + 0x14), 0xf)?;
    a.test(byte_ptr(r12 + 0x14), 0x40)?;
    a.jnz(needs_reset)?;
    print(a, "kick\n")?;
    a.sti()?;
    a.mov(word_ptr(r8), 0)?;
    a.mov(word_ptr(rbp), 1)?;
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.hlt()?;
    a.jmp(wait)?;

    // The RX handler: used.idx, the used length, the buffer bytes; EOI; power off.
    let mut dump = a.create_label();
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
    a.cmp(ecx, RX_BUF_LEN)?;
    a.jbe(dump)?;
    a.mov(ecx, RX_BUF_LEN)?;
    a.set_label(&mut dump)?;
    let (mut byte, mut done) = (a.create_label(), a.create_label());
    a.mov(rsi, RX_BUF)?;
    a.set_label(&mut byte)?;
    a.test(ecx, ecx)?;
    a.jz(done)?;
    a.mov(al, byte_ptr(rsi))?;
    a.call(hex8)?;
    a.inc(rsi)?;
    a.dec(ecx)?;
    a.jmp(byte)?;
    a.set_label(&mut done)?;
    print(a, "\n")?;
    a.mov(rdi, layout::LAPIC_START)?;
    a.mov(dword_ptr(rdi + 0xb0), 0)?;
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

#[test]
fn guest_driver_exchanges_frames_with_a_peer_namespace() {
    if !testkit::require(&[Need::Kvm, Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let host = Netns::new("vnet-host").expect("netns host");
    let peer = Netns::new("vnet-peer").expect("netns peer");
    // No IPv6 chatter (router solicitations, MLD) competing for the guest's buffer.
    for ns in [&host, &peer] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            .expect("sysctl in test namespace");
    }
    host.sh(&format!(
        "ip link add br0 type bridge && ip link set br0 up && \
         ip tuntap add dev kvt0 mode tap vnet_hdr && ip link set kvt0 master br0 up && \
         ip link add v0 type veth peer name v1 netns {} && ip link set v0 master br0 up",
        peer.name()
    ))
    .expect("host topology");
    peer.sh("ip link set v1 up").expect("peer link");
    let peer_mac: MacAddr = peer
        .sh("cat /sys/class/net/v1/address")
        .expect("peer mac")
        .trim()
        .parse()
        .expect("parse mac");

    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "virtio-net.elf", guest).expect("assemble");
    let serial = SharedBuffer::new();
    let mut config = VmConfig::new(&kernel);
    config.serial = SerialSink::Buffer(serial.clone());
    let vm = Vm::new(config).expect("build vm");
    let tap = host
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
            host.sh("cat /sys/class/net/kvt0/brport/state /sys/class/net/v0/brport/state")
                .is_ok_and(|s| s == "3\n3\n")
        }),
        "bridge ports never reached forwarding"
    );

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

    let stop = vm.stop_handle();
    let running = std::thread::spawn(move || vm.run_with_timeout(Some(Duration::from_secs(60))));

    // The guest's frame, seen on v1.
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = None;
    while received.is_none() && Instant::now() < deadline && !running.is_finished() {
        if let Ok((n, Some(from))) = recvfrom::<LinkAddr>(sock.as_raw_fd(), &mut buf)
            && n >= 14
            && buf[12..14] == ETHERTYPE
        {
            received = Some((buf[..n].to_vec(), from));
        }
    }
    let Some((sent_by_guest, from)) = received else {
        stop.stop();
        let outcome = running.join().expect("vm thread");
        panic!(
            "no frame from the guest; vm {outcome:?}, serial: {}",
            serial.text()
        );
    };
    assert_eq!(hex(&sent_by_guest), hex(&guest_frame(GUEST_MAC)));

    // Answer to the guest's MAC through the interface the frame came in on.
    let reply = frame(GUEST_MAC, peer_mac.0, b"the peer answers the guest");
    sendto(sock.as_raw_fd(), &reply, &from, MsgFlags::empty()).expect("send reply");

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
