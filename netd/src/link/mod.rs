//! The only module that speaks rtnetlink: bridges, addresses, links, routes, traffic control;
//! plus the network sysctls and tap devices.
//!
//! Everything here acts on the network namespace of the thread that created the [`Link`]
//! (netlink), or that calls a [`sysctl`] function or [`tap::Tap::create`] (`/proc/sys/net` and
//! `/dev/net/tun` follow the calling thread's namespace), so the daemon and the tests can run
//! inside a namespace.

mod deletions;
pub mod macvtap;
mod netlink;
mod prefixes;
pub mod shaping;
pub mod sysctl;
pub mod tap;

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

pub use netlink::Link;
pub use prefixes::PrefixCache;

/// Linux's `IFNAMSIZ` minus the terminating NUL.
const MAX_IFNAME_LEN: usize = 15;

/// The kernel's `BR_MIN_FORWARD_DELAY` and `BR_MAX_FORWARD_DELAY`: with STP on, the bridge
/// refuses (or, when STP starts, clamps to) a forward delay outside this range.
const STP_FORWARD_DELAY_SECS: std::ops::RangeInclusive<u32> = 2..=30;

/// `USER_HZ`: bridge timers cross netlink in clock_t, hundredths of a second.
const CLOCK_T_PER_SEC: u32 = 100;

/// The link group ("kvnt") of every bridge and macvtap kvnet creates. The kernel takes a
/// group in the `RTM_NEWLINK` that creates a device, unlike an alias, so no crash leaves
/// a device of kvnet's unmarked. It tells kvnet's bridge from another's that has the same
/// name and MAC address: libvirt's, when a libvirt network's definition was copied in.
pub const KVNET_LINK_GROUP: u32 = 0x6b76_6e74;

/// Whether a port comes up in the change that plugs it into its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Up at once.
    Up,
    /// Left down, for its bridge port's flags to be set first.
    Down,
}

/// What a network's bridge looks like when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Interface name (`virbr0`).
    pub name: String,
    /// The bridge's own MAC, set at creation so it never takes a port's address.
    pub mac: [u8; 6],
    /// MTU; `None` leaves the kernel default (1500, then following the ports).
    pub mtu: Option<u32>,
    /// Kernel STP on or off.
    pub stp: bool,
    /// STP forward delay in seconds. With STP on the kernel accepts only 2..=30 s, so the
    /// value is clamped into that range (libvirt's default of 0 becomes 2 s, as under libvirt).
    pub forward_delay_secs: u32,
}

impl BridgeSpec {
    /// The forward delay to send as `IFLA_BR_FORWARD_DELAY`, in clock_t, clamped to what the
    /// kernel accepts for this STP setting.
    pub fn forward_delay_clock_t(&self) -> u32 {
        let secs = if self.stp {
            self.forward_delay_secs.clamp(
                *STP_FORWARD_DELAY_SECS.start(),
                *STP_FORWARD_DELAY_SECS.end(),
            )
        } else {
            self.forward_delay_secs
        };
        secs.saturating_mul(CLOCK_T_PER_SEC)
    }
}

/// What the kernel says about an existing link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name (empty in the unlikely case the kernel sent none).
    pub name: String,
    /// `IFLA_INFO_KIND` (`bridge`, `veth`, `tun`, ...); `None` for links without one (`lo`, NICs).
    pub kind: Option<String>,
    /// Hardware address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Index of the bridge (or other controller) this link is a port of.
    pub master: Option<u32>,
    /// `IFLA_IFALIAS`, the link's free-text description.
    pub alias: Option<String>,
    /// `IFLA_GROUP`, the link's group (0 by default).
    pub group: u32,
    /// Its flags as a bridge port, when it is one.
    pub port: Option<BridgePortFlags>,
}

