//! Tests for libvirt network XML parsing, validation, defaults and formatting.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use uuid::Uuid;

use super::*;

const DEFAULT_XML: &str = include_str!("../../../examples/networks/default.xml");
const DOCKER_MACHINES_XML: &str = include_str!("../../../examples/networks/docker-machines.xml");
const PERSISTED_XML: &str = include_str!("../../tests/fixtures/xml/libvirt-persisted-test.xml");
const FULL_XML: &str = include_str!("../../tests/fixtures/xml/full.xml");

/// minikube's kvm2 template rendered for the default cluster (section 3.3).
const MK_MINIKUBE_XML: &str = "
<network>
  <name>mk-minikube</name>
  <dns enable='no'/>
  <ip address='192.168.39.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.39.2' end='192.168.39.253'/>
    </dhcp>
  </ip>
</network>
";

/// formatnetwork.rst examples (section 2.3); the IPv6 NAT example's
/// placeholder address is replaced by a real ULA.
const DOCS_ISOLATED_XML: &str = r#"<network>
  <name>private</name>
  <bridge name="virbr2"/>
  <ip address="192.168.152.1" netmask="255.255.255.0">
    <dhcp>
      <range start="192.168.152.2" end="192.168.152.254"/>
    </dhcp>
  </ip>
  <ip family="ipv6" address="2001:db8:ca2:3::1" prefix="64"/>
</network>"#;

const DOCS_ROUTED_XML: &str = r#"<network>
  <name>local</name>
  <bridge name="virbr1"/>
  <forward mode="route" dev="eth1"/>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp>
  </ip>
  <ip family="ipv6" address="2001:db8:ca2:2::1" prefix="64"/>
</network>"#;

const DOCS_HOST_BRIDGE_XML: &str = r#"<network>
  <name>host-bridge</name>
  <forward mode="bridge"/>
  <bridge name="br0"/>
</network>"#;

const DOCS_IPV6_NAT_XML: &str = r#"<network>
  <name>default6</name>
  <bridge name="virbr0"/>
  <forward mode="nat">
    <nat ipv6='yes'>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <ip address="192.168.122.1" netmask="255.255.255.0">
    <dhcp><range start="192.168.122.2" end="192.168.122.254"/></dhcp>
  </ip>
  <ip family="ipv6" address="fd12:3456:789a:1::" prefix="64"/>
</network>"#;

fn parse(xml: &str) -> NetworkDef {
    match NetworkDef::from_xml(xml) {
        Ok(def) => def,
        Err(e) => panic!("parse failed: {e}\n{xml}"),
    }
}

fn parse_err(xml: &str) -> String {
    match NetworkDef::from_xml(xml) {
        Ok(def) => panic!("expected an error, got {def:?}"),
        Err(e) => e.to_string(),
    }
}

/// Asserts `from_xml(to_xml(x)) == x` and that formatting is a fixpoint.
fn assert_round_trip(def: &NetworkDef) {
    let xml = def.to_xml();
    let again = parse(&xml);
    assert_eq!(&again, def, "round trip changed the model:\n{xml}");
    assert_eq!(again.to_xml(), xml);
}

/// A minimal isolated network with one IPv4 `<ip>` whose inner XML is `ip_body`.
fn net_with_ip(ip_attrs: &str, ip_body: &str) -> String {
    format!("<network><name>n</name><ip {ip_attrs}>{ip_body}</ip></network>")
}

const NOT_IN_USE: fn(&str) -> bool = |_| false;

#[test]
fn shipped_default_network_parses_as_nat_with_dhcp() {
    let def = parse(DEFAULT_XML);
    assert_eq!(def.name, "default");
    assert_eq!(def.forward_mode(), ForwardMode::Nat);
    assert_eq!(def.bridge_name(), Some("virbr0"));
    assert!(def.bridge.stp);
    assert_eq!(def.bridge.delay, 0);
    assert!(def.is_dhcp_enabled());
    assert!(def.is_dns_enabled());
    assert_eq!(def.uuid, None);
    assert_eq!(
        def.ipv4_subnets(),
        vec!["192.168.122.0/24".parse().unwrap()]
    );
    let range = &def.ips[0].dhcp_ranges[0];
    assert_eq!(range.start, "192.168.122.2".parse::<IpAddr>().unwrap());
    assert_eq!(range.end, "192.168.122.254".parse::<IpAddr>().unwrap());
    assert_round_trip(&def);
}

#[test]
fn default_network_after_fill_defaults_matches_libvirt_live_xml() {
    let mut def = parse(DEFAULT_XML);
    def.fill_defaults(NOT_IN_USE).unwrap();
    def.fill_live_defaults();
    let uuid = def.uuid.unwrap();
    let mac = def.mac.unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert_eq!(&mac.0[..3], &[0x52, 0x54, 0x00]);
    let expected = format!(
        "<network>
  <name>default</name>
  <uuid>{uuid}</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='{mac}'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
</network>
"
    );
    assert_eq!(def.to_xml(), expected);
    assert_round_trip(&def);
}

#[test]
fn docker_machines_network_is_isolated_and_gets_first_free_bridge() {
    let mut def = parse(DOCKER_MACHINES_XML);
    assert_eq!(def.forward_mode(), ForwardMode::Isolated);
    assert_eq!(def.bridge_name(), None);
    assert_eq!(def.ipv4_subnets(), vec!["192.168.42.0/24".parse().unwrap()]);
    assert_round_trip(&def);
    // virbr0 belongs to `default`, virbr1 exists on the host.
    def.fill_defaults(|name| name == "virbr0" || name == "virbr1")
        .unwrap();
    assert_eq!(def.bridge_name(), Some("virbr2"));
    assert_eq!(
        def.forward.nat,
        Nat::default(),
        "isolated networks get no <nat>"
    );
    let xml = def.to_xml();
    assert!(
        xml.contains("  <bridge name='virbr2' stp='on' delay='0'/>\n"),
        "{xml}"
    );
    assert!(!xml.contains("<forward"), "{xml}");
    assert_round_trip(&def);
}

#[test]
fn forward_mode_none_is_libvirts_isolated_network() {
    for forward in [
        "<forward mode='none'/>",
        "<forward mode='none' dev='eth0'/>",
    ] {
        let def = parse(&format!(
            "<network><name>n</name>{forward}<ip address='10.9.0.1' prefix='24'/></network>"
        ));
        assert_eq!(def.forward_mode(), ForwardMode::Isolated, "{forward}");
        let xml = def.to_xml();
        assert!(!xml.contains("<forward"), "{xml}");
        assert_round_trip(&def);
    }
    assert_eq!(
        parse_err("<network><name>n</name><forward mode='none'><nat/></forward></network>"),
        "The <nat> element can only be used when <forward> 'mode' is 'nat' in network n"
    );
}

#[test]
fn bridge_zone_and_network_trust_guest_rx_filters_are_kept_as_written() {
    let xml = "<network trustGuestRxFilters='no'>\n  <name>z</name>\n  \
               <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>\n  <forward mode='nat'/>\n  \
               <bridge name='virbr9' zone='trusted' stp='on' delay='0'/>\n  \
               <mac address='52:54:00:0a:0b:0c'/>\n  \
               <ip address='10.98.1.1' prefix='24'>\n  </ip>\n</network>\n";
    let def = parse(xml);
    assert_eq!(def.trust_guest_rx_filters, Some(false));
    assert_eq!(def.bridge.zone.as_deref(), Some("trusted"));
    assert_round_trip(&def);
    assert!(
        def.to_xml()
            .starts_with("<network trustGuestRxFilters='no'>\n")
    );
    assert!(
        def.to_xml()
            .contains("<bridge name='virbr9' zone='trusted' stp='on' delay='0'/>"),
        "{}",
        def.to_xml()
    );
    assert_eq!(
        parse_err(
            "<network><name>z</name><forward mode='bridge'><interface dev='eth0'/></forward>\
             <bridge zone='trusted'/></network>"
        ),
        "bridge zone not allowed in bridge mode (network 'z')"
    );
}

/// libvirt turns STP off only for `stp='off'`: a file saying `stp='yes'` (or anything
/// else) loads with STP on, and is written back as `stp='on'`.
#[test]
fn stp_is_on_unless_it_says_off() {
    for (stp, on) in [("on", true), ("yes", true), ("maybe", true), ("off", false)] {
        let def = parse(&format!(
            "<network><name>x</name><bridge name='virbr9' stp='{stp}'/></network>"
        ));
        assert_eq!(def.bridge.stp, on, "stp='{stp}'");
        let expected = format!("stp='{}'", if on { "on" } else { "off" });
        assert!(def.to_xml().contains(&expected), "{}", def.to_xml());
    }
}

#[test]
fn minikube_network_has_dns_disabled() {
    let def = parse(MK_MINIKUBE_XML);
    assert_eq!(def.name, "mk-minikube");
    assert_eq!(def.dns.enable, Some(false));
    assert!(!def.is_dns_enabled());
    assert!(def.is_dhcp_enabled());
    assert_eq!(
        def.to_xml(),
        "<network>
  <name>mk-minikube</name>
  <bridge stp='on' delay='0'/>
  <dns enable='no'/>
  <ip address='192.168.39.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.39.2' end='192.168.39.253'/>
    </dhcp>
  </ip>
</network>
"
    );
    assert_round_trip(&def);
}

#[test]
fn docs_examples_round_trip_in_libvirt_format() {
    let isolated = parse(DOCS_ISOLATED_XML);
    assert_eq!(isolated.forward_mode(), ForwardMode::Isolated);
    assert_eq!(
        isolated.ipv6_subnets(),
        vec!["2001:db8:ca2:3::/64".parse().unwrap()]
    );
    assert_round_trip(&isolated);

    let routed = parse(DOCS_ROUTED_XML);
    assert_eq!(routed.forward_mode(), ForwardMode::Route);
    assert_eq!(routed.forward.dev.as_deref(), Some("eth1"));
    assert_eq!(
        routed.to_xml(),
        "<network>
  <name>local</name>
  <forward dev='eth1' mode='route'>
    <interface dev='eth1'/>
  </forward>
  <bridge name='virbr1' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>
  </ip>
</network>
"
    );
    assert_round_trip(&routed);

    let mut bridged = parse(DOCS_HOST_BRIDGE_XML);
    assert_eq!(bridged.forward_mode(), ForwardMode::Bridge);
    assert_eq!(
        bridged.to_xml(),
        "<network>
  <name>host-bridge</name>
  <forward mode='bridge'/>
  <bridge name='br0'/>
</network>
"
    );
    assert!(!bridged.is_dns_enabled());
    bridged.fill_defaults(|_| true).unwrap();
    assert!(bridged.uuid.is_some());
    assert_eq!(bridged.mac, None, "mode=bridge gets no generated MAC");
    assert_eq!(bridged.forward.nat, Nat::default());
    assert_round_trip(&bridged);

    // The docs' IPv6 NAT network: ipv6='yes' is kept as written ('no' too).
    let nat6 = parse(DOCS_IPV6_NAT_XML);
    assert_eq!(nat6.forward.nat.ipv6, Some(true));
    let no_nat6 = parse(&DOCS_IPV6_NAT_XML.replace("ipv6='yes'", "ipv6='no'"));
    assert_eq!(no_nat6.forward.nat.ipv6, Some(false));
    assert_round_trip(&no_nat6);
    assert_eq!(
        nat6.to_xml(),
        "<network>
  <name>default6</name>
  <forward mode='nat'>
    <nat ipv6='yes'>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='fd12:3456:789a:1::' prefix='64'>
  </ip>
</network>
"
    );
    assert_round_trip(&nat6);
}

#[test]
fn libvirt_persisted_file_with_header_is_reproduced_byte_for_byte() {
    let def = parse(PERSISTED_XML);
    assert_eq!(def.name, "test");
    assert_eq!(
        def.uuid,
        Some(Uuid::parse_str("f9452d96-55fa-4dbf-ad9c-b1ba99b7f2ad").unwrap())
    );
    assert_eq!(def.mac, Some("52:54:00:45:06:16".parse().unwrap()));
    assert_eq!(
        def.forward.nat.port,
        Some(PortRange {
            start: 1024,
            end: 65535
        })
    );
    // Same bytes as libvirt's file, except that the header names kvnet.
    let expected = PERSISTED_XML.replace("  virsh net-edit test", "  kvnet net-edit test");
    assert_eq!(def.to_config_file(), expected);
    let body_start = PERSISTED_XML.find("<network>").unwrap();
    assert_eq!(def.to_xml(), &PERSISTED_XML[body_start..]);
    // fill_defaults keeps everything that is already there.
    let mut filled = def.clone();
    filled.fill_defaults(|_| true).unwrap();
    assert_eq!(filled, def);
    assert_eq!(parse(&def.to_config_file()), def);
}

#[test]
fn config_header_falls_back_to_uuid_for_shell_unsafe_names() {
    let mut def = NetworkDef::new("my net");
    def.uuid = Some(Uuid::parse_str("3e3fce45-4f53-4fa7-bb32-11f34168b82b").unwrap());
    assert!(
        def.to_config_file()
            .contains("\n  kvnet net-edit 3e3fce45-4f53-4fa7-bb32-11f34168b82b\n")
    );
}

