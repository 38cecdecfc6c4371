//! `/openapi.json`, generated from the handlers' annotations and the DTOs,
//! then completed from what the code enforces (`complete`):
//!
//! - every `{name}` of a path declared as a path parameter, typed by name
//!   (ids are decimal, user ids follow `valid_user_id`, channels are the
//!   domain's list);
//! - the answers every route of a kind can give: 401 on routes that need a
//!   token, 403 on admin routes, 400/413/415 on routes with a body, 400 on
//!   routes with a query, 404 on routes with ids, the `Idempotency-Key`
//!   replies, 503 `shutting_down`; each with its error codes;
//! - request limits (lengths, ranges, enums, patterns) from the running
//!   node's configuration and the engine's named limits, so the contract a
//!   node serves is the one it enforces.
//!
//! Methods a path does not have answer 405 with `Allow` (`method_not_allowed`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::{get, web, HttpRequest, HttpResponse};
use rush_engine::config::Config;
use rush_engine::domain::{ChannelKind, WithdrawalStatus};
use rush_engine::engine::input as limits;
use serde_json::{json, Map, Value};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ApiError;
use crate::routes;
use crate::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "rush", description = "Flash-sale engine: seats, red packets, wallet. Money is integer fen; ids are decimal strings."),
    paths(
        routes::auth::dev_token,
        routes::events::create_event, routes::events::get_event, routes::events::get_seats,
        routes::events::list_events, routes::events::patch_event, routes::events::pause_event,
        routes::events::resume_event, routes::events::cancel_event, routes::events::event_stats,
        routes::orders::admin_orders,
        routes::queue::join_queue, routes::queue::my_ticket, routes::queue::leave_queue,
        routes::queue::queue_stream, routes::queue::event_stream, routes::queue::packet_stream,
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

/// The contract of a node configured as `cfg`.
pub fn spec(cfg: &Config) -> Value {
    let mut doc = serde_json::to_value(Doc::openapi()).unwrap_or_default();
    complete(&mut doc, cfg);
    doc
}

/// The contract itself.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "routes::ops", security(()),
    responses((status = 200, description = "this document")))]
#[get("/openapi.json")]
pub async fn get_openapi(state: web::Data<AppState>) -> HttpResponse {
    static DOC: OnceLock<Value> = OnceLock::new();
    HttpResponse::Ok().json(DOC.get_or_init(|| spec(state.engine.config())))
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// A decimal id as `Id` parses it: positive, within i64 (19 digits only
/// up to 8…, a bound ids reach in about 280 years).
const ID_PATTERN: &str = "^(?:[1-9][0-9]{0,17}|[1-8][0-9]{18})$";
/// `Idempotency-Key`: 1-255 visible ASCII characters.
const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";
/// Text that is not only whitespace (what `check_text` refuses).
const NOT_BLANK: &str = "\\S";

fn complete(doc: &mut Value, cfg: &Config) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for method in METHODS {
            if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                complete_operation(path, op, cfg);
                rate_limited(path, method, op);
            }
        }
    }
    if let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) {
        for schema in schemas.values_mut() {
            unsigned_ranges(schema);
        }
        for (name, props) in request_limits(cfg) {
            for (prop, rules) in props {
                if let Some(p) = schemas.get_mut(name).and_then(|s| s.pointer_mut(&format!("/properties/{prop}"))) {
                    merge(p, rules);
                }
            }
        }
        if let Some(hold) = schemas.get_mut("HoldReq") {
            one_selection(hold);
        }
        for (name, example) in examples(cfg) {
            if let Some(Value::Object(schema)) = schemas.get_mut(name) {
                schema.insert("example".into(), example);
            }
        }
    }
}

/// Every rate-limited route may answer 429 (see `limits`).
fn rate_limited(path: &str, method: &str, op: &mut Map<String, Value>) {
    let Ok(m) = actix_web::http::Method::from_bytes(method.to_uppercase().as_bytes()) else { return };
    if crate::limits::Class::of(&m, path).is_none() {
        return;
    }
    if let Some(Value::Object(responses)) = op.get_mut("responses") {
        responses.entry("429").or_insert_with(|| {
            json!({
                "description": "rate_limited: see Retry-After, RateLimit-Policy and RateLimit",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResp"}}}
            })
        });
    }
}

