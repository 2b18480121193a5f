//! The `kvnetd` process: flags, logging, runtime, signals.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::api::server;
use crate::firewall;
use crate::manager::{self, Manager, ManagerConfig, error_chain};
use crate::systemd;

/// The lock file in the state dir that keeps a second daemon out.
const PID_FILE: &str = "kvnetd.pid";

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("creating the state dir {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening {path}")]
    OpenLock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(
        "kvnetd needs CAP_NET_ADMIN to create bridges and firewall rules: run it as root, or with the capabilities dist/kvnetd.service gives it"
    )]
    NoNetAdmin,
    #[error("another kvnetd ({holder}) is already running with the state dir {state_dir}")]
    AlreadyRunning { holder: String, state_dir: PathBuf },
    #[error("another kvnetd already serves on the socket {socket}")]
    SocketInUse { socket: PathBuf },
    #[error("starting the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("opening nftables")]
    Firewall(#[source] firewall::Error),
    #[error(transparent)]
    Manager(manager::Error),
    #[error("serving the API")]
    Serve(#[source] server::Error),
}

/// kvnetd: owns named virtual networks (bridges, NAT, DHCP, DNS) and serves the kvnet API.
#[derive(Debug, Parser)]
#[command(name = "kvnetd", version, about)]
struct Args {
    /// Persistent definitions: `<dir>/networks/NAME.xml` and `autostart/` links.
    #[arg(long, default_value = "/etc/kvnet")]
    config_dir: PathBuf,
    /// Live status (tmpfs): `<dir>/networks/NAME.json`, the autostart marker.
    #[arg(long, default_value = "/run/kvnet")]
    state_dir: PathBuf,
    /// The API socket.
    #[arg(long, default_value = crate::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Do not define libvirt's `default` network on first start.
    #[arg(long)]
    no_default_network: bool,
    /// The host's resolvers, where guests' DNS queries go when their network names no
    /// `<forwarder addr=>` (never from isolated networks), as dnsmasq's `--resolv-file`.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The host's hosts file, whose names guests resolve (plain names also under their
    /// network's domain), as libvirt's dnsmasq serves `/etc/hosts`; followed while the
    /// daemon runs.
    #[arg(long, default_value = "/etc/hosts")]
    hosts_file: PathBuf,
    /// Serve no hosts file (dnsmasq's `--no-hosts`).
    #[arg(long)]
    no_hosts: bool,
    /// Bind no read-only socket beside the API socket (`kvnetd-ro.sock`, mode 0666,
    /// through which every local user can read the networks, their leases and ports).
    #[arg(long)]
    no_read_only_socket: bool,
    /// Where libvirt's dnsmasq kept its leases (`BRIDGE.status`): a network that starts
    /// without leases of its own takes over those not expired, so guests moved from
    /// libvirt keep their addresses.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/libvirt/dnsmasq")]
    libvirt_leases_dir: PathBuf,
}

/// Runs the daemon until SIGTERM or SIGINT. Networks keep running after it exits,
/// like libvirt's: the next daemon adopts them.
pub fn main() -> ExitCode {
    let kept_from_children = crate::fdpass::keep_inherited_fds_from_children();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level));
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("kvnetd: invalid --log-level '{}': {e}", args.log_level);
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    if let Err(e) = kept_from_children {
        tracing::warn!("descriptors inherited from the parent may reach hook scripts: {e}");
    }

    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    // Before anything is created: without it every start would fail, one by one.
    if !has_net_admin() {
        return Err(Error::NoNetAdmin);
    }
    let _only_daemon = lock_state_dir(&args.state_dir)?;
    refuse_a_served_socket(&args.socket)?;
    // Before any network starts: a daemon that cannot serve must leave none behind.
    server::check_socket_path(&args.socket).map_err(Error::Serve)?;
    if !args.no_read_only_socket {
        server::check_socket_path(&crate::api::read_only_socket(&args.socket))
            .map_err(Error::Serve)?;
    }
    raise_fd_limit();
    // One thread is plenty: every change is serialised by the manager's lock, and
    // netlink must stay in this thread's network namespace.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let result = runtime.block_on(async {
        // First: a stop asked for while networks are adopted or autostarted waits for
        // that to end, then stops cleanly.
        let shutdown = shutdown_signal();
        let hangups = reload_signal();
        let firewall = firewall::nft().map_err(Error::Firewall)?;
        let config = ManagerConfig {
            config_dir: args.config_dir.clone(),
            state_dir: args.state_dir.clone(),
            define_default_network: !args.no_default_network,
            resolv_conf: args.resolv_conf.clone(),
            hosts_file: (!args.no_hosts).then(|| args.hosts_file.clone()),
            libvirt_leases_dir: Some(args.libvirt_leases_dir.clone()),
        };
        let manager = Manager::open(config, firewall)
            .await
            .map_err(Error::Manager)?;
        let manager = Arc::new(manager);
        manager.follow_port_exits();
        manager.follow_host_dns();
        manager.follow_firewall();
        let changes = server::Changes::default();
        // Reloads only once the API answers: a reload's READY=1 must not come first.
        let listening = {
            let (manager, changes) = (Arc::clone(&manager), changes.clone());
            move || {
                tell_systemd("READY=1");
                follow_reload_signal(&manager, changes, hangups);
            }
        };
        server::serve(
            manager,
            &args.socket,
            !args.no_read_only_socket,
            changes,
            listening,
            shutdown,
        )
        .await
        .map_err(Error::Serve)?;
        tracing::info!("stopped; networks keep running");
        Ok(())
    });
    // Dropping the runtime would wait for its blocking threads without end; a stop must
    // not hang on one (a lease file's fsync on a stuck disk).
    runtime.shutdown_timeout(BLOCKING_GRACE);
    result
}

