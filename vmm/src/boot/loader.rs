//! Loading the kernel (ELF vmlinux with or without a PVH note, or bzImage), the initrd and
//! the command line, and writing the boot structures the kernel entry expects.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{
    BzImage, Cmdline, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability, load_cmdline,
};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile,
};

use super::layout;
use crate::kvm::GuestMemory;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// "HdrS", the bzImage setup header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// `type_of_loader` for a boot loader without an assigned id.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// loadflags: the protected-mode kernel is loaded at 1 MiB.
const LOADED_HIGH: u8 = 1;
/// xloadflags: the kernel has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;
/// Oldest boot protocol with a 64-bit entry (2.12).
const MIN_BOOT_PROTOCOL_64: u16 = 0x020c;
/// The 64-bit entry's offset from the protected-mode load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// Alignment a relocatable ELF kernel expects (CONFIG_PHYSICAL_ALIGN).
const ELF_KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// PVH start info magic ("xEn3" with the top bit set).
const PVH_MAGIC: u32 = 0x336e_c578;

/// Errors loading what the guest boots.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Opening or reading an input file failed.
    #[error("cannot read {what} {path}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A FIFO, device or directory where a file was expected.
    #[error("{what} {path} is not a regular file")]
    NotRegularFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Neither an ELF nor a bzImage.
    #[error("kernel {path} is not a recognised image (neither an ELF vmlinux nor a bzImage)")]
    UnrecognisedKernel {
        /// The file.
        path: PathBuf,
    },
    /// The bzImage cannot be entered in 64-bit mode.
    #[error(
        "kernel {path} is a bzImage with boot protocol {version:#06x} and xloadflags {xloadflags:#x}: it has no 64-bit entry point (needs 2.12+ with XLF_KERNEL_64)"
    )]
    No64BitEntry {
        /// The file.
        path: PathBuf,
        /// Boot protocol version.
        version: u16,
        /// xloadflags.
        xloadflags: u16,
    },
    /// linux-loader rejected the image.
    #[error("cannot load {format} kernel {path}")]
    Load {
        /// "ELF" or "bzImage".
        format: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The guest RAM cannot hold the decompressed kernel.
    #[error(
        "{memory_mib} MiB of memory is too small for kernel {path}: it needs {needed_mib} MiB below 3 GiB for its init_size of {init_size:#x} bytes"
    )]
    MemoryTooSmall {
        /// The file.
        path: PathBuf,
        /// Configured RAM.
        memory_mib: u64,
        /// Needed RAM.
        needed_mib: u64,
        /// Header init_size.
        init_size: u32,
    },
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error(
        "initrd {path} ({size} bytes) does not fit between the kernel end {kernel_end:#x} (its decompression included) and {limit:#x}"
    )]
    InitrdTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of what the kernel uses while it boots.
        kernel_end: u64,
        /// Highest usable address.
        limit: u64,
    },
    /// The command line is not acceptable.
    #[error("invalid kernel command line {cmdline:?}")]
    Cmdline {
        /// The string.
        cmdline: String,
        /// Why.
        #[source]
        source: linux_loader::cmdline::Error,
    },
    /// The command line is longer than the kernel takes: it would cut it short.
    #[error(
        "kernel command line is {len} bytes long; this kernel keeps at most {max} (a bzImage's cmdline_size; 2047 for an ELF kernel)"
    )]
    CmdlineTooLong {
        /// The line's length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// Writing a boot structure into guest memory failed.
    #[error("cannot write the {what} into guest memory")]
    Write {
        /// Which structure.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, identity paging, `rsi` = zero page.
    Linux64,
    /// Xen PVH: 32-bit protected mode without paging, `rbx` = `hvm_start_info`.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// First instruction.
    pub rip: u64,
    /// Register conventions at that instruction.
    pub protocol: BootProtocol,
}

/// A kernel placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The entry point.
    pub entry: BootEntry,
    /// The bzImage setup header, seeding the zero page (None for ELF).
    pub setup_header: Option<setup_header>,
    /// First byte after the loaded image.
    pub kernel_end: u64,
    /// First byte after all the kernel uses while it boots: its image and, for a
    /// bzImage, the buffer its decompressor works in. The initrd goes above it.
    pub reserved_end: u64,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest-physical start (page aligned).
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// One e820 map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map of a guest with `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: layout::LOW_RAM_END,
            kind: E820_RAM,
        },
        // EBDA, VGA hole, ACPI tables and BIOS area.
        E820Entry {
            addr: layout::LOW_RAM_END,
            size: layout::HIMEM_START - layout::LOW_RAM_END,
            kind: E820_RESERVED,
        },
    ];
    for (region_start, len) in layout::ram_regions(mem_size) {
        let start = region_start.max(layout::HIMEM_START);
        let end = region_start + len;
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    // Linux only trusts an MCFG region that the firmware marks reserved.
    map.push(E820Entry {
        addr: layout::PCI_ECAM_START,
        size: layout::PCI_ECAM_SIZE,
        kind: E820_RESERVED,
    });
    map.sort_by_key(|e| e.addr);
    map
}

