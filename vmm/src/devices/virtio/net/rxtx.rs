//! The virtio-net data path: guest queues <-> backend.
//!
//! Every descriptor is read and checked here, not by `virtio_queue`'s chain
//! iterator, which ends a bad chain silently: loops, out-of-queue indexes, buffers
//! outside guest memory, zero-length and over-long chains, wrong-direction and
//! indirect descriptors are each counted, and the chain is returned to the guest
//! unused. Corrupt rings (an available index running ahead of the queue, an
//! unusable head index, an unwritable used ring) put the device into
//! `NEEDS_RESET` and stop it until the driver resets it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
};
use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileSlice,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{NUM_BUFFERS_OFFSET, NetBackend, NetCounters, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::{InterruptKind, VirtioInterrupt, WarnLatch, guest_warn};

/// [`WarnLatch`] bit: a worker stopped and asked for a reset.
const WARN_NEEDS_RESET: u32 = 0;

/// What is wrong with a descriptor chain or a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// More descriptors than the queue holds: the chain loops.
    #[error("descriptor chain from head {head} loops or is longer than the queue")]
    Loop {
        /// Head index of the chain.
        head: u16,
    },
    /// A head or `next` index outside the queue.
    #[error("descriptor index {index} is outside the queue of size {size}")]
    Index {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// A buffer (or the descriptor itself) outside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    Address {
        /// Guest physical address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The chain is too short for a vnet header or longer than the largest frame.
    #[error("descriptor chain from head {head} has length {len}, outside {min}..={max}")]
    Length {
        /// Head index of the chain.
        head: u16,
        /// Total length so far.
        len: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A read-only descriptor where the device must write, or the reverse.
    #[error("descriptor {index} has the wrong direction for this queue")]
    Direction {
        /// The descriptor index.
        index: u16,
    },
    /// An indirect descriptor, which the device does not offer.
    #[error("indirect descriptor {index} without VIRTIO_RING_F_INDIRECT_DESC")]
    Indirect {
        /// The descriptor index.
        index: u16,
    },
    /// A TX vnet header asking for an offload the driver did not negotiate, or whose
    /// fields do not fit its frame.
    #[error("TX chain from head {head}: {problem}")]
    Header {
        /// Head index of the chain.
        head: u16,
        /// What is wrong with the header.
        problem: &'static str,
    },
    /// The ring itself is corrupt or unreachable.
    #[error("queue {queue} ring error")]
    Ring {
        /// Queue index.
        queue: u16,
        /// The error from virtio-queue.
        #[source]
        source: virtio_queue::Error,
    },
}

impl QueueError {
    /// The counter this error class increments.
    fn counter<'c>(&self, counters: &'c NetCounters) -> Option<&'c AtomicU64> {
        Some(match self {
            QueueError::Loop { .. } => &counters.bad_chain_loop,
            QueueError::Index { .. } => &counters.bad_desc_index,
            QueueError::Address { .. } => &counters.bad_desc_address,
            QueueError::Length { .. } => &counters.bad_chain_len,
            QueueError::Direction { .. } => &counters.bad_desc_direction,
            QueueError::Indirect { .. } => &counters.bad_desc_indirect,
            QueueError::Header { .. } => &counters.bad_tx_header,
            QueueError::Ring { .. } => return None,
        })
    }
}

/// A validated descriptor chain: every buffer lies inside guest memory.
#[derive(Debug)]
struct Chain {
    head: u16,
    /// The first buffer. Guests mostly post one-buffer chains (every mergeable
    /// RX buffer is one), which then need no allocation.
    first: (GuestAddress, u32),
    /// The buffers after the first.
    rest: Vec<(GuestAddress, u32)>,
    len: u64,
    /// Ring descriptors the chain takes, empty ones (which have no buffer) included.
    descriptors: u16,
}

impl Chain {
    /// Every buffer of the chain, in order.
    fn segments(&self) -> impl Iterator<Item = (GuestAddress, u32)> + '_ {
        std::iter::once(self.first).chain(self.rest.iter().copied())
    }

    fn segment_count(&self) -> usize {
        1 + self.rest.len()
    }
}

/// Which way the device accesses a queue's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// The device reads (TX): every descriptor must be read-only.
    DeviceReads,
    /// The device writes (RX): every descriptor must be write-only.
    DeviceWrites,
}

/// A ring structure (descriptor table, available or used ring) in guest
/// memory. When it lies in one memory region, as it nearly always does, it is
/// reached through one host slice taken once per refill or frame, so each
/// access is a bounds check instead of a region lookup; otherwise through guest
/// memory one access at a time.
#[derive(Clone, Copy, Debug)]
struct RingArea<'m> {
    mem: &'m GuestMemoryMmap,
    addr: GuestAddress,
    slice: Option<VolatileSlice<'m>>,
}

impl<'m> RingArea<'m> {
    fn new(mem: &'m GuestMemoryMmap, addr: GuestAddress, len: u64) -> RingArea<'m> {
        let slice = usize::try_from(len)
            .ok()
            .and_then(|len| GuestMemoryBackend::get_slice(mem, addr, len).ok());
        RingArea { mem, addr, slice }
    }

    fn at(&self, offset: u64) -> GuestAddress {
        self.addr.unchecked_add(offset)
    }

    fn read_obj<T: ByteValued>(&self, offset: u64) -> Result<T, virtio_queue::Error> {
        match &self.slice {
            Some(slice) => slice
                .read_obj(offset as usize)
                .map_err(virtio_queue::Error::VolatileMemoryError),
            None => self
                .mem
                .read_obj(self.at(offset))
                .map_err(virtio_queue::Error::GuestMemory),
        }
    }

    fn write_obj<T: ByteValued>(&self, value: T, offset: u64) -> Result<(), virtio_queue::Error> {
        match &self.slice {
            Some(slice) => slice
                .write_obj(value, offset as usize)
                .map_err(virtio_queue::Error::VolatileMemoryError),
            None => self
                .mem
                .write_obj(value, self.at(offset))
                .map_err(virtio_queue::Error::GuestMemory),
        }
    }

    fn load_u16(&self, offset: u64, order: Ordering) -> Result<u16, virtio_queue::Error> {
        match &self.slice {
            Some(slice) => slice
                .load::<u16>(offset as usize, order)
                .map_err(virtio_queue::Error::VolatileMemoryError),
            None => self
                .mem
                .load::<u16>(self.at(offset), order)
                .map_err(virtio_queue::Error::GuestMemory),
        }
        .map(u16::from_le)
    }

    fn store_u16(
        &self,
        value: u16,
        offset: u64,
        order: Ordering,
    ) -> Result<(), virtio_queue::Error> {
        match &self.slice {
            Some(slice) => slice
                .store(value.to_le(), offset as usize, order)
                .map_err(virtio_queue::Error::VolatileMemoryError),
            None => self
                .mem
                .store(value.to_le(), self.at(offset), order)
                .map_err(virtio_queue::Error::GuestMemory),
        }
    }
}

/// A queue's descriptor table and its number of entries.
#[derive(Clone, Copy, Debug)]
struct DescTable<'m> {
    area: RingArea<'m>,
    size: u16,
}

