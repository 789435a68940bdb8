//! The dispatch leader's lease: one row in PostgreSQL, taken by whichever node finds it expired,
//! renewed by its holder every third of the lease, and numbered by a fencing token that grows with
//! every new term.
//!
//! The database's clock decides expiry (one clock for every node). The holder's own deadline is
//! measured on its monotonic clock from *before* it sent the renewal, so it always ends its term
//! before the database lets anyone else start one: a leader that stalls (SIGSTOP, a long pause, a
//! lost database) finds its term over when it wakes, before it sends anything more. Writes a
//! leader makes can also carry the token, so the database refuses a deposed leader's.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Why the lease table could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("leader lease: {0}")]
pub struct LeaseError(#[from] tokio_postgres::Error);

/// A term as leader: its fencing token, and the instant (this node's monotonic clock) it ends
/// unless renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub token: i64,
    pub until: Instant,
}

impl Term {
    /// Whether the term still holds now: checked before every act only a leader may do.
    pub fn holds(&self) -> bool {
        Instant::now() < self.until
    }
}

/// One node's part in the election.
pub struct Elector {
    client: Client,
    node: String,
    lease: Duration,
}

/// Any lock number will do, as long as every node uses the same one for the schema.
const SCHEMA_LOCK: i64 = 0x6f74_7067_6174_6501;

impl Elector {
    /// Creates the lease row if it is missing. Safe when several nodes start at once: the DDL
    /// runs under a transaction-scoped advisory lock.
    pub async fn prepare(client: &mut Client) -> Result<(), LeaseError> {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]).await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS otpgate_leader (
                 id int PRIMARY KEY CHECK (id = 1),
                 node text NOT NULL,
                 token bigint NOT NULL,
                 expires_at timestamptz NOT NULL
             );
             INSERT INTO otpgate_leader VALUES (1, '', 0, 'epoch') ON CONFLICT (id) DO NOTHING;",
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// `node` takes part on `client` (a connection of its own: renewals must not queue behind
    /// other work); a term lasts `lease` unless renewed.
    pub fn new(client: Client, node: &str, lease: Duration) -> Elector {
        Elector { client, node: node.to_string(), lease }
    }

    /// One round: renews `current` if it is still ours, else takes the lease if it has expired.
    /// Returns the term now held, or `None`.
    pub async fn round(&self, current: Option<Term>) -> Result<Option<Term>, LeaseError> {
        let sent = Instant::now();
        let ours = current.map_or(-1, |t| t.token);
        let row = self
            .client
            .query_opt(
                "UPDATE otpgate_leader SET
                     token = CASE WHEN node = $1 AND token = $2 THEN token ELSE token + 1 END,
                     node = $1,
                     expires_at = now() + make_interval(secs => $3)
                 WHERE id = 1 AND ((node = $1 AND token = $2 AND expires_at > now()) OR expires_at <= now())
                 RETURNING token",
                &[&self.node, &ours, &self.lease.as_secs_f64()],
            )
            .await?;
        // A tenth of the lease in hand: our term ends before the database's does.
        Ok(row.map(|row| Term { token: row.get(0), until: sent + self.lease - self.lease / 10 }))
    }

    /// Takes part until `stop` or until its connection is lost: publishes the term while this
    /// node leads, `None` otherwise. A term whose renewal fails (database unreachable) lapses at
    /// its deadline; a lost connection ends it at once.
    pub async fn run(self, terms: watch::Sender<Option<Term>>, stop: CancellationToken) {
        let every = self.lease / 3;
        let mut current: Option<Term> = None;
        loop {
            match self.round(current).await {
                Ok(term) => current = term,
                Err(e) => tracing::warn!(node = %self.node, error = %e, "leader lease round failed"),
            }
            if self.client.is_closed() {
                // The connection is gone for good: step down now; the caller reconnects.
                terms.send_replace(None);
                return;
            }
            current = current.filter(Term::holds);
            terms.send_if_modified(|published| {
                let changed = *published != current;
                *published = current;
                changed
            });
            let next = match current {
                Some(term) => (Instant::now() + every).min(term.until),
                None => Instant::now() + every,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.cancelled() => break,
            }
        }
        if current.is_some() {
            // Hand over at once rather than make the others wait out the lease.
            let released =
                self.client.execute("UPDATE otpgate_leader SET expires_at = now() WHERE id = 1 AND node = $1", &[&self.node]).await;
            if let Err(e) = released {
                tracing::warn!(node = %self.node, error = %e, "leader lease not released; it lapses by itself");
            }
        }
        terms.send_replace(None);
    }
}
