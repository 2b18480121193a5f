//! Getting a kernel ready to run: memory layout, image loading, boot parameters, ACPI
//! tables and the CPU model.

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod loader;
