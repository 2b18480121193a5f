//! Serial output written by a thread of its own. vm-superio writes and flushes the sink
//! for every byte the guest transmits, from the vCPU thread, with the UART locked: a
//! terminal paused with Ctrl-S, or a pipe its reader stopped draining, would stop that
//! vCPU in `write(2)`, and the VM could then not be stopped at all (a kick only makes the
//! write retry). Here the vCPU only appends to a bounded buffer; what does not fit is
//! dropped and counted, as Firecracker drops serial output it cannot write.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes held for a sink that is not keeping up: a whole verbose boot log.
const CAPACITY: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Bytes dropped since the last report.
    dropped: u64,
    /// No more bytes will come: the thread writes what is left and ends.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when bytes arrive or the output closes.
    wake: Condvar,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Appending bytes leaves the buffer consistent whatever panicked.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The vCPUs' side: a [`Write`] that never blocks.
#[derive(Debug)]
pub struct ConsoleOutput(Arc<Shared>);

/// The writer thread's handle, to wait for what is left to be written when the VM ends.
#[derive(Debug)]
pub struct ConsoleDrain {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// Starts the thread that writes to `sink`.
pub fn spawn(mut sink: Box<dyn Write + Send>) -> std::io::Result<(ConsoleOutput, ConsoleDrain)> {
    let shared = Arc::new(Shared::default());
    let writer = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("serial-out".to_owned())
        .spawn(move || {
            let mut failing = false;
            loop {
                let (bytes, dropped, closed) = {
                    let mut pending = writer.pending();
                    while pending.bytes.is_empty() && !pending.closed {
                        pending = writer.wake.wait(pending).unwrap_or_else(|p| p.into_inner());
                    }
                    let dropped = std::mem::take(&mut pending.dropped);
                    (std::mem::take(&mut pending.bytes), dropped, pending.closed)
                };
                if dropped > 0 {
                    tracing::warn!(
                        dropped,
                        "serial output dropped: its reader is not keeping up"
                    );
                }
                if !bytes.is_empty() {
                    match sink.write_all(&bytes).and_then(|()| sink.flush()) {
                        // Once until it works again: a guest writing on to a full disk
                        // must not fill the log instead.
                        Err(error) if !failing => {
                            tracing::warn!(%error, "serial output failed: dropping it until it can be written");
                            failing = true;
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
                if closed {
                    break;
                }
            }
        })?;
    Ok((
        ConsoleOutput(Arc::clone(&shared)),
        ConsoleDrain { shared, thread },
    ))
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.pending();
        let room = CAPACITY.saturating_sub(pending.bytes.len());
        let taken = buf.len().min(room);
        pending.bytes.extend_from_slice(&buf[..taken]);
        pending.dropped += (buf.len() - taken) as u64;
        drop(pending);
        self.0.wake.notify_one();
        // Accepted whole: the guest's UART has sent it, whatever became of it.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ConsoleOutput {
    /// The UART is gone (a VM dropped without running): the thread writes what is left
    /// and ends.
    fn drop(&mut self) {
        self.0.pending().closed = true;
        self.0.wake.notify_one();
    }
}

impl ConsoleDrain {
    /// Lets the thread write what is left and waits for it, at most `timeout`: a sink
    /// that takes nothing more must not keep the VMM from exiting.
    pub fn finish(self, timeout: Duration) {
        self.shared.pending().closed = true;
        self.shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        while !self.thread.is_finished() {
            if Instant::now() >= deadline {
                tracing::warn!("serial output not all written: its reader stopped reading");
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::serial::SharedBuffer;

    #[test]
    fn bytes_reach_the_sink_in_order_and_all_before_finish_returns() {
        let out = SharedBuffer::new();
        let (mut console, drain) = spawn(Box::new(out.clone())).expect("spawn");
        for line in 0..100 {
            console
                .write_all(format!("line {line}\n").as_bytes())
                .expect("write");
        }
        drain.finish(Duration::from_secs(10));
        let expected: String = (0..100).map(|line| format!("line {line}\n")).collect();
        assert_eq!(out.text(), expected);
    }

    /// A sink that blocks for good (a pipe nobody reads) neither blocks the writer nor
    /// the end of the VM.
    #[test]
    fn a_stuck_sink_costs_bytes_not_the_writer() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (mut console, drain) = spawn(Box::new(Stuck)).expect("spawn");
        let started = Instant::now();
        for _ in 0..(4 * CAPACITY) {
            assert_eq!(console.write(b"x").expect("never fails"), 1);
        }
        drain.finish(Duration::from_millis(100));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
