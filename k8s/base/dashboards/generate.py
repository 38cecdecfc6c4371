#!/usr/bin/env python3
"""Writes rush.json, the Grafana dashboard for the metrics rush exports
(README "Metrics"). Run after adding a metric: python3 generate.py"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def panel(title, exprs, unit="short", kind="timeseries", desc=""):
    i = len(panels)
    panels.append({
        "id": i + 1,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DS, "expr": e, "legendFormat": legend}
            for n, (e, legend) in enumerate(exprs)
        ],
    })


sel = 'namespace="$namespace"'
panel("Requests by route and status", [(f'sum by (route, status) (rate(rush_http_requests_total{{{sel}}}[1m]))', "{{route}} {{status}}")], "reqps")
panel("p99 latency by route", [(f'histogram_quantile(0.99, sum by (le, route) (rate(rush_http_request_duration_seconds_bucket{{{sel}}}[1m])))', "{{route}}")], "s",
      desc="Alert: the hot routes above 100 ms for 5 min")
panel("5xx share", [(f'sum(rate(rush_http_requests_total{{{sel},status=~"5.."}}[5m])) / sum(rate(rush_http_requests_total{{{sel}}}[5m]))', "5xx")], "percentunit")
panel("Holds by outcome", [(f'sum by (outcome) (rate(rush_holds_total{{{sel}}}[1m]))', "{{outcome}}")], "ops")
panel("Grabs by outcome", [(f'sum by (outcome) (rate(rush_grabs_total{{{sel}}}[1m]))', "{{outcome}}")], "ops")
panel("Payments by outcome", [(f'sum by (outcome) (rate(rush_payments_total{{{sel}}}[5m]))', "{{outcome}}")], "ops")
panel("Payment callbacks by channel and outcome", [(f'sum by (channel, outcome) (rate(rush_payment_callbacks_total{{{sel}}}[5m]))', "{{channel}} {{outcome}}")], "ops",
      desc="Alert: any bad_signature or amount_mismatch")
panel("Mailbox depth", [(f'sum by (kind) (rush_actor_mailbox_depth{{{sel}}})', "{{kind}}")], "short",
      desc="Near actors.mailbox_len_max: requests are about to get 503")
panel("Actor batch size (p50, p99)", [
    (f'histogram_quantile(0.5, sum by (le, kind) (rate(rush_actor_batch_len_bucket{{{sel}}}[1m])))', "p50 {{kind}}"),
    (f'histogram_quantile(0.99, sum by (le, kind) (rate(rush_actor_batch_len_bucket{{{sel}}}[1m])))', "p99 {{kind}}"),
], "short")
panel("Hot store (Lua) batch latency p99", [(f'histogram_quantile(0.99, sum by (le) (rate(rush_store_batch_duration_seconds_bucket{{{sel}}}[1m])))', "p99")], "s",
      desc="Alert: above 50 ms")
panel("Outbox length", [(f'max(rush_outbox_lag_events{{{sel}}})', "entries")], "short",
      desc="Readiness fails at outbox.ready_pct of outbox.len_max; writes stop at the bound")
panel("Relay lag p99 (event to Kafka)", [(f'histogram_quantile(0.99, sum by (le) (rate(rush_relay_lag_seconds_bucket{{{sel}}}[1m])))', "p99")], "s")
panel("Consumer lag (Kafka to Postgres)", [(f'sum(rush_consumer_lag_events{{{sel}}})', "messages")], "short")
panel("Worker events and failures", [
    (f'sum by (worker) (rate(rush_worker_events_total{{{sel}}}[1m]))', "applied {{worker}}"),
    (f'sum by (worker) (rate(rush_worker_failures_total{{{sel}}}[5m]))', "failed {{worker}}"),
], "ops", desc="Alert: failures rising for 5 min")
panel("Parked events", [(f'sum(increase(rush_parked_events_total{{{sel}}}[1h]))', "parked")], "short",
      desc="Alert: any. Events the durable store refused, kept in parked_events while the rest was applied")
panel("Hot store lost and rebuilt", [
    (f'max(rush_hot_store_lost{{{sel}}})', "lost now"),
    (f'sum(increase(rush_hot_store_losses_total{{{sel}}}[1h]))', "losses"),
    (f'sum(increase(rush_hot_store_rebuild_conflicts_total{{{sel}}}[1h]))', "rebuild conflicts"),
], "short", desc="Alert: any. Redis lost or rolled back its data; rebuilt from the durable store (intake 503 meanwhile)")
panel("Withdrawals by outcome", [(f'sum by (outcome) (rate(rush_withdrawals_total{{{sel}}}[5m]))', "{{outcome}}")], "ops")
panel("Webhook attempts by outcome", [(f'sum by (outcome) (rate(rush_webhook_attempts_total{{{sel}}}[5m]))', "{{outcome}}")], "ops",
      desc="Alert: any failed or gone")
panel("Live actors", [(f'sum by (kind) (rush_actors_live{{{sel}}})', "{{kind}}")], "short")
panel("CPU per pod", [(f'rate(rush_process_cpu_seconds_total{{{sel}}}[1m])', "{{pod}}")], "short",
      desc="Cores used by each rush process; over requests/s it is the CPU cost of a request")
panel("Durable writer (SQLite): units and group size", [
    (f'rate(rush_durable_writer_units_total{{{sel}}}[1m])', "units/s {{pod}}"),
    (f'rate(rush_durable_writer_units_total{{{sel}}}[1m]) / rate(rush_durable_writer_commits_total{{{sel}}}[1m])', "units per commit {{pod}}"),
], "short", desc="rush.db's group commit (embedded and single-node modes); units flat while money-route latency climbs: the writer is saturated")

dashboard = {
    "title": "rush",
    "uid": "rush-overview",
    "tags": ["rush"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "10s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
        {"name": "namespace", "type": "query", "datasource": DS, "label": "Namespace",
         "query": {"query": "label_values(rush_http_requests_total, namespace)", "refId": "ns"},
         "definition": "label_values(rush_http_requests_total, namespace)", "refresh": 2},
    ]},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rush.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
