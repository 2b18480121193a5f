//! Tests for libvirt network port XML parsing, validation, defaults and formatting.

use uuid::Uuid;

use super::*;

/// The formatnetworkport.rst example, without its `<group>` (see
/// `a_group_is_kept_between_owner_and_mac`): owner uuid before name, and a MAC with a
/// one-digit group.
const DOCS_XML: &str = "<networkport>
  <uuid>7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54</uuid>
  <owner>
    <uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid>
    <name>myguest</name>
  </owner>
  <mac address='52:54:0:7b:35:93'/>
</networkport>
";

/// What libvirt's `virNetworkPortDefFormat` writes for [`DOCS_XML`] once the
/// network has plugged it.
const PLUGGED_XML: &str = "<networkport>
  <uuid>7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54</uuid>
  <owner>
    <name>myguest</name>
    <uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid>
  </owner>
  <mac address='52:54:00:7b:35:93'/>
  <plug type='network' bridge='virbr0'/>
</networkport>
";

const PORT_UUID: &str = "7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54";
const OWNER_UUID: &str = "06578fc1-c686-46fa-bc2c-220893b466a6";

fn sample() -> PortDef {
    PortDef {
        uuid: Some(Uuid::parse_str(PORT_UUID).unwrap()),
        owner_name: "myguest".to_string(),
        owner_uuid: Uuid::parse_str(OWNER_UUID).unwrap(),
        group: None,
        mac: MacAddr([0x52, 0x54, 0x00, 0x7b, 0x35, 0x93]),
        isolated: None,
        bandwidth: None,
        trust_guest_rx_filters: None,
        plug: Some(PortPlug::Network {
            bridge: "virbr0".to_string(),
            mac_table_manager: None,
        }),
    }
}

fn parse(xml: &str) -> PortDef {
    match PortDef::from_xml(xml) {
        Ok(def) => def,
        Err(e) => panic!("{e}\n{xml}"),
    }
}

fn parse_err(xml: &str) -> String {
    match PortDef::from_xml(xml) {
        Ok(def) => panic!("expected an error, got {def:?}"),
        Err(e) => e.to_string(),
    }
}

/// A port document with `body` between the owner and `</networkport>`.
fn with(body: &str) -> String {
    format!(
        "<networkport>\n  <uuid>{PORT_UUID}</uuid>\n  <owner><name>g</name><uuid>{OWNER_UUID}</uuid></owner>\n{body}\n</networkport>"
    )
}

fn with_mac(mac: &str) -> String {
    with(&format!("<mac address='{mac}'/>"))
}

fn assert_round_trip(def: &PortDef) {
    let xml = def.to_xml();
    let back = parse(&xml);
    assert_eq!(&back, def, "{xml}");
    assert_eq!(back.to_xml(), xml);
}

#[test]
fn docs_example_parses_and_formats_like_libvirt() {
    let def = parse(DOCS_XML);
    assert_eq!(def.uuid, Some(Uuid::parse_str(PORT_UUID).unwrap()));
    assert_eq!(def.owner_name, "myguest");
    assert_eq!(def.owner_uuid, Uuid::parse_str(OWNER_UUID).unwrap());
    assert_eq!(def.mac.to_string(), "52:54:00:7b:35:93");
    assert_eq!(def.plug, None);
    // libvirt's order: owner name before uuid, no <plug> until one is allocated.
    let expected = PLUGGED_XML.replace("  <plug type='network' bridge='virbr0'/>\n", "");
    assert_eq!(def.to_xml(), expected);
    assert_eq!(sample().to_xml(), PLUGGED_XML);
}

