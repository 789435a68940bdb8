//! The receipt window (sled only): the correlation of recent submits, held in memory with one
//! time-ordered `t` row each, so that a crash loses none of it.
//!
//! Why: receipts nearly always come within seconds of their submit, and carriers that hand out
//! random SMSC ids put each `r` (receipt index) row on a random leaf of a large tree, which sled
//! reads back from its file to add one row (259-328 MB read back over a 150,000-message bench,
//! 2-4 MB with the window; README, Performance). A `t` row is keyed by the submit's time, so it lands
//! on the leaf being filled now. A receipt looks here first; a final one deletes the `t` row in
//! its own write (while its page is still in the cache; the entry stays, so a duplicate is still
//! known as late). Once an entry is older than `keep_for` (or more than `max` are held) the mover
//! writes an `r` row for it if its part still waits for a final receipt, and deletes its `t`
//! row. A message that got its receipt in time never gets an `r` row.
//!
//! On PostgreSQL every node must find every receipt (another node's bind may deliver it), so the
//! `r` row is written with the submit, and there is no window.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::engine::Writes;
use super::{Store, StoreError, keys, record};

/// How often the mover looks for entries due.
const MOVE_EVERY: Duration = Duration::from_secs(1);

/// How many entries one step of the mover takes at most. sled writes on the calling task, and
/// an `r` row lands on a random page that may have to be read back first: small steps, with a
/// yield between them, keep the mover from holding a worker thread (and the requests behind it).
const STEP: usize = 64;

/// Recent submits' receipt index rows, not (yet) written as `r` rows.
pub(super) struct Window {
    held: Mutex<Held>,
    keep_for_ms: u64,
    max: usize,
}

#[derive(Default)]
struct Held {
    /// `r` row key → its value, and whether that part has had its final receipt.
    by_key: HashMap<Vec<u8>, Entry>,
    /// Every entry, in submit order.
    order: VecDeque<Due>,
}

struct Entry {
    value: Vec<u8>,
    at_ms: u64,
    /// Its part had its final receipt, and its `t` row is gone (or never was).
    answered: bool,
}

/// An entry the mover takes out of the window.
pub(super) struct Due {
    pub(super) at_ms: u64,
    pub(super) index_key: Vec<u8>,
    pub(super) value: Vec<u8>,
    /// What moving it writes (set by [`Window::due`]).
    pub(super) moves: Moves,
}

/// What moving an entry out of the window writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Moves {
    /// Its part still waits for a final receipt: its `r` row, then the `t` row's removal.
    IndexRow,
    /// It had its final receipt (its `t` row went with it): nothing.
    Nothing,
    /// A newer submit took its key, or its message is being deleted: the `t` row's removal
    /// (if it is still there).
    WindowRow,
}

impl Window {
    pub(super) fn new(keep_for: Duration, max: usize) -> Window {
        Window { held: Mutex::new(Held::default()), keep_for_ms: keep_for.as_millis() as u64, max }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds the index row `index_key` → `value` of a submit at `at_ms`, replacing an older one
    /// under the same key (the SMSC reused an id: the newer message is meant). `answered`: its
    /// final receipt came before it (held), and it has no `t` row.
    pub(super) fn insert(&self, at_ms: u64, index_key: Vec<u8>, value: Vec<u8>, answered: bool) {
        let mut held = self.held();
        held.by_key.insert(index_key.clone(), Entry { value: value.clone(), at_ms, answered });
        held.order.push_back(Due { at_ms, index_key, value, moves: Moves::Nothing });
    }

    /// Entries held now (what `max` caps).
    fn len(&self) -> usize {
        self.held().order.len()
    }

    /// The index row value held under `index_key`.
    pub(super) fn get(&self, index_key: &[u8]) -> Option<Vec<u8>> {
        self.held().by_key.get(index_key).map(|e| e.value.clone())
    }

    /// The `t` row of the entry `index_key` → `value` if it has one: its part still waits for
    /// its final receipt.
    pub(super) fn row_of(&self, index_key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        let held = self.held();
        let entry = held.by_key.get(index_key).filter(|e| e.value == value && !e.answered)?;
        Some(keys::window(entry.at_ms, value))
    }

    /// Notes that the part `value` names had its final receipt, written with the removal of its
    /// `t` row ([`Window::row_of`]): it needs no `r` row.
    pub(super) fn answered(&self, index_key: &[u8], value: &[u8]) {
        if let Some(entry) = self.held().by_key.get_mut(index_key).filter(|e| e.value == value) {
            entry.answered = true;
        }
    }

    /// Drops the entry `index_key` → `value` (its message is being deleted).
    pub(super) fn forget(&self, index_key: &[u8], value: &[u8]) {
        let mut held = self.held();
        if held.by_key.get(index_key).is_some_and(|e| e.value == value) {
            held.by_key.remove(index_key);
        }
    }

    /// Takes the oldest entries due at `now_ms` (older than `keep_for`, or past `max`), at most
    /// [`STEP`]. They stay findable until [`Window::moved`] (their rows are not written yet).
    pub(super) fn due(&self, now_ms: u64) -> Vec<Due> {
        let mut held = self.held();
        let mut due = Vec::new();
        while due.len() < STEP {
            let past_max = held.order.len() > self.max;
            match held.order.front() {
                Some(first) if past_max || first.at_ms.saturating_add(self.keep_for_ms) <= now_ms => {}
                _ => break,
            }
            let Some(mut entry) = held.order.pop_front() else { break };
            entry.moves = match held.by_key.get(&entry.index_key).filter(|e| e.value == entry.value && e.at_ms == entry.at_ms) {
                Some(e) if e.answered => Moves::Nothing,
                Some(_) => Moves::IndexRow,
                None => Moves::WindowRow,
            };
            due.push(entry);
        }
        due
    }

    /// The rows of `due` are written: they are no longer held here (unless a newer submit took
    /// their key meanwhile).
    pub(super) fn moved(&self, due: &[Due]) {
        let mut held = self.held();
        for entry in due {
            if held.by_key.get(&entry.index_key).is_some_and(|e| e.value == entry.value && e.at_ms == entry.at_ms) {
                held.by_key.remove(&entry.index_key);
            }
        }
    }

    /// Writing the rows of `due` failed: they are held again, oldest first.
    pub(super) fn restore(&self, due: Vec<Due>) {
        let mut held = self.held();
        for entry in due.into_iter().rev() {
            held.order.push_front(entry);
        }
    }
}

impl Store {
    /// Submits in the receipt window now (none on PostgreSQL, which has no window).
    pub fn receipt_window_entries(&self) -> usize {
        self.window.as_ref().map_or(0, Window::len)
    }

