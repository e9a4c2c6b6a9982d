//! Test harness: fresh databases for the contract suite and for the
//! workspace's integration tests (enable the `__test-util` feature).
//!
//! - [`sqlite_url`] gives a new temporary SQLite file.
//! - [`postgres_url`] gives a freshly created PostgreSQL database on the
//!   server named by `DATABASE_URL`; without it, on a throwaway cluster
//!   started with `initdb`/`pg_ctl` when those are installed (stopped when the
//!   test process exits); otherwise it prints a loud banner and returns `None`,
//!   unless `CASCADE_REQUIRE_POSTGRES=1`, which turns that into a panic.
//! - [`ThrowawayCluster`] is a private PostgreSQL cluster that a fault test
//!   may restart, stop and start again.
//! - [`TcpProxy`] sits between a client and its server and can cut the
//!   connection (a blackhole) or reset it.
//!
//! Not part of the public API; panics freely.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::MigrationHarness;

use crate::connect::{PG_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::url::{self, Target};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A fresh, empty database; removed again on drop where possible.
#[derive(Debug)]
pub struct TestDb {
    /// URL to pass to `Store::open`.
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    SqliteFile(PathBuf),
    PgDatabase { admin_url: String, name: String },
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Cleanup::PgDatabase { admin_url, name } => {
                let (admin_url, name) = (admin_url.clone(), name.clone());
                // Drop may run inside a runtime: use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build()
                    else {
                        return;
                    };
                    runtime.block_on(async {
                        if let Ok(mut conn) = AsyncPgConnection::establish(&admin_url).await {
                            let _ = conn
                                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                                .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// A new temporary SQLite database file (`sqlite:///tmp/…`), deleted on drop.
pub fn sqlite_url() -> TestDb {
    let path = std::env::temp_dir().join(format!("cascade-test-{}.db", unique_suffix()));
    TestDb {
        url: format!("sqlite://{}", path.display()),
        cleanup: Cleanup::SqliteFile(path),
    }
}

/// A freshly created PostgreSQL database, or `None` (after a loud message)
/// when no server is available. See the module docs.
pub async fn postgres_url() -> Option<TestDb> {
    let Some(admin_url) = postgres_admin_url() else {
        if require_postgres() {
            panic!(
                "CASCADE_REQUIRE_POSTGRES=1 but no PostgreSQL is available: set DATABASE_URL \
                 (e.g. postgres://root@127.0.0.1:5432/test) or install initdb/pg_ctl"
            );
        }
        eprintln!(
            "\n==================================================================\n\
             SKIPPING PostgreSQL test: DATABASE_URL is unset and no initdb/pg_ctl\n\
             was found. Set DATABASE_URL or CASCADE_REQUIRE_POSTGRES=1.\n\
             ==================================================================\n"
        );
        return None;
    };
    let name = format!("cascade_test_{}", unique_suffix());
    let mut conn = AsyncPgConnection::establish(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("connecting to {} failed: {e}", url::mask_password(&admin_url)));
    conn.batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
    Some(TestDb {
        url: with_database(&admin_url, &name),
        cleanup: Cleanup::PgDatabase { admin_url, name },
    })
}

/// Replaces the database name of a PostgreSQL URL.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_start..];
    let path_start = rest.find(['/', '?']).map_or(url.len(), |i| authority_start + i);
    let query = url[path_start..].find('?').map_or("", |i| &url[path_start + i..]);
    format!("{}/{database}{query}", &url[..path_start])
}

/// The server to create test databases on: `DATABASE_URL`, else a throwaway
/// cluster started once per test process (never dropped: the watchdog of
/// [`ThrowawayCluster`] stops it when the process exits).
fn postgres_admin_url() -> Option<String> {
    static ADMIN_URL: OnceLock<Option<String>> = OnceLock::new();
    static SHARED: OnceLock<ThrowawayCluster> = OnceLock::new();
    ADMIN_URL
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => match ClusterBinaries::find() {
                None => None,
                Some(binaries) => match ThrowawayCluster::start_blocking(binaries) {
                    Ok(cluster) => Some(SHARED.get_or_init(|| cluster).url()),
                    Err(problem) => {
                        eprintln!("no throwaway PostgreSQL cluster: {problem}");
                        None
                    }
                },
            },
        })
        .clone()
}

fn find_pg_binary(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|entry| entry.path()).collect();
        // The newest installed version first.
        versions.sort();
        versions.reverse();
        for version in versions {
            candidates.push(version.join("bin").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn require_postgres() -> bool {
    std::env::var("CASCADE_REQUIRE_POSTGRES").as_deref() == Ok("1")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `initdb` and `pg_ctl`, and whether they must run as `postgres` (they
/// refuse to run as root).
#[derive(Debug, Clone)]
struct ClusterBinaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
}

impl ClusterBinaries {
    fn find() -> Option<ClusterBinaries> {
        Some(ClusterBinaries {
            initdb: find_pg_binary("initdb")?,
            pg_ctl: find_pg_binary("pg_ctl")?,
            as_postgres: is_root(),
        })
    }

    fn command(&self, program: &Path) -> Command {
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

/// How [`ThrowawayCluster::stop`] and [`ThrowawayCluster::restart`] shut the
/// server down (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Waits for nothing: disconnects every client (`57P01`) and shuts down cleanly.
    Fast,
    /// Kills every backend at once, like a crash; the next start runs crash recovery.
    Immediate,
}

impl ShutdownMode {
    fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Fast => "fast",
            ShutdownMode::Immediate => "immediate",
        }
    }
}

impl From<&str> for ShutdownMode {
    /// `"fast"` or `"immediate"`; panics on anything else.
    fn from(mode: &str) -> Self {
        match mode {
            "fast" => ShutdownMode::Fast,
            "immediate" => ShutdownMode::Immediate,
            other => panic!("unknown shutdown mode `{other}`: use \"fast\" or \"immediate\""),
        }
    }
}

/// A private PostgreSQL cluster for fault tests: restart it, stop it, start
/// it again, without disturbing any other test.
///
/// Started with `initdb`/`pg_ctl` (as the `postgres` user when running as
/// root) in a temporary directory, on a free port of 127.0.0.1, with trust
/// authentication, the superuser `root`, `synchronous_commit = on` and
/// `fsync = off`. Dropping it stops the server (`immediate`) and removes the
/// directory; a watchdog does the same if the test process dies first.
///
/// ```no_run
/// # #[allow(dead_code)]
/// # async fn example() {
/// use cascade_store::testing::ThrowawayCluster;
///
/// let Some(cluster) = ThrowawayCluster::start().await else { return };
/// let store = cascade_store::Store::open(Some(&cluster.url())).await.unwrap();
/// cluster.restart("immediate").await;
/// store.list_dags().await.unwrap();
/// # }
/// ```
#[derive(Debug)]
pub struct ThrowawayCluster {
    control: Control,
}

/// What controlling a cluster needs; cheap to clone onto a blocking thread.
#[derive(Debug, Clone)]
struct Control {
    binaries: ClusterBinaries,
    dir: PathBuf,
    port: u16,
}

impl ThrowawayCluster {
    /// Creates and starts a new cluster. `None`, after a loud banner, when
    /// `initdb`/`pg_ctl` are not installed; a panic instead when
    /// `CASCADE_REQUIRE_POSTGRES=1`, or when they are installed but fail.
    pub async fn start() -> Option<ThrowawayCluster> {
        let Some(binaries) = ClusterBinaries::find() else {
            if require_postgres() {
                panic!(
                    "CASCADE_REQUIRE_POSTGRES=1 but initdb/pg_ctl were not found: a fault test \
                     needs a PostgreSQL cluster of its own (install postgresql)"
                );
            }
            eprintln!(
                "\n==================================================================\n\
                 SKIPPING PostgreSQL fault test: no initdb/pg_ctl was found to start\n\
                 a private cluster. Install postgresql or set CASCADE_REQUIRE_POSTGRES=1.\n\
                 ==================================================================\n"
            );
            return None;
        };
        let started = tokio::task::spawn_blocking(move || ThrowawayCluster::start_blocking(binaries))
            .await
            .expect("cluster start task");
        match started {
            Ok(cluster) => Some(cluster),
            Err(problem) => panic!("cannot start a throwaway PostgreSQL cluster: {problem}"),
        }
    }

    fn start_blocking(binaries: ClusterBinaries) -> Result<ThrowawayCluster, String> {
        let dir = std::env::temp_dir().join(format!("cascade-pg-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut cluster = Control {
            binaries,
            dir,
            port: 0,
        };
        if cluster.binaries.as_postgres {
            let chowned = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&cluster.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !chowned {
                return Err(format!(
                    "cannot hand {} to the postgres user",
                    cluster.dir.display()
                ));
            }
        }
        let initialized = cluster
            .binaries
            .command(&cluster.binaries.initdb)
            .arg("-D")
            .arg(cluster.data())
            .args(["-A", "trust", "-U", "root", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !initialized {
            return Err("initdb failed".to_owned());
        }
        cluster.spawn_watchdog();
        // A free port can be taken by someone else before the server binds
        // it: try a few.
        for _ in 0..5 {
            cluster.port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("finding a free port: {e}"))?
                .port();
            if cluster.pg_ctl(&["start"]) {
                cluster.wait_until_accepting()?;
                eprintln!(
                    "started a throwaway PostgreSQL cluster on 127.0.0.1:{}",
                    cluster.port
                );
                return Ok(ThrowawayCluster { control: cluster });
            }
        }
        let log = std::fs::read_to_string(cluster.log()).unwrap_or_default();
        // Nothing runs, but the directory is ours to remove.
        drop(ThrowawayCluster { control: cluster });
        Err(format!("pg_ctl start failed; its log:\n{log}"))
    }
}

impl Control {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Runs `pg_ctl -D data -w … <args>` (with the server options, so that
    /// `start` and `restart` bring it up the same way); true on success.
    fn pg_ctl(&self, args: &[&str]) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on \
             -c full_page_writes=off -c shared_buffers=16MB",
            self.port,
            self.dir.display()
        );
        self.binaries
            .command(&self.binaries.pg_ctl)
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "120", "-o", &options, "-l"])
            .arg(self.log())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits (up to 60 s) until the port accepts TCP connections (`pg_ctl
    /// -w` has already waited for the server to report itself ready).
    fn wait_until_accepting(&self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(error) if std::time::Instant::now() > deadline => {
                    return Err(format!(
                        "the cluster does not accept connections on {addr}: {error}"
                    ));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
    }

    /// Stops the cluster and removes its directory once this process is
    /// gone, should `Drop` never run (an abort, a signal).
    fn spawn_watchdog(&self) {
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
            pid = std::process::id(),
            stop = self.stop_command_line(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn stop_command_line(&self) -> String {
        let stop = format!(
            "{} -D {} -m immediate stop",
            self.binaries.pg_ctl.display(),
            self.data().display()
        );
        if self.binaries.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        }
    }
}

impl ThrowawayCluster {
    /// `postgres://root@127.0.0.1:PORT/postgres`: the superuser `root` on
    /// the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.control.port)
    }

    /// The TCP port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.control.port
    }

    /// `127.0.0.1:PORT`, for a [`TcpProxy`] in front of the cluster.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.control.port))
    }

    /// `pg_ctl restart -m MODE` (`"fast"` or `"immediate"`, or a
    /// [`ShutdownMode`]); returns once the server accepts connections again.
    /// Clients connected before lose their connections.
    pub async fn restart(&self, mode: impl Into<ShutdownMode>) {
        let mode = mode.into();
        self.blocking(move |cluster| {
            assert!(
                cluster.pg_ctl(&["-m", mode.as_str(), "restart"]),
                "pg_ctl restart -m {} failed; see {}",
                mode.as_str(),
                cluster.log().display()
            );
            cluster.wait_until_accepting().expect("cluster restarted");
        })
        .await;
    }

    /// `pg_ctl stop -m MODE`; returns once the server is down. Start it
    /// again with [`ThrowawayCluster::start_again`].
    pub async fn stop(&self, mode: impl Into<ShutdownMode>) {
        let mode = mode.into();
        self.blocking(move |cluster| {
            assert!(
                cluster.pg_ctl(&["-m", mode.as_str(), "stop"]),
                "pg_ctl stop -m {} failed; see {}",
                mode.as_str(),
                cluster.log().display()
            );
        })
        .await;
    }

    /// Starts a stopped cluster again on the same port, with its data;
    /// returns once it accepts connections.
    pub async fn start_again(&self) {
        self.blocking(|cluster| {
            assert!(
                cluster.pg_ctl(&["start"]),
                "pg_ctl start failed; see {}",
                cluster.log().display()
            );
            cluster.wait_until_accepting().expect("cluster started again");
        })
        .await;
    }

    /// The same as [`ThrowawayCluster::start_again`].
    pub async fn resume(&self) {
        self.start_again().await;
    }

    /// Runs `f` on a blocking thread (pg_ctl waits), so that the test's
    /// other tasks (queries in flight) keep running meanwhile.
    async fn blocking(&self, f: impl FnOnce(&Control) + Send + 'static) {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || f(&control))
            .await
            .expect("cluster control task");
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let control = &self.control;
        let _ = control
            .binaries
            .command(&control.binaries.pg_ctl)
            .arg("-D")
            .arg(control.data())
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&control.dir);
    }
}

/// A TCP proxy on `127.0.0.1:<ephemeral>` in front of `target`, to cut the
/// network between a client and its server.
///
/// - [`TcpProxy::cut`] partitions: every connection, old and new, stays open
///   but nothing is forwarded any more in either direction (a blackhole, as a
///   dead link or a vanished host looks to TCP: no reset, no answer).
/// - [`TcpProxy::restore`] heals: the connections held during the cut are
///   closed, new ones are forwarded again.
/// - [`TcpProxy::reset`] closes every current connection at once (the
///   peer sees them end), without changing whether new ones are forwarded.
/// - [`TcpProxy::hold`] delays: nothing is forwarded, but everything sent
///   meanwhile is kept and delivered, in order, on [`TcpProxy::release`]
///   (a stalled link or a paused host: the statement a client sent reaches
///   the server late).
///
/// Dropping the proxy closes everything.
#[derive(Debug)]
pub struct TcpProxy {
    addr: std::net::SocketAddr,
    state: tokio::sync::watch::Sender<ProxyState>,
    accept: tokio::task::JoinHandle<()>,
    /// Reads from clients that wait for the end of a hold.
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct ProxyState {
    cut: bool,
    held: bool,
    resets: u64,
}

impl TcpProxy {
    /// Starts forwarding from a new ephemeral port of 127.0.0.1 to `target`.
    pub async fn start(target: std::net::SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (state, states) = tokio::sync::watch::channel(ProxyState::default());
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&held);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(proxy_connection(
                    client,
                    target,
                    states.clone(),
                    std::sync::Arc::clone(&counter),
                ));
            }
        });
        TcpProxy {
            addr,
            state,
            accept,
            held,
        }
    }

    /// Where clients connect instead of the target.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Replaces `host:port` of a URL (`postgres://user@host:port/db`) with
    /// this proxy's address.
    pub fn url_through(&self, url: &str) -> String {
        let authority_start = url.find("://").map_or(0, |i| i + 3);
        let rest = &url[authority_start..];
        let host_end = rest.find(['/', '?']).map_or(url.len(), |i| authority_start + i);
        let host_start = url[authority_start..host_end]
            .rfind('@')
            .map_or(authority_start, |i| authority_start + i + 1);
        format!("{}{}{}", &url[..host_start], self.addr, &url[host_end..])
    }

    /// Blackholes every connection, current and new, until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|state| state.cut = true);
    }

    /// Ends the cut: the connections held during it are closed, new ones
    /// are forwarded.
    pub fn restore(&self) {
        self.state.send_modify(|state| state.cut = false);
    }

    /// Closes every current connection now.
    pub fn reset(&self) {
        self.state.send_modify(|state| state.resets += 1);
    }

    /// Stops forwarding, in both directions, on every connection, current
    /// and new, without losing anything: what arrives meanwhile is delivered
    /// on [`TcpProxy::release`].
    pub fn hold(&self) {
        self.state.send_modify(|state| state.held = true);
    }

    /// Ends a hold: what was held is delivered, and forwarding goes on.
    pub fn release(&self) {
        self.state.send_modify(|state| state.held = false);
    }

    /// How many pieces of what clients sent wait for the end of the hold
    /// now (a statement sent during the hold is one, or a few).
    pub fn held_from_clients(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Dropping `state` (after this) ends every connection task.
        self.accept.abort();
    }
}

