//! kvnet-vmm: a KVM virtual machine monitor built on the rust-vmm crates.
//!
//! [`Vm::new`] builds a machine from a [`VmConfig`]: guest RAM, an in-kernel irqchip and
//! PIT, the kernel loaded through linux-loader (bzImage 64-bit entry or ELF/PVH), ACPI
//! tables, COM1, the i8042 reset line, the ACPI sleep/reset registers and a PCI host
//! bridge (CF8/CFC and ECAM) with one virtio-net-pci NIC per `--net` tap
//! ([`Vm::add_virtio_device`] adds more). [`Vm::run`] starts one thread per
//! vCPU and returns when the guest powers off or resets, the host stops it, or the guest
//! does something the VMM cannot handle.

pub mod boot;
pub mod config;
pub mod devices;
pub mod error;
pub mod escape;
pub mod event_loop;
pub mod kvm;
pub mod privileges;
pub mod seccomp;
pub mod signals;
pub mod terminal;
#[cfg(any(test, feature = "test-guest"))]
pub mod testing;

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use kvm_ioctls::Cap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

pub use config::{Cli, SerialSink, VmConfig};
// The rust-vmm crates in our public API, so users need not pin them separately.
pub use devices::serial::SharedBuffer;
pub use error::Error;
pub use event_loop::ExitReason;
pub use {kvm_bindings, kvm_ioctls, linux_loader, vm_memory, vmm_sys_util};

use boot::{acpi, layout, loader};
use devices::acpi_pm::{self, AcpiPmDevice};
use devices::bus::Bus;
use devices::i8042::{I8042, I8042_PORT_COUNT};
use devices::pci::{PciBarWindow, PciBus, PciConfigIo, PciConfigMmio};
use devices::serial::{SERIAL_PORT_COUNT, SerialDevice};
use devices::virtio::VirtioDevice;
use devices::virtio::net::{Net, PortLease};
use devices::virtio::pci::VirtioPciDevice;
use event_loop::ExitSignal;
use kvm::{GuestMemory, IrqRouting, KvmIoEvents, Vcpu, VmFd};

/// A built, not yet running, virtual machine.
pub struct Vm {
    // Field order is drop order: vCPUs and devices go before the VM fd, memory last.
    vcpus: Vec<Vcpu>,
    pio: Arc<Bus>,
    serial: Arc<Mutex<SerialDevice>>,
    /// The thread writing serial output to a terminal or file, drained at the end.
    console: Option<devices::console::ConsoleDrain>,
    pci: Arc<Mutex<PciBus>>,
    routing: Arc<IrqRouting>,
    exit: Arc<ExitSignal>,
    first_run: Arc<OnceLock<StartupReport>>,
    measure_startup: bool,
    /// The NICs' ports on kvnetd networks, given back once the devices have stopped
    /// ([`Vm::run_with_timeout`]), or after they are gone.
    ports: Vec<PortLease>,
    /// Held, never handed out: the VM's memory slots point into `memory`, so no VM fd
    /// may outlive it (`kvm::memory::register_guest_memory`).
    _vm: Arc<VmFd>,
    memory: GuestMemory,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vcpus", &self.vcpus.len())
            .field("pio", &self.pio)
            .finish_non_exhaustive()
    }
}

/// Stops a running [`Vm`] from another thread.
#[derive(Clone, Debug)]
pub struct StopHandle(Arc<ExitSignal>);

impl StopHandle {
    /// Ends the VM with [`ExitReason::Stopped`] (no effect if it already ended).
    pub fn stop(&self) {
        self.0.request(Ok(ExitReason::Stopped));
    }
}

/// Feeds COM1's receive FIFO (see [`Vm::serial_input`]).
#[derive(Clone, Debug)]
pub struct SerialInput(Arc<Mutex<SerialDevice>>);

