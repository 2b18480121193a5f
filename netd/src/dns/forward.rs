//! Asking upstream servers what the network does not know: one forwarded query's way
//! through its servers, over UDP (a task of its own) or TCP (in the client's connection
//! task), and the servers' recent failures, which decide the order they are asked in.
//!
//! libvirt has dnsmasq keep `strict-order`: the servers are asked in their configured
//! order (resolv.conf, or the `<forwarder>`s), the next one after [`ATTEMPT_TIMEOUT`] of
//! silence or at once after a SERVFAIL or REFUSED; a late answer from a server asked
//! before still counts. A server that failed [`SUSPECT_AFTER`] times in a row is asked
//! after the others for [`SUSPECT_FOR`]. Over UDP, once every server asked has been
//! silent past its attempt, the first of them is asked again ([`RESEND_AFTER`]), as
//! dnsmasq sends a query again when its client retries, until [`FORWARD_TIMEOUT`].
//!
//! Strict order means the earlier server's word counts: a VPN's resolver listed first
//! may be slow and still be the only one that knows a name the public servers after it
//! deny. So over UDP a negative answer (NXDOMAIN, or no records) from a server waits
//! for the servers configured before it that are being asked, up to [`HOLD_FOR`] after
//! each was asked: a slow one still has its say, a dead one costs a denial two seconds,
//! not the client's whole timeout. A suspect server is not waited for. A negative
//! answer given while a server configured before it was not heard is not cached, over
//! UDP or TCP, so that one lost answer does not deny a name to every guest. A server no
//! route leads to counts as heard: over UDP one our own routing table has no route to,
//! over TCP also one a router answers for with an ICMP host or network unreachable (a
//! UDP socket is not told of those).
//!
//! A server whose host says nothing listens on its port (ICMP port unreachable over
//! UDP, a refused connection over TCP) is passed over at once, not after a second of
//! silence, and is not heard; one a firewall rejects (administratively prohibited) is
//! passed over at once and counts as heard.
//!
//! Every answer passed on has its AD bit cleared: as dnsmasq without `proxy-dnssec`
//! (which libvirt does not set), kvnetd validates nothing, so it vouches for nothing.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::{TcpStream, UdpSocket};

use super::query_log::{Logged, QueryLog};
use super::resolver::{Resolver, is_reply_to, is_upstream_failure};
use super::server::{RECV_BUFFER, read_message, send, write_message};

/// A forwarded query unanswered this long is forgotten. Longer than a client's first
/// wait (glibc's 5 s), so that a reply from a slow upstream still reaches the client's
/// retry, which joins the forward, and is cached, as dnsmasq keeps its forwards.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// When every server asked has been silent past its attempt, the first of them is asked
/// again this long after the last query went out, then after twice and four times as
/// long: a lost query or reply costs a second, not the whole forward (dnsmasq sends the
/// query again on each retry of its client).
const RESEND_AFTER: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];
/// An upstream server silent this long is passed over for the next one, if any (the
/// last one asked gets what remains of [`FORWARD_TIMEOUT`]).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// A server silent past its attempt over UDP, or unreachable, this many times in a row
/// is asked after the others for [`SUSPECT_FOR`]. One slow answer does not demote it (a
/// VPN's resolver may be slow for a name and still be the only one that knows it), and
/// its late answer clears the count.
const SUSPECT_AFTER: u32 = 3;
/// How long a suspect server is asked after the others. One that answers, even SERVFAIL
/// or REFUSED about one name, is trusted again.
const SUSPECT_FOR: Duration = Duration::from_secs(30);
/// How long after a server was asked a negative answer from a server after it waits for
/// its answer.
const HOLD_FOR: Duration = Duration::from_secs(2);
/// The header's AD (authentic data) bit, in its fourth byte.
const AUTHENTIC_DATA: u8 = 0x20;

/// Upstream servers that failed lately, shared by a network's UDP and TCP paths.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Each failing server's failures in a row, and when the last one was.
    failures: Mutex<HashMap<SocketAddr, (u32, Instant)>>,
}

