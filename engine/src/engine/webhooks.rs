//! Webhook subscriptions and their deliveries (sent by `workers::webhooks`).

use super::input::{SECRET_LEN_MAX, SECRET_LEN_MIN, URL_LEN_MAX};
use super::{invalid, Engine};
use crate::domain::{now_unix_ms, Id};
use crate::durable::webhooks::{DeliveryRecord, WebhookRecord, EVENT_TYPES};
use crate::error::{EngineError, Entity};

impl Engine {
    /// `POST /v1/admin/webhooks`: plain `http://` URLs (rush's outbound
    /// client carries no TLS; put a TLS-terminating proxy in between),
    /// known event types or `*`, a secret of 16-200 characters.
    pub async fn create_webhook(&self, url: &str, events: &[String], secret: &str) -> Result<Id, EngineError> {
        let wc = &self.cfg.webhooks;
        let rest = url.strip_prefix("http://").unwrap_or_default();
        // Visible ASCII only: a space or a control character is no URL.
        if url.len() > URL_LEN_MAX || rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(format!("url must be an http:// URL of at most {URL_LEN_MAX} characters")));
        }
        if events.is_empty() || events.len() > EVENT_TYPES.len() {
            return Err(invalid("events must list at least one event type, or \"*\""));
        }
        for e in events {
            if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
                return Err(invalid(format!("unknown event type {e:?}; known: {}", EVENT_TYPES.join(", "))));
            }
        }
        if !(SECRET_LEN_MIN..=SECRET_LEN_MAX).contains(&secret.chars().count()) {
            return Err(invalid(format!("secret must be {SECRET_LEN_MIN}-{SECRET_LEN_MAX} characters")));
        }
        if self.durable.webhook_count().await? >= u64::from(wc.webhooks_max) {
            return Err(EngineError::conflict("too_many_webhooks", format!("at most {} webhooks", wc.webhooks_max)));
        }
        let id = self.ids.next(0);
        self.durable.create_webhook(id, url, events, secret, now_unix_ms()).await?;
        Ok(id)
    }

    pub async fn webhook_deliveries(
        &self,
        webhook_id: Id,
        limit: Option<u32>,
    ) -> Result<(WebhookRecord, Vec<DeliveryRecord>), EngineError> {
        let hook = self.durable.webhook(webhook_id).await?.ok_or(EngineError::NotFound(Entity::Webhook))?;
        Ok((hook, self.durable.deliveries(webhook_id, self.page_limit(limit)?).await?))
    }
}