impl SerialInput {
    /// Queues as many of `bytes` as the 64-byte FIFO takes; returns how many.
    pub fn send(&self, bytes: &[u8]) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes)
    }

    /// Forwards everything read from `input` until EOF, waiting while the FIFO is full.
    pub fn forward(&self, mut input: impl std::io::Read) {
        let mut buf = [0u8; 64];
        while let Some(n) = read_input(&mut input, &mut buf) {
            self.send_all(&buf[..n]);
        }
    }

    /// Forwards what the user types on a terminal in raw mode (`input`) until Ctrl-A `x`,
    /// which stops the VM through `stop` (see [`escape`]).
    pub fn forward_interactive(&self, mut input: impl std::io::Read, stop: &StopHandle) {
        let mut filter = escape::EscapeFilter::default();
        let mut buf = [0u8; 64];
        let mut out = Vec::with_capacity(2 * buf.len());
        while let Some(n) = read_input(&mut input, &mut buf) {
            out.clear();
            let stopping = filter.filter(&buf[..n], &mut out);
            self.send_all(&out);
            if stopping {
                tracing::info!("stopping the VM: Ctrl-A x typed on the console");
                stop.stop();
                return;
            }
        }
    }

    /// Queues all of `bytes`, waiting while the FIFO is full.
    fn send_all(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = self.send(bytes);
            bytes = &bytes[taken..];
            if !bytes.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The next bytes of console input into `buf`: `None` at its end, or after an error,
/// which is logged (the guest's console input ends then, not the VM). Input left
/// non-blocking (a terminal a parent set O_NONBLOCK on) is waited for, not taken for
/// an error.
fn read_input(input: &mut impl std::io::Read, buf: &mut [u8]) -> Option<usize> {
    loop {
        match input.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(INPUT_RETRY);
            }
            Err(e) => {
                tracing::warn!(error = %e, "console input ends: it cannot be read");
                return None;
            }
        }
    }
}

/// How often non-blocking console input is tried while it has nothing.
const INPUT_RETRY: Duration = Duration::from_millis(10);

