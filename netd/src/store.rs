//! Persistence, in libvirt's layout so a libvirt host's files can be copied in:
//!
//! - `<config>/networks/NAME.xml`: persistent definitions;
//! - `<config>/networks/autostart/NAME.xml`: symlinks to them marking autostart;
//! - `<state>/networks/NAME.json`: the live status of a running network;
//! - `<state>/networks/NAME.ports`: the ports (guest taps) of a network, as JSON: those on
//!   it while it runs, those waiting to be plugged in again while it is stopped;
//! - `<state>/autostarted`: the once-per-boot autostart marker (the state dir is on tmpfs).
//!
//! Every write is atomic (temp file, fsync, rename, fsync of the directory), so a crash
//! leaves either the old or the new file, never a partial one. The store deals in
//! names and bytes; parsing is the manager's business.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files;

/// Errors of the on-disk store; each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read, written or removed.
    #[error("{action} {path}")]
    Io {
        /// What was being done ("writing", "reading", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A status file is not valid JSON of the expected shape.
    #[error("status file {path} is corrupt")]
    CorruptStatus {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// A definition is larger than the daemon, or virsh, reads back from a file.
    #[error(
        "the XML of network '{network}' would be {bytes} bytes, over the {limit}-byte limit of a definition (virsh's for an XML file)"
    )]
    DefinitionTooLarge {
        /// The network.
        network: String,
        /// Its XML's size as it would be written.
        bytes: usize,
        /// The most the daemon reads of a definition.
        limit: u64,
    },
    /// A file the daemon would write is larger than it reads back: written, it would
    /// lose the network at the next start.
    #[error("{path} would be {bytes} bytes, over the {limit}-byte limit of what kvnetd reads back")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size as it would be written.
        bytes: usize,
        /// The most the daemon reads of it.
        limit: u64,
    },
}

/// Most a status or ports file may hold: a status holds up to two definitions (the
/// running one and, during an update, the next persistent one), each up to
/// [`files::MAX_FILE_BYTES`] and JSON-escaped.
const MAX_STATE_FILE_BYTES: u64 = 6 * files::MAX_FILE_BYTES;

/// Refuses `bytes` for `path` when they are more than the daemon reads back of it.
fn fits(path: &Path, bytes: usize, limit: u64) -> Result<(), Error> {
    if within(bytes, limit) {
        return Ok(());
    }
    Err(Error::TooLarge {
        path: path.to_owned(),
        bytes,
        limit,
    })
}

/// Refuses the definition `xml` of network `name` when it is more than a definition
/// file may hold.
fn definition_fits(name: &str, xml: &str) -> Result<(), Error> {
    let limit = files::MAX_FILE_BYTES;
    if within(xml.len(), limit) {
        return Ok(());
    }
    Err(Error::DefinitionTooLarge {
        network: name.to_owned(),
        bytes: xml.len(),
        limit,
    })
}

/// Whether `bytes` are at most `limit`.
fn within(bytes: usize, limit: u64) -> bool {
    u64::try_from(bytes).is_ok_and(|bytes| bytes <= limit)
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Where a running network is in its life, as recorded before and after touching the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Recorded before the first kernel change of a start: a daemon that finds this
    /// after a crash undoes whatever the interrupted start left behind.
    Starting,
    /// Every kernel object of the network is in place.
    Active,
    /// Recorded before a stop takes anything down (libvirt removes its status file
    /// first): a daemon that finds this after a crash finishes the stop instead of
    /// adopting the network again.
    Stopping,
}

/// The live status of a network, written to `<state>/networks/NAME.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Format version of this file.
    pub version: u32,
    /// See [`Phase`].
    pub phase: Phase,
    /// The bridge the network created (or uses).
    pub bridge: String,
    /// Whether the network has a definition on disk.
    pub persistent: bool,
    /// The definition the network runs with (libvirt network XML).
    pub xml: String,
    /// When it was started, seconds since the Unix epoch.
    pub started_at: i64,
    /// The persistent definition (its file's content) that an update of both definitions
    /// (`net-update --live --config`) writes next: a daemon that finds it after a crash
    /// finishes the write, so that the two never disagree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_config: Option<String>,
}

/// The current [`Status::version`].
pub const STATUS_VERSION: u32 = LINK_GROUP_STATUS_VERSION;

/// The first [`Status::version`] written by a kvnet that creates its bridges in its link
/// group: an older status vouches for a bridge with the network's MAC address alone.
pub const LINK_GROUP_STATUS_VERSION: u32 = 2;

/// A status file found on disk: the network name from the file name, and its
/// content or why it could not be read.
pub type LoadedStatus = (String, Result<Status, Error>);

/// A port of a network: the guest tap kvnetd made for it. Stored per network in
/// `<state>/networks/NAME.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    /// The port's definition (libvirt's `<networkport>` XML, plug filled in).
    pub xml: String,
    /// The tap's name.
    pub tap: String,
    /// The tap's ifindex: a tap of that name with another index is not this port's.
    pub ifindex: u32,
    /// Whether the tap outlives its descriptors (see [`crate::api::types::PortSummary`]).
    pub persistent: bool,
    /// The process a handed-over macvtap goes with (a tap goes with its descriptors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<crate::owner::ProcessId>,
}

