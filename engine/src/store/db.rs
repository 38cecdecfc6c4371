//! The embedded hot store's SQLite file: one writer connection (so writes queue in the pool
//! instead of failing with SQLITE_BUSY) and a few readers, WAL journal.
//!
//! `synchronous = NORMAL` in WAL mode loses nothing when the *process* dies
//! (kill -9): a committed transaction is in the WAL file in the OS page cache.
//! Only a power loss can drop the last transactions; `FULL` trades about 10×
//! write throughput for that, and is one setting away.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::config::SqliteConfig;

#[derive(Clone, Debug)]
pub struct Db {
    pub write: SqlitePool,
    pub read: SqlitePool,
}

#[derive(Debug, thiserror::Error)]
pub enum DbOpenError {
    #[error("cannot create data directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot open SQLite file {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("Postgres at {url} is unreachable: {source}")]
    Postgres { url: String, source: sqlx::Error },
    #[error("migrating {path}: {source}")]
    Migrate { path: String, source: sqlx::migrate::MigrateError },
    #[error(
        "the database at {url} lacks migrations {missing:?} this rush needs: run `rush migrate` \
         (postgres.migrate_on_start is off)"
    )]
    SchemaBehind { url: String, missing: Vec<i64> },
}

/// WAL pages after which the writer checkpoints itself (SQLite's default
/// is 1 000): rarely, so the background checkpoints do nearly all the work.
pub(crate) const WRITER_CHECKPOINT_PAGES: u32 = 16_000;
/// The WAL file is truncated back to this after a checkpoint resets it.
pub(crate) const WAL_SIZE_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// `sqlite.mmap_mib` in bytes.
pub(crate) fn mmap_bytes(cfg: &SqliteConfig) -> u64 {
    u64::from(cfg.mmap_mib) * 1024 * 1024
}

/// The embedded hot store's file: hot state and the outbox. The durable
/// store is another file (`pool.rs`), so the workers' writes never queue
/// behind (or block) the hot path's commits.
pub const HOT_FILE: &str = "hot.db";

impl Db {
    pub async fn open(dir: &Path, cfg: &SqliteConfig) -> Result<Db, DbOpenError> {
        std::fs::create_dir_all(dir).map_err(|source| DbOpenError::Dir { path: dir.display().to_string(), source })?;
        let path = dir.join(HOT_FILE);
        let shown = path.display().to_string();
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| DbOpenError::Open { path: shown.clone(), source })?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_millis(cfg.busy_timeout_ms));
        // SQLite's automatic checkpoint runs in the committing connection,
        // copying pages and fsyncing the file, which stalls everyone waiting
        // on that commit (seen as p99.9 spikes of hundreds of ms). A
        // background connection checkpoints often, so the writer's own
        // checkpoint finds little left to do; the writer's still has to run,
        // because only a checkpoint between writes can finish and let the WAL
        // start over (a background one never catches a busy writer).
        let opts = opts
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
            .pragma("mmap_size", mmap_bytes(cfg).to_string());
        let write = SqlitePoolOptions::new()
            // A file in this process: no ping before each use (see `pool.rs`).
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone().pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES.to_string()))
            .await
            .map_err(|source| DbOpenError::Open { path: shown.clone(), source })?;
        // A newer release's migrations are accepted (see `durable::pool::bring_up`).
        let mut hot = sqlx::migrate!("./migrations/sqlite-hot");
        hot.set_ignore_missing(true);
        hot.run(&write).await.map_err(|source| DbOpenError::Migrate { path: shown.clone(), source })?;
        let checkpointer = SqlitePoolOptions::new()
            // A file in this process: no ping before each use (see `pool.rs`).
            .test_before_acquire(false)
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .map_err(|source| DbOpenError::Open { path: shown.clone(), source })?;
        tokio::spawn(checkpoint(checkpointer, Duration::from_millis(cfg.checkpoint_every_ms)));
        let read = SqlitePoolOptions::new()
            // A file in this process: no ping before each use (see `pool.rs`).
            .test_before_acquire(false)
            .max_connections(cfg.read_pool_max.max(1))
            .connect_with(opts.read_only(true))
            .await
            .map_err(|source| DbOpenError::Open { path: shown, source })?;
        Ok(Db { write, read })
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }
}

/// Moves WAL frames into the database file now and then, without blocking
/// the writer (PASSIVE), until the pool is closed.
pub(crate) async fn checkpoint(pool: SqlitePool, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}
