//! Unit tests of the virtio-pci transport against a recording device and a fake
//! MSI router: configuration space, common registers, negotiation, queues, reset.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::pci::config::{
    CAP_ID_MSIX, CAPABILITIES_POINTER, COMMAND, COMMAND_INTX_DISABLE, STATUS, STATUS_INTERRUPT,
};
use crate::devices::pci::intx::tests::wait_until;
use crate::devices::pci::msix::tests::FakeRouter;
use crate::devices::virtio::ActivateError;

const FEATURE_MAC: u64 = 1 << 5;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const OFFERED: u64 = VERSION_1 | FEATURE_MAC;
const MEM_SIZE: usize = 0x10_0000;
const VNET_HDR: usize = 12;

#[derive(Debug, Default)]
struct Log {
    acked: u64,
    /// (queue size, desc address) of each activation's queues.
    activations: Vec<Vec<(u16, u64)>>,
    resets: usize,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    notify: Vec<EventFd>,
    config_writes: Vec<(u64, Vec<u8>)>,
    /// What the device reports as `needs_reset()`.
    needs_reset: bool,
}

#[derive(Debug)]
struct Recorder {
    log: Arc<Mutex<Log>>,
    sizes: [u16; 2],
}

impl VirtioDevice for Recorder {
    fn device_type(&self) -> u32 {
        1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        OFFERED
    }
    fn ack_features(&mut self, features: u64) {
        self.log.lock().expect("log").acked = features & OFFERED;
    }
    fn acked_features(&self) -> u64 {
        self.log.lock().expect("log").acked
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xa0u8.wrapping_add((offset as u8).wrapping_add(i as u8));
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .expect("log")
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _mem: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<(Queue, EventFd)>,
    ) -> Result<(), ActivateError> {
        let mut log = self.log.lock().expect("log");
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        log.activations.push(
            queues
                .iter()
                .map(|(q, _)| (q.size(), q.desc_table()))
                .collect(),
        );
        log.notify = queues.into_iter().map(|(_, fd)| fd).collect();
        log.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) -> bool {
        // Also runs from Drop during a failing test: don't panic on a poisoned lock.
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.resets += 1;
        log.acked = 0;
        log.interrupt = None;
        true
    }
    fn needs_reset(&self) -> bool {
        self.log.lock().map(|log| log.needs_reset).unwrap_or(false)
    }
}

struct Fixture {
    dev: VirtioPciDevice,
    log: Arc<Mutex<Log>>,
    router: Arc<FakeRouter>,
}

fn fixture() -> Fixture {
    let log = Arc::new(Mutex::new(Log::default()));
    let (mut dev, router, _) = transport(Box::new(Recorder {
        log: log.clone(),
        sizes: [16, 8],
    }));
    // Memory space and bus mastering, as a driver enables them before using it.
    dev.config_write(COMMAND, &[0x06, 0]);
    Fixture { dev, log, router }
}

fn transport(
    device: Box<dyn VirtioDevice>,
) -> (VirtioPciDevice, Arc<FakeRouter>, Arc<GuestMemoryMmap>) {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory"),
    );
    let router = Arc::new(FakeRouter::default());
    let dev = VirtioPciDevice::new(device, mem.clone(), router.clone()).expect("device");
    (dev, router, mem)
}

impl Fixture {
    fn r(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.dev.bar_read(BAR_INDEX, offset, &mut data[..len]);
        u64::from_le_bytes(data)
    }
    fn w(&mut self, offset: u64, len: usize, value: u64) {
        self.dev
            .bar_write(BAR_INDEX, offset, &value.to_le_bytes()[..len]);
    }
    fn status(&mut self) -> u8 {
        self.r(common::DEVICE_STATUS, 1) as u8
    }
    fn set_status(&mut self, bits: u32) {
        let status = u64::from(self.status()) | u64::from(bits);
        self.w(common::DEVICE_STATUS, 1, status);
    }
    fn negotiate(&mut self, features: u64) {
        self.w(common::DEVICE_STATUS, 1, 0);
        self.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
        for select in 0..2u64 {
            self.w(common::DRIVER_FEATURE_SELECT, 4, select);
            self.w(
                common::DRIVER_FEATURE,
                4,
                features >> (32 * select) & 0xffff_ffff,
            );
        }
        self.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
    }
    /// Queue `index` of `size` with rings at `base` (desc), +0x1000, +0x2000.
    fn setup_queue(&mut self, index: u16, size: u16, base: u64) {
        self.w(common::QUEUE_SELECT, 2, index.into());
        self.w(common::QUEUE_SIZE, 2, size.into());
        // 64-bit registers as two 32-bit halves, as drivers do.
        for (reg, addr) in [
            (common::QUEUE_DESC, base),
            (common::QUEUE_DRIVER, base.wrapping_add(0x1000)),
            (common::QUEUE_DEVICE, base.wrapping_add(0x2000)),
        ] {
            self.w(reg, 4, addr & 0xffff_ffff);
            self.w(reg + 4, 4, addr >> 32);
        }
        self.w(common::QUEUE_MSIX_VECTOR, 2, u64::from(index) + 1);
        self.w(common::QUEUE_ENABLE, 2, 1);
    }
}

