#!/usr/bin/env python3
"""What Kubernetes' schemas cannot check in a rendered overlay.

Usage: check.py RENDERED.yaml   (env RUSH_BIN: a rush binary, to run
`rush serve --check-config` on the ConfigMap). Prints each failure and
exits 1 if there is any.
"""
import ipaddress
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

# The real Secret is created out of band: the render must not hold one
# (an apply would overwrite it), and references resolve against the keys
# the example lists.
for name in by_kind.get("Secret", {}):
    fail(f"Secret {name} is rendered: applying it would overwrite the real one (see k8s/secret.example.yaml)")
examples = [d for d in yaml.safe_load_all(open(os.path.join(ROOT, "k8s", "secret.example.yaml"))) if d]
secrets = {e["metadata"]["name"]: set(e.get("stringData", {})) | set(e.get("data", {})) for e in examples}

# The metrics rush exports (without the `rush_` prefix).
telemetry = open(os.path.join(ROOT, "engine/src/telemetry.rs")).read()
exported = set(re.findall(r'new\(\s*"([a-z_]+)"', telemetry))

workloads = {**by_kind.get("Deployment", {}), **by_kind.get("StatefulSet", {})}
pods = {name: w["spec"]["template"] for name, w in workloads.items()}
# CronJobs' pods are checked like the workloads' (references, security).
for name, cj in by_kind.get("CronJob", {}).items():
    job = cj["spec"]["jobTemplate"]["spec"]
    workloads[name] = {"kind": "CronJob", "spec": {"selector": {"matchLabels": job["template"]["metadata"]["labels"]},
                                                   "template": job["template"]}}
    pods[name] = job["template"]


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
                if ref["key"] not in secrets.get(ref["name"], set()):
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
        if "secret" in v and v["secret"]["secretName"] not in secrets:
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
# Only rush reaches each store (run in the cluster: overlays/managed has none).
for store in ("redis", "postgres", "kafka"):
    if store not in workloads:
        continue
    allowed = [
        np
        for np in by_kind.get("NetworkPolicy", {}).values()
        if np["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == store
    ]
    peers = [peer for np in allowed for r in np["spec"].get("ingress", []) for peer in r.get("from", [])]
    if not allowed or any("namespaceSelector" in p or "ipBlock" in p for p in peers):
        fail(f"{store}: must be reachable from rush's pods only")
nps = by_kind.get("NetworkPolicy", {}).values()
if not any(np["spec"]["podSelector"] == {} and "ingress" not in np["spec"] and "egress" not in np["spec"]
           and set(np["spec"].get("policyTypes", [])) == {"Ingress", "Egress"} for np in nps):
    fail("no default-deny NetworkPolicy for both directions")
# Egress: only the gateway reaches addresses outside the cluster, and never
# the metadata address, link-local, loopback or private ranges.
MUST_EXCEPT = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8"}
PRIVATE = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]
# Managed stores outside the cluster: their private network, on store ports.
STORE_PORTS = {5432, 6379, 6380, 9092, 9093, 9094, 9096}
for name, np in by_kind.get("NetworkPolicy", {}).items():
    sel = np["spec"]["podSelector"].get("matchLabels", {})
    components = {sel["app.kubernetes.io/component"]} if "app.kubernetes.io/component" in sel else set()
    components |= {
        v
        for e in np["spec"]["podSelector"].get("matchExpressions", [])
        if e["key"] == "app.kubernetes.io/component" and e["operator"] == "In"
        for v in e["values"]
    }
    for rule in np["spec"].get("egress", []):
        if not rule.get("to"):
            fail(f"NetworkPolicy {name}: an egress rule to anywhere")
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if block is None:
                continue
            net = ipaddress.ip_network(block["cidr"])
            ports = {p.get("port") for p in rule.get("ports", [])}
            if any(net.subnet_of(p) for p in PRIVATE if net.version == p.version):
                if not ports or not ports <= STORE_PORTS:
                    fail(f"NetworkPolicy {name}: egress to a private network must name store ports only, not {ports}")
                continue
            if not components or not components <= {"gateway", "reconcile"}:
                fail(f"NetworkPolicy {name}: only the gateway and reconciliation may reach outside addresses")
            missing = MUST_EXCEPT - set(block.get("except", []))
            if block["cidr"] == "0.0.0.0/0" and missing:
                fail(f"NetworkPolicy {name}: egress to 0.0.0.0/0 must except {sorted(missing)}")

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