/// Opens `path`, which must be a regular file: a FIFO would block the VMM for good,
/// `/dev/zero` would pass for empty, and a directory for unreadable.
fn open_regular(path: &Path, what: &'static str) -> Result<File, LoaderError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| LoaderError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    // Non-blocking, so that opening a FIFO with no writer returns at once.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(LoaderError::NotRegularFile {
            what,
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Loads `path` at its preferred address: ELF first (PVH entry when it has the note),
/// then bzImage (64-bit entry). Checks that `mem` can hold the kernel's `init_size`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<LoadedKernel, LoaderError> {
    let read_err = |source| LoaderError::Read {
        what: "kernel",
        path: path.to_owned(),
        source,
    };
    let mut file = open_regular(path, "kernel")?;
    let mut magic = [0u8; 4];
    let n = std::io::Read::read(&mut file, &mut magic).map_err(read_err)?;
    if n == 4 && magic == *b"\x7fELF" {
        let result = load_with::<Elf, _>(mem, &mut file, "ELF", path)?;
        let entry = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => BootEntry {
                rip: addr.raw_value(),
                protocol: BootProtocol::Pvh,
            },
            _ => BootEntry {
                rip: result.kernel_load.raw_value(),
                protocol: BootProtocol::Linux64,
            },
        };
        return Ok(LoadedKernel {
            entry,
            setup_header: None,
            kernel_end: result.kernel_end,
            reserved_end: result.kernel_end,
        });
    }
    let header = read_setup_header(&mut file)
        .map_err(read_err)?
        .filter(|h| h.header == HDRS_MAGIC && h.boot_flag == BOOT_FLAG)
        .ok_or_else(|| LoaderError::UnrecognisedKernel {
            path: path.to_owned(),
        })?;
    if header.version < MIN_BOOT_PROTOCOL_64 || header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry {
            path: path.to_owned(),
            version: header.version,
            xloadflags: header.xloadflags,
        });
    }
    check_init_size(mem, &header, path)?;
    let result = load_with::<BzImage, _>(mem, &mut file, "bzImage", path)?;
    Ok(LoadedKernel {
        entry: BootEntry {
            rip: result.kernel_load.raw_value() + ENTRY_64_OFFSET,
            protocol: BootProtocol::Linux64,
        },
        setup_header: result.setup_header,
        kernel_end: result.kernel_end,
        reserved_end: result.kernel_end.max(decompression_end(&header)),
    })
}

