//! Long and Unicode SMS over real sockets: every way a carrier joins parts (udh, udh16, sar,
//! payload) against our simulator and node-smpp's server, a receipt per part (out of order, on
//! another session, after a restart), a part refused half way, a kill -9 mid-message, and
//! throttling by parts.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{API_KEY, Gateway, NodeSmsc, get_message, post_message, sim, wait_status};
use otpgate::sim::{SimConfig, SmscSim};
use rusmpp::CommandStatus;
use serde_json::{Value, json};

/// 380 GSM characters, 63 of them from the extension table (two septets each) and '@' among
/// them: 443 septets, three parts with either header, none split between ESC and its character.
fn gsm_text() -> String {
    let line = "Your parcel @ depot {A} costs €12 [incl. ~tax] | ^ok\\ ";
    line.repeat(8).chars().take(380).collect()
}

async fn send(client: &mut otpgate::http::client::Client, to: &str, text: &str) -> Value {
    let reply = post_message(client, API_KEY, &json!({"to": to, "text": text}).to_string(), None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()
}

/// The submits `sim` got for `to` (digits), in arrival order.
fn submits_to(sim: &SmscSim, to: &str) -> Vec<otpgate::sim::ReceivedSms> {
    sim.with_stats(|s| s.submits.iter().filter(|m| m.to == to).cloned().collect())
}

#[tokio::test]
async fn each_way_of_joining_parts_delivers_the_whole_text_with_a_receipt_per_part() {
    let text = gsm_text();
    for (mode, parts) in [("udh", 3), ("udh16", 3), ("sar", 3), ("payload", 1)] {
        let sim = sim(SimConfig::default()).await;
        let (_gw, mut client) = Gateway::bound(&[sim.addr()], &format!("long_sms = \"{mode}\"")).await;
        let created = send(&mut client, "+447700900001", &text).await;
        assert_eq!((created["segments"].as_u64(), created["encoding"].as_str()), (Some(3), Some("gsm7")), "{mode}: {created}");
        let id = created["id"].as_str().unwrap();
        let message = wait_status(&mut client, id, "delivered", Duration::from_secs(10)).await;
        let submits = submits_to(&sim, "447700900001");
        assert_eq!(submits.len(), parts, "{mode}: submit_sm count");
        assert_eq!(message["segments"], 3, "{mode}: {message}");
        match mode {
            "payload" => {
                assert_eq!(submits[0].text, text, "the SMSC got the whole text to cut");
                assert!(message.get("parts").is_none(), "{message}");
            }
            _ => {
                let joined = sim.with_stats(|s| s.joined.clone());
                assert_eq!(joined.len(), 1, "{mode}");
                assert_eq!(joined[0].text, text, "{mode}: the parts join to the text");
                let seqs: Vec<u8> = submits.iter().map(|s| s.part.unwrap().seq).collect();
                assert_eq!(seqs, [1, 2, 3], "{mode}: in order");
                let parts = message["parts"].as_array().unwrap_or_else(|| panic!("{mode}: {message}"));
                assert_eq!(parts.len(), 3);
                for (part, submit) in parts.iter().zip(&submits) {
                    assert_eq!(part["smsc_message_id"], submit.message_id.as_str(), "{mode}: {message}");
                    assert_eq!((part["status"].as_str(), part["receipt"]["stat"].as_str()), (Some("delivered"), Some("DELIVRD")));
                }
            }
        }
    }
}

#[tokio::test]
async fn unicode_and_emoji_go_as_utf16_never_split_inside_a_character() {
    let sim = sim(SimConfig::default()).await;
    let (_gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    // 60 characters, 40 of them emoji (two UTF-16 units each): 100 units, two parts of 67.
    let text: String = (0..20).map(|i| format!("Ж{}😀", char::from_u32(0x1F600 + i).unwrap())).collect();
    let created = send(&mut client, "+447700900002", &text).await;
    assert_eq!((created["segments"].as_u64(), created["encoding"].as_str()), (Some(2), Some("ucs2")), "{created}");
    wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    let submits = submits_to(&sim, "447700900002");
    assert!(submits.iter().all(|s| s.data_coding == 8));
    assert!(submits.iter().all(|s| !s.text.contains('\u{fffd}')), "a surrogate pair was cut: {submits:?}");
    assert_eq!(sim.with_stats(|s| s.joined[0].text.clone()), text);
    // A text GSM cannot carry is refused when the request insists on GSM.
    let forced = json!({"to": "+447700900002", "text": "Код", "encoding": "gsm7"}).to_string();
    let reply = post_message(&mut client, API_KEY, &forced, None).await;
    assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some("invalid_encoding")), "{}", reply.body);
}

