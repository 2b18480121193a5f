//! virtio-net: a NIC backed by a tap file descriptor (issue 5).
//!
//! [`device::Net`] is the device model (config space, features, activation,
//! reset); [`rxtx::NetWorker`] moves frames between the guest's queues and a
//! [`NetBackend`] (a [`tap::Tap`] in production, a `SOCK_SEQPACKET` socket or an
//! in-memory queue in tests). The guest's 12-byte `virtio_net_hdr_v1` travels with
//! each frame unchanged, so the tap's kernel side handles checksum and GSO offloads.

pub mod device;
#[cfg(test)]
mod device_tests;
pub mod rxtx;
pub mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use vm_memory::VolatileSlice;

pub use device::Net;
pub use rxtx::NetWorker;
pub use tap::Tap;

/// Size of `virtio_net_hdr_v1`, the header in front of every frame (VERSION_1).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` inside the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest frame with GSO: a 64 KiB IP packet, Ethernet + VLAN header, and the vnet header.
pub const MAX_GSO_FRAME_LEN: usize = VNET_HDR_LEN + 18 + 65535;
/// MTU when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// Queue size offered for RX and TX.
pub const QUEUE_SIZE: u16 = 256;
/// Queue index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Queue index of the transmit queue.
pub const TX_QUEUE: u16 = 1;

