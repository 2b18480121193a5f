//! The virtio-pci modern transport (virtio 1.x, section 4.1): a [`PciDevice`] that
//! exposes any [`VirtioDevice`] to the guest.
//!
//! Everything lives in one 64-bit memory BAR (0): the common configuration at
//! [`COMMON_CFG_OFFSET`], the ISR byte at [`ISR_CFG_OFFSET`], the device configuration at
//! [`DEVICE_CFG_OFFSET`], one 4-byte notify register per queue from [`NOTIFY_OFFSET`]
//! (each served by an ioeventfd), and the MSI-X table and PBA. Vendor-specific
//! capabilities point the driver at each structure.
//!
//! Interrupts: while the driver has MSI-X enabled, each queue and the configuration
//! change raise the vector the driver assigned (none for `NO_VECTOR`: PCI forbids a
//! function with MSI-X enabled from using its INTx pin, and Linux registers no INTx
//! handler then). With MSI-X disabled the device uses its INTA# pin, level-triggered:
//! asserted while the ISR byte is non-zero (reading the ISR clears it) and not masked by
//! the command register's Interrupt Disable bit (see [`crate::devices::pci::intx`]).
//! Firmware without BAR mappings can reach every structure through the
//! `VIRTIO_PCI_CAP_PCI_CFG` window in configuration space.

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{InterruptKind, VirtioDevice, VirtioInterrupt, WarnLatch, guest_warn};
use crate::devices::pci::config::{BarKind, CAP_ID_VENDOR, ConfigError, PciConfig, PciIds};
use crate::devices::pci::intx::{self, IntxError, IntxLine, IntxRouter, LevelSource};
use crate::devices::pci::msix::{MsiRouter, Msix, MsixError, MsixLayout};
use crate::devices::pci::{InterruptRouter, IoEventSpec, PciDevice};

/// Red Hat's virtio vendor id.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device ids are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// "No MSI-X vector" in `msix_config` / `queue_msix_vector`.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// `cfg_type` of the common configuration capability.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification capability.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR capability.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device configuration capability.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of the configuration-space access window.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;

/// The BAR holding every structure.
pub const BAR_INDEX: usize = 0;
/// Its size.
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration (`struct virtio_pci_common_cfg`).
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration this transport implements.
pub const COMMON_CFG_LEN: u64 = 0x38;
/// The ISR status byte.
pub const ISR_CFG_OFFSET: u64 = 0x1000;
/// Device-specific configuration.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Size of the device configuration window.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Queue notify registers: queue `n` at `NOTIFY_OFFSET + n * NOTIFY_OFF_MULTIPLIER`.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify registers.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X pending bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;

/// ISR bit: a queue interrupt.
pub const ISR_QUEUE: u8 = 1;
/// ISR bit: a configuration change.
pub const ISR_CONFIG: u8 = 2;