impl Health {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (u32, Instant)>> {
        // A map of counts and timestamps is consistent whatever panicked while holding it.
        crate::service::lock(&self.failures)
    }

    /// `servers` in the order to ask them: those not suspect first, each group in
    /// configured order.
    pub(super) fn order(&self, servers: &[SocketAddr]) -> Vec<SocketAddr> {
        self.plan_at(servers, Instant::now())
            .into_iter()
            .map(|(server, _)| server)
            .collect()
    }

    /// [`Health::order`] as of `now`, each server with whether it is suspect.
    fn plan_at(&self, servers: &[SocketAddr], now: Instant) -> Vec<(SocketAddr, bool)> {
        let mut failures = self.failures();
        failures.retain(|_, (_, last)| now.saturating_duration_since(*last) < SUSPECT_FOR);
        let mut plan: Vec<(SocketAddr, bool)> = servers
            .iter()
            .map(|server| {
                let suspect = failures
                    .get(server)
                    .is_some_and(|(count, _)| *count >= SUSPECT_AFTER);
                (*server, suspect)
            })
            .collect();
        // Stable: each group keeps the configured order.
        plan.sort_by_key(|&(_, suspect)| suspect);
        plan
    }

    fn failed(&self, network: &str, server: SocketAddr) {
        let mut failures = self.failures();
        let (count, last) = failures.entry(server).or_insert((0, Instant::now()));
        *count = count.saturating_add(1);
        *last = Instant::now();
        if *count == SUSPECT_AFTER {
            tracing::info!(network, %server, "upstream DNS server not answering; asking the others first");
        }
    }

    fn answered(&self, server: SocketAddr) {
        let mut failures = self.failures();
        if !failures.is_empty() {
            failures.remove(&server);
        }
    }
}

/// What became of a query forwarded over UDP.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Forwarded {
    /// An upstream's reply, AD bit cleared, still with the forward's ID and the letter
    /// case the upstream gave the question.
    Reply(Vec<u8>),
    /// It could be sent to no server (the host lost its route to them): the client
    /// gets REFUSED at once, as from dnsmasq.
    NotSent,
    /// No server answered in time: the client gets nothing and asks again.
    Silent,
}

/// Whether an upstream's `reply` denies the name or the type: NXDOMAIN, or NOERROR
/// without answers, and not cut short (TC: the client asks again over TCP).
fn is_negative(reply: &[u8]) -> bool {
    let truncated = reply.get(2).is_some_and(|flags| flags & 0x02 != 0);
    match (reply.get(3).map(|flags| flags & 0x0f), reply.get(6..8)) {
        _ if truncated => false,
        (Some(3), _) => true,
        (Some(0), Some(answers)) => answers == [0, 0],
        _ => false,
    }
}

/// Where one server of a UDP forward stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stand {
    NotAsked,
    /// Asked at this time; no answer yet.
    Waiting(tokio::time::Instant),
    Answered,
    /// No route leads to it (a VPN's resolver while the VPN is down): it has had its
    /// say.
    Unreachable,
    /// It could not be asked for another reason (a shortage here): not heard.
    Unsent,
    /// Its host said nothing listens on its port (ICMP port unreachable): not heard, and
    /// if no server does better the client gets silence, not REFUSED, so that it asks
    /// again, by when a resolver that was restarting may be back.
    Closed,
}

/// One server of a UDP forward.
#[derive(Debug)]
struct Slot {
    server: SocketAddr,
    /// Its place in the configured order.
    rank: usize,
    suspect: bool,
    stand: Stand,
    /// Its attempt ran out and the next server was asked (its failure is counted).
    passed_over: bool,
    /// When it was first asked: a resend does not make a dead server's hold on the
    /// denials of the servers after it start again.
    first_asked: Option<tokio::time::Instant>,
}

