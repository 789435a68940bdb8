//! Idempotency-Key rows: the first answer to a key, replayed for 24 hours.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::codec::Stored;
use super::record::{self, MessageId};
use super::{Store, StoreError, encode, keys};

/// How long an Idempotency-Key is remembered.
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What an Idempotency-Key lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// Not seen: go ahead.
    New,
    /// Seen with the same body: answer as the first time (the id, and the stored answer when
    /// one was kept).
    Replay(MessageId, Option<String>),
    /// Seen with another body.
    Conflict,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    body_sha256: String,
    id: String,
    created_ms: u64,
    #[serde(default)]
    response: Option<String>,
}

super::codec::stored_as_json!(Entry);

/// The key of `owner`'s Idempotency-Key `key`: hashed, so neither is stored as given.
fn row_key(owner: &str, key: &str) -> Vec<u8> {
    let digest = Sha256::new().chain_update(owner.as_bytes()).chain_update([0]).chain_update(key.as_bytes()).finalize();
    let mut k = vec![keys::IDEMPOTENCY];
    k.extend_from_slice(&digest);
    k
}

/// The row that remembers `owner`'s `key` as answered by `id` (and `response`, when the
/// answer is kept whole).
pub(super) fn row(
    owner: &str,
    key: &str,
    body_sha256: &str,
    id: &MessageId,
    created_ms: u64,
    response: Option<&str>,
) -> (Vec<u8>, Vec<u8>) {
    let entry = Entry { body_sha256: body_sha256.to_string(), id: id.to_string(), created_ms, response: response.map(str::to_string) };
    (row_key(owner, key), encode(&entry))
}

impl Store {
    /// Looks up an Idempotency-Key of `owner`; `body_sha256` identifies the request body.
    pub async fn check_idempotency(&self, owner: &str, key: &str, body_sha256: &str, now: SystemTime) -> Result<Idempotency, StoreError> {
        let Some(bytes) = self.engine.get(&row_key(owner, key)).await? else {
            return Ok(Idempotency::New);
        };
        let entry = Entry::from_row(&bytes).ok_or_else(|| StoreError::Corrupt("idempotency".into()))?;
        let expired = record::from_ms(entry.created_ms) + IDEMPOTENCY_WINDOW < now;
        if expired {
            return Ok(Idempotency::New);
        }
        if entry.body_sha256 != body_sha256 {
            return Ok(Idempotency::Conflict);
        }
        let id = entry.id.parse().map_err(|_| StoreError::Corrupt("idempotency".into()))?;
        Ok(Idempotency::Replay(id, entry.response))
    }

    /// Deletes keys past [`IDEMPOTENCY_WINDOW`] (and rows that do not decode).
    pub(super) async fn sweep_idempotency(&self, now: SystemTime) -> Result<(), StoreError> {
        let cutoff = now.checked_sub(IDEMPOTENCY_WINDOW).unwrap_or(std::time::UNIX_EPOCH);
        let mut pages = self.engine.pages(&[keys::IDEMPOTENCY]);
        while let Some(rows) = pages.next().await? {
            for (k, v) in rows {
                let stale = Entry::from_row(&v).is_none_or(|e| record::from_ms(e.created_ms) < cutoff);
                if stale {
                    self.engine.delete(&k).await?;
                }
            }
        }
        Ok(())
    }
}
