//! One DNS query in, one decision out: answer it from the network's own names, forward
//! it to upstream servers, or drop it.
//!
//! The query is parsed in place: the header's flags and counts, then the question's
//! name, read into a stack buffer with letters lowercased, which is the key the zone is
//! indexed by. A local answer is the header, the question copied verbatim and the
//! zone's prepared records, written into a buffer the caller reuses: the hot path
//! neither allocates nor builds a message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

use super::cache::{AnswerCache, skip_name};
use super::query_log::{QueryLog, Source};
use super::routes::{Routes, dotted_len};
use super::zone::{
    Found, StaticZone, Zone, fqdn, is_at_or_under, label_offsets, wire_key, wire_record,
};
use super::{DNS_PORT, DnsConfig, Error, LeaseSource};
use crate::service::lock;

/// Largest UDP response we send to an EDNS client (the DNS flag day 2020 value).
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Largest UDP response to a client without EDNS (RFC 1035).
const CLASSIC_UDP_PAYLOAD: usize = 512;
/// Length of the DNS header.
pub(super) const HEADER_LEN: usize = 12;
/// Longest name in wire form (RFC 1035 3.1).
pub(super) const MAX_NAME_LEN: usize = 255;
/// The lease view is re-read at least this often...
const LEASE_REFRESH: Duration = Duration::from_secs(1);
/// ...and sooner when a name is missing, so a guest that just got its lease resolves, or
/// when the DHCP servers changed a binding, so a released or renamed one stops resolving.
const LEASE_REFRESH_ON_MISS: Duration = Duration::from_millis(50);
/// The OPT record we add when the client used EDNS: root owner, type 41, our payload
/// size, no extended rcode, no options; its DO flag (byte 7) echoes the query's.
const OPT_RECORD: [u8; 11] = {
    let size = MAX_UDP_PAYLOAD.to_be_bytes();
    [0, 0, 41, size[0], size[1], 0, 0, 0, 0, 0, 0]
};
/// The DNSSEC OK bit in byte 7 of an OPT record (RFC 3225).
const OPT_DO_BIT: u8 = 0x80;
/// The class of Internet names.
const CLASS_IN: u16 = 1;
/// A name's [`wire_key`] and a type of its records.
type RotationKey = (Box<[u8]>, RecordType);

/// Most names whose answers' rotation is kept.
const MAX_ROTATIONS: usize = 4096;
/// Length of the owner of a stored record: a pointer to the question (see `zone`).
const OWNER_POINTER_LEN: usize = 2;
/// The CHAOS class, where `version.bind` is asked.
const CLASS_CH: u16 = 3;
/// `version.bind.` as a [`wire_key`].
const VERSION_BIND: &[u8] = b"\x07version\x04bind\x00";

/// Response codes we send (RFC 1035 4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

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
pub enum Outcome<'a> {
    /// The response is in the output buffer.
    Reply,
    /// Not ours to answer: forward the query to these servers, in this order (never
    /// empty; how they are asked is `forward`'s).
    Forward(&'a [SocketAddr]),
    /// Not a query (a response, or too short to answer): ignore it.
    Drop,
}

/// Whether an upstream's reply says it could not answer (SERVFAIL or REFUSED), so the
/// next server is worth asking.
pub fn is_upstream_failure(reply: &[u8]) -> bool {
    reply.get(3).is_some_and(|flags| {
        let rcode = flags & 0x0f;
        rcode == Rcode::ServFail as u8 || rcode == Rcode::Refused as u8
    })
}

/// Whose query an upstream's reply answers ([`Resolver::ready_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// This client's query, as forwarded: its EDNS options (a DNS cookie) came back.
    Asked,
    /// Another client's query of the same question: its OPT record is replaced.
    Joined,
    /// A reply kept by the cache, which took its OPT record off and gave it this
    /// query's ID and letter case already.
    Kept,
}

/// Why a query that was to be forwarded gets an answer of ours instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unforwarded {
    /// It could not be sent anywhere (no route to any upstream, or too many queries in
    /// flight): REFUSED, at once, as dnsmasq answers, so the client need not wait out
    /// its timeouts.
    NotSent,
    /// Over TCP, where the client does not retry on its own: no upstream gave a usable
    /// answer in time (silent, refusing the connection, or replying with something
    /// that does not answer the query): SERVFAIL.
    NoAnswer,
}

/// Makes an upstream's NXDOMAIN for a name that exists here (a name with names of the
/// network under it, or the network's domain itself) a NOERROR without answers, not
/// authoritative, as dnsmasq does in its `process_reply`: an upstream knows nothing of
/// a private domain, and a resolver told it does not exist takes everything under it
/// for gone (RFC 8020).
fn nxdomain_to_nodata(reply: &mut [u8]) {
    if let Some(flags) = reply.get_mut(3)
        && *flags & 0x0f == Rcode::NxDomain as u8
    {
        *flags &= 0xf0;
        if let Some(flags) = reply.get_mut(2) {
            *flags &= !0x04;
        }
    }
}

/// Writes into `out` our reply to `query` for a forward that failed: its question,
/// the code `why` calls for and, if the query had one, our OPT record. `out` stays
/// empty for a query without a readable question.
pub fn unforwarded_reply(query: &[u8], why: Unforwarded, out: &mut Vec<u8>) {
    out.clear();
    let mut key = [0u8; MAX_NAME_LEN];
    let Ok((question, _)) = parse_query(query, &mut key) else {
        return;
    };
    let edns = query_edns(query, question.end);
    begin_response(query, question.end, out);
    let question_end = out.len();
    let rcode = match why {
        Unforwarded::NotSent => Rcode::Refused,
        Unforwarded::NoAnswer => Rcode::ServFail,
    };
    set_rcode(out, rcode, false);
    finish(out, question_end, 0, edns, usize::from(u16::MAX));
}

/// Cuts an upstream's `reply` to `query` (a client's UDP query, as forwarded) down to
/// what the client can take: an upstream that ignores the EDNS size offered, or whose
/// datagram outgrew our receive buffer, would otherwise send the client more than it
/// can take or a message cut mid-record. What does not fit keeps the upstream's header
/// and the question, with TC set, so the client asks again over TCP (RFC 2181 9).
fn fit_udp_reply(query: &[u8], reply: &mut Vec<u8>) {
    let mut key = [0u8; MAX_NAME_LEN];
    let Some((question, _)) = read_question(query, &mut key) else {
        return;
    };
    let edns = query_edns(query, question.end);
    let limit = response_limit(Transport::Udp, edns);
    if reply.len() <= limit {
        return;
    }
    let mut answered = [0u8; MAX_NAME_LEN];
    // `reply` answers `query` (`is_reply_to`): it has the question, the name maybe in
    // other letter case.
    let question_end = read_question(reply, &mut answered).map_or(HEADER_LEN, |(q, _)| q.end);
    reply.truncate(question_end);
    reply[2] |= 0x02;
    reply[4..6].copy_from_slice(&u16::from(question_end > HEADER_LEN).to_be_bytes());
    reply[6..12].fill(0);
    finish(reply, question_end, 0, edns, limit);
}

/// Gives `reply`, an upstream's answer to the question of `query` (the same name up to
/// letter case, type and class), the ID and question of `query` as its client sent them:
/// a resolver that randomises the letters of its names (0x20) checks they come back.
fn reply_as_asked(query: &[u8], reply: &mut [u8]) {
    let mut asked = [0u8; MAX_NAME_LEN];
    let mut answered = [0u8; MAX_NAME_LEN];
    let (Some((question, len)), Some((replied, replied_len))) = (
        read_question(query, &mut asked),
        read_question(reply, &mut answered),
    ) else {
        return;
    };
    if question.end != replied.end || asked[..len] != answered[..replied_len] {
        return;
    }
    if let (Some(to), Some(from)) = (reply.get_mut(..question.end), query.get(..question.end)) {
        to[..2].copy_from_slice(&from[..2]);
        to[HEADER_LEN..].copy_from_slice(&from[HEADER_LEN..]);
    }
}

/// The header's RA (recursion available) and CD (checking disabled) bits, in its
/// fourth byte.
const RECURSION_AVAILABLE: u8 = 0x80;
const CHECKING_DISABLED: u8 = 0x10;

/// Sets `reply`'s RA bit and `query`'s CD bit in it, as dnsmasq does: the guest's
/// resolver is kvnetd, which recurses, whatever the upstream said (an authoritative-only
/// server behind a `<forwarder domain=>` sets no RA, and dig then warns that recursion
/// is not available), and CD is the asker's, not that of whoever asked first.
fn recursion_flags(query: &[u8], reply: &mut [u8]) {
    if let (Some(&asked), Some(flags)) = (query.get(3), reply.get_mut(3)) {
        *flags = (*flags & !CHECKING_DISABLED) | RECURSION_AVAILABLE | (asked & CHECKING_DISABLED);
    }
}

/// Gives `reply`, an upstream's answer to another client's asking of `query`'s question
/// (a joined forward), `query`'s EDNS: the upstream's OPT record echoes the other
/// client's options (its DNS cookie, which a cookie-checking resolver drops the reply
/// for, RFC 7873 5.3; NSID), so it is replaced by ours, as on a kept reply
/// ([`Resolver::cached_reply`]). A reply whose OPT record is not its last record is left
/// as it is.
fn with_own_edns(query: &[u8], reply: &mut Vec<u8>) {
    let mut key = [0u8; MAX_NAME_LEN];
    let (Some((asked, _)), Some((answered, _))) = (
        read_question(query, &mut key),
        read_question(reply, &mut key),
    ) else {
        return;
    };
    let count = |at: usize| u16::from_be_bytes([reply[at], reply[at + 1]]);
    let additional = count(10);
    let Some(records) = count(6)
        .checked_add(count(8))
        .and_then(|sum| sum.checked_add(additional))
    else {
        return;
    };
    let Some(ends) = record_ends(reply, answered.end, records) else {
        return;
    };
    if ends.last().copied().unwrap_or(answered.end) != reply.len() {
        return;
    }
    let is_opt = |start: usize| {
        skip_name(reply, start)
            .and_then(|fixed| reply.get(fixed..fixed + 2))
            .is_some_and(|rtype| rtype == [0, 41])
    };
    let starts: Vec<usize> = std::iter::once(answered.end)
        .chain(ends.iter().copied())
        .take(ends.len())
        .collect();
    // The upper eight bits of the reply's RCODE (BADCOOKIE, BADVERS) are the first
    // byte of the OPT record's TTL: ours carries them on.
    let mut extended_rcode = 0;
    match starts.iter().position(|&start| is_opt(start)) {
        None => {}
        Some(last) if last + 1 == starts.len() && additional > 0 => {
            let Some(&upper) = skip_name(reply, starts[last]).and_then(|at| reply.get(at + 4))
            else {
                return;
            };
            extended_rcode = upper;
            reply.truncate(starts[last]);
            reply[10..12].copy_from_slice(&(additional - 1).to_be_bytes());
        }
        Some(_) => return,
    }
    if let Some(edns) = query_edns(query, asked.end) {
        let opt_at = reply.len();
        append_opt(reply, edns);
        reply[opt_at + 5] = extended_rcode;
    }
}

