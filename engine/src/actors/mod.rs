//! Actors: one per hot event and one per packet on this node, created on
//! first use and stopped when idle. Each reads a bounded mailbox; a full
//! mailbox is answered at once with [`EngineError::Overloaded`] (503 with
//! `Retry-After`), never queued without limit.

pub mod event;
pub mod packet;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use prometheus::{Histogram, IntGauge};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::config::ActorConfig;
use crate::domain::Id;
use crate::error::EngineError;
use crate::store::HotStore;
use crate::telemetry::Metrics;

use event::{EventMsg, EventState};
use packet::{PacketMsg, PacketState};

/// What an actor task needs to know about its mailbox, and its gauges.
#[derive(Clone)]
pub struct Mailbox {
    pub batch_len_max: usize,
    pub idle: Duration,
    /// This node is the only writer of the store (embedded mode): the store
    /// can never find one of its decisions stale, so one that does is a bug.
    pub sole_owner: bool,
    depth: IntGauge,
    batch_len: Histogram,
    live: IntGauge,
}

impl Mailbox {
    fn received(&self, n: usize) {
        self.depth.sub(n as i64);
        self.batch_len.observe(n as f64);
    }

    fn stopped(&self) {
        self.live.dec();
    }
}

struct Handle<M> {
    tx: mpsc::Sender<M>,
    generation: u64,
}

pub struct Actors {
    store: Arc<dyn HotStore>,
    cfg: ActorConfig,
    metrics: Metrics,
    events: Arc<DashMap<Id, Handle<EventMsg>>>,
    packets: Arc<DashMap<Id, Handle<PacketMsg>>>,
    generation: AtomicU64,
    /// The runtime actors run on: the engine's, not the HTTP worker thread
    /// that happened to send the first message.
    rt: tokio::runtime::Handle,
    /// See [`Mailbox::sole_owner`].
    sole_owner: bool,
    /// Set by [`Actors::close`]: no new messages, no new actors.
    closed: AtomicBool,
    /// Actor tasks still running (they end when their mailbox is closed
    /// and empty, or after `idle_ms`).
    running: Arc<AtomicUsize>,
    /// The catalogue's remaining seats: each event actor refreshes its
    /// entry after its own changes.
    catalogue: event::CatalogueCache,
}

/// Rounds of deciding again after the store found decisions stale (another
/// node changed the entity meanwhile). Each round starts from a fresh
/// snapshot, so only that node's writes during one round trip can make a
/// decision stale again; past the bound the client is told to retry (503).
pub const STALE_ROUNDS_MAX: usize = 16;

/// How many times a send retries when it finds an actor that just stopped.
const RESPAWN_TRIES_MAX: usize = 3;

