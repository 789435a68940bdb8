//! `[cluster]`: this node's place in a cluster of nodes sharing one PostgreSQL store.

use serde::Deserialize;

/// Cluster settings (used with `store.backend = "postgres"`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Unique per node; default: the host name.
    pub node_name: Option<String>,
}

impl ClusterConfig {
    /// This node's name: the configured one, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(host_name)
    }

    /// The first setting out of bounds: (key under `cluster.`, why).
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
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
        let named = ClusterConfig { node_name: Some("gw-1".into()) };
        assert_eq!(named.node_name(), "gw-1");
        assert!(!ClusterConfig::default().node_name().is_empty());
        assert!(ClusterConfig { node_name: Some("gw 1".into()) }.problem().is_some());
        assert!(named.problem().is_none());
    }
}
