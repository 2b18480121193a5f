//! The API server: an axum router over a Unix socket. Handlers only translate between
//! HTTP and the [`Manager`]; the work happens there. `GET /v1/events` streams the
//! manager's lifecycle events as newline-delimited JSON until the client goes away or
//! the daemon stops. `POST /v1/networks/{network}/ports` with `Upgrade: kvnet-tap` hands the
//! new port's tap over the connection itself ([`TAP_UPGRADE`]).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, Path as UrlPath, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedRwLockReadGuard, OwnedSemaphorePermit, RwLock, Semaphore, watch};
use tower::ServiceExt;

use super::error::{ApiError, ErrorKind, Refused};
use super::types::{
    AutostartRequest, DaemonVersion, EventRecord, Lease, LifecycleEvent, LifecycleKind,
    NetworkSummary, PortSummary, TAP_UPGRADE, UpdateRequest, UpdateResponse, XmlRequest,
    XmlResponse,
};
use super::write_deadline::{Exemption, WriteDeadline};
use crate::debug_log::LogBudget;
use crate::events::{self, Lifecycle, Received, Subscription};
use crate::fdpass;
use crate::manager::{self, Manager};
use crate::xml;

/// Errors setting up the listening socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be bound, chmod'ed or put in place.
    #[error("{action} socket {path}")]
    Socket {
        /// What was being done.
        action: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The socket's directory lets other users replace what is in it.
    #[error(
        "refusing to bind socket {socket}: other users may replace files in {dir} \
         (it must belong to root or to kvnetd's user, and be writable only by its owner \
         or have the sticky bit, as /run and /tmp have)"
    )]
    UnsafeDirectory { socket: PathBuf, dir: PathBuf },
    /// Something other than a socket (an earlier daemon's) is at the socket's path.
    #[error("refusing to bind socket {0}: a file that is not a socket is there")]
    NotASocket(PathBuf),
}

/// Who is on the other end of a connection (SO_PEERCRED, SO_PEERGROUPS), and the
/// connection itself.
#[derive(Clone, Debug)]
struct Peer {
    uid: u32,
    gid: u32,
    /// Supplementary groups when it connected.
    groups: Arc<[u32]>,
    /// Connected through the read-only socket: no change, whoever it is.
    read_only: bool,
    /// A duplicate of the connection's socket: hyper owns the socket and writes only bytes,
    /// so a tap's descriptor goes out through this one ([`create_port`]).
    connection: Option<Arc<OwnedFd>>,
    /// Granted by an event stream: its connection's writes may wait on a slow reader.
    write_deadline: Exemption,
}

impl Peer {
    /// The credentials `stream`'s client connected with.
    fn of(stream: &UnixStream, read_only: bool) -> Peer {
        // A read-only connection creates no port: it needs no duplicate, and its clients,
        // whom the limits let hold most connections, take one descriptor each, not two.
        let connection = if read_only {
            None
        } else {
            stream.as_fd().try_clone_to_owned().ok().map(Arc::new)
        };
        // A peer whose groups cannot be read (Linux before 4.13) has only its primary one.
        let groups = fdpass::peer_groups(stream.as_fd())
            .inspect_err(|e| tracing::debug!(error = %e, "cannot read an API client's groups"))
            .unwrap_or_default();
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: cred.uid(),
                gid: cred.gid(),
                groups: groups.into(),
                read_only,
                connection,
                write_deadline: Exemption::default(),
            },
            // Unknown peers get no rights: uid/gid of nobody.
            Err(_) => Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                groups: Arc::new([]),
                read_only,
                connection,
                write_deadline: Exemption::default(),
            },
        }
    }
}

#[derive(Clone, Debug)]
struct AppState {
    manager: Arc<Manager>,
    /// The group that owns the socket: its members may change things, like root.
    socket_gid: u32,
    changes: Changes,
    /// Changes (its sender is dropped) when the daemon stops: event streams end then, so
    /// that the graceful shutdown, which waits for every response, can finish.
    stopping: watch::Receiver<()>,
    /// Held by each [`AppState::detached_read`] of a client that may not change networks.
    detached_reads: Arc<Semaphore>,
}

impl AppState {
    /// Runs a change to its end even if the client goes away. hyper drops the handler of
    /// a connection that closes, and a start dropped between two kernel steps would leave
    /// a bridge behind that no network owns.
    async fn change<T, F>(&self, change: impl FnOnce(Arc<Manager>) -> F) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, manager::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let in_progress = self.changes.hold().await;
        let change = change(Arc::clone(&self.manager));
        let task = tokio::spawn(async move {
            let result = change.await;
            drop(in_progress);
            result
        });
        match task.await {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::new(
                ErrorKind::Internal,
                format!("the change did not finish: {e}"),
            )),
        }
    }

    /// A read that may end ports whose guests went (their `port-deleted` hooks run), so
    /// it runs to its end as a change does. Its client's connection may close meanwhile,
    /// so a client that may not change networks first waits for one of
    /// [`MAX_DETACHED_READS`]: otherwise any local user, looping connect, read, close on
    /// the read-only socket, would pile up detached reads, and the daemon's memory,
    /// without end, each queued on the networks' lock ahead of root's commands.
    async fn detached_read<T, F>(
        &self,
        peer: &Peer,
        read: impl FnOnce(Arc<Manager>) -> F,
    ) -> Result<T, ApiError>
    where
        F: Future<Output = Result<T, manager::Error>> + Send + 'static,
        T: Send + 'static,
    {
        let permit = if may_change(peer, self.socket_gid) {
            None
        } else {
            let permit = Arc::clone(&self.detached_reads)
                .acquire_owned()
                .await
                .map_err(|_| ApiError::new(ErrorKind::Internal, "the daemon is stopping"))?;
            Some(permit)
        };
        self.change(move |manager| {
            let read = read(manager);
            async move {
                let result = read.await;
                drop(permit);
                result
            }
        })
        .await
    }
}

