//! The DHCPv6 lease database of one network: allocation from the ranges, reservations
//! by DUID or name, expiry, decline, and its file on disk.
//!
//! A lease belongs to one identity association of one client: (DUID, IAID). Memory is
//! bounded by the pool: only addresses of the ranges or of reservations are ever held.
//! Allocation walks the pool from a cursor, so a new client costs O(1) while the pool has
//! room (ranges hold at most 65,536 addresses each, as libvirt requires).
//!
//! Disk: the bound leases as JSON lines, rewritten whole (temp file, fsync, rename) by
//! [`LeaseDb::commit`] when a batch changed them, before the server sends its replies.
//! The file is untrusted input on load: invalid lines are skipped with a warning.
//! Unlike DHCPv4's append-only journal with group commit (built for thousands of
//! DORAs a second), a whole rewrite is simpler and enough here: DHCPv6 clients bind a
//! few addresses each at boot and renew once a day (the default lease).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Dhcp6Config, Dhcp6HostConfig, Error, Lease6Info};
use crate::dhcp::lease_time::{expiry_after, lease_secs};
use crate::dhcp::{format_mac, parse_hex_bytes, sanitize_hostname};

/// How long an advertised address stays held for the client it was advertised to.
pub const OFFER_HOLD_SECS: i64 = 60;
/// How long a declined address (in use by someone unknown) stays out of the pool.
pub const DECLINE_HOLD_SECS: i64 = 600;
/// Largest lease file read on load.
const MAX_FILE: u64 = 64 << 20;
/// Longest DUID accepted from a client (RFC 8415 11.1: 2 + 128 octets).
pub const MAX_DUID: usize = 130;

/// Who a lease belongs to: the client's DUID and the IAID of its IA_NA.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client identifier (option 1).
    pub duid: Box<[u8]>,
    /// Identity association id.
    pub iaid: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseState {
    /// Advertised, waiting for the REQUEST; not persisted.
    Offered,
    /// Bound by a REPLY and persisted.
    Bound,
    /// Declined: held by nobody until it expires.
    Declined,
}

#[derive(Clone, Debug)]
struct Lease {
    key: ClientKey,
    mac: Option<[u8; 6]>,
    hostname: Option<String>,
    /// Unix seconds; `i64::MAX` for an infinite lease.
    expiry: i64,
    state: LeaseState,
    /// When a bound lease was last bound or renewed, as [`LeaseDb::binds`] counted then
    /// (set by [`LeaseDb::insert`]).
    bound_seq: u64,
}

#[derive(Clone, Copy, Debug)]
struct PoolRange {
    start: u128,
    end: u128,
    lease: Option<u32>,
}

/// One line of the lease file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    ip: Ipv6Addr,
    duid: String,
    iaid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    /// Unix seconds; 0 for an infinite lease.
    expiry: i64,
}

/// A lease file line binding `ip` to the client `duid` (colon-separated hex) and
/// `iaid` until `expiry` (Unix seconds; 0 for never), for leases another server gave
/// (libvirt's dnsmasq): loading it checks it as any other line.
pub fn bind_line(
    ip: Ipv6Addr,
    duid: &str,
    iaid: u32,
    mac: Option<&str>,
    hostname: Option<&str>,
    expiry: i64,
) -> Vec<u8> {
    let record = Record {
        ip,
        duid: duid.to_owned(),
        iaid,
        mac: mac.map(str::to_owned),
        hostname: hostname.map(str::to_owned),
        expiry,
    };
    let mut line = Vec::new();
    let _ = crate::dhcp::push_json_line(&mut line, &record);
    line
}

/// What became of one record of the lease file.
#[derive(Debug, PartialEq, Eq)]
enum Loaded {
    Yes,
    /// Expired, or no longer allowed by the configuration.
    Stale,
    /// Unreadable.
    Invalid,
}

/// How many of the oldest offers a full pool looks at for one to take over: those of the
/// asking client itself are passed over, and a client holding thousands must not make
/// each of its requests a walk through them.
const TAKEOVER_LOOKAHEAD: usize = 64;

/// Most addresses the walk from a client's seed looks at before the cursor's takes over
/// (see [`LeaseDb::walk_from_seed`]).
const SEEDED_WALK: u128 = 64;

/// Where in a range a walk for a client starts: dnsmasq's seed (`address6_allocate`, the
/// IAID hashed with the DUID's bytes), so that a client that released its address, or a
/// guest moved from libvirt, is given the address it had again when it is still free.
fn client_seed(key: &ClientKey) -> u64 {
    key.duid.iter().fold(u64::from(key.iaid), |seed, &byte| {
        u64::from(byte)
            .wrapping_add(seed << 6)
            .wrapping_add(seed << 16)
            .wrapping_sub(seed)
    })
}

/// The lease database of one network.
#[derive(Debug)]
pub struct LeaseDb {
    network: String,
    subnet: ipnet::Ipv6Net,
    default_lease: u32,
    pool: Vec<PoolRange>,
    pool_size: u128,
    cursor: u128,
    hosts: Vec<Dhcp6HostConfig>,
    reserved_ips: HashSet<Ipv6Addr>,
    server_ip: Ipv6Addr,
    by_ip: HashMap<Ipv6Addr, Lease>,
    by_client: HashMap<ClientKey, Ipv6Addr>,
    /// Where the bound leases are kept; `None` in memory only.
    path: Option<PathBuf>,
    /// Bindings changed since the last commit.
    dirty: bool,
    /// Bumped by every binding change: what the DNS server follows.
    revision: u64,
    /// After a walk found the pool full: no address frees up before this time unless
    /// one is released (a flood of SOLICITs then costs no walk each).
    exhausted_until: Option<i64>,
    /// `(expiry, address)` of every pool address held only by an offer, oldest first:
    /// a full pool takes the oldest over.
    offers: BTreeSet<(i64, Ipv6Addr)>,
    /// Bindings and renewals made (loaded ones included): orders the leases that claim
    /// one name within the same second.
    binds: u64,
}