/// Where the frames of a NIC go: a tap, or a test stand-in.
///
/// A backend moves whole frames, each starting with the 12-byte vnet header, like
/// a tap with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ(12)`.
pub trait NetBackend: AsRawFd + Send + fmt::Debug {
    /// Reads one frame into `bufs`. Returns `WouldBlock` when none is queued. Like a
    /// tap, it may return a length larger than `bufs` when the frame did not fit
    /// (the frame is then lost).
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// Writes one frame gathered from `bufs`.
    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize>;
    /// Tells the backend which offloads (`tap::TUN_F_*`) the guest accepts on receive.
    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        self.readv(bufs)
    }

    fn write_frame(&mut self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        self.writev(bufs)
    }

    fn set_offload(&mut self, tun_flags: u32) -> io::Result<()> {
        Tap::set_offload(self, tun_flags).map_err(io::Error::other)
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live per-device counters, shared between the worker and the VMM.
        #[derive(Debug, Default)]
        pub struct NetCounters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`NetCounters`].
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct NetStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl NetCounters {
            /// Reads every counter.
            pub fn snapshot(&self) -> NetStats {
                NetStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Frames delivered to the guest.
    rx_frames,
    /// Bytes delivered to the guest, without the vnet header.
    rx_bytes,
    /// Frames lost on receive because they did not fit the guest's buffers.
    rx_dropped,
    /// Backend read errors.
    rx_errors,
    /// Times RX stopped polling the backend because the guest had no buffers.
    rx_paused,
    /// Frames sent from the guest.
    tx_frames,
    /// Bytes sent from the guest, without the vnet header.
    tx_bytes,
    /// Transmit chains refused (malformed) and returned to the guest unsent.
    tx_dropped,
    /// Backend write errors.
    tx_errors,
    /// Used-buffer interrupts raised.
    interrupts,
    /// Descriptor chains longer than the queue (a loop).
    bad_chain_loop,
    /// Descriptors whose `next` or head index is outside the queue.
    bad_desc_index,
    /// Descriptors whose buffer lies (partly) outside guest memory.
    bad_desc_address,
    /// Chains longer than the largest frame (or shorter than the vnet header on TX).
    bad_chain_len,
    /// Read-only descriptors on RX or write-only descriptors on TX.
    bad_desc_direction,
    /// Indirect descriptors (not negotiated).
    bad_desc_indirect,
    /// TX vnet headers asking for offloads not negotiated, or not fitting their frame.
    bad_tx_header,
    /// Queues refused at activation (size, readiness, ring placement).
    bad_queue,
    /// Ring corruption that put the device into `NEEDS_RESET`.
    needs_reset_events,
}

impl NetCounters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random address under the 52:54:00 prefix QEMU and libvirt use.
    pub fn random() -> MacAddr {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS per process; mixing in the time and a
        // counter makes successive calls differ.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        let r = hasher.finish().to_le_bytes();
        MacAddr([0x52, 0x54, 0x00, r[0], r[1], r[2]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<MacAddr, NetConfigError> {
        let bad = || NetConfigError::Mac(s.to_owned());
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() || mac[0] & 1 != 0 {
            // Trailing groups, or a multicast address a NIC cannot own.
            return Err(bad());
        }
        Ok(MacAddr(mac))
    }
}

/// Errors in a `--net` specification.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// Not a unicast `xx:xx:xx:xx:xx:xx` address.
    #[error("invalid MAC address {0:?}: expected a unicast xx:xx:xx:xx:xx:xx")]
    Mac(String),
    /// MTU outside 68..=65535.
    #[error("invalid mtu {0:?}: expected 68 to 65535")]
    Mtu(String),
    /// A tap-fd that is not a non-negative integer.
    #[error("invalid tap-fd {0:?}")]
    TapFd(String),
    /// A key the option does not know.
    #[error(
        "unknown --net key {0:?} (expected network, socket, group, inbound, outbound, tap-fd, tap, mac or mtu)"
    )]
    UnknownKey(String),
    /// A key given twice in one `--net`.
    #[error("--net {0}= is given twice")]
    RepeatedKey(String),
    /// An `inbound=` or `outbound=` that is not `AVERAGE[:PEAK[:BURST]]`.
    #[error(
        "invalid --net {key}={value:?}: expected AVERAGE[:PEAK[:BURST]], in kB/s and KiB as libvirt's <bandwidth>"
    )]
    Rate {
        /// `inbound` or `outbound`.
        key: &'static str,
        /// What was given.
        value: String,
    },
    /// Not exactly one of network, tap-fd and tap.
    #[error("--net needs exactly one of network=NAME, tap-fd=N or tap=NAME")]
    Backend,
    /// `socket=`, `group=`, `inbound=` or `outbound=` without `network=`.
    #[error("--net {0} only goes with network=NAME")]
    WithoutNetwork(&'static str),
    /// `network=` or `socket=` with nothing after it.
    #[error("--net {0}= needs a value")]
    Empty(&'static str),
    /// kvnetd did not give the NIC a port on the network.
    // The client's errors already name their causes (the socket and the OS error), so
    // the reason is part of this message rather than a source printed again after it.
    #[error("cannot plug the NIC into network '{network}': {reason}")]
    Plug {
        /// The network.
        network: String,
        /// kvnetd's error, or why it could not be reached.
        reason: netd::api::client::Error,
    },
    /// Opening the tap failed.
    #[error("cannot open the tap for --net")]
    Tap(#[source] tap::TapError),
    /// `mtu=` offers the guest more than its tap carries.
    #[error(
        "--net mtu={mtu} is larger than the MTU of tap {tap} ({tap_mtu}): the guest's larger frames would be dropped; raise the tap's MTU, or give mtu={tap_mtu} or less"
    )]
    MtuAboveTap {
        /// The tap.
        tap: String,
        /// Its MTU.
        tap_mtu: u32,
        /// The MTU given.
        mtu: u16,
    },
    /// `mtu=` offers the guest more than its network port carries.
    #[error(
        "--net mtu={mtu} is larger than the MTU of network '{network}' (its port's tap {tap} has {tap_mtu}): the guest's larger frames would be dropped; give the network <mtu size='{mtu}'/>, or give mtu={tap_mtu} or less"
    )]
    MtuAboveNetwork {
        /// The network.
        network: String,
        /// The port's tap.
        tap: String,
        /// Its MTU.
        tap_mtu: u32,
        /// The MTU given.
        mtu: u16,
    },
}

/// Where a NIC's tap comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// An fd inherited from the parent (`tap-fd=N`).
    Fd(RawFd),
    /// A tap opened by name (`tap=NAME`), created if none has that name; needs
    /// `CAP_NET_ADMIN`, or ownership of an existing tap.
    Name(String),
    /// A new port on one of kvnetd's networks (`network=NAME[,socket=PATH]`): kvnetd makes
    /// the tap on the network's bridge and hands its fd over the socket.
    Network {
        /// The network's name or UUID.
        network: String,
        /// kvnetd's socket; `KVNET_SOCKET` or the default when absent.
        socket: Option<PathBuf>,
        /// What the port asks for besides the guest's MAC.
        port: PortRequest,
    },
}

