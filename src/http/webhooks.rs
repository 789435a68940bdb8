//! Dead webhook events: listed and sent again. A client sees its own; an admin key everyone's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{AppState, read_json, scope};
use crate::store::record::rfc3339;

/// Dead events listed per call, at most.
const MAX_LISTED: usize = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    webhook: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/webhooks/dead?webhook=NAME&limit=N`: events given up on, oldest record first.
pub(super) async fn list_dead(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let owner = scope(&state, &headers)?;
    let query: DeadQuery = read_query(query.as_deref().unwrap_or_default())?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_LISTED).contains(&limit) {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1-{MAX_LISTED}")));
    }
    let dead = state
        .store
        .dead_events(owner.as_deref(), query.webhook.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?;
    let events: Vec<serde_json::Value> = dead
        .into_iter()
        .map(|d| {
            json!({
                "id": d.row.id,
                "webhook": d.webhook,
                "type": d.row.kind,
                "created_at": rfc3339(d.row.created_ms),
                "dead_at": d.row.dead_ms.map(rfc3339),
                "attempts": d.row.attempts,
                "last_error": d.row.last_error,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "events": events })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resend {
    webhook: Option<String>,
    ids: Option<Vec<String>>,
}

/// `POST /v1/webhooks/dead/resend` `{"webhook": "...", "ids": [...]}` (both optional): dead
/// events go back to their endpoint's queue, attempts started over.
pub(super) async fn resend_dead(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let owner = scope(&state, &headers)?;
    let (resend, _): (Resend, _) = read_json(&state, &headers, body).await?;
    let resent = state
        .store
        .resend_dead_events(owner.as_deref(), resend.webhook.as_deref(), resend.ids.as_deref())
        .await
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?;
    Ok(axum::Json(json!({ "resent": resent })).into_response())
}

/// A query string read into `T`, with our error shape.
pub(super) fn read_query<T: for<'de> Deserialize<'de>>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}").parse().map_err(|_| ApiError::bad_request("invalid_query", "the query string is not valid"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}
