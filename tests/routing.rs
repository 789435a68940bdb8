//! Routing across several simulated carriers: prefixes, strategies, failover at send time,
//! circuit breaking, throttling and receipt failover for OTP.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{API_KEY, Gateway, bearer, post_message, sim, wait_status};
use otpgate::http::client::Client;
use otpgate::sim::{Behaviour, SimConfig, SmscSim};
use rusmpp::CommandStatus;

async fn gateway(sims: &[&SmscSim], carrier_extra: &str, extra: &str) -> (Gateway, Client) {
    let addrs: Vec<_> = sims.iter().map(|s| s.addr()).collect();
    let (gw, client) = Gateway::setup(&addrs, carrier_extra).sections(extra).bound().await;
    (gw, client)
}

async fn send(client: &mut Client, to: &str, text: &str) -> String {
    let body = format!(r#"{{"to": "{to}", "text": "{text}"}}"#);
    let reply = post_message(client, API_KEY, &body, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()["id"].as_str().unwrap().to_string()
}

fn texts(sim: &SmscSim) -> HashSet<String> {
    sim.stats().submits.iter().map(|m| m.text.clone()).collect()
}

#[tokio::test]
async fn the_longest_prefix_wins_and_unrouted_destinations_are_refused() {
    let (a, b, c) = (sim(SimConfig::default()).await, sim(SimConfig::default()).await, sim(SimConfig::default()).await);
    let table = "[[routes]]\nprefixes = [\"+44\"]\ncarriers = [\"alpha\"]\n\
         [[routes]]\nprefixes = [\"+4477\", \"+353\"]\ncarriers = [\"beta\"]\n\
         [[routes]]\nprefixes = [\"+33\"]\ncarriers = [\"gamma\"]\n";
    let (gw, mut client) = gateway(&[&a, &b, &c], "", table).await;
    for (to, text) in
        [("+441234567890", "uk landline"), ("+447700900123", "uk mobile"), ("+353861234567", "ireland"), ("+33612345678", "france")]
    {
        let id = send(&mut client, to, text).await;
        wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    }
    assert_eq!(texts(&a), HashSet::from(["uk landline".to_string()]));
    assert_eq!(texts(&b), HashSet::from(["uk mobile".to_string(), "ireland".to_string()]));
    assert_eq!(texts(&c), HashSet::from(["france".to_string()]));

    let reply = post_message(&mut client, API_KEY, r#"{"to": "+4915112345678", "text": "germany"}"#, None).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (503, "no_route".into()), "{}", reply.body);
    let verification = client
        .request(
            "POST",
            "/v1/verifications",
            &[("Authorization", &bearer(API_KEY)), ("Content-Type", "application/json")],
            Some(r#"{"to": "+4915112345678"}"#),
        )
        .await
        .unwrap();
    assert_eq!(verification.status, 503);
    assert_eq!(gw.daemon.store().counts().await.unwrap().0, 4, "nothing was queued for the unrouted destination");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

async fn spread(strategy: &str, weights: &str, messages: usize) -> (usize, usize) {
    let (a, b) = (sim(SimConfig::default()).await, sim(SimConfig::default()).await);
    let table = format!("[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\nstrategy = \"{strategy}\"\n{weights}\n");
    let (gw, mut client) = gateway(&[&a, &b], "", &table).await;
    for i in 0..messages {
        // Distinct numbers: messages to one number are kept in order, one at a time.
        send(&mut client, &format!("+4477009{i:05}"), &format!("m{i}")).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats().submits.len() + b.stats().submits.len() < messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counts = (a.stats().submits.len(), b.stats().submits.len());
    gw.daemon.shutdown(Duration::from_secs(5)).await;
    counts
}

#[tokio::test]
async fn round_robin_and_weights_share_traffic_as_configured() {
    let (a, b) = spread("round_robin", "", 200).await;
    assert_eq!(a + b, 200);
    assert!((90..=110).contains(&a), "round robin gave {a}/{b}");
    let (a, b) = spread("weighted", "weights = [3, 1]", 200).await;
    assert_eq!(a + b, 200);
    assert!((140..=160).contains(&a), "weights 3:1 gave {a}/{b}");
}

/// Sends `count` messages at a steady pace; returns their texts.
async fn load(client: &mut Client, prefix: &str, count: usize, every: Duration) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..count {
        let text = format!("{prefix}-{i}");
        send(client, &format!("+4477001{i:05}"), &text).await;
        sent.push(text);
        tokio::time::sleep(every).await;
    }
    sent
}

#[tokio::test]
async fn a_carrier_going_down_mid_load_moves_traffic_at_once_and_back_when_it_returns() {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::default()).await;
    let a_addr = a.addr();
    let table = "[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n";
    let (gw, mut client) = gateway(&[&a, &b], "", table).await;
    let before = load(&mut client, "before", 20, Duration::from_millis(5)).await;
    assert!(a.wait_until(Duration::from_secs(5), |s| s.submits.len() == 20).await, "failover prefers alpha");
    assert_eq!(b.stats().submits.len(), 0);

    drop(a); // alpha's SMSC dies: listener and connections gone.
    let down_at = Instant::now();
    let during = load(&mut client, "during", 30, Duration::from_millis(20)).await;
    let seen = b.wait_until(Duration::from_secs(5), |s| during.iter().all(|t| s.submits.iter().any(|m| &m.text == t))).await;
    assert!(seen, "messages sent while alpha was down were lost");
    let first_on_b = b.stats().submits.first().unwrap().at;
    // response_timeout is 1s in the test config.
    assert!(first_on_b.duration_since(down_at) < Duration::from_secs(2), "traffic took too long to move");

    let a = otpgate::sim::SmscSim::start(a_addr, SimConfig::default()).await.unwrap();
    assert!(gw.daemon.carrier("alpha").unwrap().wait_bound(1, Duration::from_secs(5)).await);
    let after = load(&mut client, "after", 10, Duration::from_millis(5)).await;
    assert!(a.wait_until(Duration::from_secs(5), |s| s.submits.len() == 10).await, "traffic did not return to alpha");
    assert_eq!(texts(&a), after.iter().cloned().collect());
    assert!(before.len() + during.len() + after.len() == 60);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_hung_carrier_is_routed_around_within_the_response_timeout() {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::default()).await;
    let table = "[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n";
    let (gw, mut client) = gateway(&[&a, &b], "", table).await;
    a.set_behaviour(Behaviour::Hang);
    let hung_at = Instant::now();
    let sent = load(&mut client, "hung", 20, Duration::from_millis(20)).await;
    let all_on_b = b.wait_until(Duration::from_secs(5), |s| sent.iter().all(|t| s.submits.iter().any(|m| &m.text == t))).await;
    assert!(all_on_b, "messages stuck on the hung carrier");
    let first_on_b = b.stats().submits.first().unwrap().at;
    assert!(first_on_b.duration_since(hung_at) < Duration::from_secs(2));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn system_errors_open_the_circuit_and_traffic_flows_elsewhere() {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::default()).await;
    let table = "[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n";
    let (gw, mut client) = gateway(&[&a, &b], "circuit_failures = 3\ncircuit_open = \"30s\"", table).await;
    a.set_submit_status(Some(CommandStatus::EsmeRsyserr));
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(send(&mut client, &format!("+4477002{i:05}"), &format!("s{i}")).await);
    }
    for id in &ids {
        let done = wait_status(&mut client, id, "delivered", Duration::from_secs(5)).await;
        assert_eq!(done["carrier"], "beta");
    }
    assert_eq!(b.stats().submits.len(), 20);
    let alpha = gw.daemon.carrier("alpha").unwrap();
    assert!(!alpha.usable(), "the circuit must be open");
    // alpha saw only the submits that opened the circuit (the SMSC counts the answered ones).
    let tried_on_a = a.stats().submits.len();
    assert!(tried_on_a <= 3, "alpha kept getting traffic: {tried_on_a}");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test]
async fn throttling_slows_the_carrier_without_dropping_or_spinning() {
    let a = sim(SimConfig::default()).await;
    let (gw, mut client) = gateway(&[&a], "", "").await;
    a.set_submit_status(Some(CommandStatus::EsmeRthrottled));
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(send(&mut client, &format!("+4477003{i:05}"), &format!("t{i}")).await);
    }
    // Five to one number: they must arrive in the order they were sent.
    for i in 0..5 {
        ids.push(send(&mut client, "+447700399999", &format!("same-{i}")).await);
    }
    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_spent = cpu_seconds() - cpu_before;
    assert!(cpu_spent < 0.5, "waiting on a throttled carrier burned {cpu_spent:.2}s of CPU in 2s");
    let alpha = gw.daemon.carrier("alpha").unwrap();
    let (window, tps) = alpha.limits();
    assert!(window < 64 && tps.is_some_and(|t| t <= 2.0), "throttling did not slow the carrier: window {window}, tps {tps:?}");
    a.set_submit_status(None);
    for id in &ids {
        wait_status(&mut client, id, "delivered", Duration::from_secs(30)).await;
    }
    assert_eq!(a.stats().submits.len(), 35, "every throttled message got through once accepted");
    let same: Vec<String> = a.stats().submits.iter().filter(|m| m.text.starts_with("same-")).map(|m| m.text.clone()).collect();
    assert_eq!(same, (0..5).map(|i| format!("same-{i}")).collect::<Vec<_>>(), "order per destination");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

async fn code_from(sim: &SmscSim) -> String {
    assert!(sim.wait_until(Duration::from_secs(5), |s| !s.submits.is_empty()).await, "no SMS");
    sim.stats().submits.last().unwrap().text.chars().take_while(char::is_ascii_digit).collect()
}

#[tokio::test]
async fn an_undelivered_otp_is_resent_through_the_next_carrier_but_a_plain_message_is_not() {
    let a = sim(SimConfig { receipt_stat: "UNDELIV", ..SimConfig::default() }).await;
    let b = sim(SimConfig::default()).await;
    let table = "[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n";
    let (gw, mut client) = gateway(&[&a, &b], "", table).await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];

    let plain = send(&mut client, "+447700900123", "plain").await;
    wait_status(&mut client, &plain, "undeliverable", Duration::from_secs(5)).await;

    let created = client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900456"}"#)).await.unwrap();
    let id = created.json()["id"].as_str().unwrap().to_string();
    let first_code = {
        assert!(a.wait_until(Duration::from_secs(5), |s| s.submits.len() == 2).await);
        a.stats().submits[1].text.chars().take_while(char::is_ascii_digit).collect::<String>()
    };
    let second_code = code_from(&b).await;
    assert_eq!(b.stats().submits.len(), 1, "only the OTP is resent, once");
    assert!(b.stats().submits[0].to == "447700900456");
    if first_code != second_code {
        let body = format!(r#"{{"code": "{first_code}"}}"#);
        let reply = client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body)).await.unwrap();
        assert_eq!(reply.json()["status"], "pending", "the undelivered code was replaced");
    }
    let body = format!(r#"{{"code": "{second_code}"}}"#);
    let reply = client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body)).await.unwrap();
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
    // The resend's carrier, once the store has its response (the sim saw the submit first).
    common::wait_sent_via(&mut client, API_KEY, &id, "beta").await;
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// alpha never sends receipts, beta does; one failover route over both with `receipt_timeout`.
/// Returns the config extra too, for restarts.
async fn receipts_only_from_beta(receipt_timeout: &str) -> (SmscSim, SmscSim, Gateway, Client, String) {
    let a = sim(SimConfig { receipts: false, ..SimConfig::default() }).await;
    let b = sim(SimConfig::default()).await;
    let extra =
        format!("[[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\", \"beta\"]\n[otp]\nreceipt_timeout = \"{receipt_timeout}\"\n");
    let (gw, client) = gateway(&[&a, &b], "", &extra).await;
    (a, b, gw, client, extra)
}

#[tokio::test]
async fn an_otp_without_a_receipt_in_time_is_resent_through_the_next_carrier() {
    let (a, b, gw, mut client, _) = receipts_only_from_beta("1s").await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let started = Instant::now();
    let created = client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900456"}"#)).await.unwrap();
    assert_eq!(created.status, 201);
    let code = code_from(&b).await;
    assert!(started.elapsed() >= Duration::from_millis(900), "resent before the receipt timeout");
    assert_eq!(a.stats().submits.len(), 1);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let body = format!(r#"{{"code": "{code}"}}"#);
    let reply = client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body)).await.unwrap();
    assert_eq!(reply.json()["status"], "approved");
    // With every carrier of the route used, there is no third send.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(a.stats().submits.len() + b.stats().submits.len(), 2);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_receipt_watch_survives_a_restart() {
    let (a, b, gw, mut client, extra) = receipts_only_from_beta("2s").await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let created = client.request("POST", "/v1/verifications", &headers, Some(r#"{"to": "+447700900456"}"#)).await.unwrap();
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    code_from(&a).await;
    let sent = Instant::now();

    // Restarted before the receipt timeout: the new process must still resend in time.
    let gw = gw.restart_with(&[a.addr(), b.addr()], &extra).await;
    gw.wait_bound().await;
    let code = code_from(&b).await;
    assert!(sent.elapsed() < Duration::from_secs(5), "resent {:?} after the first send", sent.elapsed());
    assert_eq!(a.stats().submits.len(), 1, "the submitted SMS is not sent again on the same carrier");
    let mut client = gw.client().await;
    let body = format!(r#"{{"code": "{code}"}}"#);
    let reply = client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&body)).await.unwrap();
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_reload_resizes_the_deliveries_under_way_to_the_new_carriers_windows() {
    let a = sim(SimConfig::default()).await;
    let b = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[a.addr()], "window = 4\nsessions = 1").await;
    gw.wait_bound().await;
    assert_eq!(gw.daemon.delivery_slots(), 4 * 4, "the window in flight and three waiting");

    let with_beta = format!("{}\n", common::gateway_toml(&[a.addr(), b.addr()], gw.dir.path(), "window = 4\nsessions = 1"));
    let with_beta = otpgate::config::Config::from_toml(&with_beta, std::path::Path::new("gateway.toml")).unwrap();
    gw.daemon.reload(&with_beta);
    assert_eq!(gw.daemon.delivery_slots(), 8 * 4, "beta's window is usable at once");

    let alone = format!("{}\n", common::gateway_toml(&[a.addr()], gw.dir.path(), "window = 4\nsessions = 1"));
    let alone = otpgate::config::Config::from_toml(&alone, std::path::Path::new("gateway.toml")).unwrap();
    gw.daemon.reload(&alone);
    let deadline = Instant::now() + Duration::from_secs(2);
    while gw.daemon.delivery_slots() != 4 * 4 {
        assert!(Instant::now() < deadline, "still {} slots after beta left", gw.daemon.delivery_slots());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}