/// What a NIC's port asks of its network (`group=`, `inbound=`, `outbound=`): the port's
/// `<group>` and `<bandwidth>`, which kvnetd applies to the tap as for any port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRequest {
    /// The network's `<portgroup>` to join; none joins the default group, if any.
    pub group: Option<String>,
    /// Limits on the guest's traffic; none takes its group's.
    pub bandwidth: Option<netd::xml::Bandwidth>,
}

/// `AVERAGE[:PEAK[:BURST]]`: a rate as libvirt's `<inbound>` or `<outbound>` gives it.
fn parse_rate(key: &'static str, value: &str) -> Result<netd::xml::Rate, NetConfigError> {
    let bad = || NetConfigError::Rate {
        key,
        value: value.to_owned(),
    };
    let mut fields = value
        .split(':')
        .map(|field| field.parse::<u64>().map_err(|_| bad()));
    let average = fields.next().ok_or_else(bad)??;
    let peak = fields.next().transpose()?;
    let burst = fields.next().transpose()?;
    if fields.next().is_some() || average == 0 {
        return Err(bad());
    }
    Ok(netd::xml::Rate {
        average,
        peak,
        burst,
    })
}

/// One `--net` option: `network=NAME[,socket=PATH]`, `tap-fd=N` or `tap=NAME`, each with
/// optional `mac=52:54:00:..` and `mtu=M`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// The tap.
    pub tap: TapSource,
    /// The guest MAC; generated when absent.
    pub mac: Option<MacAddr>,
    /// The MTU offered to the guest (`VIRTIO_NET_F_MTU`).
    pub mtu: Option<u16>,
}

/// The keys of a `--net` option.
const NET_KEYS: [&str; 9] = [
    "network", "socket", "group", "inbound", "outbound", "tap-fd", "tap", "mac", "mtu",
];

impl FromStr for NetSpec {
    type Err = NetConfigError;

    fn from_str(s: &str) -> Result<NetSpec, NetConfigError> {
        let (mut tap, mut mac, mut mtu, mut socket) = (None, None, None, None);
        let mut port = PortRequest::default();
        // The keys given that only a port on a network can take.
        let mut port_keys = Vec::new();
        // A second value would silently replace the first.
        let mut seen = Vec::new();
        for item in s.split(',').filter(|item| !item.is_empty()) {
            let (key, value) = item.split_once('=').unwrap_or((item, ""));
            if NET_KEYS.contains(&key) {
                if seen.contains(&key) {
                    return Err(NetConfigError::RepeatedKey(key.to_owned()));
                }
                seen.push(key);
            }
            match key {
                "network" | "tap-fd" | "tap" if tap.is_some() => {
                    return Err(NetConfigError::Backend);
                }
                "network" | "socket" if value.is_empty() => {
                    return Err(NetConfigError::Empty(if key == "network" {
                        "network"
                    } else {
                        "socket"
                    }));
                }
                "network" => {
                    tap = Some(TapSource::Network {
                        network: value.to_owned(),
                        socket: None,
                        port: PortRequest::default(),
                    });
                }
                "socket" => {
                    socket = Some(PathBuf::from(value));
                    port_keys.push("socket=PATH");
                }
                "group" if value.is_empty() => return Err(NetConfigError::Empty("group")),
                "group" => {
                    port.group = Some(value.to_owned());
                    port_keys.push("group=NAME");
                }
                "inbound" | "outbound" => {
                    let (key, usage, inbound) = if key == "inbound" {
                        ("inbound", "inbound=RATE", true)
                    } else {
                        ("outbound", "outbound=RATE", false)
                    };
                    let rate = Some(parse_rate(key, value)?);
                    let bandwidth = port.bandwidth.get_or_insert_with(Default::default);
                    if inbound {
                        bandwidth.inbound = rate;
                    } else {
                        bandwidth.outbound = rate;
                    }
                    port_keys.push(usage);
                }
                "tap-fd" => {
                    let fd = value
                        .parse::<RawFd>()
                        .ok()
                        .filter(|fd| *fd >= 0)
                        .ok_or_else(|| NetConfigError::TapFd(value.to_owned()))?;
                    tap = Some(TapSource::Fd(fd));
                }
                "tap" => tap = Some(TapSource::Name(value.to_owned())),
                "mac" => mac = Some(value.parse()?),
                "mtu" => {
                    let m = value
                        .parse::<u16>()
                        .ok()
                        .filter(|m| *m >= 68)
                        .ok_or_else(|| NetConfigError::Mtu(value.to_owned()))?;
                    mtu = Some(m);
                }
                _ => return Err(NetConfigError::UnknownKey(key.to_owned())),
            }
        }
        let mut tap = tap.ok_or(NetConfigError::Backend)?;
        match &mut tap {
            TapSource::Network {
                socket: given_socket,
                port: given_port,
                ..
            } => {
                *given_socket = socket;
                *given_port = port;
            }
            _ => {
                if let Some(key) = port_keys.first() {
                    return Err(NetConfigError::WithoutNetwork(key));
                }
            }
        }
        Ok(NetSpec { tap, mac, mtu })
    }
}

