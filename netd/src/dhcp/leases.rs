//! The lease database of one network: allocation, reservations, expiry, decline, and
//! its journal on disk.
//!
//! Memory: two hash maps (by address and by client) holding only addresses of the pool
//! or of reservations, so the state stays bounded by the pool size whatever clients send.
//! Allocation starts where dnsmasq's starts, at a place in each range that a hash of the
//! client's MAC picks (see `mac_seed`), and walks on to the first free address, so a
//! guest gets the same address again after a release, an expiry or a restart of the
//! daemon or the host, as it did from libvirt's dnsmasq (the same address, for a guest
//! moved from libvirt). That walk looks at a few addresses only; in a pool crowded
//! around the seed, a walk from a cursor takes over, which costs a new client O(1) on
//! average. Expired leases are reclaimed when a walk meets them. A walk that finds the
//! pool full is not repeated until an address is freed or the earliest lease met
//! expires, and the takeover of an unanswered offer pops the oldest one from an ordered set, so a
//! flood of DISCOVERs against a full pool costs O(log n) each, not a walk of the pool.
//!
//! Disk: an append-only journal of JSON lines (`bind` / `release` / `decline`), made
//! durable with `fdatasync` by [`LeaseDb::commit`] before the server sends the ACKs of a
//! batch, and rewritten compactly (temp file + fsync + rename) at load and when it
//! grows. The file is untrusted input on load: long, torn or invalid lines are skipped
//! with a warning.

use super::lease_time::{expiry_after, lease_secs};
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{DhcpConfig, Error, LeaseInfo, format_mac, parse_hex_bytes, sanitize_hostname};

/// Most addresses dnsmasq's walk from a MAC's seed looks at before the cursor's takes
/// over (see [`LeaseDb::walk_from_seed`]).
const SEEDED_WALK: u64 = 64;
/// How long an offered address stays held for the client that was offered it.
pub const OFFER_HOLD_SECS: i64 = 60;
/// How long a declined address (in use by someone unknown) stays out of the pool.
pub const DECLINE_HOLD_SECS: i64 = 600;
/// Shortest lease time granted to a client asking for one (option 51): dnsmasq's floor,
/// so a client cannot make itself renew every second.
pub const MIN_REQUESTED_LEASE: u32 = 120;
/// Longest journal line accepted on load; real records are under 400 bytes.
const MAX_LINE: usize = 4096;
/// Largest lease file read on load.
const MAX_FILE: u64 = 256 << 20;
/// The journal is compacted when it has this many lines and four times the live leases.
const COMPACT_MIN_LINES: usize = 4096;

/// The exact identity a lease is indexed by: the client identifier (option 61) when
/// sent, else the MAC. Matching a request to a lease is looser, see [`Client::same_as`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// Option 61 bytes.
    Id(Box<[u8]>),
    /// Hardware address, for clients without option 61.
    Mac([u8; 6]),
}

/// A client as one message identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// Hardware address (`chaddr`); reservations match on it.
    pub mac: [u8; 6],
    /// Client identifier (option 61), if any.
    pub client_id: Option<Box<[u8]>>,
    /// The name it sent (option 12, sanitised, lowercased): a `<host>` without a MAC
    /// matches on it, as dnsmasq's `dhcp-host=NAME,IP` that libvirt writes for one does.
    pub name: Option<Box<str>>,
}

impl Client {
    /// A client from its `chaddr` and optional, non-empty option 61.
    pub fn new(mac: [u8; 6], client_id: Option<&[u8]>) -> Client {
        Client {
            mac,
            client_id: client_id.filter(|id| !id.is_empty()).map(Box::from),
            name: None,
        }
    }

    /// The client, going by `name` (see [`Client::name`]).
    pub fn named(self, name: Option<&str>) -> Client {
        Client {
            name: name.map(|name| name.to_ascii_lowercase().into()),
            ..self
        }
    }

    /// Whether `other` is the same client, as dnsmasq's `lease_find_by_client` decides:
    /// by client identifier when both have one, else by MAC. Guests switch DHCP clients
    /// while booting (cloud-init's dhclient sends no option 61, systemd-networkd and
    /// NetworkManager do) and must keep their address across the switch.
    pub fn same_as(&self, other: &Client) -> bool {
        match (&self.client_id, &other.client_id) {
            (Some(a), Some(b)) => a == b,
            _ => self.mac == other.mac,
        }
    }

