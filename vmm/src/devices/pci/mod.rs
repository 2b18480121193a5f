//! PCI: a single bus 0 behind a host bridge, reachable through the legacy CF8/CFC ports and
//! through ECAM (advertised by the ACPI MCFG), with memory BARs in the 32-bit MMIO window.
//!
//! Devices implement [`PciDevice`]. The bus owns BAR allocation and routes MMIO accesses to
//! the device whose BAR (as the guest last programmed it) contains the address, and keeps
//! each device's ioeventfds registered at its BAR's current address.

pub mod config;
pub mod host_bridge;
pub mod intx;
pub mod msix;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::{WarnLatch, guest_warn};
use crate::kvm::KvmError;
pub use config::{BarKind, PciConfig, PciIds};
pub use host_bridge::HostBridge;
pub use intx::{IntxLine, IntxRouter};
pub use msix::{MsiRouter, Msix, MsixLayout};

/// Devices per bus.
pub const MAX_DEVICES: u8 = 32;

/// A PCI function as the bus sees it. Only function 0 of each device is used.
///
/// The defaults give plain configuration-space semantics and BARs that read as zero;
/// a device overrides what it needs (a virtio-pci device: `bar_read`/`bar_write` for its
/// register block and MSI-X table, `config_written` to follow MSI-X enable, and
/// `ioeventfds` for its queue notify addresses).
pub trait PciDevice: Send {
    /// The configuration space.
    fn config(&self) -> &PciConfig;
    /// The configuration space, mutably.
    fn config_mut(&mut self) -> &mut PciConfig;

    /// Guest configuration read at `offset` (0..4096; beyond 256 reads zero).
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }

    /// Guest configuration write; the default applies it and calls [`Self::config_written`].
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data);
        self.config_written(offset, data);
    }

    /// Hook after a configuration write has been applied (e.g. `Msix::config_written`).
    fn config_written(&mut self, _offset: usize, _data: &[u8]) {}

    /// Guest read of `data.len()` bytes at `offset` inside BAR `bar`.
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    /// Guest write inside BAR `bar`.
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}

    /// Wires the function's interrupt pin to `gsi` (called once by [`PciBus::add_device`]
    /// for a function whose Interrupt Pin register is non-zero). The default ignores it.
    fn connect_intx(&mut self, _gsi: u32) -> Result<(), intx::IntxError> {
        Ok(())
    }

    /// Addresses inside this device's BARs whose writes should signal an eventfd in the
    /// kernel instead of exiting to the VMM (virtio queue notifications).
    fn ioeventfds(&self) -> Vec<IoEventSpec> {
        Vec::new()
    }

    /// The VM has ended: stops whatever the device runs on its own (a virtio device's
    /// worker), keeping its host resources (taps) until it is dropped.
    fn stop(&mut self) {}
}

/// Everything a device's interrupts need: MSI routes and level-triggered INTx irqfds
/// (KVM's [`crate::kvm::IrqRouting`] is both).
pub trait InterruptRouter: MsiRouter + IntxRouter {}

impl<T: MsiRouter + IntxRouter + ?Sized> InterruptRouter for T {}

/// A device that can be shared between the bus and its owner.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// One ioeventfd a device wants at `BAR bar + offset`.
#[derive(Debug)]
pub struct IoEventSpec {
    /// The BAR.
    pub bar: usize,
    /// Offset in the BAR.
    pub offset: u64,
    /// The eventfd (a clone; the device keeps its own).
    pub fd: EventFd,
    /// Only writes of this 32-bit value signal (e.g. the virtio queue index).
    pub datamatch: Option<u32>,
}

/// Registers ioeventfds with the hypervisor (KVM_IOEVENTFD); tests may fake it.
pub trait IoEventRegistrar: Send + Sync + std::fmt::Debug {
    /// Starts signalling `fd` on MMIO writes to `addr`.
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> Result<(), KvmError>;
    /// Stops it.
    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> Result<(), KvmError>;
}