/// The state of one query forwarded over UDP.
struct UdpForward<'a> {
    network: &'a str,
    query: &'a [u8],
    health: &'a Health,
    /// In the order they are asked in.
    slots: Vec<Slot>,
    sockets: ForwardSockets,
    deadline: tokio::time::Instant,
    /// A SERVFAIL or REFUSED passed over for the next server: the answer if no other
    /// server gives a better one.
    failure: Option<Vec<u8>>,
    /// A negative answer waiting for the servers before its own, and its server's rank.
    held: Option<(usize, Vec<u8>)>,
    /// With `log-queries`: the log, and the query's handle.
    log: Option<(&'a QueryLog, Logged)>,
    /// When a query last went out, and how many times a silent server was asked again.
    last_sent: tokio::time::Instant,
    resends: usize,
}

impl UdpForward<'_> {
    /// Asks the server of `slot`.
    fn ask(&mut self, slot: usize) {
        let server = self.slots[slot].server;
        let stand = match self.sockets.socket_for(server) {
            Ok(socket) => match send(socket, self.query, server) {
                Ok(_) => {
                    if let Some((log, logged)) = self.log {
                        log.forwarded(logged, self.query, server);
                    }
                    self.last_sent = tokio::time::Instant::now();
                    self.slots[slot].first_asked.get_or_insert(self.last_sent);
                    Stand::Waiting(self.last_sent)
                }
                Err(e) => self.not_sent(server, &std::io::Error::from(e)),
            },
            // No route to it: its failure, as a send's, so that it goes last, and no
            // warning per query.
            Err(SocketError::Connect(e)) => {
                tracing::debug!(network = self.network, %server, error = %e, "upstream DNS server unreachable");
                self.not_sent(server, &e)
            }
            Err(SocketError::Open(e)) => {
                if SOCKET_WARNINGS.due() {
                    tracing::warn!(network = self.network, %server, error = %e, "cannot open a socket to forward DNS queries (said at most every 10 s)");
                }
                Stand::Unsent
            }
        };
        self.slots[slot].stand = stand;
    }

    /// Counts the failure to send to `server` against it, unless the host ran short;
    /// returns where it stands.
    fn not_sent(&self, server: SocketAddr, error: &std::io::Error) -> Stand {
        if !is_local_shortage(error) {
            self.health.failed(self.network, server);
        }
        if is_unroutable(error) {
            Stand::Unreachable
        } else {
            Stand::Unsent
        }
    }

    /// Until when a negative answer from the server ranked `rank` must wait for the
    /// servers configured before it, as of `now`; `None` if it need not.
    fn held_until(&self, rank: usize, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.slots
            .iter()
            .filter(|slot| slot.rank < rank && !slot.suspect)
            .filter_map(|slot| match (slot.stand, slot.first_asked) {
                (Stand::Waiting(_), Some(since)) => Some((since + HOLD_FOR).min(self.deadline)),
                _ => None,
            })
            .filter(|&until| until > now)
            .max()
    }

    /// Whether every server configured before `rank` has had its say.
    fn heard_all_before(&self, rank: usize) -> bool {
        self.slots
            .iter()
            .filter(|slot| slot.rank < rank)
            .all(|slot| matches!(slot.stand, Stand::Answered | Stand::Unreachable))
    }

    /// Whether a server is being asked whose attempt has not run out.
    fn is_attempting(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| matches!(slot.stand, Stand::Waiting(_)) && !slot.passed_over)
    }

    /// Counts as failed the servers whose attempt ran out by `now`; returns the soonest
    /// end of an attempt still running.
    fn pass_over_the_silent(&mut self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let mut soonest = None;
        for slot in &mut self.slots {
            let Stand::Waiting(since) = slot.stand else {
                continue;
            };
            if slot.passed_over {
                continue;
            }
            let ends = since + ATTEMPT_TIMEOUT;
            if ends <= now {
                slot.passed_over = true;
                self.health.failed(self.network, slot.server);
            } else {
                soonest =
                    Some(soonest.map_or(ends, |soonest: tokio::time::Instant| soonest.min(ends)));
            }
        }
        soonest
    }
}

