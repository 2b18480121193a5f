//! Passing file descriptors over a Unix stream socket (`SCM_RIGHTS`): how kvnetd hands a
//! guest's tap to kvnet-vmm, which then needs no CAP_NET_ADMIN. And keeping the ones it
//! inherited from passing on to the programs it runs, and reading the groups a Unix
//! socket's peer connected with.
//!
//! Ancillary data rides on the bytes it was sent with, and a plain `read` of those bytes
//! closes the descriptors it carries. So a receiver reads the whole exchange through
//! [`recv_with_fds`], never through `read`.

// Descriptors cross processes here, through raw fds and ancillary data.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};

/// The most descriptors one message may carry (a multiqueue NIC has one per queue pair).
pub const MAX_FDS: usize = 8;

/// Sends `payload` with `fds` attached to it. Returns how many payload bytes went out; the
/// descriptors go with the first of them, so a short send still delivered all of them.
pub fn send_with_fds(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if payload.is_empty() {
        // Descriptors need at least one byte to ride on.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need a non-empty payload",
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let control = [ControlMessage::ScmRights(&raw)];
    let iov = [IoSlice::new(payload)];
    socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        if raw.is_empty() { &[] } else { &control },
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)
}

/// The kernel's limit on descriptors in one message (`SCM_MAX_FD`). Room for that many means
/// the kernel never truncates: a descriptor that did not fit would be closed unseen.
const SCM_MAX_FD: usize = 253;

/// Receives into `buffer` and appends the descriptors that came with those bytes to `fds`
/// (close-on-exec). Returns the number of bytes read; 0 is the end of the stream.
///
/// Fails when the message carried more than [`MAX_FDS`] descriptors; those are closed.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buffer: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut received = Vec::new();
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = control {
            for fd in raw {
                // SAFETY: the kernel installed `fd` in this process for this message; nothing
                // else knows its number, so this is its only owner.
                received.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if received.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the message carried {} descriptors, more than {MAX_FDS}",
                received.len()
            ),
        ));
    }
    fds.append(&mut received);
    Ok(message.bytes)
}

/// Marks every descriptor above stderr that this process inherited close-on-exec, so
/// that none reaches a program it runs (kvnetd's hook scripts) or whatever such a program
/// leaves running. Unlike closing them, this leaves the process itself any it was handed
/// on purpose. Call it first in `main`, before the process opens any of its own (which
/// are close-on-exec anyway). Needs Linux 5.11 (`CLOSE_RANGE_CLOEXEC`).
pub fn keep_inherited_fds_from_children() -> io::Result<()> {
    // SAFETY: with CLOSE_RANGE_CLOEXEC the call closes nothing: it only sets a flag on
    // each open descriptor, so no descriptor anything in the process owns is invalidated,
    // whichever thread runs it and whenever.
    let result = unsafe { libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The supplementary groups of the process at the other end of `socket`, as they were
/// when it connected (`SO_PEERGROUPS`). Unlike reading `/proc/PID/status` later, this
/// cannot see another process that took over the peer's pid, nor groups the peer
/// dropped or gained since.
pub fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow to what the kernel asks for.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let capacity = groups.len() * std::mem::size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity).map_err(io::Error::other)?;
        // SAFETY: `groups` is a live buffer of `len` bytes that the kernel fills with at
        // most `len` bytes of gid_t values, and `len` is a valid socklen_t it updates.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = usize::try_from(len).map_err(io::Error::other)?;
        if rc == 0 {
            groups.truncate(needed / std::mem::size_of::<libc::gid_t>());
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the buffer was too small and `len` now says how large it must be.
        if error.raw_os_error() != Some(libc::ERANGE) || needed <= capacity {
            return Err(error);
        }
        groups.resize(needed.div_ceil(std::mem::size_of::<libc::gid_t>()), 0);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn file_with(text: &str) -> std::fs::File {
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(text.as_bytes()).expect("write");
        file.rewind().expect("rewind");
        file
    }

    #[test]
    fn peer_groups_are_the_connecting_processs_groups() {
        let (ours, _theirs) = UnixStream::pair().expect("pair");
        let mut got = peer_groups(ours.as_fd()).expect("SO_PEERGROUPS");
        let mut expected: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .into_iter()
            .map(|gid| gid.as_raw())
            .collect();
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
    }

    #[test]
    fn descriptors_arrive_with_their_bytes_and_work() {
        let (left, right) = UnixStream::pair().expect("socketpair");
        let (one, two) = (file_with("one"), file_with("two"));
        let sent =
            send_with_fds(left.as_fd(), b"hello", &[one.as_fd(), two.as_fd()]).expect("send");
        assert_eq!(sent, 5);
        drop(left);

        let mut fds = Vec::new();
        let mut buffer = [0; 16];
        let n = recv_with_fds(right.as_fd(), &mut buffer, &mut fds).expect("recv");
        assert_eq!(&buffer[..n], b"hello");
        assert_eq!(fds.len(), 2);
        let mut texts = Vec::new();
        for fd in fds {
            let mut text = String::new();
            std::fs::File::from(fd)
                .read_to_string(&mut text)
                .expect("read");
            texts.push(text);
        }
        assert_eq!(texts, ["one", "two"]);
        assert_eq!(
            recv_with_fds(right.as_fd(), &mut buffer, &mut Vec::new()).expect("eof"),
            0
        );
    }

    #[test]
    fn received_descriptors_are_close_on_exec() {
        let (left, right) = UnixStream::pair().expect("socketpair");
        let file = file_with("x");
        send_with_fds(left.as_fd(), b"x", &[file.as_fd()]).expect("send");
        let mut fds = Vec::new();
        recv_with_fds(right.as_fd(), &mut [0; 1], &mut fds).expect("recv");
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn too_many_descriptors_is_an_error_not_a_silent_loss() {
        let (left, right) = UnixStream::pair().expect("socketpair");
        let files: Vec<_> = (0..MAX_FDS + 1).map(|_| file_with("x")).collect();
        let borrowed: Vec<_> = files.iter().map(AsFd::as_fd).collect();
        send_with_fds(left.as_fd(), b"x", &borrowed).expect("send");
        let error =
            recv_with_fds(right.as_fd(), &mut [0; 1], &mut Vec::new()).expect_err("too many");
        assert!(
            error.to_string().contains("9 descriptors, more than 8"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_payload_is_refused() {
        let (left, _right) = UnixStream::pair().expect("socketpair");
        let file = file_with("x");
        assert!(send_with_fds(left.as_fd(), b"", &[file.as_fd()]).is_err());
    }
}
