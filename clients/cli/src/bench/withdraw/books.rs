//! The books after a run: the bench's check that neither side lost or
//! invented money.
//!
//! Both the mesh and pgbench withdraw from the same accounts. Afterwards
//! every account's balance must be its award less its journal, and the
//! journal must hold exactly the withdrawals both sides reported.

use anyhow::bail;

/// Every account's balance is its award less its journal, and the journal
/// holds exactly the withdrawals both sides reported.
pub(super) async fn check_books(
    db: &tokio_postgres::Client,
    mesh: u64,
    pgbench: u64,
) -> anyhow::Result<String> {
    let wrong: i64 = db
        .query_one(
            "SELECT count(*) FROM accounts a
             LEFT JOIN (SELECT account_id, sum(amount) AS spent FROM withdrawals GROUP BY account_id) w ON w.account_id = a.id
             WHERE a.balance <> a.award - coalesce(w.spent, 0)",
            &[],
        )
        .await?
        .get(0);
    let accounts: i64 = db
        .query_one("SELECT count(*) FROM accounts", &[])
        .await?
        .get(0);
    let journal: i64 = db
        .query_one("SELECT count(*) FROM withdrawals", &[])
        .await?
        .get(0);
    if wrong != 0 {
        bail!("{wrong} of {accounts} accounts have a balance other than award − withdrawals");
    }
    if journal as u64 != mesh + pgbench {
        bail!(
            "the journal holds {journal} withdrawals, but the mesh made {mesh} and pgbench {pgbench}"
        );
    }
    Ok(format!(
        "{accounts} accounts; balance = award − withdrawals; journal {journal} = mesh {mesh} + pgbench {pgbench}"
    ))
}
