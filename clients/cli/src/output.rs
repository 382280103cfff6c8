//! Printing replies: a table for a person at a terminal, or with
//! `--output json` the protobuf JSON mapping of the reply message — the same
//! shape `grpcurl` prints (camelCase names, 64-bit integers as strings,
//! timestamps in RFC 3339, default values left out).
//!
//! The JSON is produced generically from the descriptor set the proto crate
//! ships: the reply is re-encoded and decoded as a `prost_reflect::DynamicMessage`,
//! so a field added to a `.proto` file shows up here with no code change.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use comfy_table::{Table, presets};
use grantmesh_proto::v1;
use prost_reflect::{DescriptorPool, DynamicMessage};

/// How replies are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable tables.
    #[default]
    Table,
    /// One protobuf-JSON object per reply (per event for streams), as grpcurl prints.
    Json,
    /// Comma-separated values with a header line: `report` and `transactions` only.
    Csv,
}

/// A reply message the CLI prints, with its fully qualified protobuf name.
/// (The generated code does not carry type names, so they are listed here.)
pub trait Reply: prost::Message + Sized {
    const NAME: &'static str;
}

macro_rules! replies {
    ($($message:ident),* $(,)?) => {
        $(impl Reply for v1::$message {
            const NAME: &'static str = concat!("grantmesh.v1.", stringify!($message));
        })*
    };
}

replies!(
    Researcher,
    LoginReply,
    Proposal,
    ListProposalsReply,
    Account,
    ListAccountsReply,
    WithdrawReply,
    ListTransactionsReply,
    AccountEvent,
    ListInstancesReply,
    WatchEvent,
    PingReply,
    ListInvitationsReply,
    DeclineInvitationReply,
    AgencyInfo,
    RegistryStatus,
);

fn pool() -> anyhow::Result<&'static DescriptorPool> {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    if let Some(pool) = POOL.get() {
        return Ok(pool);
    }
    let pool = DescriptorPool::decode(grantmesh_proto::FILE_DESCRIPTOR_SET)
        .context("failed to read the grantmesh descriptor set")?;
    Ok(POOL.get_or_init(|| pool))
}

/// The protobuf JSON mapping of `reply`, on one line.
pub fn to_json<M: Reply>(reply: &M) -> anyhow::Result<String> {
    let descriptor = pool()?
        .get_message_by_name(M::NAME)
        .with_context(|| format!("{} is not in the descriptor set", M::NAME))?;
    let message = DynamicMessage::decode(descriptor, reply.encode_to_vec().as_slice())
        .with_context(|| format!("failed to decode a {}", M::NAME))?;
    serde_json::to_string(&message)
        .with_context(|| format!("failed to print a {} as JSON", M::NAME))
}

/// Prints `reply` as JSON, or as the table `table` makes of it.
pub fn emit<M: Reply>(
    format: Format,
    reply: &M,
    table: impl FnOnce(&M) -> Table,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", to_json(reply)?),
        // Csv is refused before any command but `report` and `transactions` runs.
        Format::Table | Format::Csv => println!("{}", table(reply).trim_fmt()),
    }
    Ok(())
}

/// A table with a header row and no borders, easy to read and to `grep`.
/// Print it with `trim_fmt`, so no line ends in padding (a table piped to a
/// file or `diff` has no trailing spaces).
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    table
}

/// Two columns of name and value, for one record.
pub fn record(rows: &[(&str, String)]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    for (name, value) in rows {
        table.add_row([format!("{name}:"), value.clone()]);
    }
    table
}

/// A timestamp to the second, in UTC (RFC 3339); empty when absent.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| SystemTime::try_from(*t).ok())
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_default()
}

/// A protobuf duration rounded to the millisecond (`3s`, `420ms`); empty when absent.
pub fn duration(duration: Option<&prost_types::Duration>) -> String {
    duration
        .and_then(|d| Duration::try_from(*d).ok())
        .map(|d| {
            humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
        })
        .unwrap_or_default()
}

/// `DECISION_ACCEPTED` → `accepted`: an enum value's name without its prefix.
pub fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .replace('_', " ")
        .to_lowercase()
}