/// Queues the notify window has room for.
const MAX_QUEUES: usize =
    ((MSIX_TABLE_OFFSET - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER as u64) as usize;

/// Common configuration register offsets (`struct virtio_pci_common_cfg`).
pub mod common {
    /// le32, rw.
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    /// le32, ro.
    pub const DEVICE_FEATURE: u64 = 0x04;
    /// le32, rw.
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    /// le32, rw.
    pub const DRIVER_FEATURE: u64 = 0x0c;
    /// le16, rw.
    pub const MSIX_CONFIG: u64 = 0x10;
    /// le16, ro.
    pub const NUM_QUEUES: u64 = 0x12;
    /// u8, rw.
    pub const DEVICE_STATUS: u64 = 0x14;
    /// u8, ro.
    pub const CONFIG_GENERATION: u64 = 0x15;
    /// le16, rw.
    pub const QUEUE_SELECT: u64 = 0x16;
    /// le16, rw.
    pub const QUEUE_SIZE: u64 = 0x18;
    /// le16, rw.
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    /// le16, rw.
    pub const QUEUE_ENABLE: u64 = 0x1c;
    /// le16, ro.
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    /// le64, rw.
    pub const QUEUE_DESC: u64 = 0x20;
    /// le64, rw.
    pub const QUEUE_DRIVER: u64 = 0x28;
    /// le64, rw.
    pub const QUEUE_DEVICE: u64 = 0x30;

    /// `(offset, width)` of every register, in order.
    pub(super) const FIELDS: [(u64, u64); 16] = [
        (DEVICE_FEATURE_SELECT, 4),
        (DEVICE_FEATURE, 4),
        (DRIVER_FEATURE_SELECT, 4),
        (DRIVER_FEATURE, 4),
        (MSIX_CONFIG, 2),
        (NUM_QUEUES, 2),
        (DEVICE_STATUS, 1),
        (CONFIG_GENERATION, 1),
        (QUEUE_SELECT, 2),
        (QUEUE_SIZE, 2),
        (QUEUE_MSIX_VECTOR, 2),
        (QUEUE_ENABLE, 2),
        (QUEUE_NOTIFY_OFF, 2),
        (QUEUE_DESC, 8),
        (QUEUE_DRIVER, 8),
        (QUEUE_DEVICE, 8),
    ];
}

/// Errors building a virtio-pci device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has no queues or more than the notify window holds.
    #[error("virtio device type {device_type} has {count} queues (1..={MAX_QUEUES} supported)")]
    QueueCount {
        /// The virtio device type.
        device_type: u32,
        /// Its queue count.
        count: usize,
    },
    /// The device type does not fit a modern PCI device id.
    #[error("virtio device type {0} has no modern PCI device id")]
    DeviceType(u32),
    /// Configuration space layout.
    #[error("cannot lay out the virtio-pci configuration space")]
    Config(#[source] ConfigError),
    /// MSI-X setup.
    #[error("cannot set up MSI-X for the virtio-pci device")]
    Msix(#[source] MsixError),
    /// A queue notification eventfd.
    #[error("cannot create the notification eventfd of queue {queue}")]
    EventFd {
        /// Queue index.
        queue: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The driver-programmed state of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct QueueRegs {
    max_size: u16,
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

impl QueueRegs {
    fn new(max_size: u16) -> QueueRegs {
        QueueRegs {
            max_size,
            size: max_size,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// MSI-X vectors the driver assigned, shared with the interrupt side.
#[derive(Debug)]
struct Vectors {
    config: AtomicU16,
    queues: Vec<AtomicU16>,
}

impl Vectors {
    fn reset(&self) {
        self.config.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        for q in &self.queues {
            q.store(VIRTIO_MSI_NO_VECTOR, Ordering::SeqCst);
        }
    }
}

fn lock_msix(msix: &Mutex<Msix>) -> MutexGuard<'_, Msix> {
    msix.lock().unwrap_or_else(|p| p.into_inner())
}

/// The [`VirtioInterrupt`] a virtio-pci device hands its device: sets the ISR bit, then
/// triggers the MSI-X vector the driver chose (respecting masks) or, with MSI-X
/// disabled, asserts the INTx pin.
#[derive(Debug)]
pub struct VirtioPciInterrupt {
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    intx: Arc<OnceLock<IntxLine>>,
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        let (vector, isr) = match kind {
            InterruptKind::Config => (self.vectors.config.load(Ordering::SeqCst), ISR_CONFIG),
            InterruptKind::Queue(q) => {
                let vector = self
                    .vectors
                    .queues
                    .get(usize::from(q))
                    .ok_or_else(|| io::Error::other(format!("no queue {q}")))?;
                (vector.load(Ordering::SeqCst), ISR_QUEUE)
            }
        };
        let mut msix = lock_msix(&self.msix);
        let mode = interrupt_mode(msix.enabled(), vector);
        // virtio 1.x 4.1.4.5.1: the queue bit is set only when MSI-X is off (a driver
        // using MSI-X never reads it, so it would linger and fire INTx spuriously the
        // day MSI-X is turned off); the config bit is set either way.
        if isr == ISR_CONFIG || mode == InterruptMode::Intx {
            self.isr.fetch_or(isr, Ordering::SeqCst);
        }
        match mode {
            InterruptMode::Msix(vector) => msix.trigger(vector),
            InterruptMode::None => {}
            InterruptMode::Intx => {
                drop(msix);
                if let Some(line) = self.intx.get() {
                    line.update();
                }
            }
        }
        Ok(())
    }
}

/// How one interrupt is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InterruptMode {
    /// Through this MSI-X vector.
    Msix(u16),
    /// Through the INTx pin (MSI-X disabled; the ISR byte says why).
    Intx,
    /// Not at all (MSI-X enabled, the driver chose `VIRTIO_MSI_NO_VECTOR`).
    None,
}

/// The delivery of an interrupt whose driver-chosen vector is `vector`, with MSI-X
/// enabled or not in the capability's Message Control.
fn interrupt_mode(msix_enabled: bool, vector: u16) -> InterruptMode {
    match (msix_enabled, vector) {
        (false, _) => InterruptMode::Intx,
        (true, VIRTIO_MSI_NO_VECTOR) => InterruptMode::None,
        (true, vector) => InterruptMode::Msix(vector),
    }
}

/// A virtio device behind the modern virtio-pci transport.
#[derive(Debug)]
pub struct VirtioPciDevice {
    config: PciConfig,
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    msix: Arc<Mutex<Msix>>,
    vectors: Arc<Vectors>,
    isr: Arc<AtomicU8>,
    /// The INTA# pin, once the bus has wired it.
    intx: Arc<OnceLock<IntxLine>>,
    intx_router: Arc<dyn IntxRouter>,
    notify: Vec<EventFd>,
    queues: Vec<QueueRegs>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    active: bool,
    /// Offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability in configuration space.
    pci_cfg_cap: usize,
    /// Driver errors already logged at warn since the last reset.
    warned: WarnLatch,
    /// A config-change MSI held back while bus mastering is off (an MSI is a memory
    /// write); sent when the driver turns bus mastering on again.
    config_msi_held: bool,
}

/// [`WarnLatch`] bits of the driver errors the transport logs.
mod warn {
    pub const FEATURES_REFUSED: u32 = 0;
    pub const DRIVER_OK_EARLY: u32 = 1;
    pub const NO_BUS_MASTER: u32 = 2;
    pub const INVALID_QUEUE: u32 = 3;
    pub const ACTIVATION_REFUSED: u32 = 4;
    pub const RESET_PENDING: u32 = 5;
}

impl VirtioPciDevice {
    /// Wraps `device`; its queues may use `mem`, its interrupts go through `router`
    /// (MSI-X vectors at once, the INTA# pin when the bus calls `connect_intx`).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Arc<GuestMemoryMmap>,
        router: Arc<dyn InterruptRouter>,
    ) -> Result<VirtioPciDevice, VirtioPciError> {
        let device_type = device.device_type();
        let queue_count = device.queue_max_sizes().len();
        if queue_count == 0 || queue_count > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount {
                device_type,
                count: queue_count,
            });
        }
        let pci_device_id = u16::try_from(device_type)
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType(device_type))?;
        let (class, subclass) = class_of(device_type);
        let mut config = PciConfig::new(PciIds {
            vendor: VIRTIO_PCI_VENDOR_ID,
            device: pci_device_id,
            class,
            subclass,
            prog_if: 0,
            revision: 1,
            // Free for modern devices; repeating the ids is what Cloud Hypervisor does.
            subsystem_vendor: VIRTIO_PCI_VENDOR_ID,
            subsystem: pci_device_id,
        });
        config
            .add_bar(BAR_INDEX, BAR_SIZE, BarKind::Memory64)
            .map_err(VirtioPciError::Config)?;
        config.set_interrupt_pin(intx::PIN_INTA);
        let structures = [
            (VIRTIO_PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_LEN),
            (VIRTIO_PCI_CAP_ISR_CFG, ISR_CFG_OFFSET, 1),
            (VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN),
        ];
        for (cfg_type, offset, len) in structures {
            config
                .add_capability(CAP_ID_VENDOR, &virtio_cap_body(cfg_type, offset, len), &[])
                .map_err(VirtioPciError::Config)?;
        }
        let notify_len = queue_count as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let mut notify_body = virtio_cap_body(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, notify_len);
        notify_body[0] += 4;
        notify_body.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config
            .add_capability(CAP_ID_VENDOR, &notify_body, &[])
            .map_err(VirtioPciError::Config)?;
        // The access window: bar, offset and length select, pci_cfg_data moves the bytes.
        let mut window_body = virtio_cap_body(VIRTIO_PCI_CAP_PCI_CFG, 0, 0);
        window_body[0] += 4;
        window_body.extend_from_slice(&[0; 4]);
        let mut window_writable = [0u8; 18];
        window_writable[2] = 0xff;
        window_writable[6..].fill(0xff);
        let pci_cfg_cap = config
            .add_capability(CAP_ID_VENDOR, &window_body, &window_writable)
            .map_err(VirtioPciError::Config)?;
        // One vector for configuration changes plus one per queue.
        let layout = MsixLayout {
            table_bar: BAR_INDEX as u8,
            table_offset: MSIX_TABLE_OFFSET as u32,
            pba_bar: BAR_INDEX as u8,
            pba_offset: MSIX_PBA_OFFSET as u32,
        };
        let msi_router: Arc<dyn MsiRouter> = router.clone();
        let mut msix =
            Msix::new(queue_count as u16 + 1, layout, msi_router).map_err(VirtioPciError::Msix)?;
        msix.add_capability(&mut config)
            .map_err(VirtioPciError::Msix)?;
        let notify = (0..queue_count)
            .map(|queue| {
                EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
                    .map_err(|source| VirtioPciError::EventFd { queue, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| QueueRegs::new(max))
            .collect();
        let vectors = Arc::new(Vectors {
            config: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queues: (0..queue_count)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
        });
        Ok(VirtioPciDevice {
            config,
            device,
            mem,
            msix: Arc::new(Mutex::new(msix)),
            vectors,
            isr: Arc::new(AtomicU8::new(0)),
            intx: Arc::new(OnceLock::new()),
            intx_router: router,
            notify,
            queues,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
            queue_select: 0,
            active: false,
            config_msi_held: false,
            pci_cfg_cap,
            warned: WarnLatch::default(),
        })
    }

    /// The wrapped device.
    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    /// The device status as the driver reads it. A reset device reads 0 whatever the
    /// device reports (VIRTIO 1.2 4.1.4.3.1): Linux's `vp_reset()` polls for that 0.
    pub fn status(&self) -> u8 {
        let mut status = self.status;
        if status != 0 && self.device.needs_reset() {
            status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        }
        status
    }

    /// Whether the device is running on the driver's queues.
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn interrupt(&self) -> Arc<VirtioPciInterrupt> {
        Arc::new(VirtioPciInterrupt {
            msix: Arc::clone(&self.msix),
            vectors: Arc::clone(&self.vectors),
            isr: Arc::clone(&self.isr),
            intx: Arc::clone(&self.intx),
        })
    }

    /// The INTx pin, once wired.
    #[cfg(test)]
    pub(crate) fn intx(&self) -> Option<&IntxLine> {
        self.intx.get()
    }

    /// INTx may be asserted only with MSI-X disabled and Interrupt Disable clear.
    fn sync_intx_enable(&self, msix_enabled: bool) {
        if let Some(line) = self.intx.get() {
            line.set_enabled(!msix_enabled && !self.config.intx_disabled());
        }
    }

    fn selected_queue(&self) -> Option<&QueueRegs> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Registers can be rewritten only between reset and `DRIVER_OK`.
    fn queue_regs_writable(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK as u8 == 0
    }

    fn read_common_field(&self, offset: u64) -> u64 {
        use common::*;
        let queue = self.selected_queue();
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device.features() & 0xffff_ffff,
                1 => self.device.features() >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            MSIX_CONFIG => self.vectors.config.load(Ordering::SeqCst).into(),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => self.status().into(),
            CONFIG_GENERATION => self.config_generation.into(),
            QUEUE_SELECT => self.queue_select.into(),
            // An absent queue reads size 0: "not available".
            QUEUE_SIZE => queue.map_or(0, |q| q.size.into()),
            QUEUE_MSIX_VECTOR => self
                .vectors
                .queues
                .get(usize::from(self.queue_select))
                .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::SeqCst))
                .into(),
            QUEUE_ENABLE => queue.map_or(0, |q| q.enabled.into()),
            QUEUE_NOTIFY_OFF => queue.map_or(0, |_| self.queue_select.into()),
            QUEUE_DESC => queue.map_or(0, |q| q.desc),
            QUEUE_DRIVER => queue.map_or(0, |q| q.driver),
            QUEUE_DEVICE => queue.map_or(0, |q| q.device),
            _ => 0,
        }
    }

    fn write_common_field(&mut self, offset: u64, value: u64) {
        use common::*;
        let msix_len = lock_msix(&self.msix).len();
        // A vector the device lacks reads back as NO_VECTOR: the driver's check.
        let vector = |v: u64| {
            let v = v as u16;
            if v < msix_len {
                v
            } else {
                VIRTIO_MSI_NO_VECTOR
            }
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE => {
                if self.status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
                    tracing::debug!("virtio-pci: driver features written after FEATURES_OK");
                    return;
                }
                let value = value & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            MSIX_CONFIG => self.vectors.config.store(vector(value), Ordering::SeqCst),
            DEVICE_STATUS => self.write_status(value as u8),
            QUEUE_SELECT => self.queue_select = value as u16,
            _ => self.write_queue_field(offset, value, vector(value)),
        }
    }

    fn write_queue_field(&mut self, offset: u64, value: u64, vector: u16) {
        use common::*;
        if !self.queue_regs_writable() {
            tracing::debug!(offset, "virtio-pci: queue register written after DRIVER_OK");
            return;
        }
        let index = usize::from(self.queue_select);
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        match offset {
            // A split ring's size is a power of 2 no larger than the device's (Virtio
            // 1.2 4.1.4.3.1: what reads back must be one); another is not taken.
            QUEUE_SIZE => {
                let size = value as u16;
                if size.is_power_of_two() && size <= queue.max_size {
                    queue.size = size;
                } else {
                    tracing::debug!(size, max = queue.max_size, "virtio-pci: queue size refused");
                }
            }
            QUEUE_MSIX_VECTOR => {
                if let Some(v) = self.vectors.queues.get(index) {
                    v.store(vector, Ordering::SeqCst);
                }
            }
            // Only 1 is meaningful; the driver must not write 0.
            QUEUE_ENABLE => queue.enabled |= value & 1 == 1,
            QUEUE_DESC => queue.desc = value,
            QUEUE_DRIVER => queue.driver = value,
            QUEUE_DEVICE => queue.device = value,
            _ => {}
        }
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let features_ok = VIRTIO_CONFIG_S_FEATURES_OK as u8;
        let driver_ok = VIRTIO_CONFIG_S_DRIVER_OK as u8;
        let known = (VIRTIO_CONFIG_S_ACKNOWLEDGE
            | VIRTIO_CONFIG_S_DRIVER
            | VIRTIO_CONFIG_S_DRIVER_OK
            | VIRTIO_CONFIG_S_FEATURES_OK
            | VIRTIO_CONFIG_S_FAILED) as u8;
        // Bits only ever get added until the next reset.
        let added = value & known & !self.status;
        if added & features_ok != 0 && !self.accept_features() {
            // FEATURES_OK stays clear: the driver sees the refusal when it reads back.
            self.status |= added & !(features_ok | driver_ok);
            return;
        }
        self.status |= added;
        if added & driver_ok != 0 {
            if self.status & features_ok == 0 {
                guest_warn!(self.warned, warn::DRIVER_OK_EARLY, device = %self.device.name(),
                    "virtio-pci: DRIVER_OK without FEATURES_OK");
                self.set_needs_reset();
                return;
            }
            if !self.config.bus_master() {
                // It could not touch the rings.
                guest_warn!(self.warned, warn::NO_BUS_MASTER, device = %self.device.name(),
                    "virtio-pci: DRIVER_OK with bus mastering off");
                self.set_needs_reset();
                return;
            }
            // Stopped (bus mastering was turned off, say), the device has forgotten the
            // features it took: it starts again only from a reset.
            if self.status & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0 {
                guest_warn!(self.warned, warn::RESET_PENDING, device = %self.device.name(),
                    "virtio-pci: DRIVER_OK before the reset the device asked for");
                // Asked again, now to a driver that can hear it, as the other refusals ask.
                self.set_needs_reset();
                return;
            }
            self.activate();
        }
    }

    /// Hands the driver's features to the device; true if it took all of them and
    /// they include `VIRTIO_F_VERSION_1`.
    fn accept_features(&mut self) -> bool {
        let wanted = self.driver_features;
        self.device.ack_features(wanted);
        let acked = self.device.acked_features();
        let ok = acked == wanted && wanted & (1 << VIRTIO_F_VERSION_1) != 0;
        if !ok {
            guest_warn!(
                self.warned,
                warn::FEATURES_REFUSED,
                device = %self.device.name(),
                wanted = format_args!("{wanted:#x}"),
                offered = format_args!("{:#x}", self.device.features()),
                "virtio-pci: refusing FEATURES_OK"
            );
        }
        ok
    }

    /// Builds the queues the driver enabled; `None` if any is malformed.
    fn build_queues(&mut self) -> Option<Vec<(Queue, EventFd)>> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, (regs, notify)) in self.queues.iter().zip(&self.notify).enumerate() {
            if !regs.enabled {
                continue;
            }
            let valid = regs.size.is_power_of_two() && regs.size <= regs.max_size;
            let mut queue = Queue::new(regs.max_size).ok()?;
            let placed = valid
                && queue.try_set_size(regs.size).is_ok()
                && queue
                    .try_set_desc_table_address(GuestAddress(regs.desc))
                    .is_ok()
                && queue
                    .try_set_avail_ring_address(GuestAddress(regs.driver))
                    .is_ok()
                && queue
                    .try_set_used_ring_address(GuestAddress(regs.device))
                    .is_ok();
            queue.set_ready(true);
            if !placed || !super::queue_usable(&self.mem, &queue) {
                guest_warn!(self.warned, warn::INVALID_QUEUE, device = %self.device.name(),
                    index, ?regs, "virtio-pci: refusing an invalid queue");
                return None;
            }
            let fd = match notify.try_clone() {
                Ok(fd) => fd,
                Err(error) => {
                    tracing::error!(index, %error, "virtio-pci: cannot clone the notify eventfd");
                    return None;
                }
            };
            queues.push((queue, fd));
        }
        Some(queues)
    }

    fn activate(&mut self) {
        let needs_reset = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        let Some(queues) = self.build_queues() else {
            self.status |= needs_reset;
            let _ = self.interrupt().trigger(InterruptKind::Config);
            return;
        };
        let interrupt = self.interrupt();
        match self
            .device
            .activate(Arc::clone(&self.mem), interrupt.clone(), queues)
        {
            Ok(()) => self.active = true,
            Err(error) => {
                let error = netd::errors::error_chain(&error);
                guest_warn!(self.warned, warn::ACTIVATION_REFUSED,
                    device = %self.device.name(), %error, "virtio-pci: device refused activation");
                self.status |= needs_reset;
                let _ = interrupt.trigger(InterruptKind::Config);
            }
        }
    }

    /// Device reset (status 0): stops the device and forgets all driver state.
    /// Sets `NEEDS_RESET` for a mistake of the driver's, with the config-change
    /// notification that comes with it (virtio 1.x 2.1.2). With bus mastering off an MSI
    /// may not go out: it waits until the driver turns bus mastering on; INTx and the
    /// ISR byte need none.
    fn set_needs_reset(&mut self) {
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        if self.config.bus_master() || !lock_msix(&self.msix).enabled() {
            let _ = self.interrupt().trigger(InterruptKind::Config);
        } else {
            self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
            self.config_msi_held = true;
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.active = false;
        self.status = 0;
        self.warned.clear();
        self.config_msi_held = false;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.isr.store(0, Ordering::SeqCst);
        self.vectors.reset();
        // The events behind pending messages are gone with the worker: the next driver
        // must not get a stale interrupt when it unmasks.
        lock_msix(&self.msix).clear_pending();
        for q in &mut self.queues {
            *q = QueueRegs::new(q.max_size);
        }
        // Stale kicks from before the reset must not wake the next activation.
        for fd in &self.notify {
            let _ = fd.read();
        }
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *byte = match common_field(at) {
                Some((start, _)) => (self.read_common_field(start) >> ((at - start) * 8)) as u8,
                None => 0,
            };
        }
    }

    /// Applies a write of any width by merging its bytes into each register it covers.
    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let at = offset + i as u64;
            let Some((start, width)) = common_field(at) else {
                i += 1;
                continue;
            };
            let mut value = self.read_common_field(start);
            while i < data.len() && offset + (i as u64) < start + width {
                let shift = (offset + i as u64 - start) * 8;
                value = (value & !(0xff << shift)) | (u64::from(data[i]) << shift);
                i += 1;
            }
            self.write_common_field(start, value);
        }
    }
}

