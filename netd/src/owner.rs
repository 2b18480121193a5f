//! The processes that hold handed-over macvtap ports.
//!
//! A tap handed to a VMM goes when the VMM's last descriptor closes; a macvtap is a link
//! of its own, which stays until someone deletes it. So kvnetd keeps a pidfd of the
//! process that asked for the port (`SO_PEERPIDFD`: the very process on the socket, with
//! no pid reuse race) and deletes the macvtap when it exits. Across a daemon restart a
//! pidfd cannot be kept, so the port's record holds the pid and the process's start time,
//! which tell the same process from a later one with the pid.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Errors of owner tracking; each names the process or descriptor involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel would not give the peer's pidfd.
    #[error("getting the pidfd of the process on the API socket")]
    PeerPidfd(#[source] io::Error),
    /// A pidfd's process could not be identified.
    #[error("identifying the process of pidfd {fd}")]
    Identify {
        /// The pidfd.
        fd: i32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process could not start.
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
    /// When it started, in clock ticks after boot (`/proc/PID/stat`, field 22).
    pub start_time: u64,
}

/// A live process kvnetd is waiting for.
#[derive(Debug)]
pub struct Owner {
    /// Who it is, for the port's record.
    pub id: ProcessId,
    pidfd: OwnedFd,
}

impl Owner {
    /// The process on the other end of the Unix socket `socket`.
    pub fn of_peer(socket: BorrowedFd<'_>) -> Result<Owner, Error> {
        let pidfd = nix::sys::socket::getsockopt(&socket, nix::sys::socket::sockopt::PeerPidfd)
            .map_err(|errno| Error::PeerPidfd(errno.into()))?;
        Owner::from_pidfd(pidfd)
    }

    /// The process `id`, if it is still running; `None` when it has exited (or its pid
    /// now belongs to a later process).
    pub fn reopen(id: ProcessId) -> Option<Owner> {
        let pid = rustix::process::Pid::from_raw(id.pid)?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()?;
        // Read after the pidfd is held: the process cannot be replaced any more.
        (start_time(id.pid).ok()? == id.start_time).then_some(Owner { id, pidfd })
    }

    fn from_pidfd(pidfd: OwnedFd) -> Result<Owner, Error> {
        let fd = pidfd.as_raw_fd();
        let identify = |source| Error::Identify { fd, source };
        let pid = pid_of(&pidfd).map_err(identify)?;
        let start_time = start_time(pid).map_err(identify)?;
        // A pidfd of a process that has exited already reads pid -1 above; one that exits
        // from here on is seen by `exited`.
        Ok(Owner {
            id: ProcessId { pid, start_time },
            pidfd,
        })
    }

    /// Waits until the process exits.
    pub async fn exited(self) -> Result<(), Error> {
        let pid = self.id.pid;
        let exited = watcher()
            .and_then(|watcher| watcher.watch(self.pidfd))
            .map_err(|source| Error::Watch { pid, source })?;
        // The sender goes only with the watcher thread, which runs as long as the daemon.
        exited.await.map_err(|_| Error::Watch {
            pid,
            source: io::Error::other("the process watcher stopped"),
        })
    }
}

/// One thread waits for every owner: a pidfd polls readable once its process has exited.
/// (tokio's `AsyncFd` could wait on the runtime, but registering an fd with it is now
/// `unsafe`, and kvnet keeps `unsafe` to the tap and fd-passing modules.)
struct Watcher {
    epoll: Epoll,
    /// Each pidfd being watched, by its epoll token, with who to tell.
    waiting: Mutex<HashMap<u64, (OwnedFd, oneshot::Sender<()>)>>,
    next_token: AtomicU64,
}

impl Watcher {
    fn watch(&self, pidfd: OwnedFd) -> io::Result<oneshot::Receiver<()>> {
        let (exited, receiver) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        // Registered under the lock, so that the thread finds the entry of any event.
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        self.epoll
            .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token))
            .map_err(io::Error::from)?;
        waiting.insert(token, (pidfd, exited));
        Ok(receiver)
    }

    fn run(&self) {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            let ready = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(ready) => ready,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::error!("waiting for the processes of macvtap ports: {errno}");
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

/// A process's start time in clock ticks after boot.
fn start_time(pid: i32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path)?;
    parse_start_time(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable {path}")))
}

/// Field 22 of `/proc/PID/stat`. The second field, the command name in parentheses, may
/// itself hold spaces and parentheses, so the fields are counted after its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    // After the name come field 3 (state) onwards; field 22 is the 20th of those.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn start_time_is_counted_after_the_last_parenthesis() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
    }

    #[tokio::test]
    async fn a_peer_is_the_process_on_the_socket_and_is_watched_until_it_exits() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        // The peer of a socketpair is this very process.
        let owner = Owner::of_peer(ours.as_fd()).expect("peer pidfd");
        assert_eq!(owner.id.pid, std::process::id() as i32);
        let again = Owner::reopen(owner.id).expect("still running");
        assert_eq!(again.id, owner.id);
        let later = ProcessId {
            start_time: owner.id.start_time + 1,
            ..owner.id
        };
        assert!(
            Owner::reopen(later).is_none(),
            "another start time is another process"
        );

        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("spawn sleep");
        let id = ProcessId {
            pid: child.id() as i32,
            start_time: start_time(child.id() as i32).expect("child's start time"),
        };
        let watched = Owner::reopen(id).expect("child running");
        tokio::time::timeout(std::time::Duration::from_secs(10), watched.exited())
            .await
            .expect("the child's exit is seen")
            .expect("watch");
        child.wait().expect("reap");
        assert!(Owner::reopen(id).is_none(), "an exited process is gone");
    }
}
