//! What a bench run shows while it runs and records for its plot: a progress line per phase
//! (a bar on a terminal, a plain line every few seconds otherwise), the machine's idle share
//! over a span, and each phase's timeline (when each request was sent and how long it took).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The whole machine's CPU counters (`/proc/stat`): idle (with iowait) and total jiffies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Machine {
    idle: u64,
    total: u64,
}

impl Machine {
    pub(super) fn now() -> Machine {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user already).
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total = fields.iter().take(8).sum();
        Machine { idle, total }
    }

    /// The share of the machine's CPU time that was idle since `self` (0-1).
    pub(super) fn idle_since(&self) -> f64 {
        let now = Machine::now();
        let total = now.total.saturating_sub(self.total);
        if total == 0 { 0.0 } else { now.idle.saturating_sub(self.idle) as f64 / total as f64 }
    }
}

/// One phase's requests: (sent, from the phase's start; how long its answer took).
#[derive(Debug, Clone)]
pub(super) struct Timeline {
    pub name: String,
    pub samples: Vec<(Duration, Duration)>,
}

/// Every phase's timeline so far, for `--plot`.
static TIMELINES: Mutex<Vec<Timeline>> = Mutex::new(Vec::new());

pub(super) fn record(timeline: Timeline) {
    TIMELINES.lock().unwrap_or_else(|p| p.into_inner()).push(timeline);
}

pub(super) fn timelines() -> Vec<Timeline> {
    TIMELINES.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Shows a phase's progress on stderr until dropped, then its total.
pub(super) struct Progress {
    name: String,
    count: usize,
    started: Instant,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(name: &str, count: usize) -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let (seen, label) = (done.clone(), name.to_string());
        let terminal = std::io::stderr().is_terminal();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let (every, mut last) = (if terminal { Duration::from_millis(500) } else { Duration::from_secs(5) }, 0usize);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let now = seen.load(Ordering::Relaxed);
                let rate = (now - last) as f64 / every.as_secs_f64();
                last = now;
                let share = now as f64 / count.max(1) as f64;
                let mut err = std::io::stderr().lock();
                let _ = match terminal {
                    true => {
                        let filled = (share * 30.0) as usize;
                        write!(
                            err,
                            "\r{label:<10} [{}{}] {now}/{count} {rate:.0}/s {:.0}s ",
                            "#".repeat(filled),
                            ".".repeat(30 - filled.min(30)),
                            started.elapsed().as_secs_f64()
                        )
                    }
                    false => writeln!(err, "bench: {label}: {now}/{count} messages ({:.0} %), {rate:.0}/s", share * 100.0),
                };
            }
        });
        Progress { name: name.to_string(), count, started: Instant::now(), done, task }
    }

    pub(super) fn counter(&self) -> Arc<AtomicUsize> {
        self.done.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        let (done, seconds) = (self.done.load(Ordering::Relaxed), self.started.elapsed().as_secs_f64());
        let mut err = std::io::stderr().lock();
        if err.is_terminal() {
            let _ = writeln!(err);
        }
        let _ = writeln!(err, "bench: {}: {done}/{} messages in {seconds:.1} s", self.name, self.count);
    }
}
