//! Device 00:00.0, the host bridge the guest's PCI driver expects to find first.

use super::PciDevice;
use super::config::{PciConfig, PciIds};

/// Red Hat, Inc. (QEMU/virtio vendor id).
pub const VENDOR_REDHAT: u16 = 0x1b36;
/// "QEMU PCIe Host bridge".
pub const DEVICE_PCIE_HOST: u16 = 0x0008;
/// Base class: bridge.
pub const CLASS_BRIDGE: u8 = 0x06;
/// Subclass: host bridge.
pub const SUBCLASS_HOST: u8 = 0x00;

/// A host bridge with no BARs and no capabilities.
#[derive(Debug)]
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// The bridge's configuration space.
    pub fn new() -> HostBridge {
        HostBridge {
            config: PciConfig::new(PciIds {
                vendor: VENDOR_REDHAT,
                device: DEVICE_PCIE_HOST,
                class: CLASS_BRIDGE,
                subclass: SUBCLASS_HOST,
                subsystem_vendor: VENDOR_REDHAT,
                subsystem: 0x1100,
                ..Default::default()
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        HostBridge::new()
    }
}

impl PciDevice for HostBridge {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }
}
