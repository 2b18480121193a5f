//! `cargo +nightly fuzz run dhcp_packet`: raw bytes through the DHCP server's decode and
//! handle path (the same `Engine::handle` the server task calls).
//!
//! The input is split on the byte sequence `\xff\xfe\xfd` into up to 32 packets handled in
//! order by one engine, so sequences (DISCOVER then REQUEST, RELEASE, ...) are reachable.
//! Oracles besides "no panic": every reply decodes again, and no address is leased twice.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use netd::dhcp::{DhcpBoot, DhcpConfig, DhcpHostConfig, Engine};
use netd::xml::{DhcpOptionRule, DhcpOptionValue};

fn config() -> DhcpConfig {
    DhcpConfig {
        network: "fuzz".into(),
        interface: "br0".into(),
        server_ip: Ipv4Addr::new(192, 168, 77, 1),
        subnet: "192.168.77.0/24".parse().expect("invariant: literal subnet"),
        ranges: vec![(Ipv4Addr::new(192, 168, 77, 100), Ipv4Addr::new(192, 168, 77, 103), None)],
        hosts: vec![DhcpHostConfig {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x42]),
            ip: Ipv4Addr::new(192, 168, 77, 101),
            name: Some("fixed".into()),
            lease: None,
        }],
        router: Some(Ipv4Addr::new(192, 168, 77, 1)),
        dns_server: Some(Ipv4Addr::new(192, 168, 77, 1)),
        domain: Some("fuzz.test".into()),
        mtu: Some(1400),
        default_lease: Duration::from_secs(3600),
        boot: Some(DhcpBoot {
            file: "pxelinux.0".into(),
            server: Ipv4Addr::new(192, 168, 77, 1),
        }),
        // dhcp-option lines: one sent when asked for, one forced, one that omits the
        // router, so the size trimming and replacement paths are reached.
        options: vec![
            DhcpOptionRule {
                code: 3,
                value: DhcpOptionValue::Omitted,
                force: false,
            },
            DhcpOptionRule {
                code: 42,
                value: DhcpOptionValue::Addresses(vec![Ipv4Addr::UNSPECIFIED; 8]),
                force: false,
            },
            DhcpOptionRule {
                code: 66,
                value: DhcpOptionValue::Text("t".repeat(200)),
                force: true,
            },
        ],
        // Its lines are made of guest input too.
        log_dhcp: true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(config());
    let now = 1_700_000_000;
    let mut rest = data;
    for step in 0..32 {
        let (packet, next) = match rest.windows(3).position(|w| w == [0xff, 0xfe, 0xfd]) {
            Some(at) => (&rest[..at], &rest[at + 3..]),
            None => (rest, &[][..]),
        };
        if let Some(reply) = engine.handle(packet, now + step) {
            assert!(dhcproto::v4::Message::decode(&mut Decoder::new(&reply.bytes)).is_ok());
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
