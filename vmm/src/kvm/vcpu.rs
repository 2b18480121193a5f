//! vCPUs: boot register state, CPUID/MSR/LAPIC setup and the KVM_RUN loop on its own thread.

// The vCPU thread reads and writes the kvm_run page KVM shares with it.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_lapic_state, kvm_regs, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::boot::cpuid;
use crate::boot::layout;
use crate::boot::loader::{BootEntry, BootProtocol, gdt_entries};
use crate::devices::bus::Bus;
use crate::event_loop::{ExitReason, ExitSignal};

use super::vm::VmFd;

/// Why a vCPU stopped the VM with an error. Carries values only, so it can be cloned
/// to whoever waits for the VM.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VcpuError {
    /// Configuring the vCPU failed.
    #[error("vcpu {vcpu}: {op} failed: {message}")]
    Setup {
        /// vCPU index.
        vcpu: u32,
        /// Which ioctl.
        op: &'static str,
        /// The OS error.
        message: String,
    },
    /// The guest caused an exit the VMM does not handle.
    #[error("vcpu {vcpu}: guest stopped with unhandled exit {exit} at rip {rip:#x}")]
    UnhandledExit {
        /// vCPU index.
        vcpu: u32,
        /// KVM exit reason, with details.
        exit: String,
        /// Guest RIP when it happened.
        rip: u64,
    },
    /// The vCPU's thread panicked (a bug of the VMM's, in a device model it ran).
    #[error("vcpu {vcpu}: its thread panicked")]
    Panicked {
        /// vCPU index.
        vcpu: u32,
    },
    /// KVM_RUN itself failed.
    #[error("vcpu {vcpu}: KVM_RUN failed at rip {rip:#x}: {message}")]
    Run {
        /// vCPU index.
        vcpu: u32,
        /// Guest RIP.
        rip: u64,
        /// The OS error.
        message: String,
    },
}

/// What ended one vCPU's run loop (the VM-wide outcome goes to the [`ExitSignal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuExitReason {
    /// The stop flag was seen.
    Stopped,
    /// The loop ended because the VM is exiting (reset, poweroff or an error).
    VmExit,
}

/// One vCPU and the buses its exits are routed to.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// KVM_RUN's EAGAINs in a row (see [`MAX_EAGAIN_IN_A_ROW`]).
    eagain_in_a_row: u32,
}

/// How many KVM_RUNs in a row may fail with EAGAIN, [`EAGAIN_PAUSE`] apart, before the
/// vCPU gives up: KVM starts a kernel thread for the VM at its first run, which counts
/// against the user's process limit and fails with EAGAIN for as long as it is reached.
const MAX_EAGAIN_IN_A_ROW: u32 = 200;
const EAGAIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