/// What a UDP forward does next ([`UdpForward::next_step`]).
enum Step {
    /// Ask the server of this slot (again, if it was asked).
    Ask(usize),
    /// Wait for a reply until then.
    WaitUntil(tokio::time::Instant),
    /// Nothing more to wait for.
    Done,
}

impl UdpForward<'_> {
    /// What to do at `now`: ask the next server while none is being asked (and no
    /// negative answer is held for the servers before its own), else wait for a reply
    /// until the next attempt or hold runs out, or stop.
    fn next_step(&mut self, now: tokio::time::Instant) -> Step {
        if now >= self.deadline {
            return Step::Done;
        }
        let attempt_ends = self.pass_over_the_silent(now);
        let mut resend_at = None;
        // A held answer is not bettered by the servers configured after its own.
        if !self.is_attempting() && self.held.is_none() {
            if let Some(next) = self
                .slots
                .iter()
                .position(|slot| slot.stand == Stand::NotAsked)
            {
                return Step::Ask(next);
            }
            // Every server asked, and those not heard from silent past their attempt:
            // the first of them again, on the backoff of `RESEND_AFTER`.
            let Some(silent) = self
                .slots
                .iter()
                .position(|slot| matches!(slot.stand, Stand::Waiting(_)))
            else {
                return Step::Done;
            };
            if let Some(at) = RESEND_AFTER
                .get(self.resends)
                .map(|after| self.last_sent + *after)
            {
                if now >= at {
                    self.resends += 1;
                    return Step::Ask(silent);
                }
                resend_at = Some(at);
            }
        }
        let mut wake = self.deadline;
        if let Some(at) = resend_at {
            wake = wake.min(at);
        }
        if let Some((rank, _)) = &self.held {
            match self.held_until(*rank, now) {
                Some(until) => wake = wake.min(until),
                None => return Step::Done,
            }
        }
        if let Some(ends) = attempt_ends {
            wake = wake.min(ends);
        }
        Step::WaitUntil(wake)
    }

    /// The servers being asked.
    fn waiting(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .filter(|slot| matches!(slot.stand, Stand::Waiting(_)))
            .map(|slot| slot.server)
            .collect()
    }

    /// Takes `reply` from `from`, a server being asked; returns the answer to pass on
    /// if it ends the forward. A SERVFAIL or REFUSED is kept in case no server does
    /// better; a negative answer waits for the servers configured before its own
    /// ([`UdpForward::held_until`]).
    fn on_reply(
        &mut self,
        resolver: &Resolver,
        from: SocketAddr,
        mut reply: Vec<u8>,
    ) -> Option<Forwarded> {
        let at = self
            .slots
            .iter()
            .position(|slot| slot.server == from && matches!(slot.stand, Stand::Waiting(_)))?;
        self.slots[at].stand = Stand::Answered;
        self.health.answered(from);
        let rank = self.slots[at].rank;
        if let Some(flags) = reply.get_mut(3) {
            *flags &= !AUTHENTIC_DATA;
        }
        if is_upstream_failure(&reply) {
            self.failure = Some(reply);
            return None;
        }
        if is_negative(&reply) {
            if self.held_until(rank, tokio::time::Instant::now()).is_some() {
                if self.held.as_ref().is_none_or(|(kept, _)| rank < *kept) {
                    self.held = Some((rank, reply));
                }
                return None;
            }
            if self.heard_all_before(rank) {
                resolver.remember(self.query, &reply);
            }
        } else {
            resolver.remember(self.query, &reply);
        }
        Some(Forwarded::Reply(reply))
    }

    /// Takes the ICMP error `server`'s host sent back for the query (its port is closed,
    /// or a firewall rejects it): the server will not answer, so the next one is asked
    /// at once instead of after its attempt runs out.
    fn on_error(&mut self, server: SocketAddr, error: &std::io::Error) {
        let Some(slot) = self
            .slots
            .iter_mut()
            .find(|slot| slot.server == server && matches!(slot.stand, Stand::Waiting(_)))
        else {
            return;
        };
        tracing::debug!(network = self.network, %server, %error, "upstream DNS server refused the query");
        // A server passed over has had its failure counted already.
        let counted = slot.passed_over;
        slot.stand = if is_unroutable(error) {
            Stand::Unreachable
        } else {
            Stand::Closed
        };
        if !counted {
            self.health.failed(self.network, server);
        }
    }

    /// The answer once no reply ended the forward: the held negative one, else the
    /// failure kept, else silence (the servers asked that stayed silent counted as
    /// failing, or that said their port is closed), or `NotSent` if no server could be
    /// asked at all.
    fn finish(mut self, resolver: &Resolver) -> Forwarded {
        if let Some((rank, reply)) = self.held.take() {
            if self.heard_all_before(rank) {
                resolver.remember(self.query, &reply);
            }
            return Forwarded::Reply(reply);
        }
        if let Some(failure) = self.failure.take() {
            return Forwarded::Reply(failure);
        }
        if self.slots.iter().any(|slot| {
            matches!(
                slot.stand,
                Stand::Waiting(_) | Stand::Answered | Stand::Closed
            )
        }) {
            for slot in &self.slots {
                if matches!(slot.stand, Stand::Waiting(_)) && !slot.passed_over {
                    self.health.failed(self.network, slot.server);
                }
            }
            return Forwarded::Silent;
        }
        tracing::debug!(
            network = self.network,
            "DNS query refused: it could be sent to no upstream server"
        );
        Forwarded::NotSent
    }
}

