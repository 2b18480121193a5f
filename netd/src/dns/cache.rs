//! Upstream answers kept for their TTL, as dnsmasq's cache (150 names by default, which
//! libvirt keeps) keeps them: a guest asking again for a name it just resolved, or the
//! same name another guest asked, is answered at once instead of waiting for the
//! host's resolvers.
//!
//! A whole reply is kept per question, never its records one by one, so a reply can
//! only ever answer the question it was the answer to: what an upstream adds in its
//! authority or additional sections is never served for other names. What is kept:
//! - NOERROR and NXDOMAIN replies, not truncated, without TSIG, and at most
//!   [`MAX_ENTRY_BYTES`];
//! - for as long as their shortest TTL (a TTL with its top bit set counts as 0, RFC
//!   2181 8; the OPT record's is flags, not a TTL); a negative reply (NXDOMAIN, or no
//!   answers) for its SOA's TTL or minimum, whichever is shorter, which its SOA then
//!   carries (RFC 2308 5), and not at all without an SOA, as dnsmasq's default
//!   `neg-ttl`;
//! - with their OPT record taken off: its options (a DNS cookie, NSID) were for the
//!   client that asked first. A query with EDNS gets our OPT record instead, as local
//!   answers do.
//!
//! Only plain queries share replies: one question, and nothing else but an OPT record
//! right after it. Queries with and without EDNS, the DNSSEC OK bit, or the RD, AD or
//! CD bit are told apart: an upstream answers them differently (without RD, from its
//! cache only: a CNAME without its target, say). A query with an EDNS Client Subnet
//! option neither takes a kept reply nor leaves one, as with dnsmasq: its answer is for
//! that subnet. A hit's TTLs are lowered by the time it was kept, its AA bit is cleared
//! (what a cache serves is no authority's answer, RFC 2181 5.4.1, as dnsmasq serves
//! it), and it takes the asker's ID and question (its letter case: resolvers randomise
//! it, "0x20").
//!
//! Memory is bounded per network ([`MAX_ENTRIES`], [`MAX_BYTES`]) and across all
//! networks ([`MAX_TOTAL_BYTES`]): when every cache together is full, a reply is not
//! kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::resolver::{HEADER_LEN, MAX_NAME_LEN, query_edns, read_question};

/// Replies kept at most per network: dnsmasq's default `cache-size`.
pub const MAX_ENTRIES: usize = 150;
/// Bytes kept at most per network (replies and what they take to find and age), so a
/// network whose guests ask for many large answers keeps fewer of them.
pub const MAX_BYTES: usize = 128 * 1024;
/// Bytes kept at most by every network's cache together: a thousand networks whose
/// guests fill their caches cannot take more than this of the daemon's memory.
pub const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;
/// A larger reply is not kept (one that came over TCP, most likely).
pub const MAX_ENTRY_BYTES: usize = 4096;
/// No reply is kept longer than a day, whatever its TTL says.
const MAX_TTL: u32 = 24 * 60 * 60;
/// What an entry costs besides its reply and TTL offsets: its key, times, and the
/// map's slot (an estimate).
const ENTRY_OVERHEAD: usize = 96;

/// Bytes every network's cache holds together.
static TOTAL_BYTES: AtomicUsize = AtomicUsize::new(0);

const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
const TYPE_TSIG: u16 = 250;
const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;
/// EDNS option code of Client Subnet (RFC 7871).
const OPTION_CLIENT_SUBNET: u16 = 8;

/// What tells apart the queries one reply answers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The question's name in wire form, lowercased.
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    /// Whether the query has EDNS, and its DO bit.
    edns: bool,
    dnssec_ok: bool,
    /// The header's RD, AD and CD bits (RFC 6840 5.7, 5.9: what the AD bit of the
    /// response depends on).
    recursion_desired: bool,
    authentic_data: bool,
    checking_disabled: bool,
}

