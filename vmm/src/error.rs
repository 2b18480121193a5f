//! The crate's top-level error: each variant wraps one module's error enum.

use std::path::PathBuf;

/// Everything that can stop a VM from being built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `/dev/kvm` or a VM ioctl.
    #[error(transparent)]
    Kvm(#[from] crate::kvm::KvmError),
    /// Guest RAM.
    #[error(transparent)]
    Memory(#[from] crate::kvm::memory::MemoryError),
    /// Kernel, initrd or command line.
    #[error(transparent)]
    Loader(#[from] crate::boot::loader::LoaderError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] crate::boot::acpi::AcpiError),
    /// A vCPU failed or the guest did something the VMM does not handle.
    #[error(transparent)]
    Vcpu(#[from] crate::kvm::VcpuError),
    /// Device placement.
    #[error(transparent)]
    Bus(#[from] crate::devices::bus::BusError),
    /// PCI.
    #[error(transparent)]
    Pci(#[from] crate::devices::pci::PciError),
    /// A `--net` NIC: opening its tap.
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::NetConfigError),
    /// A NIC's tap could not be configured.
    #[error(transparent)]
    Tap(#[from] crate::devices::virtio::net::tap::TapError),
    /// A virtio device could not be put on the PCI bus.
    #[error(transparent)]
    VirtioPci(#[from] crate::devices::virtio::pci::VirtioPciError),
    /// Opening the serial output file.
    #[error("cannot open serial output file {path}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The thread writing serial output could not be started.
    #[error("cannot start the serial output thread")]
    SerialThread(#[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {what}")]
    EventFd {
        /// Its use.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU thread could not be started.
    #[error("cannot start the thread of vcpu {vcpu}")]
    Thread {
        /// vCPU index.
        vcpu: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SIGTERM, SIGINT and SIGHUP could not be set up to stop the VM.
    #[error(transparent)]
    StopSignals(#[from] crate::signals::SignalError),
    /// The syscall filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// `--user`: the user could not be resolved or become.
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}
