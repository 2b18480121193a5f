//! A budget of log lines for what clients can make happen at will: the per-network
//! debug logs (`log-queries`, `log-dhcp`), where a guest flooding its network with
//! queries or DHCP messages must not have the daemon spend its time writing log lines,
//! and the API's refused requests. So many events a second are logged; those past it
//! are counted, and the count is said when logging resumes.

/// How many events a second one network's log takes.
#[derive(Debug)]
pub(crate) struct LogBudget {
    per_second: u32,
    /// The Unix second `used` counts in.
    second: i64,
    used: u32,
    /// Events left out since the last one logged.
    skipped: u64,
}

impl LogBudget {
    pub(crate) const fn per_second(per_second: u32) -> LogBudget {
        LogBudget {
            per_second,
            second: i64::MIN,
            used: 0,
            skipped: 0,
        }
    }

    /// Whether an event at `now` (Unix seconds) is logged: `Some` with how many were
    /// left out before it (to be said first), `None` when it is left out.
    pub(crate) fn take(&mut self, now: i64) -> Option<u64> {
        if now != self.second {
            self.second = now;
            self.used = 0;
        }
        if self.used >= self.per_second {
            self.skipped = self.skipped.saturating_add(1);
            return None;
        }
        self.used += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

/// Logs the lines `lines` makes of one DHCP or DHCPv6 message of `network` (its
/// transaction `xid`) at Unix time `now`, within `budget`, formatting nothing past it;
/// `what` names the messages in the count of those left out.
pub(crate) fn log_message(
    network: &str,
    budget: &mut LogBudget,
    now: i64,
    what: &str,
    xid: u32,
    lines: impl FnOnce() -> Vec<String>,
) {
    let Some(skipped) = budget.take(now) else {
        return;
    };
    if skipped > 0 {
        let per_second = budget.per_second;
        tracing::info!(%network, "{skipped} {what} messages not logged: at most {per_second} a second are");
    }
    for line in lines() {
        tracing::info!(%network, xid, "{line}");
    }
}

/// What `run` logs at INFO and above, as the daemon writes it (without times).
#[cfg(test)]
pub(crate) fn captured(run: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            crate::service::lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let bytes = crate::service::lock(&buffer.0).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_takes_its_share_and_the_next_says_what_was_left_out() {
        let mut budget = LogBudget::per_second(3);
        let taken: Vec<Option<u64>> = (0..5).map(|_| budget.take(100)).collect();
        assert_eq!(taken, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(budget.take(101), Some(2));
        assert_eq!(budget.take(101), Some(0));
        // A clock set back starts a new second too.
        assert_eq!(budget.take(50), Some(0));
    }
}
