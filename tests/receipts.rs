//! Every real-world receipt in `fixtures/dlr-samples.txt`, sent by the simulator as a deliver_sm
//! over a real SMPP session and read by otpgate.

mod common;

use std::time::Duration;

use common::{API_KEY, Gateway, ReceiptFixture, carrier_config, post_message, receipt_fixtures, sim, start_bound, wait_status};
use otpgate::sim::SimConfig;
use otpgate::smpp::receipt::{IdReading, ReceiptFields};
use otpgate::smpp::{Receipt, SubmitOutcome};
use otpgate::smsc_id::canonical;
use rusmpp::pdus::DeliverSm;
use rusmpp::tlvs::MessageDeliveryRequestTlvValue as Tlv;
use rusmpp::types::{AnyOctetString, COctetString, OctetString};
use rusmpp::values::{ErrorCodeNetworkType, EsmClass, MessagePayload, MessageState, NetworkErrorCode};

fn deliver_sm(fixture: &ReceiptFixture) -> DeliverSm {
    let in_payload = fixture.get("payload") == Some("1");
    let short = if in_payload { Vec::new() } else { fixture.text.clone() };
    let mut pdu = DeliverSm::builder()
        .source_addr("447700900123".parse::<COctetString<1, 21>>().unwrap())
        .destination_addr("Acme".parse::<COctetString<1, 21>>().unwrap())
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(short).expect("sample fits short_message"))
        .build();
    if in_payload {
        let payload = AnyOctetString::from_vec(fixture.text.clone());
        pdu.push_tlv(Tlv::MessagePayload(MessagePayload::new(payload)));
    }
    if let Some(id) = fixture.get("tlv_id") {
        pdu.push_tlv(Tlv::ReceiptedMessageId(id.parse().unwrap()));
    }
    if let Some(state) = fixture.get("tlv_state") {
        pdu.push_tlv(Tlv::MessageState(MessageState::from(state.parse::<u8>().unwrap())));
    }
    if let Some(net) = fixture.get("tlv_net") {
        let (kind, code) = net.split_once(':').unwrap();
        let kind = ErrorCodeNetworkType::from(kind.parse::<u8>().unwrap());
        pdu.push_tlv(Tlv::NetworkErrorCode(NetworkErrorCode::new(kind, code.parse().unwrap())));
    }
    pdu
}

/// Compares a parse with its expectation line; every field, present or absent.
fn check(fixture: &ReceiptFixture, parsed: &Result<Receipt, otpgate::smpp::receipt::ReceiptError>) {
    let n = fixture.number;
    if let Some(error) = fixture.get("error") {
        let e = parsed.as_ref().expect_err(&format!("sample {n} must not parse"));
        assert_eq!(format!("{e:?}"), error, "sample {n}");
        return;
    }
    let r = parsed.as_ref().unwrap_or_else(|e| panic!("sample {n}: {e}"));
    let field = |key: &str| fixture.get(key).map(str::to_string);
    assert_eq!(Some(r.message_id.clone()), field("id"), "sample {n}: id");
    assert_eq!(r.alternate_id, field("alt"), "sample {n}: alt");
    assert_eq!(Some(r.state.as_str().to_string()), field("state"), "sample {n}: state");
    assert_eq!(r.stat, field("stat"), "sample {n}: stat");
    assert_eq!(r.err, field("err"), "sample {n}: err");
    assert_eq!(r.submitted.map(|v| v.to_string()), field("sub"), "sample {n}: sub");
    assert_eq!(r.delivered.map(|v| v.to_string()), field("dlvrd"), "sample {n}: dlvrd");
    assert_eq!(r.submit_date.map(|t| t.to_string()), field("submit"), "sample {n}: submit");
    assert_eq!(r.done_date.map(|t| t.to_string()), field("done"), "sample {n}: done");
    let net = r.network_error.map(|e| format!("{}:{}", e.network_type, e.code));
    assert_eq!(net, field("net"), "sample {n}: net");
    if let Some(alt) = &r.alternate_id {
        // The TLV and the text name the same message, in whatever bases: they must match.
        let ours = canonical(&r.message_id);
        assert!(
            IdReading::ALL.iter().any(|reading| reading.response_id(alt) == Some(ours.clone())),
            "sample {n}: {} and {alt} do not match",
            r.message_id
        );
    }
}

