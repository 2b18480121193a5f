//! The names a network answers for itself, stored as wire records ready to append to a
//! response, so answering copies bytes instead of building records.
//!
//! Every stored record's owner is a compression pointer to offset 12, where the
//! response's (single) question name starts; its TTL is 0, as dnsmasq serves local names.
//! Names are keyed by their wire form with ASCII letters lowercased (see [`wire_key`]),
//! so a query is looked up straight from its packet bytes.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::{DnsConfig, Error, HostsFile};

/// Pointer to the question name, the owner of every answer record.
const OWNER_POINTER: [u8; 2] = [0xc0, 0x0c];
/// TTL of local records: zero, so a renamed or moved guest is seen at once.
const LOCAL_TTL: u32 = 0;
/// Port of an `<srv>` without `port=`: dnsmasq's `srv-host` default, which libvirt
/// leaves it to.
const SRV_DEFAULT_PORT: u16 = 1;

/// The records of one name and type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RrSet {
    count: u16,
    wire: Vec<u8>,
    /// Hashes of the records, once there are [`INDEXED_FROM`]: a name a hosts file gives
    /// thousands of addresses is still built in linear time. Consulted as records are
    /// added, and when a later zone is built on this one (a `<host>` over the hosts file,
    /// the leases over both); answers never read it.
    index: Option<HashSet<u64>>,
}

/// How many records a set holds before it keeps an index of them.
const INDEXED_FROM: u16 = 16;

impl RrSet {
    /// Adds `record` (as [`wire_record`] makes it) unless the set holds it already, or
    /// is full.
    fn insert(&mut self, record: &[u8]) {
        if self.count == u16::MAX || self.contains(record) {
            return;
        }
        self.count += 1;
        self.wire.extend_from_slice(record);
        match &mut self.index {
            Some(index) => {
                index.insert(record_hash(record));
            }
            None if self.count >= INDEXED_FROM => {
                self.index = Some(self.records().map(record_hash).collect());
            }
            None => {}
        }
    }

    /// Whether `record` is in the set already. An indexed set answers by the hash alone:
    /// two of a name's records colliding in 64 bits, which would leave one out, is
    /// vanishingly unlikely, and checking the bytes would make every repeat cost a walk.
    fn contains(&self, record: &[u8]) -> bool {
        match &self.index {
            Some(index) => index.contains(&record_hash(record)),
            None => self.records().any(|held| held == record),
        }
    }

    /// The records, each as [`wire_record`] made it.
    fn records(&self) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let len = self.wire.get(at + 10..at + 12)?;
            let end = at + 12 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            let record = self.wire.get(at..end)?;
            at = end;
            Some(record)
        })
    }
}

fn record_hash(record: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    record.hash(&mut hasher);
    hasher.finish()
}

/// Names with their record sets, plus reverse (PTR) names.
#[derive(Clone, Debug, Default)]
pub struct Zone {
    /// Keyed by [`wire_key`].
    names: HashMap<Box<[u8]>, Vec<(RecordType, RrSet)>>,
    /// The [`wire_key`]s of every ancestor of `names` but the root: in a local domain
    /// they exist (empty non-terminals, RFC 8020) even where they own no records.
    ancestors: HashSet<Box<[u8]>>,
}

/// What the zone knows about a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// The name is not in the zone.
    NoName,
    /// The name exists; this many records of the asked type were appended (0: none of
    /// that type).
    Records(u16),
}

impl Found {
    /// What two zones together know about a name.
    pub fn and(self, other: Found) -> Found {
        match (self, other) {
            (Found::NoName, found) | (found, Found::NoName) => found,
            (Found::Records(one), Found::Records(two)) => Found::Records(one.saturating_add(two)),
        }
    }
}

/// The configured part of a network's names: the host's hosts file (its zone shared by
/// the networks of one domain) and the network's own `<dns>` records, looked up as one
/// zone. The hosts file comes first, as dnsmasq reads it before libvirt's `addn-hosts`:
/// its first name for an address is the one a reverse lookup gives.
#[derive(Debug)]
pub struct StaticZone {
    /// From the hosts file.
    pub hosts: Arc<Zone>,
    /// From `<dns><host|srv|txt>`.
    pub config: Zone,
}

impl StaticZone {
    /// `config`'s records, after `hosts` (made for `config`'s domain).
    pub fn from_config(config: &DnsConfig, hosts: Arc<Zone>) -> Result<StaticZone, Error> {
        let own = Zone::from_config(config, &hosts)?;
        Ok(StaticZone { hosts, config: own })
    }

