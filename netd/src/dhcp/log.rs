//! `log-dhcp`: each DHCPv4 message a network's server receives, and its reply, logged
//! at INFO in the words of dnsmasq's `log-dhcp` (the transaction ID is the `xid` field,
//! where dnsmasq starts the line with it):
//!
//! ```text
//! client provides name: web1
//! DHCPDISCOVER(virbr0) 52:54:00:12:34:56
//! DHCPOFFER(virbr0) 192.168.122.5 52:54:00:12:34:56
//! requested options: 1:netmask, 3:router, 6:dns-server, 12:hostname, 15:domain-name
//! sent size:  1 option: 53 message-type  2
//! sent size:  4 option: 54 server-identifier  192.168.122.1
//! sent size:  4 option: 51 lease-time  1h
//! DHCPREQUEST(virbr0) 192.168.122.5 52:54:00:12:34:56
//! DHCPACK(virbr0) 192.168.122.5 52:54:00:12:34:56 web1
//! ```
//!
//! A message left unanswered says why (`DHCPDISCOVER(virbr0) 52:54:00:12:34:56 no
//! address available`), a NAK what it tells the client. The engine calls [`write`]
//! only on a network that has `log-dhcp` on; such a network logs at most
//! [`MESSAGES_PER_SECOND`] messages a second and says how many it left out.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use super::engine::{OPTIONS_OFFSET, Reply, option_runs, requested_ip};
use crate::debug_log::LogBudget;
use crate::xml::dnsmasq::dhcp_option_name;

/// Most messages of one network logged a second.
pub(super) const MESSAGES_PER_SECOND: u32 = 100;

/// What the engine made of one message, for its lines.
#[derive(Debug)]
pub(super) struct Exchange<'a> {
    /// The bridge, as dnsmasq names the interface in each line.
    pub interface: &'a str,
    pub request: &'a Message,
    pub kind: MessageType,
    /// The name the client gave, sanitised.
    pub client_name: Option<&'a str>,
    /// The reply, or why there is none (`None`: none is due, as for a RELEASE).
    pub outcome: Result<Option<&'a Reply>, &'a str>,
    /// The name the lease of an ACK's address goes by.
    pub lease_name: Option<&'a str>,
}

/// Logs `exchange` of network `network` at Unix time `now`, within `budget`.
pub(super) fn write(network: &str, budget: &mut LogBudget, now: i64, exchange: &Exchange<'_>) {
    let xid = exchange.request.xid();
    crate::debug_log::log_message(network, budget, now, "DHCP", xid, || lines(exchange));
}

