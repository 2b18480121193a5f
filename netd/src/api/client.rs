//! A typed client for the daemon's API (HTTP/1.1 over the Unix socket, one connection per
//! call, blocking std I/O), used by the CLI.

use std::path::{Path, PathBuf};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::types::{
    AutostartRequest, DaemonVersion, ErrorBody, Lease, NetworkSummary, UpdateRequest,
    UpdateResponse, XmlRequest, XmlResponse,
};

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's socket could not be reached.
    #[error("cannot connect to kvnetd at {}: {source} (is kvnetd running?)", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The exchange itself failed (connection dropped, unreadable answer).
    #[error("talking to kvnetd at {}: {message}", socket.display())]
    Protocol {
        /// The socket.
        socket: PathBuf,
        /// What failed.
        message: String,
    },
}

/// How long a call waits for the daemon's answer. Calls queue behind each other in the
/// daemon (a thousand parallel starts take seconds), so this only catches a hung one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection-per-call client of one daemon socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    answer_timeout: Duration,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            answer_timeout: ANSWER_TIMEOUT,
        }
    }

    /// The same client, waiting at most `timeout` for each answer.
    pub fn with_answer_timeout(self, timeout: Duration) -> Client {
        Client {
            answer_timeout: timeout,
            ..self
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Which daemon answers on the socket: the cheapest call that proves one does.
    pub fn version(&self) -> Result<DaemonVersion, Error> {
        self.call(Method::GET, "/v1/version".into(), None::<()>)
    }

    /// All networks, active and inactive.
    pub fn list(&self) -> Result<Vec<NetworkSummary>, Error> {
        self.call(Method::GET, "/v1/networks".into(), None::<()>)
    }

    /// One network, by name or UUID.
    pub fn get(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::GET, network_path(network, ""), None::<()>)
    }

    /// Defines (or redefines) a persistent network from XML.
    pub fn define(&self, xml: &str) -> Result<NetworkSummary, Error> {
        self.call(
            Method::POST,
            "/v1/networks".into(),
            Some(XmlRequest {
                xml: xml.to_owned(),
            }),
        )
    }

    /// Creates and starts a transient network from XML.
    pub fn create(&self, xml: &str) -> Result<NetworkSummary, Error> {
        let request = XmlRequest {
            xml: xml.to_owned(),
        };
        self.call(
            Method::POST,
            "/v1/networks?transient=true".into(),
            Some(request),
        )
    }

    /// Removes a network's persistent definition.
    pub fn undefine(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::DELETE, network_path(network, ""), None::<()>)
    }

    /// Starts a defined network.
    pub fn start(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::POST, network_path(network, "/start"), None::<()>)
    }

    /// Stops a network (virsh's net-destroy).
    pub fn stop(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.call(Method::POST, network_path(network, "/stop"), None::<()>)
    }

    /// Turns autostart on or off.
    pub fn set_autostart(&self, network: &str, enabled: bool) -> Result<NetworkSummary, Error> {
        let request = AutostartRequest { enabled };
        self.call(
            Method::PUT,
            network_path(network, "/autostart"),
            Some(request),
        )
    }

    /// The network's XML: the live definition, or with `inactive` the persistent one.
    pub fn xml(&self, network: &str, inactive: bool) -> Result<String, Error> {
        let path = network_path(
            network,
            if inactive {
                "/xml?inactive=true"
            } else {
                "/xml"
            },
        );
        let response: XmlResponse = self.call(Method::GET, path, None::<()>)?;
        Ok(response.xml)
    }

    /// The network's DHCP leases.
    pub fn leases(&self, network: &str) -> Result<Vec<Lease>, Error> {
        self.call(Method::GET, network_path(network, "/leases"), None::<()>)
    }

    /// Changes one entry of a network's definition (net-update).
    pub fn update(&self, network: &str, request: &UpdateRequest) -> Result<UpdateResponse, Error> {
        self.call(
            Method::POST,
            network_path(network, "/update"),
            Some(request),
        )
    }

    /// One request on a fresh connection, as blocking I/O on a std socket: that is
    /// what a one-request CLI wants (no runtime to build, no task to spawn). Async
    /// callers run it with `tokio::task::spawn_blocking`.
    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<impl Serialize>,
    ) -> Result<T, Error> {
        let protocol = |message: String| Error::Protocol {
            socket: self.socket.clone(),
            message,
        };
        let body = match body {
            Some(body) => serde_json::to_vec(&body).map_err(|e| protocol(e.to_string()))?,
            None => Vec::new(),
        };
        if body.len() > super::MAX_REQUEST_BYTES {
            return Err(protocol(format!(
                "the request is {} bytes; kvnetd reads at most {}",
                body.len(),
                super::MAX_REQUEST_BYTES
            )));
        }
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| Error::Connect {
            socket: self.socket.clone(),
            source,
        })?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: kvnetd\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        // A daemon that took the connection but hangs must not hang the caller forever.
        stream
            .set_read_timeout(Some(self.answer_timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.answer_timeout)))
            .map_err(|e| protocol(format!("setting a timeout: {e}")))?;
        stream
            .write_all(&request)
            .map_err(|e| protocol(format!("sending the request: {e}")))?;
        // Room for most answers at once (net-list at 1,000 networks is ~150 KB): no
        // regrowing copies.
        let mut answer = Vec::with_capacity(256 * 1024);
        stream
            .read_to_end(&mut answer)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    protocol(format!("no answer within {:?}", self.answer_timeout))
                }
                _ => protocol(format!("reading the answer: {e}")),
            })?;
        let (status, bytes) = parse_response(&answer).map_err(protocol)?;
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes)
                .map_err(|e| protocol(format!("unreadable answer: {e}")));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::Api(body.into())),
            Err(_) => Err(protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ))),
        }
    }
}

