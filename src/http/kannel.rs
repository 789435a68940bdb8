//! Kannel's `/cgi-bin/sendsms`, spoken by otpgate: an application written for Kannel's smsbox
//! sends through otpgate unchanged. GET or POST with CGI parameters, or POST with the text as
//! the body and the parameters as `X-Kannel-*` headers; `username`/`password` map to an API key
//! by its `kannel` block; Kannel's answers in Kannel's words. A `dlr-url` is fetched for each
//! state its `dlr-mask` asks for, from the durable outbox (`store::events`, `dlr_url`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{AppState, completed, content_type_is, read_body, secret_matches};
use crate::dispatch::Job;
use crate::smpp::address::Address;
use crate::sms::{Encoding, Header, Text};
use crate::store::NewMessage;
use crate::store::record::{DlrRequest, SendOptions};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/cgi-bin/sendsms", get(sendsms).post(sendsms))
}

/// Receivers one request may name, at most.
const MAX_RECEIVERS: usize = 100;

/// Parameters that change what Kannel would send, which otpgate does not do: refused, never
/// silently dropped. (`account`, `binfo`, `priority` and `meta-data` only label a message there:
/// they are accepted and ignored.)
const UNSUPPORTED: &[&str] = &["udh", "mclass", "mwi", "pid", "rpi", "alt-dcs", "compress", "deferred"];

/// Kannel's answer: a status and one line of text.
struct Answer(StatusCode, String);

impl Answer {
    fn bad(text: impl Into<String>) -> Answer {
        Answer(StatusCode::BAD_REQUEST, text.into())
    }

    fn temporal() -> Answer {
        Answer(StatusCode::SERVICE_UNAVAILABLE, "Temporal failure, try again later.".into())
    }

    fn not_routable() -> Answer {
        Answer(StatusCode::FORBIDDEN, "Not routable. Do not try again.".into())
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.0, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.1).into_response()
    }
}

/// CGI parameters as Kannel reads them: names, and values as bytes (the text's charset is a
/// parameter of its own). The first of a name wins.
#[derive(Default)]
struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    /// Adds `name=value&...` pairs, percent-decoded, `+` as a space.
    fn add_query(&mut self, query: &[u8]) {
        for pair in query.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            self.0.push((String::from_utf8_lossy(&percent_decode(name)).into_owned(), percent_decode(value)));
        }
    }

    /// Adds the `X-Kannel-*` headers as the parameters they name (`X-Kannel-DLR-Url` is `dlr-url`).
    fn add_headers(&mut self, headers: &HeaderMap) {
        for (name, value) in headers {
            if let Some(param) = name.as_str().strip_prefix("x-kannel-") {
                self.0.push((param.to_string(), value.as_bytes().to_vec()));
            }
        }
    }

    fn bytes(&self, names: &[&str]) -> Option<&[u8]> {
        names.iter().find_map(|name| self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice()))
    }

    fn text(&self, names: &[&str]) -> Option<String> {
        self.bytes(names).map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A whole number (Kannel reads them with `%d`): `Err` names the field when it is not one.
    fn number(&self, name: &str, field: &str) -> Result<Option<i64>, Answer> {
        match self.text(&[name]) {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| Answer::bad(format!("{field} field misformed, rejected"))),
        }
    }
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'+', ..) => out.push(b' '),
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 2;
            }
            (byte, ..) => out.push(byte),
        }
        i += 1;
    }
    out
}

/// The text in `charset`; Kannel's default is UTF-8, or UTF-16BE when the coding is UCS-2.
fn decode_text(bytes: &[u8], charset: Option<&str>, coding: Option<Encoding>) -> Option<String> {
    let charset = charset.map(str::to_ascii_lowercase);
    let charset = charset.as_deref().unwrap_or(if coding == Some(Encoding::Ucs2) { "utf-16be" } else { "utf-8" });
    match charset {
        "utf-8" | "utf8" => String::from_utf8(bytes.to_vec()).ok(),
        "iso-8859-1" | "iso8859-1" | "latin1" | "latin-1" => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        "utf-16be" | "utf-16" | "ucs-2" | "ucs2" | "ucs-2be" => {
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units = bytes.chunks(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units).collect::<Result<String, _>>().ok()
        }
        _ => None,
    }
}

