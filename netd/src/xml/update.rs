//! `net-update`: one element added to, removed from or replaced in a section of a
//! definition, with the matching rules and messages of libvirt's
//! `virNetworkDefUpdateSection` (src/conf/network_conf.c).
//!
//! [`NetworkDef::updated`] works on a copy and validates the whole result, so a
//! rejected update leaves the definition as it was.

use std::fmt;
use std::str::FromStr;

use super::dom::parse_document_of;
use super::model::{DhcpHost, DnsHost, DnsSrv, DnsTxt, ForwardMode, IpDef, NetworkDef};
use super::parse::Parser;
use super::{Class, Error, invalid, invalid_as};

/// What to do with the element (`<command>` of `virsh net-update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateCommand {
    /// Replace the entry the element matches.
    Modify,
    /// Remove the entry the element matches.
    Delete,
    /// Insert the element before the section's other entries.
    AddFirst,
    /// Append the element (`add` is a synonym).
    AddLast,
}

impl UpdateCommand {
    /// virsh's name of the command.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateCommand::Modify => "modify",
            UpdateCommand::Delete => "delete",
            UpdateCommand::AddFirst => "add-first",
            UpdateCommand::AddLast => "add-last",
        }
    }

    fn is_add(self) -> bool {
        matches!(self, UpdateCommand::AddFirst | UpdateCommand::AddLast)
    }
}

impl FromStr for UpdateCommand {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "modify" => Ok(UpdateCommand::Modify),
            "delete" => Ok(UpdateCommand::Delete),
            "add-first" => Ok(UpdateCommand::AddFirst),
            "add" | "add-last" => Ok(UpdateCommand::AddLast),
            other => Err(invalid_as(
                Class::InvalidArgument,
                format!("unrecognized command name '{other}'"),
            )),
        }
    }
}

impl fmt::Display for UpdateCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which part of the definition to change (`<section>` of `virsh net-update`). Every
/// libvirt section is named here so an unimplemented one gets libvirt's refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateSection {
    /// `<bridge>` (libvirt cannot update it either).
    Bridge,
    /// `<domain>` (libvirt cannot update it either).
    Domain,
    /// `<ip>` (libvirt cannot update it either).
    Ip,
    /// `<ip><dhcp><host>`.
    IpDhcpHost,
    /// `<ip><dhcp><range>`.
    IpDhcpRange,
    /// `<forward>` (libvirt cannot update it either).
    Forward,
    /// `<forward><interface>`: a macvtap network's pool, or a nat or route network's
    /// one device.
    ForwardInterface,
    /// `<forward><pf>` (libvirt cannot update it either).
    ForwardPf,
    /// `<portgroup>`.
    Portgroup,
    /// `<dns><host>`.
    DnsHost,
    /// `<dns><txt>`.
    DnsTxt,
    /// `<dns><srv>`.
    DnsSrv,
}

impl UpdateSection {
    /// virsh's name of the section.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateSection::Bridge => "bridge",
            UpdateSection::Domain => "domain",
            UpdateSection::Ip => "ip",
            UpdateSection::IpDhcpHost => "ip-dhcp-host",
            UpdateSection::IpDhcpRange => "ip-dhcp-range",
            UpdateSection::Forward => "forward",
            UpdateSection::ForwardInterface => "forward-interface",
            UpdateSection::ForwardPf => "forward-pf",
            UpdateSection::Portgroup => "portgroup",
            UpdateSection::DnsHost => "dns-host",
            UpdateSection::DnsTxt => "dns-txt",
            UpdateSection::DnsSrv => "dns-srv",
        }
    }

    /// The element an update of this section carries, for the sections kvnet updates
    /// (libvirt cannot update bridge, domain, ip and forward).
    fn element(self) -> Option<&'static str> {
        match self {
            UpdateSection::IpDhcpHost | UpdateSection::DnsHost => Some("host"),
            UpdateSection::IpDhcpRange => Some("range"),
            UpdateSection::DnsTxt => Some("txt"),
            UpdateSection::DnsSrv => Some("srv"),
            UpdateSection::Portgroup => Some("portgroup"),
            UpdateSection::ForwardInterface => Some("interface"),
            UpdateSection::Bridge
            | UpdateSection::Domain
            | UpdateSection::Ip
            | UpdateSection::Forward
            | UpdateSection::ForwardPf => None,
        }
    }
}

impl UpdateSection {
    /// Every section, in libvirt's order.
    pub const ALL: [UpdateSection; 12] = [
        UpdateSection::Bridge,
        UpdateSection::Domain,
        UpdateSection::Ip,
        UpdateSection::IpDhcpHost,
        UpdateSection::IpDhcpRange,
        UpdateSection::Forward,
        UpdateSection::ForwardInterface,
        UpdateSection::ForwardPf,
        UpdateSection::Portgroup,
        UpdateSection::DnsHost,
        UpdateSection::DnsTxt,
        UpdateSection::DnsSrv,
    ];
}

impl FromStr for UpdateSection {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        UpdateSection::ALL
            .into_iter()
            .find(|section| section.as_str() == text)
            .ok_or_else(|| {
                invalid_as(
                    Class::InvalidArgument,
                    format!("unrecognized section name '{text}'"),
                )
            })
    }
}

impl fmt::Display for UpdateSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `net-update` request against a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    /// What to do.
    pub command: UpdateCommand,
    /// Where.
    pub section: UpdateSection,
    /// Which `<ip>` (document order, all families) for the `ip-dhcp-*` sections;
    /// `None` picks the `<ip>` that has `<dhcp>`, else the first IPv4, else the first IPv6.
    pub parent_index: Option<usize>,
    /// The element, e.g. `<host mac='52:54:00:00:00:01' ip='192.168.122.10'/>`.
    pub xml: &'a str,
}

/// An update that is well-formed but does not fit the definition (duplicate, no
/// match, no such `<ip>`): libvirt's `VIR_ERR_OPERATION_INVALID`.
fn refused(message: String) -> Error {
    Error::UpdateRefused(message)
}

impl NetworkDef {
    /// The definition with `update` applied, validated whole; `self` is unchanged.
    pub fn updated(&self, update: &Update<'_>) -> Result<NetworkDef, Error> {
        let mut def = self.clone();
        def.apply(update)?;
        def.validate()?;
        Ok(def)
    }