fn load_with<L: KernelLoader, F>(
    mem: &GuestMemory,
    file: &mut F,
    format: &'static str,
    path: &Path,
) -> Result<KernelLoaderResult, LoaderError>
where
    F: std::io::Read + ReadVolatile + std::io::Seek,
{
    L::load(mem, None, file, Some(GuestAddress(layout::HIMEM_START))).map_err(|source| {
        LoaderError::Load {
            format,
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads the setup header at offset 0x1f1 of a bzImage (None if the file is too short).
pub fn read_setup_header(
    file: &mut (impl std::io::Read + std::io::Seek),
) -> std::io::Result<Option<setup_header>> {
    use vm_memory::ByteValued;
    file.seek(std::io::SeekFrom::Start(0x1f1))?;
    let mut header = setup_header::default();
    match file.read_exact(header.as_mut_slice()) {
        Ok(()) => Ok(Some(header)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The end of the `init_size` bytes a bzImage's decompressor needs (boot.rst: "starting
/// at the kernel runtime start address"). It runs from the 1 MiB load address rounded up
/// to `kernel_alignment`, but not below `pref_address` (LOAD_PHYSICAL_ADDR, 16 MiB for
/// distro kernels), as the decompressor's head_64.S places itself.
fn decompression_end(header: &setup_header) -> u64 {
    let alignment = u64::from(header.kernel_alignment).max(1);
    let start = layout::HIMEM_START
        .next_multiple_of(alignment)
        .max(header.pref_address);
    start.saturating_add(u64::from(header.init_size))
}

/// The decompressor's buffer must lie in low RAM.
fn check_init_size(
    mem: &GuestMemory,
    header: &setup_header,
    path: &Path,
) -> Result<(), LoaderError> {
    let low_end = low_ram_end(mem);
    let needed = decompression_end(header);
    if needed > low_end {
        return Err(LoaderError::MemoryTooSmall {
            path: path.to_owned(),
            memory_mib: mem.iter().map(|r| r.len()).sum::<u64>() >> 20,
            needed_mib: needed.div_ceil(1 << 20),
            init_size: header.init_size,
        });
    }
    Ok(())
}

/// End of the RAM region that starts at 0.
fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .find(|r| r.start_addr().raw_value() == 0)
        .map(|r| r.len())
        .unwrap_or(0)
}

/// Loads the initrd at the top of low memory (page aligned, below `initrd_addr_max`).
pub fn load_initrd(
    mem: &GuestMemory,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<LoadedInitrd, LoaderError> {
    let read_err = |source| LoaderError::Read {
        what: "initrd",
        path: path.to_owned(),
        source,
    };
    let mut file = open_regular(path, "initrd")?;
    let size = file.metadata().map_err(read_err)?.len();
    let mut limit = low_ram_end(mem);
    if let Some(h) = kernel.setup_header.filter(|h| h.initrd_addr_max != 0) {
        limit = limit.min(u64::from(h.initrd_addr_max) + 1);
    }
    let too_large = || LoaderError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        kernel_end: kernel.reserved_end,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel.reserved_end {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| LoaderError::Read {
            what: "initrd",
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
    Ok(LoadedInitrd { addr, size })
}

/// The longest command line x86 Linux keeps (`COMMAND_LINE_SIZE` less its NUL).
const ELF_CMDLINE_MAX: usize = 2047;

/// Writes the command line at [`layout::CMDLINE_START`]; returns its size with the NUL.
/// A bzImage's `cmdline_size` is the longest line it takes (2047 bytes for most
/// kernels); an ELF kernel (PVH entry) says nothing, and x86 Linux keeps 2047 bytes
/// (`COMMAND_LINE_SIZE`). A longer one is refused, as the kernel would silently cut its
/// end off.
pub fn write_cmdline(
    mem: &GuestMemory,
    cmdline: &str,
    kernel: &LoadedKernel,
) -> Result<u32, LoaderError> {
    let max = kernel
        .setup_header
        .as_ref()
        .map_or(ELF_CMDLINE_MAX, |header| header.cmdline_size as usize);
    if cmdline.len() > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let cmdline_err = |source| LoaderError::Cmdline {
        cmdline: cmdline.to_owned(),
        source,
    };
    let mut cl = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(cmdline_err)?;
    cl.insert_str(cmdline).map_err(cmdline_err)?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &cl).map_err(|e| {
        LoaderError::Write {
            what: "command line",
            source: Box::new(e),
        }
    })?;
    Ok(cmdline.len() as u32 + 1)
}

/// The zero page for the 64-bit boot protocol.
pub fn build_boot_params(
    setup_header: Option<setup_header>,
    cmdline_size: u32,
    initrd: Option<LoadedInitrd>,
    e820: &[E820Entry],
    rsdp_addr: u64,
) -> boot_params {
    let mut params = boot_params::default();
    match setup_header {
        Some(header) => params.hdr = header,
        None => {
            params.hdr.boot_flag = BOOT_FLAG;
            params.hdr.header = HDRS_MAGIC;
            params.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
        }
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    // A bzImage's own value is its limit, for the loader to read; ELF kernels have none.
    if setup_header.is_none() {
        params.hdr.cmdline_size = cmdline_size;
    }
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    params.acpi_rsdp_addr = rsdp_addr;
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

/// The PVH start info and its memory map and module list.
pub fn build_pvh_start_info(
    initrd: Option<LoadedInitrd>,
    e820: &[E820Entry],
    rsdp_addr: u64,
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Vec<hvm_modlist_entry>,
) {
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp_addr,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() {
            0
        } else {
            layout::PVH_MODLIST_START
        },
        ..Default::default()
    };
    (info, memmap, modules)
}

/// Writes the zero page or the PVH start info for `entry`.
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline_size: u32,
    initrd: Option<LoadedInitrd>,
    mem_size: u64,
    rsdp_addr: u64,
) -> Result<(), LoaderError> {
    let e820 = e820_map(mem_size);
    let write_err = |what| {
        move |e: linux_loader::configurator::Error| LoaderError::Write {
            what,
            source: Box::new(e),
        }
    };
    match kernel.entry.protocol {
        BootProtocol::Linux64 => {
            let params =
                build_boot_params(kernel.setup_header, cmdline_size, initrd, &e820, rsdp_addr);
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START)),
                mem,
            )
            .map_err(write_err("zero page"))
        }
        BootProtocol::Pvh => {
            let (info, memmap, modules) = build_pvh_start_info(initrd, &e820, rsdp_addr);
            let mut params = BootParams::new(&info, GuestAddress(layout::PVH_INFO_START));
            params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP_START));
            if !modules.is_empty() {
                params.set_modules(&modules, GuestAddress(layout::PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&params, mem).map_err(write_err("PVH start info"))
        }
    }
}

/// GDT: null, null, code (0x10 = `__BOOT_CS`), data (0x18 = `__BOOT_DS`).
pub fn gdt_entries(protocol: BootProtocol) -> [u64; 4] {
    let code = match protocol {
        BootProtocol::Linux64 => 0x00af_9b00_0000_ffff, // 64-bit code, L=1
        BootProtocol::Pvh => 0x00cf_9b00_0000_ffff,     // 32-bit code, D=1
    };
    [0, 0, code, 0x00cf_9300_0000_ffff]
}

/// Page table entry flags: present | writable, plus page size for 2 MiB leaves.
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_2M_PAGE: u64 = 0x83;

/// Writes the GDT, an empty IDT and page tables identity-mapping 0..4 GiB.
pub fn write_boot_structures(mem: &GuestMemory, protocol: BootProtocol) -> Result<(), LoaderError> {
    let write = |addr: u64, value: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|e| LoaderError::Write {
                what: "boot GDT and page tables",
                source: Box::new(e),
            })
    };
    for (i, entry) in gdt_entries(protocol).iter().enumerate() {
        write(layout::GDT_START + i as u64 * 8, *entry)?;
    }
    write(layout::IDT_START, 0)?;
    write(layout::PML4_START, layout::PDPTE_START | PTE_PRESENT_RW)?;
    for gib in 0..4u64 {
        let pd = layout::PDE_START + gib * 0x1000;
        write(layout::PDPTE_START + gib * 8, pd | PTE_PRESENT_RW)?;
        for i in 0..512u64 {
            write(pd + i * 8, ((gib << 30) | (i << 21)) | PDE_2M_PAGE)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened_and_a_fifo_does_not_block() {
        let dir = tempfile::tempdir().expect("tmp");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        for path in [fifo.as_path(), Path::new("/dev/zero"), dir.path()] {
            match open_regular(path, "initrd") {
                Err(error @ LoaderError::NotRegularFile { .. }) => assert_eq!(
                    error.to_string(),
                    format!("initrd {} is not a regular file", path.display())
                ),
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let file = dir.path().join("initrd");
        std::fs::write(&file, b"x").expect("write");
        assert!(open_regular(&file, "initrd").is_ok());
    }

    #[test]
    fn e820_has_low_ram_hole_high_ram_and_reserved_ecam() {
        let map = e820_map(128 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (128 << 20) - 0x100000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0xe000_0000,
                    size: 1 << 20,
                    kind: E820_RESERVED
                },
            ]
        );
    }

    #[test]
    fn e820_splits_ram_around_the_32bit_hole() {
        let map = e820_map(4 << 30);
        let ram: Vec<(u64, u64)> = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| (e.addr, e.size))
            .collect();
        assert_eq!(
            ram,
            vec![
                (0, 0x9fc00),
                (0x100000, 0xc000_0000 - 0x100000),
                (1 << 32, 1 << 30)
            ]
        );
    }

    #[test]
    fn the_decompressor_works_from_the_preferred_address_or_the_aligned_load_address() {
        let header = |pref_address: u64, kernel_alignment: u32| setup_header {
            pref_address,
            kernel_alignment,
            init_size: 0x300_0000,
            ..Default::default()
        };
        // A distro kernel: LOAD_PHYSICAL_ADDR 16 MiB, 2 MiB alignment.
        assert_eq!(
            decompression_end(&header(0x100_0000, 0x20_0000)),
            0x400_0000
        );
        // An old header without pref_address: from 1 MiB rounded up to its alignment.
        assert_eq!(decompression_end(&header(0, 0x20_0000)), 0x320_0000);
        assert_eq!(decompression_end(&header(0, 0)), 0x310_0000);
    }

    #[test]
    fn an_elf_kernels_command_line_is_held_to_what_linux_keeps() {
        let mem = crate::kvm::memory::create_guest_memory(16 << 20).expect("mem");
        let elf = LoadedKernel {
            entry: BootEntry {
                rip: 0x100_0000,
                protocol: BootProtocol::Pvh,
            },
            setup_header: None,
            kernel_end: 0x200_0000,
            reserved_end: 0x200_0000,
        };
        let longest = "x".repeat(ELF_CMDLINE_MAX);
        assert_eq!(
            write_cmdline(&mem, &longest, &elf).expect("2047 bytes"),
            2048
        );
        let err = write_cmdline(&mem, &format!("{longest}x"), &elf).expect_err("2048 bytes");
        assert!(err.to_string().contains("keeps at most 2047"), "{err}");
    }

    #[test]
    fn elf_boot_params_get_a_synthetic_header() {
        let e820 = e820_map(64 << 20);
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let p = build_boot_params(None, 20, Some(initrd), &e820, 0xe0000);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert_eq!({ p.hdr.kernel_alignment }, 0x100_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 20);
        assert_eq!(
            ({ p.hdr.ramdisk_image }, { p.hdr.ramdisk_size }),
            (0x300_0000, 0x1234)
        );
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.e820_table[2].addr }, 0x100000);
    }

    #[test]
    fn pvh_start_info_lists_memmap_and_initrd() {
        let e820 = e820_map(64 << 20);
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1000,
        };
        let (info, memmap, modules) = build_pvh_start_info(Some(initrd), &e820, 0xe0000);
        assert_eq!(info.magic, PVH_MAGIC);
        assert_eq!(info.memmap_entries as usize, memmap.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, layout::PVH_MODLIST_START);
        assert_eq!(modules[0].paddr, 0x300_0000);
        assert_eq!(info.rsdp_paddr, 0xe0000);
    }

    #[test]
    fn page_tables_identity_map_4gib() {
        let mem = crate::kvm::memory::create_guest_memory(16 << 20).expect("mem");
        write_boot_structures(&mem, BootProtocol::Linux64).expect("write");
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).expect("read");
        assert_eq!(read(layout::PML4_START), layout::PDPTE_START | 3);
        assert_eq!(
            read(layout::PDPTE_START + 3 * 8),
            (layout::PDE_START + 0x3000) | 3
        );
        // The PDE mapping the LAPIC page (0xfee00000) in the fourth GiB.
        let lapic_pde = layout::PDE_START + 0x3000 + ((0xfee0_0000u64 >> 21) & 511) * 8;
        assert_eq!(read(lapic_pde), 0xfee0_0000 | 0x83);
        assert_eq!(read(layout::GDT_START + 16), 0x00af_9b00_0000_ffff);
    }
}