#[test]
fn every_sample_parses_as_expected() {
    for fixture in receipt_fixtures() {
        let pdu = deliver_sm(&fixture);
        let fields = ReceiptFields::from(&pdu);
        assert!(fields.is_receipt(), "sample {} not recognised as a receipt", fixture.number);
        check(&fixture, &fields.parse());
    }
}

#[tokio::test]
async fn every_sample_is_read_off_a_live_session_and_acknowledged() {
    let sim = sim(SimConfig::default()).await;
    let mut running = start_bound(carrier_config(sim.addr(), "")).await;
    let fixtures = receipt_fixtures();
    for fixture in &fixtures {
        sim.deliver(deliver_sm(fixture));
    }
    for fixture in &fixtures {
        let mut event = tokio::time::timeout(Duration::from_secs(5), running.receipts.recv())
            .await
            .unwrap_or_else(|_| panic!("sample {}: no receipt event", fixture.number))
            .expect("receipt channel open");
        assert_eq!(&*event.carrier, "alpha");
        check(fixture, &event.receipt);
        event.recorded(true);
    }
    let all_acked = sim.wait_until(Duration::from_secs(5), |s| s.deliver_sm_resps == fixtures.len() as u64).await;
    assert!(all_acked, "every deliver_sm, readable or not, gets a deliver_sm_resp");
    assert_eq!(sim.stats().connections, 1, "no receipt may break the session");
    running.shutdown.cancel();
}

async fn next_receipt(running: &mut common::Running) -> otpgate::smpp::ReceiptEvent {
    tokio::time::timeout(Duration::from_secs(3), running.receipts.recv()).await.expect("a receipt").expect("channel open")
}

/// The SMSC forgets a receipt once its deliver_sm is answered: the answer waits until whoever
/// tracks receipts says it is recorded, and one that could not be recorded is refused with
/// ESME_RX_T_APPN, so the SMSC sends it again.
#[tokio::test]
async fn a_receipt_is_answered_only_once_it_is_recorded() {
    let sim = sim(SimConfig::default()).await;
    let mut running = start_bound(carrier_config(sim.addr(), "")).await;
    let SubmitOutcome::Accepted { message_id } = running.carrier.submit(&common::sms("hi")).await else {
        panic!("not accepted");
    };
    let event = next_receipt(&mut running).await;
    let answered = sim.wait_until(Duration::from_millis(300), |s| s.deliver_sm_resps > 0).await;
    assert!(!answered, "deliver_sm answered before the receipt was recorded");
    drop(event);
    assert!(sim.wait_until(Duration::from_secs(2), |s| s.receipts_refused == 1).await, "an unrecorded receipt is refused");
    // The SMSC sends it again; this time it is recorded.
    let mut again = next_receipt(&mut running).await;
    assert_eq!(again.receipt.as_ref().unwrap().message_id, message_id);
    again.recorded(true);
    assert!(sim.wait_until(Duration::from_secs(2), |s| s.acked_receipts == vec![message_id.clone()]).await);
    running.shutdown.cancel();
}

