//! Real-kernel tier (opt-in): boot `KVNET_GUEST_KERNEL` (a distro bzImage or vmlinux) with a
//! busybox initramfs built by `scripts/build-initramfs.sh`.
//!
//! - The boot test: the guest must print a marker on ttyS0 and power off, which ends
//!   `kvnet-vmm` with status 0.
//! - The network test: a kvnetd in a test namespace runs an isolated network with DHCP on
//!   bridge virbr0; the VM's virtio-net NIC is `--net network=vmnet`, so kvnetd makes
//!   its tap on that bridge and hands it to kvnet-vmm over the API socket. The guest's
//!   init (cmdline `kvnet.test=net`) loads virtio_pci/virtio_net (copied from the
//!   kernel's module tree unless built in), takes a lease with `udhcpc`, pings the DHCP
//!   server and prints `KVNET-NET-PASS` or `KVNET-NET-FAIL <reason>`.
//!
//! Needs a host with hardware virtualization: the development machine's PVM-backed
//! /dev/kvm cannot run a stock kernel (see the feasibility notes), so without
//! `KVNET_GUEST_KERNEL` these tests report SKIPPED. With it, a missing marker, a FAIL
//! line, a VMM that exits early or a guest that outlives its timeout is a failure.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DAEMON_NEEDS, Daemon, Need};

const MARKER: &str = "KVNET-GUEST-READY";
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Boot, module loading, DHCP (udhcpc retries every 2 s) and three pings.
const NET_TIMEOUT: Duration = Duration::from_secs(300);
const NET_PASS: &str = "KVNET-NET-PASS";
const NET_FAIL: &str = "KVNET-NET-FAIL";
const GUEST_MAC: &str = "52:54:00:4b:56:01";
/// How long a guest that reported a failure may keep running (it prints diagnostics).
const FAIL_GRACE: Duration = Duration::from_secs(10);

/// An isolated network with DHCP: nothing leaves the daemon's namespace.
const NETWORK_XML: &str = "<network>
  <name>vmnet</name>
  <bridge name='virbr0' stp='off' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.100' end='192.168.122.200'/>
    </dhcp>
  </ip>
</network>
";

/// Runs `scripts/build-initramfs.sh OUTPUT MARKER [KERNEL]`; with `kernel`, the archive
/// carries that kernel's virtio-net modules.
fn build_initramfs(dir: &Path, kernel: Option<&str>) -> std::path::PathBuf {
    let initrd = dir.join("initramfs.cpio.gz");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-initramfs.sh");
    let mut cmd = Command::new("sh");
    cmd.arg(script).arg(&initrd).arg(MARKER);
    if let Some(kernel) = kernel {
        cmd.arg(kernel);
    }
    let built = cmd.status().expect("run build-initramfs.sh");
    assert!(built.success(), "build-initramfs.sh failed: {built}");
    initrd
}

/// A guest's size.
#[derive(Clone, Copy, Debug)]
struct Shape {
    memory_mib: u32,
    vcpus: usize,
}

/// The network test's guest.
const SMALL: Shape = Shape {
    memory_mib: 512,
    vcpus: 2,
};
/// Memory across the 32-bit PCI hole (RAM above 4 GiB, the initrd placed below
/// `initrd_addr_max`), and a vCPU count that is no power of two.
const LARGE: Shape = Shape {
    memory_mib: 3584,
    vcpus: 3,
};

/// `kvnet-vmm` arguments booting `kernel` with `initrd` and `cmdline` as a `shape` guest.
fn vmm_args(kernel: &str, initrd: &Path, cmdline: &str, shape: Shape) -> Vec<String> {
    vec![
        "--kernel".into(),
        kernel.into(),
        "--initrd".into(),
        initrd.to_string_lossy().into_owned(),
        "--memory".into(),
        shape.memory_mib.to_string(),
        "--vcpus".into(),
        shape.vcpus.to_string(),
        "--cmdline".into(),
        // Not `quiet`: warnings must reach the console, where they are looked for.
        format!("console=ttyS0 reboot=k panic=-1 rdinit=/init {cmdline}"),
    ]
}

