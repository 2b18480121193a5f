//! One DNS query in, one decision out: answer it from the network's own names, forward
//! it unchanged to an upstream server, or drop it.
//!
//! The query is decoded with hickory-proto (header and question); a local answer is the
//! header, the question re-encoded, and the zone's prepared records, written into a
//! buffer the caller reuses, so the hot path does not allocate for ordinary names.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name};
use hickory_proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};

use super::zone::{Found, Zone, fqdn};
use super::{DNS_PORT, DnsConfig, Error, LeaseSource};

/// Largest UDP response we send to an EDNS client (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Largest UDP response to a client without EDNS (RFC 1035).
const CLASSIC_UDP_PAYLOAD: usize = 512;
/// Length of the DNS header.
const HEADER_LEN: usize = 12;
/// The lease view is re-read at least this often...
const LEASE_REFRESH: Duration = Duration::from_secs(1);
/// ...and sooner when a name is missing, so a guest that just got its lease resolves.
const LEASE_REFRESH_ON_MISS: Duration = Duration::from_millis(50);
/// The OPT record we add when the client used EDNS: root owner, type 41, our payload
/// size, no extended rcode or flags, no options.
const OPT_RECORD: [u8; 11] = {
    let size = MAX_UDP_PAYLOAD.to_be_bytes();
    [0, 0, 41, size[0], size[1], 0, 0, 0, 0, 0, 0]
};

/// How the query arrived: it bounds the size of the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Over UDP: 512 bytes, or the client's EDNS size up to [`MAX_UDP_PAYLOAD`].
    Udp,
    /// Over TCP: up to 65535 bytes.
    Tcp,
}

/// What to do with a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the output buffer.
    Reply,
    /// Not ours to answer: send the query unchanged to this server.
    Forward(SocketAddr),
    /// Not a query (a response, or too short to answer): ignore it.
    Drop,
}

/// Decides and builds answers for one network; shared by its UDP and TCP paths.
pub struct Resolver {
    network: String,
    domain: Option<Name>,
    /// Names at or under these are never forwarded (`localOnly`, `<forwarder domain=>`
    /// without `addr`).
    local_domains: Vec<Name>,
    forward_plain_names: bool,
    /// `<forwarder domain= addr=>`, most specific domain first.
    routes: Vec<(Name, SocketAddr)>,
    /// Servers for every other name, in order of preference.
    upstreams: Vec<SocketAddr>,
    static_zone: Zone,
    leases: Option<LeaseView>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("network", &self.network)
            .field("domain", &self.domain)
            .field("routes", &self.routes)
            .field("upstreams", &self.upstreams)
            .finish_non_exhaustive()
    }
}

/// The zone of the network's DHCP leases, re-read from the DHCP server now and then.
struct LeaseView {
    source: LeaseSource,
    cache: Mutex<LeaseCache>,
}

#[derive(Default)]
struct LeaseCache {
    zone: Zone,
    read_at: Option<Instant>,
}

