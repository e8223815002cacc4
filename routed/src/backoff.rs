//! Capped exponential backoff with jitter, for every retry against etcd.

use std::time::Duration;

use rand::RngExt;

/// The longest wait before retrying an etcd that could not be reached (see
/// [`Backoff::next_delay_for`]). With 5,000 nodes the reconnects after an outage spread
/// over half a second; each resumes its watch from its last revision (no range read).
pub const RECONNECT_CAP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("backoff: min {0:?} must be positive and not above max {1:?}")]
pub struct InvalidBackoff(Duration, Duration);

impl Backoff {
    pub fn try_new(min: Duration, max: Duration) -> Result<Backoff, InvalidBackoff> {
        if min.is_zero() || min > max {
            return Err(InvalidBackoff(min, max));
        }
        Ok(Backoff {
            min,
            max,
            next: min,
        })
    }

    /// The etcd retry policy: 200 ms doubling up to 30 s.
    pub fn etcd() -> Backoff {
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(30),
            next: Duration::from_millis(200),
        }
    }

    /// As `next_delay`, but a retry after etcd could not be reached at all waits at most
    /// [`RECONNECT_CAP`]: resuming within a second of etcd's return matters more than a
    /// refused connection, which costs etcd nothing. Errors etcd answered keep the full cap,
    /// so a struggling etcd is never hammered.
    pub fn next_delay_for(&mut self, unreachable: bool) -> Duration {
        let d = self.next_delay();
        if !unreachable {
            return d;
        }
        let half = RECONNECT_CAP / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        d.min(half + Duration::from_millis(jitter))
    }

    /// A delay in [next/2, next] ("equal jitter"), then double `next` up to max.
    pub fn next_delay(&mut self) -> Duration {
        let cur = self.next;
        self.next = (cur * 2).min(self.max);
        let half = cur / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_hold_and_reset_works() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::try_new(min, max).unwrap();
        let mut ceiling = min;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            ceiling = (ceiling * 2).min(max);
        }
        assert!(b.next_delay() <= max);
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn unreachable_etcd_is_retried_within_the_reconnect_cap() {
        let mut b = Backoff::etcd();
        for _ in 0..20 {
            let d = b.next_delay_for(true);
            assert!(d <= RECONNECT_CAP, "{d:?}");
        }
        // The exponential state kept growing: an answered error now waits long.
        let d = b.next_delay_for(false);
        assert!(d >= Duration::from_secs(15), "{d:?}");
    }

    #[test]
    fn invalid_bounds_are_refused() {
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
