//! Clients that misbehave, over raw sockets: what a hostile or careless HTTP client does to the
//! intake.

mod common;

use std::time::Duration;

use common::{API_KEY, bound_gateway};
use otpgate::sim::SimConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Writes one complete request and hangs up `after` it, as a client whose timeout fired does.
async fn send_and_hang_up(addr: std::net::SocketAddr, path: &str, body: &str, after: Duration) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: otpgate\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

/// A request whose rows were committed while its client was already gone must still be handed
/// to the dispatcher: its SMS goes out now, not at the next restart (20 of 20 once stayed
/// queued). Clients hang up at different moments, so some land between the commit and the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_its_request_still_gets_its_sms_sent() {
    const CLIENTS: u32 = 40;
    let (sim, gw, _client) = bound_gateway(SimConfig::default()).await;
    let addr = gw.daemon.http_addr();
    let hang_ups = (0..CLIENTS).map(|i| {
        let after = Duration::from_micros(u64::from(i % 8) * 250);
        let message = format!(r#"{{"to": "+4477009003{i:02}", "text": "hung up {i}"}}"#);
        let verification = format!(r#"{{"to": "+4477009004{i:02}"}}"#);
        async move {
            tokio::join!(
                send_and_hang_up(addr, "/v1/messages", &message, after),
                send_and_hang_up(addr, "/v1/verifications", &verification, after)
            )
        }
    });
    futures::future::join_all(hang_ups).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every message on disk (plain or a code's SMS) reaches the SMSC at once: well before the
    // dispatcher's scan for lost hand-offs (messages 5 s old, every 5 s) could find it.
    let committed = gw.daemon.store().counts().0;
    let all = sim.wait_until(Duration::from_secs(3), |s| s.submits.len() >= committed).await;
    let (still_queued, sent) = (gw.daemon.store().counts().1, sim.stats().submits.len());
    println!("{committed} messages committed with their client gone or going, {sent} sent");
    assert!(committed > CLIENTS as usize, "too few requests were taken for the test to mean anything");
    assert!(all && still_queued == 0, "{committed} committed, {sent} sent, {still_queued} left queued");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// Whatever the cause, a message queued in the store that the dispatcher does not know of is
/// found and sent without a restart. Here one is written to the store behind the intake's back.
#[tokio::test]
async fn a_queued_message_the_dispatcher_never_got_is_found_and_sent() {
    let (sim, gw, _client) = bound_gateway(SimConfig::default()).await;
    let now = std::time::SystemTime::now();
    let message = otpgate::store::NewMessage {
        owner: "test".into(),
        to: "+447700900555".into(),
        from: None,
        text: "orphan".into(),
        deadline: now + Duration::from_secs(300),
    };
    gw.daemon.store().insert_message(message, None, now).await.unwrap();
    let sent = sim.wait_until(Duration::from_secs(20), |s| s.submits.iter().any(|m| m.text == "orphan")).await;
    assert!(sent, "a queued message nobody handed over stayed queued");
    assert_eq!(common::metric(gw.daemon.metrics_addr(), "otpgate_orphans_found_total").await, 1.0);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}
