//! The PostgreSQL engine (cluster mode): the store's ordered map as one table of byte keys and
//! values, shared by every node.
//!
//! Durability mirrors sled's group commit. Every statement commits with `synchronous_commit =
//! off` (it returns once its WAL is written, not flushed), and [`Postgres::flush`] commits one
//! row with `synchronous_commit = on`, which waits until the WAL up to that commit is flushed
//! (and, with synchronous replication, confirmed by a standby): PostgreSQL's WAL is one sequence,
//! so that covers every commit before it, from every session. One flush per group of waiting
//! writers, as with sled, instead of one per statement.
//!
//! Changes that must see and write rows atomically ([`super::engine::Tx`]) run as transactions
//! under an advisory lock named after what they change (a phone number), which serialises them
//! across every node.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};

use std::collections::BTreeMap;

use super::StoreError;
use super::engine::{Marks, Rows, Writes};
use super::settings::PostgresSettings;

/// The schema, one migration per version; a database at version N runs migrations N+1 onwards.
const MIGRATIONS: &[&str] = &["CREATE TABLE otpgate_kv (key bytea PRIMARY KEY, value bytea NOT NULL);
     CREATE SEQUENCE otpgate_unique;
     CREATE TABLE otpgate_flush (node text PRIMARY KEY, flushes bigint NOT NULL);"];

/// Every node takes this advisory lock around migrations, so two nodes starting at once migrate
/// once.
const MIGRATION_LOCK: i64 = 0x6f74_7067_6174_6502;

/// How long a statement waits for a free connection, or for a new one to be made.
const POOL_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Postgres {
    pool: Pool,
    /// For connections of their own (LISTEN).
    config: tokio_postgres::Config,
    /// This node's row in `otpgate_flush`: nodes never wait on each other's flush row.
    node: String,
}

fn database(e: tokio_postgres::Error) -> StoreError {
    // The driver's messages name the server's complaint, never the password.
    StoreError::Database(match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    })
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => database(e),
        other => StoreError::Database(format!("no database connection: {other}")),
    }
}

