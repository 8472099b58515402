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
//!
//! In a cluster the app's limit is one budget for all members, split by membership
//! ([`RateLimiter::shared_by`]): a member working on `w` of the `P` partitions takes `w/P` of
//! it. A partition is worked on by one member at a time (one being handed back by none), so the
//! shares add up to at most the whole.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ownership::Ownership;

/// One app's limiter. Cheap to share behind an `Arc`.
pub struct RateLimiter {
    /// Time between two calls, with the whole budget.
    interval: Duration,
    /// In a cluster: whose share of the budget this member takes.
    share: Option<Ownership>,
    /// The theoretical arrival time: the earliest instant the next call may go.
    tat: Mutex<Option<Instant>>,
}

impl RateLimiter {
    /// Exactly `per_second` calls per second at most (at least 1).
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        RateLimiter {
            interval: Duration::from_secs(1) / per_second,
            share: None,
            tat: Mutex::new(None),
        }
    }

    /// This limiter taking, in a cluster, the share of the budget that the partitions `ownership`
    /// works on are of all (none while it works on none: calls wait).
    pub fn shared_by(mut self, ownership: Ownership) -> Self {
        if ownership.is_cluster() {
            self.share = Some(ownership);
        }
        self
    }

    /// The limiter for an app's `rate_limit`: 5 % headroom (at least one call) below it.
    pub fn for_limit(rate_limit: u32) -> Self {
        let headroom = (rate_limit / 20).max(1);
        Self::new(rate_limit.saturating_sub(headroom).max(1))
    }

    /// Time between two calls: with the whole budget, or this member's share of it (a second
    /// while it has none, so a call waits and looks again).
    pub fn interval(&self) -> Duration {
        match &self.share {
            None => self.interval,
            Some(o) => match o.working() {
                0 => Duration::from_secs(1),
                w => self.interval * o.partitions() / w,
            },
        }
    }

    /// Takes the slot at `now` if it is free; otherwise says when the next one is. A slot taken
    /// less than one interval late moves the next one to one interval after the slot (not after
    /// `now`); later than that, the schedule starts afresh from `now`.
    pub fn try_acquire_at(&self, now: Instant) -> Result<(), Instant> {
        let interval = self.interval();
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        match *tat {
            Some(t) if t > now => Err(t),
            Some(t) if now.duration_since(t) < interval => {
                *tat = Some(t + interval);
                Ok(())
            }
            _ => {
                *tat = Some(now + interval);
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
        let interval = self.interval();
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let at = match *tat {
            Some(t) if t > now => t,
            _ => now,
        };
        *tat = Some(at + interval);
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

    #[tokio::test(start_paused = true)]
    async fn a_member_takes_its_share_of_the_budget() {
        let o = Ownership::cluster(4);
        let l = RateLimiter::new(100).shared_by(o.clone());
        // No partition worked on: a call waits a second and looks again.
        assert_eq!(l.interval(), Duration::from_secs(1));
        o.set_owned(&[(0, 1), (1, 1)]);
        o.renewed(Instant::now() + Duration::from_secs(10));
        // Half the partitions: half the rate.
        assert_eq!(l.interval(), Duration::from_millis(20));
        o.set_owned(&[(0, 1), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(l.interval(), Duration::from_millis(10));
        // Handing back does not count: the budget's share goes with the partition.
        o.start_release(&[3]);
        assert_eq!(l.interval(), Duration::from_nanos(13_333_333));
        // A relay on SQLite keeps the whole budget.
        let single = RateLimiter::new(100).shared_by(Ownership::single(4));
        assert_eq!(single.interval(), Duration::from_millis(10));
    }
}
