//! The engine processes of a run: two all-in-one engines, a scheduler and
//! two workers, each a child process of this executable behind a TCP proxy
//! of its own (so that one node can be cut off the database alone). A slot
//! keeps its name and proxy across restarts; each process started in it is
//! a new incarnation (`all1.g0`, `all1.g1`, …).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cascade_store::testing::TcpProxy;

use crate::ledger::{self, Ledger};

/// The slots of the default deployment: name and role.
pub(crate) const MIXED: &[(&str, &str)] = &[
    ("all1", "all"),
    ("all2", "all"),
    ("sched", "scheduler"),
    ("work1", "worker"),
    ("work2", "worker"),
];
/// Only all-in-one engines (`--roles all`).
pub(crate) const ALL_IN_ONE: &[(&str, &str)] = &[("all1", "all"), ("all2", "all")];
/// A scheduler and workers only (`--roles distributed`).
pub(crate) const DISTRIBUTED: &[(&str, &str)] =
    &[("sched", "scheduler"), ("work1", "worker"), ("work2", "worker")];

struct Slot {
    name: &'static str,
    role: &'static str,
    proxy: TcpProxy,
    generation: u32,
    node: String,
    child: Option<Child>,
}

/// The engine processes, shared by the fault injector and the harness.
pub(crate) struct Nodes {
    slots: Mutex<Vec<Slot>>,
    exe: PathBuf,
    dir: PathBuf,
    cluster_url: String,
    seed: u64,
    ledger: Arc<Ledger>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nodes")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Nodes {
    /// Starts a proxy per slot in front of `cluster` and every process.
    pub(crate) async fn start(
        deployment: &'static [(&'static str, &'static str)],
        cluster: std::net::SocketAddr,
        cluster_url: String,
        dir: &Path,
        seed: u64,
        ledger: Arc<Ledger>,
    ) -> Result<Nodes, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current executable: {e}"))?;
        let mut slots = Vec::new();
        for &(name, role) in deployment {
            slots.push(Slot {
                name,
                role,
                proxy: TcpProxy::start(cluster).await,
                generation: 0,
                node: String::new(),
                child: None,
            });
        }
        let nodes = Nodes {
            slots: Mutex::new(slots),
            exe,
            dir: dir.to_owned(),
            cluster_url,
            seed,
            ledger,
        };
        for index in 0..deployment.len() {
            nodes.respawn(index)?;
        }
        Ok(nodes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a new incarnation in slot `index` (whose process must be gone).
    pub(crate) fn respawn(&self, index: usize) -> Result<String, String> {
        let mut slots = self.lock();
        let slot = &mut slots[index];
        slot.node = format!("{}.g{}", slot.name, slot.generation);
        slot.generation += 1;
        let log_path = self.dir.join(format!("{}.log", slot.node));
        let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let url = slot.proxy.url_through(&self.cluster_url);
        let ledger_path = self.ledger.path().display().to_string();
        let child = Command::new(&self.exe)
            .args([
                "__node",
                slot.role,
                &slot.node,
                &url,
                &ledger_path,
                &self.seed.to_string(),
            ])
            .env("CHAOS_NODE", &slot.node)
            .env("CHAOS_LEDGER", &ledger_path)
            .env_remove("CASCADE_WORKERS")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", slot.node))?;
        let pid = child.id();
        self.ledger.write(
            "spawn",
            &[("node", &slot.node), ("slot", &slot.name), ("pid", &pid)],
        );
        slot.child = Some(child);
        Ok(slot.node.clone())
    }

    /// SIGKILLs slot `index`'s process and reaps it; `final_stop` marks the
    /// kills at the end of the run. Returns the incarnation killed.
    pub(crate) fn sigkill(&self, index: usize, final_stop: bool) -> Option<String> {
        let mut slots = self.lock();
        let slot = &mut slots[index];
        let mut child = slot.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        let final_stop = u8::from(final_stop);
        self.ledger.write(
            "kill",
            &[("node", &slot.node), ("pid", &pid), ("final", &final_stop)],
        );
        Some(slot.node.clone())
    }

    /// Sends `signal` (`STOP`, `CONT`) to slot `index`'s process.
    pub(crate) fn signal(&self, index: usize, signal: &str) -> Option<String> {
        let slots = self.lock();
        let slot = &slots[index];
        let pid = slot.child.as_ref()?.id();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            eprintln!("chaos: kill -{signal} {pid} failed");
        }
        Some(slot.node.clone())
    }

