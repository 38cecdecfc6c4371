//! Waiting rooms (issue 19): joining, where a user stands, leaving, the
//! admission token a hold needs, and the ticker that admits on every node.
//!
//! The queue's order and the admission bucket live in the hot store (see
//! `store::queue`): one order of admission for every node. An admission is
//! a token signed here (HMAC-SHA256 over event, user and expiry), so a hold
//! checks it without asking the store: valid until it expires, for that
//! user and event only.

use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;

use super::{invalid, Engine};
use crate::domain::{now_unix_ms, EventDef, Id, SaleStatus, WaitingRoom};
use crate::error::{EngineError, Entity};
use crate::pay::wire::{hmac, verify_mac};
use crate::store::queue::{Joined, QueueRules, Standing, Ticket};

/// Queue state is kept this long after the sale ends.
const KEEP_AFTER_SALE_MS: u64 = 86_400_000;
/// Longest a queue is kept when its sale has no end.
const KEEP_MAX_MS: u64 = 30 * 86_400_000;
/// A node stops admitting for an event nobody asked it about for this long.
const TICK_FORGET_AFTER: Duration = Duration::from_secs(60);
/// Domain separation: the admission key is never used for anything else.
const TOKEN_CONTEXT: &[u8] = b"rush-admission-v1\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    Waiting,
    Admitted,
    Expired,
}

/// A user's ticket in an event's waiting room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TicketView {
    pub ticket_id: Id,
    pub status: TicketStatus,
    /// From 1; absent before the opening (the order is drawn then) and once
    /// admitted.
    pub position: Option<u64>,
    /// Seconds until admission, estimated from the position and the rate
    /// (before the opening: until the opening).
    pub eta_s: Option<u64>,
    pub admission_token: Option<String>,
    pub admission_expires_at: Option<DateTime<Utc>>,
    /// The n-th admission of the event (from 1): the order users were
    /// admitted in.
    pub admission_no: Option<u64>,
}

/// Checks an event's waiting room settings against the configured bounds.
pub(crate) fn check_waiting_room(w: &WaitingRoom, cfg: &crate::config::WaitingRoomConfig) -> Result<(), EngineError> {
    if w.admit_per_s == 0 || w.admit_per_s > cfg.admit_per_s_max {
        return Err(invalid(format!("waiting_room.admit_per_s must be 1-{}", cfg.admit_per_s_max)));
    }
    if w.active_max == Some(0) {
        return Err(invalid("waiting_room.active_max must be at least 1 (leave it out for no bound)"));
    }
    if w.pre_queue_s > cfg.pre_queue_s_max {
        return Err(invalid(format!("waiting_room.pre_queue_s must be 0-{}", cfg.pre_queue_s_max)));
    }
    if w.admission_ttl_s == 0 || w.admission_ttl_s > cfg.admission_ttl_s_max {
        return Err(invalid(format!("waiting_room.admission_ttl_s must be 1-{}", cfg.admission_ttl_s_max)));
    }
    Ok(())
}

