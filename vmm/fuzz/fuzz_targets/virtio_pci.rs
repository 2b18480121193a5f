//! Fuzzes the virtio-pci transport as a hostile guest drives it: the input is decoded
//! into a sequence of PCI configuration accesses (ECAM and CF8/CFC), MMIO accesses of any
//! offset and width to the BAR window (common cfg, ISR, device cfg, notify, MSI-X table
//! and PBA, and whatever else a moved BAR lands on), guest-memory writes (descriptors,
//! rings) and host frames, against two virtio-net NICs on a PCI bus with a fake MSI/INTx
//! router, a fake ioeventfd registrar and an in-memory backend.
//!
//! Mode (first byte, bit 0): 0 = the NICs' data path runs synchronously when the input
//! says so (deterministic); 1 = the real `Net::activate` worker threads run it
//! concurrently with the "vCPU" (races of reset/notify/ring rewrites against the worker).
//!
//! Invariants checked after every operation: no panic; device status only gains bits
//! until a reset (bus-master-off may drop DRIVER_OK), never shows unknown bits, and an
//! active device has FEATURES_OK and DRIVER_OK with VERSION_1 negotiated; acked features
//! are a subset of the offered ones; queue sizes read back 0 or a power of two <= the
//! max; MSI-X vectors read back < table size or NO_VECTOR; ISR holds only bits 0-1; the
//! bus never unregisters an ioeventfd it did not register nor registers one twice; every
//! transmitted frame carries a vnet header and is at most a GSO frame long.
#![no_main]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vmm::devices::bus::BusDevice;
use vmm::devices::pci::{
    IntxRouter, IoEventRegistrar, MsiRouter, PciBarWindow, PciBus, PciConfigIo, PciConfigMmio,
    PciDevice, SharedPciDevice,
};
use vmm::devices::virtio::net::{MacAddr, Net, NetBackend, NetConfig, NetWorker};
use vmm::devices::virtio::pci::{VirtioPciDevice, common};
use vmm::devices::virtio::{ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt};
use vmm::kvm::{KvmError, MsiMessage};
use vmm::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};
use vmm::vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const PCI_MMIO32_START: u64 = 0xc000_0000;
const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
const ECAM_SIZE: u64 = 1 << 20;
const MAX_GSO_FRAME_LEN: usize = 12 + 18 + 65535;
const VNET_HDR_LEN: usize = 12;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_NEEDS_RESET: u8 = 0x40;
const S_FAILED: u8 = 0x80;
const VERSION_1: u64 = 1 << 32;

// ---------------------------------------------------------------- fakes

#[derive(Debug, Default)]
struct FakeRouter {
    next_gsi: AtomicU32,
    routes: Mutex<HashMap<u32, MsiMessage>>,
}

impl MsiRouter for FakeRouter {
    fn allocate_gsi(&self) -> Result<u32, KvmError> {
        Ok(24 + self.next_gsi.fetch_add(1, Ordering::SeqCst))
    }
    fn set_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmError> {
        assert!(
            gsi >= 24 && gsi < 24 + self.next_gsi.load(Ordering::SeqCst),
            "route for a GSI never allocated: {gsi}"
        );
        self.routes.lock().unwrap().insert(gsi, msg);
        Ok(())
    }
    fn attach_irqfd(&self, _irqfd: &EventFd, _gsi: u32) -> Result<(), KvmError> {
        Ok(())
    }
    fn release(&self, _irqfd: &EventFd, gsi: u32) {
        self.routes.lock().unwrap().remove(&gsi);
    }
}

impl IntxRouter for FakeRouter {
    fn attach_resampled_irqfd(&self, _: &EventFd, _: &EventFd, _: u32) -> Result<(), KvmError> {
        Ok(())
    }
    fn detach_irqfd(&self, _: &EventFd, _: u32) -> Result<(), KvmError> {
        Ok(())
    }
}

/// Like KVM: refuses a second ioeventfd at the same (address, datamatch).
#[derive(Debug, Default)]
struct FakeIoEvents(Mutex<HashMap<(u64, Option<u32>), ()>>);

