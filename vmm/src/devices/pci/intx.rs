//! Legacy INTx: each function's interrupt pin, swizzled per slot onto IOAPIC GSIs
//! [`INTX_GSI_BASE`]..+[`INTX_GSI_COUNT`] (level-triggered, active-low, as the DSDT's
//! `_PRT` tells the guest), delivered through a KVM irqfd with a resample eventfd.
//!
//! Level semantics with an irqfd: a write asserts the line, and it stays asserted until
//! the guest EOIs the interrupt. KVM then deasserts it and signals the resample eventfd;
//! the line's worker thread re-asserts if the device's level source (for virtio, the ISR
//! status byte, which the guest clears by reading it) still says pending. Clearing the
//! source therefore takes effect at the next EOI, which is when a level-triggered
//! interrupt controller would look at the pin again anyway.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::kvm::{IrqRouting, KvmError};

/// First GSI used for PCI INTx (IOAPIC pins 16..24, as on PC chipsets).
pub const INTX_GSI_BASE: u32 = 16;
/// Number of GSIs INTx pins are swizzled over.
pub const INTX_GSI_COUNT: u32 = 8;
/// Interrupt pin value of INTA# (0 means the function uses no pin).
pub const PIN_INTA: u8 = 1;
/// Interrupt pins a function may use: INTA#..INTD#.
pub const PINS: std::ops::RangeInclusive<u8> = 1..=4;

/// The GSI that `pin` (1 = INTA#..4 = INTD#) of device `device` on bus 0 raises: the
/// usual rotation by slot, so functions on neighbouring slots do not share a line.
pub fn gsi_for(device: u8, pin: u8) -> u32 {
    INTX_GSI_BASE + (u32::from(device) + u32::from(pin.saturating_sub(1))) % INTX_GSI_COUNT
}

/// Attaches level-triggered irqfds (KVM_IRQFD with a resample eventfd); tests can supply a
/// recording fake.
pub trait IntxRouter: Send + Sync + std::fmt::Debug {
    /// Makes writes to `irqfd` assert `gsi` until the guest's EOI, which signals `resample`.
    fn attach_resampled_irqfd(
        &self,
        irqfd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), KvmError>;
    /// Undoes [`IntxRouter::attach_resampled_irqfd`].
    fn detach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError>;
}

impl IntxRouter for IrqRouting {
    fn attach_resampled_irqfd(
        &self,
        irqfd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), KvmError> {
        self.register_resampled_irqfd(irqfd, resample, gsi)
    }

    fn detach_irqfd(&self, irqfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
        self.unregister_irqfd(irqfd, gsi)
    }
}