impl<'m> DescTable<'m> {
    fn of(mem: &'m GuestMemoryMmap, queue: &Queue) -> DescTable<'m> {
        let size = queue.size();
        DescTable {
            area: RingArea::new(mem, GuestAddress(queue.desc_table()), u64::from(size) * 16),
            size,
        }
    }
}

/// The split ring layout (virtio 1.x, 2.7): available ring = flags, idx,
/// ring[size], used_event; used ring = flags, idx, ring[size] of {id, len},
/// avail_event.
const RING_HEADER: u64 = 4;
const USED_ELEM_LEN: u64 = 8;

/// The available ring's length in bytes, `used_event` included.
fn avail_ring_len(size: u16) -> u64 {
    RING_HEADER + 2 * u64::from(size) + 2
}

/// The used ring's length in bytes, `avail_event` included.
fn used_ring_len(size: u16) -> u64 {
    RING_HEADER + USED_ELEM_LEN * u64::from(size) + 2
}

/// Walks and validates the chain starting at `head`.
fn parse_chain(
    mem: &GuestMemoryMmap,
    DescTable { area: table, size }: DescTable<'_>,
    head: u16,
    direction: Direction,
    (min_len, max_len): (u64, u64),
) -> Result<Chain, QueueError> {
    let mut first = None;
    let mut rest = Vec::new();
    let mut len = 0u64;
    let mut index = head;
    for descriptors in 1..=size {
        if index >= size {
            return Err(QueueError::Index { index, size });
        }
        let offset = u64::from(index) * 16;
        let desc: Descriptor = table.read_obj(offset).map_err(|_| QueueError::Address {
            addr: table.at(offset).raw_value(),
            len: 16,
        })?;
        if u32::from(desc.flags()) & VRING_DESC_F_INDIRECT != 0 {
            return Err(QueueError::Indirect { index });
        }
        if desc.is_write_only() != (direction == Direction::DeviceWrites) {
            return Err(QueueError::Direction { index });
        }
        len += u64::from(desc.len());
        if len > max_len {
            return Err(QueueError::Length {
                head,
                len,
                min: min_len,
                max: max_len,
            });
        }
        // An empty descriptor carries nothing (DPDK sends one for an empty mbuf
        // segment): no rule forbids it, so it is passed over, not refused.
        if desc.len() > 0 {
            if !GuestMemoryBackend::check_range(mem, desc.addr(), desc.len() as usize) {
                return Err(QueueError::Address {
                    addr: desc.addr().raw_value(),
                    len: u64::from(desc.len()),
                });
            }
            let segment = (desc.addr(), desc.len());
            match first {
                None => first = Some(segment),
                Some(_) => rest.push(segment),
            }
        }
        if !desc.has_next() {
            if len < min_len {
                return Err(QueueError::Length {
                    head,
                    len,
                    min: min_len,
                    max: max_len,
                });
            }
            // `len` reached `min_len`, so some descriptor had bytes and `first` is set.
            return first
                .map(|first| Chain {
                    head,
                    first,
                    rest,
                    len,
                    descriptors,
                })
                .ok_or(QueueError::Length {
                    head,
                    len,
                    min: min_len,
                    max: max_len,
                });
        }
        index = desc.next();
    }
    Err(QueueError::Loop { head })
}

/// Appends the host slices of a validated chain, from its byte `skip` on, to `out`.
fn chain_slices<'m>(
    mem: &'m GuestMemoryMmap,
    chain: &Chain,
    mut skip: u64,
    out: &mut Vec<VolatileSlice<'m>>,
) -> Result<(), QueueError> {
    for (addr, len) in chain.segments() {
        let (addr, len) = match skip.checked_sub(u64::from(len)) {
            Some(left) => {
                skip = left;
                continue;
            }
            // `skip` < `len`, both within a validated descriptor.
            None => (addr.unchecked_add(skip), len - skip as u32),
        };
        skip = 0;
        if len == 0 {
            continue;
        }
        for slice in GuestMemoryBackend::get_slices(mem, addr, len as usize) {
            out.push(slice.map_err(|_| QueueError::Address {
                addr: addr.raw_value(),
                len: u64::from(len),
            })?);
        }
    }
    Ok(())
}

/// Writes `bytes` at byte `offset` of a chain's buffers (which may split them).
fn write_chain_bytes(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    mut offset: u64,
    mut bytes: &[u8],
) -> Result<(), QueueError> {
    for (addr, len) in chain.segments() {
        if bytes.is_empty() {
            break;
        }
        let len = u64::from(len);
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = bytes.len().min((len - offset) as usize);
        let at = addr.unchecked_add(offset);
        mem.write_slice(&bytes[..n], at)
            .map_err(|_| QueueError::Address {
                addr: at.raw_value(),
                len: n as u64,
            })?;
        bytes = &bytes[n..];
        offset = 0;
    }
    Ok(())
}