#[test]
fn round_trips() {
    let mut def = sample();
    assert_round_trip(&def);
    def.plug = Some(PortPlug::Bridge {
        bridge: "br0".to_string(),
        mac_table_manager: None,
    });
    assert_round_trip(&def);
    assert!(def.to_xml().contains("<plug type='bridge' bridge='br0'/>"));
    def.plug = Some(PortPlug::Network {
        bridge: "virbr0".to_string(),
        mac_table_manager: Some(MacTableManager::Libvirt),
    });
    assert_round_trip(&def);
    assert!(
        def.to_xml()
            .contains("<plug type='network' bridge='virbr0' macTableManager='libvirt'/>")
    );
    let bad = def
        .to_xml()
        .replace("macTableManager='libvirt'", "macTableManager='default'");
    assert_eq!(
        PortDef::from_xml(&bad).unwrap_err().to_string(),
        "Invalid macTableManager setting 'default' in network port"
    );
    def.plug = None;
    assert_round_trip(&def);
    for isolated in [true, false] {
        def.isolated = Some(isolated);
        assert_round_trip(&def);
    }
    assert!(
        def.to_xml()
            .contains("  <mac address='52:54:00:7b:35:93'/>\n  <port isolated='no'/>\n")
    );
    def.bandwidth = Some(Bandwidth {
        inbound: Some(Rate {
            average: 1000,
            peak: Some(5000),
            burst: Some(1024),
        }),
        outbound: None,
    });
    assert_round_trip(&def);
    // libvirt's place for it: after the MAC, before <port>.
    assert!(def.to_xml().contains(
        "  <mac address='52:54:00:7b:35:93'/>\n  <bandwidth>\n    <inbound average='1000' peak='5000' burst='1024'/>\n  </bandwidth>\n  <port isolated='no'/>\n"
    ));
    def.bandwidth = None;
    def.isolated = None;
    def.uuid = None;
    assert_round_trip(&def);
    // Characters XML must escape, and whitespace kept as written.
    def.owner_name = " <a&b> 'q' \"d\" ünï ".to_string();
    assert_round_trip(&def);
    assert!(
        def.to_xml()
            .contains("<name> &lt;a&amp;b&gt; &apos;q&apos; &quot;d&quot; ünï </name>"),
        "{}",
        def.to_xml()
    );
    assert_eq!(parse(PLUGGED_XML), sample());
}

#[test]
fn missing_uuid_is_generated_by_fill_defaults() {
    let xml = "<networkport><owner><name>g</name><uuid>06578fc1c68646fabc2c220893b466a6</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>";
    let mut def = parse(xml);
    assert_eq!(def.uuid, None);
    assert!(!def.to_xml().contains("<networkport>\n  <uuid>"));
    def.fill_defaults();
    let generated = def.uuid.unwrap();
    assert_eq!(generated.get_version_num(), 4);
    // An existing uuid is kept.
    def.fill_defaults();
    assert_eq!(def.uuid, Some(generated));
    assert_eq!(parse(&def.to_xml()), def);
    // libvirt reads an empty <uuid/> as none.
    let empty = xml.replace("<owner>", "<uuid/><owner>");
    assert_eq!(parse(&empty).uuid, None);
    assert_ne!(Some(generated), {
        let mut other = parse(xml);
        other.fill_defaults();
        other.uuid
    });
}

