//! The guest-physical address map, shared by the loader, ACPI, devices and tests.
//!
//! ```text
//! 0x0000_0500  GDT (null, null, __BOOT_CS 0x10, __BOOT_DS 0x18)
//! 0x0000_0520  IDT (empty; the kernel installs its own)
//! 0x0000_6000  PVH hvm_start_info, its memory map at 0x6100, module list at 0x6400
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT at 0xa000, four PDs at 0xb000..0xefff (identity map 0..4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00  end of low RAM; [0x9fc00, 1 MiB) is reserved
//! 0x000e_0000  ACPI tables (RSDP first)
//! 0x0010_0000  kernel (HIMEM_START)
//! ...          RAM up to min(size, MMIO32_START); the rest of RAM continues at 4 GiB
//! 0xc000_0000  32-bit PCI MMIO window for BARs
//! 0xe000_0000  PCI ECAM (bus 0 only)
//! 0xfec0_0000  IOAPIC, 0xfee0_0000 LAPIC
//! 0xfffb_d000  KVM TSS (three pages)
//! ```

/// Boot GDT.
pub const GDT_START: u64 = 0x500;
/// Boot IDT (zero-length).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map (array of `hvm_memmap_table_entry`).
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6400;
/// The Linux zero page.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Top-level page table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// First of four page directories (one per GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we accept, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of the low RAM region below the EBDA.
pub const LOW_RAM_END: u64 = 0x9fc00;
/// ACPI tables live from here up to [`HIMEM_START`].
pub const ACPI_START: u64 = 0xe0000;
/// First byte above the legacy hole: the kernel is loaded here.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole; RAM above this size continues at [`RAM_64BIT_START`].
pub const MMIO32_START: u64 = 0xc000_0000;
/// BAR window for PCI devices (inside the 32-bit hole).
pub const PCI_MMIO32_START: u64 = MMIO32_START;
/// Size of the BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration access (ECAM) base.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size: bus 0 only (32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// Address of the three pages KVM needs for its TSS on Intel.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
/// Where RAM above the 32-bit hole resumes.
pub const RAM_64BIT_START: u64 = 1 << 32;

/// IRQ of the 16550 on 0x3f8.
pub const SERIAL_IRQ: u32 = 4;
/// Number of IOAPIC pins (GSIs 0..24 are legacy, routed to the IOAPIC/PIC).
pub const IOAPIC_PINS: u32 = 24;
/// First GSI handed out for MSI routes.
pub const MSI_GSI_START: u32 = IOAPIC_PINS;

/// Port of the ACPI PM / sleep device (sleep control, sleep status, reset).
pub const ACPI_PM_PORT: u16 = 0x600;
/// Port of COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// Port of the i8042 data register (command/status at +4).
pub const I8042_PORT: u16 = 0x60;
/// PCI configuration address register (CONFIG_ADDRESS); data (CONFIG_DATA) is at 0xcfc.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;

/// Guest RAM regions for `mem_size` bytes: below the 32-bit hole, then above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO32_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO32_START),
            (RAM_64BIT_START, mem_size - MMIO32_START),
        ]
    }
}