    /// Appends the records of the name whose [`wire_key`] is `key` matching `qtype`, the
    /// hosts file's first.
    pub fn append_answers(&self, key: &[u8], qtype: RecordType, out: &mut Vec<u8>) -> Found {
        let from_hosts = self.hosts.append_answers(key, qtype, out);
        from_hosts.and(self.config.append_answers(key, qtype, out))
    }

    /// Whether the name whose [`wire_key`] is `key` has names under it here.
    pub fn is_ancestor(&self, key: &[u8]) -> bool {
        self.hosts.is_ancestor(key) || self.config.is_ancestor(key)
    }

    /// Whether the name whose [`wire_key`] is `key` has records of type `rtype` here.
    fn holds(&self, key: &[u8], rtype: RecordType) -> bool {
        self.hosts.holds(key, rtype) || self.config.holds(key, rtype)
    }
}

impl Zone {
    /// A hosts file's names and addresses, plain names also under `domain`.
    pub fn from_hosts(file: &HostsFile, domain: Option<&Name>) -> Zone {
        let mut zone = Zone::default();
        for (ip, hostnames) in &file.entries {
            // Checked when the file was read.
            let names: Vec<Name> = hostnames
                .iter()
                .filter_map(|hostname| qualified(hostname, domain))
                .flatten()
                .collect();
            zone.add_address(&names, *ip, None);
        }
        zone
    }

