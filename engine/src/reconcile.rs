//! Reconciliation (`rush reconcile`): reads the durable store and the
//! channels' bills and reports every mismatch.
//!
//! Internal: every account sums to zero with the world account (money is
//! conserved); deposits − withdrawals = Σ available + Σ frozen over users;
//! every transfer's legs sum to zero; each account's balance equals the sum
//! of its journal legs. External: for each channel and day, the channel's
//! bill against the payments rush recorded as paid that day.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sqlx::Row;

use crate::domain::{Fen, Id};
use crate::durable::payments::{PaymentStatus, RefundState};
use crate::durable::{Audit, Durable, DurableError};
use crate::pay::{day_bounds_ms, ChannelKind, Channels};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    /// `world_balance`, `deposits_vs_balances`, `lopsided_transfer`,
    /// `account_vs_journal`, `paid_order_unpaid`, `revenue_vs_sold`,
    /// `missing_in_rush`, `missing_at_channel`, `amount`, `status`,
    /// `bill_unavailable`.
    pub kind: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub deposits: i64,
    pub withdrawals: i64,
    pub user_balances: i64,
    pub days: Vec<i64>,
    pub channels_checked: Vec<ChannelKind>,
    pub bill_lines: usize,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

fn mismatch(kind: &'static str, detail: String) -> Mismatch {
    Mismatch { kind, detail }
}

pub async fn reconcile(
    durable: &Durable,
    channels: &Channels,
    days: &[i64],
    day_offset_min: i32,
) -> Result<Report, DurableError> {
    let audit = durable.audit().await?;
    let mut mismatches = internal(durable, &audit).await?;
    let read = &durable.db().read;
    let deposits: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(amount) AS BIGINT) FROM journal WHERE kind IN ('admin_credit', 'recharge') AND user_id NOT LIKE '@%'",
    )
    .fetch_one(read)
    .await?;
    let withdrawals: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(amount) AS BIGINT) FROM journal WHERE kind = 'withdrawal' AND user_id = '@world'",
    )
    .fetch_one(read)
    .await?;
    let (deposits, withdrawals) = (deposits.unwrap_or(0), withdrawals.unwrap_or(0));
    if deposits - withdrawals != audit.sum_users {
        mismatches.push(mismatch(
            "deposits_vs_balances",
            format!(
                "deposits {} - withdrawals {} = {} but users hold {}",
                Fen::new(deposits),
                Fen::new(withdrawals),
                Fen::new(deposits - withdrawals),
                Fen::new(audit.sum_users)
            ),
        ));
    }
    let mut bill_lines = 0;
    for kind in channels.kinds() {
        let Some(ch) = channels.get(kind) else { continue };
        for &day in days {
            match ch.bill(day).await {
                Ok(bill) => {
                    bill_lines += bill.len();
                    mismatches.extend(external(durable, kind, day, day_offset_min, bill).await?);
                }
                Err(e) => mismatches.push(mismatch("bill_unavailable", format!("{} day {day}: {e}", kind.as_str()))),
            }
        }
    }
    Ok(Report {
        deposits,
        withdrawals,
        user_balances: audit.sum_users,
        days: days.to_vec(),
        channels_checked: channels.kinds(),
        bill_lines,
        mismatches,
    })
}

/// The ledger against itself.
async fn internal(durable: &Durable, audit: &Audit) -> Result<Vec<Mismatch>, DurableError> {
    let mut out = Vec::new();
    if audit.sum_all_accounts != 0 {
        out.push(mismatch("world_balance", format!("all accounts sum to {}, not 0", Fen::new(audit.sum_all_accounts))));
    }
    for t in &audit.lopsided_transfers {
        out.push(mismatch("lopsided_transfer", format!("transfer {t} does not sum to zero")));
    }
    let read = &durable.db().read;
    let mut journal: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in sqlx::query(
        "SELECT user_id, bucket, CAST(SUM(amount) AS BIGINT) AS total FROM journal GROUP BY user_id, bucket",
    )
    .fetch_all(read)
    .await?
    {
        journal
            .insert((r.try_get("user_id")?, r.try_get("bucket")?), r.try_get::<Option<i64>, _>("total")?.unwrap_or(0));
    }
    let mut seen = BTreeSet::new();
    for r in sqlx::query("SELECT user_id, available, frozen FROM accounts").fetch_all(read).await? {
        let user: String = r.try_get("user_id")?;
        for bucket in ["available", "frozen"] {
            let balance: i64 = r.try_get(bucket)?;
            let legs = journal.get(&(user.clone(), bucket.to_string())).copied().unwrap_or(0);
            if balance != legs {
                out.push(mismatch(
                    "account_vs_journal",
                    format!("{user} {bucket} is {} but its journal sums to {}", Fen::new(balance), Fen::new(legs)),
                ));
            }
            seen.insert((user.clone(), bucket.to_string()));
        }
    }
    for ((user, bucket), legs) in journal {
        if legs != 0 && !seen.contains(&(user.clone(), bucket.clone())) {
            out.push(mismatch("account_vs_journal", format!("{user} has journal legs ({bucket}) but no account")));
        }
    }
    out.extend(orders_vs_money(durable).await?);
    Ok(out)
}

