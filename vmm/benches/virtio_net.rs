//! virtio-net throughput without a vCPU.
//!
//! A host-side fake driver writes the split rings straight into guest memory and
//! kicks the queue eventfds, while the device runs on its own worker thread as in
//! the VMM. Traffic crosses the device's tap and a bridge:
//!
//! * TX: guest -> device -> tap `kvb0` -> br0 -> veth -> peer namespace
//!   (delivery counted on the peer's veth);
//! * RX: a writer on a second tap `kvb1` -> br0 -> `kvb0` -> device -> guest buffers.
//!
//! In the same run raw tap loops measure the ceiling: a `write(2)` loop on `kvb0`
//! for TX, and for RX the same `kvb1` writer with a raw `readv(2)` loop on `kvb0`
//! into buffers laid out like the fake guest's (4 KiB buffers cycling through the
//! same 1 MiB of guest-like memory), so both sides copy into equally cold memory.
//! Ceiling and device runs alternate for several rounds; each figure is the
//! median of its rounds, and the ratio is the median of the per-round ratios.
//! Run with `cargo bench -p kvnet-vmm --bench virtio_net` as root;
//! `KVNET_BENCH_SECS` sets the seconds per run (default 3), `KVNET_BENCH_ROUNDS`
//! the rounds (default 5), `KVNET_BENCH_ONLY` narrows the cases (e.g. `rx,64k`),
//! `KVNET_BENCH_NICE` the nice value of every benchmark thread (default -20, so
//! other jobs on the machine barely disturb it; 0 leaves it alone), and
//! `KVNET_BENCH_PIN=0` turns off the RX core pinning (see `pin`).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::{Need, Netns};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice};
use vmm::devices::virtio::net::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use vmm::devices::virtio::net::{MAX_GSO_FRAME_LEN, MacAddr, Net, NetConfig, NetCounters, Tap};
use vmm::devices::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const SIZE: u16 = 256;
const VNET_HDR: usize = 12;
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// Behind veth-a by a static fdb entry, not veth-b's own address: the peer
/// drops these frames as PACKET_OTHERHOST right after counting them.
const MAC_X: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x0b];
/// Source of RX traffic, behind kvb1.
const MAC_Y: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x0c];
const MEM_SIZE: usize = 64 << 20;
const RX_BASE: u64 = 0;
const TX_BASE: u64 = 0x4000;
const RX_BUFFERS: u64 = 0x10_0000;
const RX_BUF_LEN: u32 = 4096;
const TX_BUFFER: u64 = 0x80_0000;

fn bit(b: u32) -> u64 {
    1 << b
}

/// The fake driver's interrupt line: an eventfd, like the irqfd a VMM's
/// interrupt ends in. The device writes it, the driver sleeps on it.
struct Irq {
    fd: EventFd,
    epoll: Epoll,
}

impl std::fmt::Debug for Irq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Irq").field("fd", &self.fd).finish()
    }
}

impl Default for Irq {
    fn default() -> Irq {
        let fd = EventFd::new(EFD_NONBLOCK).expect("irq eventfd");
        let epoll = Epoll::new().expect("epoll");
        epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .expect("epoll add");
        Irq { fd, epoll }
    }
}

impl VirtioInterrupt for Irq {
    fn trigger(&self, _kind: InterruptKind) -> std::io::Result<()> {
        self.fd.write(1)
    }
}

impl Irq {
    /// Blocks until an interrupt arrives or 10 ms pass, then acknowledges it.
    fn wait(&self) {
        let mut events = [EpollEvent::default()];
        let _ = self.epoll.wait(10, &mut events);
        let _ = self.fd.read();
    }
}

/// The driver's view of one split queue laid out at `base`.
struct Ring<'m> {
    /// The three ring areas as one host slice: a guest reaches its rings with
    /// plain loads and stores, not with a region lookup per access.
    area: VolatileSlice<'m>,
    base: u64,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
}

