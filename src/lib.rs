//! otpgate: a self-hosted OTP SMS gateway.
//!
//! A business backend asks otpgate over HTTP to send a one-time code; otpgate queues the SMS
//! durably, submits it over persistent SMPP binds to carrier SMSCs, tracks the delivery receipt and
//! checks the code the user types back. Data flows one way:
//! intake → store → router → carrier session → store.
//!
//! Layout, one concept per module:
//! - [`config`]: the TOML configuration and its validation;
//! - [`http`]: the HTTP intake (axum) and a minimal client for the demo and tests;
//! - [`store`]: the durable message store (sled), group commit, receipt correlation;
//! - [`dispatch`]: takes queued messages to a carrier, retries, spills over, expires;
//! - [`echo`]: untrusted values in error messages, bounded;
//! - [`smpp`]: carrier sessions (bind, window, keepalive, reconnect) and receipt parsing;
//! - [`daemon`]: wires the pieces together and runs them until shutdown;
//! - [`sim`]: an SMSC simulator speaking real SMPP, for the demo, operators and the tests.

pub mod bench;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dispatch;
pub mod echo;
pub mod hex;
pub mod http;
pub mod otp;
pub mod route;
pub mod sim;
pub mod smpp;
pub mod store;
pub mod systemd;
pub mod telemetry;