    /// The exact identity its leases are indexed by.
    pub fn key(&self) -> ClientKey {
        match &self.client_id {
            Some(id) => ClientKey::Id(id.clone()),
            None => ClientKey::Mac(self.mac),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseState {
    /// Offered, waiting for the REQUEST; not persisted.
    Offered,
    /// ACKed and persisted.
    Bound,
    /// Declined by a client: held by nobody until it expires.
    Declined,
}

#[derive(Clone, Debug)]
struct Lease {
    client: Client,
    hostname: Option<Box<str>>,
    /// Unix seconds; `i64::MAX` for an infinite lease.
    expiry: i64,
    state: LeaseState,
    /// When a bound lease was last bound or renewed, as [`LeaseDb::binds`] counted then.
    bound_seq: u64,
    /// When its client first bound it on this address, renewals since not counted: it
    /// is durable once the journal is synced past that ([`LeaseDb::durable_through`]).
    first_bound_seq: u64,
}

impl Lease {
    fn live(&self, now: i64) -> bool {
        self.expiry > now
    }
}

/// Where in a range a walk for `mac` starts: dnsmasq's seed (`address_allocate`, the
/// SDBM hash of the hardware address, 0 taken as 1), so kvnet hands a guest the address
/// libvirt's dnsmasq would.
fn mac_seed(mac: [u8; 6]) -> u32 {
    let seed = mac.iter().fold(0u32, |seed, &byte| {
        u32::from(byte)
            .wrapping_add(seed << 6)
            .wrapping_add(seed << 16)
            .wrapping_sub(seed)
    });
    seed.max(1)
}

#[derive(Clone, Copy, Debug)]
struct PoolRange {
    start: u32,
    end: u32,
    lease: Option<u32>,
}

#[derive(Clone, Debug)]
struct Reservation {
    ip: Ipv4Addr,
    name: Option<Box<str>>,
    lease: Option<u32>,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Record {
    Bind {
        ip: Ipv4Addr,
        mac: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        /// Unix seconds; 0 for an infinite lease.
        expiry: i64,
    },
    Release {
        ip: Ipv4Addr,
    },
    /// Declined by a client (someone else answers for it): out of the pool until
    /// `expiry`, across a restart too.
    Decline {
        ip: Ipv4Addr,
        expiry: i64,
    },
}

/// A journal line binding `ip` until `expiry` (Unix seconds; 0 for never), for leases
/// another server gave (libvirt's dnsmasq): loading it checks it as any other line.
/// `mac` and `client_id` are colon-separated hex.
pub fn bind_line(
    ip: Ipv4Addr,
    mac: &str,
    client_id: Option<&str>,
    hostname: Option<&str>,
    expiry: i64,
) -> Vec<u8> {
    let record = Record::Bind {
        ip,
        mac: mac.to_owned(),
        client_id: client_id.map(str::to_owned),
        hostname: hostname.map(str::to_owned),
        expiry,
    };
    let mut line = Vec::new();
    let _ = super::push_json_line(&mut line, &record);
    line
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    /// Shared with a [`PendingSync`] running on another thread.
    file: Arc<File>,
    lines: usize,
    /// A write failed: the file may end in a torn line, so rewrite it whole next time.
    needs_rewrite: bool,
}

/// The leases of one network.
#[derive(Debug)]
pub struct LeaseDb {
    network: String,
    subnet: ipnet::Ipv4Net,
    server_ip: Ipv4Addr,
    default_lease: u32,
    pool: Vec<PoolRange>,
    pool_size: u64,
    /// Where the walk of a crowded pool goes on from ([`LeaseDb::walk_from_cursor`]).
    cursor: u64,
    reservations: HashMap<[u8; 6], Reservation>,
    /// The reservations of `<host>`s without a MAC, by name (lowercased).
    name_reservations: HashMap<Box<str>, Reservation>,
    /// Every reserved address, with the MAC it is reserved for (if any).
    reserved_ips: HashMap<Ipv4Addr, Option<[u8; 6]>>,
    /// The reservations' names, lowercased, with the MAC each is reserved for (if any).
    reserved_names: HashMap<Box<str>, Option<[u8; 6]>>,
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_client: HashMap<ClientKey, Ipv4Addr>,
    /// Addresses of the leases that carry a client identifier, by MAC, with the bind count
    /// each was bound at (0 for an offer): a request without option 61 matches them by
    /// MAC (see [`Client::same_as`]). A set, so that one MAC with many made-up
    /// identifiers costs O(log n) per change, not a scan.
    id_leases_by_mac: HashMap<[u8; 6], BTreeSet<(u64, Ipv4Addr)>>,
    /// `(expiry, address)` of every offer waiting for its REQUEST, oldest first.
    offers: BTreeSet<(i64, Ipv4Addr)>,
    /// The last walk of the pool found nothing free: no walk again before this time (the
    /// earliest expiry it met) unless an address is freed meanwhile.
    exhausted_until: Option<i64>,
    /// Journal lines not yet written.
    pending: Vec<u8>,
    /// Bumped by every binding change journaled: what the DNS server follows.
    revision: u64,
    /// Bindings and renewals made (replayed ones included): orders the leases that
    /// claim one name within the same second.
    binds: u64,
    /// The [`LeaseDb::binds`] count the journal is known synced through: a binding
    /// first made after it may be lost to a crash.
    durable_through: u64,
    /// The count when the commit in progress took its lines.
    syncing_through: u64,
    journal: Option<Journal>,
}

impl LeaseDb {
    /// An in-memory database (tests, fuzzing): [`LeaseDb::commit`] only drops the journal.
    pub fn in_memory(config: &DhcpConfig) -> LeaseDb {
        let mut db = LeaseDb {
            network: config.network.clone(),
            subnet: config.subnet,
            server_ip: config.server_ip,
            default_lease: lease_secs(config.default_lease),
            pool: Vec::new(),
            pool_size: 0,
            cursor: 0,
            reservations: HashMap::new(),
            reserved_ips: HashMap::new(),
            reserved_names: HashMap::new(),
            name_reservations: HashMap::new(),
            by_ip: HashMap::new(),
            by_client: HashMap::new(),
            id_leases_by_mac: HashMap::new(),
            offers: BTreeSet::new(),
            exhausted_until: None,
            pending: Vec::new(),
            revision: 0,
            binds: 0,
            durable_through: 0,
            syncing_through: 0,
            journal: None,
        };
        db.configure(config);
        db
    }

    /// The bound, unexpired leases recorded in `path` (a missing file has none), read
    /// without changing the file: for a network that is not running.
    pub fn read_leases(
        config: &DhcpConfig,
        path: &Path,
        now: i64,
    ) -> Result<Vec<LeaseInfo>, Error> {
        let text = read_journal(config, path)?;
        let mut db = LeaseDb::in_memory(config);
        db.replay(&text, now);
        Ok(db.leases(now))
    }

    /// Loads `path` (a missing file is an empty database), drops expired leases and
    /// those outside the subnet (one out of the pool, or on another's reservation, is
    /// kept and refused at its renewal), and rewrites the file compactly (unless it was
    /// empty). A rewrite that fails (a full disk) leaves the file as it was, to be
    /// appended to and compacted later: the server still runs.
    pub fn open(config: &DhcpConfig, path: &Path, now: i64) -> Result<LeaseDb, Error> {
        let mut db = LeaseDb::in_memory(config);
        let file_error = |action: &'static str| file_error(config, path, action);
        let text = read_journal(config, path)?;
        db.replay(&text, now);
        db.pending.clear();
        // What the file holds is on disk.
        db.durable_through = db.binds;
        let mut lines = db.persisted_count();
        let mut needs_rewrite = false;
        // A new network's (empty) journal needs no rewrite: appending creates it, and its
        // directory entry is made durable before any lease is written to it.
        if !text.is_empty()
            && let Err(source) = db.write_compact(path)
        {
            let e = file_error("rewrite")(source);
            tracing::warn!(network = %config.network, "DHCP lease journal kept as it is, not compacted: {}", crate::errors::error_chain(&e));
            lines = text.iter().filter(|&&b| b == b'\n').count();
            // New lines must not be glued to a torn last one, nor follow a tail that was
            // never read: the first commit rewrites the file whole.
            needs_rewrite = !text.ends_with(b"\n") || text.len() as u64 >= MAX_FILE;
        }
        let file = crate::files::open_journal(path).map_err(file_error("open for appending"))?;
        if text.is_empty()
            && let Some(dir) = path.parent()
        {
            crate::store::sync_dir(dir)
                .map_err(std::io::Error::other)
                .map_err(file_error("sync its directory"))?;
        }
        db.journal = Some(Journal {
            path: path.to_path_buf(),
            file: Arc::new(file),
            lines,
            needs_rewrite,
        });
        Ok(db)
    }

    /// Applies a (new) configuration; leases are kept, and those it no longer allows
    /// are refused at their next renewal.
    pub fn configure(&mut self, config: &DhcpConfig) {
        self.network = config.network.clone();
        self.subnet = config.subnet;
        self.server_ip = config.server_ip;
        self.default_lease = lease_secs(config.default_lease);
        let first = u32::from(config.subnet.network()).saturating_add(1);
        let last = u32::from(config.subnet.broadcast()).saturating_sub(1);
        self.pool = config
            .ranges
            .iter()
            .filter_map(|&(start, end, lease)| {
                let start = u32::from(start).max(first);
                let end = u32::from(end).min(last);
                if start > end {
                    tracing::warn!(network = %config.network, %start, %end, "dhcp range outside the subnet, ignored");
                    return None;
                }
                Some(PoolRange {
                    start,
                    end,
                    lease: lease.map(lease_secs),
                })
            })
            .collect();
        self.pool_size = self
            .pool
            .iter()
            .map(|r| u64::from(r.end - r.start) + 1)
            .sum();
        self.cursor = 0;
        self.exhausted_until = None;
        let previous_names: HashMap<[u8; 6], (Ipv4Addr, Option<Box<str>>)> = self
            .reservations
            .iter()
            .map(|(mac, reservation)| (*mac, (reservation.ip, reservation.name.clone())))
            .collect();
        self.reservations.clear();
        self.name_reservations.clear();
        self.reserved_ips.clear();
        self.reserved_names.clear();
        for host in &config.hosts {
            self.reserved_ips.insert(host.ip, host.mac);
            if let Some(name) = &host.name {
                self.reserved_names
                    .insert(name.to_ascii_lowercase().into(), host.mac);
            }
            let reservation = Reservation {
                ip: host.ip,
                name: host.name.as_deref().map(Box::from),
                lease: host.lease.map(lease_secs),
            };
            match (host.mac, &host.name) {
                (Some(mac), _) => {
                    self.reservations.insert(mac, reservation);
                }
                (None, Some(name)) => {
                    self.name_reservations
                        .insert(name.to_ascii_lowercase().into(), reservation);
                }
                (None, None) => {}
            }
        }
        self.rename_reserved_leases(&previous_names);
        // An offer on an address now reserved or out of the pool would be handed over
        // as is by the takeover in `allocate`; bound leases stay until their renewal is
        // refused.
        let stale: Vec<Ipv4Addr> = self
            .offers
            .iter()
            .map(|&(_, ip)| ip)
            .filter(|&ip| {
                ip == self.server_ip || self.reserved_ips.contains_key(&ip) || !self.in_pool(ip)
            })
            .collect();
        for ip in stale {
            self.remove_ip(ip);
        }
    }

    /// Lease time for `client` at `ip`: its reservation's, wherever its address (one from
    /// the pool while another holds the reserved one, as dnsmasq's `calc_time` takes the
    /// matching `dhcp-host`'s), else that of the range holding `ip`, else (a reserved
    /// address outside every range) that of the subnet's first range, else the default.
    /// libvirt writes hosts without a lease time and dnsmasq gives them the lease time
    /// of the dhcp-range of their subnet.
    pub fn lease_secs(&self, client: &Client, ip: Ipv4Addr) -> u32 {
        if let Some(res) = self.reservation_of(client)
            && let Some(lease) = res.lease
        {
            return lease;
        }
        let address = u32::from(ip);
        let range = self
            .pool
            .iter()
            .find(|r| (r.start..=r.end).contains(&address))
            // Every range of the pool lies in the subnet (see `configure`).
            .or_else(|| self.pool.first().filter(|_| self.subnet.contains(&ip)));
        range.and_then(|r| r.lease).unwrap_or(self.default_lease)
    }

    /// Lease time granted to `client` at `ip` when it asks for `requested_secs` (option
    /// 51): the configured one ([`LeaseDb::lease_secs`]), or the client's when shorter,
    /// but at least [`MIN_REQUESTED_LEASE`], as dnsmasq grants it.
    pub fn granted_secs(&self, client: &Client, ip: Ipv4Addr, requested_secs: Option<u32>) -> u32 {
        let configured = self.lease_secs(client, ip);
        match requested_secs {
            Some(requested) => configured.min(requested.max(MIN_REQUESTED_LEASE)),
            None => configured,
        }
    }

    /// `client`'s reservation: its MAC's, else (a `<host>` without a MAC) that of the
    /// name it sent, or, when it sent none (a renewal need not: RFC 2131 table 5), that
    /// of the name its lease on the reserved address was bound under.
    fn reservation_of(&self, client: &Client) -> Option<&Reservation> {
        if let Some(reservation) = self.reservations.get(&client.mac) {
            return Some(reservation);
        }
        // Looked up several times per message: the name is lowercased once, in `named`.
        if let Some(name) = client.name.as_deref() {
            return self.name_reservations.get(name);
        }
        if self.name_reservations.is_empty() {
            return None;
        }
        let ip = self.find_lease(client)?;
        let held = self.by_ip.get(&ip)?;
        let reservation = self
            .name_reservations
            .get(held.hostname.as_deref()?.to_ascii_lowercase().as_str())?;
        (reservation.ip == ip && held.client.same_as(client)).then_some(reservation)
    }

    /// The reserved name for `client`, if its reservation has one.
    pub fn reserved_name(&self, client: &Client) -> Option<&str> {
        self.reservation_of(client)?.name.as_deref()
    }

    /// The name `client` goes by when it gives `given`: its reservation's, else `given`
    /// unless it is reserved for another client.
    pub fn name_for<'a>(&'a self, client: &Client, given: Option<&'a str>) -> Option<&'a str> {
        self.reserved_name(client)
            .or_else(|| given.filter(|name| self.may_go_by(client, name)))
    }

    /// Whether `client` may go by `name`. A name the client gives cannot take a
    /// reservation's name, where dnsmasq lets it until the reserved guest leases: a
    /// guest would otherwise answer for another one in DNS.
    /// (A name reserved without a MAC is the name its client goes by.)
    fn may_go_by(&self, client: &Client, name: &str) -> bool {
        self.reserved_names
            .get(name.to_ascii_lowercase().as_str())
            .is_none_or(|&owner| owner.is_none_or(|mac| mac == client.mac))
    }

    /// The name of the bound lease on `ip`.
    pub fn bound_name(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip
            .get(&ip)
            .filter(|lease| lease.state == LeaseState::Bound)?
            .hostname
            .as_deref()
    }

    /// `client`'s reservation, unless its address is out of reach: declined and still held
    /// out (RFC 2131 4.3.3: the server must mark a declined address unavailable), or bound
    /// to a client that leased it before it was reserved (dnsmasq's "not using configured
    /// address ... because it is leased to ..."): two guests must never share it.
    /// Meanwhile the client is served from the pool, as dnsmasq does, and the holder's
    /// next renewal is refused.
    fn usable_reservation(&self, client: &Client, now: i64) -> Option<&Reservation> {
        let res = self.reservation_of(client)?;
        // A MAC reservation's own MAC is its client whatever identifier it sends now
        // (iPXE, then the installed system's DUID), as dnsmasq matches `dhcp-host` by MAC.
        let by_mac = self.reservations.contains_key(&client.mac);
        let out_of_reach = self
            .by_ip
            .get(&res.ip)
            .filter(|lease| lease.live(now))
            .is_some_and(|lease| match lease.state {
                LeaseState::Declined => true,
                LeaseState::Bound if by_mac => lease.client.mac != client.mac,
                LeaseState::Bound => !lease.client.same_as(client),
                LeaseState::Offered => false,
            });
        (!out_of_reach).then_some(res)
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.pool.iter().any(|r| (r.start..=r.end).contains(&ip))
    }

    /// Whether `ip` may be given to `client` now.
    pub fn assignable(&self, client: &Client, ip: Ipv4Addr, now: i64) -> bool {
        if !self.subnet.contains(&ip)
            || ip == self.server_ip
            || ip == self.subnet.network()
            || ip == self.subnet.broadcast()
        {
            return false;
        }
        if let Some(res) = self.usable_reservation(client, now) {
            return ip == res.ip;
        }
        if self.reserved_ips.contains_key(&ip) || !self.in_pool(ip) {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(lease) if !lease.live(now) => true,
            Some(lease) => lease.state != LeaseState::Declined && lease.client.same_as(client),
        }
    }

    /// Picks the address to offer `client` and holds it for [`OFFER_HOLD_SECS`]:
    /// its reservation, else its current lease, else the address it asks for, else the
    /// next free one of the pool. `None` when the pool is full.
    pub fn offer(
        &mut self,
        client: &Client,
        requested: Option<Ipv4Addr>,
        now: i64,
    ) -> Option<Ipv4Addr> {
        if let Some(res) = self.usable_reservation(client, now) {
            // Not held: a reserved address cannot be taken by anyone else anyway.
            return self.subnet.contains(&res.ip).then_some(res.ip);
        }
        let current = self.find_lease(client);
        let ip = current
            .filter(|&ip| self.assignable(client, ip, now))
            .or_else(|| requested.filter(|&ip| self.assignable(client, ip, now)))
            .or_else(|| self.allocate(client.mac, now))?;
        self.hold(client, ip, now);
        Some(ip)
    }

    fn hold(&mut self, client: &Client, ip: Ipv4Addr, now: i64) {
        if let Some(lease) = self.by_ip.get(&ip)
            && lease.state == LeaseState::Bound
            && lease.live(now)
            && lease.client.same_as(client)
        {
            return;
        }
        self.detach_client(client, ip);
        self.remove_ip(ip);
        let expiry = now.saturating_add(OFFER_HOLD_SECS);
        self.offers.insert((expiry, ip));
        self.insert_lease(
            ip,
            Lease {
                client: client.clone(),
                hostname: None,
                expiry,
                state: LeaseState::Offered,
                bound_seq: 0,
                first_bound_seq: 0,
            },
        );
    }

    /// Whether `client` holds a bound, unexpired lease here, and not on `ip`: an address
    /// it asks to verify or renew that is not its own. (One MAC may hold leases under
    /// several client identifiers; a client without one is matched by MAC, and any of
    /// them is its own.)
    pub fn holds_other_than(&self, client: &Client, ip: Ipv4Addr, now: i64) -> bool {
        if self.is_bound_to(client, ip, now) {
            return false;
        }
        self.find_lease(client)
            .is_some_and(|held| self.is_bound_to(client, held, now))
    }

    /// Whether `client` holds a live, bound lease on `ip`.
    pub fn is_bound_to(&self, client: &Client, ip: Ipv4Addr, now: i64) -> bool {
        self.bound_lease(client, ip, now).is_some()
    }

    /// Whether `client` holds a live, bound lease on `ip` that the journal has on disk
    /// (renewals since aside): renewing it changes no address a crash could lose.
    pub fn is_durably_bound_to(&self, client: &Client, ip: Ipv4Addr, now: i64) -> bool {
        self.bound_lease(client, ip, now)
            .is_some_and(|lease| lease.first_bound_seq <= self.durable_through)
    }

    fn bound_lease(&self, client: &Client, ip: Ipv4Addr, now: i64) -> Option<&Lease> {
        self.by_ip.get(&ip).filter(|lease| {
            lease.state == LeaseState::Bound && lease.live(now) && lease.client.same_as(client)
        })
    }

    /// The address of `client`'s lease (any state), found as dnsmasq's
    /// `lease_find_by_client` does: by client identifier, else by MAC where the lease or
    /// the request has none.
    fn find_lease(&self, client: &Client) -> Option<Ipv4Addr> {
        if let Some(id) = &client.client_id
            && let Some(&ip) = self.by_client.get(&ClientKey::Id(id.clone()))
        {
            return Some(ip);
        }
        // Leases without a client identifier are indexed by MAC.
        if let Some(&ip) = self.by_client.get(&ClientKey::Mac(client.mac)) {
            return Some(ip);
        }
        // Of several, the one bound last, as dnsmasq finds its newest lease first (a
        // guest's firmware and its OS may each have leased under an identifier).
        if client.client_id.is_none() {
            let (_, ip) = self.id_leases_by_mac.get(&client.mac)?.last()?;
            return Some(*ip);
        }
        None
    }

    /// Puts `lease` on the free address `ip` and indexes it by its client.
    fn insert_lease(&mut self, ip: Ipv4Addr, lease: Lease) {
        self.by_client.insert(lease.client.key(), ip);
        if lease.client.client_id.is_some() {
            self.id_leases_by_mac
                .entry(lease.client.mac)
                .or_default()
                .insert((lease.bound_seq, ip));
        }
        self.by_ip.insert(ip, lease);
    }

    /// The first free pool address from where `mac`'s seed points in each range, in
    /// order, reclaiming an expired lease on it. When none is free, the oldest address
    /// only held by an offer is taken over, so a flood of DISCOVERs from made-up MACs
    /// cannot lock real clients out for the offer hold time.
    fn allocate(&mut self, mac: [u8; 6], now: i64) -> Option<Ipv4Addr> {
        if self.exhausted_until.is_none_or(|until| now >= until)
            && let Some(ip) = self.allocate_free(mac, now)
        {
            return Some(ip);
        }
        let &(_, ip) = self.offers.first()?;
        self.remove_ip(ip);
        Some(ip)
    }

    fn allocate_free(&mut self, mac: [u8; 6], now: i64) -> Option<Ipv4Addr> {
        let ip = match self.walk_from_seed(mac, now) {
            Some(ip) => ip,
            None => self.walk_from_cursor(now)?,
        };
        self.remove_ip(ip);
        self.exhausted_until = None;
        Some(ip)
    }

    /// dnsmasq's walk (`address_allocate`): in each range in order, from where `mac`'s
    /// seed points, the first address free to give. Its first [`SEEDED_WALK`] only: in
    /// a crowded pool a walk to the end of a run of taken addresses would cost each
    /// DISCOVER a scan of the pool, on the thread every network's DHCP and DNS share.
    fn walk_from_seed(&self, mac: [u8; 6], now: i64) -> Option<Ipv4Addr> {
        let seed = u64::from(mac_seed(mac));
        self.pool.iter().find_map(|range| {
            let len = u64::from(range.end - range.start) + 1;
            let start = seed % len;
            (0..len.min(SEEDED_WALK))
                .map(|step| {
                    let offset = u32::try_from((start + step) % len).unwrap_or_default();
                    Ipv4Addr::from(range.start.wrapping_add(offset))
                })
                .find(|&ip| self.is_free(ip, now))
        })
    }

    /// The next address free to give from the cursor, over the whole pool, so that a
    /// crowded pool costs each new client O(1) on average; `None` when the pool is full,
    /// which is not looked at again before the earliest lease met expires.
    fn walk_from_cursor(&mut self, now: i64) -> Option<Ipv4Addr> {
        let mut earliest_expiry = i64::MAX;
        for step in 0..self.pool_size {
            let position = (self.cursor + step) % self.pool_size;
            let Some(ip) = self.pool_address(position) else {
                continue;
            };
            if self.is_free(ip, now) {
                self.cursor = (position + 1) % self.pool_size;
                return Some(ip);
            }
            if let Some(lease) = self.by_ip.get(&ip)
                && lease.live(now)
            {
                earliest_expiry = earliest_expiry.min(lease.expiry);
            }
        }
        self.exhausted_until = Some(earliest_expiry);
        None
    }

    /// Whether `ip` may be given to a new client: not the server's, not reserved, not
    /// leased (an expired lease is reclaimed), and, as dnsmasq leaves them out for
    /// Windows' sake, not a `.0` or `.255` address in 192.0.0.0-223.255.255.255 (the
    /// old class C), where a range wider than a /24 holds some.
    fn is_free(&self, ip: Ipv4Addr, now: i64) -> bool {
        let [first, .., last] = ip.octets();
        let class_c_edge = (192..=223).contains(&first) && (last == 0 || last == 255);
        ip != self.server_ip
            && !class_c_edge
            && !self.reserved_ips.contains_key(&ip)
            && self.by_ip.get(&ip).is_none_or(|lease| !lease.live(now))
    }

    fn pool_address(&self, mut position: u64) -> Option<Ipv4Addr> {
        for range in &self.pool {
            let len = u64::from(range.end - range.start) + 1;
            if position < len {
                let offset = u32::try_from(position).ok()?;
                return Some(Ipv4Addr::from(range.start.wrapping_add(offset)));
            }
            position -= len;
        }
        None
    }

    /// Binds `ip` to `client` for the configured lease time; see [`LeaseDb::bind_requesting`].
    #[cfg(test)]
    pub fn bind(
        &mut self,
        client: &Client,
        ip: Ipv4Addr,
        client_hostname: Option<String>,
        now: i64,
    ) -> Option<u32> {
        self.bind_requesting(client, ip, client_hostname, None, now)
    }

    /// Binds `ip` to `client` if allowed, for the lease time [`LeaseDb::granted_secs`]
    /// gives it; returns that time. An offer on a reserved address made before it was
    /// reserved is taken over here: the reservation wins.
    ///
    /// When refused, a lease `client` holds on `ip` ends: it is told to stop using the
    /// address (NAK), so a reserved client waiting for it gets it at once.
    pub fn bind_requesting(
        &mut self,
        client: &Client,
        ip: Ipv4Addr,
        client_hostname: Option<String>,
        requested_secs: Option<u32>,
        now: i64,
    ) -> Option<u32> {
        if !self.assignable(client, ip, now) {
            self.release(client, ip);
            return None;
        }
        let secs = self.granted_secs(client, ip, requested_secs);
        let previous_name = self
            .by_ip
            .get(&ip)
            .filter(|lease| lease.client.same_as(client))
            .and_then(|lease| lease.hostname.clone());
        // A name kept from before a reservation was made is held to the same rule as a
        // name the client gives.
        let hostname = self
            .name_for(client, client_hostname.as_deref())
            .map(Box::from)
            .or(previous_name.filter(|name| self.may_go_by(client, name)))
            .filter(|name| !self.is_held_by_its_reservation(name, client, ip, now));
        let expiry = expiry_after(now, secs);
        // One address per client: its lease elsewhere goes.
        self.detach_client(client, ip);
        // The lease takes the identity of this request (a client identifier gained or
        // lost), so the journal and `net-dhcp-leases` show the current one.
        // A renewal continues the binding the client holds; a lease of its that had
        // expired is no binding it holds, and this one is new.
        let continues = self
            .bound_lease(client, ip, now)
            .map(|held| held.first_bound_seq);
        self.put_bound(client.clone(), ip, hostname, expiry, continues);
        self.journal_bind(ip);
        Some(secs)
    }

    /// After a reservation's name changed (`previous_names` were the MAC reservations'
    /// addresses and names before): its guest's lease on the reserved address goes by
    /// the new one at once, in DNS and `net-dhcp-leases`, as dnsmasq's leases do when it
    /// reloads its hosts (`lease_update_from_configs`, for the lease on the configured
    /// address only), not at the guest's next renewal. A name the reservation gave and
    /// no longer gives falls back to the guest's own, where it may have it.
    fn rename_reserved_leases(
        &mut self,
        previous_names: &HashMap<[u8; 6], (Ipv4Addr, Option<Box<str>>)>,
    ) {
        let same = |a: Option<&str>, b: Option<&str>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let renames: Vec<(Ipv4Addr, Option<Box<str>>)> = self
            .by_ip
            .iter()
            .filter(|(_, lease)| lease.state == LeaseState::Bound)
            .filter_map(|(&ip, lease)| {
                let mac = lease.client.mac;
                // What the reservation on this lease's address named it, before and now.
                let was = previous_names
                    .get(&mac)
                    .filter(|(reserved, _)| *reserved == ip)
                    .and_then(|(_, name)| name.clone());
                let reserved = self
                    .reservations
                    .get(&mac)
                    .filter(|reservation| reservation.ip == ip)
                    .and_then(|reservation| reservation.name.clone());
                if same(was.as_deref(), reserved.as_deref()) {
                    return None;
                }
                // A reservation moved to another address leaves this lease's name alone
                // until the guest moves, as dnsmasq's does.
                let moved = self
                    .reservations
                    .get(&mac)
                    .is_some_and(|reservation| reservation.ip != ip);
                let name = match reserved {
                    Some(name) => Some(name),
                    None if moved => return None,
                    None if was.is_some() && same(was.as_deref(), lease.hostname.as_deref()) => {
                        lease
                            .client
                            .name
                            .clone()
                            .filter(|own| self.may_go_by(&lease.client, own))
                    }
                    None => return None,
                };
                (!same(name.as_deref(), lease.hostname.as_deref())).then_some((ip, name))
            })
            .collect();
        for (ip, name) in renames {
            if let Some(lease) = self.by_ip.get(&ip) {
                let (client, expiry) = (lease.client.clone(), lease.expiry);
                let continues = Some(lease.first_bound_seq);
                self.put_bound(client, ip, name, expiry, continues);
                self.journal_bind(ip);
            }
        }
    }

    /// Makes `client` the bound holder of `ip`, dropping whatever held `ip`. A name goes
    /// with the lease that claimed it last: other leases holding it lose it, as with
    /// dnsmasq (`lease_set_hostname`), so DNS and `net-dhcp-leases` show one holder.
    /// (A replayed journal strips the same names in the same order.) `continues`: when
    /// the binding this continues was first made (a renewal, a rename), else `None`.
    fn put_bound(
        &mut self,
        client: Client,
        ip: Ipv4Addr,
        hostname: Option<Box<str>>,
        expiry: i64,
        continues: Option<u64>,
    ) {
        let renewed = self.by_ip.get(&ip).is_some_and(|held| {
            held.state == LeaseState::Bound
                && held.client.same_as(&client)
                && held.hostname == hostname
        });
        self.remove_ip(ip);
        if let Some(name) = hostname.as_deref()
            && !renewed
        {
            self.take_name(name, ip);
        }
        // A lease made shorter (a renewal asking for less) frees its address sooner
        // than the pool walk that found no free address expected.
        self.exhausted_until = self.exhausted_until.map(|until| until.min(expiry));
        self.binds += 1;
        self.insert_lease(
            ip,
            Lease {
                client,
                hostname,
                expiry,
                state: LeaseState::Bound,
                bound_seq: self.binds,
                first_bound_seq: continues.unwrap_or(self.binds),
            },
        );
    }

    /// Takes `name` from the leases on addresses other than `ip`, except from the lease on
    /// the address a `<host>` reserves under that name without a MAC: its guest is known
    /// by the name, and finds its reservation through it when renewing without one.
    fn take_name(&mut self, name: &str, ip: Ipv4Addr) {
        let reserved = self
            .name_reservations
            .get(name.to_ascii_lowercase().as_str())
            .map(|reservation| reservation.ip);
        for (&held, lease) in &mut self.by_ip {
            if held != ip
                && Some(held) != reserved
                && lease
                    .hostname
                    .as_deref()
                    .is_some_and(|other| other.eq_ignore_ascii_case(name))
            {
                lease.hostname = None;
            }
        }
    }

    /// Whether `name` is a `<host>`'s reserved without a MAC, and another guest on its
    /// reserved address (not `ip`) holds it: a second guest giving that name, served
    /// from the pool meanwhile, does not take it. The same NIC under a new client
    /// identifier (a reinstalled guest, another DHCP client) is the same guest: it takes
    /// the name to its pool address while its old lease runs out.
    fn is_held_by_its_reservation(
        &self,
        name: &str,
        client: &Client,
        ip: Ipv4Addr,
        now: i64,
    ) -> bool {
        self.name_reservations
            .get(name.to_ascii_lowercase().as_str())
            .filter(|reservation| reservation.ip != ip)
            .and_then(|reservation| self.by_ip.get(&reservation.ip))
            .is_some_and(|lease| {
                lease.state == LeaseState::Bound
                    && lease.live(now)
                    && lease.client.mac != client.mac
                    && lease
                        .hostname
                        .as_deref()
                        .is_some_and(|held| held.eq_ignore_ascii_case(name))
            })
    }

    /// Drops `client`'s lease on an address other than `keep`. A bound one is journaled
    /// as released: the replay of a `bind` only drops the previous lease of the exact
    /// same identity, not one matched by MAC.
    fn detach_client(&mut self, client: &Client, keep: Ipv4Addr) {
        if let Some(old) = self.find_lease(client)
            && old != keep
            && self
                .free(old)
                .is_some_and(|lease| lease.state == LeaseState::Bound)
        {
            self.journal(&Record::Release { ip: old });
        }
    }

    /// Removes whatever holds `ip`, making it free for allocation again.
    fn free(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        self.exhausted_until = None;
        self.remove_ip(ip)
    }

    /// Removes whatever holds `ip` (to put something else there, or to free it).
    fn remove_ip(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let lease = self.by_ip.remove(&ip)?;
        if lease.state == LeaseState::Offered {
            self.offers.remove(&(lease.expiry, ip));
        }
        let key = lease.client.key();
        if self.by_client.get(&key) == Some(&ip) {
            self.by_client.remove(&key);
        }
        if lease.client.client_id.is_some()
            && let Some(ips) = self.id_leases_by_mac.get_mut(&lease.client.mac)
        {
            ips.remove(&(lease.bound_seq, ip));
            if ips.is_empty() {
                self.id_leases_by_mac.remove(&lease.client.mac);
            }
        }
        Some(lease)
    }

    /// Frees `ip` if `client` holds it (RELEASE). Returns whether it did.
    pub fn release(&mut self, client: &Client, ip: Ipv4Addr) -> bool {
        let owned = self
            .by_ip
            .get(&ip)
            .is_some_and(|l| l.state != LeaseState::Declined && l.client.same_as(client));
        if !owned {
            return false;
        }
        if self.free(ip).is_some_and(|l| l.state == LeaseState::Bound) {
            self.journal(&Record::Release { ip });
        }
        true
    }

    /// Takes `ip` from `client` and keeps it out of the pool for
    /// [`DECLINE_HOLD_SECS`] (DECLINE: someone else answers ARP for it).
    pub fn decline(&mut self, client: &Client, ip: Ipv4Addr, now: i64) -> bool {
        if !self.release(client, ip) {
            return false;
        }
        let expiry = now.saturating_add(DECLINE_HOLD_SECS);
        self.hold_declined(ip, expiry);
        self.journal(&Record::Decline { ip, expiry });
        true
    }

    /// Keeps `ip` from everyone until `expiry`.
    fn hold_declined(&mut self, ip: Ipv4Addr, expiry: i64) {
        self.remove_ip(ip);
        self.by_ip.insert(
            ip,
            Lease {
                client: Client::new([0; 6], None),
                hostname: None,
                expiry,
                state: LeaseState::Declined,
                bound_seq: 0,
                first_bound_seq: 0,
            },
        );
    }

    /// Forgets the offer made to `client` (it chose another server).
    pub fn forget_offer(&mut self, client: &Client) {
        if let Some(ip) = self.find_lease(client)
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|l| l.state == LeaseState::Offered)
        {
            self.free(ip);
        }
    }

    /// Bound, unexpired leases, sorted by address.
    pub fn leases(&self, now: i64) -> Vec<LeaseInfo> {
        let mut out: Vec<LeaseInfo> = self.bound(now).map(|(_, info)| info).collect();
        out.sort_by_key(|l| l.ip);
        out
    }

    /// Bound, unexpired leases in the order they were bound or last renewed, oldest
    /// first, as [`super::dns_names`] takes them.
    pub fn leases_by_binding(&self, now: i64) -> Vec<LeaseInfo> {
        super::in_binding_order(self.bound(now))
    }

    fn bound(&self, now: i64) -> impl Iterator<Item = (u64, LeaseInfo)> + '_ {
        self.by_ip
            .iter()
            .filter(move |(_, l)| l.state == LeaseState::Bound && l.live(now))
            .map(|(&ip, l)| {
                let info = LeaseInfo {
                    expiry_unix: if l.expiry == i64::MAX { 0 } else { l.expiry },
                    mac: l.client.mac,
                    ip,
                    hostname: l.hostname.as_deref().map(str::to_owned),
                    client_id: l.client.client_id.as_deref().map(<[u8]>::to_vec),
                };
                (l.bound_seq, info)
            })
    }

    /// The leases a compacted journal holds: bound and declined ones.
    fn persisted_count(&self) -> usize {
        self.by_ip
            .values()
            .filter(|l| l.state != LeaseState::Offered)
            .count()
    }

    /// The journal record of the lease on `ip`; none for an offer, which is not kept.
    fn record_of(&self, ip: Ipv4Addr) -> Option<Record> {
        let lease = self.by_ip.get(&ip)?;
        match lease.state {
            LeaseState::Offered => return None,
            LeaseState::Declined => {
                return Some(Record::Decline {
                    ip,
                    expiry: lease.expiry,
                });
            }
            LeaseState::Bound => {}
        }
        Some(Record::Bind {
            ip,
            mac: format_mac(&lease.client.mac),
            client_id: lease.client.client_id.as_deref().map(format_mac),
            hostname: lease.hostname.as_deref().map(str::to_owned),
            expiry: if lease.expiry == i64::MAX {
                0
            } else {
                lease.expiry
            },
        })
    }

    fn journal_bind(&mut self, ip: Ipv4Addr) {
        if let Some(record) = self.record_of(ip) {
            self.journal(&record);
        }
    }

    /// Moves whenever a binding changes (bound, renewed, released).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn journal(&mut self, record: &Record) {
        self.revision = self.revision.wrapping_add(1);
        let _ = super::push_json_line(&mut self.pending, record);
    }

    /// Replays journal text into the maps, skipping bad lines and expired leases.
    fn replay(&mut self, text: &[u8], now: i64) {
        let mut skipped = 0usize;
        for line in text.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = if line.len() <= MAX_LINE {
                serde_json::from_slice::<Record>(line).ok()
            } else {
                None
            };
            match record.map(|r| self.apply(r, now)) {
                Some(true) => {}
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(network = %self.network, skipped, "lease file: skipped invalid or stale records");
        }
    }

    /// Applies one record; `false` if it is invalid or no longer fits the configuration.
    fn apply(&mut self, record: Record, now: i64) -> bool {
        match record {
            Record::Release { ip } => {
                self.free(ip);
                true
            }
            Record::Decline { ip, expiry } => {
                if !self.subnet.contains(&ip) {
                    return false;
                }
                if expiry <= now {
                    self.free(ip);
                } else {
                    // A hold never outlasts what a DECLINE gives, whatever the file says.
                    self.hold_declined(ip, expiry.min(now.saturating_add(DECLINE_HOLD_SECS)));
                }
                true
            }
            Record::Bind {
                ip,
                mac,
                client_id,
                hostname,
                expiry,
            } => {
                let Some(mac) = parse_hex_bytes(&mac, 6).and_then(|m| <[u8; 6]>::try_from(m).ok())
                else {
                    return false;
                };
                let client_id = match client_id {
                    Some(text) => match parse_hex_bytes(&text, super::engine::MAX_CLIENT_ID) {
                        Some(id) => Some(id),
                        None => return false,
                    },
                    None => None,
                };
                let client = Client::new(mac, client_id.as_deref());
                let expiry = if expiry == 0 { i64::MAX } else { expiry };
                if expiry <= now {
                    // A later record may re-bind it; an older one for this address is void.
                    self.free(ip);
                    // Its name was taken from the leases before it, as when it was bound.
                    if let Some(name) = hostname.as_deref().and_then(sanitize_hostname) {
                        self.take_name(&name, ip);
                    }
                    return true;
                }
                if !self.subnet.contains(&ip) {
                    return false;
                }
                let hostname = hostname
                    .as_deref()
                    .and_then(sanitize_hostname)
                    .map(Box::from);
                // A bind drops the previous lease of the same identity: journals from
                // before leases matched by MAC were released explicitly rely on it.
                if let Some(&old) = self.by_client.get(&client.key())
                    && old != ip
                {
                    self.free(old);
                }
                // Replayed, it is on disk: whether it continues a binding does not matter.
                self.put_bound(client, ip, hostname, expiry, None);
                true
            }
        }
    }

    /// Makes the journal lines written since the last commit durable, on this thread.
    pub fn commit(&mut self) -> Result<(), Error> {
        let sync = self.begin_commit()?;
        let result = sync.run();
        self.finish_commit(sync.lines, result)
    }

    /// Takes the journal lines written since the last commit, to be made durable by
    /// [`PendingSync::run`] (on any thread) and then reported to
    /// [`LeaseDb::finish_commit`]. Only one may be in flight: the lines must reach the
    /// file in order. A journal that needs rewriting after a failure is rewritten here.
    pub fn begin_commit(&mut self) -> Result<PendingSync, Error> {
        self.syncing_through = self.binds;
        let bytes = std::mem::take(&mut self.pending);
        let lines = bytes.iter().filter(|&&b| b == b'\n').count();
        let Some(journal) = self.journal.as_ref() else {
            self.durable_through = self.binds;
            return Ok(PendingSync::default());
        };
        if journal.needs_rewrite {
            // The rewrite holds every binding, these lines included.
            self.compact()?;
            self.durable_through = self.binds;
            return Ok(PendingSync::default());
        }
        if bytes.is_empty() {
            // Nothing new since the last commit, which no sync is still running.
            self.durable_through = self.binds;
            return Ok(PendingSync::default());
        }
        Ok(PendingSync {
            file: Some(Arc::clone(&journal.file)),
            bytes,
            lines,
        })
    }

    /// Records how the sync of [`LeaseDb::begin_commit`]'s lines went, and compacts the
    /// journal when it has grown. An error means the lines may not be on disk; a failed
    /// compaction is only logged.
    pub fn finish_commit(
        &mut self,
        lines: usize,
        result: std::io::Result<()>,
    ) -> Result<(), Error> {
        if result.is_ok() {
            self.durable_through = self.syncing_through;
        }
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        let rewrite = match result {
            Ok(()) => {
                journal.lines += lines;
                journal.lines >= COMPACT_MIN_LINES.max(4 * self.by_ip.len())
            }
            Err(source) => {
                // The file may end in a torn line: rewrite it whole next time.
                journal.needs_rewrite = true;
                return Err(Error::LeaseFile {
                    network: self.network.clone(),
                    path: journal.path.clone(),
                    action: "append",
                    source,
                });
            }
        };
        // The lines are durable whatever happens to the rewrite: a failed one leaves
        // `needs_rewrite` set, and the next commit tries again.
        if rewrite && let Err(e) = self.compact() {
            tracing::warn!(error = %crate::errors::error_chain(&e), "DHCP lease journal not compacted; the next commit retries");
        }
        Ok(())
    }

    /// Rewrites the journal with one line per bound lease or declined address.
    fn compact(&mut self) -> Result<(), Error> {
        let Some(path) = self.journal.as_ref().map(|j| j.path.clone()) else {
            return Ok(());
        };
        let result = self
            .write_compact(&path)
            .and_then(|()| crate::files::open_journal(&path));
        match result {
            Ok(file) => {
                let lines = self.persisted_count();
                if let Some(journal) = self.journal.as_mut() {
                    *journal = Journal {
                        path,
                        file: Arc::new(file),
                        lines,
                        needs_rewrite: false,
                    };
                }
                Ok(())
            }
            Err(source) => {
                if let Some(journal) = self.journal.as_mut() {
                    journal.needs_rewrite = true;
                }
                Err(Error::LeaseFile {
                    network: self.network.clone(),
                    path,
                    action: "rewrite",
                    source,
                })
            }
        }
    }

    /// Writes every bound lease and declined address to `path` atomically: temp file,
    /// fsync, rename, fsync dir.
    fn write_compact(&self, path: &Path) -> std::io::Result<()> {
        let mut text = Vec::new();
        // In binding order, so that a replay orders names claimed in one second alike.
        let mut ips: Vec<(u64, Ipv4Addr)> = self
            .by_ip
            .iter()
            .map(|(&ip, lease)| (lease.bound_seq, ip))
            .collect();
        ips.sort();
        let ips = ips.into_iter().map(|(_, ip)| ip);
        for record in ips.filter_map(|ip| self.record_of(ip)) {
            super::push_json_line(&mut text, &record).map_err(std::io::Error::other)?;
        }
        crate::store::write_atomic(path, &text).map_err(std::io::Error::other)?;
        Ok(())
    }
}

/// An `Error::LeaseFile` maker for `action` on `path`.
fn file_error(
    config: &DhcpConfig,
    path: &Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    let network = config.network.clone();
    let path = path.to_path_buf();
    move |source| Error::LeaseFile {
        network,
        path,
        action,
        source,
    }
}

/// The journal's bytes (at most [`MAX_FILE`]); a missing file is empty.
fn read_journal(config: &DhcpConfig, path: &Path) -> Result<Vec<u8>, Error> {
    let mut text = Vec::new();
    match crate::files::open_regular(File::options().read(true), path) {
        Ok(file) => {
            file.take(MAX_FILE)
                .read_to_end(&mut text)
                .map_err(file_error(config, path, "read"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(config, path, "open")(e)),
    }
    Ok(text)
}

/// Journal lines on their way to disk (see [`LeaseDb::begin_commit`]).
#[derive(Debug, Default)]
pub struct PendingSync {
    /// `None` when there is nothing to write (or no file: an in-memory database).
    file: Option<Arc<File>>,
    bytes: Vec<u8>,
    /// Lines in `bytes`, for [`LeaseDb::finish_commit`].
    pub lines: usize,
}

impl PendingSync {
    /// Whether there is nothing to write: the commit is complete already.
    pub fn is_empty(&self) -> bool {
        self.file.is_none()
    }

    /// Appends the lines and waits until they are on disk (`fdatasync`). Blocking.
    pub fn run(&self) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let mut file: &File = file;
        file.write_all(&self.bytes)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::DhcpHostConfig;
    use crate::dhcp::lease_time::INFINITE;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;

    fn config() -> DhcpConfig {
        DhcpConfig {
            network: "t".into(),
            interface: "br0".into(),
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            subnet: "10.0.0.0/24".parse().expect("test subnet"),
            ranges: vec![(
                Ipv4Addr::new(10, 0, 0, 10),
                Ipv4Addr::new(10, 0, 0, 12),
                None,
            )],
            hosts: vec![DhcpHostConfig {
                mac: Some([2, 0, 0, 0, 0, 0x99]),
                ip: Ipv4Addr::new(10, 0, 0, 11),
                name: Some("reserved".into()),
                lease: Some(Duration::from_secs(120)),
            }],
            router: None,
            dns_server: None,
            domain: None,
            mtu: None,
            default_lease: Duration::from_secs(3600),
            boot: None,
            options: Vec::new(),
            log_dhcp: false,
        }
    }

    fn mac(n: u8) -> Client {
        Client::new([2, 0, 0, 0, 0, n], None)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    #[test]
    fn pool_skips_reserved_addresses_and_runs_out() {
        let mut db = LeaseDb::in_memory(&config());
        // .11 is reserved, so the pool .10-.12 has two dynamic addresses.
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(10)));
        assert_eq!(db.offer(&mac(2), None, NOW), Some(ip(12)));
        // Asking again returns the same held address.
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(10)));
        assert_eq!(db.bind(&mac(1), ip(10), None, NOW), Some(3600));
        // Only held by an offer: a third client takes .12 over (no DISCOVER-flood lockout).
        assert_eq!(db.offer(&mac(3), None, NOW), Some(ip(12)));
        assert_eq!(db.bind(&mac(2), ip(12), None, NOW), None);
        assert_eq!(db.bind(&mac(3), ip(12), None, NOW), Some(3600));
        // All bound: nothing to offer.
        assert_eq!(db.offer(&mac(4), None, NOW), None);
    }

