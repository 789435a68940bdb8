//! Records listed newest first, a page at a time (`GET /v1/messages`, `GET /v1/verifications`).
//! Ids sort by creation time, so a time window is a key range and a cursor is the last id a page
//! read: records created meanwhile sort after every page already handed out, and never shift
//! one.

use super::record::{MessageId, MessageRecord, VerificationId};
use super::verification::VerificationRecord;
use super::{Store, StoreError, decode, keys};

/// Which records, created when: `since_ms` (inclusive) up to `before` (exclusive; the cursor or
/// the end of the window).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since_ms: u64,
    pub before: MessageId,
}

impl Store {
    /// Up to `limit` messages of `window`, newest first.
    pub async fn messages_back(&self, window: Window, limit: usize) -> Result<Vec<(MessageId, MessageRecord)>, StoreError> {
        self.records_back(keys::MESSAGE, window, limit, "message").await
    }

    /// Up to `limit` verifications of `window`, newest first.
    pub async fn verifications_back(&self, window: Window, limit: usize) -> Result<Vec<(VerificationId, VerificationRecord)>, StoreError> {
        let rows = self.records_back(keys::VERIFICATION, window, limit, "verification").await?;
        Ok(rows.into_iter().map(|(id, record)| (VerificationId(id), record)).collect())
    }

    /// The verification `owner` has pending for the number `to`, if any.
    pub async fn pending_verification(&self, owner: &str, to: &str) -> Result<Option<VerificationId>, StoreError> {
        Ok(self.engine.get(&keys::pending(owner, to)).await?.and_then(|bytes| keys::id_from(&bytes)).map(VerificationId))
    }

    async fn records_back<T: super::codec::Stored>(
        &self,
        prefix: u8,
        window: Window,
        limit: usize,
        what: &str,
    ) -> Result<Vec<(MessageId, T)>, StoreError> {
        let start = keys::key(prefix, &[&MessageId::first_at(window.since_ms).0]);
        let end = keys::key(prefix, &[&window.before.0]);
        let rows = self.engine.range_back(&start, &end, limit).await?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let Some(id) = keys::id_from(&key[1..]) else { continue };
            if let Some(record) = decode(Some(value), || format!("{what} {id}"))? {
                out.push((id, record));
            }
        }
        Ok(out)
    }
}