/// Most [`AppState::detached_read`]s running at once for clients that may not change
/// networks.
const MAX_DETACHED_READS: usize = 8;

/// The changes in progress, through the API or not (a SIGHUP's reload): each holds it
/// shared, and [`serve`] takes it exclusively before it returns, so the daemon never
/// exits halfway through a change.
#[derive(Clone, Debug, Default)]
pub struct Changes(Arc<RwLock<()>>);

impl Changes {
    /// Held while one change runs; waits while the daemon is stopping.
    pub async fn hold(&self) -> OwnedRwLockReadGuard<()> {
        Arc::clone(&self.0).read_owned().await
    }
}

/// Binds `socket` (mode 0660, replacing a stale socket file), calls `listening`, and
/// serves the API until `shutdown` completes. The path appears only once the socket
/// listens with its final mode (bound under a temporary name, then renamed), so a client
/// that finds it can connect.
pub async fn serve(
    manager: Arc<Manager>,
    socket: &Path,
    with_read_only_socket: bool,
    changes: Changes,
    listening: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // The read-only socket first: the main one appearing is what clients (and the
    // tests) take for the daemon being ready, so an earlier daemon's read-only socket
    // must be gone or replaced by then.
    let read_only_socket = crate::api::read_only_socket(socket);
    let read_only = if with_read_only_socket {
        Some(bind(&read_only_socket, 0o666)?)
    } else {
        // One an earlier daemon left would let every user in, and this one not serve it.
        // Only a socket: a file of that name is someone else's.
        let earlier = std::fs::symlink_metadata(&read_only_socket)
            .is_ok_and(|meta| meta.file_type().is_socket());
        if let Err(e) = earlier
            .then(|| std::fs::remove_file(&read_only_socket))
            .transpose()
        {
            tracing::warn!(socket = %read_only_socket.display(), "cannot remove the read-only socket of an earlier daemon: {e}")
        }
        None
    };
    let listener = bind(socket, 0o660)?;
    let socket_gid = std::fs::metadata(socket)
        .map_err(|source| Error::Socket {
            action: "inspecting",
            path: socket.to_owned(),
            source,
        })?
        .gid();
    match &read_only {
        Some(_) => {
            tracing::info!(socket = %socket.display(), read_only = %read_only_socket.display(), "listening")
        }
        None => tracing::info!(socket = %socket.display(), "listening"),
    }
    listening();

    let (stop_streams, stopping) = watch::channel(());
    let app = router(AppState {
        manager,
        socket_gid,
        changes: changes.clone(),
        stopping,
        detached_reads: Arc::new(Semaphore::new(MAX_DETACHED_READS)),
    });
    // Connections wait on this to shut down gracefully: it changes when dropped.
    let (stop_connections, connections_stopping) = watch::channel(());
    // Every connection holds a receiver: the sender is closed once all have ended.
    let (all_ended, connection_open) = watch::channel(());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let readers = Arc::new(ReaderConnections::default());
    let mut all_taken_logged: Option<Instant> = None;
    let mut user_full_logged: Option<Instant> = None;
    let mut accept_failed_logged: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (accepted, read_only) = tokio::select! {
            accepted = listener.accept() => (accepted, false),
            accepted = accept_if_any(read_only.as_ref()) => (accepted, true),
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let peer = Peer::of(&stream, read_only);
                // Those who may change networks are served beyond the limit: a crowd of
                // other clients must not lock the administrators out.
                // One reader's crowd (event streams it never reads) must not take every
                // slot from the other readers either.
                let slot = Arc::clone(&slots).try_acquire_owned().ok();
                let changer = may_change(&peer, socket_gid);
                let reader = (!changer).then(|| readers.take(peer.uid));
                // Why it is refused, and when that was last logged.
                let refusal = match (&slot, &reader) {
                    _ if changer => None,
                    (None, _) => Some((
                        format!("{MAX_CONNECTIONS} are open already"),
                        &mut all_taken_logged,
                    )),
                    (_, Some(None)) => Some((
                        format!("{MAX_CONNECTIONS_PER_READER} of this user's are open already"),
                        &mut user_full_logged,
                    )),
                    _ => None,
                };
                if let Some((refusal, logged)) = refusal {
                    if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                        tracing::warn!(uid = peer.uid, "refusing API connections: {refusal}");
                        *logged = Some(Instant::now());
                    }
                    continue;
                }
                serve_connection(
                    stream,
                    peer,
                    app.clone(),
                    (slot, reader.flatten()),
                    connections_stopping.clone(),
                    connection_open.clone(),
                );
            }
            Err(e) => {
                // Out of descriptors or memory: try again once some are freed.
                if accept_failed_logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                    tracing::warn!(error = %e, "cannot accept an API connection");
                    accept_failed_logged = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
    drop(listener);
    drop(read_only);
    drop(stop_streams);
    drop(stop_connections);
    drop(connection_open);
    // The graceful shutdown waits for every connection's response; a client that never
    // reads its answer must not keep the daemon from stopping until systemd kills it.
    if tokio::time::timeout(SHUTDOWN_GRACE, all_ended.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after the stop; closing them");
    }
    // Changes whose clients went away are still running.
    let _finished = changes.0.write().await;
    Ok(())
}

