//! Setup and verification calls through rush's public API, so a scenario
//! runs against any rush.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::Conn;

/// How many connections setup and checks use in parallel.
pub const SETUP_PARALLEL: usize = 32;

pub struct Api {
    addr: SocketAddr,
    conn: Conn,
    pub admin: Arc<str>,
}

fn id(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field].as_str().map(str::to_string).ok_or_else(|| anyhow!("no {field} in {v}"))
}

impl Api {
    pub async fn new(addr: SocketAddr, run_id: &str) -> anyhow::Result<Self> {
        let mut conn = Conn::new(addr);
        let admin = token_with(&mut conn, &format!("{run_id}-admin"), "admin").await?;
        Ok(Api { addr, conn, admin })
    }

    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.conn.json(method, path, token, body).await
    }

    pub async fn create_event(&mut self, name: &str, sections: Value) -> anyhow::Result<String> {
        let body = json!({
            "name": name, "venue": "loadtest", "starts_at": "2030-01-01T20:00:00Z",
            "categories": [{"id": "a", "name": "A", "price": 100}, {"id": "b", "name": "B", "price": 80}],
            "layout": {"sections": sections},
        });
        let admin = self.admin.clone();
        let (s, v) = self.call(Method::POST, "/v1/admin/events", Some(&admin), Some(body)).await?;
        if s != 201 {
            bail!("creating event: {s} {v}");
        }
        id(&v, "event_id")
    }

    pub async fn credit(&mut self, user: &str, amount: i64) -> anyhow::Result<()> {
        let admin = self.admin.clone();
        let path = format!("/v1/admin/wallet/{user}/credit");
        let (s, v) =
            self.call(Method::POST, &path, Some(&admin), Some(json!({"amount": amount, "reason": "loadtest"}))).await?;
        if s != 200 {
            bail!("crediting {user}: {s} {v}");
        }
        Ok(())
    }

    pub async fn create_packet(&mut self, token: &str, kind: &str, total: i64, count: u32) -> anyhow::Result<String> {
        let body = json!({"kind": kind, "total_amount": total, "count": count});
        let (s, v) = self.call(Method::POST, "/v1/packets", Some(token), Some(body)).await?;
        if s != 201 {
            bail!("creating packet: {s} {v}");
        }
        id(&v, "packet_id")
    }

    /// GETs many paths in parallel, in order.
    pub async fn get_many(&self, paths: Vec<(String, Arc<str>)>) -> anyhow::Result<Vec<(u16, Value)>> {
        let paths = Arc::new(paths);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..SETUP_PARALLEL {
            let (paths, next, addr) = (paths.clone(), next.clone(), self.addr);
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((path, token)) = paths.get(i) else { break };
                    out.push((i, conn.json(Method::GET, path, Some(token), None).await?));
                }
                anyhow::Ok(out)
            }));
        }
        let mut all = vec![(0u16, Value::Null); paths.len()];
        for t in tasks {
            for (i, r) in t.await.context("get task")?? {
                all[i] = r;
            }
        }
        Ok(all)
    }

    /// Mints a token per user id, in parallel.
    pub async fn tokens(&self, users: &[String]) -> anyhow::Result<Vec<Arc<str>>> {
        let users = Arc::new(users.to_vec());
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..SETUP_PARALLEL {
            let (users, next, addr) = (users.clone(), next.clone(), self.addr);
            tasks.push(tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(u) = users.get(i) else { break };
                    out.push((i, token_with(&mut conn, u, "user").await?));
                }
                anyhow::Ok(out)
            }));
        }
        let mut all: Vec<Arc<str>> = vec![Arc::from(""); users.len()];
        for t in tasks {
            for (i, tok) in t.await.context("token task")?? {
                all[i] = tok;
            }
        }
        Ok(all)
    }
}

async fn token_with(conn: &mut Conn, user: &str, role: &str) -> anyhow::Result<Arc<str>> {
    let (s, v) =
        conn.json(Method::POST, "/v1/auth/dev-token", None, Some(json!({"user_id": user, "role": role}))).await?;
    if s != 200 {
        bail!("dev-token for {user}: {s} {v} (is the dev-token route enabled?)");
    }
    Ok(Arc::from(id(&v, "token")?))
}