/// `u32`/`u64` fields come out of utoipa as `int32`/`int64` with minimum 0:
/// their true maximum is stated (a `u32` takes up to 4 294 967 295).
fn unsigned_ranges(schema: &mut Value) {
    match schema {
        Value::Object(obj) => {
            let unsigned = obj.get("minimum").and_then(Value::as_f64) == Some(0.0);
            match obj.get("format").and_then(Value::as_str) {
                Some("int32") if unsigned => {
                    obj.insert("format".into(), json!("int64"));
                    obj.insert("maximum".into(), json!(u32::MAX));
                }
                Some("int64") if unsigned => {
                    obj.insert("maximum".into(), json!(u64::MAX));
                }
                _ => {}
            }
            obj.values_mut().for_each(unsigned_ranges);
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

/// A hold names its seats, or a category and a quantity (the handler's
/// rule): one of two shapes, each with the other's fields absent or null.
fn one_selection(hold: &mut Value) {
    let Some(props) = hold.get("properties").cloned() else { return };
    let null = json!({"type": "null"});
    let shape = |required: &[&str], nulls: &[&str]| {
        let mut p = props.clone();
        for n in nulls {
            p[*n] = null.clone();
        }
        for r in required {
            // Present and not null.
            if let Some(branches) = p[*r].get("oneOf").and_then(Value::as_array) {
                if let Some(b) = branches.iter().find(|b| b["type"] != "null") {
                    p[*r] = b.clone();
                }
            }
            if let Some(Value::Array(types)) = p[*r].get("type").cloned() {
                if let Some(t) = types.iter().find(|t| *t != "null") {
                    p[*r]["type"] = t.clone();
                }
            }
        }
        let mut req = vec!["event_id"];
        req.extend_from_slice(required);
        json!({"type": "object", "properties": p, "required": req, "additionalProperties": false})
    };
    let description = hold.get("description").cloned();
    *hold =
        json!({"oneOf": [shape(&["seats"], &["category", "quantity"]), shape(&["category", "quantity"], &["seats"])]});
    if let Some(d) = description {
        hold["description"] = d;
    }
}

fn complete_operation(path: &str, op: &mut Map<String, Value>, cfg: &Config) {
    let params = op.entry("parameters").or_insert_with(|| json!([]));
    let Some(params) = params.as_array_mut() else { return };
    for name in path_names(path) {
        if !params.iter().any(|p| p["in"] == "path" && p["name"] == name) {
            params.push(json!({"name": name, "in": "path", "required": true, "schema": path_schema(name)}));
        }
    }
    for p in params.iter_mut() {
        if p["in"] == "header" && p["name"] == "Idempotency-Key" {
            if let Some(schema) = p.get_mut("schema") {
                merge(schema, json!({"pattern": IDEMPOTENCY_KEY_PATTERN}));
            }
        }
        if p["in"] == "query" {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            if let Some(schema) = p.get_mut("schema") {
                merge(schema, query_schema(path, &name, cfg));
            }
        }
    }
    let has_path = params.iter().any(|p| p["in"] == "path");
    let has_query = params.iter().any(|p| p["in"] == "query");
    let idempotent = params.iter().any(|p| p["name"] == "Idempotency-Key");
    if params.is_empty() {
        op.remove("parameters");
    }
    let open = op.get("security").is_some_and(|s| s == &json!([{}]));
    let has_body = op.contains_key("requestBody");
    let mut add: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    if !open {
        add.push(("401", "no token, or a token refused", vec!["unauthorized", "invalid_token"]));
    }
    if path.starts_with("/v1/admin/") {
        add.push(("403", "the token is not an admin's", vec!["forbidden"]));
    }
    if has_body {
        add.push(("400", "the body or a field is invalid", vec!["invalid_json", "invalid_request"]));
        add.push(("413", "the body is over http.body_len_max", vec!["body_too_large"]));
        add.push(("415", "the body is not JSON", vec!["unsupported_media_type"]));
    }
    if has_query {
        add.push(("400", "a query parameter is invalid", vec!["invalid_request"]));
    }
    if has_path {
        add.push(("404", "no such entity (or route)", not_found_codes(path)));
    }
    if idempotent && !has_body {
        add.push(("400", "the Idempotency-Key is invalid", vec!["invalid_request"]));
    }
    if idempotent {
        add.push(("422", "the Idempotency-Key was used with another request", vec!["idempotency_key_reused"]));
        add.push(("409", "a request with this Idempotency-Key is still running", vec!["idempotency_in_progress"]));
    }
    if path.starts_with("/v1/") {
        add.push(("503", "the node is stopping, or a store is unavailable; see Retry-After", vec!["shutting_down"]));
    }
    let responses = op.entry("responses").or_insert_with(|| json!({}));
    let Some(responses) = responses.as_object_mut() else { return };
    for (status, why, codes) in add {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": format!("{why}: {}", codes.join(", ")),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResp"}}}
            })
        });
    }
}

