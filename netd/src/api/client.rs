//! A typed client for the daemon's API (HTTP/1.1 over the Unix socket, one connection per
//! call, blocking std I/O), used by the CLI. [`Client::events`] keeps its connection and
//! reads the event stream as it comes ([`EventStream`]); [`Client::plug`] receives a new
//! port's tap over its connection.

use std::path::{Path, PathBuf};

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorKind};
use super::types::{
    AutostartRequest, DaemonVersion, ErrorBody, EventRecord, Lease, NetworkSummary, PortSummary,
    TAP_UPGRADE, UpdateRequest, UpdateResponse, XmlRequest, XmlResponse,
};
use crate::fdpass;

/// Errors of a client call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's socket could not be reached.
    #[error("cannot connect to kvnetd at {}: {source}{}", socket.display(), connect_hint(source, *read_only))]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// Whether the client was read-only (`kvnet -r`).
        read_only: bool,
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

/// What the user can do about a failed connection of a client, read-only (`kvnet -r`)
/// or not: what follows its reason.
pub fn connect_hint(error: &std::io::Error, read_only: bool) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if read_only => {
            " (the socket is for root and its group, and kvnetd has no read-only socket beside it)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (the socket is for root and its group; `kvnet -r` reads through the read-only socket beside it)"
        }
        // No socket, or no daemon behind it.
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            " (is kvnetd running?)"
        }
        // A path that is no socket path at all (too long, a NUL in it) says so itself.
        _ => "",
    }
}

