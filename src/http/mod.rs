//! The HTTP intake (axum): messages in, their status out, health for load balancers.
//!
//! Bodies are read by hand (size limit, content type, JSON) so that every failure, including
//! the ones axum's extractors would answer in plain text, comes back in our JSON error shape.

mod analytics;
pub mod client;
mod error;
mod kannel;
mod listing;
mod openapi;
pub(crate) mod serve;
pub(crate) mod settings;
mod twilio;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, MutexGuard};

pub use error::ApiError;

use crate::dispatch::{Dispatch, Job};
use crate::otp::{CheckOutcome, CreateRequest, Otp, OtpError};
use crate::route::Network;
use crate::smpp::address::Address;
use crate::smpp::tlv::Registration;
use crate::sms::{Encoding, Header, Text};
use crate::store::record::SendOptions;
use crate::store::{Idempotency, MessageId, NewMessage, Store};
use settings::{ApiKeyConfig, KannelUser, MessagesConfig, TwilioAccount};

/// Largest request body accepted.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;

/// Idempotency keys are hashed onto this many locks, so two requests with the same key never
/// both pass the "not seen yet" check.
const IDEMPOTENCY_LOCKS: usize = 64;

/// What the handlers share.
pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub network: Arc<Network>,
    pub otp: Arc<Otp>,
    pub dispatch: Dispatch,
    /// A single node until the daemon says it is a cluster node.
    pub role: Role,
    /// The configured clients; replaced on reload.
    clients: std::sync::RwLock<Vec<Client>>,
    pub messages: MessagesConfig,
    /// A request body must arrive within this once its head has (`server.http_body_timeout`).
    pub body_timeout: Duration,
    /// Cleared at shutdown: new requests get 503.
    pub accepting: AtomicBool,
    /// Requests that change state, run to their end whatever the client does (see
    /// `to_completion`); shutdown waits for them.
    pub requests: tokio_util::task::TaskTracker,
    idempotency_locks: Vec<Mutex<()>>,
}

impl AppState {
    pub fn new(
        store: Arc<Store>,
        network: Arc<Network>,
        otp: Arc<Otp>,
        dispatch: Dispatch,
        api_keys: &[ApiKeyConfig],
        messages: MessagesConfig,
        body_timeout: Duration,
    ) -> AppState {
        AppState {
            store,
            network,
            otp,
            dispatch,
            role: Role::new(false),
            clients: std::sync::RwLock::new(api_keys.iter().map(Client::of).collect()),
            messages,
            body_timeout,
            accepting: AtomicBool::new(true),
            requests: tokio_util::task::TaskTracker::new(),
            idempotency_locks: (0..IDEMPOTENCY_LOCKS).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// This node's part in dispatching, for readiness.
#[derive(Clone)]
pub(crate) struct Role {
    /// A cluster node: ready to take requests without carriers of its own.
    clustered: bool,
    /// Whether this node dispatches now.
    leading: Arc<AtomicBool>,
}

impl Role {
    pub(crate) fn new(clustered: bool) -> Role {
        Role { clustered, leading: Arc::default() }
    }

    pub(crate) fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Release);
    }

    fn name(&self) -> &'static str {
        match (self.clustered, self.leading.load(Ordering::Acquire)) {
            (false, _) => "single",
            (true, true) => "leader",
            (true, false) => "follower",
        }
    }
}

/// A configured client: its API key's hash and the other credentials that act as it.
struct Client {
    name: String,
    key_hash: [u8; 32],
    admin: bool,
    twilio: Option<TwilioAccount>,
    kannel: Option<KannelUser>,
}

impl Client {
    fn of(key: &ApiKeyConfig) -> Client {
        Client { name: key.name.clone(), key_hash: key.hash(), admin: key.admin, twilio: key.twilio.clone(), kannel: key.kannel.clone() }
    }
}

impl AppState {
    /// Swaps in reloaded API keys.
    pub fn set_api_keys(&self, keys: &[ApiKeyConfig]) {
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = keys.iter().map(Client::of).collect();
    }