/// The not-found codes of the entities a path names, and `not_found` (no route).
fn not_found_codes(path: &str) -> Vec<&'static str> {
    use rush_engine::error::Entity;
    let entities = [
        ("/events/", Entity::Event),
        ("/orders/", Entity::Order),
        ("/packets/", Entity::Packet),
        ("/payments/", Entity::Payment),
        ("/withdrawals/", Entity::Withdrawal),
        ("/webhooks/", Entity::Webhook),
        ("{channel}", Entity::Channel),
    ];
    let mut codes: Vec<&'static str> =
        entities.iter().filter(|(part, _)| path.contains(part)).map(|(_, e)| e.code()).collect();
    codes.push("not_found");
    codes
}

/// The `{name}`s of a path template.
fn path_names(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

fn path_schema(name: &str) -> Value {
    match name {
        "channel" => json!({"type": "string", "enum": ChannelKind::ALL.map(ChannelKind::as_str)}),
        "user_id" => json!({"type": "string", "minLength": 1, "maxLength": 64, "pattern": USER_ID_PATTERN}),
        _ => json!({"type": "string", "pattern": ID_PATTERN}),
    }
}

/// `valid_user_id`: 1-64 of letters, digits, `_ - . @`, not starting with `@`.
const USER_ID_PATTERN: &str = "^[A-Za-z0-9_.-][A-Za-z0-9_.@-]*$";

fn query_schema(path: &str, name: &str, cfg: &Config) -> Value {
    use rush_engine::domain::{OrderStatus, SaleStatus};
    match (path, name) {
        (_, "limit") => json!({"minimum": 1, "maximum": cfg.orders.list_limit_max}),
        (_, "cursor" | "event_id") => json!({"pattern": ID_PATTERN}),
        (_, "channel") => json!({"enum": ChannelKind::ALL.map(ChannelKind::as_str)}),
        ("/v1/events", "status") => json!({"enum": SaleStatus::ALL.map(SaleStatus::as_str)}),
        ("/v1/admin/orders", "status") => json!({"enum": OrderStatus::ALL.map(OrderStatus::as_str)}),
        (_, "status") => json!({"enum": WithdrawalStatus::ALL.map(WithdrawalStatus::as_str)}),
        (_, "user_id") => json!({"minLength": 1, "maxLength": 64, "pattern": USER_ID_PATTERN}),
        (_, "from" | "to") => json!({"format": "date-time"}),
        (_, "q") => json!({"maxLength": cfg.events.name_len_max}),
        (_, "section") => json!({"minLength": 1}),
        _ => json!({}),
    }
}

fn text(max: usize) -> Value {
    json!({"minLength": 1, "maxLength": max, "pattern": NOT_BLANK})
}

fn fen(min: i64, max: i64) -> Value {
    json!({"minimum": min, "maximum": max})
}

/// Each request body's fields and the limits the code checks on them (and
/// the values an answer's enum-like string field takes).
fn request_limits(cfg: &Config) -> BTreeMap<&'static str, Vec<(&'static str, Value)>> {
    let ec = &cfg.events;
    let pc = &cfg.packets;
    let channels = ChannelKind::ALL.map(ChannelKind::as_str);
    let mut event_types: Vec<&str> = rush_engine::durable::webhooks::EVENT_TYPES.to_vec();
    event_types.push("*");
    let sale_status =
        json!({"enum": rush_engine::domain::SaleStatus::ALL.map(rush_engine::domain::SaleStatus::as_str)});
    BTreeMap::from([
        (
            "DevTokenReq",
            vec![
                ("user_id", json!({"minLength": 1, "maxLength": 64, "pattern": USER_ID_PATTERN})),
                ("role", json!({"enum": ["user", "admin"]})),
            ],
        ),
        (
            "CreateEventReq",
            vec![
                ("name", text(ec.name_len_max)),
                ("venue", text(ec.name_len_max)),
                ("hold_ttl_s", json!({"minimum": 1, "maximum": ec.hold_ttl_s_max})),
                ("categories", json!({"minItems": 1, "maxItems": ec.categories_max})),
            ],
        ),
        (
            "CategoryReq",
            vec![
                ("id", text(limits::CATEGORY_ID_LEN_MAX)),
                ("name", text(ec.name_len_max)),
                ("price", fen(1, i64::from(u32::MAX))),
            ],
        ),
        (
            "LimitsReq",
            vec![
                ("per_order", json!({"minimum": 1, "maximum": ec.seats_max})),
                ("per_user", json!({"minimum": 1, "maximum": ec.seats_max})),
            ],
        ),
        (
            "SectionReq",
            vec![
                ("name", text(ec.name_len_max)),
                ("rows", json!({"minimum": 1, "maximum": ec.seats_max})),
                ("cols", json!({"minimum": 1, "maximum": ec.seats_max})),
                ("category", text(limits::CATEGORY_ID_LEN_MAX)),
            ],
        ),
        ("LayoutReq", vec![("sections", json!({"minItems": 1}))]),
        (
            "SeatReq",
            vec![
                ("section", text(ec.name_len_max)),
                ("row", json!({"minimum": 1})),
                ("col", json!({"minimum": 1})),
                ("category", text(limits::CATEGORY_ID_LEN_MAX)),
            ],
        ),
        (
            "HoldReq",
            vec![
                ("event_id", json!({"pattern": ID_PATTERN})),
                ("seats", json!({"minItems": 1, "maxItems": ec.seats_max})),
                ("category", text(limits::CATEGORY_ID_LEN_MAX)),
                ("quantity", json!({"minimum": 1, "maximum": ec.seats_max})),
                ("attendees", json!({"maxItems": ec.attendees_max})),
            ],
        ),
        ("AttendeeReq", vec![("name", text(ec.name_len_max)), ("id_number", text(limits::ID_NUMBER_LEN_MAX))]),
        (
            "CreatePacketReq",
            vec![
                ("kind", json!({"enum": ["normal", "lucky"]})),
                ("total_amount", fen(1, pc.total_max_fen)),
                ("count", json!({"minimum": 1, "maximum": pc.count_max})),
                ("greeting", json!({"maxLength": pc.greeting_len_max})),
                ("expires_in_s", json!({"minimum": 1, "maximum": pc.expires_in_s_max})),
            ],
        ),
        ("CreditReq", vec![("amount", fen(1, cfg.orders.credit_max_fen)), ("reason", text(limits::REASON_LEN_MAX))]),
        ("PayReq", vec![("channel", json!({"enum": channels}))]),
        (
            "RechargeReq",
            vec![("amount", fen(1, cfg.payments.recharge_max_fen)), ("channel", json!({"enum": channels}))],
        ),
        ("WithdrawReq", vec![("amount", fen(cfg.wallet.withdraw_min_fen.max(1), i64::MAX))]),
        ("DecideReq", vec![("reason", text(limits::REASON_LEN_MAX))]),
        (
            "SandboxPayReq",
            vec![
                ("callback", json!({"enum": ["send", "drop"]})),
                ("delay_ms", json!({"minimum": 0, "maximum": rush_engine::pay::sandbox::DELAY_MS_MAX})),
                ("duplicates", json!({"minimum": 0, "maximum": rush_engine::pay::sandbox::DUPLICATES_MAX})),
            ],
        ),
        ("EventResp", vec![("status", sale_status.clone())]),
        ("CatalogueItemResp", vec![("status", sale_status)]),
        (
            "PatchEventReq",
            vec![
                ("name", text(ec.name_len_max)),
                ("venue", text(ec.name_len_max)),
                ("hold_ttl_s", json!({"minimum": 1, "maximum": ec.hold_ttl_s_max})),
                ("categories", json!({"minItems": 1, "maxItems": ec.categories_max})),
            ],
        ),
        ("PriceReq", vec![("id", text(limits::CATEGORY_ID_LEN_MAX)), ("price", fen(1, ec.price_max_fen))]),
        ("CancelEventReq", vec![("reason", text(limits::REASON_LEN_MAX))]),
        (
            "WebhookReq",
            vec![
                ("url", json!({"maxLength": limits::URL_LEN_MAX, "pattern": "^http://[!-~]+$"})),
                ("events", json!({"minItems": 1, "maxItems": event_types.len() - 1, "items": {"enum": event_types}})),
                ("secret", json!({"minLength": limits::SECRET_LEN_MIN, "maxLength": limits::SECRET_LEN_MAX})),
            ],
        ),
    ])
}

