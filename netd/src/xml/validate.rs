//! Semantic checks on a [`NetworkDef`], with libvirt's wording where libvirt
//! has a check, and kvnet's own where it is stricter (names, bridge names,
//! hosts outside the subnet).

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{
    ForwardMode, ForwarderDomain, IpDef, IpFamily, Lease, LeaseUnit, MacAddr, NetworkDef, RouteDef,
    netmask_prefix,
};
use super::{Class, Error, invalid, invalid_as};

/// Longest accepted network name in bytes. The name becomes a file name
/// (`NAME.xml`, `NAME.conf`, `NAME.hostsfile`, ...), so it must stay well
/// under `NAME_MAX` (255) with suffixes; 128 leaves room and is far above
/// what tools generate (`mk-<cluster>`, `docker-machines`).
pub const NETWORK_NAME_MAX_BYTES: usize = 128;

/// The smallest MTU IPv6 works with (RFC 8200).
const IPV6_MIN_MTU: u32 = 1280;

/// Longest Linux interface name (`IFNAMSIZ - 1`).
pub(super) const IFNAME_MAX_BYTES: usize = 15;

/// Checks that `name` is safe to use as a network name and file name:
/// non-empty, at most [`NETWORK_NAME_MAX_BYTES`] bytes, no `/` (libvirt's
/// rule), no leading `.` (hides the file, and `.`/`..` are directories), no
/// control characters, no invisible formatting characters (Unicode category
/// Cf), no leading or trailing whitespace.
pub fn validate_network_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid_as(Class::NoName, "network name must not be empty"));
    }
    if name.len() > NETWORK_NAME_MAX_BYTES {
        return Err(invalid(format!(
            "network name '{name}' is too long ({} bytes, limit {NETWORK_NAME_MAX_BYTES})",
            name.len()
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid_as(
            Class::XmlDetail,
            format!("network name {name:?} must not contain control characters"),
        ));
    }
    if let Some(format_char) = name.chars().find(|&c| is_format_character(c)) {
        return Err(invalid(format!(
            "network name {name:?} must not contain the invisible formatting character U+{:04X}",
            u32::from(format_char)
        )));
    }
    if name.contains('/') {
        return Err(invalid_as(
            Class::XmlDetail,
            format!("network name '{name}' must not contain '/'"),
        ));
    }
    if name.starts_with('.') {
        return Err(invalid(format!(
            "network name '{name}' must not start with '.'"
        )));
    }
    if name.trim() != name {
        return Err(invalid(format!(
            "network name '{name}' must not start or end with whitespace"
        )));
    }
    Ok(())
}

/// Unicode general category Cf (format characters, Unicode 16): invisible
/// characters such as bidi overrides and isolates, zero-width spaces and
/// joiners, the BOM, the soft hyphen and tag characters. In a name they make
/// two networks look identical or reorder the text around them in listings.
/// std has no category tables, so the ranges are listed here.
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

fn is_format_character(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Longest DNS name in presentation form without the trailing dot (RFC 1035).
const DNS_NAME_MAX_BYTES: usize = 253;

/// Longest DNS label (RFC 1035).
const DNS_LABEL_MAX_BYTES: usize = 63;

/// Why a string is not a usable DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DnsNameError {
    /// Nothing but (at most) the root dot.
    #[error("the name is empty")]
    Empty,
    /// Longer than [`DNS_NAME_MAX_BYTES`].
    #[error("the name is {0} bytes long, limit {DNS_NAME_MAX_BYTES}")]
    TooLong(usize),
    /// `a..b`, or a leading dot.
    #[error("it has an empty label")]
    EmptyLabel,
    /// A label longer than [`DNS_LABEL_MAX_BYTES`].
    #[error("label '{0}' is longer than {DNS_LABEL_MAX_BYTES} bytes")]
    LabelTooLong(String),
    /// A label starting or ending with `-` (RFC 1123).
    #[error("label '{0}' starts or ends with '-'")]
    HyphenAtLabelEdge(String),
    /// Anything but letters, digits, `-` (and `_` where allowed).
    #[error("it contains the invalid character {0:?}")]
    InvalidCharacter(char),
}

/// Checks `name` as RFC 1123 host or domain name: dot-separated labels of
/// ASCII letters, digits and inner hyphens, at most 253 bytes; one trailing
/// dot (an absolute name) is accepted. `allow_underscore` admits `_` as in
/// TXT record names (`_dmarc`), which libvirt accepts too. The DNS server
/// and the hosts files would otherwise meet these names only at start.
pub(crate) fn check_dns_name(name: &str, allow_underscore: bool) -> Result<(), DnsNameError> {
    let relative = name.strip_suffix('.').unwrap_or(name);
    if relative.is_empty() {
        return Err(DnsNameError::Empty);
    }
    if relative.len() > DNS_NAME_MAX_BYTES {
        return Err(DnsNameError::TooLong(relative.len()));
    }
    for label in relative.split('.') {
        if label.is_empty() {
            return Err(DnsNameError::EmptyLabel);
        }
        if let Some(bad) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_')))
        {
            return Err(DnsNameError::InvalidCharacter(bad));
        }
        if label.len() > DNS_LABEL_MAX_BYTES {
            return Err(DnsNameError::LabelTooLong(label.to_string()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DnsNameError::HyphenAtLabelEdge(label.to_string()));
        }
    }
    Ok(())
}

/// Checks a Linux interface name the way the kernel's `dev_valid_name`
/// does (1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace), and also
/// refuses `%` (libvirt's `virbr%d` templates are resolved before saving).
/// `what` names the field in the message, e.g. `bridge name`.
pub fn validate_ifname(what: &str, name: &str, network: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(invalid(format!(
            "{what} in network '{network}' must not be empty"
        )));
    }
    if name.len() > IFNAME_MAX_BYTES {
        return Err(invalid(format!(
            "{what} '{name}' in network '{network}' is too long ({} bytes, limit {IFNAME_MAX_BYTES})",
            name.len()
        )));
    }
    if name == "." || name == ".." {
        return Err(invalid(format!(
            "{what} '{name}' in network '{network}' is not a valid interface name"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| matches!(c, '/' | ':' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!(
            "{what} {name:?} in network '{network}' contains the invalid character {bad:?}"
        )));
    }
    Ok(())
}

impl NetworkDef {
    /// Checks the whole definition; [`NetworkDef::from_xml`] calls this, and
    /// callers that edit a definition (net-update) should call it again.
    pub fn validate(&self) -> Result<(), Error> {
        validate_network_name(&self.name)?;
        let name = self.name.as_str();
        self.validate_portgroups()?;
        if self.title.as_deref().is_some_and(|t| t.contains('\n')) {
            return Err(invalid("Network title can't contain newlines"));
        }
        if let Some(bridge) = &self.bridge.name {
            match bridge.split_once("%d") {
                // A template: its names are checked as they are made, at define.
                Some((head, tail)) if head.contains('%') || tail.contains('%') => {
                    return Err(invalid(format!(
                        "bridge name template '{bridge}' in network '{name}' must contain '%' only in a single '%d'"
                    )));
                }
                Some((head, tail)) => {
                    validate_ifname("bridge name", &format!("{head}0{tail}"), name)?;
                }
                None => validate_ifname("bridge name", bridge, name)?,
            }
        }
        if let Some(dev) = &self.forward.dev {
            validate_ifname("forward dev", dev, name)?;
        }
        if let Some(mac) = self.mac {
            if mac.is_multicast() {
                return Err(invalid(format!(
                    "Invalid multicast bridge mac address '{mac}' in network '{name}'"
                )));
            }
            if mac.is_zero() {
                return Err(invalid(format!(
                    "Invalid bridge mac address '{mac}' in network '{name}'"
                )));
            }
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!(
                "Invalid mtu size '{mtu}' in network '{name}' (must be 68..65535)"
            )));
        }
        // IPv6 needs 1280: below it the kernel takes IPv6 off the bridge, addresses and all.
        if let Some(mtu) = self.mtu
            && mtu < IPV6_MIN_MTU
            && self.first_ipv6().is_some()
        {
            return Err(invalid(format!(
                "mtu size '{mtu}' in network '{name}' is below the {IPV6_MIN_MTU} IPv6 needs, and the network has an IPv6 address"
            )));
        }
        self.validate_forward()?;
        self.validate_dns()?;
        let mut addresses = HashSet::new();
        for ip in &self.ips {
            // Also catches 10.9.0.1/24 next to 10.9.0.1/16: the kernel
            // refuses the second address on the bridge at start.
            if !addresses.insert(ip.address) {
                return Err(invalid(format!(
                    "IP address '{}' is given in more than one <ip> of network '{name}'",
                    ip.address
                )));
            }
            self.validate_ip(ip)?;
        }
        for route in &self.routes {
            self.validate_route(route)?;
        }
        let mut tftp_roots = self.ips.iter().filter_map(|ip| ip.tftp_root.as_deref());
        if let Some(root) = tftp_roots.next() {
            if !root.starts_with('/') || root.contains('\0') {
                return Err(invalid(format!(
                    "TFTP root '{}' of network '{name}' is not an absolute path",
                    root.escape_debug()
                )));
            }
            if tftp_roots.next().is_some() {
                return Err(invalid(format!(
                    "more than one <ip> of network '{name}' has <tftp>: kvnet serves TFTP on one address"
                )));
            }
        }
        self.validate_dhcp_count()
    }

    /// A route kvnet can add on the bridge: through a gateway inside one of the network's
    /// own subnets (libvirt's "unreachable static route gateway"), on a network with a
    /// bridge of its own. The route itself was checked as it was read.
    fn validate_route(&self, route: &RouteDef) -> Result<(), Error> {
        let name = self.name.as_str();
        if self.forward.mode == ForwardMode::Bridge {
            return Err(invalid(format!(
                "Unsupported <route> element in network {name} with forward mode='bridge'"
            )));
        }
        let reachable = self
            .ips
            .iter()
            .filter_map(IpDef::subnet)
            .any(|subnet| subnet.contains(&route.gateway));
        if !reachable {
            return Err(invalid_as(
                Class::ConfigUnsupported,
                format!(
                    "unreachable static route gateway '{}' specified for network '{name}'",
                    route.gateway
                ),
            ));
        }
        Ok(())
    }

    /// At most one default group, and no two of the same name (libvirt's
    /// `networkValidate`).
    fn validate_portgroups(&self) -> Result<(), Error> {
        let name = &self.name;
        let mut default: Option<&str> = None;
        // A set, not a scan of the later groups: a definition with 10^5 groups must not
        // hold the daemon for minutes, at every start too.
        let mut seen = std::collections::HashSet::with_capacity(self.portgroups.len());
        for group in &self.portgroups {
            if group.default {
                if let Some(first) = default {
                    return Err(invalid_as(
                        Class::ConfigUnsupported,
                        format!(
                            "network '{name}' has multiple default <portgroup> elements ({first} and {}), but only one default is allowed",
                            group.name
                        ),
                    ));
                }
                default = Some(&group.name);
            }
            if !seen.insert(group.name.as_str()) {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "multiple <portgroup> elements with the same name ({}) in network '{name}'",
                        group.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_forward(&self) -> Result<(), Error> {
        let name = self.name.as_str();
        let mode = self.forward.mode;
        let unsupported_with_mode = |element: &str| {
            invalid_as(
                Class::ConfigUnsupported,
                format!(
                    "Unsupported <{element}> element in network {name} with forward mode='{mode}'"
                ),
            )
        };
        if mode != ForwardMode::Nat && !self.forward.nat.is_empty() {
            return Err(invalid(format!(
                "The <nat> element can only be used when <forward> 'mode' is 'nat' in network {name}"
            )));
        }
        match mode {
            ForwardMode::Isolated => {
                if self.forward.dev.is_some() {
                    return Err(invalid(format!(
                        "forward dev requires a <forward> element in network '{name}'"
                    )));
                }
            }
            ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open => {
                if self.ips.is_empty() {
                    return Err(invalid(format!(
                        "{mode} forwarding requested, but no IP address provided for network '{name}'"
                    )));
                }
                if mode == ForwardMode::Open && self.forward.dev.is_some() {
                    return Err(invalid(format!(
                        "forward dev not allowed for network '{name}' with forward mode='open'"
                    )));
                }
            }
            ForwardMode::Bridge
            | ForwardMode::Private
            | ForwardMode::Vepa
            | ForwardMode::Passthrough => {
                // libvirt's order (virNetworkDefParseXML, then networkValidate).
                if mode != ForwardMode::Bridge && self.bridge.name.is_some() {
                    return Err(invalid(format!(
                        "bridge name not allowed in {mode} mode (network '{name}')"
                    )));
                }
                if !self.bridge.stp || self.bridge.delay != 0 {
                    return Err(invalid(format!(
                        "bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in {mode} (network '{name}')"
                    )));
                }
                if self.bridge.name.is_some()
                    && (self.forward.dev.is_some() || !self.forward.interfaces.is_empty())
                {
                    return Err(invalid(format!(
                        "A network with forward mode='{mode}' can specify a bridge name or a forward dev, but not both (network '{name}')"
                    )));
                }
                if self.mtu.is_some() {
                    return Err(invalid(format!(
                        "mtu size only allowed in open, route, nat, and isolated mode, not in {mode} (network '{name}')"
                    )));
                }
                if self.mac.is_some() {
                    return Err(unsupported_with_mode("mac"));
                }
                if !self.ips.is_empty() {
                    return Err(unsupported_with_mode("ip"));
                }
                if !(self.dns.txts.is_empty()
                    && self.dns.hosts.is_empty()
                    && self.dns.srvs.is_empty())
                {
                    return Err(unsupported_with_mode("dns"));
                }
                if self.domain.is_some() {
                    return Err(unsupported_with_mode("domain"));
                }
                if self.macvtap_mode().is_some()
                    && let Some(group) = self.portgroups.iter().find(|g| g.bandwidth.is_some())
                {
                    return Err(invalid_as(
                        Class::ConfigUnsupported,
                        format!(
                            "Unsupported <bandwidth> element in network '{name}' in portgroup '{}' with forward mode='{mode}'",
                            group.name
                        ),
                    ));
                }
                for dev in &self.forward.interfaces {
                    validate_ifname("forward interface", dev, name)?;
                }
            }
        }
        if let Some(range) = self.forward.nat.address
            && range.start > range.end
        {
            return Err(invalid_as(
                Class::Internal,
                // libvirt's words, trailing space included.
                format!("range {} - {} is reversed ", range.start, range.end),
            ));
        }
        if let Some(ports) = self.forward.nat.port
            && ports.end < ports.start
        {
            return Err(invalid_as(
                Class::XmlDetail,
                format!(
                    "Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network {name}"
                ),
            ));
        }
        Ok(())
    }

    fn validate_dns(&self) -> Result<(), Error> {
        let name = self.name.as_str();
        let dns = &self.dns;
        let bad_name = |what: &str, value: &str, allow_underscore: bool| {
            check_dns_name(value, allow_underscore).map_err(|reason| {
                invalid(format!(
                    "invalid {what} '{value}' in network '{name}': {reason}"
                ))
            })
        };
        if let Some(domain) = &self.domain {
            if domain.name.is_empty() {
                return Err(invalid(format!(
                    "empty <domain name=''/> in network '{name}'"
                )));
            }
            bad_name("domain name", &domain.name, false)?;
        }
        if dns.enable == Some(false) && dns.has_records() {
            return Err(invalid(format!("Extra data in disabled network '{name}'")));
        }
        for forwarder in &dns.forwarders {
            if forwarder.addr.is_none() && forwarder.domain.is_none() {
                return Err(invalid(
                    "Invalid forwarder element, must contain at least one of addr or domain",
                ));
            }
            if let Some(domain) = &forwarder.domain {
                let pattern = ForwarderDomain::of(domain);
                if matches!(pattern, ForwarderDomain::Suffix(_)) && pattern.name().is_empty() {
                    return Err(invalid(format!(
                        "invalid DNS forwarder domain '{domain}' in network '{name}': a '*' must be \
                         followed by a domain (a <forwarder> without a domain forwards every name)"
                    )));
                }
                // `*-x.com` ends names like `foo-x.com`: its first label may be the end
                // of one, so it is checked as such. Underscores are allowed, for zones
                // such as Active Directory's `_msdcs`.
                let checked = match pattern {
                    ForwarderDomain::Suffix(suffix) if !suffix.starts_with('.') => {
                        format!("x{}", pattern.name())
                    }
                    _ => pattern.name().to_owned(),
                };
                check_dns_name(&checked, true).map_err(|reason| {
                    invalid(format!(
                        "invalid DNS forwarder domain '{domain}' in network '{name}': {reason}"
                    ))
                })?;
            }
        }
        for txt in &dns.txts {
            // A space or comma is refused as it is parsed (delete patterns included).
            if txt.name.is_empty() {
                return Err(invalid_as(
                    Class::XmlDetail,
                    format!(
                        "prohibited character in DNS TXT record name '{}' of network {name}",
                        txt.name
                    ),
                ));
            }
            bad_name("DNS TXT record name", &txt.name, true)?;
        }
        // The service, protocol, port, priority and weight are checked as they are
        // parsed, in libvirt's order, delete patterns included.
        for srv in &dns.srvs {
            if let Some(domain) = &srv.domain {
                bad_name("DNS SRV domain", domain, false)?;
            }
            // A target of '.' is RFC 2782's "the service is decidedly not available
            // at this domain"; libvirt accepts it and the zone encodes it as the root.
            if let Some(target) = srv.target.as_deref().filter(|&t| t != ".") {
                bad_name("DNS SRV target", target, false)?;
            }
        }
        for host in &dns.hosts {
            if host.hostnames.is_empty() || host.hostnames.iter().any(String::is_empty) {
                return Err(invalid_as(
                    Class::XmlDetail,
                    format!("Missing hostname in network '{name}' DNS HOST record"),
                ));
            }
            for hostname in &host.hostnames {
                // dnsmasq's legal_hostname takes `_`, as do guests' DHCP names here.
                bad_name("DNS HOST hostname", hostname, true)?;
            }
        }
        Ok(())
    }

    fn validate_ip(&self, ip: &IpDef) -> Result<(), Error> {
        let name = self.name.as_str();
        let address = ip.address;
        // libvirt writes <dhcp> out only with a range or host, dropping a lone <bootp>
        // (also what a net-update deleting the last range would leave).
        if ip.dhcp_bootp.is_some() && !ip.has_dhcp() {
            return Err(invalid(format!(
                "<bootp> of address '{address}' in network '{name}' needs a <range> or <host> in the same <dhcp>"
            )));
        }
        match (ip.family, address) {
            (None, IpAddr::V6(_)) => {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "no family specified for non-IPv4 address '{address}' in network '{name}'"
                    ),
                ));
            }
            (Some(IpFamily::Ipv4), IpAddr::V6(_)) => {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "ipv4 family specified for non-IPv4 address '{address}' in network '{name}'"
                    ),
                ));
            }
            (Some(IpFamily::Ipv6), IpAddr::V4(_)) => {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "Family 'ipv6' specified for non-IPv6 address '{address}' in network '{name}'"
                    ),
                ));
            }
            _ => {}
        }
        if let Some(reason) = unassignable_reason(address) {
            return Err(invalid(format!(
                "Invalid <ip> address '{address}' in network '{name}': {reason}"
            )));
        }
        if ip.netmask.is_some() && ip.prefix.is_some() {
            return Err(invalid_as(
                Class::ConfigUnsupported,
                format!("Network '{name}' IP address cannot have both a prefix and a netmask"),
            ));
        }
        if let Some(mask) = ip.netmask {
            if address.is_ipv6() {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!("netmask not allowed for IPv6 address '{address}' in network '{name}'"),
                ));
            }
            if netmask_prefix(mask).is_none_or(|p| p == 0) {
                return Err(invalid(format!(
                    "Invalid netmask '{mask}' in network '{name}' (not a contiguous netmask)"
                )));
            }
        }
        if let Some(prefix) = ip.prefix {
            let (family, max) = if address.is_ipv4() {
                ("IPv4", 32)
            } else {
                ("IPv6", 128)
            };
            if prefix == 0 || prefix > max {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!("Invalid {family} prefix '{prefix}' in network '{name}'"),
                ));
            }
        }
        if ip.local_ptr == Some(true) && ip.ptr_domain().is_none() {
            return Err(invalid_as(
                Class::ConfigUnsupported,
                format!(
                    "PTR domain for {} network with prefix {} cannot be automatically created",
                    if address.is_ipv4() { "IPv4" } else { "IPv6" },
                    ip.prefix_len().unwrap_or(0)
                ),
            ));
        }
        let subnet = ip.subnet().ok_or_else(|| {
            invalid(format!(
                "cannot determine the prefix of address '{address}' in network '{name}'; give a netmask or prefix"
            ))
        })?;
        // In an IPv4 subnet of more than two addresses, the first is the network's own and
        // the last its broadcast address: neither can be the bridge's.
        if let IpNet::V4(v4) = subnet
            && v4.prefix_len() < 31
            && (IpAddr::V4(v4.network()) == address || IpAddr::V4(v4.broadcast()) == address)
        {
            return Err(invalid(format!(
                "Invalid <ip> address '{address}' in network '{name}': it is the network or broadcast address of {}",
                v4.trunc()
            )));
        }
        if !ip.has_dhcp() {
            return Ok(());
        }
        for range in &ip.dhcp_ranges {
            check_range(subnet, range.start, range.end)?;
            if let Some(lease) = range.lease {
                check_lease(lease)?;
            }
        }
        for host in &ip.dhcp_hosts {
            let host_ip = host.ip;
            if host_ip.is_ipv4() != address.is_ipv4() {
                return Err(invalid_as(
                    Class::OperationInvalid,
                    "the address family of a host entry IP must match the address family of the dhcp element's parent",
                ));
            }
            if let Some(text) = &host.mac_text
                && text.parse::<MacAddr>().ok() != host.mac
            {
                return Err(invalid(format!(
                    "dhcp <host> {host_ip} in network '{name}': MAC spelling '{text}' does not match its address"
                )));
            }
            check_dhcp_host_identity(
                name,
                address.is_ipv6(),
                host.mac,
                host.mac_display().as_deref(),
                host.id.as_deref(),
                host.name.as_deref(),
            )?;
            if let Some(id) = &host.id {
                if address.is_ipv4() {
                    return Err(invalid(format!(
                        "unsupported id '{id}' on dhcp <host> {host_ip} in network '{name}': it is a DHCPv6 client DUID, DHCPv4 reservations use mac"
                    )));
                }
                // libvirt checks only the characters; dnsmasq would then ignore an id it
                // cannot read as bytes. Refuse it instead of never matching the client.
                if host.duid().is_none() {
                    return Err(invalid(format!(
                        "Invalid id '{id}' of network '{name}': a DUID is 1 to {} hex bytes separated by ':'",
                        super::model::MAX_DUID_LEN
                    )));
                }
            }
            if address.is_ipv6() && host.id.is_none() && host.name.is_none() {
                return Err(invalid(format!(
                    "Static host definition in IPv6 network '{name}' must have id or name attribute"
                )));
            }
            if address.is_ipv4() && host.mac.is_none() && host.name.is_none() {
                return Err(invalid(format!(
                    "Static host definition in IPv4 network '{name}' must have mac or name attribute"
                )));
            }
            if let Some(lease) = host.lease {
                check_lease(lease)?;
            }
        }
        Ok(())
    }

    fn validate_dhcp_count(&self) -> Result<(), Error> {
        for (ipv4, family) in [(true, "IPv4"), (false, "IPv6")] {
            let with_dhcp = self
                .ips
                .iter()
                .filter(|ip| ip.is_ipv4() == ipv4 && ip.has_dhcp())
                .count();
            if with_dhcp > 1 {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "Multiple {family} dhcp sections found -- dhcp is supported only for a single {family} address on each network"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Why `address` cannot be the bridge's own address, if it cannot.
fn unassignable_reason(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address cannot be a host address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address cannot be a host address"),
        // fe80::/10: the kernel gives every bridge its own link-local address.
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            Some("link-local addresses are assigned by the kernel, not configured")
        }
        address if address.is_loopback() => Some("a loopback address belongs to lo"),
        address if address.is_unspecified() => Some("the unspecified address is no host's"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address is no host's"),
        _ => None,
    }
}

/// libvirt's `virSocketAddrGetRange` checks, in its order and words: like libvirt, the
/// messages show the `<ip>` address with its prefix, not the network address.
pub(crate) fn check_range(subnet: IpNet, start: IpAddr, end: IpAddr) -> Result<(), Error> {
    let internal = |message: String| Err(invalid_as(Class::Internal, message));
    if start.is_ipv4() != end.is_ipv4() {
        return internal(format!(
            "mismatch of address family in range {start} - {end}"
        ));
    }
    if start.is_ipv4() != subnet.addr().is_ipv4() {
        return internal(format!(
            "mismatch of address family in range {start} - {end} for network {}",
            subnet.addr()
        ));
    }
    if !subnet.contains(&start) || !subnet.contains(&end) {
        return internal(format!(
            "range {start} - {end} is not entirely within network {subnet}"
        ));
    }
    if let IpNet::V4(v4) = subnet.trunc() {
        // A /31 has neither (RFC 3021); libvirt refuses both of its addresses.
        if start == IpAddr::V4(v4.network()) && v4.prefix_len() < 31 {
            return internal(format!(
                "start of range {start} - {end} in network {subnet} is the network address"
            ));
        }
        if end == IpAddr::V4(v4.broadcast()) && v4.prefix_len() < 31 {
            return internal(format!(
                "end of range {start} - {end} in network {subnet} is the broadcast address"
            ));
        }
    }
    let too_large = match (start, end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => s.octets()[..2] != e.octets()[..2],
        (IpAddr::V6(s), IpAddr::V6(e)) => s.segments()[..7] != e.segments()[..7],
        _ => false,
    };
    if too_large {
        return internal(format!("range {start} - {end} is too large (> 65535)"));
    }
    if start > end {
        // libvirt's words, trailing space included.
        return internal(match start {
            IpAddr::V4(_) => format!("range {start} - {end} is reversed "),
            IpAddr::V6(_) => format!("range {start} - {end} start larger than end"),
        });
    }
    // A range may contain the bridge's own address (vagrant-libvirt's management
    // network starts its range there, and libvirt accepts it): the DHCP server
    // never hands that address out.
    Ok(())
}

fn check_lease(lease: Lease) -> Result<(), Error> {
    let too_short = match lease.unit {
        LeaseUnit::Seconds => lease.expiry < 120,
        LeaseUnit::Minutes => lease.expiry < 2,
        LeaseUnit::Hours => false,
    };
    if lease.expiry > 0 && too_short {
        return Err(invalid_as(
            Class::ConfigUnsupported,
            "The minimum lease time should be greater than 2 minutes",
        ));
    }
    Ok(())
}

impl NetworkDef {
    /// Refuses a DHCP `<host>` its guest could never get: outside its `<ip>`'s subnet, at
    /// the bridge's own address, or at an IPv4 subnet's network or broadcast address.
    /// Checked when a definition is given (define, create, net-update), not when one is
    /// loaded: libvirt takes such a host (its dnsmasq ignores it), so a libvirt host's
    /// file or one stored before this check must still load; the DHCP servers leave it
    /// out.
    pub fn check_dhcp_hosts_usable(&self) -> Result<(), Error> {
        for ip in self.ips.iter().filter(|ip| ip.has_dhcp()) {
            for host in &ip.dhcp_hosts {
                check_dhcp_host_usable(&self.name, ip, host.ip)?;
            }
        }
        Ok(())
    }

    /// The `<host>`s of `ip` a DHCP server serves: those
    /// [`NetworkDef::check_dhcp_hosts_usable`] takes (a loaded definition may hold
    /// others).
    pub fn usable_dhcp_hosts<'a>(
        &'a self,
        ip: &'a IpDef,
    ) -> impl Iterator<Item = &'a super::model::DhcpHost> {
        ip.dhcp_hosts
            .iter()
            .filter(move |host| check_dhcp_host_usable(&self.name, ip, host.ip).is_ok())
    }
}

