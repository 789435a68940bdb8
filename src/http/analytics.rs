//! `GET /v1/analytics/verifications`: what converts where. Counted from the verification
//! records themselves (the store's own truth, not a second set of counters), grouped by country,
//! prefix or carrier; a client sees its own, an admin key everyone's. With the prefixes the fraud
//! guard holds suspended now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::webhooks::read_query;
use super::{AppState, scope};
use crate::store::MessageStatus;
use crate::store::record::{rfc3339, to_ms};
use crate::store::verification::VerificationStatus;

/// The longest look back, and the most verifications one answer reads.
const MAX_SINCE: Duration = Duration::from_secs(7 * 86_400);
const MAX_READ: usize = 1_000_000;
/// Groups shown at most, the busiest first.
const MAX_GROUPS: usize = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyticsQuery {
    group_by: Option<String>,
    /// RFC 3339, or a duration back from now ("24h"); default 24 hours, at most 7 days.
    since: Option<String>,
}

/// One group's counts and times.
#[derive(Default)]
struct Group {
    verifications: u64,
    sms: u64,
    delivered: u64,
    approved: u64,
    to_deliver_ms: Vec<u64>,
    to_approve_ms: Vec<u64>,
}

fn quantiles(values: &mut [u64]) -> serde_json::Value {
    if values.is_empty() {
        return json!(null);
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    json!({"p50": at(0.5), "p95": at(0.95)})
}

pub(super) async fn verifications(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let owner = scope(&state, &headers)?;
    let query: AnalyticsQuery = read_query(query.as_deref().unwrap_or_default())?;
    let group_by = query.group_by.as_deref().unwrap_or("country");
    if !matches!(group_by, "country" | "prefix" | "carrier") {
        return Err(ApiError::bad_request("invalid_group_by", "group_by is country, prefix or carrier"));
    }
    let now = state.otp.now();
    let since = match query.since.as_deref() {
        None => now - Duration::from_secs(86_400),
        Some(text) => super::listing::parse_time("invalid_since", text, now)?,
    };
    let since = since.max(now.checked_sub(MAX_SINCE).unwrap_or(SystemTime::UNIX_EPOCH));
    let since_ms = to_ms(since);
    let digits = state.otp.guard().prefix_digits();
    let unavailable = |e: crate::store::StoreError| ApiError::unavailable("store_unavailable", e.to_string());
    let mut groups: HashMap<String, Group> = HashMap::new();
    let (mut after, mut read, mut complete) = (None, 0usize, true);
    loop {
        let page = state.store.verifications_since(since_ms, after.as_ref(), 1024).await.map_err(unavailable)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        read += page.len();
        for (_, record) in page {
            if record.created_ms < since_ms || owner.as_ref().is_some_and(|o| *o != record.owner) {
                continue;
            }
            let latest = match record.message_ids.last() {
                Some(id) => state.store.message(id).await.map_err(unavailable)?,
                None => None,
            };
            let key = match group_by {
                "country" => crate::country::label(&record.to).to_string(),
                "prefix" => crate::fraud::prefix_of(&record.to, digits).unwrap_or_else(|| "unknown".into()),
                _ => latest.as_ref().and_then(|m| m.carrier.clone()).unwrap_or_else(|| "none".into()),
            };
            let group = groups.entry(key).or_default();
            group.verifications += 1;
            group.sms += u64::from(record.sends);
            if let Some(done) = latest.as_ref().filter(|m| m.status == MessageStatus::Delivered).and_then(|m| m.done_ms) {
                group.delivered += 1;
                group.to_deliver_ms.push(done.saturating_sub(record.last_send_ms));
            }
            if record.status == VerificationStatus::Approved {
                group.approved += 1;
                group.to_approve_ms.push(record.done_ms.unwrap_or(record.created_ms).saturating_sub(record.created_ms));
            }
        }
        if read >= MAX_READ {
            complete = false;
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut sorted: Vec<(String, Group)> = groups.into_iter().collect();
    sorted.sort_by(|a, b| b.1.verifications.cmp(&a.1.verifications).then(a.0.cmp(&b.0)));
    let shown: Vec<serde_json::Value> = sorted
        .into_iter()
        .take(MAX_GROUPS)
        .map(|(key, mut g)| {
            let rate = |n: u64| if g.verifications == 0 { 0.0 } else { n as f64 / g.verifications as f64 };
            json!({
                "key": key,
                "verifications": g.verifications,
                "sms_sent": g.sms,
                "delivered": g.delivered,
                "approved": g.approved,
                "delivery_rate": rate(g.delivered),
                "conversion_rate": rate(g.approved),
                "time_to_deliver_ms": quantiles(&mut g.to_deliver_ms),
                "time_to_approve_ms": quantiles(&mut g.to_approve_ms),
            })
        })
        .collect();
    let suspended: Vec<serde_json::Value> = state
        .otp
        .guard()
        .suspensions()
        .into_iter()
        .map(|(prefix, s)| json!({"prefix": prefix, "since": rfc3339(s.since_ms), "until": rfc3339(s.until_ms), "probing": to_ms(now) >= s.until_ms, "reason": s.reason}))
        .collect();
    let mode = format!("{:?}", state.otp.guard().mode()).to_lowercase();
    let body = json!({
        "group_by": group_by,
        "since": rfc3339(since_ms),
        "complete": complete,
        "groups": shown,
        "fraud": {"mode": mode, "suspended_prefixes": suspended},
    });
    Ok(axum::Json(body).into_response())
}
