//! The fraud guard: how each destination prefix converts (codes approved per code sent), watched
//! over a sliding window, and SMS pumping stopped by itself.
//!
//! A prefix is the country calling code and the next `fraud.prefix_digits` digits. Each keeps,
//! per minute of the last day, how many codes went to it and how many of those were approved
//! (an approval counts in the minute its code was sent). A prefix is **suspended** when its
//! conversion over the window falls under `min_conversion` with at least `min_sends` sends old
//! enough to have been approved, or when one minute's sends jump to `spike_factor` times its
//! average minute of the last day (at least `spike_sends`; only once the store holds a day of
//! history, so a new deployment learns its baselines first). A suspended prefix refuses new codes
//! for `suspend_for` (429 `suspected_fraud`, the same answer for every number in it), then lets
//! one through per `probe_every`; an approved probe lifts the suspension. A number that approved
//! a code for the same client within 90 days still gets codes. Suspensions are rows in the store;
//! the windows are rebuilt from the verification records at start, so both survive restarts.
//! Memory is bounded: at most [`MAX_PREFIXES`] prefixes are watched, the least recently seen
//! forgotten first.

pub mod settings;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use settings::{FraudConfig, Mode};

use crate::store::record::{rfc3339, to_ms};
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Prefixes watched at most.
pub const MAX_PREFIXES: usize = 20_000;
/// A number that approved a code within this still gets codes when its prefix is suspended.
pub const RETURNING_FOR: Duration = crate::store::verification::APPROVALS_KEPT;
/// How often the suspensions are read again from the store (see [`Guard::refresh`]).
pub const REFRESH: Duration = Duration::from_secs(5);
/// The baseline a spike is measured against.
const BASELINE: u64 = 24 * 60;

/// A prefix's number: `+`, the country calling code and the next `digits` digits (the whole
/// number when shorter; `None` when it is not E.164).
pub fn prefix_of(number: &str, digits: usize) -> Option<String> {
    let (code, _) = crate::country::of(number)?;
    let length = 1 + code.to_string().len() + digits;
    Some(number.get(..length).unwrap_or(number).to_string())
}

/// Why a prefix is suspended, and until when; stored as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suspension {
    pub since_ms: u64,
    pub until_ms: u64,
    pub reason: String,
    /// When a probe last went through.
    #[serde(default)]
    pub last_probe_ms: u64,
}

/// One minute of a prefix's traffic.
#[derive(Debug, Clone, Copy)]
struct Minute {
    at: u64,
    sends: u32,
    approved: u32,
}

/// A prefix's last day, a minute at a time (only minutes with traffic).
#[derive(Debug, Default)]
struct Window {
    minutes: VecDeque<Minute>,
}

impl Window {
    fn minute(&mut self, at: u64) -> Option<&mut Minute> {
        match self.minutes.binary_search_by_key(&at, |m| m.at) {
            Ok(i) => self.minutes.get_mut(i),
            Err(i) => {
                // Older than the day kept: nothing to count into.
                if i == 0 && self.minutes.front().is_some_and(|m| m.at > at + BASELINE) {
                    return None;
                }
                self.minutes.insert(i, Minute { at, sends: 0, approved: 0 });
                self.minutes.get_mut(i)
            }
        }
    }

    fn forget_before(&mut self, at: u64) {
        while self.minutes.front().is_some_and(|m| m.at < at) {
            self.minutes.pop_front();
        }
    }

    fn last_seen(&self) -> u64 {
        self.minutes.back().map_or(0, |m| m.at)
    }
}

/// What the guard says to a new code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Allow,
    /// Refused (enforce mode) until this much later.
    Refuse {
        prefix: String,
        retry_after: Duration,
    },
}

/// A change to write to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Suspend(String, Suspension),
    Lift(String),
}