/// Errors connecting an INTx line.
#[derive(Debug, thiserror::Error)]
pub enum IntxError {
    /// An eventfd or the epoll set could not be created.
    #[error("cannot create the {what} of INTx GSI {gsi}")]
    Fd {
        /// Which descriptor.
        what: &'static str,
        /// The GSI.
        gsi: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused the irqfd.
    #[error("cannot attach the resampled irqfd of INTx GSI {gsi}")]
    Attach {
        /// The GSI.
        gsi: u32,
        /// Why.
        #[source]
        source: KvmError,
    },
    /// The resample thread did not start.
    #[error("cannot start the resample thread of INTx GSI {gsi}")]
    Spawn {
        /// The GSI.
        gsi: u32,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the device wants its pin asserted (e.g. "the ISR status byte is non-zero").
pub type LevelSource = Arc<dyn Fn() -> bool + Send + Sync>;

/// What the device side and the resample thread share.
struct LineState {
    gsi: u32,
    irqfd: EventFd,
    /// False while MSI-X is enabled or the command register's Interrupt Disable bit is set.
    enabled: AtomicBool,
    /// Whether KVM's line is (or is about to be) high from our irqfd: set when we write
    /// it, cleared by the resample that follows the guest's EOI.
    asserted: AtomicBool,
    level: LevelSource,
}

impl LineState {
    /// Asserts the pin if the device wants it, INTx is enabled and the line is not
    /// already high. A second irqfd write while it is high would only be coalesced, or,
    /// since KVM injects from a workqueue, land after the guest's ISR read and EOI and
    /// raise a spurious interrupt.
    fn update(&self) {
        if self.enabled.load(Ordering::SeqCst)
            && (self.level)()
            && self
                .asserted
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            && let Err(error) = self.irqfd.write(1)
        {
            self.asserted.store(false, Ordering::SeqCst);
            tracing::warn!(gsi = self.gsi, %error, "cannot signal the INTx irqfd");
        }
    }

    /// KVM lowered the line at the guest's EOI: raise it again if still pending.
    fn resampled(&self) {
        self.asserted.store(false, Ordering::SeqCst);
        self.update();
    }
}

/// Epoll tokens of the resample thread.
const TOKEN_RESAMPLE: u64 = 0;
const TOKEN_STOP: u64 = 1;

/// One function's INTx pin, wired to a GSI. Dropping it detaches the irqfd and stops
/// the resample thread.
pub struct IntxLine {
    state: Arc<LineState>,
    router: Arc<dyn IntxRouter>,
    stop: EventFd,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for IntxLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntxLine")
            .field("gsi", &self.state.gsi)
            .field("enabled", &self.state.enabled.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl IntxLine {
    /// Wires a pin to `gsi` through `router`; it asserts while `level` returns true and
    /// the line is enabled (it starts disabled).
    pub fn new(
        gsi: u32,
        router: Arc<dyn IntxRouter>,
        level: LevelSource,
    ) -> Result<IntxLine, IntxError> {
        let fd = |what| {
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| IntxError::Fd {
                what,
                gsi,
                source,
            })
        };
        let irqfd = fd("irqfd")?;
        let resample = fd("resample eventfd")?;
        let stop = fd("stop eventfd")?;
        let epoll = Epoll::new().map_err(|source| IntxError::Fd {
            what: "epoll set",
            gsi,
            source,
        })?;
        for (token, watched) in [(TOKEN_RESAMPLE, &resample), (TOKEN_STOP, &stop)] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    watched.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|source| IntxError::Fd {
                    what: "epoll registration",
                    gsi,
                    source,
                })?;
        }
        router
            .attach_resampled_irqfd(&irqfd, &resample, gsi)
            .map_err(|source| IntxError::Attach { gsi, source })?;
        let state = Arc::new(LineState {
            gsi,
            irqfd,
            enabled: AtomicBool::new(false),
            asserted: AtomicBool::new(false),
            level,
        });
        let worker_state = Arc::clone(&state);
        let worker = std::thread::Builder::new()
            .name(format!("intx-gsi{gsi}"))
            .spawn(move || resample_loop(&epoll, &resample, &worker_state));
        let worker = match worker {
            Ok(worker) => worker,
            Err(source) => {
                if let Err(error) = router.detach_irqfd(&state.irqfd, gsi) {
                    tracing::warn!(gsi, %error, "cannot detach the INTx irqfd");
                }
                return Err(IntxError::Spawn { gsi, source });
            }
        };
        Ok(IntxLine {
            state,
            router,
            stop,
            worker: Some(worker),
        })
    }

    /// The GSI this pin raises.
    #[cfg(test)]
    pub(crate) fn gsi(&self) -> u32 {
        self.state.gsi
    }

    /// Whether INTx may be asserted now.
    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.state.enabled.load(Ordering::SeqCst)
    }

    /// Allows or forbids asserting the pin (MSI-X enable, Interrupt Disable); enabling
    /// while the source is pending asserts at once. Disabling cannot lower a line that
    /// is already high (an irqfd has no deassert): it drops at the guest's next EOI.
    pub fn set_enabled(&self, enabled: bool) {
        let was = self.state.enabled.swap(enabled, Ordering::SeqCst);
        if enabled && !was {
            self.state.update();
        }
    }

    /// The level source may have risen: assert if it is pending and INTx is enabled.
    pub fn update(&self) {
        self.state.update();
    }

    /// Whether the line is high (asserted and not yet EOI'd by the guest).
    #[cfg(test)]
    pub(crate) fn is_asserted(&self) -> bool {
        self.state.asserted.load(Ordering::SeqCst)
    }
}

/// Waits for resamples (the guest EOI'd the level interrupt and KVM deasserted it) and
/// re-asserts while the source is still pending, until the stop eventfd fires.
fn resample_loop(epoll: &Epoll, resample: &EventFd, state: &LineState) {
    let mut events = [EpollEvent::default(); 2];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => {
                tracing::error!(gsi = state.gsi, %error, "INTx resample thread: epoll failed");
                return;
            }
        };
        for event in &events[..count] {
            match event.data() {
                TOKEN_STOP => return,
                _ => {
                    // Drain the counter; several EOIs before we ran are one resample.
                    let _ = resample.read();
                    state.resampled();
                }
            }
        }
    }
}

