//! `<dnsmasq:options>`: the dnsmasq config lines libvirt passes through
//! (namespace `http://libvirt.org/schemas/network/dnsmasq/1.0`, any prefix).

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use super::dom::Element;

/// The namespace libvirt reads `<options>` and `<option>` in.
pub(super) const NAMESPACE: &str = "http://libvirt.org/schemas/network/dnsmasq/1.0";

/// Whether `element` is `<local>` in the dnsmasq namespace. Its prefix (or the default
/// namespace) is looked up on the element, then on `ancestors`, innermost last, as an
/// XML namespace is scoped; libvirt matches the URI, whatever the prefix.
pub(super) fn is_dnsmasq(element: &Element, ancestors: &[&Element], local: &str) -> bool {
    let (prefix, name) = match element.name.split_once(':') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, element.name.as_str()),
    };
    if name != local {
        return false;
    }
    let key = prefix.map_or_else(|| "xmlns".to_owned(), |prefix| format!("xmlns:{prefix}"));
    std::iter::once(element)
        .chain(ancestors.iter().rev().copied())
        .find_map(|e| e.attr(&key))
        == Some(NAMESPACE)
}

/// Whether `key` is a namespace declaration, which carries no configuration.
pub(super) fn is_declaration(key: &str) -> bool {
    key == "xmlns" || key.starts_with("xmlns:")
}

/// One `<dnsmasq:option value=>`: the line as written, kept for `net-dumpxml`, and what
/// kvnet does for it. Only lines kvnet carries out itself are accepted: libvirt hands
/// them to dnsmasq, which kvnet does not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsmasqOption {
    /// The `value` attribute, unchanged.
    pub value: String,
    /// What it asks for.
    pub directive: Directive,
}

/// A dnsmasq config line kvnet implements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Directive {
    /// A blank line or a comment, which dnsmasq skips.
    Nothing,
    /// `address=/DOMAIN[/DOMAIN...]/[IP]`.
    Address(AddressRule),
    /// `cache-size=N`: how many answers the DNS cache keeps (0: none).
    CacheSize(u32),
    /// `dhcp-option=` or `dhcp-option-force=`: an option the DHCPv4 server sends.
    DhcpOption(DhcpOptionRule),
    /// `log-queries[=extra]`: every DNS query and what became of it is logged.
    LogQueries(QueryLogging),
    /// `log-dhcp`: every DHCP message received and sent is logged, options included.
    LogDhcp,
}

/// How `log-queries` logs each DNS query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum QueryLogging {
    /// `log-queries`: dnsmasq's lines.
    Plain,
    /// `log-queries=extra`: each line starts with the query's serial number and its
    /// client's address and port, so the lines of one query can be told apart.
    Extra,
}

/// `address=`: names at or under `domains` are answered locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressRule {
    /// The domains, lowercased, without leading or trailing dots.
    pub domains: Vec<String>,
    /// The address their A (IPv4) or AAAA (IPv6) queries get; `None` answers every
    /// query for them NXDOMAIN without forwarding it (dnsmasq's `local=`).
    pub address: Option<IpAddr>,
}

/// `dhcp-option=[option:NAME|NUMBER],VALUE...`: a DHCPv4 option the network's server
/// sends instead of (or besides) its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DhcpOptionRule {
    /// The option's code.
    pub code: u8,
    /// What it carries.
    pub value: DhcpOptionValue,
    /// `dhcp-option-force=`: sent even to a client that did not ask for it (option 55).
    pub force: bool,
}

/// The value of a `dhcp-option=`, typed as dnsmasq types the option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DhcpOptionValue {
    /// No value (`dhcp-option=option:router`): the option is not sent at all. dnsmasq
    /// allows this for the options it sends by itself (router, DNS server, domain name).
    Omitted,
    /// IPv4 addresses; `0.0.0.0` stands for the DHCP server's own address.
    Addresses(Vec<Ipv4Addr>),
    /// Text, sent as its bytes without a NUL.
    Text(String),
    /// A 16-bit number.
    U16(u16),
    /// Domain names, as written (without a final dot); `""` is the root (`.`).
    Domains(Vec<String>),
    /// RFC 3442 routes.
    Routes(Vec<ClasslessRoute>),
    /// The data of an option kvnet knows no type for, read as dnsmasq guesses one (see
    /// [`guessed`]).
    Bytes(Vec<u8>),
    /// RFC 3361 SIP servers by address.
    SipAddresses(Vec<Ipv4Addr>),
    /// RFC 3361 SIP servers by domain name, as [`DhcpOptionValue::Domains`].
    SipDomains(Vec<String>),
}

/// One classless static route (option 121): `DESTINATION/PREFIX,ROUTER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClasslessRoute {
    /// The destination network as written; only its first `prefix` bits go on the wire.
    pub destination: Ipv4Addr,
    /// Its prefix length, 0 to 32.
    pub prefix: u8,
    /// The router; `0.0.0.0` means on-link (RFC 3442), not the server.
    pub router: Ipv4Addr,
}

/// How the value of an option is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Addresses,
    Text,
    Mtu,
    Domains,
    Routes,
    /// A number of this many bytes, or what [`guessed`] makes of anything else.
    Number(usize),
    /// RFC 3361: IPv4 addresses or domain names, after a byte saying which.
    SipServers,
    /// What [`guessed`] makes of it.
    Guessed,
}

