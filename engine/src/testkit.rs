//! Helpers for tests and local tooling (not used by rush itself): scratch
//! Postgres databases and the addresses of the local test services.

use sqlx::Connection;

/// A server where tests may create databases:
/// `RUSH_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1/postgres`.
pub fn test_postgres_url() -> String {
    std::env::var("RUSH_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1/postgres".into())
}

/// A Kafka-protocol broker for tests: `RUSH_TEST_KAFKA_BROKERS`, default
/// `127.0.0.1:9092` (tansu, started by `.ci/run` or `scripts/stack.sh`).
pub fn test_kafka_brokers() -> String {
    std::env::var("RUSH_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A name no other test run uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}_{:012x}", std::process::id(), fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// A fresh Postgres database, dropped (with its connections) on drop.
pub struct ScratchDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl ScratchDb {
    pub async fn create() -> Result<ScratchDb, sqlx::Error> {
        let admin_url = test_postgres_url();
        let name = unique_name("rush_test");
        let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin_url).to_string();
        Ok(ScratchDb { url: format!("{base}/{name}"), admin_url, name })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // From a thread of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}