impl<'m> Ring<'m> {
    fn new(mem: &'m GuestMemoryMmap, base: u64) -> Ring<'m> {
        Ring {
            area: mem.get_slice(GuestAddress(base), 0x3000).expect("rings"),
            base,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn off(&self, addr: u64) -> usize {
        (addr - self.base) as usize
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(SIZE).expect("queue");
        q.set_size(SIZE);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16) {
        let at = self.desc + u64::from(index) * 16;
        self.area
            .write_obj(addr.to_le(), self.off(at))
            .expect("addr");
        self.area
            .write_obj(len.to_le(), self.off(at + 8))
            .expect("len");
        self.area
            .write_obj(flags.to_le(), self.off(at + 12))
            .expect("flags");
        self.area.write_obj(0u16, self.off(at + 14)).expect("next");
    }

    fn push_avail(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % SIZE);
        self.area
            .write_obj(head.to_le(), self.off(slot))
            .expect("ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the new avail index; kicks if the device asked (EVENT_IDX).
    fn publish(&mut self, old: u16, kick: &EventFd) {
        self.area
            .store(
                self.avail_idx.to_le(),
                self.off(self.avail + 2),
                Ordering::Release,
            )
            .expect("avail idx");
        std::sync::atomic::fence(Ordering::SeqCst);
        let avail_event: u16 = self
            .area
            .load(
                self.off(self.used + 4 + 8 * u64::from(SIZE)),
                Ordering::Acquire,
            )
            .expect("avail_event");
        // vring_need_event(event, new, old)
        let new = self.avail_idx;
        if new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old) {
            kick.write(1).expect("kick");
        }
    }

    fn used_idx(&self) -> u16 {
        self.area
            .load(self.off(self.used + 2), Ordering::Acquire)
            .expect("used idx")
    }

    fn used_elem(&self, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % SIZE);
        let id: u32 = self.area.read_obj(self.off(at)).expect("id");
        let len: u32 = self.area.read_obj(self.off(at + 4)).expect("len");
        (id, len)
    }

    /// Asks for an interrupt once the device used entry `idx`.
    fn set_used_event(&self, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(SIZE);
        self.area
            .store(idx.to_le(), self.off(at), Ordering::Release)
            .expect("used_event");
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// A vnet header + TCPv4 frame of `frame_len` bytes (GSO TCPv4 when large).
fn tcp_frame(dst: [u8; 6], src: [u8; 6], frame_len: usize) -> Vec<u8> {
    let gso = frame_len > 1514;
    let mut b = vec![0u8; VNET_HDR + frame_len];
    let (h, f) = b.split_at_mut(VNET_HDR);
    if gso {
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&1448u16.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
    }
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (frame_len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&[10, 213, 0, 10]);
    f[30..34].copy_from_slice(&[10, 213, 0, 2]);
    // A valid IP header checksum: with br_netfilter loaded the bridge drops bad ones.
    let mut sum: u32 = f[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5001u16.to_be_bytes());
    f[46] = 5 << 4;
    f[47] = 0x18;
    b
}

struct Topology {
    a: Netns,
    b: Netns,
}

impl Topology {
    fn new() -> Topology {
        let a = Netns::new("bench-a").expect("netns a");
        let b = Netns::new("bench-b").expect("netns b");
        for ns in [&a, &b] {
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1",
            )
            .expect("sysctl");
        }
        let mac = |m: [u8; 6]| MacAddr(m).to_string();
        a.sh(&format!(
            "ip link add br0 type bridge && ip link set br0 up && \
             ip tuntap add dev kvb0 mode tap vnet_hdr && ip link set kvb0 master br0 up && \
             ip tuntap add dev kvb1 mode tap vnet_hdr && ip link set kvb1 master br0 up && \
             ip link add veth-a type veth peer name veth-b netns {b} && \
             ip link set veth-a master br0 up && \
             bridge fdb add {x} dev veth-a master static && \
             bridge fdb add {g} dev kvb0 master static && \
             bridge fdb add {y} dev kvb1 master static",
            b = b.name(),
            x = mac(MAC_X),
            g = mac(GUEST_MAC),
            y = mac(MAC_Y),
        ))
        .expect("topology a");
        b.sh("ip link set veth-b up").expect("topology b");
        Topology { a, b }
    }

    fn open(&self, name: &'static str, offload: u32) -> Tap {
        let tap = self
            .a
            .run(|| Tap::open_named(name))
            .expect("run")
            .expect("open tap");
        tap.set_vnet_hdr_size(VNET_HDR as i32).expect("hdr size");
        tap.set_offload(offload).expect("offload");
        tap
    }

    /// (packets, bytes) received on veth-b.
    fn peer_rx(&self) -> (u64, u64) {
        let out = self
            .b
            .sh("cat /sys/class/net/veth-b/statistics/rx_packets /sys/class/net/veth-b/statistics/rx_bytes")
            .expect("stats");
        let v: Vec<u64> = out
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v[0], v[1])
    }
}

struct Rate {
    frames: u64,
    bytes: u64,
    secs: f64,
}

impl Rate {
    fn gbits(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
    fn fps(&self) -> f64 {
        self.frames as f64 / self.secs
    }
}

/// Lets the bridge enable fresh tap ports (linkwatch runs up to 1 s late).
fn settle() {
    std::thread::sleep(Duration::from_millis(1200));
}

/// TX ceiling: one thread writes frames to the tap as fast as it can.
fn raw_tx(topo: &Topology, frame: &[u8], secs: f64) -> Rate {
    let tap = topo.open("kvb0", 0);
    settle();
    let (p0, b0) = topo.peer_rx();
    let mut copy = frame.to_vec();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let _ = tap.writev(&[VolatileSlice::from(&mut copy[..])]);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let (p1, b1) = topo.peer_rx();
    if std::env::var_os("KVNET_BENCH_DEBUG").is_some() {
        println!(
            "{}",
            topo.a
                .sh("ip -s link; bridge fdb show br br0; bridge link")
                .unwrap_or_default()
        );
        println!("{}", topo.b.sh("ip -s link").unwrap_or_default());
    }
    Rate {
        frames: p1 - p0,
        bytes: b1 - b0,
        secs,
    }
}

/// Starts the device on `kvb0` with a fresh guest; returns what the fake
/// driver needs.
struct Guest {
    mem: Arc<GuestMemoryMmap>,
    net: Net,
    counters: Arc<NetCounters>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    irq: Arc<Irq>,
}

fn start_device(topo: &Topology) -> Guest {
    let tap = topo.open("kvb0", 0);
    let mut net = Net::with_tap(
        NetConfig {
            mac: MacAddr(GUEST_MAC),
            mtu: None,
        },
        tap,
    )
    .expect("device");
    let features = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO6)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_RING_F_EVENT_IDX);
    net.ack_features(features);
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
    );
    let irq = Arc::new(Irq::default());
    let rx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let tx_kick = EventFd::new(EFD_NONBLOCK).expect("kick");
    let queues = vec![
        (
            Ring::new(&mem, RX_BASE).queue(),
            rx_kick.try_clone().expect("dup"),
        ),
        (
            Ring::new(&mem, TX_BASE).queue(),
            tx_kick.try_clone().expect("dup"),
        ),
    ];
    net.activate(
        Arc::clone(&mem),
        Arc::clone(&irq) as Arc<dyn VirtioInterrupt>,
        queues,
    )
    .expect("activate");
    let counters = net.counters();
    Guest {
        mem,
        net,
        counters,
        rx_kick,
        tx_kick,
        irq,
    }
}

