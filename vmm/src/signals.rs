//! SIGTERM, SIGINT and SIGHUP stop the VM the way a guest poweroff does: the console is
//! drained and the VMM exits 0, as QEMU does on SIGTERM. Their default action would
//! kill the process and lose the console's last output.
//!
//! They are blocked in every thread and taken by one that waits for them: no handler
//! runs in the middle of a vCPU thread or a console write. The vCPU kick signal
//! (see [`crate::kvm::vcpu::kick_signal`]) is left alone.

use nix::sys::signal::{SigSet, Signal};

use crate::StopHandle;

/// The signals that stop the VM.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Errors setting up the stop signals.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `pthread_sigmask` failed.
    #[error("cannot block SIGTERM, SIGINT and SIGHUP")]
    Block(#[source] nix::Error),
    /// The waiting thread could not be started.
    #[error("cannot start the thread that waits for SIGTERM, SIGINT and SIGHUP")]
    Thread(#[source] std::io::Error),
}

fn stop_set() -> SigSet {
    let mut set = SigSet::empty();
    for signal in STOP_SIGNALS {
        set.add(signal);
    }
    set
}

/// Blocks the stop signals in the calling thread. Call it before any other thread
/// starts: threads inherit the mask, and one that did not block them would take the
/// signal with its default action.
pub fn block() -> Result<(), SignalError> {
    stop_set().thread_block().map_err(SignalError::Block)
}

/// Starts the thread that stops the VM on the first stop signal. One that arrived
/// while the VM was being built is pending, and stops it at once.
pub fn spawn_waiter(stop: StopHandle) -> Result<(), SignalError> {
    let set = stop_set();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            loop {
                match set.wait() {
                    Ok(signal) => {
                        tracing::info!(signal = signal.as_str(), "stopping the VM");
                        stop.stop();
                    }
                    // sigwait only fails on an invalid set; do not spin on it.
                    Err(error) => {
                        tracing::warn!(%error, "waiting for stop signals failed");
                        return;
                    }
                }
            }
        })
        .map(drop)
        .map_err(SignalError::Thread)
}
