//! Full mode with TLS and authentication to every store (issue 20): `rush
//! serve` (relay inside) and `rush worker` as real processes against the
//! TLS-only stores of `scripts/stack.sh` (Postgres 5433, Redis 6380 with a
//! client certificate, Kafka SASL/SCRAM behind TLS on localhost:9094).
//! Acknowledged holds and grabs reach Postgres; a node given the wrong CA
//! (or Kafka password) refuses to start and says which store and why,
//! without its password.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rush_engine::config::PostgresConfig;
use rush_engine::durable::{Durable, Pools};
use rush_engine::testkit::{tls, unique_name, ScratchDb};
use serde_json::json;

use super::helpers::*;

fn envs(pg_url: &str, prefix: &str, data_dir: &std::path::Path) -> Vec<(String, String)> {
    let f = |name: &str| tls::file(name).display().to_string();
    env_vars([
        ("RUSH__REDIS__URL", tls::redis_url()),
        ("RUSH__REDIS__TLS_CA_FILE", f("ca.pem")),
        ("RUSH__REDIS__TLS_CERT_FILE", f("client.pem")),
        ("RUSH__REDIS__TLS_KEY_FILE", f("client.key")),
        ("RUSH__REDIS__KEY_PREFIX", prefix.into()),
        ("RUSH__KAFKA__BROKERS", tls::KAFKA_BROKERS.into()),
        ("RUSH__KAFKA__SECURITY_PROTOCOL", "sasl_ssl".into()),
        ("RUSH__KAFKA__SSL_CA_FILE", f("ca.pem")),
        ("RUSH__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("RUSH__KAFKA__SASL_USERNAME", "rush".into()),
        ("RUSH__KAFKA__SASL_PASSWORD", tls::PASSWORD.into()),
        ("RUSH__KAFKA__TOPIC_PREFIX", prefix.into()),
        ("RUSH__KAFKA__GROUP", format!("{prefix}-persist")),
        ("RUSH__KAFKA__PARTITIONS", "2".into()),
        ("RUSH__POSTGRES__URL", pg_url.into()),
        ("RUSH__DATA_DIR", data_dir.display().to_string()),
        ("RUSH__HTTP__ADDR", "127.0.0.1:0".into()),
    ])
}

/// Kills the processes when dropped, so a failing test leaves none.
struct Procs(Vec<std::process::Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill9(c);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mode_over_tls_to_every_store_persists_what_it_acknowledges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = ScratchDb::create_at(&tls::postgres_url("ca.pem")).await.expect("Postgres with TLS on 5433");
    let prefix = unique_name("rushtls");
    let envs = envs(&pg.url, &prefix, dir.path());
    let (serve, banner) = spawn_rush("serve", &envs);
    let mut procs = Procs(vec![serve]);
    assert_eq!((banner["mode"].as_str(), banner["durable"].as_str()), (Some("full"), Some("postgres")), "{banner}");
    let (worker, _) = spawn_rush("worker", &envs);
    procs.0.push(worker);

    let c = Client::new(banner["url"].as_str().expect("url"));
    let admin = c.token("ops", "admin").await;
    let event = c.create_event(&admin, 2, 10).await;
    let (s, v) = c.call("POST", "/v1/admin/wallet/sender/credit", &admin, json!({"amount": 1000, "reason": "t"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sender = c.token("sender", "user").await;
    let (s, v) =
        c.call("POST", "/v1/packets", &sender, json!({"kind": "normal", "total_amount": 1000, "count": 10})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let packet = v["packet_id"].as_str().expect("packet").to_string();
    // Ten users each hold a seat and grab a share.
    for u in 0..10 {
        let tok = c.token(&format!("u{u}"), "user").await;
        let body = json!({"event_id": event, "category": "std", "quantity": 1});
        let (s, v) = c.call("POST", "/v1/orders", &tok, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = c.call("POST", &format!("/v1/packets/{packet}/grab"), &tok, json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // Relayed to Kafka over TLS, consumed by the worker, written to
    // Postgres over TLS.
    let durable = Durable::new(Pools::postgres(&pg.url, &PostgresConfig::default()).await.expect("pg"));
    wait_persisted(&durable.db().read, 10, 10, 60).await;
    for u in 0..10 {
        let b = durable.balance(&format!("u{u}")).await.expect("balance");
        assert_eq!(b.available.get(), 100, "u{u}'s wallet");
    }
    drop(procs);
    delete_prefix_tls(&prefix);
}

/// The test's keys, deleted from the TLS Redis.
fn delete_prefix_tls(prefix: &str) {
    let cfg = rush_engine::config::RedisConfig {
        url: Some(tls::redis_url()),
        tls_ca_file: Some(tls::file("ca.pem")),
        tls_cert_file: Some(tls::file("client.pem")),
        tls_key_file: Some(tls::file("client.key")),
        ..Default::default()
    };
    let Ok(Some(certs)) = rush_engine::store::redis::tls_certificates(&cfg) else { return };
    if let Ok(client) = redis::Client::build_with_tls(tls::redis_url(), certs) {
        delete_prefix_with(client, prefix);
    }
}

/// `rush serve` with `envs`: its exit code and standard error, or a panic
/// if it is still running after 20 s (it should have refused to start).
fn refused(envs: &[(String, String)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rush"));
    cmd.arg("serve").env("RUST_LOG", "error").stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn rush");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("stderr");
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            kill9(&mut child);
            panic!("rush serve started with a wrong TLS setting");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_node_given_the_wrong_ca_for_a_store_refuses_to_start_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = ScratchDb::create_at(&tls::postgres_url("ca.pem")).await.expect("Postgres with TLS on 5433");
    let good = envs(&pg.url, &unique_name("rushtls"), dir.path());
    let other = tls::file("other-ca.pem").display().to_string();
    let with = |key: &str, value: &str| -> Vec<(String, String)> {
        good.iter().map(|(k, v)| (k.clone(), if k == key { value.to_string() } else { v.clone() })).collect()
    };
    let pg_other = pg.url.replace(&tls::file("ca.pem").display().to_string(), &other);
    // The message names the store and says why (rustls' and OpenSSL's words).
    for (store, why, envs) in [
        ("Postgres", "UnknownIssuer", with("RUSH__POSTGRES__URL", &pg_other)),
        ("Redis", "UnknownIssuer", with("RUSH__REDIS__TLS_CA_FILE", &other)),
        ("Kafka", "certificate verify failed", with("RUSH__KAFKA__SSL_CA_FILE", &other)),
        ("Kafka", "SCRAM authentication failed", with("RUSH__KAFKA__SASL_PASSWORD", "wrong")),
    ] {
        let (code, err) = tokio::task::spawn_blocking(move || refused(&envs)).await.expect("join");
        assert_ne!(code, 0, "{store}: {err}");
        assert!(err.contains(store) && err.contains(why), "{store} is named with {why:?}: {err}");
        assert!(!err.contains(tls::PASSWORD), "{store}: no password in the message: {err}");
    }
}