/// A valid body for each request (the examples phase of a fuzzer sends them).
fn examples(cfg: &Config) -> Vec<(&'static str, Value)> {
    vec![
        ("DevTokenReq", json!({"user_id": "alice", "role": "user"})),
        (
            "CreateEventReq",
            json!({"name": "Spring Gala", "venue": "Hall 1", "starts_at": "2030-06-01T19:30:00Z",
                   "categories": [{"id": "std", "name": "Standard", "price": 28000}],
                   "layout": {"sections": [{"name": "A", "rows": 10, "cols": 20, "category": "std"}]}}),
        ),
        ("HoldReq", json!({"event_id": "7212345678901234567", "category": "std", "quantity": 2})),
        (
            "CreatePacketReq",
            json!({"kind": "lucky", "total_amount": 1000, "count": 10, "greeting": "恭喜发财", "expires_in_s": 86400}),
        ),
        ("CreditReq", json!({"amount": 10000, "reason": "welcome credit"})),
        ("PayReq", json!({"channel": "wechat"})),
        ("RechargeReq", json!({"amount": 5000, "channel": "alipay"})),
        ("WithdrawReq", json!({"amount": cfg.wallet.withdraw_min_fen.max(1000)})),
        ("DecideReq", json!({"reason": "checked against the bank statement"})),
        ("SandboxPayReq", json!({"callback": "send"})),
        (
            "WebhookReq",
            json!({"url": "http://hooks.example.test/rush", "events": ["order.paid"], "secret": "0123456789abcdef"}),
        ),
    ]
}

