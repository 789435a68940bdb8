//! otpgate: a self-hosted OTP SMS gateway.
//!
//! A business backend asks otpgate over HTTP to send a one-time code; otpgate queues the SMS
//! durably, submits it over persistent SMPP binds to carrier SMSCs, tracks the delivery receipt and
//! checks the code the user types back. Data flows one way:
//! intake → store → router → carrier session → store.
//!
//! Layout, one concept per module:
//! - [`config`]: the TOML configuration and its validation;
//! - [`http`]: the HTTP intake (axum on our own hyper accept loop with timeouts and a connection
//!   cap) and a minimal client for the demo and tests;
//! - [`otp`]: verifications: codes and their HMAC, templates, rate rules, receipt failover;
//! - [`store`]: the durable message store (sled), group commit, receipt correlation;
//! - [`dispatch`]: takes queued messages to a carrier, retries, spills over, expires;
//! - [`route`]: prefix routes and their strategies;
//! - [`smpp`]: carrier sessions (bind, window, keepalive, reconnect), PDU framing, health and
//!   receipt parsing;
//! - [`daemon`]: wires the pieces together and runs them until shutdown;
//! - [`telemetry`]: the Prometheus recorder, `/metrics` and the sampled gauges;
//! - [`systemd`]: sd_notify (ready, watchdog, reloading, stopping);
//! - [`clock`]: the wall clock behind a trait, so tests can move it;
//! - [`echo`]: untrusted values in error messages, bounded;
//! - [`duration`]: human-written durations in the config, and the bounds timers share;
//! - [`hex`]: hex for key hashes and code HMACs;
//! - [`sim`]: an SMSC simulator speaking real SMPP, with a PDU fuzzer, for the demo, operators and
//!   the tests;
//! - [`demo`] and [`bench`]: `otpgate demo` and `otpgate bench`.

pub mod bench;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub(crate) mod dispatch;
pub(crate) mod duration;
pub(crate) mod echo;
mod gauges;
pub(crate) mod hex;
pub mod http;
pub(crate) mod otp;
mod recovery;
mod retention;
pub(crate) mod route;
pub mod sim;
pub mod smpp;
pub mod smsc_id;
pub mod store;
pub mod systemd;
mod tasks;
pub(crate) mod telemetry;
mod track;
