//! Emulated devices.

pub mod acpi_pm;
pub mod bus;
pub mod console;
pub mod console_log;
pub mod i8042;
pub mod pci;
pub mod serial;
pub mod virtio;
