//! Migrations as a deliberate step, and rollbacks: a process with
//! `postgres.migrate_on_start` off refuses a database that lacks one of
//! its migrations, and every process accepts a database a newer release
//! migrated further (the previous binary runs against the newer schema).
//! A newer release is simulated by what it leaves: a table of its own and
//! its version in `_sqlx_migrations`, unknown to this binary.

use rush_engine::config::{PostgresConfig, SqliteConfig};
use rush_engine::durable::Pools;
use rush_engine::store::db::DbOpenError;
use rush_engine::testkit::ScratchDb;

const NEWER: i64 = 99_990_101_000_000;

fn cfg(migrate_on_start: bool) -> PostgresConfig {
    PostgresConfig { migrate_on_start, ..PostgresConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_deliberately_and_accepts_a_newer_schema() {
    let db = ScratchDb::create().await.expect("Postgres for tests (RUSH_TEST_POSTGRES_URL)");
    // Not migrated, and not allowed to migrate: refused, naming what is missing.
    match Pools::postgres(&db.url, &cfg(false)).await {
        Err(DbOpenError::SchemaBehind { missing, .. }) => assert!(missing.contains(&1), "{missing:?}"),
        Err(e) => panic!("expected SchemaBehind, got {e}"),
        Ok(_) => panic!("an unmigrated database was accepted"),
    }
    // The deliberate step (what `rush migrate` runs), then a process that
    // only checks starts.
    Pools::postgres(&db.url, &cfg(true)).await.expect("migrating");
    let pools = Pools::postgres(&db.url, &cfg(false)).await.expect("a migrated database");
    // A newer release migrates further.
    for sql in [
        "CREATE TABLE newer_release_only (x BIGINT)".to_string(),
        format!(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES ({NEWER}, 'a newer release', true, '\\x00'::bytea, 1)"
        ),
    ] {
        sqlx::query(&sql).execute(&pools.write).await.expect(&sql);
    }
    // Rolled back: this binary starts against it, checking or migrating.
    let checking = Pools::postgres(&db.url, &cfg(false)).await.expect("rollback, checking");
    assert!(checking.ping().await);
    Pools::postgres(&db.url, &cfg(true)).await.expect("rollback, migrating");
    // And it works there: a write and a read through the durable store.
    let d = rush_engine::durable::Durable::new(checking);
    let transfer = rush_engine::domain::Id::from_raw(1 << 22).expect("an id");
    d.credit("rollback-user", rush_engine::domain::Fen::new(500), "test", transfer).await.expect("credit");
    assert_eq!(d.balance("rollback-user").await.expect("balance").available.get(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_accepts_a_newer_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pools = Pools::sqlite(dir.path(), &SqliteConfig::default()).await.expect("sqlite");
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({NEWER}, 'a newer release', 1, x'00', 1)"
    ))
    .execute(&pools.write)
    .await
    .expect("a newer release's version");
    drop(pools);
    let again = Pools::sqlite(dir.path(), &SqliteConfig::default()).await.expect("rollback on SQLite");
    assert!(again.ping().await);
}
