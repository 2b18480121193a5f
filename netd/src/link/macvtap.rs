//! macvtap devices: a guest NIC straight on a host interface, libvirt's "direct" ports
//! (`<forward mode='bridge'|'private'|'vepa'|'passthrough'>` with an interface pool).
//!
//! A macvtap is a netlink link on its lower device; its frames cross a character device,
//! `/dev/tap<ifindex>`, which [`super::tap::Tap::open_macvtap`] opens. Unlike a tap, the
//! link does not go when the last descriptor closes, so whoever creates one deletes it. The
//! alias [`MACVTAP_ALIAS_PREFIX`] marks the devices kvnet made, so a sweep after a crash
//! deletes no one else's.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_route::link::MacVtapMode;
use rtnetlink::{LinkMacVtap, LinkUnspec};

use super::netlink::{errno, failed};
use super::{Error, Link, LinkInfo, Op};

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
    /// Creates a macvtap, down, on `spec.lower`, named the first free `macvtapN`, and gives
    /// it kvnet's alias; returns its ifindex and name. If the alias cannot be set the device
    /// is deleted again. The kernel ignores an alias in `RTM_NEWLINK`, so it takes a second
    /// message: a crash between the two leaves a down macvtap without the alias, which
    /// kvnet does not touch.
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
        let index = self.index(&name).await?;
        let alias = format!("{MACVTAP_ALIAS_PREFIX}{}", spec.purpose);
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

    /// Takes the link with ifindex `index` (named `ifname`, for messages) down; a link that
    /// is gone is not an error.
    pub async fn set_down_at(&self, index: u32, ifname: &str) -> Result<(), Error> {
        match self
            .handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
        {
            Err(err) if errno(&err) == Some(libc::ENODEV) => Ok(()),
            result => result.map_err(failed(Op::SetDown, ifname)),
        }
    }
}

/// Whether a link is a macvtap kvnet created (by its alias).
pub fn is_kvnet_macvtap(link: &LinkInfo) -> bool {
    link.kind.as_deref() == Some("macvtap")
        && link
            .alias
            .as_deref()
            .is_some_and(|alias| alias.starts_with(MACVTAP_ALIAS_PREFIX))
}

/// kvnet's macvtaps among `links` that `keep` does not claim: those a crash left between
/// creating a port and recording it, or whose records were lost.
pub fn orphan_macvtaps(
    links: &BTreeMap<u32, LinkInfo>,
    keep: impl Fn(u32) -> bool,
) -> Vec<(u32, String)> {
    links
        .values()
        .filter(|link| is_kvnet_macvtap(link) && !keep(link.index))
        .map(|link| (link.index, link.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, kind: &str, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index,
            name: format!("dev{index}"),
            kind: Some(kind.to_owned()),
            mac: None,
            mtu: None,
            up: true,
            master: None,
            alias: alias.map(str::to_owned),
        }
    }

    #[test]
    fn only_kvnets_unclaimed_macvtaps_are_orphans() {
        let links: BTreeMap<u32, LinkInfo> = [
            link(3, "macvtap", Some("kvnet: port a of network lan")),
            link(4, "macvtap", Some("kvnet: port b of network lan")),
            link(5, "macvtap", None),
            link(6, "macvtap", Some("libvirt's")),
            link(7, "tun", Some("kvnet: port c of network lan")),
        ]
        .into_iter()
        .map(|link| (link.index, link))
        .collect();
        assert_eq!(
            orphan_macvtaps(&links, |index| index == 4),
            vec![(3, "dev3".to_owned())]
        );
    }
}
