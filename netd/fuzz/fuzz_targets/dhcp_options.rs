//! `cargo fuzz run dhcp_options`: the DHCP engine answering guests under a network whose
//! `<dnsmasq:options>` hold fuzzed `dhcp-option=` / `dhcp-option-force=` lines, read by
//! the real XML parser (`NetworkDef::from_xml`, `xml::dnsmasq::dhcp_options`).
//!
//! Input: one flags byte, then the config lines (one per `\n`) up to the first
//! `\xff\xfe\xfd`, then up to 32 DHCP packets separated by `\xff\xfe\xfd`, handled in order
//! by one engine. Flags: bits 0-1 `<bootp>` (none, short file, 127-byte file, with a
//! server), bit 2 isolated (no router), bit 3 `<dns enable='no'/>`, bit 4 no `<domain>`,
//! bit 5 no `<mtu>`.
//!
//! Oracles besides "no panic":
//! - every reply is a well-formed BOOTP message: magic cookie, options that are framed
//!   and end with the end option, Message Type first, NUL-terminated `sname` and `file`;
//! - it decodes with dhcproto (unless it holds an option dhcproto 0.15 debug-asserts on);
//! - an omitted option (`dhcp-option=3`) is never sent; a configured option, when sent,
//!   carries exactly the configured data (plus the NUL 66 and 67 get), even split over
//!   several options (RFC 3396);
//! - a reply larger than the client takes (option 57, at least 576 bytes with IP and
//!   UDP headers) has left out every option it could leave out;
//! - no address is leased twice.
#![no_main]

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use netd::dhcp::{DhcpBoot, DhcpConfig, DhcpHostConfig, Engine};
use netd::xml::{DhcpOptionRule, DhcpOptionValue, NetworkDef};

const SEPARATOR: &[u8] = b"\xff\xfe\xfd";
const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);

fn split_once<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], Option<&'a [u8]>) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&data[..at], Some(&data[at + sep.len()..])),
        None => (data, None),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

fn network_xml(flags: u8, lines: &[&str]) -> String {
    let long_file = "f".repeat(127);
    let bootp = match flags & 3 {
        0 => String::new(),
        1 => "<bootp file='pxelinux.0'/>".to_owned(),
        2 => format!("<bootp file='{long_file}'/>"),
        _ => "<bootp file='ipxe.efi' server='192.168.77.9'/>".to_owned(),
    };
    let forward = if flags & 4 != 0 {
        ""
    } else {
        "<forward mode='nat'/>"
    };
    let dns = if flags & 8 != 0 {
        "<dns enable='no'/>"
    } else {
        ""
    };
    let domain = if flags & 16 != 0 {
        ""
    } else {
        "<domain name='fuzz.test'/>"
    };
    let mtu = if flags & 32 != 0 {
        ""
    } else {
        "<mtu size='1400'/>"
    };
    let options: String = lines
        .iter()
        .map(|line| format!("<dnsmasq:option value='{}'/>", escape(line)))
        .collect();
    format!(
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <name>fuzz</name>{forward}<bridge name='kvf0'/>{mtu}{domain}{dns}\
         <ip address='192.168.77.1' prefix='24'><dhcp>\
         <range start='192.168.77.100' end='192.168.77.103'/>\
         <host mac='52:54:00:00:00:42' ip='192.168.77.101' name='fixed'/>{bootp}\
         </dhcp></ip><dnsmasq:options>{options}</dnsmasq:options></network>"
    )
}

/// The definition's dhcp-option rules: all lines together, else only the lines a
/// network takes alone (so one bad line does not waste the input). Whether a line is
/// taken alone is remembered (it depends only on the line and the flags): parsing each
/// line of every input made the target ten times slower.
fn rules(flags: u8, text: &str) -> Option<Vec<DhcpOptionRule>> {
    static TAKEN: Mutex<Option<HashMap<(u8, String), bool>>> = Mutex::new(None);
    let lines: Vec<&str> = text.split('\n').take(64).collect();
    let parse = |lines: &[&str]| NetworkDef::from_xml(&network_xml(flags, lines)).ok();
    let def = match parse(&lines) {
        Some(def) => def,
        None => {
            let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
            let taken = taken.get_or_insert_with(HashMap::new);
            if taken.len() > 200_000 {
                taken.clear();
            }
            let good: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|line| {
                    *taken
                        .entry((flags, (*line).to_owned()))
                        .or_insert_with(|| parse(&[line]).is_some())
                })
                .collect();
            parse(&good)?
        }
    };
    Some(netd::xml::dnsmasq::dhcp_options(&def.dnsmasq_options))
}

fn config(flags: u8, options: Vec<DhcpOptionRule>) -> DhcpConfig {
    DhcpConfig {
        network: "fuzz".into(),
        interface: "kvf0".into(),
        server_ip: SERVER,
        subnet: "192.168.77.0/24"
            .parse()
            .expect("invariant: literal subnet"),
        ranges: vec![(
            Ipv4Addr::new(192, 168, 77, 100),
            Ipv4Addr::new(192, 168, 77, 103),
            None,
        )],
        hosts: vec![DhcpHostConfig {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x42]),
            ip: Ipv4Addr::new(192, 168, 77, 101),
            name: Some("fixed".into()),
            lease: None,
        }],
        router: (flags & 4 == 0).then_some(SERVER),
        dns_server: (flags & 8 == 0).then_some(SERVER),
        domain: (flags & 16 == 0).then(|| "fuzz.test".into()),
        mtu: (flags & 32 == 0).then_some(1400),
        default_lease: Duration::from_secs(3600),
        boot: match flags & 3 {
            0 => None,
            1 => Some(DhcpBoot {
                file: "pxelinux.0".into(),
                server: SERVER,
            }),
            2 => Some(DhcpBoot {
                file: "f".repeat(127),
                server: SERVER,
            }),
            _ => Some(DhcpBoot {
                file: "ipxe.efi".into(),
                server: Ipv4Addr::new(192, 168, 77, 9),
            }),
        },
        options,
        log_dhcp: false,
    }
}