impl LeaseDb {
    /// An in-memory database (tests, fuzzing).
    pub fn in_memory(config: &Dhcp6Config) -> LeaseDb {
        let mut db = LeaseDb {
            network: config.network.clone(),
            subnet: config.subnet,
            default_lease: lease_secs(config.default_lease),
            pool: Vec::new(),
            pool_size: 0,
            cursor: 0,
            hosts: Vec::new(),
            reserved_ips: HashSet::new(),
            server_ip: config.server_ip,
            by_ip: HashMap::new(),
            by_client: HashMap::new(),
            path: None,
            dirty: false,
            revision: 0,
            exhausted_until: None,
            offers: BTreeSet::new(),
            binds: 0,
        };
        db.configure(config);
        db
    }

    /// Loads `path` (a missing file is an empty database), dropping expired leases and
    /// those the configuration does not allow. Writes nothing.
    pub fn open(config: &Dhcp6Config, path: &Path, now: i64) -> Result<LeaseDb, Error> {
        let mut db = LeaseDb::in_memory(config);
        let mut text = Vec::new();
        match crate::files::open_regular(std::fs::File::options().read(true), path) {
            Ok(file) => {
                file.take(MAX_FILE)
                    .read_to_end(&mut text)
                    .map_err(|source| Error::LeaseFile {
                        network: config.network.clone(),
                        path: path.to_path_buf(),
                        action: "read",
                        source,
                    })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::LeaseFile {
                    network: config.network.clone(),
                    path: path.to_path_buf(),
                    action: "open",
                    source,
                });
            }
        }
        // What was dropped goes from the file at the next commit
        // ([`LeaseDb::forget_dropped`] for a server starting).
        db.dirty = db.load(&text, now) > 0;
        db.path = Some(path.to_path_buf());
        Ok(db)
    }

    /// Rewrites the file without the records its load dropped, so that they are not
    /// read, and warned about, again; for a server starting (a look at the leases of a
    /// stopped network writes nothing).
    pub fn forget_dropped(&mut self, now: i64) {
        if let Err(e) = self.commit(now) {
            tracing::warn!(network = %self.network, error = %crate::errors::error_chain(&e), "DHCPv6 lease file keeps its dropped records until the next change");
        }
    }

    /// Loads the records of `text`; returns how many were dropped. Expired ones, and
    /// those the configuration no longer allows, are dropped quietly, as leases expire
    /// while the daemon runs; unreadable ones are warned about.
    fn load(&mut self, text: &[u8], now: i64) -> usize {
        let (mut invalid, mut stale) = (0usize, 0usize);
        for line in text.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line)
                .ok()
                .map(|record| self.load_record(record, now))
            {
                Some(Loaded::Yes) => {}
                Some(Loaded::Stale) => stale += 1,
                Some(Loaded::Invalid) | None => invalid += 1,
            }
        }
        if invalid > 0 {
            tracing::warn!(network = %self.network, skipped = invalid, "DHCPv6 lease file: skipped unreadable records");
        }
        if stale > 0 {
            tracing::debug!(network = %self.network, stale, "DHCPv6 lease file: dropped expired or no longer allowed leases");
        }
        invalid + stale
    }

    fn load_record(&mut self, record: Record, now: i64) -> Loaded {
        let Some(duid) = parse_hex_bytes(&record.duid, MAX_DUID) else {
            return Loaded::Invalid;
        };
        let mac = match record.mac {
            Some(text) => match parse_hex_bytes(&text, 6).and_then(|m| <[u8; 6]>::try_from(m).ok())
            {
                Some(mac) => Some(mac),
                None => return Loaded::Invalid,
            },
            None => None,
        };
        let expiry = if record.expiry == 0 {
            i64::MAX
        } else {
            record.expiry
        };
        let key = ClientKey {
            duid: duid.into(),
            iaid: record.iaid,
        };
        let hostname = record.hostname.as_deref().and_then(sanitize_hostname);
        // A lease on a reserved address is kept: its holder's own, or one bound before
        // the address was reserved for another client, which keeps it until its next
        // renewal as while the daemon runs (two guests never share an address).
        let reservation = self.hosts.iter().find(|host| host.ip == record.ip).cloned();
        if expiry <= now
            || !self.assignable(&key, reservation.as_ref(), record.ip, now)
            || self.by_client.contains_key(&key)
        {
            return Loaded::Stale;
        }
        self.insert(
            record.ip,
            Lease {
                key,
                mac,
                hostname,
                expiry,
                state: LeaseState::Bound,
                bound_seq: 0,
            },
        );
        Loaded::Yes
    }

    /// Applies a (new) configuration; leases are kept, and those it no longer allows
    /// are refused at their next renewal. Offers on addresses it reserves are dropped.
    pub fn configure(&mut self, config: &Dhcp6Config) {
        self.network = config.network.clone();
        self.subnet = config.subnet;
        self.server_ip = config.server_ip;
        self.default_lease = lease_secs(config.default_lease);
        self.pool = config
            .ranges
            .iter()
            .filter(|(start, end, _)| {
                let usable =
                    config.subnet.contains(start) && config.subnet.contains(end) && start <= end;
                if !usable {
                    tracing::warn!(network = %config.network, %start, %end, "dhcp range outside the subnet, ignored");
                }
                usable
            })
            .map(|&(start, end, lease)| PoolRange {
                start: u128::from(start),
                end: u128::from(end),
                lease: lease.map(lease_secs),
            })
            .collect();
        self.pool_size = self.pool.iter().map(|r| r.end - r.start + 1).sum();
        self.hosts = config.hosts.clone();
        self.exhausted_until = None;
        self.reserved_ips = self.hosts.iter().map(|host| host.ip).collect();
        let stale: Vec<Ipv6Addr> = self
            .by_ip
            .iter()
            .filter(|(ip, lease)| {
                lease.state == LeaseState::Offered
                    && (self.reserved_ips.contains(ip) || !self.in_pool(**ip))
            })
            .map(|(&ip, _)| ip)
            .collect();
        for ip in stale {
            self.remove(ip);
        }
    }

    /// The reservation of a client: by DUID, else (for hosts without `id`) by the name
    /// the client sent in its FQDN option, in any case.
    pub fn reservation(&self, duid: &[u8], name: Option<&str>) -> Option<&Dhcp6HostConfig> {
        self.hosts
            .iter()
            .find(|host| host.duid.as_deref() == Some(duid))
            .or_else(|| {
                let name = name?;
                self.hosts.iter().find(|host| {
                    host.duid.is_none()
                        && host
                            .name
                            .as_deref()
                            .and_then(sanitize_hostname)
                            .is_some_and(|host_name| host_name.eq_ignore_ascii_case(name))
                })
            })
    }

    /// The reservation of the client `duid`, which sent `name` (if any) and asks about
    /// its IAs `iaids`: by DUID, by that name, else by the name one of those IAs' bindings
    /// carries (a renewal need not send the FQDN again, RFC 4704).
    pub fn reservation_of(
        &self,
        duid: &[u8],
        name: Option<&str>,
        iaids: &[u32],
        now: i64,
    ) -> Option<&Dhcp6HostConfig> {
        self.reservation(duid, name).or_else(|| {
            iaids.iter().find_map(|&iaid| {
                let key = ClientKey {
                    duid: duid.into(),
                    iaid,
                };
                let ip = self.binding(&key, now)?;
                let hostname = self.by_ip.get(&ip)?.hostname.as_deref()?;
                self.reservation(duid, Some(hostname))
            })
        })
    }

    /// The IA (its IAID) of the client `duid` bound to `ip` now, if any.
    pub fn iaid_holding(&self, duid: &[u8], ip: Ipv6Addr, now: i64) -> Option<u32> {
        self.by_ip
            .get(&ip)
            .filter(|lease| {
                *lease.key.duid == *duid && lease.state == LeaseState::Bound && lease.expiry > now
            })
            .map(|lease| lease.key.iaid)
    }

    /// Whether a client whose reservation is `reservation` may go by `name`, a name it
    /// gave: not by another reservation's name (dnsmasq does not let a client's name
    /// override a configured one), or a guest would answer for another one in DNS.
    pub fn may_take_name(&self, name: &str, reservation: Option<&Dhcp6HostConfig>) -> bool {
        !self.hosts.iter().any(|host| {
            Some(host) != reservation
                && host
                    .name
                    .as_deref()
                    .and_then(sanitize_hostname)
                    .is_some_and(|reserved| reserved.eq_ignore_ascii_case(name))
        })
    }

    /// Lease time of `ip` for a client with `reservation`: the host's `<lease>`, else
    /// the `<lease>` of the range holding the address, else the default.
    pub fn lease_secs(&self, reservation: Option<&Dhcp6HostConfig>, ip: Ipv6Addr) -> u32 {
        if let Some(lease) = reservation.and_then(|host| host.lease) {
            return lease_secs(lease);
        }
        let ip = u128::from(ip);
        self.pool
            .iter()
            .find(|range| range.start <= ip && ip <= range.end)
            .or_else(|| self.pool.first())
            .and_then(|range| range.lease)
            .unwrap_or(self.default_lease)
    }

    fn in_pool(&self, ip: Ipv6Addr) -> bool {
        let ip = u128::from(ip);
        self.pool.iter().any(|r| r.start <= ip && ip <= r.end)
    }

    /// Whether `ip` may be given to `key` (whose reservation is `reservation`) now.
    pub fn assignable(
        &self,
        key: &ClientKey,
        reservation: Option<&Dhcp6HostConfig>,
        ip: Ipv6Addr,
        now: i64,
    ) -> bool {
        let own_reservation = reservation.is_some_and(|host| host.ip == ip);
        if !self.subnet.contains(&ip) || ip == self.server_ip {
            return false;
        }
        if !own_reservation && (self.reserved_ips.contains(&ip) || !self.in_pool(ip)) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(lease) if lease.expiry <= now => true,
            Some(lease) => lease.key == *key && lease.state != LeaseState::Declined,
        }
    }

    /// The address to give `key` in an ADVERTISE or REPLY: its current lease, its
    /// reservation, the address it asked for (`hint`), or a free one from the pool.
    /// The address is held for the client for [`OFFER_HOLD_SECS`] unless bound already.
    pub fn offer(
        &mut self,
        key: &ClientKey,
        reservation: Option<&Dhcp6HostConfig>,
        hint: Option<Ipv6Addr>,
        now: i64,
    ) -> Option<Ipv6Addr> {
        let current = self
            .by_client
            .get(key)
            .copied()
            .filter(|&ip| self.assignable(key, reservation, ip, now));
        // A reservation wins over the client's other lease and over an offer on its
        // address, not over another client's binding made before the reservation: two
        // guests must never share the address. Until that client moves at its next
        // renewal, the pool serves this one, as dnsmasq does.
        let reserved = reservation
            .map(|host| host.ip)
            .filter(|&ip| !self.bound_to_another(key, ip, now) && !self.declined(ip, now));
        let ip = match (reserved, current) {
            (Some(reserved), _) => {
                if let Some(holder) = self.by_ip.get(&reserved)
                    && holder.key != *key
                {
                    self.remove_binding(reserved);
                }
                reserved
            }
            (None, Some(current)) => current,
            (None, None) => match hint.filter(|&ip| self.assignable(key, None, ip, now)) {
                Some(hint) => hint,
                None => self.allocate(key, now)?,
            },
        };
        let bound = self
            .by_ip
            .get(&ip)
            .is_some_and(|lease| lease.key == *key && lease.state == LeaseState::Bound);
        if !bound {
            self.insert(
                ip,
                Lease {
                    key: key.clone(),
                    mac: None,
                    hostname: None,
                    expiry: now.saturating_add(OFFER_HOLD_SECS),
                    state: LeaseState::Offered,
                    bound_seq: 0,
                },
            );
        }
        Some(ip)
    }

    /// Whether a client other than `key`'s (another DUID: the same one with another
    /// IAID is the same client) has a live binding on `ip`.
    fn bound_to_another(&self, key: &ClientKey, ip: Ipv6Addr, now: i64) -> bool {
        self.by_ip.get(&ip).is_some_and(|lease| {
            lease.key.duid != key.duid && lease.state == LeaseState::Bound && lease.expiry > now
        })
    }

    /// Whether `ip` is held after a DECLINE (someone else answers for it).
    fn declined(&self, ip: Ipv6Addr, now: i64) -> bool {
        self.by_ip
            .get(&ip)
            .is_some_and(|lease| lease.state == LeaseState::Declined && lease.expiry > now)
    }

    /// A free pool address, from the client's seed or else from the cursor on; when none
    /// is, the oldest address only held by an offer is taken over, as the DHCPv4 pool
    /// does, so a flood of SOLICITs cannot lock real clients out for the offer hold time.
    fn allocate(&mut self, key: &ClientKey, now: i64) -> Option<Ipv6Addr> {
        let walks = self.exhausted_until.is_none_or(|until| now >= until);
        if walks && let Some(ip) = self.allocate_free(key, now) {
            return Some(ip);
        }
        // Another client's: one message's IAs must not take each other's offers.
        let taken = self
            .offers
            .iter()
            .take(TAKEOVER_LOOKAHEAD)
            .map(|&(_, ip)| ip)
            .find(|ip| {
                self.by_ip
                    .get(ip)
                    .is_some_and(|lease| lease.key.duid != key.duid)
            });
        match taken {
            Some(ip) => {
                self.remove(ip);
                Some(ip)
            }
            None => {
                if walks {
                    tracing::warn!(network = %self.network, "DHCPv6 range full: no address to give");
                }
                None
            }
        }
    }

    fn allocate_free(&mut self, key: &ClientKey, now: i64) -> Option<Ipv6Addr> {
        if let Some(ip) = self.walk_from_seed(key, now) {
            if self.by_ip.contains_key(&ip) {
                self.remove(ip);
            }
            return Some(ip);
        }
        let size = self.pool_size.max(1);
        for step in 0..self.pool_size {
            let position = (self.cursor + step) % size;
            let ip = self.pool_address(position)?;
            if self.assignable(key, None, ip, now) {
                self.cursor = (position + 1) % size;
                if self.by_ip.contains_key(&ip) {
                    self.remove(ip);
                }
                return Some(ip);
            }
        }
        self.exhausted_until = Some(
            self.by_ip
                .values()
                .map(|lease| lease.expiry)
                .min()
                .unwrap_or(i64::MAX),
        );
        None
    }

    /// dnsmasq's walk: in each range in order, from where `key`'s seed points, the first
    /// address free to give. Its first [`SEEDED_WALK`] only: in a crowded pool a longer
    /// walk would cost each SOLICIT a scan, on the thread every network's servers share.
    fn walk_from_seed(&self, key: &ClientKey, now: i64) -> Option<Ipv6Addr> {
        let seed = u128::from(client_seed(key));
        self.pool.iter().find_map(|range| {
            let len = range.end - range.start + 1;
            let start = seed % len;
            (0..len.min(SEEDED_WALK))
                .map(|step| Ipv6Addr::from(range.start + (start + step) % len))
                .find(|&ip| self.assignable(key, None, ip, now))
        })
    }

    fn pool_address(&self, mut position: u128) -> Option<Ipv6Addr> {
        for range in &self.pool {
            let size = range.end - range.start + 1;
            if position < size {
                return Some(Ipv6Addr::from(range.start + position));
            }
            position -= size;
        }
        None
    }

    /// Binds `ip` to `key` for `secs` (see [`LeaseDb::lease_secs`]); the caller checked
    /// [`LeaseDb::assignable`] or got `ip` from [`LeaseDb::offer`].
    pub fn bind(
        &mut self,
        key: &ClientKey,
        ip: Ipv6Addr,
        mac: Option<[u8; 6]>,
        hostname: Option<String>,
        secs: u32,
        now: i64,
    ) {
        if let Some(old) = self.by_client.get(key).copied()
            && old != ip
        {
            self.remove(old);
            self.freed();
        }
        if self.by_ip.get(&ip).is_some_and(|lease| lease.key != *key) {
            self.remove(ip);
        }
        self.insert(
            ip,
            Lease {
                key: key.clone(),
                mac,
                hostname,
                expiry: expiry_after(now, secs),
                state: LeaseState::Bound,
                bound_seq: 0,
            },
        );
        self.changed();
    }

    /// Records a binding change: to commit, and for the DNS server to follow.
    fn changed(&mut self) {
        self.dirty = true;
        self.revision = self.revision.wrapping_add(1);
    }

    /// Moves whenever a binding changes (bound, renewed, released, declined).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The live binding of `key`, if any.
    pub fn binding(&self, key: &ClientKey, now: i64) -> Option<Ipv6Addr> {
        let ip = *self.by_client.get(key)?;
        self.by_ip
            .get(&ip)
            .filter(|lease| lease.state == LeaseState::Bound && lease.expiry > now)
            .map(|_| ip)
    }

    /// The name the live binding of `key` goes by, if it has both.
    pub fn bound_name(&self, key: &ClientKey, now: i64) -> Option<&str> {
        let ip = self.binding(key, now)?;
        self.by_ip.get(&ip)?.hostname.as_deref()
    }

    /// Frees `ip` if `key` holds it; whether it did.
    pub fn release(&mut self, key: &ClientKey, ip: Ipv6Addr) -> bool {
        if self.by_ip.get(&ip).is_some_and(|lease| lease.key == *key) {
            self.remove(ip);
            self.freed();
            self.changed();
            return true;
        }
        false
    }

    /// Takes `ip`, held by `key`, out of the pool for a while; whether `key` held it.
    pub fn decline(&mut self, key: &ClientKey, ip: Ipv6Addr, now: i64) -> bool {
        if !self.by_ip.get(&ip).is_some_and(|lease| lease.key == *key) {
            return false;
        }
        self.remove(ip);
        self.changed();
        // A reserved address too (RFC 8415 18.4.8): its client is served from the pool
        // meanwhile, rather than offered the address it just found taken.
        self.insert(
            ip,
            Lease {
                // Nobody's: an empty DUID is never a client's key.
                key: ClientKey {
                    duid: Box::default(),
                    iaid: 0,
                },
                mac: None,
                hostname: None,
                expiry: now.saturating_add(DECLINE_HOLD_SECS),
                state: LeaseState::Declined,
                bound_seq: 0,
            },
        );
        true
    }

    /// Puts `lease` on `ip`, replacing whoever held it; a client's IA holds one address,
    /// so its previous one is freed. Declined addresses belong to nobody.
    fn insert(&mut self, ip: Ipv6Addr, mut lease: Lease) {
        if lease.state == LeaseState::Bound {
            self.binds += 1;
            lease.bound_seq = self.binds;
        }
        self.remove_binding(ip);
        if lease.state != LeaseState::Declined {
            if let Some(old) = self.by_client.get(&lease.key).copied()
                && old != ip
            {
                self.remove_binding(old);
                self.freed();
            }
            self.by_client.insert(lease.key.clone(), ip);
        }
        if lease.state == LeaseState::Offered && !self.reserved_ips.contains(&ip) {
            self.offers.insert((lease.expiry, ip));
        }
        self.by_ip.insert(ip, lease);
    }

    /// [`LeaseDb::remove`], recording the change when a binding goes with it (an offer
    /// that moves a client to its new reservation ends its old binding).
    fn remove_binding(&mut self, ip: Ipv6Addr) {
        if self
            .by_ip
            .get(&ip)
            .is_some_and(|lease| lease.state == LeaseState::Bound)
        {
            self.changed();
        }
        self.remove(ip);
    }

    /// Takes the lease off `ip`. An address this leaves free reopens a full pool:
    /// the caller says so with [`LeaseDb::freed`].
    fn remove(&mut self, ip: Ipv6Addr) {
        let Some(lease) = self.by_ip.remove(&ip) else {
            return;
        };
        if lease.state == LeaseState::Offered {
            self.offers.remove(&(lease.expiry, ip));
        }
        if self.by_client.get(&lease.key) == Some(&ip) {
            self.by_client.remove(&lease.key);
        }
    }

    /// Records that an address went back to the pool.
    fn freed(&mut self) {
        self.exhausted_until = None;
    }

    /// The bound, unexpired leases, by address.
    pub fn leases(&self, now: i64) -> Vec<Lease6Info> {
        let mut leases: Vec<Lease6Info> = self.bound(now).map(|(_, info)| info).collect();
        leases.sort_by_key(|lease| lease.ip);
        leases
    }

    /// The bound, unexpired leases in the order they were bound or last renewed, oldest
    /// first, as [`super::dns_names`] takes them.
    pub fn leases_by_binding(&self, now: i64) -> Vec<Lease6Info> {
        crate::dhcp::in_binding_order(self.bound(now))
    }

    fn bound(&self, now: i64) -> impl Iterator<Item = (u64, Lease6Info)> + '_ {
        self.by_ip
            .iter()
            .filter(move |(_, lease)| lease.state == LeaseState::Bound && lease.expiry > now)
            .map(|(&ip, lease)| {
                let info = Lease6Info {
                    expiry_unix: if lease.expiry == i64::MAX {
                        0
                    } else {
                        lease.expiry
                    },
                    duid: lease.key.duid.to_vec(),
                    iaid: lease.key.iaid,
                    mac: lease.mac,
                    ip,
                    hostname: lease.hostname.clone(),
                };
                (lease.bound_seq, info)
            })
    }

    /// Writes the bound leases to the file if bindings changed since the last commit.
    /// Blocking (fsync): the server takes the changes with [`LeaseDb::take_changes`]
    /// instead, and writes them off the runtime thread.
    pub fn commit(&mut self, now: i64) -> Result<(), Error> {
        match self.take_changes(now) {
            Some(write) => write.write().inspect_err(|_| self.write_failed()),
            None => Ok(()),
        }
    }

    /// The bound leases to write, if bindings changed since they were last taken; a
    /// write that then fails is reported with [`LeaseDb::write_failed`].
    pub fn take_changes(&mut self, now: i64) -> Option<LeaseFileWrite> {
        let path = self.path.clone();
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        Some(LeaseFileWrite {
            network: self.network.clone(),
            path: path?,
            leases: self.leases(now),
        })
    }

    /// The last changes taken were not written: the next commit writes them again.
    pub fn write_failed(&mut self) {
        self.dirty = true;
    }
}