/// The DHCPv4 options of dnsmasq 2.90's `opttab` (dhcp-common.c; `dnsmasq --help dhcp`
/// lists them): their names, matched without case, and how their values are read.
/// Options of other numbers take what [`guessed`] makes of their values; those the
/// server fills in itself ([`SERVER_OPTIONS`]) are refused.
const DHCP_OPTIONS: &[(&str, u8, ValueKind)] = &[
    ("time-offset", 2, ValueKind::Number(4)),
    ("router", 3, ValueKind::Addresses),
    ("dns-server", 6, ValueKind::Addresses),
    ("log-server", 7, ValueKind::Addresses),
    ("lpr-server", 9, ValueKind::Addresses),
    ("boot-file-size", 13, ValueKind::Number(2)),
    ("domain-name", 15, ValueKind::Text),
    ("swap-server", 16, ValueKind::Addresses),
    ("root-path", 17, ValueKind::Text),
    ("extension-path", 18, ValueKind::Text),
    ("ip-forward-enable", 19, ValueKind::Number(1)),
    ("non-local-source-routing", 20, ValueKind::Number(1)),
    ("policy-filter", 21, ValueKind::Addresses),
    ("max-datagram-reassembly", 22, ValueKind::Number(2)),
    ("default-ttl", 23, ValueKind::Number(1)),
    ("mtu", 26, ValueKind::Mtu),
    ("all-subnets-local", 27, ValueKind::Number(1)),
    ("router-discovery", 31, ValueKind::Number(1)),
    ("router-solicitation", 32, ValueKind::Addresses),
    ("static-route", 33, ValueKind::Addresses),
    ("trailer-encapsulation", 34, ValueKind::Number(1)),
    ("arp-timeout", 35, ValueKind::Number(4)),
    ("ethernet-encap", 36, ValueKind::Number(1)),
    ("tcp-ttl", 37, ValueKind::Number(1)),
    ("tcp-keepalive", 38, ValueKind::Number(4)),
    ("nis-domain", 40, ValueKind::Text),
    ("nis-server", 41, ValueKind::Addresses),
    ("ntp-server", 42, ValueKind::Addresses),
    ("netbios-ns", 44, ValueKind::Addresses),
    ("netbios-dd", 45, ValueKind::Addresses),
    ("netbios-nodetype", 46, ValueKind::Number(1)),
    ("netbios-scope", 47, ValueKind::Guessed),
    ("x-windows-fs", 48, ValueKind::Addresses),
    ("x-windows-dm", 49, ValueKind::Addresses),
    ("vendor-class", 60, ValueKind::Guessed),
    ("nis+-domain", 64, ValueKind::Text),
    ("nis+-server", 65, ValueKind::Addresses),
    ("tftp-server", 66, ValueKind::Text),
    ("bootfile-name", 67, ValueKind::Text),
    ("mobile-ip-home", 68, ValueKind::Addresses),
    ("smtp-server", 69, ValueKind::Addresses),
    ("pop3-server", 70, ValueKind::Addresses),
    ("nntp-server", 71, ValueKind::Addresses),
    ("irc-server", 74, ValueKind::Addresses),
    ("user-class", 77, ValueKind::Guessed),
    ("rapid-commit", 80, ValueKind::Guessed),
    ("client-arch", 93, ValueKind::Number(2)),
    ("client-interface-id", 94, ValueKind::Guessed),
    ("client-machine-id", 97, ValueKind::Guessed),
    ("posix-timezone", 100, ValueKind::Text),
    ("tzdb-timezone", 101, ValueKind::Text),
    ("ipv6-only", 108, ValueKind::Number(4)),
    ("domain-search", 119, ValueKind::Domains),
    ("sip-server", 120, ValueKind::SipServers),
    ("classless-static-route", 121, ValueKind::Routes),
    ("vendor-id-encap", 125, ValueKind::Guessed),
    ("tftp-server-address", 150, ValueKind::Addresses),
];

/// Options the server fills in itself, for every reply or from the client's own: no
/// `dhcp-option=` line sets them (the subnet mask and broadcast address come from the
/// subnet, the lease times from `<lease>`, the name from the lease).
const SERVER_OPTIONS: &[u8] = &[
    0, 1, 12, 28, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 61, 81, 82, 255,
];

/// dnsmasq 2.90's names (`opttab`) of the options no `dhcp-option=` line sets, for logs.
const SERVER_OPTION_NAMES: &[(&str, u8)] = &[
    ("netmask", 1),
    ("hostname", 12),
    ("broadcast", 28),
    ("vendor-encap", 43),
    ("requested-address", 50),
    ("lease-time", 51),
    ("option-overload", 52),
    ("message-type", 53),
    ("server-identifier", 54),
    ("parameter-request", 55),
    ("message", 56),
    ("max-message-size", 57),
    ("T1", 58),
    ("T2", 59),
    ("client-id", 61),
    ("FQDN", 81),
    ("agent-id", 82),
    ("subnet-select", 118),
];

/// Options whose `dhcp-option=` without a value means "do not send it" in dnsmasq
/// (rfc2131.c `do_options`): those it would send itself.
const OMITTABLE: &[u8] = &[3, 6, 15];

/// The most data one option carries (its length is a byte; dnsmasq refuses more).
const MAX_OPTION_LEN: usize = 255;

/// The largest `cache-size` dnsmasq keeps (2.90's option.c clamps larger ones to it,
/// and negative ones to 0). kvnet's cache has byte limits of its own besides.
pub const MAX_CACHE_SIZE: u32 = 5_000_000;

/// The `address=` rules of `options`, in order.
pub fn address_rules(options: &[DnsmasqOption]) -> Vec<AddressRule> {
    options
        .iter()
        .filter_map(|option| match &option.directive {
            Directive::Address(rule) => Some(rule.clone()),
            _ => None,
        })
        .collect()
}

