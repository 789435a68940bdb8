//! Config files written by code: the demo, the bench and the tests build theirs here, so each
//! section is spelled one way and every built file goes through the same parser and checks as
//! an operator's.

use std::fmt::Write;
use std::net::SocketAddr;
use std::path::Path;

use super::{Config, ConfigError};

/// A TOML config under construction. Lines are `key = value` in TOML syntax; a key given again
/// replaces the earlier line (a key written twice would be a TOML error).
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    server: Vec<String>,
    store: Vec<String>,
    api_keys: Vec<(String, String)>,
    carrier_defaults: Vec<String>,
    carriers: Vec<Vec<String>>,
    more: String,
}

/// `lines` set in `section`, each replacing the line with the same key.
fn set(section: &mut Vec<String>, lines: &str) {
    let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_string();
    for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
        section.retain(|old| key(old) != key(line));
        section.push(line.to_string());
    }
}

impl ConfigBuilder {
    /// Listeners on free loopback ports, the store in `data_dir`, nothing else.
    pub fn new(data_dir: &Path) -> ConfigBuilder {
        let mut server = Vec::new();
        set(
            &mut server,
            &format!("http_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = {:?}", data_dir.display().to_string()),
        );
        ConfigBuilder {
            server,
            store: Vec::new(),
            api_keys: Vec::new(),
            carrier_defaults: Vec::new(),
            carriers: Vec::new(),
            more: String::new(),
        }
    }

    /// `[server]` keys.
    pub fn server(mut self, lines: &str) -> ConfigBuilder {
        set(&mut self.server, lines);
        self
    }

    /// An `[[api_keys]]` entry for `key` (only its hash is written).
    /// `[store]` keys; later lines replace earlier ones with the same key.
    pub fn store(mut self, lines: &str) -> ConfigBuilder {
        set(&mut self.store, lines);
        self
    }

    pub fn api_key(mut self, name: &str, key: &str) -> ConfigBuilder {
        self.api_keys.push((name.to_string(), crate::http::sha256_hex(key.as_bytes())));
        self
    }

    /// Keys every carrier gets unless its own lines set them.
    pub fn carrier_defaults(mut self, lines: &str) -> ConfigBuilder {
        set(&mut self.carrier_defaults, lines);
        self
    }

    /// A `[[carriers]]` section named `name` at `addr`, with its own `lines`.
    pub fn carrier(mut self, name: &str, addr: SocketAddr, lines: &str) -> ConfigBuilder {
        let mut section = Vec::new();
        set(&mut section, &format!("name = {name:?}\nhost = \"{}\"\nport = {}", addr.ip(), addr.port()));
        set(&mut section, lines);
        self.carriers.push(section);
        self
    }

    /// Whole sections added as written (`[otp]`, `[messages]`, `[[routes]]`...).
    pub fn sections(mut self, toml: &str) -> ConfigBuilder {
        self.more.push_str(toml);
        self.more.push('\n');
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut text = format!("[server]\n{}\n\n", self.server.join("\n"));
        if !self.store.is_empty() {
            let _ = writeln!(text, "[store]\n{}\n", self.store.join("\n"));
        }
        for (name, hash) in &self.api_keys {
            let _ = writeln!(text, "[[api_keys]]\nname = {name:?}\nkey_sha256 = \"{hash}\"\n");
        }
        for own in &self.carriers {
            let mut section = self.carrier_defaults.clone();
            set(&mut section, &own.join("\n"));
            let _ = writeln!(text, "[[carriers]]\n{}\n", section.join("\n"));
        }
        text.push_str(&self.more);
        text
    }

    /// The config, parsed and checked as any file is.
    pub fn build(&self) -> Result<Config, ConfigError> {
        Config::from_toml(&self.to_toml(), Path::new("<built config>"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_replace_earlier_ones_and_the_result_parses() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 2775));
        let config = ConfigBuilder::new(Path::new("/tmp/x"))
            .server("shutdown_timeout = \"5s\"\nhttp_listen = \"127.0.0.1:8081\"")
            .api_key("test", "0123456789abcdef")
            .carrier_defaults("system_id = \"otpgate\"\npassword = \"pw\"\nsource_addr = \"Acme\"\nwindow = 8")
            .carrier("alpha", addr, "window = 16")
            .carrier("beta", addr, "")
            .store("retention = \"1d\"\nretention = \"2d\"")
            .sections("[otp]\nbrand = \"Acme\"")
            .build()
            .unwrap();
        assert_eq!(config.server.http_listen, SocketAddr::from(([127, 0, 0, 1], 8081)));
        assert_eq!(config.server.shutdown_timeout, std::time::Duration::from_secs(5));
        assert_eq!((config.carriers[0].window, config.carriers[1].window), (16, 8));
        assert_eq!(config.api_keys[0].key_sha256, crate::http::sha256_hex(b"0123456789abcdef"));
        assert_eq!(config.otp.brand, "Acme");
        assert_eq!(config.store.retention, std::time::Duration::from_secs(2 * 86_400));
    }
}
