//! The per-network DHCPv6 task: a UDP socket on port 547 bound to the bridge and joined
//! to All_DHCP_Relay_Agents_and_Servers (`ff02::1:2`), feeding [`Engine::handle`].
//!
//! The socket is bound to `[::]`, not to the bridge's link-local address: that address
//! is tentative (duplicate address detection) for a moment after the bridge comes up,
//! and binding to it would fail then. Replies go to the client's link-local address
//! with the bridge as scope, so the kernel picks the bridge's link-local address as
//! source once it is usable, which it is long before a guest's first SOLICIT.
//!
//! IPV6_PKTINFO tells which messages were sent to a unicast address of the server:
//! they go to [`Engine::handle_unicast`], which answers UseMulticast or nothing.
//!
//! Packets are handled in batches; replies that confirm bindings are sent only after
//! the lease file was rewritten ([`Engine::commit`]), once per batch.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrIn6, recvmsg, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::engine::{Engine, Reply, SERVER_PORT};
use super::leases::LeaseFileWrite;
use super::{Dhcp6Config, Error, Lease6Info};
use crate::link::Link;
use crate::service::{ServiceTask, lock, unix_now};

/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 7.1).
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// Most packets handled per commit.
const MAX_BATCH: usize = 256;
/// Largest datagram read; larger ones are truncated garbage.
const RECV_BUFFER: usize = 4096;

/// A running DHCPv6 server of one network. Dropping it, or [`Dhcp6Server::stop`], ends it.
#[derive(Debug)]
pub struct Dhcp6Server {
    engine: Arc<Mutex<Engine>>,
    task: ServiceTask,
}

impl Dhcp6Server {
    /// Binds UDP `[::]:547` on `config.interface`, joins `ff02::1:2` there, loads the
    /// leases from `lease_file` and spawns the serving task on the current runtime.
    pub fn start(
        config: Dhcp6Config,
        lease_file: PathBuf,
        link: Link,
    ) -> Result<Dhcp6Server, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            network: config.network.clone(),
        })?;
        let network = config.network.clone();
        let (socket, index) = open_socket(&config)?;
        let socket = {
            let _enter = runtime.enter();
            UdpSocket::from_std(socket).map_err(|source| Error::Socket {
                network: config.network.clone(),
                interface: config.interface.clone(),
                step: "register with the runtime",
                source,
            })?
        };
        let engine = Engine::with_lease_file(config, &lease_file, unix_now())?;
        let engine = Arc::new(Mutex::new(engine));
        tracing::info!(%network, lease_file = %lease_file.display(), "DHCPv6 server started");
        let served = Arc::clone(&engine);
        let task = ServiceTask::spawn(&runtime, network, "DHCPv6 server", |stop| {
            serve(socket, served, Senders { link, index }, stop)
        });
        Ok(Dhcp6Server { engine, task })
    }

    /// Applies a new configuration (net-update) without dropping the leases.
    pub fn update(&self, config: Dhcp6Config) {
        lock(&self.engine).update(config);
    }

    /// The bound, unexpired leases.
    pub fn leases(&self) -> Vec<Lease6Info> {
        lock(&self.engine).leases(unix_now())
    }

    /// A counter that moves whenever a binding may have changed (see the reader).
    pub fn changes(&self) -> Arc<AtomicU64> {
        lock(&self.engine).changes()
    }

    /// Reads, from elsewhere (the network's DNS server), the names this server puts in
    /// DNS: those of its bound leases, and those of the `<host name= ip=>` reservations
    /// (dnsmasq serves a `dhcp-host` with name and address before its lease too).
    pub fn name_reader(&self) -> impl Fn() -> Vec<(Ipv6Addr, String)> + Send + Sync + 'static {
        let engine = Arc::clone(&self.engine);
        move || {
            let engine = lock(&engine);
            let mut names: Vec<(Ipv6Addr, String)> = engine
                .config()
                .hosts
                .iter()
                .filter_map(|host| Some((host.ip, host.name.clone()?)))
                .collect();
            let reserved: Vec<Ipv6Addr> = names.iter().map(|(ip, _)| *ip).collect();
            names.extend(
                engine
                    .dns_names(unix_now())
                    .into_iter()
                    .filter(|(ip, _)| !reserved.contains(ip)),
            );
            names
        }
    }

    /// Stops the task after the batch in progress.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}

