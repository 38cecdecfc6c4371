//! Idle live-update subscribers: `n` SSE streams held open on one path and
//! read to the end, to measure what the fan-out costs the hot path
//! (`--subscribers`). Each stream is a plain socket with its own task; the
//! bytes and `changes` messages received are counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// Streams opened at once while connecting.
const OPEN_PARALLEL: usize = 256;

pub struct Subscribers {
    tasks: JoinSet<()>,
    /// Streams whose answer was `200`.
    pub open: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicU64>,
    /// `event: changes` lines seen over all streams.
    pub changes: Arc<AtomicU64>,
}

impl Subscribers {
    /// Opens `n` streams of `path` (round the `addrs`), each as `token`.
    /// With `read_after` set, each stream reads its answer's first bytes
    /// (the status and snapshot) and then nothing until that time: rush's
    /// writes land in the socket buffers and only its own cost is measured.
    pub async fn open(
        addrs: &[SocketAddr],
        path: &str,
        token: &str,
        n: usize,
        read_after: Option<tokio::time::Instant>,
    ) -> anyhow::Result<Subscribers> {
        let open = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let changes = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(OPEN_PARALLEL) {
            let mut connecting = JoinSet::new();
            for i in chunk {
                let addr = addrs[i % addrs.len().max(1)];
                let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
                connecting.spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    s.write_all(req.as_bytes()).await?;
                    anyhow::Ok(s)
                });
            }
            while let Some(s) = connecting.join_next().await {
                let mut s = s??;
                let (open, bytes, changes) = (open.clone(), bytes.clone(), changes.clone());
                tasks.spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut first = true;
                    while let Ok(k) = s.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        let chunk = &buf[..k];
                        if first {
                            first = false;
                            if chunk.starts_with(b"HTTP/1.1 200") {
                                open.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(at) = read_after {
                                tokio::time::sleep_until(at).await;
                            }
                        }
                        bytes.fetch_add(k as u64, Ordering::Relaxed);
                        let n = chunk.windows(14).filter(|w| *w == b"event: changes").count();
                        changes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                });
            }
        }
        Ok(Subscribers { tasks, open, bytes, changes })
    }

    /// Waits (at most `max`) until `n` streams are open and a second passes
    /// without bytes arriving: the snapshots are in, the stage measures the
    /// changes alone.
    pub async fn settled(&self, n: usize, max: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let mut last = u64::MAX;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = self.bytes.load(Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) >= n && now == last {
                return;
            }
            last = now;
        }
    }

    /// Until closed, holds a seat of `event` ten times a second as the user
    /// of `token`, cancelling each half a second later: every read of the
    /// event finds seats changed.
    pub fn churn(&mut self, addr: SocketAddr, event: &str, token: Arc<str>) {
        let body = serde_json::json!({"event_id": event, "category": "a", "quantity": 1});
        self.tasks.spawn(async move {
            let mut conn = crate::client::Conn::new(addr);
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            let mut held = std::collections::VecDeque::new();
            loop {
                tick.tick().await;
                if held.len() >= 5 {
                    if let Some(order) = held.pop_front() {
                        let path = format!("/v1/orders/{order}/cancel");
                        let _ = conn.json(hyper::Method::POST, &path, Some(&token), None).await;
                    }
                }
                if let Ok((201, v)) =
                    conn.json(hyper::Method::POST, "/v1/orders", Some(&token), Some(body.clone())).await
                {
                    if let Some(order) = v["order_id"].as_str() {
                        held.push_back(order.to_string());
                    }
                }
            }
        });
    }

    /// Closes every stream.
    pub fn close(mut self) {
        self.tasks.abort_all();
    }
}