#[tokio::test]
async fn receipts_per_part_out_of_order_and_on_the_receiver_session_all_count() {
    let sim = sim(SimConfig { receipt_delay: Duration::from_millis(50), ..SimConfig::default() }).await;
    sim.set_reverse_parts(true);
    let (_gw, mut client) = Gateway::bound(&[sim.addr()], "bind = \"transmitter_receiver\"").await;
    let created = send(&mut client, "+447700900003", &gsm_text()).await;
    let message = wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    let parts = message["parts"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["status"] == "delivered"), "{message}");
    // Answered last part first: the ids still land on their own parts.
    let submits = submits_to(&sim, "447700900003");
    for (part, submit) in parts.iter().zip(&submits) {
        assert_eq!(part["smsc_message_id"], submit.message_id.as_str());
    }
}

#[tokio::test]
async fn part_receipts_that_beat_their_submit_sm_resp_are_held_and_applied_to_their_parts() {
    let sim = sim(SimConfig { receipt_first: true, response_delay: Duration::from_millis(30), ..SimConfig::default() }).await;
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let created = send(&mut client, "+447700900013", &gsm_text()).await;
    let message = wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    let parts = message["parts"].as_array().unwrap();
    assert!(parts.iter().all(|p| p["status"] == "delivered" && p["receipt"]["stat"] == "DELIVRD"), "{message}");
    // Operators see how many receipts took this path.
    let mut metrics = otpgate::http::client::Client::connect(gw.daemon.metrics_addr()).await.unwrap();
    let page = metrics.request("GET", "/metrics", &[], None).await.unwrap().body;
    let held = format!("otpgate_receipts_held_total{{carrier=\"alpha\"}} {}\n", parts.len());
    assert!(page.contains(&held), "no {held} in:\n{page}");
}

#[tokio::test]
async fn a_part_that_fails_its_receipt_makes_the_message_fail_and_says_which() {
    let sim = sim(SimConfig { receipt_stat: "UNDELIV", ..SimConfig::default() }).await;
    let (_gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let created = send(&mut client, "+447700900004", &gsm_text()).await;
    let message = wait_status(&mut client, created["id"].as_str().unwrap(), "undeliverable", Duration::from_secs(10)).await;
    let parts = message["parts"].as_array().unwrap();
    assert!(parts.iter().any(|p| p["status"] == "undeliverable" && p["receipt"]["stat"] == "UNDELIV"), "{message}");
}

#[tokio::test]
async fn a_part_refused_half_way_sends_the_whole_message_again_elsewhere_with_a_new_reference() {
    let alpha = sim(SimConfig::default()).await;
    let beta = sim(SimConfig::default()).await;
    alpha.set_fail_part(Some((2, CommandStatus::EsmeRsyserr)));
    let (_gw, mut client) = Gateway::bound(&[alpha.addr(), beta.addr()], "").await;
    let created = send(&mut client, "+447700900005", &gsm_text()).await;
    let message = wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    assert_eq!(message["carrier"], "beta", "{message}");
    let taken = submits_to(&alpha, "447700900005");
    let resent = submits_to(&beta, "447700900005");
    assert_eq!(resent.len(), 3);
    let first_reference = taken[0].part.unwrap().reference;
    assert!(resent.iter().all(|s| s.part.unwrap().reference != first_reference), "a new reference for the resend");
    assert_eq!(message["attempts"], 2, "{message}");
}

#[tokio::test]
async fn with_partial_failure_fail_the_message_fails_naming_the_parts_taken() {
    let alpha = sim(SimConfig::default()).await;
    alpha.set_fail_part(Some((3, CommandStatus::EsmeRsyserr)));
    let (_gw, mut client) = Gateway::setup(&[alpha.addr()], "").sections("[messages]\npartial_failure = \"fail\"\n").bound().await;
    let created = send(&mut client, "+447700900006", &gsm_text()).await;
    let message = wait_status(&mut client, created["id"].as_str().unwrap(), "failed", Duration::from_secs(10)).await;
    let error = message["error"].as_str().unwrap();
    assert!(error.contains("parts 1 (") && error.contains("2 (") && error.contains("of 3 taken"), "{error}");
    assert!(error.contains("incomplete message"), "{error}");
}

#[tokio::test]
async fn part_receipts_that_come_after_a_restart_still_complete_the_message() {
    let sim = sim(SimConfig { receipt_delay: Duration::from_millis(800), ..SimConfig::default() }).await;
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    let created = send(&mut client, "+447700900007", &gsm_text()).await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_status(&mut client, &id, "submitted", Duration::from_secs(5)).await;
    let gw = gw.restart(&[sim.addr()]).await;
    gw.wait_bound().await;
    let mut client = gw.client().await;
    let message = wait_status(&mut client, &id, "delivered", Duration::from_secs(10)).await;
    assert_eq!(message["parts"].as_array().unwrap().len(), 3);
    assert_eq!(submits_to(&sim, "447700900007").len(), 3, "sent once");
}

#[tokio::test]
async fn max_tps_counts_parts_and_segments_are_counted_per_carrier() {
    let sim = sim(SimConfig::default()).await;
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "max_tps = 10").await;
    let started = std::time::Instant::now();
    let a = send(&mut client, "+447700900008", &gsm_text()).await;
    let b = send(&mut client, "+447700900009", &gsm_text()).await;
    for created in [a, b] {
        wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    }
    // Six submit_sm at 10 per second: at least half a second from the first to the last.
    let times: Vec<_> = sim.with_stats(|s| s.submits.iter().map(|m| m.at).collect());
    assert_eq!(times.len(), 6);
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(span >= Duration::from_millis(450), "six parts in {span:?} at max_tps 10");
    assert!(started.elapsed() >= Duration::from_millis(450));
    let segments = common::metric(gw.daemon.metrics_addr(), "otpgate_segments_total{carrier=\"alpha\"}").await;
    assert_eq!(segments, 6.0);
}

