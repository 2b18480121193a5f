//! Lease times, the same for DHCPv4 and DHCPv6: seconds on the wire, where all ones
//! means infinite (RFC 2132 9.2, RFC 8415 7.7), and expiries in Unix seconds.

use std::time::Duration;

/// A lease time that never ends.
pub const INFINITE: u32 = u32::MAX;

/// A configured lease time in seconds: 0 (libvirt's `expiry='0'`) is infinite, and a
/// finite one too long for the wire is the longest finite one.
pub fn lease_secs(duration: Duration) -> u32 {
    match duration.as_secs() {
        0 => INFINITE,
        secs => u32::try_from(secs).unwrap_or(INFINITE - 1),
    }
}

/// When a lease of `secs` given at `now` ends; never for an infinite one.
pub fn expiry_after(now: i64, secs: u32) -> i64 {
    if secs == INFINITE {
        i64::MAX
    } else {
        now.saturating_add(i64::from(secs))
    }
}

/// T1 and T2 of a lease: half and seven eighths of it, as dnsmasq sets them (RFC 2131
/// 4.4.5; RFC 8415 21.4 recommends 0.5 and 0.8 but leaves them to the server); infinite
/// stays infinite.
pub fn renew_times(secs: u32) -> (u32, u32) {
    if secs == INFINITE {
        (INFINITE, INFINITE)
    } else {
        (
            secs / 2,
            u32::try_from(u64::from(secs) * 7 / 8).unwrap_or(secs),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_times_as_the_wire_carries_them() {
        assert_eq!(lease_secs(Duration::ZERO), INFINITE);
        assert_eq!(lease_secs(Duration::from_secs(3600)), 3600);
        assert_eq!(lease_secs(Duration::from_secs(1 << 40)), INFINITE - 1);
        assert_eq!(expiry_after(100, 3600), 3700);
        assert_eq!(expiry_after(100, INFINITE), i64::MAX);
        assert_eq!(expiry_after(i64::MAX - 1, 3600), i64::MAX);
        assert_eq!(renew_times(3600), (1800, 3150));
        assert_eq!(
            renew_times(INFINITE - 1),
            ((INFINITE - 1) / 2, 3_758_096_382)
        );
        assert_eq!(renew_times(INFINITE), (INFINITE, INFINITE));
    }
}