/// Options of an encoded message's options field, in order, as (code, data); `None`
/// when one is cut short or the end option is missing.
fn options(bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 240;
    loop {
        match *bytes.get(at)? {
            0 => at += 1,
            255 => return Some(out),
            code => {
                let len = usize::from(*bytes.get(at + 1)?);
                out.push((code, bytes.get(at + 2..at + 2 + len)?));
                at += 2 + len;
            }
        }
    }
}

/// The largest Maximum Message Size anywhere in the request's options field (the engine
/// takes the first; the largest gives an oracle that never over-asks).
fn max_message_size(packet: &[u8]) -> Option<u16> {
    let mut at = 240;
    let mut best = None;
    while let Some(&code) = packet.get(at) {
        match code {
            0 => at += 1,
            255 => break,
            _ => {
                let Some(&len) = packet.get(at + 1) else {
                    break;
                };
                let data = packet.get(at + 2..at + 2 + usize::from(len));
                if code == 57
                    && let Some(&[high, low]) = data.map(|d| &d[..d.len().min(2)])
                {
                    best = best.max(Some(u16::from_be_bytes([high, low])));
                }
                at += 2 + usize::from(len);
            }
        }
    }
    best
}

fn check_reply(bytes: &[u8], packet: &[u8], config: &DhcpConfig) {
    assert!(bytes.len() >= 300, "short reply {bytes:02x?}");
    assert_eq!(bytes[0], 2, "not a BOOTREPLY");
    assert_eq!(&bytes[236..240], &[99, 130, 83, 99], "no magic cookie");
    assert_eq!(
        bytes[44 + 63],
        0,
        "sname without its NUL: {:02x?}",
        &bytes[44..108]
    );
    assert_eq!(
        bytes[108 + 127],
        0,
        "file without its NUL: {:02x?}",
        &bytes[108..236]
    );
    let opts = options(bytes).unwrap_or_else(|| panic!("misframed options: {bytes:02x?}"));
    assert_eq!(
        opts.first().map(|o| o.0),
        Some(53),
        "Message Type not first"
    );
    let mut sent: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
    for (code, data) in &opts {
        sent.entry(*code).or_default().extend_from_slice(data);
    }
    let is_nak = sent.get(&53).map(Vec::as_slice) == Some(&[6][..]);
    for rule in &config.options {
        let Some(data) = sent.get(&rule.code) else {
            continue;
        };
        if rule.value == DhcpOptionValue::Omitted {
            panic!("omitted option {} sent as {data:02x?}", rule.code);
        }
        let mut want =
            netd::xml::dhcp_option_data(&rule.value, config.server_ip).expect("invariant: a value");
        if matches!(rule.code, 66 | 67) && want.len() < 255 && data.len() == want.len() + 1 {
            want.push(0);
        }
        assert_eq!(
            data, &want,
            "option {} sent as other data than configured",
            rule.code
        );
    }
    // Everything the engine may leave out to fit.
    let droppable = |code: u8| {
        matches!(code, 12 | 15 | 26 | 28 | 67 | 81)
            || config
                .options
                .iter()
                .any(|rule| rule.code == code && !matches!(code, 3 | 6))
    };
    let limit = usize::from(max_message_size(packet).unwrap_or(0).max(576)) - 28;
    if !is_nak && bytes.len() > limit {
        // An option 52 in the request may hide a larger option 57 from this oracle.
        let overloaded = options(packet).is_some_and(|o| o.iter().any(|(code, _)| *code == 52));
        if !overloaded {
            let kept: Vec<u8> = sent.keys().copied().filter(|&c| droppable(c)).collect();
            assert!(
                kept.is_empty(),
                "a {} byte reply (limit {limit}) kept droppable options {kept:?}",
                bytes.len()
            );
        }
    }
    // dhcproto 0.15 debug-asserts on these lengths when decoding: not kvnet's bug.
    let asserts = opts.iter().any(|(code, data)| match code {
        80 => !data.is_empty(),
        81 => data.len() < 3,
        94 => data.len() != 3,
        152..=155 => data.len() != 4,
        _ => false,
    });
    if !asserts {
        assert!(
            dhcproto::v4::Message::decode(&mut Decoder::new(bytes)).is_ok(),
            "reply does not decode: {bytes:02x?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (text, packets) = split_once(rest, SEPARATOR);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Some(rules) = rules(flags, text) else {
        return;
    };
    let config = config(flags, rules);
    let mut engine = Engine::new(config.clone());
    let now = 1_700_000_000;
    let mut rest = packets.unwrap_or_default();
    for step in 0..32 {
        let (packet, next) = split_once(rest, SEPARATOR);
        if let Some(reply) = engine.handle(packet, now + step) {
            check_reply(&reply.bytes, packet, &config);
        }
        match next {
            Some(next) if !next.is_empty() => rest = next,
            _ => break,
        }
    }
    let leases = engine.leases(now + 32);
    let mut ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), leases.len(), "an address is leased twice");
});
