//! Run-time control of the generator (the admin endpoints' side) and the pacing of records.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tidewatch_market_sim::{AnomalySeverity, Regime};
use tokio::sync::Notify;

/// Settings the admin endpoints change while the generator runs.
#[derive(Debug)]
pub struct Control {
    /// Records per second; 0 means as fast as the broker takes them.
    rate: AtomicU64,
    paused: AtomicBool,
    /// Share of records planted as bad, as `f64` bits.
    bad_fraction: AtomicU64,
    regime: Mutex<RegimeHold>,
    anomalies: Mutex<AnomalyPlan>,
    changed: Notify,
}

/// The anomalies to plant (share, severity), the configured ones, and whether the
/// publishing loop has yet to apply a change.
#[derive(Debug)]
struct AnomalyPlan {
    now: (f64, AnomalySeverity),
    configured: (f64, AnomalySeverity),
    pending: bool,
}

impl Control {
    pub fn new(rate: u64, bad_fraction: f64, anomalies: (f64, AnomalySeverity)) -> Self {
        Self {
            rate: AtomicU64::new(rate),
            paused: AtomicBool::new(false),
            bad_fraction: AtomicU64::new(bad_fraction.to_bits()),
            regime: Mutex::new(RegimeHold::default()),
            anomalies: Mutex::new(AnomalyPlan {
                now: anomalies,
                configured: anomalies,
                pending: false,
            }),
            changed: Notify::new(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Acquire)
    }

    /// Sets the rate; returns the previous one.
    pub fn set_rate(&self, rate: u64) -> u64 {
        let previous = self.rate.swap(rate, Ordering::AcqRel);
        self.changed.notify_one();
        previous
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// Pauses or resumes; returns whether it was paused before.
    pub fn set_paused(&self, paused: bool) -> bool {
        let previous = self.paused.swap(paused, Ordering::AcqRel);
        self.changed.notify_one();
        previous
    }

    pub fn bad_fraction(&self) -> f64 {
        f64::from_bits(self.bad_fraction.load(Ordering::Acquire))
    }

    /// Sets the share of bad records from the next record on; returns the previous one.
    pub fn set_bad_fraction(&self, fraction: f64) -> f64 {
        f64::from_bits(self.bad_fraction.swap(fraction.to_bits(), Ordering::AcqRel))
    }

    /// The anomalies planted now: share of trades and severity.
    pub fn anomalies(&self) -> (f64, AnomalySeverity) {
        self.anomalies.lock().unwrap_or_else(|e| e.into_inner()).now
    }

    /// Plants anomalies at this share and severity from the next simulated minute, or
    /// (`None`) as configured at start; returns the previous plan.
    pub fn set_anomalies(&self, plan: Option<(f64, AnomalySeverity)>) -> (f64, AnomalySeverity) {
        let mut a = self.anomalies.lock().unwrap_or_else(|e| e.into_inner());
        let previous = a.now;
        a.now = plan.unwrap_or(a.configured);
        a.pending = true;
        previous
    }

    /// A change of the planted anomalies not yet applied, if any (the publishing loop's side).
    pub fn take_anomaly_change(&self) -> Option<(f64, AnomalySeverity)> {
        let mut a = self.anomalies.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut a.pending).then_some(a.now)
    }

    /// Holds every symbol in `regime` from the next simulated minute, or (`None`) releases
    /// the hold so the market's own transitions resume; returns the previous hold.
    pub fn hold_regime(&self, regime: Option<Regime>) -> Option<Regime> {
        let mut hold = self.regime.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::replace(&mut hold.held, regime);
        hold.pending = true;
        drop(hold);
        self.changed.notify_one();
        previous
    }

    /// The regime the admin endpoint holds the market in, if any.
    pub fn held_regime(&self) -> Option<Regime> {
        self.regime.lock().unwrap_or_else(|e| e.into_inner()).held
    }

    /// A hold or release not yet applied to the market (`Some(None)` is a release).
    pub fn take_regime_change(&self) -> Option<Option<Regime>> {
        let mut hold = self.regime.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut hold.pending).then_some(hold.held)
    }