    /// Cuts (or restores) the network between slot `index` and the database.
    pub(crate) fn set_cut(&self, index: usize, cut: bool) {
        let slots = self.lock();
        if cut {
            slots[index].proxy.cut();
        } else {
            slots[index].proxy.restore();
        }
    }

    /// Records and restarts every process that exited although nobody
    /// killed it: a crash of the engine, reported as a violation.
    pub(crate) fn restart_crashed(&self) {
        let mut crashed = Vec::new();
        {
            let mut slots = self.lock();
            for (index, slot) in slots.iter_mut().enumerate() {
                let Some(child) = slot.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    let pid = child.id();
                    let status = status.to_string();
                    self.ledger.write(
                        "exit",
                        &[("node", &slot.node), ("pid", &pid), ("status", &status)],
                    );
                    slot.child = None;
                    crashed.push(index);
                }
            }
        }
        for index in crashed {
            if let Err(error) = self.respawn(index) {
                eprintln!("chaos: {error}");
            }
        }
    }

    /// How many slots there are.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The name of slot `index`.
    pub(crate) fn slot_name(&self, index: usize) -> &'static str {
        self.lock()[index].name
    }

    /// Kills every process (the end of the run).
    pub(crate) fn kill_all(&self) {
        for index in 0..self.len() {
            self.sigkill(index, true);
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for slot in self.lock().iter_mut() {
            if let Some(child) = slot.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Waits until `count` processes recorded `ready`.
pub(crate) fn wait_ready(ledger: &Path, count: usize, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let (entries, _) = ledger::read(ledger).map_err(|e| format!("reading the ledger: {e}"))?;
        let ready = entries.iter().filter(|e| e.kind == "ready").count();
        if ready >= count {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("only {ready} of {count} engines started"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Watches the processes of shell tasks: a shell command records its own
/// start and end, but one killed by SIGKILL (its engine killed, or its
/// attempt dropped) cannot; this records `gone exec=… pid=…` within about
/// 50 ms of its disappearance, read from `/proc`.
#[derive(Debug)]
pub(crate) struct ShellWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShellWatcher {
    pub(crate) fn start(ledger: Arc<Ledger>) -> ShellWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || watch_shells(&ledger, &flag));
        ShellWatcher {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops after one more pass (so that shells that just died are seen).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch_shells(ledger: &Ledger, stop: &AtomicBool) {
    use std::io::{Read, Seek, SeekFrom};
    let mut offset = 0u64;
    let mut partial = String::new();
    let mut live: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    loop {
        let last_pass = stop.load(Ordering::SeqCst);
        if let Ok(mut file) = File::open(ledger.path()) {
            let mut text = String::new();
            if file.seek(SeekFrom::Start(offset)).is_ok() && file.read_to_string(&mut text).is_ok() {
                offset += text.len() as u64;
                partial.push_str(&text);
                let complete = partial.rfind('\n').map_or(0, |i| i + 1);
                for line in partial[..complete].lines() {
                    let Some(entry) = ledger::parse_line(line) else {
                        continue;
                    };
                    let exec = entry.get("exec");
                    if !exec.contains(".sh") {
                        continue;
                    }
                    match entry.kind.as_str() {
                        "start" => {
                            if let Some(pid) = entry.number("pid") {
                                live.insert(exec.to_owned(), pid as u32);
                            }
                        }
                        "end" => {
                            live.remove(exec);
                        }
                        _ => {}
                    }
                }
                partial.drain(..complete);
            }
        }
        live.retain(|exec, pid| {
            if process_alive(*pid) {
                return true;
            }
            ledger.write("gone", &[("exec", exec), ("pid", pid)]);
            false
        });
        if last_pass {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` is a live process (not a zombie).
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}