/// A currency code as a reply gives it: empty (a server before
/// currencies) is USD.
fn currency_code(code: &str) -> &str {
    if code.is_empty() {
        grantmesh_proto::money::DEFAULT_CURRENCY
    } else {
        code
    }
}

/// `minor` units of `currency` as people read them: `EUR 400,000.00`
/// (a code this build does not know: the minor units and the code).
pub fn money(currency: &str, minor: i64) -> String {
    let code = currency_code(currency);
    match grantmesh_proto::money::Currency::parse(code) {
        Ok(currency) => currency.format(minor),
        Err(_) => format!("{minor} (minor units of {code})"),
    }
}

/// As [`money`], without the code: `400,000.00`.
fn number(currency: &str, minor: i64) -> String {
    let code = currency_code(currency);
    match grantmesh_proto::money::Currency::parse(code) {
        Ok(currency) => currency.number(minor),
        Err(_) => format!("{minor} (minor units)"),
    }
}

pub fn account(a: &v1::Account) -> Table {
    let members = a
        .members
        .iter()
        .map(|m| {
            format!(
                "{} <{}> {} ({})",
                m.name,
                m.email,
                m.researcher_id,
                member_role(m)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut rows = vec![
        ("account", a.account_id.clone()),
        ("title", a.title.clone()),
        ("agency", a.agency.clone()),
        ("proposal", a.proposal_id.clone()),
        ("award", money(&a.currency, a.award_minor)),
        ("balance", money(&a.currency, a.balance_minor)),
        ("state", enum_word(a.state().as_str_name(), "STATE_")),
        ("opened", time(a.opened_at.as_ref())),
        ("expires", time(a.expires_at.as_ref())),
        ("members", members),
    ];
    // Only the principal investigator is shown who is invited.
    if !a.invitations.is_empty() {
        let invited = a
            .invitations
            .iter()
            .map(|i| format!("{} (invitation {}, pending)", i.email, i.invitation_id))
            .collect::<Vec<_>>()
            .join("\n");
        rows.push(("invited", invited));
    }
    record(&rows)
}

/// The caller's pending invitations.
pub fn invitations(invitations: &[v1::Invitation]) -> Table {
    let mut table = table(["INVITATION", "ACCOUNT", "TITLE", "INVITED BY", "WHEN"]);
    for i in invitations {
        table.add_row([
            i.invitation_id.clone(),
            i.account_id.clone(),
            i.account_title.clone(),
            format!("{} <{}>", i.invited_by_name, i.invited_by_email),
            time(i.invited_at.as_ref()),
        ]);
    }
    table
}

fn member_role(m: &v1::Member) -> String {
    enum_word(m.role().as_str_name(), "ROLE_")
}

pub fn accounts(accounts: &[v1::Account]) -> Table {
    let mut table = table([
        "ACCOUNT", "TITLE", "AGENCY", "AWARD", "BALANCE", "STATE", "EXPIRES", "MEMBERS",
    ]);
    for a in accounts {
        table.add_row([
            a.account_id.clone(),
            a.title.clone(),
            a.agency.clone(),
            money(&a.currency, a.award_minor),
            money(&a.currency, a.balance_minor),
            enum_word(a.state().as_str_name(), "STATE_"),
            time(a.expires_at.as_ref()),
            a.members.len().to_string(),
        ]);
    }
    table
}

pub fn proposals(proposals: &[v1::Proposal]) -> Table {
    let mut table = table([
        "PROPOSAL", "AGENCY", "TITLE", "AMOUNT", "DAYS", "DECISION", "ACCOUNT", "REASON",
    ]);
    for p in proposals {
        table.add_row([
            p.proposal_id.clone(),
            p.agency.clone(),
            p.title.clone(),
            money(&p.currency, p.requested_amount_minor),
            p.duration_days.to_string(),
            enum_word(p.decision().as_str_name(), "DECISION_"),
            if p.account_failure.is_empty() {
                p.account_id.clone()
            } else {
                "account_failed".to_owned()
            },
            if p.account_failure.is_empty() {
                p.reason.clone()
            } else {
                p.account_failure.clone()
            },
        ]);
    }
    table
}

/// The funding agencies, each with its award band.
pub fn agencies(agencies: &[v1::AgencyInfo]) -> Table {
    let mut table = table(["AGENCY", "CURRENCY", "AWARDS FROM", "TO"]);
    for a in agencies {
        table.add_row([
            a.name.clone(),
            currency_code(&a.currency).to_owned(),
            number(&a.currency, a.min_amount_minor),
            number(&a.currency, a.max_amount_minor),
        ]);
    }
    table
}

/// A researcher as a person reads them: the name (and email) when `members`
/// knows the id, else the id itself (someone who has since left the account).
pub fn researcher_name(members: &[v1::Member], researcher_id: &str) -> String {
    members
        .iter()
        .find(|m| m.researcher_id == researcher_id)
        .map(|m| format!("{} <{}>", m.name, m.email))
        .unwrap_or_else(|| researcher_id.to_owned())
}

/// An account's journal; researchers are named from `members`.
pub fn transactions(
    transactions: &[v1::Transaction],
    members: &[v1::Member],
    currency: &str,
) -> Table {
    let mut table = table([
        "TRANSACTION",
        "WHEN",
        "RESEARCHER",
        "AMOUNT",
        "BALANCE AFTER",
        "MEMO",
    ]);
    for t in transactions {
        table.add_row([
            t.transaction_id.clone(),
            time(t.created_at.as_ref()),
            researcher_name(members, &t.researcher_id),
            money(currency, t.amount_minor),
            money(currency, t.balance_after_minor),
            t.memo.clone(),
        ]);
    }
    table
}

pub fn instances(instances: &[v1::Instance]) -> Table {
    let mut table = table([
        "SERVICE",
        "ID",
        "ADDRESS",
        "LABELS",
        "TTL",
        "LAST BEAT",
        "KEEP-ALIVE",
    ]);
    for i in instances {
        let mut labels: Vec<String> = i.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let since = duration(i.since_last_beat.as_ref());
        table.add_row([
            i.service.clone(),
            i.id.clone(),
            i.address.clone(),
            labels.join(","),
            duration(i.ttl.as_ref()),
            if since.is_empty() {
                since
            } else {
                format!("{since} ago")
            },
            if i.keep_alive_stream {
                "stream"
            } else {
                "unary"
            }
            .to_owned(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_output_is_the_protobuf_mapping_with_int64_as_strings() {
        let account = v1::Account {
            account_id: "a-1".into(),
            award_minor: 400_000,
            balance_minor: 397_500,
            state: v1::account::State::Open as i32,
            expires_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let json: serde_json::Value = serde_json::from_str(&to_json(&account).unwrap()).unwrap();
        assert_eq!(json["accountId"], "a-1");
        assert_eq!(json["balanceMinor"], "397500");
        assert_eq!(json["state"], "STATE_OPEN");
        assert_eq!(json["expiresAt"], "1970-01-01T00:00:00Z");
        assert!(json.get("title").is_none(), "defaults are left out: {json}");
    }

    #[test]
    fn every_printed_reply_is_in_the_descriptor_set() {
        fn known<M: Reply + Default>() {
            to_json(&M::default()).unwrap_or_else(|e| panic!("{}: {e:#}", M::NAME));
        }
        known::<v1::Researcher>();
        known::<v1::LoginReply>();
        known::<v1::Proposal>();
        known::<v1::ListProposalsReply>();
        known::<v1::Account>();
        known::<v1::ListAccountsReply>();
        known::<v1::WithdrawReply>();
        known::<v1::ListTransactionsReply>();
        known::<v1::AccountEvent>();
        known::<v1::ListInstancesReply>();
        known::<v1::WatchEvent>();
        known::<v1::PingReply>();
    }

    #[test]
    fn enum_values_read_as_words() {
        assert_eq!(
            enum_word("ROLE_PRINCIPAL_INVESTIGATOR", "ROLE_"),
            "principal investigator"
        );
    }
}
