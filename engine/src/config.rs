//! Layered configuration: defaults < a TOML file < `RUSH__SECTION__FIELD`
//! environment variables. Unknown keys are refused at every layer so a typo
//! never passes silently. Every limit the engine enforces lives here with the
//! reason for its default.
//!
//! Why one file of ~1 200 lines: every section's struct, its defaults and the
//! reason for each sit together, so a limit is found in one place; validation
//! and its tests follow.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `development` (default) or `production`. Production turns the
    /// development routes (`/v1/auth/dev-token`, `/v1/sandbox/…`) off unless
    /// explicitly on (which it refuses), refuses the built-in development
    /// secrets, and refuses secrets written in the config file: they come
    /// from the environment, directly or as `RUSH__…_FILE=<path>`.
    pub profile: Profile,
    /// This node's id in snowflake ids (0..=1023). Two live nodes must differ.
    pub node_id: u16,
    /// Redis mode: ignore `node_id` and lease the first free id from a hash
    /// of the host name on (Kubernetes Deployments, whose pods have no
    /// ordinal). A live node's lease is renewed; a dead one's runs out.
    pub node_id_auto: bool,
    /// Threads the process runs on: the async runtime's workers and, unless
    /// `http.workers` says otherwise, the HTTP server's. 0 = one per core
    /// the process may use. In Kubernetes, set it from the pod's CPU
    /// request (a pod without a CPU limit otherwise sizes itself to the
    /// node's cores and contends with its neighbours).
    pub threads: usize,
    /// Where embedded mode keeps its SQLite file.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub actors: ActorConfig,
    pub events: EventConfig,
    pub packets: PacketConfig,
    pub orders: OrderConfig,
    pub workers: WorkerConfig,
    pub sqlite: SqliteConfig,
    pub redis: RedisConfig,
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub outbox: OutboxConfig,
    pub payments: PaymentsConfig,
    pub wallet: WalletConfig,
    pub webhooks: WebhookConfig,
    pub shutdown: ShutdownConfig,
    pub telemetry: TelemetryConfig,
    pub waiting_room: WaitingRoomConfig,
    pub push: PushConfig,
    pub rate_limits: RateLimitConfig,
    /// Secret settings found in the config file (filled by [`Config::load_from`]).
    #[serde(skip)]
    pub secrets_in_file: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    #[default]
    Development,
    Production,
}

/// Settings that hold secrets: never logged, and in production never read
/// from the config file.
pub const SECRET_KEYS: &[&str] = &[
    "auth.jwt_secret",
    "payments.wechat_secret",
    "payments.alipay_secret",
    "payments.ecard_secret",
    "waiting_room.admission_secret",
    "kafka.sasl_password",
];

/// Settings that may carry a password in their URL.
const URL_KEYS: &[&str] = &["postgres.url", "redis.url"];
/// Clock skew beyond five minutes is a broken clock, not skew: refused.
const LEEWAY_S_MAX: u64 = 300;

fn url_has_password(url: &str) -> bool {
    redact_url(url) != url
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for
/// messages and logs; a `password=…` parameter (`?password=…`, or a
/// `key=value` connection string) is masked too.
pub fn redact_url(url: &str) -> String {
    let masked = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    redact_password_params(&masked)
}

/// Every `password=VALUE` (any case), VALUE up to `&`, `;` or whitespace.
fn redact_password_params(s: &str) -> String {
    const KEY: &str = "password=";
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find(KEY) {
        let start = i + found + KEY.len();
        let end = s[start..].find(['&', ';', ' ', '\t', '\n']).map_or(s.len(), |n| start + n);
        out.push_str(&s[i..start]);
        out.push_str("***");
        i = end;
    }
    out.push_str(&s[i..]);
    out
}

/// Graceful shutdown (see the protocol in `gateway/src/serve.rs` and the
/// README): on SIGTERM readiness fails at once, requests are still served
/// for `drain_delay_ms` (load balancers notice), then intake stops, the
/// mailboxes drain and the outbox is flushed; the process exits within
/// `timeout_ms` of the signal whatever is left (nothing acknowledged is
/// lost by that: it is already in the outbox).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// From SIGTERM to exit, at most (the issue's `shutdown_timeout_ms`).
    /// Kubernetes' `terminationGracePeriodSeconds` must be longer than the
    /// preStop pause plus this.
    pub timeout_ms: u64,
    /// From SIGTERM to refusing new requests, while readiness already fails.
    pub drain_delay_ms: u64,
}

/// Logs, traces and the metrics listener of `rush worker` / `rush relay`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` or `json`; unset: text in development, JSON in production.
    /// Traces go to an OTLP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; see the README.
    pub log_format: Option<LogFormat>,
    /// Where `rush worker` and `rush relay` serve `/metrics`, `/healthz`
    /// and `/readyz` (`rush serve` serves them on `http.addr`); empty (the
    /// default, so several can run on one host): none. Kubernetes: `0.0.0.0:9464`.
    pub metrics_addr: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Payment channels and the payments worker.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// HMAC-SHA256 keys the channels sign their callbacks with (the sandbox
    /// channels sign with the same keys). Development defaults; set them
    /// from the environment anywhere real.
    pub wechat_secret: String,
    pub alipay_secret: String,
    pub ecard_secret: String,
    /// Where channels send callbacks (`<base>/v1/channels/<channel>/notify`);
    /// unset: this node's own listener, which suits the sandbox.
    pub notify_base_url: Option<String>,
    /// A payment still pending this long after it was created is asked
    /// about at its channel (active query): a lost callback still completes.
    pub query_after_ms: u64,
    /// Active queries back off, doubling from `query_after_ms` up to this.
    pub query_backoff_max_ms: u64,
    /// An unpaid payment is closed at its channel this long after it
    /// expires (the order's hold is released at expiry by the sweeper).
    pub close_grace_ms: u64,
    /// A callback signed longer ago than this is refused as a replay.
    pub callback_age_s_max: u64,
    /// How often the payments worker looks for payments due a check.
    pub worker_poll_ms: u64,
    /// Payments checked per round.
    pub worker_batch_max: usize,
    /// A payment claimed by one node's worker is left to it this long
    /// before another node may check it (the claimer may have died).
    pub claim_ms: u64,
    /// How long a recharge payment may be paid.
    pub recharge_ttl_s: u64,
    /// Largest recharge in fen (50 000.00 by default).
    pub recharge_max_fen: i64,
    /// Bound on every call to a channel or from the sandbox to rush.
    pub http_timeout_ms: u64,
    pub sandbox: SandboxConfig,
}

/// The sandbox channels: `POST /v1/sandbox/...` lets a test or a developer
/// play the buyer; the settings make the callbacks misbehave the way real
/// ones do. Off in production.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Serves `/v1/sandbox/...`; unset: on in development, off in
    /// production. See [`Config::sandbox`].
    pub enabled: Option<bool>,
    /// Percent of callbacks never sent (0..=100).
    pub drop_pct: u8,
    /// Wait before each callback.
    pub delay_ms: u64,
    /// Extra copies of each callback.
    pub duplicates: u32,
    /// Sends again when rush does not acknowledge, as real channels do, up
    /// to this many times (1 s, 2 s, 4 s … apart).
    pub retry_max: u32,
    /// How long each refund takes at the channel (a slow bank).
    pub refund_delay_ms: u64,
}

/// Wallet rules.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalletConfig {
    /// Withdrawals one user may request per day (rejected ones do not count).
    pub withdraw_count_per_day_max: u32,
    /// Fen one user may withdraw per day (10 000.00 by default).
    pub withdraw_fen_per_day_max: i64,
    /// Smallest withdrawal in fen.
    pub withdraw_min_fen: i64,
    /// Where a risk day starts, in minutes east of UTC (480 = China
    /// Standard Time); also the day of the channels' bills.
    pub day_offset_min: i32,
}

