//! Opening pools, running migrations, and checking out connections with retries.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::Manager;
use diesel::SqliteConnection;
use diesel::connection::SimpleConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError as ConnError, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::FutureExt;
use tracing::{debug, info, warn};

use crate::error::{BoxError, Result, StoreError};
use crate::options::StoreOptions;

pub(crate) const PG_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");
pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Serialises migrations of concurrent processes on one PostgreSQL database.
const PG_MIGRATION_LOCK: i64 = 0x0063_6173_6361_6465; // "cascade" in ASCII

/// SQLite connections as the store uses them.
pub(crate) type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// The connection pools of one store.
pub(crate) enum Pools {
    Pg(Pool<AsyncPgConnection>),
    Sqlite(SqlitePools),
}

/// SQLite: one writer connection (all writes are serialised on it) and a
/// small read pool; an in-memory database has only the writer. A file
/// database also has a [`Checkpointer`].
pub(crate) struct SqlitePools {
    pub(crate) writer: Pool<SqliteConn>,
    pub(crate) readers: Option<Pool<SqliteConn>>,
    pub(crate) checkpointer: Option<Checkpointer>,
}

/// WAL pages after which a commit checkpoints by itself (SQLite's
/// auto-checkpoint, run inside the committing call). The default is 1,000
/// pages, which put a checkpoint with its `fsync`s into every ~33rd chain
/// step (p99 dispatch 4.5 ms). With the [`Checkpointer`] doing the work in
/// the background this is only a backstop that keeps the WAL bounded
/// (~40 MiB with 4 KiB pages) should the background thread fall behind or
/// be gone.
const SQLITE_WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

/// How often the [`Checkpointer`] runs `PRAGMA wal_checkpoint(PASSIVE)`.
const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Checkpoints a file database's WAL from a thread of its own, on a
/// connection of its own, every [`SQLITE_CHECKPOINT_INTERVAL`], so that
/// commits on the writer do not run checkpoints (and their `fsync`s)
/// themselves. `PASSIVE` never waits for nor blocks the writer or readers:
/// it copies what it can, and once the WAL is fully copied the writer starts
/// it over from the beginning, so the file stays small. The thread stops
/// when the store (this value) is dropped.
pub(crate) struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Checkpointer {
    /// Starts the thread. `None` (with a warning) if the thread cannot be
    /// started; the writer's auto-checkpoint then does the work, as SQLite
    /// does by default.
    pub(crate) fn start(path: &str) -> Option<Checkpointer> {
        use diesel::Connection;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let path = path.to_owned();
        let spawned = std::thread::Builder::new()
            .name("cascade-sqlite-checkpoint".into())
            .spawn(move || {
                let mut conn = match SqliteConnection::establish(&path) {
                    Ok(conn) => conn,
                    Err(error) => {
                        warn!(%error, "cannot open the SQLite checkpoint connection; commits checkpoint the WAL themselves");
                        return;
                    }
                };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(SQLITE_CHECKPOINT_INTERVAL)
                {
                    if let Err(error) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE)") {
                        debug!(%error, "background WAL checkpoint failed");
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Checkpointer { _stop: stop }),
            Err(error) => {
                warn!(%error, "cannot start the SQLite checkpoint thread; commits checkpoint the WAL themselves");
                None
            }
        }
    }
}

impl SqlitePools {
    pub(crate) fn reader(&self) -> &Pool<SqliteConn> {
        self.readers.as_ref().unwrap_or(&self.writer)
    }
}

/// Checks out a pooled connection, retrying failures to connect with
/// exponential backoff. Only acquiring is retried: nothing has been sent yet,
/// so a retry can never apply a write twice.
pub(crate) async fn checkout<C>(pool: &Pool<C>, url: &str, options: &StoreOptions) -> Result<Object<C>>
where
    C: Send + 'static,
    AsyncDieselConnectionManager<C>: Manager<Type = C, Error = ConnError>,
{
    let mut delay = options.connect_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match pool.get().await {
            Ok(conn) => return Ok(conn),
            Err(error) if attempts <= options.connect_retries => {
                warn!(url, attempts, ?delay, %error, "database connection failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(options.connect_backoff_max);
            }
            Err(error) => {
                return Err(StoreError::Unavailable {
                    url: url.to_owned(),
                    attempts,
                    source: Box::new(error),
                });
            }
        }
    }
}