/// Device TX: the fake driver keeps the TX ring full of `frame`.
fn device_tx(topo: &Topology, frame: &[u8], secs: f64) -> (Rate, Rate) {
    let mut guest = start_device(topo);
    settle();
    let mem = Arc::clone(&guest.mem);
    mem.write_slice(frame, GuestAddress(TX_BUFFER))
        .expect("frame");
    let mut ring = Ring::new(&mem, TX_BASE);
    for i in 0..SIZE {
        ring.set_desc(i, TX_BUFFER, frame.len() as u32, 0);
    }
    let (p0, b0) = topo.peer_rx();
    let sent0 = guest.counters.tx_frames.load(Ordering::Relaxed);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        ring.used_seen = ring.used_idx();
        let in_flight = ring.avail_idx.wrapping_sub(ring.used_seen);
        let free = SIZE - in_flight;
        if free >= SIZE / 2 {
            let old = ring.avail_idx;
            for _ in 0..free {
                let head = ring.avail_idx % SIZE;
                ring.push_avail(head);
            }
            ring.publish(old, &guest.tx_kick);
        } else {
            // Like a guest's TX completion: sleep until half the ring is free.
            ring.set_used_event(ring.avail_idx.wrapping_sub(SIZE / 2 + 1));
            if ring.used_idx() == ring.used_seen {
                guest.irq.wait();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let sent = guest.counters.tx_frames.load(Ordering::Relaxed) - sent0;
    std::thread::sleep(Duration::from_millis(200));
    let (p1, b1) = topo.peer_rx();
    guest.net.reset();
    let frame_len = (frame.len() - VNET_HDR) as u64;
    (
        Rate {
            frames: sent,
            bytes: sent * frame_len,
            secs,
        },
        Rate {
            frames: p1 - p0,
            bytes: b1 - b0,
            secs,
        },
    )
}

/// A thread writing `frame` to `kvb1` until `stop`; returns frames written.
fn spawn_writer(tap: Tap, frame: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        pin(Side::Sender);
        let mut copy = frame;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..64 {
                if tap.writev(&[VolatileSlice::from(&mut copy[..])]).is_ok() {
                    n += 1;
                }
            }
        }
        n
    })
}

