//! Opening `/dev/kvm`, creating the VM with its in-kernel irqchip and PIT, and GSI routing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY, KvmIrqRouting, kvm_irq_routing_entry,
    kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_pit_config,
};
pub use kvm_ioctls::VmFd;
use kvm_ioctls::{Cap, Kvm};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout;

/// The KVM API version every KVM since 2.6.22 reports.
const KVM_API_VERSION: i32 = 12;

/// Errors opening KVM or configuring the VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` does not exist.
    #[error(
        "/dev/kvm does not exist: load the kvm module (kvm_intel or kvm_amd) or enable virtualization"
    )]
    Missing,
    /// `/dev/kvm` exists but we may not open it.
    #[error("permission denied opening /dev/kvm: run as root or join the group owning /dev/kvm")]
    Permission,
    /// Opening `/dev/kvm` failed for another reason.
    #[error("cannot open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks another KVM API.
    #[error("/dev/kvm reports KVM API version {found}, kvnet-vmm needs {KVM_API_VERSION}")]
    ApiVersion {
        /// What the kernel reported.
        found: i32,
    },
    /// A capability we rely on is missing.
    #[error("/dev/kvm lacks the {0} capability")]
    MissingCap(&'static str),
    /// More vCPUs than KVM allows.
    #[error("{requested} vCPUs requested but KVM allows at most {max}")]
    TooManyVcpus {
        /// Asked for.
        requested: u32,
        /// KVM_CAP_MAX_VCPUS.
        max: u32,
    },
    /// An ioctl on the VM failed.
    #[error("{op} failed")]
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The GSI space for MSI routes is used up.
    #[error("no free GSI left for an MSI route (limit {0})")]
    GsiExhausted(u32),
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { op, source }
}

