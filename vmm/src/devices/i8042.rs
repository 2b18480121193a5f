//! The i8042 keyboard controller, reduced to what Linux's `reboot=k` uses: command 0xfe on
//! port 0x64 pulses the CPU reset line, which ends the VMM.

use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};

use super::bus::BusDevice;
use crate::event_loop::{ExitReason, ExitSignal};

/// Ports 0x60 (data) .. 0x64 (command/status).
pub const I8042_PORT_COUNT: u64 = 5;

/// Turns the controller's reset line into a VM exit request.
#[derive(Debug)]
pub struct ResetLine(pub Arc<ExitSignal>);

impl Trigger for ResetLine {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(Ok(ExitReason::Reset));
        Ok(())
    }
}

/// The controller on ports 0x60..=0x64.
pub struct I8042 {
    device: I8042Device<ResetLine>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller whose reset command requests [`ExitReason::Reset`] on `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> I8042 {
        I8042 {
            device: I8042Device::new(ResetLine(exit)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = self.device.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(&value) = data.first() {
            let Ok(()) = self.device.write(offset as u8, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[0xfe]); // data port: ignored
        assert!(!exit.is_requested());
        dev.write(4, &[0xfe]);
        assert_eq!(exit.wait(None), Ok(ExitReason::Reset));
    }
}
