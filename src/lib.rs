//! otpgate: a self-hosted OTP SMS gateway.
//!
//! A business backend asks otpgate over HTTP to send a one-time code; otpgate queues the SMS
//! durably, submits it over persistent SMPP binds to carrier SMSCs, tracks the delivery receipt and
//! checks the code the user types back. Data flows one way:
//! intake ([`http`], `otp`) → [`store`] → `dispatch` (`route`) → carrier session ([`smpp`])
//! → receipt tracking (`track`) → [`store`] → events out ([`webhook`]). No module imports one that imports it back.
//!
//! Layout, one concept per module:
//! - [`fraud`]: the fraud guard: conversion per destination prefix over a sliding window,
//!   pumping suspended by itself, pins and modes (`[fraud]`);
//! - [`country`]: a number's country by its E.164 calling code (a bounded metric label);
//! - [`config`]: composes the TOML file from each component's settings and runs the checks that
//!   span sections; [`config::ConfigBuilder`] writes configs from code;
//! - [`http`]: the HTTP intake (axum on our own hyper accept loop with timeouts and a connection
//!   cap), its settings, and a minimal client for the demo and tests; beside our API, Twilio
//!   Verify v2's and Kannel's sendsms, and the OpenAPI document;
//! - `otp`: verifications: codes and their HMAC, templates, rate rules, receipt failover;
//! - [`store`]: the durable store (sled, or PostgreSQL for a cluster), one file per row kind,
//!   group commit, retention;
//! - `dispatch`: takes queued messages to a carrier, retries, spills over, expires;
//! - `route`: prefix routes and their strategies;
//! - [`smpp`]: carrier sessions (bind, window, keepalive, reconnect), PDU framing, health and
//!   receipt parsing;
//! - [`sms`]: SMS text as the network carries it: GSM 03.38 or UTF-16, cut into parts;
//! - [`smsc_id`]: SMSC message ids in the one form receipts and the store compare;
//! - `track`: receipt tracking, carrier receipts to the store, a group commit per batch;
//! - `recovery`: re-queues what the last process left, finds lost hand-offs;
//! - `retention`: the periodic sweep (expired verifications, finished rows, unmatched receipts);
//! - `gauges`: the gauges sampled each second;
//! - `tasks`: one lifecycle for background tasks (stop token, tracked, awaited in order);
//! - [`daemon`]: wires the pieces together and shuts them down in the order that loses nothing;
//! - `telemetry`: every metric name, the Prometheus recorder and `/metrics`;
//! - [`systemd`]: sd_notify (ready, watchdog, reloading, stopping);
//! - [`clock`]: the wall clock behind a trait, so tests can move it;
//! - `echo`: untrusted values in error messages, bounded;
//! - `duration`: human-written durations in the config, and the bounds timers share;
//! - `hex`: hex for key hashes and code HMACs;
//! - [`cluster`]: cluster mode on PostgreSQL: the dispatch leader's lease and this node's campaign;
//! - `duties`: the dispatch duties (carriers, dispatcher, receipts, recovery, sweep) a single node
//!   has for its life and a cluster leader for its term;
//! - `dlr_url`: Kannel's delivery-report URL with its escapes filled (a report's callback);
//! - [`webhook`]: events out: signed Standard Webhooks requests to the clients' endpoints, one
//!   sender per endpoint, retried with backoff, in order per message (the events are rows the
//!   store writes with each change: `store::events`);
//! - [`tls`]: TLS on rustls: certificate files read and checked, carrier links' client side,
//!   the listeners' reloadable server side, throwaway certificates for the demo and the bench;
//! - [`throwaway_pg`]: a private PostgreSQL server for the tests and the bench;
//! - [`sim`]: an SMSC simulator speaking real SMPP, with a PDU fuzzer and the delivery
//!   accounting, for the demo, operators, the bench and the tests;
//! - [`demo`] and [`bench`](mod@bench): `otpgate demo` and `otpgate bench`.

pub mod bench;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod country;
pub mod daemon;
pub mod demo;
pub(crate) mod dispatch;
pub(crate) mod dlr_url;
pub(crate) mod duration;
mod duties;
pub(crate) mod echo;
pub mod fraud;
mod gauges;
pub(crate) mod hex;
pub mod http;
pub(crate) mod otp;
mod recovery;
mod retention;
pub(crate) mod route;
pub mod sim;
pub mod smpp;
pub mod sms;
pub mod smsc_id;
pub mod store;
pub mod systemd;
mod tasks;
pub(crate) mod telemetry;
pub mod throwaway_pg;
pub mod tls;
mod track;
pub mod webhook;
