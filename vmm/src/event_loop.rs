//! How a running VM ends: devices and vCPU threads report the first exit request here and
//! the thread in [`crate::Vm::run`] waits for it.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::kvm::VcpuError;

/// Why the VM stopped running without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest wrote S5 to the ACPI sleep control register (`poweroff`).
    Poweroff,
    /// The guest reset the machine (i8042 0xfe, ACPI reset register, triple fault).
    Reset,
    /// The host stopped the VM through a [`crate::StopHandle`].
    Stopped,
}

/// The single place the end of a VM is decided: the first request wins.
#[derive(Debug, Default)]
pub struct ExitSignal {
    outcome: Mutex<Option<Result<ExitReason, VcpuError>>>,
    changed: Condvar,
}

impl ExitSignal {
    /// Records `outcome` unless something already ended the VM.
    pub fn request(&self, outcome: Result<ExitReason, VcpuError>) {
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            match &outcome {
                Ok(reason) => tracing::info!(?reason, "vm exit requested"),
                // Whoever waits gets the error, and reports it (kvnet-vmm's last line).
                Err(error) => tracing::debug!(%error, "vm exit on error"),
            }
            *slot = Some(outcome);
            self.changed.notify_all();
        }
    }

    /// Whether an exit has been requested.
    pub fn is_requested(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Blocks until an exit is requested or `timeout` passes (then records `Stopped`).
    pub fn wait(&self, timeout: Option<Duration>) -> Result<ExitReason, VcpuError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(outcome) = slot.as_ref() {
                return outcome.clone();
            }
            match deadline {
                None => slot = self.changed.wait(slot).unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        *slot = Some(Ok(ExitReason::Stopped));
                        continue;
                    }
                    slot = self
                        .changed
                        .wait_timeout(slot, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_request_wins() {
        let signal = ExitSignal::default();
        signal.request(Ok(ExitReason::Poweroff));
        signal.request(Ok(ExitReason::Reset));
        assert_eq!(signal.wait(None), Ok(ExitReason::Poweroff));
    }

    #[test]
    fn wait_times_out_as_stopped() {
        let signal = ExitSignal::default();
        let start = Instant::now();
        assert_eq!(
            signal.wait(Some(Duration::from_millis(30))),
            Ok(ExitReason::Stopped)
        );
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn request_from_another_thread_wakes_waiter() {
        let signal = Arc::new(ExitSignal::default());
        let remote = signal.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            remote.request(Ok(ExitReason::Reset));
        });
        assert_eq!(
            signal.wait(Some(Duration::from_secs(10))),
            Ok(ExitReason::Reset)
        );
        t.join().expect("thread");
    }
}