/// Webhook deliveries.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// A delivery is retried until this long after its event, then failed.
    pub retry_window_s: u64,
    /// First retry delay; it doubles per attempt up to `backoff_max_ms`.
    pub backoff_first_ms: u64,
    pub backoff_max_ms: u64,
    /// Bound on one delivery's HTTP call.
    pub timeout_ms: u64,
    /// How often the deliverer looks for due deliveries, and how many it
    /// sends at once.
    pub poll_ms: u64,
    pub batch_max: usize,
    /// Most registered webhooks; each event is written once per subscriber.
    pub webhooks_max: u32,
    /// A delivery claimed by one node is left to it this long.
    pub claim_ms: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            wechat_secret: "rush-dev-wechat-secret".into(),
            alipay_secret: "rush-dev-alipay-secret".into(),
            ecard_secret: "rush-dev-ecard-secret".into(),
            notify_base_url: None,
            query_after_ms: 10_000,
            query_backoff_max_ms: 120_000,
            close_grace_ms: 2_000,
            callback_age_s_max: 300,
            worker_poll_ms: 500,
            worker_batch_max: 100,
            claim_ms: 30_000,
            recharge_ttl_s: 900,
            recharge_max_fen: 5_000_000,
            http_timeout_ms: 5_000,
            sandbox: SandboxConfig::default(),
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig { enabled: None, drop_pct: 0, delay_ms: 0, duplicates: 0, retry_max: 3, refund_delay_ms: 0 }
    }
}

impl Default for WalletConfig {
    fn default() -> Self {
        WalletConfig {
            withdraw_count_per_day_max: 3,
            withdraw_fen_per_day_max: 1_000_000,
            withdraw_min_fen: 100,
            day_offset_min: 0,
        }
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            retry_window_s: 24 * 3600,
            backoff_first_ms: 1_000,
            backoff_max_ms: 3_600_000,
            timeout_ms: 5_000,
            poll_ms: 500,
            batch_max: 32,
            webhooks_max: 100,
            claim_ms: 30_000,
        }
    }
}

/// Postgres as the durable store: set `url`
/// (`RUSH__POSTGRES__URL=postgres://rush@127.0.0.1/rush`); without it the
/// durable store is `rush.db` in the data dir.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Option<String>,
    /// Connections per process (reads and the workers' transactions).
    pub pool_max: u32,
    /// Bound on reaching the server at start: past it rush exits with an
    /// error naming Postgres.
    pub connect_timeout_ms: u64,
    /// A pooled connection idle at least this long is pinged before use
    /// (one that was busy moments ago is not: the ping is a round trip).
    pub ping_idle_ms: u64,
    /// Apply pending migrations when a process starts. Off, migrating is a
    /// deliberate step (`rush migrate`, once per release, before the new
    /// processes start): a process then only checks that every migration
    /// it knows is applied, and refuses to start otherwise. Either way a
    /// database migrated by a newer release is accepted (its migrations
    /// only expand the schema: README, "Upgrades"), so a rollback starts.
    pub migrate_on_start: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            pool_max: 16,
            connect_timeout_ms: 5_000,
            ping_idle_ms: 1_000,
            migrate_on_start: true,
        }
    }
}

/// Full mode: set `brokers` (`RUSH__KAFKA__BROKERS=127.0.0.1:9092`) with
/// `redis.url`, and the relay moves the Redis outbox streams to Kafka, where
/// `rush worker` consumes them into the durable store.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: Option<String>,
    /// Topics are `<prefix>.orders` and `<prefix>.packets`.
    pub topic_prefix: String,
    /// Partitions per topic, created by the relay when missing. The Kafka
    /// partition of an event is its logical partition (0..127) modulo this;
    /// the default keeps them equal.
    pub partitions: i32,
    pub replication_factor: i32,
    /// Consumer group of `rush worker`.
    pub group: String,
    /// `rush serve` runs the relay in-process; turn off to run `rush relay`
    /// as its own deployment.
    pub relay_in_serve: bool,
    /// Outbox entries relayed per batch.
    pub relay_batch_len_max: usize,
    /// Batches with the producer at once (the next is read and sent while
    /// earlier ones await Kafka); they are acknowledged in order.
    pub relay_batches_in_flight: usize,
    /// How long `rush relay` waits on an empty outbox before looking again
    /// (the relay inside `rush serve` is woken by its node's appends).
    pub relay_poll_ms: u64,
    /// The wait doubles while the outbox stays empty, up to this: an idle
    /// relay costs Redis little, and the first event after a lull waits at
    /// most this long.
    pub relay_idle_poll_max_ms: u64,
    /// Producer `linger.ms`: how long librdkafka waits to fill a batch.
    pub linger_ms: u64,
    /// Producer `message.timeout.ms`: an undelivered message fails after
    /// this; the relay then re-reads its unacknowledged entries and tries again.
    pub delivery_timeout_ms: u64,
    /// Bound on metadata calls and on reaching the brokers at start.
    pub request_timeout_ms: u64,
    /// After a worker's first message, how long it keeps collecting more
    /// for the same batch (one Postgres transaction per batch). 0: only
    /// what librdkafka has already fetched (10 ms measured no better here).
    pub consumer_linger_ms: u64,
    /// Consumer `session.timeout.ms`: a dead worker's partitions move to
    /// the others after this.
    pub session_timeout_ms: u64,
    /// How every Kafka client reaches the brokers (`security.protocol`).
    pub security_protocol: KafkaSecurity,
    /// TLS (`ssl`, `sasl_ssl`): the PEM file of the CA that signed the
    /// brokers' certificates; the system's roots when unset. The broker's
    /// name is checked against its certificate.
    pub ssl_ca_file: Option<PathBuf>,
    /// TLS client certificate and its key (PEM), for brokers that ask for
    /// one. Both or neither.
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    /// SASL (`sasl_plaintext`, `sasl_ssl`).
    pub sasl_mechanism: SaslMechanism,
    pub sasl_username: Option<String>,
    /// A secret: `RUSH__KAFKA__SASL_PASSWORD` or `…_FILE`.
    pub sasl_password: Option<String>,
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KafkaSecurity {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl KafkaSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaSecurity::Plaintext => "plaintext",
            KafkaSecurity::Ssl => "ssl",
            KafkaSecurity::SaslPlaintext => "sasl_plaintext",
            KafkaSecurity::SaslSsl => "sasl_ssl",
        }
    }
    pub fn tls(self) -> bool {
        matches!(self, KafkaSecurity::Ssl | KafkaSecurity::SaslSsl)
    }
    pub fn sasl(self) -> bool {
        matches!(self, KafkaSecurity::SaslPlaintext | KafkaSecurity::SaslSsl)
    }
}

/// librdkafka's `sasl.mechanism`.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            topic_prefix: "rush".into(),
            partitions: i32::from(crate::domain::id::PARTITION_COUNT),
            replication_factor: 1,
            group: "rush-persist".into(),
            relay_in_serve: true,
            relay_batch_len_max: 4096,
            relay_batches_in_flight: 4,
            relay_poll_ms: 5,
            relay_idle_poll_max_ms: 50,
            linger_ms: 2,
            delivery_timeout_ms: 30_000,
            request_timeout_ms: 5_000,
            consumer_linger_ms: 0,
            session_timeout_ms: 10_000,
            security_protocol: KafkaSecurity::Plaintext,
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            sasl_mechanism: SaslMechanism::ScramSha512,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

/// The outbox (hot store → event log → workers) is bounded: when the
/// consumer of the outbox (workers, or the relay in full mode) falls behind,
/// say because Kafka is down, it grows; near `len_max` the node reports not
/// ready, at `len_max` writes are refused with 503 `outbox_full` instead of
/// growing memory without bound.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    pub len_max: u64,
    /// Percent of `len_max` at which `/readyz` starts failing.
    pub ready_pct: u64,
    /// How often the outbox length is measured (also the staleness of the
    /// bound: it can overshoot by what arrives in this time).
    pub check_every_ms: u64,
    /// Redis mode: one process at a time reads the outbox streams (the
    /// relay in full mode, the persist worker otherwise), so an entity's
    /// events stay in order; the others stand by. A reader that dies is
    /// replaced after this long.
    pub reader_lease_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig { len_max: 2_000_000, ready_pct: 80, check_every_ms: 500, reader_lease_ms: 10_000 }
    }
}

