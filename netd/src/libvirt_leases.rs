//! The leases libvirt's dnsmasq left (`/var/lib/libvirt/dnsmasq/BRIDGE.status`, written
//! by libvirt's leases helper), taken over by a network that starts without leases of
//! its own: on a host moved from libvirt, a guest that renews keeps its address, its
//! name resolves at once, and no new guest is given an address a guest still holds.
//!
//! The status file is a JSON array of objects: `ip-address`, `mac-address`, `hostname`,
//! `client-id` (colon-separated hex) and `expiry-time` (Unix seconds, 0 for never); an
//! IPv6 lease also has `iaid`, its `client-id` being the DUID.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Most bytes read of a status file: dnsmasq's lines for 65,536 leases.
const MAX_STATUS_BYTES: u64 = 32 << 20;

/// Errors reading a status file or writing the lease files; each names its path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status file could not be read.
    #[error("cannot read libvirt's lease file {path}")]
    Read {
        /// The status file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The status file is not dnsmasq's JSON.
    #[error("libvirt's lease file {path} is not a JSON array of leases")]
    Parse {
        /// The status file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// A lease file, or the record of the import, could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The lease file.
        path: PathBuf,
        /// Why.
        #[source]
        source: crate::store::Error,
    },
}

/// One entry of the status file; unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct StatusEntry {
    ip_address: IpAddr,
    #[serde(default)]
    mac_address: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    iaid: Option<String>,
    expiry_time: i64,
}

/// How many leases an import wrote, by family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// DHCPv4 leases.
    pub v4: usize,
    /// DHCPv6 leases.
    pub v6: usize,
}

/// [`import`], once per version of `status`: a status file whose size and time of change
/// [`Taken::record`] wrote to `taken` is not read again. kvnet's lease files are on
/// tmpfs (`/run/kvnet`) and gone after a reboot, but libvirt's stays, and its leases are
/// a move's, not a reboot's: a guest that released its lease since must not get it back,
/// nor hold one libvirt gave for ever (`expiry-time` 0) at every boot. The record is the
/// caller's to write once the network started: a start that fails deletes the lease
/// files, and the next one must read the status file again.
pub fn import_once(
    status: &Path,
    taken: &Path,
    v4_file: &Path,
    v6_file: &Path,
    now: i64,
) -> Result<(Imported, Option<Taken>), Error> {
    let version = match std::fs::metadata(status) {
        Ok(metadata) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{} {}.{:09}\n",
                metadata.len(),
                metadata.mtime(),
                metadata.mtime_nsec()
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Imported::default(), None));
        }
        Err(source) => {
            return Err(Error::Read {
                path: status.to_owned(),
                source,
            });
        }
    };
    if std::fs::read_to_string(taken).is_ok_and(|recorded| recorded == version) {
        return Ok((Imported::default(), None));
    }
    let imported = import(status, v4_file, v6_file, now)?;
    let taken = Taken {
        path: taken.to_owned(),
        version,
    };
    Ok((imported, Some(taken)))
}

/// Which version of a status file was taken over, to record once the network started.
#[derive(Debug)]
pub struct Taken {
    path: PathBuf,
    version: String,
}

