//! Everything that talks to `/dev/kvm`: the VM, its memory, its vCPUs and interrupt routing.
//!
//! With the tap and fd-passing modules, the only place `unsafe` is allowed (the
//! `unsafe_code` lint enforces it); every block says why it is sound.

pub mod memory;
pub mod vcpu;
pub mod vm;

pub use memory::GuestMemory;
pub use vcpu::{Vcpu, VcpuError, VcpuExitReason};
pub use vm::{IrqRouting, KvmError, KvmIoEvents, MsiMessage, VmFd};
