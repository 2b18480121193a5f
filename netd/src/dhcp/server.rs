//! The per-network server task: a UDP socket on port 67 bound to the bridge, feeding
//! [`Engine::handle`].
//!
//! Packets are handled in batches: the task takes whatever the socket has queued (up to
//! `MAX_BATCH`) and handles each. OFFERs, NAKs and INFORM replies go out at once. ACKs
//! wait for their bindings to be durable: the journal lines written since the last sync
//! are appended and `fdatasync`ed once for all of them (group commit), and the ACKs are
//! sent once that sync succeeded. A fast sync (tmpfs, an idle disk) runs on the task's
//! thread; after a slow one, syncs run on tokio's blocking pool while the task keeps
//! receiving and answering (the daemon's runtime has one thread: a disk stall must not
//! stall every network's DHCP and DNS), and the ACKs handled meanwhile share the next
//! sync. (The journal's compaction, a rewrite every few thousand lines, still runs on
//! the task's thread; the state dir is normally tmpfs.) So an ACK is never sent for a
//! binding that would not survive a crash, and under load one sync covers many ACKs. If
//! a sync fails, its ACKs are dropped (the clients retry) and the failure is logged.
//! Before an OFFER or ACK goes to an address its client has not taken yet, the kernel
//! is told that address's MAC (`Neighbours`), within a budget across the daemon; past
//! it, the reply is broadcast.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::IoSlice;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockProtocol, SockType,
    SockaddrIn, bind, sendmmsg, setsockopt, socket, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::engine::{Engine, Reply};
use super::{DhcpConfig, Error, LeaseInfo};
use crate::link::Link;
use crate::service::{ServiceTask, lock, unix_now};

/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;
/// A lease sync slower than this moves the next ones off the task's thread...
const INLINE_SYNC_LIMIT: Duration = Duration::from_millis(1);
/// ...for this long.
const OFFLOAD_TIME: Duration = Duration::from_secs(10);
/// Most replies per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// Most packets handled per commit.
const MAX_BATCH: usize = 256;
/// Receive queue limit of each socket (`SO_RCVBUF`): about 2,000 queued requests.
const RECV_QUEUE_BYTES: usize = 2 << 20;
/// Largest datagram read; DHCP messages are at most a few hundred bytes, this leaves room
/// for option-stuffed ones and truncates only garbage.
const RECV_BUFFER: usize = 4096;

/// A running DHCP server of one network. Dropping it, or [`DhcpServer::stop`], ends it.
#[derive(Debug)]
pub struct DhcpServer {
    engine: Arc<Mutex<Engine>>,
    task: ServiceTask,
}

impl DhcpServer {
    /// Binds UDP `0.0.0.0:67` on `config.interface` (`SO_BINDTODEVICE`, with
    /// `SO_REUSEADDR` so every network's server can bind the port), loads the leases from
    /// `lease_file` and spawns the serving task on the current tokio runtime.
    pub fn start(config: DhcpConfig, lease_file: PathBuf, link: Link) -> Result<DhcpServer, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            network: config.network.clone(),
        })?;
        let network = config.network.clone();
        let socket = open_socket(&config)?;
        let neighbours = Neighbours::of(&config, link)?;
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
        tracing::info!(%network, lease_file = %lease_file.display(), "DHCP server started");
        let served = Arc::clone(&engine);
        let task = ServiceTask::spawn(&runtime, network, "DHCP server", |stop| {
            serve(socket, served, neighbours, stop)
        });
        Ok(DhcpServer { engine, task })
    }

    /// Applies a new configuration (net-update) without dropping the leases.
    pub fn update(&self, config: DhcpConfig) {
        lock(&self.engine).update(config);
    }

    /// The bound, unexpired leases.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        lock(&self.engine).leases(unix_now())
    }

    /// A counter that moves whenever a binding may have changed (see the reader).
    pub fn changes(&self) -> Arc<AtomicU64> {
        lock(&self.engine).changes()
    }

    /// Reads the names of this server's bound, unexpired leases from elsewhere (the
    /// network's DNS server resolves them).
    pub fn name_reader(
        &self,
    ) -> impl Fn() -> Vec<(std::net::Ipv4Addr, String)> + Send + Sync + 'static {
        let engine = Arc::clone(&self.engine);
        move || lock(&engine).dns_names(unix_now())
    }

    /// Stops the task after the batch in progress and its commit.
    pub async fn stop(self) {
        self.task.stop().await;
    }
}