    fn apply(&mut self, update: &Update<'_>) -> Result<(), Error> {
        let section = update.section;
        let unsupported = || {
            let what = match section {
                UpdateSection::ForwardPf => "forward pf",
                other => other.as_str(),
            };
            Error::UpdateUnsupported(format!(
                "can't update '{what}' section of network '{}'",
                self.name
            ))
        };
        let root = parse_document_of(update.xml, "update")?;
        let Some(element) = section.element() else {
            return Err(unsupported());
        };
        // libvirt refuses to modify DNS records before it looks at the element.
        let records = match section {
            UpdateSection::DnsHost => Some("HOST"),
            UpdateSection::DnsSrv => Some("SRV"),
            UpdateSection::DnsTxt => Some("TXT"),
            _ => None,
        };
        if let Some(records) = records
            && update.command == UpdateCommand::Modify
        {
            return Err(Error::UpdateUnsupported(format!(
                "DNS {records} records cannot be modified, only added or deleted"
            )));
        }
        if root.name != element {
            return Err(invalid(format!(
                "unexpected element <{}>, expecting <{element}>, while updating network '{}'",
                root.name, self.name
            )));
        }
        let parser = Parser::for_network(&self.name);
        let command = update.command;
        match section {
            UpdateSection::IpDhcpHost => {
                let index = self.dhcp_parent(update.parent_index)?;
                self.update_dhcp_host(index, command, &parser, &root)
            }
            UpdateSection::IpDhcpRange => {
                let index = self.dhcp_parent(update.parent_index)?;
                self.update_dhcp_range(index, command, &parser, &root)
            }
            UpdateSection::DnsHost => self.update_dns_host(command, &parser, &root),
            UpdateSection::DnsTxt => self.update_dns_txt(command, &parser, &root),
            UpdateSection::DnsSrv => self.update_dns_srv(command, &parser, &root),
            UpdateSection::Portgroup => self.update_portgroup(command, &parser, &root),
            // A macvtap network's pool, or the one device a nat or route network
            // forwards through (`<forward dev=>`). An open network takes none: the
            // validation of the result refuses it with libvirt's message.
            UpdateSection::ForwardInterface
                if self.macvtap_mode().is_some()
                    || matches!(
                        self.forward.mode,
                        ForwardMode::Nat | ForwardMode::Route | ForwardMode::Open
                    ) =>
            {
                // `connections` is a live counter net-dumpxml shows; ignored as on input.
                parser.check_attrs(&root, &["dev", "connections"])?;
                parser.check_leaf(&root)?;
                self.update_forward_interface(command, &root)
            }
            _ => Err(unsupported()),
        }
    }

    /// libvirt's `virNetworkIPDefByIndex`: the `<ip>` whose `<dhcp>` an update changes.
    fn dhcp_parent(&self, parent_index: Option<usize>) -> Result<usize, Error> {
        if let Some(index) = parent_index {
            return if index < self.ips.len() {
                Ok(index)
            } else {
                Err(refused(format!(
                    "couldn't update dhcp host entry - no <ip> element found at index {index} in network '{}'",
                    self.name
                )))
            };
        }
        self.ips
            .iter()
            .position(IpDef::has_dhcp)
            .or_else(|| self.ips.iter().position(IpDef::is_ipv4))
            .or_else(|| self.ips.iter().position(|ip| !ip.is_ipv4()))
            .ok_or_else(|| {
                refused(format!(
                    "couldn't update dhcp host entry - no <ip> element found in network '{}'",
                    self.name
                ))
            })
    }

    /// Refuses to give a second `<ip>` of a family a `<dhcp>` (libvirt checks on add).
    fn check_single_dhcp(&self, index: usize) -> Result<(), Error> {
        let target = &self.ips[index];
        let other = self
            .ips
            .iter()
            .enumerate()
            .any(|(i, ip)| i != index && ip.is_ipv4() == target.is_ipv4() && ip.has_dhcp());
        if other {
            let family = if target.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(refused(format!(
                "dhcp is supported only for a single {family} address on each network"
            )));
        }
        Ok(())
    }

    fn update_dhcp_host(
        &mut self,
        index: usize,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        if command == UpdateCommand::Delete {
            let pattern = parser.dhcp_host_fields(element)?;
            super::validate::check_dhcp_host_identity(
                &name,
                !self.ips[index].is_ipv4(),
                pattern.mac,
                pattern
                    .mac_text
                    .clone()
                    .or_else(|| pattern.mac.map(|mac| mac.to_string()))
                    .as_deref(),
                pattern.id.as_deref(),
                pattern.name.as_deref(),
            )?;
            if pattern.mac.is_none() && pattern.name.is_none() && pattern.ip.is_none() {
                return Err(invalid(format!(
                    "At least one of name, mac, or ip attribute must be specified for static host definition in network '{name}'"
                )));
            }
            let hosts = &mut self.ips[index].dhcp_hosts;
            // Every attribute given must match (a host without a MAC matches any MAC).
            let position = hosts.iter().position(|host| {
                (pattern.mac.is_none() || host.mac.is_none() || pattern.mac == host.mac)
                    && (pattern.name.is_none() || pattern.name == host.name)
                    && pattern.ip.is_none_or(|ip| ip == host.ip)
            });
            let Some(position) = position else {
                return Err(refused(format!(
                    "couldn't locate a matching dhcp host entry in network '{name}'"
                )));
            };
            hosts.remove(position);
            return Ok(());
        }
        let host = parser.dhcp_host(element)?;
        // libvirt's host parser knows the <ip> the host goes to, and checks the host
        // against it before the update compares address families.
        super::validate::check_dhcp_host_identity(
            &name,
            !self.ips[index].is_ipv4(),
            host.mac,
            host.mac_display().as_deref(),
            host.id.as_deref(),
            host.name.as_deref(),
        )?;
        if host.ip.is_ipv4() != self.ips[index].is_ipv4() {
            return Err(refused(
                "the address family of a host entry IP must match the address family of the dhcp element's parent"
                    .into(),
            ));
        }
        super::validate::check_dhcp_host_usable(&self.name, &self.ips[index], host.ip)?;
        let shown = |host: &DhcpHost| {
            (
                host.mac_display().unwrap_or_else(|| "unknown".to_owned()),
                host.name.clone().unwrap_or_else(|| "(null)".to_owned()),
            )
        };
        if command == UpdateCommand::Modify {
            let hosts = &mut self.ips[index].dhcp_hosts;
            // The entry with this mac, ip or name gets the new ip and mac/name.
            let position = hosts.iter().position(|existing| {
                (host.mac.is_some() && host.mac == existing.mac)
                    || host.ip == existing.ip
                    || (host.name.is_some() && host.name == existing.name)
            });
            let Some(position) = position else {
                let (mac, host_name) = shown(&host);
                return Err(refused(format!(
                    "couldn't locate an existing dhcp host entry with \"mac='{mac}'\" \"name='{host_name}'\" \"ip='{}'\" in network '{name}'",
                    host.ip
                )));
            };
            hosts[position] = host;
            return Ok(());
        }
        self.check_single_dhcp(index)?;
        let hosts = &mut self.ips[index].dhcp_hosts;
        let duplicate = hosts.iter().any(|existing| {
            (host.mac.is_some() && host.mac == existing.mac)
                || (host.name.is_some() && host.name == existing.name)
                || host.ip == existing.ip
        });
        if duplicate {
            let (mac, host_name) = shown(&host);
            return Err(refused(format!(
                "there is an existing dhcp host entry in network '{name}' that matches \"<host mac='{mac}' name='{host_name}' ip='{}'/>\"",
                host.ip
            )));
        }
        insert(hosts, command, host);
        Ok(())
    }

