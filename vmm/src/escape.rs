//! The console's escape key on a terminal in raw mode, where Ctrl-C goes to the guest:
//! Ctrl-A then `x` stops the VM, and Ctrl-A Ctrl-A sends one Ctrl-A, as in QEMU.

/// Ctrl-A, the escape key (QEMU's default).
pub const ESCAPE: u8 = 0x01;

/// Reads the escape sequences out of what the user types. Keeps a Ctrl-A that ends one
/// read for the next.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    escaped: bool,
}

impl EscapeFilter {
    /// Appends to `out` what of `typed` goes to the guest. Returns `true` when the user
    /// typed Ctrl-A `x`: the VM is to stop, and what follows is dropped. Ctrl-A before
    /// any other key goes to the guest with that key.
    pub fn filter(&mut self, typed: &[u8], out: &mut Vec<u8>) -> bool {
        for &byte in typed {
            if std::mem::take(&mut self.escaped) {
                match byte {
                    b'x' => return true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.escaped = true;
            } else {
                out.push(byte);
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(reads: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut filter = EscapeFilter::default();
        let mut out = Vec::new();
        for typed in reads {
            if filter.filter(typed, &mut out) {
                return (out, true);
            }
        }
        (out, false)
    }

    #[test]
    fn plain_bytes_and_control_keys_go_to_the_guest() {
        assert_eq!(
            run(&[b"ls\r", b"\x03\x04\x1a"]),
            (b"ls\r\x03\x04\x1a".to_vec(), false)
        );
    }

    #[test]
    fn ctrl_a_x_stops_even_across_reads() {
        assert_eq!(run(&[b"ab\x01xcd"]), (b"ab".to_vec(), true));
        assert_eq!(run(&[b"ab\x01", b"x"]), (b"ab".to_vec(), true));
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_other_keys_pass_with_it() {
        assert_eq!(run(&[b"\x01\x01x"]), (b"\x01x".to_vec(), false));
        assert_eq!(run(&[b"\x01", b"\x01"]), (b"\x01".to_vec(), false));
        assert_eq!(run(&[b"\x01a\x01X"]), (b"\x01a\x01X".to_vec(), false));
        // A Ctrl-A alone waits for the next key.
        assert_eq!(run(&[b"z\x01"]), (b"z".to_vec(), false));
    }
}
