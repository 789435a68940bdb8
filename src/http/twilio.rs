//! Twilio Verify v2, spoken by otpgate: an application on Twilio's official SDK moves here by
//! changing its base URL. Basic auth with an account SID and auth token (configured per API key,
//! the token as a hash), form-encoded parameters, Twilio's JSON shapes, SIDs and error codes.
//! A verification's SID is `VE` and its otpgate id; each SMS sent for it is an attempt `VL` and
//! its message id. Behaviour is otpgate's: a resend sends a new code, SMS is the only channel
//! (the README's migration guide has the differences).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::json;

use super::error::ApiError;
use super::settings::{TwilioAccount, is_sid};
use super::{AppState, check_accepting, completed, content_type_is, read_body, secret_matches};
use crate::otp::{CheckOutcome, CreateRequest, OtpError};
use crate::store::VerificationId;
use crate::store::record::from_ms;
use crate::store::verification::{VerificationRecord, VerificationStatus};
use crate::store::view::shown_status;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/Services/{service}/Verifications", post(create))
        .route("/v2/Services/{service}/Verifications/{sid}", get(fetch).post(update))
        .route("/v2/Services/{service}/VerificationCheck", post(check))
}

/// Twilio's error body: `{"code", "message", "more_info", "status"}`.
#[derive(Debug)]
pub(super) struct TwilioError {
    status: StatusCode,
    code: u32,
    message: String,
    retry_after: Option<Duration>,
}

impl TwilioError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> TwilioError {
        TwilioError { status, code, message: message.into(), retry_after: None }
    }

    fn invalid(message: impl Into<String>) -> TwilioError {
        TwilioError::new(StatusCode::BAD_REQUEST, 60200, message)
    }

    fn not_found(path: &str) -> TwilioError {
        TwilioError::new(StatusCode::NOT_FOUND, 20404, format!("The requested resource {path} was not found"))
    }

    fn too_many(code: u32, message: impl Into<String>, wait: Duration) -> TwilioError {
        TwilioError { retry_after: Some(wait), ..TwilioError::new(StatusCode::TOO_MANY_REQUESTS, code, message) }
    }
}

impl IntoResponse for TwilioError {
    fn into_response(self) -> Response {
        let body = json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"otpgate\""));
        }
        response
    }
}

/// Our own refusals (shutting down, body too large or slow) in Twilio's shape.
impl From<ApiError> for TwilioError {
    fn from(e: ApiError) -> TwilioError {
        let code = match e.status {
            StatusCode::UNAUTHORIZED => 20003,
            StatusCode::NOT_FOUND => 20404,
            StatusCode::TOO_MANY_REQUESTS => 20429,
            s if s.is_server_error() => 20503,
            _ => 60200,
        };
        TwilioError { retry_after: e.retry_after, ..TwilioError::new(e.status, code, e.message) }
    }
}

/// The verification service's refusals as Twilio words them.
fn refusal(e: OtpError, path: &str) -> TwilioError {
    let message = e.to_string();
    match e {
        OtpError::InvalidTo
        | OtpError::InvalidCodeLength
        | OtpError::InvalidLocale(..)
        | OtpError::InvalidContext
        | OtpError::InvalidCode
        | OtpError::InvalidBrand
        | OtpError::InvalidAppHash
        | OtpError::TextTooLong(_) => TwilioError::invalid(format!("Invalid parameter: {message}")),
        OtpError::DestinationBlocked => TwilioError::new(StatusCode::FORBIDDEN, 60605, message),
        OtpError::SuspectedFraud(_) => TwilioError::new(StatusCode::FORBIDDEN, 60410, message),
        OtpError::NoRoute => TwilioError::new(StatusCode::SERVICE_UNAVAILABLE, 20503, message),
        OtpError::RegistrationRequired(_) => TwilioError::new(StatusCode::UNPROCESSABLE_ENTITY, 60200, message),
        OtpError::RateLimited("for this number", wait) => TwilioError::too_many(60212, message, wait),
        OtpError::RateLimited(_, wait) | OtpError::Cooldown(wait) => TwilioError::too_many(20429, message, wait),
        OtpError::SendLimit(wait) => TwilioError::too_many(60203, "Max send attempts reached", wait),
        OtpError::FailedCheckLimit(wait) => TwilioError::too_many(60202, "Max check attempts reached", wait),
        OtpError::NotPending(VerificationStatus::MaxAttemptsReached) => {
            TwilioError::too_many(60202, "Max check attempts reached", Duration::from_secs(600))
        }
        // Twilio forgets a verification once it is approved, canceled or expired.
        OtpError::NotFound | OtpError::NotPending(_) => TwilioError::not_found(path),
        OtpError::Store(_) | OtpError::Random(_) => {
            let ApiError { message, .. } = ApiError::from(e);
            TwilioError::new(StatusCode::SERVICE_UNAVAILABLE, 20503, message)
        }
    }
}

