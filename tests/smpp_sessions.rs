//! Carrier sessions against the SMSC simulator over real TCP on loopback.

mod common;

use std::time::Duration;

use common::{carrier_config, sim, sms, start, start_bound};
use otpgate::sim::{Behaviour, SimConfig};
use otpgate::smpp::{NotSubmitted, SubmitOutcome};
use rusmpp::CommandStatus;

fn with_credentials() -> SimConfig {
    SimConfig { system_id: Some("otpgate".into()), password: Some("secret".into()), ..SimConfig::default() }
}

#[tokio::test]
async fn binds_and_submits_with_the_right_fields() {
    let sim = sim(with_credentials()).await;
    let running = start_bound(carrier_config(sim.addr(), "")).await;
    let outcome = running.carrier.submit(&sms("123456 is your Acme code")).await;
    let SubmitOutcome::Accepted { message_id } = outcome else {
        panic!("not accepted: {outcome:?}");
    };
    let stats = sim.stats();
    assert_eq!(stats.submits.len(), 1);
    let received = &stats.submits[0];
    assert_eq!(received.message_id, message_id);
    assert_eq!(received.to, "447700900123");
    assert_eq!(received.from, "Acme");
    assert_eq!(received.text, "123456 is your Acme code");
    assert_eq!(received.data_coding, 0);
    assert!(stats.binds[0].accepted);
    assert_eq!(stats.binds[0].mode, "transceiver");
    running.shutdown.cancel();
}

#[tokio::test]
async fn bad_password_is_refused_and_retried_with_growing_backoff() {
    let sim = sim(with_credentials()).await;
    let config = carrier_config(sim.addr(), "password = \"wrong\"\nreconnect_min = \"40ms\"\nreconnect_max = \"400ms\"");
    let running = start(config);
    let saw_attempts = sim.wait_until(Duration::from_secs(10), |s| s.binds.len() >= 8).await;
    assert!(saw_attempts, "carrier stopped retrying");
    let binds = sim.stats().binds;
    assert!(binds.iter().all(|b| !b.accepted));
    assert_eq!(running.carrier.bound_sessions(), 0);
    let gaps: Vec<Duration> = binds.windows(2).map(|w| w[1].at - w[0].at).collect();
    for gap in &gaps {
        assert!(*gap >= Duration::from_millis(35), "retried faster than reconnect_min: {gaps:?}");
        assert!(*gap <= Duration::from_millis(600), "waited past reconnect_max: {gaps:?}");
    }
    // Full jitter between min and a growing ceiling: with 7 gaps, all staying near the 40 ms
    // floor has odds below 1 in 10,000.
    assert!(gaps.iter().any(|g| *g > Duration::from_millis(100)), "backoff never grew: {gaps:?}");
    running.shutdown.cancel();
}

