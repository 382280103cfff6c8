//! Logging set up once, the same way for binaries and tests.
//!
//! Logs go to stderr as text; `GRANTMESH_LOG` (or `RUST_LOG`) takes an
//! `EnvFilter` directive such as `info` or `grantmesh_registry=debug`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, logging at `default` (e.g. `info`) unless
/// the environment says otherwise. Calling it again (as every test may) is harmless.
pub fn init(default: &str) {
    let filter = std::env::var("GRANTMESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
