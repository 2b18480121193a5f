//! `cargo fuzz run xml_roundtrip`: hostile XML through the network, port and net-update
//! parsers, and what kvnet writes back (`net-dumpxml`).
//!
//! The first byte picks the document: a `<network>` (0, 1 also through
//! `from_stored_xml`), a `<networkport>` (2), or a `net-update` element (3 and up: the
//! command and section come from that byte) applied to a fixed definition. The rest,
//! if UTF-8, is the document.
//!
//! Oracles besides "no panic": what is accepted is written so that it reads back as the
//! same definition (`from_xml(to_xml(d)) == d`, the README's promise for net-dumpxml), and
//! writing that again gives the same bytes; a definition accepted fresh is accepted as
//! stored too, and the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netd::xml::{NetworkDef, PortDef, Update, UpdateCommand, UpdateSection};

const BASE: &str = "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>\
<name>base</name><uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>\
<forward mode='nat'/><bridge name='kvbase0'/><domain name='lab.example'/>\
<dns><host ip='10.20.0.50'><hostname>db</hostname></host>\
<txt name='example' value='v'/><srv service='ldap' protocol='tcp'/></dns>\
<ip address='10.20.0.1' prefix='24'><dhcp><range start='10.20.0.100' end='10.20.0.199'/>\
<host mac='52:54:00:12:34:56' name='web1' ip='10.20.0.10'/></dhcp></ip>\
<ip family='ipv6' address='fd00:20::1' prefix='64'/>\
<portgroup name='pg' default='yes'/>\
<dnsmasq:options><dnsmasq:option value='dhcp-option=42,0.0.0.0'/></dnsmasq:options></network>";

/// Whether `def` has a `<bandwidth>` direction of `average='0'` (no limit): it is kept
/// as read but, as libvirt writes it, left out of what is written (an empty
/// `<bandwidth>` may stay), so such a definition reads back without it, and is then
/// written without the empty element. A known difference that changes nothing the
/// network does; only that the written XML is read back is checked.
fn has_unlimited_rate(def: &NetworkDef) -> bool {
    std::iter::once(&def.bandwidth)
        .chain(def.portgroups.iter().map(|group| &group.bandwidth))
        .flatten()
        .flat_map(|bandwidth| [&bandwidth.inbound, &bandwidth.outbound])
        .flatten()
        .any(|rate| rate.average == 0)
}

fn check_network(def: &NetworkDef, what: &str) {
    let written = def.to_xml();
    let again = NetworkDef::from_xml(&written)
        .unwrap_or_else(|e| panic!("{what}: written XML refused: {e}\n{written}"));
    if has_unlimited_rate(def) {
        return;
    }
    assert_eq!(
        &again, def,
        "{what}: written XML reads back otherwise\n{written}"
    );
    assert_eq!(
        again.to_xml(),
        written,
        "{what}: written twice, differently"
    );
    let stored = NetworkDef::from_stored_xml(&written)
        .unwrap_or_else(|e| panic!("{what}: written XML refused as stored: {e}\n{written}"));
    assert_eq!(
        &stored, def,
        "{what}: stored XML reads back otherwise\n{written}"
    );
}

fn section(byte: u8) -> UpdateSection {
    UpdateSection::ALL[usize::from(byte) % UpdateSection::ALL.len()]
}

fn command(byte: u8) -> UpdateCommand {
    use UpdateCommand::*;
    [Modify, Delete, AddFirst, AddLast][usize::from(byte) / UpdateSection::ALL.len() % 4]
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match mode {
        0 | 1 => {
            let fresh = NetworkDef::from_xml(text);
            if let Ok(def) = &fresh {
                check_network(def, "network");
                let stored = NetworkDef::from_stored_xml(text)
                    .unwrap_or_else(|e| panic!("accepted fresh, refused as stored: {e}"));
                assert_eq!(&stored, def, "read otherwise as stored");
            } else if mode == 1
                && let Ok(def) = NetworkDef::from_stored_xml(text)
            {
                // Taken from disk only: what kvnet writes for it must read back too.
                let written = def.to_xml();
                let again = NetworkDef::from_stored_xml(&written)
                    .unwrap_or_else(|e| panic!("stored: written XML refused: {e}\n{written}"));
                assert_eq!(
                    again, def,
                    "stored: written XML reads back otherwise\n{written}"
                );
            }
        }
        2 => {
            if let Ok(port) = PortDef::from_xml(text) {
                let written = port.to_xml();
                let again = PortDef::from_xml(&written)
                    .unwrap_or_else(|e| panic!("port: written XML refused: {e}\n{written}"));
                assert_eq!(
                    again, port,
                    "port: written XML reads back otherwise\n{written}"
                );
                assert_eq!(again.to_xml(), written, "port: written twice, differently");
            }
        }
        _ => {
            let base = NetworkDef::from_xml(BASE).expect("invariant: the base definition");
            let index = (mode & 0x80 != 0).then_some(usize::from(mode & 1));
            let update = Update {
                command: command(mode & 0x7f),
                section: section(mode & 0x7f),
                parent_index: index,
                xml: text,
            };
            if let Ok(updated) = base.updated(&update) {
                check_network(&updated, "updated");
            }
        }
    }
});
