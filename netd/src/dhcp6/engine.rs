//! One DHCPv6 message in, at most one reply out (RFC 8415 section 18.3): the protocol
//! logic without sockets or clocks, so unit tests and the fuzz target call exactly what
//! the server calls. Replies go back to the address and port the message came from.
//!
//! Hostile input: messages are checked by [`well_formed`] before dhcproto decodes them,
//! because its decoder subtracts fixed header sizes from option lengths (an
//! Authentication, Status Code or Vendor option shorter than its header would overflow).

use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, IANA, IAPD, IATA, Message, MessageType, OptionCode, Status,
    StatusCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Name};

use super::leases::{ClientKey, LeaseDb, MAX_DUID};
use super::log::{Exchange, MESSAGES_PER_SECOND};
use super::{Dhcp6Config, Dhcp6HostConfig, Error, Lease6Info, duid_mac, eui64_mac};
use crate::debug_log::LogBudget;
use crate::dhcp::lease_time::renew_times;
use crate::dhcp::sanitize_hostname;

/// The DHCPv6 server port.
pub const SERVER_PORT: u16 = 547;
/// The DHCPv6 client port.
pub const CLIENT_PORT: u16 = 546;
/// Option code of the Client FQDN option (RFC 4704), which dhcproto does not name.
const OPTION_CLIENT_FQDN: u16 = 39;
/// Why a message gets no answer, as `log-dhcp` says it: its reply could not be
/// encoded (which never happens to what the engine builds).
const UNBUILT: &str = "reply not built";
/// Deepest option nesting accepted (relay message in IA in ...): real messages nest 2.
const MAX_DEPTH: u8 = 4;

/// A reply to send back to the message's source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The encoded DHCPv6 message.
    pub bytes: Vec<u8>,
    /// The reply confirms a binding: send it only once [`Engine::commit`] succeeded.
    pub needs_commit: bool,
    /// It only extends bindings the client holds (a RENEW or REBIND that binds no new
    /// address): sent even if their save fails (a full state directory), as the
    /// addresses do not change, rather than take them from a guest using them.
    pub renews: bool,
}

/// The DHCPv6 logic of one network.
#[derive(Debug)]
pub struct Engine {
    config: Dhcp6Config,
    server_duid: Vec<u8>,
    leases: LeaseDb,
    /// Bumped by every binding and configuration change: the DNS server re-reads the
    /// lease names when it moves.
    changes: Arc<AtomicU64>,
    /// `log-dhcp`'s share of lines.
    log_budget: LogBudget,
}

/// What one client message says about its sender.
struct Client {
    duid: Vec<u8>,
    mac: Option<[u8; 6]>,
    /// The first label of its FQDN option, sanitised.
    name: Option<String>,
}

impl Engine {
    /// An engine whose leases live only in memory (tests, fuzzing).
    pub fn new(config: Dhcp6Config) -> Engine {
        let leases = LeaseDb::in_memory(&config);
        Engine {
            server_duid: config.server_duid(),
            config,
            leases,
            changes: Arc::default(),
            log_budget: LogBudget::per_second(MESSAGES_PER_SECOND),
        }
    }

    /// An engine whose leases are loaded from and written to `lease_file`.
    pub fn with_lease_file(
        config: Dhcp6Config,
        lease_file: &Path,
        now: i64,
    ) -> Result<Engine, Error> {
        let mut leases = LeaseDb::open(&config, lease_file, now)?;
        leases.forget_dropped(now);
        Ok(Engine {
            server_duid: config.server_duid(),
            config,
            leases,
            changes: Arc::default(),
            log_budget: LogBudget::per_second(MESSAGES_PER_SECOND),
        })
    }