impl Drop for IntxLine {
    fn drop(&mut self) {
        if let Err(error) = self.router.detach_irqfd(&self.state.irqfd, self.state.gsi) {
            tracing::warn!(gsi = self.state.gsi, %error, "cannot detach the INTx irqfd");
        }
        if let Err(error) = self.stop.write(1) {
            tracing::warn!(gsi = self.state.gsi, %error, "cannot stop the INTx resample thread");
            return;
        }
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!(gsi = self.state.gsi, "the INTx resample thread panicked");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicU8;
    use std::time::{Duration, Instant};

    /// Records level irqfds; the test plays KVM by writing the resample eventfd.
    #[derive(Debug, Default)]
    pub(crate) struct FakeIntx {
        /// (irqfd, resample eventfd, gsi) of every attached line.
        pub lines: Mutex<Vec<(EventFd, EventFd, u32)>>,
        pub detached: Mutex<Vec<u32>>,
    }

    impl FakeIntx {
        /// How many times the irqfd of `gsi` was written since the last call.
        pub fn asserted(&self, gsi: u32) -> u64 {
            let lines = self.lines.lock().expect("lock");
            lines
                .iter()
                .find(|(_, _, g)| *g == gsi)
                .map(|(fd, _, _)| fd.read().unwrap_or(0))
                .unwrap_or(0)
        }

        /// What KVM does on the guest's EOI: signal the resample eventfd.
        pub fn eoi(&self, gsi: u32) {
            let lines = self.lines.lock().expect("lock");
            let (_, resample, _) = lines.iter().find(|(_, _, g)| *g == gsi).expect("line");
            resample.write(1).expect("resample");
        }

        /// Waits up to 5 s for the irqfd of `gsi` to be written; returns the count.
        pub fn wait_asserted(&self, gsi: u32) -> u64 {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let n = self.asserted(gsi);
                if n > 0 || Instant::now() > deadline {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    impl IntxRouter for FakeIntx {
        fn attach_resampled_irqfd(
            &self,
            irqfd: &EventFd,
            resample: &EventFd,
            gsi: u32,
        ) -> Result<(), KvmError> {
            self.lines.lock().expect("lock").push((
                irqfd.try_clone().expect("clone"),
                resample.try_clone().expect("clone"),
                gsi,
            ));
            Ok(())
        }
        fn detach_irqfd(&self, _irqfd: &EventFd, gsi: u32) -> Result<(), KvmError> {
            self.detached.lock().expect("lock").push(gsi);
            Ok(())
        }
    }

    #[test]
    fn pins_rotate_by_slot_over_gsis_16_to_23() {
        assert_eq!(gsi_for(0, PIN_INTA), 16);
        assert_eq!(gsi_for(1, PIN_INTA), 17);
        assert_eq!(gsi_for(1, 2), 18, "INTB# of slot 1");
        assert_eq!(gsi_for(7, PIN_INTA), 23);
        assert_eq!(gsi_for(8, PIN_INTA), 16, "wraps after eight slots");
        assert_eq!(gsi_for(31, 4), 16 + (31 + 3) % 8);
        for device in 0..32 {
            for pin in PINS {
                assert!((16..24).contains(&gsi_for(device, pin)));
            }
        }
    }

    fn line(router: &Arc<FakeIntx>) -> (IntxLine, Arc<AtomicU8>) {
        let status = Arc::new(AtomicU8::new(0));
        let source = Arc::clone(&status);
        let level: LevelSource = Arc::new(move || source.load(Ordering::SeqCst) != 0);
        let router_dyn: Arc<dyn IntxRouter> = router.clone();
        (IntxLine::new(17, router_dyn, level).expect("line"), status)
    }

    #[test]
    fn asserts_only_while_enabled_and_pending() {
        let router = Arc::new(FakeIntx::default());
        let (line, status) = line(&router);
        line.update();
        assert_eq!(router.asserted(17), 0, "nothing pending");
        status.store(1, Ordering::SeqCst);
        line.update();
        assert_eq!(router.asserted(17), 0, "starts disabled");
        line.set_enabled(true);
        assert_eq!(router.asserted(17), 1, "enabling a pending line asserts it");
        assert!(line.is_asserted());
        line.update();
        assert_eq!(router.asserted(17), 0, "already high until the EOI");
        line.set_enabled(false);
        router.eoi(17);
        wait_until(|| !line.is_asserted());
        line.update();
        assert_eq!(router.asserted(17), 0, "disabled");
        line.set_enabled(true);
        assert_eq!(router.asserted(17), 1);
    }

    /// Polls `check` for up to 5 s (the resample thread runs asynchronously).
    pub(crate) fn wait_until(check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "condition not reached in 5 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn resample_reasserts_while_the_source_is_pending() {
        let router = Arc::new(FakeIntx::default());
        let (line, status) = line(&router);
        line.set_enabled(true);
        status.store(1, Ordering::SeqCst);
        line.update();
        assert_eq!(router.asserted(17), 1);
        // EOI with the source still pending (the guest did not read the ISR): re-assert.
        router.eoi(17);
        assert_eq!(router.wait_asserted(17), 1);
        // The guest cleared the source before its EOI: the line stays down.
        status.store(0, Ordering::SeqCst);
        router.eoi(17);
        wait_until(|| !line.is_asserted());
        assert_eq!(router.asserted(17), 0);
        // A new event after that EOI asserts again.
        status.store(1, Ordering::SeqCst);
        line.update();
        assert_eq!(router.asserted(17), 1);
        drop(line);
        assert_eq!(*router.detached.lock().expect("lock"), vec![17]);
    }
}