fn open_socket(config: &DhcpConfig) -> Result<std::net::UdpSocket, Error> {
    let fail = |step: &'static str| {
        move |e: nix::Error| Error::Socket {
            network: config.network.clone(),
            interface: config.interface.clone(),
            step,
            source: e.into(),
        }
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Udp,
    )
    .map_err(fail("create"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(fail("set SO_REUSEADDR"))?;
    setsockopt(&fd, sockopt::Broadcast, &true).map_err(fail("set SO_BROADCAST"))?;
    // Room for a burst of clients (or a slow lease sync) without drops. Only a limit:
    // the kernel charges memory for queued packets only. FORCE: above rmem_max as root;
    // without the privilege the default size stays, which still works.
    if setsockopt(&fd, sockopt::RcvBufForce, &RECV_QUEUE_BYTES).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &RECV_QUEUE_BYTES);
    }
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &OsString::from(&config.interface),
    )
    .map_err(fail("set SO_BINDTODEVICE"))?;
    let any = SockaddrIn::from(std::net::SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        SERVER_PORT,
    ));
    bind(fd.as_raw_fd(), &any).map_err(fail("bind port 67"))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// A lease sync running on the blocking pool.
type SyncTask = JoinHandle<SyncDone>;

/// A finished lease sync: the lines it wrote, how it went, and how long it took.
type SyncDone = (usize, std::io::Result<()>, Duration);

async fn serve(
    socket: UdpSocket,
    engine: Arc<Mutex<Engine>>,
    mut neighbours: Neighbours,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Replies that may go out now.
    let mut outbox: Vec<Reply> = Vec::new();
    // ACKs whose bindings are not durable yet, and the ACKs the sync in flight covers.
    let mut waiting: Vec<Reply> = Vec::new();
    let mut covered: Vec<Reply> = Vec::new();
    let mut sync: Option<SyncTask> = None;
    // After a slow sync, syncs leave the task's thread until this time.
    let mut offload_until: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ready = socket.readable() => match ready {
                Ok(()) => handle_batch(&socket, &engine, &mut outbox, &mut waiting),
                Err(e) => {
                    let network = lock(&engine).config().network.clone();
                    tracing::warn!(%network, error = %e, "DHCP socket failed");
                    tokio::time::sleep(crate::service::SOCKET_ERROR_PAUSE).await;
                }
            },
            done = wait_sync(&mut sync), if sync.is_some() => {
                sync = None;
                let took = finish_sync(&engine, done, &mut covered, &mut outbox);
                note_sync_time(&mut offload_until, took);
            }
        }
        if sync.is_none() {
            sync = start_sync(
                &engine,
                &mut offload_until,
                &mut waiting,
                &mut covered,
                &mut outbox,
            );
        }
        neighbours.introduce(&mut outbox).await;
        send(&socket, &mut outbox).await;
    }
    if let Some(task) = sync.take() {
        finish_sync(&engine, task.await, &mut covered, &mut outbox);
    }
    match lock(&engine).commit() {
        Ok(()) => outbox.append(&mut waiting),
        Err(e) => send_renewals_only(&e, &mut waiting, &mut outbox),
    }
    neighbours.introduce(&mut outbox).await;
    send(&socket, &mut outbox).await;
}

/// Handles what the socket has queued (up to [`MAX_BATCH`] packets): replies that may go
/// out at once land in `outbox`, ACKs that must wait for their lease sync in `waiting`.
/// Synchronous, so the receive buffer lives on the stack only meanwhile: an idle network
/// keeps none.
fn handle_batch(
    socket: &UdpSocket,
    engine: &Mutex<Engine>,
    outbox: &mut Vec<Reply>,
    waiting: &mut Vec<Reply>,
) {
    let mut buf = [0u8; RECV_BUFFER];
    let mut engine = lock(engine);
    let now = unix_now();
    for _ in 0..MAX_BATCH {
        match socket.try_recv_from(&mut buf) {
            Ok((len, _)) => {
                if let Some(reply) = engine.handle(&buf[..len], now) {
                    if reply.needs_commit {
                        waiting.push(reply);
                    } else {
                        outbox.push(reply);
                    }
                }
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::warn!(network = %engine.config().network, error = %e, "DHCP socket receive failed");
                }
                break;
            }
        }
    }
}

