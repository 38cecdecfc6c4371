//! A Redis Cluster connection that is opened again when it stops answering.
//!
//! After a `CLUSTER FAILOVER`, the redis crate's cluster connection (1.8.1)
//! can stop sending anything at all: every request times out for minutes
//! and not one command reaches any node (seen with MONITOR on all six nodes
//! of the test cluster), while a connection opened from the same client at
//! that moment answers in milliseconds. So: after `STALLED_AFTER` timeouts
//! in a row with no answer in between, the connection is replaced by a new
//! one (which reads the cluster's slots afresh); the calls in flight fail
//! as unavailable (503) as they would anyway.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionLike;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Timeouts in a row, with no answer between them, that make the
/// connection be opened again.
const STALLED_AFTER: u32 = 3;

#[derive(Clone)]
pub struct ReopeningCluster {
    client: Arc<ClusterClient>,
    current: Arc<RwLock<ClusterConnection>>,
    timeouts: Arc<AtomicU32>,
    reopening: Arc<AtomicBool>,
}

impl ReopeningCluster {
    pub async fn open(client: ClusterClient) -> Result<Self, RedisError> {
        let conn = client.get_async_connection().await?;
        Ok(ReopeningCluster {
            client: Arc::new(client),
            current: Arc::new(RwLock::new(conn)),
            timeouts: Arc::new(AtomicU32::new(0)),
            reopening: Arc::new(AtomicBool::new(false)),
        })
    }

    fn connection(&self) -> ClusterConnection {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts a timeout; the `STALLED_AFTER`th in a row opens a new
    /// connection in the background (one at a time).
    fn observe<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Err(e) if e.is_timeout() => {
                let n = self.timeouts.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= STALLED_AFTER && !self.reopening.swap(true, Ordering::SeqCst) {
                    let this = self.clone();
                    tokio::spawn(async move {
                        match this.client.get_async_connection().await {
                            Ok(conn) => {
                                *this.current.write().unwrap_or_else(|p| p.into_inner()) = conn;
                                this.timeouts.store(0, Ordering::SeqCst);
                                tracing::warn!(
                                    timeouts = n,
                                    "Redis Cluster stopped answering: connection opened again"
                                );
                            }
                            Err(e) => tracing::warn!(error = %e, "opening the Redis Cluster connection again failed"),
                        }
                        this.reopening.store(false, Ordering::SeqCst);
                    });
                }
            }
            Err(_) => {}
            Ok(_) => self.timeouts.store(0, Ordering::SeqCst),
        }
    }
}

impl ConnectionLike for ReopeningCluster {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.connection().req_packed_command(cmd).await;
            self.observe(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.connection().req_packed_commands(pipeline, offset, count).await;
            self.observe(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}