    /// Applies a new configuration, keeping the leases.
    pub fn update(&mut self, config: Dhcp6Config) {
        self.leases.configure(&config);
        self.server_duid = config.server_duid();
        self.config = config;
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// A counter that moves whenever a binding may have changed.
    pub fn changes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.changes)
    }

    /// The configuration served.
    pub fn config(&self) -> &Dhcp6Config {
        &self.config
    }

    /// The bound, unexpired leases.
    pub fn leases(&self, now: i64) -> Vec<Lease6Info> {
        self.leases.leases(now)
    }

    /// The names DNS answers for the bound, unexpired leases ([`super::dns_names`]).
    pub fn dns_names(&self, now: i64) -> Vec<(std::net::Ipv6Addr, String)> {
        super::dns_names(self.leases.leases_by_binding(now))
    }

    /// Makes the bindings of the replies handled so far durable.
    pub fn commit(&mut self, now: i64) -> Result<(), Error> {
        self.leases.commit(now)
    }

    /// The bindings of the replies handled so far, for the caller to make durable off
    /// the runtime thread (see [`LeaseDb::take_changes`]).
    pub fn take_changes(&mut self, now: i64) -> Option<super::leases::LeaseFileWrite> {
        self.leases.take_changes(now)
    }

    /// The changes last taken were not written: the next commit writes them again.
    pub fn write_failed(&mut self) {
        self.leases.write_failed();
    }

    /// Handles one datagram from `source` (the client's link-local address) sent to
    /// All_DHCP_Relay_Agents_and_Servers; `None` when it gets no answer (malformed, not
    /// for us, a server message).
    pub fn handle(&mut self, packet: &[u8], source: Ipv6Addr, now: i64) -> Option<Reply> {
        self.handle_from(packet, source, None, now)
    }

    /// [`Engine::handle`], `source` being at `mac` by the kernel's neighbour table: the
    /// MAC its lease is listed with, before one its DUID or address may carry.
    pub fn handle_from(
        &mut self,
        packet: &[u8],
        source: Ipv6Addr,
        mac: Option<[u8; 6]>,
        now: i64,
    ) -> Option<Reply> {
        self.following_bindings(|engine| engine.respond(packet, source, mac, false, now))
    }

    /// Handles one datagram sent to one of the server's unicast addresses. This server
    /// sends no Server Unicast option, so clients must multicast (RFC 8415 18.4): a
    /// REQUEST, RENEW, RELEASE or DECLINE gets a REPLY with only UseMulticast and the
    /// identifiers, and the client sends it again by multicast; other messages are
    /// dropped (RFC 8415 16).
    pub fn handle_unicast(&mut self, packet: &[u8], source: Ipv6Addr, now: i64) -> Option<Reply> {
        self.following_bindings(|engine| engine.respond(packet, source, None, true, now))
    }

    /// Runs `handle`, moving [`Engine::changes`] if it changed a binding.
    fn following_bindings<T>(&mut self, handle: impl FnOnce(&mut Engine) -> T) -> T {
        let revision = self.leases.revision();
        let result = handle(self);
        if self.leases.revision() != revision {
            self.changes.fetch_add(1, Ordering::Release);
        }
        result
    }

    fn respond(
        &mut self,
        packet: &[u8],
        source: Ipv6Addr,
        neighbour_mac: Option<[u8; 6]>,
        unicast: bool,
        now: i64,
    ) -> Option<Reply> {
        if packet.len() < 4 || !well_formed(&packet[4..], 0) {
            return None;
        }
        let message = Message::decode(&mut Decoder::new(packet)).ok()?;
        let answered = self.answer(&message, source, neighbour_mac, unicast, now);
        if self.config.log_dhcp {
            let exchange = Exchange {
                interface: &self.config.interface,
                request: &message,
                outcome: answered.as_ref().map_err(|why| *why),
            };
            super::log::write(&self.config.network, &mut self.log_budget, now, &exchange);
        }
        answered.ok()
    }

    /// The reply to `message` ([`Engine::respond`]'s), or why it gets none (which
    /// `log-dhcp` says).
    fn answer(
        &mut self,
        message: &Message,
        source: Ipv6Addr,
        neighbour_mac: Option<[u8; 6]>,
        unicast: bool,
        now: i64,
    ) -> Result<Reply, &'static str> {
        let opts = message.opts();
        let server_id = match opts.get(OptionCode::ServerId) {
            Some(DhcpOption::ServerId(id)) => Some(id.as_slice()),
            _ => None,
        };
        let duid = match opts.get(OptionCode::ClientId) {
            Some(DhcpOption::ClientId(id)) if !id.is_empty() && id.len() <= MAX_DUID => {
                Some(id.clone())
            }
            Some(_) => return Err("bad client identifier"),
            None => None,
        };
        let for_us = server_id == Some(self.server_duid.as_slice());
        let msg_type = message.msg_type();
        // RFC 8415 16: which messages must and must not carry a server identifier.
        let acceptable = match msg_type {
            MessageType::Solicit | MessageType::Confirm | MessageType::Rebind => {
                server_id.is_none() && duid.is_some()
            }
            MessageType::Request
            | MessageType::Renew
            | MessageType::Release
            | MessageType::Decline => for_us && duid.is_some(),
            // 16.12: nor may it carry an IA (the client wants no addresses).
            MessageType::InformationRequest => {
                (server_id.is_none() || for_us)
                    && ia_nas(opts).next().is_none()
                    && ia_tas(opts).next().is_none()
                    && ia_pds(opts).next().is_none()
            }
            _ => false,
        };
        if !acceptable {
            return Err(match (server_id, msg_type) {
                (Some(_), _) if !for_us => "for another server",
                (
                    _,
                    MessageType::Advertise
                    | MessageType::Reply
                    | MessageType::Reconfigure
                    | MessageType::RelayForw
                    | MessageType::RelayRepl,
                ) => "not a client's message",
                _ => "malformed",
            });
        }
        if unicast {
            let Some(duid) = duid.filter(|_| {
                matches!(
                    msg_type,
                    MessageType::Request
                        | MessageType::Renew
                        | MessageType::Release
                        | MessageType::Decline
                )
            }) else {
                return Err("sent unicast");
            };
            let mut reply = Message::new_with_id(MessageType::Reply, message.xid());
            let reply_opts = reply.opts_mut();
            reply_opts.insert(status(Status::UseMulticast, "send to ff02::1:2"));
            reply_opts.insert(DhcpOption::ServerId(self.server_duid.clone()));
            reply_opts.insert(DhcpOption::ClientId(duid));
            return Ok(Reply {
                bytes: reply.to_vec().map_err(|_| UNBUILT)?,
                needs_commit: false,
                renews: false,
            });
        }
        let client = duid.map(|duid| Client {
            mac: neighbour_mac
                .or_else(|| duid_mac(&duid))
                .or_else(|| eui64_mac(source)),
            name: client_fqdn_label(opts),
            duid,
        });
        let mut reply = Message::new_with_id(MessageType::Reply, message.xid());
        let mut needs_commit = false;
        let mut renews = false;
        match (msg_type, &client) {
            (MessageType::Solicit, Some(client)) => {
                let rapid = opts.get(OptionCode::RapidCommit).is_some();
                if rapid {
                    reply.opts_mut().insert(DhcpOption::RapidCommit);
                } else {
                    reply.set_msg_type(MessageType::Advertise);
                    // Clients take a preference-255 ADVERTISE at once instead of
                    // collecting others for a second (RFC 8415 18.2.1).
                    reply.opts_mut().insert(DhcpOption::Preference(255));
                }
                let assigned = self.assign_all(opts, client, rapid, now, reply.opts_mut());
                if assigned {
                    needs_commit = rapid;
                } else {
                    // RFC 8415 18.3.9: an ADVERTISE with only a status when nothing can
                    // be assigned (clients ignore it and keep soliciting).
                    reply.set_msg_type(MessageType::Advertise);
                    reply.set_opts(
                        [status(Status::NoAddrsAvail, "no addresses available")]
                            .into_iter()
                            .collect(),
                    );
                }
            }
            (MessageType::Request, Some(client)) => {
                self.assign_all(opts, client, true, now, reply.opts_mut());
                needs_commit = true;
            }
            (MessageType::Renew | MessageType::Rebind, Some(client)) => {
                renews = self.extend_all(opts, client, now, reply.opts_mut());
                needs_commit = true;
            }
            (MessageType::Confirm, Some(_)) => {
                let addresses: Vec<Ipv6Addr> = ia_nas(opts)
                    .flat_map(|ia| ia_addresses(&ia.opts))
                    .chain(ia_tas(opts).flat_map(|ia| ia_addresses(&ia.opts)))
                    .collect();
                // RFC 8415 18.3.3: no addresses, no reply.
                if addresses.is_empty() {
                    return Err("no addresses to confirm");
                }
                let on_link = addresses.iter().all(|a| self.config.subnet.contains(a));
                reply.opts_mut().insert(if on_link {
                    status(Status::Success, "all addresses still on link")
                } else {
                    status(Status::NotOnLink, "addresses not on link")
                });
            }
            (MessageType::Release | MessageType::Decline, Some(client)) => {
                let decline = msg_type == MessageType::Decline;
                let mut unbound = Vec::new();
                for ia in ia_nas(opts) {
                    let key = key(client, ia.id);
                    let mut held = false;
                    for address in ia_addresses(&ia.opts) {
                        let taken_back = if decline {
                            self.leases.decline(&key, address, now)
                        } else {
                            self.leases.release(&key, address)
                        };
                        if taken_back && decline {
                            tracing::warn!(network = %self.config.network, %address, "a DHCPv6 client declined its address: in use by another host");
                        }
                        held |= taken_back;
                    }
                    if !held {
                        unbound.push(DhcpOption::IANA(IANA {
                            id: ia.id,
                            t1: 0,
                            t2: 0,
                            opts: [status(Status::NoBinding, "no binding")]
                                .into_iter()
                                .collect(),
                        }));
                    }
                }
                insert_in_order(reply.opts_mut(), unbound);
                reply.opts_mut().insert(status(
                    Status::Success,
                    if decline { "declined" } else { "released" },
                ));
                needs_commit = true;
            }
            (MessageType::InformationRequest, _) => {}
            _ => return Err("no client identifier"),
        }
        let answers_ias = matches!(
            msg_type,
            MessageType::Solicit | MessageType::Request | MessageType::Renew | MessageType::Rebind
        ) && reply.opts().get(OptionCode::IANA).is_some();
        if let Some(client) = client.as_ref().filter(|_| answers_ias)
            && let Some(asked) = client_fqdn(opts)
            && let Some(name) = self.name_of(opts, client, now)
            && let Some(answer) = fqdn_answer(asked, &name, self.config.domain.as_deref())
        {
            reply.opts_mut().insert(answer);
        }
        let reply_opts = reply.opts_mut();
        reply_opts.insert(DhcpOption::ServerId(self.server_duid.clone()));
        if let Some(client) = &client {
            reply_opts.insert(DhcpOption::ClientId(client.duid.clone()));
        }
        if let Some(server) = self.config.dns_server {
            reply_opts.insert(DhcpOption::DomainNameServers(vec![server]));
        }
        if let Some(domain) = self.config.domain.as_deref()
            && let Ok(name) = Name::from_ascii(format!("{}.", domain.trim_end_matches('.')))
        {
            reply_opts.insert(DhcpOption::DomainSearchList(vec![name]));
        }
        let bytes = reply.to_vec().map_err(|_| UNBUILT)?;
        Ok(Reply {
            bytes,
            needs_commit,
            renews,
        })
    }

    /// Answers each IA_NA of a SOLICIT or REQUEST with an address (bound when `bind`),
    /// and each IA_TA / IA_PD with its "none available" status. Whether any IA_NA got
    /// an address.
    fn assign_all(
        &mut self,
        opts: &DhcpOptions,
        client: &Client,
        bind: bool,
        now: i64,
        out: &mut DhcpOptions,
    ) -> bool {
        let (reservation, reserved_iaid) = self.reserved_ia(opts, client, false, now);
        let mut any = false;
        let mut answers = Vec::new();
        for ia in ia_nas(opts).take(MAX_IAS_PER_MESSAGE) {
            let key = key(client, ia.id);
            let hint = ia_addresses(&ia.opts).next();
            let host = reservation.clone().filter(|_| Some(ia.id) == reserved_iaid);
            match self.leases.offer(&key, host.as_ref(), hint, now) {
                Some(ip) => {
                    any = true;
                    let secs = self.leases.lease_secs(host.as_ref(), ip);
                    if bind {
                        let hostname = host
                            .as_ref()
                            .and_then(|h| h.name.as_deref())
                            .and_then(sanitize_hostname)
                            .or_else(|| self.client_name(client, reservation.as_ref()));
                        self.leases.bind(&key, ip, client.mac, hostname, secs, now);
                    }
                    answers.push(ia_with_address(ia.id, ip, secs));
                }
                None => answers.push(DhcpOption::IANA(IANA {
                    id: ia.id,
                    t1: 0,
                    t2: 0,
                    opts: [status(Status::NoAddrsAvail, "no addresses available")]
                        .into_iter()
                        .collect(),
                })),
            }
        }
        insert_in_order(out, answers);
        refuse_ta_and_pd(opts, out);
        any
    }

    /// The client's reservation, and the IA (by IAID) of this message it goes to: one
    /// reservation is one address. The IA already bound to it keeps it; else the first
    /// IA_NA gets it, unless `renewing` and another IA of the client, not in this
    /// message, holds it (a RENEW or REBIND lists only the IAs it extends; a SOLICIT
    /// or REQUEST lists all the client wants, so an IA it forgot gives the address up).
    fn reserved_ia(
        &self,
        opts: &DhcpOptions,
        client: &Client,
        renewing: bool,
        now: i64,
    ) -> (Option<Dhcp6HostConfig>, Option<u32>) {
        let iaids: Vec<u32> = ia_nas(opts).map(|ia| ia.id).collect();
        let reservation = self
            .leases
            .reservation_of(&client.duid, client.name.as_deref(), &iaids, now)
            .cloned();
        let Some(host) = &reservation else {
            return (None, None);
        };
        let iaid = match self.leases.iaid_holding(&client.duid, host.ip, now) {
            Some(holder) if iaids.contains(&holder) => Some(holder),
            Some(_) if renewing => None,
            _ => iaids.first().copied(),
        };
        (reservation, iaid)
    }

    /// The name `client` goes by: its binding's (of the first IA_NA of `opts` bound), else
    /// (nothing bound yet, as for an ADVERTISE) its reservation's, else the one it gave
    /// unless it is another reservation's.
    fn name_of(&self, opts: &DhcpOptions, client: &Client, now: i64) -> Option<String> {
        let bound = ia_nas(opts)
            .map(|ia| key(client, ia.id))
            .find(|key| self.leases.binding(key, now).is_some());
        if let Some(bound) = bound {
            return self.leases.bound_name(&bound, now).map(str::to_owned);
        }
        let (reservation, _) = self.reserved_ia(opts, client, false, now);
        reservation
            .as_ref()
            .and_then(|host| host.name.as_deref())
            .and_then(sanitize_hostname)
            .or_else(|| self.client_name(client, reservation.as_ref()))
    }

    /// The name `client` gave, unless it is another reservation's.
    fn client_name(
        &self,
        client: &Client,
        reservation: Option<&Dhcp6HostConfig>,
    ) -> Option<String> {
        client
            .name
            .clone()
            .filter(|name| self.leases.may_take_name(name, reservation))
    }

    /// Answers the IA_NAs of a RENEW or REBIND: a binding is extended; an address we
    /// have no record of is bound again when it is free for the client (the lease file
    /// was lost); an IA with neither gets NoBinding, unless all it asks for are addresses
    /// of other links, which come back with lifetimes 0. Returns whether no IA was bound
    /// to a new address (only bindings the client held were extended).
    fn extend_all(
        &mut self,
        opts: &DhcpOptions,
        client: &Client,
        now: i64,
        out: &mut DhcpOptions,
    ) -> bool {
        let (client_reservation, reserved_iaid) = self.reserved_ia(opts, client, true, now);
        let mut answers = Vec::new();
        let mut extended_only = true;
        for ia in ia_nas(opts).take(MAX_IAS_PER_MESSAGE) {
            let reservation = client_reservation
                .clone()
                .filter(|_| Some(ia.id) == reserved_iaid);
            let key = key(client, ia.id);
            let asked: Vec<Ipv6Addr> = ia_addresses(&ia.opts).collect();
            let bound = self.leases.binding(&key, now);
            let keep = bound
                .filter(|&ip| self.leases.assignable(&key, reservation.as_ref(), ip, now))
                .filter(|&ip| reservation.as_ref().is_none_or(|host| host.ip == ip))
                .or_else(|| {
                    asked.iter().copied().find(|&ip| {
                        self.leases.assignable(&key, reservation.as_ref(), ip, now)
                            && reservation.as_ref().is_none_or(|host| host.ip == ip)
                    })
                })
                // A reservation made since the client bound: the reply adds it (RFC
                // 8415 18.3.4 lets a server add addresses), its old one gets lifetime 0.
                .or_else(|| {
                    let host = reservation.as_ref()?;
                    self.leases.offer(&key, Some(host), None, now)
                });
            let mut ia_opts = DhcpOptions::new();
            extended_only &= keep.is_none() || keep == bound;
            let (t1, t2) = match keep {
                Some(ip) => {
                    let secs = self.leases.lease_secs(reservation.as_ref(), ip);
                    let hostname = reservation
                        .as_ref()
                        .and_then(|h| h.name.as_deref())
                        .and_then(sanitize_hostname)
                        .or_else(|| self.client_name(client, client_reservation.as_ref()));
                    self.leases.bind(&key, ip, client.mac, hostname, secs, now);
                    ia_opts.insert(iaaddr(ip, secs, secs));
                    renew_times(secs)
                }
                // Nothing to extend, and an address of this link among those asked
                // (or none asked): RFC 8415 18.3.4/18.3.5 NoBinding, with no addresses,
                // sends the client to REQUEST at once. Lifetimes 0 would leave it
                // renewing an address it must drop, and some clients (dhcpcd) discard
                // a REPLY whose IAs hold no usable address.
                None if asked.is_empty()
                    || asked.iter().any(|ip| self.config.subnet.contains(ip)) =>
                {
                    // A binding it may no longer keep ends here, as the client is told:
                    // a reserved client waiting for the address gets it at once.
                    if let Some(ip) = bound {
                        self.leases.release(&key, ip);
                    }
                    ia_opts.insert(status(Status::NoBinding, "no binding for this IA"));
                    answers.push(DhcpOption::IANA(IANA {
                        id: ia.id,
                        t1: 0,
                        t2: 0,
                        opts: ia_opts,
                    }));
                    continue;
                }
                // Only addresses of other links: they are returned with lifetimes 0.
                None => (0, 0),
            };
            // Addresses the client may no longer use (RFC 8415 18.3.4/18.3.5).
            for ip in asked.into_iter().filter(|&ip| Some(ip) != keep) {
                ia_opts.insert(iaaddr(ip, 0, 0));
            }
            answers.push(DhcpOption::IANA(IANA {
                id: ia.id,
                t1,
                t2,
                opts: ia_opts,
            }));
        }
        insert_in_order(out, answers);
        refuse_ta_and_pd(opts, out);
        extended_only
    }
}