/// Syncs the journal lines written since the last sync (group commit: one `fdatasync`
/// for every ACK in `waiting`). While syncs are fast they run right here; for
/// [`OFFLOAD_TIME`] after one took longer than [`INLINE_SYNC_LIMIT`] (`offload_until`),
/// they run on the blocking pool while the task keeps receiving and answering, and the
/// ACKs move to `covered` until it is done. Returns the sync in flight, if any.
fn start_sync(
    engine: &Mutex<Engine>,
    offload_until: &mut Option<Instant>,
    waiting: &mut Vec<Reply>,
    covered: &mut Vec<Reply>,
    outbox: &mut Vec<Reply>,
) -> Option<SyncTask> {
    let pending = match lock(engine).begin_commit() {
        Ok(pending) => pending,
        Err(e) => {
            send_renewals_only(&e, waiting, outbox);
            return None;
        }
    };
    if pending.is_empty() {
        // Nothing to write, or already durable (in-memory leases, or rewritten whole).
        outbox.append(waiting);
        return None;
    }
    covered.append(waiting);
    let run = move || {
        let started = Instant::now();
        let result = pending.run();
        (pending.lines, result, started.elapsed())
    };
    if offload_until.is_some_and(|until| Instant::now() < until) {
        return Some(tokio::task::spawn_blocking(run));
    }
    let took = finish_sync(engine, Ok(run()), covered, outbox);
    note_sync_time(offload_until, took);
    None
}

