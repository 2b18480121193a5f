//! `log-dhcp` for DHCPv6: each message a network's server receives, and its reply,
//! logged at INFO in dnsmasq's words, the client known by its DUID (the transaction ID
//! is the `xid` field):
//!
//! ```text
//! DHCPSOLICIT(virbr0) 00:03:00:01:52:54:00:12:34:56
//! DHCPADVERTISE(virbr0) fd00::5 00:03:00:01:52:54:00:12:34:56 web1
//! DHCPREPLY(virbr0) 00:03:00:01:52:54:00:12:34:56 no addresses available
//! ```
//!
//! A reply gives a line per address it hands out, else its status message; a message
//! left unanswered says why. At most [`MESSAGES_PER_SECOND`] messages a second are
//! logged, a budget of DHCPv6's own beside DHCPv4's.

use dhcproto::v6::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder};

use super::engine::{Reply, client_fqdn_label, ia_addresses, ia_nas};
use crate::debug_log::LogBudget;

/// Most messages of one network logged a second.
pub(super) const MESSAGES_PER_SECOND: u32 = 100;

/// What the engine made of one message, for its lines.
#[derive(Debug)]
pub(super) struct Exchange<'a> {
    /// The bridge, as dnsmasq names the interface in each line.
    pub interface: &'a str,
    pub request: &'a Message,
    /// The reply, or why there is none.
    pub outcome: Result<&'a Reply, &'a str>,
}

/// Logs `exchange` of network `network` at Unix time `now`, within `budget`.
pub(super) fn write(network: &str, budget: &mut LogBudget, now: i64, exchange: &Exchange<'_>) {
    let [high, middle, low] = exchange.request.xid();
    let xid = u32::from_be_bytes([0, high, middle, low]);
    crate::debug_log::log_message(network, budget, now, "DHCPv6", xid, || lines(exchange));
}

/// The most of a DUID a line shows: the longest a valid one is.
const MAX_DUID_SHOWN: usize = 130;

/// The lines of `exchange`: the message, then the reply's addresses or status.
pub(super) fn lines(exchange: &Exchange<'_>) -> Vec<String> {
    let request = exchange.request;
    // A DUID is at most 130 bytes (RFC 8415 11.1); one the engine refuses as longer is
    // shown cut, so a client cannot make a line of any length.
    let duid = match request.opts().get(OptionCode::ClientId) {
        Some(DhcpOption::ClientId(duid)) if duid.len() > MAX_DUID_SHOWN => format!(
            "{}... ({} bytes)",
            crate::dhcp::format_mac(&duid[..MAX_DUID_SHOWN]),
            duid.len()
        ),
        Some(DhcpOption::ClientId(duid)) => crate::dhcp::format_mac(duid),
        _ => "-".to_owned(),
    };
    let line = |kind: MessageType, address: Option<String>, note: Option<&str>| {
        let mut line = format!("{}({}) ", kind_name(kind), exchange.interface);
        if let Some(address) = address {
            line.push_str(&address);
            line.push(' ');
        }
        line.push_str(&duid);
        if let Some(note) = note {
            line.push(' ');
            line.push_str(note);
        }
        line
    };
    let mut lines = vec![line(request.msg_type(), None, exchange.outcome.err())];
    let Ok(reply) = exchange.outcome else {
        return lines;
    };
    // Built by the engine: it decodes.
    let Ok(reply) = Message::decode(&mut Decoder::new(&reply.bytes)) else {
        return lines;
    };
    let name = client_fqdn_label(reply.opts());
    let addresses: Vec<String> = ia_nas(reply.opts())
        .flat_map(|ia| ia_addresses(&ia.opts))
        .map(|address| address.to_string())
        .collect();
    if addresses.is_empty() {
        let status = reply.opts().iter().find_map(|option| match option {
            DhcpOption::StatusCode(status) => Some(status.msg.clone()),
            DhcpOption::IANA(ia) => ia.opts.iter().find_map(|option| match option {
                DhcpOption::StatusCode(status) => Some(status.msg.clone()),
                _ => None,
            }),
            _ => None,
        });
        lines.push(line(reply.msg_type(), None, status.as_deref()));
    }
    for address in addresses {
        lines.push(line(reply.msg_type(), Some(address), name.as_deref()));
    }
    lines
}

/// A message type as dnsmasq names it.
fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Solicit => "DHCPSOLICIT",
        MessageType::Advertise => "DHCPADVERTISE",
        MessageType::Request => "DHCPREQUEST",
        MessageType::Confirm => "DHCPCONFIRM",
        MessageType::Renew => "DHCPRENEW",
        MessageType::Rebind => "DHCPREBIND",
        MessageType::Reply => "DHCPREPLY",
        MessageType::Release => "DHCPRELEASE",
        MessageType::Decline => "DHCPDECLINE",
        MessageType::InformationRequest => "DHCPINFORMATION-REQUEST",
        _ => "DHCPV6",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use dhcproto::v6::{DhcpOptions, IANA};
    use dhcproto::{Encodable, Encoder};

    use super::*;
    use crate::dhcp6::engine::Engine;

    const DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A client identifier longer than a DUID may be is shown cut, with its length.
    #[test]
    fn an_overlong_duid_is_shown_cut() {
        let mut request = Message::new_with_id(MessageType::Solicit, [1, 2, 3]);
        request
            .opts_mut()
            .insert(DhcpOption::ClientId(vec![0xab; 3800]));
        let lines = lines(&Exchange {
            interface: "virbr0",
            request: &request,
            outcome: Err("bad client identifier"),
        });
        assert!(
            lines[0].len() < 3 * MAX_DUID_SHOWN + 100,
            "{}",
            lines[0].len()
        );
        assert!(lines[0].contains("... (3800 bytes)"), "{}", lines[0]);
    }

    fn solicit() -> Message {
        let mut message = Message::new_with_id(MessageType::Solicit, [1, 2, 3]);
        let opts = message.opts_mut();
        opts.insert(DhcpOption::ClientId(DUID.to_vec()));
        opts.insert(DhcpOption::IANA(IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: DhcpOptions::new(),
        }));
        message
    }

    #[test]
    fn a_solicit_and_its_advertise_are_logged_as_dnsmasq_logs_them() {
        let mut engine = Engine::new(crate::dhcp6::engine::tests::config());
        let request = solicit();
        let mut bytes = Vec::new();
        request
            .encode(&mut Encoder::new(&mut bytes))
            .expect("encode");
        let source = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
        let reply = engine
            .handle(&bytes, source, 1_700_000_000)
            .expect("advertise");
        let lines = lines(&Exchange {
            interface: "virbr0",
            request: &request,
            outcome: Ok(&reply),
        });
        let duid = "00:03:00:01:52:54:00:12:34:56";
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0], format!("DHCPSOLICIT(virbr0) {duid}"));
        assert!(
            lines[1].starts_with("DHCPADVERTISE(virbr0) 2001:db8:ca2:2:")
                && lines[1].ends_with(&format!(" {duid}")),
            "{lines:?}"
        );
        assert_eq!(
            super::lines(&Exchange {
                interface: "virbr0",
                request: &request,
                outcome: Err("for another server"),
            }),
            [format!("DHCPSOLICIT(virbr0) {duid} for another server")]
        );
    }
}