/// The guest kernel named by `KVNET_GUEST_KERNEL`, or `None` (SKIPPED) without it. Once
/// a kernel is named the tier was asked for: any other need missing fails the test.
fn guest_kernel(needs: &[Need]) -> Option<String> {
    if !common::require(&[Need::GuestKernel]) {
        return None;
    }
    let mut all = vec![Need::Kvm];
    if std::env::var_os("BUSYBOX_DEB").is_none() {
        all.push(Need::Program("apt-get"));
    }
    all.extend_from_slice(needs);
    testkit::demand(&all);
    std::env::var("KVNET_GUEST_KERNEL").ok()
}

/// What a kernel prints when something went wrong on the way, though the guest may
/// still reach its init.
const KERNEL_FAULTS: &[&str] = &[
    "Oops",
    "BUG:",
    "Call Trace",
    "WARNING:",
    "Kernel panic",
    "No irq handler",
    "do_boot_cpu failed",
    "failed to report alive",
    // Complaints about the firmware: the ACPI tables and CPUID the VMM made (an APIC ID
    // mismatch between CPUID and the MADT, say).
    "Firmware Bug",
    "Firmware Warn",
    "ACPI Error",
    "ACPI BIOS Error",
    // A boot MSR the guest finds refused.
    "unchecked MSR access",
    // rtc_cmos probing ports the FADT says have no RTC behind them.
    "broken or not accessible",
];

/// A firmware complaint that is the host's, not the VMM's: KVM before Linux 6.7 refuses
/// the HWCR bit that tells an AMD guest its TSC counts at P0 frequency.
const HOST_KVM_FIRMWARE_BUG: &str = "[Firmware Bug]: TSC doesn't count with P0 frequency!";

/// The guest booted cleanly: no kernel fault on its console, its `vcpus` vCPUs up, and
/// at least `pci_functions` PCI functions found (the host bridge, and the NICs).
fn assert_clean_boot(run: &Run, vcpus: usize, pci_functions: usize) {
    // What the console lost cannot be looked at.
    assert!(
        !run.stderr.contains("serial output dropped"),
        "the VMM dropped console output: the test's reader fell behind\n{run}"
    );
    let console = run.console.replace(HOST_KVM_FIRMWARE_BUG, "");
    if let Some(fault) = KERNEL_FAULTS.iter().find(|fault| console.contains(**fault)) {
        panic!("the guest kernel reported {fault:?}\n{run}");
    }
    // "kvnet: 2 cpus, 3 pci functions", from the initramfs's init.
    let report = run
        .console
        .lines()
        .find_map(|line| line.trim_end().strip_prefix("kvnet: "))
        .filter(|report| report.ends_with("pci functions"))
        .unwrap_or_else(|| {
            panic!("the guest's init never reported its CPUs and PCI functions\n{run}")
        });
    let numbers: Vec<usize> = report
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect();
    assert_eq!(
        numbers.first(),
        Some(&vcpus),
        "all {vcpus} vCPUs must come up: {report}\n{run}"
    );
    assert!(
        numbers.get(1).is_some_and(|found| *found >= pci_functions),
        "at least {pci_functions} PCI functions expected: {report}\n{run}"
    );
}

/// What a guest run left behind.
struct Run {
    /// Guest console (COM1 on stdout).
    console: String,
    /// The VMM's stderr.
    stderr: String,
    /// How the VMM ended; `None` if it was killed at the timeout.
    status: Option<ExitStatus>,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\nconsole:\n{}\nstderr:\n{}",
            self.status, self.console, self.stderr
        )
    }
}