/// Fills `bytes` from the start of a chain's buffers (which may split them).
fn read_chain_bytes(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    mut bytes: &mut [u8],
) -> Result<(), QueueError> {
    for (addr, len) in chain.segments() {
        if bytes.is_empty() {
            break;
        }
        let n = bytes.len().min(len as usize);
        let (now, later) = bytes.split_at_mut(n);
        mem.read_slice(now, addr).map_err(|_| QueueError::Address {
            addr: addr.raw_value(),
            len: n as u64,
        })?;
        bytes = later;
    }
    Ok(())
}

/// The transmit offloads a driver accepted (`VIRTIO_NET_F_CSUM`, `HOST_TSO4/6`); the
/// device offers neither `HOST_UFO` nor `HOST_ECN`.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostOffloads {
    /// `VIRTIO_NET_F_CSUM`: the driver may leave checksums to the device.
    pub csum: bool,
    /// `VIRTIO_NET_F_HOST_TSO4`.
    pub tso4: bool,
    /// `VIRTIO_NET_F_HOST_TSO6`.
    pub tso6: bool,
}

/// Destination, source and EtherType.
const ETHERNET_HEADER_LEN: u64 = 14;

/// Reads a TX chain's vnet header and refuses one that asks for an offload the driver did
/// not negotiate, or whose checksum or segmentation fields cannot describe its frame
/// (virtio 1.2 5.1.6.2.1): the host kernel's parser is then not the only check on what a
/// guest hands it. Returns the header checked, which is the one to send: the guest can
/// rewrite its own copy meanwhile, from another vCPU.
fn check_tx_header(
    mem: &GuestMemoryMmap,
    chain: &Chain,
    offloads: HostOffloads,
) -> Result<[u8; VNET_HDR_LEN], QueueError> {
    let mut header = [0u8; VNET_HDR_LEN];
    read_chain_bytes(mem, chain, &mut header)?;
    let field = |at: usize| u64::from(u16::from_le_bytes([header[at], header[at + 1]]));
    let (flags, gso_type, gso_size) = (header[0], header[1], field(4));
    let frame_len = chain.len.saturating_sub(VNET_HDR_LEN as u64);
    let hdr_len = field(2);
    // What the tap refuses with EINVAL, which would count as the backend failing.
    let problem = if frame_len < ETHERNET_HEADER_LEN {
        Some("a frame shorter than an Ethernet header")
    } else if hdr_len > frame_len {
        Some("hdr_len beyond the frame")
    } else if hdr_len != 0 && hdr_len < ETHERNET_HEADER_LEN {
        Some("hdr_len shorter than an Ethernet header")
    } else if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 {
        if !offloads.csum {
            Some("checksum offload without VIRTIO_NET_F_CSUM")
        } else if field(6) + field(8) + 2 > frame_len {
            Some("checksum field beyond the frame")
        } else {
            None
        }
    } else {
        None
    };
    let problem = problem.or(match u32::from(gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => None,
        VIRTIO_NET_HDR_GSO_TCPV4 if !offloads.tso4 => {
            Some("TCPv4 segmentation without VIRTIO_NET_F_HOST_TSO4")
        }
        VIRTIO_NET_HDR_GSO_TCPV6 if !offloads.tso6 => {
            Some("TCPv6 segmentation without VIRTIO_NET_F_HOST_TSO6")
        }
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 if gso_size == 0 => {
            Some("segmentation with gso_size 0")
        }
        VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6 => None,
        _ => Some("a segmentation type the device does not offer (UDP, ECN or unknown)"),
    });
    match problem {
        Some(problem) => Err(QueueError::Header {
            head: chain.head,
            problem,
        }),
        None => Ok(header),
    }
}

/// Where a backend's failures are reported: the device's name and whether it warned.
#[derive(Clone, Copy)]
struct FailureReport<'a> {
    name: &'a str,
    warned: &'a AtomicBool,
}

impl FailureReport<'_> {
    /// Logs a failed backend read or write: at warn the first time for the device, else
    /// at debug. A tap deleted under the VM (its transient network destroyed) fails
    /// every frame from then on, and nothing else would tell.
    fn failed(self, op: &str, error: &io::Error) {
        if self.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(tap = %self.name, %error, "virtio-net: tap {op} failed");
        } else {
            tracing::warn!(tap = %self.name, %error,
                "virtio-net: tap {op} failed: the NIC's frames are lost while it fails (not logged again)");
        }
    }
}

/// Reads one frame from `backend` into `slices`: its length, or what the receive loop
/// does instead.
fn read_from(
    backend: &mut dyn NetBackend,
    slices: &[VolatileSlice<'_>],
    counters: &NetCounters,
    report: FailureReport<'_>,
) -> Result<u64, RxStep> {
    match backend.read_frame(slices) {
        Ok(0) => {
            // End of file: the backend's peer is gone (never a tap).
            NetCounters::add(&counters.rx_errors, 1);
            Err(RxStep::Failed)
        }
        Ok(len) => Ok(len as u64),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(RxStep::Empty),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(RxStep::Dropped),
        Err(e) => {
            // Stop polling a failing backend (e.g. a tap deleted under us) until the
            // retry timer or the guest's next RX notification, rather than spin on it.
            report.failed("read", &e);
            NetCounters::add(&counters.rx_errors, 1);
            Err(RxStep::Failed)
        }
    }
}

/// Gives `head` back to the driver with `len` bytes written. A head outside the queue
/// (the driver's mistake) fails the queue without `Queue::add_used`, which logs an
/// error of its own each time: a guest that loops on it would fill the host's log.
fn give_back(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    if head >= queue.size() {
        return Err(virtio_queue::Error::InvalidDescriptorIndex);
    }
    queue.add_used(mem, head, len)
}

/// Takes the next available head off `queue`, if any.
fn pop_head(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    index: u16,
) -> Result<Option<u16>, QueueError> {
    let mut iter = queue.iter(mem).map_err(|source| QueueError::Ring {
        queue: index,
        source,
    })?;
    Ok(iter.next().map(|chain| chain.head_index()))
}

/// Whether the driver asked to be interrupted for a used entry in `old..new`:
/// always without EVENT_IDX (the caller checks the ring flags), else when its
/// `used_event` lies in that range (`vring_need_event`).
fn used_event_crossed(
    mem: &GuestMemoryMmap,
    queue: &Queue,
    old: u16,
    new: u16,
) -> Result<bool, virtio_queue::Error> {
    // The used entries must be visible before the driver's choice is read.
    std::sync::atomic::fence(Ordering::SeqCst);
    if !queue.event_idx_enabled() {
        return Ok(true);
    }
    let at = GuestAddress(queue.avail_ring())
        .checked_add(avail_ring_len(queue.size()) - 2)
        .ok_or(virtio_queue::Error::AddressOverflow)?;
    let used_event = u16::from_le(
        mem.load::<u16>(at, Ordering::Relaxed)
            .map_err(virtio_queue::Error::GuestMemory)?,
    );
    Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
}

/// The outcome of one receive attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RxStep {
    /// A frame landed in this many chains.
    Delivered(u32),
    Dropped,
    Empty,
    Failed,
    /// The guest's buffers cannot take the next frame until it posts more.
    NoRoom,
}

