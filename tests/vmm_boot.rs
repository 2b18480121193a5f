//! KVM tier: mini-guests booted by the real VMM, as a library and as the `kvnet-vmm` binary.
//!
//! Each guest is assembled at test time (vmm::testing) and booted through the Linux 64-bit
//! boot protocol. Every run is bounded by a timeout so a hung guest fails the test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::Need;
use vmm::testing::asm::*;
use vmm::testing::{self, poweroff, print};
use vmm::{ExitReason, SerialSink, SharedBuffer, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(kernel: &std::path::Path, serial: &SharedBuffer) -> VmConfig {
    let mut config = VmConfig::new(kernel);
    config.serial = SerialSink::Buffer(serial.clone());
    config
}

/// Runs `kvnet-vmm` with `args`, killing it after [`TIMEOUT`].
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "kvnet-vmm {args:?} did not exit within {TIMEOUT:?}; stdout {:?} stderr {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn hello_guest(dir: &std::path::Path) -> std::path::PathBuf {
    testing::write_guest(dir, "hello.elf", |a| {
        print(a, "Hello from a kvnet mini-guest\n")?;
        poweroff(a)
    })
    .expect("assemble guest")
}

#[test]
fn library_guest_prints_and_powers_off() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let serial = SharedBuffer::new();
    let vm = Vm::new(config(&hello_guest(dir.path()), &serial)).expect("build vm");
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {:?}", serial.text());
    assert_eq!(serial.text(), "Hello from a kvnet mini-guest\n");
}

#[test]
fn binary_guest_prints_and_powers_off_with_status_0() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hello_guest(dir.path());
    let (code, stdout, stderr) = run_binary(&["--kernel", kernel.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "Hello from a kvnet mini-guest\n");
    assert!(stderr.contains("guest powered off"), "stderr: {stderr}");
}

#[test]
fn binary_serial_file_and_none_sinks() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hello_guest(dir.path());
    let log = dir.path().join("serial.log");
    let sink = format!("file:{}", log.display());
    let (code, stdout, stderr) = run_binary(&[
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--serial",
        &sink,
    ]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        std::fs::read_to_string(&log).expect("serial log"),
        "Hello from a kvnet mini-guest\n"
    );
    let (code, stdout, _) = run_binary(&[
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--serial",
        "none",
    ]);
    assert_eq!((code, stdout.as_str()), (Some(0), ""));
    // The log's writer process has the VMM's stdout: a link to it is written through.
    let (code, stdout, stderr) = run_binary(&[
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--serial",
        "file:/dev/stdout",
    ]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(
        stdout, "Hello from a kvnet mini-guest\n",
        "stderr: {stderr}"
    );

    // Stdout redirected to a file: the console shares its offset with the shell's.
    let out = dir.path().join("out.txt");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ echo before; '{}' --kernel '{}' --serial file:/dev/stdout 2>/dev/null; echo after; }} > '{}'",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            kernel.display(),
            out.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&out).expect("out"),
        "before\nHello from a kvnet mini-guest\nafter\n"
    );

    // A FIFO nobody reads is refused at once, not waited for with the stop signals
    // blocked.
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let (code, _, stderr) = run_binary(&[
        "--kernel",
        kernel.to_str().expect("utf8"),
        "--serial",
        &format!("file:{}", fifo.display()),
    ]);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.contains("No such device or address"), "{stderr}");

    // The file stdout is appended to, full: written through, never rotated (a rename
    // would take the shell's file away).
    let full = dir.path().join("full.txt");
    let limit = vmm::devices::console_log::MAX_FILE_BYTES as usize;
    std::fs::write(&full, vec![b'#'; limit]).expect("a full log");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --kernel '{}' --serial 'file:{}' 2>/dev/null >> '{}'; echo after >> '{2}'",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            kernel.display(),
            full.display(),
            full.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success());
    let text = std::fs::read(&full).expect("full");
    assert!(
        text.ends_with(b"#Hello from a kvnet mini-guest\nafter\n"),
        "{:?}",
        String::from_utf8_lossy(&text[text.len().saturating_sub(80)..])
    );
    assert!(!dir.path().join("full.txt.0").exists());

    // Stderr too: the console line and the VMM's last word, in order.
    let err = dir.path().join("err.txt");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --kernel '{}' --serial file:/dev/stderr 2> '{}' >/dev/null",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            kernel.display(),
            err.display()
        ))
        .status()
        .expect("sh");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&err).expect("err"),
        "Hello from a kvnet mini-guest\nkvnet-vmm: guest powered off\n"
    );
}

