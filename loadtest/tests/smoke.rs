//! A short run of each scenario against rush spawned in-process, so the
//! harness never rots; and proof that the checks catch a lie.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use rush_engine::telemetry::Metrics;
use rush_engine::Config;
use rush_loadtest::api::Api;
use rush_loadtest::checks::Checks;
use rush_loadtest::load::Model;
use rush_loadtest::scenarios::grab::Packets;
use rush_loadtest::scenarios::{run, RunOpts, Scenario};

async fn spawn_rush(dir: &std::path::Path) -> SocketAddr {
    spawn_rush_with(dir, true).await
}

/// `workers: false`: rush with only its outbox monitor, no persist worker,
/// so nothing it acknowledges reaches the durable store.
async fn spawn_rush_with(dir: &std::path::Path, workers: bool) -> SocketAddr {
    let mut cfg = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    cfg.http.addr = "127.0.0.1:0".into();
    cfg.workers.poll_wait_ms = 20;
    cfg.outbox.check_every_ms = 50;
    // The pay scenario drops some callbacks: the active query finds them.
    cfg.payments.query_after_ms = 200;
    // One address and few users send everything: the harness measures the
    // engine, not the front door's limits.
    cfg.rate_limits.enabled = false;
    let listener = TcpListener::bind(&cfg.http.addr).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let node = rush_engine::Node::open(cfg, Metrics::new()).await.expect("engine");
    let engine = node.engine();
    engine.set_notify_base(&format!("http://{addr}"));
    let (tx, rx) = tokio::sync::watch::channel(false);
    if workers {
        node.start_workers(rx).expect("workers");
    } else {
        node.outbox_monitor(rx);
    }
    std::mem::forget(tx);
    tokio::spawn(rush_gateway::app::http_server(listener, engine).expect("server"));
    addr
}