/// Decides and builds answers for one network; shared by its UDP and TCP paths.
pub struct Resolver {
    network: String,
    /// `<domain name=>`, which hostnames are qualified with.
    domain: Option<hickory_proto::rr::Name>,
    /// Its [`wire_key`].
    domain_key: Option<Vec<u8>>,
    /// Names at or under these [`wire_key`]s are never forwarded (`localOnly`,
    /// `localPtr`).
    local_domains: Vec<Vec<u8>>,
    forward_plain_names: bool,
    /// `<forwarder domain= addr=>`. A `<forwarder domain=>` without `addr` routes its
    /// domain to the default servers (libvirt's `server=/domain/#`), out of a broader
    /// domain's forwarder or a local domain.
    routes: Routes,
    /// Servers for every other name, in order of preference.
    upstreams: Vec<SocketAddr>,
    static_zone: StaticZone,
    /// `address=` domains, most specific first.
    addresses: Vec<AddressDomain>,
    leases: Option<LeaseView>,
    /// Upstream answers kept for their TTL. A new resolver (new records or upstreams)
    /// starts with none.
    cache: Mutex<AnswerCache>,
    /// How far the next answer of several addresses is rotated, by [`wire_key`] and
    /// type: a dual-stack client asks for A and AAAA together, and other names are
    /// asked in between, so one count for all would not turn a name's answer.
    rotations: Mutex<HashMap<RotationKey, u16>>,
    /// `log-queries`; `None` when off.
    query_log: Option<QueryLog>,
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

/// What dnsmasq's `address=` lines give one domain and every name under it.
#[derive(Debug, Default)]
struct AddressDomain {
    /// The domain's [`wire_key`].
    key: Vec<u8>,
    /// Its A records (owned by the question name, TTL 0, as a `<host>`'s).
    a: Vec<Vec<u8>>,
    /// Its AAAA records.
    aaaa: Vec<Vec<u8>>,
}

impl AddressDomain {
    /// The rules of `config` by domain, most specific first, or the first domain that
    /// is no valid name.
    fn from_config(config: &DnsConfig) -> Result<Vec<AddressDomain>, Error> {
        let mut domains: Vec<AddressDomain> = Vec::new();
        for rule in &config.addresses {
            for text in &rule.domains {
                let key = fqdn(text)
                    .map(|name| wire_key(&name))
                    .ok_or_else(|| Error::Record {
                        network: config.network.clone(),
                        what: "domain",
                        value: text.clone(),
                    })?;
                let at = match domains.iter().position(|domain| domain.key == key) {
                    Some(at) => at,
                    None => {
                        domains.push(AddressDomain {
                            key,
                            ..AddressDomain::default()
                        });
                        domains.len() - 1
                    }
                };
                let domain = &mut domains[at];
                match rule.address {
                    Some(IpAddr::V4(ip)) => domain.a.extend(wire_record(&RData::A(ip.into()))),
                    Some(IpAddr::V6(ip)) => {
                        domain.aaaa.extend(wire_record(&RData::AAAA(ip.into())));
                    }
                    None => {}
                }
            }
        }
        // A domain comes before every domain it is under (see `routes`).
        domains.sort_by_key(|domain| std::cmp::Reverse(domain.key.len()));
        Ok(domains)
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
    /// [`LeaseSource::generation`] when last read.
    generation: u64,
}

/// The question of a query, as parsed from its bytes.
pub(super) struct Question {
    /// Offset just past the question (name, type and class) in the query.
    pub(super) end: usize,
    pub(super) qtype: u16,
    pub(super) qclass: u16,
}

/// Why a query gets no answer from the zone.
#[derive(Clone, Copy)]
enum Malformed {
    /// Not worth a reply.
    Drop,
    /// Worth a header-only reply with this code.
    Reply(Rcode),
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
            local_domains.push(wire_key(domain));
        }
        for text in &config.local_ptr_domains {
            local_domains.push(wire_key(&fqdn(text).ok_or_else(|| invalid(text))?));
        }
        let plain: Vec<SocketAddr> = config
            .forwarders
            .iter()
            .filter(|forwarder| forwarder.domain.is_none())
            .filter_map(|forwarder| forwarder.addr.map(upstream))
            .collect();
        let upstreams = if plain.is_empty() {
            config.default_upstreams.clone()
        } else {
            plain
        };
        let routes = Routes::new(&config.forwarders, &upstreams).map_err(|text| invalid(&text))?;
        Ok(Resolver {
            network: config.network.clone(),
            static_zone: StaticZone::from_config(config, config.host_file.zone(domain.as_ref()))?,
            addresses: AddressDomain::from_config(config)?,
            domain_key: domain.as_ref().map(wire_key),
            domain,
            local_domains,
            forward_plain_names: config.forward_plain_names,
            routes,
            upstreams,
            leases: leases.map(|source| LeaseView {
                source,
                cache: Mutex::default(),
            }),
            cache: Mutex::new(
                config
                    .cache_size
                    .map_or_else(AnswerCache::default, AnswerCache::with_max_entries),
            ),
            rotations: Mutex::default(),
            query_log: config
                .log_queries
                .map(|logging| QueryLog::new(&config.network, logging)),
        })
    }

    /// Takes over `earlier`'s query log counts (serial numbers, budget) when both log:
    /// this resolver replaces it.
    pub(super) fn continue_query_log_of(&mut self, earlier: &Resolver) {
        if let (Some(log), Some(earlier)) = (self.query_log.as_mut(), earlier.query_log.as_ref()) {
            log.continue_from(earlier);
        }
    }

    /// The network's query log, if it has `log-queries` on.
    pub(super) fn query_log(&self) -> Option<&QueryLog> {
        self.query_log.as_ref()
    }

    /// The network this resolver serves.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Handles one query. On [`Outcome::Reply`], `out` holds the response; otherwise it
    /// is empty. Never panics, whatever `query` holds.
    pub fn answer(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> Outcome<'_> {
        out.clear();
        let mut key = [0u8; MAX_NAME_LEN];
        let (question, key_len) = match parse_query(query, &mut key) {
            Ok(parsed) => parsed,
            Err(Malformed::Drop) => return Outcome::Drop,
            Err(Malformed::Reply(rcode)) => {
                return refuse_malformed(query, rcode, transport, out);
            }
        };
        let key = &key[..key_len];
        let edns = query_edns(query, question.end);
        let limit = response_limit(transport, edns);
        if let Some(edns) = edns
            && edns.version != 0
        {
            // RFC 6891 6.1.3: our version (0) in our OPT record, BADVERS.
            begin_response(query, question.end, out);
            let question_end = out.len();
            finish(out, question_end, 0, Some(edns), limit);
            set_extended_rcode(out, BADVERS);
            return Outcome::Reply;
        }
        let qtype = RecordType::from(question.qtype);
        begin_response(query, question.end, out);
        let question_end = out.len();
        if question.qclass == CLASS_CH
            && matches!(qtype, RecordType::TXT | RecordType::ANY)
            && key == VERSION_BIND
        {
            // The server's version, as dnsmasq and BIND tell it to monitoring.
            append_version_txt(out);
            set_rcode(out, Rcode::NoError, true);
            return finish(out, question_end, 1, edns, limit);
        }
        if question.qclass != CLASS_IN {
            // Keep the question and the OPT record: a reply without them does not
            // match its query for a client (RFC 5452 9.1, RFC 6891 7).
            set_rcode(out, Rcode::NotImp, false);
            return finish(out, question_end, 0, edns, limit);
        }
        // A configured record on a guest's name (a TXT, say) must not hide the
        // addresses of its lease: the leases are asked unless the configuration
        // answered the type asked.
        let found = match self.static_zone.append_answers(key, qtype, out) {
            Found::Records(count) if count > 0 && qtype != RecordType::ANY => Found::Records(count),
            from_config => from_config.and(self.lease_answers(key, qtype, out)),
        };
        // The network's own names win over `address=`, as in dnsmasq, where hosts and
        // DHCP names override it for individual names.
        let found = match found {
            Found::NoName => match self.address_answers(key, qtype, out) {
                Some(Found::NoName) => {
                    set_rcode(out, Rcode::NxDomain, true);
                    return finish(out, question_end, 0, edns, limit);
                }
                Some(found) => found,
                None => Found::NoName,
            },
            found => found,
        };
        let (rcode, answers) = match found {
            Found::Records(count) => (Rcode::NoError, count),
            // A name with names under it exists, records or not (RFC 8020): NXDOMAIN
            // would tell a resolver there is nothing below it either.
            Found::NoName if self.is_local(key) && self.is_ancestor(key) => (Rcode::NoError, 0),
            Found::NoName if self.is_local(key) => (Rcode::NxDomain, 0),
            Found::NoName => {
                let servers = self.upstreams_for(key);
                if !servers.is_empty() {
                    out.clear();
                    return Outcome::Forward(servers);
                }
                tracing::debug!(network = %self.network, name = %WireName(key), "no upstream DNS server to forward to");
                set_rcode(out, Rcode::Refused, false);
                return finish(out, question_end, 0, edns, limit);
            }
        };
        if answers > 0 && matches!(qtype, RecordType::SRV | RecordType::ANY) {
            let additional = self.append_srv_targets(out, question_end, answers);
            out[10..12].copy_from_slice(&additional.to_be_bytes());
        }
        set_rcode(out, rcode, true);
        if matches!(qtype, RecordType::A | RecordType::AAAA) && answers > 1 {
            // Round robin, as dnsmasq answers a name of several addresses: each query
            // gets them one further on, so clients do not all take the first.
            let turn = self.next_turn(key, qtype);
            rotate_records(out, question_end, answers, turn);
        }
        finish(out, question_end, answers, edns, limit)
    }

    /// Writes into `out` the kept upstream answer to `query` (a query
    /// [`Resolver::answer`] would forward), made ready for the client over `transport`,
    /// and returns whether there was one.
    pub fn cached_reply(&self, query: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        if !lock(&self.cache).lookup(query, Instant::now(), out) {
            return false;
        }
        self.ready_for(query, transport, Answered::Kept, out);
        true
    }

    /// Makes `reply`, an upstream's answer to the question of `query`, the answer
    /// `query`'s client gets over `transport`, the same way whether it was forwarded
    /// for this query, for another client's (a joined forward) or kept: with the ID
    /// and letter case the client sent, with our EDNS unless the upstream answered this
    /// very query (`with_own_edns`), NXDOMAIN for a name that exists here made NOERROR
    /// (`nxdomain_to_nodata`), and cut to what the client takes over UDP
    /// (`fit_udp_reply`).
    pub fn ready_for(
        &self,
        query: &[u8],
        transport: Transport,
        answered: Answered,
        reply: &mut Vec<u8>,
    ) {
        match answered {
            Answered::Asked => reply_as_asked(query, reply),
            Answered::Joined => {
                reply_as_asked(query, reply);
                with_own_edns(query, reply);
            }
            // The hot path of repeated names: nothing to walk, only our OPT to add.
            Answered::Kept => {
                let mut key = [0u8; MAX_NAME_LEN];
                if let Some((question, _)) = read_question(query, &mut key)
                    && let Some(edns) = query_edns(query, question.end)
                {
                    append_opt(reply, edns);
                }
            }
        }
        recursion_flags(query, reply);
        if self.exists_without_records(query) {
            nxdomain_to_nodata(reply);
        }
        if transport == Transport::Udp {
            fit_udp_reply(query, reply);
        }
    }

    /// Lets go of the kept answers that expired (see [`AnswerCache::purge_expired`]).
    pub fn purge_expired_answers(&self) {
        lock(&self.cache).purge_expired(Instant::now());
    }

