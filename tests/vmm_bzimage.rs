//! Pure tier, against a real distro kernel: the zero page, e820 map, command line and
//! initrd placement the VMM writes for Debian's cloud bzImage (no KVM needed; the image
//! is loaded into plain guest memory and the boot structures are read back).
//!
//! The image comes from `apt-get download linux-image-<ver>-cloud-amd64-unsigned`, cached
//! in `target/test-cache`. If it cannot be fetched the test prints `SKIPPED`, or fails
//! when `KVNET_TEST_REQUIRE` names `debian-kernel` (or `all`).

use std::path::{Path, PathBuf};
use std::process::Command;

use vmm::boot::{acpi, layout, loader};
use vmm::kvm::memory::create_guest_memory;
use vmm::linux_loader::loader::bootparam::boot_params;
use vmm::vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;

fn skip_or_fail(why: &str) {
    testkit::missing(testkit::Need::Resource("debian-kernel"), why);
}

fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-cache/debian-kernel")
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unsigned package behind the `linux-image-cloud-amd64` metapackage.
fn package_name() -> Result<String, String> {
    let depends = output(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .map(|p| format!("{p}-unsigned"))
        .ok_or_else(|| "apt-cache knows no linux-image-cloud-amd64 dependency".to_owned())
}

/// Path of a cached (or freshly downloaded) Debian cloud bzImage. Downloads happen in a
/// per-process scratch directory and end with an atomic rename, so parallel test
/// processes never see a half-written image.
fn debian_bzimage() -> Result<PathBuf, String> {
    static IMAGE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    IMAGE.get_or_init(fetch_debian_bzimage).clone()
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("boot"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

fn fetch_debian_bzimage() -> Result<PathBuf, String> {
    let dir = cache_dir();
    if let Some(found) = find_vmlinuz(&dir) {
        return Ok(found);
    }
    if testkit::which("apt-get").is_none() || testkit::which("dpkg-deb").is_none() {
        return Err("apt-get and dpkg-deb are needed to fetch it".into());
    }
    let scratch = dir.join(format!("fetch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let result = (|| {
        let package = package_name()?;
        output(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&scratch),
        )?;
        let deb = std::fs::read_dir(&scratch)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or("apt-get download produced no .deb")?;
        let unpack = scratch.join("unpack");
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpack))?;
        let kernel = find_vmlinuz(&unpack).ok_or("the package holds no /boot/vmlinuz-*")?;
        std::fs::create_dir_all(dir.join("boot")).map_err(|e| e.to_string())?;
        let cached = dir
            .join("boot")
            .join(kernel.file_name().ok_or("no file name")?);
        std::fs::rename(&kernel, &cached).map_err(|e| e.to_string())?;
        Ok(cached)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn read_file_header(path: &Path) -> vmm::linux_loader::loader::bootparam::setup_header {
    let mut file = std::fs::File::open(path).expect("open kernel");
    loader::read_setup_header(&mut file)
        .expect("read")
        .expect("bzImage has a setup header")
}

#[test]
fn debian_bzimage_zero_page_e820_cmdline_and_initrd() {
    let kernel_path = match debian_bzimage() {
        Ok(path) => path,
        Err(why) => return skip_or_fail(&why),
    };
    let file_header = read_file_header(&kernel_path);
    let mem_size = 256 * MIB;
    let mem = create_guest_memory(mem_size).expect("guest memory");
    let kernel = loader::load_kernel(&mem, &kernel_path).expect("load bzImage");
    assert_eq!(kernel.entry.protocol, loader::BootProtocol::Linux64);
    assert_eq!(
        kernel.entry.rip,
        layout::HIMEM_START + 0x200,
        "64-bit entry"
    );

    // The protected-mode kernel sits at 1 MiB, byte for byte as in the file.
    let image = std::fs::read(&kernel_path).expect("read image");
    let setup_bytes = (usize::from(file_header.setup_sects.max(4)) + 1) * 512;
    let payload = &image[setup_bytes..];
    assert_eq!(
        kernel.kernel_end,
        layout::HIMEM_START + payload.len() as u64
    );
    let mut loaded = vec![0u8; 4096];
    mem.read_slice(&mut loaded, GuestAddress(layout::HIMEM_START))
        .expect("read");
    assert_eq!(loaded, payload[..4096]);

    // An initrd goes to the top of low memory, page aligned, above the kernel.
    let dir = tempfile::tempdir().expect("tmp");
    let initrd_path = dir.path().join("initrd");
    let initrd_data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&initrd_path, &initrd_data).expect("write initrd");
    let initrd = loader::load_initrd(&mem, &initrd_path, &kernel).expect("initrd");
    assert_eq!(initrd.size, initrd_data.len() as u64);
    assert_eq!(initrd.addr % 4096, 0);
    assert_eq!(initrd.addr, (mem_size - initrd.size) & !0xfff);
    assert!(initrd.addr >= kernel.kernel_end);
    // Clear of the buffer the decompressor works in, from LOAD_PHYSICAL_ADDR.
    assert!(initrd.addr >= file_header.pref_address + u64::from(file_header.init_size));
    assert_eq!(
        kernel.reserved_end,
        file_header.pref_address + u64::from(file_header.init_size)
    );
    let mut back = vec![0u8; initrd_data.len()];
    mem.read_slice(&mut back, GuestAddress(initrd.addr))
        .expect("read initrd");
    assert_eq!(back, initrd_data);

    let cmdline = "console=ttyS0 reboot=k panic=1 root=/dev/ram0";
    let cmdline_size = loader::write_cmdline(&mem, cmdline, &kernel).expect("cmdline");
    // The kernel's own limit: a longer line would lose its end in the kernel.
    let too_long = "x".repeat(file_header.cmdline_size as usize + 1);
    let err = loader::write_cmdline(&mem, &too_long, &kernel).expect_err("too long");
    assert!(err.to_string().contains("keeps at most"), "{err}");
    let tables = acpi::build_tables(2).expect("acpi");
    tables.write(&mem).expect("write acpi");
    loader::write_boot_info(
        &mem,
        &kernel,
        cmdline_size,
        Some(initrd),
        mem_size,
        tables.rsdp_addr(),
    )
    .expect("zero page");

    let params: boot_params = mem
        .read_obj(GuestAddress(layout::ZERO_PAGE_START))
        .expect("read zero page");
    let hdr = params.hdr;
    // Fields copied from the image's own header.
    assert_eq!({ hdr.header }, 0x5372_6448, "HdrS");
    assert_eq!({ hdr.version }, { file_header.version });
    assert!({ hdr.version } >= 0x020c);
    assert_eq!({ hdr.setup_sects }, { file_header.setup_sects });
    assert_eq!({ hdr.init_size }, { file_header.init_size });
    assert_eq!({ hdr.cmdline_size }, { file_header.cmdline_size });
    assert_eq!({ hdr.pref_address }, { file_header.pref_address });
    assert_ne!({ hdr.xloadflags } & 1, 0, "XLF_KERNEL_64");
    // Fields the loader fills in.
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_ne!({ hdr.loadflags } & 1, 0, "LOADED_HIGH");
    assert_eq!({ hdr.cmd_line_ptr }, layout::CMDLINE_START as u32);
    assert_eq!({ hdr.ramdisk_image }, initrd.addr as u32);
    assert_eq!({ hdr.ramdisk_size }, initrd.size as u32);
    assert!(u64::from(hdr.initrd_addr_max) >= initrd.addr + initrd.size - 1);
    assert_eq!({ params.acpi_rsdp_addr }, layout::ACPI_START);
    let mut cl = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut cl, GuestAddress(layout::CMDLINE_START))
        .expect("read cmdline");
    assert_eq!(&cl[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(cl[cmdline.len()], 0, "NUL terminated");
    // The e820 map: low RAM, the legacy hole, RAM from 1 MiB to the end, the ECAM window.
    let e820: Vec<(u64, u64, u32)> = params.e820_table[..usize::from(params.e820_entries)]
        .iter()
        .map(|e| (e.addr, e.size, e.r#type))
        .collect();
    assert_eq!(
        e820,
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x100000 - 0x9fc00, 2),
            (0x100000, mem_size - 0x100000, 1),
            (layout::PCI_ECAM_START, layout::PCI_ECAM_SIZE, 2),
        ]
    );
    // The RSDP is where the zero page says.
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(params.acpi_rsdp_addr))
        .expect("rsdp");
    assert_eq!(&sig, b"RSD PTR ");
}

#[test]
fn debian_bzimage_needs_more_than_32_mib() {
    let kernel_path = match debian_bzimage() {
        Ok(path) => path,
        Err(why) => return skip_or_fail(&why),
    };
    let init_size = read_file_header(&kernel_path).init_size;
    let mem = create_guest_memory(32 * MIB).expect("guest memory");
    let err = loader::load_kernel(&mem, &kernel_path).expect_err("too small");
    let message = err.to_string();
    assert!(
        message.contains("32 MiB of memory is too small")
            && message.contains(&format!("{init_size:#x}")),
        "{message}"
    );
}
