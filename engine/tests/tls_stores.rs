//! rush's clients over TLS, with authentication, to every store (issue 20),
//! against the local stores `scripts/stack.sh` starts with TLS only:
//! Postgres on 5433 (SCRAM password), Redis on 6380 (ACL user, client
//! certificate required), Kafka on localhost:9094 (SASL/SCRAM-SHA-512
//! behind TLS). Each works with the right CA and credentials and refuses
//! the wrong ones: an unknown CA, no TLS, a wrong password, no client
//! certificate. The whole sale over these stores, through real `rush`
//! processes, is in the gateway's `tls` tests.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use rush_engine::config::{KafkaConfig, KafkaSecurity, PostgresConfig, RedisConfig, SaslMechanism};
use rush_engine::domain::IdGen;
use rush_engine::durable::Pools;
use rush_engine::events::kafka;
use rush_engine::store::redis::{tls_certificates, RedisStore};
use rush_engine::testkit::{tls, unique_name, ScratchDb};

fn pg_cfg() -> PostgresConfig {
    PostgresConfig { connect_timeout_ms: 5_000, pool_max: 2, ..PostgresConfig::default() }
}

async fn pg_ssl_in_use(pools: &Pools) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pools.read)
        .await
        .expect("pg_stat_ssl")
}

#[tokio::test]
async fn postgres_over_verified_tls_with_a_password_migrates_and_serves() {
    let db = ScratchDb::create_at(&tls::postgres_url("ca.pem")).await.expect("Postgres with TLS on 5433");
    let pools = Pools::postgres(&db.url, &pg_cfg()).await.expect("open over TLS");
    assert!(pg_ssl_in_use(&pools).await, "the connection is encrypted");
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pools.read)
        .await
        .expect("migrations table");
    assert!(migrated > 0, "migrations ran over TLS");
}

#[tokio::test]
async fn postgres_refuses_an_unknown_ca_no_tls_and_a_wrong_password() {
    let good = tls::postgres_url("ca.pem");
    let cases = [
        ("a CA that did not sign the server", tls::postgres_url("other-ca.pem")),
        ("the system's roots only", good.replace(&format!("&sslrootcert={}", tls::file("ca.pem").display()), "")),
        ("no TLS (the server rejects hostnossl)", good.replace("sslmode=verify-full", "sslmode=disable")),
        ("a wrong password", good.replace(tls::PASSWORD, "wrong")),
        ("an address not in the certificate", good.replace("@localhost:", "@127.0.0.1:")),
    ];
    for (what, url) in cases {
        let cfg = PostgresConfig { connect_timeout_ms: 3_000, ..pg_cfg() };
        match Pools::postgres(&url, &cfg).await {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => assert!(!e.to_string().contains(tls::PASSWORD), "{what}: the password is not shown: {e}"),
        }
    }
    let missing = good.replace("ca.pem", "no-such.pem");
    let Err(err) = Pools::postgres(&missing, &pg_cfg()).await else { panic!("a missing CA file is an error") };
    let err = err.to_string();
    assert!(err.contains("sslrootcert") && err.contains("no-such.pem"), "{err}");
    assert!(!err.contains(tls::PASSWORD), "{err}");
}

fn redis_cfg(ca: Option<&str>, client_cert: bool) -> RedisConfig {
    RedisConfig {
        url: Some(tls::redis_url()),
        tls_ca_file: ca.map(tls::file),
        tls_cert_file: client_cert.then(|| tls::file("client.pem")),
        tls_key_file: client_cert.then(|| tls::file("client.key")),
        ..RedisConfig::default()
    }
}

async fn redis_connect(url: &str, cfg: &RedisConfig) -> Result<RedisStore<redis::aio::ConnectionManager>, String> {
    let ids = Arc::new(IdGen::new(7).expect("ids"));
    let certs = tls_certificates(cfg).map_err(|e| e.to_string())?;
    let prefix = unique_name("rushtest-tls");
    RedisStore::connect(url, certs, &prefix, ids, 1000, Duration::from_secs(2)).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn redis_over_tls_with_an_acl_user_and_a_client_certificate_runs_the_scripts() {
    let cfg = redis_cfg(Some("ca.pem"), true);
    let store = redis_connect(&tls::redis_url(), &cfg).await.expect("Redis with TLS on 6380");
    // The scripts are loaded (connect does it); one runs: a node id lease.
    assert!(store.lease_node_id(7, 1_000, Duration::from_secs(2)).await.expect("lease script"));
    let mut conn = store.connection();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut conn).await.expect("whoami");
    assert_eq!(who, "rush");
}

