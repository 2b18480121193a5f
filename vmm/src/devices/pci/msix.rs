//! MSI-X: the capability, the vector table and pending-bit array a device exposes in a BAR,
//! and delivery of each vector as an irqfd on its own KVM MSI route.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::config::{CAP_ID_MSIX, ConfigError, PciConfig};
use crate::kvm::{IrqRouting, KvmError, MsiMessage};

/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector masked.
const VECTOR_MASKED: u32 = 1;

/// Where interrupts go: allocates GSIs, programs MSI routes and attaches irqfds.
///
/// Implemented by [`IrqRouting`] for KVM; tests can supply a recording fake.
pub trait MsiRouter: Send + Sync + std::fmt::Debug {
    /// Reserves a GSI.
    fn allocate_gsi(&self) -> Result<u32, KvmError>;
    /// Points `gsi` at `msg`.
    fn set_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmError>;
    /// Makes writes to `irqfd` inject `gsi`.
    fn attach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError>;
    /// Undoes [`MsiRouter::attach_irqfd`] and frees the GSI.
    fn release(&self, irqfd: &EventFd, gsi: u32);
}

impl MsiRouter for IrqRouting {
    fn allocate_gsi(&self) -> Result<u32, KvmError> {
        self.allocate_msi_gsi()
    }

    fn set_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmError> {
        self.set_msi_route(gsi, msg)
    }

    fn attach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.register_irqfd(irqfd, gsi)
    }

    fn release(&self, irqfd: &EventFd, gsi: u32) {
        if let Err(error) = self.unregister_irqfd(irqfd, gsi) {
            tracing::warn!(gsi, %error, "cannot detach irqfd");
        }
        if let Err(error) = self.release_msi_gsi(gsi) {
            tracing::warn!(gsi, %error, "cannot release GSI");
        }
    }
}

/// Errors setting up MSI-X.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// 1..=2048 vectors.
    #[error("MSI-X needs 1..=2048 vectors, not {0}")]
    VectorCount(u16),
    /// Routing setup failed.
    #[error("cannot set up the interrupt route of MSI-X vector {vector}")]
    Route {
        /// The vector.
        vector: u16,
        /// Why.
        #[source]
        source: KvmError,
    },
    /// An eventfd could not be created.
    #[error("cannot create the irqfd of MSI-X vector {vector}")]
    EventFd {
        /// The vector.
        vector: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The capability did not fit.
    #[error("cannot add the MSI-X capability")]
    Capability(#[source] ConfigError),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TableEntry {
    address: u64,
    data: u32,
    control: u32,
}

#[derive(Debug)]
struct Vector {
    gsi: u32,
    irqfd: EventFd,
    /// The message last installed as this GSI's route.
    routed: Option<MsiMessage>,
    /// A failure to install a route was logged at warn; repeats (every trigger of
    /// the vector) go to debug until a route succeeds again.
    route_warned: bool,
}

/// Where the table and PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u32,
}

/// The MSI-X state of one device.
#[derive(Debug)]
pub struct Msix {
    layout: MsixLayout,
    cap_offset: Option<usize>,
    table: Vec<TableEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    vectors: Vec<Vector>,
    router: Arc<dyn MsiRouter>,
}