/// Receipts naming ids we never sent are held for a submit_sm_resp that may still come, but at
/// most `store.max_held_receipts` of them: 20,000 once grew the data_dir from 148 KB to 19 MB.
#[tokio::test]
async fn receipts_for_unknown_ids_are_held_up_to_a_cap_and_the_rest_counted() {
    let sim = sim(SimConfig::default()).await;
    let gw = Gateway::setup(&[sim.addr()], "").store("max_held_receipts = 100").start().await;
    gw.wait_bound().await;
    for n in 0..500u32 {
        let mut pdu = DeliverSm::builder()
            .source_addr("447700900123".parse::<COctetString<1, 21>>().unwrap())
            .destination_addr("Acme".parse::<COctetString<1, 21>>().unwrap())
            .esm_class(EsmClass::from(0x04))
            .build();
        pdu.push_tlv(Tlv::ReceiptedMessageId(format!("FFFF{n:04}").parse().unwrap()));
        pdu.push_tlv(Tlv::MessageState(MessageState::Delivered));
        sim.deliver(pdu);
    }
    assert!(sim.wait_until(Duration::from_secs(10), |s| s.acked_receipts.len() == 500).await, "every receipt is answered");
    assert_eq!(gw.daemon.store().held_receipts(), 100);
    let (_, _, held_rows) = gw.daemon.store().counts().await.unwrap();
    assert!(held_rows <= 100 * 3, "{held_rows} rows for 100 held receipts");
    let dropped = common::metric(gw.daemon.metrics_addr(), "otpgate_receipts_dropped_total{carrier=\"alpha\",reason=\"held_full\"}").await;
    assert_eq!(dropped, 400.0);
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

#[test]
fn receipt_text_never_reaches_the_parsed_receipt() {
    // Sample 8 echoes an OTP ("1610 is your verific"): nothing after text: is kept.
    let fixture = &receipt_fixtures()[7];
    let receipt = ReceiptFields::from(&deliver_sm(fixture)).parse().unwrap();
    assert!(!format!("{receipt:?}").contains("1610 is"), "{receipt:?}");
}

/// Sample 38's carrier writes keyless CSV receipts; with its layout configured they match.
#[tokio::test]
async fn a_carrier_with_its_own_receipt_layout_gets_its_receipts_matched() {
    let sim = sim(SimConfig { receipts: false, ..SimConfig::default() }).await;
    let layout = "receipt_text = \"csv:stat,done,submit,err,-,-,-\"\nreceipt_states = { \"00\" = \"DELIVRD\", \"01\" = \"ENROUTE\" }";
    let (gw, mut client) = Gateway::bound(&[sim.addr()], layout).await;
    let reply = post_message(&mut client, API_KEY, r#"{"to": "+447887123456", "text": "hello"}"#, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    assert!(sim.wait_until(Duration::from_secs(5), |s| !s.submits.is_empty()).await);
    wait_status(&mut client, &id, "submitted", Duration::from_secs(5)).await;
    let smsc_id = sim.stats().submits[0].message_id.clone();

    let receipt = |text: &str| {
        let mut pdu = DeliverSm::builder()
            .source_addr("447887123456".parse::<COctetString<1, 21>>().unwrap())
            .destination_addr("Acme".parse::<COctetString<1, 21>>().unwrap())
            .esm_class(EsmClass::from(0x04))
            .short_message(OctetString::from_vec(text.as_bytes().to_vec()).unwrap())
            .build();
        pdu.push_tlv(Tlv::ReceiptedMessageId(smsc_id.parse().unwrap()));
        pdu
    };
    sim.deliver(receipt("01,0210021543,0210021500,30,447887123456,10110200000000,x"));
    sim.deliver(receipt("00,0210021544,0210021500,,447887123456,10110200000000,x"));
    let message = wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    assert_eq!(message["receipt"]["stat"], "00", "{message}");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// A bound gateway whose simulator sends no receipts of its own: the test delivers them.
async fn receipts_by_hand(carrier_extra: &str) -> (otpgate::sim::SmscSim, Gateway, otpgate::http::client::Client) {
    let sim = sim(SimConfig { receipts: false, ..SimConfig::default() }).await;
    let (gw, client) = Gateway::bound(&[sim.addr()], carrier_extra).await;
    (sim, gw, client)
}

/// A text-only receipt from a carrier whose submit_sm_resp ids are hex.
fn text_receipt(text: &str) -> DeliverSm {
    DeliverSm::builder()
        .source_addr("447700900123".parse::<COctetString<1, 21>>().unwrap())
        .destination_addr("Acme".parse::<COctetString<1, 21>>().unwrap())
        .esm_class(EsmClass::from(0x04))
        .short_message(OctetString::from_vec(text.as_bytes().to_vec()).unwrap())
        .build()
}

async fn submitted(sim: &otpgate::sim::SmscSim, client: &mut otpgate::http::client::Client, next_id: u64, to: &str) -> String {
    sim.set_next_message_id(next_id);
    let body = format!(r#"{{"to": "{to}", "text": "hello"}}"#);
    let id = post_message(client, API_KEY, &body, None).await.json()["id"].as_str().unwrap().to_string();
    wait_status(client, &id, "submitted", Duration::from_secs(5)).await;
    id
}

/// Hex response ids `10` and `16`, decimal receipt text `id:16` (= 0x10): A's receipt must not be
/// applied to B. Until the carrier's id relation is known the receipt is not applied at all;
/// `auto` learns it from receipts that match one way only, then A gets its receipt.
#[tokio::test]
async fn a_receipt_id_that_reads_as_two_messages_is_not_guessed_and_auto_learns_the_relation() {
    let (sim, gw, mut client) = receipts_by_hand("").await;
    let a = submitted(&sim, &mut client, 0x10, "+447700900001").await;
    let b = submitted(&sim, &mut client, 0x16, "+447700900002").await;
    let metrics = gw.daemon.metrics_addr();

    sim.deliver(text_receipt("id:16 sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 stat:DELIVRD err:000"));
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.deliver_sm_resps == 1).await, "the receipt is answered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(common::metric(metrics, "otpgate_receipts_ambiguous_total{carrier=\"alpha\"}").await, 1.0);
    assert_eq!(get_status(&mut client, &a).await, "submitted");
    assert_eq!(get_status(&mut client, &b).await, "submitted", "B must not get A's receipt");

    // Five receipts that read one way only: decimal text for hex ids 0x100...
    for n in 0..5u64 {
        let id = submitted(&sim, &mut client, 0x100 + n, &format!("+4477009001{n:02}")).await;
        sim.deliver(text_receipt(&format!("id:{} stat:DELIVRD err:000", 0x100 + n)));
        wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    }
    sim.deliver(text_receipt("id:16 stat:DELIVRD err:000"));
    wait_status(&mut client, &a, "delivered", Duration::from_secs(5)).await;
    assert_eq!(get_status(&mut client, &b).await, "submitted");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_configured_relation_reads_receipt_ids_one_way_only() {
    let (sim, gw, mut client) = receipts_by_hand("receipt_id = \"hex_to_dec\"").await;
    let a = submitted(&sim, &mut client, 0x10, "+447700900001").await;
    let b = submitted(&sim, &mut client, 0x16, "+447700900002").await;
    sim.deliver(text_receipt("id:16 stat:DELIVRD err:000"));
    wait_status(&mut client, &a, "delivered", Duration::from_secs(5)).await;
    assert_eq!(get_status(&mut client, &b).await, "submitted");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

async fn get_status(client: &mut otpgate::http::client::Client, id: &str) -> String {
    common::get_message(client, API_KEY, id).await.json()["status"].as_str().unwrap().to_string()
}

/// One source of truth for a receipt's state, and nothing after the final one: a TLV UNDELIV
/// beside a text DELIVRD is undeliverable throughout, and a later DELIVRD is counted, not applied.
#[tokio::test]
async fn the_receipt_state_agrees_with_itself_and_later_receipts_do_not_rewrite_it() {
    let (sim, gw, mut client) = receipts_by_hand("").await;
    let id = submitted(&sim, &mut client, 0xABC, "+447700900001").await;
    let mut conflicting = text_receipt("id:2748 stat:DELIVRD err:000");
    conflicting.push_tlv(Tlv::ReceiptedMessageId("ABC".parse().unwrap()));
    conflicting.push_tlv(Tlv::MessageState(MessageState::Undeliverable));
    sim.deliver(conflicting);
    let message = wait_status(&mut client, &id, "undeliverable", Duration::from_secs(5)).await;
    assert_eq!(message["receipt"]["stat"], "UNDELIV", "{message}");

    let mut later = text_receipt("id:2748 stat:DELIVRD err:000");
    later.push_tlv(Tlv::ReceiptedMessageId("ABC".parse().unwrap()));
    later.push_tlv(Tlv::MessageState(MessageState::Delivered));
    sim.deliver(later);
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.acked_receipts.len() == 2).await);
    let metrics = gw.daemon.metrics_addr();
    assert_eq!(common::metric(metrics, "otpgate_receipts_late_total{carrier=\"alpha\"}").await, 1.0);
    let message = common::get_message(&mut client, API_KEY, &id).await.json();
    assert_eq!((message["status"].as_str(), message["receipt"]["stat"].as_str()), (Some("undeliverable"), Some("UNDELIV")));
    assert_eq!(common::metric(metrics, "otpgate_messages_total{state=\"delivered\"}").await, 0.0);
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

/// SMSCs resend receipts whose answer they missed: a duplicate is not a second delivery.
#[tokio::test]
async fn duplicate_receipts_count_one_delivery_each() {
    let sim = sim(SimConfig::default()).await;
    sim.set_duplicate_receipts(true);
    let (gw, mut client) = Gateway::bound(&[sim.addr()], "").await;
    for i in 0..10 {
        let body = format!(r#"{{"to": "+4477009000{i:02}", "text": "hello"}}"#);
        let id = post_message(&mut client, API_KEY, &body, None).await.json()["id"].as_str().unwrap().to_string();
        wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;
    }
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.acked_receipts.len() == 20).await);
    let metrics = gw.daemon.metrics_addr();
    assert_eq!(common::metric(metrics, "otpgate_messages_total{state=\"delivered\"}").await, 10.0);
    assert_eq!(common::metric(metrics, "otpgate_receipts_late_total{carrier=\"alpha\"}").await, 10.0);
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

/// Receipts arriving faster than the store takes them never stop a session reading: with the
/// receipt queue full, a receipt is answered ESME_RX_T_APPN (the SMSC sends it again later)
/// and the submit_sm_resps behind it are read in time. The reader used to wait for room, and
/// every submit behind a receipt timed out.
#[tokio::test]
async fn a_full_receipt_queue_defers_receipts_and_submits_still_get_their_answers() {
    let sim = sim(SimConfig { receipt_delay: Duration::ZERO, ..SimConfig::default() }).await;
    let config = carrier_config(sim.addr(), "window = 8");
    // A queue of one, and a store that takes a receipt every 200 ms.
    let (receipts, mut slow) = tokio::sync::mpsc::channel::<otpgate::smpp::ReceiptEvent>(1);
    tokio::spawn(async move {
        while let Some(mut receipt) = slow.recv().await {
            tokio::time::sleep(Duration::from_millis(200)).await;
            receipt.recorded(true);
        }
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let carrier = otpgate::smpp::Carrier::start(config, receipts, shutdown.clone());
    assert!(carrier.wait_bound(1, Duration::from_secs(5)).await);
    for n in 0..40 {
        let outcome = carrier.submit(&common::sms(&format!("busy {n}"))).await;
        assert!(matches!(outcome, SubmitOutcome::Accepted { .. }), "submit {n}: {outcome:?}");
    }
    assert!(
        sim.wait_until(Duration::from_secs(5), |s| s.receipts_refused >= 10 && !s.acked_receipts.is_empty()).await,
        "receipts were not deferred"
    );
    assert_eq!(sim.stats().connections, 1, "the session never reset");
    shutdown.cancel();
}