impl Vm {
    /// Builds the machine described by `config` and loads the guest.
    pub fn new(config: VmConfig) -> Result<Vm, Error> {
        config.validate()?;
        // Inherited tap fds first, before the VMM opens descriptors of its own.
        let mut ports = Vec::new();
        let taps = config
            .net
            .iter()
            .map(|spec| {
                let (nic, tap, lease) = spec.open_tap(&config.owner)?;
                ports.extend(lease);
                Ok((nic, tap))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        // MACs taken from taps, against each other and those given.
        config::unique_macs(taps.iter().map(|(nic, _)| nic.mac))?;
        vcpu_kick_handler()?;
        let kvm = kvm::vm::open_kvm()?;
        kvm::vm::check_vcpu_count(&kvm, config.vcpus)?;
        let vm = Arc::new(kvm::vm::create_vm(&kvm)?);
        let memory = kvm::memory::create_guest_memory(config.memory_bytes())?;
        kvm::memory::register_guest_memory(&vm, &memory)?;
        kvm::vm::create_irqchip(&vm)?;
        let max_gsi = kvm.check_extension_int(Cap::IrqRouting).max(0) as u32;
        let routing = IrqRouting::new(vm.clone(), max_gsi);

        // The guest image and what it reads at entry.
        let kernel = loader::load_kernel(&memory, &config.kernel)?;
        let initrd = config
            .initrd
            .as_deref()
            .map(|path| loader::load_initrd(&memory, path, &kernel))
            .transpose()?;
        let cmdline_size = loader::write_cmdline(&memory, &config.cmdline, &kernel)?;
        let tables = acpi::build_tables(config.vcpus)?;
        tables.write(&memory)?;
        loader::write_boot_info(
            &memory,
            &kernel,
            cmdline_size,
            initrd,
            config.memory_bytes(),
            tables.rsdp_addr(),
        )?;
        loader::write_boot_structures(&memory, kernel.entry.protocol)?;
        tracing::debug!(rip = %format_args!("{:#x}", kernel.entry.rip),
            protocol = ?kernel.entry.protocol,
            kernel_end = %format_args!("{:#x}", kernel.kernel_end), ?initrd, "guest loaded");

        // Devices.
        let exit = Arc::new(ExitSignal::default());
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| {
                Error::EventFd {
                    what: "the serial interrupt",
                    source,
                }
            })?;
        routing.register_irqfd(&serial_irq, layout::SERIAL_IRQ)?;
        let (serial_out, console) = serial_writer(&config.serial)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, serial_out)));
        let pci = Arc::new(Mutex::new(PciBus::new(Some(Arc::new(KvmIoEvents(
            vm.clone(),
        ))))));
        let mut pio = Bus::new();
        pio.insert(
            serial.clone(),
            layout::SERIAL_PORT.into(),
            SERIAL_PORT_COUNT,
        )?;
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            layout::I8042_PORT.into(),
            I8042_PORT_COUNT,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPmDevice::new(exit.clone()))),
            layout::ACPI_PM_PORT.into(),
            acpi_pm::PORT_COUNT.into(),
        )?;
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            layout::PCI_CONFIG_ADDRESS_PORT.into(),
            8,
        )?;
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;
        mmio.insert(
            Arc::new(Mutex::new(PciBarWindow::new(pci.clone()))),
            layout::PCI_MMIO32_START,
            layout::PCI_MMIO32_SIZE,
        )?;
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
        for (net_config, tap) in taps {
            let name = tap.name().to_owned();
            let net = Net::with_tap(net_config, tap)?;
            let addr = attach_virtio(&pci, &memory, &routing, Box::new(net))?;
            tracing::info!(tap = %name, mac = %net_config.mac, pci = %addr, "virtio-net-pci NIC");
        }

        // vCPUs: all get a CPU model; the boot vCPU gets the entry state, the others
        // wait for INIT/SIPI in the in-kernel LAPIC.
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| kvm::KvmError::Ioctl {
                op: "KVM_GET_SUPPORTED_CPUID",
                source,
            })?;
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let vcpu = Vcpu::new(&vm, id, pio.clone(), mmio.clone())?;
            vcpu.configure_cpu(&supported, config.vcpus)?;
            if id == 0 {
                vcpu.configure_boot_registers(&kernel.entry)?;
            }
            vcpus.push(vcpu);
        }
        Ok(Vm {
            vcpus,
            pio,
            serial,
            console,
            pci,
            routing,
            exit,
            first_run: Arc::new(OnceLock::new()),
            measure_startup: false,
            ports,
            _vm: vm,
            memory,
        })
    }

    /// A handle that stops the VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.exit.clone())
    }

    /// A handle that feeds bytes to the guest's COM1 receiver.
    pub fn serial_input(&self) -> SerialInput {
        SerialInput(self.serial.clone())
    }

    /// PCI bus 0, to add devices before [`Vm::run`].
    pub fn pci_bus(&self) -> Arc<Mutex<PciBus>> {
        self.pci.clone()
    }

    /// Puts `device` on PCI bus 0 behind the virtio-pci transport (MSI-X through this
    /// VM's routing, queues in its guest memory). Call before [`Vm::run`].
    pub fn add_virtio_device(
        &self,
        device: Box<dyn VirtioDevice>,
    ) -> Result<devices::pci::PciAddress, Error> {
        attach_virtio(&self.pci, &self.memory, &self.routing, device)
    }

    /// The VM's interrupt routing (MSI routes and irqfds for devices).
    pub fn irq_routing(&self) -> Arc<IrqRouting> {
        self.routing.clone()
    }

    /// Guest RAM (for device models that read and write it).
    pub fn guest_memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// Leaves the NICs' ports to kvnetd instead of giving them back when the VM ends:
    /// kvnetd ends each when its tap closes or this process exits. For a process that
    /// ends with its VM (the `kvnet-vmm` binary, whose syscall filter has no socket).
    pub fn leave_ports_to_kvnetd(&mut self) {
        for lease in &mut self.ports {
            lease.leave_to_kvnetd();
        }
    }

    /// Filled in just before the first KVM_RUN (see [`Vm::measure_startup`]).
    pub fn startup_report(&self) -> Arc<OnceLock<StartupReport>> {
        self.first_run.clone()
    }

    /// Also record CPU time and RSS at the first KVM_RUN (see [`StartupReport`]).
    pub fn measure_startup(&mut self) {
        self.measure_startup = true;
    }

    /// Runs until the guest powers off or resets, or a [`StopHandle`] stops it.
    pub fn run(self) -> Result<ExitReason, Error> {
        self.run_with_timeout(None)
    }

    /// Like [`Vm::run`], but stops the VM (returning [`ExitReason::Stopped`]) after `timeout`.
    pub fn run_with_timeout(mut self, timeout: Option<Duration>) -> Result<ExitReason, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut spawn_error = None;
        for vcpu in self.vcpus.drain(..) {
            let id = vcpu.id();
            let (stop, exit, first_run) = (stop.clone(), self.exit.clone(), self.first_run.clone());
            let measure = self.measure_startup;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    let _panic_ends_the_vm = EndVmOnPanic {
                        exit: exit.clone(),
                        vcpu: id,
                    };
                    first_run.get_or_init(|| StartupReport::now(measure));
                    vcpu.run_loop(&stop, &exit)
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(source) => {
                    spawn_error = Some(Error::Thread { vcpu: id, source });
                    self.exit.request(Ok(ExitReason::Stopped));
                    break;
                }
            }
        }
        let outcome = self.exit.wait(timeout);
        stop.store(true, Ordering::Release);
        for handle in threads {
            // The kick sets immediate_exit, so one signal is enough; repeat in case the
            // thread had not installed its pointer yet.
            while !handle.is_finished() {
                let _ = handle.kill(kvm::vcpu::kick_signal());
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        // The guest's last words (a panic, a poweroff message) reach the terminal.
        if let Some(console) = self.console.take() {
            console.finish(CONSOLE_DRAIN_TIMEOUT);
        }
        // The ports go back while their taps are still open: a tap closed first ends its
        // port in kvnetd, which would then log the give-back as a request for nothing.
        self.pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop_devices();
        drop(std::mem::take(&mut self.ports));
        if let Some(error) = spawn_error {
            return Err(error);
        }
        Ok(outcome?)
    }
}

