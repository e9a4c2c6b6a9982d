//! The side-effect ledger: one file that every process of the run appends
//! to, one line per event, each line written with a single `write` on a file
//! opened with `O_APPEND`, so that lines from concurrent writers never mix.
//!
//! A line is `<unix ms> <kind> key=value key=value …`; values hold no spaces.
//! Kinds written by task handlers and shell commands: `start` and `end`
//! (`outcome=ok|err|stop|drop|term`); by callbacks: `callback`; by every
//! engine process: `ready` and `stall`; by the harness: `spawn`, `kill`,
//! `exit`, `gone`, `fault`, `trigger`, `cancel`, `rerun`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: every process of the run is on this
/// machine, so their clocks agree.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An open ledger file.
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    file: File,
}

impl Ledger {
    pub(crate) fn open(path: &Path) -> std::io::Result<Ledger> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Ledger {
            path: path.to_owned(),
            file,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `<now> <kind> k=v …` in one write. A failed write is
    /// reported on stderr: a ledger with holes would make the checks wrong.
    pub(crate) fn write(&self, kind: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
        self.write_at(now_ms(), kind, fields);
    }

    pub(crate) fn write_at(&self, at: u64, kind: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
        let mut line = format!("{at} {kind}");
        for (key, value) in fields {
            let value = value.to_string().replace(char::is_whitespace, "_");
            line.push_str(&format!(" {key}={value}"));
        }
        line.push('\n');
        if let Err(error) = (&self.file).write_all(line.as_bytes()) {
            eprintln!(
                "chaos: cannot append to the ledger {}: {error}",
                self.path.display()
            );
        }
    }
}

/// One parsed ledger line.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) at: u64,
    pub(crate) kind: String,
    pub(crate) fields: BTreeMap<String, String>,
    /// The line as written, for evidence.
    pub(crate) line: String,
}

impl Entry {
    pub(crate) fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    pub(crate) fn number(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(|v| v.parse().ok())
    }
}

/// Parses one line; `None` for a line that is not `<ms> <kind> …`.
pub(crate) fn parse_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let at = words.next()?.parse().ok()?;
    let kind = words.next()?.to_owned();
    let fields = words
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some(Entry {
        at,
        kind,
        fields,
        line: line.to_owned(),
    })
}

/// Every line of the ledger, in file order, and the lines that did not parse.
pub(crate) fn read(path: &Path) -> std::io::Result<(Vec<Entry>, Vec<String>)> {
    let text = std::fs::read_to_string(path)?;
    let mut entries = Vec::new();
    let mut garbled = Vec::new();
    for line in text.lines() {
        match parse_line(line) {
            Some(entry) => entries.push(entry),
            None => garbled.push(line.to_owned()),
        }
    }
    Ok((entries, garbled))
}
