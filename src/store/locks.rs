//! Striped write locks. A change to a message takes the stripe of its id; a change that reads
//! or writes the receipt correlation of an SMSC id takes that id's stripe first (ids sorted, so
//! two changes never wait on each other in a circle). Changes to different messages and ids
//! run side by side: one lock for everything queued every receipt behind every submit.
//! Verification changes keep one lock of their own (they are fewer, and a cluster engine will
//! lock them by number in the database).

use std::hash::{DefaultHasher, Hash, Hasher};

use tokio::sync::{Mutex, MutexGuard};

use super::record::MessageId;

const STRIPES: usize = 64;

pub(super) struct Locks {
    correlation: Vec<Mutex<()>>,
    messages: Vec<Mutex<()>>,
    pub(super) verifications: Mutex<()>,
}

/// Stripes held; released when dropped.
pub(super) struct Held<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

fn stripe(value: impl Hash) -> usize {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    (hasher.finish() % STRIPES as u64) as usize
}

impl Locks {
    pub(super) fn new() -> Locks {
        let stripes = || (0..STRIPES).map(|_| Mutex::new(())).collect();
        Locks { correlation: stripes(), messages: stripes(), verifications: Mutex::new(()) }
    }

    /// The stripes of `carrier`'s SMSC ids `smsc_ids` (canonical), then of `message`.
    pub(super) async fn take(&self, carrier: &str, smsc_ids: &[&str], message: Option<&MessageId>) -> Held<'_> {
        let pairs: Vec<(&str, &str)> = smsc_ids.iter().map(|id| (carrier, *id)).collect();
        let held = self.take_pairs(&pairs).await;
        match message {
            Some(id) => self.and_messages(held, std::slice::from_ref(id)).await,
            None => held,
        }
    }

    /// The stripes of SMSC ids (canonical), each with its carrier.
    pub(super) async fn take_pairs(&self, ids: &[(&str, &str)]) -> Held<'_> {
        let mut stripes: Vec<usize> = ids.iter().map(|(carrier, id)| stripe((*carrier, *id))).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut held = Vec::with_capacity(stripes.len() + 1);
        for i in stripes {
            held.push(self.correlation[i].lock().await);
        }
        Held { _guards: held }
    }

    /// A message's stripe alone.
    pub(super) async fn message(&self, id: &MessageId) -> Held<'_> {
        self.take("", &[], Some(id)).await
    }

    /// Adds the stripes of `messages` to correlation stripes already held.
    pub(super) async fn and_messages<'a>(&'a self, mut held: Held<'a>, messages: &[MessageId]) -> Held<'a> {
        let mut stripes: Vec<usize> = messages.iter().map(stripe).collect();
        stripes.sort_unstable();
        stripes.dedup();
        for i in stripes {
            held._guards.push(self.messages[i].lock().await);
        }
        held
    }
}