/// The running half of a virtio-net device: owns the queues and the backend.
#[derive(Debug)]
pub struct NetWorker {
    mem: Arc<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    backend: Box<dyn NetBackend>,
    interrupt: Arc<dyn VirtioInterrupt>,
    counters: Arc<NetCounters>,
    needs_reset: Arc<AtomicBool>,
    /// Guest-caused conditions logged at warn, shared with the device and its other
    /// workers (a guest may reset and break the device in a loop).
    warned: Arc<Mutex<WarnLatch>>,
    /// A failing backend was logged at warn (once per device, shared with it).
    backend_warned: Arc<AtomicBool>,
    /// The device's name, for logs.
    name: String,
    /// Interrupt failures already logged at warn by this worker (one per reset cycle).
    interrupt_warned: bool,
    mergeable: bool,
    guest_csum: bool,
    guest_gso: GuestGso,
    host_offloads: HostOffloads,
    max_frame: u64,
    /// Largest frame without GSO (`gso_type` NONE) the driver takes, vnet header
    /// included.
    max_plain_frame: u64,
    /// The RX used index the last interrupt decision covered.
    rx_signalled: u16,
    /// Validated RX chains taken from the ring but not yet used, in ring order.
    rx_chains: VecDeque<Chain>,
    rx_capacity: u64,
    rx_paused: bool,
    /// Backend reads that failed in a row. RX retries them on a timer: a driver whose
    /// ring is full has nothing to post, so its next RX notification may never come.
    rx_failures: u32,
    /// When the event loop retries a failed backend.
    rx_retry_at: Option<Instant>,
    broken: bool,
    /// Where a frame is read first when the guest has posted fewer bytes than a largest
    /// frame (see [`NetWorker::receive_bounced`]); allocated the first time.
    bounce: Vec<u8>,
    /// The length of the frame waiting in `bounce` for buffers; 0 for none.
    pending: usize,
}