/// Offset of `pci_cfg_data` in the `VIRTIO_PCI_CAP_PCI_CFG` capability.
const PCI_CFG_DATA: usize = 16;

impl VirtioPciDevice {
    /// The BAR access an access of `len` bytes at config `offset` makes through the
    /// `VIRTIO_PCI_CAP_PCI_CFG` window, if it touches `pci_cfg_data` and the window
    /// selects a valid range (length 1, 2 or 4, aligned, inside the BAR).
    fn pci_cfg_window(&self, offset: usize, len: usize) -> Option<(usize, u64, usize)> {
        let data_at = self.pci_cfg_cap + PCI_CFG_DATA;
        if offset >= data_at + 4 || offset + len <= data_at {
            return None;
        }
        let cap = self.pci_cfg_cap;
        let bar = usize::from(self.config.bytes()[cap + 4]);
        let bar_offset = u64::from(self.config.read_u32(cap + 8));
        let length = self.config.read_u32(cap + 12);
        let valid = bar == BAR_INDEX
            && matches!(length, 1 | 2 | 4)
            && bar_offset % u64::from(length) == 0
            && bar_offset + u64::from(length) <= BAR_SIZE;
        valid.then_some((bar, bar_offset, length as usize))
    }
}

/// The register containing byte `offset` of the common configuration.
fn common_field(offset: u64) -> Option<(u64, u64)> {
    common::FIELDS
        .iter()
        .copied()
        .find(|&(start, width)| offset >= start && offset < start + width)
}