/// Errors adding devices.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// All 32 device numbers are taken.
    #[error("PCI bus 0 is full ({MAX_DEVICES} devices)")]
    BusFull,
    /// The BAR window is exhausted.
    #[error("no room for a {size:#x}-byte BAR in the PCI MMIO window")]
    NoBarSpace {
        /// Requested size.
        size: u64,
    },
    /// Wiring the device's INTx pin failed.
    #[error("cannot wire the INTx pin of PCI device {device:02x}")]
    Intx {
        /// Device number.
        device: u8,
        /// Why.
        #[source]
        source: intx::IntxError,
    },
    /// Registering an ioeventfd failed.
    #[error("cannot register the ioeventfd at {addr:#x}")]
    IoEvent {
        /// Address.
        addr: u64,
        /// Why.
        #[source]
        source: KvmError,
    },
}

/// Bus/device/function address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddress {
    /// Bus (always 0).
    pub bus: u8,
    /// Device 0..32.
    pub device: u8,
    /// Function 0..8.
    pub function: u8,
}

impl std::fmt::Display for PciAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.device, self.function
        )
    }
}

struct Slot {
    device: SharedPciDevice,
    /// ioeventfds currently registered: (address, spec).
    ioevents: Vec<(u64, IoEventSpec)>,
}

/// Bus 0: the host bridge at 00.0 plus added devices.
pub struct PciBus {
    slots: BTreeMap<u8, Slot>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    next_bar_addr: u64,
    /// Devices (by number) whose ioeventfds could not follow their BARs, told of once
    /// at warn: a guest overlapping two BARs may keep rewriting them.
    ioevents_warned: WarnLatch,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("devices", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock(device: &SharedPciDevice) -> MutexGuard<'_, dyn PciDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

impl PciBus {
    /// A bus holding only the host bridge. `ioevents` registers device ioeventfds.
    pub fn new(ioevents: Option<Arc<dyn IoEventRegistrar>>) -> PciBus {
        let mut bus = PciBus {
            slots: BTreeMap::new(),
            ioevents,
            next_bar_addr: layout::PCI_MMIO32_START,
            ioevents_warned: WarnLatch::default(),
        };
        bus.slots.insert(
            0,
            Slot {
                device: Arc::new(Mutex::new(HostBridge::new())),
                ioevents: Vec::new(),
            },
        );
        bus
    }

    /// Stops every device's own work ([`PciDevice::stop`]).
    pub fn stop_devices(&self) {
        for slot in self.slots.values() {
            lock(&slot.device).stop();
        }
    }

    /// Adds `device` at the next free device number, assigns its BARs in the MMIO window
    /// (naturally aligned), enables memory decoding and wires its interrupt pin to the
    /// GSI [`intx::gsi_for`] gives (recorded in Interrupt Line), as firmware would.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<PciAddress, PciError> {
        let number = (1..MAX_DEVICES)
            .find(|n| !self.slots.contains_key(n))
            .ok_or(PciError::BusFull)?;
        {
            let mut dev = lock(&device);
            let window_end = layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
            let mut next = self.next_bar_addr;
            for index in 0..config::NUM_BARS {
                let Some(info) = dev.config().bar(index) else {
                    continue;
                };
                let addr = next.next_multiple_of(info.size);
                if addr + info.size > window_end {
                    return Err(PciError::NoBarSpace { size: info.size });
                }
                dev.config_mut().set_bar_address(index, addr);
                next = addr + info.size;
            }
            let pin = dev.config().interrupt_pin();
            if intx::PINS.contains(&pin) {
                let gsi = intx::gsi_for(number, pin);
                dev.config_mut().set_interrupt_line(gsi as u8);
                dev.connect_intx(gsi).map_err(|source| PciError::Intx {
                    device: number,
                    source,
                })?;
            }
            self.next_bar_addr = next;
            let command = dev.config().read_u16(config::COMMAND) | config::COMMAND_MEMORY_SPACE;
            dev.config_mut()
                .write(config::COMMAND, &command.to_le_bytes());
        }
        self.slots.insert(
            number,
            Slot {
                device,
                ioevents: Vec::new(),
            },
        );
        self.sync_ioevents(number)?;
        Ok(PciAddress {
            bus: 0,
            device: number,
            function: 0,
        })
    }

    /// (Re)registers the ioeventfds of device `number` at its BARs' current addresses.
    fn sync_ioevents(&mut self, number: u8) -> Result<(), PciError> {
        let Some(registrar) = self.ioevents.clone() else {
            return Ok(());
        };
        let Some(slot) = self.slots.get_mut(&number) else {
            return Ok(());
        };
        let (wanted, bars) = {
            let dev = lock(&slot.device);
            (dev.ioeventfds(), dev.config().active_bars())
        };
        let mut target: Vec<(u64, IoEventSpec)> = Vec::new();
        for spec in wanted {
            if let Some(&(_, base, _)) = bars.iter().find(|(i, _, _)| *i == spec.bar) {
                target.push((base + spec.offset, spec));
            }
        }
        let unchanged = target.len() == slot.ioevents.len()
            && target.iter().zip(&slot.ioevents).all(|(a, b)| a.0 == b.0);
        if unchanged {
            return Ok(());
        }
        for (addr, spec) in slot.ioevents.drain(..) {
            if let Err(error) = registrar.unregister(&spec.fd, addr, spec.datamatch) {
                tracing::warn!(addr, %error, "cannot unregister ioeventfd");
            }
        }
        for (addr, spec) in target {
            registrar
                .register(&spec.fd, addr, spec.datamatch)
                .map_err(|source| PciError::IoEvent { addr, source })?;
            slot.ioevents.push((addr, spec));
        }
        Ok(())
    }

    fn device(&self, bus: u8, device: u8, function: u8) -> Option<&SharedPciDevice> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(&device).map(|s| &s.device)
    }