#[test]
fn guest_resets_through_i8042_and_the_vmm_exits() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "reset.elf", |a| {
        print(a, "rebooting\n")?;
        testing::i8042_reset(a)
    })
    .expect("assemble");
    let serial = SharedBuffer::new();
    let reason = Vm::new(config(&kernel, &serial))
        .expect("vm")
        .run_with_timeout(Some(TIMEOUT))
        .expect("run");
    assert_eq!(reason, ExitReason::Reset);
    assert_eq!(serial.text(), "rebooting\n");
    let (code, _, stderr) = run_binary(&["--kernel", kernel.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.contains("guest reset"), "stderr: {stderr}");
}

#[test]
fn halted_guest_is_stopped_by_the_host() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "halt.elf", |a| {
        print(a, "halting\n")?;
        testing::spin(a)
    })
    .expect("assemble");
    let serial = SharedBuffer::new();
    let mut cfg = config(&kernel, &serial);
    cfg.vcpus = 2;
    let vm = Vm::new(cfg).expect("vm");
    let stop = vm.stop_handle();
    let watcher = serial.clone();
    let stopper = std::thread::spawn(move || {
        let start = Instant::now();
        while !watcher.text().contains("halting\n") && start.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The guest sits in hlt inside KVM_RUN; the stop must still get through.
        stop.stop();
    });
    let start = Instant::now();
    let reason = vm.run_with_timeout(Some(TIMEOUT * 2)).expect("run");
    stopper.join().expect("stopper");
    assert_eq!(reason, ExitReason::Stopped);
    assert_eq!(serial.text(), "halting\n");
    assert!(start.elapsed() < TIMEOUT, "stop took {:?}", start.elapsed());
}

#[test]
fn guest_reads_its_zero_page_e820_and_cmdline() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // For each e820 entry print "E820 addr-hi addr-lo size-hi size-lo type", then the
    // command line and the RSDP address from the zero page (rsi at entry).
    let kernel = testing::write_guest(dir.path(), "e820.elf", |a| {
        let hex = testing::begin_with_hex32(a)?;
        a.mov(r12, rsi)?;
        a.movzx(r13d, byte_ptr(r12 + 0x1e8))?;
        a.lea(r14, ptr(r12 + 0x2d0))?;
        let mut entry = a.create_label();
        let mut done = a.create_label();
        a.set_label(&mut entry)?;
        a.test(r13d, r13d)?;
        a.jz(done)?;
        print(a, "E820 ")?;
        for (off, sep) in [(4, ""), (0, " "), (12, ""), (8, " "), (16, "\n")] {
            a.mov(eax, dword_ptr(r14 + off))?;
            a.call(hex)?;
            if !sep.is_empty() {
                print(a, sep)?;
            }
        }
        a.add(r14, 20)?;
        a.dec(r13d)?;
        a.jmp(entry)?;
        a.set_label(&mut done)?;
        print(a, "RSDP ")?;
        a.mov(eax, dword_ptr(r12 + 0x70))?;
        a.call(hex)?;
        print(a, "\nCMDLINE ")?;
        a.mov(ebx, dword_ptr(r12 + 0x228))?;
        a.mov(dx, 0x3f8)?;
        let mut next_char = a.create_label();
        let mut end = a.create_label();
        a.set_label(&mut next_char)?;
        a.mov(al, byte_ptr(rbx))?;
        a.test(al, al)?;
        a.jz(end)?;
        a.out(dx, al)?;
        a.inc(rbx)?;
        a.jmp(next_char)?;
        a.set_label(&mut end)?;
        print(a, "\n")?;
        poweroff(a)
    })
    .expect("assemble");
    let serial = SharedBuffer::new();
    let mut cfg = config(&kernel, &serial);
    cfg.memory_mib = 96;
    cfg.cmdline = "console=ttyS0 kvnet.marker=42".into();
    let reason = Vm::new(cfg)
        .expect("vm")
        .run_with_timeout(Some(TIMEOUT))
        .expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {}", serial.text());
    let mut expected = String::new();
    for e in vmm::boot::loader::e820_map(96 << 20) {
        expected += &format!("E820 {:016x} {:016x} {:08x}\n", e.addr, e.size, e.kind);
    }
    expected += &format!("RSDP {:08x}\n", vmm::boot::layout::ACPI_START);
    expected += "CMDLINE console=ttyS0 kvnet.marker=42\n";
    assert_eq!(serial.text(), expected);
}