impl Key {
    /// The key of the query `message`, and where its question ends; `None` if it is no
    /// plain query (see the module's documentation) or carries a Client Subnet option.
    pub(super) fn of(message: &[u8]) -> Option<(Key, usize)> {
        let mut name = [0u8; MAX_NAME_LEN];
        let (question, len) = read_question(message, &mut name)?;
        let header = message.get(..HEADER_LEN)?;
        if header[4..10] != [0, 1, 0, 0, 0, 0] {
            return None;
        }
        let edns = match header[10..12] {
            [0, 0] if message.len() == question.end => None,
            [0, 1] => {
                let edns = query_edns(message, question.end)?;
                let options = opt_options(message, question.end)?;
                if options_contain(options, OPTION_CLIENT_SUBNET)? {
                    return None;
                }
                Some(edns)
            }
            _ => return None,
        };
        let key = Key {
            name: name.get(..len)?.into(),
            qtype: question.qtype,
            qclass: question.qclass,
            edns: edns.is_some(),
            dnssec_ok: edns.is_some_and(|edns| edns.dnssec_ok),
            recursion_desired: header[2] & 0x01 != 0,
            authentic_data: header[3] & 0x20 != 0,
            checking_disabled: header[3] & 0x10 != 0,
        };
        Some((key, question.end))
    }
}

/// The options of the OPT record at `at`, which must end `message`.
fn opt_options(message: &[u8], at: usize) -> Option<&[u8]> {
    let fixed = message.get(at..at + 11)?;
    let len = usize::from(u16::from_be_bytes([fixed[9], fixed[10]]));
    let options = message.get(at + 11..)?;
    (options.len() == len).then_some(options)
}

/// Whether the EDNS `options` hold one with `code`; `None` if they do not parse.
fn options_contain(mut options: &[u8], code: u16) -> Option<bool> {
    let mut found = false;
    while !options.is_empty() {
        let &[c0, c1, l0, l1, ref rest @ ..] = options else {
            return None;
        };
        found |= u16::from_be_bytes([c0, c1]) == code;
        options = rest.get(usize::from(u16::from_be_bytes([l0, l1]))..)?;
    }
    Some(found)
}

#[derive(Debug)]
struct Entry {
    /// The reply without its OPT record, header and question included.
    reply: Box<[u8]>,
    /// Offsets in `reply` of every record's TTL (replies are at most
    /// [`MAX_ENTRY_BYTES`]).
    ttl_at: Box<[u16]>,
    stored: Instant,
    /// How long it may be served: its shortest TTL.
    lifetime: Duration,
}

impl Entry {
    fn expires(&self) -> Instant {
        self.stored + self.lifetime
    }

    /// The bytes it holds, counted against [`MAX_BYTES`] and [`MAX_TOTAL_BYTES`].
    fn cost(&self, key: &Key) -> usize {
        self.reply.len() + 2 * self.ttl_at.len() + key.name.len() + ENTRY_OVERHEAD
    }
}

/// One network's kept replies.
#[derive(Debug)]
pub struct AnswerCache {
    /// Each entry with its cost.
    entries: HashMap<Key, (Entry, usize)>,
    /// Sum of the entries' costs.
    bytes: usize,
    /// What every cache holds together ([`TOTAL_BYTES`]; tests bring their own).
    total: &'static AtomicUsize,
    /// Replies kept at most ([`MAX_ENTRIES`] unless `cache-size` says otherwise; 0
    /// keeps none).
    max_entries: usize,
}

impl Default for AnswerCache {
    fn default() -> AnswerCache {
        AnswerCache {
            entries: HashMap::new(),
            bytes: 0,
            total: &TOTAL_BYTES,
            max_entries: MAX_ENTRIES,
        }
    }
}

impl Drop for AnswerCache {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl AnswerCache {
    /// A cache of at most `max_entries` replies (dnsmasq's `cache-size`), still within
    /// [`MAX_BYTES`]: 0 keeps none.
    pub fn with_max_entries(max_entries: usize) -> AnswerCache {
        AnswerCache {
            entries: HashMap::new(),
            bytes: 0,
            total: &TOTAL_BYTES,
            max_entries,
        }
    }

