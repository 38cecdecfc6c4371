#!/usr/bin/env python3
"""What Kubernetes' schemas cannot check in a rendered overlay.

Usage: check.py RENDERED.yaml   (env RUSH_BIN: a rush binary, to run
`rush serve --check-config` on the ConfigMap). Prints each failure and
exits 1 if there is any.
"""
import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}")


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
pods = {name: w["spec"]["template"] for name, w in workloads.items()}


def pod_ports(tpl):
    return {p["name"]: p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


# Workloads: selector matches template; references resolve.
for name, w in workloads.items():
    tpl = w["spec"]["template"]
    if not matches(w["spec"]["selector"]["matchLabels"], tpl["metadata"]["labels"]):
        fail(f"{w['kind']} {name}: selector does not match its pod labels")
    spec = tpl["spec"]
    for c in spec.get("initContainers", []) + spec["containers"]:
        for ef in c.get("envFrom", []):
            if "configMapRef" in ef and ef["configMapRef"]["name"] not in by_kind.get("ConfigMap", {}):
                fail(f"{name}/{c['name']}: ConfigMap {ef['configMapRef']['name']} missing")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = by_kind.get("Secret", {}).get(ref["name"])
                if secret is None or ref["key"] not in secret.get("stringData", {}) | secret.get("data", {}):
                    fail(f"{name}/{c['name']}: secret key {ref['name']}/{ref['key']} missing")
        mounts = {m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"] for v in spec.get("volumes", [])} | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])
        }
        for m in mounts - vols:
            fail(f"{name}/{c['name']}: volume {m} not defined")
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in pod_ports(tpl):
                fail(f"{name}/{c['name']}: {probe} port {port} not declared")
    for v in spec.get("volumes", []):
        if "secret" in v and v["secret"]["secretName"] not in by_kind.get("Secret", {}):
            fail(f"{name}: secret volume {v['secret']['secretName']} missing")
    sc = spec.get("securityContext", {})
    if not sc.get("runAsNonRoot"):
        fail(f"{name}: pods must run as non-root")
    for c in spec["containers"]:
        csc = c.get("securityContext", {})
        if csc.get("allowPrivilegeEscalation") is not False or csc.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{name}/{c['name']}: must drop all capabilities and privilege escalation")
        if "resources" not in c or "requests" not in c["resources"]:
            fail(f"{name}/{c['name']}: resource requests missing")

# Services: select pods, target declared ports.
for name, svc in by_kind.get("Service", {}).items():
    sel = svc["spec"].get("selector", {})
    targets = [t for t in pods.values() if matches(sel, t["metadata"]["labels"])]
    if not targets:
        fail(f"Service {name}: selects no pods")
    for p in svc["spec"]["ports"]:
        tp = p.get("targetPort", p["port"])
        for t in targets:
            if isinstance(tp, str) and tp not in pod_ports(t):
                fail(f"Service {name}: targetPort {tp} not declared by its pods")

# ServiceMonitor (a CRD, no schema offline): its shape, and it finds a
# Service with the named port.
for name, sm in by_kind.get("ServiceMonitor", {}).items():
    if sm["apiVersion"] != "monitoring.coreos.com/v1":
        fail(f"ServiceMonitor {name}: apiVersion")
    spec = sm.get("spec", {})
    unknown = set(spec) - {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    if unknown:
        fail(f"ServiceMonitor {name}: unknown fields {unknown}")
    sel = spec.get("selector", {}).get("matchLabels", {})
    svcs = [s for s in by_kind.get("Service", {}).values() if matches(sel, s["metadata"].get("labels", {}))]
    if not svcs:
        fail(f"ServiceMonitor {name}: selects no Service")
    for ep in spec.get("endpoints", []):
        if set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme"}:
            fail(f"ServiceMonitor {name}: unknown endpoint fields")
        if not any(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in svcs):
            fail(f"ServiceMonitor {name}: no selected Service has port {ep.get('port')}")
        if ep.get("path") != "/metrics":
            fail(f"ServiceMonitor {name}: rush serves /metrics")

# PDBs, HPAs and NetworkPolicies point at something real.
for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
    if not any(matches(pdb["spec"]["selector"]["matchLabels"], t["metadata"]["labels"]) for t in pods.values()):
        fail(f"PodDisruptionBudget {name}: selects no pods")
for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
    ref = hpa["spec"]["scaleTargetRef"]
    if ref["name"] not in by_kind.get(ref["kind"], {}):
        fail(f"HPA {name}: target {ref['kind']}/{ref['name']} missing")
    elif "resources" not in by_kind[ref["kind"]][ref["name"]]["spec"]["template"]["spec"]["containers"][0]:
        fail(f"HPA {name}: CPU utilisation needs CPU requests")
for name, np in by_kind.get("NetworkPolicy", {}).items():
    sel = np["spec"]["podSelector"].get("matchLabels")
    selected = [t for t in pods.values() if sel is None or matches(sel, t["metadata"]["labels"])]
    if not selected:
        fail(f"NetworkPolicy {name}: selects no pods")
    for rule in np["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            psel = peer.get("podSelector", {}).get("matchLabels")
            if psel and "namespaceSelector" not in peer and not any(
                matches(psel, t["metadata"]["labels"]) for t in pods.values()
            ):
                fail(f"NetworkPolicy {name}: a peer selects no pods")
        for p in rule.get("ports", []):
            if isinstance(p["port"], str) and not all(p["port"] in pod_ports(t) for t in selected):
                fail(f"NetworkPolicy {name}: port {p['port']} not declared by every selected pod")
# Only rush reaches each store.
for store in ("redis", "postgres", "kafka"):
    allowed = [
        np
        for np in by_kind.get("NetworkPolicy", {}).values()
        if np["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == store
    ]
    peers = [peer for np in allowed for r in np["spec"].get("ingress", []) for peer in r.get("from", [])]
    if not allowed or any("namespaceSelector" in p or "ipBlock" in p for p in peers):
        fail(f"{store}: must be reachable from rush's pods only")
if not any(np["spec"]["podSelector"] == {} for np in by_kind.get("NetworkPolicy", {}).values()):
    fail("no default-deny NetworkPolicy")

# The shutdown budget fits the grace period.
cfg = by_kind.get("ConfigMap", {}).get("rush-config", {}).get("data", {})
gw = workloads.get("rush-gateway")
if gw:
    spec = gw["spec"]["template"]["spec"]
    c = spec["containers"][0]
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    timeout_s = int(cfg.get("RUSH__SHUTDOWN__TIMEOUT_MS", "20000")) / 1000
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if not pause:
        fail("gateway: no preStop pause")
    if grace <= pause + timeout_s:
        fail(f"gateway: grace {grace}s is not longer than preStop {pause}s + shutdown timeout {timeout_s}s")
    probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
    if probes != {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}:
        fail(f"gateway: probes {probes}")
    if not spec.get("topologySpreadConstraints"):
        fail("gateway: no topology spread")

# The dashboard shows metrics rush exports.
telemetry = open(os.path.join(ROOT, "engine/src/telemetry.rs")).read()
exported = set(re.findall(r'new\(\s*"([a-z_]+)"', telemetry))
dash = by_kind.get("ConfigMap", {}).get("rush-grafana-dashboard", {}).get("data", {}).get("rush.json")
if not dash:
    fail("Grafana dashboard ConfigMap missing")
else:
    exprs = [t["expr"] for p in json.loads(dash)["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"rush_([a-z_]+)", e)}
    for m in sorted(used - exported):
        fail(f"dashboard: rush_{m} is not a metric rush exports")
    for m in sorted(exported - used):
        fail(f"dashboard: rush_{m} has no panel")

# rush accepts the ConfigMap (with stand-in secrets).
rush = os.environ.get("RUSH_BIN")
if rush and cfg:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUSH")}
    env.update(cfg)
    env.update({
        "RUSH__AUTH__JWT_SECRET": "k8s-check-secret-0123456789",
        "RUSH__PAYMENTS__WECHAT_SECRET": "k8s-check-wechat-0123456789",
        "RUSH__PAYMENTS__ALIPAY_SECRET": "k8s-check-alipay-0123456789",
        "RUSH__PAYMENTS__ECARD_SECRET": "k8s-check-ecard-0123456789",
        "RUSH__POSTGRES__URL": "postgres://rush:pw@postgres:5432/rush",
        "RUSH__REDIS__URL": "redis://:pw@redis:6379",
    })
    r = subprocess.run([rush, "serve", "--check-config", "--offline"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"rush serve --check-config refuses the ConfigMap: {(r.stderr.strip().splitlines() or [''])[0]}")
    else:
        summary = json.loads(r.stdout)
        print(f"rush --check-config: {summary['profile']} {summary['mode']} {summary['durable']}")

print(f"{len(docs)} objects, {len(failures)} failures")
sys.exit(1 if failures else 0)
