//! The fraud guard and the conversion analytics over real HTTP, with a clock the test moves: a
//! replay of normal users mixed with an SMS pumping burst, returning users, monitor mode,
//! probes, pins, a restart, and the analytics against the test's own count.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{API_KEY, Gateway, OTHER_KEY, call, sim};
use otpgate::clock::ShiftedClock;
use otpgate::http::client::{Client, Reply};
use otpgate::sim::{SimConfig, SmscSim};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

struct Setup {
    sim: SmscSim,
    gw: Gateway,
    client: Client,
    clock: Arc<ShiftedClock>,
}

async fn setup(fraud: &str) -> Setup {
    setup_with(fraud, "").await
}

async fn setup_with(fraud: &str, more: &str) -> Setup {
    let sim = sim(SimConfig { receipt_delay: Duration::from_millis(1), ..SimConfig::default() }).await;
    let clock = Arc::new(ShiftedClock::default());
    let otp = "[otp]\ncreates_per_minute_per_key = 0\ncreates_per_minute_per_ip = 0\nchecks_per_minute_per_key = 0\n\
               checks_per_minute_per_ip = 0\nchecks_per_minute_per_number = 0\nmax_sends_per_number = 1000\nresend_cooldown = \"0s\"\n";
    let sections = format!("{otp}\n[fraud]\n{fraud}\n\n{more}\n");
    let (gw, client) = Gateway::setup(&[sim.addr()], "").sections(&sections).clock(clock.clone()).bound().await;
    Setup { sim, gw, client, clock }
}

/// Starts a verification to `to`; its id, or the refusal.
async fn create(s: &mut Setup, key: &str, to: &str) -> Result<String, Reply> {
    let reply = call(&mut s.client, "POST", "/v1/verifications", key, Some(&json!({"to": to}).to_string())).await;
    match reply.status {
        201 => Ok(reply.json()["id"].as_str().unwrap().to_string()),
        _ => Err(reply),
    }
}

/// Approves verification `id` to `to` with the code the carrier got.
async fn approve(s: &mut Setup, key: &str, id: &str, to: &str) {
    let digits = to.trim_start_matches('+').to_string();
    let arrived = s.sim.wait_until(Duration::from_secs(5), |st| st.submits.iter().any(|m| m.to == digits)).await;
    assert!(arrived, "no SMS to {to}");
    let text = s.sim.with_stats(|st| st.submits.iter().rev().find(|m| m.to == digits).unwrap().text.clone());
    let code: String = text.chars().take_while(char::is_ascii_digit).collect();
    let reply = call(&mut s.client, "POST", &format!("/v1/verifications/{id}/check"), key, Some(&json!({"code": code}).to_string())).await;
    assert_eq!(reply.json()["status"], "approved", "{}", reply.body);
}

fn legit_number(prefix: usize, n: usize) -> String {
    // 30 prefixes under +44 7 (+447100 .. +447129), distinct numbers.
    format!("+4471{prefix:02}{n:06}")
}

