//! Roles as child processes of the real `grantmesh` binary.
//!
//! Tests and benchmarks whose point is the operating system — a process
//! killed with `kill -9`, frozen with SIGSTOP, or stopped with SIGTERM — run
//! roles as separate processes. A role binary prints `listening on ADDR` as
//! its first line on stdout; [`ChildNode::spawn`] waits for that line, so the
//! caller gets the real bound address even for port 0.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a child may take to say where it listens: a debug build that
/// migrates a fresh database on a loaded 2-core machine needs several seconds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A role running as a child process; killed when dropped.
pub struct ChildNode {
    pub child: Child,
    pub addr: SocketAddr,
    /// A name for messages (`registry`, `college-2`, …).
    pub name: String,
}

impl ChildNode {
    /// Runs `exe ARGS…` with `command` adjusted by the caller (environment,
    /// stderr), and waits for its `listening on ADDR` line.
    pub async fn spawn<I, S>(
        exe: &Path,
        name: &str,
        args: I,
        adjust: impl FnOnce(&mut Command),
    ) -> anyhow::Result<ChildNode>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        adjust(&mut command);
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start {name} ({})", exe.display()))?;
        let stdout = child.stdout.take().context("stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .with_context(|| {
                format!("{name} did not say where it listens within {START_TIMEOUT:?}")
            })?
            .with_context(|| format!("failed to read {name}'s stdout"))?
            .with_context(|| format!("{name} exited before listening"))?;
        let Some(addr) = line.strip_prefix("listening on ") else {
            bail!("unexpected first line from {name}: {line:?}");
        };
        let addr = addr
            .parse()
            .with_context(|| format!("{name} printed an unusable address: {addr:?}"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ChildNode {
            child,
            addr,
            name: name.to_owned(),
        })
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<Pid> {
        self.child.id().map(|id| Pid::from_raw(id as i32))
    }

    /// Sends `signal` (SIGKILL, SIGSTOP, SIGCONT, SIGTERM…).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} has already exited", self.name))?;
        kill(pid, signal).with_context(|| format!("failed to send {signal} to {}", self.name))
    }

    /// Waits at most `within` for the process to exit; its exit code.
    pub async fn wait(&mut self, within: Duration) -> anyhow::Result<Option<i32>> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {within:?}", self.name))??;
        Ok(status.code())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.signal(Signal::SIGTERM).is_ok() && self.wait(grace).await.is_ok() {
            return;
        }
        let _ = self.child.kill().await;
    }
}
