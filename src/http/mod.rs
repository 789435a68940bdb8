//! The HTTP intake (axum): messages in, their status out, health for load balancers.
//!
//! Bodies are read by hand (size limit, content type, JSON) so that every failure, including
//! the ones axum's extractors would answer in plain text, comes back in our JSON error shape.

pub mod client;
mod error;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

pub use error::ApiError;

use crate::config::{ApiKeyConfig, MessagesConfig};
use crate::dispatch::{Dispatch, Job};
use crate::smpp::Carrier;
use crate::smpp::address::Address;
use crate::smpp::message::encode_text;
use crate::store::record::rfc3339;
use crate::store::{Idempotency, MessageId, MessageRecord, NewMessage, Store};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Idempotency keys are hashed onto this many locks, so two requests with the same key never
/// both pass the "not seen yet" check.
const IDEMPOTENCY_LOCKS: usize = 64;

/// What the handlers share.
pub struct AppState {
    pub store: Arc<Store>,
    pub dispatch: Dispatch,
    pub carriers: Vec<Arc<Carrier>>,
    pub api_keys: Vec<(String, [u8; 32])>,
    pub messages: MessagesConfig,
    /// Cleared at shutdown: new requests get 503.
    pub accepting: AtomicBool,
    idempotency_locks: Vec<Mutex<()>>,
}

impl AppState {
    pub fn new(store: Arc<Store>, dispatch: Dispatch, carriers: Vec<Arc<Carrier>>, api_keys: &[ApiKeyConfig], messages: MessagesConfig) -> AppState {
        AppState {
            store,
            dispatch,
            carriers,
            api_keys: api_keys.iter().map(|k| (k.name.clone(), k.hash())).collect(),
            messages,
            accepting: AtomicBool::new(true),
            idempotency_locks: (0..IDEMPOTENCY_LOCKS).map(|_| Mutex::new(())).collect(),
        }
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/messages", post(create_message))
        .route("/v1/messages/{id}", get(get_message))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The API key's name, or 401. Keys are compared by hash, in constant time.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let mut found = None;
    for (name, expected) in &state.api_keys {
        if bool::from(hash.ct_eq(expected)) {
            found = Some(name.clone());
        }
    }
    found.ok_or_else(ApiError::unauthorized)
}

fn check_accepting(state: &AppState) -> Result<(), ApiError> {
    if state.accepting.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::unavailable("shutting_down", "otpgate is shutting down; retry on another instance"))
    }
}

/// Reads a JSON body: content type, size limit and syntax, each with its own error.
async fn read_json<T: for<'de> Deserialize<'de>>(headers: &HeaderMap, body: Body) -> Result<(T, Bytes), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body must be at most {MAX_BODY_BYTES} bytes"),
        )
    })?;
    let value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not valid JSON for this call: {e}")))?;
    Ok((value, bytes))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateMessage {
    to: String,
    text: String,
    from: Option<String>,
    validity: Option<String>,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters"))?;
    Ok(Some(key.to_string()))
}

fn accepted(id: &MessageId) -> Response {
    (StatusCode::ACCEPTED, axum::Json(json!({"id": id.to_string(), "status": "queued"}))).into_response()
}

async fn create_message(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let owner = authenticate(&state, &headers)?;
    let idempotency = idempotency_key(&headers)?;
    let (request, raw): (CreateMessage, Bytes) = read_json(&headers, body).await?;

    Address::destination(&request.to)
        .map_err(|_| ApiError::bad_request("invalid_to", "'to' must be an E.164 number: '+' and 8-15 digits"))?;
    if let Some(from) = &request.from {
        Address::source(from).map_err(|e| ApiError::bad_request("invalid_from", format!("'from': {e}")))?;
    }
    if request.text.is_empty() {
        return Err(ApiError::bad_request("invalid_text", "'text' must not be empty"));
    }
    encode_text(&request.text).map_err(|e| ApiError::unprocessable("text_too_long", format!("'text' must fit one SMS: {e}")))?;
    let validity = match &request.validity {
        None => state.messages.default_validity,
        Some(text) => humantime::parse_duration(text)
            .map_err(|_| ApiError::bad_request("invalid_validity", "'validity' is a duration like \"5m\" or \"1h\""))?,
    };
    if validity < Duration::from_secs(1) || validity > state.messages.max_validity {
        return Err(ApiError::unprocessable(
            "invalid_validity",
            format!("'validity' must be between 1s and {}", humantime::format_duration(state.messages.max_validity)),
        ));
    }

    let now = SystemTime::now();
    let body_hash = sha256_hex(&raw);
    let _guard = match &idempotency {
        Some(key) => {
            let slot = Sha256::digest(key.as_bytes())[0] as usize % IDEMPOTENCY_LOCKS;
            let guard = state.idempotency_locks[slot].lock().await;
            match state.store.check_idempotency(&owner, key, &body_hash, now).map_err(store_unavailable)? {
                Idempotency::New => {}
                Idempotency::Replay(id) => return Ok(accepted(&id)),
                Idempotency::Conflict => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_conflict",
                        "this Idempotency-Key was used with a different body",
                    ));
                }
            }
            Some(guard)
        }
        None => None,
    };
    let message = NewMessage {
        owner,
        to: request.to,
        from: request.from,
        text: request.text,
        deadline: now + validity,
    };
    let (id, record) = state
        .store
        .insert_message(message, idempotency.as_deref().map(|k| (k, body_hash.as_str())), now)
        .await
        .map_err(store_unavailable)?;
    metrics::counter!("otpgate_messages_total", "state" => "queued").increment(1);
    state.dispatch.enqueue(Job::from_record(id, &record));
    Ok(accepted(&id))
}

fn store_unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store write failed; answering 503");
    ApiError::unavailable("store_unavailable", "the message could not be stored durably; retry later")
}

fn message_json(id: &MessageId, r: &MessageRecord) -> serde_json::Value {
    json!({
        "id": id.to_string(),
        "to": r.to,
        "status": r.status.as_str(),
        "carrier": r.carrier,
        "smsc_message_id": r.smsc_message_id,
        "created_at": rfc3339(r.created_ms),
        "submitted_at": r.submitted_ms.map(rfc3339),
        "done_at": r.done_ms.map(rfc3339),
        "expires_at": rfc3339(r.deadline_ms),
        "receipt": r.receipt.as_ref().map(|rc| json!({"stat": rc.stat, "err": rc.err})),
        "error": r.error,
        "attempts": r.attempts.len(),
        "session": r.attempts.last().and_then(|a| a.session.clone()),
    })
}

async fn get_message(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let owner = authenticate(&state, &headers)?;
    let id: MessageId = id.parse().map_err(|_| ApiError::not_found("message"))?;
    let record = state
        .store
        .message(&id)
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?
        .filter(|r| r.owner == owner)
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(axum::Json(message_json(&id, &record)).into_response())
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let bound: Vec<&str> = state.carriers.iter().filter(|c| c.bound_sessions() > 0).map(|c| c.name()).collect();
    let accepting = state.accepting.load(Ordering::Acquire);
    let ready = accepting && !bound.is_empty();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(json!({"ready": ready, "carriers_bound": bound, "accepting": accepting}))).into_response()
}