    fn update_dhcp_range(
        &mut self,
        index: usize,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        if command == UpdateCommand::Modify {
            return Err(Error::UpdateUnsupported(
                "dhcp ranges cannot be modified, only added or deleted".into(),
            ));
        }
        let range = parser.dhcp_range(element)?;
        // libvirt's range parser checks the range against its <ip> (family, subnet,
        // order) before the update compares address families.
        if let Some(subnet) = self.ips[index].subnet() {
            super::validate::check_range(subnet, range.start, range.end)?;
        }
        if range.start.is_ipv4() != self.ips[index].is_ipv4() {
            return Err(refused(
                "the address family of a dhcp range must match the address family of the dhcp element's parent"
                    .into(),
            ));
        }
        let position = self.ips[index]
            .dhcp_ranges
            .iter()
            .position(|existing| existing.start == range.start && existing.end == range.end);
        if command == UpdateCommand::Delete {
            let Some(position) = position else {
                return Err(refused(format!(
                    "couldn't locate a matching dhcp range entry in network '{name}'"
                )));
            };
            self.ips[index].dhcp_ranges.remove(position);
            return Ok(());
        }
        self.check_single_dhcp(index)?;
        if position.is_some() {
            return Err(refused(format!(
                "there is an existing dhcp range entry in network '{name}' that matches \"<range start='{}' end='{}'/>\"",
                range.start, range.end
            )));
        }
        insert(&mut self.ips[index].dhcp_ranges, command, range);
        Ok(())
    }

    fn update_dns_host(
        &mut self,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        if command.is_add() {
            let host = parser.dns_host(element)?;
            // Several addresses for one name are legitimate: only the address must be new.
            if self.dns.hosts.iter().any(|existing| existing.ip == host.ip) {
                return Err(refused(format!(
                    "there is already at least one DNS HOST record with a matching field in network {name}"
                )));
            }
            insert(&mut self.dns.hosts, command, host);
            return Ok(());
        }
        let (ip, hostnames) = parser.dns_host_fields(element)?;
        if ip.is_none() && hostnames.is_empty() {
            return Err(invalid_as(
                Class::XmlDetail,
                format!("Missing ip and hostname in network '{name}' DNS HOST record"),
            ));
        }
        let matches = |existing: &DnsHost| {
            Some(existing.ip) == ip
                || hostnames
                    .iter()
                    .any(|hostname| existing.hostnames.contains(hostname))
        };
        let position = single_match(&self.dns.hosts, matches).map_err(|count| {
            refused(if count == 0 {
                format!("couldn't locate a matching DNS HOST record in network {name}")
            } else {
                format!("multiple matching DNS HOST records were found in network {name}")
            })
        })?;
        self.dns.hosts.remove(position);
        Ok(())
    }

    fn update_dns_srv(
        &mut self,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        let srv = parser.srv(element, !command.is_add())?;
        // Attributes not given (empty in a delete pattern) match anything.
        let given = |wanted: &str, have: &str| wanted.is_empty() || wanted == have;
        let optional =
            |wanted: &Option<String>, have: &Option<String>| wanted.is_none() || wanted == have;
        let matches = |existing: &DnsSrv| {
            optional(&srv.domain, &existing.domain)
                && given(&srv.service, &existing.service)
                && given(&srv.protocol, &existing.protocol)
                && optional(&srv.target, &existing.target)
        };
        if command.is_add() {
            if self.dns.srvs.iter().any(matches) {
                return Err(refused(format!(
                    "there is already at least one DNS SRV record matching all specified fields in network {name}"
                )));
            }
            insert(&mut self.dns.srvs, command, srv);
            return Ok(());
        }
        let position = single_match(&self.dns.srvs, matches).map_err(|count| {
            refused(if count == 0 {
                format!("couldn't locate a matching DNS SRV record in network {name}")
            } else {
                format!(
                    "multiple DNS SRV records matching all specified fields were found in network {name}"
                )
            })
        })?;
        self.dns.srvs.remove(position);
        Ok(())
    }

    fn update_dns_txt(
        &mut self,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        let txt: DnsTxt = parser.dns_txt(element, !command.is_add())?;
        let position = self
            .dns
            .txts
            .iter()
            .position(|existing| existing.name == txt.name);
        if command.is_add() {
            if position.is_some() {
                return Err(refused(format!(
                    "there is already a DNS TXT record with name '{}' in network {name}",
                    txt.name
                )));
            }
            insert(&mut self.dns.txts, command, txt);
            return Ok(());
        }
        let Some(position) = position else {
            return Err(refused(format!(
                "couldn't locate a matching DNS TXT record in network {name}"
            )));
        };
        self.dns.txts.remove(position);
        Ok(())
    }

    /// libvirt's `virNetworkDefUpdatePortGroup`: groups match by name; a new or modified
    /// group may be the default only if no other group is. Ports made already keep what
    /// they took from a group.
    fn update_portgroup(
        &mut self,
        command: UpdateCommand,
        parser: &Parser,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        let group = parser.portgroup(element)?;
        let found = self
            .portgroups
            .iter()
            .position(|existing| existing.name == group.name);
        let default = self.portgroups.iter().position(|existing| existing.default);
        let position = match (found, command.is_add()) {
            (None, false) => {
                return Err(refused(format!(
                    "couldn't find a portgroup entry in network '{name}' matching <portgroup name='{}'>",
                    group.name
                )));
            }
            (Some(_), true) => {
                return Err(refused(format!(
                    "there is an existing portgroup entry in network '{name}' that matches \"<portgroup name='{}'>\"",
                    group.name
                )));
            }
            (position, _) => position,
        };
        if command != UpdateCommand::Delete
            && group.default
            && default.is_some_and(|default| Some(default) != position)
        {
            return Err(refused(format!(
                "a different portgroup entry in network '{name}' is already set as the default. Only one default is allowed."
            )));
        }
        match (command, position) {
            (UpdateCommand::Modify, Some(position)) => self.portgroups[position] = group,
            (UpdateCommand::Delete, Some(position)) => {
                self.portgroups.remove(position);
            }
            (command, _) => insert(&mut self.portgroups, command, group),
        }
        Ok(())
    }

