//! The syscall filter `kvnet-vmm` runs under once its machine is built, as Firecracker
//! and cloud-hypervisor run theirs. A guest that takes over the device emulation (a
//! bug in the virtio-net model, say) finds a process that can run its VM and little
//! else: it cannot open, rename or remove files, make sockets, start programs, signal
//! other processes, or use the KVM ioctls that build VMs and map memory.
//!
//! The list is what the threads do after [`crate::Vm::new`]: the vCPUs (`KVM_RUN`, and
//! the ioctls that route interrupts and move ioeventfds as the guest programs its
//! devices), the virtio-net workers (epoll, `readv`/`writev` on the tap,
//! `TUNSETOFFLOAD`), the console and signal threads, threads starting and ending, and
//! the way out (the terminal's settings put back). What would need more is done
//! otherwise: a `file:` console is written by a process of its own
//! ([`crate::devices::console_log::LogProcess`]), the ports are left to kvnetd, which
//! ends them as the taps close, and start-up figures come from `getrusage`.
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
pub fn install(mode: Mode) -> Result<(), SeccompError> {
    let Some(programs) = programs(mode, std::process::id())? else {
        return Ok(());
    };
    for program in &programs {
        seccompiler::apply_filter_all_threads(program).map_err(SeccompError::Install)?;
    }
    tracing::debug!(?mode, "seccomp filter installed");
    Ok(())
}

/// Calls answered with an error rather than allowed or fatal, each with its errno:
/// - `clone3` with ENOSYS, which makes glibc start threads with `clone`, whose flags a
///   filter can read (`clone3` keeps them in memory, out of its reach);
/// - `openat` with EACCES: glibc's malloc opens `/proc/sys/vm/overcommit_memory` the
///   first time a thread's heap shrinks, and copes with a refusal; nothing else may
///   open a file.
const REFUSED: [(i64, i32); 2] = [
    (libc::SYS_clone3, libc::ENOSYS),
    (libc::SYS_openat, libc::EACCES),
];