/// How long a stopping daemon waits for work on the runtime's blocking threads.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes on SIGTERM or SIGINT. The handlers are installed at the call, so that a
/// signal that comes before the future is polled (before the socket appears and systemd
/// hears READY=1) still makes a clean stop, not the signal's default death.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::warn!("cannot listen for SIGTERM/SIGINT; stop the daemon with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
        tell_systemd("STOPPING=1");
    }
}

/// Whether CAP_NET_ADMIN is in this process's effective set (`CapEff` in
/// /proc/self/status). Unknown counts as yes: the first start then says what failed.
fn has_net_admin() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|effective| effective & (1 << CAP_NET_ADMIN) != 0)
}

/// The SIGHUP stream, installed at the call (before the manager opens), so that a
/// SIGHUP sent while the daemon starts waits for it instead of killing it.
fn reload_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!("cannot listen for SIGHUP, which now ends the daemon: {e}"))
        .ok()
}

/// Reloads the definitions on each SIGHUP ([`Manager::reload`]), as libvirt's daemons
/// do (`systemctl reload kvnetd`), telling systemd while it lasts. A reload is a change:
/// a SIGTERM meanwhile waits for it, so the networks it starts are not left half-made.
fn follow_reload_signal(
    manager: &Arc<Manager>,
    changes: server::Changes,
    hangups: Option<tokio::signal::unix::Signal>,
) {
    let Some(mut hangups) = hangups else {
        return;
    };
    let manager = Arc::downgrade(manager);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(manager) = manager.upgrade() else {
                break;
            };
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
                .unwrap_or_default();
            tell_systemd(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
            let in_progress = changes.hold().await;
            manager.reload().await;
            drop(in_progress);
            tell_systemd("READY=1");
        }
    });
}

/// Tells a `Type=notify` unit's systemd how the daemon is doing, if systemd started it.
fn tell_systemd(state: &str) {
    if let Err(e) = systemd::notify(state) {
        tracing::warn!("cannot tell systemd {state}: {e}");
    }
}

/// How often a lock is tried on a pid file that a daemon exiting removed meanwhile.
const LOCK_ATTEMPTS: usize = 3;

/// The lock that makes this the only daemon using its state dir, held until the process
/// exits, however it exits. A clean exit removes the pid file (before the lock goes, as
/// libvirt does): the next daemon locks a new file, which nobody can have opened before
/// it; a crash leaves it, naming the pid that held it last.
struct StateDirLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl Drop for StateDirLock {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "cannot remove the pid file: {e}");
        }
    }
}

/// Makes this the only daemon using `state_dir` (libvirt's pidfile lock): two daemons
/// would both adopt the same networks and fight over their bridges, servers and
/// files. The file is root's alone (mode 0600): anyone who can open it can take a shared
/// lock on it and keep every later daemon out.
fn lock_state_dir(state_dir: &Path) -> Result<StateDirLock, Error> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let path = state_dir.join(PID_FILE);
    std::fs::create_dir_all(state_dir).map_err(|source| Error::StateDir {
        path: state_dir.to_owned(),
        source,
    })?;
    let open_error = |source| Error::OpenLock {
        path: path.clone(),
        source,
    };
    for _ in 0..LOCK_ATTEMPTS {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(open_error)?;
        // One an older kvnetd made readable by all.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(open_error)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let holder = match pid.trim() {
                    "" => "its pid not recorded".to_owned(),
                    pid => format!("pid {pid}"),
                };
                return Err(Error::AlreadyRunning {
                    holder,
                    state_dir: state_dir.to_owned(),
                });
            }
            Err((_, errno)) => {
                return Err(Error::Lock {
                    path,
                    source: errno,
                });
            }
        };
        // A daemon exiting between the open and the lock removed the file: this lock
        // keeps nobody out. Locked again, on the file now there.
        let locked = lock.metadata().map_err(open_error)?;
        let current = match std::fs::symlink_metadata(&path) {
            Ok(current) => current,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(open_error(e)),
        };
        if (locked.dev(), locked.ino()) != (current.dev(), current.ino()) {
            continue;
        }
        let recorded = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        // The lock keeps other daemons out, not the pid in it (which only messages
        // show): a full /run must not keep the guests' DHCP and DNS server down.
        if let Err(e) = recorded {
            tracing::warn!(path = %path.display(), "cannot write the pid (running all the same): {e}");
        }
        return Ok(StateDirLock { path, _lock: lock });
    }
    Err(Error::Lock {
        path,
        source: Errno::EAGAIN,
    })
}

/// Refuses to start when a daemon (with another state dir) answers on `socket`: putting
/// ours in its place would cut its clients off from it for good, and its networks would
/// be adopted, or their rules removed, by both.
fn refuse_a_served_socket(socket: &Path) -> Result<(), Error> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket as open};
    let in_use = Err(Error::SocketInUse {
        socket: socket.to_owned(),
    });
    // Without blocking: a wedged daemon with a full backlog would hold this one up.
    let Ok(probe) = open(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return Ok(());
    };
    let Ok(address) = UnixAddr::new(socket) else {
        return Ok(());
    };
    match connect(std::os::fd::AsRawFd::as_raw_fd(&probe), &address) {
        // Listening, its backlog full or not.
        Ok(()) | Err(Errno::EAGAIN) => in_use,
        // None (ENOENT), or a stale one no process listens on (ECONNREFUSED).
        Err(_) => Ok(()),
    }
}

/// Each active network holds a few sockets (DHCP, DNS over UDP and TCP), so a thousand
/// networks need more than the usual soft limit of 1024 descriptors: take the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}
