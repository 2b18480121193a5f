//! kvnet-vmm: a KVM virtual machine monitor built on the rust-vmm crates.

pub mod devices;

use std::process::ExitCode;

/// Entry point of the `kvnet-vmm` binary.
pub fn main() -> ExitCode {
    eprintln!("kvnet-vmm: not built yet");
    ExitCode::FAILURE
}
