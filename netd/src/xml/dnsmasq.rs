//! `<dnsmasq:options>`: the dnsmasq config lines libvirt passes through
//! (namespace `http://libvirt.org/schemas/network/dnsmasq/1.0`, any prefix).

use std::net::IpAddr;

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

/// dnsmasq's largest `cache-size` (its `CACHESIZ` limit in option.c is 10000 in
/// the versions libvirt ships with).
pub const MAX_CACHE_SIZE: u32 = 10_000;

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
            ("cache-size", Some(value)) => match value.parse::<u32>() {
                Ok(size) if size <= MAX_CACHE_SIZE => Ok(Directive::CacheSize(size)),
                _ => Err(Refusal::Invalid(format!(
                    "the cache size must be a number from 0 to {MAX_CACHE_SIZE}"
                ))),
            },
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