/// The vendor capabilities as (cfg_type, bar, offset, length, extra u32).
fn virtio_caps(config: &PciConfig) -> Vec<(u8, u8, u32, u32, Option<u32>)> {
    let mut caps = Vec::new();
    let mut at = config.bytes()[CAPABILITIES_POINTER] as usize;
    let mut seen_msix = false;
    let mut guard = 0;
    while at != 0 && guard < 48 {
        guard += 1;
        let b = config.bytes();
        match b[at] {
            CAP_ID_VENDOR => {
                let cap_len = b[at + 2];
                let extra = (cap_len >= 20).then(|| config.read_u32(at + 16));
                caps.push((
                    b[at + 3],
                    b[at + 4],
                    config.read_u32(at + 8),
                    config.read_u32(at + 12),
                    extra,
                ));
            }
            CAP_ID_MSIX => seen_msix = true,
            other => panic!("unexpected capability {other:#x}"),
        }
        at = b[at + 1] as usize;
    }
    assert!(seen_msix, "MSI-X capability present");
    caps
}

#[test]
fn config_space_identifies_a_modern_net_device_and_links_its_structures() {
    let f = fixture();
    let c = f.dev.config();
    assert_eq!(c.read_u16(0), 0x1af4);
    assert_eq!(c.read_u16(2), 0x1041);
    assert_eq!(c.bytes()[8], 1, "revision 1 marks a modern device");
    assert_eq!(&c.bytes()[0x0a..0x0c], &[0x00, 0x02], "Ethernet controller");
    assert_eq!(c.read_u16(0x2c), 0x1af4);
    assert_eq!(c.read_u16(0x2e), 0x1041);
    assert_ne!(c.read_u16(STATUS) & 0x10, 0, "capability list flagged");
    assert_eq!(c.read_u32(0x10) & 0b110, 0b100, "64-bit memory BAR");
    let caps = virtio_caps(c);
    assert_eq!(
        caps,
        vec![
            (VIRTIO_PCI_CAP_COMMON_CFG, 0, 0x0000, 0x38, None),
            (VIRTIO_PCI_CAP_ISR_CFG, 0, 0x1000, 1, None),
            (VIRTIO_PCI_CAP_DEVICE_CFG, 0, 0x2000, 0x1000, None),
            (VIRTIO_PCI_CAP_NOTIFY_CFG, 0, 0x3000, 8, Some(4)),
            (VIRTIO_PCI_CAP_PCI_CFG, 0, 0, 0, Some(0)),
        ]
    );
    // Every structure lies inside the BAR.
    for (_, _, offset, len, _) in caps {
        assert!(u64::from(offset) + u64::from(len) <= BAR_SIZE);
    }
}

#[test]
fn msix_table_lives_in_the_bar_and_follows_the_capability() {
    let mut f = fixture();
    let cap = f.msix_cap();
    let c = f.dev.config();
    assert_eq!(c.read_u16(cap + 2), 2, "3 vectors: config + 2 queues");
    assert_eq!(c.read_u32(cap + 4), 0x4000);
    assert_eq!(c.read_u32(cap + 8), 0x5000);
    f.w(MSIX_TABLE_OFFSET + 16 + 8, 4, 0x45);
    assert_eq!(f.r(MSIX_TABLE_OFFSET + 16 + 8, 4), 0x45);
    assert_eq!(f.r(MSIX_TABLE_OFFSET + 16 + 12, 4), 1, "masked after reset");
    f.dev.config_write(COMMAND, &[0x06, 0]);
    assert_eq!(f.dev.config().read_u16(COMMAND), 0x06);
}

