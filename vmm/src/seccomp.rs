//! The syscall filter `kvnet-vmm` runs under once its machine is built, as Firecracker
//! and cloud-hypervisor run theirs. A guest that takes over the device emulation (a
//! bug in the virtio-net model, say) finds a process that can run its VM and little
//! else: it cannot open files, make network sockets, start programs, or use the KVM
//! ioctls that build VMs and map memory.
//!
//! The list is what the threads do after [`crate::Vm::new`]: the vCPUs (`KVM_RUN`, and
//! the ioctls that route interrupts and move ioeventfds as the guest programs its
//! devices), the virtio-net workers (epoll, `readv`/`writev` on the tap,
//! `TUNSETOFFLOAD`), the console and signal threads, threads starting and ending, and
//! the way out (the terminal's settings put back). What only some configurations do is
//! allowed only to them (see [`Extras`]).
//!
//! A syscall outside the list kills the process with `SIGSYS`, and the kernel logs its
//! number (`dmesg`: `audit: type=1326 ... syscall=N`). `--seccomp log` lets such calls
//! through and only logs them, to find what a new guest or host needs.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use vmm_sys_util::ioctl::{_IOC_NONE, _IOC_READ, _IOC_WRITE, ioctl_expr};

/// How the filter treats a syscall outside its list (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Kill the VMM (the kernel logs the call).
    #[default]
    On,
    /// Let the call through and have the kernel log it.
    Log,
    /// No filter.
    Off,
}

/// What the filter allows beyond the VM's own work, because this configuration does it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extras {
    /// `--serial file:PATH`: the console log opens, inspects and renames files as it
    /// rotates (see [`crate::devices::console_log`]).
    pub console_file: bool,
    /// `--net network=NAME`: the ports are given back to kvnetd over its Unix socket
    /// when the VM ends.
    pub kvnetd_ports: bool,
    /// `KVNET_VMM_TIMINGS`: `/proc/self` is read at the first `KVM_RUN`.
    pub proc_reads: bool,
}

impl Extras {
    /// What `config`, and `KVNET_VMM_TIMINGS` when `timings`, need.
    pub fn for_config(config: &crate::VmConfig, timings: bool) -> Extras {
        Extras {
            console_file: matches!(config.serial, crate::SerialSink::File(_)),
            kvnetd_ports: config.net.iter().any(|spec| {
                matches!(
                    spec.tap,
                    crate::devices::virtio::net::TapSource::Network { .. }
                )
            }),
            proc_reads: timings,
        }
    }
}

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules (a bug in this module).
    #[error("cannot build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter (no seccomp, or no TSYNC).
    #[error(
        "cannot install the seccomp filter (run with --seccomp off where seccomp is unavailable)"
    )]
    Install(#[source] seccompiler::Error),
}

/// Installs the filter on every thread of the process, now and to come. Nothing is
/// installed for [`Mode::Off`].
pub fn install(mode: Mode, extras: Extras) -> Result<(), SeccompError> {
    let Some(programs) = programs(mode, extras)? else {
        return Ok(());
    };
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(SeccompError::Install)?;
    }
    tracing::debug!(?mode, ?extras, "seccomp filter installed");
    Ok(())
}

/// The BPF programs [`install`] installs, in order; `None` for [`Mode::Off`].
///
/// Two programs, because one has only one action for the calls it matches: the first
/// answers `clone3` with `ENOSYS`, which makes glibc start threads with `clone`, whose
/// flags a filter can read (`clone3` keeps them in memory, out of its reach); the
/// second is the list. Where filters disagree the kernel takes the stricter answer.
pub fn programs(mode: Mode, extras: Extras) -> Result<Option<Vec<BpfProgram>>, SeccompError> {
    let outside_the_list = match mode {
        Mode::On => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(None),
    };
    let arch = TargetArch::x86_64;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    let list = SeccompFilter::new(
        allowed(extras)?,
        outside_the_list,
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Build)?;
    let no_clone3 = BpfProgram::try_from(no_clone3).map_err(SeccompError::Build)?;
    let list = BpfProgram::try_from(list).map_err(SeccompError::Build)?;
    Ok(Some(vec![no_clone3, list]))
}

/// The allowed syscalls, each with the argument rules it must meet (none: any call).
fn allowed(extras: Extras) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut any = |syscalls: &[i64]| {
        for &syscall in syscalls {
            rules.insert(syscall, Vec::new());
        }
    };
    any(&[
        // I/O on descriptors the VMM holds: tap, eventfds, console, stdio.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        // Memory, locks and time.
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_nanosleep,
        libc::SYS_clock_nanosleep,
        libc::SYS_clock_gettime,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        // Threads starting and ending (their start is `clone`, below). `clone3` is let
        // through here only for the first program's ENOSYS to be its answer; glibc's
        // malloc sizes its arenas for a new thread by the CPUs it may run on.
        libc::SYS_clone3,
        libc::SYS_sched_getaffinity,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_getpid,
        libc::SYS_gettid,
        // Signals: the vCPU kick (sent, handled, returned from) and the stop signals.
        libc::SYS_tgkill,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigtimedwait,
    ]);
    if extras.console_file || extras.proc_reads {
        any(&[
            libc::SYS_openat,
            libc::SYS_statx,
            libc::SYS_fstat,
            libc::SYS_newfstatat,
            libc::SYS_lseek,
        ]);
    }
    if extras.console_file {
        any(&[
            libc::SYS_rename,
            libc::SYS_renameat,
            libc::SYS_renameat2,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ]);
    }
    if extras.proc_reads {
        any(&[libc::SYS_getdents64]);
    }
    if extras.kvnetd_ports {
        any(&[
            libc::SYS_connect,
            libc::SYS_sendto,
            libc::SYS_sendmsg,
            libc::SYS_recvfrom,
            libc::SYS_recvmsg,
            libc::SYS_setsockopt,
            libc::SYS_getsockopt,
            libc::SYS_shutdown,
        ]);
        rules.insert(
            libc::SYS_socket,
            vec![rule(vec![arg_eq(0, libc::AF_UNIX as u64)?])?],
        );
    }
    // Threads only: a `clone` without CLONE_THREAD would be a new process.
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                libc::CLONE_THREAD as u64,
            )
            .map_err(SeccompError::Build)?,
        ])?],
    );
    // Naming a new thread.
    rules.insert(
        libc::SYS_prctl,
        vec![rule(vec![arg_eq(0, libc::PR_SET_NAME as u64)?])?],
    );
    rules.insert(
        libc::SYS_ioctl,
        allowed_ioctls()
            .iter()
            .map(|&request| rule(vec![arg_eq(1, request)?]))
            .collect::<Result<_, _>>()?,
    );
    Ok(rules)
}

