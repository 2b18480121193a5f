//! A type-0 PCI configuration space with the semantics guests rely on: read-only fields,
//! BAR sizing (write all ones, read back the size mask), the command register and a
//! capability list.

/// Size of conventional configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Number of BARs in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Register offsets.
pub const VENDOR_ID: usize = 0x00;
/// Device id.
pub const DEVICE_ID: usize = 0x02;
/// Command register.
pub const COMMAND: usize = 0x04;
/// Status register.
pub const STATUS: usize = 0x06;
/// Revision id.
pub const REVISION_ID: usize = 0x08;
/// Programming interface, subclass, class (0x09..=0x0b).
pub const CLASS_PROG_IF: usize = 0x09;
/// Header type.
pub const HEADER_TYPE: usize = 0x0e;
/// First BAR.
pub const BAR0: usize = 0x10;
/// Subsystem vendor id.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem id.
pub const SUBSYSTEM_ID: usize = 0x2e;
/// Capabilities pointer.
pub const CAPABILITIES_POINTER: usize = 0x34;
/// Interrupt line.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt pin.
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command: respond to I/O space accesses.
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// Command: respond to memory space accesses.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command: may master the bus (DMA, MSI).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Status: the function's INTx is pending (whether or not Interrupt Disable masks it).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// Status: a capability list exists.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Capability ids used here.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Vendor-specific capability (virtio uses it).
pub const CAP_ID_VENDOR: u8 = 0x09;

/// First byte available to capabilities (after the type-0 header).
const CAPABILITIES_START: usize = 0x40;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Memory32,
    /// 64-bit memory BAR (uses this slot and the next).
    Memory64,
}

/// Identity of a PCI function, written into its header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PciIds {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// Class code (base class).
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor id.
    pub subsystem_vendor: u16,
    /// Subsystem id.
    pub subsystem: u16,
}

/// Errors building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR sizes must be powers of two of at least 16 bytes.
    #[error("BAR {index} size {size:#x} is not a power of two >= 16")]
    BadBarSize {
        /// BAR slot.
        index: usize,
        /// Requested size.
        size: u64,
    },
    /// The slot is taken or out of range.
    #[error("BAR slot {0} is in use or out of range")]
    BarSlot(usize),
    /// No room left for a capability.
    #[error("no room for a {len}-byte capability in configuration space")]
    NoCapabilityRoom {
        /// Its length.
        len: usize,
    },
}

/// A memory BAR's size and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// Size in bytes (power of two).
    pub size: u64,
    /// 32- or 64-bit.
    pub kind: BarKind,
}

/// A type-0 configuration space.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits the guest may change.
    writable: [u8; CONFIG_SPACE_SIZE],
    bars: [Option<BarInfo>; NUM_BARS],
    next_capability: usize,
    last_capability: Option<usize>,
}