#[test]
fn pvh_guest_starts_in_protected_mode_with_start_info() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // 32-bit code: check the hvm_start_info magic at [ebx], print the memmap entry count
    // and the command line it points to, then power off.
    let kernel = testing::write_pvh_guest(dir.path(), "pvh.elf", |a| {
        let mut bad = a.create_label();
        a.cmp(dword_ptr(ebx), 0x336e_c578)?;
        a.jne(bad)?;
        print(a, "PVH memmap=")?;
        a.mov(eax, dword_ptr(ebx + 48))?;
        a.add(eax, b'0' as i32)?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        print(a, " cmdline=")?;
        a.mov(esi, dword_ptr(ebx + 24))?;
        let mut next_char = a.create_label();
        let mut end = a.create_label();
        a.set_label(&mut next_char)?;
        a.mov(al, byte_ptr(esi))?;
        a.test(al, al)?;
        a.jz(end)?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        a.inc(esi)?;
        a.jmp(next_char)?;
        a.set_label(&mut end)?;
        print(a, "\n")?;
        poweroff(a)?;
        a.set_label(&mut bad)?;
        print(a, "bad magic\n")?;
        poweroff(a)
    })
    .expect("assemble");
    let serial = SharedBuffer::new();
    let mut cfg = config(&kernel, &serial);
    cfg.cmdline = "pvh=yes".into();
    let reason = Vm::new(cfg)
        .expect("vm")
        .run_with_timeout(Some(TIMEOUT))
        .expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {}", serial.text());
    let entries = vmm::boot::loader::e820_map(128 << 20).len();
    assert_eq!(
        serial.text(),
        format!("PVH memmap={entries} cmdline=pvh=yes\n")
    );
}

#[test]
fn guest_echoes_serial_input_from_the_host() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // Poll LSR.DR, echo each received byte, power off after '\n'.
    let kernel = testing::write_guest(dir.path(), "echo.elf", |a| {
        print(a, "ready\n")?;
        let mut poll = a.create_label();
        a.set_label(&mut poll)?;
        a.mov(dx, 0x3fd)?;
        a.in_(al, dx)?;
        a.test(al, 1)?;
        a.jz(poll)?;
        a.mov(dx, 0x3f8)?;
        a.in_(al, dx)?;
        a.out(dx, al)?;
        a.cmp(al, b'\n' as i32)?;
        a.jne(poll)?;
        poweroff(a)
    })
    .expect("assemble");
    let serial = SharedBuffer::new();
    let vm = Vm::new(config(&kernel, &serial)).expect("vm");
    let input = vm.serial_input();
    let watcher = serial.clone();
    let feeder = std::thread::spawn(move || {
        let start = Instant::now();
        while !watcher.text().contains("ready\n") && start.elapsed() < TIMEOUT {
            std::thread::sleep(Duration::from_millis(2));
        }
        input.forward(&b"typed by the host\n"[..]);
    });
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    feeder.join().expect("feeder");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {:?}", serial.text());
    assert_eq!(serial.text(), "ready\ntyped by the host\n");
}

