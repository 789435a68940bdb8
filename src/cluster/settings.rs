//! `[cluster]`: this node's place in a cluster of nodes sharing one PostgreSQL store.

use std::time::Duration;

use serde::Deserialize;

/// Cluster settings (used with `store.backend = "postgres"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unique per node; default: the host name.
    pub node_name: Option<String>,
    /// When the leader is lost, another node leads within this: the lease is half of it (a
    /// follower notices an expired lease within a third of the lease), the rest is for binding.
    #[serde(deserialize_with = "crate::duration::human")]
    pub takeover: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { node_name: None, takeover: Duration::from_secs(10) }
    }
}

impl ClusterConfig {
    /// This node's name: the configured one, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }

    /// How long a term lasts unless renewed.
    pub fn lease(&self) -> Duration {
        self.takeover / 2
    }

    /// The first setting out of bounds: (key under `cluster.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.takeover) {
            return Some(("takeover", "must be between 1s and 10m".into()));
        }
        match &self.node_name {
            Some(name) if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(("node_name", "must be 1-64 printable ASCII characters without spaces".into()))
            }
            _ => None,
        }
    }
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let written = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = buf.split(|&b| b == 0).next().unwrap_or_default();
    match written && !name.is_empty() {
        true => String::from_utf8_lossy(name).into_owned(),
        false => "otpgate".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_named_by_its_setting_or_its_host() {
        let named = ClusterConfig { node_name: Some("gw-1".into()), ..ClusterConfig::default() };
        assert_eq!(named.node_name(), "gw-1");
        assert!(!ClusterConfig::default().node_name().is_empty());
        assert!(ClusterConfig { node_name: Some("gw 1".into()), ..ClusterConfig::default() }.problem().is_some());
        assert!(ClusterConfig { takeover: Duration::from_millis(10), ..ClusterConfig::default() }.problem().is_some());
        assert!(named.problem().is_none());
    }
}
