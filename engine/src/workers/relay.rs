//! The relay: partition outbox streams → Kafka.
//!
//! Each round reads up to `kafka.relay_batch_len_max` entries (the consumer
//! group `relay` of the outbox streams), hands them all to the idempotent
//! producer at once (librdkafka batches them, lingering `kafka.linger_ms`),
//! awaits every delivery report, and only then acknowledges and deletes the
//! entries in Redis. If any message of the round is refused or times out,
//! nothing from that batch on is acknowledged: the relay rewinds to its pending
//! entries and sends them again after a backoff. Kafka may thus see an event
//! twice (never out of order within an entity: librdkafka's idempotent
//! producer fails a partition's queue from the first failure on); the
//! workers apply each event id once. After a round Kafka failed, the relay
//! waits until nothing it handed over is still in flight and starts a new
//! producer: an idempotent producer whose messages timed out must bump its
//! epoch with the broker, and a broker that was frozen meanwhile can leave it
//! failing every later message (tansu answers `MessageTimedOut`, then
//! `ProducerFenced`, for minutes). A new producer id starts clean.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use super::lead::Leadership;
use crate::config::{KafkaConfig, WorkerConfig};
use crate::domain::now_unix_ms;
use crate::events::{kafka, EventLog};
use crate::store::Lease;
use crate::telemetry::Metrics;

/// The relay's consumer group on the outbox streams.
pub const RELAY_CONSUMER: &str = "relay";

pub struct Relay {
    pub log: Arc<dyn EventLog>,
    /// None: this relay is the only one (tests).
    pub lease: Option<Box<dyn Lease>>,
    pub producer: FutureProducer,
    pub kafka: KafkaConfig,
    pub workers: WorkerConfig,
    pub metrics: Metrics,
    /// How long a poll of the outbox waits when it is empty (a relay in
    /// `rush serve` is woken by its own node's appends before that).
    pub poll_wait: Duration,
}

/// A batch handed to the producer, awaiting its delivery reports.
pub struct InFlight {
    last: u64,
    deliveries: Vec<(DeliveryFuture, u64)>,
    refused: Option<String>,
}

impl InFlight {
    /// Waits for every delivery report (each comes within
    /// `kafka.delivery_timeout_ms`), whatever it says.
    async fn settle(self) {
        for (d, _) in self.deliveries {
            let _ = d.await;
        }
    }
}

/// Why a round failed.
#[derive(Debug)]
pub enum RoundError {
    /// Kafka refused or timed out a message: the producer is replaced.
    Kafka(String),
    /// The outbox could not be read, or the batch acknowledged.
    Outbox(String),
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundError::Kafka(e) => write!(f, "kafka refused a relay batch: {e}"),
            RoundError::Outbox(e) => write!(f, "{e}"),
        }
    }
}

impl Relay {
    /// One round: read, produce, await every delivery, acknowledge.
    /// Returns how many events went to Kafka (0 when the outbox was empty).
    pub async fn round(&self) -> Result<usize, RoundError> {
        self.round_waiting(self.poll_wait).await
    }

    /// [`Relay::round`], waiting up to `wait` for entries.
    async fn round_waiting(&self, wait: Duration) -> Result<usize, RoundError> {
        match self.send(wait).await? {
            Some(batch) => self.finish(batch).await,
            None => Ok(0),
        }
    }

