//! Ctrl-C as something to wait for: while an [`Interrupt`] lives, SIGINT does not end the
//! process but makes its descriptor readable, so a verb can wait for it beside a socket
//! with `poll` (what virsh's event loop does with its SIGINT handler).

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// SIGINT caught on a signalfd, until dropped.
#[derive(Debug)]
pub struct Interrupt {
    fd: SignalFd,
    /// The signal mask to put back.
    previous: SigSet,
}

impl Interrupt {
    /// Blocks SIGINT for this thread and opens a descriptor that turns readable when one
    /// is pending. (The CLI has one thread, so no other thread takes the signal.)
    pub fn catch() -> nix::Result<Interrupt> {
        let mut sigint = SigSet::empty();
        sigint.add(Signal::SIGINT);
        let previous = sigint.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
        match SignalFd::with_flags(&sigint, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
            Ok(fd) => Ok(Interrupt { fd, previous }),
            Err(e) => {
                let _ = previous.thread_set_mask();
                Err(e)
            }
        }
    }
}

impl AsFd for Interrupt {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Interrupt {
    /// Takes the SIGINTs already caught (they were handled), then puts the old mask back.
    fn drop(&mut self) {
        while let Ok(Some(_)) = self.fd.read_signal() {}
        let _ = self.previous.thread_set_mask();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sigint_while_caught_makes_the_descriptor_readable_and_ends_nothing() {
        let interrupt = Interrupt::catch().expect("catch");
        // raise() signals this thread only: the test harness runs others beside it.
        nix::sys::signal::raise(Signal::SIGINT).expect("raise");
        let mut fds = [nix::poll::PollFd::new(
            interrupt.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).expect("poll");
        assert_eq!(ready, 1);
        drop(interrupt);
        let mask = SigSet::thread_get_mask().expect("mask");
        assert!(!mask.contains(Signal::SIGINT), "the old mask is back");
    }
}
