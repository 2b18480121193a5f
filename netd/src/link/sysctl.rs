//! Network sysctls, written through `/proc/sys/net`.
//!
//! procfs resolves `/proc/sys/net` in the network namespace of the thread that opens the file
//! (not the process's first thread, unlike `/proc/net`), so these functions act on the
//! namespace of their calling thread. Host-wide values are read first and only written
//! when they differ, so an already-configured host sees no writes (turning IPv6
//! forwarding on has side effects). A new bridge's own values are written outright: one
//! file operation instead of two, on every start.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Error, validate_ifname};

const PROC_SYS_NET: &str = "/proc/sys/net";

/// Turns on `net.ipv4.ip_forward` and/or `net.ipv6.conf.all.forwarding`.
pub fn enable_forwarding(ipv4: bool, ipv6: bool) -> Result<(), Error> {
    if ipv4 {
        ensure("ipv4/ip_forward", "1")?;
    }
    if ipv6 {
        ensure("ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}

/// Sets a bridge's IPv6 sysctls as libvirt does: `disable_ipv6` unless the network has an
/// IPv6 address, and always `accept_ra = 0` and `autoconf = 0`, so guests cannot configure
/// the host through router advertisements.
///
/// On a kernel without IPv6 (no `/proc/sys/net/ipv6`) this is a no-op when `has_ipv6` is
/// false and an error naming the missing file otherwise.
pub fn configure_bridge_ipv6(bridge: &str, has_ipv6: bool) -> Result<(), Error> {
    validate_ifname(bridge)?;
    let conf = format!("ipv6/conf/{bridge}");
    let disable_ipv6 = format!("{conf}/disable_ipv6");
    if !has_ipv6 && !path_of("ipv6").exists() {
        tracing::debug!(%bridge, "kernel has no IPv6; nothing to disable");
        return Ok(());
    }
    // Below an MTU of 1280 the kernel takes IPv6 off the link, settings and all (the
    // link itself, and its IPv4 settings, are still there).
    if !has_ipv6 && !path_of(&conf).exists() && path_of(&format!("ipv4/conf/{bridge}")).exists() {
        tracing::debug!(%bridge, "IPv6 is off on the bridge (MTU below 1280); nothing to disable");
        return Ok(());
    }
    write(&disable_ipv6, if has_ipv6 { "0" } else { "1" })?;
    write(&format!("{conf}/accept_ra"), "0")?;
    write(&format!("{conf}/autoconf"), "0")
}

/// Turns IPv6 off on a guest's tap before it comes up. As a bridge port it carries the
/// guest's IPv6 either way; its own would only send the guest the host's duplicate
/// address detection, MLD reports and router solicitations from a link-local address, and
/// cost address changes whenever the tap goes up or down. A kernel without IPv6 needs
/// nothing.
pub fn disable_port_ipv6(tap: &str) -> Result<(), Error> {
    validate_ifname(tap)?;
    if !path_of("ipv6").exists() {
        return Ok(());
    }
    write(&format!("ipv6/conf/{tap}/disable_ipv6"), "1")
}

/// Whether `net.ipv6.conf.<ifname>.accept_ra` is 2, the value that keeps accepting router
/// advertisements (and the routes they taught) once forwarding is on.
pub fn accepts_ra_when_forwarding(ifname: &str) -> Result<bool, Error> {
    validate_ifname(ifname)?;
    Ok(read(&format!("ipv6/conf/{ifname}/accept_ra"))? == "2")
}

fn path_of(relative: &str) -> PathBuf {
    Path::new(PROC_SYS_NET).join(relative)
}

/// The trimmed contents of `/proc/sys/net/<relative>`.
fn read(relative: &str) -> Result<String, Error> {
    let path = path_of(relative);
    match std::fs::read_to_string(&path) {
        Ok(value) => Ok(value.trim().to_owned()),
        Err(source) => Err(Error::SysctlRead { path, source }),
    }
}

/// Writes `value` to `/proc/sys/net/<relative>` unless it already holds it.
fn ensure(relative: &str, value: &'static str) -> Result<(), Error> {
    let current = read(relative)?;
    if current == value {
        return Ok(());
    }
    write(relative, value)?;
    tracing::debug!(path = %path_of(relative).display(), from = current, to = value, "set sysctl");
    Ok(())
}

/// Writes `value` to `/proc/sys/net/<relative>`.
fn write(relative: &str, value: &'static str) -> Result<(), Error> {
    let path = path_of(relative);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut file| file.write_all(value.as_bytes()))
        .map_err(|source| Error::SysctlWrite {
            path,
            value,
            source,
        })
}
