//! Country and carrier rules over real SMPP: India's DLT ids in each carrier's own vendor TLVs
//! (our simulator and node-smpp read them back), a message without the ids its route needs
//! refused at intake, a DLT refusal treated as permanent (one submit, no retry storm), and the
//! sender each route sets or allows.

mod common;

use std::time::Duration;

use common::{API_KEY, Gateway, NodeSmsc, call, gateway_config, named, post_message, sim, wait_status};
use otpgate::sim::SimConfig;

const ENTITY: &str = "1101456789012345678";
const TEMPLATE: &str = "1107161234567890123";
/// An Indian operator's DLT tags (they differ between operators: these are from the config).
const DLT_TLVS: &str = "tlvs = { \"0x1400\" = \"{entity_id}\", \"0x1401\" = \"{template_id}\" }";

fn registrations() -> String {
    format!("[otp]\nbrand = \"Acme\"\n[otp.registrations]\nen = {{ template_id = \"{TEMPLATE}\", entity_id = \"{ENTITY}\" }}\n")
}

fn tlv_text(tlvs: &[(u16, Vec<u8>)], tag: u16) -> Option<String> {
    tlvs.iter().find(|(t, _)| *t == tag).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

#[tokio::test]
async fn dlt_ids_ride_in_the_carriers_vendor_tlvs_and_a_message_without_them_is_refused() {
    let sim = sim(SimConfig::default()).await;
    let (_gw, mut client) = Gateway::setup(&[sim.addr()], DLT_TLVS).sections(&registrations()).bound().await;

    // A code: its locale's registration.
    let created = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(r#"{"to": "+919876543210"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.submits.len() == 1).await);
    let otp = sim.stats().submits[0].clone();
    assert_eq!(tlv_text(&otp.vendor_tlvs, 0x1400).as_deref(), Some(ENTITY));
    assert_eq!(tlv_text(&otp.vendor_tlvs, 0x1401).as_deref(), Some(TEMPLATE));

    // A plain message: the ids it names.
    let body = r#"{"to": "+919876543211", "text": "Your order 42 has shipped", "template_id": "1107999", "entity_id": "1101888"}"#;
    let sent = post_message(&mut client, API_KEY, body, None).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert!(sim.wait_until(Duration::from_secs(5), |s| s.submits.len() == 2).await);
    let plain = sim.stats().submits[1].clone();
    assert_eq!(tlv_text(&plain.vendor_tlvs, 0x1401).as_deref(), Some("1107999"));
    assert_eq!(tlv_text(&plain.vendor_tlvs, 0x1400).as_deref(), Some("1101888"));
    let id = sent.json()["id"].as_str().unwrap().to_string();
    wait_status(&mut client, &id, "delivered", Duration::from_secs(5)).await;

    // Without the ids the route's carrier needs: refused at intake, nothing sent.
    let missing = post_message(&mut client, API_KEY, r#"{"to": "+919876543212", "text": "hi", "entity_id": "1101888"}"#, None).await;
    assert_eq!((missing.status, missing.json()["error"]["code"].as_str()), (422, Some("registration_required")), "{}", missing.body);
    assert!(missing.body.contains("template_id"), "{}", missing.body);
    let unregistered = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(r#"{"to": "+919876543213", "locale": "fr"}"#)).await;
    assert_eq!(unregistered.json()["error"]["code"], "registration_required", "{}", unregistered.body);
    let bad = post_message(&mut client, API_KEY, r#"{"to": "+919876543214", "text": "hi", "template_id": ""}"#, None).await;
    assert_eq!(bad.json()["error"]["code"], "invalid_registration", "{}", bad.body);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.stats().submits.len(), 2, "a refused message never reaches the carrier");
}

#[tokio::test]
async fn node_smpp_reads_the_same_tlvs() {
    let Some(node) = NodeSmsc::start(r#"{"require_tlvs": [5121], "require_status": 1035}"#) else { return };
    let (_gw, mut client) = Gateway::setup(&[node.addr], DLT_TLVS).sections(&registrations()).bound().await;
    let created = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(r#"{"to": "+919876543220"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let seen = node.wait_for("submit_sm", 1, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["status"], 0, "the SMSC found the TLVs it requires: {}", seen[0]);
    let tlvs = seen[0]["vendor_tlvs"].as_array().unwrap();
    assert!(tlvs.contains(&serde_json::json!([0x1400, ENTITY])), "{tlvs:?}");
    assert!(tlvs.contains(&serde_json::json!([0x1401, TEMPLATE])), "{tlvs:?}");
}

#[tokio::test]
async fn a_dlt_refusal_is_permanent_one_submit_and_no_retry() {
    // The carrier wants the template in 0x1401; this config sends the entity only.
    let sim = sim(SimConfig { require_tlvs: Some((vec![0x1401], 0x40B)), ..SimConfig::default() }).await;
    let extra = "tlvs = { \"0x1400\" = \"1101888\" }";
    let (_gw, mut client) = Gateway::setup(&[sim.addr()], extra).bound().await;
    let sent = post_message(&mut client, API_KEY, r#"{"to": "+919876543230", "text": "hi"}"#, None).await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let id = sent.json()["id"].as_str().unwrap().to_string();
    let failed = wait_status(&mut client, &id, "failed", Duration::from_secs(5)).await;
    assert!(failed["error"].as_str().unwrap_or_default().contains("0x0000040B"), "{failed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.stats().refused, 1, "one submit, refused for good");
}

#[tokio::test]
async fn senders_follow_the_route_and_a_request_names_only_an_allowed_one() {
    let (alpha, beta) = (sim(SimConfig::default()).await, sim(SimConfig::default()).await);
    // The US wants a short code or a registered long number: beta sends from its registered
    // number, any other carrier of the route from the short code; requests may name only those.
    let routes = "[[routes]]\nprefixes = [\"+1\"]\ncarriers = [\"beta\", \"alpha\"]\nfrom = \"12345\"\n\
                  from_by_carrier = { beta = \"+15550100\" }\nallowed_from = [\"12345\", \"+15550100\"]\n\
                  [[routes]]\nprefixes = [\"*\"]\ncarriers = [\"alpha\"]\n";
    let (_gw, mut client) = Gateway::setup(&[alpha.addr(), beta.addr()], "").sections(routes).bound().await;

    assert_eq!(post_message(&mut client, API_KEY, r#"{"to": "+12025550123", "text": "a"}"#, None).await.status, 202);
    assert!(beta.wait_until(Duration::from_secs(5), |s| s.submits.len() == 1).await);
    assert_eq!(beta.stats().submits[0].from, "15550100", "the route's sender on beta");
    let refused = post_message(&mut client, API_KEY, r#"{"to": "+12025550123", "text": "b", "from": "Acme"}"#, None).await;
    assert_eq!((refused.status, refused.json()["error"]["code"].as_str()), (422, Some("from_not_allowed")), "{}", refused.body);
    assert!(refused.body.contains("12345"), "the answer lists the allowed senders: {}", refused.body);
    assert_eq!(post_message(&mut client, API_KEY, r#"{"to": "+12025550123", "text": "c", "from": "12345"}"#, None).await.status, 202);
    assert!(beta.wait_until(Duration::from_secs(5), |s| s.submits.len() == 2).await);
    assert_eq!(beta.stats().submits[1].from, "12345");
    // Elsewhere any sender goes, and the carrier's own is the default.
    assert_eq!(post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "d", "from": "Acme"}"#, None).await.status, 202);
    assert!(alpha.wait_until(Duration::from_secs(5), |s| s.submits.len() == 1).await);
    assert_eq!(alpha.stats().submits[0].from, "Acme");
    // A code to a +1 number goes from the route's sender too.
    let created = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(r#"{"to": "+12025550124"}"#)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(beta.wait_until(Duration::from_secs(5), |s| s.submits.len() == 3).await);
    assert_eq!(beta.stats().submits[2].from, "15550100");

    // check-config shows, per route, the sender each carrier uses.
    let dir = tempfile::tempdir().unwrap();
    let summary = gateway_config(&named(&[alpha.addr(), beta.addr()]), dir.path(), "").sections(routes).build().unwrap().summary();
    assert!(summary.contains("senders: beta \"+15550100\", alpha \"12345\"  requests may name: 12345, +15550100"), "{summary}");
}

#[test]
fn bad_rules_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let carriers = named(&["127.0.0.1:2775".parse().unwrap(), "127.0.0.1:2776".parse().unwrap()]);
    let error = |extra: &str, sections: &str| {
        gateway_config(&carriers, dir.path(), extra).sections(sections).build().map(|_| ()).unwrap_err().to_string()
    };
    let e = error("tlvs = { \"0x0204\" = \"x\" }", "");
    assert!(e.contains("tlvs") && e.contains("0x1400-0x3FFF"), "{e}");
    let e = error("", "[[routes]]\nprefixes = [\"+1\"]\ncarriers = [\"alpha\"]\nfrom_by_carrier = { beta = \"123\" }\n");
    assert!(e.contains("routes[0].from_by_carrier"), "{e}");
    let e = error("", "[[routes]]\nprefixes = [\"+1\"]\ncarriers = [\"alpha\"]\nallowed_from = \"anyone\"\n");
    assert!(e.contains("routes[0].allowed_from"), "{e}");
    let e = error("", "[otp.registrations]\nxx = { template_id = \"1\" }\n");
    assert!(e.contains("registrations"), "{e}");
    let summary = gateway_config(&carriers, dir.path(), DLT_TLVS).sections(&registrations()).build().unwrap().summary();
    assert!(summary.contains(&format!("registered en: template {TEMPLATE} entity {ENTITY}: \"123456 is your Acme code.")), "{summary}");
    assert!(summary.contains("vendor TLVs: 0x1400=\"{entity_id}\"  0x1401=\"{template_id}\""), "{summary}");
}