    /// Resolves at the next change of any setting.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// The admin endpoint's regime hold and whether the loop has applied it yet.
#[derive(Debug, Default)]
struct RegimeHold {
    held: Option<Regime>,
    pending: bool,
}

/// When each record may go out: no faster than the rate, and (with a time scale) no faster
/// than event time allows, `scale` event seconds per wall second. Sleeps only when more than
/// a millisecond ahead, so high rates go out in small bursts rather than one sleep per record.
#[derive(Debug)]
pub struct Pacer {
    rate: u64,
    scale: f64,
    anchor: Instant,
    sent: u64,
    event_anchor: Option<i64>,
}

/// How far behind its pace the generator may fall before it stops trying to catch up.
pub const MAX_BEHIND: Duration = Duration::from_secs(1);

impl Pacer {
    pub fn new(rate: u64, scale: f64) -> Self {
        Self {
            rate,
            scale,
            anchor: Instant::now(),
            sent: 0,
            event_anchor: None,
        }
    }

    /// Starts pacing afresh (after a pause or a rate change) so nothing bursts to catch up.
    pub fn rebase(&mut self, rate: u64) {
        self.rate = rate;
        self.anchor = Instant::now();
        self.sent = 0;
        self.event_anchor = None;
    }

    /// How long to wait before sending the next record, whose event time is `event_ms`
    /// (`None` for records outside the event-time order, such as late trades). A generator
    /// more than [`MAX_BEHIND`] behind its pace (a stall, a slow broker, a slowdown fault)
    /// starts pacing afresh: what it missed is not sent in a burst afterwards.
    pub fn delay(&mut self, event_ms: Option<i64>) -> Option<Duration> {
        if self.due(event_ms) + MAX_BEHIND < Instant::now() {
            self.rebase(self.rate);
        }
        let due = self.due(event_ms);
        self.sent += 1;
        let wait = due.saturating_duration_since(Instant::now());
        (wait > Duration::from_millis(1)).then_some(wait)
    }

    /// When the next record is due.
    fn due(&mut self, event_ms: Option<i64>) -> Instant {
        let mut due = self.anchor;
        if self.rate > 0 {
            due += Duration::from_secs_f64(self.sent as f64 / self.rate as f64);
        }
        if let (true, Some(ev)) = (self.scale > 0.0, event_ms) {
            let start = *self.event_anchor.get_or_insert(ev);
            let ahead = (ev - start).max(0) as f64 / 1e3 / self.scale;
            due = due.max(self.anchor + Duration::from_secs_f64(ahead));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_far_behind_its_pace_does_not_burst_to_catch_up() {
        let mut p = Pacer::new(1_000, 0.0);
        // Five seconds behind: 5,000 records owed.
        p.anchor = Instant::now() - Duration::from_secs(5);
        let waits: Vec<_> = (0..100).map(|_| p.delay(Some(0))).collect();
        // It paces afresh: the 100th record waits its 0.1 s, not none at all.
        assert!(
            waits[99].is_some_and(|w| w > Duration::from_millis(50)),
            "{:?}",
            waits[99]
        );
    }

    #[test]
    fn the_rate_spaces_records_and_event_time_can_hold_them_back() {
        let mut p = Pacer::new(1_000, 0.0);
        let waits: Vec<_> = (0..100).map(|_| p.delay(Some(0))).collect();
        // 100 records at 1,000/s take 0.1 s: the last must wait tens of milliseconds.
        assert!(waits[99].is_some_and(|w| w > Duration::from_millis(50)));
        let mut unlimited = Pacer::new(0, 0.0);
        assert!((0..10_000).all(|_| unlimited.delay(Some(0)).is_none()));
        // At 60x, an event one minute ahead waits about a second.
        let mut scaled = Pacer::new(0, 60.0);
        assert!(scaled.delay(Some(0)).is_none());
        let w = scaled.delay(Some(60_000)).expect("waits");
        assert!(w > Duration::from_millis(900) && w <= Duration::from_secs(1));
        assert!(
            scaled.delay(None).is_none(),
            "late records are not held by event time"
        );
    }
}