#[tokio::test]
async fn a_pumping_burst_is_stopped_within_twenty_sends_while_normal_users_are_never_refused() {
    let mut s = setup("").await;
    // A day of normal history: a few users an hour on 30 prefixes, each approving in a minute.
    let mut n = 0;
    for _hour in 0..25 {
        for prefix in 0..6 {
            n += 1;
            let to = legit_number(prefix, n);
            let id = create(&mut s, API_KEY, &to).await.expect("normal users pass");
            approve(&mut s, API_KEY, &id, &to).await;
        }
        s.clock.advance(Duration::from_secs(3600));
    }
    // Then an hour of mixed traffic: normal users on 30 prefixes, and from minute 10 a burst of
    // 500 codes to numbers in +44 7911, none approved.
    let (mut legit, mut legit_refused, mut burst, mut burst_refused) = (0, 0, 0, 0);
    let mut first_refused_at = None;
    for minute in 0..60 {
        for prefix in 0..30 {
            if (minute + prefix) % 6 != 0 {
                continue;
            }
            n += 1;
            legit += 1;
            let to = legit_number(prefix, n);
            match create(&mut s, API_KEY, &to).await {
                Ok(id) => approve(&mut s, API_KEY, &id, &to).await,
                Err(reply) => {
                    legit_refused += 1;
                    eprintln!("legit refused: {}", reply.body);
                }
            }
        }
        if (10..20).contains(&minute) {
            for i in 0..50 {
                burst += 1;
                match create(&mut s, API_KEY, &format!("+447911{:06}", minute * 100 + i)).await {
                    Ok(_) => {}
                    Err(reply) => {
                        assert_eq!(
                            (reply.status, reply.json()["error"]["code"].as_str()),
                            (429, Some("suspected_fraud")),
                            "{}",
                            reply.body
                        );
                        burst_refused += 1;
                        first_refused_at.get_or_insert(burst);
                    }
                }
            }
        }
        s.clock.advance(MINUTE);
    }
    let blocked_share = burst_refused as f64 / burst as f64;
    let legit_share = legit_refused as f64 / legit as f64;
    eprintln!(
        "burst {burst}: {burst_refused} refused ({:.1} %), first refused at send {first_refused_at:?}; normal {legit}: {legit_refused} refused",
        blocked_share * 100.0
    );
    assert!(first_refused_at.is_some_and(|n| n <= 21), "suspended within 20 sends of the burst: {first_refused_at:?}");
    assert!(blocked_share >= 0.95, "{blocked_share}");
    assert!(legit_share < 0.01, "{legit_refused} of {legit} normal users refused");
    let analytics = call(&mut s.client, "GET", "/v1/analytics/verifications?group_by=prefix&since=1h", API_KEY, None).await.json();
    let suspended = analytics["fraud"]["suspended_prefixes"].as_array().unwrap();
    assert_eq!(suspended.len(), 1, "{analytics}");
    assert_eq!(suspended[0]["prefix"], "+44791");
    let page = common::metric(s.gw.daemon.metrics_addr(), "otpgate_fraud_suspensions_total{country=\"GB\"}").await;
    assert_eq!(page, 1.0);
}

#[tokio::test]
async fn low_conversion_suspends_a_prefix_returning_users_still_get_codes_and_a_probe_lifts_it() {
    let mut s = setup("min_sends = 10").await;
    // A user of +44 7922 approves a code: later they are a returning user.
    let regular = "+447922000001";
    let id = create(&mut s, API_KEY, regular).await.unwrap();
    approve(&mut s, API_KEY, &id, regular).await;
    // Slow pumping: 2 codes a minute to +44 7922, never approved.
    let mut refused = None;
    for i in 0..30 {
        match create(&mut s, API_KEY, &format!("+447922{:06}", 100 + i)).await {
            Ok(_) => {}
            Err(reply) => {
                refused = Some(reply);
                break;
            }
        }
        if i % 2 == 1 {
            s.clock.advance(MINUTE);
        }
    }
    let refused = refused.expect("suspended once the window's settled sends convert under 20 %");
    assert!(refused.body.contains("suspected_fraud"));
    // The same answer for any new number in the prefix, whoever asks (no existence oracle) ...
    let other = create(&mut s, OTHER_KEY, "+447922999999").await.unwrap_err();
    assert_eq!(other.status, 429);
    assert_eq!(other.json()["error"], refused.json()["error"]);
    // ... but the returning user gets a code, and so does a neighbouring prefix.
    create(&mut s, API_KEY, regular).await.expect("a number that converted before passes");
    create(&mut s, API_KEY, "+447930000001").await.expect("another prefix (+44793) is not suspended");

    // After suspend_for the prefix is probed: one code a minute; an approved probe lifts it.
    s.clock.advance(Duration::from_secs(3601));
    let probe = "+447922777777";
    let id = create(&mut s, API_KEY, probe).await.expect("a probe goes through");
    assert_eq!(create(&mut s, API_KEY, "+447922777778").await.unwrap_err().status, 429, "one probe a minute");
    approve(&mut s, API_KEY, &id, probe).await;
    create(&mut s, API_KEY, "+447922777779").await.expect("lifted");
}