fn lock(cache: &Mutex<LeaseCache>) -> MutexGuard<'_, LeaseCache> {
    // The cache is rebuilt whole or not at all: a poisoned one is still consistent.
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Resolver {
    /// A resolver for `config`; `leases` supplies the hostnames of the DHCP leases.
    pub fn new(config: &DnsConfig, leases: Option<LeaseSource>) -> Result<Resolver, Error> {
        let invalid = |value: &str| Error::Record {
            network: config.network.clone(),
            what: "domain",
            value: value.to_owned(),
        };
        let domain = match &config.domain {
            Some(text) => Some(fqdn(text).ok_or_else(|| invalid(text))?),
            None => None,
        };
        let mut local_domains = Vec::new();
        if config.local_only
            && let Some(domain) = &domain
        {
            local_domains.push(domain.clone());
        }
        let mut routes = Vec::new();
        let mut plain = Vec::new();
        for forwarder in &config.forwarders {
            match (&forwarder.domain, forwarder.addr) {
                (Some(text), Some(addr)) => {
                    routes.push((fqdn(text).ok_or_else(|| invalid(text))?, upstream(addr)));
                }
                (Some(text), None) => local_domains.push(fqdn(text).ok_or_else(|| invalid(text))?),
                (None, Some(addr)) => plain.push(upstream(addr)),
                (None, None) => {}
            }
        }
        // Stable: among equally specific domains the first forwarder wins.
        routes.sort_by_key(|(name, _)| std::cmp::Reverse(name.num_labels()));
        let upstreams = if plain.is_empty() {
            config
                .default_upstreams
                .iter()
                .copied()
                .map(upstream)
                .collect()
        } else {
            plain
        };
        Ok(Resolver {
            network: config.network.clone(),
            static_zone: Zone::from_config(config)?,
            domain,
            local_domains,
            forward_plain_names: config.forward_plain_names,
            routes,
            upstreams,
            leases: leases.map(|source| LeaseView {
                source,
                cache: Mutex::default(),
            }),
        })
    }

    /// The network this resolver serves.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Handles one query. On [`Outcome::Reply`], `out` holds the response; otherwise it
    /// is empty. Never panics, whatever `query` holds.
    pub fn answer(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Outcome {
        out.clear();
        let mut decoder = BinDecoder::new(query);
        let Ok(header) = Header::read(&mut decoder) else {
            return Outcome::Drop;
        };
        if header.message_type != MessageType::Query {
            return Outcome::Drop;
        }
        let mut metadata = Metadata::response_from_request(&header.metadata);
        metadata.recursion_available = true;
        if header.op_code != OpCode::Query {
            return error_reply(metadata, ResponseCode::NotImp, out);
        }
        if header.counts.queries != 1 {
            return error_reply(metadata, ResponseCode::FormErr, out);
        }
        let Ok(question) = Query::read(&mut decoder) else {
            return error_reply(metadata, ResponseCode::FormErr, out);
        };
        let edns = edns_payload_size(&query[decoder.index()..], &header);
        let limit = match (transport, edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD,
            (Transport::Udp, Some(size)) => {
                usize::from(size.min(MAX_UDP_PAYLOAD)).max(CLASSIC_UDP_PAYLOAD)
            }
        };
        if question.query_class() != DNSClass::IN {
            return error_reply(metadata, ResponseCode::NotImp, out);
        }
        let name = question.name();
        let qtype = question.query_type();
        if !begin_response(metadata, Some(&question), out) {
            out.clear();
            return Outcome::Drop;
        }
        let question_end = out.len();
        let found = match self.static_zone.append_answers(name, qtype, out) {
            Found::NoName => self.lease_answers(name, qtype, out),
            found => found,
        };
        let (rcode, answers) = match found {
            Found::Records(count) => (ResponseCode::NoError, count),
            Found::NoName if self.is_local(name) => (ResponseCode::NXDomain, 0),
            Found::NoName => match self.upstream_for(name) {
                Some(server) => {
                    out.clear();
                    return Outcome::Forward(server);
                }
                None => {
                    tracing::debug!(network = %self.network, %name, "no upstream DNS server to forward to");
                    set_rcode(out, ResponseCode::Refused, false);
                    return finish(out, question_end, 0, edns.is_some(), limit);
                }
            },
        };
        set_rcode(out, rcode, true);
        finish(out, question_end, answers, edns.is_some(), limit)
    }

    /// Looks `name` up among the leases, re-reading them when the view is stale.
    fn lease_answers(
        &self,
        name: &Name,
        qtype: hickory_proto::rr::RecordType,
        out: &mut Vec<u8>,
    ) -> Found {
        let Some(view) = &self.leases else {
            return Found::NoName;
        };
        let mut cache = lock(&view.cache);
        let age = |cache: &LeaseCache| cache.read_at.map_or(Duration::MAX, |at| at.elapsed());
        if age(&cache) >= LEASE_REFRESH {
            self.reload_leases(view, &mut cache);
        }
        match cache.zone.append_answers(name, qtype, out) {
            Found::NoName if age(&cache) >= LEASE_REFRESH_ON_MISS => {
                self.reload_leases(view, &mut cache);
                cache.zone.append_answers(name, qtype, out)
            }
            found => found,
        }
    }

    fn reload_leases(&self, view: &LeaseView, cache: &mut LeaseCache) {
        let leases = (view.source)();
        cache.zone = Zone::from_leases(&leases, self.domain.as_ref());
        cache.read_at = Some(Instant::now());
    }

    /// Whether a name we do not know must get NXDOMAIN rather than be forwarded.
    fn is_local(&self, name: &Name) -> bool {
        (!self.forward_plain_names && name.num_labels() == 1)
            || self.local_domains.iter().any(|domain| domain.zone_of(name))
    }

    fn upstream_for(&self, name: &Name) -> Option<SocketAddr> {
        self.routes
            .iter()
            .find(|(domain, _)| domain.zone_of(name))
            .map(|(_, server)| *server)
            .or_else(|| self.upstreams.first().copied())
    }
}

fn upstream(addr: IpAddr) -> SocketAddr {
    SocketAddr::new(addr, DNS_PORT)
}

/// The UDP payload size of the query's OPT record, if it has one. The OPT record is
/// looked for only where queries carry it: as the sole additional record right after
/// the question.
fn edns_payload_size(rest: &[u8], header: &Header) -> Option<u16> {
    let counts = header.counts;
    if counts.answers != 0 || counts.authorities != 0 || counts.additionals == 0 {
        return None;
    }
    match rest {
        [0, 0, 41, hi, lo, ..] if rest.len() >= OPT_RECORD.len() => {
            Some(u16::from_be_bytes([*hi, *lo]))
        }
        _ => None,
    }
}

/// Writes the header (counts filled in later) and the question, if any. `false` if the
/// question cannot be encoded again.
fn begin_response(metadata: Metadata, question: Option<&Query>, out: &mut Vec<u8>) -> bool {
    let header = Header {
        metadata,
        counts: hickory_proto::op::HeaderCounts {
            queries: u16::from(question.is_some()),
            ..Default::default()
        },
    };
    let mut encoder = BinEncoder::new(out);
    // The question is the only name written: compression would find nothing to point
    // to, and its bookkeeping allocates a copy of every label.
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    if header.emit(&mut encoder).is_err() {
        return false;
    }
    question.is_none_or(|question| question.emit(&mut encoder).is_ok())
}

/// A response without question or answers (the query could not be understood).
fn error_reply(metadata: Metadata, rcode: ResponseCode, out: &mut Vec<u8>) -> Outcome {
    if !begin_response(metadata, None, out) {
        out.clear();
        return Outcome::Drop;
    }
    set_rcode(out, rcode, false);
    Outcome::Reply
}

/// Sets the response code (RFC 1035 4.1.1: low 4 bits of byte 3) and the AA bit.
fn set_rcode(out: &mut [u8], rcode: ResponseCode, authoritative: bool) {
    out[3] = (out[3] & 0xf0) | rcode.low();
    if authoritative {
        out[2] |= 0x04;
    }
}

/// Fills in the answer count, adds our OPT record if the client sent one, and truncates
/// (TC bit, answers dropped) a response that exceeds `limit`.
fn finish(
    out: &mut Vec<u8>,
    question_end: usize,
    answers: u16,
    edns: bool,
    limit: usize,
) -> Outcome {
    let mut answers = answers;
    if out.len() + if edns { OPT_RECORD.len() } else { 0 } > limit {
        out.truncate(question_end);
        out[2] |= 0x02;
        answers = 0;
    }
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    if edns {
        out.extend_from_slice(&OPT_RECORD);
        out[10..12].copy_from_slice(&1u16.to_be_bytes());
    }
    debug_assert!(out.len() >= HEADER_LEN);
    Outcome::Reply
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use hickory_proto::op::{Edns, Message};
    use hickory_proto::rr::{RData, RecordType};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::xml::{DnsForwarder, DnsHost, DnsSrv, DnsTxt};

    fn config() -> DnsConfig {
        DnsConfig {
            network: "test".into(),
            listen: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 122, 1))],
            domain: Some("example.test".into()),
            local_only: true,
            forward_plain_names: true,
            hosts: vec![
                DnsHost {
                    ip: "192.168.122.50".parse().unwrap(),
                    hostnames: vec!["static1".into(), "alias.other.test".into()],
                },
                DnsHost {
                    ip: "fd00::50".parse().unwrap(),
                    hostnames: vec!["static1".into()],
                },
            ],
            srvs: vec![DnsSrv {
                service: "ldap".into(),
                protocol: "tcp".into(),
                domain: Some("example.test".into()),
                target: Some("static1.example.test".into()),
                port: Some(389),
                priority: Some(10),
                weight: Some(5),
            }],
            txts: vec![DnsTxt {
                name: "info".into(),
                value: "hello world".into(),
            }],
            forwarders: vec![
                DnsForwarder {
                    addr: Some("10.0.0.2".parse().unwrap()),
                    domain: Some("corp.test".into()),
                },
                DnsForwarder {
                    addr: None,
                    domain: Some("private.test".into()),
                },
            ],
            default_upstreams: vec!["10.0.0.53".parse().unwrap(), "10.0.0.54".parse().unwrap()],
        }
    }

    fn leases() -> LeaseSource {
        Arc::new(|| vec![(Ipv4Addr::new(192, 168, 122, 77), "web1".to_owned())])
    }

    fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(4096);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    fn ask(resolver: &Resolver, name: &str, rtype: RecordType) -> Message {
        let mut out = Vec::new();
        let outcome = resolver.answer(&query(name, rtype, false), Transport::Udp, &mut out);
        assert_eq!(outcome, Outcome::Reply, "{name} {rtype}");
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(reply.metadata.recursion_desired);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(reply.queries[0].name(), &Name::from_ascii(name).unwrap());
        reply
    }

    fn rdata(reply: &Message) -> Vec<RData> {
        reply.answers.iter().map(|r| r.data.clone()).collect()
    }

    #[test]
    fn answers_static_and_leased_names_qualified_and_plain() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        for name in ["web1.example.test.", "WEB1.Example.Test.", "web1."] {
            let reply = ask(&resolver, name, RecordType::A);
            assert!(reply.metadata.authoritative);
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert_eq!(
                rdata(&reply),
                [RData::A(Ipv4Addr::new(192, 168, 122, 77).into())]
            );
            assert_eq!(reply.answers[0].ttl, 0);
        }
        let reply = ask(&resolver, "static1.example.test.", RecordType::A);
        assert_eq!(
            rdata(&reply),
            [RData::A(Ipv4Addr::new(192, 168, 122, 50).into())]
        );
        let reply = ask(&resolver, "static1.example.test.", RecordType::AAAA);
        let v6: Ipv6Addr = "fd00::50".parse().unwrap();
        assert_eq!(rdata(&reply), [RData::AAAA(v6.into())]);
        // A dotted name is not qualified again.
        let reply = ask(&resolver, "alias.other.test.", RecordType::A);
        assert_eq!(reply.answers.len(), 1);
        // The name exists without that type: NOERROR, no answers.
        let reply = ask(&resolver, "web1.example.test.", RecordType::AAAA);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        let reply = ask(&resolver, "static1.example.test.", RecordType::ANY);
        assert_eq!(reply.answers.len(), 2);
    }

    #[test]
    fn reverse_names_give_the_qualified_hostname() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        let reply = ask(&resolver, "77.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(hickory_proto::rr::rdata::PTR(
                Name::from_ascii("web1.example.test.").unwrap()
            ))]
        );
        let reply = ask(&resolver, "50.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(hickory_proto::rr::rdata::PTR(
                Name::from_ascii("static1.example.test.").unwrap()
            ))]
        );
    }

    #[test]
    fn serves_srv_and_txt() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let reply = ask(&resolver, "_ldap._tcp.example.test.", RecordType::SRV);
        let RData::SRV(srv) = &rdata(&reply)[0] else {
            panic!("{reply:?}");
        };
        assert_eq!((srv.priority, srv.weight, srv.port), (10, 5, 389));
        assert_eq!(
            srv.target,
            Name::from_ascii("static1.example.test.").unwrap()
        );
        let reply = ask(&resolver, "info.", RecordType::TXT);
        let RData::TXT(txt) = &rdata(&reply)[0] else {
            panic!("{reply:?}");
        };
        assert_eq!(
            txt.txt_data,
            vec![b"hello world".to_vec().into_boxed_slice()].into()
        );
    }

    #[test]
    fn routes_other_names_upstream_or_keeps_them_local() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut out = Vec::new();
        let mut decide = |name: &str| {
            resolver.answer(&query(name, RecordType::A, false), Transport::Udp, &mut out)
        };
        assert_eq!(
            decide("www.example.org."),
            Outcome::Forward("10.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            decide("a.b.corp.test."),
            Outcome::Forward("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            decide("plain."),
            Outcome::Forward("10.0.0.53:53".parse().unwrap())
        );
        for local in ["nobody.example.test.", "x.private.test.", "example.test."] {
            let reply = ask(&resolver, local, RecordType::A);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{local}"
            );
            assert!(reply.metadata.authoritative);
        }

        let mut quiet = config();
        quiet.forward_plain_names = false;
        quiet.local_only = false;
        quiet.default_upstreams.clear();
        let resolver = Resolver::new(&quiet, None).unwrap();
        assert_eq!(
            ask(&resolver, "plain.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        // No server to ask.
        assert_eq!(
            ask(&resolver, "nobody.example.test.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::Refused
        );

        let mut forwarded = config();
        forwarded.forwarders.push(DnsForwarder {
            addr: Some("10.9.9.9".parse().unwrap()),
            domain: None,
        });
        let resolver = Resolver::new(&forwarded, None).unwrap();
        let outcome = resolver.answer(
            &query("www.example.org.", RecordType::A, false),
            Transport::Udp,
            &mut out,
        );
        assert_eq!(outcome, Outcome::Forward("10.9.9.9:53".parse().unwrap()));
    }

    #[test]
    fn edns_is_echoed_and_oversized_udp_answers_are_truncated() {
        let mut big = config();
        big.hosts = (0..60)
            .map(|i| DnsHost {
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                hostnames: vec!["many".into()],
            })
            .collect();
        let resolver = Resolver::new(&big, None).unwrap();
        let mut out = Vec::new();
        // 60 A records (16 bytes each) exceed 512 bytes but fit 1232.
        resolver.answer(
            &query("many.example.test.", RecordType::A, false),
            Transport::Udp,
            &mut out,
        );
        let reply = Message::from_vec(&out).unwrap();
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        resolver.answer(
            &query("many.example.test.", RecordType::A, true),
            Transport::Udp,
            &mut out,
        );
        let reply = Message::from_vec(&out).unwrap();
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 60);
        assert_eq!(reply.max_payload(), MAX_UDP_PAYLOAD);
        resolver.answer(
            &query("many.example.test.", RecordType::A, false),
            Transport::Tcp,
            &mut out,
        );
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 60);
    }

    #[test]
    fn new_leases_resolve_without_waiting_for_the_refresh() {
        let table = Arc::new(std::sync::Mutex::new(Vec::new()));
        let source = {
            let table = Arc::clone(&table);
            Arc::new(move || table.lock().unwrap().clone()) as LeaseSource
        };
        let resolver = Resolver::new(&config(), Some(source)).unwrap();
        let reply = ask(&resolver, "late.example.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        table
            .lock()
            .unwrap()
            .push((Ipv4Addr::new(192, 168, 122, 9), "late".to_owned()));
        std::thread::sleep(LEASE_REFRESH_ON_MISS);
        let reply = ask(&resolver, "late.example.test.", RecordType::A);
        assert_eq!(
            rdata(&reply),
            [RData::A(Ipv4Addr::new(192, 168, 122, 9).into())]
        );
    }

    #[test]
    fn malformed_queries_get_formerr_or_nothing() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            resolver.answer(&[], Transport::Udp, &mut out),
            Outcome::Drop
        );
        assert_eq!(
            resolver.answer(&[0; 11], Transport::Udp, &mut out),
            Outcome::Drop
        );
        // A header claiming one question, and none.
        let header = [0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            resolver.answer(&header, Transport::Udp, &mut out),
            Outcome::Reply
        );
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.id, 0xabcd);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered (no reflection loops).
        let mut response = query("web1.example.test.", RecordType::A, false);
        response[2] |= 0x80;
        assert_eq!(
            resolver.answer(&response, Transport::Udp, &mut out),
            Outcome::Drop
        );
    }

    /// Seeded mutation fuzzing of the decode-and-answer path: byte flips, truncations,
    /// insertions and random tails on valid queries. Every reply must decode again and
    /// carry the query's ID.
    #[test]
    fn mutated_queries_never_panic_and_replies_decode() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        let seeds: Vec<Vec<u8>> = [
            ("web1.example.test.", RecordType::A, false),
            ("77.122.168.192.in-addr.arpa.", RecordType::PTR, true),
            ("_ldap._tcp.example.test.", RecordType::SRV, true),
            ("www.example.org.", RecordType::AAAA, false),
            ("info.", RecordType::TXT, false),
        ]
        .iter()
        .map(|(name, rtype, edns)| query(name, *rtype, *edns))
        .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b76_6e65_7464_6e73);
        let mut out = Vec::new();
        let mut replies = 0;
        for _ in 0..50_000 {
            let mut packet = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..6) {
                match rng.random_range(0..5) {
                    0 | 1 if !packet.is_empty() => {
                        let at = rng.random_range(0..packet.len());
                        packet[at] = rng.random();
                    }
                    2 => packet.truncate(rng.random_range(0..=packet.len())),
                    3 => {
                        let at = rng.random_range(0..=packet.len());
                        packet.insert(at, rng.random());
                    }
                    _ => packet.extend((0..rng.random_range(0..40)).map(|_| rng.random::<u8>())),
                }
            }
            let transport = if rng.random() {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            if resolver.answer(&packet, transport, &mut out) == Outcome::Reply {
                replies += 1;
                let reply = Message::from_vec(&out)
                    .unwrap_or_else(|e| panic!("reply to {packet:02x?} does not decode: {e}"));
                assert_eq!(
                    reply.metadata.id,
                    u16::from_be_bytes([packet[0], packet[1]])
                );
                if transport == Transport::Udp {
                    assert!(out.len() <= usize::from(MAX_UDP_PAYLOAD));
                }
            }
        }
        // The mutations must leave many packets answerable, or the test tests nothing.
        assert!(replies > 5_000, "{replies}");
    }
}
