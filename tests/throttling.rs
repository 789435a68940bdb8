//! A throttling carrier must neither collapse nor hold codes back while the others sit idle:
//! its rate is cut by the share it refuses, and what it cannot take within the spill bound
//! reaches the next carrier of the route. Three simulators over real sockets, load over HTTP.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{API_KEY, Gateway, post_message, sim};
use otpgate::sim::{SimConfig, SmscSim};
use rusmpp::CommandStatus;

const SPILL_AFTER: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded 2-core machine in a debug build.
const SLACK: Duration = Duration::from_millis(1500);

/// Posts `rate` messages a second for `seconds` over four connections; returns when each was
/// answered 202, by text.
async fn offer(gw: &Gateway, rate: u32, seconds: u32) -> HashMap<String, Instant> {
    const CONNECTIONS: u32 = 4;
    let accepted = Arc::new(Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let mut client = gw.client().await;
        let accepted = accepted.clone();
        clients.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) * CONNECTIONS / rate);
            for n in 0..rate * seconds / CONNECTIONS {
                tick.tick().await;
                let i = n * CONNECTIONS + c;
                let body = format!(r#"{{"to": "+4477009{i:05}", "text": "spill {i}"}}"#);
                let reply = post_message(&mut client, API_KEY, &body, None).await;
                assert_eq!(reply.status, 202, "{}", reply.body);
                accepted.lock().unwrap().insert(format!("spill {i}"), Instant::now());
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    Arc::try_unwrap(accepted).unwrap().into_inner().unwrap()
}

/// Waits until every message reached a simulator; returns how long each waited after its 202,
/// and how many each simulator took.
async fn delays(sims: &[&SmscSim], accepted: &HashMap<String, Instant>) -> (Vec<Duration>, Vec<usize>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let arrived: HashMap<String, Instant> = sims.iter().flat_map(|s| s.stats().submits.into_iter().map(|m| (m.text, m.at))).fold(
            HashMap::new(),
            |mut first, (text, at)| {
                first.entry(text).and_modify(|t: &mut Instant| *t = (*t).min(at)).or_insert(at);
                first
            },
        );
        if accepted.keys().all(|t| arrived.contains_key(t)) {
            let waited = accepted.iter().map(|(t, at)| arrived[t].saturating_duration_since(*at)).collect();
            let shares = sims.iter().map(|s| s.stats().submits.len()).collect();
            return (waited, shares);
        }
        assert!(tokio::time::Instant::now() < deadline, "messages never reached an SMSC");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn three_carriers() -> (SmscSim, SmscSim, SmscSim, Gateway) {
    let (alpha, beta, gamma) = (sim(SimConfig::default()).await, sim(SimConfig::default()).await, sim(SimConfig::default()).await);
    let extra = format!("[messages]\nspill_after = \"{}ms\"\n", SPILL_AFTER.as_millis());
    let gw = Gateway::setup(&[alpha.addr(), beta.addr(), gamma.addr()], "").sections(&extra).start().await;
    gw.wait_bound().await;
    (alpha, beta, gamma, gw)
}

fn report(name: &str, waited: &[Duration], shares: &[usize]) -> Duration {
    let worst = waited.iter().max().copied().unwrap_or_default();
    let mut sorted = waited.to_vec();
    sorted.sort();
    let p99 = sorted[sorted.len() * 99 / 100];
    println!("{name}: {} messages, p99 wait {p99:?}, worst {worst:?}, per carrier {shares:?}", waited.len());
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_refusing_a_third_keeps_its_rate_and_the_rest_spills_over_in_time() {
    let (alpha, beta, gamma, gw) = three_carriers().await;
    alpha.set_submit_status(Some(CommandStatus::EsmeRthrottled));
    alpha.set_status_every(3);
    let accepted = offer(&gw, 100, 4).await;
    let (waited, shares) = delays(&[&alpha, &beta, &gamma], &accepted).await;
    let worst = report("33 % throttled at 100/s", &waited, &shares);
    assert!(worst < SPILL_AFTER + SLACK, "a message waited {worst:?} with idle carriers bound");
    // The old rule halved alpha every throttled second, down to a few msg/s.
    assert!(shares[0] >= 120, "alpha collapsed: {shares:?}");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_beyond_a_carriers_capacity_reaches_the_idle_carriers_in_time() {
    let (alpha, beta, gamma, gw) = three_carriers().await;
    alpha.set_max_tps(100);
    let accepted = offer(&gw, 300, 3).await;
    let (waited, shares) = delays(&[&alpha, &beta, &gamma], &accepted).await;
    let worst = report("alpha capped at 100/s, 300/s offered", &waited, &shares);
    assert!(worst < SPILL_AFTER + SLACK, "a message waited {worst:?} with idle carriers bound");
    // How much spills depends on the rate the clients really offered: on a machine loaded by
    // the rest of the suite the four loops fall behind (CI once offered ~100/s, which alpha
    // takes alone), and then the wait above is the check that holds.
    let offered_for = accepted.values().max().zip(accepted.values().min()).map_or(Duration::ZERO, |(last, first)| *last - *first);
    let offered_rate = accepted.len() as f64 / offered_for.as_secs_f64().max(1.0);
    match offered_rate >= 250.0 {
        true => assert!(shares[1] + shares[2] >= 300, "the rest never moved to the idle carriers: {shares:?}"),
        false => println!("offered only {offered_rate:.0}/s: the spill share is not checked"),
    }
    assert!(shares[0] >= 150, "alpha was starved: {shares:?}");
    assert!(gw.daemon.shutdown(Duration::from_secs(5)).await);
}