/// The client whose Twilio credentials came as Basic auth, if it may use `service`.
fn account(state: &AppState, headers: &HeaderMap, service: &str, path: &str) -> Result<(String, TwilioAccount), TwilioError> {
    let unauthorized =
        || TwilioError::new(StatusCode::UNAUTHORIZED, 20003, "Authenticate: send the account SID and auth token as Basic auth");
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(unauthorized)?;
    let (user, token) = basic.split_once(':').ok_or_else(unauthorized)?;
    let found = state.client(|c| {
        let twilio = c.twilio.as_ref()?;
        let matches = twilio.account_sid.eq_ignore_ascii_case(user) & secret_matches(token, &twilio.auth_token_sha256);
        matches.then(|| (c.name.clone(), twilio.clone()))
    });
    let (owner, twilio) = found.ok_or_else(unauthorized)?;
    if !twilio.service_sid.eq_ignore_ascii_case(service) {
        return Err(TwilioError::not_found(path));
    }
    Ok((owner, twilio))
}

/// A request's form parameters (Twilio's SDKs send every call form-encoded).
struct Form(HashMap<String, String>);

impl Form {
    async fn read(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Form, TwilioError> {
        let bytes = read_body(state, body).await?;
        if !bytes.is_empty() && !content_type_is(headers, "application/x-www-form-urlencoded") {
            return Err(TwilioError::invalid("send the parameters as Content-Type: application/x-www-form-urlencoded"));
        }
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&bytes).map_err(|e| TwilioError::invalid(format!("the form cannot be read: {e}")))?;
        Ok(Form(pairs.into_iter().collect()))
    }

    fn take(&mut self, name: &str) -> Option<String> {
        self.0.remove(name)
    }

    /// Refuses what is left: parameters otpgate does not support (never silently dropped).
    fn done(self) -> Result<(), TwilioError> {
        let mut left: Vec<String> = self.0.into_keys().collect();
        if left.is_empty() {
            return Ok(());
        }
        left.sort();
        Err(TwilioError::invalid(format!("Invalid parameter: otpgate does not support {}", left.join(", "))))
    }
}

/// Parameters that only label a request on Twilio; they change nothing otpgate sends.
const IGNORED: &[&str] = &["Tags", "RiskCheck", "DeviceIp"];

/// Channels Twilio knows that otpgate does not send on.
const OTHER_CHANNELS: &[&str] = &["call", "email", "whatsapp", "sna", "auto", "rcs"];

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(from_ms(ms)).to_string()
}

/// A verification in Twilio's shape.
fn verification(
    state: &AppState,
    headers: &HeaderMap,
    account: &TwilioAccount,
    id: VerificationId,
    r: &VerificationRecord,
) -> serde_json::Value {
    let status = shown_status(r, state.otp.now());
    let attempts: Vec<serde_json::Value> =
        r.message_ids.iter().map(|m| json!({"attempt_sid": format!("VL{m}"), "channel": "sms", "time": time(m.made_ms())})).collect();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    json!({
        "sid": format!("VE{id}"),
        "service_sid": account.service_sid,
        "account_sid": account.account_sid,
        "to": r.to,
        "channel": "sms",
        "status": status.as_str(),
        "valid": status == VerificationStatus::Approved,
        "lookup": {"carrier": null},
        "amount": null,
        "payee": null,
        "send_code_attempts": attempts,
        "date_created": time(r.created_ms),
        "date_updated": time(r.done_ms.unwrap_or(r.last_send_ms)),
        "sna": null,
        "url": format!("http://{host}/v2/Services/{}/Verifications/VE{id}", account.service_sid),
    })
}

/// The otpgate id in a `VE` SID (`None`: not one).
fn verification_id(sid: &str) -> Option<String> {
    is_sid(sid, "VE").then(|| sid[2..].to_ascii_lowercase())
}

async fn create(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/v2/Services/{service}/Verifications");
    completed(&state, |state| async move { start(&state, peer, &service, &path, &headers, body).await }, unfinished).await
}

/// A state-changing call's start: accepting requests, its credentials and service, its form.
async fn admit(
    state: &AppState,
    service: &str,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, TwilioAccount, Form), TwilioError> {
    check_accepting(state)?;
    let (owner, account) = account(state, headers, service, path)?;
    let form = Form::read(state, headers, body).await?;
    Ok((owner, account, form))
}

/// A request task that could not finish, in Twilio's shape.
fn unfinished(e: ApiError) -> Response {
    TwilioError::from(e).into_response()
}