fn key(client: &Client, iaid: u32) -> ClientKey {
    ClientKey {
        duid: client.duid.clone().into(),
        iaid,
    }
}

fn status(status: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status,
        msg: msg.to_owned(),
    })
}

fn iaaddr(addr: Ipv6Addr, preferred: u32, valid: u32) -> DhcpOption {
    DhcpOption::IAAddr(IAAddr {
        addr,
        preferred_life: preferred,
        valid_life: valid,
        opts: DhcpOptions::new(),
    })
}

fn ia_with_address(iaid: u32, ip: Ipv6Addr, secs: u32) -> DhcpOption {
    let (t1, t2) = renew_times(secs);
    DhcpOption::IANA(IANA {
        id: iaid,
        t1,
        t2,
        opts: [iaaddr(ip, secs, secs)].into_iter().collect(),
    })
}

fn refuse_ta_and_pd(opts: &DhcpOptions, out: &mut DhcpOptions) {
    let mut refusals = Vec::new();
    for ia in ia_tas(opts) {
        refusals.push(DhcpOption::IATA(IATA {
            id: ia.id,
            opts: [status(Status::NoAddrsAvail, "no temporary addresses")]
                .into_iter()
                .collect(),
        }));
    }
    for ia in ia_pds(opts) {
        refusals.push(DhcpOption::IAPD(IAPD {
            id: ia.id,
            t1: 0,
            t2: 0,
            opts: [status(Status::NoPrefixAvail, "no prefixes delegated")]
                .into_iter()
                .collect(),
        }));
    }
    insert_in_order(out, refusals);
}

/// Inserts `options` so that those of one code keep their order, the order of the IAs
/// in the client's message: `DhcpOptions::insert` puts an option before the others
/// of its code, which reversed them (dhcpcd then names its first IA by the second).
fn insert_in_order(out: &mut DhcpOptions, options: Vec<DhcpOption>) {
    for option in options.into_iter().rev() {
        out.insert(option);
    }
}

/// The most IA_NAs of one message that get an address. A client asks for one or two;
/// one message with 80 would hold (SOLICIT) or bind (REBIND) 80 addresses.
const MAX_IAS_PER_MESSAGE: usize = 8;

pub(super) fn ia_nas(opts: &DhcpOptions) -> impl Iterator<Item = &IANA> {
    opts.iter().filter_map(|o| match o {
        DhcpOption::IANA(ia) => Some(ia),
        _ => None,
    })
}

fn ia_tas(opts: &DhcpOptions) -> impl Iterator<Item = &IATA> {
    opts.iter().filter_map(|o| match o {
        DhcpOption::IATA(ia) => Some(ia),
        _ => None,
    })
}

fn ia_pds(opts: &DhcpOptions) -> impl Iterator<Item = &IAPD> {
    opts.iter().filter_map(|o| match o {
        DhcpOption::IAPD(ia) => Some(ia),
        _ => None,
    })
}