    /// Writes into `out` the kept reply to `query` as of `now`, without an OPT record
    /// (the caller adds its own), and returns whether there was one. `out` is left
    /// empty on a miss.
    pub fn lookup(&mut self, query: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        out.clear();
        let Some((key, question_end)) = Key::of(query) else {
            return false;
        };
        let Some((entry, _)) = self.entries.get(&key) else {
            return false;
        };
        if now >= entry.expires() {
            self.remove(&key);
            return false;
        }
        // Both questions have the same name up to case, type and class: same length.
        let (Some(asked), Some(kept)) = (
            query.get(HEADER_LEN..question_end),
            entry.reply.get(HEADER_LEN..question_end),
        ) else {
            return false;
        };
        if asked.len() != kept.len() {
            return false;
        }
        let kept_for =
            u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        out.extend_from_slice(&entry.reply);
        out[..2].copy_from_slice(&query[..2]);
        out[2] &= !0x04;
        out[HEADER_LEN..question_end].copy_from_slice(asked);
        for &at in &entry.ttl_at {
            let at = usize::from(at);
            if let Some(ttl) = out.get_mut(at..at + 4) {
                let left =
                    u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]).saturating_sub(kept_for);
                ttl.copy_from_slice(&left.to_be_bytes());
            }
        }
        true
    }

    /// Keeps `reply`, an upstream's answer to `query` (checked by the caller to answer
    /// it), if it may be kept (see the module's documentation).
    pub fn store(&mut self, query: &[u8], reply: &[u8], now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let Some((key, _)) = Key::of(query) else {
            return;
        };
        // What was kept is outdated, whether or not the new reply may be kept.
        self.remove(&key);
        let Some(entry) = Entry::from_reply(reply, now) else {
            return;
        };
        let cost = entry.cost(&key);
        let own_full = |cache: &AnswerCache| {
            cache.entries.len() >= cache.max_entries || cache.bytes + cost > MAX_BYTES
        };
        let total = self.total;
        let all_full = || total.load(Ordering::Relaxed) + cost > MAX_TOTAL_BYTES;
        if own_full(self) || all_full() {
            self.purge_expired(now);
        }
        while own_full(self) {
            let Some(soonest) = self
                .entries
                .iter()
                .min_by_key(|(_, (kept, _))| kept.expires())
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            self.remove(&soonest);
        }
        // Other networks' replies are theirs to let go.
        if own_full(self) || all_full() {
            return;
        }
        self.bytes += cost;
        self.total.fetch_add(cost, Ordering::Relaxed);
        self.entries.insert(key, (entry, cost));
    }

    /// Lets go of the replies expired by `now`. Each network's server does so now and
    /// then, so that a network gone quiet does not hold on to its share of
    /// [`MAX_TOTAL_BYTES`].
    pub fn purge_expired(&mut self, now: Instant) {
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, (kept, _))| kept.expires() <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &expired {
            self.remove(key);
        }
    }

    /// How many replies are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no reply is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn remove(&mut self, key: &Key) {
        if let Some((_, cost)) = self.entries.remove(key) {
            self.bytes -= cost;
            self.total.fetch_sub(cost, Ordering::Relaxed);
        }
    }
}

