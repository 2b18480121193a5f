//! `log-queries`: each query a network's DNS server receives, over UDP or TCP, and what
//! became of it, logged at INFO in dnsmasq's words:
//!
//! ```text
//! query[A] web1.example.test from 192.168.122.5
//! DHCP web1.example.test is 192.168.122.5
//! query[AAAA] www.example.com from 192.168.122.5
//! forwarded www.example.com to 10.0.0.1
//! reply www.example.com is 2001:db8::1
//! ```
//!
//! `config` (the network's records, the hosts file, `address=`), `DHCP` (a lease's
//! name), `cached` or `reply` (an upstream's) says where an answer came from;
//! `log-queries=extra` starts each line with the query's serial number and its client's
//! address and port. The server asks [`QueryLog::query`] only on a network that has it
//! on, so others format nothing; one that has it logs at most [`QUERIES_PER_SECOND`]
//! queries a second (a debug aid must not cost a flooded network its answers), and says
//! how many it left out.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, RecordType};

use super::resolver::HEADER_LEN;
use crate::debug_log::LogBudget;
use crate::service::{lock, unix_now};
use crate::xml::QueryLogging;

/// The longest name a question holds on the wire, its final zero-length label aside
/// (RFC 1035 2.3.4: 255 with it).
const MAX_NAME_WIRE_LEN: usize = 254;
/// Most queries of one network logged a second.
pub(super) const QUERIES_PER_SECOND: u32 = 200;
/// Most records of one answer logged, a line each.
const MAX_RECORD_LINES: usize = 8;

/// Where an answer came from, as dnsmasq names it in its lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The network's own records, the hosts file or `address=`.
    Config,
    /// The name of a DHCP lease.
    Dhcp,
    /// An upstream's answer, kept.
    Cached,
    /// An upstream's answer, just in.
    Reply,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Dhcp => "DHCP",
            Source::Cached => "cached",
            Source::Reply => "reply",
        }
    }
}

/// A query being logged: what ties the lines about its answer to it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Logged {
    serial: u32,
    client: SocketAddr,
}

/// The query log of one network with `log-queries`.
#[derive(Debug)]
pub(super) struct QueryLog {
    network: String,
    extra: bool,
    /// Shared with the log of the records this network's DNS answered with before: a
    /// `net-update` goes on counting, as dnsmasq numbers queries for its whole run.
    counts: Arc<Counts>,
}

/// What a network's query log counts.
#[derive(Debug)]
struct Counts {
    budget: Mutex<LogBudget>,
    serial: AtomicU32,
}

impl QueryLog {
    pub(super) fn new(network: &str, logging: QueryLogging) -> QueryLog {
        QueryLog {
            network: network.to_owned(),
            extra: logging == QueryLogging::Extra,
            counts: Arc::new(Counts {
                budget: Mutex::new(LogBudget::per_second(QUERIES_PER_SECOND)),
                serial: AtomicU32::new(0),
            }),
        }
    }

    /// Goes on with `earlier`'s serial numbers and budget: this log replaces it.
    pub(super) fn continue_from(&mut self, earlier: &QueryLog) {
        self.counts = Arc::clone(&earlier.counts);
    }

    /// Logs `query` from `client`, if it is a query and the budget allows; returns what
    /// the lines about its answer are logged with.
    pub(super) fn query(&self, query: &[u8], client: SocketAddr) -> Option<Logged> {
        // The budget before any formatting (a flood of queries past it costs nothing),
        // and after the check that it is a question to log (junk does not spend it).
        let qtype = question_type(query)?;
        let skipped = lock(&self.counts.budget).take(unix_now())?;
        let name = question_name(query);
        if skipped > 0 {
            tracing::info!(network = %self.network, "{skipped} DNS queries not logged: at most {QUERIES_PER_SECOND} a second are");
        }
        let serial = self
            .counts
            .serial
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let logged = Logged { serial, client };
        self.write(
            logged,
            &format!("query[{}] {name} from {}", type_text(qtype), client.ip()),
        );
        Some(logged)
    }

    /// Logs `reply`, the answer to `query` from `source`.
    pub(super) fn answered(&self, logged: Logged, source: Source, query: &[u8], reply: &[u8]) {
        for line in answer_lines(source, query, reply) {
            self.write(logged, &line);
        }
    }

    /// Logs that `query` was sent to `server`.
    pub(super) fn forwarded(&self, logged: Logged, query: &[u8], server: SocketAddr) {
        if let Some((name, _)) = question(query) {
            self.write(logged, &format!("forwarded {name} to {}", server.ip()));
        }
    }

    /// Logs what became of `query`, which no upstream answered: `line` of its name.
    pub(super) fn unanswered(
        &self,
        logged: Logged,
        query: &[u8],
        line: impl FnOnce(&str) -> String,
    ) {
        if let Some((name, _)) = question(query) {
            self.write(logged, &line(&name));
        }
    }