fn small(addr: SocketAddr, scenario: Scenario, model: Model) -> RunOpts {
    RunOpts {
        also: vec![],
        addr,
        scenario,
        model,
        concurrency: 8,
        duration: Duration::from_secs(1),
        users: 300,
        parts: 40,
        packets: 3,
        spread: 2,
        events: 2,
        rows: 3,
        cols: 4,
        settle_s: 20,
        ceiling: true,
        progress: false,
        only: None,
        metrics: vec![addr],
        sample_every: Duration::from_millis(50),
        lag_max_s: 5.0,
        drain_max_s: 15.0,
        admit_per_s: 300,
        subscribers: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_and_finds_no_violation() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = spawn_rush(dir.path()).await;
    for (scenario, model) in [
        (Scenario::Grab, Model::Closed),
        (Scenario::Seats, Model::Closed),
        (Scenario::Mixed, Model::Open { rate_per_s: 400.0 }),
        (Scenario::Pay, Model::Closed),
        (Scenario::Opening, Model::Closed),
    ] {
        let report = run(small(addr, scenario, model)).await.expect("run");
        let text = rush_loadtest::report::summary(&report);
        assert_eq!(report.violations, 0, "{text}");
        assert!(!report.checks.is_empty());
        assert!(report.stages.iter().all(|s| s.ok > 0), "{text}");
        assert!(report.ceiling.as_ref().is_some_and(|c| c.ok > 0));
        // rush's metrics are read by the names it exports.
        let mut conns = vec![rush_loadtest::client::Conn::new(addr)];
        let now = rush_loadtest::sample::scrape(&mut conns).await.expect("scrape");
        assert!(now.applied > 0.0 && now.cpu_s > 0.0 && now.behind() == 0.0, "{now:?}");
        for st in &report.stages {
            assert!(st.lag.is_some() && st.drain_s.is_some(), "{text}");
            assert!(st.cpu_us_per_ok.is_some_and(|c| c > 0.0), "{text}");
            for p in &st.timeline {
                assert_eq!(p.outcomes.values().sum::<u64>(), p.total, "{}: second {}", st.name, p.t_s);
            }
        }
        let out = tempfile::tempdir().expect("out");
        let (json, svg) = rush_loadtest::report::write(&report, out.path()).expect("write");
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json).expect("json")).expect("parse");
        assert_eq!(v["violations"], 0);
        assert!(std::fs::read_to_string(svg).expect("svg").contains("<polyline"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_catch_a_grant_that_rush_never_made() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = spawn_rush(dir.path()).await;
    let mut api = Api::new(addr, "liar").await.expect("api");
    api.credit("liar-s", 1000).await.expect("credit");
    let users = vec!["liar-u0".to_string()];
    let sender = api.tokens(&["liar-s".to_string()]).await.expect("token").remove(0);
    let id = api.create_packet(&sender, "normal", 1000, 10).await.expect("packet");
    let packets = Arc::new(Packets::new(vec![id], vec![1000]));
    // Claim a grant of 100 to user 0 and an "empty" answer: neither happened.
    assert!(packets.observe(0, 0, 200, br#"{"amount":100}"#));
    assert!(!packets.observe(0, 0, 410, br#"{"error":{"code":"packet_empty"}}"#));
    let mut checks = Checks::default();
    packets.check(&api, &users, &sender, &mut checks).await.expect("check");
    let failed: Vec<&str> = checks.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert_eq!(failed, vec!["answered grants are exactly the recorded grabs", "every packet_empty was deserved"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_side_that_does_not_keep_up_fails_the_run() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = spawn_rush_with(dir.path(), false).await;
    let mut opts = small(addr, Scenario::Grab, Model::Closed);
    opts.only = Some("grab-hot".into());
    // Long enough for several samples of a growing outbox.
    (opts.users, opts.parts, opts.duration) = (1500, 1000, Duration::from_secs(2));
    opts.settle_s = 2;
    opts.drain_max_s = 1.0;
    let report = run(opts).await.expect("run");
    let text = rush_loadtest::report::summary(&report);
    let failed: Vec<&str> = report.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert!(failed.contains(&"grab-hot: everything persisted ≤ 1 s after the load"), "{text}");
    // Nothing is applied: the backlog's lag is its age, as long as the
    // stage (samples every 50 ms).
    let st = &report.stages[0];
    let lag = st.lag.as_ref().map(|l| l.seconds_max).unwrap_or(0.0);
    assert!(lag >= st.duration_s - 0.25, "lag {lag} s over a {} s stage: {text}", st.duration_s);
    assert!(report.stages[0].drain_s.is_none() && report.stages[0].cpu_us_per_ok.is_none(), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opening_checks_catch_a_hold_before_the_instant() {
    use rush_loadtest::load::{Req, Workload};
    use rush_loadtest::scenarios::seats::{Events, OpeningLoad};
    let dir = tempfile::tempdir().expect("dir");
    let addr = spawn_rush(dir.path()).await;
    let mut api = Api::new(addr, "early").await.expect("api");
    let opens = "2029-06-01T00:00:00.000Z";
    let events = Events::create_opening(&mut api, "early", 1, 1, 2, Some(opens)).await.expect("event");
    let tokens = Arc::new(api.tokens(&["early-u0".to_string()]).await.expect("token"));
    let opens_ms = chrono::DateTime::parse_from_rfc3339(opens).expect("time").timestamp_millis();
    let load = OpeningLoad::new(Arc::new(events), tokens, 0, opens_ms);
    let req = || Req {
        method: hyper::Method::POST,
        path: Arc::from("/v1/orders"),
        token: None,
        body: None,
        tag: [0, 0, 1],
        admission: None,
    };
    // A refusal naming the instant is right; one naming another is not;
    // a hold answered now (before 2029) is early whatever it says.
    load.observe(&req(), 409, br#"{"error":{"code":"not_on_sale","on_sale_at":"2029-06-01T00:00:00.000Z"}}"#);
    load.observe(&req(), 409, br#"{"error":{"code":"not_on_sale","on_sale_at":"2029-06-01T00:00:01.000Z"}}"#);
    load.observe(
        &req(),
        201,
        br#"{"order_id":"1","created_at":"2029-06-01T00:00:00.000Z","seats":[{"seat_id":"A-1-1"}]}"#,
    );
    let mut checks = Checks::default();
    load.check(&mut checks);
    let failed: Vec<&str> = checks.checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert_eq!(
        failed,
        vec!["opening: no hold acknowledged before on_sale_at", "opening: every refusal before it named the instant"]
    );
}