#[tokio::test]
async fn smsc_down_then_up_is_reached_once_it_listens() {
    // A free port, left closed, for the carrier to point at.
    let addr = common::free_addr();
    let running = start(carrier_config(addr, ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(running.carrier.bound_sessions(), 0);
    let outcome = running.carrier.submit(&sms("hello")).await;
    assert_eq!(
        outcome,
        SubmitOutcome::RetryElsewhere { reason: NotSubmitted::NoSession },
        "a down carrier refuses at once instead of hanging"
    );
    let sim = otpgate::sim::SmscSim::start(addr, SimConfig::default()).await.expect("port still free");
    assert!(running.carrier.wait_bound(1, Duration::from_secs(3)).await, "did not reconnect after the SMSC came up");
    assert_eq!(sim.stats().binds.len(), 1);
    running.shutdown.cancel();
}

async fn max_outstanding_with(window: usize, sessions: usize, messages: usize) -> usize {
    let sim = sim(SimConfig { response_delay: Duration::from_millis(50), receipts: false, ..SimConfig::default() }).await;
    let config = carrier_config(sim.addr(), &format!("window = {window}\nsessions = {sessions}"));
    let running = start_bound(config).await;
    let submits = (0..messages).map(|i| {
        let carrier = running.carrier.clone();
        async move { carrier.submit(&sms(&format!("message {i}"))).await }
    });
    let outcomes = futures::future::join_all(submits).await;
    assert!(outcomes.iter().all(|o| matches!(o, SubmitOutcome::Accepted { .. })), "{outcomes:?}");
    assert_eq!(sim.stats().submits.len(), messages);
    running.shutdown.cancel();
    sim.stats().max_outstanding
}

#[tokio::test]
async fn window_caps_outstanding_submits_per_session() {
    assert_eq!(max_outstanding_with(4, 1, 40).await, 4, "window of 4 on one session");
    assert_eq!(max_outstanding_with(3, 2, 40).await, 6, "window of 3 on two sessions");
}

#[tokio::test]
async fn response_timeout_tears_down_a_hung_session_and_hands_back_its_submits() {
    let sim = sim(SimConfig::default()).await;
    let config = carrier_config(sim.addr(), "response_timeout = \"300ms\"\nwindow = 8");
    let running = start_bound(config).await;
    sim.set_behaviour(Behaviour::Hang);
    let started = tokio::time::Instant::now();
    let submits = (0..5).map(|i| {
        let carrier = running.carrier.clone();
        async move { carrier.submit(&sms(&format!("m{i}"))).await }
    });
    let outcomes = futures::future::join_all(submits).await;
    assert!(started.elapsed() < Duration::from_secs(2), "hung submits were not released in time");
    for outcome in &outcomes {
        match outcome {
            SubmitOutcome::RetryElsewhere { reason: NotSubmitted::ResponseTimeout | NotSubmitted::ConnectionLost } => {}
            other => panic!("in-flight submit of a dead session came back as {other:?}"),
        }
    }
    let went_down = running.carrier.wait_sessions(Duration::from_secs(1), |n| n == 0).await;
    assert!(went_down, "the timed-out session still counts as bound");
    sim.set_behaviour(Behaviour::Normal);
    let rebound = sim.wait_until(Duration::from_secs(5), |s| s.binds.iter().filter(|b| b.accepted).count() >= 2).await;
    assert!(rebound, "session was not rebuilt");
    assert!(running.carrier.wait_bound(1, Duration::from_secs(3)).await);
    assert!(matches!(running.carrier.submit(&sms("after")).await, SubmitOutcome::Accepted { .. }));
    running.shutdown.cancel();
}

#[tokio::test]
async fn enquire_link_keeps_an_idle_session_up() {
    let sim = sim(SimConfig::default()).await;
    let config = carrier_config(sim.addr(), "enquire_link_interval = \"150ms\"\nresponse_timeout = \"500ms\"");
    let running = start_bound(config).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats = sim.stats();
    assert!(stats.enquire_links >= 4, "only {} enquire_links in 1.2s", stats.enquire_links);
    assert_eq!(stats.connections, 1, "an idle healthy session must not be rebuilt");
    assert_eq!(running.carrier.bound_sessions(), 1);
    running.shutdown.cancel();
}

#[tokio::test]
async fn unanswered_enquire_link_brings_the_session_down() {
    let sim = sim(SimConfig::default()).await;
    let config = carrier_config(sim.addr(), "enquire_link_interval = \"150ms\"\nresponse_timeout = \"300ms\"");
    let running = start_bound(config).await;
    sim.set_behaviour(Behaviour::Hang);
    let went_down = running.carrier.wait_sessions(Duration::from_secs(2), |n| n == 0).await;
    assert!(went_down, "a silent SMSC was not detected");
    running.shutdown.cancel();
}

#[tokio::test]
async fn submit_statuses_map_to_their_classes_over_the_wire() {
    let sim = sim(SimConfig::default()).await;
    let running = start_bound(carrier_config(sim.addr(), "")).await;
    let cases = [
        (CommandStatus::EsmeRthrottled, "retry_later"),
        (CommandStatus::EsmeRmsgqful, "retry_later"),
        (CommandStatus::EsmeRsyserr, "retry_elsewhere"),
        (CommandStatus::EsmeRinvdstadr, "permanent"),
        (CommandStatus::EsmeRinvsrcadr, "permanent"),
    ];
    for (status, class) in cases {
        sim.set_submit_status(Some(status));
        let outcome = running.carrier.submit(&sms("x")).await;
        assert_eq!(outcome.label(), class, "{status:?}: {outcome:?}");
    }
    assert_eq!(sim.stats().connections, 1, "error statuses must not break the session");
    running.shutdown.cancel();
}

#[tokio::test]
async fn transmitter_receiver_pair_submits_on_tx_and_gets_receipts_on_rx() {
    let sim = sim(SimConfig::default()).await;
    let config = carrier_config(sim.addr(), "bind = \"transmitter_receiver\"");
    let mut running = start_bound(config).await;
    let bound_both = sim
        .wait_until(Duration::from_secs(3), |s| {
            s.binds.iter().any(|b| b.mode == "transmitter") && s.binds.iter().any(|b| b.mode == "receiver")
        })
        .await;
    assert!(bound_both);
    let SubmitOutcome::Accepted { message_id } = running.carrier.submit(&sms("hi")).await else {
        panic!("not accepted");
    };
    let mut event =
        tokio::time::timeout(Duration::from_secs(3), running.receipts.recv()).await.expect("receipt in time").expect("channel open");
    event.recorded(true);
    let receipt = event.receipt.expect("readable receipt");
    assert_eq!(receipt.message_id, message_id);
    assert_eq!(receipt.state.as_str(), "DELIVRD");
    running.shutdown.cancel();
}

#[tokio::test]
async fn malformed_pdus_reset_the_session_and_unknown_ones_are_nacked() {
    let sim = sim(SimConfig::default()).await;
    let running = start_bound(carrier_config(sim.addr(), "")).await;

    // An unknown request id with a valid header: answered generic_nack, session kept.
    let unknown = [0, 0, 0, 16, 0, 0, 0x01, 0x99, 0, 0, 0, 0, 0, 0, 0, 7];
    assert_eq!(sim.send_raw(&unknown), 1);
    assert!(sim.wait_until(Duration::from_secs(2), |s| s.generic_nacks == 1).await, "no generic_nack");
    assert_eq!(sim.stats().connections, 1);
    // An enquire_link carrying a body it must not have, then a good one: nacked or reset, and
    // either way the link keeps serving.
    let odd = [0, 0, 0, 20, 0, 0, 0, 0x15, 0, 0, 0, 0, 0, 0, 0, 8, 1, 2, 3, 4];
    assert_eq!(sim.send_raw(&odd), 1);
    assert!(sim.wait_until(Duration::from_secs(2), |s| s.generic_nacks == 2).await, "no generic_nack");
    assert_eq!(sim.stats().connections, 1);

    let cases: [&[u8]; 3] = [
        // command_length far beyond the 64 KiB limit: must not be allocated.
        &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9],
        // command_length below the 16-octet header.
        &[0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9],
        // A deliver_sm whose body is cut short: a C-string without its NUL.
        &[0, 0, 0, 20, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 9, b'a', b'b', b'c', b'd'],
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let connections_before = sim.stats().connections;
        assert_eq!(sim.send_raw(bytes), 1, "case {i}: no bound receiver to send to");
        let reconnected = sim
            .wait_until(Duration::from_secs(3), |s| {
                s.connections > connections_before && s.binds.iter().filter(|b| b.accepted).count() as u64 == s.connections
            })
            .await;
        assert!(reconnected, "case {i}: session was not reset and rebuilt");
        assert!(running.carrier.wait_bound(1, Duration::from_secs(3)).await, "case {i}");
    }
    assert!(matches!(running.carrier.submit(&sms("still serving")).await, SubmitOutcome::Accepted { .. }));
    running.shutdown.cancel();
}

#[tokio::test]
async fn smsc_unbind_and_dropped_connections_are_recovered() {
    let sim = sim(SimConfig::default()).await;
    let running = start_bound(carrier_config(sim.addr(), "")).await;
    sim.drop_connections();
    let rebound = sim.wait_until(Duration::from_secs(3), |s| s.connections == 2 && s.binds.len() == 2).await;
    assert!(rebound, "no reconnect after the SMSC dropped the connection");
    assert!(running.carrier.wait_bound(1, Duration::from_secs(3)).await);
    assert!(matches!(running.carrier.submit(&sms("again")).await, SubmitOutcome::Accepted { .. }));
    running.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_unbinds_every_session_cleanly() {
    let sim = sim(SimConfig::default()).await;
    let config = carrier_config(sim.addr(), "sessions = 2\nbind = \"transmitter_receiver\"");
    let running = start_bound(config).await;
    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), running.carrier.stopped()).await.expect("carrier stopped in time");
    assert_eq!(sim.stats().unbinds, 4, "two TX and two RX sessions each sent unbind");
    assert_eq!(running.carrier.bound_sessions(), 0);
}