#[tokio::test]
async fn monitor_mode_refuses_nothing_but_reports_the_same_suspension() {
    let mut s = setup("mode = \"monitor\"\nmin_sends = 10").await;
    for i in 0..40 {
        create(&mut s, API_KEY, &format!("+447933{i:06}")).await.expect("monitor refuses nothing");
        if i % 2 == 1 {
            s.clock.advance(MINUTE);
        }
    }
    let analytics = call(&mut s.client, "GET", "/v1/analytics/verifications", API_KEY, None).await.json();
    assert_eq!(analytics["fraud"]["mode"], "monitor");
    assert_eq!(analytics["fraud"]["suspended_prefixes"][0]["prefix"], "+44793", "{analytics}");
    let would = common::metric(s.gw.daemon.metrics_addr(), "otpgate_fraud_refused_total{country=\"GB\",mode=\"monitor\"}").await;
    assert!(would >= 1.0, "{would}");
}

#[tokio::test]
async fn pins_and_a_reload_apply_at_once_and_a_suspension_survives_a_restart() {
    let mut s = setup("always_block = [\"+44795\"]\nalways_allow = [\"+44796\"]\nmin_sends = 5").await;
    let blocked = create(&mut s, API_KEY, "+447950000001").await.unwrap_err();
    assert_eq!((blocked.status, blocked.json()["error"]["code"].as_str()), (429, Some("suspected_fraud")));
    // An allowed prefix is never suspended, whatever its conversion.
    for i in 0..20 {
        create(&mut s, API_KEY, &format!("+447960{i:06}")).await.expect("pinned allowed");
        s.clock.advance(MINUTE);
    }
    // Another prefix gets suspended ...
    let mut suspended = false;
    for i in 0..20 {
        if create(&mut s, API_KEY, &format!("+447970{i:06}")).await.is_err() {
            suspended = true;
            break;
        }
        s.clock.advance(MINUTE);
    }
    assert!(suspended);
    // ... and stays so after a restart (the clock is real again: the suspension's hour has not run).
    let Setup { sim, gw, .. } = s;
    let gw = gw.restart_with(&[sim.addr()], "[fraud]\nmin_sends = 5\n").await;
    gw.wait_bound().await;
    let mut client = gw.client().await;
    let body = json!({"to": "+447970888888"}).to_string();
    let reply = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(&body)).await;
    // The suspension is in the store; it ran on the moved clock, which the restart no longer has.
    let analytics = call(&mut client, "GET", "/v1/analytics/verifications", API_KEY, None).await.json();
    assert_eq!(analytics["fraud"]["suspended_prefixes"][0]["prefix"], "+44797", "{analytics}");
    assert_eq!(reply.status, 429, "{}", reply.body);
    // A reload turns the guard off: the same request passes.
    let config =
        common::gateway_config(&common::named(&[sim.addr()]), gw.dir.path(), "").sections("[fraud]\nmode = \"off\"\n").build().unwrap();
    gw.daemon.reload(&config);
    let reply = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