    /// The first client `matches` picks, read under the lock.
    fn client<T>(&self, mut matches: impl FnMut(&Client) -> Option<T>) -> Option<T> {
        let clients = self.clients.read().unwrap_or_else(|p| p.into_inner());
        // Every client is looked at, so the time taken does not tell which one matched.
        clients.iter().fold(None, |found, client| matches(client).or(found))
    }
}

/// Whether `secret` hashes to `expected` (hex SHA-256), compared in constant time.
fn secret_matches(secret: &str, expected_hex: &str) -> bool {
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    bool::from(hash.ct_eq(&crate::hex::decode32(expected_hex)))
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/messages", post(create_message).get(listing::messages))
        .route("/v1/messages/{id}", get(get_message))
        .route("/v1/verifications", post(create_verification).get(listing::verifications))
        .route("/v1/verifications/{id}", get(get_verification).delete(cancel_verification))
        .route("/v1/verifications/{id}/check", post(check_verification))
        .route("/v1/webhooks/dead", get(webhooks::list_dead))
        .route("/v1/analytics/verifications", get(analytics::verifications))
        .route("/v1/webhooks/dead/resend", post(webhooks::resend_dead))
        .merge(twilio::routes())
        .merge(kannel::routes())
        .route("/openapi.json", get(openapi::serve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::not_found("route") })
        .layer(axum::middleware::from_fn(crate::telemetry::track_http))
        .with_state(state)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

/// The API key's name, or 401. Keys are compared by hash, in constant time.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    authenticate_key(state, headers).map(|(name, _)| name)
}

/// Whose records a caller may list: its own (`Some(name)`), or everyone's for an admin key.
fn scope(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    authenticate_key(state, headers).map(|(name, admin)| (!admin).then_some(name))
}

/// The API key's name and whether it is an admin key, or 401.
fn authenticate_key(state: &AppState, headers: &HeaderMap) -> Result<(String, bool), ApiError> {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    state.client(|c| bool::from(hash.ct_eq(&c.key_hash)).then(|| (c.name.clone(), c.admin))).ok_or_else(ApiError::unauthorized)
}

/// Runs a request that changes state to its end even if the client hangs up. hyper drops a
/// handler's future when its connection closes; a message committed to the store but dropped
/// before its hand-off to the dispatcher once stayed queued until the next restart (20 of 20 in
/// a test of client timeouts). The work runs as its own task; the handler only waits for it.
async fn to_completion<F>(state: &AppState, work: F) -> Result<Response, ApiError>
where
    F: std::future::Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    state.requests.spawn(work).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "request task failed");
        Err(ApiError::unavailable("unavailable", "the request could not be completed; retry"))
    })
}

/// [`to_completion`] for a handler with an error shape of its own (Twilio's, Kannel's): `work`
/// answers either way; a task that could not finish answers as `failed` says.
async fn completed<E, Fut>(state: &Arc<AppState>, work: impl FnOnce(Arc<AppState>) -> Fut, failed: fn(ApiError) -> Response) -> Response
where
    E: IntoResponse,
    Fut: std::future::Future<Output = Result<Response, E>> + Send + 'static,
{
    let task = work(state.clone());
    to_completion(state, async move { Ok(task.await.unwrap_or_else(IntoResponse::into_response)) }).await.unwrap_or_else(failed)
}

fn check_accepting(state: &AppState) -> Result<(), ApiError> {
    if state.accepting.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(ApiError::unavailable("shutting_down", "otpgate is shutting down; retry on another instance"))
    }
}

/// Whether the request says its body is `mime`.
fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(mime))
}

/// Reads a body within [`MAX_BODY_BYTES`] and the body timeout.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(state.body_timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {}", humantime::format_duration(state.body_timeout)),
        )
    })?;
    read.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("the body must be at most {MAX_BODY_BYTES} bytes"))
    })
}

