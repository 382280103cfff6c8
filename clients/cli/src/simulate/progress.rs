//! The live line a simulation draws on stderr while it runs: projects still
//! running, withdrawals per second and money moved. Hidden when stderr is not
//! a terminal and with `--json`, so logs and pipes stay clean.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::summary::Tally;

/// How often the line is redrawn: smooth enough to watch, cheap on the lock.
const REFRESH: Duration = Duration::from_millis(200);

/// Draws the progress line until `stop` is cancelled.
pub fn spawn(
    tally: Arc<Mutex<Tally>>,
    projects: u32,
    hidden: bool,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let target = if hidden || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .expect("a valid progress template"),
    );
    tokio::spawn(async move {
        let started = Instant::now();
        let mut ticker = tokio::time::interval(REFRESH);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let (running, withdrawals, moved) = {
                let tally = tally.lock().expect("tally lock");
                (
                    tally.running,
                    tally.applied + tally.replayed + tally.refused.values().sum::<u64>(),
                    tally.money_moved,
                )
            };
            let rate = withdrawals as f64 / started.elapsed().as_secs_f64().max(0.001);
            bar.set_message(format!(
                "projects running {running}/{projects} · {withdrawals} withdrawals ({rate:.0}/s) · moved {moved}"
            ));
            bar.tick();
        }
        bar.finish_and_clear();
    })
}