#[derive(Default)]
struct State {
    prefixes: HashMap<String, Window>,
    suspended: HashMap<String, Suspension>,
    /// The oldest code the store knew of at start (ms): a day of history makes baselines.
    history_since_ms: Option<u64>,
    /// Suspensions and lifts decided here so far, and those of them not yet written to the
    /// store: a refresh must not take back from the store a state older than ours.
    decided: u64,
    unwritten: u32,
}

impl State {
    /// Counts a change decided here, on its way to the store ([`Guard::record`]).
    fn decided(&mut self) {
        self.decided += 1;
        self.unwritten += 1;
    }
}

/// The guard, shared by every intake path.
pub struct Guard {
    config: RwLock<FraudConfig>,
    state: Mutex<State>,
    store: Arc<Store>,
}

fn minute_of(ms: u64) -> u64 {
    ms / 60_000
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Guard {
    pub fn new(store: Arc<Store>, config: FraudConfig) -> Guard {
        Guard { config: RwLock::new(config), state: Mutex::default(), store }
    }

    fn config(&self) -> FraudConfig {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A new config (SIGHUP): thresholds and pins apply to the next code.
    pub fn reload(&self, config: FraudConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Loads the suspensions and rebuilds the windows from the last day of verifications.
    pub async fn load(&self, now: SystemTime) -> Result<(), StoreError> {
        let digits = self.config().prefix_digits;
        let suspended: HashMap<String, Suspension> = self
            .store
            .fraud_rows()
            .await?
            .into_iter()
            .filter_map(|(prefix, value)| Some((prefix, serde_json::from_slice(&value).ok()?)))
            .collect();
        let since_ms = to_ms(now).saturating_sub(BASELINE * 60_000);
        let mut state = State { suspended, ..State::default() };
        let mut after = None;
        loop {
            let page = self.store.verifications_since(since_ms, after.as_ref(), 1024).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            for (_, record) in &page {
                state.history_since_ms = Some(state.history_since_ms.map_or(record.created_ms, |s| s.min(record.created_ms)));
                let Some(prefix) = prefix_of(&record.to, digits) else { continue };
                let window = state.prefixes.entry(prefix).or_default();
                if let Some(minute) = window.minute(minute_of(record.created_ms)) {
                    minute.sends += record.sends.max(1);
                    minute.approved += u32::from(record.status == crate::store::verification::VerificationStatus::Approved);
                }
            }
            tokio::task::yield_now().await;
        }
        // The store's first code overall, if it is older than the day scanned.
        if self.store.verifications_since(0, None, 1).await?.first().is_some_and(|(_, r)| r.created_ms < since_ms) {
            state.history_since_ms = Some(0);
        }
        metrics::gauge!(telemetry::FRAUD_SUSPENDED_PREFIXES).set(state.suspended.len() as f64);
        *lock(&self.state) = state;
        Ok(())
    }

    /// Takes the suspensions from the store again: on a database every node of a cluster sees
    /// the others' suspensions and lifts within `REFRESH`.
    /// A round is skipped while a change decided here is not yet in the store or was decided
    /// during the read (the read would take it back: a new suspension dropped, a lift undone);
    /// the next round reads it.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let decided = {
            let state = lock(&self.state);
            if state.unwritten > 0 {
                return Ok(());
            }
            state.decided
        };
        let rows = self.store.fraud_rows().await?;
        let mut state = lock(&self.state);
        if state.decided != decided {
            return Ok(());
        }
        let mut fresh: HashMap<String, Suspension> =
            rows.into_iter().filter_map(|(prefix, value)| Some((prefix, serde_json::from_slice(&value).ok()?))).collect();
        for (prefix, suspension) in fresh.iter_mut() {
            if let Some(ours) = state.suspended.get(prefix) {
                suspension.last_probe_ms = suspension.last_probe_ms.max(ours.last_probe_ms);
            }
        }
        state.suspended = fresh;
        metrics::gauge!(telemetry::FRAUD_SUSPENDED_PREFIXES).set(state.suspended.len() as f64);
        Ok(())
    }

    /// Whether a new code to `to` may go: pinned prefixes first, then a suspension (a
    /// `returning` number passes it; while probed, one code per `probe_every` does).
    pub fn admit(&self, to: &str, returning: bool, now: SystemTime) -> Admission {
        let config = self.config();
        if config.mode == Mode::Off {
            return Admission::Allow;
        }
        let now_ms = to_ms(now);
        let pinned = |list: &[String]| list.iter().any(|p| to.starts_with(p.as_str()));
        let prefix = prefix_of(to, config.prefix_digits).unwrap_or_else(|| to.to_string());
        let refusal = if pinned(&config.always_allow) {
            None
        } else if pinned(&config.always_block) {
            Some(config.suspend_for)
        } else {
            let mut state = lock(&self.state);
            match state.suspended.get_mut(&prefix) {
                None => None,
                Some(_) if returning => None,
                Some(s) if now_ms < s.until_ms => Some(Duration::from_millis(s.until_ms - now_ms)),
                Some(s) => {
                    let next = s.last_probe_ms + config.probe_every.as_millis() as u64;
                    if now_ms >= next {
                        s.last_probe_ms = now_ms;
                        None
                    } else {
                        Some(Duration::from_millis(next - now_ms))
                    }
                }
            }
        };
        let Some(retry_after) = refusal else { return Admission::Allow };
        let country = crate::country::label(to);
        let mode = if config.mode == Mode::Enforce { "enforce" } else { "monitor" };
        metrics::counter!(telemetry::FRAUD_REFUSED_TOTAL, "country" => country, "mode" => mode).increment(1);
        match config.mode {
            Mode::Enforce => Admission::Refuse { prefix, retry_after: retry_after.max(Duration::from_secs(1)) },
            _ => Admission::Allow,
        }
    }

    /// Counts a code sent to `to` and judges its prefix; a new suspension is returned for the
    /// store (and logged once, counted).
    pub fn sent(&self, to: &str, now: SystemTime) -> Option<Change> {
        let config = self.config();
        if config.mode == Mode::Off || config.always_allow.iter().any(|p| to.starts_with(p.as_str())) {
            return None;
        }
        let prefix = prefix_of(to, config.prefix_digits)?;
        let now_ms = to_ms(now);
        let now_minute = minute_of(now_ms);
        let mut state = lock(&self.state);
        let since = *state.history_since_ms.get_or_insert(now_ms);
        let baseline_known = now_ms.saturating_sub(since) >= BASELINE * 60_000;
        if !state.prefixes.contains_key(&prefix) && state.prefixes.len() >= MAX_PREFIXES {
            forget_least_recent(&mut state.prefixes);
        }
        let window = state.prefixes.entry(prefix.clone()).or_default();
        window.forget_before(now_minute.saturating_sub(BASELINE));
        if let Some(minute) = window.minute(now_minute) {
            minute.sends += 1;
        }
        let reason = judge(window, &config, now_minute, baseline_known)?;
        if state.suspended.get(&prefix).is_some_and(|s| s.until_ms > now_ms || s.last_probe_ms > 0) {
            return None;
        }
        let suspension =
            Suspension { since_ms: now_ms, until_ms: now_ms + config.suspend_for.as_millis() as u64, reason, last_probe_ms: 0 };
        tracing::warn!(%prefix, reason = %suspension.reason, mode = ?config.mode, "destination prefix suspended: suspected SMS pumping");
        metrics::counter!(telemetry::FRAUD_SUSPENSIONS_TOTAL, "country" => crate::country::label(to)).increment(1);
        state.suspended.insert(prefix.clone(), suspension.clone());
        state.decided();
        metrics::gauge!(telemetry::FRAUD_SUSPENDED_PREFIXES).set(state.suspended.len() as f64);
        Some(Change::Suspend(prefix, suspension))
    }

    /// Counts an approval of a code sent to `to` at `sent_ms`; an approval while its prefix is
    /// probed lifts the suspension (returned for the store).
    pub fn approved(&self, to: &str, sent_ms: u64, now: SystemTime) -> Option<Change> {
        let config = self.config();
        let prefix = prefix_of(to, config.prefix_digits)?;
        let mut state = lock(&self.state);
        if let Some(minute) = state.prefixes.get_mut(&prefix).and_then(|w| w.minute(minute_of(sent_ms))) {
            minute.approved += 1;
        }
        let probed = state.suspended.get(&prefix).is_some_and(|s| to_ms(now) >= s.until_ms);
        if !probed {
            return None;
        }
        state.suspended.remove(&prefix);
        state.decided();
        // The burst is history now: judge the prefix afresh.
        state.prefixes.remove(&prefix);
        metrics::gauge!(telemetry::FRAUD_SUSPENDED_PREFIXES).set(state.suspended.len() as f64);
        tracing::info!(%prefix, "destination prefix converts again: suspension lifted");
        Some(Change::Lift(prefix))
    }

    /// Writes a change to the store (every change [`Guard::sent`] and [`Guard::approved`]
    /// return must come here, written or not: refreshes wait for it).
    pub async fn record(&self, change: Change) -> Result<(), StoreError> {
        let written = self.write(change).await;
        let mut state = lock(&self.state);
        state.unwritten = state.unwritten.saturating_sub(1);
        written
    }

    async fn write(&self, change: Change) -> Result<(), StoreError> {
        match change {
            Change::Suspend(prefix, suspension) => {
                let value = serde_json::to_vec(&suspension).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let mode = format!("{:?}", self.mode()).to_lowercase();
                let data = serde_json::json!({
                    "prefix": prefix,
                    "country": crate::country::label(&prefix),
                    "reason": suspension.reason,
                    "suspended_at": rfc3339(suspension.since_ms),
                    "until": rfc3339(suspension.until_ms),
                    "mode": mode,
                });
                self.store.suspend_prefix(&prefix, &value, data, suspension.since_ms).await
            }
            Change::Lift(prefix) => self.store.delete_fraud_row(&prefix).await,
        }
    }

    /// The prefixes suspended now (and probed), oldest first.
    pub fn suspensions(&self) -> Vec<(String, Suspension)> {
        let mut all: Vec<(String, Suspension)> = lock(&self.state).suspended.iter().map(|(p, s)| (p.clone(), s.clone())).collect();
        all.sort_by_key(|(_, s)| s.since_ms);
        all
    }

    pub fn mode(&self) -> Mode {
        self.config().mode
    }

    pub fn prefix_digits(&self) -> usize {
        self.config().prefix_digits
    }
}

/// Reads the suspensions again every [`REFRESH`] until `stop`.
pub async fn keep_fresh(guard: Arc<Guard>, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REFRESH) => {}
        }
        if let Err(e) = guard.refresh().await {
            tracing::warn!(error = %e, "fraud guard: suspensions not read again");
        }
    }
}