/// The cache size `options` set: the last `cache-size=`, as dnsmasq takes the last of a
/// repeated option.
pub fn cache_size(options: &[DnsmasqOption]) -> Option<u32> {
    options
        .iter()
        .filter_map(|option| match option.directive {
            Directive::CacheSize(size) => Some(size),
            _ => None,
        })
        .next_back()
}

/// How `options` have DNS queries logged: `extra` if any `log-queries` line asks for
/// it, as dnsmasq sets its flags whatever the order.
pub fn log_queries(options: &[DnsmasqOption]) -> Option<QueryLogging> {
    options
        .iter()
        .filter_map(|option| match option.directive {
            Directive::LogQueries(logging) => Some(logging),
            _ => None,
        })
        .max_by_key(|&logging| logging == QueryLogging::Extra)
}

/// Whether `options` have DHCP messages logged (`log-dhcp`).
pub fn log_dhcp(options: &[DnsmasqOption]) -> bool {
    options
        .iter()
        .any(|option| option.directive == Directive::LogDhcp)
}

/// dnsmasq's name of DHCPv4 option `code`, as its `log-dhcp` lines show it: those
/// `dhcp-option=option:NAME` takes, and those the server fills in itself.
pub fn dhcp_option_name(code: u8) -> Option<&'static str> {
    DHCP_OPTIONS
        .iter()
        .map(|&(name, known, _)| (name, known))
        .chain(SERVER_OPTION_NAMES.iter().copied())
        .find(|&(_, known)| known == code)
        .map(|(name, _)| name)
}

/// The `dhcp-option=` lines of `options`, one per option code: the last one written, as
/// dnsmasq sends the last of a repeated option.
pub fn dhcp_options(options: &[DnsmasqOption]) -> Vec<DhcpOptionRule> {
    let mut by_code = std::collections::BTreeMap::new();
    for option in options {
        if let Directive::DhcpOption(rule) = &option.directive {
            by_code.insert(rule.code, rule.clone());
        }
    }
    by_code.into_values().collect()
}

/// Why a line is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// kvnet does not implement this option (or this form of it).
    Unsupported,
    /// A supported option with a value it cannot take; says why.
    Invalid(String),
}

impl Directive {
    /// Reads one config line as dnsmasq would (surrounding whitespace dropped, `#`
    /// starting a comment line).
    pub(super) fn parse(line: &str) -> Result<Directive, Refusal> {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return Ok(Directive::Nothing);
        }
        let (name, value) = match line.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim())),
            None => (line, None),
        };
        match (name, value) {
            ("address", Some(value)) => address(value).map(Directive::Address),
            ("dhcp-option", Some(value)) => dhcp_option(value, false).map(Directive::DhcpOption),
            ("dhcp-option-force", Some(value)) => {
                dhcp_option(value, true).map(Directive::DhcpOption)
            }
            // Clamped as dnsmasq clamps it: a size libvirt took is taken.
            ("cache-size", Some(value)) => match value.parse::<i64>() {
                Ok(size) => Ok(Directive::CacheSize(
                    u32::try_from(size.clamp(0, i64::from(MAX_CACHE_SIZE))).unwrap_or(0),
                )),
                Err(_) => Err(Refusal::Invalid(
                    "the cache size must be a number".to_owned(),
                )),
            },
            ("log-queries", Some("extra")) => Ok(Directive::LogQueries(QueryLogging::Extra)),
            // dnsmasq 2.90 takes any other value (`proto` included) as none.
            ("log-queries", _) => Ok(Directive::LogQueries(QueryLogging::Plain)),
            ("log-dhcp", None) => Ok(Directive::LogDhcp),
            // dnsmasq refuses to start with it ("extraneous parameter").
            ("log-dhcp", Some(_)) => Err(Refusal::Invalid("log-dhcp takes no value".to_owned())),
            _ => Err(Refusal::Unsupported),
        }
    }
}

