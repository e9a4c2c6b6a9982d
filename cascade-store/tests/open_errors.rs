//! Each way of failing to open a store gets its own typed error.

use std::time::Duration;

use cascade_store::{Backend, ErrorKind, Store, StoreError, StoreOptions};

#[tokio::test]
async fn unknown_scheme() {
    let err = Store::open(Some("mysql://user:secret@host/db"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownScheme { scheme, .. } if scheme == "mysql"),
        "{err:?}"
    );
    assert!(err.to_string().contains("mysql://user:***@host/db"), "{err}");
    assert!(!err.to_string().contains("secret"));
    assert_eq!(err.kind(), ErrorKind::Other);
}

#[tokio::test]
async fn malformed_urls() {
    for url in [
        "cascade.db",
        "postgres://user:secret@host:notaport/db",
        "sqlite://",
    ] {
        let err = Store::open(Some(url)).await.unwrap_err();
        assert!(matches!(err, StoreError::MalformedUrl { .. }), "{url}: {err:?}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}

#[tokio::test]
async fn unreachable_server() {
    // Nothing listens on port 1.
    let options = StoreOptions {
        connect_retries: 2,
        connect_backoff: Duration::from_millis(10),
        ..StoreOptions::default()
    };
    let err = Store::open_with(Some("postgres://root:secret@127.0.0.1:1/db"), options)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { attempts: 3, .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(
        err.to_string().contains("postgres://root:***@127.0.0.1:1/db"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn unwritable_sqlite_path() {
    // A regular file where a directory is needed cannot be created, even as root.
    let blocker = std::env::temp_dir().join(format!("cascade-blocker-{}", std::process::id()));
    std::fs::write(&blocker, b"not a directory").unwrap();
    let url = format!("sqlite://{}/sub/cascade.db", blocker.display());
    let err = Store::open(Some(&url)).await.unwrap_err();
    std::fs::remove_file(&blocker).unwrap();
    assert!(matches!(err, StoreError::SqliteOpen { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Other);
}

#[tokio::test]
async fn sqlite_memory_and_relative_paths_work() {
    let store = Store::open(Some("sqlite::memory:")).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(store.list_dags().await.unwrap().is_empty());

    // Relative to the working directory; the directory is created.
    let dir = format!("target-test-sqlite-{}", std::process::id());
    let store = Store::open(Some(&format!("sqlite://{dir}/nested/cascade.db")))
        .await
        .unwrap();
    assert!(store.list_dags().await.unwrap().is_empty());
    assert!(std::path::Path::new(&dir).join("nested/cascade.db").is_file());
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Everything a user can see of an error: its message, its `Debug` form and
/// those of every cause.
fn everything_shown(err: &StoreError) -> String {
    let mut shown = format!("{err}\n{err:?}\n");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        shown.push_str(&format!("{cause}\n{cause:?}\n"));
        source = cause.source();
    }
    shown
}

#[tokio::test]
async fn passwords_never_shown() {
    let options = StoreOptions {
        connect_retries: 0,
        connect_timeout: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    // Each password is made of the pieces `Zq8w` and `Kp7y`.
    for url in [
        // Unencoded reserved characters in the password.
        "postgres://app:Zq8w/Kp7y@127.0.0.1:1/prod",
        "postgres://app:Zq8w/Kp7y@127.0.0.1/prod",
        "postgres://app:Zq8w?Kp7y@127.0.0.1:1/prod",
        "postgres://app:Zq8w@Kp7y@127.0.0.1:1/prod",
        "postgres://app:Zq8w:Kp7y@127.0.0.1:1/prod",
        "postgres://app:Zq8w&Kp7y@127.0.0.1:notaport/prod",
        "postgres://127.0.0.1:1/prod?user=app&password=Zq8wKp7y",
        // libpq key/value strings.
        "host=127.0.0.1 port=1 user=app password=Zq8wKp7y dbname=prod",
        "host=127.0.0.1 user=app password='Zq8w Kp7y' dbname=prod",
        "host=127.0.0.1 user=app password=Zq8w:Kp7y dbname=prod",
        "mysql://app:Zq8w/Kp7y@db/prod",
    ] {
        let err = Store::open_with(Some(url), options.clone()).await.unwrap_err();
        let shown = everything_shown(&err);
        for secret in ["Zq8w", "Kp7y"] {
            assert!(!shown.contains(secret), "{url}: `{secret}` shown in:\n{shown}");
        }
    }
}

#[tokio::test]
async fn key_value_strings_are_refused_with_a_hint() {
    let err = Store::open(Some("host=db user=app password=Zq8wKp7y dbname=prod"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::MalformedUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("postgres://"), "{err}");
    assert!(err.to_string().contains("password=***"), "{err}");
    assert!(!err.to_string().contains("Zq8w"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn new_sqlite_files_are_private_and_existing_ones_untouched() {
    use std::os::unix::fs::PermissionsExt;

    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = std::env::temp_dir().join(format!("cascade-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let new = dir.join("new.db");
    let store = Store::open(Some(&format!("sqlite://{}", new.display())))
        .await
        .unwrap();
    store.list_dags().await.unwrap();
    assert_eq!(mode(&new), 0o600, "new database file");
    // SQLite gives its side files (WAL mode, the store is open) the
    // database file's permissions.
    for side in ["new.db-wal", "new.db-shm"] {
        assert_eq!(mode(&dir.join(side)), 0o600, "{side}");
    }
    drop(store);

    let existing = dir.join("existing.db");
    std::fs::write(&existing, b"").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
    let store = Store::open(Some(&format!("sqlite://{}", existing.display())))
        .await
        .unwrap();
    store.list_dags().await.unwrap();
    assert_eq!(mode(&existing), 0o640, "existing database file");
    drop(store);

    std::fs::remove_dir_all(&dir).unwrap();
}