/// The server's socket, and the ifindex of the interface it is bound to.
fn open_socket(config: &Dhcp6Config) -> Result<(std::net::UdpSocket, u32), Error> {
    let fail = |step: &'static str| {
        move |source: std::io::Error| Error::Socket {
            network: config.network.clone(),
            interface: config.interface.clone(),
            step,
            source,
        }
    };
    let socket = Socket::new(
        Domain::IPV6,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(fail("create"))?;
    socket.set_only_v6(true).map_err(fail("set IPV6_V6ONLY"))?;
    // Every network's server binds the port, each on its own bridge.
    socket
        .set_reuse_address(true)
        .map_err(fail("set SO_REUSEADDR"))?;
    socket
        .bind_device(Some(config.interface.as_bytes()))
        .map_err(fail("set SO_BINDTODEVICE"))?;
    let index = nix::net::if_::if_nametoindex(config.interface.as_str())
        .map_err(|e| fail("find the interface index")(e.into()))?;
    socket
        .join_multicast_v6(&ALL_DHCP_SERVERS, index)
        .map_err(fail("join ff02::1:2"))?;
    // The destination of each message, to tell unicast from multicast ones.
    nix::sys::socket::setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)
        .map_err(|e| fail("set IPV6_RECVPKTINFO")(e.into()))?;
    let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, SERVER_PORT, 0, 0);
    socket
        .bind(&SocketAddr::V6(any).into())
        .map_err(fail("bind port 547"))?;
    Ok((socket.into(), index))
}

/// Who sends a network's DHCPv6 messages: the bridge's ifindex, where their link-local
/// sources are looked up in the kernel's neighbour table.
struct Senders {
    link: Link,
    index: u32,
}

impl Senders {
    /// The MAC of each datagram's client, for those that may bind an address (SOLICIT,
    /// which does with rapid commit, REQUEST, RENEW, REBIND, sent to the servers'
    /// group): one question to the kernel per sender, none taking over
    /// [`NEIGHBOUR_TIMEOUT`], all of them over [`BATCH_NEIGHBOUR_TIMEOUT`].
    async fn macs_of(&self, batch: &[Datagram]) -> Vec<Option<[u8; 6]>> {
        const BINDING: [u8; 4] = [1, 3, 5, 6];
        let deadline = tokio::time::Instant::now() + BATCH_NEIGHBOUR_TIMEOUT;
        let mut known: Vec<(Ipv6Addr, Option<[u8; 6]>)> = Vec::new();
        let mut macs = Vec::with_capacity(batch.len());
        for datagram in batch {
            let from = *datagram.from.ip();
            let binding = !datagram.unicast
                && datagram
                    .bytes
                    .first()
                    .is_some_and(|kind| BINDING.contains(kind));
            let mac = if !binding {
                None
            } else if let Some((_, mac)) = known.iter().find(|(address, _)| *address == from) {
                *mac
            } else if tokio::time::Instant::now() >= deadline {
                None
            } else {
                let until = deadline.min(tokio::time::Instant::now() + NEIGHBOUR_TIMEOUT);
                let mac = tokio::time::timeout_at(until, self.link.neighbour_mac(self.index, from))
                    .await
                    .ok()
                    .flatten();
                known.push((from, mac));
                mac
            };
            macs.push(mac);
        }
        macs
    }
}

/// Longest a neighbour lookup may hold up a batch; a binding without it is listed
/// with the MAC its DUID or address carries.
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest the lookups of one batch may hold up its replies (a flood from made-up
/// addresses, a slow netlink socket): past it, the rest go without.
const BATCH_NEIGHBOUR_TIMEOUT: Duration = Duration::from_millis(200);

/// One datagram of a batch: its bytes, its sender, and whether it came to a unicast
/// address of the server.
struct Datagram {
    bytes: Vec<u8>,
    from: SocketAddrV6,
    unicast: bool,
}

async fn serve(
    socket: UdpSocket,
    engine: Arc<Mutex<Engine>>,
    senders: Senders,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ready = socket.readable() => match ready {
                Ok(()) => {
                    let batch = receive_batch(&socket, &engine, &mut buf);
                    let macs = senders.macs_of(&batch).await;
                    let (replies, changes) = handle_batch(&engine, batch, macs);
                    let replies = save_then_keep(&engine, replies, changes).await;
                    send(&socket, &engine, replies);
                }
                Err(e) => {
                    let network = lock(&engine).config().network.clone();
                    tracing::warn!(%network, error = %e, "DHCPv6 socket failed");
                    tokio::time::sleep(crate::service::SOCKET_ERROR_PAUSE).await;
                }
            },
        }
    }
}

