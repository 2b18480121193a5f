//! One DHCP message in, at most one reply out: the protocol logic without sockets or
//! clocks, so unit tests and the fuzz target call exactly what the server calls.
//!
//! Reply destinations (RFC 2131 4.1, as they work with udhcpc and dhclient on Linux):
//! - NAK: broadcast;
//! - the client has an address (`ciaddr`: RENEWING, REBINDING, INFORM): unicast to
//!   `ciaddr:68`, which the kernel can resolve with ARP;
//! - an OFFER or ACK to a client without the broadcast flag: unicast to `yiaddr:68` at
//!   its hardware address, as dnsmasq sends it: the server first tells the kernel
//!   where `yiaddr` is ([`Reply::hardware`]), since the client cannot answer ARP for an
//!   address it has not taken. Only that client sees it, not every guest on the
//!   bridge (isolated ports included);
//! - otherwise broadcast to `255.255.255.255:68` on the bridge;
//! - the request came through a relay agent on the network (`giaddr` in our subnet):
//!   unicast to `giaddr:67` (RFC 2131 4.1), the relay forwards it. Load generators
//!   such as kea's `perfdhcp` work this way.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dhcproto::error::DecodeError;
use dhcproto::v4::{
    DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::lease_time::{INFINITE, renew_times};
use super::leases::{Client, LeaseDb, PendingSync};
use super::log::{Exchange, MESSAGES_PER_SECOND};
use super::server::SERVER_PORT;
use super::{DhcpConfig, Error, LeaseInfo, sanitize_hostname};
use crate::debug_log::LogBudget;
use crate::xml::DhcpOptionValue;

/// The DHCP client port replies go to.
pub const CLIENT_PORT: u16 = 68;
/// Why a message gets no answer, as `log-dhcp` says it: it is for another server (it
/// chose another's offer, or releases a lease of another's)...
const FOR_ANOTHER_SERVER: &str = "for another server";
/// ...it releases or declines an address it holds no lease on (dnsmasq's words)...
const UNKNOWN_LEASE: &str = "unknown lease";
/// ...or its reply could not be encoded (logged as an error).
const UNBUILT: &str = "reply not built";
/// Replies are padded to the BOOTP minimum some clients insist on.
const MIN_REPLY_LEN: usize = 300;
/// Seconds between two "pool full" warnings of one network.
const FULL_LOG_INTERVAL: i64 = 10;

/// A reply to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Where to send it.
    pub to: SocketAddrV4,
    /// The encoded BOOTP message.
    pub bytes: Vec<u8>,
    /// The reply confirms a binding: send it only once [`Engine::commit`] succeeded.
    pub needs_commit: bool,
    /// It renews the binding the client holds on the same address: sent even if that
    /// commit fails (a full state directory), with a warning, as dnsmasq goes on
    /// answering. Only the expiry in the file is behind; withholding the ACK would take
    /// the address from a guest using it.
    pub renews: bool,
    /// The client's hardware address, when `to` is an address the client has not taken
    /// yet (its offer or ACK, sent unicast as RFC 2131 4.1 asks): the kernel cannot
    /// find it by ARP, so the server tells it first, as dnsmasq does.
    pub hardware: Option<[u8; 6]>,
}

/// What one message gets.
#[derive(Debug)]
enum Handled {
    Reply(Reply),
    /// Nothing, none being due (a RELEASE, a DECLINE).
    Done,
    /// Nothing, for this reason (in dnsmasq's words where it has them), which
    /// `log-dhcp` says.
    Ignored(&'static str),
}

/// The DHCP logic of one network.
#[derive(Debug)]
pub struct Engine {
    config: DhcpConfig,
    leases: LeaseDb,
    last_full_log: Option<i64>,
    /// `log-dhcp`'s share of lines.
    log_budget: LogBudget,
    /// Bumped by every binding and configuration change: the DNS server re-reads the
    /// lease names when it moves.
    changes: Arc<AtomicU64>,
}

impl Engine {
    /// An engine whose leases live only in memory (tests, fuzzing).
    pub fn new(config: DhcpConfig) -> Engine {
        let leases = LeaseDb::in_memory(&config);
        Engine {
            config,
            leases,
            last_full_log: None,
            log_budget: LogBudget::per_second(MESSAGES_PER_SECOND),
            changes: Arc::default(),
        }
    }

    /// An engine whose leases are loaded from and journaled to `lease_file`.
    pub fn with_lease_file(
        config: DhcpConfig,
        lease_file: &Path,
        now: i64,
    ) -> Result<Engine, Error> {
        let leases = LeaseDb::open(&config, lease_file, now)?;
        Ok(Engine {
            config,
            leases,
            last_full_log: None,
            log_budget: LogBudget::per_second(MESSAGES_PER_SECOND),
            changes: Arc::default(),
        })
    }

    /// Applies a new configuration, keeping the leases.
    pub fn update(&mut self, config: DhcpConfig) {
        self.leases.configure(&config);
        self.config = config;
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// A counter that moves whenever a binding may have changed.
    pub fn changes(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.changes)
    }

    /// The configuration served.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// Bound, unexpired leases.
    pub fn leases(&self, now: i64) -> Vec<LeaseInfo> {
        self.leases.leases(now)
    }

    /// The names DNS answers for the bound, unexpired leases ([`super::dns_names`]).
    pub fn dns_names(&self, now: i64) -> Vec<(std::net::Ipv4Addr, String)> {
        super::dns_names(self.leases.leases_by_binding(now))
    }

    /// Makes the bindings made since the last call durable.
    pub fn commit(&mut self) -> Result<(), Error> {
        self.leases.commit()
    }

    /// Takes the bindings made since the last call, to be made durable off this thread;
    /// see [`LeaseDb::begin_commit`].
    pub fn begin_commit(&mut self) -> Result<PendingSync, Error> {
        self.leases.begin_commit()
    }

    /// Reports how the sync of [`Engine::begin_commit`] went; see [`LeaseDb::finish_commit`].
    pub fn finish_commit(
        &mut self,
        lines: usize,
        result: std::io::Result<()>,
    ) -> Result<(), Error> {
        self.leases.finish_commit(lines, result)
    }

    /// Handles one UDP payload received on port 67 at unix time `now`. Never panics,
    /// whatever the bytes: anything malformed or not for us yields `None`.
    pub fn handle(&mut self, packet: &[u8], now: i64) -> Option<Reply> {
        // The DNS server follows the bindings, not every packet.
        let revision = self.leases.revision();
        let reply = self.handle_message(packet, now);
        if self.leases.revision() != revision {
            self.changes.fetch_add(1, Ordering::Release);
        }
        reply
    }

    fn handle_message(&mut self, packet: &[u8], now: i64) -> Option<Reply> {
        // BOOTP without the cookie is not DHCP (RFC 2131 3), and dhcproto does not check.
        if packet.get(OPTIONS_OFFSET - MAGIC_COOKIE.len()..OPTIONS_OFFSET) != Some(&MAGIC_COOKIE) {
            tracing::debug!(network = %self.config.network, "packet without the DHCP magic cookie dropped");
            return None;
        }
        let request = match decode_request(packet) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::debug!(network = %self.config.network, error = %e, "undecodable DHCP packet dropped");
                return None;
            }
        };
        // hlen is checked before chaddr(), which slices by it.
        if request.opcode() != Opcode::BootRequest
            || request.htype() != HType::Eth
            || request.hlen() != 6
        {
            return None;
        }
        let kind = request.opts().msg_type()?;
        let mac = <[u8; 6]>::try_from(request.chaddr()).ok()?;
        // An identifier longer than one option can carry (split over several, RFC
        // 3396) is no identifier anyone sends; kept, it could not be stored in the lease
        // file, and the lease would be lost at the next restart: the MAC keys it.
        let client_id = match request.opts().get(OptionCode::ClientIdentifier) {
            Some(DhcpOption::ClientIdentifier(id)) if id.len() <= MAX_CLIENT_ID => {
                Some(id.as_slice())
            }
            _ => None,
        };
        // The Client FQDN first, as dnsmasq takes it (systemd-networkd sends only it
        // for a dotted hostname), then the Hostname option: also when the FQDN holds
        // no usable name, where dnsmasq looks no further.
        let name = raw_option(&request, OptionCode::ClientFQDN)
            .and_then(fqdn_label)
            .or_else(|| {
                match request.opts().get(OptionCode::Hostname) {
                    // RFC 2132 2: trailing NULs (Windows sends one) are to be deleted.
                    Some(DhcpOption::Hostname(name)) => {
                        sanitize_hostname(name.trim_end_matches('\0'))
                    }
                    _ => None,
                }
            });
        let client = Client::new(mac, client_id).named(name.as_deref());
        // Kept for the log only when there is one: REQUEST takes the name.
        let logged_name = if self.config.log_dhcp {
            name.clone()
        } else {
            None
        };
        let relay = request.giaddr();
        let handled = if !relay.is_unspecified() && !self.is_local_relay(relay) {
            tracing::debug!(network = %self.config.network, giaddr = %relay, "DHCP request relayed from outside the network dropped");
            Handled::Ignored("relayed from outside the network")
        } else {
            match kind {
                MessageType::Discover => self.discover(&request, &client, name.as_deref(), now),
                MessageType::Request => self.request(&request, &client, name, now),
                MessageType::Decline => self.decline(&request, &client, now),
                MessageType::Release => self.release(&request, &client),
                MessageType::Inform => self.inform(&request),
                _ => Handled::Ignored("not a client's message"),
            }
        };
        if self.config.log_dhcp {
            self.log(&request, kind, logged_name.as_deref(), &handled, now);
        }
        match handled {
            Handled::Reply(reply) => Some(reply),
            Handled::Done | Handled::Ignored(_) => None,
        }
    }

    /// Logs what `request`, of `kind` from a client that gave `name`, got (`log-dhcp`).
    fn log(
        &mut self,
        request: &Message,
        kind: MessageType,
        name: Option<&str>,
        handled: &Handled,
        now: i64,
    ) {
        let outcome = match handled {
            Handled::Reply(reply) => Ok(Some(reply)),
            Handled::Done => Ok(None),
            Handled::Ignored(why) => Err(*why),
        };
        // An ACK names the lease of its address, an INFORM's that of the client's own.
        let acked = match handled {
            Handled::Reply(reply) => [16, 12]
                .iter()
                .filter_map(|&at| reply.bytes.get(at..at + 4))
                .filter_map(|bytes| <[u8; 4]>::try_from(bytes).ok())
                .map(Ipv4Addr::from)
                .find(|address| !address.is_unspecified()),
            _ => None,
        };
        let exchange = Exchange {
            interface: &self.config.interface,
            request,
            kind,
            client_name: name,
            outcome,
            lease_name: acked.and_then(|address| self.leases.bound_name(address)),
        };
        super::log::write(&self.config.network, &mut self.log_budget, now, &exchange);
    }

    /// Whether `giaddr` is a relay agent we answer: a host address of our own subnet
    /// (we serve no other subnet, and replies must not leave the network).
    fn is_local_relay(&self, giaddr: Ipv4Addr) -> bool {
        let subnet = &self.config.subnet;
        subnet.contains(&giaddr)
            && giaddr != self.config.server_ip
            && giaddr != subnet.network()
            && giaddr != subnet.broadcast()
    }

    /// `name`: the hostname the client gave.
    fn discover(
        &mut self,
        request: &Message,
        client: &Client,
        name: Option<&str>,
        now: i64,
    ) -> Handled {
        let requested = requested_ip(request);
        let Some(ip) = self.leases.offer(client, requested, now) else {
            if self
                .last_full_log
                .is_none_or(|at| now - at >= FULL_LOG_INTERVAL)
            {
                self.last_full_log = Some(now);
                tracing::warn!(network = %self.config.network, mac = %super::format_mac(&client.mac), "DHCP pool full: no address to offer");
            }
            return Handled::Ignored("no address available");
        };
        let lease = self
            .leases
            .granted_secs(client, ip, requested_lease(request));
        let name = GuestName {
            name: self.leases.name_for(client, name).map(str::to_owned),
        };
        self.reply(request, MessageType::Offer, ip, Some(lease), &name)
            .map_or(Handled::Ignored(UNBUILT), Handled::Reply)
    }

    /// `name`: the hostname the client gave, in its own case (`client` goes by it
    /// lowercased, for matching).
    fn request(
        &mut self,
        request: &Message,
        client: &Client,
        name: Option<String>,
        now: i64,
    ) -> Handled {
        let ciaddr = request.ciaddr();
        let no_address = Handled::Ignored("no address requested");
        let ip = match (server_id(request), requested_ip(request)) {
            // SELECTING: the client chose an offer; ours or someone else's.
            (Some(id), requested) => {
                if id != self.config.server_ip {
                    self.leases.forget_offer(client);
                    return Handled::Ignored(FOR_ANOTHER_SERVER);
                }
                let Some(ip) = requested.or((!ciaddr.is_unspecified()).then_some(ciaddr)) else {
                    return no_address;
                };
                ip
            }
            // INIT-REBOOT: verifying a remembered address.
            (None, Some(requested)) => requested,
            // RENEWING (unicast) or REBINDING (broadcast).
            (None, None) if !ciaddr.is_unspecified() => ciaddr,
            (None, None) => return no_address,
        };
        // Verifying or extending an address while its lease here is on another: the
        // address is wrong (RFC 2131 4.3.2; dnsmasq's "wrong address"). The lease stays,
        // for the DISCOVER that follows the NAK.
        if server_id(request).is_none() && self.leases.holds_other_than(client, ip, now) {
            tracing::debug!(network = %self.config.network, %ip, mac = %super::format_mac(&client.mac), "DHCP request for an address other than the client's lease refused");
            return self.nak(request, "wrong address");
        }
        // Not a binding a failed commit left in memory, which a retransmitted REQUEST
        // would otherwise find bound.
        let renewing = self.leases.is_durably_bound_to(client, ip, now);
        match self
            .leases
            .bind_requesting(client, ip, name, requested_lease(request), now)
        {
            Some(lease) => {
                let name = GuestName {
                    name: self.leases.bound_name(ip).map(str::to_owned),
                };
                tracing::debug!(network = %self.config.network, %ip, mac = %super::format_mac(&client.mac), "DHCP lease bound");
                match self.reply(request, MessageType::Ack, ip, Some(lease), &name) {
                    Some(reply) => Handled::Reply(Reply {
                        needs_commit: true,
                        renews: renewing,
                        ..reply
                    }),
                    None => Handled::Ignored(UNBUILT),
                }
            }
            None => {
                tracing::debug!(network = %self.config.network, %ip, mac = %super::format_mac(&client.mac), "DHCP request refused");
                self.nak(request, "address not available")
            }
        }
    }

    fn decline(&mut self, request: &Message, client: &Client, now: i64) -> Handled {
        if server_id(request).is_some_and(|id| id != self.config.server_ip) {
            return Handled::Ignored(FOR_ANOTHER_SERVER);
        }
        let Some(ip) = requested_ip(request) else {
            return Handled::Ignored("no address declined");
        };
        if !self.leases.decline(client, ip, now) {
            return Handled::Ignored(UNKNOWN_LEASE);
        }
        tracing::warn!(network = %self.config.network, %ip, mac = %super::format_mac(&client.mac), "DHCP address declined by the client: in use by someone else");
        Handled::Done
    }

    fn release(&mut self, request: &Message, client: &Client) -> Handled {
        if server_id(request).is_some_and(|id| id != self.config.server_ip) {
            return Handled::Ignored(FOR_ANOTHER_SERVER);
        }
        if !self.leases.release(client, request.ciaddr()) {
            return Handled::Ignored(UNKNOWN_LEASE);
        }
        tracing::debug!(network = %self.config.network, ip = %request.ciaddr(), "DHCP lease released");
        Handled::Done
    }

    /// A NAK telling the client why, in dnsmasq's words (option 56, RFC 2132 9.9).
    fn nak(&self, request: &Message, reason: &str) -> Handled {
        let name = GuestName::NONE;
        let nak = (MessageType::Nak, Some(reason));
        self.reply_noting(request, nak, Ipv4Addr::UNSPECIFIED, None, &name)
            .map_or(Handled::Ignored(UNBUILT), Handled::Reply)
    }

    fn inform(&self, request: &Message) -> Handled {
        // RFC 2131 4.3.5: the answer goes to the address the client has; without one it
        // is no INFORM (dnsmasq ignores it too).
        if request.ciaddr().is_unspecified() {
            return Handled::Ignored("no client address");
        }
        // Not from the network (and not relayed): a guest spoofing an address, whose
        // answer would go out on the bridge as if the address were there, each one
        // taking a slot of the host's neighbour table.
        if request.giaddr().is_unspecified() && !self.config.subnet.contains(&request.ciaddr()) {
            tracing::debug!(network = %self.config.network, ciaddr = %request.ciaddr(), "DHCPINFORM from outside the subnet ignored");
            return Handled::Ignored("address outside the network");
        }
        self.reply(
            request,
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            None,
            &GuestName::NONE,
        )
        .map_or(Handled::Ignored(UNBUILT), Handled::Reply)
    }

    /// Builds a reply of `kind` to `request`; `lease` is the lease time for OFFER and ACK
    /// of an address (none for INFORM and NAK), `name` what the client goes by.
    fn reply(
        &self,
        request: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        lease: Option<u32>,
        name: &GuestName,
    ) -> Option<Reply> {
        self.reply_noting(request, (kind, None), yiaddr, lease, name)
    }

    /// [`Engine::reply`] of `kind` with a message for the client (option 56), if any.
    fn reply_noting(
        &self,
        request: &Message,
        (kind, note): (MessageType, Option<&str>),
        yiaddr: Ipv4Addr,
        lease: Option<u32>,
        name: &GuestName,
    ) -> Option<Reply> {
        let config = &self.config;
        let mut message = Message::default();
        // A client SELECTING or in INIT-REBOOT (option 50) has no address yet, whatever
        // a buggy one puts in ciaddr (RFC 2131 4.3.2): its ACK must not go there.
        let ciaddr = if kind == MessageType::Ack && requested_ip(request).is_none() {
            request.ciaddr()
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        message
            .set_opcode(Opcode::BootReply)
            .set_htype(HType::Eth)
            .set_xid(request.xid())
            .set_flags(request.flags())
            .set_ciaddr(ciaddr)
            .set_yiaddr(yiaddr)
            .set_giaddr(request.giaddr())
            .set_chaddr(request.chaddr());
        let mut empty_options: Vec<u8> = Vec::new();
        let opts = message.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(config.server_ip));
        if let Some(note) = note {
            opts.insert(DhcpOption::Message(note.to_owned()));
        }
        // RFC 6842: the client identifier comes back as sent, in every reply.
        if let Some(DhcpOption::ClientIdentifier(id)) =
            request.opts().get(OptionCode::ClientIdentifier)
            && id.len() <= MAX_CLIENT_ID
        {
            opts.insert(DhcpOption::ClientIdentifier(id.clone()));
        }
        if kind != MessageType::Nak {
            add_network_options(opts, request, config);
            empty_options = add_configured_options(opts, request, config);
            if let Some(secs) = lease {
                opts.insert(DhcpOption::AddressLeaseTime(secs));
                if secs != INFINITE {
                    let (renewal, rebinding) = renew_times(secs);
                    // A renewing or rebinding client gets them a little early, by up
                    // to a sixteenth of the lease, as from dnsmasq: guests started
                    // together do not renew together for ever (RFC 2131 4.4.5's fuzz).
                    let fuzz = if ciaddr.is_unspecified() {
                        0
                    } else {
                        rand::random_range(0..=secs / 16)
                    };
                    opts.insert(DhcpOption::Renewal(renewal.saturating_sub(fuzz)));
                    opts.insert(DhcpOption::Rebinding(rebinding.saturating_sub(fuzz)));
                }
            }
            // Its name, reserved or its own, when it asks for it, as from dnsmasq.
            let asked = asked_for(request, OptionCode::Hostname);
            if let Some(hostname) = name.name.as_ref().filter(|_| asked) {
                opts.insert(DhcpOption::Hostname(hostname.clone()));
            }
        }
        // INFORM's answer too: it is how a guest with an address learns its boot file.
        if kind != MessageType::Nak {
            add_boot(&mut message, request, config);
            add_boot_fields_from_options(&mut message, request, config);
        }
        if kind == MessageType::Nak && !request.giaddr().is_unspecified() {
            // RFC 2131 4.3.2: the relay broadcasts a NAK to the client.
            message.set_flags(request.flags().set_broadcast());
        }
        let (to, hardware) = destination(request, kind, ciaddr, yiaddr);
        // The Client FQDN answer, to a client that sent option 81.
        let mut fqdn = None;
        if kind != MessageType::Nak
            && let (Some(asked), Some(hostname)) =
                (raw_option(request, OptionCode::ClientFQDN), &name.name)
        {
            fqdn = fqdn_answer(asked, hostname, config.domain.as_deref());
        }
        let fitting = Fitting {
            empty_options,
            fqdn,
            relay_info: raw_option(request, OptionCode::RelayAgentInformation),
        };
        // Options the client can do without go first, as dnsmasq leaves out what does
        // not fit.
        let droppable = droppable_options(&message, request, config);
        let mut bytes = fitting.encode_to_fit(
            &mut message,
            size_limit(request),
            droppable,
            &config.network,
        )?;
        message_type_first(&mut bytes);
        if bytes.len() < MIN_REPLY_LEN {
            bytes.resize(MIN_REPLY_LEN, 0);
        }
        Some(Reply {
            to,
            bytes,
            needs_commit: false,
            renews: false,
            hardware,
        })
    }
}