# Probes on shared dependencies tolerate one slow answer: a single slow
# Postgres or Redis ping must not take every pod out of its Service.
for name, w in workloads.items():
    for c in w["spec"]["template"]["spec"]["containers"]:
        r = c.get("readinessProbe")
        if r and "httpGet" in r and r["httpGet"].get("path") == "/readyz":
            if r.get("failureThreshold", 3) < 3 or r.get("timeoutSeconds", 1) < 2:
                fail(f"{name}/{c['name']}: /readyz probe needs failureThreshold >= 3 and timeoutSeconds >= 2")


def to_bytes(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "kb": 2**10, "mb": 2**20, "gb": 2**30}
    for u, m in units.items():
        if str(q).lower().endswith(u.lower()):
            return float(str(q)[: -len(u)]) * m
    return float(q)


# Redis refuses writes before the kernel kills it: maxmemory below the
# container's memory limit.
redis = workloads.get("redis")
if redis:
    c = redis["spec"]["template"]["spec"]["containers"][0]
    args = c.get("args", [])
    limit = c.get("resources", {}).get("limits", {}).get("memory")
    if "--maxmemory" not in args:
        fail("redis: no --maxmemory (noeviction without it is an OOM kill at the memory limit)")
    elif limit and to_bytes(args[args.index("--maxmemory") + 1]) > 0.8 * to_bytes(limit):
        fail("redis: --maxmemory must leave 20 % of the memory limit for buffers and the AOF rewrite")

# Kafka's log dir is a directory inside its volume (the root holds
# lost+found on ext4).
kafka = workloads.get("kafka")
if kafka:
    for m in kafka["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", []):
        if m["name"] == "data" and not m.get("subPath"):
            fail("kafka: the data volume must be mounted with a subPath")

# Flash-sale scaling: the HPA scales on a load metric rush exports, not CPU
# alone; rush's threads follow the pod's CPU request.
for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"]
    if not pods_metrics:
        fail(f"HPA {name}: no load metric (only CPU)")
    for m in pods_metrics:
        base = re.sub(r"_per_second$", "_total", m).removeprefix("rush_")
        if base not in exported:
            fail(f"HPA {name}: {m} is not derived from a metric rush exports")
