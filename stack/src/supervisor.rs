//! The child processes: starting them, showing their output, watching
//! them, and stopping them.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Output lines kept per child, to say why it died.
const TAIL_LINES: usize = 20;
/// How long a service may take to answer its first `/healthz` with 200.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a service may take to stop after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Writes prefixed lines to standard output, one whole line at a time, from
/// a thread of its own: a stalled reader (a paused terminal, `| less`) then
/// delays only the output, never the handling of signals and exits.
#[derive(Clone)]
pub struct Console {
    width: usize,
    lines: std::sync::mpsc::Sender<Output>,
}

enum Output {
    Line(String),
    Flush(std::sync::mpsc::Sender<()>),
}

impl Console {
    pub fn new(names: &[&str]) -> Console {
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(5);
        let (lines, queue) = std::sync::mpsc::channel::<Output>();
        std::thread::spawn(move || {
            for output in queue {
                match output {
                    Output::Line(line) => {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                    Output::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Console { width, lines }
    }

    pub fn line(&self, name: &str, line: &str) {
        let _ = self.lines.send(Output::Line(format!(
            "{name:>width$} | {line}",
            width = self.width
        )));
    }

    /// A line of the stack's own.
    pub fn say(&self, line: &str) {
        self.line("stack", line);
    }

    /// Lines meant to be copied: no prefix.
    pub fn plain(&self, line: &str) {
        let _ = self.lines.send(Output::Line(line.to_owned()));
    }

    /// Waits (up to five seconds) until everything sent so far is written.
    pub fn flush(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if self.lines.send(Output::Flush(done)).is_ok() {
            let _ = written.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// One running service.
pub struct Child {
    pub name: String,
    process: tokio::process::Child,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    /// The tasks copying its output; awaited before its last words are
    /// read, so that they are its actual last words.
    relays: Vec<tokio::task::JoinHandle<()>>,
    health_url: String,
    healthy: bool,
    /// How long it may drain after SIGTERM.
    grace: Duration,
    exited: Option<ExitStatus>,
}

/// What to start.
pub struct Launch<'a> {
    pub name: &'a str,
    pub binary: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    /// Variables the child must not inherit from the stack's environment,
    /// because they would override what the stack decided.
    pub env_remove: &'static [&'static str],
    pub health_url: String,
    pub grace: Duration,
}

/// Why the stack is stopping.
pub enum Stop {
    Signal(&'static str),
    Died(usize, ExitStatus),
    Unhealthy(usize, String),
    /// A child could not be started at all.
    Failed(String),
}

pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installed before any child starts, so that Ctrl-C during start-up
    /// stops what was started instead of killing the stack alone.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

pub struct Supervisor {
    pub console: Console,
    pub children: Vec<Child>,
    http: reqwest::Client,
}

impl Supervisor {
    pub fn new(console: Console) -> Supervisor {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap_or_default();
        Supervisor {
            console,
            children: Vec::new(),
            http,
        }
    }

    /// Starts a child. It gets its own process group, so a Ctrl-C in the
    /// terminal reaches the stack alone, which then stops the children in
    /// order and gracefully; and it is told the stack's pid, so that it
    /// stops by itself if the stack is killed outright.
    pub fn spawn(&mut self, launch: Launch<'_>) -> Result<(), String> {
        let mut command = tokio::process::Command::new(launch.binary);
        command
            .args(&launch.args)
            .env(
                service_kit::supervision::PARENT_PID,
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for name in launch.env_remove {
            command.env_remove(name);
        }
        for (name, value) in &launch.env {
            command.env(name, value);
        }
        let mut process = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.binary.display()))?;
        let pid = process.id().unwrap_or(0);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut relays = Vec::new();
        if let Some(stdout) = process.stdout.take() {
            relays.push(self.relay(launch.name, stdout, &tail));
        }
        if let Some(stderr) = process.stderr.take() {
            relays.push(self.relay(launch.name, stderr, &tail));
        }
        self.console
            .say(&format!("started {} (pid {pid})", launch.name));
        self.children.push(Child {
            name: launch.name.to_owned(),
            process,
            pid,
            tail,
            relays,
            health_url: launch.health_url,
            healthy: false,
            grace: launch.grace,
            exited: None,
        });
        Ok(())
    }

    /// Copies a child's output to the console, prefixed with its name, and
    /// keeps its last lines. Bytes that are not UTF-8 are shown replaced
    /// rather than stopping the copy (which would block the child on a
    /// full pipe).
    fn relay(
        &self,
        name: &str,
        stream: impl AsyncRead + Unpin + Send + 'static,
        tail: &Arc<Mutex<VecDeque<String>>>,
    ) -> tokio::task::JoinHandle<()> {
        let console = self.console.clone();
        let name = name.to_owned();
        let tail = Arc::clone(tail);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match reader.read_until(b'\n', &mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buffer);
                        let line = line.trim_end_matches(['\n', '\r']);
                        console.line(&name, line);
                        if let Ok(mut tail) = tail.lock() {
                            if tail.len() == TAIL_LINES {
                                tail.pop_front();
                            }
                            tail.push_back(line.to_owned());
                        }
                    }
                }
            }
        })
    }

    /// Waits (briefly) until a child's output has been copied to its end.
    pub async fn drain(&mut self, index: usize) {
        for relay in self.children[index].relays.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(1), relay).await;
        }
    }

    /// Waits until every child answers `/healthz` with 200. Returns early
    /// when a child exits, a signal arrives, or one stays unhealthy too long.
    pub async fn wait_healthy(&mut self, signals: &mut Signals) -> Result<(), Stop> {
        let deadline = Instant::now() + HEALTH_DEADLINE;
        let mut last_answer: Vec<String> = vec![String::new(); self.children.len()];
        loop {
            for (index, answer) in last_answer.iter_mut().enumerate() {
                if let Ok(Some(status)) = self.children[index].process.try_wait() {
                    self.children[index].exited = Some(status);
                    self.drain(index).await;
                    return Err(Stop::Died(index, status));
                }
                if self.children[index].healthy {
                    continue;
                }
                match self.http.get(&self.children[index].health_url).send().await {
                    Ok(response) if response.status() == 200 => {
                        self.children[index].healthy = true;
                    }
                    Ok(response) => *answer = format!("it answered {}", response.status()),
                    Err(_) => *answer = "it did not answer".into(),
                }
            }
            if self.children.iter().all(|c| c.healthy) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let index = self.children.iter().position(|c| !c.healthy).unwrap_or(0);
                return Err(Stop::Unhealthy(
                    index,
                    std::mem::take(&mut last_answer[index]),
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                name = signals.recv() => return Err(Stop::Signal(name)),
            }
        }
    }

    /// Waits for the first child to exit, or a signal.
    pub async fn watch(&mut self, signals: &mut Signals) -> Stop {
        let first_exit = {
            let exits = self
                .children
                .iter_mut()
                .map(|child| Box::pin(child.process.wait()));
            tokio::select! {
                (status, index, _) = futures::future::select_all(exits) => Ok((index, status.ok())),
                name = signals.recv() => Err(name),
            }
        };
        match first_exit {
            Ok((index, status)) => {
                let status = status.unwrap_or_else(|| ExitStatus::from_raw(1 << 8));
                self.children[index].exited = Some(status);
                self.drain(index).await;
                Stop::Died(index, status)
            }
            Err(name) => Stop::Signal(name),
        }
    }

    /// The reason a child stopped, in words, with its last output line when
    /// it exited with an error (a killed process had no say in it).
    pub fn why(&self, index: usize, status: ExitStatus) -> String {
        let child = &self.children[index];
        let mut why = format!("{} (pid {}) {}", child.name, child.pid, describe(status));
        if status.code().is_some_and(|code| code != 0) {
            let last = child
                .tail
                .lock()
                .ok()
                .and_then(|tail| tail.iter().rev().find(|l| !l.trim().is_empty()).cloned());
            if let Some(last) = last {
                why.push_str(&format!("; its last words: {last}"));
            }
        }
        why
    }

    pub fn unhealthy(&self, index: usize, last: &str) -> String {
        format!(
            "{} did not answer {} with 200 within {} s ({last})",
            self.children[index].name,
            self.children[index].health_url,
            HEALTH_DEADLINE.as_secs()
        )
    }

    /// Stops every child still running: the gateway first (so clients stop
    /// arriving while the services finish what they have), then the rest
    /// together. SIGTERM, then SIGKILL for any that outstays its time, or for
    /// all of them at a second Ctrl-C. Returns whether every child stopped
    /// cleanly.
    pub async fn stop_all(&mut self, signals: &mut Signals) -> bool {
        let mut clean = true;
        let gateway = self.children.iter().position(|c| c.name == "gateway");
        if let Some(index) = gateway {
            clean &= self.stop_group(&[index], signals).await;
        }
        let rest: Vec<usize> = (0..self.children.len())
            .filter(|i| Some(*i) != gateway)
            .collect();
        clean &= self.stop_group(&rest, signals).await;
        clean
    }

    async fn stop_group(&mut self, indices: &[usize], signals: &mut Signals) -> bool {
        let mut clean = true;
        let mut waiting = Vec::new();
        for &index in indices {
            let child = &mut self.children[index];
            if child.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = child.process.try_wait() {
                child.exited = Some(status);
                continue;
            }
            terminate(child.pid);
            waiting.push(index);
        }
        let mut hurry = false;
        for index in waiting {
            let child = &mut self.children[index];
            // Pingora sleeps the whole grace period, then gives its runtimes
            // as long again.
            let limit = 2 * child.grace + STOP_DEADLINE;
            let waited = if hurry {
                None
            } else {
                tokio::select! {
                    status = tokio::time::timeout(limit, child.process.wait()) => match status {
                        Ok(Ok(status)) => Some(status),
                        _ => {
                            self.console.say(&format!(
                                "{} did not stop within {} s of SIGTERM; killing it",
                                child.name,
                                limit.as_secs()
                            ));
                            None
                        }
                    },
                    name = signals.recv() => {
                        self.console.say(&format!("{name} again: killing what is left"));
                        hurry = true;
                        None
                    }
                }
            };
            let status = match waited {
                Some(status) => status,
                None => {
                    let _ = child.process.kill().await;
                    clean = false;
                    child
                        .process
                        .wait()
                        .await
                        .unwrap_or_else(|_| ExitStatus::from_raw(9))
                }
            };
            child.exited = Some(status);
            self.drain(index).await;
            // Asked to terminate, it terminated: by exiting, or, when the
            // signal came before it had installed its handler, by the signal.
            let child = &self.children[index];
            if status.success() || status.signal() == Some(15) {
                self.console.say(&format!("{} stopped", child.name));
            } else {
                clean = false;
                let why = self.why(index, status);
                self.console.say(&format!("{why} while stopping"));
            }
        }
        clean
    }
}

fn terminate(pid: u32) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(target) = target {
        let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
    }
}

/// `exited with status 1`, `was killed by SIGKILL` …
pub fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                1 => "SIGHUP",
                2 => "SIGINT",
                6 => "SIGABRT",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                15 => "SIGTERM",
                _ => "",
            };
            if name.is_empty() {
                format!("was killed by signal {signal}")
            } else {
                format!("was killed by {name}")
            }
        }
        None => "exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_as_words() {
        for (raw, words) in [
            (0, "exited with status 0"),
            (1 << 8, "exited with status 1"),
            (9, "was killed by SIGKILL"),
            (15, "was killed by SIGTERM"),
            (7, "was killed by signal 7"),
        ] {
            assert_eq!(describe(ExitStatus::from_raw(raw)), words);
        }
    }
}
