//! `grantmesh mail`: the messages in an outbox — `grantmesh dev`'s mail
//! catcher (`DATA_DIR/mail`), or the directory a college was given with
//! `--mail-outbox`. `--code` prints just the newest verification code, for
//! scripts: `grantmesh verify-email --email E --code "$(grantmesh mail --to E --code)"`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use grantmesh_mail::{Letter, outbox};

use crate::output::{self, Format};

/// The folder `grantmesh dev` keeps its outbox in, below its data directory.
pub const DEV_MAIL_DIR: &str = "mail";

#[derive(Args, Debug)]
pub struct MailArgs {
    /// Only messages to this address.
    #[arg(long)]
    to: Option<String>,
    /// Print only the verification code in the newest message (to --to).
    #[arg(long)]
    code: bool,
    /// The outbox to read [default: grantmesh dev's, DATA_DIR/mail].
    #[arg(long, env = "GRANTMESH_MAIL_OUTBOX", value_name = "DIR")]
    outbox: Option<PathBuf>,
    /// How long to wait for a message (a college mails in the background,
    /// a moment after it answers).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

/// The outbox `grantmesh dev` keeps (`DATA_DIR/mail`).
pub fn dev_outbox() -> Option<PathBuf> {
    crate::transport::default_data_dir().map(|dir| dir.join(DEV_MAIL_DIR))
}

fn wanted(args: &MailArgs, letters: Vec<Letter>) -> Vec<Letter> {
    let to = args.to.as_deref().map(|to| to.trim().to_lowercase());
    letters
        .into_iter()
        .filter(|letter| to.as_ref().is_none_or(|to| &letter.to == to))
        .filter(|letter| !args.code || grantmesh_auth::signup::code_in(&letter.body).is_some())
        .collect()
}

pub async fn run(args: MailArgs, format: Format) -> anyhow::Result<ExitCode> {
    let dir = match args.outbox.clone().or_else(dev_outbox) {
        Some(dir) => dir,
        None => bail!("cannot tell where grantmesh dev keeps its mail; pass --outbox DIR"),
    };
    let deadline = Instant::now() + args.wait;
    let letters = loop {
        let letters = wanted(
            &args,
            outbox::read(&dir).with_context(|| format!("failed to read {}", dir.display()))?,
        );
        if !letters.is_empty() || Instant::now() >= deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let whom = args
        .to
        .as_deref()
        .map(|to| format!(" to {to}"))
        .unwrap_or_default();
    if args.code {
        let Some(code) = letters
            .last()
            .and_then(|letter| grantmesh_auth::signup::code_in(&letter.body))
        else {
            bail!("no verification code{whom} in {}", dir.display());
        };
        println!("{code}");
        return Ok(ExitCode::SUCCESS);
    }
    match format {
        Format::Json => {
            let letters: Vec<serde_json::Value> = letters.iter().map(json).collect();
            println!("{}", serde_json::json!({ "messages": letters }));
        }
        Format::Table if letters.is_empty() => eprintln!("no messages{whom} in {}", dir.display()),
        Format::Table | Format::Csv => {
            for letter in &letters {
                let table = output::record(&[
                    ("to", letter.to.clone()),
                    ("subject", letter.subject.clone()),
                    ("sent", written(letter)),
                ]);
                println!("{}\n\n{}\n", table.trim_fmt(), letter.body.trim_end());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn written(letter: &Letter) -> String {
    let secs = letter
        .written
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    output::time(Some(&prost_types::Timestamp {
        seconds: i64::try_from(secs).unwrap_or(0),
        nanos: 0,
    }))
}

fn json(letter: &Letter) -> serde_json::Value {
    serde_json::json!({
        "to": letter.to,
        "from": letter.from,
        "subject": letter.subject,
        "sent": written(letter),
        "body": letter.body,
        "code": grantmesh_auth::signup::code_in(&letter.body),
    })
}
