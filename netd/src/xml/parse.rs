//! Element tree -> [`NetworkDef`]. Every element and attribute is either
//! mapped into the model or rejected; nothing is skipped silently.

use std::net::{IpAddr, Ipv4Addr};

use uuid::Uuid;

use super::dnsmasq::{Directive, DnsmasqOption, Refusal};
use super::dom::{Element, parse_document};
use super::model::{
    Bootp, Bridge, DhcpHost, DhcpRange, Dns, DnsForwarder, DnsHost, DnsSrv, DnsTxt, Domain,
    Forward, ForwardMode, IpDef, IpFamily, Lease, LeaseUnit, MacAddr, MacTableManager, Nat,
    NatAddressRange, NetworkDef, PortGroup, PortRange, RouteDef,
};
use super::{Class, Error, invalid, invalid_as};

impl NetworkDef {
    /// Parses and validates a libvirt `<network>` document. Leading
    /// comments (such as libvirt's "AUTO-GENERATED FILE" header) and an XML
    /// declaration are accepted. Defaults are *not* filled in; call
    /// [`NetworkDef::fill_defaults`] before persisting a new definition.
    pub fn from_xml(input: &str) -> Result<NetworkDef, Error> {
        NetworkDef::parse(input, false)
    }

    /// Reads a definition from the daemon's own files (a definition on disk, a running
    /// network's status) as [`NetworkDef::from_xml`] does, but taking what kvnet took
    /// before it checked `<route>`s as libvirt does, so that an upgrade loses no
    /// network: a route to IPv6 addresses without `family='ipv6'` (which it now gets),
    /// or with neither prefix nor netmask (the subnet of its address's class, or /64).
    pub fn from_stored_xml(input: &str) -> Result<NetworkDef, Error> {
        NetworkDef::parse(input, true)
    }

    fn parse(input: &str, stored: bool) -> Result<NetworkDef, Error> {
        let root = parse_document(input)?;
        let mut parser = Parser::new(&root);
        parser.stored = stored;
        let mut def = parser.network(&root)?;
        if root.children.iter().any(|child| child.name == "metadata") {
            def.metadata = super::metadata::network_metadata(input, &def.name, stored)?;
        }
        def.validate()?;
        Ok(def)
    }
}

/// Reads a `<uuid>` the way libvirt's `virUUIDParse` does: 32 hex digits in pairs,
/// with `-` or space allowed before any pair and whitespace around the whole. So
/// `2e2d...` without dashes is accepted, while the braced and `urn:uuid:` forms that
/// `Uuid::try_parse` also takes, and which libvirt refuses, are not.
pub(super) fn parse_uuid(text: &str) -> Option<Uuid> {
    let mut digits = text
        .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
        .bytes()
        .peekable();
    let mut bytes = [0u8; 16];
    for byte in &mut bytes {
        while digits.next_if(|&b| b == b'-' || b == b' ').is_some() {}
        let high = char::from(digits.next()?).to_digit(16)?;
        let low = char::from(digits.next()?).to_digit(16)?;
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    digits
        .all(|b| b.is_ascii_whitespace() || b == 0x0b)
        .then_some(Uuid::from_bytes(bytes))
}

/// Reads an unsigned number as libvirt does (C `strtoul` behind `virStrToLong_*p`):
/// leading whitespace and one `+` are allowed, a `-` is not, and nothing may follow
/// the digits. `radix` 0 is strtoul's base 0, which libvirt uses for `<lease expiry>`:
/// `0x` starts hex, a leading `0` octal (`010` is 8), anything else is decimal.
pub(super) fn c_unsigned<T: TryFrom<u64>>(text: &str, radix: u32) -> Option<T> {
    let text = text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let text = text.strip_prefix('+').unwrap_or(text);
    let (digits, radix) = match radix {
        0 => match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => (hex, 16),
            None if text.len() > 1 && text.starts_with('0') => (&text[1..], 8),
            None => (text, 10),
        },
        radix => (text, radix),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    T::try_from(u64::from_str_radix(digits, radix).ok()?).ok()
}

/// A `<dhcp><host>` whose `ip` may be missing (a net-update match pattern).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DhcpHostFields {
    pub mac: Option<MacAddr>,
    pub mac_text: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    pub ip: Option<IpAddr>,
    pub lease: Option<Lease>,
}

/// Parsing context: the network name for messages.
pub(super) struct Parser {
    network: String,
    /// Reading the daemon's own files: see [`NetworkDef::from_stored_xml`].
    stored: bool,
}

impl Parser {
    /// A parser of elements of network `network` (net-update fragments).
    pub(super) fn for_network(network: &str) -> Parser {
        Parser {
            network: network.to_owned(),
            stored: false,
        }
    }

    fn new(root: &Element) -> Parser {
        let network = root
            .children
            .iter()
            .find(|child| child.name == "name")
            .map(|name| name.text.clone())
            .unwrap_or_default();
        Parser {
            network,
            stored: false,
        }
    }

    fn unsupported(&self, what: String, line: u64) -> Error {
        Error::Unsupported {
            what,
            network: self.network.clone(),
            line,
        }
    }

    fn unsupported_child(&self, parent: &Element, child: &Element) -> Error {
        let what = if parent.name == "network" {
            format!("element <{}>", child.name)
        } else {
            format!("element <{}> inside <{}>", child.name, parent.name)
        };
        self.unsupported(what, child.line)
    }

    /// Rejects attributes outside `allowed`.
    pub(super) fn check_attrs(&self, element: &Element, allowed: &[&str]) -> Result<(), Error> {
        match element
            .attrs
            .iter()
            .find(|(key, _)| !allowed.contains(&key.as_str()))
        {
            Some((key, _)) => Err(self.unsupported(
                format!("attribute '{key}' on <{}>", element.name),
                element.line,
            )),
            None => Ok(()),
        }
    }

    /// Rejects any child element and any non-whitespace text.
    pub(super) fn check_leaf(&self, element: &Element) -> Result<(), Error> {
        if let Some(child) = element.children.first() {
            return Err(self.unsupported_child(element, child));
        }
        self.check_no_text(element)
    }