/// The advisory lock number of a name.
fn lock_number(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

impl Postgres {
    /// Connects, and creates or migrates the schema.
    pub(super) async fn connect(settings: &PostgresSettings) -> Result<Postgres, StoreError> {
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| StoreError::Database(format!("postgres_url does not parse: {e}")))?;
        if let Some(password) = &settings.password {
            config.password(password.as_bytes());
        }
        // Every statement here reads or writes rows by primary key. A generic plan each (not
        // replanned per call: 17 % of the server's time went to planning), never a sequential
        // scan: planned on a nearly empty table, a generic plan scanned the whole table for
        // every `key = ANY(...)` delete until the next ANALYZE.
        let options = "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan -c enable_seqscan=off";
        config.application_name("otpgate").options(options).connect_timeout(POOL_WAIT);
        let manager =
            Manager::from_config(config.clone(), tokio_postgres::NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let postgres = Postgres { pool, config, node: settings.node.clone() };
        postgres.migrate().await?;
        Ok(postgres)
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(database)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS otpgate_schema (version int NOT NULL)").await.map_err(database)?;
        let row = tx.query_one("SELECT coalesce(max(version), 0) FROM otpgate_schema", &[]).await.map_err(database)?;
        let version: i32 = row.get(0);
        let known = MIGRATIONS.len() as i32;
        if version > known {
            return Err(StoreError::Database(format!(
                "the database's schema is version {version}, newer than this otpgate knows ({known}): upgrade otpgate"
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(migration).await.map_err(database)?;
            tx.execute("INSERT INTO otpgate_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await.map_err(database)?;
        }
        tx.commit().await.map_err(database)
    }

    /// Runs one statement on a pooled connection.
    async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(database)?;
        client.execute(&statement, params).await.map_err(database)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(database)?;
        client.query(&statement, params).await.map_err(database)
    }

    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let client = self.client().await?;
        get_on(&client, key).await
    }

    pub(super) async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.execute(UPSERT, &[&key, &value]).await.map(drop)
    }

    /// Writes `writes` as one statement (module doc of `engine`).
    pub(super) async fn write(&self, writes: Writes) -> Result<(), StoreError> {
        let client = self.client().await?;
        write_on(&client, writes).await
    }

    /// The first row from each `starts[i]` to `ends[i]` (exclusive). Both bounds are index
    /// conditions: with only a lower one, finding nothing walked the rest of the table.
    pub(super) async fn first_under_each(
        &self,
        starts: &[Vec<u8>],
        ends: &[Vec<u8>],
    ) -> Result<Vec<Option<(Vec<u8>, Vec<u8>)>>, StoreError> {
        let rows = self
            .query(
                "SELECT b.i, kv.key, kv.value
                 FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS b(lo, hi, i)
                 CROSS JOIN LATERAL (SELECT key, value FROM otpgate_kv WHERE key >= b.lo AND key < b.hi ORDER BY key LIMIT 1) kv",
                &[&starts, &ends],
            )
            .await?;
        let mut firsts = vec![None; starts.len()];
        for row in rows {
            let i = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
            if let Some(first) = firsts.get_mut(i) {
                *first = Some((row.get(1), row.get(2)));
            }
        }
        Ok(firsts)
    }

    /// The rows of those `keys` that exist, in no particular order.
    pub(super) async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Rows, StoreError> {
        let rows = self.query("SELECT key, value FROM otpgate_kv WHERE key = ANY($1::bytea[])", &[&keys]).await?;
        Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(super) async fn delete(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.query("DELETE FROM otpgate_kv WHERE key = $1 RETURNING value", &[&key]).await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) async fn swap(&self, key: &[u8], old: Option<&[u8]>, new: Option<&[u8]>) -> Result<bool, StoreError> {
        let changed = match (old, new) {
            (None, None) => return Ok(self.get(key).await?.is_none()),
            (None, Some(new)) => {
                self.execute("INSERT INTO otpgate_kv (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&key, &new]).await?
            }
            (Some(old), Some(new)) => {
                self.execute("UPDATE otpgate_kv SET value = $3 WHERE key = $1 AND value = $2", &[&key, &old, &new]).await?
            }
            (Some(old), None) => self.execute("DELETE FROM otpgate_kv WHERE key = $1 AND value = $2", &[&key, &old]).await?,
        };
        Ok(changed == 1)
    }

    /// Up to `limit` rows from `start` (inclusive) to `end` (exclusive, `None`: the end).
    pub(super) async fn range(&self, start: &[u8], end: Option<&[u8]>, inclusive_end: bool, limit: usize) -> Result<Rows, StoreError> {
        let limit = limit as i64;
        let rows = match (end, inclusive_end) {
            (None, _) => self.query("SELECT key, value FROM otpgate_kv WHERE key >= $1 ORDER BY key LIMIT $2", &[&start, &limit]).await?,
            (Some(end), false) => {
                self.query("SELECT key, value FROM otpgate_kv WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3", &[&start, &end, &limit])
                    .await?
            }
            (Some(end), true) => {
                self.query("SELECT key, value FROM otpgate_kv WHERE key >= $1 AND key <= $2 ORDER BY key LIMIT $3", &[&start, &end, &limit])
                    .await?
            }
        };
        Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    pub(super) async fn range_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Rows, StoreError> {
        let limit = limit as i64;
        let rows = self
            .query("SELECT key, value FROM otpgate_kv WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT $3", &[&start, &end, &limit])
            .await?;
        Ok(rows.into_iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The last key from `start` to `end` (exclusive, `None`: the end).
    pub(super) async fn last_key(&self, start: &[u8], end: Option<&[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = match end {
            None => self.query("SELECT key FROM otpgate_kv WHERE key >= $1 ORDER BY key DESC LIMIT 1", &[&start]).await?,
            Some(end) => {
                self.query("SELECT key FROM otpgate_kv WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT 1", &[&start, &end]).await?
            }
        };
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) async fn count(&self, start: &[u8], end: Option<&[u8]>) -> Result<usize, StoreError> {
        let rows = match end {
            None => self.query("SELECT count(*) FROM otpgate_kv WHERE key >= $1", &[&start]).await?,
            Some(end) => self.query("SELECT count(*) FROM otpgate_kv WHERE key >= $1 AND key < $2", &[&start, &end]).await?,
        };
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0)) as usize)
    }

    pub(super) async fn unique(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT nextval('otpgate_unique')", &[]).await?;
        Ok(rows.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
    }

    /// Makes every commit so far durable: one synchronous commit (module doc).
    pub(super) fn flusher(
        &self,
        marks: Marks,
    ) -> impl Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync + 'static {
        // One round trip: the simple query protocol runs the whole transaction from one message
        // (its values as literals: hex keys, the node's name quoted).
        let flush_row = format!(
            "INSERT INTO otpgate_flush (node, flushes) VALUES ({}, 1)
             ON CONFLICT (node) DO UPDATE SET flushes = otpgate_flush.flushes + 1;",
            quote_literal(&self.node)
        );
        let pool = self.pool.clone();
        move || {
            let (pool, keys) = (pool.clone(), marks.take());
            let mut flush = String::from("BEGIN; SET LOCAL synchronous_commit = on;");
            if !keys.is_empty() {
                let keys: Vec<String> = keys.iter().map(|k| bytea_literal(k)).collect();
                flush += &format!(
                    "UPDATE otpgate_kv SET value = {} WHERE value = '' AND key IN ({});",
                    bytea_literal(marks.mark()),
                    keys.join(",")
                );
            }
            flush += &flush_row;
            flush += "COMMIT";
            Box::pin(async move {
                let client = pool.get().await.map_err(|e| pool_error(e).to_string())?;
                let flushed = client.batch_execute(&flush).await.map_err(|e| database(e).to_string());
                if flushed.is_err() {
                    // It may have failed mid-transaction: never hand that connection out again.
                    drop(Object::take(client));
                }
                flushed
            })
        }
    }

    /// Tells every listening node that a message is queued (not durable: a node that misses it
    /// finds the message in its next queue scan).
    pub(super) async fn announce(&self, id: &str) -> Result<(), StoreError> {
        self.query(&format!("SELECT pg_notify('{QUEUED_CHANNEL}', $1)"), &[&id]).await.map(drop)
    }

    /// Announcements, as their payloads, on a connection of its own (reconnecting after a
    /// failure) until `stop` or until the receiver is dropped.
    pub(super) fn listen(&self, stop: tokio_util::sync::CancellationToken) -> tokio::sync::mpsc::Receiver<String> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        let config = self.config.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen_once(&config, &tx, &stop).await {
                    tracing::warn!(error = %e, "listening for queued messages failed; again in a second");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.cancelled() => return,
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    /// Whether the database answers now.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.query("SELECT 1", &[]).await.map(drop)
    }

    /// Starts a transaction that holds the advisory lock named `lock` until it ends.
    pub(super) async fn begin(&self, lock: &str) -> Result<PgTx, StoreError> {
        let client = self.client().await?;
        client.batch_execute("BEGIN").await.map_err(database)?;
        let tx = PgTx { client: Some(client) };
        tx.client()?.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_number(lock)]).await.map_err(database)?;
        Ok(tx)
    }
}

/// The NOTIFY channel of queued messages.
const QUEUED_CHANNEL: &str = "otpgate_queued";

/// One LISTEN connection's life: forwards payloads until it fails, `stop`, or nobody listens.
async fn listen_once(
    config: &tokio_postgres::Config,
    tx: &tokio::sync::mpsc::Sender<String>,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), StoreError> {
    use futures::StreamExt;
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.map_err(database)?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            if messages_tx.send(message).is_err() {
                break;
            }
        }
    });
    let listened = client.batch_execute(&format!("LISTEN {QUEUED_CHANNEL}")).await.map_err(database);
    let outcome = match listened {
        Err(e) => Err(e),
        Ok(()) => loop {
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_string()).await.is_err() {
                            break Ok(());
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Err(database(e)),
                    None => break Err(StoreError::Database("the LISTEN connection closed".into())),
                },
                _ = stop.cancelled() => break Ok(()),
            }
        },
    };
    drop(client);
    driver.abort();
    outcome
}

