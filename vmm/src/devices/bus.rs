//! Address buses (port I/O and MMIO) that route guest accesses to device models.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device model reachable through a [`Bus`]. Offsets are relative to the range base.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`; fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or overlaps an existing one.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Requested base.
        base: u64,
        /// Requested length.
        len: u64,
    },
}

/// A shared, lockable device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Maps non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.ranges
                    .iter()
                    .map(|(base, (len, _))| format!("{base:#x}+{len:#x}")),
            )
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let before = self.ranges.range(..end).next_back();
        if let Some((&b, &(l, _))) = before
            && b + l > base
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(base, (len, device));
        Ok(())
    }

    fn resolve(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, device)) = self.ranges.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, device))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) if nothing is mapped.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false if nothing is mapped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((offset, device)) => {
                lock(device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (device state is plain data).
pub fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlap() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Echo(0x10))), 0x100, 8)
            .expect("insert");
        bus.insert(Arc::new(Mutex::new(Echo(0x20))), 0x108, 8)
            .expect("adjacent insert");
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0x104, 2),
            Err(BusError::Overlap {
                base: 0x104,
                len: 2
            })
        );
        assert_eq!(
            bus.insert(Arc::new(Mutex::new(Echo(0))), 0xff, 2),
            Err(BusError::Overlap { base: 0xff, len: 2 })
        );
        let mut b = [0u8; 1];
        assert!(bus.read(0x103, &mut b));
        assert_eq!(b[0], 0x13);
        assert!(bus.read(0x108, &mut b));
        assert_eq!(b[0], 0x20);
        assert!(!bus.read(0x110, &mut b));
        assert!(bus.write(0x109, &[0x40]));
        assert!(bus.read(0x10a, &mut b));
        assert_eq!(b[0], 0x42);
    }
}
