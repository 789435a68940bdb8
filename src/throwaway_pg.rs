//! A throwaway PostgreSQL server for the tests and `otpgate bench --store postgres`: `initdb` in a
//! fresh directory, `postgres` on a free loopback port with its socket in that directory, removed
//! when dropped. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user
//! (which then owns the directory); otherwise as whoever we are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    #[error("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH); install the `postgresql` package")]
    NotInstalled,
    #[error("{step}: {message}")]
    Failed { step: &'static str, message: String },
}

/// A running private server; stopped and deleted on drop.
pub struct ThrowawayPostgres {
    dir: PathBuf,
    addr: SocketAddr,
    /// `None` while stopped.
    server: Option<Child>,
    bin: PathBuf,
}

/// The directory of PostgreSQL's server binaries: the newest under /usr/lib/postgresql, else
/// wherever `initdb` is on PATH.
fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The `postgres` account's uid and gid.
fn postgres_account() -> Option<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").ok()?;
    // SAFETY: getpwnam takes a NUL-terminated name and returns a pointer to static storage (or
    // null); we copy the two ids out at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null, points at a valid passwd record.
    unsafe { Some(((*entry).pw_uid, (*entry).pw_gid)) }
}

/// `program` with `args`, as the `postgres` user when we are root (the child is the program
/// itself, so signals reach it).
fn command(bin: &Path, program: &str, args: &[&str]) -> Result<Command, ThrowawayError> {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(bin.join(program));
    command.args(args);
    if is_root() {
        let (uid, gid) = postgres_account().ok_or_else(|| failed("run as postgres")("there is no `postgres` user".into()))?;
        command.uid(uid).gid(gid);
    }
    Ok(command)
}

fn failed(step: &'static str) -> impl Fn(String) -> ThrowawayError {
    move |message| ThrowawayError::Failed { step, message }
}

impl ThrowawayPostgres {
    /// Whether a server can be started here at all.
    pub fn installed() -> bool {
        bin_dir().is_some()
    }

    /// For tests: a server, or `Ok(None)` with a loud note when PostgreSQL is not installed and
    /// this is not CI (under `CI`, a missing PostgreSQL is an error).
    pub async fn for_tests() -> Result<Option<ThrowawayPostgres>, ThrowawayError> {
        if !ThrowawayPostgres::installed() && std::env::var_os("CI").is_none() {
            eprintln!("SKIPPED: PostgreSQL is not installed (Debian package `postgresql`); CI installs it");
            return Ok(None);
        }
        ThrowawayPostgres::start().await.map(Some)
    }

    /// initdb, start, and wait (at most 30 s) until it takes connections.
    pub async fn start() -> Result<ThrowawayPostgres, ThrowawayError> {
        let bin = bin_dir().ok_or(ThrowawayError::NotInstalled)?;
        let dir = std::env::temp_dir().join(format!("otpgate-pg-{}-{}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir_all(&dir).map_err(|e| failed("create its directory")(e.to_string()))?;
        if is_root() {
            let (uid, gid) = postgres_account().ok_or_else(|| failed("run as postgres")("there is no `postgres` user".into()))?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| failed("chown to postgres")(e.to_string()))?;
        }
        let data = dir.join("data");
        let data_text = data.display().to_string();
        let init = command(&bin, "initdb", &["-D", &data_text, "-A", "trust", "-U", "otpgate", "--no-sync", "-E", "UTF8"])?
            .stdout(Stdio::null())
            .output()
            .map_err(|e| failed("initdb")(e.to_string()))?;
        if !init.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(failed("initdb")(String::from_utf8_lossy(&init.stderr).into_owned()));
        }
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| failed("find a free port")(e.to_string()))?;
            probe.local_addr().map_err(|e| failed("find a free port")(e.to_string()))?.port()
        };
        let mut db = ThrowawayPostgres { dir, addr: SocketAddr::from(([127, 0, 0, 1], port)), server: None, bin };
        db.resume().await?;
        Ok(db)
    }

    /// Stops the server (a fast shutdown: sessions are cut), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGINT is PostgreSQL's "fast" shutdown.
            if let Ok(pid) = i32::try_from(server.id()) {
                // SAFETY: signalling our own child process.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let _ = server.wait();
        }
    }

    /// Starts the server again on the same port and data, and waits (at most 30 s) until it
    /// takes connections.
    pub async fn resume(&mut self) -> Result<(), ThrowawayError> {
        let data_text = self.dir.join("data").display().to_string();
        let port_text = self.addr.port().to_string();
        let socket_dir = self.dir.display().to_string();
        let args = ["-D", &data_text, "-p", &port_text, "-k", &socket_dir, "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200"];
        let server = command(&self.bin, "postgres", &args)?
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| failed("start postgres")(e.to_string()))?;
        let url = self.url();
        let server = self.server.insert(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(failed("wait for postgres")(e.to_string())),
                Err(_) => {}
            }
            if let Ok(Some(status)) = server.try_wait() {
                return Err(failed("start postgres")(format!("exited with {status}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection string for the `postgres` database as the superuser `otpgate`.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// A connection string for `database` as the superuser `otpgate`.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://otpgate@{}/{database}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
