//! Fuzzes the virtio-net device over guest memory (rings, descriptors, buffers)
//! and host frames taken from the input. The logic lives in
//! `vmm::devices::virtio::net::test_utils::fuzz_net_device`, which a unit test
//! also drives with pseudo-random inputs on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vmm::devices::virtio::net::test_utils::fuzz_net_device(data);
});
