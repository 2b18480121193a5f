//! The virtio-net device model: features, config space, activation and reset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::rxtx::{GuestGso, HostOffloads, NetWorker, NetWorkerSetup};
use super::tap::{TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, Tap, TapError};
use super::{
    DEFAULT_MTU, MAX_GSO_FRAME_LEN, NetBackend, NetConfig, NetCounters, NetStats, QUEUE_SIZE,
    VNET_HDR_LEN,
};
use crate::devices::virtio::{
    ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt, WarnLatch, guest_warn,
};

/// `virtio_net_config` up to and including `mtu`: mac[6], status, max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// The features the device offers besides `VIRTIO_NET_F_MTU`.
pub const BASE_FEATURES: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX);

/// The tap offloads (`TUN_F_*`) matching the receive features a driver accepted:
/// the tap may then hand us partial-checksum and GSO frames the guest can take.
pub fn tap_offload_flags(acked: u64) -> u32 {
    let has = |feature| acked & bit(feature) != 0;
    // The kernel ignores TSO flags without CSUM, and so does the spec.
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
        flags |= TUN_F_TSO_ECN;
    }
    flags
}

#[derive(Debug)]
struct RunningWorker {
    kill: EventFd,
    /// Gives the backend back; `None` if the worker never arrived.
    thread: JoinHandle<Option<Box<dyn NetBackend>>>,
}

/// A virtio-net device on a [`NetBackend`].
#[derive(Debug)]
pub struct Net {
    config: NetConfig,
    name: String,
    avail_features: u64,
    acked_features: u64,
    queue_sizes: [u16; 2],
    /// Present while the device is not running.
    backend: Option<Box<dyn NetBackend>>,
    worker: Option<RunningWorker>,
    counters: Arc<NetCounters>,
    needs_reset: Arc<AtomicBool>,
    /// The offloads last set on the backend; `None` before the first activation sets
    /// them: a tap another VMM used before (a persistent port's, an inherited one) may
    /// have any.
    tap_offloads: Option<u32>,
    /// Driver errors logged at warn (see [`WarnLatch::clear`]).
    warned: WarnLatch,
    /// Its workers' (one per activation) errors logged at warn.
    worker_warned: Arc<Mutex<WarnLatch>>,
    /// A failing backend was logged at warn, once for the device's life.
    backend_warned: Arc<AtomicBool>,
}

/// [`WarnLatch`] bit: the driver accepted features that were not offered.
const WARN_UNOFFERED: u32 = 0;

