//! Test harness: fresh databases for the contract suite and for the
//! workspace's integration tests (enable the `__test-util` feature).
//!
//! - [`sqlite_url`] gives a new temporary SQLite file.
//! - [`postgres_url`] gives a freshly created PostgreSQL database on the
//!   server named by `DATABASE_URL`; without it, on a throwaway cluster
//!   started with `initdb`/`pg_ctl` when those are installed (stopped when the
//!   test process exits); otherwise it prints a loud banner and returns `None`,
//!   unless `CASCADE_REQUIRE_POSTGRES=1`, which turns that into a panic.
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
        if std::env::var("CASCADE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
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
/// cluster started once per test process.
fn postgres_admin_url() -> Option<String> {
    static ADMIN_URL: OnceLock<Option<String>> = OnceLock::new();
    ADMIN_URL
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(url),
            _ => start_throwaway_cluster(),
        })
        .clone()
}

fn find_pg_binary(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join(name)).collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("bin").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn start_throwaway_cluster() -> Option<String> {
    let initdb = find_pg_binary("initdb")?;
    let pg_ctl = find_pg_binary("pg_ctl")?;
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let dir = std::env::temp_dir().join(format!("cascade-pg-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).ok()?;
    // initdb refuses to run as root: run the cluster as `postgres` then.
    let as_cluster_user = |program: &Path| {
        if is_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    };
    if is_root {
        let chowned = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !chowned {
            eprintln!(
                "cannot hand {} to the postgres user; no throwaway cluster",
                dir.display()
            );
            return None;
        }
    }
    let data = dir.join("data");
    let initialized = as_cluster_user(&initdb)
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "root", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !initialized {
        eprintln!("initdb failed; no throwaway PostgreSQL cluster");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
        dir.display()
    );
    let started = as_cluster_user(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-w", "-l"])
        .arg(dir.join("log"))
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !started {
        eprintln!("pg_ctl start failed; see {}", dir.join("log").display());
        return None;
    }
    // A detached watchdog stops the cluster once this test process is gone.
    let stop = if is_root {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!("{} -D {} -m immediate stop", pg_ctl.display(), data.display())
    };
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    eprintln!("started a throwaway PostgreSQL cluster on 127.0.0.1:{port}");
    Some(format!("postgres://root@127.0.0.1:{port}/postgres"))
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