/// An accepted submit keeps its window slot while its caller holds it (until the store has
/// recorded it): after a crash, at most a window per session was accepted but unrecorded.
#[tokio::test]
async fn an_accepted_submit_holds_its_window_slot_until_released() {
    let sim = sim(SimConfig::default()).await;
    let running = start_bound(carrier_config(sim.addr(), "window = 1")).await;
    let first = running.carrier.submit_via(&sms("first"), Duration::from_secs(5)).await;
    assert!(matches!(first.outcome, SubmitOutcome::Accepted { .. }), "{:?}", first.outcome);
    let waiting = running.carrier.submit_via(&sms("second"), Duration::from_millis(300)).await;
    assert_eq!(waiting.outcome, SubmitOutcome::RetryElsewhere { reason: NotSubmitted::Busy }, "the slot is still taken");
    // Freeing it lets a submit already waiting for room through.
    let carrier = running.carrier.clone();
    let next = tokio::spawn(async move { carrier.submit_via(&sms("third"), Duration::from_secs(5)).await.outcome });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(first);
    assert!(matches!(next.await.unwrap(), SubmitOutcome::Accepted { .. }));
    assert_eq!(sim.stats().submits.len(), 2);
    running.shutdown.cancel();
}

/// The submit gate is checked again right before a submit_sm is written: a node whose term ends
/// between a submit's first check and its write (stopped there by SIGSTOP, say) writes nothing
/// and closes the session. tests/cluster.rs once caught a woken leader's submit going out.
#[tokio::test]
async fn a_gate_closed_after_a_submit_was_queued_keeps_it_off_the_wire() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sim = sim(SimConfig::default()).await;
    // Open for the first check (before queueing), closed from the second (before writing).
    let checks = Arc::new(AtomicUsize::new(0));
    let gate = {
        let checks = checks.clone();
        otpgate::smpp::SubmitGate::new(move || checks.fetch_add(1, Ordering::SeqCst) == 0)
    };
    let config = carrier_config(sim.addr(), "");
    let sessions = config.sessions;
    let (receipts, _held) = tokio::sync::mpsc::channel(16);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let carrier = otpgate::smpp::carrier::Carrier::start_gated(config, receipts, shutdown.clone(), gate);
    assert!(carrier.wait_bound(sessions, Duration::from_secs(5)).await, "carrier did not bind");
    let outcome = carrier.submit(&sms("123456 is your Acme code")).await;
    assert!(checks.load(Ordering::SeqCst) >= 2, "the writer did not check the gate ({outcome:?})");
    assert!(!matches!(outcome, SubmitOutcome::Accepted { .. }), "{outcome:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.stats().submits.is_empty(), "the fenced submit reached the SMSC");
    shutdown.cancel();
}
