#!/usr/bin/env bash
# Checks deploy/k8s offline, for the base and every overlay:
#  1. renders it with a real kustomize (a `kustomize` binary, or the one built into kubectl;
#     v5 or newer: the kustomizations use `labels`);
#  2. validates every rendered object against the Kubernetes OpenAPI schemas of the oldest and
#     newest versions we name below, in strict mode (an unknown or misspelt field fails as well
#     as a wrong type), with kubernetes-validate from PyPI, which ships the schemas;
#  3. holds the manifests against the binaries and conf/ (deploy/checks/k8s_rules.py: variables,
#     subcommands, config keys, listeners, probes, ports, security contexts, secrets).
# Also: the config copies in the base are conf/'s files verbatim (kustomize reads no file
# outside its root, hence the copies).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
K8S_VERSIONS=(1.30.0 1.34.0)

# shellcheck source=deploy/checks/lib.sh
. deploy/checks/lib.sh
# Needs no tool: checked wherever this runs.
for f in api proxy; do
  cmp -s "conf/$f.yaml" "deploy/k8s/base/config/$f.yaml" \
    || { echo "deploy/k8s/base/config/$f.yaml differs from conf/$f.yaml: cp conf/$f.yaml deploy/k8s/base/config/" >&2; exit 1; }
done

# Neither PyPI nor Debian has a kustomize v5 to install (Debian's kubernetes-client is 1.20,
# whose kustomize is v2): it comes with kubectl.
if command -v kustomize >/dev/null; then
  renderer="kustomize $(kustomize version 2>/dev/null | head -1)"; render() { kustomize build "$1"; }
elif command -v kubectl >/dev/null; then
  renderer="kubectl kustomize $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')"
  render() { kubectl kustomize "$1"; }
else
  # Not a failure of the files: a machine without either cannot check them. Said loudly, so a
  # run that skipped them is not taken for one that passed them.
  echo "k8s check: SKIPPED: no kustomize v5+ or kubectl 1.27+ (which has it built in) on PATH;" \
    "Debian packages neither (docs/kubernetes.md says where to get one)" >&2
  exit 0
fi
case "$renderer" in
  *" v"[5-9]*|*" v"[1-9][0-9]*) ;;
  *) echo "k8s check: $renderer is too old: kustomize v5 or newer renders these files" >&2; exit 1 ;;
esac
if ! command -v kubernetes-validate >/dev/null || ! python3 -c 'import yaml' 2>/dev/null; then
  pip_tools kubernetes-validate==1.37.0 pyyaml \
    || { echo "k8s check: cannot install kubernetes-validate and PyYAML from PyPI" >&2; exit 1; }
fi

tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dirs=(deploy/k8s/base deploy/k8s/overlays/*)
for dir in "${dirs[@]}"; do
  out="$tmp/$(basename "$dir").yaml"
  render "$dir" >"$out" 2>"$tmp/render.log" || { echo "$dir: kustomize failed" >&2; cat "$tmp/render.log" >&2; exit 1; }
  for v in "${K8S_VERSIONS[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$v" "$out" >"$tmp/validate.log" 2>&1; then
      echo "$dir: schema validation against Kubernetes $v failed" >&2; cat "$tmp/validate.log" >&2; exit 1
    fi
  done
  python3 deploy/checks/k8s_rules.py "$out" "$dir"
  echo "$dir: $(grep -c '^kind:' "$out") objects valid"
done
echo "kubernetes manifests ok: ${dirs[*]} ($renderer; Kubernetes ${K8S_VERSIONS[*]}, strict; rules against the binaries' sources)"