#[test]
fn missing_required_fields_use_libvirts_messages() {
    let cases: &[(&str, &str)] = &[
        (
            "<networkport><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner name",
        ),
        (
            "<networkport><owner><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner name",
        ),
        (
            "<networkport><owner><name/><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner name",
        ),
        (
            "<networkport><owner><name>g</name></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner UUID",
        ),
        (
            "<networkport><owner><name>g</name><uuid> </uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner UUID",
        ),
        (
            "<networkport><owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner></networkport>",
            "network port has no mac",
        ),
        (
            "<networkport><owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac/></networkport>",
            "network port has no mac",
        ),
        (
            "<networkport><owner><name>g</name><uuid>nope</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "Unable to parse UUID 'nope'",
        ),
        (
            "<networkport><uuid>{7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54}</uuid><owner><name>g</name><uuid>06578fc1-c686-46fa-bc2c-220893b466a6</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "Unable to parse UUID '{7ae63b5f-fe96-4af0-a7c3-da04ba1b3f54}'",
        ),
        (
            &with("<mac address='52:54:00:00:00:01'/><plug type='network'/>"),
            "Missing network port bridge name",
        ),
        (
            &with("<mac address='52:54:00:00:00:01'/><plug bridge='virbr0'/>"),
            "Missing required attribute 'type' in element 'plug' (line 4)",
        ),
        (
            &with("<mac address='52:54:00:00:00:01'/><plug type='ovs' bridge='virbr0'/>"),
            "Invalid value for attribute 'type' in element 'plug': 'ovs'.",
        ),
        (
            &with("<mac address='52:54:00:00:00:01'/><port isolated='on'/>"),
            "Invalid value for attribute 'isolated' in element 'port': 'on'.",
        ),
        (
            "<network><name>x</name></network>",
            "expecting root element of 'networkport', not 'network'",
        ),
    ];
    for (xml, expected) in cases {
        assert_eq!(parse_err(xml), *expected, "{xml}");
    }
}

#[test]
fn unimplemented_elements_are_refused_by_name() {
    let mac = "<mac address='52:54:00:00:00:01'/>";
    let cases: &[(String, &str)] = &[
        (
            with(&format!("<group>web<front/></group>{mac}")),
            "unsupported element <front> inside <group> in network port (line 4)",
        ),
        (
            with(&format!(
                "{mac}\n<bandwidth><inbound average='1000' floor='200'/></bandwidth>"
            )),
            "unsupported attribute 'floor' on <inbound> in network port (line 5)",
        ),
        (
            with(&format!("{mac}<bandwidth classID='3'/>")),
            "unsupported attribute 'classID' on <bandwidth> in network port (line 4)",
        ),
        (
            with(&format!("{mac}<vlan><tag id='42'/></vlan>")),
            "unsupported element <vlan> in network port (line 4)",
        ),
        (
            with(&format!("{mac}<virtualport type='openvswitch'/>")),
            "unsupported element <virtualport> in network port (line 4)",
        ),
        (
            with(&format!("{mac}<rxfilters trustGuest='yes' mode='x'/>")),
            "unsupported attribute 'mode' on <rxfilters> in network port (line 4)",
        ),
        (
            with(&format!("{mac}<port isolated='yes'><vlan/></port>")),
            "unsupported element <vlan> inside <port> in network port (line 4)",
        ),
        (
            with(&format!("{mac}<bogus/>")),
            "unsupported element <bogus> in network port (line 4)",
        ),
        (
            with(&format!(
                "{mac}<plug type='hostdev-pci' managed='yes'><address domain='0x0001' bus='0x02' slot='0x03' function='0x4'/></plug>"
            )),
            "unsupported <plug type='hostdev-pci'> (kvnet attaches ports to bridges and macvtaps only) in network port (line 4)",
        ),
        (
            with(&format!(
                "{mac}<plug type='bridge' bridge='br0'><x/></plug>"
            )),
            "unsupported element <x> inside <plug> in network port (line 4)",
        ),
        (
            with("<mac address='52:54:00:00:00:01' type='static'/>"),
            "unsupported attribute 'type' on <mac> in network port (line 4)",
        ),
        (
            "<networkport connections='1'/>".to_string(),
            "unsupported attribute 'connections' on <networkport> in network port (line 1)",
        ),
        (
            format!(
                "<networkport><owner><name>g</name><uuid>{OWNER_UUID}</uuid><title>t</title></owner>{mac}</networkport>"
            ),
            "unsupported element <title> inside <owner> in network port (line 1)",
        ),
        (
            format!(
                "<networkport><owner id='1'><name>g</name><uuid>{OWNER_UUID}</uuid></owner>{mac}</networkport>"
            ),
            "unsupported attribute 'id' on <owner> in network port (line 1)",
        ),
        (
            format!(
                "<networkport><owner><name lang='en'>g</name><uuid>{OWNER_UUID}</uuid></owner>{mac}</networkport>"
            ),
            "unsupported attribute 'lang' on <name> in network port (line 1)",
        ),
    ];
    for (xml, expected) in cases {
        let err = PortDef::from_xml(xml).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedPort { .. }),
            "{err:?} for {xml}"
        );
        assert_eq!(err.to_string(), *expected, "{xml}");
    }
}