/// A connection-per-call client of one daemon socket.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    answer_timeout: Duration,
    read_only: bool,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            answer_timeout: ANSWER_TIMEOUT,
            read_only: false,
        }
    }

    /// The same client, refusing every call that changes something, as a libvirt
    /// read-only connection (`virsh -r`) does, with libvirt's message.
    pub fn read_only(self) -> Client {
        Client {
            read_only: true,
            ..self
        }
    }

    /// Refuses a change on a read-only client; `api` is the libvirt call it stands for.
    fn writable(&self, api: &str) -> Result<(), Error> {
        if !self.read_only {
            return Ok(());
        }
        Err(Error::Api(ApiError::new(
            ErrorKind::OperationForbidden,
            format!("read only access prevents {api}"),
        )))
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
        self.writable("virNetworkDefineXML")?;
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
        self.writable("virNetworkCreateXML")?;
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
        self.writable("virNetworkUndefine")?;
        self.call(Method::DELETE, network_path(network, ""), None::<()>)
    }

    /// Starts a defined network.
    pub fn start(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.writable("virNetworkCreate")?;
        self.call(Method::POST, network_path(network, "/start"), None::<()>)
    }

    /// Stops a network (virsh's net-destroy).
    pub fn stop(&self, network: &str) -> Result<NetworkSummary, Error> {
        self.writable("virNetworkDestroy")?;
        self.call(Method::POST, network_path(network, "/stop"), None::<()>)
    }

    /// Turns autostart on or off.
    pub fn set_autostart(&self, network: &str, enabled: bool) -> Result<NetworkSummary, Error> {
        self.writable("virNetworkSetAutostart")?;
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
        self.writable("virNetworkUpdate")?;
        self.call(
            Method::POST,
            network_path(network, "/update"),
            Some(request),
        )
    }

    /// The ports of a running network, by UUID.
    pub fn ports(&self, network: &str) -> Result<Vec<PortSummary>, Error> {
        self.call(Method::GET, network_path(network, "/ports"), None::<()>)
    }

    /// Creates a port with a persistent tap from a `<networkport>` document
    /// (`net-port-create`); it lasts until [`Client::delete_port`].
    pub fn create_port(&self, network: &str, xml: &str) -> Result<PortSummary, Error> {
        self.writable("virNetworkPortCreateXML")?;
        let request = XmlRequest {
            xml: xml.to_owned(),
        };
        self.call(Method::POST, network_path(network, "/ports"), Some(request))
    }

    /// A port's `<networkport>` document.
    pub fn port_xml(&self, network: &str, port: &str) -> Result<String, Error> {
        let path = network_path(
            network,
            &format!("/ports/{}/xml", super::percent_encode(port.as_bytes(), b"")),
        );
        let response: XmlResponse = self.call(Method::GET, path, None::<()>)?;
        Ok(response.xml)
    }

    /// Deletes a port and its tap.
    pub fn delete_port(&self, network: &str, port: &str) -> Result<PortSummary, Error> {
        self.writable("virNetworkPortDelete")?;
        let path = network_path(
            network,
            &format!("/ports/{}", super::percent_encode(port.as_bytes(), b"")),
        );
        self.call(Method::DELETE, path, None::<()>)
    }

    /// Creates a port from a `<networkport>` document and takes its tap: the descriptor
    /// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, close-on-exec) comes over the connection.
    /// The port lasts until the last copy of the descriptor closes.
    pub fn plug(&self, network: &str, xml: &str) -> Result<(PortSummary, OwnedFd), Error> {
        self.writable("virNetworkPortCreateXML")?;
        let request = XmlRequest {
            xml: xml.to_owned(),
        };
        let stream = self.send_upgrade(
            Method::POST,
            &network_path(network, "/ports"),
            Some(request),
            Some(TAP_UPGRADE),
        )?;
        // Every read goes through recvmsg: a plain read of the bytes the tap rides on
        // would close it.
        let mut answer = Vec::with_capacity(4096);
        let fds = std::cell::RefCell::new(Vec::new());
        let mut more = |answer: &mut Vec<u8>| {
            let mut buffer = [0; 4096];
            let n = fdpass::recv_with_fds(stream.as_fd(), &mut buffer, &mut fds.borrow_mut())
                .map_err(|e| self.read_error(&e))?;
            answer.extend_from_slice(&buffer[..n]);
            Ok::<_, Error>(n > 0)
        };
        let (_, head_end) =
            self.read_head(&mut answer, StatusCode::SWITCHING_PROTOCOLS, &mut more)?;
        // Switched: the port follows with its tap attached; stop once both are here rather
        // than wait for the end of the stream.
        let port = |answer: &[u8]| serde_json::from_slice::<PortSummary>(&answer[head_end..]);
        while (fds.borrow().is_empty() || port(&answer).is_err()) && more(&mut answer)? {}
        let summary = port(&answer).map_err(|e| self.protocol(format!("unreadable port: {e}")))?;
        let mut fds = fds.into_inner().into_iter();
        match (fds.next(), fds.next()) {
            (Some(tap), None) => Ok((summary, tap)),
            (None, _) => Err(self.protocol(format!(
                "port {} was created but its tap did not arrive",
                summary.uuid
            ))),
            (Some(_), Some(_)) => Err(self.protocol("more than one descriptor arrived".into())),
        }
    }

    /// Subscribes to the daemon's lifecycle events (all networks, or those of `network`,
    /// a name or UUID that must exist). Once this returns, every later event arrives
    /// through the stream.
    pub fn events(&self, network: Option<&str>) -> Result<EventStream, Error> {
        let path = match network {
            Some(network) => format!(
                "/v1/events?network={}",
                super::percent_encode(network.as_bytes(), b"")
            ),
            None => "/v1/events".to_owned(),
        };
        let mut stream = self.send(Method::GET, &path, None::<()>)?;
        let mut read = Vec::with_capacity(4096);
        let mut more = |read: &mut Vec<u8>| {
            let mut buffer = [0; 4096];
            let n = stream.read(&mut buffer).map_err(|e| self.read_error(&e))?;
            read.extend_from_slice(&buffer[..n]);
            Ok::<_, Error>(n > 0)
        };
        let (head, head_end) = self.read_head(&mut read, StatusCode::OK, &mut more)?;
        let framing = if head.chunked {
            Framing::Chunked(Dechunker::default())
        } else {
            Framing::Identity(head.length)
        };
        let mut events = EventStream {
            socket: self.socket.clone(),
            stream,
            framing,
            body: Vec::new(),
            ended: false,
        };
        events
            .decode(&read[head_end..])
            .map_err(|e| self.protocol(e))?;
        Ok(events)
    }

    /// Reads an answer's header into `answer` through `more` (which appends what it reads
    /// and says whether the stream goes on), for answers whose body is read as it comes.
    /// With the `expected` status, returns the header and where the body starts; with any
    /// other, reads the error answer whole (it is short; the daemon may keep the
    /// connection open after it) and returns its error.
    fn read_head(
        &self,
        answer: &mut Vec<u8>,
        expected: StatusCode,
        more: &mut impl FnMut(&mut Vec<u8>) -> Result<bool, Error>,
    ) -> Result<(Head, usize), Error> {
        let head_end = loop {
            if let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !more(answer)? {
                return Err(self.protocol("the answer ended inside its header".into()));
            }
        };
        let head = parse_head(&answer[..head_end]).map_err(|e| self.protocol(e))?;
        if head.status != expected {
            let end = head.length.map(|length| head_end + length);
            while end.is_none_or(|end| answer.len() < end) && more(answer)? {}
            let (status, body) = parse_response(answer).map_err(|e| self.protocol(e))?;
            return Err(self.error_answer(status, &body));
        }
        Ok((head, head_end))
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
        let mut stream = self.send(method, &path, body)?;
        // Room for most answers at once (net-list at 1,000 networks is ~150 KB): no
        // regrowing copies.
        let mut answer = Vec::with_capacity(256 * 1024);
        stream
            .read_to_end(&mut answer)
            .map_err(|e| self.read_error(&e))?;
        let (status, bytes) = parse_response(&answer).map_err(|e| self.protocol(e))?;
        tracing::debug!(%status, bytes = bytes.len(), "answer");
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes)
                .map_err(|e| self.protocol(format!("unreadable answer: {e}")));
        }
        Err(self.error_answer(status, &bytes))
    }

    /// Connects and sends one request; the answer is the caller's to read.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
    ) -> Result<UnixStream, Error> {
        self.send_upgrade(method, path, body, None)
    }

    /// [`Client::send`], asking to switch the connection to the `upgrade` protocol.
    fn send_upgrade(
        &self,
        method: Method,
        path: &str,
        body: Option<impl Serialize>,
        upgrade: Option<&str>,
    ) -> Result<UnixStream, Error> {
        let body = match body {
            Some(body) => serde_json::to_vec(&body).map_err(|e| self.protocol(e.to_string()))?,
            None => Vec::new(),
        };
        tracing::debug!(socket = %self.socket.display(), %method, path, bytes = body.len(), "request");
        if body.len() > super::MAX_REQUEST_BYTES {
            return Err(self.protocol(format!(
                "the request is {} bytes; kvnetd reads at most {}",
                body.len(),
                super::MAX_REQUEST_BYTES
            )));
        }
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| Error::Connect {
            socket: self.socket.clone(),
            read_only: self.read_only,
            source,
        })?;
        let connection = match upgrade {
            Some(protocol) => format!("connection: upgrade\r\nupgrade: {protocol}"),
            None => "connection: close".to_owned(),
        };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: kvnetd\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{connection}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        // A daemon that took the connection but hangs must not hang the caller forever.
        stream
            .set_read_timeout(Some(self.answer_timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.answer_timeout)))
            .map_err(|e| self.protocol(format!("setting a timeout: {e}")))?;
        stream.write_all(&request).map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                self.closed_unanswered(&e)
            }
            _ => self.protocol(format!("sending the request: {e}")),
        })?;
        Ok(stream)
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            socket: self.socket.clone(),
            message,
        }
    }

    fn read_error(&self, e: &std::io::Error) -> Error {
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                self.protocol(format!("no answer within {:?}", self.answer_timeout))
            }
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                self.closed_unanswered(e)
            }
            _ => self.protocol(format!("reading the answer: {e}")),
        }
    }

    /// The daemon closed the connection before answering (`e`): it is stopping, or
    /// serves so many connections of clients that may only read (of this user, or of
    /// all) that it refused this one.
    fn closed_unanswered(&self, e: &std::io::Error) -> Error {
        self.protocol(format!(
            "kvnetd closed the connection unanswered ({e}): it is stopping, or has as many \
             connections open as it serves to clients that may only read"
        ))
    }

    /// The error a non-200 answer carries.
    fn error_answer(&self, status: StatusCode, body: &[u8]) -> Error {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(body) => Error::Api(body.into()),
            Err(_) => self.protocol(format!("HTTP {status}: {}", String::from_utf8_lossy(body))),
        }
    }
}