#[test]
fn common_registers_follow_the_spec() {
    let mut f = fixture();
    assert_eq!(f.r(common::NUM_QUEUES, 2), 2);
    f.w(common::DEVICE_FEATURE_SELECT, 4, 0);
    assert_eq!(f.r(common::DEVICE_FEATURE, 4), OFFERED & 0xffff_ffff);
    f.w(common::DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(f.r(common::DEVICE_FEATURE, 4), OFFERED >> 32);
    f.w(common::DEVICE_FEATURE_SELECT, 4, 7);
    assert_eq!(f.r(common::DEVICE_FEATURE, 4), 0, "beyond 64 bits");
    f.w(common::DEVICE_FEATURE, 4, 0xffff_ffff);
    f.w(common::DEVICE_FEATURE_SELECT, 4, 0);
    assert_eq!(
        f.r(common::DEVICE_FEATURE, 4),
        OFFERED & 0xffff_ffff,
        "read-only"
    );
    f.w(common::NUM_QUEUES, 2, 9);
    assert_eq!(f.r(common::NUM_QUEUES, 2), 2, "read-only");

    // Queue registers per selected queue.
    f.w(common::QUEUE_SELECT, 2, 0);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 16, "defaults to the maximum");
    assert_eq!(f.r(common::QUEUE_NOTIFY_OFF, 2), 0);
    assert_eq!(f.r(common::QUEUE_MSIX_VECTOR, 2), 0xffff);
    f.w(common::QUEUE_SELECT, 2, 1);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 8);
    assert_eq!(f.r(common::QUEUE_NOTIFY_OFF, 2), 1);
    f.w(common::QUEUE_DESC, 8, 0x1234_5678_9abc_def0);
    assert_eq!(f.r(common::QUEUE_DESC, 8), 0x1234_5678_9abc_def0);
    f.w(common::QUEUE_DRIVER + 4, 4, 0x11);
    f.w(common::QUEUE_DRIVER, 4, 0x22);
    assert_eq!(f.r(common::QUEUE_DRIVER, 8), 0x11_0000_0022);
    assert_eq!(f.r(common::QUEUE_DRIVER + 4, 4), 0x11);

    // Vectors the device does not have read back as NO_VECTOR.
    f.w(common::QUEUE_MSIX_VECTOR, 2, 2);
    assert_eq!(f.r(common::QUEUE_MSIX_VECTOR, 2), 2);
    f.w(common::QUEUE_MSIX_VECTOR, 2, 3);
    assert_eq!(f.r(common::QUEUE_MSIX_VECTOR, 2), 0xffff);
    f.w(common::MSIX_CONFIG, 2, 0);
    assert_eq!(f.r(common::MSIX_CONFIG, 2), 0);
    f.w(common::MSIX_CONFIG, 2, 0x7ff);
    assert_eq!(f.r(common::MSIX_CONFIG, 2), 0xffff);

    // A queue the device lacks is "not available" and ignores writes.
    f.w(common::QUEUE_SELECT, 2, 0xffff);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 0);
    f.w(common::QUEUE_SIZE, 2, 4);
    f.w(common::QUEUE_ENABLE, 2, 1);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 0);
    assert_eq!(f.r(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(f.r(common::QUEUE_MSIX_VECTOR, 2), 0xffff);

    // Beyond the registers reads zero; writes there do nothing.
    f.w(COMMON_CFG_LEN, 4, 0xffff_ffff);
    assert_eq!(f.r(COMMON_CFG_LEN, 4), 0);
    assert_eq!(f.r(0x0fff, 1), 0);
}

#[test]
fn device_config_window_reaches_the_device() {
    let mut f = fixture();
    assert_eq!(f.r(DEVICE_CFG_OFFSET + 2, 2), 0xa3a2);
    f.w(DEVICE_CFG_OFFSET + 6, 2, 0xbeef);
    assert_eq!(
        f.log.lock().expect("log").config_writes,
        vec![(6, vec![0xef, 0xbe])]
    );
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    let mut f = fixture();
    f.negotiate(FEATURE_MAC);
    assert_eq!(
        f.status() & VIRTIO_CONFIG_S_FEATURES_OK as u8,
        0,
        "no VERSION_1"
    );
    f.negotiate(VERSION_1 | FEATURE_MAC | 1 << 40);
    assert_eq!(
        f.status() & VIRTIO_CONFIG_S_FEATURES_OK as u8,
        0,
        "unknown bit"
    );
    f.negotiate(VERSION_1 | FEATURE_MAC);
    assert_eq!(
        f.status(),
        (VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK) as u8
    );
    assert_eq!(f.log.lock().expect("log").acked, VERSION_1 | FEATURE_MAC);
    // After FEATURES_OK the driver features are frozen.
    f.w(common::DRIVER_FEATURE_SELECT, 4, 0);
    f.w(common::DRIVER_FEATURE, 4, 0);
    assert_eq!(f.r(common::DRIVER_FEATURE, 4), FEATURE_MAC);
}

#[test]
fn driver_ok_activates_the_device_with_the_drivers_queues() {
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 4, 0x2_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(f.dev.is_active());
    assert_eq!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    let log = f.log.lock().expect("log");
    assert_eq!(log.activations, vec![vec![(16, 0x1_0000), (4, 0x2_0000)]]);
    drop(log);
    // Queue registers are frozen while running.
    f.w(common::QUEUE_SELECT, 2, 1);
    f.w(common::QUEUE_SIZE, 2, 2);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 4);
}