impl IoEventRegistrar for FakeIoEvents {
    fn register(&self, _fd: &EventFd, addr: u64, dm: Option<u32>) -> Result<(), KvmError> {
        let mut map = self.0.lock().unwrap();
        if map.contains_key(&(addr, dm)) {
            return Err(KvmError::MissingCap("KVM_IOEVENTFD: EEXIST (fake)"));
        }
        map.insert((addr, dm), ());
        // Two NICs with two queues each.
        assert!(map.len() <= 4, "more ioeventfds than queues: {map:?}");
        Ok(())
    }
    fn unregister(&self, _fd: &EventFd, addr: u64, dm: Option<u32>) -> Result<(), KvmError> {
        let removed = self.0.lock().unwrap().remove(&(addr, dm));
        assert!(
            removed.is_some(),
            "unregistering an ioeventfd never registered at {addr:#x}"
        );
        Ok(())
    }
}

/// Frames in memory; the eventfd is readable while frames wait (for the threaded worker).
#[derive(Debug)]
struct QueueBackend {
    rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    tx: Arc<Mutex<Vec<usize>>>,
    fd: Arc<EventFd>,
}

impl AsRawFd for QueueBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for QueueBackend {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let Some(frame) = self.rx.lock().unwrap().pop_front() else {
            let _ = self.fd.read();
            return Err(io::ErrorKind::WouldBlock.into());
        };
        vmm::devices::virtio::net::test_utils::scatter_frame(&frame, bufs)
    }
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let mut len = 0;
        for buf in bufs {
            let mut tmp = vec![0u8; buf.len()];
            buf.read(&mut tmp, 0)
                .map_err(|e| io::Error::other(e.to_string()))?;
            len += buf.len();
        }
        assert!(
            len >= VNET_HDR_LEN,
            "a frame without a vnet header ({len} bytes)"
        );
        assert!(
            len <= MAX_GSO_FRAME_LEN,
            "a frame longer than any GSO frame ({len})"
        );
        let mut tx = self.tx.lock().unwrap();
        if tx.len() < 4096 {
            tx.push(len);
        }
        Ok(len)
    }
    fn set_offload(&mut self, _tun_flags: u32) -> io::Result<()> {
        Ok(())
    }
}

/// A virtio-net device whose data path the harness drives synchronously.
#[derive(Debug)]
struct SyncNet {
    net: Net,
    worker: Arc<Mutex<Option<NetWorker>>>,
    invalid_queue: bool,
}

impl VirtioDevice for SyncNet {
    fn name(&self) -> &str {
        self.net.name()
    }
    fn device_type(&self) -> u32 {
        self.net.device_type()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.net.queue_max_sizes()
    }
    fn features(&self) -> u64 {
        self.net.features()
    }
    fn ack_features(&mut self, features: u64) {
        self.net.ack_features(features)
    }
    fn acked_features(&self) -> u64 {
        self.net.acked_features()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.net.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.net.write_config(offset, data)
    }
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        let mut slot = self.worker.lock().unwrap();
        assert!(slot.is_none(), "activated twice without a reset");
        match self.net.prepare_worker(mem, Arc::clone(&interrupt), queues) {
            Ok(worker) => {
                *slot = Some(worker);
                Ok(())
            }
            Err(e) => {
                if matches!(e, ActivateError::InvalidQueue { .. }) {
                    self.invalid_queue = true;
                    let _ = interrupt.trigger(InterruptKind::Config);
                }
                Err(e)
            }
        }
    }
    fn reset(&mut self) -> bool {
        self.invalid_queue = false;
        let worker = self.worker.lock().unwrap().take();
        let had = worker.is_some();
        if let Some(worker) = worker {
            self.net.restore_worker(worker);
        }
        self.net.reset();
        had
    }
    fn needs_reset(&self) -> bool {
        self.invalid_queue
            || self.net.needs_reset()
            || self
                .worker
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|w| w.is_broken())
    }
}

// ---------------------------------------------------------------- input

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (now, rest) = self.0.split_at(n);
        self.0 = rest;
        now
    }
    /// An access width: 1, 2, 4 or 8 bytes, sometimes 3.
    fn width(&mut self) -> Option<usize> {
        Some([1, 2, 4, 8, 4, 2, 3, 4][usize::from(self.u8()? & 7)])
    }
}