/// Reads what is waiting, up to [`MAX_BATCH`] datagrams.
fn receive_batch(socket: &UdpSocket, engine: &Mutex<Engine>, buf: &mut [u8]) -> Vec<Datagram> {
    let mut batch = Vec::new();
    while batch.len() < MAX_BATCH {
        match receive(socket, buf) {
            Ok((len, from, unicast)) => batch.push(Datagram {
                bytes: buf[..len].to_vec(),
                from,
                unicast,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => {
                let network = lock(engine).config().network.clone();
                tracing::debug!(%network, error = %e, "DHCPv6 receive failed");
                break;
            }
        }
    }
    batch
}

/// Answers a batch, each datagram's sender at the MAC found for it: the replies, and the
/// bindings they confirm, to be saved before they are sent.
fn handle_batch(
    engine: &Mutex<Engine>,
    batch: Vec<Datagram>,
    macs: Vec<Option<[u8; 6]>>,
) -> (Vec<(SocketAddr, Reply)>, Option<LeaseFileWrite>) {
    let mut replies: Vec<(SocketAddr, Reply)> = Vec::new();
    let mut engine = lock(engine);
    let now = unix_now();
    for (datagram, mac) in batch.iter().zip(macs) {
        let from = *datagram.from.ip();
        let reply = if datagram.unicast {
            engine.handle_unicast(&datagram.bytes, from, now)
        } else {
            engine.handle_from(&datagram.bytes, from, mac, now)
        };
        if let Some(reply) = reply {
            replies.push((SocketAddr::V6(datagram.from), reply));
        }
    }
    let changes = if replies.iter().any(|(_, reply)| reply.needs_commit) {
        engine.take_changes(now)
    } else {
        None
    };
    (replies, changes)
}

/// Writes `changes` to the lease file on a blocking thread (a whole file and an fsync:
/// one network's flood of bindings must not hold up every network's DHCP and DNS), then
/// returns the replies that may go: those confirming a binding only if it was saved.
async fn save_then_keep(
    engine: &Mutex<Engine>,
    mut replies: Vec<(SocketAddr, Reply)>,
    changes: Option<LeaseFileWrite>,
) -> Vec<(SocketAddr, Reply)> {
    let Some(changes) = changes else {
        return replies;
    };
    let saved = match tokio::task::spawn_blocking(move || changes.write()).await {
        Ok(result) => result.map_err(|e| crate::errors::error_chain(&e)),
        Err(e) => Err(format!("the lease file's writer failed: {e}")),
    };
    if let Err(e) = saved {
        lock(engine).write_failed();
        let all = replies.len();
        // Renewals still go: the guests keep the addresses they use.
        replies.retain(|(_, reply)| !reply.needs_commit || reply.renews);
        tracing::error!(error = %e, withheld = all - replies.len(), "DHCPv6 bindings not saved; replies with new bindings are withheld, renewals sent");
    }
    replies
}

fn send(socket: &UdpSocket, engine: &Mutex<Engine>, replies: Vec<(SocketAddr, Reply)>) {
    if replies.is_empty() {
        return;
    }
    let network = lock(engine).config().network.clone();
    for (to, reply) in replies {
        if let Err(e) = socket.try_send_to(&reply.bytes, to) {
            tracing::debug!(%network, %to, error = %e, "DHCPv6 reply not sent");
        }
    }
}

/// Reads one datagram into `buf`: its length, its sender, and whether it was sent to a
/// unicast address of the server (a datagram without IPV6_PKTINFO counts as multicast).
fn receive(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddrV6, bool)> {
    socket.try_io(tokio::io::Interest::READABLE, || {
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let mut control = nix::cmsg_space!(nix::libc::in6_pktinfo);
        let message = recvmsg::<SockaddrIn6>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::empty(),
        )?;
        let from = message
            .address
            .ok_or_else(|| std::io::Error::other("a datagram without a source address"))?;
        let unicast = message.cmsgs()?.any(|cmsg| {
            matches!(cmsg, ControlMessageOwned::Ipv6PacketInfo(info)
                if !Ipv6Addr::from(info.ipi6_addr.s6_addr).is_multicast())
        });
        Ok((message.bytes, SocketAddrV6::from(from), unicast))
    })
}
