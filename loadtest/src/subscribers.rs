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
    pub async fn open(addrs: &[SocketAddr], path: &str, token: &str, n: usize) -> anyhow::Result<Subscribers> {
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

    /// Closes every stream.
    pub fn close(mut self) {
        self.tasks.abort_all();
    }
}