impl Actors {
    /// Must be called inside the runtime the actors should run on.
    pub fn new(
        store: Arc<dyn HotStore>,
        cfg: ActorConfig,
        metrics: Metrics,
        sole_owner: bool,
        catalogue: event::CatalogueCache,
    ) -> Self {
        Actors {
            catalogue,
            store,
            cfg,
            metrics,
            events: Arc::new(DashMap::new()),
            packets: Arc::new(DashMap::new()),
            generation: AtomicU64::new(0),
            rt: tokio::runtime::Handle::current(),
            sole_owner,
            closed: AtomicBool::new(false),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Stops intake for shutdown: later sends answer
    /// [`EngineError::ShuttingDown`]; each actor answers what its mailbox
    /// already holds, commits it, and ends once no sender is left.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // Dropping the registered senders lets each mailbox close once the
        // sends in progress (which hold a clone) are done.
        self.events.clear();
        self.packets.clear();
    }

    /// Forgets every actor (after the hot store was rebuilt: their memory
    /// predates it). Each ends once the messages already sent to it are
    /// answered; the next message starts a new one from the store.
    pub fn reset(&self) {
        self.events.clear();
        self.packets.clear();
    }

    /// Waits until every actor task has ended; false if `timeout` passed first.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Senders cloned just before `close` may have been registered
            // again by a racing spawn; clear until nothing is left.
            self.events.clear();
            self.packets.clear();
            if self.running.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// False once [`Actors::close`] was called.
    pub fn is_open(&self) -> bool {
        !self.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if !self.is_open() {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    fn mailbox(&self, kind: &str) -> Mailbox {
        Mailbox {
            batch_len_max: self.cfg.batch_len_max,
            idle: Duration::from_millis(self.cfg.idle_ms),
            sole_owner: self.sole_owner,
            depth: self.metrics.mailbox_depth.with_label_values(&[kind]),
            batch_len: self.metrics.batch_len.with_label_values(&[kind]),
            live: self.metrics.actors_live.with_label_values(&[kind]),
        }
    }

    /// Sends to the event's actor, spawning it (from the hot store) if it
    /// is not running. `Ok(false)` when the event does not exist.
    pub async fn send_event(&self, event_id: Id, msg: EventMsg) -> Result<bool, EngineError> {
        self.send(&self.events, event_id, "event", msg, || async {
            let Some(snapshot) = self.store.load_event(event_id).await? else { return Ok(None) };
            let state = EventState::from_snapshot(snapshot);
            let catalogue = self.catalogue.clone();
            Ok(Some(self.spawn(&self.events, event_id, "event", |rx, store, mailbox| {
                event::run(state, rx, store, mailbox, catalogue)
            })))
        })
        .await
    }

    /// The same for a packet's actor.
    pub async fn send_packet(&self, packet_id: Id, msg: PacketMsg) -> Result<bool, EngineError> {
        self.send(&self.packets, packet_id, "packet", msg, || async {
            let Some(snapshot) = self.store.load_packet(packet_id).await? else { return Ok(None) };
            let state = PacketState::from_snapshot(snapshot);
            Ok(Some(self.spawn(&self.packets, packet_id, "packet", |rx, store, mailbox| {
                packet::run(state, rx, store, mailbox)
            })))
        })
        .await
    }

    /// Sends `msg` to actor `id` of `map`, started by `start` (which loads
    /// it from the hot store; `None` when it does not exist) if none is
    /// running. A full mailbox is [`EngineError::Overloaded`]; one that
    /// closed under us (its actor ended) is replaced, a few times at most.
    async fn send<M, S, Fut>(
        &self,
        map: &DashMap<Id, Handle<M>>,
        id: Id,
        kind: &'static str,
        mut msg: M,
        start: S,
    ) -> Result<bool, EngineError>
    where
        S: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<mpsc::Sender<M>>, EngineError>>,
    {
        self.check_open()?;
        for _ in 0..RESPAWN_TRIES_MAX {
            let tx = match map.get(&id) {
                Some(h) => h.tx.clone(),
                None => match start().await? {
                    Some(tx) => tx,
                    None => return Ok(false),
                },
            };
            match tx.try_send(msg) {
                Ok(()) => {
                    self.metrics.mailbox_depth.with_label_values(&[kind]).inc();
                    return Ok(true);
                }
                Err(TrySendError::Full(_)) => return Err(EngineError::Overloaded(kind)),
                Err(TrySendError::Closed(m)) => {
                    map.remove_if(&id, |_, h| h.tx.same_channel(&tx));
                    msg = m;
                }
            }
        }
        Err(EngineError::Overloaded(kind))
    }

    /// Registers and starts an actor unless another task did first; returns
    /// the sender of whichever actor is registered.
    fn spawn<M, F, Fut>(
        &self,
        map: &Arc<DashMap<Id, Handle<M>>>,
        id: Id,
        kind: &'static str,
        start: F,
    ) -> mpsc::Sender<M>
    where
        M: Send + 'static,
        F: FnOnce(mpsc::Receiver<M>, Arc<dyn HotStore>, Mailbox) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let entry = map.entry(id).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.cfg.mailbox_len_max);
            let generation = self.generation.fetch_add(1, Ordering::Relaxed);
            let mailbox = self.mailbox(kind);
            mailbox.live.inc();
            let task = start(rx, self.store.clone(), mailbox);
            let map = map.clone();
            let running = self.running.clone();
            running.fetch_add(1, Ordering::SeqCst);
            self.rt.spawn(async move {
                task.await;
                // Unregister this actor (not a successor that replaced it).
                map.remove_if(&id, |_, h| h.generation == generation);
                running.fetch_sub(1, Ordering::SeqCst);
            });
            Handle { tx, generation }
        });
        entry.tx.clone()
    }
}
