//! Owner ids — who runs a job — and whether that owner is provably gone.
//!
//! An engine's id is `host:pid:nonce`. A job owned by a process of this host
//! that no longer exists (SIGKILLed, crashed, exited without a shutdown) can
//! be taken over at once instead of after its lease runs out. Anything else —
//! another host, a process that still exists, an id in another format — is
//! treated as alive until its lease ends.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use cascade_store::Job;
use chrono::{DateTime, Utc};

/// An unfinished job whose owner is gone, from [`Cascade::orphaned_jobs`](crate::Cascade::orphaned_jobs).
#[derive(Debug, Clone, PartialEq)]
pub struct OrphanedJob {
    /// The job as stored.
    pub job: Job,
    /// Why it counts as orphaned.
    pub reason: OrphanReason,
}

/// Why a job counts as orphaned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OrphanReason {
    /// Nobody owns it: its engine shut down (or crashed before claiming it).
    /// Any engine that registers its DAG resumes it.
    Unowned,
    /// Its owner stopped renewing its lease, which ended at `since`.
    LeaseExpired {
        /// The engine that owned it.
        owner: String,
        /// When the lease ended.
        since: DateTime<Utc>,
    },
    /// Its owner was a process of this host that no longer exists.
    OwnerGone {
        /// The engine that owned it.
        owner: String,
    },
}

/// Why `job` counts as orphaned at `now`, or `None` while its owner may run it.
pub(crate) fn orphan_reason(job: &Job, now: DateTime<Utc>) -> Option<OrphanReason> {
    let Some(owner) = job.owner.clone() else {
        return Some(OrphanReason::Unowned);
    };
    match job.lease_expires_at {
        Some(since) if since < now => Some(OrphanReason::LeaseExpired { owner, since }),
        None => Some(OrphanReason::LeaseExpired {
            owner,
            since: job.created_at,
        }),
        _ if is_gone(&owner) => Some(OrphanReason::OwnerGone { owner }),
        _ => None,
    }
}

/// The engines alive in this process, by id: an owner with this process's pid
/// is gone when it is not listed here.
fn live_engines() -> &'static Mutex<HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// This machine's name, as it appears in owner ids.
pub(crate) fn this_host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.replace(':', "_"))
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// A new id for an engine of this process, registered as alive until
/// [`retire`] is called with it.
pub(crate) fn new_engine_id() -> String {
    let nanos = Utc::now().timestamp_subsec_nanos();
    let id = format!("{}:{}:{nanos:08x}", this_host(), std::process::id());
    live_engines()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone());
    id
}

/// Marks an engine of this process as stopped.
pub(crate) fn retire(id: &str) {
    live_engines()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
}

/// The host and process id named by an owner id, if it has that form.
fn parse(owner: &str) -> Option<(&str, u32)> {
    let mut parts = owner.rsplitn(3, ':');
    let _nonce = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    Some((host, pid))
}

/// Whether `owner` is provably gone: an engine of this host whose process no
/// longer exists, or an engine of this process that stopped.
pub(crate) fn is_gone(owner: &str) -> bool {
    let Some((host, pid)) = parse(owner) else {
        return false;
    };
    if host != this_host() {
        return false;
    }
    if pid == std::process::id() {
        return !live_engines()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(owner);
    }
    !process_exists(pid)
}

/// Whether a process with this pid exists (and is not a zombie, which runs
/// nothing any more).
fn process_exists(pid: u32) -> bool {
    let proc_root = std::path::Path::new("/proc");
    if proc_root.join("self").exists() {
        return match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_none_or(|state| state != 'Z' && state != 'X'),
            Err(_) => false,
        };
    }
    signal_reaches(pid)
}

#[cfg(unix)]
fn signal_reaches(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(pid) else { return true };
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

#[cfg(not(unix))]
fn signal_reaches(_pid: u32) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_this_process_are_alive_until_retired() {
        let id = new_engine_id();
        assert!(!is_gone(&id));
        retire(&id);
        assert!(is_gone(&id));
    }

    #[test]
    fn other_hosts_and_foreign_ids_are_never_gone() {
        assert!(!is_gone("another-host:1:00000000"));
        assert!(!is_gone("engine-a"));
        assert!(!is_gone(&format!("{}:notapid:0", this_host())));
    }

    #[test]
    fn a_process_of_this_host_is_gone_once_it_died() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let owner = format!("{}:{}:0", this_host(), child.id());
        assert!(!is_gone(&owner), "a running process is alive");
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(is_gone(&owner), "a killed and reaped process is gone");
    }
}