/// Which core an RX run's thread belongs to (unless `KVNET_BENCH_PIN=0`).
#[derive(Clone, Copy)]
enum Side {
    /// The kvb1 writer.
    Sender,
    /// The raw reader, or the device worker and the fake guest.
    Receiver,
    /// Back to every core.
    Any,
}

/// Pins the calling thread (threads it spawns inherit it). With two or more
/// cores, RX runs give the writer core 0 and the receiving side core 1: the raw
/// reader alone, or the device worker with the fake guest. The ratio then
/// compares one core's worth of receive work, instead of whichever threads the
/// scheduler happened to put together (which swung single rounds by 2x).
/// `KVNET_BENCH_PIN=0` leaves placement to the scheduler.
fn pin(side: Side) {
    use nix::sched::{CpuSet, sched_setaffinity};
    if std::env::var("KVNET_BENCH_PIN").is_ok_and(|v| v == "0") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        return;
    }
    let mut set = CpuSet::new();
    let chosen: Vec<usize> = match side {
        Side::Sender => vec![0],
        Side::Receiver => vec![1],
        Side::Any => (0..cores).collect(),
    };
    for cpu in chosen {
        let _ = set.set(cpu);
    }
    let _ = sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
}

/// Lets a run reach its steady state before it is measured.
const WARM_UP: Duration = Duration::from_millis(200);

