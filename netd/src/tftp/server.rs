//! The per-network TFTP task: requests on port 69 of the bridge address, each transfer
//! on a port of its own (RFC 1350's transfer identifier), at most [`MAX_TRANSFERS`]
//! at a time and [`MAX_TRANSFERS_PER_CLIENT`] for one guest.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::{
    DEFAULT_BLOCK_SIZE, Error, ErrorCode, PORT, ReadRequest, TftpConfig, data, error, option_ack,
    parse_reply, parse_request,
};
use crate::service::{SOCKET_ERROR_PAUSE, ServiceTask};

/// Transfers served at once per network; more are refused until one ends.
const MAX_TRANSFERS: usize = 64;
/// Transfers served at once to one address, so that one guest cannot hold every slot of
/// its network (a booting guest fetches a few files, one after another).
const MAX_TRANSFERS_PER_CLIENT: usize = 8;
/// How long to wait for an acknowledgement when the client names no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a block is sent before the transfer is given up.
const ATTEMPTS: u32 = 5;
/// Largest request read; requests are a file name and a few options.
const REQUEST_BUFFER: usize = 1024;
/// Permission bits of "others": read, and search for a directory.
const OTHERS_READ: u32 = 0o004;
const OTHERS_SEARCH: u32 = 0o001;

/// A running TFTP server of one network. Dropping it, or [`TftpServer::stop`], ends it
/// and every transfer in progress.
#[derive(Debug)]
pub struct TftpServer(ServiceTask);

impl TftpServer {
    /// Opens the root and binds `config.listen`:69, then spawns the serving task on the
    /// current tokio runtime.
    pub fn start(config: TftpConfig) -> Result<TftpServer, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime {
            network: config.network.clone(),
        })?;
        let root_error = |source: std::io::Error| Error::Root {
            network: config.network.clone(),
            root: config.root.clone(),
            source,
        };
        let root = nix::fcntl::open(
            &config.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| root_error(e.into()))?;
        let root = Root {
            real_path: real_path(&root).map_err(root_error)?,
            fd: root,
        };
        // As dnsmasq refuses to start on a tftp-root it cannot reach.
        if let Some(directory) = root.real_path.ancestors().find(|dir| !is_searchable(dir)) {
            return Err(Error::RootNotPublic {
                network: config.network.clone(),
                root: config.root.clone(),
                directory: directory.to_owned(),
            });
        }
        let socket = udp_socket_on(&config.interface, SocketAddrV4::new(config.listen, PORT))
            .map_err(socket_error(&config, "bind port 69"))?;
        let socket = {
            let _enter = runtime.enter();
            UdpSocket::from_std(socket).map_err(socket_error(&config, "register the socket"))?
        };
        tracing::info!(network = %config.network, root = %config.root.display(), "TFTP server started");
        Ok(TftpServer(ServiceTask::spawn(
            &runtime,
            config.network.clone(),
            "TFTP server",
            |stop| serve(config, root, socket, stop),
        )))
    }

    /// Ends the server and its transfers.
    pub async fn stop(self) {
        self.0.stop().await;
    }
}

fn socket_error<'a>(
    config: &'a TftpConfig,
    step: &'static str,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Socket {
        network: config.network.clone(),
        listen: config.listen,
        step,
        source,
    }
}

/// The served directory: open, and where it really is (its symlinks resolved).
struct Root {
    fd: OwnedFd,
    real_path: PathBuf,
}