    /// libvirt's `virNetworkDefUpdateForwardInterface`: on a macvtap network's pool, or
    /// on the device a nat or route network forwards through, which may be one at most
    /// (libvirt refuses a second when it parses the result). A pool device in use by
    /// ports is checked by the daemon, which knows them.
    fn update_forward_interface(
        &mut self,
        command: UpdateCommand,
        element: &super::dom::Element,
    ) -> Result<(), Error> {
        let name = self.name.clone();
        if command == UpdateCommand::Modify {
            return Err(Error::UpdateUnsupported(
                "forward interface entries cannot be modified, only added or deleted".into(),
            ));
        }
        let Some(dev) = element.attr("dev") else {
            return Err(invalid("missing dev attribute in <interface> element"));
        };
        let single_device = self.macvtap_mode().is_none();
        let mut pool = if single_device {
            self.forward.dev.iter().cloned().collect()
        } else {
            std::mem::take(&mut self.forward.interfaces)
        };
        let found = pool.iter().position(|listed| listed == dev);
        let outcome = match (found, command) {
            (Some(_), UpdateCommand::AddFirst | UpdateCommand::AddLast) => Err(refused(format!(
                "there is an existing interface entry in network '{name}' that matches \"<interface dev='{dev}'>\""
            ))),
            (None, UpdateCommand::Delete) => Err(refused(format!(
                "couldn't find an interface entry in network '{name}' matching <interface dev='{dev}'>"
            ))),
            (Some(position), _) => {
                pool.remove(position);
                Ok(())
            }
            (None, command) => {
                insert(&mut pool, command, dev.to_owned());
                Ok(())
            }
        };
        outcome?;
        if single_device {
            if pool.len() > 1 {
                return Err(invalid(format!(
                    "multiple forwarding interfaces specified for network '{name}', only one is supported"
                )));
            }
            self.forward.dev = pool.pop();
        } else {
            self.forward.interfaces = pool;
        }
        Ok(())
    }
}

/// Adds `entry` first or last.
fn insert<T>(entries: &mut Vec<T>, command: UpdateCommand, entry: T) {
    if command == UpdateCommand::AddFirst {
        entries.insert(0, entry);
    } else {
        entries.push(entry);
    }
}

