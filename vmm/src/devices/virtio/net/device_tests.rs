//! Pure tests of the virtio-net device: `virtio_queue::mock` rings in guest
//! memory, a `SOCK_SEQPACKET` socketpair standing in for the tap.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::tap_offload_flags;
use super::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6};
use super::test_utils::{RecordingInterrupt, SeqpacketBackend, fuzz_net_device};
use super::*;
use crate::devices::virtio::{ActivateError, InterruptKind, VirtioDevice};

const MEM_SIZE: usize = 0x40_0000;
const RX_RING: u64 = 0x0;
const TX_RING: u64 = 0x1_0000;
const BUFFERS: u64 = 0x10_0000;
const SIZE: u16 = 256;

const fn bit(b: u32) -> u64 {
    1 << b
}

const MODERN: u64 = bit(VIRTIO_F_VERSION_1);
const GSO: u64 = bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6);
const MRG: u64 = bit(VIRTIO_NET_F_MRG_RXBUF);
const EVENT_IDX: u64 = bit(VIRTIO_RING_F_EVENT_IDX);

type Mem = GuestMemoryMmap;

/// The driver's side of one queue.
struct Driver {
    mock: MockSplitQueue<'static, Mem>,
    mem: &'static Mem,
    next_desc: u16,
    next_buf: u64,
}

impl Driver {
    fn new(mem: &'static Mem, base: u64, buffers: u64) -> Driver {
        Driver {
            mock: MockSplitQueue::create(mem, GuestAddress(base), SIZE),
            mem,
            next_desc: 0,
            next_buf: buffers,
        }
    }

    fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().expect("queue")
    }

    /// Allocates a buffer of `len` bytes in guest memory.
    fn buffer(&mut self, len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        addr
    }

    /// Publishes a chain of (addr, len, flags) descriptors, linked in order.
    fn add_chain(&mut self, descs: &[(u64, u32, u32)]) -> u16 {
        // Wrap around the table; tests let the device consume earlier chains first.
        if usize::from(self.next_desc) + descs.len() > usize::from(SIZE) {
            self.next_desc = 0;
        }
        let head = self.next_desc;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last {
                    flags
                } else {
                    flags | VRING_DESC_F_NEXT
                };
                let next = if last { 0 } else { head + i as u16 + 1 };
                RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next))
            })
            .collect();
        self.mock.add_desc_chains(&raw, head).expect("add chain");
        self.next_desc += descs.len() as u16;
        head
    }

    /// Stores raw descriptors at `at` and publishes `head` as is.
    fn add_raw(&mut self, at: u16, descs: &[Descriptor], head: u16) {
        for (i, d) in descs.iter().enumerate() {
            self.mock
                .desc_table()
                .store(at + i as u16, RawDescriptor::from(*d))
                .expect("store");
        }
        self.publish(head);
        self.next_desc = self.next_desc.max(at + descs.len() as u16);
    }

    fn publish(&self, head: u16) {
        let idx = self.mock.avail().idx().load();
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(idx % SIZE))
            .expect("slot")
            .store(head);
        self.mock.avail().idx().store(idx.wrapping_add(1));
    }

    /// Every used element so far: (id, len).
    fn used(&self) -> Vec<(u32, u32)> {
        let idx = self.mock.used().idx().load();
        (0..idx)
            .map(|i| {
                let e = self
                    .mock
                    .used()
                    .ring()
                    .ref_at(usize::from(i % SIZE))
                    .expect("used")
                    .load();
                (e.id(), e.len())
            })
            .collect()
    }

    fn avail_addr(&self) -> u64 {
        self.mock.avail_addr().0
    }

    fn set_avail_flags(&self, flags: u16) {
        self.mem
            .write_obj(flags, GuestAddress(self.avail_addr()))
            .expect("flags");
    }

    fn set_used_event(&self, value: u16) {
        let at = self.avail_addr() + 4 + 2 * u64::from(SIZE);
        self.mem
            .write_obj(value, GuestAddress(at))
            .expect("used_event");
    }

    fn avail_event(&self) -> u16 {
        let at = self.mock.used_addr().0 + 4 + 8 * u64::from(SIZE);
        self.mem.read_obj(GuestAddress(at)).expect("avail_event")
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}

struct Harness {
    mem: &'static Arc<Mem>,
    net: Net,
    worker: NetWorker,
    rx: Driver,
    tx: Driver,
    peer: OwnedFd,
    interrupt: Arc<RecordingInterrupt>,
    offload: Arc<std::sync::atomic::AtomicU32>,
}

fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

fn new_mem() -> &'static Arc<Mem> {
    // Leaked so the mock rings (which borrow the memory) can live beside the worker.
    Box::leak(Box::new(Arc::new(
        Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
    )))
}

fn test_net(backend: Box<dyn NetBackend>) -> Net {
    Net::new(
        "test",
        NetConfig {
            mac: MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
            mtu: Some(1500),
        },
        backend,
    )
}

fn harness(features: u64) -> Harness {
    harness_in(new_mem(), RX_RING, features)
}

/// A harness on `mem` with the RX rings at `rx_ring`.
fn harness_in(mem: &'static Arc<Mem>, rx_ring: u64, features: u64) -> Harness {
    harness_wrapped(mem, rx_ring, features, |backend| Box::new(backend))
}

