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
        Self::create_at(&test_postgres_url()).await
    }

    /// On the server of `admin_url`, whose parameters (`?sslmode=…`) the
    /// new database's url keeps.
    pub async fn create_at(admin_url: &str) -> Result<ScratchDb, sqlx::Error> {
        let name = unique_name("rush_test");
        let mut conn = sqlx::PgConnection::connect(admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
        let mut url = url::Url::parse(admin_url).map_err(|e| sqlx::Error::Configuration(e.into()))?;
        url.set_path(&name);
        Ok(ScratchDb { url: url.into(), admin_url: admin_url.to_string(), name })
    }
}

/// The stores with TLS and authentication of `scripts/stack.sh` (see its
/// "TLS and authentication"): where their certificates are
/// (`RUSH_TEST_TLS_DIR`, default `/var/tmp/rush-tls`, one set per machine)
/// and how to reach them.
pub mod tls {
    use std::path::PathBuf;

    pub const PASSWORD: &str = "rush-tls-pw";

    pub fn dir() -> PathBuf {
        std::env::var_os("RUSH_TEST_TLS_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/tmp/rush-tls"))
    }

    pub fn file(name: &str) -> PathBuf {
        dir().join(name)
    }

    /// Postgres on 5433, TLS only, the server's name checked against `ca`.
    pub fn postgres_url(ca: &str) -> String {
        format!(
            "postgres://rush:{PASSWORD}@localhost:5433/postgres?sslmode=verify-full&sslrootcert={}",
            file(ca).display()
        )
    }

    /// Redis on 6380 (TLS, client certificate required), ACL user `rush`.
    pub fn redis_url() -> String {
        format!("rediss://rush:{PASSWORD}@localhost:6380")
    }

    /// Kafka: SASL/SCRAM-SHA-512 user `rush` behind TLS.
    pub const KAFKA_BROKERS: &str = "localhost:9094";
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