    /// Configuration read; absent functions read as all ones.
    pub fn config_read(&self, addr: PciAddress, offset: usize, data: &mut [u8]) {
        match self.device(addr.bus, addr.device, addr.function) {
            Some(dev) => lock(dev).config_read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write; absent functions ignore it.
    pub fn config_write(&mut self, addr: PciAddress, offset: usize, data: &[u8]) {
        let Some(dev) = self.device(addr.bus, addr.device, addr.function) else {
            return;
        };
        lock(dev).config_write(offset, data);
        // A BAR or the command register may have changed: move the ioeventfds along.
        let touches_bars =
            offset < config::BAR0 + 4 * config::NUM_BARS && offset + data.len() > config::COMMAND;
        if touches_bars && let Err(error) = self.sync_ioevents(addr.device) {
            guest_warn!(
                self.ioevents_warned,
                u32::from(addr.device),
                device = %addr,
                %error,
                "cannot move ioeventfds (overlapping BARs?); notifications take the slow path"
            );
        }
    }

    /// Dispatches an MMIO access at `addr` to the BAR containing it.
    fn bar_access(
        &self,
        addr: u64,
        mut access: impl FnMut(&mut dyn PciDevice, usize, u64),
    ) -> bool {
        for slot in self.slots.values() {
            let mut dev = lock(&slot.device);
            let hit = dev
                .config()
                .active_bars()
                .into_iter()
                .find(|&(_, base, size)| addr >= base && addr - base < size);
            if let Some((bar, base, _)) = hit {
                access(&mut *dev, bar, addr - base);
                return true;
            }
        }
        false
    }
}

/// Locks the shared bus, recovering from poisoning.
fn lock_bus(bus: &Mutex<PciBus>) -> MutexGuard<'_, PciBus> {
    bus.lock().unwrap_or_else(|p| p.into_inner())
}

/// CONFIG_ADDRESS (0xcf8) / CONFIG_DATA (0xcfc..0xcff), "configuration mechanism #1".
#[derive(Debug)]
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

/// CONFIG_ADDRESS enable bit.
const CONFIG_ENABLE: u32 = 1 << 31;

impl PciConfigIo {
    /// Ports 0xcf8..0xd00 of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> PciConfigIo {
        PciConfigIo { bus, address: 0 }
    }

