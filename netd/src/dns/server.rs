//! The per-network server task: UDP sockets and TCP listeners on port 53 of each bridge
//! address, feeding [`Resolver::answer`], and the forwarding of other queries upstream.
//!
//! UDP queries for other names are forwarded from one task-owned socket per address
//! family with a fresh random ID; the reply is matched on that ID and the upstream's
//! address, given back its original ID and sent to the client from the socket the query
//! came in on. Unanswered forwards are forgotten after [`FORWARD_TIMEOUT`] (the client
//! retries). A TCP client gets a small task per connection (at most [`MAX_TCP_CLIENTS`]
//! at once) that forwards over TCP, so large upstream answers get through whole.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, listen,
    setsockopt, socket, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::resolver::{Outcome, Resolver, Transport};
use super::{DNS_PORT, DnsConfig, Error, LeaseSource};

/// A forwarded query unanswered this long is forgotten.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Most UDP queries waiting for an upstream answer at once; more are dropped.
const MAX_PENDING: usize = 4096;
/// Most TCP connections served at once; more are closed on accept.
pub const MAX_TCP_CLIENTS: usize = 64;
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP datagram read (EDNS clients may send up to this much).
const RECV_BUFFER: usize = 4096;

/// A running DNS server of one network. Dropping it, or [`DnsServer::stop`], ends it.
#[derive(Debug)]
pub struct DnsServer {
    network: String,
    /// The serving task answers with the latest resolver sent here (net-update).
    resolver: watch::Sender<Arc<Resolver>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
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
                let socket =
                    open_socket(address, SockType::Datagram).map_err(fail("udp", "bind"))?;
                udp.push(
                    UdpSocket::from_std(socket.into())
                        .map_err(fail("udp", "register with the runtime"))?,
                );
                let socket =
                    open_socket(address, SockType::Stream).map_err(fail("tcp", "listen"))?;
                tcp.push(
                    TcpListener::from_std(socket.into())
                        .map_err(fail("tcp", "register with the runtime"))?,
                );
            }
        }
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (resolver, updates) = watch::channel(resolver);
        let task = runtime.spawn(serve(updates, udp, tcp, shutdown_rx));
        tracing::info!(network = %config.network, listen = ?config.listen, "DNS server started");
        Ok(DnsServer {
            network: config.network,
            resolver,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Serves `config`'s names from now on, without rebinding the sockets or dropping
    /// forwarded queries in flight (net-update). The listening addresses stay those
    /// the server started with. An invalid config changes nothing.
    pub fn update(&self, config: &DnsConfig, leases: Option<LeaseSource>) -> Result<(), Error> {
        let resolver = Resolver::new(config, leases)?;
        self.resolver.send_replace(Arc::new(resolver));
        tracing::info!(network = %self.network, "DNS records updated");
        Ok(())
    }

    /// Stops the task; TCP connections in progress end with it.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!(network = %self.network, error = %e, "DNS server task failed");
        }
        tracing::info!(network = %self.network, "DNS server stopped");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A socket bound to `address`:53 (and listening, for TCP). `SO_REUSEADDR` lets a
/// restarted daemon listen again while old connections linger in TIME_WAIT;
/// `IP_FREEBIND` lets it bind an IPv6 address still in duplicate address detection.
fn open_socket(address: IpAddr, kind: SockType) -> Result<std::os::fd::OwnedFd, std::io::Error> {
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

/// One UDP query forwarded upstream, waiting for its answer.
#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    client_id: u16,
    /// Index of the listening socket the query came in on.
    socket: usize,
    server: SocketAddr,
    sent: Instant,
}

/// What woke the task.
enum Event {
    Query {
        socket: usize,
        len: usize,
        from: SocketAddr,
    },
    Upstream {
        len: usize,
        from: SocketAddr,
    },
    Accept(TcpStream),
    Failed(std::io::Error),
}

/// The serving task's state.
struct Serve {
    resolver: Arc<Resolver>,
    udp: Vec<UdpSocket>,
    /// Sockets for forwarding: IPv4 and IPv6, opened on first use.
    upstream: [Option<UdpSocket>; 2],
    pending: HashMap<u16, Pending>,
    out: Vec<u8>,
}

async fn serve(
    mut updates: watch::Receiver<Arc<Resolver>>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Owned here, so the connections end with the task.
    let mut connections = JoinSet::new();
    let mut state = Serve {
        resolver: Arc::clone(&updates.borrow_and_update()),
        udp,
        upstream: [None, None],
        pending: HashMap::new(),
        out: Vec::with_capacity(usize::from(super::resolver::MAX_UDP_PAYLOAD)),
    };
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            Ok(()) = updates.changed() => {
                state.resolver = Arc::clone(&updates.borrow_and_update());
                continue;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            // Idle networks (most of a thousand) never wake for the sweep.
            _ = sweep.tick(), if !state.pending.is_empty() => {
                state.pending.retain(|_, p| p.sent.elapsed() < FORWARD_TIMEOUT);
                continue;
            }
            event = next_event(&state.udp, &state.upstream, &tcp, &mut buf) => event,
        };
        match event {
            Event::Query { socket, len, from } => state.query(socket, &mut buf[..len], from).await,
            Event::Upstream { len, from } => state.upstream_reply(&mut buf[..len], from).await,
            Event::Accept(stream) if connections.len() < MAX_TCP_CLIENTS => {
                let resolver = Arc::clone(&state.resolver);
                connections.spawn(async move { serve_tcp(stream, &resolver).await });
            }
            Event::Accept(_) => {
                tracing::debug!(network = %state.resolver.network(), "too many DNS TCP clients; connection closed");
            }
            Event::Failed(e) => {
                tracing::debug!(network = %state.resolver.network(), error = %e, "DNS socket error");
            }
        }
    }
}

