//! The wire form of the options a network's `dhcp-option=` lines add (read in
//! [`super::dnsmasq`]): what dnsmasq 2.90 would put in the option for the same line.
//! Kept with the reader, so that the length `net-define` checks is the length the DHCP
//! server sends.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::{ClasslessRoute, DhcpOptionValue};

/// `value` as option data, `None` for [`DhcpOptionValue::Omitted`] (nothing is sent).
/// `0.0.0.0` in an address list stands for `server`, the DHCP server's own address, as
/// in dnsmasq; in a route it stays, meaning on-link (RFC 3442).
pub fn dhcp_option_data(value: &DhcpOptionValue, server: Ipv4Addr) -> Option<Vec<u8>> {
    Some(match value {
        DhcpOptionValue::Omitted => return None,
        DhcpOptionValue::Addresses(addresses) => addresses
            .iter()
            .flat_map(|&ip| {
                let ip = if ip.is_unspecified() { server } else { ip };
                ip.octets()
            })
            .collect(),
        DhcpOptionValue::Text(text) => text.as_bytes().to_vec(),
        DhcpOptionValue::U16(number) => number.to_be_bytes().to_vec(),
        DhcpOptionValue::Domains(domains) => domain_list(domains),
        DhcpOptionValue::Routes(routes) => routes.iter().flat_map(route).collect(),
        DhcpOptionValue::Bytes(bytes) => bytes.clone(),
        DhcpOptionValue::SipAddresses(addresses) => std::iter::once(1)
            .chain(addresses.iter().flat_map(|ip| ip.octets()))
            .collect(),
        DhcpOptionValue::SipDomains(domains) => {
            let mut out = vec![0];
            out.extend(domain_list(domains));
            out
        }
    })
}

/// One RFC 3442 route: the prefix length, the destination's significant octets, the
/// router.
fn route(route: &ClasslessRoute) -> Vec<u8> {
    let significant = usize::from(route.prefix.min(32)).div_ceil(8);
    let mut out = vec![route.prefix];
    out.extend_from_slice(&route.destination.octets()[..significant]);
    out.extend_from_slice(&route.router.octets());
    out
}

/// Domain names in DNS wire format, one after another, later names pointing back at
/// the suffixes earlier ones share (RFC 3397 compression, as dnsmasq compresses them):
/// search lists repeat their parent domains, and the option holds 255 bytes.
fn domain_list(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    // Where each suffix seen so far starts, by its lowercased text.
    let mut suffixes: HashMap<String, usize> = HashMap::new();
    for domain in domains {
        let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
        let mut pointer = None;
        for at in 0..labels.len() {
            let suffix = labels[at..].join(".").to_ascii_lowercase();
            if let Some(&offset) = suffixes.get(&suffix) {
                pointer = Some(offset);
                break;
            }
            // A pointer has 14 bits for the offset.
            if out.len() < 0x4000 {
                suffixes.insert(suffix, out.len());
            }
            let label = labels[at].as_bytes();
            // Labels were checked to be 1 to 63 bytes when the definition was read.
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend_from_slice(label);
        }
        match pointer.and_then(|offset| u16::try_from(offset).ok()) {
            Some(offset) => out.extend_from_slice(&(0xc000 | offset).to_be_bytes()),
            None => out.push(0),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);

    #[test]
    fn addresses_stand_in_for_the_server_at_zero() {
        let value =
            DhcpOptionValue::Addresses(vec![Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 0, 0, 2)]);
        assert_eq!(
            dhcp_option_data(&value, SERVER),
            Some(vec![192, 168, 122, 1, 10, 0, 0, 2])
        );
        assert_eq!(dhcp_option_data(&DhcpOptionValue::Omitted, SERVER), None);
        assert_eq!(
            dhcp_option_data(&DhcpOptionValue::U16(9000), SERVER),
            Some(vec![0x23, 0x28])
        );
        assert_eq!(
            dhcp_option_data(&DhcpOptionValue::Text("ipxe.efi".into()), SERVER),
            Some(b"ipxe.efi".to_vec())
        );
    }

    #[test]
    fn routes_carry_only_their_significant_octets() {
        let route = |destination: [u8; 4], prefix, router: [u8; 4]| ClasslessRoute {
            destination: destination.into(),
            prefix,
            router: router.into(),
        };
        let value = DhcpOptionValue::Routes(vec![
            route([10, 0, 0, 0], 8, [192, 168, 122, 2]),
            route([172, 16, 32, 0], 20, [0, 0, 0, 0]),
            route([0, 0, 0, 0], 0, [192, 168, 122, 1]),
            route([10, 1, 2, 3], 32, [10, 0, 0, 1]),
        ]);
        assert_eq!(
            dhcp_option_data(&value, SERVER),
            Some(vec![
                8, 10, 192, 168, 122, 2, //
                20, 172, 16, 32, 0, 0, 0, 0, // on-link: 0.0.0.0 stays
                0, 192, 168, 122, 1, //
                32, 10, 1, 2, 3, 10, 0, 0, 1,
            ])
        );
    }

    #[test]
    fn search_domains_share_their_suffixes() {
        let value = DhcpOptionValue::Domains(vec![
            "eng.example.com".into(),
            "Example.com".into(),
            "lab.example.com".into(),
            "other.org".into(),
            String::new(),
        ]);
        let mut expected = b"\x03eng\x07example\x03com\x00".to_vec();
        expected.extend([0xc0, 4]); // example.com, found whatever its case
        expected.extend(b"\x03lab\xc0\x04");
        expected.extend(b"\x05other\x03org\x00");
        expected.push(0); // the root
        assert_eq!(dhcp_option_data(&value, SERVER), Some(expected));
    }
}
