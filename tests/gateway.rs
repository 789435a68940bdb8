//! The gateway end to end: HTTP intake → sled store → SMPP submit to the simulator → receipt →
//! status, over real sockets and a real store on disk.

mod common;

use std::time::Duration;

use common::{API_KEY, Gateway, OTHER_KEY, bound_gateway, get_message, post_message, sim, wait_status};
use otpgate::sim::SimConfig;
use rusmpp::CommandStatus;

const BODY: &str = r#"{"to": "+447700900123", "text": "Your parcel is on its way"}"#;

#[tokio::test]
async fn message_goes_from_http_to_the_smsc_and_its_receipt_comes_back() {
    let (sim, gw, mut client) = bound_gateway(SimConfig::default()).await;
    let body = r#"{"to": "+447700900123", "text": "Your parcel is on its way", "from": "Shop", "validity": "10m"}"#;
    let reply = post_message(&mut client, API_KEY, body, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["status"], "queued");
    let id = json["id"].as_str().unwrap().to_string();

    let done = wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    let received = sim.stats().submits;
    assert_eq!(received.len(), 1);
    let sms = &received[0];
    assert_eq!(sms.text, "Your parcel is on its way");
    assert_eq!(sms.from, "Shop");
    assert_eq!(sms.to, "447700900123");
    // Relative validity: ten minutes, less the time it took to get here.
    assert!(sms.validity_period.starts_with("00000000095") || sms.validity_period == "000000001000000R", "{}", sms.validity_period);
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["to"], "+447700900123");
    assert_eq!(done["carrier"], "alpha");
    assert_eq!(done["session"], "alpha#0/transceiver");
    assert_eq!(done["smsc_message_id"], sms.message_id.as_str());
    assert_eq!(done["receipt"]["stat"], "DELIVRD");
    assert_eq!(done["receipt"]["err"], "000");
    for field in ["created_at", "submitted_at", "done_at"] {
        assert!(done[field].as_str().is_some_and(|t| t.ends_with('Z')), "{field}: {done}");
    }
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_and_refuses_a_different_body() {
    let (sim, gw, mut client) = bound_gateway(SimConfig::default()).await;
    let first = post_message(&mut client, API_KEY, BODY, Some("order-42")).await;
    let again = post_message(&mut client, API_KEY, BODY, Some("order-42")).await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(first.json(), again.json(), "the replay must be the first answer");
    let other = r#"{"to": "+447700900123", "text": "something else"}"#;
    let conflict = post_message(&mut client, API_KEY, other, Some("order-42")).await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.json()["error"]["code"], "idempotency_conflict");
    // Keys are per API key: the same key from another client is a new message.
    let theirs = post_message(&mut client, OTHER_KEY, BODY, Some("order-42")).await;
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.json()["id"], first.json()["id"]);

    let id = first.json()["id"].as_str().unwrap().to_string();
    wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.submits.len() == 2).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.stats().submits.len(), 2, "the replay must send nothing");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn api_keys_are_required_and_isolate_clients() {
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[sim.addr()], "").await;
    let mut client = gw.client().await;
    let no_key = client.request("POST", "/v1/messages", &[("Content-Type", "application/json")], Some(BODY)).await.unwrap();
    assert_eq!(no_key.status, 401);
    assert_eq!(no_key.json()["error"]["code"], "unauthorized");
    let wrong = post_message(&mut client, "not-a-configured-key", BODY, None).await;
    assert_eq!(wrong.status, 401);
    let mine = post_message(&mut client, API_KEY, BODY, None).await;
    let id = mine.json()["id"].as_str().unwrap().to_string();
    assert_eq!(get_message(&mut client, API_KEY, &id).await.status, 200);
    let theirs = get_message(&mut client, OTHER_KEY, &id).await;
    assert_eq!(theirs.status, 404, "another key's message must look like no message");
    assert_eq!(get_message(&mut client, "wrong", &id).await.status, 401);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[sim.addr()], "").await;
    let mut client = gw.client().await;
    let cases = [
        (r#"{"to": "447700900123", "text": "x"}"#, 400, "invalid_to"),
        (r#"{"to": "+44 7700 900123", "text": "x"}"#, 400, "invalid_to"),
        (r#"{"to": "+447700900123", "text": ""}"#, 400, "invalid_text"),
        (r#"{"to": "+447700900123", "text": "x", "from": "Far Too Long Sender"}"#, 400, "invalid_from"),
        (r#"{"to": "+447700900123", "text": "x", "validity": "soon"}"#, 400, "invalid_validity"),
        (r#"{"to": "+447700900123", "text": "x", "validity": "400h"}"#, 422, "invalid_validity"),
        // Shorter than messages.min_validity (30 s): it would mostly expire unsent.
        (r#"{"to": "+447700900123", "text": "x", "validity": "1s"}"#, 422, "invalid_validity"),
        (r#"{"to": "+447700900123", "txt": "typo"}"#, 400, "invalid_json"),
        (r#"{"to": "+447700900123", "text": 5}"#, 400, "invalid_json"),
        (r#"{"to": "+4477009"#, 400, "invalid_json"),
        ("[]", 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let reply = post_message(&mut client, API_KEY, body, None).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        assert_eq!(reply.json()["error"]["code"], code, "{body}: {}", reply.body);
        assert!(reply.json()["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Six SMS of 153 characters at most by default (messages.max_segments).
    let long = format!(r#"{{"to": "+447700900123", "text": "{}"}}"#, "x".repeat(6 * 153 + 1));
    let reply = post_message(&mut client, API_KEY, &long, None).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (422, "text_too_long".into()));
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("takes 7 SMS as gsm7"), "{}", reply.body);
    let forced = r#"{"to": "+447700900123", "text": "Код", "encoding": "gsm7"}"#;
    let reply = post_message(&mut client, API_KEY, forced, None).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (400, "invalid_encoding".into()), "{}", reply.body);

    let auth = common::bearer(API_KEY);
    let plain =
        client.request("POST", "/v1/messages", &[("Authorization", &auth), ("Content-Type", "text/plain")], Some(BODY)).await.unwrap();
    assert_eq!((plain.status, plain.json()["error"]["code"].clone()), (415, "unsupported_media_type".into()));

    let huge = format!(r#"{{"to": "+447700900123", "text": "{}"}}"#, "x".repeat(20_000));
    let mut fresh = gw.client().await;
    let reply = post_message(&mut fresh, API_KEY, &huge, None).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (413, "body_too_large".into()));

    let mut fresh = gw.client().await;
    for id in ["00000000000000000000000000000000", "nonsense"] {
        let reply = get_message(&mut fresh, API_KEY, id).await;
        assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (404, "not_found".into()), "{id}");
    }
    let reply = fresh.request("GET", "/v2/else", &[], None).await.unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(sim.stats().submits.len(), 0, "no bad request may send anything");
    assert_eq!(gw.daemon.store().counts().await.unwrap().0, 0, "no bad request may store anything");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn health_and_readiness_follow_the_binds() {
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[sim.addr()], "").await;
    let mut client = gw.client().await;
    assert_eq!(client.request("GET", "/healthz", &[], None).await.unwrap().status, 200);
    gw.wait_bound().await;
    let ready = client.request("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["carriers_bound"][0], "alpha");
    drop(sim);
    let carrier = &gw.daemon.carriers()[0];
    assert!(carrier.wait_sessions(Duration::from_secs(3), |n| n == 0).await);
    let ready = client.request("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(client.request("GET", "/healthz", &[], None).await.unwrap().status, 200);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_receipt_that_beats_its_submit_response_is_matched() {
    let sim = sim(SimConfig { receipt_first: true, response_delay: Duration::from_millis(150), ..SimConfig::default() }).await;
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let id = post_message(&mut client, API_KEY, BODY, None).await.json()["id"].as_str().unwrap().to_string();
    // The receipt is held first: the status is still `queued` while it waits.
    let held = async {
        loop {
            if gw.daemon.store().counts().await.unwrap().2 > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), held).await.expect("receipt was held as early");
    let done = wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    assert_eq!(done["receipt"]["stat"], "DELIVRD");
    assert_eq!(gw.daemon.store().counts().await.unwrap().2, 0, "the held receipt is consumed");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn throttled_submits_are_retried_and_permanent_errors_fail_the_message() {
    let (sim, gw, mut client) = bound_gateway(SimConfig::default()).await;

    sim.set_submit_status(Some(CommandStatus::EsmeRthrottled));
    let id = post_message(&mut client, API_KEY, BODY, None).await.json()["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiting = get_message(&mut client, API_KEY, &id).await.json();
    assert_eq!(waiting["status"], "queued");
    assert!(waiting["attempts"].as_u64().unwrap() >= 2, "retried with backoff: {waiting}");
    sim.set_submit_status(None);
    wait_status(&mut client, &id, "delivered", Duration::from_secs(8)).await;

    sim.set_submit_status(Some(CommandStatus::EsmeRinvdstadr));
    let id = post_message(&mut client, API_KEY, BODY, None).await.json()["id"].as_str().unwrap().to_string();
    let failed = wait_status(&mut client, &id, "failed", Duration::from_secs(5)).await;
    assert!(failed["error"].as_str().unwrap().contains("ESME_RINVDSTADR"), "{failed}");
    assert!(failed["done_at"].is_string());
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// Lets a test ask for validities of a second or two.
const SHORT_VALIDITY: &str = "[messages]\nmin_validity = \"1s\"\n";

#[tokio::test]
async fn a_message_whose_validity_passes_while_no_carrier_is_up_expires_unsent() {
    let addr = common::free_addr();
    let gw = Gateway::setup(&[addr], "").sections(SHORT_VALIDITY).start().await;
    let mut client = gw.client().await;
    let body = r#"{"to": "+447700900123", "text": "code 1234", "validity": "1s"}"#;
    let reply = post_message(&mut client, API_KEY, body, None).await;
    assert_eq!(reply.status, 202, "accepted while carriers are down: it is on disk");
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let expired = wait_status(&mut client, &id, "expired", Duration::from_secs(3)).await;
    assert!(expired["done_at"].is_string());
    let late = otpgate::sim::SmscSim::start(addr, SimConfig::default()).await.unwrap();
    assert!(gw.daemon.carriers()[0].wait_bound(1, Duration::from_secs(3)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(late.stats().submits.len(), 0, "an expired message must never be sent");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// A message whose validity ends while it waits for a paced carrier's slot expires unsent, and is
/// counted as an expiry, not as a permanent submit failure (nothing went to the SMSC).
#[tokio::test]
async fn a_message_expiring_while_it_waits_for_a_slot_is_not_counted_as_a_submit() {
    let sim = sim(SimConfig::default()).await;
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "max_tps = 1").sections(SHORT_VALIDITY).bound().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = format!(r#"{{"to": "+4477009001{i:02}", "text": "slot {i}", "validity": "2s"}}"#);
        ids.push(post_message(&mut client, API_KEY, &body, None).await.json()["id"].as_str().unwrap().to_string());
    }
    // One slot a second: the third reaches its slot with under a second of validity left.
    wait_status(&mut client, &ids[2], "expired", Duration::from_secs(5)).await;
    let metrics = gw.daemon.metrics_addr();
    assert_eq!(common::metric(metrics, "otpgate_submit_total{carrier=\"alpha\",result=\"permanent\"}").await, 0.0);
    assert!(common::metric(metrics, "otpgate_messages_total{state=\"expired\"}").await >= 1.0);
    assert!(sim.stats().submits.iter().all(|m| m.text != "slot 2"), "an expired message must never be sent");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_second_daemon_on_the_same_data_dir_is_refused() {
    if common::on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: nodes sharing one database is cluster mode (tests/cluster.rs)");
        return;
    }
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[sim.addr()], "").await;
    let text = common::gateway_toml(&[sim.addr()], gw.dir.path(), "");
    let config = otpgate::config::Config::from_toml(&text, std::path::Path::new("x.toml")).unwrap();
    let second = otpgate::daemon::Daemon::start(&config).await;
    let error = second.err().expect("second daemon must not start").to_string();
    assert!(error.contains("in use by another otpgate process"), "{error}");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_clean_shutdown_keeps_unsent_messages_queued_for_the_next_start() {
    let sim_addr = common::free_addr();
    let gw = Gateway::start(&[sim_addr], "").await;
    let mut client = gw.client().await;
    let reply = post_message(&mut client, API_KEY, BODY, None).await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    // Restart on the same data_dir with the carrier now up: the message goes out.
    let sim = otpgate::sim::SmscSim::start(sim_addr, SimConfig::default()).await.unwrap();
    let gw = gw.restart(&[sim_addr]).await;
    let mut client = gw.client().await;
    wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    assert_eq!(sim.stats().submits.len(), 1);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_receipt_arriving_after_a_restart_still_finds_its_message() {
    let sim = sim(SimConfig { receipt_delay: Duration::from_millis(700), ..SimConfig::default() }).await;
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let id = post_message(&mut client, API_KEY, BODY, None).await.json()["id"].as_str().unwrap().to_string();
    wait_status(&mut client, &id, "submitted", Duration::from_secs(3)).await;
    // The SMSC keeps the receipt until a receiver binds again: the restarted daemon.
    let gw = gw.restart(&[sim.addr()]).await;
    let mut client = gw.client().await;
    let done = wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    assert_eq!(done["receipt"]["stat"], "DELIVRD");
    assert_eq!(sim.stats().submits.len(), 1, "a submitted message is not sent again on restart");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// A process whose OTP key is not the one the store's codes were sealed with (a cluster node
/// given its own key, or a key file replaced by hand) refuses to start, naming both keys by
/// fingerprint only: otherwise every code the other key sealed would fail on it.
#[tokio::test]
async fn a_node_with_another_otp_key_than_the_store_refuses_to_start() {
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[sim.addr()], "").await;
    let Gateway { daemon, dir } = gw;
    assert!(daemon.shutdown(Duration::from_secs(5)).await);
    let other_key = [7u8; 32];
    std::fs::write(dir.path().join("otp-hmac.key"), other_key).unwrap();
    let config = common::gateway_config(&common::named(&[sim.addr()]), dir.path(), "").build().unwrap();
    let refused = otpgate::daemon::Daemon::start(&config).await.err().expect("a node with another key must not start").to_string();
    assert!(refused.contains("not the key this store's codes are sealed with") && refused.contains("fingerprint"), "{refused}");
    assert!(!refused.contains("0707"), "no key bytes in the message: {refused}");
}
