//! The per-network server task: UDP sockets and TCP listeners on port 53 of each bridge
//! address, feeding [`Resolver::answer`], and the forwarding of other queries upstream.
//!
//! UDP queries are read and answered in batches (`recvmmsg`/`sendmmsg`, up to
//! `BATCH` datagrams per system call) through buffers owned by the runtime's worker
//! thread, so a thousand idle networks cost no buffers and a busy one costs two
//! system calls per batch.
//!
//! UDP queries for other names are forwarded by a small task each (`forward.rs` says how
//! the servers are asked), with a fresh random ID from a socket of its own bound to port
//! 0, so the kernel picks a random source port per query (RFC 5452 9.2): a forged reply
//! must guess port and ID. A query asking what a forward in flight asks joins it instead
//! (`in_flight.rs`, which also bounds them): the answer goes to each asker with its own
//! ID, letter case and EDNS, from the socket its query came in on. A TCP client gets a
//! small task per connection (at most [`MAX_TCP_CLIENTS`] at once, and
//! [`MAX_TCP_PER_CLIENT`] per client address, whose queries are forwarded
//! [`MAX_TCP_SERVED_PER_CLIENT`] at once while the others wait their turn) that
//! forwards over TCP, so large upstream answers get through whole.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockProtocol,
    SockType, SockaddrStorage, bind, listen, recvmmsg, sendmmsg, sendto, setsockopt, socket,
    sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use super::cache::Key;
use super::forward::{Forwarded, Health, forward_tcp, forward_udp};
use super::in_flight::{Admission, Asker, InFlight};
use super::query_log::{Logged, QueryLog, Source};
use super::resolver::{
    Answered, Outcome, Resolver, Transport, Unforwarded, clamp_edns_payload, unforwarded_reply,
};
use super::{DNS_PORT, DnsConfig, Error, LeaseSource};
use crate::service::{SOCKET_ERROR_PAUSE, ServiceTask};

/// Most TCP connections held at once, served or waiting their turn; more are closed on
/// accept.
pub const MAX_TCP_CLIENTS: usize = 128;
/// Most TCP connections one guest (source address) may hold at once, so that one guest
/// cannot take every slot for the others; more are closed on accept. Loose, as RFC 7766
/// 6.2.2 asks: glibc's `use-vc` opens a connection per lookup, and a guest may be a
/// resolver or a NAT for many.
pub const MAX_TCP_PER_CLIENT: usize = 32;
/// Most of one guest's TCP queries forwarded at once; the others wait their turn (up to
/// [`TCP_IDLE`]). A connection holds a turn only while it forwards a query, so idle ones
/// keep no query waiting, and local answers never wait.
pub const MAX_TCP_SERVED_PER_CLIENT: usize = 8;
/// How often a network's expired cached answers are let go.
const CACHE_PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a network's failing TCP accepts are logged, at most.
const ACCEPT_FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// A TCP client idle this long, or that leaves an answer unread this long, is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP datagram read (EDNS clients may send up to this much).
pub(super) const RECV_BUFFER: usize = 4096;
/// Most datagrams read or sent by one system call.
const BATCH: usize = 32;
/// Batches read from one socket before the task looks at its other sockets.
const BATCHES_PER_TURN: usize = 8;

/// A running DNS server of one network. Dropping it, or [`DnsServer::stop`], ends it.
pub struct DnsServer {
    /// The serving task answers with the latest resolver sent here (net-update).
    resolver: watch::Sender<Arc<Resolver>>,
    task: ServiceTask,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("network", &self.task.network())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Binds UDP and TCP port 53 on each of `config.listen` and spawns the serving task
    /// on the current tokio runtime. `leases` supplies the hostnames of DHCP leases.
    pub fn start(config: DnsConfig, leases: Option<LeaseSource>) -> Result<DnsServer, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            network: config.network.clone(),
        })?;
        let resolver = Arc::new(Resolver::new(&config, leases)?);
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        {
            let _enter = runtime.enter();
            for &address in &config.listen {
                let network = &config.network;
                let fail = |protocol, step| {
                    move |source| Error::Socket {
                        network: network.clone(),
                        address,
                        protocol,
                        step,
                        source,
                    }
                };
                let interface = config.interface.as_deref();
                let socket = open_socket(address, interface, SockType::Datagram)
                    .map_err(fail("udp", "bind"))?;
                udp.push(
                    UdpSocket::from_std(socket.into())
                        .map_err(fail("udp", "register with the runtime"))?,
                );
                let socket = open_socket(address, interface, SockType::Stream)
                    .map_err(fail("tcp", "listen"))?;
                tcp.push(
                    TcpListener::from_std(socket.into())
                        .map_err(fail("tcp", "register with the runtime"))?,
                );
            }
        }
        let (resolver, resolvers) = watch::channel(resolver);
        tracing::info!(network = %config.network, listen = ?config.listen, "DNS server started");
        let task = ServiceTask::spawn(&runtime, config.network, "DNS server", |stop| {
            serve(resolvers, config.clients, udp, tcp, stop)
        });
        Ok(DnsServer { resolver, task })
    }

    /// Serves `config`'s names from now on, without rebinding the sockets or dropping
    /// forwarded queries in flight (net-update). The listening addresses stay those
    /// the server started with. An invalid config changes nothing.
    pub fn update(&self, config: &DnsConfig, leases: Option<LeaseSource>) -> Result<(), Error> {
        self.replace(Resolver::new(config, leases)?);
        Ok(())
    }

    /// Answers with `resolver` from now on (see [`DnsServer::update`]); for callers that
    /// build the resolver before committing to a change.
    pub fn replace(&self, mut resolver: Resolver) {
        resolver.continue_query_log_of(&self.resolver.borrow());
        self.resolver.send_replace(Arc::new(resolver));
        tracing::info!(network = %self.task.network(), "DNS records updated");
    }

    /// Stops the task; TCP connections in progress end with it.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}