#[tokio::test]
async fn redis_refuses_an_unknown_ca_no_client_certificate_no_tls_and_a_wrong_password() {
    let url = tls::redis_url();
    let cases = [
        ("a CA that did not sign the server", url.clone(), redis_cfg(Some("other-ca.pem"), true)),
        ("the system's roots only", url.clone(), redis_cfg(None, true)),
        ("no client certificate", url.clone(), redis_cfg(Some("ca.pem"), false)),
        ("a wrong password", url.replace(tls::PASSWORD, "wrong"), redis_cfg(Some("ca.pem"), true)),
        ("no TLS", url.replace("rediss://", "redis://"), RedisConfig::default()),
        (
            "an address not in the certificate",
            url.replace("@localhost:", "@127.0.0.1:"),
            redis_cfg(Some("ca.pem"), true),
        ),
    ];
    for (what, url, cfg) in cases {
        match redis_connect(&url, &cfg).await {
            Ok(_) => panic!("{what}: connected"),
            Err(e) => assert!(!e.contains(tls::PASSWORD), "{what}: the password is not shown: {e}"),
        }
    }
    let missing = RedisConfig { tls_ca_file: Some(tls::file("no-such.pem")), ..redis_cfg(None, false) };
    let err = redis_connect(&url, &missing).await.err().expect("a missing CA file is an error");
    assert!(err.contains("redis.tls_ca_file") && err.contains("no-such.pem"), "{err}");
}

fn kafka_cfg(security: KafkaSecurity, ca: Option<&str>, password: &str) -> KafkaConfig {
    let sasl = security == KafkaSecurity::SaslSsl || security == KafkaSecurity::SaslPlaintext;
    KafkaConfig {
        brokers: Some(tls::KAFKA_BROKERS.into()),
        topic_prefix: unique_name("rushtls"),
        partitions: 2,
        request_timeout_ms: 4_000,
        security_protocol: security,
        ssl_ca_file: ca.map(tls::file),
        sasl_mechanism: SaslMechanism::ScramSha512,
        sasl_username: sasl.then(|| "rush".into()),
        sasl_password: sasl.then(|| password.into()),
        ..KafkaConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_sasl_scram_creates_topics_and_takes_a_message() {
    let cfg = kafka_cfg(KafkaSecurity::SaslSsl, Some("ca.pem"), tls::PASSWORD);
    kafka::check_reachable(&cfg, tls::KAFKA_BROKERS).await.expect("Kafka with SASL_SSL on localhost:9094");
    kafka::ensure_topics(&cfg, tls::KAFKA_BROKERS).await.expect("topics");
    let producer = kafka::producer(&cfg, tls::KAFKA_BROKERS).expect("producer");
    let topic = &kafka::topics(&cfg.topic_prefix)[0];
    let record = FutureRecord::to(topic).key("k").payload("over tls");
    let delivered = producer.send(record, Duration::from_secs(10)).await;
    let (partition, offset) = match delivered {
        Ok(d) => (d.partition, d.offset),
        Err((e, _)) => panic!("not delivered: {e}"),
    };
    assert!(partition >= 0 && offset >= 0, "acknowledged by the broker at {partition}/{offset}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_refuses_a_wrong_password_an_unknown_ca_and_no_tls() {
    let cases = [
        ("a wrong password", kafka_cfg(KafkaSecurity::SaslSsl, Some("ca.pem"), "wrong")),
        ("a CA that did not sign the broker", kafka_cfg(KafkaSecurity::SaslSsl, Some("other-ca.pem"), tls::PASSWORD)),
        ("the system's roots only", kafka_cfg(KafkaSecurity::SaslSsl, None, tls::PASSWORD)),
        ("no TLS", kafka_cfg(KafkaSecurity::SaslPlaintext, None, tls::PASSWORD)),
        ("no SASL", kafka_cfg(KafkaSecurity::Ssl, Some("ca.pem"), "")),
    ];
    for (what, cfg) in cases {
        let got = kafka::check_reachable(&cfg, tls::KAFKA_BROKERS).await;
        assert!(got.is_err(), "{what}: reached the broker");
    }
    let missing = KafkaConfig {
        ssl_ca_file: Some(tls::file("no-such.pem")),
        ..kafka_cfg(KafkaSecurity::SaslSsl, None, tls::PASSWORD)
    };
    let err = kafka::check_reachable(&missing, tls::KAFKA_BROKERS).await.expect_err("a missing CA file").to_string();
    assert!(err.contains("kafka.ssl_ca_file") && err.contains("no-such.pem"), "{err}");
    // The broker's name is checked against its certificate.
    let cfg = kafka_cfg(KafkaSecurity::SaslSsl, Some("ca.pem"), tls::PASSWORD);
    for (what, brokers) in [("an address not in the certificate", "127.0.0.1:9094")] {
        let got = kafka::check_reachable(&cfg, brokers).await;
        assert!(got.is_err(), "{what}: reached the broker");
    }
}