impl Msix {
    /// `count` vectors, each with its own GSI and irqfd (all masked, as after reset).
    pub fn new(
        count: u16,
        layout: MsixLayout,
        router: Arc<dyn MsiRouter>,
    ) -> Result<Msix, MsixError> {
        if count == 0 || count > 2048 {
            return Err(MsixError::VectorCount(count));
        }
        let mut vectors = Vec::with_capacity(count.into());
        for vector in 0..count {
            let irqfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
                .map_err(|source| MsixError::EventFd { vector, source })?;
            let gsi = router
                .allocate_gsi()
                .map_err(|source| MsixError::Route { vector, source })?;
            router
                .attach_irqfd(&irqfd, gsi)
                .map_err(|source| MsixError::Route { vector, source })?;
            vectors.push(Vector {
                gsi,
                irqfd,
                routed: None,
                route_warned: false,
            });
        }
        Ok(Msix {
            layout,
            cap_offset: None,
            table: vec![
                TableEntry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                count.into()
            ],
            pending: vec![0; usize::from(count).div_ceil(64)],
            enabled: false,
            function_masked: false,
            vectors,
            router,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.table.len() as u16
    }

    /// Whether there are no vectors (never true).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Table size in bytes.
    pub fn table_size(&self) -> u64 {
        u64::from(self.len()) * MSIX_ENTRY_SIZE
    }

    /// PBA size in bytes.
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The table/PBA placement.
    pub fn layout(&self) -> MsixLayout {
        self.layout
    }

    /// Adds the capability to `config` (only enable and function-mask are writable).
    pub fn add_capability(&mut self, config: &mut PciConfig) -> Result<usize, MsixError> {
        let control = self.len() - 1;
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&control.to_le_bytes());
        body.extend_from_slice(
            &(self.layout.table_offset | u32::from(self.layout.table_bar)).to_le_bytes(),
        );
        body.extend_from_slice(
            &(self.layout.pba_offset | u32::from(self.layout.pba_bar)).to_le_bytes(),
        );
        let offset = config
            .add_capability(CAP_ID_MSIX, &body, &[0, 0xc0])
            .map_err(MsixError::Capability)?;
        self.cap_offset = Some(offset);
        Ok(offset)
    }

    /// Call after every guest config write: picks up enable / function-mask changes.
    pub fn config_written(&mut self, config: &PciConfig) {
        let Some(cap) = self.cap_offset else { return };
        let control = config.read_u16(cap + 2);
        let was_active = self.enabled && !self.function_masked;
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if !was_active && self.enabled && !self.function_masked {
            for vector in 0..self.len() {
                self.sync_route(vector);
                self.deliver_if_pending(vector);
            }
        }
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Guest read of the table at `offset` (relative to the table start).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let bytes = self.entry_bytes(offset);
        let start = (offset % MSIX_ENTRY_SIZE) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.and_then(|e| e.get(start + i).copied()).unwrap_or(0);
        }
    }

