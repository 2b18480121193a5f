//! macvtap devices: a guest NIC straight on a host interface, libvirt's "direct" ports
//! (`<forward mode='bridge'|'private'|'vepa'|'passthrough'>` with an interface pool).
//!
//! A macvtap is a netlink link on its lower device; its frames cross a character device,
//! `/dev/tap<ifindex>`, which [`super::tap::Tap::open_macvtap`] opens. Unlike a tap, the
//! link does not go when the last descriptor closes, so whoever creates one deletes it.
//! The link group [`KVNET_LINK_GROUP`], set in the message that creates the device, and
//! the alias [`MACVTAP_ALIAS_PREFIX`] set right after, mark the devices kvnet made, so a
//! sweep after a crash deletes no one else's.

use std::io;

use netlink_packet_route::link::MacVtapMode;
use rtnetlink::{LinkMacVtap, LinkUnspec};

use super::netlink::{errno, failed};
use super::{Error, KVNET_LINK_GROUP, Link, LinkInfo, Op};

/// The name template of kvnet's macvtap devices, as libvirt's.
const NAME_PREFIX: &str = "macvtap";

/// How many taken names a creation steps over before it gives up (another program creating
/// macvtaps at the same moment).
const NAME_ATTEMPTS: usize = 32;

/// The start of the alias of every macvtap kvnet creates.
pub const MACVTAP_ALIAS_PREFIX: &str = "kvnet: port ";

/// How a macvtap passes frames between its guest and the others on the lower device
/// (libvirt's forward modes of the same names; `passthrough` is the kernel's `passthru`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacvtapMode {
    /// Guests on the same lower device reach each other inside the host.
    Bridge,
    /// Guests never reach each other, even through an external switch.
    Private,
    /// Every frame goes out to the external switch, which may reflect it (802.1Qbg).
    Vepa,
    /// The guest has the lower device to itself, which is put in promiscuous mode.
    Passthrough,
}

impl MacvtapMode {
    fn netlink(self) -> MacVtapMode {
        match self {
            MacvtapMode::Bridge => MacVtapMode::Bridge,
            MacvtapMode::Private => MacVtapMode::Private,
            MacvtapMode::Vepa => MacVtapMode::Vepa,
            MacvtapMode::Passthrough => MacVtapMode::Passthrough,
        }
    }
}

/// A macvtap to create.
#[derive(Clone, Copy, Debug)]
pub struct MacvtapSpec<'a> {
    /// The host interface it sits on.
    pub lower: &'a str,
    /// The guest's MAC: the lower device delivers the frames addressed to it (in
    /// passthrough mode the kernel gives the macvtap the lower device's own instead).
    pub mac: [u8; 6],
    /// How it shares the lower device.
    pub mode: MacvtapMode,
    /// What the device is for, after [`MACVTAP_ALIAS_PREFIX`].
    pub purpose: &'a str,
}