/// A bridge port's flags kvnet sets on guest ports (`IFLA_BRPORT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgePortFlags {
    /// Kept from other isolated ports' traffic.
    pub isolated: bool,
    /// Learns the source addresses it sees.
    pub learning: bool,
    /// Gets unicast frames for unknown addresses.
    pub unicast_flood: bool,
}

impl BridgePortFlags {
    /// Whether the port takes only its guest's traffic ([`Link::pin_guest_mac`]'s flags).
    pub fn pinned(&self) -> bool {
        !self.learning && !self.unicast_flood
    }
}

impl LinkInfo {
    /// Whether the link is a Linux bridge.
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    /// Whether kvnet created the link (it is in [`KVNET_LINK_GROUP`]).
    pub fn in_kvnet_group(&self) -> bool {
        self.group == KVNET_LINK_GROUP
    }
}

/// Errors of link and sysctl operations; each names the interface or path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The netlink route socket could not be opened.
    #[error("opening a netlink route socket")]
    Connect(#[source] io::Error),
    /// `/dev/net/tun` could not be opened (no tun module, or no permission).
    #[error("opening /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// An interface name the kernel would refuse (or that would escape a sysctl path).
    #[error(
        "invalid interface name {0:?}: must be 1-15 bytes without '/', ':', NUL or whitespace, and not . or .."
    )]
    InvalidName(String),
    /// A prefix length too long for the address family.
    #[error("invalid prefix length {prefix_len} for address {addr}")]
    InvalidPrefix {
        /// The address.
        addr: IpAddr,
        /// The rejected prefix length.
        prefix_len: u8,
    },
    /// A route whose destination and gateway are of different address families.
    #[error("route to {destination} cannot go through gateway {gateway} of another address family")]
    RouteFamilyMismatch {
        /// Where the route leads.
        destination: ipnet::IpNet,
        /// The next hop.
        gateway: IpAddr,
    },
    /// An operation needs a link that does not exist.
    #[error("no network interface named {0}")]
    NoSuchLink(String),
    /// The kernel refused a change to an interface.
    #[error("{}", .op.describe(.ifname))]
    Kernel {
        /// What was being done.
        op: Op,
        /// The interface acted on.
        ifname: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// A dump of links, addresses or routes failed.
    #[error("listing {0}")]
    Dump(&'static str, #[source] io::Error),
    /// A sysctl file could not be read.
    #[error("reading {}", path.display())]
    SysctlRead {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A sysctl file could not be written.
    #[error("writing {value} to {}", path.display())]
    SysctlWrite {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The value that was refused.
        value: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The operation an [`Error::Kernel`] was doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creating a bridge.
    CreateBridge,
    /// Setting the MTU.
    SetMtu(u32),
    /// Adding an address.
    AddAddress(ipnet::IpNet),
    /// Bringing a link up.
    SetUp,
    /// Deleting a link.
    Delete,
    /// Looking a link up.
    Query,
    /// Adding a route through a gateway.
    AddRoute {
        /// Where the route leads.
        destination: ipnet::IpNet,
        /// The next hop.
        gateway: IpAddr,
    },
    /// Creating a tap device through `/dev/net/tun`.
    CreateTap,
    /// Making a tap persistent or not.
    SetPersistent(bool),
    /// Giving a tap an owner.
    SetOwner(u32),
    /// Setting a port's MAC address and MTU, attaching it to a bridge and bringing it up.
    PlugPort {
        /// The bridge.
        bridge: String,
        /// The port's MAC address.
        mac: [u8; 6],
        /// The port's MTU.
        mtu: u32,
    },
    /// Detaching a port from its bridge and taking it down.
    UnplugPort,
    /// Setting a bridge port's `isolated` flag.
    SetIsolated(bool),
    /// Turning a bridge port's learning and unicast flooding off.
    StopLearningAndFlooding,
    /// Adding a static forwarding entry for this MAC on a bridge port.
    AddFdbEntry([u8; 6]),
    /// Telling the kernel that this address is at this MAC on a link.
    SetNeighbour(std::net::Ipv4Addr, [u8; 6]),
    /// Adding a qdisc (`root htb`, `ingress`) for `<bandwidth>`.
    AddQdisc(&'static str),
    /// Adding the HTB class that limits a device to this many bytes per second.
    AddHtbClass(u64),
    /// Deleting a qdisc (`root`, `ingress`).
    DeleteQdisc(&'static str),
    /// Creating the IFB device that shapes the ingress of this device.
    CreateIfb(String),
    /// Redirecting a device's ingress to this IFB device.
    RedirectIngress(String),
    /// Creating a macvtap device on this host interface.
    CreateMacvtap {
        /// The interface it sits on.
        lower: String,
    },
    /// Setting the alias that marks a device as kvnet's.
    SetAlias,
    /// Putting a device in [`KVNET_LINK_GROUP`].
    SetGroup,
    /// Letting a macvtap receive every multicast group.
    SetAllMulticast,
    /// Bringing a macvtap up with the guest's MAC address.
    UpWithGuestMac([u8; 6]),
    /// Taking a link down.
    SetDown,
    /// Opening a macvtap's character device.
    OpenMacvtap,
}

impl Op {
    /// The operation as a phrase naming the interface: `creating bridge virbr3`.
    pub fn describe(&self, ifname: &str) -> String {
        match self {
            Op::CreateBridge => format!("creating bridge {ifname}"),
            Op::SetMtu(mtu) => format!("setting mtu {mtu} on {ifname}"),
            Op::AddAddress(net) => format!("adding address {net} to {ifname}"),
            Op::SetUp => format!("bringing up {ifname}"),
            Op::Delete => format!("deleting {ifname}"),
            Op::Query => format!("looking up {ifname}"),
            Op::AddRoute {
                destination,
                gateway,
            } => format!("adding route to {destination} via {gateway} on {ifname}"),
            Op::CreateTap => format!("creating tap {ifname}"),
            Op::SetPersistent(true) => format!("making tap {ifname} persistent"),
            Op::SetPersistent(false) => format!("making tap {ifname} non-persistent"),
            Op::SetOwner(uid) => format!("giving tap {ifname} to uid {uid}"),
            Op::PlugPort { bridge, mac, mtu } => format!(
                "plugging {ifname} into bridge {bridge} (mac {}, mtu {mtu})",
                format_mac(mac)
            ),
            Op::UnplugPort => format!("detaching {ifname} from its bridge and taking it down"),
            Op::SetIsolated(true) => format!("isolating bridge port {ifname}"),
            Op::SetIsolated(false) => format!("lifting the isolation of bridge port {ifname}"),
            Op::StopLearningAndFlooding => {
                format!("turning learning and unicast flooding off on bridge port {ifname}")
            }
            Op::AddFdbEntry(mac) => format!(
                "adding a forwarding entry for {} on bridge port {ifname}",
                format_mac(mac)
            ),
            Op::SetNeighbour(ip, mac) => {
                format!("adding neighbour {ip} at {} on {ifname}", format_mac(mac))
            }
            Op::AddQdisc(kind) => format!("adding the {kind} qdisc to {ifname}"),
            Op::AddHtbClass(rate) => {
                format!("adding the htb class limiting {ifname} to {rate} bytes/s")
            }
            Op::DeleteQdisc(kind) => format!("deleting the {kind} qdisc of {ifname}"),
            Op::CreateIfb(shaped) => {
                format!("creating ifb device {ifname} for the ingress of {shaped}")
            }
            Op::RedirectIngress(ifb) => format!("redirecting the ingress of {ifname} to {ifb}"),
            Op::CreateMacvtap { lower } => format!("creating macvtap {ifname} on {lower}"),
            Op::SetAlias => format!("labelling {ifname} as kvnet's"),
            Op::SetGroup => format!("putting {ifname} in kvnet's link group"),
            Op::SetAllMulticast => format!("letting {ifname} receive every multicast group"),
            Op::UpWithGuestMac(mac) => {
                format!(
                    "bringing up {ifname} with the guest's MAC {}",
                    format_mac(mac)
                )
            }
            Op::SetDown => format!("taking {ifname} down"),
            Op::OpenMacvtap => format!("opening the character device of macvtap {ifname}"),
        }
    }
}

impl Error {
    /// The OS error code behind this error, if the kernel gave one.
    pub fn os_error(&self) -> Option<i32> {
        match self {
            Error::Connect(source)
            | Error::OpenTun(source)
            | Error::Kernel { source, .. }
            | Error::Dump(_, source)
            | Error::SysctlRead { source, .. }
            | Error::SysctlWrite { source, .. } => source.raw_os_error(),
            Error::InvalidName(_)
            | Error::InvalidPrefix { .. }
            | Error::RouteFamilyMismatch { .. }
            | Error::NoSuchLink(_) => None,
        }
    }

    /// Whether the kernel said the thing being created already exists (`EEXIST`): for a
    /// bridge, the name is taken by some other interface.
    pub fn is_already_exists(&self) -> bool {
        self.os_error() == Some(libc::EEXIST)
    }

    /// Whether the interface acted on does not exist.
    pub fn is_no_such_link(&self) -> bool {
        matches!(self, Error::NoSuchLink(_)) || self.os_error() == Some(libc::ENODEV)
    }
}

/// `52:54:00:ab:cd:ef`, the way `ip` and libvirt print MACs.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

/// Checks a name the way the kernel's `dev_valid_name` does, so that it is also safe to use
/// as a `/proc/sys/net/.../conf/<name>` path component.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stp: bool, forward_delay_secs: u32) -> BridgeSpec {
        BridgeSpec {
            name: "virbr9".into(),
            mac: [0x52, 0x54, 0, 1, 2, 3],
            mtu: None,
            stp,
            forward_delay_secs,
        }
    }

    #[test]
    fn forward_delay_is_clamped_only_with_stp() {
        assert_eq!(spec(true, 0).forward_delay_clock_t(), 200);
        assert_eq!(spec(true, 1).forward_delay_clock_t(), 200);
        assert_eq!(spec(true, 15).forward_delay_clock_t(), 1500);
        assert_eq!(spec(true, 31).forward_delay_clock_t(), 3000);
        assert_eq!(spec(false, 0).forward_delay_clock_t(), 0);
        assert_eq!(spec(false, 45).forward_delay_clock_t(), 4500);
        assert_eq!(spec(false, u32::MAX).forward_delay_clock_t(), u32::MAX);
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        for good in ["virbr0", "a", "br-with.dots_0", "123456789012345"] {
            assert!(validate_ifname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "../all",
            "a:b",
            "a b",
            "tab\t",
        ] {
            assert!(
                matches!(validate_ifname(bad), Err(Error::InvalidName(n)) if n == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn error_messages_name_the_interface_and_the_kernel_reason() {
        let err = Error::Kernel {
            op: Op::CreateBridge,
            ifname: "virbr3".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        assert_eq!(err.to_string(), "creating bridge virbr3");
        let chain = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert_eq!(chain, "creating bridge virbr3: File exists (os error 17)");
        assert!(err.is_already_exists());
        assert!(!err.is_no_such_link());
        let add = Error::Kernel {
            op: Op::AddAddress("10.0.0.1/24".parse().expect("test literal")),
            ifname: "virbr3".into(),
            source: io::Error::from_raw_os_error(libc::ENODEV),
        };
        assert_eq!(add.to_string(), "adding address 10.0.0.1/24 to virbr3");
        assert!(add.is_no_such_link());
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            "52:54:00:ab:cd:ef"
        );
    }
}

#[cfg(test)]
mod netns_tests;