/// Redis mode: set `url` (`RUSH__REDIS__URL=redis://127.0.0.1:6379`) and the
/// hot store and outbox live in Redis; without it rush stays embedded.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Option<String>,
    /// `url` names one node of a Redis Cluster (the rest are discovered).
    pub cluster: bool,
    /// Prefix of every key, so several deployments (or tests) share a server.
    pub key_prefix: String,
    /// Bound on connecting and on every call: past it a request answers
    /// 503 `store_unavailable` instead of hanging.
    pub timeout_ms: u64,
    /// A node holds its `node_id` in Redis for this long, renewed every
    /// third of it; a node restarted after a crash waits up to this long
    /// for its old lease to run out.
    pub node_lease_ms: u64,
    /// What "acknowledged" promises when Redis fails (see [`Durability`]).
    /// The production profile refuses `none`.
    pub durability: Durability,
    /// `replicas` durability: replicas that must have each write.
    pub replicas_min: u32,
    /// `replicas` durability: how long a write waits for them (`WAIT`);
    /// past it the request answers 503 instead of an acknowledgement.
    pub wait_timeout_ms: u64,
    /// How often each node checks the identity markers and Redis's
    /// replication id (a lost or failed-over Redis is found within this,
    /// and at once by the first write the scripts refuse).
    pub marker_check_ms: u64,
    /// A rebuild puts back events whose show starts, and packets that
    /// expire, no longer than this ago (older ones stay in the durable
    /// store, readable as orders and ledger entries).
    pub rebuild_history_s: u64,
    /// The one-rebuilder-at-a-time lease (renewed while it works).
    pub rebuild_lease_ms: u64,
    /// TLS (a `rediss://` url): the PEM file of the CA that signed the
    /// server's certificate; the system's roots when unset. An ACL user and
    /// its password go in the url (`rediss://rush:PASSWORD@host:6380`).
    pub tls_ca_file: Option<PathBuf>,
    /// TLS client certificate and its key (PEM), for a server that asks for
    /// one (`tls-auth-clients yes`). Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

/// After every write, in `replicas` durability: how many replicas must
/// have it, and how long to wait for them (`WAIT n timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replication {
    pub replicas: u32,
    pub timeout_ms: u64,
}

impl RedisConfig {
    /// What each write waits for: `Some` in `replicas` durability only.
    pub fn replication(&self) -> Option<Replication> {
        (self.durability == Durability::Replicas)
            .then_some(Replication { replicas: self.replicas_min, timeout_ms: self.wait_timeout_ms })
    }
}

/// What an acknowledged hold, grab or packet survives (issue 15).
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Redis must run with `appendonly yes` and `appendfsync always`
    /// (checked at start): a write is on Redis's disk before anyone is
    /// answered, so a restart loses nothing. Costs an fsync per write call.
    Fsync,
    /// Every script call is followed by `WAIT replicas_min wait_timeout_ms`
    /// before anyone is answered: a failover to a replica loses nothing
    /// acknowledged. One round trip per actor batch.
    Replicas,
    /// Development only: a lost Redis is found, reported and rebuilt from
    /// the durable store, but what it had not handed on is lost, and the
    /// durable store's constraints reject any double sale that allows.
    None,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: false,
            key_prefix: "rush".into(),
            timeout_ms: 1_000,
            node_lease_ms: 3_000,
            durability: Durability::None,
            replicas_min: 1,
            wait_timeout_ms: 500,
            marker_check_ms: 500,
            rebuild_history_s: 7 * 24 * 3600,
            rebuild_lease_ms: 10_000,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: String,
    /// Largest request body accepted; an event with 100 000 explicit seats
    /// is about 6 MB of JSON.
    pub body_len_max: usize,
    /// actix worker threads; 0 = one per core.
    pub workers: usize,
    /// Seconds `Retry-After` asks a client to wait after a 503.
    pub retry_after_s: u32,
    /// Seconds an idle keep-alive connection stays open. Also how long a
    /// shutting-down node waits, at most, for its connections to close
    /// after intake stops (each active one is closed by its next answer).
    pub keep_alive_s: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 key for tokens. The default is for development only; set
    /// `RUSH__AUTH__JWT_SECRET` anywhere real.
    pub jwt_secret: String,
    /// Serves `POST /v1/auth/dev-token`; unset: on in development, off in
    /// production. See [`Config::dev_tokens`].
    pub dev_tokens: Option<bool>,
    pub token_ttl_s: u64,
    /// Tokens from an identity provider: its JWKS at this URL (http or
    /// https), fetched at start and every `jwks_refresh_s`. With it (or
    /// `jwks_file`) only RS256 and ES256 tokens are accepted, `iss` and
    /// `aud` are required, and HS256 (`jwt_secret`, dev tokens) is off.
    pub jwks_url: Option<String>,
    /// The same from a file (a JWKS document), re-read every `jwks_refresh_s`.
    pub jwks_file: Option<PathBuf>,
    /// Keys are fetched again this often (a provider rotates keys by `kid`).
    pub jwks_refresh_s: u64,
    /// A token with a `kid` not in the cache triggers a fetch, at most
    /// once per this many seconds (unknown kids cannot flood the provider).
    pub jwks_refetch_s_min: u64,
    /// A JWKS fetch gives up after this long (the cached keys stay in use).
    pub jwks_fetch_timeout_ms: u64,
    /// The issuer's `iss`; required with a JWKS.
    pub issuer: Option<String>,
    /// This API's `aud`; required with a JWKS.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_s: u64,
    /// The claim holding the caller's role(s) (dotted for nested objects,
    /// e.g. `realm_access.roles`): a string or an array of strings.
    pub role_claim: String,
    /// The role value that makes a caller an admin; any other is a user.
    pub admin_role: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorConfig {
    /// Requests queued per actor before new ones get 503: bounds memory and
    /// the worst queueing delay (len × per-request cost).
    pub mailbox_len_max: usize,
    /// Requests decided and committed together; bounds one store call.
    pub batch_len_max: usize,
    /// An actor with no request for this long stops and frees its memory.
    pub idle_ms: u64,
    /// `actor` (default) or `direct`: no actors, one store call per grab,
    /// the way typical flash-sale systems work; kept for comparison.
    pub mode: EngineMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineMode {
    #[default]
    Actor,
    Direct,
}

/// Waiting rooms (`engine::queue`): bounds on an event's settings, and
/// how admissions are signed and paced.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaitingRoomConfig {
    /// Signs admission tokens (HMAC-SHA256); empty: derived from
    /// `auth.jwt_secret`. Every node must share it.
    pub admission_secret: String,
    /// Admissions may run ahead of `admit_per_s` by this much time's worth
    /// (at least one): the bound on any second's admissions is
    /// `admit_per_s × (1 + admit_burst_ms / 1000)`, rounded up.
    pub admit_burst_ms: u64,
    /// How often a node admits from the queues it serves (a join or a
    /// position read admits too).
    pub tick_ms: u64,
    /// Bounds on an event's `waiting_room` settings.
    pub admit_per_s_max: u32,
    pub pre_queue_s_max: u32,
    pub admission_ttl_s_max: u32,
}

impl Default for WaitingRoomConfig {
    fn default() -> Self {
        WaitingRoomConfig {
            admission_secret: String::new(),
            admit_burst_ms: 100,
            tick_ms: 100,
            admit_per_s_max: 100_000,
            pre_queue_s_max: 7 * 86_400,
            admission_ttl_s_max: 86_400,
        }
    }
}

/// Live updates over SSE (`gateway::push`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// At most one `changes` message per stream per this interval.
    pub interval_ms: u64,
    /// A comment line after this much silence, so proxies keep the stream.
    pub heartbeat_ms: u64,
    /// Streams open on this node at once; past it, 503.
    pub subscribers_max: usize,
    /// Messages queued for one subscriber; a subscriber that falls this far
    /// behind is dropped (it reconnects and gets a fresh snapshot).
    pub buffer_msgs: usize,
    /// How often a queue stream reads its ticket, at most.
    pub queue_poll_ms: u64,
    /// Ticket reads a node's queue streams make per second, at most: with
    /// many waiting users each stream's poll grows (queue streams × 1000
    /// ÷ this, in ms), so a crowd in the waiting room costs the store a
    /// bounded load.
    pub queue_reads_per_s_max: u64,
    /// Messages a node writes to all its streams per second, at most: with
    /// many subscribers each stream's interval grows (subscribers ×
    /// 1000 ÷ this, in ms) so the fan-out's cost stays bounded whatever
    /// the audience.
    pub fanout_per_s_max: u64,
    /// Seats named in one `changes` message, at most; past it the message
    /// names none and says how many changed (`seats_omitted`): the client
    /// reads `GET …/seats` if it shows seats (a sell-out's thousands of
    /// changes a second would otherwise go to every subscriber).
    pub seats_per_message_max: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            interval_ms: 250,
            heartbeat_ms: 15_000,
            subscribers_max: 20_000,
            buffer_msgs: 16,
            queue_poll_ms: 1_000,
            queue_reads_per_s_max: 2_000,
            fanout_per_s_max: 3_000,
            seats_per_message_max: 200,
        }
    }
}

