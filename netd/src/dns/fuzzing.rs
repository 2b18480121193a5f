//! The oracles of the `dns_packet` fuzz target, shared with the resolver's and the
//! cache's seeded mutation tests so both check the same properties.

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::DNSClass;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};

use super::resolver::{MAX_UDP_PAYLOAD, Outcome, Resolver, Transport, is_reply_to};

/// Answers `query` and checks the result: a reply decodes again with hickory-proto,
/// carries the query's ID and fits the largest UDP payload we send; no reply leaves
/// no bytes behind; and a query hickory-proto reads as one plain IN question is
/// answered or forwarded, never dropped, with that same question in the reply (so
/// the resolver's in-place parser agrees with hickory-proto's decoder). The error
/// names the broken property and the packet.
pub fn check_answer<'r>(
    resolver: &'r Resolver,
    query: &[u8],
    transport: Transport,
) -> Result<Outcome<'r>, String> {
    let mut out = Vec::new();
    let outcome = resolver.answer(query, transport, &mut out);
    let question = hickory_question(query);
    if question.is_some() && outcome == Outcome::Drop {
        return Err(format!("a plain query was dropped: {query:02x?}"));
    }
    if outcome != Outcome::Reply {
        return match out.is_empty() {
            true => Ok(outcome),
            false => Err(format!(
                "no reply, yet reply bytes written for {query:02x?}"
            )),
        };
    }
    let reply = Message::from_vec(&out)
        .map_err(|e| format!("the reply to {query:02x?} does not decode: {e}"))?;
    if query.get(..2) != Some(&reply.metadata.id.to_be_bytes()[..]) {
        return Err(format!("the reply to {query:02x?} has another ID"));
    }
    if let Some(question) = question
        && reply.queries != [question]
    {
        return Err(format!("the reply to {query:02x?} has another question"));
    }
    if transport == Transport::Udp && out.len() > usize::from(MAX_UDP_PAYLOAD) {
        return Err(format!("a {} byte UDP reply to {query:02x?}", out.len()));
    }
    Ok(outcome)
}

/// The query [`check_kept_reply`] takes replies for: a name forwarded upstream, with
/// EDNS, so that the kept reply goes through the OPT and UDP-size paths.
pub const KEPT_QUERY: &[u8] = &[
    0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1, // header: RD, one question, OPT
    3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'o', b'r', b'g', 0, 0, 1,
    0, 1, // A, IN
    0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0, // OPT: 4096 bytes, no options
];

/// Hands `reply` to `resolver` as an upstream's answer to a forwarded query and, if it
/// was kept, checks what the next client gets: the client's ID and question, our OPT
/// record last, no more than the largest UDP payload we send. The error names the
/// broken property and the packet.
pub fn check_kept_reply(resolver: &Resolver, reply: &[u8]) -> Result<(), String> {
    let mut out = Vec::new();
    if resolver.answer(KEPT_QUERY, Transport::Udp, &mut out) == Outcome::Reply {
        return Err("the kept-reply query is not forwarded".to_owned());
    }
    // As the server does: only a reply to the query is kept.
    if !is_reply_to(KEPT_QUERY, reply) {
        return Ok(());
    }
    resolver.remember(KEPT_QUERY, reply);
    let mut client = KEPT_QUERY.to_vec();
    client[..2].copy_from_slice(&[0xab, 0xcd]);
    client[13..16].copy_from_slice(b"WwW");
    if !resolver.cached_reply(&client, Transport::Udp, &mut out) {
        return Ok(());
    }
    let question_end = KEPT_QUERY.len() - 11;
    if out.get(..2) != Some(&client[..2])
        || out.get(12..question_end) != client.get(12..question_end)
    {
        return Err(format!(
            "the kept {reply:02x?} went out without the client's ID and question"
        ));
    }
    if out.len() > usize::from(MAX_UDP_PAYLOAD)
        || out
            .get(out.len().saturating_sub(11)..)
            .and_then(|opt| opt.get(..3))
            != Some(&[0, 0, 41][..])
    {
        return Err(format!("the kept {reply:02x?} went out as {out:02x?}"));
    }
    Ok(())
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
