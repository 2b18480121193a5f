//! The oracles of the `dns_packet` fuzz target, shared with the resolver's seeded
//! mutation test so both check the same properties.

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query};
use hickory_proto::rr::DNSClass;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable};

use super::resolver::{MAX_UDP_PAYLOAD, Outcome, Resolver, Transport};

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