    /// The network's own configured names: `<dns><host>`, `<srv>` and `<txt>`. A reverse
    /// name `hosts` (the hosts file's zone) answers is left to it, as its first name for
    /// an address is the one a reverse lookup gives.
    fn from_config(config: &DnsConfig, hosts: &Zone) -> Result<Zone, Error> {
        let invalid = |what: &'static str, value: &str| Error::Record {
            network: config.network.clone(),
            what,
            value: value.to_owned(),
        };
        let domain = match &config.domain {
            Some(domain) => Some(fqdn(domain).ok_or_else(|| invalid("domain", domain))?),
            None => None,
        };
        let mut zone = Zone::default();
        for host in &config.hosts {
            let mut names = Vec::new();
            for hostname in &host.hostnames {
                names.extend(
                    qualified(hostname, domain.as_ref())
                        .ok_or_else(|| invalid("hostname", hostname))?,
                );
            }
            zone.add_address(&names, host.ip, Some(hosts));
        }
        // Lowest priority first, as dnsmasq answers them.
        let mut srvs: Vec<_> = config.srvs.iter().collect();
        srvs.sort_by_key(|srv| srv.priority.unwrap_or(0));
        for srv in srvs {
            // libvirt writes `srv-host=_service._protocol[.domain]` and dnsmasq puts a
            // record without a domain in the network's own, as it does hostnames.
            let mut owner = format!("_{}._{}", srv.service, srv.protocol);
            if let Some(domain) = srv.domain.as_ref().or(config.domain.as_ref()) {
                owner = format!("{owner}.{domain}");
            }
            let owner_name = fqdn(&owner).ok_or_else(|| invalid("srv", &owner))?;
            let target = srv.target.as_deref().unwrap_or(".");
            let target_name = fqdn(target).ok_or_else(|| invalid("srv", target))?;
            let rdata = RData::SRV(SRV::new(
                srv.priority.unwrap_or(0),
                srv.weight.unwrap_or(0),
                srv.port.unwrap_or(SRV_DEFAULT_PORT),
                target_name,
            ));
            zone.add(owner_name, &rdata);
        }
        for txt in &config.txts {
            let name = fqdn(&txt.name).ok_or_else(|| invalid("txt", &txt.name))?;
            let strings = txt_strings(&txt.value);
            let strings = strings.iter().map(Vec::as_slice).collect();
            zone.add(name, &RData::TXT(TXT::from_bytes(strings)));
        }
        Ok(zone)
    }

    /// The dynamic part: one name per leased hostname, qualified with `domain` (A for
    /// DHCP leases, AAAA for DHCPv6 ones, and PTR for both). Hostnames that are not
    /// valid DNS names are skipped, and so are those `configured` has addresses of the
    /// lease's family for: as dnsmasq ("not giving name ... to the DHCP lease"), such a
    /// lease gets no name at all, so its reverse name cannot point at a name whose
    /// address is someone else's.
    pub fn from_leases(
        leases: &[(IpAddr, String)],
        domain: Option<&Name>,
        configured: &StaticZone,
    ) -> Zone {
        let mut zone = Zone::default();
        for (ip, hostname) in leases {
            let family = match ip {
                IpAddr::V4(_) => RecordType::A,
                IpAddr::V6(_) => RecordType::AAAA,
            };
            let Some(names) = qualified(hostname, domain) else {
                continue;
            };
            if names
                .iter()
                .any(|name| configured.holds(&wire_key(name), family))
            {
                continue;
            }
            zone.add_address(&names, *ip, None);
        }
        zone
    }

    /// Whether the name whose [`wire_key`] is `key` has records of type `rtype` here.
    fn holds(&self, key: &[u8], rtype: RecordType) -> bool {
        self.names
            .get(key)
            .is_some_and(|sets| sets.iter().any(|(held, _)| *held == rtype))
    }

    /// Whether the zone holds no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether the name whose [`wire_key`] is `key` has names of the zone under it.
    pub fn is_ancestor(&self, key: &[u8]) -> bool {
        self.ancestors.contains(key)
    }

    /// Appends to `out` the records of the name whose [`wire_key`] is `key` matching
    /// `qtype` (all of them for `ANY`).
    pub fn append_answers(&self, key: &[u8], qtype: RecordType, out: &mut Vec<u8>) -> Found {
        self.append_matching(key, qtype, out, |_| false)
    }

    /// Like [`Zone::append_answers`], leaving out the types `over` has records of for
    /// the name: a configured record wins over a leased one of its type only, as in
    /// dnsmasq, where a host entry hides a lease's address but not the other way round.
    pub fn append_answers_under(
        &self,
        over: &StaticZone,
        key: &[u8],
        qtype: RecordType,
        out: &mut Vec<u8>,
    ) -> Found {
        self.append_matching(key, qtype, out, |rtype| over.holds(key, rtype))
    }

    fn append_matching(
        &self,
        key: &[u8],
        qtype: RecordType,
        out: &mut Vec<u8>,
        is_shadowed: impl Fn(RecordType) -> bool,
    ) -> Found {
        let Some(sets) = self.names.get(key) else {
            return Found::NoName;
        };
        let mut count = 0u16;
        for (rtype, set) in sets {
            if (*rtype == qtype || qtype == RecordType::ANY) && !is_shadowed(*rtype) {
                out.extend_from_slice(&set.wire);
                count = count.saturating_add(set.count);
            }
        }
        Found::Records(count)
    }

    /// `names` resolve to `ip`; the address's reverse name points to the first of them,
    /// unless it has a name here or in `earlier` already.
    fn add_address(&mut self, names: &[Name], ip: IpAddr, earlier: Option<&Zone>) {
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        for name in names {
            // A name the hosts file gives this address already keeps one record of it.
            if !earlier.is_some_and(|zone| zone.has_record(name, &rdata)) {
                self.add(name.clone(), &rdata);
            }
        }
        if let Some(first) = names.first() {
            let reverse = Name::from(ip);
            // One PTR per address: the first name given for it wins, as in dnsmasq.
            let key = wire_key(&reverse);
            let named = |zone: &Zone| zone.names.contains_key(key.as_slice());
            if !named(self) && !earlier.is_some_and(named) {
                self.add(reverse, &RData::PTR(PTR(first.clone())));
            }
        }
    }

    /// Whether `name` has the record `rdata` here.
    fn has_record(&self, name: &Name, rdata: &RData) -> bool {
        let rtype = rdata.record_type();
        let (Some(sets), Some(record)) = (
            self.names.get(wire_key(name).as_slice()),
            wire_record(rdata),
        ) else {
            return false;
        };
        sets.iter()
            .any(|(t, set)| *t == rtype && set.contains(&record))
    }

    /// Adds `rdata` to `name`'s records, once: RFC 2181 5 has a set hold no record twice,
    /// which a name given twice for an address (`a` and `a.lab.test` under `lab.test`,
    /// two `<host>`s, a hosts file's `fqdn short`) would otherwise make.
    fn add(&mut self, name: Name, rdata: &RData) {
        let rtype = rdata.record_type();
        let Some(record) = wire_record(rdata) else {
            tracing::warn!(%name, ?rtype, "DNS record cannot be encoded; not served");
            return;
        };
        let mut ancestor = name.base_name();
        while !ancestor.is_root() && self.ancestors.insert(wire_key(&ancestor).into()) {
            ancestor = ancestor.base_name();
        }
        let sets = self
            .names
            .entry(wire_key(&name).into_boxed_slice())
            .or_default();
        let set = match sets.iter_mut().find(|(t, _)| *t == rtype) {
            Some((_, set)) => set,
            None => {
                sets.push((rtype, RrSet::default()));
                let last = sets.len() - 1;
                &mut sets[last].1
            }
        };
        set.insert(&record);
    }
}