/// A receiver as the client wrote it, in E.164 (`+44...`, `0044...` and `44...` are one number).
fn receiver(written: &str) -> Option<String> {
    let digits = written.strip_prefix('+').or_else(|| written.strip_prefix("00")).unwrap_or(written);
    let number = format!("+{digits}");
    Address::destination(&number).ok().map(|_| number)
}

async fn sendsms(
    State(state): State<Arc<AppState>>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let work = |state: Arc<AppState>| async move {
        take(&state, method, query.unwrap_or_default(), headers, body).await.map(IntoResponse::into_response)
    };
    completed(&state, work, |_| Answer::temporal().into_response()).await
}

async fn take(state: &AppState, method: Method, query: String, headers: HeaderMap, body: Body) -> Result<Answer, Answer> {
    if !state.accepting.load(std::sync::atomic::Ordering::Acquire) {
        return Err(Answer::temporal());
    }
    let mut params = Params::default();
    params.add_query(query.as_bytes());
    let mut text = None;
    let mut body_charset = None;
    if method == Method::POST {
        let bytes = read_body(state, body).await.map_err(|e| Answer(e.status, e.message))?;
        if content_type_is(&headers, "application/x-www-form-urlencoded") {
            params.add_query(&bytes);
        } else if content_type_is(&headers, "text/plain") || !headers.contains_key(header::CONTENT_TYPE) {
            params.add_headers(&headers);
            body_charset = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| {
                v.split(';').skip(1).find_map(|p| p.trim().strip_prefix("charset=").map(|c| c.trim_matches('"').to_string()))
            });
            text = Some(bytes.to_vec());
        } else {
            return Err(Answer::bad("Invalid content-type"));
        }
    }

    let user = params.text(&["username", "user"]);
    let password = params.text(&["password", "pass"]);
    let (owner, user) = match (user, password) {
        (Some(user), Some(password)) => state
            .client(|c| {
                let kannel = c.kannel.as_ref()?;
                (kannel.username == user && secret_matches(&password, &kannel.password_sha256)).then(|| (c.name.clone(), user.clone()))
            })
            .ok_or_else(|| Answer(StatusCode::FORBIDDEN, "Authorization failed for sendsms".into()))?,
        _ => return Err(Answer(StatusCode::FORBIDDEN, "Authorization failed for sendsms".into())),
    };

    let to = params.text(&["to"]).ok_or_else(|| Answer::bad("Missing receiver number, rejected"))?;
    let written: Vec<&str> = to.split_whitespace().collect();
    if written.is_empty() {
        return Err(Answer::bad("Empty receiver number not allowed, rejected"));
    }
    if written.len() > MAX_RECEIVERS {
        return Err(Answer::bad(format!("More than {MAX_RECEIVERS} receivers, rejected")));
    }
    let receivers: Vec<(String, &str)> = written
        .iter()
        .map(|w| receiver(w).map(|number| (number, *w)))
        .collect::<Option<_>>()
        .ok_or_else(|| Answer::bad("Number(s) has/have been denied by white- and/or black-lists."))?;
    if let Some(name) = UNSUPPORTED.iter().find(|name| params.bytes(&[name]).is_some()) {
        return Err(Answer::bad(format!("{name} is not supported by otpgate, rejected")));
    }

    let from = params.text(&["from"]).filter(|f| !f.is_empty());
    if let Some(from) = &from {
        Address::source(from).map_err(|_| Answer::bad("Sender field misformed, rejected"))?;
    }
    let coding = match params.number("coding", "Coding")? {
        None => None,
        Some(0) => Some(Encoding::Gsm7),
        Some(2) => Some(Encoding::Ucs2),
        Some(1) => return Err(Answer::bad("Coding 1 (8-bit data) is not supported by otpgate, rejected")),
        Some(_) => return Err(Answer::bad("Coding field misformed, rejected")),
    };
    let raw = match text {
        Some(body) => body,
        None => params.bytes(&["text"]).map(<[u8]>::to_vec).unwrap_or_default(),
    };
    let charset = params.text(&["charset"]).or(body_charset);
    let text_string = decode_text(&raw, charset.as_deref(), coding).ok_or_else(|| Answer::bad("Charset or body misformed, rejected"))?;
    if text_string.is_empty() {
        return Err(Answer::bad("Empty text not allowed, rejected."));
    }
    let encoded = Text::encode(&text_string, coding).map_err(|_| Answer::bad("Charset or body misformed, rejected"))?;
    let segments = encoded.segments(Header::Reference8);
    if segments > state.messages.max_segments {
        return Err(Answer::bad(format!("Text takes {segments} SMS; at most {} allowed, rejected", state.messages.max_segments)));
    }
    let validity = match params.number("validity", "Validity")? {
        None => state.messages.default_validity,
        Some(minutes) => {
            let validity = Duration::from_secs(u64::try_from(minutes).unwrap_or(0).saturating_mul(60));
            if validity < state.messages.min_validity || validity > state.messages.max_validity {
                return Err(Answer::bad("Validity field misformed, rejected"));
            }
            validity
        }
    };
    let mask = match params.number("dlr-mask", "DLR-Mask")? {
        None => 0,
        Some(mask @ 0..=63) => mask as u8,
        Some(_) => return Err(Answer::bad("DLR-Mask field misformed, rejected")),
    };
    let dlr_url = params.text(&["dlr-url"]).filter(|u| !u.is_empty());
    if dlr_url.as_deref().is_some_and(|url| crate::dlr_url::problem(url).is_some()) {
        return Err(Answer::bad("DLR-URL field misformed, rejected"));
    }
    let smsc = params.text(&["smsc"]).filter(|s| !s.is_empty());
    let fabric = state.network.current();
    match &smsc {
        Some(name) if !fabric.carriers.iter().any(|c| c.name() == name) => return Err(Answer::not_routable()),
        Some(name) if fabric.carriers.iter().any(|c| c.name() == name && !c.config().required_fields().is_empty()) => {
            return Err(Answer::bad("The carrier needs registered template ids; send through /v1/messages, rejected"));
        }
        _ => {}
    }
    for (number, _) in &receivers {
        let route = match (fabric.routes.route(number), &smsc) {
            (Some(route), _) => route,
            (None, Some(_)) => continue,
            (None, None) => return Err(Answer::not_routable()),
        };
        if from.as_deref().is_some_and(|from| route.allows(from).is_err()) {
            return Err(Answer::bad("Sender not allowed for this destination, rejected"));
        }
        if smsc.is_none() && !route.needs().is_empty() {
            return Err(Answer::bad("The carrier needs registered template ids; send through /v1/messages, rejected"));
        }
    }

    let now = SystemTime::now();
    let inserts = receivers.iter().map(|(number, written)| {
        let dlr = dlr_url.as_ref().filter(|_| mask != 0).map(|url| DlrRequest {
            url: url.clone(),
            mask,
            user: user.clone(),
            to: written.to_string(),
            from: from.clone().unwrap_or_default(),
        });
        let message = NewMessage {
            owner: owner.clone(),
            to: number.clone(),
            from: from.clone(),
            text: text_string.clone(),
            deadline: now + validity,
            encoding: Some(encoded.encoding()),
            segments: segments as u16,
            options: SendOptions { pinned_carrier: smsc.clone(), dlr, ..SendOptions::default() },
        };
        state.store.insert_message(message, None, now)
    });
    let mut failed = 0;
    for inserted in futures::future::join_all(inserts).await {
        match inserted {
            Ok((id, record)) => state.dispatch.admit(Job::from_record(id, &record)).await,
            Err(e) => {
                failed += 1;
                tracing::error!(error = %e, "sendsms: store write failed");
            }
        }
    }
    match failed {
        0 => Ok(Answer(StatusCode::ACCEPTED, "0: Accepted for delivery".into())),
        // Those stored go out; a retry of the whole request may send them twice, as on Kannel.
        _ => Err(Answer::temporal()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding_takes_only_two_hex_digits() {
        assert_eq!(super::percent_decode(b"a+b%41%4a%+1%4%"), b"a bAJ% 1%4%");
    }
}