for name in ("rush-gateway", "rush-worker"):
    w = workloads.get(name)
    if w:
        env = {e["name"]: e for e in w["spec"]["template"]["spec"]["containers"][0].get("env", [])}
        ref = env.get("RUSH__THREADS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
        if ref.get("resource") != "requests.cpu":
            fail(f"{name}: RUSH__THREADS must come from the pod's CPU request")

# Payment channels call back the public address: an Ingress host, over
# https in production.
if cfg:
    notify = cfg.get("RUSH__PAYMENTS__NOTIFY_BASE_URL", "")
    hosts = {r.get("host") for i in by_kind.get("Ingress", {}).values() for r in i["spec"].get("rules", [])}
    scheme = "https" if cfg.get("RUSH__PROFILE") == "production" else "https?"
    m = re.match(rf"{scheme}://([^/:]+)", notify)
    if not m or m.group(1) not in hosts:
        fail(f"rush-config: RUSH__PAYMENTS__NOTIFY_BASE_URL {notify!r} must be {scheme}:// on an Ingress host {sorted(h for h in hosts if h)}")

# Every rush pod has what the shared config asks of it: the files it names
# are mounted, and SASL to Kafka comes with its password (config.rs refuses
# to start without it, in every subcommand).
rush_pods = {n: t for n, t in pods.items() if t["metadata"]["labels"].get("app.kubernetes.io/name") == "rush"}
for name, tpl in rush_pods.items():
    c = tpl["spec"]["containers"][0]
    mounted = [m["mountPath"] for m in c.get("volumeMounts", [])]
    env = {e["name"] for e in c.get("env", [])}
    for key, value in cfg.items():
        if key.endswith("_FILE") and value.startswith("/") and not any(value.startswith(m + "/") for m in mounted):
            fail(f"{name}: {key}={value} is not on a mounted volume")
    sasl = cfg.get("RUSH__KAFKA__SECURITY_PROTOCOL", "").startswith("sasl")
    if sasl and not env & {"RUSH__KAFKA__SASL_PASSWORD", "RUSH__KAFKA__SASL_PASSWORD_FILE"}:
        fail(f"{name}: Kafka SASL without RUSH__KAFKA__SASL_PASSWORD_FILE")

# Migrations are a deliberate step: no process migrates at start, and the
# Job template that does exists.
if cfg.get("RUSH__POSTGRES__MIGRATE_ON_START") != "false":
    fail("rush-config: RUSH__POSTGRES__MIGRATE_ON_START must be \"false\" (migrating is the rush-migrate Job)")
for name, w in workloads.items():
    for c in w["spec"]["template"]["spec"].get("initContainers", []):
        if "migrate" in c.get("args", []):
            fail(f"{name}: migrates at start (an init container); use the rush-migrate Job")
mig = by_kind.get("CronJob", {}).get("rush-migrate")
if not mig or not mig["spec"].get("suspend"):
    fail("no suspended rush-migrate CronJob (the per-release migration's template)")
elif mig["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0].get("args") != ["migrate"]:
    fail("rush-migrate does not run `rush migrate`")

# Postgres connections: every rush pool at its largest fits the server's
# max_connections with 10 to spare.
def pool_of(workload):
    c = workload["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    return int(env.get("RUSH__POSTGRES__POOL_MAX") or cfg.get("RUSH__POSTGRES__POOL_MAX", "16"))


pg = workloads.get("postgres")
if pg:
    args = pg["spec"]["template"]["spec"]["containers"][0].get("args", [])
    max_conn = next((int(a.split("=", 1)[1]) for a in args if a.startswith("max_connections=")), 100)
    hpa = next(iter(by_kind.get("HorizontalPodAutoscaler", {}).values()), None)
    budget = 10
    for name, w in workloads.items():
        if w["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") != "rush":
            continue
        most = w["spec"].get("replicas", 1)
        if hpa and hpa["spec"]["scaleTargetRef"]["name"] == name:
            most = hpa["spec"]["maxReplicas"]
        budget += most * pool_of(w)
    if budget > max_conn:
        fail(f"Postgres: rush's pools may open {budget} connections (10 spare), max_connections is {max_conn}")

# The dashboard shows metrics rush exports.
# Every alert names its severity and a runbook section that exists.
runbooks = open(os.path.join(ROOT, "k8s", "RUNBOOKS.md")).read()
anchors = {re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-")) for h in re.findall(r"^## (.+)$", runbooks, re.M)}
alerts = [r for pr in by_kind.get("PrometheusRule", {}).values() for g in pr["spec"]["groups"] for r in g["rules"] if "alert" in r]
if not alerts:
    fail("no alert rules (PrometheusRule)")
for r in alerts:
    url = r.get("annotations", {}).get("runbook_url", "")
    if r.get("labels", {}).get("severity") not in ("page", "ticket"):
        fail(f"alert {r['alert']}: severity must be page or ticket")
    if "#" not in url or url.split("#", 1)[1] not in anchors:
        fail(f"alert {r['alert']}: runbook_url {url!r} names no section of k8s/RUNBOOKS.md")
    for m in re.findall(r"rush_([a-z_]+)", r["expr"]):
        if re.sub(r"_(bucket|sum|count)$", "", m) not in exported:
            fail(f"alert {r['alert']}: rush_{m} is not exported")

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
        "RUSH__REDIS__URL": ("rediss://rush:pw@redis:6380" if "RUSH__REDIS__TLS_CA_FILE" in cfg
                             else "redis://:pw@redis:6379"),
    })
    if cfg.get("RUSH__KAFKA__SECURITY_PROTOCOL", "").startswith("sasl"):
        env["RUSH__KAFKA__SASL_PASSWORD"] = "k8s-check-kafka-password"
    r = subprocess.run([rush, "serve", "--check-config", "--offline"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"rush serve --check-config refuses the ConfigMap: {(r.stderr.strip().splitlines() or [''])[0]}")
    else:
        summary = json.loads(r.stdout)
        print(f"rush --check-config: {summary['profile']} {summary['mode']} {summary['durable']}")

print(f"{len(docs)} objects, {len(failures)} failures")
sys.exit(1 if failures else 0)
