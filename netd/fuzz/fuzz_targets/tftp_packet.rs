//! `cargo +nightly fuzz run tftp_packet`: raw bytes through what the TFTP and router
//! advertisement servers read from guests: a request to port 69, a transfer's ACK or
//! ERROR, and a packet on the ICMPv6 socket.
//!
//! Oracles besides "no panic": a read request's file has no backslash left and, taken
//! relative to a root, is relative; its block size is within RFC 2348's range and what the
//! server sends, and its timeout one the server agrees to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netd::tftp::{MAX_BLOCK_SIZE, MAX_TIMEOUT_SECONDS, parse_reply, parse_request, path_in_root};

fuzz_target!(|packet: &[u8]| {
    if let Ok(Some(request)) = parse_request(packet) {
        let relative = path_in_root(&request.file, std::path::Path::new("/srv/tftp"));
        assert!(!relative.starts_with('/'), "{:?}", request.file);
        assert!(!request.file.contains('\\'), "{:?}", request.file);
        if let Some(size) = request.block_size {
            assert!((8..=MAX_BLOCK_SIZE).contains(&size), "{size}");
        }
        if let Some(seconds) = request.timeout {
            assert!((1..=MAX_TIMEOUT_SECONDS).contains(&seconds), "{seconds}");
        }
    }
    let _ = parse_reply(packet);
    let _ = netd::ra::is_router_solicitation(packet);
});