/// Asks `servers` (in configured order) about `query` (a client's query with our ID),
/// as the module describes, and caches what may be kept. `logged`: the query's
/// handle, with `log-queries`.
pub(super) async fn forward_udp(
    resolver: &Resolver,
    query: &[u8],
    servers: &[SocketAddr],
    health: &Health,
    logged: Option<Logged>,
) -> Forwarded {
    let plan = health.plan_at(servers, Instant::now());
    let mut forward = UdpForward {
        network: resolver.network(),
        query,
        health,
        slots: plan
            .into_iter()
            .map(|(server, suspect)| Slot {
                server,
                rank: servers
                    .iter()
                    .position(|&configured| configured == server)
                    .unwrap_or(usize::MAX),
                suspect,
                stand: Stand::NotAsked,
                passed_over: false,
                first_asked: None,
            })
            .collect(),
        sockets: ForwardSockets::default(),
        deadline: tokio::time::Instant::now() + FORWARD_TIMEOUT,
        failure: None,
        held: None,
        log: resolver.query_log().zip(logged),
        last_sent: tokio::time::Instant::now(),
        resends: 0,
    };
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match forward.next_step(tokio::time::Instant::now()) {
            Step::Ask(slot) => forward.ask(slot),
            Step::Done => break,
            Step::WaitUntil(wake) => {
                let waiting = forward.waiting();
                let wait = forward.sockets.receive_reply(query, &waiting, &mut buf);
                match tokio::time::timeout_at(wake, wait).await {
                    Ok(Received::Reply(len, from)) => {
                        if let Some(answer) = forward.on_reply(resolver, from, buf[..len].to_vec())
                        {
                            return answer;
                        }
                    }
                    Ok(Received::Error(server, error)) => forward.on_error(server, &error),
                    Err(_) => {}
                }
            }
        }
    }
    forward.finish(resolver)
}

/// Whether `error` is the host running short (of descriptors, buffers or memory), not
/// the server failing.
fn is_local_shortage(error: &std::io::Error) -> bool {
    use nix::errno::Errno;
    error.raw_os_error().is_some_and(|code| {
        [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOBUFS,
            Errno::ENOMEM,
            Errno::EADDRNOTAVAIL,
        ]
        .contains(&Errno::from_raw(code))
    })
}