#[tokio::test]
async fn analytics_equal_the_count_of_what_was_sent_and_approved_per_key_and_group() {
    let mut s = setup("mode = \"off\"").await;
    let mut expected: HashMap<&str, (u64, u64)> = HashMap::new();
    let numbers =
        [("+447700900001", "GB", true), ("+447700900002", "GB", false), ("+14155550101", "US", true), ("+4915100000001", "DE", true)];
    for (to, country, approves) in numbers {
        let id = create(&mut s, API_KEY, to).await.unwrap();
        if approves {
            approve(&mut s, API_KEY, &id, to).await;
        }
        let entry = expected.entry(country).or_default();
        entry.0 += 1;
        entry.1 += u64::from(approves);
    }
    create(&mut s, OTHER_KEY, "+447700900003").await.unwrap();
    // Every SMS delivered (the simulator's receipts) before the count.
    assert!(s.sim.wait_until(Duration::from_secs(5), |st| st.acked_receipts.len() >= 5).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let analytics = call(&mut s.client, "GET", "/v1/analytics/verifications?group_by=country", API_KEY, None).await.json();
    let groups: HashMap<String, Value> =
        analytics["groups"].as_array().unwrap().iter().map(|g| (g["key"].as_str().unwrap().to_string(), g.clone())).collect();
    assert_eq!(groups.len(), 3, "only this key's records: {analytics}");
    for (country, (sent, approved)) in expected {
        let g = &groups[country];
        assert_eq!(
            (g["verifications"].as_u64(), g["approved"].as_u64(), g["delivered"].as_u64()),
            (Some(sent), Some(approved), Some(sent)),
            "{g}"
        );
        assert_eq!(g["conversion_rate"].as_f64().unwrap(), approved as f64 / sent as f64);
        if approved > 0 {
            assert!(g["time_to_approve_ms"]["p50"].is_u64(), "{g}");
        }
    }
    let carriers = call(&mut s.client, "GET", "/v1/analytics/verifications?group_by=carrier", API_KEY, None).await.json();
    assert_eq!(carriers["groups"][0]["key"], "alpha");
    assert_eq!(carriers["groups"][0]["verifications"], 4);
    let bad = call(&mut s.client, "GET", "/v1/analytics/verifications?group_by=planet", API_KEY, None).await;
    assert_eq!((bad.status, bad.json()["error"]["code"].as_str()), (400, Some("invalid_group_by")));
}

#[tokio::test]
async fn the_windows_are_rebuilt_from_the_store_after_a_restart() {
    // Every send counts at once (no grace), ten unapproved ones suspend the prefix.
    let mut s = setup("min_sends = 10\napproval_grace = \"0s\"").await;
    for i in 0..9 {
        create(&mut s, API_KEY, &format!("+447980{i:06}")).await.expect("below min_sends");
    }
    let Setup { sim, gw, .. } = s;
    let gw = gw.restart_with(&[sim.addr()], "[fraud]\nmin_sends = 10\napproval_grace = \"0s\"\n").await;
    gw.wait_bound().await;
    let mut client = gw.client().await;
    let send = async |client: &mut Client, n: u32| {
        call(client, "POST", "/v1/verifications", API_KEY, Some(&json!({"to": format!("+447980{n:06}")}).to_string())).await.status
    };
    // The tenth send (the first after the restart) completes the window the restart rebuilt.
    assert_eq!(send(&mut client, 9).await, 201);
    assert_eq!(send(&mut client, 10).await, 429, "the nine sends before the restart still count");
}

#[tokio::test]
async fn a_suspension_is_a_signed_webhook_event_for_endpoints_that_hear_every_key() {
    let everyone = common::receiver::Receiver::start(common::receiver::Mode::Answer(204)).await;
    let one_key = common::receiver::Receiver::start(common::receiver::Mode::Answer(204)).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hooks = format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"{}\"\nsecret = \"{secret}\"\nevents = [\"fraud.*\"]\n\n\
         [[webhooks]]\nname = \"client\"\nurl = \"{}\"\nsecret = \"{secret}\"\napi_keys = [\"test\"]\n",
        everyone.url(),
        one_key.url()
    );
    let mut s = setup_with("min_sends = 5\napproval_grace = \"0s\"", &hooks).await;
    for i in 0..6 {
        let _ = create(&mut s, API_KEY, &format!("+447990{i:06}")).await;
    }
    let taken = everyone.wait_taken(1, Duration::from_secs(5)).await;
    let event = taken.iter().map(|seen| seen.json()).find(|e| e["type"] == "fraud.prefix_suspended").expect("the suspension event");
    assert_eq!((event["data"]["prefix"].as_str(), event["data"]["country"].as_str()), (Some("+44799"), Some("GB")), "{event}");
    assert_eq!(event["data"]["mode"], "enforce");
    assert!(taken[0].verifies(secret));
    // An endpoint that hears one key's records gets its verifications, not the suspension.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(one_key.taken().iter().all(|seen| seen.json()["type"] != "fraud.prefix_suspended"));
}
