//! The daemon's HTTP/1.1 + JSON API over a Unix socket: wire types, server, client.
//!
//! Paths are versioned (`/v1/...`); every error body is `{"kind", "message"}` with a
//! stable snake_case kind, so the CLI and scripts can branch on it.

pub mod client;
pub mod error;
pub mod server;
pub mod types;
mod write_deadline;

pub use error::{ApiError, ErrorKind};

/// Where kvnetd listens unless told otherwise (`kvnetd --socket`; clients take
/// `KVNET_SOCKET`).
pub const DEFAULT_SOCKET: &str = "/run/kvnet/kvnetd.sock";

/// The socket clients use when not given one: a non-empty `KVNET_SOCKET`, else
/// [`DEFAULT_SOCKET`].
pub fn default_client_socket() -> std::path::PathBuf {
    std::env::var_os("KVNET_SOCKET")
        .filter(|value| !value.is_empty())
        .map_or_else(|| DEFAULT_SOCKET.into(), std::path::PathBuf::from)
}

/// The read-only socket kvnetd binds beside `socket`: `kvnetd.sock` gets
/// `kvnetd-ro.sock`, as libvirtd's `libvirt-sock` has `libvirt-sock-ro`. It is open to
/// every local user (mode 0666) and serves reads only, whoever connects.
pub fn read_only_socket(socket: &std::path::Path) -> std::path::PathBuf {
    let stem = socket.file_stem().unwrap_or_default().to_string_lossy();
    let name = match socket.extension() {
        Some(extension) => format!("{stem}-ro.{}", extension.to_string_lossy()),
        None => format!("{stem}-ro"),
    };
    socket.with_file_name(name)
}

/// The largest request body the daemon reads (a definition with tens of thousands of
/// DHCP hosts is a few MB). The client refuses larger ones itself, with that reason,
/// rather than have the daemon drop the connection mid-request.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// `bytes` for a URI: letters, digits, `-._~` and the bytes of `keep` as they are,
/// every other byte as `%XX` (RFC 3986). Network names in API paths keep nothing;
/// the CLI's `socket=` URI parameter keeps `/`.
pub fn percent_encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut encoded = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