/// `/DOMAIN[/DOMAIN...]/[IP]`.
fn address(value: &str) -> Result<AddressRule, Refusal> {
    let invalid = |why: &str| Refusal::Invalid(why.to_owned());
    let Some(rest) = value.strip_prefix('/') else {
        return Err(invalid("it must look like /DOMAIN/IP or /DOMAIN/"));
    };
    let Some((domains, ip)) = rest.rsplit_once('/') else {
        return Err(invalid("it must look like /DOMAIN/IP or /DOMAIN/"));
    };
    let domains = domains
        .split('/')
        .map(|domain| {
            // dnsmasq reads `.example.com` and `example.com` alike.
            let name = domain.strip_prefix('.').unwrap_or(domain);
            let name = name.strip_suffix('.').unwrap_or(name);
            // `#` (every domain) and `*` patterns are dnsmasq forms kvnet leaves out.
            if name.contains(['#', '*']) {
                return Err(Refusal::Unsupported);
            }
            if is_domain(name) {
                Ok(name.to_ascii_lowercase())
            } else {
                Err(Refusal::Invalid(format!("'{domain}' is not a domain name")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let address = match ip {
        "" => None,
        // `#` means the null address; `0.0.0.0`-style sinkholes are written as such.
        "#" => return Err(Refusal::Unsupported),
        ip => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| Refusal::Invalid(format!("'{ip}' is not an IP address")))?,
        ),
    };
    Ok(AddressRule { domains, address })
}

/// `dhcp-option=` (`force`: `dhcp-option-force=`), read as dnsmasq 2.90's
/// `parse_dhcp_opt` reads it, for the options of [`DHCP_OPTIONS`].
fn dhcp_option(value: &str, force: bool) -> Result<DhcpOptionRule, Refusal> {
    let (spec, rest) = match value.split_once(',') {
        Some((spec, rest)) => (spec.trim(), Some(rest)),
        None => (value.trim(), None),
    };
    // dnsmasq reads leading fields that are neither a number nor `option:` as tags
    // (`tag:`, `set:`, `net:` or bare) or as `vendor:`, `encap:`, `vi-encap:` and
    // `option6:` forms: kvnet has no tags and sends these options from nowhere.
    let code = if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        spec.parse::<u8>().map_err(|_| Refusal::Unsupported)?
    } else if let Some(name) = spec.strip_prefix("option:") {
        DHCP_OPTIONS
            .iter()
            .find(|(known, ..)| known.eq_ignore_ascii_case(name))
            .map(|&(_, code, _)| code)
            .ok_or(Refusal::Unsupported)?
    } else {
        return Err(Refusal::Unsupported);
    };
    if SERVER_OPTIONS.contains(&code) {
        return Err(Refusal::Unsupported);
    }
    let kind = DHCP_OPTIONS
        .iter()
        .find(|&&(_, known, _)| known == code)
        .map_or(ValueKind::Guessed, |&(.., kind)| kind);

    let omitted = || {
        if OMITTABLE.contains(&code) {
            Ok(DhcpOptionValue::Omitted)
        } else if let ValueKind::Number(_) | ValueKind::Guessed | ValueKind::Addresses = kind {
            // An option of no value (an empty NTP server list, say), as dnsmasq sends it.
            Ok(DhcpOptionValue::Bytes(Vec::new()))
        } else {
            Err(Refusal::Invalid("the option needs a value".to_owned()))
        }
    };
    let Some(rest) = rest else {
        return Ok(DhcpOptionRule {
            code,
            value: omitted()?,
            force,
        });
    };
    let value = match kind {
        // dnsmasq takes everything after the first comma as the text, commas too.
        ValueKind::Text => match unquoted(rest, false)?.pop().unwrap_or_default() {
            text if text.is_empty() => omitted()?,
            text => DhcpOptionValue::Text(text),
        },
        ValueKind::Addresses => DhcpOptionValue::Addresses(
            unquoted(rest, true)?
                .iter()
                .map(|field| ipv4(field))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Mtu => {
            let [field] = &unquoted(rest, true)?[..] else {
                return Err(Refusal::Invalid("the MTU is one number".to_owned()));
            };
            match field.parse::<u16>() {
                Ok(mtu) if mtu >= 68 && field.bytes().all(|b| b.is_ascii_digit()) => {
                    DhcpOptionValue::U16(mtu)
                }
                _ => {
                    return Err(Refusal::Invalid(
                        "the MTU must be a number from 68 to 65535".to_owned(),
                    ));
                }
            }
        }
        ValueKind::Domains => DhcpOptionValue::Domains(
            unquoted(rest, true)?
                .iter()
                .map(|field| search_domain(field))
                .collect::<Result<_, _>>()?,
        ),
        ValueKind::Routes => DhcpOptionValue::Routes(routes(&unquoted(rest, true)?)?),
        ValueKind::Number(size) => guessed(rest, Some(size))?,
        ValueKind::SipServers => {
            let fields = unquoted(rest, true)?;
            match fields.iter().map(|field| field.parse()).collect() {
                Ok(addresses) => DhcpOptionValue::SipAddresses(addresses),
                Err(_) => DhcpOptionValue::SipDomains(
                    fields
                        .iter()
                        .map(|field| search_domain(field))
                        .collect::<Result<_, _>>()?,
                ),
            }
        }
        ValueKind::Guessed => guessed(rest, None)?,
    };
    checked_len(DhcpOptionRule { code, value, force })
}

/// `rule`, if its value fits in one option.
fn checked_len(rule: DhcpOptionRule) -> Result<DhcpOptionRule, Refusal> {
    // The server's address stands in for 0.0.0.0 in the same four bytes.
    let len = super::dhcp_option_data(&rule.value, std::net::Ipv4Addr::UNSPECIFIED)
        .map_or(0, |data| data.len());
    if len > MAX_OPTION_LEN {
        return Err(Refusal::Invalid(format!(
            "it is longer than the {MAX_OPTION_LEN} bytes a DHCP option holds"
        )));
    }
    Ok(rule)
}

/// The value of an option kvnet knows no type for, read as dnsmasq 2.90's
/// `parse_dhcp_opt` guesses it:
/// - hex bytes with colons (`01:a0:ff`);
/// - a number (`1`, `-18000`, `1500`), in `size` bytes for an option dnsmasq knows the
///   size of, else in as few of 1, 2 or 4 bytes as hold it, or as many as a `b`, `s` or
///   `i` suffix says;
/// - IPv4 addresses (`10.0.0.1,10.0.0.2`; several numbers are read as addresses, and
///   refused), some perhaps with a prefix length (`10.0.0.0/8,192.168.97.1`);
/// - else text, as given (`"\n"`, which stops Windows' WPAD lookups with option 252).
///
/// Anything quoted is text (dnsmasq would read a quoted number as a number).
fn guessed(rest: &str, size: Option<usize>) -> Result<DhcpOptionValue, Refusal> {
    let text = unquoted(rest, false)?.pop().unwrap_or_default();
    if rest.contains('"') || text.is_empty() {
        return Ok(DhcpOptionValue::Bytes(text.into_bytes()));
    }
    let is_hex = |c: char| c.is_ascii_hexdigit() || c == ':';
    if text.contains(':') && text.chars().all(is_hex) {
        return text
            .split(':')
            .map(|byte| match byte.len() {
                1 | 2 => u8::from_str_radix(byte, 16).ok(),
                _ => None,
            })
            .collect::<Option<Vec<u8>>>()
            .map(DhcpOptionValue::Bytes)
            .ok_or_else(|| Refusal::Invalid(format!("'{text}' is not hex bytes (like 01:a0:ff)")));
    }
    let fields = unquoted(rest, true)?;
    if let [field] = &fields[..]
        && let Some(number) = number(field, size)?
    {
        return Ok(DhcpOptionValue::Bytes(number));
    }
    let address_like =
        |c: char| c.is_ascii_digit() || matches!(c, '.' | ',' | '/') || c.is_whitespace();
    if text.chars().all(address_like) {
        return if text.contains('/') {
            Ok(DhcpOptionValue::Bytes(prefixed_addresses(&fields)?))
        } else {
            Ok(DhcpOptionValue::Addresses(
                fields
                    .iter()
                    .map(|field| ipv4(field))
                    .collect::<Result<_, _>>()?,
            ))
        };
    }
    Ok(DhcpOptionValue::Bytes(text.into_bytes()))
}

/// `field` as dnsmasq's number (see [`guessed`]): its bytes, or `None` if it is no number.
/// A negative one is sent in two's complement, in 4 bytes unless a size is given.
fn number(field: &str, size: Option<usize>) -> Result<Option<Vec<u8>>, Refusal> {
    let (digits, suffix) = match field.strip_suffix(['b', 's', 'i']) {
        Some(digits) => (digits, field.chars().last()),
        None => (field, None),
    };
    let magnitude = digits.strip_prefix('-').unwrap_or(digits);
    if magnitude.is_empty() || !magnitude.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let value: i64 = match digits.parse() {
        Ok(value) if (i64::from(i32::MIN)..=i64::from(u32::MAX)).contains(&value) => value,
        _ => {
            return Err(Refusal::Invalid(format!(
                "'{field}' is larger than 4 bytes hold"
            )));
        }
    };
    let len: u32 = match (suffix, size) {
        (Some('b'), _) => 1,
        (Some('s'), _) => 2,
        (Some('i'), _) => 4,
        (_, Some(size)) => u32::try_from(size.min(4)).unwrap_or(4),
        _ if !(0..=0xffff).contains(&value) => 4,
        _ if value > 0xff => 2,
        _ => 1,
    };
    // In `len` bytes, unsigned or in two's complement; dnsmasq would send the low bytes.
    let bits = 8 * len;
    let fits = if value < 0 {
        value >= -(1i64 << (bits - 1))
    } else {
        value < 1i64 << bits
    };
    if !fits {
        return Err(Refusal::Invalid(format!(
            "'{field}' does not fit the option's {len} byte(s)"
        )));
    }
    let len = usize::try_from(len).unwrap_or(4);
    Ok(Some(value.to_be_bytes()[8 - len..].to_vec()))
}

/// Addresses some of which carry a prefix length (`10.0.0.0/8,192.168.97.1`, as for
/// Microsoft's classless routes, option 249), as dnsmasq packs them: an address with
/// `/N` as N and its first N bits' octets (RFC 3442), one without as its four octets.
fn prefixed_addresses(fields: &[String]) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::new();
    for field in fields {
        match field.split_once('/') {
            Some((address, prefix)) => {
                let prefix = prefix
                    .parse::<u8>()
                    .ok()
                    .filter(|&prefix| prefix <= 32)
                    .ok_or_else(|| {
                        Refusal::Invalid(format!("'{field}' has no prefix length from 0 to 32"))
                    })?;
                out.push(prefix);
                out.extend_from_slice(&ipv4(address)?.octets()[..usize::from(prefix).div_ceil(8)]);
            }
            None => out.extend_from_slice(&ipv4(field)?.octets()),
        }
    }
    Ok(out)
}

/// An IPv4 address of a `dhcp-option=` list.
fn ipv4(field: &str) -> Result<Ipv4Addr, Refusal> {
    field
        .parse()
        .map_err(|_| Refusal::Invalid(format!("'{field}' is not an IPv4 address")))
}

/// A domain of `domain-search`: `.` is the root, as in dnsmasq.
fn search_domain(field: &str) -> Result<String, Refusal> {
    if field == "." {
        return Ok(String::new());
    }
    let name = field.strip_suffix('.').unwrap_or(field);
    if is_domain(name) {
        Ok(name.to_owned())
    } else {
        Err(Refusal::Invalid(format!("'{field}' is not a domain name")))
    }
}

/// `classless-static-route`'s `DESTINATION/PREFIX,ROUTER` pairs.
fn routes(fields: &[String]) -> Result<Vec<ClasslessRoute>, Refusal> {
    let pairs = fields.chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return Err(Refusal::Invalid(
            "it must be pairs of NETWORK/PREFIX,ROUTER".to_owned(),
        ));
    }
    pairs
        .map(|pair| {
            let [destination, router] = pair else {
                return Err(Refusal::Invalid(
                    "it must be pairs of NETWORK/PREFIX,ROUTER".to_owned(),
                ));
            };
            let Some((network, prefix)) = destination.split_once('/') else {
                return Err(Refusal::Invalid(format!(
                    "'{destination}' is not a NETWORK/PREFIX"
                )));
            };
            let prefix = prefix
                .parse::<u8>()
                .ok()
                .filter(|&prefix| prefix <= 32)
                .ok_or_else(|| {
                    Refusal::Invalid(format!("'{destination}' has no prefix length from 0 to 32"))
                })?;
            Ok(ClasslessRoute {
                destination: ipv4(network)?,
                prefix,
                router: ipv4(router)?,
            })
        })
        .collect()
}

/// The fields of a value as dnsmasq's config reader leaves them: `"..."` quotes text
/// (commas and spaces in it included; `\"`, `\\`, `\t`, `\n`, `\r`, `\b`, `\e`
/// escapes inside), and unquoted spaces around a field go. With `split`, commas outside
/// quotes separate fields; without, there is one field.
fn unquoted(value: &str, split: bool) -> Result<Vec<String>, Refusal> {
    // Each character, and whether it was quoted (quoted spaces are kept).
    let mut fields = Vec::new();
    let mut field: Vec<(char, bool)> = Vec::new();
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                let escaped = match chars.next() {
                    Some('t') => '\t',
                    Some('n') => '\n',
                    Some('r') => '\r',
                    Some('b') => '\u{8}',
                    Some('e') => '\u{1b}',
                    Some(c @ ('"' | '\\')) => c,
                    _ => {
                        return Err(Refusal::Invalid(
                            r#"a backslash in quotes must come before \, ", t, n, r, b or e"#
                                .to_owned(),
                        ));
                    }
                };
                field.push((escaped, true));
            }
            ',' if split && !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push((c, quoted)),
        }
    }
    if quoted {
        return Err(Refusal::Invalid("a quote is not closed".to_owned()));
    }
    fields.push(field);
    let bare = |&(c, quoted): &(char, bool)| !quoted && c.is_whitespace();
    Ok(fields
        .into_iter()
        .map(|field| {
            let start = field.iter().position(|c| !bare(c)).unwrap_or(field.len());
            let end = field
                .iter()
                .rposition(|c| !bare(c))
                .map_or(start, |end| end + 1);
            field[start..end].iter().map(|&(c, _)| c).collect()
        })
        .collect())
}