/// The BPF programs [`install`] installs in process `pid`, in order; `None` for
/// [`Mode::Off`].
///
/// One program for each of [`REFUSED`], since a program has one action for all the
/// calls it matches, and then the list, which lets those through to them: where
/// programs disagree the kernel takes the stricter answer, and an error is stricter
/// than letting a call through, but not than killing the process.
pub fn programs(mode: Mode, pid: u32) -> Result<Option<Vec<BpfProgram>>, SeccompError> {
    let outside_the_list = match mode {
        Mode::On => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
        Mode::Off => return Ok(None),
    };
    let arch = TargetArch::x86_64;
    let mut programs = Vec::with_capacity(REFUSED.len() + 1);
    for (syscall, errno) in REFUSED {
        let refusal = SeccompFilter::new(
            BTreeMap::from([(syscall, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(SeccompError::Build)?;
        programs.push(BpfProgram::try_from(refusal).map_err(SeccompError::Build)?);
    }
    let list = SeccompFilter::new(allowed(pid)?, outside_the_list, SeccompAction::Allow, arch)
        .map_err(SeccompError::Build)?;
    programs.push(BpfProgram::try_from(list).map_err(SeccompError::Build)?);
    Ok(Some(programs))
}

/// The allowed syscalls of process `pid`, each with the argument rules it must meet
/// (none: any call).
fn allowed(pid: u32) -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for syscall in [
        // I/O on descriptors the VMM holds: tap, eventfds, console, stdio.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
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
        libc::SYS_getrusage,
        // Let through here only for their errors in [`REFUSED`] to be the answer.
        libc::SYS_clone3,
        libc::SYS_openat,
        // Threads starting and ending (their start is `clone`, below); glibc's malloc
        // sizes its arenas for a new thread by the CPUs it may run on.
        libc::SYS_sched_getaffinity,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_getpid,
        libc::SYS_gettid,
        // The console log's writer process, waited for at the end.
        libc::SYS_wait4,
        // Signals: the vCPU kick handled and returned from, the stop signals waited for,
        // and a stack overflow's handler putting the default action back.
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigtimedwait,
        // A timed sleep interrupted by SIGSTOP resumes through it after SIGCONT (or `fg`);
        // it only finishes a call that was already let through.
        libc::SYS_restart_syscall,
    ] {
        rules.insert(syscall, Vec::new());
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
    // Signals to this process's own threads only: the vCPU kick, and SIGABRT (abort).
    rules.insert(
        libc::SYS_tgkill,
        [crate::kvm::vcpu::kick_signal(), libc::SIGABRT]
            .into_iter()
            .map(|signal| rule(vec![arg_eq(0, u64::from(pid))?, arg_eq(2, signal as u64)?]))
            .collect::<Result<_, _>>()?,
    );
    // Descriptor flags and close-on-exec copies; not F_SETOWN/F_SETSIG, which would
    // have the kernel signal another process.
    rules.insert(
        libc::SYS_fcntl,
        [
            libc::F_GETFD,
            libc::F_SETFD,
            libc::F_GETFL,
            libc::F_SETFL,
            libc::F_DUPFD_CLOEXEC,
        ]
        .into_iter()
        .map(|command| rule(vec![arg_eq(1, command as u64)?]))
        .collect::<Result<_, _>>()?,
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

    /// Set in the copy of this test binary that installs the filter: `MODE CALL`.
    const CHILD: &str = "KVNET_SECCOMP_TEST_CHILD";
    const TEST_NAME: &str =
        "seccomp::tests::calls_outside_the_list_kill_the_vmm_and_log_mode_lets_them_through";

    #[test]
    fn both_modes_build() {
        assert!(programs(Mode::Off, 1).expect("off").is_none());
        for mode in [Mode::On, Mode::Log] {
            let programs = programs(mode, 1).expect("build").expect("programs");
            assert_eq!(programs.len(), REFUSED.len() + 1, "{mode:?}");
        }
    }

    /// In the child: the filter installed, what the VMM does works (a thread, stdout, an
    /// eventfd, a kick of its own thread), and then one call outside the list.
    fn child(setting: &str) -> ! {
        let (mode, call) = setting.split_once(' ').expect("MODE CALL");
        install(if mode == "on" { Mode::On } else { Mode::Log }).expect("install");
        let worker = std::thread::Builder::new()
            .name("worker".into())
            .spawn(|| vmm_sys_util::eventfd::EventFd::new(0).map(drop))
            .expect("spawn");
        worker.join().expect("join").expect("eventfd");
        println!("allowed calls work");
        let outside = match call {
            "udp" => std::net::UdpSocket::bind("127.0.0.1:0").is_ok(),
            "unix" => std::os::unix::net::UnixStream::connect("/nonexistent.sock").is_ok(),
            "open" => {
                let refused = std::fs::File::open("/proc/self/status")
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
                println!("open refused: {refused}");
                // Then something fatal, for the parent to see where it got to.
                std::net::UdpSocket::bind("127.0.0.1:0").is_ok()
            }
            // The parent stops and continues this process during the sleep.
            "sleep" => {
                println!("sleeping");
                std::thread::sleep(std::time::Duration::from_millis(1500));
                true
            }
            // SIGCONT changes nothing for a live process: only the call is looked at.
            "signal" => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(1),
                nix::sys::signal::Signal::SIGCONT,
            )
            .is_ok(),
            other => panic!("unknown call {other}"),
        };
        println!("{call} was let through: {outside}");
        std::process::exit(0);
    }

    fn run_child(setting: &str) -> (std::process::ExitStatus, String) {
        let out = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, setting)
            .output()
            .expect("run the child");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    #[test]
    fn calls_outside_the_list_kill_the_vmm_and_log_mode_lets_them_through() {
        if let Ok(setting) = std::env::var(CHILD) {
            child(&setting);
        }
        for call in ["udp", "unix", "open", "signal"] {
            let (status, stdout) = run_child(&format!("on {call}"));
            assert_eq!(
                status.signal(),
                Some(libc::SIGSYS),
                "{call}: {status:?} {stdout}"
            );
            assert!(stdout.contains("allowed calls work\n"), "{call}: {stdout}");
            assert!(!stdout.contains("let through"), "{call}: {stdout}");
        }
        // A file is refused, not fatal (glibc's malloc opens one).
        let (_, stdout) = run_child("on open");
        assert!(stdout.contains("open refused: true\n"), "{stdout}");
        let (status, stdout) = run_child("log udp");
        assert!(status.success(), "{status:?} {stdout}");
        assert!(stdout.contains("udp was let through: true\n"), "{stdout}");
    }

    /// SIGSTOP and SIGCONT (Ctrl-Z and `fg`, a debugger) during a timed sleep: the sleep
    /// resumes through `restart_syscall`, which once killed the VMM (its console input
    /// thread sleeps while the guest does not drain the UART).
    #[test]
    fn a_sleep_stopped_and_continued_resumes_under_the_filter() {
        use nix::sys::signal::{Signal, kill};
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "on sleep")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the child");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        while line != "sleeping\n" {
            line.clear();
            assert_ne!(stdout.read_line(&mut line).expect("read"), 0, "no sleep");
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        std::thread::sleep(std::time::Duration::from_millis(200));
        kill(pid, Signal::SIGSTOP).expect("stop");
        std::thread::sleep(std::time::Duration::from_millis(200));
        kill(pid, Signal::SIGCONT).expect("continue");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
        let status = child.wait().expect("wait");
        assert!(status.success(), "{status:?} {rest}");
        assert!(rest.contains("sleep was let through: true\n"), "{rest}");
    }
}