/// RX ceiling: the kvb1 writer, and a raw `readv` loop on kvb0 doing what the
/// device does without the rings: each read offers enough 4 KiB buffers for the
/// largest frame, taken in order from the same 1 MiB layout the fake guest
/// posts, and moves on by as many buffers as the frame filled.
fn raw_rx(topo: &Topology, frame: &[u8], secs: f64) -> (Rate, u64) {
    let offload = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
    let reader = topo.open("kvb0", offload);
    let writer = topo.open("kvb1", 0);
    settle();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let r = {
        let (stop, got, bytes) = (Arc::clone(&stop), Arc::clone(&got), Arc::clone(&bytes));
        std::thread::spawn(move || {
            pin(Side::Receiver);
            let buf_len = RX_BUF_LEN as usize;
            let count = usize::from(SIZE);
            let arena =
                GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(RX_BUFFERS), count * buf_len)])
                    .expect("arena");
            // Every buffer twice, so a read's window never wraps.
            let bufs: Vec<VolatileSlice<'_>> = (0..2 * count)
                .map(|i| {
                    let addr = GuestAddress(RX_BUFFERS + ((i % count) * buf_len) as u64);
                    arena.get_slice(addr, buf_len).expect("buffer")
                })
                .collect();
            let window = MAX_GSO_FRAME_LEN.div_ceil(buf_len);
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                match reader.readv(&bufs[next..next + window]) {
                    Ok(n) => {
                        next = (next + n.div_ceil(buf_len)) % count;
                        got.fetch_add(1, Ordering::Relaxed);
                        bytes.fetch_add((n - VNET_HDR) as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        let mut fds = [nix::poll::PollFd::new(
                            reader.as_fd(),
                            nix::poll::PollFlags::POLLIN,
                        )];
                        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10u8));
                    }
                }
            }
        })
    };
    let w = spawn_writer(writer, frame.to_vec(), Arc::clone(&stop));
    std::thread::sleep(WARM_UP);
    let (f0, b0) = (got.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (f1, b1) = (got.load(Ordering::Relaxed), bytes.load(Ordering::Relaxed));
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer");
    r.join().expect("reader");
    (
        Rate {
            frames: f1 - f0,
            bytes: b1 - b0,
            secs,
        },
        written,
    )
}

