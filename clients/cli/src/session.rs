//! The login session: the tokens `grantmesh login` gets, kept in a file so
//! later commands need no exported variable. The access token lives at most
//! 15 minutes; a command that finds it about to expire first exchanges the
//! refresh token for new ones ([`Session::needs_refresh`]).
//!
//! The file is `session.json` in `$GRANTMESH_CONFIG_DIR`, or else in the
//! user's config directory (`~/.config/grantmesh` on Linux). It holds a bearer
//! token, so it is written with mode 0600 in a directory with mode 0700, and
//! replaced atomically (written beside, then renamed).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Overrides where the session file is kept (tests and multi-user scripts use it).
pub const CONFIG_DIR_ENV: &str = "GRANTMESH_CONFIG_DIR";

const FILE_NAME: &str = "session.json";
/// Only the owner may read a file that holds a bearer token.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Who is logged in, and the token that proves it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The bearer token the College issued.
    pub token: String,
    pub researcher_id: String,
    pub name: String,
    pub email: String,
    /// When the token stops being accepted, RFC 3339; empty when the College did not say.
    pub expires_at: String,
    /// The registry list the login went through; later commands use it unless told otherwise.
    pub registry: String,
    /// Renews the access token (Refresh) until the session ends; empty in a
    /// session saved before sessions could be renewed.
    #[serde(default)]
    pub refresh_token: String,
}

/// How long before its expiry an access token is renewed: a command that
/// starts now finishes with a token that is still good.
pub const REFRESH_AHEAD: std::time::Duration = std::time::Duration::from_secs(120);

impl Session {
    /// Whether the access token should be renewed before use at `now`.
    pub fn needs_refresh(&self, now: SystemTime) -> bool {
        !self.refresh_token.is_empty() && self.is_expired(now + REFRESH_AHEAD)
    }

    /// Whether the token has expired at `now` (a token with no known expiry never has).
    pub fn is_expired(&self, now: SystemTime) -> bool {
        humantime::parse_rfc3339(&self.expires_at).is_ok_and(|expires| expires <= now)
    }
}

/// Where sessions are kept.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in `$GRANTMESH_CONFIG_DIR`, or in the user's config directory.
    pub fn locate() -> anyhow::Result<Self> {
        if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::at(dir));
        }
        let dirs = directories::ProjectDirs::from("", "", "grantmesh").with_context(|| {
            format!("no home directory to keep the session in; set {CONFIG_DIR_ENV}")
        })?;
        Ok(Self::at(dirs.config_dir()))
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The session file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The saved session, if anyone is logged in.
    pub fn load(&self) -> anyhow::Result<Option<Session>> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err).with_context(|| format!("failed to read {}", path.display()));
            }
        };
        let session = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; run grantmesh logout, then log in again",
                path.display()
            )
        })?;
        Ok(Some(session))
    }

    /// Saves `session` (owner-only), replacing any earlier one.
    pub fn save(&self, session: &Session) -> anyhow::Result<PathBuf> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .with_context(|| format!("failed to create {}", self.dir.display()))?;
        let path = self.path();
        let partial = self.dir.join(format!("{FILE_NAME}.partial"));
        write_private(&partial, &serde_json::to_vec_pretty(session)?)
            .with_context(|| format!("failed to write {}", partial.display()))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("failed to move the session into {}", path.display()))?;
        Ok(path)
    }

    /// Forgets the session; says whether there was one.
    pub fn remove(&self) -> anyhow::Result<bool> {
        let path = self.path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(err).with_context(|| format!("failed to remove {}", path.display())),
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    // `mode` only applies when the file is created; a leftover keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(expires_at: &str) -> Session {
        Session {
            token: "t".into(),
            refresh_token: "r".into(),
            researcher_id: "r".into(),
            name: "Ada".into(),
            email: "ada@uni.edu".into(),
            expires_at: expires_at.into(),
            registry: "https://127.0.0.1:7000".into(),
        }
    }

    #[test]
    fn a_saved_session_is_owner_only_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("nested"));
        assert_eq!(store.load().unwrap(), None);
        let path = store.save(&session("2030-01-01T00:00:00Z")).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.load().unwrap(), Some(session("2030-01-01T00:00:00Z")));
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
    }

    #[test]
    fn a_session_past_its_expiry_is_expired() {
        let expires = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = session(&humantime::format_rfc3339_seconds(expires).to_string());
        assert!(!s.is_expired(expires - Duration::from_secs(1)));
        assert!(s.is_expired(expires));
        assert!(!session("").is_expired(expires));
    }
}