/// The next connection to `listener`; never, without one.
async fn accept_if_any(
    listener: Option<&UnixListener>,
) -> std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Binds `socket` under a staging name, gives it `mode`, and renames it into place
/// (replacing a stale socket file in the same step).
fn bind(socket: &Path, mode: u32) -> Result<UnixListener, Error> {
    let err = |action| {
        move |source| Error::Socket {
            action,
            path: socket.to_owned(),
            source,
        }
    };
    check_socket_path(socket)?;
    remove_stale_staging(socket).map_err(err("removing stale staging files of"))?;
    let staging = staging_path(socket);
    let listener = UnixListener::bind(&staging).map_err(err("binding"))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(err("setting the mode of"))
        .and_then(|()| std::fs::rename(&staging, socket).map_err(err("putting in place")));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    Ok(listener)
}

/// Whether a directory with `meta` keeps other users from replacing the socket, or its
/// staging name, between its bind, chmod and rename (a symlink there would take the
/// mode elsewhere), and from putting a socket of their own in its place afterwards.
fn is_safe_socket_directory(meta: &std::fs::Metadata, euid: u32) -> bool {
    let owner_trusted = meta.uid() == 0 || meta.uid() == euid;
    let writable_by_others = meta.mode() & 0o022 != 0;
    let sticky = meta.mode() & 0o1000 != 0;
    owner_trusted && (!writable_by_others || sticky)
}

/// Serves one connection in a task of its own until the client closes it, it breaks a
/// timeout, or the daemon stops (then after its response in progress).
fn serve_connection(
    stream: UnixStream,
    peer: Peer,
    app: Router,
    held: (Option<OwnedSemaphorePermit>, Option<ReaderSlot>),
    mut stopping: watch::Receiver<()>,
    open: watch::Receiver<()>,
) {
    let write_deadline = peer.write_deadline.clone();
    let service = app.map_request(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(peer.clone()));
        request
    });
    tokio::spawn(async move {
        let mut http = hyper::server::conn::http1::Builder::new();
        // The timer also ends a keep-alive connection idle that long between requests.
        http.timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_header_size(MAX_HEADER_BYTES)
            .max_buf_size(MAX_READ_BUFFER);
        let connection = http
            .serve_connection(
                TokioIo::new(WriteDeadline::new(stream, WRITE_TIMEOUT, write_deadline)),
                TowerToHyperService::new(service),
            )
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        let served = tokio::select! {
            served = connection.as_mut() => served,
            _ = stopping.changed() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "API connection ended");
        }
        drop(held);
        drop(open);
    });
}

/// Most API connections served at once (event streams hold theirs) to clients that may
/// not change networks; more are closed at once.
const MAX_CONNECTIONS: usize = 512;

/// Most of those of one user.
const MAX_CONNECTIONS_PER_READER: usize = 64;

/// The open connections of clients that may only read, by user.
#[derive(Debug, Default)]
struct ReaderConnections(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

impl ReaderConnections {
    /// A slot for one more connection of user `uid`, unless they hold all theirs.
    fn take(self: &Arc<Self>, uid: u32) -> Option<ReaderSlot> {
        let mut open = crate::service::lock(&self.0);
        let count = open.entry(uid).or_default();
        if *count >= MAX_CONNECTIONS_PER_READER {
            return None;
        }
        *count += 1;
        Some(ReaderSlot {
            connections: Arc::clone(self),
            uid,
        })
    }
}

/// A reader's connection, counted until it ends.
#[derive(Debug)]
struct ReaderSlot {
    connections: Arc<ReaderConnections>,
    uid: u32,
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let mut open = crate::service::lock(&self.connections.0);
        if let Some(count) = open.get_mut(&self.uid) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.uid);
            }
        }
    }
}

/// How often refused connections are logged, at most.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How long a client has to send a request's headers, and a keep-alive connection may
/// sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Most a request's head may take (API requests send a few hundred bytes), and most of
/// a request a connection buffers (bodies are read through it). hyper's default of
/// about 400 KiB for both let 512 clients that never end their headers hold 200 MB.
const MAX_HEADER_BYTES: usize = 16 * 1024;
const MAX_READ_BUFFER: usize = 64 * 1024;