/// The parts of a reply dhcproto cannot write, appended raw after its options.
struct Fitting<'a> {
    /// `dhcp-option=` lines without a value: sent empty.
    empty_options: Vec<u8>,
    /// The Client FQDN answer (dhcproto's encoder takes ASCII names for wire format).
    fqdn: Option<Vec<u8>>,
    /// The relay's option as it was sent, last, where the relay looks for it (RFC 3046
    /// 2.2).
    relay_info: Option<&'a [u8]>,
}

/// An option a reply left out to fit, kept to be put back if room is left.
enum LeftOut {
    Empty(u8),
    Fqdn(Vec<u8>),
    Option(DhcpOption),
}

/// How to take out again an option put back that did not fit after all.
enum Undo {
    PopEmpty,
    DropFqdn,
    Remove(OptionCode),
}

impl Fitting<'_> {
    fn encode(&self, message: &Message, network: &str) -> Option<Vec<u8>> {
        let mut bytes = Vec::with_capacity(MIN_REPLY_LEN);
        if let Err(e) = message.encode(&mut Encoder::new(&mut bytes)) {
            tracing::error!(%network, error = %e, "cannot encode DHCP reply");
            return None;
        }
        let mut raw: Vec<(u8, Vec<u8>)> = self
            .empty_options
            .iter()
            .map(|&code| (code, Vec::new()))
            .collect();
        if let Some(answer) = &self.fqdn {
            raw.push((OPTION_CLIENT_FQDN, answer.clone()));
        }
        if let Some(relay_info) = self.relay_info {
            raw.push((OPTION_RELAY_AGENT_INFORMATION, relay_info.to_vec()));
        }
        append_raw_options(&mut bytes, &raw);
        Some(bytes)
    }

    /// `message` with the raw parts, encoded within `limit` bytes: options without data
    /// are left out first, then those `droppable` names, in its order, until it fits.
    /// Then each one left out goes back, the last left out first, where it still fits:
    /// leaving out a large option may have made room for smaller ones left out before
    /// it (dnsmasq adds each option that still fits).
    fn encode_to_fit(
        mut self,
        message: &mut Message,
        limit: usize,
        droppable: Vec<OptionCode>,
        network: &str,
    ) -> Option<Vec<u8>> {
        let mut droppable = droppable.into_iter();
        let mut left_out = Vec::new();
        let mut bytes = loop {
            let bytes = self.encode(message, network)?;
            if bytes.len() <= limit {
                break bytes;
            }
            if let Some(code) = self.empty_options.pop() {
                left_out.push(LeftOut::Empty(code));
                continue;
            }
            match droppable.next() {
                Some(OptionCode::ClientFQDN) if self.fqdn.is_some() => {
                    left_out.extend(self.fqdn.take().map(LeftOut::Fqdn));
                }
                Some(code) => left_out.extend(message.opts_mut().remove(code).map(LeftOut::Option)),
                None => {
                    tracing::debug!(%network, len = bytes.len(), limit, "DHCP reply larger than the client takes, with nothing left to leave out");
                    return Some(bytes);
                }
            }
        };
        for item in left_out.into_iter().rev() {
            let undo = match item {
                LeftOut::Empty(code) => {
                    self.empty_options.push(code);
                    Undo::PopEmpty
                }
                LeftOut::Fqdn(answer) => {
                    self.fqdn = Some(answer);
                    Undo::DropFqdn
                }
                LeftOut::Option(option) => {
                    let code = OptionCode::from(&option);
                    message.opts_mut().insert(option);
                    Undo::Remove(code)
                }
            };
            let tried = self.encode(message, network)?;
            if tried.len() <= limit {
                bytes = tried;
                continue;
            }
            match undo {
                Undo::PopEmpty => drop(self.empty_options.pop()),
                Undo::DropFqdn => self.fqdn = None,
                Undo::Remove(code) => drop(message.opts_mut().remove(code)),
            }
        }
        Some(bytes)
    }
}

/// Where a reply of `kind` to `request` goes, and the client's hardware address when
/// that is an address the client has not taken yet ([`Reply::hardware`]); `ciaddr` is
/// the reply's.
fn destination(
    request: &Message,
    kind: MessageType,
    ciaddr: Ipv4Addr,
    yiaddr: Ipv4Addr,
) -> (SocketAddrV4, Option<[u8; 6]>) {
    let broadcast = (SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT), None);
    let relay = request.giaddr();
    if !relay.is_unspecified() {
        // A relay agent listens on the server port (RFC 2131 4.1).
        (SocketAddrV4::new(relay, SERVER_PORT), None)
    } else if kind != MessageType::Nak && !ciaddr.is_unspecified() {
        (SocketAddrV4::new(ciaddr, CLIENT_PORT), None)
    } else if matches!(kind, MessageType::Offer | MessageType::Ack)
        && !request.flags().broadcast()
        && !yiaddr.is_unspecified()
    {
        // RFC 2131 4.1: to the client's hardware address and the offered address,
        // unless it asks for broadcast: only the client sees its offer (its name, its
        // identifier), not every guest on the bridge, isolated ports included.
        match request
            .chaddr()
            .get(..6)
            .and_then(|mac| <[u8; 6]>::try_from(mac).ok())
        {
            Some(mac) => (SocketAddrV4::new(yiaddr, CLIENT_PORT), Some(mac)),
            None => broadcast,
        }
    } else {
        broadcast
    }
}

/// The largest reply `request`'s client takes, without IP and UDP headers (RFC 2132
/// 9.10: 576 bytes at the least, headers included); without option 57, the 576 bytes
/// every client takes (RFC 2131 2), as in dnsmasq.
fn size_limit(request: &Message) -> usize {
    let limit = match request.opts().get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(size)) => *size,
        _ => MIN_MAX_MESSAGE_SIZE,
    };
    usize::from(limit.max(MIN_MAX_MESSAGE_SIZE)) - IP_UDP_HEADERS
}

/// The smallest Maximum DHCP Message Size a client may give (RFC 2132 9.10).
const MIN_MAX_MESSAGE_SIZE: u16 = 576;
/// The IPv4 and UDP headers, which the size includes.
const IP_UDP_HEADERS: usize = 28;
/// What a reply leaves out, in this order, to fit the client's maximum message size.
const DROPPABLE_OPTIONS: &[OptionCode] = &[
    OptionCode::ClientFQDN,
    OptionCode::Hostname,
    OptionCode::BootfileName,
    OptionCode::DomainName,
    OptionCode::BroadcastAddr,
    OptionCode::InterfaceMtu,
];

/// What a reply to `request` leaves out to fit, in order: the options of `dhcp-option=`
/// lines in `message` that the client did not ask for (forced ones), then
/// [`DROPPABLE_OPTIONS`], then the configured options it asked for (all of them, for a
/// client that sends no request list, as dnsmasq reads that); those of a group largest
/// first. dnsmasq writes its own options first and then each configured one that still
/// fits; this keeps, beyond that, what the client asked for before what it did not.
/// The router and DNS servers stay, as kvnet's own do.
fn droppable_options(message: &Message, request: &Message, config: &DhcpConfig) -> Vec<OptionCode> {
    // A `dhcp-option=` boot file is only ever an option (`<bootp>`'s is in the header
    // too): it goes with the other configured options, not before them.
    let configured_boot_file = config.options.iter().any(|rule| rule.code == 67);
    let mut configured: Vec<(usize, OptionCode)> = config
        .options
        .iter()
        .map(|rule| OptionCode::from(rule.code))
        .filter(|code| {
            (*code == OptionCode::BootfileName || !DROPPABLE_OPTIONS.contains(code))
                && ![OptionCode::Router, OptionCode::DomainNameServer].contains(code)
        })
        .filter_map(|code| match message.opts().get(code) {
            Some(DhcpOption::Unknown(option)) => Some((option.data().len(), code)),
            _ => None,
        })
        .collect();
    configured.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let (asked, unasked): (Vec<_>, Vec<_>) = configured
        .into_iter()
        .map(|(_, code)| code)
        .partition(|code| asked_for(request, *code));
    unasked
        .into_iter()
        .chain(
            DROPPABLE_OPTIONS
                .iter()
                .copied()
                .filter(|code| !(configured_boot_file && *code == OptionCode::BootfileName)),
        )
        .chain(asked)
        .collect()
}

/// Whether `request` asks for `code`: lists it in its Parameter Request List (option
/// 55), or sends no list, which dnsmasq takes as asking for everything (`in_list`:
/// "send everything, not nothing").
fn asked_for(request: &Message, code: OptionCode) -> bool {
    match request.opts().get(OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(codes)) => codes.contains(&code),
        _ => true,
    }
}

/// The name a client goes by, for the Hostname and Client FQDN options of its replies.
struct GuestName {
    /// Its reservation's, else the one it gave if it may have it.
    name: Option<String>,
}

impl GuestName {
    /// No name (NAK, INFORM).
    const NONE: GuestName = GuestName { name: None };
}

/// The Client FQDN option answering the client's `asked` (RFC 4702 4), as dnsmasq
/// answers: the name the client goes by under the network's `domain`, in the client's
/// encoding; the server updates DNS (S, and O when the client asked to do it itself),
/// never "no updates" (N). `None` when `asked` is too short to be the option.
fn fqdn_answer(asked: &[u8], name: &str, domain: Option<&str>) -> Option<Vec<u8>> {
    let [flags, _rcode1, _rcode2, given @ ..] = asked else {
        return None;
    };
    // The high four bits must be zero.
    let mut flags = flags & 0x0f;
    if flags & FQDN_FLAG_SERVER_UPDATES == 0 {
        flags |= FQDN_FLAG_SERVER_UPDATES | FQDN_FLAG_OVERRIDE;
    }
    flags &= !FQDN_FLAG_NO_UPDATES;
    // RCODE1 and RCODE2: 255 from a server (RFC 4702 2.2).
    let mut out = vec![flags, 255, 255];
    if flags & FQDN_FLAG_ENCODED != 0 {
        out.extend(super::fqdn_wire(name, domain)?);
    } else {
        out.extend_from_slice(name.as_bytes());
        if let Some(domain) = domain {
            out.push(b'.');
            out.extend_from_slice(domain.as_bytes());
        }
        // A client that ended its ASCII name with a NUL gets one back.
        if given.last() == Some(&0) {
            out.push(0);
        }
    }
    Some(out)
}

