//! systemd integration without libsystemd: `sd_notify` is one datagram to `$NOTIFY_SOCKET`.
//!
//! `READY=1` once the store is open and the listeners are bound (Type=notify), `WATCHDOG=1`
//! from the main loop every half `WatchdogSec`, `RELOADING=1`/`READY=1` around a SIGHUP reload
//! and `STOPPING=1` when shutdown begins. Outside systemd (no `NOTIFY_SOCKET`) all of this is a
//! no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` to the service manager. Returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // Abstract namespace (Linux).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr)).is_ok()
        }
        None => socket.send_to(state.as_bytes(), &path).is_ok(),
    };
    if !sent {
        tracing::warn!(state, "could not notify systemd");
    }
    sent
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when it is meant for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