/// The position of the only entry matching, or how many matched (0 or more than 1).
fn single_match<T>(entries: &[T], matches: impl Fn(&T) -> bool) -> Result<usize, usize> {
    let mut found = entries.iter().enumerate().filter(|(_, e)| matches(e));
    match (found.next(), found.next()) {
        (Some((position, _)), None) => Ok(position),
        (None, _) => Err(0),
        (Some(_), Some(_)) => Err(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "<network>
  <name>default</name>
  <forward/>
  <dns>
    <txt name='example' value='example value'/>
    <srv service='ldap' protocol='tcp' domain='test.example' target='ldap.test.example' port='389'/>
    <host ip='192.168.122.2'><hostname>myhost</hostname><hostname>myhostalias</hostname></host>
  </dns>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.100' end='192.168.122.254'/>
      <host mac='52:54:00:00:00:01' name='one' ip='192.168.122.11'/>
      <host mac='52:54:00:00:00:02' name='two' ip='192.168.122.12'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'/>
</network>
";

    fn net() -> NetworkDef {
        NetworkDef::from_xml(NET).expect("test network parses")
    }

    fn update(
        def: &NetworkDef,
        command: &str,
        section: &str,
        parent_index: Option<usize>,
        xml: &str,
    ) -> Result<NetworkDef, Error> {
        def.updated(&Update {
            command: command.parse()?,
            section: section.parse()?,
            parent_index,
            xml,
        })
    }

    fn ok(def: &NetworkDef, command: &str, section: &str, xml: &str) -> NetworkDef {
        update(def, command, section, None, xml)
            .unwrap_or_else(|e| panic!("{command} {section} {xml}: {e}"))
    }

    fn err(def: &NetworkDef, command: &str, section: &str, xml: &str) -> Error {
        match update(def, command, section, None, xml) {
            Ok(updated) => panic!(
                "{command} {section} {xml} was accepted:\n{}",
                updated.to_xml()
            ),
            Err(e) => e,
        }
    }

    fn host_ips(def: &NetworkDef) -> Vec<String> {
        def.ips[0]
            .dhcp_hosts
            .iter()
            .map(|h| h.ip.to_string())
            .collect()
    }

    #[test]
    fn a_host_at_the_broadcast_address_is_refused_and_one_there_can_still_be_deleted() {
        let e = err(
            &net(),
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:a7' ip='192.168.122.255'/>",
        );
        assert_eq!(
            e.to_string(),
            "static host address 192.168.122.255 in network 'default' is the broadcast address of 192.168.122.0/24"
        );
        // A definition stored before the check holds one: it can be taken out.
        let stored =
            NetworkDef::from_xml(&NET.replace("192.168.122.12", "192.168.122.255")).expect("loads");
        let mended = ok(
            &stored,
            "delete",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:02'/>",
        );
        assert_eq!(host_ips(&mended), ["192.168.122.11"]);
    }

    #[test]
    fn command_and_section_names_are_virsh_s() {
        assert_eq!(
            "add".parse::<UpdateCommand>().ok(),
            Some(UpdateCommand::AddLast)
        );
        for command in ["modify", "delete", "add-first", "add-last"] {
            assert_eq!(
                command.parse::<UpdateCommand>().map(|c| c.as_str()).ok(),
                Some(command)
            );
        }
        assert_eq!(
            "append".parse::<UpdateCommand>().map_err(|e| e.to_string()),
            Err("unrecognized command name 'append'".to_owned())
        );
        for section in [
            "bridge",
            "domain",
            "ip",
            "ip-dhcp-host",
            "ip-dhcp-range",
            "forward",
            "forward-interface",
            "forward-pf",
            "portgroup",
            "dns-host",
            "dns-txt",
            "dns-srv",
        ] {
            assert_eq!(
                section.parse::<UpdateSection>().map(|s| s.as_str()).ok(),
                Some(section)
            );
        }
        assert_eq!(
            "dns".parse::<UpdateSection>().map_err(|e| e.to_string()),
            Err("unrecognized section name 'dns'".to_owned())
        );
    }

    #[test]
    fn dhcp_hosts_are_added_first_or_last_and_written_back() {
        let def = net();
        let last = ok(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' name='three' ip='192.168.122.13'/>",
        );
        assert_eq!(
            host_ips(&last),
            ["192.168.122.11", "192.168.122.12", "192.168.122.13"]
        );
        assert!(
            last.to_xml().contains(
                "      <host mac='52:54:00:00:00:03' name='three' ip='192.168.122.13'/>\n"
            ),
            "{}",
            last.to_xml()
        );
        let first = ok(
            &def,
            "add-first",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' ip='192.168.122.13'><lease expiry='1' unit='hours'/></host>",
        );
        assert_eq!(
            host_ips(&first),
            ["192.168.122.13", "192.168.122.11", "192.168.122.12"]
        );
        assert_eq!(
            first.ips[0].dhcp_hosts[0].lease.and_then(|l| l.seconds()),
            Some(3600)
        );
    }

    #[test]
    fn duplicate_dhcp_hosts_are_refused_with_libvirt_s_message() {
        let def = net();
        for xml in [
            "<host mac='52:54:00:00:00:01' ip='192.168.122.20'/>",
            "<host mac='52:54:00:00:00:09' name='two' ip='192.168.122.20'/>",
            "<host mac='52:54:00:00:00:09' ip='192.168.122.12'/>",
        ] {
            let e = err(&def, "add", "ip-dhcp-host", xml);
            assert!(matches!(e, Error::UpdateRefused(_)), "{e:?}");
        }
        assert_eq!(
            err(
                &def,
                "add",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:01' ip='192.168.122.20'/>"
            )
            .to_string(),
            "there is an existing dhcp host entry in network 'default' that matches \"<host mac='52:54:00:00:00:01' name='(null)' ip='192.168.122.20'/>\""
        );
    }

    #[test]
    fn dhcp_host_outside_the_subnet_or_without_mac_and_name_is_invalid() {
        let def = net();
        let e = err(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' ip='10.0.0.3'/>",
        );
        assert_eq!(
            e.to_string(),
            "static host address 10.0.0.3 is not within network 192.168.122.0/24 of network 'default'"
        );
        let e = err(&def, "add", "ip-dhcp-host", "<host ip='192.168.122.30'/>");
        assert_eq!(
            e.to_string(),
            "Static host definition in IPv4 network 'default' must have mac or name attribute"
        );
        let e = err(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03'/>",
        );
        assert_eq!(
            e.to_string(),
            "Missing IP address in static host definition for network 'default'"
        );
        let e = err(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='zz' ip='192.168.122.30'/>",
        );
        assert_eq!(
            e.to_string(),
            "Cannot parse MAC address 'zz' in network 'default'"
        );
        let e = err(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' ip='2001:db8:ca2:2::3'/>",
        );
        assert!(
            e.to_string()
                .starts_with("the address family of a host entry IP"),
            "{e}"
        );
    }

    #[test]
    fn dhcp_host_delete_matches_every_given_attribute() {
        let def = net();
        assert_eq!(
            host_ips(&ok(
                &def,
                "delete",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:02'/>"
            )),
            ["192.168.122.11"]
        );
        assert_eq!(
            host_ips(&ok(
                &def,
                "delete",
                "ip-dhcp-host",
                "<host ip='192.168.122.11'/>"
            )),
            ["192.168.122.12"]
        );
        assert_eq!(
            host_ips(&ok(
                &def,
                "delete",
                "ip-dhcp-host",
                "<host name='two' ip='192.168.122.12'/>"
            )),
            ["192.168.122.11"]
        );
        let e = err(
            &def,
            "delete",
            "ip-dhcp-host",
            "<host name='two' ip='192.168.122.11'/>",
        );
        assert_eq!(
            e.to_string(),
            "couldn't locate a matching dhcp host entry in network 'default'"
        );
        assert!(matches!(e, Error::UpdateRefused(_)));
        let e = err(&def, "delete", "ip-dhcp-host", "<host/>");
        assert!(
            e.to_string()
                .starts_with("At least one of name, mac, or ip"),
            "{e}"
        );
    }

    #[test]
    fn dhcp_host_modify_replaces_the_entry_matching_mac_ip_or_name() {
        let def = net();
        let by_mac = ok(
            &def,
            "modify",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:02' name='deux' ip='192.168.122.42'/>",
        );
        assert_eq!(host_ips(&by_mac), ["192.168.122.11", "192.168.122.42"]);
        assert_eq!(by_mac.ips[0].dhcp_hosts[1].name.as_deref(), Some("deux"));
        let by_name = ok(
            &def,
            "modify",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:07' name='one' ip='192.168.122.41'/>",
        );
        assert_eq!(host_ips(&by_name), ["192.168.122.41", "192.168.122.12"]);
        let e = err(
            &def,
            "modify",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:07' name='seven' ip='192.168.122.47'/>",
        );
        assert_eq!(
            e.to_string(),
            "couldn't locate an existing dhcp host entry with \"mac='52:54:00:00:00:07'\" \"name='seven'\" \"ip='192.168.122.47'\" in network 'default'"
        );
    }

    #[test]
    fn parent_index_picks_the_ip_element() {
        let def = net();
        // Index 1 is the IPv6 <ip>: an IPv4 host does not belong there.
        let e = update(
            &def,
            "add",
            "ip-dhcp-host",
            Some(1),
            "<host name='v6' ip='192.168.122.30'/>",
        )
        .expect_err("wrong family");
        assert!(
            e.to_string()
                .starts_with("the address family of a host entry IP"),
            "{e}"
        );
        let v4 = update(
            &def,
            "add",
            "ip-dhcp-host",
            Some(0),
            "<host name='three' ip='192.168.122.13'/>",
        )
        .expect("IPv4 host at index 0");
        assert_eq!(v4.ips[0].dhcp_hosts.len(), 3);
        let e = update(
            &def,
            "add",
            "ip-dhcp-host",
            Some(2),
            "<host mac='52:54:00:00:00:03' ip='192.168.122.13'/>",
        )
        .expect_err("no third ip");
        assert_eq!(
            e.to_string(),
            "couldn't update dhcp host entry - no <ip> element found at index 2 in network 'default'"
        );
        // libvirt's parsers check against the parent first: a MAC has no place on the
        // IPv6 <ip>, and an IPv4 range is of the wrong family for it.
        let e = update(
            &def,
            "add",
            "ip-dhcp-host",
            Some(1),
            "<host mac='52:54:00:00:00:10' ip='192.168.122.10'/>",
        )
        .expect_err("MAC on the IPv6 parent");
        assert_eq!(
            e.to_string(),
            "Invalid to specify MAC address '52:54:00:00:00:10' in network 'default' IPv6 static host definition"
        );
        let e = update(
            &def,
            "add",
            "ip-dhcp-range",
            Some(1),
            "<range start='192.168.122.2' end='192.168.122.9'/>",
        )
        .expect_err("IPv4 range on the IPv6 parent");
        assert_eq!(
            e.to_string(),
            "mismatch of address family in range 192.168.122.2 - 192.168.122.9 for network 2001:db8:ca2:2::1"
        );
    }

    /// DHCPv6 entries go to the IPv6 `<ip>` `--parent-index` names; a DUID (`id`) is
    /// refused under the IPv4 one, a MAC under the IPv6 one.
    #[test]
    fn dhcpv6_hosts_and_ranges_are_added_to_the_ipv6_parent() {
        let def = net();
        let with_host = update(
            &def,
            "add",
            "ip-dhcp-host",
            Some(1),
            "<host id='0:4:7e:7d:f0:7d' name='v6h' ip='2001:db8:ca2:2::30'/>",
        )
        .expect("IPv6 host");
        let host = &with_host.ips[1].dhcp_hosts[0];
        assert_eq!(host.duid(), Some(vec![0, 4, 0x7e, 0x7d, 0xf0, 0x7d]));
        assert_eq!(host.name.as_deref(), Some("v6h"));
        let with_range = update(
            &with_host,
            "add-first",
            "ip-dhcp-range",
            Some(1),
            "<range start='2001:db8:ca2:2::10' end='2001:db8:ca2:2::20'/>",
        )
        .expect("IPv6 range");
        assert!(with_range.to_xml().contains(
            "  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>\n    <dhcp>\n      <range start='2001:db8:ca2:2::10' end='2001:db8:ca2:2::20'/>\n      <host id='0:4:7e:7d:f0:7d' name='v6h' ip='2001:db8:ca2:2::30'/>\n    </dhcp>\n  </ip>\n"
        ), "{}", with_range.to_xml());
        // The default parent is now the first <ip> with <dhcp>: the IPv4 one.
        let e = update(
            &with_range,
            "modify",
            "ip-dhcp-host",
            Some(1),
            "<host name='v6h' ip='2001:db8:ca2:2::31'/>",
        )
        .expect("modify by name");
        assert_eq!(e.ips[1].dhcp_hosts[0].ip.to_string(), "2001:db8:ca2:2::31");
        let removed = update(
            &with_range,
            "delete",
            "ip-dhcp-host",
            Some(1),
            "<host name='v6h'/>",
        )
        .expect("delete by name");
        assert!(removed.ips[1].dhcp_hosts.is_empty());
        for (parent, xml, expected) in [
            (
                Some(0),
                "<host id='0:1:0:1:aa' name='v4h' ip='192.168.122.30'/>",
                "unsupported id '0:1:0:1:aa' on dhcp <host> 192.168.122.30 in network 'default': it is a DHCPv6 client DUID, DHCPv4 reservations use mac",
            ),
            (
                Some(1),
                "<host mac='52:54:00:00:00:09' ip='2001:db8:ca2:2::30'/>",
                "Invalid to specify MAC address '52:54:00:00:00:09' in network 'default' IPv6 static host definition",
            ),
            (
                Some(1),
                "<host ip='2001:db8:ca2:2::30'/>",
                "Static host definition in IPv6 network 'default' must have id or name attribute",
            ),
            (
                Some(1),
                "<host id='0:1:zz' ip='2001:db8:ca2:2::30'/>",
                "Invalid character 'z' in id '0:1:zz' of network 'default'",
            ),
            (
                Some(1),
                "<host name='far' ip='2001:db8:ca2:3::30'/>",
                "static host address 2001:db8:ca2:3::30 is not within network 2001:db8:ca2:2::/64 of network 'default'",
            ),
        ] {
            let e = update(&def, "add", "ip-dhcp-host", parent, xml).expect_err(xml);
            assert_eq!(e.to_string(), expected, "{xml}");
        }
    }

    #[test]
    fn default_parent_is_the_ip_with_dhcp_else_the_first_ipv4() {
        let mut def = net();
        def.ips.swap(0, 1);
        let updated = ok(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' ip='192.168.122.13'/>",
        );
        assert_eq!(updated.ips[1].dhcp_hosts.len(), 3);
        def.ips[1].dhcp_hosts.clear();
        def.ips[1].dhcp_ranges.clear();
        let updated = ok(
            &def,
            "add",
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:03' ip='192.168.122.13'/>",
        );
        assert_eq!(
            updated.ips[1].dhcp_hosts.len(),
            1,
            "first IPv4 <ip>, not the first <ip>"
        );
    }

    #[test]
    fn deleting_the_last_range_under_a_bootp_is_refused_not_dropped() {
        let def = NetworkDef::from_xml(
            "<network><name>pxe</name><ip address='10.0.0.1' prefix='24'><dhcp>\
             <range start='10.0.0.2' end='10.0.0.9'/><bootp file='pxelinux.0'/></dhcp></ip></network>",
        )
        .expect("parses");
        let e = err(
            &def,
            "delete",
            "ip-dhcp-range",
            "<range start='10.0.0.2' end='10.0.0.9'/>",
        );
        assert!(e.to_string().contains("<bootp>"), "{e}");
    }

    #[test]
    fn dhcp_ranges_are_added_and_deleted_but_not_modified() {
        let def = net();
        let removed = ok(
            &def,
            "delete",
            "ip-dhcp-range",
            "<range start='192.168.122.100' end='192.168.122.254'/>",
        );
        assert!(removed.ips[0].dhcp_ranges.is_empty());
        let added = ok(
            &removed,
            "add",
            "ip-dhcp-range",
            "<range start='192.168.122.50' end='192.168.122.60'/>",
        );
        assert_eq!(
            added.ips[0].dhcp_ranges[0].start.to_string(),
            "192.168.122.50"
        );
        let e = err(
            &def,
            "add",
            "ip-dhcp-range",
            "<range start='192.168.122.100' end='192.168.122.254'/>",
        );
        assert!(matches!(e, Error::UpdateRefused(_)), "{e:?}");
        let e = err(
            &def,
            "modify",
            "ip-dhcp-range",
            "<range start='192.168.122.100' end='192.168.122.200'/>",
        );
        assert!(matches!(e, Error::UpdateUnsupported(_)), "{e:?}");
        let e = err(
            &def,
            "delete",
            "ip-dhcp-range",
            "<range start='192.168.122.100' end='192.168.122.200'/>",
        );
        assert_eq!(
            e.to_string(),
            "couldn't locate a matching dhcp range entry in network 'default'"
        );
    }

    #[test]
    fn dns_hosts_add_by_new_address_and_delete_by_address_or_name() {
        let def = net();
        let added = ok(
            &def,
            "add-first",
            "dns-host",
            "<host ip='192.168.122.3'><hostname>other</hostname></host>",
        );
        assert_eq!(added.dns.hosts[0].hostnames, ["other"]);
        // A known name at a new address is fine; a known address is not.
        ok(
            &def,
            "add",
            "dns-host",
            "<host ip='192.168.122.4'><hostname>myhost</hostname></host>",
        );
        let e = err(
            &def,
            "add",
            "dns-host",
            "<host ip='192.168.122.2'><hostname>new</hostname></host>",
        );
        assert_eq!(
            e.to_string(),
            "there is already at least one DNS HOST record with a matching field in network default"
        );
        assert!(
            ok(
                &def,
                "delete",
                "dns-host",
                "<host><hostname>myhostalias</hostname></host>"
            )
            .dns
            .hosts
            .is_empty()
        );
        assert!(
            ok(&def, "delete", "dns-host", "<host ip='192.168.122.2'/>")
                .dns
                .hosts
                .is_empty()
        );
        let e = err(&def, "delete", "dns-host", "<host ip='192.168.122.9'/>");
        assert_eq!(
            e.to_string(),
            "couldn't locate a matching DNS HOST record in network default"
        );
        let e = err(
            &added,
            "delete",
            "dns-host",
            "<host ip='192.168.122.3'><hostname>myhost</hostname></host>",
        );
        assert_eq!(
            e.to_string(),
            "multiple matching DNS HOST records were found in network default"
        );
        let e = err(
            &def,
            "modify",
            "dns-host",
            "<host ip='192.168.122.2'><hostname>x</hostname></host>",
        );
        assert!(matches!(e, Error::UpdateUnsupported(_)), "{e:?}");
        let e = err(&def, "add", "dns-host", "<host ip='192.168.122.5'/>");
        assert_eq!(
            e.to_string(),
            "Missing hostname in network 'default' DNS HOST record"
        );
    }

    #[test]
    fn dns_srv_and_txt_follow_libvirt_s_matching() {
        let def = net();
        let srv = "<srv service='http' protocol='tcp' target='web.test' port='80'/>";
        let added = ok(&def, "add", "dns-srv", srv);
        assert_eq!(added.dns.srvs.len(), 2);
        assert!(matches!(
            err(&added, "add", "dns-srv", srv),
            Error::UpdateRefused(_)
        ));
        // Delete by the fields given; both records are tcp, so that alone is ambiguous.
        assert_eq!(
            ok(&added, "delete", "dns-srv", "<srv service='ldap'/>")
                .dns
                .srvs[0]
                .service,
            "http"
        );
        assert_eq!(
            err(&added, "delete", "dns-srv", "<srv protocol='tcp'/>").to_string(),
            "multiple DNS SRV records matching all specified fields were found in network default"
        );
        let txt = ok(
            &def,
            "add-first",
            "dns-txt",
            "<txt name='second' value='two'/>",
        );
        assert_eq!(txt.dns.txts[0].name, "second");
        assert_eq!(
            err(
                &def,
                "add",
                "dns-txt",
                "<txt name='example' value='again'/>"
            )
            .to_string(),
            "there is already a DNS TXT record with name 'example' in network default"
        );
        assert!(
            ok(&def, "delete", "dns-txt", "<txt name='example'/>")
                .dns
                .txts
                .is_empty()
        );
        assert_eq!(
            err(&def, "delete", "dns-txt", "<txt name='none'/>").to_string(),
            "couldn't locate a matching DNS TXT record in network default"
        );
        assert!(
            err(&def, "add", "dns-txt", "<txt name='bad name' value='x'/>")
                .to_string()
                .starts_with("prohibited character in DNS TXT record name")
        );
    }

    #[test]
    fn a_macvtap_networks_pool_takes_devices_and_gives_them_up() {
        let def = NetworkDef::from_xml(
            "<network><name>lan</name><forward mode='vepa' dev='eth0'/></network>",
        )
        .expect("parse");
        let added = ok(&def, "add", "forward-interface", "<interface dev='eth1'/>");
        assert_eq!(added.forward.interfaces, ["eth0", "eth1"]);
        let first = ok(
            &def,
            "add-first",
            "forward-interface",
            "<interface dev='eth1'/>",
        );
        assert_eq!(first.forward.interfaces, ["eth1", "eth0"]);
        assert!(
            first.to_xml().contains("<forward dev='eth1' mode='vepa'>"),
            "{}",
            first.to_xml()
        );
        let emptied = ok(
            &def,
            "delete",
            "forward-interface",
            "<interface dev='eth0'/>",
        );
        assert!(emptied.forward.interfaces.is_empty());
        assert!(emptied.to_xml().contains("<forward mode='vepa'/>"));
        for (command, xml, expected) in [
            (
                "add",
                "<interface dev='eth0'/>",
                "there is an existing interface entry in network 'lan' that matches \"<interface dev='eth0'>\"",
            ),
            (
                "delete",
                "<interface dev='eth9'/>",
                "couldn't find an interface entry in network 'lan' matching <interface dev='eth9'>",
            ),
            (
                "modify",
                "<interface dev='eth0'/>",
                "forward interface entries cannot be modified, only added or deleted",
            ),
            (
                "add",
                "<interface/>",
                "missing dev attribute in <interface> element",
            ),
            (
                "add",
                "<interface dev='a/b'/>",
                "forward interface \"a/b\" in network 'lan' contains the invalid character '/'",
            ),
            (
                "add",
                "<pf dev='eth0'/>",
                "unexpected element <pf>, expecting <interface>, while updating network 'lan'",
            ),
        ] {
            assert_eq!(
                err(&def, command, "forward-interface", xml).to_string(),
                expected,
                "{command} {xml}"
            );
        }
    }

    #[test]
    fn a_nat_networks_one_forward_device_is_added_and_deleted() {
        let def = net();
        let added = ok(&def, "add", "forward-interface", "<interface dev='eth0'/>");
        assert_eq!(added.forward.dev.as_deref(), Some("eth0"));
        assert!(added.forward.interfaces.is_empty());
        assert_eq!(
            err(
                &added,
                "add",
                "forward-interface",
                "<interface dev='eth1'/>"
            )
            .to_string(),
            "multiple forwarding interfaces specified for network 'default', only one is supported"
        );
        assert_eq!(
            err(
                &added,
                "delete",
                "forward-interface",
                "<interface dev='eth1'/>"
            )
            .to_string(),
            "couldn't find an interface entry in network 'default' matching <interface dev='eth1'>"
        );
        let deleted = ok(
            &added,
            "delete",
            "forward-interface",
            "<interface dev='eth0'/>",
        );
        assert_eq!(deleted.forward.dev, None);
        let open = NetworkDef::from_xml(
            "<network><name>op</name><forward mode='open'/><ip address='10.0.0.1' prefix='24'/></network>",
        )
        .expect("parse");
        assert_eq!(
            err(&open, "add", "forward-interface", "<interface dev='eth0'/>").to_string(),
            "forward dev not allowed for network 'op' with forward mode='open'"
        );
        let isolated = NetworkDef::from_xml(
            "<network><name>iso</name><ip address='10.0.0.1' prefix='24'/></network>",
        )
        .expect("parse");
        assert!(matches!(
            err(
                &isolated,
                "add",
                "forward-interface",
                "<interface dev='eth0'/>"
            ),
            Error::UpdateUnsupported(_)
        ));
    }

    #[test]
    fn delete_patterns_are_checked_as_libvirt_checks_them() {
        let def = NetworkDef::from_xml(
            "<network><name>n</name>\
             <ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' ip='10.0.0.5'/></dhcp></ip>\
             <ip family='ipv6' address='fd00::1' prefix='64'><dhcp><host id='0:1:2' name='v6h' ip='fd00::5'/></dhcp></ip>\
             <dns><host ip='10.0.0.7'><hostname>seven</hostname></host></dns></network>",
        )
        .expect("parse");
        let delete_v6 = |xml: &str| update(&def, "delete", "ip-dhcp-host", Some(1), xml);
        // IPv6 hosts have no MAC, and one without a MAC matches any MAC: the pattern
        // must be refused, not delete v6h.
        assert_eq!(
            delete_v6("<host mac='52:54:00:00:00:01'/>")
                .expect_err("a MAC on IPv6")
                .to_string(),
            "Invalid to specify MAC address '52:54:00:00:00:01' in network 'n' IPv6 static host definition"
        );
        for (xml, expected) in [
            (
                "<host mac='01:00:5e:00:00:01'/>",
                "expected unicast mac address, found multicast '01:00:5e:00:00:01' in network 'n'",
            ),
            (
                "<host id='0:zz'/>",
                "Invalid character 'z' in id '0:zz' of network 'n'",
            ),
            (
                "<host name='-x'/>",
                "Cannot use host name '-x' in network 'n'",
            ),
        ] {
            assert_eq!(
                err(&def, "delete", "ip-dhcp-host", xml).to_string(),
                expected,
                "{xml}"
            );
        }
        for (section, xml, expected) in [
            (
                "dns-host",
                "<host ip='10.0.0.7'><hostname></hostname></host>",
                "Missing hostname in network 'n' DNS HOST record",
            ),
            (
                "dns-txt",
                "<txt name='a b'/>",
                "prohibited character in DNS TXT record name 'a b' of network n",
            ),
            (
                "dns-srv",
                "<srv service='x' port='5'/>",
                "DNS SRV port attribute not permitted without target for service 'x' in network 'n'",
            ),
        ] {
            assert_eq!(
                err(&def, "delete", section, xml).to_string(),
                expected,
                "{section} {xml}"
            );
        }
        assert_eq!(def.dns.hosts.len(), 1);
    }

    #[test]
    fn dns_records_are_refused_modification_before_their_element_is_read() {
        let def = net();
        assert_eq!(
            err(&def, "modify", "dns-host", "<txt name='a' value='b'/>").to_string(),
            "DNS HOST records cannot be modified, only added or deleted"
        );
        // A new host without a name is told so before its missing address.
        assert_eq!(
            err(&def, "add", "dns-host", "<host/>").to_string(),
            "Missing hostname in network 'default' DNS HOST record"
        );
        assert_eq!(
            err(
                &def,
                "add",
                "dns-srv",
                "<srv service='x' protocol='udp' port='0'/>"
            )
            .to_string(),
            "DNS SRV port attribute not permitted without target for service 'x' in network 'default'"
        );
        // As libvirt's virXPathUInt reads them: a value that is no number is invalid
        // before it is refused for the missing target; an empty one is none.
        assert_eq!(
            err(
                &def,
                "add",
                "dns-srv",
                "<srv service='x' protocol='udp' port='abc'/>"
            )
            .to_string(),
            "invalid DNS SRV port attribute for service 'x' in network 'default'"
        );
        assert_eq!(
            err(
                &def,
                "add",
                "dns-srv",
                "<srv service='x' protocol='udp' target='t.example' weight='70000'/>"
            )
            .to_string(),
            "invalid DNS SRV weight attribute for service 'x' in network 'default'"
        );
        ok(
            &def,
            "add",
            "dns-srv",
            "<srv service='x' protocol='udp' port=''/>",
        );
        // A pattern without service or protocol is matched, as in libvirt.
        assert_eq!(
            err(
                &def,
                "delete",
                "dns-srv",
                "<srv domain='d.example' target='t.example'/>"
            )
            .to_string(),
            "couldn't locate a matching DNS SRV record in network default"
        );
    }

    #[test]
    fn wrong_element_malformed_xml_and_unsupported_sections_are_refused() {
        let def = net();
        assert_eq!(
            err(&def, "add", "dns-txt", "<host ip='192.168.122.9'/>").to_string(),
            "unexpected element <host>, expecting <txt>, while updating network 'default'"
        );
        assert!(matches!(
            err(&def, "add", "dns-host", "<host ip='192.168.122.9'"),
            Error::Malformed { .. }
        ));
        for (section, what, xml) in [
            ("bridge", "bridge", "<x/>"),
            ("forward-pf", "forward pf", "<x/>"),
        ] {
            let e = err(&def, "add", section, xml);
            assert!(matches!(e, Error::UpdateUnsupported(_)), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!("can't update '{what}' section of network 'default'")
            );
        }
        // An element or attribute kvnet does not implement is refused, not dropped.
        assert!(matches!(
            err(
                &def,
                "add",
                "ip-dhcp-host",
                "<host mac='52:54:00:00:00:03' ip='192.168.122.13' zone='x'/>"
            ),
            Error::Unsupported { .. }
        ));
    }

    #[test]
    fn portgroups_follow_libvirt_s_matching_by_name_and_single_default() {
        let def = net();
        let names = |def: &NetworkDef| -> Vec<(String, bool)> {
            def.portgroups
                .iter()
                .map(|group| (group.name.clone(), group.default))
                .collect()
        };
        let def = ok(
            &def,
            "add",
            "portgroup",
            "<portgroup name='web' default='yes'/>",
        );
        let def = ok(
            &def,
            "add-first",
            "portgroup",
            "<portgroup name='db'><bandwidth><inbound average='100'/></bandwidth></portgroup>",
        );
        assert_eq!(
            names(&def),
            [("db".to_string(), false), ("web".to_string(), true)]
        );
        assert_eq!(
            err(&def, "add", "portgroup", "<portgroup name='db'/>").to_string(),
            "there is an existing portgroup entry in network 'default' that matches \"<portgroup name='db'>\""
        );
        assert_eq!(
            err(
                &def,
                "modify",
                "portgroup",
                "<portgroup name='db' default='yes'/>"
            )
            .to_string(),
            "a different portgroup entry in network 'default' is already set as the default. Only one default is allowed."
        );
        // The default group itself may be modified and stay the default.
        let def = ok(
            &def,
            "modify",
            "portgroup",
            "<portgroup name='web' default='yes' trustGuestRxFilters='no'/>",
        );
        assert_eq!(def.portgroups[1].trust_guest_rx_filters, Some(false));
        let def = ok(&def, "modify", "portgroup", "<portgroup name='db'/>");
        assert_eq!(def.portgroups[0].bandwidth, None);
        assert_eq!(
            err(&def, "delete", "portgroup", "<portgroup name='none'/>").to_string(),
            "couldn't find a portgroup entry in network 'default' matching <portgroup name='none'>"
        );
        let def = ok(&def, "delete", "portgroup", "<portgroup name='web'/>");
        assert_eq!(names(&def), [("db".to_string(), false)]);
        assert_eq!(
            err(&def, "add", "portgroup", "<portgroup default='yes'/>").to_string(),
            "Missing required name attribute in portgroup"
        );
    }
}
