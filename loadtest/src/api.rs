//! Setup and verification calls through rush's public API, so a scenario
//! runs against any rush.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
        match self.conn.json(method.clone(), path, token, body.clone()).await {
            Ok(answer) => Ok(answer),
            // The keep-alive connection closed under us (rush closes idle
            // ones after http.keep_alive_s): once more on a new one. Setup
            // and check calls are reads or idempotent.
            Err(_) => {
                self.conn = Conn::new(self.addr);
                self.conn.json(method, path, token, body).await
            }
        }
    }

    /// A GET answered in text (`/metrics`).
    pub async fn text(&mut self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self.conn.send(Method::GET, path, None, None).await?;
        Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
    }

    pub async fn create_event(&mut self, name: &str, sections: Value) -> anyhow::Result<String> {
        self.create_event_opening(name, sections, None).await
    }

    /// An event whose sale opens at `on_sale_at` (RFC 3339; `None`: now).
    pub async fn create_event_opening(
        &mut self,
        name: &str,
        sections: Value,
        on_sale_at: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "name": name, "venue": "loadtest", "starts_at": "2030-01-01T20:00:00Z",
            "categories": [{"id": "a", "name": "A", "price": 100}, {"id": "b", "name": "B", "price": 80}],
            "layout": {"sections": sections},
        });
        if let Some(at) = on_sale_at {
            body["on_sale_at"] = json!(at);
        }
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

    /// GETs many paths in parallel; answers in order.
    pub async fn get_many(&self, paths: Vec<(String, Arc<str>)>) -> anyhow::Result<Vec<(u16, Value)>> {
        parallel(self.addr, paths, |mut conn, (path, token)| async move {
            let answer = conn.json(Method::GET, &path, Some(&token), None).await?;
            Ok((conn, answer))
        })
        .await
    }

    /// Mints a token per user id, in parallel; tokens in order.
    pub async fn tokens(&self, users: &[String]) -> anyhow::Result<Vec<Arc<str>>> {
        parallel(self.addr, users.to_vec(), |mut conn, user| async move {
            let token = token_with(&mut conn, &user, "user").await?;
            Ok((conn, token))
        })
        .await
    }
}

/// Runs `f` over `items` on [`SETUP_PARALLEL`] connections (each call gets a
/// connection and hands it back); results in the order of `items`.
async fn parallel<T, R, F, Fut>(addr: SocketAddr, items: Vec<T>, f: F) -> anyhow::Result<Vec<R>>
where
    T: Clone + Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(Conn, T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<(Conn, R)>> + Send,
{
    let n = items.len();
    let items = Arc::new(items);
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..SETUP_PARALLEL.min(n) {
        let (items, f, next) = (items.clone(), f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(addr);
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i).cloned() else { break };
                let (c, r) = f(conn, item).await?;
                conn = c;
                out.push((i, r));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for t in tasks {
        for (i, r) in t.await.context("setup task")?? {
            all[i] = Some(r);
        }
    }
    all.into_iter().map(|r| r.ok_or_else(|| anyhow!("a setup call gave no answer"))).collect()
}

async fn token_with(conn: &mut Conn, user: &str, role: &str) -> anyhow::Result<Arc<str>> {
    let (s, v) =
        conn.json(Method::POST, "/v1/auth/dev-token", None, Some(json!({"user_id": user, "role": role}))).await?;
    if s != 200 {
        bail!("dev-token for {user}: {s} {v} (is the dev-token route enabled?)");
    }
    Ok(Arc::from(id(&v, "token")?))
}