/// Ends the VM when a vCPU thread unwinds from a panic: the VM would otherwise wait for
/// that vCPU for ever, its other vCPUs still running.
struct EndVmOnPanic {
    exit: Arc<ExitSignal>,
    vcpu: u32,
}

impl Drop for EndVmOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.exit
                .request(Err(kvm::VcpuError::Panicked { vcpu: self.vcpu }));
        }
    }
}

/// Wraps `device` in a [`VirtioPciDevice`] and adds it to `pci`.
fn attach_virtio(
    pci: &Mutex<PciBus>,
    memory: &GuestMemory,
    routing: &Arc<IrqRouting>,
    device: Box<dyn VirtioDevice>,
) -> Result<devices::pci::PciAddress, Error> {
    let router: Arc<dyn devices::pci::InterruptRouter> = routing.clone();
    let device = VirtioPciDevice::new(device, Arc::new(memory.clone()), router)?;
    let mut bus = pci.lock().unwrap_or_else(|p| p.into_inner());
    Ok(bus.add_device(Arc::new(Mutex::new(device)))?)
}

fn vcpu_kick_handler() -> Result<(), Error> {
    kvm::vcpu::install_kick_handler().map_err(Error::Signal)
}

/// Where the UART's bytes go: straight into memory or nowhere, or through a thread of
/// its own to a terminal or file, which may block (see [`devices::console`]).
fn serial_writer(
    sink: &SerialSink,
) -> Result<
    (
        Box<dyn Write + Send>,
        Option<devices::console::ConsoleDrain>,
    ),
    Error,
> {
    let blocking: Box<dyn Write + Send> = match sink {
        SerialSink::None => return Ok((Box::new(std::io::sink()), None)),
        SerialSink::Buffer(buffer) => return Ok((Box::new(buffer.clone()), None)),
        SerialSink::Stdio => Box::new(std::io::stdout()),
        SerialSink::File(path) => Box::new(devices::console_log::ConsoleLog::open(path).map_err(
            |source| Error::SerialFile {
                path: path.clone(),
                source,
            },
        )?),
        SerialSink::LogProcess(path) => Box::new(
            devices::console_log::LogProcess::spawn(path).map_err(|source| Error::SerialFile {
                path: path.clone(),
                source,
            })?,
        ),
    };
    let (output, drain) = devices::console::spawn(blocking).map_err(Error::SerialThread)?;
    Ok((Box::new(output), Some(drain)))
}

/// How long an ending VM waits for its serial output to be written.
const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The moment the first vCPU entered KVM_RUN.
#[derive(Clone, Copy, Debug)]
pub struct StartupReport {
    /// Wall-clock time.
    pub wall: SystemTime,
    /// CPU time the whole process had used by then (all threads), if measured.
    pub cpu: Option<Duration>,
    /// The most that was resident by then, in KiB, if measured (see [`resident_kib`]).
    pub rss_kib: Option<u64>,
}