/// Opens `/dev/kvm`, explaining why when it is unusable.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::Permission,
        _ => KvmError::Open(e),
    })?;
    let found = kvm.get_api_version();
    if found != KVM_API_VERSION {
        return Err(KvmError::ApiVersion { found });
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::IrqfdResample, "KVM_CAP_IRQFD_RESAMPLE"),
        (Cap::IrqRouting, "KVM_CAP_IRQ_ROUTING"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// Checks `vcpus` against KVM_CAP_MAX_VCPUS.
pub fn check_vcpu_count(kvm: &Kvm, vcpus: u32) -> Result<(), KvmError> {
    let max = kvm.get_max_vcpus() as u32;
    if vcpus > max {
        return Err(KvmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    Ok(())
}

/// Creates the VM and sets its TSS address.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    vm.set_tss_address(layout::KVM_TSS_START as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    Ok(vm)
}

/// Adds the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
///
/// Call after the memory slots exist: once the irqchip is there, every slot change
/// waits for an SRCU grace period (measured: ~12 ms for one 128 MiB slot, nested).
pub fn create_irqchip(vm: &VmFd) -> Result<(), KvmError> {
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// An MSI message as a device (or the guest, through an MSI-X table entry) writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (0xfeeXXXXX on x86).
    pub address: u64,
    /// Message data (vector and delivery mode).
    pub data: u32,
}

/// The VM's GSI routing table: legacy GSIs 0..24 to PIC/IOAPIC pins, plus MSI routes.
///
/// KVM replaces the whole table on every `KVM_SET_GSI_ROUTING`, so this keeps the
/// authoritative copy and commits it after each change. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct IrqRouting {
    vm: Arc<VmFd>,
    state: Mutex<RoutingState>,
    max_gsi: u32,
}

#[derive(Debug)]
struct RoutingState {
    msi_routes: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
    free_gsis: Vec<u32>,
}

impl IrqRouting {
    /// Starts from the legacy routing KVM_CREATE_IRQCHIP already installed (committing
    /// it again would cost an SRCU grace period at start-up for nothing).
    pub fn new(vm: Arc<VmFd>, max_gsi: u32) -> Arc<IrqRouting> {
        Arc::new(IrqRouting {
            vm,
            state: Mutex::new(RoutingState {
                msi_routes: BTreeMap::new(),
                next_gsi: layout::MSI_GSI_START,
                free_gsis: Vec::new(),
            }),
            max_gsi,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoutingState> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a GSI for an MSI route (no route is installed until [`Self::set_msi_route`]).
    pub fn allocate_msi_gsi(&self) -> Result<u32, KvmError> {
        let mut state = self.lock();
        if let Some(gsi) = state.free_gsis.pop() {
            return Ok(gsi);
        }
        if state.next_gsi >= self.max_gsi {
            return Err(KvmError::GsiExhausted(self.max_gsi));
        }
        let gsi = state.next_gsi;
        state.next_gsi += 1;
        Ok(gsi)
    }

    /// Points `gsi` at `msg` (installing or replacing the route). The routes kept are
    /// always those KVM has: a table KVM refused is not kept, to be sent again with every
    /// later change, nor taken for installed when the same route is asked for again.
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), KvmError> {
        let mut state = self.lock();
        if state.msi_routes.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        let mut routes = state.msi_routes.clone();
        routes.insert(gsi, msg);
        self.commit(&routes)?;
        state.msi_routes = routes;
        Ok(())
    }

    /// Removes the route of `gsi` and returns the GSI to the pool; if KVM refuses the
    /// table without it, the route and the GSI stay as they are.
    pub fn release_msi_gsi(&self, gsi: u32) -> Result<(), KvmError> {
        let mut state = self.lock();
        if state.msi_routes.contains_key(&gsi) {
            let mut routes = state.msi_routes.clone();
            routes.remove(&gsi);
            self.commit(&routes)?;
            state.msi_routes = routes;
        }
        state.free_gsis.push(gsi);
        Ok(())
    }

    /// Makes a write to `fd` inject `gsi` (KVM_IRQFD).
    pub fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(ioctl("KVM_IRQFD (assign)"))
    }

    /// Makes a write to `fd` assert the level-triggered `gsi` until the guest EOIs it; KVM
    /// then deasserts the line and signals `resample` (KVM_IRQFD with
    /// KVM_IRQFD_FLAG_RESAMPLE), so the device can re-assert while it still has work.
    pub fn register_resampled_irqfd(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), KvmError> {
        self.vm
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(ioctl("KVM_IRQFD (assign, resample)"))
    }

    /// Detaches `fd` from `gsi`.
    pub fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(ioctl("KVM_IRQFD (deassign)"))
    }

    /// Installs the legacy routes and `msi_routes` as KVM's whole routing table.
    fn commit(&self, msi_routes: &BTreeMap<u32, MsiMessage>) -> Result<(), KvmError> {
        let entries = routing_entries(msi_routes);
        let mut table = KvmIrqRouting::new(0).map_err(|_| KvmError::GsiExhausted(self.max_gsi))?;
        for entry in entries {
            table
                .push(entry)
                .map_err(|_| KvmError::GsiExhausted(self.max_gsi))?;
        }
        self.vm
            .set_gsi_routing(&table)
            .map_err(ioctl("KVM_SET_GSI_ROUTING"))
    }
}

/// The full routing table: KVM's default legacy routes (GSI n -> PIC pin n for n < 16,
/// and IOAPIC pin n for n < 24; the MADT has no override), then the MSI routes. Kept
/// identical to what KVM_CREATE_IRQCHIP installs, so the first MSI route changes no
/// legacy line: the PIT's acknowledgement notifier is registered on GSI 0 and must stay
/// the one GSI behind its pin.
fn routing_entries(msi_routes: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
    let irqchip = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip = kvm_irq_routing_irqchip { irqchip: chip, pin };
        e
    };
    let mut entries = Vec::new();
    for gsi in 0..layout::IOAPIC_PINS {
        if gsi < 16 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            entries.push(irqchip(gsi, chip, pin));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, msg) in msi_routes {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi = kvm_irq_routing_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        entries.push(e);
    }
    entries
}

