//! [`NetworkDef`] -> XML, byte-compatible with libvirt's
//! `virNetworkDefFormatBuf` (src/conf/network_conf.c).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::model::{DhcpHost, DhcpRange, Dns, IpDef, Lease, MacTableManager, NetworkDef};

/// Characters that are safe in a shell command line, as libvirt's
/// `virXMLPickShellSafeComment` decides whether to name the network or its
/// uuid in the config file header.
fn shell_safe(text: &str) -> bool {
    const UNSAFE: &str = "\r\t\n !\"#$&'()*;<>?[\\]^`{|}~";
    !text.is_empty() && !text.contains(|c| UNSAFE.contains(c)) && !text.contains("--")
}

/// Escapes an element body the way libvirt's `virBufferEscapeString` does, except
/// that a carriage return is written as `&#xd;`: a parser reads a bare one as a
/// newline, so the value would change when the file is read back.
pub(super) fn escape(text: &str) -> String {
    escape_as(text, false)
}

/// Escapes a single-quoted attribute value like [`escape`], and also writes tab,
/// newline and carriage return as character references. libvirt writes them
/// bare, and XML's attribute-value normalization reads those back as spaces: the
/// value a definition was given (with `&#10;`) would change across a restart.
pub(super) fn escape_attr(text: &str) -> String {
    escape_as(text, true)
}

