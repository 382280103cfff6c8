//! An outbox: a directory of messages, one RFC 5322 file each
//! (`<millis>-<recipient>-<uuid>.eml`, mode 0600, written whole then renamed
//! into place, so a reader never sees half a message; the recipient in the
//! name lets [`latest_to`] skip the others unread). [`read`] also reads a
//! Maildir's `new/` and `cur/`, which is how a test SMTP server (Python's
//! `aiosmtpd` with its `Mailbox` handler) keeps what it received.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// One message read back from an outbox.
#[derive(Clone, Debug)]
pub struct Letter {
    /// The first recipient's address, lower-cased.
    pub to: String,
    pub from: String,
    pub subject: String,
    /// The plain-text body.
    pub body: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// When the file was written.
    pub written: SystemTime,
}

/// Makes `dir` (mode 0700 on Unix) if it does not exist.
pub(crate) fn prepare(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The recipient as it appears in a file name: lower-cased, anything but
/// letters, digits and `.@_+` made `_`, at most 100 characters.
fn name_part(to: &str) -> String {
    to.trim()
        .to_lowercase()
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '.' | '@' | '_' | '+' => c,
            _ => '_',
        })
        .take(100)
        .collect()
}

/// Writes one formatted message to `to` into `dir`.
pub(crate) fn keep(dir: &Path, to: &str, message: &[u8]) -> std::io::Result<()> {
    prepare(dir)?;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let name = format!(
        "{millis:013}-{}-{}.eml",
        name_part(to),
        uuid::Uuid::new_v4().simple()
    );
    let partial = dir.join(format!(".{name}.partial"));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial)?;
    file.write_all(message)?;
    file.sync_all()?;
    fs::rename(&partial, dir.join(name))
}

fn letter(file: PathBuf) -> Option<Letter> {
    let bytes = fs::read(&file).ok()?;
    let written = fs::metadata(&file).and_then(|m| m.modified()).ok()?;
    let message = mail_parser::MessageParser::default().parse(&bytes)?;
    let first = |address: Option<&mail_parser::Address<'_>>| {
        address
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_lowercase)
            .unwrap_or_default()
    };
    Some(Letter {
        to: first(message.to()),
        from: first(message.from()),
        subject: message.subject().unwrap_or_default().to_owned(),
        body: message
            .body_text(0)
            .map(|b| b.replace("\r\n", "\n"))
            .unwrap_or_default(),
        written,
        file,
    })
}

/// Every message in `dir` (and in its Maildir `new/` and `cur/`), oldest
/// first. A missing directory holds none; a file that is not a message is
/// skipped.
pub fn read(dir: &Path) -> std::io::Result<Vec<Letter>> {
    read_some(dir, |_| true)
}

/// The messages in files whose names `wanted` admits, oldest first.
fn read_some(dir: &Path, wanted: impl Fn(&str) -> bool) -> std::io::Result<Vec<Letter>> {
    let mut files = Vec::new();
    for folder in [dir.to_path_buf(), dir.join("new"), dir.join("cur")] {
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with('.') && wanted(&name) && entry.file_type()?.is_file() {
                files.push(entry.path());
            }
        }
    }
    let mut letters: Vec<Letter> = files.into_iter().filter_map(letter).collect();
    letters.sort_by(|a, b| (a.written, &a.file).cmp(&(b.written, &b.file)));
    Ok(letters)
}

/// The newest message to `to` (compared without case) in `dir`. Files
/// named for another recipient are not read; files named otherwise (a
/// Maildir's) are.
pub fn latest_to(dir: &Path, to: &str) -> std::io::Result<Option<Letter>> {
    let to = to.trim().to_lowercase();
    let tag = format!("-{}-", name_part(&to));
    let ours = |name: &str| !name.ends_with(".eml") || name.contains(&tag);
    Ok(read_some(dir, ours)?
        .into_iter()
        .rev()
        .find(|letter| letter.to == to))
}