/// Sold seats against the money: every paid order's payment succeeded and
/// is not being refunded, and the sales account holds exactly the paid
/// orders' amounts.
async fn orders_vs_money(durable: &Durable) -> Result<Vec<Mismatch>, DurableError> {
    let read = &durable.db().read;
    let mut out = Vec::new();
    let mut sold: i64 = 0;
    for gene in 0..crate::domain::id::GENE_COUNT {
        let t = format!("orders_{gene}");
        let total: Option<i64> =
            sqlx::query_scalar(&format!("SELECT CAST(SUM(amount) AS BIGINT) FROM {t} WHERE status = 'paid'"))
                .fetch_one(read)
                .await?;
        sold += total.unwrap_or(0);
        for r in sqlx::query(&format!(
            "SELECT o.order_id, p.payment_id, p.status, p.refund FROM {t} o \
             LEFT JOIN order_payments c ON c.order_id = o.order_id \
             LEFT JOIN payments p ON p.payment_id = c.payment_id \
             WHERE o.status = 'paid' AND (p.payment_id IS NULL OR p.status <> 'succeeded' OR p.refund <> 'none')"
        ))
        .fetch_all(read)
        .await?
        {
            let order: i64 = r.try_get("order_id")?;
            let payment: Option<i64> = r.try_get("payment_id")?;
            let status: Option<String> = r.try_get("status")?;
            let refund: Option<String> = r.try_get("refund")?;
            out.push(mismatch(
                "paid_order_unpaid",
                match payment {
                    Some(pid) => format!(
                        "order {order} is paid but its payment {pid} is {} (refund {})",
                        status.unwrap_or_default(),
                        refund.unwrap_or_default()
                    ),
                    None => format!("order {order} is paid but no payment paid it"),
                },
            ));
        }
    }
    let revenue: Option<i64> =
        sqlx::query_scalar("SELECT CAST(SUM(available) AS BIGINT) FROM accounts WHERE user_id = $1")
            .bind(crate::domain::SALES_ACCOUNT)
            .fetch_one(read)
            .await?;
    let revenue = revenue.unwrap_or(0);
    if revenue != sold {
        out.push(mismatch(
            "revenue_vs_sold",
            format!("sales hold {} but paid orders add up to {}", Fen::new(revenue), Fen::new(sold)),
        ));
    }
    Ok(out)
}

/// One channel's bill of one day against rush's payments paid that day.
async fn external(
    durable: &Durable,
    kind: ChannelKind,
    day: i64,
    day_offset_min: i32,
    bill: Vec<crate::pay::BillLine>,
) -> Result<Vec<Mismatch>, DurableError> {
    let (start, end) = day_bounds_ms(day, day_offset_min);
    let ours: BTreeMap<Id, _> =
        durable.payments_paid_between(kind, start, end).await?.into_iter().map(|p| (p.payment_id, p)).collect();
    let mut out = Vec::new();
    let ch = kind.as_str();
    let mut billed = BTreeSet::new();
    for line in bill {
        billed.insert(line.payment_id);
        let Some(p) = ours.get(&line.payment_id) else {
            out.push(mismatch(
                "missing_in_rush",
                format!(
                    "{ch} took {} for payment {} ({}) but rush has not recorded it",
                    line.amount, line.payment_id, line.txn_id
                ),
            ));
            continue;
        };
        if Some(line.amount) != p.paid_amount {
            out.push(mismatch(
                "amount",
                format!(
                    "{ch} payment {}: bill says {}, rush recorded {:?}",
                    line.payment_id,
                    line.amount,
                    p.paid_amount.map(|a| a.to_string())
                ),
            ));
        }
        let refunded_here = p.status == PaymentStatus::Refunded && p.refund == RefundState::Done;
        let status_agrees = match line.status.as_str() {
            // Refunded at the channel: rush has it done, or still owes its
            // own steps (the payments worker carries them on).
            "REFUND" => refunded_here || p.refund.owed(),
            // A refund rush has decided but the channel not yet made shows
            // as paid on the bill: in progress, not a mismatch.
            _ => !refunded_here,
        };
        if !status_agrees {
            out.push(mismatch(
                "status",
                format!("{ch} payment {}: bill says {}, rush says {}", line.payment_id, line.status, p.status.as_str()),
            ));
        }
    }
    for (id, p) in &ours {
        if !billed.contains(id) {
            out.push(mismatch(
                "missing_at_channel",
                format!(
                    "rush recorded {ch} payment {id} as paid ({:?}) but the bill does not have it",
                    p.paid_amount.map(|a| a.to_string())
                ),
            ));
        }
    }
    Ok(out)
}
