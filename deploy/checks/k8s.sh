#!/usr/bin/env bash
# Checks deploy/k8s: renders the base and every overlay with kustomize (kubectl's built-in, or
# a `kustomize` binary) and validates each rendered object against the Kubernetes schemas with
# kubernetes-validate (PyPI; ships the schemas, works offline) in strict mode, so a misspelt
# field fails as well as a wrong type. Also: the config copies in the base are conf/'s files
# verbatim, and the edge's upstream reference matches the API Service's name.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
K8S_VERSION=1.30.0
command -v kubernetes-validate >/dev/null || pip install -q kubernetes-validate >/dev/null 2>&1 \
  || { echo "k8s check: cannot install kubernetes-validate (pip)" >&2; exit 1; }
if command -v kustomize >/dev/null; then render() { kustomize build "$1"; }
elif command -v kubectl >/dev/null; then render() { kubectl kustomize "$1"; }
else echo "k8s check: needs kubectl (with kustomize v5) or kustomize on PATH" >&2; exit 1; fi

for f in api proxy; do
  cmp -s "conf/$f.yaml" "deploy/k8s/base/config/$f.yaml" \
    || { echo "deploy/k8s/base/config/$f.yaml differs from conf/$f.yaml: copy it again" >&2; exit 1; }
done

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for dir in deploy/k8s/base deploy/k8s/overlays/*; do
  out="$tmp/$(basename "$dir").yaml"
  render "$dir" >"$out" 2>"$tmp/render.log" || { cat "$tmp/render.log" >&2; exit 1; }
  if ! kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out" >"$tmp/validate.log" 2>&1; then
    echo "$dir: schema validation failed" >&2; cat "$tmp/validate.log" >&2; exit 1
  fi
  python3 - "$out" "$dir" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
where = sys.argv[2]
def find(kind, name):
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
assert find("Service", "kurz-api"), f"{where}: no Service kurz-api (the edge finds the API through it)"
edge = find("Deployment", "kurz-edge")[0]["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e.get("value") for e in edge["env"]}
assert env["KURZ_UPSTREAMS"] == "$(KURZ_API_SERVICE_HOST):$(KURZ_API_SERVICE_PORT)", f"{where}: KURZ_UPSTREAMS"
for d in docs:
    if d["kind"] in ("Deployment", "Job"):
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"].get("runAsNonRoot"), f"{where}: {d['metadata']['name']} may run as root"
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            assert sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False, \
                f"{where}: {c['name']} securityContext"
            assert "requests" in c.get("resources", {}), f"{where}: {c['name']} has no resource requests"
PY
done
echo "kubernetes manifests ok: $(ls -d deploy/k8s/base deploy/k8s/overlays/* | tr '\n' ' ')(Kubernetes $K8S_VERSION, strict)"
