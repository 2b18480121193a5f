//! The host's hosts file (`/etc/hosts`), which libvirt's dnsmasq serves to guests: its
//! configuration has no `no-hosts`, so a name the administrator adds there resolves in
//! every guest, plain names also under the network's domain (`expand-hosts`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use hickory_proto::rr::Name;

use super::zone::{Zone, fqdn, wire_key};
use crate::service::lock;

/// The entries of a hosts file, in file order: each address with its names, the first
/// of which is the one its reverse lookup gives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostsFile {
    /// `(address, names)` per line that has both.
    pub entries: Vec<(IpAddr, Vec<String>)>,
}

/// A hosts file shared by every network's DNS server, with the zone made of it for each
/// domain, made once for all the networks of that domain: a big hosts file (an ad
/// blocker's 150,000 lines) would otherwise cost every network a copy of its own, and
/// every change to it a rebuild per network.
#[derive(Debug, Default)]
pub struct SharedHosts {
    /// The file's entries.
    pub file: HostsFile,
    /// The zones made so far, by the [`wire_key`] of their domain; a zone no server uses
    /// any more goes.
    zones: Mutex<HashMap<Option<Vec<u8>>, Weak<Zone>>>,
}

/// Two are the same when their files are: the zones are made of them.
impl PartialEq for SharedHosts {
    fn eq(&self, other: &SharedHosts) -> bool {
        self.file == other.file
    }
}

impl Eq for SharedHosts {}

impl SharedHosts {
    pub fn new(file: HostsFile) -> SharedHosts {
        SharedHosts {
            file,
            zones: Mutex::default(),
        }
    }

    /// The file's names and addresses, plain names also under `domain`.
    pub fn zone(&self, domain: Option<&Name>) -> Arc<Zone> {
        let key = domain.map(wire_key);
        if let Some(zone) = lock(&self.zones).get(&key).and_then(Weak::upgrade) {
            return zone;
        }
        // Made without the lock held: a big file takes long, and the daemon's thread
        // may look for a zone made already meanwhile.
        let made = Arc::new(Zone::from_hosts(&self.file, domain));
        let mut zones = lock(&self.zones);
        // Someone may have made it meanwhile too: theirs is the one servers hold.
        if let Some(zone) = zones.get(&key).and_then(Weak::upgrade) {
            return zone;
        }
        zones.retain(|_, zone| zone.strong_count() > 0);
        zones.insert(key, Arc::downgrade(&made));
        made
    }

    /// [`SharedHosts::zone`] for the domain named `domain`, made on a blocking thread
    /// when no server holds it yet: a big file takes long to make into a zone (120 ms for
    /// 20,000 lines), and the daemon's one thread serves every network's DHCP and DNS
    /// meanwhile. The zone lives while the caller holds it, so a server made before it
    /// is dropped finds it ready. `None` for a domain that is no DNS name, which the
    /// server refuses anyway.
    pub async fn zone_made_aside(self: &Arc<Self>, domain: Option<&str>) -> Option<Arc<Zone>> {
        let domain = match domain {
            Some(text) => Some(fqdn(text)?),
            None => None,
        };
        let key = domain.as_ref().map(wire_key);
        if let Some(zone) = lock(&self.zones).get(&key).and_then(Weak::upgrade) {
            return Some(zone);
        }
        let shared = Arc::clone(self);
        tokio::task::spawn_blocking(move || shared.zone(domain.as_ref()))
            .await
            .ok()
    }
}