/// Whether `error` says no route leads to the server, or a firewall or a `prohibit`
/// route refuses the way (ICMP administratively prohibited comes as EHOSTUNREACH over
/// IPv4 and EACCES over IPv6): it has had its say (see [`Stand::Unreachable`]), over UDP
/// and TCP alike.
fn is_unroutable(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NetworkUnreachable
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::PermissionDenied
    )
}

/// At most one warning every 10 s: a daemon out of descriptors would otherwise log one
/// per forwarded query, at the pace guests set.
struct Throttle(std::sync::atomic::AtomicU64);

impl Throttle {
    const EVERY_SECS: u64 = 10;

    /// Whether to warn now (and not again for a while).
    fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let last = self.0.load(Ordering::Relaxed);
        // A clock set back does not silence it for as long.
        (now >= last.saturating_add(Self::EVERY_SECS) || now < last)
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

static SOCKET_WARNINGS: Throttle = Throttle(std::sync::atomic::AtomicU64::new(0));

/// What a forward's sockets received.
enum Received {
    /// A reply of this length, from this server.
    Reply(usize, SocketAddr),
    /// The ICMP error this server's host sent back for an earlier query.
    Error(SocketAddr, std::io::Error),
}

/// Why a forward has no socket for a server.
enum SocketError {
    /// None could be opened (out of descriptors, say).
    Open(std::io::Error),
    /// The server cannot be reached from here (no route).
    Connect(std::io::Error),
}

/// The sockets one forwarded query leaves from: one per server asked, bound to port 0
/// so the kernel gives it a random ephemeral port, connected to its server, and closed
/// with the forward. Connected, it takes datagrams from that server only: the kernel
/// answers anyone else as it would for a closed port, so a forger cannot even find out
/// which ports are open (the side channel of SAD DNS).
#[derive(Default)]
struct ForwardSockets {
    by_server: Vec<(SocketAddr, UdpSocket)>,
}

impl ForwardSockets {
    /// The socket for `server`, opened on first use.
    fn socket_for(&mut self, server: SocketAddr) -> Result<&UdpSocket, SocketError> {
        let at = match self.by_server.iter().position(|(to, _)| *to == server) {
            Some(at) => at,
            None => {
                let any = match server {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))
                    .map_err(SocketError::Open)?;
                socket.connect(server).map_err(SocketError::Connect)?;
                socket.set_nonblocking(true).map_err(SocketError::Open)?;
                let socket = UdpSocket::from_std(socket).map_err(SocketError::Open)?;
                self.by_server.push((server, socket));
                self.by_server.len() - 1
            }
        };
        Ok(&self.by_server[at].1)
    }

    /// Waits for a reply to `query` from one of `asked`, its length in `buf` and its
    /// sender, or for the ICMP error one of them sent back. Datagrams from anyone else,
    /// or that do not answer `query` (ID or question differ), are dropped.
    async fn receive_reply(&self, query: &[u8], asked: &[SocketAddr], buf: &mut [u8]) -> Received {
        loop {
            let (server, socket) = self.next_ready().await;
            let received = match take_icmp_error(socket) {
                Some(error) => Received::Error(server, error),
                None => match socket.try_recv_from(buf) {
                    Ok((len, from)) => Received::Reply(len, from),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => Received::Error(server, e),
                },
            };
            match received {
                Received::Reply(_, from) if !asked.contains(&from) => {
                    tracing::debug!(%from, "DNS reply from a server not asked; ignored");
                }
                Received::Reply(len, from) if !is_reply_to(query, &buf[..len]) => {
                    tracing::debug!(%from, "DNS reply not matching the query's ID or question; ignored");
                }
                Received::Error(server, _) if !asked.contains(&server) => {}
                received => return received,
            }
        }
    }