/// A socket bound to `address`:53 (and listening, for TCP), seeing only what arrives on
/// `interface` when one is given. `SO_REUSEADDR` lets a restarted daemon listen again
/// while old connections linger in TIME_WAIT; `IP_FREEBIND` lets it bind an IPv6
/// address still in duplicate address detection.
fn open_socket(
    address: IpAddr,
    interface: Option<&str>,
    kind: SockType,
) -> Result<std::os::fd::OwnedFd, std::io::Error> {
    let family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let protocol = match kind {
        SockType::Stream => SockProtocol::Tcp,
        _ => SockProtocol::Udp,
    };
    let fd = socket(
        family,
        kind,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        protocol,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if let Some(interface) = interface {
        setsockopt(
            &fd,
            sockopt::BindToDevice,
            &std::ffi::OsString::from(interface),
        )?;
    }
    if address.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    let addr = SockaddrStorage::from(SocketAddr::new(address, DNS_PORT));
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    if kind == SockType::Stream {
        listen(&fd, Backlog::new(128)?)?;
    }
    Ok(fd)
}

/// What woke the task.
enum Event {
    /// A listening UDP socket has datagrams.
    Queries(usize),
    Accept(TcpStream),
    /// A TCP listener could not accept (out of descriptors, say).
    AcceptFailed(std::io::Error),
    /// A UDP socket failed.
    Failed(std::io::Error),
}

/// How a forward over UDP ends: with its first asker (and its query's log handle, with
/// `log-queries`) and what became of it.
type ForwardEnd = (Asker, Option<Logged>, Forwarded);

/// The serving task's state.
struct Serve {
    resolver: Arc<Resolver>,
    /// [`DnsConfig::clients`].
    clients: Vec<ipnet::IpNet>,
    health: Arc<Health>,
    udp: Vec<UdpSocket>,
    /// The address family of each of `udp`: 0 for IPv4, 1 for IPv6.
    udp_family: Vec<usize>,
    /// The UDP queries being forwarded, one task each.
    forwards: JoinSet<ForwardEnd>,
    /// Who waits for each of `forwards`.
    in_flight: InFlight<tokio::task::Id>,
    /// Where [`next_event`] starts looking among the listeners.
    next_listener: usize,
}

async fn serve(
    mut resolvers: watch::Receiver<Arc<Resolver>>,
    clients_allowed: Vec<ipnet::IpNet>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Owned here, so the connections end with the task. Each connection's client is
    // known by its task, so that it is forgotten however the task ends.
    let mut connections = JoinSet::new();
    let mut clients = TcpClients::default();
    let mut state = Serve {
        resolver: Arc::clone(&resolvers.borrow_and_update()),
        clients: clients_allowed,
        health: Arc::default(),
        udp_family: udp
            .iter()
            .map(|socket| {
                socket
                    .local_addr()
                    .map_or(0, |addr| usize::from(addr.is_ipv6()))
            })
            .collect(),
        udp,
        forwards: JoinSet::new(),
        in_flight: InFlight::default(),
        next_listener: 0,
    };
    // Expired answers go now and then, also while the network is quiet.
    let mut purge = tokio::time::interval(CACHE_PURGE_INTERVAL);
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a failed accept, TCP waits a moment while UDP goes on being served.
    let mut accepting_again: Option<tokio::time::Instant> = None;
    let mut accept_failure_logged: Option<tokio::time::Instant> = None;
    loop {
        let listeners: &[TcpListener] = if accepting_again.is_some() { &[] } else { &tcp };
        let event = tokio::select! {
            _ = &mut shutdown => break,
            () = tokio::time::sleep_until(accepting_again.unwrap_or_else(tokio::time::Instant::now)),
                if accepting_again.is_some() =>
            {
                accepting_again = None;
                continue;
            }
            _ = purge.tick() => {
                state.resolver.purge_expired_answers();
                continue;
            }
            Ok(()) = resolvers.changed() => {
                state.resolver = Arc::clone(&resolvers.borrow_and_update());
                tracing::debug!(network = %state.resolver.network(), "DNS records replaced");
                continue;
            }
            Some(ended) = connections.join_next_with_id(), if !connections.is_empty() => {
                clients.ended(ended);
                continue;
            }
            Some(done) = state.forwards.join_next_with_id(), if !state.forwards.is_empty() => {
                state.forwarded(done);
                continue;
            }
            event = next_event(&state.udp, listeners, &mut state.next_listener) => event,
        };
        match event {
            Event::Queries(socket) => state.queries(socket),
            Event::Accept(stream) => {
                // Connections that ended meanwhile are not counted: a burst of short
                // ones is not refused for those the loop has not reaped yet.
                while let Some(ended) = connections.try_join_next_with_id() {
                    clients.ended(ended);
                }
                let peer = stream.peer_addr().ok();
                let client = peer.map(|addr| addr.ip());
                let held = client.map_or(0, |ip| clients.held_by(ip));
                if connections.len() >= MAX_TCP_CLIENTS || held >= MAX_TCP_PER_CLIENT {
                    tracing::debug!(network = %state.resolver.network(), ?client, "too many DNS TCP clients; connection closed");
                    continue;
                }
                let turns = client.map(|ip| clients.turns_of(ip));
                let resolvers = resolvers.clone();
                let health = Arc::clone(&state.health);
                let task = connections.spawn(async move {
                    serve_tcp(stream, peer, turns, &resolvers, &health).await;
                });
                if let Some(ip) = client {
                    clients.started(task.id(), ip);
                }
            }
            Event::AcceptFailed(e) => {
                let now = tokio::time::Instant::now();
                if accept_failure_logged.is_none_or(|at| now - at >= ACCEPT_FAILURE_LOG_INTERVAL) {
                    tracing::warn!(network = %state.resolver.network(), error = %e, "cannot accept DNS TCP connections; UDP is still served");
                    accept_failure_logged = Some(now);
                }
                accepting_again = Some(now + SOCKET_ERROR_PAUSE);
            }
            Event::Failed(e) => {
                tracing::debug!(network = %state.resolver.network(), error = %e, "DNS socket error");
                tokio::time::sleep(SOCKET_ERROR_PAUSE).await;
            }
        }
    }
    // Forwards in flight end here, closing their sockets.
    state.forwards.shutdown().await;
    // Close the listeners, then wait for every connection's socket to be closed too:
    // a connection still bound to port 53 would make the next listen() on it fail.
    drop(tcp);
    connections.shutdown().await;
}

/// The TCP connections being served or waiting, by client address.
#[derive(Default)]
struct TcpClients {
    /// The client of each connection's task.
    client_of: HashMap<tokio::task::Id, IpAddr>,
    /// Each client's turns to be served ([`MAX_TCP_SERVED_PER_CLIENT`]), while it holds
    /// a connection.
    turns: HashMap<IpAddr, Arc<Semaphore>>,
}

impl TcpClients {
    fn held_by(&self, ip: IpAddr) -> usize {
        self.client_of
            .values()
            .filter(|&&other| other == ip)
            .count()
    }

    fn turns_of(&mut self, ip: IpAddr) -> Arc<Semaphore> {
        Arc::clone(
            self.turns
                .entry(ip)
                .or_insert_with(|| Arc::new(Semaphore::new(MAX_TCP_SERVED_PER_CLIENT))),
        )
    }

    fn started(&mut self, task: tokio::task::Id, ip: IpAddr) {
        self.client_of.insert(task, ip);
    }

    /// Forgets a connection whose task ended, however it ended.
    fn ended(&mut self, ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let id = match ended {
            Ok((id, ())) => id,
            Err(e) => e.id(),
        };
        if let Some(ip) = self.client_of.remove(&id)
            && self.held_by(ip) == 0
        {
            self.turns.remove(&ip);
        }
    }
}

/// Waits for the first listener with something to read, without allocating. The
/// listeners (UDP sockets, then TCP listeners, as one ring) are looked at from
/// `next_listener` on, which is left one past the listener that had something, so a
/// socket kept busy by one client cannot starve the others.
async fn next_event(udp: &[UdpSocket], tcp: &[TcpListener], next_listener: &mut usize) -> Event {
    poll_fn(|cx| {
        let listeners = udp.len() + tcp.len();
        for turn in 0..listeners {
            let at = (*next_listener + turn) % listeners;
            let ready = match udp.get(at) {
                Some(socket) => socket.poll_recv_ready(cx).map_ok(|()| Event::Queries(at)),
                None => tcp[at - udp.len()]
                    .poll_accept(cx)
                    .map(|accepted| match accepted {
                        Ok((stream, _)) => Ok(Event::Accept(stream)),
                        Err(e) => Ok(Event::AcceptFailed(e)),
                    }),
            };
            if let Poll::Ready(result) = ready {
                *next_listener = (at + 1) % listeners;
                return Poll::Ready(result.unwrap_or_else(Event::Failed));
            }
        }
        Poll::Pending
    })
    .await
}

/// Sends a datagram if the socket has room now; UDP may lose it anyway, and the
/// sender (a client, or our retry) tries again. Sent straight to the socket: the
/// runtime learns a new socket is writable only on its next turn. An error (no route
/// to `to`, say) is logged and returned.
pub(super) fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) -> nix::Result<usize> {
    let result = sendto(
        socket.as_raw_fd(),
        bytes,
        &SockaddrStorage::from(to),
        MsgFlags::MSG_DONTWAIT,
    );
    if let Err(e) = result {
        tracing::debug!(%to, error = %e, "DNS datagram not sent");
    }
    result
}

