//! Cluster mode on PostgreSQL: every node serves the whole HTTP API from the shared store, and
//! one node at a time (the dispatch leader) binds the carriers, submits and tracks receipts.
//! Leadership is a lease row with a fencing token ([`lease`]); [`campaign`] keeps this node in
//! the election on a connection of its own; the daemon does the dispatch duties while a term
//! holds, and every submit_sm is checked against the term's deadline (`smpp::gate`).

pub mod lease;
pub(crate) mod settings;

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::settings::PostgresSettings;
use lease::{Elector, LeaseError, Term};

/// Takes part in elections as `node` until `stop`, publishing this node's term (or `None`) on
/// `terms`; reconnects (after a second) whenever the database connection is lost.
pub(crate) async fn campaign(pg: PostgresSettings, lease: Duration, terms: watch::Sender<Option<Term>>, stop: CancellationToken) {
    loop {
        match connect(&pg, lease).await {
            Ok(elector) => elector.run(terms.clone(), stop.clone()).await,
            Err(e) => tracing::warn!(node = %pg.node, error = %e, "cannot take part in the leader election; again in a second"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn connect(pg: &PostgresSettings, lease: Duration) -> Result<Elector, LeaseError> {
    let mut config: tokio_postgres::Config = pg.url.parse()?;
    if let Some(password) = &pg.password {
        config.password(password.as_bytes());
    }
    config.application_name("otpgate-election").connect_timeout(Duration::from_secs(5));
    let (mut client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Ends with the client (or the connection's failure, which the elector sees).
        let _ = connection.await;
    });
    Elector::prepare(&mut client).await?;
    Ok(Elector::new(client, &pg.node, lease))
}
