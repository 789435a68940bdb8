//! Cluster mode on PostgreSQL (issue 14, in progress): one dispatch leader at a time, elected
//! through a lease row with a fencing token. Not wired into the daemon yet; see [`lease`].

pub mod lease;
