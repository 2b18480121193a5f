//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT, MCFG and a DSDT describing the
//! PCI host bridge (with the `_PRT` that maps each slot's INTx pins to IOAPIC GSIs), COM1,
//! the i8042's ports, the power button and the S5 sleep state.
//!
//! Everything lives in [`layout::ACPI_START`]..1 MiB, which the e820 map marks reserved;
//! the zero page and PVH start info point at the RSDP.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Device, EISAName, IO, Interrupt, Memory32Fixed, Name,
    Package, PackageBuilder, Path, ResourceTemplate, Scope,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use crate::devices::acpi_pm;
use crate::devices::pci::{MAX_DEVICES, intx};
use crate::kvm::GuestMemory;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"KVNET ";
const OEM_REVISION: u32 = 1;

/// FADT IA-PC boot architecture flags: there is no VGA, and no CMOS RTC at ports
/// 0x70/0x71 (Linux then registers no `rtc_cmos` to probe them and fail; kvmclock gives
/// it the time). Not the 8042 flag: the controller only resets (see [`dsdt_body`]).
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT flag: the machine also has dual 8259 PICs (Linux masks them).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT structure types.
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;

/// Errors placing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables need {size} bytes but only {room} fit at {start:#x}")]
    TooLarge {
        /// Total size.
        size: u64,
        /// Room available.
        room: u64,
        /// Start address.
        start: u64,
    },
    /// Writing to guest memory failed.
    #[error("cannot write ACPI table {signature} at {addr:#x}")]
    Write {
        /// Table signature.
        signature: String,
        /// Where.
        addr: u64,
        /// Why.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Built tables with their guest addresses; the RSDP comes first.
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// `(address, bytes)` of every table.
    pub tables: Vec<(u64, Vec<u8>)>,
}

impl AcpiTables {
    /// Where the RSDP is.
    pub fn rsdp_addr(&self) -> u64 {
        layout::ACPI_START
    }

    /// The table with this signature (RSDP is `b"RSD "`).
    pub fn find(&self, signature: &[u8; 4]) -> Option<(u64, &[u8])> {
        self.tables
            .iter()
            .find(|(_, t)| t.starts_with(signature))
            .map(|(a, t)| (*a, t.as_slice()))
    }