impl Link {
    /// Creates a macvtap, down and in kvnet's link group, on `spec.lower`, named the first
    /// free `macvtapN`, and gives it kvnet's alias; returns its ifindex and name. If the
    /// alias cannot be set the device is deleted again. The kernel ignores an alias in
    /// `RTM_NEWLINK`, so it takes a second message: a crash between the two leaves a down
    /// macvtap in kvnet's group without the alias (see [`is_kvnet_macvtap`]).
    pub async fn create_macvtap(&self, spec: &MacvtapSpec<'_>) -> Result<(u32, String), Error> {
        let lower_index = self.index(spec.lower).await?;
        let names = self.link_names().await?;
        let candidates = (0u32..)
            .map(|n| format!("{NAME_PREFIX}{n}"))
            .filter(|name| !names.contains(name))
            .take(NAME_ATTEMPTS);
        let creating = || Op::CreateMacvtap {
            lower: spec.lower.to_owned(),
        };
        let mut created = None;
        for name in candidates {
            let message = LinkMacVtap::new(&name, lower_index, spec.mode.netlink())
                .address(spec.mac.to_vec())
                .link_group(KVNET_LINK_GROUP)
                .build();
            match self.handle.link().add(message).execute().await {
                Ok(()) => {
                    created = Some(name);
                    break;
                }
                // Taken since the dump: the next free name.
                Err(err) if errno(&err) == Some(libc::EEXIST) => {}
                Err(err) => return Err(failed(creating(), &name)(err)),
            }
        }
        let Some(name) = created else {
            return Err(Error::Kernel {
                op: creating(),
                ifname: format!("{NAME_PREFIX}%d"),
                source: io::Error::from_raw_os_error(libc::EEXIST),
            });
        };
        let index = match self.index(&name).await {
            Ok(index) => index,
            Err(e) => {
                // Only if it is the one just made (the name may have gone to another).
                match self.link_info(&name).await {
                    Ok(Some(link)) if is_kvnet_macvtap(&link) && link.alias.is_none() => {
                        if let Err(cleanup) = self.delete_index(link.index, &name).await {
                            tracing::warn!(macvtap = %name, "deleting a macvtap whose index was not found: {cleanup}");
                        }
                    }
                    _ => {}
                }
                return Err(e);
            }
        };
        let alias = alias(spec.purpose);
        let labelled = self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).alias(alias).build())
            .execute()
            .await
            .map_err(failed(Op::SetAlias, &name));
        if let Err(e) = labelled {
            if let Err(cleanup) = self.delete_index(index, &name).await {
                tracing::warn!(macvtap = %name, "deleting a macvtap that could not be labelled: {cleanup}");
            }
            return Err(e);
        }
        tracing::debug!(macvtap = %name, lower = %spec.lower, mode = ?spec.mode, "created macvtap");
        Ok((index, name))
    }

    /// Brings a macvtap up with the guest's MAC, receiving every multicast group.
    ///
    /// In passthrough mode the kernel gives a new macvtap its lower device's MAC, and
    /// setting the guest's here sets the lower device's, as libvirt does (an SR-IOV VF
    /// that may not go promiscuous then still takes the guest's unicast); the kernel puts
    /// the lower device's own MAC back when the macvtap is deleted. In the other modes the
    /// MAC is the one it was created with.
    ///
    /// macvlan hands a device only the multicast groups it joined itself, and the host's
    /// side of a guest's macvtap joins none (it has no IPv6), so the guest's router
    /// advertisements and neighbour solicitations would never reach it. (libvirt's
    /// macvtaps get the groups of the host's IPv6 link-local address, which happens to be
    /// the guest's.)
    ///
    /// All-multicast is set while the macvtap is down, in a message of its own: set on a
    /// running passthrough macvtap, the kernel passes it to the lower device, and never
    /// takes it back when the macvtap stops, so each guest would leave the host's NIC
    /// one more all-multicast count for good. In one message with `up`, the kernel opens
    /// the device first.
    pub async fn bring_up_macvtap(
        &self,
        index: u32,
        ifname: &str,
        mac: [u8; 6],
    ) -> Result<(), Error> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).allmulticast(true).build())
            .execute()
            .await
            .map_err(failed(Op::SetAllMulticast, ifname))?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(failed(Op::UpWithGuestMac(mac), ifname))
    }
}

/// The alias of kvnet's macvtap made for `purpose`.
pub fn alias(purpose: &str) -> String {
    format!("{MACVTAP_ALIAS_PREFIX}{purpose}")
}

/// Whether a link is a macvtap kvnet created.
pub fn is_kvnet_macvtap(link: &LinkInfo) -> bool {
    link.kind.as_deref() == Some("macvtap") && link.group == KVNET_LINK_GROUP
}

/// What a macvtap of kvnet's is for: its alias after [`MACVTAP_ALIAS_PREFIX`].
pub fn purpose_of(link: &LinkInfo) -> Option<&str> {
    if !is_kvnet_macvtap(link) {
        return None;
    }
    link.alias.as_deref()?.strip_prefix(MACVTAP_ALIAS_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: &str, group: u32, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 3,
            name: "macvtap0".into(),
            kind: Some(kind.to_owned()),
            mac: None,
            mtu: None,
            up: true,
            master: None,
            alias: alias.map(str::to_owned),
            group,
            port: None,
        }
    }

    #[test]
    fn kvnets_macvtaps_are_known_by_their_group_and_purpose_by_their_alias() {
        let ours = link(
            "macvtap",
            KVNET_LINK_GROUP,
            Some("kvnet: port a of network lan"),
        );
        assert!(is_kvnet_macvtap(&ours));
        assert_eq!(purpose_of(&ours), Some("a of network lan"));
        let half_made = link("macvtap", KVNET_LINK_GROUP, None);
        assert!(is_kvnet_macvtap(&half_made));
        assert_eq!(purpose_of(&half_made), None);
        // Another's macvtap, even with kvnet's alias; and no other kind.
        for other in [
            link("macvtap", 0, Some("kvnet: port a of network lan")),
            link(
                "tun",
                KVNET_LINK_GROUP,
                Some("kvnet: port a of network lan"),
            ),
        ] {
            assert!(!is_kvnet_macvtap(&other));
            assert_eq!(purpose_of(&other), None);
        }
    }
}
