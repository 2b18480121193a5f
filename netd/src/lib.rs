//! kvnetd: named virtual networks managed over a Unix-socket API.

pub mod dhcp;
pub mod firewall;
pub mod link;
pub mod xml;

use std::process::ExitCode;

/// Entry point of the `kvnetd` binary.
pub fn main() -> ExitCode {
    ExitCode::FAILURE
}
