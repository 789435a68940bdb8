//! Cluster mode on PostgreSQL (issue 14, in progress): one dispatch leader at a time, elected
//! through a lease row with a fencing token ([`lease`]; not wired into the daemon yet), and each
//! node's settings ([`settings`]).

pub mod lease;
pub(crate) mod settings;
