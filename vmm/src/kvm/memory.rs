//! Guest RAM: anonymous mappings described by vm-memory and registered as KVM memory slots.

// Registering guest memory with KVM is unsafe in kvm-ioctls: the kernel writes to it.
#![allow(unsafe_code)]

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::layout;

/// The guest's RAM (cheap to clone: regions are reference counted).
pub type GuestMemory = GuestMemoryMmap<()>;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap of the RAM failed.
    #[error("cannot map {size_mib} MiB of guest RAM")]
    Map {
        /// Requested size.
        size_mib: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION for slot {slot} at {guest_addr:#x} failed")]
    Register {
        /// Slot number.
        slot: u32,
        /// Guest-physical start.
        guest_addr: u64,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// vm-memory gave no host address for a region's own start (never seen).
    #[error("guest RAM region at {guest_addr:#x} has no host mapping")]
    Unmapped {
        /// Guest-physical start.
        guest_addr: u64,
    },
}

/// Maps `size` bytes of RAM following [`layout::ram_regions`] (not yet registered with KVM).
pub fn create_guest_memory(size: u64) -> Result<GuestMemory, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(size)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: size >> 20,
        source,
    })
}

/// Registers every region of `mem` as a KVM memory slot (slot = region index).
///
/// Sound only while `mem` outlives `vm`'s slots: [`crate::Vm`] owns both and hands out
/// no VM fd (the clones its interrupt routing and ioeventfds hold create no vCPU that
/// could run in freed memory), and this is its only caller (crate-private for that
/// reason).
pub(crate) fn register_guest_memory(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let guest_addr = region.start_addr().0;
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| MemoryError::Unmapped { guest_addr })?;
        let entry = kvm_userspace_memory_region {
            slot,
            guest_phys_addr: guest_addr,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the host range [host, host + len) is a live mmap owned by `mem`, and the
        // caller keeps `mem` (and so the mapping) alive as long as the VM: `Vm` owns both.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::Register {
            slot,
            guest_addr,
            source,
        })?;
    }
    Ok(())
}
