//! Test doubles for the virtio-net device and the fuzz entry point.
//!
//! Compiled for unit tests and with the `test-utils` feature (the cargo-fuzz crate
//! under `vmm/fuzz` enables it).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::tap::{readv_fd, writev_fd};
use super::{MacAddr, Net, NetBackend, NetConfig, VNET_HDR_LEN};
use crate::devices::virtio::{InterruptKind, VirtioDevice, VirtioInterrupt};

/// A backend on one end of a `SOCK_SEQPACKET` socketpair: each message is one
/// frame with its vnet header, as on a tap. A frame larger than the buffers is
/// consumed and reported with a length past their end, like a tap does.
#[derive(Debug)]
pub struct SeqpacketBackend {
    fd: OwnedFd,
    /// The last `set_offload` value, shared so a test can read it after handing
    /// the backend to the device.
    pub offload: Arc<AtomicU32>,
}

impl SeqpacketBackend {
    /// Wraps one end of a socketpair; sets it non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<SeqpacketBackend> {
        super::tap::set_nonblocking(fd.as_fd())?;
        Ok(SeqpacketBackend {
            fd,
            offload: Arc::new(AtomicU32::new(u32::MAX)),
        })
    }
}

impl AsRawFd for SeqpacketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for SeqpacketBackend {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        // One spare byte tells a frame that did not fit from one that did.
        let mut spare = [0u8; 1];
        let mut all: Vec<VolatileSlice<'_>> = bufs.to_vec();
        all.push(VolatileSlice::from(&mut spare[..]));
        readv_fd(self.fd.as_fd(), &all)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        writev_fd(self.fd.as_fd(), bufs)
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        self.offload.store(tun_flags, Ordering::SeqCst);
        Ok(())
    }
}

/// A backend that keeps frames in memory (for fuzzing: no syscalls per frame).
#[derive(Debug)]
pub struct MemBackend {
    /// Frames the "host" will deliver to the guest.
    pub rx: VecDeque<Vec<u8>>,
    /// Frames the guest sent (the first 1024), shared with the test.
    pub tx: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Readable only so the worker's event loop could poll it; never signalled.
    fd: EventFd,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> io::Result<MemBackend> {
        Ok(MemBackend {
            rx: VecDeque::new(),
            tx: Arc::default(),
            fd: EventFd::new(EFD_NONBLOCK)?,
        })
    }
}

impl AsRawFd for MemBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Copies `frame` into `bufs` in order, as a tap's read does, and returns its length,
/// like a tap the full length even when it did not fit.
pub fn scatter_frame(frame: &[u8], bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    let mut done = 0;
    for buf in bufs {
        if done == frame.len() {
            break;
        }
        done += buf
            .write(&frame[done..], 0)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(frame.len())
}

impl NetBackend for MemBackend {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let frame = self.rx.pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        scatter_frame(&frame, bufs)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut frame = Vec::new();
        for buf in bufs {
            let start = frame.len();
            frame.resize(start + buf.len(), 0);
            buf.read(&mut frame[start..], 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        let len = frame.len();
        let mut sent = self
            .tx
            .lock()
            .map_err(|_| io::Error::other("frame log poisoned"))?;
        if sent.len() < 1024 {
            sent.push(frame);
        }
        Ok(len)
    }

    fn set_offload(&mut self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Records every interrupt the device raises.
#[derive(Debug, Default)]
pub struct RecordingInterrupt {
    events: Mutex<Vec<InterruptKind>>,
}

impl RecordingInterrupt {
    /// How many times `kind` was raised.
    pub fn count(&self, kind: InterruptKind) -> usize {
        self.events
            .lock()
            .map(|events| events.iter().filter(|k| **k == kind).count())
            .unwrap_or(0)
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        self.events
            .lock()
            .map_err(|_| io::Error::other("interrupt log poisoned"))?
            .push(kind);
        Ok(())
    }
}

/// Size of the guest memory the fuzz harness lays its rings and buffers in.
pub const FUZZ_MEM_SIZE: usize = 0x1_0000;

/// Drives a virtio-net device over guest memory taken from `data`: the first
/// bytes choose features, queue sizes and ring addresses, the rest becomes guest
/// memory (descriptor tables, rings, buffers) and host frames. Must never panic
/// nor touch memory outside the guest's; returns the device's counters and the
/// frames sent so callers can check invariants.
pub fn fuzz_net_device(data: &[u8]) -> Option<(super::NetStats, Vec<Vec<u8>>)> {
    let (header, rest) = data.split_at_checked(16)?;
    // Two adjacent regions, so buffers may straddle a region boundary.
    let half = FUZZ_MEM_SIZE / 2;
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), half),
            (GuestAddress(half as u64), half),
        ])
        .ok()?,
    );
    let image = &rest[..rest.len().min(FUZZ_MEM_SIZE)];
    mem.write_slice(image, GuestAddress(0)).ok()?;
    let frames = &rest[image.len()..];

    let mut backend = MemBackend::new().ok()?;
    let mut offset = 0;
    while offset + 2 <= frames.len() && backend.rx.len() < 64 {
        let len = usize::from(u16::from_le_bytes([frames[offset], frames[offset + 1]])) % 2048;
        offset += 2;
        let end = (offset + len).min(frames.len());
        backend.rx.push_back(frames[offset..end].to_vec());
        offset = end;
    }
    // Large frames exercise mergeable buffers and drops.
    if header[15] & 1 != 0 {
        backend
            .rx
            .push_back(vec![0xab; 1 + usize::from(header[14]) * 300]);
    }

    let sent = Arc::clone(&backend.tx);
    let mut net = Net::new(
        "fuzz",
        NetConfig {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
            mtu: Some(1500),
        },
        Box::new(backend),
    );
    // Feature bits chosen by the input, always a modern driver.
    let features = u64::from_le_bytes(header[..8].try_into().ok()?) | (1 << 32);
    net.ack_features(features & net.features());
    let mut queues = Vec::new();
    let mut avail_rings = Vec::new();
    for q in 0..2 {
        let b = &header[8 + q * 3..8 + q * 3 + 3];
        let mut queue = Queue::new(256).ok()?;
        // Sizes may be invalid (set_size keeps the old one) or too big for memory.
        queue.set_size(1 << (b[0] % 10));
        let slot = |x: u8| u64::from(x) * 0x100;
        let avail = slot(b[2]) + 0x80;
        queue.set_desc_table_address(Some(slot(b[1]) as u32), Some(0));
        queue.set_avail_ring_address(Some(avail as u32), Some(0));
        queue.set_used_ring_address(Some((slot(b[1] ^ b[2]) + 0x40) as u32), Some(0));
        queue.set_ready(true);
        queues.push((queue, EventFd::new(EFD_NONBLOCK).ok()?));
        avail_rings.push(GuestAddress(avail + 2));
    }
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mut worker = net
        .prepare_worker(Arc::clone(&mem), interrupt, queues)
        .ok()?;
    for round in 0..3u16 {
        worker.process_tx();
        worker.process_rx();
        worker.process_rx_notify();
        // The "driver" publishes more entries between rounds.
        for &idx_addr in &avail_rings {
            if let Ok(idx) = mem.read_obj::<u16>(idx_addr) {
                let _ = mem.write_obj(idx.wrapping_add(round + 1), idx_addr);
            }
        }
    }
    let stats = net.stats();
    net.restore_worker(worker);
    let sent = sent.lock().map(|sent| sent.clone()).unwrap_or_default();
    for frame in &sent {
        assert!(
            frame.len() >= VNET_HDR_LEN,
            "sent a frame without a vnet header"
        );
    }
    Some((stats, sent))
}