// ---------------------------------------------------------------- machine

struct Nic {
    dev: Arc<Mutex<VirtioPciDevice>>,
    number: u8,
    worker: Arc<Mutex<Option<NetWorker>>>,
    rx: Arc<Mutex<VecDeque<Vec<u8>>>>,
    fd: Arc<EventFd>,
    last_status: u8,
    msix_cap: usize,
}

struct Machine {
    mem: Arc<GuestMemoryMmap>,
    ecam: PciConfigMmio,
    cfgio: PciConfigIo,
    window: PciBarWindow,
    nics: Vec<Nic>,
    threaded: bool,
}

fn mem_regions() -> Vec<(GuestAddress, usize)> {
    // Two adjacent regions (buffers may straddle them) and one past a hole.
    vec![
        (GuestAddress(0), 0x8000),
        (GuestAddress(0x8000), 0x8000),
        (GuestAddress(0x2_0000), 0x8000),
    ]
}

impl Machine {
    fn new(threaded: bool) -> Machine {
        let mem = Arc::new(GuestMemoryMmap::<()>::from_ranges(&mem_regions()).unwrap());
        let router = Arc::new(FakeRouter::default());
        let events = Arc::new(FakeIoEvents::default());
        let bus = Arc::new(Mutex::new(PciBus::new(Some(events))));
        let mut nics = Vec::new();
        for i in 0..2u8 {
            let rx = Arc::new(Mutex::new(VecDeque::new()));
            let fd = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
            let backend = QueueBackend {
                rx: Arc::clone(&rx),
                tx: Arc::default(),
                fd: Arc::clone(&fd),
            };
            let net = Net::new(
                &format!("fuzz{i}"),
                NetConfig {
                    mac: MacAddr([0x52, 0x54, 0, 0, 0, i]),
                    mtu: (i == 0).then_some(1500),
                },
                Box::new(backend),
            );
            let worker = Arc::new(Mutex::new(None));
            let device: Box<dyn VirtioDevice> = if threaded {
                Box::new(net)
            } else {
                Box::new(SyncNet {
                    net,
                    worker: Arc::clone(&worker),
                    invalid_queue: false,
                })
            };
            let dev = Arc::new(Mutex::new(
                VirtioPciDevice::new(device, Arc::clone(&mem), router.clone()).unwrap(),
            ));
            let shared: SharedPciDevice = dev.clone();
            let number = bus.lock().unwrap().add_device(shared).unwrap().device;
            let msix_cap = {
                let d = dev.lock().unwrap();
                let bytes = d.config().bytes();
                let mut at = usize::from(bytes[0x34]);
                let mut found = 0;
                for _ in 0..48 {
                    if at == 0 || at >= 256 {
                        break;
                    }
                    if bytes[at] == 0x11 {
                        found = at;
                        break;
                    }
                    at = usize::from(bytes[at + 1]);
                }
                assert_ne!(found, 0, "no MSI-X capability");
                found
            };
            nics.push(Nic {
                dev,
                number,
                worker,
                rx,
                fd,
                last_status: 0,
                msix_cap,
            });
        }
        Machine {
            mem,
            ecam: PciConfigMmio::new(bus.clone()),
            cfgio: PciConfigIo::new(bus.clone()),
            window: PciBarWindow::new(bus),
            nics,
            threaded,
        }
    }

    fn ecam_offset(number: u8, reg: usize) -> u64 {
        (u64::from(number) << 15) | (reg as u64 & 0xfff)
    }

    fn cfg_write(&mut self, nic: usize, reg: usize, data: &[u8]) {
        let number = self.nics[nic].number;
        self.ecam.write(Self::ecam_offset(number, reg), data);
    }

    fn cfg_read(&mut self, nic: usize, reg: usize, data: &mut [u8]) {
        let number = self.nics[nic].number;
        self.ecam.read(Self::ecam_offset(number, reg), data);
    }