/// Spawns `cmd` (a kvnet-vmm) and follows its console line by line until it exits or
/// `timeout` passes (then it is killed). Once a line starting with the marker of
/// `on_failure` appears, it gets that much more time to print its diagnostics and power
/// off. Never waits longer than `timeout`.
fn run_guest(mut cmd: Command, timeout: Duration, on_failure: Option<(&str, Duration)>) -> Run {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    // Readers report through channels, so nothing below can block on a pipe that a
    // leftover process keeps open.
    let (stderr_tx, stderr_rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        let _ = stderr_tx.send(text);
    });
    let (lines, console_lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut deadline = Instant::now() + timeout;
    let mut console = String::new();
    let mut kill = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match console_lines.recv_timeout(left) {
            Ok(line) => {
                if let Some((marker, grace)) = on_failure
                    && line.trim_start().starts_with(marker)
                {
                    deadline = deadline.min(Instant::now() + grace);
                }
                console.push_str(&line);
                console.push('\n');
            }
            // The VMM closed its stdout: it has exited (or is about to).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                kill = true;
                break;
            }
        }
    }
    // The console closed because the VMM is exiting; still never wait past the deadline.
    let status = loop {
        if kill {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => kill = true,
        }
    };
    while let Ok(line) = console_lines.recv_timeout(Duration::from_millis(200)) {
        console.push_str(&line);
        console.push('\n');
    }
    let stderr = stderr_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    Run {
        console,
        stderr,
        status,
    }
}

#[test]
fn guest_runner_never_outlives_its_timeout_and_cuts_a_failed_guest_short() {
    let sh = |script: &str| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    };
    let exited = run_guest(sh("echo booted; exit 3"), Duration::from_secs(30), None);
    assert_eq!(exited.console, "booted\n");
    assert_eq!(exited.status.and_then(|s| s.code()), Some(3));

    let start = Instant::now();
    let hung = run_guest(
        sh("echo booted; exec sleep 60"),
        Duration::from_secs(1),
        None,
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(hung.console, "booted\n");
    assert!(hung.status.is_none(), "killed at the timeout");

    // A leftover process holding the console open cannot stretch the wait either.
    let start = Instant::now();
    let leftover = run_guest(sh("echo booted; sleep 5 &"), Duration::from_secs(1), None);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(leftover.console, "booted\n");

    let start = Instant::now();
    let failed = run_guest(
        sh("echo KVNET-NET-FAIL no lease; echo diagnostics; exec sleep 60"),
        Duration::from_secs(60),
        Some((NET_FAIL, Duration::from_millis(500))),
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(failed.console, "KVNET-NET-FAIL no lease\ndiagnostics\n");
    assert!(failed.status.is_none());
}

/// Boots a small guest and a large one (see [`LARGE`]); the kernel named decides the
/// entry path taken (a bzImage's 64-bit entry, or an ELF vmlinux's PVH entry), so a
/// host that checks both runs this test once with each.
#[test]
fn distro_kernel_boots_to_initramfs_prints_marker_and_powers_off() {
    let Some(kernel) = guest_kernel(&[]) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let initrd = build_initramfs(dir.path(), None);
    for shape in [SMALL, LARGE] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"));
        cmd.args(vmm_args(&kernel, &initrd, "", shape));
        let run = run_guest(cmd, BOOT_TIMEOUT, None);
        let Some(status) = run.status else {
            panic!("{shape:?} guest did not power off within {BOOT_TIMEOUT:?}\n{run}");
        };
        assert!(
            run.console.lines().any(|l| l.trim_end() == MARKER),
            "marker {MARKER} never appeared on the {shape:?} guest's console\n{run}"
        );
        assert!(status.success(), "kvnet-vmm failed ({shape:?})\n{run}");
        assert!(run.stderr.contains("guest powered off"), "{run}");
        assert_clean_boot(&run, shape.vcpus, 1);
    }
}

