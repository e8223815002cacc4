//! Capped exponential backoff with jitter, for every retry against etcd.

use std::time::Duration;

use rand::Rng;

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
    fn invalid_bounds_are_refused() {
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }
}
