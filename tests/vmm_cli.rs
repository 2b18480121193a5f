//! The `kvnet-vmm` command line: every bad input ends with a clear message and status 1,
//! before (or without) touching the guest.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(args)
        .output()
        .expect("run kvnet-vmm");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A file that looks like a 64-bit-capable bzImage whose header asks for `init_size`.
fn fake_bzimage(dir: &std::path::Path, init_size: u32) -> std::path::PathBuf {
    let mut image = vec![0u8; 0x1000];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x236..0x238].copy_from_slice(&1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    image[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
    let path = dir.join("fake-bzImage");
    std::fs::write(&path, image).expect("write");
    path
}

#[test]
fn missing_kernel_is_named() {
    let (code, err) = run(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("kernel image /nonexistent/vmlinuz does not exist"),
        "{err}"
    );
}

#[test]
fn unrecognised_kernel_is_named() {
    // The image is inspected after /dev/kvm is opened.
    if !testkit::require(&[testkit::Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("junk");
    std::fs::write(&path, vec![0x42u8; 4096]).expect("write");
    let (code, err) = run(&["--kernel", path.to_str().expect("utf8")]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a recognised image"), "{err}");
    assert!(err.contains("junk"), "names the file: {err}");
}

#[test]
fn memory_too_small_for_init_size_is_explained() {
    // The image is inspected after /dev/kvm is opened.
    if !testkit::require(&[testkit::Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x0380_0000);
    let (code, err) = run(&["--kernel", kernel.to_str().expect("utf8"), "--memory", "32"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("32 MiB of memory is too small") && err.contains("needs 57 MiB"),
        "{err}"
    );
    assert!(err.contains("0x3800000"), "names init_size: {err}");
}

#[test]
fn too_many_vcpus_and_bad_values_are_rejected() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let k = kernel.to_str().expect("utf8");
    let (code, err) = run(&["--kernel", k, "--vcpus", "1000"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--vcpus 1000 is too many"), "{err}");
    let (code, err) = run(&["--kernel", k, "--serial", "tcp:1234"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid --serial \"tcp:1234\""), "{err}");
    let (code, err) = run(&["--kernel", k, "--memory", "2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--memory 2 MiB is out of range"), "{err}");
    // clap's own usage errors exit with 2.
    let (code, err) = run(&["--memory", "64"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--kernel"), "{err}");
}

#[test]
fn bad_net_specs_are_named_before_the_vm_is_built() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let k = kernel.to_str().expect("utf8");
    let (code, err) = run(&["--kernel", k, "--net", "mtu=9000"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid --net \"mtu=9000\": --net needs exactly one of network=NAME, tap-fd=N or tap=NAME"),
        "{err}"
    );
    let (code, err) = run(&["--kernel", k, "--net", "tap-fd=3,mac=01:02:03:04:05:06"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("invalid MAC address \"01:02:03:04:05:06\""),
        "{err}"
    );
    let (code, err) = run(&["--kernel", k, "--net", "tap=vnet0,socket=/x.sock"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("--net socket=PATH only goes with network=NAME"),
        "{err}"
    );
    // A network port needs kvnetd; the error says which socket was tried.
    let (code, err) = run(&[
        "--kernel",
        k,
        "--net",
        "network=default,socket=/nonexistent/kvnetd.sock",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "cannot plug the NIC into network 'default': cannot connect to kvnetd at /nonexistent/kvnetd.sock"
        ),
        "{err}"
    );
    // An fd number the VMM did not inherit.
    let (code, err) = run(&["--kernel", k, "--net", "tap-fd=99"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot open the tap for --net: fd 99 is not open"),
        "{err}"
    );
    let (code, err) = run(&["--kernel", k, "--net", "tap-fd=2"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("fd 2 is a standard stream"), "{err}");
    // An inherited fd that is not a tap.
    let out = Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" --kernel \"$1\" --net tap-fd=5 5</dev/null",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            k,
        ])
        .output()
        .expect("run kvnet-vmm through sh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("fd 5 is not an attached tun/tap device"),
        "{err}"
    );
}

#[test]
fn net_tap_puts_a_virtio_net_pci_device_on_the_bus() {
    use testkit::Need;
    use vmm::boot::layout;
    use vmm::testing::{self, asm::*, poweroff, print};
    if !testkit::require(&[Need::Kvm, Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // Reads vendor/device and class/revision of 00:01.0 through ECAM.
    let kernel = testing::write_guest(dir.path(), "pci-id.elf", |a| {
        let hex = testing::begin_with_hex32(a)?;
        a.mov(rdi, layout::PCI_ECAM_START + (1 << 15))?;
        for reg in [0u32, 8] {
            a.mov(eax, dword_ptr(rdi + reg))?;
            a.call(hex)?;
            print(a, "\n")?;
        }
        poweroff(a)
    })
    .expect("assemble");
    let ns = testkit::Netns::new("vmm-net").expect("netns");
    ns.sh("ip tuntap add dev kvt0 mode tap vnet_hdr && ip link set kvt0 up")
        .expect("tap");
    let out = testkit::run_checked(ns.command(env!("CARGO_BIN_EXE_kvnet-vmm")).args([
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--net",
        "tap=kvt0,mac=52:54:00:12:34:56",
    ]))
    .expect("kvnet-vmm --net tap=kvt0");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "10411af4\n02000001\n",
        "virtio-net 1af4:1041, Ethernet class, revision 1"
    );
    // The same NIC on a tap its launcher opened and passed down, as libvirt hands QEMU
    // its taps: the tap's fd goes in as stdin and the shell moves it to fd 5.
    let tap = ns
        .run(|| netd::link::tap::Tap::create("kvt1", false))
        .expect("run in ns")
        .expect("tap kvt1");
    let out = Command::new("sh")
        .args([
            "-c",
            "exec \"$0\" --kernel \"$1\" --net tap-fd=5,mac=52:54:00:12:34:57 5<&0 </dev/null",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            kernel.to_str().expect("utf8"),
        ])
        .stdin(std::process::Stdio::from(tap.into_fd()))
        .output()
        .expect("run kvnet-vmm --net tap-fd=5");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10411af4\n02000001\n");
}

/// A guest printing more than anyone reads (stdout a pipe nobody drains) still powers
/// off and ends the VMM: the vCPU never waits on the console.
#[test]
fn a_console_nobody_reads_holds_up_neither_the_guest_nor_the_exit() {
    use testkit::Need;
    use vmm::boot::layout;
    use vmm::testing::{self, asm::*, poweroff};
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // 200,000 bytes: three times what the pipe holds; the console's writer blocks on it
    // for good, the guest does not.
    let kernel = testing::write_guest(dir.path(), "chatty.elf", |a| {
        let mut more = a.create_label();
        a.mov(ecx, 200_000u32)?;
        a.mov(dx, layout::SERIAL_PORT as u32)?;
        a.mov(al, u32::from(b'x'))?;
        a.set_label(&mut more)?;
        a.out(dx, al)?;
        a.dec(ecx)?;
        a.jnz(more)?;
        poweroff(a)
    })
    .expect("assemble");
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(["--kernel", kernel.to_str().expect("utf8")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = vmm.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = vmm.kill();
            let _ = vmm.wait();
            panic!("kvnet-vmm still ran 120 s after starting a guest that prints and powers off");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut vmm.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("guest powered off"), "{stderr}");
    assert!(
        stderr.contains("serial output"),
        "nothing said about the lost output:\n{stderr}"
    );
}

#[test]
fn help_documents_the_console_escape_and_tap_creation() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .arg("--help")
        .output()
        .expect("run kvnet-vmm --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(
        help.contains("Ctrl-A x to stop the VM, Ctrl-A Ctrl-A to send one Ctrl-A"),
        "{help}"
    );
    assert!(
        help.contains("if none has that name, the VMM creates it, as QEMU does"),
        "{help}"
    );
}

/// `mtu=` above what the tap carries is refused before the guest runs: its larger frames
/// would be dropped without a word.
#[test]
fn mtu_above_the_taps_is_refused_naming_both() {
    use testkit::Need;
    if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let ns = testkit::Netns::new("vmm-mtu").expect("netns");
    ns.sh("ip tuntap add dev kvt0 mode tap vnet_hdr && ip link set kvt0 up")
        .expect("tap");
    let out = ns
        .command(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(["--kernel", kernel.to_str().expect("utf8")])
        .args(["--net", "tap=kvt0,mtu=9000"])
        .output()
        .expect("run kvnet-vmm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--net mtu=9000 is larger than the MTU of tap kvt0 (1500)"),
        "{err}"
    );
}

/// Two NICs with one MAC would both answer for it, and a key given twice in one --net
/// would silently lose its first value: both are refused, named, before any tap is
/// opened (the descriptors here were not inherited).
#[test]
fn a_mac_on_two_nics_and_a_repeated_net_key_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let k = kernel.to_str().expect("utf8");
    let (code, err) = run(&[
        "--kernel",
        k,
        "--net",
        "tap-fd=7,mac=52:54:00:12:34:56",
        "--net",
        "tap-fd=8,mac=52:54:00:12:34:56",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("MAC address 52:54:00:12:34:56 is given to two NICs"),
        "{err}"
    );
    let (code, err) = run(&[
        "--kernel",
        k,
        "--net",
        "tap-fd=7,mac=52:54:00:12:34:56,mac=52:54:00:12:34:57",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--net mac= is given twice"), "{err}");
}

/// Runs `kvnet-vmm` with `args`, killing it after 20 s: status and stderr, or `None`
/// for a VMM that hung.
fn run_bounded(args: &[&str]) -> Option<(Option<i32>, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    Some((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A FIFO as kernel or initrd used to block the VMM for good, /dev/zero passed for an
/// empty initrd and a directory for "Guest memory error: Is a directory": anything but
/// a regular file is refused, named.
#[test]
fn kernel_and_initrd_must_be_regular_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = fake_bzimage(dir.path(), 0x100_0000);
    let k = kernel.to_str().expect("utf8");
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let f = fifo.to_str().expect("utf8");
    for (args, message) in [
        (
            vec!["--kernel", f],
            format!("kernel image {f} is not a regular file"),
        ),
        (
            vec!["--kernel", k, "--initrd", f],
            format!("initrd {f} is not a regular file"),
        ),
        (
            vec!["--kernel", k, "--initrd", "/dev/zero"],
            "initrd /dev/zero is not a regular file".to_owned(),
        ),
        (
            vec!["--kernel", k, "--initrd", "/tmp"],
            "initrd /tmp is not a regular file".to_owned(),
        ),
    ] {
        let (code, err) = run_bounded(&args).unwrap_or_else(|| panic!("{args:?} hung"));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(&message), "{args:?}: {err}");
    }
}

/// The console log's writer process (`kvnet-vmm --console-log-writer PATH`) reports a
/// failed rotation and goes on: with its stderr gone (a closed terminal, a pipe whose
/// reader ended), the report is dropped, not the writer and the rest of the console.
#[test]
fn the_console_writer_outlives_a_stderr_nobody_reads() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tmp");
    let log = dir.path().join("console.log");
    let full = vmm::devices::console_log::MAX_FILE_BYTES as usize;
    std::fs::write(&log, vec![b'#'; full]).expect("a full log");
    // PATH.1 cannot move to PATH.2, a directory that is not empty: rotation fails.
    std::fs::write(dir.path().join("console.log.1"), b"older").expect("a backup");
    let blocker = dir.path().join("console.log.2");
    std::fs::create_dir(&blocker).expect("dir");
    std::fs::write(blocker.join("x"), b"").expect("not empty");
    let handed = std::fs::File::options()
        .append(true)
        .open(&log)
        .expect("the log, as the VMM hands it over");
    let mut writer = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .arg(vmm::devices::console_log::WRITER_ARG)
        .arg(&log)
        .stdin(std::process::Stdio::piped())
        .stdout(handed)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the writer");
    drop(writer.stderr.take());
    let mut input = writer.stdin.take().expect("stdin");
    input.write_all(b"FIRST\n").expect("first");
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::remove_dir_all(&blocker).expect("unblock");
    input
        .write_all(b"SECOND\n")
        .expect("second: the writer still reads");
    drop(input);
    let status = writer.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_to_string(&log).expect("log"), "SECOND\n");
}

/// `--user`: once the VM is built, every thread of the VMM runs as that user, with its
/// groups and no capabilities left, and the guest still runs, its console in and out.
#[test]
fn the_vm_runs_as_the_user_it_is_given_with_no_capabilities() {
    use std::io::{BufRead, Write};
    use testkit::Need;
    use vmm::testing::{self, poweroff, print, wait_for_input};
    if !testkit::require(&[Need::Kvm, Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "waits.elf", |a| {
        print(a, "ready\n")?;
        wait_for_input(a)?;
        print(a, "bye\n")?;
        poweroff(a)
    })
    .expect("assemble");
    let mut vmm = testkit::KillOnDrop::new(
        Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
            .args([
                "--user",
                "nobody",
                "--kernel",
                kernel.to_str().expect("utf8"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kvnet-vmm"),
    );
    let vmm = vmm.child();
    let mut stdout = std::io::BufReader::new(vmm.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the guest's first line");
    assert_eq!(line, "ready\n");

    let tasks = std::fs::read_dir(format!("/proc/{}/task", vmm.id())).expect("tasks");
    let mut threads = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.expect("task").path().join("status"))
            .expect("a thread's status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534", "{status}");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534", "{status}");
        assert!(!field("Groups:").split(' ').any(|g| g == "0"), "{status}");
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{caps} {status}");
        }
        threads += 1;
    }
    assert!(threads > 1, "the vCPU's thread and the VMM's own");

    vmm.stdin
        .take()
        .expect("stdin")
        .write_all(b"x")
        .expect("a key for the guest");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("the rest of the console");
    let status = vmm.wait().expect("exit");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut vmm.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(rest, "bye\n", "{stderr}");
    assert!(
        stderr.ends_with("kvnet-vmm: guest powered off\n"),
        "{stderr}"
    );
}

/// Started with securebits that keep capabilities across a change of user, the VMM would
/// run as the user with every capability: it refuses to run the guest.
#[test]
fn a_vmm_that_would_keep_capabilities_as_the_user_refuses_to_run() {
    use testkit::Need;
    use vmm::testing::{self, poweroff};
    if !testkit::require(&[Need::Kvm, Need::Root, Need::Program("setpriv")]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "off.elf", poweroff).expect("assemble");
    let out = Command::new("setpriv")
        .args(["--securebits", "+no_setuid_fixup", "--"])
        .arg(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args([
            "--user",
            "nobody",
            "--kernel",
            kernel.to_str().expect("utf8"),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kvnet-vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("keeps capabilities (CapPrm:"), "{stderr}");
    assert!(!stderr.contains("powered off"), "{stderr}");
}

/// A user that does not exist is refused by name before anything is built.
#[test]
fn an_unknown_user_is_refused_before_the_vm_is_built() {
    let (code, err) = run(&["--kernel", "/nonexistent/vmlinuz", "--user", "no-such-user"]);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "kvnet-vmm: error: --user: no user named \"no-such-user\"\n"
    );
}