    /// Holds again what the window held when the store was last open (its `t` rows).
    pub(super) async fn load_window(&self) -> Result<(), StoreError> {
        let Some(window) = &self.window else { return Ok(()) };
        let mut pages = self.engine.pages(&[keys::WINDOW]);
        while let Some(rows) = pages.next().await? {
            for (key, index_key) in rows {
                match keys::window_entry(&key) {
                    Some((at_ms, value)) => window.insert(at_ms, index_key, value, false),
                    None => tracing::warn!("skipping a receipt window row that does not read"),
                }
            }
        }
        Ok(())
    }

    /// Moves what is due out of the window: an `r` row for each part still waiting for its
    /// final receipt, written before the `t` rows go (a crash keeps a prefix: at worst a `t`
    /// row is held again and moved twice). Returns how many entries moved.
    pub(crate) async fn move_window(&self, now: SystemTime) -> Result<usize, StoreError> {
        let Some(window) = &self.window else { return Ok(0) };
        let mut moved = 0;
        loop {
            let due = window.due(record::to_ms(now));
            if due.is_empty() {
                return Ok(moved);
            }
            let rows = due.iter().filter(|d| d.moves == Moves::IndexRow).map(|d| (d.index_key.clone(), Some(d.value.clone())));
            let gone = due.iter().filter(|d| d.moves != Moves::Nothing).map(|d| (keys::window(d.at_ms, &d.value), None));
            let writes: Writes = rows.chain(gone).collect();
            if !writes.is_empty()
                && let Err(e) = self.engine.write(writes).await
            {
                window.restore(due);
                return Err(e);
            }
            window.moved(&due);
            moved += due.len();
            tokio::task::yield_now().await;
        }
    }

    /// Moves the window's due entries every [`MOVE_EVERY`] until `stop`. Holds the store weakly,
    /// so a store dropped without [`Store::close`] is still let go.
    pub(super) async fn run_mover(store: Weak<Store>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(MOVE_EVERY) => {}
            }
            let Some(store) = store.upgrade() else { return };
            if let Err(e) = store.move_window(SystemTime::now()).await {
                tracing::warn!(error = %e, "cannot move the receipt window's entries into the receipt index; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Vec<u8> {
        vec![b'r', n]
    }

    #[test]
    fn entries_come_due_by_age_or_past_the_maximum_and_only_waiting_ones_need_a_row() {
        let window = Window::new(Duration::from_millis(1000), 3);
        window.insert(0, key(1), vec![1], false);
        window.insert(10, key(2), vec![2], false);
        window.answered(&key(2), &[2]);
        window.answered(&key(1), &[9]); // another message's value: not this entry
        assert!(window.due(999).is_empty(), "nothing is a second old yet");
        let due = window.due(1010);
        assert_eq!(
            due.iter().map(|d| (d.value.clone(), d.moves)).collect::<Vec<_>>(),
            [(vec![1], Moves::IndexRow), (vec![2], Moves::Nothing)]
        );
        assert_eq!(window.get(&key(1)), Some(vec![1]), "findable until its row is written");
        window.moved(&due);
        assert_eq!((window.get(&key(1)), window.len()), (None, 0));

        for n in 0..5 {
            window.insert(2000, key(n), vec![n], false);
        }
        assert_eq!(window.due(2000).len(), 2, "past the maximum of 3");

        let window = Window::new(Duration::ZERO, 1000);
        for n in 0..200 {
            window.insert(0, key(n), vec![n], false);
        }
        assert_eq!(window.due(0).len(), STEP, "one step at a time");
    }

    #[test]
    fn a_newer_submit_under_the_same_key_is_kept_when_the_older_one_moves() {
        let window = Window::new(Duration::ZERO, 10);
        window.insert(0, key(1), vec![1], false);
        window.insert(5, key(1), vec![2], false);
        let due = window.due(0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].moves, Moves::WindowRow, "the key names the newer message now");
        window.moved(&due);
        assert_eq!(window.get(&key(1)), Some(vec![2]));
        window.forget(&key(1), &[1]);
        assert_eq!(window.get(&key(1)), Some(vec![2]), "forgetting the older message leaves the newer");
        window.forget(&key(1), &[2]);
        assert_eq!(window.get(&key(1)), None);
    }

    #[test]
    fn a_failed_move_holds_its_entries_again_in_order() {
        let window = Window::new(Duration::ZERO, 10);
        window.insert(0, key(1), vec![1], false);
        window.insert(1, key(2), vec![2], false);
        let due = window.due(5);
        window.restore(due);
        assert_eq!(window.due(5).iter().map(|d| d.at_ms).collect::<Vec<_>>(), [0, 1]);
    }
}
