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