impl NetSpec {
    /// Opens the tap this spec names, and says what the guest is to see of the NIC; a
    /// port on a network is registered as `owner`'s, and comes with the [`PortLease`]
    /// that gives it back. `Fd` takes ownership of the inherited fd (see
    /// [`Tap::from_inherited_fd`]): call it once per spec.
    pub fn open_tap(
        &self,
        owner: &Owner,
    ) -> Result<(NetConfig, Tap, Option<PortLease>), NetConfigError> {
        let mut config = self.config();
        let (tap, lease) = self.open_backend(&config, owner)?;
        if config.mtu.is_none() && matches!(self.tap, TapSource::Network { .. }) {
            config.mtu = network_mtu(tap.name(), tap.mtu());
        }
        if self.mac.is_none()
            && let Some(mac) = self.guest_mac_of(&tap)
        {
            config.mac = mac;
        }
        if let Some(mtu) = config.mtu {
            // On error the lease goes, and gives the port back.
            self.fit_mtu(&tap, mtu)?;
        }
        Ok((config, tap, lease))
    }

    /// The guest MAC an existing tap was made for: libvirt and kvnetd give a guest's tap
    /// the guest's MAC with `fe` first (so that the bridge never takes the guest's
    /// address). A persistent port's tap then gives its guest the MAC its DHCP
    /// reservation or pinning knows. Only QEMU's `52:54:00` prefix can be told back from
    /// `fe:54:00`: for any other `fe` MAC the first byte is lost (and the kernel gives
    /// one tap in 64 such a MAC at random), so the guest gets a random MAC, with a
    /// warning that says what to give if the tap is a port's.
    fn guest_mac_of(&self, tap: &Tap) -> Option<MacAddr> {
        let existing = match self.tap {
            TapSource::Fd(_) => true,
            TapSource::Name(_) => tap.is_persistent(),
            // kvnetd made the tap for the MAC we gave it.
            TapSource::Network { .. } => false,
        };
        if !existing {
            return None;
        }
        let tap_mac = match tap.mac() {
            Ok(mac) => MacAddr(mac),
            Err(error) => {
                tracing::debug!(tap = tap.name(), %error, "cannot read the tap's MAC");
                return None;
            }
        };
        match tap_mac.0 {
            [0xfe, 0x54, 0x00, ..] => {
                let mut guest = tap_mac;
                guest.0[0] = 0x52;
                tracing::info!(tap = tap.name(), %tap_mac, mac = %guest,
                    "guest MAC taken from its tap's (fe:54:00 for 52:54:00)");
                Some(guest)
            }
            [0xfe, rest @ ..] => {
                let rest: Vec<String> = rest.iter().map(|byte| format!("{byte:02x}")).collect();
                tracing::warn!(tap = tap.name(), %tap_mac,
                    "if this tap is a port's, its guest MAC ends :{} and its first byte is hidden: give it as --net mac=; the guest gets a random MAC",
                    rest.join(":"));
                None
            }
            _ => None,
        }
    }