impl Entry {
    /// The entry for `reply`, or `None` if it must not be kept or does not parse.
    fn from_reply(reply: &[u8], now: Instant) -> Option<Entry> {
        let header = reply.get(..HEADER_LEN)?;
        let truncated = header[2] & 0x02 != 0;
        let rcode = header[3] & 0x0f;
        if reply.len() > MAX_ENTRY_BYTES
            || truncated
            || !(rcode == RCODE_NOERROR || rcode == RCODE_NXDOMAIN)
        {
            return None;
        }
        let count = |at: usize| usize::from(u16::from_be_bytes([header[at], header[at + 1]]));
        let (answers, authority, additional) = (count(6), count(8), count(10));
        let mut name = [0u8; MAX_NAME_LEN];
        let mut at = read_question(reply, &mut name)?.0.end;
        let mut ttl_at: Vec<u16> = Vec::new();
        let mut shortest = MAX_TTL;
        // The SOA's TTL offset, and the negative answer's lifetime it gives.
        let mut negative: Option<(usize, u32)> = None;
        let mut opt_at = None;
        for index in 0..answers + authority + additional {
            let record_at = at;
            at = skip_name(reply, at)?;
            let fixed = reply.get(at..at + 10)?;
            let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
            let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
            // RFC 2181 8: a TTL with its top bit set is 0.
            let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
            let rdata_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
            let rdata = reply.get(at + 10..at + 10 + rdata_len)?;
            match rtype {
                TYPE_TSIG => return None,
                TYPE_OPT => {
                    // Its "TTL" holds the extended RCODE, which must be 0 too.
                    if opt_at.is_some() || fixed[4] != 0 || index < answers + authority {
                        return None;
                    }
                    opt_at = Some(record_at);
                }
                _ => {
                    if opt_at.is_some() {
                        // Taking the OPT record out would move the records after it,
                        // and the names that point into them.
                        return None;
                    }
                    ttl_at.push(u16::try_from(at + 4).ok()?);
                    shortest = shortest.min(ttl);
                    let in_authority = (answers..answers + authority).contains(&index);
                    if rtype == TYPE_SOA && in_authority && rdata.len() >= 4 {
                        let tail = &rdata[rdata.len() - 4..];
                        let minimum = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
                        negative = Some((at + 4, ttl.min(minimum)));
                    }
                }
            }
            at += 10 + rdata_len;
        }
        if at != reply.len() {
            return None;
        }
        let mut kept = reply.get(..opt_at.unwrap_or(reply.len()))?.to_vec();
        if opt_at.is_some() {
            kept[10..12].copy_from_slice(&u16::try_from(additional - 1).ok()?.to_be_bytes());
        }
        let lifetime = if rcode == RCODE_NXDOMAIN || answers == 0 {
            let (soa_ttl_at, negative_ttl) = negative?;
            // The SOA says how long the answer lasts (RFC 2308 5), and counts down.
            kept[soa_ttl_at..soa_ttl_at + 4].copy_from_slice(&negative_ttl.to_be_bytes());
            shortest.min(negative_ttl)
        } else {
            shortest
        };
        if lifetime == 0 {
            return None;
        }
        Some(Entry {
            reply: kept.into_boxed_slice(),
            ttl_at: ttl_at.into_boxed_slice(),
            stored: now,
            lifetime: Duration::from_secs(u64::from(lifetime)),
        })
    }
}