pub(super) fn ia_addresses(opts: &DhcpOptions) -> impl Iterator<Item = Ipv6Addr> + '_ {
    opts.iter().filter_map(|o| match o {
        DhcpOption::IAAddr(a) => Some(a.addr),
        _ => None,
    })
}

/// The Client FQDN option's data (RFC 4704: flags, then a DNS wire name, possibly
/// partial).
fn client_fqdn(opts: &DhcpOptions) -> Option<&[u8]> {
    opts.iter().find_map(|o| match o {
        DhcpOption::Unknown(u) if u16::from(u.code()) == OPTION_CLIENT_FQDN => Some(u.data()),
        _ => None,
    })
}

/// The first label of the Client FQDN option's name, sanitised as a hostname.
pub(super) fn client_fqdn_label(opts: &DhcpOptions) -> Option<String> {
    let [_flags, len, rest @ ..] = client_fqdn(opts)? else {
        return None;
    };
    let label = rest.get(..usize::from(*len))?;
    sanitize_hostname(std::str::from_utf8(label).ok()?)
}

/// The Client FQDN option answering the client's `asked` (RFC 4704 5), as dnsmasq
/// answers: `name` under `domain`, the server doing the DNS update (S, and O when the
/// client asked to do it itself), never "no updates" (N).
fn fqdn_answer(asked: &[u8], name: &str, domain: Option<&str>) -> Option<DhcpOption> {
    const SERVER_UPDATES: u8 = 0x01;
    const OVERRIDE: u8 = 0x02;
    const NO_UPDATES: u8 = 0x04;
    // The high five bits must be zero.
    let mut flags = asked.first()? & 0x07;
    if flags & SERVER_UPDATES == 0 {
        flags |= SERVER_UPDATES | OVERRIDE;
    }
    flags &= !NO_UPDATES;
    let mut data = vec![flags];
    data.extend(crate::dhcp::fqdn_wire(name, domain)?);
    Some(DhcpOption::Unknown(UnknownOption::new(
        OptionCode::from(OPTION_CLIENT_FQDN),
        data,
    )))
}