/// Most copies of a network's definition files that could not be loaded kept aside.
const MAX_KEPT_UNLOADABLE: usize = 100;

/// A persistent definition found on disk.
#[derive(Debug)]
pub struct StoredConfig {
    /// The name taken from the file name.
    pub file_name: String,
    /// The file's path (for messages).
    pub path: PathBuf,
    /// The file's text, or why it could not be read (the others still load, as in
    /// libvirt, where one bad file must not stop the daemon).
    pub xml: Result<String, Error>,
    /// Whether an autostart link for it exists.
    pub autostart: bool,
}

/// A change to a network's persistent definition ([`Store::change_config_off_thread`]).
#[derive(Debug)]
pub enum ConfigChange {
    /// Write its definition.
    Save {
        /// The network.
        network: String,
        /// Its definition's XML.
        xml: String,
    },
    /// Remove its definition and autostart link.
    Delete {
        /// The network.
        network: String,
    },
    /// Create or remove its autostart link.
    Autostart {
        /// The network.
        network: String,
        /// Whether it autostarts.
        enabled: bool,
    },
}

impl ConfigChange {
    fn network(&self) -> &str {
        match self {
            ConfigChange::Save { network, .. }
            | ConfigChange::Delete { network }
            | ConfigChange::Autostart { network, .. } => network,
        }
    }
}

/// The daemon's files.
#[derive(Clone, Debug)]
pub struct Store {
    networks_dir: PathBuf,
    autostart_dir: PathBuf,
    status_dir: PathBuf,
    /// `<state>/autostarted`: this boot's autostart pass ran to its end (networks that
    /// daemons died starting too often were skipped in it).
    autostart_marker: PathBuf,
    /// `<state>/autostarting`: this boot's autostart began.
    autostart_begun_marker: PathBuf,
    /// `<config>/.first-start`: there from before the config dir is first set up until the
    /// default network is defined and autostarted, so that a first start cut short is a
    /// first start again.
    first_start_marker: PathBuf,
    /// `<config>/.libvirt-leases`: which of libvirt's lease files each network took over
    /// (see [`crate::libvirt_leases`]).
    libvirt_leases_taken: PathBuf,
}

impl Store {
    /// A store over `config_dir` and `state_dir`; nothing is created yet.
    pub fn new(config_dir: &Path, state_dir: &Path) -> Store {
        let networks_dir = config_dir.join("networks");
        Store {
            autostart_dir: networks_dir.join("autostart"),
            networks_dir,
            status_dir: state_dir.join("networks"),
            autostart_marker: state_dir.join("autostarted"),
            autostart_begun_marker: state_dir.join("autostarting"),
            first_start_marker: config_dir.join(".first-start"),
            libvirt_leases_taken: config_dir.join(".libvirt-leases"),
        }
    }

    /// Where it is recorded which of libvirt's lease files network `name` took over:
    /// kept with the definitions, as the lease files kvnet writes are gone at a reboot.
    pub fn libvirt_leases_taken(&self, name: &str) -> PathBuf {
        self.libvirt_leases_taken.join(name)
    }

    /// The daemon's own directory of live state, where short-lived files (a device node
    /// opened once) may go.
    pub fn status_dir(&self) -> &Path {
        &self.status_dir
    }

    /// Whether the config directory has never been set up (first start of the daemon), or
    /// a first start did not get to its end.
    pub fn is_fresh(&self) -> bool {
        !self.networks_dir.exists() || self.first_start_marker.exists()
    }

    /// Creates the directories the store writes into; on a first start, marked as one
    /// before the networks directory appears (see [`Store::first_start_done`]).
    pub fn create_dirs(&self) -> Result<(), Error> {
        if !self.networks_dir.exists()
            && let Some(config_dir) = self.first_start_marker.parent()
        {
            fs::create_dir_all(config_dir).map_err(io_err("creating directory", config_dir))?;
            write_atomic(&self.first_start_marker, b"")?;
        }
        for dir in [&self.networks_dir, &self.autostart_dir, &self.status_dir] {
            fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
        }
        Ok(())
    }