async fn serve(
    config: TftpConfig,
    root: Root,
    socket: UdpSocket,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Owned here, so the transfers end with the task; each one's client is kept by task
    // id, so that a transfer that panicked still frees its client's slot.
    let mut transfers = JoinSet::new();
    let mut clients: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let mut per_client: HashMap<IpAddr, usize> = HashMap::new();
    let mut buffer = [0u8; REQUEST_BUFFER];
    loop {
        let (len, client) = tokio::select! {
            _ = &mut shutdown => break,
            Some(ended) = transfers.join_next_with_id(), if !transfers.is_empty() => {
                let id = match ended {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                if let Some(address) = clients.remove(&id)
                    && let Some(count) = per_client.get_mut(&address)
                {
                    *count -= 1;
                    if *count == 0 {
                        per_client.remove(&address);
                    }
                }
                continue;
            }
            received = socket.recv_from(&mut buffer) => match received {
                Ok(received) => received,
                Err(e) => {
                    // As the DNS and DHCP servers do: a socket that keeps failing is not spun on.
                    tracing::debug!(network = %config.network, error = %e, "TFTP receive failed");
                    tokio::time::sleep(SOCKET_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        if !from_the_network(&config.subnets, client) {
            tracing::debug!(network = %config.network, %client, "TFTP request from outside the network ignored");
            continue;
        }
        let request = match parse_request(&buffer[..len]) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(refusal) => {
                let _ = socket.try_send_to(&error(refusal.code, refusal.message), client);
                continue;
            }
        };
        let from_client = per_client.get(&client.ip()).copied().unwrap_or(0);
        if transfers.len() >= MAX_TRANSFERS || from_client >= MAX_TRANSFERS_PER_CLIENT {
            let busy = error(ErrorCode::Undefined, "too many transfers, try again later");
            let _ = socket.try_send_to(&busy, client);
            continue;
        }
        let file = match open_beneath(&root, super::path_in_root(&request.file, &config.root)) {
            Ok(file) => file,
            Err(refusal) => {
                tracing::debug!(network = %config.network, %client, file = %request.file.escape_debug(), reason = refusal.message, "TFTP request refused");
                let _ = socket.try_send_to(&error(refusal.code, refusal.message), client);
                continue;
            }
        };
        tracing::debug!(network = %config.network, %client, file = %request.file.escape_debug(), "TFTP transfer");
        let network = config.network.clone();
        let (listen, interface) = (config.listen, config.interface.clone());
        *per_client.entry(client.ip()).or_default() += 1;
        let started = transfers.spawn(async move {
            if let Err(e) = transfer(listen, &interface, client, request, file).await {
                tracing::debug!(%network, %client, error = %e, "TFTP transfer ended early");
            }
        });
        clients.insert(started.id(), client.ip());
    }
}

/// A non-blocking UDP socket bound to `address` on `interface` only (`SO_BINDTODEVICE`).
fn udp_socket_on(interface: &str, address: SocketAddrV4) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, bind, setsockopt, socket,
        sockopt,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::Udp,
    )?;
    setsockopt(
        &fd,
        sockopt::BindToDevice,
        &std::ffi::OsString::from(interface),
    )?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(address))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Whether `client` is an IPv4 address of one of the network's `subnets`.
fn from_the_network(subnets: &[ipnet::Ipv4Net], client: SocketAddr) -> bool {
    match client.ip() {
        IpAddr::V4(address) => subnets.iter().any(|subnet| subnet.contains(&address)),
        IpAddr::V6(_) => false,
    }
}

/// Opens `file` for reading, beneath `root` only: no `..` or symlink out of it, no
/// /proc magic links, and only a regular file that anyone may read in directories
/// anyone may search. The daemon runs as root; dnsmasq, which serves as an
/// unprivileged user, serves no more than that. The file is looked at through an
/// `O_PATH` descriptor before it is opened, so that a device node is never opened (a
/// watchdog's open arms it).
fn open_beneath(root: &Root, file: &str) -> Result<std::fs::File, super::Refusal> {
    let not_found = super::Refusal {
        code: ErrorCode::FileNotFound,
        message: "file not found",
    };
    let denied = super::Refusal {
        code: ErrorCode::AccessViolation,
        message: "access denied",
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let found = openat2(&root.fd, Path::new(file), how).map_err(|errno| match errno {
        nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR => not_found.clone(),
        _ => denied.clone(),
    })?;
    let found = std::fs::File::from(found);
    let metadata = found.metadata().map_err(|_| not_found.clone())?;
    if !metadata.is_file() || metadata.permissions().mode() & OTHERS_READ == 0 {
        return Err(denied);
    }
    let real = real_path(&found).map_err(|_| not_found.clone())?;
    let hidden = real
        .ancestors()
        .skip(1)
        .take_while(|dir| *dir != root.real_path)
        .any(|dir| !is_searchable(dir));
    if hidden {
        return Err(denied);
    }
    // Reopened for reading through the descriptor itself: the file checked is the one read.
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(descriptor_path(&found))
        .map_err(|_| not_found)
}

/// `/proc/self/fd/N` of `fd`: the file it refers to, whatever its name now.
fn descriptor_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Where the file `fd` refers to is, symlinks resolved.
fn real_path(fd: &impl AsRawFd) -> std::io::Result<PathBuf> {
    std::fs::read_link(descriptor_path(fd))
}

/// Whether every user may search (pass through) `dir`.
fn is_searchable(dir: &Path) -> bool {
    std::fs::metadata(dir).is_ok_and(|metadata| metadata.permissions().mode() & OTHERS_SEARCH != 0)
}

/// Sends `file` to `client` from a port of its own, block by block, each after the
/// previous one was acknowledged.
async fn transfer(
    listen: Ipv4Addr,
    interface: &str,
    client: SocketAddr,
    request: ReadRequest,
    file: std::fs::File,
) -> std::io::Result<()> {
    let socket = UdpSocket::from_std(udp_socket_on(interface, SocketAddrV4::new(listen, 0))?)?;
    socket.connect(client).await?;
    let size = file.metadata()?.len();
    let mut file = tokio::fs::File::from_std(file);
    let timeout = request.timeout.map_or(DEFAULT_TIMEOUT, |seconds| {
        Duration::from_secs(seconds.into())
    });
    let block_size = request.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    let mut accepted = Vec::new();
    if let Some(size) = request.block_size {
        accepted.push(("blksize", u64::from(size)));
    }
    if request.transfer_size {
        accepted.push(("tsize", size));
    }
    if let Some(seconds) = request.timeout {
        accepted.push(("timeout", u64::from(seconds)));
    }
    let mut packet = Vec::with_capacity(4 + usize::from(block_size));
    // With options, the first packet is their acknowledgement, block 0 (RFC 2347).
    let mut acknowledging_options = !accepted.is_empty();
    let mut block: u16 = 0;
    if acknowledging_options {
        packet = option_ack(&accepted);
    } else {
        block = 1;
        read_block(&mut file, block, block_size, &mut packet).await?;
    }
    loop {
        send_until_acknowledged(&socket, &packet, block, timeout).await?;
        // The last block is the first one shorter than a full block (maybe empty). Its
        // number may have wrapped to 0 in a big file: only the first packet is options.
        if !acknowledging_options && packet.len() - 4 < usize::from(block_size) {
            return Ok(());
        }
        acknowledging_options = false;
        block = block.wrapping_add(1);
        read_block(&mut file, block, block_size, &mut packet).await?;
    }
}

/// Reads the next block of the file straight into `packet`, a DATA packet: one buffer
/// serves the whole transfer.
async fn read_block(
    file: &mut tokio::fs::File,
    block: u16,
    block_size: u16,
    packet: &mut Vec<u8>,
) -> std::io::Result<()> {
    data(block, &[], packet);
    let header = packet.len();
    packet.resize(header + usize::from(block_size), 0);
    let mut filled = header;
    while filled < packet.len() {
        let read = file.read(&mut packet[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    packet.truncate(filled);
    Ok(())
}

/// Sends `packet` until the client acknowledges `block`, at most [`ATTEMPTS`] times.
/// Acknowledgements of other blocks are ignored rather than answered, so a delayed
/// duplicate cannot double the traffic (the "Sorcerer's Apprentice" bug).
async fn send_until_acknowledged(
    socket: &UdpSocket,
    packet: &[u8],
    block: u16,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut reply = [0u8; 516];
    for _ in 0..ATTEMPTS {
        socket.send(packet).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv(&mut reply)).await;
            let Ok(received) = received else {
                break; // resend
            };
            match parse_reply(&reply[..received?]) {
                Ok(Some(acked)) if acked == block => return Ok(()),
                Ok(_) => {}
                Err(code) => {
                    return Err(std::io::Error::other(format!(
                        "the client gave up with TFTP error {code}"
                    )));
                }
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("block {block} never acknowledged"),
    ))
}