/// The daemon's event stream ([`Client::events`]), read one record at a time.
#[derive(Debug)]
pub struct EventStream {
    socket: PathBuf,
    stream: UnixStream,
    framing: Framing,
    /// Body bytes received and not yet returned (the start of the next line).
    body: Vec<u8>,
    /// The body is complete: what is left in `body` is all there is.
    ended: bool,
}

/// What [`EventStream::next`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The next record.
    Record(EventRecord),
    /// The deadline passed first.
    TimedOut,
    /// The interrupt descriptor became readable first.
    Interrupted,
    /// The daemon ended the stream (it stopped, or went away).
    Ended,
}

impl EventStream {
    /// Waits for the next record, until `deadline` if one is given, and only as long as
    /// `interrupt` (e.g. a signalfd) has nothing to read. Records that arrived together
    /// are returned one by one without waiting.
    pub fn next(
        &mut self,
        deadline: Option<Instant>,
        interrupt: Option<BorrowedFd<'_>>,
    ) -> Result<Next, Error> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            if let Some(record) = self.buffered_record()? {
                return Ok(Next::Record(record));
            }
            if self.ended {
                return Ok(Next::Ended);
            }
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Next::TimedOut);
                    }
                    // Rounded up, so that a wake-up comes at or after the deadline.
                    let millis = left.as_micros().div_ceil(1000);
                    PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = vec![PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            if let Some(fd) = interrupt {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(self.protocol(format!("waiting for events: {e}"))),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
            if fds.get(1).is_some_and(ready) {
                return Ok(Next::Interrupted);
            }
            if fds.first().is_some_and(ready) {
                let mut buffer = [0; 16 * 1024];
                match self.stream.read(&mut buffer) {
                    Ok(0) => self.ended = true,
                    Ok(n) => self.decode(&buffer[..n]).map_err(|e| self.protocol(e))?,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // A reset connection is a daemon that went away, like an EOF.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => self.ended = true,
                    Err(e) => return Err(self.protocol(format!("reading events: {e}"))),
                }
            }
        }
    }

    /// The next complete line in `body`, decoded. A line cut off by the end of the
    /// stream is dropped.
    fn buffered_record(&mut self) -> Result<Option<EventRecord>, Error> {
        while let Some(end) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=end).collect();
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(line)
                .map(Some)
                .map_err(|e| self.protocol(format!("unreadable event: {e}")));
        }
        Ok(None)
    }

    /// Appends what `bytes` carries of the body, undoing the chunked framing.
    fn decode(&mut self, bytes: &[u8]) -> Result<(), String> {
        match &mut self.framing {
            Framing::Identity(left) => {
                let take = left.map_or(bytes.len(), |left| left.min(bytes.len()));
                self.body.extend_from_slice(&bytes[..take]);
                if let Some(left) = left {
                    *left -= take;
                    self.ended |= *left == 0;
                }
            }
            Framing::Chunked(chunks) => self.ended |= chunks.feed(bytes, &mut self.body)?,
        }
        Ok(())
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            socket: self.socket.clone(),
            message,
        }
    }
}