/// Whether `name` is a domain name a query can ask for: dot-separated labels of 1 to
/// 63 letters, digits, `-` or `_`, 253 bytes at most.
fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: &str) -> DhcpOptionRule {
        match Directive::parse(line) {
            Ok(Directive::DhcpOption(rule)) => rule,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn value(line: &str) -> (u8, DhcpOptionValue) {
        let rule = rule(line);
        (rule.code, rule.value)
    }

    fn ips(ips: &[[u8; 4]]) -> DhcpOptionValue {
        DhcpOptionValue::Addresses(ips.iter().map(|&ip| Ipv4Addr::from(ip)).collect())
    }

    #[test]
    fn cache_sizes_are_clamped_as_dnsmasq_clamps_them() {
        for (line, size) in [
            ("cache-size=20000", 20_000),
            ("cache-size=9999999", MAX_CACHE_SIZE),
            ("cache-size=-3", 0),
        ] {
            assert_eq!(
                Directive::parse(line),
                Ok(Directive::CacheSize(size)),
                "{line}"
            );
        }
    }

    #[test]
    fn log_lines_are_read_as_dnsmasq_2_90_reads_them() {
        for (line, expected) in [
            (
                "log-queries",
                Ok(Directive::LogQueries(QueryLogging::Plain)),
            ),
            (
                "log-queries=extra",
                Ok(Directive::LogQueries(QueryLogging::Extra)),
            ),
            (
                "log-queries = extra",
                Ok(Directive::LogQueries(QueryLogging::Extra)),
            ),
            (
                "log-queries=proto",
                Ok(Directive::LogQueries(QueryLogging::Plain)),
            ),
            (
                "log-queries=",
                Ok(Directive::LogQueries(QueryLogging::Plain)),
            ),
            ("log-dhcp", Ok(Directive::LogDhcp)),
            (
                "log-dhcp=x",
                Err(Refusal::Invalid("log-dhcp takes no value".to_owned())),
            ),
            ("log-facility=/tmp/x", Err(Refusal::Unsupported)),
        ] {
            assert_eq!(Directive::parse(line), expected, "{line}");
        }
        let option = |value: &str| DnsmasqOption {
            value: value.to_owned(),
            directive: Directive::parse(value).expect("valid"),
        };
        let plain_after_extra = [option("log-queries=extra"), option("log-queries")];
        assert_eq!(log_queries(&plain_after_extra), Some(QueryLogging::Extra));
        assert_eq!(log_queries(&[option("log-dhcp")]), None);
        assert!(log_dhcp(&[option("log-queries"), option("log-dhcp")]));
    }

    #[test]
    fn dhcp_options_are_named_as_dnsmasq_names_them_in_its_logs() {
        for (code, name) in [
            (1, Some("netmask")),
            (3, Some("router")),
            (6, Some("dns-server")),
            (53, Some("message-type")),
            (58, Some("T1")),
            (119, Some("domain-search")),
            (224, None),
        ] {
            assert_eq!(dhcp_option_name(code), name, "{code}");
        }
    }

    #[test]
    fn dhcp_options_are_read_by_name_or_number_with_typed_values() {
        use DhcpOptionValue::*;
        for (line, code, expected) in [
            (
                "dhcp-option=option:ntp-server,192.168.122.1",
                42,
                ips(&[[192, 168, 122, 1]]),
            ),
            ("dhcp-option=42,0.0.0.0", 42, ips(&[[0, 0, 0, 0]])),
            (
                "dhcp-option=option:router,10.0.0.254",
                3,
                ips(&[[10, 0, 0, 254]]),
            ),
            ("dhcp-option=option:router", 3, Omitted),
            ("dhcp-option=3", 3, Omitted),
            (
                "dhcp-option=6,10.0.0.1, 10.0.0.2",
                6,
                ips(&[[10, 0, 0, 1], [10, 0, 0, 2]]),
            ),
            (
                "dhcp-option=option:DNS-Server,1.1.1.1",
                6,
                ips(&[[1, 1, 1, 1]]),
            ),
            (
                "dhcp-option=option:domain-name,corp.example",
                15,
                Text("corp.example".into()),
            ),
            ("dhcp-option=option:mtu,9000", 26, U16(9000)),
            ("dhcp-option=26,1400", 26, U16(1400)),
            (
                "dhcp-option=66,192.168.1.10",
                66,
                Text("192.168.1.10".into()),
            ),
            (
                "dhcp-option=option:tftp-server,tftp.example",
                66,
                Text("tftp.example".into()),
            ),
            (
                "dhcp-option=option:bootfile-name,\"ipxe, snp.efi\"",
                67,
                Text("ipxe, snp.efi".into()),
            ),
            ("dhcp-option=67,pxelinux.0", 67, Text("pxelinux.0".into())),
            // dnsmasq keeps the commas of a text option.
            ("dhcp-option=67,a,b", 67, Text("a,b".into())),
            ("dhcp-option=67,\" x\\\"y \"", 67, Text(" x\"y ".into())),
            (
                "dhcp-option=option:domain-search,example.com,lab.example.com.,.",
                119,
                Domains(vec![
                    "example.com".into(),
                    "lab.example.com".into(),
                    String::new(),
                ]),
            ),
            (
                "dhcp-option=121,10.0.0.0/8,192.168.122.1,0.0.0.0/0,192.168.122.2",
                121,
                Routes(vec![
                    ClasslessRoute {
                        destination: Ipv4Addr::new(10, 0, 0, 0),
                        prefix: 8,
                        router: Ipv4Addr::new(192, 168, 122, 1),
                    },
                    ClasslessRoute {
                        destination: Ipv4Addr::UNSPECIFIED,
                        prefix: 0,
                        router: Ipv4Addr::new(192, 168, 122, 2),
                    },
                ]),
            ),
            (
                "dhcp-option=option:tftp-server-address,10.1.1.1",
                150,
                ips(&[[10, 1, 1, 1]]),
            ),
            (
                "dhcp-option=150,10.1.1.1,10.1.1.2",
                150,
                ips(&[[10, 1, 1, 1], [10, 1, 1, 2]]),
            ),
        ] {
            assert_eq!(value(line), (code, expected), "{line}");
            assert!(!rule(line).force, "{line}");
        }
        let forced = rule("dhcp-option-force=option:ntp-server,10.0.0.1");
        assert!(forced.force);
        assert_eq!(forced.value, ips(&[[10, 0, 0, 1]]));
        assert_eq!(rule(" dhcp-option = 42 , 10.0.0.1 ").code, 42);
    }

    /// Options kvnet has no type for take dnsmasq's guess at their value.
    #[test]
    fn other_options_take_the_type_dnsmasq_guesses() {
        let bytes = |data: &[u8]| DhcpOptionValue::Bytes(data.to_vec());
        for (line, code, expected) in [
            ("dhcp-option=252,\"\\n\"", 252, bytes(b"\n")),
            (
                "dhcp-option=252,\"http://wpad/wpad.dat\"",
                252,
                bytes(b"http://wpad/wpad.dat"),
            ),
            ("dhcp-option=43,01:04:0a:0B", 43, bytes(&[1, 4, 10, 11])),
            ("dhcp-option=46,8", 46, bytes(&[8])),
            ("dhcp-option=23,64", 23, bytes(&[64])),
            ("dhcp-option=option:boot-file-size,8", 13, bytes(&[0, 8])),
            ("dhcp-option=24,300", 24, bytes(&[1, 44])),
            ("dhcp-option=24,70000", 24, bytes(&[0, 1, 17, 112])),
            ("dhcp-option=37,8s", 37, bytes(&[0, 8])),
            ("dhcp-option=37,8i", 37, bytes(&[0, 0, 0, 8])),
            (
                "dhcp-option=option:nis+-domain,lab",
                64,
                DhcpOptionValue::Text("lab".into()),
            ),
            (
                "dhcp-option=44,10.0.0.1,10.0.0.2",
                44,
                ips(&[[10, 0, 0, 1], [10, 0, 0, 2]]),
            ),
            ("dhcp-option=252,auto proxy", 252, bytes(b"auto proxy")),
            (
                "dhcp-option=option:time-offset,-18000",
                2,
                bytes(&[0xff, 0xff, 0xb9, 0xb0]),
            ),
            ("dhcp-option=2,-1s", 2, bytes(&[0xff, 0xff])),
            ("dhcp-option=200,-1", 200, bytes(&[0xff; 4])),
            ("dhcp-option=200,-1b", 200, bytes(&[0xff])),
            (
                "dhcp-option=249,10.0.0.0/8,192.168.97.1",
                249,
                bytes(&[8, 10, 192, 168, 97, 1]),
            ),
            ("dhcp-option=200,1.2.3.4/24", 200, bytes(&[24, 1, 2, 3])),
            (
                "dhcp-option=120,10.0.0.1",
                120,
                DhcpOptionValue::SipAddresses(vec![Ipv4Addr::new(10, 0, 0, 1)]),
            ),
            (
                "dhcp-option=option:sip-server,sip.example.com",
                120,
                DhcpOptionValue::SipDomains(vec!["sip.example.com".into()]),
            ),
            ("dhcp-option=252", 252, bytes(b"")),
            // PXE: the server tells the client it boots it.
            (
                "dhcp-option=option:vendor-class,PXEClient",
                60,
                bytes(b"PXEClient"),
            ),
            ("dhcp-option=option:ntp-server", 42, bytes(b"")),
        ] {
            assert_eq!(value(line), (code, expected), "{line}");
        }
        for (line, why) in [
            ("dhcp-option=44,10.0.1", "'10.0.1' is not an IPv4 address"),
            (
                "dhcp-option=43,01:234",
                "'01:234' is not hex bytes (like 01:a0:ff)",
            ),
            (
                "dhcp-option=24,4294967296",
                "'4294967296' is larger than 4 bytes hold",
            ),
            (
                "dhcp-option=23,300",
                "'300' does not fit the option's 1 byte(s)",
            ),
            ("dhcp-option=65,1,2,3", "'1' is not an IPv4 address"),
            ("dhcp-option=200,1,2", "'1' is not an IPv4 address"),
            ("dhcp-option=46,1,2", "'1' is not an IPv4 address"),
            (
                "dhcp-option=2,-200b",
                "'-200b' does not fit the option's 1 byte(s)",
            ),
            (
                "dhcp-option=200,1.2.3.0/33",
                "'1.2.3.0/33' has no prefix length from 0 to 32",
            ),
        ] {
            assert_eq!(
                Directive::parse(line),
                Err(Refusal::Invalid(why.to_owned())),
                "{line}"
            );
        }
    }

    #[test]
    fn dhcp_option_forms_kvnet_has_no_use_for_are_refused_as_unsupported() {
        for line in [
            "dhcp-option=tag:pxe,option:bootfile-name,x.efi",
            "dhcp-option=net:pxe,67,x.efi",
            "dhcp-option=set:pxe,67,x.efi",
            "dhcp-option=mytag,3,10.0.0.1",
            "dhcp-option=option6:dns-server,[::1]",
            "dhcp-option=encap:175,27,1",
            "dhcp-option=vi-encap:2,1,x",
            "dhcp-option=vendor:PXEClient,6,2b",
            "dhcp-option=option:netmask,255.255.255.0",
            "dhcp-option=1,255.255.255.0",
            "dhcp-option=option:no-such-option,1",
            "dhcp-option=option:hostname,x",
            "dhcp-option=300,1",
            "dhcp-option=12,myname",
            "dhcp-option-force=58,100",
            "dhcp-option=82,01:02",
            "dhcp-option-force=tag:a,42,10.0.0.1",
        ] {
            assert_eq!(Directive::parse(line), Err(Refusal::Unsupported), "{line}");
        }
    }

    #[test]
    fn bad_dhcp_option_values_say_why() {
        let invalid = |line: &str| match Directive::parse(line) {
            Err(Refusal::Invalid(why)) => why,
            other => panic!("{line}: {other:?}"),
        };
        for (line, why) in [
            (
                "dhcp-option=42,ntp.example",
                "'ntp.example' is not an IPv4 address",
            ),
            ("dhcp-option=3,", "'' is not an IPv4 address"),
            (
                "dhcp-option=6,10.0.0.0/8",
                "'10.0.0.0/8' is not an IPv4 address",
            ),
            ("dhcp-option=option:mtu", "the option needs a value"),
            ("dhcp-option=67", "the option needs a value"),
            (
                "dhcp-option=26,67",
                "the MTU must be a number from 68 to 65535",
            ),
            (
                "dhcp-option=26,70000",
                "the MTU must be a number from 68 to 65535",
            ),
            (
                "dhcp-option=26,+1500",
                "the MTU must be a number from 68 to 65535",
            ),
            ("dhcp-option=26,1500,1400", "the MTU is one number"),
            ("dhcp-option=119,a..b", "'a..b' is not a domain name"),
            (
                "dhcp-option=121,10.0.0.0/8",
                "it must be pairs of NETWORK/PREFIX,ROUTER",
            ),
            (
                "dhcp-option=121,10.0.0.1,10.0.0.2",
                "'10.0.0.1' is not a NETWORK/PREFIX",
            ),
            (
                "dhcp-option=121,10.0.0.0/33,10.0.0.1",
                "'10.0.0.0/33' has no prefix length from 0 to 32",
            ),
            ("dhcp-option=67,\"open", "a quote is not closed"),
            (
                "dhcp-option=67,\"a\\qb\"",
                r#"a backslash in quotes must come before \, ", t, n, r, b or e"#,
            ),
        ] {
            assert_eq!(invalid(line), why, "{line}");
        }
        let many = vec!["10.0.0.1"; 64].join(",");
        assert_eq!(
            invalid(&format!("dhcp-option=42,{many}")),
            "it is longer than the 255 bytes a DHCP option holds"
        );
        assert_eq!(
            value(&format!(
                "dhcp-option=42,{}",
                vec!["10.0.0.1"; 63].join(",")
            ))
            .0,
            42
        );
        // Measured as sent: search domains sharing their parents compress (RFC 3397).
        // Twelve of these take 140 bytes, 492 written out.
        let search: Vec<String> = (0..12)
            .map(|n| format!("host{n:02}.departmentname.corp.example.com"))
            .collect();
        assert_eq!(
            value(&format!("dhcp-option=119,{}", search.join(","))).0,
            119
        );
        let distinct: Vec<String> = (0..12)
            .map(|n| format!("host{n:02}.departmentname{n:02}.corp{n:02}.example.com"))
            .collect();
        assert_eq!(
            invalid(&format!("dhcp-option=119,{}", distinct.join(","))),
            "it is longer than the 255 bytes a DHCP option holds"
        );
    }
}