    /// Writes every table into guest memory.
    pub fn write(&self, mem: &GuestMemory) -> Result<(), AcpiError> {
        for (addr, bytes) in &self.tables {
            mem.write_slice(bytes, GuestAddress(*addr))
                .map_err(|source| AcpiError::Write {
                    signature: String::from_utf8_lossy(&bytes[..4]).into_owned(),
                    addr: *addr,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Already-serialised AML, so devices can be built one statement at a time.
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Builds all tables for `vcpus` CPUs, laid out from [`layout::ACPI_START`].
pub fn build_tables(vcpus: u32) -> Result<AcpiTables, AcpiError> {
    let mut next = layout::ACPI_START + 64; // the RSDP (36 bytes) goes first
    let mut place = |bytes: Vec<u8>, tables: &mut Vec<(u64, Vec<u8>)>| {
        let addr = next;
        next = (next + bytes.len() as u64).next_multiple_of(16);
        tables.push((addr, bytes));
        addr
    };
    let mut tables = Vec::new();
    let dsdt = place(build_dsdt(), &mut tables);
    let fadt = place(build_fadt(dsdt), &mut tables);
    let madt = place(build_madt(vcpus), &mut tables);
    let mcfg = place(build_mcfg(), &mut tables);
    let mut xsdt = XSDT::new(OEM_ID, *b"KVNETXSD", OEM_REVISION);
    for table in [fadt, madt, mcfg] {
        xsdt.add_entry(table);
    }
    let xsdt = place(to_bytes(&xsdt), &mut tables);
    let room = layout::HIMEM_START - layout::ACPI_START;
    if next - layout::ACPI_START > room {
        return Err(AcpiError::TooLarge {
            size: next - layout::ACPI_START,
            room,
            start: layout::ACPI_START,
        });
    }
    tables.insert(0, (layout::ACPI_START, to_bytes(&Rsdp::new(OEM_ID, xsdt))));
    Ok(AcpiTables { tables })
}

fn build_fadt(dsdt: u64) -> Vec<u8> {
    let io8 = |port: u16| {
        GAS::new(
            GasSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            u64::from(port),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, *b"KVNETFAC", OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup)
        .dsdt_64(dsdt);
    fadt.sleep_control_reg = io8(layout::ACPI_PM_PORT + acpi_pm::SLEEP_CONTROL);
    fadt.sleep_status_reg = io8(layout::ACPI_PM_PORT + acpi_pm::SLEEP_STATUS);
    fadt.reset_reg = io8(layout::ACPI_PM_PORT + acpi_pm::RESET);
    fadt.reset_value = acpi_pm::RESET_VALUE;
    fadt.iapc_boot_arch =
        (IAPC_BOOT_ARCH_VGA_NOT_PRESENT | IAPC_BOOT_ARCH_CMOS_RTC_NOT_PRESENT).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"KVNETVMM").into();
    to_bytes(&fadt.finalize())
}

fn build_madt(vcpus: u32) -> Vec<u8> {
    let mut madt = Sdt::new(*b"APIC", 44, 4, OEM_ID, *b"KVNETAPI", OEM_REVISION);
    madt.write_u32(36, layout::LAPIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for cpu in 0..vcpus.min(256) {
        let id = cpu as u8;
        // type, length, ACPI processor UID, APIC id, flags (enabled)
        madt.append_slice(&[MADT_LOCAL_APIC, 8, id, id, 1, 0, 0, 0]);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, 0, 0];
    ioapic.extend_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    madt.append_slice(&ioapic);
    // No interrupt source override: ISA IRQ n is GSI n (the PIT's IRQ 0 too), as KVM's
    // default routing wires them to IOAPIC pin n.
    // LINT1 of every processor (UID 0xff) is the NMI input.
    madt.append_slice(&[MADT_LOCAL_APIC_NMI, 6, 0xff, 0, 0, 1]);
    madt.as_slice().to_vec()
}

fn build_mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"KVNETMCF", OEM_REVISION);
    let last_bus = ((layout::PCI_ECAM_SIZE >> 20) - 1) as u8;
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, last_bus);
    to_bytes(&mcfg)
}

fn build_dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"KVNETDSD", OEM_REVISION);
    let mut aml = Vec::new();
    dsdt_body(&mut aml);
    dsdt.append_slice(&aml);
    dsdt.as_slice().to_vec()
}

fn dsdt_body(aml: &mut Vec<u8>) {
    let mmio_start = layout::PCI_MMIO32_START as u32;
    let mmio_end = (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32;
    let ecam_len = layout::PCI_ECAM_SIZE as u32;
    let last_bus = ((layout::PCI_ECAM_SIZE >> 20) - 1) as u16;

    let pci_hid = EISAName::new("PNP0A08");
    let pci_cid = EISAName::new("PNP0A03");
    let bus_range = AddressSpace::new_bus_number(0u16, last_bus);
    let config_io = IO::new(
        layout::PCI_CONFIG_ADDRESS_PORT,
        layout::PCI_CONFIG_ADDRESS_PORT,
        1,
        8,
    );
    let io_low = AddressSpace::new_io(0u16, 0x0cf7u16, None);
    let io_high = AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mmio = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        mmio_start,
        mmio_end,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![&bus_range, &config_io, &io_low, &io_high, &mmio]);
    let pci_prt = pci_routing_table();
    let zero = 0u8;
    let pci = Raw(to_bytes(&Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &pci_hid),
            &Name::new("_CID".into(), &pci_cid),
            &Name::new("_ADR".into(), &zero),
            &Name::new("_SEG".into(), &zero),
            &Name::new("_UID".into(), &zero),
            &Name::new("_BBN".into(), &zero),
            &Name::new("_CRS".into(), &pci_crs),
            &Name::new("_PRT".into(), &pci_prt),
        ],
    )));

    // The ECAM window, declared as a motherboard resource so Linux trusts the MCFG.
    let ecam = Memory32Fixed::new(false, layout::PCI_ECAM_START as u32, ecam_len);
    let res_crs = ResourceTemplate::new(vec![&ecam]);
    let res_hid = EISAName::new("PNP0C02");
    let res = Raw(to_bytes(&Device::new(
        "RES0".into(),
        vec![
            &Name::new("_HID".into(), &res_hid),
            &Name::new("_UID".into(), &zero),
            &Name::new("_CRS".into(), &res_crs),
        ],
    )));

    let com1_hid = EISAName::new("PNP0501");
    let com1_io = IO::new(layout::SERIAL_PORT, layout::SERIAL_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1 = Raw(to_bytes(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &com1_hid),
            &Name::new("_UID".into(), &zero),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )));

    // The i8042 only pulses the reset line (reboot=k); it reads back nothing. Declared
    // as a keyboard controller (PNP0303, and the FADT's 8042 flag), Linux's driver
    // probes it, waits out its timeouts (half a second) and fails ("Can't read CTR").
    // Its ports are the motherboard's, reserved, and the driver stays away.
    let kbd_hid = EISAName::new("PNP0C02");
    let kbd_data = IO::new(layout::I8042_PORT, layout::I8042_PORT, 1, 1);
    let kbd_cmd = IO::new(layout::I8042_PORT + 4, layout::I8042_PORT + 4, 1, 1);
    let kbd_crs = ResourceTemplate::new(vec![&kbd_data, &kbd_cmd]);
    let kbd = Raw(to_bytes(&Device::new(
        "KRST".into(),
        vec![
            &Name::new("_HID".into(), &kbd_hid),
            &Name::new("_UID".into(), &"KRST"),
            &Name::new("_CRS".into(), &kbd_crs),
        ],
    )));

    let pwrb_hid = EISAName::new("PNP0C0C");
    let pwrb = Raw(to_bytes(&Device::new(
        "PWRB".into(),
        vec![
            &Name::new("_HID".into(), &pwrb_hid),
            &Name::new("_UID".into(), &zero),
        ],
    )));

    let pm_hid = EISAName::new("PNP0C02");
    let pm_io = IO::new(
        layout::ACPI_PM_PORT,
        layout::ACPI_PM_PORT,
        1,
        acpi_pm::PORT_COUNT as u8,
    );
    let pm_crs = ResourceTemplate::new(vec![&pm_io]);
    let one = 1u8;
    let pm = Raw(to_bytes(&Device::new(
        "PMRG".into(),
        vec![
            &Name::new("_HID".into(), &pm_hid),
            &Name::new("_UID".into(), &one),
            &Name::new("_CRS".into(), &pm_crs),
        ],
    )));

    Scope::new("_SB_".into(), vec![&pci, &res, &com1, &kbd, &pwrb, &pm]).to_aml_bytes(aml);
    // \_S5_: SLP_TYP value the guest writes into the sleep control register for poweroff.
    let s5_typ = acpi_pm::S5_SLEEP_TYPE;
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&s5_typ, &s5_typ, &zero, &zero]),
    )
    .to_aml_bytes(aml);
}