    /// Makes sure the tap carries the `mtu` the guest is offered: a tap the VMM just
    /// created takes it; any other must have it already, or the guest's larger frames
    /// would be dropped without a word.
    fn fit_mtu(&self, tap: &Tap, mtu: u16) -> Result<(), NetConfigError> {
        if matches!(self.tap, TapSource::Name(_)) && !tap.is_persistent() {
            tracing::info!(tap = tap.name(), mtu, "setting the new tap's MTU");
            return tap.set_mtu(mtu).map_err(NetConfigError::Tap);
        }
        let tap_mtu = match tap.mtu() {
            Ok(tap_mtu) => tap_mtu,
            // A descriptor from another network namespace, where its name means nothing.
            Err(error) => {
                tracing::info!(tap = tap.name(), mtu, %error,
                    "cannot read the tap's MTU: mtu= is not checked against it");
                return Ok(());
            }
        };
        if u32::from(mtu) <= tap_mtu {
            return Ok(());
        }
        let tap = tap.name().to_owned();
        Err(match &self.tap {
            TapSource::Network { network, .. } => NetConfigError::MtuAboveNetwork {
                network: network.clone(),
                tap,
                tap_mtu,
                mtu,
            },
            _ => NetConfigError::MtuAboveTap { tap, tap_mtu, mtu },
        })
    }

    /// Opens the tap itself (see [`NetSpec::open_tap`]).
    fn open_backend(
        &self,
        config: &NetConfig,
        owner: &Owner,
    ) -> Result<(Tap, Option<PortLease>), NetConfigError> {
        match &self.tap {
            TapSource::Fd(fd) => Tap::from_inherited_fd(*fd)
                .map(|tap| (tap, None))
                .map_err(NetConfigError::Tap),
            TapSource::Name(name) => Tap::open_named(name)
                .map(|tap| (tap, None))
                .map_err(NetConfigError::Tap),
            TapSource::Network {
                network,
                socket,
                port: request,
            } => {
                let socket = socket
                    .clone()
                    .unwrap_or_else(netd::api::default_client_socket);
                let plugged = |reason| NetConfigError::Plug {
                    network: network.clone(),
                    reason,
                };
                let client = netd::api::client::Client::new(socket);
                let (port, fd) = client
                    .plug(network, &owner.port_xml(config.mac, request))
                    .map_err(plugged)?;
                tracing::info!(network, port = %port.uuid, tap = %port.tap, "plugged into network");
                let lease = PortLease {
                    // Given back while the VM is torn down: not worth a long wait.
                    client: client.with_answer_timeout(PORT_RETURN_TIMEOUT),
                    network: network.clone(),
                    port: port.uuid,
                    give_back: true,
                };
                Ok((Tap::from_fd(fd).map_err(NetConfigError::Tap)?, Some(lease)))
            }
        }
    }

    /// The device configuration, generating a MAC when none was given.
    pub fn config(&self) -> NetConfig {
        NetConfig {
            mac: self.mac.unwrap_or_else(MacAddr::random),
            mtu: self.mtu,
        }
    }
}

/// The MTU a NIC on a network's port offers its guest when `mtu=` gives none: the
/// port's (the network's `<mtu>`), unless Ethernet's 1500, as libvirt gives QEMU
/// `host_mtu` for a network with one. Without it the guest would size its receive
/// buffers for 1500 bytes and the network's larger frames be dropped.
fn network_mtu(tap: &str, port_mtu: Result<u32, tap::TapError>) -> Option<u16> {
    match port_mtu {
        Ok(1500) => None,
        Ok(mtu) => u16::try_from(mtu).ok().filter(|mtu| *mtu >= 68),
        Err(error) => {
            tracing::warn!(tap, %error, "cannot read the port's MTU; the guest is offered none");
            None
        }
    }
}

/// How long a VM's teardown waits for kvnetd to take a port back.
const PORT_RETURN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A NIC's port on a kvnetd network, given back when the VM ends. A tap's port ends
/// when its descriptor closes anyway, but a macvtap's lasts until its process exits, and
/// a process may run more than one VM.
#[derive(Debug)]
pub struct PortLease {
    client: netd::api::client::Client,
    network: String,
    port: uuid::Uuid,
    /// Whether dropping the lease asks kvnetd to delete the port.
    give_back: bool,
}

