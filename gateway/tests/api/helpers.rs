use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use rush_engine::telemetry::Metrics;
use rush_engine::{Config, Engine};
use serde_json::{json, Value};

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    pub admin: String,
    _dir: tempfile::TempDir,
    /// Redis mode: the server and this app's key prefix, cleaned up on drop.
    redis: Option<(String, String)>,
    /// Full mode: this app's Postgres database, dropped on drop.
    _pg: Option<rush_engine::testkit::ScratchDb>,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    Embedded,
    /// Redis hot store and outbox streams (`RUSH_TEST_REDIS_URL`, default
    /// database 15 of the local server), each app under its own key prefix.
    Redis,
    /// Redis + Kafka (`RUSH_TEST_KAFKA_BROKERS`, default the local tansu on
    /// 127.0.0.1:9092) + Postgres (a scratch database): the relay runs in
    /// the app, the Kafka worker beside it in the test process. Topics and
    /// consumer group are unique per app.
    Full,
}

pub fn test_redis_url() -> String {
    std::env::var("RUSH_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into())
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((url, prefix)) = &self.redis {
            delete_prefix(url, prefix);
        }
    }
}

/// Deletes every key under `prefix` (best effort: a failed clean-up leaves
/// keys under a unique prefix).
pub fn delete_prefix(url: &str, prefix: &str) {
    if let Ok(client) = redis::Client::open(url) {
        delete_prefix_with(client, prefix);
    }
}

/// [`delete_prefix`] through `client` (one built with TLS certificates).
pub fn delete_prefix_with(client: redis::Client, prefix: &str) {
    if let Ok(mut conn) = client.get_connection() {
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap_or_default();
        for chunk in keys.chunks(1000) {
            let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query(&mut conn);
        }
    }
}

/// Config for tests: a private data dir, port 0, quick timeout sweeps.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.workers.timeout_poll_ms = 50;
    cfg.workers.poll_wait_ms = 50;
    // Tests send bursts as one user from one address; the front door's
    // own tests (front.rs) turn the limits on.
    cfg.rate_limits.enabled = false;
    cfg
}

/// Kafka settings of a full-mode test: its own topics and group, few
/// partitions (a test's load is small; the broker is shared).
pub fn full_mode(cfg: &mut Config, prefix: &str) {
    cfg.kafka.brokers = Some(rush_engine::testkit::test_kafka_brokers());
    cfg.kafka.topic_prefix = prefix.to_string();
    cfg.kafka.group = format!("{prefix}-persist");
    cfg.kafka.partitions = 4;
    cfg.kafka.session_timeout_ms = 6_000;
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

pub async fn spawn_with(tune: impl FnOnce(&mut Config)) -> TestApp {
    spawn_in(Mode::Embedded, tune).await
}

pub async fn spawn_in(mode: Mode, tune: impl FnOnce(&mut Config)) -> TestApp {
    spawn_wrapped(mode, tune, |store| store).await
}

/// [`spawn_in`] with the engine's hot store passed through `wrap` (fault
/// injection).
pub async fn spawn_wrapped(
    mode: Mode,
    tune: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<dyn rush_engine::store::HotStore>) -> Arc<dyn rush_engine::store::HotStore>,
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = test_config(dir.path());
    let mut pg = None;
    let redis = match mode {
        Mode::Embedded => None,
        Mode::Redis | Mode::Full => {
            let prefix = rush_engine::testkit::unique_name("rushtest");
            cfg.redis.url = Some(test_redis_url());
            cfg.redis.key_prefix = prefix.clone();
            if let Mode::Full = mode {
                let db = rush_engine::testkit::ScratchDb::create().await.expect("Postgres (RUSH_TEST_POSTGRES_URL)");
                cfg.postgres.url = Some(db.url.clone());
                pg = Some(db);
                full_mode(&mut cfg, &prefix);
            }
            Some((test_redis_url(), prefix))
        }
    };
    tune(&mut cfg);
    let listener = TcpListener::bind(&cfg.http.addr).expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let node = rush_engine::Node::open_with(cfg, Metrics::new(), wrap).await.expect("engine");
    let engine = node.engine();
    engine.set_notify_base(&base);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    node.start_workers(stop_rx.clone()).expect("workers");
    if let Mode::Full = mode {
        let cfg = engine.config().clone();
        let (durable, log) = rush_engine::node::kafka_worker(&cfg).await.expect("kafka worker");
        let metrics = engine.metrics.clone();
        tokio::spawn(rush_engine::workers::persist_loop(
            log,
            durable,
            cfg.workers.clone(),
            metrics,
            None,
            None,
            stop_rx,
        ));
    }
    // Workers run until the test's runtime ends.
    std::mem::forget(stop_tx);
    let server = rush_gateway::app::http_server(listener, engine.clone()).expect("server");
    tokio::spawn(server);
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).build().expect("client");
    let mut app = TestApp { base, client, engine, admin: String::new(), _dir: dir, redis, _pg: pg };
    if !app.engine.config().jwks() && app.engine.config().dev_tokens() {
        app.admin = app.token("ops", "admin").await;
    }
    app
}