/// The wire form of `name` (length-prefixed labels ending in the root's zero) with
/// ASCII letters lowercased: the lookup key of a name, as DNS compares names
/// case-insensitively in ASCII only (RFC 4343).
pub fn wire_key(name: &Name) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        // A label of a valid `Name` is 1 to 63 bytes long.
        key.push(u8::try_from(label.len()).unwrap_or(0));
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    key.push(0);
    key
}

/// Offsets of the labels of a name in wire form, the root's last; a name cut short
/// ends with its last whole label's.
pub(super) fn label_offsets(key: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = Some(0).filter(|_| !key.is_empty());
    std::iter::from_fn(move || {
        let here = at?;
        at = match key.get(here) {
            Some(0) | None => None,
            Some(&len) => Some(here + 1 + usize::from(len)).filter(|&next| next < key.len()),
        };
        Some(here)
    })
}

/// Whether the name `key` is `domain` or a name under it (both [`wire_key`]s).
pub(super) fn is_at_or_under(key: &[u8], domain: &[u8]) -> bool {
    key.len() >= domain.len() && label_offsets(key).any(|at| key.get(at..) == Some(domain))
}

/// `text` as an absolute name, or `None` if it is not a valid one.
pub fn fqdn(text: &str) -> Option<Name> {
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// The names a hostname answers to: qualified with the domain first when it is a plain
/// label (dnsmasq's `expand-hosts`), then as given.
fn qualified(hostname: &str, domain: Option<&Name>) -> Option<Vec<Name>> {
    let name = fqdn(hostname)?;
    if name.num_labels() == 0 {
        return None;
    }
    let mut names = Vec::with_capacity(2);
    if let Some(domain) = domain.filter(|_| name.num_labels() == 1) {
        names.push(name.clone().append_domain(domain).ok()?);
    }
    names.push(name);
    Some(names)
}

/// The character-strings of a `<txt value=>`, as dnsmasq makes them of libvirt's
/// `txt-record=NAME,VALUE`: a comma separates strings (libvirt: "multiple values
/// separated by commas"), except inside double quotes, which are dropped along with
/// the backslash of their escapes; a string longer than 255 bytes, the most one holds,
/// goes on in the next. Bytes, not text: a split never breaks the record.
fn txt_strings(value: &str) -> Vec<Vec<u8>> {
    const MAX_STRING: usize = 255;
    let mut strings = vec![Vec::new()];
    let push = |strings: &mut Vec<Vec<u8>>, byte: u8| {
        if strings.last().is_some_and(|last| last.len() == MAX_STRING) {
            strings.push(Vec::new());
        }
        if let Some(last) = strings.last_mut() {
            last.push(byte);
        }
    };
    let mut quoted = false;
    let mut bytes = value.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'"' => quoted = !quoted,
            b',' if !quoted => strings.push(Vec::new()),
            b'\\' if quoted => match bytes.next() {
                Some(b't') => push(&mut strings, b'\t'),
                Some(b'n') => push(&mut strings, b'\n'),
                Some(b'r') => push(&mut strings, b'\r'),
                Some(b'e') => push(&mut strings, 0x1b),
                Some(b'b') => push(&mut strings, 0x08),
                Some(escaped @ (b'"' | b'\\')) => push(&mut strings, escaped),
                Some(other) => {
                    push(&mut strings, b'\\');
                    push(&mut strings, other);
                }
                None => push(&mut strings, b'\\'),
            },
            _ => push(&mut strings, byte),
        }
    }
    strings
}

