//! `mixed`: many events and packets at once, reads and writes: 35% holds
//! (random event and category), 35% grabs (random packet and user, so some
//! users grab twice and must be told `already_grabbed`), 15% event reads,
//! 15% packet reads. Checked with the seats and grab checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;
use serde_json::json;

use super::grab::Packets;
use super::seats::Events;
use crate::load::{Next, Req, Workload};

const HOLD: u32 = 0;
const GRAB: u32 = 1;
const READ: u32 = 2;

pub struct MixedLoad {
    events: Arc<Events>,
    packets: Arc<Packets>,
    tokens: Arc<Vec<Arc<str>>>,
    counter: AtomicU64,
    orders: Arc<str>,
    event_reads: Vec<Arc<str>>,
    packet_reads: Vec<Arc<str>>,
}

impl MixedLoad {
    pub fn new(events: Arc<Events>, packets: Arc<Packets>, tokens: Arc<Vec<Arc<str>>>) -> Self {
        MixedLoad {
            event_reads: events.ids.iter().map(|id| Arc::from(format!("/v1/events/{id}"))).collect(),
            packet_reads: packets.ids.iter().map(|id| Arc::from(format!("/v1/packets/{id}"))).collect(),
            events,
            packets,
            tokens,
            counter: AtomicU64::new(0),
            orders: Arc::from("/v1/orders"),
        }
    }
}

impl Workload for MixedLoad {
    fn next(&self, _task: usize) -> Next {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) as usize;
        // A multiplicative hash spreads users and targets without a RNG.
        let mix = n.wrapping_mul(2_654_435_761) >> 4;
        let user = mix % self.tokens.len();
        let token = Some(self.tokens[user].clone());
        let req = match n % 20 {
            0..7 => {
                let e = mix % self.events.ids.len();
                // A bit of the hash apart from the one choosing the event.
                let c = (mix >> 12) % 2;
                let cat = ["a", "b"][c];
                let body = json!({"event_id": self.events.ids[e], "category": cat, "quantity": 1});
                Req {
                    method: Method::POST,
                    path: self.orders.clone(),
                    token,
                    body: Some(Bytes::from(body.to_string())),
                    tag: [HOLD, e as u32, (user as u32) << 1 | c as u32],
                    admission: None,
                }
            }
            7..14 => {
                let p = mix % self.packets.ids.len();
                Req {
                    method: Method::POST,
                    path: self.packets.paths[p].clone(),
                    token,
                    body: None,
                    tag: [GRAB, p as u32, user as u32],
                    admission: None,
                }
            }
            14..17 => {
                let e = mix % self.event_reads.len();
                Req {
                    method: Method::GET,
                    path: self.event_reads[e].clone(),
                    token,
                    body: None,
                    tag: [READ, 0, 0],
                    admission: None,
                }
            }
            _ => {
                let p = mix % self.packet_reads.len();
                Req {
                    method: Method::GET,
                    path: self.packet_reads[p].clone(),
                    token,
                    body: None,
                    tag: [READ, 0, 0],
                    admission: None,
                }
            }
        };
        Next::Send(req)
    }

    fn observe(&self, req: &Req, status: u16, body: &[u8]) -> bool {
        match req.tag {
            [HOLD, e, uc] => {
                let cat = ["a", "b"][(uc & 1) as usize].to_string();
                self.events.observe(e as usize, uc >> 1, (cat, 1), status, body)
            }
            [GRAB, p, u] => self.packets.observe(p as usize, u, status, body),
            _ => status == 200,
        }
    }
}