fn escape_as(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\r' => out.push_str("&#xd;"),
            '\t' | '\n' if attribute => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Line-oriented writer with libvirt's two-space indentation.
pub(super) struct Out {
    buf: String,
    indent: usize,
}

impl Out {
    /// An empty document at indentation 0.
    pub(super) fn new() -> Out {
        Out {
            buf: String::new(),
            indent: 0,
        }
    }

    /// The text written so far.
    pub(super) fn finish(self) -> String {
        self.buf
    }

    pub(super) fn line(&mut self, text: &str) {
        for _ in 0..self.indent {
            self.buf.push_str("  ");
        }
        self.buf.push_str(text);
        self.buf.push('\n');
    }

    pub(super) fn open(&mut self, text: &str) {
        self.line(text);
        self.indent += 1;
    }

    pub(super) fn close(&mut self, text: &str) {
        self.indent = self.indent.saturating_sub(1);
        self.line(text);
    }
}

/// ` name='value'` with escaping, or nothing for `None`.
fn attr(name: &str, value: Option<impl ToString>) -> String {
    value
        .map(|v| format!(" {name}='{}'", escape_attr(&v.to_string())))
        .unwrap_or_default()
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// How many ports a running network has, as libvirt's live XML counts them: on the
/// network, and on each device of a macvtap network's pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connections {
    /// Every port of the network.
    pub network: usize,
    /// The ports on each pool device, by device name.
    pub by_device: BTreeMap<String, usize>,
}

impl NetworkDef {
    /// The definition as libvirt formats it (`net-dumpxml`, or `--inactive`), ending in
    /// a newline.
    pub fn to_xml(&self) -> String {
        self.format(&Connections::default())
    }

    /// The running definition as libvirt formats it, with its ports counted (its
    /// `connections` attributes, where they are not 0).
    pub fn to_live_xml(&self, connections: &Connections) -> String {
        self.format(connections)
    }

    fn format(&self, connections: &Connections) -> String {
        let mut out = Out::new();
        out.open(&format!(
            "<network{}{}{}{}>",
            attr("connections", Some(connections.network).filter(|n| *n > 0)),
            if self.dnsmasq_options.is_empty() {
                String::new()
            } else {
                attr("xmlns:dnsmasq", Some(super::dnsmasq::NAMESPACE))
            },
            if self.ipv6_without_gateway {
                " ipv6='yes'"
            } else {
                ""
            },
            attr(
                "trustGuestRxFilters",
                self.trust_guest_rx_filters.map(yes_no)
            )
        ));
        out.line(&format!("<name>{}</name>", escape(&self.name)));
        if let Some(uuid) = self.uuid {
            out.line(&format!("<uuid>{uuid}</uuid>"));
        }
        if let Some(title) = &self.title {
            out.line(&format!("<title>{}</title>", escape(title)));
        }
        if let Some(description) = &self.description {
            out.line(&format!(
                "<description>{}</description>",
                escape(description)
            ));
        }
        if let Some(metadata) = &self.metadata {
            // Its lines after the first are indented already.
            out.line(metadata);
        }
        self.format_forward(&mut out, connections);
        let managed = self.forward.mode.has_managed_bridge();
        let mac_table_manager = self.bridge.mac_table_manager;
        if managed || self.bridge.name.is_some() || mac_table_manager.is_some() {
            let mut bridge = format!(
                "<bridge{}{}",
                attr("name", self.bridge.name.as_ref()),
                attr("zone", self.bridge.zone.as_ref())
            );
            if managed {
                let stp = if self.bridge.stp { "on" } else { "off" };
                let _ = write!(bridge, " stp='{stp}' delay='{}'", self.bridge.delay);
            }
            bridge.push_str(&attr(
                "macTableManager",
                mac_table_manager.map(MacTableManager::as_str),
            ));
            bridge.push_str("/>");
            out.line(&bridge);
        }
        if let Some(mtu) = self.mtu {
            out.line(&format!("<mtu size='{mtu}'/>"));
        }
        if let Some(mac) = self.mac {
            out.line(&format!("<mac address='{mac}'/>"));
        }
        if let Some(domain) = &self.domain {
            out.line(&format!(
                "<domain{}{}/>",
                attr("name", Some(&domain.name)),
                attr("localOnly", domain.local_only.map(yes_no))
            ));
        }
        format_dns(&mut out, &self.dns);
        if let Some(bandwidth) = &self.bandwidth {
            super::bandwidth::format(&mut out, bandwidth);
        }
        if let Some(isolated) = self.isolated_ports {
            out.line(&format!("<port isolated='{}'/>", yes_no(isolated)));
        }
        for ip in &self.ips {
            format_ip(&mut out, ip);
        }
        for route in &self.routes {
            out.line(&format!(
                "<route{}{}{}{}{}{}/>",
                attr("family", route.family.map(|f| f.as_str())),
                attr("address", Some(route.address)),
                attr("netmask", route.netmask),
                attr("prefix", route.prefix),
                attr("gateway", Some(route.gateway)),
                attr("metric", route.metric)
            ));
        }
        for group in &self.portgroups {
            out.open(&format!(
                "<portgroup{}{}{}>",
                attr("name", Some(&group.name)),
                if group.default { " default='yes'" } else { "" },
                attr(
                    "trustGuestRxFilters",
                    group.trust_guest_rx_filters.map(yes_no)
                )
            ));
            if let Some(bandwidth) = &group.bandwidth {
                super::bandwidth::format(&mut out, bandwidth);
            }
            out.close("</portgroup>");
        }
        // libvirt writes its namespaces' elements last, under its own prefix.
        if !self.dnsmasq_options.is_empty() {
            out.open("<dnsmasq:options>");
            for option in &self.dnsmasq_options {
                out.line(&format!(
                    "<dnsmasq:option{}/>",
                    attr("value", Some(&option.value))
                ));
            }
            out.close("</dnsmasq:options>");
        }
        out.close("</network>");
        out.finish()
    }

    fn format_forward(&self, out: &mut Out, connections: &Connections) {
        let Some(mode) = self.forward.mode.as_libvirt_str() else {
            return;
        };
        let nat = &self.forward.nat;
        // libvirt keeps `dev` as the first device of the pool and writes it both as the
        // attribute and as an `<interface>` child.
        let pool: Vec<&String> = self
            .forward
            .dev
            .iter()
            .chain(&self.forward.interfaces)
            .collect();
        let head = format!("<forward{} mode='{mode}'", attr("dev", pool.first()));
        let short =
            pool.is_empty() && nat.address.is_none() && nat.port.is_none() && nat.ipv6.is_none();
        if short {
            out.line(&format!("{head}/>"));
            return;
        }
        out.open(&format!("{head}>"));
        if !nat.is_empty() {
            let nat_head = format!("<nat{}", attr("ipv6", nat.ipv6.map(yes_no)));
            if nat.address.is_none() && nat.port.is_none() {
                out.line(&format!("{nat_head}/>"));
            } else {
                out.open(&format!("{nat_head}>"));
                if let Some(range) = nat.address {
                    out.line(&format!(
                        "<address start='{}' end='{}'/>",
                        range.start, range.end
                    ));
                }
                if let Some(ports) = nat.port {
                    out.line(&format!(
                        "<port start='{}' end='{}'/>",
                        ports.start, ports.end
                    ));
                }
                out.close("</nat>");
            }
        }
        for dev in pool {
            let used = connections.by_device.get(dev.as_str()).copied();
            out.line(&format!(
                "<interface dev='{}'{}/>",
                escape_attr(dev),
                attr("connections", used.filter(|n| *n > 0))
            ));
        }
        out.close("</forward>");
    }

    /// The persisted config file: libvirt's warning header naming
    /// `kvnet net-edit NAME` (or the uuid when the name is not shell-safe),
    /// a blank line, then [`NetworkDef::to_xml`].
    pub fn to_config_file(&self) -> String {
        let uuid = self.uuid.map(|u| u.to_string());
        let target = if shell_safe(&self.name) {
            Some(self.name.clone())
        } else {
            uuid.filter(|u| shell_safe(u))
        };
        let command = match target {
            Some(target) => format!("kvnet net-edit {target}"),
            None => "kvnet net-edit".to_string(),
        };
        format!(
            "<!--\n\
             WARNING: THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n\
             OVERWRITTEN AND LOST. Changes to this xml configuration should be made using:\n  \
             {command}\n\
             or other application using the libvirt API.\n\
             -->\n\n{}",
            self.to_xml()
        )
    }
}

fn format_dns(out: &mut Out, dns: &Dns) {
    if dns.is_empty() {
        return;
    }
    let head = format!(
        "<dns{}{}",
        attr("enable", dns.enable.map(yes_no)),
        attr("forwardPlainNames", dns.forward_plain_names.map(yes_no))
    );
    if !dns.has_records() {
        out.line(&format!("{head}/>"));
        return;
    }
    out.open(&format!("{head}>"));
    for forwarder in &dns.forwarders {
        out.line(&format!(
            "<forwarder{}{}/>",
            attr("domain", forwarder.domain.as_ref()),
            attr("addr", forwarder.addr)
        ));
    }
    for txt in &dns.txts {
        out.line(&format!(
            "<txt name='{}' value='{}'/>",
            escape_attr(&txt.name),
            escape_attr(&txt.value)
        ));
    }
    for srv in &dns.srvs {
        out.line(&format!(
            "<srv service='{}' protocol='{}'{}{}{}{}{}/>",
            escape_attr(&srv.service),
            escape_attr(&srv.protocol),
            attr("domain", srv.domain.as_ref()),
            attr("target", srv.target.as_ref()),
            attr("port", srv.port),
            attr("priority", srv.priority),
            attr("weight", srv.weight)
        ));
    }
    for host in &dns.hosts {
        out.open(&format!("<host ip='{}'>", host.ip));
        for hostname in &host.hostnames {
            out.line(&format!("<hostname>{}</hostname>", escape(hostname)));
        }
        out.close("</host>");
    }
    out.close("</dns>");
}

fn format_ip(out: &mut Out, ip: &IpDef) {
    out.open(&format!(
        "<ip{}{}{}{}{}>",
        attr("family", ip.family.map(|f| f.as_str())),
        attr("address", Some(ip.address)),
        attr("netmask", ip.netmask),
        attr("prefix", ip.prefix),
        attr("localPtr", ip.local_ptr.map(yes_no))
    ));
    if let Some(root) = &ip.tftp_root {
        out.line(&format!("<tftp{}/>", attr("root", Some(root))));
    }
    if ip.has_dhcp() {
        out.open("<dhcp>");
        for range in &ip.dhcp_ranges {
            format_range(out, range);
        }
        for host in &ip.dhcp_hosts {
            format_host(out, host);
        }
        if let Some(bootp) = &ip.dhcp_bootp {
            out.line(&format!(
                "<bootp{}{}/>",
                attr("file", Some(&bootp.file)),
                attr("server", bootp.server)
            ));
        }
        out.close("</dhcp>");
    }
    out.close("</ip>");
}

fn format_with_lease(out: &mut Out, element: &str, head: String, lease: Option<Lease>) {
    match lease {
        None => out.line(&format!("{head}/>")),
        Some(lease) => {
            out.open(&format!("{head}>"));
            if lease.expiry == 0 {
                out.line("<lease expiry='0'/>");
            } else {
                out.line(&format!(
                    "<lease expiry='{}' unit='{}'/>",
                    lease.expiry,
                    lease.unit.as_str()
                ));
            }
            out.close(&format!("</{element}>"));
        }
    }
}

fn format_range(out: &mut Out, range: &DhcpRange) {
    let head = format!("<range start='{}' end='{}'", range.start, range.end);
    format_with_lease(out, "range", head, range.lease);
}

fn format_host(out: &mut Out, host: &DhcpHost) {
    let head = format!(
        "<host{}{}{}{}",
        attr("mac", host.mac_display()),
        attr("id", host.id.as_ref()),
        attr("name", host.name.as_ref()),
        attr("ip", Some(host.ip))
    );
    format_with_lease(out, "host", head, host.lease);
}
