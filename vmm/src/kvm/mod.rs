//! Everything that talks to `/dev/kvm`: the VM, its memory, its vCPUs and interrupt routing.
//!
//! This is the only module allowed to use `unsafe`; every block says why it is sound.

pub mod memory;
pub mod vcpu;
pub mod vm;

pub use memory::GuestMemory;
pub use vcpu::{Vcpu, VcpuError, VcpuExitReason};
pub use vm::{IrqRouting, KvmError, KvmIoEvents, MsiMessage, VmFd};