impl PortLease {
    /// Leaves the port to kvnetd, which ends it itself when its tap closes or its
    /// process exits: for a process about to end (`kvnet-vmm` under its syscall filter
    /// may not connect to kvnetd's socket).
    pub fn leave_to_kvnetd(&mut self) {
        self.give_back = false;
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if !self.give_back {
            return;
        }
        match self
            .client
            .delete_port(&self.network, &self.port.to_string())
        {
            Ok(_) => {
                tracing::debug!(network = %self.network, port = %self.port, "gave the port back")
            }
            // Ended already with its tap, or with the network.
            Err(netd::api::client::Error::Api(e)) if e.kind == netd::api::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(network = %self.network, port = %self.port, "giving the port back: {e}");
            }
        }
    }
}

/// The VM a network port belongs to (libvirt's `<owner>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The VM's name.
    pub name: String,
    /// The VM's UUID.
    pub uuid: uuid::Uuid,
}

impl Owner {
    /// A VM nobody named: `kvnet-vmm-PID`, with a new random UUID.
    pub fn unnamed() -> Owner {
        Owner {
            name: format!("kvnet-vmm-{}", std::process::id()),
            uuid: uuid::Uuid::new_v4(),
        }
    }

    /// The `<networkport>` document that asks for a port for the NIC with `mac`.
    fn port_xml(&self, mac: MacAddr, request: &PortRequest) -> String {
        netd::xml::PortDef {
            uuid: None,
            owner_name: self.name.clone(),
            owner_uuid: self.uuid,
            group: request.group.clone(),
            mac: netd::xml::MacAddr(mac.0),
            isolated: None,
            bandwidth: request.bandwidth.clone(),
            trust_guest_rx_filters: None,
            plug: None,
        }
        .to_xml()
    }
}

