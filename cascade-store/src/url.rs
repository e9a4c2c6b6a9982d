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
    if !url.contains("://") && url.contains('=') && !url.starts_with("sqlite:") {
        return Err(malformed(
            url,
            "key=value connection strings are not supported: write \
             postgres://user:password@host:port/database (percent-encode reserved characters)",
        ));
    }
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

/// Replaces every password in a connection string with `***`, in both forms
/// PostgreSQL accepts:
///
/// - URLs, `scheme://user:password@host/…`, and a `password=` query
///   parameter. The password may contain `/`, `?`, `@` or `:` unencoded (a
///   malformed URL, but one that a user may well write): the user
///   information ends at the last `@` before the query, or at the last `@`
///   at all when there is none before the first `?`. When in doubt, more is
///   masked, never less.
/// - key/value strings, `host=db user=app password=secret`, with the value
///   bare or single-quoted (`password='a b\'c'`).
pub(crate) fn mask_password(url: &str) -> String {
    if url.contains("://") {
        mask_url(url)
    } else {
        mask_key_value(url)
    }
}

fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let before_query = rest.find('?').map_or(rest, |q| &rest[..q]);
    let (head, tail) = match before_query.rfind('@').or_else(|| rest.rfind('@')) {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.find(':').map_or(userinfo, |colon| &userinfo[..colon]);
            let password = if user.len() < userinfo.len() { ":***" } else { "" };
            (
                format!("{}{user}{password}", &url[..authority_start]),
                &rest[at..],
            )
        }
        None => (url[..authority_start].to_owned(), rest),
    };
    format!("{head}{}", mask_query(tail))
}

/// Masks `password=` parameters in the query of `host/path?query`. A
/// segment without `=` after a password is taken as part of it (an
/// unencoded `&` in the password).
fn mask_query(tail: &str) -> String {
    let Some(query_start) = tail.find('?') else {
        return tail.to_owned();
    };
    let (base, query) = tail.split_at(query_start + 1);
    let mut pairs: Vec<String> = Vec::new();
    let mut in_password = false;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                pairs.push(format!("{key}=***"));
                in_password = true;
            }
            None if in_password => {}
            _ => {
                pairs.push(pair.to_owned());
                in_password = false;
            }
        }
    }
    format!("{base}{}", pairs.join("&"))
}

/// Masks the value of every `password` key of a libpq key/value string.
fn mask_key_value(text: &str) -> String {
    let mut masked = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = find_password_key(rest) {
        // Everything up to and including `=` and the blanks after it.
        let mut value_start = found.value_start;
        value_start += rest[value_start..].len() - rest[value_start..].trim_start().len();
        masked.push_str(&rest[..value_start]);
        masked.push_str("***");
        rest = &rest[value_start + value_len(&rest[value_start..])..];
    }
    masked.push_str(rest);
    masked
}

struct PasswordKey {
    /// Just after the `=`.
    value_start: usize,
}

/// The first `password` key (a whole word, any case) followed by `=`.
fn find_password_key(text: &str) -> Option<PasswordKey> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let start = from + i;
        let end = start + "password".len();
        let word_start = start == 0 || !is_word(lower.as_bytes()[start - 1]);
        let after = lower[end..].trim_start();
        if word_start && after.starts_with('=') {
            let equals = end + (lower[end..].len() - after.len());
            return Some(PasswordKey {
                value_start: equals + 1,
            });
        }
        from = end;
    }
    None
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

/// The length of a key/value string's value at the start of `text`: up to
/// the closing quote of a quoted value (backslash escapes), or the next
/// blank.
fn value_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    if bytes.first() == Some(&b'\'') {
        let mut i = 1;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'\'' => return i + 1,
                _ => i += 1,
            }
        }
        // Unterminated: all of it.
        return text.len();
    }
    text.find(char::is_whitespace).unwrap_or(text.len())
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
    fn masks_passwords_with_reserved_characters() {
        for (url, masked) in [
            ("postgres://app:ab/cd@db/prod", "postgres://app:***@db/prod"),
            (
                "postgres://app:a/b/c@db:5432/prod?sslmode=off",
                "postgres://app:***@db:5432/prod?sslmode=off",
            ),
            ("postgres://app:ab?cd@db/prod", "postgres://app:***@db/prod"),
            ("postgres://app:a@b:c@db/prod", "postgres://app:***@db/prod"),
            ("postgres://app:a%2Fb@db/prod", "postgres://app:***@db/prod"),
            (
                "postgres://app@db/prod?application_name=a@b",
                "postgres://app@db/prod?application_name=a@b",
            ),
            (
                "postgres://db/prod?user=app&password=se&cret&sslmode=off",
                "postgres://db/prod?user=app&password=***&sslmode=off",
            ),
            ("postgres://db/prod?PASSWORD=x", "postgres://db/prod?PASSWORD=***"),
        ] {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }

    #[test]
    fn masks_key_value_passwords() {
        for (text, masked) in [
            (
                "host=db user=app password=secret dbname=prod",
                "host=db user=app password=*** dbname=prod",
            ),
            ("password = secret host=db", "password = *** host=db"),
            (
                "host=db password='sec ret' dbname=prod",
                "host=db password=*** dbname=prod",
            ),
            (
                r"host=db password='it\'s' dbname=prod",
                "host=db password=*** dbname=prod",
            ),
            ("host=db PassWord=s3cr/et", "host=db PassWord=***"),
            ("host=db password='unterminated", "host=db password=***"),
            ("host=db user=password", "host=db user=password"),
            ("host=db mypassword=x", "host=db mypassword=x"),
            (
                "host=db password=a password=b",
                "host=db password=*** password=***",
            ),
        ] {
            assert_eq!(mask_password(text), masked, "{text}");
        }
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