async fn proxy_connection(
    mut client: tokio::net::TcpStream,
    target: std::net::SocketAddr,
    mut states: tokio::sync::watch::Receiver<ProxyState>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let born = *states.borrow_and_update();
    if born.cut {
        // Accepted into the blackhole: never answered, closed once it heals.
        let _ = states.wait_for(|s| !s.cut || s.resets != born.resets).await;
        return;
    }
    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let forward = futures_util::future::join(
        forward(client_read, upstream_write, states.clone(), Some(&held)),
        forward(upstream_read, client_write, states.clone(), None),
    );
    let interrupted = tokio::select! {
        _ = forward => None,
        state = states.wait_for(|s| s.cut || s.resets != born.resets) => state.ok().map(|s| *s),
    };
    if let Some(state) = interrupted
        && state.cut
        && state.resets == born.resets
    {
        // Both sockets stay open and silent until the cut ends.
        let _ = states.wait_for(|s| !s.cut || s.resets != born.resets).await;
    }
}

/// Copies one direction of a proxied connection; while the proxy holds,
/// what was read waits here (and what follows in the socket buffers).
async fn forward(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    mut states: tokio::sync::watch::Receiver<ProxyState>,
    held: Option<&std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if states.borrow().held {
            // Counted while it waits (and not after: a cut may drop it).
            let waiting = held.map(HeldCount::new);
            let released = states.wait_for(|s| !s.held).await.is_ok();
            drop(waiting);
            if !released {
                break;
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// One read waiting for the end of a hold, counted while it lives.
struct HeldCount<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> HeldCount<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        HeldCount(count)
    }
}

impl Drop for HeldCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Applies only the first `n` embedded migrations to the database at `url`
/// (to test migrating from an older schema).
pub async fn run_first_migrations(url: &str, n: usize) {
    let url = url.to_owned();
    match url::parse(&url).expect("valid url") {
        Target::Postgres => {
            tokio::task::spawn_blocking(move || {
                let mut conn: AsyncConnectionWrapper<AsyncPgConnection> =
                    diesel::Connection::establish(&url).expect("connect");
                SimpleConnection::batch_execute(
                    &mut conn,
                    "CREATE SCHEMA IF NOT EXISTS cascade; SET search_path TO cascade",
                )
                .expect("schema");
                let mut migrations = MigrationSource::<diesel::pg::Pg>::migrations(&PG_MIGRATIONS)
                    .expect("embedded migrations");
                migrations.sort_by_key(|m| m.name().version().to_string());
                // Creates diesel's bookkeeping table.
                conn.applied_migrations().expect("migration table");
                for migration in migrations.iter().take(n) {
                    conn.run_migration(&**migration).expect("migration");
                }
            })
            .await
            .expect("migration task");
        }
        Target::SqliteFile(path) => {
            tokio::task::spawn_blocking(move || {
                let mut conn: diesel::SqliteConnection =
                    diesel::Connection::establish(&path.to_string_lossy()).expect("open");
                let mut migrations =
                    MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
                        .expect("embedded migrations");
                migrations.sort_by_key(|m| m.name().version().to_string());
                // Creates diesel's bookkeeping table.
                conn.applied_migrations().expect("migration table");
                for migration in migrations.iter().take(n) {
                    conn.run_migration(&**migration).expect("migration");
                }
            })
            .await
            .expect("migration task");
        }
        Target::SqliteMemory => panic!("an in-memory database cannot be migrated from outside"),
    }
}

/// Runs raw SQL on the database at `url` (on PostgreSQL with the `cascade`
/// schema first on the search path).
pub async fn execute_sql(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    match url::parse(&url).expect("valid url") {
        Target::Postgres => {
            let mut conn = AsyncPgConnection::establish(&url).await.expect("connect");
            conn.batch_execute(&format!("SET search_path TO cascade, public; {sql}"))
                .await
                .expect("sql");
        }
        Target::SqliteFile(path) => {
            tokio::task::spawn_blocking(move || {
                let mut conn: diesel::SqliteConnection =
                    diesel::Connection::establish(&path.to_string_lossy()).expect("open");
                conn.batch_execute(&sql).expect("sql");
            })
            .await
            .expect("sql task");
        }
        Target::SqliteMemory => panic!("an in-memory database cannot be reached from outside"),
    }
}

/// A PostgreSQL session of the test's own: one connection with the `cascade`
/// schema first on its search path, kept open across awaits, so that a test
/// can hold a transaction and its locks while the engine runs.
pub struct PgSession {
    conn: AsyncPgConnection,
}

impl std::fmt::Debug for PgSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSession").finish_non_exhaustive()
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

impl PgSession {
    /// Connects to the database at `url`.
    pub async fn connect(url: &str) -> PgSession {
        let mut conn = AsyncPgConnection::establish(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {} failed: {e}", url::mask_password(url)));
        conn.batch_execute("SET search_path TO cascade, public")
            .await
            .expect("search_path");
        PgSession { conn }
    }

    /// Runs SQL statements (`BEGIN`, `INSERT …`, `ROLLBACK`…) in this session.
    pub async fn execute(&mut self, sql: &str) {
        self.conn
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs a query whose one row has one `bigint` column named `n`.
    pub async fn count(&mut self, sql: &str) -> i64 {
        let count: Count = diesel_async::RunQueryDsl::get_result(diesel::sql_query(sql), &mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        count.n
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_database_names() {
        assert_eq!(
            with_database("postgres://root@127.0.0.1:5432/test", "x"),
            "postgres://root@127.0.0.1:5432/x"
        );
        assert_eq!(with_database("postgres://root@h", "x"), "postgres://root@h/x");
        assert_eq!(
            with_database("postgres://root@h/db?sslmode=disable", "x"),
            "postgres://root@h/x?sslmode=disable"
        );
    }
}
