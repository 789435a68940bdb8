//! `GET /v1/messages` and `GET /v1/verifications`: a client's records, newest first, filtered by
//! status, number and creation time, a bounded page at a time. The cursor is the last id a page
//! read (ids sort by creation time), so records created meanwhile never shift a later page. An
//! admin key lists every client's records.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::webhooks::read_query;
use super::{AppState, scope};
use crate::smpp::address::Address;
use crate::store::listing::Window;
use crate::store::record::{MessageId, to_ms};
use crate::store::view::{Summary, shown_status};
use crate::store::{MessageStatus, StoreError};

/// Records per page: the default and the most a client may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Records read per answer at most (filters may skip most of them): a page can come back short,
/// with a cursor to go on from.
const MAX_READ: usize = 10_000;
/// Records read from the store per round.
const READ_PAGE: usize = 256;

const MESSAGE_STATUSES: &[&str] = &["queued", "submitted", "delivered", "undeliverable", "expired", "rejected", "failed"];
const VERIFICATION_STATUSES: &[&str] = &["pending", "approved", "expired", "canceled", "max_attempts_reached"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    to: Option<String>,
    /// RFC 3339, or a duration back from now ("24h"): created at or after.
    since: Option<String>,
    /// The same forms: created before.
    until: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// A time given as RFC 3339 or as a duration back from `now` ("24h").
pub(super) fn parse_time(field: &'static str, text: &str, now: SystemTime) -> Result<SystemTime, ApiError> {
    humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_duration(text).map(|back| now.checked_sub(back).unwrap_or(SystemTime::UNIX_EPOCH)))
        .map_err(|_| ApiError::bad_request(field, format!("{} is an RFC 3339 time or a duration back from now (\"24h\")", &field[8..])))
}

/// A listing's filters, checked.
struct Filter {
    owner: Option<String>,
    status: Option<String>,
    to: Option<String>,
    window: Window,
    limit: usize,
}

impl Filter {
    fn read(state: &AppState, headers: &HeaderMap, query: Option<String>, statuses: &[&str]) -> Result<Filter, ApiError> {
        let owner = scope(state, headers)?;
        let query: ListQuery = read_query(query.as_deref().unwrap_or_default())?;
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1-{MAX_LIMIT}")));
        }
        if let Some(status) = query.status.as_deref().filter(|s| !statuses.contains(s)) {
            return Err(ApiError::bad_request("invalid_status", format!("status {status:?} is not one of {}", statuses.join(", "))));
        }
        // An unencoded '+' in a query string arrives as a space.
        let to = query.to.map(|to| format!("+{}", to.trim().trim_start_matches('+')));
        if let Some(to) = &to {
            Address::destination(to)
                .map_err(|_| ApiError::bad_request("invalid_to", "'to' must be an E.164 number: '+' and 8-15 digits"))?;
        }
        let now = SystemTime::now();
        let since = query.since.as_deref().map(|t| parse_time("invalid_since", t, now)).transpose()?.unwrap_or(SystemTime::UNIX_EPOCH);
        let until = query.until.as_deref().map(|t| parse_time("invalid_until", t, now)).transpose()?;
        let mut before = until.map_or(MessageId([u8::MAX; 16]), |t| MessageId::first_at(to_ms(t)));
        if let Some(cursor) = &query.cursor {
            let after: MessageId =
                cursor.parse().map_err(|()| ApiError::bad_request("invalid_cursor", "cursor is the next_cursor of a previous page"))?;
            before = before.min(after);
        }
        Ok(Filter { owner, status: query.status, to, window: Window { since_ms: to_ms(since), before }, limit })
    }

    fn keeps(&self, owner: &str, to: &str, status: &str) -> bool {
        self.owner.as_deref().is_none_or(|o| o == owner)
            && self.to.as_deref().is_none_or(|t| t == to)
            && self.status.as_deref().is_none_or(|s| s == status)
    }

    /// Reads records back from the window until the page is full, the window ends or
    /// [`MAX_READ`] records were read; `read` fetches a round, `pick` turns a record into its
    /// view when the filter keeps it.
    async fn page<R, F, Fut>(
        &self,
        mut read: F,
        mut pick: impl FnMut(&R) -> Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ApiError>
    where
        F: FnMut(Window) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<(MessageId, R)>, StoreError>>,
    {
        let mut window = self.window;
        let (mut data, mut read_count) = (Vec::new(), 0);
        let next_cursor = 'read: loop {
            let rows = read(window).await.map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?;
            let exhausted = rows.len() < READ_PAGE;
            for (id, record) in rows {
                if let Some(view) = pick(&record) {
                    if data.len() == self.limit {
                        // A match past the page: the next page starts after the last one shown.
                        break 'read Some(window.before);
                    }
                    data.push(view);
                }
                read_count += 1;
                window.before = id;
            }
            if exhausted {
                break None;
            }
            if read_count >= MAX_READ {
                // Filters skipped most of what was read: go on from there next time.
                break Some(window.before);
            }
        };
        Ok(json!({"data": data, "has_more": next_cursor.is_some(), "next_cursor": next_cursor.map(|id| id.to_string())}))
    }
}

pub(super) async fn messages(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::read(&state, &headers, query, MESSAGE_STATUSES)?;
    let store = &state.store;
    let page = filter
        .page(
            |window| async move {
                store.messages_back(window, READ_PAGE).await.map(|rows| rows.into_iter().map(|(id, r)| (id, (id, r))).collect())
            },
            |(id, record)| {
                let status: MessageStatus = record.status;
                filter.keeps(&record.owner, &record.to, status.as_str()).then(|| json!(crate::store::view::message(id, record)))
            },
        )
        .await?;
    Ok(axum::Json(page).into_response())
}

pub(super) async fn verifications(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = Filter::read(&state, &headers, query, VERIFICATION_STATUSES)?;
    let store = &state.store;
    let now = state.otp.now();
    let page = filter
        .page(
            |window| async move {
                store.verifications_back(window, READ_PAGE).await.map(|rows| rows.into_iter().map(|(id, r)| (id.0, (id, r))).collect())
            },
            |(id, record)| {
                let status = shown_status(record, now);
                filter.keeps(&record.owner, &record.to, status.as_str()).then(|| {
                    let mut view = json!(Summary::of(*id, record, now));
                    view["message_id"] = json!(record.message_ids.last());
                    view
                })
            },
        )
        .await?;
    Ok(axum::Json(page).into_response())
}