/// Spawns `kvnet-vmm` with `args` and piped stdio (stdin empty), logging at `log`.
fn spawn_binary(args: &[&str], log: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(args)
        .env("KVNET_VMM_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm")
}

/// Reads `child`'s stdout on a thread of its own, into a buffer the test can watch.
fn watch_stdout(child: &mut std::process::Child) -> SharedBuffer {
    let mut stdout = child.stdout.take().expect("stdout piped");
    let seen = SharedBuffer::new();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut sink = sink;
        let _ = std::io::copy(&mut stdout, &mut sink);
    });
    seen
}

/// Waits for `child` at most [`TIMEOUT`], killing it after that; returns its exit code
/// and stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "kvnet-vmm did not exit within {TIMEOUT:?}; stderr {:?}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}

/// Waits until `buffer` holds `text`, at most [`TIMEOUT`].
fn wait_for(buffer: &SharedBuffer, text: &str) {
    let start = Instant::now();
    while !buffer.text().contains(text) {
        assert!(
            start.elapsed() < TIMEOUT,
            "{text:?} never came: {:?}",
            buffer.text()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A guest that prints "spinning" and then spins until it is stopped.
fn spin_guest(dir: &std::path::Path) -> std::path::PathBuf {
    testing::write_guest(dir, "spin.elf", |a| {
        print(a, "spinning\n")?;
        testing::spin(a)
    })
    .expect("assemble")
}

/// SIGTERM, SIGINT and SIGHUP stop the VM as a poweroff ends it: the console's output
/// is all written, and the VMM says so and exits 0, as QEMU does on SIGTERM.
#[test]
fn stop_signals_end_the_vmm_cleanly_with_status_0() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = spin_guest(dir.path());
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let mut child = spawn_binary(&["--kernel", kernel.to_str().expect("utf8")], "info");
        let stdout = watch_stdout(&mut child);
        wait_for(&stdout, "spinning\n");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, signal).expect("kill");
        let (code, stderr) = finish(child);
        assert_eq!(code, Some(0), "{signal}: {stderr}");
        assert!(
            stderr.ends_with("kvnet-vmm: stopped\n"),
            "{signal}: {stderr}"
        );
        assert!(stderr.contains(signal.as_str()), "names {signal}: {stderr}");
        assert_eq!(stdout.text(), "spinning\n");
    }
}

/// A `file:` console is written by a process of its own, which holds nothing of the
/// VM's (no eventfd, no KVM or tap descriptor): only its pipe, stdio and the log. It
/// writes the VM's last words after a stop signal, and ends with the VMM.
#[test]
fn the_console_logs_process_holds_nothing_of_the_vms() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = spin_guest(dir.path());
    let log = dir.path().join("console.log");
    let mut vmm = testkit::KillOnDrop::new(spawn_binary(
        &[
            "--kernel",
            kernel.to_str().expect("utf8"),
            "--serial",
            &format!("file:{}", log.display()),
        ],
        "info",
    ));
    let start = Instant::now();
    while std::fs::read_to_string(&log).unwrap_or_default() != "spinning\n" {
        assert!(start.elapsed() < TIMEOUT, "no console output");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = vmm.child().id();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).expect("children");
    let writer: Vec<&str> = children.split_whitespace().collect();
    assert_eq!(writer.len(), 1, "{children:?}");
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", writer[0]))
        .expect("fds")
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    // The log it was handed (and its own copy), its pipes, and what this test's own
    // parent left open for its children; nothing the VMM opened for the VM.
    assert!(held.contains(&log.display().to_string()), "{held:?}");
    // The log it was handed as its stdout is its own copy now; fd 1 is let go.
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/1", writer[0])).expect("fd 1"),
        std::path::Path::new("/dev/null")
    );
    assert!(
        !held.iter().any(|target| target.starts_with("anon_inode:")
            || target == "/dev/kvm"
            || target == "/dev/net/tun"),
        "{held:?}"
    );
    kill(
        Pid::from_raw(i32::try_from(pid).expect("pid")),
        Signal::SIGTERM,
    )
    .expect("kill");
    let (code, stderr) = finish(vmm.release());
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!std::path::Path::new(&format!("/proc/{}", writer[0])).exists());
}

