//! The dispatch leader's lease against a real PostgreSQL server: one leader at a time, takeover
//! after the lease, terms that never overlap, a fencing token that grows, and a clean handover.

use std::time::Duration;

use otpgate::cluster::lease::{Elector, Term};
use otpgate::throwaway_pg::ThrowawayPostgres;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

const LEASE: Duration = Duration::from_secs(1);

/// A running elector: the terms it publishes, its stop, its task.
type Node = (watch::Receiver<Option<Term>>, CancellationToken, tokio::task::JoinHandle<()>);

async fn server() -> Option<ThrowawayPostgres> {
    ThrowawayPostgres::for_tests().await.expect("a throwaway PostgreSQL server starts")
}

async fn connect(db: &ThrowawayPostgres) -> Client {
    let (client, connection) = tokio_postgres::connect(&db.url(), NoTls).await.expect("connects");
    tokio::spawn(connection);
    client
}

async fn elector(db: &ThrowawayPostgres, node: &str) -> Elector {
    let mut client = connect(db).await;
    Elector::prepare(&mut client).await.expect("lease table");
    Elector::new(client, node, LEASE)
}

#[tokio::test]
async fn one_leader_at_a_time_and_a_takeover_after_the_lease() {
    let Some(db) = server().await else { return };
    let (a, b) = (elector(&db, "a").await, elector(&db, "b").await);
    let first = a.round(None).await.unwrap().expect("the free lease is taken");
    assert_eq!(b.round(None).await.unwrap(), None, "held: nobody else leads");
    let renewed = a.round(Some(first)).await.unwrap().expect("the holder renews");
    assert_eq!(renewed.token, first.token, "a renewal keeps the term");
    assert!(renewed.until > first.until);

    // a stops renewing: after the lease b takes over, in a new term.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    assert!(!renewed.holds(), "a's own deadline passed first");
    let second = b.round(None).await.unwrap().expect("an expired lease is taken");
    assert!(second.token > renewed.token, "a new term gets a new token: {} after {}", second.token, renewed.token);
    assert_eq!(a.round(Some(renewed)).await.unwrap(), None, "a deposed leader cannot renew");
    assert_eq!(b.round(Some(second)).await.unwrap().map(|t| t.token), Some(second.token));
}

#[tokio::test]
async fn terms_never_overlap() {
    let Some(db) = server().await else { return };
    let (a, b) = (elector(&db, "a").await, elector(&db, "b").await);
    let held = a.round(None).await.unwrap().expect("taken");
    // b tries as fast as it can; a stalls (never renews).
    let taken_at = loop {
        if b.round(None).await.unwrap().is_some() {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(taken_at >= held.until, "b started {:?} before a's term ended", held.until - taken_at);
    assert!(taken_at < held.until + LEASE, "the takeover took {:?} past a's deadline", taken_at - held.until);
}

#[tokio::test]
async fn running_electors_publish_one_leader_and_hand_over_on_stop() {
    let Some(db) = server().await else { return };
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        let (terms, watched) = watch::channel(None::<Term>);
        let stop = CancellationToken::new();
        let task = tokio::spawn(elector(&db, name).await.run(terms, stop.clone()));
        nodes.push((watched, stop, task));
    }
    let leaders = |nodes: &[Node]| nodes.iter().enumerate().filter(|(_, n)| n.0.borrow().is_some()).map(|(i, _)| i).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(5);
    while leaders(&nodes).len() != 1 {
        assert!(Instant::now() < deadline, "no single leader: {:?}", leaders(&nodes));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = leaders(&nodes)[0];
    let first_token = nodes[first].0.borrow().map(|t| t.token).unwrap();
    // Stopping the leader releases the lease: another takes over well within the lease.
    let (_, stop, task) = nodes.remove(first);
    let stopped_at = Instant::now();
    stop.cancel();
    task.await.unwrap();
    let deadline = Instant::now() + LEASE;
    loop {
        let now = leaders(&nodes);
        if now.len() == 1 {
            let token = nodes[now[0]].0.borrow().map(|t| t.token).unwrap();
            assert!(token > first_token);
            break;
        }
        assert!(now.len() <= 1, "two leaders: {now:?}");
        assert!(Instant::now() < deadline, "no takeover {:?} after a clean stop", stopped_at.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (_, stop, task) in nodes {
        stop.cancel();
        task.await.unwrap();
    }
}

#[tokio::test]
async fn nodes_starting_together_create_the_table_once() {
    let Some(db) = server().await else { return };
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&db).await);
    }
    let prepared = futures::future::join_all(clients.iter_mut().map(Elector::prepare)).await;
    assert!(prepared.iter().all(Result::is_ok), "{prepared:?}");
    let rows: i64 = clients[0].query_one("SELECT count(*) FROM otpgate_leader", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1);
}