/// The session settings of every PostgreSQL connection of a store.
pub(crate) fn pg_session_setup(options: &StoreOptions) -> String {
    format!(
        "SET search_path TO cascade; SET statement_timeout = {}",
        options.statement_timeout.as_millis()
    )
}

pub(crate) fn pg_pool(url: &str, options: &StoreOptions) -> Result<Pool<AsyncPgConnection>> {
    let connect_timeout = options.connect_timeout;
    let setup = Arc::new(pg_session_setup(options));
    let mut config = ManagerConfig::<AsyncPgConnection>::default();
    // A checkout costs no round trip; a dead connection is detected by
    // `is_broken` on return and dropped from the pool.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let setup = Arc::clone(&setup);
        async move {
            let connected = tokio::time::timeout(connect_timeout, async {
                let mut conn = AsyncPgConnection::establish(&url).await?;
                conn.batch_execute(&setup)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            });
            connected.await.map_err(|_| {
                diesel::ConnectionError::BadConnection(format!(
                    "connecting timed out after {connect_timeout:?}"
                ))
            })?
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(options.pg_pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.acquire_timeout))
        .create_timeout(Some(options.connect_timeout + Duration::from_secs(1)))
        .build()
        .map_err(|source| StoreError::MalformedUrl {
            url: crate::url::mask_password(url),
            problem: "cannot build a connection pool for it",
            source: Some(Box::new(source)),
        })
}

/// Runs the embedded PostgreSQL migrations under an advisory lock.
pub(crate) async fn pg_migrate(
    pool: &Pool<AsyncPgConnection>,
    url: &str,
    options: &StoreOptions,
) -> Result<()> {
    let mut conn = Object::take(checkout(pool, url, options).await?);
    // The schema must exist before diesel creates its bookkeeping table in it.
    // Migrations may rewrite large tables: no statement timeout (the
    // connection is taken out of the pool and closed afterwards).
    conn.batch_execute(&format!(
        "SET statement_timeout = 0; SELECT pg_advisory_lock({PG_MIGRATION_LOCK}); \
         CREATE SCHEMA IF NOT EXISTS cascade; SET search_path TO cascade"
    ))
    .await
    .map_err(|source| StoreError::Migration {
        url: url.to_owned(),
        source: Box::new(source),
    })?;
    let outcome = tokio::task::spawn_blocking(move || {
        let mut wrapper = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        let outcome = migrate(&mut wrapper, PG_MIGRATIONS);
        // Session-level lock: released explicitly, or when the connection closes.
        let unlock = format!("SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})");
        if let Err(error) = SimpleConnection::batch_execute(&mut wrapper, &unlock) {
            warn!(%error, "releasing the migration lock failed; it is freed when the connection closes");
        }
        outcome
    })
    .await
    .map_err(|join| StoreError::Migration {
        url: url.to_owned(),
        source: Box::new(join),
    })?;
    outcome.into_store_error(url)
}

pub(crate) struct SqliteSetup {
    pub(crate) path: String,
    pub(crate) memory: bool,
}

