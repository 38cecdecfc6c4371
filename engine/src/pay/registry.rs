//! The channels rush pays through, and what calls out of rush.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::sandbox::SandboxChannel;
use super::wire::{Alipay, Ecard, Wechat, Wire};
use super::{ChannelKind, Channels, PaymentChannel};
use crate::config::Config;
use crate::durable::Pools;

/// The channels and what calls out of rush.
pub struct Payments {
    pub channels: Channels,
    pub sandboxes: HashMap<ChannelKind, Arc<SandboxChannel>>,
    /// Where sandbox callbacks go; set by `rush serve` once it has bound.
    pub notify_base: Arc<OnceLock<String>>,
    /// Outbound HTTP (sandbox callbacks, webhooks), bounded per call.
    pub http: reqwest::Client,
}

impl Payments {
    pub fn new(cfg: &Config, pools: &Pools) -> Payments {
        let pc = &cfg.payments;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(pc.http_timeout_ms))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let notify_base = Arc::new(OnceLock::new());
        if let Some(base) = &pc.notify_base_url {
            let _ = notify_base.set(base.trim_end_matches('/').to_string());
        }
        let age_ms_max = pc.callback_age_s_max.saturating_mul(1000);
        let wires: Vec<Arc<dyn Wire>> = vec![
            Arc::new(Wechat { secret: pc.wechat_secret.clone(), age_ms_max }),
            Arc::new(Alipay { secret: pc.alipay_secret.clone(), age_ms_max }),
            Arc::new(Ecard { secret: pc.ecard_secret.clone(), age_ms_max }),
        ];
        let mut sandboxes = HashMap::new();
        let mut list: Vec<Arc<dyn PaymentChannel>> = Vec::new();
        for wire in wires {
            let kind = wire.kind();
            let sb = Arc::new(SandboxChannel::new(
                wire,
                pools,
                notify_base.clone(),
                http.clone(),
                pc.sandbox.retry_max,
                pc.sandbox.refund_delay_ms,
                cfg.wallet.day_offset_min,
            ));
            list.push(sb.clone());
            sandboxes.insert(kind, sb);
        }
        Payments { channels: Channels::new(list), sandboxes, notify_base, http }
    }
}