/// How long a client has to send a request's body once its headers arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may read nothing of its answer before its connection is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after a failed `accept` (out of descriptors) before the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a stopping daemon waits for the responses of open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the socket is bound before it is renamed to `socket`: a hidden name in the same
/// directory, unique to this process.
fn staging_path(socket: &Path) -> PathBuf {
    socket.with_file_name(format!("{}{}", staging_prefix(socket), std::process::id()))
}

/// `.NAME.`, what every staging name of `socket` starts with before the pid.
fn staging_prefix(socket: &Path) -> String {
    let name = socket
        .file_name()
        .map_or_else(|| "kvnetd.sock".into(), |name| name.to_string_lossy());
    format!(".{name}.")
}

/// Makes `socket`'s directory if need be, and refuses a path the daemon must not bind:
/// too long for a socket address, in a directory other users may replace files in, or
/// where a file that is not a socket is (a stale socket is replaced). The daemon asks before it starts any
/// network, and [`bind`] again.
pub fn check_socket_path(socket: &Path) -> Result<(), Error> {
    let err = |action| {
        move |source| Error::Socket {
            action,
            path: socket.to_owned(),
            source,
        }
    };
    // A path too long for a socket address (the staging name is longer).
    for path in [socket, &staging_path(socket)] {
        nix::sys::socket::UnixAddr::new(path)
            .map_err(std::io::Error::from)
            .map_err(err("binding"))?;
    }
    let dir = socket_directory(socket);
    std::fs::create_dir_all(dir).map_err(err("creating the directory of"))?;
    let dir_meta = std::fs::metadata(dir).map_err(err("inspecting the directory of"))?;
    if !is_safe_socket_directory(&dir_meta, nix::unistd::geteuid().as_raw()) {
        return Err(Error::UnsafeDirectory {
            socket: socket.to_owned(),
            dir: dir.to_owned(),
        });
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if !meta.file_type().is_socket() && !meta.file_type().is_symlink() => {
            Err(Error::NotASocket(socket.to_owned()))
        }
        _ => Ok(()),
    }
}