/// The lines of `exchange`, in dnsmasq's order: the client's name, the message, the
/// reply, the options asked for and those sent.
pub(super) fn lines(exchange: &Exchange<'_>) -> Vec<String> {
    let request = exchange.request;
    let mac = super::format_mac(request.chaddr());
    let mut lines = Vec::new();
    if let Some(name) = exchange.client_name {
        lines.push(format!("client provides name: {name}"));
    }
    let address = match exchange.kind {
        MessageType::Discover | MessageType::Decline => requested_ip(request),
        MessageType::Request => requested_ip(request).or_else(|| given(request.ciaddr())),
        MessageType::Release | MessageType::Inform => given(request.ciaddr()),
        _ => None,
    };
    let why = exchange.outcome.err();
    lines.push(message_line(
        kind_name(exchange.kind),
        exchange.interface,
        address,
        &mac,
        why,
    ));
    let Ok(Some(reply)) = exchange.outcome else {
        return lines;
    };
    let options = option_runs(reply.bytes.get(OPTIONS_OFFSET..).unwrap_or_default());
    let option = |code: u8| {
        options
            .iter()
            .find(|(known, _)| *known == code)
            .map(|(_, data)| data.as_slice())
    };
    let kind = option(53)
        .and_then(|data| data.first())
        .map_or(MessageType::Unknown(0), |&kind| MessageType::from(kind));
    // An ACK to an INFORM gives no address: it answers the client's own (ciaddr).
    let header_address = |at: usize| {
        reply
            .bytes
            .get(at..at + 4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map(Ipv4Addr::from)
            .and_then(given)
    };
    let note = match kind {
        MessageType::Ack => exchange.lease_name.map(str::to_owned),
        // A NAK's message (option 56) tells why, in dnsmasq's words.
        _ => option(56).map(|text| String::from_utf8_lossy(text).into_owned()),
    };
    lines.push(message_line(
        kind_name(kind),
        exchange.interface,
        header_address(16)
            .or_else(|| header_address(12))
            .or(address),
        &mac,
        note.as_deref(),
    ));
    if let Some(DhcpOption::ParameterRequestList(asked)) =
        request.opts().get(OptionCode::ParameterRequestList)
    {
        let codes: Vec<u8> = asked.iter().map(|&code| u8::from(code)).collect();
        lines.push(format!("requested options: {}", option_list(&codes)));
    }
    // A line per option sent, with its value, as dnsmasq's log-dhcp writes them.
    lines.extend(options.iter().map(|(code, data)| sent_line(*code, data)));
    lines
}

/// `sent size:  4 option: 54 server-identifier  192.168.122.1`: an option sent, with
/// its value as dnsmasq's `log_options` shows it (addresses, times, numbers, text, else
/// hex bytes).
fn sent_line(code: u8, data: &[u8]) -> String {
    let name = dhcp_option_name(code).map_or_else(String::new, |name| format!(" {name}"));
    format!(
        "sent size:{:3} option:{code:3}{name}  {}",
        data.len(),
        option_value(code, data)
    )
}

/// Options whose value is IPv4 addresses (dnsmasq's `OT_ADDR_LIST`).
const ADDRESS_OPTIONS: &[u8] = &[
    1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 28, 32, 33, 41, 42, 44, 45, 48, 49, 54, 65, 68, 69, 70, 71,
    72, 73, 74, 75, 76, 150,
];
/// Options whose value is a time in seconds (`OT_TIME`).
const TIME_OPTIONS: &[u8] = &[51, 58, 59];
/// Options whose value is text (`OT_NAME`).
const TEXT_OPTIONS: &[u8] = &[12, 14, 15, 17, 18, 40, 47, 56, 60, 64, 66, 67];
/// The most bytes of a value shown in hex.
const MAX_HEX_SHOWN: usize = 32;

fn option_value(code: u8, data: &[u8]) -> String {
    if ADDRESS_OPTIONS.contains(&code) && !data.is_empty() && data.len().is_multiple_of(4) {
        return data
            .chunks_exact(4)
            .map(|quad| Ipv4Addr::new(quad[0], quad[1], quad[2], quad[3]).to_string())
            .collect::<Vec<_>>()
            .join(", ");
    }
    if let (true, Ok(seconds)) = (TIME_OPTIONS.contains(&code), <[u8; 4]>::try_from(data)) {
        return time_text(u32::from_be_bytes(seconds));
    }
    if TEXT_OPTIONS.contains(&code) {
        // Printable ASCII as it is, anything else escaped: no line of its own.
        return data
            .iter()
            .flat_map(|&byte| std::ascii::escape_default(byte))
            .map(char::from)
            .collect();
    }
    match data {
        [byte] => byte.to_string(),
        [high, low] => u16::from_be_bytes([*high, *low]).to_string(),
        _ => {
            let mut hex: Vec<String> = data
                .iter()
                .take(MAX_HEX_SHOWN)
                .map(|byte| format!("{byte:02x}"))
                .collect();
            if data.len() > MAX_HEX_SHOWN {
                hex.push("...".to_owned());
            }
            hex.join(":")
        }
    }
}

/// A time as dnsmasq's `prettyprint_time` writes it: `1h`, `52m30s`, `infinite`.
fn time_text(seconds: u32) -> String {
    if seconds == u32::MAX {
        return "infinite".to_owned();
    }
    let mut text = String::new();
    let mut left = seconds;
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60)] {
        if left >= size {
            text.push_str(&format!("{}{unit}", left / size));
            left %= size;
        }
    }
    if left > 0 || text.is_empty() {
        text.push_str(&format!("{left}s"));
    }
    text
}

/// `address`, unless it is `0.0.0.0` (none given).
fn given(address: Ipv4Addr) -> Option<Ipv4Addr> {
    (!address.is_unspecified()).then_some(address)
}