/// KVM's ioctl type.
const KVMIO: u32 = 0xAE;

/// An ioctl number: `_IOC(direction, type, nr, size of T)`.
const fn ioc<T>(direction: u32, kind: u32, nr: u32) -> u64 {
    ioctl_expr(direction, kind, nr, std::mem::size_of::<T>() as u32) as u64
}

/// The ioctls a running VM makes, and the terminal's on the way out.
fn allowed_ioctls() -> [u64; 13] {
    use kvm_bindings::{kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_regs, kvm_sregs};
    [
        // vCPU threads: run, and read the registers an error report names.
        ioc::<()>(_IOC_NONE, KVMIO, 0x80),        // KVM_RUN
        ioc::<kvm_regs>(_IOC_READ, KVMIO, 0x81),  // KVM_GET_REGS
        ioc::<kvm_sregs>(_IOC_READ, KVMIO, 0x83), // KVM_GET_SREGS
        // The guest programming MSI-X vectors, INTx lines and BARs.
        ioc::<kvm_irq_routing>(_IOC_WRITE, KVMIO, 0x6a), // KVM_SET_GSI_ROUTING
        ioc::<kvm_irqfd>(_IOC_WRITE, KVMIO, 0x76),       // KVM_IRQFD
        ioc::<kvm_ioeventfd>(_IOC_WRITE, KVMIO, 0x79),   // KVM_IOEVENTFD
        // The offloads the guest's driver negotiated, on its tap.
        crate::devices::virtio::net::tap::TUNSETOFFLOAD,
        // Non-blocking descriptors, and the terminal's settings put back at the end.
        libc::FIONBIO,
        libc::TCGETS,
        libc::TCSETS,
        libc::TCSETSW,
        libc::TCSETSF,
        libc::TIOCGWINSZ,
    ]
}

/// A condition: argument `index` equals `value` in its low 32 bits, all the kernel reads
/// of an `int` or of an ioctl's number (a caller may sign-extend them).
fn arg_eq(index: u8, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(SeccompError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    /// Set in the copy of this test binary that installs the filter: the mode.
    const CHILD_MODE: &str = "KVNET_SECCOMP_TEST_CHILD";
    const TEST_NAME: &str =
        "seccomp::tests::a_call_outside_the_list_kills_the_vmm_and_log_mode_lets_it_through";

    #[test]
    fn every_configuration_builds() {
        assert!(
            programs(Mode::Off, Extras::default())
                .expect("off")
                .is_none()
        );
        for mode in [Mode::On, Mode::Log] {
            for bits in 0..8u8 {
                let extras = Extras {
                    console_file: bits & 1 != 0,
                    kvnetd_ports: bits & 2 != 0,
                    proc_reads: bits & 4 != 0,
                };
                let programs = programs(mode, extras).expect("build").expect("programs");
                assert_eq!(programs.len(), 2, "{mode:?} {extras:?}");
            }
        }
    }

    /// In the child: the filter installed, what the VMM does works (a thread, stdout, an
    /// eventfd, a Unix socket with `kvnetd_ports`), and then a UDP socket is made.
    fn child(mode: &str) -> ! {
        let mode = match mode {
            "on" => Mode::On,
            _ => Mode::Log,
        };
        let extras = Extras {
            kvnetd_ports: true,
            ..Extras::default()
        };
        install(mode, extras).expect("install");
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| vmm_sys_util::eventfd::EventFd::new(0).map(drop))
            .expect("spawn");
        worker.join().expect("join").expect("eventfd");
        let unix = std::os::unix::net::UnixStream::connect("/nonexistent/kvnetd.sock");
        assert!(unix.is_err());
        println!("allowed calls work");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0");
        println!("a UDP socket was let through: {}", udp.is_ok());
        std::process::exit(0);
    }

    fn run_child(mode: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_MODE, mode)
            .output()
            .expect("run the child");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn a_call_outside_the_list_kills_the_vmm_and_log_mode_lets_it_through() {
        if let Ok(mode) = std::env::var(CHILD_MODE) {
            child(&mode);
        }
        let (status, stdout) = run_child("on");
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?} {stdout}");
        assert!(stdout.contains("allowed calls work\n"), "{stdout}");
        assert!(!stdout.contains("let through"), "{stdout}");

        let (status, stdout) = run_child("log");
        assert!(status.success(), "{status:?} {stdout}");
        assert!(
            stdout.contains("allowed calls work\na UDP socket was let through: true\n"),
            "{stdout}"
        );
    }
}