    fn entry_bytes(&self, offset: u64) -> Option<[u8; 16]> {
        let entry = self.table.get((offset / MSIX_ENTRY_SIZE) as usize)?;
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&entry.address.to_le_bytes());
        bytes[8..12].copy_from_slice(&entry.data.to_le_bytes());
        bytes[12..16].copy_from_slice(&entry.control.to_le_bytes());
        Some(bytes)
    }

    /// Guest write to the table; updates the vector's route and delivers pending ones on unmask.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        let Some(mut bytes) = self.entry_bytes(offset) else {
            return;
        };
        let start = (offset % MSIX_ENTRY_SIZE) as usize;
        if start + data.len() > bytes.len() {
            return;
        }
        bytes[start..start + data.len()].copy_from_slice(data);
        let was_masked = self.vector_masked(index as u16);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let entry = &mut self.table[index];
        entry.address = u64::from(u32_at(0)) | (u64::from(u32_at(4)) << 32);
        entry.data = u32_at(8);
        // Only the mask bit of vector control is writable.
        entry.control = u32_at(12) & VECTOR_MASKED;
        if !self.vector_masked(index as u16) {
            // Install the route now, so a backend signalling the irqfd directly is
            // delivered to the message the guest just programmed.
            self.sync_route(index as u16);
            if was_masked {
                self.deliver_if_pending(index as u16);
            }
        }
    }

    /// Guest read of the PBA.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let byte = offset as usize + i;
            *b = self
                .pending
                .get(byte / 8)
                .map(|w| (w >> ((byte % 8) * 8)) as u8)
                .unwrap_or(0);
        }
    }

    fn vector_masked(&self, vector: u16) -> bool {
        !self.enabled
            || self.function_masked
            || self
                .table
                .get(usize::from(vector))
                .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// Drops every pending message: the device reset, and the events are gone.
    pub fn clear_pending(&mut self) {
        self.pending.fill(0);
    }

    /// Whether `vector` has a pending (undelivered, masked) message.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    fn set_pending(&mut self, vector: u16, pending: bool) {
        let v = usize::from(vector);
        if let Some(word) = self.pending.get_mut(v / 64) {
            if pending {
                *word |= 1 << (v % 64);
            } else {
                *word &= !(1 << (v % 64));
            }
        }
    }

    fn deliver_if_pending(&mut self, vector: u16) {
        if self.is_pending(vector) {
            self.set_pending(vector, false);
            self.trigger(vector);
        }
    }

    /// Signals `vector`: delivered through its irqfd now, or left pending while masked.
    pub fn trigger(&mut self, vector: u16) {
        if self.vector_masked(vector) {
            self.set_pending(vector, true);
            return;
        }
        if !self.sync_route(vector) {
            return;
        }
        if let Err(error) = self.vectors[usize::from(vector)].irqfd.write(1) {
            tracing::warn!(vector, %error, "cannot signal MSI-X irqfd");
        }
    }

    /// Makes the vector's GSI route match its table entry; false if that failed.
    fn sync_route(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        let (Some(entry), Some(slot)) = (self.table.get(v), self.vectors.get_mut(v)) else {
            return false;
        };
        let msg = MsiMessage {
            address: entry.address,
            data: entry.data,
        };
        if slot.routed != Some(msg) {
            if let Err(error) = self.router.set_route(slot.gsi, msg) {
                if std::mem::replace(&mut slot.route_warned, true) {
                    tracing::debug!(vector, gsi = slot.gsi, %error, "cannot route MSI-X vector");
                } else {
                    tracing::warn!(vector, gsi = slot.gsi, %error, "cannot route MSI-X vector");
                }
                return false;
            }
            slot.routed = Some(msg);
            slot.route_warned = false;
        }
        true
    }

    /// The irqfd behind `vector`. Writing it injects the vector's current message
    /// without the masking checks [`Msix::trigger`] does, so hand it to a backend thread
    /// only while [`Msix::is_deliverable`] holds (or accept that a masked vector fires).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(vector)).map(|v| &v.irqfd)
    }

    /// Whether a trigger of `vector` would be delivered now (enabled, not masked).
    pub fn is_deliverable(&self, vector: u16) -> bool {
        !self.vector_masked(vector)
    }

    /// The GSI carrying `vector`.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.vectors.get(usize::from(vector)).map(|v| v.gsi)
    }
}

impl Drop for Msix {
    fn drop(&mut self) {
        for v in &self.vectors {
            self.router.release(&v.irqfd, v.gsi);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::pci::config::{PciConfig, PciIds};
    use std::sync::Mutex;

    /// Records what the MSI-X code asks of the router.
    #[derive(Debug, Default)]
    pub(crate) struct FakeRouter {
        pub routes: Mutex<Vec<(u32, MsiMessage)>>,
        pub next: Mutex<u32>,
        pub irqfds: Mutex<Vec<(EventFd, u32)>>,
        /// The level-triggered (INTx) side, for devices that have both.
        pub intx: crate::devices::pci::intx::tests::FakeIntx,
    }

    impl crate::devices::pci::IntxRouter for FakeRouter {
        fn attach_resampled_irqfd(
            &self,
            irqfd: &EventFd,
            resample: &EventFd,
            gsi: u32,
        ) -> Result<(), KvmError> {
            self.intx.attach_resampled_irqfd(irqfd, resample, gsi)
        }
        fn detach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
            self.intx.detach_irqfd(irqfd, gsi)
        }
    }

    impl FakeRouter {
        /// How many times `gsi`'s irqfd was written since the last call.
        pub fn fired(&self, gsi: u32) -> u64 {
            let fds = self.irqfds.lock().expect("lock");
            fds.iter()
                .find(|(_, g)| *g == gsi)
                .map(|(fd, _)| fd.read().unwrap_or(0))
                .unwrap_or(0)
        }
    }

    impl MsiRouter for FakeRouter {
        fn allocate_gsi(&self) -> Result<u32, KvmError> {
            let mut n = self.next.lock().expect("lock");
            *n += 1;
            Ok(23 + *n)
        }
        fn set_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmError> {
            self.routes.lock().expect("lock").push((gsi, msg));
            Ok(())
        }
        fn attach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
            self.irqfds
                .lock()
                .expect("lock")
                .push((irqfd.try_clone().expect("clone"), gsi));
            Ok(())
        }
        fn release(&self, _irqfd: &EventFd, _gsi: u32) {}
    }

