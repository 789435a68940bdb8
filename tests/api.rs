//! The API as a client adopts it: listings of its own records (filters, cursor pages that hold
//! still under concurrent inserts) and the OpenAPI document that describes every route.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{API_KEY, OTHER_KEY, bound_gateway, call, post_message, wait_status};
use otpgate::http::client::Client;
use otpgate::sim::SimConfig;
use serde_json::Value;

async fn list(client: &mut Client, key: &str, path: &str) -> Value {
    let reply = call(client, "GET", path, key, None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.json()
}

fn ids(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap_or_else(|| panic!("no data in {page}")).iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
}

async fn send(client: &mut Client, key: &str, to: &str) -> String {
    let reply = post_message(client, key, &format!(r#"{{"to": "{to}", "text": "hello"}}"#), None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn messages_list_newest_first_in_cursor_pages_that_hold_still() {
    let (_sim, _gw, mut client) = bound_gateway(SimConfig::default()).await;
    let mut mine = Vec::new();
    for n in 0..7 {
        mine.push(send(&mut client, API_KEY, &format!("+4477009001{n:02}")).await);
    }
    let theirs = send(&mut client, OTHER_KEY, "+447700900200").await;

    let first = list(&mut client, API_KEY, "/v1/messages?limit=3").await;
    assert_eq!(ids(&first), [mine[6].as_str(), &mine[5], &mine[4]], "newest first: {first}");
    assert_eq!(first["has_more"], true);
    // Inserted between two pages: it is newer than every page handed out, so none shifts.
    let late = send(&mut client, API_KEY, "+447700900199").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let second = list(&mut client, API_KEY, &format!("/v1/messages?limit=3&cursor={cursor}")).await;
    assert_eq!(ids(&second), [mine[3].as_str(), &mine[2], &mine[1]]);
    let cursor = second["next_cursor"].as_str().unwrap().to_string();
    let third = list(&mut client, API_KEY, &format!("/v1/messages?limit=3&cursor={cursor}")).await;
    assert_eq!(ids(&third), [mine[0].as_str()]);
    assert_eq!(third["has_more"], false);
    assert!(third["next_cursor"].is_null());
    // An exact page has no next one.
    let all = list(&mut client, API_KEY, "/v1/messages?limit=8").await;
    assert_eq!(ids(&all)[0], late);
    assert_eq!((ids(&all).len(), &all["has_more"]), (8, &Value::Bool(false)), "{all}");
    // Each client sees its own records only.
    let other = list(&mut client, OTHER_KEY, "/v1/messages").await;
    assert_eq!(ids(&other), [theirs]);
    // A listed message is the same view GET shows.
    let one = call(&mut client, "GET", &format!("/v1/messages/{}", mine[0]), API_KEY, None).await.json();
    assert_eq!(one["to"], third["data"][0]["to"]);
    assert_eq!(one["created_at"], third["data"][0]["created_at"]);
}

#[tokio::test]
async fn message_filters_by_number_status_and_time() {
    let (_sim, _gw, mut client) = bound_gateway(SimConfig::default()).await;
    let early = send(&mut client, API_KEY, "+447700900301").await;
    wait_status(&mut client, &early, "delivered", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let split = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = send(&mut client, API_KEY, "+447700900302").await;
    wait_status(&mut client, &late, "delivered", Duration::from_secs(5)).await;

    // '+' encoded, left out, or sent raw (a space once decoded) all mean the number.
    for to in ["%2B447700900302", "447700900302", "+447700900302"] {
        assert_eq!(ids(&list(&mut client, API_KEY, &format!("/v1/messages?to={to}")).await), [late.as_str()], "to={to}");
    }
    assert_eq!(ids(&list(&mut client, API_KEY, &format!("/v1/messages?since={split}")).await), [late.as_str()]);
    assert_eq!(ids(&list(&mut client, API_KEY, &format!("/v1/messages?until={split}")).await), [early.as_str()]);
    assert_eq!(ids(&list(&mut client, API_KEY, "/v1/messages?since=1h&status=delivered").await), [late.as_str(), &early]);
    assert!(ids(&list(&mut client, API_KEY, "/v1/messages?status=queued").await).is_empty());

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=101", "invalid_limit"),
        ("status=sent", "invalid_status"),
        ("to=12", "invalid_to"),
        ("since=yesterday", "invalid_since"),
        ("until=soon", "invalid_until"),
        ("cursor=xyz", "invalid_cursor"),
        ("order=asc", "invalid_query"),
        ("limit=many", "invalid_query"),
    ] {
        let reply = call(&mut client, "GET", &format!("/v1/messages?{query}"), API_KEY, None).await;
        assert_eq!((reply.status, reply.json()["error"]["code"].as_str()), (400, Some(code)), "{query}: {}", reply.body);
    }
    assert_eq!(call(&mut client, "GET", "/v1/messages", "wrong-key", None).await.status, 401);
}

#[tokio::test]
async fn verifications_list_with_their_status() {
    let (_sim, _gw, mut client) = bound_gateway(SimConfig::default()).await;
    let mut created = Vec::new();
    for n in 0..3 {
        let reply = call(&mut client, "POST", "/v1/verifications", API_KEY, Some(&format!(r#"{{"to": "+44770090040{n}"}}"#))).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        created.push(reply.json()["id"].as_str().unwrap().to_string());
    }
    let canceled = call(&mut client, "DELETE", &format!("/v1/verifications/{}", created[1]), API_KEY, None).await;
    assert_eq!(canceled.status, 200, "{}", canceled.body);

    let all = list(&mut client, API_KEY, "/v1/verifications").await;
    assert_eq!(ids(&all), [created[2].as_str(), &created[1], &created[0]]);
    assert!(all["data"][0]["message_id"].is_string() && all["data"][0]["created_at"].is_string(), "{all}");
    assert!(all["data"][0].get("code").is_none() && !all.to_string().contains("code_hmac"), "{all}");
    let pending = list(&mut client, API_KEY, "/v1/verifications?status=pending").await;
    assert_eq!(ids(&pending).into_iter().collect::<HashSet<_>>(), HashSet::from([created[0].clone(), created[2].clone()]));
    assert_eq!(ids(&list(&mut client, API_KEY, "/v1/verifications?status=canceled").await), [created[1].as_str()]);
    assert_eq!(ids(&list(&mut client, API_KEY, "/v1/verifications?to=%2B447700900400").await), [created[0].as_str()]);
    assert!(ids(&list(&mut client, OTHER_KEY, "/v1/verifications").await).is_empty());
    let page = list(&mut client, API_KEY, "/v1/verifications?limit=2").await;
    let rest = list(&mut client, API_KEY, &format!("/v1/verifications?limit=2&cursor={}", page["next_cursor"].as_str().unwrap())).await;
    assert_eq!([ids(&page), ids(&rest)].concat(), ids(&all));
    let reply = call(&mut client, "GET", "/v1/verifications?status=delivered", API_KEY, None).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
}
