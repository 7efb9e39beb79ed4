//! The consumer's side of the rate limits: kombu's token bucket per task,
//! the fleet-wide slot from `lua/rate.lua`, and the [`Limiter`] that holds
//! a rate-limited message until both let it start.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Rate, RateLimits, Setting, RATE_KEY_PREFIX};
use crate::bounds;
use crate::celery::transport::redis::{BrokerError, Link};

const RATE_LUA: &str = include_str!("../lua/rate.lua");

/// How far ahead a fleet-wide slot may be handed out: at least this, and
/// at least one interval (see `lua/rate.lua`).
const MIN_HORIZON: Duration = Duration::from_secs(1);

/// kombu's `TokenBucket` (`kombu/utils/limits.py`) as Celery uses it:
/// capacity 1, full when made, refilled continuously at the rate.
#[derive(Debug, Clone)]
struct TokenBucket {
    fill_rate: f64,
    tokens: f64,
    timestamp: Instant,
}

impl TokenBucket {
    const CAPACITY: f64 = 1.0;

    fn new(fill_rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            fill_rate,
            tokens: Self::CAPACITY,
            timestamp: now,
        }
    }

    fn tokens(&mut self, now: Instant) -> f64 {
        if self.tokens < Self::CAPACITY {
            let delta =
                self.fill_rate * now.saturating_duration_since(self.timestamp).as_secs_f64();
            self.tokens = (self.tokens + delta).min(Self::CAPACITY);
            self.timestamp = now;
        }
        self.tokens
    }

    /// Takes a token if there is one.
    fn can_consume(&mut self, now: Instant) -> bool {
        if 1.0 <= self.tokens(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there.
    fn expected_time(&mut self, now: Instant) -> Duration {
        let have = self.tokens(now);
        let secs = (1.0_f64.max(have) - have) / self.fill_rate;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(bounds::MAX_DURATION)
            .min(bounds::MAX_DURATION)
    }
}

/// What the fleet-wide script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Start in this long (the slot is taken).
    Granted(Duration),
    /// No slot yet: ask again in this long.
    Later(Duration),
}

/// Asks `lua/rate.lua` for a slot of `task` at `rate`.
fn acquire(link: &mut Link, task: &str, rate: &Rate) -> Result<Slot, BrokerError> {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let script = SCRIPT.get_or_init(|| redis::Script::new(RATE_LUA));
    let interval = rate.interval_us();
    let horizon = interval.max(MIN_HORIZON.as_micros() as u64);
    let key = format!("{RATE_KEY_PREFIX}{task}");
    let (granted, wait): (i64, i64) = link.run(|c| {
        script
            .key(&key)
            .arg(interval)
            .arg(horizon)
            .invoke::<(i64, i64)>(c)
    })?;
    // The script bounds both to ten years; bounded again here (another
    // script under the same name, a Redis that answers oddly).
    let wait = Duration::from_micros(wait.clamp(0, i64::MAX) as u64).min(bounds::MAX_DURATION);
    Ok(if granted == 1 {
        Slot::Granted(wait)
    } else {
        Slot::Later(wait)
    })
}

/// The messages of one task waiting for their turn, in order.
struct Lane<T> {
    setting: Setting,
    bucket: Option<TokenBucket>,
    /// Waiting for a token of the local bucket.
    local: VecDeque<T>,
    /// When the local head gets its token.
    local_at: Option<Instant>,
    /// Past the local bucket; the head asks Redis for a fleet-wide slot.
    global: VecDeque<T>,
    /// When the global head may ask (after "later" or an error).
    ask_at: Option<Instant>,
    /// A Redis error was logged (once per outage).
    warned: bool,
    /// With a fleet-wide slot: released at their instant.
    slotted: VecDeque<(Instant, T)>,
}

impl<T> Lane<T> {
    fn new(setting: Setting, now: Instant) -> Lane<T> {
        Lane {
            bucket: setting
                .local
                .as_ref()
                .map(|r| TokenBucket::new(r.per_second(), now)),
            setting,
            local: VecDeque::new(),
            local_at: None,
            global: VecDeque::new(),
            ask_at: None,
            warned: false,
            slotted: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        self.local
            .len()
            .saturating_add(self.global.len())
            .saturating_add(self.slotted.len())
    }
}

/// The consumer's rate-limited messages (see the module doc): held, in
/// order per task, until their task's limits let them start.
pub struct Limiter<T> {
    rates: Arc<RateLimits>,
    generation: u64,
    lanes: BTreeMap<String, Lane<T>>,
    /// For the fleet-wide limits (its own connection, so a refusal never
    /// slows the consumer's reservations); None: none configured.
    link: Option<Link>,
    /// Freed by a change of limits, released at the next pump.
    freed: Vec<T>,
}

impl<T> Limiter<T> {
    /// A limiter for `rates`; `link` talks to the broker for the
    /// fleet-wide limits.
    pub fn new(rates: Arc<RateLimits>, link: Option<Link>) -> Limiter<T> {
        Limiter {
            generation: rates.generation(),
            rates,
            lanes: BTreeMap::new(),
            link,
            freed: Vec::new(),
        }
    }