    fn setup(count: u16) -> (Msix, PciConfig, Arc<FakeRouter>, usize) {
        let router = Arc::new(FakeRouter::default());
        let layout = MsixLayout {
            table_bar: 0,
            table_offset: 0x1000,
            pba_bar: 0,
            pba_offset: 0x2000,
        };
        let mut msix = Msix::new(count, layout, router.clone()).expect("msix");
        let mut config = PciConfig::new(PciIds::default());
        let cap = msix.add_capability(&mut config).expect("cap");
        (msix, config, router, cap)
    }

    fn program(msix: &mut Msix, vector: u64, data: u32, masked: bool) {
        let base = vector * MSIX_ENTRY_SIZE;
        msix.write_table(base, &0xfee0_0000u32.to_le_bytes());
        msix.write_table(base + 4, &0u32.to_le_bytes());
        msix.write_table(base + 8, &data.to_le_bytes());
        msix.write_table(base + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_describes_table_and_pba() {
        let (_, config, _, cap) = setup(3);
        assert_eq!(config.bytes()[cap], CAP_ID_MSIX);
        assert_eq!(config.read_u16(cap + 2), 2, "table size - 1, disabled");
        assert_eq!(config.read_u32(cap + 4), 0x1000);
        assert_eq!(config.read_u32(cap + 8), 0x2000);
    }

    #[test]
    fn enabled_unmasked_vector_routes_and_fires() {
        let (mut msix, mut config, router, cap) = setup(2);
        program(&mut msix, 1, 0x45, false);
        config.write(cap + 3, &[0x80]); // enable
        msix.config_written(&config);
        msix.trigger(1);
        let gsi = msix.gsi(1).expect("gsi");
        assert_eq!(router.fired(gsi), 1);
        assert_eq!(
            router.routes.lock().expect("lock").last().copied(),
            Some((
                gsi,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x45
                }
            ))
        );
        let mut entry = [0u8; 16];
        msix.read_table(16, &mut entry);
        assert_eq!(&entry[8..12], &0x45u32.to_le_bytes());
    }

    #[test]
    fn route_is_installed_when_the_guest_unmasks_the_entry() {
        let (mut msix, mut config, router, cap) = setup(1);
        config.write(cap + 3, &[0x80]);
        msix.config_written(&config);
        program(&mut msix, 0, 0x52, false);
        let gsi = msix.gsi(0).expect("gsi");
        assert_eq!(
            router.routes.lock().expect("lock").last().copied(),
            Some((
                gsi,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x52
                }
            ))
        );
        assert!(msix.is_deliverable(0));
        assert_eq!(router.fired(gsi), 0, "routing alone does not fire");
    }

    #[test]
    fn masked_vector_is_pending_until_unmasked() {
        let (mut msix, mut config, router, cap) = setup(1);
        program(&mut msix, 0, 0x30, true);
        config.write(cap + 3, &[0x80]);
        msix.config_written(&config);
        msix.trigger(0);
        let gsi = msix.gsi(0).expect("gsi");
        assert_eq!(router.fired(gsi), 0);
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1, "pending bit set");
        msix.write_table(12, &0u32.to_le_bytes()); // unmask
        assert_eq!(router.fired(gsi), 1);
        msix.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn function_mask_holds_all_vectors() {
        let (mut msix, mut config, router, cap) = setup(1);
        program(&mut msix, 0, 0x30, false);
        config.write(cap + 3, &[0xc0]); // enable + function mask
        msix.config_written(&config);
        msix.trigger(0);
        let gsi = msix.gsi(0).expect("gsi");
        assert_eq!(router.fired(gsi), 0);
        config.write(cap + 3, &[0x80]);
        msix.config_written(&config);
        assert_eq!(router.fired(gsi), 1);
    }
}