impl AsFd for EventStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

/// How an answer's body is framed.
#[derive(Debug)]
enum Framing {
    /// `transfer-encoding: chunked`.
    Chunked(Dechunker),
    /// As is: `content-length` bytes, or (`None`) up to the end of the connection.
    Identity(Option<usize>),
}

/// An incremental decoder of a `transfer-encoding: chunked` body: bytes go in as they
/// arrive, in pieces cut anywhere.
#[derive(Debug, Default)]
struct Dechunker {
    /// Bytes not decoded yet: an incomplete size line or chunk end.
    pending: Vec<u8>,
    /// Data bytes of the current chunk still to come.
    left: usize,
    /// The CRLF after the current chunk's data is still to come.
    crlf_due: bool,
    /// The last (empty) chunk was seen.
    done: bool,
}

/// The longest chunk size line accepted (hex size plus extensions).
const MAX_CHUNK_LINE: usize = 1024;

impl Dechunker {
    /// Decodes `bytes`, appending the data to `out`; returns whether the body is complete.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        self.pending.extend_from_slice(bytes);
        let buffer = &self.pending;
        let mut at = 0;
        while !self.done {
            if self.left > 0 {
                let take = self.left.min(buffer.len() - at);
                out.extend_from_slice(&buffer[at..at + take]);
                at += take;
                self.left -= take;
                if self.left > 0 {
                    break;
                }
                self.crlf_due = true;
            }
            if self.crlf_due {
                match buffer.get(at..at + 2) {
                    None => break,
                    Some(b"\r\n") => {
                        at += 2;
                        self.crlf_due = false;
                    }
                    Some(_) => return Err("a chunk does not end with CRLF".into()),
                }
            }
            let Some(line_end) = buffer[at..].windows(2).position(|w| w == b"\r\n") else {
                if buffer.len() - at > MAX_CHUNK_LINE {
                    return Err("a chunk header is too long".into());
                }
                break;
            };
            let line = std::str::from_utf8(&buffer[at..at + line_end]).unwrap_or_default();
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            at += line_end + 2;
            if size == 0 {
                // Trailers, if any, are not read: the connection closes after them.
                self.done = true;
            }
            self.left = size;
        }
        self.pending.drain(..at);
        Ok(self.done)
    }
}