    /// Keeps `reply`, an upstream's answer to `query` (checked to answer it), for
    /// [`Resolver::cached_reply`] if it may be kept.
    pub fn remember(&self, query: &[u8], reply: &[u8]) {
        lock(&self.cache).store(query, reply, Instant::now());
    }

    /// Whether the name `query` asks about exists here though nothing here answers it
    /// (it has names of the network under it): an upstream's NXDOMAIN for it is then
    /// made a NOERROR (`nxdomain_to_nodata`).
    pub fn exists_without_records(&self, query: &[u8]) -> bool {
        let mut key = [0u8; MAX_NAME_LEN];
        parse_query(query, &mut key).is_ok_and(|(_, len)| self.is_ancestor(&key[..len]))
    }

    /// Where the local answer to `query` came from, for `log-queries`: a lease's name,
    /// or the configuration. Looked up again as [`Resolver::answer`] does (its records
    /// first, the leases for types it has none of), only for a query being logged.
    pub(super) fn source_of(&self, query: &[u8]) -> Source {
        let mut key = [0u8; MAX_NAME_LEN];
        let Ok((question, len)) = parse_query(query, &mut key) else {
            return Source::Config;
        };
        let (key, qtype) = (&key[..len], RecordType::from(question.qtype));
        let mut records = Vec::new();
        if let Found::Records(count) = self.static_zone.append_answers(key, qtype, &mut records)
            && count > 0
            && qtype != RecordType::ANY
        {
            return Source::Config;
        }
        let from_leases = self.leases.as_ref().is_some_and(|view| {
            records.clear();
            let found = lock(&view.cache).zone.append_answers_under(
                &self.static_zone,
                key,
                qtype,
                &mut records,
            );
            matches!(found, Found::Records(count) if count > 0)
        });
        if from_leases {
            Source::Dhcp
        } else {
            Source::Config
        }
    }

    /// The turn of the next answer of several `qtype` records of the name whose
    /// [`wire_key`] is `key`.
    fn next_turn(&self, key: &[u8], qtype: RecordType) -> u16 {
        let mut rotations = lock(&self.rotations);
        // Bounded: a client asking for ever new names must not grow it for good.
        if rotations.len() >= MAX_ROTATIONS && !rotations.contains_key(&(key.into(), qtype)) {
            rotations.clear();
        }
        let turn = rotations.entry((key.into(), qtype)).or_default();
        let current = *turn;
        *turn = turn.wrapping_add(1);
        current
    }

    /// Appends, as additional records after the `answers` from `question_end` in `out`,
    /// the addresses of the targets of the SRV records among them, as dnsmasq adds them
    /// (a client then needs no second query); returns how many.
    fn append_srv_targets(&self, out: &mut Vec<u8>, question_end: usize, answers: u16) -> u16 {
        let Some(ends) = record_ends(out, question_end, answers) else {
            return 0;
        };
        // Each distinct target, with where it is in `out`.
        let mut targets: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut start = question_end;
        for end in ends {
            // Priority, weight and port, then the target, uncompressed (`wire_record`).
            let target_at = skip_name(out, start).map(|fixed| fixed + 16);
            if let Some(at) = target_at
                && out.get(at - 16..at - 14) == Some(&[0, 33])
                && let Some(target) = out.get(at..end)
                && target != [0]
                && !targets
                    .iter()
                    .any(|(known, _)| known.eq_ignore_ascii_case(target))
            {
                targets.push((target.to_vec(), at));
            }
            start = end;
        }
        let mut added = 0u16;
        let mut records = Vec::new();
        for (target, at) in targets {
            // Owned by the target: a pointer to it in the SRV record, as dnsmasq
            // compresses it, where one can point that far.
            let owner = match u16::try_from(at) {
                Ok(at) if at < 0x4000 => (0xc000 | at).to_be_bytes().to_vec(),
                _ => target.clone(),
            };
            // Length bytes are below 64: lowercasing leaves them be.
            let key = target.to_ascii_lowercase();
            for rtype in [RecordType::A, RecordType::AAAA] {
                records.clear();
                let count = match self.static_zone.append_answers(&key, rtype, &mut records) {
                    Found::Records(count) if count > 0 => count,
                    _ => match self.lease_answers(&key, rtype, &mut records) {
                        Found::Records(count) => count,
                        Found::NoName => 0,
                    },
                };
                let Some(ends) = record_ends(&records, 0, count) else {
                    continue;
                };
                // In place of the stored pointer to the question.
                let mut start = 0;
                for end in ends {
                    out.extend_from_slice(&owner);
                    out.extend_from_slice(&records[start + OWNER_POINTER_LEN..end]);
                    start = end;
                }
                added = added.saturating_add(count);
            }
        }
        added
    }

    /// Looks `key` up among the leases, re-reading them when the view is stale; types
    /// the configuration has records of for the name are left out.
    fn lease_answers(&self, key: &[u8], qtype: RecordType, out: &mut Vec<u8>) -> Found {
        let Some(view) = &self.leases else {
            return Found::NoName;
        };
        let mut cache = lock(&view.cache);
        let age = |cache: &LeaseCache| cache.read_at.map_or(Duration::MAX, |at| at.elapsed());
        let changed = |cache: &LeaseCache| view.source.generation() != cache.generation;
        if age(&cache) >= LEASE_REFRESH || (age(&cache) >= LEASE_REFRESH_ON_MISS && changed(&cache))
        {
            self.reload_leases(view, &mut cache);
        }
        let from_leases = |cache: &LeaseCache, out: &mut Vec<u8>| {
            cache
                .zone
                .append_answers_under(&self.static_zone, key, qtype, out)
        };
        match from_leases(&cache, out) {
            Found::NoName if age(&cache) >= LEASE_REFRESH_ON_MISS && changed(&cache) => {
                self.reload_leases(view, &mut cache);
                from_leases(&cache, out)
            }
            found => found,
        }
    }

    /// Answers `key` from the most specific `address=` domain it is at or under: its
    /// records of type `qtype` (both types for ANY), or `Some(Found::NoName)` (NXDOMAIN,
    /// never forwarded) for a domain given no address. Where the domain has nothing of
    /// that type, a name in a local domain exists without such records (NODATA, as from
    /// dnsmasq: an NXDOMAIN beside the A answer would tell a stub resolver the name is
    /// not there at all), and any other goes on as without `address=` (`None`: upstream),
    /// as dnsmasq 2.90 sends an AAAA query for a name it has only an IPv4 `address=` for.
    fn address_answers(&self, key: &[u8], qtype: RecordType, out: &mut Vec<u8>) -> Option<Found> {
        let domain = self
            .addresses
            .iter()
            .find(|domain| is_at_or_under(key, &domain.key))?;
        if domain.a.is_empty() && domain.aaaa.is_empty() {
            return Some(Found::NoName);
        }
        let sets: &[&Vec<Vec<u8>>] = match qtype {
            RecordType::A => &[&domain.a],
            RecordType::AAAA => &[&domain.aaaa],
            RecordType::ANY => &[&domain.a, &domain.aaaa],
            _ => &[],
        };
        let records: Vec<&Vec<u8>> = sets.iter().flat_map(|set| set.iter()).collect();
        if records.is_empty() {
            return self.is_local(key).then_some(Found::Records(0));
        }
        for record in &records {
            out.extend_from_slice(record);
        }
        Some(Found::Records(
            u16::try_from(records.len()).unwrap_or(u16::MAX),
        ))
    }

    /// Whether names of the network are under `key`, or `key` is the network's own
    /// domain (which exists even before the first guest has a name in it).
    fn is_ancestor(&self, key: &[u8]) -> bool {
        self.domain_key.as_deref() == Some(key)
            || self.static_zone.is_ancestor(key)
            || self
                .leases
                .as_ref()
                .is_some_and(|view| lock(&view.cache).zone.is_ancestor(key))
    }

    fn reload_leases(&self, view: &LeaseView, cache: &mut LeaseCache) {
        // The generation first: a change while reading is seen again next time.
        cache.generation = view.source.generation();
        let leases = view.source.read();
        cache.zone = Zone::from_leases(&leases, self.domain.as_ref(), &self.static_zone);
        cache.read_at = Some(Instant::now());
    }

    /// Whether a name we do not know must get NXDOMAIN rather than be forwarded: a plain
    /// name without `forwardPlainNames`, or a name in a local domain, unless a forwarder
    /// routes that domain or one under it which holds the name (dnsmasq takes the most
    /// specific of its `server=` and `local=` entries, and a `server=` of a `local=`'s
    /// own domain).
    fn is_local(&self, key: &[u8]) -> bool {
        if !self.forward_plain_names && label_count(key) == 1 {
            return true;
        }
        let Some(local) = self
            .local_domains
            .iter()
            .filter(|domain| is_at_or_under(key, domain))
            .max_by_key(|domain| domain.len())
        else {
            return false;
        };
        // Both match the end of the name: the one matching more of it is the more
        // specific.
        self.routes
            .lookup(key)
            .is_none_or(|route| route.matched_chars < dotted_len(local))
    }

    /// The servers to ask about a name: its domain's forwarders, or the upstreams.
    fn upstreams_for(&self, key: &[u8]) -> &[SocketAddr] {
        self.routes
            .lookup(key)
            .map_or(&self.upstreams, |route| route.servers)
    }
}

fn upstream(addr: IpAddr) -> SocketAddr {
    SocketAddr::new(addr, DNS_PORT)
}

/// Checks the header and reads the question of `query`, its name lowercased into
/// `key`; returns the question and the key's length. Mirrors what a strict decoder
/// accepts: one question, uncompressed name of at most 255 bytes with labels of at
/// most 63.
fn parse_query(query: &[u8], key: &mut [u8; MAX_NAME_LEN]) -> Result<(Question, usize), Malformed> {
    let Some(header) = query.get(..HEADER_LEN) else {
        return Err(Malformed::Drop);
    };
    // A response is never answered (no reflection loops).
    if header[2] & 0x80 != 0 {
        return Err(Malformed::Drop);
    }
    if header[2] & 0x78 != 0 {
        return Err(Malformed::Reply(Rcode::NotImp));
    }
    if header[4..6] != [0, 1] {
        return Err(FORMERR);
    }
    const FORMERR: Malformed = Malformed::Reply(Rcode::FormErr);
    read_question(query, key).ok_or(FORMERR)
}

/// Reads the question that follows the header of `message`, its name lowercased into
/// `key`; returns it and the key's length, or `None` if it is cut short or its name
/// is compressed, uses extended labels or is longer than 255 bytes.
pub(super) fn read_question(
    message: &[u8],
    key: &mut [u8; MAX_NAME_LEN],
) -> Option<(Question, usize)> {
    let mut at = HEADER_LEN;
    let mut len = 0;
    loop {
        let label = usize::from(*message.get(at)?);
        // 0x40 and 0x80: extended label types; 0xc0: a compression pointer, which a
        // question, the first name of a message, has nothing to point back to.
        if label > 63 {
            return None;
        }
        let bytes = message.get(at..=at + label)?;
        let slot = key.get_mut(len..len + bytes.len())?;
        for (to, from) in slot.iter_mut().zip(bytes) {
            *to = from.to_ascii_lowercase();
        }
        len += bytes.len();
        at += bytes.len();
        if label == 0 {
            break;
        }
    }
    let &[t0, t1, c0, c1] = message.get(at..at + 4)? else {
        return None;
    };
    let question = Question {
        end: at + 4,
        qtype: u16::from_be_bytes([t0, t1]),
        qclass: u16::from_be_bytes([c0, c1]),
    };
    Some((question, len))
}

