//! `/openapi.json`, generated from the handlers' annotations and the DTOs.

use actix_web::{get, HttpResponse};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "rush", description = "Flash-sale engine: seats, red packets, wallet. Money is integer fen; ids are decimal strings."),
    paths(
        routes::auth::dev_token,
        routes::events::create_event, routes::events::get_event, routes::events::get_seats,
        routes::orders::create_order, routes::orders::get_order, routes::orders::list_orders, routes::orders::cancel_order,
        routes::packets::create_packet, routes::packets::grab, routes::packets::get_packet,
        routes::wallet::get_wallet, routes::wallet::get_ledger, routes::wallet::credit,
        routes::wallet::recharge, routes::wallet::withdraw, routes::wallet::list_withdrawals,
        routes::wallet::approve_withdrawal, routes::wallet::reject_withdrawal,
        routes::payments::pay_order, routes::payments::refund_order, routes::payments::get_payment,
        routes::payments::notify, routes::payments::sandbox_complete, routes::payments::list_callbacks,
        routes::webhooks::create_webhook, routes::webhooks::deliveries,
        routes::ops::healthz, routes::ops::readyz, routes::ops::metrics, get_openapi,
    ),
    modifiers(&Bearer),
    security(("bearer" = []))
)]
struct Doc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}

/// The contract itself.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "routes::ops", responses((status = 200)))]
#[get("/openapi.json")]
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok().json(spec())
}