#[test]
fn hostile_queue_setups_set_needs_reset_instead_of_activating() {
    // (A size that is no power of 2 or too large is not taken at all: see
    // queue_size_takes_only_powers_of_two_up_to_the_maximum.)
    let cases: [(&str, u16, u64); 2] = [
        ("rings outside guest memory", 8, MEM_SIZE as u64),
        ("misaligned descriptor table", 8, 0x1_0001),
    ];
    for (what, size, base) in cases {
        let mut f = fixture();
        f.negotiate(OFFERED);
        f.setup_queue(0, size, base);
        f.setup_queue(1, 8, 0x4_0000);
        f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(!f.dev.is_active(), "{what}");
        assert_ne!(
            f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8,
            0,
            "{what}: NEEDS_RESET"
        );
        assert!(f.log.lock().expect("log").activations.is_empty(), "{what}");
        // The ISR shows the config change that announces it.
        assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_CONFIG, "{what}");
    }
    // A queue address near u64::MAX must not overflow anything.
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 8, u64::MAX - 0xfff);
    f.setup_queue(1, 8, 0x4_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!f.dev.is_active());
    // The device refusing (here: a missing queue) also ends in NEEDS_RESET.
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 8, 0x1_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!f.dev.is_active());
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    // DRIVER_OK without FEATURES_OK.
    let mut f = fixture();
    f.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!f.dev.is_active());
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_CONFIG);
}

#[test]
fn the_device_stops_when_bus_mastering_goes_and_will_not_start_without_it() {
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(f.dev.is_active());
    // A kexec'd kernel's shutdown turns bus mastering off without a virtio reset.
    f.dev.config_write(COMMAND, &[0x02, 0]);
    assert!(!f.dev.is_active());
    assert_eq!(f.log.lock().expect("log").resets, 2);
    let status = u32::from(f.status());
    assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // Bus mastering back on is not a reset: the stopped device forgot its features.
    f.dev.config_write(COMMAND, &[0x06, 0]);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!f.dev.is_active());
    assert_eq!(f.log.lock().expect("log").activations.len(), 1);
    f.dev.config_write(COMMAND, &[0x02, 0]);
    // The next driver resets it, but forgets bus mastering: DRIVER_OK is refused.
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(!f.dev.is_active());
    assert_ne!(u32::from(f.status()) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(f.log.lock().expect("log").activations.len(), 1);
}

#[test]
fn reset_stops_the_device_and_allows_reinitialisation() {
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.w(common::MSIX_CONFIG, 2, 0);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(f.dev.is_active());
    f.w(common::DEVICE_STATUS, 1, 0);
    assert!(!f.dev.is_active());
    assert_eq!(f.status(), 0);
    // One reset from negotiate(), one from the write above.
    assert_eq!(f.log.lock().expect("log").resets, 2);
    assert_eq!(f.r(common::MSIX_CONFIG, 2), 0xffff);
    f.w(common::QUEUE_SELECT, 2, 1);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), 8);
    assert_eq!(f.r(common::QUEUE_ENABLE, 2), 0);
    assert_eq!(f.r(common::QUEUE_DESC, 8), 0);
    assert_eq!(f.r(common::QUEUE_MSIX_VECTOR, 2), 0xffff);
    // Second initialisation.
    f.negotiate(OFFERED);
    f.setup_queue(0, 2, 0x3_0000);
    f.setup_queue(1, 2, 0x4_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    assert!(f.dev.is_active());
    assert_eq!(
        f.log.lock().expect("log").activations[1],
        vec![(2, 0x3_0000), (2, 0x4_0000)]
    );
}

/// Virtio 1.2 4.1.4.3.1: a split ring's size reads back as a power of 2, so a size
/// that is none, or larger than the device's, is not taken.
#[test]
fn queue_size_takes_only_powers_of_two_up_to_the_maximum() {
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.w(common::QUEUE_SELECT, 2, 0);
    let max = f.r(common::QUEUE_SIZE, 2);
    for refused in [100, 0, max * 2, 0x8000] {
        f.w(common::QUEUE_SIZE, 2, refused);
        assert_eq!(f.r(common::QUEUE_SIZE, 2), max, "size {refused} was taken");
    }
    f.w(common::QUEUE_SIZE, 2, max / 2);
    assert_eq!(f.r(common::QUEUE_SIZE, 2), max / 2);
}

/// A message left pending on a masked vector is gone with a reset: the next driver
/// gets no stale interrupt when it unmasks the vector.
#[test]
fn a_reset_drops_pending_msix_messages() {
    let mut f = fixture();
    let interrupt = f.activate(); // queue 0 uses vector 1
    let entry = MSIX_TABLE_OFFSET + 16;
    f.w(entry, 4, 0xfee0_0000);
    f.w(entry + 8, 4, 0x41);
    f.w(entry + 12, 4, 1); // masked
    let cap = f.msix_cap();
    f.dev.config_write(cap + 3, &[0x80]);
    let gsi = lock_msix(&f.dev.msix).gsi(1).expect("gsi");
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert!(lock_msix(&f.dev.msix).is_pending(1));
    f.w(common::DEVICE_STATUS, 1, 0);
    assert!(!lock_msix(&f.dev.msix).is_pending(1));
    f.w(entry + 12, 4, 0); // unmask
    assert_eq!(f.router.fired(gsi), 0, "a stale message went out");
}