impl Taken {
    /// Writes the record (creating its directory).
    pub fn record(self) -> Result<(), Error> {
        let write = || -> Result<(), crate::store::Error> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| crate::store::Error::Io {
                    action: "creating directory",
                    path: dir.to_owned(),
                    source,
                })?;
            }
            crate::store::write_atomic(&self.path, self.version.as_bytes())
        };
        write().map_err(|source| Error::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Where libvirt's dnsmasq kept the leases of `bridge`, under `dir`.
pub fn status_path(dir: &Path, bridge: &str) -> PathBuf {
    dir.join(format!("{bridge}.status"))
}

/// Writes the unexpired leases of `status` (see the module docs) as the lease files
/// `v4_file` and `v6_file` (those of a family with none are not written). A missing
/// status file imports nothing. The lease files' loading then checks each lease as its
/// own: one outside the network's subnet, or clashing with a reservation, is dropped.
pub fn import(status: &Path, v4_file: &Path, v6_file: &Path, now: i64) -> Result<Imported, Error> {
    let text = match crate::files::read_regular(status, MAX_STATUS_BYTES) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Imported::default()),
        Err(source) => {
            return Err(Error::Read {
                path: status.to_owned(),
                source,
            });
        }
    };
    // libvirt's helper writes an empty file, not `[]`, once the last lease is gone.
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Imported::default());
    }
    let entries: Vec<StatusEntry> =
        serde_json::from_slice(&text).map_err(|source| Error::Parse {
            path: status.to_owned(),
            source,
        })?;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let mut imported = Imported::default();
    for entry in entries {
        if entry.expiry_time != 0 && entry.expiry_time <= now {
            continue;
        }
        let hostname = entry.hostname.as_deref().filter(|name| *name != "*");
        match (entry.ip_address, entry.iaid.as_deref()) {
            (IpAddr::V4(ip), None) => {
                let Some(mac) = entry.mac_address.as_deref() else {
                    continue;
                };
                let client_id = entry.client_id.as_deref().filter(|id| *id != "*");
                v4.extend(crate::dhcp::leases::bind_line(
                    ip,
                    mac,
                    client_id,
                    hostname,
                    entry.expiry_time,
                ));
                imported.v4 += 1;
            }
            (IpAddr::V6(ip), Some(iaid)) => {
                let (Ok(iaid), Some(duid)) = (iaid.parse(), entry.client_id.as_deref()) else {
                    continue;
                };
                v6.extend(crate::dhcp6::leases::bind_line(
                    ip,
                    duid,
                    iaid,
                    entry.mac_address.as_deref(),
                    hostname,
                    entry.expiry_time,
                ));
                imported.v6 += 1;
            }
            _ => {}
        }
    }
    for (file, lines) in [(v4_file, &v4), (v6_file, &v6)] {
        if !lines.is_empty() {
            crate::store::write_atomic(file, lines).map_err(|source| Error::Write {
                path: file.to_owned(),
                source,
            })?;
        }
    }
    Ok(imported)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn unexpired_leases_of_both_families_become_lease_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("virbr0.status");
        std::fs::write(
            &status,
            format!(
                r#"[
  {{ "ip-address": "192.168.122.11", "mac-address": "52:54:00:aa:bb:02",
     "hostname": "gc2", "client-id": "01:52:54:00:aa:bb:02", "expiry-time": {live} }},
  {{ "ip-address": "192.168.122.12", "mac-address": "52:54:00:aa:bb:03",
     "expiry-time": {expired} }},
  {{ "ip-address": "192.168.122.13", "mac-address": "52:54:00:aa:bb:04",
     "hostname": "*", "expiry-time": 0 }},
  {{ "iaid": "1234", "ip-address": "fd00:100::149", "hostname": "gc2",
     "client-id": "00:04:aa:bb", "expiry-time": {live}, "future-field": true }}
]"#,
                live = NOW + 600,
                expired = NOW - 1,
            ),
        )
        .unwrap();
        let (v4, v6) = (dir.path().join("n.leases"), dir.path().join("n.leases6"));
        let imported = import(&status, &v4, &v6, NOW).unwrap();
        assert_eq!(imported, Imported { v4: 2, v6: 1 });
        let v4 = std::fs::read_to_string(&v4).unwrap();
        assert_eq!(
            v4,
            format!(
                "{{\"op\":\"bind\",\"ip\":\"192.168.122.11\",\"mac\":\"52:54:00:aa:bb:02\",\
                 \"client_id\":\"01:52:54:00:aa:bb:02\",\"hostname\":\"gc2\",\"expiry\":{}}}\n\
                 {{\"op\":\"bind\",\"ip\":\"192.168.122.13\",\"mac\":\"52:54:00:aa:bb:04\",\
                 \"expiry\":0}}\n",
                NOW + 600
            )
        );
        let v6 = std::fs::read_to_string(&v6).unwrap();
        assert_eq!(
            v6,
            format!(
                "{{\"ip\":\"fd00:100::149\",\"duid\":\"00:04:aa:bb\",\"iaid\":1234,\
                 \"hostname\":\"gc2\",\"expiry\":{}}}\n",
                NOW + 600
            )
        );
    }

    #[test]
    fn a_status_file_is_taken_over_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("virbr0.status");
        let taken = dir.path().join("config/.libvirt-leases/default");
        let (v4, v6) = (dir.path().join("n.leases"), dir.path().join("n.leases6"));
        let lease = |ip: &str| {
            format!(
                r#"[{{"ip-address": "{ip}", "mac-address": "52:54:00:aa:bb:02", "expiry-time": 0}}]"#
            )
        };
        std::fs::write(&status, lease("192.168.122.11")).unwrap();
        let once = Imported { v4: 1, v6: 0 };
        let take = || import_once(&status, &taken, &v4, &v6, NOW).unwrap();
        // A start that failed: nothing recorded, so the next start takes them again.
        assert_eq!(take().0, once);
        std::fs::remove_file(&v4).unwrap();
        let (imported, record) = take();
        assert_eq!(imported, once);
        record.expect("to record").record().unwrap();
        // A reboot: kvnet's lease files are gone, libvirt's is as it was.
        std::fs::remove_file(&v4).unwrap();
        let (imported, record) = take();
        assert_eq!(imported, Imported::default());
        assert!(record.is_none() && !v4.exists());
        // libvirt ran again and wrote it anew: a new move.
        std::fs::write(&status, lease("192.168.122.12")).unwrap();
        assert_eq!(take().0, once);
        assert!(
            std::fs::read_to_string(&v4)
                .unwrap()
                .contains("192.168.122.12")
        );
    }

    #[test]
    fn no_status_file_or_an_empty_one_imports_nothing_and_junk_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (v4, v6) = (dir.path().join("n.leases"), dir.path().join("n.leases6"));
        let status = dir.path().join("virbr9.status");
        assert_eq!(import(&status, &v4, &v6, NOW).unwrap(), Imported::default());
        std::fs::write(&status, "").unwrap();
        assert_eq!(import(&status, &v4, &v6, NOW).unwrap(), Imported::default());
        assert!(!v4.exists() && !v6.exists());
        std::fs::write(&status, "{not json").unwrap();
        let error = import(&status, &v4, &v6, NOW).unwrap_err().to_string();
        assert!(error.contains("virbr9.status"), "{error}");
        assert!(!v4.exists() && !v6.exists());
    }
}
