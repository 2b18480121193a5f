//! `cargo +nightly fuzz run dhcp6_packet`: raw bytes through the DHCPv6 server's handle
//! path (the same `Engine::handle` the server task calls).
//!
//! The input is split on the byte sequence `\xff\xfe\xfd` into up to 32 packets handled in
//! order by one engine, so sequences (SOLICIT then REQUEST, RENEW, RELEASE, ...) are
//! reachable. Oracles besides "no panic": every reply decodes again, and no address is
//! leased twice.
#![no_main]

use std::net::Ipv6Addr;
use std::time::Duration;

use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use netd::dhcp6::{Dhcp6Config, Dhcp6HostConfig, Engine};

fn config() -> Dhcp6Config {
    let ip = |text: &str| text.parse::<Ipv6Addr>().expect("invariant: literal address");
    Dhcp6Config {
        network: "fuzz".into(),
        interface: "br0".into(),
        server_mac: [0x52, 0x54, 0, 0, 0, 1],
        server_ip: ip("fd00:77::1"),
        subnet: "fd00:77::/64".parse().expect("invariant: literal subnet"),
        ranges: vec![(ip("fd00:77::100"), ip("fd00:77::103"), None)],
        hosts: vec![
            Dhcp6HostConfig {
                duid: Some(vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, 0x42]),
                name: Some("fixed".into()),
                ip: ip("fd00:77::101"),
                lease: None,
            },
            Dhcp6HostConfig {
                duid: None,
                name: Some("named".into()),
                ip: ip("fd00:77::200"),
                lease: Some(Duration::ZERO),
            },
        ],
        dns_server: Some(ip("fd00:77::1")),
        domain: Some("fuzz.test".into()),
        default_lease: Duration::from_secs(3600),
        // Its lines are made of guest input too.
        log_dhcp: true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(config());
    let source: Ipv6Addr = "fe80::5054:ff:fe00:42".parse().expect("invariant: literal address");
    let now = 1_700_000_000;
    let mut rest = data;
    for step in 0..32 {
        let (packet, next) = match rest.windows(3).position(|w| w == [0xff, 0xfe, 0xfd]) {
            Some(at) => (&rest[..at], &rest[at + 3..]),
            None => (rest, &[][..]),
        };
        if let Some(reply) = engine.handle(packet, source, now + step) {
            assert!(dhcproto::v6::Message::decode(&mut Decoder::new(&reply.bytes)).is_ok());
        }
        if next.is_empty() {
            break;
        }
        rest = next;
    }
    let leases = engine.leases(now + 32);
    let mut ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), leases.len(), "an address is leased twice");
});