    /// The NIC's BAR 0 as the guest programmed it (reading config space, as a driver would).
    fn bar_base(&mut self, nic: usize) -> u64 {
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        self.cfg_read(nic, 0x10, &mut lo);
        self.cfg_read(nic, 0x14, &mut hi);
        (u64::from(u32::from_le_bytes(lo)) & !0xf) | (u64::from(u32::from_le_bytes(hi)) << 32)
    }

    /// An MMIO access at BAR offset `off` of `nic`, as a vCPU exit would route it.
    fn bar_access(&mut self, nic: usize, off: u64, data: &mut [u8], write: bool) {
        let addr = self.bar_base(nic).wrapping_add(off);
        self.window_access(addr, data, write);
    }

    fn window_access(&mut self, addr: u64, data: &mut [u8], write: bool) {
        // Only the BAR window is routed to PCI; elsewhere nothing answers.
        if !(PCI_MMIO32_START..PCI_MMIO32_START + PCI_MMIO32_SIZE).contains(&addr) {
            return;
        }
        let offset = addr - PCI_MMIO32_START;
        if write {
            self.window.write(offset, data);
        } else {
            self.window.read(offset, data);
        }
    }

    /// The NIC whose BAR an MMIO access at `addr` reaches, if any (the bus asks devices
    /// in slot order; the host bridge has no BAR).
    fn decoder(&self, addr: u64) -> Option<usize> {
        if !(PCI_MMIO32_START..PCI_MMIO32_START + PCI_MMIO32_SIZE).contains(&addr) {
            return None;
        }
        let mut order: Vec<usize> = (0..self.nics.len()).collect();
        order.sort_by_key(|&i| self.nics[i].number);
        order.into_iter().find(|&i| {
            let d = self.nics[i].dev.lock().unwrap();
            d.config()
                .active_bars()
                .iter()
                .any(|&(_, base, size)| addr >= base && addr - base < size)
        })
    }

    fn bar_w(&mut self, nic: usize, off: u64, len: usize, value: u64) {
        let mut bytes = value.to_le_bytes();
        self.bar_access(nic, off, &mut bytes[..len], true);
    }

    fn bar_r(&mut self, nic: usize, off: u64, len: usize) -> u64 {
        let mut bytes = [0u8; 8];
        self.bar_access(nic, off, &mut bytes[..len], false);
        u64::from_le_bytes(bytes)
    }

    fn run_workers(&mut self) {
        if self.threaded {
            // Let the threads run a little.
            std::thread::yield_now();
            return;
        }
        for nic in &self.nics {
            let mut slot = nic.worker.lock().unwrap();
            if let Some(worker) = slot.as_mut() {
                worker.process_tx();
                worker.process_rx();
                worker.process_rx_notify();
            }
        }
    }