async fn wait_sync(sync: &mut Option<SyncTask>) -> Result<SyncDone, tokio::task::JoinError> {
    match sync {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Releases the ACKs a finished sync covered, or drops them if it failed. Returns how
/// long the sync took.
fn finish_sync(
    engine: &Mutex<Engine>,
    done: Result<SyncDone, tokio::task::JoinError>,
    covered: &mut Vec<Reply>,
    outbox: &mut Vec<Reply>,
) -> Duration {
    let (lines, result, took) =
        done.unwrap_or_else(|e| (0, Err(std::io::Error::other(e)), Duration::ZERO));
    match lock(engine).finish_commit(lines, result) {
        Ok(()) => outbox.append(covered),
        Err(e) => send_renewals_only(&e, covered, outbox),
    }
    took
}

/// After a failed commit of `acks`' bindings: the new bindings' ACKs are not sent (the
/// guests ask again), renewals of a binding a guest holds are ([`Reply::renews`]).
fn send_renewals_only(error: &Error, acks: &mut Vec<Reply>, outbox: &mut Vec<Reply>) {
    let all = acks.len();
    acks.retain(|ack| ack.renews);
    tracing::error!(
        error = %crate::errors::error_chain(error),
        withheld = all - acks.len(),
        renewed = acks.len(),
        "DHCP leases not persisted: new bindings' ACKs are withheld, renewals' sent"
    );
    outbox.append(acks);
}

/// After a sync slower than [`INLINE_SYNC_LIMIT`], the next ones leave the task's
/// thread for [`OFFLOAD_TIME`]: a disk that stalled once tends to stall again.
fn note_sync_time(offload_until: &mut Option<Instant>, took: Duration) {
    if took > INLINE_SYNC_LIMIT {
        *offload_until = Some(Instant::now() + OFFLOAD_TIME);
    }
}

/// How long a neighbour entry the server made is taken to be in place: the kernel keeps
/// a confirmed one about 30 s, and a stale one goes on being used.
const NEIGHBOUR_KEPT: Duration = Duration::from_secs(20);
/// Most entries remembered as made; past it, the oldest are forgotten.
const MAX_NEIGHBOURS_KEPT: usize = 4096;
/// New neighbour entries the daemon makes a second, across its networks. The kernel's
/// IPv4 neighbour table is shared by every network namespace, holds 1,024 entries by
/// default (`gc_thresh3`), and cannot reclaim one younger than 5 s: a guest sending
/// DISCOVERs from made-up MACs must not fill it for the whole host. Past the budget,
/// replies go by broadcast, as they all did before.
const NEW_NEIGHBOURS_PER_SEC: f64 = 50.0;
/// A network's own share of it: one flooding network leaves the others the rest.
const NEW_NEIGHBOURS_PER_SEC_PER_NETWORK: f64 = 20.0;

/// The daemon's budget of [`NEW_NEIGHBOURS_PER_SEC`].
static DAEMON_NEIGHBOUR_BUDGET: Mutex<Budget> =
    Mutex::new(Budget::per_second(NEW_NEIGHBOURS_PER_SEC));

/// A rate: a second's worth at most, refilled as time passes (a token bucket).
#[derive(Debug)]
struct Budget {
    per_second: f64,
    left: f64,
    /// When `left` was counted; `None` before the first use (a full second's worth).
    counted: Option<Instant>,
}

impl Budget {
    const fn per_second(per_second: f64) -> Budget {
        Budget {
            per_second,
            left: per_second,
            counted: None,
        }
    }

    /// Takes one at `now`, if any is left.
    fn take(&mut self, now: Instant) -> bool {
        let counted = self.counted.unwrap_or(now);
        // Another network's task may have counted a later time since `now` was taken.
        let elapsed = now.saturating_duration_since(counted);
        self.left = (self.left + elapsed.as_secs_f64() * self.per_second).min(self.per_second);
        self.counted = Some(counted.max(now));
        let taken = self.left >= 1.0;
        if taken {
            self.left -= 1.0;
        }
        taken
    }

    /// Returns one taken but not spent.
    fn give_back(&mut self) {
        self.left = (self.left + 1.0).min(self.per_second);
    }
}

/// Where the kernel learns the hardware address of a client's offered address, so that
/// its reply goes to it alone.
#[derive(Debug)]
struct Neighbours {
    link: Link,
    interface: String,
    index: u32,
    /// Entries made lately: an OFFER and its ACK need one.
    made: HashMap<Ipv4Addr, ([u8; 6], Instant)>,
    /// Making one failed, and that was said: replies go by broadcast until one works.
    failing: bool,
    /// This network's share of the daemon's budget of new entries.
    budget: Budget,
}

impl Neighbours {
    fn of(config: &DhcpConfig, link: Link) -> Result<Neighbours, Error> {
        let index = nix::net::if_::if_nametoindex(config.interface.as_str()).map_err(|e| {
            Error::Socket {
                network: config.network.clone(),
                interface: config.interface.clone(),
                step: "look up the interface",
                source: e.into(),
            }
        })?;
        Ok(Neighbours {
            link,
            interface: config.interface.clone(),
            index,
            made: HashMap::new(),
            failing: false,
            budget: Budget::per_second(NEW_NEIGHBOURS_PER_SEC_PER_NETWORK),
        })
    }

    /// Makes the entries that `replies` to addresses their clients have not taken need;
    /// a reply whose entry cannot be made goes by broadcast instead.
    async fn introduce(&mut self, replies: &mut [Reply]) {
        let now = Instant::now();
        for reply in replies {
            let Some(mac) = reply.hardware else {
                continue;
            };
            let ip = *reply.to.ip();
            if self
                .made
                .get(&ip)
                .is_some_and(|&(made, at)| made == mac && now.duration_since(at) < NEIGHBOUR_KEPT)
            {
                continue;
            }
            let granted = self.budget.take(now);
            if !(granted && lock(&DAEMON_NEIGHBOUR_BUDGET).take(now)) {
                // The daemon's budget ran out: the network's is not spent.
                if granted {
                    self.budget.give_back();
                }
                reply.to = SocketAddrV4::new(Ipv4Addr::BROADCAST, super::engine::CLIENT_PORT);
                continue;
            }
            match self
                .link
                .set_neighbour(self.index, &self.interface, ip, mac)
                .await
            {
                Ok(()) => {
                    self.failing = false;
                    if self.made.len() >= MAX_NEIGHBOURS_KEPT {
                        self.made
                            .retain(|_, &mut (_, at)| now.duration_since(at) < NEIGHBOUR_KEPT);
                        if self.made.len() >= MAX_NEIGHBOURS_KEPT {
                            self.made.clear();
                        }
                    }
                    self.made.insert(ip, (mac, now));
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(interface = %self.interface, error = %e, "DHCP replies go by broadcast");
                        self.failing = true;
                    }
                    reply.to = SocketAddrV4::new(Ipv4Addr::BROADCAST, super::engine::CLIENT_PORT);
                }
            }
        }
    }
}

/// Sends the replies, many per system call (`sendmmsg`).
async fn send(socket: &UdpSocket, outbox: &mut Vec<Reply>) {
    let mut rest = &outbox[..];
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(SEND_BATCH)];
        match socket
            .async_io(Interest::WRITABLE, || send_many(socket.as_raw_fd(), chunk))
            .await
        {
            Ok(sent) => rest = &rest[sent.max(1)..],
            Err(e) => {
                // The first reply of the chunk failed (e.g. no route to a unicast
                // destination): skip it, the client retries.
                tracing::debug!(to = %chunk[0].to, error = %e, "DHCP reply not sent");
                rest = &rest[1..];
            }
        }
    }
    outbox.clear();
}

