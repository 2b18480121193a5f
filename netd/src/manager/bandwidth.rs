//! What a `<bandwidth>` asks of the link layer's traffic shaping.

use crate::link::shaping::{Shaping, TokenBucket};
use crate::xml::{Bandwidth, Rate};

/// The tc limits for a `<bandwidth>` on a macvtap, which sees the guest's traffic the
/// other way round from a tap: what the guest sends leaves through the macvtap's egress,
/// and what it receives passes the macvtap's ingress on its way to the queue (libvirt's
/// `virNetDevBandwidthSet` without `swapped`).
pub(super) fn macvtap_shaping_of(bandwidth: Option<&Bandwidth>) -> Shaping {
    let shaping = shaping_of(bandwidth);
    Shaping {
        egress: shaping.ingress,
        ingress: shaping.egress,
    }
}

/// The tc limits for a `<bandwidth>` on a bridge or a tap, whose egress carries the
/// traffic to the guests (inbound) and whose ingress the traffic from them (outbound).
///
/// Inbound is what libvirt's tc command makes of it: `burst` bytes at up to `peak`, then
/// the average. Outbound follows libvirt's `police` (which drops instead of delaying):
/// without a `burst`, a second's worth of the average (its KiB) may pass at once, then
/// the average; a `peak`, which libvirt ignores there, caps the burst's rate.
pub(super) fn shaping_of(bandwidth: Option<&Bandwidth>) -> Shaping {
    let kilobytes = |units: u64| units.saturating_mul(1000);
    let kibibytes = |units: u64| units.saturating_mul(1024);
    let inbound = |rate: &Rate| TokenBucket {
        rate: kilobytes(rate.average),
        ceil: kilobytes(rate.peak.filter(|peak| *peak > 0).unwrap_or(rate.average)),
        burst: rate.burst.filter(|burst| *burst > 0).map(kibibytes),
        ceil_burst: None,
    };
    let outbound = |rate: &Rate| {
        // libvirt caps this default (not a burst given) as here: tc holds a burst in
        // 32 bits of bytes.
        let default_burst = kibibytes(rate.average.min(u64::from(u32::MAX) / 1024));
        let burst = rate
            .burst
            .filter(|burst| *burst > 0)
            .map_or(default_burst, kibibytes);
        let peak = rate.peak.filter(|peak| *peak > 0);
        TokenBucket {
            rate: kilobytes(rate.average),
            ceil: kilobytes(peak.unwrap_or(rate.average)),
            burst: Some(burst),
            ceil_burst: if peak.is_some() { None } else { Some(burst) },
        }
    };
    Shaping {
        egress: bandwidth.and_then(Bandwidth::inbound_limit).map(inbound),
        ingress: bandwidth.and_then(Bandwidth::outbound_limit).map(outbound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(average: u64, peak: Option<u64>, burst: Option<u64>) -> Rate {
        Rate {
            average,
            peak,
            burst,
        }
    }

    #[test]
    fn inbound_is_tcs_reading_of_libvirts_command() {
        let bandwidth = Bandwidth {
            inbound: Some(rate(1000, Some(5000), Some(64))),
            outbound: None,
        };
        let shaping = shaping_of(Some(&bandwidth));
        assert_eq!(
            shaping.egress,
            Some(TokenBucket {
                rate: 1_000_000,
                ceil: 5_000_000,
                burst: Some(65_536),
                ceil_burst: None,
            })
        );
        assert_eq!(shaping.ingress, None);
        // A peak or burst of 0 is none, as libvirt writes and reads it.
        let zeroes = Bandwidth {
            inbound: Some(rate(1000, Some(0), Some(0))),
            outbound: None,
        };
        let egress = shaping_of(Some(&zeroes)).egress.expect("limited");
        assert_eq!((egress.ceil, egress.burst), (1_000_000, None));
    }

    #[test]
    fn outbound_is_a_token_bucket_like_libvirts_police() {
        // No burst: a second of the average at once, then the average.
        let plain = Bandwidth {
            inbound: None,
            outbound: Some(rate(500, None, None)),
        };
        assert_eq!(
            shaping_of(Some(&plain)).ingress,
            Some(TokenBucket {
                rate: 500_000,
                ceil: 500_000,
                burst: Some(512_000),
                ceil_burst: Some(512_000),
            })
        );
        // A peak caps how fast the burst goes.
        let peaked = Bandwidth {
            inbound: None,
            outbound: Some(rate(500, Some(800), Some(100))),
        };
        let ingress = shaping_of(Some(&peaked)).ingress.expect("limited");
        assert_eq!(
            (ingress.ceil, ingress.burst, ingress.ceil_burst),
            (800_000, Some(102_400), None)
        );
        // The default burst is capped at what 32 bits of bytes hold, as libvirt caps it.
        let huge = Bandwidth {
            inbound: None,
            outbound: Some(rate(u64::MAX / 1024, None, None)),
        };
        let ingress = shaping_of(Some(&huge)).ingress.expect("limited");
        assert_eq!(ingress.burst, Some(u64::from(u32::MAX) / 1024 * 1024));
    }

    #[test]
    fn an_average_of_zero_limits_nothing() {
        let idle = Bandwidth {
            inbound: Some(rate(0, Some(5), None)),
            outbound: Some(rate(0, None, None)),
        };
        assert!(shaping_of(Some(&idle)).is_empty());
        assert!(shaping_of(None).is_empty());
    }
}