    fn write(&self, logged: Logged, line: &str) {
        if self.extra {
            let client = logged.client;
            tracing::info!(network = %self.network, "{} {}/{} {line}", logged.serial, client.ip(), client.port());
        } else {
            tracing::info!(network = %self.network, "{line}");
        }
    }
}

/// The name (as the client wrote it, made safe to print) and type a query asks for;
/// `None` for a response or a message without one readable question.
fn question(query: &[u8]) -> Option<(String, u16)> {
    let qtype = question_type(query)?;
    Some((question_name(query), qtype))
}

/// The name of the question of `query`, which [`question_type`] found readable, as
/// [`question`] gives it.
fn question_name(query: &[u8]) -> String {
    let mut name = String::new();
    let mut at = HEADER_LEN;
    while let Some(&len) = query.get(at).filter(|&&len| len != 0) {
        let len = usize::from(len);
        if !name.is_empty() {
            name.push('.');
        }
        push_label(
            &mut name,
            query.get(at + 1..at + 1 + len).unwrap_or_default(),
        );
        at += 1 + len;
    }
    if name.is_empty() {
        name.push('.');
    }
    name
}

/// The type `query` asks for, if it is a query with one readable question: checked
/// without formatting anything, before the budget is spent on it.
fn question_type(query: &[u8]) -> Option<u16> {
    let header = query.get(..HEADER_LEN)?;
    if header[2] & 0x80 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        // A compression pointer or an extended label: no question a resolver sends. A
        // name longer than DNS allows is no question either (and no log line of any
        // length: each byte may print as four).
        if len > 63 || at + 1 + len - HEADER_LEN > MAX_NAME_WIRE_LEN {
            return None;
        }
        at += 1 + len;
    }
    let qtype = query.get(at + 1..at + 3)?;
    Some(u16::from_be_bytes([qtype[0], qtype[1]]))
}

