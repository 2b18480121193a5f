//! The hardware-reduced ACPI sleep and reset registers on port 0x600, which the FADT
//! advertises: writing S5 with SLP_EN powers the VM off, writing the reset value resets it.

use std::sync::Arc;

use super::bus::BusDevice;
use super::virtio::{WarnLatch, guest_warn};
use crate::event_loop::{ExitReason, ExitSignal};

/// Offset of the sleep control register.
pub const SLEEP_CONTROL: u16 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u16 = 1;
/// Offset of the reset register.
pub const RESET: u16 = 2;
/// Ports the device occupies.
pub const PORT_COUNT: u16 = 3;
/// Value of `\_S5_` in the DSDT.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Value the FADT tells the guest to write into the reset register.
pub const RESET_VALUE: u8 = 1;

/// Sleep control: SLP_TYPx in bits 2..=4, SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;
const SLP_EN: u8 = 1 << 5;
/// Sleep status: the wake status bit.
const WAK_STS: u8 = 1 << 7;

/// The sleep/reset register block.
#[derive(Debug)]
pub struct AcpiPmDevice {
    exit: Arc<ExitSignal>,
    /// A guest looping on an unsupported sleep state is told of once at warn.
    warned: WarnLatch,
}

impl AcpiPmDevice {
    /// Reports poweroff and reset to `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> AcpiPmDevice {
        AcpiPmDevice {
            exit,
            warned: WarnLatch::default(),
        }
    }
}

impl BusDevice for AcpiPmDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // Sleep status: we never sleep, so report "woken" for any polling guest.
        if offset == u64::from(SLEEP_STATUS)
            && let Some(first) = data.first_mut()
        {
            *first = WAK_STS;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset as u16 {
            SLEEP_CONTROL => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if value & SLP_EN != 0 {
                    if sleep_type == S5_SLEEP_TYPE {
                        self.exit.request(Ok(ExitReason::Poweroff));
                    } else {
                        guest_warn!(
                            self.warned,
                            u32::from(sleep_type),
                            sleep_type,
                            "guest asked for an unsupported sleep state"
                        );
                    }
                }
            }
            RESET if value == RESET_VALUE => self.exit.request(Ok(ExitReason::Reset)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = AcpiPmDevice::new(exit.clone());
        dev.write(0, &[S5_SLEEP_TYPE << 2]); // no SLP_EN yet
        assert!(!exit.is_requested());
        dev.write(0, &[(1 << 2) | SLP_EN]); // S1: not supported
        assert!(!exit.is_requested());
        dev.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(exit.wait(None), Ok(ExitReason::Poweroff));
    }

    #[test]
    fn reset_value_resets() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = AcpiPmDevice::new(exit.clone());
        dev.write(2, &[0x0e]);
        assert!(!exit.is_requested());
        dev.write(2, &[RESET_VALUE]);
        assert_eq!(exit.wait(None), Ok(ExitReason::Reset));
    }

    #[test]
    fn a_guest_looping_on_an_unsupported_sleep_state_is_logged_once() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = AcpiPmDevice::new(exit.clone());
        let text = crate::testing::warnings_logged(|| {
            for _ in 0..1000 {
                dev.write(0, &[(1 << SLP_TYP_SHIFT) | SLP_EN]);
            }
        });
        let warnings = text
            .lines()
            .filter(|line| line.contains("unsupported sleep state"))
            .count();
        assert_eq!(warnings, 1, "{text}");
        assert!(!exit.is_requested());
    }
}