/// Lowers the EDNS UDP payload size a query offers (RFC 6891 6.2.3) to
/// [`MAX_UDP_PAYLOAD`] before it is forwarded over UDP, as dnsmasq puts its own
/// `edns-packet-max`: an upstream answer up to a larger size a client offered could be
/// cut short by our receive buffer, where over the limit the upstream truncates it (TC)
/// and the client asks again over TCP. `query` passed [`Resolver::answer`].
pub fn clamp_edns_payload(query: &mut [u8]) {
    let mut key = [0u8; MAX_NAME_LEN];
    let Some((question, _)) = read_question(query, &mut key) else {
        return;
    };
    if query_edns(query, question.end).is_some_and(|edns| edns.payload_size > MAX_UDP_PAYLOAD)
        && let Some(size) = query.get_mut(question.end + 3..question.end + 5)
    {
        size.copy_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    }
}

/// Whether `reply` is a response to `query`, a query we forwarded: same ID and one
/// question equal to the query's (name compared case-insensitively, type and class).
/// RFC 5452 9.1: a forged reply then has to guess the question as well as the ID and
/// our source port.
pub fn is_reply_to(query: &[u8], reply: &[u8]) -> bool {
    let mut asked = [0u8; MAX_NAME_LEN];
    let mut answered = [0u8; MAX_NAME_LEN];
    let (Some(sent), Some(received)) = (query.get(..HEADER_LEN), reply.get(..HEADER_LEN)) else {
        return false;
    };
    let is_response = received[2] & 0x80 != 0;
    if sent[..2] != received[..2] || !is_response || received[4..6] != [0, 1] {
        return false;
    }
    match (
        read_question(query, &mut asked),
        read_question(reply, &mut answered),
    ) {
        (Some((sent, sent_len)), Some((received, received_len))) => {
            asked[..sent_len] == answered[..received_len]
                && sent.qtype == received.qtype
                && sent.qclass == received.qclass
        }
        _ => false,
    }
}

/// Labels of a name in wire form, not counting the root.
fn label_count(key: &[u8]) -> usize {
    label_offsets(key).count().saturating_sub(1)
}

/// A name in wire form, shown dotted for logs.
struct WireName<'a>(&'a [u8]);

impl std::fmt::Display for WireName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for at in label_offsets(self.0) {
            let len = usize::from(self.0[at]);
            if len > 0 {
                let label = self.0.get(at + 1..at + 1 + len).unwrap_or_default();
                write!(f, "{}.", String::from_utf8_lossy(label))?;
            }
        }
        Ok(())
    }
}

/// What a query's OPT record asks of the response (RFC 6891).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Edns {
    /// The UDP payload size the client can take.
    pub(super) payload_size: u16,
    /// DNSSEC OK, which the response's OPT record must echo (RFC 3225 3).
    pub(super) dnssec_ok: bool,
    /// The EDNS version; we speak 0 (RFC 6891 6.1.3).
    pub(super) version: u8,
}

/// The query's OPT record, if it has one. It is looked for only where queries carry
/// it: as the sole additional record right after the question.
pub(super) fn query_edns(query: &[u8], question_end: usize) -> Option<Edns> {
    // ANCOUNT and NSCOUNT zero, ARCOUNT not.
    if query.get(6..10)? != [0, 0, 0, 0] || query.get(10..12)? == [0, 0] {
        return None;
    }
    match query.get(question_end..)? {
        rest @ [0, 0, 41, hi, lo, _, version, flags, ..] if rest.len() >= OPT_RECORD.len() => {
            Some(Edns {
                payload_size: u16::from_be_bytes([*hi, *lo]),
                dnssec_ok: flags & OPT_DO_BIT != 0,
                version: *version,
            })
        }
        _ => None,
    }
}

/// The largest response `transport` takes for a query with `edns`: over UDP 512
/// bytes, or the client's EDNS size up to [`MAX_UDP_PAYLOAD`].
fn response_limit(transport: Transport, edns: Option<Edns>) -> usize {
    match (transport, edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => CLASSIC_UDP_PAYLOAD,
        (Transport::Udp, Some(edns)) => {
            usize::from(edns.payload_size.min(MAX_UDP_PAYLOAD)).max(CLASSIC_UDP_PAYLOAD)
        }
    }
}

/// Writes the response header (counts filled in later) and the query's bytes from
/// the end of the header to `question_end`: the question, or nothing.
fn begin_response(query: &[u8], question_end: usize, out: &mut Vec<u8>) {
    // ID; QR set, opcode and RD kept, AA and TC clear; RA set, Z and AD clear, CD
    // kept, rcode 0.
    out.extend_from_slice(&query[..2]);
    out.push(0x80 | (query[2] & 0x79));
    out.push(0x80 | (query[3] & 0x10));
    let questions = u16::from(question_end > HEADER_LEN);
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&query[HEADER_LEN..question_end]);
}

/// The reply to a query [`parse_query`] refused with `rcode`: the question too when
/// there is exactly one that can be read, and our OPT record when the query had one
/// where it can be found (RFC 6891 6.1.1), so the client can match the reply.
fn refuse_malformed(
    query: &[u8],
    rcode: Rcode,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Outcome<'static> {
    let mut key = [0u8; MAX_NAME_LEN];
    let question_end = match read_question(query, &mut key) {
        Some((question, _)) if query[4..6] == [0, 1] => question.end,
        _ => HEADER_LEN,
    };
    let edns = query_edns(query, question_end);
    begin_response(query, question_end, out);
    set_rcode(out, rcode, false);
    finish(out, question_end, 0, edns, response_limit(transport, edns))
}

/// Extended RCODE BADVERS (RFC 6891 9): 16, whose upper 8 bits go in the OPT record.
const BADVERS: u16 = 16;

/// Sets the extended `rcode` of the response in `out`, whose last record is our OPT
/// record: its upper 8 bits in the OPT record, its lower 4 in the header.
fn set_extended_rcode(out: &mut [u8], rcode: u16) {
    let opt_at = out.len() - OPT_RECORD.len();
    out[opt_at + 5] = u8::try_from(rcode >> 4).unwrap_or(u8::MAX);
    out[3] = (out[3] & 0xf0) | u8::try_from(rcode & 0x0f).unwrap_or(0);
}

/// Sets the response code (RFC 1035 4.1.1: low 4 bits of byte 3) and the AA bit.
fn set_rcode(out: &mut [u8], rcode: Rcode, authoritative: bool) {
    out[3] = (out[3] & 0xf0) | rcode as u8;
    if authoritative {
        out[2] |= 0x04;
    }
}

/// Fills in the answer count, adds our OPT record if the client sent one, and cuts a
/// response that exceeds `limit`: its additional records first (no TC), then the
/// answers that do not fit, whole records, with the TC bit.
fn finish(
    out: &mut Vec<u8>,
    question_end: usize,
    answers: u16,
    edns: Option<Edns>,
    limit: usize,
) -> Outcome<'static> {
    let mut answers = answers;
    let room = limit.saturating_sub(if edns.is_some() { OPT_RECORD.len() } else { 0 });
    let additional = u16::from_be_bytes([out[10], out[11]]);
    if out.len() > room && additional > 0 {
        // Additional records that do not fit go first, without TC: they only spare a
        // query (RFC 2181 9).
        let ends =
            record_ends(out, question_end, answers.saturating_add(additional)).unwrap_or_default();
        if ends.is_empty() {
            // Never for the records this module writes; all goes then, with TC.
            answers = 0;
            out[2] |= 0x02;
        }
        let (answer_ends, additional_ends) = ends.split_at(usize::from(answers).min(ends.len()));
        let kept = additional_ends
            .iter()
            .take_while(|end| **end <= room)
            .count();
        let end = additional_ends[..kept]
            .last()
            .or(answer_ends.last())
            .copied()
            .unwrap_or(question_end);
        out.truncate(end);
        out[10..12].copy_from_slice(&u16::try_from(kept).unwrap_or(0).to_be_bytes());
    }
    if out.len() > room {
        // The answers that fit, whole, as dnsmasq sends them: a client that cannot ask
        // again over TCP has those at least.
        let ends = record_ends(out, question_end, answers).unwrap_or_default();
        let kept = ends.iter().take_while(|end| **end <= room).count();
        out.truncate(
            ends.get(kept.wrapping_sub(1))
                .copied()
                .unwrap_or(question_end),
        );
        out[2] |= 0x02;
        answers = u16::try_from(kept).unwrap_or(0);
    }
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    if let Some(edns) = edns {
        append_opt(out, edns);
    }
    debug_assert!(out.len() >= HEADER_LEN);
    Outcome::Reply
}

/// Appends the answer to `version.bind` (CH TXT): `kvnetd-VERSION`, as dnsmasq answers
/// `dnsmasq-VERSION`.
fn append_version_txt(out: &mut Vec<u8>) {
    let text = concat!("kvnetd-", env!("CARGO_PKG_VERSION")).as_bytes();
    // Far below a TXT string's 255 bytes.
    let length = u8::try_from(text.len()).unwrap_or(u8::MAX);
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(&16u16.to_be_bytes());
    out.extend_from_slice(&CLASS_CH.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&(u16::from(length) + 1).to_be_bytes());
    out.push(length);
    out.extend_from_slice(&text[..usize::from(length)]);
}

/// Where each of the `count` records from `start` in `out` ends; `None` if they do not
/// parse (never for the records this module writes).
fn record_ends(out: &[u8], start: usize, count: u16) -> Option<Vec<usize>> {
    let mut ends = Vec::with_capacity(usize::from(count));
    let mut at = start;
    for _ in 0..count {
        let fixed = skip_name(out, at)?;
        let length = out.get(fixed + 8..fixed + 10)?;
        at = fixed + 10 + usize::from(u16::from_be_bytes([length[0], length[1]]));
        if at > out.len() {
            return None;
        }
        ends.push(at);
    }
    Some(ends)
}

/// Rotates the `count` records from `start` in `out` by `turn` places (modulo `count`).
fn rotate_records(out: &mut [u8], start: usize, count: u16, turn: u16) {
    let Some(ends) = record_ends(out, start, count) else {
        return;
    };
    let first = usize::from(turn % count);
    if let (Some(&last), Some(&split)) = (
        ends.last(),
        first.checked_sub(1).and_then(|at| ends.get(at)),
    ) {
        out[start..last].rotate_left(split - start);
    }
}

