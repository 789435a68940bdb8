//! Property tests over everything that reads outside input: receipt texts and TLVs, addresses and
//! message texts, the PDU framer, the config loader and HTTP bodies. Each runs a bounded number of
//! cases (fixed per test, so CI time is predictable): no panic, no hang, and where a valid input
//! can be generated, it reads back as written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::BytesMut;
use otpgate::config::Config;
use otpgate::smpp::address::Address;
use otpgate::smpp::codec::FrameCodec;
use otpgate::smpp::receipt::{ReceiptFields, ReceiptFormat};
use otpgate::sms::{Encoding, Header, Text};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// An Appendix B receipt text with its keys in any order and case, and junk after `text:`.
fn appendix_b() -> impl Strategy<Value = (String, String, Vec<u8>)> {
    let id = "[0-9A-Fa-f]{1,20}";
    let stat = prop::sample::select(vec!["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "DELETED", "ACCEPTD", "ENROUTE", "UNKNOWN"]);
    (id, stat, any::<bool>(), prop::collection::vec(any::<u8>(), 0..20), Just(()).prop_perturb(|_, mut rng| rng.random::<u64>())).prop_map(
        |(id, stat, upper, junk, order)| {
            let mut parts = [
                format!("id:{id}"),
                "sub:001".to_string(),
                "dlvrd:001".to_string(),
                "submit date:2601010000".to_string(),
                "done date:2601010000".to_string(),
                format!("stat:{stat}"),
                "err:000".to_string(),
            ];
            // A cheap shuffle driven by the generated number.
            let mut order = order;
            for i in (1..parts.len()).rev() {
                parts.swap(i, (order % (i as u64 + 1)) as usize);
                order /= i as u64 + 1;
            }
            let mut text = parts.join(" ");
            if upper {
                text = text.to_uppercase();
            }
            let mut bytes = text.into_bytes();
            bytes.extend_from_slice(b" text:");
            bytes.extend_from_slice(&junk);
            (id, stat.to_string(), bytes)
        },
    )
}

proptest! {
    #![proptest_config(cases(2000))]

    #[test]
    fn receipt_parsing_never_panics_on_any_bytes(text in prop::collection::vec(any::<u8>(), 0..300), esm in any::<u8>(), state in prop::option::of(any::<u8>()), id in prop::option::of("\\PC{0,80}")) {
        let fields = ReceiptFields { esm_class: esm, text: &text, receipted_message_id: id, message_state: state, network_error: None };
        let _ = fields.is_receipt();
        let _ = fields.parse();
        let csv = ReceiptFormat::new("csv:stat,done,submit,err,id", &BTreeMap::new()).unwrap();
        let _ = fields.parse_as(&csv);
    }

    #[test]
    fn appendix_b_receipts_read_back_in_any_key_order_and_case((id, stat, text) in appendix_b()) {
        let fields = ReceiptFields { esm_class: 0x04, text: &text, ..Default::default() };
        let receipt = fields.parse().expect("a well-formed receipt reads");
        prop_assert!(receipt.message_id.eq_ignore_ascii_case(&id), "{} vs {id}", receipt.message_id);
        prop_assert_eq!(receipt.state.as_str(), stat.as_str());
    }

    #[test]
    fn addresses_and_texts_never_panic(text in "\\PC{0,200}") {
        let _ = Address::destination(&text);
        let _ = Address::source(&text);
        let _ = Text::encode(&text, None).map(|t| t.parts(Header::Reference8).len());
        let _ = Text::encode(&text, Some(Encoding::Gsm7));
    }

    #[test]
    fn e164_numbers_are_sent_international_without_the_plus(digits in "[1-9][0-9]{7,14}") {
        let address = Address::destination(&format!("+{digits}")).expect("valid E.164");
        prop_assert_eq!(address.value, digits);
    }

    #[test]
    fn gsm_texts_cost_one_septet_a_character_and_two_for_extensions(text in "[A-Za-z0-9 @£$!?.,:;()^{}\\[\\]~|€]{1,80}") {
        let encoded = Text::encode(&text, None).expect("any text encodes");
        prop_assert_eq!(encoded.data_coding(), 0);
        let extensions = text.chars().filter(|c| "^{}[]~|€\\".contains(*c)).count();
        prop_assert_eq!(encoded.octets().len(), text.chars().count() + extensions);
    }

    #[test]
    fn the_pdu_framer_never_panics_and_always_makes_progress(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..10)) {
        let mut codec = FrameCodec::new(64 * 1024);
        let mut buffer = BytesMut::new();
        for chunk in chunks {
            buffer.extend_from_slice(&chunk);
            // Each call consumes a frame, waits for more bytes or fails; never loops in place.
            for _ in 0..100 {
                let before = buffer.len();
                match codec.decode(&mut buffer) {
                    Ok(Some(_)) => prop_assert!(buffer.len() < before, "a frame consumed nothing"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn framed_pdus_with_mutated_bodies_never_panic(id in prop::sample::select(vec![0x8000_0004u32, 0x0000_0005, 0x0000_0103, 0x8000_0009, 0x0000_0015, 0x0000_0006, 0x8000_0000]), status in any::<u32>(), body in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&(16 + body.len() as u32).to_be_bytes());
        buffer.extend_from_slice(&id.to_be_bytes());
        buffer.extend_from_slice(&status.to_be_bytes());
        buffer.extend_from_slice(&7u32.to_be_bytes());
        buffer.extend_from_slice(&body);
        let decoded = FrameCodec::new(64 * 1024).decode(&mut buffer);
        prop_assert!(!matches!(decoded, Ok(None)), "a whole PDU is always decided");
    }
}

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn the_config_loader_never_panics_on_any_text(text in "\\PC{0,400}") {
        let _ = Config::from_toml(&text, Path::new("fuzz.toml"));
    }

    /// The shipped example config with one line's value replaced by something else.
    #[test]
    fn the_example_config_with_one_value_mutated_never_panics(line in 0usize..200, value in prop::sample::select(vec!["0", "-1", "18446744073709551615", "1e400", "\"\"", "\"99999999d\"", "true", "[]", "{}", "\"\\u202e\"", "\"x\""])) {
        let example = include_str!("../config/otpgate.toml");
        let lines: Vec<&str> = example.lines().collect();
        let target = line % lines.len();
        let mutated: Vec<String> = lines.iter().enumerate().map(|(i, l)| match (i == target, l.split_once('=')) {
            (true, Some((key, _))) => format!("{key}= {value}"),
            _ => l.to_string(),
        }).collect();
        let _ = Config::from_toml(&mutated.join("\n"), Path::new("fuzz.toml"));
    }
}

/// Random JSON-ish bodies against a live gateway: never a 5xx other than the documented 503s,
/// never a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_never_cause_a_server_error() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let (_sim, gw, mut client) = common::bound_gateway(otpgate::sim::SimConfig::default()).await;
    let junk = prop_oneof![
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("null".to_string()),
        Just("[1,2]".to_string()),
        Just("{\"a\":{}}".to_string()),
    ];
    // Each field is valid most of the time, so requests get past the first check and on to the
    // store, the rules and the dispatcher; sometimes one is junk or an unknown key is added.
    let value = |valid: Vec<&'static str>| prop_oneof![9 => prop::sample::select(valid).prop_map(str::to_string), 1 => junk.clone()];
    let numbers = vec!["\"+447700900123\"", "\"+447700900124\"", "\"+15551234567\"", "\"+447700900125\"", "\"+4477009\""];
    let message = (
        value(numbers.clone()),
        value(vec!["\"hello\"", "\"Код 123456\"", "\"\"", "\"a very long text that goes on and on and on and on and on and on and on and on and on and on and on and on and on and on and on and on and on and on\""]),
        prop::option::of(value(vec!["\"Shop\"", "\"+447700900000\"", "\"TooLongSender123\""])),
        prop::option::of(value(vec!["\"10m\"", "\"30s\"", "\"1s\"", "\"500h\"", "\"soon\""])),
        prop::option::weighted(0.1, junk.clone()),
    )
        .prop_map(|(to, text, from, validity, extra)| {
            let mut members = vec![format!("\"to\": {to}"), format!("\"text\": {text}")];
            members.extend(from.map(|v| format!("\"from\": {v}")));
            members.extend(validity.map(|v| format!("\"validity\": {v}")));
            members.extend(extra.map(|v| format!("\"x\": {v}")));
            format!("{{{}}}", members.join(", "))
        });
    let verification = (
        value(numbers),
        prop::option::of(value(vec!["6", "4", "10", "3", "11"])),
        prop::option::of(value(vec!["\"en\"", "\"fr\"", "\"xx\""])),
        prop::option::of(value(vec!["\"pay 25.00 EUR\"", "\"\"", "\"pay\\u202e\""])),
    )
        .prop_map(|(to, length, locale, context)| {
            let mut members = vec![format!("\"to\": {to}")];
            members.extend(length.map(|v| format!("\"code_length\": {v}")));
            members.extend(locale.map(|v| format!("\"locale\": {v}")));
            members.extend(context.map(|v| format!("\"context\": {v}")));
            format!("{{{}}}", members.join(", "))
        });
    let check = value(vec!["\"123456\"", "\"12\"", "\"abcdef\""]).prop_map(|code| format!("{{\"code\": {code}}}"));
    let raw = prop::collection::vec(any::<u8>(), 0..100).prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    let mut runner = TestRunner::deterministic();
    let auth = common::bearer(common::API_KEY);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let mut statuses = BTreeMap::new();
    for i in 0..300 {
        let (path, text) = match i % 4 {
            0 => ("/v1/messages", message.new_tree(&mut runner).unwrap().current()),
            1 => ("/v1/verifications", verification.new_tree(&mut runner).unwrap().current()),
            2 => ("/v1/verifications/00000000000000000000000000000000/check", check.new_tree(&mut runner).unwrap().current()),
            _ => (["/v1/messages", "/v1/verifications"][i % 2], raw.new_tree(&mut runner).unwrap().current()),
        };
        let reply = tokio::time::timeout(Duration::from_secs(5), client.request("POST", path, &headers, Some(&text)))
            .await
            .unwrap_or_else(|_| panic!("{path} hung on {text:?}"))
            .unwrap_or_else(|e| panic!("{path} dropped the connection on {text:?}: {e}"));
        assert!(reply.status < 500 || reply.status == 503, "{path} answered {} to {text:?}: {}", reply.status, reply.body);
        *statuses.entry(reply.status).or_insert(0) += 1;
    }
    println!("statuses over 300 random bodies: {statuses:?}");
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}