/// The network self-test: returns the guest console once the guest passed it, got a
/// lease from kvnetd in the DHCP range, kvnetd lists that lease, and the VM powered off.
/// `None` when the test is skipped.
fn virtio_net_leases_from_kvnetd_and_pings_the_server(extra_cmdline: &str) -> Option<String> {
    let needs: Vec<Need> = DAEMON_NEEDS.iter().copied().chain([Need::Tun]).collect();
    let kernel = guest_kernel(&needs)?;
    let dir = tempfile::tempdir().expect("tmp");
    let initrd = build_initramfs(dir.path(), Some(&kernel));

    // kvnetd serves DHCP on virbr0 in its namespace and plugs the guest's tap into it.
    let daemon = Daemon::without_default_network();
    let xml = common::xml_file(dir.path(), "vmnet.xml", NETWORK_XML);
    daemon.ok(&["net-create", xml.to_str().expect("utf-8 path")]);

    let mut cmd = daemon.ns.command(env!("CARGO_BIN_EXE_kvnet-vmm"));
    cmd.args(vmm_args(
        &kernel,
        &initrd,
        &format!("kvnet.test=net {extra_cmdline}"),
        SMALL,
    ))
    .args([
        "--net",
        &format!(
            "network=vmnet,socket={},mac={GUEST_MAC}",
            daemon.socket().display()
        ),
    ]);
    let run = run_guest(cmd, NET_TIMEOUT, Some((NET_FAIL, FAIL_GRACE)));
    if let Some(failure) = run.console.lines().find(|l| l.starts_with(NET_FAIL)) {
        panic!(
            "the guest's network test failed: {failure}\n{run}\nkvnetd log:\n{}",
            daemon.log()
        );
    }
    let Some(status) = run.status else {
        panic!(
            "guest did not finish its network test within {NET_TIMEOUT:?}\n{run}\nkvnetd log:\n{}",
            daemon.log()
        );
    };
    let Some(pass) = run.console.lines().find(|l| l.starts_with(NET_PASS)) else {
        panic!(
            "{NET_PASS} never appeared (the guest died or its init did not run the test)\n{run}\nkvnetd log:\n{}",
            daemon.log()
        );
    };
    // "KVNET-NET-PASS ip=192.168.122.1xx server=192.168.122.1"
    let field = |key: &str| {
        pass.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or_else(|| panic!("{pass:?} lacks {key}"))
            .to_owned()
    };
    let (ip, server) = (field("ip="), field("server="));
    assert_eq!(server, "192.168.122.1", "{run}");
    let last_octet: u8 = ip
        .strip_prefix("192.168.122.")
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("lease {ip} outside 192.168.122.0/24"));
    assert!(
        (100..=200).contains(&last_octet),
        "lease {ip} outside the DHCP range"
    );
    // kvnetd's lease table names the guest's MAC and the address it handed out.
    let leases = daemon.ok(&["net-dhcp-leases", "vmnet"]);
    assert!(
        leases
            .lines()
            .any(|l| l.contains(GUEST_MAC) && l.contains(&ip)),
        "no lease for {GUEST_MAC} / {ip} in:\n{leases}"
    );
    assert!(status.success(), "kvnet-vmm failed\n{run}");
    assert!(run.stderr.contains("guest powered off"), "{run}");
    assert_clean_boot(&run, SMALL.vcpus, 2);
    Some(run.console)
}

/// The guest's /proc/interrupts lines naming virtio0 (the init prints them last).
fn virtio_interrupt_lines(console: &str) -> Vec<&str> {
    console.lines().filter(|l| l.contains("virtio0")).collect()
}

#[test]
fn distro_kernel_virtio_net_leases_from_kvnetd_and_pings_the_server() {
    let Some(console) = virtio_net_leases_from_kvnetd_and_pings_the_server("") else {
        return;
    };
    // Linux's virtio_pci takes one MSI-X vector per queue ("virtio0-input.0", ...).
    let lines = virtio_interrupt_lines(&console);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("MSI") && l.contains("virtio0-input")),
        "virtio0 does not use MSI-X: {lines:?}\nconsole:\n{console}"
    );
}

#[test]
fn distro_kernel_virtio_net_without_msi_uses_the_prt_intx_line() {
    // pci=nomsi: virtio_pci falls back to INTA#, which Linux finds through the DSDT's _PRT
    // and programs as a level-triggered IOAPIC pin ("IO-APIC ... -fasteoi virtio0").
    let Some(console) = virtio_net_leases_from_kvnetd_and_pings_the_server("pci=nomsi") else {
        return;
    };
    let lines = virtio_interrupt_lines(&console);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("IO-APIC") && l.contains("fasteoi")),
        "virtio0 is not on a level-triggered IOAPIC pin: {lines:?}\nconsole:\n{console}"
    );
}