#[test]
fn a_reset_device_reads_status_0_even_if_the_device_still_wants_a_reset() {
    let mut f = fixture();
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    f.log.lock().expect("log").needs_reset = true;
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    // The device's flag lingers (a worker failing during the reset): Linux's
    // vp_reset() still polls device_status until it reads 0.
    f.w(common::DEVICE_STATUS, 1, 0);
    assert_eq!(f.status(), 0);
    f.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
}

#[test]
fn queue_interrupts_fire_the_drivers_msix_vector() {
    let mut f = fixture();
    let interrupt = f.activate(); // queue 0 uses vector 1, queue 1 vector 2
    // Program and unmask vectors 1 and 2, then enable MSI-X.
    for v in 1..3u64 {
        let entry = MSIX_TABLE_OFFSET + v * 16;
        f.w(entry, 4, 0xfee0_0000);
        f.w(entry + 8, 4, 0x40 + v);
        f.w(entry + 12, 4, 0);
    }
    let cap = f.msix_cap();
    f.dev.config_write(cap + 3, &[0x80]);
    let gsi = |v: u16| lock_msix(&f.dev.msix).gsi(v).expect("gsi");
    let (gsi1, gsi2) = (gsi(1), gsi(2));
    interrupt.trigger(InterruptKind::Queue(1)).expect("trigger");
    assert_eq!(f.router.fired(gsi2), 1);
    assert_eq!(f.router.fired(gsi1), 0);
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(f.router.fired(gsi1), 1);
    // With MSI-X on, queue interrupts leave the ISR alone (virtio 1.x 4.1.4.5.1).
    assert_eq!(f.r(ISR_CFG_OFFSET, 1), 0);
    assert!(interrupt.trigger(InterruptKind::Queue(9)).is_err());
    // The config vector is NO_VECTOR: only the ISR records it.
    interrupt.trigger(InterruptKind::Config).expect("trigger");
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_CONFIG);
    assert_eq!(f.r(ISR_CFG_OFFSET, 1), 0, "reading the ISR clears it");
}

#[test]
fn needs_reset_holds_its_msi_while_bus_mastering_is_off() {
    let mut f = fixture();
    // Config vector 0, programmed and unmasked; MSI-X on; then bus mastering off.
    f.w(MSIX_TABLE_OFFSET, 4, 0xfee0_0000);
    f.w(MSIX_TABLE_OFFSET + 8, 4, 0x40);
    f.w(MSIX_TABLE_OFFSET + 12, 4, 0);
    f.w(common::MSIX_CONFIG, 2, 0);
    let cap = f.msix_cap();
    f.dev.config_write(cap + 3, &[0x80]);
    let gsi = lock_msix(&f.dev.msix).gsi(0).expect("gsi");
    f.dev.config_write(COMMAND, &[0x02, 0]);
    // DRIVER_OK without FEATURES_OK: NEEDS_RESET, recorded in the ISR only.
    f.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
    assert_eq!(
        f.router.fired(gsi),
        0,
        "an MSI went out without bus mastering"
    );
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_CONFIG);
    // It goes out once the driver turns bus mastering on, and only once (`fired`
    // counts since it was last asked).
    f.dev.config_write(COMMAND, &[0x06, 0]);
    assert_eq!(f.router.fired(gsi), 1);
    f.dev.config_write(COMMAND, &[0x06, 0]);
    assert_eq!(f.router.fired(gsi), 0);
    // With bus mastering on, the same mistake fires the config vector at once.
    f.w(common::DEVICE_STATUS, 1, 0);
    f.w(common::MSIX_CONFIG, 2, 0);
    f.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(f.router.fired(gsi), 1);
    // A reset drops a held one.
    f.w(common::DEVICE_STATUS, 1, 0);
    f.w(common::MSIX_CONFIG, 2, 0);
    f.dev.config_write(COMMAND, &[0x02, 0]);
    f.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_DRIVER_OK);
    f.w(common::DEVICE_STATUS, 1, 0);
    f.dev.config_write(COMMAND, &[0x06, 0]);
    assert_eq!(f.router.fired(gsi), 0);
}

/// The INTx GSI the fixture's device is wired to (as the bus would for slot 1).
const INTX_GSI: u32 = 17;

impl Fixture {
    fn msix_cap(&self) -> usize {
        (0x40..256)
            .step_by(4)
            .find(|&o| self.dev.config().bytes()[o] == CAP_ID_MSIX)
            .expect("msix cap")
    }
    /// The usual driver bring-up: features, queue 0 (16 entries) and 1 (8), DRIVER_OK;
    /// returns the interrupt the device was activated with.
    fn activate(&mut self) -> Arc<dyn VirtioInterrupt> {
        self.negotiate(OFFERED);
        self.setup_queue(0, 16, 0x1_0000);
        self.setup_queue(1, 8, 0x2_0000);
        self.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        self.activated_interrupt()
    }
    fn activated_interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.log
            .lock()
            .expect("log")
            .interrupt
            .clone()
            .expect("activated")
    }
    fn intx_asserted(&self) -> u64 {
        self.router.intx.asserted(INTX_GSI)
    }
    fn pci_status(&mut self) -> u16 {
        let mut b = [0u8; 2];
        self.dev.config_read(STATUS, &mut b);
        u16::from_le_bytes(b)
    }
}

