//! Wallets: balances, the ledger, credits, withdrawals and the audit.

use super::input::{Caller, REASON_LEN_MAX};
use super::{check_text, invalid, next_cursor, Engine};
use crate::domain::{gene_of_user, now_unix_ms, Fen, Id, UserId, WithdrawalStatus};
use crate::durable::wallet::{RiskRules, WithdrawalRecord};
use crate::durable::{Audit, Balance, JournalEntry};
use crate::error::{EngineError, Entity};

impl Engine {
    /// The balance, with the credits of the user's recent grabs the
    /// workers have not applied yet as `pending` (the hot store remembers
    /// them for `orders.recent_keep_s`): a grab's money shows on the next
    /// read on any node. `available` is what the ledger has applied, what
    /// a withdrawal can take; the ledger lists applied transfers only.
    pub async fn wallet(&self, user_id: &UserId) -> Result<Balance, EngineError> {
        let grabs = match self.store.recent_grabs(user_id.as_str(), now_unix_ms()).await {
            Ok(grabs) => grabs,
            Err(e) => {
                tracing::warn!(error = %e, "recent grabs unavailable; the wallet shows what the workers applied");
                vec![]
            }
        };
        Ok(self.durable.balance_with_grabs(user_id, &grabs).await?)
    }

    pub async fn ledger(
        &self,
        user_id: &UserId,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Result<(Vec<JournalEntry>, Option<i64>), EngineError> {
        let limit = self.page_limit(limit)?;
        let entries = self.durable.ledger(user_id, before, limit).await?;
        let next = next_cursor(&entries, limit, |e| e.entry_id);
        Ok((entries, next))
    }

    pub async fn credit(&self, user_id: &UserId, amount: Fen, reason: &str) -> Result<Balance, EngineError> {
        if amount.get() > self.cfg.orders.credit_max_fen {
            return Err(invalid(format!("amount must be at most {}", self.cfg.orders.credit_max_fen)));
        }
        check_text("reason", reason, REASON_LEN_MAX)?;
        self.durable.credit(user_id, amount, reason, self.ids.next(gene_of_user(user_id))).await?;
        self.wallet(user_id).await
    }

    pub async fn audit(&self) -> Result<Audit, EngineError> {
        Ok(self.durable.audit().await?)
    }

    /// `POST /v1/wallet/withdraw`: frozen until an admin decides; refused
    /// past the day's count or amount.
    pub async fn withdraw(&self, user_id: &UserId, amount: Fen) -> Result<WithdrawalRecord, EngineError> {
        let wc = &self.cfg.wallet;
        if amount.get() < wc.withdraw_min_fen {
            return Err(invalid(format!("amount must be at least {}", wc.withdraw_min_fen)));
        }
        let now = now_unix_ms();
        let w = WithdrawalRecord {
            withdrawal_id: self.ids.next(gene_of_user(user_id)),
            user_id: user_id.to_string(),
            amount,
            status: WithdrawalStatus::Pending,
            created_at_ms: now,
            decided_at_ms: None,
            decided_by: None,
            reason: None,
        };
        let rules = RiskRules {
            count_per_day_max: wc.withdraw_count_per_day_max,
            fen_per_day_max: wc.withdraw_fen_per_day_max,
        };
        let result = self.durable.request_withdrawal(&w, crate::pay::day_of(now, wc.day_offset_min), rules).await;
        let outcome = match &result {
            Ok(()) => "requested",
            Err(crate::durable::DurableError::RiskRefused(_)) => "risk_refused",
            Err(crate::durable::DurableError::InsufficientFunds) => "insufficient_funds",
            Err(_) => "failed",
        };
        self.metrics.withdrawals.with_label_values(&[outcome]).inc();
        result?;
        Ok(w)
    }

    pub async fn decide_withdrawal(
        &self,
        admin: &Caller,
        withdrawal_id: Id,
        approve: bool,
        reason: Option<String>,
    ) -> Result<WithdrawalRecord, EngineError> {
        if let Some(r) = &reason {
            check_text("reason", r, REASON_LEN_MAX)?;
        }
        let w = self
            .durable
            .decide_withdrawal(withdrawal_id, approve, &admin.user_id, reason.as_deref(), now_unix_ms())
            .await?
            .ok_or(EngineError::NotFound(Entity::Withdrawal))?;
        self.metrics.withdrawals.with_label_values(&[if approve { "approved" } else { "rejected" }]).inc();
        Ok(w)
    }

    pub async fn withdrawals(
        &self,
        status: WithdrawalStatus,
        limit: Option<u32>,
    ) -> Result<Vec<WithdrawalRecord>, EngineError> {
        Ok(self.durable.withdrawals(status, self.page_limit(limit)?).await?)
    }
}
