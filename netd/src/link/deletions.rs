//! The kernel's link deletions, followed: a VMM's tap goes when the VMM exits, and
//! nobody asks the daemon anything then, so the daemon listens for it.

use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo as NlLinkInfo};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::sys::AsyncSocket;
use socket2::SockFilter;
use tokio::sync::mpsc;

use super::{Error, Link};

/// How many deleted taps and macvtaps wait for [`Link::follow_deletions`]' reader; more
/// (a storm, or a reader that never came) are left to the next look at their ports.
const GONE_PORTS_BACKLOG: usize = 4096;

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 0x1;
/// `RTM_DELLINK`: a link notification saying a link was deleted.
const RTM_DELLINK: u16 = 17;

/// The kernel's socket filter for link notifications: keep `RTM_DELLINK`, drop the rest
/// before it is queued. The filter sees the `nlmsghdr` at offset 0, its type at 4 in host
/// byte order, which a classic BPF half-word load reads as big-endian.
pub(super) fn deletions_only() -> [SockFilter; 4] {
    use libc::{BPF_ABS, BPF_H, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET};
    let dellink_as_loaded = u16::from_be_bytes(RTM_DELLINK.to_ne_bytes());
    [
        // ldh [4]: nlmsg_type
        SockFilter::new((BPF_LD | BPF_H | BPF_ABS) as u16, 0, 0, 4),
        // jeq RTM_DELLINK, next, skip one
        SockFilter::new(
            (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            0,
            1,
            u32::from(dellink_as_loaded),
        ),
        // ret #-1: the whole message
        SockFilter::new((BPF_RET | BPF_K) as u16, 0, 0, u32::MAX),
        // ret #0: nothing
        SockFilter::new((BPF_RET | BPF_K) as u16, 0, 0, 0),
    ]
}

impl Link {
    /// Follows the kernel's link deletions from now on and deletes the IFB device of each
    /// tap, macvtap or bridge that goes: a VMM's tap goes when the VMM exits, and nobody
    /// asks the daemon anything then. The ifindex of each tap and macvtap that goes is
    /// sent on the returned channel, for the ports they were. Notifications lost to a full
    /// socket leave the IFB to [`Link::delete_orphan_ifbs`], and the port to the next look
    /// at its network's ports.
    pub fn follow_deletions(&self) -> Result<mpsc::Receiver<u32>, Error> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Connect(std::io::Error::other(e)))?;
        let (mut connection, _, mut notifications) =
            rtnetlink::new_connection().map_err(Error::Connect)?;
        let socket = connection.socket_mut().socket_mut();
        socket
            .bind(&rtnetlink::sys::SocketAddr::new(0, RTMGRP_LINK))
            .map_err(Error::Connect)?;
        // Every bridge, tap and address change sends link notifications; only deletions
        // may wake the daemon.
        socket2::SockRef::from(&*socket)
            .attach_filter(&deletions_only())
            .map_err(Error::Connect)?;
        runtime.spawn(connection);
        let link = self.clone();
        let (gone_ports, gone) = mpsc::channel(GONE_PORTS_BACKLOG);
        runtime.spawn(async move {
            while let Some((notification, _)) = notifications.next().await {
                let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(gone)) =
                    notification.payload
                else {
                    continue;
                };
                let kind = gone.attributes.iter().find_map(|attr| match attr {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                        NlLinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    }),
                    _ => None,
                });
                let port_kind = matches!(kind, Some(InfoKind::Tun | InfoKind::MacVtap));
                if port_kind {
                    // Full (nobody reads), or closed: the port goes at the next look.
                    let _ = gone_ports.try_send(gone.header.index);
                }
                // Only taps, macvtaps and bridges are shaped: no lookup for the IFBs
                // themselves.
                let shapeable = port_kind || matches!(kind, Some(InfoKind::Bridge));
                if shapeable && let Err(e) = link.delete_ifb_of(gone.header.index).await {
                    tracing::warn!(
                        index = gone.header.index,
                        "deleting the ifb device of a link that went: {e}"
                    );
                }
            }
        });
        Ok(gone)
    }
}