/// A bytea literal in hex form: only hex digits between the quotes.
fn bytea_literal(bytes: &[u8]) -> String {
    format!("'\\x{}'::bytea", crate::hex::encode(bytes))
}

/// A SQL string literal (standard_conforming_strings, on by default since PostgreSQL 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Rows upserted in one statement.
const UPSERT_MANY: &str = "INSERT INTO otpgate_kv (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

/// Rows deleted in one statement.
const DELETE_MANY: &str = "DELETE FROM otpgate_kv WHERE key = ANY($1::bytea[])";

/// Upserts and deletes in one statement (data-modifying CTEs all run, on one snapshot).
const UPSERT_AND_DELETE: &str = "WITH upserted AS (
         INSERT INTO otpgate_kv (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
     ), deleted AS (
         DELETE FROM otpgate_kv WHERE key = ANY($3::bytea[])
     ) SELECT 1";

/// Writes `writes` as one statement: all or nothing, which keeps any order sled's
/// row-by-row writes rely on. A key written twice takes its last write (one statement may not
/// change a row twice); keys go in key order, so concurrent statements lock rows in one order.
async fn write_on(client: &Object, writes: Writes) -> Result<(), StoreError> {
    let last: BTreeMap<Vec<u8>, Option<Vec<u8>>> = writes.into_iter().collect();
    let (mut keys, mut values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
    for (key, value) in last {
        match value {
            Some(value) => {
                keys.push(key);
                values.push(value);
            }
            None => deletes.push(key),
        }
    }
    // The plainest statement for the rows at hand: the CTE costs the server more.
    let (sql, params): (&str, &[&(dyn tokio_postgres::types::ToSql + Sync)]) = match (keys.is_empty(), deletes.is_empty()) {
        (true, true) => return Ok(()),
        (false, true) => (UPSERT_MANY, &[&keys, &values]),
        (true, false) => (DELETE_MANY, &[&deletes]),
        (false, false) => (UPSERT_AND_DELETE, &[&keys, &values, &deletes]),
    };
    let statement = client.prepare_cached(sql).await.map_err(database)?;
    client.execute(&statement, params).await.map_err(database).map(drop)
}

const UPSERT: &str = "INSERT INTO otpgate_kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";

async fn get_on(client: &Object, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let statement = client.prepare_cached("SELECT value FROM otpgate_kv WHERE key = $1").await.map_err(database)?;
    let rows = client.query(&statement, &[&key]).await.map_err(database)?;
    Ok(rows.first().map(|row| row.get(0)))
}

/// An open transaction on its own connection. Dropped without [`PgTx::commit`], it is rolled
/// back before the connection goes back to the pool.
pub(super) struct PgTx {
    client: Option<Object>,
}

impl PgTx {
    fn client(&self) -> Result<&Object, StoreError> {
        self.client.as_ref().ok_or_else(|| StoreError::Database("the transaction has ended".into()))
    }

    pub(super) async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_on(self.client()?, key).await
    }

    /// Writes `writes` (a value, or `None` to delete) and commits.
    pub(super) async fn commit(mut self, writes: Writes) -> Result<(), StoreError> {
        let client = self.client()?;
        write_on(client, writes).await?;
        client.batch_execute("COMMIT").await.map_err(database)?;
        self.client = None;
        Ok(())
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Not committed (an error, a refused change, a caller that went away): roll back
            // before the connection is reused. Outside a runtime the connection is dropped,
            // which ends the transaction on the server.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::settings::Backend;
    use crate::store::{NewMessage, Store, StoreOptions};
    use crate::throwaway_pg::ThrowawayPostgres;

    fn options(server: &ThrowawayPostgres, node: &str) -> StoreOptions {
        let pg = PostgresSettings { url: server.url(), password: None, pool_size: 4, node: node.into() };
        StoreOptions { backend: Backend::Postgres(pg), ..StoreOptions::default() }
    }

    fn message(now: SystemTime) -> NewMessage {
        NewMessage {
            owner: "k".into(),
            to: "+447700900123".into(),
            from: None,
            text: "hi".into(),
            deadline: now + Duration::from_secs(60),
            encoding: None,
            segments: 1,
            options: Default::default(),
        }
    }

    async fn schema_versions(server: &ThrowawayPostgres) -> Vec<i32> {
        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let rows = client.query("SELECT version FROM otpgate_schema ORDER BY version", &[]).await.unwrap();
        rows.iter().map(|row| row.get(0)).collect()
    }

    /// Nodes starting at once create the schema once; a database migrated by a newer otpgate is
    /// refused with a clear error rather than misread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_migrate_once_and_a_newer_schema_is_refused() {
        let Some(server) = ThrowawayPostgres::for_tests().await.unwrap() else { return };
        let dir = tempfile::tempdir().unwrap();
        let opens = (0..4).map(|n| {
            let options = options(&server, &format!("gw-{n}"));
            let path = dir.path().to_path_buf();
            tokio::spawn(async move { Store::open(&path, &options).await })
        });
        let stores: Vec<_> = futures::future::join_all(opens).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
        assert_eq!(schema_versions(&server).await, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
        for store in stores {
            store.close().await.unwrap();
        }

        let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.execute("INSERT INTO otpgate_schema (version) VALUES (99)", &[]).await.unwrap();
        let refused = Store::open(dir.path(), &options(&server, "gw-0")).await.err().expect("a newer schema is refused");
        assert!(refused.to_string().contains("version 99") && refused.to_string().contains("upgrade otpgate"), "{refused}");
    }

    /// The database going away fails writes with an error (a 503 at the door), without marking
    /// the store broken for good as a sled I/O error does; writes work again once it is back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_outage_fails_writes_until_it_returns() {
        let Some(mut server) = ThrowawayPostgres::for_tests().await.unwrap() else { return };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &options(&server, "gw-1")).await.unwrap();
        let now = SystemTime::now();
        store.insert_message(message(now), None, now).await.unwrap();

        server.stop();
        let failed = store.insert_message(message(now), None, now).await.expect_err("no 2xx without a commit");
        assert!(matches!(failed, StoreError::Database(_)), "{failed}");

        server.resume().await.unwrap();
        let (id, _) = store.insert_message(message(now), None, now).await.expect("writes work again");
        assert!(store.healthy());
        assert!(store.message(&id).await.unwrap().is_some());
        assert_eq!(store.counts().await.unwrap().1, 2, "both acknowledged messages are queued");
        store.close().await.unwrap();
    }
}
