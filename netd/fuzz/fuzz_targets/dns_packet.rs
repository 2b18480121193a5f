//! `cargo +nightly fuzz run dns_packet`: raw bytes through the DNS server's decode and
//! answer path (the same `Resolver::answer` the UDP and TCP paths call).
//!
//! The first input byte picks what the rest is: a query over UDP (0 mod 4) or TCP (1),
//! or an upstream's reply to a forwarded query (2 and 3), which the answer cache may
//! keep. Oracles besides "no panic": those of `netd::dns::fuzzing::check_answer` (the
//! reply decodes with hickory-proto and carries the query's ID and question; the
//! resolver's parser agrees with hickory-proto's decoder) and `check_kept_reply` (a
//! kept reply goes out with the next client's ID and question and fits UDP), which the
//! seeded mutation tests run too.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use netd::dns::fuzzing::{check_answer, check_kept_reply};
use netd::dns::resolver::Transport;
use netd::dns::{DnsConfig, LeaseSource, Resolver};
use netd::xml::{DnsForwarder, DnsHost, DnsSrv, DnsTxt};

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let config = DnsConfig {
            network: "fuzz".into(),
            listen: Vec::new(),
            interface: None,
            domain: Some("fuzz.test".into()),
            local_only: true,
            forward_plain_names: false,
            hosts: vec![DnsHost {
                ip: "192.168.77.50".parse().expect("invariant: literal address"),
                hostnames: vec!["fixed".into(), "other.name.test".into()],
            }],
            srvs: vec![DnsSrv {
                service: "ldap".into(),
                protocol: "tcp".into(),
                domain: Some("fuzz.test".into()),
                target: Some("fixed.fuzz.test".into()),
                port: Some(389),
                priority: Some(1),
                weight: Some(1),
            }],
            txts: vec![DnsTxt {
                name: "info.fuzz.test".into(),
                value: "x".repeat(600),
            }],
            forwarders: vec![DnsForwarder {
                addr: Some("10.0.0.2".parse().expect("invariant: literal address")),
                domain: Some("corp.test".into()),
            }],
            default_upstreams: vec!["10.0.0.53:53".parse().expect("invariant: literal address")],
            local_ptr_domains: vec!["77.168.192.in-addr.arpa".into()],
            // Fields added later get their defaults: the target keeps building.
            ..DnsConfig::default()
        };
        let leases = Arc::new(|| {
            (0..40u8)
                .map(|i| (Ipv4Addr::new(192, 168, 77, 100 + i).into(), format!("guest{i}")))
                .collect()
        });
        Resolver::new(&config, Some(LeaseSource::new(leases))).expect("invariant: valid fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, query)) = data.split_first() else {
        return;
    };
    let checked = match mode % 4 {
        0 => check_answer(resolver(), query, Transport::Udp).map(drop),
        1 => check_answer(resolver(), query, Transport::Tcp).map(drop),
        _ => check_kept_reply(resolver(), query),
    };
    if let Err(broken) = checked {
        panic!("{broken}");
    }
});