    /// The first socket with a datagram or an error to take, and its server. Waits for
    /// errors too: tokio wakes a reader for datagrams only, and an ICMP error alone
    /// makes a socket ready for nothing else.
    async fn next_ready(&self) -> (SocketAddr, &UdpSocket) {
        let readies = self.by_server.iter().map(|(server, socket)| {
            Box::pin(async move {
                if let Err(e) = socket.ready(Interest::READABLE | Interest::ERROR).await {
                    // The runtime is going away: nothing will come, and asking again
                    // at once would spin.
                    tracing::debug!(%server, error = %e, "DNS forward socket no longer polled");
                    std::future::pending::<()>().await;
                }
                (*server, socket)
            })
        });
        if self.by_server.is_empty() {
            // Nothing to wait for (select_all panics on none): the caller's timeout ends it.
            return std::future::pending().await;
        }
        let (first, _, _) = futures::future::select_all(readies).await;
        first
    }
}

/// The ICMP error `socket`'s server sent back, if one is pending. With none, clears the
/// socket's error readiness, so that waiting for it again waits.
fn take_icmp_error(socket: &UdpSocket) -> Option<std::io::Error> {
    socket
        .try_io(Interest::ERROR, || match socket.take_error() {
            Ok(Some(error)) => Ok(error),
            Ok(None) => Err(std::io::ErrorKind::WouldBlock.into()),
            Err(e) => Ok(e),
        })
        .ok()
}

/// Asks `servers` over TCP in turn, leaving the first usable answer in `out`, its AD
/// bit cleared: each but the last gets [`ATTEMPT_TIMEOUT`], all together
/// [`FORWARD_TIMEOUT`]. Returns whether the answer may be cached: not a negative one
/// while a server configured before the one that gave it was not heard (passed over,
/// or asked last as suspect and not yet asked). `log`: with `log-queries`, the log and
/// the query's handle.
pub(super) async fn forward_tcp(
    network: &str,
    servers: &[SocketAddr],
    health: &Health,
    query: &[u8],
    out: &mut Vec<u8>,
    log: Option<(&QueryLog, Logged)>,
) -> std::io::Result<bool> {
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    let order = health.order(servers);
    let rank = |server: SocketAddr| servers.iter().position(|&s| s == server);
    let mut heard = vec![false; servers.len()];
    let mut failure = std::io::Error::from(std::io::ErrorKind::TimedOut);
    for (at, &server) in order.iter().enumerate() {
        let last = at + 1 == order.len();
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        let until = if last {
            deadline
        } else {
            deadline.min(now + ATTEMPT_TIMEOUT)
        };
        if let Some((log, logged)) = log {
            log.forwarded(logged, query, server);
        }
        match tokio::time::timeout_at(until, ask_tcp(server, query, out)).await {
            Ok(Ok(())) => {
                health.answered(server);
                let rank = rank(server).unwrap_or(usize::MAX);
                if let Some(heard) = heard.get_mut(rank) {
                    *heard = true;
                }
                if last || !is_upstream_failure(out) {
                    if let Some(flags) = out.get_mut(3) {
                        *flags &= !AUTHENTIC_DATA;
                    }
                    let heard_all_before = heard.iter().take(rank).all(|&heard| heard);
                    return Ok(heard_all_before || !is_negative(out));
                }
                continue;
            }
            Ok(Err(e)) => {
                // Out of descriptors or memory here is no fault of the server's.
                if !is_local_shortage(&e) {
                    health.failed(network, server);
                }
                if is_unroutable(&e)
                    && let Some(heard) = rank(server).and_then(|rank| heard.get_mut(rank))
                {
                    *heard = true;
                }
                failure = e;
            }
            // Not counted against it: the connection is dropped, so an answer that
            // comes late, which over UDP clears the server, is never heard here, and
            // a guest's slow lookups must not demote a server that is merely slow.
            Err(_) => failure = std::io::Error::from(std::io::ErrorKind::TimedOut),
        }
    }
    Err(failure)
}

