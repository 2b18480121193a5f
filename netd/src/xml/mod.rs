//! Libvirt network XML <-> the kvnet network model.
//!
//! [`NetworkDef::from_xml`] parses the `<network>` documents that libvirt
//! accepts (including files copied from `/etc/libvirt/qemu/networks` with
//! their warning comment), rejects every element or attribute kvnet does not
//! implement instead of dropping it, and validates the definition with
//! libvirt's messages where libvirt has one. [`NetworkDef::to_xml`] writes
//! the same bytes `virNetworkDefFormatBuf` writes (two-space indentation,
//! single-quoted attributes, libvirt's element order), so
//! `from_xml(to_xml(x)) == x` and `net-dumpxml` output diffs cleanly against
//! a libvirt host. [`PortDef`] does the same for network port documents
//! (`<networkport>`, `virNetworkPortDefFormat`).

mod bandwidth;
mod dhcp_wire;
pub mod dnsmasq;
mod dom;
mod format;
pub mod libxml;
mod metadata;
mod model;
mod parse;
mod port;
mod update;
mod validate;

#[cfg(test)]
mod port_tests;
#[cfg(test)]
mod tests;

pub use bandwidth::{Bandwidth, Rate};
pub use dhcp_wire::dhcp_option_data;
pub use dnsmasq::{
    AddressRule, ClasslessRoute, DhcpOptionRule, DhcpOptionValue, Directive, DnsmasqOption,
    MAX_CACHE_SIZE, QueryLogging,
};
pub use format::Connections;
pub use model::{
    Bootp, Bridge, DEFAULT_NAT_PORTS, DhcpHost, DhcpRange, Dns, DnsForwarder, DnsHost, DnsSrv,
    DnsTxt, Domain, Forward, ForwardMode, ForwarderDomain, IpDef, IpFamily, Lease, LeaseUnit,
    MacAddr, MacAddrParseError, MacTableManager, MacvtapMode, Nat, NatAddressRange, NetworkDef,
    PortGroup, PortRange, RouteDef,
};
pub use port::{PortDef, PortPlug};
pub use update::{Update, UpdateCommand, UpdateSection};
pub use validate::{NETWORK_NAME_MAX_BYTES, validate_ifname, validate_network_name};

/// Highest `N` tried for generated `virbrN` bridge names (libvirt's `MAX_BRIDGE_ID`).
pub const MAX_BRIDGE_ID: u32 = 256;

/// The bridge name template of a network without `<bridge name=>`.
pub const DEFAULT_BRIDGE_TEMPLATE: &str = "virbr%d";

/// Whether a `<bridge name=>` is a libvirt template such as `vbr%d`, whose lowest free
/// number is filled in when the network is defined.
pub fn is_bridge_template(name: &str) -> bool {
    name.contains("%d")
}

/// The names a bridge name template gives, lowest number first, as libvirt tries them
/// (`0..=MAX_BRIDGE_ID`), up to the longest an interface name can be.
pub fn bridge_names(template: &str) -> impl Iterator<Item = String> + '_ {
    (0..=MAX_BRIDGE_ID)
        .map(move |id| template.replacen("%d", &id.to_string(), 1))
        .take_while(|name| name.len() <= validate::IFNAME_MAX_BYTES)
}

/// Everything that can go wrong reading, validating or completing a network definition.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The document is not well-formed XML (or not a single `<network>` document).
    #[error("malformed {document} XML at line {line}, column {column}: {reason}")]
    Malformed {
        /// What the document was to be: `network`, `network port`, or `update` (the
        /// element `net-update` adds, changes or deletes).
        document: &'static str,
        /// 1-based line of the offending byte.
        line: u64,
        /// 1-based column (in bytes) of the offending byte.
        column: u64,
        /// What the XML reader complained about.
        reason: String,
    },
    /// The document uses a libvirt feature kvnet does not implement.
    #[error("unsupported {what} in network '{network}' (line {line})")]
    Unsupported {
        /// E.g. `element <bandwidth>` or `attribute 'zone' on <bridge>`.
        what: String,
        /// Name of the network (empty if the document has no `<name>`).
        network: String,
        /// 1-based line where the construct starts.
        line: u64,
    },
    /// A network port document uses a libvirt feature kvnet does not implement. Ports
    /// get their own variant because they belong to no network by name.
    #[error("unsupported {what} in network port (line {line})")]
    UnsupportedPort {
        /// E.g. `element <bandwidth>` or `plug type 'direct'`.
        what: String,
        /// 1-based line where the construct starts.
        line: u64,
    },
    /// The definition is well-formed but invalid; the message says why, and the class
    /// is the one libvirt reports that check with.
    #[error("{1}")]
    Invalid(Class, String),
    /// A `net-update` that does not fit the definition: a duplicate entry, no matching
    /// entry, no such `<ip>`.
    #[error("{0}")]
    UpdateRefused(String),
    /// A `net-update` of a section or with a command that cannot be applied.
    #[error("{0}")]
    UpdateUnsupported(String),
    /// No free name was left from the bridge name template.
    #[error("Bridge generation exceeded max id {MAX_BRIDGE_ID} for the template '{0}'")]
    BridgeIdsExhausted(String),
}

/// The error class libvirt raises a refused definition with (its `VIR_ERR_*` code),
/// which virsh shows as the reason's prefix (`XML error: `, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `VIR_ERR_XML_ERROR`: most of libvirt's parse checks, and kvnet's own.
    XmlError,
    /// `VIR_ERR_XML_DETAIL`: shown without a prefix.
    XmlDetail,
    /// `VIR_ERR_CONFIG_UNSUPPORTED`: checks of what the driver can set up.
    ConfigUnsupported,
    /// `VIR_ERR_INTERNAL_ERROR`, which libvirt uses for ranges and ports.
    Internal,
    /// `VIR_ERR_NO_NAME`: a definition without its name.
    NoName,
    /// `VIR_ERR_OPERATION_INVALID`.
    OperationInvalid,
    /// `VIR_ERR_INVALID_ARG`: a request the definition does not allow.
    InvalidArgument,
}

/// Shorthand used by the parser and validator for an [`Error::Invalid`] of libvirt's
/// most common class, `VIR_ERR_XML_ERROR`.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(Class::XmlError, message.into())
}

/// An [`Error::Invalid`] of another class.
pub(crate) fn invalid_as(class: Class, message: impl Into<String>) -> Error {
    Error::Invalid(class, message.into())
}

/// The `isolated` attribute of a `<port>` element (in a network or a network port).
fn isolated_ports(port: &dom::Element) -> Result<Option<bool>, Error> {
    tristate(port, "isolated")
}

/// A `yes`/`no` attribute libvirt reads with `virXMLPropTristateBool`, with its message
/// for any other value.
fn tristate(element: &dom::Element, attr: &str) -> Result<Option<bool>, Error> {
    match element.attr(attr) {
        None => Ok(None),
        Some("yes") => Ok(Some(true)),
        Some("no") => Ok(Some(false)),
        Some(other) => Err(invalid(format!(
            "Invalid value for attribute '{attr}' in element '{}': '{other}'.",
            element.name
        ))),
    }
}