impl Net {
    /// A device on any backend; `name` labels logs and the worker thread.
    pub fn new(name: &str, config: NetConfig, backend: Box<dyn NetBackend>) -> Net {
        let mut avail_features = BASE_FEATURES;
        if config.mtu.is_some() {
            avail_features |= bit(VIRTIO_NET_F_MTU);
        }
        Net {
            config,
            name: name.to_owned(),
            avail_features,
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; 2],
            backend: Some(backend),
            worker: None,
            counters: Arc::new(NetCounters::default()),
            needs_reset: Arc::new(AtomicBool::new(false)),
            tap_offloads: None,
            warned: WarnLatch::default(),
            worker_warned: Arc::default(),
            backend_warned: Arc::default(),
        }
    }

    /// A device on a tap: sets the tap's vnet header to 12 bytes.
    pub fn with_tap(config: NetConfig, tap: Tap) -> Result<Net, TapError> {
        tap.set_vnet_hdr_size(VNET_HDR_LEN as i32)?;
        // No offloads until a driver accepts them.
        tap.set_offload(0)?;
        let name = tap.name().to_owned();
        Ok(Net::new(&name, config, Box::new(tap)))
    }

    /// The guest-visible configuration (MAC, MTU).
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The live counters, shared with the worker.
    pub fn counters(&self) -> Arc<NetCounters> {
        Arc::clone(&self.counters)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> NetStats {
        self.counters.snapshot()
    }

    /// Whether the worker is running.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut space = [0u8; CONFIG_LEN];
        space[..6].copy_from_slice(&self.config.mac.0);
        space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes());
        let mtu = self.config.mtu.unwrap_or(DEFAULT_MTU);
        space[10..12].copy_from_slice(&mtu.to_le_bytes());
        space
    }

    /// Checks the driver's queues and negotiated features, configures the
    /// backend's offloads and builds the data path without starting a thread.
    /// [`VirtioDevice::activate`] runs the result on a worker thread; tests drive it
    /// directly. On error the backend stays with the device.
    pub fn prepare_worker(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<NetWorker, ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if self.acked_features & bit(VIRTIO_F_VERSION_1) == 0 {
            return Err(ActivateError::LegacyDriver);
        }
        let got = queues.len();
        let Ok::<[(Queue, EventFd); 2], _>([mut rx, mut tx]) = queues.try_into() else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        let event_idx = self.acked_features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        for (index, (queue, _)) in [&mut rx, &mut tx].into_iter().enumerate() {
            let size = queue.size();
            if !crate::devices::virtio::queue_usable(&mem, queue)
                || !size.is_power_of_two()
                || size > self.queue_sizes[index]
            {
                NetCounters::add(&self.counters.bad_queue, 1);
                return Err(ActivateError::InvalidQueue { index, size });
            }
            queue.set_event_idx(event_idx);
        }
        let mut backend = self.backend.take().ok_or(ActivateError::NoBackend)?;
        let offloads = tap_offload_flags(self.acked_features);
        // Only a change: each TUNSETOFFLOAD takes the kernel's RTNL lock and tells every
        // netlink listener on the host, and a guest may reset and activate in a loop.
        // (Between a reset and the next activation no worker reads the tap; frames it
        // queued under the old offloads that the new driver cannot take are dropped,
        // see `header_acceptable`.)
        if self.tap_offloads != Some(offloads) {
            if let Err(e) = backend.set_offload(offloads) {
                self.backend = Some(backend);
                return Err(ActivateError::Backend(e));
            }
            self.tap_offloads = Some(offloads);
        }
        let guest_gso = bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6);
        // Ethernet + VLAN header around an MTU-sized packet.
        let mtu_frame = VNET_HDR_LEN + 18 + usize::from(self.config.mtu.unwrap_or(DEFAULT_MTU));
        let max_frame = if self.acked_features & guest_gso != 0 {
            MAX_GSO_FRAME_LEN
        } else {
            mtu_frame
        };
        let max_plain_frame = if self.acked_features & bit(VIRTIO_NET_F_MTU) != 0 {
            mtu_frame
        } else {
            max_frame
        };
        self.needs_reset.store(false, Ordering::SeqCst);
        Ok(NetWorker::new(NetWorkerSetup {
            mem,
            rx,
            tx,
            backend,
            interrupt,
            counters: Arc::clone(&self.counters),
            needs_reset: Arc::clone(&self.needs_reset),
            warned: Arc::clone(&self.worker_warned),
            backend_warned: Arc::clone(&self.backend_warned),
            name: self.name.clone(),
            mergeable: self.acked_features & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            guest_csum: self.acked_features & bit(VIRTIO_NET_F_GUEST_CSUM) != 0,
            guest_gso: GuestGso {
                tso4: self.acked_features & bit(VIRTIO_NET_F_GUEST_TSO4) != 0,
                tso6: self.acked_features & bit(VIRTIO_NET_F_GUEST_TSO6) != 0,
                ufo: self.acked_features & bit(VIRTIO_NET_F_GUEST_UFO) != 0,
                ecn: self.acked_features & bit(VIRTIO_NET_F_GUEST_ECN) != 0,
            },
            host_offloads: HostOffloads {
                csum: self.acked_features & bit(VIRTIO_NET_F_CSUM) != 0,
                tso4: self.acked_features & bit(VIRTIO_NET_F_HOST_TSO4) != 0,
                tso6: self.acked_features & bit(VIRTIO_NET_F_HOST_TSO6) != 0,
            },
            max_frame,
            max_plain_frame,
        }))
    }

    /// Takes the backend back from a worker driven outside [`VirtioDevice::activate`].
    pub fn restore_worker(&mut self, worker: NetWorker) {
        self.backend = Some(worker.into_backend());
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        let unknown = features & !self.avail_features;
        if unknown != 0 {
            guest_warn!(self.warned, WARN_UNOFFERED, device = %self.name,
                unknown = format_args!("{unknown:#x}"),
                "virtio-net: driver accepted features that were not offered");
        }
        self.acked_features = features & self.avail_features;
    }

    fn acked_features(&self) -> u64 {
        self.acked_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| space.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field is read-only for a VERSION_1 driver.
        tracing::debug!(device = %self.name, offset, len = data.len(),
            "virtio-net: ignoring config space write");
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        // Made before the worker takes the backend: a failure after that would lose it,
        // and every later activation would fail.
        let kill = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(ActivateError::Spawn)?;
        let kill_worker = kill.try_clone().map_err(ActivateError::Spawn)?;
        let worker = self.prepare_worker(mem, Arc::clone(&interrupt), queues);
        let worker = match worker {
            Ok(worker) => worker,
            Err(e) => {
                if matches!(e, ActivateError::InvalidQueue { .. }) {
                    self.needs_reset.store(true, Ordering::SeqCst);
                    let _ = interrupt.trigger(InterruptKind::Config);
                }
                return Err(e);
            }
        };
        // The worker is handed over once the thread runs, so that it (and the backend)
        // comes back if the thread cannot be started.
        let (hand_over, handed) = std::sync::mpsc::sync_channel::<NetWorker>(1);
        let spawned = std::thread::Builder::new()
            .name(format!("virtio-net-{}", self.name))
            .spawn(move || handed.recv().ok().map(|worker| worker.run(&kill_worker)));
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                self.backend = Some(worker.into_backend());
                return Err(ActivateError::Spawn(e));
            }
        };
        if let Err(std::sync::mpsc::SendError(worker)) = hand_over.send(worker) {
            // The thread is gone already (it cannot be, short of a panic).
            self.backend = Some(worker.into_backend());
            return Err(ActivateError::Spawn(std::io::Error::other(
                "the worker thread ended before it started",
            )));
        }
        self.worker = Some(RunningWorker { kill, thread });
        tracing::info!(device = %self.name, mac = %self.config.mac,
            features = format_args!("{:#x}", self.acked_features), "virtio-net: activated");
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.acked_features = 0;
        self.warned.clear();
        self.worker_warned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let Some(worker) = self.worker.take() else {
            self.needs_reset.store(false, Ordering::SeqCst);
            return false;
        };
        if let Err(e) = worker.kill.write(1) {
            tracing::error!(device = %self.name, error = %e, "virtio-net: cannot stop worker");
        }
        match worker.thread.join() {
            Ok(Some(backend)) => self.backend = Some(backend),
            Ok(None) => tracing::error!(device = %self.name, "virtio-net: worker never started"),
            Err(_) => tracing::error!(device = %self.name, "virtio-net: worker panicked"),
        }
        // Only now: a worker still in its pass until the join may have failed on the
        // old rings and set the flag again, and a reset device must not report it.
        self.needs_reset.store(false, Ordering::SeqCst);
        true
    }

    fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.reset();
    }
}
