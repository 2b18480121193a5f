//! The errors of network operations, and the API error each becomes.

use crate::api::{ApiError, ErrorKind};
use crate::errors::error_chain;
use crate::{dns, firewall, link, store, xml};

/// Errors of network operations. Each maps to one API error kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No network has that name or UUID.
    #[error("no network with matching {field} '{value}'")]
    NotFound {
        /// "name" or "uuid".
        field: &'static str,
        /// What was asked for.
        value: String,
    },
    /// The XML is malformed or its content invalid.
    #[error(transparent)]
    Xml(#[from] xml::Error),
    /// A network with that name or UUID, or something it needs, already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A network port with that UUID already exists.
    #[error("Network port with UUID {0} already exists")]
    PortExists(uuid::Uuid),
    /// The request conflicts with the host or another network (subnet, bridge name);
    /// an internal error in libvirt's classes.
    #[error("{0}")]
    Conflict(String),
    /// The network is not in a state that allows this.
    #[error("{0}")]
    OperationInvalid(String),
    /// The request asks for something the network cannot do (libvirt's unsupported
    /// configuration).
    #[error("{0}")]
    Unsupported(String),
    /// The network cannot serve the request, as libvirt reports it (an internal error).
    #[error("{0}")]
    Internal(String),
    /// A start failed at `step`; everything it had done was undone.
    #[error("failed to start network '{network}': {step}")]
    Start {
        /// The network.
        network: String,
        /// The step that failed, naming the device or rule involved.
        step: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stop could not remove the network's kernel objects; it stays active, as it
    /// was, so it can be retried.
    #[error("failed to stop network '{network}': {problem}")]
    Stop {
        /// The network.
        network: String,
        /// What the kernel refused.
        problem: String,
    },
    /// The lease file of an inactive network could not be read.
    #[error("cannot read the leases of network '{network}'")]
    Leases {
        /// The network.
        network: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The DNS records of an update cannot be served.
    #[error(transparent)]
    DnsRecords(dns::Error),
    /// A net-update was valid but applying it to the running network failed at `step`.
    #[error("failed to update the live state of network '{network}': {step}")]
    Live {
        /// The network.
        network: String,
        /// The step that failed.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing the daemon's files failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Netlink failed outside a start or stop.
    #[error(transparent)]
    Link(#[from] link::Error),
    /// nftables failed outside a start or stop.
    #[error(transparent)]
    Firewall(#[from] firewall::Error),
    /// A port's tap could not be created, plugged or deleted; nothing was left half done.
    #[error("port on network '{network}'")]
    Port {
        /// The network.
        network: String,
        /// What the kernel refused.
        #[source]
        source: link::Error,
    },
    /// The process asking for a macvtap port could not be told, so the port could not
    /// be tied to it.
    #[error("port on network '{network}'")]
    PortHolder {
        /// The network.
        network: String,
        /// Why.
        #[source]
        source: crate::owner::Error,
    },
    /// A hook script refused the change, or could not be run.
    #[error(transparent)]
    Hook(#[from] crate::hooks::Error),
    /// No port of the network has this UUID.
    #[error("Network port with UUID {0} does not exist")]
    PortNotFound(uuid::Uuid),
    /// A port was named by something that is not a UUID.
    #[error("invalid network port UUID '{0}'")]
    InvalidPortUuid(String),
}

impl From<Error> for ApiError {
    fn from(error: Error) -> ApiError {
        let kind = match &error {
            Error::NotFound { .. } | Error::PortNotFound(_) => ErrorKind::NotFound,
            Error::InvalidPortUuid(_) => ErrorKind::InvalidArgument,
            Error::Xml(xml) => match xml {
                xml::Error::UpdateRefused(_) => ErrorKind::OperationInvalid,
                xml::Error::UpdateUnsupported(_) => ErrorKind::Unsupported,
                xml::Error::Malformed { .. } => ErrorKind::XmlDetail,
                xml::Error::Unsupported { .. } | xml::Error::UnsupportedPort { .. } => {
                    ErrorKind::ConfigUnsupported
                }
                xml::Error::BridgeIdsExhausted(_) => ErrorKind::Internal,
                xml::Error::Invalid(class, _) => match class {
                    xml::Class::XmlError => ErrorKind::XmlError,
                    xml::Class::XmlDetail => ErrorKind::XmlDetail,
                    xml::Class::ConfigUnsupported => ErrorKind::ConfigUnsupported,
                    xml::Class::Internal => ErrorKind::Internal,
                    xml::Class::NoName => ErrorKind::NoName,
                    xml::Class::OperationInvalid => ErrorKind::OperationInvalid,
                    xml::Class::InvalidArgument => ErrorKind::InvalidArgument,
                },
            },
            Error::DnsRecords(_) => ErrorKind::InvalidArgument,
            // libvirt reports a subnet or bridge name in use as an internal error.
            Error::Conflict(_) => ErrorKind::Internal,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::PortExists(_) => ErrorKind::PortExists,
            Error::OperationInvalid(_) => ErrorKind::OperationInvalid,
            Error::Unsupported(_) => ErrorKind::Unsupported,
            Error::Hook(crate::hooks::Error::List { .. }) => ErrorKind::System,
            Error::Hook(_) => ErrorKind::HookFailed,
            Error::Store(store::Error::DefinitionTooLarge { .. }) => ErrorKind::InvalidArgument,
            Error::Start { .. }
            | Error::Stop { .. }
            | Error::Live { .. }
            | Error::Leases { .. }
            | Error::Store(_)
            | Error::Link(_)
            | Error::Firewall(_)
            | Error::Port { .. }
            | Error::PortHolder { .. }
            | Error::Internal(_) => ErrorKind::Internal,
        };
        ApiError::new(kind, error_chain(&error))
    }
}