/// The parts of an answer's header that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: StatusCode,
    length: Option<usize>,
    chunked: bool,
}

/// Parses an answer's status line and header fields (`head` may include the blank line).
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let head = std::str::from_utf8(head).map_err(|_| "the answer header is not UTF-8")?;
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
    Ok(Head {
        status,
        length,
        chunked,
    })
}

/// Splits an HTTP/1.1 answer read to its end into the status and the body (sized by
/// `content-length`, chunked, or up to the end).
fn parse_response(answer: &[u8]) -> Result<(StatusCode, Vec<u8>), String> {
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer ended inside its header")?;
    let head = parse_head(&answer[..head_end])?;
    let body = &answer[head_end + 4..];
    let body = if head.chunked {
        let mut out = Vec::new();
        if !Dechunker::default().feed(body, &mut out)? {
            return Err("the answer ended inside a chunk".into());
        }
        out
    } else if let Some(length) = head.length {
        body.get(..length)
            .ok_or("the answer ended inside its body")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((head.status, body))
}

/// `/v1/networks/<percent-encoded name>` plus a suffix.
fn network_path(network: &str, suffix: &str) -> String {
    format!(
        "/v1/networks/{}{suffix}",
        super::percent_encode(network.as_bytes(), b"")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "Is kvnetd running?" only where that is the question: not after an error that
    /// says what is wrong with the path itself.
    #[test]
    fn the_connect_hint_asks_for_a_daemon_only_when_none_answered() {
        use std::io::{Error, ErrorKind};
        let hint = |kind| connect_hint(&Error::from(kind), false);
        assert_eq!(hint(ErrorKind::NotFound), " (is kvnetd running?)");
        assert_eq!(hint(ErrorKind::ConnectionRefused), " (is kvnetd running?)");
        assert_eq!(hint(ErrorKind::InvalidInput), "");
        assert!(hint(ErrorKind::PermissionDenied).contains("kvnet -r"));
    }

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

    #[test]
    fn chunked_bodies_decode_whatever_the_pieces_they_arrive_in() {
        let body = b"3\r\n[1,\r\n2;x=y\r\n2]\r\nA\r\n0123456789\r\n0\r\n\r\n";
        for piece in [1, 2, 3, 7, body.len()] {
            let mut chunks = Dechunker::default();
            let mut out = Vec::new();
            let mut done = false;
            for bytes in body.chunks(piece) {
                done |= chunks.feed(bytes, &mut out).expect("valid");
            }
            assert!(done, "piece {piece}");
            assert_eq!(out, b"[1,2]0123456789", "piece {piece}");
        }
        let mut out = Vec::new();
        assert!(Dechunker::default().feed(b"3\r\nabcXY", &mut out).is_err());
        assert!(Dechunker::default().feed(b"zz\r\n", &mut out).is_err());
        assert!(
            Dechunker::default()
                .feed(&[b'1'; MAX_CHUNK_LINE + 1], &mut out)
                .is_err()
        );
    }

    /// A daemon stand-in: answers the first connection with `answer`, written in the
    /// pieces given with a pause between them, then keeps the connection open until the
    /// test ends. Returns the socket and what the client sent.
    fn fake_daemon(
        dir: &Path,
        answer: Vec<Vec<u8>>,
    ) -> (PathBuf, std::sync::mpsc::Receiver<String>) {
        let socket = dir.join("fake.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
        let (sent, request) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = sent.send(String::from_utf8_lossy(&head).into_owned());
            for piece in answer {
                if stream.write_all(&piece).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // Held open (the client's timeouts are under test), until the client closes.
            let _ = stream.read(&mut byte);
        });
        (socket, request)
    }

    const STREAM_HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n";

    fn lifecycle(network: &str, event: &str) -> String {
        format!(
            "{{\"type\":\"lifecycle\",\"network\":\"{network}\",\"uuid\":\"{}\",\"event\":\"{event}\",\"time\":\"2026-11-27T07:24:07.211Z\"}}\n",
            uuid::Uuid::from_u128(7)
        )
    }

    fn chunk(data: &str) -> Vec<u8> {
        format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
    }

    fn network_of(next: Next) -> String {
        match next {
            Next::Record(EventRecord::Lifecycle(event)) => event.network,
            other => panic!("expected a lifecycle record, got {other:?}"),
        }
    }

    #[test]
    fn event_records_come_one_at_a_time_however_the_stream_is_cut() {
        let dir = tempfile::tempdir().expect("tmp");
        let two = format!("{}{}", lifecycle("a", "defined"), lifecycle("b", "started"));
        let third = lifecycle("c", "stopped");
        let (cut_head, cut_tail) = third.split_at(10);
        let answer = vec![
            // The header and the first chunk in one piece, the next record cut in two
            // chunks, a chunk header cut in two writes, records of a newer daemon.
            [STREAM_HEAD, &chunk(&two)].concat(),
            chunk(cut_head),
            chunk(cut_tail)[..1].to_vec(),
            chunk(cut_tail)[1..].to_vec(),
            chunk("{\"type\":\"from_the_future\",\"x\":1}\n{\"type\":\"missed\",\"count\":3}\n"),
            b"0\r\n\r\n".to_vec(),
        ];
        let (socket, request) = fake_daemon(dir.path(), answer);
        let mut events = Client::new(&socket).events(None).expect("subscribed");
        assert!(
            request
                .recv()
                .expect("request")
                .starts_with("GET /v1/events HTTP/1.1\r\n")
        );
        assert_eq!(network_of(events.next(None, None).expect("next")), "a");
        assert_eq!(network_of(events.next(None, None).expect("next")), "b");
        let c = events.next(None, None).expect("next");
        let Next::Record(EventRecord::Lifecycle(c)) = c else {
            panic!("{c:?}")
        };
        assert_eq!(c.event, super::super::types::LifecycleKind::Stopped);
        assert_eq!(c.uuid, uuid::Uuid::from_u128(7));
        assert_eq!(
            events.next(None, None).expect("next"),
            Next::Record(EventRecord::Unknown)
        );
        assert_eq!(
            events.next(None, None).expect("next"),
            Next::Record(EventRecord::Missed { count: 3 })
        );
        assert_eq!(events.next(None, None).expect("next"), Next::Ended);
    }

    #[test]
    fn the_wait_ends_at_the_deadline_or_when_the_interrupt_fd_turns_readable() {
        let dir = tempfile::tempdir().expect("tmp");
        let (socket, request) = fake_daemon(dir.path(), vec![STREAM_HEAD.to_vec()]);
        let mut events = Client::new(&socket)
            .events(Some("a b"))
            .expect("subscribed");
        assert!(
            request
                .recv()
                .expect("request")
                .starts_with("GET /v1/events?network=a%20b HTTP/1.1\r\n")
        );
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        assert_eq!(
            events.next(Some(deadline), None).expect("next"),
            Next::TimedOut
        );
        assert!(Instant::now() >= deadline);
        let (mut ring, interrupt) = UnixStream::pair().expect("pair");
        ring.write_all(b"!").expect("ring");
        assert_eq!(
            events.next(None, Some(interrupt.as_fd())).expect("next"),
            Next::Interrupted
        );
    }

    #[test]
    fn an_error_answer_to_a_subscription_is_the_daemons_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let body = r#"{"kind":"not_found","message":"no network with matching name 'x'"}"#;
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (socket, _request) = fake_daemon(dir.path(), vec![answer.into_bytes()]);
        // The stand-in keeps the connection open after its answer; a daemon closes it.
        let err = Client::new(&socket)
            .with_answer_timeout(Duration::from_millis(200))
            .events(Some("x"));
        let Err(Error::Api(api)) = err else {
            panic!("{err:?}")
        };
        assert_eq!(api.kind, super::super::ErrorKind::NotFound);
        assert_eq!(api.message, "no network with matching name 'x'");
    }
}