fn at_ms(ms: u64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Engine {
    fn admission_key(&self) -> &[u8] {
        let w = &self.cfg.waiting_room;
        if w.admission_secret.is_empty() {
            self.cfg.auth.jwt_secret.as_bytes()
        } else {
            w.admission_secret.as_bytes()
        }
    }

    /// `<event>.<expires ms>.<user, base64url>.<hmac, base64url>`.
    pub fn admission_token(&self, event_id: Id, user_id: &str, expires_ms: u64) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = format!("{event_id}.{expires_ms}.{}", b64.encode(user_id));
        let sig = hmac(self.admission_key(), &[TOKEN_CONTEXT, payload.as_bytes()]);
        format!("{payload}.{}", b64.encode(sig))
    }

    /// A hold's admission: signed by this deployment, for this user and
    /// event, not expired.
    pub(crate) fn check_admission(&self, event_id: Id, user_id: &str, token: Option<&str>) -> Result<(), EngineError> {
        let token = token.ok_or(EngineError::AdmissionRequired)?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = EngineError::AdmissionInvalid("not one this service issued");
        let (payload, sig) = token.rsplit_once('.').ok_or(EngineError::AdmissionInvalid("malformed"))?;
        let sig = b64.decode(sig).map_err(|_| EngineError::AdmissionInvalid("malformed"))?;
        if !verify_mac(self.admission_key(), &[TOKEN_CONTEXT, payload.as_bytes()], &sig) {
            return Err(forged);
        }
        let mut parts = payload.splitn(3, '.');
        let (Some(event), Some(expires), Some(user)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(forged);
        };
        if event != event_id.to_string() {
            return Err(EngineError::AdmissionInvalid("for another event"));
        }
        if b64.decode(user).ok().as_deref() != Some(user_id.as_bytes()) {
            return Err(EngineError::AdmissionInvalid("another user's"));
        }
        match expires.parse::<u64>() {
            Ok(ms) if ms > now_unix_ms() => Ok(()),
            Ok(_) => Err(EngineError::AdmissionInvalid("expired")),
            Err(_) => Err(forged),
        }
    }

    fn queue_rules(&self, def: &EventDef, w: &WaitingRoom) -> QueueRules {
        let (opens_ms, ends_ms) = def.sale_window_ms();
        let keep_until_ms = ends_ms.min(now_unix_ms().saturating_add(KEEP_MAX_MS)).saturating_add(KEEP_AFTER_SALE_MS);
        let burst_ms = self.cfg.waiting_room.admit_burst_ms;
        QueueRules {
            opens_ms,
            keep_until_ms,
            pre_queue_ms: u64::from(w.pre_queue_s) * 1000,
            admit_per_s: w.admit_per_s,
            active_max: w.active_max.unwrap_or(0),
            admission_ttl_ms: u64::from(w.admission_ttl_s) * 1000,
            burst: (f64::from(w.admit_per_s) * burst_ms as f64 / 1000.0).ceil().max(1.0),
        }
    }

    /// The event's waiting room and its rules; remembered for the ticker.
    async fn room(&self, event_id: Id) -> Result<(EventDef, WaitingRoom, QueueRules), EngineError> {
        let info = self.store.event_info(event_id).await?.ok_or(EngineError::NotFound(Entity::Event))?;
        let def = info.def.clone();
        let Some(w) = def.waiting_room else {
            return Err(EngineError::conflict("no_waiting_room", "this event has no waiting room: hold directly"));
        };
        let rules = self.queue_rules(&def, &w);
        self.queues.insert(event_id, Instant::now());
        Ok((def, w, rules))
    }

    fn ticket_view(&self, event_id: Id, user_id: &str, w: &WaitingRoom, r: &QueueRules, t: Ticket) -> TicketView {
        let mut v = TicketView {
            ticket_id: t.ticket_id,
            status: TicketStatus::Waiting,
            position: None,
            eta_s: None,
            admission_token: None,
            admission_expires_at: None,
            admission_no: None,
        };
        match t.standing {
            Standing::Waiting { position, .. } => {
                v.position = position;
                v.eta_s = Some(match position {
                    Some(p) => p.div_ceil(u64::from(w.admit_per_s.max(1))),
                    None => r.opens_ms.saturating_sub(t.now_ms).div_ceil(1000),
                });
            }
            Standing::Admitted { admit_no, expires_ms } => {
                v.status = TicketStatus::Admitted;
                v.admission_token = Some(self.admission_token(event_id, user_id, expires_ms));
                v.admission_expires_at = Some(at_ms(expires_ms));
                v.admission_no = Some(admit_no);
            }
            Standing::Expired { admit_no, expires_ms } => {
                v.status = TicketStatus::Expired;
                v.admission_expires_at = Some(at_ms(expires_ms));
                v.admission_no = Some(admit_no);
            }
        }
        v
    }

    /// Joins the event's waiting room (idempotent per user while waiting
    /// or admitted; after an expired admission, queues again at the back).
    pub async fn queue_join(&self, user_id: &str, event_id: Id) -> Result<TicketView, EngineError> {
        self.check_hot()?;
        let (def, w, rules) = self.room(event_id).await?;
        match def.sale_status(now_unix_ms()) {
            SaleStatus::Cancelled => {
                let reason = def.cancellation.map(|c| c.reason).unwrap_or_default();
                return Err(EngineError::EventCancelled { reason });
            }
            SaleStatus::Ended => {
                return Err(EngineError::SaleEnded { sale_ends_at: def.sale_ends_at.unwrap_or_else(Utc::now) })
            }
            _ => {}
        }
        let new = (self.ids.next_for_user(user_id), fastrand::u64(..));
        match self.store.queue_join(event_id, user_id, &rules, new).await? {
            Joined::Ticket(t) => {
                self.metrics.queue_ops.with_label_values(&["join"]).inc();
                Ok(self.ticket_view(event_id, user_id, &w, &rules, t))
            }
            Joined::NotOpen { .. } => {
                Err(EngineError::QueueNotOpen { opens_at: at_ms(rules.opens_ms.saturating_sub(rules.pre_queue_ms)) })
            }
        }
    }

    /// Where the user stands (admitting what is due first).
    pub async fn queue_me(&self, user_id: &str, event_id: Id) -> Result<TicketView, EngineError> {
        self.check_hot()?;
        let (_, w, rules) = self.room(event_id).await?;
        let t =
            self.store.queue_ticket(event_id, user_id, &rules).await?.ok_or(EngineError::NotFound(Entity::Ticket))?;
        Ok(self.ticket_view(event_id, user_id, &w, &rules, t))
    }

    /// Leaves the queue; an admission's slot goes to the next user.
    pub async fn queue_leave(&self, user_id: &str, event_id: Id) -> Result<(), EngineError> {
        self.check_hot()?;
        let (_, _, rules) = self.room(event_id).await?;
        if !self.store.queue_leave(event_id, user_id, &rules).await? {
            return Err(EngineError::NotFound(Entity::Ticket));
        }
        self.metrics.queue_ops.with_label_values(&["leave"]).inc();
        Ok(())
    }

    /// Marks this node alive for `ttl_ms` and counts the live nodes (the
    /// rate limits' share).
    pub async fn live_nodes(&self, ttl_ms: u64) -> Result<u32, EngineError> {
        Ok(self.store.live_nodes(self.node_id(), ttl_ms).await?)
    }

    /// One admission step for every queue this node served lately (the
    /// ticker; every node runs it, the store's bucket keeps the rate).
    pub async fn admit_due(&self) {
        let live: Vec<Id> = {
            self.queues.retain(|_, seen| seen.elapsed() < TICK_FORGET_AFTER);
            self.queues.iter().map(|e| *e.key()).collect()
        };
        let now = now_unix_ms();
        for event_id in live {
            // The rules as the event stands now: an opening moved later
            // (by any node) admits nobody before it.
            let Ok(Some(info)) = self.store.event_info(event_id).await else { continue };
            let Some(w) = info.def.waiting_room else { continue };
            let rules = self.queue_rules(&info.def, &w);
            if now < rules.opens_ms {
                continue;
            }
            match self.store.queue_advance(event_id, &rules).await {
                Ok(n) => self.metrics.queue_admitted.inc_by(n),
                Err(e) => tracing::debug!(error = %e, %event_id, "admitting from a waiting room failed"),
            }
        }
    }

    /// Runs [`Engine::admit_due`] every `waiting_room.tick_ms` until
    /// `shutdown`.
    pub async fn admit_loop(self: std::sync::Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.waiting_room.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.admit_due().await,
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }
}

/// Queues a node admits for, with when it was last asked about each.
pub(crate) type ServedQueues = DashMap<Id, Instant>;