/// Asks `server` over TCP, leaving its answer in `out`: a message that does not answer
/// `query` (ID or question differ, or it is no response) is an error, as over UDP.
async fn ask_tcp(server: SocketAddr, query: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut upstream = TcpStream::connect(server).await?;
    write_message(&mut upstream, query).await?;
    read_message(&mut upstream, out).await?;
    if !is_reply_to(query, out) {
        out.clear();
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the reply from {server} does not answer the query (ID or question differ)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortages_here_are_told_from_a_server_failing_and_warned_about_sparingly() {
        let error = |code: i32| std::io::Error::from_raw_os_error(code);
        assert!(is_local_shortage(&error(nix::libc::EMFILE)));
        assert!(is_local_shortage(&error(nix::libc::ENOBUFS)));
        assert!(!is_local_shortage(&error(nix::libc::ECONNREFUSED)));
        assert!(!is_local_shortage(&std::io::Error::from(
            std::io::ErrorKind::TimedOut
        )));
        let throttle = Throttle(std::sync::atomic::AtomicU64::new(0));
        assert!(throttle.due());
        assert!(!throttle.due(), "warned twice within 10 s");
    }

    /// A silent first server holds a later server's denial 2 s from when it was first
    /// asked: asking it again does not start the hold over (a denial at 4.5 s would
    /// then have waited past glibc's 5 s).
    #[tokio::test(start_paused = true)]
    async fn a_resend_does_not_start_a_silent_servers_hold_over() {
        let health = Health::default();
        let [first, second]: [SocketAddr; 2] =
            ["192.0.2.1:53", "192.0.2.2:53"].map(|addr| addr.parse().expect("addr"));
        let start = tokio::time::Instant::now();
        let slot = |server, rank, asked_at: Option<tokio::time::Instant>| Slot {
            server,
            rank,
            suspect: false,
            stand: asked_at.map_or(Stand::NotAsked, Stand::Waiting),
            passed_over: asked_at.is_some(),
            first_asked: asked_at,
        };
        let mut forward = UdpForward {
            network: "n",
            query: &[],
            health: &health,
            slots: vec![
                slot(first, 0, Some(start)),
                slot(second, 1, Some(start + Duration::from_secs(1))),
            ],
            sockets: ForwardSockets::default(),
            deadline: start + FORWARD_TIMEOUT,
            failure: None,
            held: None,
            log: None,
            last_sent: start,
            resends: 0,
        };
        // The first server asked again at 4 s.
        forward.slots[0].stand = Stand::Waiting(start + Duration::from_secs(4));
        let at = start + Duration::from_millis(4500);
        assert_eq!(forward.held_until(1, at), None);
        assert_eq!(
            forward.held_until(1, start + Duration::from_secs(1)),
            Some(start + HOLD_FOR)
        );
    }

    fn order_at(health: &Health, servers: &[SocketAddr], now: Instant) -> Vec<SocketAddr> {
        health
            .plan_at(servers, now)
            .into_iter()
            .map(|(server, _)| server)
            .collect()
    }

    #[test]
    fn servers_keep_their_order_until_they_fail_several_times_in_a_row() {
        let health = Health::default();
        let vpn: SocketAddr = "10.8.0.1:53".parse().expect("addr");
        let public: SocketAddr = "192.0.2.53:53".parse().expect("addr");
        let servers = [vpn, public];
        // One slow answer: the VPN's resolver is still asked first.
        health.failed("n", vpn);
        assert_eq!(health.order(&servers), [vpn, public]);
        health.failed("n", vpn);
        health.failed("n", vpn);
        assert_eq!(health.order(&servers), [public, vpn]);
        // Any answer restores it.
        health.answered(vpn);
        assert_eq!(health.order(&servers), [vpn, public]);
        // Failures in a row only: an answer in between starts the count again.
        health.failed("n", vpn);
        health.failed("n", vpn);
        health.answered(vpn);
        health.failed("n", vpn);
        assert_eq!(health.order(&servers), [vpn, public]);
        // A demoted server is asked first again once it has had 30 s of rest.
        health.failed("n", vpn);
        health.failed("n", vpn);
        let demoted_at = Instant::now();
        assert_eq!(order_at(&health, &servers, demoted_at), [public, vpn]);
        let rested = demoted_at + SUSPECT_FOR;
        assert_eq!(order_at(&health, &servers, rested), [vpn, public]);
    }
}