    /// The limits this limiter follows.
    pub fn rates(&self) -> &Arc<RateLimits> {
        &self.rates
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        self.lanes
            .values()
            .map(Lane::len)
            .fold(self.freed.len(), usize::saturating_add)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages held per task.
    pub fn waiting(&self) -> BTreeMap<String, usize> {
        self.lanes
            .iter()
            .filter(|(_, l)| l.len() > 0)
            .map(|(k, l)| (k.clone(), l.len()))
            .collect()
    }

    /// Offers a due message of `task` (its `plugin.task` name): given
    /// back when no limit applies, else held until [`Limiter::pump`]
    /// releases it.
    pub fn admit(&mut self, task: &str, item: T) -> Option<T> {
        self.refresh();
        let now = Instant::now();
        if !self.lanes.contains_key(task) {
            let s = self.rates.get(task);
            if !s.limited() {
                return Some(item);
            }
            self.lanes.insert(task.to_string(), Lane::new(s, now));
        }
        let Some(lane) = self.lanes.get_mut(task) else {
            return Some(item);
        };
        if lane.setting.local.is_some() {
            lane.local_at.get_or_insert(now);
            lane.local.push_back(item);
        } else if lane.setting.global.is_some() {
            lane.ask_at.get_or_insert(now);
            lane.global.push_back(item);
        } else {
            return Some(item);
        }
        None
    }

    /// Applies a change of limits: a lane whose local rate changed gets a
    /// fresh (full) bucket, as Celery's `reset_rate_limits` builds one;
    /// messages no longer limited are freed.
    fn refresh(&mut self) {
        let g = self.rates.generation();
        if g == self.generation {
            return;
        }
        self.generation = g;
        let now = Instant::now();
        for (task, lane) in self.lanes.iter_mut() {
            let new = self.rates.get(task);
            if new.local != lane.setting.local {
                lane.bucket = new
                    .local
                    .as_ref()
                    .map(|r| TokenBucket::new(r.per_second(), now));
                lane.local_at = (!lane.local.is_empty()).then_some(now);
                if new.local.is_none() {
                    if new.global.is_some() {
                        lane.ask_at.get_or_insert(now);
                        lane.global.extend(lane.local.drain(..));
                    } else {
                        self.freed.extend(lane.local.drain(..));
                    }
                }
            }
            if new.global.is_none() {
                self.freed.extend(lane.global.drain(..));
                self.freed.extend(lane.slotted.drain(..).map(|(_, t)| t));
            }
            lane.setting = new;
        }
    }

    /// When [`Limiter::pump`] next has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        if !self.freed.is_empty() {
            return Some(now);
        }
        let mut at: Option<Instant> = None;
        let mut min = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for l in self.lanes.values() {
            if !l.local.is_empty() {
                min(l.local_at.unwrap_or(now));
            }
            if !l.global.is_empty() {
                min(l.ask_at.unwrap_or(now));
            }
            if let Some((t, _)) = l.slotted.front() {
                min(*t);
            }
        }
        at
    }

