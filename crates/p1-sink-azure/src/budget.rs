//! The daily message budget, counted per UTC day as IoT Hub counts its quota.
//!
//! A message costs what the hub meters for it ([`crate::encode::metered`]): one per started
//! chunk of its size. The count is kept beside the spool (p1-core's sink state in the spool
//! file, written durably before each message goes): a restart of the sink or of p1gw goes on
//! from it, so a sink that crashes in a loop cannot run past the hub's daily quota.

/// Seconds in a day.
const DAY: u64 = 86_400;

/// A threshold a spend crossed, for the WARN lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crossed {
    /// 80 % of the budget is used.
    Most,
    /// The budget is used up.
    All,
}

/// Messages used per UTC day. Pure: the caller passes the time.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    limit: u32,
    /// The UTC day (days since the Unix epoch) `used` counts.
    day: u64,
    used: u32,
    /// The highest threshold already reported today.
    reported: Option<Crossed>,
}

impl Budget {
    pub(crate) fn new(limit: u32) -> Budget {
        Budget {
            limit,
            day: 0,
            used: 0,
            reported: None,
        }
    }

    /// The budget as stored: `used` messages on UTC day `day` (days since the Unix epoch). The
    /// thresholds already passed are not reported again.
    pub(crate) fn resume(limit: u32, day: u64, used: u32) -> Budget {
        let mut budget = Budget {
            limit,
            day,
            used,
            reported: None,
        };
        budget.check();
        budget
    }

    /// What to store: the day counted and the messages used on it.
    pub(crate) fn stored(&self) -> (u64, u32) {
        (self.day, self.used)
    }

    /// Starts a new day when `now` (Unix seconds) is in one; true if it did.
    pub(crate) fn roll(&mut self, now: u64) -> bool {
        let day = now / DAY;
        if day != self.day {
            let first = self.day == 0 && self.used == 0;
            self.day = day;
            self.used = 0;
            self.reported = None;
            return !first;
        }
        false
    }

    /// Messages used today.
    pub(crate) fn used(&mut self, now: u64) -> u32 {
        self.roll(now);
        self.used
    }

    /// The daily limit.
    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    /// Messages left today.
    pub(crate) fn remaining(&mut self, now: u64) -> u32 {
        self.roll(now);
        self.limit.saturating_sub(self.used)
    }

    /// Seconds until the next UTC day.
    pub(crate) fn until_tomorrow(now: u64) -> u64 {
        DAY - now % DAY
    }

    /// Counts `cost` messages; returns the threshold this crossed, once per day each.
    pub(crate) fn spend(&mut self, now: u64, cost: u32) -> Option<Crossed> {
        self.roll(now);
        self.used = self.used.saturating_add(cost);
        self.check()
    }

    /// Marks the budget used up (the next message does not fit); returns `All` once per day.
    pub(crate) fn exhausted(&mut self, now: u64) -> Option<Crossed> {
        self.roll(now);
        if self.reported == Some(Crossed::All) {
            return None;
        }
        self.reported = Some(Crossed::All);
        Some(Crossed::All)
    }

    fn check(&mut self) -> Option<Crossed> {
        let used = u64::from(self.used);
        let limit = u64::from(self.limit);
        let now = if used >= limit {
            Crossed::All
        } else if used * 10 >= limit * 8 {
            Crossed::Most
        } else {
            return None;
        };
        match (self.reported, now) {
            (Some(Crossed::All), _) | (Some(Crossed::Most), Crossed::Most) => None,
            _ => {
                self.reported = Some(now);
                Some(now)
            }
        }
    }
}
