//! The restore drill of k8s/README.md ("Backups"), run for real: a rush on
//! Redis + Postgres takes money, holds and grabs; its database is dumped
//! as the `postgres-backup` CronJob does (`pg_dump -Fc`) and restored into
//! an empty database (`pg_restore --no-owner --exit-on-error`). Every table
//! has the same rows, the ledger sums to zero, and `rush reconcile`, with
//! the schema check on (no migration at start), exits 0 on the restored
//! database.

use std::process::Command;

use reqwest::StatusCode;
use rush_engine::config::PostgresConfig;
use rush_engine::durable::Pools;
use rush_engine::testkit::{unique_name, ScratchDb};
use serde_json::json;

use super::helpers::*;

/// Every table of the public schema with its row count and a digest of
/// its rows, and the sum of the journal's amounts.
async fn snapshot(url: &str) -> (Vec<(String, i64, String)>, i64) {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("tables");
    let mut counts = Vec::new();
    for t in tables {
        let sql =
            format!("SELECT COUNT(*), COALESCE(md5(string_agg(r::text, ',' ORDER BY r::text)), '') FROM \"{t}\" r");
        let (n, digest): (i64, String) = sqlx::query_as(&sql).fetch_one(&pool).await.expect("count");
        counts.push((t, n, digest));
    }
    let sum: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(amount), 0)::bigint FROM journal")
        .fetch_one(&pool)
        .await
        .expect("journal sum");
    (counts, sum)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_restored_into_an_empty_database_has_every_row_and_reconciles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = ScratchDb::create().await.expect("Postgres (RUSH_TEST_POSTGRES_URL)");
    let prefix = unique_name("rushtest-restore");
    let envs = env_vars([
        ("RUSH__REDIS__URL", test_redis_url()),
        ("RUSH__REDIS__KEY_PREFIX", prefix.clone()),
        ("RUSH__POSTGRES__URL", source.url.clone()),
        ("RUSH__DATA_DIR", dir.path().display().to_string()),
        ("RUSH__HTTP__ADDR", "127.0.0.1:0".into()),
    ]);
    let (mut serve, banner) = spawn_rush("serve", &envs);
    let c = Client::new(banner["url"].as_str().expect("url"));
    let admin = c.token("ops", "admin").await;
    let (s, v) = c.call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": 900, "reason": "t"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sender = c.token("sender", "user").await;
    let (s, v) =
        c.call("POST", "/v1/packets", &sender, json!({"kind": "normal", "total_amount": 600, "count": 3})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("packet").to_string();
    let event = c.create_event(&admin, 1, 5).await;
    for u in 0..3 {
        let tok = c.token(&format!("u{u}"), "user").await;
        let (s, v) =
            c.call("POST", "/v1/orders", &tok, json!({"event_id": event, "category": "std", "quantity": 1})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = c.call("POST", &format!("/v1/packets/{packet}/grab"), &tok, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    // The workers have written it all to Postgres.
    let pools = Pools::postgres(&source.url, &PostgresConfig::default()).await.expect("pg");
    wait_persisted(&pools.read, 3, 3, 30).await;
    kill9(&mut serve);
    delete_prefix(&test_redis_url(), &prefix);

    let dump = dir.path().join("rush.dump");
    run(Command::new("pg_dump").args(["-Fc", "-f"]).arg(&dump).arg(&source.url));
    let target = ScratchDb::create().await.expect("an empty database");
    run(Command::new("pg_restore").args(["--no-owner", "--exit-on-error", "-d", &target.url]).arg(&dump));

    let (before, after) = (snapshot(&source.url).await, snapshot(&target.url).await);
    assert!(before.0.iter().any(|(t, n, _)| t == "grabs" && *n == 3), "{:?}", before.0);
    assert_eq!(before, after, "the restored database differs from the dumped one");
    assert_eq!(after.1, 0, "the restored journal balances");

    let (code, report) = rush_reconcile(&[
        ("RUSH__POSTGRES__URL", target.url.as_ref()),
        ("RUSH__POSTGRES__MIGRATE_ON_START", "false".as_ref()),
        ("RUSH__DATA_DIR", dir.path().as_os_str()),
    ]);
    assert_eq!(code, 0, "rush reconcile on the restored database: {report}");
}