impl StartupReport {
    fn now(measure: bool) -> StartupReport {
        let wall = SystemTime::now();
        StartupReport {
            wall,
            cpu: measure.then(process_cpu_time).flatten(),
            rss_kib: measure.then(resident_kib).flatten(),
        }
    }
}

/// CPU time used by every thread of this process (`CLOCK_PROCESS_CPUTIME_ID`: no file
/// to open under the syscall filter).
pub fn process_cpu_time() -> Option<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .ok()
        .map(Duration::from)
}

/// The most this process has had resident so far, in KiB (`getrusage`: no file to open
/// under the syscall filter). At start-up it is what is resident.
pub fn resident_kib() -> Option<u64> {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .ok()
        .and_then(|usage| u64::try_from(usage.max_rss()).ok())
}

/// Entry point of the `kvnet-vmm` binary.
pub fn main() -> ExitCode {
    use clap::Parser;
    let mut args = std::env::args_os().skip(1);
    if args
        .next()
        .is_some_and(|arg| arg == devices::console_log::WRITER_ARG)
    {
        let path = args.next();
        let stdio = args.next();
        return match (path, stdio, args.next()) {
            (Some(path), None, None) => {
                devices::console_log::run_writer(std::path::Path::new(&path), false)
            }
            (Some(path), Some(stdio), None) if stdio == devices::console_log::WRITER_STDIO_ARG => {
                devices::console_log::run_writer(std::path::Path::new(&path), true)
            }
            _ => {
                eprintln!(
                    "kvnet-vmm: usage: kvnet-vmm {} PATH [{}] (the VMM's own console log writer)",
                    devices::console_log::WRITER_ARG,
                    devices::console_log::WRITER_STDIO_ARG
                );
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    // Before anything opens a descriptor of its own: the ones `--net tap-fd=N` may take.
    devices::virtio::net::tap::record_inherited_fds(cli.tap_fds());
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a terminal turns them into colours.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KVNET_VMM_LOG")
                // virtio-queue logs an error for each mistake of a guest's, unlatched:
                // the device models warn about those themselves, once a minute at most.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,virtio_queue=off")),
        )
        .try_init();
    // KVNET_VMM_TIMINGS=1: report start-up time and RSS for the bench harness.
    let timings = std::env::var_os("KVNET_VMM_TIMINGS").is_some();
    // Before any thread starts, so that every thread inherits the mask.
    let blocked = signals::block();
    // The terminal's own settings, put back however the VM ends.
    let mut terminal = None;
    let seccomp = cli.seccomp;
    let user = cli.user.clone();
    let result = blocked.map_err(Error::from).and_then(|()| {
        // Resolved first: a misspelt user is refused before anything is built.
        let run_as = user
            .as_deref()
            .map(privileges::RunAs::resolve)
            .transpose()?;
        let mut config = cli.into_config()?;
        let stdio = matches!(config.serial, SerialSink::Stdio);
        // The filter allows no file to be opened or renamed: the log's own process does it.
        if let SerialSink::File(path) = &config.serial {
            config.serial = SerialSink::LogProcess(path.clone());
        }
        let mut vm = Vm::new(config)?;
        // The filter allows no socket to give them back with; kvnetd ends them as the
        // taps close when this process exits.
        vm.leave_ports_to_kvnetd();
        signals::spawn_waiter(vm.stop_handle())?;
        if timings {
            vm.measure_startup();
        }
        if stdio {
            terminal = forward_stdin(&vm);
        }
        if seccomp != seccomp::Mode::Off {
            // The default hook would read files for a backtrace (RUST_BACKTRACE).
            std::panic::set_hook(Box::new(|panic| eprintln!("kvnet-vmm: {panic}")));
        }
        // Last: everything that opens files, devices and sockets has done so.
        if let Some(run_as) = &run_as {
            run_as.become_user()?;
        }
        seccomp::install(seccomp)?;
        let startup = vm.startup_report();
        let outcome = vm.run();
        if timings {
            report_timings(startup.get());
        }
        outcome
    });
    drop(terminal);
    match result {
        Ok(reason) => {
            let what = match reason {
                ExitReason::Poweroff => "guest powered off",
                ExitReason::Reset => "guest reset",
                ExitReason::Stopped => "stopped",
            };
            eprintln!("kvnet-vmm: {what}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("kvnet-vmm: error: {}", netd::errors::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Feeds the VMM's stdin to the guest's console, which is on stdio; the thread ends
/// with the process. A terminal we are in the foreground of is switched to raw input
/// until the returned guard is dropped.
fn forward_stdin(vm: &Vm) -> Option<terminal::RawTerminal> {
    let input = vm.serial_input();
    let spawn = |forward: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name("serial-in".into())
            .spawn(forward)
            .map_err(|error| tracing::warn!(%error, "console input is off: no thread for it"))
            .is_ok()
    };
    match terminal::stdin_kind() {
        terminal::Stdin::NotTerminal => {
            spawn(Box::new(move || input.forward(std::io::stdin())));
            None
        }
        terminal::Stdin::Background => {
            // Reading would get the VMM stopped (SIGTTIN) until it is brought back.
            tracing::info!(
                "console input is off: stdin is a terminal this process is not in the foreground of"
            );
            None
        }
        terminal::Stdin::Foreground => {
            let raw = match terminal::RawTerminal::enter() {
                Ok(raw) => raw,
                Err(error) => {
                    tracing::warn!(%error, "console input stays line-buffered");
                    spawn(Box::new(move || input.forward(std::io::stdin())));
                    return None;
                }
            };
            let stop = vm.stop_handle();
            spawn(Box::new(move || {
                input.forward_interactive(std::io::stdin(), &stop)
            }))
            .then_some(raw)
        }
    }
}

fn report_timings(startup: Option<&StartupReport>) {
    let field = |v: Option<String>| v.unwrap_or_else(|| "unknown".to_owned());
    eprintln!(
        "kvnet-vmm: timings first_kvm_run_unix_ns={} cpu_us_at_first_kvm_run={} rss_kib_at_first_kvm_run={} rss_kib_at_exit={}",
        field(
            startup
                .and_then(|s| s.wall.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string())
        ),
        field(
            startup
                .and_then(|s| s.cpu)
                .map(|c| c.as_micros().to_string())
        ),
        field(startup.and_then(|s| s.rss_kib).map(|k| k.to_string())),
        field(resident_kib().map(|k| k.to_string())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads that would block, are interrupted, then give data, then fail.
    struct Flaky(std::collections::VecDeque<std::io::Result<&'static [u8]>>);

    impl std::io::Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.pop_front() {
                Some(Ok(bytes)) => {
                    buf[..bytes.len()].copy_from_slice(bytes);
                    Ok(bytes.len())
                }
                Some(Err(e)) => Err(e),
                None => Ok(0),
            }
        }
    }

    #[test]
    fn console_input_waits_out_would_block_and_ends_at_an_error() {
        use std::io::{Error, ErrorKind};
        let mut input = Flaky(
            [
                Err(Error::from(ErrorKind::WouldBlock)),
                Err(Error::from(ErrorKind::Interrupted)),
                Ok(&b"ab"[..]),
                Err(Error::from(ErrorKind::WouldBlock)),
                Ok(&b"c"[..]),
                Err(Error::from(ErrorKind::BrokenPipe)),
                Ok(&b"never read"[..]),
            ]
            .into(),
        );
        let mut buf = [0u8; 64];
        assert_eq!(read_input(&mut input, &mut buf), Some(2));
        assert_eq!(&buf[..2], b"ab");
        assert_eq!(read_input(&mut input, &mut buf), Some(1));
        assert_eq!(read_input(&mut input, &mut buf), None);
        assert_eq!(input.0.len(), 1, "nothing is read after the error");
    }

    #[test]
    fn a_vcpu_thread_that_panics_ends_the_vm() {
        let exit = Arc::new(ExitSignal::default());
        let guard = EndVmOnPanic {
            exit: exit.clone(),
            vcpu: 3,
        };
        let thread = std::thread::spawn(move || {
            let _guard = guard;
            panic!("a device model's bug");
        });
        assert!(thread.join().is_err());
        let outcome = exit.wait(Some(Duration::from_secs(5)));
        assert_eq!(
            outcome.map_err(|e| e.to_string()),
            Err("vcpu 3: its thread panicked".to_owned())
        );

        // A vCPU thread that returns leaves the VM's outcome to others.
        let exit = Arc::new(ExitSignal::default());
        drop(EndVmOnPanic {
            exit: exit.clone(),
            vcpu: 0,
        });
        assert!(!exit.is_requested());
    }
}