// Where the signal handler finds this thread's `kvm_run.immediate_exit`.
thread_local! {
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 1
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` never allocates; the TLS slot is const-initialised.
    let _ = IMMEDIATE_EXIT.try_with(|slot| {
        let ptr = slot.get();
        if !ptr.is_null() {
            // SAFETY: the pointer was set by this thread to the immediate_exit byte of its
            // own mmapped kvm_run, and is cleared before that mapping goes away. A volatile
            // byte store is async-signal-safe.
            unsafe { ptr.write_volatile(1) };
        }
    });
}

/// This thread's kick target while it lives: cleared when dropped, however the vCPU
/// loop ends (a panic in a device model included), so that a kick that comes later
/// writes nowhere rather than into a freed kvm_run mapping.
struct KickTarget;

impl KickTarget {
    fn set(immediate_exit: *mut u8) -> KickTarget {
        IMMEDIATE_EXIT.with(|slot| slot.set(immediate_exit));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        let _ = IMMEDIATE_EXIT.try_with(|slot| slot.set(std::ptr::null_mut()));
    }
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), vmm_sys_util::errno::Error>> =
        std::sync::OnceLock::new();
    *INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler))
}

impl Vcpu {
    /// Creates vCPU `id` of `vm`.
    pub fn new(vm: &VmFd, id: u32, pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(setup(id, "KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            fd,
            id,
            pio,
            mmio,
            eagain_in_a_row: 0,
        })
    }

    /// This vCPU's index (also its APIC id).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sets CPUID (normalised for this vCPU), the boot MSRs, LINT0/LINT1 and the FPU.
    pub fn configure_cpu(&self, supported: &CpuId, vcpu_count: u32) -> Result<(), VcpuError> {
        let mut entries = supported.as_slice().to_vec();
        cpuid::normalize(&mut entries, self.id, vcpu_count);
        let table = CpuId::from_entries(&entries).map_err(|e| VcpuError::Setup {
            vcpu: self.id,
            op: "building the CPUID table",
            message: format!("{e:?}"),
        })?;
        self.fd
            .set_cpuid2(&table)
            .map_err(setup(self.id, "KVM_SET_CPUID2"))?;
        // MSRs after CPUID: KVM decides which MSRs exist from the guest CPUID.
        let boot_msrs = cpuid::boot_msrs(&entries);
        let msrs = Msrs::from_entries(&boot_msrs).map_err(|e| VcpuError::Setup {
            vcpu: self.id,
            op: "building the MSR list",
            message: format!("{e:?}"),
        })?;
        let written = self
            .fd
            .set_msrs(&msrs)
            .map_err(setup(self.id, "KVM_SET_MSRS"))?;
        // An older KVM refusing AMD's HWCR bit (last) costs the guest a boot warning.
        let refused_only_hwcr = written + 1 == boot_msrs.len()
            && boot_msrs
                .last()
                .is_some_and(|last| last.index == cpuid::msr::AMD_HWCR);
        if refused_only_hwcr {
            tracing::debug!(
                vcpu = self.id,
                "KVM refused AMD's HWCR TscFreqSel (before Linux 6.7)"
            );
        } else if written != msrs.as_slice().len() {
            tracing::warn!(
                vcpu = self.id,
                written,
                wanted = msrs.as_slice().len(),
                "KVM accepted only part of the boot MSRs"
            );
        }
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(setup(self.id, "KVM_GET_LAPIC"))?;
        set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(setup(self.id, "KVM_SET_LAPIC"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd
            .set_fpu(&fpu)
            .map_err(setup(self.id, "KVM_SET_FPU"))?;
        Ok(())
    }

    /// Puts the boot vCPU at the kernel entry: 64-bit long mode with identity paging and
    /// `rsi` = zero page, or 32-bit protected mode with `rbx` = hvm_start_info for PVH.
    pub fn configure_boot_registers(&self, entry: &BootEntry) -> Result<(), VcpuError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(setup(self.id, "KVM_GET_SREGS"))?;
        let gdt = gdt_entries(entry.protocol);
        let code = segment_from_gdt(gdt[2], 2);
        let data = segment_from_gdt(gdt[3], 3);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = layout::GDT_START;
        sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
        sregs.idt.base = layout::IDT_START;
        sregs.idt.limit = 7;
        let mut regs = kvm_regs {
            rflags: 2,
            rip: entry.rip,
            ..Default::default()
        };
        match entry.protocol {
            BootProtocol::Linux64 => {
                sregs.cr3 = layout::PML4_START;
                sregs.cr4 = X86_CR4_PAE;
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
                sregs.efer = EFER_LME | EFER_LMA;
                regs.rsp = layout::BOOT_STACK_POINTER;
                regs.rbp = layout::BOOT_STACK_POINTER;
                regs.rsi = layout::ZERO_PAGE_START;
            }
            BootProtocol::Pvh => {
                sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
                sregs.cr4 = 0;
                sregs.efer = 0;
                regs.rbx = layout::PVH_INFO_START;
            }
        }
        self.fd
            .set_sregs(&sregs)
            .map_err(setup(self.id, "KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs)
            .map_err(setup(self.id, "KVM_SET_REGS"))?;
        Ok(())
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    /// Runs the vCPU until `stop` is set or the VM exits; reports exits to `exit`.
    ///
    /// Call on the thread that owns the vCPU: the kick signal sets this thread's
    /// `immediate_exit`, so a stop can never be lost between the flag check and KVM_RUN.
    pub fn run_loop(mut self, stop: &AtomicBool, exit: &ExitSignal) -> VcpuExitReason {
        let immediate_exit: *mut u8 = &mut self.fd.get_kvm_run().immediate_exit;
        // Dropped before `self` and its kvm_run mapping, on an unwind too.
        let _kick_target = KickTarget::set(immediate_exit);
        self.run_until_exit(stop, exit)
    }

    fn run_until_exit(&mut self, stop: &AtomicBool, exit: &ExitSignal) -> VcpuExitReason {
        loop {
            if stop.load(Ordering::Acquire) {
                return VcpuExitReason::Stopped;
            }
            match self.run_once() {
                Ok(None) => {}
                Ok(Some(outcome)) => {
                    exit.request(outcome);
                    return VcpuExitReason::VmExit;
                }
                Err(error) => {
                    exit.request(Err(error));
                    return VcpuExitReason::VmExit;
                }
            }
        }
    }

    /// The width of each element of the port I/O exit being handled (1, 2 or 4 bytes).
    fn io_width(&mut self) -> usize {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `io` member of the exit union for KVM_EXIT_IO, the
        // exit being handled.
        let io = unsafe { run.__bindgen_anon_1.io };
        usize::from(io.size).max(1)
    }

    /// One KVM_RUN. `Ok(None)`: keep going; `Ok(Some(..))`: the VM should end.
    fn run_once(&mut self) -> Result<Option<Result<ExitReason, VcpuError>>, VcpuError> {
        let id = self.id;
        let ran = self.fd.run();
        if ran.is_ok() {
            self.eagain_in_a_row = 0;
        }
        let unhandled = match ran {
            // A string instruction (`rep ins`/`rep outs`) may bring `count` elements in
            // one exit, back to back in `data`: each is its own access to the port.
            Ok(VcpuExit::IoOut(port, data)) => {
                let (at, len) = (data.as_ptr(), data.len());
                let width = self.io_width();
                // SAFETY: `at` and `len` are those of the slice kvm-ioctls just made of
                // the I/O data in this vCPU's kvm_run mapping, which lives as long as
                // `self.fd`; `io_width` copied only the `io` header, in the mapping's first
                // page, where KVM never puts the data (KVM_PIO_PAGE_OFFSET), and nothing
                // else touches the mapping until the next KVM_RUN.
                let data = unsafe { std::slice::from_raw_parts(at, len) };
                for element in data.chunks(width) {
                    if !self.pio.write(u64::from(port), element) {
                        tracing::trace!(vcpu = id, port = %format_args!("{port:#x}"), ?element,
                            "write to unmapped port");
                    }
                }
                return Ok(None);
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let (at, len) = (data.as_mut_ptr(), data.len());
                let width = self.io_width();
                // SAFETY: as for `IoOut` above.
                let data = unsafe { std::slice::from_raw_parts_mut(at, len) };
                for element in data.chunks_mut(width) {
                    if !self.pio.read(u64::from(port), element) {
                        element.fill(0xff);
                    }
                }
                return Ok(None);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !self.mmio.read(addr, data) {
                    tracing::trace!(vcpu = id, addr = %format_args!("{addr:#x}"),
                        "read from unmapped MMIO");
                    data.fill(0xff);
                }
                return Ok(None);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !self.mmio.write(addr, data) {
                    tracing::trace!(vcpu = id, addr = %format_args!("{addr:#x}"), ?data,
                        "write to unmapped MMIO");
                }
                return Ok(None);
            }
            Ok(VcpuExit::Shutdown) => {
                // A triple fault: what `reboot=t` does, and what a crashed guest does. Like
                // any reset it ends the VM (as in Firecracker): nothing runs it again.
                tracing::warn!(vcpu = id, rip = %format_args!("{:#x}", self.rip()),
                    "guest triple fault: the VM ends, as on a reset");
                return Ok(Some(Ok(ExitReason::Reset)));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => {
                    return Ok(Some(Ok(ExitReason::Poweroff)));
                }
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => return Ok(Some(Ok(ExitReason::Reset))),
                other => format!("KVM_EXIT_SYSTEM_EVENT type {other}"),
            },
            Ok(VcpuExit::InternalError) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: KVM filled the `internal` member of the exit union for
                // KVM_EXIT_INTERNAL_ERROR, which is the exit being handled.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                format!(
                    "KVM_EXIT_INTERNAL_ERROR (suberror {}{}, data {:x?})",
                    internal.suberror,
                    if internal.suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                        ": emulation failure"
                    } else {
                        ""
                    },
                    &internal.data[..n]
                )
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                format!("KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, cpu {cpu})")
            }
            Ok(VcpuExit::Hlt) => "KVM_EXIT_HLT".to_owned(),
            Ok(other) => format!("{other:?}"),
            Err(e) if e.errno() == libc::EINTR => {
                self.fd.set_kvm_immediate_exit(0);
                return Ok(None);
            }
            Err(e) if e.errno() == libc::EAGAIN && self.eagain_in_a_row < MAX_EAGAIN_IN_A_ROW => {
                self.eagain_in_a_row += 1;
                self.fd.set_kvm_immediate_exit(0);
                std::thread::sleep(EAGAIN_PAUSE);
                return Ok(None);
            }
            Err(e) if e.errno() == libc::EAGAIN => {
                return Err(VcpuError::Run {
                    vcpu: id,
                    rip: self.rip(),
                    message: format!(
                        "{e}, {MAX_EAGAIN_IN_A_ROW} times in a row (KVM starts a kernel thread \
                         for the VM at its first run: is the user's process limit reached?)"
                    ),
                });
            }
            Err(e) => {
                return Err(VcpuError::Run {
                    vcpu: id,
                    rip: self.rip(),
                    message: e.to_string(),
                });
            }
        };
        Err(VcpuError::UnhandledExit {
            vcpu: id,
            exit: unhandled,
            rip: self.rip(),
        })
    }
}

fn setup(vcpu: u32, op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |e| VcpuError::Setup {
        vcpu,
        op,
        message: e.to_string(),
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// LAPIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_LVT_MASKED: u32 = 1 << 16;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// LINT0 = ExtINT (the PIC's output), masked; LINT1 = NMI. KVM resets the boot CPU's
/// LINT0 unmasked, and a guest on the IOAPIC (Linux with a hardware-reduced FADT
/// never programs the 8259) keeps it so: KVM's 8259 starts with every line open and
/// vector base 0, so the serial IRQ, routed to both chips, would also arrive as vector
/// 4, the overflow exception. Masked, Linux leaves it masked ("masked ExtINT on
/// CPU#0"), as its own IOAPIC set-up does in check_timer().
fn set_lint(lapic: &mut kvm_lapic_state) {
    let set_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(
        lapic,
        APIC_LVT0,
        set_mode(lvt0, APIC_MODE_EXTINT) | APIC_LVT_MASKED,
    );
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, set_mode(lvt1, APIC_MODE_NMI));
}

/// The KVM segment register matching GDT descriptor `entry` at `index`.
fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vCPU loop that panics (a device model's bug) leaves no kick target behind:
    /// its kvm_run mapping goes with the unwinding vCPU.
    #[test]
    fn the_kick_target_is_cleared_when_the_loop_unwinds() {
        let mut byte = 0u8;
        let target: *mut u8 = &mut byte;
        let unwound = std::panic::catch_unwind(|| {
            let _kick_target = KickTarget::set(target);
            assert_eq!(IMMEDIATE_EXIT.with(Cell::get), target);
            panic!("a device model's bug");
        });
        assert!(unwound.is_err());
        assert!(IMMEDIATE_EXIT.with(Cell::get).is_null());
    }

    #[test]
    fn code64_descriptor_decodes_to_long_mode_segment() {
        let s = segment_from_gdt(0x00af_9b00_0000_ffff, 2);
        assert_eq!(
            (s.selector, s.type_, s.l, s.db, s.g, s.present, s.s),
            (0x10, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!((s.base, s.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn lint_modes_are_masked_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        // KVM's reset state of the boot CPU: ExtINT, unmasked.
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x0000_0700);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }
}
