//! COM1: a 16550 UART (vm-superio) on port 0x3f8, interrupting on IRQ 4 through an irqfd.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;

/// Number of UART registers.
pub const SERIAL_PORT_COUNT: u64 = 8;

/// An eventfd the UART writes to raise its interrupt (registered as an irqfd).
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A cloneable in-memory serial sink, for tests and embedding.
#[derive(Clone, Debug, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// An empty buffer.
    pub fn new() -> SharedBuffer {
        SharedBuffer::default()
    }

    /// A copy of everything written so far.
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The UART as a port-I/O bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART that writes transmitted bytes to `out` and signals `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> SerialDevice {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queues bytes for the guest to read (as if typed); returns how many fitted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_COUNT {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < SERIAL_PORT_COUNT {
            // vm-superio flushes the sink after every transmitted byte.
            if let Err(error) = self.uart.write(offset as u8, data[0]) {
                tracing::warn!(?error, "serial output failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitted_bytes_reach_the_sink_and_raise_thr_interrupt() {
        let out = SharedBuffer::new();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let irq_probe = irq.try_clone().expect("clone");
        let mut dev = SerialDevice::new(irq, Box::new(out.clone()));
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        assert_eq!(irq_probe.read().expect("enabling raises THRE"), 1);
        let mut iir = [0u8];
        for b in b"hi\n" {
            dev.read(2, &mut iir); // acknowledge, as the 8250 driver does
            assert_eq!(iir[0] & 0x0f, 0x02, "THR empty was the cause");
            dev.write(0, &[*b]);
            assert_eq!(irq_probe.read().expect("THRE after each byte"), 1);
        }
        assert_eq!(out.text(), "hi\n");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THR and transmitter empty");
    }

    #[test]
    fn scratch_register_round_trips() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = SerialDevice::new(irq, Box::new(std::io::sink()));
        dev.write(7, &[0x5a]);
        let mut b = [0u8];
        dev.read(7, &mut b);
        assert_eq!(b[0], 0x5a);
    }
}
