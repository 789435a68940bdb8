//! Kannel's `/cgi-bin/sendsms` over real HTTP: the user guide's request forms, Kannel's answers,
//! and `dlr-url` callbacks (with Kannel's escapes filled) fetched by a real HTTP receiver for
//! every message under load, across a restart, while the receiver is down for a while.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use common::receiver::{Mode, Receiver};
use common::{Gateway, call, sim};
use otpgate::http::client::{Client, Reply};
use otpgate::sim::{SimConfig, SmscSim};

const KANNEL_KEY: &str = "kannel-app-bearer-key";

/// The sendsms user `tester`/`foobar` (the user guide's) as its own API key, and quick retries
/// of delivery-report URLs.
fn kannel_sections() -> String {
    format!(
        "[[api_keys]]\nname = \"kannel-app\"\nkey_sha256 = \"{}\"\n[api_keys.kannel]\nusername = \"tester\"\npassword_sha256 = \"{}\"\n\
         [kannel_dlr]\nbackoff_min = \"100ms\"\nbackoff_max = \"300ms\"\n",
        otpgate::http::sha256_hex(KANNEL_KEY.as_bytes()),
        otpgate::http::sha256_hex(b"foobar"),
    )
}

async fn gateway(sims: &[&SmscSim]) -> (Gateway, Client) {
    let addrs: Vec<_> = sims.iter().map(|s| s.addr()).collect();
    Gateway::setup(&addrs, "").sections(&kannel_sections()).bound().await
}

/// Percent-encodes a value for a query string, as a client library would.
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn get(client: &mut Client, query: &str) -> Reply {
    client.request("GET", &format!("/cgi-bin/sendsms?{query}"), &[], None).await.expect("request")
}

async fn submits_to(sim: &SmscSim, to: &str, n: usize) -> Vec<otpgate::sim::ReceivedSms> {
    let digits = to.trim_start_matches('+').to_string();
    sim.wait_until(Duration::from_secs(5), |s| s.submits.iter().filter(|m| m.to == digits).count() >= n).await;
    sim.stats().submits.into_iter().filter(|m| m.to == digits).collect()
}

/// The query parameters of a request target.
fn query_of(target: &str) -> HashMap<String, String> {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap().into_iter().collect()
}

#[tokio::test]
async fn the_user_guides_request_forms_send() {
    let sim = sim(SimConfig::default()).await;
    let (gw, mut client) = gateway(&[&sim]).await;

    // The user guide's GET, '+' for a space; Kannel's national-style number without '+'.
    let reply = get(&mut client, "username=tester&password=foobar&to=447700900701&text=Hello+world").await;
    assert_eq!((reply.status, reply.body.as_str()), (202, "0: Accepted for delivery"));
    assert_eq!(submits_to(&sim, "447700900701", 1).await[0].text, "Hello world");

    // user/pass aliases; several receivers, space-separated (an unencoded '+' arrives as one).
    let reply = get(&mut client, "user=tester&pass=foobar&to=+447700900702+00447700900703&text=Two").await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(submits_to(&sim, "447700900702", 1).await[0].text, "Two");
    assert_eq!(submits_to(&sim, "447700900703", 1).await[0].text, "Two");

    // POST with the text as the body and the parameters as X-Kannel headers.
    let headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("X-Kannel-Username", "tester"),
        ("X-Kannel-Password", "foobar"),
        ("X-Kannel-To", "+447700900704"),
        ("X-Kannel-From", "Acme"),
    ];
    let reply = client.request("POST", "/cgi-bin/sendsms", &headers, Some("Posted Größe")).await.unwrap();
    assert_eq!(reply.status, 202, "{}", reply.body);
    let posted = &submits_to(&sim, "447700900704", 1).await[0];
    assert_eq!((posted.text.as_str(), posted.from.as_str()), ("Posted Größe", "Acme"));

    // POST form-encoded.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let body = "username=tester&password=foobar&to=%2B447700900705&text=Form+text";
    assert_eq!(client.request("POST", "/cgi-bin/sendsms", &form, Some(body)).await.unwrap().status, 202);
    assert_eq!(submits_to(&sim, "447700900705", 1).await[0].text, "Form text");

    // coding=2 takes UTF-16BE bytes by default; charset names another.
    assert_eq!(get(&mut client, "username=tester&password=foobar&to=447700900706&coding=2&text=%04%1F%04%40%048").await.status, 202);
    let ucs2 = &submits_to(&sim, "447700900706", 1).await[0];
    assert_eq!((ucs2.text.as_str(), ucs2.data_coding), ("При", 8));
    assert_eq!(get(&mut client, "username=tester&password=foobar&to=447700900707&charset=ISO-8859-1&text=%E9t%E9").await.status, 202);
    assert_eq!(submits_to(&sim, "447700900707", 1).await[0].text, "été");

    // The sendsms password never reaches the store.
    let Gateway { daemon, dir } = gw;
    assert!(daemon.shutdown(Duration::from_secs(5)).await);
    for (place, bytes) in common::stored(dir.path()) {
        assert!(!bytes.windows(6).any(|w| w == b"foobar"), "the password is in {place}");
    }
}