    /// The function and register CONFIG_ADDRESS selects, if enabled.
    fn selected(&self) -> Option<(PciAddress, usize)> {
        if self.address & CONFIG_ENABLE == 0 {
            return None;
        }
        let addr = PciAddress {
            bus: (self.address >> 16) as u8,
            device: ((self.address >> 11) & 0x1f) as u8,
            function: ((self.address >> 8) & 0x7) as u8,
        };
        Some((addr, (self.address & 0xfc) as usize))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let bytes = self.address.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(offset as usize + i).copied().unwrap_or(0xff);
                }
            }
            4..=7 => match self.selected() {
                Some((addr, reg)) => {
                    lock_bus(&self.bus).config_read(addr, reg + (offset as usize - 4), data)
                }
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            4..=7 => {
                if let Some((addr, reg)) = self.selected() {
                    lock_bus(&self.bus).config_write(addr, reg + (offset as usize - 4), data);
                }
            }
            _ => {}
        }
    }
}

/// ECAM: configuration space memory-mapped at [`layout::PCI_ECAM_START`].
#[derive(Debug)]
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    /// The ECAM window of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> PciConfigMmio {
        PciConfigMmio { bus }
    }

    fn decode(offset: u64) -> (PciAddress, usize) {
        (
            PciAddress {
                bus: (offset >> 20) as u8,
                device: ((offset >> 15) & 0x1f) as u8,
                function: ((offset >> 12) & 0x7) as u8,
            },
            (offset & 0xfff) as usize,
        )
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (addr, reg) = Self::decode(offset);
        lock_bus(&self.bus).config_read(addr, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (addr, reg) = Self::decode(offset);
        lock_bus(&self.bus).config_write(addr, reg, data);
    }
}

/// The BAR window: MMIO in [`layout::PCI_MMIO32_START`]..+SIZE, routed to device BARs.
#[derive(Debug)]
pub struct PciBarWindow {
    bus: Arc<Mutex<PciBus>>,
}

