//! `[store]`: which engine, retention and the engines' tuning, with their checks.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{StoreError, StoreOptions};
use crate::duration::DAY;

/// Where the rows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded, in `server.data_dir`: one node, nothing to install.
    #[default]
    Sled,
    /// A PostgreSQL database shared by every node of a cluster.
    Postgres,
}

/// How to reach PostgreSQL. The password is never shown (not in `Debug` either).
#[derive(Clone, PartialEq)]
pub struct PostgresSettings {
    pub url: String,
    pub password: Option<String>,
    pub pool_size: usize,
    /// This node's name (`cluster.node_name`): its rows of per-node bookkeeping.
    pub node: String,
}

impl fmt::Debug for PostgresSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("pool_size", &self.pool_size)
            .field("node", &self.node)
            .finish()
    }
}

/// The engine a store opens, with its settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Backend {
    #[default]
    Sled,
    Postgres(PostgresSettings),
}

/// The store's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: BackendKind,
    /// `postgres://user@host:port/database`, without a password.
    pub postgres_url: Option<String>,
    /// A file holding the database password (else `PGPASSWORD`, else none).
    pub postgres_password_file: Option<PathBuf>,
    /// Database connections this node keeps open, at most. Statements are short and pipelined:
    /// more connections than the database has cores mostly add switching (on the 2-core bench
    /// machine, 8 gave 3,300 msg/s end to end, 16 gave 2,500 and 4 gave 2,650).
    pub pool_size: usize,
    /// Finished messages are deleted this long after they finished; a sent one not before
    /// this long after its validity ended, final receipt or not.
    #[serde(deserialize_with = "crate::duration::human")]
    pub retention: Duration,
    /// sled's page cache in MiB (its own default, 1 GiB, is too much for most hosts).
    pub cache_capacity_mb: u64,
    /// How often sled's background thread compacts its log (moving live pages out of mostly
    /// dead segments so they can be reused), spending at most half of each interval on it.
    /// sled's own 500 ms left the file 5x its live data at full load; 20 ms keeps it near 2x
    /// for a few percent more CPU (README: Performance).
    #[serde(deserialize_with = "crate::duration::human")]
    pub compact_every: Duration,
    /// Receipts kept while they wait for their submit_sm_resp, at most (more are dropped and
    /// counted): receipts for unknown ids must not fill the disk.
    pub max_held_receipts: usize,
    /// How long such a receipt waits before it is dropped as unmatched.
    #[serde(deserialize_with = "crate::duration::human")]
    pub hold_receipts_for: Duration,
    /// How long a submit's SMSC id is found through the receipt window (sled only): in memory
    /// and a time-ordered row, so a carrier's random ids do not each cost a read of a random
    /// page of the receipt index. After it, a message still waiting for its receipt gets its
    /// index row; one that had it gets none (a duplicate receipt later counts as unmatched).
    #[serde(deserialize_with = "crate::duration::human")]
    pub receipt_window: Duration,
    /// Submits in the receipt window at most (about 250 bytes of memory each); older ones
    /// leave it early.
    pub receipt_window_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: BackendKind::Sled,
            postgres_url: None,
            postgres_password_file: None,
            pool_size: 8,
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_capacity_mb: 2,
            compact_every: Duration::from_millis(20),
            max_held_receipts: 10_000,
            hold_receipts_for: Duration::from_secs(600),
            receipt_window: Duration::from_secs(60),
            receipt_window_max: 10_000,
        }
    }
}

impl StoreConfig {
    /// What opening the store needs of these settings; `node` names this node. Reads the
    /// database password.
    pub fn options(&self, node: &str) -> Result<StoreOptions, StoreError> {
        let backend = match self.backend {
            BackendKind::Sled => Backend::Sled,
            BackendKind::Postgres => Backend::Postgres(PostgresSettings {
                url: self.postgres_url.clone().unwrap_or_default(),
                password: self.password()?,
                pool_size: self.pool_size,
                node: node.to_string(),
            }),
        };
        Ok(StoreOptions {
            backend,
            cache_capacity_bytes: self.cache_capacity_mb * 1024 * 1024,
            compact_every: self.compact_every,
            max_held_receipts: self.max_held_receipts,
            hold_receipts_for: self.hold_receipts_for,
            receipt_window: self.receipt_window,
            receipt_window_max: self.receipt_window_max,
        })
    }

    /// The database password: `postgres_password_file` (its first line), else `PGPASSWORD`.
    fn password(&self) -> Result<Option<String>, StoreError> {
        match &self.postgres_password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| StoreError::Database(format!("cannot read postgres_password_file {}: {e}", path.display())))?;
                Ok(Some(text.lines().next().unwrap_or_default().to_string()))
            }
            None => Ok(std::env::var("PGPASSWORD").ok()),
        }
    }

    /// The first setting out of bounds: (key under `store.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        match (self.backend, &self.postgres_url) {
            (BackendKind::Postgres, None) => return Some(("postgres_url", "is required with backend = \"postgres\"".into())),
            (BackendKind::Sled, Some(_)) => return Some(("postgres_url", "is set but backend is \"sled\"".into())),
            (BackendKind::Postgres, Some(url)) => {
                // The driver's parse error never repeats the URL, so no password leaks through it.
                match url.parse::<tokio_postgres::Config>() {
                    Err(e) => return Some(("postgres_url", format!("is not a PostgreSQL URL: {e}"))),
                    Ok(parsed) if parsed.get_password().is_some() => {
                        return Some((
                            "postgres_url",
                            "must not hold a password (it would show wherever the URL does): use postgres_password_file or PGPASSWORD"
                                .into(),
                        ));
                    }
                    Ok(_) => {}
                }
            }
            (BackendKind::Sled, None) => {}
        }
        if self.backend == BackendKind::Postgres
            && let Some(path) = &self.postgres_password_file
            && let Err(e) = std::fs::metadata(path)
        {
            return Some(("postgres_password_file", format!("cannot read {}: {e}", path.display())));
        }
        if !(1..=1000).contains(&self.pool_size) {
            return Some(("pool_size", "must be 1-1000".into()));
        }
        if !(1..=1_048_576).contains(&self.cache_capacity_mb) {
            return Some(("cache_capacity_mb", "must be 1-1048576 (1 MiB to 1 TiB)".into()));
        }
        if !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&self.compact_every) {
            return Some(("compact_every", "must be between 1ms and 10s".into()));
        }
        if !(Duration::from_secs(60)..=3650 * DAY).contains(&self.retention) {
            return Some(("retention", "must be between 1m and 3650d".into()));
        }
        if !(1..=1_000_000).contains(&self.max_held_receipts) {
            return Some(("max_held_receipts", "must be 1-1000000".into()));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&self.hold_receipts_for) {
            return Some(("hold_receipts_for", "must be between 1s and 24h".into()));
        }
        if self.receipt_window > Duration::from_secs(3600) {
            return Some(("receipt_window", "must be at most 1h".into()));
        }
        if !(1..=1_000_000).contains(&self.receipt_window_max) {
            return Some(("receipt_window_max", "must be 1-1000000".into()));
        }
        None
    }
}
