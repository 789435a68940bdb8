//! Events out over real HTTP: a gateway on a simulated carrier pushes every state change to
//! webhook receivers on loopback (our recording receiver, and the Standard Webhooks project's
//! own Python verifier), through outages, hangs, errors, a kill -9, a secret rotation and a 410.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::receiver::{Mode, Receiver, Seen};
use common::{API_KEY, Gateway, OTHER_KEY, bearer, code_sent, metric, post_message, sim, wait_status};
use otpgate::http::client::Client;
use otpgate::sim::SimConfig;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEXT_SECRET: &str = "whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcy1sb25n";
/// Retries on a test's time scale.
const FAST: &str = "timeout = \"1s\"\nbackoff_min = \"200ms\"\nbackoff_max = \"1s\"";
const OTP: &str = "[otp]\nbrand = \"Acme\"\n";

fn webhook(name: &str, url: &str, extra: &str) -> String {
    format!("[[webhooks]]\nname = {name:?}\nurl = {url:?}\nsecret = {SECRET:?}\n{FAST}\n{extra}\n")
}

async fn send(client: &mut Client, key: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = format!(r#"{{"to": "+4477009{i:05}", "text": "hello {i}"}}"#);
        let reply = post_message(client, key, &body, None).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        ids.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Each record's event types (by `data.id`), in the order they were first taken, once each.
fn types_by_record(taken: &[Seen]) -> HashMap<String, Vec<String>> {
    let mut seen_ids = HashSet::new();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for s in taken {
        if seen_ids.insert(s.id.clone()) {
            let json = s.json();
            out.entry(json["data"]["id"].as_str().unwrap().to_string()).or_default().push(json["type"].as_str().unwrap().to_string());
        }
    }
    out
}

fn expect_message_events(taken: &[Seen], ids: &[String]) {
    let by_record = types_by_record(taken);
    for id in ids {
        assert_eq!(
            by_record.get(id).map(Vec::as_slice),
            Some(&["message.submitted".to_string(), "message.delivered".to_string()][..]),
            "{id}"
        );
    }
    assert_eq!(by_record.len(), ids.len(), "no events for anything else: {by_record:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_once_signed_in_order_and_shows_what_get_shows() {
    let sim = sim(SimConfig::default()).await;
    let receiver = Receiver::start(Mode::Answer(204)).await;
    let sections = format!("{OTP}{}", webhook("backend", &receiver.url(), ""));
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&sections).bound().await;
    let ids = send(&mut client, API_KEY, 20).await;
    for id in &ids {
        wait_status(&mut client, id, "delivered", Duration::from_secs(10)).await;
    }
    let taken = receiver.wait_taken(40, Duration::from_secs(10)).await;
    assert_eq!(taken.len(), 40, "each event once: {}", taken.len());
    expect_message_events(&taken, &ids);
    let unique: HashSet<&str> = taken.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(unique.len(), 40, "webhook-id is unique per event");
    for s in &taken {
        assert!(s.verifies(SECRET), "signature does not verify: {s:?}");
        assert!(!s.verifies(NEXT_SECRET), "verifies under a secret it was not signed with");
        let json = s.json();
        assert!(json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "RFC 3339 timestamp: {json}");
        let status = json["type"].as_str().unwrap().trim_start_matches("message.");
        assert_eq!(json["data"]["status"], status, "{json}");
        assert!(json["data"].get("text").is_none(), "never the text: {json}");
    }
    // A delivered event shows exactly what GET shows of the finished message.
    let delivered = taken.iter().map(Seen::json).find(|j| j["type"] == "message.delivered").unwrap();
    let id = delivered["data"]["id"].as_str().unwrap();
    assert_eq!(common::get_message(&mut client, API_KEY, id).await.json(), delivered["data"]);

    // A verification: sent (with its carrier), its SMS's own events, approved; never the code.
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let created = client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900999"}"#)).await.unwrap();
    let vid = created.json()["id"].as_str().unwrap().to_string();
    let code = code_sent(&sim, "+447700900999", 1).await;
    // Events follow the order otpgate records changes in: a person reads the SMS well after
    // its submit is recorded; a test reading the simulator could beat that by a millisecond.
    let message_id = created.json()["message_id"].as_str().unwrap().to_string();
    while common::get_message(&mut client, API_KEY, &message_id).await.json()["status"] == "queued" {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let check = format!(r#"{{"code": "{code}"}}"#);
    let approved = client.request("POST", &format!("/v1/verifications/{vid}/check"), &headers, Some(&check)).await.unwrap();
    assert_eq!(approved.json()["status"], "approved", "{}", approved.body);
    let taken = receiver.wait_taken(44, Duration::from_secs(10)).await;
    let of_verification: Vec<serde_json::Value> = taken[40..].iter().map(Seen::json).filter(|j| j["data"]["id"] == vid.as_str()).collect();
    let types: Vec<&str> = of_verification.iter().map(|j| j["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["verification.sent", "verification.approved"], "{of_verification:?}");
    assert_eq!(of_verification[0]["data"]["delivery"]["carrier"], "alpha");
    assert_eq!(of_verification[1]["data"]["status"], "approved");
    let message_types: HashSet<String> = taken[40..]
        .iter()
        .map(Seen::json)
        .filter(|j| j["data"]["id"] == created.json()["message_id"])
        .map(|j| j["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(message_types, HashSet::from(["message.submitted".to_string(), "message.delivered".to_string()]));
    assert!(taken.iter().all(|s| !s.body.contains(&code)), "a code reached a webhook");
    assert_eq!(metric(gw.daemon.metrics_addr(), "otpgate_webhook_deliveries_total{webhook=\"backend\",result=\"delivered\"}").await, 44.0);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// Waits for `n` more attempts than the receiver has seen so far.
async fn wait_attempts(receiver: &Receiver, n: usize) {
    let target = receiver.seen().len() + n;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while receiver.seen().len() < target {
        assert!(tokio::time::Instant::now() < deadline, "no new attempts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /v1/webhooks/dead?webhook=backend` as `key`.
async fn list(client: &mut Client, key: &str) -> serde_json::Value {
    let auth = bearer(key);
    client.request("GET", "/v1/webhooks/dead?webhook=backend", &[("Authorization", auth.as_str())], None).await.unwrap().json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_hanging_and_down_gets_everything_in_order_once_it_recovers() {
    let sim = sim(SimConfig::default()).await;
    let mut receiver = Receiver::start(Mode::Answer(500)).await;
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&webhook("backend", &receiver.url(), "")).bound().await;
    let ids = send(&mut client, API_KEY, 10).await;
    for id in &ids {
        wait_status(&mut client, id, "delivered", Duration::from_secs(10)).await;
    }
    wait_attempts(&receiver, 3).await;
    receiver.set(Mode::Hang);
    wait_attempts(&receiver, 2).await;
    receiver.down();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed: HashSet<String> = receiver.seen().into_iter().map(|s| s.id).collect();
    assert!(receiver.taken().is_empty());
    receiver.up().await;
    receiver.set(Mode::Answer(204));
    let taken = receiver.wait_taken(20, Duration::from_secs(20)).await;
    assert_eq!(taken.len(), 20, "every event arrives, once");
    expect_message_events(&taken, &ids);
    let ids_taken: HashSet<String> = taken.iter().map(|s| s.id.clone()).collect();
    assert!(failed.is_subset(&ids_taken), "a retry carries the webhook-id of the first attempt");
    assert!(taken.iter().all(|s| s.verifies(SECRET)), "signed afresh at each attempt");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_delays_no_other_and_filters_pick_types_and_clients() {
    let sim = sim(SimConfig::default()).await;
    let slow = Receiver::start(Mode::Hang).await;
    let fast = Receiver::start(Mode::Answer(200)).await;
    let picky = Receiver::start(Mode::Answer(200)).await;
    let sections = [
        webhook("slow", &slow.url(), "").replace("timeout = \"1s\"", "timeout = \"5s\""),
        webhook("fast", &fast.url(), ""),
        webhook("picky", &picky.url(), "events = [\"message.deliv*\"]\napi_keys = [\"other\"]"),
    ]
    .concat();
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&sections).bound().await;
    let started = tokio::time::Instant::now();
    let mut ids = send(&mut client, API_KEY, 6).await;
    let theirs = send(&mut client, OTHER_KEY, 2).await;
    ids.extend(theirs.iter().cloned());
    let taken = fast.wait_taken(16, Duration::from_secs(4)).await;
    assert_eq!(taken.len(), 16, "the fast endpoint got everything while the slow one hung");
    assert!(started.elapsed() < Duration::from_secs(5), "before the slow endpoint's first timeout");
    expect_message_events(&taken, &ids);
    assert!(!slow.seen().is_empty(), "the slow endpoint was tried");
    let picked = picky.wait_taken(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let picked_records: HashSet<String> = picky.taken().iter().map(|s| s.json()["data"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(picky.taken().len(), 2, "only the other client's deliveries: {picked:?}");
    assert_eq!(picked_records, theirs.into_iter().collect());
    assert!(picked.iter().all(|s| s.json()["type"] == "message.delivered"));
    gw.daemon.shutdown(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_a_secret_rotates_both_verify_and_a_410_stops_the_endpoint_until_reload() {
    let sim = sim(SimConfig::default()).await;
    let receiver = Receiver::start(Mode::Answer(204)).await;
    let rotating =
        webhook("backend", &receiver.url(), "").replace(&format!("secret = {SECRET:?}"), &format!("secret = \"{NEXT_SECRET} {SECRET}\""));
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&rotating).bound().await;
    send(&mut client, API_KEY, 2).await;
    let taken = receiver.wait_taken(4, Duration::from_secs(10)).await;
    assert!(taken.iter().all(|s| s.verifies(SECRET) && s.verifies(NEXT_SECRET) && s.signature.split(' ').count() == 2), "{taken:?}");

    // The old secret retired: only the new one signs.
    let config = |sections: &str| {
        common::gateway_config(&common::named(&[sim.addr()]), gw.dir.path(), "").sections(sections).build().expect("valid config")
    };
    let rotated = webhook("backend", &receiver.url(), "").replace(SECRET, NEXT_SECRET);
    gw.daemon.reload(&config(&rotated));
    send(&mut client, API_KEY, 1).await;
    let taken = receiver.wait_taken(6, Duration::from_secs(10)).await;
    assert!(taken[4..].iter().all(|s| s.verifies(NEXT_SECRET) && !s.verifies(SECRET)), "{taken:?}");

    // 410 Gone: no more attempts, whatever waits, until the config is reloaded.
    receiver.set(Mode::Answer(410));
    send(&mut client, API_KEY, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while receiver.seen().len() == 6 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tried = receiver.seen().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.seen().len(), tried, "no attempt after a 410");
    let disabled = "otpgate_webhook_disabled{webhook=\"backend\"}";
    assert_eq!(metric(gw.daemon.metrics_addr(), disabled).await, 1.0);
    receiver.set(Mode::Answer(204));
    gw.daemon.reload(&config(&rotated));
    let taken = receiver.wait_taken(10, Duration::from_secs(10)).await;
    assert_eq!(types_by_record(&taken).values().map(Vec::len).sum::<usize>(), 10, "the four waiting arrived after the reload");
    assert_eq!(metric(gw.daemon.metrics_addr(), disabled).await, 0.0);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_given_up_on_are_listed_to_their_client_and_sent_again_on_request() {
    let sim = sim(SimConfig::default()).await;
    let receiver = Receiver::start(Mode::Answer(503)).await;
    let (gw, mut client) =
        Gateway::setup(&[sim.addr()], "").sections(&webhook("backend", &receiver.url(), "retry_for = \"1s\"")).bound().await;
    let ids = send(&mut client, API_KEY, 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let dead = list(&mut client, API_KEY).await;
        if dead["events"].as_array().is_some_and(|e| e.len() == 4) {
            break dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "events never given up on: {dead}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first = &dead["events"][0];
    assert_eq!(
        (first["webhook"].as_str(), first["last_error"].as_str()),
        (Some("backend"), Some("answered 503 Service Unavailable")),
        "{dead}"
    );
    assert!(first["attempts"].as_u64().unwrap() >= 1 && first["dead_at"].is_string());
    assert_eq!(list(&mut client, OTHER_KEY).await["events"], serde_json::json!([]), "another client sees none of them");
    assert_eq!(metric(gw.daemon.metrics_addr(), "otpgate_webhook_dead_total{webhook=\"backend\"}").await, 4.0);

    receiver.set(Mode::Answer(204));
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let resent = client.request("POST", "/v1/webhooks/dead/resend", &headers, Some(r#"{"webhook": "backend"}"#)).await.unwrap();
    assert_eq!(resent.json()["resent"], 4, "{}", resent.body);
    let taken = receiver.wait_taken(4, Duration::from_secs(10)).await;
    expect_message_events(&taken, &ids);
    let dead_ids: HashSet<&str> = dead["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(taken.iter().map(|s| s.id.as_str()).collect::<HashSet<_>>(), dead_ids, "sent again under their own ids");
    assert_eq!(list(&mut client, API_KEY).await["events"], serde_json::json!([]));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_at_a_kill_9_all_arrive_after_the_restart() {
    const MESSAGES: usize = 25;
    let sim = sim(SimConfig::default()).await;
    let receiver = Receiver::start(Mode::Answer(503)).await;
    let files = common::DaemonFiles::new(&[sim.addr()], "", &webhook("backend", &receiver.url(), ""));
    let mut daemon = common::spawn_daemon(&files.config, None, &[]);
    common::wait_ready(files.http).await;
    let mut client = Client::connect(files.http).await.unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..MESSAGES {
        let body = format!(r#"{{"to": "+4477009{i:05}", "text": "kill {i}"}}"#);
        let reply = post_message(&mut client, API_KEY, &body, None).await;
        assert_eq!(reply.status, 202);
        acknowledged.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    // Mid-traffic: submits, receipts and refused event attempts under way.
    wait_attempts(&receiver, 1).await;
    daemon.kill().expect("SIGKILL");
    daemon.wait().unwrap();
    receiver.set(Mode::Answer(204));
    let mut daemon = common::spawn_daemon(&files.config, None, &[]);
    common::wait_ready(files.http).await;
    let mut client = Client::connect(files.http).await.unwrap();
    for id in &acknowledged {
        wait_status(&mut client, id, "delivered", Duration::from_secs(20)).await;
    }
    let expected = 2 * acknowledged.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while types_by_record(&receiver.taken()).values().map(Vec::len).sum::<usize>() < expected {
        assert!(tokio::time::Instant::now() < deadline, "events missing after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Each acknowledged message: its two events, in order, under stable ids (a retry after
    // the restart may repeat one: at least once, never a second id for one change).
    expect_message_events(&receiver.taken(), &acknowledged);
    let mut ids_by_event: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for s in receiver.taken() {
        let json = s.json();
        let key = (json["data"]["id"].as_str().unwrap().to_string(), json["type"].as_str().unwrap().to_string());
        ids_by_event.entry(key).or_default().insert(s.id);
    }
    assert!(ids_by_event.values().all(|ids| ids.len() == 1), "one webhook-id per change: {ids_by_event:?}");
    common::signal(&daemon, "TERM");
    daemon.wait().unwrap();
    let _ = daemon.kill();
}

/// The Standard Webhooks project's own verifier (PyPI `standardwebhooks`, run by Python)
/// accepts every request as sent: no code of ours on the receiving side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_webhooks_reference_library_accepts_every_request() {
    let Some(verifier) = common::ScriptPeer::webhook_verifier(NEXT_SECRET) else { return };
    let sim = sim(SimConfig::default()).await;
    let url = format!("http://{}/hooks", verifier.addr);
    // Rotating: the library must find its secret's signature among two.
    let rotating = webhook("reference", &url, "").replace(&format!("secret = {SECRET:?}"), &format!("secret = \"{SECRET} {NEXT_SECRET}\""));
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&rotating).bound().await;
    send(&mut client, API_KEY, 5).await;
    let requests = verifier.wait_for("request", 10, Duration::from_secs(10)).await;
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert!(requests.iter().all(|r| r["verified"] == true), "{requests:?}");
    let types: HashSet<&str> = requests.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(types, HashSet::from(["message.submitted", "message.delivered"]));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// Every way a verification ends is an event, and each SMS a carrier reports undelivered is
/// one too, saying whether another carrier was tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_events_report_each_ending_and_every_failed_sms_with_its_failover() {
    let alpha = sim(SimConfig { receipt_stat: "UNDELIV", ..SimConfig::default() }).await;
    let beta = sim(SimConfig { receipt_stat: "UNDELIV", ..SimConfig::default() }).await;
    let receiver = Receiver::start(Mode::Answer(204)).await;
    let clock = std::sync::Arc::new(otpgate::clock::ShiftedClock::default());
    let sections = format!(
        "{OTP}[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n{}",
        webhook("backend", &receiver.url(), "events = [\"verification.*\"]")
    );
    let (gw, mut client) = Gateway::setup(&[alpha.addr(), beta.addr()], "").sections(&sections).clock(clock.clone()).bound().await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let create = async |client: &mut Client, to: &str| {
        let reply = client.request("POST", "/v1/verifications", &headers, Some(&format!(r#"{{"to": "{to}"}}"#))).await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["id"].as_str().unwrap().to_string()
    };
    let of = |vid: &str| -> Vec<serde_json::Value> { receiver.taken().iter().map(Seen::json).filter(|j| j["data"]["id"] == vid).collect() };
    let wait_for = async |vid: &str, n: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while of(vid).len() < n {
            assert!(tokio::time::Instant::now() < deadline, "{vid}: {:?}", of(vid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        of(vid)
    };

    // Undelivered through alpha, resent through beta, undelivered again: no carrier is left.
    let failing = create(&mut client, "+447700900456").await;
    let events = wait_for(&failing, 4).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["verification.sent", "verification.delivery_failed", "verification.sent", "verification.delivery_failed"]);
    let (first, second) = (&events[1]["data"]["failover"], &events[3]["data"]["failover"]);
    assert_eq!((first["failover"].as_bool(), first["failed_carrier"].as_str()), (Some(true), Some("alpha")), "{first}");
    assert_eq!(first["reason"], "receipt undeliverable");
    assert_eq!(first["failover_message_id"], events[2]["data"]["delivery"]["message_id"], "names the resend");
    assert_eq!((second["failover"].as_bool(), second["failed_carrier"].as_str()), (Some(false), Some("beta")), "{second}");
    assert!(second["failover_message_id"].is_null());
    assert_eq!(
        (events[0]["data"]["delivery"]["carrier"].as_str(), events[2]["data"]["delivery"]["carrier"].as_str()),
        (Some("alpha"), Some("beta"))
    );

    let canceled = create(&mut client, "+447700900457").await;
    let reply = client.request("DELETE", &format!("/v1/verifications/{canceled}"), &headers[..1], None).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let locked = create(&mut client, "+447700900458").await;
    for _ in 0..5 {
        client.request("POST", &format!("/v1/verifications/{locked}/check"), &headers, Some(r#"{"code": "000000"}"#)).await.unwrap();
    }
    let expired = create(&mut client, "+447700900459").await;
    clock.advance(Duration::from_secs(5 * 60 + 1));
    let late =
        client.request("POST", &format!("/v1/verifications/{expired}/check"), &headers, Some(r#"{"code": "123456"}"#)).await.unwrap();
    assert_eq!(late.status, 409, "{}", late.body);
    let is_ending = |e: &serde_json::Value| !["verification.sent", "verification.delivery_failed"].contains(&e["type"].as_str().unwrap());
    for (vid, ending) in
        [(&canceled, "verification.canceled"), (&locked, "verification.max_attempts_reached"), (&expired, "verification.expired")]
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !of(vid).iter().any(is_ending) {
            assert!(tokio::time::Instant::now() < deadline, "{vid} never ended: {:?}", of(vid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let endings: Vec<serde_json::Value> = of(vid).into_iter().filter(is_ending).collect();
        assert_eq!(endings.len(), 1, "one ending: {endings:?}");
        assert_eq!(endings[0]["type"], ending);
        assert_eq!(endings[0]["data"]["status"], ending.trim_start_matches("verification."));
    }
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// `https` endpoints over real TLS: the certificate is checked against the system's roots
/// (rustls-native-certs reads `SSL_CERT_FILE`, which stands in for the system bundle here); one
/// from an unknown authority is refused, never sent to, and the reason is on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_verified_and_an_unknown_issuer_gets_nothing() {
    let (ca, trusted) = common::receiver::tls_server();
    let (_, untrusted) = common::receiver::tls_server();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("roots.pem");
    std::fs::write(&bundle, ca).unwrap();
    // SAFETY: this test's own process (nextest runs each test alone), set before any thread reads it.
    unsafe { std::env::set_var("SSL_CERT_FILE", &bundle) };
    let good = Receiver::start_tls(Mode::Answer(204), trusted).await;
    let bad = Receiver::start_tls(Mode::Answer(204), untrusted).await;
    assert!(good.url().starts_with("https://127.0.0.1:"));
    let sim = sim(SimConfig::default()).await;
    let sections = [webhook("backend", &good.url(), ""), webhook("backend-bad", &bad.url(), "retry_for = \"1s\"")].concat();
    let (gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&sections).bound().await;
    let ids = send(&mut client, API_KEY, 2).await;
    let taken = good.wait_taken(4, Duration::from_secs(10)).await;
    expect_message_events(&taken, &ids);
    assert!(taken.iter().all(|s| s.verifies(SECRET)));
    let auth = bearer(API_KEY);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let reply =
            client.request("GET", "/v1/webhooks/dead?webhook=backend-bad", &[("Authorization", auth.as_str())], None).await.unwrap();
        let dead = reply.json()["events"].as_array().cloned().unwrap_or_default();
        if dead.len() == 4 {
            break dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "never given up on: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = dead[0]["last_error"].as_str().unwrap();
    assert!(reason.contains("certificate") && reason.contains("UnknownIssuer"), "{reason}");
    assert!(bad.seen().is_empty(), "no request reached an endpoint whose certificate failed");
    let unreachable = "otpgate_webhook_deliveries_total{webhook=\"backend-bad\",result=\"unreachable\"}";
    assert!(metric(gw.daemon.metrics_addr(), unreachable).await >= 1.0);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}