    fn check_no_text(&self, element: &Element) -> Result<(), Error> {
        let text = element.text.trim();
        if text.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!(
                "unexpected text '{text}' inside <{}> in network '{}' (line {})",
                element.name, self.network, element.line
            )))
        }
    }

    /// Text content of an element that must have no attributes or children.
    fn text_of(&self, element: &Element) -> Result<String, Error> {
        self.check_attrs(element, &[])?;
        if let Some(child) = element.children.first() {
            return Err(self.unsupported_child(element, child));
        }
        Ok(element.text.clone())
    }

    fn missing(&self, element: &Element, attr: &str) -> Error {
        invalid(format!(
            "missing required attribute '{attr}' on <{}> in network '{}' (line {})",
            element.name, self.network, element.line
        ))
    }

    fn required<'a>(&self, element: &'a Element, attr: &str) -> Result<&'a str, Error> {
        element
            .attr(attr)
            .ok_or_else(|| self.missing(element, attr))
    }

    /// A yes/no attribute; anything else gets the words of libvirt's
    /// `virXMLPropTristateBool`.
    fn yes_no(&self, element: &Element, attr: &str) -> Result<Option<bool>, Error> {
        match element.attr(attr) {
            None => Ok(None),
            Some("yes") => Ok(Some(true)),
            Some("no") => Ok(Some(false)),
            Some(other) => Err(invalid(format!(
                "Invalid value for attribute '{attr}' in element '{}': '{other}'.",
                element.name
            ))),
        }
    }

    /// An unsigned decimal attribute read as libvirt's `virXMLPropUInt` reads it, with
    /// its words for a value that is no such number or, if `nonzero`, is zero.
    fn prop_uint(
        &self,
        element: &Element,
        attr: &str,
        nonzero: bool,
    ) -> Result<Option<u32>, Error> {
        let Some(text) = element.attr(attr) else {
            return Ok(None);
        };
        let prefix = format!(
            "Invalid value for attribute '{attr}' in element '{}': ",
            element.name
        );
        match c_unsigned::<u32>(text, 10) {
            None => Err(invalid(format!(
                "{prefix}'{text}'. Expected non-negative integer value"
            ))),
            Some(0) if nonzero => Err(invalid(format!("{prefix}Zero is not permitted"))),
            Some(value) => Ok(Some(value)),
        }
    }

    /// An unsigned attribute in `radix` (see [`c_unsigned`]).
    fn number<T: TryFrom<u64>>(
        &self,
        element: &Element,
        attr: &str,
        radix: u32,
    ) -> Result<Option<T>, Error> {
        element
            .attr(attr)
            .map(|value| {
                c_unsigned::<T>(value, radix).ok_or_else(|| {
                    invalid(format!(
                        "invalid value '{value}' for attribute '{attr}' of <{}> in network '{}'",
                        element.name, self.network
                    ))
                })
            })
            .transpose()
    }

    fn ip(&self, element: &Element, attr: &str) -> Result<Option<IpAddr>, Error> {
        element
            .attr(attr)
            .map(|value| {
                value.parse::<IpAddr>().map_err(|_| {
                    invalid(format!(
                        "invalid IP address '{value}' in attribute '{attr}' of <{}> in network '{}'",
                        element.name, self.network
                    ))
                })
            })
            .transpose()
    }

    /// An optional attribute that must be an IPv4 address (`what` names it in errors).
    fn ipv4(&self, element: &Element, attr: &str, what: &str) -> Result<Option<Ipv4Addr>, Error> {
        match self.ip(element, attr)? {
            None => Ok(None),
            Some(IpAddr::V4(address)) => Ok(Some(address)),
            Some(IpAddr::V6(address)) => Err(invalid(format!(
                "invalid {what} '{address}' in network '{}': it must be an IPv4 address",
                self.network
            ))),
        }
    }

    fn required_ip(&self, element: &Element, attr: &str) -> Result<IpAddr, Error> {
        self.ip(element, attr)?
            .ok_or_else(|| self.missing(element, attr))
    }

    /// Rejects a second occurrence of a singleton element.
    fn once<'a>(&self, slot: &mut Option<&'a Element>, element: &'a Element) -> Result<(), Error> {
        if slot.is_some() {
            return Err(invalid(format!(
                "duplicate element <{}> in network '{}' (line {})",
                element.name, self.network, element.line
            )));
        }
        *slot = Some(element);
        Ok(())
    }

    fn network(&self, root: &Element) -> Result<NetworkDef, Error> {
        if root.name != "network" {
            return Err(invalid(format!(
                "expecting root element of 'network', not '{}'",
                root.name
            )));
        }
        for (key, _) in &root.attrs {
            // Namespace declarations carry no configuration; `connections`
            // is a read-only live counter libvirt's parser ignores as well; `ipv6`
            // is read below.
            let known = key == "xmlns"
                || key.starts_with("xmlns:")
                || key == "connections"
                || key == "ipv6"
                || key == "trustGuestRxFilters";
            if !known {
                return Err(self.unsupported(format!("attribute '{key}' on <network>"), root.line));
            }
        }
        self.check_no_text(root)?;
        if !root.children.iter().any(|child| child.name == "name") {
            return Err(invalid_as(
                Class::NoName,
                "missing <name> element in network definition",
            ));
        }

        let mut name = None;
        let mut uuid = None;
        let mut title = None;
        let mut description = None;
        let mut forward = None;
        let mut bridge = None;
        let mut mtu = None;
        let mut mac = None;
        let mut domain = None;
        let mut dns = None;
        let mut port = None;
        let mut bandwidth = None;
        let mut portgroups = Vec::new();
        let mut ips = Vec::new();
        let mut routes = Vec::new();
        let mut dnsmasq_options = Vec::new();
        let mut metadata = None;
        for child in &root.children {
            match child.name.as_str() {
                "name" => self.once(&mut name, child)?,
                "uuid" => self.once(&mut uuid, child)?,
                "title" => self.once(&mut title, child)?,
                "description" => self.once(&mut description, child)?,
                // Read from the text by `metadata::network_metadata`, as libxml2 reads it.
                // A file on disk with a second one loads as libvirt loads it: the first.
                "metadata" if self.stored && metadata.is_some() => {
                    tracing::warn!(network = %self.network, "dropped from a definition on disk, as libvirt drops it: a second <metadata> (line {})", child.line);
                }
                "metadata" => self.once(&mut metadata, child)?,
                "forward" => self.once(&mut forward, child)?,
                "bridge" => self.once(&mut bridge, child)?,
                "mtu" => self.once(&mut mtu, child)?,
                "mac" => self.once(&mut mac, child)?,
                "domain" => self.once(&mut domain, child)?,
                "dns" => self.once(&mut dns, child)?,
                "port" => self.once(&mut port, child)?,
                "bandwidth" => self.once(&mut bandwidth, child)?,
                "portgroup" => portgroups.push(child),
                "ip" => ips.push(child),
                "route" => routes.push(child),
                _ if super::dnsmasq::is_dnsmasq(child, &[root], "options") => {
                    dnsmasq_options.push(child);
                }
                _ => return Err(self.unsupported_child(root, child)),
            }
        }

        // In a default namespace every element is in it, and libvirt's XPath, which asks
        // for elements in no namespace, finds no <name>: the definition has none.
        let in_a_namespace = root.attr("xmlns").is_some_and(|uri| !uri.is_empty());
        let name = match name {
            Some(element) if !in_a_namespace => self.text_of(element)?,
            _ => {
                return Err(invalid_as(
                    Class::NoName,
                    "missing <name> element in network definition",
                ));
            }
        };
        let mut def = NetworkDef::new(name);
        def.ipv6_without_gateway = match root.attr("ipv6") {
            None | Some("no") => false,
            Some("yes") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "Invalid ipv6 setting '{other}' in network '{}'",
                    self.network
                )));
            }
        };
        def.trust_guest_rx_filters = super::tristate(root, "trustGuestRxFilters")?;
        // libvirt reads an empty <uuid/> as no uuid at all and generates one.
        if let Some(element) = uuid
            && let text = self.text_of(element)?
            && !text.is_empty()
        {
            let parsed = parse_uuid(&text)
                .ok_or_else(|| invalid_as(Class::Internal, "malformed uuid element".to_owned()))?;
            def.uuid = Some(parsed);
        }
        // libvirt reads both with virXPathString, which takes an empty text for none.
        let text = |element: Option<&Element>| -> Result<Option<String>, Error> {
            Ok(element
                .map(|e| self.text_of(e))
                .transpose()?
                .filter(|text| !text.is_empty()))
        };
        def.title = text(title)?;
        def.description = text(description)?;
        if let Some(element) = forward {
            def.forward = self.forward(element)?;
        }
        if let Some(element) = bridge {
            def.bridge = self.bridge(element, def.forward.mode)?;
        }
        if let Some(element) = mtu {
            self.check_attrs(element, &["size"])?;
            self.check_leaf(element)?;
            let size = self.required(element, "size")?;
            def.mtu = Some(c_unsigned(size, 10).ok_or_else(|| {
                invalid(format!(
                    "Invalid mtu size '{size}' in network '{}'",
                    self.network
                ))
            })?);
        }
        if let Some(element) = mac {
            self.check_attrs(element, &["address"])?;
            self.check_leaf(element)?;
            let address = self.required(element, "address")?;
            def.mac = Some(address.parse().map_err(|_| {
                invalid(format!(
                    "Invalid bridge mac address '{address}' in network '{}'",
                    self.network
                ))
            })?);
        }
        if let Some(element) = domain {
            self.check_attrs(element, &["name", "localOnly"])?;
            self.check_leaf(element)?;
            def.domain = Some(Domain {
                name: self.required(element, "name")?.to_string(),
                local_only: self.yes_no(element, "localOnly")?,
            });
        }
        if let Some(element) = dns {
            def.dns = self.dns(element)?;
        }
        if let Some(element) = port {
            self.check_attrs(element, &["isolated"])?;
            self.check_leaf(element)?;
            def.isolated_ports = super::isolated_ports(element)?;
        }
        if let Some(element) = bandwidth {
            if def.macvtap_mode().is_some() {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "Unsupported network-wide <bandwidth> element in network {} with forward mode='{}'",
                        self.network, def.forward.mode
                    ),
                ));
            }
            // libvirt shapes even a host bridge it does not own; kvnet leaves those alone.
            if def.forward.mode == ForwardMode::Bridge {
                return Err(self.unsupported(
                    "element <bandwidth> with forward mode='bridge'".to_string(),
                    element.line,
                ));
            }
            let context = super::bandwidth::Context::Network(&self.network);
            def.bandwidth = super::bandwidth::parse(element, &context)?;
        }
        for element in ips {
            def.ips.push(self.ip_def(element)?);
        }
        for element in routes {
            def.routes.push(self.route(element)?);
        }
        for element in portgroups {
            def.portgroups.push(self.portgroup(element)?);
        }
        for element in dnsmasq_options {
            def.dnsmasq_options
                .extend(self.dnsmasq_options(root, element)?);
        }
        Ok(def)
    }

    /// `<dnsmasq:options>`: its `<dnsmasq:option value=>`s. libvirt drops one without
    /// options (terraform-provider-libvirt writes an empty one into every network), and
    /// so does kvnet. Each value must be a line kvnet carries out itself.
    fn dnsmasq_options(
        &self,
        root: &Element,
        element: &Element,
    ) -> Result<Vec<DnsmasqOption>, Error> {
        self.check_declarations_only(element, &[])?;
        self.check_no_text(element)?;
        let mut options = Vec::new();
        for child in &element.children {
            if !super::dnsmasq::is_dnsmasq(child, &[root, element], "option") {
                return Err(self.unsupported_child(element, child));
            }
            self.check_declarations_only(child, &["value"])?;
            self.check_leaf(child)?;
            let value = child
                .attr("value")
                .ok_or_else(|| invalid_as(Class::Internal, "No dnsmasq options value specified"))?;
            let directive = Directive::parse(value).map_err(|refusal| match refusal {
                Refusal::Unsupported => invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "dnsmasq option '{value}' is not supported by kvnet (network '{}')",
                        self.network
                    ),
                ),
                Refusal::Invalid(why) => invalid(format!(
                    "invalid dnsmasq option '{value}' in network '{}': {why}",
                    self.network
                )),
            })?;
            options.push(DnsmasqOption {
                value: value.to_owned(),
                directive,
            });
        }
        Ok(options)
    }

    /// Rejects attributes other than namespace declarations and `allowed`.
    fn check_declarations_only(&self, element: &Element, allowed: &[&str]) -> Result<(), Error> {
        match element.attrs.iter().find(|(key, _)| {
            !super::dnsmasq::is_declaration(key) && !allowed.contains(&key.as_str())
        }) {
            Some((key, _)) => Err(self.unsupported(
                format!("attribute '{key}' on <{}>", element.name),
                element.line,
            )),
            None => Ok(()),
        }
    }

    /// `<portgroup name= [default=] [trustGuestRxFilters=]>` with an optional
    /// `<bandwidth>` (libvirt's `virNetworkPortGroupParseXML`).
    pub(super) fn portgroup(&self, element: &Element) -> Result<PortGroup, Error> {
        self.check_attrs(element, &["name", "default", "trustGuestRxFilters"])?;
        self.check_no_text(element)?;
        // libvirt reads an empty name as none.
        let name = element
            .attr("name")
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid("Missing required name attribute in portgroup"))?;
        // libvirt takes `yes` in any case as yes and anything else as no; kvnet refuses
        // what is neither, rather than guess.
        let default = match element.attr("default") {
            None => false,
            Some(value) if value.eq_ignore_ascii_case("yes") => true,
            Some(value) if value.eq_ignore_ascii_case("no") => false,
            Some(other) => {
                return Err(invalid(format!(
                    "invalid value '{other}' for attribute 'default' of <portgroup name='{name}'> in network '{}', expected 'yes' or 'no'",
                    self.network
                )));
            }
        };
        let mut bandwidth = None;
        for child in &element.children {
            match child.name.as_str() {
                "bandwidth" => self.once(&mut bandwidth, child)?,
                // <vlan> and <virtualport>, as in the network itself.
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        let context = super::bandwidth::Context::Network(&self.network);
        Ok(PortGroup {
            name: name.to_owned(),
            default,
            trust_guest_rx_filters: super::tristate(element, "trustGuestRxFilters")?,
            bandwidth: super::bandwidth::parse_optional(bandwidth, &context)?,
        })
    }

    /// A `<route>`, checked in the order and words of libvirt's `virNetDevIPRouteParseXML`
    /// (its messages lead with the network's name). Whether its gateway is reachable, and
    /// whether the network may have routes at all, is for [`NetworkDef::validate`].
    fn route(&self, element: &Element) -> Result<RouteDef, Error> {
        self.check_attrs(
            element,
            &[
                "family", "address", "netmask", "prefix", "gateway", "metric",
            ],
        )?;
        self.check_leaf(element)?;
        let fail = |message: String| Err(invalid(format!("{}: {message}", self.network)));
        let prefix = self.prop_uint(element, "prefix", false)?;
        let metric = self.prop_uint(element, "metric", true)?;
        let Some(address_text) = element.attr("address") else {
            return fail("Missing required address attribute in route definition".into());
        };
        let Some(gateway_text) = element.attr("gateway") else {
            return fail("Missing required gateway attribute in route definition".into());
        };
        let Ok(address) = address_text.parse::<IpAddr>() else {
            return fail(format!(
                "Bad network address '{address_text}' in route definition"
            ));
        };
        let Ok(gateway) = gateway_text.parse::<IpAddr>() else {
            return fail(format!(
                "Bad gateway address '{gateway_text}' in route definition"
            ));
        };
        let netmask_text = element.attr("netmask");
        let family_text = match element.attr("family") {
            None if self.stored && address.is_ipv6() => Some("ipv6"),
            family => family,
        };
        let (family, netmask, max_prefix) = match family_text {
            family @ (None | Some("ipv4")) => {
                let given = if family.is_none() {
                    "No family specified"
                } else {
                    "IPv4 family specified"
                };
                if !address.is_ipv4() {
                    return fail(format!(
                        "{given} for non-IPv4 address '{address_text}' in route definition"
                    ));
                }
                if !gateway.is_ipv4() {
                    // libvirt names the address here too.
                    return fail(format!(
                        "{given} for non-IPv4 gateway '{address_text}' in route definition"
                    ));
                }
                let netmask = match netmask_text {
                    None => None,
                    Some(text) => match text.parse::<IpAddr>() {
                        Err(_) => {
                            return fail(format!(
                                "Bad netmask address '{text}' in route definition"
                            ));
                        }
                        Ok(IpAddr::V6(_)) => {
                            return fail(format!(
                                "Invalid netmask '{text}' for address '{address_text}' (both must be IPv4)"
                            ));
                        }
                        Ok(IpAddr::V4(_)) if prefix.is_some() => {
                            return fail(
                                "Route definition cannot have both a prefix and a netmask".into(),
                            );
                        }
                        Ok(IpAddr::V4(mask)) => Some(mask),
                    },
                };
                (family.map(|_| IpFamily::Ipv4), netmask, 32)
            }
            Some("ipv6") => {
                if !address.is_ipv6() {
                    return fail(format!(
                        "ipv6 family specified for non-IPv6 address '{address_text}' in route definition"
                    ));
                }
                if netmask_text.is_some() {
                    return fail(format!(
                        "Specifying netmask invalid for IPv6 address '{address_text}' in route definition"
                    ));
                }
                if !gateway.is_ipv6() {
                    return fail(format!(
                        "ipv6 specified for non-IPv6 gateway address '{gateway_text}' in route definition"
                    ));
                }
                (Some(IpFamily::Ipv6), None, 128)
            }
            Some(other) => {
                return fail(format!("Unrecognized family '{other}' in route definition"));
            }
        };
        let prefix = match prefix.map(u8::try_from) {
            None => None,
            Some(Ok(prefix)) if prefix <= max_prefix => Some(prefix),
            Some(_) => {
                return fail(format!(
                    "Invalid prefix {} specified in route definition, must be 0 - {max_prefix}",
                    prefix.unwrap_or_default()
                ));
            }
        };
        let mut route = RouteDef {
            family,
            address,
            netmask,
            prefix,
            gateway,
            metric,
        };
        // libvirt masks with prefix 0 when neither is given: only a default route passes.
        if netmask.is_none() && prefix.is_none() && !address.is_unspecified() {
            if !self.stored {
                return fail(format!(
                    "Address '{address_text}' in route definition is not a network address"
                ));
            }
            // Written back with the prefix kvnet took, which libvirt reads the same.
            route.prefix = route.prefix_len();
        }
        // libvirt masks with any netmask; the kernel takes contiguous ones only.
        let Some(destination) = route.destination() else {
            return fail(format!(
                "Invalid netmask '{}' in route definition (not a contiguous netmask)",
                netmask_text.unwrap_or_default()
            ));
        };
        if destination.trunc().addr() != address {
            return fail(format!(
                "Address '{address_text}' in route definition is not a network address"
            ));
        }
        Ok(route)
    }

    fn forward(&self, element: &Element) -> Result<Forward, Error> {
        // The mode first: virt-manager's hostdev pools carry `managed='yes'`, and the
        // mode is what kvnet lacks.
        if element.attr("mode") == Some("hostdev") {
            return Err(self.unsupported("forward mode 'hostdev'".to_owned(), element.line));
        }
        self.check_attrs(element, &["mode", "dev"])?;
        self.check_no_text(element)?;
        let mode = match element.attr("mode") {
            None | Some("nat") => ForwardMode::Nat,
            // libvirt's "none" is its isolated network: net-dumpxml prints no <forward>.
            Some("none") => ForwardMode::Isolated,
            Some("route") => ForwardMode::Route,
            Some("open") => ForwardMode::Open,
            Some("bridge") => ForwardMode::Bridge,
            Some("private") => ForwardMode::Private,
            Some("vepa") => ForwardMode::Vepa,
            Some("passthrough") => ForwardMode::Passthrough,
            Some(other) => {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!("unknown forwarding type '{other}'"),
                ));
            }
        };
        let mut forward = Forward {
            mode,
            dev: element.attr("dev").map(str::to_string),
            nat: Nat::default(),
            interfaces: Vec::new(),
        };
        let mut nat = None;
        let mut interfaces = Vec::new();
        for child in &element.children {
            match child.name.as_str() {
                "nat" => self.once(&mut nat, child)?,
                "interface" => interfaces.push(child),
                // <pf>, <address> (SR-IOV and PCI pools) and <driver> (hostdev).
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        // As libvirt's pool: `dev` is its first device, and a first <interface> must name
        // the same one (libvirt writes both back).
        let mut pool: Vec<String> = forward.dev.iter().cloned().collect();
        for (position, interface) in interfaces.iter().enumerate() {
            // `connections` is a live counter in net-dumpxml output; ignored like libvirt does.
            self.check_attrs(interface, &["dev", "connections"])?;
            self.check_leaf(interface)?;
            let dev = interface.attr("dev").ok_or_else(|| {
                invalid(format!(
                    "Missing required dev attribute in <forward> <interface> element of network {}",
                    self.network
                ))
            })?;
            match &forward.dev {
                Some(forward_dev) if position == 0 && forward_dev != dev => {
                    return Err(invalid(format!(
                        "<forward dev='{forward_dev}'> must match first <interface dev='{dev}'/> in network {}",
                        self.network
                    )));
                }
                Some(_) if position == 0 => continue,
                _ => {}
            }
            if pool.iter().any(|listed| listed == dev) {
                return Err(invalid(format!(
                    "interface '{dev}' can only be listed once in network {}",
                    self.network
                )));
            }
            pool.push(dev.to_string());
        }
        let uses_macvtap = matches!(
            mode,
            ForwardMode::Bridge
                | ForwardMode::Private
                | ForwardMode::Vepa
                | ForwardMode::Passthrough
        );
        if uses_macvtap {
            // With a <bridge name=> as well, validation refuses the pair by libvirt's message.
            forward.dev = None;
            forward.interfaces = pool;
        } else {
            // nat and route forward through one device; a pool means nothing to them.
            if pool.len() > 1 {
                return Err(invalid(format!(
                    "multiple forwarding interfaces specified for network '{}', only one is supported",
                    self.network
                )));
            }
            // An isolated network forwards through nothing; libvirt drops the device too.
            forward.dev = pool
                .into_iter()
                .next()
                .filter(|_| mode != ForwardMode::Isolated);
        }
        if let Some(nat) = nat {
            if mode != ForwardMode::Nat {
                return Err(invalid(format!(
                    "The <nat> element can only be used when <forward> 'mode' is 'nat' in network {}",
                    self.network
                )));
            }
            forward.nat = self.nat(nat)?;
        }
        Ok(forward)
    }

    fn nat(&self, element: &Element) -> Result<Nat, Error> {
        self.check_attrs(element, &["ipv6"])?;
        self.check_no_text(element)?;
        let mut nat = Nat {
            ipv6: self.yes_no(element, "ipv6")?,
            ..Nat::default()
        };
        let mut address = None;
        let mut port = None;
        for child in &element.children {
            match child.name.as_str() {
                "address" => self.once(&mut address, child)?,
                "port" => self.once(&mut port, child)?,
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        if let Some(address) = address {
            self.check_attrs(address, &["start", "end"])?;
            self.check_leaf(address)?;
            let ipv4 = |attr: &str| -> Result<Ipv4Addr, Error> {
                let value = address.attr(attr).ok_or_else(|| {
                    invalid(format!(
                        "missing '{attr}' attribute in <address> element in <nat> in <forward> in network {}",
                        self.network
                    ))
                })?;
                value.parse().map_err(|_| {
                    invalid(format!(
                        "Bad ipv4 {attr} address '{value}' in <nat> in <forward> in network '{}'",
                        self.network
                    ))
                })
            };
            nat.address = Some(NatAddressRange {
                start: ipv4("start")?,
                end: ipv4("end")?,
            });
        }
        if let Some(port) = port {
            self.check_attrs(port, &["start", "end"])?;
            self.check_leaf(port)?;
            let bound = |attr: &str| -> Result<u16, Error> {
                port.attr(attr)
                    .and_then(|value| c_unsigned::<u16>(value, 10))
                    .ok_or_else(|| {
                        invalid_as(Class::XmlDetail, format!(
                            "Missing or invalid '{attr}' attribute in <port> in <nat> in <forward> in network {}",
                            self.network
                        ))
                    })
            };
            let range = PortRange {
                start: bound("start")?,
                end: bound("end")?,
            };
            // libvirt takes 0-0 for no range (and writes no <port> back).
            nat.port = Some(range).filter(|range| range.start != 0 || range.end != 0);
        }
        Ok(nat)
    }

    fn bridge(&self, element: &Element, mode: ForwardMode) -> Result<Bridge, Error> {
        self.check_attrs(
            element,
            &["name", "zone", "stp", "delay", "macTableManager"],
        )?;
        self.check_leaf(element)?;
        // libvirt reads an empty value as none.
        let mac_table_manager = element
            .attr("macTableManager")
            .filter(|text| !text.is_empty())
            .map(|text| {
                MacTableManager::from_libvirt(text).ok_or_else(|| {
                    invalid(format!(
                        "Invalid macTableManager setting '{text}' in network '{}'",
                        self.network
                    ))
                })
            })
            .transpose()?;
        if !mode.has_managed_bridge()
            && mode != ForwardMode::Bridge
            && element.attr("name").is_some()
        {
            return Err(invalid(format!(
                "bridge name not allowed in {mode} mode (network '{}')",
                self.network
            )));
        }
        // A macvtap pool in bridge mode takes it, and ignores it, as libvirt does.
        if matches!(
            mode,
            ForwardMode::Private | ForwardMode::Vepa | ForwardMode::Passthrough
        ) && mac_table_manager.is_some()
        {
            return Err(invalid(format!(
                "bridge macTableManager setting not allowed in {mode} mode (network '{}')",
                self.network
            )));
        }
        // libvirt lets `delay='0'` through, which is what it writes itself.
        if !mode.has_managed_bridge()
            && (element.attr("stp").is_some()
                || element.attr("delay").is_some_and(|delay| delay != "0"))
        {
            return Err(invalid(format!(
                "bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in {mode} (network '{}')",
                self.network
            )));
        }
        // As libvirt: STP is on unless `stp='off'` (a file with `stp='yes'` loads).
        let stp = element.attr("stp") != Some("off");
        let delay = match element.attr("delay") {
            None => 0,
            Some(value) => c_unsigned(value, 10).ok_or_else(|| {
                invalid(format!("Invalid delay value in network '{}'", self.network))
            })?,
        };
        if !mode.has_managed_bridge() && element.attr("zone").is_some() {
            return Err(invalid(format!(
                "bridge zone not allowed in {mode} mode (network '{}')",
                self.network
            )));
        }
        Ok(Bridge {
            name: element.attr("name").map(str::to_string),
            zone: element.attr("zone").map(str::to_string),
            stp,
            delay,
            mac_table_manager,
        })
    }

    fn dns(&self, element: &Element) -> Result<Dns, Error> {
        self.check_attrs(element, &["enable", "forwardPlainNames"])?;
        self.check_no_text(element)?;
        let mut dns = Dns {
            enable: self.yes_no(element, "enable")?,
            forward_plain_names: self.yes_no(element, "forwardPlainNames")?,
            ..Dns::default()
        };
        for child in &element.children {
            match child.name.as_str() {
                "forwarder" => {
                    self.check_attrs(child, &["addr", "domain"])?;
                    self.check_leaf(child)?;
                    let addr = child.attr("addr").map(|value| {
                        value.parse::<IpAddr>().map_err(|_| {
                            invalid(format!(
                                "Invalid forwarder IP address '{value}' in network '{}'",
                                self.network
                            ))
                        })
                    });
                    dns.forwarders.push(DnsForwarder {
                        addr: addr.transpose()?,
                        domain: child.attr("domain").map(str::to_string),
                    });
                }
                "txt" => dns.txts.push(self.dns_txt(child, false)?),
                "srv" => dns.srvs.push(self.srv(child, false)?),
                "host" => dns.hosts.push(self.dns_host(child)?),
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        Ok(dns)
    }

    /// `<srv>`, checked in the order of libvirt's `virNetworkDNSSrvDefParseXML`. With
    /// `partial` (a net-update match pattern) `service` and `protocol` may be absent;
    /// they are then empty.
    pub(super) fn srv(&self, element: &Element, partial: bool) -> Result<DnsSrv, Error> {
        const SERVICE_EXTRA: &str = "_-+/*";
        const PROTOCOL_EXTRA: &str = "-+/";
        let network = &self.network;
        let detail = |message: String| invalid_as(Class::XmlDetail, message);
        self.check_attrs(
            element,
            &[
                "service", "protocol", "domain", "target", "port", "priority", "weight",
            ],
        )?;
        self.check_leaf(element)?;
        let service = match element.attr("service") {
            Some(service) => service,
            None if partial => "",
            None => {
                return Err(detail(format!(
                    "missing required service attribute in DNS SRV record of network '{network}'"
                )));
            }
        };
        if service.len() > 15 {
            return Err(detail(format!(
                "service attribute '{service}' in network '{network}' is too long, limit is 15 bytes"
            )));
        }
        if !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || SERVICE_EXTRA.contains(c))
        {
            return Err(detail(format!(
                "invalid character in service attribute '{service}' in DNS SRV record of network '{network}'"
            )));
        }
        let protocol = match element.attr("protocol") {
            Some(protocol) => protocol,
            None if partial => "",
            None => {
                return Err(detail(format!(
                    "missing required protocol attribute in DNS SRV record '{service}' of network '{network}'"
                )));
            }
        };
        if !protocol
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || PROTOCOL_EXTRA.contains(c))
        {
            return Err(detail(format!(
                "invalid character in protocol attribute '{protocol}' in DNS SRV record of network '{network}'"
            )));
        }
        let target = element.attr("target");
        // libvirt's virXPathUInt: an empty value is none; a number is refused without a
        // target, then out of range (a port of 0 too); anything else is invalid. 0 is
        // "not set" for all three (libvirt does not write it back).
        let number = |attr: &str, invalid: String| -> Result<Option<u16>, Error> {
            let Some(value) = element.attr(attr).filter(|value| !value.is_empty()) else {
                return Ok(None);
            };
            let parsed = c_unsigned::<u32>(value, 10);
            if parsed.is_some() && target.is_none() {
                return Err(detail(format!(
                    "DNS SRV {attr} attribute not permitted without target for service '{service}' in network '{network}'"
                )));
            }
            match parsed.map(u16::try_from) {
                Some(Ok(0)) if attr == "port" => Err(detail(invalid)),
                Some(Ok(number)) => Ok(Some(number).filter(|&n| n != 0)),
                _ => Err(detail(invalid)),
            }
        };
        let port = number(
            "port",
            format!(
                "invalid DNS SRV port attribute for service '{service}' in network '{network}'"
            ),
        )?;
        let priority = number(
            "priority",
            format!(
                "Invalid DNS SRV priority attribute for service '{service}' in network '{network}'"
            ),
        )?;
        let weight = number(
            "weight",
            format!(
                "invalid DNS SRV weight attribute for service '{service}' in network '{network}'"
            ),
        )?;
        Ok(DnsSrv {
            service: service.to_string(),
            protocol: protocol.to_string(),
            domain: element.attr("domain").map(str::to_string),
            target: target.map(str::to_string),
            port,
            priority,
            weight,
        })
    }

    /// `<txt name value>`. With `partial` (a net-update match pattern) `value` may be
    /// absent; it is then empty.
    pub(super) fn dns_txt(&self, element: &Element, partial: bool) -> Result<DnsTxt, Error> {
        self.check_attrs(element, &["name", "value"])?;
        self.check_leaf(element)?;
        let name = element.attr("name").ok_or_else(|| {
            invalid_as(
                Class::XmlDetail,
                format!(
                    "missing required name attribute in DNS TXT record of network {}",
                    self.network
                ),
            )
        })?;
        if name.contains([' ', ',']) {
            return Err(invalid_as(
                Class::XmlDetail,
                format!(
                    "prohibited character in DNS TXT record name '{name}' of network {}",
                    self.network
                ),
            ));
        }
        let value = match element.attr("value") {
            Some(value) => value,
            None if partial => "",
            None => {
                return Err(invalid_as(
                    Class::XmlDetail,
                    format!(
                        "missing required value attribute in DNS TXT record named '{name}' of network {}",
                        self.network
                    ),
                ));
            }
        };
        Ok(DnsTxt {
            name: name.to_string(),
            value: value.to_string(),
        })
    }

    /// `<host ip><hostname/>*</host>` inside `<dns>`, with `ip` optional (net-update
    /// matches on the address or any of the names).
    pub(super) fn dns_host_fields(
        &self,
        element: &Element,
    ) -> Result<(Option<IpAddr>, Vec<String>), Error> {
        self.check_attrs(element, &["ip"])?;
        self.check_no_text(element)?;
        let ip = element
            .attr("ip")
            .map(|value| {
                value.parse::<IpAddr>().map_err(|_| {
                    invalid_as(
                        Class::XmlDetail,
                        format!(
                            "Invalid IP address in network '{}' DNS HOST record",
                            self.network
                        ),
                    )
                })
            })
            .transpose()?;
        let mut hostnames = Vec::new();
        for name in &element.children {
            if name.name != "hostname" {
                return Err(self.unsupported_child(element, name));
            }
            let hostname = self.text_of(name)?;
            // Refused in a delete pattern too, as libvirt does.
            if hostname.is_empty() {
                return Err(self.missing_dns_hostname());
            }
            hostnames.push(hostname);
        }
        Ok((ip, hostnames))
    }

    fn missing_dns_hostname(&self) -> Error {
        invalid_as(
            Class::XmlDetail,
            format!(
                "Missing hostname in network '{}' DNS HOST record",
                self.network
            ),
        )
    }

    /// `<host ip><hostname/>+</host>` inside `<dns>`.
    pub(super) fn dns_host(&self, element: &Element) -> Result<DnsHost, Error> {
        let (ip, hostnames) = self.dns_host_fields(element)?;
        if hostnames.is_empty() {
            return Err(self.missing_dns_hostname());
        }
        let ip = ip.ok_or_else(|| {
            invalid_as(
                Class::XmlDetail,
                format!(
                    "Missing IP address in network '{}' DNS HOST record",
                    self.network
                ),
            )
        })?;
        Ok(DnsHost { ip, hostnames })
    }

    /// `<range start end>` inside `<dhcp>`.
    pub(super) fn dhcp_range(&self, element: &Element) -> Result<DhcpRange, Error> {
        self.check_attrs(element, &["start", "end"])?;
        let missing = |attr: &str| {
            invalid(format!(
                "Missing '{attr}' attribute in dhcp range for network '{}'",
                self.network
            ))
        };
        element.attr("start").ok_or_else(|| missing("start"))?;
        element.attr("end").ok_or_else(|| missing("end"))?;
        Ok(DhcpRange {
            start: self.required_ip(element, "start")?,
            end: self.required_ip(element, "end")?,
            lease: self.lease_child(element)?,
        })
    }

    /// `<host mac id name ip>` inside `<dhcp>`, with `ip` optional (net-update's delete
    /// matches on any of mac, name and ip).
    pub(super) fn dhcp_host_fields(&self, element: &Element) -> Result<DhcpHostFields, Error> {
        self.check_attrs(element, &["mac", "id", "name", "ip"])?;
        let mac = match element.attr("mac") {
            None => None,
            Some(text) => Some(text.parse::<MacAddr>().map_err(|_| {
                invalid(format!(
                    "Cannot parse MAC address '{text}' in network '{}'",
                    self.network
                ))
            })?),
        };
        let ip = element
            .attr("ip")
            .map(|text| {
                text.parse::<IpAddr>().map_err(|_| {
                    invalid(format!(
                        "Invalid IP address in static host definition for network '{}'",
                        self.network
                    ))
                })
            })
            .transpose()?;
        // Kept only when it is not the canonical spelling, so that hosts written the
        // usual way compare equal to ones built in code.
        let mac_text = mac
            .zip(element.attr("mac"))
            .filter(|(mac, text)| mac.to_string() != *text)
            .map(|(_, text)| text.to_string());
        Ok(DhcpHostFields {
            mac,
            mac_text,
            id: element.attr("id").map(str::to_string),
            name: element.attr("name").map(str::to_string),
            ip,
            lease: self.lease_child(element)?,
        })
    }

    /// `<host mac id name ip>` inside `<dhcp>`.
    pub(super) fn dhcp_host(&self, element: &Element) -> Result<DhcpHost, Error> {
        let fields = self.dhcp_host_fields(element)?;
        let ip = fields.ip.ok_or_else(|| {
            invalid(format!(
                "Missing IP address in static host definition for network '{}'",
                self.network
            ))
        })?;
        Ok(DhcpHost {
            mac: fields.mac,
            mac_text: fields.mac_text,
            id: fields.id,
            name: fields.name,
            ip,
            lease: fields.lease,
        })
    }

    /// The `family` attribute of an `<ip>` or `<route>`; `context` leads to the network's
    /// name in the error (libvirt's wording: "Unrecognized family 'x' in network 'n'").
    fn family(&self, element: &Element, context: &str) -> Result<Option<IpFamily>, Error> {
        match element.attr("family") {
            None => Ok(None),
            Some("ipv4") => Ok(Some(IpFamily::Ipv4)),
            Some("ipv6") => Ok(Some(IpFamily::Ipv6)),
            Some(other) => Err(invalid(format!(
                "Unrecognized family '{other}' {context} '{}'",
                self.network
            ))),
        }
    }

    fn ip_def(&self, element: &Element) -> Result<IpDef, Error> {
        self.check_attrs(
            element,
            &["address", "netmask", "prefix", "family", "localPtr"],
        )?;
        self.check_no_text(element)?;
        let family = self.family(element, "in network")?;
        let address_text = element.attr("address").ok_or_else(|| {
            invalid(format!(
                "Missing required address attribute in network '{}'",
                self.network
            ))
        })?;
        let address: IpAddr = address_text.parse().map_err(|_| {
            invalid(format!(
                "Invalid address '{address_text}' in network '{}'",
                self.network
            ))
        })?;
        let netmask = match element.attr("netmask") {
            None => None,
            Some(text) => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(mask)) => Some(mask),
                Ok(IpAddr::V6(_)) if family == Some(IpFamily::Ipv6) || address.is_ipv6() => {
                    return Err(invalid_as(
                        Class::ConfigUnsupported,
                        format!(
                            "netmask not allowed for IPv6 address '{address_text}' in network '{}'",
                            self.network
                        ),
                    ));
                }
                Ok(IpAddr::V6(_)) => {
                    return Err(invalid_as(
                        Class::ConfigUnsupported,
                        format!(
                            "Invalid netmask '{text}' for address '{address_text}' in network '{}' (both must be IPv4)",
                            self.network
                        ),
                    ));
                }
                Err(_) => {
                    return Err(invalid(format!(
                        "Invalid netmask '{text}' in network '{}'",
                        self.network
                    )));
                }
            },
        };
        let prefix = match self.prop_uint(element, "prefix", false)? {
            None => None,
            Some(value) => Some(u8::try_from(value).map_err(|_| {
                let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
                invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "Invalid {family} prefix '{value}' in network '{}'",
                        self.network
                    ),
                )
            })?),
        };
        let mut ip = IpDef {
            family,
            address,
            netmask,
            prefix,
            local_ptr: self.yes_no(element, "localPtr")?,
            dhcp_ranges: Vec::new(),
            dhcp_hosts: Vec::new(),
            dhcp_bootp: None,
            tftp_root: None,
        };
        let mut dhcp = None;
        let mut tftp = None;
        for child in &element.children {
            match child.name.as_str() {
                "dhcp" => self.once(&mut dhcp, child)?,
                "tftp" => self.once(&mut tftp, child)?,
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        if let Some(tftp) = tftp {
            if address.is_ipv6() {
                return Err(invalid_as(
                    Class::ConfigUnsupported,
                    format!(
                        "Unsupported <tftp> element in an IPv6 element in network '{}'",
                        self.network
                    ),
                ));
            }
            self.check_attrs(tftp, &["root"])?;
            self.check_leaf(tftp)?;
            ip.tftp_root = Some(self.required(tftp, "root")?.to_owned());
        }
        if let Some(dhcp) = dhcp {
            self.check_attrs(dhcp, &[])?;
            self.check_no_text(dhcp)?;
            let mut bootp = None;
            for child in &dhcp.children {
                match child.name.as_str() {
                    "range" => ip.dhcp_ranges.push(self.dhcp_range(child)?),
                    "host" => ip.dhcp_hosts.push(self.dhcp_host(child)?),
                    // libvirt reads <bootp> of IPv4 only (network boot is DHCPv4's).
                    "bootp" if address.is_ipv6() => {
                        return Err(self.unsupported(
                            "element <bootp> inside IPv6 <dhcp> (network boot is served over DHCPv4)"
                                .to_string(),
                            child.line,
                        ));
                    }
                    "bootp" => self.once(&mut bootp, child)?,
                    _ => return Err(self.unsupported_child(dhcp, child)),
                }
            }
            if let Some(bootp) = bootp {
                ip.dhcp_bootp = Some(self.bootp(bootp)?);
            }
        }
        Ok(ip)
    }

    fn bootp(&self, element: &Element) -> Result<Bootp, Error> {
        self.check_attrs(element, &["file", "server"])?;
        self.check_leaf(element)?;
        let file = element
            .attr("file")
            .ok_or_else(|| self.missing(element, "file"))?;
        if file.is_empty() || file.len() > Bootp::MAX_FILE || file.chars().any(char::is_control) {
            return Err(invalid(format!(
                "invalid boot file name '{}' in network '{}': it must be 1 to {} bytes without control characters",
                file.escape_debug(),
                self.network,
                Bootp::MAX_FILE
            )));
        }
        let server = self.ipv4(element, "server", "boot server")?;
        Ok(Bootp {
            file: file.to_owned(),
            server,
        })
    }

    /// The optional single `<lease>` child of a `<range>` or `<host>`.
    fn lease_child(&self, element: &Element) -> Result<Option<Lease>, Error> {
        self.check_no_text(element)?;
        let mut lease = None;
        for child in &element.children {
            match child.name.as_str() {
                "lease" => self.once(&mut lease, child)?,
                _ => return Err(self.unsupported_child(element, child)),
            }
        }
        let Some(lease) = lease else {
            return Ok(None);
        };
        self.check_attrs(lease, &["expiry", "unit"])?;
        self.check_leaf(lease)?;
        let Some(expiry) = self.number::<u64>(lease, "expiry", 0)? else {
            // libvirt ignores a <lease> without expiry; refuse it rather than drop it.
            return Err(invalid(format!(
                "missing required attribute 'expiry' on <lease> in network '{}' (line {})",
                self.network, lease.line
            )));
        };
        let unit = match lease.attr("unit") {
            None => LeaseUnit::Minutes,
            Some("seconds") => LeaseUnit::Seconds,
            Some("minutes") => LeaseUnit::Minutes,
            Some("hours") => LeaseUnit::Hours,
            Some(other) => {
                return Err(invalid(format!(
                    "Invalid value for attribute 'unit' in element 'lease': '{other}'."
                )));
            }
        };
        // An infinite lease is written back without unit; normalize so that
        // formatting and re-parsing is the identity.
        let unit = if expiry == 0 {
            LeaseUnit::Minutes
        } else {
            unit
        };
        Ok(Some(Lease { expiry, unit }))
    }
}