/// Appends `label` as DNS presentation text: a byte other than a letter, digit, `-`,
/// `_` or `*` is escaped (`\.`, `\\`, `\032`), so a guest's name cannot forge or break
/// a log line.
fn push_label(out: &mut String, label: &[u8]) {
    for &byte in label {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'*' => {
                out.push(char::from(byte));
            }
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            _ => {
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
}

/// `name` as [`question`] prints it: without the final dot, the root as `.`.
fn name_text(name: &Name) -> String {
    let mut text = String::new();
    for label in name.iter() {
        if !text.is_empty() {
            text.push('.');
        }
        push_label(&mut text, label);
    }
    if text.is_empty() {
        text.push('.');
    }
    text
}

/// A query type as dnsmasq prints it: its name, or `type=N`.
fn type_text(qtype: u16) -> String {
    match RecordType::from(qtype) {
        RecordType::Unknown(code) => format!("type={code}"),
        known => known.to_string(),
    }
}

/// What a record says, as dnsmasq prints it: an address or a name, else `<TYPE>`.
fn data_text(data: &RData) -> String {
    match data {
        RData::A(address) => address.0.to_string(),
        RData::AAAA(address) => address.0.to_string(),
        RData::PTR(name) => name_text(&name.0),
        other => format!("<{}>", type_text(other.record_type().into())),
    }
}

/// The lines of `reply`, the answer to `query` from `source`: a record a line (at most
/// [`MAX_RECORD_LINES`]), else why there is none (NXDOMAIN, NODATA, the error code).
fn answer_lines(source: Source, query: &[u8], reply: &[u8]) -> Vec<String> {
    let label = source.label();
    let Some((name, qtype)) = question(query) else {
        return Vec::new();
    };
    let Some(&[flags, code]) = reply.get(2..4) else {
        return Vec::new();
    };
    let said = |what: &str| vec![format!("{label} {name} is {what}")];
    match code & 0x0f {
        0 => {}
        1 => return said("FORMERR"),
        2 => return said("SERVFAIL"),
        3 => return said("NXDOMAIN"),
        4 => return said("NOTIMP"),
        5 => return said("REFUSED"),
        other => return said(&format!("rcode {other}")),
    }
    let Ok(message) = Message::from_vec(reply) else {
        return said("an unreadable reply");
    };
    if message.answers.is_empty() {
        return match RecordType::from(qtype) {
            _ if flags & 0x02 != 0 => said("truncated"),
            RecordType::A => said("NODATA-IPv4"),
            RecordType::AAAA => said("NODATA-IPv6"),
            _ => said("NODATA"),
        };
    }
    let mut lines: Vec<String> = message
        .answers
        .iter()
        .take(MAX_RECORD_LINES)
        .map(|record| {
            format!(
                "{label} {} is {}",
                owner_text(record),
                data_text(&record.data)
            )
        })
        .collect();
    if let Some(more) = message.answers.len().checked_sub(MAX_RECORD_LINES)
        && more > 0
    {
        lines.push(format!("{label} {name}: {more} more records"));
    }
    lines
}

/// A record's owner as dnsmasq prints it: a PTR record's reverse name as the address it
/// stands for (`192.168.122.5`, not `5.122.168.192.in-addr.arpa`), so that grepping
/// the log for a guest's address finds its reverse lookups.
fn owner_text(record: &hickory_proto::rr::Record) -> String {
    if let RData::PTR(_) = &record.data
        && let Ok(net) = record.name.parse_arpa_name()
        && net.prefix_len() == net.max_prefix_len()
    {
        return net.addr().to_string();
    }
    name_text(&record.name)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Record, rdata};

    use super::*;

    /// A query for a name of `labels` labels of 63 bytes of 0x01 each.
    fn long_query(labels: usize) -> Vec<u8> {
        let mut query = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..labels {
            query.push(63);
            query.extend_from_slice(&[1u8; 63]);
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        query
    }

    /// A log that replaces another (a net-update's new records) goes on with its serial
    /// numbers, so that `extra` never gives two queries one number.
    #[test]
    fn a_replacing_log_goes_on_counting() {
        let client: SocketAddr = "192.0.2.5:5353".parse().expect("address");
        let query = ask("a.test.", RecordType::A);
        let earlier = QueryLog::new("n", QueryLogging::Extra);
        let first = crate::debug_log::captured(|| {
            assert_eq!(earlier.query(&query, client).map(|l| l.serial), Some(1));
        });
        assert!(
            first.contains("1 192.0.2.5/5353 query[A] a.test"),
            "{first}"
        );
        let mut later = QueryLog::new("n", QueryLogging::Extra);
        later.continue_from(&earlier);
        crate::debug_log::captured(|| {
            assert_eq!(later.query(&query, client).map(|l| l.serial), Some(2));
        });
    }

    /// What is no question to log (a response, an overlong name) spends none of the
    /// budget: a guest's junk cannot hide the others' queries, nor the count of those
    /// left out.
    #[test]
    fn junk_spends_no_budget() {
        let client: SocketAddr = "192.0.2.5:5353".parse().expect("address");
        let log = QueryLog::new("n", QueryLogging::Plain);
        let query = ask("a.test.", RecordType::A);
        let mut response = query.clone();
        response[2] |= 0x80;
        crate::debug_log::captured(|| {
            for _ in 0..QUERIES_PER_SECOND {
                assert!(log.query(&response, client).is_none());
                assert!(log.query(&long_query(5), client).is_none());
            }
            assert!(log.query(&query, client).is_some());
        });
    }

    /// A name longer than DNS allows (a TCP query may carry 64 KiB of labels) is no
    /// question to log: a guest cannot make a line of any length, every byte of which
    /// prints as four.
    #[test]
    fn a_name_longer_than_dns_allows_is_not_logged() {
        assert_eq!(question(&long_query(1000)), None);
        assert_eq!(question(&long_query(5)), None, "320 bytes");
        // Three 63-byte labels and one of `last` bytes: 254 bytes on the wire with 61,
        // the most there is, and one too many with 62.
        let with_last = |last: u8| {
            let mut query = long_query(3);
            query.truncate(query.len() - 5);
            query.push(last);
            query.extend(std::iter::repeat_n(1u8, usize::from(last)));
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            query
        };
        let (name, qtype) = question(&with_last(61)).expect("the longest name");
        assert_eq!(qtype, 1);
        assert_eq!(name.len(), 4 * 250 + 3);
        assert_eq!(question(&with_last(62)), None);
    }

    fn ask(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        message.to_vec().expect("encode")
    }

    fn answer(query: &[u8], code: ResponseCode, records: Vec<Record>) -> Vec<u8> {
        let mut reply = Message::from_vec(query).expect("query");
        reply.metadata.message_type = MessageType::Response;
        reply.metadata.response_code = code;
        reply.answers = records;
        reply.to_vec().expect("encode")
    }

    fn record(name: &str, data: RData) -> Record {
        Record::from_rdata(Name::from_ascii(name).expect("name"), 0, data)
    }

    #[test]
    fn the_question_is_printed_as_asked_and_safe() {
        let query = ask("Web1.Example.test.", RecordType::A);
        assert_eq!(question(&query), Some(("Web1.Example.test".into(), 1)));
        assert_eq!(question(&ask(".", RecordType::NS)), Some((".".into(), 2)));
        // A label holding a newline or a dot cannot start a line of its own.
        let mut forged = query[..HEADER_LEN].to_vec();
        forged.extend_from_slice(b"\x05a\nb.c\x01x\x00\x00\x01\x00\x01");
        assert_eq!(question(&forged), Some(("a\\010b\\.c.x".into(), 1)));
        let mut response = query.clone();
        response[2] |= 0x80;
        assert_eq!(question(&response), None);
        assert_eq!(question(&query[..query.len() - 3]), None);
        assert_eq!(type_text(28), "AAAA");
        assert_eq!(type_text(65), "HTTPS");
        assert_eq!(type_text(65000), "type=65000");
    }

    /// Reverse lookups' answers name the address, as dnsmasq's do.
    #[test]
    fn a_reverse_answer_names_the_address() {
        let query = ask("5.122.168.192.in-addr.arpa.", RecordType::PTR);
        let web1 = || {
            RData::PTR(rdata::PTR(
                Name::from_ascii("web1.lab.test.").expect("name"),
            ))
        };
        let reply = answer(
            &query,
            ResponseCode::NoError,
            vec![record("5.122.168.192.in-addr.arpa.", web1())],
        );
        assert_eq!(
            answer_lines(Source::Dhcp, &query, &reply),
            ["DHCP 192.168.122.5 is web1.lab.test"]
        );
        // Not a whole address (a zone's own PTR): its name as it is.
        let query = ask("122.168.192.in-addr.arpa.", RecordType::PTR);
        let reply = answer(
            &query,
            ResponseCode::NoError,
            vec![record("122.168.192.in-addr.arpa.", web1())],
        );
        assert_eq!(
            answer_lines(Source::Config, &query, &reply),
            ["config 122.168.192.in-addr.arpa is web1.lab.test"]
        );
    }

    #[test]
    fn answers_are_a_line_a_record_or_why_there_is_none() {
        let query = ask("www.example.com.", RecordType::A);
        let reply = answer(
            &query,
            ResponseCode::NoError,
            vec![
                record(
                    "www.example.com.",
                    RData::CNAME(rdata::CNAME(
                        Name::from_ascii("cdn.example.net.").expect("name"),
                    )),
                ),
                record(
                    "cdn.example.net.",
                    RData::A(Ipv4Addr::new(192, 0, 2, 7).into()),
                ),
            ],
        );
        assert_eq!(
            answer_lines(Source::Reply, &query, &reply),
            [
                "reply www.example.com is <CNAME>",
                "reply cdn.example.net is 192.0.2.7"
            ]
        );
        let v6 = ask("web1.example.test.", RecordType::AAAA);
        let reply = answer(
            &v6,
            ResponseCode::NoError,
            vec![record(
                "web1.example.test.",
                RData::AAAA(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5).into()),
            )],
        );
        assert_eq!(
            answer_lines(Source::Dhcp, &v6, &reply),
            ["DHCP web1.example.test is fd00::5"]
        );
        let ptr = ask("5.122.168.192.in-addr.arpa.", RecordType::PTR);
        let reply = answer(
            &ptr,
            ResponseCode::NoError,
            vec![record(
                "5.122.168.192.in-addr.arpa.",
                RData::PTR(rdata::PTR(
                    Name::from_ascii("web1.example.test.").expect("name"),
                )),
            )],
        );
        assert_eq!(
            answer_lines(Source::Cached, &ptr, &reply),
            ["cached 192.168.122.5 is web1.example.test"]
        );
        for (code, qtype, line) in [
            (
                ResponseCode::NXDomain,
                RecordType::A,
                "config www.example.com is NXDOMAIN",
            ),
            (
                ResponseCode::NoError,
                RecordType::A,
                "config www.example.com is NODATA-IPv4",
            ),
            (
                ResponseCode::NoError,
                RecordType::AAAA,
                "config www.example.com is NODATA-IPv6",
            ),
            (
                ResponseCode::NoError,
                RecordType::MX,
                "config www.example.com is NODATA",
            ),
            (
                ResponseCode::Refused,
                RecordType::A,
                "config www.example.com is REFUSED",
            ),
            (
                ResponseCode::ServFail,
                RecordType::A,
                "config www.example.com is SERVFAIL",
            ),
        ] {
            let query = ask("www.example.com.", qtype);
            assert_eq!(
                answer_lines(Source::Config, &query, &answer(&query, code, Vec::new())),
                [line]
            );
        }
        let many: Vec<Record> = (1..=10)
            .map(|n| record("many.test.", RData::A(Ipv4Addr::new(10, 0, 0, n).into())))
            .collect();
        let query = ask("many.test.", RecordType::A);
        let lines = answer_lines(
            Source::Reply,
            &query,
            &answer(&query, ResponseCode::NoError, many),
        );
        assert_eq!(lines.len(), MAX_RECORD_LINES + 1);
        assert_eq!(lines[MAX_RECORD_LINES], "reply many.test: 2 more records");
    }
}
