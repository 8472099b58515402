//! The per-app rate limiter: a GCRA (generic cell rate algorithm, a token bucket kept as one
//! timestamp) shared by every send and every stream of one Tencent IM app.
//!
//! Slots are `1 s / rate` apart (no burst). A caller that takes its slot late — its timer fired
//! after the slot, as tokio's millisecond timers do — keeps the schedule: the next slot is one
//! interval after the one it missed, not after the moment it woke, so late wake-ups do not eat
//! the rate (they cost S4 about 15 % of it: 5.26 ms slots taken ≈ 6.2 ms apart). Only lateness
//! under one interval is carried, so any window of one second holds at most `rate + 2` calls,
//! whether Tencent (or the simulator) counts in fixed or sliding windows; idle time is never
//! saved up as a burst. The relay runs a little under the configured `rate_limit`
//! ([`RateLimiter::for_limit`], 5 %) so that this and calls bunched by network jitter on their
//! way still arrive under it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One app's limiter. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time between two calls.
    interval: Duration,
    /// The theoretical arrival time: the earliest instant the next call may go.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Exactly `per_second` calls per second at most (at least 1).
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        RateLimiter {
            interval: Duration::from_secs(1) / per_second,
            tat: Mutex::new(None),
        }
    }

    /// The limiter for an app's `rate_limit`: 5 % headroom (at least one call) below it.
    pub fn for_limit(rate_limit: u32) -> Self {
        let headroom = (rate_limit / 20).max(1);
        Self::new(rate_limit.saturating_sub(headroom).max(1))
    }

    /// Time between two calls.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes the slot at `now` if it is free; otherwise says when the next one is. A slot taken
    /// less than one interval late moves the next one to one interval after the slot (not after
    /// `now`); later than that, the schedule starts afresh from `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Instant> {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        match *tat {
            Some(t) if t > now => Err(t),
            Some(t) if now.duration_since(t) < self.interval => {
                *tat = Some(t + self.interval);
                Ok(())
            }
            _ => {
                *tat = Some(now + self.interval);
                Ok(())
            }
        }
    }

    /// [`Self::try_acquire_at`] now.
    pub fn try_acquire(&self) -> Result<(), Instant> {
        self.try_acquire_at(Instant::now())
    }

    /// Reserves the next free slot and returns when it is (now or later): callers queue in the
    /// order they reserved.
    pub fn reserve_at(&self, now: Instant) -> Instant {
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let at = match *tat {
            Some(t) if t > now => t,
            _ => now,
        };
        *tat = Some(at + self.interval);
        at
    }

    /// Waits for a slot of its own.
    pub async fn acquire(&self) {
        let at = self.reserve_at(Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_by_the_interval() {
        let l = RateLimiter::new(200);
        assert_eq!(l.interval(), Duration::from_millis(5));
        let t0 = Instant::now();
        assert!(l.try_acquire_at(t0).is_ok());
        assert_eq!(l.try_acquire_at(t0), Err(t0 + Duration::from_millis(5)));
        assert_eq!(
            l.try_acquire_at(t0 + Duration::from_millis(4)),
            Err(t0 + Duration::from_millis(5))
        );
        assert!(l.try_acquire_at(t0 + Duration::from_millis(5)).is_ok());
        // Idle time is not saved up as a burst.
        let later = t0 + Duration::from_secs(10);
        assert!(l.try_acquire_at(later).is_ok());
        assert!(l.try_acquire_at(later).is_err());
    }

    #[test]
    fn reservations_queue_one_interval_apart() {
        let l = RateLimiter::new(10);
        let t0 = Instant::now();
        let slots: Vec<_> = (0..5).map(|_| l.reserve_at(t0)).collect();
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(*s, t0 + Duration::from_millis(100) * i as u32);
        }
        // A reservation holds back try_acquire too.
        assert_eq!(
            l.try_acquire_at(t0 + Duration::from_millis(450)),
            Err(t0 + Duration::from_millis(500))
        );
    }

    #[test]
    fn no_second_holds_more_than_the_rate() {
        let l = RateLimiter::new(50);
        let t0 = Instant::now();
        let mut granted = Vec::new();
        // Callers try every millisecond for three seconds.
        for ms in 0..3000u64 {
            let now = t0 + Duration::from_millis(ms);
            while l.try_acquire_at(now).is_ok() {
                granted.push(ms);
            }
        }
        for w in 0..2000u64 {
            let n = granted.iter().filter(|&&g| g >= w && g < w + 1000).count();
            assert!(n <= 50, "{n} calls in the second from {w} ms");
        }
        assert!(granted.len() >= 149, "only {} calls granted", granted.len());
    }

    #[test]
    fn late_callers_keep_the_rate_without_bursting() {
        // A caller whose timer fires 1 ms after every slot (tokio's timers have millisecond
        // resolution) still gets the full rate, and no second holds more than rate + 2 calls.
        let l = RateLimiter::for_limit(200);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(3);
        let mut now = t0;
        let mut granted = Vec::new();
        while now < end {
            match l.try_acquire_at(now) {
                Ok(()) => granted.push(now),
                Err(at) => now = at + Duration::from_millis(1),
            }
        }
        assert!(granted.len() >= 3 * 190 - 2, "only {} calls", granted.len());
        for (i, g) in granted.iter().enumerate() {
            let n = granted[i..]
                .iter()
                .take_while(|h| h.duration_since(*g) < Duration::from_secs(1))
                .count();
            assert!(n <= 192, "{n} calls in the second from {g:?}");
        }
        // Lateness of an interval or more is not carried: the schedule restarts.
        let l = RateLimiter::new(100);
        assert!(l.try_acquire_at(t0).is_ok());
        let late = t0 + Duration::from_millis(35);
        assert!(l.try_acquire_at(late).is_ok());
        assert_eq!(
            l.try_acquire_at(late),
            Err(late + Duration::from_millis(10))
        );
        // Under an interval late: the next slot is one interval after the missed one.
        let l = RateLimiter::new(100);
        assert!(l.try_acquire_at(t0).is_ok());
        assert!(l.try_acquire_at(t0 + Duration::from_millis(14)).is_ok());
        assert_eq!(
            l.try_acquire_at(t0 + Duration::from_millis(14)),
            Err(t0 + Duration::from_millis(20))
        );
    }

    #[test]
    fn for_limit_leaves_headroom() {
        assert_eq!(
            RateLimiter::for_limit(200).interval(),
            Duration::from_secs(1) / 190
        );
        assert_eq!(RateLimiter::for_limit(1).interval(), Duration::from_secs(1));
        assert_eq!(RateLimiter::for_limit(0).interval(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_its_slot() {
        let l = RateLimiter::new(4);
        let t0 = Instant::now();
        for _ in 0..4 {
            l.acquire().await;
        }
        assert_eq!(Instant::now() - t0, Duration::from_millis(750));
    }
}