/// The `_PRT` of bus 0: for every slot and pin INTA#..INTD#, `Package { slot << 16 |
/// 0xffff, pin - 1, 0, gsi }`. Source 0 means "a GSI, level-triggered, active-low"
/// (ACPI 6.5, 6.2.13), which is how Linux programs the IOAPIC pin; the GSI is the one
/// [`intx::gsi_for`] wires the device's irqfd to.
fn pci_routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for device in 1..MAX_DEVICES {
        for pin in intx::PINS {
            let address = (u32::from(device) << 16) | 0xffff;
            let acpi_pin = pin - 1;
            let source = 0u8;
            let gsi = intx::gsi_for(device, pin);
            prt.add_element(&Package::new(vec![&address, &acpi_pin, &source, &gsi]));
        }
    }
    prt
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let t = build_tables(2).expect("tables");
        let (addr, rsdp) = t.find(b"RSD ").expect("rsdp");
        assert_eq!(addr, layout::ACPI_START);
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (_, table) in t.tables.iter().skip(1) {
            let sig = String::from_utf8_lossy(&table[..4]).into_owned();
            assert_eq!(u32_at(table, 4) as usize, table.len(), "{sig} length");
            assert_eq!(sum(table), 0, "{sig} checksum");
        }
    }

    #[test]
    fn rsdp_xsdt_fadt_dsdt_chain_resolves() {
        let t = build_tables(1).expect("tables");
        let (_, rsdp) = t.find(b"RSD ").expect("rsdp");
        let xsdt_addr = u64_at(rsdp, 24);
        let (addr, xsdt) = t.find(b"XSDT").expect("xsdt");
        assert_eq!(addr, xsdt_addr);
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let sig_at = |a: u64| {
            t.tables
                .iter()
                .find(|(addr, _)| *addr == a)
                .map(|(_, b)| b[..4].to_vec())
        };
        assert_eq!(
            entries.iter().map(|a| sig_at(*a)).collect::<Vec<_>>(),
            vec![
                Some(b"FACP".to_vec()),
                Some(b"APIC".to_vec()),
                Some(b"MCFG".to_vec())
            ]
        );
        let (_, fadt) = t.find(b"FACP").expect("fadt");
        let (dsdt_addr, _) = t.find(b"DSDT").expect("dsdt");
        assert_eq!(u64_at(fadt, 140), dsdt_addr, "X_DSDT");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        assert_ne!(flags & Flags::ResetRegSup as u32, 0);
        // SLEEP_CONTROL_REG (offset 244) is a byte-wide I/O register at the PM port.
        assert_eq!(&fadt[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(fadt, 248), u64::from(layout::ACPI_PM_PORT));
        // RESET_REG (offset 116) and RESET_VALUE (128).
        assert_eq!(
            u64_at(fadt, 120),
            u64::from(layout::ACPI_PM_PORT + acpi_pm::RESET)
        );
        assert_eq!(fadt[128], acpi_pm::RESET_VALUE);
        // IAPC_BOOT_ARCH (offset 109): no VGA and no CMOS RTC, and no 8042 for Linux
        // to probe.
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]),
            (1 << 2) | (1 << 5)
        );
    }

    #[test]
    fn madt_lists_each_vcpu_and_the_ioapic_and_no_override() {
        let t = build_tables(3).expect("tables");
        let (_, madt) = t.find(b"APIC").expect("madt");
        assert_eq!(u32_at(madt, 36), 0xfee0_0000);
        let mut off = 44;
        let mut apic_ids = Vec::new();
        let mut ioapic = None;
        let mut iso = None;
        while off < madt.len() {
            let (kind, len) = (madt[off], madt[off + 1] as usize);
            match kind {
                MADT_LOCAL_APIC => apic_ids.push((madt[off + 3], madt[off + 4] & 1)),
                MADT_IO_APIC => ioapic = Some(u32_at(madt, off + 4)),
                MADT_INTERRUPT_SOURCE_OVERRIDE => {
                    iso = Some((madt[off + 3], u32_at(madt, off + 4)))
                }
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, madt.len(), "structures fill the table exactly");
        assert_eq!(apic_ids, vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(ioapic, Some(0xfec0_0000));
        assert_eq!(iso, None, "KVM wires ISA IRQ n to GSI n");
    }

    #[test]
    fn mcfg_points_at_the_ecam_window() {
        let t = build_tables(1).expect("tables");
        let (_, mcfg) = t.find(b"MCFG").expect("mcfg");
        assert_eq!(mcfg.len(), 44 + 16);
        assert_eq!(u64_at(mcfg, 44), layout::PCI_ECAM_START);
        assert_eq!((mcfg[54], mcfg[55]), (0, 0), "bus range 0..=0");
    }

    /// Decodes a small AML integer (ZeroOp, OneOp, BytePrefix, WordPrefix, DWordPrefix).
    fn aml_int(b: &[u8]) -> (u32, usize) {
        match b[0] {
            0x00 => (0, 1),
            0x01 => (1, 1),
            0x0a => (u32::from(b[1]), 2),
            0x0b => (u32::from(u16::from_le_bytes([b[1], b[2]])), 3),
            0x0c => (u32_at(b, 1), 5),
            op => panic!("unexpected AML opcode {op:#x}"),
        }
    }

    #[test]
    fn prt_maps_every_slot_and_pin_to_its_swizzled_gsi() {
        let t = build_tables(1).expect("tables");
        let (_, dsdt) = t.find(b"DSDT").expect("dsdt");
        let at = dsdt.windows(4).position(|w| w == b"_PRT").expect("_PRT") + 4;
        assert_eq!(dsdt[at], 0x12, "PackageOp");
        // PkgLength: the top two bits of the lead byte count the bytes that follow.
        let len_bytes = usize::from(dsdt[at + 1] >> 6) + 1;
        let count = usize::from(dsdt[at + 1 + len_bytes]);
        assert_eq!(count, 31 * 4);
        let mut off = at + 2 + len_bytes;
        let mut entries = Vec::new();
        for _ in 0..count {
            assert_eq!(dsdt[off], 0x12, "entry PackageOp");
            assert_eq!(dsdt[off + 2], 4, "four elements");
            let mut field = off + 3;
            let mut values = [0u32; 4];
            for v in &mut values {
                let (value, used) = aml_int(&dsdt[field..]);
                *v = value;
                field += used;
            }
            assert_eq!(field - off - 1, usize::from(dsdt[off + 1]), "PkgLength");
            entries.push(values);
            off = field;
        }
        let expected: Vec<[u32; 4]> = (1u8..32)
            .flat_map(|dev| {
                (1u8..=4).map(move |pin| {
                    [
                        (u32::from(dev) << 16) | 0xffff,
                        u32::from(pin - 1),
                        0,
                        intx::gsi_for(dev, pin),
                    ]
                })
            })
            .collect();
        assert_eq!(entries, expected);
        assert_eq!(entries[0], [0x1_ffff, 0, 0, 17], "slot 1 INTA# -> GSI 17");
        assert_eq!(entries[5], [0x2_ffff, 1, 0, 19], "slot 2 INTB# -> GSI 19");
    }

    #[test]
    fn dsdt_declares_devices_and_s5() {
        let t = build_tables(1).expect("tables");
        let (_, dsdt) = t.find(b"DSDT").expect("dsdt");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        for name in [
            &b"PCI0"[..],
            b"COM1",
            b"KRST",
            b"PWRB",
            b"_S5_",
            b"_CRS",
            b"RES0",
        ] {
            assert!(has(name), "DSDT lacks {}", String::from_utf8_lossy(name));
        }
        // EISA id of PNP0A08 (compressed "PNP" + 0x0A08) as AML DWordConst.
        assert!(has(&[0x0c, 0x41, 0xd0, 0x0a, 0x08]), "PNP0A08 _HID");
        // No keyboard controller for Linux's i8042 driver to probe (PNP0303).
        assert!(!has(&[0x0c, 0x41, 0xd0, 0x03, 0x03]), "PNP0303 _HID");
        // The COM1 interrupt descriptor: Extended IRQ, consumer+edge, one IRQ = 4.
        assert!(has(&[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]), "COM1 IRQ 4");
    }
}