/// One route class's token buckets: `per_s` sustained and `burst` at once,
/// per user and per client address; 0 turns that bucket off.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClassLimits {
    pub user_per_s: u32,
    pub user_burst: u32,
    pub addr_per_s: u32,
    pub addr_burst: u32,
}

impl Default for ClassLimits {
    fn default() -> Self {
        ClassLimits { user_per_s: 10, user_burst: 20, addr_per_s: 1_000, addr_burst: 2_000 }
    }
}

/// Rate limits (`gateway::limits`) per route class.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// The header a trusted proxy writes the client address into (e.g.
    /// `x-forwarded-for`: its last entry, the one the proxy appended, is
    /// taken). Unset: the peer address. Only set it behind such a proxy,
    /// else clients choose their own address.
    pub client_addr_header: Option<String>,
    /// Holds and grabs.
    pub holds: ClassLimits,
    /// POSTs that move money: payments, refunds, recharges, withdrawals,
    /// credits, packets.
    pub money: ClassLimits,
    /// GETs, live streams included (per connection).
    pub reads: ClassLimits,
    /// Joining and leaving waiting rooms.
    pub queue: ClassLimits,
    /// Redis mode: each node enforces limit ÷ live nodes (counted every
    /// `nodes_check_ms`), so a user's total across nodes never exceeds the
    /// limit; a user whose requests all reach one node gets that share.
    pub nodes_check_ms: u64,
    /// Idle buckets are forgotten after this (bounds memory per node).
    pub idle_forget_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            client_addr_header: None,
            holds: ClassLimits::default(),
            money: ClassLimits::default(),
            reads: ClassLimits { user_per_s: 100, user_burst: 200, addr_per_s: 5_000, addr_burst: 10_000 },
            queue: ClassLimits { user_per_s: 5, user_burst: 10, ..ClassLimits::default() },
            nodes_check_ms: 5_000,
            idle_forget_ms: 60_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventConfig {
    /// Largest seat map; the actor scans rows, so this bounds a hold's cost.
    pub seats_max: u32,
    pub categories_max: usize,
    pub hold_ttl_s_default: u32,
    pub hold_ttl_s_max: u32,
    pub per_order_default: u32,
    pub per_user_default: u32,
    /// Most attendees named on one order.
    pub attendees_max: usize,
    /// Dearest ticket in fen (100 000.00 by default); with `seats_max` it
    /// keeps every order's amount far from overflowing.
    pub price_max_fen: i64,
    pub name_len_max: usize,
    /// How often a node looks for cancelled events whose refund fan-out has
    /// not finished (one started elsewhere, or cut by a restart).
    pub cancel_resume_ms: u64,
    /// How long the catalogue shows an event's remaining seats before
    /// asking its actor again, and how many events it keeps so.
    pub catalogue_cache_ttl_ms: u64,
    pub catalogue_cache_entries_max: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacketConfig {
    /// Most parts in one packet: the actor keeps every grab in memory.
    pub count_max: u32,
    /// Largest packet total in fen (200 000.00 by default).
    pub total_max_fen: i64,
    pub expires_in_s_default: u64,
    pub expires_in_s_max: u64,
    pub greeting_len_max: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrderConfig {
    /// Largest page of `GET /v1/orders` and the ledger.
    pub list_limit_max: u32,
    pub list_limit_default: u32,
    /// Largest single admin credit in fen (1 000 000.00 by default).
    pub credit_max_fen: i64,
    /// How long an Idempotency-Key's first answer is replayed (API: 24 h).
    pub idempotency_ttl_s: u64,
    /// An unfinished request older than this is presumed dead and its key
    /// may be reused; longer than any request can take.
    pub idempotency_stale_s: u64,
    /// The hot store remembers a user's recent orders and grabs and orders
    /// just closed this long, so a client reads its own writes on any node
    /// while the workers catch up: above the worst durable lag you accept
    /// (an alert fires long before 10 minutes of consumer lag).
    pub recent_keep_s: u64,
    /// Most recent orders (and, apart, grabs) remembered per user within
    /// `recent_keep_s`: a list merges at most a page of them, a wallet read
    /// adds the grabs' credits, the rest bound memory (a user with a
    /// thousand orders or grabs in ten minutes is a bot).
    pub recent_per_user_max: usize,
}

/// The most `orders.recent_per_user_max` may be: a wallet read binds each
/// of a user's recent grabs in one statement, and SQLite takes at most
/// 32 766 parameters.
pub const RECENT_PER_USER_MAX_MAX: usize = 10_000;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Events applied in one durable transaction. Larger batches spread a
    /// transaction's fixed cost (statements, commit, the outbox's trim)
    /// over more events: 4 096 let the persist worker keep up with a hot
    /// packet where 1 024 fell behind (BENCHMARKS.md, "Sustained").
    pub batch_len_max: usize,
    /// How long a poll of the event log waits for new events.
    pub poll_wait_ms: u64,
    /// How often the timeout worker looks for due holds and packets.
    pub timeout_poll_ms: u64,
    /// Due items handled per timeout tick.
    pub due_batch_max: usize,
    /// How long a claimed due item is left to the node that claimed it
    /// before another node may take it (the claimer may have died).
    pub due_lease_ms: u64,
    /// First and largest pause after a failed batch (doubling between).
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteConfig {
    /// How long a statement waits for a lock before failing.
    pub busy_timeout_ms: u64,
    /// Readers; writes go through one connection so they never conflict.
    pub read_pool_max: u32,
    /// How often a background connection checkpoints the WAL, so that the
    /// writer's own checkpoints stay short.
    pub checkpoint_every_ms: u64,
    /// How much of each SQLite file is memory-mapped, MiB (0: none). Pages
    /// are then read straight from the OS page cache instead of copied in
    /// by a `pread` each time SQLite's own cache misses them, which is most
    /// of the time once a sale's journal and grabs outgrow that cache.
    pub mmap_mib: u32,
    /// Most units of work the durable store's writer commits in one
    /// transaction (group commit, `durable/writer.rs`); 1 commits each
    /// alone.
    pub group_commit_max: u32,
}

/// Settings whose own name ends in `_file` (a path rush reads itself):
/// their variables are taken as they are, not as `…_FILE` secrets.
const FIELDS_NAMED_FILE: &[&str] = &[
    "RUSH__AUTH__JWKS_FILE",
    "RUSH__REDIS__TLS_CA_FILE",
    "RUSH__REDIS__TLS_CERT_FILE",
    "RUSH__REDIS__TLS_KEY_FILE",
    "RUSH__KAFKA__SSL_CA_FILE",
    "RUSH__KAFKA__SSL_CERT_FILE",
    "RUSH__KAFKA__SSL_KEY_FILE",
];

/// `RUSH__SECTION__FIELD_FILE=<path>` sets `RUSH__SECTION__FIELD` to the
/// file's content (one trailing newline dropped): how orchestrators hand
/// secrets over. Setting both is refused as ambiguous.
fn read_secret_files(vars: config::Map<String, String>) -> Result<config::Map<String, String>, ConfigError> {
    let mut out = config::Map::new();
    for (k, v) in &vars {
        match k.strip_suffix("_FILE") {
            Some(target)
                if target.contains("__")
                    && target.len() > "RUSH__".len()
                    && !FIELDS_NAMED_FILE.contains(&k.as_str()) =>
            {
                if vars.contains_key(target) {
                    return Err(ConfigError::Invalid(format!("both {target} and {k} are set; keep one")));
                }
                let content = std::fs::read_to_string(v)
                    .map_err(|e| ConfigError::Invalid(format!("{k}: cannot read {v}: {e}")))?;
                let content = content.strip_suffix('\n').unwrap_or(&content);
                out.insert(target.to_string(), content.strip_suffix('\r').unwrap_or(content).to_string());
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(out)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            profile: Profile::Development,
            secrets_in_file: Vec::new(),
            node_id: 0,
            node_id_auto: false,
            threads: 0,
            data_dir: PathBuf::from("./rush-data"),
            http: HttpConfig::default(),
            auth: AuthConfig::default(),
            actors: ActorConfig::default(),
            events: EventConfig::default(),
            packets: PacketConfig::default(),
            orders: OrderConfig::default(),
            workers: WorkerConfig::default(),
            sqlite: SqliteConfig::default(),
            redis: RedisConfig::default(),
            postgres: PostgresConfig::default(),
            kafka: KafkaConfig::default(),
            outbox: OutboxConfig::default(),
            payments: PaymentsConfig::default(),
            wallet: WalletConfig::default(),
            webhooks: WebhookConfig::default(),
            shutdown: ShutdownConfig::default(),
            telemetry: TelemetryConfig::default(),
            waiting_room: WaitingRoomConfig::default(),
            push: PushConfig::default(),
            rate_limits: RateLimitConfig::default(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout_ms: 20_000, drain_delay_ms: 0 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: "127.0.0.1:8080".into(),
            body_len_max: 8 * 1024 * 1024,
            workers: 0,
            retry_after_s: 1,
            keep_alive_s: 5,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_secret: "rush-dev-secret-change-me".into(),
            dev_tokens: None,
            token_ttl_s: 24 * 3600,
            jwks_url: None,
            jwks_file: None,
            jwks_refresh_s: 300,
            jwks_refetch_s_min: 10,
            jwks_fetch_timeout_ms: 3_000,
            issuer: None,
            audience: None,
            leeway_s: 30,
            role_claim: "role".into(),
            admin_role: "admin".into(),
        }
    }
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig { mailbox_len_max: 8192, batch_len_max: 512, idle_ms: 5 * 60 * 1000, mode: EngineMode::Actor }
    }
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            seats_max: 100_000,
            categories_max: 32,
            hold_ttl_s_default: 900,
            hold_ttl_s_max: 24 * 3600,
            per_order_default: 6,
            per_user_default: 6,
            attendees_max: 20,
            price_max_fen: 10_000_000,
            name_len_max: 200,
            cancel_resume_ms: 5_000,
            catalogue_cache_ttl_ms: 1_000,
            catalogue_cache_entries_max: 10_000,
        }
    }
}

impl Default for PacketConfig {
    fn default() -> Self {
        PacketConfig {
            count_max: 10_000,
            total_max_fen: 20_000_000,
            expires_in_s_default: 86_400,
            expires_in_s_max: 7 * 86_400,
            greeting_len_max: 200,
        }
    }
}

impl Default for OrderConfig {
    fn default() -> Self {
        OrderConfig {
            list_limit_max: 100,
            list_limit_default: 20,
            credit_max_fen: 100_000_000,
            idempotency_ttl_s: 24 * 3600,
            idempotency_stale_s: 60,
            recent_keep_s: 600,
            recent_per_user_max: 1000,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            batch_len_max: 4096,
            poll_wait_ms: 200,
            timeout_poll_ms: 250,
            due_batch_max: 1000,
            due_lease_ms: 5_000,
            retry_backoff_ms: 50,
            retry_backoff_max_ms: 5_000,
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout_ms: 5_000,
            read_pool_max: 4,
            checkpoint_every_ms: 200,
            mmap_mib: 4096,
            group_commit_max: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The settings that take one of a few words, and the words.
const CHOICES: &[(&str, &str)] = &[
    ("profile", "development, production"),
    ("telemetry.log_format", "text, json"),
    ("redis.durability", "fsync, replicas, none"),
    ("actors.mode", "actor, direct"),
    ("kafka.security_protocol", "plaintext, ssl, sasl_plaintext, sasl_ssl"),
    ("kafka.sasl_mechanism", "SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"),
];

/// A word none of a setting's choices is refused with the choices listed
/// (the deserializer names the setting, not the words it takes).
fn with_choices(e: config::ConfigError) -> ConfigError {
    let msg = e.to_string();
    let key = CHOICES.iter().find(|(key, _)| msg.contains(&format!("`{key}`")) || msg.ends_with(key));
    match key {
        Some((key, choices)) if msg.contains("variant") => {
            ConfigError::Invalid(format!("{msg}; {key} is one of: {choices}"))
        }
        _ => ConfigError::Load(e),
    }
}

impl Config {
    /// Defaults, then the file if given, then `RUSH__…` variables from the
    /// process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`] with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let vars = read_secret_files(env.into_iter().filter(|(k, _)| k.starts_with("RUSH__")).collect())?;
        builder = builder.add_source(
            config::Environment::with_prefix("RUSH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let mut cfg: Config = builder.build()?.try_deserialize().map_err(with_choices)?;
        if let Some(path) = file {
            let only_file = config::Config::builder().add_source(config::File::from(path).required(true)).build()?;
            for key in SECRET_KEYS {
                if only_file.get_string(key).is_ok() {
                    cfg.secrets_in_file.push(key.to_string());
                }
            }
            for key in URL_KEYS {
                if only_file.get_string(key).is_ok_and(|u| url_has_password(&u)) {
                    cfg.secrets_in_file.push(key.to_string());
                }
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Whether `POST /v1/auth/dev-token` is served.
    pub fn dev_tokens(&self) -> bool {
        !self.jwks() && self.auth.dev_tokens.unwrap_or(self.profile == Profile::Development)
    }

    /// Whether `/v1/sandbox/…` is served.
    pub fn sandbox(&self) -> bool {
        self.payments.sandbox.enabled.unwrap_or(self.profile == Profile::Development)
    }

    /// The log format in effect (see [`TelemetryConfig::log_format`]).
    pub fn log_format(&self) -> LogFormat {
        self.telemetry.log_format.unwrap_or(match self.profile {
            Profile::Development => LogFormat::Text,
            Profile::Production => LogFormat::Json,
        })
    }

    /// `embedded`, `redis` or `full`: where hot state and events live.
    pub fn mode(&self) -> &'static str {
        match (&self.kafka.brokers, &self.redis.url) {
            (Some(_), _) => "full",
            (None, Some(_)) => "redis",
            (None, None) => "embedded",
        }
    }

    /// `postgres` or `sqlite`: the durable store.
    pub fn durable(&self) -> &'static str {
        if self.postgres.url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// What `rush serve --check-config` prints: the effective shape of the
    /// deployment, no secret in it.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "config": "ok",
            "profile": self.profile,
            "mode": self.mode(),
            "durable": self.durable(),
            "http_addr": self.http.addr,
            "node_id": self.node_id,
            "dev_tokens": self.dev_tokens(),
            "sandbox": self.sandbox(),
            "postgres": self.postgres.url.as_deref().map(redact_url),
            "redis": self.redis.url.as_deref().map(redact_url),
            "redis_durability": self.redis.url.as_ref().map(|_| self.redis.durability),
            "kafka": self.kafka.brokers,
            "kafka_security": self.kafka.brokers.as_ref().map(|_| self.kafka.security_protocol),
            "log_format": self.log_format(),
            "shutdown_timeout_ms": self.shutdown.timeout_ms,
        })
    }

    /// Production's rules (see [`Config::profile`]).
    fn validate_production(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.redis.url.is_some() && self.redis.durability == Durability::None {
            return bad("production needs redis.durability = \"fsync\" or \"replicas\": with \"none\" a lost or failed-over Redis loses acknowledged holds and grabs".into());
        }
        if self.auth.dev_tokens == Some(true) || self.payments.sandbox.enabled == Some(true) {
            return bad(
                "production serves no development routes: unset auth.dev_tokens and payments.sandbox.enabled".into()
            );
        }
        if !self.secrets_in_file.is_empty() {
            return bad(format!(
                "production reads secrets from the environment or files, not the config file: move {} to RUSH__… or RUSH__…_FILE",
                self.secrets_in_file.join(", ")
            ));
        }
        let dev = Config::default();
        let pairs = [
            ("auth.jwt_secret", &self.auth.jwt_secret, &dev.auth.jwt_secret),
            ("payments.wechat_secret", &self.payments.wechat_secret, &dev.payments.wechat_secret),
            ("payments.alipay_secret", &self.payments.alipay_secret, &dev.payments.alipay_secret),
            ("payments.ecard_secret", &self.payments.ecard_secret, &dev.payments.ecard_secret),
        ];
        // With a JWKS the HS256 secret verifies nothing.
        let unused = |k: &str| k == "auth.jwt_secret" && self.jwks();
        if self.jwks() && self.waiting_room.admission_secret.len() < 16 {
            return bad("production with a JWKS needs waiting_room.admission_secret (16 bytes or more): auth.jwt_secret signs nothing there".into());
        }
        let defaults: Vec<&str> = pairs.iter().filter(|(k, v, d)| v == d && !unused(k)).map(|(k, _, _)| *k).collect();
        if !defaults.is_empty() {
            return bad(format!(
                "production needs real secrets; still the development default: {}",
                defaults.join(", ")
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_node_and_limits()?;
        self.validate_stores()?;
        self.validate_money()?;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.profile == Profile::Production {
            self.validate_production()?;
        }
        if self.outbox.len_max == 0 || !(1..=100).contains(&self.outbox.ready_pct) || self.outbox.check_every_ms == 0 {
            return bad("outbox.len_max and outbox.check_every_ms must be positive, outbox.ready_pct 1..=100");
        }
        Ok(())
    }

    /// Tokens: HS256 for development, or an issuer's JWKS.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let a = &self.auth;
        if a.jwt_secret.len() < 16 {
            return bad("auth.jwt_secret must be at least 16 bytes");
        }
        if a.leeway_s > LEEWAY_S_MAX {
            return bad("auth.leeway_s must be at most 300");
        }
        if a.role_claim.is_empty() || a.admin_role.is_empty() {
            return bad("auth.role_claim and auth.admin_role must not be empty");
        }
        if a.jwks_url.is_some() && a.jwks_file.is_some() {
            return bad("give auth.jwks_url or auth.jwks_file, not both");
        }
        if let Some(url) = &a.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return bad("auth.jwks_url must be an http:// or https:// URL");
            }
        }
        if self.jwks() {
            if a.issuer.as_deref().is_none_or(str::is_empty) || a.audience.as_deref().is_none_or(str::is_empty) {
                return bad("tokens from a JWKS need auth.issuer and auth.audience (both are checked)");
            }
            if a.dev_tokens == Some(true) {
                return bad("auth.dev_tokens signs HS256 tokens, which a JWKS setup refuses: unset it");
            }
            if a.jwks_refresh_s == 0 || a.jwks_fetch_timeout_ms == 0 {
                return bad("auth.jwks_refresh_s and auth.jwks_fetch_timeout_ms must be positive");
            }
        }
        Ok(())
    }

    /// Tokens come from an issuer's JWKS (RS256/ES256), not `jwt_secret`.
    pub fn jwks(&self) -> bool {
        self.auth.jwks_url.is_some() || self.auth.jwks_file.is_some()
    }

    /// The node (ids, shutdown, actors, tokens) and the request limits.
    fn validate_node_and_limits(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id > crate::domain::id::NODE_MAX {
            return bad("node_id must be 0..=1023");
        }
        if self.node_id_auto && self.redis.url.is_none() {
            return bad("node_id_auto needs redis.url (the ids are leased in Redis)");
        }
        if self.shutdown.timeout_ms == 0 || self.shutdown.drain_delay_ms >= self.shutdown.timeout_ms {
            return bad("shutdown.timeout_ms must be positive and above shutdown.drain_delay_ms");
        }
        if self.actors.mailbox_len_max == 0 || self.actors.batch_len_max == 0 {
            return bad("actors.mailbox_len_max and actors.batch_len_max must be at least 1");
        }
        self.validate_auth()?;
        if self.events.per_order_default == 0 || self.events.per_user_default == 0 {
            return bad("events.per_order_default and per_user_default must be at least 1");
        }
        if self.events.hold_ttl_s_default == 0 || self.events.hold_ttl_s_default > self.events.hold_ttl_s_max {
            return bad("events.hold_ttl_s_default must be 1..=hold_ttl_s_max");
        }
        if self.events.cancel_resume_ms == 0
            || self.events.catalogue_cache_ttl_ms == 0
            || self.events.catalogue_cache_entries_max == 0
        {
            return bad(
                "events.cancel_resume_ms, catalogue_cache_ttl_ms and catalogue_cache_entries_max must be positive",
            );
        }
        if self.packets.count_max == 0 || self.packets.total_max_fen <= 0 {
            return bad("packets.count_max and packets.total_max_fen must be positive");
        }
        let w = &self.waiting_room;
        if w.tick_ms == 0 || w.admit_per_s_max == 0 || w.admission_ttl_s_max == 0 {
            return bad("waiting_room.tick_ms, admit_per_s_max and admission_ttl_s_max must be positive");
        }
        let p = &self.push;
        if p.interval_ms == 0
            || p.heartbeat_ms == 0
            || p.buffer_msgs == 0
            || p.queue_poll_ms == 0
            || p.fanout_per_s_max == 0
            || p.queue_reads_per_s_max == 0
        {
            return bad("push.interval_ms, heartbeat_ms, buffer_msgs, queue_poll_ms, queue_reads_per_s_max and \
                 fanout_per_s_max must be positive");
        }
        let r = &self.rate_limits;
        for (name, c) in [("holds", r.holds), ("money", r.money), ("reads", r.reads), ("queue", r.queue)] {
            if (c.user_per_s > 0 && c.user_burst == 0) || (c.addr_per_s > 0 && c.addr_burst == 0) {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.{name}: a bucket with a rate needs a burst of at least 1"
                )));
            }
        }
        if r.nodes_check_ms == 0 || r.idle_forget_ms == 0 {
            return bad("rate_limits.nodes_check_ms and idle_forget_ms must be positive");
        }
        if self.orders.list_limit_default == 0 || self.orders.list_limit_default > self.orders.list_limit_max {
            return bad("orders.list_limit_default must be 1..=list_limit_max");
        }
        if self.orders.recent_keep_s == 0
            || (self.orders.recent_per_user_max as u64) < u64::from(self.orders.list_limit_max)
        {
            return bad("orders.recent_keep_s must be positive and orders.recent_per_user_max at least list_limit_max: reads would miss their own writes");
        }
        if self.orders.recent_per_user_max > RECENT_PER_USER_MAX_MAX {
            // A wallet read binds each recent grab's id in one statement.
            return Err(ConfigError::Invalid(format!(
                "orders.recent_per_user_max must be at most {RECENT_PER_USER_MAX_MAX}"
            )));
        }
        Ok(())
    }

    /// Redis, Kafka, the workers, the outbox reader, Postgres and SQLite.
    fn validate_stores(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            return bad("redis.key_prefix must be non-empty, without braces (they are hash tags)");
        }
        if self.redis.replicas_min == 0 || self.redis.wait_timeout_ms == 0 {
            return bad("redis.replicas_min and redis.wait_timeout_ms must be at least 1 (WAIT 0 would wait forever)");
        }
        if self.redis.marker_check_ms < 50 || self.redis.rebuild_lease_ms < 1_000 {
            return bad("redis.marker_check_ms must be at least 50 and redis.rebuild_lease_ms at least 1000");
        }
        if self.redis.durability == Durability::Replicas && self.redis.cluster {
            return bad("redis.durability = \"replicas\" is not supported on Redis Cluster yet: use fsync");
        }
        if self.redis.node_lease_ms < 300 {
            return bad("redis.node_lease_ms must be at least 300");
        }
        if self.workers.batch_len_max == 0 || self.workers.due_batch_max == 0 {
            return bad("workers batch sizes must be at least 1");
        }
        if self.kafka.brokers.is_some() && self.redis.url.is_none() {
            return bad("kafka.brokers needs redis.url: the relay reads the Redis outbox streams");
        }
        if self.kafka.partitions < 1
            || self.kafka.replication_factor < 1
            || self.kafka.relay_batch_len_max == 0
            || self.kafka.relay_batches_in_flight == 0
        {
            return bad("kafka.partitions, replication_factor, relay_batch_len_max and relay_batches_in_flight must be at least 1");
        }
        if self.kafka.topic_prefix.is_empty() || self.kafka.group.is_empty() {
            return bad("kafka.topic_prefix and kafka.group must be non-empty");
        }
        self.validate_tls()?;
        if self.outbox.reader_lease_ms < 300 {
            return bad("outbox.reader_lease_ms must be at least 300");
        }
        if self.postgres.pool_max == 0 {
            return bad("postgres.pool_max must be at least 1");
        }
        if self.sqlite.group_commit_max == 0 {
            return bad("sqlite.group_commit_max must be at least 1");
        }
        Ok(())
    }

    /// TLS and SASL settings only where they take effect, certificate and
    /// key in pairs, SASL with its credentials.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let (r, k) = (&self.redis, &self.kafka);
        let rediss = r.url.as_deref().is_some_and(|u| u.starts_with("rediss://"));
        if !rediss && (r.tls_ca_file.is_some() || r.tls_cert_file.is_some() || r.tls_key_file.is_some()) {
            return bad("redis.tls_* files need a rediss:// redis.url (TLS)");
        }
        if r.tls_cert_file.is_some() != r.tls_key_file.is_some() {
            return bad("redis.tls_cert_file and redis.tls_key_file go together");
        }
        let sp = k.security_protocol;
        if !sp.tls() && (k.ssl_ca_file.is_some() || k.ssl_cert_file.is_some() || k.ssl_key_file.is_some()) {
            return bad("kafka.ssl_* files need kafka.security_protocol = \"ssl\" or \"sasl_ssl\"");
        }
        if k.ssl_cert_file.is_some() != k.ssl_key_file.is_some() {
            return bad("kafka.ssl_cert_file and kafka.ssl_key_file go together");
        }
        let has = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
        if sp.sasl() && !(has(&k.sasl_username) && has(&k.sasl_password)) {
            return bad("kafka.security_protocol sasl_* needs kafka.sasl_username and kafka.sasl_password (RUSH__KAFKA__SASL_PASSWORD or …_FILE)");
        }
        if !sp.sasl() && (k.sasl_username.is_some() || k.sasl_password.is_some()) {
            return bad("kafka.sasl_username and sasl_password need kafka.security_protocol = \"sasl_ssl\" or \"sasl_plaintext\"");
        }
        Ok(())
    }

    /// Payment channels, wallets and webhooks.
    fn validate_money(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        let p = &self.payments;
        if [&p.wechat_secret, &p.alipay_secret, &p.ecard_secret].iter().any(|s| s.len() < 16) {
            return bad("payments.wechat_secret, alipay_secret and ecard_secret must be at least 16 bytes");
        }
        if p.sandbox.drop_pct > 100 {
            return bad("payments.sandbox.drop_pct must be 0..=100");
        }
        if p.query_after_ms == 0 || p.worker_poll_ms == 0 || p.worker_batch_max == 0 || p.recharge_ttl_s == 0 {
            return bad(
                "payments.query_after_ms, worker_poll_ms, worker_batch_max and recharge_ttl_s must be positive",
            );
        }
        if p.recharge_max_fen <= 0 {
            return bad("payments.recharge_max_fen must be positive");
        }
        let w = &self.wallet;
        if w.withdraw_fen_per_day_max <= 0 || w.withdraw_min_fen <= 0 || !(-1440..=1440).contains(&w.day_offset_min) {
            return bad(
                "wallet.withdraw_fen_per_day_max and withdraw_min_fen must be positive, day_offset_min within a day",
            );
        }
        let h = &self.webhooks;
        if h.backoff_first_ms == 0 || h.backoff_max_ms < h.backoff_first_ms || h.poll_ms == 0 || h.batch_max == 0 {
            return bad(
                "webhooks.backoff_first_ms must be positive and at most backoff_max_ms; poll_ms and batch_max positive",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        use super::redact_url;
        assert_eq!(redact_url("postgres://rush:s3cret@db:5432/rush"), "postgres://rush:***@db:5432/rush");
        assert_eq!(redact_url("postgres://rush@db/rush"), "postgres://rush@db/rush");
        assert_eq!(redact_url("postgres://db/rush"), "postgres://db/rush");
        assert_eq!(
            redact_url("postgres://rush@db/rush?password=s3cret&sslmode=verify-full"),
            "postgres://rush@db/rush?password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://db/rush?sslmode=require&PASSWORD=s3cret"),
            "postgres://db/rush?sslmode=require&PASSWORD=***"
        );
        assert_eq!(
            redact_url("host=db user=rush password=s3cret dbname=rush"),
            "host=db user=rush password=*** dbname=rush"
        );
        assert_eq!(redact_url("rediss://rush:s3cret@redis:6380"), "rediss://rush:***@redis:6380");
    }

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_run_embedded_on_localhost_8080() {
        let cfg = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(cfg.http.addr, "127.0.0.1:8080");
        assert_eq!(cfg.data_dir, PathBuf::from("./rush-data"));
    }

    #[test]
    fn env_vars_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rush.toml");
        std::fs::write(&file, "[http]\naddr = \"127.0.0.1:9000\"\n[actors]\nbatch_len_max = 7\n").unwrap();
        let cfg = Config::load_from(
            Some(&file),
            env(&[("RUSH__HTTP__ADDR", "127.0.0.1:9100"), ("RUSH__DATA_DIR", "/tmp/x")]),
        )
        .unwrap();
        assert_eq!(cfg.http.addr, "127.0.0.1:9100");
        assert_eq!(cfg.actors.batch_len_max, 7);
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/x"));
    }

    fn real_secrets() -> Vec<(&'static str, &'static str)> {
        vec![
            ("RUSH__AUTH__JWT_SECRET", "prod-jwt-secret-0123456789"),
            ("RUSH__PAYMENTS__WECHAT_SECRET", "prod-wechat-secret-0123"),
            ("RUSH__PAYMENTS__ALIPAY_SECRET", "prod-alipay-secret-0123"),
            ("RUSH__PAYMENTS__ECARD_SECRET", "prod-ecard-secret-01234"),
        ]
    }

    #[test]
    fn a_jwks_needs_issuer_and_audience_and_turns_dev_tokens_off() {
        let url = ("RUSH__AUTH__JWKS_URL", "https://id.example/jwks.json");
        let err = Config::load_from(None, env(&[url])).unwrap_err().to_string();
        assert!(err.contains("auth.issuer and auth.audience"), "{err}");
        let both = [url, ("RUSH__AUTH__ISSUER", "https://id.example"), ("RUSH__AUTH__AUDIENCE", "rush")];
        let cfg = Config::load_from(None, env(&both)).unwrap();
        assert!(cfg.jwks() && !cfg.dev_tokens(), "HS256 dev tokens are off with an issuer");
        let mut dev = both.to_vec();
        dev.push(("RUSH__AUTH__DEV_TOKENS", "true"));
        let err = Config::load_from(None, env(&dev)).unwrap_err().to_string();
        assert!(err.contains("auth.dev_tokens"), "{err}");
        let mut file = both.to_vec();
        file.push(("RUSH__AUTH__JWKS_FILE", "/etc/rush/jwks.json"));
        let err = Config::load_from(None, env(&file)).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        let ftp = Config::load_from(None, env(&[("RUSH__AUTH__JWKS_URL", "ftp://x")])).unwrap_err().to_string();
        assert!(ftp.contains("http:// or https://"), "{ftp}");
    }

    #[test]
    fn development_serves_the_development_routes() {
        let cfg = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(cfg.profile, Profile::Development);
        assert!(cfg.dev_tokens() && cfg.sandbox());
        let off = Config::load_from(None, env(&[("RUSH__AUTH__DEV_TOKENS", "false")])).unwrap();
        assert!(!off.dev_tokens() && off.sandbox());
    }

    #[test]
    fn secrets_can_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        std::fs::write(&path, "from-a-file-0123456789\n").unwrap();
        let file_var = ("RUSH__AUTH__JWT_SECRET_FILE", path.to_str().unwrap());
        let cfg = Config::load_from(None, env(&[file_var])).unwrap();
        assert_eq!(cfg.auth.jwt_secret, "from-a-file-0123456789", "the trailing newline is dropped");
        let both = Config::load_from(None, env(&[file_var, ("RUSH__AUTH__JWT_SECRET", "x".repeat(20).as_str())]));
        assert!(matches!(both, Err(ConfigError::Invalid(m)) if m.contains("both")));
        let missing = Config::load_from(None, env(&[("RUSH__AUTH__JWT_SECRET_FILE", "/nonexistent/jwt")]));
        assert!(matches!(missing, Err(ConfigError::Invalid(m)) if m.contains("RUSH__AUTH__JWT_SECRET_FILE")));
    }

    #[test]
    fn store_tls_settings_are_paths_and_are_checked_where_they_apply() {
        let rediss = ("RUSH__REDIS__URL", "rediss://rush:pw@redis:6380");
        let sasl = [
            ("RUSH__REDIS__URL", "redis://redis:6379"),
            ("RUSH__KAFKA__BROKERS", "kafka:9093"),
            ("RUSH__KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
            ("RUSH__KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"),
            ("RUSH__KAFKA__SASL_USERNAME", "rush"),
            ("RUSH__KAFKA__SASL_PASSWORD", "pw"),
        ];
        // Every `*_FILE` setting is a path rush reads, not a secret file:
        // none of these paths exists, yet the config loads.
        let mut vars = sasl.to_vec();
        vars[0] = rediss;
        for name in FIELDS_NAMED_FILE.iter().copied().filter(|n| !n.starts_with("RUSH__AUTH__")) {
            vars.push((name, "/nonexistent/pem"));
        }
        let cfg = Config::load_from(None, env(&vars)).unwrap();
        assert_eq!(cfg.redis.tls_ca_file.as_deref(), Some(Path::new("/nonexistent/pem")));
        assert_eq!(cfg.kafka.ssl_key_file.as_deref(), Some(Path::new("/nonexistent/pem")));
        assert_eq!(cfg.kafka.sasl_mechanism, SaslMechanism::ScramSha256);

        let refused = |pairs: &[(&str, &str)], wanted: &str| {
            let err = Config::load_from(None, env(pairs)).unwrap_err().to_string();
            assert!(err.contains(wanted), "{pairs:?}: {err}");
        };
        refused(&[("RUSH__REDIS__URL", "redis://redis:6379"), ("RUSH__REDIS__TLS_CA_FILE", "/ca.pem")], "rediss://");
        refused(&[rediss, ("RUSH__REDIS__TLS_CERT_FILE", "/c.pem")], "go together");
        refused(&sasl[..5], "sasl_password");
        let mut plain = sasl.to_vec();
        plain[2] = ("RUSH__KAFKA__SECURITY_PROTOCOL", "plaintext");
        refused(&plain, "sasl_username and sasl_password need");
        let mut ssl_file = sasl[..3].to_vec();
        ssl_file[2] = ("RUSH__KAFKA__SSL_CA_FILE", "/ca.pem");
        refused(&ssl_file, "kafka.ssl_* files need");
        refused(&[("RUSH__KAFKA__SECURITY_PROTOCOL", "tls")], "one of: plaintext, ssl, sasl_plaintext, sasl_ssl");
        refused(&[("RUSH__KAFKA__SASL_MECHANISM", "GSSAPI")], "one of: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN");
        refused(&[("RUSH__REDIS__DURABILITY", "always")], "one of: fsync, replicas, none");
    }

    #[test]
    fn every_listed_choice_is_a_word_its_setting_takes() {
        for (key, words) in CHOICES {
            let var = format!("RUSH__{}", key.to_uppercase().replace('.', "__"));
            for word in words.split(", ") {
                // Other rules may refuse the combination; the word itself is taken.
                if let Err(e) = Config::load_from(None, env(&[(&var, word)])) {
                    assert!(!e.to_string().contains("one of:"), "{key} = {word}: {e}");
                }
            }
        }
    }

    #[test]
    fn production_refuses_development_secrets_and_routes() {
        let prod = ("RUSH__PROFILE", "production");
        let err = Config::load_from(None, env(&[prod])).unwrap_err().to_string();
        assert!(err.contains("auth.jwt_secret") && err.contains("development default"), "{err}");
        let mut vars = real_secrets();
        vars.push(prod);
        let cfg = Config::load_from(None, env(&vars)).unwrap();
        assert!(!cfg.dev_tokens() && !cfg.sandbox(), "development routes are off");
        for on in ["RUSH__AUTH__DEV_TOKENS", "RUSH__PAYMENTS__SANDBOX__ENABLED"] {
            let mut v = vars.clone();
            v.push((on, "true"));
            let err = Config::load_from(None, env(&v)).unwrap_err().to_string();
            assert!(err.contains("development routes"), "{on}: {err}");
        }
        let summary = cfg.summary().to_string();
        for (_, secret) in real_secrets() {
            assert!(!summary.contains(secret), "the summary shows no secret");
        }
    }

    #[test]
    fn production_refuses_a_redis_durability_of_none() {
        let mut vars = real_secrets();
        vars.extend([("RUSH__PROFILE", "production"), ("RUSH__REDIS__URL", "redis://127.0.0.1")]);
        let err = Config::load_from(None, env(&vars)).unwrap_err().to_string();
        assert!(err.contains("redis.durability"), "{err}");
        vars.push(("RUSH__REDIS__DURABILITY", "replicas"));
        let cfg = Config::load_from(None, env(&vars)).unwrap();
        assert_eq!(cfg.redis.durability, Durability::Replicas);
        vars.push(("RUSH__REDIS__CLUSTER", "true"));
        let err = Config::load_from(None, env(&vars)).unwrap_err().to_string();
        assert!(err.contains("Redis Cluster"), "{err}");
    }

    #[test]
    fn production_refuses_secrets_in_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rush.toml");
        std::fs::write(&file, "[auth]\njwt_secret = \"written-in-the-file-0123\"\n").unwrap();
        let mut vars = real_secrets();
        vars.retain(|(k, _)| *k != "RUSH__AUTH__JWT_SECRET");
        assert!(Config::load_from(Some(&file), env(&vars)).is_ok(), "development allows it");
        vars.push(("RUSH__PROFILE", "production"));
        let err = Config::load_from(Some(&file), env(&vars)).unwrap_err().to_string();
        assert!(err.contains("not the config file") && err.contains("auth.jwt_secret"), "{err}");
        std::fs::write(&file, "[postgres]\nurl = \"postgres://rush:hunter2@db/rush\"\n").unwrap();
        let mut vars = real_secrets();
        vars.push(("RUSH__PROFILE", "production"));
        let err = Config::load_from(Some(&file), env(&vars)).unwrap_err().to_string();
        assert!(err.contains("postgres.url") && !err.contains("hunter2"), "{err}");
        std::fs::write(&file, "[postgres]\nurl = \"postgres://rush@db/rush\"\n").unwrap();
        assert!(Config::load_from(Some(&file), env(&vars)).is_ok(), "a URL without a password may stay in the file");
    }

    #[test]
    fn unknown_keys_are_refused_in_files_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rush.toml");
        std::fs::write(&file, "[http]\nadress = \"x\"\n").unwrap();
        assert!(Config::load_from(Some(&file), env(&[])).is_err());
        assert!(Config::load_from(None, env(&[("RUSH__HTTP__PORTT", "1")])).is_err());
        assert!(Config::load_from(None, env(&[("RUSH__NOPE", "1")])).is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        assert!(Config::load_from(None, env(&[("RUSH__NODE_ID", "5000")])).is_err());
        assert!(Config::load_from(None, env(&[("RUSH__ACTORS__MAILBOX_LEN_MAX", "0")])).is_err());
        assert!(Config::load_from(None, env(&[("RUSH__AUTH__JWT_SECRET", "short")])).is_err());
        assert!(Config::load_from(None, env(&[("RUSH__OUTBOX__READY_PCT", "0")])).is_err());
    }

    #[test]
    fn kafka_without_redis_is_refused_with_the_reason() {
        let err = Config::load_from(None, env(&[("RUSH__KAFKA__BROKERS", "127.0.0.1:9092")])).unwrap_err();
        assert!(err.to_string().contains("redis.url"), "{err}");
        let cfg = Config::load_from(
            None,
            env(&[
                ("RUSH__KAFKA__BROKERS", "127.0.0.1:9092"),
                ("RUSH__REDIS__URL", "redis://127.0.0.1"),
                ("RUSH__POSTGRES__URL", "postgres://rush@127.0.0.1/rush"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers.as_deref(), Some("127.0.0.1:9092"));
        assert_eq!(cfg.kafka.partitions, 128);
        assert_eq!(cfg.postgres.url.as_deref(), Some("postgres://rush@127.0.0.1/rush"));
    }
}
