//! `cargo +nightly fuzz run dns_packet`: raw bytes through the DNS server's decode and
//! answer path (the same `Resolver::answer` the UDP and TCP paths call).
//!
//! The first input byte picks the transport (even: UDP, odd: TCP); the rest is the
//! query. Oracles besides "no panic": every reply decodes again with hickory-proto,
//! carries the query's ID, and a UDP reply fits the largest UDP payload we send; and
//! the resolver's own question parser agrees with hickory-proto's decoder: a query
//! hickory reads as one IN question is answered or forwarded, never dropped, and the
//! reply carries that same question.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::DNSClass;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};
use libfuzzer_sys::fuzz_target;
use netd::dns::resolver::{MAX_UDP_PAYLOAD, Transport};
use netd::dns::{DnsConfig, Outcome, Resolver};
use netd::xml::{DnsForwarder, DnsHost, DnsSrv, DnsTxt};

fn resolver() -> &'static Resolver {
    static RESOLVER: OnceLock<Resolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let config = DnsConfig {
            network: "fuzz".into(),
            listen: Vec::new(),
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
            default_upstreams: vec!["10.0.0.53".parse().expect("invariant: literal address")],
        };
        let leases = Arc::new(|| {
            (0..40u8)
                .map(|i| (Ipv4Addr::new(192, 168, 77, 100 + i), format!("guest{i}")))
                .collect()
        });
        Resolver::new(&config, Some(leases)).expect("invariant: valid fuzz config")
    })
}

/// The question of `query` if hickory-proto reads it as a plain query with one IN
/// question whose name is not compressed (a pointer in the first name of a message
/// can only point into the header; the resolver answers FORMERR to that).
fn hickory_question(query: &[u8]) -> Option<Query> {
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).ok()?;
    if header.message_type != MessageType::Query
        || header.op_code != OpCode::Query
        || header.counts.queries != 1
    {
        return None;
    }
    let question = Query::read(&mut decoder).ok()?;
    let plain = query.get(12..decoder.index()) == question.to_bytes().ok().as_deref();
    (plain && question.query_class() == DNSClass::IN).then_some(question)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, query)) = data.split_first() else {
        return;
    };
    let transport = if mode % 2 == 0 { Transport::Udp } else { Transport::Tcp };
    let mut out = Vec::new();
    let outcome = resolver().answer(query, transport, &mut out);
    let question = hickory_question(query);
    if question.is_some() {
        assert_ne!(outcome, Outcome::Drop);
    }
    if outcome == Outcome::Reply {
        let reply = Message::from_vec(&out).expect("a reply decodes");
        assert_eq!(reply.metadata.id, u16::from_be_bytes([query[0], query[1]]));
        if let Some(question) = question {
            assert_eq!(reply.queries, [question]);
        }
        if transport == Transport::Udp {
            assert!(out.len() <= usize::from(MAX_UDP_PAYLOAD));
        }
    } else {
        assert!(out.is_empty());
    }
});