#[tokio::test]
async fn node_smpp_reads_our_parts_headers_and_tlvs_as_a_handset_would() {
    let text = gsm_text();
    for mode in ["udh", "udh16", "sar", "payload"] {
        let Some(node) = NodeSmsc::start("{}") else { return };
        let (_gw, mut client) = Gateway::bound(&[node.addr], &format!("long_sms = \"{mode}\"")).await;
        let created = send(&mut client, "+447700900010", &text).await;
        wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
        let submits = node.events("submit_sm");
        match mode {
            "payload" => {
                assert_eq!(submits.len(), 1);
                assert_eq!(submits[0]["payload"], text.as_str(), "node-smpp decoded message_payload");
            }
            _ => {
                assert_eq!(submits.len(), 3, "{mode}");
                let joined: String = submits.iter().map(|s| s["text"].as_str().unwrap()).collect();
                assert_eq!(joined, text, "{mode}: node-smpp's GSM decoding of the parts joins to the text");
                for (i, submit) in submits.iter().enumerate() {
                    let seq = i as u64 + 1;
                    let (reference, total, part) = match mode {
                        "sar" => (submit["sar"][0].as_u64(), submit["sar"][1].as_u64(), submit["sar"][2].as_u64()),
                        _ => {
                            assert_eq!(submit["esm_class"], 0x40, "{mode}: UDHI");
                            let ie = &submit["udh"][0];
                            match mode {
                                "udh" => (ie[2].as_u64(), ie[3].as_u64(), ie[4].as_u64()),
                                _ => (Some(ie[2].as_u64().unwrap() << 8 | ie[3].as_u64().unwrap()), ie[4].as_u64(), ie[5].as_u64()),
                            }
                        }
                    };
                    assert_eq!((total, part), (Some(3), Some(seq)), "{mode}: {submit}");
                    assert!(reference.is_some());
                }
            }
        }
        assert_eq!(node.wait_for("deliver_sm_resp", submits.len(), Duration::from_secs(5)).await.len(), submits.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_message_never_sends_two_parts_with_one_reference_and_loses_nothing() {
    let sim = sim(SimConfig { response_delay: Duration::from_millis(300), ..SimConfig::default() }).await;
    let files = common::DaemonFiles::new(&[sim.addr()], "", "");
    let mut daemon = common::spawn_daemon(&files.config, None, &[]);
    common::wait_ready(files.http).await;
    let mut client = otpgate::http::client::Client::connect(files.http).await.unwrap();
    let created = send(&mut client, "+447700900011", &gsm_text()).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert!(sim.wait_until(Duration::from_secs(5), |s| !s.submits.is_empty()).await, "a part reached the SMSC");
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let mut daemon = common::spawn_daemon(&files.config, None, &[]);
    common::wait_ready(files.http).await;
    let mut client = otpgate::http::client::Client::connect(files.http).await.unwrap();
    let message = wait_status(&mut client, &id, "delivered", Duration::from_secs(15)).await;
    let submits = submits_to(&sim, "447700900011");
    // Every (reference, part) went out once: a resend took a new reference.
    let mut seen = HashSet::new();
    for submit in &submits {
        let part = submit.part.unwrap();
        assert!(seen.insert((part.reference, part.seq)), "part {} sent twice with reference {}", part.seq, part.reference);
    }
    let by_reference: HashMap<u16, usize> = submits.iter().fold(HashMap::new(), |mut m, s| {
        *m.entry(s.part.unwrap().reference).or_default() += 1;
        m
    });
    assert!(by_reference.values().any(|&n| n == 3), "one send complete: {by_reference:?}");
    let joined = sim.with_stats(|s| s.joined.iter().filter(|j| j.to == "447700900011").count());
    assert!(joined >= 1, "joined at the handset");
    assert_eq!(message["parts"].as_array().unwrap().len(), 3);
    let reply = get_message(&mut client, API_KEY, &id).await;
    assert_eq!(reply.json()["status"], "delivered");
    common::signal(&daemon, "TERM");
    assert!(daemon.wait().unwrap().success());
}

#[tokio::test]
async fn an_otp_in_a_ucs2_locale_may_take_two_sms_with_the_autofill_line_last() {
    let template = "Ваш код {brand}: {code}. Он действует {minutes} минут. Никому не сообщайте этот код, даже сотрудникам.";
    let otp = format!(
        "[otp]\nmax_segments = 2\nwebotp_domain = \"acme.example\"\n\n[otp.templates]\nen = \"{{code}} is your code\"\nru = \"{template}\"\n"
    );
    // With the default of one SMS the template is refused at load.
    let one = common::gateway_config(&[("alpha", common::free_addr())], std::path::Path::new("/tmp"), "")
        .sections(&otp.replace("max_segments = 2\n", ""))
        .build()
        .unwrap_err();
    assert!(one.to_string().contains("otp.templates.ru") && one.to_string().contains("otp.max_segments allows 1"), "{one}");

    let sim = sim(SimConfig::default()).await;
    let (_gw, mut client) = Gateway::setup(&[sim.addr()], "").sections(&otp).bound().await;
    let auth = common::bearer(API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let body = json!({"to": "+447700900012", "locale": "ru"}).to_string();
    let created = client.request("POST", "/v1/verifications", &headers, Some(&body)).await.unwrap();
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert!(sim.wait_until(Duration::from_secs(5), |s| !s.joined.is_empty()).await, "the two parts joined");
    let joined = sim.with_stats(|s| s.joined[0].clone());
    assert_eq!(joined.message_ids.len(), 2);
    let code: String = joined.text.rsplit('#').next().unwrap().to_string();
    assert!(
        joined.text.starts_with("Ваш код otpgate: ") && joined.text.ends_with(&format!("\n\n@acme.example #{code}")),
        "{}",
        joined.text
    );
    let check =
        client.request("POST", &format!("/v1/verifications/{id}/check"), &headers, Some(&json!({"code": code}).to_string())).await.unwrap();
    assert_eq!(check.json()["status"], "approved", "{}", check.body);
}

#[test]
fn bench_long_reports_messages_and_parts_per_second() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_otpgate"))
        .args(["bench", "--long", "--messages", "300", "--concurrency", "8"])
        .env("RUST_LOG", "error")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| closed loop of 300 (concurrency 8): messages end to end / s, one SMS / three parts |"), "{stdout}");
    assert!(stdout.contains("(900 parts) |"), "every part accepted: {stdout}");
}

#[tokio::test]
async fn gsm7_packed_for_an_smsc_that_wants_it_reads_back_whole() {
    let sim = sim(SimConfig { gsm7_packed: true, ..SimConfig::default() }).await;
    let (_gw, mut client) = Gateway::bound(&[sim.addr()], "gsm7_packed = true").await;
    let text = gsm_text();
    let long = send(&mut client, "+447700900014", &text).await;
    let short = send(&mut client, "+447700900015", "1234567 @ the end").await;
    for created in [&long, &short] {
        wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    }
    assert_eq!(sim.with_stats(|s| s.joined[0].text.clone()), text);
    let single = submits_to(&sim, "447700900015");
    assert_eq!(single[0].text, "1234567 @ the end", "no '@' from the padding bits");
    // 443 septets packed: each part at most 140 octets with its header.
    assert!(submits_to(&sim, "447700900014").iter().all(|s| s.text.chars().count() <= 153));
}

#[tokio::test]
async fn long_messages_share_a_small_window_without_deadlock_and_fit_one_smaller_than_themselves() {
    // Window 4: three-part messages each take their three slots at once, never two of them
    // holding part of the window each.
    let sim = sim(SimConfig { response_delay: Duration::from_millis(20), ..SimConfig::default() }).await;
    let (_gw, mut client) = Gateway::bound(&[sim.addr()], "window = 4").await;
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(send(&mut client, &format!("+4477009001{i:02}"), &gsm_text()).await["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_status(&mut client, id, "delivered", Duration::from_secs(10)).await;
    }
    assert!(sim.with_stats(|s| s.max_outstanding) <= 4);
    assert_eq!(sim.with_stats(|s| s.joined.len()), 8);

    // Window 2: a three-part message goes one part at a time.
    let narrow = common::sim(SimConfig::default()).await;
    let (_gw, mut client) = Gateway::bound(&[narrow.addr()], "window = 2").await;
    let created = send(&mut client, "+447700900200", &gsm_text()).await;
    wait_status(&mut client, created["id"].as_str().unwrap(), "delivered", Duration::from_secs(10)).await;
    assert_eq!(narrow.with_stats(|s| s.joined[0].text.clone()), gsm_text());
}