    /// A driver's bring-up with fuzz-chosen parameters, through ECAM and the BAR.
    fn bring_up(&mut self, nic: usize, input: &mut Input<'_>) -> Option<()> {
        let flags = input.u8()?;
        let features = input.u64()? | VERSION_1;
        // This op resets the device itself (or, through BARs the guest overlapped, the
        // other one): status may start over.
        for n in &mut self.nics {
            n.last_status = 0;
        }
        // Memory space + bus master (+ sometimes INTx disable).
        let command: u16 = 0x6 | if flags & 1 != 0 { 0x400 } else { 0 };
        self.cfg_write(nic, 4, &command.to_le_bytes());
        if flags & 2 != 0 {
            // MSI-X enable.
            let cap = self.nics[nic].msix_cap;
            self.cfg_write(nic, cap + 3, &[0x80]);
            for v in 0..3u64 {
                let entry = 0x4000 + v * 16;
                self.bar_w(nic, entry, 4, 0xfee0_0000);
                self.bar_w(nic, entry + 8, 4, 0x30 + v);
                self.bar_w(nic, entry + 12, 4, 0);
            }
        }
        self.bar_w(nic, common::DEVICE_STATUS, 1, 0);
        self.bar_w(nic, common::DEVICE_STATUS, 1, u64::from(S_ACK | S_DRIVER));
        for select in 0..2u64 {
            self.bar_w(nic, common::DRIVER_FEATURE_SELECT, 4, select);
            self.bar_w(
                nic,
                common::DRIVER_FEATURE,
                4,
                (features >> (32 * select)) & 0xffff_ffff,
            );
        }
        let offered = {
            let d = self.nics[nic].dev.lock().unwrap();
            d.device().features()
        };
        if flags & 4 == 0 {
            // Mostly a well-behaved driver: only offered bits.
            for select in 0..2u64 {
                self.bar_w(nic, common::DRIVER_FEATURE_SELECT, 4, select);
                let f = (features & offered) | VERSION_1;
                self.bar_w(
                    nic,
                    common::DRIVER_FEATURE,
                    4,
                    (f >> (32 * select)) & 0xffff_ffff,
                );
            }
        }
        self.bar_w(
            nic,
            common::DEVICE_STATUS,
            1,
            u64::from(S_ACK | S_DRIVER | S_FEATURES_OK),
        );
        for q in 0..2u64 {
            let size = 1u64 << (input.u8()? % 10);
            let base = u64::from(input.u16()?) * 16;
            let base = if base >= 0x1_0000 {
                base + 0x1_0000
            } else {
                base
            };
            self.bar_w(nic, common::QUEUE_SELECT, 2, q);
            self.bar_w(nic, common::QUEUE_SIZE, 2, size);
            self.bar_w(nic, common::QUEUE_DESC, 8, base);
            self.bar_w(nic, common::QUEUE_DRIVER, 8, base + 16 * size);
            self.bar_w(
                nic,
                common::QUEUE_DEVICE,
                8,
                (base + 18 * size + 6 + 3) & !3,
            );
            self.bar_w(nic, common::QUEUE_MSIX_VECTOR, 2, q + 1);
            self.bar_w(nic, common::QUEUE_ENABLE, 2, 1);
        }
        self.bar_w(nic, common::MSIX_CONFIG, 2, 0);
        self.bar_w(
            nic,
            common::DEVICE_STATUS,
            1,
            u64::from(S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK),
        );
        Some(())
    }