    /// Reads a batch (waiting up to `wait` for one) and hands it to the
    /// producer without waiting for Kafka.
    async fn send(&self, wait: Duration) -> Result<Option<InFlight>, RoundError> {
        let batch = self
            .log
            .poll(RELAY_CONSUMER, self.kafka.relay_batch_len_max, wait)
            .await
            .map_err(|e| RoundError::Outbox(e.to_string()))?;
        let Some(last) = batch.last().map(|e| e.position) else {
            return Ok(None);
        };
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut refused = None;
        for env in &batch {
            let payload = serde_json::to_vec(env).map_err(|e| RoundError::Outbox(e.to_string()))?;
            let topic = kafka::topic(&self.kafka.topic_prefix, &env.event);
            let key = env.event.entity_id().to_string();
            let partition = i32::from(env.partition) % self.kafka.partitions;
            let record = FutureRecord::to(&topic).key(&key).payload(&payload).partition(partition);
            match self.producer.send_result(record) {
                Ok(d) => deliveries.push((d, env.event.at_ms())),
                Err((e, _)) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        Ok(Some(InFlight { last, deliveries, refused }))
    }

    /// Awaits every delivery report of a batch (even after a refusal, so
    /// nothing of it is still in flight when it is sent again), then
    /// acknowledges it; on any failure rewinds to the pending entries.
    async fn finish(&self, batch: InFlight) -> Result<usize, RoundError> {
        let n = batch.deliveries.len();
        let mut failed = batch.refused;
        for (d, at_ms) in batch.deliveries {
            match d.await {
                Ok(Ok(_)) => {
                    let lag_ms = now_unix_ms().saturating_sub(at_ms);
                    self.metrics.relay_lag.observe(lag_ms as f64 / 1000.0);
                }
                Ok(Err((e, _))) => failed = failed.or(Some(e.to_string())),
                Err(_) => failed = failed.or(Some("delivery report dropped".to_string())),
            }
        }
        if let Some(e) = failed {
            self.log.rewind(RELAY_CONSUMER).await;
            return Err(RoundError::Kafka(e));
        }
        if let Err(e) = self.log.commit(RELAY_CONSUMER, batch.last).await {
            self.log.rewind(RELAY_CONSUMER).await;
            return Err(RoundError::Outbox(format!("acknowledging relayed entries: {e}")));
        }
        self.metrics.worker_events.with_label_values(&["relay"]).inc_by(n as u64);
        Ok(n)
    }

    /// Keeps up to `kafka.relay_batches_in_flight` batches with the
    /// producer: the next batch is read and sent while earlier ones await
    /// Kafka. Batches are acknowledged strictly in order (an acknowledgement
    /// covers every entry up to its batch's last), so a failure rewinds to
    /// the first unacknowledged entry and everything after goes again.
    async fn pipeline(
        &self,
        in_flight: &mut std::collections::VecDeque<InFlight>,
        idle_wait: &mut Duration,
    ) -> Result<(), RoundError> {
        while in_flight.len() < self.kafka.relay_batches_in_flight {
            // Wait for new entries only when nothing else is pending.
            let wait = if in_flight.is_empty() { *idle_wait } else { Duration::ZERO };
            match self.send(wait).await? {
                Some(b) => {
                    *idle_wait = self.poll_wait;
                    in_flight.push_back(b);
                }
                None => {
                    // An idle outbox is looked at less and less often (each
                    // look reads 128 streams), up to `relay_idle_poll_max_ms`.
                    if in_flight.is_empty() {
                        let max = Duration::from_millis(self.kafka.relay_idle_poll_max_ms).max(self.poll_wait);
                        *idle_wait = (*idle_wait * 2).max(Duration::from_millis(1)).min(max);
                    }
                    break;
                }
            }
        }
        if let Some(oldest) = in_flight.pop_front() {
            if let Err(e) = self.finish(oldest).await {
                // The rewind re-delivers the later batches' entries too;
                // they go again only once none of them is still in flight.
                for b in in_flight.drain(..) {
                    b.settle().await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// After Kafka failed a round (nothing of it is in flight any more):
    /// a new producer, whose new producer id makes its sequence numbers
    /// start over. An idempotent producer that hit a fatal error refuses
    /// everything after; one whose messages timed out may keep failing
    /// after the broker is back (see the module's header).
    fn replace_producer(&mut self) {
        match self.producer.client().fatal_error() {
            Some((code, reason)) => {
                tracing::warn!(?code, %reason, "the Kafka producer failed fatally; starting a new one")
            }
            None => tracing::info!("Kafka failed a relay batch; starting a new producer"),
        }
        let brokers = self.kafka.brokers.clone().unwrap_or_default();
        match kafka::producer(&self.kafka, &brokers) {
            Ok(p) => self.producer = p,
            Err(e) => tracing::error!(error = %e, "starting a new Kafka producer failed"),
        }
    }

    /// Rounds until `shutdown`, while holding the lease. Then it flushes:
    /// what is with the producer is finished, and what the outbox still
    /// holds is sent in rounds that do not wait for more, until a round
    /// finds it empty (the caller bounds how long). Every event read is
    /// either in Kafka and acknowledged, or pending in Redis for the next
    /// relay.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let failures = self.metrics.worker_failures.with_label_values(&["relay"]);
        let mut backoff = self.workers.retry_backoff_ms;
        let mut lead = Leadership::new(self.lease.take(), RELAY_CONSUMER, "relay");
        let mut in_flight = std::collections::VecDeque::new();
        let mut idle_wait = self.poll_wait;
        loop {
            if !lead.check(self.log.as_ref(), &mut shutdown).await {
                // Lease lost: the next holder re-sends what is not acknowledged.
                in_flight.clear();
                if *shutdown.borrow() {
                    break;
                }
                continue;
            }
            if *shutdown.borrow() {
                self.flush(&mut in_flight).await;
                break;
            }
            match self.pipeline(&mut in_flight, &mut idle_wait).await {
                Ok(_) => backoff = self.workers.retry_backoff_ms,
                Err(e) => {
                    failures.inc();
                    tracing::warn!(error = %e, "relay round failed; retrying");
                    if matches!(e, RoundError::Kafka(_)) {
                        self.replace_producer();
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(backoff)) => {},
                        _ = shutdown.changed() => {},
                    }
                    backoff = (backoff * 2).min(self.workers.retry_backoff_max_ms);
                }
            }
        }
    }

    /// Shutdown: finishes the batches with the producer, then sends what
    /// the outbox holds until it is empty; stops at the first failure
    /// (what failed stays pending in Redis).
    async fn flush(&self, in_flight: &mut std::collections::VecDeque<InFlight>) {
        while let Some(b) = in_flight.pop_front() {
            if let Err(e) = self.finish(b).await {
                tracing::warn!(error = %e, "relay batch failed during shutdown; left pending");
                return;
            }
        }
        loop {
            match self.round_waiting(Duration::ZERO).await {
                Ok(0) => {
                    tracing::info!("relay flushed the outbox");
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "relay flush failed; left pending");
                    return;
                }
            }
        }
    }
}
