//! The per-network advertising task: a raw ICMPv6 socket bound to the bridge, member of
//! the all-routers group so that guests' solicitations reach it.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::OwnedFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Error, RaConfig, advertisement, is_router_solicitation};
use crate::service::ServiceTask;

/// Where advertisements go: every node on the link.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// Where solicitations come to: every router on the link.
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Neighbor discovery messages must arrive with this hop limit (RFC 4861 6.1.2).
const ND_HOP_LIMIT: u32 = 255;
/// The first advertisements come at most this far apart (RFC 4861 6.2.4)...
const INITIAL_INTERVAL: Duration = Duration::from_secs(16);
/// ...for this many of them...
const INITIAL_ADVERTISEMENTS: u32 = 3;
/// ...then at random intervals in this range (dnsmasq's and RFC 4861's defaults).
const INTERVAL_SECONDS: std::ops::RangeInclusive<u64> = 200..=600;
/// Solicitations are answered at most this often (RFC 4861 6.2.6).
const MIN_DELAY_BETWEEN_ADVERTISEMENTS: Duration = Duration::from_secs(3);
/// Larger than any solicitation worth reading; longer ICMPv6 messages are truncated.
const RECV_BUFFER: usize = 1500;
/// A solicitation that came while the bridge had no link-local address to answer from
/// is answered this soon after it has one...
const UNSENT_RETRY: Duration = Duration::from_millis(250);
/// ...looking this many times (duplicate address detection takes a second or two).
const UNSENT_RETRIES: u32 = 20;

/// The kernel's socket filter: keep router solicitations, drop every other ICMPv6
/// message (pings, neighbour discovery, other routers' advertisements) before it is
/// queued, so guests' ordinary traffic never wakes the task. A raw IPv6 socket's filter
/// sees the ICMPv6 header at offset 0. (socket2 has no `ICMP6_FILTER`; this is the same
/// check, in classic BPF.)
const SOLICITATIONS_ONLY: [SockFilter; 4] = {
    use libc::{BPF_ABS, BPF_B, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET};
    [
        // ldb [0]: the ICMPv6 type
        SockFilter::new((BPF_LD | BPF_B | BPF_ABS) as u16, 0, 0, 0),
        // jeq #133, next, skip one
        SockFilter::new(
            (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            0,
            1,
            super::ROUTER_SOLICITATION as u32,
        ),
        // ret #-1: the whole message
        SockFilter::new((BPF_RET | BPF_K) as u16, 0, 0, u32::MAX),
        // ret #0: nothing
        SockFilter::new((BPF_RET | BPF_K) as u16, 0, 0, 0),
    ]
};

/// A running advertiser of one network. [`RaServer::stop`] ends it with a last
/// advertisement that withdraws the router; dropping it just ends it.
#[derive(Debug)]
pub struct RaServer(ServiceTask);

impl RaServer {
    /// Opens the socket on `config.interface` and spawns the advertising task on the
    /// current tokio runtime.
    pub fn start(config: RaConfig) -> Result<RaServer, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            network: config.network.clone(),
        })?;
        let (socket, destination) = open_socket(&config)?;
        // tokio's datagram socket type drives it: reads and writes on a raw socket are
        // the same recv and sendto calls.
        let socket = {
            let _enter = runtime.enter();
            UdpSocket::from_std(std::net::UdpSocket::from(OwnedFd::from(socket)))
                .map_err(socket_error(&config, "register the socket"))?
        };
        tracing::info!(network = %config.network, prefixes = ?config.prefixes, "router advertisements started");
        Ok(RaServer(ServiceTask::spawn(
            &runtime,
            config.network.clone(),
            "router advertisements",
            |stop| advertise(config, socket, destination, stop),
        )))
    }

    /// Sends the last advertisement and ends the task.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

fn socket_error<'a>(
    config: &'a RaConfig,
    step: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Socket {
        network: config.network.clone(),
        interface: config.interface.clone(),
        step,
        source,
    }
}

/// A raw ICMPv6 socket on the bridge, and the all-nodes address on it.
fn open_socket(config: &RaConfig) -> Result<(Socket, SocketAddr), Error> {
    let ifindex = nix::net::if_::if_nametoindex(config.interface.as_str())
        .map_err(|e| socket_error(config, "find the bridge")(e.into()))?;
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
        .map_err(socket_error(config, "open an ICMPv6 socket"))?;
    let setup = || -> std::io::Result<()> {
        socket.bind_device(Some(config.interface.as_bytes()))?;
        socket.set_multicast_if_v6(ifindex)?;
        socket.set_multicast_hops_v6(ND_HOP_LIMIT)?;
        socket.set_unicast_hops_v6(ND_HOP_LIMIT)?;
        socket.set_multicast_loop_v6(false)?;
        socket.join_multicast_v6(&ALL_ROUTERS, ifindex)?;
        socket.attach_filter(&SOLICITATIONS_ONLY)?;
        socket.set_nonblocking(true)
    };
    setup().map_err(socket_error(config, "set up the ICMPv6 socket"))?;
    let destination = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, ifindex));
    Ok((socket, destination))
}

/// How long after the `sent`-th advertisement the next one is due.
fn interval_after(sent: u32) -> Duration {
    if sent < INITIAL_ADVERTISEMENTS {
        INITIAL_INTERVAL
    } else {
        Duration::from_secs(rand::random_range(INTERVAL_SECONDS))
    }
}