#[test]
fn interrupt_mode_follows_msix_enable_and_the_vector() {
    assert_eq!(interrupt_mode(false, 1), InterruptMode::Intx);
    assert_eq!(
        interrupt_mode(false, VIRTIO_MSI_NO_VECTOR),
        InterruptMode::Intx
    );
    assert_eq!(interrupt_mode(true, 1), InterruptMode::Msix(1));
    assert_eq!(
        interrupt_mode(true, VIRTIO_MSI_NO_VECTOR),
        InterruptMode::None,
        "PCI forbids INTx while MSI-X is enabled"
    );
}

#[test]
fn config_space_has_pin_inta_and_the_bus_sets_the_line() {
    let mut f = fixture();
    assert_eq!(f.dev.config().interrupt_pin(), 1, "INTA#");
    assert!(f.dev.intx().is_none(), "not wired before the bus adds it");
    let bus = Arc::new(Mutex::new(crate::devices::pci::PciBus::new(None)));
    let router = f.router.clone();
    let dev = Arc::new(Mutex::new(std::mem::replace(
        &mut f.dev,
        transport(Box::new(Recorder {
            log: f.log.clone(),
            sizes: [16, 8],
        }))
        .0,
    )));
    let addr = bus
        .lock()
        .expect("bus")
        .add_device(dev.clone())
        .expect("add");
    assert_eq!(addr.device, 1);
    let dev = dev.lock().expect("dev");
    assert_eq!(
        dev.config().bytes()[crate::devices::pci::config::INTERRUPT_LINE],
        17
    );
    assert_eq!(dev.intx().map(|l| l.gsi()), Some(17));
    assert!(
        dev.intx().is_some_and(|l| l.enabled()),
        "MSI-X starts disabled"
    );
    assert_eq!(
        router
            .intx
            .lines
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, _, gsi)| *gsi)
            .collect::<Vec<_>>(),
        vec![17]
    );
}

#[test]
fn without_msix_queue_interrupts_assert_intx_until_the_isr_is_read() {
    let mut f = fixture();
    f.dev.connect_intx(INTX_GSI).expect("wire intx");
    let interrupt = f.activate();
    assert_eq!(f.pci_status() & STATUS_INTERRUPT, 0);
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(f.intx_asserted(), 1, "vector 1 is ignored: MSI-X is off");
    assert_eq!(
        lock_msix(&f.dev.msix).gsi(1).map(|g| f.router.fired(g)),
        Some(0)
    );
    assert_ne!(
        f.pci_status() & STATUS_INTERRUPT,
        0,
        "status shows INTx pending"
    );
    // EOI while the ISR is still set: the resample re-asserts (level semantics).
    f.router.intx.eoi(INTX_GSI);
    assert_eq!(f.router.intx.wait_asserted(INTX_GSI), 1);
    // The handler reads the ISR (which clears it), then EOIs: the line stays down.
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_QUEUE);
    assert_eq!(f.pci_status() & STATUS_INTERRUPT, 0);
    f.router.intx.eoi(INTX_GSI);
    let line = f.dev.intx().expect("wired");
    wait_until(|| !line.is_asserted());
    assert_eq!(f.intx_asserted(), 0);
    // A second interrupt after the EOI asserts again.
    interrupt.trigger(InterruptKind::Config).expect("trigger");
    assert_eq!(f.router.intx.wait_asserted(INTX_GSI), 1);
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_CONFIG);
}