/// The directory `socket` is in (`.` for a bare name).
fn socket_directory(socket: &Path) -> &Path {
    match socket.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Removes the staging files of daemons that died between binding and renaming (their
/// pid is gone), and this process's own.
fn remove_stale_staging(socket: &Path) -> std::io::Result<()> {
    let dir = socket_directory(socket);
    let prefix = staging_prefix(socket);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = (name.to_str())
            .and_then(|name| name.strip_prefix(&prefix))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                tracing::info!(path = %entry.path().display(), "removed a stale socket staging file")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/networks", get(list).post(define))
        .route("/v1/networks/{network}", get(info).delete(undefine))
        .route("/v1/networks/{network}/start", post(start))
        .route("/v1/networks/{network}/stop", post(stop))
        .route("/v1/networks/{network}/autostart", put(autostart))
        .route("/v1/networks/{network}/xml", get(dumpxml))
        .route("/v1/networks/{network}/leases", get(leases))
        .route("/v1/networks/{network}/update", post(update))
        .route(
            "/v1/networks/{network}/ports",
            get(list_ports).post(create_port),
        )
        .route("/v1/networks/{network}/ports/{port}", delete(delete_port))
        .route("/v1/networks/{network}/ports/{port}/xml", get(port_xml))
        .route("/v1/events", get(events))
        .layer(DefaultBodyLimit::max(super::MAX_REQUEST_BYTES))
        .layer(middleware::from_fn(read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn(errors_as_json))
        .with_state(state)
}

/// Reads a request's whole body before its handler runs, so that a client that stops
/// halfway through sending it holds its connection for [`BODY_TIMEOUT`] only, and a
/// body larger than the limit is refused as soon as that is known (before any of it is
/// read when its length is declared). Reads, open to anyone who can reach the socket,
/// take no body at all.
async fn read_body(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let takes_body = !matches!(parts.method, Method::GET | Method::HEAD | Method::DELETE);
    let limit = if takes_body {
        super::MAX_REQUEST_BYTES
    } else {
        0
    };
    let too_large = || {
        if takes_body {
            ApiError::new(
                ErrorKind::InvalidArgument,
                format!("the request body is larger than {limit} bytes"),
            )
            .into_response_with(StatusCode::PAYLOAD_TOO_LARGE)
        } else {
            ApiError::new(
                ErrorKind::InvalidArgument,
                format!("a {} request takes no body", parts.method),
            )
            .into_response_with(StatusCode::BAD_REQUEST)
        }
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    let read = async {
        let mut chunks = body.into_data_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if bytes.len().saturating_add(chunk.len()) > limit {
                return Ok(None);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok::<_, axum::Error>(Some(bytes))
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(Some(bytes))) => bytes,
        Ok(Ok(None)) => return too_large(),
        Ok(Err(e)) => {
            return ApiError::new(
                ErrorKind::InvalidArgument,
                format!("cannot read the request body: {e}"),
            )
            .into_response_with(StatusCode::BAD_REQUEST);
        }
        Err(_) => {
            return ApiError::new(
                ErrorKind::InvalidArgument,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            )
            .into_response_with(StatusCode::REQUEST_TIMEOUT);
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Gives every error the API's `{kind, message}` body: axum's own (an unknown path or
/// method, a body that is not the JSON a handler takes) come as plain text or empty.
/// What hyper answers by itself (a request head it cannot parse) never gets here.
async fn errors_as_json(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if is_json {
        log_refusal(&method, &path, &response);
        return response;
    }
    let (mut head, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let (kind, message) = match status {
        StatusCode::NOT_FOUND => (ErrorKind::NotFound, format!("no API path {path}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorKind::Unsupported,
            format!("{method} is not allowed on {path}"),
        ),
        _ if text.is_empty() => (
            ErrorKind::Internal,
            status.canonical_reason().unwrap_or("error").to_owned(),
        ),
        _ if status.is_client_error() => (ErrorKind::InvalidArgument, text),
        _ => (ErrorKind::Internal, text),
    };
    let mut answer = ApiError::new(kind, message).into_response_with(status);
    // The rest of the head stays: a 405's `Allow`, say.
    head.headers.remove(header::CONTENT_TYPE);
    head.headers.remove(header::CONTENT_LENGTH);
    answer.headers_mut().extend(head.headers);
    log_refusal(&method, &path, &answer);
    answer
}

/// Logs a request the daemon refused (as libvirtd logs a failed call), with its
/// `{kind, message}` (the client has the same), for a look back after the fact. The
/// path and message are written escaped: they quote what the client sent, which must
/// not make lines of its own in the log.
fn log_refusal(method: &Method, path: &str, response: &Response) {
    let Some(unlogged) = crate::service::lock(&REFUSAL_LOG).take(crate::service::unix_now()) else {
        return;
    };
    if unlogged > 0 {
        tracing::info!(
            unlogged,
            "requests refused and not logged (over {REFUSALS_LOGGED_PER_SEC} a second)"
        );
    }
    let status = response.status().as_u16();
    match response.extensions().get::<Refused>() {
        Some(Refused(error)) => {
            tracing::info!(%method, ?path, status, kind = %error.kind, reason = ?error.message, "request refused")
        }
        None => tracing::info!(%method, ?path, status, "request refused"),
    }
}

/// Refused requests logged a second, at most: a client looping on bad requests (the
/// read-only socket is every user's) must not flood the log, where journald's rate
/// limit would then drop the daemon's other lines. Those past it are counted.
const REFUSALS_LOGGED_PER_SEC: u32 = 20;

static REFUSAL_LOG: std::sync::Mutex<LogBudget> =
    std::sync::Mutex::new(LogBudget::per_second(REFUSALS_LOGGED_PER_SEC));

/// Reads are open to anyone who can reach the socket; changes need root, the daemon's
/// own user, or membership of the socket's group.
async fn authorize(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    tracing::debug!(method = %request.method(), path = %request.uri().path(), uid = peer.uid, "request");
    // HEAD is a GET without the body (axum answers it with the GET route).
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !reads && peer.read_only {
        return Err(ApiError::new(
            ErrorKind::OperationForbidden,
            "read only access prevents changes: connected through the read-only socket",
        ));
    }
    if !reads && !may_change(&peer, state.socket_gid) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "uid {} may not change networks: needs root or group id {}",
                peer.uid, state.socket_gid
            ),
        ));
    }
    Ok(next.run(request).await)
}

fn may_change(peer: &Peer, socket_gid: u32) -> bool {
    !peer.read_only
        && (peer.uid == 0
            || peer.uid == nix::unistd::geteuid().as_raw()
            || peer.gid == socket_gid
            || peer.groups.contains(&socket_gid))
}

#[derive(Debug, Deserialize)]
struct DefineQuery {
    #[serde(default)]
    transient: bool,
}

#[derive(Debug, Deserialize)]
struct XmlQuery {
    #[serde(default)]
    inactive: bool,
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// Only this network's events (name or UUID; it must exist now, and is followed by
    /// its UUID, as libvirt does).
    network: Option<String>,
}

async fn version() -> Json<DaemonVersion> {
    Json(DaemonVersion {
        daemon: "kvnetd".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

async fn list(State(state): State<AppState>) -> Json<Vec<NetworkSummary>> {
    Json(state.manager.list().await)
}

async fn define(
    State(state): State<AppState>,
    Query(query): Query<DefineQuery>,
    Json(request): Json<XmlRequest>,
) -> Result<Json<NetworkSummary>, ApiError> {
    state
        .change(|manager| async move {
            if query.transient {
                manager.create(&request.xml).await
            } else {
                manager.define(&request.xml).await
            }
        })
        .await
        .map(Json)
}

async fn info(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<NetworkSummary>, ApiError> {
    Ok(Json(state.manager.get(&network).await?))
}

async fn undefine(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<NetworkSummary>, ApiError> {
    state
        .change(|manager| async move { manager.undefine(&network).await })
        .await
        .map(Json)
}

async fn start(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<NetworkSummary>, ApiError> {
    state
        .change(|manager| async move { manager.start(&network).await })
        .await
        .map(Json)
}

async fn stop(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<NetworkSummary>, ApiError> {
    state
        .change(|manager| async move { manager.stop(&network).await })
        .await
        .map(Json)
}

async fn autostart(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
    Json(request): Json<AutostartRequest>,
) -> Result<Json<NetworkSummary>, ApiError> {
    state
        .change(|manager| async move { manager.set_autostart(&network, request.enabled).await })
        .await
        .map(Json)
}

async fn dumpxml(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(network): UrlPath<String>,
    Query(query): Query<XmlQuery>,
) -> Result<Json<XmlResponse>, ApiError> {
    // Reading the ports may end those whose guests went.
    let xml = state
        .detached_read(&peer, |manager| async move {
            manager.xml(&network, query.inactive).await
        })
        .await?;
    Ok(Json(XmlResponse { xml }))
}

async fn leases(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    Ok(Json(state.manager.leases(&network).await?))
}

async fn update(
    State(state): State<AppState>,
    UrlPath(network): UrlPath<String>,
    Json(request): Json<UpdateRequest>,
) -> Result<Json<UpdateResponse>, ApiError> {
    let parse_error = |e: xml::Error| ApiError::from(manager::Error::from(e));
    let command = request.command.parse().map_err(parse_error)?;
    let section = request.section.parse().map_err(parse_error)?;
    state
        .change(|manager| async move {
            let update = xml::Update {
                command,
                section,
                parent_index: request.parent_index,
                xml: &request.xml,
            };
            manager
                .update(&network, &update, request.live, request.config)
                .await
        })
        .await
        .map(Json)
}

async fn list_ports(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(network): UrlPath<String>,
) -> Result<Json<Vec<PortSummary>>, ApiError> {
    let ports = state
        .detached_read(&peer, |manager| async move {
            manager.list_ports(&network).await
        })
        .await?;
    Ok(Json(ports))
}

async fn port_xml(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath((network, port)): UrlPath<(String, String)>,
) -> Result<Json<XmlResponse>, ApiError> {
    let xml = state
        .detached_read(&peer, |manager| async move {
            manager.port_xml(&network, &port).await
        })
        .await?;
    Ok(Json(XmlResponse { xml }))
}

async fn delete_port(
    State(state): State<AppState>,
    UrlPath((network, port)): UrlPath<(String, String)>,
) -> Result<Json<PortSummary>, ApiError> {
    state
        .change(|manager| async move { manager.delete_port(&network, &port).await })
        .await
        .map(Json)
}

/// A request that asks for its port's tap (`Connection: upgrade`, `Upgrade: kvnet-tap`):
/// the upgrade that hyper completes once the `101` answer is written.
struct TapUpgrade(Option<hyper::upgrade::OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for TapUpgrade {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<TapUpgrade, ApiError> {
        if !has_token(&parts.headers, header::UPGRADE, TAP_UPGRADE) {
            return Ok(TapUpgrade(None));
        }
        // Without `Connection: upgrade` hyper answers the request as an ordinary one, and
        // the caller would get a persistent tap it never asked for.
        let upgrade = has_token(&parts.headers, header::CONNECTION, "upgrade")
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        match upgrade {
            Some(upgrade) => Ok(TapUpgrade(Some(upgrade))),
            None => Err(ApiError::new(
                ErrorKind::InvalidArgument,
                format!(
                    "'Upgrade: {TAP_UPGRADE}' needs 'Connection: upgrade' on an HTTP/1.1 request"
                ),
            )),
        }
    }
}

/// Whether a comma-separated header `name` lists `token`.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|item| item.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Creates a port (`net-port-create`, or kvnet-vmm plugging a NIC in). Asked as an upgrade
/// to [`TAP_UPGRADE`], it answers `101`, then sends the [`PortSummary`] with the tap's
/// descriptor attached and closes; the port then lasts as long as the caller keeps the tap.
/// Otherwise the tap is persistent and the answer is the [`PortSummary`].
async fn create_port(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    UrlPath(network): UrlPath<String>,
    TapUpgrade(upgrade): TapUpgrade,
    Json(request): Json<XmlRequest>,
) -> Result<Response, ApiError> {
    // The tap is the caller's: only it (and CAP_NET_ADMIN) may attach to it.
    let owner = peer.uid;
    let connection = match (&upgrade, peer.connection) {
        (None, _) => None,
        (Some(_), Some(connection)) => Some(connection),
        (Some(_), None) => {
            return Err(ApiError::new(
                ErrorKind::Internal,
                "cannot pass descriptors on this connection",
            ));
        }
    };
    let network_name = network.clone();
    let on = connection.clone();
    let port = state
        .change(|manager| async move {
            manager
                .create_port(
                    &network,
                    &request.xml,
                    owner,
                    on.as_deref().map(AsFd::as_fd),
                )
                .await
        })
        .await?;
    let (Some(upgrade), Some(connection), Some(tap)) = (upgrade, connection, port.tap) else {
        return Ok(Json(port.summary).into_response());
    };
    let payload = serde_json::to_vec(&port.summary)
        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
    let uuid = port.summary.uuid;
    // A daemon that stops waits for the tap to go out, as for any change.
    let in_progress = state.changes.hold().await;
    let cleanup = state.clone();
    tokio::spawn(async move {
        // The upgrade completes once the 101 answer is written; the tap follows it.
        let hand_over = async {
            let _upgraded = upgrade.await.map_err(std::io::Error::other)?;
            send_tap(&connection, &payload, tap).await
        };
        let sent = tokio::time::timeout(TAP_HAND_OVER_TIMEOUT, hand_over)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("not done within {TAP_HAND_OVER_TIMEOUT:?}"),
                ))
            });
        if let Err(e) = sent {
            tracing::warn!(network = %network_name, port = %uuid, "handing over the tap failed: {e}");
            // A tap closes with this task, and its port ends with it; a macvtap would stay
            // as long as its holder runs. The port goes either way, before the daemon may
            // stop (this task still counts as a change in progress).
            match cleanup
                .manager
                .delete_port(&network_name, &uuid.to_string())
                .await
            {
                Ok(_) | Err(manager::Error::PortNotFound(_)) => {}
                Err(e) => {
                    tracing::warn!(network = %network_name, port = %uuid, "deleting the port not handed over: {}", manager::error_chain(&e));
                }
            }
        }
        drop(in_progress);
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, TAP_UPGRADE),
        ],
    )
        .into_response())
}

/// How long a tap's hand-over may take once its port exists: the answer and one small
/// message, so only a client that stopped reading takes this long.
const TAP_HAND_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends `payload` with `tap` attached on the connection, waiting while its buffer is full,
/// then ends the stream: the client sees the end even while other copies of the socket
/// are still open.
async fn send_tap(connection: &OwnedFd, payload: &[u8], tap: OwnedFd) -> std::io::Result<()> {
    let socket = tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(
        connection.try_clone()?,
    ))?;
    let mut sent = 0;
    while sent < payload.len() {
        // The descriptor rides on the first byte that goes out.
        let fds = if sent == 0 {
            vec![tap.as_fd()]
        } else {
            Vec::new()
        };
        sent += socket
            .async_io(Interest::WRITABLE, || {
                fdpass::send_with_fds(socket.as_fd(), &payload[sent..], &fds)
            })
            .await?;
    }
    socket.into_std()?.shutdown(std::net::Shutdown::Write)
}

/// Streams lifecycle events, one JSON object per line ([`EventRecord`]), from the moment
/// of this request on: the subscription exists before the answer's header is sent, so a
/// client that has the header misses nothing after it.
async fn events(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let subscription = state.manager.events().subscribe();
    let only = match &query.network {
        Some(key) => Some(state.manager.get(key).await?.uuid),
        None => None,
    };
    // A subscriber that reads slowly is told what it missed, not cut off. Granted only
    // once the stream is sure to start: the stream holds the connection to its end,
    // where a refused request's connection would go on, exempt, with other requests.
    peer.write_deadline.grant();
    tracing::debug!(
        network = ?query.network,
        subscribers = state.manager.events().subscribers(),
        "event subscriber joined"
    );
    let lines = event_lines(subscription, only, state.stopping.clone());
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// The lines of one event stream: every event of the network with UUID `only` (of all,
/// without it), a [`EventRecord::Missed`] line where the subscriber fell behind, and the
/// end when `stopping` changes. hyper pulls the next line only once the previous one is
/// written, so a client that reads slowly holds up only its own subscription, which then
/// drops the oldest events instead of slowing the manager.
fn event_lines(
    subscription: Subscription,
    only: Option<uuid::Uuid>,
    stopping: watch::Receiver<()>,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    let state = (subscription, stopping, Subscriber);
    futures::stream::unfold(
        state,
        move |(mut subscription, mut stopping, subscriber)| async move {
            loop {
                let received = tokio::select! {
                    received = subscription.recv() => received,
                    _ = stopping.changed() => return None,
                };
                let record = match received {
                    Received::Event(event) if only.is_none_or(|uuid| uuid == event.uuid) => {
                        EventRecord::Lifecycle(lifecycle_event(event))
                    }
                    Received::Event(_) => continue,
                    Received::Missed(count) => {
                        tracing::warn!(
                            count,
                            "an event subscriber reads too slowly: dropped the oldest events it had not read"
                        );
                        EventRecord::Missed { count }
                    }
                    Received::Closed => return None,
                };
                let line = match serde_json::to_vec(&record) {
                    Ok(mut line) => {
                        line.push(b'\n');
                        line
                    }
                    Err(e) => {
                        tracing::warn!("cannot encode an event: {e}");
                        continue;
                    }
                };
                return Some((Ok(Bytes::from(line)), (subscription, stopping, subscriber)));
            }
        },
    )
}

/// Lives as long as one event stream: hyper drops the stream when its client goes away.
#[derive(Debug)]
struct Subscriber;

impl Drop for Subscriber {
    fn drop(&mut self) {
        tracing::debug!("event subscriber left");
    }
}

fn lifecycle_event(event: events::Event) -> LifecycleEvent {
    LifecycleEvent {
        network: event.network,
        uuid: event.uuid,
        event: match event.lifecycle {
            Lifecycle::Defined => LifecycleKind::Defined,
            Lifecycle::Undefined => LifecycleKind::Undefined,
            Lifecycle::Started => LifecycleKind::Started,
            Lifecycle::Stopped => LifecycleKind::Stopped,
        },
        time: chrono::DateTime::<chrono::Utc>::from(event.time)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a directory no other user can replace files in holds the socket.
    #[test]
    fn the_socket_directory_must_keep_other_users_out() {
        let root = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::geteuid().as_raw();
        let safe = |mode: u32| {
            std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(mode))
                .expect("chmod");
            let meta = std::fs::metadata(root.path()).expect("stat");
            is_safe_socket_directory(&meta, me)
        };
        assert!(safe(0o755));
        assert!(safe(0o700));
        assert!(safe(0o1777), "sticky, as /tmp");
        assert!(!safe(0o777));
        assert!(!safe(0o775));
        assert!(safe(0o755));
        let meta = std::fs::metadata(root.path()).expect("stat");
        if me == 0 {
            // Owned by root, whose directories every daemon trusts.
            assert!(is_safe_socket_directory(&meta, 4242));
        } else {
            assert!(!is_safe_socket_directory(&meta, me + 1));
        }
    }

    /// A stale socket is replaced; a file of another kind is refused and kept.
    #[tokio::test]
    async fn only_a_socket_is_replaced_at_the_socket_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("kvnetd.sock");
        drop(bind(&socket, 0o660).expect("first bind"));
        drop(bind(&socket, 0o660).expect("a stale socket is replaced"));
        std::fs::remove_file(&socket).expect("remove");
        std::fs::write(&socket, "notes").expect("a file");
        let refused = bind(&socket, 0o660).expect_err("a file is no socket");
        assert!(matches!(refused, Error::NotASocket(_)), "{refused}");
        assert_eq!(std::fs::read_to_string(&socket).expect("kept"), "notes");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let refused = bind(&dir.path().join("other.sock"), 0o660).expect_err("unsafe dir");
        assert!(
            refused
                .to_string()
                .contains("other users may replace files in"),
            "{refused}"
        );
    }

    #[test]
    fn changes_need_root_owner_or_socket_group() {
        let me = nix::unistd::geteuid().as_raw();
        let stranger = if me == 4242 { 4243 } else { 4242 };
        let peer = |uid, gid, groups: &[u32]| Peer {
            uid,
            gid,
            groups: groups.into(),
            read_only: false,
            connection: None,
            write_deadline: Exemption::default(),
        };
        assert!(may_change(&peer(0, 0, &[]), 100));
        assert!(may_change(&peer(me, 7, &[]), 100));
        assert!(may_change(&peer(stranger, 100, &[]), 100));
        assert!(may_change(&peer(stranger, 7, &[3, 100]), 100));
        assert!(!may_change(&peer(stranger, 7, &[3, 101]), 100));
        // Through the read-only socket, not even root.
        let root_read_only = Peer {
            read_only: true,
            ..peer(0, 0, &[])
        };
        assert!(!may_change(&root_read_only, 100));
    }

    use futures::StreamExt;

    async fn next_line(
        lines: &mut (impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Unpin),
    ) -> Option<serde_json::Value> {
        let line = lines.next().await?.expect("infallible");
        assert_eq!(line.last(), Some(&b'\n'), "{line:?}");
        Some(serde_json::from_slice(&line).expect("one JSON object per line"))
    }

    #[tokio::test]
    async fn event_lines_are_json_records_of_the_chosen_network_until_the_daemon_stops() {
        let events = events::Events::new();
        let (stop, stopping) = watch::channel(());
        let ours = uuid::Uuid::from_u128(1);
        let mut lines = Box::pin(event_lines(events.subscribe(), Some(ours), stopping));
        events.publish("other", uuid::Uuid::from_u128(2), Lifecycle::Started);
        events.publish("ours", ours, Lifecycle::Defined);
        let line = next_line(&mut lines).await.expect("a line");
        assert_eq!(line["type"], "lifecycle");
        assert_eq!(line["network"], "ours");
        assert_eq!(line["uuid"], ours.to_string());
        assert_eq!(line["event"], "defined");
        let time = line["time"].as_str().expect("time");
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
            "{time}"
        );
        drop(stop);
        assert_eq!(next_line(&mut lines).await, None);
        drop(lines);
        assert_eq!(
            events.subscribers(),
            0,
            "the stream's end frees its subscription"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_gets_a_missed_record_and_then_the_events_still_kept() {
        let events = events::Events::with_capacity(2);
        let (_stop, stopping) = watch::channel(());
        let mut lines = Box::pin(event_lines(events.subscribe(), None, stopping));
        for n in 0..5 {
            events.publish(
                &format!("n{n}"),
                uuid::Uuid::from_u128(n),
                Lifecycle::Started,
            );
        }
        let line = next_line(&mut lines).await.expect("a line");
        assert_eq!(line, serde_json::json!({"type": "missed", "count": 3}));
        for n in 3..5 {
            let line = next_line(&mut lines).await.expect("a line");
            assert_eq!(line["network"], format!("n{n}"));
            assert_eq!(line["event"], "started");
        }
    }
}