#[tokio::test]
async fn refusals_in_kannels_words() {
    let sim = sim(SimConfig::default()).await;
    let (_gw, mut client) = gateway(&[&sim]).await;
    let auth = "username=tester&password=foobar";
    let cases = [
        ("username=tester&password=wrong&to=447700900710&text=x".to_string(), 403, "Authorization failed for sendsms"),
        ("to=447700900710&text=x".to_string(), 403, "Authorization failed for sendsms"),
        (format!("{auth}&text=x"), 400, "Missing receiver number, rejected"),
        (format!("{auth}&to=&text=x"), 400, "Empty receiver number not allowed, rejected"),
        (format!("{auth}&to=12ab&text=x"), 400, "Number(s) has/have been denied by white- and/or black-lists."),
        (format!("{auth}&to=447700900710&text=x&udh=%06%05%04%0B%84%23%F0"), 400, "udh is not supported by otpgate, rejected"),
        (format!("{auth}&to=447700900710&text=x&coding=1"), 400, "Coding 1 (8-bit data) is not supported by otpgate, rejected"),
        (format!("{auth}&to=447700900710&text=x&coding=7"), 400, "Coding field misformed, rejected"),
        (format!("{auth}&to=447700900710&text=x&dlr-mask=3&dlr-url=ftp%3A%2F%2Fh%2Fx"), 400, "DLR-URL field misformed, rejected"),
        (format!("{auth}&to=447700900710&text=x&dlr-mask=99"), 400, "DLR-Mask field misformed, rejected"),
        (format!("{auth}&to=447700900710&text=x&validity=soon"), 400, "Validity field misformed, rejected"),
        (format!("{auth}&to=447700900710&text=x&charset=KOI8-R"), 400, "Charset or body misformed, rejected"),
        (format!("{auth}&to=447700900710&text=%FF"), 400, "Charset or body misformed, rejected"),
        (format!("{auth}&to=447700900710&text="), 400, "Empty text not allowed, rejected."),
        (format!("{auth}&to=447700900710&text=x&smsc=nowhere"), 403, "Not routable. Do not try again."),
    ];
    for (query, status, answer) in cases {
        let reply = get(&mut client, &query).await;
        assert_eq!((reply.status, reply.body.as_str()), (status, answer), "{query}");
    }
    let json = [("Content-Type", "application/json")];
    let reply = client.request("POST", "/cgi-bin/sendsms", &json, Some("{}")).await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (400, "Invalid content-type"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sim.stats().submits.is_empty(), "a refused request sent nothing");
}

#[tokio::test]
async fn smsc_pins_the_carrier() {
    let (alpha, beta) = (sim(SimConfig::default()).await, sim(SimConfig::default()).await);
    let (_gw, mut client) = gateway(&[&alpha, &beta]).await;
    for n in 0..3 {
        let reply = get(&mut client, &format!("username=tester&password=foobar&to=44770090072{n}&text=pinned&smsc=beta")).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
    }
    beta.wait_until(Duration::from_secs(5), |s| s.submits.len() >= 3).await;
    assert_eq!((alpha.stats().submits.len(), beta.stats().submits.len()), (0, 3));
}