/// Appends our OPT record, echoing the DO bit of `edns`, to the response in `out` and
/// counts it among the additional records.
fn append_opt(out: &mut Vec<u8>, edns: Edns) {
    let opt_at = out.len();
    out.extend_from_slice(&OPT_RECORD);
    if edns.dnssec_ok {
        out[opt_at + 7] |= OPT_DO_BIT;
    }
    let additional = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
    out[10..12].copy_from_slice(&additional.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use crate::dns::LeaseReader;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::PTR;
    use hickory_proto::rr::{Name, RData};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::xml::{DnsForwarder, DnsHost, DnsSrv, DnsTxt};

    fn config() -> DnsConfig {
        DnsConfig {
            network: "test".into(),
            listen: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 122, 1))],
            interface: None,
            clients: Vec::new(),
            domain: Some("example.test".into()),
            local_only: true,
            forward_plain_names: true,
            local_ptr_domains: Vec::new(),
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
            host_file: Arc::default(),
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
            default_upstreams: vec![
                "10.0.0.53:53".parse().unwrap(),
                "10.0.0.54:53".parse().unwrap(),
            ],
            addresses: Vec::new(),
            cache_size: None,
            log_queries: None,
        }
    }

    /// [`config`] whose only `<dns><host>`s give the name "many" `count` addresses.
    fn with_many(count: u8) -> DnsConfig {
        DnsConfig {
            hosts: (0..count)
                .map(|i| DnsHost {
                    ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)),
                    hostnames: vec!["many".into()],
                })
                .collect(),
            ..config()
        }
    }

    fn leases() -> LeaseSource {
        LeaseSource::new(Arc::new(|| {
            vec![(Ipv4Addr::new(192, 168, 122, 77).into(), "web1".to_owned())]
        }))
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

    /// `log-queries` tells a lease's name from a configured one, as dnsmasq's `DHCP`
    /// and `config`.
    #[test]
    fn local_answers_are_told_by_where_they_come_from() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        for (name, rtype, source) in [
            ("web1.example.test.", RecordType::A, Source::Dhcp),
            (
                "77.122.168.192.in-addr.arpa.",
                RecordType::PTR,
                Source::Dhcp,
            ),
            ("static1.example.test.", RecordType::A, Source::Config),
            ("nobody.example.test.", RecordType::A, Source::Config),
        ] {
            let asked = query(name, rtype, false);
            let mut out = Vec::new();
            assert_eq!(
                resolver.answer(&asked, Transport::Udp, &mut out),
                Outcome::Reply
            );
            assert_eq!(resolver.source_of(&asked), source, "{name}");
        }
        assert!(resolver.query_log().is_none());
        let logging = DnsConfig {
            log_queries: Some(crate::xml::QueryLogging::Plain),
            ..config()
        };
        assert!(Resolver::new(&logging, None).unwrap().query_log().is_some());
    }

    fn rdata(reply: &Message) -> Vec<RData> {
        reply.answers.iter().map(|r| r.data.clone()).collect()
    }

    /// The reply to `name`, which must be answered here (NOERROR, authoritative).
    fn local_answer(resolver: &Resolver, name: &str, rtype: RecordType) -> Message {
        let reply = ask(resolver, name, rtype);
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert!(reply.metadata.authoritative, "{name}");
        reply
    }

    #[test]
    fn a_forwarded_query_offers_at_most_our_payload_size() {
        let mut offered = query("example.org.", RecordType::TXT, true);
        clamp_edns_payload(&mut offered);
        let forwarded = Message::from_vec(&offered).unwrap();
        assert_eq!(forwarded.max_payload(), MAX_UDP_PAYLOAD);
        assert_eq!(
            forwarded.queries,
            Message::from_vec(&query("example.org.", RecordType::TXT, true))
                .unwrap()
                .queries
        );
        // Nothing to lower: the query stays as it was.
        let classic = query("example.org.", RecordType::TXT, false);
        let mut forwarded = classic.clone();
        clamp_edns_payload(&mut forwarded);
        assert_eq!(forwarded, classic);
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
    fn dhcpv6_leases_answer_aaaa_and_ip6_arpa_ptr() {
        let leases: LeaseReader = Arc::new(|| {
            vec![
                (Ipv4Addr::new(192, 168, 122, 77).into(), "web1".to_owned()),
                ("2001:db8:ca2:2::77".parse().unwrap(), "web1".to_owned()),
            ]
        });
        let resolver = Resolver::new(&config(), Some(LeaseSource::new(leases))).unwrap();
        let v6: Ipv6Addr = "2001:db8:ca2:2::77".parse().unwrap();
        let reply = ask(&resolver, "web1.example.test.", RecordType::AAAA);
        assert_eq!(rdata(&reply), [RData::AAAA(v6.into())]);
        let reply = ask(&resolver, "web1.example.test.", RecordType::A);
        assert_eq!(
            rdata(&reply),
            [RData::A(Ipv4Addr::new(192, 168, 122, 77).into())]
        );
        let reverse = "7.7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0.2.a.c.0.8.b.d.0.1.0.0.2.ip6.arpa.";
        let reply = ask(&resolver, reverse, RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(PTR(
                Name::from_ascii("web1.example.test.").unwrap()
            ))]
        );
    }

    #[test]
    fn reverse_names_give_the_qualified_hostname() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        let reply = ask(&resolver, "77.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(PTR(
                Name::from_ascii("web1.example.test.").unwrap()
            ))]
        );
        let reply = ask(&resolver, "50.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(PTR(
                Name::from_ascii("static1.example.test.").unwrap()
            ))]
        );
    }

    #[test]
    fn local_ptr_keeps_the_subnet_s_reverse_lookups_home() {
        let defaults: [SocketAddr; 2] = [
            "10.0.0.53:53".parse().unwrap(),
            "10.0.0.54:53".parse().unwrap(),
        ];
        let unknown = "99.122.168.192.in-addr.arpa.";
        let forward = |resolver: &Resolver, name: &str| {
            let mut out = Vec::new();
            resolver.answer(
                &query(name, RecordType::PTR, false),
                Transport::Udp,
                &mut out,
            ) == Outcome::Forward(&defaults)
        };
        // Without localPtr, an address nobody has goes upstream, as with dnsmasq.
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        assert!(forward(&resolver, unknown));

        let mut local = config();
        local.local_ptr_domains = vec!["122.168.192.in-addr.arpa".into()];
        let resolver = Resolver::new(&local, Some(leases())).unwrap();
        let reply = ask(&resolver, unknown, RecordType::PTR);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.metadata.authoritative);
        // Known addresses are still answered; other subnets still go upstream.
        let reply = ask(&resolver, "77.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(reply.answers.len(), 1, "{reply:?}");
        assert!(forward(&resolver, "99.123.168.192.in-addr.arpa."));

        local.local_ptr_domains = vec!["in valid".into()];
        assert!(Resolver::new(&local, None).is_err());
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
        // The target's addresses come along, owned by the target, as from dnsmasq.
        let static1 = Name::from_ascii("static1.example.test.").unwrap();
        let additional: Vec<(&Name, &RData)> = reply
            .additionals
            .iter()
            .map(|record| (&record.name, &record.data))
            .collect();
        assert_eq!(
            additional,
            [
                (&static1, &RData::A(Ipv4Addr::new(192, 168, 122, 50).into())),
                (
                    &static1,
                    &RData::AAAA("fd00::50".parse::<Ipv6Addr>().unwrap().into())
                ),
            ]
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
    fn srv_target_addresses_that_do_not_fit_are_left_out_one_by_one() {
        let mut config = config();
        config.srvs = (0..6)
            .map(|n| DnsSrv {
                service: "big".into(),
                protocol: "tcp".into(),
                domain: None,
                target: Some(format!("target{n}.example.test")),
                port: Some(80),
                priority: Some(n),
                weight: None,
            })
            .collect();
        config.hosts = (0..6u8)
            .flat_map(|n| {
                (0..4u8).map(move |i| DnsHost {
                    ip: IpAddr::V4(Ipv4Addr::new(10, 9, n, i)),
                    hostnames: vec![format!("target{n}")],
                })
            })
            .collect();
        let resolver = Resolver::new(&config, None).unwrap();
        let name = "_big._tcp.example.test.";
        let mut out = Vec::new();
        resolver.answer(
            &query(name, RecordType::SRV, false),
            Transport::Tcp,
            &mut out,
        );
        let whole = Message::from_vec(&out).unwrap();
        assert_eq!((whole.answers.len(), whole.additionals.len()), (6, 24));
        // Owned by their target, through a pointer into its SRV record.
        assert_eq!(
            whole.additionals[0].name,
            Name::from_ascii("target0.example.test.").unwrap()
        );
        resolver.answer(
            &query(name, RecordType::SRV, false),
            Transport::Udp,
            &mut out,
        );
        assert!(out.len() <= CLASSIC_UDP_PAYLOAD, "{}", out.len());
        let cut = Message::from_vec(&out).unwrap();
        assert!(!cut.metadata.truncation);
        assert_eq!(cut.answers.len(), 6);
        assert!(
            (1..24).contains(&cut.additionals.len()),
            "{}",
            cut.additionals.len()
        );
        assert_eq!(
            cut.additionals[..],
            whole.additionals[..cut.additionals.len()]
        );
    }

    #[test]
    fn srv_records_come_lowest_priority_first() {
        let srv = |priority| DnsSrv {
            service: "sip".into(),
            protocol: "udp".into(),
            domain: None,
            target: Some(format!("p{priority}.example.test")),
            port: Some(5060),
            priority: Some(priority),
            weight: None,
        };
        let mut config = config();
        config.srvs = vec![srv(20), srv(10), srv(30)];
        let resolver = Resolver::new(&config, None).unwrap();
        let reply = ask(&resolver, "_sip._udp.example.test.", RecordType::SRV);
        let priorities: Vec<u16> = rdata(&reply)
            .iter()
            .filter_map(|data| match data {
                RData::SRV(srv) => Some(srv.priority),
                _ => None,
            })
            .collect();
        assert_eq!(priorities, [10, 20, 30]);
    }

    #[test]
    fn srv_without_domain_is_in_the_network_s_domain() {
        let http = DnsSrv {
            service: "http".into(),
            protocol: "tcp".into(),
            domain: None,
            target: None,
            port: None,
            priority: None,
            weight: None,
        };
        let mut config = config();
        config.srvs.push(http.clone());
        let resolver = Resolver::new(&config, None).unwrap();
        let reply = ask(&resolver, "_http._tcp.example.test.", RecordType::SRV);
        let RData::SRV(srv) = &rdata(&reply)[0] else {
            panic!("{reply:?}");
        };
        // dnsmasq's defaults: port 1, priority and weight 0, no target.
        assert_eq!((srv.priority, srv.weight, srv.port), (0, 0, 1));
        assert_eq!(srv.target, Name::root());
        let mut out = Vec::new();
        let outcome = resolver.answer(
            &query("_http._tcp.", RecordType::SRV, false),
            Transport::Udp,
            &mut out,
        );
        assert!(matches!(outcome, Outcome::Forward(_)), "{outcome:?}");

        // Without a domain, it stays unqualified.
        config.domain = None;
        config.srvs = vec![http];
        let resolver = Resolver::new(&config, None).unwrap();
        let reply = ask(&resolver, "_http._tcp.", RecordType::SRV);
        assert_eq!(reply.answers.len(), 1);
    }

    #[test]
    fn routes_other_names_upstream_or_keeps_them_local() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut out = Vec::new();
        let mut decide = |name: &str| {
            resolver.answer(&query(name, RecordType::A, false), Transport::Udp, &mut out)
        };
        let defaults: [SocketAddr; 2] = [
            "10.0.0.53:53".parse().unwrap(),
            "10.0.0.54:53".parse().unwrap(),
        ];
        assert_eq!(decide("www.example.org."), Outcome::Forward(&defaults));
        assert_eq!(
            decide("a.b.corp.test."),
            Outcome::Forward(&["10.0.0.2:53".parse().unwrap()])
        );
        // Only whole labels match a domain.
        assert_eq!(decide("a.bcorp.test."), Outcome::Forward(&defaults));
        assert_eq!(decide("plain."), Outcome::Forward(&defaults));
        // A domain without a forwarder address goes to the default servers (libvirt's
        // `server=/private.test/#`).
        assert_eq!(decide("x.private.test."), Outcome::Forward(&defaults));

        // libvirt's own example: a domain's forwarder, and a domain under it taken back
        // to the default servers; and a forwarder for the local domain itself.
        let mut carved = config();
        carved.forwarders = vec![
            DnsForwarder {
                addr: Some("8.8.4.4".parse().unwrap()),
                domain: Some("example.com".into()),
            },
            DnsForwarder {
                addr: None,
                domain: Some("www.example.com".into()),
            },
            DnsForwarder {
                addr: Some("10.0.0.6".parse().unwrap()),
                domain: Some("example.test".into()),
            },
        ];
        let carved = Resolver::new(&carved, None).unwrap();
        let mut decide = |name: &str| {
            carved.answer(&query(name, RecordType::A, false), Transport::Udp, &mut out)
        };
        assert_eq!(
            decide("a.example.com."),
            Outcome::Forward(&["8.8.4.4:53".parse().unwrap()])
        );
        assert_eq!(decide("www.example.com."), Outcome::Forward(&defaults));
        assert_eq!(decide("x.www.example.com."), Outcome::Forward(&defaults));
        assert_eq!(
            decide("nobody.example.test."),
            Outcome::Forward(&["10.0.0.6:53".parse().unwrap()])
        );

        // A forwarder for a domain inside a local one gets its names, as dnsmasq's
        // most specific entry wins; the rest of the local domain stays local.
        let mut nested = config();
        nested.forwarders.push(DnsForwarder {
            addr: Some("10.0.0.5".parse().unwrap()),
            domain: Some("ad.example.test".into()),
        });
        let nested = Resolver::new(&nested, None).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            nested.answer(
                &query("dc.ad.example.test.", RecordType::A, false),
                Transport::Udp,
                &mut out
            ),
            Outcome::Forward(&["10.0.0.5:53".parse().unwrap()])
        );
        assert_eq!(
            ask(&nested, "nobody.example.test.", RecordType::A)
                .metadata
                .response_code,
            ResponseCode::NXDomain
        );
        for local in ["nobody.example.test.", "nobody.EXAMPLE.test."] {
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

        // Forwarders replace the host's resolvers; several for one domain are all
        // kept, in document order.
        let mut forwarded = config();
        for (addr, domain) in [
            ("10.9.9.9", None),
            ("10.0.0.3", Some("CORP.test")),
            ("10.9.9.8", None),
        ] {
            forwarded.forwarders.push(DnsForwarder {
                addr: Some(addr.parse().unwrap()),
                domain: domain.map(str::to_owned),
            });
        }
        let resolver = Resolver::new(&forwarded, None).unwrap();
        let mut decide = |name: &str| {
            resolver.answer(&query(name, RecordType::A, false), Transport::Udp, &mut out)
        };
        assert_eq!(
            decide("www.example.org."),
            Outcome::Forward(&[
                "10.9.9.9:53".parse().unwrap(),
                "10.9.9.8:53".parse().unwrap()
            ])
        );
        assert_eq!(
            decide("x.corp.test."),
            Outcome::Forward(&[
                "10.0.0.2:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap()
            ])
        );
    }

    #[test]
    fn names_above_local_names_exist_without_records() {
        let lease_in_subdomain: LeaseReader = Arc::new(|| {
            vec![(
                Ipv4Addr::new(192, 168, 122, 78).into(),
                "vm.lab.example.test".to_owned(),
            )]
        });
        let resolver =
            Resolver::new(&config(), Some(LeaseSource::new(lease_in_subdomain))).unwrap();
        // The domain apex, the parent of an SRV name and the parents of a leased name.
        for name in [
            "example.test.",
            "_TCP.example.test.",
            "lab.example.test.",
            "LAB.example.test.",
        ] {
            for rtype in [RecordType::A, RecordType::SOA] {
                let reply = ask(&resolver, name, rtype);
                assert_eq!(
                    reply.metadata.response_code,
                    ResponseCode::NoError,
                    "{name} {rtype}"
                );
                assert!(reply.answers.is_empty());
                assert!(reply.metadata.authoritative);
            }
        }
        for name in [
            "x._tcp.example.test.",
            "y.example.test.",
            "nobody.lab.example.test.",
        ] {
            let reply = ask(&resolver, name, RecordType::A);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
        }
        // Outside the local domains such names are still asked upstream.
        let mut out = Vec::new();
        let outcome = resolver.answer(
            &query("other.test.", RecordType::A, false),
            Transport::Udp,
            &mut out,
        );
        assert!(matches!(outcome, Outcome::Forward(_)), "{outcome:?}");

        // The domain exists before any name is in it.
        let mut empty = config();
        empty.hosts.clear();
        empty.srvs.clear();
        let resolver = Resolver::new(&empty, None).unwrap();
        let reply = ask(&resolver, "example.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    }

    /// Outside a local-only domain such names go upstream, which has never heard of
    /// them: its NXDOMAIN must not say that the network's names do not exist.
    #[test]
    fn upstream_nxdomain_for_a_name_that_exists_here_becomes_nodata() {
        let mut open = config();
        open.local_only = false;
        let resolver = Resolver::new(&open, Some(leases())).unwrap();
        for name in ["example.test.", "_tcp.example.test.", "EXAMPLE.test."] {
            let query = query(name, RecordType::MX, false);
            let mut out = Vec::new();
            assert!(
                matches!(
                    resolver.answer(&query, Transport::Udp, &mut out),
                    Outcome::Forward(_)
                ),
                "{name}"
            );
            assert!(resolver.exists_without_records(&query), "{name}");
        }
        for name in ["nobody.example.test.", "example.org."] {
            assert!(
                !resolver.exists_without_records(&query(name, RecordType::A, false)),
                "{name}"
            );
        }
        let mut reply = Message::new(0x1234, MessageType::Response, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.response_code = ResponseCode::NXDomain;
        let mut bytes = reply.to_vec().unwrap();
        nxdomain_to_nodata(&mut bytes);
        let rewritten = Message::from_vec(&bytes).unwrap();
        assert_eq!(rewritten.metadata.response_code, ResponseCode::NoError);
        assert!(!rewritten.metadata.authoritative);
        // Other codes pass unchanged.
        reply.metadata.response_code = ResponseCode::ServFail;
        let mut bytes = reply.to_vec().unwrap();
        nxdomain_to_nodata(&mut bytes);
        assert_eq!(
            Message::from_vec(&bytes).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }

    #[test]
    fn configured_records_hide_leased_ones_of_their_type_only() {
        let mut config = config();
        config.txts.push(DnsTxt {
            name: "web1".into(),
            value: "a guest".into(),
        });
        config.hosts.push(DnsHost {
            ip: "192.168.122.51".parse().unwrap(),
            hostnames: vec!["static2".into()],
        });
        let leases: LeaseReader = Arc::new(|| {
            vec![
                (Ipv4Addr::new(192, 168, 122, 77).into(), "web1".to_owned()),
                (
                    Ipv4Addr::new(192, 168, 122, 78).into(),
                    "static2".to_owned(),
                ),
            ]
        });
        let resolver = Resolver::new(&config, Some(LeaseSource::new(leases))).unwrap();
        let leased = RData::A(Ipv4Addr::new(192, 168, 122, 77).into());
        let reply = ask(&resolver, "web1.", RecordType::A);
        assert_eq!(rdata(&reply), std::slice::from_ref(&leased));
        let reply = ask(&resolver, "web1.", RecordType::TXT);
        assert_eq!(reply.answers.len(), 1);
        let reply = ask(&resolver, "web1.", RecordType::ANY);
        assert_eq!(reply.answers.len(), 2);
        assert!(rdata(&reply).contains(&leased));
        // A configured address wins over the lease's.
        for rtype in [RecordType::A, RecordType::ANY] {
            let reply = ask(&resolver, "static2.example.test.", rtype);
            assert_eq!(
                rdata(&reply),
                [RData::A(Ipv4Addr::new(192, 168, 122, 51).into())]
            );
        }
        // And that lease gets no name at all, as in dnsmasq: its reverse name must not
        // point at a name that resolves to another address.
        let mut out = Vec::new();
        let reverse = query("78.122.168.192.in-addr.arpa.", RecordType::PTR, false);
        let outcome = resolver.answer(&reverse, Transport::Udp, &mut out);
        assert!(matches!(outcome, Outcome::Forward(_)), "{outcome:?}");
        let reply = ask(&resolver, "77.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            reply.answers.len(),
            1,
            "a TXT does not take the lease's name"
        );
    }

    #[test]
    fn the_host_s_hosts_file_is_served_with_the_network_s_records() {
        let mut config = config();
        config.host_file = Arc::new(crate::dns::SharedHosts::new(crate::dns::HostsFile::parse(
            std::path::Path::new("hosts"),
            "127.0.0.1 localhost\n\
                 10.1.1.1 gateway gw.lan.test\n\
                 192.168.122.50 fromhosts\n\
                 10.1.1.2 web1\n",
        )));
        let resolver = Resolver::new(&config, Some(leases())).unwrap();
        let gateway = RData::A(Ipv4Addr::new(10, 1, 1, 1).into());
        // A plain name also under the network's domain (expand-hosts); a dotted one as given.
        for name in [
            "gateway.",
            "gateway.example.test.",
            "gw.lan.test.",
            "GW.lan.test.",
        ] {
            let reply = local_answer(&resolver, name, RecordType::A);
            assert_eq!(rdata(&reply), std::slice::from_ref(&gateway), "{name}");
        }
        let reply = ask(&resolver, "localhost.", RecordType::A);
        assert_eq!(rdata(&reply), [RData::A(Ipv4Addr::LOCALHOST.into())]);
        // The reverse name gives the line's first name, qualified.
        let reply = ask(&resolver, "1.1.1.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(PTR(
                Name::from_ascii("gateway.example.test.").unwrap()
            ))]
        );
        // The hosts file's first name for an address takes its reverse name, before
        // `<dns><host>`'s, as dnsmasq reads /etc/hosts before libvirt's addn-hosts.
        let reply = ask(&resolver, "50.122.168.192.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            rdata(&reply),
            [RData::PTR(PTR(
                Name::from_ascii("fromhosts.example.test.").unwrap()
            ))]
        );
        let reply = ask(&resolver, "static1.example.test.", RecordType::A);
        assert_eq!(reply.answers.len(), 1);
        // A name in the hosts file hides a guest's lease of that name and type.
        let reply = ask(&resolver, "web1.example.test.", RecordType::A);
        assert_eq!(rdata(&reply), [RData::A(Ipv4Addr::new(10, 1, 1, 2).into())]);
    }

    #[test]
    fn edns_is_echoed_and_oversized_udp_answers_are_truncated() {
        let resolver = Resolver::new(&with_many(60), None).unwrap();
        let mut out = Vec::new();
        // 60 A records (16 bytes each) exceed 512 bytes but fit 1232.
        resolver.answer(
            &query("many.example.test.", RecordType::A, false),
            Transport::Udp,
            &mut out,
        );
        // As many whole records as fit, as from dnsmasq.
        assert!(out.len() <= CLASSIC_UDP_PAYLOAD, "{}", out.len());
        let reply = Message::from_vec(&out).unwrap();
        assert!(reply.metadata.truncation);
        assert_eq!(reply.answers.len(), (CLASSIC_UDP_PAYLOAD - 12 - 23) / 16);
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
    fn the_dnssec_ok_bit_is_echoed() {
        let resolver = Resolver::new(&config(), None).unwrap();
        for dnssec_ok in [false, true] {
            let mut message =
                Message::from_vec(&query("static1.example.test.", RecordType::A, true)).unwrap();
            if let Some(edns) = message.edns.as_mut() {
                edns.set_dnssec_ok(dnssec_ok);
            }
            let mut out = Vec::new();
            resolver.answer(&message.to_vec().unwrap(), Transport::Udp, &mut out);
            let reply = Message::from_vec(&out).unwrap();
            let edns = reply.edns.as_ref().expect("OPT in the reply");
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok);
        }
    }

    /// A kept upstream answer reaches the client as a forwarded one would: with our
    /// OPT record (DO echoed) where the query had one, NOERROR for a name that exists
    /// here, cut to what a UDP client takes.
    #[test]
    fn an_upstream_answer_says_recursion_is_available_and_keeps_the_askers_cd() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut asked = query("www.up.test.", RecordType::A, false);
        asked[3] |= CHECKING_DISABLED;
        // An authoritative-only server's answer: AA, no RA, no CD.
        let mut reply = asked.clone();
        reply[2] = 0x84;
        reply[3] = 0x00;
        resolver.ready_for(&asked, Transport::Udp, Answered::Asked, &mut reply);
        assert_eq!(reply[3] & (RECURSION_AVAILABLE | CHECKING_DISABLED), 0x90);
        // A kept answer first asked with CD, for a client that asks without it.
        let mut plain = asked.clone();
        plain[3] &= !CHECKING_DISABLED;
        resolver.ready_for(&plain, Transport::Udp, Answered::Kept, &mut reply);
        assert_eq!(reply[3] & (RECURSION_AVAILABLE | CHECKING_DISABLED), 0x80);
    }

    #[test]
    fn kept_upstream_answers_are_made_ready_for_each_client() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let upstream_reply = |asked: &[u8], addresses: u8, rcode: ResponseCode| {
            let asked = Message::from_vec(asked).unwrap();
            let mut reply = Message::new(asked.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.response_code = rcode;
            reply.add_query(asked.queries[0].clone());
            for last in 0..addresses {
                let address = RData::A(Ipv4Addr::new(192, 0, 2, last).into());
                reply.add_answer(hickory_proto::rr::Record::from_rdata(
                    asked.queries[0].name().clone(),
                    300,
                    address,
                ));
            }
            let soa = hickory_proto::rr::rdata::SOA::new(
                Name::from_ascii("ns.test.").unwrap(),
                Name::from_ascii("admin.test.").unwrap(),
                1,
                60,
                60,
                600,
                300,
            );
            reply.add_authority(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("test.").unwrap(),
                300,
                RData::SOA(soa),
            ));
            if let Some(edns) = &asked.edns {
                let mut theirs = Edns::new();
                theirs.set_max_payload(4096);
                theirs.set_dnssec_ok(edns.flags().dnssec_ok);
                reply.set_edns(theirs);
            }
            reply.to_vec().unwrap()
        };
        let mut out = Vec::new();

        let mut with_do = Message::from_vec(&query("www.up.test.", RecordType::A, true)).unwrap();
        if let Some(edns) = with_do.edns.as_mut() {
            edns.set_dnssec_ok(true);
        }
        let with_do = with_do.to_vec().unwrap();
        let outcome = resolver.answer(&with_do, Transport::Udp, &mut out);
        assert!(matches!(outcome, Outcome::Forward(_)), "{outcome:?}");
        assert!(!resolver.cached_reply(&with_do, Transport::Udp, &mut out));
        resolver.remember(
            &with_do,
            &upstream_reply(&with_do, 1, ResponseCode::NoError),
        );
        assert!(resolver.cached_reply(&with_do, Transport::Udp, &mut out));
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.answers.len(), 1);
        let edns = reply.edns.as_ref().expect("our OPT record");
        assert_eq!(edns.max_payload(), MAX_UDP_PAYLOAD);
        assert!(edns.flags().dnssec_ok);

        // "other.test" has "alias.other.test" under it.
        let above = query("other.test.", RecordType::A, false);
        resolver.remember(&above, &upstream_reply(&above, 0, ResponseCode::NXDomain));
        assert!(resolver.cached_reply(&above, Transport::Udp, &mut out));
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.edns.is_none());

        // Learnt over TCP, asked again over UDP without EDNS: 40 addresses are too many.
        let many = query("many.up.test.", RecordType::A, false);
        resolver.remember(&many, &upstream_reply(&many, 40, ResponseCode::NoError));
        assert!(resolver.cached_reply(&many, Transport::Tcp, &mut out));
        assert_eq!(Message::from_vec(&out).unwrap().answers.len(), 40);
        assert!(resolver.cached_reply(&many, Transport::Udp, &mut out));
        assert!(out.len() <= CLASSIC_UDP_PAYLOAD);
        let reply = Message::from_vec(&out).unwrap();
        assert!(reply.metadata.truncation && reply.answers.is_empty());

        // A new resolver (net-update, new upstreams) starts afresh.
        let resolver = Resolver::new(&config(), None).unwrap();
        assert!(!resolver.cached_reply(&with_do, Transport::Udp, &mut out));
    }

    #[test]
    fn a_name_of_several_addresses_answers_them_round_robin() {
        let mut config = with_many(3);
        config.hosts.extend((1..=2).map(|i| DnsHost {
            ip: IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i)),
            hostnames: vec!["many".into()],
        }));
        let resolver = Resolver::new(&config, None).unwrap();
        let addresses = |resolver: &Resolver| {
            let reply = ask(resolver, "many.example.test.", RecordType::A);
            rdata(&reply)
        };
        let first = addresses(&resolver);
        // Other questions in between (a dual-stack client's AAAA) do not hold it up.
        ask(&resolver, "many.example.test.", RecordType::AAAA);
        ask(&resolver, "static1.example.test.", RecordType::A);
        let second = addresses(&resolver);
        ask(&resolver, "many.example.test.", RecordType::AAAA);
        let third = addresses(&resolver);
        assert_eq!(first.len(), 3);
        assert_ne!(first[0], second[0]);
        assert_ne!(second[0], third[0]);
        assert_eq!(second, [&first[1..], &first[..1]].concat());
        assert_eq!(addresses(&resolver), first);
        // The same set, in the same cyclic order, every time.
        let mut sorted = third.clone();
        sorted.sort_by_key(|data| format!("{data:?}"));
        let mut expected = first.clone();
        expected.sort_by_key(|data| format!("{data:?}"));
        assert_eq!(sorted, expected);
    }

    #[test]
    fn forwarded_udp_replies_are_cut_to_what_the_client_takes() {
        let resolver = Resolver::new(&with_many(100), None).unwrap();
        // An upstream's 1.6 kB answer (as TCP would carry it), for clients that offered
        // 512 bytes, 4096 (clamped to 1232 when forwarded), and over TCP.
        for (edns, limit) in [(false, 512), (true, usize::from(MAX_UDP_PAYLOAD))] {
            let mut forwarded = query("many.example.test.", RecordType::A, edns);
            clamp_edns_payload(&mut forwarded);
            let mut reply = Vec::new();
            resolver.answer(&forwarded, Transport::Tcp, &mut reply);
            assert!(reply.len() > limit);
            fit_udp_reply(&forwarded, &mut reply);
            assert!(reply.len() <= limit, "{} > {limit}", reply.len());
            let message = Message::from_vec(&reply).unwrap();
            assert!(message.metadata.truncation);
            assert!(message.answers.is_empty());
            assert_eq!(message.metadata.id, 0x1234);
            assert_eq!(message.metadata.response_code, ResponseCode::NoError);
            assert_eq!(message.queries.len(), 1);
            assert_eq!(message.edns.is_some(), edns);
        }
        // What fits is passed on as it came.
        let small = query("static1.example.test.", RecordType::A, false);
        let mut reply = Vec::new();
        resolver.answer(&small, Transport::Udp, &mut reply);
        let before = reply.clone();
        fit_udp_reply(&small, &mut reply);
        assert_eq!(reply, before);
    }

    /// The upper bits of an upstream's RCODE live in its OPT record: they are kept when
    /// a joined asker's OPT record replaces it (BADCOOKIE, 23, must not come out as 7).
    #[test]
    fn a_joined_askers_reply_keeps_the_upstreams_extended_rcode() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let asked = query("static1.example.test.", RecordType::A, true);
        let mut reply = Vec::new();
        resolver.answer(&asked, Transport::Udp, &mut reply);
        let mut upstream = Message::from_vec(&reply).unwrap();
        upstream.answers.clear();
        upstream.metadata.response_code = ResponseCode::BADCOOKIE;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        upstream.set_edns(edns);
        let mut reply = upstream.to_vec().unwrap();
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::BADCOOKIE
        );
        with_own_edns(&asked, &mut reply);
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::BADCOOKIE
        );
    }

    #[test]
    fn a_joined_askers_reply_takes_its_edns_in_place_of_the_upstreams() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let asked = query("static1.example.test.", RecordType::A, true);
        let ours = |reply: &[u8]| Message::from_vec(reply).unwrap().edns.unwrap();
        // An upstream's OPT record, last, with an option: replaced by ours.
        let mut reply = Vec::new();
        resolver.answer(&asked, Transport::Udp, &mut reply);
        let mut upstream = Message::from_vec(&reply).unwrap();
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![7; 8],
            ));
        upstream.set_edns(edns);
        let mut reply = upstream.to_vec().unwrap();
        with_own_edns(&asked, &mut reply);
        let edns = ours(&reply);
        assert_eq!(edns.max_payload(), MAX_UDP_PAYLOAD);
        assert!(edns.options().as_ref().is_empty(), "{edns:?}");
        assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);
        // None from the upstream: ours added.
        upstream.edns = None;
        let mut reply = upstream.to_vec().unwrap();
        with_own_edns(&asked, &mut reply);
        assert_eq!(ours(&reply).max_payload(), MAX_UDP_PAYLOAD);
        // Not last (a record after it would move): left as it came.
        let mut reply = upstream.to_vec().unwrap();
        reply.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        reply.extend_from_slice(&[0, 0, 16, 0, 1, 0, 0, 0, 60, 0, 1, 0]);
        reply[11] = 2;
        let before = reply.clone();
        with_own_edns(&asked, &mut reply);
        assert_eq!(reply, before);
    }

    #[test]
    fn a_released_lease_stops_resolving_once_the_dhcp_server_says_it_changed() {
        let table = Arc::new(std::sync::Mutex::new(vec![(
            IpAddr::from(Ipv4Addr::new(192, 168, 122, 9)),
            "gone".to_owned(),
        )]));
        let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source = {
            let table = Arc::clone(&table);
            LeaseSource::new(Arc::new(move || table.lock().unwrap().clone()))
                .with_changes(Arc::clone(&changes))
        };
        let resolver = Resolver::new(&config(), Some(source)).unwrap();
        let reply = ask(&resolver, "gone.example.test.", RecordType::A);
        assert_eq!(reply.answers.len(), 1);
        // Released: well before the periodic re-read, it no longer resolves.
        table.lock().unwrap().clear();
        changes.fetch_add(1, std::sync::atomic::Ordering::Release);
        std::thread::sleep(LEASE_REFRESH_ON_MISS);
        let reply = ask(&resolver, "gone.example.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn new_leases_resolve_without_waiting_for_the_refresh() {
        let table = Arc::new(std::sync::Mutex::new(Vec::new()));
        let changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source = {
            let table = Arc::clone(&table);
            LeaseSource::new(Arc::new(move || table.lock().unwrap().clone()))
                .with_changes(Arc::clone(&changes))
        };
        let resolver = Resolver::new(&config(), Some(source)).unwrap();
        let reply = ask(&resolver, "late.example.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        table
            .lock()
            .unwrap()
            .push((Ipv4Addr::new(192, 168, 122, 9).into(), "late".to_owned()));
        // A miss re-reads the leases only once the DHCP server says they changed: a
        // stream of forwarded names must not rebuild the lease zone every time.
        std::thread::sleep(LEASE_REFRESH_ON_MISS);
        let reply = ask(&resolver, "late.example.test.", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        changes.fetch_add(1, std::sync::atomic::Ordering::Release);
        let reply = ask(&resolver, "late.example.test.", RecordType::A);
        assert_eq!(
            rdata(&reply),
            [RData::A(Ipv4Addr::new(192, 168, 122, 9).into())]
        );
    }

    #[test]
    fn version_bind_tells_the_version_as_dnsmasq_tells_its() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut version = query("VERSION.bind.", RecordType::TXT, true);
        let class_at = 12 + "VERSION.bind.".len() + 1 + 2;
        version[class_at..class_at + 2].copy_from_slice(&3u16.to_be_bytes());
        let mut out = Vec::new();
        resolver.answer(&version, Transport::Udp, &mut out);
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.metadata.authoritative);
        let expected = format!("kvnetd-{}", env!("CARGO_PKG_VERSION"));
        match reply
            .answers
            .first()
            .map(|record| (record.dns_class, &record.data))
        {
            Some((hickory_proto::rr::DNSClass::CH, RData::TXT(txt))) => {
                assert_eq!(txt.txt_data.concat(), expected.as_bytes());
            }
            other => panic!("{other:?}"),
        }
        // In class IN it is a name like any other.
        assert_eq!(
            resolver.answer(
                &query("version.bind.", RecordType::TXT, false),
                Transport::Udp,
                &mut out
            ),
            Outcome::Forward(&resolver.upstreams)
        );
    }

    #[test]
    fn other_classes_get_notimp_with_the_question_and_opt() {
        let resolver = Resolver::new(&config(), Some(leases())).unwrap();
        let mut chaos = query("web1.example.test.", RecordType::A, true);
        let class_at = 12 + "web1.example.test.".len() + 1 + 2;
        chaos[class_at..class_at + 2].copy_from_slice(&3u16.to_be_bytes());
        let mut out = Vec::new();
        assert_eq!(
            resolver.answer(&chaos, Transport::Udp, &mut out),
            Outcome::Reply
        );
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(
            reply.queries[0].query_class(),
            hickory_proto::rr::DNSClass::CH
        );
        assert_eq!(
            reply.queries[0].name(),
            &Name::from_ascii("web1.example.test.").unwrap()
        );
        assert!(reply.answers.is_empty());
        assert_eq!(reply.max_payload(), MAX_UDP_PAYLOAD);
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

    /// Refusals keep what lets the client match them: the question when there is one to
    /// read, our OPT record when the query had one (RFC 6891 6.1.1), as dnsmasq's do.
    #[test]
    fn refusals_keep_the_question_and_the_opt_record() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut out = Vec::new();
        // Opcode NOTIFY (4).
        let mut notify = query("web1.example.test.", RecordType::A, true);
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        assert_eq!(
            resolver.answer(&notify, Transport::Udp, &mut out),
            Outcome::Reply
        );
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(reply.queries.len(), 1);
        assert!(reply.edns.is_some());
        // No question, and an OPT record (a DNS cookie, say).
        let mut bare = notify[..12].to_vec();
        bare[2] &= 0x87;
        bare[4..6].copy_from_slice(&[0, 0]);
        bare.extend_from_slice(&notify[notify.len() - 11..]);
        assert_eq!(
            resolver.answer(&bare, Transport::Udp, &mut out),
            Outcome::Reply
        );
        let reply = Message::from_vec(&out).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(reply.queries.is_empty());
        assert!(reply.edns.is_some());
    }

    /// RFC 6891 6.1.3: an EDNS version we do not speak gets BADVERS with our version,
    /// for local and forwarded names alike.
    #[test]
    fn an_unknown_edns_version_gets_badvers() {
        let resolver = Resolver::new(&config(), None).unwrap();
        let mut out = Vec::new();
        for name in ["static1.example.test.", "www.upstream.test."] {
            let mut asked = Message::from_vec(&query(name, RecordType::A, true)).unwrap();
            if let Some(edns) = asked.edns.as_mut() {
                edns.set_version(1);
            }
            let asked = asked.to_vec().unwrap();
            assert_eq!(
                resolver.answer(&asked, Transport::Udp, &mut out),
                Outcome::Reply,
                "{name}"
            );
            let reply = Message::from_vec(&out).unwrap();
            // 16: BADVERS in an OPT record (hickory names it by TSIG's BADSIG).
            assert_eq!(u16::from(reply.metadata.response_code), 16, "{name}");
            assert!(reply.answers.is_empty());
            assert_eq!(reply.edns.as_ref().map(|edns| edns.version()), Some(0));
            assert_eq!(reply.queries.len(), 1);
        }
    }

    #[test]
    fn a_reply_must_carry_the_query_s_id_and_question() {
        let sent = query("www.Example.org.", RecordType::A, true);
        let mut reply = sent.clone();
        reply[2] |= 0x80;
        reply[12..].make_ascii_uppercase();
        assert!(is_reply_to(&sent, &reply));
        assert!(!is_reply_to(&sent, &sent), "not a response");
        let mut other_id = reply.clone();
        other_id[1] ^= 1;
        assert!(!is_reply_to(&sent, &other_id));
        let mut other_name = reply.clone();
        other_name[13] ^= 1;
        assert!(!is_reply_to(&sent, &other_name));
        let question_end = 12 + "www.Example.org.".len() + 1 + 4;
        for (at, what) in [(question_end - 3, "type"), (question_end - 1, "class")] {
            let mut other = reply.clone();
            other[at] ^= 0x10;
            assert!(!is_reply_to(&sent, &other), "{what}");
        }
        let mut no_question = reply[..12].to_vec();
        no_question[5] = 0;
        assert!(!is_reply_to(&sent, &no_question));
        assert!(!is_reply_to(&sent, &reply[..question_end - 1]), "cut short");
        assert!(!is_reply_to(&sent, &[]));
    }

    /// Seeded mutation fuzzing of the parse-and-answer path: byte flips, truncations,
    /// insertions and random tails on valid queries. Every reply must decode again and
    /// carry the query's ID, and every query hickory-proto reads as one IN question
    /// must be answered or forwarded with that same question.
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
            let outcome = crate::dns::fuzzing::check_answer(&resolver, &packet, transport)
                .unwrap_or_else(|e| panic!("{e}"));
            if outcome == Outcome::Reply {
                replies += 1;
            }
        }
        // The mutations must leave many packets answerable, or the test tests nothing.
        assert!(replies > 5_000, "{replies}");
    }

    /// [`config`] with OpenShift-like `address=` lines and a `<host>` under one.
    fn with_addresses() -> DnsConfig {
        let rule = |domains: &[&str], address: Option<&str>| crate::xml::AddressRule {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            address: address.map(|a| a.parse().unwrap()),
        };
        let mut config = config();
        config.hosts.push(DnsHost {
            ip: "192.168.122.7".parse().unwrap(),
            hostnames: vec!["x.apps.example.test".into()],
        });
        config.addresses = vec![
            rule(&["apps.example.test"], Some("192.168.122.51")),
            rule(&["deep.apps.example.test"], Some("192.168.122.52")),
            rule(&["gone.apps.example.test", "gone.test"], None),
            rule(&["v6.test"], Some("fd00::5")),
            rule(&["web1.example.test"], Some("192.168.122.53")),
            rule(&["wild.test"], Some("192.168.122.54")),
            rule(&["wild.example.test"], Some("192.168.122.55")),
        ];
        config
    }

    /// What dnsmasq 2.90 answered for the same lines under libvirt 9 (checked with dig).
    #[test]
    fn address_rules_answer_their_domain_and_every_name_under_it() {
        let resolver = Resolver::new(&with_addresses(), Some(leases())).unwrap();
        let a = |ip: [u8; 4]| RData::A(Ipv4Addr::from(ip).into());
        for (name, want) in [
            ("apps.example.test.", [192, 168, 122, 51]),
            ("foo.apps.example.test.", [192, 168, 122, 51]),
            ("A.B.Apps.Example.TEST.", [192, 168, 122, 51]),
            // The more specific domain wins.
            ("a.deep.apps.example.test.", [192, 168, 122, 52]),
            // The network's own names win over address=, as in dnsmasq.
            ("x.apps.example.test.", [192, 168, 122, 7]),
            ("web1.example.test.", [192, 168, 122, 77]),
        ] {
            let reply = local_answer(&resolver, name, RecordType::A);
            assert_eq!(rdata(&reply), [a(want)], "{name}");
            assert_eq!(reply.answers[0].ttl, 0, "{name}");
        }
        let reply = ask(&resolver, "v6.test.", RecordType::AAAA);
        assert_eq!(
            rdata(&reply),
            [RData::AAAA("fd00::5".parse::<Ipv6Addr>().unwrap().into())]
        );
        // A domain without an address is NXDOMAIN here, whatever the type.
        for (name, rtype) in [
            ("gone.apps.example.test.", RecordType::A),
            ("z.gone.apps.example.test.", RecordType::AAAA),
            ("gone.test.", RecordType::MX),
        ] {
            let reply = ask(&resolver, name, rtype);
            assert_eq!(
                reply.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
            assert!(reply.answers.is_empty());
        }
        // ANY gets the domain's addresses, as from dnsmasq.
        let reply = ask(&resolver, "foo.wild.test.", RecordType::ANY);
        assert_eq!(rdata(&reply), [a([192, 168, 122, 54])]);
        // In the network's own (local) domain, another type is NODATA, never NXDOMAIN
        // beside the A answer.
        let reply = ask(&resolver, "foo.wild.example.test.", RecordType::AAAA);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        // Elsewhere other types go on as without the line: upstream, as dnsmasq sends
        // them.
        for (name, rtype) in [
            ("foo.wild.test.", RecordType::AAAA),
            ("wild.test.", RecordType::MX),
            ("v6.test.", RecordType::A),
        ] {
            let mut out = Vec::new();
            let outcome = resolver.answer(&query(name, rtype, false), Transport::Udp, &mut out);
            assert!(
                matches!(outcome, Outcome::Forward(_)),
                "{name} {rtype}: {outcome:?}"
            );
        }
    }

    #[test]
    fn cache_size_zero_keeps_no_upstream_answer() {
        let asked = query("www.up.test.", RecordType::A, false);
        let mut reply = Message::from_vec(&asked).unwrap();
        reply.metadata.message_type = MessageType::Response;
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("www.up.test.").unwrap(),
            300,
            RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
        ));
        let reply = reply.to_vec().unwrap();
        let mut out = Vec::new();
        for (cache_size, kept) in [(None, true), (Some(1), true), (Some(0), false)] {
            let resolver = Resolver::new(
                &DnsConfig {
                    cache_size,
                    ..config()
                },
                None,
            )
            .unwrap();
            resolver.remember(&asked, &reply);
            assert_eq!(
                resolver.cached_reply(&asked, Transport::Udp, &mut out),
                kept,
                "{cache_size:?}"
            );
        }
    }
}
