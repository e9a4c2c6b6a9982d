//! Database URL parsing and password masking.

use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Result, StoreError};

/// The file used when no URL is given.
pub(crate) const DEFAULT_SQLITE_PATH: &str = "./cascade.db";

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Postgres,
    SqliteMemory,
    SqliteFile(PathBuf),
}

/// Classifies and validates a database URL. The URL itself is kept by the caller.
pub(crate) fn parse(url: &str) -> Result<Target> {
    let Some(colon) = url.find(':') else {
        return Err(malformed(
            url,
            "missing scheme: expected postgres://… or sqlite://…",
        ));
    };
    let scheme = &url[..colon];
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(malformed(
            url,
            "missing scheme: expected postgres://… or sqlite://…",
        ));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => {
            let config =
                tokio_postgres::Config::from_str(url).map_err(|source| StoreError::MalformedUrl {
                    url: mask_password(url),
                    problem: "not a valid postgresql connection url",
                    source: Some(Box::new(source)),
                })?;
            if config.get_hosts().is_empty() {
                return Err(malformed(url, "no host: write postgres://user@host/database"));
            }
            Ok(Target::Postgres)
        }
        "sqlite" => {
            let rest = &url[colon + 1..];
            let path = rest.strip_prefix("//").unwrap_or(rest);
            match path {
                "" => Err(malformed(url, "no file path: write sqlite://path/to/file.db")),
                ":memory:" => Ok(Target::SqliteMemory),
                _ => Ok(Target::SqliteFile(PathBuf::from(path))),
            }
        }
        other => Err(StoreError::UnknownScheme {
            scheme: other.to_owned(),
            url: mask_password(url),
        }),
    }
}

fn malformed(url: &str, problem: &'static str) -> StoreError {
    StoreError::MalformedUrl {
        url: mask_password(url),
        problem,
        source: None,
    }
}

/// Replaces the password of `scheme://user:password@host/…` (and any
/// `password=` query parameter) with `***`.
pub(crate) fn mask_password(url: &str) -> String {
    let mut masked = match url.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let authority_end = url[authority_start..]
                .find(['/', '?'])
                .map_or(url.len(), |i| authority_start + i);
            let authority = &url[authority_start..authority_end];
            match authority.rfind('@') {
                Some(at) => {
                    let userinfo = &authority[..at];
                    match userinfo.find(':') {
                        Some(colon) => format!(
                            "{}{}:***{}",
                            &url[..authority_start],
                            &userinfo[..colon],
                            &url[authority_start + at..]
                        ),
                        None => url.to_owned(),
                    }
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    if let Some(query_start) = masked.find('?') {
        let (base, query) = masked.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        masked = format!("{base}{}", query.join("&"));
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_password("postgres://user:secret@host:5432/db"),
            "postgres://user:***@host:5432/db"
        );
        assert_eq!(
            mask_password("postgres://user@host/db"),
            "postgres://user@host/db"
        );
        assert_eq!(
            mask_password("postgres://u:p@ss@host/db?password=x&sslmode=off"),
            "postgres://u:***@host/db?password=***&sslmode=off"
        );
        assert_eq!(mask_password("sqlite://./a.db"), "sqlite://./a.db");
    }

    #[test]
    fn classifies_urls() {
        assert_eq!(parse("sqlite::memory:").ok(), Some(Target::SqliteMemory));
        assert_eq!(
            parse("sqlite://relative/a.db").ok(),
            Some(Target::SqliteFile(PathBuf::from("relative/a.db")))
        );
        assert_eq!(
            parse("sqlite:///abs/a.db").ok(),
            Some(Target::SqliteFile(PathBuf::from("/abs/a.db")))
        );
        assert_eq!(parse("postgresql://u@h/db").ok(), Some(Target::Postgres));
        assert!(matches!(
            parse("mysql://u@h/db"),
            Err(StoreError::UnknownScheme { .. })
        ));
        assert!(matches!(
            parse("cascade.db"),
            Err(StoreError::MalformedUrl { .. })
        ));
        assert!(matches!(
            parse("postgres://u:pw@h:notaport/db"),
            Err(StoreError::MalformedUrl { url, .. }) if url == "postgres://u:***@h:notaport/db"
        ));
    }
}