impl TestApp {
    /// The app's data dir (its SQLite files).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub async fn token(&self, user: &str, role: &str) -> String {
        let (s, body) = self.post("/v1/auth/dev-token", None, json!({"user_id": user, "role": role})).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["token"].as_str().expect("token").to_string()
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.expect("send")).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = self.client.patch(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.expect("send")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Self::read(req.send().await.expect("send")).await
    }

    async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// An event of `rows` × `cols` seats, one category priced 100 fen.
    pub async fn event(&self, rows: u32, cols: u32, extra: Value) -> String {
        let mut body = json!({
            "name": "Final", "venue": "Arena", "starts_at": "2030-12-31T20:00:00Z",
            "categories": [{"id": "std", "name": "Standard", "price": 100}],
            "layout": {"sections": [{"name": "A", "rows": rows, "cols": cols, "category": "std"}]}
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (s, v) = self.post("/v1/admin/events", Some(&self.admin), body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["event_id"].as_str().expect("event_id").to_string()
    }

    pub async fn credit(&self, user: &str, amount: i64) {
        let (s, v) = self
            .post(
                &format!("/v1/admin/wallet/{user}/credit"),
                Some(&self.admin),
                json!({"amount": amount, "reason": "test"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    pub async fn wallet(&self, token: &str) -> (i64, i64) {
        let (s, v) = self.get("/v1/wallet", Some(token)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        (v["available"].as_i64().expect("available"), v["frozen"].as_i64().expect("frozen"))
    }

    pub async fn settle(&self) {
        if !self.engine.settle(Duration::from_secs(30)).await {
            let m = self.engine.metrics.render();
            let seen: Vec<&str> = m.lines().filter(|l| l.contains("worker_") || l.contains("outbox_lag")).collect();
            panic!("workers did not settle: {seen:#?}");
        }
    }

    /// Money is conserved and every transfer balances.
    pub async fn assert_ledger_balances(&self) {
        let audit = self.engine.audit().await.expect("audit");
        assert_eq!(audit.sum_all_accounts, 0, "money created or destroyed");
        assert!(audit.lopsided_transfers.is_empty(), "{:?}", audit.lopsided_transfers);
    }
}

/// Journal entries of `kind` (both legs), straight from the durable store.
pub async fn journal_rows(app: &TestApp, kind: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM journal WHERE kind = $1")
        .bind(kind)
        .fetch_one(&app.engine.durable().db().read)
        .await
        .expect("journal")
}

/// An order's status as an admin reads it ("" if unreadable).
pub async fn order_status(app: &TestApp, order: &str) -> String {
    let (_, v) = app.get(&format!("/v1/orders/{order}"), Some(&app.admin)).await;
    v["status"].as_str().unwrap_or_default().to_string()
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no code>")
}

/// Polls `check` every 50 ms until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `RUSH__…` pairs as the environment of [`spawn_rush`].
pub fn env_vars<const N: usize>(pairs: [(&str, String); N]) -> Vec<(String, String)> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Every order id of the durable store's 16 order tables, as one query.
pub fn all_orders_sql() -> String {
    (0..16).map(|g| format!("SELECT order_id FROM orders_{g}")).collect::<Vec<_>>().join(" UNION ALL ")
}

/// Waits up to `secs` for exactly `orders` orders and `grabs` grabs in the
/// durable store read through `read`; panics with what it found.
pub async fn wait_persisted(read: &sqlx::AnyPool, orders: i64, grabs: i64, secs: u64) {
    let count = |sql: String| async move { sqlx::query_scalar::<_, i64>(&sql).fetch_one(read).await.unwrap_or(-1) };
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let got = (
            count(format!("SELECT COUNT(*) FROM ({}) o", all_orders_sql())).await,
            count("SELECT COUNT(*) FROM grabs".into()).await,
        );
        if got == (orders, grabs) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "in the durable store after {secs} s: (orders, grabs) {got:?}, not {:?}",
            (orders, grabs)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `rush` subcommand as a real process with `envs`; waits for its banner
/// line (JSON) and returns it.
pub fn spawn_rush(sub: &str, envs: &[(String, String)]) -> (std::process::Child, Value) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.arg(sub).env("RUST_LOG", "error").env("RUSH__RATE_LIMITS__ENABLED", "false");
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rush");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("banner");
    let banner: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("rush {sub} did not start: {line:?}"));
    (child, banner)
}

/// `rush reconcile` with `envs`: (exit code, the JSON report).
pub fn rush_reconcile(envs: &[(&str, &std::ffi::OsStr)]) -> (i32, Value) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.arg("reconcile").env("RUST_LOG", "error");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rush reconcile");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("report: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), report)
}

pub fn kill9(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// An HTTP client of a rush running as its own process.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn new(base: &str) -> Client {
        Client { http: reqwest::Client::new(), base: base.to_string() }
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self.http.post(url).json(&body),
            "PATCH" => self.http.patch(url).json(&body),
            _ => self.http.get(url),
        };
        let resp = req.bearer_auth(token).send().await.expect("send");
        let s = resp.status();
        (s, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn token(&self, user: &str, role: &str) -> String {
        let (_, v) = self.call("POST", "/v1/auth/dev-token", "", json!({"user_id": user, "role": role})).await;
        v["token"].as_str().expect("token").to_string()
    }

    /// Creates an event of one section, `rows` × `cols` seats at 1.00;
    /// returns its id.
    pub async fn create_event(&self, admin: &str, rows: u32, cols: u32) -> String {
        let body = json!({
            "name": "Test", "venue": "Lab", "starts_at": "2030-12-31T20:00:00Z",
            "categories": [{"id": "std", "name": "Std", "price": 100}],
            "layout": {"sections": [{"name": "A", "rows": rows, "cols": cols, "category": "std"}]}});
        let (s, v) = self.call("POST", "/v1/admin/events", admin, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["event_id"].as_str().expect("event id").to_string()
    }
}

/// A bearer token signed with `secret` (for a rush whose development
/// tokens are off, or to spare the round trip).
pub fn signed_token(secret: &str, user: &str, role: &str) -> String {
    let claims = rush_gateway::auth::Claims {
        sub: user.to_string(),
        role: role.to_string(),
        exp: rush_gateway::auth::now_s() + 3600,
    };
    rush_gateway::auth::Keys::new(secret).sign(&claims).expect("an HS256 key signs")
}