/// The buffers of a batch of datagrams, one set per runtime worker thread.
struct Batch {
    /// [`BATCH`] receive buffers of [`RECV_BUFFER`] bytes, back to back.
    queries: Box<[u8]>,
    /// Length and sender of each datagram read.
    received: Vec<(usize, SockaddrStorage)>,
    /// Replies, by datagram.
    replies: Vec<Vec<u8>>,
    /// By address family (IPv4, IPv6): the kernel leaves each header's address length
    /// at what it last wrote, so a header read an IPv4 sender into must not be used for
    /// an IPv6 one.
    recv_headers: [MultiHeaders<SockaddrStorage>; 2],
    send_headers: MultiHeaders<SockaddrStorage>,
    /// For one segmented send, with room for its control message.
    gso_headers: MultiHeaders<SockaddrStorage>,
    /// Whether UDP GSO sends work here (cleared on the first that fails for lack of
    /// support, see [`gso_unsupported`]).
    gso: bool,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            queries: vec![0; BATCH * RECV_BUFFER].into_boxed_slice(),
            received: Vec::with_capacity(BATCH),
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(usize::from(super::resolver::MAX_UDP_PAYLOAD)))
                .collect(),
            recv_headers: [
                MultiHeaders::preallocate(BATCH, None),
                MultiHeaders::preallocate(BATCH, None),
            ],
            send_headers: MultiHeaders::preallocate(BATCH, None),
            gso_headers: MultiHeaders::preallocate(1, Some(nix::cmsg_space!(u16))),
            gso: true,
        }
    }

    /// Reads up to [`BATCH`] datagrams from `fd`, a socket of family `family` (0: IPv4,
    /// 1: IPv6), into `queries` and `received`.
    fn receive(&mut self, fd: i32, family: usize) -> std::io::Result<usize> {
        self.received.clear();
        let mut chunks = self.queries.chunks_exact_mut(RECV_BUFFER);
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        let results = recvmmsg(
            fd,
            &mut self.recv_headers[family],
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        for message in results {
            // Entry `i` must stay datagram `i`: one without a sender (never seen on UDP)
            // is kept as an empty query, which gets no answer.
            let unknown = || SockaddrStorage::from(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
            match message.address {
                Some(from) => self.received.push((message.bytes, from)),
                None => self.received.push((0, unknown())),
            }
        }
        Ok(self.received.len())
    }

    /// Sends `replies[i]` to `received[i].1` for each `i` in `answered`; returns how
    /// many went out before the socket's buffer filled up. Replies of equal length to
    /// the same client (a resolver or load generator with many queries in flight)
    /// leave in one UDP GSO send: the stack routes, filters and bridges them once.
    fn send(&mut self, fd: i32, answered: &[usize]) -> std::io::Result<usize> {
        let mut singles = [0usize; BATCH];
        let mut single_count = 0;
        let mut taken = [false; BATCH];
        let mut sent = 0;
        for (i, &at) in answered.iter().enumerate() {
            if taken[i] {
                continue;
            }
            let (len, to) = (self.replies[at].len(), self.received[at].1);
            let mut group = [0usize; BATCH];
            let mut size = 0;
            for (j, &other) in answered.iter().enumerate().skip(i) {
                let same = j == i
                    || (self.gso
                        && !taken[j]
                        && self.replies[other].len() == len
                        && self.received[other].1 == to);
                if same {
                    taken[j] = true;
                    group[size] = other;
                    size += 1;
                }
            }
            if size >= 2 {
                match self.send_segments(fd, &group[..size], len, &to) {
                    Ok(_) => {
                        sent += size;
                        continue;
                    }
                    Err(Errno::EAGAIN) => return Ok(sent),
                    Err(e) if gso_unsupported(e) => {
                        tracing::debug!(error = %e, "UDP GSO send failed; sending DNS replies one by one");
                        self.gso = false;
                    }
                    Err(e) => {
                        // About this client only (a firewall drop, no route, too big
                        // together): its replies go one by one, GSO stays on for the
                        // others, this thread's batch serving every network.
                        tracing::debug!(error = %e, "UDP GSO send to one client failed; sending its DNS replies one by one");
                    }
                }
            }
            singles[single_count..single_count + size].copy_from_slice(&group[..size]);
            single_count += size;
        }
        match self.send_each(fd, &singles[..single_count]) {
            Ok(count) => Ok(sent + count),
            Err(_) if sent > 0 => Ok(sent),
            Err(e) => Err(e),
        }
    }

    /// Sends the equal-length replies of `group` to `to` as one datagram cut into
    /// `len`-byte segments by the kernel.
    fn send_segments(
        &mut self,
        fd: i32,
        group: &[usize],
        len: usize,
        to: &SockaddrStorage,
    ) -> nix::Result<()> {
        let slices: [IoSlice<'_>; BATCH] = std::array::from_fn(|k| {
            IoSlice::new(group.get(k).map_or(&[][..], |&at| &self.replies[at]))
        });
        let segment = u16::try_from(len).map_err(|_| Errno::EMSGSIZE)?;
        // sendmmsg with one message: sendmsg would allocate its control buffer.
        let message = [&slices[..group.len()]];
        let sent = sendmmsg(
            fd,
            &mut self.gso_headers,
            message.iter(),
            [Some(*to)],
            [ControlMessage::UdpGsoSegments(&segment)],
            MsgFlags::MSG_DONTWAIT,
        )?
        .count();
        if sent == 1 {
            Ok(())
        } else {
            Err(Errno::EAGAIN)
        }
    }

    /// Sends the replies of `answered` one datagram each, [`BATCH`] per system call;
    /// returns how many went out. One the kernel refuses for its destination (a
    /// firewall drop, no route) is skipped, so it does not cost the others their
    /// replies; a full socket buffer ends the send.
    fn send_each(&mut self, fd: i32, answered: &[usize]) -> std::io::Result<usize> {
        let mut done = 0;
        let mut sent = 0;
        let mut refused = None;
        while done < answered.len() {
            let rest = &answered[done..];
            let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
                let bytes = rest.get(i).map_or(&[][..], |&at| &self.replies[at]);
                [IoSlice::new(bytes)]
            });
            let to: [Option<SockaddrStorage>; BATCH] =
                std::array::from_fn(|i| rest.get(i).map(|&at| self.received[at].1));
            let count = rest.len().min(BATCH);
            let no_control: [ControlMessage<'_>; 0] = [];
            let results = sendmmsg(
                fd,
                &mut self.send_headers,
                slices[..count].iter(),
                &to[..count],
                no_control,
                MsgFlags::MSG_DONTWAIT,
            );
            match results {
                Ok(results) => match results.count() {
                    0 => break,
                    went => {
                        done += went;
                        sent += went;
                    }
                },
                Err(Errno::EAGAIN) => break,
                // The first datagram of the call failed: only it.
                Err(e) => {
                    tracing::debug!(to = ?self.received[rest[0]].1, error = %e, "DNS reply not sent");
                    refused.get_or_insert(e);
                    done += 1;
                }
            }
        }
        match refused {
            Some(e) if sent == 0 => Err(e.into()),
            _ => Ok(sent),
        }
    }
}

/// Whether a segmented send failed because UDP GSO does not work here at all (older
/// kernels, a route without checksum offload), rather than because of its destination.
fn gso_unsupported(error: Errno) -> bool {
    matches!(
        error,
        Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOPROTOOPT
    )
}