/// The offset just past the name at `at` in `message`: its labels up to the root, or a
/// compression pointer.
pub(super) fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let label = *message.get(at)?;
        match label {
            0 => return Some(at + 1),
            0xc0..=0xff => {
                message.get(at + 1)?;
                return Some(at + 2);
            }
            1..=63 => at += 1 + usize::from(label),
            // Extended label types (RFC 6891 deprecated them).
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use rand::{Rng, SeedableRng};

    use super::*;

    /// An OPT record without options: root name, type, size, flags, no data.
    const OPT_LEN: usize = 11;

    fn name(text: &str) -> Name {
        Name::from_ascii(text).expect("name")
    }

    fn query(id: u16, qname: &str, edns: Option<bool>) -> Message {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name(qname), RecordType::A));
        if let Some(dnssec_ok) = edns {
            let mut options = Edns::new();
            options.set_max_payload(1232);
            options.set_dnssec_ok(dnssec_ok);
            message.set_edns(options);
        }
        message
    }

    fn bytes(message: &Message) -> Vec<u8> {
        message.to_vec().expect("encode")
    }

    /// The upstream's reply to `asked`: an A record with `ttl` (none if `ttl` is
    /// `None`) and, in the authority section, an SOA with TTL `soa.0`, minimum `soa.1`.
    fn reply(asked: &Message, ttl: Option<u32>, soa: Option<(u32, u32)>) -> Vec<u8> {
        let mut message = Message::new(asked.metadata.id, MessageType::Response, OpCode::Query);
        message.metadata.recursion_desired = asked.metadata.recursion_desired;
        message.metadata.recursion_available = true;
        message.metadata.authoritative = true;
        message.metadata.checking_disabled = asked.metadata.checking_disabled;
        let qname = asked.queries[0].name().clone();
        message.add_query(asked.queries[0].clone());
        if let Some(ttl) = ttl {
            let address = RData::A(A(Ipv4Addr::new(192, 0, 2, 7)));
            message.add_answer(Record::from_rdata(qname, ttl, address));
        }
        if let Some((soa_ttl, minimum)) = soa {
            let soa = SOA::new(
                name("ns.example."),
                name("admin.example."),
                1,
                60,
                60,
                600,
                minimum,
            );
            message.add_authority(Record::from_rdata(
                name("example."),
                soa_ttl,
                RData::SOA(soa),
            ));
        }
        if let Some(edns) = &asked.edns {
            let mut options = Edns::new();
            options.set_max_payload(4096);
            options.set_dnssec_ok(edns.flags().dnssec_ok);
            message.set_edns(options);
        }
        bytes(&message)
    }

    fn decode(reply: &[u8]) -> Message {
        Message::from_vec(reply).expect("a kept reply decodes")
    }

    #[test]
    fn a_hit_takes_the_asker_s_id_and_case_and_counts_its_ttl_down() {
        let mut cache = AnswerCache::default();
        let first = query(1, "www.Example.", None);
        let t0 = Instant::now();
        cache.store(&bytes(&first), &reply(&first, Some(300), None), t0);
        let again = query(2, "WWW.example.", None);
        let mut out = Vec::new();
        assert!(cache.lookup(&bytes(&again), t0 + Duration::from_secs(100), &mut out));
        let hit = decode(&out);
        assert_eq!(hit.metadata.id, 2);
        assert!(!hit.metadata.authoritative);
        assert_eq!(hit.queries[0].name().to_ascii(), "WWW.example.");
        assert_eq!(hit.answers[0].ttl, 200);
        assert!(!cache.lookup(&bytes(&again), t0 + Duration::from_secs(300), &mut out));
        assert!(out.is_empty());
        assert!(cache.is_empty(), "an expired reply is let go");
    }

    #[test]
    fn negative_replies_last_as_their_soa_says_and_not_without_one() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let asked = query(1, "gone.example.", None);
        let mut nxdomain = decode(&reply(&asked, None, Some((3600, 60))));
        nxdomain.metadata.response_code = ResponseCode::NXDomain;
        cache.store(&bytes(&asked), &bytes(&nxdomain), t0);
        assert!(cache.lookup(&bytes(&asked), t0 + Duration::from_secs(59), &mut out));
        assert_eq!(decode(&out).metadata.response_code, ResponseCode::NXDomain);
        // The SOA carries the answer's own lifetime, min(TTL, minimum) (RFC 2308 5).
        assert_eq!(decode(&out).authorities[0].ttl, 60 - 59);
        assert!(!cache.lookup(&bytes(&asked), t0 + Duration::from_secs(60), &mut out));

        let asked = query(1, "nodata.example.", None);
        cache.store(&bytes(&asked), &reply(&asked, None, Some((30, 600))), t0);
        assert!(cache.lookup(&bytes(&asked), t0 + Duration::from_secs(29), &mut out));
        assert!(!cache.lookup(&bytes(&asked), t0 + Duration::from_secs(30), &mut out));

        let asked = query(1, "nosoa.example.", None);
        cache.store(&bytes(&asked), &reply(&asked, None, None), t0);
        assert!(cache.is_empty(), "a negative reply without an SOA was kept");
    }

    #[test]
    fn failures_truncated_and_zero_ttl_replies_are_not_kept() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let asked = query(1, "www.example.", None);
        let asked_bytes = bytes(&asked);
        let good = reply(&asked, Some(300), None);
        for rcode in [
            ResponseCode::ServFail,
            ResponseCode::Refused,
            ResponseCode::FormErr,
        ] {
            let mut failed = decode(&good);
            failed.metadata.response_code = rcode;
            cache.store(&asked_bytes, &bytes(&failed), t0);
        }
        let mut truncated = good.clone();
        truncated[2] |= 0x02;
        cache.store(&asked_bytes, &truncated, t0);
        cache.store(&asked_bytes, &reply(&asked, Some(0), None), t0);
        // A record the counts do not account for, or a count with no record.
        let mut trailing = good.clone();
        trailing.push(0);
        cache.store(&asked_bytes, &trailing, t0);
        let mut short = good.clone();
        short[7] += 1;
        cache.store(&asked_bytes, &short, t0);
        assert!(cache.is_empty());
        cache.store(&asked_bytes, &good, t0);
        assert_eq!(cache.len(), 1);
        // A newer reply that may not be kept still lets go of the older one (a forged
        // answer would otherwise outlive the upstream's real, TTL 0 one).
        cache.store(&asked_bytes, &reply(&asked, Some(0), None), t0);
        assert!(cache.is_empty(), "an outdated reply was kept");
    }

    #[test]
    fn the_opt_record_is_taken_off_and_edns_dnssec_and_cd_are_told_apart() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let with_do = query(1, "www.example.", Some(true));
        cache.store(&bytes(&with_do), &reply(&with_do, Some(300), None), t0);
        assert!(cache.lookup(&bytes(&with_do), t0, &mut out));
        let hit = decode(&out);
        assert!(hit.edns.is_none(), "the upstream's OPT record was kept");
        assert_eq!(hit.additionals.len(), 0);
        for other in [
            query(1, "www.example.", Some(false)),
            query(1, "www.example.", None),
            {
                let mut rd0 = query(1, "www.example.", Some(true));
                rd0.metadata.recursion_desired = false;
                rd0
            },
            {
                let mut cd = query(1, "www.example.", Some(true));
                cd.metadata.checking_disabled = true;
                cd
            },
            {
                let mut ad = query(1, "www.example.", Some(true));
                ad.metadata.authentic_data = true;
                ad
            },
        ] {
            assert!(!cache.lookup(&bytes(&other), t0, &mut out), "{other:?}");
        }
        // An OPT record with records after it is not taken apart.
        let asked = query(1, "late.example.", Some(false));
        let mut upstream = decode(&reply(&asked, Some(300), None));
        // Without the extra record: header, question, answer, then the OPT record.
        let before_extra = bytes(&upstream).len() - OPT_LEN;
        let extra = Record::from_rdata(name("ns.example."), 60, RData::A(A(Ipv4Addr::LOCALHOST)));
        upstream.add_additional(extra);
        let encoded = bytes(&upstream);
        let opt_at = encoded.len() - OPT_LEN;
        let mut opt_first = encoded[..before_extra].to_vec();
        opt_first.extend_from_slice(&encoded[opt_at..]);
        opt_first.extend_from_slice(&encoded[before_extra..opt_at]);
        let reordered = decode(&opt_first);
        assert_eq!(
            (reordered.additionals.len(), reordered.edns.is_some()),
            (1, true)
        );
        cache.store(&bytes(&asked), &opt_first, t0);
        assert!(!cache.lookup(&bytes(&asked), t0, &mut out));
        cache.store(&bytes(&asked), &encoded, t0);
        assert!(
            cache.lookup(&bytes(&asked), t0, &mut out),
            "an OPT record last is taken off"
        );
        assert_eq!(decode(&out).additionals.len(), 1);
    }

    /// Only plain queries share replies: a Client Subnet option, a second question or
    /// an OPT record where it does not belong keep a query out of the cache.
    #[test]
    fn only_plain_queries_share_replies() {
        let t0 = Instant::now();
        let plain = query(1, "www.example.", Some(false));
        let mut ecs = plain.clone();
        let mut options = Edns::new();
        options.set_max_payload(1232);
        options
            .options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                OPTION_CLIENT_SUBNET,
                vec![0, 1, 24, 0, 192, 0, 2],
            ));
        ecs.set_edns(options);
        let ecs_bytes = bytes(&ecs);
        let mut cache = AnswerCache::default();
        cache.store(&ecs_bytes, &reply(&plain, Some(300), None), t0);
        assert!(cache.is_empty(), "a reply for one client subnet was kept");
        cache.store(&bytes(&plain), &reply(&plain, Some(300), None), t0);
        let mut out = Vec::new();
        assert!(
            !cache.lookup(&ecs_bytes, t0, &mut out),
            "a subnet's query took a kept reply"
        );
        // Bytes after the question, or an answer record in a query.
        let mut odd = bytes(&query(1, "www.example.", None));
        odd.push(0);
        assert!(Key::of(&odd).is_none());
        let mut answering = bytes(&query(1, "www.example.", None));
        answering[7] = 1;
        assert!(Key::of(&answering).is_none());
    }

    /// RFC 2181 8: a TTL with its top bit set is 0, so such a reply is not kept.
    #[test]
    fn ttls_with_the_top_bit_set_are_zero() {
        let mut cache = AnswerCache::default();
        let asked = query(1, "www.example.", None);
        cache.store(
            &bytes(&asked),
            &reply(&asked, Some(0x8000_0000), None),
            Instant::now(),
        );
        assert!(cache.is_empty());
    }

    /// What a cache holds counts against every cache's budget until it goes, and a
    /// reply that would take the total over [`MAX_TOTAL_BYTES`] is not kept.
    #[test]
    fn every_cache_s_bytes_count_towards_the_total_until_dropped() {
        static TOTAL: AtomicUsize = AtomicUsize::new(0);
        let t0 = Instant::now();
        let asked = query(1, "counted.example.", None);
        let mut cache = AnswerCache {
            entries: HashMap::new(),
            bytes: 0,
            total: &TOTAL,
            max_entries: MAX_ENTRIES,
        };
        cache.store(&bytes(&asked), &reply(&asked, Some(300), None), t0);
        assert!(cache.bytes > 0);
        assert_eq!(TOTAL.load(Ordering::Relaxed), cache.bytes);
        // Expired, it gives its bytes back when purged.
        cache.purge_expired(t0 + Duration::from_secs(300));
        assert_eq!((cache.len(), TOTAL.load(Ordering::Relaxed)), (0, 0));
        cache.store(&bytes(&asked), &reply(&asked, Some(300), None), t0);
        // Other networks' caches hold all but a few bytes.
        let others = MAX_TOTAL_BYTES - cache.bytes - 10;
        TOTAL.fetch_add(others, Ordering::Relaxed);
        let other = query(1, "other.example.", None);
        cache.store(&bytes(&other), &reply(&other, Some(300), None), t0);
        assert_eq!(cache.len(), 1, "kept beyond every cache's budget");
        TOTAL.fetch_sub(others, Ordering::Relaxed);
        drop(cache);
        assert_eq!(TOTAL.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn it_keeps_at_most_max_entries_and_lets_the_soonest_to_expire_go_first() {
        let mut cache = AnswerCache::default();
        let t0 = Instant::now();
        for at in 0..MAX_ENTRIES + 10 {
            let asked = query(1, &format!("n{at}.example."), None);
            let ttl = if at == 0 {
                10
            } else {
                1000 + u32::try_from(at).expect("small")
            };
            cache.store(&bytes(&asked), &reply(&asked, Some(ttl), None), t0);
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let mut out = Vec::new();
        assert!(!cache.lookup(&bytes(&query(1, "n0.example.", None)), t0, &mut out));
        assert!(!cache.lookup(&bytes(&query(1, "n1.example.", None)), t0, &mut out));
        let newest = format!("n{}.example.", MAX_ENTRIES + 9);
        assert!(cache.lookup(&bytes(&query(1, &newest, None)), t0, &mut out));
        assert!(cache.bytes <= MAX_BYTES);
        assert_eq!(
            cache.bytes,
            cache.entries.values().map(|(_, cost)| cost).sum::<usize>()
        );
    }

    #[test]
    fn mutated_replies_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x0ca0_c4e5);
        // The query the fuzz target's replies answer.
        let asked = Message::from_vec(crate::dns::fuzzing::KEPT_QUERY).expect("decode");
        let asked_bytes = bytes(&asked);
        assert_eq!(asked_bytes, crate::dns::fuzzing::KEPT_QUERY);
        let good = reply(&asked, Some(300), Some((300, 300)));
        let config = crate::dns::DnsConfig {
            network: "fuzz".into(),
            forward_plain_names: true,
            default_upstreams: vec!["10.0.0.53:53".parse().expect("address")],
            ..crate::dns::DnsConfig::default()
        };
        let mut kept = 0;
        let t0 = Instant::now();
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let mut mutated = good.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..mutated.len());
                mutated[at] = rng.random();
            }
            mutated.truncate(rng.random_range(0..=mutated.len()));
            let mut cache = AnswerCache::default();
            cache.store(&asked_bytes, &mutated, t0);
            if cache.lookup(&asked_bytes, t0 + Duration::from_secs(1), &mut out) {
                assert!(out.len() >= HEADER_LEN);
                kept += 1;
            }
            let resolver = crate::dns::Resolver::new(&config, None).expect("resolver");
            if let Err(broken) = crate::dns::fuzzing::check_kept_reply(&resolver, &mutated) {
                panic!("{broken}");
            }
        }
        assert!(
            kept > 100,
            "too few mutated replies kept ({kept}) to test much"
        );
    }
}