/// A harness whose device has the socketpair backend as `wrap` makes it.
fn harness_wrapped(
    mem: &'static Arc<Mem>,
    rx_ring: u64,
    features: u64,
    wrap: impl FnOnce(SeqpacketBackend) -> Box<dyn NetBackend>,
) -> Harness {
    let (ours, peer) = seqpacket_pair();
    let backend = SeqpacketBackend::new(ours).expect("backend");
    let offload = Arc::clone(&backend.offload);
    let mut net = test_net(wrap(backend));
    net.ack_features(features | MODERN);
    let rx = Driver::new(mem, rx_ring, BUFFERS);
    let tx = Driver::new(mem, TX_RING, BUFFERS + 0x10_0000);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let queues = vec![
        (rx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
        (tx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
    ];
    let worker = net
        .prepare_worker(Arc::clone(mem), interrupt.clone(), queues)
        .expect("activate");
    Harness {
        mem,
        net,
        worker,
        rx,
        tx,
        peer,
        interrupt,
        offload,
    }
}

impl Harness {
    fn stats(&self) -> NetStats {
        self.net.stats()
    }

    /// The host sends a frame (vnet header + payload) to the guest.
    fn host_send(&self, frame: &[u8]) {
        let n = nix::unistd::write(self.peer.as_fd(), frame).expect("host send");
        assert_eq!(n, frame.len());
    }

    /// Frames the guest sent so far.
    fn host_recv_all(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70000];
        while let Ok(n) = nix::unistd::read(self.peer.as_fd(), &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    /// A TX chain carrying `frame`, split after the header like Linux does.
    fn guest_send(&mut self, frame: &[u8]) -> u16 {
        let (hdr, data) = frame.split_at(VNET_HDR_LEN);
        let a = self.tx.buffer(hdr.len() as u32);
        let b = self.tx.buffer(data.len() as u32);
        self.mem.write_slice(hdr, GuestAddress(a)).expect("hdr");
        self.mem.write_slice(data, GuestAddress(b)).expect("data");
        self.tx
            .add_chain(&[(a, hdr.len() as u32, 0), (b, data.len() as u32, 0)])
    }

    /// Posts `count` RX chains of one `len`-byte buffer each; returns each chain's
    /// (head, buffer address).
    fn guest_post_rx_buffers(&mut self, count: u16, len: u32) -> Vec<(u16, u64)> {
        (0..count)
            .map(|_| {
                let (head, bufs) = self.guest_post_rx(&[len]);
                (head, bufs[0])
            })
            .collect()
    }

    /// Posts an RX chain of writable buffers with the given lengths; returns
    /// (head, buffer addresses).
    fn guest_post_rx(&mut self, lens: &[u32]) -> (u16, Vec<u64>) {
        let bufs: Vec<u64> = lens.iter().map(|&l| self.rx.buffer(l)).collect();
        let descs: Vec<(u64, u32, u32)> = bufs
            .iter()
            .zip(lens)
            .map(|(&a, &l)| (a, l, VRING_DESC_F_WRITE))
            .collect();
        (self.rx.add_chain(&descs), bufs)
    }
}

/// A vnet header followed by an Ethernet frame of `len` bytes: NEEDS_CSUM with a GSO
/// type, else DATA_VALID (which a tap sets whatever its offloads).
fn frame(len: usize, gso_type: u8, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    f[0] = if gso_type != 0 {
        VIRTIO_NET_HDR_F_NEEDS_CSUM
    } else {
        VIRTIO_NET_HDR_F_DATA_VALID
    } as u8;
    f[1] = gso_type;
    f[2..4].copy_from_slice(&54u16.to_le_bytes());
    f[4..6].copy_from_slice(&(if gso_type != 0 { 1448u16 } else { 0 }).to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
    for (i, b) in f[VNET_HDR_LEN..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(seed);
    }
    f
}

#[test]
fn config_space_and_features() {
    let net = test_net(Box::new(
        SeqpacketBackend::new(seqpacket_pair().0).expect("backend"),
    ));
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[256, 256]);
    let mut space = [0xffu8; 14];
    net.read_config(0, &mut space);
    assert_eq!(
        space,
        [
            0x52, 0x54, 0, 0xaa, 0xbb, 0xcc, 1, 0, 1, 0, 0xdc, 0x05, 0, 0
        ]
    );
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    let mut far = [0xffu8; 4];
    net.read_config(u64::MAX, &mut far);
    assert_eq!(far, [0; 4]);
    for feature in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_ECN,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(
            net.features() & bit(feature),
            0,
            "feature {feature} not offered"
        );
    }
    for feature in [
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_GUEST_UFO,
    ] {
        assert_eq!(
            net.features() & bit(feature),
            0,
            "feature {feature} offered"
        );
    }
    // Without a configured MTU the feature is not offered.
    let net = Net::new(
        "nomtu",
        NetConfig {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            mtu: None,
        },
        Box::new(SeqpacketBackend::new(seqpacket_pair().0).expect("backend")),
    );
    assert_eq!(net.features() & bit(VIRTIO_NET_F_MTU), 0);
}

#[test]
fn ack_drops_unoffered_bits_and_activation_needs_version_1() {
    let mut net = test_net(Box::new(
        SeqpacketBackend::new(seqpacket_pair().0).expect("backend"),
    ));
    net.ack_features(bit(VIRTIO_NET_F_CTRL_VQ) | bit(VIRTIO_NET_F_MAC));
    assert_eq!(net.acked_features(), bit(VIRTIO_NET_F_MAC));
    let mem = new_mem();
    let rx = Driver::new(mem, RX_RING, BUFFERS);
    let tx = Driver::new(mem, TX_RING, BUFFERS);
    let queues = vec![
        (rx.queue(), EventFd::new(0).expect("evt")),
        (tx.queue(), EventFd::new(0).expect("evt")),
    ];
    let err = net
        .prepare_worker(
            Arc::clone(mem),
            Arc::new(RecordingInterrupt::default()),
            queues,
        )
        .expect_err("legacy driver");
    assert!(matches!(err, ActivateError::LegacyDriver), "{err}");
}

#[test]
fn offloads_follow_the_accepted_guest_features() {
    assert_eq!(tap_offload_flags(0), 0);
    assert_eq!(tap_offload_flags(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
    assert_eq!(tap_offload_flags(bit(VIRTIO_NET_F_GUEST_CSUM)), TUN_F_CSUM);
    let all = GSO | bit(VIRTIO_NET_F_GUEST_ECN);
    assert_eq!(
        tap_offload_flags(all),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    let h = harness(all);
    assert_eq!(
        h.offload.load(Ordering::SeqCst),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
    );
    // The first activation turns them off on a tap an earlier VMM left them on.
    let h = harness(0);
    assert_eq!(h.offload.load(Ordering::SeqCst), 0);
}

/// Each TUNSETOFFLOAD takes the kernel's RTNL lock and reaches every netlink listener
/// on the host: a guest cycling through resets makes none after the first activation,
/// with offloads or without, and a driver that takes other features gets them set.
#[test]
fn a_guest_cycling_through_resets_sets_offloads_only_when_they_change() {
    let (ours, _peer) = seqpacket_pair();
    let backend = SeqpacketBackend::new(ours).expect("backend");
    let offload = Arc::clone(&backend.offload);
    let mut net = test_net(Box::new(backend));
    let mem = new_mem();
    let activate = |net: &mut Net, features: u64| {
        net.ack_features(MODERN | features);
        net.activate(
            Arc::clone(mem),
            Arc::new(RecordingInterrupt::default()),
            vec![
                (
                    Driver::new(mem, RX_RING, BUFFERS).queue(),
                    EventFd::new(EFD_NONBLOCK).expect("evt"),
                ),
                (
                    Driver::new(mem, TX_RING, BUFFERS).queue(),
                    EventFd::new(EFD_NONBLOCK).expect("evt"),
                ),
            ],
        )
        .expect("activate");
    };
    activate(&mut net, 0);
    assert_eq!(offload.load(Ordering::SeqCst), 0);
    // A value no call would set: it stays while nothing is called.
    offload.store(u32::MAX, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(net.reset());
        activate(&mut net, 0);
    }
    assert_eq!(offload.load(Ordering::SeqCst), u32::MAX);
    assert!(net.reset());
    activate(&mut net, GSO);
    let gso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    assert_eq!(offload.load(Ordering::SeqCst), gso);
    offload.store(u32::MAX, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(net.reset());
        activate(&mut net, GSO);
    }
    assert_eq!(offload.load(Ordering::SeqCst), u32::MAX);
    // The next driver takes none: they go.
    assert!(net.reset());
    activate(&mut net, 0);
    assert_eq!(offload.load(Ordering::SeqCst), 0);
}

#[test]
fn tx_frame_reaches_the_backend_with_its_header() {
    let mut h = harness(GSO);
    let f1 = frame(1514, 0, 1);
    let f2 = frame(60000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 2);
    let h1 = h.guest_send(&f1);
    let h2 = h.guest_send(&f2);
    h.worker.process_tx();
    assert_eq!(h.host_recv_all(), vec![f1, f2]);
    assert_eq!(h.tx.used(), vec![(u32::from(h1), 0), (u32::from(h2), 0)]);
    let s = h.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (2, 1514 + 60000));
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 1);
    assert_eq!(s.interrupts, 1);
}

/// A backend that, as each frame is handed to it, has "another vCPU" write `byte` at
/// `at` in guest memory first.
#[derive(Debug)]
struct RewritingBackend {
    inner: SeqpacketBackend,
    mem: &'static Arc<Mem>,
    at: GuestAddress,
    byte: u8,
}

impl std::os::fd::AsRawFd for RewritingBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

impl NetBackend for RewritingBackend {
    fn read_frame(&mut self, bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.inner.read_frame(bufs)
    }

    fn write_frame(&mut self, bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        self.mem.write_obj(self.byte, self.at).expect("rewrite");
        self.inner.write_frame(bufs)
    }

    fn set_offload(&mut self, tun_flags: u32) -> std::io::Result<()> {
        self.inner.set_offload(tun_flags)
    }
}

#[test]
fn a_tx_header_rewritten_after_its_check_goes_out_as_checked() {
    // The harness's TX driver hands out buffers from here on.
    const FIRST_TX_BUFFER: u64 = BUFFERS + 0x10_0000;
    let good = frame(2000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 9);
    // Header and frame in one buffer (ANY_LAYOUT), and split after the header.
    for split in [false, true] {
        let mem = new_mem();
        // Between the check and the send, the guest turns TCPv4 segmentation into UDP,
        // which the device never offered.
        let gso_type_at = GuestAddress(FIRST_TX_BUFFER + 1);
        let mut h = harness_wrapped(mem, RX_RING, GSO, |inner| {
            Box::new(RewritingBackend {
                inner,
                mem,
                at: gso_type_at,
                byte: VIRTIO_NET_HDR_GSO_UDP as u8,
            })
        });
        let chain = if split {
            let header = h.tx.buffer(VNET_HDR_LEN as u32);
            let payload = h.tx.buffer(2000);
            mem.write_slice(&good[..VNET_HDR_LEN], GuestAddress(header))
                .expect("header");
            mem.write_slice(&good[VNET_HDR_LEN..], GuestAddress(payload))
                .expect("payload");
            vec![(header, VNET_HDR_LEN as u32, 0), (payload, 2000, 0)]
        } else {
            let whole = h.tx.buffer(good.len() as u32);
            mem.write_slice(&good, GuestAddress(whole)).expect("frame");
            vec![(whole, good.len() as u32, 0)]
        };
        assert_eq!(chain[0].0, FIRST_TX_BUFFER);
        h.tx.add_chain(&chain);
        h.worker.process_tx();
        let sent = h.host_recv_all();
        let headers: Vec<&[u8]> = sent.iter().map(|f| &f[..VNET_HDR_LEN]).collect();
        assert_eq!(headers, [&good[..VNET_HDR_LEN]], "split: {split}");
        assert!(sent[0] == good, "split: {split}: the frame changed");
        let rewritten: u8 = mem.read_obj(gso_type_at).expect("read");
        assert_eq!(
            u32::from(rewritten),
            VIRTIO_NET_HDR_GSO_UDP,
            "the guest did rewrite it"
        );
    }
}

#[test]
fn rx_frame_fills_one_chain_and_sets_num_buffers() {
    let mut h = harness(0);
    let (head, bufs) = h.guest_post_rx(&[VNET_HDR_LEN as u32, 2000]);
    let f = frame(1000, 0, 3);
    h.host_send(&f);
    h.worker.process_rx();
    assert_eq!(h.rx.used(), vec![(u32::from(head), f.len() as u32)]);
    let hdr = h.rx.read(bufs[0], VNET_HDR_LEN);
    assert_eq!(hdr[0], 0, "no flags for a driver without GUEST_CSUM");
    assert_eq!(&hdr[1..10], &f[1..10], "header bytes pass through");
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    assert_eq!(h.rx.read(bufs[1], 1000), &f[VNET_HDR_LEN..]);
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 1000, 0));
    assert_eq!(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)), 1);
    // Its only buffer is used up: RX stops polling the backend.
    assert!(h.worker.rx_paused());
}