/// libvirt's domain driver sends `<rxfilters trustGuest=>` for an interface with
/// `trustGuestRxFilters`; it is kept, in libvirt's place (after `<port>`, before `<plug>`).
#[test]
fn rxfilters_are_kept_in_libvirts_place() {
    let mut def = sample();
    def.isolated = Some(true);
    def.trust_guest_rx_filters = Some(false);
    let xml = def.to_xml();
    assert!(
        xml.contains(
            "  <port isolated='yes'/>\n  <rxfilters trustGuest='no'/>\n  <plug type='network'"
        ),
        "{xml}"
    );
    assert_eq!(PortDef::from_xml(&xml).expect("reads back"), def);
    let maybe = xml.replace("trustGuest='no'", "trustGuest='maybe'");
    assert_eq!(
        PortDef::from_xml(&maybe).expect_err("refused").to_string(),
        "Invalid value for attribute 'trustGuest' in element 'rxfilters': 'maybe'."
    );
}

#[test]
fn duplicates_and_stray_text_are_refused() {
    let mac = "<mac address='52:54:00:00:00:01'/>";
    assert_eq!(
        parse_err(&with(&format!("{mac}\n{mac}"))),
        "duplicate element <mac> in network port (line 5)"
    );
    assert_eq!(
        parse_err(&format!(
            "<networkport><owner><name>a</name><name>b</name><uuid>{OWNER_UUID}</uuid></owner>{mac}</networkport>"
        )),
        "duplicate element <name> in network port (line 1)"
    );
    assert_eq!(
        parse_err(&with(&format!("{mac}hello"))),
        "unexpected text 'hello' inside <networkport> in network port (line 1)"
    );
}

#[test]
fn plug_type_none_is_no_plug() {
    let def = parse(&with(
        "<mac address='52:54:00:00:00:01'/><plug type='none'/>",
    ));
    assert_eq!(def.plug, None);
    assert!(
        parse_err(&with(
            "<mac address='52:54:00:00:00:01'/><plug type='none' bridge='virbr0'/>"
        ))
        .contains("unsupported attribute 'bridge' on <plug>")
    );
}

#[test]
fn bad_macs_are_refused() {
    let cases: &[(&str, &str)] = &[
        ("52:54:00:7b:35", "Unable to parse MAC '52:54:00:7b:35'"),
        (
            "52:54:00:7b:35:93:01",
            "Unable to parse MAC '52:54:00:7b:35:93:01'",
        ),
        (
            "52-54-00-7b-35-93",
            "Unable to parse MAC '52-54-00-7b-35-93'",
        ),
        (
            "52:54:00:7b:35:zz",
            "Unable to parse MAC '52:54:00:7b:35:zz'",
        ),
        (
            "52:54:00:7b:35:193",
            "Unable to parse MAC '52:54:00:7b:35:193'",
        ),
        (
            "01:00:5e:00:00:01",
            "expected unicast mac address, found multicast '01:00:5e:00:00:01'",
        ),
        (
            "FF:FF:FF:FF:FF:FF",
            "expected unicast mac address, found multicast 'ff:ff:ff:ff:ff:ff'",
        ),
        (
            "0:0:0:0:0:0",
            "Invalid MAC address '00:00:00:00:00:00' for network port: the all-zero address is not a valid source",
        ),
    ];
    for (mac, expected) in cases {
        assert_eq!(parse_err(&with_mac(mac)), *expected, "{mac}");
    }
    // Upper case and one-digit groups are fine, and print canonically.
    let def = parse(&with_mac("52:54:0:7B:3:A"));
    assert_eq!(def.mac.to_string(), "52:54:00:7b:03:0a");
    assert!(def.to_xml().contains("<mac address='52:54:00:7b:03:0a'/>"));
    // A locally administered unicast address whose first byte is not FE is fine.
    assert!(PortDef::from_xml(&with_mac("fa:16:3e:00:00:01")).is_ok());
    let mut def = sample();
    def.mac.0[0] = 0xFE;
    assert!(def.validate_for_tap().is_err());
    // Refused only where a tap is made: a macvtap takes it.
    assert!(def.validate().is_ok());
    def.mac.0[0] = 0xFC;
    assert!(def.validate_for_tap().is_ok());
}