/// Why a prefix should be suspended now, if it should.
fn judge(window: &Window, config: &FraudConfig, now_minute: u64, baseline_known: bool) -> Option<String> {
    let window_minutes = config.window.as_secs() / 60;
    let grace_minutes = config.approval_grace.as_secs().div_ceil(60);
    let (mut settled, mut approved, mut day, mut this_minute) = (0u64, 0u64, 0u64, 0u64);
    for m in &window.minutes {
        let age = now_minute.saturating_sub(m.at);
        if age == 0 {
            this_minute += u64::from(m.sends);
        } else {
            day += u64::from(m.sends);
        }
        if age < window_minutes && age >= grace_minutes {
            settled += u64::from(m.sends);
            approved += u64::from(m.approved);
        }
    }
    if settled >= u64::from(config.min_sends) && (approved as f64) < config.min_conversion * settled as f64 {
        return Some(format!("{approved} of {settled} codes approved over the last {}", humantime::format_duration(config.window)));
    }
    let average = day as f64 / BASELINE as f64;
    if baseline_known && this_minute >= u64::from(config.spike_sends) && this_minute as f64 > config.spike_factor * average {
        return Some(format!("{this_minute} codes in a minute against {average:.2} a minute over the last day"));
    }
    None
}

/// Forgets the least recently seen tenth of the prefixes.
fn forget_least_recent(prefixes: &mut HashMap<String, Window>) {
    let mut seen: Vec<u64> = prefixes.values().map(Window::last_seen).collect();
    let cut = seen.len() / 10;
    let (_, &mut threshold, _) = seen.select_nth_unstable(cut);
    prefixes.retain(|_, w| w.last_seen() > threshold);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_the_country_code_and_the_next_digits() {
        assert_eq!(prefix_of("+447700900123", 3).as_deref(), Some("+44770"));
        assert_eq!(prefix_of("+14155550123", 3).as_deref(), Some("+1415"));
        assert_eq!(prefix_of("+2348031234567", 2).as_deref(), Some("+23480"));
        assert_eq!(prefix_of("+999123", 3), None);
    }

    /// A refresh that reads the store between a decision here and its write must not take it
    /// back: a suspension not yet written stays, a lift not yet written is not undone.
    #[tokio::test]
    async fn a_refresh_keeps_what_was_decided_here_until_the_store_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &crate::store::StoreOptions::default()).await.unwrap();
        let guard = Guard::new(store.clone(), FraudConfig::default());
        let to = "+447911000001";
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert!(guard.sent("+447700900001", start).is_none(), "a first code starts the history");
        let burst = start + Duration::from_secs(25 * 3600);
        let suspension = (0..FraudConfig::default().spike_sends).find_map(|_| guard.sent(to, burst)).expect("a spike suspends");
        let refused = |at| matches!(guard.admit(to, false, at), Admission::Refuse { .. });
        guard.refresh().await.unwrap();
        assert!(refused(burst), "a suspension not yet in the store was dropped by a refresh");
        guard.record(suspension).await.unwrap();
        guard.refresh().await.unwrap();
        assert!(refused(burst), "the stored suspension holds");

        let later = burst + FraudConfig::default().suspend_for + Duration::from_secs(60);
        let lift = guard.approved(to, to_ms(later), later).expect("an approval while probed lifts");
        guard.refresh().await.unwrap();
        assert!(guard.suspensions().is_empty(), "a lift not yet in the store was undone by a refresh");
        guard.record(lift).await.unwrap();
        guard.refresh().await.unwrap();
        assert!(guard.suspensions().is_empty());
        store.close().await.unwrap();
    }

    fn window(minutes: &[(u64, u32, u32)]) -> Window {
        Window { minutes: minutes.iter().map(|&(at, sends, approved)| Minute { at, sends, approved }).collect() }
    }

    #[test]
    fn low_conversion_and_spikes_are_judged_and_young_sends_wait() {
        let config = FraudConfig::default();
        // 40 settled sends, 2 approved: 5 %.
        assert!(judge(&window(&[(1000, 40, 2)]), &config, 1010, false).unwrap().contains("2 of 40"));
        // The same sends within the approval grace are not judged yet.
        assert!(judge(&window(&[(1009, 40, 2)]), &config, 1010, false).is_none());
        // Converting 50 %: fine.
        assert!(judge(&window(&[(1000, 40, 20)]), &config, 1010, false).is_none());
        // 25 sends this minute against none before: a spike, once there is a day of history.
        assert!(judge(&window(&[(1010, 25, 0)]), &config, 1010, true).unwrap().contains("25 codes in a minute"));
        assert!(judge(&window(&[(1010, 25, 0)]), &config, 1010, false).is_none());
        // A prefix that always sees 30 a minute is not spiking at 25.
        let busy: Vec<(u64, u32, u32)> = (0..1440).map(|i| (i, 30, 20)).collect();
        assert!(judge(&window(&busy), &config, 1439, true).is_none());
    }
}
