//! API errors: a stable kind plus a message, mapped to HTTP statuses in one place.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::types::ErrorBody;

/// Stable error categories of the API. Their snake_case names are part of the wire
/// format; clients branch on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such network.
    NotFound,
    /// A network with that name or UUID, or a resource it needs, already exists.
    AlreadyExists,
    /// A network port with that UUID already exists (`VIR_ERR_NETWORK_PORT_EXIST`, which
    /// virsh shows as `network port MESSAGE exists already`).
    PortExists,
    /// The request is invalid (libvirt's `VIR_ERR_INVALID_ARG`).
    InvalidArgument,
    /// The definition is invalid (`VIR_ERR_XML_ERROR`).
    XmlError,
    /// The definition is invalid or not well-formed (`VIR_ERR_XML_DETAIL`; virsh shows
    /// no prefix).
    XmlDetail,
    /// The definition asks for what cannot be set up (`VIR_ERR_CONFIG_UNSUPPORTED`).
    ConfigUnsupported,
    /// The definition has no name (`VIR_ERR_NO_NAME`).
    NoName,
    /// The request is valid but not in the network's current state (e.g. starting an active network).
    OperationInvalid,
    /// The request asks for something kvnet (and libvirt) cannot do, e.g. a net-update
    /// of the `<bridge>` section.
    Unsupported,
    /// The caller may not do this.
    PermissionDenied,
    /// The client was opened read-only (`kvnet -r`) and this call changes something;
    /// refused by the client itself, as libvirt refuses it on a read-only connection.
    OperationForbidden,
    /// A hook script refused the change or could not run.
    HookFailed,
    /// Anything else: the kernel or the disk refused.
    Internal,
    /// A system call failed where libvirt reports it as such (`VIR_ERR_SYSTEM_ERROR`;
    /// virsh shows no prefix): the message ends with the C library's text.
    System,
}

impl ErrorKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::PortExists => "port_exists",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::XmlError => "xml_error",
            ErrorKind::XmlDetail => "xml_detail",
            ErrorKind::ConfigUnsupported => "config_unsupported",
            ErrorKind::NoName => "no_name",
            ErrorKind::OperationInvalid => "operation_invalid",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::OperationForbidden => "operation_forbidden",
            ErrorKind::HookFailed => "hook_failed",
            ErrorKind::Internal => "internal",
            ErrorKind::System => "system_error",
        }
    }

    /// Parses a wire name; unknown kinds from a newer daemon read as `Internal`.
    pub fn from_wire(kind: &str) -> ErrorKind {
        match kind {
            "not_found" => ErrorKind::NotFound,
            "already_exists" => ErrorKind::AlreadyExists,
            "port_exists" => ErrorKind::PortExists,
            "invalid_argument" => ErrorKind::InvalidArgument,
            "xml_error" => ErrorKind::XmlError,
            "xml_detail" => ErrorKind::XmlDetail,
            "config_unsupported" => ErrorKind::ConfigUnsupported,
            "no_name" => ErrorKind::NoName,
            "operation_invalid" => ErrorKind::OperationInvalid,
            "unsupported" => ErrorKind::Unsupported,
            "permission_denied" => ErrorKind::PermissionDenied,
            "operation_forbidden" => ErrorKind::OperationForbidden,
            "hook_failed" => ErrorKind::HookFailed,
            "system_error" => ErrorKind::System,
            _ => ErrorKind::Internal,
        }
    }

    fn status(self) -> StatusCode {
        match self {
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::AlreadyExists | ErrorKind::PortExists | ErrorKind::OperationInvalid => {
                StatusCode::CONFLICT
            }
            ErrorKind::InvalidArgument
            | ErrorKind::XmlError
            | ErrorKind::XmlDetail
            | ErrorKind::ConfigUnsupported
            | ErrorKind::NoName
            | ErrorKind::Unsupported => StatusCode::BAD_REQUEST,
            ErrorKind::PermissionDenied | ErrorKind::OperationForbidden => StatusCode::FORBIDDEN,
            ErrorKind::Internal | ErrorKind::HookFailed | ErrorKind::System => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// An error as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The category.
    pub kind: ErrorKind,
    /// What went wrong, naming the network, interface or path involved.
    pub message: String,
}

impl ApiError {
    /// Builds an error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> ApiError {
        ApiError::new(ErrorKind::from_wire(&body.kind), body.message)
    }
}

impl ApiError {
    /// The response for this error with a status other than its kind's (413 for a body
    /// too large, 405 for a method a path does not take, ...).
    pub fn into_response_with(self, status: StatusCode) -> Response {
        let body = ErrorBody {
            kind: self.kind.as_str().to_owned(),
            message: self.message,
        };
        let refused = Refused(body.clone());
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(refused);
        response
    }
}

/// The error a response carries, beside its body: what the server logs of a refused
/// request without reading the body back.
#[derive(Clone, Debug)]
pub struct Refused(pub ErrorBody);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        self.into_response_with(status)
    }
}