async fn start(
    state: &AppState,
    peer: SocketAddr,
    service: &str,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, TwilioError> {
    let (owner, account, mut form) = admit(state, service, path, headers, body).await?;
    let to = form.take("To").ok_or_else(|| TwilioError::invalid("Missing required parameter To"))?;
    match form.take("Channel").as_deref() {
        Some("sms") => {}
        Some(other) if OTHER_CHANNELS.contains(&other) => {
            return Err(TwilioError::new(
                StatusCode::BAD_REQUEST,
                60223,
                format!("Delivery channel disabled: {other} (otpgate sends SMS)"),
            ));
        }
        Some(other) => return Err(TwilioError::invalid(format!("Invalid parameter: Channel {other:?}"))),
        None => return Err(TwilioError::invalid("Missing required parameter Channel")),
    }
    if form.0.contains_key("CustomCode") {
        return Err(TwilioError::invalid("Invalid parameter: CustomCode is not enabled (otpgate makes every code itself)"));
    }
    let request = CreateRequest {
        to,
        locale: form.take("Locale"),
        code_length: None,
        context: None,
        brand: form.take("CustomFriendlyName"),
        app_hash: form.take("AppHash"),
    };
    for ignored in IGNORED {
        form.take(ignored);
    }
    form.done()?;
    let created = state.otp.create(&owner, peer.ip(), request, None).await.map_err(|e| refusal(e, path))?;
    let id = created.summary.id;
    let (_, record) = state.otp.record(&owner, &id.to_string()).await.map_err(|e| refusal(e, path))?;
    Ok((StatusCode::CREATED, axum::Json(verification(state, headers, &account, id, &record))).into_response())
}

async fn fetch(State(state): State<Arc<AppState>>, Path((service, sid)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let path = format!("/v2/Services/{service}/Verifications/{sid}");
    let answer = async {
        let (owner, account) = account(&state, &headers, &service, &path)?;
        let id = verification_id(&sid).ok_or_else(|| TwilioError::not_found(&path))?;
        let (id, record) = state.otp.record(&owner, &id).await.map_err(|e| refusal(e, &path))?;
        Ok::<_, TwilioError>(axum::Json(verification(&state, &headers, &account, id, &record)).into_response())
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn update(
    State(state): State<Arc<AppState>>,
    Path((service, sid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/v2/Services/{service}/Verifications/{sid}");
    completed(&state, |state| async move { set_status(&state, &service, &sid, &path, &headers, body).await }, unfinished).await
}

/// `Status=canceled|approved`.
async fn set_status(
    state: &AppState,
    service: &str,
    sid: &str,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, TwilioError> {
    let (owner, account, mut form) = admit(state, service, path, headers, body).await?;
    let status = form.take("Status").ok_or_else(|| TwilioError::invalid("Missing required parameter Status"))?;
    form.done()?;
    let id = verification_id(sid).ok_or_else(|| TwilioError::not_found(path))?;
    match status.as_str() {
        "canceled" => state.otp.cancel(&owner, &id).await,
        "approved" => state.otp.approve(&owner, &id).await,
        _ => return Err(TwilioError::invalid("Invalid parameter: Status is canceled or approved")),
    }
    .map_err(|e| refusal(e, path))?;
    let (id, record) = state.otp.record(&owner, &id).await.map_err(|e| refusal(e, path))?;
    Ok(axum::Json(verification(state, headers, &account, id, &record)).into_response())
}

async fn check(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(service): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = format!("/v2/Services/{service}/VerificationCheck");
    completed(&state, |state| async move { check_code(&state, peer, &service, &path, &headers, body).await }, unfinished).await
}

async fn check_code(
    state: &AppState,
    peer: SocketAddr,
    service: &str,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, TwilioError> {
    let (owner, account, mut form) = admit(state, service, path, headers, body).await?;
    let code = form.take("Code").ok_or_else(|| TwilioError::invalid("Missing required parameter Code"))?;
    let (to, sid) = (form.take("To"), form.take("VerificationSid"));
    for ignored in ["Amount", "Payee"] {
        // PSD2 values a check must repeat on Twilio; otpgate never took them at create.
        if form.take(ignored).is_some() {
            return Err(TwilioError::invalid(format!("Invalid parameter: otpgate does not support {ignored}")));
        }
    }
    form.done()?;
    let id = match (sid, to) {
        (Some(sid), _) => verification_id(&sid).ok_or_else(|| TwilioError::not_found(path))?,
        (None, Some(to)) => {
            let pending = state.store.pending_verification(&owner, &to).await.map_err(|e| refusal(OtpError::Store(e), path))?;
            pending.ok_or_else(|| TwilioError::not_found(path))?.to_string()
        }
        (None, None) => {
            return Err(TwilioError::new(StatusCode::BAD_REQUEST, 60221, "Either a 'To' number or 'VerificationSid' must be specified"));
        }
    };
    let (id, outcome) = state.otp.check(&owner, peer.ip(), &id, &code, None).await.map_err(|e| refusal(e, path))?;
    let (_, record) = state.otp.record(&owner, &id.to_string()).await.map_err(|e| refusal(e, path))?;
    let mut answer = verification(state, headers, &account, id, &record);
    if let Some(fields) = answer.as_object_mut() {
        for gone in ["lookup", "send_code_attempts", "url", "sna"] {
            fields.remove(gone);
        }
        fields.insert("sna_attempts_error_codes".into(), json!([]));
    }
    let status = if outcome == CheckOutcome::Approved { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(answer)).into_response())
}
