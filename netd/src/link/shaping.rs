//! Traffic shaping for libvirt's `<bandwidth>`: tc over rtnetlink.
//!
//! A device's egress gets a root HTB qdisc with one class, `1:1`, whose rate, ceiling and
//! bucket are the limit, and which all traffic goes to. The class queues in a `bfifo`
//! holding 100 ms of traffic at the rate: HTB's default queue is as long as the device's
//! transmit queue, and a bridge has none, so every burst would be dropped rather than
//! delayed (libvirt's queue is `sfq`, which not every kernel has).
//!
//! A device's ingress cannot be queued where it arrives, so it is redirected (an ingress
//! qdisc and a match-all u32 filter with a mirred action) to an IFB device named after the
//! device's ifindex, `kvifb<index>`, whose egress is shaped the same way. libvirt polices
//! ingress with tc's `police` action instead, dropping what exceeds the rate; a delay is
//! far kinder to TCP than a loss, and `act_police` is not in every kernel either.
//!
//! netlink-packet-route has no HTB or FIFO options and rtnetlink no request for classes, so
//! the kernel's `struct tc_htb_glob`, `struct tc_htb_opt` and `struct tc_fifo_qopt`
//! (`include/uapi/linux/pkt_sched.h`) are encoded here.

use std::collections::BTreeMap;

use futures::StreamExt;
use netlink_packet_route::link::InfoKind;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec};

use super::netlink::{errno, failed};
use super::{Error, Link, LinkInfo, Op, sysctl};

/// One direction's limit, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    /// Sustained rate, bytes per second (at least 1).
    pub rate: u64,
    /// Rate the traffic may reach while the bucket has tokens, bytes per second; at
    /// least `rate`.
    pub ceil: u64,
    /// Bytes that may pass at `ceil` before the rate applies; `None` for tc's default
    /// (one 1,600-byte packet's worth).
    pub burst: Option<u64>,
    /// Bytes that may pass at once, beyond `ceil`; `None` for tc's default, one packet.
    pub ceil_burst: Option<u64>,
}

/// The limits of one device: what it sends (egress) and what it receives (ingress).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaping {
    /// Limit on what the device transmits.
    pub egress: Option<TokenBucket>,
    /// Limit on what the device receives.
    pub ingress: Option<TokenBucket>,
}

impl Shaping {
    /// Whether anything is limited.
    pub fn is_empty(&self) -> bool {
        self.egress.is_none() && self.ingress.is_none()
    }
}

/// The IFB device that shapes the ingress of the device with ifindex `index`.
pub fn ifb_name(index: u32) -> String {
    format!("{IFB_PREFIX}{index}")
}

/// The ifindex whose ingress the IFB device `name` shapes, if the name is one of ours.
pub fn ifb_owner(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(IFB_PREFIX)?;
    if digits.starts_with('0') || digits.starts_with('+') {
        return None;
    }
    digits.parse().ok()
}

const IFB_PREFIX: &str = "kvifb";
/// The start of the alias kvnet gives its IFB devices: one by the right name without it
/// is someone else's, and never deleted.
const IFB_ALIAS_PREFIX: &str = "kvnet: shapes the ingress of ";

/// Whether `link` is an IFB device kvnet made (by kind, name and alias).
fn is_ours(link: &LinkInfo) -> bool {
    link.kind.as_deref() == Some("ifb")
        && ifb_owner(&link.name).is_some()
        && link
            .alias
            .as_deref()
            .is_some_and(|alias| alias.starts_with(IFB_ALIAS_PREFIX))
}