#[test]
fn rx_mergeable_buffers_span_chains() {
    let mut h = harness(GSO | MRG);
    // 1536-byte chains, like Linux posts them: with room for a largest (64 KiB) frame,
    // 43 of them, the device reads straight into them.
    let chains = h.guest_post_rx_buffers(48, 1536);
    let big = frame(4000, 0, 4);
    let small = frame(100, 0, 5);
    h.host_send(&big);
    h.host_send(&small);
    h.worker.process_rx();
    let used = h.rx.used();
    assert_eq!(
        used,
        vec![
            (u32::from(chains[0].0), 1536),
            (u32::from(chains[1].0), 1536),
            (u32::from(chains[2].0), (big.len() - 3072) as u32),
            (u32::from(chains[3].0), small.len() as u32),
        ]
    );
    let first = h.rx.read(chains[0].1, 1536);
    assert_eq!(u16::from_le_bytes([first[10], first[11]]), 3, "num_buffers");
    let mut got = first;
    got.extend(h.rx.read(chains[1].1, 1536));
    got.extend(h.rx.read(chains[2].1, big.len() - 3072));
    assert_eq!(&got[..10], &big[..10]);
    assert_eq!(&got[12..], &big[12..]);
    let second = h.rx.read(chains[3].1, small.len());
    assert_eq!(u16::from_le_bytes([second[10], second[11]]), 1);
    assert_eq!(&second[12..], &small[12..]);
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_bytes), (2, 4100));
    // One interrupt for the batch.
    assert_eq!(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)), 1);
}

#[test]
fn rx_mergeable_64k_gso_frame_arrives_whole() {
    let mut h = harness(GSO | MRG);
    let chains = h.guest_post_rx_buffers(20, 4096);
    let big = frame(65000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 6);
    h.host_send(&big);
    h.worker.process_rx();
    let used = h.rx.used();
    assert_eq!(used.len(), big.len().div_ceil(4096));
    let mut got = Vec::new();
    for (i, (id, len)) in used.iter().enumerate() {
        assert_eq!(*id, u32::from(chains[i].0));
        got.extend(h.rx.read(chains[i].1, *len as usize));
    }
    assert_eq!(got.len(), big.len());
    assert_eq!(&got[..10], &big[..10]);
    assert_eq!(
        usize::from(u16::from_le_bytes([got[10], got[11]])),
        used.len()
    );
    assert_eq!(&got[12..], &big[12..]);
}

/// A ring full of chains with an empty descriptor each is full: a frame larger than
/// all their buffers is dropped, not waited for (the guest has no slot left to post
/// more with), so the frames after it still arrive.
#[test]
fn rx_ring_full_of_chains_with_empty_descriptors_does_not_wait_for_good() {
    let mut h = harness(GSO | MRG);
    let chains: Vec<(u16, Vec<u64>)> = (0..SIZE / 2).map(|_| h.guest_post_rx(&[0, 200])).collect();
    let too_big = frame(60000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 1);
    let small = frame(100, 0, 2);
    h.host_send(&too_big);
    h.host_send(&small);
    h.worker.process_rx();
    let s = h.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1), "{s:?}");
    assert_eq!(
        h.rx.used(),
        vec![(u32::from(chains[0].0), small.len() as u32)]
    );
}

/// Virtio 1.2 5.1.4.1: with VIRTIO_NET_F_MTU negotiated, no frame without GSO larger
/// than the MTU (a bridge or tap with a larger one sent it) reaches the driver, even
/// though GSO lets 64 KiB frames through.
#[test]
fn rx_plain_frames_over_the_negotiated_mtu_are_dropped() {
    let mtu = bit(VIRTIO_NET_F_MTU);
    let mut h = harness(GSO | MRG | mtu);
    let chains = h.guest_post_rx_buffers(20, 4096);
    let jumbo = frame(9000, 0, 1);
    let gso = frame(9000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 2);
    // Ethernet + VLAN header around 1500 bytes (after the vnet header).
    let largest = frame(18 + 1500, 0, 3);
    h.host_send(&jumbo);
    h.host_send(&gso);
    h.host_send(&largest);
    h.worker.process_rx();
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (2, 1), "{s:?}");
    assert_eq!(h.rx.used()[0].0, u32::from(chains[0].0));
    // Without VIRTIO_NET_F_MTU the driver was promised nothing: it may have raised its
    // own MTU.
    let mut h = harness(GSO | MRG);
    h.guest_post_rx_buffers(20, 4096);
    h.host_send(&jumbo);
    h.worker.process_rx();
    assert_eq!(h.stats().rx_frames, 1);
}

#[test]
fn rx_mergeable_ring_smaller_than_a_largest_frame_still_receives() {
    let mut h = harness(GSO | MRG);
    // Every descriptor posted, 51,200 bytes in all: less than a 64 KiB GSO frame, which
    // the device must not wait for.
    let chains = h.guest_post_rx_buffers(SIZE, 200);
    let arp = frame(60, 0, 1);
    let too_big = frame(60000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 2);
    let spanning = frame(500, 0, 3);
    h.host_send(&arp);
    h.host_send(&too_big);
    h.host_send(&spanning);
    h.worker.process_rx();
    assert_eq!(
        h.rx.used(),
        vec![(u32::from(chains[0].0), arp.len() as u32)]
    );
    // The next frame waits while the guest has a descriptor to post more with...
    assert!(h.worker.rx_paused());
    h.guest_post_rx(&[200]);
    h.worker.process_rx_notify();
    // ...and is dropped once it has none: no posted buffer could ever hold it.
    assert_eq!(
        h.rx.used(),
        vec![
            (u32::from(chains[0].0), arp.len() as u32),
            (u32::from(chains[1].0), 200),
            (u32::from(chains[2].0), 200),
            (u32::from(chains[3].0), (spanning.len() - 400) as u32),
        ]
    );
    assert_eq!(&h.rx.read(chains[0].1, arp.len())[12..], &arp[12..]);
    let mut got = h.rx.read(chains[1].1, 200);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    got.extend(h.rx.read(chains[2].1, 200));
    got.extend(h.rx.read(chains[3].1, spanning.len() - 400));
    assert_eq!(&got[12..], &spanning[12..]);
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (2, 1));
    assert!(!h.worker.rx_paused());
}