/// Moves the DHCP Message Type option of an encoded message to the front of its options,
/// where dnsmasq and ISC's server put it: the encoder orders options by code, and boot
/// firmware that looks only at the first option would not know an OFFER.
fn message_type_first(bytes: &mut Vec<u8>) {
    let mut at = OPTIONS_OFFSET;
    while let Some(&code) = bytes.get(at) {
        match code {
            0 => at += 1,
            255 => return,
            _ => {
                let Some(&len) = bytes.get(at + 1) else {
                    return;
                };
                let end = at + 2 + usize::from(len);
                if end > bytes.len() {
                    return;
                }
                if code == OPTION_MESSAGE_TYPE {
                    let option: Vec<u8> = bytes.drain(at..end).collect();
                    bytes.splice(OPTIONS_OFFSET..OPTIONS_OFFSET, option);
                    return;
                }
                at = end;
            }
        }
    }
}

/// Appends `options`, given as `(code, data)`, to an encoded message before its end
/// option, each in chunks of at most 255 bytes (RFC 3396).
fn append_raw_options(bytes: &mut Vec<u8>, options: &[(u8, Vec<u8>)]) {
    if options.is_empty() {
        return;
    }
    if bytes.last() == Some(&255) {
        bytes.pop();
    }
    for (code, data) in options {
        if data.is_empty() {
            bytes.extend([*code, 0]);
        }
        for chunk in data.chunks(usize::from(u8::MAX)) {
            // `chunks` keeps each under 256 bytes.
            bytes.extend([*code, u8::try_from(chunk.len()).unwrap_or(u8::MAX)]);
            bytes.extend_from_slice(chunk);
        }
    }
    bytes.push(255);
}

/// The network's own options: the subnet mask and broadcast address always, the rest
/// only when `request` asks for them, as dnsmasq's `do_options` sends them. A guest
/// whose administrator trimmed its request list keeps its own resolver, domain and MTU.
fn add_network_options(opts: &mut DhcpOptions, request: &Message, config: &DhcpConfig) {
    opts.insert(DhcpOption::SubnetMask(config.subnet.netmask()));
    opts.insert(DhcpOption::BroadcastAddr(config.subnet.broadcast()));
    let asked = |code| asked_for(request, code);
    if let Some(router) = config.router.filter(|_| asked(OptionCode::Router)) {
        opts.insert(DhcpOption::Router(vec![router]));
    }
    if let Some(dns) = config
        .dns_server
        .filter(|_| asked(OptionCode::DomainNameServer))
    {
        opts.insert(DhcpOption::DomainNameServer(vec![dns]));
    }
    if let Some(domain) = config
        .domain
        .as_ref()
        .filter(|_| asked(OptionCode::DomainName))
    {
        opts.insert(DhcpOption::DomainName(domain.clone()));
    }
    if let Some(mtu) = config.mtu.filter(|_| asked(OptionCode::InterfaceMtu)) {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
}

/// The options of the network's `dhcp-option=` lines: each replaces the server's own
/// option of its code, as in dnsmasq, and is sent when the client asks for it
/// ([`asked_for`]), and always for `dhcp-option-force=`. A line without a value sends
/// nothing.
///
/// Returns the codes of the options to send without data, which dhcproto leaves out:
/// dnsmasq sends them (`dhcp-option=80` is rapid commit).
fn add_configured_options(
    opts: &mut DhcpOptions,
    request: &Message,
    config: &DhcpConfig,
) -> Vec<u8> {
    let mut empty = Vec::new();
    for rule in &config.options {
        let code = OptionCode::from(rule.code);
        opts.remove(code);
        let Some(mut data) = crate::xml::dhcp_option_data(&rule.value, config.server_ip) else {
            continue;
        };
        if is_boot_field_option(rule.code) {
            if !rule.force && !lists(request, code) && config.boot.is_none() {
                // In the header instead (`add_boot_fields_from_options`).
                continue;
            }
            // With a NUL where it fits, as dnsmasq sends them: some PXE ROMs need it.
            if data.len() < usize::from(u8::MAX) {
                data.push(0);
            }
        }
        if rule.force || asked_for(request, code) {
            if data.is_empty() {
                empty.push(rule.code);
            } else {
                opts.insert(DhcpOption::Unknown(UnknownOption::new(code, data)));
            }
        }
    }
    empty
}

/// Whether `code` is 66 (TFTP server) or 67 (boot file), which have header fields.
fn is_boot_field_option(code: u8) -> bool {
    matches!(code, 66 | 67)
}

/// Whether `request`'s Parameter Request List names `code` (no list names nothing).
fn lists(request: &Message, code: OptionCode) -> bool {
    matches!(
        request.opts().get(OptionCode::ParameterRequestList),
        Some(DhcpOption::ParameterRequestList(codes)) if codes.contains(&code)
    )
}

/// A `dhcp-option=` 66 (TFTP server) or 67 (boot file) that the client's request list
/// does not name goes in the header's `sname` or `file` field instead, cut to fit, where
/// boot firmware reads it, as dnsmasq puts it. With `<bootp>`, the header is its alone.
fn add_boot_fields_from_options(message: &mut Message, request: &Message, config: &DhcpConfig) {
    if config.boot.is_some() {
        return;
    }
    for rule in &config.options {
        let DhcpOptionValue::Text(text) = &rule.value else {
            continue;
        };
        if rule.force || lists(request, OptionCode::from(rule.code)) {
            continue;
        }
        // Each field ends with a NUL; dhcproto panics past their sizes.
        let cut = |field: usize| &text.as_bytes()[..text.len().min(field - 1)];
        match rule.code {
            66 => {
                message.set_sname(cut(SNAME_FIELD.len()));
            }
            67 => {
                message.set_fname(cut(FILE_FIELD.len()));
            }
            _ => {}
        }
    }
}

/// Tells a guest that boots from the network where its boot file is: the header's
/// `file` and `siaddr`, which PXE firmware reads, and option 67 for a client that asks.
/// Without `<bootp>`, `siaddr` is the server's own address, as dnsmasq leaves it.
fn add_boot(message: &mut Message, request: &Message, config: &DhcpConfig) {
    let Some(boot) = &config.boot else {
        message.set_siaddr(config.server_ip);
        return;
    };
    // The field holds 128 bytes; the definition was checked, and dhcproto panics past it.
    if boot.file.len() >= 128 {
        return;
    }
    message
        .set_siaddr(boot.server)
        .set_fname(boot.file.as_bytes());
    // A `dhcp-option=` for the boot file name wins over `<bootp>`'s.
    let configured = config.options.iter().any(|rule| rule.code == 67);
    if asked_for(request, OptionCode::BootfileName) && !configured {
        message
            .opts_mut()
            .insert(DhcpOption::BootfileName(boot.file.as_bytes().to_vec()));
    }
}

/// Offset of the options in a BOOTP message (fixed header and magic cookie).
pub(super) const OPTIONS_OFFSET: usize = 240;

/// Decodes a request, each option on its own. dhcproto 0.15's `DhcpOptions::decode`
/// stops at the first option it cannot decode and drops every later one: an ASCII client
/// FQDN before options 50 and 54 made a REQUEST unanswerable. An option that does not
/// decode is skipped alone, as dnsmasq ignores what it cannot use. Options overloaded
/// into the `file` and `sname` fields (option 52) are read after the options field, and
/// of an option given twice (not in one run), the first counts, as in dnsmasq.
fn decode_request(packet: &[u8]) -> Result<Message, DecodeError> {
    // The fixed header alone: dhcproto reads no options from it.
    let header = packet.get(..OPTIONS_OFFSET).unwrap_or(packet);
    let mut message = Message::decode(&mut Decoder::new(header))?;
    let mut runs = option_runs(packet.get(OPTIONS_OFFSET..).unwrap_or_default());
    let overload = runs
        .iter()
        .find(|(code, _)| *code == OPTION_OVERLOAD)
        .and_then(|(_, data)| data.first().copied())
        .unwrap_or(0);
    // RFC 2131 4.1: `file` first, then `sname`.
    for (flag, field) in [(1, FILE_FIELD), (2, SNAME_FIELD)] {
        if overload & flag != 0 {
            runs.extend(option_runs(packet.get(field).unwrap_or_default()));
        }
    }
    let mut single = Vec::new();
    for (code, data) in runs {
        if message.opts().get(OptionCode::from(code)).is_some() {
            tracing::debug!(code, "repeated DHCP option skipped");
            continue;
        }
        // Kept as sent: the Client FQDN, which dhcproto reads as DNS wire format only,
        // and the relay's option, echoed to it byte for byte (RFC 3046 2.2), which
        // dhcproto's decode and encode of its sub-options need not give back.
        if code == OPTION_CLIENT_FQDN || code == OPTION_RELAY_AGENT_INFORMATION {
            let raw = UnknownOption::new(OptionCode::from(code), data);
            message.opts_mut().insert(DhcpOption::Unknown(raw));
            continue;
        }
        if dhcproto_asserts_on(code, data.len()) {
            tracing::debug!(code, len = data.len(), "misframed DHCP option skipped");
            continue;
        }
        encode_single_option(code, &data, &mut single);
        match DhcpOption::decode(&mut Decoder::new(&single)) {
            Ok(DhcpOption::Pad | DhcpOption::End) => {}
            Ok(option) => {
                message.opts_mut().insert(option);
            }
            Err(e) => tracing::debug!(code, error = %e, "undecodable DHCP option skipped"),
        }
    }
    Ok(message)
}

/// The data of an option [`decode_request`] keeps as sent.
fn raw_option(message: &Message, code: OptionCode) -> Option<&[u8]> {
    match message.opts().get(code) {
        Some(DhcpOption::Unknown(option)) => Some(option.data()),
        _ => None,
    }
}

/// The longest client identifier kept (one option's worth, what the lease file stores).
pub(crate) const MAX_CLIENT_ID: usize = 255;

/// The Client FQDN option (RFC 4702).
const OPTION_CLIENT_FQDN: u8 = 81;
/// DHCP Message Type (RFC 2132 9.6).
const OPTION_MESSAGE_TYPE: u8 = 53;
/// The Relay Agent Information option (RFC 3046).
const OPTION_RELAY_AGENT_INFORMATION: u8 = 82;
/// Option Overload (RFC 2132 9.3): more options in `file` (1), `sname` (2) or both (3).
const OPTION_OVERLOAD: u8 = 52;
/// Where the `sname` and `file` fields lie in a BOOTP message.
const SNAME_FIELD: std::ops::Range<usize> = 44..108;
const FILE_FIELD: std::ops::Range<usize> = 108..236;
/// What follows the fixed header of every DHCP message (RFC 2131 3).
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Its flags (RFC 4702 2.1). S: the server updates the A record.
const FQDN_FLAG_SERVER_UPDATES: u8 = 0x01;
/// O: the server overrode the client's wish.
const FQDN_FLAG_OVERRIDE: u8 = 0x02;
/// E: the name is in DNS wire format, not ASCII.
const FQDN_FLAG_ENCODED: u8 = 0x04;
/// N: no server updates at all.
const FQDN_FLAG_NO_UPDATES: u8 = 0x08;

/// The first label of a Client FQDN option's name, sanitised as a hostname: flags, two
/// obsolete rcode bytes, then the name, in DNS wire format with the E flag, else ASCII
/// (which older Windows clients send).
fn fqdn_label(data: &[u8]) -> Option<String> {
    let [flags, _rcode1, _rcode2, name @ ..] = data else {
        return None;
    };
    let label = if flags & FQDN_FLAG_ENCODED != 0 {
        let (&len, rest) = name.split_first()?;
        rest.get(..usize::from(len))?
    } else {
        // ASCII, maybe NUL-terminated (sanitize_hostname keeps the first label).
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        &name[..end]
    };
    sanitize_hostname(std::str::from_utf8(label).ok()?)
}

/// The options of a message as `(code, data)`, runs of one code concatenated (RFC 3396)
/// as dhcproto does; up to the end option, or the first option cut short by the end of
/// the packet.
pub(super) fn option_runs(mut options: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut runs: Vec<(u8, Vec<u8>)> = Vec::new();
    // Whether the last option read may be continued by the next one (no pad between).
    let mut in_run = false;
    while let Some((&code, rest)) = options.split_first() {
        match code {
            255 => break,
            0 => {
                in_run = false;
                options = rest;
                continue;
            }
            _ => {}
        }
        let Some((&len, rest)) = rest.split_first() else {
            break;
        };
        let Some(data) = rest.get(..usize::from(len)) else {
            break;
        };
        match runs.last_mut() {
            Some((last, run)) if in_run && *last == code => run.extend_from_slice(data),
            _ => runs.push((code, data.to_vec())),
        }
        in_run = true;
        options = rest.get(usize::from(len)..).unwrap_or_default();
    }
    runs
}

/// Writes option `code` with `data` to `out` as dhcproto decodes it: in chunks of at
/// most 255 bytes (RFC 3396), then the end option.
fn encode_single_option(code: u8, data: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut chunks = data.chunks(usize::from(u8::MAX)).peekable();
    if chunks.peek().is_none() {
        out.extend([code, 0]);
    }
    for chunk in chunks {
        // `chunks` keeps each under 256 bytes.
        out.extend([code, u8::try_from(chunk.len()).unwrap_or(u8::MAX)]);
        out.extend_from_slice(chunk);
    }
    out.push(255);
}

/// Whether dhcproto 0.15 decodes option `code` of `len` bytes behind a `debug_assert!`
/// that `len` violates (rapid commit 80, FQDN 81, client NII 94, bulk-leasequery times
/// 152-155): the assert panics in debug builds, so such an option is never handed to it.
fn dhcproto_asserts_on(code: u8, len: usize) -> bool {
    match code {
        80 => len != 0,
        81 => len < 3,
        94 => len != 3,
        152..=155 => len != 4,
        _ => false,
    }
}

fn server_id(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// The lease time the client asks for (option 51).
fn requested_lease(message: &Message) -> Option<u32> {
    match message.opts().get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(secs)) => Some(*secs),
        _ => None,
    }
}