thread_local! {
    static BATCH_BUFFERS: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Whether a query from `client` is answered ([`DnsConfig::clients`]; empty: any).
fn is_allowed_client(clients: &[ipnet::IpNet], client: Option<SocketAddr>) -> bool {
    clients.is_empty()
        || client.is_some_and(|client| clients.iter().any(|net| net.contains(&client.ip())))
}

/// The sender of a datagram as a socket address (`None` for other families).
fn socket_addr(from: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = from.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    from.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

impl Serve {
    /// Reads, answers and forwards the datagrams waiting on listening socket `socket`.
    fn queries(&mut self, socket: usize) {
        BATCH_BUFFERS.with(|cell| {
            let Ok(mut slot) = cell.try_borrow_mut() else {
                return;
            };
            let batch = slot.get_or_insert_with(Batch::new);
            for _ in 0..BATCHES_PER_TURN {
                let udp = &self.udp[socket];
                let fd = udp.as_raw_fd();
                let family = self.udp_family[socket];
                match udp.try_io(Interest::READABLE, || batch.receive(fd, family)) {
                    Ok(0) => return,
                    Ok(count) => {
                        self.answer_batch(socket, batch);
                        if count < BATCH {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        tracing::debug!(network = %self.resolver.network(), error = %e, "DNS socket error");
                        return;
                    }
                }
            }
        });
    }

    fn answer_batch(&mut self, socket: usize, batch: &mut Batch) {
        let resolver = Arc::clone(&self.resolver);
        let log = resolver.query_log();
        let mut answered = [0usize; BATCH];
        let mut replies = 0;
        for at in 0..batch.received.len() {
            let (len, from) = batch.received[at];
            if !is_allowed_client(&self.clients, socket_addr(&from)) {
                continue;
            }
            let start = at * RECV_BUFFER;
            let query = &mut batch.queries[start..start + len.min(RECV_BUFFER)];
            // One test of `log` per query when the network logs none.
            let logging = log.and_then(|log| {
                let logged = log.query(query, socket_addr(&from)?)?;
                Some((log, logged))
            });
            let reply = &mut batch.replies[at];
            match resolver.answer(query, Transport::Udp, reply) {
                Outcome::Reply => {
                    if let Some((log, logged)) = logging {
                        log.answered(logged, resolver.source_of(query), query, reply);
                    }
                    answered[replies] = at;
                    replies += 1;
                }
                Outcome::Forward(_) if resolver.cached_reply(query, Transport::Udp, reply) => {
                    if let Some((log, logged)) = logging {
                        log.answered(logged, Source::Cached, query, reply);
                    }
                    answered[replies] = at;
                    replies += 1;
                }
                Outcome::Forward(servers) => {
                    if let Some(client) = socket_addr(&from) {
                        let logged = logging.map(|(_, logged)| logged);
                        self.forward(socket, query, client, servers, logged);
                    }
                }
                Outcome::Drop => {}
            }
        }
        if replies == 0 {
            return;
        }
        // Straight to the socket, as in `send`.
        match batch.send(self.udp[socket].as_raw_fd(), &answered[..replies]) {
            Ok(sent) if sent == replies => {}
            Ok(sent) => {
                tracing::debug!(network = %resolver.network(), lost = replies - sent, "DNS replies not sent: socket buffer full");
            }
            Err(e) => {
                tracing::debug!(network = %resolver.network(), error = %e, lost = replies, "DNS replies not sent");
            }
        }
    }

    /// Forwards `query` from `client` upstream, or has it join the forward of the same
    /// question in flight ([`InFlight`]); `logged` with `log-queries`.
    fn forward(
        &mut self,
        socket: usize,
        query: &[u8],
        client: SocketAddr,
        servers: &[SocketAddr],
        logged: Option<Logged>,
    ) {
        let asker = Asker {
            client,
            socket,
            query: query.into(),
        };
        let key = Key::of(query).map(|(key, _)| key);
        let asker = match self.in_flight.admit(asker, key.as_ref()) {
            Admission::Forward(asker) => asker,
            Admission::Joined | Admission::Retry => return,
            Admission::Refused(asker) => {
                tracing::debug!(network = %self.resolver.network(), "too many DNS queries in flight; refusing one");
                if let (Some(log), Some(logged)) = (self.resolver.query_log(), logged) {
                    log.unanswered(logged, query, |name| {
                        format!("refused {name}: too many queries in flight")
                    });
                }
                let mut refusal = Vec::new();
                unforwarded_reply(&asker.query, Unforwarded::NotSent, &mut refusal);
                if !refusal.is_empty() {
                    let _ = send(&self.udp[socket], &refusal, client);
                }
                return;
            }
        };
        let mut upstream_query = query.to_vec();
        // A fresh random ID per forward, on top of the random port, makes a spoofed
        // upstream answer hard to match.
        if let Some(id) = upstream_query.get_mut(..2) {
            id.copy_from_slice(&rand::random::<u16>().to_be_bytes());
        }
        clamp_edns_payload(&mut upstream_query);
        let resolver = Arc::clone(&self.resolver);
        let health = Arc::clone(&self.health);
        let servers = servers.to_vec();
        let first = (client, asker.id());
        let task = self.forwards.spawn(async move {
            let forwarded =
                forward_udp(&resolver, &upstream_query, &servers, &health, logged).await;
            (asker, logged, forwarded)
        });
        self.in_flight.started(task.id(), key, first);
    }

    /// Answers the askers of a forward that ended.
    fn forwarded(&mut self, done: Result<(tokio::task::Id, ForwardEnd), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok((id, (first, logged, forwarded))) => {
                if let (Some(log), Some(logged)) = (self.resolver.query_log(), logged) {
                    log_forwarded(log, logged, &first.query, &forwarded);
                }
                (id, Some((first, forwarded)))
            }
            Err(e) => (e.id(), None),
        };
        let joined = self.in_flight.finished(id);
        // A silent forward (or one that panicked) answers nobody: the clients retry.
        let Some((first, forwarded)) = outcome.filter(|(_, f)| !matches!(f, Forwarded::Silent))
        else {
            return;
        };
        let mut reply = Vec::new();
        for (index, asker) in std::iter::once(first).chain(joined).enumerate() {
            if let Forwarded::Reply(upstream) = &forwarded {
                reply.clear();
                reply.extend_from_slice(upstream);
                // The upstream answered the first asker's query, options and all.
                let answered = if index == 0 {
                    Answered::Asked
                } else {
                    Answered::Joined
                };
                self.resolver
                    .ready_for(&asker.query, Transport::Udp, answered, &mut reply);
            } else {
                unforwarded_reply(&asker.query, Unforwarded::NotSent, &mut reply);
            }
            if !reply.is_empty() {
                let _ = send(&self.udp[asker.socket], &reply, asker.client);
            }
        }
    }
}

/// What became of a forward over UDP, for `log-queries`: the upstream's reply, or why
/// there was none.
fn log_forwarded(log: &QueryLog, logged: Logged, query: &[u8], forwarded: &Forwarded) {
    match forwarded {
        Forwarded::Reply(reply) => log.answered(logged, Source::Reply, query, reply),
        Forwarded::Silent => log.unanswered(logged, query, |name| {
            format!("no reply to {name} from the upstream servers")
        }),
        Forwarded::NotSent => log.unanswered(logged, query, |name| {
            format!("refused {name}: it could be sent to no upstream server")
        }),
    }
}

/// Serves one TCP client (`peer`): length-prefixed queries until it closes, idles or
/// sends something that is not a query. Each query is answered with the records of its
/// time: a connection kept open across a `net-update` sees the update.
async fn serve_tcp(
    mut stream: TcpStream,
    peer: Option<SocketAddr>,
    turns: Option<Arc<Semaphore>>,
    resolvers: &watch::Receiver<Arc<Resolver>>,
    health: &Health,
) {
    let mut query = Vec::new();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(TCP_IDLE, read_message(&mut stream, &mut query)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let resolver = Arc::clone(&resolvers.borrow());
        let logging = match (resolver.query_log(), peer) {
            (Some(log), Some(peer)) => log.query(&query, peer).map(|logged| (log, logged)),
            _ => None,
        };
        match resolver.answer(&query, Transport::Tcp, &mut out) {
            Outcome::Reply => {
                if let Some((log, logged)) = logging {
                    log.answered(logged, resolver.source_of(&query), &query, &out);
                }
            }
            Outcome::Forward(_) if resolver.cached_reply(&query, Transport::Tcp, &mut out) => {
                if let Some((log, logged)) = logging {
                    log.answered(logged, Source::Cached, &query, &out);
                }
            }
            Outcome::Forward(servers) => {
                // A turn per forward, not per connection: a guest's idle connections (a
                // resolver keeping them open) must not keep its next query waiting, and
                // its forwards hanging on a silent upstream hold up no local answer.
                let _turn = match &turns {
                    Some(turns) => {
                        let turn = Arc::clone(turns).acquire_owned();
                        match tokio::time::timeout(TCP_IDLE, turn).await {
                            Ok(Ok(turn)) => Some(turn),
                            _ => return,
                        }
                    }
                    None => None,
                };
                let network = resolver.network();
                match forward_tcp(network, servers, health, &query, &mut out, logging).await {
                    Ok(keep) => {
                        if let Some((log, logged)) = logging {
                            log.answered(logged, Source::Reply, &query, &out);
                        }
                        if keep {
                            resolver.remember(&query, &out);
                        }
                        resolver.ready_for(&query, Transport::Tcp, Answered::Asked, &mut out);
                    }
                    Err(e) => {
                        // A TCP client does not retry by itself: tell it, and keep serving.
                        tracing::debug!(network = %resolver.network(), error = %e, "DNS query over TCP not forwarded");
                        if let Some((log, logged)) = logging {
                            log.unanswered(logged, &query, |name| {
                                format!(
                                    "no reply to {name} from the upstream servers ({e}): SERVFAIL"
                                )
                            });
                        }
                        unforwarded_reply(&query, Unforwarded::NoAnswer, &mut out);
                        if out.is_empty() {
                            return;
                        }
                    }
                }
            }
            Outcome::Drop => return,
        }
        // A client that stops reading must not keep its connection slot for good.
        match tokio::time::timeout(TCP_IDLE, write_message(&mut stream, &out)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

/// Reads one length-prefixed DNS message (RFC 1035 4.2.2) into `message`.
pub(super) async fn read_message<S: AsyncReadExt + Unpin>(
    stream: &mut S,
    message: &mut Vec<u8>,
) -> std::io::Result<()> {
    let len = stream.read_u16().await?;
    message.resize(usize::from(len), 0);
    stream.read_exact(message).await?;
    Ok(())
}

pub(super) async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::dns::in_flight::MAX_PENDING_PER_CLIENT;
    use testkit::{Need, Netns};

    /// A test namespace and the single-threaded runtime the daemon runs servers on.
    fn netns_and_runtime(name: &str) -> (Netns, tokio::runtime::Runtime) {
        let ns = Netns::new(name).expect("create test netns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (ns, runtime)
    }

    /// Listeners with datagrams left queued (a turn ended) must not keep the other
    /// listeners or the TCP accepts waiting.
    #[test]
    fn listeners_take_turns() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        let (ns, runtime) = netns_and_runtime("dnsturns");
        ns.run(|| {
            runtime.block_on(async {
                let bind = || async {
                    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                        .await
                        .expect("bind")
                };
                let udp = vec![bind().await, bind().await];
                let tcp = vec![
                    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                        .await
                        .expect("listen"),
                ];
                let peer = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
                for socket in &udp {
                    let to = socket.local_addr().expect("address");
                    peer.send_to(b"query", to).expect("send");
                }
                let _client = std::net::TcpStream::connect(tcp[0].local_addr().expect("address"))
                    .expect("connect");
                // Let the runtime see every socket's readiness.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut next_listener = 0;
                let mut seen = Vec::new();
                for _ in 0..4 {
                    // The listeners' datagrams stay queued, as after a turn cut short.
                    let event = next_event(&udp, &tcp, &mut next_listener).await;
                    seen.push(match event {
                        Event::Queries(socket) => format!("udp{socket}"),
                        Event::Accept(_) => "accept".to_owned(),
                        Event::AcceptFailed(e) => format!("accept failed: {e}"),
                        Event::Failed(e) => format!("failed: {e}"),
                    });
                }
                assert_eq!(seen, ["udp0", "udp1", "accept", "udp0"]);
                // While TCP waits after a failed accept, UDP is served on its own.
                let _another = std::net::TcpStream::connect(tcp[0].local_addr().expect("address"))
                    .expect("connect");
                tokio::time::sleep(Duration::from_millis(50)).await;
                for _ in 0..3 {
                    let event = next_event(&udp, &[], &mut next_listener).await;
                    assert!(matches!(event, Event::Queries(_)));
                }
            })
        })
        .expect("run in the netns");
    }

    /// A query for `name` of type A with ID `id`, RD set.
    pub(in crate::dns) fn a_query(id: u16, name: &str) -> Vec<u8> {
        let mut query = id.to_be_bytes().to_vec();
        query.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|label| !label.is_empty()) {
            query.push(u8::try_from(label.len()).expect("short label"));
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        query
    }

    /// Sends the query [`a_query`] makes to the server at `to` from `client`.
    async fn ask(client: &UdpSocket, to: SocketAddr, id: u16, name: &str) {
        client.send_to(&a_query(id, name), to).await.expect("send");
    }

    /// `query` turned into a response with `rcode` (and the name's letters in upper
    /// case, as a resolver using 0x20 mixing might echo them).
    fn response(query: &[u8], rcode: u8) -> Vec<u8> {
        let mut reply = query.to_vec();
        reply[2] |= 0x80;
        reply[3] = 0x80 | rcode;
        reply[12..].make_ascii_uppercase();
        reply
    }

    /// The next datagram `socket` receives, and its sender; panics after 2 s, naming
    /// `what` it waited for.
    async fn next_datagram(socket: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 512];
        let (len, from) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("receive");
        (buf[..len].to_vec(), from)
    }

    /// A server on 127.0.0.1 forwarding to upstream sockets on 127.0.0.2 (and .3, ...,
    /// in that order), and a client.
    struct Forwarding {
        server: DnsServer,
        upstream: UdpSocket,
        /// The upstreams after the first.
        others: Vec<UdpSocket>,
        client: UdpSocket,
        to_server: SocketAddr,
    }

    /// Runs `test` with a [`Forwarding`] to `upstreams` servers for network `network`, in
    /// a namespace `ns_name` of its own, on the daemon's kind of runtime.
    fn with_forwarding<F, Fut>(ns_name: &str, network: &str, upstreams: u8, test: F)
    where
        F: FnOnce(Forwarding) -> Fut + Send,
        Fut: std::future::Future<Output = ()>,
    {
        let (ns, runtime) = netns_and_runtime(ns_name);
        ns.run(|| runtime.block_on(async { test(forwarding(network, upstreams).await).await }))
            .expect("run in the netns");
    }

    /// [`Forwarding`] to `upstreams` servers for network `network`, in the current
    /// namespace.
    async fn forwarding(network: &str, upstreams: u8) -> Forwarding {
        let addresses: Vec<Ipv4Addr> = (0..upstreams.max(1))
            .map(|at| Ipv4Addr::new(127, 0, 0, 2 + at))
            .collect();
        let config = DnsConfig {
            network: network.into(),
            listen: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            forward_plain_names: true,
            local_ptr_domains: Vec::new(),
            // Not localOnly: its own name goes upstream, and exists here.
            domain: Some("lab.test".into()),
            default_upstreams: addresses
                .iter()
                .map(|&address| SocketAddr::new(IpAddr::V4(address), DNS_PORT))
                .collect(),
            ..DnsConfig::default()
        };
        let mut sockets = Vec::new();
        for address in addresses {
            sockets.push(
                UdpSocket::bind((address, DNS_PORT))
                    .await
                    .expect("bind an upstream"),
            );
        }
        let upstream = sockets.remove(0);
        Forwarding {
            server: DnsServer::start(config, None).expect("start"),
            upstream,
            others: sockets,
            client: UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind the client"),
            to_server: SocketAddr::from((Ipv4Addr::LOCALHOST, DNS_PORT)),
        }
    }

    /// RFC 5452: each forwarded query leaves from its own random port, which closes
    /// once answered, and only a reply with the query's ID and question is taken.
    #[test]
    fn forwards_leave_from_random_ports_and_take_only_matching_replies() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsports", "ports", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            let mut forwarded = Vec::new();
            for (id, name) in [(0x1111, "one.example."), (0x2222, "two.example.")] {
                ask(&client, to_server, id, name).await;
                forwarded.push(next_datagram(&upstream, "a forwarded query").await);
            }
            let (query, from) = &forwarded[0];
            assert_ne!(
                from.port(),
                forwarded[1].1.port(),
                "one source port for both"
            );
            // Anyone but the server finds the forward's port closed, as every other.
            let prober = std::net::UdpSocket::bind(("127.0.0.9", 0)).expect("bind the prober");
            prober.connect(from).expect("connect");
            prober
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            prober.send(&response(query, 0)).expect("probe");
            let probed = prober.recv(&mut [0u8; 64]).map_err(|e| e.kind());
            assert_eq!(probed, Err(std::io::ErrorKind::ConnectionRefused));
            // Forged: another question, and the right question with another ID.
            let mut other_name = response(query, 0);
            other_name[13] ^= 1;
            upstream.send_to(&other_name, from).await.expect("send");
            let mut other_id = response(query, 0);
            other_id[0] ^= 0xff;
            upstream.send_to(&other_id, from).await.expect("send");
            upstream
                .send_to(&response(query, 3), from)
                .await
                .expect("send");
            let (answer, _) = next_datagram(&client, "the answer").await;
            // The answer takes the client's ID and letter case back.
            let expected = {
                let mut reply = a_query(0x1111, "one.example.");
                reply[2] |= 0x80;
                reply[3] = 0x83;
                reply
            };
            assert_eq!(answer, expected, "a forged reply got through");
            // The answered forward's socket is closed: its port is free again.
            std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, from.port()))
                .expect("the forward's port still taken");
            server.stop().await;
        });
    }

    /// A name asked again, in other letters, over UDP or TCP, is answered from the
    /// reply kept the first time: the upstream is asked once.
    #[test]
    fn a_name_asked_again_is_answered_without_asking_upstream() {
        use hickory_proto::op::Message;

        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnscache", "cache", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            ask(&client, to_server, 0x1111, "www.example.").await;
            let (query, from) = next_datagram(&upstream, "the forwarded query").await;
            upstream
                .send_to(&positive(&query, Ipv4Addr::new(192, 0, 2, 7)), from)
                .await
                .expect("send");
            let (answer, _) = next_datagram(&client, "the forwarded answer").await;
            assert_eq!(Message::from_vec(&answer).expect("decode").answers.len(), 1);

            ask(&client, to_server, 0x2222, "WwW.example.").await;
            let (answer, _) = next_datagram(&client, "the kept answer").await;
            let kept = Message::from_vec(&answer).expect("decode");
            assert_eq!(kept.metadata.id, 0x2222);
            assert_eq!(kept.queries[0].name().to_ascii(), "WwW.example.");
            assert!(kept.answers[0].ttl <= 60);

            let mut stream = TcpStream::connect(to_server).await.expect("connect");
            write_message(&mut stream, &a_query(0x3333, "www.example."))
                .await
                .expect("send over TCP");
            let mut answer = Vec::new();
            tokio::time::timeout(
                Duration::from_secs(2),
                read_message(&mut stream, &mut answer),
            )
            .await
            .expect("the kept answer over TCP in time")
            .expect("receive over TCP");
            let kept = Message::from_vec(&answer).expect("decode");
            assert_eq!((kept.metadata.id, kept.answers.len()), (0x3333, 1));

            let mut buf = [0u8; 512];
            let asked_again =
                tokio::time::timeout(Duration::from_millis(300), upstream.recv_from(&mut buf))
                    .await;
            assert!(asked_again.is_err(), "the upstream was asked again");
            server.stop().await;
        });
    }

    /// `query` answered with the address `ip` (TTL 60), and the AD bit set, as an
    /// upstream that validates would send it.
    fn positive(query: &[u8], ip: Ipv4Addr) -> Vec<u8> {
        use hickory_proto::op::Message;
        use hickory_proto::rr::{RData, Record};

        let mut reply = Message::from_vec(&response(query, 0)).expect("decode");
        let name = reply.queries[0].name().clone();
        reply.add_answer(Record::from_rdata(name, 60, RData::A(ip.into())));
        let mut bytes = reply.to_vec().expect("encode");
        bytes[3] |= 0x20;
        bytes
    }

    /// Whether `socket` receives nothing for `ms` milliseconds.
    async fn quiet_for(socket: &UdpSocket, ms: u64) -> bool {
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_millis(ms), socket.recv_from(&mut buf))
            .await
            .is_err()
    }

    /// Takes the one query `upstream` is asked (no second within 300 ms), answers it with
    /// an address, and returns it with the `askers` answers `client` then gets, sorted.
    async fn answer_once(
        upstream: &UdpSocket,
        client: &UdpSocket,
        askers: usize,
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let (query, from) = next_datagram(upstream, "the forwarded query").await;
        assert!(
            quiet_for(upstream, 300).await,
            "the question was asked twice"
        );
        upstream
            .send_to(&positive(&query, Ipv4Addr::new(192, 0, 2, 9)), from)
            .await
            .expect("send");
        let mut answers = Vec::new();
        for _ in 0..askers {
            answers.push(next_datagram(client, "an answer").await.0);
        }
        answers.sort();
        (query, answers)
    }

    /// Clients asking a question already forwarded wait for its answer instead of
    /// asking again (one ID and port for a forger to guess, not one per copy); each gets
    /// it with its own ID and letter case, and without the upstream's AD bit.
    #[test]
    fn the_same_question_asked_meanwhile_is_forwarded_once() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsjoin", "join", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            for (id, name) in [
                (0x1111, "same.example."),
                (0x2222, "SAME.example."),
                // A retry of the first: answered once.
                (0x1111, "same.example."),
            ] {
                ask(&client, to_server, id, name).await;
            }
            let (_, answers) = answer_once(&upstream, &client, 2).await;
            assert!(quiet_for(&client, 300).await, "a retry was answered twice");
            for (answer, (id, name)) in answers
                .iter()
                .zip([(0x1111u16, "same.example."), (0x2222, "SAME.example.")])
            {
                let question = a_query(id, name);
                assert_eq!(answer[..2], question[..2], "ID");
                assert_eq!(answer[12..question.len()], question[12..], "question");
                assert_eq!(answer[6..8], [0, 1], "one answer");
                assert_eq!(answer[3] & 0x20, 0, "the AD bit was passed on");
            }
            server.stop().await;
        });
    }

    /// [`a_query`] with an OPT record carrying a DNS cookie (RFC 7873) of `cookie`.
    fn cookie_query(id: u16, name: &str, cookie: [u8; 8]) -> Vec<u8> {
        let mut query = a_query(id, name);
        query[11] = 1;
        query.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12, 0, 10, 0, 8]);
        query.extend_from_slice(&cookie);
        query
    }

    /// A client joining another's forward gets the answer with our OPT record, not the
    /// upstream's, which echoes the first client's cookie: a resolver checking cookies
    /// would drop it and time out.
    #[test]
    fn a_joined_asker_does_not_get_the_first_askers_cookie() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnscookie", "cookie", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            let (first, joined) = ([1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]);
            for (id, cookie) in [(0x1111, first), (0x2222, joined)] {
                let query = cookie_query(id, "cookie.example.", cookie);
                client.send_to(&query, to_server).await.expect("send");
            }
            let (query, answers) = answer_once(&upstream, &client, 2).await;
            assert!(
                query.ends_with(&first),
                "the first asker's cookie was not forwarded"
            );
            assert!(
                answers[0].ends_with(&first),
                "the first asker lost its cookie"
            );
            let theirs = &answers[1];
            assert_eq!(theirs[..2], [0x22, 0x22], "ID");
            assert_eq!(theirs[10..12], [0, 1], "one additional record: an OPT");
            assert!(
                !theirs.windows(8).any(|window| window == first),
                "the joined asker got the first asker's cookie"
            );
            let opt = &theirs[theirs.len() - 11..];
            assert_eq!(opt[..3], [0, 0, 41], "our OPT record last");
            assert_eq!(opt[9..], [0, 0], "options in our OPT record");
            server.stop().await;
        });
    }

    /// One client asking for ever new names gets REFUSED once it has a quarter of the
    /// forwards in flight; another client's questions still go out.
    #[test]
    fn one_client_cannot_take_every_forward() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsfair", "fair", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            for at in 0..=MAX_PENDING_PER_CLIENT {
                let name = format!("n{at}.example.");
                let id = u16::try_from(at).expect("small");
                ask(&client, to_server, id, &name).await;
            }
            let (refusal, _) = next_datagram(&client, "the refusal").await;
            assert_eq!(refusal[3] & 0x0f, 5, "REFUSED");
            for _ in 0..MAX_PENDING_PER_CLIENT {
                next_datagram(&upstream, "a forwarded query").await;
            }
            let other = UdpSocket::bind(("127.0.0.5", 0)).await.expect("bind");
            ask(&other, to_server, 0xffff, "other.example.").await;
            let (query, _) = next_datagram(&upstream, "the other client's query").await;
            assert_eq!(query[12..], a_query(0, "other.example.")[12..]);
            server.stop().await;
        });
    }

    /// An upstream's NXDOMAIN for the network's own domain, which exists here, reaches
    /// every asker as NOERROR.
    #[test]
    fn a_denial_of_the_networks_own_domain_becomes_nodata_for_every_asker() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsowndomain", "owndomain", 1, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            ask(&client, to_server, 0x1111, "lab.test.").await;
            ask(&client, to_server, 0x2222, "LAB.test.").await;
            let (query, from) = next_datagram(&upstream, "the forwarded query").await;
            upstream
                .send_to(&response(&query, 3), from)
                .await
                .expect("send");
            for _ in 0..2 {
                let (answer, _) = next_datagram(&client, "an answer").await;
                assert_eq!(answer[3] & 0x0f, 0, "NOERROR");
            }
            server.stop().await;
        });
    }

    /// strict-order: a NXDOMAIN from the second server waits for the first, which the
    /// query went on from after a second of silence; its late answer wins, and a
    /// SERVFAIL from it lets the NXDOMAIN through.
    #[test]
    fn a_denial_waits_for_the_server_asked_before() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsstrict", "strict", 2, |lab| async move {
            let Forwarding {
                server,
                upstream,
                others,
                client,
                to_server,
            } = lab;
            let second = &others[0];
            ask(&client, to_server, 0x1111, "vpn.example.").await;
            let (first_query, first_from) = next_datagram(&upstream, "the first ask").await;
            let (query, from) = next_datagram(second, "the second ask, a second later").await;
            second
                .send_to(&response(&query, 3), from)
                .await
                .expect("send");
            assert!(quiet_for(&client, 300).await, "the denial did not wait");
            upstream
                .send_to(
                    &positive(&first_query, Ipv4Addr::new(10, 8, 0, 10)),
                    first_from,
                )
                .await
                .expect("send");
            let (answer, _) = next_datagram(&client, "the first server's answer").await;
            assert_eq!((answer[3] & 0x0f, &answer[6..8]), (0, &[0u8, 1][..]));

            ask(&client, to_server, 0x2222, "nobody.example.").await;
            let (first_query, first_from) = next_datagram(&upstream, "the first ask").await;
            let (query, from) = next_datagram(second, "the second ask").await;
            second
                .send_to(&response(&query, 3), from)
                .await
                .expect("send");
            assert!(quiet_for(&client, 200).await, "the denial did not wait");
            upstream
                .send_to(&response(&first_query, 2), first_from)
                .await
                .expect("send");
            let (answer, _) = next_datagram(&client, "the denial").await;
            assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
            server.stop().await;
        });
    }

    /// `query` denied (NXDOMAIN) with an SOA record, which makes the denial cacheable.
    fn denial(query: &[u8]) -> Vec<u8> {
        use hickory_proto::op::Message;
        use hickory_proto::rr::rdata::SOA;
        use hickory_proto::rr::{Name, RData, Record};

        let mut reply = Message::from_vec(&response(query, 3)).expect("decode");
        let zone = Name::from_ascii("example.").expect("name");
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, 300);
        reply.add_authority(Record::from_rdata(zone, 300, RData::SOA(soa)));
        reply.to_vec().expect("encode")
    }

    /// A server demoted for its silence is not waited for: the next server's denial
    /// comes at once, but is not cached, since the demoted server might know the name.
    #[test]
    fn a_denial_while_the_first_server_is_demoted_is_not_cached() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsdemote", "demote", 2, |lab| async move {
            let Forwarding {
                server,
                upstream,
                others,
                client,
                to_server,
            } = lab;
            let second = &others[0];
            // Three questions the first server leaves unanswered demote it.
            for (id, name) in [(1, "a.example."), (2, "b.example."), (3, "c.example.")] {
                ask(&client, to_server, id, name).await;
            }
            for _ in 0..3 {
                let (query, from) = next_datagram(second, "an ask passed on").await;
                second
                    .send_to(&positive(&query, Ipv4Addr::new(192, 0, 2, 1)), from)
                    .await
                    .expect("send");
                next_datagram(&client, "an answer").await;
            }
            for _ in 0..3 {
                next_datagram(&upstream, "the unanswered asks").await;
            }

            for id in [0x4444, 0x5555] {
                ask(&client, to_server, id, "vpn.example.").await;
                let (query, from) =
                    next_datagram(second, "the second, asked first and again").await;
                second.send_to(&denial(&query), from).await.expect("send");
                let (answer, _) = next_datagram(&client, "the denial, at once").await;
                assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
            }
            assert!(
                quiet_for(&upstream, 200).await,
                "the demoted server was asked"
            );
            server.stop().await;
        });
    }

    /// A first server whose port is closed (its host sends ICMP port unreachable) is
    /// passed over at once, not after its second of silence; the next server's denial
    /// comes through but is not cached, since the first was not heard. With every port
    /// closed the client gets silence, not REFUSED: it asks again, by when a resolver
    /// that was restarting may be back.
    #[test]
    fn a_server_with_its_port_closed_is_passed_over_at_once() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsclosed", "closed", 2, |lab| async move {
            let Forwarding {
                server,
                upstream,
                others,
                client,
                to_server,
            } = lab;
            drop(upstream);
            let second = &others[0];
            for id in [0x1111, 0x2222] {
                ask(&client, to_server, id, "vpn.example.").await;
                let (query, from) = tokio::time::timeout(
                    Duration::from_millis(800),
                    next_datagram(second, "the second server's ask"),
                )
                .await
                .expect("the second server was asked only after the first's attempt ran out");
                second.send_to(&denial(&query), from).await.expect("send");
                let (answer, _) = next_datagram(&client, "the denial").await;
                assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
            }
            drop(others);
            ask(&client, to_server, 0x3333, "other.example.").await;
            assert!(
                quiet_for(&client, 500).await,
                "answered with every port closed"
            );
            server.stop().await;
        });
    }

    /// A denial from the first server, heard, is cached: the name is not asked again.
    #[test]
    fn a_denial_from_the_first_server_is_cached() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        with_forwarding("dnsdenied", "denied", 2, |lab| async move {
            let Forwarding {
                server,
                upstream,
                client,
                to_server,
                ..
            } = lab;
            ask(&client, to_server, 0x1111, "nobody.example.").await;
            let (query, from) = next_datagram(&upstream, "the first ask").await;
            upstream.send_to(&denial(&query), from).await.expect("send");
            next_datagram(&client, "the denial").await;
            ask(&client, to_server, 0x2222, "nobody.example.").await;
            let (answer, _) = next_datagram(&client, "the kept denial").await;
            assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN");
            assert!(quiet_for(&upstream, 200).await, "the denial was not kept");
            server.stop().await;
        });
    }

    /// Over TCP too, only a reply with the query's ID and question, and marked a
    /// response, is taken; anything else is a failed forward (the client gets SERVFAIL).
    #[test]
    fn tcp_forwards_take_only_matching_replies() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        let (ns, runtime) = netns_and_runtime("dnstcpmatch");
        ns.run(|| {
            runtime.block_on(async {
                let upstream = TcpListener::bind(("127.0.0.1", 0))
                    .await
                    .expect("bind the upstream");
                let server = upstream.local_addr().expect("address");
                let query = a_query(0x1111, "one.example.");
                let mut other_name = response(&query, 0);
                other_name[13] ^= 1;
                let mut other_id = response(&query, 0);
                other_id[0] ^= 0xff;
                let mut not_a_response = response(&query, 0);
                not_a_response[2] &= 0x7f;
                let replies = [other_name, other_id, not_a_response, response(&query, 3)];
                let answering = tokio::spawn({
                    let replies = replies.clone();
                    async move {
                        for reply in replies {
                            let (mut stream, _) = upstream.accept().await.expect("accept");
                            let mut asked = Vec::new();
                            read_message(&mut stream, &mut asked).await.expect("query");
                            write_message(&mut stream, &reply).await.expect("reply");
                        }
                    }
                });
                let health = Health::default();
                let mut out = Vec::new();
                for _ in 0..3 {
                    let forwarded =
                        forward_tcp("n", &[server], &health, &query, &mut out, None).await;
                    assert!(forwarded.is_err(), "a forged reply was taken: {out:?}");
                }
                forward_tcp("n", &[server], &health, &query, &mut out, None)
                    .await
                    .expect("the matching reply");
                assert_eq!(out, replies[3]);
                answering.await.expect("upstream task");
            })
        })
        .expect("run in the netns");
    }

    /// Over TCP, a denial from the second server is passed on but not cached while the
    /// first was not heard; one heard first (even a SERVFAIL) lets it be cached.
    #[test]
    fn tcp_denials_are_kept_only_when_every_server_before_was_heard() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        let (ns, runtime) = netns_and_runtime("dnstcpkeep");
        ns.run(|| {
            runtime.block_on(async {
                let query = a_query(0x1111, "vpn.example.");
                let first = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
                let second = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
                let servers = [
                    first.local_addr().expect("address"),
                    second.local_addr().expect("address"),
                ];
                let answer = |listener: TcpListener, reply: Vec<u8>| {
                    tokio::spawn(async move {
                        let (mut stream, _) = listener.accept().await.expect("accept");
                        let mut asked = Vec::new();
                        read_message(&mut stream, &mut asked).await.expect("query");
                        write_message(&mut stream, &reply).await.expect("reply");
                        listener
                    })
                };
                let health = Health::default();
                let mut out = Vec::new();
                // The first takes the connection and stays silent past its attempt.
                let silent = tokio::spawn(async move {
                    let (stream, _) = first.accept().await.expect("accept");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    drop(stream);
                    first
                });
                let second_answers = answer(second, response(&query, 3));
                let keep = forward_tcp("n", &servers, &health, &query, &mut out, None)
                    .await
                    .expect("the second server's denial");
                assert_eq!((out[3] & 0x0f, keep), (3, false));
                let (first, second) = (
                    silent.await.expect("first"),
                    second_answers.await.expect("second"),
                );

                let first_fails = answer(first, response(&query, 2));
                let second_denies = answer(second, response(&query, 3));
                let keep = forward_tcp("n", &servers, &health, &query, &mut out, None)
                    .await
                    .expect("the second server's denial");
                assert_eq!((out[3] & 0x0f, keep), (3, true));
                first_fails.await.expect("first");
                let second = second_denies.await.expect("second");

                // No route leads to the first (a VPN's resolver, the VPN down): it has
                // had its say, as over UDP.
                let unroutable = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 53));
                let servers = [unroutable, servers[1]];
                let second_denies = answer(second, response(&query, 3));
                let keep = forward_tcp("n", &servers, &health, &query, &mut out, None)
                    .await
                    .expect("the second server's denial");
                assert_eq!((out[3] & 0x0f, keep), (3, true));
                second_denies.await.expect("second");
            })
        })
        .expect("run in the netns");
    }

    /// A server too slow for TCP's attempt is passed over but not counted as failing:
    /// over TCP its late answer is never heard, and guests' slow lookups must not demote
    /// a server that only it answers for.
    #[test]
    fn slow_tcp_answers_do_not_demote_a_server() {
        if !testkit::require(&[Need::Root, Need::Netns]) {
            return;
        }
        let (ns, runtime) = netns_and_runtime("dnstcpslow");
        ns.run(|| {
            runtime.block_on(async {
                let query = a_query(0x1111, "slow.example.");
                let slow = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
                let other = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
                let servers = [
                    slow.local_addr().expect("address"),
                    other.local_addr().expect("address"),
                ];
                let holding = tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Ok((stream, _)) = slow.accept().await {
                        held.push(stream);
                    }
                });
                let reply = response(&query, 3);
                let answering = tokio::spawn(async move {
                    while let Ok((mut stream, _)) = other.accept().await {
                        let mut asked = Vec::new();
                        read_message(&mut stream, &mut asked).await.expect("query");
                        write_message(&mut stream, &reply).await.expect("reply");
                    }
                });
                let health = Health::default();
                let mut out = Vec::new();
                for _ in 0..3 {
                    forward_tcp("n", &servers, &health, &query, &mut out, None)
                        .await
                        .expect("the other server's answer");
                }
                assert_eq!(
                    health.order(&servers),
                    servers,
                    "the slow server was demoted"
                );
                holding.abort();
                answering.abort();
            })
        })
        .expect("run in the netns");
    }

    /// A client behind a firewall drop makes sends to it fail (EPERM): its replies are
    /// lost, but the next client's still leave, in one GSO send or one by one.
    #[test]
    fn a_refused_client_leaves_gso_on_for_the_others() {
        if !testkit::require(&[Need::Root, Need::Netns, Need::Nft]) {
            return;
        }
        let ns = Netns::new("dnsgso").expect("create test netns");
        ns.sh("nft add table inet t && \
             nft add chain inet t out '{ type filter hook output priority 0; }' && \
             nft add rule inet t out ip daddr 127.0.0.2 drop")
            .expect("firewall drop for 127.0.0.2");
        ns.run(|| {
            let bind = |ip: &str| std::net::UdpSocket::bind((ip, 0)).expect("bind");
            let (server, refused, client) =
                (bind("127.0.0.1"), bind("127.0.0.2"), bind("127.0.0.3"));
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut batch = Batch::new();
            // Four replies of one length, two to the refused client, then two to the
            // other, and a shorter one to the other, sent after the refused ones.
            let targets = [
                (&refused, 100),
                (&refused, 100),
                (&client, 100),
                (&client, 100),
                (&client, 60),
            ];
            for (at, (target, len)) in targets.into_iter().enumerate() {
                let to = target.local_addr().expect("address");
                batch.received.push((0, SockaddrStorage::from(to)));
                batch.replies[at].clear();
                batch.replies[at].resize(len, u8::try_from(at).expect("small"));
            }
            let sent = batch
                .send(server.as_raw_fd(), &[0, 1, 2, 3, 4])
                .expect("send");
            assert_eq!(sent, 3);
            assert!(batch.gso, "GSO turned off by one client's firewall drop");
            let mut buf = [0u8; 512];
            for (expected, len) in [(2u8, 100), (3, 100), (4, 60)] {
                let (got, from) = client.recv_from(&mut buf).expect("reply");
                assert_eq!(from, server.local_addr().expect("address"));
                assert_eq!(&buf[..got], &vec![expected; len][..]);
            }
        })
        .expect("run in the netns");
    }
}
