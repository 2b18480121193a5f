//! `cargo fuzz run dns_forward`: what the DNS server does with an upstream's reply to a
//! forwarded query before a client sees it, for any query and any reply:
//! `Resolver::ready_for`, which the server's UDP and TCP paths call, for the first asker
//! and for a second client asking the same question meanwhile, and the answer cache
//! (`remember`, then `cached_reply` for the second client). `dns_packet` covers the
//! cache for one fixed query only.
//!
//! Input: the client's query, `\xff\xfe\xfd`, the upstream's reply, and optionally
//! `\xff\xfe\xfd` and a second client's query (same question, any ID, letter case, EDNS).
//! Only queries the resolver forwards and replies `is_reply_to` accepts go on, as in
//! the server. A fresh resolver per input keeps runs reproducible.
//!
//! Oracles: a client's reply has its ID; over UDP it fits the client's size (512
//! bytes without EDNS, else its size up to `MAX_UDP_PAYLOAD`); a reply hickory-proto
//! decodes still decodes after kvnet's changes, and then carries the client's question.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;
use netd::dns::resolver::{Answered, MAX_UDP_PAYLOAD, Transport, is_reply_to};
use netd::dns::{DnsConfig, LeaseSource, Outcome, Resolver};
use netd::xml::{DnsForwarder, DnsHost};

const SEPARATOR: &[u8] = b"\xff\xfe\xfd";

fn resolver() -> Resolver {
    let config = DnsConfig {
        network: "fuzz".into(),
        listen: Vec::new(),
        interface: None,
        domain: Some("fuzz.test".into()),
        local_only: false,
        forward_plain_names: true,
        hosts: vec![DnsHost {
            ip: "192.168.77.50".parse().expect("invariant: literal address"),
            hostnames: vec!["a.b.sub.fuzz.test".into()],
        }],
        forwarders: vec![DnsForwarder {
            addr: Some("10.0.0.2".parse().expect("invariant: literal address")),
            domain: Some("corp.test".into()),
        }],
        default_upstreams: vec!["10.0.0.53:53".parse().expect("invariant: literal address")],
        ..DnsConfig::default()
    };
    let leases = Arc::new(|| vec![(Ipv4Addr::new(192, 168, 77, 100).into(), "guest".to_owned())]);
    Resolver::new(&config, Some(LeaseSource::new(leases))).expect("invariant: valid fuzz config")
}

fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&data[..at], Some(&data[at + sep.len()..])),
        None => (data, None),
    }
}

/// The UDP size `query` offers: 512 without an additional record, its OPT record's
/// (as hickory-proto reads it) clamped to 512..=MAX_UDP_PAYLOAD, else (an additional
/// record hickory-proto cannot read) only MAX_UDP_PAYLOAD is sure.
fn udp_limit(query: &[u8]) -> usize {
    if query.get(10..12) == Some(&[0, 0]) {
        return 512;
    }
    match Message::from_vec(query).map(|m| m.edns.map(|edns| edns.max_payload())) {
        Ok(Some(offered)) => usize::from(offered.clamp(512, MAX_UDP_PAYLOAD)),
        Ok(None) => 512,
        Err(_) => usize::from(MAX_UDP_PAYLOAD),
    }
}

fn check(what: &str, query: &[u8], upstream_decodes: bool, reply: &[u8], transport: Transport) {
    assert_eq!(
        reply.get(..2),
        query.get(..2),
        "{what}: the reply has another ID: {reply:02x?}"
    );
    if transport == Transport::Udp {
        let limit = udp_limit(query);
        assert!(
            reply.len() <= limit,
            "{what}: a {} byte UDP reply for a client taking {limit}: {reply:02x?}",
            reply.len()
        );
    }
    if upstream_decodes {
        let decoded = Message::from_vec(reply).unwrap_or_else(|e| {
            panic!("{what}: the upstream's reply decoded, kvnet's does not: {e}\n{reply:02x?}")
        });
        if let Ok(asked) = Message::from_vec(query) {
            assert_eq!(
                decoded.queries, asked.queries,
                "{what}: not the client's question"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (query, Some(rest)) = split_once(data, SEPARATOR) else {
        return;
    };
    let (upstream, second) = split_once(rest, SEPARATOR);
    let resolver = resolver();
    let mut out = Vec::new();
    if !matches!(
        resolver.answer(query, Transport::Udp, &mut out),
        Outcome::Forward(_)
    ) {
        return;
    }
    // As the server: only a reply to the forwarded query is taken.
    if !is_reply_to(query, upstream) {
        return;
    }
    let upstream_decodes = Message::from_vec(upstream).is_ok();
    // A second client joins only with the same question (name up to letter case).
    let second = second.filter(|second| {
        let mut as_first = second.to_vec();
        if let (Some(id), Some(first_id)) = (as_first.get_mut(..2), query.get(..2)) {
            id.copy_from_slice(first_id);
        }
        let mut ignored = Vec::new();
        matches!(
            resolver.answer(second, Transport::Udp, &mut ignored),
            Outcome::Forward(_)
        ) && is_reply_to(&as_first, upstream)
    });

    // UDP, as `forwarded()` answers each asker.
    let first = ("udp first", query, Answered::Asked);
    let joined = second.map(|second| ("udp second", second, Answered::Joined));
    for (what, asker, answered) in std::iter::once(first).chain(joined) {
        let mut reply = upstream.to_vec();
        resolver.ready_for(asker, Transport::Udp, answered, &mut reply);
        check(what, asker, upstream_decodes, &reply, Transport::Udp);
    }

    // TCP, as `serve_tcp` answers.
    let mut reply = upstream.to_vec();
    resolver.ready_for(query, Transport::Tcp, Answered::Asked, &mut reply);
    check("tcp", query, upstream_decodes, &reply, Transport::Tcp);

    // The cache: kept for the first, served to the second (or the first again).
    resolver.remember(query, upstream);
    let asker = second.unwrap_or(query);
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut out = Vec::new();
        if resolver.cached_reply(asker, transport, &mut out) {
            check("cached", asker, upstream_decodes, &out, transport);
        }
    }
});