#[test]
fn rx_mergeable_frame_waits_while_the_guest_can_post_more_buffers() {
    let mut h = harness(GSO | MRG);
    let first = h.guest_post_rx_buffers(2, 1536);
    let big = frame(5000, 0, 4);
    let small = frame(100, 0, 5);
    h.host_send(&big);
    h.host_send(&small);
    h.worker.process_rx();
    // It does not fit what is posted, and the guest has descriptors left: it waits,
    // and so does the frame behind it.
    assert!(h.rx.used().is_empty());
    assert!(h.worker.rx_paused());
    let more = h.guest_post_rx_buffers(3, 1536);
    h.worker.process_rx_notify();
    let chains: Vec<(u16, u64)> = first.into_iter().chain(more).collect();
    let used = h.rx.used();
    assert_eq!(used.len(), 5, "{used:?}");
    let mut got = Vec::new();
    for (i, (id, len)) in used[..4].iter().enumerate() {
        assert_eq!(*id, u32::from(chains[i].0));
        got.extend(h.rx.read(chains[i].1, *len as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4, "num_buffers");
    assert_eq!(&got[12..], &big[12..]);
    assert_eq!(used[4], (u32::from(chains[4].0), small.len() as u32));
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (2, 0));
}

#[test]
fn rx_pauses_without_buffers_and_resumes_on_notify() {
    let mut h = harness(0);
    let f = frame(500, 0, 7);
    h.host_send(&f);
    h.worker.process_rx();
    assert!(h.worker.rx_paused());
    assert_eq!(h.stats().rx_paused, 1);
    assert!(h.rx.used().is_empty());
    // Another readiness event while paused changes nothing and is not re-counted.
    h.worker.process_rx();
    assert_eq!(h.stats().rx_paused, 1);
    let (head, _) = h.guest_post_rx(&[2048]);
    h.guest_post_rx(&[2048]);
    h.worker.process_rx_notify();
    assert!(!h.worker.rx_paused());
    assert_eq!(h.rx.used(), vec![(u32::from(head), f.len() as u32)]);
    assert_eq!(h.stats().rx_frames, 1);
}

#[test]
fn rx_frame_too_big_for_a_single_buffer_is_dropped_and_the_buffer_kept() {
    let mut h = harness(0);
    let (head, _) = h.guest_post_rx(&[600]);
    h.host_send(&frame(1000, 0, 8));
    let small = frame(100, 0, 9);
    h.host_send(&small);
    h.worker.process_rx();
    assert_eq!(h.rx.used(), vec![(u32::from(head), small.len() as u32)]);
    let s = h.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
}

#[test]
fn a_flood_of_frames_is_taken_in_bounded_passes() {
    let mut h = harness(0);
    let (head, _) = h.guest_post_rx(&[64]);
    // Room for all of them queued at once.
    nix::sys::socket::setsockopt(&h.peer, nix::sys::socket::sockopt::SndBufForce, &(4 << 20))
        .expect("send buffer");
    // Frames too big for the one buffer are dropped without using it: nothing else
    // would end the pass while they keep coming.
    for seed in 0..300u32 {
        h.host_send(&frame(100, 0, seed as u8));
    }
    let small = frame(40, 0, 1);
    h.host_send(&small);
    h.worker.process_rx();
    assert_eq!(
        h.stats().rx_dropped,
        256,
        "one pass, then back to the event loop"
    );
    assert!(!h.worker.rx_paused(), "the backend is still polled");
    h.worker.process_rx();
    assert_eq!(h.stats().rx_dropped, 300);
    assert_eq!(h.rx.used(), vec![(u32::from(head), small.len() as u32)]);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut h = harness(EVENT_IDX);
    // The driver wants an interrupt once the third buffer is used.
    h.tx.set_used_event(2);
    for i in 0..4 {
        h.guest_send(&frame(100, 0, i));
        h.worker.process_tx();
        // The device asks to be notified for the next available entry.
        assert_eq!(h.tx.avail_event(), u16::from(i) + 1);
        let expected = if i >= 2 { 1 } else { 0 };
        assert_eq!(
            h.interrupt.count(InterruptKind::Queue(TX_QUEUE)),
            expected,
            "after frame {i}"
        );
    }
    assert_eq!(h.host_recv_all().len(), 4);
    assert_eq!(h.stats().interrupts, 1);
}

#[test]
fn rx_event_idx_interrupts_once_used_event_is_passed() {
    let mut h = harness(EVENT_IDX);
    for _ in 0..4 {
        h.guest_post_rx(&[2000]);
    }
    // The driver wants an interrupt once the second buffer is used.
    h.rx.set_used_event(1);
    let mut interrupts = Vec::new();
    for i in 0..4 {
        if i == 3 {
            // Re-armed for the fourth, as a driver does after polling.
            h.rx.set_used_event(3);
        }
        h.host_send(&frame(100, 0, i));
        h.worker.process_rx();
        interrupts.push(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)));
    }
    assert_eq!(interrupts, [0, 1, 1, 2]);
    assert_eq!(h.rx.used().len(), 4);
    assert_eq!(h.stats().rx_frames, 4);
}

#[test]
fn rx_no_interrupt_flag_is_honoured_without_event_idx() {
    let mut h = harness(0);
    h.guest_post_rx(&[2000]);
    h.guest_post_rx(&[2000]);
    h.rx.set_avail_flags(1);
    h.host_send(&frame(100, 0, 1));
    h.worker.process_rx();
    assert_eq!(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)), 0);
    h.rx.set_avail_flags(0);
    h.host_send(&frame(100, 0, 2));
    h.worker.process_rx();
    assert_eq!(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)), 1);
    assert_eq!(h.rx.used().len(), 2);
}

#[test]
fn rings_straddling_memory_regions_still_work() {
    // Region boundaries at 0x8000 and 0x9000 cut the RX descriptor table
    // (0x7800..0x8800) and the RX used ring, which then cannot be one host slice.
    let mem: &'static Arc<Mem> = Box::leak(Box::new(Arc::new(
        Mem::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x1000),
            (GuestAddress(0x9000), MEM_SIZE - 0x9000),
        ])
        .expect("memory"),
    )));
    let mut h = harness_in(mem, 0x7800, GSO | MRG | EVENT_IDX);
    let used = h.rx.mock.used_addr().0;
    assert!(
        used < 0x9000 && used + 4 + 8 * u64::from(SIZE) > 0x9000,
        "{used:#x}"
    );
    let chains = h.guest_post_rx_buffers(20, 4096);
    let big = frame(9000, 0, 8);
    h.host_send(&big);
    h.worker.process_rx();
    assert_eq!(
        h.rx.used(),
        vec![
            (u32::from(chains[0].0), 4096),
            (u32::from(chains[1].0), 4096),
            (u32::from(chains[2].0), (big.len() - 8192) as u32),
        ]
    );
    let mut got = h.rx.read(chains[0].1, 4096);
    got.extend(h.rx.read(chains[1].1, 4096));
    got.extend(h.rx.read(chains[2].1, big.len() - 8192));
    assert_eq!(&got[12..], &big[12..]);
    assert_eq!(h.interrupt.count(InterruptKind::Queue(RX_QUEUE)), 1);
    assert!(!h.worker.is_broken());
}

#[test]
fn no_interrupt_flag_is_honoured_without_event_idx() {
    let mut h = harness(0);
    h.tx.set_avail_flags(1);
    h.guest_send(&frame(100, 0, 1));
    h.worker.process_tx();
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 0);
    h.tx.set_avail_flags(0);
    h.guest_send(&frame(100, 0, 2));
    h.worker.process_tx();
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 1);
    assert_eq!(h.stats().tx_frames, 2);
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> Descriptor {
    Descriptor::new(addr, len, flags as u16, next)
}

/// Publishes one hostile TX chain at descriptor index 100, checks it is
/// refused and counted by `counter`, and that a good frame still goes through.
fn hostile_tx(descs: &[Descriptor], counter: fn(&NetStats) -> u64) {
    let mut h = harness(0);
    h.tx.add_raw(100, descs, 100);
    h.worker.process_tx();
    let s = h.stats();
    assert_eq!(counter(&s), 1, "{s:?}");
    assert_eq!((s.tx_dropped, s.tx_frames), (1, 0), "{s:?}");
    assert_eq!(h.tx.used(), vec![(100, 0)], "returned unused");
    assert!(h.host_recv_all().is_empty());
    assert!(!h.net.needs_reset());
    let good = frame(200, 0, 1);
    h.guest_send(&good);
    h.worker.process_tx();
    assert_eq!(h.host_recv_all(), vec![good]);
}

/// The same for an RX chain: refused, counted, and a frame still lands in the
/// next good chain.
fn hostile_rx(descs: &[Descriptor], counter: fn(&NetStats) -> u64) {
    let mut h = harness(0);
    h.rx.add_raw(100, descs, 100);
    let f = frame(300, 0, 2);
    h.host_send(&f);
    h.worker.process_rx();
    let s = h.stats();
    assert_eq!(counter(&s), 1, "{s:?}");
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 0), "{s:?}");
    assert_eq!(h.rx.used(), vec![(100, 0)]);
    assert!(h.worker.rx_paused());
    let (head, _) = h.guest_post_rx(&[2048]);
    h.worker.process_rx_notify();
    assert_eq!(h.rx.used()[1], (u32::from(head), f.len() as u32));
}

const OUTSIDE: u64 = MEM_SIZE as u64;
const R: u32 = 0;
const W: u32 = VRING_DESC_F_WRITE;
const N: u32 = VRING_DESC_F_NEXT;

#[test]
fn hostile_loop_is_refused() {
    let loop_tx = [desc(BUFFERS, 64, R | N, 101), desc(BUFFERS, 64, R | N, 100)];
    hostile_tx(&loop_tx, |s| s.bad_chain_loop);
    let loop_rx = [desc(BUFFERS, 64, W | N, 101), desc(BUFFERS, 64, W | N, 100)];
    hostile_rx(&loop_rx, |s| s.bad_chain_loop);
    // A self-loop too.
    hostile_tx(&[desc(BUFFERS, 64, R | N, 100)], |s| s.bad_chain_loop);
}

