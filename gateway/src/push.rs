//! Live updates over Server-Sent Events (issue 19).
//!
//! One hub per event or packet with subscribers on this node: every
//! `push.interval_ms` it reads the entity through its actor (whose answers
//! are checked against the hot store's version, so changes made through
//! any node show), diffs against what it last sent, and queues at most one
//! `changes` message to every subscriber, serialised once. A new subscriber
//! gets a `snapshot` of what the hub last read, taken under the same lock
//! the hub sends under, so snapshot plus changes never skip one.
//!
//! Bounds: at most `push.subscribers_max` streams per node (503 past it);
//! at most `push.fanout_per_s_max` messages a second over all of a node's
//! streams (the interval grows with the audience, and a round's messages
//! are paced through it rather than sent in one burst) and
//! `push.seats_per_message_max` seats named per message;
//! each subscriber's queue holds `push.buffer_msgs` messages, and one that
//! falls that far behind is dropped (its stream ends after what is queued;
//! the client reconnects for a fresh snapshot): nothing is buffered without
//! limit. A comment line every `push.heartbeat_ms` of silence keeps
//! proxies from closing idle streams. Queue streams read the user's ticket
//! every `push.queue_poll_ms` (longer when this node's queue streams would
//! otherwise read more than `push.queue_reads_per_s_max` tickets a second)
//! and send it when it changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::HttpResponse;
use rush_engine::config::PushConfig;
use rush_engine::domain::Id;
use rush_engine::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// A hub with no subscribers stops after this many empty rounds.
const IDLE_ROUNDS_MAX: u32 = 8;

/// A round's due messages go out every this many ms (see `fan_out`).
const FANOUT_SLICE_MS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Event(Id),
    Packet(Id),
}

impl Topic {
    fn stream(self) -> &'static str {
        match self {
            Topic::Event(_) => "event",
            Topic::Packet(_) => "packet",
        }
    }
}