pub(super) fn requested_ip(message: &Message) -> Option<Ipv4Addr> {
    match message.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::{DhcpBoot, DhcpHostConfig};
    use crate::xml::{DhcpOptionRule, DhcpOptionValue};
    use dhcproto::v4::Flags;
    use std::collections::BTreeMap;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const RESERVED_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x42];

    fn config() -> DhcpConfig {
        DhcpConfig {
            network: "test".into(),
            interface: "br0".into(),
            server_ip: SERVER,
            subnet: "192.168.77.0/24".parse().expect("subnet"),
            ranges: vec![(
                Ipv4Addr::new(192, 168, 77, 100),
                Ipv4Addr::new(192, 168, 77, 199),
                Some(Duration::from_secs(600)),
            )],
            hosts: vec![DhcpHostConfig {
                mac: Some(RESERVED_MAC),
                ip: Ipv4Addr::new(192, 168, 77, 50),
                name: Some("vm-fixed".into()),
                lease: None,
            }],
            router: Some(SERVER),
            dns_server: Some(SERVER),
            domain: Some("kvnet.test".into()),
            mtu: Some(9000),
            default_lease: Duration::from_secs(3600),
            boot: None,
            options: Vec::new(),
            log_dhcp: false,
        }
    }

    fn message(kind: MessageType, mac: [u8; 6]) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(
            0x1234,
            unspecified,
            unspecified,
            unspecified,
            unspecified,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn encode(m: &Message) -> Vec<u8> {
        let mut bytes = Vec::new();
        m.encode(&mut Encoder::new(&mut bytes))
            .expect("encode request");
        bytes
    }

    fn exchange(engine: &mut Engine, m: &Message, now: i64) -> Option<(Reply, Message)> {
        let reply = engine.handle(&encode(m), now)?;
        assert!(reply.bytes.len() >= MIN_REPLY_LEN);
        let decoded = Message::decode(&mut Decoder::new(&reply.bytes)).expect("decode reply");
        assert_eq!(decoded.opcode(), Opcode::BootReply);
        assert_eq!(decoded.xid(), m.xid());
        assert_eq!(decoded.chaddr(), m.chaddr());
        Some((reply, decoded))
    }

    fn kind(m: &Message) -> MessageType {
        m.opts().msg_type().expect("reply has a message type")
    }

    fn request_for(mac: [u8; 6], ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Message {
        let mut m = message(MessageType::Request, mac);
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        if let Some(server) = server {
            m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        }
        m
    }

    /// DISCOVER + REQUEST; returns the ACK.
    fn dora(engine: &mut Engine, mac: [u8; 6], now: i64) -> (Reply, Message) {
        let (_, offer) =
            exchange(engine, &message(MessageType::Discover, mac), now).expect("offer");
        assert_eq!(kind(&offer), MessageType::Offer);
        let (reply, ack) =
            exchange(engine, &request_for(mac, offer.yiaddr(), Some(SERVER)), now).expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), offer.yiaddr());
        (reply, ack)
    }

    /// DISCOVER + REQUEST, both carrying `extra`; returns the ACK.
    fn dora_with(engine: &mut Engine, mac: [u8; 6], extra: &[DhcpOption], now: i64) -> Message {
        let with_extra = |mut m: Message| {
            for option in extra {
                m.opts_mut().insert(option.clone());
            }
            m
        };
        let discover = with_extra(message(MessageType::Discover, mac));
        let (_, offer) = exchange(engine, &discover, now).expect("offer");
        let request = with_extra(request_for(mac, offer.yiaddr(), Some(SERVER)));
        let (_, ack) = exchange(engine, &request, now).expect("ack");
        assert_eq!(
            (kind(&ack), ack.yiaddr()),
            (MessageType::Ack, offer.yiaddr())
        );
        ack
    }

    #[test]
    fn network_boot_goes_in_the_header_and_in_option_67_when_asked() {
        let mut engine = Engine::new(DhcpConfig {
            boot: Some(DhcpBoot {
                file: "pxelinux.0".into(),
                server: Ipv4Addr::new(192, 168, 77, 5),
            }),
            ..config()
        });
        let mac = [2, 0, 0, 0, 0, 7];
        // A list without option 67 (none at all asks for everything).
        let mut discover = message(MessageType::Discover, mac);
        discover
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
            ]));
        let (offer_bytes, offer) = exchange(&mut engine, &discover, NOW).expect("offer");
        let mut request = request_for(mac, offer.yiaddr(), Some(SERVER));
        request
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
                OptionCode::BootfileName,
            ]));
        let (ack_bytes, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        for (reply, bytes) in [(&offer, &offer_bytes), (&ack, &ack_bytes)] {
            assert_eq!(reply.siaddr(), Ipv4Addr::new(192, 168, 77, 5));
            // The 128-byte `file` field at offset 108, NUL-padded.
            let file = &bytes.bytes[108..236];
            assert_eq!(&file[..11], b"pxelinux.0\0");
            assert!(file[11..].iter().all(|&b| b == 0));
        }
        assert_eq!(offer.opts().get(OptionCode::BootfileName), None);
        assert_eq!(
            ack.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"pxelinux.0".to_vec()))
        );
        // Without <bootp>, no file, and the server's own address as the next server.
        let mut plain = Engine::new(config());
        let (_, offer) =
            exchange(&mut plain, &message(MessageType::Discover, mac), NOW).expect("offer");
        assert_eq!(offer.siaddr(), plain.config().server_ip);
        assert_eq!(offer.fname(), None);
    }

    /// A client that lists what it wants gets only that, besides the subnet mask and
    /// broadcast address, as from dnsmasq: an administrator who trimmed dhclient's
    /// `request` keeps the guest's own resolver, domain, MTU and name.
    #[test]
    fn options_a_client_did_not_ask_for_are_left_out() {
        let mut engine = Engine::new(config());
        let mut discover = message(MessageType::Discover, RESERVED_MAC);
        discover
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![OptionCode::Router]));
        let (_, offer) = exchange(&mut engine, &discover, NOW).expect("offer");
        let mut request = request_for(RESERVED_MAC, offer.yiaddr(), Some(SERVER));
        request
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![OptionCode::Router]));
        let (_, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        for reply in [&offer, &ack] {
            let sent = |code| reply.opts().get(code).is_some();
            for code in [
                OptionCode::SubnetMask,
                OptionCode::BroadcastAddr,
                OptionCode::Router,
                OptionCode::AddressLeaseTime,
            ] {
                assert!(sent(code), "{code:?} left out");
            }
            for code in [
                OptionCode::DomainNameServer,
                OptionCode::DomainName,
                OptionCode::InterfaceMtu,
                OptionCode::Hostname,
            ] {
                assert!(!sent(code), "{code:?} sent unasked");
            }
        }
    }

    #[test]
    fn the_message_type_is_the_first_option() {
        let mut engine = Engine::new(config());
        let discover = message(MessageType::Discover, [2, 0, 0, 0, 0, 9]);
        let (offer, _) = exchange(&mut engine, &discover, NOW).expect("offer");
        assert_eq!(
            offer.bytes[OPTIONS_OFFSET..OPTIONS_OFFSET + 3],
            [OPTION_MESSAGE_TYPE, 1, 2]
        );
    }

    #[test]
    fn offer_and_ack_carry_every_configured_option() {
        let mut engine = Engine::new(config());
        let mac = [0x52, 0x54, 0, 1, 2, 3];
        let (_, offer) =
            exchange(&mut engine, &message(MessageType::Discover, mac), NOW).expect("offer");
        let (reply, ack) = dora(&mut engine, mac, NOW);
        assert!(reply.needs_commit);
        assert_eq!(reply.to, SocketAddrV4::new(ack.yiaddr(), 68));
        for m in [&offer, &ack] {
            let o = m.opts();
            // Where dnsmasq's walk for this MAC starts in .100-.200.
            assert_eq!(m.yiaddr(), Ipv4Addr::new(192, 168, 77, 140));
            assert_eq!(
                o.get(OptionCode::ServerIdentifier),
                Some(&DhcpOption::ServerIdentifier(SERVER))
            );
            assert_eq!(
                o.get(OptionCode::SubnetMask),
                Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
            );
            assert_eq!(
                o.get(OptionCode::BroadcastAddr),
                Some(&DhcpOption::BroadcastAddr(Ipv4Addr::new(192, 168, 77, 255)))
            );
            assert_eq!(
                o.get(OptionCode::Router),
                Some(&DhcpOption::Router(vec![SERVER]))
            );
            assert_eq!(
                o.get(OptionCode::DomainNameServer),
                Some(&DhcpOption::DomainNameServer(vec![SERVER]))
            );
            assert_eq!(
                o.get(OptionCode::DomainName),
                Some(&DhcpOption::DomainName("kvnet.test".into()))
            );
            assert_eq!(
                o.get(OptionCode::InterfaceMtu),
                Some(&DhcpOption::InterfaceMtu(9000))
            );
            // The range's lease, with T1 = 1/2 and T2 = 7/8.
            assert_eq!(
                o.get(OptionCode::AddressLeaseTime),
                Some(&DhcpOption::AddressLeaseTime(600))
            );
            assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(300)));
            assert_eq!(
                o.get(OptionCode::Rebinding),
                Some(&DhcpOption::Rebinding(525))
            );
            assert_eq!(o.get(OptionCode::Hostname), None);
        }
    }

    #[test]
    fn isolated_network_without_dns_gets_neither_option() {
        let mut cfg = config();
        cfg.router = None;
        cfg.dns_server = None;
        cfg.domain = None;
        cfg.mtu = None;
        let mut engine = Engine::new(cfg);
        let (_, ack) = dora(&mut engine, [2, 0, 0, 0, 0, 1], NOW);
        for code in [
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::DomainName,
            OptionCode::InterfaceMtu,
        ] {
            assert_eq!(ack.opts().get(code), None, "{code:?}");
        }
        assert!(ack.opts().get(OptionCode::SubnetMask).is_some());
    }

    /// The host (outside the range, without a lease time of its own) gets the range's
    /// lease time, as dnsmasq gives it with libvirt's configuration.
    #[test]
    fn reserved_mac_gets_its_address_name_and_the_range_lease() {
        let mut engine = Engine::new(config());
        let (_, ack) = dora(&mut engine, RESERVED_MAC, NOW);
        assert_eq!(ack.yiaddr(), Ipv4Addr::new(192, 168, 77, 50));
        assert_eq!(
            ack.opts().get(OptionCode::Hostname),
            Some(&DhcpOption::Hostname("vm-fixed".into()))
        );
        assert_eq!(
            ack.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(600))
        );
        let leases = engine.leases(NOW);
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].hostname.as_deref(), Some("vm-fixed"));
    }

    #[test]
    fn renew_is_unicast_and_keeps_the_address() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 7];
        let (_, ack) = dora(&mut engine, mac, NOW);
        let ip = ack.yiaddr();
        // Its REQUEST again before the binding was synced (a commit that failed): still
        // a new binding, not a renewal.
        let (again, _) = exchange(&mut engine, &request_for(mac, ip, Some(SERVER)), NOW)
            .expect("the REQUEST again");
        assert!(again.needs_commit && !again.renews);
        engine.commit().expect("synced");
        let mut renew = message(MessageType::Request, mac);
        renew.set_ciaddr(ip);
        let (reply, renewed) = exchange(&mut engine, &renew, NOW + 300).expect("renew ack");
        assert_eq!(kind(&renewed), MessageType::Ack);
        assert_eq!((renewed.yiaddr(), renewed.ciaddr()), (ip, ip));
        assert_eq!(reply.to, SocketAddrV4::new(ip, 68));
        assert_eq!(engine.leases(NOW + 300)[0].expiry_unix, NOW + 900);
        // Only the renewal may go out if its record cannot be made durable.
        assert!(reply.needs_commit && reply.renews);
        let (first, _) = dora(&mut engine, [2, 0, 0, 0, 0, 8], NOW);
        assert!(first.needs_commit && !first.renews);
        // Past its expiry, the lease is no longer the client's to renew; nor is the
        // binding that late REQUEST made, sent again before it was synced.
        let (late, _) = exchange(&mut engine, &renew, NOW + 10_000).expect("a late renewal");
        assert!(!late.renews);
        let (again, _) = exchange(&mut engine, &renew, NOW + 10_003).expect("sent again");
        assert!(again.needs_commit && !again.renews);
    }

    /// A reservation moved to another address leaves the name of the guest's lease on
    /// the old one alone until the guest moves, as dnsmasq's reload does.
    #[test]
    fn a_moved_reservation_leaves_the_current_leases_name() {
        let mut engine = Engine::new(config());
        let (_, ack) = request_offered(&mut engine, RESERVED_MAC, &[(12, b"own1")], &[]);
        let fixed = ack.yiaddr();
        assert_eq!(engine.dns_names(NOW), [(fixed, "vm-fixed".to_owned())]);
        let mut moved = config();
        moved.hosts[0].ip = Ipv4Addr::new(192, 168, 77, 53);
        engine.update(moved);
        assert_eq!(engine.dns_names(NOW), [(fixed, "vm-fixed".to_owned())]);
    }

    #[test]
    fn replies_go_to_the_relay_the_clients_address_or_its_hardware_else_broadcast() {
        let mac = [2, 0, 0, 0, 0, 9];
        let (ours, offered) = (
            Ipv4Addr::new(192, 168, 77, 9),
            Ipv4Addr::new(192, 168, 77, 10),
        );
        let relay = Ipv4Addr::new(192, 168, 77, 254);
        let broadcast = (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), None);
        let request = message(MessageType::Request, mac);
        let mut relayed = request.clone();
        relayed.set_giaddr(relay);
        let mut wants_broadcast = request.clone();
        wants_broadcast.set_flags(request.flags().set_broadcast());
        let unspecified = Ipv4Addr::UNSPECIFIED;
        for (request, kind, ciaddr, yiaddr, expected) in [
            (
                &relayed,
                MessageType::Ack,
                unspecified,
                offered,
                (SocketAddrV4::new(relay, 67), None),
            ),
            (
                &relayed,
                MessageType::Nak,
                unspecified,
                unspecified,
                (SocketAddrV4::new(relay, 67), None),
            ),
            // Renewing, or an INFORM's answer: to the address the client has.
            (
                &request,
                MessageType::Ack,
                ours,
                ours,
                (SocketAddrV4::new(ours, 68), None),
            ),
            // Its offer, to the address it has not taken yet, by its MAC.
            (
                &request,
                MessageType::Offer,
                unspecified,
                offered,
                (SocketAddrV4::new(offered, 68), Some(mac)),
            ),
            (
                &wants_broadcast,
                MessageType::Offer,
                unspecified,
                offered,
                broadcast,
            ),
            (&request, MessageType::Nak, ours, unspecified, broadcast),
        ] {
            assert_eq!(
                destination(request, kind, ciaddr, yiaddr),
                expected,
                "{kind:?}"
            );
        }
    }

    /// T1 and T2 of a 600 s lease are 300 and 525 s for a new binding; a renewal gets
    /// both up to 37 s (a sixteenth) earlier, by a random amount, as from dnsmasq.
    #[test]
    fn renewals_get_their_renewal_times_a_little_early_by_chance() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 7];
        let (_, ack) = dora(&mut engine, mac, NOW);
        let times = |m: &Message| match (
            m.opts().get(OptionCode::Renewal),
            m.opts().get(OptionCode::Rebinding),
        ) {
            (Some(DhcpOption::Renewal(t1)), Some(DhcpOption::Rebinding(t2))) => (*t1, *t2),
            other => panic!("no T1 and T2: {other:?}"),
        };
        assert_eq!(times(&ack), (300, 525));
        let mut renew = message(MessageType::Request, mac);
        renew.set_ciaddr(ack.yiaddr());
        let mut early = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let (_, renewed) = exchange(&mut engine, &renew, NOW).expect("renew ack");
            let (t1, t2) = times(&renewed);
            assert!((263..=300).contains(&t1), "T1 {t1}");
            assert_eq!(t2 - t1, 225);
            early.insert(t1);
        }
        assert!(early.len() > 1, "the same T1 every time: {early:?}");
    }

    #[test]
    fn hostname_option_is_recorded_sanitised() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 8];
        let mut request = request_for(mac, Ipv4Addr::new(192, 168, 77, 120), None);
        request
            .opts_mut()
            .insert(DhcpOption::Hostname("Guest-1.example".into()));
        request
            .opts_mut()
            .insert(DhcpOption::ParameterRequestList(vec![
                OptionCode::SubnetMask,
            ]));
        let (_, ack) = exchange(&mut engine, &request, NOW).expect("init-reboot ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        // The guest's own case, as dnsmasq keeps it.
        assert_eq!(engine.leases(NOW)[0].hostname.as_deref(), Some("Guest-1"));
        // A dynamic client's own name comes back only when asked for.
        assert_eq!(ack.opts().get(OptionCode::Hostname), None);
    }

    #[test]
    fn a_host_without_a_mac_is_reserved_for_the_client_going_by_its_name() {
        let mut config = config();
        let by_name = Ipv4Addr::new(192, 168, 77, 60);
        config.hosts.push(DhcpHostConfig {
            mac: None,
            ip: by_name,
            name: Some("Builder".into()),
            lease: Some(Duration::from_secs(900)),
        });
        let mut engine = Engine::new(config);
        let named = |kind, mac| {
            let mut m = message(kind, mac);
            m.opts_mut().insert(DhcpOption::Hostname("builder".into()));
            m
        };
        let mac = [2, 0, 0, 0, 0, 9];
        let (_, offer) =
            exchange(&mut engine, &named(MessageType::Discover, mac), NOW).expect("offer");
        assert_eq!(offer.yiaddr(), by_name);
        let mut request = named(MessageType::Request, mac);
        request
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(by_name));
        request
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        let (_, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, by_name));
        let lease = &engine.leases(NOW)[0];
        assert_eq!(lease.hostname.as_deref(), Some("Builder"));
        assert_eq!(lease.expiry_unix, NOW + 900);
        // Its renewal need not send the name again (RFC 2131 table 5): it keeps the
        // address.
        let mut renew = message(MessageType::Request, mac);
        renew.set_ciaddr(by_name);
        let (_, ack) = exchange(&mut engine, &renew, NOW + 450).expect("renewal ack");
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, by_name));
        assert_eq!(engine.leases(NOW + 450)[0].expiry_unix, NOW + 450 + 900);
        // A client going by another name gets the pool, never the reserved address.
        let (_, other) = dora(&mut engine, [2, 0, 0, 0, 0, 10], NOW);
        assert_ne!(other.yiaddr(), by_name);
    }

    /// A second guest giving the name of a `<host>` without a MAC, while the reserved
    /// guest holds its address, is served from the pool without the name: the reserved
    /// guest keeps it, and finds its reservation through it when it renews without
    /// option 12 (RFC 2131 table 5).
    #[test]
    fn a_guest_reserved_by_name_keeps_its_address_and_name_when_another_gives_it() {
        let mut config = config();
        let by_name = Ipv4Addr::new(192, 168, 77, 60);
        config.hosts.push(DhcpHostConfig {
            mac: None,
            ip: by_name,
            name: Some("builder".into()),
            lease: None,
        });
        let mut engine = Engine::new(config);
        let x = [2, 0, 0, 0, 0, 9];
        let ack = dora_with(
            &mut engine,
            x,
            &[DhcpOption::Hostname("builder".into())],
            NOW,
        );
        assert_eq!(ack.yiaddr(), by_name);
        // Another guest gives the same name: it gets the pool.
        let other = dora_with(
            &mut engine,
            [2, 0, 0, 0, 0, 10],
            &[DhcpOption::Hostname("builder".into())],
            NOW + 10,
        );
        assert_ne!(other.yiaddr(), by_name);
        let names: Vec<_> = engine
            .leases(NOW + 10)
            .into_iter()
            .map(|lease| (lease.ip, lease.hostname))
            .collect();
        assert!(
            names.contains(&(by_name, Some("builder".into()))),
            "{names:?}"
        );
        assert!(names.contains(&(other.yiaddr(), None)), "{names:?}");
        // The reserved guest renews, without a name.
        let mut renew = message(MessageType::Request, x);
        renew.set_ciaddr(by_name);
        let (_, ack) = exchange(&mut engine, &renew, NOW + 300).expect("renewal answer");
        assert_eq!(
            (kind(&ack), ack.yiaddr()),
            (MessageType::Ack, by_name),
            "the reserved guest lost its address"
        );
    }

    #[test]
    fn foreign_or_taken_address_is_nakked_by_broadcast() {
        let mut engine = Engine::new(config());
        let (_, ack) = dora(&mut engine, [2, 0, 0, 0, 0, 1], NOW);
        for ip in [
            ack.yiaddr(),
            Ipv4Addr::new(10, 1, 1, 1),
            Ipv4Addr::new(192, 168, 77, 50),
        ] {
            let (reply, nak) =
                exchange(&mut engine, &request_for([2, 0, 0, 0, 0, 2], ip, None), NOW)
                    .expect("nak");
            assert_eq!(kind(&nak), MessageType::Nak, "{ip}");
            // dnsmasq's words for why (option 56).
            assert_eq!(
                nak.opts().get(OptionCode::Message),
                Some(&DhcpOption::Message("address not available".into())),
                "{ip}"
            );
            assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
            assert_eq!(reply.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
            assert!(!reply.needs_commit);
            assert_eq!(nak.opts().get(OptionCode::AddressLeaseTime), None);
        }
    }

    /// RFC 2132 2: a hostname's trailing NULs (Windows sends one) are deleted, so the
    /// guest keeps its name, and a reservation by that name finds it.
    #[test]
    fn a_hostname_with_a_trailing_nul_keeps_its_name() {
        let mut config = config();
        let reserved = Ipv4Addr::new(192, 168, 77, 61);
        config.hosts.push(DhcpHostConfig {
            mac: None,
            ip: reserved,
            name: Some("winbox".into()),
            lease: None,
        });
        let mut engine = Engine::new(config);
        for (mac, name, expected_ip) in [
            ([2, 0, 0, 0, 0, 21], "nulhost\0", None),
            ([2, 0, 0, 0, 0, 22], "winbox\0", Some(reserved)),
        ] {
            let ack = dora_with(&mut engine, mac, &[DhcpOption::Hostname(name.into())], NOW);
            if let Some(ip) = expected_ip {
                assert_eq!(ack.yiaddr(), ip);
            }
        }
        let names: Vec<_> = engine
            .leases(NOW)
            .into_iter()
            .map(|lease| lease.hostname)
            .collect();
        assert_eq!(names, [Some("winbox".into()), Some("nulhost".into())]);
    }

    /// RFC 2131 4.1: an OFFER or ACK goes to the client alone, at its hardware address
    /// and the offered address, unless it sets the broadcast flag; a NAK is broadcast.
    #[test]
    fn offers_and_acks_go_to_the_client_alone_unless_it_asks_for_broadcast() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 24];
        let (reply, offer) =
            exchange(&mut engine, &message(MessageType::Discover, mac), NOW).expect("offer");
        assert_eq!(reply.to, SocketAddrV4::new(offer.yiaddr(), CLIENT_PORT));
        assert_eq!(reply.hardware, Some(mac));
        let mut discover = message(MessageType::Discover, [2, 0, 0, 0, 0, 25]);
        discover.set_flags(Flags::default().set_broadcast());
        let (reply, _) = exchange(&mut engine, &discover, NOW).expect("offer");
        assert_eq!(
            reply.to,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        );
        assert_eq!(reply.hardware, None);
        let mut request = request_for(mac, Ipv4Addr::new(192, 168, 77, 250), None);
        request.set_flags(Flags::default());
        let (reply, nak) = exchange(&mut engine, &request, NOW).expect("nak");
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(
            reply.to,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        );
        assert_eq!(reply.hardware, None);
    }

    /// RFC 2131 4.3.2: ciaddr is zero while SELECTING or in INIT-REBOOT; one a buggy
    /// client sets anyway must not take the ACK somewhere the client cannot hear it.
    #[test]
    fn a_stray_ciaddr_in_a_request_with_option_50_does_not_direct_the_ack() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 23];
        let (_, offer) =
            exchange(&mut engine, &message(MessageType::Discover, mac), NOW).expect("offer");
        let mut request = request_for(mac, offer.yiaddr(), Some(SERVER));
        request.set_ciaddr(Ipv4Addr::new(192, 168, 77, 99));
        let (reply, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        // To the offered address and the client's MAC, which it hears without an address.
        assert_eq!(reply.to, SocketAddrV4::new(offer.yiaddr(), CLIENT_PORT));
        assert_eq!(reply.hardware, Some(mac));
        assert_eq!(ack.ciaddr(), Ipv4Addr::UNSPECIFIED);
    }

    /// dnsmasq's "wrong address": a client verifying or renewing an address other than
    /// the one it holds a lease on gets a NAK, and keeps its lease for the DISCOVER.
    #[test]
    fn verifying_another_address_than_the_lease_held_is_nakked() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 24];
        let (_, ack) = dora(&mut engine, mac, NOW);
        let held = ack.yiaddr();
        let other = Ipv4Addr::new(192, 168, 77, 150);
        assert_ne!(held, other);
        let mut renew = message(MessageType::Request, mac);
        renew.set_ciaddr(other);
        for request in [request_for(mac, other, None), renew] {
            let (reply, nak) = exchange(&mut engine, &request, NOW + 10).expect("nak");
            assert_eq!(kind(&nak), MessageType::Nak);
            assert_eq!(
                nak.opts().get(OptionCode::Message),
                Some(&DhcpOption::Message("wrong address".into()))
            );
            assert_eq!(
                reply.to,
                SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
            );
            let leases = engine.leases(NOW + 10);
            assert_eq!((leases.len(), leases[0].ip), (1, held));
        }
        let (_, again) = dora(&mut engine, mac, NOW + 20);
        assert_eq!(again.yiaddr(), held);
        // One MAC holding leases under two client identifiers (iPXE's, then the OS's):
        // a client without one verifying either is verifying its own.
        let two_ids = [9, 0, 0, 0, 0, 9];
        let mut addresses = Vec::new();
        for id in [&[1u8, 9, 0, 0, 0, 0, 9][..], &[255, 0, 0, 0, 1]] {
            let ack = dora_with(
                &mut engine,
                two_ids,
                &[DhcpOption::ClientIdentifier(id.to_vec())],
                NOW,
            );
            addresses.push(ack.yiaddr());
        }
        assert_ne!(addresses[0], addresses[1]);
        let (_, ack) = exchange(
            &mut engine,
            &request_for(two_ids, addresses[1], None),
            NOW + 40,
        )
        .expect("ack");
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, addresses[1]));
        // Its own address is verified as before.
        let (_, ack) = exchange(&mut engine, &request_for(mac, held, None), NOW + 30).expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
    }

    /// The options of a raw reply, as `(code, data)` (adjacent runs of one code joined).
    fn reply_options(reply: &Reply) -> Vec<(u8, Vec<u8>)> {
        option_runs(&reply.bytes[OPTIONS_OFFSET..])
    }

    /// A raw DISCOVER with `options` after the message type.
    fn raw_discover(mac: [u8; 6], options: &[RawOption]) -> Vec<u8> {
        let mut discover = raw_request(mac, options);
        discover[OPTIONS_OFFSET + 2] = 1;
        discover
    }

    /// RFC 3046 2.2: a relay's option 82 comes back byte for byte, once, after every
    /// other option.
    #[test]
    fn relay_agent_information_is_echoed_byte_for_byte() {
        let mut engine = Engine::new(config());
        let relay_info: &[u8] = &[1, 6, b'p', b'o', b'r', b't', b'4', b'2', 2, 2, 0xab, 0xcd];
        let mut discover = raw_discover([2, 0, 0, 0, 0, 25], &[(82, relay_info)]);
        discover[24..28].copy_from_slice(&[192, 168, 77, 254]); // giaddr
        let reply = engine.handle(&discover, NOW).expect("offer");
        let options = reply_options(&reply);
        // Twice in a row would read as one option holding it twice (RFC 3396).
        assert_eq!(
            options.last(),
            Some(&(82, relay_info.to_vec())),
            "{options:?}"
        );
        assert_eq!(options.iter().filter(|(code, _)| *code == 82).count(), 1);
    }

    /// RFC 4702 4, as dnsmasq answers: the name the client goes by under the network's
    /// domain, in its encoding, the server doing the updates.
    #[test]
    fn a_client_fqdn_is_answered_with_the_name_the_client_goes_by() {
        let ours = |mac: [u8; 6], fqdn: &[u8], config: DhcpConfig| {
            let mut engine = Engine::new(config);
            let reply = engine
                .handle(&raw_discover(mac, &[(81, fqdn)]), NOW)
                .expect("offer");
            reply_options(&reply)
                .into_iter()
                .find(|(code, _)| *code == 81)
                .map(|(_, data)| data)
        };
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x72];
        let wire = b"\x03db1\x05kvnet\x04test\x00";
        for (asked, answer) in [
            // E and S: kept.
            (
                &b"\x05\x00\x00\x03db1\x00"[..],
                [&b"\x05\xff\xff"[..], wire].concat(),
            ),
            // E and N: the server updates all the same (S, O), N cleared.
            (
                b"\x0c\x00\x00\x03db1\x00",
                [&b"\x07\xff\xff"[..], wire].concat(),
            ),
            // ASCII, NUL-terminated, and the high bits cleared.
            (
                b"\xf0\x00\x00db1\x00",
                b"\x03\xff\xffdb1.kvnet.test\x00".to_vec(),
            ),
            (
                b"\x01\x00\x00db1.elsewhere",
                b"\x01\xff\xffdb1.kvnet.test".to_vec(),
            ),
        ] {
            assert_eq!(ours(mac, asked, config()), Some(answer), "{asked:?}");
        }
        // A reserved client goes by its reservation's name.
        assert_eq!(
            ours(RESERVED_MAC, b"\x05\x00\x00\x05other\x00", config()),
            Some(b"\x05\xff\xff\x08vm-fixed\x05kvnet\x04test\x00".to_vec())
        );
        // Another client asking for that name goes by none: no answer.
        assert_eq!(ours(mac, b"\x05\x00\x00\x08vm-fixed\x00", config()), None);
        // Without a domain, a partial name.
        let no_domain = DhcpConfig {
            domain: None,
            ..config()
        };
        assert_eq!(
            ours(mac, b"\x05\x00\x00\x03db1\x00", no_domain),
            Some(b"\x05\xff\xff\x03db1".to_vec())
        );
        // A client without the option gets none.
        let mut engine = Engine::new(config());
        let reply = engine
            .handle(&raw_discover(mac, &[(12, b"db1")]), NOW)
            .expect("offer");
        assert!(!reply_options(&reply).iter().any(|(code, _)| *code == 81));
    }

    /// RFC 2132 9.10: a reply fits the client's maximum message size, leaving out what
    /// the client can do without, largest first.
    #[test]
    fn a_reply_fits_the_clients_maximum_message_size() {
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x76];
        let client_id = [0x42; 200];
        let fqdn = [&b"\x05\x00\x00\x3f"[..], &[b'a'; 63], b"\x00"].concat();
        let offer = |max_size: Option<u16>| {
            let mut engine = Engine::new(config());
            let size = max_size.map(u16::to_be_bytes);
            let mut options: Vec<RawOption> = vec![(61, &client_id), (81, &fqdn)];
            if let Some(size) = &size {
                options.push((57, size));
            }
            let reply = engine
                .handle(&raw_discover(mac, &options), NOW)
                .expect("offer");
            let codes: Vec<u8> = reply_options(&reply).iter().map(|(c, _)| *c).collect();
            (reply.bytes.len(), codes)
        };
        let (full, codes) = offer(Some(1500));
        assert!(
            full > 576 - 28,
            "{full}: the test needs a reply over the limit"
        );
        assert!(codes.contains(&81) && codes.contains(&15), "{codes:?}");
        let (len, codes) = offer(Some(576));
        assert!(len <= 576 - 28, "{len}");
        assert!(
            !codes.contains(&81),
            "the FQDN answer goes first: {codes:?}"
        );
        for kept in [53, 54, 51, 1, 3, 6, 61] {
            assert!(codes.contains(&kept), "{kept} left out: {codes:?}");
        }
        // A size below the minimum counts as the minimum, and so does none.
        assert_eq!(offer(Some(300)).0, len);
        assert_eq!(offer(None).0, len);
    }

    /// [`config`] with `dhcp-option=` lines: (code, value, force).
    fn configured(options: &[(u8, DhcpOptionValue, bool)]) -> DhcpConfig {
        DhcpConfig {
            options: options
                .iter()
                .map(|(code, value, force)| DhcpOptionRule {
                    code: *code,
                    value: value.clone(),
                    force: *force,
                })
                .collect(),
            ..config()
        }
    }

    /// The options of an OFFER to a DISCOVER with `options`, by code.
    fn offered(config: DhcpConfig, options: &[RawOption]) -> BTreeMap<u8, Vec<u8>> {
        let mut engine = Engine::new(config);
        let reply = engine
            .handle(&raw_discover([0x52, 0x54, 0, 0, 0, 0x77], options), NOW)
            .expect("offer");
        reply_options(&reply).into_iter().collect()
    }

    #[test]
    fn dhcp_options_go_to_clients_that_ask_and_forced_ones_to_every_client() {
        let config = configured(&[
            (
                42,
                DhcpOptionValue::Addresses(vec![Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 0, 0, 9)]),
                false,
            ),
            (66, DhcpOptionValue::Text("tftp.lab".into()), true),
            (
                119,
                DhcpOptionValue::Domains(vec!["a.test".into(), "b.a.test".into()]),
                false,
            ),
        ]);
        let silent = offered(config.clone(), &[(55, &[1, 3, 6])]);
        assert_eq!(silent.get(&42), None);
        assert_eq!(silent.get(&119), None);
        // With a NUL, as dnsmasq sends 66 and 67.
        assert_eq!(silent.get(&66).map(Vec::as_slice), Some(&b"tftp.lab\0"[..]));
        // A client that sends no list gets them all, as from dnsmasq.
        let listless = offered(config.clone(), &[]);
        assert!([42, 66, 119].iter().all(|code| listless.contains_key(code)));
        let asking = offered(config, &[(55, &[1, 3, 42, 119])]);
        // 0.0.0.0 is the server's own address.
        assert_eq!(asking.get(&42), Some(&vec![192, 168, 77, 1, 10, 0, 0, 9]));
        assert_eq!(
            asking.get(&119).map(Vec::as_slice),
            Some(&b"\x01a\x04test\x00\x01b\xc0\x00"[..])
        );
        assert_eq!(asking.get(&66).map(Vec::as_slice), Some(&b"tftp.lab\0"[..]));
    }

    #[test]
    fn dhcp_options_replace_the_servers_own_router_dns_domain_and_mtu() {
        let lines = configured(&[
            (3, DhcpOptionValue::Omitted, false),
            (
                6,
                DhcpOptionValue::Addresses(vec![Ipv4Addr::new(10, 0, 0, 53)]),
                false,
            ),
            (15, DhcpOptionValue::Text("corp.test".into()), false),
            (26, DhcpOptionValue::U16(1500), true),
        ]);
        let asking = offered(lines.clone(), &[(55, &[1, 3, 6, 15])]);
        assert_eq!(
            asking.get(&3),
            None,
            "no router, as dnsmasq's option:router"
        );
        assert_eq!(asking.get(&6), Some(&vec![10, 0, 0, 53]));
        assert_eq!(asking.get(&15).map(Vec::as_slice), Some(&b"corp.test"[..]));
        assert_eq!(asking.get(&26), Some(&vec![0x05, 0xdc]));
        // Not asked for: neither the line's value nor kvnet's own.
        let silent = offered(lines, &[(55, &[1, 3])]);
        assert_eq!(silent.get(&6), None);
        assert_eq!(silent.get(&15), None);
        assert_eq!(silent.get(&26), Some(&vec![0x05, 0xdc]));
        // Without lines, kvnet's own.
        let own = offered(config(), &[(55, &[1, 3, 6, 15])]);
        assert_eq!(own.get(&3), Some(&SERVER.octets().to_vec()));
        assert_eq!(own.get(&6), Some(&SERVER.octets().to_vec()));
        assert_eq!(own.get(&15).map(Vec::as_slice), Some(&b"kvnet.test"[..]));
        // A boot file name of a line wins over <bootp>'s.
        let boot = DhcpConfig {
            boot: Some(DhcpBoot {
                file: "pxelinux.0".into(),
                server: SERVER,
            }),
            ..configured(&[(67, DhcpOptionValue::Text("ipxe.efi".into()), false)])
        };
        let mac = [0x52, 0x54, 0, 0, 0, 0x78];
        let mut engine = Engine::new(boot);
        let ack = dora_with(
            &mut engine,
            mac,
            &[DhcpOption::ParameterRequestList(vec![
                OptionCode::BootfileName,
            ])],
            NOW,
        );
        assert_eq!(
            ack.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"ipxe.efi\0".to_vec()))
        );
        // The header keeps <bootp>'s file, which PXE firmware reads.
        assert!(
            ack.fname()
                .is_some_and(|file| file.starts_with(b"pxelinux.0\0"))
        );
    }

    /// A TFTP server or boot file of `dhcp-option=` that the client did not ask for goes
    /// in the header (PXE firmware's `sname` and `file`), as from dnsmasq; an option
    /// with no data is still sent, with a length of zero.
    #[test]
    fn boot_options_unasked_go_in_the_header_and_empty_options_are_sent() {
        let config = configured(&[
            (66, DhcpOptionValue::Text("10.0.0.1".into()), false),
            (67, DhcpOptionValue::Text("pxelinux.0".into()), false),
            (80, DhcpOptionValue::Bytes(Vec::new()), true),
        ]);
        let mac = [0x52, 0x54, 0, 0, 0, 0x79];
        let mut engine = Engine::new(config.clone());
        let ack = dora_with(
            &mut engine,
            mac,
            &[DhcpOption::ParameterRequestList(vec![OptionCode::Router])],
            NOW,
        );
        assert_eq!(ack.opts().get(OptionCode::BootfileName), None);
        assert!(
            ack.sname()
                .is_some_and(|name| name.starts_with(b"10.0.0.1\0"))
        );
        assert!(
            ack.fname()
                .is_some_and(|file| file.starts_with(b"pxelinux.0\0"))
        );
        let unasked = offered(config.clone(), &[(55, &[1, 3])]);
        assert_eq!(unasked.get(&80).map(Vec::len), Some(0));
        // Asked for, they are options, and the header stays empty.
        let mut engine = Engine::new(config);
        let ack = dora_with(
            &mut engine,
            [0x52, 0x54, 0, 0, 0, 0x7a],
            &[DhcpOption::ParameterRequestList(vec![
                OptionCode::from(66),
                OptionCode::BootfileName,
            ])],
            NOW,
        );
        assert!(ack.opts().get(OptionCode::BootfileName).is_some());
        assert!(ack.fname().is_none_or(|file| file.iter().all(|&b| b == 0)));
        assert!(ack.sname().is_none_or(|name| name.iter().all(|&b| b == 0)));
    }

    /// 66/67 for a client without a request list go in the header only, cut to fit;
    /// with `<bootp>`, never; options without data are the first left out of a reply
    /// too large for the client.
    #[test]
    fn boot_options_fill_the_header_as_dnsmasq_does() {
        let long = "f".repeat(200);
        let config = configured(&[
            (66, DhcpOptionValue::Text("t".repeat(64)), false),
            (67, DhcpOptionValue::Text(long.clone()), false),
        ]);
        let mut engine = Engine::new(config.clone());
        let ack = dora_with(&mut engine, [0x52, 0x54, 0, 0, 0, 0x7b], &[], NOW);
        assert_eq!(ack.opts().get(OptionCode::BootfileName), None);
        assert_eq!(ack.fname().map(|file| file.len()), Some(128));
        assert!(
            ack.fname()
                .is_some_and(|file| file[..127] == long.as_bytes()[..127])
        );
        assert!(ack.sname().is_some_and(|name| name[..63] == [b't'; 63]));
        let with_bootp = DhcpConfig {
            boot: Some(DhcpBoot {
                file: "boot.0".into(),
                server: Ipv4Addr::new(192, 168, 77, 9),
            }),
            ..config
        };
        let mut engine = Engine::new(with_bootp);
        let ack = dora_with(&mut engine, [0x52, 0x54, 0, 0, 0, 0x7c], &[], NOW);
        assert!(
            ack.fname()
                .is_some_and(|file| file.starts_with(b"boot.0\0"))
        );
        assert!(ack.sname().is_none_or(|name| name.iter().all(|&b| b == 0)));

        let empties: Vec<_> = (128..=254)
            .chain([4, 5, 8, 10, 11, 14, 24, 25, 29, 30, 39, 43])
            .map(|code| (code, DhcpOptionValue::Bytes(Vec::new()), true))
            .collect();
        let mut engine = Engine::new(configured(&empties));
        let reply = engine
            .handle(
                &raw_discover([0x52, 0x54, 0, 0, 0, 0x7d], &[(55, &[1, 3])]),
                NOW,
            )
            .expect("offer");
        assert!(
            reply.bytes.len() <= 576 - IP_UDP_HEADERS,
            "{}",
            reply.bytes.len()
        );
    }

    /// With `<bootp>`, 66/67 of `dhcp-option=` are options to a client without a list;
    /// an INFORM's answer gets the header too; a 255-byte name has no room for a NUL.
    #[test]
    fn boot_options_with_bootp_inform_and_full_length() {
        let config = configured(&[
            (66, DhcpOptionValue::Text("tftp.lab".into()), false),
            (67, DhcpOptionValue::Text("x.efi".into()), false),
        ]);
        let with_bootp = DhcpConfig {
            boot: Some(DhcpBoot {
                file: "boot.0".into(),
                server: Ipv4Addr::new(192, 168, 77, 9),
            }),
            ..config.clone()
        };
        let listless = offered(with_bootp, &[]);
        assert_eq!(
            listless.get(&66).map(Vec::as_slice),
            Some(&b"tftp.lab\0"[..])
        );
        assert_eq!(listless.get(&67).map(Vec::as_slice), Some(&b"x.efi\0"[..]));

        let mut engine = Engine::new(config);
        let mut inform = message(MessageType::Inform, [2, 0, 0, 0, 0, 6]);
        inform.set_ciaddr(Ipv4Addr::new(192, 168, 77, 9));
        let (_, ack) = exchange(&mut engine, &inform, NOW).expect("ack");
        assert!(
            ack.sname()
                .is_some_and(|name| name.starts_with(b"tftp.lab\0"))
        );
        assert!(ack.fname().is_some_and(|file| file.starts_with(b"x.efi\0")));
        assert_eq!(ack.siaddr(), SERVER);

        let full = configured(&[(67, DhcpOptionValue::Text("g".repeat(255)), false)]);
        let asking = offered(full, &[(55, &[1, 67])]);
        assert_eq!(asking.get(&67).map(Vec::len), Some(255));
    }

    #[test]
    fn dhcp_options_are_left_out_when_the_reply_would_not_fit() {
        let client_id = [0x42; 200];
        let config = configured(&[
            (66, DhcpOptionValue::Text("t".repeat(250)), true),
            (42, DhcpOptionValue::Addresses(vec![SERVER]), true),
        ]);
        let large = 1500u16.to_be_bytes();
        let full = offered(config.clone(), &[(61, &client_id), (57, &large)]);
        assert!(full.contains_key(&66) && full.contains_key(&42));
        let size = 576u16.to_be_bytes();
        let mut engine = Engine::new(config);
        let reply = engine
            .handle(
                &raw_discover(
                    [0x52, 0x54, 0, 0, 0, 0x77],
                    &[(61, &client_id), (57, &size)],
                ),
                NOW,
            )
            .expect("offer");
        assert!(reply.bytes.len() <= 576 - 28, "{}", reply.bytes.len());
        let codes: Vec<u8> = reply_options(&reply).iter().map(|(c, _)| *c).collect();
        assert!(!codes.contains(&66), "the largest goes: {codes:?}");
        for kept in [1, 3, 6, 42, 61] {
            assert!(codes.contains(&kept), "{kept} left out: {codes:?}");
        }
    }

    /// Without option 57 a reply keeps to 576 bytes, leaving out first what the client
    /// did not ask for: a forced boot server name, not its domain or search list.
    #[test]
    fn what_the_client_asked_for_is_left_out_last() {
        let domains = (0..4)
            .map(|n| format!("{}{n}.lab.example.test", "d".repeat(30)))
            .collect();
        let config = configured(&[
            (66, DhcpOptionValue::Text("t".repeat(150)), true),
            (119, DhcpOptionValue::Domains(domains), true),
            (42, DhcpOptionValue::Addresses(vec![SERVER]), true),
        ]);
        let asked = [1, 3, 6, 15, 42, 119];
        let large = 1500u16.to_be_bytes();
        let full = offered(config.clone(), &[(55, &asked), (57, &large)]);
        assert!(full.contains_key(&66) && full.contains_key(&119) && full.contains_key(&15));
        let mut engine = Engine::new(config);
        let reply = engine
            .handle(
                &raw_discover([0x52, 0x54, 0, 0, 0, 0x78], &[(55, &asked)]),
                NOW,
            )
            .expect("offer");
        assert!(reply.bytes.len() <= 576 - 28, "{}", reply.bytes.len());
        let codes: Vec<u8> = reply_options(&reply).iter().map(|(c, _)| *c).collect();
        assert!(!codes.contains(&66), "{codes:?}");
        for kept in [1, 3, 6, 15, 42, 119] {
            assert!(codes.contains(&kept), "{kept} left out: {codes:?}");
        }
    }

    /// A large option left out makes room for the small ones left out before it: they
    /// go back where they fit, as dnsmasq adds each option that still fits. (A
    /// network with many classless routes lost its domain, broadcast and hostname.)
    #[test]
    fn what_still_fits_goes_back_once_a_large_option_is_left_out() {
        let domains = (0..3)
            .map(|n| format!("{}{n}.lab.example.test", "d".repeat(12)))
            .collect();
        let ntp = vec![
            SERVER,
            Ipv4Addr::new(192, 168, 77, 2),
            Ipv4Addr::new(10, 0, 0, 3),
        ];
        let config = configured(&[
            (121, DhcpOptionValue::Bytes(vec![0x18; 300]), false),
            (119, DhcpOptionValue::Domains(domains), false),
            (42, DhcpOptionValue::Addresses(ntp), false),
        ]);
        // dhclient's default request list.
        let asked = [1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42];
        let mut engine = Engine::new(config);
        let reply = engine
            .handle(
                &raw_discover([0x52, 0x54, 0, 0, 0, 0x79], &[(55, &asked), (12, b"dhc")]),
                NOW,
            )
            .expect("offer");
        assert!(reply.bytes.len() <= 576 - 28, "{}", reply.bytes.len());
        let codes: Vec<u8> = reply_options(&reply).iter().map(|(c, _)| *c).collect();
        assert!(!codes.contains(&121), "it cannot fit: {codes:?}");
        for kept in [1, 3, 6, 12, 15, 26, 28, 42, 119] {
            assert!(codes.contains(&kept), "{kept} left out: {codes:?}");
        }
    }

    /// A reservation renamed by net-update renames its guest's lease at once (DNS and
    /// net-dhcp-leases), not at the next renewal; a name it no longer gives falls back
    /// to the one the guest gave.
    #[test]
    fn a_renamed_reservation_renames_its_lease_at_once() {
        let mut engine = Engine::new(config());
        let (_, ack) = request_offered(&mut engine, RESERVED_MAC, &[(12, b"own1")], &[]);
        assert_eq!(kind(&ack), MessageType::Ack);
        let fixed = Ipv4Addr::new(192, 168, 77, 50);
        let names = |engine: &Engine| engine.dns_names(NOW);
        assert_eq!(names(&engine), [(fixed, "vm-fixed".to_owned())]);
        let with_name = |name: Option<&str>| {
            let mut config = config();
            config.hosts[0].name = name.map(str::to_owned);
            config
        };
        engine.update(with_name(Some("renamed")));
        assert_eq!(names(&engine), [(fixed, "renamed".to_owned())]);
        engine.update(with_name(None));
        assert_eq!(names(&engine), [(fixed, "own1".to_owned())]);
        // Another guest's reservation changing leaves this lease alone.
        let mut config = with_name(None);
        config.hosts.push(DhcpHostConfig {
            mac: Some([0x52, 0x54, 0, 0, 0, 0x99]),
            ip: Ipv4Addr::new(192, 168, 77, 51),
            name: Some("other".into()),
            lease: None,
        });
        engine.update(config.clone());
        assert_eq!(names(&engine), [(fixed, "own1".to_owned())]);
        // A reservation for a guest leasing another address (from the pool, until it is
        // moved) names only the lease on the reserved address, as dnsmasq's reload.
        let pooled = [0x52, 0x54, 0, 0, 0, 0x98];
        let (_, ack) = request_offered(&mut engine, pooled, &[(12, b"pool1")], &[]);
        let pool_ip = ack.yiaddr();
        let mut reserving = config;
        reserving.hosts.push(DhcpHostConfig {
            mac: Some(pooled),
            ip: Ipv4Addr::new(192, 168, 77, 52),
            name: Some("moved".into()),
            lease: None,
        });
        engine.update(reserving);
        assert!(
            names(&engine).contains(&(pool_ip, "pool1".to_owned())),
            "{:?}",
            names(&engine)
        );
    }

    /// dnsmasq returns the client's own name when it asks for option 12; a reserved
    /// name is sent whether asked for or not.
    #[test]
    fn the_hostname_comes_back_when_asked_for() {
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x73];
        let hostname = |mac: [u8; 6], options: &[RawOption]| {
            let mut engine = Engine::new(config());
            let (_, ack) = request_offered(&mut engine, mac, options, &[]);
            assert_eq!(kind(&ack), MessageType::Ack);
            match ack.opts().get(OptionCode::Hostname) {
                Some(DhcpOption::Hostname(name)) => Some(name.clone()),
                _ => None,
            }
        };
        assert_eq!(
            hostname(mac, &[(12, b"web7"), (55, &[1, 3, 12])]).as_deref(),
            Some("web7")
        );
        assert_eq!(hostname(mac, &[(12, b"web7"), (55, &[1, 3])]), None);
        // No list at all asks for everything, as dnsmasq reads it.
        assert_eq!(hostname(mac, &[(12, b"web7")]).as_deref(), Some("web7"));
        assert_eq!(
            hostname(RESERVED_MAC, &[(12, b"web7")]).as_deref(),
            Some("vm-fixed")
        );
    }

    /// RFC 2132 9.3: options overloaded into `file` and `sname` count as any other.
    #[test]
    fn overloaded_options_in_file_and_sname_are_read() {
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x74];
        let mut engine = Engine::new(config());
        // The message type in `sname` (overload 2), after a DISCOVER's options field
        // that holds only the overload option.
        let mut discover = raw_request(mac, &[]);
        discover.truncate(OPTIONS_OFFSET);
        discover.extend([52, 1, 2, 255]);
        discover[SNAME_FIELD.start..SNAME_FIELD.start + 4].copy_from_slice(&[53, 1, 1, 255]);
        let reply = engine.handle(&discover, NOW).expect("offer");
        let offered = Ipv4Addr::from(<[u8; 4]>::try_from(&reply.bytes[16..20]).expect("yiaddr"));
        assert!(offered != Ipv4Addr::UNSPECIFIED);
        // The requested address and server in `file` (overload 1).
        let mut request = raw_request(mac, &[(52, &[1])]);
        let mut file = vec![50, 4];
        file.extend(offered.octets());
        file.extend([54, 4]);
        file.extend(SERVER.octets());
        file.push(255);
        request[FILE_FIELD.start..FILE_FIELD.start + file.len()].copy_from_slice(&file);
        let reply = engine.handle(&request, NOW).expect("ack");
        let ack = Message::decode(&mut Decoder::new(&reply.bytes)).expect("decode");
        assert_eq!((kind(&ack), ack.yiaddr()), (MessageType::Ack, offered));
    }

    /// Of an option given twice (not in one run), the first counts, as in dnsmasq.
    #[test]
    fn the_first_of_a_repeated_option_counts() {
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x75];
        let mut engine = Engine::new(config());
        let discover = raw_discover(mac, &[(12, b"one"), (53, &[3])]);
        let reply = engine.handle(&discover, NOW).expect("an offer, not a NAK");
        let offer = Message::decode(&mut Decoder::new(&reply.bytes)).expect("decode");
        assert_eq!(kind(&offer), MessageType::Offer);
    }

    #[test]
    fn a_packet_without_the_magic_cookie_is_not_dhcp() {
        let mut engine = Engine::new(config());
        let mut discover = encode(&message(MessageType::Discover, [2, 0, 0, 0, 0, 26]));
        assert!(engine.handle(&discover, NOW).is_some());
        discover[OPTIONS_OFFSET - 4..OPTIONS_OFFSET].fill(0);
        assert!(engine.handle(&discover, NOW).is_none());
    }

    #[test]
    fn request_for_another_server_drops_our_offer() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 3];
        let (_, offer) =
            exchange(&mut engine, &message(MessageType::Discover, mac), NOW).expect("offer");
        let other = request_for(
            mac,
            Ipv4Addr::new(192, 168, 77, 250),
            Some(Ipv4Addr::new(192, 168, 77, 2)),
        );
        assert!(exchange(&mut engine, &other, NOW).is_none());
        // The held address is free again for the next client.
        let (_, next) = exchange(
            &mut engine,
            &message(MessageType::Discover, [2, 0, 0, 0, 0, 4]),
            NOW,
        )
        .expect("offer");
        assert_ne!(next.yiaddr(), offer.yiaddr());
        assert!(
            engine
                .leases
                .assignable(&Client::new([9; 6], None), offer.yiaddr(), NOW)
        );
    }

    #[test]
    fn release_and_decline_free_or_block_the_address() {
        let mut engine = Engine::new(config());
        let mac = [2, 0, 0, 0, 0, 5];
        let (_, ack) = dora(&mut engine, mac, NOW);
        let mut release = message(MessageType::Release, mac);
        release.set_ciaddr(ack.yiaddr());
        release
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(engine.handle(&encode(&release), NOW).is_none());
        assert!(engine.leases(NOW).is_empty());

        let (_, ack) = dora(&mut engine, mac, NOW);
        let mut decline = message(MessageType::Decline, mac);
        decline
            .opts_mut()
            .insert(DhcpOption::RequestedIpAddress(ack.yiaddr()));
        decline
            .opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER));
        assert!(engine.handle(&encode(&decline), NOW).is_none());
        assert!(engine.leases(NOW).is_empty());
        let (_, again) = dora(&mut engine, mac, NOW);
        assert_ne!(again.yiaddr(), ack.yiaddr());
    }

    /// The reviewer's case A: a lease taken without option 61, then the same MAC with
    /// option 61 = 01:<mac> gets the same address offered and its INIT-REBOOT ACKed.
    #[test]
    fn same_mac_with_a_client_identifier_keeps_its_address() {
        let mut engine = Engine::new(config());
        let mac = [0x52, 0x54, 0, 0xaa, 0, 1];
        let (_, ack) = dora(&mut engine, mac, NOW);
        let client_id: Vec<u8> = [1].into_iter().chain(mac).collect();
        let mut discover = message(MessageType::Discover, mac);
        discover
            .opts_mut()
            .insert(DhcpOption::ClientIdentifier(client_id.clone()));
        let (_, offer) = exchange(&mut engine, &discover, NOW + 1).expect("offer");
        assert_eq!(offer.yiaddr(), ack.yiaddr());
        let mut reboot = request_for(mac, ack.yiaddr(), None);
        reboot
            .opts_mut()
            .insert(DhcpOption::ClientIdentifier(client_id.clone()));
        let (_, reacked) = exchange(&mut engine, &reboot, NOW + 2).expect("ack");
        assert_eq!(
            (kind(&reacked), reacked.yiaddr()),
            (MessageType::Ack, ack.yiaddr())
        );
        let leases = engine.leases(NOW + 2);
        assert_eq!(leases.len(), 1, "{leases:?}");
        assert_eq!(leases[0].client_id.as_deref(), Some(&client_id[..]));
        // RFC 6842: replies carry the identifier back; those to a client without one
        // carry none.
        let echoed = DhcpOption::ClientIdentifier(client_id.clone());
        assert_eq!(
            offer.opts().get(OptionCode::ClientIdentifier),
            Some(&echoed)
        );
        assert_eq!(
            reacked.opts().get(OptionCode::ClientIdentifier),
            Some(&echoed)
        );
        assert_eq!(ack.opts().get(OptionCode::ClientIdentifier), None);
    }

    /// RFC 2131 4.3.3: a declined address is marked unavailable, reserved or not; the
    /// reserved client is offered a pool address meanwhile (as dnsmasq does).
    #[test]
    fn a_declined_reserved_address_is_not_offered_again() {
        let mut engine = Engine::new(config());
        let reserved = Ipv4Addr::new(192, 168, 77, 50);
        let (_, ack) = dora(&mut engine, RESERVED_MAC, NOW);
        assert_eq!(ack.yiaddr(), reserved);
        let mut decline = request_for(RESERVED_MAC, reserved, Some(SERVER));
        decline
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Decline));
        assert!(engine.handle(&encode(&decline), NOW).is_none());
        let (_, again) = dora(&mut engine, RESERVED_MAC, NOW + 1);
        assert_ne!(again.yiaddr(), reserved);
        assert_eq!(again.yiaddr(), Ipv4Addr::new(192, 168, 77, 100));
    }

    /// The reviewer's case I: option 51 = 300 s against a 600 s range is granted, with
    /// T1/T2 to match, as dnsmasq does.
    #[test]
    fn a_shorter_requested_lease_time_is_granted() {
        let mut engine = Engine::new(config());
        let mac = [0x52, 0x54, 0, 0xaa, 0, 0x43];
        let mut discover = message(MessageType::Discover, mac);
        discover
            .opts_mut()
            .insert(DhcpOption::AddressLeaseTime(300));
        let (_, offer) = exchange(&mut engine, &discover, NOW).expect("offer");
        let mut request = request_for(mac, offer.yiaddr(), Some(SERVER));
        request.opts_mut().insert(DhcpOption::AddressLeaseTime(300));
        let (_, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        for m in [&offer, &ack] {
            assert_eq!(
                m.opts().get(OptionCode::AddressLeaseTime),
                Some(&DhcpOption::AddressLeaseTime(300))
            );
            assert_eq!(
                m.opts().get(OptionCode::Renewal),
                Some(&DhcpOption::Renewal(150))
            );
        }
        assert_eq!(engine.leases(NOW)[0].expiry_unix, NOW + 300);
    }

    #[test]
    fn inform_gets_options_without_an_address_or_lease() {
        let mut engine = Engine::new(config());
        let mut inform = message(MessageType::Inform, [2, 0, 0, 0, 0, 6]);
        let ip = Ipv4Addr::new(192, 168, 77, 9);
        inform.set_ciaddr(ip);
        let (reply, ack) = exchange(&mut engine, &inform, NOW).expect("ack");
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(ack.opts().get(OptionCode::AddressLeaseTime), None);
        assert_eq!(
            ack.opts().get(OptionCode::Router),
            Some(&DhcpOption::Router(vec![SERVER]))
        );
        assert_eq!(reply.to, SocketAddrV4::new(ip, 68));
        assert!(engine.leases(NOW).is_empty());
        // Without an address of its own to answer to, it is no INFORM.
        inform.set_ciaddr(Ipv4Addr::UNSPECIFIED);
        assert!(exchange(&mut engine, &inform, NOW).is_none());
        // Nor with an address outside the network, unless a relay forwarded it.
        let outside = Ipv4Addr::new(203, 0, 113, 7);
        inform.set_ciaddr(outside);
        assert!(exchange(&mut engine, &inform, NOW).is_none());
        let relay = Ipv4Addr::new(192, 168, 77, 254);
        inform.set_giaddr(relay);
        let (reply, _) = exchange(&mut engine, &inform, NOW).expect("a relayed inform");
        assert_eq!(reply.to, SocketAddrV4::new(relay, 67));
    }

    #[test]
    fn broadcast_flag_is_echoed() {
        let mut engine = Engine::new(config());
        let mut discover = message(MessageType::Discover, [2, 0, 0, 0, 0, 9]);
        discover.set_flags(Flags::default().set_broadcast());
        let (_, offer) = exchange(&mut engine, &discover, NOW).expect("offer");
        assert!(offer.flags().broadcast());
    }

    #[test]
    fn a_range_holding_the_bridge_address_never_hands_it_out() {
        let mut cfg = config();
        cfg.ranges = vec![(SERVER, Ipv4Addr::new(192, 168, 77, 3), None)];
        let mut engine = Engine::new(cfg);
        let (_, first) = dora(&mut engine, [2, 0, 0, 0, 0, 1], NOW);
        let (_, second) = dora(&mut engine, [2, 0, 0, 0, 0, 2], NOW);
        assert_eq!(
            [first.yiaddr(), second.yiaddr()],
            [
                Ipv4Addr::new(192, 168, 77, 2),
                Ipv4Addr::new(192, 168, 77, 3)
            ]
        );
        let taken = request_for([2, 0, 0, 0, 0, 3], SERVER, Some(SERVER));
        let (_, nak) = exchange(&mut engine, &taken, NOW).expect("nak");
        assert_eq!(kind(&nak), MessageType::Nak);
        let discover = message(MessageType::Discover, [2, 0, 0, 0, 0, 3]);
        assert!(engine.handle(&encode(&discover), NOW).is_none());
    }

    /// `log-dhcp` tells each message and its reply, or why there is none; a network
    /// without it tells nothing.
    #[test]
    fn log_dhcp_tells_each_message_and_what_it_got() {
        let one = Ipv4Addr::new(192, 168, 77, 100);
        let mut logged = DhcpConfig {
            log_dhcp: true,
            ..config()
        };
        logged.ranges = vec![(one, one, None)];
        let exchanges = |config: DhcpConfig| {
            crate::debug_log::captured(|| {
                let mut engine = Engine::new(config);
                let asked = DhcpOption::ParameterRequestList(vec![
                    OptionCode::SubnetMask,
                    OptionCode::Hostname,
                ]);
                let name = DhcpOption::Hostname("web1".into());
                dora_with(&mut engine, [2, 0, 0, 0, 0, 1], &[asked, name], NOW);
                let other = [2, 0, 0, 0, 0, 2];
                let discover = message(MessageType::Discover, other);
                assert!(engine.handle(&encode(&discover), NOW).is_none());
                let mut release = message(MessageType::Release, other);
                release.set_ciaddr(one);
                assert!(engine.handle(&encode(&release), NOW).is_none());
                let foreign = request_for(other, one, Some(Ipv4Addr::new(192, 168, 77, 2)));
                assert!(engine.handle(&encode(&foreign), NOW).is_none());
            })
        };
        let logs = exchanges(logged);
        for line in [
            "client provides name: web1",
            "DHCPDISCOVER(br0) 02:00:00:00:00:01",
            "DHCPOFFER(br0) 192.168.77.100 02:00:00:00:00:01",
            "requested options: 1:netmask, 12:hostname",
            "sent size:  4 option:  1 netmask  255.255.255.0",
            "sent size:  4 option: 12 hostname  web1",
            "sent size:  4 option: 51 lease-time  1h",
            "sent size:  4 option: 54 server-identifier  192.168.77.1",
            "DHCPREQUEST(br0) 192.168.77.100 02:00:00:00:00:01",
            "DHCPACK(br0) 192.168.77.100 02:00:00:00:00:01 web1",
            "DHCPDISCOVER(br0) 02:00:00:00:00:02 no address available",
            "DHCPRELEASE(br0) 192.168.77.100 02:00:00:00:00:02 unknown lease",
            "DHCPREQUEST(br0) 192.168.77.100 02:00:00:00:00:02 for another server",
        ] {
            assert!(logs.contains(line), "{line:?} not logged:\n{logs}");
        }
        assert!(logs.contains(" network=test xid="), "{logs}");
        let quiet = exchanges(DhcpConfig {
            ranges: vec![(one, one, None)],
            ..config()
        });
        assert!(!quiet.contains("DHCPDISCOVER"), "{quiet}");
    }

    #[test]
    fn full_pool_answers_nothing() {
        let mut cfg = config();
        cfg.ranges = vec![(
            Ipv4Addr::new(192, 168, 77, 100),
            Ipv4Addr::new(192, 168, 77, 101),
            None,
        )];
        let mut engine = Engine::new(cfg);
        dora(&mut engine, [2, 0, 0, 0, 0, 1], NOW);
        dora(&mut engine, [2, 0, 0, 0, 0, 2], NOW);
        for n in 3..50 {
            assert!(
                engine
                    .handle(
                        &encode(&message(MessageType::Discover, [2, 0, 0, 0, 0, n])),
                        NOW
                    )
                    .is_none()
            );
        }
        assert_eq!(engine.leases(NOW).len(), 2);
    }

    #[test]
    fn relay_on_the_network_gets_unicast_replies() {
        let mut engine = Engine::new(config());
        let relay = Ipv4Addr::new(192, 168, 77, 5);
        let mac = [2, 0, 0, 0, 0, 0x11];
        let mut discover = message(MessageType::Discover, mac);
        discover.set_giaddr(relay);
        let (to, offer) = exchange(&mut engine, &discover, NOW).expect("offer");
        assert_eq!(to.to, SocketAddrV4::new(relay, 67));
        assert_eq!((kind(&offer), offer.giaddr()), (MessageType::Offer, relay));
        let mut request = request_for(mac, offer.yiaddr(), Some(SERVER));
        request.set_giaddr(relay);
        let (to, ack) = exchange(&mut engine, &request, NOW).expect("ack");
        assert_eq!(to.to, SocketAddrV4::new(relay, 67));
        assert!(to.needs_commit);
        assert_eq!(
            (kind(&ack), ack.yiaddr()),
            (MessageType::Ack, offer.yiaddr())
        );
        // A NAK goes to the relay too, with the broadcast flag for it to broadcast.
        let mut taken = request_for([2, 0, 0, 0, 0, 0x12], offer.yiaddr(), None);
        taken.set_giaddr(relay);
        let (to, nak) = exchange(&mut engine, &taken, NOW).expect("nak");
        assert_eq!(to.to, SocketAddrV4::new(relay, 67));
        assert_eq!(kind(&nak), MessageType::Nak);
        assert!(nak.flags().broadcast());
        // The server's own, the network's and the broadcast address are no relays.
        for giaddr in [
            SERVER,
            Ipv4Addr::new(192, 168, 77, 0),
            Ipv4Addr::new(192, 168, 77, 255),
        ] {
            let mut spoofed = message(MessageType::Discover, mac);
            spoofed.set_giaddr(giaddr);
            assert!(engine.handle(&encode(&spoofed), NOW).is_none(), "{giaddr}");
        }
    }

    #[test]
    fn relayed_replies_and_odd_hardware_are_ignored() {
        let mut engine = Engine::new(config());
        let mut relayed = message(MessageType::Discover, [2, 0, 0, 0, 0, 1]);
        relayed.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        assert!(engine.handle(&encode(&relayed), NOW).is_none());
        let mut reply = message(MessageType::Discover, [2, 0, 0, 0, 0, 1]);
        reply.set_opcode(Opcode::BootReply);
        assert!(engine.handle(&encode(&reply), NOW).is_none());
        let long_hw = message(MessageType::Discover, [7; 6]);
        let mut bytes = encode(&long_hw);
        bytes[2] = 200; // hlen beyond chaddr: dhcproto's chaddr() would panic on it
        assert!(engine.handle(&bytes, NOW).is_none());
    }

    #[test]
    fn options_dhcproto_asserts_on_are_skipped_before_decoding() {
        let mut engine = Engine::new(config());
        let valid = encode(&message(MessageType::Discover, [2, 0, 0, 0, 0, 1]));
        assert_eq!(valid[OPTIONS_OFFSET], 53);
        for (code, body) in [(94u8, &[1u8][..]), (80, &[1]), (81, &[0]), (152, &[1, 2])] {
            // Before the message type: it must not cost it.
            let mut bad = valid.clone();
            bad.splice(
                OPTIONS_OFFSET..OPTIONS_OFFSET,
                [code, body.len() as u8]
                    .into_iter()
                    .chain(body.iter().copied()),
            );
            assert!(dhcproto_asserts_on(code, body.len()), "option {code}");
            let request = decode_request(&bad).expect("decodes");
            if code == OPTION_CLIENT_FQDN {
                // Kept as sent, never decoded by dhcproto.
                assert_eq!(raw_option(&request, OptionCode::ClientFQDN), Some(body));
            } else {
                assert_eq!(request.opts().get(OptionCode::from(code)), None);
            }
            assert!(engine.handle(&bad, NOW).is_some(), "option {code}");
        }
        // Well-framed, and split in two (RFC 3396), they are fine.
        let end = valid.len() - 1;
        let mut good = valid.clone();
        good.splice(end..end, [94, 1, 1, 94, 2, 2, 0]);
        let request = decode_request(&good).expect("decodes");
        assert!(
            request
                .opts()
                .get(OptionCode::ClientNetworkInterface)
                .is_some()
        );
        assert!(engine.handle(&good, NOW).is_some());
    }

    /// A REQUEST as `dhcplib.py` builds it: BOOTP header with the broadcast flag, the
    /// magic cookie, option 53 first, then `options` and the end option.
    fn raw_request(mac: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![1, 1, 6, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0x80, 0];
        bytes.resize(28, 0); // ciaddr, yiaddr, siaddr, giaddr
        bytes.extend(mac);
        bytes.resize(236, 0); // chaddr padding, sname, file
        bytes.extend([0x63, 0x82, 0x53, 0x63, 53, 1, 3]);
        for (code, data) in options {
            bytes.extend([*code, data.len() as u8]);
            bytes.extend_from_slice(data);
        }
        bytes.push(255);
        bytes
    }

    /// An option as [`raw_request`] writes it: code and data.
    type RawOption<'a> = (u8, &'a [u8]);

    /// A DISCOVER from `mac`, then a raw REQUEST for the address offered (options 50 and
    /// 54) with `before` ahead of them and `after` behind; returns the offer and the
    /// reply to the REQUEST.
    fn request_offered(
        engine: &mut Engine,
        mac: [u8; 6],
        before: &[RawOption],
        after: &[RawOption],
    ) -> (Message, Message) {
        let (_, offer) =
            exchange(engine, &message(MessageType::Discover, mac), NOW).expect("offer");
        let requested = offer.yiaddr().octets();
        let server = SERVER.octets();
        let mut options = before.to_vec();
        options.extend([(50, &requested[..]), (54, &server[..])]);
        options.extend_from_slice(after);
        let reply = engine
            .handle(&raw_request(mac, &options), NOW)
            .expect("a reply");
        let reply = Message::decode(&mut Decoder::new(&reply.bytes)).expect("decode reply");
        (offer, reply)
    }

    /// A client identifier split over two options (RFC 3396) into more than one option
    /// can carry is not kept: the lease file could not hold it. One of 255 bytes is.
    #[test]
    fn a_client_identifier_longer_than_one_option_is_ignored() {
        for (first, second, kept) in [(200, 100, false), (200, 55, true)] {
            let mut engine = Engine::new(config());
            let mac = [0x52, 0x54, 0, 0xaa, 0, 0x61];
            let (head, tail) = (vec![7u8; first], vec![8u8; second]);
            let (_, ack) = request_offered(&mut engine, mac, &[(61, &head), (61, &tail)], &[]);
            assert_eq!(kind(&ack), MessageType::Ack);
            let leases = engine.leases(NOW);
            let expected = kept.then(|| [head.clone(), tail.clone()].concat());
            assert_eq!(leases[0].client_id, expected, "{first}+{second} bytes");
        }
    }

    /// The reviewer's t_opt81.sh: an ASCII client FQDN (flags 0, rcodes 0, then
    /// `DESKTOP-ABC`), which dhcproto fails to decode, must not hide options 50 and 54
    /// after it.
    #[test]
    fn an_undecodable_option_costs_only_itself() {
        let fqdn: &[u8] = b"\x00\x00\x00DESKTOP-ABC";
        for fqdn_first in [true, false] {
            let mut engine = Engine::new(config());
            let mac = [0x52, 0x54, 0, 0xaa, 0, 0x70];
            let fqdn_option = [(81, fqdn)];
            let (before, after): (&[RawOption], &[RawOption]) = if fqdn_first {
                (&fqdn_option, &[])
            } else {
                (&[], &fqdn_option)
            };
            let (offer, ack) = request_offered(&mut engine, mac, before, after);
            assert_eq!(
                (kind(&ack), ack.yiaddr()),
                (MessageType::Ack, offer.yiaddr()),
                "option 81 first: {fqdn_first}"
            );
            assert_eq!(ack.xid(), 0xdead_beef);
        }
    }

    /// dnsmasq names a lease from the Client FQDN before the Hostname option; ASCII and
    /// wire forms alike.
    #[test]
    fn the_client_fqdn_names_the_lease() {
        for (fqdn, expected) in [
            (
                &b"\x05\x00\x00\x03db1\x07example\x03com\x00"[..],
                Some("db1"),
            ),
            (b"\x00\xff\xffDESKTOP-ABC.corp.test", Some("DESKTOP-ABC")),
            (b"\x01\x00\x00build_01\x00", Some("build_01")),
            // Unusable: the Hostname option names it instead.
            (b"\x04\x00\x00\x3fshort", Some("fallback")),
            (b"\x00", Some("fallback")),
        ] {
            let mut engine = Engine::new(config());
            let mac = [0x52, 0x54, 0, 0xaa, 0, 0x71];
            let (_, ack) = request_offered(&mut engine, mac, &[(12, b"fallback"), (81, fqdn)], &[]);
            assert_eq!(kind(&ack), MessageType::Ack, "{fqdn:?}");
            assert_eq!(
                engine.leases(NOW)[0].hostname.as_deref(),
                expected,
                "{fqdn:?}"
            );
        }
    }

    #[test]
    fn option_runs_concatenate_split_options_and_stop_at_a_cut() {
        let runs = option_runs(&[61, 2, 1, 2, 61, 1, 3, 0, 61, 1, 4, 12, 5, b'a']);
        assert_eq!(runs, vec![(61, vec![1, 2, 3]), (61, vec![4])]);
        assert_eq!(
            option_runs(&[53, 1, 1, 255, 12, 1, b'a']),
            vec![(53, vec![1])]
        );
        assert!(option_runs(&[53]).is_empty());
        // Longer than one option can carry: decoded whole from 255-byte chunks.
        let long = vec![7u8; 300];
        let mut single = Vec::new();
        encode_single_option(61, &long, &mut single);
        assert_eq!(single.len(), 2 + 255 + 2 + 45 + 1);
        assert_eq!(
            DhcpOption::decode(&mut Decoder::new(&single)).expect("decode"),
            DhcpOption::ClientIdentifier(long)
        );
    }

    /// xorshift64*: deterministic, dependency-free randomness for the fuzz test.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
        }
    }

    /// Feeds random and mutated packets through decode + handle: nothing may panic, and
    /// the lease invariants must hold afterwards (no address leased twice, all in the
    /// subnet, every lease either reserved or in the pool).
    #[test]
    fn random_and_mutated_packets_never_panic() {
        // The log-dhcp lines are made of guest input too.
        let mut engine = Engine::new(DhcpConfig {
            log_dhcp: true,
            ..config()
        });
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut seeds: Vec<Vec<u8>> = Vec::new();
        for kind in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Release,
            MessageType::Decline,
            MessageType::Inform,
        ] {
            let mut m = request_for(
                [2, 0, 0, 0, 0, 1],
                Ipv4Addr::new(192, 168, 77, 100),
                Some(SERVER),
            );
            m.opts_mut().insert(DhcpOption::MessageType(kind));
            m.opts_mut()
                .insert(DhcpOption::ClientIdentifier(vec![1, 2, 0, 0, 0, 0, 1]));
            m.opts_mut().insert(DhcpOption::Hostname("h".into()));
            seeds.push(encode(&m));
        }
        let mut replies = 0;
        for round in 0..20_000u32 {
            let mut packet = match round % 4 {
                0 => {
                    let len = rng.below(600);
                    (0..len).map(|_| rng.next() as u8).collect()
                }
                _ => seeds[rng.below(seeds.len())].clone(),
            };
            if round % 4 != 0 {
                // Mutate: flip bytes, truncate, or splice an option-like run.
                for _ in 0..=rng.below(8) {
                    match rng.below(4) {
                        0 if !packet.is_empty() => {
                            let at = rng.below(packet.len());
                            packet[at] = rng.next() as u8;
                        }
                        1 => packet.truncate(rng.below(packet.len() + 1)),
                        2 => {
                            let at = 240.min(packet.len())
                                + rng.below(packet.len().saturating_sub(240) + 1);
                            let at = at.min(packet.len());
                            let code = [52u8, 53, 61, 12, 50, 54, 255, 0][rng.below(8)];
                            let len = rng.below(20) as u8;
                            let mut run = vec![code, len];
                            run.extend((0..rng.below(24)).map(|_| rng.next() as u8));
                            packet.splice(at..at, run);
                        }
                        _ => {
                            // Vary the MAC so many clients compete for the pool.
                            if packet.len() > 33 {
                                packet[33] = rng.next() as u8;
                            }
                        }
                    }
                }
            }
            let now = NOW + i64::from(round / 100);
            if engine.handle(&packet, now).is_some() {
                replies += 1;
            }
        }
        assert!(
            replies > 100,
            "mutated seeds should mostly stay valid: {replies} replies"
        );
        let now = NOW + 200;
        let leases = engine.leases(now);
        let mut ips: Vec<_> = leases.iter().map(|l| l.ip).collect();
        ips.dedup();
        assert_eq!(ips.len(), leases.len(), "an address is leased twice");
        let reserved = Ipv4Addr::new(192, 168, 77, 50);
        for lease in &leases {
            let last = lease.ip.octets()[3];
            assert!(
                lease.ip == reserved
                    || (lease.ip.octets()[..3] == [192, 168, 77] && (100..=199).contains(&last)),
                "lease outside pool: {lease:?}"
            );
        }
    }
}