    #[test]
    fn full_pool_takes_over_the_oldest_offer_and_reuses_freed_addresses() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(10)));
        assert_eq!(db.offer(&mac(2), None, NOW + 1), Some(ip(12)));
        // Full: the oldest offer goes to a newcomer first, then the next oldest.
        assert_eq!(db.offer(&mac(3), None, NOW + 2), Some(ip(10)));
        assert_eq!(db.offer(&mac(4), None, NOW + 3), Some(ip(12)));
        assert_eq!(db.bind(&mac(1), ip(10), None, NOW + 3), None);
        assert_eq!(db.bind(&mac(3), ip(10), None, NOW + 3), Some(3600));
        assert_eq!(db.bind(&mac(4), ip(12), None, NOW + 3), Some(3600));
        // All bound: nothing to offer, until a release frees an address.
        assert_eq!(db.offer(&mac(5), None, NOW + 4), None);
        assert!(db.release(&mac(4), ip(12)));
        assert_eq!(db.offer(&mac(5), None, NOW + 4), Some(ip(12)));
    }

    #[test]
    fn update_drops_offers_on_addresses_it_reserves_or_removes() {
        let mut cfg = config();
        cfg.hosts.clear();
        cfg.ranges[0].1 = ip(13);
        let mut db = LeaseDb::in_memory(&cfg);
        assert_eq!(db.offer(&mac(7), Some(ip(13)), NOW - 1), Some(ip(13)));
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(10)));
        assert_eq!(db.offer(&mac(2), None, NOW), Some(ip(11)));
        assert_eq!(db.offer(&mac(3), None, NOW), Some(ip(12)));
        // A live update reserves .10 and ends the pool at .12.
        cfg.ranges[0].1 = ip(12);
        cfg.hosts = vec![DhcpHostConfig {
            mac: Some([2, 0, 0, 0, 0, 0x99]),
            ip: ip(10),
            name: None,
            lease: None,
        }];
        db.configure(&cfg);
        // .11 and .12 are still held; the full pool's takeover goes to the oldest offer
        // left, never to the removed .13 or the reserved .10.
        assert_eq!(db.offer(&mac(4), None, NOW + 1), Some(ip(11)));
        assert_eq!(db.offer(&mac(5), None, NOW + 1), Some(ip(12)));
        assert_eq!(db.offer(&mac(6), None, NOW + 2), Some(ip(11)));
        assert!(db.assignable(&mac(0x99), ip(10), NOW + 2));
    }

    #[test]
    fn unanswered_offers_lapse() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(10)));
        assert!(!db.assignable(&mac(2), ip(10), NOW + OFFER_HOLD_SECS - 1));
        assert!(db.assignable(&mac(2), ip(10), NOW + OFFER_HOLD_SECS));
        assert!(db.leases(NOW).is_empty());
    }

    #[test]
    fn requested_address_is_honoured_when_free() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.offer(&mac(1), Some(ip(12)), NOW), Some(ip(12)));
        // Reserved, outside the pool or the server's own: allocation instead.
        assert_eq!(db.offer(&mac(2), Some(ip(11)), NOW), Some(ip(10)));
        assert_eq!(db.bind(&mac(1), ip(12), None, NOW), Some(3600));
        assert_eq!(db.bind(&mac(2), ip(10), None, NOW), Some(3600));
        assert_eq!(db.offer(&mac(3), Some(ip(1)), NOW), None);
    }

    #[test]
    fn a_reservation_waits_for_the_dynamic_lease_on_its_address() {
        let mut cfg = config();
        cfg.hosts.clear();
        let mut db = LeaseDb::in_memory(&cfg);
        assert_eq!(db.bind(&mac(1), ip(11), None, NOW), Some(3600));
        // The reservation arrives by a live update.
        db.configure(&config());
        let reserved = mac(0x99);
        // Two guests must never share the address: the pool serves the reserved one.
        let interim = db.offer(&reserved, None, NOW).expect("offer");
        assert_ne!(interim, ip(11));
        assert_eq!(db.bind(&reserved, ip(11), None, NOW), None);
        // With its reservation's lease time, as dnsmasq gives it the matching host's.
        assert_eq!(db.bind(&reserved, interim, None, NOW), Some(120));
        // The dynamic holder's renewal is refused, and its lease ends.
        assert_eq!(db.bind(&mac(1), ip(11), None, NOW), None);
        assert_eq!(db.leases(NOW).len(), 1);
        // Then the reserved client's renewal is refused, and it moves to its address.
        assert_eq!(db.bind(&reserved, interim, None, NOW), None);
        assert_eq!(db.offer(&reserved, None, NOW), Some(ip(11)));
        assert_eq!(
            db.bind(&reserved, ip(11), Some("guest".into()), NOW),
            Some(120)
        );
        let leases = db.leases(NOW);
        assert_eq!(leases.len(), 1);
        assert_eq!((leases[0].mac, leases[0].ip), (reserved.mac, ip(11)));
        assert_eq!(leases[0].hostname.as_deref(), Some("reserved"));
        assert_eq!(leases[0].expiry_unix, NOW + 120);
        // And the reserved client cannot take another address.
        assert_eq!(db.bind(&reserved, ip(10), None, NOW), None);
    }

    /// A guest reserved by name (a `<host>` without a MAC) that comes back under a new
    /// client identifier while its old lease still runs is served from the pool, and
    /// takes its name there; another NIC giving the name does not.
    #[test]
    fn a_guest_reserved_by_name_takes_its_name_along_under_a_new_identifier() {
        let mut config = config();
        let reserved = Ipv4Addr::new(10, 0, 0, 30);
        config.hosts.push(DhcpHostConfig {
            mac: None,
            ip: reserved,
            name: Some("builder".into()),
            lease: None,
        });
        let mut db = LeaseDb::in_memory(&config);
        let named =
            |mac: u8, id: &[u8]| Client::new([2, 0, 0, 0, 0, mac], Some(id)).named(Some("builder"));
        assert!(
            db.bind(&named(7, &[1, 1]), reserved, Some("builder".into()), NOW)
                .is_some()
        );
        let stranger = named(8, &[1, 3]);
        let elsewhere = db.offer(&stranger, None, NOW).expect("a pool address");
        assert!(
            db.bind(&stranger, elsewhere, Some("builder".into()), NOW)
                .is_some()
        );
        let reinstalled = named(7, &[1, 2]);
        let pool = db.offer(&reinstalled, None, NOW).expect("a pool address");
        assert_ne!(pool, reserved);
        assert!(
            db.bind(&reinstalled, pool, Some("builder".into()), NOW)
                .is_some()
        );
        let names: Vec<_> = db
            .leases(NOW)
            .into_iter()
            .filter_map(|lease| Some((lease.ip, lease.hostname?)))
            .collect();
        assert!(names.contains(&(pool, "builder".into())), "{names:?}");
        assert!(!names.iter().any(|(ip, _)| *ip == elsewhere), "{names:?}");
    }

    #[test]
    fn a_reserved_mac_keeps_its_address_across_client_identifiers() {
        let mut db = LeaseDb::in_memory(&config());
        // iPXE, then the installed system: one MAC, two client identifiers.
        let pxe = Client::new([2, 0, 0, 0, 0, 0x99], Some(b"\x01pxe"));
        let system = Client::new([2, 0, 0, 0, 0, 0x99], Some(b"\xffduid"));
        assert_eq!(db.offer(&pxe, None, NOW), Some(ip(11)));
        assert_eq!(db.bind(&pxe, ip(11), None, NOW), Some(120));
        assert_eq!(db.offer(&system, None, NOW), Some(ip(11)));
        assert_eq!(db.bind(&system, ip(11), None, NOW), Some(120));
        assert_eq!(db.leases(NOW).len(), 1);
    }

    #[test]
    fn a_client_cannot_take_a_reservations_name() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(
            db.bind(&mac(1), ip(10), Some("reserved".into()), NOW),
            Some(3600)
        );
        assert_eq!(
            db.bind(&mac(2), ip(12), Some("free".into()), NOW),
            Some(3600)
        );
        let names: Vec<_> = db
            .leases(NOW)
            .into_iter()
            .map(|lease| (lease.ip, lease.hostname))
            .collect();
        assert!(names.contains(&(ip(10), None)), "{names:?}");
        assert!(names.contains(&(ip(12), Some("free".into()))), "{names:?}");
    }

    /// After a failed append, the next commit rewrites the journal whole: the binding is
    /// on disk then, and its renewal counts as one if the disk fills again.
    #[test]
    fn a_binding_rewritten_whole_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        assert!(
            db.bind_requesting(&mac(1), ip(12), None, None, NOW)
                .is_some()
        );
        let sync = db.begin_commit().expect("begin");
        assert!(
            db.finish_commit(sync.lines, Err(std::io::Error::other("no space")))
                .is_err()
        );
        assert!(!db.is_durably_bound_to(&mac(1), ip(12), NOW + 1));
        // The client's REQUEST again, with room on the disk again.
        assert!(
            db.bind_requesting(&mac(1), ip(12), None, None, NOW + 3)
                .is_some()
        );
        let sync = db.begin_commit().expect("rewritten whole");
        assert!(sync.is_empty());
        let reopened = LeaseDb::open(&config(), &path, NOW + 4).expect("reopen");
        assert_eq!(reopened.leases(NOW + 4).len(), 1, "on disk");
        assert!(db.is_durably_bound_to(&mac(1), ip(12), NOW + 300));
    }

    /// A name taken by a later claimer whose shorter lease has since expired is not
    /// given back to the first lease when the journal is replayed.
    #[test]
    fn a_name_taken_by_a_lease_since_expired_stays_taken_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        assert!(db.bind(&mac(1), ip(12), Some("dup".into()), NOW).is_some());
        // The second guest asks for a short lease (option 51): 120 s.
        assert!(
            db.bind_requesting(&mac(2), ip(10), Some("dup".into()), Some(120), NOW)
                .is_some()
        );
        db.commit().expect("commit");
        let later = NOW + 600;
        let names = |db: &LeaseDb| -> Vec<(Ipv4Addr, Option<String>)> {
            db.leases(later)
                .into_iter()
                .map(|l| (l.ip, l.hostname))
                .collect()
        };
        assert_eq!(names(&db), [(ip(12), None)], "live");
        let reopened = LeaseDb::open(&config(), &path, later).expect("reopen");
        assert_eq!(names(&reopened), names(&db), "after a restart");
    }

    /// Two guests that claim one name: the one that claimed it last holds it, as with
    /// dnsmasq; the other lease loses it (in DNS and `net-dhcp-leases`), keeps it lost
    /// when it renews without a name and after the other releases, and claims it back
    /// only by giving the name again. The journal replays to the same holders.
    #[test]
    fn a_name_claimed_by_a_second_guest_leaves_the_first_ones_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        let names = |db: &LeaseDb| {
            let mut names: Vec<(Ipv4Addr, Option<String>)> = db
                .leases(NOW)
                .into_iter()
                .map(|lease| (lease.ip, lease.hostname))
                .collect();
            names.sort();
            names
        };
        assert!(db.bind(&mac(1), ip(12), Some("dup".into()), NOW).is_some());
        assert!(db.bind(&mac(2), ip(10), Some("DUP".into()), NOW).is_some());
        assert_eq!(names(&db), [(ip(10), Some("DUP".into())), (ip(12), None)]);
        assert!(db.bind(&mac(1), ip(12), None, NOW).is_some());
        assert_eq!(names(&db), [(ip(10), Some("DUP".into())), (ip(12), None)]);
        // Renewing under the name it holds changes nothing.
        assert!(db.bind(&mac(2), ip(10), Some("DUP".into()), NOW).is_some());
        db.commit().expect("commit");
        let reopened = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert_eq!(names(&reopened), names(&db));
        assert!(db.release(&mac(2), ip(10)));
        assert_eq!(names(&db), [(ip(12), None)]);
        assert!(db.bind(&mac(1), ip(12), Some("dup".into()), NOW).is_some());
        assert_eq!(
            super::super::dns_names(db.leases_by_binding(NOW)),
            [(ip(12), "dup".to_owned())]
        );
    }

    #[test]
    fn renew_keeps_the_address_and_release_frees_it() {
        let mut db = LeaseDb::in_memory(&config());
        let a = db.offer(&mac(1), None, NOW).expect("offer");
        assert_eq!(db.bind(&mac(1), a, Some("one".into()), NOW), Some(3600));
        // Renewal later, without a hostname: same address, name kept, new expiry.
        assert_eq!(db.bind(&mac(1), a, None, NOW + 1800), Some(3600));
        assert_eq!(db.offer(&mac(1), None, NOW + 1800), Some(a));
        let lease = &db.leases(NOW + 1800)[0];
        assert_eq!((lease.ip, lease.expiry_unix), (a, NOW + 5400));
        assert_eq!(lease.hostname.as_deref(), Some("one"));
        // Someone else cannot bind it.
        assert_eq!(db.bind(&mac(2), a, None, NOW), None);
        assert!(!db.release(&mac(2), a));
        assert!(db.release(&mac(1), a));
        assert!(db.leases(NOW).is_empty());
        assert_eq!(db.bind(&mac(2), a, None, NOW), Some(3600));
    }

    #[test]
    fn client_identifiers_tell_clients_of_one_mac_apart() {
        let mut db = LeaseDb::in_memory(&config());
        let first = Client::new([2, 0, 0, 0, 0, 1], Some(b"\x01abc"));
        let second = Client::new([2, 0, 0, 0, 0, 1], Some(b"\x01xyz"));
        assert_eq!(db.bind(&first, ip(10), None, NOW), Some(3600));
        // Same MAC, another client identifier: another client.
        assert_eq!(db.bind(&second, ip(10), None, NOW), None);
        assert_eq!(db.offer(&second, None, NOW), Some(ip(12)));
        assert_eq!(db.bind(&second, ip(12), None, NOW), Some(3600));
        assert_eq!(db.leases(NOW).len(), 2);
        // Another MAC with the same identifier: the same client.
        let moved = Client::new([2, 0, 0, 0, 0, 7], Some(b"\x01abc"));
        assert_eq!(db.offer(&moved, None, NOW), Some(ip(10)));
        // The MAC without an identifier (firmware leased under one, its OS under
        // another, and now a client without): the lease bound last, as dnsmasq finds
        // its newest, whatever the addresses' order; and again after a renewal.
        let without_id = Client::new([2, 0, 0, 0, 0, 1], None);
        assert_eq!(db.offer(&without_id, None, NOW), Some(ip(12)));
        assert_eq!(db.bind(&first, ip(10), None, NOW), Some(3600));
        assert_eq!(db.offer(&without_id, None, NOW), Some(ip(10)));
    }

    /// A guest leases without option 61 (cloud-init's dhclient), then its next DHCP
    /// client sends one (systemd-networkd), or the reverse: dnsmasq matches the lease by
    /// MAC when either side has no identifier, and so must we.
    #[test]
    fn a_client_identifier_gained_or_lost_keeps_the_lease() {
        let mut db = LeaseDb::in_memory(&config());
        let without_id = mac(1);
        let with_id = Client::new([2, 0, 0, 0, 0, 1], Some(&[1, 2, 0, 0, 0, 0, 1]));
        assert_eq!(db.offer(&without_id, None, NOW), Some(ip(10)));
        assert_eq!(
            db.bind(&without_id, ip(10), Some("guest".into()), NOW),
            Some(3600)
        );
        assert_eq!(db.offer(&with_id, None, NOW + 5), Some(ip(10)));
        assert!(db.assignable(&with_id, ip(10), NOW + 5));
        assert_eq!(db.bind(&with_id, ip(10), None, NOW + 5), Some(3600));
        let leases = db.leases(NOW + 5);
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(
            leases[0].client_id.as_deref(),
            Some(&[1, 2, 0, 0, 0, 0, 1][..])
        );
        assert_eq!(leases[0].hostname.as_deref(), Some("guest"));
        // And back: the lease, now keyed by identifier, is found by MAC.
        assert_eq!(db.offer(&without_id, None, NOW + 10), Some(ip(10)));
        assert_eq!(db.bind(&without_id, ip(10), None, NOW + 10), Some(3600));
        let leases = db.leases(NOW + 10);
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].client_id, None);
        // Someone else still cannot take it.
        assert!(!db.assignable(&mac(2), ip(10), NOW + 10));
    }

    /// Moving to another address under another identity releases the old lease in the
    /// journal: a reopen must not bring it back to hold a pool address.
    #[test]
    fn a_lease_left_under_another_identity_stays_released_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        let with_id = Client::new([2, 0, 0, 0, 0, 1], Some(&[1, 2, 0, 0, 0, 0, 1]));
        assert_eq!(db.bind(&mac(1), ip(10), None, NOW), Some(3600));
        // The client with an identifier asks for another free address (INIT-REBOOT).
        assert_eq!(db.bind(&with_id, ip(12), None, NOW), Some(3600));
        db.commit().expect("commit");
        let leases = db.leases(NOW);
        assert_eq!(leases.len(), 1, "{leases:?}");
        drop(db);
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert_eq!(db.leases(NOW), leases);
    }

    #[test]
    fn declined_address_stays_out_of_the_pool_for_a_while() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.bind(&mac(1), ip(10), None, NOW), Some(3600));
        assert!(db.decline(&mac(1), ip(10), NOW));
        assert_eq!(db.offer(&mac(1), None, NOW), Some(ip(12)));
        assert_eq!(db.bind(&mac(1), ip(12), None, NOW), Some(3600));
        assert_eq!(db.offer(&mac(2), None, NOW), None);
        assert!(!db.assignable(&mac(3), ip(10), NOW + DECLINE_HOLD_SECS - 1));
        assert!(db.assignable(&mac(3), ip(10), NOW + DECLINE_HOLD_SECS));
    }

    #[test]
    fn a_reserved_client_declining_its_address_is_served_from_the_pool() {
        let mut db = LeaseDb::in_memory(&config());
        let reserved = mac(0x99);
        assert_eq!(db.offer(&reserved, None, NOW), Some(ip(11)));
        assert_eq!(db.bind(&reserved, ip(11), None, NOW), Some(120));
        assert!(db.decline(&reserved, ip(11), NOW));
        // The declined address is not offered again while it is held out.
        let pool = db.offer(&reserved, None, NOW).expect("a pool address");
        assert!([ip(10), ip(12)].contains(&pool), "{pool}");
        assert!(!db.assignable(&reserved, ip(11), NOW));
        // The pool address gets the reservation's lease time, as from dnsmasq.
        assert_eq!(db.bind(&reserved, pool, None, NOW), Some(120));
        assert_eq!(db.leases(NOW)[0].hostname.as_deref(), Some("reserved"));
        // Once the hold ends, the reservation applies again.
        let later = NOW + DECLINE_HOLD_SECS;
        assert!(!db.assignable(&reserved, pool, later));
        assert_eq!(db.offer(&reserved, None, later), Some(ip(11)));
        assert_eq!(db.bind(&reserved, ip(11), None, later), Some(120));
        let leases = db.leases(later);
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].ip, ip(11));
    }

    /// A lease renewed for less time frees its address sooner than the pool walk that
    /// found none free expected: the next walk comes when it expires.
    #[test]
    fn a_lease_shortened_after_the_pool_ran_out_is_reclaimed_when_it_expires() {
        let mut db = LeaseDb::in_memory(&config());
        let pool: Vec<Ipv4Addr> = (0u8..2)
            .map(|n| {
                let ip = db.offer(&mac(n), None, NOW).expect("a free address");
                db.bind(&mac(n), ip, None, NOW).expect("bound");
                ip
            })
            .collect();
        assert_eq!(db.offer(&mac(20), None, NOW), None, "the pool is full");
        let granted = db
            .bind_requesting(&mac(0), pool[0], None, Some(MIN_REQUESTED_LEASE), NOW + 10)
            .expect("renewed");
        assert_eq!(granted, MIN_REQUESTED_LEASE);
        let later = NOW + 10 + i64::from(MIN_REQUESTED_LEASE) + 1;
        assert_eq!(db.offer(&mac(20), None, later), Some(pool[0]));
    }

    #[test]
    fn a_declined_address_stays_held_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("n.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        let ip = db.offer(&mac(1), None, NOW).expect("offer");
        db.bind(&mac(1), ip, None, NOW).expect("bound");
        assert!(db.decline(&mac(1), ip, NOW + 5));
        db.commit().expect("commit");
        let mut reopened = LeaseDb::open(&config(), &path, NOW + 10).expect("reopen");
        assert!(!reopened.assignable(&mac(2), ip, NOW + 10));
        assert_ne!(reopened.offer(&mac(2), Some(ip), NOW + 10), Some(ip));
        // The compacted file keeps the hold too, and it ends when it was to end.
        let again = LeaseDb::open(&config(), &path, NOW + 20).expect("reopen again");
        assert!(!again.assignable(&mac(2), ip, NOW + 20));
        let after = NOW + 5 + DECLINE_HOLD_SECS;
        let expired = LeaseDb::open(&config(), &path, after).expect("reopen after the hold");
        assert!(expired.assignable(&mac(2), ip, after));
        // A hold the file makes endless (edited, damaged) lasts one hold time at most.
        std::fs::write(
            &path,
            format!(
                "{{\"op\":\"decline\",\"ip\":\"{ip}\",\"expiry\":{}}}\n",
                i64::MAX
            ),
        )
        .expect("write");
        let forever = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert!(!forever.assignable(&mac(2), ip, NOW));
        assert!(forever.assignable(&mac(2), ip, NOW + DECLINE_HOLD_SECS));
    }

    #[test]
    fn expired_leases_are_reclaimed() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.bind(&mac(1), ip(10), None, NOW), Some(3600));
        assert_eq!(db.bind(&mac(2), ip(12), None, NOW), Some(3600));
        assert_eq!(db.offer(&mac(3), None, NOW + 3599), None);
        let reclaimed = db.offer(&mac(3), None, NOW + 3600).expect("reclaimed");
        assert!([ip(10), ip(12)].contains(&reclaimed), "{reclaimed}");
        assert_eq!(db.leases(NOW + 3600).len(), 0);
    }

    /// A guest gets the address libvirt's dnsmasq gives it, and the same one again after
    /// a release, an expiry or a restart (a database opened anew): the walk starts
    /// where dnsmasq's seed for its MAC points.
    #[test]
    fn a_guest_gets_dnsmasqs_address_for_its_mac_again_and_again() {
        let pool = |start: [u8; 4], end: [u8; 4]| DhcpConfig {
            server_ip: Ipv4Addr::new(start[0], start[1], start[2], 1),
            subnet: ipnet::Ipv4Net::new(Ipv4Addr::from(start), 24)
                .expect("subnet")
                .trunc(),
            ranges: vec![(Ipv4Addr::from(start), Ipv4Addr::from(end), None)],
            hosts: Vec::new(),
            ..config()
        };
        let guest = |mac: [u8; 6]| Client::new(mac, None);
        // What dnsmasq 2.90 under libvirt 9.0 gave these MACs.
        for (config, mac, expected) in [
            (
                pool([192, 168, 122, 2], [192, 168, 122, 254]),
                [0x52, 0x54, 0, 0x11, 0, 4],
                [192, 168, 122, 2],
            ),
            (
                pool([192, 168, 100, 100], [192, 168, 100, 200]),
                [0x52, 0x54, 0, 0x22, 0, 0x0a],
                [192, 168, 100, 134],
            ),
            (
                pool([192, 168, 150, 2], [192, 168, 150, 254]),
                [2, 0, 0, 9, 0, 1],
                [192, 168, 150, 42],
            ),
        ] {
            let expected = Ipv4Addr::from(expected);
            let mut db = LeaseDb::in_memory(&config);
            assert_eq!(db.offer(&guest(mac), None, NOW), Some(expected));
            assert_eq!(db.bind(&guest(mac), expected, None, NOW), Some(3600));
            db.release(&guest(mac), expected);
            // Another guest comes first; the address was free.
            let other = [0x52, 0x54, 0, 0x33, 0, 1];
            let taken = db.offer(&guest(other), None, NOW).expect("other");
            assert_ne!(taken, expected);
            assert_eq!(db.offer(&guest(mac), None, NOW), Some(expected));
            // After its lease ran out, with nothing remembered (a rebooted host).
            let mut fresh = LeaseDb::in_memory(&config);
            assert_eq!(fresh.offer(&guest(other), None, NOW), Some(taken));
            assert_eq!(fresh.offer(&guest(mac), None, NOW), Some(expected));
        }
        // Taken: the walk goes on to the next free address, wrapping in its range.
        let config = pool([192, 168, 122, 2], [192, 168, 122, 254]);
        let mut db = LeaseDb::in_memory(&config);
        let mac = [0x52, 0x54, 0, 0x11, 0, 4];
        let first = Ipv4Addr::new(192, 168, 122, 2);
        assert_eq!(
            db.bind(&guest([2, 0, 0, 0, 0, 1]), first, None, NOW),
            Some(3600)
        );
        assert_eq!(
            db.offer(&guest(mac), None, NOW),
            Some(Ipv4Addr::new(192, 168, 122, 3))
        );
        assert_eq!(mac_seed([0; 6]), 1, "0 is taken as 1, as dnsmasq takes it");

        // In a range wider than a /24 of the old class C, dnsmasq skips .0 and .255
        // (for Windows): what it gave two MACs in 192.168.0.2-192.168.1.254, in turn.
        let wide = DhcpConfig {
            subnet: "192.168.0.0/23".parse().expect("subnet"),
            server_ip: Ipv4Addr::new(192, 168, 0, 1),
            ..pool([192, 168, 0, 2], [192, 168, 1, 254])
        };
        let mut db = LeaseDb::in_memory(&wide);
        for (mac, expected) in [
            ([0x52, 0x54, 0, 0x66, 0, 0xd7], [192, 168, 1, 1]),
            ([0x52, 0x54, 0, 0x66, 0, 0xd8], [192, 168, 1, 2]),
        ] {
            let expected = Ipv4Addr::from(expected);
            assert_eq!(db.offer(&guest(mac), None, NOW), Some(expected));
            assert_eq!(db.bind(&guest(mac), expected, None, NOW), Some(3600));
        }
    }

    /// Around a MAC's seed in a crowded pool, the cursor's walk takes over after a few
    /// addresses, so a DISCOVER never scans the pool.
    #[test]
    fn a_pool_crowded_around_the_seed_is_walked_from_the_cursor() {
        let config = DhcpConfig {
            server_ip: Ipv4Addr::new(10, 1, 0, 1),
            subnet: "10.1.0.0/16".parse().expect("subnet"),
            ranges: vec![(
                Ipv4Addr::new(10, 1, 0, 2),
                Ipv4Addr::new(10, 1, 255, 254),
                None,
            )],
            hosts: Vec::new(),
            ..config()
        };
        let mut db = LeaseDb::in_memory(&config);
        let mac = [0x52, 0x54, 0, 0x11, 0, 4];
        let seeded = db.offer(&Client::new(mac, None), None, NOW).expect("offer");
        db.release(&Client::new(mac, None), seeded);
        // The seed's address and the next 99 are taken.
        let first = u32::from(seeded);
        for n in 0..100u32 {
            let ip = Ipv4Addr::from(first + n);
            let other = Client::new([2, 0, 0, 1, (n >> 8) as u8, n as u8], None);
            assert_eq!(db.bind(&other, ip, None, NOW), Some(3600), "{ip}");
        }
        // Not the end of the run (dnsmasq's walk), but the cursor's first free address.
        let offered = db.offer(&Client::new(mac, None), None, NOW).expect("offer");
        assert_eq!(offered, Ipv4Addr::new(10, 1, 0, 2));
    }

    #[test]
    fn lease_times_come_from_host_then_range_then_default() {
        let mut cfg = config();
        cfg.ranges[0].2 = Some(Duration::from_secs(600));
        cfg.hosts[0].lease = Some(Duration::ZERO);
        let db = LeaseDb::in_memory(&cfg);
        assert_eq!(db.lease_secs(&mac(1), ip(10)), 600);
        assert_eq!(db.lease_secs(&mac(0x99), ip(11)), INFINITE);
        // The reserved client on a pool address, its own taken: its own lease still.
        assert_eq!(db.lease_secs(&mac(0x99), ip(12)), INFINITE);
        // In the subnet, outside the range: the subnet's range; outside: the default.
        assert_eq!(db.lease_secs(&mac(1), ip(200)), 600);
        assert_eq!(db.lease_secs(&mac(1), Ipv4Addr::new(192, 168, 1, 5)), 3600);
    }

    /// libvirt's `<host>` carries no lease time and dnsmasq gives a host outside every
    /// range the lease time of its subnet's range, not its own default of one hour.
    #[test]
    fn a_reserved_address_outside_the_ranges_gets_the_range_lease_time() {
        let mut cfg = config();
        cfg.ranges[0].2 = Some(Duration::from_secs(1800));
        cfg.hosts[0].ip = ip(50);
        cfg.hosts[0].lease = None;
        let mut db = LeaseDb::in_memory(&cfg);
        let reserved = mac(0x99);
        assert_eq!(db.offer(&reserved, None, NOW), Some(ip(50)));
        assert_eq!(db.lease_secs(&reserved, ip(50)), 1800);
        assert_eq!(db.bind(&reserved, ip(50), None, NOW), Some(1800));
        // Outside the subnet there is no range to take it from.
        assert_eq!(db.lease_secs(&reserved, Ipv4Addr::new(10, 9, 9, 9)), 3600);
    }

    #[test]
    fn a_shorter_requested_lease_is_granted_down_to_two_minutes() {
        let mut db = LeaseDb::in_memory(&config());
        assert_eq!(db.granted_secs(&mac(1), ip(10), Some(300)), 300);
        assert_eq!(db.granted_secs(&mac(1), ip(10), Some(7200)), 3600);
        assert_eq!(
            db.granted_secs(&mac(1), ip(10), Some(5)),
            MIN_REQUESTED_LEASE
        );
        assert_eq!(
            db.bind_requesting(&mac(1), ip(10), None, Some(300), NOW),
            Some(300)
        );
        assert_eq!(db.leases(NOW)[0].expiry_unix, NOW + 300);
        // An infinite lease is shortened too, and a reservation's never below the floor.
        let mut cfg = config();
        cfg.default_lease = Duration::ZERO;
        let db = LeaseDb::in_memory(&cfg);
        assert_eq!(db.granted_secs(&mac(1), ip(10), Some(600)), 600);
        assert_eq!(db.granted_secs(&mac(0x99), ip(11), Some(1)), 120);
    }

    #[test]
    fn leases_survive_a_reopen_and_the_file_is_compacted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        let with_id = Client::new([2, 0, 0, 0, 0, 2], Some(&[1, 2, 0, 0, 0, 0, 2]));
        db.bind(&mac(1), ip(10), Some("one".into()), NOW)
            .expect("bind 1");
        db.bind(&with_id, ip(12), None, NOW).expect("bind 2");
        db.bind(&mac(0x99), ip(11), None, NOW)
            .expect("bind reserved");
        assert!(db.release(&mac(0x99), ip(11)));
        db.commit().expect("commit");
        let before = db.leases(NOW);
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            4
        );
        drop(db);

        let db = LeaseDb::open(&config(), &path, NOW + 10).expect("reopen");
        assert_eq!(db.leases(NOW + 10), before);
        assert_eq!(before.len(), 2);
        assert_eq!(
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count(),
            2
        );
        // Past their expiry they are gone.
        drop(db);
        let db = LeaseDb::open(&config(), &path, NOW + 3600).expect("reopen late");
        assert!(db.leases(NOW + 3600).is_empty());
    }

    #[test]
    fn corrupt_lease_file_loads_what_is_valid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let good = format!(
            r#"{{"op":"bind","ip":"10.0.0.10","mac":"02:00:00:00:00:01","hostname":"ok","expiry":{}}}"#,
            NOW + 100
        );
        let long = "x".repeat(MAX_LINE + 1);
        let text = [
            "garbage",
            r#"{"op":"bind","ip":"10.0.0.12","mac":"zz","expiry":1}"#,
            r#"{"op":"bind","ip":"192.168.1.5","mac":"02:00:00:00:00:03","expiry":0}"#,
            r#"{"op":"bind","ip":"10.0.0.12","mac":"02:00:00:00:00:04","hostname":"bad name","expiry":0}"#,
            &long,
            &good,
            "{\"op\":\"bind\",\"ip\":\"10.0.0.1", // torn last line
        ]
        .join("\n");
        std::fs::write(&path, text).expect("write");
        let db = LeaseDb::open(&config(), &path, NOW).expect("open");
        let leases = db.leases(NOW);
        assert_eq!(leases.len(), 2, "{leases:?}");
        assert_eq!(leases[0].ip, ip(10));
        assert_eq!(leases[0].hostname.as_deref(), Some("ok"));
        // The invalid hostname is dropped, the lease (infinite) kept.
        assert_eq!(
            (leases[1].ip, leases[1].hostname.as_deref()),
            (ip(12), None)
        );
        assert_eq!(leases[1].expiry_unix, 0);
    }

    /// Random and mutated lease files: loading never panics, keeps only leases that
    /// fit the configuration, and what it rewrites loads back to the same leases.
    #[test]
    fn mutated_lease_files_load_without_panicking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let seed = [
            format!(r#"{{"op":"bind","ip":"10.0.0.10","mac":"02:00:00:00:00:01","client_id":"01:02","hostname":"a","expiry":{}}}"#, NOW + 50),
            r#"{"op":"bind","ip":"10.0.0.12","mac":"02:00:00:00:00:02","expiry":0}"#.to_owned(),
            r#"{"op":"release","ip":"10.0.0.10"}"#.to_owned(),
        ]
        .join("\n")
        .into_bytes();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let mut text = seed.clone();
            for _ in 0..=next() % 6 {
                let at = (next() % text.len() as u64) as usize;
                match next() % 3 {
                    0 => text[at] = next() as u8,
                    1 => text.truncate(at),
                    _ => {
                        let junk = b"{}\n\":,0[]";
                        text.insert(at, junk[(next() % junk.len() as u64) as usize]);
                    }
                }
                if text.is_empty() {
                    break;
                }
            }
            std::fs::write(&path, &text).expect("write");
            let db = LeaseDb::open(&config(), &path, NOW).expect("open");
            let leases = db.leases(NOW);
            for lease in &leases {
                assert!(db.subnet.contains(&lease.ip), "{lease:?}");
            }
            drop(db);
            let again = LeaseDb::open(&config(), &path, NOW).expect("reopen");
            assert_eq!(again.leases(NOW), leases);
        }
    }

    #[test]
    fn two_step_commit_writes_when_run_and_rewrites_after_a_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let lines = || {
            std::fs::read_to_string(&path)
                .expect("read")
                .lines()
                .count()
        };
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        db.bind(&mac(1), ip(10), None, NOW).expect("bind 1");
        let sync = db.begin_commit().expect("begin");
        assert_eq!((sync.lines, lines()), (1, 0));
        // A binding made while the sync runs waits for the next one.
        db.bind(&mac(2), ip(12), None, NOW).expect("bind 2");
        sync.run().expect("sync");
        db.finish_commit(sync.lines, Ok(())).expect("finish");
        assert_eq!(lines(), 1);
        // A failed sync is reported; the next commit rewrites the file whole.
        let failed = db.begin_commit().expect("begin");
        assert_eq!(failed.lines, 1);
        assert!(
            db.finish_commit(failed.lines, Err(std::io::Error::other("disk full")))
                .is_err()
        );
        assert!(db.begin_commit().expect("rewrite").is_empty());
        assert_eq!(lines(), 2);
        drop(db);
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert_eq!(db.leases(NOW).len(), 2);
    }

    #[test]
    fn a_failed_compaction_keeps_the_commit_and_is_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        db.bind(&mac(1), ip(10), None, NOW).expect("bind");
        let sync = db.begin_commit().expect("begin");
        sync.run().expect("sync");
        // The directory goes away: the rewrite cannot create its temporary file.
        std::fs::remove_dir_all(dir.path()).expect("remove the directory");
        // Synced lines that make the journal long enough to be compacted.
        db.finish_commit(COMPACT_MIN_LINES, Ok(()))
            .expect("the synced lines are committed");
        // The next commit retries the rewrite, which holds every binding.
        assert!(db.begin_commit().is_err());
        std::fs::create_dir(dir.path()).expect("recreate the directory");
        assert!(db.begin_commit().expect("rewrite").is_empty());
        drop(db);
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        let leases = db.leases(NOW);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].ip, ip(10));
    }

    /// A journal `t.leases` in `dir` holding one lease, of ip(10).
    fn journal_with_one_lease(dir: &Path) -> PathBuf {
        let path = dir.join("t.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        db.bind(&mac(1), ip(10), None, NOW).expect("bind");
        db.commit().expect("commit");
        path
    }

    /// Makes the journal's rewrite fail, as on a full disk: a directory takes the name
    /// of its temporary file. Returns it, to be removed.
    fn block_rewrites(dir: &Path) -> PathBuf {
        let blocker = dir.join(format!(".t.leases.tmp-{}", std::process::id()));
        std::fs::create_dir(&blocker).expect("block the temporary file");
        blocker
    }

    #[test]
    fn a_journal_that_cannot_be_rewritten_at_open_is_appended_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_with_one_lease(dir.path());
        let blocker = block_rewrites(dir.path());

        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open without a rewrite");
        assert_eq!(db.leases(NOW).len(), 1);
        db.bind(&mac(2), ip(12), None, NOW).expect("bind");
        db.commit().expect("the new lease is appended");
        drop(db);
        std::fs::remove_dir(&blocker).expect("unblock");
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        let ips: Vec<Ipv4Addr> = db.leases(NOW).iter().map(|l| l.ip).collect();
        assert_eq!(ips, [ip(10), ip(12)]);
    }

    #[test]
    fn a_torn_journal_that_cannot_be_rewritten_is_rewritten_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = journal_with_one_lease(dir.path());
        let mut torn = std::fs::read(&path).expect("read");
        torn.extend_from_slice(b"{\"bind");
        std::fs::write(&path, &torn).expect("tear the last line");
        let blocker = block_rewrites(dir.path());

        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open without a rewrite");
        db.bind(&mac(2), ip(12), None, NOW).expect("bind");
        assert!(db.commit().is_err(), "appended after a torn line");
        std::fs::remove_dir(&blocker).expect("unblock");
        db.commit().expect("rewritten whole");
        drop(db);
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert_eq!(db.leases(NOW).len(), 2);
    }

    #[test]
    fn journal_is_compacted_when_it_grows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.leases");
        let mut db = LeaseDb::open(&config(), &path, NOW).expect("open");
        for step in 0..COMPACT_MIN_LINES as i64 {
            db.bind(&mac(1), ip(10), None, NOW + step).expect("renew");
            db.commit().expect("commit");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines < 10, "{lines} lines after compaction");
        let db = LeaseDb::open(&config(), &path, NOW).expect("reopen");
        assert_eq!(db.leases(NOW).len(), 1);
    }
}