/// Reads a JSON body: content type, size limit and syntax, each with its own error.
async fn read_json<T: for<'de> Deserialize<'de>>(state: &AppState, headers: &HeaderMap, body: Body) -> Result<(T, Bytes), ApiError> {
    if !content_type_is(headers, "application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let bytes = read_body(state, body).await?;
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
    /// `gsm7` or `ucs2`; the cheapest that carries the text when absent.
    encoding: Option<Encoding>,
    /// Registration ids for carriers whose vendor TLVs carry them (India's DLT).
    template_id: Option<String>,
    entity_id: Option<String>,
}

/// What the Idempotency-Key header says to do.
enum Idempotent<'a> {
    /// Seen before with this body: answer as then.
    Replay(MessageId, Option<String>),
    /// Go ahead; remember (scoped key, body hash) with the result. The guard keeps a
    /// concurrent request with the same key waiting until this one is stored.
    Proceed(Option<(String, String)>, Option<MutexGuard<'a, ()>>),
}

/// Looks the request's Idempotency-Key up within `scope` (one per endpoint).
async fn idempotent<'a>(
    state: &'a AppState,
    owner: &str,
    scope: &str,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Idempotent<'a>, ApiError> {
    let Some(key) = idempotency_key(headers)? else {
        return Ok(Idempotent::Proceed(None, None));
    };
    let scoped = format!("{scope}:{key}");
    let body_hash = sha256_hex(body);
    let slot = Sha256::digest(scoped.as_bytes())[0] as usize % IDEMPOTENCY_LOCKS;
    let guard = state.idempotency_locks[slot].lock().await;
    match state.store.check_idempotency(owner, &scoped, &body_hash, now).await.map_err(store_unavailable)? {
        Idempotency::New => Ok(Idempotent::Proceed(Some((scoped, body_hash)), Some(guard))),
        Idempotency::Replay(id, answer) => Ok(Idempotent::Replay(id, answer)),
        Idempotency::Conflict => {
            Err(ApiError::new(StatusCode::CONFLICT, "idempotency_conflict", "this Idempotency-Key was used with a different body"))
        }
    }
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

fn accepted(id: &MessageId, text: &Text) -> Response {
    let body = json!({"id": id.to_string(), "status": "queued", "segments": text.segments(Header::Reference8), "encoding": text.encoding().name()});
    (StatusCode::ACCEPTED, axum::Json(body)).into_response()
}

async fn create_message(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    to_completion(&state.clone(), take_message(state, headers, body)).await
}

async fn take_message(state: Arc<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let owner = authenticate(&state, &headers)?;
    let (request, raw): (CreateMessage, Bytes) = read_json(&state, &headers, body).await?;

    Address::destination(&request.to)
        .map_err(|_| ApiError::bad_request("invalid_to", "'to' must be an E.164 number: '+' and 8-15 digits"))?;
    if let Some(from) = &request.from {
        Address::source(from).map_err(|e| ApiError::bad_request("invalid_from", format!("'from': {e}")))?;
    }
    for (field, id) in [("template_id", &request.template_id), ("entity_id", &request.entity_id)] {
        if id.as_deref().is_some_and(|id| !crate::smpp::tlv::valid_id(id)) {
            return Err(ApiError::bad_request("invalid_registration", format!("'{field}' must be 1-64 visible ASCII characters")));
        }
    }
    let registration = Registration { template_id: request.template_id.clone(), entity_id: request.entity_id.clone() };
    routable(&state, &request.to, request.from.as_deref(), &registration)?;
    if request.text.is_empty() {
        return Err(ApiError::bad_request("invalid_text", "'text' must not be empty"));
    }
    let text =
        Text::encode(&request.text, request.encoding).map_err(|e| ApiError::bad_request("invalid_encoding", format!("'text': {e}")))?;
    // Counted as a carrier joining parts with an 8-bit reference (the default) would cut it.
    let segments = text.segments(Header::Reference8);
    if segments > state.messages.max_segments {
        return Err(ApiError::unprocessable(
            "text_too_long",
            format!(
                "'text' takes {segments} SMS as {}; messages.max_segments allows {}",
                text.encoding().name(),
                state.messages.max_segments
            ),
        ));
    }
    let validity = match &request.validity {
        None => state.messages.default_validity,
        Some(text) => humantime::parse_duration(text)
            .map_err(|_| ApiError::bad_request("invalid_validity", "'validity' is a duration like \"5m\" or \"1h\""))?,
    };
    let (min, max) = (state.messages.min_validity, state.messages.max_validity);
    if validity < min || validity > max {
        return Err(ApiError::unprocessable(
            "invalid_validity",
            format!("'validity' must be between {} and {}", humantime::format_duration(min), humantime::format_duration(max)),
        ));
    }

    let now = SystemTime::now();
    let (idempotency, _guard) = match idempotent(&state, &owner, "messages", &headers, &raw, now).await? {
        // The same body: the same text, counted the same.
        Idempotent::Replay(id, _) => return Ok(accepted(&id, &text)),
        Idempotent::Proceed(key, guard) => (key, guard),
    };
    let message = NewMessage {
        owner,
        to: request.to,
        from: request.from,
        text: request.text,
        deadline: now + validity,
        encoding: Some(text.encoding()),
        segments: segments as u16,
        options: SendOptions { template_id: registration.template_id, entity_id: registration.entity_id, ..SendOptions::default() },
    };
    let (id, record) = state
        .store
        .insert_message(message, idempotency.as_ref().map(|(k, h)| (k.as_str(), h.as_str())), now)
        .await
        .map_err(store_unavailable)?;
    state.dispatch.admit(Job::from_record(id, &record)).await;
    Ok(accepted(&id, &text))
}

/// Whether a message to `to` may go: a route serves it, it allows the sender asked for, and every
/// carrier of it gets the registration ids its vendor TLVs need.
fn routable(state: &AppState, to: &str, from: Option<&str>, registration: &Registration) -> Result<(), ApiError> {
    let fabric = state.network.current();
    let route = fabric.routes.route(to).ok_or_else(|| ApiError::unavailable("no_route", "no carrier route serves this destination"))?;
    if let Some(from) = from {
        route.allows(from).map_err(|allowed| {
            ApiError::unprocessable(
                "from_not_allowed",
                format!("'from' {from:?} is not allowed for this destination; allowed: {}", allowed.join(", ")),
            )
        })?;
    }
    if let Some(missing) = route.needs().into_iter().find(|field| !registration.has(*field)) {
        return Err(ApiError::unprocessable(
            "registration_required",
            format!("a carrier of this destination's route needs '{}' (its vendor TLVs carry it)", missing.name()),
        ));
    }
    Ok(())
}

fn store_unavailable(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store write failed; answering 503");
    ApiError::unavailable("store_unavailable", "the message could not be stored durably; retry later")
}

async fn get_message(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let owner = authenticate(&state, &headers)?;
    let id: MessageId = id.parse().map_err(|_| ApiError::not_found("message"))?;
    let record = state
        .store
        .message(&id)
        .await
        .map_err(|e| ApiError::unavailable("store_unavailable", e.to_string()))?
        .filter(|r| r.owner == owner)
        .ok_or_else(|| ApiError::not_found("message"))?;
    Ok(axum::Json(crate::store::view::message(&id, &record)).into_response())
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let fabric = state.network.current();
    let bound: Vec<&str> = fabric.carriers.iter().filter(|c| c.bound_sessions() > 0).map(|c| c.name()).collect();
    // Why each carrier without a bound session last failed to bind (a TLS reason, a refusal...).
    let down: serde_json::Map<String, serde_json::Value> = fabric
        .carriers
        .iter()
        .filter(|c| c.bound_sessions() == 0)
        .filter_map(|c| Some((c.name().to_string(), c.last_bind_error()?.into())))
        .collect();
    let accepting = state.accepting.load(Ordering::Acquire);
    let store_ok = state.store.healthy() && state.store.reachable().await;
    let role = state.role.name();
    // A follower takes requests for the leader to send: it needs the database, not carriers.
    let ready = accepting && store_ok && (role == "follower" || !bound.is_empty());
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({"ready": ready, "role": role, "carriers_bound": bound, "carriers_down": down, "accepting": accepting, "store_writable": store_ok});
    (status, axum::Json(body)).into_response()
}

impl From<OtpError> for ApiError {
    fn from(e: OtpError) -> ApiError {
        let message = e.to_string();
        match e {
            OtpError::InvalidTo => ApiError::bad_request("invalid_to", message),
            OtpError::InvalidCodeLength => ApiError::bad_request("invalid_code_length", message),
            OtpError::InvalidLocale(..) => ApiError::bad_request("invalid_locale", message),
            OtpError::InvalidContext => ApiError::bad_request("invalid_context", message),
            OtpError::InvalidCode => ApiError::bad_request("invalid_code", message),
            OtpError::InvalidBrand => ApiError::bad_request("invalid_brand", message),
            OtpError::InvalidAppHash => ApiError::bad_request("invalid_app_hash", message),
            OtpError::TextTooLong(_) => ApiError::unprocessable("text_too_long", message),
            OtpError::DestinationBlocked => ApiError::new(StatusCode::FORBIDDEN, "destination_blocked", message),
            OtpError::NoRoute => ApiError::unavailable("no_route", message),
            OtpError::RegistrationRequired(_) => ApiError::unprocessable("registration_required", message),
            OtpError::RateLimited(_, wait) => ApiError::too_many("rate_limited", message, wait),
            OtpError::Cooldown(wait) => ApiError::too_many("resend_cooldown", message, wait),
            OtpError::SuspectedFraud(wait) => ApiError::too_many("suspected_fraud", message, wait),
            OtpError::SendLimit(wait) => ApiError::too_many("send_limit", message, wait),
            OtpError::FailedCheckLimit(wait) => ApiError::too_many("failed_check_limit", message, wait),
            OtpError::NotFound => ApiError::not_found("verification"),
            OtpError::NotPending(status) => ApiError {
                verification_status: Some(status.as_str()),
                ..ApiError::new(StatusCode::CONFLICT, "verification_not_pending", message)
            },
            OtpError::Store(e) => store_unavailable(e),
            OtpError::Random(e) => {
                tracing::error!(error = %e, "no randomness for a code");
                ApiError::unavailable("unavailable", "cannot generate a code right now")
            }
        }
    }
}

async fn create_verification(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    to_completion(&state.clone(), start_verification(state, peer, headers, body)).await
}

async fn start_verification(state: Arc<AppState>, peer: SocketAddr, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let owner = authenticate(&state, &headers)?;
    let (request, raw): (CreateRequest, Bytes) = read_json(&state, &headers, body).await?;
    let (idempotency, _guard) = match idempotent(&state, &owner, "verifications", &headers, &raw, SystemTime::now()).await? {
        Idempotent::Replay(_, Some(answer)) => {
            let body: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
        }
        Idempotent::Replay(id, None) => return Err(ApiError::not_found(&format!("answer for {id}"))),
        Idempotent::Proceed(key, guard) => (key, guard),
    };
    let created = state.otp.create(&owner, peer.ip(), request, idempotency).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    code: String,
    context: Option<String>,
}

async fn check_verification(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    to_completion(&state.clone(), check_code(state, peer, headers, id, body)).await
}

async fn check_code(state: Arc<AppState>, peer: SocketAddr, headers: HeaderMap, id: String, body: Body) -> Result<Response, ApiError> {
    check_accepting(&state)?;
    let owner = authenticate(&state, &headers)?;
    let (request, _): (CheckRequest, Bytes) = read_json(&state, &headers, body).await?;
    let (id, outcome) = state.otp.check(&owner, peer.ip(), &id, &request.code, request.context.as_deref()).await?;
    let body = match outcome {
        CheckOutcome::Approved => json!({"id": id.to_string(), "status": "approved"}),
        CheckOutcome::Wrong { checks_left } => json!({"id": id.to_string(), "status": "pending", "checks_left": checks_left}),
        CheckOutcome::MaxAttemptsReached => json!({"id": id.to_string(), "status": "max_attempts_reached", "checks_left": 0}),
    };
    Ok(axum::Json(body).into_response())
}

async fn get_verification(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let owner = authenticate(&state, &headers)?;
    Ok(axum::Json(state.otp.get(&owner, &id).await?).into_response())
}

async fn cancel_verification(State(state): State<Arc<AppState>>, headers: HeaderMap, Path(id): Path<String>) -> Result<Response, ApiError> {
    let work = {
        let state = state.clone();
        async move {
            check_accepting(&state)?;
            let owner = authenticate(&state, &headers)?;
            Ok(axum::Json(state.otp.cancel(&owner, &id).await?).into_response())
        }
    };
    to_completion(&state, work).await
}