/// One resource record owned by the question name, with its encoded RDATA.
pub(super) fn wire_record(rdata: &RData) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    let mut encoder = BinEncoder::new(&mut data);
    // The RDATA is copied into other messages: a compression pointer would dangle.
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    rdata.emit(&mut encoder).ok()?;
    let len = u16::try_from(data.len()).ok()?;
    let mut record = Vec::with_capacity(12 + data.len());
    record.extend_from_slice(&OWNER_POINTER);
    record.extend_from_slice(&u16::from(rdata.record_type()).to_be_bytes());
    record.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
    record.extend_from_slice(&LOCAL_TTL.to_be_bytes());
    record.extend_from_slice(&len.to_be_bytes());
    record.extend_from_slice(&data);
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cut_short_are_walked_without_going_past_their_end() {
        let key = wire_key(&fqdn("www.example.").expect("name"));
        assert_eq!(label_offsets(&key).collect::<Vec<_>>(), [0, 4, 12]);
        assert!(is_at_or_under(&key, &key[4..]));
        assert!(is_at_or_under(&key, &[0]));
        for cut in [&[5, b'a'][..], &[1, b'a', 3, b'b'], &[]] {
            assert!(!is_at_or_under(cut, &[0]), "{cut:?}");
            assert!(label_offsets(cut).all(|at| at < cut.len()), "{cut:?}");
        }
    }

    /// RFC 2181 5: a name reaching an address twice (given plain and qualified, in two
    /// `<host>`s, or by the hosts file too) answers with it once.
    #[test]
    fn an_address_given_twice_for_a_name_is_answered_once() {
        let host = |ip: &str, names: &[&str]| crate::xml::DnsHost {
            ip: ip.parse().expect("ip"),
            hostnames: names.iter().map(|name| (*name).to_owned()).collect(),
        };
        let config = DnsConfig {
            network: "n".into(),
            domain: Some("lab.test".into()),
            hosts: vec![
                host("192.0.2.20", &["a", "a.lab.test"]),
                host("192.0.2.20", &["a"]),
                host("192.0.2.21", &["a"]),
                host("192.0.2.7", &["myhost"]),
            ],
            ..DnsConfig::default()
        };
        let file = HostsFile {
            entries: vec![(
                "192.0.2.7".parse().expect("ip"),
                vec!["myhost.lab.test".to_owned(), "myhost".to_owned()],
            )],
        };
        let domain = fqdn("lab.test");
        let hosts = Arc::new(Zone::from_hosts(&file, domain.as_ref()));
        let zone = StaticZone::from_config(&config, hosts).expect("zone");
        let answers = |name: &str| {
            let mut out = Vec::new();
            zone.append_answers(
                &wire_key(&fqdn(name).expect("name")),
                RecordType::A,
                &mut out,
            )
        };
        assert_eq!(answers("a.lab.test"), Found::Records(2));
        assert_eq!(answers("a"), Found::Records(2));
        assert_eq!(answers("myhost.lab.test"), Found::Records(1));

        // Past the size where a set keeps an index of its records, as before it.
        let many = INDEXED_FROM * 3;
        let lines: Vec<(IpAddr, Vec<String>)> = (0..many)
            .flat_map(|at| {
                let ip = IpAddr::from([10, 0, (at >> 8) as u8, at as u8]);
                [(ip, vec!["lb".to_owned()]), (ip, vec!["lb".to_owned()])]
            })
            .collect();
        let zone = Zone::from_hosts(&HostsFile { entries: lines }, None);
        let mut out = Vec::new();
        let key = wire_key(&fqdn("lb").expect("name"));
        assert_eq!(
            zone.append_answers(&key, RecordType::A, &mut out),
            Found::Records(many)
        );
    }

    #[test]
    fn txt_values_split_at_commas_outside_quotes_and_every_255_bytes() {
        let strings = txt_strings;
        assert_eq!(strings("hello world"), [b"hello world".to_vec()]);
        assert_eq!(strings("k1=a,k2=b"), [b"k1=a".to_vec(), b"k2=b".to_vec()]);
        assert_eq!(strings(r#""a,b",c\d"#), [b"a,b".to_vec(), br"c\d".to_vec()]);
        assert_eq!(strings(r#""say \"hi\"\t""#), [b"say \"hi\"\t".to_vec()]);
        assert_eq!(strings(""), [Vec::<u8>::new()]);
        // 300 bytes of two-byte characters: split by bytes, so nothing is re-encoded
        // (and lengthened past 255) and the record is still served.
        let long = "é".repeat(150);
        let split = strings(&long);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), [255, 45]);
        assert_eq!(split.concat(), long.as_bytes());
        let config = DnsConfig {
            network: "n".into(),
            txts: vec![crate::xml::DnsTxt {
                name: "long.test".into(),
                value: long,
            }],
            ..DnsConfig::default()
        };
        let zone = Zone::from_config(&config, &Zone::default()).expect("zone");
        let key = wire_key(&fqdn("long.test").expect("name"));
        let mut out = Vec::new();
        assert_eq!(
            zone.append_answers(&key, RecordType::TXT, &mut out),
            Found::Records(1)
        );
    }
}
