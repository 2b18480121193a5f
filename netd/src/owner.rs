//! The processes that hold handed-over macvtap ports.
//!
//! A tap handed to a VMM goes when the VMM's last descriptor closes; a macvtap is a link
//! of its own, which stays until someone deletes it. So kvnetd keeps a pidfd of the
//! process that asked for the port (`SO_PEERPIDFD`: the very process on the socket, with
//! no pid reuse race; before Linux 6.5, the pid of `SO_PEERCRED`) and deletes the macvtap
//! when it exits. Across a daemon restart a pidfd cannot be kept, so the port's record
//! holds the pid and the process's start time, which tell the same process from a later
//! one with the pid.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Errors of owner tracking; each names the process or descriptor involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel would not give the peer's pidfd.
    #[error("getting the pidfd of the process on the API socket")]
    PeerPidfd(#[source] io::Error),
    /// The kernel would not say who the peer is (before Linux 6.5).
    #[error("getting the credentials of the process on the API socket")]
    PeerCredentials(#[source] io::Error),
    /// The peer's process could not be identified.
    #[error("identifying process {pid} on the API socket")]
    Identify {
        /// The process (0 when even its pid could not be read).
        pid: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A recorded process could not be looked at (not: it has exited).
    #[error("looking for process {pid}")]
    Reopen {
        /// The process.
        pid: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process could not start, or the watcher stopped.
    #[error("watching process {pid}")]
    Watch {
        /// The process.
        pid: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A process, told apart from any later one with the same pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// The pid, in the daemon's pid namespace.
    pub pid: i32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat`, field 22); 0 when
    /// `/proc` would not say (`hidepid`), and then not compared.
    pub start_time: u64,
}

/// A live process kvnetd is waiting for. Clones share its pidfd.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Who it is, for the port's record.
    pub id: ProcessId,
    pidfd: Arc<OwnedFd>,
}

impl Owner {
    /// The process on the other end of the Unix socket `socket`.
    pub fn of_peer(socket: BorrowedFd<'_>) -> Result<Owner, Error> {
        use nix::sys::socket::{getsockopt, sockopt};
        match getsockopt(&socket, sockopt::PeerPidfd) {
            Ok(pidfd) => Owner::from_pidfd(pidfd),
            // Before Linux 6.5: the pid the peer had when it connected, pinned by a pidfd
            // opened now. It is the peer's unless the peer exited in between and its pid
            // went to another process: a window this kernel leaves open.
            Err(nix::errno::Errno::ENOPROTOOPT) => {
                let pid = getsockopt(&socket, sockopt::PeerCredentials)
                    .map_err(|errno| Error::PeerCredentials(errno.into()))?
                    .pid();
                let pidfd = open_pidfd(pid).map_err(|source| Error::Identify { pid, source })?;
                Owner::from_pidfd(pidfd)
            }
            Err(errno) => Err(Error::PeerPidfd(errno.into())),
        }
    }

    /// The process `id`, if it is still running; `Ok(None)` when it has exited (or its
    /// pid now belongs to a later process). An error says nothing either way.
    pub fn reopen(id: ProcessId) -> Result<Option<Owner>, Error> {
        let pidfd = match open_pidfd(id.pid) {
            Ok(pidfd) => pidfd,
            // No such process, or the pid is now a thread of another process.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ESRCH | libc::EINVAL)) => {
                return Ok(None);
            }
            Err(source) => {
                return Err(Error::Reopen {
                    pid: id.pid,
                    source,
                });
            }
        };
        let owner = Owner {
            id,
            pidfd: Arc::new(pidfd),
        };
        if owner.has_exited() {
            return Ok(None);
        }
        // Read after the pidfd is open: the same start time then means the pidfd is of
        // the recorded process (a pid is not handed out twice within a clock tick).
        match start_time(id.pid) {
            Ok(started) if id.start_time != 0 && started != id.start_time => Ok(None),
            Ok(_) => Ok(Some(owner)),
            // hidepid: the pid is alive, and nothing says it is another process.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                Ok(Some(owner))
            }
            Err(source) => Err(Error::Reopen {
                pid: id.pid,
                source,
            }),
        }
    }

    /// Whether the process has exited, by the kernel's rule for pidfds: every thread of
    /// it has (a main thread that exited first leaves a running process).
    pub fn has_exited(&self) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).is_ok_and(|ready| ready > 0)
    }

    fn from_pidfd(pidfd: OwnedFd) -> Result<Owner, Error> {
        let pid = pid_of(&pidfd).map_err(|source| Error::Identify { pid: 0, source })?;
        let identify = |source| Error::Identify { pid, source };
        let start_time = match start_time(pid) {
            Ok(started) => started,
            // hidepid: the daemon may not read another user's /proc.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
                ) =>
            {
                0
            }
            Err(e) => return Err(identify(e)),
        };
        // Had the process exited and its pid gone to another before the start time was
        // read, the pidfd would read no pid any more.
        pid_of(&pidfd).map_err(identify)?;
        Ok(Owner {
            id: ProcessId { pid, start_time },
            pidfd: Arc::new(pidfd),
        })
    }

    /// Waits until the process exits.
    pub async fn exited(self) -> Result<(), Error> {
        let pid = self.id.pid;
        let watcher = watcher().map_err(|source| Error::Watch { pid, source })?;
        let (token, exited) = watcher
            .watch(self.pidfd)
            .map_err(|source| Error::Watch { pid, source })?;
        // A wait given up (its port deleted first) lets go of the pidfd at once.
        let _unwatch = Unwatch { watcher, token };
        // The sender goes only with the watcher thread, which runs as long as the daemon.
        exited.await.map_err(|_| Error::Watch {
            pid,
            source: io::Error::other("the process watcher stopped"),
        })
    }
}

/// A pidfd being watched, and who to tell when its process exits.
type Watched = (Arc<OwnedFd>, oneshot::Sender<()>);

/// One thread waits for every owner: a pidfd polls readable once its process has exited.
/// (tokio's `AsyncFd` could wait on the runtime, but registering an fd with it is now
/// `unsafe`, and kvnet keeps `unsafe` to the tap and fd-passing modules.)
struct Watcher {
    epoll: Epoll,
    /// Set when the thread has stopped: nothing is watched any more.
    stopped: AtomicBool,
    /// Each pidfd being watched, by its epoll token, with who to tell.
    waiting: Mutex<HashMap<u64, Watched>>,
    next_token: AtomicU64,
}

/// Takes a pidfd out of the watcher when its wait ends, however it ends.
struct Unwatch {
    watcher: &'static Watcher,
    token: u64,
}

impl Drop for Unwatch {
    fn drop(&mut self) {
        self.watcher.unwatch(self.token);
    }
}

impl Watcher {
    /// Watches `pidfd`: its token, and what tells when its process exits.
    fn watch(&self, pidfd: Arc<OwnedFd>) -> io::Result<(u64, oneshot::Receiver<()>)> {
        let (exited, receiver) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        // Registered under the lock, so that the thread finds the entry of any event.
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if self.stopped.load(Ordering::Acquire) {
            return Err(io::Error::other("the process watcher has stopped"));
        }
        self.epoll
            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(io::Error::from)?;
        waiting.insert(token, (pidfd, exited));
        Ok((token, receiver))
    }

    /// Stops watching the pidfd of `token`, if its process has not exited yet.
    fn unwatch(&self, token: u64) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((pidfd, _)) = waiting.remove(&token) {
            let _ = self.epoll.delete(&pidfd);
        }
    }

    fn run(&self) {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            let ready = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::error!("waiting for the processes of macvtap ports: {errno}");
                    // Dropping the senders fails every wait, rather than leave them hanging.
                    let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                    self.stopped.store(true, Ordering::Release);
                    waiting.clear();
                    return;
                }
            };
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for event in &events[..ready] {
                if let Some((pidfd, exited)) = waiting.remove(&event.data()) {
                    let _ = self.epoll.delete(&pidfd);
                    // Nobody may be waiting any more (the port went first).
                    let _ = exited.send(());
                }
            }
        }
    }
}

/// The process's watcher thread, started on first use.
fn watcher() -> io::Result<&'static Watcher> {
    static WATCHER: OnceLock<Result<&'static Watcher, String>> = OnceLock::new();
    WATCHER
        .get_or_init(|| {
            let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| e.to_string())?;
            // Lives as long as the process, as its thread does.
            let watcher: &'static Watcher = Box::leak(Box::new(Watcher {
                epoll,
                stopped: AtomicBool::new(false),
                waiting: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(0),
            }));
            std::thread::Builder::new()
                .name("kvnetd-owners".into())
                .spawn(|| watcher.run())
                .map_err(|e| e.to_string())?;
            Ok(watcher)
        })
        .as_ref()
        .copied()
        .map_err(|message| io::Error::other(message.clone()))
}

/// The pid a pidfd refers to (`Pid:` in its fdinfo; -1 once the process has exited).
fn pid_of(pidfd: &OwnedFd) -> io::Result<i32> {
    let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
    let info = fs::read_to_string(&path)?;
    let pid = info
        .lines()
        .find_map(|line| line.strip_prefix("Pid:"))
        .and_then(|value| value.trim().parse::<i32>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no Pid: in {path}")))?;
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the process has exited (or is outside this pid namespace)",
        ));
    }
    Ok(pid)
}

/// A pidfd for `pid`.
fn open_pidfd(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
}

/// A process's start time in clock ticks after boot.
fn start_time(pid: i32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path)?;
    parse_stat(&stat)
        .map(|(_, started)| started)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable {path}")))
}

/// The state (field 3) and start time (field 22) of `/proc/PID/stat`. The second field,
/// the command name in parentheses, may itself hold spaces and parentheses, so the
/// fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 is the 19th after the state.
    let started = fields.nth(18)?.parse().ok()?;
    Some((state, started))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_stat(stat), Some(('S', 987_654)));
        let zombie = stat.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), Some(('Z', 987_654)));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[tokio::test]
    async fn a_peer_is_the_process_on_the_socket_and_is_watched_until_it_exits() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        // The peer of a socketpair is this very process.
        let owner = Owner::of_peer(ours.as_fd()).expect("peer pidfd");
        assert_eq!(owner.id.pid, std::process::id() as i32);
        let again = Owner::reopen(owner.id)
            .expect("reopen")
            .expect("still running");
        assert_eq!(again.id, owner.id);
        assert!(!owner.has_exited());
        let later = ProcessId {
            start_time: owner.id.start_time + 1,
            ..owner.id
        };
        assert!(
            Owner::reopen(later).expect("reopen").is_none(),
            "another start time is another process"
        );

        // Alive until its stdin closes, however slowly this test runs.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn cat");
        let id = ProcessId {
            pid: child.id() as i32,
            start_time: start_time(child.id() as i32).expect("child's start time"),
        };
        let watched = Owner::reopen(id).expect("reopen").expect("child running");
        let polled = watched.clone();
        assert!(!polled.has_exited());
        drop(child.stdin.take());
        tokio::time::timeout(std::time::Duration::from_secs(10), watched.exited())
            .await
            .expect("the child's exit is seen")
            .expect("watch");
        // Exited and not yet reaped: a zombie has exited too.
        assert!(polled.has_exited());
        assert!(
            Owner::reopen(id).expect("reopen").is_none(),
            "a zombie has exited"
        );
        child.wait().expect("reap");
        assert!(
            Owner::reopen(id).expect("reopen").is_none(),
            "an exited process is gone"
        );
    }
}
