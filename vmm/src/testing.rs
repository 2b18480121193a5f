//! Mini-guests for tests: 64-bit code assembled at test time with iced-x86, wrapped in a
//! tiny ELF so the real loader boots it through the Linux 64-bit boot protocol (long
//! mode, identity-mapped 4 GiB, `rsi` = zero page, stack at 0x8ff0).
//!
//! Keep guests short: under nested/PVM KVM they are emulated at ~1.5 M instructions/s.
//! Avoid VEX/AVX/BMI, `cmpxchg16b`, `xsave` and `int n` (emulator gaps on PVM).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use iced_x86::IcedError;
/// The assembler, re-exported so tests need no direct iced-x86 dependency.
pub use iced_x86::code_asm as asm;
use iced_x86::code_asm::*;

use crate::boot::layout;
use crate::devices::acpi_pm;
use crate::devices::pci::PciDevice;
use crate::devices::pci::config::{BarKind, PciConfig, PciIds};
use crate::devices::pci::msix::{MsiRouter, Msix, MsixLayout};

/// Where mini-guest code is loaded and entered (the kernel's usual load address).
pub const GUEST_CODE_START: u64 = layout::HIMEM_START;
/// Scratch RAM mini-guests may use (IDT at its start).
pub const GUEST_SCRATCH: u64 = 0x20_0000;

/// Assembles 64-bit code at [`GUEST_CODE_START`].
pub fn assemble(
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    build(&mut a)?;
    a.assemble(GUEST_CODE_START)
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at `load_addr`, entered there.
pub fn elf_image(code: &[u8], load_addr: u64) -> Vec<u8> {
    elf_image_with_pvh(code, load_addr, None)
}

/// Like [`elf_image`], plus a Xen `PHYS32_ENTRY` note when `pvh_entry` is given, so the
/// loader boots it through PVH (32-bit protected mode, `ebx` = `hvm_start_info`).
pub fn elf_image_with_pvh(code: &[u8], load_addr: u64, pvh_entry: Option<u32>) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let phnum = if pvh_entry.is_some() { 2 } else { 1 };
    let offset = (EHDR + PHDR * phnum) as u64;
    let mut note = Vec::new();
    if let Some(entry) = pvh_entry {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes());
    }
    let mut elf = Vec::with_capacity(EHDR + PHDR + code.len());
    elf.extend_from_slice(b"\x7fELF");
    elf.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little endian, version 1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&load_addr.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(PHDR as u16).to_le_bytes());
    elf.extend_from_slice(&(phnum as u16).to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&7u32.to_le_bytes()); // RWX
    elf.extend_from_slice(&offset.to_le_bytes());
    elf.extend_from_slice(&load_addr.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&load_addr.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&(code.len() as u64).to_le_bytes());
    elf.extend_from_slice(&0x1000u64.to_le_bytes());
    if !note.is_empty() {
        let note_offset = offset + code.len() as u64;
        elf.extend_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        elf.extend_from_slice(&4u32.to_le_bytes()); // R
        elf.extend_from_slice(&note_offset.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes());
        elf.extend_from_slice(&0u64.to_le_bytes());
        elf.extend_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&(note.len() as u64).to_le_bytes());
        elf.extend_from_slice(&4u64.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf.extend_from_slice(&note);
    elf
}