/// The bound leases of one network, to be written to its lease file. The whole file is
/// written (its leases number no more than the pool), with a blocking fsync.
#[derive(Debug)]
pub struct LeaseFileWrite {
    network: String,
    path: PathBuf,
    leases: Vec<Lease6Info>,
}

impl LeaseFileWrite {
    /// Writes the file atomically.
    pub fn write(self) -> Result<(), Error> {
        let mut text = Vec::new();
        for lease in self.leases {
            let record = Record {
                ip: lease.ip,
                duid: format_mac(&lease.duid),
                iaid: lease.iaid,
                mac: lease.mac.map(|mac| format_mac(&mac)),
                hostname: lease.hostname,
                expiry: lease.expiry_unix,
            };
            let _ = crate::dhcp::push_json_line(&mut text, &record);
        }
        crate::store::write_atomic(&self.path, &text).map_err(|e| Error::LeaseFile {
            network: self.network,
            path: self.path,
            action: "write",
            source: std::io::Error::other(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::lease_time::INFINITE;
    use std::time::Duration;

    fn config() -> Dhcp6Config {
        super::super::engine::tests::config()
    }

    fn key(n: u8) -> ClientKey {
        ClientKey {
            duid: vec![0, 3, 0, 1, 0x52, 0x54, 0, 0, 0, n].into(),
            iaid: 1,
        }
    }

    fn ip(text: &str) -> Ipv6Addr {
        text.parse().unwrap()
    }

    #[test]
    fn pool_runs_out_and_released_addresses_come_back() {
        let mut config = config();
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::11"), None)];
        config.hosts.clear();
        let mut db = LeaseDb::in_memory(&config);
        let a = db.offer(&key(1), None, None, 0).unwrap();
        let b = db.offer(&key(2), None, None, 0).unwrap();
        assert_ne!(a, b);
        db.bind(&key(1), a, None, None, 3600, 0);
        db.bind(&key(2), b, None, None, 30, 0);
        assert_eq!(db.offer(&key(3), None, None, 0), None, "pool of two");
        assert_eq!(db.exhausted_until, Some(30));
        assert_eq!(db.offer(&key(5), None, None, 1), None, "no walk until then");
        // Leases lapse. Renewing one frees nothing.
        db.bind(&key(1), a, None, None, 3600, 1);
        assert_eq!(db.exhausted_until, Some(30));
        let c = db.offer(&key(3), None, None, 31).unwrap();
        assert_eq!(c, b);
        assert!(db.release(&key(1), a));
        assert!(!db.release(&key(1), a));
        assert_eq!(db.offer(&key(4), None, None, 31), Some(a));
    }

    /// A client is offered where dnsmasq's seed for it points: dhclient -D LL with these
    /// MACs got these very addresses from libvirt's dnsmasq 2.90 and from kvnetd on
    /// fd16::10-fd16::ff. So a guest that released its address gets it back, and one
    /// moved from libvirt the one it had.
    #[test]
    fn clients_are_offered_where_dnsmasqs_seed_points_and_get_it_back() {
        let mut config = config();
        config.ranges = vec![(ip("fd16::10"), ip("fd16::ff"), None)];
        config.subnet = "fd16::/64".parse().unwrap();
        config.server_ip = ip("fd16::1");
        config.hosts.clear();
        let dhclient = |mac: [u8; 6]| ClientKey {
            duid: [&[0, 3, 0, 1][..], &mac].concat().into(),
            iaid: u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
        };
        let mut db = LeaseDb::in_memory(&config);
        let x = dhclient([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        for (mac, expected) in [
            ([0x52, 0x54, 0, 0x12, 0x34, 0x56], "fd16::b0"),
            ([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc], "fd16::bd"),
            ([0x02, 0x11, 0x22, 0x33, 0x44, 0x55], "fd16::aa"),
        ] {
            let key = dhclient(mac);
            let offered = db.offer(&key, None, None, 0).unwrap();
            assert_eq!(offered, ip(expected), "{mac:02x?}");
            db.bind(&key, offered, None, None, 3600, 0);
        }
        assert!(db.release(&x, ip("fd16::b0")));
        let y = key(9);
        let offered = db.offer(&y, None, None, 1).unwrap();
        db.bind(&y, offered, None, None, 3600, 1);
        assert_eq!(db.offer(&x, None, None, 2), Some(ip("fd16::b0")));
    }

    /// Two guests that claim one name: DNS answers the one that claimed it last (even in
    /// the same second, whichever address sorts first), with each of its addresses.
    #[test]
    fn of_two_clients_claiming_a_name_the_later_one_answers() {
        let mut config = config();
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::20"), None)];
        config.hosts.clear();
        let mut db = LeaseDb::in_memory(&config);
        let dup = || Some("dup".to_owned());
        db.bind(&key(1), ip("2001:db8:ca2:2::15"), None, dup(), 3600, 0);
        db.bind(&key(2), ip("2001:db8:ca2:2::11"), None, dup(), 3600, 0);
        let second_ia = ClientKey { iaid: 2, ..key(2) };
        db.bind(&second_ia, ip("2001:db8:ca2:2::12"), None, dup(), 3600, 0);
        let mut names = super::super::dns_names(db.leases_by_binding(0));
        names.sort();
        assert_eq!(
            names,
            [
                (ip("2001:db8:ca2:2::11"), "dup".to_owned()),
                (ip("2001:db8:ca2:2::12"), "dup".to_owned())
            ]
        );
        db.bind(&key(1), ip("2001:db8:ca2:2::15"), None, dup(), 3600, 0);
        assert_eq!(
            super::super::dns_names(db.leases_by_binding(0)),
            [(ip("2001:db8:ca2:2::15"), "dup".to_owned())]
        );
    }

    /// A flood of SOLICITs (made-up DUIDs, or 80 IAs a message) held every address for
    /// the offer hold time: a real client got none. Now the oldest offer is taken over.
    #[test]
    fn a_full_pool_takes_over_the_oldest_offer_not_a_binding() {
        let mut config = config();
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::12"), None)];
        config.hosts.clear();
        let mut db = LeaseDb::in_memory(&config);
        let bound = db.offer(&key(1), None, None, 0).unwrap();
        db.bind(&key(1), bound, None, None, 3600, 0);
        let older = db.offer(&key(2), None, None, 1).unwrap();
        let newer = db.offer(&key(3), None, None, 2).unwrap();
        assert_eq!(db.offer(&key(4), None, None, 3), Some(older));
        assert_eq!(db.offer(&key(5), None, None, 4), Some(newer));
        // key 2 lost its offer: it is offered the next oldest, key 4's.
        assert_eq!(db.offer(&key(2), None, None, 5), Some(older));
        assert_eq!(db.binding(&key(1), 5), Some(bound));
        assert!(db.offers.len() <= 2, "{:?}", db.offers);
    }

    /// One SOLICIT's IAs do not take each other's offers, and a range that shrank takes
    /// back no offer outside it.
    #[test]
    fn a_takeover_passes_over_the_clients_own_offers_and_those_out_of_the_range() {
        let mut config = config();
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::11"), None)];
        config.hosts.clear();
        let mut db = LeaseDb::in_memory(&config);
        let other_ia = ClientKey { iaid: 2, ..key(1) };
        let first = db.offer(&key(1), None, None, 0).unwrap();
        let second = db.offer(&other_ia, None, None, 0).unwrap();
        assert_ne!(first, second);
        let third_ia = ClientKey { iaid: 3, ..key(1) };
        assert_eq!(db.offer(&third_ia, None, None, 0), None);
        assert_eq!(db.offer(&key(2), None, None, 1), Some(first));

        // ::11 leaves the range while offered: it is no longer given out.
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::10"), None)];
        db.configure(&config);
        db.bind(&key(2), first, None, None, 3600, 1);
        assert_eq!(db.offer(&key(3), None, None, 2), None);
    }

    #[test]
    fn a_binding_an_offer_moves_is_a_change() {
        let config = config();
        let host = config.hosts[0].clone();
        let mut unreserved = config.clone();
        unreserved.hosts.clear();
        let mut db = LeaseDb::in_memory(&unreserved);
        let reserved_key = ClientKey {
            duid: host.duid.clone().unwrap().into(),
            iaid: 7,
        };
        let pool = db.offer(&reserved_key, None, None, 0).unwrap();
        db.bind(&reserved_key, pool, None, None, 3600, 0);
        db.commit(0).unwrap();
        // The reservation arrives; the client's next SOLICIT is offered it, which ends
        // its pool binding: the DNS server and the lease file must hear of it.
        db.configure(&config);
        let revision = db.revision();
        assert_eq!(db.offer(&reserved_key, Some(&host), None, 1), Some(host.ip));
        assert_eq!(db.binding(&reserved_key, 1), None);
        assert_ne!(db.revision(), revision);
        assert!(db.dirty);
    }

    #[test]
    fn a_reserved_address_offered_to_another_ia_of_its_client_is_a_change() {
        let config = config();
        let host = config.hosts[0].clone();
        let mut db = LeaseDb::in_memory(&config);
        let ia = |iaid| ClientKey {
            duid: host.duid.clone().unwrap().into(),
            iaid,
        };
        assert_eq!(db.offer(&ia(1), Some(&host), None, 0), Some(host.ip));
        db.bind(&ia(1), host.ip, None, None, 3600, 0);
        db.commit(0).unwrap();
        let revision = db.revision();
        assert_eq!(db.offer(&ia(2), Some(&host), None, 1), Some(host.ip));
        assert_eq!(db.binding(&ia(1), 1), None);
        assert_ne!(db.revision(), revision);
        assert!(db.dirty);
    }

    #[test]
    fn a_reservation_wins_and_reserved_addresses_stay_out_of_the_pool() {
        let config = config();
        let mut db = LeaseDb::in_memory(&config);
        let host = config.hosts[0].clone();
        assert_eq!(
            db.reservation(host.duid.as_deref().unwrap(), None),
            Some(&host)
        );
        let by_name = db.reservation(&[9, 9], Some("paul")).cloned();
        assert_eq!(by_name.as_ref().map(|h| h.ip), Some(config.hosts[1].ip));
        assert!(!db.assignable(&key(1), None, host.ip, 0));
        let reserved_key = ClientKey {
            duid: host.duid.clone().unwrap().into(),
            iaid: 7,
        };
        assert_eq!(db.offer(&reserved_key, Some(&host), None, 0), Some(host.ip));
        db.bind(&reserved_key, host.ip, None, None, 3600, 0);
        assert_eq!(db.binding(&reserved_key, 1), Some(host.ip));
    }

    #[test]
    fn a_reservation_waits_for_another_clients_binding_on_its_address() {
        let mut config = config();
        // An address of the pool, which a client could lease before it was reserved.
        config.hosts[0].ip = ip("2001:db8:ca2:2:1::30");
        let host = config.hosts[0].clone();
        let mut unreserved = config.clone();
        unreserved.hosts.clear();
        let mut db = LeaseDb::in_memory(&unreserved);
        assert_eq!(db.offer(&key(1), None, Some(host.ip), 0), Some(host.ip));
        db.bind(&key(1), host.ip, None, None, 3600, 0);
        // The reservation arrives by a live update.
        db.configure(&config);
        let reserved_key = ClientKey {
            duid: host.duid.clone().unwrap().into(),
            iaid: 7,
        };
        let interim = db.offer(&reserved_key, Some(&host), None, 1).unwrap();
        assert_ne!(interim, host.ip, "two guests would share the address");
        db.bind(&reserved_key, interim, None, None, 3600, 1);
        // The holder moves at its next renewal; then the reserved client gets its address.
        let moved = db.offer(&key(1), None, Some(host.ip), 2).unwrap();
        assert_ne!(moved, host.ip);
        db.bind(&key(1), moved, None, None, 3600, 2);
        assert_eq!(db.offer(&reserved_key, Some(&host), None, 3), Some(host.ip));
    }

    #[test]
    fn lease_times_come_from_host_then_range_then_default() {
        let mut config = config();
        config.ranges[0].2 = Some(Duration::from_secs(7200));
        config.hosts[0].lease = Some(Duration::ZERO);
        let db = LeaseDb::in_memory(&config);
        assert_eq!(
            db.lease_secs(Some(&config.hosts[0]), config.hosts[0].ip),
            INFINITE
        );
        assert_eq!(db.lease_secs(None, ip("2001:db8:ca2:2:1::10")), 7200);
        config.ranges[0].2 = None;
        let db = LeaseDb::in_memory(&config);
        assert_eq!(db.lease_secs(None, ip("2001:db8:ca2:2:1::10")), 3600);
    }

    #[test]
    fn declined_addresses_stay_out_for_a_while() {
        let mut config = config();
        config.ranges = vec![(ip("2001:db8:ca2:2::10"), ip("2001:db8:ca2:2::10"), None)];
        let mut db = LeaseDb::in_memory(&config);
        let a = db.offer(&key(1), None, None, 0).unwrap();
        db.bind(&key(1), a, None, None, 3600, 0);
        assert!(db.decline(&key(1), a, 10));
        assert_eq!(db.offer(&key(2), None, None, 20), None);
        assert_eq!(
            db.offer(&key(2), None, None, 10 + DECLINE_HOLD_SECS + 1),
            Some(a)
        );
    }

    /// The server writes what it takes off the runtime thread: a write that fails
    /// leaves the changes to the next one.
    #[test]
    fn changes_a_failed_write_lost_are_written_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.leases6");
        let mut db = LeaseDb::open(&config(), &path, 0).unwrap();
        assert!(db.take_changes(0).is_none(), "nothing changed");
        let a = db.offer(&key(1), None, None, 0).unwrap();
        db.bind(&key(1), a, None, None, 3600, 0);
        let changes = db.take_changes(0).expect("a binding to write");
        assert!(db.take_changes(0).is_none(), "taken");
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(changes.write().is_err());
        db.write_failed();
        std::fs::create_dir(dir.path()).unwrap();
        db.take_changes(0).expect("again").write().unwrap();
        let reopened = LeaseDb::open(&config(), &path, 0).unwrap();
        assert_eq!(reopened.binding(&key(1), 0), Some(a));
    }

    #[test]
    fn leases_survive_a_reopen_and_junk_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.leases6");
        let config = config();
        let mut db = LeaseDb::open(&config, &path, 0).unwrap();
        let a = db.offer(&key(1), None, None, 0).unwrap();
        db.bind(
            &key(1),
            a,
            Some([0x52, 0x54, 0, 0, 0, 1]),
            Some("web".into()),
            3600,
            0,
        );
        let b = db.offer(&key(2), None, None, 0).unwrap();
        db.bind(&key(2), b, None, None, INFINITE, 0);
        db.commit(0).unwrap();
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(
            b"{\"ip\":\"::1\",\"duid\":\"00\",\"iaid\":1,\"expiry\":99}\nnot json\n\xff\n",
        );
        std::fs::write(&path, &text).unwrap();
        let mut db = LeaseDb::open(&config, &path, 100).unwrap();
        // Only reading leaves the file as it was.
        assert_eq!(std::fs::read(&path).unwrap(), text);
        db.forget_dropped(100);
        let leases = db.leases(100);
        assert_eq!(leases.len(), 2, "{leases:?}");
        assert_eq!(db.binding(&key(1), 100), Some(a));
        assert_eq!(db.binding(&key(2), 100), Some(b));
        let web = leases.iter().find(|l| l.ip == a).unwrap();
        assert_eq!(web.hostname.as_deref(), Some("web"));
        assert_eq!(web.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
        assert_eq!(web.expiry_unix, 3600);
        assert_eq!(leases.iter().find(|l| l.ip == b).unwrap().expiry_unix, 0);
        // What was dropped is dropped from the file too: the next load finds only the
        // two leases.
        let reread = std::fs::read_to_string(&path).unwrap();
        assert_eq!(reread.lines().count(), 2, "{reread}");
        // Expired by the time of the next load, and gone from the file.
        let mut db = LeaseDb::open(&config, &path, 4000).unwrap();
        assert_eq!(db.leases(4000).len(), 1);
        db.forget_dropped(4000);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }
}