/// What a hub last read.
#[derive(Clone, Debug, PartialEq)]
enum State {
    /// Seats as (id, category, status), in seat-map order.
    Event(Vec<(String, String, &'static str)>),
    /// remaining_count, remaining_amount, status.
    Packet(u32, i64, String),
}

impl State {
    fn categories(seats: &[(String, String, &'static str)]) -> Vec<Value> {
        let mut order: Vec<&str> = vec![];
        let mut left: HashMap<&str, u32> = HashMap::new();
        for (_, cat, status) in seats {
            let n = left.entry(cat).or_insert_with(|| {
                order.push(cat);
                0
            });
            if *status == "available" {
                *n += 1;
            }
        }
        order.into_iter().map(|c| json!({"id": c, "remaining": left[c]})).collect()
    }

    fn snapshot(&self) -> Value {
        match self {
            State::Event(seats) => json!({
                "categories": State::categories(seats),
                "seats": seats.iter().map(|(id, _, s)| json!({"seat_id": id, "status": s})).collect::<Vec<_>>(),
            }),
            State::Packet(count, amount, status) => {
                json!({"remaining_count": count, "remaining_amount": amount, "status": status})
            }
        }
    }

    /// What changed since `old` (None: nothing), naming at most
    /// `seats_max` seats (past it, none, and how many changed).
    fn changes(&self, old: &State, seats_max: usize) -> Option<Value> {
        match (self, old) {
            (State::Event(new), State::Event(old)) if new.len() == old.len() => {
                let changed: Vec<&(String, String, &'static str)> =
                    new.iter().zip(old).filter(|(n, o)| n.2 != o.2 || n.0 != o.0).map(|(n, _)| n).collect();
                if changed.is_empty() {
                    return None;
                }
                let (cn, co) = (State::categories(new), State::categories(old));
                let categories: Vec<Value> = cn.into_iter().filter(|c| !co.contains(c)).collect();
                if changed.len() > seats_max {
                    return Some(json!({"categories": categories, "seats": [], "seats_omitted": changed.len()}));
                }
                let seats: Vec<Value> = changed.iter().map(|n| json!({"seat_id": n.0, "status": n.2})).collect();
                Some(json!({"categories": categories, "seats": seats}))
            }
            _ if self == old => None,
            // A packet's numbers, or a replaced seat map: all of it.
            _ => Some(self.snapshot()),
        }
    }
}

/// How often each of `streams` streams may get its turn when all of them
/// together get at most `per_s_max` a second: every `floor_ms`, or
/// `streams × 1000 ÷ per_s_max` ms once that is longer.
fn shared_interval(floor_ms: u64, streams: u64, per_s_max: u64) -> Duration {
    Duration::from_millis(floor_ms.max(streams.saturating_mul(1000) / per_s_max.max(1)))
}

/// One SSE message.
fn sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

struct Subscribers {
    last: State,
    /// `last` as a `snapshot` message, serialised once for every new
    /// subscriber until it changes.
    snapshot: Option<Bytes>,
    live: Vec<Subscriber>,
}

impl Subscribers {
    fn snapshot(&mut self) -> Bytes {
        self.snapshot.get_or_insert_with(|| sse("snapshot", &self.last.snapshot())).clone()
    }
}

struct Hub {
    subs: Mutex<Subscribers>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Subscribers> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Push {
    cfg: PushConfig,
    engine: Arc<Engine>,
    hubs: Mutex<HashMap<Topic, Arc<Hub>>>,
    open: Arc<AtomicUsize>,
}

/// Counts a stream while it lives: until its body ends, or until the node
/// drops it as too slow (its connection may linger while a client that
/// never reads holds the bytes already written; its slot does not).
struct Open {
    open: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    released: std::sync::atomic::AtomicBool,
}

impl Open {
    /// Whether the node dropped this stream (or it ended).
    fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.gauge.dec();
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.release();
    }
}

/// A subscriber of a hub: where its messages go, and its slot.
type Subscriber = (mpsc::Sender<Bytes>, Arc<Open>);

impl Push {
    pub fn new(engine: Arc<Engine>) -> Push {
        Push {
            cfg: engine.config().push.clone(),
            engine,
            hubs: Mutex::new(HashMap::new()),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn admit(&self, stream: &'static str) -> Result<Arc<Open>, ApiError> {
        let m = &self.engine.metrics;
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.cfg.subscribers_max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            m.push_dropped.with_label_values(&["full"]).inc();
            let mut e = ApiError::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("this node serves {} live streams already; retry shortly", self.cfg.subscribers_max),
            );
            e.retry_after_s = Some(1);
            return Err(e);
        }
        let gauge = m.push_subscribers.with_label_values(&[stream]);
        gauge.inc();
        Ok(Arc::new(Open { open: self.open.clone(), gauge, released: Default::default() }))
    }

    async fn read(&self, topic: Topic) -> Result<State, rush_engine::EngineError> {
        Ok(match topic {
            Topic::Event(id) => State::Event(
                self.engine.seats(id, None).await?.into_iter().map(|s| (s.seat_id, s.category, s.status)).collect(),
            ),
            Topic::Packet(id) => {
                let p = self.engine.packet(id).await?;
                let status = serde_json::to_value(p.status).ok().and_then(|v| v.as_str().map(str::to_string));
                State::Packet(p.remaining_count, p.remaining_amount.get(), status.unwrap_or_default())
            }
        })
    }

    /// A stream of `topic`: its snapshot, then its changes.
    pub async fn subscribe(self: &Arc<Self>, topic: Topic) -> Result<HttpResponse, ApiError> {
        let open = self.admit(topic.stream())?;
        let existing = self.hubs.lock().unwrap_or_else(|p| p.into_inner()).get(&topic).cloned();
        let hub = match existing {
            // Its entity exists; its last read is the snapshot.
            Some(h) => h,
            None => {
                // Unknown ids are 404 before any stream starts.
                let first = self.read(topic).await?;
                let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
                match hubs.get(&topic) {
                    Some(h) => h.clone(),
                    None => {
                        let subs = Subscribers { last: first, snapshot: None, live: vec![] };
                        let h = Arc::new(Hub { subs: Mutex::new(subs) });
                        hubs.insert(topic, h.clone());
                        tokio::spawn(self.clone().run(topic, h.clone()));
                        h
                    }
                }
            }
        };
        let (tx, rx) = mpsc::channel(self.cfg.buffer_msgs);
        {
            let mut s = hub.lock();
            let _ = tx.try_send(s.snapshot());
            s.live.push((tx, open.clone()));
        }
        Ok(self.respond(rx, open))
    }

    fn respond(&self, rx: mpsc::Receiver<Bytes>, open: Arc<Open>) -> HttpResponse {
        let heartbeat = Duration::from_millis(self.cfg.heartbeat_ms);
        // One timer per stream only while silent, for the heartbeat: an
        // idle audience of thousands costs nothing between messages. The
        // stream ends when its sender is dropped (a slow subscriber, or the
        // node shutting down: see `run`).
        let body = futures_util::stream::unfold((rx, open), move |(mut rx, open)| async move {
            match tokio::time::timeout(heartbeat, rx.recv()).await {
                Ok(Some(msg)) => Some((Ok::<_, actix_web::Error>(msg), (rx, open))),
                Ok(None) => None,
                Err(_) => Some((Ok(Bytes::from_static(b": heartbeat\n\n")), (rx, open))),
            }
        });
        HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("cache-control", "no-cache"))
            .insert_header(("x-accel-buffering", "no"))
            .streaming(body)
    }

    /// The pause between a hub's rounds: `push.interval_ms`, longer when
    /// this node's streams would otherwise take more than
    /// `push.fanout_per_s_max` messages a second.
    fn interval(&self) -> Duration {
        shared_interval(self.cfg.interval_ms, self.open.load(Ordering::Relaxed) as u64, self.cfg.fanout_per_s_max)
    }

    /// The hub's rounds: read, diff, send; stops once nobody listens.
    async fn run(self: Arc<Self>, topic: Topic, hub: Arc<Hub>) {
        let mut idle = 0;
        let mut pace = Duration::ZERO;
        loop {
            tokio::time::sleep(self.interval().saturating_sub(pace)).await;
            pace = Duration::ZERO;
            if !self.engine.intake_open() {
                // Shutting down: every stream ends (it would hold the drain
                // open); clients reconnect to another node.
                hub.lock().live.clear();
                self.hubs.lock().unwrap_or_else(|p| p.into_inner()).remove(&topic);
                return;
            }
            {
                let mut s = hub.lock();
                s.live.retain(|(t, _)| !t.is_closed());
                if s.live.is_empty() {
                    idle += 1;
                    if idle >= IDLE_ROUNDS_MAX {
                        // Removed under the map's lock, so a subscriber
                        // either finds this hub before or a new one after.
                        drop(s);
                        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
                        let s = hub.lock();
                        if s.live.is_empty() {
                            hubs.remove(&topic);
                            return;
                        }
                        idle = 0;
                    }
                    continue;
                }
                idle = 0;
            }
            let state = match self.read(topic).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, ?topic, "a live update read failed");
                    continue;
                }
            };
            let (msg, round) = {
                let mut s = hub.lock();
                let msg = state.changes(&s.last, self.cfg.seats_per_message_max).map(|c| sse("changes", &c));
                if msg.is_some() {
                    s.snapshot = None;
                }
                s.last = state;
                // Exactly the subscribers that got an older snapshot: one
                // that joins from here on gets this state's.
                let round = msg.is_some().then(|| s.live.clone());
                (msg, round)
            };
            if let (Some(msg), Some(round)) = (msg, round) {
                let started = tokio::time::Instant::now();
                if self.fan_out(&msg, round).await {
                    // The slow ones' senders go: their streams end after
                    // what is queued.
                    hub.lock().live.retain(|(_, open)| !open.released());
                }
                // The round's pacing counts towards the pause.
                pace = started.elapsed();
            }
        }
    }

    /// Sends `msg` to every subscriber of a round, paced at
    /// `push.fanout_per_s_max` a second: the `i`th message is due
    /// `i ÷ fanout_per_s_max` seconds into the round, and every
    /// `FANOUT_SLICE_MS` the due ones go out. Ten thousand streams never
    /// wake at once to stall a worker between two requests (a burst that
    /// delays every hold on that worker, not only its own share of the
    /// CPU). A subscriber already gone costs no turn. One too slow to take
    /// it (its buffer full) is dropped and its slot freed at once; whether
    /// any was is the answer.
    async fn fan_out(&self, msg: &Bytes, round: Vec<Subscriber>) -> bool {
        let per_s = self.cfg.fanout_per_s_max.max(1);
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(FANOUT_SLICE_MS));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dropped = &self.engine.metrics.push_dropped;
        let mut slow = false;
        let mut round = round.into_iter().filter(|(t, _)| !t.is_closed()).peekable();
        let mut sent: u64 = 0;
        while round.peek().is_some() {
            ticks.tick().await;
            if !self.engine.intake_open() {
                // Shutting down: `run` ends every stream next.
                break;
            }
            let elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let due = elapsed_us.saturating_mul(per_s) / 1_000_000 + 1;
            while sent < due {
                // (`round` skips the closed ones as it goes.)
                let Some((t, open)) = round.next() else { break };
                sent += 1;
                if let Err(mpsc::error::TrySendError::Full(_)) = t.try_send(msg.clone()) {
                    dropped.with_label_values(&["slow"]).inc();
                    open.release();
                    slow = true;
                }
            }
        }
        slow
    }