async fn advertise(
    config: RaConfig,
    socket: UdpSocket,
    destination: SocketAddr,
    mut shutdown: oneshot::Receiver<()>,
) {
    let packet = advertisement(&config, config.router_lifetime);
    let mut sent = 0u32;
    let mut last_sent: Option<Instant> = None;
    let mut next = Instant::now();
    // Looks left for a link-local address to answer a solicitation from.
    let mut retries = 0u32;
    let mut buffer = [0u8; RECV_BUFFER];
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            () = tokio::time::sleep_until(next) => {
                let now = Instant::now();
                // Until a guest's port brings the bridge up there is no one to tell, and
                // the quick first advertisements are kept for when there is.
                if send(&config, &socket, &packet, destination) {
                    sent = sent.saturating_add(1);
                    last_sent = Some(now);
                    retries = 0;
                    next = now + interval_after(sent);
                } else if retries > 0 {
                    retries -= 1;
                    next = now + UNSENT_RETRY;
                } else {
                    next = now + interval_after(sent);
                }
            }
            ready = socket.readable() => {
                if let Err(e) = ready {
                    tracing::warn!(network = %config.network, error = %e, "router solicitations no longer read");
                    break;
                }
                let mut solicited = false;
                // The socket's filter lets only router solicitations through; the check
                // below is for what arrived before the filter was set.
                loop {
                    match socket.try_recv(&mut buffer) {
                        Ok(len) => solicited |= is_router_solicitation(&buffer[..len]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(network = %config.network, error = %e, "ICMPv6 read failed");
                            break;
                        }
                    }
                }
                if solicited {
                    retries = UNSENT_RETRIES;
                    let now = Instant::now();
                    let allowed = last_sent.map_or(now, |at| at + MIN_DELAY_BETWEEN_ADVERTISEMENTS);
                    next = next.min(allowed.max(now));
                }
            }
        }
    }
    if !config.router_lifetime.is_zero() && last_sent.is_some() {
        // Guests stop routing through a host that is going away (RFC 4861 6.2.5).
        send(
            &config,
            &socket,
            &advertisement(&config, Duration::ZERO),
            destination,
        );
    }
}

/// Sends one advertisement; whether it went. Not sending is normal while the bridge has
/// no port, and so no carrier, and for a second or two after, while duplicate address
/// detection holds its link-local address back.
fn send(config: &RaConfig, socket: &UdpSocket, packet: &[u8], destination: SocketAddr) -> bool {
    if !has_link_local_source(destination) {
        tracing::debug!(network = %config.network, bridge = %config.interface, "router advertisement not sent: the bridge has no usable link-local address yet");
        return false;
    }
    match socket.try_send_to(packet, destination) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(network = %config.network, bridge = %config.interface, error = %e, "router advertisement not sent");
            false
        }
    }
}

/// Whether the kernel would send to `destination` (all nodes, on the bridge) from a
/// link-local address: RFC 4861 6.1.2 has guests drop an advertisement from any other.
/// While the bridge's link-local address is tentative, or missing, the kernel picks a
/// global one. A connected UDP socket shows its choice without sending anything.
fn has_link_local_source(destination: SocketAddr) -> bool {
    let Ok(probe) = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    // Any port: nothing is sent.
    let mut to = destination;
    to.set_port(DISCARD_PORT);
    probe.connect(to).is_ok()
        && matches!(probe.local_addr(), Ok(SocketAddr::V6(source)) if source.ip().is_unicast_link_local())
}

/// The port the link-local probe connects to (RFC 863's discard; it is never sent to).
const DISCARD_PORT: u16 = 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_quick_advertisements_then_slow_random_ones() {
        for sent in 1..INITIAL_ADVERTISEMENTS {
            assert_eq!(interval_after(sent), INITIAL_INTERVAL);
        }
        for sent in INITIAL_ADVERTISEMENTS..INITIAL_ADVERTISEMENTS + 50 {
            let secs = interval_after(sent).as_secs();
            assert!(INTERVAL_SECONDS.contains(&secs), "{secs}");
        }
    }

    /// The filter program run where the kernel runs it: on a Unix datagram socket, whose
    /// filter sees the message from offset 0 as a raw ICMPv6 socket's sees the ICMPv6
    /// header. Only the solicitation is delivered.
    #[test]
    fn the_socket_filter_keeps_solicitations_only() {
        let (sender, receiver) = Socket::pair(Domain::UNIX, Type::DGRAM, None).unwrap();
        receiver.attach_filter(&SOLICITATIONS_ONLY).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let echo_request = [128, 0, 0, 0, 0, 1, 0, 1];
        let neighbour_solicitation = [135, 0, 0, 0, 0, 0, 0, 0];
        let advertisement = [134, 0, 0, 0, 64, 0, 0, 0];
        let solicitation = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7];
        for message in [
            &echo_request[..],
            &neighbour_solicitation,
            &solicitation,
            &advertisement,
        ] {
            sender.send(message).unwrap();
        }
        let receiver = std::os::unix::net::UnixDatagram::from(OwnedFd::from(receiver));
        let mut received = Vec::new();
        let mut buffer = [0u8; 64];
        while let Ok(len) = receiver.recv(&mut buffer) {
            received.push(buffer[..len].to_vec());
        }
        assert_eq!(received, [solicitation.to_vec()]);
    }
}