/// A guest that prints "ready", then each byte it receives on COM1 as two hex digits and
/// a space, and powers off after a `!`.
fn hex_echo_guest(dir: &std::path::Path) -> std::path::PathBuf {
    testing::write_guest(dir, "hex-echo.elf", |a| {
        let mut hex = a.create_label();
        let mut main = a.create_label();
        a.jmp(main)?;
        testing::hex_subroutine(a, &mut hex, 2)?;
        a.set_label(&mut main)?;
        print(a, "ready\n")?;
        let mut next = a.create_label();
        a.set_label(&mut next)?;
        testing::wait_for_input(a)?;
        a.mov(dx, vmm::boot::layout::SERIAL_PORT as u32)?;
        a.in_(al, dx)?;
        a.movzx(r12d, al)?;
        a.mov(eax, r12d)?;
        a.call(hex)?;
        print(a, " ")?;
        a.cmp(r12d, i32::from(b'!'))?;
        a.jne(next)?;
        poweroff(a)
    })
    .expect("assemble guest")
}

/// Piped input reaches the guest byte for byte, Ctrl-A included: the escape key is for
/// terminals only.
#[test]
fn piped_input_reaches_the_guest_unfiltered() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hex_echo_guest(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvnet-vmm"))
        .args(["--kernel", kernel.to_str().expect("utf8")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnet-vmm");
    let stdout = watch_stdout(&mut child);
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"\x01x\x01\x01\x03!").expect("write");
    drop(stdin);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.text(), "ready\n01 78 01 01 03 21 ");
}

/// Reads `master` on a thread of its own, into a buffer the test can watch.
fn watch_pty(master: &std::os::fd::OwnedFd) -> SharedBuffer {
    let master = master.try_clone().expect("dup");
    let seen = SharedBuffer::new();
    let mut sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        // EIO once every slave descriptor is closed.
        while let Ok(n) = nix::unistd::read(&master, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = std::io::Write::write_all(&mut sink, &buf[..n]);
        }
    });
    seen
}

/// On a terminal (here a pty the VMM's session controls), what the user types goes to
/// the guest as typed: no line buffering, no second echo, Ctrl-C, Ctrl-Z and Ctrl-D are
/// the guest's; Ctrl-A Ctrl-A sends one Ctrl-A and Ctrl-A x stops the VM. The
/// terminal's settings are back when the VMM ends.
#[test]
fn a_terminal_gives_the_guest_raw_input_and_ctrl_a_x_stops() {
    use nix::sys::termios::{InputFlags, LocalFlags, tcgetattr};
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hex_echo_guest(dir.path());
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let before = tcgetattr(&pty.slave).expect("tcgetattr");
    let output = watch_pty(&pty.master);
    let tty = || Stdio::from(pty.slave.try_clone().expect("dup"));
    // A session of its own whose controlling terminal is the pty, with the VMM as its
    // foreground process group, as a shell runs a command.
    let child = Command::new("setsid")
        .args([
            "--ctty",
            "--wait",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
            "--kernel",
        ])
        .arg(&kernel)
        .stdin(tty())
        .stdout(tty())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setsid kvnet-vmm");
    wait_for(&output, "ready\r\n");
    nix::unistd::write(&pty.master, b"ab\r\x03\x1a\x04\x01\x01c").expect("type");
    wait_for(&output, "63 ");
    assert_eq!(
        output.text(),
        "ready\r\n61 62 0d 03 1a 04 01 63 ",
        "each byte reached the guest once, as typed, and was not echoed"
    );
    nix::unistd::write(&pty.master, b"\x01x").expect("type");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.ends_with("kvnet-vmm: stopped\n"), "{stderr}");
    let after = tcgetattr(&pty.slave).expect("tcgetattr");
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG)
            && after.input_flags.contains(InputFlags::ICRNL),
        "{after:?}"
    );
}