/// The body (after id and next) of a `struct virtio_pci_cap`.
fn virtio_cap_body(cfg_type: u8, offset: u64, len: u64) -> Vec<u8> {
    let mut body = vec![16, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(len as u32).to_le_bytes());
    body
}

/// PCI class and subclass for a virtio device type.
fn class_of(device_type: u32) -> (u8, u8) {
    match device_type {
        1 => (0x02, 0x00), // network controller, Ethernet
        2 => (0x01, 0x00), // mass storage, SCSI
        _ => (0xff, 0x00),
    }
}

impl PciDevice for VirtioPciDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn stop(&mut self) {
        self.reset();
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        if let Some((bar, bar_offset, len)) = self.pci_cfg_window(offset, data.len()) {
            let mut bytes = [0u8; 4];
            self.bar_read(bar, bar_offset, &mut bytes[..len]);
            let data_at = self.pci_cfg_cap + PCI_CFG_DATA;
            self.config.bytes_mut()[data_at..data_at + 4].copy_from_slice(&bytes);
        }
        let intx_pending = !lock_msix(&self.msix).enabled() && self.isr.load(Ordering::SeqCst) != 0;
        self.config.set_interrupt_status(intx_pending);
        self.config.read(offset, data);
    }

    fn config_written(&mut self, offset: usize, data: &[u8]) {
        if self.active && !self.config.bus_master() {
            // The driver took the function off the bus (a kexec'd kernel's
            // pci_device_shutdown does, without a virtio reset): the device must stop
            // writing what is now the next kernel's memory. As QEMU, it stops and
            // drops DRIVER_OK; it asks for the reset a new driver does anyway.
            tracing::info!("virtio-pci: bus mastering turned off; device stopped");
            self.device.reset();
            self.active = false;
            // No notification: the driver that would take it is gone, and an MSI held
            // for the next one would reach a kernel that never asked for it.
            self.status = (self.status & !(VIRTIO_CONFIG_S_DRIVER_OK as u8))
                | VIRTIO_CONFIG_S_NEEDS_RESET as u8;
        }
        let msix_enabled = {
            let mut msix = lock_msix(&self.msix);
            msix.config_written(&self.config);
            msix.enabled()
        };
        self.sync_intx_enable(msix_enabled);
        if self.config_msi_held && self.config.bus_master() {
            self.config_msi_held = false;
            let _ = self.interrupt().trigger(InterruptKind::Config);
        }
        if let Some((bar, bar_offset, len)) = self.pci_cfg_window(offset, data.len()) {
            let data_at = self.pci_cfg_cap + PCI_CFG_DATA;
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&self.config.bytes()[data_at..data_at + 4]);
            self.bar_write(bar, bar_offset, &bytes[..len]);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != BAR_INDEX {
            return;
        }
        let msix = lock_msix(&self.msix);
        let (table_size, pba_size) = (msix.table_size(), msix.pba_size());
        match offset {
            o if o < COMMON_CFG_OFFSET + COMMON_CFG_LEN => {
                drop(msix);
                self.common_read(o - COMMON_CFG_OFFSET, data)
            }
            ISR_CFG_OFFSET => {
                // Reading the ISR acknowledges it.
                if let Some(first) = data.first_mut() {
                    *first = self.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + table_size).contains(&o) => {
                msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + pba_size).contains(&o) => {
                msix.read_pba(o - MSIX_PBA_OFFSET, data)
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar != BAR_INDEX {
            return;
        }
        let table_size = lock_msix(&self.msix).table_size();
        let notify_end =
            NOTIFY_OFFSET + self.notify.len() as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        match offset {
            o if o < COMMON_CFG_OFFSET + COMMON_CFG_LEN => {
                self.common_write(o - COMMON_CFG_OFFSET, data)
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            // Normally the ioeventfd catches these in the kernel; this is the fallback.
            o if (NOTIFY_OFFSET..notify_end).contains(&o) => {
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Some(fd) = self.notify.get(queue)
                    && let Err(error) = fd.write(1)
                {
                    tracing::warn!(queue, %error, "virtio-pci: cannot signal queue notify");
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + table_size).contains(&o) => {
                lock_msix(&self.msix).write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn connect_intx(&mut self, gsi: u32) -> Result<(), IntxError> {
        if self.intx.get().is_some() {
            tracing::warn!(
                gsi,
                "virtio-pci: INTx already wired; keeping the first line"
            );
            return Ok(());
        }
        let isr = Arc::clone(&self.isr);
        let level: LevelSource = Arc::new(move || isr.load(Ordering::SeqCst) != 0);
        let line = IntxLine::new(gsi, Arc::clone(&self.intx_router), level)?;
        // `&mut self` rules out a concurrent set, so this one cannot lose.
        let _ = self.intx.set(line);
        let msix_enabled = lock_msix(&self.msix).enabled();
        self.sync_intx_enable(msix_enabled);
        Ok(())
    }

    fn ioeventfds(&self) -> Vec<IoEventSpec> {
        let mut specs = Vec::with_capacity(self.notify.len());
        for (queue, fd) in self.notify.iter().enumerate() {
            match fd.try_clone() {
                Ok(fd) => specs.push(IoEventSpec {
                    bar: BAR_INDEX,
                    offset: NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
                    fd,
                    datamatch: None,
                }),
                Err(error) => {
                    tracing::warn!(queue, %error, "virtio-pci: cannot clone the notify eventfd")
                }
            }
        }
        specs
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.device.reset();
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