/// `rules` merged into a property's schema; a nullable property (`type:
/// [T, "null"]`, or `oneOf` with null) gets them on its non-null branch.
fn merge(schema: &mut Value, rules: Value) {
    let Value::Object(rules) = rules else { return };
    if let Some(branches) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        for b in branches.iter_mut().filter(|b| b["type"] != "null") {
            merge(b, Value::Object(rules.clone()));
        }
        return;
    }
    let Some(obj) = schema.as_object_mut() else { return };
    let nullable = obj.get("type").and_then(Value::as_array).is_some_and(|t| t.iter().any(|t| t == "null"));
    for (k, mut v) in rules {
        // An enum lists every value taken: `null` too where the field is optional.
        if let (true, "enum", Value::Array(values)) = (nullable, k.as_str(), &mut v) {
            values.push(Value::Null);
        }
        if k == "items" {
            if let Some(items) = obj.get_mut("items") {
                merge(items, v);
                continue;
            }
        }
        obj.insert(k, v);
    }
}

/// The methods each path of the contract has, for 405 answers.
fn routes_by_path() -> &'static Vec<(Vec<String>, Vec<String>)> {
    static ROUTES: OnceLock<Vec<(Vec<String>, Vec<String>)>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let doc = serde_json::to_value(Doc::openapi()).unwrap_or_default();
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else { return vec![] };
        paths
            .iter()
            .map(|(path, item)| {
                let segments = path.split('/').map(str::to_string).collect();
                let methods = METHODS.iter().filter(|m| item.get(**m).is_some()).map(|m| m.to_uppercase()).collect();
                (segments, methods)
            })
            .collect()
    })
}

/// The app's default service: a path of the contract asked with a method
/// it does not have is 405 with `Allow`; anything else 404.
pub async fn unmatched(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let segments: Vec<&str> = req.path().split('/').collect();
    let allowed = routes_by_path().iter().find(|(template, _)| {
        template.len() == segments.len()
            && template
                .iter()
                .zip(&segments)
                .all(|(t, s)| t == s || (t.starts_with('{') && t.ends_with('}') && !s.is_empty()))
    });
    match allowed {
        Some((_, methods)) if !methods.iter().any(|m| m == req.method().as_str()) => {
            let allow = methods.join(", ");
            let mut resp = actix_web::ResponseError::error_response(&ApiError::new(
                actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this path takes {allow}"),
            ));
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allow) {
                resp.headers_mut().insert(actix_web::http::header::ALLOW, v);
            }
            Ok(resp)
        }
        _ => Err(ApiError::no_route()),
    }
}