impl HostsFile {
    /// Reads `path`. A missing file has no entries; one that cannot be read is an
    /// error, for the caller to keep what it read before (at start, nothing: dnsmasq
    /// goes on without it).
    pub fn read(path: &Path) -> std::io::Result<HostsFile> {
        if crate::files::is_dev_null(path) {
            return Ok(HostsFile::default());
        }
        match crate::files::read_regular(path, crate::files::MAX_FILE_BYTES) {
            Ok(bytes) => Ok(HostsFile::parse(path, &String::from_utf8_lossy(&bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostsFile::default()),
            Err(e) => Err(e),
        }
    }

    /// Parses hosts-file text (`ADDRESS NAME [NAME...]`, `#` comments). Lines with a bad
    /// address and names that are not DNS names are skipped and logged, as dnsmasq does;
    /// `path` names the file in those warnings.
    pub fn parse(path: &Path, text: &str) -> HostsFile {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            let mut words = line.split_whitespace();
            let Some(address) = words.next() else {
                continue;
            };
            // A scoped IPv6 address (`fe80::1%eth0`) means nothing on a guest's link.
            let Ok(ip) = address.parse::<IpAddr>() else {
                tracing::warn!(path = %path.display(), line = index + 1, address, "hosts file: not an address; line skipped");
                continue;
            };
            let names: Vec<String> = words
                .filter(|name| {
                    let valid = fqdn(name).is_some_and(|name| name.num_labels() > 0);
                    if !valid {
                        tracing::warn!(path = %path.display(), line = index + 1, name, "hosts file: not a DNS name; skipped");
                    }
                    valid
                })
                .map(str::to_owned)
                .collect();
            if !names.is_empty() {
                entries.push((ip, names));
            }
        }
        HostsFile { entries }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_networks_of_one_domain_share_one_zone_of_the_file() {
        let shared = SharedHosts::new(HostsFile::parse(Path::new("hosts"), "10.0.0.1 a\n"));
        let domain = fqdn("example.test");
        let one = shared.zone(domain.as_ref());
        let two = shared.zone(domain.as_ref());
        assert!(Arc::ptr_eq(&one, &two));
        let plain = shared.zone(None);
        assert!(!Arc::ptr_eq(&one, &plain));
        // Only zones some server holds are kept.
        drop((one, two));
        let other = shared.zone(fqdn("other.test").as_ref());
        assert_eq!(lock(&shared.zones).len(), 2);
        drop((plain, other));
    }

    #[test]
    fn a_zone_made_aside_leaves_the_runtime_thread_serving_and_is_the_shared_one() {
        let text: String = (0..20_000)
            .map(|n| format!("10.{}.{}.{} host{n}\n", n >> 16, (n >> 8) & 255, n & 255))
            .collect();
        let shared = Arc::new(SharedHosts::new(HostsFile::parse(
            Path::new("hosts"),
            &text,
        )));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let ticker = tokio::spawn({
                let ticks = Arc::clone(&ticks);
                async move {
                    loop {
                        ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
            });
            let zone = shared
                .zone_made_aside(Some("example.test"))
                .await
                .expect("zone");
            // Another task of the thread ran while the zone was made.
            assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 0);
            ticker.abort();
            assert!(Arc::ptr_eq(
                &zone,
                &shared.zone(fqdn("example.test").as_ref())
            ));
            let again = shared
                .zone_made_aside(Some("example.test"))
                .await
                .expect("zone");
            assert!(Arc::ptr_eq(&zone, &again));
            assert!(shared.zone_made_aside(Some("bad..name")).await.is_none());
        });
    }

    #[test]
    fn parses_addresses_with_their_names_in_order() {
        let text = "127.0.0.1\tlocalhost\n\
                    # a comment\n\
                    127.0.1.1 host.example.org host  # trailing comment\n\
                    ::1 localhost ip6-localhost\n\
                    fe80::1%eth0 scoped\n\
                    999.1.1.1 bogus\n\
                    10.0.0.5\n\
                    10.0.0.6 good bad..name also-good\n";
        let hosts = HostsFile::parse(Path::new("hosts"), text);
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let names = |list: &[&str]| list.iter().map(|name| name.to_string()).collect::<Vec<_>>();
        assert_eq!(
            hosts.entries,
            vec![
                (ip("127.0.0.1"), names(&["localhost"])),
                (ip("127.0.1.1"), names(&["host.example.org", "host"])),
                (ip("::1"), names(&["localhost", "ip6-localhost"])),
                (ip("10.0.0.6"), names(&["good", "also-good"])),
            ]
        );
    }

    #[test]
    fn a_missing_file_has_no_entries() {
        let hosts = HostsFile::read(Path::new("/nonexistent/kvnet/hosts")).expect("no file");
        assert!(hosts.entries.is_empty());
        // One that cannot be read is no empty file.
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(HostsFile::read(dir.path()).is_err());
    }
}