#[test]
fn full_feature_document_is_reproduced_byte_for_byte() {
    let def = parse(FULL_XML);
    assert_eq!(def.title.as_deref(), Some("Lab & test net"));
    assert_eq!(
        def.description.as_deref(),
        Some("Line one\nline <two> with 'quotes' and \"double\"")
    );
    assert_eq!(def.forward.dev.as_deref(), Some("eth0"));
    assert_eq!(
        def.forward.nat.address,
        Some(NatAddressRange {
            start: Ipv4Addr::new(203, 0, 113, 10),
            end: Ipv4Addr::new(203, 0, 113, 20)
        })
    );
    assert!(!def.bridge.stp);
    assert_eq!(def.bridge.delay, 2);
    assert_eq!(def.mtu, Some(9000));
    assert_eq!(
        def.domain,
        Some(Domain {
            name: "lab.example".into(),
            local_only: Some(true)
        })
    );
    assert_eq!(def.dns.forward_plain_names, Some(false));
    assert_eq!(def.dns.forwarders.len(), 3);
    assert_eq!(def.dns.srvs[0].port, Some(389));
    assert_eq!(def.dns.srvs[1].target, None);
    assert_eq!(def.dns.hosts[0].hostnames, vec!["db", "db.lab.example"]);
    assert_eq!(def.isolated_ports, Some(true));
    let v4 = &def.ips[0];
    assert_eq!(v4.prefix, Some(24));
    assert_eq!(v4.netmask, None);
    assert_eq!(v4.local_ptr, Some(false));
    assert_eq!(
        v4.dhcp_ranges[0].lease,
        Some(Lease {
            expiry: 1,
            unit: LeaseUnit::Hours
        })
    );
    assert_eq!(v4.dhcp_ranges[0].lease.unwrap().seconds(), Some(3600));
    assert_eq!(v4.dhcp_hosts[1].lease.unwrap().seconds(), None);
    assert_eq!(
        def.ipv4_subnets(),
        vec![
            "10.20.0.0/24".parse().unwrap(),
            "10.30.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(def.ipv6_subnets(), vec!["fd00:20::/64".parse().unwrap()]);
    assert_eq!(def.to_xml(), FULL_XML);
    assert_round_trip(&def);
}

#[test]
fn lease_without_unit_defaults_to_minutes_and_is_written_with_unit() {
    let xml = net_with_ip(
        "address='10.1.0.1' prefix='24'",
        "<dhcp><range start='10.1.0.2' end='10.1.0.9'><lease expiry='30'/></range></dhcp>",
    );
    let def = parse(&xml);
    assert_eq!(
        def.ips[0].dhcp_ranges[0].lease,
        Some(Lease {
            expiry: 30,
            unit: LeaseUnit::Minutes
        })
    );
    assert!(def.to_xml().contains("<lease expiry='30' unit='minutes'/>"));
    assert_round_trip(&def);
}

#[test]
fn netmask_and_prefix_give_the_same_subnet_and_keep_their_form() {
    let with_mask = parse(&net_with_ip(
        "address='172.20.5.1' netmask='255.255.252.0'",
        "",
    ));
    let with_prefix = parse(&net_with_ip("address='172.20.5.1' prefix='22'", ""));
    let classful = parse(&net_with_ip("address='172.20.5.1'", ""));
    let expected: ipnet::Ipv4Net = "172.20.4.0/22".parse().unwrap();
    assert_eq!(with_mask.ipv4_subnets(), vec![expected]);
    assert_eq!(with_prefix.ipv4_subnets(), vec![expected]);
    assert_eq!(
        classful.ipv4_subnets(),
        vec!["172.20.0.0/16".parse().unwrap()]
    );
    assert!(with_mask.to_xml().contains("netmask='255.255.252.0'>"));
    assert!(with_prefix.to_xml().contains("prefix='22'>"));
    assert_round_trip(&classful);
}

#[test]
fn fill_defaults_skips_bridges_in_use_and_reports_exhaustion() {
    let mut def = parse(DOCKER_MACHINES_XML);
    def.fill_defaults(|name| name != "virbr256").unwrap();
    assert_eq!(def.bridge_name(), Some("virbr256"));

    let mut def = parse(DOCKER_MACHINES_XML);
    let err = def.fill_defaults(|_| true).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Bridge generation exceeded max id 256 for the template 'virbr%d'"
    );
    assert_eq!(def.bridge_name(), None);
}

/// libvirt's `<bridge name='…%d…'/>`: the lowest free number is filled in at define;
/// the names stop where they would be too long for an interface.
#[test]
fn bridge_name_templates_are_filled_with_the_lowest_free_number() {
    let xml = |bridge: &str| format!("<network><name>t</name><bridge name='{bridge}'/></network>");
    let mut def = parse(&xml("kv%dnat"));
    def.fill_defaults(|name| name == "kv0nat").unwrap();
    assert_eq!(def.bridge_name(), Some("kv1nat"));
    assert!(
        def.to_xml()
            .contains("<bridge name='kv1nat' stp='on' delay='0'/>")
    );

    let mut long = parse(&xml("abcdefghijklm%d"));
    long.fill_defaults(|name| name.len() < 15).unwrap();
    assert_eq!(long.bridge_name(), Some("abcdefghijklm10"));
    let mut full = parse(&xml("abcdefghijklm%d"));
    assert_eq!(
        full.fill_defaults(|_| true).unwrap_err().to_string(),
        "Bridge generation exceeded max id 256 for the template 'abcdefghijklm%d'"
    );
    for (bridge, message) in [
        (
            "kv%d%d",
            "bridge name template 'kv%d%d' in network 't' must contain '%' only in a single '%d'",
        ),
        (
            "kv%s",
            "bridge name \"kv%s\" in network 't' contains the invalid character '%'",
        ),
        (
            "abcdefghijklmno%d",
            "bridge name 'abcdefghijklmno0' in network 't' is too long (16 bytes, limit 15)",
        ),
    ] {
        assert_eq!(parse_err(&xml(bridge)), message, "{bridge}");
    }
}

#[test]
fn nat_port_zero_is_accepted_and_zero_to_zero_is_no_range() {
    let from_zero = parse(
        "<network><name>n</name><forward><nat><port start='0' end='100'/></nat></forward>\
         <ip address='10.9.0.1' prefix='24'/></network>",
    );
    assert_eq!(
        from_zero.forward.nat.port,
        Some(PortRange { start: 0, end: 100 })
    );
    // (The firewall takes the range too: `NetworkRules::validate` in firewall::rules.)
    let none = parse(
        "<network><name>n</name><forward><nat><port start='0' end='0'/></nat></forward>\
         <ip address='10.9.0.1' prefix='24'/></network>",
    );
    assert_eq!(none.forward.nat.port, None);
    assert!(
        none.to_xml().contains("<forward mode='nat'/>"),
        "{}",
        none.to_xml()
    );
}

#[test]
fn an_empty_title_or_description_is_none() {
    let def = parse("<network><name>n</name><title></title><description/></network>");
    assert_eq!(
        (def.title.as_deref(), def.description.as_deref()),
        (None, None)
    );
    assert!(!def.to_xml().contains("<title"), "{}", def.to_xml());
}

#[test]
fn live_defaults_add_nat_port_range_only_for_nat_without_ports() {
    let mut nat = parse(
        "<network><name>n</name><forward><nat><address start='192.0.2.1' end='192.0.2.9'/></nat></forward>\
         <ip address='10.9.0.1' prefix='24'/></network>",
    );
    nat.fill_defaults(NOT_IN_USE).unwrap();
    assert_eq!(
        nat.forward.nat.port, None,
        "the inactive definition keeps no port range"
    );
    nat.fill_live_defaults();
    assert_eq!(
        nat.forward.nat.port,
        Some(PortRange {
            start: 1024,
            end: 65535
        })
    );
    assert!(nat.forward.nat.address.is_some());
    assert_round_trip(&nat);

    let mut custom = parse(
        "<network><name>n</name><forward><nat><port start='5000' end='6000'/></nat></forward>\
         <ip address='10.9.0.1' prefix='24'/></network>",
    );
    custom.fill_defaults(NOT_IN_USE).unwrap();
    custom.fill_live_defaults();
    assert_eq!(
        custom.forward.nat.port,
        Some(PortRange {
            start: 5000,
            end: 6000
        })
    );

    // As libvirt, only where something is masqueraded: not for IPv6 alone without
    // <nat ipv6='yes'>.
    for (ipv6, port) in [
        ("", None),
        (" ipv6='no'", None),
        (" ipv6='yes'", Some(DEFAULT_NAT_PORTS)),
    ] {
        let mut v6 = parse(&format!(
            "<network><name>n</name><forward mode='nat'><nat{ipv6}/></forward>\
             <ip family='ipv6' address='fd00:202::1' prefix='64'/></network>"
        ));
        v6.fill_live_defaults();
        assert_eq!(v6.forward.nat.port, port, "{ipv6}");
    }

    let mut routed = parse(DOCS_ROUTED_XML);
    routed.fill_defaults(NOT_IN_USE).unwrap();
    routed.fill_live_defaults();
    assert!(routed.forward.nat.is_empty());
    assert!(routed.mac.is_some());
    assert_eq!(routed.bridge_name(), Some("virbr1"), "given names are kept");
}

#[test]
fn overlap_helpers_compare_normalized_subnets() {
    let default = parse(DEFAULT_XML);
    let docker = parse(DOCKER_MACHINES_XML);
    assert_eq!(default.overlaps(&docker), None);
    let wide = parse(&net_with_ip("address='192.168.0.1' prefix='16'", ""));
    assert_eq!(
        default.overlaps(&wide),
        Some((
            "192.168.122.0/24".parse::<IpNet>().unwrap(),
            "192.168.0.0/16".parse::<IpNet>().unwrap()
        ))
    );
    assert_eq!(
        wide.overlaps(&docker),
        Some((
            "192.168.0.0/16".parse::<IpNet>().unwrap(),
            "192.168.42.0/24".parse::<IpNet>().unwrap()
        ))
    );
    let v6a = parse(DOCS_ISOLATED_XML);
    let mut v6b = parse(DOCS_ROUTED_XML);
    assert_eq!(v6a.overlaps(&v6b), None);
    v6b.ips.truncate(1);
    v6b.ips[0] = v6a.ips[1].clone();
    assert_eq!(
        v6a.overlaps(&v6b),
        Some((
            "2001:db8:ca2:3::/64".parse().unwrap(),
            "2001:db8:ca2:3::/64".parse().unwrap()
        ))
    );
}

#[test]
fn mac_addresses_parse_and_print_like_libvirt() {
    let mac: MacAddr = "52:54:0:7B:35:93".parse().unwrap();
    assert_eq!(mac.to_string(), "52:54:00:7b:35:93");
    assert!(!mac.is_multicast());
    assert!(
        "01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap()
            .is_multicast()
    );
    for bad in [
        "",
        "52-54-00-7b-35-93",
        "52:54:00:7b:35",
        "52:54:00:7b:35:93:11",
        "52:54:00:7b:35:zz",
        "525:4:00:7b:35:93",
    ] {
        assert_eq!(
            bad.parse::<MacAddr>(),
            Err(MacAddrParseError(bad.to_string())),
            "{bad}"
        );
    }
    let generated = MacAddr::generate([0x52, 0x54, 0x00]);
    assert_eq!(&generated.0[..3], &[0x52, 0x54, 0x00]);
}

#[test]
fn malformed_xml_reports_line_and_column() {
    let err = parse_err("<network>\n  <name>x</name>\n  <bridge name='a'>\n</network>\n");
    assert!(
        err.starts_with("malformed network XML at line 4, column "),
        "{err}"
    );
    let err = parse_err("<network>\n  <name>x</nam>\n</network>");
    assert!(err.starts_with("malformed network XML at line 2"), "{err}");
    let err = parse_err("<network><name>x</name>");
    assert!(err.contains("<network> is not closed"), "{err}");
    let err = parse_err("");
    assert_eq!(
        err,
        "malformed network XML at line 1, column 1: no root element"
    );
    let err = parse_err("<network><name>x</name></network><network/>");
    assert!(err.contains("content after the root element"), "{err}");
    let err = parse_err("<!DOCTYPE network [<!ENTITY x 'y'>]><network><name>x</name></network>");
    assert!(err.contains("DOCTYPE is not allowed"), "{err}");
    let err = parse_err("<network><name>a&bogus;</name></network>");
    assert!(err.contains("unknown entity reference"), "{err}");
    let err = parse_err("<network><name a='1' a='2'>x</name></network>");
    assert!(err.starts_with("malformed network XML at line 1"), "{err}");
    assert!(err.contains("duplicated attribute 'a' on <name>"), "{err}");
    // Lines are counted incrementally; they must still be exact far down,
    // across comments, text and multi-line tags.
    let err = parse_err(
        "<network>\n<!-- a\ncomment -->\n<name>x\n</name>\n<bridge\n name='b'/>\n\n  <vlan/>\n</network>",
    );
    assert_eq!(err, "unsupported element <vlan> in network 'x\n' (line 9)");
    let deep = format!(
        "<network><name>x</name>{}{}</network>",
        "<a>".repeat(100),
        "</a>".repeat(100)
    );
    assert!(parse_err(&deep).contains("elements nested too deeply"));
    assert_eq!(
        parse_err("<network><bandwidth/></network>"),
        "missing <name> element in network definition"
    );
    assert_eq!(
        parse_err("<domain><name>x</name></domain>"),
        "expecting root element of 'network', not 'domain'"
    );
}

#[test]
fn leading_comments_and_declaration_are_accepted() {
    let xml = format!("<?xml version='1.0'?>\n<!-- anything -->\n<!-- more -->\n{DEFAULT_XML}");
    assert_eq!(parse(&xml), parse(DEFAULT_XML));
}

#[test]
fn unsupported_libvirt_features_are_rejected_by_name() {
    let cases: &[(&str, &str)] = &[
        (
            "<network><name>x</name><bandwidth><inbound average='1' burst='2' mode='x'/></bandwidth></network>",
            "unsupported attribute 'mode' on <inbound> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><bandwidth>\n<sideways average='1'/></bandwidth></network>",
            "unsupported element <sideways> inside <bandwidth> in network 'x' (line 2)",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/>\n<bandwidth><inbound average='1'/></bandwidth></network>",
            "unsupported element <bandwidth> with forward mode='bridge' in network 'x' (line 2)",
        ),
        (
            "<network><name>x</name>\n<portgroup name='a'><vlan><tag id='4'/></vlan></portgroup></network>",
            "unsupported element <vlan> inside <portgroup> in network 'x' (line 2)",
        ),
        (
            "<network><name>x</name><vlan><tag id='4'/></vlan></network>",
            "unsupported element <vlan> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><virtualport type='openvswitch'/></network>",
            "unsupported element <virtualport> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><port isolated='yes' trunk='no'/></network>",
            "unsupported attribute 'trunk' on <port> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><port isolated='yes'><vlan/></port></network>",
            "unsupported element <vlan> inside <port> in network 'x' (line 1)",
        ),
        (
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'><name>x</name>\
             <dnsmasq:options><dnsmasq:option value='foo'/></dnsmasq:options></network>",
            "dnsmasq option 'foo' is not supported by kvnet (network 'x')",
        ),
        (
            // virt-manager's SR-IOV pools carry managed='yes': the mode is what is missing.
            "<network><name>x</name><forward mode='hostdev' managed='yes'/></network>",
            "unsupported forward mode 'hostdev' in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><forward mode='hostdev'/></network>",
            "unsupported forward mode 'hostdev' in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><forward mode='passthrough'><pf dev='eth0'/></forward></network>",
            "unsupported element <pf> inside <forward> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><forward mode='vepa'><driver name='vfio'/></forward></network>",
            "unsupported element <driver> inside <forward> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><forward mode='bridge'><pf dev='eth0'/></forward></network>",
            "unsupported element <pf> inside <forward> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><domain name='a' register='yes'/></network>",
            "unsupported attribute 'register' on <domain> in network 'x' (line 1)",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.1' prefix='24' bogus='1'/></network>",
            "unsupported attribute 'bogus' on <ip> in network 'x' (line 1)",
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(&parse_err(xml), expected, "{xml}");
    }
}

/// Features kvnet does not serve are refused by name rather than stored and
/// silently ignored; their `no` forms (the defaults) stay accepted.
#[test]
fn unimplemented_ipv6_bootp_and_v4_duid_are_rejected_by_name() {
    let v6_ip = "family='ipv6' address='fd00::1' prefix='64'";
    let cases = [
        (
            net_with_ip(
                v6_ip,
                "<dhcp><range start='fd00::10' end='fd00::20'/>\n<bootp file='a'/></dhcp>",
            ),
            "unsupported element <bootp> inside IPv6 <dhcp> (network boot is served over DHCPv4) in network 'n' (line 2)",
        ),
        (
            net_with_ip(
                "address='10.0.0.1' prefix='24'",
                "<dhcp><host id='0:1:2' name='a' ip='10.0.0.5'/></dhcp>",
            ),
            "unsupported id '0:1:2' on dhcp <host> 10.0.0.5 in network 'n': it is a DHCPv6 client DUID, DHCPv4 reservations use mac",
        ),
    ];
    for (xml, expected) in &cases {
        assert_eq!(&parse_err(xml), expected, "{xml}");
    }
    let defaults = parse(
        "<network><name>n</name><forward mode='nat'><nat ipv6='no'/></forward>\
         <ip address='10.0.0.1' prefix='24' localPtr='no'/></network>",
    );
    assert_eq!(defaults.forward.nat.ipv6, Some(false));
    assert_eq!(defaults.ips[0].local_ptr, Some(false));
    assert_round_trip(&defaults);

    // Definitions edited in code are refused by validate() as well.
    let mut edited = defaults;
    edited.ips[0].dhcp_hosts.push(DhcpHost {
        mac: None,
        mac_text: None,
        id: Some("0:1:2".into()),
        name: Some("a".into()),
        ip: "10.0.0.5".parse().unwrap(),
        lease: None,
    });
    assert!(
        edited
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("unsupported id '0:1:2' on dhcp <host> 10.0.0.5")
    );
}

/// Values that used to pass define and fail only at start with a raw
/// kernel or DNS error are refused at define, naming the value.
#[test]
fn addresses_and_names_that_would_fail_at_start_are_refused_at_define() {
    let ip = |attrs: &str| net_with_ip(attrs, "");
    let cases = [
        (
            ip("address='224.0.0.5' prefix='24'"),
            "Invalid <ip> address '224.0.0.5' in network 'n': a multicast address cannot be a host address",
        ),
        (
            ip("family='ipv6' address='ff02::1' prefix='64'"),
            "Invalid <ip> address 'ff02::1' in network 'n': a multicast address cannot be a host address",
        ),
        (
            ip("family='ipv6' address='fe80::1' prefix='64'"),
            "Invalid <ip> address 'fe80::1' in network 'n': link-local addresses are assigned by the kernel, not configured",
        ),
        (
            ip("address='127.0.0.5' prefix='8'"),
            "Invalid <ip> address '127.0.0.5' in network 'n': a loopback address belongs to lo",
        ),
        (
            ip("family='ipv6' address='::' prefix='64'"),
            "Invalid <ip> address '::' in network 'n': the unspecified address is no host's",
        ),
        (
            ip("address='10.9.0.0' prefix='24'"),
            "Invalid <ip> address '10.9.0.0' in network 'n': it is the network or broadcast address of 10.9.0.0/24",
        ),
        (
            ip("address='10.9.0.255' netmask='255.255.255.0'"),
            "Invalid <ip> address '10.9.0.255' in network 'n': it is the network or broadcast address of 10.9.0.0/24",
        ),
        (
            "<network><name>n</name><ip address='10.9.0.1' prefix='24'/><ip address='10.9.0.1' prefix='24'/></network>".into(),
            "IP address '10.9.0.1' is given in more than one <ip> of network 'n'",
        ),
        (
            "<network><name>n</name><ip address='10.9.0.1' prefix='24'/><ip address='10.9.0.1' prefix='16'/></network>".into(),
            "IP address '10.9.0.1' is given in more than one <ip> of network 'n'",
        ),
        (
            "<network><name>n</name><domain name='a b/c'/></network>".into(),
            "invalid domain name 'a b/c' in network 'n': it contains the invalid character ' '",
        ),
        (
            "<network><name>n</name><dns><host ip='10.9.0.7'><hostname>bad name</hostname></host></dns>\
             <ip address='10.9.0.1' prefix='24'/></network>".into(),
            "invalid DNS HOST hostname 'bad name' in network 'n': it contains the invalid character ' '",
        ),
        (
            "<network><name>n</name><dns><srv service='ldap' protocol='tcp' target='a..b' port='1'/></dns>\
             <ip address='10.9.0.1' prefix='24'/></network>".into(),
            "invalid DNS SRV target 'a..b' in network 'n': it has an empty label",
        ),
        (
            "<network><name>n</name><dns><srv service='ldap' protocol='tcp' domain='-x.test'/></dns></network>".into(),
            "invalid DNS SRV domain '-x.test' in network 'n': label '-x' starts or ends with '-'",
        ),
        (
            "<network><name>n</name><dns><txt name='a.b/c' value='v'/></dns></network>".into(),
            "invalid DNS TXT record name 'a.b/c' in network 'n': it contains the invalid character '/'",
        ),
        (
            "<network><name>n</name><dns><forwarder domain='x..y'/></dns></network>".into(),
            "invalid DNS forwarder domain 'x..y' in network 'n': it has an empty label",
        ),
        (
            "<network><name>n</name><dns><forwarder domain='*' addr='10.0.0.1'/></dns></network>".into(),
            "invalid DNS forwarder domain '*' in network 'n': a '*' must be followed by a domain \
             (a <forwarder> without a domain forwards every name)",
        ),
        (
            "<network><name>n</name><dns><forwarder domain='a*b' addr='10.0.0.1'/></dns></network>".into(),
            "invalid DNS forwarder domain 'a*b' in network 'n': it contains the invalid character '*'",
        ),
        (
            net_with_ip(
                "address='10.9.0.1' prefix='24'",
                "<dhcp><host mac='52:54:00:00:00:01' name='bad name' ip='10.9.0.5'/></dhcp>",
            ),
            "Cannot use host name 'bad name' in network 'n': it contains the invalid character ' '",
        ),
    ];
    for (xml, expected) in &cases {
        assert_eq!(&parse_err(xml), expected, "{xml}");
    }
    // Legitimate names: underscores in TXT names, absolute names, one label.
    let accepted = parse(
        "<network><name>n</name><domain name='lab.example.'/>\
         <dns><txt name='_dmarc.lab' value='v=DMARC1'/>\
         <srv service='_ldap' protocol='tcp' domain='lab.example' target='ldap-1.lab.example' port='389'/>\
         <host ip='10.9.0.7'><hostname>db</hostname><hostname>db.lab.example</hostname></host></dns>\
         <ip address='10.9.0.1' prefix='24'/><ip family='ipv6' address='fd00::1' prefix='64'/></network>",
    );
    assert_round_trip(&accepted);
    // dnsmasq's forms of a forwarder domain, which libvirt passes on unchanged.
    let patterns = parse(
        "<network><name>n</name><dns><forwarder domain='*.example.com' addr='10.0.0.1'/>\
         <forwarder domain='*corp' addr='10.0.0.2'/><forwarder domain='.lab.net' addr='10.0.0.3'/>\
         <forwarder domain='*.internal.'/><forwarder domain='*-x.com' addr='10.0.0.4'/>\
         <forwarder domain='_msdcs.corp.test' addr='10.0.0.5'/></dns></network>",
    );
    assert_round_trip(&patterns);
    assert!(
        patterns
            .to_xml()
            .contains("<forwarder domain='*.example.com' addr='10.0.0.1'/>")
    );
    let long_label = "a".repeat(64);
    assert_eq!(
        validate::check_dns_name(&long_label, false),
        Err(validate::DnsNameError::LabelTooLong(long_label.clone()))
    );
    let long_name = vec!["a".repeat(63); 4].join(".");
    assert_eq!(
        validate::check_dns_name(&long_name, false),
        Err(validate::DnsNameError::TooLong(255))
    );
    assert_eq!(
        validate::check_dns_name(".", false),
        Err(validate::DnsNameError::Empty)
    );
}

#[test]
fn dns_names_added_by_net_update_are_checked_too() {
    let def = parse(
        "<network><name>n</name><ip address='10.9.0.1' prefix='24'><dhcp>\
         <range start='10.9.0.10' end='10.9.0.20'/></dhcp></ip></network>",
    );
    let update = |section: &str, xml: &str| {
        def.updated(&Update {
            command: "add".parse().unwrap(),
            section: section.parse().unwrap(),
            parent_index: None,
            xml,
        })
        .unwrap_err()
        .to_string()
    };
    assert_eq!(
        update(
            "dns-srv",
            "<srv service='x' protocol='tcp' target='a..b' port='1'/>"
        ),
        "invalid DNS SRV target 'a..b' in network 'n': it has an empty label"
    );
    assert_eq!(
        update(
            "dns-host",
            "<host ip='10.9.0.7'><hostname>bad name</hostname></host>"
        ),
        "invalid DNS HOST hostname 'bad name' in network 'n': it contains the invalid character ' '"
    );
    assert_eq!(
        update(
            "ip-dhcp-host",
            "<host mac='52:54:00:00:00:04' name='bad name' ip='10.9.0.109'/>"
        ),
        "Cannot use host name 'bad name' in network 'n': it contains the invalid character ' '"
    );
}

/// libvirt takes any name that starts with a letter or digit, and dnsmasq's
/// legal_hostname takes `_`: names such as `my_vm` are common.
#[test]
fn host_names_with_underscores_are_accepted() {
    let def = parse(
        "<network><name>n</name><domain name='example.test'/>\
         <dns><host ip='10.9.0.7'><hostname>my_host</hostname></host></dns>\
         <ip address='10.9.0.1' prefix='24'><dhcp>\
         <host mac='52:54:00:00:00:04' name='my_vm' ip='10.9.0.109'/>\
         </dhcp></ip></network>",
    );
    let xml = def.to_xml();
    assert!(xml.contains("<hostname>my_host</hostname>"), "{xml}");
    assert!(xml.contains("name='my_vm'"), "{xml}");
}

#[test]
fn validation_errors_use_specific_messages() {
    let cases: &[(&str, &str)] = &[
        ("<network/>", "missing <name> element in network definition"),
        (
            "<network xmlns='http://example.org/ns'><name>x</name></network>",
            "missing <name> element in network definition",
        ),
        (
            "<network><name>x</name><port isolated='true'/></network>",
            "Invalid value for attribute 'isolated' in element 'port': 'true'.",
        ),
        (
            "<network><name></name></network>",
            "network name must not be empty",
        ),
        (
            "<network><name>a/b</name></network>",
            "network name 'a/b' must not contain '/'",
        ),
        (
            "<network><name>..</name></network>",
            "network name '..' must not start with '.'",
        ),
        (
            "<network><name>.hidden</name></network>",
            "network name '.hidden' must not start with '.'",
        ),
        (
            "<network><name>a&#9;b</name></network>",
            "network name \"a\\tb\" must not contain control characters",
        ),
        (
            "<network><name>a</name><name>b</name></network>",
            "duplicate element <name> in network 'a' (line 1)",
        ),
        (
            "<network><name>x</name><uuid>not-a-uuid</uuid></network>",
            "malformed uuid element",
        ),
        (
            "<network><name>x</name><title>a\nb</title></network>",
            "Network title can't contain newlines",
        ),
        (
            "<network><name>x</name><mac address='53:54:00:00:00:01'/></network>",
            "Invalid multicast bridge mac address '53:54:00:00:00:01' in network 'x'",
        ),
        (
            "<network><name>x</name><mac address='52:54:00:00:00'/></network>",
            "Invalid bridge mac address '52:54:00:00:00' in network 'x'",
        ),
        (
            "<network><name>x</name><bridge name='virbr-too-long-name'/></network>",
            "bridge name 'virbr-too-long-name' in network 'x' is too long (19 bytes, limit 15)",
        ),
        (
            "<network><name>x</name><bridge name='br/0'/></network>",
            "bridge name \"br/0\" in network 'x' contains the invalid character '/'",
        ),
        (
            "<network><name>x</name><bridge name='br 0'/></network>",
            "bridge name \"br 0\" in network 'x' contains the invalid character ' '",
        ),
        (
            "<network><name>x</name><bridge name='br:0'/></network>",
            "bridge name \"br:0\" in network 'x' contains the invalid character ':'",
        ),
        (
            "<network><name>x</name><bridge name='..'/></network>",
            "bridge name '..' in network 'x' is not a valid interface name",
        ),
        (
            "<network><name>x</name><bridge delay='-1'/></network>",
            "Invalid delay value in network 'x'",
        ),
        (
            "<network><name>x</name><mtu size='big'/></network>",
            "Invalid mtu size 'big' in network 'x'",
        ),
        (
            "<network><name>x</name><mtu size='10'/></network>",
            "Invalid mtu size '10' in network 'x' (must be 68..65535)",
        ),
        (
            "<network><name>x</name><mtu size='1279'/><ip family='ipv6' address='fd00::1' prefix='64'/></network>",
            "mtu size '1279' in network 'x' is below the 1280 IPv6 needs, and the network has an IPv6 address",
        ),
        (
            "<network><name>x</name><forward mode='wormhole'/></network>",
            "unknown forwarding type 'wormhole'",
        ),
        (
            "<network><name>x</name><forward/></network>",
            "nat forwarding requested, but no IP address provided for network 'x'",
        ),
        (
            "<network><name>x</name><forward mode='open' dev='eth0'/><ip address='10.0.0.1' prefix='24'/></network>",
            "forward dev not allowed for network 'x' with forward mode='open'",
        ),
        (
            "<network><name>x</name><forward mode='route'><nat/></forward><ip address='10.0.0.1' prefix='24'/></network>",
            "The <nat> element can only be used when <forward> 'mode' is 'nat' in network x",
        ),
        (
            "<network><name>x</name><forward><nat><port start='1' end='65536'/></nat></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>",
            "Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network x",
        ),
        (
            "<network><name>x</name><forward><nat><port start='2000' end='1000'/></nat></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>",
            "Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network x",
        ),
        (
            "<network><name>x</name><forward><nat><port start='2000' end='70000'/></nat></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>",
            "Missing or invalid 'end' attribute in <port> in <nat> in <forward> in network x",
        ),
        (
            "<network><name>x</name><forward><nat><address start='192.0.2.9' end='192.0.2.1'/></nat></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>",
            "range 192.0.2.9 - 192.0.2.1 is reversed ",
        ),
        (
            "<network><name>x</name><forward><nat><address start='2001:db8::1' end='2001:db8::2'/></nat></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>",
            "Bad ipv4 start address '2001:db8::1' in <nat> in <forward> in network 'x'",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/><ip address='10.0.0.1' prefix='24'/></network>",
            "Unsupported <ip> element in network x with forward mode='bridge'",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/><mac address='52:54:00:00:00:01'/></network>",
            "Unsupported <mac> element in network x with forward mode='bridge'",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/><domain name='d'/></network>",
            "Unsupported <domain> element in network x with forward mode='bridge'",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/>\
             <dns><txt name='a' value='b'/></dns></network>",
            "Unsupported <dns> element in network x with forward mode='bridge'",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0' stp='on'/></network>",
            "bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in bridge (network 'x')",
        ),
        (
            "<network><name>x</name><forward mode='bridge'/><bridge name='br0'/><mtu size='9000'/></network>",
            "mtu size only allowed in open, route, nat, and isolated mode, not in bridge (network 'x')",
        ),
        (
            "<network><name>x</name><forward mode='bridge' dev='eth0'/><bridge name='br0'/></network>",
            "A network with forward mode='bridge' can specify a bridge name or a forward dev, but not both (network 'x')",
        ),
        (
            "<network><name>x</name><dns enable='no'><txt name='a' value='b'/></dns></network>",
            "Extra data in disabled network 'x'",
        ),
        (
            "<network><name>x</name><dns enable='maybe'/></network>",
            "Invalid value for attribute 'enable' in element 'dns': 'maybe'.",
        ),
        (
            "<network><name>x</name><dns><forwarder/></dns></network>",
            "Invalid forwarder element, must contain at least one of addr or domain",
        ),
        (
            "<network><name>x</name><dns><txt name='a b' value='c'/></dns></network>",
            "prohibited character in DNS TXT record name 'a b' of network x",
        ),
        (
            "<network><name>x</name><dns><srv service='ldap' protocol='tcp' port='389'/></dns></network>",
            "DNS SRV port attribute not permitted without target for service 'ldap' in network 'x'",
        ),
        (
            "<network><name>x</name><dns><host ip='10.0.0.5'></host></dns></network>",
            "Missing hostname in network 'x' DNS HOST record",
        ),
        (
            "<network><name>x</name><ip netmask='255.255.255.0'/></network>",
            "Missing required address attribute in network 'x'",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.300' netmask='255.255.255.0'/></network>",
            "Invalid address '10.0.0.300' in network 'x'",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.1' netmask='255.0.255.0'/></network>",
            "Invalid netmask '255.0.255.0' in network 'x' (not a contiguous netmask)",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.1' prefix='33'/></network>",
            "Invalid IPv4 prefix '33' in network 'x'",
        ),
        (
            "<network><name>x</name><ip family='ipv6' address='fd00::1' prefix='129'/></network>",
            "Invalid IPv6 prefix '129' in network 'x'",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.1' prefix='24' netmask='255.255.255.0'/></network>",
            "Network 'x' IP address cannot have both a prefix and a netmask",
        ),
        (
            "<network><name>x</name><ip family='ipv6' address='fd00::1' netmask='255.255.255.0'/></network>",
            "netmask not allowed for IPv6 address 'fd00::1' in network 'x'",
        ),
        (
            "<network><name>x</name><ip family='ipv6' address='10.0.0.1' prefix='24'/></network>",
            "Family 'ipv6' specified for non-IPv6 address '10.0.0.1' in network 'x'",
        ),
        (
            "<network><name>x</name><ip address='fd00::1' prefix='64'/></network>",
            "no family specified for non-IPv4 address 'fd00::1' in network 'x'",
        ),
        (
            "<network><name>x</name><ip family='ipv5' address='10.0.0.1'/></network>",
            "Unrecognized family 'ipv5' in network 'x'",
        ),
        (
            "<network><name>x</name><ip address='240.0.0.1'/></network>",
            "cannot determine the prefix of address '240.0.0.1' in network 'x'; give a netmask or prefix",
        ),
        (
            "<network><name>x</name><ip address='10.0.0.1' prefix='24'/>\
             <ip address='10.0.0.1' prefix='24'><dhcp><dhcp/></dhcp></ip></network>",
            "unsupported element <dhcp> inside <dhcp> in network 'x' (line 1)",
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(&parse_err(xml), expected, "{xml}");
    }
}

#[test]
fn dhcp_ranges_and_hosts_are_checked_against_the_subnet() {
    let ip = "address='192.168.50.1' netmask='255.255.255.0'";
    let cases: &[(&str, &str)] = &[
        (
            "<dhcp><range start='192.168.51.2' end='192.168.51.9'/></dhcp>",
            "range 192.168.51.2 - 192.168.51.9 is not entirely within network 192.168.50.1/24",
        ),
        (
            "<dhcp><range start='192.168.50.2' end='192.168.51.9'/></dhcp>",
            "range 192.168.50.2 - 192.168.51.9 is not entirely within network 192.168.50.1/24",
        ),
        (
            "<dhcp><range start='192.168.50.9' end='192.168.50.2'/></dhcp>",
            "range 192.168.50.9 - 192.168.50.2 is reversed ",
        ),
        (
            "<dhcp><range start='192.168.50.0' end='192.168.50.9'/></dhcp>",
            "start of range 192.168.50.0 - 192.168.50.9 in network 192.168.50.1/24 is the network address",
        ),
        (
            "<dhcp><range start='192.168.50.2' end='192.168.50.255'/></dhcp>",
            "end of range 192.168.50.2 - 192.168.50.255 in network 192.168.50.1/24 is the broadcast address",
        ),
        (
            "<dhcp><range start='fd00::2' end='fd00::9'/></dhcp>",
            "mismatch of address family in range fd00::2 - fd00::9 for network 192.168.50.1",
        ),
        (
            "<dhcp><range start='192.168.50.2'/></dhcp>",
            "Missing 'end' attribute in dhcp range for network 'n'",
        ),
        (
            "<dhcp><range start='192.168.50.2' end='192.168.50.9'><lease expiry='60' unit='seconds'/></range></dhcp>",
            "The minimum lease time should be greater than 2 minutes",
        ),
        (
            "<dhcp><range start='192.168.50.2' end='192.168.50.9'><lease expiry='2' unit='days'/></range></dhcp>",
            "Invalid value for attribute 'unit' in element 'lease': 'days'.",
        ),
        (
            "<dhcp><host ip='192.168.50.5'/></dhcp>",
            "Static host definition in IPv4 network 'n' must have mac or name attribute",
        ),
        (
            "<dhcp><host mac='52:54:00:00:00:01'/></dhcp>",
            "Missing IP address in static host definition for network 'n'",
        ),
        (
            "<dhcp><host mac='01:54:00:00:00:01' ip='192.168.50.5'/></dhcp>",
            "expected unicast mac address, found multicast '01:54:00:00:00:01' in network 'n'",
        ),
        (
            "<dhcp><host mac='zz' ip='192.168.50.5'/></dhcp>",
            "Cannot parse MAC address 'zz' in network 'n'",
        ),
        (
            "<dhcp><host name='-bad' ip='192.168.50.5'/></dhcp>",
            "Cannot use host name '-bad' in network 'n'",
        ),
        (
            "<dhcp><host name='ok' ip='fd00::5'/></dhcp>",
            "the address family of a host entry IP must match the address family of the dhcp element's parent",
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(&parse_err(&net_with_ip(ip, body)), expected, "{body}");
    }

    // A host no guest could get is refused when given (define, create, net-update), but
    // a definition that holds one loads, as libvirt loads it (its dnsmasq ignores the
    // host), and its DHCP server leaves it out.
    for (body, expected) in [
        (
            "<dhcp><host mac='52:54:00:00:00:01' ip='192.168.60.5'/>\
             <host mac='52:54:00:00:00:02' ip='192.168.50.5'/></dhcp>",
            "static host address 192.168.60.5 is not within network 192.168.50.0/24 of network 'n'",
        ),
        (
            "<dhcp><host mac='52:54:00:00:00:01' ip='192.168.50.1'/>\
             <host mac='52:54:00:00:00:02' ip='192.168.50.5'/></dhcp>",
            "static host address 192.168.50.1 in network 'n' is the bridge address",
        ),
    ] {
        let def = parse(&net_with_ip(ip, body));
        assert_eq!(
            def.check_dhcp_hosts_usable().unwrap_err().to_string(),
            expected,
            "{body}"
        );
        let served: Vec<_> = def.usable_dhcp_hosts(&def.ips[0]).map(|h| h.ip).collect();
        assert_eq!(
            served,
            ["192.168.50.5".parse::<IpAddr>().unwrap()],
            "{body}"
        );
    }

    // A /31 has no network or broadcast address to avoid.
    let p2p = parse(&net_with_ip(
        "address='10.0.0.0' prefix='31'",
        "<dhcp><range start='10.0.0.1' end='10.0.0.1'/></dhcp>",
    ));
    assert_round_trip(&p2p);

    // vagrant-libvirt's management network starts its range at the bridge address;
    // libvirt accepts it and the DHCP server skips its own address.
    let vagrant = parse(&net_with_ip(
        ip,
        "<dhcp><range start='192.168.50.1' end='192.168.50.254'/></dhcp>",
    ));
    assert_round_trip(&vagrant);
}

#[test]
fn only_one_dhcp_section() {
    let xml = "<network><name>n</name>\
        <ip address='10.1.0.1' prefix='24'><dhcp><range start='10.1.0.2' end='10.1.0.9'/></dhcp></ip>\
        <ip address='10.2.0.1' prefix='24'><dhcp><range start='10.2.0.2' end='10.2.0.9'/></dhcp></ip>\
        </network>";
    assert_eq!(
        parse_err(xml),
        "Multiple IPv4 dhcp sections found -- dhcp is supported only for a single IPv4 address on each network"
    );
    let def = parse(FULL_XML);
    assert_eq!(def.ips.iter().filter(|ip| ip.has_dhcp()).count(), 1);
}

#[test]
fn network_names_follow_the_documented_policy() {
    assert!(validate_network_name("default").is_ok());
    assert!(validate_network_name("mk-minikube").is_ok());
    assert!(validate_network_name("with space").is_ok());
    assert!(validate_network_name(&"a".repeat(NETWORK_NAME_MAX_BYTES)).is_ok());
    assert_eq!(
        validate_network_name(&"a".repeat(NETWORK_NAME_MAX_BYTES + 1))
            .unwrap_err()
            .to_string(),
        format!(
            "network name '{}' is too long (129 bytes, limit 128)",
            "a".repeat(129)
        )
    );
    assert_eq!(
        validate_network_name(" lead").unwrap_err().to_string(),
        "network name ' lead' must not start or end with whitespace"
    );
    assert_eq!(
        validate_network_name(".").unwrap_err().to_string(),
        "network name '.' must not start with '.'"
    );
    // Invisible formatting characters (Unicode category Cf) would make two
    // names look alike or reorder the text around them in listings.
    for (name, code_point) in [
        ("evil\u{202E}txt", "U+202E"),
        ("zero\u{200B}width", "U+200B"),
        ("\u{FEFF}bom", "U+FEFF"),
        ("soft\u{AD}hyphen", "U+00AD"),
        ("iso\u{2066}late\u{2069}", "U+2066"),
        ("tag\u{E0041}", "U+E0041"),
        ("arabic\u{061C}mark", "U+061C"),
    ] {
        let message = validate_network_name(name).unwrap_err().to_string();
        assert!(
            message.ends_with(&format!(
                "must not contain the invisible formatting character {code_point}"
            )),
            "{message}"
        );
    }
    let err = parse_err("<network><name>a&#x202E;b</name></network>");
    assert_eq!(
        err,
        "network name \"a\\u{202e}b\" must not contain the invisible formatting character U+202E"
    );
    // Visible non-ASCII names stay accepted.
    assert!(validate_network_name("é-net").is_ok());
    assert!(validate_network_name("网络").is_ok());
    assert!(validate_ifname("bridge name", "virbr0", "n").is_ok());
    assert!(validate_ifname("bridge name", "abcdefghijklmno", "n").is_ok());
    assert_eq!(
        validate_ifname("forward dev", "", "n")
            .unwrap_err()
            .to_string(),
        "forward dev in network 'n' must not be empty"
    );
}

#[test]
fn forward_dev_is_also_accepted_as_single_interface_child() {
    let def = parse(
        "<network><name>n</name><forward mode='nat'><interface dev='eth2'/></forward>\
         <ip address='10.0.0.1' prefix='24'/></network>",
    );
    assert_eq!(def.forward.dev.as_deref(), Some("eth2"));
    assert_eq!(
        parse_err(
            "<network><name>n</name><forward dev='eth1'><interface dev='eth2'/></forward>\
             <ip address='10.0.0.1' prefix='24'/></network>"
        ),
        "<forward dev='eth1'> must match first <interface dev='eth2'/> in network n"
    );
}

#[test]
fn text_is_escaped_like_libvirt() {
    let mut def = NetworkDef::new("n");
    def.title = Some("a<b>&'\"".to_string());
    def.dns.txts.push(DnsTxt {
        name: "t".into(),
        value: "x='1'".into(),
    });
    let xml = def.to_xml();
    assert!(
        xml.contains("<title>a&lt;b&gt;&amp;&apos;&quot;</title>"),
        "{xml}"
    );
    assert!(
        xml.contains("<txt name='t' value='x=&apos;1&apos;'/>"),
        "{xml}"
    );
    assert_round_trip(&def);
}

#[test]
fn programmatic_edits_are_revalidated() {
    let mut def = parse(DEFAULT_XML);
    def.ips[0].dhcp_ranges[0].end = "192.168.123.9".parse().unwrap();
    assert_eq!(
        def.validate().unwrap_err().to_string(),
        "range 192.168.122.2 - 192.168.123.9 is not entirely within network 192.168.122.1/24"
    );
    let mut def = parse(DEFAULT_XML);
    def.forward.mode = ForwardMode::Isolated;
    def.forward.dev = Some("eth0".into());
    assert_eq!(
        def.validate().unwrap_err().to_string(),
        "forward dev requires a <forward> element in network 'default'"
    );
}

#[test]
fn live_dumpxml_connection_counters_are_accepted() {
    // `virsh net-dumpxml` of a running network carries read-only counters.
    let def = parse(
        "<network connections='2'><name>n</name><forward dev='eth0' mode='nat'>\
         <interface dev='eth0' connections='2'/></forward><ip address='10.0.0.1' prefix='24'/></network>",
    );
    assert_eq!(def.forward.dev.as_deref(), Some("eth0"));
    assert!(!def.to_xml().contains("connections"));
}

#[test]
fn model_serializes_to_json_for_the_api() {
    let mut def = parse(DEFAULT_XML);
    def.mac = Some("52:54:00:aa:bb:cc".parse().unwrap());
    let json = serde_json::to_value(&def).unwrap();
    assert_eq!(json["name"], "default");
    assert_eq!(json["forward"]["mode"], "nat");
    assert_eq!(json["mac"], "52:54:00:aa:bb:cc");
    assert_eq!(json["bridge"]["name"], "virbr0");
    assert_eq!(json["ips"][0]["netmask"], "255.255.255.0");
    assert_eq!(json["ips"][0]["dhcp_ranges"][0]["start"], "192.168.122.2");
}

/// Mutated documents must never panic, and whatever is accepted must
/// survive a format/parse round trip unchanged.
#[test]
fn mutated_documents_never_panic_and_accepted_ones_round_trip() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ALPHABET: &[char] = &[
        '<', '>', '/', '\'', '"', '=', '&', ';', ' ', '\n', '0', '1', '9', ':', '.', 'a', 'x',
    ];
    let mut rng = StdRng::seed_from_u64(0x6b76_6e65);
    let seeds = [
        FULL_XML,
        DEFAULT_XML,
        PERSISTED_XML,
        DOCS_ROUTED_XML,
        DOCS_IPV6_NAT_XML,
    ];
    let mut accepted = 0;
    for round in 0..3000 {
        let mut chars: Vec<char> = seeds[round % seeds.len()].chars().collect();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..chars.len());
            match rng.random_range(0..3) {
                0 => {
                    chars.remove(at);
                }
                1 => chars[at] = ALPHABET[rng.random_range(0..ALPHABET.len())],
                _ => chars.insert(at, ALPHABET[rng.random_range(0..ALPHABET.len())]),
            }
        }
        let mutated: String = chars.into_iter().collect();
        if let Ok(def) = NetworkDef::from_xml(&mutated) {
            accepted += 1;
            assert_round_trip(&def);
        }
    }
    // Whitespace and value edits often keep documents valid (259 of 3000
    // with this seed), so the round-trip assertion is really exercised.
    assert!(accepted >= 100, "only {accepted} mutants accepted");
}

/// Best of three wall-clock times of `from_xml(document)`, accepted or not.
fn parse_seconds(document: &str) -> f64 {
    (0..3)
        .map(|_| {
            let started = std::time::Instant::now();
            let _ = NetworkDef::from_xml(document);
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// A complexity check, not a speed target: parsing four times the input
/// must take well under sixteen times as long (quadratic), so the ratio
/// allowed for linear growth is a generous 8 to absorb noise on busy hosts.
fn assert_linear(shape: &str, document: impl Fn(usize) -> String, count: usize) {
    let small = document(count);
    let large = document(4 * count);
    // Warm up allocator and caches before measuring.
    let _ = NetworkDef::from_xml(&small);
    // A linear parser gives a ratio near 4, a quadratic one 16. Other load on the machine
    // can inflate one measurement; it cannot make a quadratic parser pass, so a few
    // attempts are allowed.
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let small_time = parse_seconds(&small).max(1e-4);
        let large_time = parse_seconds(&large);
        let ratio = large_time / small_time;
        if ratio < 8.0 {
            return;
        }
        ratios.push(format!(
            "{small_time:.4}s / {large_time:.4}s (ratio {ratio:.1})"
        ));
    }
    panic!(
        "{shape}: {count} / {} elements took {}",
        4 * count,
        ratios.join(", ")
    );
}

#[test]
fn parsing_time_grows_linearly_with_the_document() {
    assert_linear(
        "unknown empty elements",
        |count| format!("<network><name>e</name>{}</network>", "<x/>".repeat(count)),
        5_000,
    );
    assert_linear(
        "dhcp hosts",
        |count| {
            let hosts: String = (0..count)
                .map(|i| {
                    let [_, a, b, c] = u32::try_from(i + 2).unwrap().to_be_bytes();
                    format!(
                        "\n      <host mac='52:54:00:{a:02x}:{b:02x}:{c:02x}' ip='10.{a}.{b}.{c}'/>"
                    )
                })
                .collect();
            format!(
                "<network>\n  <name>big</name>\n  <ip address='10.0.0.1' prefix='8'>\n    <dhcp>{hosts}\n    </dhcp>\n  </ip>\n</network>\n"
            )
        },
        4_000,
    );
    assert_linear(
        "attributes of one element",
        |count| {
            let attrs: String = (0..count).map(|i| format!(" a{i}=''")).collect();
            format!("<network><name>e</name><bridge{attrs}/></network>")
        },
        2_000,
    );
}

#[test]
fn bootp_is_kept_in_libvirts_place_and_shape() {
    let xml = net_with_ip(
        "address='10.0.0.1' prefix='24'",
        "<dhcp><bootp server='10.0.0.5' file='pxelinux.0'/><range start='10.0.0.2' end='10.0.0.9'/></dhcp>",
    );
    let def = parse(&xml);
    assert_eq!(
        def.ips[0].dhcp_bootp,
        Some(Bootp {
            file: "pxelinux.0".into(),
            server: Some(Ipv4Addr::new(10, 0, 0, 5)),
        })
    );
    // After the ranges and hosts, file before server, as virsh prints it.
    assert!(
        def.to_xml().contains(
            "      <range start='10.0.0.2' end='10.0.0.9'/>\n      <bootp file='pxelinux.0' server='10.0.0.5'/>\n    </dhcp>"
        ),
        "{}",
        def.to_xml()
    );
    assert_round_trip(&def);
    let without_server = parse(&net_with_ip(
        "address='10.0.0.1' prefix='24'",
        "<dhcp><range start='10.0.0.2' end='10.0.0.9'/><bootp file='ipxe.efi'/></dhcp>",
    ));
    assert_round_trip(&without_server);
}

#[test]
fn bootp_that_cannot_be_served_is_refused_by_name() {
    let ip = "address='10.0.0.1' prefix='24'";
    let range = "<range start='10.0.0.2' end='10.0.0.9'/>";
    let long = "f".repeat(128);
    for (body, expected) in [
        (
            "<dhcp><bootp file='pxe'/></dhcp>".to_owned(),
            "<bootp> of address '10.0.0.1' in network 'n' needs a <range> or <host> in the same <dhcp>",
        ),
        (
            format!("<dhcp>{range}<bootp server='10.0.0.5'/></dhcp>"),
            "missing required attribute 'file' on <bootp> in network 'n' (line 1)",
        ),
        (
            format!("<dhcp>{range}<bootp file='{long}'/></dhcp>"),
            "invalid boot file name",
        ),
        (
            format!("<dhcp>{range}<bootp file='a&#9;b'/></dhcp>"),
            "invalid boot file name 'a\\tb'",
        ),
        (
            format!("<dhcp>{range}<bootp file='pxe' server='fd00::5'/></dhcp>"),
            "invalid boot server 'fd00::5' in network 'n': it must be an IPv4 address",
        ),
        (
            format!("<dhcp>{range}<bootp file='a'/><bootp file='b'/></dhcp>"),
            "<bootp>",
        ),
    ] {
        let error = parse_err(&net_with_ip(ip, &body));
        assert!(error.contains(expected), "{body}: {error}");
    }
}

#[test]
fn routes_follow_the_ips_in_libvirts_shape() {
    let xml = "<network><name>n</name><forward mode='route'/>\
        <route family='ipv6' address='2001:db8:ca2:3::' prefix='64' gateway='2001:db8:ca2:2::2' metric='2'/>\
        <ip address='192.168.122.1' prefix='24'/>\
        <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'/>\
        <route address='192.168.222.0' netmask='255.255.255.0' gateway='192.168.122.2'/>\
        </network>";
    let def = parse(xml);
    assert_eq!(def.routes.len(), 2);
    assert_eq!(
        def.routes[1].destination(),
        Some("192.168.222.0/24".parse().unwrap())
    );
    let text = def.to_xml();
    let tail = [
        "  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'>",
        "  </ip>",
        "  <route family='ipv6' address='2001:db8:ca2:3::' prefix='64' gateway='2001:db8:ca2:2::2' metric='2'/>",
        "  <route address='192.168.222.0' netmask='255.255.255.0' gateway='192.168.122.2'/>",
        "</network>",
        "",
    ]
    .join("\n");
    assert!(text.ends_with(&tail), "{text}");
    assert_round_trip(&def);
}

/// Definitions kvnet stored before it checked routes as libvirt does still load (an
/// upgrade must not drop a running network), and are written back in the form libvirt
/// takes; a new definition gets libvirt's checks.
#[test]
fn stored_routes_from_before_libvirt_s_checks_still_load() {
    let xml = "<network><name>r</name><forward mode='route'/>\
               <ip address='10.0.0.1' prefix='24'/><ip family='ipv6' address='fd77::1' prefix='64'/>\
               <route address='fd78::' prefix='64' gateway='fd77::2'/>\
               <route address='172.16.0.0' gateway='10.0.0.2'/></network>";
    assert_eq!(
        parse_err(xml),
        "r: No family specified for non-IPv4 address 'fd78::' in route definition"
    );
    let without_prefix = xml.replace(
        "<route address='fd78::' prefix='64' gateway='fd77::2'/>",
        "",
    );
    assert_eq!(
        parse_err(&without_prefix),
        "r: Address '172.16.0.0' in route definition is not a network address"
    );
    let def = NetworkDef::from_stored_xml(xml).expect("a stored definition loads");
    let written = def.to_xml();
    assert!(
        written.contains("<route family='ipv6' address='fd78::' prefix='64' gateway='fd77::2'/>"),
        "{written}"
    );
    assert!(
        written.contains("<route address='172.16.0.0' prefix='16' gateway='10.0.0.2'/>"),
        "{written}"
    );
    assert_eq!(
        parse(&written),
        def,
        "what is written back is a valid definition"
    );
}

#[test]
fn routes_that_cannot_be_added_are_refused_by_name() {
    let net = |route: &str| {
        format!(
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'/>\
             <ip family='ipv6' address='fd00::1' prefix='64'/>{route}</network>"
        )
    };
    for (route, expected) in [
        (
            "<route address='10.9.0.0' prefix='16' gateway='10.1.0.2'/>",
            "unreachable static route gateway '10.1.0.2' specified for network 'n'",
        ),
        // libvirt's checks and words (virNetDevIPRouteParseXML), in its order.
        (
            "<route address='10.9.0.1' prefix='16' gateway='10.0.0.2'/>",
            "n: Address '10.9.0.1' in route definition is not a network address",
        ),
        (
            "<route address='10.9.0.0' prefix='16' gateway='fd00::2'/>",
            "n: No family specified for non-IPv4 gateway '10.9.0.0' in route definition",
        ),
        (
            "<route address='fd01::' prefix='64' gateway='fd00::2'/>",
            "n: No family specified for non-IPv4 address 'fd01::' in route definition",
        ),
        (
            "<route family='ipv6' address='10.9.0.0' prefix='16' gateway='10.0.0.2'/>",
            "n: ipv6 family specified for non-IPv6 address '10.9.0.0' in route definition",
        ),
        (
            "<route family='ipv6' address='fd01::' prefix='64' gateway='10.0.0.2'/>",
            "n: ipv6 specified for non-IPv6 gateway address '10.0.0.2' in route definition",
        ),
        (
            "<route family='ipv6' address='fd01::' netmask='255.0.0.0' gateway='fd00::2'/>",
            "n: Specifying netmask invalid for IPv6 address 'fd01::' in route definition",
        ),
        (
            "<route family='ipx' address='10.9.0.0' prefix='16' gateway='10.0.0.2'/>",
            "n: Unrecognized family 'ipx' in route definition",
        ),
        (
            "<route address='10.9.0.0' prefix='33' gateway='10.0.0.2'/>",
            "n: Invalid prefix 33 specified in route definition, must be 0 - 32",
        ),
        (
            "<route address='10.9.0.0' prefix='16' netmask='255.255.0.0' gateway='10.0.0.2'/>",
            "n: Route definition cannot have both a prefix and a netmask",
        ),
        (
            "<route address='10.9.0.0' netmask='fd00::' gateway='10.0.0.2'/>",
            "n: Invalid netmask 'fd00::' for address '10.9.0.0' (both must be IPv4)",
        ),
        (
            "<route address='10.9.0.0' netmask='255.0.255.0' gateway='10.0.0.2'/>",
            "n: Invalid netmask '255.0.255.0' in route definition (not a contiguous netmask)",
        ),
        (
            "<route address='10.9.0.0' prefix='16' gateway='10.0.0.2' metric='0'/>",
            "Invalid value for attribute 'metric' in element 'route': Zero is not permitted",
        ),
        (
            "<route address='10.9.0.0' prefix='x' gateway='10.0.0.2'/>",
            "Invalid value for attribute 'prefix' in element 'route': 'x'. Expected non-negative integer value",
        ),
        (
            "<route address='10.9.0.0' prefix='16'/>",
            "n: Missing required gateway attribute in route definition",
        ),
        (
            "<route prefix='16' gateway='10.0.0.2'/>",
            "n: Missing required address attribute in route definition",
        ),
        (
            "<route address='10.9.0.300' prefix='16' gateway='10.0.0.2'/>",
            "n: Bad network address '10.9.0.300' in route definition",
        ),
    ] {
        let error = parse_err(&net(route));
        assert!(error.contains(expected), "{route}: {error}");
    }
    let on_host_bridge = parse_err(
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>\
         <route address='10.9.0.0' prefix='16' gateway='10.0.0.2'/></network>",
    );
    assert_eq!(
        on_host_bridge,
        "Unsupported <route> element in network n with forward mode='bridge'"
    );
}

#[test]
fn tftp_root_comes_first_in_its_ip_and_must_be_servable() {
    let def = parse(&net_with_ip(
        "address='10.0.0.1' prefix='24'",
        "<dhcp><range start='10.0.0.2' end='10.0.0.9'/><bootp file='pxelinux.0'/></dhcp><tftp root='/srv/tftp'/>",
    ));
    assert_eq!(def.ips[0].tftp_root.as_deref(), Some("/srv/tftp"));
    assert!(
        def.to_xml()
            .contains("    <tftp root='/srv/tftp'/>\n    <dhcp>\n"),
        "{}",
        def.to_xml()
    );
    assert_round_trip(&def);
    for (xml, expected) in [
        (
            net_with_ip("address='10.0.0.1' prefix='24'", "<tftp root='srv'/>"),
            "TFTP root 'srv' of network 'n' is not an absolute path",
        ),
        (
            net_with_ip(
                "family='ipv6' address='fd00::1' prefix='64'",
                "<tftp root='/srv'/>",
            ),
            "Unsupported <tftp> element in an IPv6 element in network 'n'",
        ),
        (
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'><tftp root='/a'/></ip>\
             <ip address='10.1.0.1' prefix='24'><tftp root='/b'/></ip></network>"
                .to_owned(),
            "more than one <ip> of network 'n' has <tftp>",
        ),
        (
            net_with_ip("address='10.0.0.1' prefix='24'", "<tftp/>"),
            "missing required attribute 'root' on <tftp>",
        ),
    ] {
        let error = parse_err(&xml);
        assert!(error.contains(expected), "{xml}: {error}");
    }
}

#[test]
fn srv_target_dot_means_no_such_service() {
    let def = parse(
        "<network><name>n</name><dns>\
         <srv service='ftp' protocol='tcp' domain='shop.test' target='.' port='21' priority='5' weight='1'/>\
         <srv service='gopher' protocol='tcp' target='.'/>\
         </dns><ip address='10.7.0.1' prefix='24'/></network>",
    );
    assert_eq!(def.dns.srvs[0].target.as_deref(), Some("."));
    assert!(def.to_xml().contains(
        "<srv service='ftp' protocol='tcp' domain='shop.test' target='.' port='21' priority='5' weight='1'/>"
    ));
    assert_round_trip(&def);
    // Only the root itself: empty labels elsewhere are still refused.
    assert_eq!(
        parse_err(
            "<network><name>n</name><dns><srv service='ftp' protocol='tcp' target='..'/></dns></network>"
        ),
        "invalid DNS SRV target '..' in network 'n': it has an empty label"
    );
}

#[test]
fn dhcp_host_mac_is_written_back_as_spelled() {
    // libvirt keeps a <dhcp><host> MAC as the document wrote it (only the bridge's
    // <mac> is normalised), so dumpxml shows it unchanged.
    let def = parse(&net_with_ip(
        "address='10.7.1.1' prefix='24'",
        "<dhcp><host mac='52:54:0:A:b:c' name='vm1' ip='10.7.1.20'/>\
         <host mac='52:54:00:00:00:21' ip='10.7.1.21'/></dhcp>",
    ));
    let hosts = &def.ips[0].dhcp_hosts;
    assert_eq!(
        hosts[0].mac,
        Some(MacAddr([0x52, 0x54, 0, 0x0a, 0x0b, 0x0c]))
    );
    assert_eq!(hosts[0].mac_text.as_deref(), Some("52:54:0:A:b:c"));
    assert_eq!(hosts[1].mac_text, None);
    let xml = def.to_xml();
    assert!(
        xml.contains("<host mac='52:54:0:A:b:c' name='vm1' ip='10.7.1.20'/>"),
        "{xml}"
    );
    assert!(xml.contains("<host mac='52:54:00:00:00:21' ip='10.7.1.21'/>"));
    assert_round_trip(&def);
    // A spelling that does not match the address is refused.
    let mut edited = def;
    edited.ips[0].dhcp_hosts[1].mac_text = Some("52:54:00:00:00:99".into());
    assert!(edited.validate().is_err());
}

#[test]
fn uuid_is_read_with_libvirts_rules() {
    let uuid = |text: &str| {
        NetworkDef::from_xml(&format!(
            "<network><name>n</name><uuid>{text}</uuid></network>"
        ))
        .map(|def| def.uuid.unwrap().to_string())
    };
    let canonical = "a1b2c3d4-0000-4111-8222-0123456789ab";
    // Dashes or spaces between any pairs of digits, any case, whitespace around.
    for accepted in [
        canonical,
        "A1B2C3D400004111822201234567 89AB",
        "a1b2-c3d4-0000-4111-8222-0123-4567-89ab",
        "\n  a1b2c3d4-0000-4111-8222-0123456789ab\t\n",
    ] {
        assert_eq!(uuid(accepted).unwrap(), canonical, "{accepted:?}");
    }
    // libvirt refuses the braced and URN forms, odd digits and trailing junk.
    for refused in [
        "{a1b2c3d4-0000-4111-8222-0123456789ab}",
        "urn:uuid:a1b2c3d4-0000-4111-8222-0123456789ab",
        "a-1b2c3d4-0000-4111-8222-0123456789ab",
        "a1b2c3d4-0000-4111-8222-0123456789a",
        "a1b2c3d4-0000-4111-8222-0123456789abcd",
        "a1b2c3d4-0000-4111-8222-0123456789ab-",
        " ",
    ] {
        let err = uuid(refused).unwrap_err().to_string();
        assert!(err.starts_with("malformed uuid"), "{refused:?}: {err}");
    }
    // An empty element is no uuid: one is generated at define.
    for empty in ["<uuid></uuid>", "<uuid/>"] {
        let def = parse(&format!("<network><name>n</name>{empty}</network>"));
        assert_eq!(def.uuid, None, "{empty}");
    }
}

#[test]
fn characters_outside_xml_1_0_are_malformed() {
    // As libxml2 (and so libvirt) does, refuse control characters whether written
    // out or as character references, in text and in attribute values.
    for (xml, what) in [
        (
            "<network><name>a&#x1;b</name></network>",
            "U+0001 in <name>",
        ),
        (
            "<network><name>c</name><dns><txt name='t' value='x&#27;y'/></dns></network>",
            "U+001B in attribute 'value' of <txt>",
        ),
        (
            "<network><name>d\u{7}e</name></network>",
            "U+0007 in <name>",
        ),
        (
            "<network><name>f</name><title>g\u{1f}</title></network>",
            "U+001F in <title>",
        ),
        (
            "<network><name>h</name><dns><txt name='t' value='\u{8}'/></dns></network>",
            "U+0008 in attribute 'value' of <txt>",
        ),
        (
            "<network><name>i&#xFFFE;</name></network>",
            "U+FFFE in <name>",
        ),
    ] {
        let err = parse_err(xml);
        assert!(
            err.starts_with("malformed network XML at line 1")
                && err.ends_with(&format!("character {what} is not allowed in XML 1.0")),
            "{xml}: {err}"
        );
    }
    // Tab, newline and carriage return stay allowed.
    let def = parse(
        "<network><name>t</name><dns><txt name='t' value='a&#9;b&#10;c&#13;d'/></dns></network>",
    );
    assert_eq!(def.dns.txts[0].value, "a\tb\nc\rd");
}

#[test]
fn whitespace_in_attribute_values_is_normalized_like_libxml2() {
    // Line ends and tabs written out in an attribute value are read as spaces (a
    // CRLF as one), character references to them are kept.
    let def = parse(
        "<network>\r\n<name>w</name>\r\n<dns>\r\n\
         <txt name='a' value='one\ntwo\tthree\r\nfour\rfive'/>\r\n\
         <txt name='b' value='x&#10;y&#9;z&#13;'/>\r\n\
         </dns>\r\n</network>\r\n",
    );
    assert_eq!(def.dns.txts[0].value, "one two three four five");
    assert_eq!(def.dns.txts[1].value, "x\ny\tz\r");
    // Written back as references, so that reading the file again keeps them.
    assert!(
        def.to_xml()
            .contains("<txt name='b' value='x&#xa;y&#x9;z&#xd;'/>")
    );
    assert_round_trip(&def);
    let described = parse("<network><name>d</name><description>a&#13;b\nc</description></network>");
    assert_eq!(described.description.as_deref(), Some("a\rb\nc"));
    assert!(
        described
            .to_xml()
            .contains("<description>a&#xd;b\nc</description>")
    );
    assert_round_trip(&described);
}

#[test]
fn numbers_are_read_like_libvirts_strtoul() {
    // Leading whitespace and '+' are accepted as libvirt does; lease expiry is read
    // in C's base 0 (hex after 0x, octal after a leading 0), everything else in 10.
    let def = parse(
        "<network><name>n</name><bridge name='vbn' delay=' 3'/><mtu size=' +1400'/>\
         <forward mode='nat'><nat><port start=' 2000' end='+3000'/></nat></forward>\
         <dns><srv service='a' protocol='tcp' target='t.test' port=' 070' priority='+7' weight=' 010'/></dns>\
         <ip address='10.7.3.1' prefix=' 024'><dhcp>\
         <range start='10.7.3.2' end='10.7.3.9'><lease expiry='010' unit='hours'/></range>\
         <host mac='52:54:00:00:00:01' ip='10.7.3.20'><lease expiry=' 0x1F' unit='hours'/></host>\
         <host mac='52:54:00:00:00:02' ip='10.7.3.21'><lease expiry='+0'/></host>\
         </dhcp></ip></network>",
    );
    assert_eq!(def.bridge.delay, 3);
    assert_eq!(def.mtu, Some(1400));
    assert_eq!(
        def.forward.nat.port,
        Some(PortRange {
            start: 2000,
            end: 3000
        })
    );
    let srv = &def.dns.srvs[0];
    assert_eq!(
        (srv.port, srv.priority, srv.weight),
        (Some(70), Some(7), Some(10))
    );
    assert_eq!(def.ips[0].prefix, Some(24));
    let ip = &def.ips[0];
    assert_eq!(ip.dhcp_ranges[0].lease.unwrap().expiry, 8);
    assert_eq!(ip.dhcp_hosts[0].lease.unwrap().expiry, 31);
    assert_eq!(ip.dhcp_hosts[1].lease.unwrap().expiry, 0);
    assert_round_trip(&def);
    for (xml, expected) in [
        (
            "<network><name>n</name><mtu size='1400 '/></network>",
            "Invalid mtu size '1400 ' in network 'n'",
        ),
        (
            "<network><name>n</name><bridge name='vbn' delay='-0'/></network>",
            "Invalid delay value in network 'n'",
        ),
        (
            "<network><name>n</name><bridge name='vbn' delay='0x10'/></network>",
            "Invalid delay value in network 'n'",
        ),
        (
            "<network><name>n</name><ip address='10.7.3.1' prefix='24'><dhcp>\
             <range start='10.7.3.2' end='10.7.3.9'><lease expiry='08'/></range></dhcp></ip></network>",
            "invalid value '08' for attribute 'expiry' of <lease> in network 'n'",
        ),
        (
            "<network><name>n</name><ip address='10.7.3.1' prefix='24'><dhcp>\
             <range start='10.7.3.2' end='10.7.3.9'><lease expiry='0x'/></range></dhcp></ip></network>",
            "invalid value '0x' for attribute 'expiry' of <lease> in network 'n'",
        ),
    ] {
        assert_eq!(parse_err(xml), expected, "{xml}");
    }
}

/// `<network ipv6='yes'>` (guest-to-guest IPv6 without an IPv6 `<ip>`) is kept and
/// written back as libvirt does, which writes nothing for 'no'.
#[test]
fn network_ipv6_attribute_is_kept_like_libvirt() {
    let yes = parse("<network ipv6='yes'><name>x</name></network>");
    assert!(yes.ipv6_without_gateway);
    assert!(
        yes.to_xml()
            .starts_with("<network ipv6='yes'>\n  <name>x</name>\n")
    );
    assert_round_trip(&yes);
    let no = parse("<network ipv6='no'><name>x</name></network>");
    assert!(!no.ipv6_without_gateway);
    assert!(no.to_xml().starts_with("<network>\n"));
    assert_eq!(
        parse_err("<network ipv6='maybe'><name>x</name></network>"),
        "Invalid ipv6 setting 'maybe' in network 'x'"
    );
}

/// libvirt's networkxml2xmlin/dhcp6host-routed-network.xml: DUID and name
/// reservations under the IPv6 `<ip>`, written back as `net-dumpxml` does.
const DHCP6_HOSTS_XML: &str = "<network>
  <name>local</name>
  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>
  <forward mode='route'/>
  <bridge name='virbr1' stp='on' delay='0'/>
  <mac address='12:34:56:78:9a:bc'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <host mac='00:16:3e:77:e2:ed' name='a.example.com' ip='192.168.122.10'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ac10:fd01::1' prefix='64'>
    <dhcp>
      <range start='2001:db8:ac10:fd01::1:10' end='2001:db8:ac10:fd01::1:1f'>
        <lease expiry='2' unit='hours'/>
      </range>
      <host id='0:4:7e:7d:f0:7d:a8:bc:c5:d2:13:32:11:ed:16:ea:84:63' ip='2001:db8:ac10:fd01::1:20'/>
      <host name='paul' ip='2001:db8:ac10:fd01::1:21'/>
      <host id='0:3:0:1:0:16:3e:11:22:33' name='peter.xyz' ip='2001:db8:ac10:fd01::1:22'/>
      <host id='0:1:0:1:18:aa:62:fe:0:16:3e:44:55:66' name='badbob' ip='2001:db8:ac10:fd01::1:24'/>
    </dhcp>
  </ip>
</network>
";

#[test]
fn ipv6_dhcp_hosts_and_ranges_round_trip() {
    let def = parse(DHCP6_HOSTS_XML);
    assert_eq!(def.to_xml(), DHCP6_HOSTS_XML);
    let v6 = &def.ips[1];
    assert_eq!(v6.dhcp_ranges.len(), 1);
    assert_eq!(
        v6.dhcp_hosts[2].duid(),
        Some(vec![0, 3, 0, 1, 0, 0x16, 0x3e, 0x11, 0x22, 0x33])
    );
    assert_eq!(v6.dhcp_hosts[1].duid(), None);
}

#[test]
fn ipv6_dhcp_errors_name_the_network_and_value() {
    let v6_ip = "family='ipv6' address='fd00::1' prefix='64'";
    let cases = [
        (
            "<dhcp><range start='fd00:0:0:1::10' end='fd00:0:0:1::20'/></dhcp>",
            "range fd00:0:0:1::10 - fd00:0:0:1::20 is not entirely within network fd00::1/64",
        ),
        (
            "<dhcp><range start='fd00::10' end='fd00::1:20'/></dhcp>",
            "range fd00::10 - fd00::1:20 is too large (> 65535)",
        ),
        (
            "<dhcp><range start='fd00::20' end='fd00::10'/></dhcp>",
            "range fd00::20 - fd00::10 start larger than end",
        ),
        (
            "<dhcp><host mac='52:54:00:00:00:01' name='a' ip='fd00::5'/></dhcp>",
            "Invalid to specify MAC address '52:54:00:00:00:01' in network 'n' IPv6 static host definition",
        ),
        (
            "<dhcp><host ip='fd00::5'/></dhcp>",
            "Static host definition in IPv6 network 'n' must have id or name attribute",
        ),
        (
            "<dhcp><host id='0:1:g' ip='fd00::5'/></dhcp>",
            "Invalid character 'g' in id '0:1:g' of network 'n'",
        ),
        (
            "<dhcp><host id='0::1' ip='fd00::5'/></dhcp>",
            "Invalid id '0::1' of network 'n': a DUID is 1 to 130 hex bytes separated by ':'",
        ),
        (
            "<dhcp><host name='-x' ip='fd00::5'/></dhcp>",
            "Cannot use host name '-x' in network 'n'",
        ),
        (
            "<dhcp><range start='fd00::10' end='fd00::20'><lease expiry='1'/></range></dhcp>",
            "The minimum lease time should be greater than 2 minutes",
        ),
    ];
    for (body, expected) in cases {
        let xml = net_with_ip(v6_ip, body);
        assert_eq!(parse_err(&xml), expected, "{xml}");
    }
    // Refused when given, left out when loaded (see dhcp_ranges_and_hosts_are_checked_against_the_subnet).
    let outside = parse(&net_with_ip(
        v6_ip,
        "<dhcp><host id='0:1' ip='fd01::5'/></dhcp>",
    ));
    assert_eq!(
        outside.check_dhcp_hosts_usable().unwrap_err().to_string(),
        "static host address fd01::5 is not within network fd00::/64 of network 'n'"
    );
    assert_eq!(outside.usable_dhcp_hosts(&outside.ips[0]).count(), 0);
    let two = "<network><name>n</name>\
        <ip family='ipv6' address='fd00::1' prefix='64'><dhcp><range start='fd00::10' end='fd00::20'/></dhcp></ip>\
        <ip family='ipv6' address='fd01::1' prefix='64'><dhcp><host name='a' ip='fd01::5'/></dhcp></ip></network>";
    assert_eq!(
        parse_err(two),
        "Multiple IPv6 dhcp sections found -- dhcp is supported only for a single IPv6 address on each network"
    );
}

#[test]
fn local_ptr_needs_a_subnet_that_ends_on_a_label() {
    for (attrs, domain) in [
        (
            "address='192.168.122.1' prefix='24'",
            "122.168.192.in-addr.arpa",
        ),
        (
            "address='10.20.0.1' netmask='255.255.0.0'",
            "20.10.in-addr.arpa",
        ),
        (
            "family='ipv6' address='fd00:20::1' prefix='64'",
            "0.0.0.0.0.0.0.0.0.2.0.0.0.0.d.f.ip6.arpa",
        ),
        (
            "family='ipv6' address='2001:db8:ab::1' prefix='52'",
            "0.b.a.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        ),
    ] {
        let def = parse(&net_with_ip(attrs, ""));
        assert_eq!(def.ips[0].ptr_domain().as_deref(), Some(domain), "{attrs}");
    }
    let def = parse(&net_with_ip(
        "address='10.0.0.1' prefix='16' localPtr='yes'",
        "",
    ));
    assert_eq!(def.ips[0].local_ptr, Some(true));
    assert_round_trip(&def);
    // libvirt's words when it cannot make the domain (it fails the start; kvnet refuses
    // the definition).
    for (attrs, expected) in [
        (
            "address='10.0.0.1' prefix='23' localPtr='yes'",
            "PTR domain for IPv4 network with prefix 23 cannot be automatically created",
        ),
        (
            "family='ipv6' address='fd00::1' prefix='62' localPtr='yes'",
            "PTR domain for IPv6 network with prefix 62 cannot be automatically created",
        ),
        // A prefix longer than the address is refused as such, never sliced.
        (
            "address='10.0.0.1' prefix='40' localPtr='yes'",
            "Invalid IPv4 prefix '40' in network 'n'",
        ),
        (
            "family='ipv6' address='fd00::1' prefix='136' localPtr='yes'",
            "Invalid IPv6 prefix '136' in network 'n'",
        ),
    ] {
        assert_eq!(parse_err(&net_with_ip(attrs, "")), expected);
    }
}

#[test]
fn bandwidth_round_trips_in_libvirts_place_and_form() {
    let xml = "<network>\n  <name>shaped</name>\n  <uuid>8d1f2f4e-1f0c-4b7e-9d2b-0d6c1b0c8a11</uuid>\n  <bridge name='virbr5' stp='on' delay='0'/>\n  <mac address='52:54:00:12:34:56'/>\n  <bandwidth>\n    <inbound average='1000' peak='5000' burst='1024'/>\n    <outbound average='128'/>\n  </bandwidth>\n  <port isolated='yes'/>\n  <ip address='10.5.0.1' prefix='24'>\n  </ip>\n</network>\n";
    let def = parse(xml);
    let bandwidth = def.bandwidth.clone().expect("bandwidth");
    assert_eq!(
        bandwidth.inbound,
        Some(Rate {
            average: 1000,
            peak: Some(5000),
            burst: Some(1024),
        })
    );
    assert_eq!(
        bandwidth.outbound_limit().map(|rate| rate.average),
        Some(128)
    );
    assert_eq!(def.to_xml(), xml);
    assert_round_trip(&def);

    // libvirt keeps an element whose average is 0 in the model but writes nothing of it,
    // and leaves out a peak or burst of 0.
    let zeroes = parse(
        "<network><name>z</name><bandwidth><inbound average='0' peak='9'/><outbound average='7' peak='0' burst='0'/></bandwidth></network>",
    );
    let bandwidth = zeroes.bandwidth.clone().expect("bandwidth");
    assert_eq!(bandwidth.inbound_limit(), None);
    assert!(
        zeroes
            .to_xml()
            .contains("  <bandwidth>\n    <outbound average='7'/>\n  </bandwidth>\n"),
        "{}",
        zeroes.to_xml()
    );
}

#[test]
fn bandwidth_errors_are_libvirt_9s() {
    let net =
        |body: &str| format!("<network><name>x</name><bandwidth>{body}</bandwidth></network>");
    let cases: &[(String, &str)] = &[
        (
            net("<inbound peak='x'/>"),
            "Missing mandatory average or floor attributes",
        ),
        (
            net("<inbound floor='0' burst='5'/>"),
            "'peak' and 'burst' require 'average' attribute",
        ),
        (
            net("<inbound average='1' floor='5'/>"),
            "floor attribute is not supported for this config",
        ),
        (
            net("<outbound average='1' floor='5'/>"),
            "'floor' attribute allowed only in <inbound> element",
        ),
        (
            "<network><name>x</name><bandwidth classID='3'/></network>".to_string(),
            "classID attribute not supported on <bandwidth> in this usage context",
        ),
        (
            net("<inbound average='-1'/>"),
            "could not convert bandwidth average value '-1'",
        ),
        (
            net("<outbound average='1' peak='2' burst='1k'/>"),
            "could not convert bandwidth burst value '1k'",
        ),
        (
            net("<inbound average='1' burst='18446744073709551615'/>"),
            "bandwidth burst value '18446744073709551615' of <inbound> is too large: it must be below 2^54",
        ),
        (
            net("<inbound average='1'/><inbound average='2'/>"),
            "Only one child <inbound> element allowed",
        ),
        // libvirt looks at the children before it reads any rate.
        (
            net("<outbound average='x'/><inbound average='1'/><outbound average='2'/>"),
            "Only one child <outbound> element allowed",
        ),
        // Then inbound before outbound.
        (
            net("<outbound average='y'/><inbound average='x'/>"),
            "could not convert bandwidth average value 'x'",
        ),
        // Leading blanks are read past, trailing ones are not.
        (
            net("<inbound average='5 '/>"),
            "could not convert bandwidth average value '5 '",
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(parse_err(xml), *expected, "{xml}");
    }
    // A floor of 0 is no floor; an empty <bandwidth> is dropped, as libvirt drops it.
    let def = parse(&net("<inbound average='5' floor='0'/>"));
    assert_eq!(
        def.bandwidth.and_then(|b| b.inbound),
        Some(Rate {
            average: 5,
            peak: None,
            burst: None
        })
    );
    assert_eq!(parse(&net("")).bandwidth, None);
}

#[test]
fn portgroups_round_trip_last_with_libvirts_checks() {
    let xml = "<network>\n  <name>groups</name>\n  <uuid>8d1f2f4e-1f0c-4b7e-9d2b-0d6c1b0c8a12</uuid>\n  <bridge name='virbr6' stp='on' delay='0'/>\n  <mac address='52:54:00:12:34:57'/>\n  <ip address='10.6.0.1' prefix='24'>\n  </ip>\n  <portgroup name='engineering' default='yes'>\n    <bandwidth>\n      <inbound average='1000' peak='5000' burst='5120'/>\n      <outbound average='1000' peak='5000' burst='5120'/>\n    </bandwidth>\n  </portgroup>\n  <portgroup name='sales' trustGuestRxFilters='yes'>\n  </portgroup>\n</network>\n";
    let def = parse(xml);
    assert_eq!(def.to_xml(), xml);
    assert_round_trip(&def);
    assert_eq!(
        def.portgroup(None).map(|group| group.name.as_str()),
        Some("engineering")
    );
    assert_eq!(
        def.portgroup(Some("sales")).map(|group| group.default),
        Some(false)
    );
    assert!(def.portgroup(Some("marketing")).is_none());
    // `default` is read without regard to case, as libvirt reads it.
    let upper = parse("<network><name>u</name><portgroup name='a' default='YES'/></network>");
    assert!(upper.portgroups[0].default);

    let cases: &[(&str, &str)] = &[
        (
            "<network><name>x</name><portgroup name='a' default='yes'/><portgroup name='b' default='yes'/></network>",
            "network 'x' has multiple default <portgroup> elements (a and b), but only one default is allowed",
        ),
        (
            "<network><name>x</name><portgroup name='a'/><portgroup name='a'/></network>",
            "multiple <portgroup> elements with the same name (a) in network 'x'",
        ),
        (
            "<network><name>x</name><portgroup/></network>",
            "Missing required name attribute in portgroup",
        ),
        (
            "<network><name>x</name><portgroup name=''/></network>",
            "Missing required name attribute in portgroup",
        ),
        (
            "<network><name>x</name><portgroup name='a' default='maybe'/></network>",
            "invalid value 'maybe' for attribute 'default' of <portgroup name='a'> in network 'x', expected 'yes' or 'no'",
        ),
        (
            "<network><name>x</name><portgroup name='a' trustGuestRxFilters='on'/></network>",
            "Invalid value for attribute 'trustGuestRxFilters' in element 'portgroup': 'on'.",
        ),
        (
            "<network><name>x</name><portgroup name='a'><bandwidth><inbound average='1' floor='1'/></bandwidth></portgroup></network>",
            "floor attribute is not supported for this config",
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(parse_err(xml), *expected, "{xml}");
    }
}

#[test]
fn macvtap_networks_round_trip_as_libvirt_writes_them() {
    // libvirt keeps `dev` as the first device of the pool and writes it twice.
    let def = NetworkDef::from_xml(
        "<network><name>lan</name><uuid>11111111-2222-3333-4444-555555555555</uuid>\
         <forward mode='vepa' dev='eth0'><interface dev='eth0'/><interface dev='eth1'/></forward></network>",
    )
    .expect("parse");
    assert_eq!(def.macvtap_mode(), Some(MacvtapMode::Vepa));
    assert_eq!(def.forward.interfaces, ["eth0", "eth1"]);
    assert_eq!(def.bridge_name(), None);
    let xml = def.to_xml();
    assert_eq!(
        xml,
        "<network>\n  <name>lan</name>\n  <uuid>11111111-2222-3333-4444-555555555555</uuid>\n  \
         <forward dev='eth0' mode='vepa'>\n    <interface dev='eth0'/>\n    <interface dev='eth1'/>\n  \
         </forward>\n</network>\n"
    );
    assert_eq!(NetworkDef::from_xml(&xml).expect("reparse"), def);

    // `dev` alone is a pool of one; no pool at all is accepted (ports fail, as libvirt's).
    for (input, mode, pool, written) in [
        (
            "<forward mode='bridge' dev='eth0'/>",
            MacvtapMode::Bridge,
            &["eth0"][..],
            "<forward dev='eth0' mode='bridge'>\n    <interface dev='eth0'/>\n  </forward>",
        ),
        (
            "<forward mode='bridge'><interface dev='eth3'/></forward>",
            MacvtapMode::Bridge,
            &["eth3"][..],
            "<forward dev='eth3' mode='bridge'>\n    <interface dev='eth3'/>\n  </forward>",
        ),
        (
            "<forward mode='private'/>",
            MacvtapMode::Private,
            &[][..],
            "<forward mode='private'/>",
        ),
        (
            "<forward mode='passthrough'><interface dev='eth0' connections='1'/></forward>",
            MacvtapMode::Passthrough,
            &["eth0"][..],
            "<forward dev='eth0' mode='passthrough'>\n    <interface dev='eth0'/>\n  </forward>",
        ),
    ] {
        let def = NetworkDef::from_xml(&format!("<network><name>lan</name>{input}</network>"))
            .unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(def.macvtap_mode(), Some(mode), "{input}");
        assert_eq!(def.forward.interfaces, pool, "{input}");
        assert_eq!(def.mac, None, "no bridge MAC is made up for {input}");
        let mut filled = def.clone();
        filled.fill_defaults(|_| false).expect("fill");
        assert_eq!(
            filled.bridge_name(),
            None,
            "no bridge is made up for {input}"
        );
        assert!(def.to_xml().contains(written), "{input}:\n{}", def.to_xml());
    }
    // A host bridge is not a macvtap network.
    let host_bridge = NetworkDef::from_xml(
        "<network><name>br</name><forward mode='bridge'/><bridge name='br0'/></network>",
    )
    .expect("parse");
    assert_eq!(host_bridge.macvtap_mode(), None);
}

#[test]
fn macvtap_networks_get_libvirts_messages() {
    for (body, expected) in [
        (
            "<forward mode='vepa'><interface/></forward>",
            "Missing required dev attribute in <forward> <interface> element of network x",
        ),
        (
            "<forward mode='vepa' dev='eth0'><interface dev='eth1'/></forward>",
            "<forward dev='eth0'> must match first <interface dev='eth1'/> in network x",
        ),
        (
            "<forward mode='vepa'><interface dev='eth0'/><interface dev='eth0'/></forward>",
            "interface 'eth0' can only be listed once in network x",
        ),
        (
            "<forward mode='private' dev='eth0'/><bridge name='br0'/>",
            "bridge name not allowed in private mode (network 'x')",
        ),
        (
            "<forward mode='passthrough' dev='eth0'/><bridge stp='off'/>",
            "bridge delay/stp/zone options only allowed in route, nat, and isolated mode, not in passthrough (network 'x')",
        ),
        (
            "<forward mode='vepa' dev='eth0'/><mtu size='9000'/>",
            "mtu size only allowed in open, route, nat, and isolated mode, not in vepa (network 'x')",
        ),
        (
            "<forward mode='vepa' dev='eth0'/><mac address='52:54:00:00:00:01'/>",
            "Unsupported <mac> element in network x with forward mode='vepa'",
        ),
        (
            "<forward mode='bridge' dev='eth0'/><ip address='10.0.0.1' prefix='24'/>",
            "Unsupported <ip> element in network x with forward mode='bridge'",
        ),
        (
            "<forward mode='private' dev='eth0'/><domain name='lan'/>",
            "Unsupported <domain> element in network x with forward mode='private'",
        ),
        (
            "<forward mode='vepa' dev='eth0'/><bandwidth><inbound average='1000'/></bandwidth>",
            "Unsupported network-wide <bandwidth> element in network x with forward mode='vepa'",
        ),
        (
            "<forward mode='vepa' dev='eth0'/><portgroup name='slow'><bandwidth><inbound average='10'/></bandwidth></portgroup>",
            "Unsupported <bandwidth> element in network 'x' in portgroup 'slow' with forward mode='vepa'",
        ),
        (
            "<forward mode='vepa'><interface dev='../x'/></forward>",
            "forward interface \"../x\" in network 'x' contains the invalid character '/'",
        ),
        (
            "<forward mode='nat'><interface dev='eth0'/><interface dev='eth1'/></forward><ip address='10.0.0.1' prefix='24'/>",
            "multiple forwarding interfaces specified for network 'x', only one is supported",
        ),
    ] {
        let err = NetworkDef::from_xml(&format!("<network><name>x</name>{body}</network>"))
            .expect_err(body)
            .to_string();
        assert!(
            err.contains(expected),
            "{body}\n  got: {err}\n want: {expected}"
        );
    }
}

#[test]
fn live_xml_counts_connections_as_libvirt_does() {
    let def = NetworkDef::from_xml(
        "<network ipv6='yes'><name>lan</name><forward mode='vepa'><interface dev='eth0'/>\
         <interface dev='eth1'/></forward></network>",
    )
    .expect("parse");
    let connections = Connections {
        network: 2,
        by_device: [("eth1".to_owned(), 2)].into_iter().collect(),
    };
    let live = def.to_live_xml(&connections);
    assert!(
        live.starts_with("<network connections='2' ipv6='yes'>\n"),
        "{live}"
    );
    assert!(
        live.contains("    <interface dev='eth0'/>\n    <interface dev='eth1' connections='2'/>\n"),
        "{live}"
    );
    // The counters are read back as libvirt reads them: not at all.
    assert_eq!(NetworkDef::from_xml(&live).expect("reparse"), def);
    assert_eq!(def.to_live_xml(&Connections::default()), def.to_xml());
}

#[test]
fn metadata_is_kept_as_libvirt_copies_it() {
    let def = parse(
        "<network xmlns:app2='http://example.org/app2/' xmlns:app3='http://example.org/app1/'>
  <name>meta</name>
  <uuid>3f0d1d0a-3b3c-4f6f-9a53-0c1c2b4f7a10</uuid>
  <description>with metadata</description>
  <metadata>
    <!-- dropped: not an element -->
    <app1:foo xmlns:app1='http://example.org/app1/' a='1'>fooish<app1:b/></app1:foo>
    <app2:bar app2:x='y &amp; z' app3:y='declared on the copy'>
      <app2:baz>text</app2:baz>
    </app2:bar>
  </metadata>
</network>",
    );
    let expected = "  <metadata xmlns:app2=\"http://example.org/app2/\" xmlns:app3=\"http://example.org/app1/\">
    <app1:foo xmlns:app1=\"http://example.org/app1/\" a=\"1\">fooish<app1:b/></app1:foo>
    <app2:bar app2:x=\"y &amp; z\" app3:y=\"declared on the copy\">
      <app2:baz>text</app2:baz>
    </app2:bar>
  </metadata>
";
    let xml = def.to_xml();
    assert!(
        xml.contains(&format!(
            "  <description>with metadata</description>\n{expected}  <bridge"
        )),
        "{xml}"
    );
    // Written once, it reads back as itself.
    assert_eq!(NetworkDef::from_xml(&xml).unwrap(), def);
    assert_eq!(NetworkDef::from_xml(&xml).unwrap().to_xml(), xml);

    // A namespace whose URI holds markup characters reads back as itself (the daemon
    // would otherwise not load the file it wrote).
    for (uri, written) in [
        ("urn:a&amp;b&lt;c", "\"urn:a&#38;b&lt;c\""),
        ("urn:a&#9;b&#10;c&#13;d", "\"urn:a&#9;b&#10;c&#13;d\""),
        ("urn:&quot;a&apos;", "\"urn:&quot;a'\""),
    ] {
        let odd = parse(&format!(
            "<network xmlns:a='{uri}'><name>x</name><metadata><a:m/></metadata></network>"
        ));
        let xml = odd.to_xml();
        assert!(xml.contains(&format!("xmlns:a={written}")), "{xml}");
        assert_eq!(NetworkDef::from_xml(&xml).unwrap(), odd, "{uri}");
        assert_eq!(NetworkDef::from_stored_xml(&xml).unwrap(), odd, "{uri}");
    }

    let empty = parse("<network><name>x</name><metadata>\n  </metadata></network>");
    assert_eq!(empty.metadata.as_deref(), Some("<metadata/>"));

    // Attribute values write non-ASCII as references.
    let first =
        parse("<network><name>x</name><metadata><a:m xmlns:a='urn:a' v='é'/></metadata></network>");
    assert_eq!(
        first.metadata.as_deref(),
        Some("<metadata>\n    <a:m xmlns:a=\"urn:a\" v=\"&#xE9;\"/>\n  </metadata>")
    );
}

/// What libvirt would drop from `<metadata>` without a word is refused, named.
#[test]
fn metadata_libvirt_would_drop_is_refused() {
    for (metadata, message) in [
        (
            "<metadata><a:m xmlns:a='urn:a'/></metadata><metadata/>",
            "duplicate element <metadata> in network 'x' (line 1)",
        ),
        (
            "<metadata>only text</metadata>",
            "text in the <metadata> of network 'x': only elements in a namespace of their own can be kept there",
        ),
        (
            "<metadata><plain/></metadata>",
            "element <plain> in the <metadata> of network 'x' has no namespace: only elements in a namespace of their own can be kept there",
        ),
        (
            "<metadata><a:m xmlns:a='urn:a'/><b:m xmlns:b='urn:a'/></metadata>",
            "element <b:m> in the <metadata> of network 'x' is a second one in namespace 'urn:a': only one element per namespace can be kept there",
        ),
    ] {
        let xml = format!("<network><name>x</name>{metadata}</network>");
        let error = NetworkDef::from_xml(&xml).expect_err(&xml);
        assert_eq!(error.to_string(), message, "{xml}");
        // A file on disk written so by hand loads as libvirt loads it, without them.
        let loaded = NetworkDef::from_stored_xml(&xml).expect(&xml);
        assert!(
            matches!(
                loaded.metadata.as_deref(),
                Some("<metadata/>")
                    | Some("<metadata>\n    <a:m xmlns:a=\"urn:a\"/>\n  </metadata>")
            ),
            "{:?}",
            loaded.metadata
        );
    }
}

#[test]
fn mac_table_manager_is_read_and_written_where_libvirt_takes_it() {
    let def =
        parse("<network><name>m</name><bridge name='virbr7' macTableManager='libvirt'/></network>");
    assert_eq!(def.bridge.mac_table_manager, Some(MacTableManager::Libvirt));
    assert!(
        def.to_xml()
            .contains("<bridge name='virbr7' stp='on' delay='0' macTableManager='libvirt'/>"),
        "{}",
        def.to_xml()
    );
    assert_round_trip(&def);
    // Said explicitly, the kernel's is written back too, as libvirt does.
    let kernel =
        parse("<network><name>m</name><bridge name='virbr7' macTableManager='kernel'/></network>");
    assert!(kernel.to_xml().contains(" macTableManager='kernel'/>"));
    // A host bridge's taps can be pinned too; a macvtap pool in bridge mode ignores it.
    let host = parse(
        "<network><name>m</name><forward mode='bridge'/>\
         <bridge name='br0' macTableManager='libvirt'/></network>",
    );
    assert!(
        host.to_xml()
            .contains("<bridge name='br0' macTableManager='libvirt'/>")
    );
    assert_round_trip(&host);
    let pool = parse(
        "<network><name>m</name><forward mode='bridge'><interface dev='eth0'/></forward>\
         <bridge macTableManager='libvirt'/></network>",
    );
    assert_eq!(pool.macvtap_mode(), Some(MacvtapMode::Bridge));
    assert_round_trip(&pool);
    // Empty reads as none, as libvirt reads it.
    let empty = parse("<network><name>m</name><bridge macTableManager=''/></network>");
    assert_eq!(empty.bridge.mac_table_manager, None);
    assert_eq!(
        parse_err("<network><name>m</name><bridge macTableManager='default'/></network>"),
        "Invalid macTableManager setting 'default' in network 'm'"
    );
    // libvirt names the bridge name first.
    assert_eq!(
        parse_err(
            "<network><name>m</name><forward mode='private'><interface dev='eth0'/></forward>\
             <bridge name='br0' macTableManager='libvirt'/></network>"
        ),
        "bridge name not allowed in private mode (network 'm')"
    );
    assert_eq!(
        parse_err(
            "<network><name>m</name><forward mode='vepa'><interface dev='eth0'/></forward>\
             <bridge macTableManager='libvirt'/></network>"
        ),
        "bridge macTableManager setting not allowed in vepa mode (network 'm')"
    );
}

/// A `<host>` at the subnet's network or broadcast address is refused when given, but a
/// stored definition holding one (written before the check) still loads.
#[test]
fn dhcp_hosts_at_the_network_or_broadcast_address_are_refused_when_given() {
    for (ip, which) in [("10.90.0.255", "broadcast"), ("10.90.0.0", "network")] {
        let def = NetworkDef::from_xml(&format!(
            "<network><name>x</name><ip address='10.90.0.1' prefix='24'><dhcp>\
             <host mac='52:54:00:00:00:a7' ip='{ip}'/></dhcp></ip></network>"
        ))
        .expect("loads");
        let err = def.check_dhcp_hosts_usable().unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "static host address {ip} in network 'x' is the {which} address of 10.90.0.0/24"
            )
        );
    }
}

/// terraform-provider-libvirt's libvirtxml writes this into every network it defines.
const TERRAFORM_EMPTY_OPTIONS_XML: &str = r#"<network>
  <name>tf</name>
  <bridge name="virbr9"/>
  <options xmlns="http://libvirt.org/schemas/network/dnsmasq/1.0"></options>
  <ip address="10.1.0.1" netmask="255.255.255.0"/>
</network>"#;

#[test]
fn empty_dnsmasq_options_are_accepted_and_dropped_as_libvirt_does() {
    let def = parse(TERRAFORM_EMPTY_OPTIONS_XML);
    let without = parse(&TERRAFORM_EMPTY_OPTIONS_XML.replace(
        "  <options xmlns=\"http://libvirt.org/schemas/network/dnsmasq/1.0\"></options>\n",
        "",
    ));
    assert_eq!(def, without);
    // virsh 9 prints neither the element nor a namespace declaration for it.
    assert!(!def.to_xml().contains("dnsmasq"), "{}", def.to_xml());
    let prefixed = parse(
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <name>tf</name><dnsmasq:options/></network>",
    );
    assert!(
        !prefixed.to_xml().contains("dnsmasq"),
        "{}",
        prefixed.to_xml()
    );
    // Any prefix bound to the namespace, on the element itself or on <network>.
    parse(
        "<network><name>tf</name>\
         <d:options xmlns:d='http://libvirt.org/schemas/network/dnsmasq/1.0'/></network>",
    );
}

#[test]
fn options_outside_the_dnsmasq_namespace_are_refused() {
    assert_eq!(
        parse_err("<network><name>x</name><options/></network>"),
        "unsupported element <options> in network 'x' (line 1)"
    );
    assert_eq!(
        parse_err("<network xmlns:d='urn:other'><name>x</name><d:options/></network>"),
        "unsupported element <d:options> in network 'x' (line 1)"
    );
    assert_eq!(
        parse_err(
            "<network><name>x</name>\
             <options xmlns='http://libvirt.org/schemas/network/dnsmasq/1.0' a='1'/></network>"
        ),
        "unsupported attribute 'a' on <options> in network 'x' (line 1)"
    );
}

/// OpenShift's libvirt IPI network, trimmed: wildcard DNS for its ingress.
const OPENSHIFT_XML: &str = r#"<network xmlns:dnsmasq="http://libvirt.org/schemas/network/dnsmasq/1.0">
  <name>ocp</name>
  <forward mode="nat"/>
  <bridge name="tt0"/>
  <domain name="ocp.example.test" localOnly="yes"/>
  <ip address="192.168.126.1" prefix="24"/>
  <dnsmasq:options>
    <dnsmasq:option value="address=/.apps.ocp.example.test/192.168.126.51"/>
    <dnsmasq:option value="cache-size=0"/>
  </dnsmasq:options>
</network>"#;

#[test]
fn dnsmasq_options_are_kept_and_written_as_virsh_9_writes_them() {
    let mut def = parse(OPENSHIFT_XML);
    assert_eq!(
        def.dnsmasq_options
            .iter()
            .map(|option| (option.value.as_str(), option.directive.clone()))
            .collect::<Vec<_>>(),
        [
            (
                "address=/.apps.ocp.example.test/192.168.126.51",
                Directive::Address(AddressRule {
                    domains: vec!["apps.ocp.example.test".into()],
                    address: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 126, 51))),
                })
            ),
            ("cache-size=0", Directive::CacheSize(0)),
        ]
    );
    assert_round_trip(&def);
    // What virsh 9 printed (net-dumpxml, and the file it keeps) for a network defined
    // with options: the declaration right after the element name, the options after
    // everything else, single-quoted.
    let virsh = "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0' ipv6='yes' trustGuestRxFilters='no'>
  <name>o</name>
  <uuid>e93d0bbe-1313-468f-b6a3-8fb3b4f8d201</uuid>
  <bridge name='vbro' stp='on' delay='0'/>
  <mac address='52:54:00:48:d4:d0'/>
  <ip address='10.3.0.1' netmask='255.255.255.0'>
  </ip>
  <dnsmasq:options>
    <dnsmasq:option value='cache-size=0'/>
  </dnsmasq:options>
</network>
";
    assert_eq!(parse(virsh).to_xml(), virsh);
    def = parse(
        "<network ipv6='yes' trustGuestRxFilters='no'><name>o</name>\
         <uuid>e93d0bbe-1313-468f-b6a3-8fb3b4f8d201</uuid><bridge name='vbro'/>\
         <d:options xmlns:d='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <d:option value='cache-size=0'/></d:options>\
         <mac address='52:54:00:48:d4:d0'/><ip address='10.3.0.1' netmask='255.255.255.0'/>\
         </network>",
    );
    assert_eq!(def.to_xml(), virsh);
    assert_round_trip(&def);
}

#[test]
fn dnsmasq_options_of_every_options_element_are_kept_in_order_whatever_the_prefix() {
    let def = parse(
        "<network><name>p</name>\
         <foo:options xmlns:foo='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <foo:option value='cache-size=0'/></foo:options>\
         <options xmlns='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <option value=\"address=/a.test/b.test/\"/><option value='  '/></options></network>",
    );
    let values: Vec<_> = def
        .dnsmasq_options
        .iter()
        .map(|o| o.value.as_str())
        .collect();
    assert_eq!(values, ["cache-size=0", "address=/a.test/b.test/", "  "]);
    assert_eq!(
        def.dnsmasq_options[1].directive,
        Directive::Address(AddressRule {
            domains: vec!["a.test".into(), "b.test".into()],
            address: None,
        })
    );
    assert_eq!(def.dnsmasq_options[2].directive, Directive::Nothing);
    assert_round_trip(&def);
}

/// The debugging lines libvirt users copy from dnsmasq's manual: kvnetd carries them
/// out, and they come back as written.
#[test]
fn log_queries_and_log_dhcp_are_accepted_and_kept_as_written() {
    let def = parse(
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
         <name>n</name><uuid>e93d0bbe-1313-468f-b6a3-8fb3b4f8d201</uuid>\
         <dnsmasq:options><dnsmasq:option value='log-queries'/>\
         <dnsmasq:option value=' log-dhcp '/><dnsmasq:option value='log-queries=extra'/>\
         <dnsmasq:option value='log-queries=proto'/></dnsmasq:options></network>",
    );
    let kept: Vec<_> = def
        .dnsmasq_options
        .iter()
        .map(|option| (option.value.as_str(), option.directive.clone()))
        .collect();
    assert_eq!(
        kept,
        [
            ("log-queries", Directive::LogQueries(QueryLogging::Plain)),
            (" log-dhcp ", Directive::LogDhcp),
            (
                "log-queries=extra",
                Directive::LogQueries(QueryLogging::Extra)
            ),
            // dnsmasq 2.90 logs as without a value.
            (
                "log-queries=proto",
                Directive::LogQueries(QueryLogging::Plain)
            ),
        ]
    );
    assert!(def.to_xml().contains(
        "  <dnsmasq:options>
    <dnsmasq:option value='log-queries'/>
    <dnsmasq:option value=' log-dhcp '/>
    <dnsmasq:option value='log-queries=extra'/>
    <dnsmasq:option value='log-queries=proto'/>
  </dnsmasq:options>
"
    ));
    assert_round_trip(&def);
    assert_eq!(
        crate::xml::dnsmasq::log_queries(&def.dnsmasq_options),
        Some(QueryLogging::Extra)
    );
    assert!(crate::xml::dnsmasq::log_dhcp(&def.dnsmasq_options));
    let none = parse("<network><name>n</name></network>");
    assert_eq!(
        crate::xml::dnsmasq::log_queries(&none.dnsmasq_options),
        None
    );
    assert!(!crate::xml::dnsmasq::log_dhcp(&none.dnsmasq_options));
    // dnsmasq refuses to start with it.
    assert_eq!(
        parse_err(
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
             <name>n</name><dnsmasq:options><dnsmasq:option value='log-dhcp=yes'/>\
             </dnsmasq:options></network>"
        ),
        "invalid dnsmasq option 'log-dhcp=yes' in network 'n': log-dhcp takes no value"
    );
}

#[test]
fn dnsmasq_options_kvnet_does_not_carry_out_are_refused_by_name() {
    let network = |options: &str| {
        format!(
            "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
             <name>n</name><dnsmasq:options>{options}</dnsmasq:options></network>"
        )
    };
    let refused = |value: &str| {
        let err = NetworkDef::from_xml(&network(&format!("<dnsmasq:option value='{value}'/>")))
            .unwrap_err();
        assert!(
            matches!(err, Error::Invalid(Class::ConfigUnsupported, _)),
            "{value}: {err:?}"
        );
        err.to_string()
    };
    assert_eq!(
        refused("dhcp-script=/x"),
        "dnsmasq option 'dhcp-script=/x' is not supported by kvnet (network 'n')"
    );
    for value in [
        "server=/corp/10.0.0.1",
        "address=/#/10.0.0.1",
        "address=/a.test/#",
        "address",
        "no-resolv",
        "dhcp-option=tag:pxe,option:ntp-server,10.0.0.1",
        "dhcp-option=option:netmask,255.255.255.0",
    ] {
        refused(value);
    }
    for (value, why) in [
        ("cache-size=many", "the cache size must be a number"),
        (
            "address=/a.test/10.0.0.300",
            "'10.0.0.300' is not an IP address",
        ),
        (
            "address=a.test/10.0.0.1",
            "it must look like /DOMAIN/IP or /DOMAIN/",
        ),
        ("address=//10.0.0.1", "'' is not a domain name"),
        (
            "address=/a..test/10.0.0.1",
            "'a..test' is not a domain name",
        ),
    ] {
        assert_eq!(
            parse_err(&network(&format!("<dnsmasq:option value='{value}'/>"))),
            format!("invalid dnsmasq option '{value}' in network 'n': {why}")
        );
    }
    // libvirt's own message for an option without a value.
    assert_eq!(
        parse_err(&network("<dnsmasq:option/>")),
        "No dnsmasq options value specified"
    );
    // libvirt ignores these; kvnet drops nothing it was given without a word.
    assert_eq!(
        parse_err(&network("<dnsmasq:other value='x'/>")),
        "unsupported element <dnsmasq:other> inside <dnsmasq:options> in network 'n' (line 1)"
    );
    assert_eq!(
        parse_err(&network("<option value='cache-size=0'/>")),
        "unsupported element <option> inside <dnsmasq:options> in network 'n' (line 1)"
    );
    assert_eq!(
        parse_err(&network("<dnsmasq:option value='cache-size=0' x='1'/>")),
        "unsupported attribute 'x' on <dnsmasq:option> in network 'n' (line 1)"
    );
}

#[test]
fn dhcp_options_are_kept_as_written() {
    let xml = "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>
  <name>pxe</name>
  <bridge stp='on' delay='0'/>
  <ip address='192.168.122.1' prefix='24'>
  </ip>
  <dnsmasq:options>
    <dnsmasq:option value='dhcp-option=option:ntp-server,192.168.122.1'/>
    <dnsmasq:option value='dhcp-option = 66, 192.168.122.5'/>
    <dnsmasq:option value='dhcp-option=option:bootfile-name,&quot;ipxe, snp.efi&quot;'/>
    <dnsmasq:option value='dhcp-option-force=121,10.0.0.0/8,192.168.122.2'/>
    <dnsmasq:option value='dhcp-option=option:router'/>
  </dnsmasq:options>
</network>
";
    let def = parse(xml);
    assert_eq!(def.to_xml(), xml);
    assert_round_trip(&def);
    let rules: Vec<_> = def
        .dnsmasq_options
        .iter()
        .map(|option| match &option.directive {
            Directive::DhcpOption(rule) => (rule.code, rule.force),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        rules,
        [
            (42, false),
            (66, false),
            (67, false),
            (121, true),
            (3, false)
        ]
    );
}
