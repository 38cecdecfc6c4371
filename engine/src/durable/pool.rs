//! The durable store's connections: SQLite (`rush.db` in the data dir,
//! embedded and single-node modes) or Postgres (`postgres.url`, full mode),
//! both through sqlx's `Any` driver so one body of SQL serves both. The SQL
//! is kept to what both dialects share (`$n` binds, `ON CONFLICT`,
//! `RETURNING`, partial unique indexes, BIGINT everywhere); only the
//! migrations are per dialect.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AnyPool, Executor};

use super::writer::Writer;
use crate::config::{redact_url, PostgresConfig, SqliteConfig};
use crate::store::db::{checkpoint, mmap_bytes, DbOpenError, WAL_SIZE_LIMIT_BYTES, WRITER_CHECKPOINT_PAGES};

/// The durable store's file in the data dir.
pub const DB_FILE: &str = "rush.db";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Writes go to `writer` (over `write`), reads to `read`: for SQLite one
/// writer connection whose units are committed in groups, and read-only
/// readers (WAL); for Postgres one pool for all three.
#[derive(Clone, Debug)]
pub struct Pools {
    pub writer: Writer,
    pub write: AnyPool,
    pub read: AnyPool,
    pub backend: Backend,
}

fn sqlite_pragmas(cfg: &SqliteConfig, writer: bool) -> String {
    let mut s = format!(
        "PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL; \
         PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}; PRAGMA foreign_keys = ON; PRAGMA mmap_size = {};",
        cfg.busy_timeout_ms,
        mmap_bytes(cfg)
    );
    if writer {
        s.push_str(&format!(" PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES};"));
    }
    s
}

/// A pooled connection idle longer than `ping_idle` is pinged before it is
/// handed out (`None`: never). sqlx's default pings every time: a round trip
/// before every statement, a third of the money path's round trips on
/// Postgres (and on SQLite a hand-off to its worker thread, which doubled
/// the writer's). A SQLite connection is a file in this process: nothing to
/// test. A Postgres connection may have died with its server: one that has
/// been busy moments ago has not, so only an idle one is checked, as
/// HikariCP's `aliveBypassWindowMs` does.
async fn any_pool(
    url: &str,
    max: u32,
    after: Option<String>,
    ping_idle: Option<Duration>,
    shown: &str,
) -> Result<AnyPool, DbOpenError> {
    let opts = AnyConnectOptions::from_str(url).map_err(|source| DbOpenError::Open { path: shown.into(), source })?;
    let mut pool = AnyPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false);
    if let Some(idle) = ping_idle {
        pool = pool.before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= idle {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        });
    }
    if let Some(sql) = after {
        pool = pool.after_connect(move |conn, _| {
            let sql = sql.clone();
            Box::pin(async move { conn.execute(sql.as_str()).await.map(|_| ()) })
        });
    }
    pool.connect_with(opts).await.map_err(|source| DbOpenError::Open { path: shown.into(), source })
}

/// Brings a durable database's schema to what this binary knows: applies
/// what is missing (`apply`), or only checks that nothing is. Migrations a
/// newer release applied are accepted either way: each release's
/// migrations only add (tables, nullable or defaulted columns, indexes),
/// and what a release stops using is dropped one release later, so the
/// previous binary runs against the newer schema and a rollback starts.
pub(crate) async fn bring_up(
    mut migrator: sqlx::migrate::Migrator,
    pool: &AnyPool,
    apply: bool,
    shown: &str,
) -> Result<(), DbOpenError> {
    migrator.set_ignore_missing(true);
    if apply {
        return migrator.run(pool).await.map_err(|source| DbOpenError::Migrate { path: shown.into(), source });
    }
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .unwrap_or_default();
    let missing: Vec<i64> = migrator.iter().map(|m| m.version).filter(|v| !applied.contains(v)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(DbOpenError::SchemaBehind { url: shown.into(), missing })
    }
}

impl Pools {
    /// The configured durable store: Postgres when `postgres.url` is set,
    /// else `rush.db` in `data_dir`; migrated.
    pub async fn of_config(cfg: &crate::config::Config) -> Result<Pools, DbOpenError> {
        match &cfg.postgres.url {
            Some(url) => Pools::postgres(url, &cfg.postgres).await,
            None => Pools::sqlite(&cfg.data_dir, &cfg.sqlite).await,
        }
    }

    /// `rush.db` in `dir`, created and migrated if need be.
    pub async fn sqlite(dir: &Path, cfg: &SqliteConfig) -> Result<Pools, DbOpenError> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(dir).map_err(|source| DbOpenError::Dir { path: dir.display().to_string(), source })?;
        let path = dir.join(DB_FILE);
        let shown = path.display().to_string();
        let url = format!("sqlite://{}", path.display());
        let write = any_pool(&format!("{url}?mode=rwc"), 1, Some(sqlite_pragmas(cfg, true)), None, &shown).await?;
        // One process owns the file: it always brings it up to date.
        bring_up(sqlx::migrate!("./migrations/sqlite"), &write, true, &shown).await?;
        // Background WAL checkpoints (see `db.rs`), on a typed connection.
        let checkpointer = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new().filename(&path).busy_timeout(Duration::from_millis(cfg.busy_timeout_ms)),
            )
            .await
            .map_err(|source| DbOpenError::Open { path: shown.clone(), source })?;
        tokio::spawn(checkpoint(checkpointer, Duration::from_millis(cfg.checkpoint_every_ms)));
        let read =
            any_pool(&format!("{url}?mode=ro"), cfg.read_pool_max, Some(sqlite_pragmas(cfg, false)), None, &shown)
                .await?;
        let writer = Writer::grouped(write.clone(), cfg.group_commit_max);
        Ok(Pools { writer, write, read, backend: Backend::Sqlite })
    }

    /// The Postgres database at `cfg.url`, migrated.
    pub async fn postgres(url: &str, cfg: &PostgresConfig) -> Result<Pools, DbOpenError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let unreachable = |source| DbOpenError::Postgres { url: shown.clone(), source };
        tls_files_readable(url).map_err(unreachable)?;
        let connect = any_pool(url, cfg.pool_max, None, Some(Duration::from_millis(cfg.ping_idle_ms)), &shown);
        let pool = match tokio::time::timeout(Duration::from_millis(cfg.connect_timeout_ms), connect).await {
            Ok(Ok(pool)) => pool,
            Ok(Err(DbOpenError::Open { source, .. })) => return Err(unreachable(source)),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(unreachable(sqlx::Error::PoolTimedOut)),
        };
        bring_up(sqlx::migrate!("./migrations/postgres"), &pool, cfg.migrate_on_start, &shown).await?;
        Ok(Pools { writer: Writer::pooled(pool.clone()), write: pool.clone(), read: pool, backend: Backend::Postgres })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }
}

/// The TLS files a Postgres URL names (`sslrootcert`, `sslcert`, `sslkey`
/// and their aliases) can be read: a missing one is named, not reported
/// as the driver's bare "No such file or directory".
fn tls_files_readable(url: &str) -> Result<(), sqlx::Error> {
    let Ok(parsed) = url::Url::parse(url) else { return Ok(()) };
    let file_keys = ["sslrootcert", "ssl-root-cert", "ssl-ca", "sslcert", "ssl-cert", "sslkey", "ssl-key"];
    for (key, path) in parsed.query_pairs() {
        if file_keys.contains(&key.as_ref()) && !path.is_empty() {
            std::fs::File::open(path.as_ref())
                .map_err(|e| sqlx::Error::Configuration(format!("{key} {path}: cannot read: {e}").into()))?;
        }
    }
    Ok(())
}
