//! The fraud guard's rows: a suspension per destination prefix (the guard's own JSON: the store
//! keeps bytes), and the reads its windows are rebuilt from at start.

use super::events::{Emitted, EventType};
use super::record::{MessageId, VerificationId};
use super::verification::VerificationRecord;
use super::{Store, StoreError, decode, keys};

impl Store {
    /// Every suspension row: (prefix, value).
    pub async fn fraud_rows(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let (mut all, mut pages) = (Vec::new(), self.engine.pages(&[keys::FRAUD]));
        while let Some(rows) = pages.next().await? {
            all.extend(rows.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k[1..]).into_owned(), v)));
        }
        Ok(all)
    }

    /// Writes a suspension row and, with it, the `fraud.prefix_suspended` event (`data` its body's
    /// data) for the endpoints that hear every API key.
    pub async fn suspend_prefix(&self, prefix: &str, value: &[u8], data: serde_json::Value, now_ms: u64) -> Result<(), StoreError> {
        let mut events = Emitted::default();
        let subject = self.new_id();
        self.emit(&mut events, EventType::FraudPrefixSuspended, "", &subject, None, now_ms, || data);
        self.write_with_events(vec![(keys::fraud(prefix), Some(value.to_vec()))], events).await
    }

    pub async fn delete_fraud_row(&self, prefix: &str) -> Result<(), StoreError> {
        self.engine.delete(&keys::fraud(prefix)).await.map(drop)
    }

    /// Up to `limit` verifications created at or after `since_ms` (ids are time-ordered), after
    /// `after`, oldest first.
    pub async fn verifications_since(
        &self,
        since_ms: u64,
        after: Option<&VerificationId>,
        limit: usize,
    ) -> Result<Vec<(VerificationId, VerificationRecord)>, StoreError> {
        let rows = match after {
            Some(after) => self.engine.scan(&[keys::VERIFICATION], Some(&keys::verification(after)), limit).await?,
            None => {
                let first = VerificationId(MessageId::first_at(since_ms));
                let start = keys::verification(&first);
                let end = [keys::VERIFICATION + 1];
                self.engine.range(&start, std::ops::Bound::Excluded(&end), limit).await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let Some(id) = keys::id_from(&k[1..]) else { continue };
            if let Some(record) = decode(Some(v), || format!("verification {id}"))? {
                out.push((VerificationId(id), record));
            }
        }
        Ok(out)
    }
}