    /// Posts one descriptor chain on queue `q` where the driver placed it, and bumps the
    /// available index.
    fn post(&mut self, nic: usize, input: &mut Input<'_>) -> Option<()> {
        let q = u64::from(input.u8()? & 1);
        let count = usize::from(input.u8()? % 4) + 1;
        self.bar_w(nic, common::QUEUE_SELECT, 2, q);
        let size = self.bar_r(nic, common::QUEUE_SIZE, 2).max(1);
        let desc = self.bar_r(nic, common::QUEUE_DESC, 8);
        let driver = self.bar_r(nic, common::QUEUE_DRIVER, 8);
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(driver.wrapping_add(2)))
            .unwrap_or(0);
        let first = u64::from(idx) % size;
        for i in 0..count as u64 {
            let d = (first + i) % size;
            let addr = u64::from(input.u16()?) * 4;
            let len = u32::from(input.u16()?);
            let mut flags: u16 = if q == 0 { 2 } else { 0 };
            let twist = input.u8()?;
            if twist & 0x8 != 0 {
                // Wrong direction, a stray NEXT or INDIRECT.
                flags ^= u16::from(twist & 0x7);
            }
            let next = if i + 1 < count as u64 {
                flags |= 1;
                ((d + 1) % size) as u16
            } else {
                0
            };
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = self
                .mem
                .write_slice(&raw, GuestAddress(desc.wrapping_add(16 * d)));
        }
        let slot = driver.wrapping_add(4 + 2 * (u64::from(idx) % size));
        let _ = self.mem.write_obj(first as u16, GuestAddress(slot));
        let _ = self
            .mem
            .write_obj(idx.wrapping_add(1), GuestAddress(driver.wrapping_add(2)));
        if input.u8()? & 1 != 0 {
            self.bar_w(nic, 0x3000 + 4 * q, 2, q);
        }
        Some(())
    }

    fn step(&mut self, input: &mut Input<'_>) -> Option<()> {
        let op = input.u8()?;
        let nic = usize::from(op >> 7);
        if debug() {
            let d = self.nics[nic].dev.lock().unwrap();
            eprintln!(
                "op {:#04x} nic {nic} status before {:#x} next {:02x?}",
                op,
                d.status(),
                &input.0[..input.0.len().min(12)]
            );
            drop(d);
            for n in &self.nics {
                eprintln!(
                    "   slot {} bars {:x?}",
                    n.number,
                    n.dev.lock().unwrap().config().active_bars()
                );
            }
        }
        match op & 0xf {
            // ECAM write / read at any register of NIC, bridge or absent device.
            0 | 1 => {
                let target = input.u8()?;
                let reg = usize::from(input.u16()? & 0xfff);
                let len = input.width()?;
                let mut data = input.u64()?.to_le_bytes();
                let number = match target & 3 {
                    0 => 0,
                    3 => target >> 2,
                    t => self.nics[usize::from(t - 1)].number,
                };
                let off = Self::ecam_offset(number, reg) | (u64::from(target >> 7) << 20);
                let off = off % ECAM_SIZE;
                if op & 0xf == 0 {
                    self.ecam.write(off, &data[..len]);
                } else {
                    self.ecam.read(off, &mut data[..len]);
                }
            }
            // BAR access at a structure-biased offset.
            2 | 3 => {
                let region = [0u64, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x0, 0x7ff8];
                let r = input.u8()?;
                let off = region[usize::from(r & 7)]
                    + u64::from(input.u8()?) % 0x40
                    + if r & 0x80 != 0 {
                        u64::from(input.u16()?)
                    } else {
                        0
                    };
                let len = input.width()?;
                let mut data = input.u64()?.to_le_bytes();
                let addr = self.bar_base(nic).wrapping_add(off);
                let reaches = self.decoder(addr) == Some(nic);
                self.bar_access(nic, off, &mut data[..len], op & 0xf == 2);
                if op & 0xf == 3 && off == 0x1000 && reaches {
                    assert_eq!(data[0] & !3, 0, "ISR bits beyond queue/config");
                }
            }
            // Raw access anywhere in the BAR window.
            4 | 5 => {
                let addr = PCI_MMIO32_START + u64::from(input.u32()?) % PCI_MMIO32_SIZE;
                let len = input.width()?;
                let mut data = input.u64()?.to_le_bytes();
                self.window_access(addr, &mut data[..len], op & 0xf == 4);
            }
            // CF8/CFC.
            6 => {
                let port = u64::from(input.u8()? & 7);
                let len = input.width()?.min(4);
                let mut data = input.u32()?.to_le_bytes();
                if input.u8()? & 1 == 0 {
                    self.cfgio.write(port, &data[..len]);
                } else {
                    self.cfgio.read(port, &mut data[..len]);
                }
            }
            // Guest memory write.
            7 => {
                let addr = u64::from(input.u32()?) % 0x3_0000;
                let len = usize::from(input.u8()?);
                let bytes = input.bytes(len).to_vec();
                let _ = self.mem.write_slice(&bytes, GuestAddress(addr));
            }
            8 => self.bring_up(nic, input)?,
            9 => self.post(nic, input)?,
            10 => self.run_workers(),
            // A host frame for the NIC.
            11 => {
                let len = usize::from(input.u16()?) % 2048;
                let big = input.u8()?;
                let mut frame = input.bytes(len).to_vec();
                if big & 0x80 != 0 {
                    frame.resize(usize::from(big & 0x7f) * 1024, 0xab);
                }
                let n = &self.nics[nic];
                let mut rx = n.rx.lock().unwrap();
                if rx.len() < 64 {
                    rx.push_back(frame);
                    let _ = n.fd.write(1);
                }
            }
            // Status write through the BAR (reset, partial bits, junk).
            12 => {
                let value = input.u8()?;
                self.bar_w(nic, common::DEVICE_STATUS, 1, u64::from(value));
            }
            // Command register: bus master / memory / INTx toggles.
            13 => {
                let v = input.u16()?;
                self.cfg_write(nic, 4, &v.to_le_bytes());
            }
            // Move BAR 0 (64-bit): low and high halves, sizing writes included.
            14 => {
                let lo = input.u32()?;
                let hi = if input.u8()? & 1 != 0 { 0xffff_ffff } else { 0 };
                self.cfg_write(nic, 0x10, &lo.to_le_bytes());
                self.cfg_write(nic, 0x14, &u32::to_le_bytes(hi));
            }
            // pci_cfg window: select bar/offset/length, then read or write the data.
            _ => {
                let cap = {
                    let d = self.nics[nic].dev.lock().unwrap();
                    let b = d.config().bytes();
                    (0x40..252)
                        .step_by(4)
                        .find(|&o| b[o] == 0x09 && b[o + 3] == 5)
                        .unwrap_or(0x40)
                };
                let bar = input.u8()? & 1;
                let off = u32::from(input.u16()?);
                let len = [1u32, 2, 4, 3][usize::from(input.u8()? & 3)];
                self.cfg_write(nic, cap + 4, &[bar]);
                self.cfg_write(nic, cap + 8, &off.to_le_bytes());
                self.cfg_write(nic, cap + 12, &len.to_le_bytes());
                let mut data = input.u32()?.to_le_bytes();
                if input.u8()? & 1 == 0 {
                    self.cfg_write(nic, cap + 16, &data);
                } else {
                    self.cfg_read(nic, cap + 16, &mut data);
                }
            }
        }
        Some(())
    }

    fn check(&mut self) {
        for i in 0..self.nics.len() {
            let (status, active, offered, acked) = {
                let d = self.nics[i].dev.lock().unwrap();
                (
                    d.status(),
                    d.is_active(),
                    d.device().features(),
                    d.device().acked_features(),
                )
            };
            let known = S_ACK | S_DRIVER | S_DRIVER_OK | S_FEATURES_OK | S_NEEDS_RESET | S_FAILED;
            assert_eq!(status & !known, 0, "unknown status bits {status:#x}");
            assert_eq!(
                acked & !offered,
                0,
                "acked {acked:#x} beyond offered {offered:#x}"
            );
            if active {
                assert_eq!(
                    status & (S_DRIVER_OK | S_FEATURES_OK),
                    S_DRIVER_OK | S_FEATURES_OK,
                    "active without DRIVER_OK|FEATURES_OK: {status:#x}"
                );
                assert_ne!(acked & VERSION_1, 0, "active without VERSION_1");
            }
            let last = self.nics[i].last_status;
            if status != 0 {
                let lost = last & !status & !S_DRIVER_OK;
                assert_eq!(
                    lost, 0,
                    "status lost bits {lost:#x} without a reset: {last:#x} -> {status:#x}"
                );
            }
            self.nics[i].last_status = status;
            // Registers read back as the spec allows (read straight from the device: the
            // guest may have moved or disabled the BAR).
            let d = &mut *self.nics[i].dev.lock().unwrap();
            let r = |d: &mut VirtioPciDevice, off: u64, len: usize| {
                let mut b = [0u8; 8];
                d.bar_read(0, off, &mut b[..len]);
                u64::from_le_bytes(b)
            };
            let size = r(d, common::QUEUE_SIZE, 2);
            assert!(
                size == 0 || (size.is_power_of_two() && size <= 256),
                "queue size {size}"
            );
            for reg in [common::MSIX_CONFIG, common::QUEUE_MSIX_VECTOR] {
                let v = r(d, reg, 2);
                assert!(v < 3 || v == 0xffff, "vector {v:#x} at {reg:#x}");
            }
            assert_eq!(r(d, common::NUM_QUEUES, 2), 2);
        }
    }
}

fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("VIRTIO_PCI_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(mode) = input.u8() else { return };
    let mut machine = Machine::new(mode & 1 != 0);
    let mut steps = 0;
    while steps < 512 && machine.step(&mut input).is_some() {
        machine.check();
        steps += 1;
    }
    machine.run_workers();
    machine.check();
    if debug() {
        for nic in &machine.nics {
            let d = nic.dev.lock().unwrap();
            eprintln!(
                "nic {}: status {:#x} active {} acked {:#x} steps {steps}",
                nic.number,
                d.status(),
                d.is_active(),
                d.device().acked_features()
            );
        }
    }
});
