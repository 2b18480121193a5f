//! Virtio devices and the small interface a transport drives them through.
//!
//! The split follows Firecracker and Cloud Hypervisor: a device knows its type,
//! features, config space and how to run its queues; the transport ([`pci`]: modern
//! virtio-pci with MSI-X) owns the common configuration registers, the
//! queue registers and the interrupt delivery. The transport hands the device its
//! ready queues, their notification eventfds and an [`VirtioInterrupt`] on
//! `DRIVER_OK`, and calls [`VirtioDevice::reset`] when the driver writes 0 to the
//! device status.

pub mod net;
pub mod pci;

use std::fmt::Debug;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Which interrupt a device raises through its transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InterruptKind {
    /// The device configuration changed (also used to announce `NEEDS_RESET`).
    Config,
    /// The used ring of queue `n` has new entries.
    Queue(u16),
}

/// Interrupt delivery, implemented by the transport (an MSI-X vector per queue for
/// virtio-pci; a test double in unit tests).
pub trait VirtioInterrupt: Send + Sync + Debug {
    /// Raises the interrupt for `kind`.
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, the driver set up {got}")]
    QueueCount {
        /// Queues the device uses.
        expected: usize,
        /// Queues handed over.
        got: usize,
    },
    /// A queue is not ready, has a bad size, or its rings lie outside guest memory.
    #[error("queue {index} is invalid (size {size}, not ready, misplaced or outside guest memory)")]
    InvalidQueue {
        /// Queue index.
        index: usize,
        /// The size the driver set.
        size: u16,
    },
    /// The driver did not accept `VIRTIO_F_VERSION_1`; only modern drivers are served.
    #[error("driver did not negotiate VIRTIO_F_VERSION_1")]
    LegacyDriver,
    /// The device is already running.
    #[error("device is already active")]
    AlreadyActive,
    /// The backend is gone (a previous worker failed to hand it back).
    #[error("device backend is unavailable")]
    NoBackend,
    /// Configuring the backend for the negotiated features failed.
    #[error("cannot configure the backend for the negotiated features")]
    Backend(#[source] io::Error),
    /// The worker thread could not be started.
    #[error("cannot start the device worker thread")]
    Spawn(#[source] io::Error),
}

/// How long conditions logged at warn stay latched across device resets: a reset is one
/// register write, so a guest looping on "reset, then the same error" gets a warning a
/// minute, not one per loop.
const WARN_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// Guest-caused conditions already logged at warn: a guest repeating one (in a loop,
/// from a vCPU thread under the bus lock) must not flood the log. See [`guest_warn!`].
#[derive(Debug, Default, Clone, Copy)]
pub struct WarnLatch {
    /// One bit per condition logged.
    seen: u32,
    /// When the last one was.
    last_warned: Option<Instant>,
    /// A reset asked to forget them, which happens once the last warning is a minute old.
    forget: bool,
}

impl WarnLatch {
    /// Whether condition `bit` (below 32) is new since the latch was last cleared; marks
    /// it seen.
    pub fn first(&mut self, bit: u32) -> bool {
        self.first_at(bit, Instant::now())
    }

    /// Forgets every condition (on device reset), as soon as the last warning is a
    /// minute old: at once, or at the next condition after that.
    pub fn clear(&mut self) {
        self.forget = true;
    }

    fn first_at(&mut self, bit: u32, now: Instant) -> bool {
        let recent = self
            .last_warned
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_AGAIN_AFTER);
        if self.forget && !recent {
            self.seen = 0;
            self.forget = false;
        }
        let mask = 1u32.checked_shl(bit).unwrap_or(0);
        let new = self.seen & mask == 0;
        self.seen |= mask;
        if new {
            self.last_warned = Some(now);
        }
        new
    }
}

/// Logs a guest-caused condition at warn the first time (per `$latch`, a [`WarnLatch`],
/// and condition `$bit`, until the latch is cleared), at debug after that.
macro_rules! guest_warn {
    ($latch:expr, $bit:expr, $($arg:tt)+) => {
        if $latch.first($bit) {
            tracing::warn!($($arg)+);
        } else {
            tracing::debug!($($arg)+);
        }
    };
}
pub(crate) use guest_warn;

/// Whether split queue `queue` is ready and its three rings lie in guest RAM: the
/// descriptor table (16 bytes an entry), the driver's ring (flags, index, 2 bytes an
/// entry, used event) and the device's (flags, index, 8 bytes an entry, avail event).
/// `Queue::is_valid`'s checks, without its error log each time it refuses: a guest that
/// loops on a bad queue would fill the host's log.
pub(crate) fn queue_usable(mem: &GuestMemoryMmap, queue: &Queue) -> bool {
    use virtio_queue::QueueT;
    use vm_memory::{GuestAddress, GuestMemoryBackend};
    let size = usize::from(queue.size());
    queue.ready()
        && [
            (queue.desc_table(), 16 * size),
            (queue.avail_ring(), 6 + 2 * size),
            (queue.used_ring(), 6 + 8 * size),
        ]
        .into_iter()
        .all(|(address, len)| GuestMemoryBackend::check_range(mem, GuestAddress(address), len))
}

/// A virtio device as its transport sees it.
pub trait VirtioDevice: Send + Debug {
    /// A name for logs (a NIC's tap name).
    fn name(&self) -> &str {
        "virtio"
    }

    /// The virtio device ID (1 for a network card).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue, in queue order.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers.
    fn features(&self) -> u64;

    /// Records the features the driver accepted; bits the device did not offer are dropped.
    fn ack_features(&mut self, features: u64);

    /// Feature bits both sides agreed on.
    fn acked_features(&self) -> u64;

    /// Reads the device-specific configuration space at `offset`; bytes past its
    /// end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device-specific configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device on the driver's queues, each with the eventfd the transport
    /// signals when the driver notifies that queue.
    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError>;

    /// Stops the device and returns it to its pre-negotiation state, ready to be
    /// activated again. Returns whether it was active.
    fn reset(&mut self) -> bool;

    /// Whether the device hit an unrecoverable driver error and wants the transport
    /// to show `NEEDS_RESET` in the device status.
    fn needs_reset(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_latch_survives_resets_for_a_minute() {
        let now = Instant::now();
        let minute_later = now + WARN_AGAIN_AFTER;
        let mut latch = WarnLatch::default();
        assert!(latch.first_at(3, now));
        assert!(!latch.first_at(3, now));
        // Another condition still warns once.
        assert!(latch.first_at(4, now));
        // A reset loop: still latched.
        latch.clear();
        assert!(!latch.first_at(3, now));
        // The reset is remembered: a minute after the last warning, it takes effect.
        assert!(latch.first_at(3, minute_later));
        assert!(!latch.first_at(3, minute_later));
        // Without a reset, a condition stays latched however long.
        assert!(!latch.first_at(3, minute_later + WARN_AGAIN_AFTER * 10));
        // A latch that has not warned yet clears at once.
        let mut quiet = WarnLatch::default();
        quiet.clear();
        assert!(quiet.first(5));
    }
}
