//! A tap device: the host end of a virtio-net NIC.
//!
//! The VMM normally receives an already configured tap as a file descriptor
//! ([`Tap::from_fd`]); as root it can also attach to a tap by name, creating it if
//! there is none ([`Tap::open_named`]). Frames carry the 12-byte `virtio_net_hdr_v1` in front, so
//! guest headers pass to the kernel unchanged. This is the only file of the device
//! that talks to the kernel through raw ioctls and `readv`/`writev`.

// The tun/tap ioctls and readv/writev into guest memory have no safe wrapper.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use vm_memory::VolatileSlice;

/// `TUNSETIFF`: attach the fd to a tun/tap interface.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNGETIFF`: name and flags of the attached interface.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// `TUNSETOFFLOAD`: which offloads the tap may hand to userspace.
pub(crate) const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETVNETHDRSZ`: size of the virtio-net header in front of each frame.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `TUNGETVNETHDRSZ`.
const TUNGETVNETHDRSZ: libc::c_ulong = 0x8004_54d7;

const IFF_TUN: libc::c_short = 0x0001;
const IFF_TAP: libc::c_short = 0x0002;
/// `TUNGETIFF` reports it for a tap that outlives its descriptors (`TUNSETPERSIST`).
const IFF_PERSIST: libc::c_short = 0x0800;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// `TUN_F_CSUM`: the tap may deliver frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the tap may deliver TCPv4 GSO frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the tap may deliver TCPv6 GSO frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: TSO frames may carry ECN (CWR).
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Interface names are at most `IFNAMSIZ - 1` bytes.
const IFNAMSIZ: usize = 16;
/// `struct ifreq` is 40 bytes on 64-bit Linux: the name, then a union whose
/// first member we use is `short ifr_flags`.
const IFREQ_LEN: usize = 40;

/// The descriptors above stderr that `--net tap-fd=N` named and that were open when the
/// process started, not yet taken by a NIC; `None` until [`record_inherited_fds`] runs.
static INHERITED: Mutex<Option<BTreeSet<RawFd>>> = Mutex::new(None);

/// Records which of `named` (the `--net tap-fd=N` numbers) are open, the only ones
/// [`Tap::from_inherited_fd`] may take: inherited, so nothing in the process owns them.
/// Only `main` calls it, first, before anything opens a descriptor of its own; a program
/// embedding the VMM hands its taps over as [`OwnedFd`]s ([`Tap::from_fd`]).
pub(crate) fn record_inherited_fds(named: impl IntoIterator<Item = RawFd>) {
    let open = named
        .into_iter()
        .filter(|&fd| fd > libc::STDERR_FILENO && fd_is_open(fd))
        .collect();
    *INHERITED.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
}

/// Whether `fd` is an open descriptor of this process.
fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table; an unused number fails with
    // EBADF.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Errors from opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// The interface name is empty, too long or contains NUL.
    #[error("invalid tap name {0:?}: must be 1 to 15 bytes without NUL")]
    InvalidName(String),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to tap {name}")]
    Attach {
        /// The interface name.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// `TUNGETIFF` failed: the fd is not an attached tun/tap.
    #[error("fd {fd} is not an attached tun/tap device")]
    NotTun {
        /// The descriptor number.
        fd: RawFd,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// The fd is a tun/tap but lacks flags the device needs.
    #[error("tap {name} (fd {fd}) has flags {flags:#x}; need IFF_TAP|IFF_NO_PI|IFF_VNET_HDR")]
    WrongMode {
        /// The descriptor number.
        fd: RawFd,
        /// The interface name.
        name: String,
        /// The flags `TUNGETIFF` reported.
        flags: u16,
    },
    /// `tap-fd` named stdin, stdout or stderr.
    #[error("fd {0} is a standard stream, not an inherited tap")]
    StdioFd(RawFd),
    /// `tap-fd` named a descriptor that is not open.
    #[error("fd {fd} is not open")]
    NotOpen {
        /// The descriptor number.
        fd: RawFd,
        /// The fcntl error.
        #[source]
        source: io::Error,
    },
    /// `tap-fd` named a descriptor that was not open when the process started, or one
    /// another NIC took already.
    #[error("fd {0} was not inherited, or another NIC took it already")]
    NotInherited(RawFd),
    /// The program never called [`record_inherited_fds`], so no descriptor can be taken.
    #[error("cannot take fd {0}: the descriptors inherited at start were not recorded")]
    InheritedNotRecorded(RawFd),
    /// An ioctl on an attached tap failed.
    #[error("{op} on tap {name} failed")]
    Ioctl {
        /// The operation, e.g. `TUNSETOFFLOAD`.
        op: &'static str,
        /// The interface name.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
}

/// An open tap in `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR` mode, non-blocking.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    /// The flags `TUNGETIFF` reported when it was opened.
    flags: u16,
}

impl Tap {
    /// Wraps an fd that is already attached to a tap (as handed over by `kvnetd`
    /// or libvirt): checks it with `TUNGETIFF`, records the interface name and
    /// sets `O_NONBLOCK`.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, TapError> {
        let raw = fd.as_raw_fd();
        let (name, flags) = tun_iff(fd.as_fd())?;
        let needed = (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as u16;
        if flags & needed != needed || flags & IFF_TUN as u16 != 0 {
            return Err(TapError::WrongMode {
                fd: raw,
                name,
                flags,
            });
        }
        set_nonblocking(fd.as_fd()).map_err(|source| TapError::Ioctl {
            op: "fcntl(O_NONBLOCK)",
            name: name.clone(),
            source,
        })?;
        Ok(Tap { fd, name, flags })
    }

    /// Takes ownership of descriptor `raw`, inherited from the parent process for this
    /// NIC (`--net tap-fd=N`), after checking that it is attached to a tap.
    ///
    /// Only a descriptor [`record_inherited_fds`] found open when the process started
    /// can be taken, and only once: those are the launcher's to hand over, and nothing
    /// in this process owns one until it is taken here. Standard streams are refused;
    /// outside the `kvnet-vmm` binary, nothing can be taken.
    pub fn from_inherited_fd(raw: RawFd) -> Result<Tap, TapError> {
        if raw <= libc::STDERR_FILENO {
            return Err(TapError::StdioFd(raw));
        }
        let mut unclaimed = INHERITED.lock().unwrap_or_else(|p| p.into_inner());
        let Some(unclaimed) = unclaimed.as_mut() else {
            return Err(TapError::InheritedNotRecorded(raw));
        };
        if !fd_is_open(raw) {
            return Err(TapError::NotOpen {
                fd: raw,
                source: io::Error::last_os_error(),
            });
        }
        if !unclaimed.contains(&raw) {
            return Err(TapError::NotInherited(raw));
        }
        // SAFETY: `raw` is open (checked above) and only borrowed for the ioctl.
        tun_iff(unsafe { BorrowedFd::borrow_raw(raw) })?;
        // SAFETY: `raw` is open and attached to a tun/tap. It was open when the process
        // started and is still unclaimed, so nothing in this process owns it (taking
        // another's descriptor would need unsafe code of its own), and removing it from
        // INHERITED makes this the only OwnedFd ever made for it.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        unclaimed.remove(&raw);
        // Inherited to be this NIC's, not to be passed on (the console log's process).
        nix::fcntl::fcntl(
            &owned,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| TapError::NotOpen {
            fd: raw,
            source: e.into(),
        })?;
        Tap::from_fd(owned)
    }

    /// Attaches to the tap `name` (creating a transient one if it does not exist;
    /// needs `CAP_NET_ADMIN` or ownership of a persistent tap).
    pub fn open_named(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
            return Err(TapError::InvalidName(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = [0u8; IFREQ_LEN];
        req[..name.len()].copy_from_slice(name.as_bytes());
        req[IFNAMSIZ..IFNAMSIZ + 2]
            .copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and may write back a `struct ifreq`; `req` is 40
        // bytes, NUL-terminated within IFNAMSIZ, and lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
        if rc < 0 {
            return Err(TapError::Attach {
                name: name.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        Tap::from_fd(OwnedFd::from(file))
    }

    /// The interface name, as `TUNGETIFF` reported it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tap outlives its descriptors. One [`Tap::open_named`] attached to was
    /// there before (a transient tap cannot take a second descriptor); one it created
    /// is not.
    pub fn is_persistent(&self) -> bool {
        self.flags & IFF_PERSIST as u16 != 0
    }

    /// The tap's own MAC address (`SIOCGIFHWADDR` on its descriptor, which answers in
    /// whatever network namespace the tap is).
    pub fn mac(&self) -> Result<[u8; 6], TapError> {
        let mut req = [0u8; IFREQ_LEN];
        // SAFETY: SIOCGIFHWADDR on a tun/tap descriptor reads and writes one `struct
        // ifreq` (40 bytes), which `req` is; it lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFHWADDR, req.as_mut_ptr()) };
        self.check(rc, "SIOCGIFHWADDR")?;
        // ifr_hwaddr is a sockaddr: the family, then the address.
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&req[IFNAMSIZ + 2..IFNAMSIZ + 8]);
        Ok(mac)
    }

    /// The tap's MTU, as the network namespace of this thread knows its name.
    pub fn mtu(&self) -> Result<u32, TapError> {
        let mut req = self.ifreq()?;
        self.interface_ioctl(libc::SIOCGIFMTU, "SIOCGIFMTU", &mut req)?;
        let mtu = libc::c_int::from_ne_bytes([
            req[IFNAMSIZ],
            req[IFNAMSIZ + 1],
            req[IFNAMSIZ + 2],
            req[IFNAMSIZ + 3],
        ]);
        // The kernel keeps MTUs unsigned; a negative one cannot come back.
        Ok(u32::try_from(mtu).unwrap_or(0))
    }

    /// Sets the tap's MTU (needs `CAP_NET_ADMIN`).
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        let mut req = self.ifreq()?;
        req[IFNAMSIZ..IFNAMSIZ + 4].copy_from_slice(&libc::c_int::from(mtu).to_ne_bytes());
        self.interface_ioctl(libc::SIOCSIFMTU, "SIOCSIFMTU", &mut req)
    }

    /// A `struct ifreq` naming this tap.
    fn ifreq(&self) -> Result<[u8; IFREQ_LEN], TapError> {
        let mut req = [0u8; IFREQ_LEN];
        let name = self.name.as_bytes();
        if name.len() >= IFNAMSIZ {
            return Err(TapError::InvalidName(self.name.clone()));
        }
        req[..name.len()].copy_from_slice(name);
        Ok(req)
    }

    /// An interface ioctl (`SIOC[GS]IF*`) on `req`, through a socket: the tap's
    /// descriptor does not take them.
    fn interface_ioctl(
        &self,
        request: libc::c_ulong,
        op: &'static str,
        req: &mut [u8; IFREQ_LEN],
    ) -> Result<(), TapError> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
        let socket = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|errno| TapError::Ioctl {
            op: "socket(AF_INET)",
            name: self.name.clone(),
            source: errno.into(),
        })?;
        // SAFETY: interface ioctls read and write at most a `struct ifreq` (40 bytes),
        // which `req` is, NUL-terminated within IFNAMSIZ; it lives across the call.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), request, req.as_mut_ptr()) };
        self.check(rc, op)
    }

    /// Sets the virtio-net header size the kernel puts in front of each frame
    /// (12 for `virtio_net_hdr_v1`).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<(), TapError> {
        let mut size = size;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points
        // at a live local.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETVNETHDRSZ, &mut size as *mut i32) };
        self.check(rc, "TUNSETVNETHDRSZ")
    }

    /// The virtio-net header size currently set on the tap.
    pub fn vnet_hdr_size(&self) -> Result<i32, TapError> {
        let mut size: i32 = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer, which points
        // at a live local.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNGETVNETHDRSZ, &mut size as *mut i32) };
        self.check(rc, "TUNGETVNETHDRSZ").map(|()| size)
    }

    /// Sets which offloads (`TUN_F_*`) the tap may use for frames it delivers to us.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        self.check(rc, "TUNSETOFFLOAD")
    }

    /// Reads one frame (vnet header first) into `bufs`; `WouldBlock` when none is queued.
    pub fn readv(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        readv_fd(self.fd.as_fd(), bufs)
    }

    /// Writes one frame (vnet header first) gathered from `bufs`.
    pub fn writev(&self, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
        writev_fd(self.fd.as_fd(), bufs)
    }

    fn check(&self, rc: libc::c_int, op: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            Err(TapError::Ioctl {
                op,
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Name and flags of the tun/tap `fd` is attached to (`TUNGETIFF`).
fn tun_iff(fd: BorrowedFd<'_>) -> Result<(String, u16), TapError> {
    let mut req = [0u8; IFREQ_LEN];
    // SAFETY: TUNGETIFF writes at most a `struct ifreq` (40 bytes) into `req`,
    // which is that large and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF, req.as_mut_ptr()) };
    if rc < 0 {
        return Err(TapError::NotTun {
            fd: fd.as_raw_fd(),
            source: io::Error::last_os_error(),
        });
    }
    let flags = u16::from_ne_bytes([req[IFNAMSIZ], req[IFNAMSIZ + 1]]);
    Ok((ifreq_name(&req), flags))
}

fn ifreq_name(req: &[u8; IFREQ_LEN]) -> String {
    let name = &req[..IFNAMSIZ];
    let len = name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    String::from_utf8_lossy(&name[..len]).into_owned()
}

/// Sets `O_NONBLOCK` on `fd`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL only reads the flags of a valid, borrowed fd.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL only changes status flags of a valid, borrowed fd.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel refuses more than `IOV_MAX` segments; longer lists are the
/// caller's bug, reported as `InvalidInput` rather than truncated.
const IOV_MAX: usize = 1024;

/// Iovecs kept on the stack; longer lists (tiny guest buffers) are allocated.
const INLINE_IOVECS: usize = 64;

/// Calls `f` with the iovecs describing `bufs`, without allocating for the
/// usual short lists (this runs once per frame).
fn with_iovecs<R>(
    bufs: &[VolatileSlice<'_>],
    f: impl FnOnce(&[libc::iovec]) -> R,
) -> io::Result<R> {
    if bufs.len() > IOV_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} buffers exceed IOV_MAX", bufs.len()),
        ));
    }
    let iovec = |slice: &VolatileSlice<'_>| libc::iovec {
        iov_base: slice.ptr_guard_mut().as_ptr().cast::<c_void>(),
        iov_len: slice.len(),
    };
    if bufs.len() > INLINE_IOVECS {
        let iov: Vec<libc::iovec> = bufs.iter().map(iovec).collect();
        return Ok(f(&iov));
    }
    let mut inline = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; INLINE_IOVECS];
    for (slot, slice) in inline.iter_mut().zip(bufs) {
        *slot = iovec(slice);
    }
    Ok(f(&inline[..bufs.len()]))
}

