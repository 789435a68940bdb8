//! The SMPP 3.4 client side: sessions to carrier SMSCs and what travels over them.
//!
//! - [`carrier`]: a carrier's sessions, kept bound with backoff, and the submit entry point;
//! - [`codec`]: PDU framing (rusmpp's codec, reading over-long message ids);
//! - [`session`]: one bound connection (window, timeouts, enquire_link, unbind);
//! - [`message`] and [`address`]: an SMS turned into a submit_sm;
//! - [`tlv`]: the vendor TLVs a carrier wants on every submit_sm (India's DLT ids ...);
//! - [`outcome`]: submit_sm_resp statuses in the classes the dispatcher acts on;
//! - [`receipt`]: delivery receipts, TLV and text;
//! - [`health`]: circuit breaker and AIMD pacing per carrier;
//! - [`backoff`]: reconnect delays;
//! - `settings`: a carrier's `[[carriers]]` settings and their checks.

pub mod address;
pub mod backoff;
pub mod carrier;
pub mod codec;
pub mod gate;
pub mod health;
pub mod message;
pub mod outcome;
pub mod receipt;
pub mod session;
pub(crate) mod settings;
pub mod tlv;

pub use carrier::{Carrier, Submission};
pub use gate::SubmitGate;
pub use message::OutboundSms;
pub use outcome::{NotSubmitted, Permanent, SubmitOutcome};
pub use receipt::{DeliveryState, Receipt};
pub use session::{ReceiptEvent, ReceiptSender};