/// Whether the options in `data` are well-formed enough for dhcproto to decode without
/// arithmetic overflow or misreading: every option fits, options with a fixed header are
/// at least that long, fixed-size options exactly their size, and encapsulated options (IA_NA, IA_TA, IA_PD, IA address, IA prefix,
/// vendor options, relay message) are checked the same way, up to [`MAX_DEPTH`].
pub fn well_formed(mut data: &[u8], depth: u8) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    while !data.is_empty() {
        let [c0, c1, l0, l1, rest @ ..] = data else {
            return false;
        };
        let code = u16::from_be_bytes([*c0, *c1]);
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let Some(body) = rest.get(..len) else {
            return false;
        };
        // (minimum length, where encapsulated options start)
        let (min, nested) = match code {
            3 | 25 => (12, Some(12)), // IA_NA, IA_PD
            4 => (4, Some(4)),        // IA_TA
            5 => (24, Some(24)),      // IA address
            26 => (25, Some(25)),     // IA prefix
            17 => (4, Some(4)),       // vendor-specific information
            9 => (34, Some(34)),      // relay message: a relay header, then options
            11 => (11, None),         // authentication
            13 => (2, None),          // status code
            16 => (4, None),          // vendor class
            _ => (0, None),
        };
        // dhcproto reads fixed-size options by their type, not their length: any other
        // length would shift every option after it.
        let exact = match code {
            7 | 19 => Some(1),  // preference, reconfigure message
            8 => Some(2),       // elapsed time
            12 => Some(16),     // server unicast
            14 | 20 => Some(0), // rapid commit, reconfigure accept
            _ => None,
        };
        if len < min || exact.is_some_and(|exact| len != exact) {
            return false;
        }
        if let Some(start) = nested
            && !well_formed(&body[start..], depth + 1)
        {
            return false;
        }
        data = &rest[len..];
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn config() -> Dhcp6Config {
        Dhcp6Config {
            network: "n".into(),
            interface: "virbr9".into(),
            server_mac: [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
            server_ip: "2001:db8:ca2:2::1".parse().unwrap(),
            subnet: "2001:db8:ca2:2::/64".parse().unwrap(),
            ranges: vec![(
                "2001:db8:ca2:2:1::10".parse().unwrap(),
                "2001:db8:ca2:2:1::ff".parse().unwrap(),
                None,
            )],
            hosts: vec![
                Dhcp6HostConfig {
                    duid: Some(vec![0, 4, 0x7e, 0x7d, 0xf0, 0x7d, 0xa8, 0xbc]),
                    name: Some("atlas".into()),
                    ip: "2001:db8:ca2:2:3::1".parse().unwrap(),
                    lease: None,
                },
                Dhcp6HostConfig {
                    duid: None,
                    name: Some("paul".into()),
                    ip: "2001:db8:ca2:2:3::2".parse().unwrap(),
                    lease: Some(Duration::from_secs(600)),
                },
            ],
            dns_server: Some("2001:db8:ca2:2::1".parse().unwrap()),
            domain: Some("example.org".into()),
            default_lease: Duration::from_secs(3600),
            log_dhcp: false,
        }
    }

    const CLIENT_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe01, 0x0203);
    const CLIENT_DUID: [u8; 10] = [0, 3, 0, 1, 0x52, 0x54, 0, 1, 2, 3];

    fn message(kind: MessageType, duid: &[u8], extra: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(kind, [1, 2, 3]);
        m.opts_mut().insert(DhcpOption::ClientId(duid.to_vec()));
        for opt in extra {
            m.opts_mut().insert(opt);
        }
        m.to_vec().unwrap()
    }

    fn ia(id: u32, addr: Option<&str>) -> DhcpOption {
        DhcpOption::IANA(IANA {
            id,
            t1: 0,
            t2: 0,
            opts: addr
                .map(|a| iaaddr(a.parse().unwrap(), 0, 0))
                .into_iter()
                .collect(),
        })
    }

    /// A Client FQDN option with the S flag and `name` in DNS wire format.
    fn fqdn_option(name: &[u8]) -> DhcpOption {
        let mut data = vec![0x01];
        data.extend_from_slice(name);
        DhcpOption::Unknown(dhcproto::v6::UnknownOption::new(
            OptionCode::from(OPTION_CLIENT_FQDN),
            data,
        ))
    }

    /// A SOLICIT with Rapid Commit from `duid` (at [`CLIENT_LL`]) carrying `opts`; the REPLY.
    fn rapid_solicit(
        engine: &mut Engine,
        duid: &[u8],
        mut opts: Vec<DhcpOption>,
        now: i64,
    ) -> Message {
        opts.push(DhcpOption::RapidCommit);
        let solicit = message(MessageType::Solicit, duid, opts);
        decode(&engine.handle(&solicit, CLIENT_LL, now).expect("a reply"))
    }

    fn decode(reply: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&reply.bytes)).unwrap()
    }

    fn server_id(engine: &Engine) -> DhcpOption {
        DhcpOption::ServerId(engine.config().server_duid())
    }

    /// An IA_NA as tests compare it: (iaid, t1, t2, [(addr, preferred, valid)], status).
    type IaSummary = (u32, u32, u32, Vec<(Ipv6Addr, u32, u32)>, Option<Status>);

    /// The first IA_NA of a reply.
    fn the_ia(m: &Message) -> IaSummary {
        let ia = ia_nas(m.opts()).next().expect("an IA_NA");
        let addrs = ia
            .opts
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IAAddr(a) => Some((a.addr, a.preferred_life, a.valid_life)),
                _ => None,
            })
            .collect();
        let status = ia.opts.iter().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some(s.status),
            _ => None,
        });
        (ia.id, ia.t1, ia.t2, addrs, status)
    }

    fn top_status(m: &Message) -> Option<Status> {
        m.opts().iter().find_map(|o| match o {
            DhcpOption::StatusCode(s) => Some(s.status),
            _ => None,
        })
    }

    #[test]
    fn solicit_is_advertised_byte_for_byte() {
        let mut engine = Engine::new(config());
        let solicit = message(MessageType::Solicit, &CLIENT_DUID, vec![ia(7, None)]);
        let reply = engine.handle(&solicit, CLIENT_LL, 1000).unwrap();
        assert!(!reply.needs_commit);
        #[rustfmt::skip]
        let expected: Vec<u8> = [
            // ADVERTISE, transaction id
            &[2, 1, 2, 3][..],
            // client id
            &[0, 1, 0, 10], &CLIENT_DUID,
            // server id: DUID-LL of the bridge MAC
            &[0, 2, 0, 10, 0, 3, 0, 1, 0x52, 0x54, 0, 0xaa, 0xbb, 0xcc],
            // IA_NA 7, T1 1800, T2 3150, IA address 2001:db8:ca2:2:1::1f (where the client's
            // seed points, as from dnsmasq) for 3600/3600
            &[0, 3, 0, 40, 0, 0, 0, 7, 0, 0, 0x07, 0x08, 0, 0, 0x0c, 0x4e],
            &[0, 5, 0, 24, 0x20, 0x01, 0x0d, 0xb8, 0x0c, 0xa2, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0x1f],
            &[0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10],
            // preference 255
            &[0, 7, 0, 1, 255],
            // DNS server 2001:db8:ca2:2::1
            &[0, 23, 0, 16, 0x20, 0x01, 0x0d, 0xb8, 0x0c, 0xa2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1],
            // domain search list example.org.
            &[0, 24, 0, 13, 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'o', b'r', b'g', 0],
        ]
        .concat();
        assert_eq!(reply.bytes, expected);
        assert!(
            engine.leases(1000).is_empty(),
            "an advertisement binds nothing"
        );
    }

    /// The IAs of a reply come in the order of the client's message.
    #[test]
    fn replies_keep_the_order_of_the_clients_ias() {
        let mut engine = Engine::new(config());
        // The test encoder inserts each IA before those of its code: the wire order
        // of this SOLICIT is 1, 2, 3.
        let solicit = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![ia(3, None), ia(2, None), ia(1, None)],
        );
        let sent: Vec<u32> = ia_nas(Message::decode(&mut Decoder::new(&solicit)).unwrap().opts())
            .map(|ia| ia.id)
            .collect();
        assert_eq!(sent, [1, 2, 3]);
        let reply = decode(&engine.handle(&solicit, CLIENT_LL, 1000).unwrap());
        let answered: Vec<u32> = ia_nas(reply.opts()).map(|ia| ia.id).collect();
        assert_eq!(answered, [1, 2, 3]);
    }

    #[test]
    fn one_message_gets_addresses_for_its_first_eight_ias_only() {
        let mut engine = Engine::new(config());
        let many = (1..=20).rev().map(|id| ia(id, None)).collect();
        let solicit = message(MessageType::Solicit, &CLIENT_DUID, many);
        let reply = decode(&engine.handle(&solicit, CLIENT_LL, 1000).unwrap());
        let answered: Vec<u32> = ia_nas(reply.opts()).map(|ia| ia.id).collect();
        assert_eq!(answered, (1..=8).collect::<Vec<u32>>());

        // A REBIND asking for 20 free addresses binds 8.
        let mut engine = Engine::new(config());
        let asked = (1..=20u32)
            .rev()
            .map(|id| ia(id, Some(&format!("2001:db8:ca2:2:1::{:x}", 0x20 + id))))
            .collect();
        let rebind = message(MessageType::Rebind, &CLIENT_DUID, asked);
        let reply = decode(&engine.handle(&rebind, CLIENT_LL, 1000).unwrap());
        assert_eq!(ia_nas(reply.opts()).count(), 8);
        assert_eq!(engine.leases(1000).len(), 8);
    }

    #[test]
    fn request_binds_renew_keeps_release_frees() {
        let mut engine = Engine::new(config());
        let sid = server_id(&engine);
        let advertise = decode(
            &engine
                .handle(
                    &message(MessageType::Solicit, &CLIENT_DUID, vec![ia(7, None)]),
                    CLIENT_LL,
                    0,
                )
                .unwrap(),
        );
        let (_, _, _, addrs, _) = the_ia(&advertise);
        let offered = addrs[0].0;
        let request = message(
            MessageType::Request,
            &CLIENT_DUID,
            vec![sid.clone(), ia(7, Some(&offered.to_string()))],
        );
        let reply = engine.handle(&request, CLIENT_LL, 10).unwrap();
        assert!(reply.needs_commit && !reply.renews);
        let reply = decode(&reply);
        assert_eq!(reply.msg_type(), MessageType::Reply);
        assert_eq!(
            the_ia(&reply),
            (7, 1800, 3150, vec![(offered, 3600, 3600)], None)
        );
        let leases = engine.leases(10);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].ip, offered);
        assert_eq!(leases[0].iaid, 7);
        assert_eq!(leases[0].mac, Some([0x52, 0x54, 0, 1, 2, 3]));
        assert_eq!(leases[0].expiry_unix, 3610);

        // A request without the server id, or another server's, is not for us.
        let other = message(MessageType::Request, &CLIENT_DUID, vec![ia(7, None)]);
        assert_eq!(engine.handle(&other, CLIENT_LL, 10), None);

        let renew = message(
            MessageType::Renew,
            &CLIENT_DUID,
            vec![sid.clone(), ia(7, Some(&offered.to_string()))],
        );
        let renewed = engine.handle(&renew, CLIENT_LL, 2000).unwrap();
        // Only extending: sent even if the save fails, where the REQUEST's was not.
        assert!(renewed.needs_commit && renewed.renews);
        let reply = decode(&renewed);
        assert_eq!(the_ia(&reply).3, vec![(offered, 3600, 3600)]);
        assert_eq!(engine.leases(2000)[0].expiry_unix, 5600);

        let rebind = message(
            MessageType::Rebind,
            &CLIENT_DUID,
            vec![ia(7, Some(&offered.to_string()))],
        );
        let reply = decode(&engine.handle(&rebind, CLIENT_LL, 3000).unwrap());
        assert_eq!(the_ia(&reply).3, vec![(offered, 3600, 3600)]);

        let release = message(
            MessageType::Release,
            &CLIENT_DUID,
            vec![sid.clone(), ia(7, Some(&offered.to_string()))],
        );
        let reply = decode(&engine.handle(&release, CLIENT_LL, 3001).unwrap());
        assert_eq!(top_status(&reply), Some(Status::Success));
        assert!(engine.leases(3001).is_empty());

        // Releasing again: NoBinding for the IA.
        let reply = decode(&engine.handle(&release, CLIENT_LL, 3002).unwrap());
        assert_eq!(the_ia(&reply).4, Some(Status::NoBinding));
    }

    #[test]
    fn renew_of_an_unknown_binding_rebinds_a_free_address_and_zeroes_a_foreign_one() {
        let mut engine = Engine::new(config());
        let sid = server_id(&engine);
        let renew = message(
            MessageType::Renew,
            &CLIENT_DUID,
            vec![sid.clone(), ia(1, Some("2001:db8:ca2:2:1::20"))],
        );
        let rebound = engine.handle(&renew, CLIENT_LL, 0).unwrap();
        // A new binding: sent only once saved.
        assert!(rebound.needs_commit && !rebound.renews);
        let reply = decode(&rebound);
        assert_eq!(
            the_ia(&reply).3,
            vec![("2001:db8:ca2:2:1::20".parse().unwrap(), 3600, 3600)]
        );
        // A reservation added for a client with a dynamic lease: its renewal gets the
        // reserved address and the old one with lifetimes 0.
        let mut config = config();
        config.hosts[0].duid = Some(CLIENT_DUID.to_vec());
        engine.update(config);
        let renew = message(
            MessageType::Renew,
            &CLIENT_DUID,
            vec![sid.clone(), ia(1, Some("2001:db8:ca2:2:1::20"))],
        );
        let reply = decode(&engine.handle(&renew, CLIENT_LL, 10).unwrap());
        assert_eq!(
            the_ia(&reply).3,
            vec![
                ("2001:db8:ca2:2:1::20".parse().unwrap(), 0, 0),
                ("2001:db8:ca2:2:3::1".parse().unwrap(), 3600, 3600),
            ]
        );
        assert_eq!(engine.leases(10).len(), 1);
        assert_eq!(
            engine.leases(10)[0].ip,
            "2001:db8:ca2:2:3::1".parse::<Ipv6Addr>().unwrap()
        );
        // Off the network: lifetimes 0.
        let rebind = message(
            MessageType::Rebind,
            &[0, 3, 0, 1, 1, 1, 1, 1, 1, 1],
            vec![ia(1, Some("2001:db8:ffff::20"))],
        );
        let reply = decode(&engine.handle(&rebind, CLIENT_LL, 0).unwrap());
        assert_eq!(
            the_ia(&reply),
            (
                1,
                0,
                0,
                vec![("2001:db8:ffff::20".parse().unwrap(), 0, 0)],
                None
            )
        );
        // No address and no binding: NoBinding.
        let renew = message(
            MessageType::Renew,
            &[0, 3, 0, 1, 2, 2, 2, 2, 2, 2],
            vec![sid, ia(1, None)],
        );
        let reply = decode(&engine.handle(&renew, CLIENT_LL, 0).unwrap());
        assert_eq!(the_ia(&reply).4, Some(Status::NoBinding));
    }

    /// RFC 8415 18.3.4/18.3.5: a RENEW or REBIND for an address of this link that the
    /// client holds no binding of, and that cannot be bound to it (another client has
    /// it, or it is outside the ranges), gets NoBinding in an IA without addresses, so
    /// the client sends a REQUEST instead of renewing an address it must not use.
    #[test]
    fn renew_and_rebind_of_an_address_the_client_cannot_have_get_no_binding() {
        let mut engine = Engine::new(config());
        let solicit = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![ia(1, None), DhcpOption::RapidCommit],
        );
        let taken = the_ia(&decode(&engine.handle(&solicit, CLIENT_LL, 0).unwrap())).3[0].0;
        let other = [0, 3, 0, 1, 2, 2, 2, 2, 2, 2];
        let sid = server_id(&engine);
        let outside_ranges = "2001:db8:ca2:2::99";
        for address in [taken.to_string().as_str(), outside_ranges] {
            for (kind, with_sid) in [(MessageType::Renew, true), (MessageType::Rebind, false)] {
                let mut opts = vec![ia(4, Some(address))];
                if with_sid {
                    opts.push(sid.clone());
                }
                let reply = decode(
                    &engine
                        .handle(&message(kind, &other, opts), CLIENT_LL, 5)
                        .unwrap(),
                );
                assert_eq!(
                    the_ia(&reply),
                    (4, 0, 0, vec![], Some(Status::NoBinding)),
                    "{kind:?} of {address}"
                );
                assert_eq!(top_status(&reply), None, "the status is the IA's");
            }
        }
        // One address of this link is enough for NoBinding; the foreign one is not
        // listed (the client's REQUEST starts over).
        let mut both = ia(4, Some(outside_ranges));
        if let DhcpOption::IANA(ia) = &mut both {
            ia.opts
                .insert(iaaddr("2001:db8:ffff::20".parse().unwrap(), 0, 0));
        }
        let reply = decode(
            &engine
                .handle(
                    &message(MessageType::Rebind, &other, vec![both]),
                    CLIENT_LL,
                    5,
                )
                .unwrap(),
        );
        assert_eq!(the_ia(&reply), (4, 0, 0, vec![], Some(Status::NoBinding)));
        // The holder's binding is untouched.
        let leases = engine.leases(5);
        assert_eq!(leases.len(), 1);
        assert_eq!(
            (leases[0].ip, leases[0].duid.as_slice()),
            (taken, &CLIENT_DUID[..])
        );
    }

    /// RFC 8415 16 and 18.4: without a Server Unicast option, messages sent to the
    /// server's unicast address bind nothing; those that name the server get a REPLY
    /// with only UseMulticast and the identifiers, the others none.
    #[test]
    fn unicast_messages_get_use_multicast_or_nothing() {
        let mut engine = Engine::new(config());
        let sid = server_id(&engine);
        for kind in [
            MessageType::Request,
            MessageType::Renew,
            MessageType::Release,
            MessageType::Decline,
        ] {
            let request = message(
                kind,
                &CLIENT_DUID,
                vec![sid.clone(), ia(1, Some("2001:db8:ca2:2:1::20"))],
            );
            let reply = engine.handle_unicast(&request, CLIENT_LL, 0).unwrap();
            assert!(!reply.needs_commit, "{kind:?}");
            let reply = decode(&reply);
            assert_eq!(reply.msg_type(), MessageType::Reply);
            assert_eq!(reply.xid(), [1, 2, 3]);
            let opts: Vec<&DhcpOption> = reply.opts().iter().collect();
            assert_eq!(
                opts,
                [
                    &DhcpOption::ClientId(CLIENT_DUID.to_vec()),
                    &sid,
                    &status(Status::UseMulticast, "send to ff02::1:2"),
                ],
                "{kind:?}"
            );
        }
        assert!(engine.leases(0).is_empty());
        for kind in [
            MessageType::Solicit,
            MessageType::Confirm,
            MessageType::Rebind,
            MessageType::InformationRequest,
        ] {
            let other = message(
                kind,
                &CLIENT_DUID,
                vec![ia(1, Some("2001:db8:ca2:2:1::20"))],
            );
            assert_eq!(
                engine.handle_unicast(&other, CLIENT_LL, 0),
                None,
                "{kind:?}"
            );
        }
        // A REQUEST for another server stays unanswered, unicast or not.
        let foreign = message(
            MessageType::Request,
            &CLIENT_DUID,
            vec![
                DhcpOption::ServerId(vec![0, 3, 0, 1, 1, 2, 3, 4, 5, 6]),
                ia(1, None),
            ],
        );
        assert_eq!(engine.handle_unicast(&foreign, CLIENT_LL, 0), None);
    }

    #[test]
    fn reserved_duid_and_name_get_their_addresses_and_names() {
        let mut engine = Engine::new(config());
        let atlas = [0, 4, 0x7e, 0x7d, 0xf0, 0x7d, 0xa8, 0xbc];
        let solicit = message(
            MessageType::Solicit,
            &atlas,
            vec![ia(1, Some("2001:db8:ca2:2:1::99")), DhcpOption::RapidCommit],
        );
        let reply = engine.handle(&solicit, CLIENT_LL, 0).unwrap();
        assert!(reply.needs_commit, "rapid commit binds");
        let reply = decode(&reply);
        assert_eq!(reply.msg_type(), MessageType::Reply);
        assert!(reply.opts().get(OptionCode::RapidCommit).is_some());
        assert_eq!(
            the_ia(&reply).3,
            vec![("2001:db8:ca2:2:3::1".parse().unwrap(), 3600, 3600)]
        );
        assert_eq!(engine.leases(0)[0].hostname.as_deref(), Some("atlas"));
        // The MAC of a non-link-layer DUID comes from the EUI-64 source address.
        assert_eq!(engine.leases(0)[0].mac, Some([0x52, 0x54, 0, 1, 2, 3]));

        // paul is matched by the name in its FQDN option, and gets its 600 s lease.
        let fqdn = fqdn_option(b"\x04Paul\x07example\x03org\x00");
        let solicit = message(
            MessageType::Solicit,
            &[0, 2, 0, 0, 0, 9, 1],
            vec![ia(1, None), fqdn, DhcpOption::RapidCommit],
        );
        let reply = decode(
            &engine
                .handle(&solicit, "fe80::1".parse().unwrap(), 0)
                .unwrap(),
        );
        assert_eq!(
            the_ia(&reply),
            (
                1,
                300,
                525,
                vec![("2001:db8:ca2:2:3::2".parse().unwrap(), 600, 600)],
                None
            )
        );
        let paul = engine
            .leases(0)
            .into_iter()
            .find(|l| l.hostname.as_deref() == Some("paul"))
            .unwrap();
        assert_eq!(paul.mac, None);
        // RFC 4704 5: the answer names it by its reservation, under the domain, S kept.
        assert_eq!(
            client_fqdn(reply.opts()),
            Some(&b"\x01\x04paul\x07example\x03org\x00"[..])
        );
    }

    #[test]
    fn a_client_fqdn_is_answered_as_dnsmasq_does() {
        let answer = |asked: &[u8], domain: Option<&str>| match fqdn_answer(asked, "web", domain) {
            Some(DhcpOption::Unknown(option)) => option.data().to_vec(),
            other => panic!("{other:?}"),
        };
        // No S: the server updates all the same (S, O); N cleared; high bits cleared.
        assert_eq!(
            answer(b"\xfc\x03web\x00", Some("example.org")),
            b"\x03\x03web\x07example\x03org\x00"
        );
        // Without a domain, a partial name.
        assert_eq!(answer(b"\x01\x03web", None), b"\x01\x03web");
        // A client without the option gets none.
        let mut engine = Engine::new(config());
        let reply = rapid_solicit(&mut engine, &CLIENT_DUID, vec![ia(1, None)], 0);
        assert_eq!(client_fqdn(reply.opts()), None);
    }

    /// A name-reserved client renewing without its FQDN option (RFC 4704 does not ask
    /// for it again) keeps its address; a reserved client with two IAs keeps each IA's
    /// address whichever it renews; and both leases survive a restart.
    #[test]
    fn reserved_clients_keep_their_addresses_across_renewals_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.leases6");
        let mut engine = Engine::with_lease_file(config(), &path, 0).unwrap();
        let paul_duid = [0, 2, 0, 0, 0, 9, 1];
        let paul_ip: Ipv6Addr = "2001:db8:ca2:2:3::2".parse().unwrap();
        let fqdn = fqdn_option(b"\x04paul\x00");
        let reply = rapid_solicit(&mut engine, &paul_duid, vec![ia(1, None), fqdn], 0);
        assert_eq!(the_ia(&reply).3[0].0, paul_ip);
        let renew = message(
            MessageType::Renew,
            &paul_duid,
            vec![ia(1, Some("2001:db8:ca2:2:3::2")), server_id(&engine)],
        );
        let reply = decode(&engine.handle(&renew, CLIENT_LL, 100).unwrap());
        assert_eq!(the_ia(&reply).3, vec![(paul_ip, 600, 600)], "{reply:?}");

        let atlas = [0, 4, 0x7e, 0x7d, 0xf0, 0x7d, 0xa8, 0xbc];
        let atlas_ip: Ipv6Addr = "2001:db8:ca2:2:3::1".parse().unwrap();
        let request = message(
            MessageType::Solicit,
            &atlas,
            vec![ia(5, None), ia(6, None), DhcpOption::RapidCommit],
        );
        let reply = decode(&engine.handle(&request, CLIENT_LL, 0).unwrap());
        // The reservation goes to one IA (the first on the wire), the pool serves the other.
        let ias: Vec<(u32, Ipv6Addr)> = ia_nas(reply.opts())
            .map(|ia| (ia.id, the_addresses(ia)[0]))
            .collect();
        let reserved_ia = ias
            .iter()
            .find(|(_, ip)| *ip == atlas_ip)
            .expect("reserved")
            .0;
        let (other_ia, pool_ip) = *ias.iter().find(|(_, ip)| *ip != atlas_ip).expect("pool");
        // Each IA renewed alone keeps its own address, the one without the
        // reservation first.
        for (iaid, ip) in [(other_ia, pool_ip), (reserved_ia, atlas_ip)] {
            let renew = message(
                MessageType::Renew,
                &atlas,
                vec![ia(iaid, Some(&ip.to_string())), server_id(&engine)],
            );
            let reply = decode(&engine.handle(&renew, CLIENT_LL, 200).unwrap());
            assert_eq!(the_ia(&reply).3, vec![(ip, 3600, 3600)], "IA {iaid}");
        }
        engine.commit(300).unwrap();
        drop(engine);
        let reopened = Engine::with_lease_file(config(), &path, 300).unwrap();
        let mut kept: Vec<Ipv6Addr> = reopened.leases(300).into_iter().map(|l| l.ip).collect();
        kept.sort();
        let mut expected = vec![atlas_ip, paul_ip, pool_ip];
        expected.sort();
        assert_eq!(kept, expected);
    }

    /// A reserved client that declines its address (someone else answers for it) is
    /// served from the pool meanwhile, not offered the same address again.
    #[test]
    fn a_declined_reservation_is_not_offered_back_at_once() {
        let mut engine = Engine::new(config());
        let atlas = [0, 4, 0x7e, 0x7d, 0xf0, 0x7d, 0xa8, 0xbc];
        let reply = rapid_solicit(&mut engine, &atlas, vec![ia(1, None)], 0);
        let reserved = the_ia(&reply).3[0].0;
        let decline = message(
            MessageType::Decline,
            &atlas,
            vec![ia(1, Some(&reserved.to_string())), server_id(&engine)],
        );
        engine.handle(&decline, CLIENT_LL, 10).unwrap();
        let solicit = message(MessageType::Solicit, &atlas, vec![ia(1, None)]);
        let reply = decode(&engine.handle(&solicit, CLIENT_LL, 20).unwrap());
        let offered = the_ia(&reply).3[0].0;
        assert_ne!(offered, reserved);
    }

    /// A binding the server refuses to extend (its address was reserved for another
    /// client since) ends with the NoBinding answer: the reserved client gets it.
    #[test]
    fn a_binding_answered_no_binding_ends_and_the_reserved_client_gets_its_address() {
        let mut config = config();
        let mut engine = Engine::new(config.clone());
        let reply = rapid_solicit(&mut engine, &CLIENT_DUID, vec![ia(1, None)], 0);
        let held = the_ia(&reply).3[0].0;
        let newcomer = [0, 4, 1, 2, 3, 4];
        reserve(&mut config, &newcomer, held);
        engine.update(config);
        let renew = message(
            MessageType::Renew,
            &CLIENT_DUID,
            vec![ia(1, Some(&held.to_string())), server_id(&engine)],
        );
        let reply = decode(&engine.handle(&renew, CLIENT_LL, 100).unwrap());
        assert_eq!(the_ia(&reply).4, Some(Status::NoBinding));
        assert_eq!(advertised(&mut engine, &newcomer, 110), held);
    }

    /// A reserved client that asks with a new IAID (reinstalled, its interface renamed)
    /// gets its reservation on the new IA.
    #[test]
    fn a_reserved_client_with_a_new_iaid_gets_its_reservation() {
        let mut engine = Engine::new(config());
        let atlas = [0, 4, 0x7e, 0x7d, 0xf0, 0x7d, 0xa8, 0xbc];
        let atlas_ip: Ipv6Addr = "2001:db8:ca2:2:3::1".parse().unwrap();
        for iaid in [1, 7] {
            let reply = rapid_solicit(&mut engine, &atlas, vec![ia(iaid, None)], 0);
            assert_eq!(the_ia(&reply).3[0].0, atlas_ip, "IA {iaid}");
        }
    }

    /// A lease on an address reserved since for another client survives a restart
    /// as it survives while the daemon runs: the reserved client is not offered it.
    #[test]
    fn a_lease_on_an_address_reserved_since_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.leases6");
        let mut config = config();
        let mut engine = Engine::with_lease_file(config.clone(), &path, 0).unwrap();
        let reply = rapid_solicit(&mut engine, &CLIENT_DUID, vec![ia(1, None)], 0);
        let held = the_ia(&reply).3[0].0;
        engine.commit(0).unwrap();
        drop(engine);
        let newcomer = [0, 4, 1, 2, 3, 4];
        reserve(&mut config, &newcomer, held);
        let mut engine = Engine::with_lease_file(config, &path, 10).unwrap();
        assert_eq!(engine.leases(10).len(), 1);
        assert_ne!(advertised(&mut engine, &newcomer, 10), held);
    }

    /// Reserves `ip` for the client with DUID `duid`.
    fn reserve(config: &mut Dhcp6Config, duid: &[u8], ip: Ipv6Addr) {
        config.hosts.push(Dhcp6HostConfig {
            duid: Some(duid.to_vec()),
            name: None,
            ip,
            lease: None,
        });
    }

    /// The address advertised to `duid` (at another link-local address) for one IA.
    fn advertised(engine: &mut Engine, duid: &[u8], now: i64) -> Ipv6Addr {
        let solicit = message(MessageType::Solicit, duid, vec![ia(1, None)]);
        let reply = decode(
            &engine
                .handle(&solicit, "fe80::9".parse().unwrap(), now)
                .unwrap(),
        );
        the_ia(&reply).3[0].0
    }

    fn the_addresses(ia: &IANA) -> Vec<Ipv6Addr> {
        ia.opts
            .iter()
            .filter_map(|o| match o {
                DhcpOption::IAAddr(a) => Some(a.addr),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_client_cannot_take_a_reservations_name() {
        let mut engine = Engine::new(config());
        // atlas's name belongs to its DUID's reservation: another client calling itself
        // atlas gets an address, not the name.
        let fqdn = fqdn_option(b"\x05atlas\x00");
        let reply = rapid_solicit(&mut engine, &CLIENT_DUID, vec![ia(1, None), fqdn], 0);
        assert_eq!(the_ia(&reply).3.len(), 1);
        let leases = engine.leases(0);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].hostname, None);
    }

    /// The ADVERTISE to a SOLICIT for one address from a client other than
    /// [`CLIENT_DUID`].
    fn another_client_solicits(engine: &mut Engine) -> Message {
        let solicit = message(
            MessageType::Solicit,
            &[0, 3, 0, 1, 9, 9, 9, 9, 9, 9],
            vec![ia(1, None)],
        );
        decode(&engine.handle(&solicit, CLIENT_LL, 0).unwrap())
    }

    #[test]
    fn a_range_holding_the_bridge_address_never_hands_it_out() {
        let mut config = config();
        let bridge = config.server_ip;
        config.ranges = vec![(bridge, "2001:db8:ca2:2::2".parse().unwrap(), None)];
        let mut engine = Engine::new(config);
        let first = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![ia(1, Some("2001:db8:ca2:2::1")), DhcpOption::RapidCommit],
        );
        let reply = decode(&engine.handle(&first, CLIENT_LL, 0).unwrap());
        let addrs: Vec<Ipv6Addr> = the_ia(&reply).3.iter().map(|a| a.0).collect();
        assert_eq!(addrs, ["2001:db8:ca2:2::2".parse::<Ipv6Addr>().unwrap()]);
        let reply = another_client_solicits(&mut engine);
        assert_eq!(top_status(&reply), Some(Status::NoAddrsAvail));
        assert!(engine.leases(0).iter().all(|lease| lease.ip != bridge));
    }

    #[test]
    fn a_full_pool_advertises_only_no_addrs_avail_and_ta_pd_are_refused() {
        let mut config = config();
        config.ranges = vec![(
            "2001:db8:ca2:2:1::10".parse().unwrap(),
            "2001:db8:ca2:2:1::10".parse().unwrap(),
            None,
        )];
        let mut engine = Engine::new(config);
        // Bound: an address only offered would be taken over.
        let first = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![ia(1, None), DhcpOption::RapidCommit],
        );
        assert!(engine.handle(&first, CLIENT_LL, 0).is_some());
        let reply = another_client_solicits(&mut engine);
        assert_eq!(top_status(&reply), Some(Status::NoAddrsAvail));
        assert_eq!(reply.msg_type(), MessageType::Advertise);
        let rapid = message(
            MessageType::Solicit,
            &[0, 3, 0, 1, 9, 9, 9, 9, 9, 9],
            vec![ia(1, None), DhcpOption::RapidCommit],
        );
        let reply = decode(&engine.handle(&rapid, CLIENT_LL, 0).unwrap());
        assert_eq!(
            reply.msg_type(),
            MessageType::Advertise,
            "nothing to commit"
        );
        assert!(reply.opts().get(OptionCode::RapidCommit).is_none());
        assert_eq!(top_status(&reply), Some(Status::NoAddrsAvail));
        assert!(ia_nas(reply.opts()).next().is_none());

        let ta_pd = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![
                ia(1, None),
                DhcpOption::IATA(IATA {
                    id: 2,
                    opts: DhcpOptions::new(),
                }),
                DhcpOption::IAPD(IAPD {
                    id: 3,
                    t1: 0,
                    t2: 0,
                    opts: DhcpOptions::new(),
                }),
            ],
        );
        let reply = decode(&engine.handle(&ta_pd, CLIENT_LL, 0).unwrap());
        let ta = ia_tas(reply.opts()).next().unwrap();
        assert!(
            ta.opts.iter().any(
                |o| matches!(o, DhcpOption::StatusCode(s) if s.status == Status::NoAddrsAvail)
            )
        );
        let pd = ia_pds(reply.opts()).next().unwrap();
        assert!(
            pd.opts.iter().any(
                |o| matches!(o, DhcpOption::StatusCode(s) if s.status == Status::NoPrefixAvail)
            )
        );
    }

    #[test]
    fn confirm_decline_and_information_request() {
        let mut engine = Engine::new(config());
        let confirm =
            |addr: &str| message(MessageType::Confirm, &CLIENT_DUID, vec![ia(1, Some(addr))]);
        let reply = decode(
            &engine
                .handle(&confirm("2001:db8:ca2:2::99"), CLIENT_LL, 0)
                .unwrap(),
        );
        assert_eq!(top_status(&reply), Some(Status::Success));
        let reply = decode(
            &engine
                .handle(&confirm("2001:db8:1::99"), CLIENT_LL, 0)
                .unwrap(),
        );
        assert_eq!(top_status(&reply), Some(Status::NotOnLink));
        let empty = message(MessageType::Confirm, &CLIENT_DUID, vec![ia(1, None)]);
        assert_eq!(engine.handle(&empty, CLIENT_LL, 0), None);

        let sid = server_id(&engine);
        let solicit = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![ia(1, None), DhcpOption::RapidCommit],
        );
        let addr = the_ia(&decode(&engine.handle(&solicit, CLIENT_LL, 0).unwrap())).3[0].0;
        let decline = message(
            MessageType::Decline,
            &CLIENT_DUID,
            vec![sid, ia(1, Some(&addr.to_string()))],
        );
        let reply = decode(&engine.handle(&decline, CLIENT_LL, 1).unwrap());
        assert_eq!(top_status(&reply), Some(Status::Success));
        assert!(engine.leases(1).is_empty());
        let next = the_ia(&decode(&engine.handle(&solicit, CLIENT_LL, 2).unwrap())).3[0].0;
        assert_ne!(
            next, addr,
            "a declined address is not handed out again at once"
        );

        let mut info = Message::new_with_id(MessageType::InformationRequest, [9, 9, 9]);
        info.opts_mut().insert(DhcpOption::ElapsedTime(0));
        let reply = decode(
            &engine
                .handle(&info.to_vec().unwrap(), CLIENT_LL, 0)
                .unwrap(),
        );
        assert_eq!(reply.msg_type(), MessageType::Reply);
        assert_eq!(
            reply.opts().get(OptionCode::DomainNameServers),
            Some(&DhcpOption::DomainNameServers(vec![
                "2001:db8:ca2:2::1".parse().unwrap()
            ]))
        );
        assert!(ia_nas(reply.opts()).next().is_none());
        // RFC 8415 16.12: an INFORMATION-REQUEST with an IA is dropped.
        info.opts_mut().insert(ia(1, None));
        assert_eq!(engine.handle(&info.to_vec().unwrap(), CLIENT_LL, 0), None);
    }

    #[test]
    fn server_messages_relays_and_solicits_with_a_server_id_get_no_answer() {
        let mut engine = Engine::new(config());
        for kind in [
            MessageType::Advertise,
            MessageType::Reply,
            MessageType::Reconfigure,
            MessageType::RelayForw,
            MessageType::RelayRepl,
        ] {
            assert_eq!(
                engine.handle(
                    &message(kind, &CLIENT_DUID, vec![ia(1, None)]),
                    CLIENT_LL,
                    0
                ),
                None
            );
        }
        let with_sid = message(
            MessageType::Solicit,
            &CLIENT_DUID,
            vec![server_id(&engine), ia(1, None)],
        );
        assert_eq!(engine.handle(&with_sid, CLIENT_LL, 0), None);
        let no_client = Message::new(MessageType::Solicit).to_vec().unwrap();
        assert_eq!(engine.handle(&no_client, CLIENT_LL, 0), None);
    }

    #[test]
    fn options_too_short_for_their_header_are_refused_before_decoding() {
        for (code, len) in [
            (11u16, 3u16),
            (13, 1),
            (16, 2),
            (17, 0),
            (3, 4),
            (5, 8),
            (9, 10),
        ] {
            let mut packet = vec![1, 0, 0, 1];
            packet.extend_from_slice(&code.to_be_bytes());
            packet.extend_from_slice(&len.to_be_bytes());
            packet.extend(std::iter::repeat_n(0, usize::from(len)));
            assert!(!well_formed(&packet[4..], 0), "option {code} length {len}");
            let mut engine = Engine::new(config());
            assert_eq!(engine.handle(&packet, CLIENT_LL, 0), None);
        }
        // A status code nested inside an IA address inside an IA_NA.
        let mut nested = vec![0, 13, 0, 1, 0];
        let mut addr = vec![0, 5, 0, 29];
        addr.extend_from_slice(&[0; 24]);
        addr.append(&mut nested);
        let mut iana = vec![0, 3];
        iana.extend_from_slice(&u16::try_from(12 + addr.len()).unwrap().to_be_bytes());
        iana.extend_from_slice(&[0; 12]);
        iana.extend_from_slice(&addr);
        assert!(!well_formed(&iana, 0));
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz test.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    /// Random and mutated packets through the engine: nothing may panic (debug builds
    /// check arithmetic overflow, which is what dhcproto's decoder would hit).
    #[test]
    fn random_and_mutated_packets_never_panic() {
        // The log-dhcp lines are made of guest input too.
        let mut engine = Engine::new(Dhcp6Config {
            log_dhcp: true,
            ..config()
        });
        let sid = server_id(&engine);
        let fqdn = fqdn_option(b"\x04host\x00");
        let seeds: Vec<Vec<u8>> = [
            MessageType::Solicit,
            MessageType::Request,
            MessageType::Renew,
            MessageType::Rebind,
            MessageType::Release,
            MessageType::Decline,
            MessageType::Confirm,
        ]
        .into_iter()
        .map(|kind| {
            message(
                kind,
                &CLIENT_DUID,
                vec![
                    sid.clone(),
                    ia(1, Some("2001:db8:ca2:2:1::20")),
                    fqdn.clone(),
                    DhcpOption::RapidCommit,
                ],
            )
        })
        .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut replies = 0;
        for round in 0..30_000 {
            let mut packet = match round % 4 {
                0 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                _ => seeds[rng.below(seeds.len())].clone(),
            };
            for _ in 0..=rng.below(4) {
                if packet.is_empty() {
                    break;
                }
                let at = rng.below(packet.len());
                match rng.below(3) {
                    0 => packet[at] = rng.next() as u8,
                    1 => packet.truncate(at),
                    _ => packet.insert(at, rng.next() as u8),
                }
            }
            if engine
                .handle(&packet, CLIENT_LL, i64::from(round))
                .is_some()
            {
                replies += 1;
            }
        }
        assert!(
            replies > 1000,
            "mutated seeds should often stay valid: {replies} replies"
        );
    }
}
