//! The verification API over real HTTP, with codes read out of the SMS the simulated carrier
//! received over a real SMPP session. One test per rule of the OTP security baseline.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{API_KEY, Gateway, OTHER_KEY, bearer, call, code_sent, sim};
use otpgate::clock::{Clock, ShiftedClock};
use otpgate::http::client::{Client, Reply};
use otpgate::sim::{SimConfig, SmscSim};
use serde_json::Value;

const NUMBER: &str = "+447700900123";

struct Setup {
    sim: SmscSim,
    gw: Gateway,
    client: Client,
    clock: Arc<ShiftedClock>,
}

/// A bound gateway with `otp` extra lines in its `[otp]` section.
async fn setup(otp: &str) -> Setup {
    let sim = sim(SimConfig::default()).await;
    let clock = Arc::new(ShiftedClock::default());
    let extra = format!("[otp]\nbrand = \"Acme\"\n{otp}\n");
    let (gw, client) = Gateway::setup(&[sim.addr()], "").sections(&extra).clock(clock.clone()).bound().await;
    Setup { sim, gw, client, clock }
}

async fn create(client: &mut Client, key: &str, body: &str) -> Reply {
    call(client, "POST", "/v1/verifications", key, Some(body)).await
}

async fn check(client: &mut Client, key: &str, id: &str, code: &str) -> Reply {
    let body = format!(r#"{{"code": "{code}"}}"#);
    call(client, "POST", &format!("/v1/verifications/{id}/check"), key, Some(&body)).await
}

fn to(number: &str) -> String {
    format!(r#"{{"to": "{number}"}}"#)
}

fn id_of(reply: &Reply) -> String {
    reply.json()["id"].as_str().unwrap_or_else(|| panic!("no id in {}", reply.body)).to_string()
}

#[tokio::test]
async fn the_right_code_approves_once() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let created = create(&mut client, API_KEY, &to(NUMBER)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let json = created.json();
    assert_eq!(json["status"], "pending");
    assert_eq!(json["to"], NUMBER);
    assert_eq!(json["checks_left"], 5);
    assert_eq!(json["sends"], 1);
    assert!(json["message_id"].is_string() && json["expires_at"].is_string(), "{json}");
    let id = id_of(&created);

    let code = code_sent(&sim, NUMBER, 1).await;
    assert_eq!(code.len(), 6);
    let sms = sim.stats().submits[0].clone();
    assert_eq!(sms.text, format!("{code} is your Acme code. It expires in 5 min. Never share it."));
    // The SMS may only be delivered while the code works: validity is its remaining life.
    assert!(sms.validity_period.starts_with("00000000045") || sms.validity_period.starts_with("000000000500"), "{}", sms.validity_period);

    let approved = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!((approved.status, approved.json()["status"].clone()), (200, "approved".into()), "{}", approved.body);
    let again = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!(again.status, 409, "a code is accepted once");
    assert_eq!(again.json()["status"], "approved");
    assert_eq!(again.json()["error"]["code"], "verification_not_pending");

    let got = call(&mut client, "GET", &format!("/v1/verifications/{id}"), API_KEY, None).await.json();
    assert_eq!(got["status"], "approved");
    assert_eq!(got["delivery"]["message_id"], json["message_id"]);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn wrong_codes_count_down_to_a_lock_that_refuses_even_the_right_code() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let code = code_sent(&sim, NUMBER, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..=4).rev() {
        let reply = check(&mut client, API_KEY, &id, wrong).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["status"], "pending");
        assert_eq!(reply.json()["checks_left"], left);
    }
    let last = check(&mut client, API_KEY, &id, wrong).await;
    assert_eq!(last.json()["status"], "max_attempts_reached", "{}", last.body);
    let right = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!(right.status, 409);
    assert_eq!(right.json()["status"], "max_attempts_reached");
    // Malformed codes are refused without using up a check.
    let malformed = check(&mut client, API_KEY, &id, "12ab").await;
    assert_eq!((malformed.status, malformed.json()["error"]["code"].clone()), (400, "invalid_code".into()));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_code_stops_working_when_it_expires() {
    let Setup { sim, gw, mut client, clock } = setup("").await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let code = code_sent(&sim, NUMBER, 1).await;
    clock.advance(Duration::from_secs(5 * 60 + 1));
    let reply = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!((reply.status, reply.json()["status"].clone()), (409, "expired".into()), "{}", reply.body);
    let got = call(&mut client, "GET", &format!("/v1/verifications/{id}"), API_KEY, None).await;
    assert_eq!(got.json()["status"], "expired");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_resend_issues_a_new_code_and_kills_the_old_one() {
    let Setup { sim, gw, mut client, clock } = setup("").await;
    let first = create(&mut client, API_KEY, &to(NUMBER)).await;
    let id = id_of(&first);
    let old = code_sent(&sim, NUMBER, 1).await;

    let early = create(&mut client, API_KEY, &to(NUMBER)).await;
    assert_eq!(early.status, 429, "{}", early.body);
    assert_eq!(early.json()["error"]["code"], "resend_cooldown");
    assert!(early.body.contains("message"));

    clock.advance(Duration::from_secs(31));
    let resent = create(&mut client, API_KEY, &to(NUMBER)).await;
    assert_eq!(resent.status, 201, "{}", resent.body);
    assert_eq!(id_of(&resent), id, "a resend keeps the verification");
    assert_eq!(resent.json()["sends"], 2);
    assert_ne!(resent.json()["message_id"], first.json()["message_id"]);
    let new = code_sent(&sim, NUMBER, 2).await;
    if old != new {
        let reply = check(&mut client, API_KEY, &id, &old).await;
        assert_eq!(reply.json()["status"], "pending", "the old code must be dead: {}", reply.body);
    }
    let reply = check(&mut client, API_KEY, &id, &new).await;
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn retry_after_is_sent_with_every_429() {
    let Setup { gw, mut client, .. } = setup("").await;
    create(&mut client, API_KEY, &to(NUMBER)).await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    // Our tiny client does not expose headers; ask with a raw request instead.
    let raw = raw_request(gw.daemon.http_addr(), "POST", "/v1/verifications", &headers, &to(NUMBER)).await;
    assert!(raw.starts_with("HTTP/1.1 429"), "{raw}");
    let retry: u64 = raw
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: ").or_else(|| l.strip_prefix("Retry-After: ")))
        .expect("Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

async fn raw_request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn sends_per_number_are_limited_across_verifications() {
    let Setup { gw, mut client, .. } = setup("resend_cooldown = \"0s\"\nmax_sends_per_number = 3\nmax_sends_per_number_all_keys = 4").await;
    for _ in 0..3 {
        assert_eq!(create(&mut client, API_KEY, &to(NUMBER)).await.status, 201);
    }
    let refused = create(&mut client, API_KEY, &to(NUMBER)).await;
    assert_eq!((refused.status, refused.json()["error"]["code"].clone()), (429, "send_limit".into()));
    // Another key has its own sends to the number (one key cannot spend another's), up to the
    // number's ceiling across all keys.
    assert_eq!(create(&mut client, OTHER_KEY, &to(NUMBER)).await.status, 201);
    let ceiling = create(&mut client, OTHER_KEY, &to(NUMBER)).await;
    assert_eq!((ceiling.status, ceiling.json()["error"]["code"].clone()), (429, "send_limit".into()));
    // Another number is unaffected.
    assert_eq!(create(&mut client, API_KEY, &to("+447700900999")).await.status, 201);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn failed_checks_per_number_keep_counting_across_verifications() {
    let Setup { sim, gw, mut client, clock } = setup("max_failed_checks_per_number = 7").await;
    let first = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    for _ in 0..5 {
        check(&mut client, API_KEY, &first, "99999999").await;
    }
    // A fresh verification (the first is locked) does not reset the number's failures.
    clock.advance(Duration::from_secs(31));
    let second = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    assert_ne!(second, first);
    let code = code_sent(&sim, NUMBER, 2).await;
    for _ in 0..2 {
        assert_eq!(check(&mut client, API_KEY, &second, "99999999").await.json()["status"], "pending");
    }
    let blocked = check(&mut client, API_KEY, &second, &code).await;
    assert_eq!((blocked.status, blocked.json()["error"]["code"].clone()), (429, "failed_check_limit".into()), "{}", blocked.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// One API key's wrong codes do not lock another key's user out of the same number.
#[tokio::test]
async fn one_keys_failed_checks_do_not_lock_out_another_keys_user() {
    let Setup { sim, gw, mut client, .. } = setup("max_failed_checks_per_number = 3").await;
    let attacker = id_of(&create(&mut client, OTHER_KEY, &to(NUMBER)).await);
    for _ in 0..3 {
        check(&mut client, OTHER_KEY, &attacker, "99999999").await;
    }
    let victim = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let code = code_sent(&sim, NUMBER, 2).await;
    let approved = check(&mut client, API_KEY, &victim, &code).await;
    assert_eq!(approved.json()["status"], "approved", "{}", approved.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// The resend cooldown follows the key's last send to the number: cancelling and creating
/// again does not send a second SMS at once.
#[tokio::test]
async fn create_cancel_create_does_not_bypass_the_resend_cooldown() {
    let Setup { gw, mut client, clock, .. } = setup("").await;
    let first = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let canceled = call(&mut client, "DELETE", &format!("/v1/verifications/{first}"), API_KEY, None).await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);
    let again = create(&mut client, API_KEY, &to(NUMBER)).await;
    assert_eq!((again.status, again.json()["error"]["code"].clone()), (429, "resend_cooldown".into()), "{}", again.body);
    clock.advance(Duration::from_secs(31));
    assert_eq!(create(&mut client, API_KEY, &to(NUMBER)).await.status, 201);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn checks_per_number_are_throttled() {
    let Setup { gw, mut client, .. } = setup("checks_per_minute_per_number = 3").await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    for _ in 0..3 {
        assert_eq!(check(&mut client, API_KEY, &id, "99999999").await.status, 200);
    }
    let throttled = check(&mut client, API_KEY, &id, "99999999").await;
    assert_eq!((throttled.status, throttled.json()["error"]["code"].clone()), (429, "rate_limited".into()));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn creates_are_rate_limited_per_client_address() {
    let Setup { gw, mut client, .. } = setup("creates_per_minute_per_ip = 3").await;
    for n in 0..3 {
        let reply = create(&mut client, API_KEY, &to(&format!("+4477009001{n:02}"))).await;
        assert_eq!(reply.status, 201);
    }
    let limited = create(&mut client, OTHER_KEY, &to("+447700900199")).await;
    assert_eq!((limited.status, limited.json()["error"]["code"].clone()), (429, "rate_limited".into()));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_canceled_verification_refuses_its_code() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let code = code_sent(&sim, NUMBER, 1).await;
    let path = format!("/v1/verifications/{id}");
    let canceled = call(&mut client, "DELETE", &path, API_KEY, None).await;
    assert_eq!((canceled.status, canceled.json()["status"].clone()), (200, "canceled".into()));
    let reply = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!((reply.status, reply.json()["status"].clone()), (409, "canceled".into()));
    assert_eq!(call(&mut client, "DELETE", &path, API_KEY, None).await.status, 409);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn idempotent_creates_send_one_sms() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let auth = bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Idempotency-Key", "signup-7")];
    let body = to(NUMBER);
    let first = client.request("POST", "/v1/verifications", &headers, Some(&body)).await.unwrap();
    let again = client.request("POST", "/v1/verifications", &headers, Some(&body)).await.unwrap();
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.json(), again.json(), "the replay is the first answer");
    let other = client.request("POST", "/v1/verifications", &headers, Some(&to("+447700900999"))).await.unwrap();
    assert_eq!(other.status, 409);
    code_sent(&sim, NUMBER, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.stats().submits.len(), 1);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn destinations_outside_the_allow_list_are_refused_before_anything_is_queued() {
    let Setup { sim, gw, mut client, .. } = setup("allowed_prefixes = [\"+44\", \"+353\"]").await;
    let blocked = create(&mut client, API_KEY, &to("+33612345678")).await;
    assert_eq!((blocked.status, blocked.json()["error"]["code"].clone()), (403, "destination_blocked".into()));
    assert_eq!(gw.daemon.store().counts().await.unwrap(), (0, 0, 0), "nothing stored");
    assert_eq!(create(&mut client, API_KEY, &to("+353861234567")).await.status, 201);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.stats().submits.iter().all(|m| !m.to.starts_with("33")));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_code_only_works_for_its_verification_and_context() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let a = id_of(&create(&mut client, API_KEY, r#"{"to": "+447700900123", "context": "pay 25.00 EUR to Shop"}"#).await);
    let b = id_of(&create(&mut client, API_KEY, &to("+447700900456")).await);
    let code_a = code_sent(&sim, "+447700900123", 1).await;
    let code_b = code_sent(&sim, "+447700900456", 1).await;
    if code_a != code_b {
        let cross = check(&mut client, API_KEY, &b, &code_a).await;
        assert_eq!(cross.json()["status"], "pending", "code of A on B must fail");
    }
    let path = format!("/v1/verifications/{a}/check");
    let other_context = format!(r#"{{"code": "{code_a}", "context": "pay 2500.00 EUR to Shop"}}"#);
    let reply = call(&mut client, "POST", &path, API_KEY, Some(&other_context)).await;
    assert_eq!(reply.json()["status"], "pending", "a code bound to one context fails for another");
    let same_context = format!(r#"{{"code": "{code_a}", "context": "pay 25.00 EUR to Shop"}}"#);
    let reply = call(&mut client, "POST", &path, API_KEY, Some(&same_context)).await;
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn verifications_are_private_to_their_api_key() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let code = code_sent(&sim, NUMBER, 1).await;
    let path = format!("/v1/verifications/{id}");
    assert_eq!(call(&mut client, "GET", &path, OTHER_KEY, None).await.status, 404);
    assert_eq!(check(&mut client, OTHER_KEY, &id, &code).await.status, 404);
    assert_eq!(call(&mut client, "DELETE", &path, OTHER_KEY, None).await.status, 404);
    assert_eq!(call(&mut client, "GET", &path, "no-such-key", None).await.status, 401);
    assert_eq!(check(&mut client, API_KEY, &id, &code).await.json()["status"], "approved");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn numbers_seen_before_get_the_same_answers_as_new_ones() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let seen = create(&mut client, API_KEY, &to(NUMBER)).await;
    let code = code_sent(&sim, NUMBER, 1).await;
    check(&mut client, API_KEY, &id_of(&seen), &code).await;
    let again = create(&mut client, API_KEY, &to(NUMBER)).await;
    let fresh = create(&mut client, API_KEY, &to("+447700900777")).await;
    assert_eq!(again.status, fresh.status);
    let shape = |v: Value| {
        let mut v = v;
        for volatile in ["id", "to", "created_at", "expires_at", "message_id"] {
            v[volatile] = Value::Null;
        }
        v
    };
    assert_eq!(shape(again.json()), shape(fresh.json()));
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn request_options_are_validated() {
    let Setup { sim, gw, mut client, .. } = setup("").await;
    let eight = create(&mut client, API_KEY, r#"{"to": "+447700900123", "code_length": 8, "locale": "fr"}"#).await;
    assert_eq!(eight.status, 201, "{}", eight.body);
    let code = code_sent(&sim, NUMBER, 1).await;
    assert_eq!(code.len(), 8);
    assert!(sim.stats().submits[0].text.contains("est votre code Acme"));
    let cases = [
        (r#"{"to": "+447700900124", "code_length": 11}"#, 400, "invalid_code_length"),
        (r#"{"to": "+447700900124", "code_length": 3}"#, 400, "invalid_code_length"),
        (r#"{"to": "+447700900124", "locale": "xx"}"#, 400, "invalid_locale"),
        (r#"{"to": "447700900124"}"#, 400, "invalid_to"),
        (r#"{"to": "+447700900124", "context": ""}"#, 400, "invalid_context"),
        // A bidi override makes "pay 25.00 EUR" display while the code is bound to another
        // string; zero-width and other format characters hide text the same way.
        ("{\"to\": \"+447700900124\", \"context\": \"pay 52.00 \u{202E}RUE\"}", 400, "invalid_context"),
        ("{\"to\": \"+447700900124\", \"context\": \"pay 25.00\u{200B}0 EUR\"}", 400, "invalid_context"),
        ("{\"to\": \"+447700900124\", \"context\": \"pay \u{2066}25.00\u{2069} EUR\"}", 400, "invalid_context"),
        ("{\"to\": \"+447700900124\", \"context\": \"pay\u{00AD}ee\"}", 400, "invalid_context"),
        (r#"{"to": "+447700900124", "code": "123456"}"#, 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let reply = create(&mut client, API_KEY, body).await;
        assert_eq!((reply.status, reply.json()["error"]["code"].clone()), (status, code.into()), "{body}: {}", reply.body);
    }
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_unsent_code_lost_with_its_process_is_replaced_by_a_fresh_one() {
    // The carrier is down: the OTP message stays queued when the daemon stops.
    let addr = common::free_addr();
    let gw = Gateway::setup(&[addr], "").start().await;
    let mut client = gw.client().await;
    let id = id_of(&create(&mut client, API_KEY, &to(NUMBER)).await);
    let sim = otpgate::sim::SmscSim::start(addr, SimConfig::default()).await.unwrap();
    let gw = gw.restart(&[addr]).await;
    let mut client = gw.client().await;
    let code = code_sent(&sim, NUMBER, 1).await;
    let reply = check(&mut client, API_KEY, &id, &code).await;
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn the_test_clock_moves_only_forward_from_real_time() {
    let clock = ShiftedClock::default();
    let before = std::time::SystemTime::now();
    clock.advance(Duration::from_secs(60));
    assert!(clock.now() >= before + Duration::from_secs(60));
}