#[test]
fn owner_name_rules() {
    let name = |name: &str| {
        format!(
            "<networkport><owner><name>{name}</name><uuid>{OWNER_UUID}</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>"
        )
    };
    // Domain names may hold anything printable, '/' included.
    assert_eq!(parse(&name("web/front 1 ü")).owner_name, "web/front 1 ü");
    assert_eq!(
        parse_err(&name("a&#10;b")),
        "network port owner name \"a\\nb\" must not contain control characters"
    );
    assert_eq!(
        parse_err(&name("a&#9;b")),
        "network port owner name \"a\\tb\" must not contain control characters"
    );
    assert_eq!(
        parse_err(&name("a\u{85}b")),
        "network port owner name \"a\\u{85}b\" must not contain control characters"
    );
    // Raw control characters are not even XML.
    assert!(
        parse_err(&name("a\u{1}b")).starts_with("malformed network port XML at line 1, column ")
    );
    let longest = "x".repeat(PortDef::OWNER_NAME_MAX_BYTES);
    assert_eq!(parse(&name(&longest)).owner_name, longest);
    assert_eq!(
        parse_err(&name(&format!("{longest}x"))),
        "network port owner name is too long (252 bytes, limit 251)"
    );
}

#[test]
fn plug_bridge_must_be_an_interface_name() {
    for bridge in ["", "a/b", "has space", "0123456789abcdef", "..", "a:b"] {
        let err = parse_err(&with(&format!(
            "<mac address='52:54:00:00:00:01'/><plug type='bridge' bridge='{bridge}'/>"
        )));
        assert!(
            err.contains("bridge name"),
            "{bridge:?} accepted or wrong message: {err}"
        );
    }
    let def = parse(&with(
        "<mac address='52:54:00:00:00:01'/><plug type='bridge' bridge='0123456789abcde'/>",
    ));
    assert_eq!(
        def.plug.as_ref().and_then(PortPlug::bridge),
        Some("0123456789abcde")
    );
    assert_eq!(def.plug.as_ref().map(PortPlug::type_name), Some("bridge"));
}

#[test]
fn malformed_xml_reports_line_and_column() {
    let err = parse_err("<networkport>\n  <owner>\n    <name>g</nam>\n  </owner>\n</networkport>");
    assert!(
        err.starts_with("malformed network port XML at line 3, column "),
        "{err}"
    );
    let err = parse_err("<networkport>\n<owner>");
    assert!(err.contains("<owner> is not closed"), "{err}");
    assert_eq!(
        parse_err(""),
        "malformed network port XML at line 1, column 1: no root element"
    );
    assert!(
        parse_err("<!DOCTYPE networkport [<!ENTITY x 'y'>]><networkport/>")
            .contains("DOCTYPE is not allowed")
    );
}