/// The checks libvirt's `virNetworkDHCPHostDefParseXML` makes of a `<dhcp><host>`'s
/// mac, id and name, in its order. A net-update delete pattern gets them too, so a
/// pattern no host could have (a MAC on an IPv6 `<ip>`, where hosts have none and
/// would all match it) is refused instead of deleting an unrelated host.
pub(crate) fn check_dhcp_host_identity(
    network: &str,
    ipv6: bool,
    mac: Option<MacAddr>,
    mac_shown: Option<&str>,
    id: Option<&str>,
    host_name: Option<&str>,
) -> Result<(), Error> {
    if ipv6 && let Some(mac) = mac_shown {
        return Err(invalid(format!(
            "Invalid to specify MAC address '{mac}' in network '{network}' IPv6 static host definition"
        )));
    }
    if let Some(mac) = mac
        && mac.is_multicast()
    {
        return Err(invalid(format!(
            "expected unicast mac address, found multicast '{}' in network '{network}'",
            mac_shown.map_or_else(|| mac.to_string(), str::to_string)
        )));
    }
    if let Some(id) = id
        && let Some(bad) = id.chars().find(|c| !c.is_ascii_hexdigit() && *c != ':')
    {
        return Err(invalid(format!(
            "Invalid character '{bad}' in id '{id}' of network '{network}'"
        )));
    }
    if let Some(host_name) = host_name {
        if !host_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(format!(
                "Cannot use host name '{host_name}' in network '{network}'"
            )));
        }
        if let Err(reason) = check_dns_name(host_name, true) {
            return Err(invalid(format!(
                "Cannot use host name '{host_name}' in network '{network}': {reason}"
            )));
        }
    }
    Ok(())
}

/// [`NetworkDef::check_dhcp_hosts_usable`] for one host address of `ip`: within its
/// subnet, not the bridge's address, nor the network or broadcast address of an IPv4
/// subnet.
pub(crate) fn check_dhcp_host_usable(
    network: &str,
    ip: &IpDef,
    host_ip: IpAddr,
) -> Result<(), Error> {
    let Some(subnet) = ip.subnet() else {
        return Ok(());
    };
    if !subnet.contains(&host_ip) {
        return Err(invalid(format!(
            "static host address {host_ip} is not within network {} of network '{network}'",
            subnet.trunc()
        )));
    }
    if host_ip == ip.address {
        return Err(invalid(format!(
            "static host address {host_ip} in network '{network}' is the bridge address"
        )));
    }
    let IpNet::V4(v4) = subnet else {
        return Ok(());
    };
    if v4.prefix_len() >= 31 {
        return Ok(());
    }
    let which = if host_ip == IpAddr::V4(v4.network()) {
        "network"
    } else if host_ip == IpAddr::V4(v4.broadcast()) {
        "broadcast"
    } else {
        return Ok(());
    };
    Err(invalid(format!(
        "static host address {host_ip} in network '{network}' is the {which} address of {}",
        v4.trunc()
    )))
}