/// Splits an HTTP/1.1 answer read to its end into the status and the body (sized by
/// `content-length`, chunked, or up to the end).
fn parse_response(answer: &[u8]) -> Result<(StatusCode, Vec<u8>), String> {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer ended inside its header")?;
    let head =
        std::str::from_utf8(&answer[..head_end]).map_err(|_| "the answer header is not UTF-8")?;
    let body = &answer[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or("the answer ended inside its body")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

/// Decodes a `transfer-encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("the answer ended inside a chunk header")?;
        let size_text = std::str::from_utf8(&body[..line_end]).unwrap_or_default();
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("the answer ended inside a chunk")?);
        body = body
            .get(size + 2..)
            .ok_or("the answer ended after a chunk")?;
    }
}

/// `/v1/networks/<percent-encoded name>` plus a suffix.
fn network_path(network: &str, suffix: &str) -> String {
    let mut path = String::from("/v1/networks/");
    for byte in network.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            path.push(char::from(byte));
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push_str(suffix);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_into_status_and_body() {
        let sized = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}extra";
        assert_eq!(
            parse_response(sized),
            Ok((StatusCode::NOT_FOUND, b"{}".to_vec()))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\n2;x=y\r\n2]\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked),
            Ok((StatusCode::OK, b"[1,2]".to_vec()))
        );
        let to_end = b"HTTP/1.1 200 OK\r\n\r\n[]";
        assert_eq!(parse_response(to_end), Ok((StatusCode::OK, b"[]".to_vec())));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n[]").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_daemon_that_never_answers_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tmp");
        let socket = dir.path().join("mute.sock");
        // Accepts (the backlog does) and never answers.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let client = Client::new(&socket).with_answer_timeout(Duration::from_millis(50));
        let err = client.list().expect_err("no answer");
        assert!(
            matches!(&err, Error::Protocol { message, .. } if message.contains("no answer within")),
            "{err}"
        );
        assert!(err.to_string().contains("mute.sock"), "{err}");
    }

    #[test]
    fn a_request_over_the_daemons_limit_is_refused_before_sending() {
        let client = Client::new("/nonexistent/kvnetd.sock");
        let huge = format!(
            "<network>{}</network>",
            " ".repeat(super::super::MAX_REQUEST_BYTES)
        );
        let err = client.define(&huge).expect_err("too large");
        assert!(err.to_string().contains("kvnetd reads at most"), "{err}");
    }

    #[test]
    fn network_names_are_percent_encoded_in_paths() {
        assert_eq!(
            network_path("default", "/start"),
            "/v1/networks/default/start"
        );
        assert_eq!(network_path("a b%c?", ""), "/v1/networks/a%20b%25c%3F");
    }
}