#[test]
fn hostile_documents_get_errors() {
    let deep = format!(
        "<networkport>{}{}</networkport>",
        "<a>".repeat(10_000),
        "</a>".repeat(10_000)
    );
    assert!(parse_err(&deep).contains("elements nested too deeply"));
    // Many unknown siblings: refused at the first, by name.
    let wide = with(&"<bogus/>".repeat(100_000));
    assert_eq!(
        parse_err(&wide),
        "unsupported element <bogus> in network port (line 4)"
    );
    // A huge owner name is refused by length, not held or echoed back.
    let huge = format!(
        "<networkport><owner><name>{}</name><uuid>{OWNER_UUID}</uuid></owner><mac address='52:54:00:00:00:01'/></networkport>",
        "n".repeat(1 << 20)
    );
    let err = parse_err(&huge);
    assert!(err.contains("too long (1048576 bytes, limit 251)"), "{err}");
    assert!(err.len() < 200);
    // Truncated at every byte: an error each time, never a panic.
    let full = sample().to_xml();
    for end in 0..full.len() - 1 {
        assert!(PortDef::from_xml(&full[..end]).is_err(), "{}", &full[..end]);
    }
}

#[test]
fn comments_declaration_and_namespace_are_accepted() {
    let xml = format!(
        "<?xml version='1.0'?>\n<!-- header -->\n{}",
        PLUGGED_XML.replace(
            "<networkport>",
            "<networkport xmlns:kv='https://example.org/kv'>"
        )
    );
    assert_eq!(parse(&xml), sample());
}

#[test]
fn a_group_is_kept_between_owner_and_mac() {
    let mut def = sample();
    def.group = Some("web & front".to_string());
    assert_round_trip(&def);
    assert!(def.to_xml().contains(
        "  </owner>\n  <group>web &amp; front</group>\n  <mac address='52:54:00:7b:35:93'/>\n"
    ));
    let parsed = parse(&with(
        "<group>webfront</group><mac address='52:54:00:00:00:01'/>",
    ));
    assert_eq!(parsed.group.as_deref(), Some("webfront"));
    // libvirt reads an empty group as none: the port joins the default group.
    let empty = parse(&with("<group/><mac address='52:54:00:00:00:01'/>"));
    assert_eq!(empty.group, None);
    assert_eq!(
        parse_err(&with(
            "<group>a</group><group>b</group><mac address='52:54:00:00:00:01'/>"
        )),
        "duplicate element <group> in network port (line 4)"
    );
}

#[test]
fn a_direct_plug_round_trips_and_gets_libvirts_messages() {
    let mac = "<mac address='52:54:00:00:00:01'/>";
    let def = parse(&with(&format!(
        "{mac}<plug type='direct' dev='eth0' mode='private'/>"
    )));
    assert_eq!(
        def.plug,
        Some(PortPlug::Direct {
            dev: "eth0".into(),
            mode: MacvtapMode::Private
        })
    );
    assert_eq!(def.plug.as_ref().and_then(PortPlug::bridge), None);
    let xml = def.to_xml();
    assert!(
        xml.contains("  <plug type='direct' dev='eth0' mode='private'/>\n"),
        "{xml}"
    );
    assert_eq!(PortDef::from_xml(&xml).expect("reparse"), def);
    // libvirt's default mode is the first of its enum.
    let def = parse(&with(&format!("{mac}<plug type='direct' dev='eth0'/>")));
    assert_eq!(
        def.plug,
        Some(PortPlug::Direct {
            dev: "eth0".into(),
            mode: MacvtapMode::Vepa
        })
    );
    for (plug, expected) in [
        (
            "<plug type='direct' mode='vepa'/>",
            "Missing network port link device name",
        ),
        (
            "<plug type='direct' dev='eth0' mode='bogus'/>",
            "Invalid mode setting 'bogus' in network port",
        ),
        (
            "<plug type='direct' dev='a/b'/>",
            "invalid network port link device name \"a/b\"",
        ),
    ] {
        let err = PortDef::from_xml(&with(&format!("{mac}{plug}")))
            .expect_err(plug)
            .to_string();
        assert!(err.contains(expected), "{plug}: {err}");
    }
}