#[test]
fn hostile_out_of_range_addresses_are_refused() {
    hostile_tx(&[desc(OUTSIDE, 64, R, 0)], |s| s.bad_desc_address);
    // Straddles the end of guest memory.
    hostile_tx(&[desc(OUTSIDE - 32, 64, R, 0)], |s| s.bad_desc_address);
    hostile_tx(&[desc(u64::MAX - 8, 64, R, 0)], |s| s.bad_desc_address);
    hostile_rx(&[desc(OUTSIDE - 32, 64, W, 0)], |s| s.bad_desc_address);
    hostile_rx(
        &[desc(BUFFERS, 16, W | N, 101), desc(OUTSIDE, 4096, W, 0)],
        |s| s.bad_desc_address,
    );
}

#[test]
fn hostile_bad_next_index_is_refused() {
    hostile_tx(&[desc(BUFFERS, 64, R | N, 300)], |s| s.bad_desc_index);
    hostile_rx(&[desc(BUFFERS, 64, W | N, 256)], |s| s.bad_desc_index);
}

/// No rule forbids an empty descriptor (DPDK sends one for an empty mbuf segment): it
/// is passed over, whatever its address, and the frame around it goes through.
#[test]
fn zero_length_descriptors_are_passed_over() {
    let mut h = harness(0);
    let sent = frame(200, 0, 1);
    let (hdr, data) = sent.split_at(VNET_HDR_LEN);
    let (a, b) = (
        h.tx.buffer(hdr.len() as u32),
        h.tx.buffer(data.len() as u32),
    );
    h.mem.write_slice(hdr, GuestAddress(a)).expect("hdr");
    h.mem.write_slice(data, GuestAddress(b)).expect("data");
    h.tx.add_chain(&[
        (a, hdr.len() as u32, 0),
        (OUTSIDE, 0, 0),
        (b, data.len() as u32, 0),
    ]);
    h.worker.process_tx();
    assert_eq!(h.host_recv_all(), vec![sent]);
    assert_eq!(h.stats().tx_dropped, 0);

    let (head, _) = h.guest_post_rx(&[0, 2048, 0]);
    let received = frame(300, 0, 2);
    h.host_send(&received);
    h.worker.process_rx();
    assert_eq!(h.rx.used(), vec![(u32::from(head), received.len() as u32)]);
    // Nothing but empty descriptors is too short for a vnet header.
    hostile_tx(&[desc(BUFFERS, 0, R, 0)], |s| s.bad_chain_len);
}

#[test]
fn hostile_over_long_and_short_chains_are_refused() {
    // Longer than the largest GSO frame.
    hostile_tx(
        &[desc(BUFFERS, 40000, R | N, 101), desc(BUFFERS, 40000, R, 0)],
        |s| s.bad_chain_len,
    );
    // Shorter than the vnet header.
    hostile_tx(&[desc(BUFFERS, 8, R, 0)], |s| s.bad_chain_len);
    hostile_rx(&[desc(BUFFERS, 8, W, 0)], |s| s.bad_chain_len);
}

#[test]
fn hostile_wrong_direction_is_refused() {
    // The device must never write into a buffer the driver marked read-only.
    hostile_rx(&[desc(BUFFERS, 2048, R, 0)], |s| s.bad_desc_direction);
    hostile_rx(
        &[
            desc(BUFFERS, 12, W | N, 101),
            desc(BUFFERS + 64, 2048, R, 0),
        ],
        |s| s.bad_desc_direction,
    );
    hostile_tx(&[desc(BUFFERS, 100, W, 0)], |s| s.bad_desc_direction);
}

#[test]
fn hostile_indirect_descriptor_is_refused() {
    hostile_tx(&[desc(BUFFERS, 32, R | VRING_DESC_F_INDIRECT, 0)], |s| {
        s.bad_desc_indirect
    });
}

#[test]
fn hostile_bad_head_index_sets_needs_reset() {
    // On either queue, logged once (not by virtio-queue's `add_used` each time).
    let log = crate::testing::warnings_logged(|| {
        let mut h = harness(0);
        h.rx.publish(SIZE + 5);
        h.host_send(&frame(100, 0, 1));
        h.worker.process_rx();
        assert!(h.net.needs_reset());
    });
    assert_eq!(log.lines().count(), 1, "{log}");
    let mut h = harness(0);
    let log = crate::testing::warnings_logged(|| {
        h.tx.publish(SIZE + 5);
        h.worker.process_tx();
    });
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(h.worker.is_broken());
    assert!(h.net.needs_reset());
    assert_eq!(h.interrupt.count(InterruptKind::Config), 1);
    let s = h.stats();
    assert_eq!((s.needs_reset_events, s.bad_desc_index), (1, 1), "{s:?}");
    // A broken device does nothing until reset.
    h.guest_send(&frame(100, 0, 1));
    h.worker.process_tx();
    assert!(h.host_recv_all().is_empty());
    assert_eq!(h.interrupt.count(InterruptKind::Config), 1);
}

#[test]
fn hostile_avail_index_jump_sets_needs_reset() {
    let mut h = harness(0);
    h.rx.mock.avail().idx().store(SIZE + 10);
    h.host_send(&frame(100, 0, 1));
    h.worker.process_rx();
    assert!(h.net.needs_reset());
    assert_eq!(h.stats().needs_reset_events, 1);
    assert_eq!(h.stats().rx_frames, 0);
}

#[test]
fn hostile_queues_are_refused_at_activation() {
    let mem = new_mem();
    let mut net = test_net(Box::new(
        SeqpacketBackend::new(seqpacket_pair().0).expect("backend"),
    ));
    net.ack_features(MODERN);
    let good = || Driver::new(mem, RX_RING, BUFFERS).queue();
    let evt = || EventFd::new(0).expect("evt");
    let interrupt = Arc::new(RecordingInterrupt::default());

    // Rings past the end of guest memory.
    let mut outside = good();
    outside.set_used_ring_address(Some((MEM_SIZE - 64) as u32), Some(0));
    // Not ready.
    let mut not_ready = good();
    not_ready.set_ready(false);
    // A queue size the driver may not pick is refused by the queue itself...
    let mut odd = good();
    assert!(odd.try_set_size(3).is_err());
    assert!(odd.try_set_size(512).is_err());
    // ...and one too large for the descriptor table's memory is caught here.
    let mut huge = Queue::new(32768).expect("queue");
    huge.set_size(32768);
    huge.set_desc_table_address(Some((MEM_SIZE - 0x1000) as u32), Some(0));
    huge.set_ready(true);
    for (i, bad) in [outside, not_ready, huge].into_iter().enumerate() {
        let mut refused = None;
        // Nothing logged here: a guest looping on it is warned about by the transport.
        let log = crate::testing::warnings_logged(|| {
            refused = Some(net.prepare_worker(
                Arc::clone(mem),
                interrupt.clone(),
                vec![(good(), evt()), (bad, evt())],
            ));
        });
        assert_eq!(log, "", "{i}");
        let err = refused.expect("ran").expect_err("bad queue accepted");
        assert!(
            matches!(err, ActivateError::InvalidQueue { index: 1, .. }),
            "{err}"
        );
        assert_eq!(net.stats().bad_queue, i as u64 + 1);
    }
    let err = net
        .prepare_worker(Arc::clone(mem), interrupt.clone(), vec![(good(), evt())])
        .expect_err("one queue");
    assert!(matches!(
        err,
        ActivateError::QueueCount {
            expected: 2,
            got: 1
        }
    ));
    // The backend survived the refusals: a good activation works.
    net.prepare_worker(
        Arc::clone(mem),
        interrupt,
        vec![
            (good(), evt()),
            (Driver::new(mem, TX_RING, BUFFERS).queue(), evt()),
        ],
    )
    .expect("good queues");
}

/// Waits until `f` holds or 5 s pass.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