    /// A user's ticket in an event's waiting room, on every change.
    pub async fn queue(self: &Arc<Self>, event_id: Id, user_id: String) -> Result<HttpResponse, ApiError> {
        let open = self.admit("queue")?;
        let first = self.engine.queue_me(&user_id, event_id).await?;
        let (tx, rx) = mpsc::channel(self.cfg.buffer_msgs);
        // The engine's view serialises as the API's ticket (ids as strings).
        let ticket = |t: rush_engine::engine::queue::TicketView| serde_json::to_value(t).unwrap_or_default();
        let mut last = ticket(first);
        let _ = tx.try_send(sse("ticket", &last));
        let engine = self.engine.clone();
        let (poll_ms, reads_max) = (self.cfg.queue_poll_ms, self.cfg.queue_reads_per_s_max);
        let queues = engine.metrics.push_subscribers.with_label_values(&["queue"]);
        let slot = open.clone();
        tokio::spawn(async move {
            loop {
                // The node's queue streams share `queue_reads_per_s_max`.
                let every = shared_interval(poll_ms, u64::try_from(queues.get()).unwrap_or(0), reads_max);
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = tx.closed() => return,
                }
                if !engine.intake_open() {
                    return;
                }
                let Ok(t) = engine.queue_me(&user_id, event_id).await else { continue };
                let now = ticket(t);
                if now != last {
                    match tx.try_send(sse("ticket", &now)) {
                        Ok(()) => last = now,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            engine.metrics.push_dropped.with_label_values(&["slow"]).inc();
                            slot.release();
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
            }
        });
        Ok(self.respond(rx, open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(st: &[&'static str]) -> State {
        State::Event(
            st.iter().enumerate().map(|(i, s)| (format!("s{i}"), if i < 2 { "a" } else { "b" }.into(), *s)).collect(),
        )
    }

    #[test]
    fn a_node_shares_its_budget_among_its_streams() {
        // Few streams: the floor. Many: the budget split between them.
        assert_eq!(shared_interval(250, 100, 3_000), Duration::from_millis(250));
        assert_eq!(shared_interval(250, 10_000, 3_000), Duration::from_millis(3_333));
        assert_eq!(shared_interval(1_000, 10_000, 2_000), Duration::from_millis(5_000));
        // Never a division by zero, never an overflow.
        assert_eq!(shared_interval(250, 10, 0), Duration::from_millis(10_000));
        assert_eq!(shared_interval(250, u64::MAX, 1), Duration::from_millis(u64::MAX));
    }

    #[test]
    fn changes_name_the_seats_and_categories_that_moved() {
        let old = seats(&["available", "available", "available"]);
        let new = seats(&["held", "available", "available"]);
        assert_eq!(
            new.changes(&old, 10),
            Some(json!({"categories": [{"id": "a", "remaining": 1}], "seats": [{"seat_id": "s0", "status": "held"}]}))
        );
        assert_eq!(new.changes(&new, 10), None);
        let all = seats(&["held", "held", "held"]);
        assert_eq!(
            all.changes(&old, 2),
            Some(json!({
                "categories": [{"id": "a", "remaining": 0}, {"id": "b", "remaining": 0}],
                "seats": [], "seats_omitted": 3
            }))
        );
        assert_eq!(old.snapshot()["categories"], json!([{"id": "a", "remaining": 2}, {"id": "b", "remaining": 1}]));
    }
}