/// Waits for the first socket with something to read, without allocating.
async fn next_event(
    udp: &[UdpSocket],
    upstream: &[Option<UdpSocket>; 2],
    tcp: &[TcpListener],
    buf: &mut [u8],
) -> Event {
    poll_fn(|cx| {
        for (socket, udp) in udp.iter().enumerate() {
            let mut read = ReadBuf::new(buf);
            match udp.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => {
                    let len = read.filled().len();
                    return Poll::Ready(Event::Query { socket, len, from });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                Poll::Pending => {}
            }
        }
        for upstream in upstream.iter().flatten() {
            let mut read = ReadBuf::new(buf);
            match upstream.poll_recv_from(cx, &mut read) {
                Poll::Ready(Ok(from)) => {
                    let len = read.filled().len();
                    return Poll::Ready(Event::Upstream { len, from });
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                Poll::Pending => {}
            }
        }
        for listener in tcp {
            match listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, _))) => return Poll::Ready(Event::Accept(stream)),
                Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Sends a datagram, waiting for buffer space only if the socket has none right now.
async fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    let result = match socket.try_send_to(bytes, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => socket.send_to(bytes, to).await,
        other => other,
    };
    if let Err(e) = result {
        tracing::debug!(%to, error = %e, "DNS datagram not sent");
    }
}

impl Serve {
    async fn query(&mut self, socket: usize, query: &mut [u8], from: SocketAddr) {
        match self.resolver.answer(query, Transport::Udp, &mut self.out) {
            Outcome::Reply => send(&self.udp[socket], &self.out, from).await,
            Outcome::Forward(server) => self.forward(socket, query, from, server).await,
            Outcome::Drop => {}
        }
    }

    async fn forward(
        &mut self,
        socket: usize,
        query: &mut [u8],
        client: SocketAddr,
        server: SocketAddr,
    ) {
        if self.pending.len() >= MAX_PENDING {
            tracing::debug!(network = %self.resolver.network(), "too many DNS queries in flight; dropping one");
            return;
        }
        // A fresh random ID per forward makes a spoofed upstream answer hard to match.
        let id = loop {
            let id = rand::random::<u16>();
            if !self.pending.contains_key(&id) {
                break id;
            }
        };
        let Some(upstream) = self.upstream_socket(server) else {
            return;
        };
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        query[..2].copy_from_slice(&id.to_be_bytes());
        send(upstream, query, server).await;
        self.pending.insert(
            id,
            Pending {
                client,
                client_id,
                socket,
                server,
                sent: Instant::now(),
            },
        );
    }

    /// The forwarding socket for `server`'s address family, opened on first use.
    fn upstream_socket(&mut self, server: SocketAddr) -> Option<&UdpSocket> {
        let (slot, any) = match server {
            SocketAddr::V4(_) => (0, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            SocketAddr::V6(_) => (1, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        if self.upstream[slot].is_none() {
            let opened = std::net::UdpSocket::bind(SocketAddr::new(any, 0)).and_then(|socket| {
                socket.set_nonblocking(true)?;
                UdpSocket::from_std(socket)
            });
            match opened {
                Ok(socket) => self.upstream[slot] = Some(socket),
                Err(e) => {
                    tracing::warn!(network = %self.resolver.network(), %server, error = %e, "cannot open a socket to forward DNS queries");
                    return None;
                }
            }
        }
        self.upstream[slot].as_ref()
    }

    async fn upstream_reply(&mut self, reply: &mut [u8], from: SocketAddr) {
        if reply.len() < 12 {
            return;
        }
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        // Only the server we asked may answer; anything else is ignored.
        if self.pending.get(&id).is_none_or(|p| p.server != from) {
            return;
        }
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        reply[..2].copy_from_slice(&pending.client_id.to_be_bytes());
        send(&self.udp[pending.socket], reply, pending.client).await;
    }
}

/// Serves one TCP client: length-prefixed queries until it closes, idles or sends
/// something that is not a query.
async fn serve_tcp(mut stream: TcpStream, resolver: &Resolver) {
    let mut query = Vec::new();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(TCP_IDLE, read_message(&mut stream, &mut query)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let reply = match resolver.answer(&query, Transport::Tcp, &mut out) {
            Outcome::Reply => &out,
            Outcome::Forward(server) => {
                match tokio::time::timeout(FORWARD_TIMEOUT, forward_tcp(server, &query, &mut out))
                    .await
                {
                    Ok(Ok(())) => &out,
                    Ok(Err(e)) => {
                        tracing::debug!(network = %resolver.network(), %server, error = %e, "DNS query over TCP not forwarded");
                        return;
                    }
                    Err(_) => return,
                }
            }
            Outcome::Drop => return,
        };
        if write_message(&mut stream, reply).await.is_err() {
            return;
        }
    }
}

/// Reads one length-prefixed DNS message (RFC 1035 4.2.2) into `message`.
async fn read_message(stream: &mut TcpStream, message: &mut Vec<u8>) -> std::io::Result<()> {
    let len = stream.read_u16().await?;
    message.resize(usize::from(len), 0);
    stream.read_exact(message).await?;
    Ok(())
}

async fn write_message(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

/// Asks `server` over TCP, leaving its answer in `out`.
async fn forward_tcp(server: SocketAddr, query: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(server).await?;
    write_message(&mut upstream, query).await?;
    read_message(&mut upstream, out).await
}