/// `DHCPKIND(interface) [address ]mac[ note]`, as dnsmasq's `log_packet` writes it.
fn message_line(
    kind: &str,
    interface: &str,
    address: Option<Ipv4Addr>,
    mac: &str,
    note: Option<&str>,
) -> String {
    let mut line = format!("{kind}({interface}) ");
    if let Some(address) = address {
        line.push_str(&format!("{address} "));
    }
    line.push_str(mac);
    if let Some(note) = note {
        line.push(' ');
        line.push_str(note);
    }
    line
}

/// A message type as dnsmasq names it.
fn kind_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Discover => "DHCPDISCOVER",
        MessageType::Offer => "DHCPOFFER",
        MessageType::Request => "DHCPREQUEST",
        MessageType::Decline => "DHCPDECLINE",
        MessageType::Ack => "DHCPACK",
        MessageType::Nak => "DHCPNAK",
        MessageType::Release => "DHCPRELEASE",
        MessageType::Inform => "DHCPINFORM",
        _ => "DHCP",
    }
}

/// `1:netmask, 3:router, 224`: each code with dnsmasq's name for it, if any.
fn option_list(codes: &[u8]) -> String {
    codes
        .iter()
        .map(|&code| match dhcp_option_name(code) {
            Some(name) => format!("{code}:{name}"),
            None => code.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    /// Values as dnsmasq's log shows them: addresses, times, text escaped, numbers, else
    /// hex bytes, cut.
    #[test]
    fn option_values_read_as_dnsmasqs() {
        assert_eq!(
            option_value(6, &[10, 0, 0, 1, 10, 0, 0, 2]),
            "10.0.0.1, 10.0.0.2"
        );
        assert_eq!(option_value(51, &3600u32.to_be_bytes()), "1h");
        assert_eq!(option_value(58, &3150u32.to_be_bytes()), "52m30s");
        assert_eq!(option_value(51, &u32::MAX.to_be_bytes()), "infinite");
        assert_eq!(option_value(15, b"lab.test"), "lab.test");
        assert_eq!(option_value(12, b"a\nb"), "a\\nb");
        assert_eq!(option_value(26, &9000u16.to_be_bytes()), "9000");
        assert_eq!(
            option_value(121, &[24, 10, 0, 0, 192, 168, 1, 1]),
            "18:0a:00:00:c0:a8:01:01"
        );
        assert!(option_value(43, &[7; 100]).ends_with(":07:..."));
        assert_eq!(time_text(0), "0s");
        assert_eq!(time_text(90_061), "1d1h1m1s");
        assert_eq!(
            sent_line(250, &[1]),
            "sent size:  1 option:250  1",
            "an option dnsmasq has no name for"
        );
    }

    use dhcproto::v4::{Flags, HType, Opcode};
    use dhcproto::{Encodable, Encoder};

    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn request(kind: MessageType, options: Vec<DhcpOption>) -> Message {
        let mut message = Message::default();
        message
            .set_opcode(Opcode::BootRequest)
            .set_htype(HType::Eth)
            .set_flags(Flags::default())
            .set_chaddr(&MAC);
        message.opts_mut().insert(DhcpOption::MessageType(kind));
        for option in options {
            message.opts_mut().insert(option);
        }
        message
    }

    fn reply(kind: MessageType, yiaddr: Ipv4Addr, options: Vec<DhcpOption>) -> Reply {
        let mut message = Message::default();
        message
            .set_opcode(Opcode::BootReply)
            .set_yiaddr(yiaddr)
            .set_chaddr(&MAC);
        message.opts_mut().insert(DhcpOption::MessageType(kind));
        for option in options {
            message.opts_mut().insert(option);
        }
        let mut bytes = Vec::new();
        message
            .encode(&mut Encoder::new(&mut bytes))
            .expect("encode");
        Reply {
            to: SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            bytes,
            needs_commit: false,
            renews: false,
            hardware: None,
        }
    }

    fn exchange<'a>(
        request: &'a Message,
        outcome: Result<Option<&'a Reply>, &'a str>,
        lease_name: Option<&'a str>,
    ) -> Vec<String> {
        lines(&Exchange {
            interface: "virbr0",
            request,
            kind: request.opts().msg_type().expect("type"),
            client_name: None,
            outcome,
            lease_name,
        })
    }

    fn option_codes(reply: &Reply) -> Vec<u8> {
        option_runs(&reply.bytes[OPTIONS_OFFSET..])
            .iter()
            .map(|&(code, _)| code)
            .collect()
    }

    #[test]
    fn an_offer_and_an_ack_are_logged_as_dnsmasq_logs_them() {
        let ip = Ipv4Addr::new(192, 168, 122, 5);
        let asked = vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::from(224),
        ];
        let discover = request(
            MessageType::Discover,
            vec![DhcpOption::ParameterRequestList(asked)],
        );
        let offer = reply(
            MessageType::Offer,
            ip,
            vec![DhcpOption::ServerIdentifier(Ipv4Addr::new(
                192, 168, 122, 1,
            ))],
        );
        let sent = option_codes(&offer);
        let lines = lines(&Exchange {
            interface: "virbr0",
            request: &discover,
            kind: MessageType::Discover,
            client_name: Some("web1"),
            outcome: Ok(Some(&offer)),
            lease_name: None,
        });
        assert_eq!(
            lines,
            [
                "client provides name: web1",
                "DHCPDISCOVER(virbr0) 52:54:00:12:34:56",
                "DHCPOFFER(virbr0) 192.168.122.5 52:54:00:12:34:56",
                "requested options: 1:netmask, 3:router, 224",
                "sent size:  1 option: 53 message-type  2",
                "sent size:  4 option: 54 server-identifier  192.168.122.1",
            ]
        );
        assert_eq!(sent, [53, 54]);

        let requested = request(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(ip)],
        );
        let ack = reply(MessageType::Ack, ip, Vec::new());
        assert_eq!(
            exchange(&requested, Ok(Some(&ack)), Some("web1"))[..2],
            [
                "DHCPREQUEST(virbr0) 192.168.122.5 52:54:00:12:34:56",
                "DHCPACK(virbr0) 192.168.122.5 52:54:00:12:34:56 web1"
            ]
        );
    }

    #[test]
    fn a_nak_says_why_and_an_unanswered_message_too() {
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        let requested = request(
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(ip)],
        );
        let nak = reply(
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            vec![DhcpOption::Message("wrong address".into())],
        );
        assert_eq!(
            exchange(&requested, Ok(Some(&nak)), None)[..2],
            [
                "DHCPREQUEST(virbr0) 10.0.0.9 52:54:00:12:34:56",
                "DHCPNAK(virbr0) 10.0.0.9 52:54:00:12:34:56 wrong address"
            ]
        );
        let discover = request(MessageType::Discover, Vec::new());
        assert_eq!(
            exchange(&discover, Err("no address available"), None),
            ["DHCPDISCOVER(virbr0) 52:54:00:12:34:56 no address available"]
        );
        let mut release = request(MessageType::Release, Vec::new());
        release.set_ciaddr(ip);
        assert_eq!(
            exchange(&release, Ok(None), None),
            ["DHCPRELEASE(virbr0) 10.0.0.9 52:54:00:12:34:56"]
        );
        assert_eq!(
            exchange(&release, Err("unknown lease"), None),
            ["DHCPRELEASE(virbr0) 10.0.0.9 52:54:00:12:34:56 unknown lease"]
        );
        // An INFORM's ACK is about the client's own address.
        let mut inform = request(MessageType::Inform, Vec::new());
        inform.set_ciaddr(ip);
        let mut ack = reply(MessageType::Ack, Ipv4Addr::UNSPECIFIED, Vec::new());
        ack.bytes[12..16].copy_from_slice(&ip.octets());
        assert_eq!(
            exchange(&inform, Ok(Some(&ack)), None)[..2],
            [
                "DHCPINFORM(virbr0) 10.0.0.9 52:54:00:12:34:56",
                "DHCPACK(virbr0) 10.0.0.9 52:54:00:12:34:56"
            ]
        );
    }

    #[test]
    fn a_network_logs_its_share_of_messages_a_second() {
        let mut budget = LogBudget::per_second(MESSAGES_PER_SECOND);
        let discover = request(MessageType::Discover, Vec::new());
        let flood = Exchange {
            interface: "virbr0",
            request: &discover,
            kind: MessageType::Discover,
            client_name: None,
            outcome: Err("no address available"),
            lease_name: None,
        };
        for _ in 0..MESSAGES_PER_SECOND + 5 {
            write("n", &mut budget, 7, &flood);
        }
        assert_eq!(budget.take(8), Some(5));
    }
}
