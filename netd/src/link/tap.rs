//! Tap devices, created through `/dev/net/tun` ioctls (netlink cannot create them).
//!
//! A tap is created in the network namespace of the thread that calls [`Tap::create`].
//! Its fd is close-on-exec: whoever hands it to kvnet-vmm decides how it crosses over.

// The tun/tap ioctls have no safe wrapper.
#![allow(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::{Error, Op, validate_ifname};

/// Length of `struct virtio_net_hdr_v1`, the header kvnet-vmm exchanges with the tap.
pub const VIRTIO_NET_HDR_V1_LEN: libc::c_int = 12;

const TUN_DEVICE: &str = "/dev/net/tun";

/// Tap, no packet-info prefix, virtio-net header on every frame, and fail rather than attach
/// when a device with the name exists.
const TAP_FLAGS: libc::c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL;

nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);
nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, libc::c_int);

/// An open tap device: the fd carries the guest's frames.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates a tap with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte virtio-net
    /// header. `name` may be a template such as `vnet%d`; [`Tap::name`] gives the name the
    /// kernel chose. A persistent tap outlives this fd (delete it with
    /// [`Link::delete_link`](super::Link::delete_link)); otherwise it disappears when the
    /// last fd to it closes.
    ///
    /// Fails with [`Error::is_already_exists`] when any link already has the name.
    pub fn create(name: &str, persistent: bool) -> Result<Tap, Error> {
        validate_ifname(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(TUN_DEVICE)
            .map_err(Error::OpenTun)?;
        let mut request = ifreq_named(name);
        // The union member TUNSETIFF reads; TAP_FLAGS fits the kernel's 16-bit field
        // (IFF_TUN_EXCL is its top bit).
        request.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: `file` is an open /dev/net/tun fd and `request` a fully initialised ifreq
        // that outlives the call; TUNSETIFF reads it and writes the chosen name back into it.
        unsafe { tun_set_iff(file.as_raw_fd(), &mut request) }.map_err(|errno| {
            let source = match errno {
                // With IFF_TUN_EXCL, EBUSY means "a device with this name exists".
                nix::errno::Errno::EBUSY => io::Error::from_raw_os_error(libc::EEXIST),
                other => io::Error::from(other),
            };
            Error::Kernel {
                op: Op::CreateTap,
                ifname: name.to_owned(),
                source,
            }
        })?;
        let tap = Tap {
            name: name_of(&request.ifr_name),
            fd: OwnedFd::from(file),
        };
        // Until it is made persistent, dropping `tap` on an error below removes the device.
        let header_len = VIRTIO_NET_HDR_V1_LEN;
        // SAFETY: the fd is an attached tap and `header_len` a live c_int the kernel only reads.
        unsafe { tun_set_vnet_hdr_sz(tap.fd.as_raw_fd(), &header_len) }.map_err(|errno| {
            Error::Kernel {
                op: Op::CreateTap,
                ifname: tap.name.clone(),
                source: errno.into(),
            }
        })?;
        if persistent {
            tap.set_persistent(true)?;
        }
        tracing::debug!(tap = %tap.name, persistent, "created tap");
        Ok(tap)
    }

    /// Opens a queue of the macvtap `name` (ifindex `index`) through its character device,
    /// set up as [`Tap::create`] sets up a tap: frames with a 12-byte virtio-net header (a macvtap starts with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    ///
    /// The device's number comes from sysfs, which must show this network namespace (as
    /// `ip netns exec` mounts it): the device there must have the ifindex and the alias
    /// (`expected_alias`) this one has. devtmpfs names the node `/dev/tap<ifindex>`, but
    /// ifindexes repeat across namespaces and the first device keeps the name; when the
    /// node there is another device, a private node is made in `scratch_dir` for the open
    /// and removed, which needs CAP_MKNOD and a directory that allows device nodes.
    pub fn open_macvtap(
        index: u32,
        name: &str,
        expected_alias: &str,
        scratch_dir: &Path,
    ) -> Result<Tap, Error> {
        validate_ifname(name)?;
        let failed = |source: io::Error| Error::Kernel {
            op: Op::OpenMacvtap,
            ifname: name.to_owned(),
            source,
        };
        let class = Path::new("/sys/class/net").join(name);
        let shown = fs::read_to_string(class.join("ifindex"))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let alias_path = class.join("ifalias");
        let alias = fs::read_to_string(&alias_path).map_err(|e| {
            failed(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", alias_path.display()),
            ))
        });
        if shown != Some(index) || alias?.trim_end_matches('\n') != expected_alias {
            return Err(failed(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not this network namespace's device #{index}: sysfs must be mounted in the daemon's namespace",
                    class.display()
                ),
            )));
        }
        let numbers_path = class.join(format!("macvtap/tap{index}/dev"));
        let numbers = fs::read_to_string(&numbers_path).map_err(|e| {
            failed(io::Error::new(
                e.kind(),
                format!("reading {}: {e}", numbers_path.display()),
            ))
        })?;
        let device = parse_device_numbers(&numbers).ok_or_else(|| {
            failed(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds {numbers:?}", numbers_path.display()),
            ))
        })?;
        let file = match open_if_device(&Path::new("/dev").join(format!("tap{index}")), device)
            .map_err(failed)?
        {
            Some(file) => file,
            None => {
                let node = scratch_dir.join(private_node_name(index, std::process::id()));
                // One a crash of a daemon with our pid left behind.
                let _ = fs::remove_file(&node);
                mknod(&node, SFlag::S_IFCHR, Mode::S_IRUSR | Mode::S_IWUSR, device).map_err(
                    |errno| {
                        failed(io::Error::new(
                            io::Error::from(errno).kind(),
                            format!(
                            "/dev/tap{index} is another namespace's device, and making a node of our own at {} failed (it needs CAP_MKNOD): {errno}",
                            node.display()
                        ),
                        ))
                    },
                )?;
                let opened = open_if_device(&node, device);
                let _ = fs::remove_file(&node);
                // A directory mounted nodev refuses to open its device nodes (EACCES).
                opened
                    .map_err(|e| {
                        failed(io::Error::new(
                            e.kind(),
                            format!("{e} (the state directory must allow device nodes)"),
                        ))
                    })?
                    .ok_or_else(|| {
                        failed(io::Error::other(format!(
                            "device node {} does not open device {device:#x}",
                            node.display()
                        )))
                    })?
            }
        };
        let header_len = VIRTIO_NET_HDR_V1_LEN;
        // SAFETY: the fd is an open macvtap queue and `header_len` a live c_int the kernel
        // only reads.
        unsafe { tun_set_vnet_hdr_sz(file.as_raw_fd(), &header_len) }
            .map_err(|errno| failed(errno.into()))?;
        Ok(Tap {
            fd: OwnedFd::from(file),
            name: name.to_owned(),
        })
    }

    /// Makes the device outlive its fds (`true`) or vanish when the last one closes.
    pub fn set_persistent(&self, persistent: bool) -> Result<(), Error> {
        // SAFETY: the fd is an attached tap; TUNSETPERSIST takes its argument by value.
        unsafe { tun_set_persist(self.fd.as_raw_fd(), libc::c_int::from(persistent)) }
            .map(drop)
            .map_err(|errno| Error::Kernel {
                op: Op::SetPersistent(persistent),
                ifname: self.name.clone(),
                source: errno.into(),
            })
    }

    /// Lets only `uid` (and holders of CAP_NET_ADMIN) attach to the device: without an
    /// owner, anyone who can open `/dev/net/tun` can attach to a persistent tap nobody
    /// holds, and so join its bridge.
    pub fn set_owner(&self, uid: u32) -> Result<(), Error> {
        // The kernel reads the uid as an unsigned long, so it is passed as one (nix's
        // by-value ioctl wrappers pass an int).
        // SAFETY: the fd is an attached tap; TUNSETOWNER takes its argument by value and
        // touches no memory of ours.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOWNER,
                libc::c_ulong::from(uid),
            )
        };
        if rc < 0 {
            return Err(Error::Kernel {
                op: Op::SetOwner(uid),
                ifname: self.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fd, for handing to kvnet-vmm.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Tap> for File {
    fn from(tap: Tap) -> File {
        File::from(tap.fd)
    }
}

/// `major:minor` as sysfs writes a device's numbers.
fn parse_device_numbers(text: &str) -> Option<libc::dev_t> {
    let (major, minor) = text.trim().split_once(':')?;
    Some(makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Opens `path` read-write if it is the character device `device`; `None` when there is
/// no such node or it is another device, which is never opened: opening a macvtap's node
/// adds a queue to it, and frames would be steered to that queue.
fn open_if_device(path: &Path, device: libc::dev_t) -> io::Result<Option<File>> {
    let is_device = |metadata: &fs::Metadata| {
        metadata.file_type().is_char_device() && metadata.rdev() == device
    };
    match fs::metadata(path) {
        Ok(metadata) if is_device(&metadata) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // Checked again on the open file: the node may have been replaced in between.
    Ok(is_device(&file.metadata()?).then_some(file))
}

fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers and sockaddrs),
    // for which all-zero bytes are a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // validate_ifname guarantees at most IFNAMSIZ - 1 bytes, leaving the terminating NUL.
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

fn name_of(raw: &[libc::c_char; libc::IFNAMSIZ]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The name of the device node [`Tap::open_macvtap`] makes for a moment, in its scratch
/// dir, when `/dev/tap<index>` is another namespace's device.
fn private_node_name(index: u32, pid: u32) -> String {
    format!(".tap{index}.{pid}")
}

/// Whether `name` is one of [`private_node_name`]'s.
fn is_private_node_name(name: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    name.strip_prefix(".tap")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(index, pid)| digits(index) && digits(pid))
}

/// Removes the device nodes that a daemon killed inside [`Tap::open_macvtap`] left in
/// `scratch_dir` (each still opens its macvtap's queue, whoever owns that macvtap now);
/// returns what it removed. Only for the one daemon using the directory, before it opens
/// any queue.
pub fn remove_stale_private_nodes(scratch_dir: &Path) -> Vec<std::path::PathBuf> {
    let entries = match fs::read_dir(scratch_dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %scratch_dir.display(), "cannot look for stale macvtap device nodes: {e}");
            }
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let is_node = entry.file_name().to_str().is_some_and(is_private_node_name)
            && entry.file_type().is_ok_and(|kind| kind.is_char_device());
        if !is_node {
            continue;
        }
        let path = entry.path();
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a stale macvtap device node: {e}")
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{BridgeSpec, Link};
    use serde_json::Value;
    use testkit::{Need, Netns};

    nix::ioctl_read_bad!(tun_get_vnet_hdr_sz, libc::TUNGETVNETHDRSZ, libc::c_int);

    fn netns(tag: &str) -> Option<Netns> {
        if !testkit::require(&[Need::Root, Need::Netns, Need::Tun]) {
            return None;
        }
        Some(Netns::new(tag).expect("create test netns"))
    }

    fn link_json(ns: &Netns, name: &str) -> Value {
        let out = ns
            .sh(&format!("ip -j -d link show {name}"))
            .expect("ip link show");
        serde_json::from_str::<Vec<Value>>(&out).expect("json")[0].clone()
    }

    fn header_len(tap: &Tap) -> libc::c_int {
        let mut len: libc::c_int = 0;
        // SAFETY: the fd is an attached tap and `len` a live c_int the kernel writes.
        unsafe { tun_get_vnet_hdr_sz(tap.as_fd().as_raw_fd(), &mut len) }.expect("TUNGETVNETHDRSZ");
        len
    }

    #[test]
    fn private_node_names_are_recognised_and_nothing_else() {
        assert!(is_private_node_name(&private_node_name(12, 4242)));
        for other in [
            ".tap12.",
            ".tap.4242",
            ".tap12",
            "tap12.4242",
            ".tap1x.2",
            "n.json",
        ] {
            assert!(!is_private_node_name(other), "{other}");
        }
    }

    #[test]
    fn only_stale_private_device_nodes_are_removed() {
        if !testkit::require(&[Need::Root]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let null = makedev(1, 3);
        let node = dir.path().join(private_node_name(7, 999_999));
        mknod(&node, SFlag::S_IFCHR, Mode::S_IRUSR, null).unwrap();
        // Same name pattern but a plain file, and a device node under another name.
        let plain = dir.path().join(private_node_name(8, 1));
        fs::write(&plain, "").unwrap();
        let other_node = dir.path().join("null");
        mknod(&other_node, SFlag::S_IFCHR, Mode::S_IRUSR, null).unwrap();
        assert_eq!(
            remove_stale_private_nodes(dir.path()),
            std::slice::from_ref(&node)
        );
        assert!(!node.exists());
        assert!(plain.exists() && other_node.exists());
        assert!(remove_stale_private_nodes(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn name_round_trips_through_ifreq() {
        let request = ifreq_named("vnet%d");
        assert_eq!(name_of(&request.ifr_name), "vnet%d");
        let full = ifreq_named("123456789012345");
        assert_eq!(name_of(&full.ifr_name), "123456789012345");
        assert_eq!(full.ifr_name[15], 0);
    }

    #[test]
    fn persistent_tap_joins_a_bridge_and_is_deleted_over_netlink() {
        let Some(ns) = netns("tap-persist") else {
            return;
        };
        let (name, len) = ns
            .run(|| {
                let tap = Tap::create("kvtap0", true).expect("create tap");
                (tap.name().to_owned(), header_len(&tap))
            })
            .expect("run");
        assert_eq!(name, "kvtap0");
        assert_eq!(len, 12);
        // The fd is closed now; the device stays.
        let json = link_json(&ns, "kvtap0");
        assert_eq!(json["linkinfo"]["info_kind"], "tun");
        let data = &json["linkinfo"]["info_data"];
        assert_eq!(data["type"], "tap");
        assert_eq!(data["pi"], false);
        assert_eq!(data["vnet_hdr"], true);
        assert_eq!(data["persist"], true);

        let deleted = ns
            .run(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async {
                        let link = Link::new().expect("netlink");
                        let bridge = link
                            .create_bridge(&BridgeSpec {
                                name: "kvbr0".into(),
                                mac: [0x52, 0x54, 0, 0, 0, 1],
                                mtu: Some(9000),
                                stp: false,
                                forward_delay_secs: 0,
                            })
                            .await
                            .expect("bridge");
                        link.plug_port(
                            "kvtap0",
                            [0xfe, 0x54, 0, 0x12, 0x34, 0x56],
                            9000,
                            (bridge, "kvbr0"),
                            crate::link::PortState::Up,
                        )
                        .await
                        .expect("plug");
                        let json = link_json(&ns, "kvtap0");
                        assert_eq!(json["master"], "kvbr0");
                        assert_eq!(json["address"], "fe:54:00:12:34:56");
                        assert_eq!(json["mtu"], 9000);
                        assert!(
                            json["flags"]
                                .as_array()
                                .expect("flags")
                                .contains(&Value::from("UP"))
                        );
                        let first = link.delete_link("kvtap0").await.expect("delete");
                        let second = link.delete_link("kvtap0").await.expect("delete again");
                        (first, second)
                    })
            })
            .expect("run");
        assert_eq!(deleted, (true, false));
        assert!(ns.sh("ip link show kvtap0").is_err());
    }

    #[test]
    fn transient_tap_lives_as_long_as_its_fd() {
        let Some(ns) = netns("tap-transient") else {
            return;
        };
        let tap = ns
            .run(|| Tap::create("kvt%d", false))
            .expect("run")
            .expect("create");
        assert_eq!(tap.name(), "kvt0");
        assert_eq!(
            link_json(&ns, "kvt0")["linkinfo"]["info_data"]["persist"],
            false
        );
        let fd = tap.into_fd();
        assert!(ns.sh("ip link show kvt0").is_ok());
        drop(fd);
        assert!(ns.sh("ip link show kvt0").is_err(), "gone with its last fd");
    }

    #[test]
    fn taken_names_say_they_exist() {
        let Some(ns) = netns("tap-exists") else {
            return;
        };
        ns.sh("ip link add kvv0 type veth peer name kvv1")
            .expect("veth");
        let (over_tap, over_veth, bad) = ns
            .run(|| {
                let _first = Tap::create("kvtap0", false).expect("first");
                (
                    Tap::create("kvtap0", false),
                    Tap::create("kvv0", false),
                    Tap::create("a/b", false),
                )
            })
            .expect("run");
        let over_tap = over_tap.expect_err("tap name taken");
        assert!(over_tap.is_already_exists(), "{over_tap:?}");
        assert_eq!(over_tap.to_string(), "creating tap kvtap0");
        assert!(over_veth.expect_err("veth name taken").is_already_exists());
        assert!(matches!(bad, Err(Error::InvalidName(_))));
        assert_eq!(link_json(&ns, "kvv0")["linkinfo"]["info_kind"], "veth");
    }
}
