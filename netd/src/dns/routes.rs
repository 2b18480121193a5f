//! Which servers a name is forwarded to: the network's `<forwarder domain=>`s, matched
//! as dnsmasq matches the `server=/DOMAIN/ADDR` lines libvirt writes of them.
//!
//! The most specific pattern wins: the one matching the most characters of the name,
//! and of two matching as many, a domain over a `*` suffix (dnsmasq gives `google.com`
//! to `/google.com/`, not `/*google.com/`).

use std::net::SocketAddr;

use super::zone::{fqdn, is_at_or_under, label_offsets, wire_key};
use crate::xml::{DnsForwarder, ForwarderDomain};

/// The domain routes of one network.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// In document order of their first forwarder; a pattern's servers in document
    /// order.
    routes: Vec<Route>,
    /// Whether a name's dotted text must be made to match it: only `*` patterns need it.
    has_suffixes: bool,
}

#[derive(Debug)]
struct Route {
    pattern: Pattern,
    servers: Vec<SocketAddr>,
}

#[derive(Debug, PartialEq, Eq)]
enum Pattern {
    /// A domain's [`wire_key`]: it and every name under it.
    Domain(Vec<u8>),
    /// Lowercased text the dotted name (no final dot) must end with.
    Suffix(Vec<u8>),
}

/// The route a name takes, and how many characters of the name its pattern matched.
pub(super) struct Matched<'a> {
    pub servers: &'a [SocketAddr],
    /// Characters of the dotted name the pattern matched.
    pub matched_chars: usize,
}

impl Routes {
    /// The routes of the `forwarders` that name a domain. A domain without an address goes
    /// to `defaults` (libvirt's `server=/DOMAIN/#`). Returns the text of the first domain
    /// that is no valid name.
    pub(super) fn new(
        forwarders: &[DnsForwarder],
        defaults: &[SocketAddr],
    ) -> Result<Routes, String> {
        let mut routes: Vec<Route> = Vec::new();
        let mut to_defaults = Vec::new();
        for forwarder in forwarders {
            let Some(text) = &forwarder.domain else {
                continue;
            };
            let pattern = match ForwarderDomain::of(text) {
                ForwarderDomain::Domain(name) => {
                    Pattern::Domain(wire_key(&fqdn(name).ok_or_else(|| text.clone())?))
                }
                ForwarderDomain::Suffix(suffix) => {
                    let suffix = suffix.strip_suffix('.').unwrap_or(suffix);
                    if suffix.is_empty() {
                        return Err(text.clone());
                    }
                    Pattern::Suffix(suffix.to_ascii_lowercase().into_bytes())
                }
            };
            match forwarder.addr {
                Some(addr) => {
                    let server = SocketAddr::new(addr, super::DNS_PORT);
                    match routes.iter_mut().find(|route| route.pattern == pattern) {
                        Some(route) => route.servers.push(server),
                        None => routes.push(Route {
                            pattern,
                            servers: vec![server],
                        }),
                    }
                }
                None => to_defaults.push(pattern),
            }
        }
        // A pattern with an address of its own keeps it; only the others go to defaults.
        for pattern in to_defaults {
            if !routes.iter().any(|route| route.pattern == pattern) {
                routes.push(Route {
                    pattern,
                    servers: defaults.to_vec(),
                });
            }
        }
        let has_suffixes = routes
            .iter()
            .any(|route| matches!(route.pattern, Pattern::Suffix(_)));
        Ok(Routes {
            routes,
            has_suffixes,
        })
    }

    /// The most specific route of the name `key` (a lowercased [`wire_key`]), if any.
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Matched<'_>> {
        let dotted = if self.has_suffixes {
            dotted(key)
        } else {
            Vec::new()
        };
        self.routes
            .iter()
            .filter_map(|route| {
                let (len, is_domain) = match &route.pattern {
                    Pattern::Domain(domain) => {
                        is_at_or_under(key, domain).then(|| (dotted_len(domain), true))?
                    }
                    Pattern::Suffix(suffix) => {
                        dotted.ends_with(suffix).then_some((suffix.len(), false))?
                    }
                };
                Some(((len, is_domain), route))
            })
            .max_by_key(|(rank, _)| *rank)
            .map(|((len, _), route)| Matched {
                servers: &route.servers,
                matched_chars: len,
            })
    }
}

/// The length of a name in wire form written dotted, without the final dot.
pub(super) fn dotted_len(key: &[u8]) -> usize {
    key.len().saturating_sub(2)
}