#[test]
fn threaded_device_runs_resets_and_reactivates() {
    let (ours, peer) = seqpacket_pair();
    let mut net = test_net(Box::new(SeqpacketBackend::new(ours).expect("backend")));
    for round in 0..2u8 {
        // A fresh driver each time, as after a guest reboot.
        let mem = new_mem();
        net.ack_features(MODERN | MRG | GSO | EVENT_IDX);
        let mut rx = Driver::new(mem, RX_RING, BUFFERS);
        let mut tx = Driver::new(mem, TX_RING, BUFFERS + 0x10_0000);
        let rx_kick = EventFd::new(EFD_NONBLOCK).expect("evt");
        let tx_kick = EventFd::new(EFD_NONBLOCK).expect("evt");
        let interrupt = Arc::new(RecordingInterrupt::default());
        let base = net.stats();
        net.activate(
            Arc::clone(mem),
            interrupt.clone(),
            vec![
                (rx.queue(), rx_kick.try_clone().expect("dup")),
                (tx.queue(), tx_kick.try_clone().expect("dup")),
            ],
        )
        .expect("activate");
        assert!(net.is_active());

        // The guest has posted no RX buffer yet: the worker pauses RX at once,
        // and a frame from the host waits in the backend.
        assert!(eventually(|| net.stats().rx_paused > base.rx_paused));
        let f = frame(1000, 0, round);
        nix::unistd::write(peer.as_fd(), &f).expect("send");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(net.stats().rx_frames, base.rx_frames);
        let bufs: Vec<u64> = (0..20)
            .map(|_| {
                let b = rx.buffer(4096);
                rx.add_chain(&[(b, 4096, VRING_DESC_F_WRITE)]);
                b
            })
            .collect();
        rx_kick.write(1).expect("kick");
        assert!(eventually(|| interrupt
            .count(InterruptKind::Queue(RX_QUEUE))
            == 1));
        assert_eq!(rx.used(), vec![(0, f.len() as u32)]);
        assert_eq!(&rx.read(bufs[0], f.len())[12..], &f[12..]);

        // Guest -> host.
        let g = frame(1400, 0, round + 10);
        let addr = tx.buffer(g.len() as u32);
        mem.write_slice(&g, GuestAddress(addr)).expect("write");
        tx.add_chain(&[(addr, g.len() as u32, 0)]);
        tx_kick.write(1).expect("kick");
        let mut got = vec![0u8; 4096];
        assert!(eventually(|| {
            matches!(nix::unistd::read(peer.as_fd(), &mut got), Ok(n) if n == g.len())
        }));
        assert_eq!(&got[..g.len()], &g[..]);
        assert!(eventually(|| interrupt
            .count(InterruptKind::Queue(TX_QUEUE))
            == 1));

        assert!(net.reset());
        assert!(!net.is_active());
        assert_eq!(net.acked_features(), 0);
        let s = net.stats();
        assert_eq!(s.rx_frames - base.rx_frames, 1);
        assert_eq!(s.tx_frames - base.tx_frames, 1);
    }
    assert!(!net.reset(), "reset of an inactive device reports it");
}

#[test]
fn fuzz_harness_survives_random_inputs() {
    // xorshift64*, fixed seed: reproducible.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut activated = 0;
    for _ in 0..300 {
        let len = 16 + (next() % 0x1_1000) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias half the inputs towards plausible rings: small queues at low slots
        // and descriptors pointing into memory, so chains get parsed deeply.
        if next() % 2 == 0 {
            data[8] = 4; // rx size 16
            data[11] = 4; // tx size 16
            for chunk in data[16..].chunks_mut(16) {
                if chunk.len() == 16 && next() % 3 != 0 {
                    let addr = next() % 0x1_0000;
                    chunk[..8].copy_from_slice(&addr.to_le_bytes());
                    chunk[8..12].copy_from_slice(&((next() % 3000) as u32).to_le_bytes());
                    chunk[14] = (next() % 16) as u8;
                    chunk[15] = 0;
                }
            }
        }
        if let Some((stats, sent)) = fuzz_net_device(&data) {
            activated += 1;
            assert_eq!(stats.tx_frames as usize, sent.len().min(1024));
            let sent_bytes: u64 = sent.iter().map(|f| (f.len() - VNET_HDR_LEN) as u64).sum();
            assert_eq!(stats.tx_bytes, sent_bytes);
        }
    }
    assert!(
        activated > 10,
        "too few inputs activated the device: {activated}"
    );
}

/// An Ethernet + IPv4 + TCP frame of `frame_len` bytes behind a vnet header
/// asking for TCPv4 GSO (gso_size 1448) and a partial checksum, as a Linux guest
/// sends a 64 KiB TSO segment.
fn tcp_gso_frame(dst: [u8; 6], src: [u8; 6], frame_len: usize) -> Vec<u8> {
    fn sum(data: &[u8]) -> u32 {
        data.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }
    fn fold(mut s: u32) -> u16 {
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }
    let mut b = vec![0u8; VNET_HDR_LEN + frame_len];
    let (h, f) = b.split_at_mut(VNET_HDR_LEN);
    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    h[1] = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&1448u16.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (frame_len - 14) as u16;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 77, 0, 9]);
        ip[16..20].copy_from_slice(&[10, 77, 0, 2]);
        let c = !fold(sum(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        let pseudo = sum(&[10, 77, 0, 9, 10, 77, 0, 2]) + 6 + u32::from(ip_len - 20);
        tcp[16..18].copy_from_slice(&fold(pseudo).to_be_bytes());
    }
    for (i, x) in f[54..].iter_mut().enumerate() {
        *x = (i % 251) as u8;
    }
    b
}