/// One `sendmmsg` of `replies`; returns how many went out.
fn send_many(fd: std::os::fd::RawFd, replies: &[Reply]) -> std::io::Result<usize> {
    let addresses: Vec<Option<SockaddrIn>> = replies
        .iter()
        .map(|reply| Some(SockaddrIn::from(reply.to)))
        .collect();
    let buffers: Vec<[IoSlice<'_>; 1]> = replies
        .iter()
        .map(|reply| [IoSlice::new(&reply.bytes)])
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(replies.len(), None);
    let sent = sendmmsg(
        fd,
        &mut headers,
        &buffers,
        &addresses,
        [] as [ControlMessage<'_>; 0],
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(sent.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed commit withholds new bindings' ACKs and sends renewals'.
    #[test]
    fn a_failed_commit_sends_the_renewals_only() {
        let ack = |renews: bool, last: u8| Reply {
            to: std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(192, 168, 77, last), 68),
            bytes: Vec::new(),
            needs_commit: true,
            renews,
            hardware: None,
        };
        let mut acks = vec![ack(false, 10), ack(true, 11), ack(false, 12)];
        let mut outbox = Vec::new();
        let full = Error::LeaseFile {
            network: "n".into(),
            path: "/run/kvnet/networks/n.leases".into(),
            action: "sync",
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        send_renewals_only(&full, &mut acks, &mut outbox);
        assert!(acks.is_empty());
        let sent: Vec<_> = outbox
            .iter()
            .map(|reply| reply.to.ip().octets()[3])
            .collect();
        assert_eq!(sent, [11]);
    }

    #[test]
    fn a_budget_gives_a_seconds_worth_and_refills_with_time() {
        let mut budget = Budget::per_second(50.0);
        let start = Instant::now();
        let granted = (0..200).filter(|_| budget.take(start)).count();
        assert_eq!(granted, 50);
        // A fifth of a second later, a fifth of a second's worth more.
        let later = start + Duration::from_millis(200);
        assert_eq!((0..200).filter(|_| budget.take(later)).count(), 10);
        // Unused budget does not pile up past a second's worth.
        let much_later = later + Duration::from_secs(60);
        assert_eq!((0..200).filter(|_| budget.take(much_later)).count(), 50);
        // An earlier time, taken before another task counted this one, earns nothing.
        assert_eq!((0..200).filter(|_| budget.take(later)).count(), 0);
        // One given back is there to take again, up to a second's worth.
        budget.give_back();
        assert_eq!((0..200).filter(|_| budget.take(much_later)).count(), 1);
        let mut full = Budget::per_second(2.0);
        full.give_back();
        assert_eq!((0..5).filter(|_| full.take(start)).count(), 2);
    }
}