/// Everything a [`NetWorker`] is built from (see [`super::Net::prepare_worker`]).
#[derive(Debug)]
pub struct NetWorkerSetup {
    /// Guest memory.
    pub mem: Arc<GuestMemoryMmap>,
    /// The receive queue and its notification eventfd.
    pub rx: (Queue, EventFd),
    /// The transmit queue and its notification eventfd.
    pub tx: (Queue, EventFd),
    /// Where frames go.
    pub backend: Box<dyn NetBackend>,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// Counters shared with the device.
    pub counters: Arc<NetCounters>,
    /// Set when the worker wants `NEEDS_RESET`.
    pub needs_reset: Arc<AtomicBool>,
    /// Guest-caused conditions logged at warn, shared with the device.
    pub warned: Arc<Mutex<WarnLatch>>,
    /// Set once a failing backend was logged at warn, shared with the device.
    pub backend_warned: Arc<AtomicBool>,
    /// The device's name (its tap's), for logs.
    pub name: String,
    /// `VIRTIO_NET_F_MRG_RXBUF` was negotiated.
    pub mergeable: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM` was negotiated.
    pub guest_csum: bool,
    /// The receive GSO features the driver negotiated.
    pub guest_gso: GuestGso,
    /// The transmit offloads the driver negotiated.
    pub host_offloads: HostOffloads,
    /// Largest frame the backend may deliver, vnet header included.
    pub max_frame: usize,
    /// Largest frame without GSO the driver takes, vnet header included: with
    /// `VIRTIO_NET_F_MTU` negotiated, one MTU in an Ethernet + VLAN header (Virtio 1.2
    /// 5.1.4.1), whatever GSO lets through.
    pub max_plain_frame: usize,
}

/// The receive GSO features a driver negotiated: which `gso_type`s it can take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestGso {
    /// `VIRTIO_NET_F_GUEST_TSO4`.
    pub tso4: bool,
    /// `VIRTIO_NET_F_GUEST_TSO6`.
    pub tso6: bool,
    /// `VIRTIO_NET_F_GUEST_UFO`.
    pub ufo: bool,
    /// `VIRTIO_NET_F_GUEST_ECN`.
    pub ecn: bool,
}

impl GuestGso {
    /// Whether a driver with these features (and `guest_csum`) may be handed a frame
    /// whose vnet header starts with `flags` and `gso_type` (VIRTIO 1.2 5.1.6.4.1).
    fn accepts(self, guest_csum: bool, flags: u8, gso_type: u8) -> bool {
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 && !guest_csum {
            return false;
        }
        if gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0 && !self.ecn {
            return false;
        }
        match u32::from(gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8)) {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.tso6,
            VIRTIO_NET_HDR_GSO_UDP => self.ufo,
            _ => false,
        }
    }
}

/// Used entries after which a long batch signals the driver (as vhost-net does
/// every 64), so it can recycle buffers before the batch ends.
const SIGNAL_BATCH: u32 = 64;

/// Frames (or TX chains) one pass moves before the worker goes back to its event loop,
/// which then sees a stop request, and the other direction, between passes: a steady
/// flood in one direction must not starve the other, nor hold up a reset.
const PASS_LIMIT: u32 = 256;

/// Most buffers one `readv` may take (the kernel's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// The wait before retrying a failed backend read; it doubles with each failure in a
/// row, up to [`RX_RETRY_MAX`].
const RX_RETRY_FIRST: Duration = Duration::from_millis(10);
const RX_RETRY_MAX: Duration = Duration::from_secs(1);

const TOKEN_RX_QUEUE: u64 = 0;
const TOKEN_TX_QUEUE: u64 = 1;
const TOKEN_BACKEND: u64 = 2;
const TOKEN_KILL: u64 = 3;

impl NetWorker {
    /// Builds a worker on already validated queues.
    pub fn new(setup: NetWorkerSetup) -> NetWorker {
        let rx_signalled = setup.rx.0.next_used();
        NetWorker {
            mem: setup.mem,
            rx: setup.rx.0,
            rx_evt: setup.rx.1,
            tx: setup.tx.0,
            tx_evt: setup.tx.1,
            backend: setup.backend,
            interrupt: setup.interrupt,
            counters: setup.counters,
            needs_reset: setup.needs_reset,
            warned: setup.warned,
            backend_warned: setup.backend_warned,
            name: setup.name,
            interrupt_warned: false,
            mergeable: setup.mergeable,
            guest_csum: setup.guest_csum,
            guest_gso: setup.guest_gso,
            host_offloads: setup.host_offloads,
            max_frame: setup.max_frame as u64,
            max_plain_frame: setup.max_plain_frame as u64,
            rx_signalled,
            rx_chains: VecDeque::new(),
            rx_capacity: 0,
            rx_paused: false,
            rx_failures: 0,
            rx_retry_at: None,
            broken: false,
            bounce: Vec::new(),
            pending: 0,
        }
    }

    /// Whether RX stopped polling the backend until the guest notifies RX again:
    /// the guest is out of buffers, or the backend failed.
    pub fn rx_paused(&self) -> bool {
        self.rx_paused
    }

    /// How long RX waits before retrying the backend after its last read failed;
    /// `None` while reads succeed.
    pub fn rx_retry_delay(&self) -> Option<Duration> {
        if self.rx_failures == 0 || self.broken {
            return None;
        }
        let doublings = (self.rx_failures - 1).min(8);
        Some(
            RX_RETRY_FIRST
                .saturating_mul(1 << doublings)
                .min(RX_RETRY_MAX),
        )
    }

    /// Whether the worker stopped on a corrupt ring.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Gives the backend back (on reset).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        self.backend
    }

    /// Sends every frame the guest queued on TX, then signals the guest if the
    /// used ring's notification rules (EVENT_IDX or flags) ask for it.
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        if let Err(e) = self.tx_until_empty() {
            self.fail(&e);
        }
    }

    fn tx_until_empty(&mut self) -> Result<(), QueueError> {
        let mem = Arc::clone(&self.mem);
        // Used entries the driver has not been told about yet.
        let mut unsignalled = 0;
        let ring_err = |source| QueueError::Ring {
            queue: TX_QUEUE,
            source,
        };
        // Each frame goes out as the header checked, from this copy, then the rest of its
        // chain from guest memory.
        let mut checked_header = [0u8; VNET_HDR_LEN];
        let mut slices: Vec<VolatileSlice<'_>> = vec![VolatileSlice::from(&mut checked_header[..])];
        let table = DescTable::of(&mem, &self.tx);
        let mut moved = 0;
        loop {
            self.tx.disable_notification(&*mem).map_err(ring_err)?;
            while let Some(head) = pop_head(&mut self.tx, &mem, TX_QUEUE)? {
                let limits = (VNET_HDR_LEN as u64, super::MAX_GSO_FRAME_LEN as u64);
                let parsed = parse_chain(&mem, table, head, Direction::DeviceReads, limits)
                    .and_then(|chain| {
                        let header = check_tx_header(&mem, &chain, self.host_offloads)?;
                        Ok((chain, header))
                    });
                match parsed {
                    Ok((chain, header)) => {
                        slices.truncate(1);
                        if let Some(first) = slices.first() {
                            first.copy_from(&header);
                        }
                        chain_slices(&mem, &chain, VNET_HDR_LEN as u64, &mut slices)?;
                        match self.backend.write_frame(&slices) {
                            Ok(_) => {
                                NetCounters::add(&self.counters.tx_frames, 1);
                                NetCounters::add(
                                    &self.counters.tx_bytes,
                                    chain.len - VNET_HDR_LEN as u64,
                                );
                            }
                            // The tap found the frame malformed where the checks above
                            // did not: the guest's fault, not a failing backend's.
                            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                                tracing::debug!(device = %self.name, error = %e,
                                    "virtio-net: the tap refused a frame");
                                NetCounters::add(&self.counters.tx_dropped, 1);
                            }
                            Err(e) => {
                                if !matches!(
                                    e.kind(),
                                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                                ) {
                                    self.failure_report().failed("write", &e);
                                }
                                NetCounters::add(&self.counters.tx_errors, 1);
                            }
                        }
                    }
                    Err(e) => self.refuse(&e, &self.counters.tx_dropped),
                }
                give_back(&mut self.tx, &mem, head, 0).map_err(ring_err)?;
                unsignalled += 1;
                if unsignalled == SIGNAL_BATCH {
                    // Let the driver recycle buffers while a long batch runs.
                    self.signal(TX_QUEUE)?;
                    unsignalled = 0;
                }
                moved += 1;
                if moved == PASS_LIMIT {
                    break;
                }
            }
            if moved == PASS_LIMIT {
                // Notifications stay off: the next pass is ours to ask for.
                if let Err(e) = self.tx_evt.write(1) {
                    tracing::warn!(device = %self.name, error = %e,
                        "virtio-net: cannot requeue TX");
                }
                break;
            }
            if !self.tx.enable_notification(&*mem).map_err(ring_err)? {
                break;
            }
        }
        if unsignalled > 0 {
            self.signal(TX_QUEUE)?;
        }
        Ok(())
    }

    /// Called when the guest posted RX buffers: resumes a paused RX.
    pub fn process_rx_notify(&mut self) {
        self.process_rx();
    }

    /// Moves frames from the backend into the guest's RX buffers until the
    /// backend is empty or the guest runs out of buffers (then RX pauses).
    pub fn process_rx(&mut self) {
        // This pass is the retry; a failing one schedules the next.
        self.rx_retry_at = None;
        if self.broken {
            return;
        }
        if let Err(e) = self.rx_until_empty() {
            self.fail(&e);
        }
    }

    fn rx_until_empty(&mut self) -> Result<(), QueueError> {
        let mem = Arc::clone(&self.mem);
        // Used entries the driver has not been told about yet.
        let mut unsignalled = 0;
        // The backend stays readable if frames are left: the event loop comes back.
        for _ in 0..PASS_LIMIT {
            let largest_fits = self.refill_rx(&mem, &mut unsignalled)?;
            let step =
                if self.pending > 0 || (self.mergeable && !largest_fits && self.rx_capacity > 0) {
                    self.receive_bounced(&mem)?
                } else if largest_fits {
                    self.receive_one(&mem)?
                } else {
                    RxStep::NoRoom
                };
            if step == RxStep::NoRoom {
                // Out of buffers: ask for a notification when the guest adds some,
                // unless it already did while we were looking.
                if self.enable_rx_notification(&mem)? {
                    continue;
                }
                if !self.rx_paused {
                    self.rx_paused = true;
                    NetCounters::add(&self.counters.rx_paused, 1);
                }
                break;
            }
            self.rx_paused = false;
            match step {
                RxStep::Delivered(chains) => {
                    self.rx_failures = 0;
                    unsignalled += chains;
                    if unsignalled >= SIGNAL_BATCH {
                        self.signal(RX_QUEUE)?;
                        unsignalled = 0;
                    }
                }
                // NoRoom broke out of the loop above.
                RxStep::Dropped | RxStep::NoRoom => self.rx_failures = 0,
                RxStep::Empty => {
                    self.rx_failures = 0;
                    break;
                }
                RxStep::Failed => {
                    // Retried on a timer, or sooner at the guest's next RX
                    // notification. With EVENT_IDX the driver sends one only past
                    // avail_event, which must be current.
                    self.enable_rx_notification(&mem)?;
                    self.rx_paused = true;
                    self.rx_failures = self.rx_failures.saturating_add(1);
                    self.rx_retry_at = self.rx_retry_delay().map(|delay| Instant::now() + delay);
                    break;
                }
            }
        }
        if unsignalled > 0 {
            self.signal(RX_QUEUE)?;
        }
        Ok(())
    }

    /// Asks the driver to notify RX when it adds buffers; returns whether it added some
    /// meanwhile.
    fn enable_rx_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, QueueError> {
        self.rx
            .enable_notification(mem)
            .map_err(|source| QueueError::Ring {
                queue: RX_QUEUE,
                source,
            })
    }

    /// Takes chains off the RX ring until a largest frame fits (mergeable) or one
    /// chain is held. Returns whether there is room for a frame.
    fn refill_rx(
        &mut self,
        mem: &GuestMemoryMmap,
        unsignalled: &mut u32,
    ) -> Result<bool, QueueError> {
        let ring_err = |source| QueueError::Ring {
            queue: RX_QUEUE,
            source,
        };
        if !self.rx.ready() {
            return Err(ring_err(virtio_queue::Error::QueueNotReady));
        }
        let table = DescTable::of(mem, &self.rx);
        let size = table.size;
        let avail = RingArea::new(
            mem,
            GuestAddress(self.rx.avail_ring()),
            avail_ring_len(size),
        );
        let limits = (VNET_HDR_LEN as u64, u64::from(u32::MAX));
        // One read of the available index covers every head taken below.
        let avail_idx = avail.load_u16(2, Ordering::Acquire).map_err(ring_err)?;
        if avail_idx.wrapping_sub(self.rx.next_avail()) > size {
            return Err(ring_err(virtio_queue::Error::InvalidAvailRingIndex));
        }
        loop {
            let enough = if self.mergeable {
                self.rx_capacity >= self.max_frame
            } else {
                !self.rx_chains.is_empty()
            };
            if enough {
                return Ok(true);
            }
            let next = self.rx.next_avail();
            if next == avail_idx {
                return Ok(false);
            }
            let slot = RING_HEADER + 2 * u64::from(next % size);
            let head = avail.load_u16(slot, Ordering::Acquire).map_err(ring_err)?;
            self.rx.set_next_avail(next.wrapping_add(1));
            match parse_chain(mem, table, head, Direction::DeviceWrites, limits) {
                Ok(chain) => {
                    self.rx_capacity += chain.len;
                    self.rx_chains.push_back(chain);
                }
                Err(e) => {
                    self.refuse(&e, &self.counters.rx_dropped);
                    give_back(&mut self.rx, mem, head, 0).map_err(ring_err)?;
                    *unsignalled += 1;
                }
            }
        }
    }

    /// Reads the next frame straight into the held chains, a largest frame's worth of
    /// them (one without mergeable buffers).
    fn receive_one(&mut self, mem: &GuestMemoryMmap) -> Result<RxStep, QueueError> {
        let mut slices = Vec::with_capacity(self.rx_chains.len().min(IOV_MAX));
        let mut capacity = 0u64;
        let mut offered = 0usize;
        for chain in &self.rx_chains {
            // The kernel takes at most IOV_MAX buffers per readv; a guest posting
            // tiny chains gets fewer of them (and may lose large frames).
            if offered > 0 && slices.len() + chain.segment_count() > IOV_MAX {
                break;
            }
            chain_slices(mem, chain, 0, &mut slices)?;
            capacity += chain.len;
            offered += 1;
            if !self.mergeable || capacity >= self.max_frame {
                break;
            }
        }
        let report = FailureReport {
            name: &self.name,
            warned: &self.backend_warned,
        };
        let len = match read_from(&mut *self.backend, &slices, &self.counters, report) {
            Ok(len) => len,
            Err(step) => return Ok(step),
        };
        drop(slices);
        if len > capacity || len > self.max_frame || len < VNET_HDR_LEN as u64 {
            // The frame did not fit (a tap reports the full length), is larger than the
            // MTU the driver was promised (virtio 1.2 5.1.4.1: a bridge or tap with a
            // larger one sent it), or is headerless; it is gone, the buffers stay for
            // the next one.
            NetCounters::add(&self.counters.rx_dropped, 1);
            return Ok(RxStep::Dropped);
        }
        let mut head = [0u8; 2];
        if let Some(first) = self.rx_chains.front() {
            read_chain_bytes(mem, first, &mut head)?;
        }
        if !self.header_acceptable(head, len) {
            return Ok(RxStep::Dropped);
        }
        self.publish_frame(mem, len, offered)
    }

    /// Receives through the bounce buffer while the guest has posted fewer bytes than a
    /// largest frame (a small ring, or small buffers): waiting for a largest frame's
    /// room, as [`NetWorker::receive_one`] does, would hold up every frame for good.
    /// The frame is read first and copied into the chains if it fits them. One that
    /// does not waits for more buffers, or is dropped when the guest has no descriptor
    /// left to post them with (Virtio 1.2 5.1.6.3.1 only asks each mergeable buffer to
    /// hold the header).
    fn receive_bounced(&mut self, mem: &GuestMemoryMmap) -> Result<RxStep, QueueError> {
        if self.pending == 0 {
            if self.bounce.is_empty() {
                self.bounce = vec![0; usize::try_from(self.max_frame).unwrap_or(usize::MAX)];
            }
            let slice = VolatileSlice::from(&mut self.bounce[..]);
            let report = FailureReport {
                name: &self.name,
                warned: &self.backend_warned,
            };
            let len = match read_from(&mut *self.backend, &[slice], &self.counters, report) {
                Ok(len) => len,
                Err(step) => return Ok(step),
            };
            if len > self.max_frame || len < VNET_HDR_LEN as u64 {
                NetCounters::add(&self.counters.rx_dropped, 1);
                return Ok(RxStep::Dropped);
            }
            if !self.header_acceptable([self.bounce[0], self.bounce[1]], len) {
                return Ok(RxStep::Dropped);
            }
            self.pending = len as usize;
        }
        let len = self.pending as u64;
        if len > self.rx_capacity {
            // Ring slots, not buffers: a chain's empty descriptors take slots too.
            let descriptors: usize = self
                .rx_chains
                .iter()
                .map(|chain| usize::from(chain.descriptors))
                .sum();
            if descriptors < usize::from(self.rx.size()) {
                return Ok(RxStep::NoRoom);
            }
            self.pending = 0;
            NetCounters::add(&self.counters.rx_dropped, 1);
            return Ok(RxStep::Dropped);
        }
        let mut copied = 0;
        let mut offered = 0;
        for chain in &self.rx_chains {
            if copied == self.pending {
                break;
            }
            let n = (self.pending - copied).min(usize::try_from(chain.len).unwrap_or(usize::MAX));
            write_chain_bytes(mem, chain, 0, &self.bounce[copied..copied + n])?;
            copied += n;
            offered += 1;
        }
        self.pending = 0;
        self.publish_frame(mem, len, offered)
    }

    /// Whether a received frame whose vnet header starts with `flags, gso_type` may go
    /// to this driver; counts it as dropped if not. Frames queued in the backend under
    /// an earlier driver's offloads can need features this one did not negotiate.
    fn header_acceptable(&self, [flags, gso_type]: [u8; 2], len: u64) -> bool {
        // Without GSO (the ECN bit aside), no larger than the MTU promised.
        let plain =
            u32::from(gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8)) == VIRTIO_NET_HDR_GSO_NONE;
        if self.guest_gso.accepts(self.guest_csum, flags, gso_type)
            && !(plain && len > self.max_plain_frame)
        {
            return true;
        }
        tracing::debug!(
            flags,
            gso_type,
            len,
            "virtio-net: dropping a frame the driver cannot take"
        );
        NetCounters::add(&self.counters.rx_dropped, 1);
        false
    }

    /// Marks the `len` bytes of a frame written into the first `offered` held chains as
    /// used: `num_buffers` of them, all full but the last.
    fn publish_frame(
        &mut self,
        mem: &GuestMemoryMmap,
        len: u64,
        offered: usize,
    ) -> Result<RxStep, QueueError> {
        let mut num_buffers = 0u16;
        let mut remaining = len;
        for chain in self.rx_chains.iter().take(offered) {
            if remaining == 0 {
                break;
            }
            remaining -= remaining.min(chain.len);
            num_buffers += 1;
        }
        if let Some(first) = self.rx_chains.front() {
            write_chain_bytes(
                mem,
                first,
                NUM_BUFFERS_OFFSET as u64,
                &num_buffers.to_le_bytes(),
            )?;
            if !self.guest_csum {
                // A tap sets DATA_VALID whatever its offloads; a driver that did not
                // accept GUEST_CSUM must see no flags (Virtio 1.2 5.1.6.4.1).
                write_chain_bytes(mem, first, 0, &[0])?;
            }
        }
        // Fill the used elements, then publish them with one index update.
        let ring_err = |source| QueueError::Ring {
            queue: RX_QUEUE,
            source,
        };
        let size = self.rx.size();
        let used = RingArea::new(mem, GuestAddress(self.rx.used_ring()), used_ring_len(size));
        let mut next_used = self.rx.next_used();
        let mut remaining = len;
        for _ in 0..num_buffers {
            let Some(chain) = self.rx_chains.pop_front() else {
                break;
            };
            self.rx_capacity -= chain.len;
            let n = remaining.min(chain.len);
            remaining -= n;
            let slot = RING_HEADER + USED_ELEM_LEN * u64::from(next_used % size);
            let elem = [u32::from(chain.head).to_le(), (n as u32).to_le()];
            used.write_obj(elem, slot).map_err(ring_err)?;
            next_used = next_used.wrapping_add(1);
        }
        self.rx.set_next_used(next_used);
        used.store_u16(next_used, 2, Ordering::Release)
            .map_err(ring_err)?;
        NetCounters::add(&self.counters.rx_frames, 1);
        NetCounters::add(&self.counters.rx_bytes, len - VNET_HDR_LEN as u64);
        Ok(RxStep::Delivered(u32::from(num_buffers)))
    }

    /// Raises the queue's interrupt if the driver wants one for the entries just used.
    fn signal(&mut self, index: u16) -> Result<(), QueueError> {
        let mem = &*self.mem;
        let queue = if index == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        let ring_err = |source| QueueError::Ring {
            queue: index,
            source,
        };
        let mut needed = if index == RX_QUEUE {
            // RX publishes used entries itself (not through `add_used`), so it
            // tracks what the driver was last told about itself.
            let new = queue.next_used();
            let old = std::mem::replace(&mut self.rx_signalled, new);
            used_event_crossed(mem, queue, old, new).map_err(ring_err)?
        } else {
            queue.needs_notification(mem).map_err(ring_err)?
        };
        if needed && !queue.event_idx_enabled() {
            // virtio-queue ignores VRING_AVAIL_F_NO_INTERRUPT; honour it here.
            let flags: u16 = mem
                .read_obj(GuestAddress(queue.avail_ring()))
                .map_err(|e| ring_err(virtio_queue::Error::GuestMemory(e)))?;
            needed = u32::from(u16::from_le(flags)) & VRING_AVAIL_F_NO_INTERRUPT == 0;
        }
        if needed {
            NetCounters::add(&self.counters.interrupts, 1);
            if let Err(e) = self.interrupt.trigger(InterruptKind::Queue(index)) {
                self.interrupt_failed(&e, index);
            }
        }
        Ok(())
    }

    fn failure_report(&self) -> FailureReport<'_> {
        FailureReport {
            name: &self.name,
            warned: &self.backend_warned,
        }
    }

    fn refuse(&self, error: &QueueError, dropped: &AtomicU64) {
        tracing::debug!(%error, "virtio-net: refusing descriptor chain");
        if let Some(counter) = error.counter(&self.counters) {
            NetCounters::add(counter, 1);
        }
        NetCounters::add(dropped, 1);
    }

    /// Stops the worker and asks the driver for a reset.
    fn fail(&mut self, error: &QueueError) {
        if self.broken {
            return;
        }
        // Once per worker (`broken` stops it), and at warn once a minute at most.
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        guest_warn!(warned, WARN_NEEDS_RESET, device = %self.name, %error,
            "virtio-net: device needs reset");
        drop(warned);
        self.broken = true;
        if let Some(counter) = error.counter(&self.counters) {
            NetCounters::add(counter, 1);
        }
        NetCounters::add(&self.counters.needs_reset_events, 1);
        self.needs_reset.store(true, Ordering::SeqCst);
        if let Err(e) = self.interrupt.trigger(InterruptKind::Config) {
            self.interrupt_failed(&e, u16::MAX);
        }
    }

    /// Logs a failed interrupt: at warn the first time for this worker, else at debug,
    /// since it fails again on every frame. `queue` is `u16::MAX` for the config one.
    fn interrupt_failed(&mut self, error: &io::Error, queue: u16) {
        if std::mem::replace(&mut self.interrupt_warned, true) {
            tracing::debug!(device = %self.name, %error, queue, "virtio-net: cannot raise interrupt");
        } else {
            tracing::warn!(device = %self.name, %error, queue, "virtio-net: cannot raise interrupt");
        }
    }

    /// Runs the worker until `kill` is signalled: queue notifications and backend
    /// readiness drive TX and RX. The backend is polled only while RX has buffers.
    /// Returns the backend so a reset device can be activated again.
    pub fn run(mut self, kill: &EventFd) -> Box<dyn NetBackend> {
        if let Err(e) = self.event_loop(kill) {
            tracing::error!(device = %self.name, error = %e, "virtio-net: worker event loop failed");
            self.broken = true;
            self.needs_reset.store(true, Ordering::SeqCst);
            let _ = self.interrupt.trigger(InterruptKind::Config);
        }
        self.backend
    }

    fn event_loop(&mut self, kill: &EventFd) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.rx_evt.as_raw_fd(), TOKEN_RX_QUEUE)?;
        add(self.tx_evt.as_raw_fd(), TOKEN_TX_QUEUE)?;
        add(kill.as_raw_fd(), TOKEN_KILL)?;
        add(self.backend.as_raw_fd(), TOKEN_BACKEND)?;
        let mut backend_polled = true;
        // Frames or buffers may have arrived before we started waiting.
        self.process_tx();
        self.process_rx();
        let mut events = [EpollEvent::default(); 8];
        loop {
            let want_backend = !self.rx_paused && !self.broken;
            if want_backend != backend_polled {
                let op = if want_backend {
                    ControlOperation::Add
                } else {
                    ControlOperation::Delete
                };
                epoll.ctl(
                    op,
                    self.backend.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_BACKEND),
                )?;
                backend_polled = want_backend;
            }
            let timeout = self.rx_retry_at.map_or(-1, |at| {
                let wait = at.saturating_duration_since(Instant::now());
                // Rounded up: waking a millisecond early would spin until the deadline.
                i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            });
            let n = match epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.rx_retry_at.is_some_and(|at| at <= Instant::now()) {
                self.process_rx();
            }
            for event in &events[..n] {
                match event.data() {
                    TOKEN_KILL => return Ok(()),
                    TOKEN_RX_QUEUE => {
                        // A failed read only means a spurious wakeup.
                        let _ = self.rx_evt.read();
                        self.process_rx_notify();
                    }
                    TOKEN_TX_QUEUE => {
                        let _ = self.tx_evt.read();
                        self.process_tx();
                    }
                    _ => self.process_rx(),
                }
            }
        }
    }
}