pub(crate) fn sqlite_pools(setup: &SqliteSetup, options: &StoreOptions) -> Result<SqlitePools> {
    let pool = |read_only: bool, size: usize| {
        let mut pragmas = format!(
            "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = {};",
            options.busy_timeout.as_millis(),
            options.sqlite_synchronous.as_str()
        );
        if !setup.memory {
            pragmas.push_str(" PRAGMA journal_mode = WAL;");
            if !read_only {
                pragmas.push_str(&format!(
                    " PRAGMA wal_autocheckpoint = {SQLITE_WAL_AUTOCHECKPOINT_PAGES};"
                ));
            }
        }
        if read_only {
            pragmas.push_str(" PRAGMA query_only = ON;");
        }
        let pragmas = Arc::new(pragmas);
        let mut config = ManagerConfig::<SqliteConn>::default();
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |path| {
            let path = path.to_owned();
            let pragmas = Arc::clone(&pragmas);
            async move {
                let mut conn = SqliteConn::establish(&path).await?;
                conn.batch_execute(&pragmas)
                    .await
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(conn)
            }
            .boxed()
        });
        let manager = AsyncDieselConnectionManager::new_with_config(setup.path.clone(), config);
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .build()
            .map_err(|source| StoreError::SqliteOpen {
                path: setup.path.clone().into(),
                source: Box::new(source),
            })
    };
    Ok(SqlitePools {
        writer: pool(false, 1)?,
        readers: if setup.memory {
            None
        } else {
            Some(pool(true, options.sqlite_read_pool_size.max(1))?)
        },
        checkpointer: None,
    })
}

/// Creates the file's directory if needed, and the file itself, readable and
/// writable by its owner only (`0600`), if it does not exist yet: SQLite
/// would create it with the umask's permissions (usually world-readable),
/// and its `-wal` and `-shm` files take the permissions of the database
/// file. An existing file is left as it is. Errors become
/// [`StoreError::SqliteOpen`].
pub(crate) fn prepare_sqlite_path(path: &Path) -> Result<()> {
    let failed = |source: std::io::Error| StoreError::SqliteOpen {
        path: path.to_owned(),
        source: Box::new(source),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(failed(error)),
    }
}

/// Opens the writer connection and migrates through it (an in-memory
/// database exists only on that connection).
pub(crate) async fn sqlite_migrate(pools: &SqlitePools, path: &Path, url: &str) -> Result<()> {
    let mut conn = pools
        .writer
        .get()
        .await
        .map_err(|source| StoreError::SqliteOpen {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    let outcome = conn
        .spawn_blocking(|conn| Ok(migrate(conn, SQLITE_MIGRATIONS)))
        .await
        .map_err(|source| StoreError::Migration {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
    outcome.into_store_error(url)
}

pub(crate) enum MigrationOutcome {
    Done,
    TooNew { applied: String, known: String },
    Failed(BoxError),
}

impl MigrationOutcome {
    fn into_store_error(self, url: &str) -> Result<()> {
        match self {
            MigrationOutcome::Done => Ok(()),
            MigrationOutcome::TooNew { applied, known } => Err(StoreError::SchemaTooNew {
                url: url.to_owned(),
                applied,
                known,
            }),
            MigrationOutcome::Failed(source) => Err(StoreError::Migration {
                url: url.to_owned(),
                source,
            }),
        }
    }
}

/// Refuses a database migrated by a newer build, then applies what is pending.
fn migrate<DB, C>(conn: &mut C, migrations: EmbeddedMigrations) -> MigrationOutcome
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
    EmbeddedMigrations: diesel::migration::MigrationSource<DB>,
{
    use diesel::migration::MigrationSource;
    let known: Vec<String> = match MigrationSource::<DB>::migrations(&migrations) {
        Ok(list) => list.iter().map(|m| m.name().version().to_string()).collect(),
        Err(error) => return MigrationOutcome::Failed(error),
    };
    let applied = match conn.applied_migrations() {
        Ok(applied) => applied,
        Err(error) => return MigrationOutcome::Failed(error),
    };
    if let Some(unknown) = applied.iter().find(|v| !known.contains(&v.to_string())) {
        return MigrationOutcome::TooNew {
            applied: unknown.to_string(),
            known: known.iter().max().cloned().unwrap_or_default(),
        };
    }
    match conn.run_pending_migrations(migrations) {
        Ok(done) => {
            for version in &done {
                info!(%version, "applied migration");
            }
            debug!(n_applied = done.len(), "database schema is up to date");
            MigrationOutcome::Done
        }
        Err(error) => MigrationOutcome::Failed(error),
    }
}
