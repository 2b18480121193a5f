//! Wire types shared by the daemon and its clients.
//!
//! They are separate from the manager's internal state so the API can stay stable
//! while the internals change; requests reject unknown fields.

use serde::{Deserialize, Serialize};

/// One network as `net-list` and `net-info` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// The network's name.
    pub name: String,
    /// Its UUID.
    pub uuid: uuid::Uuid,
    /// Whether it is running.
    pub active: bool,
    /// Whether it has a definition on disk (otherwise it is transient).
    pub persistent: bool,
    /// Whether it starts when the daemon starts at boot.
    pub autostart: bool,
    /// The bridge device it uses, if any.
    pub bridge: Option<String>,
    /// The `<title>`, if any.
    pub title: Option<String>,
}

/// One network port: a guest NIC's tap on a network's bridge (`net-port-list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSummary {
    /// The port's UUID.
    pub uuid: uuid::Uuid,
    /// The network it is on.
    pub network: String,
    /// The guest that owns it (`<owner><name>`).
    pub owner: String,
    /// The guest NIC's MAC address.
    pub mac: String,
    /// The tap device that carries the guest's frames.
    pub tap: String,
    /// Whether the tap outlives its descriptors: a port made by `net-port-create` does, and
    /// lasts until deleted; a port whose tap was handed to a VMM ends when the VMM closes it.
    pub persistent: bool,
}

/// The HTTP upgrade protocol that asks for a new port's tap descriptor
/// (`POST /v1/networks/{network}/ports`). After `101 Switching Protocols`, the daemon sends
/// the [`PortSummary`] as JSON with the tap's descriptor attached (`SCM_RIGHTS`) and
/// closes the connection.
pub const TAP_UPGRADE: &str = "kvnet-tap";

/// The daemon answering on a socket (`GET /v1/version`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonVersion {
    /// The program: `kvnetd`.
    pub daemon: String,
    /// Its version.
    pub version: String,
}

/// A network definition in libvirt's network XML (define, create).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmlRequest {
    /// The `<network>` document.
    pub xml: String,
}

/// A network's XML (dumpxml).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct XmlResponse {
    /// The `<network>` document as libvirt would print it.
    pub xml: String,
}

/// Turns autostart on or off.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutostartRequest {
    /// The new setting.
    pub enabled: bool,
}

/// Changes one entry of a network's definition (net-update).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// `add-first`, `add-last` (or `add`), `delete` or `modify`.
    pub command: String,
    /// `ip-dhcp-host`, `ip-dhcp-range`, `dns-host`, `dns-srv`, `dns-txt`, `portgroup` or
    /// `forward-interface` (libvirt's other section names are refused as not supported).
    pub section: String,
    /// The element, e.g. `<host mac='52:54:00:00:00:01' ip='192.168.122.10'/>`.
    pub xml: String,
    /// Which `<ip>` (0-based, document order) the `ip-dhcp-*` sections change; absent:
    /// the one with `<dhcp>`, else the first IPv4, else the first IPv6.
    #[serde(default)]
    pub parent_index: Option<usize>,
    /// Change the running network (must be active).
    #[serde(default)]
    pub live: bool,
    /// Change the persistent definition (must be persistent).
    #[serde(default)]
    pub config: bool,
}

/// What a net-update changed (neither `live` nor `config` in the request resolves to
/// the running definition if the network is active, else the persistent one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateResponse {
    /// The network's name.
    pub name: String,
    /// The running definition was changed.
    pub live: bool,
    /// The persistent definition was changed.
    pub config: bool,
}

/// One DHCP lease (net-dhcp-leases).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Expiry as seconds since the Unix epoch; 0 for infinite.
    pub expiry_time: i64,
    /// The client's MAC address.
    pub mac: String,
    /// The leased address.
    pub ip_address: std::net::IpAddr,
    /// The prefix length of the network the address belongs to.
    pub prefix: u8,
    /// The hostname the client sent, if any.
    pub hostname: Option<String>,
    /// The client identifier or DUID, if any.
    pub client_id: Option<String>,
}

/// The body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable snake_case category (see [`crate::api::ErrorKind`]).
    pub kind: String,
    /// A sentence that names what went wrong and with what.
    pub message: String,
}

/// One line of the event stream (`GET /v1/events`, newline-delimited JSON), told apart by
/// its `type`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventRecord {
    /// A network was defined, undefined, started or stopped (libvirt's `lifecycle`).
    Lifecycle(LifecycleEvent),
    /// The subscriber read too slowly and the daemon dropped this many events, the
    /// oldest first; the stream goes on with the ones it kept.
    Missed {
        /// How many.
        count: u64,
    },
    /// A record a newer daemon sends that this client does not know.
    #[serde(other)]
    Unknown,
}

/// A network's lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// The network's name.
    pub network: String,
    /// Its UUID.
    pub uuid: uuid::Uuid,
    /// What happened.
    pub event: LifecycleKind,
    /// When, in RFC 3339 (UTC, milliseconds).
    pub time: String,
}

/// What a lifecycle event reports, as libvirt's `virNetworkEventLifecycleType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleKind {
    /// A persistent definition was written (new, or replacing the previous one).
    Defined,
    /// The persistent definition was removed.
    Undefined,
    /// The network started.
    Started,
    /// The network stopped.
    Stopped,
    /// One a newer daemon sends that this client does not know.
    #[serde(other)]
    Unknown,
}