impl PciBarWindow {
    /// The BAR window of `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> PciBarWindow {
        PciBarWindow { bus }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let addr = layout::PCI_MMIO32_START + offset;
        let hit =
            lock_bus(&self.bus).bar_access(addr, |dev, bar, off| dev.bar_read(bar, off, data));
        if !hit {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let addr = layout::PCI_MMIO32_START + offset;
        lock_bus(&self.bus).bar_access(addr, |dev, bar, off| dev.bar_write(bar, off, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with one 4 KiB BAR whose bytes echo their offset, and one ioeventfd.
    #[derive(Debug)]
    struct Probe {
        config: PciConfig,
        notify: EventFd,
        written: Vec<(usize, u64, Vec<u8>)>,
        /// GSIs `connect_intx` was called with.
        intx: Vec<u32>,
    }

    impl Probe {
        fn new() -> Probe {
            let mut config = PciConfig::new(PciIds {
                vendor: 0x1af4,
                device: 0x1041,
                class: 0x02,
                ..Default::default()
            });
            config.add_bar(0, 0x4000, BarKind::Memory64).expect("bar");
            Probe {
                config,
                notify: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
                written: Vec::new(),
                intx: Vec::new(),
            }
        }

        fn with_pin(pin: u8) -> Probe {
            let mut probe = Probe::new();
            probe.config.set_interrupt_pin(pin);
            probe
        }
    }

    impl PciDevice for Probe {
        fn config(&self) -> &PciConfig {
            &self.config
        }
        fn config_mut(&mut self) -> &mut PciConfig {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.written.push((bar, offset, data.to_vec()));
        }
        fn connect_intx(&mut self, gsi: u32) -> Result<(), intx::IntxError> {
            self.intx.push(gsi);
            Ok(())
        }
        fn ioeventfds(&self) -> Vec<IoEventSpec> {
            vec![IoEventSpec {
                bar: 0,
                offset: 0x3000,
                fd: self.notify.try_clone().expect("clone"),
                datamatch: Some(1),
            }]
        }
    }

    #[derive(Debug, Default)]
    struct FakeIoEvents(Mutex<Vec<(bool, u64, Option<u32>)>>);

    impl IoEventRegistrar for FakeIoEvents {
        fn register(&self, _fd: &EventFd, addr: u64, dm: Option<u32>) -> Result<(), KvmError> {
            self.0.lock().expect("lock").push((true, addr, dm));
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, addr: u64, dm: Option<u32>) -> Result<(), KvmError> {
            self.0.lock().expect("lock").push((false, addr, dm));
            Ok(())
        }
    }

    /// A registrar that, once told to, refuses every ioeventfd, as KVM refuses a second
    /// one on an address already taken (two BARs placed on top of each other).
    #[derive(Debug, Default)]
    struct RefusingIoEvents(std::sync::atomic::AtomicBool);

    impl IoEventRegistrar for RefusingIoEvents {
        fn register(&self, _fd: &EventFd, _addr: u64, _dm: Option<u32>) -> Result<(), KvmError> {
            if self.0.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(KvmError::MissingCap("KVM_IOEVENTFD (refused in this test)"));
            }
            Ok(())
        }
        fn unregister(&self, _fd: &EventFd, _addr: u64, _dm: Option<u32>) -> Result<(), KvmError> {
            Ok(())
        }
    }

    #[test]
    fn ioeventfds_that_cannot_follow_a_bar_are_logged_once() {
        let events = Arc::new(RefusingIoEvents::default());
        let bus = Arc::new(Mutex::new(PciBus::new(Some(events.clone()))));
        lock_bus(&bus)
            .add_device(Arc::new(Mutex::new(Probe::new())))
            .expect("add");
        events.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut ecam = PciConfigMmio::new(bus.clone());
        let text = crate::testing::warnings_logged(|| {
            for round in 0..100u32 {
                let base = layout::PCI_MMIO32_START as u32 + (round % 2) * 0x10_0000;
                ecam.write((1 << 15) | 0x10, &base.to_le_bytes());
            }
        });
        let warnings = text
            .lines()
            .filter(|line| line.contains("cannot move ioeventfds"))
            .count();
        assert_eq!(warnings, 1, "{text}");
    }

    fn cf8(io: &mut PciConfigIo, dev: u8, reg: u32) {
        let addr = CONFIG_ENABLE | (u32::from(dev) << 11) | reg;
        io.write(0, &addr.to_le_bytes());
    }

    fn cfc_read(io: &mut PciConfigIo, dev: u8, reg: u32) -> u32 {
        cf8(io, dev, reg);
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn cf8_cfc_sees_host_bridge_and_nothing_else() {
        let bus = Arc::new(Mutex::new(PciBus::new(None)));
        let mut io = PciConfigIo::new(bus);
        assert_eq!(cfc_read(&mut io, 0, 0), 0x0008_1b36);
        assert_eq!(cfc_read(&mut io, 0, 8) >> 16, 0x0600, "class: host bridge");
        assert_eq!(cfc_read(&mut io, 1, 0), 0xffff_ffff);
        // Byte access through CFE reads the upper half of the dword.
        cf8(&mut io, 0, 0);
        let mut w = [0u8; 2];
        io.read(6, &mut w);
        assert_eq!(u16::from_le_bytes(w), 0x0008);
        // CONFIG_ADDRESS reads back.
        let mut a = [0u8; 4];
        io.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), CONFIG_ENABLE);
    }

    #[test]
    fn added_device_gets_aligned_bar_and_ecam_access() {
        let events = Arc::new(FakeIoEvents::default());
        let bus = Arc::new(Mutex::new(PciBus::new(Some(events.clone()))));
        let probe = Arc::new(Mutex::new(Probe::new()));
        let addr = lock_bus(&bus).add_device(probe.clone()).expect("add");
        assert_eq!(addr.to_string(), "0000:00:01.0");
        let mut ecam = PciConfigMmio::new(bus.clone());
        let mut d = [0u8; 4];
        ecam.read(1 << 15, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1041_1af4);
        ecam.read((1 << 15) | 0x10, &mut d);
        let bar = u32::from_le_bytes(d);
        assert_eq!(bar, layout::PCI_MMIO32_START as u32 | 0b100);
        assert_eq!(
            events.0.lock().expect("lock").as_slice(),
            &[(true, layout::PCI_MMIO32_START + 0x3000, Some(1))]
        );

        let mut window = PciBarWindow::new(bus.clone());
        let mut r = [0u8; 2];
        window.read(0x10, &mut r);
        assert_eq!(r, [0x10, 0x11]);
        window.write(0x20, &[7]);
        assert_eq!(
            probe.lock().expect("lock").written,
            vec![(0, 0x20, vec![7])]
        );

        // The guest moves the BAR: the ioeventfd follows.
        let new_base = layout::PCI_MMIO32_START + 0x10_0000;
        ecam.write((1 << 15) | 0x10, &(new_base as u32).to_le_bytes());
        assert_eq!(
            events.0.lock().expect("lock").last().copied(),
            Some((true, new_base + 0x3000, Some(1)))
        );
        window.read(0x10, &mut r);
        assert_eq!(r, [0xff, 0xff], "old address no longer decodes");
        window.read(0x10_0010, &mut r);
        assert_eq!(r, [0x10, 0x11]);
    }

    #[test]
    fn functions_with_a_pin_get_their_swizzled_gsi_as_interrupt_line() {
        let bus = Arc::new(Mutex::new(PciBus::new(None)));
        let no_pin = Arc::new(Mutex::new(Probe::new()));
        let inta = Arc::new(Mutex::new(Probe::with_pin(intx::PIN_INTA)));
        let intb = Arc::new(Mutex::new(Probe::with_pin(2)));
        for dev in [&no_pin, &inta, &intb] {
            let dev: SharedPciDevice = dev.clone();
            lock_bus(&bus).add_device(dev).expect("add");
        }
        let wired = |p: &Arc<Mutex<Probe>>| {
            let p = p.lock().expect("lock");
            (p.intx.clone(), p.config.bytes()[config::INTERRUPT_LINE])
        };
        assert_eq!(wired(&no_pin), (vec![], 0), "no pin, no line");
        // Slot 2 INTA# and slot 3 INTB#: 16 + (slot + pin - 1) % 8.
        assert_eq!(wired(&inta), (vec![18], 18));
        assert_eq!(wired(&intb), (vec![20], 20));
        let mut io = PciConfigIo::new(bus);
        assert_eq!(
            cfc_read(&mut io, 3, 0x3c) & 0xffff,
            0x0214,
            "pin INTB#, line 20"
        );
    }

    #[test]
    fn disabling_memory_space_stops_bar_decoding() {
        let bus = Arc::new(Mutex::new(PciBus::new(None)));
        lock_bus(&bus)
            .add_device(Arc::new(Mutex::new(Probe::new())))
            .expect("add");
        let mut io = PciConfigIo::new(bus.clone());
        cf8(&mut io, 1, 4);
        io.write(4, &0u16.to_le_bytes());
        let mut window = PciBarWindow::new(bus);
        let mut r = [0u8; 1];
        window.read(0x10, &mut r);
        assert_eq!(r, [0xff]);
    }
}