#[cfg(test)]
// Reading the unions of the GSI routing entries kvm-bindings defines.
#[allow(unsafe_code)]
mod tests {
    use super::*;

    /// KVM refuses a GSI past its table's limit (KVM_MAX_IRQ_ROUTES, 4096). The refused
    /// route must not go out again with the next change, making every later one fail
    /// too, nor be taken for installed when asked for again.
    #[test]
    fn a_routing_table_kvm_refuses_is_not_kept() {
        if !testkit::require(&[testkit::Need::Kvm]) {
            return;
        }
        let kvm = open_kvm().expect("open /dev/kvm");
        let vm = create_vm(&kvm).expect("create a VM");
        create_irqchip(&vm).expect("create the irqchip");
        let routing = IrqRouting::new(Arc::new(vm), u32::MAX);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        let beyond_kvm = 1 << 20;
        assert!(routing.set_msi_route(beyond_kvm, msg).is_err());
        routing
            .set_msi_route(layout::MSI_GSI_START, msg)
            .expect("a route KVM takes, after one it refused");
        assert!(routing.set_msi_route(beyond_kvm, msg).is_err());
        routing
            .release_msi_gsi(layout::MSI_GSI_START)
            .expect("release");
    }

    #[test]
    fn legacy_routes_match_kvm_defaults() {
        let entries = routing_entries(&BTreeMap::new());
        // 16 PIC routes + 24 IOAPIC routes, as KVM's default_routing.
        assert_eq!(entries.len(), 16 + 24);
        let ioapic: Vec<(u32, u32)> = entries
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            .filter_map(|e| {
                // SAFETY: every entry built by routing_entries with type IRQCHIP has the
                // irqchip union member initialised.
                let chip = unsafe { e.u.irqchip };
                (chip.irqchip == KVM_IRQCHIP_IOAPIC).then_some((e.gsi, chip.pin))
            })
            .collect();
        assert!(
            ioapic
                .iter()
                .enumerate()
                .all(|(pin, &(gsi, to))| gsi == pin as u32 && to == gsi)
        );
        assert_eq!(ioapic.len(), 24);
    }

    #[test]
    fn msi_routes_follow_legacy_ones() {
        let mut routes = BTreeMap::new();
        routes.insert(
            30,
            MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x41,
            },
        );
        let entries = routing_entries(&routes);
        let last = entries.last().expect("one MSI route");
        assert_eq!(last.gsi, 30);
        assert_eq!(last.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: type_ is MSI, so the msi union member is the initialised one.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_1000, 1, 0x41)
        );
    }
}

/// KVM_IOEVENTFD registration for PCI devices (see [`crate::devices::pci::IoEventRegistrar`]).
#[derive(Debug)]
pub struct KvmIoEvents(pub Arc<VmFd>);

impl crate::devices::pci::IoEventRegistrar for KvmIoEvents {
    fn register(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> Result<(), KvmError> {
        let address = kvm_ioctls::IoEventAddress::Mmio(addr);
        match datamatch {
            Some(value) => self.0.register_ioevent(fd, &address, value),
            None => self
                .0
                .register_ioevent(fd, &address, kvm_ioctls::NoDatamatch),
        }
        .map_err(ioctl("KVM_IOEVENTFD (assign)"))
    }

    fn unregister(&self, fd: &EventFd, addr: u64, datamatch: Option<u32>) -> Result<(), KvmError> {
        let address = kvm_ioctls::IoEventAddress::Mmio(addr);
        match datamatch {
            Some(value) => self.0.unregister_ioevent(fd, &address, value),
            None => self
                .0
                .unregister_ioevent(fd, &address, kvm_ioctls::NoDatamatch),
        }
        .map_err(ioctl("KVM_IOEVENTFD (deassign)"))
    }
}