/// What the guest sees of a NIC besides its features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: MacAddr,
    /// The MTU offered with `VIRTIO_NET_F_MTU`; `None` leaves the feature off.
    pub mtu: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_spec_parses_fd_name_mac_and_mtu() {
        let spec: NetSpec = "tap-fd=7,mac=52:54:00:12:34:56,mtu=9000"
            .parse()
            .expect("parse");
        assert_eq!(spec.tap, TapSource::Fd(7));
        assert_eq!(spec.mac, Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])));
        assert_eq!(spec.mtu, Some(9000));
        let spec: NetSpec = "tap=vnet0".parse().expect("parse");
        assert_eq!(spec.tap, TapSource::Name("vnet0".into()));
        let plugged: NetSpec = "mac=52:54:00:12:34:56,network=default,socket=/run/k.sock"
            .parse()
            .expect("parse");
        assert_eq!(
            plugged.tap,
            TapSource::Network {
                network: "default".into(),
                socket: Some("/run/k.sock".into()),
                port: PortRequest::default(),
            }
        );
        // A port's group and limits, for kvnetd.
        let shaped: NetSpec = "network=default,group=web,inbound=1000:2000:64,outbound=500"
            .parse()
            .expect("parse");
        let TapSource::Network { port, .. } = &shaped.tap else {
            panic!("{shaped:?}")
        };
        let rate = |average, peak, burst| netd::xml::Rate {
            average,
            peak,
            burst,
        };
        assert_eq!(
            *port,
            PortRequest {
                group: Some("web".into()),
                bandwidth: Some(netd::xml::Bandwidth {
                    inbound: Some(rate(1000, Some(2000), Some(64))),
                    outbound: Some(rate(500, None, None)),
                }),
            }
        );
        let owner = Owner {
            name: "vm".into(),
            uuid: uuid::Uuid::nil(),
        };
        let xml = owner.port_xml(MacAddr([0x52, 0x54, 0, 1, 2, 3]), port);
        assert!(
            xml.contains("  <group>web</group>\n")
                && xml.contains("    <inbound average='1000' peak='2000' burst='64'/>\n")
                && xml.contains("    <outbound average='500'/>\n"),
            "{xml}"
        );
        assert_eq!(
            plugged.mac,
            Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
        );
        for (bad, message) in [
            (
                "socket=/x,tap=vnet0",
                "--net socket=PATH only goes with network=NAME",
            ),
            (
                "tap=vnet0,outbound=100",
                "--net outbound=RATE only goes with network=NAME",
            ),
            (
                "network=a,inbound=fast",
                "invalid --net inbound=\"fast\": expected AVERAGE[:PEAK[:BURST]], in kB/s and KiB as libvirt's <bandwidth>",
            ),
            ("network=a,group=", "--net group= needs a value"),
            (
                "tap=vnet0,mac=52:54:00:00:00:01,mac=52:54:00:00:00:02",
                "--net mac= is given twice",
            ),
            ("tap=a,tap=b", "--net tap= is given twice"),
            ("tap=a,mtu=1500,mtu=1500", "--net mtu= is given twice"),
            (
                "network=a,inbound=1,inbound=2",
                "--net inbound= is given twice",
            ),
            ("network=", "--net network= needs a value"),
            ("network=default,socket=", "--net socket= needs a value"),
            (
                "network=a,tap-fd=3",
                "--net needs exactly one of network=NAME, tap-fd=N or tap=NAME",
            ),
        ] {
            let error = bad.parse::<NetSpec>().expect_err(bad);
            assert_eq!(error.to_string(), message, "{bad}");
        }
        assert_eq!((spec.mac, spec.mtu), (None, None));
        for bad in [
            "",
            "mac=52:54:00:12:34:56",
            "tap-fd=3,tap=x",
            "tap-fd=-1",
            "tap-fd=x",
            "tap-fd=3,mtu=20",
            "tap-fd=3,mtu=70000",
            "tap-fd=3,mac=01:00:5e:00:00:01",
            "tap-fd=3,mac=52:54:00:12:34",
            "tap-fd=3,mac=52:54:00:12:34:56:78",
            "tap-fd=3,speed=10",
            "network=a,inbound=0",
            "network=a,outbound=1:2:3:4",
            "network=a,outbound=1::3",
        ] {
            assert!(bad.parse::<NetSpec>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn generated_macs_use_the_qemu_prefix_and_differ() {
        let a = NetSpec::from_str("tap=x").expect("parse").config().mac;
        let b = MacAddr::random();
        assert_eq!(&a.0[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(&b.0[..3], &[0x52, 0x54, 0x00]);
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<MacAddr>().expect("round trip"), a);
    }

    /// Opens `spec` for a NIC as a nameless VM would.
    fn open(spec: &str) -> Result<(Tap, Option<PortLease>), NetConfigError> {
        open_nic(spec).map(|(_, tap, lease)| (tap, lease))
    }

    fn open_nic(spec: &str) -> Result<(NetConfig, Tap, Option<PortLease>), NetConfigError> {
        let spec: NetSpec = spec.parse().expect("spec");
        spec.open_tap(&Owner::unnamed())
    }

    #[test]
    fn an_existing_taps_fe_mac_gives_the_guest_its_52_mac() {
        use testkit::{Need, Netns};
        if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
            return;
        }
        let ns = Netns::new("tap-mac").expect("netns");
        // As `kvnet net-port-create` leaves a persistent port's tap; and one that
        // follows no convention.
        ns.sh(
            "ip tuntap add dev vnet0 mode tap vnet_hdr && ip link set vnet0 address fe:54:00:de:00:01 \
             && ip tuntap add dev other0 mode tap vnet_hdr && ip link set other0 address 02:00:00:00:00:07 \
             && ip tuntap add dev vnet1 mode tap vnet_hdr && ip link set vnet1 address fe:aa:bb:cc:dd:ee",
        )
        .expect("taps");
        let expected = MacAddr([0x52, 0x54, 0, 0xde, 0, 1]);
        ns.run(|| {
            let (nic, tap, _) = open_nic("tap=vnet0").expect("open");
            assert_eq!(nic.mac, expected);
            drop(tap);
            // mac= wins.
            let (nic, tap, _) = open_nic("tap=vnet0,mac=52:54:00:00:00:09").expect("open");
            assert_eq!(nic.mac, MacAddr([0x52, 0x54, 0, 0, 0, 9]));
            drop(tap);
            // An inherited descriptor of the same tap.
            let opened = Tap::open_named("vnet0").expect("open");
            let dup = std::os::fd::AsFd::as_fd(&opened)
                .try_clone_to_owned()
                .expect("dup");
            let fd = std::os::fd::IntoRawFd::into_raw_fd(dup);
            tap::record_inherited_fds([fd]);
            let (nic, _tap, _) = open_nic(&format!("tap-fd={fd}")).expect("open");
            assert_eq!(nic.mac, expected);
            // Another tap's MAC says nothing: a random 52:54:00 one.
            let (nic, _tap, _) = open_nic("tap=other0").expect("open");
            assert_eq!(&nic.mac.0[..3], &[0x52, 0x54, 0]);
            assert_ne!(nic.mac, expected);
            // A tap the VMM creates has a random MAC of the kernel's.
            let (nic, _tap, _) = open_nic("tap=kvnew").expect("open");
            assert_eq!(&nic.mac.0[..3], &[0x52, 0x54, 0]);
            // A port made for a MAC outside QEMU's prefix (02:aa:...) hides its first
            // byte, and the kernel gives random taps such MACs too: not guessed.
            let (nic, tap, _) = open_nic("tap=vnet1").expect("open");
            assert_eq!(&nic.mac.0[..3], &[0x52, 0x54, 0]);
            drop(tap);
            let (nic, _tap, _) = open_nic("tap=vnet1,mac=02:aa:bb:cc:dd:ee").expect("open");
            assert_eq!(nic.mac, MacAddr([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        })
        .expect("run in ns");
    }

    #[test]
    fn mtu_is_checked_against_an_existing_tap_and_given_to_a_new_one() {
        use testkit::{Need, Netns};
        if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
            return;
        }
        let ns = Netns::new("tap-mtu").expect("netns");
        ns.sh("ip tuntap add dev kvt0 mode tap vnet_hdr && ip tuntap add dev kvt1 mode tap vnet_hdr && ip link set kvt1 mtu 9000")
            .expect("taps");
        ns.run(|| {
            // An existing tap keeps its MTU: more is refused, naming both.
            let error = open("tap=kvt0,mtu=9000").expect_err("9000 over a 1500 tap");
            assert_eq!(
                error.to_string(),
                "--net mtu=9000 is larger than the MTU of tap kvt0 (1500): the guest's larger frames would be dropped; raise the tap's MTU, or give mtu=1500 or less"
            );
            let (tap, _) = open("tap=kvt0,mtu=1400").expect("less is fine");
            assert_eq!(tap.mtu().expect("mtu"), 1500, "left alone");
            drop(tap);
            let (tap, _) = open("tap=kvt1,mtu=9000").expect("as much");
            assert_eq!(tap.mtu().expect("mtu"), 9000);
            drop(tap);
            // A tap the VMM creates takes the guest's MTU.
            let (tap, _) = open("tap=kvnew,mtu=9000").expect("a new tap");
            assert!(!tap.is_persistent());
            assert_eq!(tap.mtu().expect("mtu"), 9000);
            // Without mtu=, a new tap keeps the kernel's default.
            let (tap, _) = open("tap=kvnew2").expect("a new tap");
            assert_eq!(tap.mtu().expect("mtu"), 1500);
        })
        .expect("run in ns");
    }

    #[test]
    fn a_network_ports_mtu_is_offered_unless_it_is_ethernets() {
        assert_eq!(network_mtu("vnet0", Ok(9000)), Some(9000));
        assert_eq!(network_mtu("vnet0", Ok(1400)), Some(1400));
        assert_eq!(network_mtu("vnet0", Ok(1500)), None);
        assert_eq!(network_mtu("vnet0", Ok(70000)), None);
    }

    #[test]
    fn a_network_port_too_small_for_mtu_names_the_network_setting() {
        let spec: NetSpec = "network=default,mtu=9000".parse().expect("spec");
        let TapSource::Network { network, .. } = &spec.tap else {
            panic!("{spec:?}")
        };
        let error = NetConfigError::MtuAboveNetwork {
            network: network.clone(),
            tap: "vnet3".into(),
            tap_mtu: 1500,
            mtu: 9000,
        };
        assert_eq!(
            error.to_string(),
            "--net mtu=9000 is larger than the MTU of network 'default' (its port's tap vnet3 has 1500): the guest's larger frames would be dropped; give the network <mtu size='9000'/>, or give mtu=1500 or less"
        );
    }
}