    /// Removes what changes a killed daemon left half done: the temporary files of writes
    /// (see [`write_atomic`] and [`Store::set_autostart`]) and autostart links whose
    /// definition is gone (see [`Store::delete_config`]); returns what it removed. Only
    /// for a daemon that has not started writing yet: the temporary names are its own too.
    /// A link is judged by its name, not its target: one copied from libvirt points at
    /// `/etc/libvirt/...`, which may not exist here.
    pub fn remove_leftovers(&self) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        for dir in [&self.networks_dir, &self.autostart_dir, &self.status_dir] {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("listing", dir)(e)),
            };
            for entry in entries {
                let path = entry.map_err(io_err("listing", dir))?.path();
                let is_temp = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_temp_name);
                let is_orphan_link = dir == &self.autostart_dir
                    && !is_temp
                    && path.extension().is_some_and(|ext| ext == "xml")
                    && path.file_name().is_some_and(|name| {
                        fs::symlink_metadata(self.networks_dir.join(name)).is_err()
                    });
                if !(is_temp || is_orphan_link) {
                    continue;
                }
                // A read-only config dir must not keep the daemon from starting.
                match remove_if_exists(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) => tracing::warn!("leaving a leftover in place: {e}"),
                }
            }
        }
        Ok(removed)
    }

    /// Ends a first start: from now on the config dir is the user's (an undefined
    /// `default` network stays undefined).
    pub fn first_start_done(&self) -> Result<(), Error> {
        remove_durably(&self.first_start_marker)
    }

    /// The path of a network's persistent definition.
    pub fn config_path(&self, name: &str) -> PathBuf {
        self.networks_dir.join(format!("{name}.xml"))
    }

    fn autostart_path(&self, name: &str) -> PathBuf {
        self.autostart_dir.join(format!("{name}.xml"))
    }

    fn status_path(&self, name: &str) -> PathBuf {
        self.status_dir.join(format!("{name}.json"))
    }

    /// Reads every `NAME.xml` in the networks directory, with its autostart flag (making
    /// an autostart link copied from libvirt kvnet's own).
    pub fn load_configs(&self) -> Result<Vec<StoredConfig>, Error> {
        let mut configs = Vec::new();
        for path in xml_files(&self.networks_dir)? {
            let Some(file_name) = stem(&path) else {
                continue;
            };
            let xml = files::read_text(&path).map_err(io_err("reading", &path));
            let autostart = self.adopt_autostart_link(&file_name);
            configs.push(StoredConfig {
                file_name,
                path,
                xml,
                autostart,
            });
        }
        Ok(configs)
    }

    /// Whether network `name` has an autostart link. One that points elsewhere (libvirt's
    /// point at `/etc/libvirt/qemu/networks/NAME.xml`) is replaced by kvnet's own, so it
    /// keeps meaning autostart whatever becomes of its target; if that fails it still
    /// counts.
    fn adopt_autostart_link(&self, name: &str) -> bool {
        let link = self.autostart_path(name);
        let Ok(target) = fs::read_link(&link) else {
            // No link, or a plain file put there by hand.
            return self.has_autostart_link(name);
        };
        if target != own_autostart_target(name)
            && let Err(e) = self.write_autostart_link(name)
        {
            tracing::warn!(network = name, link = %link.display(), "keeping an autostart link that points elsewhere: {e}");
        }
        true
    }

    /// Whether network `name` has an autostart link (or something in its place).
    pub fn has_autostart_link(&self, name: &str) -> bool {
        fs::symlink_metadata(self.autostart_path(name)).is_ok()
    }

    /// Writes a network's persistent definition atomically; one over virsh's limit for
    /// an XML file, which the daemon reads definitions with, is refused.
    pub fn save_config(&self, name: &str, xml: &str) -> Result<(), Error> {
        definition_fits(name, xml)?;
        write_atomic(&self.config_path(name), xml.as_bytes())
    }

    /// [`Store::save_config`], [`Store::delete_config`] or [`Store::set_autostart`] on
    /// tokio's blocking pool. Definitions live under `/etc`, on a disk whose syncs may
    /// take long, and the daemon's one thread serves every network's DHCP and DNS, which
    /// must not wait for them.
    pub async fn change_config_off_thread(&self, change: ConfigChange) -> Result<(), Error> {
        let store = self.clone();
        let path = self.config_path(change.network());
        tokio::task::spawn_blocking(move || match &change {
            ConfigChange::Save { network, xml } => store.save_config(network, xml),
            ConfigChange::Delete { network } => store.delete_config(network),
            ConfigChange::Autostart { network, enabled } => store.set_autostart(network, *enabled),
        })
        .await
        .unwrap_or_else(|e| Err(io_err("writing", &path)(io::Error::other(e))))
    }

    /// Removes a network's definition and its autostart link. The definition goes first:
    /// if that fails nothing changed. A link left behind after it (a failed removal, or
    /// a crash in between) points nowhere and means nothing; [`Store::remove_leftovers`]
    /// removes it when the daemon next opens the store.
    pub fn delete_config(&self, name: &str) -> Result<(), Error> {
        remove_durably(&self.config_path(name))?;
        if let Err(e) = self.set_autostart(name, false) {
            tracing::warn!(network = name, "removing the autostart link: {e}");
        }
        Ok(())
    }

    /// Creates or removes the autostart link (`autostart/NAME.xml -> ../NAME.xml`).
    pub fn set_autostart(&self, name: &str, enabled: bool) -> Result<(), Error> {
        let link = self.autostart_path(name);
        if !enabled {
            return remove_durably(&link);
        }
        if fs::read_link(&link).is_ok_and(|target| target == own_autostart_target(name)) {
            return Ok(());
        }
        self.write_autostart_link(name)
    }

    /// Creates kvnet's autostart link for `name` under a temporary name and renames it
    /// over whatever is there, so a link is there throughout.
    fn write_autostart_link(&self, name: &str) -> Result<(), Error> {
        let link = self.autostart_path(name);
        let tmp = self
            .autostart_dir
            .join(format!(".{name}.xml.tmp-{}", std::process::id()));
        remove_if_exists(&tmp)?;
        std::os::unix::fs::symlink(own_autostart_target(name), &tmp)
            .map_err(io_err("creating autostart link", &link))?;
        fs::rename(&tmp, &link).map_err(io_err("renaming autostart link into", &link))?;
        // In place, so done: an error would report autostart off with the link there,
        // and it would be on at the next start (as for written files).
        if let Err(e) = sync_dir(&self.autostart_dir) {
            tracing::warn!(path = %link.display(), "linked, but maybe not durably: {e}");
        }
        Ok(())
    }

    /// Reads every status file. A corrupt file is reported, not fatal to the others.
    pub fn load_statuses(&self) -> Result<Vec<LoadedStatus>, Error> {
        let mut statuses = Vec::new();
        let entries = match fs::read_dir(&self.status_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(statuses),
            Err(e) => return Err(io_err("listing", &self.status_dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err("listing", &self.status_dir))?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let Some(name) = stem(&path) else { continue };
            let status = files::read_regular(&path, MAX_STATE_FILE_BYTES)
                .map_err(io_err("reading", &path))
                .and_then(|bytes| {
                    serde_json::from_slice(&bytes).map_err(|source| Error::CorruptStatus {
                        path: path.clone(),
                        source,
                    })
                });
            statuses.push((name, status));
        }
        Ok(statuses)
    }

    /// Reads one network's status file.
    pub fn load_status(&self, name: &str) -> Result<Status, Error> {
        let path = self.status_path(name);
        let bytes =
            files::read_regular(&path, MAX_STATE_FILE_BYTES).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::CorruptStatus { path, source })
    }

    /// Writes a network's live status atomically. Its running definition may be as
    /// large as a definition file ([`Store::save_config`]'s limit), so that `net-dumpxml`
    /// prints what `net-define` takes back.
    pub fn save_status(&self, name: &str, status: &Status) -> Result<(), Error> {
        definition_fits(name, &status.xml)?;
        if let Some(pending) = &status.pending_config {
            definition_fits(name, pending)?;
        }
        let path = self.status_path(name);
        let bytes = serde_json::to_vec_pretty(status).map_err(|e| Error::Io {
            action: "encoding",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fits(&path, bytes.len(), MAX_STATE_FILE_BYTES)?;
        write_atomic(&path, &bytes)
    }

    /// Where a network's DHCP server keeps its leases (they survive daemon restarts,
    /// like libvirt's `<bridge>.status`).
    pub fn lease_path(&self, name: &str) -> PathBuf {
        self.status_dir.join(format!("{name}.leases"))
    }

    /// Where a network's DHCPv6 server keeps its leases.
    pub fn lease6_path(&self, name: &str) -> PathBuf {
        self.status_dir.join(format!("{name}.leases6"))
    }

    /// The networks that have a lease file (DHCP or DHCPv6), by name.
    pub fn lease_file_names(&self) -> Result<Vec<String>, Error> {
        self.status_file_names(&["leases", "leases6"])
    }

    /// The networks that have a ports file, by name.
    pub fn ports_file_names(&self) -> Result<Vec<String>, Error> {
        self.status_file_names(&["ports"])
    }

    /// The names of the state dir's files with one of these extensions, without it.
    fn status_file_names(&self, extensions: &[&str]) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(&self.status_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("listing", &self.status_dir)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err("listing", &self.status_dir))?.path();
            if path
                .extension()
                .is_some_and(|ext| extensions.iter().any(|wanted| ext == *wanted))
                && let Some(name) = stem(&path)
            {
                names.push(name);
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Forgets a network's leases (undefined, or a transient network stopped).
    pub fn delete_leases(&self, name: &str) -> Result<(), Error> {
        self.delete_leases4(name)?;
        self.delete_leases6(name)
    }

    /// Removes a network's DHCPv4 lease file only.
    pub fn delete_leases4(&self, name: &str) -> Result<(), Error> {
        remove_if_exists(&self.lease_path(name))
    }

    /// Removes a network's DHCPv6 lease file only.
    pub fn delete_leases6(&self, name: &str) -> Result<(), Error> {
        remove_if_exists(&self.lease6_path(name))
    }

    /// Removes a network's live status. Its ports outlive it, to be plugged in again when
    /// it starts; [`Store::save_ports`] with none removes them.
    pub fn delete_status(&self, name: &str) -> Result<(), Error> {
        remove_if_exists(&self.status_path(name))
    }

    fn ports_path(&self, name: &str) -> PathBuf {
        self.status_dir.join(format!("{name}.ports"))
    }

    /// Moves network `name`'s definition file, one that could not be loaded and a new
    /// definition is about to replace, aside to `NAME.xml.unloadable` (which is no
    /// definition: it does not end in `.xml`), whatever it is, or, when an earlier one
    /// is kept there, to `NAME.xml.unloadable.N`; returns that path.
    pub fn set_aside_unloadable_config(&self, name: &str) -> Result<PathBuf, Error> {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        let path = self.config_path(name);
        for attempt in 0..MAX_KEPT_UNLOADABLE {
            let mut aside = self.networks_dir.join(format!("{name}.xml.unloadable"));
            if attempt > 0 {
                aside.as_mut_os_string().push(format!(".{attempt}"));
            }
            match renameat2(
                AT_FDCWD,
                &path,
                AT_FDCWD,
                &aside,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(aside),
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(io_err("renaming", &path)(e.into())),
            }
        }
        Err(io_err("renaming", &path)(io::Error::other(format!(
            "{MAX_KEPT_UNLOADABLE} earlier copies are kept already"
        ))))
    }

    /// Puts back a definition file [`Store::set_aside_unloadable_config`] moved to
    /// `aside`.
    pub fn restore_unloadable_config(&self, name: &str, aside: &Path) -> Result<(), Error> {
        fs::rename(aside, self.config_path(name)).map_err(io_err("renaming", aside))
    }

    /// Moves a ports file that cannot be read out of the way, to `NAME.ports.unreadable`,
    /// so that the records it may hold are not overwritten; returns the new path.
    pub fn set_aside_ports(&self, name: &str) -> Result<PathBuf, Error> {
        let path = self.ports_path(name);
        let aside = self.status_dir.join(format!("{name}.ports.unreadable"));
        fs::rename(&path, &aside).map_err(io_err("renaming", &path))?;
        Ok(aside)
    }

    /// Whether a ports file of the network was set aside as unreadable: the devices its
    /// records named may still be in use.
    pub fn has_set_aside_ports(&self, name: &str) -> bool {
        self.status_dir
            .join(format!("{name}.ports.unreadable"))
            .exists()
    }

    /// Reads the ports of a network (none when it has no ports file).
    pub fn load_ports(&self, name: &str) -> Result<Vec<PortStatus>, Error> {
        let path = self.ports_path(name);
        match files::read_regular(&path, MAX_STATE_FILE_BYTES) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| Error::CorruptStatus { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Writes the ports of a network atomically (an empty list removes the file).
    pub fn save_ports(&self, name: &str, ports: &[PortStatus]) -> Result<(), Error> {
        let path = self.ports_path(name);
        if ports.is_empty() {
            return remove_if_exists(&path);
        }
        let bytes = serde_json::to_vec_pretty(ports).map_err(|e| Error::Io {
            action: "encoding",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        fits(&path, bytes.len(), MAX_STATE_FILE_BYTES)?;
        write_atomic(&path, &bytes)
    }

    /// How far this boot's autostart got.
    pub fn autostart_progress(&self) -> Result<AutostartProgress, Error> {
        let exists = |path: &Path| path.try_exists().map_err(io_err("looking at", path));
        if exists(&self.autostart_marker)? {
            return Ok(AutostartProgress::Done);
        }
        match files::read_text(&self.autostart_begun_marker) {
            Ok(text) => Ok(AutostartProgress::CutShort {
                under_way: text.lines().map(str::to_owned).collect(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AutostartProgress::NotBegun),
            Err(e) => Err(io_err("reading", &self.autostart_begun_marker)(e)),
        }
    }

    /// Records, in the autostart-begun marker, the networks whose autostart was under
    /// way when a daemon died (`under_way`) and the one being started now, if any: a
    /// daemon that dies during a start leaves that network counted by the next.
    /// Replaced by a rename (a marker on tmpfs: no fsync), so it is never read half
    /// written.
    pub fn note_autostarting(
        &self,
        under_way: &[String],
        starting: Option<&str>,
    ) -> Result<(), Error> {
        let mut text = String::new();
        for name in under_way.iter().map(String::as_str).chain(starting) {
            text.push_str(name);
            text.push('\n');
        }
        let marker = &self.autostart_begun_marker;
        // One daemon per state dir (its pid lock): a fixed name, which a later write replaces.
        let temp = marker.with_file_name(".autostarting.tmp");
        remove_if_exists(&temp)?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| fs::rename(&temp, marker))
            .map_err(io_err("writing", marker))
    }

    /// Marks that this boot's autostart began.
    pub fn mark_autostart_begun(&self) -> Result<(), Error> {
        touch(&self.autostart_begun_marker)
    }

    /// Marks that this boot's autostart is done: later daemons in this boot skip it.
    pub fn mark_autostarted(&self) -> Result<(), Error> {
        touch(&self.autostart_marker)
    }
}

/// How far this boot's autostart got ([`Store::autostart_progress`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutostartProgress {
    NotBegun,
    /// Begun by a daemon that died before its end (a hook that hung, the OOM killer).
    CutShort {
        /// The networks whose start was under way when a daemon died, oldest first.
        under_way: Vec<String>,
    },
    Done,
}

/// Creates `path` as an empty file if it is not there (a marker on tmpfs: no fsync).
fn touch(path: &Path) -> Result<(), Error> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        // One an older kvnetd left readable by all.
        .and_then(|file| file.set_permissions(fs::Permissions::from_mode(0o600)))
        .map_err(io_err("creating", path))
}

/// Whether `name` is that of a temporary file of [`write_atomic`] or of an autostart link
/// on its way: `.NAME.tmp-PID`.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name
            .rsplit_once(".tmp-")
            .is_some_and(|(_, pid)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

fn stem(path: &Path) -> Option<String> {
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.starts_with('.'))
        .map(str::to_owned)
}

/// Where kvnet's autostart link for network `name` points: its definition, relatively,
/// so the config dir can move.
fn own_autostart_target(name: &str) -> PathBuf {
    Path::new("..").join(format!("{name}.xml"))
}

fn xml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("listing", dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("listing", dir))?;
        let path = entry.path();
        // Symlinks followed, as libvirt opens what it lists. What is no regular file
        // (a symlink pointing nowhere, a FIFO, a directory) is listed too, and fails to
        // read with a message naming it.
        if path.extension().is_some_and(|ext| ext == "xml") {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `bytes` to `path` so that readers see either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        // Errors name the file the user knows, not the temporary one beside it. The
        // daemon's files are root's alone, as libvirt's are; and a temporary file left
        // by a crash, or a link put in its place, is replaced, never written through.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("writing", path)(e));
            }
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_err("writing", path))?;
        file.write_all(bytes).map_err(io_err("writing", path))?;
        file.sync_all().map_err(io_err("writing", path))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // The new content is in place: a caller told the write failed would act as if the
    // old one were, so a failure to make the rename durable is only logged.
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(path = %path.display(), "written, but maybe not durably: {e}");
    }
    Ok(())
}

/// Makes the entries of `dir` (a file just created or renamed into it) durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// [`remove_if_exists`], the removal made durable: an undefine or an autostart turned
/// off must not come back after a power loss.
fn remove_durably(path: &Path) -> Result<(), Error> {
    remove_if_exists(path)?;
    // It is gone: a caller told otherwise would act as if it were still there.
    if let Err(e) = sync_dir(path.parent().unwrap_or(Path::new("."))) {
        tracing::warn!(path = %path.display(), "removed, but maybe not durably: {e}");
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("removing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("etc"), &dir.path().join("run"));
        (dir, store)
    }

    #[test]
    fn ports_are_kept_beside_the_status_and_outlive_it() {
        let (_dir, store) = store();
        store.create_dirs().unwrap();
        assert_eq!(store.load_ports("net").unwrap(), []);
        let ports = vec![
            PortStatus {
                xml: "<networkport/>".into(),
                tap: "vnet0".into(),
                ifindex: 7,
                persistent: true,
                holder: None,
            },
            PortStatus {
                xml: "<networkport/>".into(),
                tap: "macvtap0".into(),
                ifindex: 8,
                persistent: false,
                holder: Some(crate::owner::ProcessId {
                    pid: 4242,
                    start_time: 987_654,
                }),
            },
        ];
        store.save_ports("net", &ports).unwrap();
        assert_eq!(store.load_ports("net").unwrap(), ports);
        // The ports file is not a status file.
        assert!(store.load_statuses().unwrap().is_empty());
        store.save_ports("net", &[]).unwrap();
        assert!(!store.ports_path("net").exists());
        store.save_ports("net", &ports).unwrap();
        store.delete_status("net").unwrap();
        assert_eq!(store.load_ports("net").unwrap(), ports);
        assert_eq!(store.ports_file_names().unwrap(), ["net"]);
        assert!(store.lease_file_names().unwrap().is_empty());
        fs::write(store.ports_path("net"), b"{").unwrap();
        assert!(matches!(
            store.load_ports("net"),
            Err(Error::CorruptStatus { .. })
        ));
    }

    #[test]
    fn a_definition_that_cannot_be_removed_keeps_its_autostart_link() {
        let (dir, store) = store();
        store.create_dirs().unwrap();
        // A directory in the definition's place: removing it as a file fails.
        fs::create_dir(dir.path().join("etc/networks/stuck.xml")).unwrap();
        store.set_autostart("stuck", true).unwrap();
        let link = dir.path().join("etc/networks/autostart/stuck.xml");
        assert!(store.delete_config("stuck").is_err());
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../stuck.xml"));

        store.save_config("gone", "<network/>").unwrap();
        store.set_autostart("gone", true).unwrap();
        store.delete_config("gone").unwrap();
        assert!(!dir.path().join("etc/networks/gone.xml").exists());
        assert!(fs::symlink_metadata(dir.path().join("etc/networks/autostart/gone.xml")).is_err());
    }

    #[test]
    fn configs_round_trip_with_autostart_links_in_libvirt_layout() {
        let (dir, store) = store();
        assert!(store.is_fresh());
        store.create_dirs().unwrap();
        store.save_config("default", "<network/>").unwrap();
        store
            .save_config("isolated", "<network><name>isolated</name></network>")
            .unwrap();
        store.set_autostart("default", true).unwrap();
        store.set_autostart("default", true).unwrap();

        let link = dir.path().join("etc/networks/autostart/default.xml");
        assert_eq!(fs::read_link(&link).unwrap(), Path::new("../default.xml"));
        let configs = store.load_configs().unwrap();
        let summary: Vec<_> = configs
            .iter()
            .map(|c| (c.file_name.as_str(), c.autostart, c.xml.as_deref().unwrap()))
            .collect();
        assert_eq!(
            summary,
            [
                ("default", true, "<network/>"),
                (
                    "isolated",
                    false,
                    "<network><name>isolated</name></network>"
                )
            ]
        );

        store.delete_config("default").unwrap();
        assert!(!link.exists() && fs::symlink_metadata(&link).is_err());
        assert_eq!(store.load_configs().unwrap().len(), 1);
        // No temporary files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("etc/networks"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn libvirt_absolute_autostart_links_count_and_become_ours() {
        let (dir, store) = store();
        store.create_dirs().unwrap();
        for name in ["here", "libvirt"] {
            store.save_config(name, "<network/>").unwrap();
        }
        // Copied from a libvirt host with `cp -a`: one points at this file, the other at
        // libvirt's, which this host does not have.
        let links = dir.path().join("etc/networks/autostart");
        std::os::unix::fs::symlink(
            dir.path().join("etc/networks/here.xml"),
            links.join("here.xml"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "/etc/libvirt/qemu/networks/libvirt.xml",
            links.join("libvirt.xml"),
        )
        .unwrap();
        assert!(store.remove_leftovers().unwrap().is_empty());
        let configs = store.load_configs().unwrap();
        assert!(configs.iter().all(|config| config.autostart));
        for name in ["here", "libvirt"] {
            assert_eq!(
                fs::read_link(links.join(format!("{name}.xml"))).unwrap(),
                Path::new("..").join(format!("{name}.xml"))
            );
        }
    }

    /// The status of a running network, as a start records it.
    fn active_status() -> Status {
        Status {
            version: STATUS_VERSION,
            phase: Phase::Active,
            bridge: "virbr0".into(),
            persistent: true,
            xml: "<network/>".into(),
            started_at: 1,
            pending_config: None,
        }
    }

    #[test]
    fn statuses_round_trip_and_corrupt_files_are_reported_alone() {
        let (dir, store) = store();
        store.create_dirs().unwrap();
        let status = active_status();
        store.save_status("default", &status).unwrap();
        fs::write(dir.path().join("run/networks/broken.json"), "{").unwrap();
        let mut statuses = store.load_statuses().unwrap();
        statuses.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(statuses[0].0, "broken");
        assert!(matches!(statuses[0].1, Err(Error::CorruptStatus { .. })));
        assert_eq!(statuses[1].1.as_ref().unwrap(), &status);
        store.delete_status("default").unwrap();
        store.delete_status("default").unwrap();
    }

    /// What the daemon writes, it reads back: a definition or state file larger than
    /// it reads is refused, and the file on disk is left as it was.
    #[test]
    fn files_larger_than_read_back_are_refused_and_leave_the_old_one() {
        let (_dir, store) = store();
        store.create_dirs().unwrap();
        let limit = usize::try_from(files::MAX_FILE_BYTES).unwrap();
        let big = "x".repeat(limit + 1);
        store.save_config("n", "<network/>").unwrap();
        assert!(matches!(
            store.save_config("n", &big),
            Err(Error::DefinitionTooLarge { bytes, .. }) if bytes == limit + 1
        ));
        assert_eq!(
            fs::read_to_string(store.config_path("n")).unwrap(),
            "<network/>"
        );
        store.save_config("n", &big[..limit]).unwrap();

        let status = active_status();
        store.save_status("n", &status).unwrap();
        let pending = Status {
            pending_config: Some(big.clone()),
            ..status.clone()
        };
        assert!(matches!(
            store.save_status("n", &pending),
            Err(Error::DefinitionTooLarge { .. })
        ));
        assert_eq!(store.load_status("n").unwrap(), status);
        // Two definitions at the limit, longer JSON-escaped (each backslash doubled), fit.
        let escaped = "\\n".repeat(limit / 2);
        let largest = Status {
            xml: escaped.clone(),
            pending_config: Some(escaped),
            ..status.clone()
        };
        store.save_status("n", &largest).unwrap();
        assert_eq!(store.load_status("n").unwrap(), largest);

        let port = PortStatus {
            xml: "x".repeat(limit),
            tap: "vnet0".into(),
            ifindex: 7,
            persistent: true,
            holder: None,
        };
        let ports = vec![port; 7];
        assert!(matches!(
            store.save_ports("n", &ports),
            Err(Error::TooLarge { .. })
        ));
        assert!(!store.ports_path("n").exists());
    }

    #[test]
    fn files_are_written_roots_alone_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.xml");
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, "kept").unwrap();
        // A link where the temporary file goes (by a crash's leftover name).
        let tmp = dir
            .path()
            .join(format!(".n.xml.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&elsewhere, &tmp).unwrap();
        write_atomic(&path, b"<network/>").unwrap();
        assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "kept");
        assert_eq!(fs::read_to_string(&path).unwrap(), "<network/>");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.exists());
    }

    #[test]
    fn temp_files_of_interrupted_writes_are_removed_and_nothing_else() {
        let (dir, store) = store();
        store.create_dirs().unwrap();
        store.save_config("n", "<network/>").unwrap();
        store.set_autostart("n", true).unwrap();
        let leftovers = [
            "etc/networks/.n.xml.tmp-4242",
            "etc/networks/autostart/.n.xml.tmp-4242",
            "run/networks/.n.json.tmp-4242",
            "run/networks/.n.leases.tmp-17",
        ];
        for file in leftovers {
            fs::write(dir.path().join(file), "half").unwrap();
        }
        let kept = [
            "run/networks/n.leases",
            "etc/networks/.hidden",
            "etc/networks/.x.tmp-",
        ];
        for file in kept {
            fs::write(dir.path().join(file), "keep").unwrap();
        }
        let mut removed = store.remove_leftovers().unwrap();
        removed.sort();
        let mut expected: Vec<PathBuf> = leftovers.iter().map(|f| dir.path().join(f)).collect();
        expected.sort();
        assert_eq!(removed, expected);
        for file in leftovers {
            assert!(!dir.path().join(file).exists(), "{file} left");
        }
        for file in kept
            .iter()
            .chain(&["etc/networks/n.xml", "etc/networks/autostart/n.xml"])
        {
            assert!(dir.path().join(file).exists(), "{file} removed");
        }
    }

    #[test]
    fn an_undefine_interrupted_after_the_definition_went_leaves_a_link_the_next_open_removes() {
        let (dir, store) = store();
        store.create_dirs().unwrap();
        for name in ["kept", "gone"] {
            store.save_config(name, "<network/>").unwrap();
            store.set_autostart(name, true).unwrap();
        }
        // What a daemon killed inside delete_config("gone") leaves.
        fs::remove_file(dir.path().join("etc/networks/gone.xml")).unwrap();
        let dangling = dir.path().join("etc/networks/autostart/gone.xml");
        assert!(fs::symlink_metadata(&dangling).is_ok());
        assert_eq!(
            store.remove_leftovers().unwrap(),
            std::slice::from_ref(&dangling)
        );
        assert!(fs::symlink_metadata(&dangling).is_err());
        let configs = store.load_configs().unwrap();
        assert_eq!(configs.len(), 1);
        assert!(configs[0].autostart && configs[0].file_name == "kept");
    }

    #[test]
    fn a_first_start_cut_short_is_a_first_start_again() {
        let (dir, store) = store();
        assert!(store.is_fresh());
        store.create_dirs().unwrap();
        // Killed before the default network was set up: still a first start.
        let again = Store::new(&dir.path().join("etc"), &dir.path().join("run"));
        assert!(again.is_fresh());
        again.create_dirs().unwrap();
        again.first_start_done().unwrap();
        assert!(!again.is_fresh());
        // Later starts set nothing up again.
        again.create_dirs().unwrap();
        assert!(!again.is_fresh());
    }

    #[test]
    fn autostart_marker_is_once_per_state_dir() {
        let (_dir, store) = store();
        store.create_dirs().unwrap();
        assert_eq!(
            store.autostart_progress().unwrap(),
            AutostartProgress::NotBegun
        );
        // One an older kvnetd left readable by all.
        fs::write(&store.autostart_begun_marker, "").unwrap();
        fs::set_permissions(
            &store.autostart_begun_marker,
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        store.mark_autostart_begun().unwrap();
        assert_eq!(
            store.autostart_progress().unwrap(),
            AutostartProgress::CutShort { under_way: vec![] }
        );
        store.note_autostarting(&[], Some("a")).unwrap();
        store.note_autostarting(&["a".into()], Some("b")).unwrap();
        assert_eq!(
            store.autostart_progress().unwrap(),
            AutostartProgress::CutShort {
                under_way: vec!["a".into(), "b".into()]
            }
        );
        store.mark_autostarted().unwrap();
        assert_eq!(store.autostart_progress().unwrap(), AutostartProgress::Done);
        store.mark_autostarted().unwrap();
        assert_eq!(store.autostart_progress().unwrap(), AutostartProgress::Done);
        // Root's alone, as every file of the daemon.
        for marker in [&store.autostart_begun_marker, &store.autostart_marker] {
            let mode = fs::metadata(marker).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", marker.display());
        }
    }
}
