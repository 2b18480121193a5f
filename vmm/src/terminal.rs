//! The terminal on the VMM's stdin, when the guest's console is on stdio.
//!
//! A terminal in its usual (canonical) mode would hold input back until Enter, echo it
//! a second time beside the guest's own echo, and turn Ctrl-C and Ctrl-Z into signals
//! for the VMM. A VMM in the terminal's foreground switches it to raw input for the
//! guest and puts the saved settings back when it ends ([`RawTerminal`]). One in the
//! background must not read it at all: the kernel would stop it with SIGTTIN.

use std::io::IsTerminal;

use nix::sys::termios::{
    ControlFlags, InputFlags, LocalFlags, SetArg, SpecialCharacterIndices, Termios, tcgetattr,
    tcsetattr,
};

/// What the VMM's stdin is, for the console's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdin {
    /// Not a terminal (a pipe, a file, /dev/null): read as it is, to its end.
    NotTerminal,
    /// A terminal whose foreground process group is ours: the user types to the guest.
    Foreground,
    /// A terminal we are not in the foreground of (started with `&`), or not our
    /// controlling terminal: reading it could stop the VMM.
    Background,
}

/// Looks at the VMM's stdin.
pub fn stdin_kind() -> Stdin {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Stdin::NotTerminal;
    }
    match nix::unistd::tcgetpgrp(&stdin) {
        Ok(group) if group == nix::unistd::getpgrp() => Stdin::Foreground,
        _ => Stdin::Background,
    }
}

/// Errors switching the terminal to raw input.
#[derive(Debug, thiserror::Error)]
pub enum TerminalError {
    /// `tcgetattr` or `tcsetattr` on stdin failed.
    #[error("cannot switch the terminal on stdin to raw input ({op})")]
    Termios {
        /// The call that failed.
        op: &'static str,
        /// Why.
        #[source]
        source: nix::Error,
    },
}

/// The terminal on stdin in raw input mode; dropping it puts the saved settings back.
#[derive(Debug)]
pub struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// Switches the terminal on stdin to raw input, as QEMU's stdio console does: every
    /// byte goes to the guest as typed (no line editing, echo, signal keys, flow
    /// control or CR-to-NL), while output processing stays on, so that the guest's
    /// `\n` still starts a new line.
    pub fn enter() -> Result<RawTerminal, TerminalError> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|source| TerminalError::Termios {
            op: "tcgetattr",
            source,
        })?;
        tcsetattr(&stdin, SetArg::TCSANOW, &raw_input(&saved)).map_err(|source| {
            TerminalError::Termios {
                op: "tcsetattr",
                source,
            }
        })?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // Put in the background meanwhile (Ctrl-Z from elsewhere, then `bg`), the VMM
        // would be stopped by SIGTTOU here instead of ending; with it blocked, the
        // settings are put back all the same.
        let mut ttou = nix::sys::signal::SigSet::empty();
        ttou.add(nix::sys::signal::Signal::SIGTTOU);
        if let Err(error) = ttou.thread_block() {
            tracing::debug!(%error, "cannot block SIGTTOU");
        }
        if let Err(error) = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved) {
            tracing::warn!(%error, "cannot restore the terminal's settings");
        }
    }
}

/// `termios` with raw input and everything else (output processing included) kept.
fn raw_input(cooked: &Termios) -> Termios {
    let mut raw = cooked.clone();
    raw.input_flags.remove(
        InputFlags::IGNBRK
            | InputFlags::BRKINT
            | InputFlags::PARMRK
            | InputFlags::ISTRIP
            | InputFlags::INLCR
            | InputFlags::IGNCR
            | InputFlags::ICRNL
            | InputFlags::IXON,
    );
    raw.local_flags.remove(
        LocalFlags::ECHO
            | LocalFlags::ECHONL
            | LocalFlags::ICANON
            | LocalFlags::ISIG
            | LocalFlags::IEXTEN,
    );
    raw.control_flags
        .remove(ControlFlags::CSIZE | ControlFlags::PARENB);
    raw.control_flags.insert(ControlFlags::CS8);
    // A read returns as soon as one byte is there.
    raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    raw
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::termios::OutputFlags;

    #[test]
    fn raw_input_keeps_output_processing() {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let cooked = tcgetattr(&pty.slave).expect("tcgetattr");
        assert!(
            cooked
                .local_flags
                .contains(LocalFlags::ICANON | LocalFlags::ECHO)
        );
        let raw = raw_input(&cooked);
        for flag in [
            LocalFlags::ICANON,
            LocalFlags::ECHO,
            LocalFlags::ISIG,
            LocalFlags::IEXTEN,
        ] {
            assert!(!raw.local_flags.contains(flag), "{flag:?}");
        }
        assert!(
            !raw.input_flags
                .intersects(InputFlags::ICRNL | InputFlags::IXON)
        );
        assert_eq!(raw.output_flags, cooked.output_flags);
        assert!(raw.output_flags.contains(OutputFlags::OPOST));
        tcsetattr(&pty.slave, SetArg::TCSANOW, &raw).expect("the kernel takes it");
    }
}
