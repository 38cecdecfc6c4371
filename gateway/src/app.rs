//! The HTTP applications: rush's API with its routes and middleware, and
//! the ops server of `rush worker` and `rush relay`.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use rush_engine::Engine;

use crate::auth::Keys;
use crate::error::{json_error, path_error, query_error, ApiError};
use crate::middleware::observe;
use crate::routes;
use crate::state::Connections;
use crate::AppState;

/// Builds the HTTP server on an already bound listener.
pub fn http_server(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<Server> {
    Ok(counted_http_server(listener, engine)?.0)
}

/// [`http_server`], and the count of its open connections (actix's own
/// graceful stop drops idle keep-alive connections at once; rush waits for
/// them to close first, see `serve::shutdown`).
pub fn counted_http_server(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<(Server, Connections)> {
    let connections = Connections::default();
    let counter = connections.clone();
    let cfg = engine.config().clone();
    let _ = crate::error::RETRY_AFTER_S.set(cfg.http.retry_after_s);
    let state = web::Data::new(AppState {
        engine: engine.clone(),
        traffic: connections.clone(),
        push: Arc::new(crate::push::Push::new(engine.clone())),
    });
    let keys = web::Data::new(Keys::from_config(&cfg.auth));
    if let (true, Ok(rt)) = (cfg.jwks(), tokio::runtime::Handle::try_current()) {
        let keys = keys.clone();
        rt.spawn(async move { keys.warm().await });
    }
    let limits = std::sync::Arc::new(crate::limits::Limits::new(&cfg.rate_limits, engine.metrics.clone()));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(crate::limits::maintain(std::sync::Arc::downgrade(&limits), std::sync::Arc::downgrade(&engine)));
    }
    let limits = web::Data::from(limits);
    let body_len_max = cfg.http.body_len_max;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(limits.clone())
            .app_data(web::JsonConfig::default().limit(body_len_max).error_handler(json_error))
            .app_data(web::PayloadConfig::default().limit(body_len_max))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .wrap(actix_web::middleware::from_fn(crate::middleware::front_door))
            .wrap(actix_web::middleware::from_fn(observe))
            // Hot routes first: actix tries routes in registration order,
            // and each dynamic route costs a regex match.
            .service(routes::packets::grab)
            .service(routes::orders::create_order)
            .service(routes::auth::dev_token)
            .service(routes::events::create_event)
            .service(routes::events::get_event)
            .service(routes::events::get_seats)
            .service(routes::events::list_events)
            .service(routes::queue::join_queue)
            .service(routes::queue::my_ticket)
            .service(routes::queue::leave_queue)
            .service(routes::queue::queue_stream)
            .service(routes::queue::event_stream)
            .service(routes::queue::packet_stream)
            .service(routes::events::patch_event)
            .service(routes::events::pause_event)
            .service(routes::events::resume_event)
            .service(routes::events::cancel_event)
            .service(routes::events::event_stats)
            .service(routes::orders::admin_orders)
            .service(routes::orders::list_orders)
            .service(routes::orders::get_order)
            .service(routes::orders::cancel_order)
            .service(routes::packets::create_packet)
            .service(routes::packets::get_packet)
            .service(routes::wallet::get_wallet)
            .service(routes::wallet::get_ledger)
            .service(routes::wallet::credit)
            .service(routes::wallet::recharge)
            .service(routes::wallet::withdraw)
            .service(routes::wallet::list_withdrawals)
            .service(routes::wallet::approve_withdrawal)
            .service(routes::wallet::reject_withdrawal)
            .service(routes::payments::pay_order)
            .service(routes::payments::refund_order)
            .service(routes::payments::get_payment)
            .service(routes::payments::notify)
            .service(routes::payments::sandbox_complete)
            .service(routes::payments::list_callbacks)
            .service(routes::webhooks::create_webhook)
            .service(routes::webhooks::deliveries)
            .service(routes::ops::healthz)
            .service(routes::ops::readyz)
            .service(routes::ops::metrics)
            .service(crate::openapi::get_openapi)
            .default_service(web::to(crate::openapi::unmatched))
    })
    .on_connect(move |_, ext| {
        ext.insert(counter.opened());
    })
    .keep_alive(Duration::from_secs(cfg.http.keep_alive_s))
    // Signals are rush's (see `serve::run`); actix waits at most the whole budget.
    .disable_signals()
    .shutdown_timeout(cfg.shutdown.timeout_ms.div_ceil(1000))
    .listen(listener)?;
    let workers = if cfg.http.workers > 0 { cfg.http.workers } else { cfg.threads };
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok((server.run(), connections))
}

/// `/metrics`, `/healthz` and `/readyz` for `rush worker` and `rush relay`
/// (on `telemetry.metrics_addr`). Ready until `stopping` turns true.
pub fn ops_server(
    listener: TcpListener,
    metrics: rush_engine::telemetry::Metrics,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) -> std::io::Result<Server> {
    let metrics = web::Data::new(metrics);
    let stopping = web::Data::new(stopping);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(stopping.clone())
            .route("/healthz", web::get().to(routes::ops::healthz_body))
            .route(
                "/readyz",
                web::get().to(|s: web::Data<Arc<std::sync::atomic::AtomicBool>>| async move {
                    let stopping = s.load(std::sync::atomic::Ordering::SeqCst);
                    routes::ops::readiness(if stopping { &["shutting_down"] } else { &[] })
                }),
            )
            .route(
                "/metrics",
                web::get()
                    .to(|m: web::Data<rush_engine::telemetry::Metrics>| async move { routes::ops::metrics_body(&m) }),
            )
            .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::no_route()) }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?;
    Ok(server.run())
}