impl std::fmt::Debug for PciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciConfig")
            .field("vendor", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

impl PciConfig {
    /// A header with `ids` and no BARs or capabilities.
    pub fn new(ids: PciIds) -> PciConfig {
        let mut c = PciConfig {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            next_capability: CAPABILITIES_START,
            last_capability: None,
        };
        c.set_u16(VENDOR_ID, ids.vendor);
        c.set_u16(DEVICE_ID, ids.device);
        c.bytes[REVISION_ID] = ids.revision;
        c.bytes[CLASS_PROG_IF] = ids.prog_if;
        c.bytes[CLASS_PROG_IF + 1] = ids.subclass;
        c.bytes[CLASS_PROG_IF + 2] = ids.class;
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem);
        let command_writable =
            COMMAND_IO_SPACE | COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&command_writable.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }

    fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Reads a little-endian u16.
    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    /// Reads a little-endian u32.
    pub fn read_u32(&self, offset: usize) -> u32 {
        let b = &self.bytes[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Declares memory BAR `index` of `size` bytes (64-bit BARs also take `index + 1`).
    pub fn add_bar(&mut self, index: usize, size: u64, kind: BarKind) -> Result<(), ConfigError> {
        if !size.is_power_of_two() || size < 16 || (kind == BarKind::Memory32 && size > 1 << 31) {
            return Err(ConfigError::BadBarSize { index, size });
        }
        let slots = if kind == BarKind::Memory64 { 2 } else { 1 };
        if index + slots > NUM_BARS
            || (index..index + slots).any(|i| self.bars[i].is_some() || self.is_bar_high_half(i))
        {
            return Err(ConfigError::BarSlot(index));
        }
        self.bars[index] = Some(BarInfo { size, kind });
        let offset = BAR0 + index * 4;
        let type_bits: u32 = if kind == BarKind::Memory64 { 0b100 } else { 0 };
        self.set_u32(offset, type_bits);
        // Address bits below the size are hard-wired to zero: that is how sizing works.
        let mask = !(size - 1);
        self.writable[offset..offset + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
        if kind == BarKind::Memory64 {
            self.writable[offset + 4..offset + 8]
                .copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    fn is_bar_high_half(&self, index: usize) -> bool {
        index > 0
            && matches!(
                self.bars[index - 1],
                Some(BarInfo {
                    kind: BarKind::Memory64,
                    ..
                })
            )
    }

    /// The declared BAR in slot `index`.
    pub fn bar(&self, index: usize) -> Option<BarInfo> {
        self.bars.get(index).copied().flatten()
    }

    /// The address programmed into BAR `index` (whether or not decoding is enabled).
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let info = self.bar(index)?;
        let offset = BAR0 + index * 4;
        let low = u64::from(self.read_u32(offset) & !0xf);
        let high = match info.kind {
            BarKind::Memory64 => u64::from(self.read_u32(offset + 4)) << 32,
            BarKind::Memory32 => 0,
        };
        Some(high | low)
    }

    /// Programs BAR `index` (the VMM's initial allocation; the guest may move it).
    pub fn set_bar_address(&mut self, index: usize, addr: u64) {
        if let Some(info) = self.bar(index) {
            let offset = BAR0 + index * 4;
            let type_bits = self.read_u32(offset) & 0xf;
            self.set_u32(offset, (addr as u32 & !0xf) | type_bits);
            if info.kind == BarKind::Memory64 {
                self.set_u32(offset + 4, (addr >> 32) as u32);
            }
        }
    }

    /// `(base, size)` of every BAR the device currently decodes (memory space enabled).
    pub fn active_bars(&self) -> Vec<(usize, u64, u64)> {
        if self.read_u16(COMMAND) & COMMAND_MEMORY_SPACE == 0 {
            return Vec::new();
        }
        (0..NUM_BARS)
            .filter_map(|i| {
                let info = self.bar(i)?;
                let base = self.bar_address(i)?;
                (base != 0).then_some((i, base, info.size))
            })
            .collect()
    }

    /// Appends capability `id` with `body` (the bytes after id and next pointer);
    /// `writable` masks the body bytes the guest may change. Returns its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (2 + body.len()).next_multiple_of(4);
        let offset = self.next_capability;
        if offset + len > CONFIG_SPACE_SIZE {
            return Err(ConfigError::NoCapabilityRoom { len });
        }
        self.bytes[offset] = id;
        self.bytes[offset + 1] = 0;
        self.bytes[offset + 2..offset + 2 + body.len()].copy_from_slice(body);
        for (i, mask) in writable.iter().take(body.len()).enumerate() {
            self.writable[offset + 2 + i] = *mask;
        }
        match self.last_capability {
            Some(last) => self.bytes[last + 1] = offset as u8,
            None => self.bytes[CAPABILITIES_POINTER] = offset as u8,
        }
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES_LIST;
        self.set_u16(STATUS, status);
        self.last_capability = Some(offset);
        self.next_capability = offset + len;
        Ok(offset)
    }

    /// Guest read of `data.len()` bytes at `offset` (beyond 256 bytes reads as zero).
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Guest write: only writable bits change.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let at = offset + i;
            if at >= CONFIG_SPACE_SIZE {
                break;
            }
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (b & mask);
        }
    }

    /// Sets the interrupt pin (1 = INTA#, 0 = none).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
    }

    /// The interrupt pin (1 = INTA#..4 = INTD#, 0 = none).
    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[INTERRUPT_PIN]
    }

    /// Sets the interrupt line, as firmware does with the IRQ the pin is routed to (the
    /// guest may overwrite it; it is a scratch register for the OS).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.bytes[INTERRUPT_LINE] = line;
    }

    /// Reflects the INTx pending state in the status register.
    pub fn set_interrupt_status(&mut self, pending: bool) {
        let status = self.read_u16(STATUS) & !STATUS_INTERRUPT;
        let bit = if pending { STATUS_INTERRUPT } else { 0 };
        self.set_u16(STATUS, status | bit);
    }

    /// Whether the command register's Interrupt Disable bit is set.
    pub fn intx_disabled(&self) -> bool {
        self.read_u16(COMMAND) & COMMAND_INTX_DISABLE != 0
    }

    /// Whether the command register's Bus Master bit is set: the function may read and
    /// write memory, and send MSIs.
    pub fn bus_master(&self) -> bool {
        self.read_u16(COMMAND) & COMMAND_BUS_MASTER != 0
    }

    /// Raw access for device code (e.g. a capability's state bytes).
    pub fn bytes_mut(&mut self) -> &mut [u8; CONFIG_SPACE_SIZE] {
        &mut self.bytes
    }

    /// Raw read access.
    pub fn bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: 0x02,
            subclass: 0x00,
            revision: 1,
            ..Default::default()
        }
    }

    fn r32(c: &PciConfig, off: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_fields_are_read_only() {
        let mut c = PciConfig::new(ids());
        c.write(0, &[0xff; 4]);
        c.write(0x08, &[0xff; 4]);
        assert_eq!(r32(&c, 0), 0x1041_1af4);
        assert_eq!(r32(&c, 8), 0x0200_0001);
    }

    #[test]
    fn bar32_sizing_reads_back_the_size_mask() {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0x4000, BarKind::Memory32).expect("bar");
        c.write(BAR0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r32(&c, BAR0), 0xffff_c000);
        c.write(BAR0, &0xc000_1234u32.to_le_bytes());
        assert_eq!(r32(&c, BAR0), 0xc000_0000);
        assert_eq!(c.bar_address(0), Some(0xc000_0000));
    }

    #[test]
    fn bar64_sizing_spans_two_registers() {
        let mut c = PciConfig::new(ids());
        c.add_bar(2, 0x8_0000, BarKind::Memory64).expect("bar");
        c.write(BAR0 + 8, &0xffff_ffffu32.to_le_bytes());
        c.write(BAR0 + 12, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r32(&c, BAR0 + 8), 0xfff8_0004, "type bits say 64-bit");
        assert_eq!(r32(&c, BAR0 + 12), 0xffff_ffff);
        c.set_bar_address(2, 0x1_2340_0000);
        assert_eq!(c.bar_address(2), Some(0x1_2340_0000));
        assert_eq!(
            c.add_bar(3, 0x1000, BarKind::Memory32),
            Err(ConfigError::BarSlot(3))
        );
        assert_eq!(
            c.add_bar(0, 0x1001, BarKind::Memory32),
            Err(ConfigError::BadBarSize {
                index: 0,
                size: 0x1001
            })
        );
    }

    #[test]
    fn unimplemented_bars_read_zero_after_sizing() {
        let mut c = PciConfig::new(ids());
        c.write(BAR0 + 4, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(r32(&c, BAR0 + 4), 0);
    }

    #[test]
    fn bars_decode_only_with_memory_space_enabled() {
        let mut c = PciConfig::new(ids());
        c.add_bar(0, 0x1000, BarKind::Memory32).expect("bar");
        c.set_bar_address(0, 0xc000_0000);
        assert!(c.active_bars().is_empty());
        c.write(COMMAND, &COMMAND_MEMORY_SPACE.to_le_bytes());
        assert_eq!(c.active_bars(), vec![(0, 0xc000_0000, 0x1000)]);
    }

    #[test]
    fn interrupt_pin_is_read_only_and_line_is_scratch() {
        let mut c = PciConfig::new(ids());
        c.set_interrupt_pin(1);
        c.set_interrupt_line(17);
        assert_eq!(
            r32(&c, INTERRUPT_LINE) & 0xffff,
            0x0111,
            "pin INTA#, line 17"
        );
        c.write(INTERRUPT_LINE, &[0x0b, 0x04]);
        assert_eq!(c.interrupt_pin(), 1, "pin is read-only");
        assert_eq!(
            c.bytes()[INTERRUPT_LINE],
            0x0b,
            "line is the OS's scratch register"
        );
        assert!(!c.intx_disabled());
        c.write(COMMAND, &COMMAND_INTX_DISABLE.to_le_bytes());
        assert!(c.intx_disabled());
        c.set_interrupt_status(true);
        assert_eq!(c.read_u16(STATUS) & STATUS_INTERRUPT, STATUS_INTERRUPT);
        c.write(STATUS, &[0xff, 0xff]);
        assert_eq!(c.read_u16(STATUS), STATUS_INTERRUPT, "status is read-only");
        c.set_interrupt_status(false);
        assert_eq!(c.read_u16(STATUS), 0);
    }

    #[test]
    fn capability_list_is_linked_and_flagged() {
        let mut c = PciConfig::new(ids());
        let first = c
            .add_capability(
                CAP_ID_VENDOR,
                &[14, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
                &[],
            )
            .expect("cap");
        let second = c
            .add_capability(CAP_ID_MSIX, &[0; 10], &[0, 0xc0])
            .expect("cap");
        assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.bytes()[CAPABILITIES_POINTER] as usize, first);
        assert_eq!(c.bytes()[first], CAP_ID_VENDOR);
        assert_eq!(c.bytes()[first + 1] as usize, second);
        assert_eq!(c.bytes()[second], CAP_ID_MSIX);
        assert_eq!(c.bytes()[second + 1], 0, "end of list");
        assert_eq!(first % 4, 0);
        assert_eq!(second % 4, 0);
        // Only the masked bits of the body are writable.
        c.write(second + 2, &[0xff, 0xff]);
        assert_eq!(c.read_u16(second + 2), 0xc000);
    }
}
