//! A submit that went out and got no readable answer may already be on the handset: it is sent
//! again at most `messages.max_unconfirmed_resends` times, counted, and an SMSC whose answers
//! cannot be read is taken out by the circuit breaker. An answer with an over-long message_id is
//! an answer: the message is sent once.

mod common;

use std::time::Duration;

use common::{API_KEY, Gateway, NodeSmsc, metric, post_message, sim, wait_status};
use otpgate::sim::SimConfig;

#[tokio::test]
async fn an_over_long_message_id_from_node_smpp_is_kept_and_the_sms_goes_out_once() {
    let Some(node) = NodeSmsc::start(r#"{"id_length": 65}"#) else { return };
    let (gw, mut client) = Gateway::bound(&[node.addr], "").await;
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "once only"}"#, None).await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    // The receipt names the same 65-character id: it matches.
    let message = wait_status(&mut client, &id, "delivered", Duration::from_secs(10)).await;
    let submits = node.events("submit_sm");
    assert_eq!(submits.len(), 1, "sent more than once: {submits:?}");
    let smsc_id = submits[0]["message_id"].as_str().unwrap();
    assert_eq!(smsc_id.len(), 65);
    assert_eq!(message["smsc_message_id"], smsc_id, "{message}");
    assert!(node.events("bind_transceiver").len() == 1, "the session was reset");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_message_whose_submits_keep_going_unanswered_is_sent_a_bounded_number_of_times() {
    let sim = sim(SimConfig::default()).await;
    // Every submit_sm closes the connection unanswered.
    sim.set_drop_every(1);
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "hello"}"#, None).await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let message = wait_status(&mut client, &id, "failed", Duration::from_secs(15)).await;
    assert!(message["error"].as_str().unwrap().contains("3 submits went out without an answer"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.stats().dropped, 3, "the first send and two resends, then no more");
    let metrics = gw.daemon.metrics_addr();
    assert_eq!(metric(metrics, "otpgate_resubmits_total").await, 2.0);
    assert_eq!(metric(metrics, "otpgate_resend_limit_total").await, 1.0);
    assert_eq!(metric(metrics, "otpgate_submit_total{carrier=\"alpha\",result=\"unconfirmed\"}").await, 3.0);
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn unreadable_answers_open_the_circuit_and_the_messages_go_through_another_carrier() {
    let garbling = sim(SimConfig::default()).await;
    garbling.set_garbled_responses(true);
    let healthy = sim(SimConfig::default()).await;
    let extra = "circuit_failures = 2\ncircuit_open = \"30s\"";
    let (gw, mut client) = Gateway::setup(&[garbling.addr(), healthy.addr()], extra).bound().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // The garbling carrier's session closes on each unreadable answer: let it bind again, so
        // the breaker (not a missing session) is what keeps traffic away from it.
        gw.wait_bound().await;
        let body = format!(r#"{{"to": "+4477009001{i:02}", "text": "m{i}"}}"#);
        ids.push(post_message(&mut client, API_KEY, &body, None).await.json()["id"].as_str().unwrap().to_string());
        // One at a time, so the order of events is the test's.
        wait_status(&mut client, ids.last().unwrap(), "delivered", Duration::from_secs(10)).await;
    }
    assert_eq!(garbling.stats().submits.len(), 2, "taken out after two unreadable answers");
    assert!(gw.daemon.carrier("alpha").unwrap().circuit_open());
    assert_eq!(healthy.stats().submits.len(), 5);
    assert_eq!(metric(gw.daemon.metrics_addr(), "otpgate_resubmits_total").await, 2.0, "each possible duplicate counted");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}