/// `TC_H_ROOT`, `TC_H_INGRESS` and the handles used: HTB qdisc `1:`, its class `1:1`, the
/// ingress qdisc `ffff:`.
const TC_H_ROOT: u32 = 0xFFFF_FFFF;
const TC_H_INGRESS: u32 = 0xFFFF_FFF1;
const HTB_QDISC: u32 = 0x0001_0000;
const HTB_CLASS: u32 = 0x0001_0001;
const INGRESS_QDISC: u32 = 0xFFFF_0000;
const LEAF_QDISC: u32 = 0x0002_0000;
/// How long a packet may wait in the class's queue, at the rate, before it is dropped.
const QUEUE_TIME_MS: u64 = 100;
/// The shortest queue: ten full Ethernet frames.
const MIN_QUEUE_BYTES: u64 = 10 * 1_514;
/// `TCA_OPTIONS`, which for a FIFO is a bare `struct tc_fifo_qopt`, not nested attributes.
const TCA_OPTIONS: u16 = 2;
/// `ETH_P_ALL`: filters match every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// HTB's netlink attributes (`TCA_HTB_*`).
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`, and HTB's default rate-to-quantum divisor.
const HTB_VERSION: u32 = 3;
const HTB_RATE2QUANTUM: u32 = 10;
/// Quantum bounds: the kernel warns outside 1,000..=200,000 bytes; below an MTU-sized
/// packet a class needs several rounds per packet.
const MIN_QUANTUM: u64 = 1_514;
const MAX_QUANTUM: u64 = 200_000;
/// `TC_LINKLAYER_ETHERNET`: the kernel then computes packet times from the rate alone and
/// needs no rate table.
const LINKLAYER_ETHERNET: u8 = 1;
/// tc's default MTU for rate tables and bucket sizes.
const TC_DEFAULT_MTU: u64 = 1_600;
/// The kernel's scheduler tick (`PSCHED_TICKS2NS(1)`): bucket sizes cross netlink as the
/// time, in 64 ns ticks, that the bytes take at the rate.
const NS_PER_TICK: u128 = 64;

/// `struct tc_ratespec` for `rate` bytes/s (saturated: `TCA_HTB_RATE64` carries more).
fn ratespec(rate: u64) -> [u8; 12] {
    let mut spec = [0u8; 12];
    // cell_log: the smallest shift that fits tc's default MTU into a 256-entry table.
    spec[0] = 3;
    spec[1] = LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(rate).unwrap_or(u32::MAX);
    spec[8..12].copy_from_slice(&rate32.to_ne_bytes());
    spec
}

/// Ticks that `bytes` take at `rate` bytes/s, saturated to what the field holds.
fn xmit_ticks(rate: u64, bytes: u64) -> u32 {
    let ns = u128::from(bytes) * 1_000_000_000 / u128::from(rate.max(1));
    u32::try_from(ns / NS_PER_TICK).unwrap_or(u32::MAX)
}

/// `TCA_HTB_INIT` for a root qdisc sending unclassified traffic to class `1:default_class`.
fn htb_init(default_class: u32) -> Vec<u8> {
    [HTB_VERSION, HTB_RATE2QUANTUM, default_class, 0, 0]
        .iter()
        .flat_map(|field| field.to_ne_bytes())
        .collect()
}

/// `TCA_HTB_PARMS` and, for rates beyond 32 bits, `TCA_HTB_RATE64`/`TCA_HTB_CEIL64`.
fn htb_class_options(bucket: &TokenBucket) -> Vec<TcOption> {
    let rate = bucket.rate.max(1);
    let ceil = bucket.ceil.max(rate);
    // tc's defaults: a bucket of one MTU-sized packet (plus a rate/HZ share that is nil with
    // the kernel's nanosecond clock), for the rate and the ceiling alike.
    let buffer = bucket.burst.unwrap_or(TC_DEFAULT_MTU);
    let quantum = (rate / u64::from(HTB_RATE2QUANTUM)).clamp(MIN_QUANTUM, MAX_QUANTUM);
    let mut parms = Vec::with_capacity(44);
    parms.extend_from_slice(&ratespec(rate));
    parms.extend_from_slice(&ratespec(ceil));
    let ceil_buffer = bucket.ceil_burst.unwrap_or(TC_DEFAULT_MTU);
    for field in [
        xmit_ticks(rate, buffer),
        xmit_ticks(ceil, ceil_buffer),
        // Bounded by MAX_QUANTUM above.
        u32::try_from(quantum).unwrap_or(u32::MAX),
        0, // level: computed by the kernel
        0, // prio
    ] {
        parms.extend_from_slice(&field.to_ne_bytes());
    }
    let mut options = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, parms))];
    if rate > u64::from(u32::MAX) {
        options.push(raw_u64(TCA_HTB_RATE64, rate));
    }
    if ceil > u64::from(u32::MAX) {
        options.push(raw_u64(TCA_HTB_CEIL64, ceil));
    }
    options
}

/// `struct tc_fifo_qopt` of the leaf queue for `rate` bytes/s.
fn leaf_queue_limit(rate: u64) -> Vec<u8> {
    let bytes = (rate.saturating_mul(QUEUE_TIME_MS) / 1_000).max(MIN_QUEUE_BYTES);
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .to_ne_bytes()
        .to_vec()
}

fn raw_u64(kind: u16, value: u64) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value.to_ne_bytes().to_vec()))
}

/// A tc request for the object `handle` under `parent` on ifindex `index`; `kind` is left
/// out of deletions, which the kernel would refuse on any mismatch.
fn tc_message(
    index: u32,
    handle: u32,
    parent: u32,
    kind: Option<&str>,
    options: Vec<TcOption>,
) -> TcMessage {
    let mut message = TcMessage::with_index(index as i32);
    message.header.family = AddressFamily::Unspec;
    message.header.handle = TcHandle::from(handle);
    message.header.parent = TcHandle::from(parent);
    if let Some(kind) = kind {
        message.attributes.push(TcAttribute::Kind(kind.to_owned()));
    }
    if !options.is_empty() {
        message.attributes.push(TcAttribute::Options(options));
    }
    message
}

impl Link {
    /// Limits what the device with ifindex `index` (named `ifname`, for messages) sends
    /// and receives, replacing any limits it had. On an error nothing is left of the new
    /// limits (nor of the old ones).
    pub async fn shape(&self, index: u32, ifname: &str, shaping: &Shaping) -> Result<(), Error> {
        self.unshape(index, ifname).await?;
        let result = async {
            if let Some(bucket) = &shaping.egress {
                self.shape_egress(index, ifname, bucket).await?;
            }
            if let Some(bucket) = &shaping.ingress {
                self.shape_ingress(index, ifname, bucket).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err()
            && let Err(e) = self.unshape(index, ifname).await
        {
            tracing::warn!(%ifname, "removing half-made limits: {e}");
        }
        result
    }

    /// Removes the limits of the device with ifindex `index` (named `ifname`): its root
    /// and ingress qdiscs and its IFB device. A device without limits, or gone, is fine.
    pub async fn unshape(&self, index: u32, ifname: &str) -> Result<(), Error> {
        for (handle, parent, what) in [
            (HTB_QDISC, TC_H_ROOT, "root"),
            (INGRESS_QDISC, TC_H_INGRESS, "ingress"),
        ] {
            let message = tc_message(index, handle, parent, None, Vec::new());
            let request = RouteNetlinkMessage::DelQueueDiscipline(message);
            match self.acked(request, NLM_F_REQUEST | NLM_F_ACK).await {
                // Nothing to delete: the kernel answers EINVAL for the device's built-in
                // root qdisc and for an ingress qdisc it does not have, ENOENT or ENODEV
                // when the qdisc or the device is gone.
                Err(err)
                    if matches!(
                        errno(&err),
                        Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)
                    ) => {}
                result => result.map_err(failed(Op::DeleteQdisc(what), ifname))?,
            }
        }
        self.delete_ifb_of(index).await
    }

    /// Deletes the IFB device that shaped the ingress of the (perhaps deleted) device with
    /// ifindex `index`, if there is one: deleting a device takes its qdiscs, not its IFB.
    pub async fn delete_ifb_of(&self, index: u32) -> Result<(), Error> {
        let ifb = ifb_name(index);
        match self.link_info(&ifb).await? {
            Some(link) if is_ours(&link) => self.delete_index(link.index, &ifb).await.map(drop),
            _ => Ok(()),
        }
    }

    /// Deletes the IFB devices of ours whose device is gone from `links` (a dump of every
    /// link): a tap its VMM closed, a crash between deleting a device and its IFB. One by
    /// our name that is down and has no alias is ours too: a crash came between creating it
    /// and bringing it up with its alias. Returns their names.
    pub async fn delete_orphan_ifbs(
        &self,
        links: &BTreeMap<u32, LinkInfo>,
    ) -> Result<Vec<String>, Error> {
        let mut deleted = Vec::new();
        for (index, link) in links {
            let half_made = link.kind.as_deref() == Some("ifb") && !link.up && link.alias.is_none();
            if (is_ours(link) || half_made)
                && let Some(owner) = ifb_owner(&link.name)
                && !links.contains_key(&owner)
                && self.delete_index(*index, &link.name).await?
            {
                deleted.push(link.name.clone());
            }
        }
        Ok(deleted)
    }

    async fn shape_egress(
        &self,
        index: u32,
        ifname: &str,
        bucket: &TokenBucket,
    ) -> Result<(), Error> {
        let init = TcOption::Other(DefaultNla::new(TCA_HTB_INIT, htb_init(1)));
        let qdisc = tc_message(index, HTB_QDISC, TC_H_ROOT, Some("htb"), vec![init]);
        self.create(RouteNetlinkMessage::NewQueueDiscipline(qdisc))
            .await
            .map_err(failed(Op::AddQdisc("root htb"), ifname))?;
        let class = tc_message(
            index,
            HTB_CLASS,
            HTB_QDISC,
            Some("htb"),
            htb_class_options(bucket),
        );
        self.create(RouteNetlinkMessage::NewTrafficClass(class))
            .await
            .map_err(failed(Op::AddHtbClass(bucket.rate), ifname))?;
        let mut leaf = tc_message(index, LEAF_QDISC, HTB_CLASS, Some("bfifo"), Vec::new());
        let limit = DefaultNla::new(TCA_OPTIONS, leaf_queue_limit(bucket.rate));
        leaf.attributes.push(TcAttribute::Other(limit));
        self.create(RouteNetlinkMessage::NewQueueDiscipline(leaf))
            .await
            .map_err(failed(Op::AddQdisc("bfifo"), ifname))
    }

    /// Redirects the device's ingress to its IFB device, created here and shaped on egress.
    /// [`Link::shape`] has deleted an IFB left by an earlier device with the same index;
    /// a device of another kind by that name is not ours, and the creation fails on it.
    async fn shape_ingress(
        &self,
        index: u32,
        ifname: &str,
        bucket: &TokenBucket,
    ) -> Result<(), Error> {
        let ifb = ifb_name(index);
        // An IFB of that name without kvnet's alias is not ours: creation fails on it.
        let message = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(ifb.clone())
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(failed(Op::CreateIfb(ifname.to_owned()), &ifb))?;
        let ifb_index = self.index(&ifb).await?;
        // The kernel ignores an alias given at creation; it goes with bringing it up.
        // Until it has the alias, nothing else would know the IFB for ours.
        let marked = async {
            // The IFB only carries redirected frames: no addresses, DAD or MLD of its own.
            sysctl::disable_port_ipv6(&ifb)?;
            self.handle
                .link()
                .set(
                    LinkUnspec::new_with_index(ifb_index)
                        .alias(format!("{IFB_ALIAS_PREFIX}{ifname}"))
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(failed(Op::SetUp, &ifb))
        }
        .await;
        if let Err(e) = marked {
            if let Err(cleanup) = self.delete_index(ifb_index, &ifb).await {
                tracing::warn!(%ifb, "deleting an ifb device that could not be set up: {cleanup}");
            }
            return Err(e);
        }
        self.shape_egress(ifb_index, &ifb, bucket).await?;

        let qdisc = tc_message(
            index,
            INGRESS_QDISC,
            TC_H_INGRESS,
            Some("ingress"),
            Vec::new(),
        );
        self.create(RouteNetlinkMessage::NewQueueDiscipline(qdisc))
            .await
            .map_err(failed(Op::AddQdisc("ingress"), ifname))?;
        let redirect = self
            .handle
            .traffic_filter(index as i32)
            .add()
            .parent(INGRESS_QDISC)
            .priority(1)
            .protocol(ETH_P_ALL.to_be())
            .redirect(ifb_index)
            .map_err(failed(Op::RedirectIngress(ifb.clone()), ifname))?;
        redirect
            .execute()
            .await
            .map_err(failed(Op::RedirectIngress(ifb), ifname))
    }

    /// Sends a request that creates an object, refusing to replace one.
    async fn create(&self, message: RouteNetlinkMessage) -> Result<(), rtnetlink::Error> {
        self.acked(
            message,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    }

    async fn acked(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), rtnetlink::Error> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut responses = self.handle.clone().request(request)?;
        while let Some(response) = responses.next().await {
            if let NetlinkPayload::Error(err) = response.payload {
                return Err(rtnetlink::Error::NetlinkError(err));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::Nla;

    use super::*;

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn ifb_names_round_trip_and_refuse_look_alikes() {
        assert_eq!(ifb_name(42), "kvifb42");
        assert_eq!(ifb_owner("kvifb42"), Some(42));
        assert_eq!(ifb_owner(&ifb_name(u32::MAX)), Some(u32::MAX));
        for other in [
            "kvifb",
            "kvifb042",
            "kvifb+4",
            "kvifbx",
            "ifb0",
            "kvifb99999999999",
        ] {
            assert_eq!(ifb_owner(other), None, "{other}");
        }
        assert!(ifb_name(u32::MAX).len() <= 15);
    }

    #[test]
    fn bucket_sizes_are_times_in_scheduler_ticks() {
        // 1,000,000 bytes/s: 1,600 bytes take 1.6 ms = 25,000 ticks of 64 ns.
        assert_eq!(xmit_ticks(1_000_000, 1_600), 25_000);
        assert_eq!(xmit_ticks(1, u64::MAX), u32::MAX);
        // A zero rate is read as 1 byte/s rather than dividing by zero: 64 s.
        assert_eq!(xmit_ticks(0, 64), 1_000_000_000);
    }

    #[test]
    fn htb_init_is_tc_htb_glob() {
        let init = htb_init(1);
        assert_eq!(init.len(), 20);
        assert_eq!(u32_at(&init, 0), 3);
        assert_eq!(u32_at(&init, 4), 10);
        assert_eq!(u32_at(&init, 8), 1);
    }

    #[test]
    fn htb_class_parameters_are_tc_htb_opt() {
        let bucket = TokenBucket {
            rate: 1_000_000,
            ceil: 2_000_000,
            burst: Some(256 * 1024),
            ceil_burst: None,
        };
        let options = htb_class_options(&bucket);
        assert_eq!(options.len(), 1, "no 64-bit rates below 4 GB/s");
        let TcOption::Other(nla) = &options[0] else {
            panic!("{options:?}")
        };
        assert_eq!(nla.kind(), TCA_HTB_PARMS);
        let mut parms = vec![0; nla.value_len()];
        nla.emit_value(&mut parms);
        assert_eq!(parms.len(), 44);
        assert_eq!(parms[1], LINKLAYER_ETHERNET);
        assert_eq!(u32_at(&parms, 8), 1_000_000);
        assert_eq!(u32_at(&parms, 20), 2_000_000);
        assert_eq!(u32_at(&parms, 24), xmit_ticks(1_000_000, 256 * 1024));
        assert_eq!(u32_at(&parms, 28), xmit_ticks(2_000_000, 1_600));
        assert_eq!(u32_at(&parms, 32), 100_000, "quantum: rate / r2q");

        // A bucket at the ceiling of its own.
        let options = htb_class_options(&TokenBucket {
            ceil_burst: Some(64 * 1024),
            ..bucket
        });
        let TcOption::Other(nla) = &options[0] else {
            panic!("{options:?}")
        };
        let mut parms = vec![0; nla.value_len()];
        nla.emit_value(&mut parms);
        assert_eq!(u32_at(&parms, 28), xmit_ticks(2_000_000, 64 * 1024));
    }

    #[test]
    fn rates_beyond_32_bits_travel_as_64_bit_attributes() {
        let bucket = TokenBucket {
            rate: 5_000_000_000,
            ceil: 1,
            burst: None,
            ceil_burst: None,
        };
        let options = htb_class_options(&bucket);
        let kinds: Vec<u16> = options
            .iter()
            .map(|option| match option {
                TcOption::Other(nla) => nla.kind(),
                other => panic!("{other:?}"),
            })
            .collect();
        // The ceiling is raised to the rate.
        assert_eq!(kinds, [TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_CEIL64]);
    }

    #[test]
    fn the_leaf_queue_holds_a_tenth_of_a_second_and_at_least_ten_frames() {
        let limit = |rate| u32::from_ne_bytes(leaf_queue_limit(rate).try_into().unwrap());
        assert_eq!(limit(1_000_000), 100_000);
        assert_eq!(limit(1_000), 15_140);
        assert_eq!(limit(u64::MAX), u32::MAX);
    }

    #[test]
    fn quantum_stays_within_what_the_kernel_accepts_quietly() {
        for (rate, quantum) in [(1_000, MIN_QUANTUM), (u64::MAX, MAX_QUANTUM)] {
            let options = htb_class_options(&TokenBucket {
                rate,
                ceil: rate,
                burst: None,
                ceil_burst: None,
            });
            let TcOption::Other(nla) = &options[0] else {
                panic!()
            };
            let mut parms = vec![0; nla.value_len()];
            nla.emit_value(&mut parms);
            assert_eq!(u64::from(u32_at(&parms, 32)), quantum);
        }
    }
}