    /// Releases into `out`, in order per task, the messages whose turn
    /// came: a token of the local bucket, then (fleet-wide limit) a slot
    /// from Redis and its time. A `dead` message (revoked, expired) is
    /// released at once, taking no token and no slot: the consumer answers
    /// it instead of running it.
    pub fn pump(&mut self, dead: &dyn Fn(&T) -> bool, out: &mut Vec<T>) {
        self.refresh();
        out.append(&mut self.freed);
        let now = Instant::now();
        for (task, lane) in self.lanes.iter_mut() {
            // 1. The local token bucket.
            while let Some(head) = lane.local.front() {
                let go = dead(head)
                    || match lane.bucket.as_mut() {
                        Some(b) => {
                            if b.can_consume(now) {
                                true
                            } else {
                                let wait = b.expected_time(now);
                                lane.local_at = Some(bounds::saturating_deadline(now, wait));
                                false
                            }
                        }
                        None => true,
                    };
                if !go {
                    break;
                }
                if let Some(item) = lane.local.pop_front() {
                    if lane.setting.global.is_some() && !dead(&item) {
                        lane.ask_at.get_or_insert(now);
                        lane.global.push_back(item);
                    } else {
                        out.push(item);
                    }
                }
            }
            // 2. The fleet-wide slot.
            while let (Some(head), Some(rate)) = (lane.global.front(), lane.setting.global.as_ref())
            {
                if dead(head) {
                    if let Some(item) = lane.global.pop_front() {
                        out.push(item);
                    }
                    continue;
                }
                if lane.ask_at.is_some_and(|t| t > now) {
                    break;
                }
                let Some(link) = self.link.as_mut() else {
                    // No link (cannot happen: made with any global limit).
                    out.extend(lane.global.drain(..));
                    break;
                };
                if link.is_down() && !link.backoff_left().is_zero() {
                    lane.ask_at = Some(bounds::saturating_deadline(now, link.backoff_left()));
                    break;
                }
                match acquire(link, task, rate) {
                    Ok(slot) => {
                        if lane.warned {
                            tracing::info!("fleet-wide rate limit of {task}: Redis answers again");
                            lane.warned = false;
                        }
                        let t = Instant::now();
                        match slot {
                            Slot::Granted(wait) => {
                                lane.ask_at = None;
                                if let Some(item) = lane.global.pop_front() {
                                    lane.slotted
                                        .push_back((bounds::saturating_deadline(t, wait), item));
                                }
                            }
                            Slot::Later(wait) => {
                                lane.ask_at = Some(bounds::saturating_deadline(t, wait));
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        // The limit is never exceeded: the messages wait
                        // (their leases renewed) and the head asks again.
                        if !lane.warned {
                            tracing::warn!(
                                "fleet-wide rate limit of {task}: cannot get a slot from Redis \
                                 ({e}); its {} message(s) wait and ask again",
                                lane.global.len()
                            );
                            lane.warned = true;
                        }
                        let again = link.backoff_left().max(Duration::from_millis(500));
                        lane.ask_at = Some(bounds::saturating_deadline(Instant::now(), again));
                        break;
                    }
                }
            }
            if lane.global.is_empty() {
                lane.ask_at = None;
            }
            // 3. Their slot's time.
            let now = Instant::now();
            let mut keep = VecDeque::with_capacity(lane.slotted.len());
            for (t, item) in lane.slotted.drain(..) {
                if t <= now || dead(&item) {
                    out.push(item);
                } else {
                    keep.push_back((t, item));
                }
            }
            lane.slotted = keep;
        }
        self.lanes.retain(|_, l| l.setting.limited() || l.len() > 0);
    }

    /// Takes every held message (a stop: they go back to their queue).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = std::mem::take(&mut self.freed);
        for lane in self.lanes.values_mut() {
            out.extend(lane.local.drain(..));
            out.extend(lane.global.drain(..));
            out.extend(lane.slotted.drain(..).map(|(_, t)| t));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_bucket_has_capacity_one_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        assert!(b.can_consume(t0));
        assert!(!b.can_consume(t0));
        let w = b.expected_time(t0);
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-9, "{w:?}");
        // No burst after a long idle time: one token at most.
        let later = t0 + Duration::from_secs(60);
        assert!(b.can_consume(later));
        assert!(!b.can_consume(later));
        assert!(b.can_consume(later + Duration::from_millis(100)));
    }

    #[test]
    fn the_limiter_holds_only_limited_tasks_and_releases_by_the_bucket() {
        let rates = super::super::tests::limits(&[("math.square", "1/h")]);
        let mut l: Limiter<u32> = Limiter::new(rates.clone(), None);
        assert_eq!(l.admit("math.add", 7), Some(7));
        assert_eq!(l.admit("math.square", 1), None);
        assert_eq!(l.admit("math.square", 2), None);
        let mut out = Vec::new();
        l.pump(&|_| false, &mut out);
        assert_eq!(out, vec![1]);
        assert_eq!(l.len(), 1);
        assert!(l.next_wake().unwrap() > Instant::now() + Duration::from_secs(3000));
        // A dead message takes no token.
        out.clear();
        l.pump(&|x| *x == 2, &mut out);
        assert_eq!(out, vec![2]);
        // Disabling the limit frees what waits.
        l.admit("math.square", 3);
        out.clear();
        l.pump(&|_| false, &mut out);
        assert!(out.is_empty());
        let reply = rates.control(
            &json!({"task_name": "math.square", "rate_limit": null})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert_eq!(reply, json!({"ok": "rate limit disabled successfully"}));
        l.pump(&|_| false, &mut out);
        assert_eq!(out, vec![3]);
        assert!(l.is_empty());
    }
}
