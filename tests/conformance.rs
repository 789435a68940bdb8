//! What our submit_sm looks like to someone else: the raw octets on the wire, read by hand against
//! SMPP 3.4 §4.4.1, and the fields as node-smpp's server (a third-party implementation) decodes
//! them. Our own simulator decodes with the same codec we encode with, so it cannot catch a field
//! we both get wrong (esm_class 0x08 went out on every message that way).

mod common;

use std::time::{Duration, SystemTime};

use common::{API_KEY, Gateway, NodeSmsc, carrier_config, post_message, read_pdu, start_bound, wait_status, write_pdu};
use otpgate::smpp::{OutboundSms, SubmitOutcome};
use tokio::net::TcpListener;

/// Reads the body of a submit_sm field by field (§4.4.1).
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn octet(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().expect("field present");
        self.0 = rest;
        *first
    }

    fn c_string(&mut self) -> String {
        let end = self.0.iter().position(|&b| b == 0).expect("C-octet string ends in NUL");
        let text = String::from_utf8(self.0[..end].to_vec()).expect("ASCII");
        self.0 = &self.0[end + 1..];
        text
    }

    fn octets(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken.to_vec()
    }
}

#[tokio::test]
async fn submit_sm_octets_on_the_wire_follow_smpp_3_4() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let smsc = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (id, sequence, _) = read_pdu(&mut stream).await;
        assert_eq!(id, 0x0000_0009, "bind_transceiver");
        write_pdu(&mut stream, 0x8000_0009, sequence, b"raw\0").await;
        loop {
            let (id, sequence, body) = read_pdu(&mut stream).await;
            match id {
                0x0000_0015 => write_pdu(&mut stream, 0x8000_0015, sequence, b"").await,
                0x0000_0004 => {
                    write_pdu(&mut stream, 0x8000_0004, sequence, b"1A\0").await;
                    return body;
                }
                other => panic!("unexpected command {other:#x}"),
            }
        }
    });
    let running = start_bound(carrier_config(addr, "")).await;
    let now = SystemTime::now();
    let sms = OutboundSms::new("+447700900123", "123456 is your code".into(), Some(now + Duration::from_secs(300)));
    let outcome = running.carrier.submit(&sms).await;
    assert_eq!(outcome, SubmitOutcome::Accepted { message_id: "1A".into() });
    let body = smsc.await.unwrap();

    let mut f = Fields(&body);
    assert_eq!(f.c_string(), "", "service_type: SMSC default");
    assert_eq!((f.octet(), f.octet()), (5, 0), "source TON alphanumeric, NPI unknown");
    assert_eq!(f.c_string(), "Acme");
    assert_eq!((f.octet(), f.octet()), (1, 1), "destination TON international, NPI E.164");
    assert_eq!(f.c_string(), "447700900123");
    assert_eq!(f.octet(), 0x00, "esm_class: default mode, normal message, no UDH (§5.2.12)");
    assert_eq!(f.octet(), 0, "protocol_id");
    assert_eq!(f.octet(), 0, "priority_flag");
    assert_eq!(f.c_string(), "", "schedule_delivery_time: immediate");
    let validity = f.c_string();
    assert_eq!(validity.len(), 16, "relative validity YYMMDDhhmmss000R: {validity}");
    assert!(validity.ends_with("000R") && validity.starts_with("000000000"), "{validity}");
    assert_eq!(f.octet(), 0x01, "registered_delivery: final receipt");
    assert_eq!(f.octet(), 0, "replace_if_present_flag");
    assert_eq!(f.octet(), 0, "data_coding: SMSC default alphabet");
    assert_eq!(f.octet(), 0, "sm_default_msg_id");
    let length = f.octet() as usize;
    assert_eq!(f.octets(length), b"123456 is your code");
    assert!(f.0.is_empty(), "no TLVs after the message: {:?}", f.0);
    running.shutdown.cancel();
}

#[tokio::test]
async fn node_smpp_reads_our_submit_sm_as_a_normal_message_and_its_receipt_reaches_us() {
    let Some(node) = NodeSmsc::start("{}") else { return };
    let (gw, mut client) = Gateway::bound(&[node.addr], "").await;
    let reply =
        post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "Your code is 123456", "validity": "10m"}"#, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    wait_status(&mut client, &id, "delivered", Duration::from_secs(10)).await;

    let bind = &node.events("bind_transceiver")[0];
    assert_eq!(bind["system_id"], "otpgate");
    assert_eq!(bind["interface_version"], 0x34);
    let submits = node.events("submit_sm");
    assert_eq!(submits.len(), 1, "{submits:?}");
    let sm = &submits[0];
    let expected = [
        ("service_type", serde_json::json!("")),
        ("source_addr_ton", 5.into()),
        ("source_addr_npi", 0.into()),
        ("source_addr", "Acme".into()),
        ("dest_addr_ton", 1.into()),
        ("dest_addr_npi", 1.into()),
        ("destination_addr", "447700900123".into()),
        ("esm_class", 0.into()),
        ("protocol_id", 0.into()),
        ("priority_flag", 0.into()),
        ("schedule_delivery_time", "".into()),
        ("registered_delivery", 1.into()),
        ("replace_if_present_flag", 0.into()),
        ("data_coding", 0.into()),
        ("sm_default_msg_id", 0.into()),
        ("text", "Your code is 123456".into()),
    ];
    for (field, value) in expected {
        assert_eq!(sm[field], value, "{field} as node-smpp decoded it: {sm}");
    }
    // node-smpp turns the relative validity into an absolute time: about ten minutes from now.
    let validity = sm["validity_period"].as_str().expect("a validity period");
    assert!(!validity.is_empty(), "{sm}");
    assert_eq!(node.wait_for("deliver_sm_resp", 1, Duration::from_secs(5)).await[0]["status"], 0);
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}
