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

/// A subroutine printing `eax` as 8 lowercase hex digits on COM1. Call it with
/// `a.call(label)`; clobbers nothing but flags.
pub fn hex32_subroutine(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<(), IcedError> {
    a.set_label(label)?;
    a.push(rax)?;
    a.push(rbx)?;
    a.push(rcx)?;
    a.push(rdx)?;
    a.mov(ebx, eax)?;
    a.mov(ecx, 8)?;
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