/// A name in wire form written dotted, without the final dot.
fn dotted(key: &[u8]) -> Vec<u8> {
    let mut text = Vec::with_capacity(key.len());
    for at in label_offsets(key) {
        let len = usize::from(key.get(at).copied().unwrap_or(0));
        if len == 0 {
            break;
        }
        if !text.is_empty() {
            text.push(b'.');
        }
        text.extend_from_slice(key.get(at + 1..at + 1 + len).unwrap_or_default());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Vec<u8> {
        wire_key(&fqdn(name).unwrap())
    }

    fn forwarder(domain: &str, addr: Option<&str>) -> DnsForwarder {
        DnsForwarder {
            addr: addr.map(|addr| addr.parse().unwrap()),
            domain: Some(domain.to_owned()),
        }
    }

    /// The last octet of the first server a name goes to, 0 for none.
    fn route_of(routes: &Routes, name: &str) -> u8 {
        match routes
            .lookup(&key(name))
            .map(|matched| matched.servers[0].ip())
        {
            Some(std::net::IpAddr::V4(ip)) => ip.octets()[3],
            _ => 0,
        }
    }

    #[test]
    fn suffix_patterns_match_text_and_domains_whole_labels() {
        let routes = Routes::new(
            &[
                forwarder("*google.com", Some("10.0.0.1")),
                forwarder("*.example.com", Some("10.0.0.2")),
                forwarder(".lab.net", Some("10.0.0.3")),
                forwarder("*-x.com", Some("10.0.0.4")),
                forwarder("_msdcs.corp.test", Some("10.0.0.5")),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(route_of(&routes, "foo-x.com"), 4);
        assert_eq!(route_of(&routes, "dc._msdcs.corp.test"), 5);
        for name in [
            "google.com",
            "www.google.com",
            "supergoogle.com",
            "WWW.Google.COM",
        ] {
            assert_eq!(route_of(&routes, name), 1, "{name}");
        }
        assert_eq!(route_of(&routes, "google.co"), 0);
        assert_eq!(route_of(&routes, "a.example.com"), 2);
        assert_eq!(route_of(&routes, "a.b.example.com"), 2);
        // `*.example.com` is the names under the domain, not the domain.
        assert_eq!(route_of(&routes, "example.com"), 0);
        assert_eq!(route_of(&routes, "myexample.com"), 0);
        // `.lab.net` is dnsmasq's old spelling of `lab.net`.
        assert_eq!(route_of(&routes, "lab.net"), 3);
        assert_eq!(route_of(&routes, "x.lab.net"), 3);
        assert_eq!(route_of(&routes, "xlab.net"), 0);
    }

    #[test]
    fn the_longest_match_wins_and_a_domain_wins_a_tie() {
        // dnsmasq's own examples: `/google.com/` and `/*google.com/` together leave the
        // wildcard only `supergoogle.com`; `/*.google.com/` is longer than `/google.com/`.
        let routes = Routes::new(
            &[
                forwarder("*google.com", Some("10.0.0.1")),
                forwarder("google.com", Some("10.0.0.2")),
                forwarder("*.mail.google.com", Some("10.0.0.3")),
                forwarder("*.mail.google.com", None),
            ],
            &["10.0.0.9:53".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(route_of(&routes, "google.com"), 2);
        assert_eq!(route_of(&routes, "www.google.com"), 2);
        assert_eq!(route_of(&routes, "supergoogle.com"), 1);
        assert_eq!(route_of(&routes, "a.mail.google.com"), 3);
        assert_eq!(route_of(&routes, "mail.google.com"), 2);

        let carved = Routes::new(
            &[
                forwarder("google.com", Some("10.0.0.2")),
                forwarder("*.mail.google.com", None),
            ],
            &["10.0.0.9:53".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(route_of(&carved, "a.mail.google.com"), 9);
        assert_eq!(route_of(&carved, "mail.google.com"), 2);
        assert_eq!(
            carved
                .lookup(&key("a.mail.google.com"))
                .map(|m| m.matched_chars),
            Some(".mail.google.com".len())
        );
        assert_eq!(
            carved.lookup(&key("x.google.com")).map(|m| m.matched_chars),
            Some("google.com".len())
        );
    }

    #[test]
    fn a_bare_star_is_no_pattern() {
        assert_eq!(
            Routes::new(&[forwarder("*", Some("10.0.0.1"))], &[]).unwrap_err(),
            "*"
        );
        assert_eq!(
            Routes::new(&[forwarder("*.", Some("10.0.0.1"))], &[]).unwrap_err(),
            "*."
        );
    }
}