/// `readv(2)` on `fd` straight into (guest) memory slices.
pub(crate) fn readv_fd(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    // SAFETY: each iovec describes a `VolatileSlice`, i.e. memory that stays mapped
    // and writable for the slice's lifetime, which covers this call; the count is
    // the list's length (<= IOV_MAX, so it fits in c_int).
    let n = with_iovecs(bufs, |iov| unsafe {
        libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int)
    })?;
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        // `n` is non-negative here, so the cast is lossless.
        Ok(n as usize)
    }
}

/// `writev(2)` on `fd` straight from (guest) memory slices.
pub(crate) fn writev_fd(fd: BorrowedFd<'_>, bufs: &[VolatileSlice<'_>]) -> io::Result<usize> {
    // SAFETY: each iovec describes a `VolatileSlice`, i.e. memory that stays mapped
    // and readable for the slice's lifetime, which covers this call; the count is
    // the list's length (<= IOV_MAX, so it fits in c_int).
    let n = with_iovecs(bufs, |iov| unsafe {
        libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int)
    })?;
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        // `n` is non-negative here, so the cast is lossless.
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{Need, Netns};

    fn needs() -> bool {
        testkit::require(&[Need::Root, Need::Netns, Need::Tun])
    }

    #[test]
    fn open_named_configures_the_tap() {
        if !needs() {
            return;
        }
        let ns = Netns::new("tap-open").expect("netns");
        // Created without vnet_hdr: attaching must switch it on. No IPv6 on it: the host's
        // DAD and MLD reports from an up tap would land in the queue this test reads empty.
        ns.sh(
            "ip tuntap add dev kvt0 mode tap && sysctl -qw net.ipv6.conf.kvt0.disable_ipv6=1 \
             && ip link set kvt0 up",
        )
        .expect("create tap");
        let tap = ns
            .run(|| {
                let tap = Tap::open_named("kvt0").expect("open_named");
                tap.set_vnet_hdr_size(12).expect("hdr size");
                tap.set_offload(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN)
                    .expect("offload");
                tap
            })
            .expect("run in ns");
        assert_eq!(tap.name(), "kvt0");
        assert_eq!(tap.vnet_hdr_size().expect("hdr"), 12);
        // O_NONBLOCK: reading an empty tap returns at once.
        let mut buf = [0u8; 64];
        let err = tap
            .readv(&[VolatileSlice::from(&mut buf[..])])
            .expect_err("empty tap must not block");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let flags = ns
            .sh("cat /sys/class/net/kvt0/tun_flags")
            .expect("tun_flags");
        let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).expect("hex");
        assert_eq!(
            flags & 0x5002,
            0x5002,
            "tun_flags {flags:#x}: IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"
        );
    }

    #[test]
    fn from_fd_reads_name_and_rejects_non_taps() {
        if !needs() {
            return;
        }
        let ns = Netns::new("tap-fd").expect("netns");
        ns.sh("ip tuntap add dev kvt1 mode tap vnet_hdr && ip tuntap add dev kvtun mode tun")
            .expect("create taps");
        ns.run(|| {
            let tap = Tap::open_named("kvt1").expect("open");
            let dup = tap.fd.try_clone().expect("dup");
            let wrapped = Tap::from_fd(dup).expect("from_fd");
            assert_eq!(wrapped.name(), "kvt1");

            // A plain file is not a tap.
            let file = std::fs::File::open("/dev/null").expect("/dev/null");
            match Tap::from_fd(OwnedFd::from(file)) {
                Err(TapError::NotTun { .. }) => {}
                other => panic!("expected NotTun, got {other:?}"),
            }

            // An unattached /dev/net/tun fd is not a tap either.
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("tun");
            assert!(matches!(
                Tap::from_fd(OwnedFd::from(tun)),
                Err(TapError::NotTun { .. })
            ));

            // A tun (layer 3) device is refused with its name.
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("tun");
            let mut req = [0u8; IFREQ_LEN];
            req[..5].copy_from_slice(b"kvtun");
            req[IFNAMSIZ..IFNAMSIZ + 2].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
            // SAFETY: as in open_named, `req` is a 40-byte ifreq living across the call.
            let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, req.as_mut_ptr()) };
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            match Tap::from_fd(OwnedFd::from(tun)) {
                Err(TapError::WrongMode { name, .. }) => assert_eq!(name, "kvtun"),
                other => panic!("expected WrongMode, got {other:?}"),
            }
        })
        .expect("run in ns");
    }

    #[test]
    fn inherited_fds_are_checked_before_they_are_taken() {
        assert!(matches!(
            Tap::from_inherited_fd(1),
            Err(TapError::StdioFd(1))
        ));
        // Open when the "process started": an inherited non-tap stays owned (and usable)
        // by its owner.
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        let later_number = file.as_raw_fd() + 1;
        record_inherited_fds([file.as_raw_fd(), later_number, 1 << 20]);
        assert!(matches!(
            Tap::from_inherited_fd(file.as_raw_fd()),
            Err(TapError::NotTun { .. })
        ));
        assert!(file.metadata().is_ok(), "the refused fd was not closed");
        // A number far above any open descriptor.
        assert!(matches!(
            Tap::from_inherited_fd(1 << 20),
            Err(TapError::NotOpen { fd, .. }) if fd == 1 << 20
        ));
        // Opened since (under a number named, not open then): someone in this process
        // owns it.
        let later = std::fs::File::open("/dev/null").expect("/dev/null");
        assert_eq!(later.as_raw_fd(), later_number);
        assert!(matches!(
            Tap::from_inherited_fd(later.as_raw_fd()),
            Err(TapError::NotInherited(fd)) if fd == later.as_raw_fd()
        ));
        assert!(later.metadata().is_ok(), "the refused fd was not closed");
        if !needs() {
            return;
        }
        let ns = Netns::new("tap-inherit").expect("netns");
        ns.sh("ip tuntap add dev kvt2 mode tap vnet_hdr")
            .expect("tap");
        ns.run(|| {
            let tap = Tap::open_named("kvt2").expect("open");
            // Hand over a duplicate the way a parent would, relinquishing it.
            let raw = std::os::fd::IntoRawFd::into_raw_fd(tap.fd.try_clone().expect("dup"));
            record_inherited_fds([raw]);
            let taken = Tap::from_inherited_fd(raw).expect("inherited tap");
            assert_eq!(taken.name(), "kvt2");
            assert_eq!(taken.as_raw_fd(), raw);
            assert!(matches!(
                Tap::from_inherited_fd(raw),
                Err(TapError::NotInherited(fd)) if fd == raw
            ));
        })
        .expect("run in ns");
    }

    #[test]
    fn open_named_rejects_bad_names() {
        assert!(matches!(Tap::open_named(""), Err(TapError::InvalidName(_))));
        assert!(matches!(
            Tap::open_named("a-name-that-is-too-long"),
            Err(TapError::InvalidName(_))
        ));
    }

    #[test]
    fn frame_round_trip_through_a_second_tap() {
        if !needs() {
            return;
        }
        // Two taps on a bridge inside the namespace: a frame written to one with a
        // vnet header comes out of the other with the same header and bytes.
        let ns = Netns::new("tap-rt").expect("netns");
        ns.sh("ip link add br0 type bridge && ip link set br0 up && \
             for t in kvta kvtb; do ip tuntap add dev $t mode tap vnet_hdr && \
             ip link set $t master br0 up; done")
            .expect("topology");
        ns.run(|| {
            let a = Tap::open_named("kvta").expect("a");
            let b = Tap::open_named("kvtb").expect("b");
            for t in [&a, &b] {
                t.set_vnet_hdr_size(12).expect("hdr");
            }
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0xff; 6]);
            frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0a]);
            frame.extend_from_slice(&[0x88, 0xb5]);
            frame.extend_from_slice(b"kvnet tap round trip payload.......................");
            let mut got = vec![0u8; 2048];
            // The bridge enables a port only after linkwatch has seen the tap's
            // carrier (up to a second after attach), so resend until it arrives.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            'send: loop {
                assert!(std::time::Instant::now() < deadline, "frame never arrived");
                let mut out = frame.clone();
                let (head, tail) = out.split_at_mut(20);
                let n = a
                    .writev(&[VolatileSlice::from(head), VolatileSlice::from(tail)])
                    .expect("write");
                assert_eq!(n, frame.len());
                std::thread::sleep(std::time::Duration::from_millis(50));
                loop {
                    match b.readv(&[VolatileSlice::from(&mut got[..])]) {
                        Ok(n) if n >= 26 && got[24..26] == [0x88, 0xb5] => {
                            assert_eq!(&got[..n], &frame[..]);
                            break 'send;
                        }
                        Ok(_) => {} // IPv6 noise from the bridge
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue 'send,
                        Err(e) => panic!("read: {e}"),
                    }
                }
            }
        })
        .expect("run in ns");
    }
}