#[test]
fn interrupt_disable_and_msix_enable_silence_intx() {
    let mut f = fixture();
    f.dev.connect_intx(INTX_GSI).expect("wire intx");
    let interrupt = f.activate();
    // Interrupt Disable set: the ISR records the interrupt, the pin stays quiet.
    let command = f.dev.config().read_u16(COMMAND);
    f.dev
        .config_write(COMMAND, &(command | COMMAND_INTX_DISABLE).to_le_bytes());
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(f.intx_asserted(), 0);
    assert_ne!(
        f.pci_status() & STATUS_INTERRUPT,
        0,
        "still pending in status"
    );
    // Clearing Interrupt Disable with the ISR set asserts at once.
    f.dev.config_write(COMMAND, &command.to_le_bytes());
    assert_eq!(f.intx_asserted(), 1);
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, ISR_QUEUE);
    f.router.intx.eoi(INTX_GSI);
    wait_until(|| f.dev.intx().is_some_and(|l| !l.is_asserted()));

    // The guest enables MSI-X: vector 1 fires, INTx does not.
    let entry = MSIX_TABLE_OFFSET + 16;
    f.w(entry, 4, 0xfee0_0000);
    f.w(entry + 8, 4, 0x41);
    f.w(entry + 12, 4, 0);
    let cap = f.msix_cap();
    f.dev.config_write(cap + 3, &[0x80]);
    let gsi1 = lock_msix(&f.dev.msix).gsi(1).expect("gsi");
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(f.router.fired(gsi1), 1);
    assert_eq!(f.intx_asserted(), 0);
    assert!(f.dev.intx().is_some_and(|l| !l.enabled()));
    // A queue interrupt under MSI-X leaves no ISR bit behind (the driver never reads it)...
    assert_eq!(f.r(ISR_CFG_OFFSET, 1) as u8, 0);
    // ... so disabling MSI-X again asserts nothing until the next interrupt, on INTx.
    f.dev.config_write(cap + 3, &[0x00]);
    assert_eq!(f.intx_asserted(), 0);
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(f.router.fired(gsi1), 0);
    assert_eq!(f.intx_asserted(), 1);
    interrupt.trigger(InterruptKind::Queue(0)).expect("trigger");
    assert_eq!(
        f.intx_asserted(),
        0,
        "the line is still high: no second write"
    );
    assert!(f.dev.intx().is_some_and(IntxLine::is_asserted));
}

#[test]
fn notify_writes_signal_the_queue_eventfd() {
    let mut f = fixture();
    let specs = f.dev.ioeventfds();
    assert_eq!(
        specs
            .iter()
            .map(|s| (s.bar, s.offset, s.datamatch))
            .collect::<Vec<_>>(),
        vec![(0, 0x3000, None), (0, 0x3004, None)]
    );
    f.negotiate(OFFERED);
    f.setup_queue(0, 16, 0x1_0000);
    f.setup_queue(1, 8, 0x2_0000);
    f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
    // Without KVM the write reaches bar_write, which signals the same eventfd.
    f.w(NOTIFY_OFFSET + 4, 2, 1);
    let log = f.log.lock().expect("log");
    assert_eq!(log.notify[1].read().expect("queue 1 notified"), 1);
    assert!(log.notify[0].read().is_err(), "queue 0 not notified");
    // The ioeventfd spec is the same eventfd the device got.
    specs[0].fd.write(3).expect("write");
    assert_eq!(log.notify[0].read().expect("shared"), 3);
}

#[test]
fn unaligned_and_odd_sized_accesses_do_not_panic() {
    let mut f = fixture();
    for offset in [
        0u64, 1, 0x13, 0x15, 0x37, 0x1001, 0x2fff, 0x3007, 0x4ff, 0x5007, 0x7fff,
    ] {
        for len in [1usize, 2, 3, 4, 8] {
            f.w(offset, len, u64::MAX);
            let _ = f.r(offset, len);
        }
    }
    f.dev.bar_write(3, 0, &[1, 2, 3, 4]);
    let mut buf = [0xffu8; 4];
    f.dev.bar_read(3, 0, &mut buf);
    assert_eq!(buf, [0; 4]);
}

#[test]
fn pci_cfg_window_reaches_the_bar_through_config_space() {
    let mut f = fixture();
    let cap = (0x40..256)
        .step_by(4)
        .find(|&o| {
            let b = f.dev.config().bytes();
            b[o] == CAP_ID_VENDOR && b[o + 3] == VIRTIO_PCI_CAP_PCI_CFG
        })
        .expect("pci_cfg cap");
    let select = |f: &mut Fixture, offset: u32, length: u32| {
        f.dev.config_write(cap + 4, &[0]);
        f.dev.config_write(cap + 8, &offset.to_le_bytes());
        f.dev.config_write(cap + 12, &length.to_le_bytes());
    };
    let read = |f: &mut Fixture| {
        let mut data = [0u8; 4];
        f.dev.config_read(cap + 16, &mut data);
        u32::from_le_bytes(data)
    };
    select(&mut f, common::NUM_QUEUES as u32, 2);
    assert_eq!(read(&mut f) & 0xffff, 2);
    // Writes go through too: the device status.
    select(&mut f, common::DEVICE_STATUS as u32, 1);
    f.dev
        .config_write(cap + 16, &[VIRTIO_CONFIG_S_ACKNOWLEDGE as u8, 0, 0, 0]);
    assert_eq!(f.status(), VIRTIO_CONFIG_S_ACKNOWLEDGE as u8);
    // Device config.
    select(&mut f, DEVICE_CFG_OFFSET as u32, 4);
    assert_eq!(read(&mut f), 0xa3a2_a1a0);
    // Bad selections move nothing: a length of 3, misalignment, beyond the BAR.
    for (offset, length) in [
        (0x2000, 3),
        (0x2001, 2),
        (BAR_SIZE as u32, 4),
        (u32::MAX, 4),
    ] {
        select(&mut f, offset, length);
        f.dev.config_write(cap + 16, &[0; 4]);
        assert_eq!(
            f.status(),
            VIRTIO_CONFIG_S_ACKNOWLEDGE as u8,
            "{offset:#x}/{length}"
        );
    }
    // The header bytes of the capability stay read-only.
    f.dev.config_write(cap + 3, &[1]);
    assert_eq!(f.dev.config().bytes()[cap + 3], VIRTIO_PCI_CAP_PCI_CFG);
}