#[test]
fn netns_gso_frame_crosses_tap_bridge_and_veth_intact() {
    use nix::sys::socket::{MsgFlags, SockProtocol, recv, setsockopt, socket, sockopt};
    use nix::sys::time::TimeVal;
    use std::os::fd::AsRawFd;
    use testkit::{Need, Netns};

    if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    // ns a: br0 <- kvtap0 (the device's tap), veth-a; ns b: veth-b 10.77.0.2/24.
    let a = Netns::new("vnet-a").expect("netns a");
    let b = Netns::new("vnet-b").expect("netns b");
    // No IPv6 chatter (router solicitations, MLD) competing for guest buffers.
    for ns in [&a, &b] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
            .expect("sysctl in test namespace");
    }
    a.sh(&format!(
        "ip link add br0 type bridge && ip link set br0 up && \
         ip tuntap add dev kvtap0 mode tap vnet_hdr && ip link set kvtap0 master br0 up && \
         ip link add veth-a type veth peer name veth-b netns {} && \
         ip link set veth-a master br0 up && \
         ip tuntap add dev kvtap1 mode tap vnet_hdr && ip link set kvtap1 master br0 up",
        b.name()
    ))
    .expect("topology a");
    b.sh(
        "ip link set veth-b up && ip addr add 10.77.0.2/24 dev veth-b && \
          ip neigh add 10.77.0.9 lladdr 52:54:00:aa:bb:cc dev veth-b",
    )
    .expect("topology b");
    let veth_b_mac: MacAddr = b
        .sh("cat /sys/class/net/veth-b/address")
        .expect("mac")
        .trim()
        .parse()
        .expect("parse mac");
    let tap = a
        .run(|| Tap::open_named("kvtap0"))
        .expect("run")
        .expect("tap");
    let mut net = Net::with_tap(
        NetConfig {
            mac: MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
            mtu: None,
        },
        tap,
    )
    .expect("device");
    net.ack_features(MODERN | GSO | MRG | bit(VIRTIO_NET_F_GUEST_ECN));
    let mem = new_mem();
    let mut rx = Driver::new(mem, RX_RING, BUFFERS);
    let mut tx = Driver::new(mem, TX_RING, BUFFERS + 0x20_0000);
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mut worker = net
        .prepare_worker(
            Arc::clone(mem),
            interrupt.clone(),
            vec![
                (rx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
                (tx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
            ],
        )
        .expect("activate");

    // TX: a 64 KiB TCPv4 GSO frame from the guest arrives in ns b as one frame.
    let frame_len = 14 + 65000;
    let gso = tcp_gso_frame(veth_b_mac.0, [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], frame_len);
    // A socket keeps the namespace it was created in: open it in b, use it here.
    let sock = b
        .run(|| {
            socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::EthAll,
            )
        })
        .expect("run in b")
        .expect("AF_PACKET socket");
    setsockopt(&sock, sockopt::ReceiveTimeout, &TimeVal::new(0, 50_000)).expect("timeout");
    let mut buf = vec![0u8; 70000];
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut received = None;
    // The bridge enables the tap's port only after linkwatch saw its carrier,
    // so the guest resends until a copy arrives.
    'send: while Instant::now() < deadline {
        let (hdr, data) = gso.split_at(VNET_HDR_LEN);
        let ha = tx.buffer(hdr.len() as u32);
        let da = tx.buffer(data.len() as u32);
        mem.write_slice(hdr, GuestAddress(ha)).expect("hdr");
        mem.write_slice(data, GuestAddress(da)).expect("data");
        tx.add_chain(&[(ha, hdr.len() as u32, 0), (da, data.len() as u32, 0)]);
        worker.process_tx();
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if let Ok(n) = recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC)
                && n >= 14
                && buf[6..12] == [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]
            {
                received = Some(buf[..n.min(buf.len())].to_vec());
                break 'send;
            }
        }
    }
    let received = received.expect("GSO frame never reached ns b");
    assert_eq!(received.len(), frame_len, "one frame, not segments");
    assert!(
        received == gso[VNET_HDR_LEN..],
        "frame bytes changed on the way"
    );
    let s = net.stats();
    assert!(s.tx_frames >= 1 && s.tx_errors == 0, "{s:?}");

    // RX: a UDP datagram from ns b to the guest's MAC lands in guest buffers with
    // a vnet header.
    let bufs: Vec<u64> = (0..40)
        .map(|_| {
            let addr = rx.buffer(4096);
            rx.add_chain(&[(addr, 4096, VRING_DESC_F_WRITE)]);
            addr
        })
        .collect();
    let payload = b"to the guest through a real tap";
    let udp = b
        .run(|| std::net::UdpSocket::bind("10.77.0.2:0"))
        .expect("run in b")
        .expect("bind");
    udp.send_to(payload, "10.77.0.9:7777").expect("send");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut delivered = None;
    while Instant::now() < deadline && delivered.is_none() {
        worker.process_rx();
        delivered = rx.used().into_iter().find(|&(id, len)| {
            let data = rx.read(bufs[id as usize], len as usize);
            data.windows(payload.len()).any(|w| w == payload)
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    let (id, len) = delivered.expect("UDP frame never reached the guest");
    let data = rx.read(bufs[id as usize], len as usize);
    assert_eq!(u16::from_le_bytes([data[10], data[11]]), 1, "num_buffers");
    assert_eq!(&data[12..18], &[0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], "dst MAC");
    assert_eq!(&data[24..26], &[0x08, 0x00], "IPv4");
    assert!(interrupt.count(InterruptKind::Queue(RX_QUEUE)) >= 1);

    // RX with offloads: a 64 KiB GSO frame written to a second tap on the bridge
    // reaches the guest as one GSO frame across mergeable buffers, because the
    // negotiated GUEST_TSO4 set TUNSETOFFLOAD on the device's tap (without it
    // the kernel would segment it).
    let other = a
        .run(|| Tap::open_named("kvtap1"))
        .expect("run")
        .expect("tap1");
    other.set_vnet_hdr_size(12).expect("hdr");
    let to_guest = tcp_gso_frame(
        [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
        [0x02, 0, 0, 0, 0, 0x77],
        frame_len,
    );
    let bufs: Vec<(u16, u64)> = (0..80)
        .map(|_| {
            let addr = rx.buffer(4096);
            (rx.add_chain(&[(addr, 4096, VRING_DESC_F_WRITE)]), addr)
        })
        .collect();
    let before = rx.used().len();
    let mut frame_start = None;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && frame_start.is_none() {
        let mut copy = to_guest.clone();
        other
            .writev(&[vm_memory::VolatileSlice::from(&mut copy[..])])
            .expect("write tap1");
        std::thread::sleep(Duration::from_millis(20));
        worker.process_rx();
        let used = rx.used();
        frame_start = (before..used.len()).find(|&i| {
            let (id, len) = used[i];
            let addr = bufs.iter().find(|b| u32::from(b.0) == id).map(|b| b.1);
            addr.is_some_and(|addr| {
                let d = rx.read(addr, len as usize);
                len as usize > 24 && d[18..24] == [0x02, 0, 0, 0, 0, 0x77]
            })
        });
    }
    let start = frame_start.expect("GSO frame never reached the guest");
    let used = rx.used();
    let first = bufs
        .iter()
        .find(|b| u32::from(b.0) == used[start].0)
        .map(|b| b.1)
        .expect("buf");
    let hdr = rx.read(first, VNET_HDR_LEN);
    let num_buffers = usize::from(u16::from_le_bytes([hdr[10], hdr[11]]));
    assert_eq!(
        hdr[1], VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        "gso_type kept: {hdr:?}"
    );
    assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), 1448, "gso_size kept");
    let mut got = Vec::new();
    for &(id, len) in &used[start..start + num_buffers] {
        let addr = bufs
            .iter()
            .find(|b| u32::from(b.0) == id)
            .map(|b| b.1)
            .expect("buf");
        got.extend(rx.read(addr, len as usize));
    }
    assert_eq!(got.len(), to_guest.len(), "one {frame_len}-byte frame");
    assert!(
        got[VNET_HDR_LEN..] == to_guest[VNET_HDR_LEN..],
        "frame bytes changed"
    );
    net.restore_worker(worker);
}

#[test]
fn failing_backend_pauses_rx_instead_of_spinning() {
    let mut h = harness(0);
    h.guest_post_rx(&[2048]);
    // The peer end closes: reads return end-of-file from now on.
    let Harness { peer, .. } = &mut h;
    let closed = std::mem::replace(peer, seqpacket_pair().0);
    drop(closed);
    h.worker.process_rx();
    assert!(h.worker.rx_paused());
    let s = h.stats();
    assert_eq!((s.rx_errors, s.rx_frames), (1, 0), "{s:?}");
    assert!(h.rx.used().is_empty(), "the buffer stays with the device");
    assert_eq!(h.worker.rx_retry_delay(), Some(Duration::from_millis(10)));
    h.worker.process_rx_notify();
    assert_eq!(h.stats().rx_errors, 2);
    assert_eq!(h.worker.rx_retry_delay(), Some(Duration::from_millis(20)));
    for _ in 0..20 {
        h.worker.process_rx();
    }
    assert_eq!(h.worker.rx_retry_delay(), Some(Duration::from_secs(1)));
}

#[test]
fn rx_retries_a_failed_backend_without_waiting_for_the_guest() {
    // The guest posted its buffers before the reads failed and posts no more (as when
    // its ring is full), so no RX notification comes: the worker retries by itself.
    // Its first reads fail (as a tap's do while its link is being replaced), then it
    // delivers one frame.
    let f = frame(300, 0, 7);
    let (mut failures_left, mut pending) = (3, Some(f.clone()));
    let mut net = test_net(ScriptedBackend::readable(Box::new(move |fd, bufs| {
        if failures_left > 0 {
            failures_left -= 1;
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let Some(frame) = pending.take() else {
            return Err(std::io::ErrorKind::WouldBlock.into());
        };
        fd.read()?;
        deliver(bufs, &frame)
    })));
    net.ack_features(MODERN | EVENT_IDX);
    let mem = new_mem();
    let mut rx = Driver::new(mem, RX_RING, BUFFERS);
    let tx = Driver::new(mem, TX_RING, BUFFERS + 0x10_0000);
    let bufs: Vec<u64> = (0..64)
        .map(|_| {
            let b = rx.buffer(2048);
            rx.add_chain(&[(b, 2048, VRING_DESC_F_WRITE)]);
            b
        })
        .collect();
    let interrupt = Arc::new(RecordingInterrupt::default());
    net.activate(
        Arc::clone(mem),
        interrupt.clone(),
        vec![
            (rx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
            (tx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
        ],
    )
    .expect("activate");
    assert!(eventually(|| !rx.used().is_empty()), "{:?}", net.stats());
    assert_eq!(rx.used(), vec![(0, f.len() as u32)]);
    assert_eq!(&rx.read(bufs[0], f.len())[12..], &f[12..]);
    let s = net.stats();
    assert_eq!((s.rx_errors, s.rx_frames), (3, 1), "{s:?}");
    assert!(net.reset());
}

#[test]
fn a_failing_backend_with_event_idx_still_asks_for_the_next_rx_notification() {
    let mut h = harness(EVENT_IDX);
    h.guest_post_rx(&[2048]);
    let Harness { peer, .. } = &mut h;
    drop(std::mem::replace(peer, seqpacket_pair().0));
    h.worker.process_rx();
    assert!(h.worker.rx_paused());
    // The driver's next buffer (avail index 1 to 2) crosses avail_event: it notifies.
    assert_eq!(h.rx.avail_event(), 1);
}

#[test]
fn tx_headers_asking_for_offloads_not_negotiated_or_not_fitting_are_refused() {
    let tcp4 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    let with = |f: &mut Vec<u8>, at: usize, value: u16| {
        f[at..at + 2].copy_from_slice(&value.to_le_bytes());
    };
    let mut udp = frame(2000, VIRTIO_NET_HDR_GSO_UDP as u8, 1);
    let mut ecn = frame(2000, tcp4 | VIRTIO_NET_HDR_GSO_ECN as u8, 2);
    let mut no_size = frame(2000, tcp4, 3);
    with(&mut no_size, 4, 0);
    let mut csum_beyond = frame(60, 0, 4);
    csum_beyond[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    with(&mut csum_beyond, 6, 50);
    // What the tap would refuse (EINVAL), counted as a failing tap before.
    let mut empty = frame(0, 0, 9);
    let mut runt = frame(13, 0, 10);
    with(&mut runt, 2, 0);
    let mut hdr_beyond = frame(60, 0, 11);
    with(&mut hdr_beyond, 2, 61);
    let mut hdr_short = frame(60, 0, 12);
    with(&mut hdr_short, 2, 13);
    let refused_with_gso = [
        &mut udp,
        &mut ecn,
        &mut no_size,
        &mut csum_beyond,
        &mut empty,
        &mut runt,
        &mut hdr_beyond,
        &mut hdr_short,
    ];
    let mut h = harness(GSO);
    let count = refused_with_gso.len();
    for f in refused_with_gso {
        h.guest_send(f);
    }
    h.guest_send(&frame(2000, tcp4, 5));
    h.worker.process_tx();
    let sent = h.host_recv_all();
    assert_eq!(sent.len(), 1, "only the valid TSO frame goes out");
    assert_eq!(sent[0][VNET_HDR_LEN], 5);
    let s = h.stats();
    assert_eq!(
        (s.bad_tx_header, s.tx_dropped),
        (count as u64, count as u64)
    );
    assert_eq!(
        h.tx.used().len(),
        count + 1,
        "refused chains go back to the driver"
    );

    // Without VIRTIO_NET_F_CSUM and HOST_TSO4, a checksum or TSO request is refused.
    let mut h = harness(0);
    h.guest_send(&frame(2000, tcp4, 6));
    let mut partial = frame(60, 0, 7);
    partial[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    h.guest_send(&partial);
    h.guest_send(&frame(60, 0, 8));
    h.worker.process_tx();
    assert_eq!(h.host_recv_all().len(), 1);
    assert_eq!(h.stats().bad_tx_header, 2);
}

#[test]
fn rx_frames_larger_than_the_mtu_are_dropped_even_when_they_fit() {
    // The device promised an MTU of 1500 and the driver took no GSO: a 2000-byte frame
    // (from a tap or bridge with a larger MTU) must not reach it, though it would fit.
    let mut h = harness(0);
    h.guest_post_rx(&[4096]);
    h.host_send(&frame(2000, 0, 1));
    h.worker.process_rx();
    assert_eq!(h.stats().rx_dropped, 1);
    assert!(h.rx.used().is_empty());
    h.host_send(&frame(1514, 0, 2));
    h.worker.process_rx();
    assert_eq!(h.rx.used().len(), 1);
}

#[test]
fn long_tx_batch_signals_every_64_frames() {
    let mut h = harness(0);
    for i in 0..100 {
        h.guest_send(&frame(60, 0, i));
    }
    h.worker.process_tx();
    assert_eq!(h.host_recv_all().len(), 100);
    // One interrupt after the 64th used entry, one at the end of the batch.
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 2);
    // Exactly 64: the mid-batch interrupt covers them all, no empty one follows. On a
    // new harness: virtio-queue 0.18's mock lays its used ring over the second half of
    // the avail ring (`AvailRing::end` counts entries, not bytes), so one harness may
    // publish at most 128 chains before the device reads its own used ring as heads.
    // A second batch counts from its own start: 60 then 64 frames make one interrupt
    // each.
    let mut h = harness(0);
    for i in 0..60 {
        h.guest_send(&frame(60, 0, i));
    }
    h.worker.process_tx();
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 1);
    for i in 0..64 {
        h.guest_send(&frame(60, 0, i));
    }
    h.worker.process_tx();
    assert_eq!(h.host_recv_all().len(), 124);
    assert_eq!(h.interrupt.count(InterruptKind::Queue(TX_QUEUE)), 2);
}

/// What a [`ScriptedBackend`] read does: with the backend's descriptor (to make it
/// unreadable) and the buffers to fill.
type ScriptedRead =
    Box<dyn FnMut(&EventFd, &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> + Send>;

/// A backend polled through `fd` whose reads `read` answers; it takes every write.
struct ScriptedBackend {
    fd: EventFd,
    read: ScriptedRead,
}

impl ScriptedBackend {
    /// A backend that is readable until `read` makes its descriptor unreadable.
    fn readable(read: ScriptedRead) -> Box<ScriptedBackend> {
        let fd = EventFd::new(EFD_NONBLOCK).expect("evt");
        fd.write(1).expect("readable");
        Box::new(ScriptedBackend { fd, read })
    }
}

impl std::fmt::Debug for ScriptedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptedBackend")
    }
}

impl std::os::fd::AsRawFd for ScriptedBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for ScriptedBackend {
    fn read_frame(&mut self, bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        (self.read)(&self.fd, bufs)
    }

    fn write_frame(&mut self, bufs: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }

    fn set_offload(&mut self, _tun_flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// Puts `frame` in the first of `bufs`, as a read of it.
fn deliver(bufs: &[vm_memory::VolatileSlice<'_>], frame: &[u8]) -> std::io::Result<usize> {
    bufs[0]
        .write(frame, 0)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(frame.len())
}

#[test]
fn reset_clears_needs_reset_set_by_a_worker_still_in_its_pass() {
    // Always readable, and its reads take a while: the test catches the worker in the
    // middle of a pass.
    let reading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Arc::clone(&reading);
    let mut net = test_net(ScriptedBackend::readable(Box::new(move |_, bufs| {
        started.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        deliver(bufs, &frame(60, 0, 0))
    })));
    net.ack_features(MODERN);
    let mem = new_mem();
    let mut rx = Driver::new(mem, RX_RING, BUFFERS);
    let tx = Driver::new(mem, TX_RING, BUFFERS + 0x10_0000);
    let b = rx.buffer(2048);
    rx.add_chain(&[(b, 2048, VRING_DESC_F_WRITE)]);
    net.activate(
        Arc::clone(mem),
        Arc::new(RecordingInterrupt::default()),
        vec![
            (rx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
            (tx.queue(), EventFd::new(EFD_NONBLOCK).expect("evt")),
        ],
    )
    .expect("activate");
    // The worker is inside a read; the ring it goes back to afterwards is corrupt,
    // so it fails (and sets NEEDS_RESET) while the reset waits for it.
    assert!(eventually(|| reading.load(Ordering::SeqCst)));
    rx.mock.avail().idx().store(SIZE + 10);
    assert!(net.reset());
    assert!(net.stats().needs_reset_events >= 1, "the worker did fail");
    assert!(!net.needs_reset(), "a reset device reports NEEDS_RESET");
}

#[test]
fn rx_frames_needing_unnegotiated_offloads_are_dropped() {
    // Without GUEST_CSUM or GUEST_TSO*: a partial checksum and a GSO frame (queued in
    // the tap under an earlier driver's offloads) must not reach the driver.
    let mut h = harness(0);
    let chains = h.guest_post_rx_buffers(4, 2048);
    let mut partial = frame(100, 0, 1);
    partial[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let mut gso = frame(1000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 2);
    gso[0] = 0;
    let good = frame(100, 0, 3);
    h.host_send(&partial);
    h.host_send(&gso);
    h.host_send(&good);
    h.worker.process_rx();
    assert_eq!(
        h.rx.used(),
        vec![(u32::from(chains[0].0), good.len() as u32)]
    );
    assert_eq!(&h.rx.read(chains[0].1, good.len())[12..], &good[12..]);
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (1, 2), "{s:?}");

    // GUEST_CSUM and TSO4 but not TSO6 nor ECN (mergeable: through the bounce buffer).
    let csum_tso4 = bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4);
    let mut h = harness(csum_tso4 | MRG);
    h.guest_post_rx_buffers(8, 2048);
    let tso6 = frame(3000, VIRTIO_NET_HDR_GSO_TCPV6 as u8, 4);
    let ecn = frame(
        3000,
        (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN) as u8,
        5,
    );
    let tso4 = frame(3000, VIRTIO_NET_HDR_GSO_TCPV4 as u8, 6);
    h.host_send(&tso6);
    h.host_send(&ecn);
    h.host_send(&tso4);
    h.worker.process_rx();
    let s = h.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (1, 2), "{s:?}");
    assert_eq!(
        h.rx.used().iter().map(|u| u.1 as usize).sum::<usize>(),
        tso4.len()
    );
}

/// A backend whose every read and write fails as a deleted tap's do (EBADFD).
#[derive(Debug)]
struct DeletedTap(EventFd);

impl std::os::fd::AsRawFd for DeletedTap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for DeletedTap {
    fn read_frame(&mut self, _: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(libc::EBADFD))
    }

    fn write_frame(&mut self, _: &[vm_memory::VolatileSlice<'_>]) -> std::io::Result<usize> {
        Err(std::io::Error::from_raw_os_error(libc::EBADFD))
    }

    fn set_offload(&mut self, _tun_flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// A tap that fails under a running VM (deleted with its network) is reported once,
/// with its name and errno, not once per frame and not never.
#[test]
fn a_failing_tap_is_reported_once_with_its_name_and_errno() {
    let mut h = harness_wrapped(new_mem(), RX_RING, 0, |_| {
        let fd = EventFd::new(EFD_NONBLOCK).expect("evt");
        fd.write(1).expect("readable");
        Box::new(DeletedTap(fd))
    });
    h.guest_post_rx(&[2048]);
    let log = crate::testing::warnings_logged(|| {
        for i in 0..5 {
            h.guest_send(&frame(60, 0, i));
            h.worker.process_tx();
            h.worker.process_rx();
        }
    });
    let s = h.stats();
    assert_eq!((s.tx_errors, s.rx_errors), (5, 5), "{s:?}");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("tap=test") && log.contains("(os error 77)"),
        "{log}"
    );
}