#[tokio::test]
async fn dlr_url_is_called_for_each_state_in_the_mask_with_kannels_escapes() {
    let sim = sim(SimConfig::default()).await;
    let (_gw, mut client) = gateway(&[&sim]).await;
    let receiver = Receiver::start(Mode::Answer(200)).await;
    let template = format!(
        "{}?type=%d&smscid=%F&to=%p&from=%P&q=%q&Q=%Q&time=%t&unix=%T&reply=%A&smsc=%i&user=%n&coding=%c&mid=%I&keep=%x",
        receiver.url()
    );
    let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let query =
        format!("username=tester&password=foobar&to=00447700900730&from=%2B447700900999&text=hi&dlr-mask=31&dlr-url={}", enc(&template));
    assert_eq!(get(&mut client, &query).await.status, 202);
    let calls = receiver.wait_taken(2, Duration::from_secs(10)).await;
    assert_eq!(calls.len(), 2, "SMSC submit (8) and delivered (1): {calls:?}");
    let reports: Vec<HashMap<String, String>> = calls.iter().map(|c| query_of(&c.target)).collect();
    assert!(calls.iter().all(|c| c.method == "GET" && c.body.is_empty() && c.signature.is_empty()));
    assert_eq!((reports[0]["type"].as_str(), reports[1]["type"].as_str()), ("8", "1"), "in the order they happened");
    let delivered = &reports[1];
    let message = call(&mut client, "GET", &format!("/v1/messages/{}", delivered["mid"]), KANNEL_KEY, None).await.json();
    assert_eq!(message["status"], "delivered");
    assert_eq!(delivered["smscid"], message["smsc_message_id"].as_str().unwrap());
    // A report comes from the handset: %p is the receiver as written, %P the sender.
    assert_eq!((delivered["to"].as_str(), delivered["from"].as_str()), ("00447700900730", "+447700900999"));
    assert_eq!((delivered["q"].as_str(), delivered["Q"].as_str()), ("+447700900730", "+447700900999"));
    assert_eq!((delivered["smsc"].as_str(), delivered["user"].as_str(), delivered["coding"].as_str()), ("alpha", "tester", "0"));
    assert!(delivered["reply"].contains("stat:DELIVRD"), "{delivered:?}");
    assert_eq!(reports[0]["reply"], "ACK/");
    let unix: u64 = delivered["unix"].parse().unwrap();
    assert!((before..before + 60).contains(&unix), "{unix} vs {before}");
    let time = &delivered["time"];
    assert!(time.len() == 16 && time.as_bytes()[10] == b' ' && time.as_bytes()[13] == b':', "YYYY-MM-DD HH:MM: {time}");
    assert_eq!(delivered["keep"], "%x", "an unknown escape stays as written");

    // Only the states in the mask: delivered alone.
    let query = format!("username=tester&password=foobar&to=447700900731&text=hi&dlr-mask=1&dlr-url={}", enc(&template));
    assert_eq!(get(&mut client, &query).await.status, 202);
    let calls = receiver.wait_taken(3, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let to_731: Vec<_> = receiver.taken().iter().map(|c| query_of(&c.target)).filter(|q| q["to"] == "447700900731").collect();
    assert_eq!(to_731.iter().map(|q| q["type"].as_str()).collect::<Vec<_>>(), ["1"], "{calls:?}");
}

#[tokio::test]
async fn failed_deliveries_report_type_2() {
    let sim = sim(SimConfig { receipt_stat: "UNDELIV", ..SimConfig::default() }).await;
    let (_gw, mut client) = gateway(&[&sim]).await;
    let receiver = Receiver::start(Mode::Answer(200)).await;
    let template = format!("{}?type=%d&reply=%A", receiver.url());
    let query = format!("username=tester&password=foobar&to=447700900740&text=hi&dlr-mask=3&dlr-url={}", enc(&template));
    assert_eq!(get(&mut client, &query).await.status, 202);
    let calls = receiver.wait_taken(1, Duration::from_secs(10)).await;
    let report = query_of(&calls[0].target);
    assert_eq!(report["type"], "2");
    assert!(report["reply"].contains("stat:UNDELIV"), "{report:?}");
}

#[tokio::test]
async fn every_message_under_load_gets_its_reports_across_a_restart_and_a_receiver_outage() {
    let sim = sim(SimConfig::default()).await;
    let (gw, mut client) = gateway(&[&sim]).await;
    // The receiver refuses at first: reports wait in the outbox, retried with backoff.
    let receiver = Receiver::start(Mode::Answer(503)).await;
    let template = format!("{}?type=%d&mid=%I&to=%p", receiver.url());
    let (requests, per_request) = (20, 10);
    let mut numbers = Vec::new();
    let mut queries = Vec::new();
    for batch in 0..requests {
        let to: Vec<String> = (0..per_request).map(|n| format!("4477009{batch:02}{n:03}")).collect();
        queries.push(format!("username=tester&password=foobar&to={}&text=load&dlr-mask=9&dlr-url={}", to.join("+"), enc(&template)));
        numbers.extend(to);
    }
    for query in &queries[..requests / 2] {
        assert_eq!(get(&mut client, query).await.status, 202);
    }
    // A restart with half the load taken and its reports still undelivered.
    let gw = gw.restart_with(&[sim.addr()], &kannel_sections()).await;
    gw.wait_bound().await;
    let mut client = gw.client().await;
    for query in &queries[requests / 2..] {
        assert_eq!(get(&mut client, query).await.status, 202);
    }
    // Up again once reports met the outage.
    let refused = tokio::time::Instant::now() + Duration::from_secs(10);
    while !receiver.seen().iter().any(|s| s.status == 503) && tokio::time::Instant::now() < refused {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.set(Mode::Answer(200));
    let expected = numbers.len() * 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut seen: HashSet<(String, String)> = HashSet::new();
    while tokio::time::Instant::now() < deadline {
        seen = receiver.taken().iter().map(|c| query_of(&c.target)).map(|q| (q["to"].clone(), q["type"].clone())).collect();
        if seen.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(receiver.seen().iter().any(|s| s.status == 503), "the outage was met and retried");
    for number in &numbers {
        for kind in ["8", "1"] {
            assert!(
                seen.contains(&(number.clone(), kind.to_string())),
                "no type {kind} report for {number} ({} of {expected})",
                seen.len()
            );
        }
    }
}