/// A VMM started in the background of a terminal (`kvnet-vmm ... &`) does not read it:
/// that would stop it with SIGTTIN before the guest ran.
#[test]
fn a_vmm_in_the_terminals_background_runs_without_its_input() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hello_guest(dir.path());
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let output = watch_pty(&pty.master);
    let tty = || Stdio::from(pty.slave.try_clone().expect("dup"));
    // An interactive shell's job control (`set -m`): the VMM gets a process group of
    // its own, which is not the terminal's foreground one. `wait` also returns when the
    // job is stopped.
    let child = Command::new("setsid")
        .args([
            "--ctty",
            "--wait",
            "bash",
            "-c",
            "set -m; \"$0\" --kernel \"$1\" & wait $!",
            env!("CARGO_BIN_EXE_kvnet-vmm"),
        ])
        .arg(&kernel)
        .env("KVNET_VMM_LOG", "info")
        .stdin(tty())
        .stdout(tty())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setsid bash");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("console input is off"), "{stderr}");
    assert!(
        stderr.contains("kvnet-vmm: guest powered off\n"),
        "{stderr}"
    );
    wait_for(&output, "Hello from a kvnet mini-guest\r\n");
}

/// Logs written to a pipe or file carry no colour codes: they are for terminals.
#[test]
fn logs_on_a_pipe_have_no_colour_codes() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = hello_guest(dir.path());
    let child = spawn_binary(&["--kernel", kernel.to_str().expect("utf8")], "info");
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("vm exit requested"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// A guest the VMM cannot emulate (code fetched from an address with no memory behind
/// it) ends it with one error line, not a log line saying the same before it.
#[test]
fn an_emulation_failure_is_reported_once() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "jump-out.elf", |a| {
        // 512 MiB: identity-mapped, above the guest's 128 MiB of RAM, no device there.
        a.mov(rax, 0x2000_0000u64)?;
        a.jmp(rax)
    })
    .expect("assemble");
    let (code, _, stderr) = run_binary(&["--kernel", kernel.to_str().expect("utf8")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.matches("unhandled exit").count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("kvnet-vmm: error: vcpu 0: guest stopped with unhandled exit")
            && stderr.trim_end().ends_with("at rip 0x20000000"),
        "{stderr}"
    );
}

/// A triple fault ends the VMM (as a reset does, and as in Firecracker), and the log
/// says so, with the guest's RIP in hex.
#[test]
fn a_triple_fault_is_logged_as_the_end_of_the_vm_with_rip_in_hex() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // `ud2` with the boot IDT, which has no gate: #UD, #GP, #DF, shutdown.
    let prefix = testing::assemble(|a| print(a, "faulting\n")).expect("assemble");
    let ud2_rip = testing::GUEST_CODE_START + prefix.len() as u64;
    let kernel = testing::write_guest(dir.path(), "ud2.elf", |a| {
        print(a, "faulting\n")?;
        a.ud2()?;
        poweroff(a)
    })
    .expect("assemble");
    let (code, stdout, stderr) = run_binary(&["--kernel", kernel.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "faulting\n");
    assert!(
        stderr.contains("guest triple fault: the VM ends, as on a reset")
            && stderr.contains(&format!("rip={ud2_rip:#x}")),
        "{stderr}"
    );
    assert!(!stderr.contains("resetting"), "{stderr}");
    assert!(stderr.ends_with("kvnet-vmm: guest reset\n"), "{stderr}");
}