/// Assembles a guest and writes it as an ELF file `dir/name`.
pub fn write_guest(
    dir: &Path,
    name: &str,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> std::io::Result<PathBuf> {
    let code = assemble(build).map_err(std::io::Error::other)?;
    let path = dir.join(name);
    std::fs::write(&path, elf_image(&code, GUEST_CODE_START))?;
    Ok(path)
}

/// Assembles 32-bit code at [`GUEST_CODE_START`] and writes it as an ELF with a PVH note.
pub fn write_pvh_guest(
    dir: &Path,
    name: &str,
    build: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> std::io::Result<PathBuf> {
    let assemble32 = || -> Result<Vec<u8>, IcedError> {
        let mut a = CodeAssembler::new(32)?;
        build(&mut a)?;
        a.assemble(GUEST_CODE_START)
    };
    let code = assemble32().map_err(std::io::Error::other)?;
    let path = dir.join(name);
    let image = elf_image_with_pvh(&code, GUEST_CODE_START, Some(GUEST_CODE_START as u32));
    std::fs::write(&path, image)?;
    Ok(path)
}

/// Emits `out` of each byte of `text` to COM1 (clobbers al, dx).
pub fn print(a: &mut CodeAssembler, text: &str) -> Result<(), IcedError> {
    a.mov(dx, layout::SERIAL_PORT as u32)?;
    for b in text.bytes() {
        a.mov(al, b as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Waits until COM1 has a byte to read (line status bit 0, "data ready"), polling with
/// `pause` (clobbers al, dx).
pub fn wait_for_input(a: &mut CodeAssembler) -> Result<(), IcedError> {
    const LINE_STATUS: u32 = 5;
    let mut poll = a.create_label();
    a.mov(dx, layout::SERIAL_PORT as u32 + LINE_STATUS)?;
    a.set_label(&mut poll)?;
    a.pause()?;
    a.in_(al, dx)?;
    a.test(al, 1)?;
    a.jz(poll)?;
    Ok(())
}

/// Powers off through the ACPI sleep control register (S5 | SLP_EN), then spins.
pub fn poweroff(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(dx, (layout::ACPI_PM_PORT + acpi_pm::SLEEP_CONTROL) as u32)?;
    a.mov(al, (u32::from(acpi_pm::S5_SLEEP_TYPE) << 2) | (1 << 5))?;
    a.out(dx, al)?;
    spin(a)
}

/// Resets through the i8042 (command 0xfe on port 0x64), then spins.
pub fn i8042_reset(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(al, 0xfe)?;
    a.out(0x64, al)?;
    spin(a)
}

/// `cli; hlt` forever (with the in-kernel irqchip this blocks inside KVM_RUN).
pub fn spin(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(l)?;
    Ok(())
}

/// Starts a guest program with [`hex32_subroutine`] (jumped over) and returns its
/// label, for the code that follows to `a.call`.
pub fn begin_with_hex32(a: &mut CodeAssembler) -> Result<CodeLabel, IcedError> {
    let mut hex = a.create_label();
    let mut main = a.create_label();
    a.jmp(main)?;
    hex32_subroutine(a, &mut hex)?;
    a.set_label(&mut main)?;
    Ok(hex)
}

/// A subroutine printing `eax` as 8 lowercase hex digits on COM1. Call it with
/// `a.call(label)`; clobbers nothing but flags.
pub fn hex32_subroutine(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<(), IcedError> {
    hex_subroutine(a, label, 8)
}

/// A subroutine printing the low `digits` nibbles of `eax` (1 to 8) as lowercase hex
/// digits on COM1, most significant first: 2 prints `al`. Clobbers nothing but flags.
pub fn hex_subroutine(
    a: &mut CodeAssembler,
    label: &mut CodeLabel,
    digits: u32,
) -> Result<(), IcedError> {
    let digits = digits.clamp(1, 8);
    a.set_label(label)?;
    a.push(rax)?;
    a.push(rbx)?;
    a.push(rcx)?;
    a.push(rdx)?;
    a.mov(ebx, eax)?;
    if digits < 8 {
        // The first digit to print goes to the top nibble, where the loop takes it.
        a.rol(ebx, 32 - 4 * digits)?;
    }
    a.mov(ecx, digits)?;
    a.mov(dx, layout::SERIAL_PORT as u32)?;
    let mut next = a.create_label();
    let mut digit = a.create_label();
    a.set_label(&mut next)?;
    a.rol(ebx, 4)?;
    a.mov(eax, ebx)?;
    a.and(eax, 0xf)?;
    a.add(eax, b'0' as i32)?;
    a.cmp(eax, b'9' as i32)?;
    a.jbe(digit)?;
    a.add(eax, (b'a' - b'9' - 1) as i32)?;
    a.set_label(&mut digit)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(next)?;
    a.pop(rdx)?;
    a.pop(rcx)?;
    a.pop(rbx)?;
    a.pop(rax)?;
    a.ret()?;
    Ok(())
}

/// Code segment selector of the boot GDT (for IDT gates).
const BOOT_CS: u32 = 0x10;
/// LAPIC register offsets the mini-guests use.
const LAPIC_SVR: u64 = 0xf0;
const LAPIC_EOI: u64 = 0xb0;
/// Where [`install_interrupt_handler`] puts the IDTR image.
const IDTR_ADDR: u64 = GUEST_SCRATCH + 0x1000;

/// Lets only the local APIC interrupt the guest: masks both 8259s, points IDT vector
/// `vector` (IDT at [`GUEST_SCRATCH`]) at `handler` as an interrupt gate, loads the IDT
/// and software-enables the local APIC (SVR bit 8). Clobbers rax, rdi.
pub fn install_interrupt_handler(
    a: &mut CodeAssembler,
    vector: u32,
    handler: CodeLabel,
) -> Result<(), IcedError> {
    a.mov(al, 0xff)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    a.lea(rax, ptr(handler))?;
    a.mov(rdi, GUEST_SCRATCH + u64::from(vector) * 16)?;
    a.mov(word_ptr(rdi), ax)?;
    a.mov(word_ptr(rdi + 2), BOOT_CS)?;
    a.mov(word_ptr(rdi + 4), 0x8e00)?; // present, DPL 0, 64-bit interrupt gate
    a.shr(rax, 16)?;
    a.mov(word_ptr(rdi + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rdi + 8), eax)?;
    a.mov(dword_ptr(rdi + 12), 0)?;
    a.mov(rdi, IDTR_ADDR)?;
    a.mov(word_ptr(rdi), 0xfff)?;
    a.mov(rax, GUEST_SCRATCH)?;
    a.mov(qword_ptr(rdi + 2), rax)?;
    a.lidt(ptr(rdi))?;
    a.mov(rdi, layout::LAPIC_START)?;
    a.mov(dword_ptr(rdi + LAPIC_SVR), 0x1ff)?;
    Ok(())
}

/// Signals end-of-interrupt to the local APIC (a level-triggered vector also EOIs the
/// IOAPIC pin). Clobbers rdi.
pub fn lapic_eoi(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rdi, layout::LAPIC_START)?;
    a.mov(dword_ptr(rdi + LAPIC_EOI), 0)?;
    Ok(())
}

/// IOAPIC redirection entry bits.
const IOAPIC_LEVEL: u32 = 1 << 15;
const IOAPIC_ACTIVE_LOW: u32 = 1 << 13;

/// Routes IOAPIC pin `eax` to `vector` on APIC 0 as a level-triggered, active-low, fixed,
/// unmasked interrupt (what the `_PRT` of a PCI INTx pin tells an OS), through IOREGSEL
/// (0xfec00000) and IOWIN (+0x10). Clobbers rax, rcx, rdi.
pub fn ioapic_route_level_low(a: &mut CodeAssembler, vector: u32) -> Result<(), IcedError> {
    a.mov(rdi, layout::IOAPIC_START)?;
    a.lea(ecx, dword_ptr(rax * 2 + 0x10))?;
    a.mov(dword_ptr(rdi), ecx)?;
    a.mov(
        dword_ptr(rdi + 0x10),
        vector | IOAPIC_LEVEL | IOAPIC_ACTIVE_LOW,
    )?;
    a.inc(ecx)?;
    a.mov(dword_ptr(rdi), ecx)?;
    a.mov(dword_ptr(rdi + 0x10), 0)?; // destination: APIC 0
    Ok(())
}

/// A subroutine: `rdx` = address of the 64-bit memory BAR `rcx` of the function whose
/// ECAM configuration space is at `rbx`. Clobbers rdi.
pub fn bar64_subroutine(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<(), IcedError> {
    a.set_label(label)?;
    a.mov(edx, dword_ptr(rbx + rcx * 4 + 0x14))?;
    a.shl(rdx, 32)?;
    a.mov(edi, dword_ptr(rbx + rcx * 4 + 0x10))?;
    a.and(edi, -16)?;
    a.or(rdx, rdi)?;
    a.ret()?;
    Ok(())
}

/// Emits `label:` printing `text` and powering off (a mini-guest's failure exit).
pub fn fail_stub(
    a: &mut CodeAssembler,
    label: &mut CodeLabel,
    text: &str,
) -> Result<(), IcedError> {
    a.set_label(label)?;
    print(a, text)?;
    poweroff(a)
}

/// Registers the virtio-pci mini-driver helpers leave set (see [`virtio_pci_find`]).
pub mod virtio_regs {
    use iced_x86::code_asm::{
        AsmRegister32, AsmRegister64, r9, r10, r11, r12, r13, r14, r14d, r15, rbx,
    };
    /// ECAM configuration space of the device.
    pub const ECAM: AsmRegister64 = rbx;
    /// Offset of the MSI-X capability in configuration space.
    pub const MSIX_CAP: AsmRegister64 = r9;
    /// The MSI-X table.
    pub const MSIX_TABLE: AsmRegister64 = r10;
    /// The device-specific configuration.
    pub const DEVICE_CFG: AsmRegister64 = r11;
    /// The common configuration.
    pub const COMMON_CFG: AsmRegister64 = r12;
    /// The first queue notify register.
    pub const NOTIFY: AsmRegister64 = r13;
    /// `notify_off_multiplier`.
    pub const NOTIFY_MULTIPLIER: AsmRegister64 = r14;
    /// The same, as the 32-bit register it is loaded into.
    pub const NOTIFY_MULTIPLIER_32: AsmRegister32 = r14d;
    /// The ISR status byte.
    pub const ISR: AsmRegister64 = r15;
}

/// Finds the PCI function `vendor:device` on bus 0 through ECAM (printing
/// `found vvvv:dddd`), enables memory decoding and bus mastering, and walks its
/// capability list to the virtio structures, leaving their addresses in the
/// [`virtio_regs`] registers. Prints a reason and powers off if the device or a
/// structure is missing. Clobbers rax, rcx, rdx, rsi, rdi.
pub fn virtio_pci_find(a: &mut CodeAssembler, vendor: u16, device: u16) -> Result<(), IcedError> {
    use virtio_regs::*;
    let mut bar_addr = a.create_label();
    let mut no_device = a.create_label();
    let mut caps_missing = a.create_label();
    let mut start = a.create_label();
    a.jmp(start)?;
    bar64_subroutine(a, &mut bar_addr)?;
    fail_stub(
        a,
        &mut no_device,
        &format!("no {vendor:04x}:{device:04x} device\n"),
    )?;
    fail_stub(
        a,
        &mut caps_missing,
        "virtio capabilities missing
",
    )?;
    a.set_label(&mut start)?;

    let mut scan = a.create_label();
    let mut found = a.create_label();
    a.mov(ECAM, layout::PCI_ECAM_START)?;
    a.mov(rsi, layout::PCI_ECAM_START + (32 << 15))?;
    a.set_label(&mut scan)?;
    a.cmp(
        dword_ptr(ECAM),
        (u32::from(device) << 16 | u32::from(vendor)) as i32,
    )?;
    a.je(found)?;
    a.add(ECAM, 1 << 15)?;
    a.cmp(ECAM, rsi)?;
    a.jb(scan)?;
    a.jmp(no_device)?;
    a.set_label(&mut found)?;
    print(a, &format!("found {vendor:04x}:{device:04x}\n"))?;
    a.mov(word_ptr(ECAM + 4), 0x6)?; // memory space + bus master

    let mut cap_loop = a.create_label();
    let mut not_msix = a.create_label();
    let mut next_cap = a.create_label();
    let mut caps_done = a.create_label();
    for r in [
        MSIX_CAP,
        MSIX_TABLE,
        DEVICE_CFG,
        COMMON_CFG,
        NOTIFY,
        NOTIFY_MULTIPLIER,
        ISR,
    ] {
        a.xor(r, r)?;
    }
    a.movzx(esi, byte_ptr(ECAM + 0x34))?;
    a.set_label(&mut cap_loop)?;
    a.test(esi, esi)?;
    a.jz(caps_done)?;
    a.movzx(eax, byte_ptr(ECAM + rsi))?;
    a.cmp(eax, 0x11)?;
    a.jne(not_msix)?;
    // MSI-X: table offset and BIR at +4.
    a.mov(MSIX_CAP, rsi)?;
    a.mov(eax, dword_ptr(ECAM + rsi + 4))?;
    a.mov(ecx, eax)?;
    a.and(ecx, 7)?;
    a.and(eax, -8)?;
    a.call(bar_addr)?;
    a.add(rdx, rax)?;
    a.mov(MSIX_TABLE, rdx)?;
    a.jmp(next_cap)?;
    a.set_label(&mut not_msix)?;
    a.cmp(eax, 0x09)?;
    a.jne(next_cap)?;
    // struct virtio_pci_cap: cfg_type at +3, bar at +4, offset at +8.
    a.movzx(ecx, byte_ptr(ECAM + rsi + 4))?;
    a.call(bar_addr)?;
    a.mov(eax, dword_ptr(ECAM + rsi + 8))?;
    a.add(rdx, rax)?;
    a.movzx(eax, byte_ptr(ECAM + rsi + 3))?;
    for (cfg_type, register) in [(1u32, COMMON_CFG), (3, ISR), (4, DEVICE_CFG)] {
        let mut other = a.create_label();
        a.cmp(eax, cfg_type)?;
        a.jne(other)?;
        a.mov(register, rdx)?;
        a.jmp(next_cap)?;
        a.set_label(&mut other)?;
    }
    a.cmp(eax, 2)?;
    a.jne(next_cap)?;
    a.mov(NOTIFY, rdx)?;
    a.mov(NOTIFY_MULTIPLIER_32, dword_ptr(ECAM + rsi + 16))?;
    a.set_label(&mut next_cap)?;
    a.movzx(esi, byte_ptr(ECAM + rsi + 1))?;
    a.jmp(cap_loop)?;
    a.set_label(&mut caps_done)?;
    for r in [MSIX_CAP, MSIX_TABLE, DEVICE_CFG, COMMON_CFG, NOTIFY, ISR] {
        a.test(r, r)?;
        a.jz(caps_missing)?;
    }
    Ok(())
}

/// Virtio device status bits the helpers write.
const STATUS_ACK_DRIVER: u32 = 0x3;
const STATUS_FEATURES_OK: u32 = 0x8;
const STATUS_DRIVER_OK: u32 = 0x4;
const STATUS_NEEDS_RESET: u32 = 0x40;

/// Resets the device found by [`virtio_pci_find`], negotiates `features` (failing if
/// FEATURES_OK does not stick) and sets the configuration vector to NO_VECTOR.
pub fn virtio_negotiate(a: &mut CodeAssembler, features: u64) -> Result<(), IcedError> {
    use virtio_regs::*;
    let mut refused = a.create_label();
    let mut accepted = a.create_label();
    a.mov(byte_ptr(COMMON_CFG + 0x14), 0)?;
    a.mov(byte_ptr(COMMON_CFG + 0x14), 1)?;
    a.mov(byte_ptr(COMMON_CFG + 0x14), STATUS_ACK_DRIVER)?;
    for select in 0..2u32 {
        a.mov(dword_ptr(COMMON_CFG + 0x08), select)?;
        a.mov(
            dword_ptr(COMMON_CFG + 0x0c),
            (features >> (32 * select)) as u32,
        )?;
    }
    a.mov(
        byte_ptr(COMMON_CFG + 0x14),
        STATUS_ACK_DRIVER | STATUS_FEATURES_OK,
    )?;
    a.test(byte_ptr(COMMON_CFG + 0x14), STATUS_FEATURES_OK)?;
    a.jnz(accepted)?;
    fail_stub(
        a,
        &mut refused,
        "FEATURES_OK refused
",
    )?;
    a.set_label(&mut accepted)?;
    a.mov(word_ptr(COMMON_CFG + 0x10), 0xffff)?;
    Ok(())
}

/// Guest-physical placement of one split virtqueue's rings.
#[derive(Clone, Copy, Debug)]
pub struct QueueRings {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// Sets up queue `index` with `size` entries at `rings`, interrupt vector `vector`
/// (0xffff for none), enables it and leaves its notify address in `notify`.
/// Clobbers rax.
pub fn virtio_setup_queue(
    a: &mut CodeAssembler,
    index: u32,
    size: u32,
    vector: u32,
    rings: QueueRings,
    notify: AsmRegister64,
) -> Result<(), IcedError> {
    use virtio_regs::*;
    a.mov(word_ptr(COMMON_CFG + 0x16), index)?;
    a.mov(word_ptr(COMMON_CFG + 0x18), size)?;
    a.mov(word_ptr(COMMON_CFG + 0x1a), vector)?;
    for (reg, addr) in [(0x20, rings.desc), (0x28, rings.avail), (0x30, rings.used)] {
        a.mov(rax, addr)?;
        a.mov(qword_ptr(COMMON_CFG + reg), rax)?;
    }
    a.mov(word_ptr(COMMON_CFG + 0x1c), 1)?;
    a.movzx(eax, word_ptr(COMMON_CFG + 0x1e))?;
    a.imul_2(eax, NOTIFY_MULTIPLIER_32)?;
    a.mov(notify, NOTIFY)?;
    a.add(notify, rax)?;
    Ok(())
}

/// Sets DRIVER_OK, failing if the device answers with NEEDS_RESET.
pub fn virtio_driver_ok(a: &mut CodeAssembler) -> Result<(), IcedError> {
    use virtio_regs::*;
    let mut needs_reset = a.create_label();
    let mut running = a.create_label();
    a.mov(
        byte_ptr(COMMON_CFG + 0x14),
        STATUS_ACK_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    )?;
    a.test(byte_ptr(COMMON_CFG + 0x14), STATUS_NEEDS_RESET)?;
    a.jz(running)?;
    fail_stub(
        a,
        &mut needs_reset,
        "device needs reset
",
    )?;
    a.set_label(&mut running)?;
    Ok(())
}

/// A PCI test device: one 64-bit BAR holding an MSI-X table (offset 0), its PBA
/// (offset 0x800) and a doorbell register at [`MsiTestDevice::DOORBELL`] that triggers
/// the vector written to it.
#[derive(Debug)]
pub struct MsiTestDevice {
    config: PciConfig,
    msix: Msix,
    notify: vmm_sys_util::eventfd::EventFd,
}

impl MsiTestDevice {
    /// BAR size.
    pub const BAR_SIZE: u64 = 0x1000;
    /// PBA offset in the BAR.
    pub const PBA_OFFSET: u64 = 0x800;
    /// Doorbell offset in the BAR: writing `n` triggers vector `n`.
    pub const DOORBELL: u64 = 0xf00;
    /// Vendor/device id.
    pub const IDS: (u16, u16) = (0x1af4, 0x10ff);
    /// Offset of a notify register served by an ioeventfd (datamatch [`Self::NOTIFY_VALUE`]).
    pub const NOTIFY: u64 = 0xf80;
    /// The value that signals the notify ioeventfd.
    pub const NOTIFY_VALUE: u32 = 7;

    /// A device with `vectors` MSI-X vectors routed through `router`.
    pub fn new(
        vectors: u16,
        router: Arc<dyn MsiRouter>,
    ) -> Result<MsiTestDevice, crate::devices::pci::msix::MsixError> {
        let mut config = PciConfig::new(PciIds {
            vendor: Self::IDS.0,
            device: Self::IDS.1,
            class: 0xff,
            ..Default::default()
        });
        config
            .add_bar(0, Self::BAR_SIZE, BarKind::Memory64)
            .map_err(crate::devices::pci::msix::MsixError::Capability)?;
        let layout = MsixLayout {
            table_bar: 0,
            table_offset: 0,
            pba_bar: 0,
            pba_offset: Self::PBA_OFFSET as u32,
        };
        let mut msix = Msix::new(vectors, layout, router)?;
        msix.add_capability(&mut config)?;
        let notify = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
            crate::devices::pci::msix::MsixError::EventFd { vector: 0, source }
        })?;
        Ok(MsiTestDevice {
            config,
            msix,
            notify,
        })
    }

    /// A clone of the notify eventfd (counts guest writes of NOTIFY_VALUE to NOTIFY).
    pub fn notify_fd(&self) -> std::io::Result<vmm_sys_util::eventfd::EventFd> {
        self.notify.try_clone()
    }
}

impl PciDevice for MsiTestDevice {
    fn config(&self) -> &PciConfig {
        &self.config
    }

    fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    fn config_written(&mut self, _offset: usize, _data: &[u8]) {
        self.msix.config_written(&self.config);
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        if offset < self.msix.table_size() {
            self.msix.read_table(offset, data);
        } else if (Self::PBA_OFFSET..Self::PBA_OFFSET + self.msix.pba_size()).contains(&offset) {
            self.msix.read_pba(offset - Self::PBA_OFFSET, data);
        } else {
            data.fill(0);
        }
    }

    fn ioeventfds(&self) -> Vec<crate::devices::pci::IoEventSpec> {
        match self.notify.try_clone() {
            Ok(fd) => vec![crate::devices::pci::IoEventSpec {
                bar: 0,
                offset: Self::NOTIFY,
                fd,
                datamatch: Some(Self::NOTIFY_VALUE),
            }],
            Err(error) => {
                tracing::warn!(%error, "cannot clone the notify eventfd");
                Vec::new()
            }
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        if offset < self.msix.table_size() {
            self.msix.write_table(offset, data);
        } else if offset == Self::DOORBELL
            && let Some(&vector) = data.first()
        {
            self.msix.trigger(u16::from(vector));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_wrapper_loads_through_linux_loader() {
        let code = assemble(|a| {
            print(a, "x")?;
            spin(a)
        })
        .expect("assemble");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("g.elf");
        std::fs::write(&path, elf_image(&code, GUEST_CODE_START)).expect("write");
        let mem = crate::kvm::memory::create_guest_memory(16 << 20).expect("mem");
        let k = crate::boot::loader::load_kernel(&mem, &path).expect("load");
        assert_eq!(k.entry.rip, GUEST_CODE_START);
        assert_eq!(k.entry.protocol, crate::boot::loader::BootProtocol::Linux64);
        assert_eq!(k.kernel_end, GUEST_CODE_START + code.len() as u64);
        let mut back = vec![0u8; code.len()];
        vm_memory::Bytes::read_slice(&mem, &mut back, vm_memory::GuestAddress(GUEST_CODE_START))
            .expect("read");
        assert_eq!(back, code);
    }
}

/// What `run` logs at warn and above, formatted: to check that a guest repeating a
/// mistake is not logged without end.
pub fn warnings_logged(run: impl FnOnce()) -> String {
    // What crates log through `log` (virtio-queue) reaches tracing's subscriber, as in
    // the binary (tracing-subscriber's default `tracing-log` feature). Once per process;
    // a second call fails harmlessly.
    let _ = tracing_log::LogTracer::init();
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = buffer.0.lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Where [`warnings_logged`] collects the log.
#[derive(Clone, Default)]
struct LogBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("log buffer poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