/// Device RX: the kvb1 writer feeds the device; the fake driver recycles
/// 4 KiB mergeable buffers as fast as they are used.
fn device_rx(topo: &Topology, frame: &[u8], secs: f64) -> (Rate, u64) {
    // The device worker inherits the fake guest's core.
    pin(Side::Receiver);
    let mut guest = start_device(topo);
    let writer = topo.open("kvb1", 0);
    let mem = Arc::clone(&guest.mem);
    let mut ring = Ring::new(&mem, RX_BASE);
    for i in 0..SIZE {
        let addr = RX_BUFFERS + u64::from(i) * u64::from(RX_BUF_LEN);
        ring.set_desc(i, addr, RX_BUF_LEN, VRING_DESC_F_WRITE as u16);
        ring.push_avail(i);
    }
    ring.publish(0, &guest.rx_kick);
    guest.rx_kick.write(1).expect("kick");
    settle();
    let stop = Arc::new(AtomicBool::new(false));
    let w = spawn_writer(writer, frame.to_vec(), Arc::clone(&stop));
    // Warm up, then measure with the device's own counters.
    std::thread::sleep(WARM_UP);
    let (f0, b0) = (
        guest.counters.rx_frames.load(Ordering::Relaxed),
        guest.counters.rx_bytes.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let used = ring.used_idx();
        if used != ring.used_seen {
            let old = ring.avail_idx;
            while ring.used_seen != used {
                let (id, _len) = ring.used_elem(ring.used_seen);
                ring.push_avail(id as u16);
                ring.used_seen = ring.used_seen.wrapping_add(1);
            }
            ring.publish(old, &guest.rx_kick);
        } else {
            ring.set_used_event(ring.used_seen);
            if ring.used_idx() == ring.used_seen {
                guest.irq.wait();
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let (f1, b1) = (
        guest.counters.rx_frames.load(Ordering::Relaxed),
        guest.counters.rx_bytes.load(Ordering::Relaxed),
    );
    stop.store(true, Ordering::Relaxed);
    let written = w.join().expect("writer");
    let stats = guest.net.stats();
    guest.net.reset();
    pin(Side::Any);
    if stats.rx_dropped + stats.rx_errors > 0 {
        println!(
            "    (device rx_dropped {} rx_errors {})",
            stats.rx_dropped, stats.rx_errors
        );
    }
    if std::env::var_os("KVNET_BENCH_DEBUG").is_some() {
        println!(
            "    (device rx: {:.2} interrupts/frame, paused {} times, {} written)",
            stats.interrupts as f64 / stats.rx_frames.max(1) as f64,
            stats.rx_paused,
            written
        );
    }
    (
        Rate {
            frames: f1 - f0,
            bytes: b1 - b0,
            secs,
        },
        written,
    )
}

/// The median of `values` (the upper one for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the medians of `runs`; with `ceilings` (same rounds), also the median
/// and the spread of the per-round ratios to them.
fn line(name: &str, runs: &[Rate], ceilings: Option<&[Rate]>) {
    let ratio = ceilings
        .map(|c| {
            let mut ratios: Vec<f64> = runs
                .iter()
                .zip(c)
                .map(|(run, ceiling)| 100.0 * run.gbits() / ceiling.gbits())
                .collect();
            ratios.sort_by(f64::total_cmp);
            format!(
                "{:5.1}% of ceiling (rounds {:.0}..{:.0}%)",
                ratios[ratios.len() / 2],
                ratios[0],
                ratios[ratios.len() - 1]
            )
        })
        .unwrap_or_default();
    println!(
        "  {name:<44} {:>9.0} frames/s {:>7.2} Gbit/s  {ratio}",
        median(runs.iter().map(Rate::fps)),
        median(runs.iter().map(Rate::gbits)),
    );
}

fn main() {
    if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let nice = env("KVNET_BENCH_NICE", -20.0) as i32;
    if nice != 0 {
        // Per-thread on Linux; every thread spawned later (writer, reader,
        // device worker) inherits it. On a machine shared with compilers this
        // keeps their load from deciding the ratios.
        let pid = std::process::id().to_string();
        let niced = std::process::Command::new("renice")
            .args(["-n", &nice.to_string(), "-p", &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !niced {
            println!("(could not renice to {nice}: figures follow the machine's load)");
        }
    }
    let secs = env("KVNET_BENCH_SECS", 3.0);
    let rounds = env("KVNET_BENCH_ROUNDS", 5.0).max(1.0) as usize;
    let topo = Topology::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "virtio-net fake-driver benchmark: {secs} s per run, medians of {rounds} interleaved rounds, \
         nice {nice} (load average {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    // KVNET_BENCH_ONLY narrows the run, e.g. `rx,64k` while tuning.
    let only = std::env::var("KVNET_BENCH_ONLY").unwrap_or_default();
    let picked = |group: &[&str], word: &str| {
        let chosen: Vec<&str> = only.split(',').filter(|w| group.contains(w)).collect();
        chosen.is_empty() || chosen.contains(&word)
    };
    let (tx, rx) = (picked(&["tx", "rx"], "tx"), picked(&["tx", "rx"], "rx"));
    let sizes = [
        ("1514 B", "1514", 1514usize),
        ("64 KiB GSO", "64k", 14 + 65000),
    ];
    for (label, _, frame_len) in sizes
        .into_iter()
        .filter(|(_, key, _)| picked(&["1514", "64k"], key))
    {
        let tx_frame = tcp_frame(MAC_X, GUEST_MAC, frame_len);
        let rx_frame = tcp_frame(GUEST_MAC, MAC_Y, frame_len);
        println!("== {label} frames");
        let (mut tx_ceiling, mut tx_sent, mut tx_delivered) = (vec![], vec![], vec![]);
        let (mut rx_ceiling, mut rx_device) = (vec![], vec![]);
        for _ in 0..rounds {
            if tx {
                tx_ceiling.push(raw_tx(&topo, &tx_frame, secs));
                let (sent, delivered) = device_tx(&topo, &tx_frame, secs);
                tx_sent.push(sent);
                tx_delivered.push(delivered);
            }
            if rx {
                rx_ceiling.push(raw_rx(&topo, &rx_frame, secs).0);
                rx_device.push(device_rx(&topo, &rx_frame, secs).0);
            }
        }
        if tx {
            line(
                "TX ceiling: raw tap write -> br -> peer ns",
                &tx_ceiling,
                None,
            );
            line("TX device: sent by the device", &tx_sent, Some(&tx_ceiling));
            line(
                "TX device: delivered in the peer ns",
                &tx_delivered,
                Some(&tx_ceiling),
            );
        }
        if rx {
            line(
                "RX ceiling: tap1 write -> br -> tap0 readv",
                &rx_ceiling,
                None,
            );
            line(
                "RX device: into guest buffers",
                &rx_device,
                Some(&rx_ceiling),
            );
        }
    }
}