#[test]
fn real_net_device_transmits_and_survives_reset_and_reinitialisation() {
    use crate::devices::virtio::net::test_utils::MemBackend;
    use crate::devices::virtio::net::{MacAddr, Net, NetConfig};
    use vm_memory::Bytes;

    let backend = MemBackend::new().expect("backend");
    let sent = backend.tx.clone();
    let net = Net::new(
        "pci-test",
        NetConfig {
            mac: MacAddr([0x52, 0x54, 0, 1, 2, 3]),
            mtu: None,
        },
        Box::new(backend),
    );
    let (mut dev, router, mem) = transport(Box::new(net));
    dev.config_write(COMMAND, &[0x06, 0]);
    let mut f = Fixture {
        dev,
        log: Arc::default(),
        router,
    };
    // The MAC through the device config window.
    assert_eq!(f.r(DEVICE_CFG_OFFSET, 4), 0x0100_5452);
    for round in 0..2u8 {
        let base = 0x1_0000 * (u64::from(round) + 1);
        f.negotiate(VERSION_1 | FEATURE_MAC);
        f.setup_queue(0, 8, base);
        f.setup_queue(1, 8, base + 0x8000);
        f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
        assert!(f.dev.is_active(), "round {round}");
        assert_eq!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET as u8, 0);
        // One TX chain: 12-byte header + a 60-byte frame, descriptor 0 of queue 1.
        let (desc, avail, buf) = (base + 0x8000, base + 0x9000, base + 0xc000);
        let mut frame = vec![0u8; VNET_HDR + 60];
        frame[VNET_HDR..].fill(0xe0 + round);
        mem.write_slice(&frame, GuestAddress(buf)).expect("frame");
        mem.write_obj(buf, GuestAddress(desc)).expect("addr");
        mem.write_obj(frame.len() as u32, GuestAddress(desc + 8))
            .expect("len");
        mem.write_obj(0u16, GuestAddress(avail + 4)).expect("ring");
        mem.write_obj(1u16, GuestAddress(avail + 2)).expect("idx");
        f.w(NOTIFY_OFFSET + 4, 2, 1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sent.lock().expect("tx").len() <= usize::from(round)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            sent.lock().expect("tx").get(usize::from(round)),
            Some(&frame),
            "round {round}"
        );
        // Reset joins the worker; the next round activates a fresh one.
        f.w(common::DEVICE_STATUS, 1, 0);
        assert!(!f.dev.is_active());
        assert_eq!(f.dev.device().acked_features(), 0);
    }
}

/// A guest looping on a queue outside its memory is warned about once, by the
/// transport's latch (virtio-queue's `is_valid` would log an error each time).
#[test]
fn a_driver_looping_on_a_queue_outside_memory_logs_one_line() {
    let mut f = fixture();
    let text = crate::testing::warnings_logged(|| {
        for _ in 0..100 {
            f.negotiate(OFFERED);
            f.setup_queue(0, 8, MEM_SIZE as u64);
            f.setup_queue(1, 8, 0x4_0000);
            f.set_status(VIRTIO_CONFIG_S_DRIVER_OK);
            assert!(!f.dev.is_active());
        }
    });
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("refusing an invalid queue"), "{text}");
}

#[test]
fn a_driver_repeating_an_error_logs_one_warning_even_across_resets() {
    let mut f = fixture();
    let text = crate::testing::warnings_logged(|| {
        for _ in 0..2 {
            // Every FEATURES_OK write with a feature the device does not offer fails.
            f.negotiate(OFFERED | 1 << 40);
            for _ in 0..50 {
                f.set_status(VIRTIO_CONFIG_S_FEATURES_OK);
            }
            assert_eq!(f.status() & VIRTIO_CONFIG_S_FEATURES_OK as u8, 0);
        }
        // A reset is one register write: a guest looping on "reset, error" is warned
        // about once a minute at most.
        for _ in 0..1000 {
            f.w(common::DEVICE_STATUS, 1, 0);
            f.w(
                common::DEVICE_STATUS,
                1,
                u64::from(VIRTIO_CONFIG_S_DRIVER_OK),
            );
        }
    });
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("refusing FEATURES_OK"))
        .collect();
    // negotiate() resets first.
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("device=virtio"), "{text}");
    let loops = text
        .lines()
        .filter(|l| l.contains("DRIVER_OK without FEATURES_OK"))
        .count();
    assert_eq!(loops, 1, "{text}");
}
