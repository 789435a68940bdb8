//! SMSCs that misbehave on purpose, over raw sockets: what they send is written by hand, so no
//! codec of ours stands between them and the session under test.

mod common;

use std::time::{Duration, Instant};

use common::{carrier_config, read_pdu, start, write_pdu};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// After the bind it floods enquire_link and never reads a byte: our answers would pile up in
/// memory (1,000,000 took RSS from 66 to 257 MB) unless the session gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smsc_that_stops_reading_is_dropped_before_our_answers_pile_up() {
    const LIMIT: usize = 2_000_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let flood = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (_, sequence, _) = read_pdu(&mut stream).await;
        write_pdu(&mut stream, 0x8000_0009, sequence, b"hostile\0").await;
        let started = Instant::now();
        let mut burst = Vec::with_capacity(1000 * 16);
        let mut sent = 0usize;
        while sent < LIMIT {
            burst.clear();
            for i in 0..1000u32 {
                let number = (sent as u32 + i) % 0x7FFF_FFFF + 2;
                burst.extend_from_slice(&[0, 0, 0, 16, 0, 0, 0, 0x15, 0, 0, 0, 0]);
                burst.extend_from_slice(&number.to_be_bytes());
            }
            // The session closing under us ends the flood.
            if stream.write_all(&burst).await.is_err() {
                return Some((sent, started.elapsed()));
            }
            sent += 1000;
        }
        None
    });
    let running = start(carrier_config(addr, "response_timeout = \"1s\""));
    let ended = tokio::time::timeout(Duration::from_secs(60), flood).await.expect("flood ends").unwrap();
    let (sent, after) = ended.expect("the session never closed: it kept queueing answers the SMSC never reads");
    println!("session closed after {sent} enquire_links in {after:?}");
    assert!(after < Duration::from_secs(10), "took {after:?}");
    running.shutdown.cancel();
}

/// `otpgate_carrier_up` says a session is bound; whether the carrier takes traffic is another
/// matter: a hung SMSC (bound, answering nothing) and an open circuit both show as 0 on
/// `otpgate_carrier_taking_traffic`, within seconds, long before the response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_failing_carrier_shows_as_not_taking_traffic_while_still_bound() {
    use common::{API_KEY, Gateway, metric, post_message, sim};
    use otpgate::sim::{Behaviour, SimConfig};
    let smsc = sim(SimConfig::default()).await;
    let gw = Gateway::start(&[smsc.addr()], "response_timeout = \"10s\"\ncircuit_failures = 2\ncircuit_open = \"30s\"").await;
    gw.wait_bound().await;
    let metrics = gw.daemon.metrics_addr();
    let series = |name: &str| format!("{name}{{carrier=\"alpha\"}}");
    let until = |name: String, value: f64| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(metrics, &name).await != value {
            assert!(Instant::now() < deadline, "{name} never became {value}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        deadline.duration_since(Instant::now())
    };
    until(series("otpgate_carrier_taking_traffic"), 1.0).await;

    smsc.set_behaviour(Behaviour::Hang);
    let mut client = gw.client().await;
    let started = Instant::now();
    post_message(&mut client, API_KEY, r#"{"to": "+447700900123", "text": "into the void"}"#, None).await;
    until(series("otpgate_carrier_taking_traffic"), 0.0).await;
    assert!(started.elapsed() < Duration::from_secs(5), "seen only after {:?}", started.elapsed());
    assert_eq!(metric(metrics, &series("otpgate_carrier_up")).await, 1.0, "still bound");

    // SMSC faults open the circuit: the gauge says so.
    smsc.set_behaviour(Behaviour::Normal);
    smsc.drop_connections();
    gw.wait_bound().await;
    smsc.set_submit_status(Some(rusmpp::CommandStatus::EsmeRsyserr));
    for i in 0..2 {
        let body = format!(r#"{{"to": "+4477009002{i:02}", "text": "fault {i}"}}"#);
        post_message(&mut client, API_KEY, &body, None).await;
    }
    until(series("otpgate_carrier_circuit_open"), 1.0).await;
    assert_eq!(metric(metrics, &series("otpgate_carrier_taking_traffic")).await, 0.0);
    gw.daemon.shutdown(Duration::from_secs(5)).await;
}

/// 2,000 mobile-originated SMS in a burst: counted, and logged as a few summary lines, not one
/// line each (20,000 once wrote 20,000 lines in 2 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_mobile_originated_sms_is_logged_as_a_count() {
    use common::{DaemonFiles, metric, sim, spawn_daemon, wait_ready};
    let smsc = sim(otpgate::sim::SimConfig::default()).await;
    let files = DaemonFiles::new(&[smsc.addr()], "", "");
    let log = files.dir.path().join("otpgate.log");
    let mut daemon = spawn_daemon(&files.config, Some(&log), &[]);
    wait_ready(files.http).await;
    for i in 0..2000u32 {
        let text = format!("hello {i}");
        let pdu = rusmpp::pdus::DeliverSm::builder()
            // rusmpp's default esm_class is 0x08 (an SME acknowledgement): a plain MO is 0x00.
            .esm_class(rusmpp::values::EsmClass::from(0x00))
            .short_message(rusmpp::types::OctetString::from_vec(text.into_bytes()).unwrap())
            .build();
        smsc.deliver(pdu);
    }
    assert!(smsc.wait_until(Duration::from_secs(10), |s| s.deliver_sm_resps >= 2000).await, "every MO answered");
    let counted = metric(files.metrics, "otpgate_mobile_originated_total{carrier=\"alpha\"}").await;
    let _ = daemon.kill();
    let _ = daemon.wait();
    let lines = std::fs::read_to_string(&log).unwrap().lines().filter(|l| l.contains("mobile-originated")).count();
    assert_eq!(counted, 2000.0);
    assert!((1..=3).contains(&lines), "{lines} log lines for 2,000 MO SMS");
}
