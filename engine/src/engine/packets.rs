//! Red packets: creating one (its money frozen first), grabbing, reading.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use super::input::NewPacket;
use super::{invalid, Engine};
use crate::actors::packet::PacketMsg;
use crate::config::EngineMode;
use crate::domain::packet::split;
use crate::domain::{gene_of_user, now_unix_ms, Fen, Id, UserId};
use crate::durable::Durable;
use crate::error::{EngineError, Entity};
use crate::store::{DirectGrab, HotStore, PacketDef, Voided};
use crate::views::PacketView;

#[derive(Clone, Debug, Serialize)]
pub struct GrabOk {
    pub packet_id: Id,
    pub grab_id: Id,
    pub amount: Fen,
}

impl Engine {
    pub async fn create_packet(&self, sender: &UserId, input: NewPacket) -> Result<PacketView, EngineError> {
        let pc = &self.cfg.packets;
        if input.total_amount.get() > pc.total_max_fen {
            return Err(invalid(format!("total_amount must be at most {}", pc.total_max_fen)));
        }
        let expires_in_s = input.expires_in_s.unwrap_or(pc.expires_in_s_default);
        if expires_in_s == 0 || expires_in_s > pc.expires_in_s_max {
            return Err(invalid(format!("expires_in_s must be 1-{}", pc.expires_in_s_max)));
        }
        let greeting = input.greeting.unwrap_or_default();
        if greeting.chars().count() > pc.greeting_len_max {
            return Err(invalid(format!("greeting must be at most {} characters", pc.greeting_len_max)));
        }
        let parts = split(input.kind, input.total_amount, input.count, pc.count_max, &mut fastrand::Rng::new())
            .map_err(|e| invalid(e.to_string()))?;
        let now = now_unix_ms();
        let def = PacketDef {
            packet_id: self.ids.next(gene_of_user(sender)),
            sender: sender.to_string(),
            kind: input.kind,
            total: input.total_amount,
            count: input.count,
            greeting,
            created_at_ms: now,
            expires_at_ms: now + expires_in_s * 1000,
            parts,
        };
        crate::telemetry::record_ids(&[("packet_id", def.packet_id)]);
        self.check_outbox()?;
        self.check_hot()?;
        // Money first: the packet exists only once its total is frozen.
        self.durable.freeze_for_packet(&def).await?;
        if let Err(e) = self.store.create_packet(&def).await {
            // The call may have run (a timeout is not a no): find out
            // before the money moves back.
            match self.store.void_packet(def.packet_id).await {
                Ok(Voided::Exists) => {}
                Ok(Voided::Voided) => {
                    unfreeze_voided(&self.durable, def.packet_id).await;
                    return Err(e.into());
                }
                Err(unknown) => {
                    tracing::warn!(packet_id = %def.packet_id, error = %unknown, "packet creation outcome unknown; resolving");
                    tokio::spawn(resolve_packet(self.store.clone(), self.durable.clone(), def.packet_id));
                    return Err(EngineError::OutcomeUnknown { what: "packet", id: def.packet_id });
                }
            }
        }
        Ok(PacketView::from(&crate::store::PacketSnapshot {
            def: Arc::new(def),
            status: crate::domain::PacketStatus::Active,
            grabs: vec![],
        }))
    }

    /// What became of a packet whose creation answered `outcome_unknown`:
    /// its view if it was created, `None` if it never will be (its money
    /// is unfrozen), still unknown while the hot store cannot say.
    pub async fn packet_outcome(&self, packet_id: Id) -> Result<Option<PacketView>, EngineError> {
        let unknown = |_| EngineError::OutcomeUnknown { what: "packet", id: packet_id };
        match self.store.void_packet(packet_id).await.map_err(unknown)? {
            Voided::Exists => Ok(Some(self.packet(packet_id).await?)),
            Voided::Voided => {
                self.durable.unfreeze_failed_packet(packet_id).await?;
                Ok(None)
            }
        }
    }

    pub async fn grab(&self, user_id: &UserId, packet_id: Id) -> Result<GrabOk, EngineError> {
        self.check_outbox()?;
        let grab_id = self.ids.next(gene_of_user(user_id));
        let result = match self.cfg.actors.mode {
            EngineMode::Actor => {
                let (reply, rx) = oneshot::channel();
                let msg = PacketMsg::Grab { user_id: user_id.to_string(), grab_id, reply };
                self.ask_packet(packet_id, msg, rx).await.and_then(|r| r)
            }
            // The actor path checks the hot store in `ask_packet`.
            EngineMode::Direct => {
                self.check_hot()?;
                match self.store.grab_direct(packet_id, user_id, grab_id, now_unix_ms()).await? {
                    DirectGrab::Granted(g) => Ok(g),
                    DirectGrab::Already(amount) => Err(EngineError::AlreadyGrabbed { amount }),
                    DirectGrab::Empty => Err(EngineError::PacketEmpty),
                    DirectGrab::Expired => Err(EngineError::PacketExpired),
                    DirectGrab::Unknown => Err(EngineError::NotFound(Entity::Packet)),
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "granted",
            Err(EngineError::AlreadyGrabbed { .. }) => "already_grabbed",
            Err(EngineError::PacketEmpty) => "empty",
            Err(EngineError::PacketExpired) => "expired",
            Err(EngineError::Overloaded(_) | EngineError::OutboxFull) => "overloaded",
            Err(_) => "failed",
        };
        self.metrics.grabs.with_label_values(&[outcome]).inc();
        result.map(|g| GrabOk { packet_id, grab_id: g.grab_id, amount: g.amount })
    }

    pub async fn packet(&self, packet_id: Id) -> Result<PacketView, EngineError> {
        let (tx, rx) = oneshot::channel();
        let snap = self.ask_packet(packet_id, PacketMsg::View(tx), rx).await?;
        Ok(PacketView::from(&snap))
    }
}

/// Attempts of [`resolve_packet`] before it gives up and leaves the money
/// frozen for an operator (logged at error), and the longest pause between
/// two: together about a day of a hot store that cannot answer.
const RESOLVE_TRIES_MAX: u32 = 3_000;
const RESOLVE_PAUSE_MS_MAX: u64 = 30_000;
/// The first pause: a hot store that timed out often answers again at once.
const RESOLVE_PAUSE_MS_FIRST: u64 = 100;

/// Settles a packet whose creation's outcome is unknown, once the hot
/// store answers again: created (nothing to do) or voided (unfrozen).
async fn resolve_packet(store: Arc<dyn HotStore>, durable: Durable, packet_id: Id) {
    let mut pause_ms = RESOLVE_PAUSE_MS_FIRST;
    for _ in 0..RESOLVE_TRIES_MAX {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        match store.void_packet(packet_id).await {
            Ok(Voided::Exists) => return,
            Ok(Voided::Voided) => return unfreeze_voided(&durable, packet_id).await,
            Err(_) => pause_ms = (pause_ms * 2).min(RESOLVE_PAUSE_MS_MAX),
        }
    }
    tracing::error!(%packet_id, "packet creation still unresolved: its money stays frozen");
}

/// Gives a voided packet's money back (once, however often it is called).
async fn unfreeze_voided(durable: &Durable, packet_id: Id) {
    if let Err(e) = durable.unfreeze_failed_packet(packet_id).await {
        tracing::error!(%packet_id, error = %e, "could not unfreeze a packet that was not created");
    }
}
