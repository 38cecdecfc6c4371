//! Building and running the server.
//!
//! Shutdown protocol: on SIGINT/SIGTERM actix stops accepting connections
//! and lets in-flight requests finish (up to `shutdown_timeout`); then the
//! workers are told to stop, finish their current batch and exit. Every
//! acknowledged write was already durable before it was acknowledged.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};
use rush_engine::Engine;
use serde_json::json;

use crate::auth::Keys;
use crate::error::{json_error, path_error, query_error, ApiError};
use crate::routes;
use crate::AppState;

/// Seconds actix waits for in-flight requests after a stop signal.
const SHUTDOWN_TIMEOUT_S: u64 = 10;

/// Builds the HTTP server on an already bound listener.
pub fn http_server(listener: TcpListener, engine: Arc<Engine>) -> std::io::Result<Server> {
    let cfg = engine.config().clone();
    let _ = crate::error::RETRY_AFTER_S.set(cfg.http.retry_after_s);
    let state = web::Data::new(AppState { engine: engine.clone() });
    let keys = web::Data::new(Keys::new(&cfg.auth.jwt_secret));
    let body_len_max = cfg.http.body_len_max;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(web::JsonConfig::default().limit(body_len_max).error_handler(json_error))
            .app_data(web::PayloadConfig::default().limit(body_len_max))
            .app_data(web::QueryConfig::default().error_handler(query_error))
            .app_data(web::PathConfig::default().error_handler(path_error))
            .wrap(actix_web::middleware::from_fn(observe))
            // Hot routes first: actix tries routes in registration order,
            // and each dynamic route costs a regex match.
            .service(routes::packets::grab)
            .service(routes::orders::create_order)
            .service(routes::auth::dev_token)
            .service(routes::events::create_event)
            .service(routes::events::get_event)
            .service(routes::events::get_seats)
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
            .service(routes::ops::openapi)
            .default_service(web::to(|| async { Err::<actix_web::HttpResponse, _>(ApiError::not_found("route")) }))
    })
    .shutdown_timeout(SHUTDOWN_TIMEOUT_S)
    .listen(listener)?;
    if cfg.http.workers > 0 {
        server = server.workers(cfg.http.workers);
    }
    Ok(server.run())
}

/// Counts requests by route pattern and status and times them.
async fn observe(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().as_str().to_string();
    let res = next.call(req).await?;
    if let Some(state) = state {
        let route = res.request().match_pattern().unwrap_or_else(|| "unmatched".into());
        let m = &state.engine.metrics;
        m.http_requests.with_label_values(&[&route, &method, res.status().as_str()]).inc();
        m.http_latency.with_label_values(&[&route]).observe(start.elapsed().as_secs_f64());
    }
    Ok(res)
}

/// A JSON line a person reads at start.
pub fn banner(addr: &std::net::SocketAddr, engine: &Engine) -> String {
    json!({
        "msg": "rush listening",
        "url": format!("http://{addr}"),
        "mode": engine.config().mode(),
        "durable": engine.config().durable(),
        "data_dir": engine.config().data_dir.display().to_string(),
    })
    .to_string()
}
